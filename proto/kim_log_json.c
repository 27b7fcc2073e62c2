/*  kim_log_json.c — log records as JSON lines, fast, and field lookups in
    record bodies, for `kim audit replay/export/case` and the broker's QUERY
    filters.

    A replay of a year of log must take seconds, so this path allocates
    nothing per record: one pass over the MessagePack body (kim_mp_json.c)
    writes JSON straight into a buffer that was grown once for the worst
    case. It knows no field: every record kind whose body is MessagePack
    comes out readable; anything else as hex.
*/
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_log.h"
#include "kim_mp_json.h"

int
kim_log_body_to_json (const uint8_t *body, size_t size, kim_buf_t *out)
{
    //  A record with an empty body has none: NULL + 0 is undefined in C
    static const uint8_t s_none [1];
    if (!body)
        body = s_none;
    if (kim_buf_reserve (out, KIM_MP_JSON_ROOM (size)))
        return -KIM_E_NOMEM;
    kim_mp_json_t w = { .p = body, .end = body + size, .out = (char *) out->data + out->size,
                        .start = body, .depth_max = 16 };
    if (size && kim_mp_json_value (&w, 0) == 0 && w.p == w.end) {
        out->size = (size_t) ((uint8_t *) w.out - out->data);
        return 0;
    }
    //  Not (only) MessagePack: the bytes as hex
    w.out = (char *) out->data + out->size;
    kim_mp_json_hex (&w, body, size);
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
    kim_mp_json_t w = { .out = (char *) out->data + out->size };
    memcpy (w.out, "{\"seq\":", 7);
    w.out += 7;
    kim_mp_json_unsigned (&w, record->seq);
    memcpy (w.out, ",\"time\":", 8);
    w.out += 8;
    kim_mp_json_unsigned (&w, record->time_ms);
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
        kim_mp_json_unsigned (&w, record->kind);
    if (hashes) {
        memcpy (w.out, ",\"hash\":", 8);
        w.out += 8;
        kim_mp_json_hex (&w, record->hash, KIM_HASH_SIZE);
        memcpy (w.out, ",\"raw\":", 7);
        w.out += 7;
        kim_mp_json_hex (&w, record->body, record->body_size);
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
    //  The checkpoint record seals itself: its time is the checkpoint's
    S_CHECK (verify.last == 4 && verify.sealed == 4 && verify.checkpoints == 1);
    //  ...not when its record time differs (the signature does not cover it)
    kim_log_record_t moved = records [3];
    moved.time_ms = 2001;
    kim_log_record_hash (records [2].hash, moved.kind, 4, 2001, bodies [3],
                         KIM_LOG_CHECKPOINT_SIZE, moved.hash);
    kim_log_verify_init (&verify, pk, 1, NULL);
    for (int i = 0; i < 3; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);
    S_CHECK (kim_log_verify_step (&verify, &moved) == 0);
    S_CHECK (verify.last == 4 && verify.sealed == 3);

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
    //  A replaced signing key: a later checkpoint, signed by the new key,
    //  after the one of the old key. Both keys given, each checkpoint
    //  verifies with the key its key_id names; either alone fails at the
    //  other's checkpoint, and an outside checkpoint of either key holds.
    kim_log_checkpoint_t later = { .seq = 4, .time_ms = 3000 };
    memcpy (later.head, records [3].hash, KIM_HASH_SIZE);
    kim_log_checkpoint_sign (&later, other_sk);
    uint8_t later_body [KIM_LOG_CHECKPOINT_SIZE];
    kim_log_checkpoint_encode (&later, later_body);
    kim_log_record_t fifth = { .seq = 5, .time_ms = 3000, .kind = KIM_LOG_CHECKPOINT,
                               .body = later_body, .body_size = KIM_LOG_CHECKPOINT_SIZE };
    kim_log_record_hash (records [3].hash, fifth.kind, 5, 3000, later_body,
                         KIM_LOG_CHECKPOINT_SIZE, fifth.hash);
    for (int keys = 0; keys < 3; keys++) {
        kim_log_verify_init (&verify, keys == 1? other_pk: pk, 1, NULL);
        if (keys == 2)
            S_CHECK (kim_log_verify_add_key (&verify, other_pk) == 0);
        int rc = 0;
        for (int i = 0; i < 4 && rc == 0; i++)
            rc = kim_log_verify_step (&verify, &records [i]);
        if (rc == 0)
            rc = kim_log_verify_step (&verify, &fifth);
        if (keys == 2) {
            S_CHECK (rc == 0 && verify.checkpoints == 2 && verify.sealed == 5);
            S_CHECK (kim_log_verify_end (&verify, &later, records [3].hash) == 0);
            S_CHECK (kim_log_verify_end (&verify, &checkpoint, records [2].hash) == 0);
        }
        else {
            S_CHECK (rc == -KIM_E_VERIFY_FAILED && verify.bad_seq == (keys == 0? 5u: 4u));
            S_CHECK (strstr (verify.why, "not by the broker's key"));
        }
    }
    kim_log_verify_init (&verify, pk, 1, NULL);
    for (int i = 1; i < KIM_LOG_VERIFY_KEYS; i++)
        S_CHECK (kim_log_verify_add_key (&verify, other_pk) == 0);
    S_CHECK (kim_log_verify_add_key (&verify, other_pk) == -KIM_E_ARGS);
    //  A cut-off tail, against a checkpoint held outside
    kim_log_verify_init (&verify, pk, 1, NULL);
    S_CHECK (kim_log_verify_step (&verify, &records [0]) == 0);
    S_CHECK (kim_log_verify_end (&verify, &checkpoint, NULL) == -KIM_E_VERIFY_FAILED);
    S_CHECK (verify.bad_seq == 2);
    //  Mid-log start anchored on the first record's stored hash
    kim_log_verify_init (&verify, pk, 2, NULL);
    for (int i = 1; i < 4; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);

    //  The signed bytes are exactly the spec's: domain, seq, all 32 bytes of
    //  the head, time. A change in the head's last byte breaks the signature.
    uint8_t message [KIM_LOG_SIGNED_SIZE];
    kim_log_checkpoint_message (&checkpoint, message);
    S_CHECK (memcmp (message, "kim-checkpoint-2", 16) == 0);
    S_CHECK (kim_log_get_be64 (message + 16) == 3);
    S_CHECK (memcmp (message + 24, checkpoint.head, KIM_HASH_SIZE) == 0);
    S_CHECK (kim_log_get_be64 (message + 56) == 2000);
    S_CHECK (crypto_sign_verify_detached (checkpoint.sig, message, sizeof message, pk) == 0);
    S_CHECK (kim_log_checkpoint_layout (&checkpoint, pk) == KIM_LOG_CHECKPOINT_V2);
    decoded = checkpoint;
    decoded.head [KIM_HASH_SIZE - 1] ^= 1;
    S_CHECK (kim_log_checkpoint_layout (&decoded, pk) == 0);

    //  The test vector of PROTOCOL.md §8.11, byte for byte
    {
        static const char *body_hex =
            "85a3736571cf0000000000000412a468656164c42096efa0f4cd431b44c1affe"
            "ba0d81d25be3abd57566e53ff3e190d78a2b1937e9a474696d65cf0000019000"
            "c79c7ba66b65795f6964b034643464626539313735343462303739a3736967c4"
            "401bad34f11b1bf2f02d858f986beb3f31804dcdb801b1bdb2e33c8b76e212b7"
            "30e2f0d89c0ea90ed17bb4fde7f0ccfd981a38d622ba796431d7a1445daeb68f"
            "09";
        static const char *legacy_sig_hex =
            "b603216d8a7be1dec07e2f3322b4f09daf6de28f218d7a71e924c09d60566f21"
            "59470c7a78e4202bd843f3a30c91d62b6684121b8489dca448af30a34b89fd08";
        uint8_t seed [32], vector_pk [32], vector_sk [64];
        for (int i = 0; i < 32; i++)
            seed [i] = (uint8_t) (i + 1);
        crypto_sign_seed_keypair (vector_pk, vector_sk, seed);
        kim_log_checkpoint_t vector = { .seq = 1042, .time_ms = 1718000000123ULL };
        S_CHECK (sodium_hex2bin (vector.head, KIM_HASH_SIZE, "96efa0f4cd431b44c1affeba0d81d25b"
                                 "e3abd57566e53ff3e190d78a2b1937e9", 64, NULL, NULL, NULL) == 0);
        kim_log_checkpoint_sign (&vector, vector_sk);
        uint8_t body [KIM_LOG_CHECKPOINT_SIZE], expected_body [KIM_LOG_CHECKPOINT_SIZE];
        size_t size = 0;
        S_CHECK (sodium_hex2bin (expected_body, sizeof expected_body, body_hex,
                                 strlen (body_hex), NULL, &size, NULL) == 0
              && size == sizeof expected_body);
        kim_log_checkpoint_encode (&vector, body);
        S_CHECK (memcmp (body, expected_body, sizeof body) == 0);
        uint8_t legacy_sig [KIM_SIG_SIZE];
        S_CHECK (sodium_hex2bin (legacy_sig, sizeof legacy_sig, legacy_sig_hex,
                                 strlen (legacy_sig_hex), NULL, NULL, NULL) == 0);
        memcpy (vector.sig, legacy_sig, KIM_SIG_SIZE);
        S_CHECK (kim_log_checkpoint_layout (&vector, vector_pk) == KIM_LOG_CHECKPOINT_V1);
    }

    //  A legacy checkpoint, signed as brokers did before "kim-checkpoint-2":
    //  it verifies, but does not cover the head's last 8 bytes.
    kim_log_checkpoint_t legacy = checkpoint;
    uint8_t legacy_message [KIM_LOG_SIGNED_SIZE_LEGACY];
    kim_log_checkpoint_message_legacy (&legacy, legacy_message);
    S_CHECK (memcmp (legacy_message, "kim-checkpoint-1", 16) == 0);
    S_CHECK (memcmp (legacy_message + 24, legacy.head, 24) == 0);
    S_CHECK (kim_log_get_be64 (legacy_message + 48) == 2000);
    crypto_sign_detached (legacy.sig, NULL, legacy_message, sizeof legacy_message, sk);
    S_CHECK (kim_log_checkpoint_layout (&legacy, pk) == KIM_LOG_CHECKPOINT_V1);
    S_CHECK (kim_log_checkpoint_verify (&legacy, pk));
    S_CHECK (!kim_log_checkpoint_verify (&legacy, other_pk));
    legacy.time_ms++;
    S_CHECK (!kim_log_checkpoint_verify (&legacy, pk));
    legacy.time_ms--;
    //  ...in a chain: the legacy checkpoint record verifies as a whole log
    uint8_t legacy_body [KIM_LOG_CHECKPOINT_SIZE];
    kim_log_checkpoint_encode (&legacy, legacy_body);
    kim_log_record_t legacy_record = records [3];
    legacy_record.body = legacy_body;
    kim_log_record_hash (records [2].hash, KIM_LOG_CHECKPOINT, 4, 2000, legacy_body,
                         KIM_LOG_CHECKPOINT_SIZE, legacy_record.hash);
    kim_log_verify_init (&verify, pk, 1, NULL);
    for (int i = 0; i < 3; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);
    S_CHECK (kim_log_verify_step (&verify, &legacy_record) == 0);
    S_CHECK (verify.sealed == 4 && verify.legacy == 1 && !verify.current_seen);
    S_CHECK (kim_log_verify_end (&verify, &legacy, records [2].hash) == 0);
    //  ...but not once the broker signs the current layout: a legacy
    //  checkpoint after a current one is refused, in the log and outside it
    kim_log_verify_init (&verify, pk, 1, NULL);
    for (int i = 0; i < 4; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);
    S_CHECK (verify.current_seen && verify.legacy == 0);
    S_CHECK (kim_log_verify_end (&verify, &legacy, NULL) == -KIM_E_VERIFY_FAILED);
    kim_log_record_t late [1];
    uint8_t late_body [KIM_LOG_CHECKPOINT_SIZE];
    legacy.seq = 4;
    memcpy (legacy.head, records [3].hash, KIM_HASH_SIZE);
    kim_log_checkpoint_message_legacy (&legacy, legacy_message);
    crypto_sign_detached (legacy.sig, NULL, legacy_message, sizeof legacy_message, sk);
    kim_log_checkpoint_encode (&legacy, late_body);
    late [0] = (kim_log_record_t) { .seq = 5, .time_ms = 2000, .kind = KIM_LOG_CHECKPOINT,
                                    .body = late_body, .body_size = KIM_LOG_CHECKPOINT_SIZE };
    kim_log_record_hash (records [3].hash, KIM_LOG_CHECKPOINT, 5, 2000, late_body,
                         KIM_LOG_CHECKPOINT_SIZE, late [0].hash);
    kim_log_verify_init (&verify, pk, 1, NULL);
    for (int i = 0; i < 4; i++)
        S_CHECK (kim_log_verify_step (&verify, &records [i]) == 0);
    S_CHECK (kim_log_verify_step (&verify, &late [0]) == -KIM_E_VERIFY_FAILED);
    S_CHECK (verify.bad_seq == 5 && strstr (verify.why, "legacy"));

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
    //  Strings from a log file that are not UTF-8 still give valid JSON:
    //  each bad byte becomes U+FFFD, good sequences (also after the fast
    //  eight-byte path and in its tail) are kept.
    kim_buf_reset (&buf);
    const uint8_t mixed [] = { 0xb7, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 0xff, 'x',
                               0xc3, 0xa4, 0xe2, 0x82, 'y', 0xf0, 0x9f, 0x98, 0x80,
                               0xed, 0xa0, 0x80, 0xc3 };
    S_CHECK (kim_log_body_to_json (mixed, sizeof mixed, &buf) == 0);
    const char *mixed_json = "\"abcdefgh\\ufffdx\xc3\xa4\\ufffd\\ufffdy\xf0\x9f\x98\x80"
                             "\\ufffd\\ufffd\\ufffd\\ufffd\"";
    if (verbose)
        printf ("%.*s\n", (int) buf.size, (char *) buf.data);
    S_CHECK (buf.size == strlen (mixed_json) && memcmp (buf.data, mixed_json, buf.size) == 0);
    kim_buf_free (&buf);
    char value [16];
    S_CHECK (kim_log_body_str (bodies [0], 16, "case_id", value, sizeof value));
    S_CHECK (strcmp (value, "c-1") == 0);
    S_CHECK (!kim_log_body_str (bodies [0], 16, "n", value, sizeof value));
    S_CHECK (!kim_log_body_str (bodies [0], 16, "org", value, sizeof value));
    S_CHECK (kim_log_kind_from_name ("checkpoint") == KIM_LOG_CHECKPOINT);
}
