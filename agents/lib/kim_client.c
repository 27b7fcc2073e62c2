/*  kim_client.c — the client library: one CurveZMQ session with a kim broker.

    There is no background thread. The library is a small state machine
    driven by the application's own calls: every call that may wait runs
    kim_client_i_pump(), which reads what the broker sent, fires the timers
    (HELLO deadline, heartbeat, reconnect backoff) and returns. So an
    application must call kim_client_recv/flush/send now and then; one that
    calls nothing for 3 heartbeats loses its session at the broker, and its
    next call reconnects transparently.

    This file owns that state machine: the DEALER socket, HELLO and WELCOME,
    the heartbeat, the backoff, reading and dispatching what the broker
    sends, and kim_client_new/destroy. A lost session (REJECT NO_SESSION,
    SESSION_EXPIRED or REPLACED, or silence for 3 heartbeats) destroys the
    DEALER, builds a fresh one and says HELLO again; WELCOME then resends
    what the last session left unanswered. This file runs on the bookkeeping
    of sends, events and acks below it and the public calls that wait run on
    it (kim_client_int.h draws the layers), so that it reads as the session
    alone.

    Set KIM_DEBUG=1 in the environment to log session losses and reconnects.
*/
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_client_explain.h"
#include "kim_client_int.h"

#define S_DEFAULT_SEND_WINDOW   256
#define S_DEFAULT_TIMEOUT_MS    5000
#define S_DEFAULT_HEARTBEAT_MS  10000   //  if a broker's WELCOME says 0
#define S_BACKOFF_MIN_MS        100
#define S_BACKOFF_MAX_MS        5000
#define S_STABLE_SESSION_MS     5000    //  a session that lived this long resets the backoff
#define S_DRAIN_MAX             1024    //  commands read before the timers run again
#define S_BYE_LINGER_MS         200     //  time the last ACK and BYE get to leave


//  --------------------------------------------------------------------------
//  Small helpers

static int64_t
s_deadline (int timeout_ms)
{
    return timeout_ms < 0? INT64_MAX: zclock_mono () + timeout_ms;
}


//  --------------------------------------------------------------------------
//  Socket

static void
s_dealer_destroy (kim_client_t *self, int linger_ms)
{
    if (self->dealer) {
        zsock_set_linger (self->dealer, linger_ms);
        zsock_destroy (&self->dealer);
    }
    self->handle = NULL;
}

static int
s_dealer_create (kim_client_t *self)
{
    self->dealer = zsock_new (ZMQ_DEALER);
    if (!self->dealer) {
        kim_client_i_set_error (self, "cannot create a ZeroMQ socket: %s",
                                zmq_strerror (zmq_errno ()));
        return -KIM_E_NOMEM;
    }
    self->handle = zsock_resolve (self->dealer);
    zsock_set_curve_serverkey (self->dealer, self->broker_key);
    zsock_set_curve_publickey (self->dealer, self->public_key);
    zsock_set_curve_secretkey (self->dealer, self->secret_key);
    //  Our own windows bound what can queue, and a full pipe must neither
    //  block a send nor (at the broker's ROUTER) drop a reply.
    zsock_set_sndhwm (self->dealer, 0);
    zsock_set_rcvhwm (self->dealer, 0);
    zsock_set_linger (self->dealer, 0);
    if (zsock_connect (self->dealer, "%s", self->endpoint) == -1) {
        kim_client_i_set_error (self, "cannot connect to '%s': %s", self->endpoint,
                                zmq_strerror (zmq_errno ()));
        s_dealer_destroy (self, 0);
        return -KIM_E_ARGS;
    }
    return 0;
}

static void
s_send_simple (kim_client_t *self, kim_cmd_id_t id)
{
    kim_cmd_init (&self->tx, id);
    if (kim_client_i_send_tx (self) == -KIM_E_CLOSED)
        kim_client_i_session_lost (self, KIM_E_CLOSED, "%s", self->error);
}


