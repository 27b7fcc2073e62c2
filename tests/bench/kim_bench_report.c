/*  kim_bench_report.c — what kim-bench prints: a JSON line per run of a
    workload or of the ceilings (and per summary with --repeat), and the
    table at the end.

    The JSON lines are the record for tools (tests/bench/README.md names
    their keys); the table is for people, and gives the machine's load
    average before and after, since other work on the machine skews every
    figure. With several runs both show the medians, with the range of the
    headline figures.
*/
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kim_bench.h"

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

//  The broker's LMDB writes per message: in all, and by tree (the trees
//  it wrote to).
static double
s_writes_total (const result_t *r, bool dels)
{
    double total = 0;
    for (size_t tree = 0; tree < r->tree_count; tree++)
        total += dels? r->tree_dels [tree]: r->tree_puts [tree];
    return total;
}

static void
s_print_writes (const result_t *r)
{
    double messages = (double) r->messages;
    printf (",\"lmdb_commits\":%llu,\"lmdb_puts_per_msg\":%.2f,\"lmdb_dels_per_msg\":%.2f,"
            "\"lmdb_puts_per_msg_by_tree\":{", (unsigned long long) r->commits,
            s_writes_total (r, false) / messages, s_writes_total (r, true) / messages);
    const char *comma = "";
    for (size_t tree = 0; tree < r->tree_count; tree++)
        if (r->tree_puts [tree] > 0) {
            printf ("%s\"%s\":%.3f", comma, r->tree_name [tree], r->tree_puts [tree] / messages);
            comma = ",";
        }
    printf ("}");
}

