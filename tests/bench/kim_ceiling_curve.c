/*  kim_ceiling_curve.c — kim-ceiling-curve: the ZeroMQ forwarding ceiling of
    W1 with CurveZMQ on every socket.

    kim always runs with CURVE (a client's identity is its key), so the
    plain ZeroMQ ceiling (../shared/bench/zmqbench.c) mixes two costs when
    kim is compared with it: the broker's own work and the encryption. This
    tool measures the second alone: the same "no work at all" forwarder in
    the W1 shape, the same data path, with CURVE switched on.

        producers (DEALER) --> front ROUTER --+--> back ROUTER --> consumer (DEALER)
                 ^    confirm (8-byte index)  |         ack (8-byte index) |
                 +----------------------------+ <--------------------------+

    The forwarder is one thread with zmq_poll: each producer message is
    confirmed to its producer at once (the 8-byte index from its stamp) and
    forwarded to the consumer, who acks each one. Producers keep up to
    `window` messages unconfirmed. HWM 0 everywhere (ROUTER never drops),
    tcp://127.0.0.1, one ZeroMQ I/O thread per process, as in the plain
    ceiling; there the I/O threads now also box and unbox every frame.

    Two processes, like kim's broker and kim-bench: the forwarder is a
    forked child (forked before any ZeroMQ context or thread exists). The
    parent makes the server keypair before the fork, so the child holds the
    secret and the clients only the public key; every client socket gets a
    keypair of its own. The child binds to free ports and reports them on a
    pipe; a second pipe is its lifeline: when the parent closes it (or
    dies), the child stops. Every wait is bounded by --limit.

    No ZAP handler: with none bound at inproc://zeromq.zap.01 and
    ZMQ_ZAP_ENFORCE_DOMAIN off (the default), libzmq's CURVE server accepts
    every client that completes the handshake (curve_server.cpp,
    process_initiate: zap_connect fails -> "sending_ready", the Stonehouse
    pattern). The handshake and the encryption cost the same either way,
    and a ZAP round trip happens once per connection, not per message.

    --batch N packs up to N messages into one frame, as kim's protocol
    version 2 does (PROTOCOL.md §5.1: SEND_BATCH, RECEIPT_BATCH,
    DELIVER_BATCH, ACK_RANGE): a producer sends up to N messages its window
    allows as one frame, the forwarder confirms the frame with one frame of
    their indexes and forwards it whole, and the consumer acks it with one
    16-byte frame (its first and last index). CURVE then boxes a frame, not
    a message: that is the ceiling to hold kim's version 2 against.

    --durable DIR makes the forwarder store every message as a broker with
    kim's guarantees must (kim_ceiling_store.c) and confirm and forward it
    only once its commit is durable, as kim lets out RECEIPTs and
    deliveries: the ceiling those guarantees leave before any of kim's own
    work. --rate N paces each producer at N messages a second, one a frame:
    with one producer, W2's shape. --prefill N first fills that store with N
    messages of 64 bytes, as kim-bench --prefill fills kim's: what the
    store's size costs those guarantees alone.

    Prints one JSON line: ack_rate (messages / first send -> last ack),
    confirm_rate (-> the last producer's last confirm), latency percentiles
    in µs (p50_us...: send -> consumer receive; c_p50_us...: send ->
    confirm), complete. Exit 0 when every message was confirmed and acked.
*/
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "kim_ceiling_store.h"

#define S_PRODUCERS_MAX     64
#define S_FRAME_MAX         65536   //  largest payload
#define S_BATCH_MAX         64      //  messages in one frame at most (KIM_BATCH_MAX)
#define S_HANDSHAKE_MS      5000    //  HELLO -> OK, CURVE handshake included
#define S_BATCH             1024    //  messages taken per socket per poll
#define S_KEY_TEXT          41      //  Z85 key and its terminating null
#define S_ACK_DEFER_MS      5       //  as kim's KIM_ACK_DEFER_MS
#define S_PREFILL_PAYLOAD   64      //  bytes a prefilled message, as kim-bench --prefill

//  What a producer puts at the start of every payload.
typedef struct {
    uint32_t producer;
    uint32_t spare;
    uint64_t index;             //  0-based within the producer; echoed as confirm and ack
    uint64_t sent_ns;           //  CLOCK_MONOTONIC
} stamp_t;

typedef struct {
    uint32_t producers;
    uint32_t messages;          //  per producer
    uint32_t window;            //  unconfirmed messages per producer
    uint32_t payload;           //  bytes, stamp included
    uint32_t limit_s;           //  the whole run's time limit
    uint32_t batch;             //  messages per frame at most
    uint32_t rate;              //  messages a second per producer (0: flat out)
    const char *durable;        //  the forwarder's store folder, or NULL
    uint32_t trees;             //  more trees the durable forwarder writes a message
    uint32_t prefill;           //  messages stored before the run
    bool random_keys;           //  the extra trees' keys fall anywhere
    bool journal;               //  the durable forwarder commits to a journal in front
} options_t;

typedef struct _run_t run_t;

