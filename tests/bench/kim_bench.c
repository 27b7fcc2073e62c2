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

    This file reads the options and runs the rounds; kim_bench.h says
    which file owns the rest.
*/
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim_bench.h"

static void
s_usage (void)
{
    fprintf (stderr,
        "usage: kim-bench [--workload W1|W2|W3|RSS|all] [--smoke] [--json] [--ipc] [--sealed]\n"
        "                 [--answer] [--random-ids] [--prefill N]\n"
        "                 [--no-ceilings] [--no-drain] [--no-counters] [--messages N]\n"
        "                 [--producers N]\n"
        "                 [--fill N] [--repeat N] [--set broker/KEY=VALUE | store/KEY=VALUE ...]\n"
        "  W1  durable directed delivery: 4 producers x 25,000 x 1 KiB, window 256, 1 consumer\n"
        "  W2  latency: 1 producer at 1,000 msgs/s for 5 s, durable, 1 consumer\n"
        "  W3  W1 with store/sync = 0 (tests only)\n"
        "  RSS 1,000,000 undelivered 64-byte messages in one mailbox; broker RSS sampled\n"
        "  --sealed  seal payloads end to end as agencies do (default: plaintext, like the\n"
        "            peers the brief compares with)\n"
        "  --prefill N  W1, W2 and W3 run on a store that first took N REFERRALs\n"
        "            (64 bytes, delivered and acked): what the store's size costs\n"
        "  --random-ids  message, referral and case ids begin with 16 hex digits of a\n"
        "            hash, so that they land anywhere in the broker's trees as UUIDs do\n"
        "            (default: ids that follow each other, producer by producer)\n"
        "  --answer  the consumer answers every REFERRAL with an ACCEPT (a closed loop:\n"
        "            REFERRAL, delivery, ack, ACCEPT, its receipt; the producers' mail waits)\n"
        "  --set broker/KEY=VALUE  a line for the broker's config; broker/rate_limit\n"
        "            is 10000000 unless set (the peers limit no client's rate)\n"
        "  --no-counters  leave the broker's metrics endpoint off (no LMDB writes a\n"
        "            message): for profilers, since the endpoint renders in the broker\n"
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
        .workload = "all", .tcp = true, .ceilings = true, .drain = true, .counters = true,
        .producers = 4, .messages = 25000, .payload = 1024,
        .send_window = 256, .recv_window = 1024,
        .w2_rate = 1000, .w2_seconds = 5,
        .fill = 1000000, .fill_payload = 64, .repeat = 1
    };
    bool messages_set = false, fill_set = false, producers_set = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv [i];
        const char *next = i + 1 < argc? argv [i + 1]: NULL;
        if (kim_bench_streq (arg, "--workload") && next) {
            opt.workload = next;
            i++;
        }
        else
        if (kim_bench_streq (arg, "--smoke"))
            opt.smoke = true;
        else
        if (kim_bench_streq (arg, "--json"))
            opt.json = true;
        else
        if (kim_bench_streq (arg, "--ipc"))
            opt.tcp = false;
        else
        if (kim_bench_streq (arg, "--sealed"))
            opt.sealed = true;
        else
        if (kim_bench_streq (arg, "--random-ids"))
            opt.random_ids = true;
        else
        if (kim_bench_streq (arg, "--answer"))
            opt.answer = true;
        else
        if (kim_bench_streq (arg, "--prefill") && s_parse_u32 (next, &opt.prefill))
            i++;
        else
        if (kim_bench_streq (arg, "--tcp"))
            opt.tcp = true;
        else
        if (kim_bench_streq (arg, "--no-ceilings"))
            opt.ceilings = false;
        else
        if (kim_bench_streq (arg, "--no-drain"))
            opt.drain = false;
        else
        if (kim_bench_streq (arg, "--no-counters"))
            opt.counters = false;
        else
        if (kim_bench_streq (arg, "--messages") && s_parse_u32 (next, &opt.messages)) {
            messages_set = true;
            i++;
        }
        else
        if (kim_bench_streq (arg, "--producers") && s_parse_u32 (next, &opt.producers)
        &&  opt.producers <= KIM_BENCH_PRODUCERS_MAX) {
            producers_set = true;
            i++;
        }
        else
        if (kim_bench_streq (arg, "--fill") && s_parse_u32 (next, &opt.fill)) {
            fill_set = true;
            i++;
        }
        else
        if (kim_bench_streq (arg, "--repeat") && s_parse_u32 (next, &opt.repeat)
        &&  opt.repeat <= KIM_BENCH_REPEAT_MAX)
            i++;
        else
        if (kim_bench_streq (arg, "--set") && next && s_add_setting (&opt, next))
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
    //  The brokers kim is compared with limit no client's rate, and the
    //  consumer of --answer sends an ACCEPT and an ack a message, more
    //  than the default rate_limit's 50,000 units/s at full speed: the
    //  workloads measure the broker, so the limit is lifted to the
    //  config's maximum unless --set names one.
    if (!strstr (opt.broker_extra, "    rate_limit = "))
        s_add_setting (&opt, "broker/rate_limit=10000000");
    bool all = kim_bench_streq (opt.workload, "all");
    if (!all && !kim_bench_streq (opt.workload, "W1") && !kim_bench_streq (opt.workload, "W2")
    &&  !kim_bench_streq (opt.workload, "W3") && !kim_bench_streq (opt.workload, "RSS")) {
        s_usage ();
        return 2;
    }
    signal (SIGPIPE, SIG_IGN);

    //  A failed run sets KIM_TEST_KEEP to keep its broker's folder; the
    //  runs after it clean up after themselves unless the caller asked.
    bool keep_asked = getenv ("KIM_TEST_KEEP") != NULL;
    double load_before = kim_bench_load_average ();
    static const char *names [] = { "W1", "W2", "W3", "RSS" };
    bool selected [4];
    for (int w = 0; w < 4; w++)
        selected [w] = all || kim_bench_streq (opt.workload, names [w]);
    bool with_ceilings = opt.ceilings && (selected [0] || selected [1] || selected [2]);

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
                printf ("running the ceilings of the selected workloads' shapes%s...\n", of);
            fflush (stdout);
            kim_bench_settle (&opt);
            kim_bench_ceilings (&opt, &ceil [k]);
            kim_bench_print_ceilings_json (&ceil [k], run, NULL);
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
            kim_bench_settle (&opt);
            if (w == 0)
                kim_bench_workload_flow (&opt, "W1", true, result);
            else
            if (w == 1)
                kim_bench_workload_latency (&opt, result);
            else
            if (w == 2)
                kim_bench_workload_flow (&opt, "W3", false, result);
            else
                kim_bench_workload_rss (&opt, result);
            kim_bench_print_json (&opt, result, &ceil [k], run, NULL);
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
        kim_bench_summarise_ceilings (ceil, rounds, &ceil_summary);
        kim_bench_print_ceilings_json (&ceil_summary.median, 0, &ceil_summary);
        summary_t summaries [4];
        for (int w = 0; w < 4; w++) {
            kim_bench_summarise (&results [w * rounds], rounds, &summaries [w]);
            if (summaries [w].median.ran)
                kim_bench_print_json (&opt, &summaries [w].median, &ceil_summary.median, 0,
                                      &summaries [w]);
        }
        if (!opt.json)
            kim_bench_print_table (&opt, NULL, summaries, 4, &ceil_summary.median,
                                   &ceil_summary, load_before);
    }
    else
    if (!opt.json)
        kim_bench_print_table (&opt, results, NULL, 4, &ceil [0], NULL, load_before);
    bool ok = true;
    for (size_t i = 0; i < (size_t) 4 * rounds; i++)
        if (results [i].ran && !results [i].ok)
            ok = false;
    free (results);
    free (ceil);
    return ok? 0: 1;
}
