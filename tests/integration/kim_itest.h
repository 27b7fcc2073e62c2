/*  kim_itest.h — helpers shared by the integration and fault tests.

    Header-only (static functions) so that each test stays one binary built
    from one file. Every wait here is bounded: helpers poll with timeouts and
    fail the test (KIM_CHECK style: file:line, exit 1) when a deadline passes.

    Test brokers registered with s_itest_track() are killed at exit, also when
    a check fails in the middle of a test, so that no broker outlives its test.
*/
#ifndef KIM_ITEST_H_INCLUDED
#define KIM_ITEST_H_INCLUDED

#include <czmq.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sys/wait.h>

#include "kim/kim_log.h"
#include "kim_testbroker.h"

#define ITEST_BROKERS_MAX 4

static kim_testbroker_t *s_itest_brokers [ITEST_BROKERS_MAX];

static inline void
s_itest_cleanup (void)
{
    for (int i = 0; i < ITEST_BROKERS_MAX; i++)
        if (s_itest_brokers [i])
            kim_testbroker_destroy (&s_itest_brokers [i]);
}

//  Makes a test broker that is killed and removed at exit whatever happens;
//  with the policy file `policy` (KIM_TESTBROKER_TEST_POLICY: the permissive
//  test policy s_itest_broker uses).
static inline kim_testbroker_t *
s_itest_broker_policy (const char *orgs [], const char *extra, const char *policy)
{
    static bool registered = false;
    if (!registered) {
        atexit (s_itest_cleanup);
        registered = true;
    }
    kim_testbroker_t *broker = kim_testbroker_new_policy (orgs, extra, policy);
    KIM_CHECK (broker);
    for (int i = 0; i < ITEST_BROKERS_MAX; i++)
        if (!s_itest_brokers [i]) {
            s_itest_brokers [i] = broker;
            return broker;
        }
    KIM_CHECK (!"too many test brokers");
    return NULL;
}

static inline kim_testbroker_t *
s_itest_broker (const char *orgs [], const char *extra)
{
    return s_itest_broker_policy (orgs, extra, KIM_TESTBROKER_TEST_POLICY);
}

static inline void
s_itest_broker_destroy (kim_testbroker_t **broker_p)
{
    for (int i = 0; i < ITEST_BROKERS_MAX; i++)
        if (s_itest_brokers [i] == *broker_p)
            s_itest_brokers [i] = NULL;
    kim_testbroker_destroy (broker_p);
}

//  Checks a return code and names both codes when they differ.
#define ITEST_RC(rc, expected) \
    s_itest_rc (__FILE__, __LINE__, (rc), (expected), #rc)

static inline void
s_itest_rc (const char *file, int line, int rc, int expected, const char *what)
{
    if (rc != expected) {
        fprintf (stderr, "%s:%d: %s returned %d (%s), expected %d (%s)\n", file, line, what,
                 rc, kim_errname (rc), expected, kim_errname (expected));
        exit (1);
    }
}

static inline int64_t
s_itest_now (void)
{
    return zclock_mono ();
}

//  Verifies the log of the data folder `data_dir` with the broker's public
//  signing key kept there: chain, checkpoints, the checkpoint file. Returns
//  0, or -1 with `why` saying what is wrong.
static inline int
s_itest_verify_log (const char *data_dir, char *why, size_t why_size)
{
    char path [PATH_MAX + 32];
    uint8_t public_key [32];
    snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, data_dir);
    if (kim_log_load_public_key (path, public_key, why, why_size))
        return -1;
    kim_log_verify_t result;
    if (kim_log_verify_store (data_dir, public_key, &result) == 0)
        return 0;
    snprintf (why, why_size, "%s (record %" PRIu64 ", %" PRIu64 " records read)", result.why,
              result.bad_seq, result.records);
    return -1;
}

