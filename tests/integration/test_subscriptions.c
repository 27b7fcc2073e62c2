/*  test_subscriptions.c — case-event subscriptions as durable cursors.

    The job centre subscribes to every event of its cases and goes offline;
    while it is away, the case's other referrals and answers are logged. When
    it comes back it gets its own mail and the events it missed, in log
    order, each once. A subscriber with a type filter gets only those types;
    a subscriber with a case filter only that case. An organisation that
    subscribed but takes no part in the case gets nothing, ever. After
    UNSUBSCRIBE, events stop. A duplicate delivery (mail and event) comes once.
*/
#include "kim_lctest.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"
#define JA      "ja.rheine"
#define MBE     "mbe.rheine"
#define ABA     "aba.rheine"

typedef struct {
    kim_type_t type;
    const char *referral;
} expected_t;

//  Receives exactly `expected` (in this order) and then nothing more.
static void
s_expect_exactly (kim_client_t *client, const expected_t *expected, size_t count)
{
    kim_event_t event;
    uint64_t last_seq = 0;
    for (size_t i = 0; i < count; i++) {
        ITEST_RC (ITEST_DELIVER (client, &event, 10000), 0);
        if (event.msg.type != expected [i].type
        ||  !streq (event.msg.referral_id, expected [i].referral)) {
            fprintf (stderr, "%s: event %zu: expected %s %s, got %s %s\n",
                     kim_client_org (client), i, kim_type_name (expected [i].type),
                     expected [i].referral, kim_type_name (event.msg.type),
                     event.msg.referral_id);
            exit (1);
        }
        KIM_CHECK (event.seq > last_seq);           //  log order
        last_seq = event.seq;
        ITEST_RC (kim_client_ack (client, event.seq), 0);
    }
    ITEST_WAIT_MAILBOX (client, 0, 0, 10000);
    KIM_CHECK (ITEST_DELIVER (client, &event, 300) == -KIM_E_TIMEOUT);
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { KIM, JC, JA, MBE, ABA, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 0, false);
    kim_client_t *ja = kim_testbroker_client (broker, JA, 0, false);
    kim_client_t *mbe = kim_testbroker_client (broker, MBE, 0, false);
    KIM_CHECK (kim && ja && mbe);
    kim_msg_t msg;

    //  The job centre: everything of its cases. The immigration office
    //  subscribes too, but takes part in no case. MBE: OUTCOMEs of C-S only.
    s_lc_subscribe (broker, JC, true, "s-all", NULL, NULL);
    s_lc_subscribe (broker, ABA, true, "s-snoop", NULL, NULL);
    s_lc_subscribe (broker, ABA, true, "s-snoop-case", "C-S", NULL);
    const kim_type_t outcome [] = { KIM_TYPE_OUTCOME, KIM_TYPE_NONE };
    s_lc_subscribe (broker, MBE, true, "s-outcome", "C-S", outcome);
    //  Subscribing again replaces the filter (idempotent for the client).
    s_lc_subscribe (broker, MBE, true, "s-outcome", "C-S", outcome);

    //  While the job centre is offline: its referral, and the case's others.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "S1", "m-s1", "C-S");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "S2", "m-s2", "C-S");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "S2", "ja-s2-1", NULL);
    LC_SEND (ja, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, MBE, "S3", "m-s3", "C-S");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_OUTCOME, KIM, "S2", "ja-s2-2", "completed");
    LC_SEND (ja, &msg, 0, "");
    //  Another case the job centre takes no part in.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "S9", "m-s9", "C-OTHER");
    LC_SEND (kim, &msg, 0, "");

    //  The job centre comes back: its mail and the missed events, in log
    //  order, once (S3 was sent before the OUTCOME of S2).
    kim_client_t *jc = kim_testbroker_client (broker, JC, 64, false);
    KIM_CHECK (jc);
    const expected_t jc_expected [] = {
        { KIM_TYPE_REFERRAL, "S1" }, { KIM_TYPE_REFERRAL, "S2" }, { KIM_TYPE_ACCEPT, "S2" },
        { KIM_TYPE_REFERRAL, "S3" }, { KIM_TYPE_OUTCOME, "S2" },
    };
    s_expect_exactly (jc, jc_expected, 5);

    //  MBE got its own referral S3 and the OUTCOME only.
    kim_client_destroy (&mbe);
    mbe = kim_testbroker_client (broker, MBE, 64, false);
    KIM_CHECK (mbe);
    const expected_t mbe_expected [] = { { KIM_TYPE_REFERRAL, "S3" }, { KIM_TYPE_OUTCOME, "S2" } };
    s_expect_exactly (mbe, mbe_expected, 2);

    //  The immigration office subscribed but takes part in nothing: nothing.
    kim_client_t *aba = kim_testbroker_client (broker, ABA, 64, false);
    KIM_CHECK (aba);
    s_expect_exactly (aba, NULL, 0);

    //  Online now, the job centre gets new events as they happen.
    s_lc_msg (&msg, KIM_TYPE_INFO_REQUEST, KIM, "S3", "mbe-s3-1", NULL);
    LC_SEND (mbe, &msg, 0, "");
    const expected_t live [] = { { KIM_TYPE_INFO_REQUEST, "S3" } };
    s_expect_exactly (jc, live, 1);

    //  After UNSUBSCRIBE (twice: it is idempotent), no more events.
    s_lc_subscribe (broker, JC, false, "s-all", NULL, NULL);
    s_lc_subscribe (broker, JC, false, "s-all", NULL, NULL);
    s_lc_msg (&msg, KIM_TYPE_DECLINE, KIM, "S3", "mbe-s3-2", "capacity");
    LC_SEND (mbe, &msg, 0, "");
    s_expect_exactly (jc, NULL, 0);
    s_expect_exactly (aba, NULL, 0);

    kim_client_destroy (&kim);
    kim_client_destroy (&ja);
    kim_client_destroy (&mbe);
    kim_client_destroy (&jc);
    kim_client_destroy (&aba);
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    s_itest_broker_destroy (&broker);
    printf ("test_subscriptions: OK\n");
    return 0;
}
