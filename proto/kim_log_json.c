/*  kim_log_json.c — log records as JSON lines, fast, and field lookups in
    record bodies, for `kim audit replay/export/case` and the broker's QUERY
    filters.

    A replay of a year of log must take seconds, so this path allocates
    nothing per record: one pass over the MessagePack body writes JSON
    straight into a buffer that was grown once for the worst case (six
    output bytes per input byte). It knows no field: every record kind whose
    body is MessagePack comes out readable; anything else as hex.
*/
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_log.h"

static const char s_digits [] = "0123456789abcdef";

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    char *out;
    const uint8_t *start;       //  the body's first byte
} s_json_t;

static bool
s_take (s_json_t *w, int n, uint64_t *value)
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

static void
s_unsigned (s_json_t *w, uint64_t n)
{
    char tmp [24];
    int len = 0;
    do {
        tmp [len++] = (char) ('0' + n % 10);
        n /= 10;
    } while (n);
    while (len)
        *w->out++ = tmp [--len];
}

static void
s_signed (s_json_t *w, int64_t n)
{
    if (n < 0) {
        *w->out++ = '-';
        s_unsigned (w, (uint64_t) 0 - (uint64_t) n);
    }
    else
        s_unsigned (w, (uint64_t) n);
}

//  True when one of the 8 bytes in `v` needs escaping in JSON: a control
//  character (< 0x20), '"' or '\\' (the classic SWAR zero-byte tests).
static inline bool
s_needs_escape (uint64_t v)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t quote = v ^ (ones * '"'), slash = v ^ (ones * '\\');
    uint64_t control = (v - ones * 0x20) & ~v;
    uint64_t found = control | ((quote - ones) & ~quote) | ((slash - ones) & ~slash);
    return (found & highs) != 0;
}

//  Strings in log bodies are ids, codes and org names that need no
//  escaping: they go out eight bytes at a time; the rest byte by byte.
static void
s_string (s_json_t *w, const uint8_t *s, size_t len)
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
    //  when they lie inside the body; the bytes before it are shifted out
    //  and replaced by a harmless letter. A byte loop here costs a third of
    //  a replay.
    size_t tail = len - i;
    if (tail && tail < 8 && s + len - 8 >= w->start) {
        uint64_t v;
        memcpy (&v, s + len - 8, 8);
        v = (v >> (8 * (8 - tail))) | (0x6161616161616161ull << (8 * tail));
        if (!s_needs_escape (v)) {
            memcpy (out, &v, 8);        //  room: see kim_log_body_to_json
            out += tail;
            i = len;
        }
    }
#endif
    for (; i < len; i++) {
        uint8_t c = s [i];
        if (c >= 0x20 && c != '"' && c != '\\')
            *out++ = (char) c;
        else
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char) c;
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

static void
s_hex (s_json_t *w, const uint8_t *data, size_t size)
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

//  One MessagePack value. Returns 0, or -1 on malformed input.
static int
s_value (s_json_t *w, int depth)
{
    if (w->p >= w->end || depth > 16)
        return -1;
    uint8_t b = *w->p++;
    uint64_t n;
    if (b <= 0x7f) {
        s_unsigned (w, b);
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
        s_hex (w, w->p, (size_t) n);
        w->p += n;
        return 0;
    }
    else
    if (b >= 0xcc && b <= 0xcf) {
        if (!s_take (w, 1 << (b - 0xcc), &n))
            return -1;
        s_unsigned (w, n);
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
            if (s_value (w, depth + 1))
                return -1;
            *w->out++ = ':';
        }
        if (s_value (w, depth + 1))
            return -1;
    }
    *w->out++ = map? '}': ']';
    return 0;
}

int
kim_log_body_to_json (const uint8_t *body, size_t size, kim_buf_t *out)
{
    //  Worst case: \u00XX for a one-byte string char, "null," for one byte;
    //  plus 8 for s_string's tail, which stores a whole word
    if (kim_buf_reserve (out, 6 * size + 24))
        return -KIM_E_NOMEM;
    s_json_t w = { body, body + size, (char *) out->data + out->size, body };
    if (size && s_value (&w, 0) == 0 && w.p == w.end) {
        out->size = (size_t) ((uint8_t *) w.out - out->data);
        return 0;
    }
    //  Not (only) MessagePack: the bytes as hex
    w.out = (char *) out->data + out->size;
    s_hex (&w, body, size);
    out->size = (size_t) ((uint8_t *) w.out - out->data);
    return 0;
}

