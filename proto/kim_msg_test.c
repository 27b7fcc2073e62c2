/*  kim_msg_test.c — the codec's self-test (kim_msg_test): every command and
    message type round-trips, every validation rule has a negative case, and
    random damage to valid frames decodes to an error or to something that
    encodes back to the same bytes. It uses the public API only.
*/
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include <msgpack.h>

#include "kim/kim_msg.h"

//  --------------------------------------------------------------------------
//  Self-test

//  The self-test checks with assert, which release builds (NDEBUG) would
//  compile away; <assert.h> follows NDEBUG anew each time it is included.
#undef NDEBUG
#include <assert.h>

//  A valid header of each type, with some optional fields too.
static void
s_test_msg (kim_msg_t *msg, kim_type_t type)
{
    kim_msg_init (msg);
    msg->type = type;
    snprintf (msg->msg_id, sizeof msg->msg_id, "m-%d", (int) type);
    msg->created_at = 1718000000000;
    unsigned flags = kim_type_flags (type);
    if (flags & KIM_MSG_REFERRAL_ANSWER) {
        strcpy (msg->recipient, "kim.rheine");
        strcpy (msg->referral_id, "r-1");
        strcpy (msg->ref_msg_id, "m-1");
    }
    switch (type) {
        case KIM_TYPE_REFERRAL:
            strcpy (msg->recipient, "jc.rheine");
            strcpy (msg->referral_id, "r-1");
            strcpy (msg->case_id, "c-1");
            strcpy (msg->sender_ref, "KIM-2024/17");
            strcpy (msg->subject, "p-3f9a");
            strcpy (msg->purpose, "employment");
            msg->basis = KIM_BASIS_STATUTE;
            strcpy (msg->citation, "SGB X \xc2\xa7" "69(1)1");
            msg->categories = KIM_CAT_RESIDENCE_STATUS;
            msg->deadline = 1719000000000;
            msg->priority = KIM_PRIORITY_HIGH;
            break;
        case KIM_TYPE_ACCEPT:
            strcpy (msg->recipient_ref, "JC-0815");
            break;
        case KIM_TYPE_DECLINE:
            strcpy (msg->code, "capacity");
            strcpy (msg->note, "Keine Pl\xc3\xa4tze bis M\xc3\xa4rz");
            break;
        case KIM_TYPE_NOT_COMPETENT:
            strcpy (msg->org, "ikt.rheine");
            break;
        case KIM_TYPE_FORWARD:
            strcpy (msg->org, "ikt.rheine");
            strcpy (msg->purpose, "language_course");
            msg->basis = KIM_BASIS_CONSENT;
            strcpy (msg->consent_id, "g-1");
            break;
        case KIM_TYPE_STATUS:
            strcpy (msg->code, "appointment_set");
            break;
        case KIM_TYPE_OUTCOME:
            strcpy (msg->code, "completed");
            break;
        case KIM_TYPE_HANDOVER_OFFER:
            strcpy (msg->recipient, "kim.coesfeld");
            strcpy (msg->case_id, "c-1");
            msg->basis = KIM_BASIS_STATUTE;
            strcpy (msg->citation, "SGB VIII \xc2\xa7" "86c");
            msg->referral_count = 2;
            strcpy (msg->referrals [0], "r-1");
            strcpy (msg->referrals [1], "r-2");
            break;
        case KIM_TYPE_HANDOVER_ACCEPT:
        case KIM_TYPE_HANDOVER_DECLINE:
            strcpy (msg->recipient, "kim.rheine");
            strcpy (msg->case_id, "c-1");
            strcpy (msg->ref_msg_id, "m-20");
            if (type == KIM_TYPE_HANDOVER_DECLINE)
                strcpy (msg->code, "not_competent");
            break;
        case KIM_TYPE_CASE_CLOSED:
            strcpy (msg->case_id, "c-1");
            break;
        case KIM_TYPE_CONSENT_GRANT:
            strcpy (msg->case_id, "c-1");
            strcpy (msg->grant_id, "g-1");
            strcpy (msg->subject, "p-3f9a");
            msg->recipient_count = 2;
            strcpy (msg->recipients [0], "jc.rheine");
            strcpy (msg->recipients [1], "mbe.rheine.caritas");
            msg->purpose_count = 1;
            strcpy (msg->purposes [0], "employment");
            msg->categories = KIM_CAT_ART9;
            msg->explicit_art9 = true;
            msg->valid_until = 1750000000000;
            break;
        case KIM_TYPE_CONSENT_REVOKE:
            strcpy (msg->grant_id, "g-1");
            break;
        case KIM_TYPE_ERASURE:
        case KIM_TYPE_ACCESS_REPORT:
            strcpy (msg->subject, "p-3f9a");
            break;
        case KIM_TYPE_DELIVERED:
            strcpy (msg->recipient, "kim.rheine");
            strcpy (msg->ref_msg_id, "m-1");
            break;
        case KIM_TYPE_REMINDER:
        case KIM_TYPE_EXPIRED:
            strcpy (msg->recipient, "kim.rheine");
            strcpy (msg->referral_id, "r-1");
            msg->deadline = 1719000000000;
            break;
        case KIM_TYPE_UNDELIVERABLE:
            strcpy (msg->recipient, "kim.rheine");
            strcpy (msg->ref_msg_id, "m-1");
            strcpy (msg->referral_id, "r-1");
            strcpy (msg->code, "policy_deny");
            strcpy (msg->org, "broker.coesfeld");
            strcpy (msg->rule, "no-art9-to-private");
            strcpy (msg->note, "refused by broker.coesfeld");
            break;
        case KIM_TYPE_HANDED_OVER:
            strcpy (msg->recipient, "kim.coesfeld");
            strcpy (msg->referral_id, "r-1");
            strcpy (msg->case_id, "c-1");
            strcpy (msg->ref_msg_id, "m-1");
            strcpy (msg->org, "jc.rheine");
            strcpy (msg->code, "delivered");
            msg->deadline = 1719000000000;
            break;
        default:
            break;
    }
}

static const uint8_t s_test_body [] = { 0x81, 0xa1, 'a', 0x01 };

