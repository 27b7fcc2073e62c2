/*  test_protocol.c — protocol errors on raw CURVE sockets.

    Every error path of the broker's command reader gets a negative test:
    the offending command is answered with a REJECT carrying the right code
    (and path or msg_id where the broker names them), and afterwards the
    broker still serves — the raw socket's session answers PING, and a
    well-behaved client sends and receives. A key that is not registered
    gets no session at all.
*/
#include <msgpack.h>

#include "kim_rawsock.h"

#define SENDER      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define OTHER       "ja.rheine"

//  MessagePack built by hand, for commands the codec would never encode.
static void
s_pack_str (msgpack_packer *pk, const char *text)
{
    msgpack_pack_str_with_body (pk, text, strlen (text));
}

static void
s_send_packed (zsock_t *sock, msgpack_sbuffer *sbuf)
{
    s_raw_send_bytes (sock, sbuf->data, sbuf->size);
    msgpack_sbuffer_clear (sbuf);
}

//  A well-behaved client still gets its message through.
static void
s_still_serves (kim_testbroker_t *broker, kim_client_t *sender, kim_client_t *recipient)
{
    static int count = 0;
    char msg_id [KIM_ID_MAX + 1];
    snprintf (msg_id, sizeof msg_id, "well-behaved-%d", count++);
    uint64_t seq = 0;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-proto", msg_id, 64, &seq, NULL), 0);
    kim_event_t event;
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == seq && streq (event.msg.msg_id, msg_id));
    ITEST_RC (kim_client_ack (recipient, seq), 0);
}

static void
s_before_hello (kim_testbroker_t *broker, kim_client_t *sender, kim_client_t *recipient)
{
    zsock_t *raw = s_raw_new (broker, OTHER, NULL, NULL);
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);

    //  Garbage: 0xc1 is never valid MessagePack.
    s_raw_send_bytes (raw, "\xc1\xc1 not msgpack at all", 22);
    RAW_EXPECT_REJECT (raw, KIM_E_MALFORMED, NULL, NULL);
    //  An empty frame.
    s_raw_send_bytes (raw, "", 0);
    RAW_EXPECT_REJECT (raw, KIM_E_MALFORMED, NULL, NULL);
    //  Truncated MessagePack: a map announcing two entries, holding half of one.
    s_raw_send_bytes (raw, "\x82\xa3" "cm", 4);
    RAW_EXPECT_REJECT (raw, KIM_E_MALFORMED, NULL, NULL);
    s_still_serves (broker, sender, recipient);

    //  Valid MessagePack, but not a command: an array.
    msgpack_pack_array (&pk, 3);
    msgpack_pack_int (&pk, 1);
    msgpack_pack_int (&pk, 2);
    msgpack_pack_int (&pk, 3);
    s_send_packed (raw, &sbuf);
    RAW_EXPECT_REJECT (raw, KIM_E_MALFORMED, NULL, NULL);

    //  Valid MessagePack, a map with a field of the wrong type.
    msgpack_pack_map (&pk, 4);
    s_pack_str (&pk, "cmd");
    s_pack_str (&pk, "HELLO");
    s_pack_str (&pk, "versions");
    s_pack_str (&pk, "1");
    s_pack_str (&pk, "agent");
    s_pack_str (&pk, "raw");
    s_pack_str (&pk, "window");
    msgpack_pack_uint32 (&pk, 0);
    s_send_packed (raw, &sbuf);
    RAW_EXPECT_REJECT (raw, KIM_E_BAD_TYPE, NULL, "versions");

    //  An unknown command name.
    msgpack_pack_map (&pk, 1);
    s_pack_str (&pk, "cmd");
    s_pack_str (&pk, "FROBNICATE");
    s_send_packed (raw, &sbuf);
    RAW_EXPECT_REJECT (raw, KIM_E_UNKNOWN_CMD, NULL, NULL);

    //  A map without a command.
    msgpack_pack_map (&pk, 1);
    s_pack_str (&pk, "agent");
    s_pack_str (&pk, "raw");
    s_send_packed (raw, &sbuf);
    RAW_EXPECT_REJECT (raw, KIM_E_MISSING_FIELD, NULL, "cmd");

    //  Frame 0 above KIM_FRAME_MAX.
    size_t huge_size = KIM_FRAME_MAX + 1000;
    uint8_t *huge = (uint8_t *) calloc (1, huge_size);
    KIM_CHECK (huge);
    huge [0] = 0x81;                    //  looks like a map; never parsed
    s_raw_send_bytes (raw, huge, huge_size);
    RAW_EXPECT_REJECT (raw, KIM_E_TOO_LARGE, NULL, NULL);
    free (huge);
    s_still_serves (broker, sender, recipient);

    //  Commands before HELLO.
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, "ref-proto", "before-hello");
    s_raw_send_msg (raw, &msg, "abc", 3, 1);
    RAW_EXPECT_REJECT (raw, KIM_E_NO_SESSION, "before-hello", NULL);
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, KIM_CMD_PING);
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (raw, KIM_E_NO_SESSION, NULL, NULL);
    kim_cmd_init (cmd, KIM_CMD_ACK);
    cmd->ack_count = 1;
    cmd->acks [0] = 1;
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (raw, KIM_E_NO_SESSION, NULL, NULL);

    //  A HELLO with no version in common.
    kim_cmd_init (cmd, KIM_CMD_HELLO);
    cmd->version_count = 1;
    cmd->versions [0] = 99;
    snprintf (cmd->agent, sizeof cmd->agent, "from-the-future");
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (raw, KIM_E_VERSION, NULL, "versions");
    //  Still no session.
    kim_cmd_init (cmd, KIM_CMD_PING);
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (raw, KIM_E_NO_SESSION, NULL, NULL);

    //  The same connection can still open a session.
    s_raw_hello (raw, OTHER, 0);
    s_raw_ping (raw);
    free (cmd);
    msgpack_sbuffer_destroy (&sbuf);
    zsock_destroy (&raw);
    s_still_serves (broker, sender, recipient);
}

