/*  test_conformance.c — the broker does what PROTOCOL.md says, on the
    points where an implementation written from the spec alone found that it
    did not: over raw CURVE sockets, each answer checked code, id and path.

    STATUS counts the organisation's own sessions (8.9); a HELLO without a
    common version ends the session (8.1, 11); REJECTs of commands that do
    not decode carry the command's id (7.1); oversized frames get TOO_LARGE
    and the connection stays (5); every invalid UTF-8 string is BAD_UTF8 and
    an empty list BAD_VALUE (6); ACKs name this session's deliveries only and
    only agencies ACK (8.7); a message to an auditor is refused for what it
    is; a revoked key hears REVOKED (4); per-organisation limits on sessions,
    subscriptions and open queries (7.3); refused handshakes do not grow the
    log (14).
*/
#include <msgpack.h>

#include "kim_rawsock.h"

#define AGENCY      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define OTHER       "ja.rheine"
#define AUDITOR     "dsb.steinfurt"
#define OPERATOR    "ops.steinfurt"

static const char *s_orgs [] = {
    AGENCY, RECIPIENT, OTHER, AUDITOR ":auditor", OPERATOR ":operator", NULL
};

static kim_cmd_t *
s_cmd_new (kim_cmd_id_t id)
{
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, id);
    return cmd;
}

//  The next reply that is not a DELIVER; fails the test on a timeout.
static kim_cmd_t *
s_reply (zsock_t *sock, int timeout_ms)
{
    kim_cmd_t *reply = s_cmd_new (KIM_CMD_NONE);
    int64_t deadline = s_itest_now () + timeout_ms;
    while (true) {
        int left = (int) (deadline - s_itest_now ());
        if (left <= 0 || s_raw_recv (sock, reply, left)) {
            fprintf (stderr, "no reply within %d ms\n", timeout_ms);
            exit (1);
        }
        if (reply->id != KIM_CMD_DELIVER)
            return reply;
    }
}

//  Expects a REJECT with `code`, msg_id (NULL: none) and path (NULL: any)
//  whose text contains `text` (NULL: any).
#define EXPECT_REJECT(sock, code, msg_id, path, text) \
    s_expect_reject (__LINE__, (sock), (code), (msg_id), (path), (text))

static void
s_expect_reject (int line, zsock_t *sock, int code, const char *msg_id, const char *path,
                 const char *text)
{
    kim_cmd_t *reply = s_reply (sock, 10000);
    if (reply->id != KIM_CMD_REJECT || reply->code != code
    ||  strcmp (reply->msg_id, msg_id? msg_id: "") != 0
    ||  (path && strcmp (reply->path, path) != 0)
    ||  (text && !strstr (reply->text, text))) {
        fprintf (stderr, "line %d: expected REJECT %s msg_id=%s path=%s text~%s\n", line,
                 kim_errname (code), msg_id? msg_id: "", path? path: "*", text? text: "*");
        s_raw_print ("got", reply);
        exit (1);
    }
    free (reply);
}

static kim_status_t
s_status (zsock_t *sock)
{
    kim_cmd_t *cmd = s_cmd_new (KIM_CMD_STATUS);
    s_raw_send_cmd (sock, cmd, NULL, 0, 0);
    free (cmd);
    kim_cmd_t *reply = s_reply (sock, 10000);
    if (reply->id != KIM_CMD_STATUS_REPLY) {
        s_raw_print ("STATUS answered with", reply);
        exit (1);
    }
    kim_status_t status = reply->status;
    free (reply);
    return status;
}

//  MessagePack by hand, for what the codec would never encode.
static void
s_pack_str (msgpack_packer *pk, const char *text, size_t size)
{
    msgpack_pack_str_with_body (pk, text, size);
}

#define PACK_STR(pk, literal) s_pack_str ((pk), (literal), sizeof (literal) - 1)

static void
s_send_packed (zsock_t *sock, msgpack_sbuffer *sbuf)
{
    s_raw_send_bytes (sock, sbuf->data, sbuf->size);
    msgpack_sbuffer_clear (sbuf);
}

//  ---------------------------------------------------------------------------