//  A valid command of each kind.
static void
s_test_cmd (kim_cmd_t *cmd, kim_cmd_id_t id)
{
    kim_cmd_init (cmd, id);
    switch (id) {
        case KIM_CMD_HELLO:
            cmd->version_count = 2;
            cmd->versions [0] = 1;
            cmd->versions [1] = 2;
            strcpy (cmd->agent, "kim-agent/0.1");
            cmd->window = 64;
            break;
        case KIM_CMD_WELCOME:
            cmd->version = 1;
            strcpy (cmd->org, "kim.rheine");
            strcpy (cmd->broker, "broker.steinfurt");
            cmd->heartbeat_ms = 5000;
            cmd->max_payload = KIM_PAYLOAD_DEFAULT;
            cmd->window = 64;
            break;
        case KIM_CMD_SEND:
            s_test_msg (&cmd->msg, KIM_TYPE_REFERRAL);
            break;
        case KIM_CMD_RECEIPT:
            strcpy (cmd->msg_id, "m-1");
            cmd->seq = 70000;
            cmd->dup = true;
            break;
        case KIM_CMD_REJECT:
            cmd->code = KIM_E_POLICY_DENY;
            strcpy (cmd->text, kim_strerror (cmd->code));
            strcpy (cmd->msg_id, "m-1");
            strcpy (cmd->path, "hdr.categories[0]");
            break;
        case KIM_CMD_DELIVER:
            cmd->seq = 42;
            s_test_msg (&cmd->msg, KIM_TYPE_REFERRAL);
            strcpy (cmd->msg.sender, "kim.rheine");
            cmd->msg.payload_len = 300;
            cmd->msg.has_payload_hash = true;
            memset (cmd->msg.payload_hash, 0xab, KIM_HASH_SIZE);
            break;
        case KIM_CMD_SEND_BATCH:
        case KIM_CMD_RECEIPT_BATCH:
        case KIM_CMD_DELIVER_BATCH:
            cmd->count = KIM_BATCH_MAX;
            break;
        case KIM_CMD_ACK_RANGE:
            cmd->range_count = 4;
            cmd->ranges [0] = 42;
            cmd->ranges [1] = 42;
            cmd->ranges [2] = 43;
            cmd->ranges [3] = 5000000000ull;
            break;
        case KIM_CMD_ACK:
            cmd->ack_count = 3;
            cmd->acks [0] = 42;
            cmd->acks [1] = 300;
            cmd->acks [2] = 5000000000ull;
            break;
        case KIM_CMD_STATUS_REPLY:
            cmd->status.log_head = 1000;
            cmd->status.mailbox = 3;
            cmd->status.in_flight = 1;
            cmd->status.sessions = 2;
            cmd->status.uptime_ms = 86400000;
            cmd->status.store_bytes = 1 << 20;
            break;
        case KIM_CMD_SUBSCRIBE:
            strcpy (cmd->sub_id, "s-1");
            strcpy (cmd->case_id, "c-1");
            cmd->type_count = 2;
            cmd->types [0] = KIM_TYPE_ACCEPT;
            cmd->types [1] = KIM_TYPE_OUTCOME;
            break;
        case KIM_CMD_UNSUBSCRIBE:
            strcpy (cmd->sub_id, "s-1");
            break;
        case KIM_CMD_QUERY:
            strcpy (cmd->query_id, "q-1");
            cmd->from_seq = 1;
            cmd->to_seq = 1000;
            cmd->from_time = 1;
            cmd->to_time = 2;
            strcpy (cmd->case_id, "c-1");
            strcpy (cmd->org, "jc.rheine");
            cmd->type = KIM_TYPE_REFERRAL;
            cmd->window = 100;
            break;
        case KIM_CMD_RECORD:
            strcpy (cmd->query_id, "q-1");
            cmd->seq = 7;
            cmd->time = 1718000000000;
            cmd->kind = 1;
            memset (cmd->hash, 0x5a, KIM_HASH_SIZE);
            cmd->body = s_test_body;
            cmd->body_size = sizeof s_test_body;
            break;
        case KIM_CMD_QUERY_END:
            strcpy (cmd->query_id, "q-1");
            cmd->count = 7;
            break;
        case KIM_CMD_REFERRAL_QUERY:
            strcpy (cmd->query_id, "rq-1");
            strcpy (cmd->case_id, "c-1");
            strcpy (cmd->org, "jc.rheine");
            strcpy (cmd->referral_id, "r-1");
            break;
        case KIM_CMD_REFERRAL_INFO:
            strcpy (cmd->query_id, "rq-1");
            cmd->count = 1;
            cmd->body = s_test_body;
            cmd->body_size = sizeof s_test_body;
            break;
        case KIM_CMD_PEER_DIRECTORY: {
            static kim_dir_entry_t entry = {
                "jc.coesfeld", "Jobcenter Coesfeld", "jc", true,
                "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", "", ""
            };
            strcpy (cmd->broker, "broker.coesfeld");
            cmd->dir = &entry;
            cmd->dir_count = 1;
            cmd->serial = 1718000000000;
            cmd->has_sig = true;
            memset (cmd->sig, 0x5c, KIM_SIG_SIZE);
            break;
        }
        case KIM_CMD_PEER_FORWARD:
            cmd->seq = 42;
            s_test_msg (&cmd->msg, KIM_TYPE_REFERRAL);
            strcpy (cmd->msg.sender, "kim.rheine");
            cmd->msg.payload_len = 300;
            cmd->msg.has_payload_hash = true;
            memset (cmd->msg.payload_hash, 0xab, KIM_HASH_SIZE);
            break;
        case KIM_CMD_PEER_ACK:
            cmd->seq = 42;
            cmd->dup = true;
            break;
        case KIM_CMD_PEER_REFUSED:
            cmd->seq = 42;
            cmd->code = KIM_E_POLICY_DENY;
            strcpy (cmd->text, "no rule allows this transfer");
            strcpy (cmd->path, "hdr.purpose");
            strcpy (cmd->rule, "default-deny");
            break;
        default:
            break;
    }
}

//  Compares two decoded commands; the body is compared by content.
static bool
s_test_same (const kim_cmd_t *a, const kim_cmd_t *b)
{
    if (a->body_size != b->body_size
    ||  (a->body_size && memcmp (a->body, b->body, a->body_size) != 0))
        return false;
    kim_cmd_t *x = malloc (2 * sizeof (kim_cmd_t));
    assert (x);
    memcpy (&x [0], a, sizeof *a);
    memcpy (&x [1], b, sizeof *b);
    x [0].body = x [1].body = NULL;
    x [0].dir_raw = x [1].dir_raw = NULL;       //  borrowed from each one's frame
    x [0].dir = x [1].dir = NULL;               //  entries: compared by the encoding
    x [0].dir_raw_size = x [1].dir_raw_size = 0;
    for (int i = 0; i < 2; i++)                 //  entries past the count are undefined
        memset (x [i].acks + x [i].ack_count, 0,
                (KIM_ACKS_MAX - x [i].ack_count) * sizeof x [i].acks [0]);
    bool same = memcmp (&x [0], &x [1], sizeof *a) == 0;
    free (x);
    return same;
}

