/*  test_client_script.c — the client library against a scripted broker.

    A real broker never refuses a frame the library built, so what the
    library does with such answers cannot be seen against one. Here a
    CurveZMQ ROUTER in a thread of the test plays the broker, speaking
    version 2 from a script, and the library must do what PROTOCOL.md 5.1
    asks of a client with several SEND_BATCH frames in flight: a REJECT
    without msg_id refuses one frame as a whole; once as many of those have
    come as frames are unanswered, the n-th answers the n-th of them in the
    order sent, each of its messages refused with that REJECT.
*/
#include <czmq.h>

#include "kim_testbroker.h"

static bool verbose = false;

#define S_LOG(...) do { if (verbose) { printf (__VA_ARGS__); printf ("\n"); } } while (0)

//  --------------------------------------------------------------------------
//  The scripted broker

typedef struct {
    char endpoint [256];
    char public_key [41];
} s_script_args_t;

typedef struct {
    zsock_t *router;
    zframe_t *client;                   //  the client's routing id
    kim_cmd_t *cmd;
    kim_buf_t buf;
    uint64_t seq;
} s_script_t;

static void
s_script_send (s_script_t *self)
{
    zframe_t *rid = zframe_dup (self->client);
    KIM_CHECK (zframe_send (&rid, self->router, ZFRAME_MORE) == 0);
    zframe_t *frame = zframe_new (self->buf.data, self->buf.size);
    KIM_CHECK (frame && zframe_send (&frame, self->router, 0) == 0);
}

//  Sends REJECT `code` without msg_id: the refusal of a frame as a whole.
static void
s_script_reject (s_script_t *self, int code, const char *path)
{
    kim_cmd_init (self->cmd, KIM_CMD_REJECT);
    self->cmd->code = code;
    snprintf (self->cmd->text, sizeof self->cmd->text, "refused by the script");
    snprintf (self->cmd->path, sizeof self->cmd->path, "%s", path);
    kim_buf_reset (&self->buf);
    KIM_CHECK (kim_cmd_encode (self->cmd, &self->buf) == 0);
    s_script_send (self);
}

//  A SEND_BATCH frame read: its messages' ids, in order.
typedef struct {
    size_t count;
    char msg_ids [KIM_BATCH_MAX][KIM_ID_MAX + 1];
} s_frame_t;

//  Answers `frame` with a RECEIPT_BATCH, the next seqs in order.
static void
s_script_receipts (s_script_t *self, const s_frame_t *frame)
{
    kim_buf_reset (&self->buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_RECEIPT_BATCH, &self->buf) == 0);
    for (size_t i = 0; i < frame->count; i++) {
        kim_cmd_init (self->cmd, KIM_CMD_RECEIPT);
        snprintf (self->cmd->msg_id, sizeof self->cmd->msg_id, "%s", frame->msg_ids [i]);
        self->cmd->seq = ++self->seq;
        KIM_CHECK (kim_cmd_encode (self->cmd, &self->buf) == 0);
    }
    KIM_CHECK (kim_batch_end (KIM_CMD_RECEIPT_BATCH, frame->count, 0, &self->buf) == 0);
    s_script_send (self);
}

