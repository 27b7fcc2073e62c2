/*  kim_client.c — the client library: one CurveZMQ session with a kim broker.

    There is no background thread. The library is a small state machine
    driven by the application's own calls: every call that may wait runs
    s_pump(), which reads what the broker sent, fires the timers (HELLO
    deadline, heartbeat, reconnect backoff) and returns. So an application
    must call kim_client_recv/flush/send now and then; one that calls nothing
    for 3 heartbeats loses its session at the broker, and its next call
    reconnects transparently.

    Every SEND stays in `pending` — hashed by msg_id so a RECEIPT finds its
    entry in O(1), linked in send order so a resend keeps the order — until
    the broker answers it. A lost session (REJECT NO_SESSION, SESSION_EXPIRED
    or REPLACED, or silence for 3 heartbeats) destroys the DEALER, builds a
    fresh one, says HELLO again and resends everything pending in order with
    the same msg_ids; the broker's de-duplication answers RECEIPT dup=true
    for what it already had, so a sender sees each message receipted once.

    Deliveries are at-least-once: after a reconnect the broker redelivers
    what we had not acked, and the library hands it out again (the same
    seq). Applications that must not process a message twice remember the
    seqs they have handled, as `kim inbox` does.

    Events that arrive while the caller waits for something else (room in
    the send window, a flush, a STATUS_REPLY, a synchronous receipt) are
    queued for kim_client_recv. Queue nodes are recycled, and a delivery's
    payload is moved out of the socket, not copied, so a busy client does not
    allocate per event. A SEND is encoded once, when queued, and resent from
    those bytes.

    Set KIM_DEBUG=1 in the environment to log session losses and reconnects.
*/
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <sodium.h>

#include "kim/kim_client.h"
#include "kim_cli.h"
#include "kim_client_seal.h"

#define S_DEFAULT_SEND_WINDOW   256
#define S_DEFAULT_TIMEOUT_MS    5000
#define S_DEFAULT_HEARTBEAT_MS  10000   //  if a broker's WELCOME says 0
#define S_BACKOFF_MIN_MS        100
#define S_BACKOFF_MAX_MS        5000
#define S_STABLE_SESSION_MS     5000    //  a session that lived this long resets the backoff
#define S_DRAIN_MAX             1024    //  commands read before the timers run again
#define S_FREE_NODES_MAX        4096    //  recycled event nodes kept after a burst
#define S_CERT_MAX              65536   //  a certificate file larger than this is not one
#define S_BYE_LINGER_MS         200     //  time the last ACK and BYE get to leave

typedef enum {
    S_DISCONNECTED,             //  no socket; reconnect at next_attempt
    S_HELLO_SENT,               //  socket up, waiting for WELCOME until hello_deadline
    S_ACTIVE,                   //  session open
    S_FAILED                    //  the broker refused us for good (fatal)
} s_state_t;

//  One unreceipted SEND: its encoded frame 0 and its payload, in one block.
typedef struct _s_entry_t {
    struct _s_entry_t *prev;
    struct _s_entry_t *next;
    char msg_id [KIM_ID_MAX + 1];       //  the hash key (not duplicated)
    size_t frame_size;
    size_t payload_size;
    uint8_t data [];                    //  frame, then payload
} s_entry_t;

//  One queued event for kim_client_recv.
typedef struct _s_node_t {
    struct _s_node_t *next;
    kim_event_type_t type;
    char msg_id [KIM_ID_MAX + 1];
    uint64_t seq;
    bool dup;
    int code;
    char text [KIM_TEXT_MAX + 1];
    char path [KIM_PATH_MAX + 1];
    kim_msg_t *msg;                     //  DELIVER header; kept when the node is recycled
    zmq_msg_t payload;                  //  DELIVER payload, moved from the socket
} s_node_t;

struct _kim_client_t {
    //  Configuration (copied)
    char *endpoint;
    char broker_key [41];
    char public_key [41];
    char secret_key [41];
    char agent [KIM_AGENT_MAX + 1];
    uint32_t window;
    uint32_t send_window;
    int timeout_ms;
    bool verbose;                       //  KIM_DEBUG set: log session changes

    //  Session
    zsock_t *dealer;
    void *handle;                       //  libzmq socket of dealer
    s_state_t state;
    int fatal;                          //  KIM_E_* that ended the client, or 0
    int last_code;                      //  KIM_E_* of the last session loss
    char org [KIM_ORG_MAX + 1];
    char broker [KIM_ORG_MAX + 1];
    uint32_t heartbeat_ms;
    uint32_t max_payload;
    uint32_t session_window;
    bool welcomed;                      //  a session was opened once
    uint64_t reconnects;
    int backoff_ms;
    int64_t next_attempt;               //  S_DISCONNECTED: when to reconnect
    int64_t hello_deadline;             //  S_HELLO_SENT: when to give up
    int64_t session_started;
    int64_t last_sent;
    int64_t last_heard;
    int64_t last_ping;

    //  Unreceipted sends
    zhashx_t *pending;                  //  msg_id -> s_entry_t
    s_entry_t *head;                    //  oldest
    s_entry_t *tail;
    s_entry_t *unsent;                  //  first entry not sent in this session
    size_t pending_count;

    //  kim_client_send waits for one entry's answer
    s_entry_t *sync_entry;
    bool sync_done;
    int sync_code;
    uint64_t sync_seq;
    bool sync_dup;

    //  kim_client_request waits for the broker's answer to one command;
    //  the request is kept to send it again after a reconnect.
    kim_cmd_t *request;
    kim_cmd_t *reply;
    bool status_waiting;
    bool status_done;
    int status_code;
    kim_buf_t reply_body;           //  a reply's body (REFERRAL_INFO), copied out of its frame

    //  Events for kim_client_recv
    s_node_t *queue_head;
    s_node_t *queue_tail;
    s_node_t *lent;                     //  handed out; its payload lives until the next call
    s_node_t *free_nodes;
    size_t free_count;

    //  Acks not yet sent
    uint64_t acks [KIM_ACKS_MAX];
    size_t ack_count;

    //  Scratch, reused to keep the hot path free of allocations
    kim_buf_t buf;                      //  commands we send at once
    kim_buf_t send_buf;                 //  a SEND being queued (survives pumping)
    zmq_msg_t frame;
    kim_cmd_t tx;
    kim_cmd_t rx;
    char error [KIM_TEXT_MAX + 256];