//  encode -> decode -> same value -> encode -> same bytes
static void
s_test_roundtrip (const kim_cmd_t *cmd, bool verbose)
{
    kim_buf_t buf, again;
    kim_buf_init (&buf);
    kim_buf_init (&again);
    kim_cmd_t *back = malloc (sizeof *back);
    assert (back);
    kim_decode_error_t err;
    int rc = kim_cmd_encode (cmd, &buf);
    if (rc)
        fprintf (stderr, "  encode %s: %s\n", kim_cmd_name (cmd->id), kim_errname (rc));
    assert (rc == 0);
    rc = kim_cmd_decode (back, buf.data, buf.size, &err);
    if (rc || verbose)
        fprintf (rc? stderr: stdout, "  %s %s: %zu bytes, %s %s\n", kim_cmd_name (cmd->id),
                kim_type_name (cmd->msg.type)? kim_type_name (cmd->msg.type): "",
                buf.size, kim_errname (rc), err.path);
    assert (rc == 0);
    assert (s_test_same (cmd, back));
    assert (kim_cmd_encode (back, &again) == 0);
    assert (again.size == buf.size && memcmp (again.data, buf.data, buf.size) == 0);
    if (cmd->id == KIM_CMD_DELIVER) {
        kim_buf_t hdr;
        kim_buf_init (&hdr);
        assert (kim_msg_encode (&cmd->msg, &hdr) == 0);
        kim_buf_reset (&again);
        assert (kim_cmd_encode_deliver (cmd->seq, hdr.data, hdr.size, &again) == 0);
        assert (again.size == buf.size && memcmp (again.data, buf.data, buf.size) == 0);
        kim_buf_free (&hdr);
    }
    //  Every strict prefix is truncated input; anything appended is trailing.
    for (size_t len = 0; len < buf.size; len++)
        assert (kim_cmd_decode (back, buf.data, len, &err) == -KIM_E_MALFORMED);
    assert (kim_buf_append (&buf, "", 1) == 0);
    assert (kim_cmd_decode (back, buf.data, buf.size, &err) == -KIM_E_MALFORMED);
    assert (err.path [0] == 0);
    free (back);
    kim_buf_free (&buf);
    kim_buf_free (&again);
}

//  Test JSON uses ' for " to stay readable; %s etc. as printf.
static void
s_test_mp (kim_buf_t *buf, const char *fmt, va_list args)
{
    char json [8192];
    vsnprintf (json, sizeof json, fmt, args);
    for (char *p = json; *p; p++)
        if (*p == '\'')
            *p = '"';
    kim_buf_reset (buf);
    int rc = kim_json_to_msgpack (json, strlen (json), buf);
    if (rc)
        fprintf (stderr, "  bad test JSON: %s\n", json);
    assert (rc == 0);
}

static void
s_test_expect_bytes (const uint8_t *data, size_t size, int code, const char *path,
                     const char *what, bool verbose)
{
    kim_cmd_t *cmd = malloc (sizeof *cmd);
    assert (cmd);
    kim_decode_error_t err;
    int rc = kim_cmd_decode (cmd, data, size, &err);
    bool ok = code? rc == -code && err.code == code && (!path || strcmp (err.path, path) == 0)
                  : rc == 0;
    if (verbose || !ok)
        fprintf (ok? stdout: stderr, "  %-60.60s -> %s '%s'%s\n", what,
                 rc? kim_errname (err.code): "OK", err.path, ok? "": " UNEXPECTED");
    assert (ok);
    //  What decodes, encodes and decodes again to the same.
    if (rc == 0) {
        kim_buf_t buf;
        kim_buf_init (&buf);
        kim_cmd_t *back = malloc (sizeof *back);
        assert (back);
        assert (kim_cmd_encode (cmd, &buf) == 0);
        assert (kim_cmd_decode (back, buf.data, buf.size, &err) == 0);
        assert (s_test_same (cmd, back));
        free (back);
        kim_buf_free (&buf);
    }
    free (cmd);
}

static void
s_test_expect (bool verbose, int code, const char *path, const char *fmt, ...)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    va_list args;
    va_start (args, fmt);
    s_test_mp (&buf, fmt, args);
    va_end (args);
    s_test_expect_bytes (buf.data, buf.size, code, path, fmt, verbose);
    kim_buf_free (&buf);
}

//  As s_test_expect, after replacing the bytes `from` (first occurrence) by
//  `to`, of the same length: for what JSON cannot say (bad UTF-8,
//  duplicate keys).
static void
s_test_patched (bool verbose, int code, const char *path, const char *from, const char *to,
                const char *fmt, ...)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    va_list args;
    va_start (args, fmt);
    s_test_mp (&buf, fmt, args);
    va_end (args);
    size_t len = strlen (from);
    assert (strlen (to) == len);
    uint8_t *at = NULL;
    for (size_t i = 0; i + len <= buf.size && !at; i++)
        if (memcmp (buf.data + i, from, len) == 0)
            at = buf.data + i;
    assert (at);
    memcpy (at, to, len);
    s_test_expect_bytes (buf.data, buf.size, code, path, fmt, verbose);
    kim_buf_free (&buf);
}

//  A valid SEND REFERRAL in test JSON; %s adds header fields.
#define S_REFERRAL "{'cmd':'SEND','hdr':{'type':'REFERRAL','msg_id':'m-1','recipient':'jc.rheine'," \
    "'referral_id':'r-1','case_id':'c-1','subject':'p-1','purpose':'employment'," \
    "'legal_basis':{'kind':'statute','citation':'SGB II'}%s}}"
#define S_ANSWER "{'cmd':'SEND','hdr':{'type':'%s','msg_id':'m-2','recipient':'kim.rheine'," \
    "'referral_id':'r-1'%s}}"
#define S_HELLO "{'cmd':'HELLO','versions':[1],'agent':'a','window':%s}"