//  Skips one MessagePack value; false if malformed.
static bool
s_skip (const uint8_t **p_p, const uint8_t *end, int depth)
{
    const uint8_t *p = *p_p;
    if (p >= end || depth > 16)
        return false;
    uint8_t b = *p++;
    uint64_t n = 0, count = 0;
    int width = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        ;
    else
    if (b >= 0xcc && b <= 0xd3)
        n = 1u << ((b - 0xcc) & 3);
    else
    if (b >= 0xa0 && b <= 0xbf)
        n = b & 0x1f;
    else
    if ((b >= 0xd9 && b <= 0xdb) || (b >= 0xc4 && b <= 0xc6))
        width = 1 << (b >= 0xd9? b - 0xd9: b - 0xc4);
    else
    if (b <= 0x8f)
        count = 2 * (uint64_t) (b & 0x0f);
    else
    if (b <= 0x9f)
        count = b & 0x0f;
    else
    if (b >= 0xdc && b <= 0xdf) {
        int size = (b == 0xdc || b == 0xde)? 2: 4;
        if (end - p < size)
            return false;
        for (int i = 0; i < size; i++)
            count = (count << 8) | *p++;
        if (b >= 0xde)
            count *= 2;
    }
    else
        return false;
    if (width) {
        if (end - p < width)
            return false;
        for (int i = 0; i < width; i++)
            n = (n << 8) | *p++;
    }
    if (n > (uint64_t) (end - p))
        return false;
    p += n;
    for (uint64_t i = 0; i < count; i++)
        if (!s_skip (&p, end, depth + 1))
            return false;
    *p_p = p;
    return true;
}

bool
kim_log_body_str (const uint8_t *body, size_t size, const char *key, char *out, size_t out_size)
{
    if (!body || !size)
        return false;
    const uint8_t *p = body, *end = body + size;
    uint8_t b = *p++;
    uint64_t count;
    if (b >= 0x80 && b <= 0x8f)
        count = b & 0x0f;
    else
    if (b == 0xde && end - p >= 2) {
        count = (uint64_t) p [0] << 8 | p [1];
        p += 2;
    }
    else
        return false;
    size_t key_len = strlen (key);
    for (uint64_t i = 0; i < count && p < end; i++) {
        //  Keys are short strings (fixstr) in kim bodies
        uint8_t k = *p;
        bool match = k >= 0xa0 && k <= 0xbf && (size_t) (k & 0x1f) == key_len
                  && (size_t) (end - p) > key_len && memcmp (p + 1, key, key_len) == 0;
        if (!s_skip (&p, end, 1))
            return false;
        if (match && p < end) {
            uint8_t v = *p;
            size_t len;
            const uint8_t *s;
            if (v >= 0xa0 && v <= 0xbf) {
                len = v & 0x1f;
                s = p + 1;
            }
            else
            if (v == 0xd9 && end - p >= 2) {
                len = p [1];
                s = p + 2;
            }
            else
                return false;
            if (s + len > end || len + 1 > out_size)
                return false;
            memcpy (out, s, len);
            out [len] = 0;
            return true;
        }
        if (!s_skip (&p, end, 1))
            return false;
    }
    return false;
}

static int
s_append (kim_buf_t *out, const char *text)
{
    return kim_buf_append (out, text, strlen (text));
}

