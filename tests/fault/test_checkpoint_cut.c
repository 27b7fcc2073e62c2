/*  test_checkpoint_cut.c — a power cut right after the broker saved its
    latest signed checkpoint beside the log must leave a log that verifies.

    The broker keeps the latest checkpoint also outside the log
    (<data>/audit.checkpoint), so that a log whose tail was cut off shows.
    That file must therefore never claim records the disk may still lose:
    it may only be written once the records it covers are durable. Here the
    broker runs with the power-cut library (tests/fault/powercut), which
    kills it the moment the checkpoint file is renamed into place
    (KIM_POWERCUT_KILL_AFTER_RENAME); the test then takes back every write
    no flush covered, verifies the log against the checkpoint file
    (kim_log_verify_store), and starts the broker again.

    Two ways a checkpoint is made: under traffic (three rounds, one every 5
    records), and in a tick that wrote records of its own: three referrals
    are logged and sealed by a broker that is not killed, then, with the
    broker started again on that log, the clock moves past their deadlines
    and past the checkpoint interval, so that one batch holds the OVERDUE
    records and the checkpoint that covers them.

    Needs KIM_POWERCUT (the library's path); CTest sets it.
*/
#include "kim_itest.h"
#include "kim_powercut.h"

#define RECIPIENT   "jc.rheine"
#define SENDER      "kim.rheine"
#define ROUNDS      3

//  Whether the broker has ended (it killed itself), without reaping it.
static bool
s_dead (pid_t pid)
{
    siginfo_t info;
    memset (&info, 0, sizeof info);
    return waitid (P_PID, (id_t) pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0
        && info.si_pid == pid;
}

static int
s_send_seq (kim_client_t *client, const char *prefix, int n, int timeout_ms, uint64_t *seq)
{
    char msg_id [32], referral [32];
    snprintf (msg_id, sizeof msg_id, "%s-%d", prefix, n);
    snprintf (referral, sizeof referral, "R-%s-%d", prefix, n);
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, referral, msg_id);
    bool dup = false;
    return kim_client_send (client, &msg, (const uint8_t *) "x", 1, seq, &dup, timeout_ms);
}

static int
s_send (kim_client_t *client, const char *prefix, int n, int timeout_ms)
{
    uint64_t seq = 0;
    return s_send_seq (client, prefix, n, timeout_ms, &seq);
}

//  The seq the checkpoint file covers (0 while there is none).
static uint64_t
s_checkpoint_seq (const char *data_dir)
{
    char path [PATH_MAX + 32];
    snprintf (path, sizeof path, "%s/" KIM_LOG_CHECKPOINT_FILE, data_dir);
    kim_log_checkpoint_t checkpoint;
    return kim_log_load_checkpoint_file (path, &checkpoint) == 0? checkpoint.seq: 0;
}

//  After the broker killed itself: cuts the power, then the log must verify
//  against the checkpoint file.
static void
s_cut_and_verify (kim_testbroker_t *broker, const char *data_dir, uint64_t *rng,
                  const char *what)
{
    int status = kim_testbroker_stop (broker, SIGKILL);
    KIM_CHECK (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);
    kim_powercut_stats_t cut;
    KIM_CHECK (kim_powercut_apply (data_dir, true, rng, &cut) == 0);
    char why [512];
    int rc = s_itest_verify_log (data_dir, why, sizeof why);
    printf ("%s: killed after saving a checkpoint; power cut: %" PRIu64 " of %" PRIu64
            " pages set back; the log %s%s\n", what, cut.pages_back, cut.pages,
            rc? "does not verify: ": "verifies", rc? why: "");
    if (rc) {
        fprintf (stderr, "test_checkpoint_cut: FAILED: the checkpoint file claims records "
                 "the power cut took back\n");
        exit (1);
    }
}

//  Waits until the broker killed itself (at most 20 s), sending messages
//  meanwhile if `client` is given.
static void
s_await_death (kim_testbroker_t *broker, kim_client_t *client, int *sent)
{
    pid_t pid = kim_testbroker_pid (broker);
    int64_t deadline = s_itest_now () + 20000;
    while (!s_dead (pid)) {
        KIM_CHECK (s_itest_now () < deadline);
        if (client && s_send (client, "cut", *sent, 500) == 0)
            (*sent)++;
        else
        if (!client)
            zclock_sleep (20);          //  poll interval, not synchronisation
    }
}