static void
s_test_negative (bool verbose)
{
    //  Frame shape
    s_test_expect_bytes ((const uint8_t *) "", 0, KIM_E_MALFORMED, "", "empty", verbose);
    s_test_expect (verbose, KIM_E_MALFORMED, "", "['cmd','PING']");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "cmd", "{}");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "cmd", "{'cmd':1}");
    s_test_expect (verbose, KIM_E_UNKNOWN_CMD, "cmd", "{'cmd':'FETCH'}");
    s_test_expect (verbose, KIM_E_UNKNOWN_CMD, "cmd", "{'cmd':'ping'}");
    s_test_patched (verbose, KIM_E_DUPLICATE_FIELD, "cmd", "cmc", "cmd", "{'cmd':'PING','cmc':'PONG'}");
    s_test_expect (verbose, 0, NULL, "{'x-trace':'abc','cmd':'PING'}");
    s_test_expect (verbose, KIM_E_UNKNOWN_FIELD, "seq", "{'cmd':'PING','seq':1}");
    s_test_expect (verbose, KIM_E_UNKNOWN_FIELD, "X-trace", "{'cmd':'PING','X-trace':1}");
    s_test_patched (verbose, KIM_E_DUPLICATE_FIELD, "x-a", "x-b", "x-a",
                    "{'cmd':'PING','x-a':1,'x-b':2}");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "x-?", "x-a", "x-\xff", "{'cmd':'PING','x-a':1}");
    s_test_patched (verbose, KIM_E_BAD_TYPE, "", "\xa3" "x-a\x01", "\x93\x01\x02\x03\x01",
                    "{'cmd':'PING','x-a':1}");
    s_test_patched (verbose, KIM_E_MALFORMED, "x-a.x", "\xa1x\x01", "\xa1x\xc1",
                    "{'cmd':'PING','x-a':{'x':1}}");
    //  0xc1 is never used
    s_test_patched (verbose, KIM_E_MALFORMED, "x-a", "\x01", "\xc1", "{'cmd':'PING','x-a':1}");
    //  Claims far more than the input holds: refused before anything is allocated
    const uint8_t huge_map [] = { 0xdf, 0xff, 0xff, 0xff, 0xff };
    s_test_expect_bytes (huge_map, sizeof huge_map, KIM_E_TOO_MANY, "", "map32 4G", verbose);
    const uint8_t huge_array [] = { 0x81, 0xa3, 'x', '-', 'a', 0xdd, 0xff, 0xff, 0xff, 0xff };
    s_test_expect_bytes (huge_array, sizeof huge_array, KIM_E_TOO_MANY, "x-a", "array32 4G", verbose);
    const uint8_t long_str [] = { 0x81, 0xa3, 'c', 'm', 'd', 0xdb, 0xff, 0xff, 0xff, 0xff, 'P' };
    s_test_expect_bytes (long_str, sizeof long_str, KIM_E_MALFORMED, "cmd", "str32 4G", verbose);
    const uint8_t long_array [] = { 0x81, 0xa3, 'x', '-', 'a', 0xdc, 0x00, 0x05, 0x01 };
    s_test_expect_bytes (long_array, sizeof long_array, KIM_E_MALFORMED, "x-a[1]", "array short", verbose);
    //  Trailing bytes after a complete command
    const uint8_t trailing [] = { 0x81, 0xa3, 'c', 'm', 'd', 0xa4, 'P', 'I', 'N', 'G', 0xc0 };
    s_test_expect_bytes (trailing, sizeof trailing, KIM_E_MALFORMED, "", "trailing", verbose);
    s_test_expect_bytes (trailing, sizeof trailing - 1, 0, NULL, "PING", verbose);
    //  Too large
    uint8_t *big = calloc (1, KIM_FRAME_MAX + 1);
    assert (big);
    s_test_expect_bytes (big, KIM_FRAME_MAX + 1, KIM_E_TOO_LARGE, "", "65537 bytes", verbose);
    free (big);

    //  Depth and counts
    s_test_expect (verbose, 0, NULL, "{'cmd':'PING','x-a':[[[1]]]}");
    s_test_expect (verbose, KIM_E_TOO_DEEP, "x-a[0][0][0]", "{'cmd':'PING','x-a':[[[[1]]]]}");
    s_test_expect (verbose, KIM_E_TOO_DEEP, "hdr.x-a[0][0]", S_REFERRAL, ",'x-a':[[[1]]]");
    s_test_expect (verbose, KIM_E_TOO_DEEP, "hdr.legal_basis.x-a.b",
                   "{'cmd':'SEND','hdr':{'legal_basis':{'x-a':{'b':{}}}}}");
    {
        char json [8192];
        size_t at = (size_t) snprintf (json, sizeof json, "{'cmd':'PING'");
        for (int i = 0; i < 64; i++)
            at += (size_t) snprintf (json + at, sizeof json - at, ",'x-%d':%d", i, i);
        snprintf (json + at, sizeof json - at, "}");
        s_test_expect (verbose, KIM_E_TOO_MANY, "", "%s", json);
        at = (size_t) snprintf (json, sizeof json, "{'cmd':'ACK','seqs':[1");
        for (int i = 2; i <= 1025; i++)
            at += (size_t) snprintf (json + at, sizeof json - at, ",%d", i);
        snprintf (json + at, sizeof json - at, "]}");
        s_test_expect (verbose, KIM_E_TOO_MANY, "seqs", "%s", json);
        json [at - 5] = 0;      //  1024 entries: the limit
        strcat (json, "]}");
        s_test_expect (verbose, 0, NULL, "%s", json);
        at = (size_t) snprintf (json, sizeof json, "{'cmd':'SEND','hdr':{'referrals':[");
        for (int i = 0; i < 33; i++)
            at += (size_t) snprintf (json + at, sizeof json - at, "%s'r-%d'", i? ",": "", i);
        snprintf (json + at, sizeof json - at, "]}}");
        s_test_expect (verbose, KIM_E_TOO_MANY, "hdr.referrals", "%s", json);
    }
    s_test_expect (verbose, KIM_E_TOO_MANY, "versions",
                   "{'cmd':'HELLO','versions':[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}");

    //  Types and integers
    s_test_expect (verbose, 0, NULL, S_HELLO, "4096");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "window", S_HELLO, "4097");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "window", S_HELLO, "-1");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "window", S_HELLO, "1.0");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "window", S_HELLO, "'1'");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "window", S_HELLO, "true");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "window", S_HELLO, "null");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "versions", "{'cmd':'HELLO','versions':1}");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "versions[0]", "{'cmd':'HELLO','versions':['1']}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "versions[0]",
                   "{'cmd':'HELLO','versions':[0],'agent':'a','window':1}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "versions[1]",
                   "{'cmd':'HELLO','versions':[2,1],'agent':'a','window':1}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "versions",
                   "{'cmd':'HELLO','versions':[],'agent':'a','window':1}");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "agent", "{'cmd':'HELLO','versions':[1],'window':1}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "versions[0]",
                   "{'cmd':'HELLO','versions':[4294967296],'agent':'a','window':1}");
    //  Every integer encoding of a non-negative value is accepted.
    const uint8_t wide [] = { 0x84, 0xa3, 'c', 'm', 'd', 0xa5, 'H', 'E', 'L', 'L', 'O',
        0xa8, 'v', 'e', 'r', 's', 'i', 'o', 'n', 's', 0x92, 0xd0, 0x01, 0xcf, 0, 0, 0, 0, 0, 0, 0, 2,
        0xa5, 'a', 'g', 'e', 'n', 't', 0xd9, 0x01, 'a',
        0xa6, 'w', 'i', 'n', 'd', 'o', 'w', 0xd3, 0, 0, 0, 0, 0, 0, 0x10, 0 };
    s_test_expect_bytes (wide, sizeof wide, 0, NULL, "wide ints", verbose);

    //  Strings
    char long_agent [KIM_AGENT_MAX + 2];
    memset (long_agent, 'a', sizeof long_agent - 1);
    long_agent [sizeof long_agent - 1] = 0;
    s_test_expect (verbose, KIM_E_TOO_LONG, "agent",
                   "{'cmd':'HELLO','versions':[1],'agent':'%s','window':1}", long_agent);
    long_agent [KIM_AGENT_MAX] = 0;
    s_test_expect (verbose, 0, NULL, "{'cmd':'HELLO','versions':[1],'agent':'%s','window':1}", long_agent);
    s_test_expect (verbose, KIM_E_BAD_UTF8, "agent",
                   "{'cmd':'HELLO','versions':[1],'agent':'a\\u0000b','window':1}");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "agent", "@@", "\xc0\xaf",
                    "{'cmd':'HELLO','versions':[1],'agent':'@@','window':1}");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.note", "@@@", "\xed\xa0\x80", S_ANSWER, "ACCEPT",
                    ",'note':'@@@'");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.note", "@@@@", "\xf4\x90\x80\x80", S_ANSWER,
                    "ACCEPT", ",'note':'@@@@'");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.note", "@@", "\xc3(", S_ANSWER, "ACCEPT",
                    ",'note':'@@'");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.msg_id", "m-2", "m\xff" "2", S_ANSWER, "ACCEPT", "");
    s_test_expect (verbose, KIM_E_BAD_UTF8, "hdr.note", S_ANSWER, "ACCEPT", ",'note':'a\\u0000'");
    s_test_expect (verbose, 0, NULL, S_ANSWER, "ACCEPT", ",'note':'\xf0\x9f\x98\x80 \xe2\x82\xac'");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "hdr.note", S_ANSWER, "ACCEPT", ",'note':['a']");

    //  Identifier formats
    s_test_expect (verbose, KIM_E_BAD_ID, "sub_id", "{'cmd':'SUBSCRIBE','sub_id':'a b'}");
    s_test_expect (verbose, KIM_E_BAD_ID, "sub_id", "{'cmd':'SUBSCRIBE','sub_id':''}");
    s_test_expect (verbose, KIM_E_BAD_ID, "hdr.recipient", "{'cmd':'SEND','hdr':{'recipient':'JC.Rheine'}}");
    s_test_expect (verbose, KIM_E_BAD_ID, "hdr.recipient", "{'cmd':'SEND','hdr':{'recipient':'jc'}}");
    s_test_expect (verbose, KIM_E_BAD_ID, "hdr.recipient", "{'cmd':'SEND','hdr':{'recipient':'jc..x'}}");
    s_test_expect (verbose, KIM_E_BAD_ID, "hdr.recipient", "{'cmd':'SEND','hdr':{'recipient':'a.b.c.d'}}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.purpose", "{'cmd':'SEND','hdr':{'purpose':'Job'}}");
    s_test_expect (verbose, KIM_E_BAD_ID, "hdr.referrals[1]",
                   "{'cmd':'SEND','hdr':{'referrals':['r-1','r 2']}}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.referrals[1]",
                   "{'cmd':'SEND','hdr':{'referrals':['r-1','r-1']}}");
    s_test_expect (verbose, KIM_E_BAD_ID, "hdr.recipients[0]",
                   "{'cmd':'SEND','hdr':{'recipients':['jc']}}");

    //  Header fields and enums
    s_test_expect (verbose, 0, NULL, S_REFERRAL, "");
    s_test_patched (verbose, KIM_E_DUPLICATE_FIELD, "hdr.msg_id", "msg_ie", "msg_id", S_REFERRAL,
                    ",'msg_ie':'m-2'");
    s_test_expect (verbose, KIM_E_UNKNOWN_FIELD, "hdr.name", S_REFERRAL, ",'name':'Max'");
    s_test_expect (verbose, 0, NULL, S_REFERRAL, ",'x-local':{'a':[1]}");
    s_test_expect (verbose, KIM_E_UNKNOWN_TYPE, "hdr.type", "{'cmd':'SEND','hdr':{'type':'REFERAL'}}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.priority", S_REFERRAL, ",'priority':'urgent'");
    s_test_expect (verbose, 0, NULL, S_REFERRAL, ",'priority':'normal'");
    s_test_expect (verbose, 0, NULL, S_REFERRAL, ",'created_at':9007199254740991");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.created_at", S_REFERRAL, ",'created_at':9007199254740992");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.categories[1]", S_REFERRAL,
                   ",'categories':['art9','health']");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.categories[1]", S_REFERRAL,
                   ",'categories':['art9','art9']");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.legal_basis.kind",
                   "{'cmd':'SEND','hdr':{'legal_basis':{'kind':'contract'}}}");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.legal_basis.kind",
                   "{'cmd':'SEND','hdr':{'legal_basis':{'citation':'x'}}}");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.legal_basis.citation",
                   "{'cmd':'SEND','hdr':{'legal_basis':{'kind':'statute'}}}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.legal_basis.consent_id",
                   "{'cmd':'SEND','hdr':{'legal_basis':{'kind':'statute','citation':'x','consent_id':'g'}}}");
    s_test_expect (verbose, KIM_E_UNKNOWN_FIELD, "hdr.legal_basis.note",
                   "{'cmd':'SEND','hdr':{'legal_basis':{'note':'x'}}}");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "hdr.legal_basis", "{'cmd':'SEND','hdr':{'legal_basis':'x'}}");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "hdr", "{'cmd':'SEND','hdr':[]}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.payload_len",
                   "{'cmd':'SEND','hdr':{'payload_len':16777217}}");
    s_test_patched (verbose, KIM_E_BAD_TYPE, "hdr.payload_hash", "@@", "ab", S_REFERRAL,
                    ",'payload_hash':'@@'");
    //  One rule for strings: any str in the frame that is not valid UTF-8
    //  is BAD_UTF8, whatever the field would have been checked for next.
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.payload_hash", "@@", "\xc4\x01", S_REFERRAL,
                    ",'payload_hash':'@@'");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "cmd", "@@", "\xc3\x28", "{'cmd':'PI@@'}");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.type", "@@", "\xed\xa0",
                    "{'cmd':'SEND','hdr':{'type':'REFERR@@'}}");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.priority", "@@", "\xff\xfe", S_REFERRAL,
                    ",'priority':'n@@'");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.x-note", "@@", "\xc0\xaf", S_REFERRAL,
                    ",'x-note':'@@'");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.x-note[1]", "@@", "\xed\xbf", S_REFERRAL,
                    ",'x-note':['ok','@@']");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.x-?(", "@@", "\xc3\x28", S_REFERRAL,
                    ",'x-@@':1");
    s_test_patched (verbose, KIM_E_BAD_UTF8, "hdr.?(", "@@", "\xc3\x28", S_REFERRAL,
                    ",'@@':1");
    s_test_patched (verbose, KIM_E_BAD_VALUE, "hdr.sig", "\xa2@@", "\xc4\x01@", S_REFERRAL,
                    ",'sig':'@@'");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "hdr.sig", S_REFERRAL, ",'sig':'ab'");

    //  Per-type rules
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.type", "{'cmd':'SEND','hdr':{'msg_id':'m-1'}}");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.msg_id", "{'cmd':'SEND','hdr':{'type':'WITHDRAW',"
                   "'recipient':'jc.rheine','referral_id':'r-1'}}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.schema", S_REFERRAL, ",'schema':2");
    s_test_expect (verbose, 0, NULL, S_REFERRAL, ",'schema':1");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.legal_basis",
                   "{'cmd':'SEND','hdr':{'type':'REFERRAL','msg_id':'m-1','recipient':'jc.rheine',"
                   "'referral_id':'r-1','case_id':'c-1','subject':'p-1','purpose':'employment'}}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.subject", S_ANSWER, "ACCEPT", ",'subject':'p-1'");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.code", S_ANSWER, "DECLINE", "");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.code", S_ANSWER, "DECLINE", ",'code':'busy'");
    s_test_expect (verbose, 0, NULL, S_ANSWER, "DECLINE", ",'code':'person_declined'");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.code", S_ANSWER, "STATUS", ",'code':'completed'");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.note", S_ANSWER, "OUTCOME",
                   ",'code':'completed','note':'Beratung zu ...'");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.org", S_ANSWER, "FORWARD",
                   ",'purpose':'x','legal_basis':{'kind':'consent','consent_id':'g-1'}");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.recipients",
                   "{'cmd':'SEND','hdr':{'type':'CONSENT_GRANT','msg_id':'m-1','case_id':'c-1',"
                   "'consent':'g-1','subject':'p-1','purposes':['x'],'valid_until':1}}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "hdr.recipient",
                   "{'cmd':'SEND','hdr':{'type':'ERASURE','msg_id':'m-1','subject':'p-1',"
                   "'recipient':'jc.rheine'}}");
    s_test_expect (verbose, KIM_E_FORBIDDEN, "hdr.type",
                   "{'cmd':'SEND','hdr':{'type':'DELIVERED','msg_id':'m-1','recipient':'jc.rheine',"
                   "'ref_msg_id':'m-0'}}");
    s_test_expect (verbose, KIM_E_FORBIDDEN, "hdr.type", "{'cmd':'SEND','hdr':{'type':'REMINDER'}}");
    s_test_expect (verbose, 0, NULL, S_REFERRAL, ",'sender':'kim.rheine'");
    //  DELIVER needs what the broker sets
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "hdr.sender",
                   "{'cmd':'DELIVER','seq':1,'hdr':{'type':'CASE_CLOSED','msg_id':'m-1','case_id':'c'}}");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "seq",
                   "{'cmd':'DELIVER','hdr':{'type':'CASE_CLOSED','msg_id':'m-1','case_id':'c'}}");

    //  Commands
    s_test_expect (verbose, KIM_E_BAD_VALUE, "seqs", "{'cmd':'ACK','seqs':[]}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "seqs[1]", "{'cmd':'ACK','seqs':[1,-2]}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "reason",
                   "{'cmd':'REJECT','code':500,'reason':'QUOTA','text':''}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "reason",
                   "{'cmd':'REJECT','code':500,'reason':'policy_deny','text':''}");
    s_test_expect (verbose, 0, NULL, "{'cmd':'REJECT','code':500,'reason':'POLICY_DENY','text':''}");
    s_test_expect (verbose, 0, NULL, "{'cmd':'REJECT','code':599,'reason':'SOMETHING_NEW','text':''}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "code", "{'cmd':'REJECT','code':901,'reason':'IO','text':''}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "code", "{'cmd':'REJECT','code':1000,'reason':'X','text':''}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "code", "{'cmd':'REJECT','code':0,'reason':'OK','text':''}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "code",
                   "{'cmd':'QUERY_END','query_id':'q','count':0,'code':42}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "window", "{'cmd':'QUERY','query_id':'q','window':0}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "to_seq",
                   "{'cmd':'QUERY','query_id':'q','window':1,'from_seq':5,'to_seq':4}");
    s_test_expect (verbose, KIM_E_UNKNOWN_TYPE, "type", "{'cmd':'QUERY','query_id':'q','window':1,'type':'X'}");
    s_test_expect (verbose, KIM_E_UNKNOWN_TYPE, "types[1]",
                   "{'cmd':'SUBSCRIBE','sub_id':'s','types':['ACCEPT','X']}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "types[1]",
                   "{'cmd':'SUBSCRIBE','sub_id':'s','types':['ACCEPT','ACCEPT']}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "kind",
                   "{'cmd':'RECORD','query_id':'q','seq':1,'time':1,'kind':256}");
    s_test_expect (verbose, KIM_E_BAD_VALUE, "max_payload",
                   "{'cmd':'WELCOME','version':1,'org':'a.b','broker':'a.b','heartbeat_ms':1,"
                   "'max_payload':16777217,'window':0}");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "status.mailbox", "{'cmd':'STATUS_REPLY','status':{"
                   "'log_head':1,'mailbox':'3'}}");
    s_test_expect (verbose, KIM_E_MISSING_FIELD, "status.store_bytes", "{'cmd':'STATUS_REPLY','status':{"
                   "'log_head':1,'mailbox':0,'in_flight':0,'sessions':0,'uptime_ms':0}}");
    s_test_expect (verbose, 0, NULL, "{'cmd':'RECEIPT','msg_id':'m','seq':0,'dup':false}");
    s_test_expect (verbose, KIM_E_BAD_TYPE, "dup", "{'cmd':'RECEIPT','msg_id':'m','seq':0,'dup':1}");
}

