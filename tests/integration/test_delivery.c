/*  test_delivery.c — one message from sender to an online recipient.

    SEND -> RECEIPT with a seq; the recipient gets a DELIVER with the same
    seq and the header as sent, with the sender set by the broker from the
    authenticated key and the payload described (length, BLAKE2b hash); the
    recipient acks and its mailbox is empty. A header that claims another
    sender is refused (SENDER_MISMATCH) and nothing is delivered.
*/
#include "kim_itest.h"

#define SENDER      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define OTHER       "ja.rheine"

//  The header the recipient must see: as sent, plus what the broker sets.
static void
s_expected_header (kim_msg_t *expected, const kim_msg_t *sent, const uint8_t *payload,
                   size_t size)
{
    *expected = *sent;
    snprintf (expected->sender, sizeof expected->sender, "%s", SENDER);
    expected->payload_len = (uint32_t) size;
    expected->has_payload_hash = true;
    crypto_generichash (expected->payload_hash, KIM_HASH_SIZE, payload, size, NULL, 0);
}

static bool
s_same_header (const kim_msg_t *a, const kim_msg_t *b)
{
    //  The canonical encoding is the header's identity: equal headers encode
    //  to equal bytes.
    kim_buf_t buf_a, buf_b;
    kim_buf_init (&buf_a);
    kim_buf_init (&buf_b);
    KIM_CHECK (kim_msg_encode (a, &buf_a) == 0);
    KIM_CHECK (kim_msg_encode (b, &buf_b) == 0);
    bool same = buf_a.size == buf_b.size && memcmp (buf_a.data, buf_b.data, buf_a.size) == 0;
    if (!same) {
        kim_buf_t json;
        kim_buf_init (&json);
        kim_msg_to_json (a, &json);
        fprintf (stderr, "expected: %.*s\n", (int) json.size, (const char *) json.data);
        kim_buf_reset (&json);
        kim_msg_to_json (b, &json);
        fprintf (stderr, "got:      %.*s\n", (int) json.size, (const char *) json.data);
        kim_buf_free (&json);
    }
    kim_buf_free (&buf_a);
    kim_buf_free (&buf_b);
    return same;
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { SENDER, RECIPIENT, OTHER, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    kim_testbroker_plaintext (broker, true);    //  checks payload sizes and hashes as logged
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    kim_client_t *recipient = kim_testbroker_client (broker, RECIPIENT, 16, true);
    KIM_CHECK (sender && recipient);
    KIM_CHECK (streq (kim_client_org (sender), SENDER));
    KIM_CHECK (streq (kim_client_org (recipient), RECIPIENT));

    //  A message with every common header field and a binary payload.
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, "ref-delivery-1", "msg-delivery-1");
    snprintf (msg.sender_ref, sizeof msg.sender_ref, "KIM-2024-0815");
    msg.categories = KIM_CAT_ART9;
    msg.deadline = msg.created_at + 14ull * 24 * 3600 * 1000;
    msg.priority = KIM_PRIORITY_HIGH;
    uint8_t payload [777];
    s_itest_payload (payload, sizeof payload, msg.msg_id);
    payload [0] = 0;                    //  binary-safe: NUL bytes travel too

    uint64_t seq = 0;
    bool dup = true;
    ITEST_RC (kim_client_send (sender, &msg, payload, sizeof payload, &seq, &dup, 10000), 0);
    KIM_CHECK (seq > 0);
    KIM_CHECK (!dup);

    kim_event_t event;
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == seq);
    KIM_CHECK (streq (event.msg.msg_id, msg.msg_id));
    KIM_CHECK (streq (event.msg.sender, SENDER));
    KIM_CHECK (streq (event.msg.recipient, RECIPIENT));
    KIM_CHECK (event.msg.payload_len == sizeof payload);
    KIM_CHECK (event.msg.has_payload_hash);
    KIM_CHECK (event.payload_size == sizeof payload);
    KIM_CHECK (memcmp (event.payload, payload, sizeof payload) == 0);
    kim_msg_t expected;
    s_expected_header (&expected, &msg, payload, sizeof payload);
    KIM_CHECK (s_same_header (&expected, &event.msg));
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);

    kim_status_t status = ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);
    KIM_CHECK (status.log_head >= seq);
    KIM_CHECK (status.sessions == 1);     //  the recipient's own, not the sender's

    //  A header claiming another organisation as sender is refused...
    kim_msg_t forged;
    s_itest_msg (&forged, RECIPIENT, "ref-delivery-2", "msg-delivery-forged");
    snprintf (forged.sender, sizeof forged.sender, "%s", OTHER);
    uint8_t forged_payload [16] = "forged payload";
    uint64_t forged_seq = 0;
    int rc = kim_client_send (sender, &forged, forged_payload, sizeof forged_payload,
                              &forged_seq, &dup, 10000);
    if (rc != -KIM_E_SENDER_MISMATCH)
        fprintf (stderr, "forged sender: got %s (%s); the library may rewrite hdr.sender\n",
                 kim_errname (rc), kim_client_error (sender));
    ITEST_RC (rc, -KIM_E_SENDER_MISMATCH);

    //  ... while a header that repeats the authenticated sender is fine.
    kim_msg_t honest;
    s_itest_msg (&honest, RECIPIENT, "ref-delivery-2", "msg-delivery-honest");
    snprintf (honest.sender, sizeof honest.sender, "%s", SENDER);
    uint64_t honest_seq = 0;
    ITEST_RC (kim_client_send (sender, &honest, NULL, 0, &honest_seq, &dup, 10000), 0);
    KIM_CHECK (honest_seq > seq);
    KIM_CHECK (!dup);

    //  Deliveries come in seq order: had the forged message been logged, it
    //  would arrive before the honest one.
    ITEST_RC (ITEST_DELIVER (recipient, &event, 10000), 0);
    KIM_CHECK (event.seq == honest_seq);
    KIM_CHECK (streq (event.msg.msg_id, "msg-delivery-honest"));
    KIM_CHECK (streq (event.msg.sender, SENDER));
    KIM_CHECK (event.payload_size == 0);
    KIM_CHECK (event.msg.payload_len == 0);
    ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    ITEST_WAIT_MAILBOX (recipient, 0, 0, 10000);

    //  The forged message reached nobody: the org it named has nothing either.
    kim_client_t *other = kim_testbroker_client (broker, OTHER, 16, false);
    KIM_CHECK (other);
    ITEST_WAIT_MAILBOX (other, 0, 0, 5000);
    KIM_CHECK (ITEST_DELIVER (other, &event, 300) == -KIM_E_TIMEOUT);

    kim_client_destroy (&other);
    kim_client_destroy (&sender);
    kim_client_destroy (&recipient);
    int status_code = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status_code) && WEXITSTATUS (status_code) == 0);
    s_itest_broker_destroy (&broker);
    printf ("test_delivery: OK\n");
    return 0;
}