    //  Sealed payloads and signatures (kim_client_seal.c)
    kim_seal_t seal;
};

static void s_session_lost (kim_client_t *self, int code, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));


//  --------------------------------------------------------------------------
//  Small helpers

static void
s_why (char *why, size_t why_size, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

static void
s_why (char *why, size_t why_size, const char *format, ...)
{
    if (!why || why_size == 0)
        return;
    va_list args;
    va_start (args, format);
    vsnprintf (why, why_size, format, args);
    va_end (args);
}

//  Formats into a scratch buffer first: callers often pass the previous
//  error text itself as an argument.
static void
s_verror (kim_client_t *self, const char *format, va_list args)
{
    char text [sizeof self->error];
    vsnprintf (text, sizeof text, format, args);
    memcpy (self->error, text, sizeof text);
}

static void
s_set_error (kim_client_t *self, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

static void
s_set_error (kim_client_t *self, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_verror (self, format, args);
    va_end (args);
}

static void
s_copy (char *dest, size_t size, const char *src)
{
    snprintf (dest, size, "%s", src? src: "");
}

//  A CURVE key in Z85 is 40 characters from the Z85 alphabet.
static bool
s_z85_key_valid (const char *key)
{
    uint8_t binary [32];
    return key && strlen (key) == 40 && zmq_z85_decode (binary, key) != NULL;
}

static int
s_ms_until (int64_t deadline, int64_t now)
{
    if (deadline == INT64_MAX)
        return -1;
    int64_t left = deadline - now;
    return left <= 0? 0: left > INT_MAX? INT_MAX: (int) left;
}

static int64_t
s_deadline (int timeout_ms)
{
    return timeout_ms < 0? INT64_MAX: zclock_mono () + timeout_ms;
}


//  --------------------------------------------------------------------------
//  Certificates

//  Reads a ZPL file; when must_be_private, refuses one that group or others
//  may access (a secret key anyone on the host can read is no secret).
static zconfig_t *
s_load_zpl (const char *path, bool must_be_private, char *why, size_t why_size)
{
    if (!path || !*path) {
        s_why (why, why_size, "no certificate file given");
        return NULL;
    }
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        s_why (why, why_size, "cannot open %s: %s", path, strerror (errno));
        return NULL;
    }
    struct stat st;
    if (fstat (fd, &st) == -1) {
        s_why (why, why_size, "cannot stat %s: %s", path, strerror (errno));
        close (fd);
        return NULL;
    }
    if (!S_ISREG (st.st_mode)) {
        s_why (why, why_size, "%s is not a regular file", path);
        close (fd);
        return NULL;
    }
    if (must_be_private && (st.st_mode & (S_IRWXG | S_IRWXO))) {
        s_why (why, why_size, "%s holds a secret key but is accessible by group or others "
               "(mode %04o): run chmod 600 %s", path, (unsigned) (st.st_mode & 07777), path);
        close (fd);
        return NULL;
    }
    if (st.st_size > S_CERT_MAX) {
        s_why (why, why_size, "%s is too large (%lld bytes) to be a certificate",
               path, (long long) st.st_size);
        close (fd);
        return NULL;
    }
    size_t capacity = (size_t) st.st_size + 1;
    char *text = (char *) malloc (capacity);
    if (!text) {
        s_why (why, why_size, "out of memory reading %s", path);
        close (fd);
        return NULL;
    }
    size_t size = 0;
    while (size < capacity - 1) {
        ssize_t got = read (fd, text + size, capacity - 1 - size);
        if (got == -1 && errno == EINTR)
            continue;
        if (got == -1) {
            s_why (why, why_size, "cannot read %s: %s", path, strerror (errno));
            sodium_memzero (text, capacity);
            free (text);
            close (fd);
            return NULL;
        }
        if (got == 0)
            break;
        size += (size_t) got;
    }
    close (fd);
    text [size] = 0;
    zconfig_t *root = size > 0? zconfig_str_load (text): NULL;
    sodium_memzero (text, capacity);
    free (text);
    if (!root)
        s_why (why, why_size, "%s is not a certificate (empty or not ZPL)", path);
    return root;
}

static bool
s_ends_with (const char *text, const char *suffix)
{
    size_t text_len = strlen (text);
    size_t suffix_len = strlen (suffix);
    return text_len >= suffix_len && streq (text + text_len - suffix_len, suffix);
}

int
kim_client_load_cert_explain (const char *path, char public_key [41], char secret_key [41],
                              char *why, size_t why_size)
{
    s_why (why, why_size, "%s", "");
    if (!path || !public_key || !secret_key) {
        s_why (why, why_size, "no certificate file given");
        return -KIM_E_KEY;
    }
    //  Like zcert_load: given the public file NAME.cert, use NAME.cert_secret
    //  beside it, which holds both keys.
    if (!s_ends_with (path, "_secret")) {
        char secret_path [PATH_MAX];
        int len = snprintf (secret_path, sizeof secret_path, "%s_secret", path);
        if (len > 0 && (size_t) len < sizeof secret_path && access (secret_path, F_OK) == 0)
            return kim_client_load_cert_explain (secret_path, public_key, secret_key,
                                                 why, why_size);
    }
    if (sodium_init () < 0) {
        s_why (why, why_size, "libsodium failed to initialise");
        return -KIM_E_KEY;
    }
    zconfig_t *root = s_load_zpl (path, true, why, why_size);
    if (!root)
        return -KIM_E_KEY;

    int rc = -KIM_E_KEY;
    const char *public_text = zconfig_get (root, "/curve/public-key", NULL);
    const char *secret_text = zconfig_get (root, "/curve/secret-key", NULL);
    uint8_t public_bin [32], secret_bin [32], derived [32];
    if (!secret_text || !*secret_text)
        s_why (why, why_size, "%s has no curve/secret-key: pass the .cert_secret file "
               "written by `kim keygen`", path);
    else
    if (!s_z85_key_valid (public_text))
        s_why (why, why_size, "%s: curve/public-key is missing or not a 40-character Z85 key",
               path);
    else
    if (!s_z85_key_valid (secret_text))
        s_why (why, why_size, "%s: curve/secret-key is not a 40-character Z85 key", path);
    else {
        zmq_z85_decode (public_bin, public_text);
        zmq_z85_decode (secret_bin, secret_text);
        crypto_scalarmult_base (derived, secret_bin);
        if (sodium_memcmp (derived, public_bin, sizeof derived) != 0)
            s_why (why, why_size, "%s: curve/public-key does not belong to its secret-key",
                   path);
        else {
            memcpy (public_key, public_text, 41);
            memcpy (secret_key, secret_text, 41);
            rc = 0;
        }
    }
    sodium_memzero (secret_bin, sizeof secret_bin);
    sodium_memzero (derived, sizeof derived);
    //  zconfig keeps the secret text in its tree; wipe it before freeing
    if (secret_text)
        sodium_memzero ((char *) secret_text, strlen (secret_text));
    zconfig_destroy (&root);
    return rc;
}

int
kim_client_load_cert (const char *path, char public_key [41], char secret_key [41])
{
    char why [PATH_MAX + 200];
    int rc = kim_client_load_cert_explain (path, public_key, secret_key, why, sizeof why);
    if (rc)
        zsys_error ("kim_client: %s", why);
    return rc;
}

int
kim_client_load_public_key_explain (const char *path, char public_key [41],
                                    char *why, size_t why_size)
{
    s_why (why, why_size, "%s", "");
    if (!path || !public_key) {
        s_why (why, why_size, "no certificate file given");
        return -KIM_E_KEY;
    }
    zconfig_t *root = s_load_zpl (path, false, why, why_size);
    if (!root)
        return -KIM_E_KEY;
    int rc = -KIM_E_KEY;
    const char *public_text = zconfig_get (root, "/curve/public-key", NULL);
    if (!s_z85_key_valid (public_text))
        s_why (why, why_size, "%s: curve/public-key is missing or not a 40-character Z85 key",
               path);
    else {
        memcpy (public_key, public_text, 41);
        rc = 0;
    }
    //  A secret file works too; do not leave its secret in freed memory
    char *secret_text = zconfig_get (root, "/curve/secret-key", NULL);
    if (secret_text)
        sodium_memzero (secret_text, strlen (secret_text));
    zconfig_destroy (&root);
    return rc;
}

int
kim_client_load_public_key (const char *path, char public_key [41])
{
    char why [PATH_MAX + 200];
    int rc = kim_client_load_public_key_explain (path, public_key, why, sizeof why);
    if (rc)
        zsys_error ("kim_client: %s", why);
    return rc;
}


//  --------------------------------------------------------------------------
//  Event queue

static s_node_t *
s_node_new (kim_client_t *self)
{
    s_node_t *node = self->free_nodes;
    if (node) {
        self->free_nodes = node->next;
        self->free_count--;
    }
    else {
        node = (s_node_t *) calloc (1, sizeof (s_node_t));
        if (!node) {
            //  An event we cannot queue would be lost silently; stop instead.
            self->fatal = KIM_E_NOMEM;
            self->state = S_FAILED;
            s_set_error (self, "out of memory queueing an event");
            return NULL;
        }
        zmq_msg_init (&node->payload);
    }
    node->next = NULL;
    node->msg_id [0] = 0;
    node->seq = 0;
    node->dup = false;
    node->code = 0;
    node->text [0] = 0;
    node->path [0] = 0;
    return node;
}

static void
s_node_free (s_node_t *node)
{
    zmq_msg_close (&node->payload);
    free (node->msg);
    free (node);
}

static void
s_node_recycle (kim_client_t *self, s_node_t *node)
{
    //  Release the payload now; a big one should not wait in the free list
    zmq_msg_close (&node->payload);
    zmq_msg_init (&node->payload);
    if (self->free_count < S_FREE_NODES_MAX) {
        node->next = self->free_nodes;
        self->free_nodes = node;
        self->free_count++;
    }
    else
        s_node_free (node);
}

static void
s_queue_push (kim_client_t *self, s_node_t *node)
{
    node->next = NULL;
    if (self->queue_tail)
        self->queue_tail->next = node;
    else
        self->queue_head = node;
    self->queue_tail = node;
}

//  The payload of the last event handed out lives until the next call.
static void
s_release_lent (kim_client_t *self)
{
    if (self->lent) {
        s_node_recycle (self, self->lent);
        self->lent = NULL;
    }
}


//  --------------------------------------------------------------------------
//  Socket and sending

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
        s_set_error (self, "cannot create a ZeroMQ socket: %s", zmq_strerror (zmq_errno ()));
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
        s_set_error (self, "cannot connect to '%s': %s", self->endpoint,
                     zmq_strerror (zmq_errno ()));
        s_dealer_destroy (self, 0);
        return -KIM_E_ARGS;
    }
    return 0;
}