static void
s_test_status_sessions (kim_testbroker_t *broker)
{
    zsock_t *a1 = s_raw_new (broker, AGENCY, NULL, NULL);
    zsock_t *a2 = s_raw_new (broker, AGENCY, NULL, NULL);
    zsock_t *b1 = s_raw_new (broker, OTHER, NULL, NULL);
    s_raw_hello (a1, AGENCY, 0);
    s_raw_hello (a2, AGENCY, 0);
    s_raw_hello (b1, OTHER, 0);
    //  Section 8.9: the organisation's sessions, not the broker's.
    KIM_CHECK (s_status (a1).sessions == 2);
    KIM_CHECK (s_status (b1).sessions == 1);
    kim_cmd_t *bye = s_cmd_new (KIM_CMD_BYE);
    s_raw_send_cmd (a2, bye, NULL, 0, 0);
    free (bye);
    KIM_CHECK (s_status (a1).sessions == 1);
    zsock_destroy (&a1);
    zsock_destroy (&a2);
    zsock_destroy (&b1);
    printf ("STATUS counts the organisation's sessions: OK\n");
}

static void
s_test_hello_without_version (kim_testbroker_t *broker)
{
    zsock_t *raw = s_raw_new (broker, AGENCY, NULL, NULL);
    s_raw_hello (raw, AGENCY, 0);
    s_raw_ping (raw);
    kim_cmd_t *cmd = s_cmd_new (KIM_CMD_HELLO);
    cmd->version_count = 1;
    cmd->versions [0] = 99;
    snprintf (cmd->agent, sizeof cmd->agent, "from-the-future");
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    EXPECT_REJECT (raw, KIM_E_VERSION, NULL, "versions", NULL);
    //  Section 11: the session has ended.
    kim_cmd_init (cmd, KIM_CMD_PING);
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    EXPECT_REJECT (raw, KIM_E_NO_SESSION, NULL, NULL, NULL);
    free (cmd);
    s_raw_hello (raw, AGENCY, 0);
    s_raw_ping (raw);
    zsock_destroy (&raw);
    printf ("HELLO without a common version ends the session: OK\n");
}

