/*  test_redelivery.c — what is delivered but not acked comes again.

    1. A recipient receives without acking and disconnects: a new session
       gets the same seqs again, in order; acked ones do not come back. The
       receive window bounds what is in flight.
    2. With a small redeliver_ms, an unacked delivery is sent again on the
       same session, with the same seq and content.
    3. Two agents of one organisation: when the session that receives ends,
       the other one, still connected, gets what was in flight and what
       comes after, without a new HELLO; a session with a window of 0 never
       does.
*/
#include "kim_itest.h"

#define SENDER      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define COUNT       10

static void
s_send_messages (kim_testbroker_t *broker, uint64_t *seqs, size_t count, const char *prefix)
{
    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (sender);
    for (size_t i = 0; i < count; i++) {
        char msg_id [KIM_ID_MAX + 1];
        snprintf (msg_id, sizeof msg_id, "%s-%zu", prefix, i);
        bool dup = true;
        ITEST_RC (s_itest_send (sender, RECIPIENT, prefix, msg_id, 100 + i, &seqs [i], &dup), 0);
        KIM_CHECK (!dup);
    }
    kim_client_destroy (&sender);
}

//  Receives `count` deliveries, which must be `seqs` in order, without acking.
static void
s_expect_seqs (kim_client_t *recipient, const uint64_t *seqs, size_t count, const char *prefix,
               size_t first_index)
{
    kim_event_t event;
    for (size_t i = 0; i < count; i++) {
        ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
        if (event.seq != seqs [i]) {
            fprintf (stderr, "delivery %zu: seq %" PRIu64 ", expected %" PRIu64 "\n",
                     i, event.seq, seqs [i]);
            exit (1);
        }
        char msg_id [KIM_ID_MAX + 1];
        snprintf (msg_id, sizeof msg_id, "%s-%zu", prefix, first_index + i);
        KIM_CHECK (streq (event.msg.msg_id, msg_id));
        KIM_CHECK (s_itest_payload_ok (event.payload, event.payload_size,
                                       100 + first_index + i, msg_id));
    }
}

static void
s_after_disconnect (void)
{
    const char *orgs [] = { SENDER, RECIPIENT, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    uint64_t seqs [COUNT];
    s_send_messages (broker, seqs, COUNT, "redeliver");

    //  Received, not acked, gone.
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 16, false);
    KIM_CHECK (recipient);
    s_expect_seqs (recipient, seqs, COUNT, "redeliver", 0);
    kim_status_t status = ITEST_WAIT_MAILBOX (recipient, COUNT, COUNT, 5000);
    KIM_CHECK (status.in_flight == COUNT);
    kim_client_destroy (&recipient);

    //  The next session gets the same seqs; it acks the first four.
    recipient = kim_testbroker_client (broker, RECIPIENT, 16, true);
    KIM_CHECK (recipient);
    s_expect_seqs (recipient, seqs, COUNT, "redeliver", 0);
    for (size_t i = 0; i < 4; i++)
        ITEST_RC (kim_client_ack (recipient, seqs [i]), 0);
    ITEST_WAIT_MAILBOX (recipient, COUNT - 4, COUNT - 4, 10000);
    kim_client_destroy (&recipient);

    //  A session with a window of 3 gets the other six three at a time.
    recipient = kim_testbroker_client (broker, RECIPIENT, 3, false);
    KIM_CHECK (recipient);
    s_expect_seqs (recipient, seqs + 4, 3, "redeliver", 4);
    kim_event_t event;
    KIM_CHECK (ITEST_DELIVER (recipient, &event, 300) == -KIM_E_TIMEOUT);
    ITEST_RC (kim_client_ack (recipient, seqs [4]), 0);
    ITEST_RC (kim_client_flush (recipient, 5000), 0);
    s_expect_seqs (recipient, seqs + 7, 1, "redeliver", 7);
    for (size_t i = 5; i < 8; i++)
        ITEST_RC (kim_client_ack (recipient, seqs [i]), 0);
    s_expect_seqs (recipient, seqs + 8, 2, "redeliver", 8);
    for (size_t i = 8; i < COUNT; i++)
        ITEST_RC (kim_client_ack (recipient, seqs [i]), 0);
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);
    kim_client_destroy (&recipient);

    //  Everything acked: a new session gets nothing.
    recipient = kim_testbroker_client (broker, RECIPIENT, 16, false);
    KIM_CHECK (recipient);
    KIM_CHECK (ITEST_DELIVER (recipient, &event, 500) == -KIM_E_TIMEOUT);
    kim_client_destroy (&recipient);
    s_itest_broker_destroy (&broker);
}