//  Reads from the client until a SEND_BATCH comes (answering HELLO with a
//  version 2 WELCOME and PING with PONG on the way) and returns its ids.
//  False when the pipe says stop.
static bool
s_script_next_batch (s_script_t *self, zsock_t *pipe, s_frame_t *frame)
{
    zpoller_t *poller = zpoller_new (pipe, self->router, NULL);
    bool got = false;
    while (!got) {
        void *which = zpoller_wait (poller, -1);
        if (which != self->router)
            break;
        zmsg_t *msg = zmsg_recv (self->router);
        KIM_CHECK (msg && zmsg_size (msg) >= 2);
        zframe_destroy (&self->client);
        self->client = zmsg_pop (msg);
        zframe_t *body = zmsg_first (msg);
        const uint8_t *data = zframe_data (body);
        size_t size = zframe_size (body);
        kim_cmd_id_t id = kim_cmd_peek (data, size);
        if (id == KIM_CMD_HELLO) {
            kim_cmd_init (self->cmd, KIM_CMD_WELCOME);
            self->cmd->version = 2;
            snprintf (self->cmd->org, sizeof self->cmd->org, "jc.rheine");
            snprintf (self->cmd->broker, sizeof self->cmd->broker, "broker.script");
            self->cmd->heartbeat_ms = 60000;
            self->cmd->max_payload = 65536;
            self->cmd->window = 16;
            kim_buf_reset (&self->buf);
            KIM_CHECK (kim_cmd_encode (self->cmd, &self->buf) == 0);
            s_script_send (self);
        }
        else
        if (id == KIM_CMD_PING) {
            kim_cmd_init (self->cmd, KIM_CMD_PONG);
            kim_buf_reset (&self->buf);
            KIM_CHECK (kim_cmd_encode (self->cmd, &self->buf) == 0);
            s_script_send (self);
        }
        else
        if (id == KIM_CMD_SEND_BATCH) {
            kim_entry_t entries [KIM_BATCH_MAX];
            kim_decode_error_t error;
            KIM_CHECK (kim_batch_split (self->cmd, data, size, entries, &error) == 0);
            frame->count = self->cmd->count;
            for (size_t i = 0; i < frame->count; i++) {
                KIM_CHECK (kim_batch_entry_decode (KIM_CMD_SEND_BATCH, &entries [i], self->cmd,
                                                   &error) == 0);
                snprintf (frame->msg_ids [i], sizeof frame->msg_ids [i], "%s",
                          self->cmd->msg.msg_id);
            }
            got = true;
        }
        else
            KIM_CHECK (!"the script expects HELLO, PING or SEND_BATCH");
        zmsg_destroy (&msg);
    }
    zpoller_destroy (&poller);
    return got;
}

//  The script, step by step as the main thread's calls below expect it.
static void
s_script (zsock_t *pipe, void *args_)
{
    s_script_args_t *args = (s_script_args_t *) args_;
    zcert_t *cert = zcert_new ();
    s_script_t self = { zsock_new (ZMQ_ROUTER), NULL,
                        (kim_cmd_t *) malloc (sizeof (kim_cmd_t)), { 0 }, 0 };
    KIM_CHECK (cert && self.router && self.cmd);
    kim_buf_init (&self.buf);
    zcert_apply (cert, self.router);
    zsock_set_curve_server (self.router, 1);
    KIM_CHECK (zsock_bind (self.router, "tcp://127.0.0.1:*") > 0);
    snprintf (args->endpoint, sizeof args->endpoint, "%s", zsock_endpoint (self.router));
    snprintf (args->public_key, sizeof args->public_key, "%s", zcert_public_txt (cert));
    zsock_signal (pipe, 0);

    s_frame_t first, second;
    //  1. Two frames; the second is refused as a whole before the first
    //     is receipted, as a broker does when it reads the second.
    if (s_script_next_batch (&self, pipe, &first)
    &&  s_script_next_batch (&self, pipe, &second)) {
        KIM_CHECK (first.count == 1 && second.count == 2);
        s_script_reject (&self, KIM_E_MALFORMED, "entries[1]");
        s_script_receipts (&self, &first);
    }
    //  2. Two frames, both refused as a whole, each with its own code.
    if (s_script_next_batch (&self, pipe, &first)
    &&  s_script_next_batch (&self, pipe, &second)) {
        s_script_reject (&self, KIM_E_TOO_LARGE, "");
        s_script_reject (&self, KIM_E_BAD_FRAMES, "");
        //  3. With no frame in flight, such a REJECT is nobody's frame's.
        s_script_reject (&self, KIM_E_MALFORMED, "");
    }
    //  4. A refusal that waits for the frame before it: it must not be
    //     taken until that frame is answered.
    if (s_script_next_batch (&self, pipe, &first)
    &&  s_script_next_batch (&self, pipe, &second)) {
        s_script_reject (&self, KIM_E_BAD_VALUE, "entries[0].cmd");
        zclock_sleep (200);             //  the client sees the REJECT alone first
        s_script_receipts (&self, &first);
    }
    char *term = zstr_recv (pipe);      //  $TERM from zactor_destroy
    zstr_free (&term);
    zframe_destroy (&self.client);
    kim_buf_free (&self.buf);
    free (self.cmd);
    zsock_destroy (&self.router);
    zcert_destroy (&cert);
}

//  --------------------------------------------------------------------------
//  The client's side

//  A referral with `msg_id`; the library may write into it.
static kim_msg_t *
s_message (const char *msg_id)
{
    static kim_msg_t msg;
    kim_test_referral (&msg, "soz.rheine", msg_id);
    snprintf (msg.msg_id, sizeof msg.msg_id, "%s", msg_id);
    return &msg;
}