static void
s_test_reject_ids (kim_testbroker_t *broker)
{
    zsock_t *auditor = s_raw_new (broker, AUDITOR, NULL, NULL);
    s_raw_hello (auditor, AUDITOR, 0);
    kim_cmd_t *cmd = s_cmd_new (KIM_CMD_NONE);
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    //  to_seq before from_seq.
    msgpack_pack_map (&pk, 5);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "QUERY");
    PACK_STR (&pk, "query_id");
    PACK_STR (&pk, "q-backwards");
    PACK_STR (&pk, "from_seq");
    msgpack_pack_uint32 (&pk, 10);
    PACK_STR (&pk, "to_seq");
    msgpack_pack_uint32 (&pk, 5);
    PACK_STR (&pk, "window");
    msgpack_pack_uint32 (&pk, 10);
    s_send_packed (auditor, &sbuf);
    EXPECT_REJECT (auditor, KIM_E_BAD_VALUE, "q-backwards", NULL, NULL);
    //  A window of 0.
    msgpack_pack_map (&pk, 3);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "QUERY");
    PACK_STR (&pk, "query_id");
    PACK_STR (&pk, "q-no-window");
    PACK_STR (&pk, "window");
    msgpack_pack_uint32 (&pk, 0);
    s_send_packed (auditor, &sbuf);
    EXPECT_REJECT (auditor, KIM_E_BAD_VALUE, "q-no-window", "window", NULL);
    //  A window above the limit, the id after the fault on the wire.
    msgpack_pack_map (&pk, 3);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "QUERY");
    PACK_STR (&pk, "window");
    msgpack_pack_uint32 (&pk, 5000);
    PACK_STR (&pk, "query_id");
    PACK_STR (&pk, "q-wide");
    s_send_packed (auditor, &sbuf);
    EXPECT_REJECT (auditor, KIM_E_BAD_VALUE, "q-wide", "window", NULL);
    //  An unknown type.
    msgpack_pack_map (&pk, 4);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "QUERY");
    PACK_STR (&pk, "type");
    PACK_STR (&pk, "REFERAL");
    PACK_STR (&pk, "query_id");
    PACK_STR (&pk, "q-typo");
    PACK_STR (&pk, "window");
    msgpack_pack_uint32 (&pk, 10);
    s_send_packed (auditor, &sbuf);
    EXPECT_REJECT (auditor, KIM_E_UNKNOWN_TYPE, "q-typo", "type", NULL);
    //  An auditor's SUBSCRIBE is refused, and says which.
    kim_cmd_init (cmd, KIM_CMD_SUBSCRIBE);
    snprintf (cmd->sub_id, sizeof cmd->sub_id, "s-auditor");
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    EXPECT_REJECT (auditor, KIM_E_FORBIDDEN, "s-auditor", NULL, NULL);
    kim_cmd_init (cmd, KIM_CMD_UNSUBSCRIBE);
    snprintf (cmd->sub_id, sizeof cmd->sub_id, "s-auditor");
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    EXPECT_REJECT (auditor, KIM_E_FORBIDDEN, "s-auditor", NULL, NULL);
    s_raw_ping (auditor);

    //  A SEND whose header does not decode still names its msg_id.
    zsock_t *agency = s_raw_new (broker, AGENCY, NULL, NULL);
    s_raw_hello (agency, AGENCY, 0);
    msgpack_pack_map (&pk, 2);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "SEND");
    PACK_STR (&pk, "hdr");
    msgpack_pack_map (&pk, 3);
    PACK_STR (&pk, "type");
    PACK_STR (&pk, "REFERRAL");
    PACK_STR (&pk, "priority");
    PACK_STR (&pk, "urgent");
    PACK_STR (&pk, "msg_id");
    PACK_STR (&pk, "m-urgent");
    s_send_packed (agency, &sbuf);
    EXPECT_REJECT (agency, KIM_E_BAD_VALUE, "m-urgent", "hdr.priority", NULL);
    //  ... but only a valid one.
    msgpack_pack_map (&pk, 2);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "SEND");
    PACK_STR (&pk, "hdr");
    msgpack_pack_map (&pk, 2);
    PACK_STR (&pk, "type");
    PACK_STR (&pk, "REFERAL");
    PACK_STR (&pk, "msg_id");
    PACK_STR (&pk, "m bad id");
    s_send_packed (agency, &sbuf);
    EXPECT_REJECT (agency, KIM_E_UNKNOWN_TYPE, NULL, "hdr.type", NULL);
    //  A REFERRAL_QUERY with a bad filter names its query_id.
    msgpack_pack_map (&pk, 3);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "REFERRAL_QUERY");
    PACK_STR (&pk, "org");
    PACK_STR (&pk, "Not An Org");
    PACK_STR (&pk, "query_id");
    PACK_STR (&pk, "rq-1");
    s_send_packed (agency, &sbuf);
    EXPECT_REJECT (agency, KIM_E_BAD_ID, "rq-1", "org", NULL);
    s_raw_ping (agency);
    msgpack_sbuffer_destroy (&sbuf);
    free (cmd);
    zsock_destroy (&auditor);
    zsock_destroy (&agency);
    printf ("REJECTs carry the refused command's id: OK\n");
}

static void
s_test_oversized (kim_testbroker_t *broker)
{
    zsock_t *raw = s_raw_new (broker, AGENCY, NULL, NULL);
    s_raw_hello (raw, AGENCY, 0);
    //  A payload of twice max_payload (1 MiB) and a frame 0 above
    //  max_payload + 64 KiB: both used to exceed the socket's cap, which
    //  dropped the connection without a word.
    size_t size = 2u << 20;
    uint8_t *big = (uint8_t *) calloc (1, size);
    KIM_CHECK (big);
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, "ref-big", "m-big-payload");
    int64_t started = s_itest_now ();
    s_raw_send_msg (raw, &msg, big, size, 1);
    EXPECT_REJECT (raw, KIM_E_TOO_LARGE, "m-big-payload", "payload", NULL);
    big [0] = 0x81;
    s_raw_send_bytes (raw, big, (1u << 20) + 100000);
    EXPECT_REJECT (raw, KIM_E_TOO_LARGE, NULL, NULL, NULL);
    int64_t elapsed = s_itest_now () - started;
    //  The connection stays.
    s_raw_ping (raw);
    free (big);
    zsock_destroy (&raw);
    printf ("oversized frames: TOO_LARGE in %" PRId64 " ms, connection kept: OK\n", elapsed);
}

