/*  kim_rawsock.h — a bare CURVE DEALER socket speaking kim's wire protocol.

    For tests that must send what the client library never would: garbage,
    commands out of order, wrong frame counts, oversized frames, forged
    headers. Replies are decoded with the protocol library. Header-only.
*/
#ifndef KIM_RAWSOCK_H_INCLUDED
#define KIM_RAWSOCK_H_INCLUDED

#include "kim_itest.h"

//  A DEALER authenticated with `org`'s keys (or with `public_key` and
//  `secret_key` when given), connected to the broker.
static inline zsock_t *
s_raw_new (kim_testbroker_t *broker, const char *org, const char *public_key,
           const char *secret_key)
{
    kim_client_config_t config = kim_testbroker_client_config (broker, org, 0, false);
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    KIM_CHECK (sock);
    zsock_set_curve_publickey (sock, public_key? public_key: config.public_key);
    zsock_set_curve_secretkey (sock, secret_key? secret_key: config.secret_key);
    zsock_set_curve_serverkey (sock, config.broker_key);
    zsock_set_linger (sock, 0);
    zsock_set_sndtimeo (sock, 5000);
    KIM_CHECK (zsock_connect (sock, "%s", config.endpoint) == 0);
    return sock;
}

//  Sends `count` frames as one message.
static inline void
s_raw_send_frames (zsock_t *sock, const void *const *frames, const size_t *sizes, int count)
{
    void *handle = zsock_resolve (sock);
    for (int i = 0; i < count; i++)
        KIM_CHECK (zmq_send (handle, frames [i], sizes [i], i + 1 < count? ZMQ_SNDMORE: 0)
                   == (int) sizes [i]);
}

static inline void
s_raw_send_bytes (zsock_t *sock, const void *data, size_t size)
{
    const void *frames [] = { data };
    size_t sizes [] = { size };
    s_raw_send_frames (sock, frames, sizes, 1);
}

//  Encodes and sends a command, with `extra_frames` payload frames (each
//  `payload`) after frame 0.
static inline void
s_raw_send_cmd (zsock_t *sock, const kim_cmd_t *cmd, const void *payload, size_t size,
                int extra_frames)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = kim_cmd_encode (cmd, &buf);
    if (rc) {
        fprintf (stderr, "cannot encode %s: %s\n", kim_cmd_name (cmd->id), kim_errname (rc));
        exit (1);
    }
    const void *frames [4] = { buf.data, payload, payload, payload };
    size_t sizes [4] = { buf.size, size, size, size };
    KIM_CHECK (extra_frames >= 0 && extra_frames < 4);
    s_raw_send_frames (sock, frames, sizes, 1 + extra_frames);
    kim_buf_free (&buf);
}

//  Receives one message and decodes frame 0 into *cmd; returns 0, or -1 on
//  timeout. Payload frames are skipped.
static inline int
s_raw_recv (zsock_t *sock, kim_cmd_t *cmd, int timeout_ms)
{
    zmq_pollitem_t item = { zsock_resolve (sock), 0, ZMQ_POLLIN, 0 };
    if (zmq_poll (&item, 1, timeout_ms) != 1)
        return -1;
    zmsg_t *msg = zmsg_recv (sock);
    KIM_CHECK (msg);
    zframe_t *frame = zmsg_first (msg);
    KIM_CHECK (frame);
    kim_decode_error_t error = { 0, "" };
    int rc = kim_cmd_decode (cmd, zframe_data (frame), zframe_size (frame), &error);
    if (rc) {
        fprintf (stderr, "broker sent an undecodable command: %s at %s\n", kim_errname (rc),
                 error.path);
        exit (1);
    }
    zmsg_destroy (&msg);
    return 0;
}