//  --------------------------------------------------------------------------
//  Session state machine

void
kim_client_i_session_lost (kim_client_t *self, int code, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    kim_client_i_verror (self, format, args);
    va_end (args);
    self->last_code = code;

    int64_t now = zclock_mono ();
    //  A session that lived a while was a success: retry soon. Sessions that
    //  die young (a broker that keeps refusing us, two clients replacing each
    //  other) back off to S_BACKOFF_MAX_MS so we never hammer the broker.
    if (self->state == KIM_CLIENT_ACTIVE && now - self->session_started >= S_STABLE_SESSION_MS)
        self->backoff_ms = S_BACKOFF_MIN_MS;
    self->next_attempt = now + self->backoff_ms;
    self->backoff_ms = self->backoff_ms * 2 > S_BACKOFF_MAX_MS? S_BACKOFF_MAX_MS:
                       self->backoff_ms * 2;

    s_dealer_destroy (self, 0);
    self->state = KIM_CLIENT_DISCONNECTED;
    self->unsent = self->head;      //  everything pending goes again
    kim_client_i_batches_new_session (self);
    if (self->verbose)
        zsys_debug ("kim_client: session lost (%s); reconnecting in %d ms",
                    self->error, (int) (self->next_attempt - now));
}

void
kim_client_i_session_check (kim_client_t *self, int rc)
{
    if (rc)
        kim_client_i_session_lost (self, -rc, "%s", self->error);
}

