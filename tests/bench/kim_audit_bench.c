/*  kim_audit_bench.c — replay and verify speed over a large log (BRIEF §6):
    records per second for an auditor's offline replay (JSON
    lines to /dev/null), offline verify, and online replay through a real
    broker with QUERY flow control.

    It writes the log through the broker's own store (kim_store), so the
    records, hashes and checkpoints are exactly what a broker writes:
    canonical REFERRAL headers of ~300 bytes, a signed checkpoint every
    10,000 records. Then it starts a real kim-broker on that data folder
    and times the real `kim` binary:
        kim audit replay --data DIR > /dev/null
        kim audit verify --data DIR
        kim audit replay --cert AUDITOR ... > /dev/null     (online)
    plus the same offline work in-process through the public module.
    Targets (not a test): replay >= 1,000,000 records/s, verify >= 500,000.

    Usage: kim-audit-bench [--records N] [--kim PATH] [--data DIR] [--smoke]
    --smoke: 20,000 records, checks counts only (CTest).
    --data DIR: keep the generated log in DIR (reused when it exists: for
    profiling); the online part runs only without it.
    Figures are wall time and, in brackets, the CPU time of the work: on a
    busy machine the CPU figure is the one that compares.
*/
#include <sys/resource.h>
#include <sys/wait.h>

#include "kim/kim_log.h"
#include "kim_itest.h"
#include "kim_store.h"

#define S_CHECKPOINT_EVERY  10000

static double
s_seconds (void)
{
    return (double) zclock_usecs () / 1e6;
}