static void
s_in_session (kim_testbroker_t *broker, kim_client_t *sender, kim_client_t *recipient)
{
    zsock_t *raw = s_raw_new (broker, SENDER, NULL, NULL);
    s_raw_hello (raw, SENDER, 0);
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);

    //  SEND with three frames.
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, "ref-proto", "three-frames");
    s_raw_send_msg (raw, &msg, "abc", 3, 2);
    RAW_EXPECT_REJECT (raw, KIM_E_BAD_FRAMES, "three-frames", NULL);
    //  PING with a payload frame.
    kim_cmd_init (cmd, KIM_CMD_PING);
    s_raw_send_cmd (raw, cmd, "x", 1, 1);
    RAW_EXPECT_REJECT (raw, KIM_E_BAD_FRAMES, NULL, NULL);
    s_raw_ping (raw);

    //  A header claiming another organisation.
    s_itest_msg (&msg, RECIPIENT, "ref-proto", "forged-sender");
    snprintf (msg.sender, sizeof msg.sender, "%s", OTHER);
    s_raw_send_msg (raw, &msg, "abc", 3, 1);
    RAW_EXPECT_REJECT (raw, KIM_E_SENDER_MISMATCH, "forged-sender", "hdr.sender");

    //  A command the broker sends but does not take.
    kim_cmd_init (cmd, KIM_CMD_PONG);
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (raw, KIM_E_UNKNOWN_CMD, NULL, "cmd");
    s_raw_ping (raw);

    //  An ACK for something never delivered to this organisation.
    kim_cmd_init (cmd, KIM_CMD_ACK);
    cmd->ack_count = 1;
    cmd->acks [0] = 999999;
    s_raw_send_cmd (raw, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (raw, KIM_E_BAD_ACK, NULL, "seqs[0]");

    //  Garbage inside a session does not end it.
    s_raw_send_bytes (raw, "\xc1", 1);
    RAW_EXPECT_REJECT (raw, KIM_E_MALFORMED, NULL, NULL);
    s_raw_ping (raw);

    //  A proper SEND on the same session goes through and reaches the recipient
    //  with the authenticated sender; the forged one never arrives before it.
    s_itest_msg (&msg, RECIPIENT, "ref-proto", "raw-proper");
    uint8_t payload [100];
    s_itest_payload (payload, sizeof payload, msg.msg_id);
    s_raw_send_msg (raw, &msg, payload, sizeof payload, 1);
    uint64_t seq = s_raw_expect_receipt (raw, "raw-proper");
    kim_event_t event;
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == seq);
    KIM_CHECK (streq (event.msg.msg_id, "raw-proper"));
    KIM_CHECK (streq (event.msg.sender, SENDER));
    KIM_CHECK (s_itest_payload_ok (event.payload, event.payload_size, sizeof payload, "raw-proper"));
    ITEST_RC (kim_client_ack (recipient, seq), 0);

    //  A second HELLO on the connection restarts the session.
    s_raw_hello (raw, SENDER, 0);
    s_raw_ping (raw);
    free (cmd);
    zsock_destroy (&raw);
    s_still_serves (broker, sender, recipient);
}

static void
s_unregistered_key (kim_testbroker_t *broker, kim_client_t *sender, kim_client_t *recipient)
{
    zcert_t *cert = zcert_new ();
    KIM_CHECK (cert);
    kim_client_config_t config = kim_testbroker_client_config (broker, SENDER, 8, false);
    config.public_key = zcert_public_txt (cert);
    config.secret_key = zcert_secret_txt (cert);
    config.timeout_ms = 1000;
    int err = 0;
    int64_t started = s_itest_now ();
    kim_client_t *stranger = kim_client_new (&config, &err);
    KIM_CHECK (!stranger);
    ITEST_RC (err, -KIM_E_TIMEOUT);
    KIM_CHECK (s_itest_now () - started < 5000);

    //  On a raw socket: the HELLO goes nowhere.
    zsock_t *raw = s_raw_new (broker, SENDER, zcert_public_txt (cert), zcert_secret_txt (cert));
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, KIM_CMD_HELLO);
    cmd->version_count = 1;
    cmd->versions [0] = KIM_PROTOCOL_VERSION;
    zsock_set_sndtimeo (raw, 0);
    //  With no completed handshake the message may not even leave.
    kim_buf_t buf;
    kim_buf_init (&buf);
    KIM_CHECK (kim_cmd_encode (cmd, &buf) == 0);
    zmq_send (zsock_resolve (raw), buf.data, buf.size, ZMQ_DONTWAIT);
    kim_buf_free (&buf);
    KIM_CHECK (s_raw_recv (raw, cmd, 1000) == -1);
    free (cmd);
    zsock_destroy (&raw);
    zcert_destroy (&cert);
    s_still_serves (broker, sender, recipient);
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { SENDER, RECIPIENT, OTHER, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, true);
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 16, false);
    KIM_CHECK (sender && recipient);

    s_before_hello (broker, sender, recipient);
    s_in_session (broker, sender, recipient);
    s_unregistered_key (broker, sender, recipient);

    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);
    kim_client_destroy (&sender);
    kim_client_destroy (&recipient);
    int exit_status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (exit_status) && WEXITSTATUS (exit_status) == 0);
    s_itest_broker_destroy (&broker);
    printf ("test_protocol: OK\n");
    return 0;
}