static void
s_test_encode_errors (void)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    assert (kim_buf_append (&buf, "keep", 4) == 0);
    kim_cmd_t *cmd = malloc (sizeof *cmd);
    assert (cmd);

    kim_cmd_init (cmd, KIM_CMD_NONE);
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_UNKNOWN_CMD);
    kim_cmd_init (cmd, (kim_cmd_id_t) 99);
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_UNKNOWN_CMD);
    s_test_cmd (cmd, KIM_CMD_ACK);
    cmd->ack_count = KIM_ACKS_MAX + 1;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_TOO_MANY);
    cmd->ack_count = 0;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    s_test_cmd (cmd, KIM_CMD_WELCOME);
    cmd->org [0] = 0;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_ID);
    s_test_cmd (cmd, KIM_CMD_HELLO);
    memset (cmd->agent, 'a', sizeof cmd->agent);        //  no terminating NUL
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_TOO_LONG);
    s_test_cmd (cmd, KIM_CMD_SEND);
    cmd->msg.type = KIM_TYPE_EXPIRED;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_FORBIDDEN);
    s_test_cmd (cmd, KIM_CMD_SEND);
    cmd->msg.referral_count = 1000;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_TOO_MANY);
    s_test_cmd (cmd, KIM_CMD_SEND);
    cmd->msg.priority = (kim_priority_t) 7;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    s_test_cmd (cmd, KIM_CMD_SEND);
    cmd->msg.categories = 0x100;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    s_test_cmd (cmd, KIM_CMD_SEND);
    cmd->msg.schema = 0;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    s_test_cmd (cmd, KIM_CMD_REJECT);
    cmd->code = KIM_E_NOMEM;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    s_test_cmd (cmd, KIM_CMD_RECORD);
    uint8_t *body = calloc (1, KIM_FRAME_MAX);
    assert (body);
    cmd->body = body;
    cmd->body_size = KIM_FRAME_MAX;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_TOO_LARGE);
    free (body);
    assert (buf.size == 4 && memcmp (buf.data, "keep", 4) == 0);

    //  Headers alone: field checks on encode, rules in kim_msg_validate,
    //  paths relative to the header.
    kim_msg_t msg;
    kim_decode_error_t err;
    s_test_msg (&msg, KIM_TYPE_OUTCOME);
    assert (kim_msg_validate (&msg, &err) == 0);
    strcpy (msg.note, "x");
    assert (kim_msg_encode (&msg, &buf) == 0);
    assert (kim_msg_validate (&msg, &err) == -KIM_E_BAD_VALUE);
    assert (strcmp (err.path, "note") == 0);
    s_test_msg (&msg, KIM_TYPE_FORWARD);
    msg.citation [0] = 'x';
    assert (kim_msg_validate (&msg, &err) == -KIM_E_BAD_VALUE);
    assert (strcmp (err.path, "legal_basis.citation") == 0);
    assert (kim_msg_encode (&msg, &buf) == -KIM_E_BAD_VALUE);
    msg.citation [0] = 0;
    msg.consent_id [0] = 0;
    assert (kim_msg_validate (&msg, &err) == -KIM_E_MISSING_FIELD);
    assert (strcmp (err.path, "legal_basis.consent_id") == 0);
    s_test_msg (&msg, KIM_TYPE_REFERRAL);
    kim_buf_reset (&buf);
    assert (kim_msg_encode (&msg, &buf) == 0);
    kim_msg_t back;
    assert (kim_msg_decode (&back, buf.data, buf.size, &err) == 0);
    assert (memcmp (&msg, &back, sizeof msg) == 0);
    assert (kim_msg_decode (&back, buf.data, buf.size - 1, &err) == -KIM_E_MALFORMED);
    //  The deliver shortcut wants a map
    assert (kim_cmd_encode_deliver (1, (const uint8_t *) "\x91\x01", 2, &buf) == -KIM_E_ARGS);

    free (cmd);
    kim_buf_free (&buf);
}