static double
s_cpu (bool children)
{
    struct rusage usage;
    getrusage (children? RUSAGE_CHILDREN: RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec
         + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

//  Writes `records` records into <data>/store; returns the head.
static uint64_t
s_generate (const char *data, uint64_t records, const uint8_t secret_key [64])
{
    char path [512];
    snprintf (path, sizeof path, "%s/store", data);
    kim_store_config_t config = { .path = path, .nosync = true,
                                  .map_size = (size_t) 2 << 30 };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    kim_msg_t msg;
    kim_buf_t buf;
    kim_buf_init (&buf);
    uint64_t now = (uint64_t) zclock_time () - records;
    uint64_t written = 0;
    kim_log_checkpoint_t checkpoint;
    while (written < records) {
        KIM_CHECK (kim_store_begin (store) == 0);
        for (int i = 0; i < S_CHECKPOINT_EVERY - 1 && written < records - 1; i++, written++) {
            char id [32];
            snprintf (id, sizeof id, "r-%" PRIu64, written / 4);
            kim_test_referral (&msg, written % 3? "jc.rheine": "ja.rheine", id);
            snprintf (msg.msg_id, sizeof msg.msg_id, "m-%" PRIu64, written);
            snprintf (msg.sender, sizeof msg.sender, "kim.rheine");
            msg.created_at = now + written;
            msg.payload_len = 1024;
            msg.has_payload_hash = true;
            crypto_generichash (msg.payload_hash, KIM_HASH_SIZE, (const uint8_t *) id,
                                strlen (id), NULL, 0);
            kim_buf_reset (&buf);
            KIM_CHECK (kim_msg_encode (&msg, &buf) == 0);
            KIM_CHECK (kim_store_append (store, KIM_RECORD_MESSAGE, now + written, buf.data,
                                         buf.size, NULL) == 0);
        }
        memset (&checkpoint, 0, sizeof checkpoint);
        checkpoint.seq = kim_store_head (store);
        memcpy (checkpoint.head, kim_store_head_hash (store), KIM_HASH_SIZE);
        checkpoint.time_ms = now + written;
        kim_log_checkpoint_sign (&checkpoint, secret_key);
        uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
        kim_log_checkpoint_encode (&checkpoint, body);
        KIM_CHECK (kim_store_append (store, KIM_RECORD_CHECKPOINT, now + written, body,
                                     sizeof body, NULL) == 0);
        written++;
        bool retry = false;
        KIM_CHECK (kim_store_commit (store, &retry) == 0);
    }
    uint64_t head = kim_store_head (store);
    kim_store_destroy (&store);
    kim_buf_free (&buf);
    //  The checkpoint file a broker keeps beside the store
    uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
    kim_log_checkpoint_encode (&checkpoint, body);
    char hex [2 * KIM_LOG_CHECKPOINT_SIZE + 1];
    sodium_bin2hex (hex, sizeof hex, body, sizeof body);
    snprintf (path, sizeof path, "%s/" KIM_LOG_CHECKPOINT_FILE, data);
    FILE *file = fopen (path, "w");
    KIM_CHECK (file && fprintf (file, "%s\n", hex) > 0);
    fclose (file);
    return head;
}

//  Runs a shell command; returns its wall time, fails on a non-zero exit.
static double s_last_cpu;

static double
s_time_command (const char *command)
{
    double start = s_seconds ();
    double cpu = s_cpu (true);
    int status = system (command);
    double elapsed = s_seconds () - start;
    s_last_cpu = s_cpu (true) - cpu;
    if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
        fprintf (stderr, "kim-audit-bench: failed: %s\n", command);
        exit (1);
    }
    return elapsed;
}

static void
s_report (const char *what, uint64_t records, double seconds, double cpu)
{
    printf ("%-42s %8" PRIu64 " records %7.3f s %9.0f/s  (cpu %6.3f s %9.0f/s)\n", what,
            records, seconds, records / seconds, cpu, records / cpu);
    fflush (stdout);
}

int
main (int argc, char *argv [])
{
    uint64_t records = 1000000;
    const char *kim = NULL;
    const char *keep = NULL;
    bool smoke = false;
    for (int i = 1; i < argc; i++) {
        if (streq (argv [i], "--records") && i + 1 < argc)
            records = strtoull (argv [++i], NULL, 10);
        else
        if (streq (argv [i], "--kim") && i + 1 < argc)
            kim = argv [++i];
        else
        if (streq (argv [i], "--data") && i + 1 < argc)
            keep = argv [++i];
        else
        if (streq (argv [i], "--smoke"))
            smoke = true;
        else {
            fprintf (stderr, "usage: kim-audit-bench [--records N] [--kim PATH] [--data DIR] "
                     "[--smoke]\n");
            return 2;
        }
    }
    if (smoke)
        records = 20000;
    KIM_CHECK (sodium_init () >= 0 && records >= 2);
    uint8_t public_key_kept [32];
    uint64_t head = 0;
    double start = 0, cpu = 0;
    const char *orgs [] = { "kim.rheine", "jc.rheine", "ja.rheine", "dsb.nrw:auditor", NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    char data [256], path [512];
    snprintf (data, sizeof data, "%s/data", kim_testbroker_dir (broker));
    if (keep)
        snprintf (data, sizeof data, "%s", keep);
    snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, data);
    char why [512];
    if (keep && kim_log_load_public_key (path, public_key_kept, why, sizeof why) == 0)
        goto measure;
    snprintf (path, sizeof path, "%s/keys", data);
    KIM_CHECK (zsys_dir_create ("%s", path) == 0);

    //  The broker's signing key, as the audit module would make it
    uint8_t secret_key [64];
    crypto_sign_keypair (public_key_kept, secret_key);
    char hex [129];
    snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, data);
    FILE *file = fopen (path, "w");
    KIM_CHECK (file);
    fprintf (file, "%s\n", sodium_bin2hex (hex, sizeof hex, public_key_kept, 32));
    fclose (file);
    snprintf (path, sizeof path, "%s/keys/broker.sign_secret", data);
    file = fopen (path, "w");
    KIM_CHECK (file && chmod (path, 0600) == 0);
    fprintf (file, "%s\n", sodium_bin2hex (hex, sizeof hex, secret_key, 64));
    fclose (file);

    start = s_seconds ();
    cpu = s_cpu (false);
    head = s_generate (data, records, secret_key);
    KIM_CHECK (head == records);
    s_report ("generate (kim_store, nosync)", head, s_seconds () - start, s_cpu (false) - cpu);

measure:;
    //  In-process, through the public module
    const uint8_t *public_key = public_key_kept;
    kim_log_t *log = kim_log_open (data, why, sizeof why);
    KIM_CHECK (log);
    FILE *null = fopen ("/dev/null", "w");
    KIM_CHECK (null);
    kim_buf_t out;
    kim_buf_init (&out);
    start = s_seconds ();
    cpu = s_cpu (false);
    KIM_CHECK (kim_log_seek (log, 1, NULL) == 0);
    kim_log_record_t record;
    uint64_t count = 0;
    while (kim_log_next (log, &record) == 1) {
        KIM_CHECK (kim_log_record_to_json (&record, false, &out) == 0);
        if (out.size >= (1 << 20)) {
            KIM_CHECK (fwrite (out.data, 1, out.size, null) == out.size);
            kim_buf_reset (&out);
        }
        count++;
    }
    KIM_CHECK (fwrite (out.data, 1, out.size, null) == out.size);
    KIM_CHECK (keep || count == head);
    head = count;
    s_report ("replay in-process (JSON to /dev/null)", count, s_seconds () - start,
              s_cpu (false) - cpu);
    kim_log_close (&log);
    fclose (null);
    kim_buf_free (&out);

    kim_log_verify_t result;
    start = s_seconds ();
    cpu = s_cpu (false);
    KIM_CHECK (kim_log_verify_store (data, public_key, &result) == 0);
    KIM_CHECK (result.last == head && result.sealed == head);    //  the checkpoint seals itself
    s_report ("verify in-process (chain + signatures)", result.records, s_seconds () - start,
              s_cpu (false) - cpu);

    if (kim) {
        char command [2048];
        snprintf (command, sizeof command, "%s audit replay --data %s > /dev/null", kim, data);
        double seconds = s_time_command (command);
        s_report ("kim audit replay --data (offline)", head, seconds, s_last_cpu);
        snprintf (command, sizeof command, "%s audit verify --data %s > /dev/null", kim, data);
        seconds = s_time_command (command);
        s_report ("kim audit verify --data (offline)", head, seconds, s_last_cpu);
    }
    if (kim && !keep) {
        char command [2048];
        //  Online: a real broker on this folder, the auditor streams it all
        KIM_CHECK (kim_testbroker_start (broker) == 0);
        kim_client_config_t config = kim_testbroker_client_config (broker, "dsb.nrw", 0, false);
        uint8_t public_bin [32], secret_bin [32];
        KIM_CHECK (zmq_z85_decode (public_bin, config.public_key)
                   && zmq_z85_decode (secret_bin, config.secret_key));
        zcert_t *cert = zcert_new_from (public_bin, secret_bin);
        snprintf (path, sizeof path, "%s/auditor.cert", kim_testbroker_dir (broker));
        KIM_CHECK (cert && zcert_save (cert, path) == 0);
        zcert_destroy (&cert);
        //  Timed to /dev/null; then (smoke) once more into a file to count
        //  every record and the query's own read
        const char *format = "%s audit replay --cert %s_secret --broker-key %s/keys/broker.cert "
                             "--endpoint %s --window 4096 --timeout 30000 > %s";
        char out_path [300];
        snprintf (out_path, sizeof out_path, "%s/online.jsonl", kim_testbroker_dir (broker));
        snprintf (command, sizeof command, format, kim, path, data,
                  kim_testbroker_endpoint (broker, false), "/dev/null");
        double seconds = s_time_command (command);
        double tool_cpu = s_last_cpu;
        if (smoke) {
            snprintf (command, sizeof command, format, kim, path, data,
                      kim_testbroker_endpoint (broker, false), out_path);
            s_time_command (command);
            snprintf (command, sizeof command, "test $(wc -l < %s) -gt %" PRIu64, out_path, head);
            s_time_command (command);
        }
        //  cpu: the kim tool's; the broker's share is not counted
        s_report ("kim audit replay --cert (online, QUERY)", head, seconds, tool_cpu);
        KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);
    }
    s_itest_broker_destroy (&broker);
    return 0;
}
