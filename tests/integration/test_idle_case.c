/*  test_idle_case.c — retention for cases that never close.

    With retention/open_case_seconds = 3600 and notice_seconds = 600 and the
    test clock: KIM Rheine opens C-I at 0 s, C-A at 100 s and C-S at 200 s,
    each with a payload. At 3250 s the lead has a REMINDER for each case
    (case_id set, deadline = when its payloads go: 3600, 3700, 3800 s on). C-A
    then sees a message, which calls its purge off. At 3900 s the payloads
    of C-I and C-S are purged (PURGE records with reason "inactivity"),
    C-A's is kept, and the cases stay open (the lead still sends in C-I).
    A case written in the stored form of before version 3 gets an
    inactivity timer at the next start and is purged after a quiet period.
*/
#include "kim_lctest.h"
#include "kim/kim_log.h"
#include "kim_lifecycle_int.h"
#include "kim_store.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"

static char s_clock [PATH_MAX];
static char s_store [PATH_MAX];
static const char *s_watch = "C-A";    //  the case s_stored looks for in PURGE records

static char s_log [PATH_MAX];
static int s_moves;                     //  clock moves the broker has logged

//  How often the broker's log says it saw the clock move.
static int
s_moves_seen (void)
{
    FILE *file = fopen (s_log, "r");
    int seen = 0;
    char line [1024];
    while (file && fgets (line, sizeof line, file))
        seen += strstr (line, "test clock moves") != NULL;
    if (file)
        fclose (file);
    return seen;
}

//  Moves the broker's clock to `seconds` ahead and, when it runs, waits
//  until it has read the move (it re-reads the file every turn).
static void
s_set_clock (uint64_t seconds, bool running)
{
    FILE *file = fopen (s_clock, "w");
    KIM_CHECK (file && fprintf (file, "%" PRIu64 "\n", seconds * 1000) > 0 && fclose (file) == 0);
    if (!running)
        return;
    s_moves++;
    int64_t deadline = s_itest_now () + 20000;
    while (s_moves_seen () < s_moves) {
        KIM_CHECK (s_itest_now () < deadline);
        zclock_sleep (20);              //  poll interval, not synchronisation
    }
}

static uint64_t
s_send (kim_client_t *client, const char *referral, const char *case_id, const char *payload)
{
    kim_msg_t msg;
    char msg_id [32];
    snprintf (msg_id, sizeof msg_id, "m-%s", referral);
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, referral, msg_id, case_id);
    uint64_t seq = 0;
    bool dup;
    ITEST_RC (kim_client_send (client, &msg, payload, payload? strlen (payload): 0, &seq, &dup,
                               10000), 0);
    return seq;
}

