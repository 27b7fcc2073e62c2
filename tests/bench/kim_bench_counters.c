/*  kim_bench_counters.c — what the broker and the machine counted over a
    workload.

    The broker counts the LMDB writes of every batch it commits, per tree
    (kim_store_writes), and serves them on its metrics endpoint; kim-bench
    turns that endpoint on for each broker it starts and reads it before
    and after a workload, so that every run reports its writes per message
    beside its CPU per message, with no preload or profiler. A broker that
    serves no such counters (KIM_BROKER naming an older build) is measured
    as before, without them.

    The machine's CPU time (/proc/stat: user, nice, system, irq, softirq and
    steal of all CPUs) tells what the whole workload cost, clients and
    kernel included, against what the machine has: a workload that leaves
    no CPU idle is bound by the machine, one that leaves some is bound by
    one of its threads.

    The disk under the store (its block device's counters in /sys/dev/block,
    the whole disk when the store sits on a partition) tells what reached
    it: bytes written and cache flushes, by every writer of that disk. What
    the store grew by is not what the disk took: LMDB rewrites the pages it
    touches, and every commit's flush has its fixed cost.
*/
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "kim_bench.h"
#include "kim_testhttp.h"

void
kim_bench_counters_config (bool on, char *lines, size_t size, int *port)
{
    lines [0] = 0;
    *port = 0;
#ifdef KIM_BENCH_METRICS
    int free_port = on? kim_testbroker_free_port (): 0;
    if (free_port > 0) {
        //  Rendered once a second (in the broker's loop, so not more often:
        //  it is work the broker would not do otherwise), and the referral
        //  count by state, a pass over the whole tree, only at the start
        snprintf (lines, size, "metrics\n    enabled = 1\n    port = %d\n"
                  "    interval_ms = 1000\n    referral_interval_s = 86400\n", free_port);
        *port = free_port;
    }
#else
    (void) on;
    (void) size;
#endif
}

//  The machine's CPU ticks so far: busy and in all. Returns 0 or -1.
static int
s_cpu_ticks (unsigned long long *busy, unsigned long long *total)
{
    FILE *file = fopen ("/proc/stat", "r");
    if (!file)
        return -1;
    unsigned long long user, nice, system, idle, iowait, irq, softirq, steal;
    int fields = fscanf (file, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice,
                         &system, &idle, &iowait, &irq, &softirq, &steal);
    fclose (file);
    if (fields != 8)
        return -1;
    *busy = user + nice + system + irq + softirq + steal;
    *total = *busy + idle + iowait;
    return 0;
}

//  The statistics file of the disk that holds `dir` into `path`: the whole
//  disk's when `dir` is on one of its partitions. Returns 0, or -1 when
//  the folder is on no block device (tmpfs, overlay).
static int
s_disk_stat_path (const char *dir, char *path, size_t size)
{
    struct stat st;
    char link [64], device [PATH_MAX], probe [PATH_MAX + 16];
    if (stat (dir, &st))
        return -1;
    snprintf (link, sizeof link, "/sys/dev/block/%u:%u", major (st.st_dev), minor (st.st_dev));
    if (!realpath (link, device))
        return -1;
    snprintf (probe, sizeof probe, "%s/partition", device);
    if (access (probe, F_OK) == 0) {
        char *slash = strrchr (device, '/');
        if (!slash)
            return -1;
        *slash = 0;             //  a partition's folder sits in its disk's
    }
    return snprintf (path, size, "%s/stat", device) < (int) size? 0: -1;
}

//  The disk's sectors written and flushes done so far (Documentation/
//  block/stat.rst: fields 7 and 16). Returns 0 or -1.
static int
s_disk_counts (const char *path, unsigned long long *sectors, unsigned long long *flushes)
{
    FILE *file = fopen (path, "r");
    if (!file)
        return -1;
    unsigned long long field [17];
    int fields = 0;
    while (fields < 17 && fscanf (file, "%llu", &field [fields]) == 1)
        fields++;
    fclose (file);
    if (fields < 17)
        return -1;              //  a kernel without flush counts (before 5.5)
    *sectors = field [6];
    *flushes = field [15];
    return 0;
}

