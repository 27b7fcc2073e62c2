/*  kim_bench_run.c — a run of kim-bench: one broker, producer threads, at
    most one consumer thread, and the counts that make its figures count.

    Each producer is a client of its own (org "kim.p<id>") and puts a stamp
    at the start of every payload: who sent it, its index, the send time.
    The consumer (KIM_BENCH_SINK) acks everything it is given and notes,
    for each (producer, index), the seq it came under. The check then asks
    for every message receipted once and delivered once, under the seq it
    was receipted with, and for an empty mailbox afterwards.

    Every wait is bounded: a run with no progress (no receipt and no
    delivery) for KIM_BENCH_STALL_S seconds is declared stuck, its threads
    are told to leave, and its broker's folder is kept.

    The workloads (kim_bench_workload.c) give a run its shape: producers,
    counts, payload, pacing, and whether the consumer runs along or drains
    the mailbox afterwards.
*/
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kim_bench.h"

#define KIM_BENCH_STALL_S       30      //  no progress this long: the run is stuck
#define KIM_BENCH_LEAVE_S       10      //  time threads get to leave after an abort
#define KIM_BENCH_MAGIC         0x6b696d62656e6368ull  //  "kimbench"

//  What a producer puts at the start of every payload.
typedef struct {
    uint64_t magic;
    uint32_t producer;          //  1-based
    uint32_t index;             //  0-based within the producer
    uint64_t sent_ns;
} stamp_t;

//  --------------------------------------------------------------------------
//  Small helpers

static uint64_t
s_wall_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000ull + (uint64_t) ts.tv_nsec / 1000000ull;
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

//  --------------------------------------------------------------------------
//  Producers and the consumer

//  With --random-ids every id begins with S_SPREAD hex digits of a hash of
//  the message's name: ids that agencies make (UUIDs) land anywhere in the
//  trees the broker keys by them, where ids that follow each other only
//  ever append.
#define S_SPREAD 16

static void
s_spread (char spread [S_SPREAD + 1], bool random_ids, const char *tag, uint32_t producer,
          uint32_t index)
{
    spread [0] = 0;
    if (!random_ids)
        return;
    char name [64];
    int size = snprintf (name, sizeof name, "%s%u-%u", tag, producer, index);
    uint8_t hash [S_SPREAD / 2];
    crypto_generichash (hash, sizeof hash, (const uint8_t *) name, (size_t) size, NULL, 0);
    sodium_bin2hex (spread, S_SPREAD + 1, hash, sizeof hash);
}

//  Per-message header fields; the rest comes from the harness's referral.
static void
s_message (kim_msg_t *msg, bool random_ids, const char *tag, uint32_t producer, uint32_t index)
{
    char id [KIM_ID_MAX + 1], spread [S_SPREAD + 1];
    s_spread (spread, random_ids, tag, producer, index);
    snprintf (id, sizeof id, "%sb%s%u-%u", spread, tag, producer, index);
    kim_test_referral (msg, KIM_BENCH_SINK, id);
    snprintf (msg->msg_id, sizeof msg->msg_id, "%sm%s%u-%u", spread, tag, producer, index);
    msg->created_at = s_wall_ms ();
}