static int
s_send_frames (kim_client_t *self, const void *frame, size_t frame_size,
               const void *payload, size_t payload_size, bool with_payload)
{
    if (!self->handle)
        return -KIM_E_CLOSED;
    int flags = ZMQ_DONTWAIT | (with_payload? ZMQ_SNDMORE: 0);
    if (zmq_send (self->handle, frame, frame_size, flags) == -1
    || (with_payload && zmq_send (self->handle, payload, payload_size, ZMQ_DONTWAIT) == -1)) {
        s_set_error (self, "cannot send to the broker: %s", zmq_strerror (zmq_errno ()));
        return -KIM_E_CLOSED;
    }
    self->last_sent = zclock_mono ();
    return 0;
}

//  Encodes self->tx into the scratch buffer and sends it as one frame.
static int
s_send_tx (kim_client_t *self)
{
    kim_buf_reset (&self->buf);
    int rc = kim_cmd_encode (&self->tx, &self->buf);
    if (rc) {
        s_set_error (self, "cannot encode %s: %s", kim_cmd_name (self->tx.id), kim_strerror (rc));
        return rc;
    }
    return s_send_frames (self, self->buf.data, self->buf.size, NULL, 0, false);
}

static void
s_send_simple (kim_client_t *self, kim_cmd_id_t id)
{
    kim_cmd_init (&self->tx, id);
    if (s_send_tx (self) == -KIM_E_CLOSED)
        s_session_lost (self, KIM_E_CLOSED, "%s", self->error);
}