//  One workload's JSON line: one run (`run` > 0 when there are several), or
//  with `summary`, the medians of several runs (r is summary->median) and
//  the range of the headline figures. `ceil` is the round's ceilings, or
//  their medians for a summary.
void
kim_bench_print_json (const options_t *opt, const result_t *r, const ceilings_t *ceil,
                      uint32_t run, const summary_t *summary)
{
    if (summary && summary->runs == 0) {
        //  Every run failed: no figures to summarise.
        printf ("{\"workload\":\"%s\",\"summary\":true,\"runs\":0,\"failed_runs\":%u,"
                "\"ok\":false,\"error\":\"%s\"}\n", r->name, summary->failed, r->detail);
        fflush (stdout);
        return;
    }
    bool latency_first = kim_bench_streq (r->name, "W2");   //  W2's headline is its latency
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
    if (r->messages)
        printf (",\"broker_cpu_us_per_msg\":%.1f,\"store_bytes\":%llu,"
                "\"store_bytes_per_msg\":%.0f", r->cpu_broker_s * 1e6 / (double) r->messages,
                (unsigned long long) r->store_bytes,
                (double) r->store_bytes / (double) r->messages);
    if (r->messages && r->wall_s > 0)
        printf (",\"cpu_broker_main_s\":%.2f,\"broker_main_cpu_us_per_msg\":%.1f,"
                "\"broker_main_busy_share\":%.3f", r->cpu_broker_main_s,
                r->cpu_broker_main_s * 1e6 / (double) r->messages, r->cpu_broker_main_s / r->wall_s);
    if (r->has_machine && r->messages)
        printf (",\"machine_cpu_s\":%.2f,\"machine_cpu_us_per_msg\":%.1f,"
                "\"machine_idle_share\":%.3f", r->machine_cpu_s,
                r->machine_cpu_s * 1e6 / (double) r->messages, r->machine_idle);
    int order = kim_bench_page_reporting ();
    if (order >= 0)
        printf (",\"host_page_reporting_order\":%d", order);
    if (r->has_disk && r->messages)
        printf (",\"disk_bytes_written_per_msg\":%.0f,\"disk_flushes_per_msg\":%.3f",
                r->disk_bytes / (double) r->messages, r->disk_flushes / (double) r->messages);
    if (r->has_writes && r->messages)
        s_print_writes (r);
    if (kim_bench_streq (r->name, "W1") && ceil->zmq_ran && r->acked_per_s > 0)
        printf (",\"zmq_ack_rate\":%.0f,\"zmq_ratio\":%.3f", ceil->zmq_ack_rate,
                r->acked_per_s / ceil->zmq_ack_rate);
    if (kim_bench_streq (r->name, "W1") && ceil->curve_ran && r->acked_per_s > 0)
        printf (",\"zmq_curve_ack_rate\":%.0f,\"zmq_curve_ratio\":%.3f", ceil->curve_ack_rate,
                r->acked_per_s / ceil->curve_ack_rate);
    if (kim_bench_streq (r->name, "W1") && ceil->batch_ran && r->acked_per_s > 0)
        printf (",\"zmq_curve64_ack_rate\":%.0f,\"zmq_curve64_ratio\":%.3f",
                ceil->batch_ack_rate, r->acked_per_s / ceil->batch_ack_rate);
    if (kim_bench_streq (r->name, "W1") && ceil->durable_ran && r->acked_per_s > 0)
        printf (",\"durable_ack_rate\":%.0f,\"durable_ratio\":%.3f",
                ceil->durable_ack_rate, r->acked_per_s / ceil->durable_ack_rate);
    if (kim_bench_streq (r->name, "W2") && ceil->w2_curve_ran)
        printf (",\"zmq_curve_w2_p50_us\":%.1f,\"zmq_curve_w2_p99_us\":%.1f",
                ceil->w2_curve_p50_us, ceil->w2_curve_p99_us);
    if (kim_bench_streq (r->name, "W2") && ceil->w2_durable_ran && ceil->w2_durable_p99_us > 0)
        printf (",\"durable_w2_p50_us\":%.1f,\"durable_w2_p99_us\":%.1f,"
                "\"durable_w2_p99_ratio\":%.3f", ceil->w2_durable_p50_us,
                ceil->w2_durable_p99_us, r->p99_us / ceil->w2_durable_p99_us);
    if (kim_bench_streq (r->name, "W2") && ceil->w2_journal_ran)
        printf (",\"journal_w2_p50_us\":%.1f,\"journal_w2_p99_us\":%.1f",
                ceil->w2_journal_p50_us, ceil->w2_journal_p99_us);
    if (kim_bench_streq (r->name, "RSS")) {
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

//  Opens a ceiling's JSON line: its name, the round's tag and its rate,
//  with the rate's range over the rounds when `summarised`.
static void
s_ceiling_open (const char *name, uint32_t run, uint32_t runs, bool summarised,
                double rate, double min, double max)
{
    printf ("{\"workload\":\"%s\"", name);
    s_print_tag (run, runs);
    printf (",\"ack_rate\":%.0f", rate);
    if (summarised)
        s_print_range ("ack_rate", min, max, 0);
}

//  A ceiling in W2's shape: its latencies, with the p99's range over the
//  rounds when summarised.
static void
s_ceiling_w2 (const char *name, uint32_t run, uint32_t runs, const ceiling_summary_t *summary,
              double p50, double p99, double min, double max)
{
    printf ("{\"workload\":\"%s\"", name);
    s_print_tag (run, runs);
    printf (",\"p50_us\":%.1f,\"p99_us\":%.1f", p50, p99);
    if (summary)
        s_print_range ("p99_us", min, max, 1);
    printf ("}\n");
}

//  The ceilings' JSON lines: one round (`run` > 0 when there are several),
//  or with `summary`, their medians (ceil is summary->median) and ranges.
void
kim_bench_print_ceilings_json (const ceilings_t *ceil, uint32_t run,
                               const ceiling_summary_t *summary)
{
    const ceilings_t *min = summary? &summary->min: ceil;
    const ceilings_t *max = summary? &summary->max: ceil;
    if (ceil->zmq_ran) {
        s_ceiling_open ("ceiling_zmq", run, summary? summary->zmq_runs: 0, summary != NULL,
                        ceil->zmq_ack_rate, min->zmq_ack_rate, max->zmq_ack_rate);
        printf (",\"confirm_rate\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
                ceil->zmq_confirm_rate, ceil->zmq_p50_us, ceil->zmq_p99_us);
    }
    if (ceil->curve_ran) {
        s_ceiling_open ("ceiling_zmq_curve", run, summary? summary->curve_runs: 0,
                        summary != NULL, ceil->curve_ack_rate, min->curve_ack_rate,
                        max->curve_ack_rate);
        printf (",\"confirm_rate\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
                ceil->curve_confirm_rate, ceil->curve_p50_us, ceil->curve_p99_us);
    }
    if (ceil->batch_ran) {
        s_ceiling_open ("ceiling_zmq_curve64", run, summary? summary->batch_runs: 0,
                        summary != NULL, ceil->batch_ack_rate, min->batch_ack_rate,
                        max->batch_ack_rate);
        printf ("}\n");
    }
    if (ceil->durable_ran) {
        s_ceiling_open ("ceiling_durable", run, summary? summary->durable_runs: 0,
                        summary != NULL, ceil->durable_ack_rate, min->durable_ack_rate,
                        max->durable_ack_rate);
        printf ("}\n");
    }
    if (ceil->w2_curve_ran)
        s_ceiling_w2 ("ceiling_zmq_curve_w2", run, summary? summary->w2_curve_runs: 0, summary,
                      ceil->w2_curve_p50_us, ceil->w2_curve_p99_us, min->w2_curve_p99_us,
                      max->w2_curve_p99_us);
    if (ceil->w2_durable_ran)
        s_ceiling_w2 ("ceiling_durable_w2", run, summary? summary->w2_durable_runs: 0, summary,
                      ceil->w2_durable_p50_us, ceil->w2_durable_p99_us, min->w2_durable_p99_us,
                      max->w2_durable_p99_us);
    if (ceil->w2_journal_ran)
        s_ceiling_w2 ("ceiling_journal_w2", run, summary? summary->w2_journal_runs: 0, summary,
                      ceil->w2_journal_p50_us, ceil->w2_journal_p99_us, min->w2_journal_p99_us,
                      max->w2_journal_p99_us);
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
double
kim_bench_load_average (void)
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

//  Whether the host takes back the memory this guest frees: a virtio
//  balloon that negotiated free page reporting (feature bit 5). The guest's
//  page allocator then hands out memory the host must fault in again, some
//  9 µs a page on the VM tests/bench/README.md describes ("Ten million
//  records: memory the host takes back"), which a store that grows pays.
//  Returns the order of the blocks it reports, or -1 for none.
int
kim_bench_page_reporting (void)
{
    const char *driver = "/sys/bus/virtio/drivers/virtio_balloon";
    bool reporting = false;
    DIR *dir = opendir (driver);
    for (struct dirent *entry; dir && !reporting && (entry = readdir (dir));) {
        if (strncmp (entry->d_name, "virtio", 6) != 0)
            continue;
        char path [PATH_MAX], features [160];
        snprintf (path, sizeof path, "%s/%s/features", driver, entry->d_name);
        FILE *file = fopen (path, "r");
        if (file) {
            //  One character a feature bit, bit 0 first
            reporting = fgets (features, sizeof features, file) && strlen (features) > 5
                     && features [5] == '1';
            fclose (file);
        }
    }
    if (dir)
        closedir (dir);
    int order = -1;
    FILE *file = reporting? fopen ("/sys/module/page_reporting/parameters/page_reporting_order",
                                   "r"): NULL;
    if (file) {
        if (fscanf (file, "%d", &order) != 1)
            order = -1;
        fclose (file);
    }
    return order;
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
    if (kim_bench_streq (r->name, "W2"))
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
void
kim_bench_print_table (const options_t *opt, const result_t results [],
                       const summary_t summaries [], size_t count, const ceilings_t *ceil,
                       const ceiling_summary_t *ceil_summary, double load_before)
{
    char runs [64] = "";
    if (summaries)
        snprintf (runs, sizeof runs, "; median of %u runs, range min–max", opt->repeat);
    char reporting [96] = "";
    int order = kim_bench_page_reporting ();
    if (order >= 0)
        snprintf (reporting, sizeof reporting,
                  "; the host takes back freed memory (free page reporting, order %d)", order);
    printf ("\nkim-bench (%s, %s%s, %s%s; %ld CPUs, 1-min load average %.2f before, "
            "%.2f after%s)\n",
            opt->tcp? "tcp loopback": "ipc", opt->sealed? "sealed payloads": "plaintext payloads",
            opt->random_ids? ", random ids": "",
            opt->smoke? "smoke counts": "full counts", runs,
            sysconf (_SC_NPROCESSORS_ONLN), load_before, kim_bench_load_average (), reporting);
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
        printf ("      CPU used: broker %.2f s (%.1f µs a message), clients %.2f s; "
                "store on disk %.1f MB (%.0f bytes a message)\n", r->cpu_broker_s,
                r->messages? r->cpu_broker_s * 1e6 / (double) r->messages: 0.0,
                r->cpu_clients_s, (double) r->store_bytes / 1e6,
                r->messages? (double) r->store_bytes / (double) r->messages: 0.0);
        if (r->messages && r->wall_s > 0)
            printf ("      the broker's main thread (reads, applies, commits): %.1f µs a message, "
                    "on a CPU %.0f %% of the run\n",
                    r->cpu_broker_main_s * 1e6 / (double) r->messages,
                    100 * r->cpu_broker_main_s / r->wall_s);
        if (r->has_machine && r->messages)
            printf ("      the whole machine: %.1f µs of CPU a message (all processes, all "
                    "CPUs), %.0f %% of its CPU time idle\n",
                    r->machine_cpu_s * 1e6 / (double) r->messages, r->machine_idle * 100);
        if (r->has_disk && r->messages)
            printf ("      the store's disk: %.0f bytes written a message, %.3f flushes a "
                    "message (every writer of that disk)\n",
                    r->disk_bytes / (double) r->messages, r->disk_flushes / (double) r->messages);
        if (r->has_writes && r->messages) {
            double messages = (double) r->messages;
            printf ("      LMDB writes a message: %.2f puts, %.2f deletes; %llu commits\n"
                    "        puts by tree:", s_writes_total (r, false) / messages,
                    s_writes_total (r, true) / messages, (unsigned long long) r->commits);
            for (size_t tree = 0; tree < r->tree_count; tree++)
                if (r->tree_puts [tree] / messages >= 0.005)
                    printf (" %s %.2f", r->tree_name [tree], r->tree_puts [tree] / messages);
            printf ("\n");
        }
        if (r->has_receipt_latency)
            printf ("      receipt latency (send -> RECEIPT): p50 %.0f µs, p99 %.0f µs, "
                    "max %.0f µs\n", r->r_p50_us, r->r_p99_us, r->r_max_us);
        if (kim_bench_streq (r->name, "RSS")) {
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
        if (kim_bench_streq (r->name, "W1") && ceil->zmq_ran && r->acked_per_s > 0)
            printf ("      W1 / ZeroMQ ceiling: %.1f %% (acked %.0f / %.0f)\n",
                    100.0 * r->acked_per_s / ceil->zmq_ack_rate, r->acked_per_s,
                    ceil->zmq_ack_rate);
        if (kim_bench_streq (r->name, "W1") && ceil->curve_ran && r->acked_per_s > 0)
            printf ("      W1 / ZeroMQ+CURVE ceiling: %.1f %% (acked %.0f / %.0f)\n",
                    100.0 * r->acked_per_s / ceil->curve_ack_rate, r->acked_per_s,
                    ceil->curve_ack_rate);
        if (kim_bench_streq (r->name, "W1") && ceil->batch_ran && r->acked_per_s > 0)
            printf ("      W1 / ZeroMQ+CURVE ceiling, 64 a frame: %.1f %% (acked %.0f / %.0f)\n",
                    100.0 * r->acked_per_s / ceil->batch_ack_rate, r->acked_per_s,
                    ceil->batch_ack_rate);
        if (kim_bench_streq (r->name, "W1") && ceil->durable_ran && r->acked_per_s > 0)
            printf ("      W1 / the same storing as a durable broker: %.1f %% (acked %.0f / %.0f)\n",
                    100.0 * r->acked_per_s / ceil->durable_ack_rate, r->acked_per_s,
                    ceil->durable_ack_rate);
        if (kim_bench_streq (r->name, "W2") && ceil->w2_durable_ran && r->has_latency
        &&  ceil->w2_durable_p99_us > 0)
            printf ("      W2 p99 / ZeroMQ+CURVE storing as a durable broker, W2's shape: "
                    "%.2f (%.0f / %.0f µs)\n", r->p99_us / ceil->w2_durable_p99_us, r->p99_us,
                    ceil->w2_durable_p99_us);
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
    if (ceil->batch_ran)
        printf ("ceiling ZeroMQ+CURVE forward, 64 messages a frame: %.0f acked/s%s\n",
                ceil->batch_ack_rate,
                s_range_text (range, sizeof range, ceil_summary, " (range ",
                              min->batch_ack_rate, max->batch_ack_rate, ")"));
    if (ceil->durable_ran)
        printf ("ceiling ZeroMQ+CURVE, 64 a frame, storing as a durable broker: %.0f acked/s%s\n",
                ceil->durable_ack_rate,
                s_range_text (range, sizeof range, ceil_summary, " (range ",
                              min->durable_ack_rate, max->durable_ack_rate, ")"));
    const char *w2_line = "ceiling ZeroMQ+CURVE %s(W2 shape): p50 %.0f µs, p99 %.0f µs%s\n";
    if (ceil->w2_curve_ran)
        printf (w2_line, "forward ", ceil->w2_curve_p50_us, ceil->w2_curve_p99_us,
                s_range_text (range, sizeof range, ceil_summary, " (p99 range ",
                              min->w2_curve_p99_us, max->w2_curve_p99_us, ")"));
    if (ceil->w2_durable_ran)
        printf (w2_line, "storing as a durable broker ", ceil->w2_durable_p50_us,
                ceil->w2_durable_p99_us,
                s_range_text (range, sizeof range, ceil_summary, " (p99 range ",
                              min->w2_durable_p99_us, max->w2_durable_p99_us, ")"));
    if (ceil->w2_journal_ran)
        printf (w2_line, "storing through a journal in front of LMDB ", ceil->w2_journal_p50_us,
                ceil->w2_journal_p99_us,
                s_range_text (range, sizeof range, ceil_summary, " (p99 range ",
                              min->w2_journal_p99_us, max->w2_journal_p99_us, ")"));
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
