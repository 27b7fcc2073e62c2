/*  test_limits.c — the broker's limits refuse cleanly and it keeps serving.

    1. mailbox_quota: a full mailbox refuses new mail for that recipient only
       (QUOTA), until the recipient acks. Delivered-but-unacked mail counts.
    2. max_payload: a larger payload is refused (TOO_LARGE), also when a raw
       socket bypasses any check in the client library.
    3. Unknown recipients (unregistered, or not an agency) are refused.
    4. Map full: with store map_size_mb = 1 and map_max_mb = 2, 64 KiB
       payloads fill the store until STORE_FULL; the broker still answers
       PING and STATUS and other agents, and after a restart the store opens
       and every receipted message is delivered.
*/
#include "kim_rawsock.h"

#define SENDER      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define OTHER       "ja.rheine"
#define AUDITOR     "kim.audit"

static void
s_quota_and_sizes (void)
{
    const char *orgs [] = { RECIPIENT, SENDER, OTHER, AUDITOR ":auditor", NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs,
        "    mailbox_quota = 5\n    max_payload = 1024\n");
    kim_testbroker_plaintext (broker, true);    //  max_payload counts bytes on the wire
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (sender);
    KIM_CHECK (kim_client_max_payload (sender) == 1024);

    //  1. Quota.
    uint64_t seqs [8];
    bool dup;
    char msg_id [KIM_ID_MAX + 1];
    for (int i = 0; i < 5; i++) {
        snprintf (msg_id, sizeof msg_id, "quota-%d", i);
        ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-quota", msg_id, 10, &seqs [i], &dup), 0);
    }
    uint64_t seq = 0;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-quota", "quota-5", 10, &seq, &dup),
              -KIM_E_QUOTA);
    KIM_CHECK (strlen (kim_client_error (sender)) > 0);
    //  Other mailboxes are not affected.
    ITEST_RC (s_itest_send (sender, OTHER, "ref-other", "other-0", 10, &seq, &dup), 0);

    //  Delivered but unacked still counts.
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 16, true);
    KIM_CHECK (recipient);
    kim_event_t event;
    for (int i = 0; i < 5; i++) {
        ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
        KIM_CHECK (event.seq == seqs [i]);
    }
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-quota", "quota-5", 10, &seq, &dup),
              -KIM_E_QUOTA);
    //  Acks make room; the refused msg_id was not remembered as sent.
    ITEST_RC (kim_client_ack (recipient, seqs [0]), 0);
    ITEST_RC (kim_client_ack (recipient, seqs [1]), 0);
    ITEST_WAIT_MAILBOX (recipient, 3, 3, 10000);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-quota", "quota-5", 10, &seqs [5], &dup), 0);
    KIM_CHECK (!dup);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-quota", "quota-6", 10, &seqs [6], &dup), 0);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-quota", "quota-7", 10, &seq, &dup),
              -KIM_E_QUOTA);
    for (int i = 5; i < 7; i++) {
        ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
        KIM_CHECK (event.seq == seqs [i]);
    }
    for (int i = 2; i < 7; i++)
        ITEST_RC (kim_client_ack (recipient, seqs [i]), 0);
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);

    //  2. max_payload: at the limit fine, above it refused.
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-size", "size-1024", 1024, &seq, &dup), 0);
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == seq && event.payload_size == 1024);
    ITEST_RC (kim_client_ack (recipient, seq), 0);
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-size", "size-2048", 2048, &seq, &dup),
              -KIM_E_TOO_LARGE);

    //  The broker refuses it too when no library stands in the way.
    zsock_t *raw = s_raw_new (broker, SENDER, NULL, NULL);
    s_raw_hello (raw, SENDER, 0);
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, "ref-size", "size-raw-2048");
    uint8_t big [2048];
    s_itest_payload (big, sizeof big, msg.msg_id);
    s_raw_send_msg (raw, &msg, big, sizeof big, 1);
    RAW_EXPECT_REJECT (raw, KIM_E_TOO_LARGE, "size-raw-2048", "payload");
    s_raw_ping (raw);

    //  3. Unknown recipients.
    ITEST_RC (s_itest_send (sender, "jc.nowhere", "ref-x", "unknown-1", 10, &seq, &dup),
              -KIM_E_UNKNOWN_RECIPIENT);
    ITEST_RC (s_itest_send (sender, AUDITOR, "ref-x", "unknown-2", 10, &seq, &dup),
              -KIM_E_UNKNOWN_RECIPIENT);

    //  Still serving: nothing of the refused mail was delivered.
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-size", "size-after", 10, &seq, &dup), 0);
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == seq && streq (event.msg.msg_id, "size-after"));
    ITEST_RC (kim_client_ack (recipient, seq), 0);
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);
    s_raw_ping (raw);

    zsock_destroy (&raw);
    kim_client_destroy (&recipient);
    kim_client_destroy (&sender);
    s_itest_broker_destroy (&broker);
}

