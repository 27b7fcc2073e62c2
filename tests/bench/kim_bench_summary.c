/*  kim_bench_summary.c — the figures of several runs (--repeat N): the
    median, the smallest and the largest of each workload's figures and of
    each ceiling tool's.

    One run is not a fair figure on a noisy machine. Each figure's median
    is taken on its own (for an even N the mean of the middle two; counts
    rounded to a whole), over the runs that passed: a failed run's figures
    are no figures, only its reason is kept. A ceiling's figures are over
    the rounds in which its tool ran.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim_bench.h"

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
void
kim_bench_summarise (const result_t results [], size_t count, summary_t *self)
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
        S_SUMMARISE_FIGURE (cpu_broker_main_s);
        S_SUMMARISE_FIGURE (wall_s);
        S_SUMMARISE_FIGURE (cpu_clients_s);
        S_SUMMARISE_FIGURE (drain_per_s);
        S_SUMMARISE_COUNT (rss_kb);
        S_SUMMARISE_COUNT (hwm_kb);
        S_SUMMARISE_COUNT (store_bytes);
        S_SUMMARISE_COUNT (redeliveries);
        S_SUMMARISE_COUNT (reconnects);
        S_SUMMARISE_COUNT (rss_after_drain);
        S_SUMMARISE_COUNT (anon_after_drain);
        S_SUMMARISE_COUNT (drained);
        for (int i = 0; i < KIM_BENCH_RSS_POINTS; i++) {
            S_SUMMARISE_COUNT (rss_at [i]);
            S_SUMMARISE_COUNT (anon_at [i]);
        }
        S_SUMMARISE_FIGURE (machine_cpu_s);
        S_SUMMARISE_FIGURE (machine_idle);
        S_SUMMARISE_FIGURE (disk_bytes);
        S_SUMMARISE_FIGURE (disk_flushes);
        S_SUMMARISE_COUNT (commits);
        //  Every run's broker names the same trees in the same order
        for (size_t tree = 0; tree < self->median.tree_count; tree++) {
            S_SUMMARISE_FIGURE (tree_puts [tree]);
            S_SUMMARISE_FIGURE (tree_dels [tree]);
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

void
kim_bench_summarise_ceilings (const ceilings_t rounds [], size_t count, ceiling_summary_t *self)
{
    memset (self, 0, sizeof *self);
    double values [KIM_BENCH_REPEAT_MAX];
    for (size_t k = 0; k < count && k < KIM_BENCH_REPEAT_MAX; k++) {
        self->zmq_runs += rounds [k].zmq_ran;
        self->curve_runs += rounds [k].curve_ran;
        self->batch_runs += rounds [k].batch_ran;
        self->lmdb_runs += rounds [k].lmdb_ran;
        self->lmdb1_runs += rounds [k].lmdb1_ran;
        self->durable_runs += rounds [k].durable_ran;
        self->w2_curve_runs += rounds [k].w2_curve_ran;
        self->w2_durable_runs += rounds [k].w2_durable_ran;
        self->w2_journal_runs += rounds [k].w2_journal_ran;
    }
    self->median.zmq_ran = self->zmq_runs > 0;
    self->median.curve_ran = self->curve_runs > 0;
    self->median.batch_ran = self->batch_runs > 0;
    self->median.lmdb_ran = self->lmdb_runs > 0;
    self->median.lmdb1_ran = self->lmdb1_runs > 0;
    self->median.durable_ran = self->durable_runs > 0;
    self->median.w2_curve_ran = self->w2_curve_runs > 0;
    self->median.w2_durable_ran = self->w2_durable_runs > 0;
    self->median.w2_journal_ran = self->w2_journal_runs > 0;
    S_SUMMARISE_CEILING (zmq_ran, zmq_ack_rate);
    S_SUMMARISE_CEILING (zmq_ran, zmq_confirm_rate);
    S_SUMMARISE_CEILING (zmq_ran, zmq_p50_us);
    S_SUMMARISE_CEILING (zmq_ran, zmq_p99_us);
    S_SUMMARISE_CEILING (curve_ran, curve_ack_rate);
    S_SUMMARISE_CEILING (curve_ran, curve_confirm_rate);
    S_SUMMARISE_CEILING (curve_ran, curve_p50_us);
    S_SUMMARISE_CEILING (curve_ran, curve_p99_us);
    S_SUMMARISE_CEILING (batch_ran, batch_ack_rate);
    S_SUMMARISE_CEILING (lmdb_ran, lmdb_rate);
    S_SUMMARISE_CEILING (lmdb_ran, lmdb_commit_us);
    S_SUMMARISE_CEILING (lmdb1_ran, lmdb1_rate);
    S_SUMMARISE_CEILING (lmdb1_ran, lmdb1_commit_us);
    S_SUMMARISE_CEILING (durable_ran, durable_ack_rate);
    S_SUMMARISE_CEILING (w2_curve_ran, w2_curve_p50_us);
    S_SUMMARISE_CEILING (w2_curve_ran, w2_curve_p99_us);
    S_SUMMARISE_CEILING (w2_durable_ran, w2_durable_p50_us);
    S_SUMMARISE_CEILING (w2_durable_ran, w2_durable_p99_us);
    S_SUMMARISE_CEILING (w2_journal_ran, w2_journal_p50_us);
    S_SUMMARISE_CEILING (w2_journal_ran, w2_journal_p99_us);
}