//  Batch frames: split and entries, the limits, and damage anywhere in the
//  frame never reaching past it.
static void
s_test_batch (bool verbose)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    kim_cmd_t *cmd = malloc (sizeof *cmd);
    assert (cmd);
    kim_entry_t entries [KIM_BATCH_MAX];
    kim_decode_error_t err;
    //  Three SENDs with payloads of 0, 300 and 70000 bytes: bin 8, 16, 32
    static uint8_t payload [70000];
    memset (payload, 0x5a, sizeof payload);
    size_t sizes [3] = { 0, 300, 70000 };
    assert (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    for (int i = 0; i < 3; i++) {
        kim_cmd_init (cmd, KIM_CMD_SEND);
        s_test_msg (&cmd->msg, KIM_TYPE_REFERRAL);
        snprintf (cmd->msg.msg_id, sizeof cmd->msg.msg_id, "m-%d", i);
        assert (kim_cmd_encode (cmd, &buf) == 0);
        assert (kim_batch_payload (payload, sizes [i], &buf) == 0);
    }
    assert (kim_batch_end (KIM_CMD_SEND_BATCH, 3, 0, &buf) == 0);
    assert (kim_cmd_peek (buf.data, buf.size) == KIM_CMD_SEND_BATCH);
    assert (kim_batch_split (cmd, buf.data, buf.size, entries, &err) == 0);
    assert (cmd->id == KIM_CMD_SEND_BATCH && cmd->count == 3);
    for (int i = 0; i < 3; i++) {
        assert (entries [i].payload_size == sizes [i]);
        assert (kim_batch_entry_decode (KIM_CMD_SEND_BATCH, &entries [i], cmd, &err) == 0);
        assert (cmd->id == KIM_CMD_SEND && cmd->msg.msg_id [2] == '0' + i);
        //  A SEND is no answer: the wrong entry for a RECEIPT_BATCH
        assert (kim_batch_entry_decode (KIM_CMD_RECEIPT_BATCH, &entries [i], cmd, &err)
                == -KIM_E_BAD_VALUE && strcmp (err.path, "cmd") == 0);
    }
    //  Cut anywhere, the frame never splits; with bytes after it neither
    for (size_t cut = 0; cut < buf.size; cut += 1 + cut / 8) {
        int rc = kim_batch_split (cmd, buf.data, cut, entries, &err);
        assert (rc < 0 && err.code >= 100 && err.code < 900);
    }
    assert (kim_buf_append (&buf, "\xc0", 1) == 0);
    assert (kim_batch_split (cmd, buf.data, buf.size, entries, &err) == -KIM_E_MALFORMED
         && strcmp (err.path, "entries[3]") == 0);
    //  A plain command is not a batch, and a batch needs 1..64 entries
    kim_buf_reset (&buf);
    s_test_cmd (cmd, KIM_CMD_PING);
    assert (kim_cmd_encode (cmd, &buf) == 0);
    assert (kim_cmd_peek (buf.data, buf.size) == KIM_CMD_PING && !kim_cmd_is_batch (KIM_CMD_PING));
    assert (kim_batch_split (cmd, buf.data, buf.size, entries, &err) == -KIM_E_MALFORMED);
    kim_buf_reset (&buf);
    assert (kim_batch_begin (KIM_CMD_DELIVER_BATCH, &buf) == 0);
    assert (kim_batch_end (KIM_CMD_DELIVER_BATCH, 0, 0, &buf) == -KIM_E_ARGS);
    assert (kim_batch_end (KIM_CMD_DELIVER_BATCH, KIM_BATCH_MAX + 1, 0, &buf) == -KIM_E_ARGS);
    kim_cmd_init (cmd, KIM_CMD_SEND_BATCH);
    cmd->count = KIM_BATCH_MAX + 1;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    //  Ranges: pairs, each ordered, ascending and apart
    kim_cmd_init (cmd, KIM_CMD_ACK_RANGE);
    uint64_t bad [][4] = { { 5, 4, 0, 0 }, { 1, 5, 5, 6 }, { 1, 5, 3, 9 } };
    for (int i = 0; i < 3; i++) {
        memcpy (cmd->ranges, bad [i], sizeof bad [i]);
        cmd->range_count = bad [i][2]? 4: 2;
        assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    }
    cmd->range_count = 3;
    assert (kim_cmd_encode (cmd, &buf) == -KIM_E_BAD_VALUE);
    if (verbose)
        printf ("  batch frames: OK\n");
    free (cmd);
    kim_buf_free (&buf);
}

