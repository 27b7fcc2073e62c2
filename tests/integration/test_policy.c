/*  test_policy.c — lawful by default, over a real broker running the shipped
    deploy/policy.cfg: denials name rule and law and leave a DECISION record;
    consent grant, scope, expiry (test clock) and revocation while a
    referral is in flight; the access report; erasure followed by a check
    of the whole hash chain through a read-only store; a malformed policy
    file stops the broker at start with an error naming file, line and key.
*/
#include <czmq.h>
#include <signal.h>
#include <sys/wait.h>

#include "kim_itest.h"
#include "kim_store.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"
#define ABA     "aba.rheine"
#define SCH     "sch.rheine"
#define KI      "ki.steinfurt"
#define COE     "kim.coesfeld"

static char s_error [KIM_TEXT_MAX * 2];

//  Sends and waits for RECEIPT (returns 0) or REJECT (returns -code; the
//  text lands in s_error).
static int
s_send (kim_client_t *client, kim_msg_t *msg, const char *payload, uint64_t *seq)
{
    uint64_t seq_local = 0;
    bool dup = false;
    msg->created_at = (uint64_t) zclock_time ();
    int rc = kim_client_send (client, msg, payload, payload? strlen (payload): 0,
                              seq? seq: &seq_local, &dup, 10000);
    snprintf (s_error, sizeof s_error, "%s", rc? kim_client_error (client): "");
    return rc;
}

static void
s_referral (kim_msg_t *msg, const char *to, const char *id, const char *purpose,
            const char *consent, uint32_t categories)
{
    kim_test_referral (msg, to, id);
    snprintf (msg->msg_id, sizeof msg->msg_id, "m-%s", id);
    snprintf (msg->case_id, sizeof msg->case_id, "case-A");
    snprintf (msg->subject, sizeof msg->subject, "p-1");
    snprintf (msg->purpose, sizeof msg->purpose, "%s", purpose);
    msg->categories = categories;
    if (consent) {
        msg->basis = KIM_BASIS_CONSENT;
        msg->citation [0] = 0;
        snprintf (msg->consent_id, sizeof msg->consent_id, "%s", consent);
    }
}

static void
s_grant (kim_msg_t *msg, const char *id, const char *to, uint64_t valid_until)
{
    kim_msg_init (msg);
    msg->type = KIM_TYPE_CONSENT_GRANT;
    snprintf (msg->msg_id, sizeof msg->msg_id, "grant-%s", id);
    snprintf (msg->case_id, sizeof msg->case_id, "case-A");
    snprintf (msg->grant_id, sizeof msg->grant_id, "%s", id);
    snprintf (msg->subject, sizeof msg->subject, "p-1");
    msg->recipient_count = 1;
    snprintf (msg->recipients [0], sizeof msg->recipients [0], "%s", to);
    msg->purpose_count = 1;
    snprintf (msg->purposes [0], sizeof msg->purposes [0], "employment");
    msg->categories = KIM_CAT_RESIDENCE_STATUS;
    msg->valid_until = valid_until;
}

#define EXPECT_REFUSED(rc, code, ...) s_expect_refused (__LINE__, (rc), (code), __VA_ARGS__, NULL)

//  The REJECT had `code` and its text names every string given.
static void
s_expect_refused (int line, int rc, int code, ...)
{
    bool ok = rc == -code;
    va_list args;
    va_start (args, code);
    for (const char *part = va_arg (args, const char *); part; part = va_arg (args, const char *))
        ok = ok && strstr (s_error, part) != NULL;
    va_end (args);
    if (!ok) {
        fprintf (stderr, "test_policy.c:%d: expected %s, got %s: %s\n", line, kim_errname (code),
                 kim_errname (rc), s_error);
        exit (1);
    }
    printf ("  refused as expected: %s: %s\n", kim_errname (code), s_error);
}

//  Receives until a DELIVER of `type` (acking every other delivery).
static void
s_await (kim_client_t *client, kim_type_t type, kim_event_t *event, const char *what)
{
    int64_t deadline = s_itest_now () + 10000;
    while (s_itest_now () < deadline) {
        int rc = kim_client_recv (client, event, 1000);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        ITEST_RC (rc, 0);
        if (event->type != KIM_EVENT_DELIVER)
            continue;
        //  The caller acks the one it waited for, once done with its
        //  payload (which lives only until the next kim_client_ call).
        if (event->msg.type == type)
            return;
        ITEST_RC (kim_client_ack (client, event->seq), 0);
    }
    fprintf (stderr, "test_policy: no %s arrived within 10 s\n", what);
    exit (1);
}