static void
s_fail (kim_client_t *self, int code, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

static void
s_fail (kim_client_t *self, int code, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    kim_client_i_verror (self, format, args);
    va_end (args);
    self->fatal = code;
    self->last_code = code;
    self->state = KIM_CLIENT_FAILED;
    s_dealer_destroy (self, 0);
}

static void
s_connect (kim_client_t *self)
{
    int rc = s_dealer_create (self);
    if (rc == -KIM_E_ARGS) {
        s_fail (self, KIM_E_ARGS, "%s", self->error);
        return;
    }
    if (rc) {
        kim_client_i_session_lost (self, -rc, "%s", self->error);
        return;
    }
    kim_cmd_init (&self->tx, KIM_CMD_HELLO);
    self->tx.version_count = 0;
    for (uint32_t v = KIM_PROTOCOL_VERSION; v <= (self->v1_only? 1: KIM_PROTOCOL_MAX); v++)
        self->tx.versions [self->tx.version_count++] = v;
    kim_client_i_copy (self->tx.agent, sizeof self->tx.agent, self->agent);
    self->tx.window = self->window;
    //  Queued by ZeroMQ until the CURVE handshake completes
    if (kim_client_i_send_tx (self)) {
        kim_client_i_session_lost (self, KIM_E_CLOSED, "%s", self->error);
        return;
    }
    int64_t now = zclock_mono ();
    self->state = KIM_CLIENT_HELLO_SENT;
    self->hello_deadline = now + self->timeout_ms;
}

static void
s_on_welcome (kim_client_t *self, const kim_cmd_t *welcome)
{
    int64_t now = zclock_mono ();
    kim_client_i_copy (self->org, sizeof self->org, welcome->org);
    kim_client_i_copy (self->broker, sizeof self->broker, welcome->broker);
    self->heartbeat_ms = welcome->heartbeat_ms? welcome->heartbeat_ms: S_DEFAULT_HEARTBEAT_MS;
    self->max_payload = welcome->max_payload? welcome->max_payload: KIM_PAYLOAD_MAX;
    self->session_window = welcome->window;
    self->version = welcome->version;
    kim_client_i_acks_new_session (self);
    self->state = KIM_CLIENT_ACTIVE;
    self->session_started = now;
    self->last_heard = now;
    self->last_ping = now;
    if (self->welcomed)
        self->reconnects++;
    self->welcomed = true;
    //  Keys may have rotated while we were away: ask the directory again.
    kim_seal_forget (&self->seal);
    if (self->verbose)
        zsys_debug ("kim_client: session open as %s at %s (heartbeat %u ms, %zu to resend)",
                    self->org, self->broker, self->heartbeat_ms, self->pending_count);

    //  Resend what the last session left unreceipted, then what waited
    kim_client_i_session_check (self, kim_client_i_send_unsent (self));
    if (self->state == KIM_CLIENT_ACTIVE && self->status_waiting)
        kim_client_i_session_check (self, kim_client_i_send_request (self));
    kim_client_i_session_check (self, kim_client_i_send_acks (self));
}

//  True when the waiting request is answered by a RECEIPT or REJECT naming
//  `msg_id`: SUBSCRIBE and UNSUBSCRIBE are, with msg_id = sub_id (PROTOCOL.md
//  8.10). A receipt of one of our sends never is: sends are matched first.
static bool
s_request_named (kim_client_t *self, const char *msg_id)
{
    return self->status_waiting && !self->status_done && self->request
        && (self->request->id == KIM_CMD_SUBSCRIBE || self->request->id == KIM_CMD_UNSUBSCRIBE)
        && streq (self->request->sub_id, msg_id);
}

//  Hands the command just read to the waiting request as its reply.
static void
s_answer_request (kim_client_t *self)
{
    *self->reply = self->rx;
    self->reply->body = NULL;
    self->reply->body_size = 0;
    //  Directory entries were copied into self->seal.entries
    //  (s_read_one); the frame they came in is gone.
    self->reply->dir_raw = NULL;
    self->reply->dir_raw_size = 0;
    kim_buf_reset (&self->reply_body);
    if (self->rx.body && self->rx.body_size
    &&  kim_buf_append (&self->reply_body, self->rx.body, self->rx.body_size) == 0) {
        self->reply->body = self->reply_body.data;
        self->reply->body_size = self->reply_body.size;
    }
    self->status_done = true;
    self->status_code = 0;
}

static void
s_on_reject (kim_client_t *self, const kim_cmd_t *reject)
{
    int code = reject->code;
    const char *text = reject->text [0]? reject->text: kim_strerror (code);
    if (code == KIM_E_NO_SESSION || code == KIM_E_SESSION_EXPIRED || code == KIM_E_REPLACED) {
        kim_client_i_session_lost (self, code, "broker ended the session: %s (%d) %s",
                                   kim_errname (code), code, text);
        return;
    }
    if (!reject->msg_id [0]
    && (code == KIM_E_VERSION || code == KIM_E_UNKNOWN_ORG || code == KIM_E_REVOKED)) {
        s_fail (self, code, "broker refused us: %s (%d) %s", kim_errname (code), code, text);
        return;
    }
    if (self->state == KIM_CLIENT_HELLO_SENT) {
        //  Anything else refusing our HELLO (BUSY, RATE_LIMITED...) may pass
        kim_client_i_session_lost (self, code > 0? code: KIM_E_INTERNAL,
                                   "broker refused HELLO: %s (%d) %s",
                                   kim_errname (code), code, text);
        return;
    }
    if (reject->msg_id [0]) {
        kim_client_entry_t *entry =
            (kim_client_entry_t *) zhashx_lookup (self->pending, reject->msg_id);
        if (entry)
            kim_client_i_resolve (self, entry, reject);
        else
        if (s_request_named (self, reject->msg_id)) {
            self->status_done = true;
            self->status_code = code > 0? code: KIM_E_INTERNAL;
            kim_client_i_set_error (self, "%s (%d) %s", kim_errname (code), code, text);
        }
        //  else: an answer to a message already answered; nothing waits for it
        return;
    }
    if (self->status_waiting && !self->status_done && code != KIM_E_BAD_ACK) {
        self->status_done = true;
        self->status_code = code > 0? code: KIM_E_INTERNAL;
        kim_client_i_set_error (self, "%s (%d) %s", kim_errname (code), code, text);
        return;
    }
    //  A fault of the frame itself (1xx) without msg_id, while SEND_BATCH
    //  frames wait: one of them was refused as a whole (5.1)
    if (code >= 100 && code < 200 && !self->rx_entry && kim_client_i_batch_refused (self, reject))
        return;
    kim_client_node_t *node = kim_client_i_node_new (self);
    if (node) {
        node->type = KIM_EVENT_REJECT;
        node->code = code;
        kim_client_i_copy (node->text, sizeof node->text, reject->text);
        kim_client_i_copy (node->path, sizeof node->path, reject->path);
        kim_client_i_queue_push (self, node);
    }
}

//  Discards frames we have no use for, up to the end of the message.
static void
s_skip_rest (kim_client_t *self, bool more)
{
    while (more) {
        if (zmq_msg_recv (&self->frame, self->handle, ZMQ_DONTWAIT) == -1)
            return;
        more = zmq_msg_more (&self->frame);
    }
}

static void s_read_batch (kim_client_t *self);
static void s_handle_rx (kim_client_t *self);

//  Reads and handles one command. Returns 1 if it read one, 0 if none was
//  waiting.
static int
s_read_one (kim_client_t *self)
{
    if (!self->handle)
        return 0;
    if (zmq_msg_recv (&self->frame, self->handle, ZMQ_DONTWAIT) == -1)
        return 0;
    bool more = zmq_msg_more (&self->frame);
    //  Anything at all proves the broker is alive
    self->last_heard = zclock_mono ();

    kim_decode_error_t derr;
    if (kim_cmd_is_batch (kim_cmd_peek ((const uint8_t *) zmq_msg_data (&self->frame),
                                        zmq_msg_size (&self->frame)))) {
        s_skip_rest (self, more);
        s_read_batch (self);
        return 1;
    }
    int rc = kim_cmd_decode (&self->rx, (const uint8_t *) zmq_msg_data (&self->frame),
                             zmq_msg_size (&self->frame), &derr);
    if (rc == 0 && self->rx.id == KIM_CMD_DIRECTORY_REPLY)
        //  Again, now keeping the entries (the frame is reused below).
        rc = kim_cmd_decode_directory (&self->rx, (const uint8_t *) zmq_msg_data (&self->frame),
                                       zmq_msg_size (&self->frame), self->seal.entries,
                                       KIM_DIRECTORY_MAX, &derr);
    if (rc) {
        zsys_warning ("kim_client: dropped an undecodable command from the broker: %s at '%s'",
                      kim_errname (derr.code), derr.path);
        kim_client_i_ranges_unsafe (self);
        s_skip_rest (self, more);
        return 1;
    }
    if (self->rx.id == KIM_CMD_DELIVER) {
        kim_client_node_t *node = kim_client_i_node_new (self);
        if (!node) {
            s_skip_rest (self, more);
            return 1;
        }
        if (more) {
            if (zmq_msg_recv (&node->payload, self->handle, ZMQ_DONTWAIT) == -1)
                more = false;
            else
                more = zmq_msg_more (&node->payload);
        }
        else
            zsys_warning ("kim_client: DELIVER seq %" PRIu64 " came without a payload frame",
                          self->rx.seq);
        s_skip_rest (self, more);
        if (!node->msg)
            node->msg = (kim_msg_t *) malloc (sizeof (kim_msg_t));
        if (!node->msg) {
            kim_client_i_node_free (node);
            s_fail (self, KIM_E_NOMEM, "out of memory queueing a delivery");
            return 1;
        }
        node->type = KIM_EVENT_DELIVER;
        node->seq = self->rx.seq;
        *node->msg = self->rx.msg;
        node->payload_offset = 0;
        node->payload_size = zmq_msg_size (&node->payload);
        kim_client_i_outstanding_add (self, node->seq);
        kim_client_i_queue_push (self, node);
        return 1;
    }
    s_skip_rest (self, more);
    s_handle_rx (self);
    return 1;
}

//  A version 2 batch frame from the broker (PROTOCOL.md 5.1): each entry is
//  handled as the command it is. Deliveries keep a share of the frame (no
//  copy) for their payloads.
static void
s_read_batch (kim_client_t *self)
{
    const uint8_t *data = (const uint8_t *) zmq_msg_data (&self->frame);
    kim_entry_t entries [KIM_BATCH_MAX];
    kim_decode_error_t derr;
    int rc = kim_batch_split (&self->rx, data, zmq_msg_size (&self->frame), entries, &derr);
    if (rc == 0 && self->rx.id == KIM_CMD_SEND_BATCH) {
        zsys_warning ("kim_client: dropped a SEND_BATCH from the broker: clients send those");
        return;
    }
    if (rc) {
        zsys_warning ("kim_client: dropped an undecodable batch from the broker: %s at '%s'",
                      kim_errname (derr.code), derr.path);
        kim_client_i_ranges_unsafe (self);
        return;
    }
    kim_cmd_id_t batch = self->rx.id;
    size_t count = self->rx.count;
    for (size_t i = 0; i < count && !self->fatal; i++) {
        rc = kim_batch_entry_decode (batch, &entries [i], &self->rx, &derr);
        if (rc) {
            zsys_warning ("kim_client: dropped entry %zu of a %s: %s at '%s'", i,
                          kim_cmd_name (batch), kim_errname (derr.code), derr.path);
            kim_client_i_ranges_unsafe (self);
            continue;
        }
        if (self->rx.id != KIM_CMD_DELIVER) {
            self->rx_entry = true;
            s_handle_rx (self);
            self->rx_entry = false;
            continue;
        }
        kim_client_node_t *node = kim_client_i_node_new (self);
        if (!node)
            return;
        if (!node->msg)
            node->msg = (kim_msg_t *) malloc (sizeof (kim_msg_t));
        if (!node->msg || zmq_msg_copy (&node->payload, &self->frame)) {
            kim_client_i_node_free (node);
            s_fail (self, KIM_E_NOMEM, "out of memory queueing a delivery");
            return;
        }
        node->type = KIM_EVENT_DELIVER;
        node->seq = self->rx.seq;
        *node->msg = self->rx.msg;
        node->payload_offset = (size_t) (entries [i].payload - data);
        node->payload_size = entries [i].payload_size;
        kim_client_i_outstanding_add (self, node->seq);
        kim_client_i_queue_push (self, node);
    }
    //  A frame answered now may leave only frames refused as a whole
    if (batch == KIM_CMD_RECEIPT_BATCH)
        kim_client_i_batch_settle (self);
}

//  Handles self->rx, a command without a payload.
static void
s_handle_rx (kim_client_t *self)
{
    switch (self->rx.id) {
        case KIM_CMD_WELCOME:
            if (self->state == KIM_CLIENT_HELLO_SENT)
                s_on_welcome (self, &self->rx);
            break;
        case KIM_CMD_RECEIPT: {
            kim_client_entry_t *entry =
                (kim_client_entry_t *) zhashx_lookup (self->pending, self->rx.msg_id);
            if (entry)
                kim_client_i_resolve (self, entry, &self->rx);
            else
            if (s_request_named (self, self->rx.msg_id))
                s_answer_request (self);
            break;
        }
        case KIM_CMD_REJECT:
            s_on_reject (self, &self->rx);
            break;
        case KIM_CMD_PONG:
            break;
        default:
            //  Any other command answers the request that waits, if any.
            //  (Commands with a payload of pointers into the frame, RECORD,
            //  are streamed by their own tools, not through this call.)
            if (self->status_waiting && !self->status_done && self->rx.id != KIM_CMD_RECORD)
                s_answer_request (self);
            else
            if (self->verbose)
                zsys_debug ("kim_client: ignored %s from the broker",
                            kim_cmd_name (self->rx.id));
            break;
    }
}

//  Fires what is due: reconnect, HELLO timeout, PING, silence.
static void
s_timers (kim_client_t *self)
{
    int64_t now = zclock_mono ();
    if (self->state == KIM_CLIENT_DISCONNECTED && now >= self->next_attempt)
        s_connect (self);
    else
    if (self->state == KIM_CLIENT_HELLO_SENT && now >= self->hello_deadline)
        kim_client_i_session_lost (self, KIM_E_TIMEOUT,
                                   "no WELCOME within %d ms from %s: broker unreachable "
                                   "or our key is not registered",
                                   self->timeout_ms, self->endpoint);
    else
    if (self->state == KIM_CLIENT_ACTIVE) {
        int64_t heartbeat = self->heartbeat_ms;
        int64_t quiet = self->last_heard > self->last_ping? self->last_heard: self->last_ping;
        if (now - self->last_heard >= 3 * heartbeat)
            kim_client_i_session_lost (self, KIM_E_SESSION_EXPIRED,
                                       "nothing heard from the broker for %" PRId64 " ms",
                                       now - self->last_heard);
        else
        //  We must say something every heartbeat; and when the broker has
        //  been quiet for one, we ask (PONG proves it is there).
        if (now - self->last_sent >= heartbeat || now - quiet >= heartbeat) {
            self->last_ping = now;
            s_send_simple (self, KIM_CMD_PING);
        }
    }
}

static int64_t
s_next_timer (kim_client_t *self)
{
    if (self->state == KIM_CLIENT_DISCONNECTED)
        return self->next_attempt;
    if (self->state == KIM_CLIENT_HELLO_SENT)
        return self->hello_deadline;
    if (self->state == KIM_CLIENT_ACTIVE) {
        int64_t heartbeat = self->heartbeat_ms;
        int64_t quiet = self->last_heard > self->last_ping? self->last_heard: self->last_ping;
        int64_t next = self->last_sent + heartbeat;
        if (quiet + heartbeat < next)
            next = quiet + heartbeat;
        if (self->last_heard + 3 * heartbeat < next)
            next = self->last_heard + 3 * heartbeat;
        return next;
    }
    return INT64_MAX;
}

//  Reads whatever the broker sent. Returns how many commands it handled.
static int
s_drain (kim_client_t *self)
{
    int count = 0;
    while (count < S_DRAIN_MAX && self->handle && !self->fatal && s_read_one (self))
        count++;
    return count;
}

//  One turn of the state machine: handle input and timers, waiting at most
//  timeout_ms (-1: until a timer is due) for something to happen. Returns 0,
//  -fatal, or -KIM_E_CLOSED when the process was interrupted (SIGINT).
int
kim_client_i_pump (kim_client_t *self, int timeout_ms)
{
    kim_client_state_t state = self->state;
    s_timers (self);
    if (self->fatal)
        return -self->fatal;
    //  One transition per turn, so a caller waiting for a state sees it
    if (self->state != state)
        return 0;
    int drained = s_drain (self);
    if (drained == 0)
        kim_client_i_session_check (self, kim_client_i_send_acks (self));
    //  Sends held to travel together go now unless more may join them.
    if (self->state == KIM_CLIENT_ACTIVE && self->unsent
    &&  !kim_client_i_hold_unsent (self, timeout_ms != 0 && drained == 0))
        kim_client_i_session_check (self, kim_client_i_send_unsent (self));
    if (drained > 0 || timeout_ms == 0) {
        s_timers (self);
        return self->fatal? -self->fatal: 0;
    }

    int64_t now = zclock_mono ();
    int wait = kim_client_i_ms_until (s_next_timer (self), now);
    if (timeout_ms >= 0 && (wait < 0 || wait > timeout_ms))
        wait = timeout_ms;
    if (self->handle) {
        zmq_pollitem_t item = { self->handle, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, wait) == -1 && zmq_errno () == ETERM) {
            s_fail (self, KIM_E_CLOSED, "ZeroMQ context terminated");
            return -self->fatal;
        }
    }
    else
    if (wait != 0)
        zclock_sleep (wait < 0? 1000: wait);
    if (zsys_interrupted) {
        kim_client_i_set_error (self, "interrupted");
        return -KIM_E_CLOSED;
    }
    s_drain (self);
    s_timers (self);
    return self->fatal? -self->fatal: 0;
}