typedef struct {
    run_t *run;
    uint32_t id;                //  0-based
    pthread_t thread;
    uint64_t *sent_ns;          //  per index
    uint64_t *clat;             //  confirm latencies (ns)
    size_t clat_count;
    uint64_t confirmed;
    uint64_t last_confirm_ns;
    char error [128];           //  empty: no error
} producer_t;

struct _run_t {
    const options_t *opt;
    char server_public [S_KEY_TEXT];
    char front [64];            //  endpoints the forwarder bound
    char back [64];
    void *ctx;
    uint64_t deadline_ns;       //  set before the barrier, read after it
    pthread_barrier_t barrier;  //  every producer handshaken before anyone sends
    atomic_bool abort;
    producer_t producer [S_PRODUCERS_MAX];
};

//  --------------------------------------------------------------------------
//  Small helpers

static uint64_t
s_now_ns (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static int
s_cmp_u64 (const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y? -1: x > y;
}

//  Prints ,"<prefix>p50_us":..,"<prefix>p99_us":..,"<prefix>max_us":.. of n
//  latencies in ns (sorts them in place).
static void
s_print_percentiles (const char *prefix, uint64_t *lat, size_t n)
{
    if (n == 0)
        return;
    qsort (lat, n, sizeof *lat, s_cmp_u64);
    printf (",\"%sp50_us\":%.1f,\"%sp99_us\":%.1f,\"%smax_us\":%.1f",
            prefix, lat [(size_t) ((double) n * 0.50)] / 1e3,
            prefix, lat [(size_t) ((double) n * 0.99)] / 1e3, prefix, lat [n - 1] / 1e3);
}

//  A socket as both ceilings make them: unbounded queues, no linger.
static void *
s_socket (void *ctx, int type)
{
    void *socket = zmq_socket (ctx, type);
    if (!socket)
        return NULL;
    int zero = 0;
    zmq_setsockopt (socket, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt (socket, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt (socket, ZMQ_LINGER, &zero, sizeof zero);
    return socket;
}

//  A CURVE client socket with a keypair of its own, connected to endpoint.
static void *
s_client_socket (run_t *run, const char *endpoint)
{
    char public_key [S_KEY_TEXT], secret_key [S_KEY_TEXT];
    if (zmq_curve_keypair (public_key, secret_key))
        return NULL;
    void *socket = s_socket (run->ctx, ZMQ_DEALER);
    if (socket
    && (zmq_setsockopt (socket, ZMQ_CURVE_SERVERKEY, run->server_public, S_KEY_TEXT - 1)
    ||  zmq_setsockopt (socket, ZMQ_CURVE_PUBLICKEY, public_key, S_KEY_TEXT - 1)
    ||  zmq_setsockopt (socket, ZMQ_CURVE_SECRETKEY, secret_key, S_KEY_TEXT - 1)
    ||  zmq_connect (socket, endpoint))) {
        zmq_close (socket);
        socket = NULL;
    }
    return socket;
}

//  Sends HELLO and waits for OK: after it the CURVE handshake is done and
//  the forwarder knows this peer, so no timed run starts with a handshake.
static bool
s_hello (void *socket)
{
    if (zmq_send (socket, "HELLO", 5, 0) != 5)
        return false;
    zmq_pollitem_t item = { socket, 0, ZMQ_POLLIN, 0 };
    char reply [8];
    return zmq_poll (&item, 1, S_HANDSHAKE_MS) == 1
        && zmq_recv (socket, reply, sizeof reply, ZMQ_DONTWAIT) == 2
        && memcmp (reply, "OK", 2) == 0;
}

//  --------------------------------------------------------------------------
//  With --durable, what a commit lets out: confirms and forwards wait until
//  their commit is durable, as kim's RECEIPTs and deliveries do.

typedef struct {
    void *socket;
    zmq_msg_t id;
    zmq_msg_t body;
    uint64_t commit;            //  the commit that has to be durable first
} held_t;

typedef struct {
    held_t *items;
    size_t count;
    size_t max;
} outbox_t;

static bool
s_hold (outbox_t *self, void *socket, const void *id, size_t id_size, const void *body,
        size_t body_size, uint64_t commit)
{
    if (self->count == self->max) {
        size_t max = self->max? 2 * self->max: 256;
        held_t *items = (held_t *) realloc (self->items, max * sizeof *items);
        if (!items)
            return false;
        self->items = items;
        self->max = max;
    }
    held_t *held = &self->items [self->count];
    if (zmq_msg_init_size (&held->id, id_size))
        return false;
    if (zmq_msg_init_size (&held->body, body_size)) {
        zmq_msg_close (&held->id);
        return false;
    }
    memcpy (zmq_msg_data (&held->id), id, id_size);
    memcpy (zmq_msg_data (&held->body), body, body_size);
    held->socket = socket;
    held->commit = commit;
    self->count++;
    return true;
}

//  Sends, in order, what waits for commits up to `durable`.
static void
s_release (outbox_t *self, uint64_t durable)
{
    size_t sent = 0;
    for (; sent < self->count && self->items [sent].commit <= durable; sent++) {
        held_t *held = &self->items [sent];
        if (zmq_msg_send (&held->id, held->socket, ZMQ_SNDMORE) < 0)
            zmq_msg_close (&held->id);
        if (zmq_msg_send (&held->body, held->socket, 0) < 0)
            zmq_msg_close (&held->body);
    }
    memmove (self->items, self->items + sent, (self->count - sent) * sizeof *self->items);
    self->count -= sent;
}

//  Ends a round of the durable forwarder: commits what it read, then lets
//  out what is durable. A commit makes the commits before it durable (its
//  flush takes their meta pages along); the last one is made durable by a
//  sync unless more input waits, whose commit will do it with one flush.
//  Acks alone wait up to S_ACK_DEFER_MS for messages to commit with, as
//  kim's do: an ack lost to a crash only means a delivery comes again.
static int
s_round_end (kim_ceiling_store_t *store, outbox_t *outbox, zmq_pollitem_t *items,
             bool messages, uint64_t *acks_since_ns)
{
    int rc = 0;
    uint64_t last = kim_ceiling_store_commits (store);
    if (messages || !*acks_since_ns
    ||  s_now_ns () - *acks_since_ns >= S_ACK_DEFER_MS * 1000000ull) {
        *acks_since_ns = 0;
        rc = kim_ceiling_store_commit (store);
        last = kim_ceiling_store_commits (store);
        if (rc == 0 && last)
            s_release (outbox, kim_ceiling_store_durable_at_commit (store)? last: last - 1);
    }
    //  Held confirms never wait for deferred acks: with no input waiting,
    //  a sync lets them out.
    zmq_pollitem_t waiting [2] = { items [0], items [1] };
    if (rc == 0 && outbox->count && zmq_poll (waiting, 2, 0) == 0) {
        rc = kim_ceiling_store_sync (store);
        if (rc == 0)
            s_release (outbox, last);
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  The forwarder: the child process. Returns its exit code.

static int
s_forwarder (const char *server_secret, int report_fd, int lifeline_fd, const options_t *opt)
{
    uint32_t limit_s = opt->limit_s + 10;   //  the lifeline ends it first
    size_t frame_max = (size_t) opt->batch * opt->payload;
    void *ctx = zmq_ctx_new ();
    void *front = ctx? s_socket (ctx, ZMQ_ROUTER): NULL;
    void *back = ctx? s_socket (ctx, ZMQ_ROUTER): NULL;
    int server = 1;
    char front_ep [64] = "", back_ep [64] = "";
    size_t front_size = sizeof front_ep, back_size = sizeof back_ep;
    bool ready = front && back;
    for (int i = 0; ready && i < 2; i++) {
        void *socket = i? back: front;
        ready = zmq_setsockopt (socket, ZMQ_CURVE_SERVER, &server, sizeof server) == 0
             && zmq_setsockopt (socket, ZMQ_CURVE_SECRETKEY, server_secret, S_KEY_TEXT - 1) == 0
             && zmq_bind (socket, "tcp://127.0.0.1:*") == 0;
    }
    ready = ready
         && zmq_getsockopt (front, ZMQ_LAST_ENDPOINT, front_ep, &front_size) == 0
         && zmq_getsockopt (back, ZMQ_LAST_ENDPOINT, back_ep, &back_size) == 0;
    if (!ready)
        fprintf (stderr, "kim-ceiling-curve: forwarder cannot bind: %s\n", zmq_strerror (errno));
    else {
        char line [160];
        int length = snprintf (line, sizeof line, "%s %s\n", front_ep, back_ep);
        ready = write (report_fd, line, (size_t) length) == length;
    }
    close (report_fd);

    kim_ceiling_store_t *store = NULL;
    outbox_t outbox = { NULL, 0, 0 };
    if (ready && opt->durable && !(store = kim_ceiling_store_new (opt->durable, (int) opt->trees, opt->random_keys, opt->journal)))
        ready = false;
    char *id = (char *) malloc (256), *consumer = (char *) malloc (256);
    char *frame = (char *) malloc (frame_max);
    char *confirm = (char *) malloc ((size_t) opt->batch * 8);
    int consumer_size = 0;
    int store_rc = 0;
    uint64_t acks_since_ns = 0;     //  acks waiting in the open transaction since
    uint64_t forwarded = 0, acks = 0;
    uint64_t end = s_now_ns () + (uint64_t) limit_s * 1000000000ull;
    zmq_pollitem_t items [] = {
        { front, 0, ZMQ_POLLIN, 0 },
        { back, 0, ZMQ_POLLIN, 0 },
        { NULL, lifeline_fd, ZMQ_POLLIN, 0 }
    };
    while (ready && id && consumer && frame && confirm && s_now_ns () < end) {
        bool messages = false;
        if (zmq_poll (items, 3, acks_since_ns? S_ACK_DEFER_MS: 500) < 0 && errno != EINTR)
            break;
        if (items [2].revents)
            break;              //  the parent closed the lifeline, or died
        if (items [1].revents & ZMQ_POLLIN)
            //  Consumer side: HELLO registers the consumer, anything else is an ack.
            for (int k = 0; k < S_BATCH; k++) {
                int id_size = zmq_recv (back, id, 256, ZMQ_DONTWAIT);
                if (id_size < 0)
                    break;
                int size = zmq_recv (back, frame, frame_max, 0);
                if (size == 5 && memcmp (frame, "HELLO", 5) == 0) {
                    memcpy (consumer, id, (size_t) id_size);
                    consumer_size = id_size;
                    zmq_send (back, id, (size_t) id_size, ZMQ_SNDMORE);
                    zmq_send (back, "OK", 2, 0);
                }
                else {
                    acks++;
                    //  An ack frame ends with the last index it acks.
                    uint64_t index;
                    if (store && size >= 8 && store_rc == 0) {
                        memcpy (&index, frame + (size >= 16? 8: 0), 8);
                        store_rc = kim_ceiling_store_ack (store, index);
                        if (!acks_since_ns)
                            acks_since_ns = s_now_ns ();
                    }
                }
            }
        if (items [0].revents & ZMQ_POLLIN)
            //  Producer side: HELLO gets OK; a message is confirmed at once
            //  and forwarded, once the consumer is there (the client
            //  registers it before any producer sends).
            for (int k = 0; k < S_BATCH; k++) {
                int id_size = zmq_recv (front, id, 256, ZMQ_DONTWAIT);
                if (id_size < 0)
                    break;
                int size = zmq_recv (front, frame, frame_max, 0);
                if (size == 5 && memcmp (frame, "HELLO", 5) == 0) {
                    zmq_send (front, id, (size_t) id_size, ZMQ_SNDMORE);
                    zmq_send (front, "OK", 2, 0);
                }
                else
                if (size >= (int) opt->payload && (size_t) size <= frame_max
                &&  size % opt->payload == 0 && consumer_size) {
                    //  One confirm per frame: the index of each of its messages
                    size_t count = (size_t) size / opt->payload;
                    for (size_t m = 0; m < count; m++)
                        memcpy (confirm + 8 * m,
                                frame + m * opt->payload + offsetof (stamp_t, index), 8);
                    if (store) {
                        //  Stored first; confirmed and forwarded once durable.
                        uint64_t commit = kim_ceiling_store_commits (store) + 1;
                        messages = true;
                        for (size_t m = 0; m < count && store_rc == 0; m++) {
                            const char *at = frame + m * opt->payload;
                            stamp_t stamp;
                            memcpy (&stamp, at, sizeof stamp);
                            store_rc = kim_ceiling_store_message (store, stamp.producer,
                                           stamp.index, (const uint8_t *) at, opt->payload);
                        }
                        if (store_rc == 0
                        && (!s_hold (&outbox, front, id, (size_t) id_size, confirm, 8 * count,
                                     commit)
                        ||  !s_hold (&outbox, back, consumer, (size_t) consumer_size, frame,
                                     (size_t) size, commit)))
                            store_rc = ENOMEM;
                    }
                    else {
                        zmq_send (front, id, (size_t) id_size, ZMQ_SNDMORE);
                        zmq_send (front, confirm, 8 * count, 0);
                        zmq_send (back, consumer, (size_t) consumer_size, ZMQ_SNDMORE);
                        zmq_send (back, frame, (size_t) size, 0);
                    }
                    forwarded += count;
                }
            }
        if (store && store_rc == 0)
            store_rc = s_round_end (store, &outbox, items, messages, &acks_since_ns);
        if (store_rc) {
            fprintf (stderr, "kim-ceiling-curve: forwarder's store: %s\n",
                     kim_ceiling_store_strerror (store_rc));
            break;
        }
    }
    if (ready && s_now_ns () >= end)
        fprintf (stderr, "kim-ceiling-curve: forwarder stopped at its time limit "
                 "(forwarded %llu, acks %llu)\n", (unsigned long long) forwarded,
                 (unsigned long long) acks);
    if (store)
        fprintf (stderr, "kim-ceiling-curve: forwarder stored %llu messages in %llu commits, "
                 "%llu puts\n", (unsigned long long) forwarded,
                 (unsigned long long) kim_ceiling_store_commits (store),
                 (unsigned long long) kim_ceiling_store_puts (store));
    for (size_t i = 0; i < outbox.count; i++) {
        zmq_msg_close (&outbox.items [i].id);
        zmq_msg_close (&outbox.items [i].body);
    }
    free (outbox.items);
    kim_ceiling_store_destroy (&store);
    free (id);
    free (consumer);
    free (frame);
    free (confirm);
    if (front)
        zmq_close (front);
    if (back)
        zmq_close (back);
    if (ctx)
        zmq_ctx_term (ctx);
    return ready && store_rc == 0? 0: 1;
}

//  --------------------------------------------------------------------------
//  The clients: producer threads and the consumer (the main thread).

static void *
s_producer_run (void *arg)
{
    producer_t *self = (producer_t *) arg;
    run_t *run = self->run;
    const options_t *opt = run->opt;
    void *socket = s_client_socket (run, run->front);
    char *payload = (char *) calloc (opt->batch, opt->payload);
    uint64_t *indexes = (uint64_t *) calloc (opt->batch, sizeof (uint64_t));
    self->sent_ns = (uint64_t *) calloc (opt->messages, sizeof (uint64_t));
    self->clat = (uint64_t *) calloc (opt->messages, sizeof (uint64_t));
    if (!socket || !payload || !indexes || !self->sent_ns || !self->clat)
        snprintf (self->error, sizeof self->error, "producer %u: no socket or memory", self->id);
    else
    if (!s_hello (socket))
        snprintf (self->error, sizeof self->error, "producer %u: no OK from the forwarder "
                  "within %d ms", self->id, S_HANDSHAKE_MS);
    pthread_barrier_wait (&run->barrier);

    stamp_t stamp = { .producer = self->id };
    for (uint32_t m = 0; m < opt->batch; m++)
        for (uint32_t i = sizeof stamp; i < opt->payload; i++)
            payload [(size_t) m * opt->payload + i] = (char) (i * 131 + self->id);
    zmq_pollitem_t item = { socket, 0, ZMQ_POLLIN, 0 };
    uint64_t sent = 0, start_ns = s_now_ns ();
    while (!self->error [0] && !atomic_load (&run->abort) && self->confirmed < opt->messages) {
        uint64_t now = s_now_ns ();
        if (now >= run->deadline_ns) {
            snprintf (self->error, sizeof self->error, "producer %u: time limit, %llu of %u "
                      "confirmed", self->id, (unsigned long long) self->confirmed, opt->messages);
            break;
        }
        int size;
        while ((size = zmq_recv (socket, indexes, opt->batch * sizeof (uint64_t),
                                 ZMQ_DONTWAIT)) >= (int) sizeof (uint64_t)) {
            now = s_now_ns ();
            //  zmq_recv reports a longer frame's size but truncates it
            if (size > (int) (opt->batch * sizeof (uint64_t)))
                size = (int) (opt->batch * sizeof (uint64_t));
            for (int m = 0; m < size / (int) sizeof (uint64_t); m++) {
                uint64_t index = indexes [m];
                if (index < sent) {
                    self->clat [self->clat_count++] = now - self->sent_ns [index];
                    self->last_confirm_ns = now;
                }
                self->confirmed++;
            }
        }
        //  With --rate, message n is due at start + n / rate.
        uint64_t due_ns = opt->rate? start_ns + sent * 1000000000ull / opt->rate: 0;
        while (sent < opt->messages && sent - self->confirmed < opt->window
        &&     (due_ns <= (now = s_now_ns ()))) {
            //  As many messages as the window and --batch allow, in one frame
            uint64_t count = opt->messages - sent;
            if (count > opt->window - (sent - self->confirmed))
                count = opt->window - (sent - self->confirmed);
            if (count > opt->batch)
                count = opt->batch;
            if (opt->rate) {
                count = 1;
                due_ns = start_ns + (sent + 1) * 1000000000ull / opt->rate;
            }
            for (uint64_t m = 0; m < count; m++) {
                stamp.index = sent + m;
                stamp.sent_ns = self->sent_ns [sent + m] = s_now_ns ();
                memcpy (payload + m * opt->payload, &stamp, sizeof stamp);
            }
            size_t frame_size = (size_t) count * opt->payload;
            if (zmq_send (socket, payload, frame_size, 0) != (int) frame_size) {
                snprintf (self->error, sizeof self->error, "producer %u: send: %s",
                          self->id, zmq_strerror (errno));
                break;
            }
            sent += count;
        }
        if (self->confirmed < opt->messages) {
            //  Paced: wait for a confirm or the next message's time,
            //  sleeping out the last millisecond (zmq_poll counts in ms).
            int wait_ms = 100;
            now = s_now_ns ();
            if (sent < opt->messages && due_ns > now && due_ns - now < 100000000ull) {
                wait_ms = (int) ((due_ns - now) / 1000000ull);
                if (wait_ms == 0) {
                    struct timespec pause = { 0, (long) (due_ns - now) };
                    nanosleep (&pause, NULL);
                    continue;
                }
            }
            zmq_poll (&item, 1, wait_ms);
        }
    }
    if (socket)
        zmq_close (socket);
    free (payload);
    free (indexes);
    return NULL;
}

//  Runs the clients against the forwarder; prints the JSON line. Returns
//  true when every message was confirmed and acked.
static bool
s_clients (run_t *run)
{
    const options_t *opt = run->opt;
    uint64_t total = (uint64_t) opt->producers * opt->messages;
    uint64_t *lat = (uint64_t *) calloc (total, sizeof (uint64_t));
    size_t frame_max = (size_t) opt->batch * opt->payload;
    char *frame = (char *) malloc (frame_max);
    run->ctx = zmq_ctx_new ();
    void *consumer = run->ctx? s_client_socket (run, run->back): NULL;
    if (!lat || !frame || !consumer || !s_hello (consumer)) {
        fprintf (stderr, "kim-ceiling-curve: %s\n", !lat || !frame? "out of memory":
                 consumer? "the consumer got no OK from the forwarder": "no consumer socket");
        free (lat);
        free (frame);
        if (consumer)
            zmq_close (consumer);
        if (run->ctx)
            zmq_ctx_term (run->ctx);
        return false;
    }
    //  The deadline is set before the barrier, so the producers see it.
    run->deadline_ns = s_now_ns () + (uint64_t) opt->limit_s * 1000000000ull;
    pthread_barrier_init (&run->barrier, NULL, opt->producers + 1);
    for (uint32_t p = 0; p < opt->producers; p++) {
        run->producer [p] = (producer_t) { .run = run, .id = p };
        if (pthread_create (&run->producer [p].thread, NULL, s_producer_run, &run->producer [p])) {
            fprintf (stderr, "kim-ceiling-curve: cannot start producer %u\n", p);
            exit (1);
        }
    }
    pthread_barrier_wait (&run->barrier);
    uint64_t start_ns = s_now_ns ();
    for (uint32_t p = 0; p < opt->producers; p++)
        if (run->producer [p].error [0])
            atomic_store (&run->abort, true);

    uint64_t acked = 0, last_ack_ns = start_ns;
    zmq_pollitem_t item = { consumer, 0, ZMQ_POLLIN, 0 };
    while (acked < total && !atomic_load (&run->abort) && s_now_ns () < run->deadline_ns) {
        int size = zmq_recv (consumer, frame, frame_max, ZMQ_DONTWAIT);
        if (size < 0) {
            zmq_poll (&item, 1, 100);
            continue;
        }
        if (size < (int) opt->payload || size % opt->payload)
            continue;
        //  Each message of the frame; one ack for the frame (the first
        //  and last index with --batch, the index alone without)
        uint64_t range [2];
        last_ack_ns = s_now_ns ();
        for (size_t m = 0; m < (size_t) size / opt->payload && acked < total; m++) {
            stamp_t stamp;
            memcpy (&stamp, frame + m * opt->payload, sizeof stamp);
            lat [acked++] = last_ack_ns - stamp.sent_ns;
            if (m == 0)
                range [0] = stamp.index;
            range [1] = stamp.index;
        }
        zmq_send (consumer, range, opt->batch > 1? sizeof range: sizeof range [0], 0);
    }

    uint64_t confirmed = 0, last_confirm_ns = start_ns;
    size_t clat_count = 0;
    for (uint32_t p = 0; p < opt->producers; p++) {
        producer_t *producer = &run->producer [p];
        pthread_join (producer->thread, NULL);
        if (producer->error [0])
            fprintf (stderr, "kim-ceiling-curve: %s\n", producer->error);
        confirmed += producer->confirmed;
        if (producer->last_confirm_ns > last_confirm_ns)
            last_confirm_ns = producer->last_confirm_ns;
        clat_count += producer->clat_count;
    }
    //  All confirm latencies in one array, for the percentiles.
    uint64_t *clat = (uint64_t *) calloc (clat_count + 1, sizeof (uint64_t));
    size_t used = 0;
    for (uint32_t p = 0; p < opt->producers; p++) {
        producer_t *producer = &run->producer [p];
        if (clat && producer->clat_count)
            memcpy (clat + used, producer->clat, producer->clat_count * sizeof (uint64_t));
        used += producer->clat_count;
        free (producer->clat);
        free (producer->sent_ns);
    }
    bool complete = confirmed == total && acked == total;
    if (acked < total)
        fprintf (stderr, "kim-ceiling-curve: %llu of %llu acked\n",
                 (unsigned long long) acked, (unsigned long long) total);
    double ack_s = (double) (last_ack_ns - start_ns) / 1e9;
    double confirm_s = (double) (last_confirm_ns - start_ns) / 1e9;
    printf ("{\"tool\":\"kim-ceiling-curve\",\"curve\":true,\"producers\":%u,\"messages\":%llu,"
            "\"payload\":%u,\"window\":%u,\"batch\":%u,\"confirmed\":%llu,\"acked\":%llu,"
            "\"rate\":%u,\"durable\":%s,\"commit\":\"%s\",\"trees\":%u,\"keys\":\"%s\","
            "\"t_confirm_s\":%.3f,\"t_ack_s\":%.3f,\"confirm_rate\":%.0f,\"ack_rate\":%.0f",
            opt->producers, (unsigned long long) total, opt->payload, opt->window, opt->batch,
            (unsigned long long) confirmed, (unsigned long long) acked,
            opt->rate, opt->durable? "true": "false", opt->journal? "journal": "lmdb", opt->trees,
            opt->random_keys? "random": "ordered", confirm_s, ack_s,
            confirmed == total && confirm_s > 0? (double) total / confirm_s: 0,
            acked == total && ack_s > 0? (double) total / ack_s: 0);
    s_print_percentiles ("", lat, (size_t) acked);
    if (clat)
        s_print_percentiles ("c_", clat, clat_count);
    printf (",\"complete\":%s}\n", complete? "true": "false");
    fflush (stdout);

    free (clat);
    free (lat);
    free (frame);
    zmq_close (consumer);
    zmq_ctx_term (run->ctx);
    pthread_barrier_destroy (&run->barrier);
    return complete;
}

//  --------------------------------------------------------------------------

static void
s_usage (FILE *file)
{
    fprintf (file,
        "usage: kim-ceiling-curve [--producers N] [--messages N] [--window N] [--payload N]\n"
        "                         [--batch N] [--rate N] [--limit S]\n"
        "                         [--durable DIR [--trees N] [--keys ordered|random]\n"
        "                                        [--commit lmdb|journal] [--prefill N]]\n"
        "  Raw ZeroMQ forwarding in the W1 shape with CurveZMQ on every socket: N producer\n"
        "  DEALERs -> a ROUTER forwarder (its own process) that confirms each message at\n"
        "  once and forwards it -> one consumer DEALER that acks each. Flat out, HWM 0,\n"
        "  tcp://127.0.0.1. Prints one JSON line (ack_rate, confirm_rate, latencies in µs).\n"
        "  --producers N  producer sockets, one thread each (default 4, at most %d)\n"
        "  --messages N   messages per producer (default 25000)\n"
        "  --window N     unconfirmed messages per producer (default 256)\n"
        "  --payload N    bytes per message, %zu to %d (default 1024)\n"
        "  --batch N      messages per frame at most, 1 to %d, as kim's protocol version 2\n"
        "                 packs them (default 1: a frame per message, confirm and ack)\n"
        "  --rate N       messages a second per producer, one a frame (default 0: flat\n"
        "                 out); W2 is --producers 1 --messages 5000 --rate 1000\n"
        "  --durable DIR  the forwarder stores each message as a broker with kim's\n"
        "                 guarantees must (payload hashed and sealed, a hash-chained log\n"
        "                 record, its message id) in an LMDB store in DIR (made if missing)\n"
        "                 and confirms and forwards it only once its commit is synced\n"
        "  --trees N      with --durable: also one 64-byte entry a message in each of N\n"
        "                 more trees, 0 to %d, as a broker's indexes (default 0)\n"
        "  --keys K       with --durable: message ids and the keys of those entries\n"
        "                 follow the messages (ordered, the default) or fall anywhere in\n"
        "                 their trees (random), as ids that agencies make (UUIDs) do\n"
        "  --commit K     with --durable: a commit is LMDB's (lmdb, the default: data\n"
        "                 flushed, the meta page with the next flush or a sync) or one\n"
        "                 entry appended to a journal in front of LMDB and flushed\n"
        "                 (journal; LMDB then commits once a second)\n"
        "  --prefill N    with --durable: first store N messages of 64 bytes in DIR, in\n"
        "                 large synced transactions, as a store that has served for long\n"
        "                 (not timed; the time it took goes to stderr)\n"
        "  --limit S      time limit of the whole run in seconds (default 60)\n"
        "  Exit 0 when every message was confirmed and acked, 1 otherwise, 2 on bad usage.\n",
        S_PRODUCERS_MAX, sizeof (stamp_t), S_FRAME_MAX, S_BATCH_MAX,
        KIM_CEILING_STORE_TREES_MAX);
}

static bool
s_parse_u32 (const char *text, uint32_t min, uint32_t max, uint32_t *value)
{
    char *end;
    unsigned long parsed = strtoul (text? text: "", &end, 10);
    if (!text || !*text || *end || parsed < min || parsed > max)
        return false;
    *value = (uint32_t) parsed;
    return true;
}

//  Reads the forwarder's "front back" line within timeout_ms.
static bool
s_read_endpoints (int fd, run_t *run, int timeout_ms)
{
    char line [160];
    size_t used = 0;
    uint64_t deadline = s_now_ns () + (uint64_t) timeout_ms * 1000000ull;
    while (used < sizeof line - 1 && !memchr (line, '\n', used)) {
        uint64_t now = s_now_ns ();
        struct pollfd item = { fd, POLLIN, 0 };
        if (now >= deadline || poll (&item, 1, (int) ((deadline - now) / 1000000ull) + 1) < 0)
            return false;
        if (!item.revents)
            continue;
        ssize_t got = read (fd, line + used, sizeof line - 1 - used);
        if (got <= 0)
            return false;       //  the forwarder failed and exited
        used += (size_t) got;
    }
    line [used] = 0;
    return sscanf (line, "%63s %63s", run->front, run->back) == 2;
}

//  Fills the store before the run, as kim-bench --prefill fills kim's.
static int
s_prefill (const options_t *opt)
{
    kim_ceiling_store_t *store = kim_ceiling_store_new (opt->durable, (int) opt->trees, opt->random_keys, opt->journal);
    if (!store)
        return -1;
    uint64_t start = s_now_ns ();
    int rc = kim_ceiling_store_fill (store, opt->prefill, S_PREFILL_PAYLOAD);
    if (rc)
        fprintf (stderr, "kim-ceiling-curve: prefilling %s: %s\n", opt->durable,
                 kim_ceiling_store_strerror (rc));
    else
        fprintf (stderr, "kim-ceiling-curve: prefilled %u messages in %.1f s\n", opt->prefill,
                 (double) (s_now_ns () - start) / 1e9);
    kim_ceiling_store_destroy (&store);
    return rc? -1: 0;
}

int
main (int argc, char *argv [])
{
    options_t opt = {
        .producers = 4, .messages = 25000, .window = 256, .payload = 1024, .limit_s = 60,
        .batch = 1
    };
    //  Every option takes a value: they come in pairs.
    for (int i = 1; i < argc; i += 2) {
        const char *arg = argv [i];
        const char *next = i + 1 < argc? argv [i + 1]: NULL;
        bool ok = false;
        if (strcmp (arg, "--help") == 0 || strcmp (arg, "-h") == 0) {
            s_usage (stdout);
            return 0;
        }
        if (strcmp (arg, "--producers") == 0)
            ok = s_parse_u32 (next, 1, S_PRODUCERS_MAX, &opt.producers);
        else
        if (strcmp (arg, "--messages") == 0)
            ok = s_parse_u32 (next, 1, 100000000, &opt.messages);
        else
        if (strcmp (arg, "--window") == 0)
            ok = s_parse_u32 (next, 1, UINT32_MAX, &opt.window);
        else
        if (strcmp (arg, "--payload") == 0)
            ok = s_parse_u32 (next, sizeof (stamp_t), S_FRAME_MAX, &opt.payload);
        else
        if (strcmp (arg, "--limit") == 0)
            ok = s_parse_u32 (next, 1, 86400, &opt.limit_s);
        else
        if (strcmp (arg, "--batch") == 0)
            ok = s_parse_u32 (next, 1, S_BATCH_MAX, &opt.batch);
        else
        if (strcmp (arg, "--rate") == 0)
            ok = s_parse_u32 (next, 0, 1000000, &opt.rate);
        else
        if (strcmp (arg, "--trees") == 0)
            ok = s_parse_u32 (next, 0, KIM_CEILING_STORE_TREES_MAX, &opt.trees);
        else
        if (strcmp (arg, "--keys") == 0 && next) {
            ok = strcmp (next, "ordered") == 0 || strcmp (next, "random") == 0;
            opt.random_keys = strcmp (next, "random") == 0;
        }
        else
        if (strcmp (arg, "--commit") == 0 && next) {
            ok = strcmp (next, "lmdb") == 0 || strcmp (next, "journal") == 0;
            opt.journal = strcmp (next, "journal") == 0;
        }
        else
        if (strcmp (arg, "--prefill") == 0)
            ok = s_parse_u32 (next, 0, 1000000000, &opt.prefill);
        else
        if (strcmp (arg, "--durable") == 0 && next && *next) {
            opt.durable = next;
            ok = mkdir (next, 0700) == 0 || errno == EEXIST;
            if (!ok)
                fprintf (stderr, "kim-ceiling-curve: cannot make %s: %s\n", next,
                         strerror (errno));
        }
        if (!ok) {
            s_usage (stderr);
            return 2;
        }
    }
    if (!zmq_has ("curve")) {
        fprintf (stderr, "kim-ceiling-curve: this libzmq was built without CURVE\n");
        return 1;
    }
    if (opt.prefill && !opt.durable) {
        fprintf (stderr, "kim-ceiling-curve: --prefill needs --durable\n");
        s_usage (stderr);
        return 2;
    }
    if (opt.prefill && s_prefill (&opt))
        return 1;
    signal (SIGPIPE, SIG_IGN);

    //  The server keypair, made before the fork: the child keeps the
    //  secret, the clients get the public key.
    run_t run = { .opt = &opt };
    char server_secret [S_KEY_TEXT];
    int report [2], lifeline [2];
    if (zmq_curve_keypair (run.server_public, server_secret) || pipe (report) || pipe (lifeline)) {
        fprintf (stderr, "kim-ceiling-curve: cannot make keys or pipes: %s\n", strerror (errno));
        return 1;
    }
    fflush (stdout);
    pid_t child = fork ();
    if (child < 0) {
        fprintf (stderr, "kim-ceiling-curve: fork: %s\n", strerror (errno));
        return 1;
    }
    if (child == 0) {
        close (report [0]);
        close (lifeline [1]);
        _exit (s_forwarder (server_secret, report [1], lifeline [0], &opt));
    }
    close (report [1]);
    close (lifeline [0]);
    memset (server_secret, 0, sizeof server_secret);

    bool complete = false;
    if (s_read_endpoints (report [0], &run, S_HANDSHAKE_MS))
        complete = s_clients (&run);
    else
        fprintf (stderr, "kim-ceiling-curve: the forwarder did not start\n");
    close (report [0]);

    //  Cut the lifeline; the forwarder sees it within one poll (500 ms).
    close (lifeline [1]);
    int status = 0;
    uint64_t until = s_now_ns () + 5000000000ull;
    while (waitpid (child, &status, WNOHANG) == 0) {
        if (s_now_ns () >= until) {
            kill (child, SIGKILL);
            waitpid (child, &status, 0);
            break;
        }
        struct timespec pause = { 0, 10000000 };
        nanosleep (&pause, NULL);
    }
    return complete? 0: 1;
}