static void
s_set_clock (const char *path, long long offset_ms)
{
    char temp [PATH_MAX];
    snprintf (temp, sizeof temp, "%s.new", path);
    FILE *file = fopen (temp, "w");
    KIM_CHECK (file);
    fprintf (file, "%lld\n", offset_ms);
    fclose (file);
    KIM_CHECK (rename (temp, path) == 0);
}

//  Waits until the broker's log says it applied a clock jump.
static void
s_await_clock (kim_testbroker_t *broker, const char *line)
{
    char path [256];
    snprintf (path, sizeof path, "%s/broker.log", kim_testbroker_dir (broker));
    int64_t deadline = s_itest_now () + 10000;
    while (s_itest_now () < deadline) {
        FILE *file = fopen (path, "r");
        bool seen = false;
        if (file) {
            char buffer [1024];
            while (!seen && fgets (buffer, sizeof buffer, file))
                seen = strstr (buffer, line) != NULL;
            fclose (file);
        }
        if (seen)
            return;
        zclock_sleep (50);
    }
    fprintf (stderr, "the broker did not log '%s' within 10 s\n", line);
    KIM_CHECK (false);
}

//  A malformed policy file: the broker refuses to start and says where.
static void
s_test_malformed (const char *orgs [])
{
    char path [] = "/tmp/kim-policy-bad-XXXXXX";
    int fd = mkstemp (path);
    KIM_CHECK (fd >= 0);
    const char *text = "policy\n    version = 1\nrules\n    P1\n        law = x\n"
                       "        from = *\n        to = jc\n        decision = alow\n";
    KIM_CHECK (write (fd, text, strlen (text)) == (ssize_t) strlen (text));
    close (fd);
    kim_testbroker_t *broker = kim_testbroker_new_policy (orgs, NULL, path);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == -1);
    char log_path [PATH_MAX];
    snprintf (log_path, sizeof log_path, "%s/broker.log", kim_testbroker_dir (broker));
    char *log = NULL;
    zfile_t *file = zfile_new (NULL, log_path);
    zchunk_t *chunk = file && zfile_input (file) == 0? zfile_read (file, 1 << 20, 0): NULL;
    if (chunk)
        log = zchunk_strdup (chunk);
    zchunk_destroy (&chunk);
    zfile_destroy (&file);
    char expected [PATH_MAX + 64];
    snprintf (expected, sizeof expected, "policy/file: %s:8: rules/P1/decision: 'alow'", path);
    if (!log || !strstr (log, expected)) {
        fprintf (stderr, "test_policy: broker log lacks '%s':\n%s\n", expected, log? log: "(none)");
        exit (1);
    }
    printf ("  malformed policy refused at start: %s\n", expected);
    free (log);
    kim_testbroker_destroy (&broker);
    unlink (path);
}

//  Recomputes the hash chain over every record of the stopped broker's log.
static void
s_verify_chain (const char *dir, uint64_t purged_seq, int *decisions, int *purges)
{
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/data/store", dir);
    kim_store_config_t config = { .path = path, .read_only = true };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    KIM_CHECK (kim_store_read_begin (store) == 0);
    uint64_t head = kim_store_head (store);
    uint8_t prev [KIM_HASH_SIZE] = { 0 };
    *decisions = *purges = 0;
    for (uint64_t seq = 1; seq <= head; seq++) {
        kim_record_t record;
        KIM_CHECK (kim_store_read (store, seq, &record) == 0);
        uint8_t hash [KIM_HASH_SIZE];
        kim_store_record_hash (prev, record.kind, record.seq, record.time_ms, record.body,
                               record.body_size, hash);
        if (memcmp (hash, record.hash, KIM_HASH_SIZE) != 0) {
            fprintf (stderr, "test_policy: chain broken at seq %" PRIu64 "\n", seq);
            exit (1);
        }
        memcpy (prev, hash, KIM_HASH_SIZE);
        *decisions += record.kind == KIM_RECORD_DECISION;
        *purges += record.kind == KIM_RECORD_PURGE;
        if (seq == purged_seq) {
            //  The record still describes the payload it no longer has.
            kim_msg_t msg;
            kim_decode_error_t error;
            KIM_CHECK (kim_msg_decode (&msg, record.body, record.body_size, &error) == 0);
            KIM_CHECK (msg.has_payload_hash && msg.payload_len > 0);
            KIM_CHECK (streq (msg.rule, "P8"));
            const uint8_t *data = NULL;
            size_t size = 1;
            KIM_CHECK (kim_store_payload_get (store, seq, &data, &size) == 0);
            KIM_CHECK (data == NULL && size == 0);
        }
    }
    kim_store_read_end (store);
    kim_store_destroy (&store);
    printf ("  chain verified over %" PRIu64 " records after erasure (%d decisions, %d purges)\n",
            head, *decisions, *purges);
}

