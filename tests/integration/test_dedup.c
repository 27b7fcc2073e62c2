/*  test_dedup.c — de-duplication by (sender, msg_id).

    A msg_id sent twice is receipted twice, the second time with dup=true and
    the original seq, and delivered once. The index survives a crash (SIGKILL)
    and restart. The same msg_id from another organisation is another message.

    "Delivered once" is checked without waiting for silence: after the
    duplicates, a sentinel message is sent; deliveries come in seq order, so a
    duplicate that had been logged would arrive before the sentinel.
*/
#include "kim_itest.h"

#define SENDER      "kim.rheine"
#define SENDER2     "kim.coesfeld"
#define RECIPIENT   "jc.rheine"

//  Receives deliveries up to and including `sentinel`, acking each; checks
//  they are exactly `expected` (seqs, in order) followed by the sentinel.
static void
s_expect_deliveries (kim_client_t *recipient, const uint64_t *expected, size_t count,
                     const char *const *senders, uint64_t sentinel)
{
    kim_event_t event;
    for (size_t i = 0; i <= count; i++) {
        ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
        uint64_t want = i < count? expected [i]: sentinel;
        if (event.seq != want) {
            fprintf (stderr, "delivery %zu: got seq %" PRIu64 " (%s from %s), expected %" PRIu64 "\n",
                     i, event.seq, event.msg.msg_id, event.msg.sender, want);
            exit (1);
        }
        if (i < count)
            KIM_CHECK (streq (event.msg.sender, senders [i]));
        ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    }
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { RECIPIENT, SENDER, SENDER2, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 16, false);
    KIM_CHECK (sender && recipient);

    //  1. Same msg_id twice on one connection.
    uint64_t seq1 = 0, seq = 0;
    bool dup = true;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "dup-1", 100, &seq1, &dup), 0);
    KIM_CHECK (seq1 > 0 && !dup);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "dup-1", 100, &seq, &dup), 0);
    KIM_CHECK (dup && seq == seq1);
    //  A duplicate is known by its id alone, whatever its content now says.
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-other", "dup-1", 5, &seq, &dup), 0);
    KIM_CHECK (dup && seq == seq1);

    //  Two connections of the same organisation send dup-2 at the same time
    //  (the library refuses a msg_id already pending on one client): one
    //  message, however the broker batches them.
    kim_client_t *twin = kim_testbroker_client (broker, SENDER, 0, true);
    KIM_CHECK (twin);
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, "ref-dup", "dup-2");
    ITEST_RC (kim_client_send_async (sender, &msg, "x", 1), 0);
    s_itest_msg (&msg, RECIPIENT, "ref-dup", "dup-2");
    ITEST_RC (kim_client_send_async (twin, &msg, "x", 1), 0);
    ITEST_RC (kim_client_flush (sender, 10000), 0);
    ITEST_RC (kim_client_flush (twin, 10000), 0);
    uint64_t seq2 = 0;
    int fresh = 0, dups = 0;
    kim_event_t event;
    kim_client_t *both [] = { sender, twin };
    for (int i = 0; i < 2; i++) {
        ITEST_RC (kim_client_recv (both [i], &event, 5000), 0);
        if (event.type != KIM_EVENT_RECEIPT) {
            s_itest_print_event ("sender", &event);
            KIM_CHECK (event.type == KIM_EVENT_RECEIPT);
        }
        KIM_CHECK (streq (event.msg_id, "dup-2"));
        KIM_CHECK (seq2 == 0 || event.seq == seq2);
        seq2 = event.seq;
        if (event.dup)
            dups++;
        else
            fresh++;
    }
    kim_client_destroy (&twin);
    KIM_CHECK (fresh == 1 && dups == 1);
    KIM_CHECK (seq2 > seq1);

    uint64_t sentinel = 0;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "sentinel-1", 0, &sentinel, NULL), 0);
    {
        uint64_t expected [] = { seq1, seq2 };
        const char *senders [] = { SENDER, SENDER };
        s_expect_deliveries (recipient, expected, 2, senders, sentinel);
    }
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);

    //  2. The index survives a crash. dup-3 is receipted and delivered
    //  before the kill; the recipient stays offline for the restart.
    uint64_t seq3 = 0;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "dup-3", 3000, &seq3, &dup), 0);
    KIM_CHECK (!dup && seq3 > sentinel);
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == seq3);
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);
    kim_client_destroy (&recipient);
    kim_client_destroy (&sender);

    int exit_status = kim_testbroker_stop (broker, SIGKILL);
    KIM_CHECK (WIFSIGNALED (exit_status) && WTERMSIG (exit_status) == SIGKILL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    sender = kim_testbroker_client (broker, SENDER, 0, true);
    kim_client_t *sender2 = kim_testbroker_client (broker, SENDER2, 0, false);
    KIM_CHECK (sender && sender2);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "dup-1", 100, &seq, &dup), 0);
    KIM_CHECK (dup && seq == seq1);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "dup-2", 1, &seq, &dup), 0);
    KIM_CHECK (dup && seq == seq2);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "dup-3", 3000, &seq, &dup), 0);
    KIM_CHECK (dup && seq == seq3);

    //  3. The same msg_id from another organisation is another message.
    uint64_t seq4 = 0;
    ITEST_RC (s_itest_send (sender2, RECIPIENT, "ref-dup-2", "dup-1", 100, &seq4, &dup), 0);
    KIM_CHECK (!dup && seq4 > seq3);
    ITEST_RC (s_itest_send (sender2, RECIPIENT, "ref-dup-2", "dup-1", 100, &seq, &dup), 0);
    KIM_CHECK (dup && seq == seq4);
    //  ... and the first sender's dup-1 is still its own.
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "dup-1", 100, &seq, &dup), 0);
    KIM_CHECK (dup && seq == seq1);

    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-dup", "sentinel-2", 0, &sentinel, NULL), 0);
    recipient = kim_testbroker_client (broker, RECIPIENT, 16, true);
    KIM_CHECK (recipient);
    {
        uint64_t expected [] = { seq4 };
        const char *senders [] = { SENDER2 };
        s_expect_deliveries (recipient, expected, 1, senders, sentinel);
    }
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);

    kim_client_destroy (&recipient);
    kim_client_destroy (&sender);
    kim_client_destroy (&sender2);
    s_itest_broker_destroy (&broker);
    printf ("test_dedup: OK\n");
    return 0;
}