static inline void
s_raw_print (const char *what, const kim_cmd_t *cmd)
{
    fprintf (stderr, "%s: %s", what, kim_cmd_name (cmd->id)? kim_cmd_name (cmd->id): "?");
    if (cmd->id == KIM_CMD_REJECT)
        fprintf (stderr, " %s (%d) msg_id=%s path=%s text=%s", kim_errname (cmd->code),
                 cmd->code, cmd->msg_id, cmd->path, cmd->text);
    fprintf (stderr, "\n");
}

//  Expects a REJECT with `code` (and msg_id and path, when not NULL).
#define RAW_EXPECT_REJECT(sock, code, msg_id, path) \
    s_raw_expect_reject (__FILE__, __LINE__, (sock), (code), (msg_id), (path))

static inline void
s_raw_expect_reject (const char *file, int line, zsock_t *sock, int code, const char *msg_id,
                     const char *path)
{
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (reply);
    if (s_raw_recv (sock, reply, 5000)) {
        fprintf (stderr, "%s:%d: no reply; expected REJECT %s\n", file, line, kim_errname (code));
        exit (1);
    }
    if (reply->id != KIM_CMD_REJECT || reply->code != code
    ||  (msg_id && strcmp (reply->msg_id, msg_id) != 0)
    ||  (path && strcmp (reply->path, path) != 0)) {
        fprintf (stderr, "%s:%d: expected REJECT %s msg_id=%s path=%s\n", file, line,
                 kim_errname (code), msg_id? msg_id: "*", path? path: "*");
        s_raw_print ("got", reply);
        exit (1);
    }
    KIM_CHECK (reply->text [0]);
    free (reply);
}

//  HELLO; expects WELCOME naming `org`.
static inline void
s_raw_hello (zsock_t *sock, const char *org, uint32_t window)
{
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, KIM_CMD_HELLO);
    cmd->version_count = 1;
    cmd->versions [0] = KIM_PROTOCOL_VERSION;
    snprintf (cmd->agent, sizeof cmd->agent, "kim-rawsock");
    cmd->window = window;
    s_raw_send_cmd (sock, cmd, NULL, 0, 0);
    if (s_raw_recv (sock, cmd, 10000)) {
        fprintf (stderr, "no reply to HELLO\n");
        exit (1);
    }
    if (cmd->id != KIM_CMD_WELCOME || strcmp (cmd->org, org) != 0) {
        s_raw_print ("HELLO answered with", cmd);
        exit (1);
    }
    KIM_CHECK (cmd->version == KIM_PROTOCOL_VERSION);
    free (cmd);
}

//  PING; expects PONG (the session is alive and the broker serves).
static inline void
s_raw_ping (zsock_t *sock)
{
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, KIM_CMD_PING);
    s_raw_send_cmd (sock, cmd, NULL, 0, 0);
    if (s_raw_recv (sock, cmd, 10000)) {
        fprintf (stderr, "no reply to PING\n");
        exit (1);
    }
    if (cmd->id != KIM_CMD_PONG) {
        s_raw_print ("PING answered with", cmd);
        exit (1);
    }
    free (cmd);
}

//  A SEND of a REFERRAL to `to` with the given msg_id, frame 1 = payload.
static inline void
s_raw_send_msg (zsock_t *sock, const kim_msg_t *msg, const void *payload, size_t size,
                int payload_frames)
{
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (cmd, KIM_CMD_SEND);
    cmd->msg = *msg;
    s_raw_send_cmd (sock, cmd, payload, size, payload_frames);
    free (cmd);
}

//  Expects a RECEIPT for msg_id; returns its seq.
static inline uint64_t
s_raw_expect_receipt (zsock_t *sock, const char *msg_id)
{
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (reply);
    KIM_CHECK (s_raw_recv (sock, reply, 10000) == 0);
    if (reply->id != KIM_CMD_RECEIPT || strcmp (reply->msg_id, msg_id) != 0) {
        s_raw_print ("expected RECEIPT, got", reply);
        exit (1);
    }
    uint64_t seq = reply->seq;
    free (reply);
    return seq;
}

#endif