static void
s_expect (kim_client_t *client, kim_event_type_t type, const char *msg_id, int code,
          const char *path)
{
    kim_event_t event;
    int rc = kim_client_recv (client, &event, 5000);
    if (rc)
        fprintf (stderr, "recv: %s (%s)\n", kim_strerror (rc), kim_client_error (client));
    KIM_CHECK (rc == 0);
    if (event.type != type || strcmp (event.msg_id, msg_id) || event.code != code
    ||  strcmp (event.path, path))
        fprintf (stderr, "expected event %d '%s' %d '%s', got %d '%s' %d '%s'\n", type,
                 msg_id, code, path, event.type, event.msg_id, event.code, event.path);
    KIM_CHECK (event.type == type && streq (event.msg_id, msg_id) && event.code == code);
    KIM_CHECK (streq (event.path, path));
}

int
main (int argc, char *argv [])
{
    verbose = argc > 1 && streq (argv [1], "-v");
    zsys_init ();
    s_script_args_t args;
    zactor_t *script = zactor_new (s_script, &args);
    KIM_CHECK (script);

    zcert_t *cert = zcert_new ();
    kim_client_config_t config = { 0 };
    config.endpoint = args.endpoint;
    config.broker_key = args.public_key;
    config.public_key = zcert_public_txt (cert);
    config.secret_key = zcert_secret_txt (cert);
    config.window = 16;
    config.plaintext = true;
    config.timeout_ms = 5000;
    int err = 0;
    kim_client_t *client = kim_client_new (&config, &err);
    if (!client)
        fprintf (stderr, "kim_client_new: %s\n", kim_strerror (err));
    KIM_CHECK (client);

    S_LOG ("a frame refused as a whole before the frame sent ahead of it is receipted");
    KIM_CHECK (kim_client_send_async (client, s_message ("a1"), NULL, 0) == 0);
    //  a2 and a3 wait for company while a1 awaits its answer, and travel
    //  together when flush is about to wait
    KIM_CHECK (kim_client_send_async (client, s_message ("a2"), NULL, 0) == 0);
    KIM_CHECK (kim_client_send_async (client, s_message ("a3"), NULL, 0) == 0);
    KIM_CHECK (kim_client_flush (client, 5000) == 0);
    KIM_CHECK (kim_client_pending (client) == 0);
    s_expect (client, KIM_EVENT_RECEIPT, "a1", 0, "");
    s_expect (client, KIM_EVENT_REJECT, "a2", KIM_E_MALFORMED, "entries[1]");
    s_expect (client, KIM_EVENT_REJECT, "a3", KIM_E_MALFORMED, "entries[1]");

    S_LOG ("two frames refused, the n-th REJECT for the n-th frame; a waiting send");
    KIM_CHECK (kim_client_send_async (client, s_message ("b1"), NULL, 0) == 0);
    uint64_t seq = 0;
    bool dup = false;
    int rc = kim_client_send (client, s_message ("b2"), NULL, 0, &seq, &dup, 5000);
    if (rc != -KIM_E_BAD_FRAMES)
        fprintf (stderr, "send b2: %d (%s)\n", rc, kim_client_error (client));
    KIM_CHECK (rc == -KIM_E_BAD_FRAMES);
    s_expect (client, KIM_EVENT_REJECT, "b1", KIM_E_TOO_LARGE, "");

    S_LOG ("a REJECT without msg_id while no frame waits is an event of its own");
    s_expect (client, KIM_EVENT_REJECT, "", KIM_E_MALFORMED, "");
    KIM_CHECK (kim_client_pending (client) == 0);

    S_LOG ("a refusal waits until the frames sent before its own are answered");
    KIM_CHECK (kim_client_send_async (client, s_message ("c1"), NULL, 0) == 0);
    KIM_CHECK (kim_client_send_async (client, s_message ("c2"), NULL, 0) == 0);
    KIM_CHECK (kim_client_flush (client, 5000) == 0);
    s_expect (client, KIM_EVENT_RECEIPT, "c1", 0, "");
    s_expect (client, KIM_EVENT_REJECT, "c2", KIM_E_BAD_VALUE, "entries[0].cmd");
    KIM_CHECK (kim_client_pending (client) == 0);

    kim_client_destroy (&client);
    zcert_destroy (&cert);
    zactor_destroy (&script);
    printf ("test_client_script: OK\n");
    return 0;
}