static void
s_test_utf8_and_empty_lists (kim_testbroker_t *broker)
{
    zsock_t *raw = s_raw_new (broker, AGENCY, NULL, NULL);
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    //  Before HELLO: an invalid command name is BAD_UTF8, not UNKNOWN_CMD.
    msgpack_pack_map (&pk, 1);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "PI\xc3\x28");
    s_send_packed (raw, &sbuf);
    EXPECT_REJECT (raw, KIM_E_BAD_UTF8, NULL, "cmd", NULL);
    //  An empty versions list is BAD_VALUE (too few), not TOO_MANY.
    msgpack_pack_map (&pk, 4);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "HELLO");
    PACK_STR (&pk, "versions");
    msgpack_pack_array (&pk, 0);
    PACK_STR (&pk, "agent");
    PACK_STR (&pk, "raw");
    PACK_STR (&pk, "window");
    msgpack_pack_uint32 (&pk, 0);
    s_send_packed (raw, &sbuf);
    EXPECT_REJECT (raw, KIM_E_BAD_VALUE, NULL, "versions", NULL);
    //  An invalid x- value in a HELLO: BAD_UTF8, though x- values are ignored.
    msgpack_pack_map (&pk, 5);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "HELLO");
    PACK_STR (&pk, "versions");
    msgpack_pack_array (&pk, 1);
    msgpack_pack_uint32 (&pk, 1);
    PACK_STR (&pk, "agent");
    PACK_STR (&pk, "raw");
    PACK_STR (&pk, "window");
    msgpack_pack_uint32 (&pk, 0);
    PACK_STR (&pk, "x-site");
    PACK_STR (&pk, "\xed\xa0\x80");
    s_send_packed (raw, &sbuf);
    EXPECT_REJECT (raw, KIM_E_BAD_UTF8, NULL, "x-site", NULL);
    s_raw_hello (raw, AGENCY, 0);
    //  An empty ACK.
    msgpack_pack_map (&pk, 2);
    PACK_STR (&pk, "cmd");
    PACK_STR (&pk, "ACK");
    PACK_STR (&pk, "seqs");
    msgpack_pack_array (&pk, 0);
    s_send_packed (raw, &sbuf);
    EXPECT_REJECT (raw, KIM_E_BAD_VALUE, NULL, "seqs", NULL);
    //  Invalid UTF-8 in a type, a priority and a key of a SEND's header:
    //  BAD_UTF8 each time, and the msg_id still comes back.
    const char *faults [][3] = {
        { "type", "REFERR\xc3\x28", "hdr.type" },
        { "priority", "n\xff", "hdr.priority" },
        { "x-\xc3\x28", "1", "hdr.x-?(" },
        { "not\xff", "1", "hdr.not?" },
    };
    for (size_t i = 0; i < sizeof faults / sizeof faults [0]; i++) {
        msgpack_pack_map (&pk, 2);
        PACK_STR (&pk, "cmd");
        PACK_STR (&pk, "SEND");
        PACK_STR (&pk, "hdr");
        bool type_fault = streq (faults [i][0], "type");
        msgpack_pack_map (&pk, type_fault? 2: 3);
        PACK_STR (&pk, "msg_id");
        PACK_STR (&pk, "m-utf8");
        if (!type_fault) {
            PACK_STR (&pk, "type");
            PACK_STR (&pk, "REFERRAL");
        }
        s_pack_str (&pk, faults [i][0], strlen (faults [i][0]));
        s_pack_str (&pk, faults [i][1], strlen (faults [i][1]));
        s_send_packed (raw, &sbuf);
        EXPECT_REJECT (raw, KIM_E_BAD_UTF8, "m-utf8", faults [i][2], NULL);
    }
    s_raw_ping (raw);
    msgpack_sbuffer_destroy (&sbuf);
    zsock_destroy (&raw);
    printf ("one UTF-8 rule for every string; empty lists are BAD_VALUE: OK\n");
}

