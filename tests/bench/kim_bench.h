/*  kim_bench.h — what kim-bench's files share. Private to tests/bench/.

    kim-bench is one program in several files, one idea each:

        kim_bench.c             the options and the rounds: the command line,
                                the ceilings and every selected workload once
                                per round, the exit status
        kim_bench_run.c         a run: one broker, producer threads, at most
                                one consumer thread; the stall watch, the
                                count checks and the run's figures
        kim_bench_workload.c    the workloads W1, W2, W3 and RSS, each on a
                                fresh broker, and the broker's own figures
                                (CPU, RSS)
        kim_bench_counters.c    what the broker and the machine counted over
                                a workload: the broker's LMDB writes per
                                tree (its metrics endpoint), and the CPU
                                time of the whole machine (/proc/stat)
        kim_bench_ceiling.c     the ceilings: the ceiling tools run as child
                                processes, their JSON lines read
        kim_bench_summary.c     --repeat: the median, smallest and largest of
                                each figure over the runs
        kim_bench_report.c      the output: the JSON lines and the table at
                                the end

    Defined here: the options, a workload's figures (result_t), the
    ceilings' figures, the summaries of several runs, and a run (run_t),
    which kim_bench_run.c drives and the workloads shape and read. A
    function one file defines and another calls is named kim_bench_* and
    declared below, under the file that defines it; helpers only one file
    uses stay static there as s_*. The few small helpers that several files
    use (clock, sleep, string compare) are static inline here.
*/
#ifndef KIM_BENCH_H_INCLUDED
#define KIM_BENCH_H_INCLUDED

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "kim_testbroker.h"

#define KIM_BENCH_PRODUCERS_MAX 16
#define KIM_BENCH_RSS_POINTS    5       //  0, 25, 50, 75, 100 % of the fill
#define KIM_BENCH_SINK          "jc.sink"
#define KIM_BENCH_REPEAT_MAX    20      //  --repeat N: runs of each workload
#define KIM_BENCH_TREES         24      //  store trees whose writes are counted

//  --------------------------------------------------------------------------
//  Options and results

typedef struct {
    const char *workload;       //  W1, W2, W3, RSS or all
    bool smoke;                 //  tiny counts, no ceilings
    bool json;                  //  JSON lines only
    bool tcp;                   //  tcp loopback (default) or ipc
    bool sealed;                //  seal payloads end to end (default: plaintext, as the peers)
    bool answer;                //  the consumer answers each REFERRAL with an ACCEPT
    bool random_ids;            //  ids land anywhere in the broker's trees, as UUIDs do
    uint32_t prefill;           //  W1 and W2 run on a store that holds this many REFERRALs
    bool ceilings;              //  run the ceiling tools if built
    bool drain;                 //  drain the RSS mailbox afterwards
    bool counters;              //  the broker's metrics endpoint on, its writes read
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
    uint64_t store_bytes;                   //  the store's files on disk at the end
    uint64_t redeliveries;
    uint64_t reconnects;
    double cpu_broker_s;        //  CPU the broker process used (all threads)
    double cpu_broker_main_s;   //  ... its main thread (the reactor)
    double wall_s;              //  the time those were taken over
    double cpu_clients_s;       //  CPU this process (the clients) used meanwhile
    //  The whole machine meanwhile: CPU time of every process and the
    //  kernel, over all CPUs, and the share of CPU time left idle
    bool has_machine;
    double machine_cpu_s;
    double machine_idle;
    //  The disk under the store meanwhile (every writer's): bytes written
    //  and cache flushes
    bool has_disk;
    double disk_bytes;
    double disk_flushes;
    //  The broker's LMDB writes meanwhile, per tree, in the order and with
    //  the names its metrics give them (the key store as "keys")
    bool has_writes;
    uint64_t commits;
    size_t tree_count;
    char tree_name [KIM_BENCH_TREES][16];
    double tree_puts [KIM_BENCH_TREES];
    double tree_dels [KIM_BENCH_TREES];
    //  RSS workload
    uint64_t rss_at [KIM_BENCH_RSS_POINTS];
    uint64_t anon_at [KIM_BENCH_RSS_POINTS];
    uint64_t marks [KIM_BENCH_RSS_POINTS];
    double drain_per_s;
    uint64_t rss_after_drain, anon_after_drain;
    uint64_t drained;
} result_t;