//  1 if record `seq` has a stored payload; counts PURGE records by reason.
static int
s_stored (uint64_t seq, int *idle_purges, bool *purged_ca)
{
    kim_store_config_t config = { .path = s_store, .read_only = true };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    KIM_CHECK (kim_store_read_begin (store) == 0);
    int stored = kim_store_payload_exists (store, seq);
    KIM_CHECK (stored >= 0);
    if (idle_purges) {
        *idle_purges = 0;
        *purged_ca = false;
        for (uint64_t at = 1; at <= kim_store_head (store); at++) {
            kim_record_t record;
            KIM_CHECK (kim_store_read (store, at, &record) == 0);
            char reason [32], case_id [32];
            if (record.kind != KIM_RECORD_PURGE
            ||  !kim_log_body_str (record.body, record.body_size, "reason", reason, sizeof reason)
            ||  !kim_log_body_str (record.body, record.body_size, "case_id", case_id,
                                   sizeof case_id))
                continue;
            if (streq (reason, "inactivity"))
                (*idle_purges)++;
            if (streq (case_id, s_watch) && streq (reason, "inactivity"))
                *purged_ca = true;
        }
    }
    kim_store_read_end (store);
    kim_store_destroy (&store);
    return stored;
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { KIM, JC, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, "retention\n    open_case_seconds = 3600\n"
                                                     "    notice_seconds = 600\n");
    snprintf (s_clock, sizeof s_clock, "%s/clock", kim_testbroker_dir (broker));
    snprintf (s_store, sizeof s_store, "%s/data/store", kim_testbroker_dir (broker));
    snprintf (s_log, sizeof s_log, "%s/broker.log", kim_testbroker_dir (broker));
    s_set_clock (0, false);
    KIM_CHECK (setenv ("KIM_CLOCK_FILE", s_clock, 1) == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 64, false);
    kim_client_t *jc = kim_testbroker_client (broker, JC, 64, false);
    KIM_CHECK (kim && jc);

    uint64_t ri1 = s_send (kim, "RI1", "C-I", "sealed i");
    s_set_clock (100, true);
    uint64_t ra1 = s_send (kim, "RA1", "C-A", "sealed a");
    s_set_clock (200, true);
    uint64_t rs1 = s_send (kim, "RS1", "C-S", "sealed s");

    //  The notices: one REMINDER per case to the lead, deadline = the purge
    s_set_clock (3250, true);
    const char *cases [] = { "C-I", "C-A", "C-S" };
    bool told [3] = { false, false, false };
    uint64_t deadlines [3] = { 0, 0, 0 };
    int64_t deadline = s_itest_now () + 20000;
    while (!(told [0] && told [1] && told [2])) {
        KIM_CHECK (s_itest_now () < deadline);
        kim_event_t event;
        int rc = kim_client_recv (kim, &event, 200);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        ITEST_RC (rc, 0);
        if (event.type != KIM_EVENT_DELIVER)
            continue;
        ITEST_RC (kim_client_ack (kim, event.seq), 0);
        if (event.msg.type != KIM_TYPE_REMINDER)
            continue;
        for (int i = 0; i < 3; i++)
            if (streq (event.msg.case_id, cases [i])) {
                printf ("  REMINDER for %s (referral %s): purge at %" PRIu64 " ms\n",
                        cases [i], event.msg.referral_id, event.msg.deadline);
                KIM_CHECK (!told [i]);
                //  The clock file moves the broker's clock by its offset: the
                //  purge lies ahead, less than the notice period away
                int64_t ahead = (int64_t) event.msg.deadline - (zclock_time () + 3250 * 1000);
                KIM_CHECK (ahead > 0 && ahead <= 600 * 1000);
                deadlines [i] = event.msg.deadline;
                KIM_CHECK (event.msg.referral_id [0] == 'R');
                told [i] = true;
            }
    }
    //  100 s apart, as the cases were opened (give or take the test's pace)
    KIM_CHECK (deadlines [1] > deadlines [0] + 90 * 1000 && deadlines [1] < deadlines [0] + 130 * 1000);
    KIM_CHECK (deadlines [2] > deadlines [1] + 90 * 1000 && deadlines [2] < deadlines [1] + 130 * 1000);
    //  A message in C-A calls its purge off
    s_send (kim, "RA2", "C-A", NULL);

    //  Past the purges: C-I and C-S go, C-A stays
    s_set_clock (3900, true);
    deadline = s_itest_now () + 20000;
    while (s_stored (ri1, NULL, NULL) || s_stored (rs1, NULL, NULL)) {
        KIM_CHECK (s_itest_now () < deadline);
        zclock_sleep (100);             //  poll interval, not synchronisation
    }
    int idle_purges = 0;
    bool purged_ca = true;
    KIM_CHECK (s_stored (ra1, &idle_purges, &purged_ca) == 1);
    printf ("  purged for inactivity: %d cases; C-A kept\n", idle_purges);
    KIM_CHECK (idle_purges == 2 && !purged_ca);
    //  The case stays open: its lead still sends in it
    s_send (kim, "RI2", "C-I", "sealed again");

    kim_client_destroy (&kim);
    kim_client_destroy (&jc);

    //  A case from a store before version 3 (its stored form without the
    //  last-activity fields) with a payload: the restarted broker gives it a
    //  timer, its quiet time starts, and its payload goes after a while.
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);
    kim_store_config_t config = { .path = s_store };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    KIM_CHECK (kim_store_begin (store) == 0);
    kim_case_t kcase;
    memset (&kcase, 0, sizeof kcase);
    kcase.version = S_CASE_VERSION;
    snprintf (kcase.id, sizeof kcase.id, "C-OLD");
    snprintf (kcase.lead, sizeof kcase.lead, KIM);
    kcase.participant_count = 2;
    snprintf (kcase.participants [0], sizeof kcase.participants [0], KIM);
    snprintf (kcase.participants [1], sizeof kcase.participants [1], JC);
    uint8_t value [KIM_LC_CASE_MAX];
    size_t size = kim_lc_case_encode (&kcase, value) - 9;
    MDB_val k = { 5, (void *) "C-OLD" }, v = { size, value };
    KIM_CHECK (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_CASE), &k, &v, 0) == 0);
    uint64_t old_seq = 0;
    KIM_CHECK (kim_store_append (store, KIM_RECORD_STATE, (uint64_t) zclock_time (),
                                 (const uint8_t *) "\x80", 1, &old_seq) == 0);
    KIM_CHECK (kim_store_payload_put (store, old_seq, (const uint8_t *) "old", 3) == 0);
    uint8_t index_key [6 + 8];
    memcpy (index_key, "C-OLD", 6);
    kim_log_put_be64 (index_key + 6, old_seq);
    k.mv_size = sizeof index_key;
    k.mv_data = index_key;
    v.mv_size = 0;
    KIM_CHECK (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_CASE_SEQ), &k, &v, 0)
               == 0);
    bool retry;
    KIM_CHECK (kim_store_commit (store, &retry) == 0);
    kim_store_destroy (&store);
    s_moves = 0;                        //  a new start logs the file's offset anew
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    KIM_CHECK (s_stored (old_seq, NULL, NULL) == 1);
    //  Its quiet time starts at the broker's first turn; the test does not
    //  know when that is, so the clock moves on in steps past a quiet period
    //  until the payload is gone.
    deadline = s_itest_now () + 30000;
    uint64_t offset = 3900;
    while (s_stored (old_seq, NULL, NULL)) {
        KIM_CHECK (s_itest_now () < deadline);
        offset += 3700;
        s_set_clock (offset, false);
        int64_t step = s_itest_now () + 2000;
        while (s_itest_now () < step && s_stored (old_seq, NULL, NULL))
            zclock_sleep (100);         //  poll interval, not synchronisation
    }
    s_watch = "C-OLD";
    KIM_CHECK (s_stored (old_seq, &idle_purges, &purged_ca) == 0);
    printf ("  the case from before version 3 was purged after a quiet period\n");
    KIM_CHECK (purged_ca);
    s_itest_broker_destroy (&broker);
    printf ("test_idle_case: OK\n");
    return 0;
}
