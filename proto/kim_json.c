/*  kim_json.c — message headers as JSON, for the kim tool and for logs, and
    a JSON to MessagePack transcoder for tests and tools.

    Neither direction knows a field: kim_msg_to_json writes the header's
    canonical MessagePack encoding through the walker that log replay uses
    too (kim_mp_json.c), and kim_msg_from_json transcodes the JSON
    (parsed by jansson) to MessagePack and hands it to kim_msg_decode. So JSON
    input meets exactly the limits, rules and error paths of the wire, and a
    new header field needs no change here. The one JSON-specific rule: the
    binary fields (payload_hash, sig) are lowercase hex strings.

    kim_json_message reads what an agency system hands kim's tools (`kim
    send --json`, kim-agent's API, web page and folder bridge): a header
    object with the payload beside it, as text or base64.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <msgpack.h>
#include <sodium.h>

#include "kim/kim_msg.h"
#include "kim_json.h"
#include "kim_mp_json.h"

//  --------------------------------------------------------------------------
//  MessagePack (our own canonical header) -> JSON

int
kim_msg_to_json (const kim_msg_t *self, kim_buf_t *out)
{
    if (!self || !out)
        return -KIM_E_ARGS;
    size_t start = out->size;
    int rc = kim_msg_encode (self, out);
    if (rc)
        return rc;
    size_t mp_size = out->size - start;
    //  Reserving once for the worst case lets the writer run without checks.
    rc = kim_buf_reserve (out, KIM_MP_JSON_ROOM (mp_size));
    if (rc) {
        out->size = start;
        return rc;
    }
    //  The header is depth 2 to the decoder, whose limit the writer keeps.
    kim_mp_json_t w = {
        .p = out->data + start, .end = out->data + start + mp_size,
        .out = (char *) out->data + out->size, .start = out->data + start,
        .depth_max = KIM_DEPTH_MAX + 1, .short_escapes = true
    };
    if (kim_mp_json_value (&w, 2) || w.p != w.end) {
        out->size = start;
        return -KIM_E_INTERNAL;
    }
    size_t json_size = (size_t) ((uint8_t *) w.out - (out->data + start + mp_size));
    memmove (out->data + start, out->data + start + mp_size, json_size);
    out->size = start + json_size;
    return 0;
}

//  --------------------------------------------------------------------------
//  JSON -> MessagePack

typedef struct {
    msgpack_packer pk;
    kim_buf_t *out;
    bool failed;
    bool kim;                   //  header mode: hex fields, stop at the limits
    kim_decode_error_t *err;    //  header mode: a hex error
} s_tx_t;

static int
s_tx_write (void *data, const char *buf, size_t len)
{
    s_tx_t *self = data;
    if (kim_buf_append (self->out, buf, len)) {
        self->failed = true;
        return -1;
    }
    return 0;
}

static int
s_unhex (int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static bool
s_hex_key (const char *key)
{
    return strcmp (key, "payload_hash") == 0 || strcmp (key, "sig") == 0;
}

//  Transcodes one value. In header mode, depth counts as the decoder does
//  (the header is depth 2), and where the decoder would stop at a limit the
//  transcoder stops too: it writes just enough (an empty container too deep,
//  a map or array header with the real count) for the decoder to report the
//  error with its usual path, and no more.
static int
s_tx (s_tx_t *self, json_t *value, int depth, const char *key)
{
    msgpack_packer *pk = &self->pk;
    if (self->kim && self->out->size > KIM_FRAME_MAX)
        return 0;               //  the decoder reports TOO_LARGE
    switch (json_typeof (value)) {
        case JSON_OBJECT: {
            if (self->kim && depth > KIM_DEPTH_MAX) {
                msgpack_pack_map (pk, 0);
                return 0;
            }
            size_t count = json_object_size (value);
            msgpack_pack_map (pk, count);
            if (self->kim && count > KIM_MAP_MAX)
                return 0;
            const char *k;
            json_t *v;
            json_object_foreach (value, k, v) {
                msgpack_pack_str (pk, strlen (k));
                msgpack_pack_str_body (pk, k, strlen (k));
                if (s_tx (self, v, depth + 1, depth == 2? k: NULL))
                    return -1;
            }
            return 0;
        }
        case JSON_ARRAY: {
            if (self->kim && depth > KIM_DEPTH_MAX) {
                msgpack_pack_array (pk, 0);
                return 0;
            }
            size_t count = json_array_size (value);
            msgpack_pack_array (pk, count);
            if (self->kim && count > KIM_ARRAY_MAX)
                return 0;
            for (size_t i = 0; i < count; i++)
                if (s_tx (self, json_array_get (value, i), depth + 1, NULL))
                    return -1;
            return 0;
        }
        case JSON_STRING: {
            const char *s = json_string_value (value);
            size_t len = json_string_length (value);
            if (self->kim && key && s_hex_key (key)) {
                //  Hex of any even length becomes bin; the decoder checks
                //  the size as it does on the wire.
                if (len % 2) {
                    self->err->code = KIM_E_BAD_VALUE;
                    kim_str_copy (self->err->path, sizeof self->err->path, key);
                    return -1;
                }
                msgpack_pack_bin (pk, len / 2);
                for (size_t i = 0; i < len; i += 2) {
                    int hi = s_unhex (s [i]), lo = s_unhex (s [i + 1]);
                    if (hi < 0 || lo < 0) {
                        self->err->code = KIM_E_BAD_VALUE;
                        kim_str_copy (self->err->path, sizeof self->err->path, key);
                        return -1;
                    }
                    char byte = (char) (hi << 4 | lo);
                    msgpack_pack_bin_body (pk, &byte, 1);
                }
                return 0;
            }
            msgpack_pack_str (pk, len);
            msgpack_pack_str_body (pk, s, len);
            return 0;
        }
        case JSON_INTEGER: {
            json_int_t n = json_integer_value (value);
            if (n < 0)
                msgpack_pack_int64 (pk, (int64_t) n);
            else
                msgpack_pack_uint64 (pk, (uint64_t) n);
            return 0;
        }
        case JSON_REAL:
            msgpack_pack_double (pk, json_real_value (value));
            return 0;
        case JSON_TRUE:
            msgpack_pack_true (pk);
            return 0;
        case JSON_FALSE:
            msgpack_pack_false (pk);
            return 0;
        default:
            msgpack_pack_nil (pk);
            return 0;
    }
}

static int
s_json_error (const json_error_t *jerr)
{
    switch (json_error_code (jerr)) {
        case json_error_out_of_memory:       return KIM_E_NOMEM;
        case json_error_stack_overflow:      return KIM_E_TOO_DEEP;
        case json_error_invalid_utf8:        return KIM_E_BAD_UTF8;
        case json_error_null_byte_in_key:    return KIM_E_BAD_UTF8;
        case json_error_duplicate_key:       return KIM_E_DUPLICATE_FIELD;
        case json_error_numeric_overflow:    return KIM_E_BAD_VALUE;
        default:                             return KIM_E_MALFORMED;
    }
}

//  Parses and transcodes. On failure err (if given) says why.
static int
s_json_transcode (const char *json, size_t size, kim_buf_t *out, bool kim, kim_decode_error_t *err)
{
    json_error_t jerr;
    //  Duplicates are refused by the parser: jansson keeps only the last
    //  value of a repeated key, which would hide the duplicate from us.
    json_t *root = json_loadb (json, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        int code = s_json_error (&jerr);
        if (err)
            err->code = code;
        return -code;
    }
    size_t start = out->size;
    kim_decode_error_t dummy = { 0, "" };
    s_tx_t tx = { .out = out, .kim = kim, .err = err? err: &dummy };
    msgpack_packer_init (&tx.pk, &tx, s_tx_write);
    int rc = s_tx (&tx, root, 2, NULL);
    json_decref (root);
    if (rc) {
        out->size = start;
        return -tx.err->code;
    }
    if (tx.failed) {
        out->size = start;
        if (err)
            err->code = KIM_E_NOMEM;
        return -KIM_E_NOMEM;
    }
    return 0;
}

int
kim_json_to_msgpack (const char *json, size_t size, kim_buf_t *out)
{
    if (!json || !out)
        return -KIM_E_ARGS;
    return s_json_transcode (json, size, out, false, NULL);
}

int
kim_msg_from_json (kim_msg_t *self, const char *json, size_t size, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    if (!err)
        err = &dummy;
    err->code = 0;
    err->path [0] = 0;
    if (!self) {
        err->code = KIM_E_ARGS;
        return -KIM_E_ARGS;
    }
    kim_msg_init (self);
    if (!json || size == 0) {
        err->code = KIM_E_MALFORMED;
        return -KIM_E_MALFORMED;
    }
    if (size > KIM_JSON_MAX) {
        err->code = KIM_E_TOO_LARGE;
        return -KIM_E_TOO_LARGE;
    }
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = s_json_transcode (json, size, &buf, true, err);
    if (rc == 0)
        rc = kim_msg_decode (self, buf.data, buf.size, err);
    kim_buf_free (&buf);
    return rc;
}

//  --------------------------------------------------------------------------
//  A message header with its payload, as agency systems write it

int
kim_json_message (json_t *root, kim_msg_t *msg, uint8_t **payload, size_t *payload_size,
                  char *why, size_t why_size, char *path, size_t path_size)
{
    *payload = NULL;
    *payload_size = 0;
    path [0] = 0;
    kim_msg_init (msg);
    if (!json_is_object (root)) {
        snprintf (why, why_size, "a message must be one JSON object: its header");
        return -KIM_E_MALFORMED;
    }
    json_t *header = json_deep_copy (root);
    if (!header) {
        snprintf (why, why_size, "out of memory");
        return -KIM_E_NOMEM;
    }
    json_t *text_payload = json_object_get (header, "payload");
    json_t *base64_payload = json_object_get (header, "payload_base64");
    int rc = 0;
    if (text_payload && base64_payload) {
        snprintf (why, why_size, "give \"payload\" or \"payload_base64\", not both");
        snprintf (path, path_size, "payload");
        rc = -KIM_E_BAD_VALUE;
    }
    else
    if (text_payload || base64_payload) {
        json_t *value = text_payload? text_payload: base64_payload;
        snprintf (path, path_size, "%s", text_payload? "payload": "payload_base64");
        if (!json_is_string (value)) {
            snprintf (why, why_size, "%s must be a string", path);
            rc = -KIM_E_BAD_TYPE;
        }
        else {
            const char *chars = json_string_value (value);
            size_t length = json_string_length (value);
            size_t capacity = text_payload? length: length / 4 * 3 + 3;
            *payload = (uint8_t *) malloc (capacity? capacity: 1);
            if (!*payload) {
                snprintf (why, why_size, "out of memory");
                rc = -KIM_E_NOMEM;
            }
            else
            if (text_payload) {
                memcpy (*payload, chars, length);
                *payload_size = length;
            }
            else
            if (sodium_base642bin (*payload, capacity, chars, length, " \r\n", payload_size,
                                   NULL, sodium_base64_VARIANT_ORIGINAL) != 0
            &&  sodium_base642bin (*payload, capacity, chars, length, " \r\n", payload_size,
                                   NULL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0) {
                snprintf (why, why_size, "payload_base64 is not valid base64");
                rc = -KIM_E_BAD_VALUE;
            }
            if (rc == 0 && *payload_size > KIM_PAYLOAD_MAX) {
                snprintf (why, why_size, "the payload is larger than %u bytes", KIM_PAYLOAD_MAX);
                rc = -KIM_E_TOO_LARGE;
            }
            if (rc == 0)
                path [0] = 0;
        }
        json_object_del (header, "payload");
        json_object_del (header, "payload_base64");
    }
    if (rc == 0) {
        char *text = json_dumps (header, JSON_COMPACT);
        kim_decode_error_t derr = { 0, "" };
        rc = text? kim_msg_from_json (msg, text, strlen (text), &derr): -KIM_E_NOMEM;
        free (text);
        if (rc) {
            snprintf (why, why_size, "%s%s%s", kim_strerror (rc), derr.path [0]? " at ": "",
                      derr.path);
            snprintf (path, path_size, "%s", derr.path);
        }
    }
    json_decref (header);
    if (rc) {
        free (*payload);
        *payload = NULL;
        *payload_size = 0;
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  Self-test

//  The self-test checks with assert, which release builds (NDEBUG) would
//  compile away; <assert.h> follows NDEBUG anew each time it is included.
#undef NDEBUG
#include <assert.h>

static void
s_expect (const char *json, int code, const char *path, bool verbose)
{
    kim_msg_t msg;
    kim_decode_error_t err;
    int rc = kim_msg_from_json (&msg, json, strlen (json), &err);
    bool ok = rc == -code && (!path || strcmp (err.path, path) == 0);
    if (verbose || !ok)
        fprintf (ok? stdout: stderr, "  json %-50.50s -> %s '%s'\n", json, kim_errname (err.code),
                 err.path);
    assert (rc == -code);
    assert (err.code == code);
    if (path)
        assert (strcmp (err.path, path) == 0);
}

void
kim_msg_json_test (bool verbose)
{
    kim_msg_t msg, back;
    kim_buf_t buf;
    kim_buf_init (&buf);
    kim_decode_error_t err;

    //  A full header to JSON, exactly, and back.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_REFERRAL;
    strcpy (msg.msg_id, "m-1");
    msg.created_at = 1718000000000;
    strcpy (msg.sender, "kim.rheine");
    strcpy (msg.recipient, "jc.rheine");
    strcpy (msg.referral_id, "r-1");
    strcpy (msg.case_id, "c-1");
    strcpy (msg.sender_ref, "Akte \"7\"\\\n\x01\x1f/\xc3\xa4");
    strcpy (msg.subject, "p-3f9a");
    strcpy (msg.purpose, "employment");
    msg.basis = KIM_BASIS_STATUTE;
    strcpy (msg.citation, "SGB X \xc2\xa7" "69(1)1");
    msg.categories = KIM_CAT_ART9 | KIM_CAT_RESIDENCE_STATUS;
    msg.priority = KIM_PRIORITY_HIGH;
    msg.has_payload_hash = true;
    for (int i = 0; i < KIM_HASH_SIZE; i++)
        msg.payload_hash [i] = (uint8_t) (i * 8 + 1);
    msg.payload_len = 1234;
    assert (kim_msg_to_json (&msg, &buf) == 0);
    const char *expected =
        "{\"type\":\"REFERRAL\",\"schema\":1,\"msg_id\":\"m-1\",\"created_at\":1718000000000,"
        "\"sender\":\"kim.rheine\",\"recipient\":\"jc.rheine\",\"referral_id\":\"r-1\","
        "\"case_id\":\"c-1\",\"sender_case_ref\":\"Akte \\\"7\\\"\\\\\\n\\u0001\\u001f/\xc3\xa4\","
        "\"subject\":\"p-3f9a\",\"purpose\":\"employment\","
        "\"legal_basis\":{\"kind\":\"statute\",\"citation\":\"SGB X \xc2\xa7" "69(1)1\"},"
        "\"categories\":[\"art9\",\"residence_status\"],\"priority\":\"high\","
        "\"payload_len\":1234,\"payload_hash\":\"0109111921293139414951596169717981"
        "899199a1a9b1b9c1c9d1d9e1e9f1f9\"}";
    if (verbose)
        printf ("  %.*s\n", (int) buf.size, (char *) buf.data);
    assert (buf.size == strlen (expected));
    assert (memcmp (buf.data, expected, buf.size) == 0);
    assert (kim_msg_from_json (&back, (char *) buf.data, buf.size, &err) == 0);
    assert (memcmp (&msg, &back, sizeof msg) == 0);

    //  Appending keeps what the buffer held.
    kim_buf_reset (&buf);
    assert (kim_buf_append (&buf, "x", 1) == 0);
    assert (kim_msg_to_json (&msg, &buf) == 0);
    assert (buf.data [0] == 'x' && buf.data [1] == '{' && buf.size == strlen (expected) + 1);

    //  Binary fields, lists, bools, extension keys.
    const char *consent =
        "{\"type\":\"CONSENT_GRANT\",\"msg_id\":\"m-2\",\"case_id\":\"c-1\",\"consent\":\"g-1\","
        "\"subject\":\"p-1\",\"recipients\":[\"jc.rheine\",\"ja.rheine.team-2\"],"
        "\"purposes\":[\"employment\"],\"explicit\":true,\"valid_until\":1750000000000,"
        "\"x-client\":{\"v\":[1,2.5,null,\"a\"]},\"sig\":\"" 
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"}";
    assert (kim_msg_from_json (&msg, consent, strlen (consent), &err) == 0);
    assert (msg.recipient_count == 2 && msg.explicit_art9 && msg.has_sig && msg.sig [1] == 0x11);
    assert (kim_msg_validate (&msg, &err) == 0);
    kim_buf_reset (&buf);
    assert (kim_msg_to_json (&msg, &buf) == 0);
    assert (kim_msg_from_json (&back, (char *) buf.data, buf.size, &err) == 0);
    assert (memcmp (&msg, &back, sizeof msg) == 0);

    //  The decoder's rules and paths, through JSON.
    s_expect ("", KIM_E_MALFORMED, "", verbose);
    s_expect ("[1]", KIM_E_MALFORMED, "", verbose);
    s_expect ("{\"type\":\"ACCEPT\"} x", KIM_E_MALFORMED, "", verbose);
    s_expect ("{\"type\":\"ACCEPT\",\"type\":\"ACCEPT\"}", KIM_E_DUPLICATE_FIELD, NULL, verbose);
    s_expect ("{\"type\":\"NOPE\"}", KIM_E_UNKNOWN_TYPE, "type", verbose);
    s_expect ("{\"typo\":1}", KIM_E_UNKNOWN_FIELD, "typo", verbose);
    s_expect ("{\"deadline\":-1}", KIM_E_BAD_VALUE, "deadline", verbose);
    s_expect ("{\"deadline\":1.5}", KIM_E_BAD_TYPE, "deadline", verbose);
    s_expect ("{\"deadline\":null}", KIM_E_BAD_TYPE, "deadline", verbose);
    s_expect ("{\"deadline\":99999999999999999999}", KIM_E_BAD_VALUE, NULL, verbose);
    s_expect ("{\"note\":\"a\\u0000b\"}", KIM_E_BAD_UTF8, "note", verbose);
    s_expect ("{\"msg_id\":\"a b\"}", KIM_E_BAD_ID, "msg_id", verbose);
    s_expect ("{\"payload_hash\":\"0g\"}", KIM_E_BAD_VALUE, "payload_hash", verbose);
    s_expect ("{\"payload_hash\":\"0A\"}", KIM_E_BAD_VALUE, "payload_hash", verbose);
    s_expect ("{\"payload_hash\":\"abc\"}", KIM_E_BAD_VALUE, "payload_hash", verbose);
    s_expect ("{\"payload_hash\":\"abcd\"}", KIM_E_BAD_VALUE, "payload_hash", verbose);
    s_expect ("{\"payload_hash\":7}", KIM_E_BAD_TYPE, "payload_hash", verbose);
    s_expect ("{\"categories\":[\"art9\",\"art9\"]}", KIM_E_BAD_VALUE, "categories[1]", verbose);
    s_expect ("{\"legal_basis\":{\"kind\":\"consent\"}}", KIM_E_MISSING_FIELD,
              "legal_basis.consent_id", verbose);
    s_expect ("{\"x-a\":[[[1]]]}", KIM_E_TOO_DEEP, "x-a[0][0]", verbose);
    s_expect ("{\"x-a\":{\"b\":{\"c\":{\"d\":1}}}}", KIM_E_TOO_DEEP, "x-a.b.c", verbose);

    //  Counts and sizes: the transcoder stops where the decoder does.
    char big [8192];
    size_t at = (size_t) snprintf (big, sizeof big, "{\"x-a\":[");
    for (int i = 0; i < 1100; i++)
        at += (size_t) snprintf (big + at, sizeof big - at, "%s1", i? ",": "");
    snprintf (big + at, sizeof big - at, "]}");
    s_expect (big, KIM_E_TOO_MANY, "x-a", verbose);
    at = (size_t) snprintf (big, sizeof big, "{");
    for (int i = 0; i < 70; i++)
        at += (size_t) snprintf (big + at, sizeof big - at, "%s\"x-%d\":1", i? ",": "", i);
    snprintf (big + at, sizeof big - at, "}");
    s_expect (big, KIM_E_TOO_MANY, "", verbose);

    size_t huge_size = KIM_JSON_MAX + 1;
    char *huge = malloc (huge_size);
    assert (huge);
    memset (huge, ' ', huge_size);
    huge [0] = '{';
    huge [huge_size - 1] = '}';
    assert (kim_msg_from_json (&msg, huge, huge_size, &err) == -KIM_E_TOO_LARGE);
    //  Under the JSON limit but over the frame limit once transcoded.
    at = (size_t) snprintf (huge, huge_size, "{");
    for (int i = 0; i < 60; i++)
        at += (size_t) snprintf (huge + at, huge_size - at, "%s\"x-%d\":\"%01200d\"", i? ",": "", i, 0);
    snprintf (huge + at, huge_size - at, "}");
    assert (kim_msg_from_json (&msg, huge, strlen (huge), &err) == -KIM_E_TOO_LARGE);
    free (huge);

    //  The plain transcoder keeps everything, duplicates excepted.
    kim_buf_reset (&buf);
    const char *mixed = "{\"a\":[1,-1,true,null,1.5,\"s\"]}";
    assert (kim_json_to_msgpack (mixed, strlen (mixed), &buf) == 0);
    const uint8_t plain [] = { 0x81, 0xa1, 'a', 0x96, 0x01, 0xff, 0xc3, 0xc0, 0xcb,
                               0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xa1, 's' };
    assert (buf.size == sizeof plain && memcmp (buf.data, plain, sizeof plain) == 0);
    const char *dup = "{\"a\":1,\"a\":2}";
    assert (kim_json_to_msgpack (dup, strlen (dup), &buf) == -KIM_E_DUPLICATE_FIELD);

    kim_buf_free (&buf);
}