static void
s_send_request (kim_client_t *self)
{
    self->tx = *self->request;
    if (s_send_tx (self) == -KIM_E_CLOSED)
        s_session_lost (self, KIM_E_CLOSED, "%s", self->error);
}

static void
s_send_acks (kim_client_t *self)
{
    if (self->state != S_ACTIVE || self->ack_count == 0)
        return;
    //  Only the ACK fields matter for an ACK; skip clearing the big struct
    self->tx.id = KIM_CMD_ACK;
    self->tx.ack_count = self->ack_count;
    memcpy (self->tx.acks, self->acks, self->ack_count * sizeof self->acks [0]);
    int rc = s_send_tx (self);
    if (rc == 0)
        self->ack_count = 0;
    else
    if (rc == -KIM_E_CLOSED)
        s_session_lost (self, KIM_E_CLOSED, "%s", self->error);
    //  An encode failure would repeat forever; drop the batch but say so
    else {
        zsys_warning ("kim_client: dropped %zu acks: %s", self->ack_count, self->error);
        self->ack_count = 0;
    }
}

//  Sends every pending entry not yet sent in this session, in order.
static void
s_send_unsent (kim_client_t *self)
{
    while (self->unsent && self->state == S_ACTIVE) {
        s_entry_t *entry = self->unsent;
        if (s_send_frames (self, entry->data, entry->frame_size,
                           entry->data + entry->frame_size, entry->payload_size,
                           entry->payload_size > 0)) {
            s_session_lost (self, KIM_E_CLOSED, "%s", self->error);
            return;
        }
        self->unsent = entry->next;
    }
}


//  --------------------------------------------------------------------------
//  Session state machine

static void
s_session_lost (kim_client_t *self, int code, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_verror (self, format, args);
    va_end (args);
    self->last_code = code;

    int64_t now = zclock_mono ();
    //  A session that lived a while was a success: retry soon. Sessions that
    //  die young (a broker that keeps refusing us, two clients replacing each
    //  other) back off to S_BACKOFF_MAX_MS so we never hammer the broker.
    if (self->state == S_ACTIVE && now - self->session_started >= S_STABLE_SESSION_MS)
        self->backoff_ms = S_BACKOFF_MIN_MS;
    self->next_attempt = now + self->backoff_ms;
    self->backoff_ms = self->backoff_ms * 2 > S_BACKOFF_MAX_MS? S_BACKOFF_MAX_MS:
                       self->backoff_ms * 2;

    s_dealer_destroy (self, 0);
    self->state = S_DISCONNECTED;
    self->unsent = self->head;      //  everything pending goes again
    if (self->verbose)
        zsys_debug ("kim_client: session lost (%s); reconnecting in %d ms",
                    self->error, (int) (self->next_attempt - now));
}

static void
s_fail (kim_client_t *self, int code, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

static void
s_fail (kim_client_t *self, int code, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_verror (self, format, args);
    va_end (args);
    self->fatal = code;
    self->last_code = code;
    self->state = S_FAILED;
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
        s_session_lost (self, -rc, "%s", self->error);
        return;
    }
    kim_cmd_init (&self->tx, KIM_CMD_HELLO);
    self->tx.version_count = 1;
    self->tx.versions [0] = KIM_PROTOCOL_VERSION;
    s_copy (self->tx.agent, sizeof self->tx.agent, self->agent);
    self->tx.window = self->window;
    //  Queued by ZeroMQ until the CURVE handshake completes
    if (s_send_tx (self)) {
        s_session_lost (self, KIM_E_CLOSED, "%s", self->error);
        return;
    }
    int64_t now = zclock_mono ();
    self->state = S_HELLO_SENT;
    self->hello_deadline = now + self->timeout_ms;
}

static void
s_on_welcome (kim_client_t *self, const kim_cmd_t *welcome)
{
    int64_t now = zclock_mono ();
    s_copy (self->org, sizeof self->org, welcome->org);
    s_copy (self->broker, sizeof self->broker, welcome->broker);
    self->heartbeat_ms = welcome->heartbeat_ms? welcome->heartbeat_ms: S_DEFAULT_HEARTBEAT_MS;
    self->max_payload = welcome->max_payload? welcome->max_payload: KIM_PAYLOAD_MAX;
    self->session_window = welcome->window;
    self->state = S_ACTIVE;
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
    s_send_unsent (self);
    if (self->state == S_ACTIVE && self->status_waiting)
        s_send_request (self);
    s_send_acks (self);
}

//  A RECEIPT or REJECT answered an entry: hand the answer to whoever waits.
static void
s_resolve (kim_client_t *self, s_entry_t *entry, const kim_cmd_t *answer)
{
    zhashx_delete (self->pending, entry->msg_id);
    if (entry->prev)
        entry->prev->next = entry->next;
    else
        self->head = entry->next;
    if (entry->next)
        entry->next->prev = entry->prev;
    else
        self->tail = entry->prev;
    if (self->unsent == entry)
        self->unsent = entry->next;
    self->pending_count--;

    bool receipt = answer->id == KIM_CMD_RECEIPT;
    int code = receipt? 0: answer->code > 0? answer->code: KIM_E_INTERNAL;
    if (self->sync_entry == entry) {
        self->sync_entry = NULL;
        self->sync_done = true;
        self->sync_code = code;
        self->sync_seq = answer->seq;
        self->sync_dup = answer->dup;
        if (!receipt)
            s_set_error (self, "%s (%d) %s%s%s", kim_errname (code), code,
                         answer->text [0]? answer->text: kim_strerror (code),
                         answer->path [0]? " at ": "", answer->path);
    }
    else {
        s_node_t *node = s_node_new (self);
        if (node) {
            node->type = receipt? KIM_EVENT_RECEIPT: KIM_EVENT_REJECT;
            memcpy (node->msg_id, entry->msg_id, sizeof node->msg_id);
            node->seq = answer->seq;
            node->dup = answer->dup;
            node->code = code;
            if (!receipt) {
                s_copy (node->text, sizeof node->text, answer->text);
                s_copy (node->path, sizeof node->path, answer->path);
            }
            s_queue_push (self, node);
        }
    }
    free (entry);
}