//  xorshift64*: small and seedable, so that a printed seed repeats a run's
//  random choices (timings, mutations, pages a power cut takes back).
static inline uint64_t
s_itest_rand (uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

//  Runs PROGRAM ARGS through the shell (ARGS already quoted as needed);
//  returns its exit code, its stdout and stderr in `out` (cut to fit).
static inline int
s_itest_run (const char *program, const char *args, char *out, size_t out_size)
{
    char command [4096];
    snprintf (command, sizeof command, "'%s' %s 2>&1", program, args);
    FILE *pipe = popen (command, "r");
    KIM_CHECK (pipe);
    size_t used = 0, got;
    while (used < out_size - 1 && (got = fread (out + used, 1, out_size - 1 - used, pipe)) > 0)
        used += got;
    out [used] = 0;
    int status = pclose (pipe);
    return WIFEXITED (status)? WEXITSTATUS (status): -1;
}

//  Waits until the log in data folder `data` ends in a checkpoint that the
//  broker also saved beside the store. Returns the head.
static inline uint64_t
s_itest_wait_sealed (const char *data)
{
    int64_t deadline = s_itest_now () + 15000;
    char path [PATH_MAX], why [512] = "";
    snprintf (path, sizeof path, "%s/" KIM_LOG_CHECKPOINT_FILE, data);
    while (true) {
        kim_log_t *log = kim_log_open (data, why, sizeof why);
        uint64_t head = 0;
        kim_log_record_t record;
        kim_log_checkpoint_t saved;
        bool sealed = log && kim_log_seek (log, 1, &head) == 0 && head
                   && kim_log_get (log, head, &record) == 0 && record.kind == KIM_LOG_CHECKPOINT
                   && kim_log_load_checkpoint_file (path, &saved) == 0 && saved.seq == head - 1;
        kim_log_close (&log);
        if (sealed)
            return head;
        if (s_itest_now () > deadline) {
            fprintf (stderr, "no checkpoint sealed the log within 15 s (%s)\n", why);
            exit (1);
        }
        zclock_sleep (20);      //  poll interval, not synchronisation
    }
}

static inline void
s_itest_print_event (const char *who, const kim_event_t *event)
{
    switch (event->type) {
        case KIM_EVENT_RECEIPT:
            fprintf (stderr, "%s: RECEIPT msg_id=%s seq=%" PRIu64 " dup=%d\n", who,
                     event->msg_id, event->seq, event->dup);
            break;
        case KIM_EVENT_REJECT:
            fprintf (stderr, "%s: REJECT %s (%d) msg_id=%s path=%s text=%s\n", who,
                     kim_errname (event->code), event->code, event->msg_id, event->path,
                     event->text);
            break;
        case KIM_EVENT_DELIVER:
            fprintf (stderr, "%s: DELIVER seq=%" PRIu64 " msg_id=%s sender=%s size=%zu\n", who,
                     event->seq, event->msg.msg_id, event->msg.sender, event->payload_size);
            break;
        default:
            fprintf (stderr, "%s: event of unknown type %d\n", who, (int) event->type);
    }
}

//  Deterministic payload bytes for a msg_id, so that a receiver can check
//  what it got without keeping copies of everything sent.
static inline void
s_itest_payload (uint8_t *data, size_t size, const char *msg_id)
{
    uint8_t key [crypto_generichash_KEYBYTES];
    crypto_generichash (key, sizeof key, (const uint8_t *) msg_id, strlen (msg_id), NULL, 0);
    randombytes_buf_deterministic (data, size, key);
}

static inline bool
s_itest_payload_ok (const uint8_t *data, size_t size, size_t expected_size, const char *msg_id)
{
    if (size != expected_size)
        return false;
    if (size == 0)
        return true;
    uint8_t *expected = (uint8_t *) malloc (size);
    KIM_CHECK (expected);
    s_itest_payload (expected, size, msg_id);
    bool ok = data && memcmp (data, expected, size) == 0;
    free (expected);
    return ok;
}

//  A REFERRAL with an explicit msg_id and creation time. A REFERRAL opens
//  a new referral (the broker refuses a known referral_id with
//  REFERRAL_EXISTS), so tests that send many messages "of one referral"
//  get the referral_id once and then "<id>.<msg_id>" (same case_id).
static inline void
s_itest_msg (kim_msg_t *msg, const char *to, const char *referral_id, const char *msg_id)
{
    //  Producer threads of the fault tests call this at once.
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static zhashx_t *seen = NULL;
    kim_test_referral (msg, to, referral_id);
    pthread_mutex_lock (&lock);
    if (!seen)
        seen = zhashx_new ();
    if (seen && zhashx_lookup (seen, referral_id))
        snprintf (msg->referral_id, sizeof msg->referral_id, "%.24s.%.39s", referral_id, msg_id);
    else
    if (seen)
        zhashx_insert (seen, referral_id, (void *) 1);
    pthread_mutex_unlock (&lock);
    snprintf (msg->msg_id, sizeof msg->msg_id, "%s", msg_id);
    msg->created_at = (uint64_t) zclock_time ();
}

//  Sends one message with a deterministic payload and waits for its outcome.
static inline int
s_itest_send (kim_client_t *client, const char *to, const char *referral_id,
              const char *msg_id, size_t payload_size, uint64_t *seq, bool *dup)
{
    kim_msg_t msg;
    s_itest_msg (&msg, to, referral_id, msg_id);
    uint8_t *payload = (uint8_t *) malloc (payload_size? payload_size: 1);
    KIM_CHECK (payload);
    s_itest_payload (payload, payload_size, msg_id);
    uint64_t seq_local = 0;
    bool dup_local = false;
    int rc = kim_client_send (client, &msg, payload, payload_size,
                              seq? seq: &seq_local, dup? dup: &dup_local, 10000);
    free (payload);
    return rc;
}

//  Next event, which must be a DELIVER; returns 0 or -KIM_E_TIMEOUT.
//  Any other event fails the test (a recipient that sends nothing gets none).
#define ITEST_DELIVER(client, event, timeout_ms) \
    s_itest_deliver (__FILE__, __LINE__, (client), (event), (timeout_ms))

static inline int
s_itest_deliver (const char *file, int line, kim_client_t *client, kim_event_t *event,
                 int timeout_ms)
{
    int rc = kim_client_recv (client, event, timeout_ms);
    if (rc == -KIM_E_TIMEOUT)
        return rc;
    if (rc != 0) {
        fprintf (stderr, "%s:%d: kim_client_recv failed: %s (%s)\n", file, line,
                 kim_errname (rc), kim_client_error (client));
        exit (1);
    }
    if (event->type != KIM_EVENT_DELIVER) {
        fprintf (stderr, "%s:%d: expected a DELIVER, got:\n", file, line);
        s_itest_print_event ("recipient", event);
        exit (1);
    }
    return 0;
}

//  Polls STATUS until the org's mailbox (and, unless in_flight is -1, its
//  deliveries in flight) reach the given figures. Fails after timeout_ms.
#define ITEST_WAIT_MAILBOX(client, mailbox, in_flight, timeout_ms) \
    s_itest_wait_mailbox (__FILE__, __LINE__, (client), (mailbox), (in_flight), (timeout_ms))

static inline kim_status_t
s_itest_wait_mailbox (const char *file, int line, kim_client_t *client, uint64_t mailbox,
                      int64_t in_flight, int timeout_ms)
{
    int64_t deadline = s_itest_now () + timeout_ms;
    kim_status_t status = { 0 };
    while (true) {
        //  Acks go out at the latest with the next call; make sure they did.
        kim_client_flush (client, 1000);
        int rc = kim_client_status (client, &status, 2000);
        if (rc == 0 && status.mailbox == mailbox
        &&  (in_flight < 0 || status.in_flight == (uint64_t) in_flight))
            return status;
        if (s_itest_now () > deadline) {
            fprintf (stderr, "%s:%d: mailbox did not reach %" PRIu64 " (in flight %" PRId64
                     ") within %d ms: status rc=%s mailbox=%" PRIu64 " in_flight=%" PRIu64 "\n",
                     file, line, mailbox, in_flight, timeout_ms, kim_errname (rc),
                     status.mailbox, status.in_flight);
            exit (1);
        }
        zclock_sleep (10);          //  poll interval, not synchronisation
    }
}

//  Receives events until none arrives for quiet_ms; every one must be a
//  DELIVER. Returns how many arrived (they are not acked).
static inline size_t
s_itest_drain (kim_client_t *client, int quiet_ms)
{
    kim_event_t event;
    size_t count = 0;
    while (ITEST_DELIVER (client, &event, quiet_ms) == 0)
        count++;
    return count;
}

#endif