static void
s_test_acks (kim_testbroker_t *broker)
{
    zsock_t *receiver = s_raw_new (broker, RECIPIENT, NULL, NULL);
    zsock_t *second = s_raw_new (broker, RECIPIENT, NULL, NULL);
    zsock_t *sender = s_raw_new (broker, AGENCY, NULL, NULL);
    s_raw_hello (receiver, RECIPIENT, 16);
    s_raw_hello (second, RECIPIENT, 0);
    s_raw_hello (sender, AGENCY, 0);
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, "ref-ack", "m-ack");
    s_raw_send_msg (sender, &msg, "x", 1, 1);
    uint64_t seq = s_raw_expect_receipt (sender, "m-ack");
    kim_cmd_t *cmd = s_cmd_new (KIM_CMD_NONE);
    KIM_CHECK (s_raw_recv (receiver, cmd, 10000) == 0);
    KIM_CHECK (cmd->id == KIM_CMD_DELIVER && cmd->seq == seq);

    //  Section 8.7: the other session of the organisation may not ACK it.
    kim_cmd_init (cmd, KIM_CMD_ACK);
    cmd->ack_count = 1;
    cmd->acks [0] = seq;
    s_raw_send_cmd (second, cmd, NULL, 0, 0);
    EXPECT_REJECT (second, KIM_E_BAD_ACK, NULL, "seqs[0]", "another session");
    kim_status_t status = s_status (second);
    KIM_CHECK (status.mailbox == 1 && status.in_flight == 1);
    //  Its own session may.
    s_raw_send_cmd (receiver, cmd, NULL, 0, 0);
    int64_t deadline = s_itest_now () + 10000;
    while (s_status (receiver).mailbox != 0)
        KIM_CHECK (s_itest_now () < deadline);

    //  Auditors and operators receive nothing and acknowledge nothing.
    const char *roles [] = { AUDITOR, OPERATOR };
    for (int i = 0; i < 2; i++) {
        zsock_t *raw = s_raw_new (broker, roles [i], NULL, NULL);
        s_raw_hello (raw, roles [i], 0);
        s_raw_send_cmd (raw, cmd, NULL, 0, 0);
        EXPECT_REJECT (raw, KIM_E_FORBIDDEN, NULL, NULL, NULL);
        s_raw_ping (raw);
        zsock_destroy (&raw);
    }
    free (cmd);
    zsock_destroy (&receiver);
    zsock_destroy (&second);
    zsock_destroy (&sender);
    printf ("ACK: this session's deliveries only, agencies only: OK\n");
}

static void
s_test_auditor_recipient (kim_testbroker_t *broker)
{
    zsock_t *raw = s_raw_new (broker, AGENCY, NULL, NULL);
    s_raw_hello (raw, AGENCY, 0);
    kim_msg_t msg;
    s_itest_msg (&msg, AUDITOR, "ref-to-auditor", "m-to-auditor");
    s_raw_send_msg (raw, &msg, "x", 1, 1);
    EXPECT_REJECT (raw, KIM_E_UNKNOWN_RECIPIENT, "m-to-auditor", "hdr.recipient",
                   "registered as auditor, not as an agency");
    s_itest_msg (&msg, "nobody.rheine", "ref-to-nobody", "m-to-nobody");
    s_raw_send_msg (raw, &msg, "x", 1, 1);
    EXPECT_REJECT (raw, KIM_E_UNKNOWN_RECIPIENT, "m-to-nobody", "hdr.recipient",
                   "not a registered organisation");
    zsock_destroy (&raw);
    printf ("a message to an auditor is refused for what it is: OK\n");
}

