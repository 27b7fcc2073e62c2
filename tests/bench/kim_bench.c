/*  kim_bench.c — kim-bench: the benchmark workloads of BRIEF.md §6 against
    a real broker process, with the hardware ceilings measured in the same run.

    Each workload starts a fresh broker through the test harness (a temp
    folder, generated keys and config), drives it with the real client
    library from one thread per client, and checks the counts before it
    reports any speed: every message receipted once, every log sequence
    number delivered, and delivered with the payload that was receipted
    under it. A figure from a run that lost or duplicated a message is no
    figure at all, so such a run fails (exit 1).

    Timings never decide pass or fail; the CTest smoke test (--smoke) only
    checks the counts. Every wait is bounded: a run with no progress for
    KIM_BENCH_STALL_S seconds is declared stuck, reported with its counters
    and the broker's log folder, and fails.

    One run is not a fair figure on a noisy machine: --repeat N runs every
    workload (and the ceilings) N times in interleaved rounds and reports
    the median of each figure, with the range of the headline ones.

    Clocks: CLOCK_MONOTONIC nanoseconds. Producer and consumer run in this
    process, so the send stamp in the payload and the consumer's receive
    time come from the same clock.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kim_testbroker.h"

#define KIM_BENCH_STALL_S       30      //  no progress this long: the run is stuck
#define KIM_BENCH_LEAVE_S       10      //  time threads get to leave after an abort
#define KIM_BENCH_PRODUCERS_MAX 16
#define KIM_BENCH_MAGIC         0x6b696d62656e6368ull  //  "kimbench"
#define KIM_BENCH_RSS_POINTS    5       //  0, 25, 50, 75, 100 % of the fill
#define KIM_BENCH_SINK          "jc.sink"
#define KIM_BENCH_REPEAT_MAX    20      //  --repeat N: runs of each workload

//  --------------------------------------------------------------------------
//  Options and results

typedef struct {
    const char *workload;       //  W1, W2, W3, RSS or all
    bool smoke;                 //  tiny counts, no ceilings
    bool json;                  //  JSON lines only
    bool tcp;                   //  tcp loopback (default) or ipc
    bool sealed;                //  seal payloads end to end (default: plaintext, as the peers)
    bool ceilings;              //  run the ceiling tools if built
    bool drain;                 //  drain the RSS mailbox afterwards
    uint32_t producers;         //  W1/W3/RSS producers
    uint32_t messages;          //  W1/W3 messages per producer
    uint32_t payload;           //  W1/W3/W2 payload bytes
    uint32_t send_window;       //  unreceipted sends per producer
    uint32_t recv_window;       //  consumer's delivery window
    uint32_t w2_rate;           //  W2 messages per second
    uint32_t w2_seconds;        //  W2 duration
    uint32_t fill;              //  RSS: undelivered messages in total
    uint32_t fill_payload;      //  RSS payload bytes
    uint32_t repeat;            //  runs of each workload (and of the ceilings)
    char broker_extra [1024];   //  lines for the broker section (--set broker/...)
    char store_extra [512];     //  lines for the store section (--set store/...)
} options_t;

//  One workload's figures, printed as a table row and a JSON line.
typedef struct {
    char name [16];
    bool ran;
    bool ok;
    char detail [1024];         //  why not ok
    uint32_t producers;
    uint64_t messages;
    uint32_t payload;
    double seconds;             //  first send -> last ack (or last receipt)
    double receipted_per_s;
    double acked_per_s;
    bool has_latency;
    double p50_us, p99_us, max_us;          //  end to end: send -> consumer receive
    bool has_receipt_latency;
    double r_p50_us, r_p99_us, r_max_us;    //  send -> RECEIPT dequeued
    uint64_t rss_kb, hwm_kb;                //  broker VmRSS at the end, VmHWM
    uint64_t redeliveries;
    uint64_t reconnects;
    double cpu_broker_s;        //  CPU the broker process used (all threads)
    double cpu_clients_s;       //  CPU this process (the clients) used meanwhile
    //  RSS workload
    uint64_t rss_at [KIM_BENCH_RSS_POINTS];
    uint64_t anon_at [KIM_BENCH_RSS_POINTS];
    uint64_t marks [KIM_BENCH_RSS_POINTS];
    double drain_per_s;
    uint64_t rss_after_drain, anon_after_drain;
    uint64_t drained;
} result_t;

typedef struct {
    bool zmq_ran, curve_ran, lmdb_ran, lmdb1_ran;
    double zmq_ack_rate, zmq_confirm_rate, zmq_p50_us, zmq_p99_us;
    double curve_ack_rate, curve_confirm_rate, curve_p50_us, curve_p99_us;   //  ZeroMQ + CURVE
    double lmdb_rate, lmdb_commit_us;       //  batch 256
    double lmdb1_rate, lmdb1_commit_us;     //  batch 1
} ceilings_t;

//  Several runs of one workload (--repeat): the median of each figure over
//  the runs that passed, and the smallest and largest.
typedef struct {
    uint32_t runs;              //  runs that passed: the figures are over these
    uint32_t failed;            //  runs that failed
    result_t median, min, max;
} summary_t;

//  Several rounds of the ceilings: each tool's figures over the rounds in
//  which it ran.
typedef struct {
    uint32_t zmq_runs, curve_runs, lmdb_runs, lmdb1_runs;
    ceilings_t median, min, max;
} ceiling_summary_t;

//  --------------------------------------------------------------------------
//  Small helpers

static bool
s_streq (const char *a, const char *b)
{
    return strcmp (a, b) == 0;
}

static uint64_t
s_now_ns (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static uint64_t
s_wall_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000ull + (uint64_t) ts.tv_nsec / 1000000ull;
}

static void
s_sleep_until (uint64_t when_ns)
{
    struct timespec ts = { (time_t) (when_ns / 1000000000ull), (long) (when_ns % 1000000000ull) };
    while (clock_nanosleep (CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void
s_sleep_ms (int ms)
{
    s_sleep_until (s_now_ns () + (uint64_t) ms * 1000000ull);
}

static int
s_cmp_u64 (const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y? -1: x > y;
}

//  Percentiles of n latencies in ns (sorts in place), in µs.
static void
s_percentiles (uint64_t *lat, size_t n, double *p50, double *p99, double *max)
{
    *p50 = *p99 = *max = 0;
    if (n == 0)
        return;
    qsort (lat, n, sizeof *lat, s_cmp_u64);
    *p50 = lat [(size_t) ((double) n * 0.50)] / 1e3;
    *p99 = lat [(size_t) ((double) n * 0.99)] / 1e3;
    *max = lat [n - 1] / 1e3;
}

//  A field of /proc/<pid>/status in kB ("VmRSS", "VmHWM", "RssAnon"), or 0.
static uint64_t
s_proc_kb (pid_t pid, const char *field)
{
    char path [64], line [256];
    snprintf (path, sizeof path, "/proc/%d/status", (int) pid);
    FILE *file = fopen (path, "r");
    if (!file)
        return 0;
    size_t len = strlen (field);
    uint64_t value = 0;
    while (fgets (line, sizeof line, file))
        if (strncmp (line, field, len) == 0 && line [len] == ':') {
            value = strtoull (line + len + 1, NULL, 10);
            break;
        }
    fclose (file);
    return value;
}

//  CPU seconds (user + system, all threads) a process has used so far.
static double
s_proc_cpu (pid_t pid)
{
    char path [64], line [1024];
    snprintf (path, sizeof path, "/proc/%d/stat", (int) pid);
    FILE *file = fopen (path, "r");
    if (!file)
        return 0;
    double seconds = 0;
    if (fgets (line, sizeof line, file)) {
        //  Fields after the command name (which may hold spaces): state is
        //  field 3, utime and stime are fields 14 and 15.
        char *at = strrchr (line, ')');
        unsigned long long utime = 0, stime = 0;
        if (at && sscanf (at + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                          &utime, &stime) == 2)
            seconds = (double) (utime + stime) / (double) sysconf (_SC_CLK_TCK);
    }
    fclose (file);
    return seconds;
}

//  The number after "key": in a JSON line, or false.
static bool
s_json_number (const char *line, const char *key, double *value)
{
    char pattern [64];
    snprintf (pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr (line, pattern);
    if (!at)
        return false;
    char *end;
    *value = strtod (at + strlen (pattern), &end);
    return end != at + strlen (pattern);
}

static int
s_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = 0 };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = -1;
    if (fd >= 0 && bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0
    &&  getsockname (fd, (struct sockaddr *) &addr, &len) == 0)
        port = ntohs (addr.sin_port);
    if (fd >= 0)
        close (fd);
    return port;
}

//  --------------------------------------------------------------------------
//  A run: one broker, producer threads, at most one consumer thread.

typedef struct _run_t run_t;

//  What a producer puts at the start of every payload.
typedef struct {
    uint64_t magic;
    uint32_t producer;          //  1-based
    uint32_t index;             //  0-based within the producer
    uint64_t sent_ns;
} stamp_t;

typedef struct {
    run_t *run;
    uint32_t id;                //  1-based; org "kim.p<id>"
    pthread_t thread;
    uint8_t *receipts;          //  per index: RECEIPTs seen
    uint64_t *seq_of;           //  per index: the seq the RECEIPT named
    uint64_t *sent_ns;          //  per index: send time
    uint64_t *rlat;             //  receipt latencies (ns)
    size_t rlat_count;
    uint64_t first_send_ns;
    uint64_t last_receipt_ns;
    uint64_t receipted;         //  distinct messages receipted
    uint64_t dup_receipts;      //  a second RECEIPT for the same message
    uint64_t broker_dups;       //  RECEIPTs with dup set (the broker had it already)
    uint64_t rejects;
    uint64_t reconnects;
    int failed;                 //  non-zero: this thread failed, text says why
    char text [640];
} producer_t;

typedef struct {
    run_t *run;
    pthread_t thread;
    uint8_t *seen;              //  by seq: deliveries seen
    size_t seen_size;
    uint8_t *count_of;          //  by (producer, index): deliveries seen
    uint64_t *seq_of;           //  by (producer, index): the seq delivered
    uint64_t *lat;              //  end-to-end latencies (ns)
    size_t lat_count;
    uint64_t distinct;
    uint64_t redeliveries;      //  a seq seen again
    uint64_t strays;            //  payloads that were not ours
    uint64_t last_ack_ns;
    uint64_t reconnects;
    kim_status_t status;        //  the mailbox after the run
    bool status_ok;
    int failed;
    char text [640];
} consumer_t;

struct _run_t {
    const options_t *opt;
    const char *name;
    kim_testbroker_t *broker;
    uint32_t producers;
    uint32_t per_producer;
    uint32_t payload;
    uint32_t rate;              //  msgs/s per producer; 0: flat out
    bool with_consumer;         //  consumer runs with the producers
    bool consumer_waits;        //  consumer is one of the barrier's parties
    uint64_t total;
    pthread_barrier_t barrier;  //  every client connected before anyone sends
    atomic_uint_fast64_t receipted;
    atomic_uint_fast64_t delivered;
    atomic_bool abort;
    producer_t producer [KIM_BENCH_PRODUCERS_MAX];
    consumer_t consumer;
};

//  Per-message header fields; the rest comes from the harness's referral.
static void
s_message (kim_msg_t *msg, uint32_t producer, uint32_t index)
{
    char id [KIM_ID_MAX + 1];
    snprintf (id, sizeof id, "b%u-%u", producer, index);
    kim_test_referral (msg, KIM_BENCH_SINK, id);
    snprintf (msg->msg_id, sizeof msg->msg_id, "m%u-%u", producer, index);
    msg->created_at = s_wall_ms ();
}

//  "m<producer>-<index>" back to the index, or -1.
static long
s_index_of (const char *msg_id, uint32_t producer, uint32_t count)
{
    if (msg_id [0] != 'm')
        return -1;
    char *end;
    unsigned long p = strtoul (msg_id + 1, &end, 10);
    if (*end != '-' || p != producer)
        return -1;
    unsigned long index = strtoul (end + 1, &end, 10);
    if (*end || index >= count)
        return -1;
    return (long) index;
}

static void
s_producer_event (producer_t *self, const kim_event_t *event, uint64_t now)
{
    run_t *run = self->run;
    if (event->type == KIM_EVENT_RECEIPT) {
        long index = s_index_of (event->msg_id, self->id, run->per_producer);
        if (index < 0) {
            self->failed = 1;
            snprintf (self->text, sizeof self->text, "RECEIPT for unknown msg_id '%s'",
                      event->msg_id);
            return;
        }
        if (event->dup)
            self->broker_dups++;
        if (self->receipts [index]++) {
            self->dup_receipts++;
            return;
        }
        self->seq_of [index] = event->seq;
        self->rlat [self->rlat_count++] = now - self->sent_ns [index];
        self->receipted++;
        self->last_receipt_ns = now;
        atomic_fetch_add (&run->receipted, 1);
    }
    else
    if (event->type == KIM_EVENT_REJECT) {
        self->rejects++;
        if (!self->failed) {
            self->failed = 1;
            snprintf (self->text, sizeof self->text, "REJECT %d (%.60s) for '%s': %.256s%s%s",
                      event->code, kim_strerror (-event->code), event->msg_id, event->text,
                      event->path [0]? " at ": "", event->path);
        }
    }
}

static void *
s_producer_run (void *arg)
{
    producer_t *self = (producer_t *) arg;
    run_t *run = self->run;
    char org [32];
    snprintf (org, sizeof org, "kim.p%u", self->id);
    kim_client_config_t config =
        kim_testbroker_client_config (run->broker, org, 0, run->opt->tcp);
    config.send_window = run->opt->send_window;
    int err = 0;
    kim_client_t *client = kim_client_new (&config, &err);
    if (!client) {
        self->failed = 1;
        snprintf (self->text, sizeof self->text, "%s cannot connect: %s", org, kim_strerror (err));
    }
    pthread_barrier_wait (&run->barrier);
    if (!client)
        return NULL;

    uint8_t *payload = (uint8_t *) malloc (run->payload);
    kim_msg_t *msg = (kim_msg_t *) malloc (sizeof (kim_msg_t));
    kim_event_t *event = (kim_event_t *) malloc (sizeof (kim_event_t));
    KIM_CHECK (payload && msg && event);
    for (uint32_t i = 0; i < run->payload; i++)
        payload [i] = (uint8_t) (i * 131 + self->id);
    uint64_t period = run->rate? 1000000000ull / run->rate: 0;
    uint64_t start_ns = s_now_ns ();

    for (uint32_t index = 0; index < run->per_producer && !self->failed; index++) {
        if (atomic_load (&run->abort))
            break;
        if (period) {
            //  Paced: wait for the slot, taking receipts meanwhile.
            uint64_t due = start_ns + index * period;
            for (;;) {
                uint64_t now = s_now_ns ();
                if (now >= due)
                    break;
                int wait_ms = (int) ((due - now) / 1000000ull);
                if (wait_ms == 0) {
                    s_sleep_until (due);
                    break;
                }
                if (kim_client_recv (client, event, wait_ms) == 0)
                    s_producer_event (self, event, s_now_ns ());
            }
        }
        s_message (msg, self->id, index);
        stamp_t stamp = { KIM_BENCH_MAGIC, self->id, index, s_now_ns () };
        memcpy (payload, &stamp, sizeof stamp);
        self->sent_ns [index] = stamp.sent_ns;
        if (index == 0)
            self->first_send_ns = stamp.sent_ns;
        int rc = kim_client_send_async (client, msg, payload, run->payload);
        if (rc) {
            self->failed = 1;
            snprintf (self->text, sizeof self->text, "%s: send %u failed: %s (%s)", org, index,
                      kim_strerror (rc), kim_client_error (client));
            break;
        }
        while (kim_client_recv (client, event, 0) == 0)
            s_producer_event (self, event, s_now_ns ());
    }
    //  Wait for the remaining receipts.
    while (!self->failed && self->receipted < run->per_producer && !atomic_load (&run->abort)) {
        int rc = kim_client_recv (client, event, 100);
        if (rc == 0)
            s_producer_event (self, event, s_now_ns ());
        else
        if (rc != -KIM_E_TIMEOUT) {
            self->failed = 1;
            snprintf (self->text, sizeof self->text, "%s: recv failed: %s (%s)", org,
                      kim_strerror (rc), kim_client_error (client));
        }
    }
    self->reconnects = kim_client_reconnects (client);
    kim_client_destroy (&client);
    free (payload);
    free (msg);
    free (event);
    return NULL;
}

static void
s_consumer_deliver (consumer_t *self, const kim_event_t *event, uint64_t now)
{
    run_t *run = self->run;
    if (event->seq >= self->seen_size) {
        size_t size = self->seen_size? self->seen_size: 1024;
        while (size <= event->seq)
            size *= 2;
        uint8_t *seen = (uint8_t *) realloc (self->seen, size);
        KIM_CHECK (seen);
        memset (seen + self->seen_size, 0, size - self->seen_size);
        self->seen = seen;
        self->seen_size = size;
    }
    if (self->seen [event->seq]) {
        self->redeliveries++;
        return;
    }
    self->seen [event->seq] = 1;

    stamp_t stamp;
    if (event->payload_size < sizeof stamp) {
        self->strays++;
        return;
    }
    memcpy (&stamp, event->payload, sizeof stamp);
    if (stamp.magic != KIM_BENCH_MAGIC || stamp.producer < 1 || stamp.producer > run->producers
    ||  stamp.index >= run->per_producer || event->payload_size != run->payload) {
        self->strays++;
        return;
    }
    size_t slot = (size_t) (stamp.producer - 1) * run->per_producer + stamp.index;
    if (self->count_of [slot]++)
        return;                 //  the same message under a second seq: found at the check
    self->seq_of [slot] = event->seq;
    self->lat [self->lat_count++] = now - stamp.sent_ns;
    self->distinct++;
    atomic_fetch_add (&run->delivered, 1);
}

static void *
s_consumer_run (void *arg)
{
    consumer_t *self = (consumer_t *) arg;
    run_t *run = self->run;
    kim_client_t *client = kim_testbroker_client (run->broker, KIM_BENCH_SINK,
                                                  run->opt->recv_window, run->opt->tcp);
    if (!client) {
        self->failed = 1;
        snprintf (self->text, sizeof self->text, "%s cannot connect", KIM_BENCH_SINK);
    }
    if (run->consumer_waits)
        pthread_barrier_wait (&run->barrier);
    if (!client)
        return NULL;
    kim_event_t *event = (kim_event_t *) malloc (sizeof (kim_event_t));
    KIM_CHECK (event);
    while (self->distinct < run->total && !atomic_load (&run->abort)) {
        int rc = kim_client_recv (client, event, 100);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        if (rc) {
            self->failed = 1;
            snprintf (self->text, sizeof self->text, "consumer: recv failed: %s (%s)",
                      kim_strerror (rc), kim_client_error (client));
            break;
        }
        if (event->type == KIM_EVENT_DELIVER) {
            s_consumer_deliver (self, event, s_now_ns ());
            rc = kim_client_ack (client, event->seq);
            if (rc) {
                self->failed = 1;
                snprintf (self->text, sizeof self->text, "consumer: ack failed: %s",
                          kim_strerror (rc));
                break;
            }
        }
        else
        if (event->type == KIM_EVENT_REJECT) {
            self->failed = 1;
            snprintf (self->text, sizeof self->text, "consumer: REJECT %d (%s): %s",
                      event->code, kim_strerror (-event->code), event->text);
            break;
        }
    }
    //  The last acks go out with the flush; that is the consumer's last ack.
    if (kim_client_flush (client, 5000) == 0)
        self->last_ack_ns = s_now_ns ();
    else
    if (!self->failed) {
        self->failed = 1;
        snprintf (self->text, sizeof self->text, "consumer: flush timed out");
    }
    //  Not timed: the broker must have taken every ack, leaving an empty
    //  mailbox (acks are applied in the broker's next batch, so poll).
    uint64_t until = s_now_ns () + 10ull * 1000000000ull;
    while (!self->failed && !atomic_load (&run->abort) && s_now_ns () < until) {
        if (kim_client_status (client, &self->status, 2000) == 0) {
            self->status_ok = true;
            if (self->status.mailbox == 0 && self->status.in_flight == 0)
                break;
        }
        //  Keep reading: a redelivery would show up here.
        if (kim_client_recv (client, event, 50) == 0 && event->type == KIM_EVENT_DELIVER) {
            s_consumer_deliver (self, event, s_now_ns ());
            kim_client_ack (client, event->seq);
            kim_client_flush (client, 1000);
        }
    }
    self->reconnects = kim_client_reconnects (client);
    kim_client_destroy (&client);
    free (event);
    return NULL;
}

static run_t *
s_run_new (const options_t *opt, const char *name, kim_testbroker_t *broker,
           uint32_t producers, uint32_t per_producer, uint32_t payload)
{
    run_t *run = (run_t *) calloc (1, sizeof (run_t));
    KIM_CHECK (run);
    run->opt = opt;
    run->name = name;
    run->broker = broker;
    run->producers = producers;
    run->per_producer = per_producer;
    run->payload = payload;
    run->total = (uint64_t) producers * per_producer;
    atomic_init (&run->receipted, 0);
    atomic_init (&run->delivered, 0);
    atomic_init (&run->abort, false);
    for (uint32_t p = 0; p < producers; p++) {
        producer_t *producer = &run->producer [p];
        producer->run = run;
        producer->id = p + 1;
        producer->receipts = (uint8_t *) calloc (per_producer, 1);
        producer->seq_of = (uint64_t *) calloc (per_producer, sizeof (uint64_t));
        producer->sent_ns = (uint64_t *) calloc (per_producer, sizeof (uint64_t));
        producer->rlat = (uint64_t *) calloc (per_producer, sizeof (uint64_t));
        KIM_CHECK (producer->receipts && producer->seq_of && producer->sent_ns && producer->rlat);
    }
    consumer_t *consumer = &run->consumer;
    consumer->run = run;
    consumer->count_of = (uint8_t *) calloc (run->total, 1);
    consumer->seq_of = (uint64_t *) calloc (run->total, sizeof (uint64_t));
    consumer->lat = (uint64_t *) calloc (run->total, sizeof (uint64_t));
    KIM_CHECK (consumer->count_of && consumer->seq_of && consumer->lat);
    return run;
}

static void
s_run_destroy (run_t **run_p)
{
    run_t *run = *run_p;
    for (uint32_t p = 0; p < run->producers; p++) {
        free (run->producer [p].receipts);
        free (run->producer [p].seq_of);
        free (run->producer [p].sent_ns);
        free (run->producer [p].rlat);
    }
    free (run->consumer.seen);
    free (run->consumer.count_of);
    free (run->consumer.seq_of);
    free (run->consumer.lat);
    free (run);
    *run_p = NULL;
}

//  A failed or stuck run: keep the broker's folder for a post-mortem.
static void
s_keep_folder (run_t *run)
{
    setenv ("KIM_TEST_KEEP", "1", 1);
    fprintf (stderr, "%s: broker folder kept for inspection: %s (broker.log)\n",
             run->name, kim_testbroker_dir (run->broker));
}

typedef void (s_tick_fn) (run_t *run, void *arg);

//  Waits for the threads, ticking every 5 ms. Returns 0, or -1 when the run
//  made no progress for KIM_BENCH_STALL_S (threads then get KIM_BENCH_LEAVE_S
//  to leave; a thread that cannot leave ends the process with a message).
static int
s_run_wait (run_t *run, pthread_t *threads [], size_t count, s_tick_fn *tick, void *arg)
{
    bool joined [KIM_BENCH_PRODUCERS_MAX + 1] = { false };
    size_t left = count;
    uint64_t last_progress = UINT64_MAX;
    uint64_t last_change = s_now_ns ();
    while (left) {
        for (size_t i = 0; i < count; i++)
            if (!joined [i] && pthread_tryjoin_np (*threads [i], NULL) == 0) {
                joined [i] = true;
                left--;
            }
        if (tick)
            tick (run, arg);
        uint64_t progress = atomic_load (&run->receipted) + atomic_load (&run->delivered);
        uint64_t now = s_now_ns ();
        if (progress != last_progress) {
            last_progress = progress;
            last_change = now;
        }
        if (left && now - last_change > KIM_BENCH_STALL_S * 1000000000ull) {
            fprintf (stderr, "%s: stuck: no progress for %d s (receipted %llu of %llu, "
                     "delivered %llu of %llu)\n", run->name, KIM_BENCH_STALL_S,
                     (unsigned long long) atomic_load (&run->receipted),
                     (unsigned long long) run->total,
                     (unsigned long long) atomic_load (&run->delivered),
                     (unsigned long long) (run->with_consumer? run->total: 0));
            atomic_store (&run->abort, true);
            s_keep_folder (run);
            struct timespec until;
            clock_gettime (CLOCK_REALTIME, &until);
            until.tv_sec += KIM_BENCH_LEAVE_S;
            for (size_t i = 0; i < count; i++)
                if (!joined [i] && pthread_timedjoin_np (*threads [i], NULL, &until) != 0) {
                    fprintf (stderr, "%s: a client thread does not return; giving up\n",
                             run->name);
                    kim_testbroker_stop (run->broker, SIGKILL);
                    _exit (1);
                }
            return -1;
        }
        if (left)
            s_sleep_ms (5);
    }
    return 0;
}

//  Starts the producers (and the consumer when it runs along) and waits.
static int
s_run_go (run_t *run, s_tick_fn *tick, void *arg)
{
    run->consumer_waits = run->with_consumer;
    unsigned parties = run->producers + (run->consumer_waits? 1: 0);
    KIM_CHECK (pthread_barrier_init (&run->barrier, NULL, parties) == 0);
    pthread_t *threads [KIM_BENCH_PRODUCERS_MAX + 1];
    size_t count = 0;
    if (run->with_consumer) {
        KIM_CHECK (pthread_create (&run->consumer.thread, NULL, s_consumer_run,
                                   &run->consumer) == 0);
        threads [count++] = &run->consumer.thread;
    }
    for (uint32_t p = 0; p < run->producers; p++) {
        KIM_CHECK (pthread_create (&run->producer [p].thread, NULL, s_producer_run,
                                   &run->producer [p]) == 0);
        threads [count++] = &run->producer [p].thread;
    }
    int rc = s_run_wait (run, threads, count, tick, arg);
    pthread_barrier_destroy (&run->barrier);
    run->consumer_waits = false;
    return rc;
}

//  Drains the mailbox with a consumer alone (RSS workload).
static int
s_run_drain (run_t *run)
{
    KIM_CHECK (pthread_create (&run->consumer.thread, NULL, s_consumer_run, &run->consumer) == 0);
    pthread_t *threads [1] = { &run->consumer.thread };
    return s_run_wait (run, threads, 1, NULL, NULL);
}

//  The counts: every message receipted once, every receipted seq delivered
//  with the message that was receipted under it. Writes why not into detail.
static bool
s_run_check (run_t *run, bool delivered, char *detail, size_t detail_size)
{
    for (uint32_t p = 0; p < run->producers; p++) {
        producer_t *producer = &run->producer [p];
        if (producer->failed) {
            snprintf (detail, detail_size, "producer %u: %.640s", producer->id,
                      producer->text);
            return false;
        }
        if (producer->receipted != run->per_producer || producer->dup_receipts) {
            snprintf (detail, detail_size, "producer %u: %llu of %u receipted, %llu twice",
                      producer->id, (unsigned long long) producer->receipted,
                      run->per_producer, (unsigned long long) producer->dup_receipts);
            return false;
        }
    }
    if (!delivered)
        return true;
    consumer_t *consumer = &run->consumer;
    if (consumer->failed) {
        snprintf (detail, detail_size, "%.640s", consumer->text);
        return false;
    }
    if (consumer->distinct != run->total || consumer->strays || consumer->redeliveries) {
        snprintf (detail, detail_size,
                  "delivered %llu distinct of %llu, %llu redelivered, %llu strays",
                  (unsigned long long) consumer->distinct, (unsigned long long) run->total,
                  (unsigned long long) consumer->redeliveries,
                  (unsigned long long) consumer->strays);
        return false;
    }
    for (uint32_t p = 0; p < run->producers; p++)
        for (uint32_t i = 0; i < run->per_producer; i++) {
            size_t slot = (size_t) p * run->per_producer + i;
            if (consumer->count_of [slot] != 1
            ||  consumer->seq_of [slot] != run->producer [p].seq_of [i]) {
                snprintf (detail, detail_size,
                          "m%u-%u: delivered %u times, as seq %llu; receipted as seq %llu",
                          p + 1, i, consumer->count_of [slot],
                          (unsigned long long) consumer->seq_of [slot],
                          (unsigned long long) run->producer [p].seq_of [i]);
                return false;
            }
        }
    if (!consumer->status_ok || consumer->status.mailbox || consumer->status.in_flight) {
        snprintf (detail, detail_size, "after the run the broker still holds %llu (%llu in "
                  "flight) for %s%s", (unsigned long long) consumer->status.mailbox,
                  (unsigned long long) consumer->status.in_flight, KIM_BENCH_SINK,
                  consumer->status_ok? "": " (STATUS failed)");
        return false;
    }
    return true;
}

static void
s_run_figures (run_t *run, result_t *result)
{
    uint64_t first = UINT64_MAX, last_receipt = 0;
    size_t rlat_count = 0;
    for (uint32_t p = 0; p < run->producers; p++) {
        producer_t *producer = &run->producer [p];
        if (producer->first_send_ns && producer->first_send_ns < first)
            first = producer->first_send_ns;
        if (producer->last_receipt_ns > last_receipt)
            last_receipt = producer->last_receipt_ns;
        rlat_count += producer->rlat_count;
        result->reconnects += producer->reconnects;
    }
    result->producers = run->producers;
    result->messages = run->total;
    result->payload = run->payload;
    if (first != UINT64_MAX && last_receipt > first)
        result->receipted_per_s = run->total / ((last_receipt - first) / 1e9);
    result->seconds = last_receipt > first? (last_receipt - first) / 1e9: 0;
    if (run->with_consumer && run->consumer.last_ack_ns > first) {
        result->seconds = (run->consumer.last_ack_ns - first) / 1e9;
        result->acked_per_s = run->total / result->seconds;
        result->has_latency = true;
        s_percentiles (run->consumer.lat, run->consumer.lat_count,
                       &result->p50_us, &result->p99_us, &result->max_us);
        result->redeliveries = run->consumer.redeliveries;
        result->reconnects += run->consumer.reconnects;
    }
    uint64_t *rlat = (uint64_t *) malloc ((rlat_count + 1) * sizeof (uint64_t));
    KIM_CHECK (rlat);
    size_t n = 0;
    for (uint32_t p = 0; p < run->producers; p++) {
        memcpy (rlat + n, run->producer [p].rlat, run->producer [p].rlat_count * sizeof (uint64_t));
        n += run->producer [p].rlat_count;
    }
    result->has_receipt_latency = n > 0;
    s_percentiles (rlat, n, &result->r_p50_us, &result->r_p99_us, &result->r_max_us);
    free (rlat);
}

//  --------------------------------------------------------------------------
//  Brokers

static kim_testbroker_t *
s_broker_start (const options_t *opt, bool sync, const char *name)
{
    static const char *orgs [] = {
        KIM_BENCH_SINK, "kim.p1", "kim.p2", "kim.p3", "kim.p4", "kim.p5", "kim.p6",
        "kim.p7", "kim.p8", "kim.p9", "kim.p10", "kim.p11", "kim.p12", "kim.p13",
        "kim.p14", "kim.p15", "kim.p16", NULL
    };
    //  The harness writes `extra` right after the broker section's keys and
    //  before "orgs", so a store section can follow the broker lines.
    char extra [2048];
    snprintf (extra, sizeof extra, "%s%s%s%s", opt->broker_extra,
              (!sync || opt->store_extra [0])? "store\n": "",
              sync? "": "    sync = 0\n", opt->store_extra);
    kim_testbroker_t *broker = kim_testbroker_new (orgs, extra);
    if (!broker) {
        fprintf (stderr, "%s: cannot make a test broker folder\n", name);
        return NULL;
    }
    //  The brokers kim is compared with carry payloads as they are; sealing
    //  is client-side work (about 120 µs per 1 KiB message here) measured
    //  on its own with --sealed.
    kim_testbroker_plaintext (broker, !opt->sealed);
    if (kim_testbroker_start (broker)) {
        fprintf (stderr, "%s: the broker did not start\n", name);
        setenv ("KIM_TEST_KEEP", "1", 1);
        fprintf (stderr, "%s: broker folder kept: %s\n", name, kim_testbroker_dir (broker));
        kim_testbroker_destroy (&broker);
        return NULL;
    }
    return broker;
}

static void
s_broker_figures (kim_testbroker_t *broker, result_t *result)
{
    pid_t pid = kim_testbroker_pid (broker);
    result->rss_kb = s_proc_kb (pid, "VmRSS");
    result->hwm_kb = s_proc_kb (pid, "VmHWM");
}

//  --------------------------------------------------------------------------
//  Workloads

//  W1 and W3: N producers flat out to one consumer.
static void
s_workload_flow (const options_t *opt, const char *name, bool sync, result_t *result)
{
    snprintf (result->name, sizeof result->name, "%s", name);
    result->ran = true;
    kim_testbroker_t *broker = s_broker_start (opt, sync, name);
    if (!broker) {
        snprintf (result->detail, sizeof result->detail, "broker did not start");
        return;
    }
    run_t *run = s_run_new (opt, name, broker, opt->producers, opt->messages, opt->payload);
    run->with_consumer = true;
    double broker_cpu = s_proc_cpu (kim_testbroker_pid (broker));
    double clients_cpu = s_proc_cpu (getpid ());
    int rc = s_run_go (run, NULL, NULL);
    result->cpu_broker_s = s_proc_cpu (kim_testbroker_pid (broker)) - broker_cpu;
    result->cpu_clients_s = s_proc_cpu (getpid ()) - clients_cpu;
    s_broker_figures (broker, result);
    s_run_figures (run, result);
    if (rc)
        snprintf (result->detail, sizeof result->detail, "stuck (see stderr)");
    else
        result->ok = s_run_check (run, true, result->detail, sizeof result->detail);
    if (!result->ok)
        s_keep_folder (run);
    s_run_destroy (&run);
    kim_testbroker_destroy (&broker);
}

//  W2: one producer, paced; end-to-end latency at the consumer.
static void
s_workload_latency (const options_t *opt, result_t *result)
{
    snprintf (result->name, sizeof result->name, "W2");
    result->ran = true;
    kim_testbroker_t *broker = s_broker_start (opt, true, "W2");
    if (!broker) {
        snprintf (result->detail, sizeof result->detail, "broker did not start");
        return;
    }
    run_t *run = s_run_new (opt, "W2", broker, 1, opt->w2_rate * opt->w2_seconds, opt->payload);
    run->with_consumer = true;
    run->rate = opt->w2_rate;
    double broker_cpu = s_proc_cpu (kim_testbroker_pid (broker));
    double clients_cpu = s_proc_cpu (getpid ());
    int rc = s_run_go (run, NULL, NULL);
    result->cpu_broker_s = s_proc_cpu (kim_testbroker_pid (broker)) - broker_cpu;
    result->cpu_clients_s = s_proc_cpu (getpid ()) - clients_cpu;
    s_broker_figures (broker, result);
    s_run_figures (run, result);
    if (rc)
        snprintf (result->detail, sizeof result->detail, "stuck (see stderr)");
    else
        result->ok = s_run_check (run, true, result->detail, sizeof result->detail);
    if (!result->ok)
        s_keep_folder (run);
    s_run_destroy (&run);
    kim_testbroker_destroy (&broker);
}

typedef struct {
    result_t *result;
    pid_t pid;
    int next;                   //  next RSS point to take
} rss_watch_t;

static void
s_rss_tick (run_t *run, void *arg)
{
    rss_watch_t *watch = (rss_watch_t *) arg;
    uint64_t done = atomic_load (&run->receipted);
    while (watch->next < KIM_BENCH_RSS_POINTS
    &&     done >= watch->result->marks [watch->next]) {
        watch->result->rss_at [watch->next] = s_proc_kb (watch->pid, "VmRSS");
        watch->result->anon_at [watch->next] = s_proc_kb (watch->pid, "RssAnon");
        watch->next++;
    }
}

//  RSS: fill one mailbox while its recipient is offline; sample the broker.
static void
s_workload_rss (const options_t *opt, result_t *result)
{
    snprintf (result->name, sizeof result->name, "RSS");
    result->ran = true;
    kim_testbroker_t *broker = s_broker_start (opt, true, "RSS");
    if (!broker) {
        snprintf (result->detail, sizeof result->detail, "broker did not start");
        return;
    }
    uint32_t per = opt->fill / opt->producers;
    run_t *run = s_run_new (opt, "RSS", broker, opt->producers, per, opt->fill_payload);
    for (int i = 0; i < KIM_BENCH_RSS_POINTS; i++)
        result->marks [i] = run->total * (uint64_t) i / (KIM_BENCH_RSS_POINTS - 1);
    rss_watch_t watch = { result, kim_testbroker_pid (broker), 0 };
    s_rss_tick (run, &watch);           //  the 0 point, before anyone connects
    double broker_cpu = s_proc_cpu (watch.pid);
    double clients_cpu = s_proc_cpu (getpid ());
    int rc = s_run_go (run, s_rss_tick, &watch);
    s_rss_tick (run, &watch);
    result->cpu_broker_s = s_proc_cpu (watch.pid) - broker_cpu;
    result->cpu_clients_s = s_proc_cpu (getpid ()) - clients_cpu;
    s_run_figures (run, result);
    if (rc)
        snprintf (result->detail, sizeof result->detail, "stuck while filling");
    else
        result->ok = s_run_check (run, false, result->detail, sizeof result->detail);

    if (result->ok && opt->drain) {
        run->with_consumer = true;      //  counts deliveries from here on
        uint64_t start = s_now_ns ();
        rc = s_run_drain (run);
        uint64_t end = run->consumer.last_ack_ns;
        result->drained = run->consumer.distinct;
        if (end > start)
            result->drain_per_s = run->consumer.distinct / ((end - start) / 1e9);
        result->rss_after_drain = s_proc_kb (watch.pid, "VmRSS");
        result->anon_after_drain = s_proc_kb (watch.pid, "RssAnon");
        if (rc)
            snprintf (result->detail, sizeof result->detail, "stuck while draining");
        result->ok = rc == 0 && s_run_check (run, true, result->detail, sizeof result->detail);
        result->has_latency = false;    //  latency of a backlog says nothing
    }
    s_broker_figures (broker, result);
    if (!result->ok)
        s_keep_folder (run);
    s_run_destroy (&run);
    kim_testbroker_destroy (&broker);
}

//  --------------------------------------------------------------------------
//  Ceilings: the tools of ../shared/bench and our kim-ceiling-curve, built
//  next to kim-bench.

static bool
s_tool_path (const char *name, char *path, size_t size)
{
    char env [64];
    snprintf (env, sizeof env, "%s", name);
    for (char *c = env; *c; c++)
        *c = *c == '-'? '_': (char) (*c >= 'a' && *c <= 'z'? *c - 32: *c);
    const char *from_env = getenv (env);    //  KIM_CEILING_ZMQ, _CURVE, _LMDB
    if (from_env) {
        snprintf (path, size, "%s", from_env);
        return access (path, X_OK) == 0;
    }
    char self [PATH_MAX];
    ssize_t len = readlink ("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return false;
    self [len] = 0;
    char *slash = strrchr (self, '/');
    if (slash)
        *slash = 0;
    snprintf (path, size, "%.3800s/%.64s", self, name);
    return access (path, X_OK) == 0;
}

static pid_t
s_spawn (char *const argv [], int stdout_fd)
{
    pid_t pid = fork ();
    if (pid == 0) {
        int null = open ("/dev/null", O_WRONLY);
        dup2 (stdout_fd >= 0? stdout_fd: null, STDOUT_FILENO);
        if (stdout_fd < 0)
            dup2 (null, STDERR_FILENO);
        execv (argv [0], argv);
        _exit (127);
    }
    return pid;
}

//  Runs a tool and returns its last stdout line (the JSON), or false.
static bool
s_run_tool (char *const argv [], int timeout_s, char *line, size_t size)
{
    int fds [2];
    if (pipe (fds))
        return false;
    pid_t pid = s_spawn (argv, fds [1]);
    close (fds [1]);
    if (pid < 0) {
        close (fds [0]);
        return false;
    }
    char buffer [8192];
    size_t used = 0;
    uint64_t deadline = s_now_ns () + (uint64_t) timeout_s * 1000000000ull;
    bool timed_out = false;
    for (;;) {
        uint64_t now = s_now_ns ();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd item = { fds [0], POLLIN, 0 };
        int wait_ms = (int) ((deadline - now) / 1000000ull) + 1;
        if (poll (&item, 1, wait_ms) <= 0)
            continue;
        ssize_t got = read (fds [0], buffer + used, sizeof buffer - 1 - used);
        if (got <= 0)
            break;
        used += (size_t) got;
        if (used == sizeof buffer - 1)
            break;
    }
    close (fds [0]);
    if (timed_out) {
        fprintf (stderr, "ceiling: %s timed out after %d s\n", argv [0], timeout_s);
        kill (pid, SIGKILL);
    }
    int status = 0;
    waitpid (pid, &status, 0);
    buffer [used] = 0;
    char *json = NULL;
    for (char *at = strchr (buffer, '{'); at; at = strchr (at + 1, '{'))
        if (at == buffer || at [-1] == '\n')
            json = at;
    if (!json || timed_out)
        return false;
    size_t length = strcspn (json, "\n");
    if (length >= size)
        length = size - 1;
    memcpy (line, json, length);
    line [length] = 0;
    return true;
}

static void
s_ceilings (const options_t *opt, ceilings_t *ceil)
{
    char path [PATH_MAX], line [4096];
    if (s_tool_path ("kim-ceiling-zmq", path, sizeof path)) {
        char front [16], back [16], producers [16], messages [16], window [16], payload [16];
        snprintf (front, sizeof front, "%d", s_free_port ());
        snprintf (back, sizeof back, "%d", s_free_port ());
        snprintf (producers, sizeof producers, "%u", opt->producers);
        snprintf (messages, sizeof messages, "%u", opt->messages);
        snprintf (window, sizeof window, "%u", opt->send_window);
        snprintf (payload, sizeof payload, "%u", opt->payload);
        char *broker_argv [] = { path, "broker", front, back, "60", NULL };
        pid_t broker = s_spawn (broker_argv, -1);
        s_sleep_ms (100);
        char *client_argv [] = { path, "client", front, back, producers, messages, window,
                                 payload, "0", "60", "W3", NULL };
        if (broker > 0 && s_run_tool (client_argv, 90, line, sizeof line)
        &&  s_json_number (line, "ack_rate", &ceil->zmq_ack_rate)) {
            ceil->zmq_ran = true;
            s_json_number (line, "confirm_rate", &ceil->zmq_confirm_rate);
            s_json_number (line, "p50_us", &ceil->zmq_p50_us);
            s_json_number (line, "p99_us", &ceil->zmq_p99_us);
        }
        else
            fprintf (stderr, "ceiling: ZeroMQ run failed\n");
        if (broker > 0) {
            kill (broker, SIGKILL);
            waitpid (broker, NULL, 0);
        }
    }
    else
        fprintf (stderr, "ceiling: kim-ceiling-zmq not built (needs ../shared/bench); skipped\n");

    //  The same shape with CurveZMQ on every socket, as kim always runs: one
    //  process that forks its own forwarder and bounds its own waits.
    if (s_tool_path ("kim-ceiling-curve", path, sizeof path)) {
        char producers [16], messages [16], window [16], payload [16];
        snprintf (producers, sizeof producers, "%u", opt->producers);
        snprintf (messages, sizeof messages, "%u", opt->messages);
        snprintf (window, sizeof window, "%u", opt->send_window);
        snprintf (payload, sizeof payload, "%u", opt->payload);
        char *curve_argv [] = { path, "--producers", producers, "--messages", messages,
                                "--window", window, "--payload", payload, "--limit", "60",
                                NULL };
        if (s_run_tool (curve_argv, 90, line, sizeof line)
        &&  s_json_number (line, "ack_rate", &ceil->curve_ack_rate)
        &&  ceil->curve_ack_rate > 0) {
            ceil->curve_ran = true;
            s_json_number (line, "confirm_rate", &ceil->curve_confirm_rate);
            s_json_number (line, "p50_us", &ceil->curve_p50_us);
            s_json_number (line, "p99_us", &ceil->curve_p99_us);
        }
        else
            fprintf (stderr, "ceiling: ZeroMQ+CURVE run failed\n");
    }
    else
        fprintf (stderr, "ceiling: kim-ceiling-curve not found beside kim-bench "
                 "(or KIM_CEILING_CURVE); skipped\n");

    if (s_tool_path ("kim-ceiling-lmdb", path, sizeof path)) {
        char folder [] = "/tmp/kim-ceiling-XXXXXX";
        if (mkdtemp (folder)) {
            char dir [sizeof folder + 16];
            snprintf (dir, sizeof dir, "%s/b256", folder);
            char *argv256 [] = { path, dir, "100000", "1100", "256", "120", NULL };
            if (s_run_tool (argv256, 150, line, sizeof line)
            &&  s_json_number (line, "records_per_s", &ceil->lmdb_rate)) {
                ceil->lmdb_ran = true;
                s_json_number (line, "commit_us", &ceil->lmdb_commit_us);
            }
            snprintf (dir, sizeof dir, "%s/b1", folder);
            char *argv1 [] = { path, dir, "2000", "1100", "1", "60", NULL };
            if (s_run_tool (argv1, 90, line, sizeof line)
            &&  s_json_number (line, "records_per_s", &ceil->lmdb1_rate)) {
                ceil->lmdb1_ran = true;
                s_json_number (line, "commit_us", &ceil->lmdb1_commit_us);
            }
            char command [sizeof folder + 16];
            snprintf (command, sizeof command, "rm -rf '%s'", folder);
            if (system (command) != 0)
                fprintf (stderr, "ceiling: could not remove %s\n", folder);
        }
        if (!ceil->lmdb_ran)
            fprintf (stderr, "ceiling: LMDB run failed\n");
    }
    else
        fprintf (stderr, "ceiling: kim-ceiling-lmdb not built (needs ../shared/bench); skipped\n");
}

//  --------------------------------------------------------------------------
//  Several runs (--repeat): medians and ranges

static int
s_cmp_double (const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y? -1: x > y;
}

//  The median (the mean of the middle two when n is even), the smallest and
//  the largest of n > 0 values; sorts them in place.
static void
s_stats (double values [], size_t n, double *median, double *min, double *max)
{
    qsort (values, n, sizeof values [0], s_cmp_double);
    *min = values [0];
    *max = values [n - 1];
    *median = n % 2? values [n / 2]: (values [n / 2 - 1] + values [n / 2]) / 2;
}

//  One figure over the n runs in `runs`: a rate or a time as it is, a count
//  (kB, messages) rounded to the nearest whole.
#define S_SUMMARISE_FIGURE(field) do { \
    for (size_t i_ = 0; i_ < n; i_++) \
        values [i_] = runs [i_]->field; \
    s_stats (values, n, &self->median.field, &self->min.field, &self->max.field); \
} while (0)

#define S_SUMMARISE_COUNT(field) do { \
    double median_, min_, max_; \
    for (size_t i_ = 0; i_ < n; i_++) \
        values [i_] = (double) runs [i_]->field; \
    s_stats (values, n, &median_, &min_, &max_); \
    self->median.field = (uint64_t) (median_ + 0.5); \
    self->min.field = (uint64_t) min_; \
    self->max.field = (uint64_t) max_; \
} while (0)

//  Summarises the runs of one workload (results [0 .. count - 1], those that
//  ran): every figure over the runs that passed. A failed run's figures are
//  no figures; its reason goes into the summary's detail.
static void
s_summarise (const result_t results [], size_t count, summary_t *self)
{
    memset (self, 0, sizeof *self);
    const result_t *runs [KIM_BENCH_REPEAT_MAX];
    double values [KIM_BENCH_REPEAT_MAX];
    const result_t *failure = NULL;
    size_t failed_run = 0, n = 0;
    for (size_t k = 0; k < count && k < KIM_BENCH_REPEAT_MAX; k++) {
        if (!results [k].ran)
            continue;
        if (results [k].ok)
            runs [n++] = &results [k];
        else {
            self->failed++;
            if (!failure) {
                failure = &results [k];
                failed_run = k + 1;
            }
        }
    }
    if (n == 0 && !failure)
        return;                 //  the workload did not run
    self->runs = (uint32_t) n;
    //  Names, counts and which figures exist come from a run.
    self->median = n? *runs [0]: *failure;
    self->min = self->median;
    self->max = self->median;
    if (n) {
        S_SUMMARISE_FIGURE (seconds);
        S_SUMMARISE_FIGURE (receipted_per_s);
        S_SUMMARISE_FIGURE (acked_per_s);
        S_SUMMARISE_FIGURE (p50_us);
        S_SUMMARISE_FIGURE (p99_us);
        S_SUMMARISE_FIGURE (max_us);
        S_SUMMARISE_FIGURE (r_p50_us);
        S_SUMMARISE_FIGURE (r_p99_us);
        S_SUMMARISE_FIGURE (r_max_us);
        S_SUMMARISE_FIGURE (cpu_broker_s);
        S_SUMMARISE_FIGURE (cpu_clients_s);
        S_SUMMARISE_FIGURE (drain_per_s);
        S_SUMMARISE_COUNT (rss_kb);
        S_SUMMARISE_COUNT (hwm_kb);
        S_SUMMARISE_COUNT (redeliveries);
        S_SUMMARISE_COUNT (reconnects);
        S_SUMMARISE_COUNT (rss_after_drain);
        S_SUMMARISE_COUNT (anon_after_drain);
        S_SUMMARISE_COUNT (drained);
        for (int i = 0; i < KIM_BENCH_RSS_POINTS; i++) {
            S_SUMMARISE_COUNT (rss_at [i]);
            S_SUMMARISE_COUNT (anon_at [i]);
        }
    }
    self->median.ok = self->failed == 0;
    if (failure)
        snprintf (self->median.detail, sizeof self->median.detail, "run %zu of %zu: %.960s",
                  failed_run, count, failure->detail);
}

//  One ceiling figure over the rounds in which that tool ran.
#define S_SUMMARISE_CEILING(ran, field) do { \
    size_t n_ = 0; \
    for (size_t k_ = 0; k_ < count && k_ < KIM_BENCH_REPEAT_MAX; k_++) \
        if (rounds [k_].ran) \
            values [n_++] = rounds [k_].field; \
    if (n_) \
        s_stats (values, n_, &self->median.field, &self->min.field, &self->max.field); \
} while (0)

static void
s_summarise_ceilings (const ceilings_t rounds [], size_t count, ceiling_summary_t *self)
{
    memset (self, 0, sizeof *self);
    double values [KIM_BENCH_REPEAT_MAX];
    for (size_t k = 0; k < count && k < KIM_BENCH_REPEAT_MAX; k++) {
        self->zmq_runs += rounds [k].zmq_ran;
        self->curve_runs += rounds [k].curve_ran;
        self->lmdb_runs += rounds [k].lmdb_ran;
        self->lmdb1_runs += rounds [k].lmdb1_ran;
    }
    self->median.zmq_ran = self->zmq_runs > 0;
    self->median.curve_ran = self->curve_runs > 0;
    self->median.lmdb_ran = self->lmdb_runs > 0;
    self->median.lmdb1_ran = self->lmdb1_runs > 0;
    S_SUMMARISE_CEILING (zmq_ran, zmq_ack_rate);
    S_SUMMARISE_CEILING (zmq_ran, zmq_confirm_rate);
    S_SUMMARISE_CEILING (zmq_ran, zmq_p50_us);
    S_SUMMARISE_CEILING (zmq_ran, zmq_p99_us);
    S_SUMMARISE_CEILING (curve_ran, curve_ack_rate);
    S_SUMMARISE_CEILING (curve_ran, curve_confirm_rate);
    S_SUMMARISE_CEILING (curve_ran, curve_p50_us);
    S_SUMMARISE_CEILING (curve_ran, curve_p99_us);
    S_SUMMARISE_CEILING (lmdb_ran, lmdb_rate);
    S_SUMMARISE_CEILING (lmdb_ran, lmdb_commit_us);
    S_SUMMARISE_CEILING (lmdb1_ran, lmdb1_rate);
    S_SUMMARISE_CEILING (lmdb1_ran, lmdb1_commit_us);
}

//  --------------------------------------------------------------------------
//  Reporting

//  Labels a JSON line after its "workload": one run of several (run > 0),
//  or the summary of `runs` runs (runs > 0); nothing for a single run.
static void
s_print_tag (uint32_t run, uint32_t runs)
{
    if (runs)
        printf (",\"summary\":true,\"runs\":%u", runs);
    else
    if (run)
        printf (",\"run\":%u", run);
}

//  The smallest and largest of a summarised headline figure.
static void
s_print_range (const char *key, double min, double max, int decimals)
{
    printf (",\"%s_min\":%.*f,\"%s_max\":%.*f", key, decimals, min, key, decimals, max);
}

//  One workload's JSON line: one run (`run` > 0 when there are several), or
//  with `summary`, the medians of several runs (r is summary->median) and
//  the range of the headline figures. `ceil` is the round's ceilings, or
//  their medians for a summary.
static void
s_print_json (const options_t *opt, const result_t *r, const ceilings_t *ceil, uint32_t run,
              const summary_t *summary)
{
    if (summary && summary->runs == 0) {
        //  Every run failed: no figures to summarise.
        printf ("{\"workload\":\"%s\",\"summary\":true,\"runs\":0,\"failed_runs\":%u,"
                "\"ok\":false,\"error\":\"%s\"}\n", r->name, summary->failed, r->detail);
        fflush (stdout);
        return;
    }
    bool latency_first = s_streq (r->name, "W2");   //  W2's headline is its latency
    printf ("{\"workload\":\"%s\"", r->name);
    s_print_tag (run, summary? summary->runs: 0);
    if (summary && summary->failed)
        printf (",\"failed_runs\":%u", summary->failed);
    printf (",\"ok\":%s,\"transport\":\"%s\",\"producers\":%u,"
            "\"messages\":%llu,\"payload\":%u,\"seconds\":%.3f,\"receipted_per_s\":%.0f",
            r->ok? "true": "false", opt->tcp? "tcp": "ipc", r->producers,
            (unsigned long long) r->messages, r->payload, r->seconds, r->receipted_per_s);
    if (summary && !latency_first)
        s_print_range ("receipted_per_s", summary->min.receipted_per_s,
                       summary->max.receipted_per_s, 0);
    if (r->acked_per_s > 0) {
        printf (",\"acked_per_s\":%.0f", r->acked_per_s);
        if (summary && !latency_first)
            s_print_range ("acked_per_s", summary->min.acked_per_s, summary->max.acked_per_s, 0);
    }
    if (r->has_latency) {
        printf (",\"p50_us\":%.1f", r->p50_us);
        if (summary && latency_first)
            s_print_range ("p50_us", summary->min.p50_us, summary->max.p50_us, 1);
        printf (",\"p99_us\":%.1f", r->p99_us);
        if (summary && latency_first)
            s_print_range ("p99_us", summary->min.p99_us, summary->max.p99_us, 1);
        printf (",\"max_us\":%.1f", r->max_us);
    }
    if (r->has_receipt_latency)
        printf (",\"receipt_p50_us\":%.1f,\"receipt_p99_us\":%.1f,\"receipt_max_us\":%.1f",
                r->r_p50_us, r->r_p99_us, r->r_max_us);
    printf (",\"broker_rss_kb\":%llu,\"broker_hwm_kb\":%llu,\"reconnects\":%llu,"
            "\"cpu_broker_s\":%.2f,\"cpu_clients_s\":%.2f",
            (unsigned long long) r->rss_kb, (unsigned long long) r->hwm_kb,
            (unsigned long long) r->reconnects, r->cpu_broker_s, r->cpu_clients_s);
    if (s_streq (r->name, "W1") && ceil->zmq_ran && r->acked_per_s > 0)
        printf (",\"zmq_ack_rate\":%.0f,\"zmq_ratio\":%.3f", ceil->zmq_ack_rate,
                r->acked_per_s / ceil->zmq_ack_rate);
    if (s_streq (r->name, "W1") && ceil->curve_ran && r->acked_per_s > 0)
        printf (",\"zmq_curve_ack_rate\":%.0f,\"zmq_curve_ratio\":%.3f", ceil->curve_ack_rate,
                r->acked_per_s / ceil->curve_ack_rate);
    if (s_streq (r->name, "RSS")) {
        printf (",\"fill_marks\":[");
        for (int i = 0; i < KIM_BENCH_RSS_POINTS; i++)
            printf ("%s%llu", i? ",": "", (unsigned long long) r->marks [i]);
        printf ("],\"rss_kb\":[");
        for (int i = 0; i < KIM_BENCH_RSS_POINTS; i++)
            printf ("%s%llu", i? ",": "", (unsigned long long) r->rss_at [i]);
        printf ("],\"rss_anon_kb\":[");
        for (int i = 0; i < KIM_BENCH_RSS_POINTS; i++)
            printf ("%s%llu", i? ",": "", (unsigned long long) r->anon_at [i]);
        printf ("]");
        if (r->drained) {
            printf (",\"drained\":%llu,\"drain_per_s\":%.0f", (unsigned long long) r->drained,
                    r->drain_per_s);
            if (summary)
                s_print_range ("drain_per_s", summary->min.drain_per_s,
                               summary->max.drain_per_s, 0);
            printf (",\"rss_after_drain_kb\":%llu,\"rss_anon_after_drain_kb\":%llu",
                    (unsigned long long) r->rss_after_drain,
                    (unsigned long long) r->anon_after_drain);
        }
    }
    if (!r->ok)
        printf (",\"error\":\"%s\"", r->detail);
    printf ("}\n");
    fflush (stdout);
}

//  The ceilings' JSON lines: one round (`run` > 0 when there are several),
//  or with `summary`, their medians (ceil is summary->median) and ranges.
static void
s_print_ceilings_json (const ceilings_t *ceil, uint32_t run, const ceiling_summary_t *summary)
{
    if (ceil->zmq_ran) {
        printf ("{\"workload\":\"ceiling_zmq\"");
        s_print_tag (run, summary? summary->zmq_runs: 0);
        printf (",\"ack_rate\":%.0f", ceil->zmq_ack_rate);
        if (summary)
            s_print_range ("ack_rate", summary->min.zmq_ack_rate, summary->max.zmq_ack_rate, 0);
        printf (",\"confirm_rate\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
                ceil->zmq_confirm_rate, ceil->zmq_p50_us, ceil->zmq_p99_us);
    }
    if (ceil->curve_ran) {
        printf ("{\"workload\":\"ceiling_zmq_curve\"");
        s_print_tag (run, summary? summary->curve_runs: 0);
        printf (",\"ack_rate\":%.0f", ceil->curve_ack_rate);
        if (summary)
            s_print_range ("ack_rate", summary->min.curve_ack_rate,
                           summary->max.curve_ack_rate, 0);
        printf (",\"confirm_rate\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
                ceil->curve_confirm_rate, ceil->curve_p50_us, ceil->curve_p99_us);
    }
    if (ceil->lmdb_ran) {
        printf ("{\"workload\":\"ceiling_lmdb\"");
        s_print_tag (run, summary? summary->lmdb_runs: 0);
        printf (",\"batch\":256,\"records_per_s\":%.0f", ceil->lmdb_rate);
        if (summary)
            s_print_range ("records_per_s", summary->min.lmdb_rate, summary->max.lmdb_rate, 0);
        printf (",\"commit_us\":%.1f}\n", ceil->lmdb_commit_us);
    }
    if (ceil->lmdb1_ran) {
        printf ("{\"workload\":\"ceiling_lmdb\"");
        s_print_tag (run, summary? summary->lmdb1_runs: 0);
        printf (",\"batch\":1,\"records_per_s\":%.0f", ceil->lmdb1_rate);
        if (summary)
            s_print_range ("records_per_s", summary->min.lmdb1_rate, summary->max.lmdb1_rate, 0);
        printf (",\"commit_us\":%.1f}\n", ceil->lmdb1_commit_us);
    }
    fflush (stdout);
}

//  The 1-minute load average: other work on the machine skews every figure.
static double
s_load_average (void)
{
    double load = -1;
    FILE *file = fopen ("/proc/loadavg", "r");
    if (file) {
        if (fscanf (file, "%lf", &load) != 1)
            load = -1;
        fclose (file);
    }
    return load;
}

//  A median's range in the table, "<before>min–max<after>"; "" for a single run.
static const char *
s_range_text (char *text, size_t size, const ceiling_summary_t *summary, const char *before,
              double min, double max, const char *after)
{
    text [0] = 0;
    if (summary)
        snprintf (text, size, "%s%.0f–%.0f%s", before, min, max, after);
    return text;
}

//  The spread of a workload's headline figures over the runs that passed.
static void
s_print_range_line (const summary_t *summary)
{
    const result_t *r = &summary->median, *min = &summary->min, *max = &summary->max;
    printf ("      range of %u run%s:", summary->runs, summary->runs == 1? "": "s");
    if (s_streq (r->name, "W2"))
        printf (" p50 %.0f–%.0f µs, p99 %.0f–%.0f µs", min->p50_us, max->p50_us,
                min->p99_us, max->p99_us);
    else {
        printf (" receipted/s %.0f–%.0f", min->receipted_per_s, max->receipted_per_s);
        if (r->acked_per_s > 0)
            printf (", acked/s %.0f–%.0f", min->acked_per_s, max->acked_per_s);
        if (r->drained)
            printf (", drained/s %.0f–%.0f", min->drain_per_s, max->drain_per_s);
    }
    printf ("\n");
}

//  The table at the end: one run per workload (results), or with several
//  runs the medians and ranges (summaries and ceil_summary, else NULL).
static void
s_print_table (const options_t *opt, const result_t results [], const summary_t summaries [],
               size_t count, const ceilings_t *ceil, const ceiling_summary_t *ceil_summary,
               double load_before)
{
    char runs [64] = "";
    if (summaries)
        snprintf (runs, sizeof runs, "; median of %u runs, range min–max", opt->repeat);
    printf ("\nkim-bench (%s, %s, %s%s; %ld CPUs, 1-min load average %.2f before, %.2f after)\n",
            opt->tcp? "tcp loopback": "ipc", opt->sealed? "sealed payloads": "plaintext payloads",
            opt->smoke? "smoke counts": "full counts", runs,
            sysconf (_SC_NPROCESSORS_ONLN), load_before, s_load_average ());
    printf ("%-5s %-4s %9s %8s %12s %12s %9s %9s %9s %10s\n", "", "ok", "messages", "seconds",
            "receipted/s", "acked/s", "p50 µs", "p99 µs", "max µs", "RSS kB");
    for (size_t i = 0; i < count; i++) {
        const summary_t *summary = summaries? &summaries [i]: NULL;
        const result_t *r = summary? &summary->median: &results [i];
        if (!r->ran)
            continue;
        char p50 [16] = "-", p99 [16] = "-", max [16] = "-", acked [16] = "-";
        if (r->has_latency) {
            snprintf (p50, sizeof p50, "%.0f", r->p50_us);
            snprintf (p99, sizeof p99, "%.0f", r->p99_us);
            snprintf (max, sizeof max, "%.0f", r->max_us);
        }
        if (r->acked_per_s > 0)
            snprintf (acked, sizeof acked, "%.0f", r->acked_per_s);
        printf ("%-5s %-4s %9llu %8.2f %12.0f %12s %9s %9s %9s %10llu\n", r->name,
                r->ok? "yes": "NO", (unsigned long long) r->messages, r->seconds,
                r->receipted_per_s, acked, p50, p99, max, (unsigned long long) r->rss_kb);
        if (summary && summary->runs)
            s_print_range_line (summary);
        printf ("      CPU used: broker %.2f s, clients %.2f s\n", r->cpu_broker_s,
                r->cpu_clients_s);
        if (r->has_receipt_latency)
            printf ("      receipt latency (send -> RECEIPT): p50 %.0f µs, p99 %.0f µs, "
                    "max %.0f µs\n", r->r_p50_us, r->r_p99_us, r->r_max_us);
        if (s_streq (r->name, "RSS")) {
            printf ("      broker RSS kB while filling:");
            for (int k = 0; k < KIM_BENCH_RSS_POINTS; k++)
                printf (" %llu@%llu", (unsigned long long) r->rss_at [k],
                        (unsigned long long) r->marks [k]);
            printf ("\n      of which anonymous:        ");
            for (int k = 0; k < KIM_BENCH_RSS_POINTS; k++)
                printf (" %llu", (unsigned long long) r->anon_at [k]);
            printf ("\n");
            if (r->drained)
                printf ("      drained %llu at %.0f msgs/s; RSS after %llu kB "
                        "(anonymous %llu kB)\n", (unsigned long long) r->drained,
                        r->drain_per_s, (unsigned long long) r->rss_after_drain,
                        (unsigned long long) r->anon_after_drain);
        }
        if (!r->ok)
            printf ("      FAILED: %s\n", r->detail);
        if (summary && summary->failed) {
            if (summary->runs)
                printf ("      (the figures are over the %u run%s that passed)\n",
                        summary->runs, summary->runs == 1? "": "s");
            else
                printf ("      (the figures are the failed run's)\n");
        }
        if (s_streq (r->name, "W1") && ceil->zmq_ran && r->acked_per_s > 0)
            printf ("      W1 / ZeroMQ ceiling: %.1f %% (acked %.0f / %.0f)\n",
                    100.0 * r->acked_per_s / ceil->zmq_ack_rate, r->acked_per_s,
                    ceil->zmq_ack_rate);
        if (s_streq (r->name, "W1") && ceil->curve_ran && r->acked_per_s > 0)
            printf ("      W1 / ZeroMQ+CURVE ceiling: %.1f %% (acked %.0f / %.0f)\n",
                    100.0 * r->acked_per_s / ceil->curve_ack_rate, r->acked_per_s,
                    ceil->curve_ack_rate);
    }
    //  With several rounds, ceil is ceil_summary->median.
    const ceilings_t *min = ceil_summary? &ceil_summary->min: ceil;
    const ceilings_t *max = ceil_summary? &ceil_summary->max: ceil;
    char range [64];
    if (ceil->zmq_ran)
        printf ("ceiling ZeroMQ forward (W1 shape): %.0f acked/s%s, %.0f confirmed/s, "
                "p50 %.0f µs, p99 %.0f µs\n", ceil->zmq_ack_rate,
                s_range_text (range, sizeof range, ceil_summary, " (range ",
                              min->zmq_ack_rate, max->zmq_ack_rate, ")"),
                ceil->zmq_confirm_rate, ceil->zmq_p50_us, ceil->zmq_p99_us);
    if (ceil->curve_ran)
        printf ("ceiling ZeroMQ+CURVE forward (W1 shape): %.0f acked/s%s, %.0f confirmed/s, "
                "p50 %.0f µs, p99 %.0f µs\n", ceil->curve_ack_rate,
                s_range_text (range, sizeof range, ceil_summary, " (range ",
                              min->curve_ack_rate, max->curve_ack_rate, ")"),
                ceil->curve_confirm_rate, ceil->curve_p50_us, ceil->curve_p99_us);
    if (ceil->lmdb_ran)
        printf ("ceiling LMDB append, sync per 256: %.0f records/s (%.0f µs per commit)%s\n",
                ceil->lmdb_rate, ceil->lmdb_commit_us,
                s_range_text (range, sizeof range, ceil_summary, "; range ",
                              min->lmdb_rate, max->lmdb_rate, " records/s"));
    if (ceil->lmdb1_ran)
        printf ("ceiling LMDB append, sync per record: %.0f records/s (%.0f µs per commit)%s\n",
                ceil->lmdb1_rate, ceil->lmdb1_commit_us,
                s_range_text (range, sizeof range, ceil_summary, "; range ",
                              min->lmdb1_rate, max->lmdb1_rate, " records/s"));
    fflush (stdout);
}

//  --------------------------------------------------------------------------

static void
s_usage (void)
{
    fprintf (stderr,
        "usage: kim-bench [--workload W1|W2|W3|RSS|all] [--smoke] [--json] [--ipc] [--sealed]\n"
        "                 [--no-ceilings] [--no-drain] [--messages N] [--producers N]\n"
        "                 [--fill N] [--repeat N] [--set broker/KEY=VALUE | store/KEY=VALUE ...]\n"
        "  W1  durable directed delivery: 4 producers x 25,000 x 1 KiB, window 256, 1 consumer\n"
        "  W2  latency: 1 producer at 1,000 msgs/s for 5 s, durable, 1 consumer\n"
        "  W3  W1 with store/sync = 0 (tests only)\n"
        "  RSS 1,000,000 undelivered 64-byte messages in one mailbox; broker RSS sampled\n"
        "  --sealed  seal payloads end to end as agencies do (default: plaintext, like the\n"
        "            peers the brief compares with)\n"
        "  --repeat N  run each workload (and the ceilings) N times, at most 20, in rounds\n"
        "            (ceilings, W1, W2, W3, RSS; again...), then print their medians\n"
        "  KIM_BROKER names the broker binary; KIM_CEILING_ZMQ/_CURVE/_LMDB the ceiling\n"
        "  tools (default: beside kim-bench).\n");
}

static bool
s_parse_u32 (const char *text, uint32_t *value)
{
    char *end;
    unsigned long parsed = strtoul (text? text: "", &end, 10);
    if (!text || !*text || *end || parsed == 0 || parsed > UINT32_MAX)
        return false;
    *value = (uint32_t) parsed;
    return true;
}

static bool
s_add_setting (options_t *opt, const char *setting)
{
    const char *slash = strchr (setting, '/');
    const char *equals = strchr (setting, '=');
    if (!slash || !equals || equals < slash)
        return false;
    char *target = NULL;
    size_t size = 0;
    if (strncmp (setting, "broker/", 7) == 0) {
        target = opt->broker_extra;
        size = sizeof opt->broker_extra;
    }
    else
    if (strncmp (setting, "store/", 6) == 0) {
        target = opt->store_extra;
        size = sizeof opt->store_extra;
    }
    else
        return false;
    size_t used = strlen (target);
    snprintf (target + used, size - used, "    %.*s = %s\n",
              (int) (equals - slash - 1), slash + 1, equals + 1);
    return true;
}

int
main (int argc, char *argv [])
{
    options_t opt = {
        .workload = "all", .tcp = true, .ceilings = true, .drain = true,
        .producers = 4, .messages = 25000, .payload = 1024,
        .send_window = 256, .recv_window = 1024,
        .w2_rate = 1000, .w2_seconds = 5,
        .fill = 1000000, .fill_payload = 64, .repeat = 1
    };
    bool messages_set = false, fill_set = false, producers_set = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv [i];
        const char *next = i + 1 < argc? argv [i + 1]: NULL;
        if (s_streq (arg, "--workload") && next) {
            opt.workload = next;
            i++;
        }
        else
        if (s_streq (arg, "--smoke"))
            opt.smoke = true;
        else
        if (s_streq (arg, "--json"))
            opt.json = true;
        else
        if (s_streq (arg, "--ipc"))
            opt.tcp = false;
        else
        if (s_streq (arg, "--sealed"))
            opt.sealed = true;
        else
        if (s_streq (arg, "--tcp"))
            opt.tcp = true;
        else
        if (s_streq (arg, "--no-ceilings"))
            opt.ceilings = false;
        else
        if (s_streq (arg, "--no-drain"))
            opt.drain = false;
        else
        if (s_streq (arg, "--messages") && s_parse_u32 (next, &opt.messages)) {
            messages_set = true;
            i++;
        }
        else
        if (s_streq (arg, "--producers") && s_parse_u32 (next, &opt.producers)
        &&  opt.producers <= KIM_BENCH_PRODUCERS_MAX) {
            producers_set = true;
            i++;
        }
        else
        if (s_streq (arg, "--fill") && s_parse_u32 (next, &opt.fill)) {
            fill_set = true;
            i++;
        }
        else
        if (s_streq (arg, "--repeat") && s_parse_u32 (next, &opt.repeat)
        &&  opt.repeat <= KIM_BENCH_REPEAT_MAX)
            i++;
        else
        if (s_streq (arg, "--set") && next && s_add_setting (&opt, next))
            i++;
        else {
            s_usage ();
            return 2;
        }
    }
    if (opt.smoke) {
        //  Tiny counts: the smoke test checks the counts, never the speed.
        if (!producers_set)
            opt.producers = 2;
        if (!messages_set)
            opt.messages = 500;
        if (!fill_set)
            opt.fill = 10000;
        opt.w2_rate = 200;
        opt.w2_seconds = 1;
        opt.ceilings = false;
    }
    if (opt.fill < opt.producers)
        opt.fill = opt.producers;
    bool all = s_streq (opt.workload, "all");
    if (!all && !s_streq (opt.workload, "W1") && !s_streq (opt.workload, "W2")
    &&  !s_streq (opt.workload, "W3") && !s_streq (opt.workload, "RSS")) {
        s_usage ();
        return 2;
    }
    signal (SIGPIPE, SIG_IGN);

    //  A failed run sets KIM_TEST_KEEP to keep its broker's folder; the
    //  runs after it clean up after themselves unless the caller asked.
    bool keep_asked = getenv ("KIM_TEST_KEEP") != NULL;
    double load_before = s_load_average ();
    static const char *names [] = { "W1", "W2", "W3", "RSS" };
    bool selected [4];
    for (int w = 0; w < 4; w++)
        selected [w] = all || s_streq (opt.workload, names [w]);
    bool with_ceilings = opt.ceilings && (selected [0] || selected [2]);

    //  Rounds: each runs the ceilings, then each selected workload once, so
    //  that a slow spell of the machine falls on every workload alike, and a
    //  round is what a single run has always been. results [w * rounds + k]
    //  is round k's run of workload w.
    uint32_t rounds = opt.repeat;
    ceilings_t *ceil = (ceilings_t *) calloc (rounds, sizeof (ceilings_t));
    result_t *results = (result_t *) calloc ((size_t) 4 * rounds, sizeof (result_t));
    KIM_CHECK (ceil && results);
    bool failed [4] = { false };
    for (uint32_t k = 0; k < rounds; k++) {
        uint32_t run = rounds > 1? k + 1: 0;
        char of [32] = "";
        if (run)
            snprintf (of, sizeof of, " (run %u of %u)", run, rounds);
        if (with_ceilings) {
            if (!opt.json)
                printf ("running the ceilings (ZeroMQ forward, ZeroMQ+CURVE forward, "
                        "LMDB append)%s...\n", of);
            fflush (stdout);
            s_ceilings (&opt, &ceil [k]);
            s_print_ceilings_json (&ceil [k], run, NULL);
        }
        for (int w = 0; w < 4; w++) {
            //  A workload that failed once has failed: its figures would not
            //  count, and its folder is kept; the other workloads go on.
            if (!selected [w] || failed [w])
                continue;
            if (!opt.json)
                printf ("running %s%s...\n", names [w], of);
            fflush (stdout);
            result_t *result = &results [w * rounds + k];
            if (w == 0)
                s_workload_flow (&opt, "W1", true, result);
            else
            if (w == 1)
                s_workload_latency (&opt, result);
            else
            if (w == 2)
                s_workload_flow (&opt, "W3", false, result);
            else
                s_workload_rss (&opt, result);
            s_print_json (&opt, result, &ceil [k], run, NULL);
            if (!result->ok) {
                failed [w] = true;
                if (k + 1 < rounds)
                    fprintf (stderr, "%s: run %u failed; its remaining runs are skipped\n",
                             names [w], k + 1);
            }
            if (!keep_asked)
                unsetenv ("KIM_TEST_KEEP");
        }
    }
    if (rounds > 1) {
        ceiling_summary_t ceil_summary;
        s_summarise_ceilings (ceil, rounds, &ceil_summary);
        s_print_ceilings_json (&ceil_summary.median, 0, &ceil_summary);
        summary_t summaries [4];
        for (int w = 0; w < 4; w++) {
            s_summarise (&results [w * rounds], rounds, &summaries [w]);
            if (summaries [w].median.ran)
                s_print_json (&opt, &summaries [w].median, &ceil_summary.median, 0,
                              &summaries [w]);
        }
        if (!opt.json)
            s_print_table (&opt, NULL, summaries, 4, &ceil_summary.median, &ceil_summary,
                           load_before);
    }
    else
    if (!opt.json)
        s_print_table (&opt, results, NULL, 4, &ceil [0], NULL, load_before);
    bool ok = true;
    for (size_t i = 0; i < (size_t) 4 * rounds; i++)
        if (results [i].ran && !results [i].ok)
            ok = false;
    free (results);
    free (ceil);
    return ok? 0: 1;
}