int
kim_log_record_to_json (const kim_log_record_t *record, bool hashes, kim_buf_t *out)
{
    size_t need = 160 + 2 * KIM_HASH_SIZE + 8 * record->body_size;
    if (kim_buf_reserve (out, need))
        return -KIM_E_NOMEM;
    s_json_t w = { NULL, NULL, (char *) out->data + out->size, NULL };
    memcpy (w.out, "{\"seq\":", 7);
    w.out += 7;
    s_unsigned (&w, record->seq);
    memcpy (w.out, ",\"time\":", 8);
    w.out += 8;
    s_unsigned (&w, record->time_ms);
    memcpy (w.out, ",\"kind\":", 8);
    w.out += 8;
    const char *kind = kim_log_kind_name (record->kind);
    if (kind) {
        *w.out++ = '"';
        memcpy (w.out, kind, strlen (kind));
        w.out += strlen (kind);
        *w.out++ = '"';
    }
    else
        s_unsigned (&w, record->kind);
    if (hashes) {
        memcpy (w.out, ",\"hash\":", 8);
        w.out += 8;
        s_hex (&w, record->hash, KIM_HASH_SIZE);
        memcpy (w.out, ",\"raw\":", 7);
        w.out += 7;
        s_hex (&w, record->body, record->body_size);
    }
    memcpy (w.out, ",\"body\":", 8);
    w.out += 8;
    out->size = (size_t) ((uint8_t *) w.out - out->data);
    int rc = kim_log_body_to_json (record->body, record->body_size, out);
    if (rc == 0)
        rc = s_append (out, "}\n");
    return rc;
}


bool
kim_log_filter_match (const kim_log_filter_t *self, const kim_log_record_t *record)
{
    if (record->seq < self->from_seq || (self->to_seq && record->seq > self->to_seq)
    ||  record->time_ms < self->from_time || (self->to_time && record->time_ms > self->to_time)
    ||  (self->kind && record->kind != self->kind))
        return false;
    char value [KIM_ORG_MAX + 1];
    if (self->type [0] && !(kim_log_body_str (record->body, record->body_size, "type",
                                              value, sizeof value)
                        &&  strcmp (value, self->type) == 0))
        return false;
    if (self->case_id [0] && !(kim_log_body_str (record->body, record->body_size, "case_id",
                                                 value, sizeof value)
                           &&  strcmp (value, self->case_id) == 0))
        return false;
    if (self->org [0]) {
        static const char *keys [] = { "sender", "recipient", "org", "reader" };
        for (size_t i = 0; i < sizeof keys / sizeof keys [0]; i++)
            if (kim_log_body_str (record->body, record->body_size, keys [i], value, sizeof value)
            &&  strcmp (value, self->org) == 0)
                return true;
        return false;
    }
    return true;
}


//  --------------------------------------------------------------------------
//  Self-test