//  Random damage to valid frames: whatever decodes must round-trip.
static void
s_test_mutations (bool verbose)
{
    uint64_t state = 0x9e3779b97f4a7c15ull;
    kim_buf_t buf;
    kim_buf_init (&buf);
    kim_cmd_t *cmd = malloc (sizeof *cmd);
    assert (cmd);
    size_t decoded = 0, total = 0;
    for (int id = KIM_CMD_HELLO; id <= KIM_CMD_BYE; id++) {
        s_test_cmd (cmd, (kim_cmd_id_t) id);
        kim_buf_reset (&buf);
        assert (kim_cmd_encode (cmd, &buf) == 0);
        for (int round = 0; round < 400; round++) {
            uint8_t frame [2048];
            size_t size = buf.size;
            memcpy (frame, buf.data, size);
            for (int k = 0; k < 1 + round % 3; k++) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                frame [state % size] = (uint8_t) (state >> 32);
            }
            kim_decode_error_t err;
            total++;
            if (kim_cmd_decode (cmd, frame, size, &err) == 0) {
                decoded++;
                s_test_expect_bytes (frame, size, 0, NULL, "mutation", false);
            }
            else
                assert (err.code >= 100 && err.code < 900 && strlen (err.path) <= KIM_PATH_MAX);
        }
    }
    if (verbose)
        printf ("  mutations: %zu of %zu still decode\n", decoded, total);
    free (cmd);
    kim_buf_free (&buf);
}