//  Pumps until done(self) or the deadline. Returns 0, -KIM_E_TIMEOUT, or
//  the pump's error.
int
kim_client_i_wait_for (kim_client_t *self, int timeout_ms, bool (*done) (kim_client_t *self))
{
    int64_t deadline = s_deadline (timeout_ms);
    bool pumped = false;
    while (!done (self)) {
        if (self->fatal)
            return -self->fatal;
        int wait = kim_client_i_ms_until (deadline, zclock_mono ());
        if (wait == 0 && pumped)
            return -KIM_E_TIMEOUT;
        int rc = kim_client_i_pump (self, wait);
        if (rc)
            return rc;
        pumped = true;
    }
    return 0;
}

static bool
s_is_settled (kim_client_t *self)
{
    return self->state != KIM_CLIENT_HELLO_SENT;
}


//  --------------------------------------------------------------------------
//  Public API

kim_client_t *
kim_client_new_explain (const kim_client_config_t *config, int *err, char *why, size_t why_size)
{
    int ignored;
    if (!err)
        err = &ignored;
    *err = 0;
    kim_client_i_why (why, why_size, "%s", "");
    if (!config || !config->endpoint || !*config->endpoint) {
        *err = -KIM_E_ARGS;
        kim_client_i_why (why, why_size, "no broker endpoint given");
        return NULL;
    }
    if (!kim_client_i_z85_key_valid (config->broker_key)) {
        *err = -KIM_E_KEY;
        kim_client_i_why (why, why_size, "the broker key is not a 40-character Z85 CURVE key");
        return NULL;
    }
    if (!kim_client_i_z85_key_valid (config->public_key)
    ||  !kim_client_i_z85_key_valid (config->secret_key)) {
        *err = -KIM_E_KEY;
        kim_client_i_why (why, why_size, "our key pair is not two 40-character Z85 CURVE keys");
        return NULL;
    }
    if (config->agent && strlen (config->agent) > KIM_AGENT_MAX) {
        *err = -KIM_E_ARGS;
        kim_client_i_why (why, why_size, "agent name longer than %d bytes", KIM_AGENT_MAX);
        return NULL;
    }
    if (sodium_init () < 0) {
        *err = -KIM_E_NOMEM;
        kim_client_i_why (why, why_size, "libsodium failed to initialise");
        return NULL;
    }
    kim_client_t *self = (kim_client_t *) calloc (1, sizeof (kim_client_t));
    if (!self || !(self->endpoint = strdup (config->endpoint))
    || !(self->pending = zhashx_new ())) {
        if (self)
            free (self->endpoint);
        free (self);
        *err = -KIM_E_NOMEM;
        kim_client_i_why (why, why_size, "out of memory");
        return NULL;
    }
    //  Entries own their msg_id; the hash borrows it
    zhashx_set_key_duplicator (self->pending, NULL);
    zhashx_set_key_destructor (self->pending, NULL);
    memcpy (self->broker_key, config->broker_key, 41);
    memcpy (self->public_key, config->public_key, 41);
    memcpy (self->secret_key, config->secret_key, 41);
    kim_client_i_copy (self->agent, sizeof self->agent, config->agent? config->agent: "libkim");
    self->window = config->window;
    self->send_window = config->send_window? config->send_window: S_DEFAULT_SEND_WINDOW;
    self->timeout_ms = config->timeout_ms > 0? config->timeout_ms: S_DEFAULT_TIMEOUT_MS;
    self->backoff_ms = S_BACKOFF_MIN_MS;
    const char *debug = getenv ("KIM_DEBUG");
    self->verbose = debug && *debug && !streq (debug, "0");
    //  KIM_PROTOCOL=1 keeps the client on version 1, to test brokers and
    //  clients of either version side by side.
    const char *protocol = getenv ("KIM_PROTOCOL");
    self->v1_only = protocol && streq (protocol, "1");
    kim_buf_init (&self->buf);
    kim_buf_init (&self->send_buf);
    zmq_msg_init (&self->frame);
    int seal_rc = kim_seal_init (&self->seal, config, why, why_size);
    if (seal_rc) {
        *err = seal_rc;
        self->state = KIM_CLIENT_FAILED;
        kim_client_destroy (&self);
        return NULL;
    }

    s_connect (self);
    int rc = kim_client_i_wait_for (self, -1, s_is_settled);
    if (rc == 0 && self->state == KIM_CLIENT_ACTIVE)
        return self;

    *err = rc? rc: -(self->last_code? self->last_code: KIM_E_TIMEOUT);
    kim_client_i_why (why, why_size, "%s", self->error);
    self->state = KIM_CLIENT_FAILED;         //  no BYE: there is no session
    kim_client_destroy (&self);
    return NULL;
}

