/*  kim_mp_json.c — MessagePack to JSON in one pass, allocation-free: the
    one walker behind kim_msg_to_json (headers, kim_json.c) and
    kim_log_body_to_json (log record bodies, kim_log_json.c).

    It knows no field. It writes straight into room the caller reserved
    once for the worst case (KIM_MP_JSON_ROOM), because `kim audit replay`
    runs it over millions of records. Strings in kim are mostly ids, codes
    and org names that need no escaping, so they go out eight bytes at a
    time; binary values come out as lowercase hex strings.
*/
#include <string.h>

#include "kim/kim_msg.h"
#include "kim_mp_json.h"

static const char s_digits [] = "0123456789abcdef";

//  The two-character escapes JSON has for control characters
static const char s_short [0x20] = {
    ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'
};

static bool
s_take (kim_mp_json_t *w, int n, uint64_t *value)
{
    if (w->end - w->p < n)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | w->p [i];
    w->p += n;
    *value = v;
    return true;
}

//  Two digits at a time: a replay writes a seq, a time and a few more
//  numbers per record, and one division per digit showed in its profile.
static const char s_pairs [201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

void
kim_mp_json_unsigned (kim_mp_json_t *w, uint64_t n)
{
    char tmp [24];
    char *end = tmp + sizeof tmp, *at = end;
    while (n >= 100) {
        const char *pair = s_pairs + 2 * (n % 100);
        n /= 100;
        *--at = pair [1];
        *--at = pair [0];
    }
    if (n >= 10) {
        *--at = s_pairs [2 * n + 1];
        *--at = s_pairs [2 * n];
    }
    else
        *--at = (char) ('0' + n);
    size_t len = (size_t) (end - at);
    memcpy (w->out, at, len);
    w->out += len;
}

static void
s_signed (kim_mp_json_t *w, int64_t n)
{
    if (n < 0) {
        *w->out++ = '-';
        kim_mp_json_unsigned (w, (uint64_t) 0 - (uint64_t) n);
    }
    else
        kim_mp_json_unsigned (w, (uint64_t) n);
}

//  True when one of the 8 bytes in `v` needs escaping in JSON: a control
//  character (< 0x20), '"' or '\\' (the classic SWAR zero-byte tests), or
//  a byte above 0x7f, whose UTF-8 sequence the byte loop checks.
static inline bool
s_needs_escape (uint64_t v)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t quote = v ^ (ones * '"'), slash = v ^ (ones * '\\');
    uint64_t control = (v - ones * 0x20) & ~v;
    uint64_t found = control | ((quote - ones) & ~quote) | ((slash - ones) & ~slash);
    return ((found | v) & highs) != 0;
}

//  The length of the valid UTF-8 sequence at s (of at most `left` bytes)
//  whose lead byte is above 0x7f, or 0 if there is none. Log files come
//  from elsewhere: JSON output must stay valid whatever their strings hold.
static size_t
s_utf8_sequence (const uint8_t *s, size_t left)
{
    size_t need = s [0] >= 0xc2 && s [0] <= 0xdf? 2
                : s [0] >= 0xe0 && s [0] <= 0xef? 3
                : s [0] >= 0xf0 && s [0] <= 0xf4? 4: 0;
    return need && need <= left && kim_utf8_valid (s, need)? need: 0;
}

//  Strings that need no escaping go out eight bytes at a time; the rest
//  byte by byte.
static void
s_string (kim_mp_json_t *w, const uint8_t *s, size_t len)
{
    char *out = w->out;         //  a local: stores through it cannot alias *w
    *out++ = '"';
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy (&v, s + i, 8);
        if (s_needs_escape (v))
            break;
        memcpy (out, &v, 8);
        out += 8;
    }
#if defined (__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    //  The tail (< 8 bytes): one load of the 8 bytes that end the string,
    //  when they lie inside the input; the bytes before it are shifted out
    //  and replaced by a harmless letter. A byte loop here costs a third of
    //  a replay.
    size_t tail = len - i;
    if (tail && tail < 8 && s + len - 8 >= w->start) {
        uint64_t v;
        memcpy (&v, s + len - 8, 8);
        v = (v >> (8 * (8 - tail))) | (0x6161616161616161ull << (8 * tail));
        if (!s_needs_escape (v)) {
            memcpy (out, &v, 8);        //  room: see KIM_MP_JSON_ROOM
            out += tail;
            i = len;
        }
    }