//  Section 4: a revoked key is told so, rather than left to time out.
static void
s_test_revoked_key (kim_testbroker_t *broker)
{
    zsock_t *raw = s_raw_new (broker, OTHER, NULL, NULL);
    s_raw_hello (raw, OTHER, 0);
    kim_client_config_t config = kim_testbroker_client_config (broker, OTHER, 0, false);
    char path [512];
    snprintf (path, sizeof path, "%s/kim.cfg", kim_testbroker_dir (broker));
    FILE *file = fopen (path, "r");
    KIM_CHECK (file);
    static char text [65536], edited [65536 + 64];
    size_t size = fread (text, 1, sizeof text - 1, file);
    fclose (file);
    text [size] = 0;
    char needle [128];
    snprintf (needle, sizeof needle, "public_key = \"%s\"", config.public_key);
    char *at = strstr (text, needle);
    KIM_CHECK (at);
    snprintf (edited, sizeof edited, "%.*srevoked = 1\n        %s", (int) (at - text), text, at);
    file = fopen (path, "w");
    KIM_CHECK (file && fputs (edited, file) >= 0);
    fclose (file);
    KIM_CHECK (kill (kim_testbroker_pid (broker), SIGHUP) == 0);
    EXPECT_REJECT (raw, KIM_E_REVOKED, NULL, NULL, NULL);
    zsock_destroy (&raw);

    //  A new connection with the revoked key: every command hears REVOKED.
    raw = s_raw_new (broker, OTHER, NULL, NULL);
    kim_cmd_t *cmd = s_cmd_new (KIM_CMD_HELLO);
    cmd->version_count = 1;
    cmd->versions [0] = KIM_PROTOCOL_VERSION;
    snprintf (cmd->agent, sizeof cmd->agent, "revoked");
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    EXPECT_REJECT (raw, KIM_E_REVOKED, NULL, NULL, "revoked");
    kim_cmd_init (cmd, KIM_CMD_PING);
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    EXPECT_REJECT (raw, KIM_E_REVOKED, NULL, NULL, NULL);
    free (cmd);
    zsock_destroy (&raw);
    //  The client library gives up at once with the reason.
    config.timeout_ms = 5000;
    int err = 0;
    int64_t started = s_itest_now ();
    kim_client_t *client = kim_client_new (&config, &err);
    KIM_CHECK (!client);
    ITEST_RC (err, -KIM_E_REVOKED);
    KIM_CHECK (s_itest_now () - started < 5000);
    printf ("a revoked key hears REVOKED: OK\n");
}