#define BIG         (64 * 1024)
#define BIG_MAX     200

static void
s_receive_big (kim_testbroker_t *broker, const uint64_t *seqs, size_t count, bool ack)
{
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 64, false);
    KIM_CHECK (recipient);
    kim_event_t event;
    for (size_t i = 0; i < count; i++) {
        ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
        KIM_CHECK (event.seq == seqs [i]);
        char msg_id [KIM_ID_MAX + 1];
        snprintf (msg_id, sizeof msg_id, "big-%zu", i);
        KIM_CHECK (streq (event.msg.msg_id, msg_id));
        KIM_CHECK (s_itest_payload_ok (event.payload, event.payload_size, BIG, msg_id));
        if (ack)
            ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    }
    if (ack)
        ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);
    else
        ITEST_WAIT_MAILBOX (recipient, count, (int64_t) count, 10000);
    kim_client_destroy (&recipient);
}

static void
s_map_full (void)
{
    const char *orgs [] = { RECIPIENT, SENDER, OTHER, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs,
        "store\n    map_size_mb = 1\n    map_max_mb = 2\n");
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (sender);

    uint64_t seqs [BIG_MAX];
    size_t receipted = 0;
    int rc = 0;
    while (receipted < BIG_MAX) {
        char msg_id [KIM_ID_MAX + 1];
        snprintf (msg_id, sizeof msg_id, "big-%zu", receipted);
        bool dup = true;
        rc = s_itest_send (sender, RECIPIENT, "ref-big", msg_id, BIG, &seqs [receipted], &dup);
        if (rc)
            break;
        KIM_CHECK (!dup);
        receipted++;
    }
    printf ("test_limits: map full after %zu messages of 64 KiB: %s\n", receipted,
            kim_errname (rc));
    ITEST_RC (rc, -KIM_E_STORE_FULL);
    KIM_CHECK (receipted >= 8);         //  the map grew from 1 to 2 MiB first

    //  Full, not failed: it still refuses, answers STATUS and PING, and
    //  admits other agents.
    uint64_t seq;
    ITEST_RC (s_itest_send (sender, RECIPIENT, "ref-big", "big-again", BIG, &seq, NULL),
              -KIM_E_STORE_FULL);
    kim_status_t status;
    ITEST_RC (kim_client_status (sender, &status, 5000), 0);
    KIM_CHECK (status.log_head >= seqs [receipted - 1]);
    zsock_t *raw = s_raw_new (broker, OTHER, NULL, NULL);
    s_raw_hello (raw, OTHER, 0);
    s_raw_ping (raw);
    zsock_destroy (&raw);
    kim_client_t *other = kim_testbroker_client (broker, OTHER, 8, true);
    KIM_CHECK (other);
    ITEST_RC (kim_client_status (other, &status, 5000), 0);
    kim_client_destroy (&other);

    //  Everything receipted can be read out while the store is full.
    s_receive_big (broker, seqs, receipted, false);
    kim_client_destroy (&sender);

    //  A restart opens the full store; every receipted message is there.
    int exit_status = kim_testbroker_stop (broker, SIGTERM);
    if (!WIFEXITED (exit_status) || WEXITSTATUS (exit_status) != 0)
        fprintf (stderr, "broker did not stop cleanly on SIGTERM: status 0x%x (see %s/broker.log)\n",
                 exit_status, kim_testbroker_dir (broker));
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    s_receive_big (broker, seqs, receipted, true);

    s_itest_broker_destroy (&broker);
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    s_quota_and_sizes ();
    s_map_full ();
    printf ("test_limits: OK\n");
    return 0;
}
