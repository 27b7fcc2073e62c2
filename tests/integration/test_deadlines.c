/*  test_deadlines.c — deadline timers over a moved clock, across a SIGKILL.

    The broker reads its clock offset from KIM_CLOCK_FILE (re-read every
    200 ms), so the test moves time by days without sleeping. With
    deadline_days = 1 and expire_days = 2: an unanswered referral turns
    OVERDUE after a day (REMINDER to both sides), and EXPIRED two days later
    (EXPIRED to the sender), also when the broker was killed in between (the
    timers live in the store). An answered referral is never reminded; an
    OVERDUE one may still be accepted and then never expires; a REFERRAL's own
    deadline wins over the default.
*/
#include "kim_lctest.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"

static const uint64_t s_day = 24ull * 3600 * 1000;

static void
s_clock (const char *path, uint64_t offset_ms)
{
    char temp [PATH_MAX];
    snprintf (temp, sizeof temp, "%s.new", path);
    FILE *file = fopen (temp, "w");
    KIM_CHECK (file);
    fprintf (file, "%" PRIu64 "\n", offset_ms);
    KIM_CHECK (fclose (file) == 0);
    KIM_CHECK (rename (temp, path) == 0);      //  the broker never reads half a number
}

//  No delivery of `type` for `id` arrives within quiet_ms (others are acked).
static void
s_none (kim_client_t *client, kim_type_t type, const char *id, int quiet_ms)
{
    kim_event_t event;
    while (kim_client_recv (client, &event, quiet_ms) == 0) {
        KIM_CHECK (event.type == KIM_EVENT_DELIVER);
        kim_client_ack (client, event.seq);
        if (event.msg.type == type && streq (event.msg.referral_id, id)) {
            fprintf (stderr, "unexpected %s for %s\n", kim_type_name (type), id);
            exit (1);
        }
    }
    kim_client_flush (client, 2000);
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { KIM, JC, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs,
        "lifecycle\n    deadline_days = 1\n    expire_days = 2\n");
    char clock_path [PATH_MAX];
    snprintf (clock_path, sizeof clock_path, "%s/clock", kim_testbroker_dir (broker));
    s_clock (clock_path, 0);
    //  The broker process inherits the environment.
    KIM_CHECK (setenv ("KIM_CLOCK_FILE", clock_path, 1) == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    kim_client_t *kim = kim_testbroker_client (broker, KIM, 64, false);
    kim_client_t *jc = kim_testbroker_client (broker, JC, 64, false);
    KIM_CHECK (kim && jc);
    kim_msg_t msg;
    kim_event_t event;

    //  D1: default deadline (1 day), never answered.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "D1", "m-d1", "C-D");
    LC_SEND (kim, &msg, 0, "");
    //  D2: its own deadline, 3 days out; accepted after it turned overdue.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "D2", "m-d2", "C-D");
    uint64_t d2_deadline = (uint64_t) zclock_time () + 3 * s_day;
    msg.deadline = d2_deadline;
    LC_SEND (kim, &msg, 0, "");
    //  D3: answered at once: never reminded.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "D3", "m-d3", "C-D");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "D3", "jc-d3", NULL);
    LC_SEND (jc, &msg, 0, "");

    //  Day 1 + a minute: D1 is OVERDUE, both sides are reminded.
    s_clock (clock_path, s_day + 60000);
    LC_WAIT (kim, KIM_TYPE_REMINDER, "D1", &event);
    KIM_CHECK (event.msg.deadline > 0 && streq (event.msg.ref_msg_id, "m-d1"));
    LC_WAIT (jc, KIM_TYPE_REMINDER, "D1", &event);
    s_none (kim, KIM_TYPE_REMINDER, "D3", 600);
    s_none (kim, KIM_TYPE_REMINDER, "D2", 10);
    //  OVERDUE still allows answers: the sender sees the state in a refusal.
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, JC, "D1", "m-d1-bad", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_STATE, "referral D1 is OVERDUE",
             "the recipient may send ACCEPT");

    //  A crash now: the timers are in the store, not in memory.
    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_testbroker_stop (broker, SIGKILL);
    s_clock (clock_path, 3 * s_day + 120000);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim = kim_testbroker_client (broker, KIM, 64, false);
    jc = kim_testbroker_client (broker, JC, 64, false);
    KIM_CHECK (kim && jc);

    //  Day 3: D1 (deadline day 1 + 2 days) EXPIRED, the sender alerted;
    //  D2 reached its own deadline: OVERDUE. Both fall due within moments
    //  of each other, so their notices come in either order.
    kim_type_t day3_types [] = { KIM_TYPE_EXPIRED, KIM_TYPE_REMINDER };
    const char *day3_ids [] = { "D1", "D2" };
    kim_event_t day3 [2];
    LC_WAIT_EACH (kim, 2, day3_types, day3_ids, day3);
    KIM_CHECK (streq (day3 [0].msg.recipient, KIM));
    KIM_CHECK (day3 [1].msg.deadline == d2_deadline);
    LC_WAIT (jc, KIM_TYPE_REMINDER, "D2", &event);
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "D1", "jc-d1-late", NULL);
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "referral D1 is EXPIRED: it is closed");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "D2", "jc-d2", NULL);
    LC_SEND (jc, &msg, 0, "");

    //  Day 6: D2 was accepted, so it never expires.
    s_clock (clock_path, 6 * s_day);
    s_none (kim, KIM_TYPE_EXPIRED, "D2", 1500);
    //  The jc side got no EXPIRED either (only the sender is alerted).
    s_none (jc, KIM_TYPE_EXPIRED, "D1", 500);

    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    s_itest_broker_destroy (&broker);
    printf ("test_deadlines: OK\n");
    return 0;
}