static void
s_on_reject (kim_client_t *self, const kim_cmd_t *reject)
{
    int code = reject->code;
    const char *text = reject->text [0]? reject->text: kim_strerror (code);
    if (code == KIM_E_NO_SESSION || code == KIM_E_SESSION_EXPIRED || code == KIM_E_REPLACED) {
        s_session_lost (self, code, "broker ended the session: %s (%d) %s",
                        kim_errname (code), code, text);
        return;
    }
    if (!reject->msg_id [0]
    && (code == KIM_E_VERSION || code == KIM_E_UNKNOWN_ORG || code == KIM_E_REVOKED)) {
        s_fail (self, code, "broker refused us: %s (%d) %s", kim_errname (code), code, text);
        return;
    }
    if (self->state == S_HELLO_SENT) {
        //  Anything else refusing our HELLO (BUSY, RATE_LIMITED...) may pass
        s_session_lost (self, code > 0? code: KIM_E_INTERNAL,
                        "broker refused HELLO: %s (%d) %s", kim_errname (code), code, text);
        return;
    }
    if (reject->msg_id [0]) {
        s_entry_t *entry = (s_entry_t *) zhashx_lookup (self->pending, reject->msg_id);
        if (entry)
            s_resolve (self, entry, reject);
        //  else: an answer to a message already answered; nothing waits for it
        return;
    }
    if (self->status_waiting && !self->status_done && code != KIM_E_BAD_ACK) {
        self->status_done = true;
        self->status_code = code > 0? code: KIM_E_INTERNAL;
        s_set_error (self, "%s (%d) %s", kim_errname (code), code, text);
        return;
    }
    s_node_t *node = s_node_new (self);
    if (node) {
        node->type = KIM_EVENT_REJECT;
        node->code = code;
        s_copy (node->text, sizeof node->text, reject->text);
        s_copy (node->path, sizeof node->path, reject->path);
        s_queue_push (self, node);
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
        s_skip_rest (self, more);
        return 1;
    }
    if (self->rx.id == KIM_CMD_DELIVER) {
        s_node_t *node = s_node_new (self);
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
            s_node_free (node);
            s_fail (self, KIM_E_NOMEM, "out of memory queueing a delivery");
            return 1;
        }
        node->type = KIM_EVENT_DELIVER;
        node->seq = self->rx.seq;
        *node->msg = self->rx.msg;
        s_queue_push (self, node);
        return 1;
    }
    s_skip_rest (self, more);

    switch (self->rx.id) {
        case KIM_CMD_WELCOME:
            if (self->state == S_HELLO_SENT)
                s_on_welcome (self, &self->rx);
            break;
        case KIM_CMD_RECEIPT: {
            s_entry_t *entry = (s_entry_t *) zhashx_lookup (self->pending, self->rx.msg_id);
            if (entry)
                s_resolve (self, entry, &self->rx);
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
            if (self->status_waiting && !self->status_done && self->rx.id != KIM_CMD_RECORD) {
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
            else
            if (self->verbose)
                zsys_debug ("kim_client: ignored %s from the broker",
                            kim_cmd_name (self->rx.id));
            break;
    }
    return 1;
}

//  Fires what is due: reconnect, HELLO timeout, PING, silence.
static void
s_timers (kim_client_t *self)
{
    int64_t now = zclock_mono ();
    if (self->state == S_DISCONNECTED && now >= self->next_attempt)
        s_connect (self);
    else
    if (self->state == S_HELLO_SENT && now >= self->hello_deadline)
        s_session_lost (self, KIM_E_TIMEOUT,
                        "no WELCOME within %d ms from %s: broker unreachable "
                        "or our key is not registered", self->timeout_ms, self->endpoint);
    else
    if (self->state == S_ACTIVE) {
        int64_t heartbeat = self->heartbeat_ms;
        int64_t quiet = self->last_heard > self->last_ping? self->last_heard: self->last_ping;
        if (now - self->last_heard >= 3 * heartbeat)
            s_session_lost (self, KIM_E_SESSION_EXPIRED,
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
    if (self->state == S_DISCONNECTED)
        return self->next_attempt;
    if (self->state == S_HELLO_SENT)
        return self->hello_deadline;
    if (self->state == S_ACTIVE) {
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
static int
s_pump (kim_client_t *self, int timeout_ms)
{
    s_state_t state = self->state;
    s_timers (self);
    if (self->fatal)
        return -self->fatal;
    //  One transition per turn, so a caller waiting for a state sees it
    if (self->state != state)
        return 0;
    int drained = s_drain (self);
    if (drained == 0)
        s_send_acks (self);
    if (drained > 0 || timeout_ms == 0) {
        s_timers (self);
        return self->fatal? -self->fatal: 0;
    }

    int64_t now = zclock_mono ();
    int wait = s_ms_until (s_next_timer (self), now);
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
        s_set_error (self, "interrupted");
        return -KIM_E_CLOSED;
    }
    s_drain (self);
    s_timers (self);
    return self->fatal? -self->fatal: 0;
}

//  Pumps until done(self) or the deadline. Returns 0, -KIM_E_TIMEOUT, or
//  the pump's error.
static int
s_wait_for (kim_client_t *self, int timeout_ms, bool (*done) (kim_client_t *self))
{
    int64_t deadline = s_deadline (timeout_ms);
    bool pumped = false;
    while (!done (self)) {
        if (self->fatal)
            return -self->fatal;
        int wait = s_ms_until (deadline, zclock_mono ());
        if (wait == 0 && pumped)
            return -KIM_E_TIMEOUT;
        int rc = s_pump (self, wait);
        if (rc)
            return rc;
        pumped = true;
    }
    return 0;
}

static bool
s_is_settled (kim_client_t *self)
{
    return self->state != S_HELLO_SENT;
}

static bool
s_has_event (kim_client_t *self)
{
    return self->queue_head != NULL;
}

static bool
s_sync_done (kim_client_t *self)
{
    return self->sync_done;
}

static bool
s_flushed (kim_client_t *self)
{
    return self->pending_count == 0 && self->ack_count == 0;
}

static bool
s_status_done (kim_client_t *self)
{
    return self->status_done;
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
    s_why (why, why_size, "%s", "");
    if (!config || !config->endpoint || !*config->endpoint) {
        *err = -KIM_E_ARGS;
        s_why (why, why_size, "no broker endpoint given");
        return NULL;
    }
    if (!s_z85_key_valid (config->broker_key)) {
        *err = -KIM_E_KEY;
        s_why (why, why_size, "the broker key is not a 40-character Z85 CURVE key");
        return NULL;
    }
    if (!s_z85_key_valid (config->public_key) || !s_z85_key_valid (config->secret_key)) {
        *err = -KIM_E_KEY;
        s_why (why, why_size, "our key pair is not two 40-character Z85 CURVE keys");
        return NULL;
    }
    if (config->agent && strlen (config->agent) > KIM_AGENT_MAX) {
        *err = -KIM_E_ARGS;
        s_why (why, why_size, "agent name longer than %d bytes", KIM_AGENT_MAX);
        return NULL;
    }
    if (sodium_init () < 0) {
        *err = -KIM_E_NOMEM;
        s_why (why, why_size, "libsodium failed to initialise");
        return NULL;
    }
    kim_client_t *self = (kim_client_t *) calloc (1, sizeof (kim_client_t));
    if (!self || !(self->endpoint = strdup (config->endpoint))
    || !(self->pending = zhashx_new ())) {
        if (self)
            free (self->endpoint);
        free (self);
        *err = -KIM_E_NOMEM;
        s_why (why, why_size, "out of memory");
        return NULL;
    }
    //  Entries own their msg_id; the hash borrows it
    zhashx_set_key_duplicator (self->pending, NULL);
    zhashx_set_key_destructor (self->pending, NULL);
    memcpy (self->broker_key, config->broker_key, 41);
    memcpy (self->public_key, config->public_key, 41);
    memcpy (self->secret_key, config->secret_key, 41);
    s_copy (self->agent, sizeof self->agent, config->agent? config->agent: "libkim");
    self->window = config->window;
    self->send_window = config->send_window? config->send_window: S_DEFAULT_SEND_WINDOW;
    self->timeout_ms = config->timeout_ms > 0? config->timeout_ms: S_DEFAULT_TIMEOUT_MS;
    self->backoff_ms = S_BACKOFF_MIN_MS;
    const char *debug = getenv ("KIM_DEBUG");
    self->verbose = debug && *debug && !streq (debug, "0");
    kim_buf_init (&self->buf);
    kim_buf_init (&self->send_buf);
    zmq_msg_init (&self->frame);
    int seal_rc = kim_seal_init (&self->seal, config, why, why_size);
    if (seal_rc) {
        *err = seal_rc;
        self->state = S_FAILED;
        kim_client_destroy (&self);
        return NULL;
    }

    s_connect (self);
    int rc = s_wait_for (self, -1, s_is_settled);
    if (rc == 0 && self->state == S_ACTIVE)
        return self;

    *err = rc? rc: -(self->last_code? self->last_code: KIM_E_TIMEOUT);
    s_why (why, why_size, "%s", self->error);
    self->state = S_FAILED;         //  no BYE: there is no session
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
    if (self->state == S_ACTIVE) {
        s_send_acks (self);
        if (self->state == S_ACTIVE)
            s_send_simple (self, KIM_CMD_BYE);
    }
    s_dealer_destroy (self, self->state == S_ACTIVE? S_BYE_LINGER_MS: 0);

    s_entry_t *entry = self->head;
    while (entry) {
        s_entry_t *next = entry->next;
        free (entry);
        entry = next;
    }
    zhashx_destroy (&self->pending);
    if (self->lent)
        s_node_free (self->lent);
    s_node_t *node = self->queue_head;
    while (node) {
        s_node_t *next = node->next;
        s_node_free (node);
        node = next;
    }
    node = self->free_nodes;
    while (node) {
        s_node_t *next = node->next;
        s_node_free (node);
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

//  Makes sure the sealing key of `org` is cached, asking the directory.
static int
s_seal_lookup (kim_client_t *self, const char *org)
{
    if (kim_seal_key (&self->seal, org))
        return 0;
    const kim_dir_entry_t *entries;
    size_t count;
    int rc = kim_client_directory (self, org, &entries, &count, self->timeout_ms);
    if (rc == 0 && !kim_seal_key (&self->seal, org)) {
        s_set_error (self, "%s is not in the broker's directory: no key to seal the payload "
                     "to (unregistered or revoked organisation)", org);
        return -KIM_E_UNKNOWN_RECIPIENT;
    }
    if (rc) {
        char why [sizeof self->error];
        kim_str_copy (why, sizeof why, self->error);
        s_set_error (self, "cannot get the sealing key of %s from the directory: %s", org, why);
    }
    return rc;
}

int
kim_client_send_async (kim_client_t *self, kim_msg_t *msg, const void *payload, size_t size)
{
    if (!self || !msg || (size > 0 && !payload))
        return -KIM_E_ARGS;
    s_release_lent (self);
    if (self->fatal)
        return -self->fatal;
    uint32_t limit = self->max_payload? self->max_payload: KIM_PAYLOAD_MAX;
    if (size > limit) {
        s_set_error (self, "payload of %zu bytes exceeds the broker's limit of %u bytes",
                     size, limit);
        return -KIM_E_TOO_LARGE;
    }
    if (!msg->msg_id [0]) {
        uint8_t random [16];
        randombytes_buf (random, sizeof random);
        sodium_bin2hex (msg->msg_id, sizeof msg->msg_id, random, sizeof random);
    }
    if (msg->schema == 0)
        msg->schema = KIM_SCHEMA_VERSION;
    if (msg->created_at == 0)
        msg->created_at = (uint64_t) zclock_time ();

    if (zhashx_lookup (self->pending, msg->msg_id)) {
        s_set_error (self, "msg_id '%s' is already waiting for its receipt", msg->msg_id);
        return -KIM_E_ARGS;
    }
    //  Seal to the organisation the payload is for; the broker sees
    //  ciphertext only. From here on, payload/size are what goes on the wire.
    const char *target = kim_seal_target (msg);
    if (!self->seal.plaintext && size > 0 && target [0]) {
        int rc = s_seal_lookup (self, target);
        if (rc)
            return rc;
        rc = kim_seal_payload (&self->seal, kim_seal_key (&self->seal, target), payload, size);
        if (rc) {
            s_set_error (self, "cannot seal the payload to %s: %s", target, kim_strerror (rc));
            return rc;
        }
        payload = self->seal.sealed.data;
        size = self->seal.sealed.size;
        if (size > limit) {
            s_set_error (self, "sealed payload of %zu bytes exceeds the broker's limit of %u "
                         "bytes", size, limit);
            return -KIM_E_TOO_LARGE;
        }
    }
    if (self->seal.signing) {
        int rc = kim_seal_sign (&self->seal, msg, self->org, payload, size);
        if (rc) {
            s_set_error (self, "cannot sign %s: %s", msg->msg_id, kim_strerror (rc));
            return rc;
        }
    }
    //  Encode once, now: the encoder applies the broker's own header rules,
    //  so we refuse here what the broker would refuse anyway, with the same
    //  code. Resends reuse these bytes.
    self->tx.id = KIM_CMD_SEND;         //  only SEND's fields matter: no full init
    self->tx.msg = *msg;
    kim_buf_reset (&self->send_buf);
    int rc = kim_cmd_encode (&self->tx, &self->send_buf);
    if (rc) {
        kim_decode_error_t derr = { 0, "" };
        bool located = kim_msg_validate (msg, &derr) == rc && derr.path [0];
        s_set_error (self, "%s (%d) %s%s%s", kim_errname (rc), -rc, kim_strerror (rc),
                     located? " at ": "", located? derr.path: "");
        return rc;
    }

    //  Wait for room. Give up when the broker has answered nothing for
    //  timeout_ms: the message is then not queued and stays the caller's.
    int64_t stall_deadline = zclock_mono () + self->timeout_ms;
    while (self->pending_count >= self->send_window) {
        size_t before = self->pending_count;
        int wait = s_ms_until (stall_deadline, zclock_mono ());
        if (wait == 0) {
            s_set_error (self, "send window full (%zu unreceipted) and no answer from the "
                         "broker for %d ms (%s)", self->pending_count, self->timeout_ms,
                         self->state == S_ACTIVE? "session open": self->error);
            return -KIM_E_TIMEOUT;
        }
        rc = s_pump (self, wait);
        if (rc)
            return rc;
        if (self->pending_count < before)
            stall_deadline = zclock_mono () + self->timeout_ms;
    }

    kim_buf_t *frame = &self->send_buf;
    s_entry_t *entry = (s_entry_t *) malloc (sizeof (s_entry_t) + frame->size + size);
    if (!entry) {
        s_set_error (self, "out of memory queueing a message");
        return -KIM_E_NOMEM;
    }
    memcpy (entry->msg_id, msg->msg_id, sizeof entry->msg_id);
    entry->frame_size = frame->size;
    entry->payload_size = size;
    memcpy (entry->data, frame->data, frame->size);
    if (size)
        memcpy (entry->data + frame->size, payload, size);
    if (zhashx_insert (self->pending, entry->msg_id, entry)) {
        free (entry);
        s_set_error (self, "msg_id '%s' is already waiting for its receipt", msg->msg_id);
        return -KIM_E_ARGS;
    }
    entry->next = NULL;
    entry->prev = self->tail;
    if (self->tail)
        self->tail->next = entry;
    else
        self->head = entry;
    self->tail = entry;
    self->pending_count++;
    if (!self->unsent)
        self->unsent = entry;
    if (self->state == S_ACTIVE)
        s_send_unsent (self);
    return 0;
}

int
kim_client_send (kim_client_t *self, kim_msg_t *msg, const void *payload, size_t size,
                 uint64_t *seq, bool *dup, int timeout_ms)
{
    int rc = kim_client_send_async (self, msg, payload, size);
    if (rc)
        return rc;
    self->sync_entry = self->tail;
    self->sync_done = false;
    rc = s_wait_for (self, timeout_ms, s_sync_done);
    if (rc) {
        //  Still pending: its answer will come out of kim_client_recv
        self->sync_entry = NULL;
        if (rc == -KIM_E_TIMEOUT)
            s_set_error (self, "no receipt for %s within %d ms", msg->msg_id, timeout_ms);
        return rc;
    }
    if (self->sync_code)
        return -self->sync_code;
    if (seq)
        *seq = self->sync_seq;
    if (dup)
        *dup = self->sync_dup;
    return 0;
}

int
kim_client_recv (kim_client_t *self, kim_event_t *event, int timeout_ms)
{
    if (!self || !event)
        return -KIM_E_ARGS;
    s_release_lent (self);
    //  Acks wait while events are queued (one ACK for a batch) but not so
    //  long that the broker's delivery window runs dry.
    uint32_t threshold = self->session_window / 2? self->session_window / 2: 1;
    if (self->ack_count >= threshold)
        s_send_acks (self);
    int rc = s_wait_for (self, timeout_ms, s_has_event);
    if (rc) {
        if (rc == -KIM_E_TIMEOUT)
            s_set_error (self, "no event within %d ms", timeout_ms);
        return rc;
    }
    s_node_t *node = self->queue_head;
    self->queue_head = node->next;
    if (!self->queue_head)
        self->queue_tail = NULL;
    self->lent = node;

    event->type = node->type;
    memcpy (event->msg_id, node->msg_id, sizeof event->msg_id);
    event->seq = node->seq;
    event->dup = node->dup;
    event->code = node->code;
    memcpy (event->text, node->text, sizeof event->text);
    memcpy (event->path, node->path, sizeof event->path);
    event->sealed_error = false;
    if (node->type == KIM_EVENT_DELIVER) {
        event->msg = *node->msg;
        event->payload = (const uint8_t *) zmq_msg_data (&node->payload);
        event->payload_size = zmq_msg_size (&node->payload);
        //  Payloads from organisations are sealed to us; the broker's own
        //  messages (reports made from metadata) are not.
        if (!self->seal.plaintext && event->payload_size > 0
        &&  !streq (event->msg.sender, self->broker)) {
            if (kim_seal_open (&self->seal, event->payload, event->payload_size) == 0) {
                event->payload = self->seal.opened.data;
                event->payload_size = self->seal.opened.size;
            }
            else {
                event->sealed_error = true;
                zsys_warning ("kim_client: the payload of seq %" PRIu64 " (%s from %s, %zu "
                              "bytes) does not open with our key: delivered as received, "
                              "flagged sealed_error", event->seq, event->msg.msg_id,
                              event->msg.sender, event->payload_size);
            }
        }
    }
    else {
        kim_msg_init (&event->msg);
        event->payload = NULL;
        event->payload_size = 0;
    }
    return 0;
}

int
kim_client_ack (kim_client_t *self, uint64_t seq)
{
    if (!self || seq == 0)
        return -KIM_E_ARGS;
    if (self->fatal)
        return -self->fatal;
    self->acks [self->ack_count++] = seq;
    if (self->ack_count == KIM_ACKS_MAX) {
        s_send_acks (self);
        //  Not connected: keep the newest, the broker redelivers the rest
        if (self->ack_count == KIM_ACKS_MAX) {
            memmove (self->acks, self->acks + 1, (KIM_ACKS_MAX - 1) * sizeof self->acks [0]);
            self->ack_count--;
        }
    }
    return 0;
}

int
kim_client_flush (kim_client_t *self, int timeout_ms)
{
    if (!self)
        return -KIM_E_ARGS;
    s_release_lent (self);
    s_send_acks (self);
    int rc = s_wait_for (self, timeout_ms, s_flushed);
    if (rc == -KIM_E_TIMEOUT)
        s_set_error (self, "%zu sends still unreceipted after %d ms (%s)", self->pending_count,
                     timeout_ms, self->state == S_ACTIVE? "session open": self->error);
    return rc;
}

size_t
kim_client_pending (kim_client_t *self)
{
    return self? self->pending_count: 0;
}

int
kim_client_request (kim_client_t *self, const kim_cmd_t *request, kim_cmd_t *reply, int timeout_ms)
{
    if (!self || !request || !reply)
        return -KIM_E_ARGS;
    s_release_lent (self);
    if (self->fatal)
        return -self->fatal;
    if (!self->request)
        self->request = (kim_cmd_t *) malloc (sizeof (kim_cmd_t));
    if (!self->request)
        return -KIM_E_NOMEM;
    *self->request = *request;
    self->reply = reply;
    self->status_waiting = true;
    self->status_done = false;
    if (self->state == S_ACTIVE)
        s_send_request (self);
    int rc = s_wait_for (self, timeout_ms, s_status_done);
    self->status_waiting = false;
    self->reply = NULL;
    if (rc) {
        if (rc == -KIM_E_TIMEOUT)
            s_set_error (self, "no answer to %s within %d ms", kim_cmd_name (request->id),
                         timeout_ms);
        return rc;
    }
    return self->status_code? -self->status_code: 0;
}

int
kim_client_directory (kim_client_t *self, const char *org, const kim_dir_entry_t **entries,
                      size_t *count, int timeout_ms)
{
    if (!self || !entries || !count || (org && !kim_org_valid (org)))
        return -KIM_E_ARGS;
    kim_cmd_t *request = (kim_cmd_t *) malloc (2 * sizeof (kim_cmd_t));
    if (!request)
        return -KIM_E_NOMEM;
    kim_cmd_t *reply = request + 1;
    kim_cmd_init (request, KIM_CMD_DIRECTORY);
    if (org)
        s_copy (request->org, sizeof request->org, org);
    int rc = kim_client_request (self, request, reply, timeout_ms);
    if (rc == 0 && reply->id != KIM_CMD_DIRECTORY_REPLY) {
        s_set_error (self, "the broker answered DIRECTORY with %s", kim_cmd_name (reply->id));
        rc = -KIM_E_MALFORMED;
    }
    if (rc == 0) {
        *entries = self->seal.entries;
        *count = reply->dir_count;
        kim_seal_learn (&self->seal, self->seal.entries, reply->dir_count);
    }
    free (request);
    return rc;
}

int
kim_client_load_sign_key (const char *path, char public_key [41], char secret_key [41])
{
    char why [PATH_MAX + 200];
    int rc = -KIM_E_KEY;
    zconfig_t *root = public_key && secret_key? s_load_zpl (path, true, why, sizeof why): NULL;
    if (!root && public_key && secret_key)
        zsys_error ("kim_client: %s", why);
    if (!root)
        return rc;
    char *secret_text = zconfig_get (root, "/sign/secret-key", NULL);
    const char *public_text = zconfig_get (root, "/sign/public-key", NULL);
    uint8_t seed [crypto_sign_SEEDBYTES], pk [crypto_sign_PUBLICKEYBYTES],
            sk [crypto_sign_SECRETKEYBYTES], stated [crypto_sign_PUBLICKEYBYTES];
    if (!s_z85_key_valid (secret_text) || !s_z85_key_valid (public_text))
        zsys_error ("kim_client: %s: sign/secret-key and sign/public-key must be 40-character "
                    "Z85 keys (see `kim keygen --sign`)", path);
    else {
        zmq_z85_decode (seed, secret_text);
        zmq_z85_decode (stated, public_text);
        crypto_sign_seed_keypair (pk, sk, seed);
        if (sodium_memcmp (pk, stated, sizeof pk) != 0)
            zsys_error ("kim_client: %s: sign/public-key does not belong to sign/secret-key", path);
        else {
            memcpy (public_key, public_text, 41);
            memcpy (secret_key, secret_text, 41);
            rc = 0;
        }
    }
    sodium_memzero (seed, sizeof seed);
    sodium_memzero (sk, sizeof sk);
    if (secret_text)
        sodium_memzero (secret_text, strlen (secret_text));
    zconfig_destroy (&root);
    return rc;
}

int
kim_client_status (kim_client_t *self, kim_status_t *status, int timeout_ms)
{
    if (!self || !status)
        return -KIM_E_ARGS;
    kim_cmd_t *request = (kim_cmd_t *) malloc (2 * sizeof (kim_cmd_t));
    if (!request)
        return -KIM_E_NOMEM;
    kim_cmd_t *reply = request + 1;
    kim_cmd_init (request, KIM_CMD_STATUS);
    int rc = kim_client_request (self, request, reply, timeout_ms);
    if (rc == 0 && reply->id != KIM_CMD_STATUS_REPLY) {
        s_set_error (self, "the broker answered STATUS with %s", kim_cmd_name (reply->id));
        rc = -KIM_E_INTERNAL;
    }
    if (rc == 0)
        *status = reply->status;
    free (request);
    return rc;
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
