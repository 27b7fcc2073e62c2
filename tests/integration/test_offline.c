/*  test_offline.c — mail for a recipient that is not connected.

    The sender sends 500 messages over several referrals while the recipient
    is offline; when the recipient connects it gets all of them, in seq order
    (which is the send order), each once; after acking, a new connection gets
    nothing more. Then the same across a clean broker restart (SIGTERM, start):
    mail kept for an offline recipient survives it.
*/
#include "kim_itest.h"

#define SENDER      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define REFERRALS   7

typedef struct {
    char msg_id [KIM_ID_MAX + 1];
    size_t payload_size;
    uint64_t seq;
} sent_t;

//  Sends `count` messages pipelined and collects their receipts.
static void
s_send_batch (kim_client_t *sender, sent_t *sent, size_t count, const char *prefix)
{
    for (size_t i = 0; i < count; i++) {
        snprintf (sent [i].msg_id, sizeof sent [i].msg_id, "%s-%04zu", prefix, i);
        sent [i].payload_size = 16 + (i * 37) % 2000;
        sent [i].seq = 0;
        char referral [KIM_ID_MAX + 1];
        snprintf (referral, sizeof referral, "%s-ref-%zu", prefix, i % REFERRALS);
        kim_msg_t msg;
        s_itest_msg (&msg, RECIPIENT, referral, sent [i].msg_id);
        uint8_t payload [2048];
        s_itest_payload (payload, sent [i].payload_size, sent [i].msg_id);
        ITEST_RC (kim_client_send_async (sender, &msg, payload, sent [i].payload_size), 0);
    }
    ITEST_RC (kim_client_flush (sender, 30000), 0);
    KIM_CHECK (kim_client_pending (sender) == 0);

    size_t receipts = 0;
    size_t next = 0;                //  receipts come in send order on one connection
    kim_event_t event;
    while (receipts < count) {
        int rc = kim_client_recv (sender, &event, 5000);
        ITEST_RC (rc, 0);
        if (event.type != KIM_EVENT_RECEIPT) {
            s_itest_print_event ("sender", &event);
            KIM_CHECK (event.type == KIM_EVENT_RECEIPT);
        }
        KIM_CHECK (!event.dup);
        KIM_CHECK (next < count && streq (event.msg_id, sent [next].msg_id));
        sent [next].seq = event.seq;
        if (next > 0)
            KIM_CHECK (sent [next].seq > sent [next - 1].seq);
        next++;
        receipts++;
    }
}

//  Connects the recipient and checks it gets exactly `sent`, in order.
static void
s_receive_all (kim_testbroker_t *broker, const sent_t *sent, size_t count)
{
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 64, true);
    KIM_CHECK (recipient);
    kim_event_t event;
    for (size_t i = 0; i < count; i++) {
        int rc = ITEST_DELIVER (recipient, &event, 10000);
        if (rc) {
            fprintf (stderr, "recipient got %zu of %zu messages\n", i, count);
            ITEST_RC (rc, 0);
        }
        if (event.seq != sent [i].seq) {
            fprintf (stderr, "delivery %zu: seq %" PRIu64 ", expected %" PRIu64 "\n",
                     i, event.seq, sent [i].seq);
            KIM_CHECK (event.seq == sent [i].seq);
        }
        KIM_CHECK (streq (event.msg.msg_id, sent [i].msg_id));
        KIM_CHECK (streq (event.msg.sender, SENDER));
        KIM_CHECK (s_itest_payload_ok (event.payload, event.payload_size,
                                       sent [i].payload_size, sent [i].msg_id));
        ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    }
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);
    //  Nothing beyond the messages sent, and no redelivery of acked ones.
    KIM_CHECK (ITEST_DELIVER (recipient, &event, 500) == -KIM_E_TIMEOUT);
    kim_client_destroy (&recipient);

    //  A new connection finds the mailbox empty.
    recipient = kim_testbroker_client (broker, RECIPIENT, 64, false);
    KIM_CHECK (recipient);
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 5000);
    KIM_CHECK (ITEST_DELIVER (recipient, &event, 500) == -KIM_E_TIMEOUT);
    kim_client_destroy (&recipient);
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { SENDER, RECIPIENT, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    //  1. Recipient offline while 500 messages arrive.
    enum { FIRST = 500, SECOND = 200 };
    sent_t *sent = (sent_t *) calloc (FIRST, sizeof (sent_t));
    KIM_CHECK (sent);
    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (sender);
    int64_t started = s_itest_now ();
    s_send_batch (sender, sent, FIRST, "offline");
    printf ("test_offline: %d messages receipted in %" PRId64 " ms\n", FIRST,
            s_itest_now () - started);
    kim_status_t status;
    ITEST_RC (kim_client_status (sender, &status, 5000), 0);
    KIM_CHECK (status.log_head >= sent [FIRST - 1].seq);

    s_receive_all (broker, sent, FIRST);

    //  2. Mail for an offline recipient survives a clean restart.
    s_send_batch (sender, sent, SECOND, "restart");
    kim_client_destroy (&sender);
    int exit_status = kim_testbroker_stop (broker, SIGTERM);
    if (!WIFEXITED (exit_status) || WEXITSTATUS (exit_status) != 0)
        fprintf (stderr, "broker did not stop cleanly on SIGTERM: status 0x%x (see %s/broker.log)\n",
                 exit_status, kim_testbroker_dir (broker));
    KIM_CHECK (WIFEXITED (exit_status) && WEXITSTATUS (exit_status) == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    s_receive_all (broker, sent, SECOND);

    //  The log continues after the restart: new seqs are above the old ones.
    sender = kim_testbroker_client (broker, SENDER, 0, true);
    KIM_CHECK (sender);
    uint64_t seq = 0;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "after-restart", "after-restart-1", 10, &seq, NULL), 0);
    KIM_CHECK (seq > sent [SECOND - 1].seq);
    kim_client_destroy (&sender);

    free (sent);
    s_itest_broker_destroy (&broker);
    printf ("test_offline: OK\n");
    return 0;
}