//  The broker's counters into self: 0, or -1 when the endpoint does not
//  answer or serves no write counters.
static int
s_scrape (kim_bench_counters_t *self)
{
    char *scrape = kim_testhttp_request (self->port, "GET", "/metrics");
    if (!scrape)
        return -1;
    self->receipted = kim_testhttp_metric (scrape, "kim_messages_receipted_total");
    self->acked = kim_testhttp_metric (scrape, "kim_acks_total");
    self->commits = kim_testhttp_metric (scrape, "kim_batches_total");
    self->tree_count = 0;
    const char *prefix = "\nkim_store_writes_total{tree=\"";
    for (const char *at = strstr (scrape, prefix); at && self->tree_count < KIM_BENCH_TREES;
         at = strstr (at + 1, prefix)) {
        const char *name = at + strlen (prefix);
        size_t length = strcspn (name, "\"");
        char series [128];
        if (length == 0 || length >= sizeof self->tree_name [0]
        ||  strncmp (name + length, "\",op=\"put\"}", 11) != 0)
            continue;
        size_t tree = self->tree_count++;
        memcpy (self->tree_name [tree], name, length);
        self->tree_name [tree][length] = 0;
        snprintf (series, sizeof series, "kim_store_writes_total{tree=\"%s\",op=\"put\"}",
                  self->tree_name [tree]);
        self->tree_puts [tree] = kim_testhttp_metric (scrape, series);
        snprintf (series, sizeof series, "kim_store_writes_total{tree=\"%s\",op=\"del\"}",
                  self->tree_name [tree]);
        self->tree_dels [tree] = kim_testhttp_metric (scrape, series);
    }
    free (scrape);
    return self->receipted >= 0 && self->tree_count? 0: -1;
}

void
kim_bench_counters_begin (kim_bench_counters_t *self, int port, const char *store_dir)
{
    memset (self, 0, sizeof *self);
    self->port = port;
    self->scraped = port > 0 && s_scrape (self) == 0;
    self->have_cpu = s_cpu_ticks (&self->busy, &self->total) == 0;
    self->have_disk = s_disk_stat_path (store_dir, self->disk_path, sizeof self->disk_path) == 0
                   && s_disk_counts (self->disk_path, &self->sectors, &self->flushes) == 0;
}

void
kim_bench_counters_end (kim_bench_counters_t *self, uint64_t receipted, uint64_t acked,
                        result_t *result)
{
    unsigned long long busy, total;
    if (self->have_cpu && s_cpu_ticks (&busy, &total) == 0 && total > self->total) {
        result->has_machine = true;
        result->machine_cpu_s = (double) (busy - self->busy) / (double) sysconf (_SC_CLK_TCK);
        result->machine_idle = 1.0 - (double) (busy - self->busy)
                                   / (double) (total - self->total);
    }
    unsigned long long sectors, flushes;
    if (self->have_disk && s_disk_counts (self->disk_path, &sectors, &flushes) == 0) {
        result->has_disk = true;
        result->disk_bytes = (double) (sectors - self->sectors) * 512;
        result->disk_flushes = (double) (flushes - self->flushes);
    }
    if (!self->scraped)
        return;
    //  The endpoint renders its figures every second: wait until they
    //  show the whole workload, acks included.
    kim_bench_counters_t after;
    memset (&after, 0, sizeof after);
    after.port = self->port;
    uint64_t deadline = kim_bench_now_ns () + 5000000000ull;
    bool whole = false;
    while (!whole && kim_bench_now_ns () < deadline) {
        whole = s_scrape (&after) == 0
             && after.receipted - self->receipted >= (double) receipted
             && after.acked - self->acked >= (double) acked;
        if (!whole)
            kim_bench_sleep_ms (100);
    }
    if (!whole || after.tree_count != self->tree_count)
        return;
    result->has_writes = true;
    result->commits = (uint64_t) (after.commits - self->commits);
    result->tree_count = after.tree_count;
    for (size_t tree = 0; tree < after.tree_count; tree++) {
        memcpy (result->tree_name [tree], after.tree_name [tree], sizeof after.tree_name [0]);
        result->tree_puts [tree] = after.tree_puts [tree] - self->tree_puts [tree];
        result->tree_dels [tree] = after.tree_dels [tree] - self->tree_dels [tree];
    }
}