static void
s_test_limits (kim_testbroker_t *broker)
{
    //  sessions_per_org = 2: the third HELLO ends the oldest session.
    zsock_t *s1 = s_raw_new (broker, AGENCY, NULL, NULL);
    zsock_t *s2 = s_raw_new (broker, AGENCY, NULL, NULL);
    zsock_t *s3 = s_raw_new (broker, AGENCY, NULL, NULL);
    s_raw_hello (s1, AGENCY, 0);
    s_raw_hello (s2, AGENCY, 0);
    KIM_CHECK (s_status (s2).sessions == 2);
    s_raw_hello (s3, AGENCY, 0);
    EXPECT_REJECT (s1, KIM_E_REPLACED, NULL, NULL, "sessions");
    KIM_CHECK (s_status (s3).sessions == 2);
    kim_cmd_t *cmd = s_cmd_new (KIM_CMD_PING);
    s_raw_send_cmd (s1, cmd, NULL, 0, 0);
    EXPECT_REJECT (s1, KIM_E_NO_SESSION, NULL, NULL, NULL);
    s_raw_ping (s2);

    //  subscriptions_per_org = 2.
    const char *subs [] = { "s-1", "s-2", "s-3" };
    for (int i = 0; i < 3; i++) {
        kim_cmd_init (cmd, KIM_CMD_SUBSCRIBE);
        snprintf (cmd->sub_id, sizeof cmd->sub_id, "%s", subs [i]);
        s_raw_send_cmd (s2, cmd, NULL, 0, 0);
        if (i < 2)
            s_raw_expect_receipt (s2, subs [i]);
        else
            EXPECT_REJECT (s2, KIM_E_ORG_LIMIT, "s-3", NULL, "subscriptions");
    }
    //  Replacing one it has is no new one; after an UNSUBSCRIBE there is room.
    kim_cmd_init (cmd, KIM_CMD_SUBSCRIBE);
    snprintf (cmd->sub_id, sizeof cmd->sub_id, "s-1");
    cmd->type_count = 1;
    cmd->types [0] = KIM_TYPE_ACCEPT;
    s_raw_send_cmd (s2, cmd, NULL, 0, 0);
    s_raw_expect_receipt (s2, "s-1");
    kim_cmd_init (cmd, KIM_CMD_UNSUBSCRIBE);
    snprintf (cmd->sub_id, sizeof cmd->sub_id, "s-2");
    s_raw_send_cmd (s2, cmd, NULL, 0, 0);
    s_raw_expect_receipt (s2, "s-2");
    kim_cmd_init (cmd, KIM_CMD_SUBSCRIBE);
    snprintf (cmd->sub_id, sizeof cmd->sub_id, "s-3");
    s_raw_send_cmd (s2, cmd, NULL, 0, 0);
    s_raw_expect_receipt (s2, "s-3");
    //  Another organisation's subscriptions are its own affair.
    zsock_t *other = s_raw_new (broker, RECIPIENT, NULL, NULL);
    s_raw_hello (other, RECIPIENT, 0);
    s_raw_send_cmd (other, cmd, NULL, 0, 0);
    s_raw_expect_receipt (other, "s-3");

    //  queries_per_org = 1: a query waiting for credit holds the one slot.
    zsock_t *auditor = s_raw_new (broker, AUDITOR, NULL, NULL);
    s_raw_hello (auditor, AUDITOR, 0);
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-open");
    cmd->window = 1;
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    kim_cmd_t *reply = s_reply (auditor, 10000);
    KIM_CHECK (reply->id == KIM_CMD_RECORD && streq (reply->query_id, "q-open"));
    free (reply);
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-second");
    cmd->window = 1;
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    EXPECT_REJECT (auditor, KIM_E_ORG_LIMIT, "q-second", NULL, "open queries");
    s_raw_ping (auditor);
    free (cmd);
    zsock_destroy (&auditor);
    zsock_destroy (&other);
    zsock_destroy (&s1);
    zsock_destroy (&s2);
    zsock_destroy (&s3);
    printf ("per-organisation limits on sessions, subscriptions, queries: OK\n");
}

//  Counts the lines of the broker's log that contain `text`.
static size_t
s_log_lines (kim_testbroker_t *broker, const char *text)
{
    char path [512];
    snprintf (path, sizeof path, "%s/broker.log", kim_testbroker_dir (broker));
    FILE *file = fopen (path, "r");
    KIM_CHECK (file);
    char line [4096];
    size_t count = 0;
    while (fgets (line, sizeof line, file))
        if (strstr (line, text))
            count++;
    fclose (file);
    return count;
}

//  Section 14: refused handshakes are summarised, not logged one by one.
static void
s_test_zap_log (kim_testbroker_t *broker)
{
    size_t before = s_log_lines (broker, "zap: refused");
    const int strangers = 40;
    int refused = 0;
    for (int i = 0; i < strangers; i++) {
        zcert_t *cert = zcert_new ();
        KIM_CHECK (cert);
        zsock_t *raw = zsock_new (ZMQ_DEALER);
        KIM_CHECK (raw);
        char monitor [64];
        snprintf (monitor, sizeof monitor, "inproc://stranger-%d", i);
        KIM_CHECK (zmq_socket_monitor (zsock_resolve (raw), monitor,
                                       ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) == 0);
        zsock_t *events = zsock_new (ZMQ_PAIR);
        KIM_CHECK (events && zsock_connect (events, "%s", monitor) == 0);
        kim_client_config_t config = kim_testbroker_client_config (broker, AGENCY, 0, false);
        zsock_set_curve_publickey (raw, zcert_public_txt (cert));
        zsock_set_curve_secretkey (raw, zcert_secret_txt (cert));
        zsock_set_curve_serverkey (raw, config.broker_key);
        zsock_set_linger (raw, 0);
        KIM_CHECK (zsock_connect (raw, "%s", config.endpoint) == 0);
        //  The handshake fails: the client's only news (section 14).
        zmq_pollitem_t item = { zsock_resolve (events), 0, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, 10000) == 1)
            refused++;
        zmq_socket_monitor (zsock_resolve (raw), NULL, 0);
        zsock_destroy (&events);
        zsock_destroy (&raw);
        zcert_destroy (&cert);
    }
    KIM_CHECK (refused == strangers);
    size_t lines = s_log_lines (broker, "zap: refused") - before;
    printf ("%d refused handshakes wrote %zu log lines\n", strangers, lines);
    KIM_CHECK (lines <= 1);
    printf ("refused handshakes are summarised in the log: OK\n");
}