typedef struct {
    bool zmq_ran, curve_ran, batch_ran, lmdb_ran, lmdb1_ran;
    bool durable_ran, w2_curve_ran, w2_durable_ran, w2_journal_ran;
    double zmq_ack_rate, zmq_confirm_rate, zmq_p50_us, zmq_p99_us;
    double curve_ack_rate, curve_confirm_rate, curve_p50_us, curve_p99_us;   //  ZeroMQ + CURVE
    double batch_ack_rate;      //  ZeroMQ + CURVE, up to 64 messages a frame (version 2's packing)
    double lmdb_rate, lmdb_commit_us;       //  batch 256
    double lmdb1_rate, lmdb1_commit_us;     //  batch 1
    //  The same forwarder storing each message as a durable broker with
    //  kim's guarantees must (kim-ceiling-curve --durable): W1 shape, 64 a
    //  frame; and W2's shape (one producer, paced) without and with it
    double durable_ack_rate;
    double w2_curve_p50_us, w2_curve_p99_us;
    double w2_durable_p50_us, w2_durable_p99_us;
    double w2_journal_p50_us, w2_journal_p99_us;     //  durable, a journal in front
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
    uint32_t zmq_runs, curve_runs, batch_runs, lmdb_runs, lmdb1_runs;
    uint32_t durable_runs, w2_curve_runs, w2_durable_runs, w2_journal_runs;
    ceilings_t median, min, max;
} ceiling_summary_t;

//  --------------------------------------------------------------------------
//  Small helpers

static inline bool
kim_bench_streq (const char *a, const char *b)
{
    return strcmp (a, b) == 0;
}