#define S_CHECK(cond) \
    do { if (!(cond)) { fprintf (stderr, "%s:%d: kim_log_test: %s\n", __FILE__, __LINE__, \
         #cond); abort (); } } while (0)

void
kim_log_test (bool verbose)
{
    S_CHECK (sodium_init () >= 0);
    //  A chain of three records and a checkpoint verifies; each alteration
    //  is found at the right seq.
    uint8_t pk [32], sk [64], other_pk [32], other_sk [64];
    crypto_sign_keypair (pk, sk);
    crypto_sign_keypair (other_pk, other_sk);
    kim_log_record_t records [4];
    uint8_t bodies [4][KIM_LOG_CHECKPOINT_SIZE];
    uint8_t prev [KIM_HASH_SIZE] = { 0 };
    for (int i = 0; i < 3; i++) {
        //  {"case_id": "c-1", "n": i}
        memcpy (bodies [i], "\x82\xa7" "case_id" "\xa3" "c-1" "\xa1" "n", 15);
        bodies [i][15] = (uint8_t) i;
        records [i] = (kim_log_record_t) { .seq = (uint64_t) i + 1, .time_ms = 1000 + (uint64_t) i,
                                           .kind = KIM_LOG_MESSAGE, .body = bodies [i],
                                           .body_size = 16 };
        kim_log_record_hash (prev, records [i].kind, records [i].seq, records [i].time_ms,
                             records [i].body, records [i].body_size, records [i].hash);
        memcpy (prev, records [i].hash, KIM_HASH_SIZE);
    }
    kim_log_checkpoint_t checkpoint = { .seq = 3, .time_ms = 2000 };
    memcpy (checkpoint.head, prev, KIM_HASH_SIZE);
    kim_log_checkpoint_sign (&checkpoint, sk);
    kim_log_checkpoint_encode (&checkpoint, bodies [3]);
    records [3] = (kim_log_record_t) { .seq = 4, .time_ms = 2000, .kind = KIM_LOG_CHECKPOINT,
                                       .body = bodies [3], .body_size = KIM_LOG_CHECKPOINT_SIZE };
    kim_log_record_hash (prev, records [3].kind, 4, 2000, bodies [3], KIM_LOG_CHECKPOINT_SIZE,
                         records [3].hash);

    kim_log_checkpoint_t decoded;
    S_CHECK (kim_log_checkpoint_decode (&decoded, bodies [3], KIM_LOG_CHECKPOINT_SIZE) == 0);
    S_CHECK (decoded.seq == 3 && decoded.time_ms == 2000);
    S_CHECK (kim_log_checkpoint_verify (&decoded, pk));
    S_CHECK (!kim_log_checkpoint_verify (&decoded, other_pk));

    kim_log_verify_t verify;
    kim_log_verify_init (&verify, pk, 1, NULL);
    for (int i = 0; i < 4; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);
    S_CHECK (verify.last == 4 && verify.sealed == 3 && verify.checkpoints == 1);

    //  A flipped body byte
    kim_log_verify_init (&verify, pk, 1, NULL);
    bodies [1][15] ^= 1;
    S_CHECK (kim_log_verify_step (&verify, &records [0]) == 0);
    S_CHECK (kim_log_verify_step (&verify, &records [1]) == -KIM_E_VERIFY_FAILED);
    S_CHECK (verify.bad_seq == 2);
    bodies [1][15] ^= 1;
    //  A missing record
    kim_log_verify_init (&verify, pk, 1, NULL);
    S_CHECK (kim_log_verify_step (&verify, &records [0]) == 0);
    S_CHECK (kim_log_verify_step (&verify, &records [2]) == -KIM_E_VERIFY_FAILED);
    S_CHECK (verify.bad_seq == 2);
    //  Signed with another key
    kim_log_verify_init (&verify, other_pk, 1, NULL);
    for (int i = 0; i < 3; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);
    S_CHECK (kim_log_verify_step (&verify, &records [3]) == -KIM_E_VERIFY_FAILED);
    S_CHECK (verify.bad_seq == 4);
    //  A cut-off tail, against a checkpoint held outside
    kim_log_verify_init (&verify, pk, 1, NULL);
    S_CHECK (kim_log_verify_step (&verify, &records [0]) == 0);
    S_CHECK (kim_log_verify_end (&verify, &checkpoint, NULL) == -KIM_E_VERIFY_FAILED);
    S_CHECK (verify.bad_seq == 2);
    //  Mid-log start anchored on the first record's stored hash
    kim_log_verify_init (&verify, pk, 2, NULL);
    for (int i = 1; i < 4; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);

    //  JSON
    kim_buf_t buf;
    kim_buf_init (&buf);
    S_CHECK (kim_log_record_to_json (&records [0], false, &buf) == 0);
    const char *expected = "{\"seq\":1,\"time\":1000,\"kind\":\"message\","
                           "\"body\":{\"case_id\":\"c-1\",\"n\":0}}\n";
    if (verbose)
        printf ("%.*s", (int) buf.size, (char *) buf.data);
    S_CHECK (buf.size == strlen (expected) && memcmp (buf.data, expected, buf.size) == 0);
    kim_buf_reset (&buf);
    const uint8_t odd [] = { 0x92, 0xd0, 0x85, 0xa2, '"', 1 };
    S_CHECK (kim_log_body_to_json (odd, sizeof odd, &buf) == 0);
    const char *odd_json = "[-123,\"\\\"\\u0001\"]";
    S_CHECK (buf.size == strlen (odd_json) && memcmp (buf.data, odd_json, buf.size) == 0);
    kim_buf_reset (&buf);
    S_CHECK (kim_log_body_to_json ((const uint8_t *) "\xc1", 1, &buf) == 0);
    S_CHECK (buf.size == 4 && memcmp (buf.data, "\"c1\"", 4) == 0);
    kim_buf_free (&buf);
    char value [16];
    S_CHECK (kim_log_body_str (bodies [0], 16, "case_id", value, sizeof value));
    S_CHECK (strcmp (value, "c-1") == 0);
    S_CHECK (!kim_log_body_str (bodies [0], 16, "n", value, sizeof value));
    S_CHECK (!kim_log_body_str (bodies [0], 16, "org", value, sizeof value));
    S_CHECK (kim_log_kind_from_name ("checkpoint") == KIM_LOG_CHECKPOINT);
}