int
main (int argc, char *argv [])
{
    const char *orgs [] = { KIM, JC, ABA, SCH, KI, COE, NULL };
    s_test_malformed (orgs);

    static kim_testbroker_t *broker;
    broker = kim_testbroker_new_policy (orgs, NULL, KIM_POLICY_PATH);
    KIM_CHECK (broker);
    char clock_path [PATH_MAX];
    snprintf (clock_path, sizeof clock_path, "%s/clock", kim_testbroker_dir (broker));
    s_set_clock (clock_path, 0);
    setenv ("KIM_CLOCK_FILE", clock_path, 1);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 64, false);
    kim_client_t *jc = kim_testbroker_client (broker, JC, 64, false);
    kim_client_t *sch = kim_testbroker_client (broker, SCH, 0, false);
    kim_client_t *coe = kim_testbroker_client (broker, COE, 0, false);
    KIM_CHECK (kim && jc && sch && coe);
    kim_msg_t msg;
    kim_event_t event;
    uint64_t now = (uint64_t) zclock_time ();

    //  Denials name the rule and the law.
    s_referral (&msg, ABA, "r-school", "residence", NULL, 0);
    EXPECT_REFUSED (s_send (sch, &msg, "x", NULL), KIM_E_POLICY_DENY, "rule P5", "§ 87 Abs. 1 AufenthG");
    s_referral (&msg, JC, "r-statute", "employment", NULL, 0);
    EXPECT_REFUSED (s_send (kim, &msg, "x", NULL), KIM_E_NO_BASIS, "rule P8", "needs a registered consent");
    s_referral (&msg, KI, "r-ki", "coordination", "C-1", 0);
    EXPECT_REFUSED (s_send (kim, &msg, "x", NULL), KIM_E_POLICY_DENY, "rule P11");
    s_referral (&msg, JC, "r-1", "employment", "C-1", KIM_CAT_RESIDENCE_STATUS);
    EXPECT_REFUSED (s_send (kim, &msg, "x", NULL), KIM_E_CONSENT_UNKNOWN, "consent C-1 is not registered");

    //  Citations are read as provisions: another spelling of one the rule
    //  lists passes; a broader one does not, and the text names what would.
    s_referral (&msg, ABA, "r-cite-1", "benefit", NULL, KIM_CAT_RESIDENCE_STATUS);
    snprintf (msg.case_id, sizeof msg.case_id, "case-J");
    snprintf (msg.subject, sizeof msg.subject, "p-9");
    msg.basis = KIM_BASIS_STATUTE;
    snprintf (msg.citation, sizeof msg.citation, "§ 71 Abs. 2 Satz 1 Nr. 3 SGB X");
    ITEST_RC (s_send (jc, &msg, "x", NULL), 0);
    s_referral (&msg, ABA, "r-cite-2", "benefit", NULL, KIM_CAT_RESIDENCE_STATUS);
    snprintf (msg.case_id, sizeof msg.case_id, "case-J");
    snprintf (msg.subject, sizeof msg.subject, "p-9");
    msg.basis = KIM_BASIS_STATUTE;
    snprintf (msg.citation, sizeof msg.citation, "SGB X §71(2)");
    EXPECT_REFUSED (s_send (jc, &msg, "x", NULL), KIM_E_NO_BASIS, "rule P4",
                    "citation 'SGB X §71(2)' is broader than the rule allows",
                    "'SGB X §71(2)1', 'SGB X §71(2)2', 'SGB X §71(2)3', 'SGB X §71(2)4'");
    snprintf (msg.citation, sizeof msg.citation, "§ 71 (2) ff. SGB X");
    EXPECT_REFUSED (s_send (jc, &msg, "x", NULL), KIM_E_NO_BASIS, "rule P4", "cannot be read");

    //  The lead grants; nobody else may.
    s_grant (&msg, "C-1", JC, now + 3600 * 1000);
    ITEST_RC (s_send (kim, &msg, NULL, NULL), 0);
    s_grant (&msg, "C-9", JC, now + 3600 * 1000);
    EXPECT_REFUSED (s_send (jc, &msg, NULL, NULL), KIM_E_NOT_LEAD, JC " is not the lead organisation");
    s_grant (&msg, "C-1", JC, now + 3600 * 1000);
    snprintf (msg.msg_id, sizeof msg.msg_id, "grant-again");
    EXPECT_REFUSED (s_send (kim, &msg, NULL, NULL), KIM_E_BAD_VALUE, "registered already");

    //  Another KIM naming C-1 learns nothing of it and cannot lean on it:
    //  the answer a consent nobody registered gets.
    s_referral (&msg, JC, "r-other", "employment", "C-1", KIM_CAT_RESIDENCE_STATUS);
    snprintf (msg.case_id, sizeof msg.case_id, "case-B");
    EXPECT_REFUSED (s_send (coe, &msg, "x", NULL), KIM_E_CONSENT_UNKNOWN, "consent C-1 is not registered");
    s_referral (&msg, JC, "r-other", "housing", "C-1", KIM_CAT_ART9);
    snprintf (msg.case_id, sizeof msg.case_id, "case-B");
    EXPECT_REFUSED (s_send (coe, &msg, "x", NULL), KIM_E_CONSENT_UNKNOWN, "consent C-1 is not registered");

    //  Scope: purpose, categories (art9 needs explicit consent), recipient.
    s_referral (&msg, JC, "r-1", "housing", "C-1", 0);
    EXPECT_REFUSED (s_send (kim, &msg, "x", NULL), KIM_E_CONSENT_SCOPE, "rule P8", "does not cover purpose housing");
    s_referral (&msg, JC, "r-1", "employment", "C-1", KIM_CAT_ART9);
    EXPECT_REFUSED (s_send (kim, &msg, "x", NULL), KIM_E_CONSENT_SCOPE, "does not cover art9");
    s_referral (&msg, ABA, "r-1", "employment", "C-1", 0);
    EXPECT_REFUSED (s_send (kim, &msg, "x", NULL), KIM_E_CONSENT_SCOPE, "does not cover recipient " ABA);

    //  Allowed: delivered with the deciding rule in the header.
    uint64_t r1_seq = 0;
    s_referral (&msg, JC, "r-1", "employment", "C-1", KIM_CAT_RESIDENCE_STATUS);
    ITEST_RC (s_send (kim, &msg, "sealed for jc", &r1_seq), 0);
    s_await (jc, KIM_TYPE_REFERRAL, &event, "REFERRAL r-1");
    KIM_CHECK (event.seq == r1_seq && streq (event.msg.rule, "P8"));
    KIM_CHECK (event.payload_size == strlen ("sealed for jc"));
    ITEST_RC (kim_client_ack (jc, event.seq), 0);
    //  r-1 is delivered once the broker has applied its ack, which may wait
    //  for company (PROTOCOL.md §8.7): the revocation below must find it so.
    ITEST_WAIT_MAILBOX (jc, 0, 0, 10000);

    //  Expiry: C-2 is valid for a minute; the broker's clock moves two.
    s_grant (&msg, "C-2", JC, now + 60 * 1000);
    ITEST_RC (s_send (kim, &msg, NULL, NULL), 0);
    s_referral (&msg, JC, "r-2", "employment", "C-2", 0);
    ITEST_RC (s_send (kim, &msg, "x", NULL), 0);
    //  The broker re-reads the clock file every 200 ms and logs each jump.
    s_set_clock (clock_path, 120 * 1000);
    s_await_clock (broker, "test clock moves by 120000 ms");
    s_referral (&msg, JC, "r-3", "employment", "C-2", 0);
    int rc = s_send (kim, &msg, "x", NULL);
    EXPECT_REFUSED (rc, KIM_E_CONSENT_EXPIRED, "consent C-2 expired");

    //  Revocation while r-1 and r-4 are open (r-4 not even fetched yet).
    s_referral (&msg, JC, "r-4", "employment", "C-1", 0);
    ITEST_RC (s_send (kim, &msg, "x", NULL), 0);
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_REVOKE;
    snprintf (msg.msg_id, sizeof msg.msg_id, "revoke-C-1");
    snprintf (msg.grant_id, sizeof msg.grant_id, "C-1");
    EXPECT_REFUSED (s_send (jc, &msg, NULL, NULL), KIM_E_NOT_LEAD, "lead");
    ITEST_RC (s_send (kim, &msg, NULL, NULL), 0);
    s_referral (&msg, JC, "r-5", "employment", "C-1", 0);
    EXPECT_REFUSED (s_send (kim, &msg, "x", NULL), KIM_E_CONSENT_REVOKED, "consent C-1 was revoked");
    //  C-2 ran out when the clock moved: jc, which got r-2 under it, hears
    //  of that too (code "expired"), before or after C-1's revocation.
    while (true) {
        s_await (jc, KIM_TYPE_CONSENT_REVOKE, &event, "CONSENT_REVOKE notice to jc");
        ITEST_RC (kim_client_ack (jc, event.seq), 0);
        if (streq (event.msg.grant_id, "C-2")) {
            KIM_CHECK (streq (event.msg.code, "expired"));
            continue;
        }
        KIM_CHECK (streq (event.msg.grant_id, "C-1") && streq (event.msg.case_id, "case-A")
                && streq (event.msg.code, "revoked"));
        break;
    }
    //  r-1 is SUSPENDED: its recipient can no longer accept it.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_ACCEPT;
    snprintf (msg.msg_id, sizeof msg.msg_id, "accept-r-1");
    snprintf (msg.recipient, sizeof msg.recipient, KIM);
    snprintf (msg.referral_id, sizeof msg.referral_id, "r-1");
    rc = s_send (jc, &msg, NULL, NULL);
    printf ("  ACCEPT of suspended r-1: %s: %s\n", kim_errname (rc), s_error);
    KIM_CHECK (rc == -KIM_E_BAD_STATE);

    //  Access report: who got what about p-1, on which basis and rule.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_ACCESS_REPORT;
    snprintf (msg.msg_id, sizeof msg.msg_id, "report-p-1");
    snprintf (msg.subject, sizeof msg.subject, "p-1");
    EXPECT_REFUSED (s_send (jc, &msg, NULL, NULL), KIM_E_NOT_PARTY, "sent no data about subject p-1");
    ITEST_RC (s_send (kim, &msg, NULL, NULL), 0);
    s_await (kim, KIM_TYPE_ACCESS_REPORT, &event, "ACCESS_REPORT for kim");
    char report [8192];
    snprintf (report, sizeof report, "%.*s", (int) event.payload_size, (const char *) event.payload);
    printf ("  access report: %s", report);
    KIM_CHECK (event.msg.payload_len == event.payload_size && event.payload_size > 0);
    KIM_CHECK (strstr (report, "\"to\":\"jc.rheine\"") && strstr (report, "\"rule\":\"P8\"")
            && strstr (report, "\"consent_id\":\"C-1\"") && strstr (report, "\"residence_status\"")
            && strstr (report, "\"payload\":\"kept\""));
    ITEST_RC (kim_client_ack (kim, event.seq), 0);

    //  Erasure: payloads purged, recipients told, the chain still verifies.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_ERASURE;
    snprintf (msg.msg_id, sizeof msg.msg_id, "erase-p-1");
    snprintf (msg.subject, sizeof msg.subject, "p-1");
    ITEST_RC (s_send (kim, &msg, NULL, NULL), 0);
    s_await (jc, KIM_TYPE_ERASURE, &event, "ERASURE notice to jc");
    KIM_CHECK (streq (event.msg.subject, "p-1"));
    ITEST_RC (kim_client_ack (jc, event.seq), 0);
    snprintf (msg.msg_id, sizeof msg.msg_id, "report-p-1-after");
    msg.type = KIM_TYPE_ACCESS_REPORT;
    ITEST_RC (s_send (kim, &msg, NULL, NULL), 0);
    s_await (kim, KIM_TYPE_ACCESS_REPORT, &event, "second ACCESS_REPORT");
    KIM_CHECK (memmem (event.payload, event.payload_size, "\"payload\":\"erased\"", 18)
            && !memmem (event.payload, event.payload_size, "\"payload\":\"kept\"", 16));
    ITEST_RC (kim_client_ack (kim, event.seq), 0);

    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_client_destroy (&sch);
    kim_client_destroy (&coe);
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);
    int decisions, purges;
    s_verify_chain (kim_testbroker_dir (broker), r1_seq, &decisions, &purges);
    KIM_CHECK (decisions >= 9 && purges >= 1);
    if (argc > 1) {
        //  The audit tool agrees: chain and checkpoint signatures verify.
        char command [PATH_MAX * 2];
        snprintf (command, sizeof command, "'%s' audit verify --data '%s/data' >&2", argv [1],
                  kim_testbroker_dir (broker));
        int exit_status = system (command);
        KIM_CHECK (exit_status != -1 && WIFEXITED (exit_status) && WEXITSTATUS (exit_status) == 0);
        printf ("  kim audit verify: OK\n");
    }
    kim_testbroker_destroy (&broker);
    printf ("test_policy: OK\n");
    return 0;
}