//  Checkpoints made under traffic.
static void
s_traffic (const char *powercut, uint64_t *rng)
{
    const char *orgs [] = { RECIPIENT, SENDER, NULL };
    kim_testbroker_t *broker =
        s_itest_broker (orgs, "audit\n    checkpoint_records = 5\n    checkpoint_seconds = 1\n");
    char data_dir [PATH_MAX];
    snprintf (data_dir, sizeof data_dir, "%s/data", kim_testbroker_dir (broker));
    kim_testbroker_preload (broker, powercut);
    KIM_CHECK (setenv ("KIM_POWERCUT_DIR", data_dir, 1) == 0);
    int sent = 0;
    for (int round = 0; round < ROUNDS; round++) {
        //  A start writes no checkpoint (nothing new logged): it serves
        KIM_CHECK (setenv ("KIM_POWERCUT_KILL_AFTER_RENAME", KIM_LOG_CHECKPOINT_FILE, 1) == 0);
        KIM_CHECK (kim_testbroker_start (broker) == 0);
        kim_client_t *client = kim_testbroker_client (broker, SENDER, 0, false);
        KIM_CHECK (client);
        s_await_death (broker, client, &sent);
        kim_client_destroy (&client);
        char what [64];
        snprintf (what, sizeof what, "traffic, round %d (%d sent)", round, sent);
        s_cut_and_verify (broker, data_dir, rng, what);
    }
    //  The broker serves on the folder the cuts left
    KIM_CHECK (unsetenv ("KIM_POWERCUT_KILL_AFTER_RENAME") == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *client = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (client);
    ITEST_RC (s_send (client, "last", 0, 5000), 0);
    kim_client_destroy (&client);
    s_itest_broker_destroy (&broker);
}

//  A checkpoint made in a tick that wrote records of its own.
static void
s_tick (const char *powercut, uint64_t *rng)
{
    const char *orgs [] = { RECIPIENT, SENDER, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs,
        "audit\n    checkpoint_records = 1\n    checkpoint_seconds = 3600\n");
    const char *dir = kim_testbroker_dir (broker);
    char data_dir [PATH_MAX], clock_path [PATH_MAX];
    snprintf (data_dir, sizeof data_dir, "%s/data", dir);
    snprintf (clock_path, sizeof clock_path, "%s/clock", dir);
    FILE *file = fopen (clock_path, "w");
    KIM_CHECK (file && fprintf (file, "0\n") > 0 && fclose (file) == 0);
    KIM_CHECK (setenv ("KIM_CLOCK_FILE", clock_path, 1) == 0);
    kim_testbroker_preload (broker, powercut);
    KIM_CHECK (setenv ("KIM_POWERCUT_DIR", data_dir, 1) == 0);
    //  The referrals go to a broker the library does not kill: its ticks
    //  seal each (checkpoint_records = 1), and it is stopped once the log
    //  ends in a checkpoint, so that the next start has nothing to seal
    //  until the clock moves
    KIM_CHECK (unsetenv ("KIM_POWERCUT_KILL_AFTER_RENAME") == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *client = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (client);
    uint64_t last = 0;
    for (int i = 0; i < 3; i++)
        ITEST_RC (s_send_seq (client, "due", i, 5000, &last), 0);
    kim_client_destroy (&client);
    int64_t deadline = s_itest_now () + 20000;
    while (s_checkpoint_seq (data_dir) < last) {
        KIM_CHECK (s_itest_now () < deadline);
        zclock_sleep (20);              //  poll interval, not synchronisation
    }
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    KIM_CHECK (setenv ("KIM_POWERCUT_KILL_AFTER_RENAME", KIM_LOG_CHECKPOINT_FILE, 1) == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    //  15 days on: past the deadlines (14 days) and the checkpoint interval
    file = fopen (clock_path, "w");
    KIM_CHECK (file && fprintf (file, "%llu\n", 15ULL * 86400 * 1000) > 0 && fclose (file) == 0);
    s_await_death (broker, NULL, NULL);
    s_cut_and_verify (broker, data_dir, rng, "a tick with deadlines due");
    KIM_CHECK (unsetenv ("KIM_POWERCUT_KILL_AFTER_RENAME") == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    KIM_CHECK (unsetenv ("KIM_CLOCK_FILE") == 0);
    s_itest_broker_destroy (&broker);
}

int
main (void)
{
    const char *powercut = getenv ("KIM_POWERCUT");
    if (!powercut || access (powercut, R_OK)) {
        fprintf (stderr, "test_checkpoint_cut: KIM_POWERCUT must name the power-cut library\n");
        return 1;
    }
    uint64_t rng = 1;
    s_traffic (powercut, &rng);
    s_tick (powercut, &rng);
    printf ("test_checkpoint_cut: OK\n");
    return 0;
}