void
kim_msg_test (bool verbose)
{
    //  Names and formats
#define KIM_X_CHECK(name, wire, num, flags) \
    assert (kim_type_from_name (kim_type_name (KIM_TYPE_##name)) == KIM_TYPE_##name);
    KIM_TYPES (KIM_X_CHECK)
#undef KIM_X_CHECK
    assert (kim_type_name (KIM_TYPE_NONE) == NULL && kim_type_from_name ("referral") == KIM_TYPE_NONE);
    assert (kim_type_flags (KIM_TYPE_DELIVERED) == KIM_MSG_FROM_BROKER);
    assert (strcmp (kim_cmd_name (KIM_CMD_QUERY_END), "QUERY_END") == 0 && !kim_cmd_name (0));
    assert (strcmp (kim_category_name (KIM_CAT_SGB8_S65), "sgb8_s65") == 0 && !kim_category_name (3));
    assert (kim_id_valid ("REF:2024-17_a.b") && !kim_id_valid ("") && !kim_id_valid ("a/b"));
    char id [KIM_ID_MAX + 2];
    memset (id, 'a', sizeof id - 1);
    id [sizeof id - 1] = 0;
    assert (!kim_id_valid (id));
    id [KIM_ID_MAX] = 0;
    assert (kim_id_valid (id));
    assert (kim_org_valid ("jc.rheine") && kim_org_valid ("ja.kreis-coesfeld.team_2"));
    assert (!kim_org_valid ("jc") && !kim_org_valid ("jc.") && !kim_org_valid (".jc")
         && !kim_org_valid ("Jc.rheine") && !kim_org_valid ("a.b.c.d") && !kim_org_valid (NULL));
    assert (kim_code_valid ("no_show") && !kim_code_valid ("no-show") && !kim_code_valid (""));
    const char *good [] = { "", "a", "\xc3\xa4", "\xe2\x82\xac", "\xef\xbf\xbf", "\xf0\x9f\x98\x80",
                            "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80" };
    const char *bad [] = { "\x80", "\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xe0\x9f\xbf", "\xed\xa0\x80",
                           "\xed\xbf\xbf", "\xf0\x80\x80\xaf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
                           "\xff", "\xc3", "\xe2\x82", "\xf0\x9f\x98", "\xc3\x28", "\xe2\x28\xa1" };
    for (size_t i = 0; i < sizeof good / sizeof good [0]; i++)
        assert (kim_utf8_valid ((const uint8_t *) good [i], strlen (good [i])));
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++)
        assert (!kim_utf8_valid ((const uint8_t *) bad [i], strlen (bad [i])));
    assert (!kim_utf8_valid ((const uint8_t *) "a\0b", 3));

    //  Every type, as SEND (if agencies send it) and as DELIVER
    kim_cmd_t *cmd = malloc (sizeof *cmd);
    assert (cmd);
#define KIM_X_TYPE(name, wire, num, flags) \
    if ((flags) & KIM_MSG_FROM_AGENCY) { \
        kim_cmd_init (cmd, KIM_CMD_SEND); \
        s_test_msg (&cmd->msg, KIM_TYPE_##name); \
        s_test_roundtrip (cmd, verbose); \
    } \
    kim_cmd_init (cmd, KIM_CMD_DELIVER); \
    cmd->seq = num; \
    s_test_msg (&cmd->msg, KIM_TYPE_##name); \
    strcpy (cmd->msg.sender, ((flags) & KIM_MSG_FROM_AGENCY)? "jc.rheine": "broker.steinfurt"); \
    cmd->msg.has_payload_hash = true; \
    s_test_roundtrip (cmd, verbose);
    KIM_TYPES (KIM_X_TYPE)
#undef KIM_X_TYPE

    //  Every command
#define KIM_X_CMD(name, wire, num, dir) \
    s_test_cmd (cmd, KIM_CMD_##name); \
    s_test_roundtrip (cmd, verbose);
    KIM_CMDS (KIM_X_CMD)
#undef KIM_X_CMD
    free (cmd);

    s_test_batch (verbose);
    s_test_negative (verbose);
    s_test_encode_errors ();
    s_test_mutations (verbose);
    kim_msg_json_test (verbose);
}