//  Section 7.3: one bucket per organisation, shared by all its connections,
//  charged for every frame; other organisations keep theirs.
static void
s_test_shared_budget (void)
{
    //  30 units, refilled at 2 a second: the test's own pace adds little.
    kim_testbroker_t *broker = s_itest_broker (s_orgs,
        "    rate_limit = 2\n    rate_burst = 30\n");
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    //  The start-up probe spent some of the first organisation's budget.
    zsock_t *a = s_raw_new (broker, OTHER, NULL, NULL);
    zsock_t *b = s_raw_new (broker, OTHER, NULL, NULL);
    zsock_t *c = s_raw_new (broker, OTHER, NULL, NULL);
    s_raw_hello (a, OTHER, 0);      //  5 units each
    s_raw_hello (b, OTHER, 0);
    //  20 units left for the organisation: 40 PINGs over two sessions get
    //  about 20 PONGs in all, not 20 each.
    kim_cmd_t *cmd = s_cmd_new (KIM_CMD_PING);
    for (int i = 0; i < 20; i++) {
        s_raw_send_cmd (a, cmd, NULL, 0, 0);
        s_raw_send_cmd (b, cmd, NULL, 0, 0);
    }
    int pongs = 0, limited = 0;
    zsock_t *socks [] = { a, b };
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 20; i++) {
            kim_cmd_t *reply = s_reply (socks [k], 10000);
            if (reply->id == KIM_CMD_PONG)
                pongs++;
            else
            if (reply->id == KIM_CMD_REJECT && reply->code == KIM_E_RATE_LIMITED)
                limited++;
            else {
                s_raw_print ("PING answered with", reply);
                exit (1);
            }
            free (reply);
        }
    printf ("40 PINGs over two sessions of one organisation: %d PONG, %d RATE_LIMITED\n",
            pongs, limited);
    KIM_CHECK (pongs >= 15 && pongs <= 25 && pongs + limited == 40);
    //  A frame before HELLO, on a third connection, is charged too.
    s_raw_send_bytes (c, "\xc1", 1);
    EXPECT_REJECT (c, KIM_E_RATE_LIMITED, NULL, NULL, "command units");
    //  Another organisation is served as usual.
    zsock_t *other = s_raw_new (broker, RECIPIENT, NULL, NULL);
    s_raw_hello (other, RECIPIENT, 0);
    s_raw_ping (other);
    free (cmd);
    zsock_destroy (&a);
    zsock_destroy (&b);
    zsock_destroy (&c);
    zsock_destroy (&other);
    s_itest_broker_destroy (&broker);
    printf ("one budget per organisation, every frame charged: OK\n");
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    kim_testbroker_t *broker = s_itest_broker (s_orgs,
        "    sessions_per_org = 2\n    subscriptions_per_org = 2\n    queries_per_org = 1\n");
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    s_test_status_sessions (broker);
    s_test_hello_without_version (broker);
    s_test_reject_ids (broker);
    s_test_oversized (broker);
    s_test_utf8_and_empty_lists (broker);
    s_test_acks (broker);
    s_test_auditor_recipient (broker);
    s_test_limits (broker);
    s_test_zap_log (broker);
    s_test_revoked_key (broker);
    int exit_status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (exit_status) && WEXITSTATUS (exit_status) == 0);
    s_itest_broker_destroy (&broker);
    s_test_shared_budget ();
    printf ("test_conformance: OK\n");
    return 0;
}