static void
s_on_same_session (void)
{
    const char *orgs [] = { SENDER, RECIPIENT, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, "    redeliver_ms = 300\n");
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 4, false);
    KIM_CHECK (recipient);
    uint64_t seqs [1];
    s_send_messages (broker, seqs, 1, "again");

    s_expect_seqs (recipient, seqs, 1, "again", 0);
    //  Not acked: it comes again after redeliver_ms (the broker checks every
    //  200 ms), and again after that. The first delivery may have waited in
    //  our queue, so only the gap between two redeliveries is measured, with
    //  room for scheduling jitter.
    s_expect_seqs (recipient, seqs, 1, "again", 0);
    int64_t redelivered_at = s_itest_now ();
    s_expect_seqs (recipient, seqs, 1, "again", 0);
    int64_t gap = s_itest_now () - redelivered_at;
    printf ("test_redelivery: redelivered again after %" PRId64 " ms\n", gap);
    KIM_CHECK (gap >= 150);
    ITEST_RC (kim_client_ack (recipient, seqs [0]), 0);
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 5000);
    //  Redeliveries sent before the ack was committed may still trail in;
    //  after that, silence.
    kim_event_t event;
    int trailing = 0;
    while (ITEST_DELIVER (recipient, &event, 1000) == 0) {
        KIM_CHECK (event.seq == seqs [0]);
        trailing++;
        KIM_CHECK (trailing <= 2);
    }
    kim_client_destroy (&recipient);
    s_itest_broker_destroy (&broker);
}

static void
s_to_remaining_session (void)
{
    const char *orgs [] = { SENDER, RECIPIENT, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    //  Oldest to newest: an agent, a second agent (which receives, being
    //  the newest with a window), a sender-only session of the same office.
    kim_client_t *first = kim_testbroker_client (broker, RECIPIENT, 16, false);
    kim_client_t *second = kim_testbroker_client (broker, RECIPIENT, 16, false);
    kim_client_t *sending = kim_testbroker_client (broker, RECIPIENT, 0, false);
    KIM_CHECK (first && second && sending);
    uint64_t seqs [COUNT];
    s_send_messages (broker, seqs, COUNT / 2, "remaining");
    s_expect_seqs (second, seqs, COUNT / 2, "remaining", 0);
    kim_event_t event;
    KIM_CHECK (ITEST_DELIVER (first, &event, 300) == -KIM_E_TIMEOUT);
    kim_client_destroy (&second);

    //  The first agent gets the unacked ones again, then new mail.
    s_expect_seqs (first, seqs, COUNT / 2, "remaining", 0);
    for (size_t i = 0; i < COUNT / 2; i++)
        ITEST_RC (kim_client_ack (first, seqs [i]), 0);
    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (sender);
    for (size_t i = COUNT / 2; i < COUNT; i++) {
        char msg_id [KIM_ID_MAX + 1];
        snprintf (msg_id, sizeof msg_id, "remaining-%zu", i);
        bool dup = true;
        ITEST_RC (s_itest_send (sender, RECIPIENT, "remaining", msg_id, 100 + i, &seqs [i],
                                &dup), 0);
    }
    s_expect_seqs (first, seqs + COUNT / 2, COUNT - COUNT / 2, "remaining", COUNT / 2);
    for (size_t i = COUNT / 2; i < COUNT; i++)
        ITEST_RC (kim_client_ack (first, seqs [i]), 0);
    ITEST_WAIT_MAILBOX (first, 0, 0, 10000);

    //  With the first agent gone too, the sender-only session takes
    //  nothing: the mail waits for an agent's HELLO.
    kim_client_destroy (&first);
    uint64_t late;
    char late_id [KIM_ID_MAX + 1];
    snprintf (late_id, sizeof late_id, "remaining-%d", COUNT);
    bool dup = true;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "remaining", late_id, 100 + COUNT, &late, &dup), 0);
    KIM_CHECK (ITEST_DELIVER (sending, &event, 300) == -KIM_E_TIMEOUT);
    kim_client_t *third = kim_testbroker_client (broker, RECIPIENT, 16, false);
    KIM_CHECK (third);
    s_expect_seqs (third, &late, 1, "remaining", COUNT);
    kim_client_destroy (&third);
    kim_client_destroy (&sending);
    kim_client_destroy (&sender);
    s_itest_broker_destroy (&broker);
    printf ("test_redelivery: the remaining agent takes over deliveries: OK\n");
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    s_after_disconnect ();
    s_on_same_session ();
    s_to_remaining_session ();
    printf ("test_redelivery: OK\n");
    return 0;
}