//  "[spread]m<tag><producer>-<index>" back to the index, or -1.
static long
s_index_of (const char *msg_id, bool random_ids, const char *tag, uint32_t producer,
            uint32_t count)
{
    if (random_ids) {
        if (strlen (msg_id) < S_SPREAD)
            return -1;
        msg_id += S_SPREAD;
    }
    size_t tag_size = strlen (tag);
    if (msg_id [0] != 'm' || strncmp (msg_id + 1, tag, tag_size) != 0)
        return -1;
    char *end;
    unsigned long p = strtoul (msg_id + 1 + tag_size, &end, 10);
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
        long index = s_index_of (event->msg_id, run->opt->random_ids, run->tag, self->id,
                                 run->per_producer);
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
    uint64_t start_ns = kim_bench_now_ns ();

    for (uint32_t index = 0; index < run->per_producer && !self->failed; index++) {
        if (atomic_load (&run->abort))
            break;
        if (period) {
            //  Paced: wait for the slot, taking receipts meanwhile.
            uint64_t due = start_ns + index * period;
            for (;;) {
                uint64_t now = kim_bench_now_ns ();
                if (now >= due)
                    break;
                int wait_ms = (int) ((due - now) / 1000000ull);
                if (wait_ms == 0) {
                    kim_bench_sleep_until (due);
                    break;
                }
                if (kim_client_recv (client, event, wait_ms) == 0)
                    s_producer_event (self, event, kim_bench_now_ns ());
            }
        }
        s_message (msg, run->opt->random_ids, run->tag, self->id, index);
        stamp_t stamp = { KIM_BENCH_MAGIC, self->id, index, kim_bench_now_ns () };
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
            s_producer_event (self, event, kim_bench_now_ns ());
    }
    //  Wait for the remaining receipts.
    while (!self->failed && self->receipted < run->per_producer && !atomic_load (&run->abort)) {
        int rc = kim_client_recv (client, event, 100);
        if (rc == 0)
            s_producer_event (self, event, kim_bench_now_ns ());
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

//  --answer: takes the referral up, as an office does (its RECEIPT comes
//  back like any other event; a REJECT fails the run).
static int
s_consumer_answer (kim_client_t *client, const kim_msg_t *referral, kim_msg_t *answer)
{
    kim_msg_init (answer);
    answer->type = KIM_TYPE_ACCEPT;
    snprintf (answer->msg_id, sizeof answer->msg_id, "a-%.60s", referral->msg_id);
    snprintf (answer->recipient, sizeof answer->recipient, "%s", referral->sender);
    snprintf (answer->referral_id, sizeof answer->referral_id, "%s", referral->referral_id);
    answer->created_at = s_wall_ms ();
    return kim_client_send_async (client, answer, NULL, 0);
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
    kim_msg_t *answer = (kim_msg_t *) malloc (sizeof (kim_msg_t));
    KIM_CHECK (event && answer);
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
            s_consumer_deliver (self, event, kim_bench_now_ns ());
            rc = kim_client_ack (client, event->seq);
            if (rc == 0 && run->opt->answer)
                rc = s_consumer_answer (client, &event->msg, answer);
            if (rc) {
                self->failed = 1;
                snprintf (self->text, sizeof self->text, "consumer: ack or answer failed: %s",
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
        self->last_ack_ns = kim_bench_now_ns ();
    else
    if (!self->failed) {
        self->failed = 1;
        snprintf (self->text, sizeof self->text, "consumer: flush timed out");
    }
    //  Not timed: the broker must have taken every ack, leaving an empty
    //  mailbox (acks are applied in the broker's next batch, so poll).
    uint64_t until = kim_bench_now_ns () + 10ull * 1000000000ull;
    while (!self->failed && !atomic_load (&run->abort) && kim_bench_now_ns () < until) {
        if (kim_client_status (client, &self->status, 2000) == 0) {
            self->status_ok = true;
            if (self->status.mailbox == 0 && self->status.in_flight == 0)
                break;
        }
        //  Keep reading: a redelivery would show up here.
        if (kim_client_recv (client, event, 50) == 0 && event->type == KIM_EVENT_DELIVER) {
            s_consumer_deliver (self, event, kim_bench_now_ns ());
            kim_client_ack (client, event->seq);
            kim_client_flush (client, 1000);
        }
    }
    self->reconnects = kim_client_reconnects (client);
    kim_client_destroy (&client);
    free (answer);
    free (event);
    return NULL;
}

run_t *
kim_bench_run_new (const options_t *opt, const char *name, kim_testbroker_t *broker,
                   uint32_t producers, uint32_t per_producer, uint32_t payload)
{
    run_t *run = (run_t *) calloc (1, sizeof (run_t));
    KIM_CHECK (run);
    run->opt = opt;
    run->name = name;
    run->tag = "";
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

void
kim_bench_run_destroy (run_t **run_p)
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
void
kim_bench_keep_folder (run_t *run)
{
    setenv ("KIM_TEST_KEEP", "1", 1);
    fprintf (stderr, "%s: broker folder kept for inspection: %s (broker.log)\n",
             run->name, kim_testbroker_dir (run->broker));
}

//  Waits for the threads, ticking every 5 ms. Returns 0, or -1 when the run
//  made no progress for KIM_BENCH_STALL_S (threads then get KIM_BENCH_LEAVE_S
//  to leave; a thread that cannot leave ends the process with a message).
static int
s_run_wait (run_t *run, pthread_t *threads [], size_t count, kim_bench_tick_fn *tick, void *arg)
{
    bool joined [KIM_BENCH_PRODUCERS_MAX + 1] = { false };
    size_t left = count;
    uint64_t last_progress = UINT64_MAX;
    uint64_t last_change = kim_bench_now_ns ();
    while (left) {
        for (size_t i = 0; i < count; i++)
            if (!joined [i] && pthread_tryjoin_np (*threads [i], NULL) == 0) {
                joined [i] = true;
                left--;
            }
        if (tick)
            tick (run, arg);
        uint64_t progress = atomic_load (&run->receipted) + atomic_load (&run->delivered);
        uint64_t now = kim_bench_now_ns ();
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
            kim_bench_keep_folder (run);
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
            kim_bench_sleep_ms (5);
    }
    return 0;
}

//  Starts the producers (and the consumer when it runs along) and waits.
int
kim_bench_run_go (run_t *run, kim_bench_tick_fn *tick, void *arg)
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
int
kim_bench_run_drain (run_t *run)
{
    KIM_CHECK (pthread_create (&run->consumer.thread, NULL, s_consumer_run, &run->consumer) == 0);
    pthread_t *threads [1] = { &run->consumer.thread };
    return s_run_wait (run, threads, 1, NULL, NULL);
}

//  The counts: every message receipted once, every receipted seq delivered
//  with the message that was receipted under it. Writes why not into detail.
bool
kim_bench_run_check (run_t *run, bool delivered, char *detail, size_t detail_size)
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

void
kim_bench_run_figures (run_t *run, result_t *result)
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
