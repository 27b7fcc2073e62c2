/*  kim_bench_workload.c — the workloads of BRIEF.md §6: W1, W2, W3, RSS.

    Each starts a fresh broker through the test harness (with the --set
    lines in its config), gives a run (kim_bench_run.c) its shape, and
    takes the broker's own figures beside the run's: the CPU the broker and
    this process (the clients) used meanwhile, the broker's VmRSS and
    VmHWM, and for RSS its VmRSS and RssAnon at fixed points of the fill;
    for W1, W2 and W3 also the machine's CPU and the broker's LMDB writes
    (kim_bench_counters.c).
    A run that failed keeps its broker's folder.
*/
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "kim_bench.h"

//  --------------------------------------------------------------------------
//  The broker process, from /proc

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

//  CPU seconds (user + system) so far, from a process's stat file (all its
//  threads) or a thread's.
static double
s_stat_cpu (const char *path)
{
    char line [1024];
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

//  CPU seconds a process has used, all its threads
static double
s_proc_cpu (pid_t pid)
{
    char path [64];
    snprintf (path, sizeof path, "/proc/%d/stat", (int) pid);
    return s_stat_cpu (path);
}

//  CPU seconds a process's main thread has used: the broker's reactor,
//  which reads, applies and commits every command
static double
s_main_thread_cpu (pid_t pid)
{
    char path [64];
    snprintf (path, sizeof path, "/proc/%d/task/%d/stat", (int) pid, (int) pid);
    return s_stat_cpu (path);
}

//  --------------------------------------------------------------------------
//  Brokers

//  Its metrics endpoint is on (when built), at *metrics_port (0: off).
static kim_testbroker_t *
s_broker_start (const options_t *opt, bool sync, const char *name, int *metrics_port)
{
    static const char *orgs [] = {
        KIM_BENCH_SINK, "kim.p1", "kim.p2", "kim.p3", "kim.p4", "kim.p5", "kim.p6",
        "kim.p7", "kim.p8", "kim.p9", "kim.p10", "kim.p11", "kim.p12", "kim.p13",
        "kim.p14", "kim.p15", "kim.p16", NULL
    };
    //  Its ports are ones the kernel had free a moment before; under a
    //  busy test suite another process may take one first (the broker
    //  then says "cannot listen"), so a start that fails is tried again
    //  twice, on new ports, before the workload fails.
    for (int attempt = 1; attempt <= 3; attempt++) {
        //  The harness writes `extra` right after the broker section's keys
        //  and before "orgs", so a store section can follow the broker lines.
        char metrics [256];
        kim_bench_counters_config (opt->counters, metrics, sizeof metrics, metrics_port);
        char extra [2048];
        snprintf (extra, sizeof extra, "%s%s%s%s%s", opt->broker_extra,
                  (!sync || opt->store_extra [0])? "store\n": "",
                  sync? "": "    sync = 0\n", opt->store_extra, metrics);
        kim_testbroker_t *broker = kim_testbroker_new (orgs, extra);
        if (!broker) {
            fprintf (stderr, "%s: cannot make a test broker folder\n", name);
            return NULL;
        }
        //  The brokers kim is compared with carry payloads as they are;
        //  sealing is client-side work (about 120 µs per 1 KiB message here)
        //  measured on its own with --sealed.
        kim_testbroker_plaintext (broker, !opt->sealed);
        if (kim_testbroker_start (broker) == 0)
            return broker;
        fprintf (stderr, "%s: the broker did not start (attempt %d of 3)\n", name, attempt);
        if (attempt == 3) {
            setenv ("KIM_TEST_KEEP", "1", 1);
            fprintf (stderr, "%s: broker folder kept: %s\n", name, kim_testbroker_dir (broker));
        }
        kim_testbroker_destroy (&broker);
    }
    return NULL;
}

//  Bytes of a file on disk (its blocks: LMDB files may be sparse), or 0.
static uint64_t
s_file_bytes (const char *dir, const char *name)
{
    char path [PATH_MAX];
    struct stat st;
    if (snprintf (path, sizeof path, "%s/%s", dir, name) >= (int) sizeof path
    ||  stat (path, &st))
        return 0;
    return (uint64_t) st.st_blocks * 512;
}

static void
s_broker_figures (kim_testbroker_t *broker, result_t *result)
{
    pid_t pid = kim_testbroker_pid (broker);
    result->rss_kb = s_proc_kb (pid, "VmRSS");
    result->hwm_kb = s_proc_kb (pid, "VmHWM");
    const char *dir = kim_testbroker_dir (broker);
    result->store_bytes = s_file_bytes (dir, "data/store/data.mdb")
                        + s_file_bytes (dir, "data/store/keys/data.mdb");
}

//  --------------------------------------------------------------------------
//  Workloads

//  --prefill N: the store first takes N REFERRALs of 64 bytes (each its own
//  case, delivered and acked, so that only the store is larger), so that a
//  workload shows what a store's size costs it. Returns 0 or -1.
static int
s_prefill (const options_t *opt, kim_testbroker_t *broker, result_t *result)
{
    uint32_t per = opt->prefill / opt->producers;
    run_t *run = kim_bench_run_new (opt, "prefill", broker, opt->producers, per? per: 1, 64);
    run->tag = "f";
    run->with_consumer = true;
    uint64_t started = kim_bench_now_ns ();
    int rc = kim_bench_run_go (run, NULL, NULL);
    bool ok = rc == 0 && kim_bench_run_check (run, true, result->detail, sizeof result->detail);
    if (!opt->json)
        printf ("prefill: %llu REFERRALs in %.1f s%s\n", (unsigned long long) run->total,
                (double) (kim_bench_now_ns () - started) / 1e9, ok? "": " (FAILED)");
    kim_bench_run_destroy (&run);
    if (!ok)
        snprintf (result->detail, sizeof result->detail, "the prefill failed");
    return ok? 0: -1;
}

//  Producers to one consumer on a fresh broker: a run of `messages` per
//  producer, paced at `rate` msgs/s (0: flat out), with the CPU both sides
//  used and the broker's memory.
static void
s_flow (const options_t *opt, const char *name, bool sync, uint32_t producers,
        uint32_t messages, uint32_t rate, result_t *result)
{
    snprintf (result->name, sizeof result->name, "%s", name);
    result->ran = true;
    int metrics_port;
    kim_testbroker_t *broker = s_broker_start (opt, sync, name, &metrics_port);
    if (!broker) {
        snprintf (result->detail, sizeof result->detail, "broker did not start");
        return;
    }
    if (opt->prefill && s_prefill (opt, broker, result)) {
        kim_testbroker_destroy (&broker);
        return;
    }
    run_t *run = kim_bench_run_new (opt, name, broker, producers, messages, opt->payload);
    run->with_consumer = true;
    run->rate = rate;
    kim_bench_counters_t counters;
    kim_bench_counters_begin (&counters, metrics_port, kim_testbroker_dir (broker));
    pid_t broker_pid = kim_testbroker_pid (broker);
    double broker_cpu = s_proc_cpu (broker_pid);
    double main_cpu = s_main_thread_cpu (broker_pid);
    double clients_cpu = s_proc_cpu (getpid ());
    uint64_t started = kim_bench_now_ns ();
    int rc = kim_bench_run_go (run, NULL, NULL);
    result->cpu_broker_s = s_proc_cpu (broker_pid) - broker_cpu;
    result->cpu_broker_main_s = s_main_thread_cpu (broker_pid) - main_cpu;
    result->wall_s = (double) (kim_bench_now_ns () - started) / 1e9;
    result->cpu_clients_s = s_proc_cpu (getpid ()) - clients_cpu;
    //  Every message receipted and acked (and with --answer its ACCEPT
    //  receipted too) before the writes are read
    if (rc == 0)
        kim_bench_counters_end (&counters, run->total * (opt->answer? 2: 1), run->total, result);
    s_broker_figures (broker, result);
    kim_bench_run_figures (run, result);
    if (rc)
        snprintf (result->detail, sizeof result->detail, "stuck (see stderr)");
    else
        result->ok = kim_bench_run_check (run, true, result->detail, sizeof result->detail);
    //  The smoke test also proves that the writes are counted and read
    if (result->ok && opt->smoke && metrics_port && !result->has_writes) {
        result->ok = false;
        snprintf (result->detail, sizeof result->detail,
                  "the broker's metrics did not show the run's LMDB writes");
    }
    if (!result->ok)
        kim_bench_keep_folder (run);
    kim_bench_run_destroy (&run);
    //  A clean stop, so that a profiler wrapped around the broker
    //  (KIM_BROKER) writes what it measured
    kim_testbroker_stop (broker, SIGTERM);
    kim_testbroker_destroy (&broker);
}

//  W1 and W3: N producers flat out to one consumer.
void
kim_bench_workload_flow (const options_t *opt, const char *name, bool sync, result_t *result)
{
    s_flow (opt, name, sync, opt->producers, opt->messages, 0, result);
}

//  W2: one producer, paced; end-to-end latency at the consumer.
void
kim_bench_workload_latency (const options_t *opt, result_t *result)
{
    s_flow (opt, "W2", true, 1, opt->w2_rate * opt->w2_seconds, opt->w2_rate, result);
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
void
kim_bench_workload_rss (const options_t *opt, result_t *result)
{
    snprintf (result->name, sizeof result->name, "RSS");
    result->ran = true;
    int metrics_port;
    kim_testbroker_t *broker = s_broker_start (opt, true, "RSS", &metrics_port);
    if (!broker) {
        snprintf (result->detail, sizeof result->detail, "broker did not start");
        return;
    }
    uint32_t per = opt->fill / opt->producers;
    run_t *run = kim_bench_run_new (opt, "RSS", broker, opt->producers, per, opt->fill_payload);
    for (int i = 0; i < KIM_BENCH_RSS_POINTS; i++)
        result->marks [i] = run->total * (uint64_t) i / (KIM_BENCH_RSS_POINTS - 1);
    rss_watch_t watch = { result, kim_testbroker_pid (broker), 0 };
    s_rss_tick (run, &watch);           //  the 0 point, before anyone connects
    double broker_cpu = s_proc_cpu (watch.pid);
    double clients_cpu = s_proc_cpu (getpid ());
    int rc = kim_bench_run_go (run, s_rss_tick, &watch);
    s_rss_tick (run, &watch);
    result->cpu_broker_s = s_proc_cpu (watch.pid) - broker_cpu;
    result->cpu_clients_s = s_proc_cpu (getpid ()) - clients_cpu;
    kim_bench_run_figures (run, result);
    if (rc)
        snprintf (result->detail, sizeof result->detail, "stuck while filling");
    else
        result->ok = kim_bench_run_check (run, false, result->detail, sizeof result->detail);

    if (result->ok && opt->drain) {
        run->with_consumer = true;      //  counts deliveries from here on
        uint64_t start = kim_bench_now_ns ();
        rc = kim_bench_run_drain (run);
        uint64_t end = run->consumer.last_ack_ns;
        result->drained = run->consumer.distinct;
        if (end > start)
            result->drain_per_s = run->consumer.distinct / ((end - start) / 1e9);
        result->rss_after_drain = s_proc_kb (watch.pid, "VmRSS");
        result->anon_after_drain = s_proc_kb (watch.pid, "RssAnon");
        if (rc)
            snprintf (result->detail, sizeof result->detail, "stuck while draining");
        result->ok = rc == 0 && kim_bench_run_check (run, true, result->detail,
                                                     sizeof result->detail);
        result->has_latency = false;    //  latency of a backlog says nothing
    }
    s_broker_figures (broker, result);
    if (!result->ok)
        kim_bench_keep_folder (run);
    kim_bench_run_destroy (&run);
    //  A clean stop, so that a profiler wrapped around the broker
    //  (KIM_BROKER) writes what it measured
    kim_testbroker_stop (broker, SIGTERM);
    kim_testbroker_destroy (&broker);
}

//  --------------------------------------------------------------------------
//  Between workloads

//  Milliseconds all block devices have spent doing I/O (/proc/diskstats,
//  field 13 of each line), or -1 when that cannot be read.
static int64_t
s_io_ms (void)
{
    FILE *file = fopen ("/proc/diskstats", "r");
    if (!file)
        return -1;
    char line [512];
    int64_t total = 0;
    while (fgets (line, sizeof line, file)) {
        unsigned long long io_ms;
        if (sscanf (line, "%*u %*u %*s %*u %*u %*u %*u %*u %*u %*u %*u %*u %llu", &io_ms) == 1)
            total += (int64_t) io_ms;
    }
    fclose (file);
    return total;
}

void
kim_bench_settle (const options_t *opt)
{
    sync ();
    if (opt->smoke)
        return;
    //  Quiet: under 5 % of the time busy over half a second.
    int64_t before = s_io_ms ();
    for (int waited = 0; before >= 0 && waited < 20000; waited += 500) {
        kim_bench_sleep_ms (500);
        int64_t now = s_io_ms ();
        if (now - before < 25)
            break;
        before = now;
    }
}