static inline uint64_t
kim_bench_now_ns (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static inline void
kim_bench_sleep_until (uint64_t when_ns)
{
    struct timespec ts = { (time_t) (when_ns / 1000000000ull), (long) (when_ns % 1000000000ull) };
    while (clock_nanosleep (CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static inline void
kim_bench_sleep_ms (int ms)
{
    kim_bench_sleep_until (kim_bench_now_ns () + (uint64_t) ms * 1000000ull);
}

//  --------------------------------------------------------------------------
//  A run: one broker, producer threads, at most one consumer thread.

typedef struct _run_t run_t;

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
    const char *tag;            //  in every msg_id and referral id: "f" for the prefill
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

//  --------------------------------------------------------------------------
//  kim_bench_counters.c: what the broker and the machine counted

//  The counters as a workload starts: the broker's (when its metrics
//  endpoint is on), and the machine's CPU times.
typedef struct {
    int port;                   //  the broker's metrics endpoint; 0: none
    bool scraped;               //  the broker's counters were read
    double receipted, acked, commits;
    size_t tree_count;
    char tree_name [KIM_BENCH_TREES][16];
    double tree_puts [KIM_BENCH_TREES];
    double tree_dels [KIM_BENCH_TREES];
    bool have_cpu;
    unsigned long long busy, total;
    bool have_disk;
    char disk_path [PATH_MAX + 16];     //  its block device's stat file
    unsigned long long sectors, flushes;
} kim_bench_counters_t;

//  The config lines that turn the broker's metrics endpoint on at a free
//  port (into `lines`; "" when `on` is false and in a build without the
//  endpoint); the port goes to *port (0 without).
void
    kim_bench_counters_config (bool on, char *lines, size_t size, int *port);

//  Reads the counters before a workload on the broker whose folder is
//  `store_dir`.
void
    kim_bench_counters_begin (kim_bench_counters_t *self, int port, const char *store_dir);

//  Reads them again once the broker has counted `receipted` more RECEIPTs
//  and `acked` more acks (or after 5 s), and puts the differences into
//  result: the machine's CPU and idle share, the disk's writes and
//  flushes, the broker's writes and commits. A broker that serves no write
//  counters leaves has_writes off.
void
    kim_bench_counters_end (kim_bench_counters_t *self, uint64_t receipted, uint64_t acked,
                            result_t *result);

//  --------------------------------------------------------------------------
//  kim_bench_run.c: a run

//  What kim_bench_run_go calls every 5 ms while it waits (the RSS samples).
typedef void (kim_bench_tick_fn) (run_t *run, void *arg);

//  A run of `producers` × `per_producer` messages of `payload` bytes on
//  `broker` (borrowed); no consumer until with_consumer is set.
run_t *
    kim_bench_run_new (const options_t *opt, const char *name, kim_testbroker_t *broker,
                       uint32_t producers, uint32_t per_producer, uint32_t payload);

void
    kim_bench_run_destroy (run_t **run_p);

//  A failed or stuck run: keep the broker's folder for a post-mortem.
void
    kim_bench_keep_folder (run_t *run);

//  Starts the producers (and the consumer when it runs along) and waits.
//  Returns 0, or -1 when the run was stuck.
int
    kim_bench_run_go (run_t *run, kim_bench_tick_fn *tick, void *arg);

//  Drains the mailbox with a consumer alone (RSS workload). Returns 0 or -1.
int
    kim_bench_run_drain (run_t *run);

//  The counts: every message receipted once, and when `delivered`, every
//  receipted seq delivered with its message. Writes why not into detail.
bool
    kim_bench_run_check (run_t *run, bool delivered, char *detail, size_t detail_size);

//  The run's rates and latencies into result.
void
    kim_bench_run_figures (run_t *run, result_t *result);

//  --------------------------------------------------------------------------
//  kim_bench_workload.c: the workloads, each on a fresh broker

//  W1 (sync) and W3 (store/sync = 0): N producers flat out to one consumer.
void
    kim_bench_workload_flow (const options_t *opt, const char *name, bool sync,
                             result_t *result);

//  W2: one producer, paced; end-to-end latency at the consumer.
void
    kim_bench_workload_latency (const options_t *opt, result_t *result);

//  RSS: fill one mailbox while its recipient is offline; sample the broker.
void
    kim_bench_workload_rss (const options_t *opt, result_t *result);
//  Waits (at most 20 s) until the disks are quiet: the previous workload's
//  folder is deleted as it ends, and its write-back and discards must not
//  fall on the next one's syncs. Smoke runs only flush.
void
    kim_bench_settle (const options_t *opt);

//  --------------------------------------------------------------------------
//  kim_bench_ceiling.c: the ceiling tools

//  Runs the ceiling tools that are there; each one that ran sets its *_ran.
void
    kim_bench_ceilings (const options_t *opt, ceilings_t *ceil);

//  --------------------------------------------------------------------------
//  kim_bench_summary.c: several runs (--repeat)

//  Summarises the runs of one workload (results [0 .. count - 1]).
void
    kim_bench_summarise (const result_t results [], size_t count, summary_t *self);

//  Summarises `count` rounds of the ceilings.
void
    kim_bench_summarise_ceilings (const ceilings_t rounds [], size_t count,
                                  ceiling_summary_t *self);

//  --------------------------------------------------------------------------
//  kim_bench_report.c: JSON lines and the table

//  One workload's JSON line: one run (`run` > 0 when there are several), or
//  with `summary`, the medians of several runs.
void
    kim_bench_print_json (const options_t *opt, const result_t *r, const ceilings_t *ceil,
                          uint32_t run, const summary_t *summary);

//  The ceilings' JSON lines: one round, or with `summary`, their medians.
void
    kim_bench_print_ceilings_json (const ceilings_t *ceil, uint32_t run,
                                   const ceiling_summary_t *summary);

//  The table at the end: one run per workload (results), or with several
//  runs the medians and ranges (summaries and ceil_summary, else NULL).
void
    kim_bench_print_table (const options_t *opt, const result_t results [],
                           const summary_t summaries [], size_t count, const ceilings_t *ceil,
                           const ceiling_summary_t *ceil_summary, double load_before);

//  The 1-minute load average, or -1.
double
    kim_bench_load_average (void);
//  The order of the blocks the host takes back when this guest frees them
//  (a virtio balloon with free page reporting), or -1 for none.
int
    kim_bench_page_reporting (void);

#endif