#endif
    for (; i < len; i++) {
        uint8_t c = s [i];
        if (c >= 0x80) {
            //  A valid sequence is copied; each byte of an invalid one
            //  becomes U+FFFD (six characters, within KIM_MP_JSON_ROOM).
            size_t n = s_utf8_sequence (s + i, len - i);
            if (n) {
                memcpy (out, s + i, n);
                out += n;
                i += n - 1;
            }
            else {
                memcpy (out, "\\ufffd", 6);
                out += 6;
            }
        }
        else
        if (c >= 0x20 && c != '"' && c != '\\')
            *out++ = (char) c;
        else
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char) c;
        }
        else
        if (w->short_escapes && s_short [c]) {
            *out++ = '\\';
            *out++ = s_short [c];
        }
        else {
            memcpy (out, "\\u00", 4);
            out [4] = s_digits [c >> 4];
            out [5] = s_digits [c & 15];
            out += 6;
        }
    }
    *out++ = '"';
    w->out = out;
}

void
kim_mp_json_hex (kim_mp_json_t *w, const uint8_t *data, size_t size)
{
    *w->out++ = '"';
    char *out = w->out;
    for (size_t i = 0; i < size; i++) {
        out [2 * i] = s_digits [data [i] >> 4];
        out [2 * i + 1] = s_digits [data [i] & 15];
    }
    w->out += 2 * size;
    *w->out++ = '"';
}

int
kim_mp_json_value (kim_mp_json_t *w, int depth)
{
    if (w->p >= w->end || depth > w->depth_max)
        return -1;
    uint8_t b = *w->p++;
    uint64_t n;
    if (b <= 0x7f) {
        kim_mp_json_unsigned (w, b);
        return 0;
    }
    if (b >= 0xe0) {
        s_signed (w, (int8_t) b);
        return 0;
    }
    bool map = false;
    if ((b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf) {
        map = true;
        if (b <= 0x8f)
            n = b & 0x0f;
        else
        if (!s_take (w, b == 0xde? 2: 4, &n))
            return -1;
    }
    else
    if ((b >= 0x90 && b <= 0x9f) || b == 0xdc || b == 0xdd) {
        if (b <= 0x9f)
            n = b & 0x0f;
        else
        if (!s_take (w, b == 0xdc? 2: 4, &n))
            return -1;
    }
    else
    if ((b >= 0xa0 && b <= 0xbf) || (b >= 0xd9 && b <= 0xdb)) {
        if (b <= 0xbf)
            n = b & 0x1f;
        else
        if (!s_take (w, 1 << (b - 0xd9), &n))
            return -1;
        if ((uint64_t) (w->end - w->p) < n)
            return -1;
        s_string (w, w->p, (size_t) n);
        w->p += n;
        return 0;
    }
    else
    if (b >= 0xc4 && b <= 0xc6) {
        if (!s_take (w, 1 << (b - 0xc4), &n) || (uint64_t) (w->end - w->p) < n)
            return -1;
        kim_mp_json_hex (w, w->p, (size_t) n);
        w->p += n;
        return 0;
    }
    else
    if (b >= 0xcc && b <= 0xcf) {
        if (!s_take (w, 1 << (b - 0xcc), &n))
            return -1;
        kim_mp_json_unsigned (w, n);
        return 0;
    }
    else
    if (b >= 0xd0 && b <= 0xd3) {
        int size = 1 << (b - 0xd0);
        if (!s_take (w, size, &n))
            return -1;
        int64_t v = size == 8? (int64_t) n
                  : (int64_t) (n ^ (1ull << (8 * size - 1))) - (int64_t) (1ull << (8 * size - 1));
        s_signed (w, v);
        return 0;
    }
    else
    if (b == 0xc0 || b == 0xc2 || b == 0xc3) {
        const char *word = b == 0xc0? "null": b == 0xc2? "false": "true";
        size_t len = strlen (word);
        memcpy (w->out, word, len);
        w->out += len;
        return 0;
    }
    else
        return -1;              //  floats and extensions: not in kim bodies

    //  A map or array: each entry takes at least one input byte
    if (n > (uint64_t) (w->end - w->p))
        return -1;
    *w->out++ = map? '{': '[';
    for (uint64_t i = 0; i < n; i++) {
        if (i)
            *w->out++ = ',';
        if (map) {
            if (w->p >= w->end || !((*w->p >= 0xa0 && *w->p <= 0xbf) || *w->p == 0xd9))
                return -1;      //  keys are strings
            if (kim_mp_json_value (w, depth + 1))
                return -1;
            *w->out++ = ':';
        }
        if (kim_mp_json_value (w, depth + 1))
            return -1;
    }
    *w->out++ = map? '}': ']';
    return 0;
}
