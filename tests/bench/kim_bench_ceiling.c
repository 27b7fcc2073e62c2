/*  kim_bench_ceiling.c — the hardware ceilings kim is compared with,
    measured in the same run as the workloads: raw ZeroMQ forwarding in the
    W1 shape (kim-ceiling-zmq, from ../shared/bench), the same with
    CurveZMQ on every socket (kim-ceiling-curve, kim_ceiling_curve.c), and
    raw LMDB appends (kim-ceiling-lmdb, from ../shared/bench). The CurveZMQ
    forwarder runs again storing every message as a broker with kim's
    guarantees must (--durable, kim_ceiling_store.c), in W1's shape and in
    W2's: what those guarantees leave reachable here before kim's own work.

    Each tool runs as a child process, found beside kim-bench or named by
    KIM_CEILING_ZMQ, KIM_CEILING_CURVE or KIM_CEILING_LMDB, with every wait
    bounded; the figures are read from the JSON line it prints last. A tool
    that is missing or fails is reported on stderr and left out: a ceiling
    never fails kim-bench.
*/
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kim_bench.h"

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
    uint64_t deadline = kim_bench_now_ns () + (uint64_t) timeout_s * 1000000000ull;
    bool timed_out = false;
    for (;;) {
        uint64_t now = kim_bench_now_ns ();
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
s_remove (const char *folder)
{
    char command [PATH_MAX + 16];
    snprintf (command, sizeof command, "rm -rf '%s'", folder);
    if (system (command) != 0)
        fprintf (stderr, "ceiling: could not remove %s\n", folder);
}

//  Runs kim-ceiling-curve in W2's shape and takes its latencies.
static bool
s_run_w2 (char *const argv [], double *p50_us, double *p99_us)
{
    char line [4096];
    return s_run_tool (argv, 90, line, sizeof line)
        && s_json_number (line, "p50_us", p50_us)
        && s_json_number (line, "p99_us", p99_us);
}

//  W2's shape, one producer paced as W2 and one consumer, through the
//  ZeroMQ+CURVE forwarder: as it is (the first term of the W2 target), and
//  storing each message as a durable broker with kim's guarantees must,
//  which is what the target means by "one durable commit and nothing else".
static void
s_ceilings_w2 (const options_t *opt, char *path, ceilings_t *ceil)
{
    char messages [16], rate [16], payload [16];
    snprintf (messages, sizeof messages, "%u", opt->w2_rate * opt->w2_seconds);
    snprintf (rate, sizeof rate, "%u", opt->w2_rate);
    snprintf (payload, sizeof payload, "%u", opt->payload);
    char *argv [] = { path, "--producers", "1", "--messages", messages, "--rate", rate,
                      "--payload", payload, "--limit", "60", NULL, NULL, NULL, NULL, NULL };
    ceil->w2_curve_ran = s_run_w2 (argv, &ceil->w2_curve_p50_us, &ceil->w2_curve_p99_us);
    if (!ceil->w2_curve_ran)
        fprintf (stderr, "ceiling: ZeroMQ+CURVE run in W2's shape failed\n");
    char folder [] = "/tmp/kim-ceiling-XXXXXX";
    if (!mkdtemp (folder))
        return;
    argv [11] = "--durable";
    argv [12] = folder;
    ceil->w2_durable_ran = s_run_w2 (argv, &ceil->w2_durable_p50_us, &ceil->w2_durable_p99_us);
    if (!ceil->w2_durable_ran)
        fprintf (stderr, "ceiling: durable ZeroMQ+CURVE run in W2's shape failed\n");
    s_remove (folder);
    //  The same with a journal in front of LMDB: what W2 could reach with
    //  one flush of a few sequential pages a commit (tests/bench/README.md)
    strcpy (folder, "/tmp/kim-ceiling-XXXXXX");
    if (!mkdtemp (folder))
        return;
    argv [13] = "--commit";
    argv [14] = "journal";
    ceil->w2_journal_ran = s_run_w2 (argv, &ceil->w2_journal_p50_us, &ceil->w2_journal_p99_us);
    if (!ceil->w2_journal_ran)
        fprintf (stderr, "ceiling: durable ZeroMQ+CURVE run with a journal in W2's shape failed\n");
    s_remove (folder);
}

//  W1's shape: four producers flat out, one consumer.
static void
s_ceilings_w1 (const options_t *opt, ceilings_t *ceil)
{
    char path [PATH_MAX], line [4096];
    if (s_tool_path ("kim-ceiling-zmq", path, sizeof path)) {
        char front [16], back [16], producers [16], messages [16], window [16], payload [16];
        snprintf (front, sizeof front, "%d", kim_testbroker_free_port ());
        snprintf (back, sizeof back, "%d", kim_testbroker_free_port ());
        snprintf (producers, sizeof producers, "%u", opt->producers);
        snprintf (messages, sizeof messages, "%u", opt->messages);
        snprintf (window, sizeof window, "%u", opt->send_window);
        snprintf (payload, sizeof payload, "%u", opt->payload);
        char *broker_argv [] = { path, "broker", front, back, "60", NULL };
        pid_t broker = s_spawn (broker_argv, -1);
        kim_bench_sleep_ms (100);
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
                                NULL, NULL, NULL, NULL, NULL };
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
        //  Again with frames of up to 64 messages, as protocol version 2
        //  packs SENDs, deliveries, confirms and acks: CURVE then boxes a
        //  frame, not a message, which is the ceiling version 2 can reach.
        curve_argv [11] = "--batch";
        curve_argv [12] = "64";
        if (s_run_tool (curve_argv, 90, line, sizeof line)
        &&  s_json_number (line, "ack_rate", &ceil->batch_ack_rate)
        &&  ceil->batch_ack_rate > 0)
            ceil->batch_ran = true;
        else
            fprintf (stderr, "ceiling: ZeroMQ+CURVE run with 64 a frame failed\n");
        //  And storing each message as a broker with kim's guarantees must
        //  before it confirms and forwards it: the W1 that those guarantees
        //  leave reachable on this machine, before kim's own work.
        char folder [] = "/tmp/kim-ceiling-XXXXXX";
        if (mkdtemp (folder)) {
            curve_argv [13] = "--durable";
            curve_argv [14] = folder;
            if (s_run_tool (curve_argv, 90, line, sizeof line)
            &&  s_json_number (line, "ack_rate", &ceil->durable_ack_rate)
            &&  ceil->durable_ack_rate > 0)
                ceil->durable_ran = true;
            else
                fprintf (stderr, "ceiling: durable ZeroMQ+CURVE run failed\n");
            s_remove (folder);
        }
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
            s_remove (folder);
        }
        if (!ceil->lmdb_ran)
            fprintf (stderr, "ceiling: LMDB run failed\n");
    }
    else
        fprintf (stderr, "ceiling: kim-ceiling-lmdb not built (needs ../shared/bench); skipped\n");
}

void
kim_bench_ceilings (const options_t *opt, ceilings_t *ceil)
{
    //  W1 and W3 are held against W1's shape, W2 against its own.
    bool all = kim_bench_streq (opt->workload, "all");
    if (all || kim_bench_streq (opt->workload, "W1") || kim_bench_streq (opt->workload, "W3"))
        s_ceilings_w1 (opt, ceil);
    char path [PATH_MAX];
    if ((all || kim_bench_streq (opt->workload, "W2"))
    &&  s_tool_path ("kim-ceiling-curve", path, sizeof path))
        s_ceilings_w2 (opt, path, ceil);
}