kim_client_t *
kim_client_new (const kim_client_config_t *config, int *err)
{
    char why [KIM_TEXT_MAX + 256];
    kim_client_t *self = kim_client_new_explain (config, err, why, sizeof why);
    if (!self)
        zsys_error ("kim_client: %s", why);
    return self;
}

void
kim_client_destroy (kim_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_client_t *self = *self_p;
    if (self->state == KIM_CLIENT_ACTIVE) {
        //  Sends held to travel in a batch go now, as they would have
        //  gone at once in version 1
        kim_client_i_session_check (self, kim_client_i_send_unsent (self));
        kim_client_i_session_check (self, kim_client_i_send_acks (self));
        if (self->state == KIM_CLIENT_ACTIVE)
            s_send_simple (self, KIM_CMD_BYE);
    }
    s_dealer_destroy (self, self->state == KIM_CLIENT_ACTIVE? S_BYE_LINGER_MS: 0);

    kim_client_entry_t *entry = self->head;
    while (entry) {
        kim_client_entry_t *next = entry->next;
        free (entry);
        entry = next;
    }
    zhashx_destroy (&self->pending);
    free (self->refusals);
    if (self->lent)
        kim_client_i_node_free (self->lent);
    kim_client_node_t *node = self->queue_head;
    while (node) {
        kim_client_node_t *next = node->next;
        kim_client_i_node_free (node);
        node = next;
    }
    node = self->free_nodes;
    while (node) {
        kim_client_node_t *next = node->next;
        kim_client_i_node_free (node);
        node = next;
    }
    zmq_msg_close (&self->frame);
    kim_buf_free (&self->buf);
    kim_buf_free (&self->send_buf);
    kim_buf_free (&self->reply_body);
    kim_seal_fini (&self->seal);
    sodium_memzero (self->secret_key, sizeof self->secret_key);
    free (self->endpoint);
    free (self->request);
    free (self);
    *self_p = NULL;
}

const char *
kim_client_org (kim_client_t *self)
{
    return self? self->org: "";
}

uint32_t
kim_client_max_payload (kim_client_t *self)
{
    return self? self->max_payload: 0;
}

const char *
kim_client_error (kim_client_t *self)
{
    return self? self->error: "no client";
}

uint64_t
kim_client_reconnects (kim_client_t *self)
{
    return self? self->reconnects: 0;
}

uint32_t
kim_client_protocol (kim_client_t *self)
{
    return self? self->version: 0;
}
