/*  test_v2.c — protocol version 2 over raw sockets (PROTOCOL.md 5.1, 8.16-8.19).

    1. A SEND_BATCH mixing good and refused messages (an unknown recipient,
       an entry that does not decode, a duplicate of an earlier entry of
       the same batch) is answered with one RECEIPT_BATCH, in the batch's
       order, and only the good messages are stored.
    2. A version 2 recipient that connects to a full mailbox gets several
       deliveries in one DELIVER_BATCH, payloads intact, in seq order.
    3. ACK_RANGE acknowledges what is in flight in its ranges; a range with
       nothing in flight is refused with BAD_ACK and the others still count.
    4. Version 1 and version 2 side by side: a version 1 session is refused
       the version 2 commands and gets deliveries as DELIVER with frame 1
       (also of messages a version 2 sender sent); a version 2 session may
       still SEND; a frame that does not split is refused as a whole; the
       client library negotiates version 2, or 1 when told to.
    5. The byte limit: a SEND_BATCH above max_payload + 64 KiB is refused
       whole; large deliveries are spread over several DELIVER_BATCH frames,
       none above the limit.
*/
#include "kim_rawsock.h"

#define SENDER      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define GOOD        10              //  messages stored by parts 1 and 2
#define BIG         (600 * 1024)    //  two of them pass max_payload (1 MiB) + 64 KiB

static kim_cmd_t *s_cmd;            //  scratch, 14 KB: heap

//  HELLO offering `versions`; expects WELCOME with version `expected`.
static void
s_hello (zsock_t *sock, const char *org, uint32_t max_version, uint32_t window,
         uint32_t expected)
{
    kim_cmd_init (s_cmd, KIM_CMD_HELLO);
    for (uint32_t v = 1; v <= max_version; v++)
        s_cmd->versions [s_cmd->version_count++] = v;
    snprintf (s_cmd->agent, sizeof s_cmd->agent, "test-v2");
    s_cmd->window = window;
    s_raw_send_cmd (sock, s_cmd, NULL, 0, 0);
    KIM_CHECK (s_raw_recv (sock, s_cmd, 10000) == 0);
    if (s_cmd->id != KIM_CMD_WELCOME || !streq (s_cmd->org, org) || s_cmd->version != expected) {
        s_raw_print ("HELLO answered with", s_cmd);
        exit (1);
    }
}

//  Receives one message: its frames, or NULL on timeout.
static zmsg_t *
s_recv (zsock_t *sock, int timeout_ms)
{
    zmq_pollitem_t item = { zsock_resolve (sock), 0, ZMQ_POLLIN, 0 };
    if (zmq_poll (&item, 1, timeout_ms) != 1)
        return NULL;
    zmsg_t *msg = zmsg_recv (sock);
    KIM_CHECK (msg);
    return msg;
}

//  Receives a batch frame of `batch`; splits it into `entries`. Returns the
//  message (owning the bytes the entries point into) and sets *count.
static zmsg_t *
s_recv_batch (zsock_t *sock, kim_cmd_id_t batch, kim_entry_t *entries, size_t *count)
{
    zmsg_t *msg = s_recv (sock, 10000);
    if (!msg) {
        fprintf (stderr, "no %s within 10 s\n", kim_cmd_name (batch));
        exit (1);
    }
    KIM_CHECK (zmsg_size (msg) == 1);
    zframe_t *frame = zmsg_first (msg);
    kim_decode_error_t err;
    int rc = kim_batch_split (s_cmd, zframe_data (frame), zframe_size (frame), entries, &err);
    if (rc || s_cmd->id != batch) {
        kim_cmd_decode (s_cmd, zframe_data (frame), zframe_size (frame), &err);
        s_raw_print ("expected a batch, got", s_cmd);
        exit (1);
    }
    *count = s_cmd->count;
    return msg;
}

//  Appends a SEND entry (its map, then its payload) to a SEND_BATCH.
static void
s_entry (kim_buf_t *buf, const kim_msg_t *msg, const void *payload, size_t size)
{
    kim_cmd_init (s_cmd, KIM_CMD_SEND);
    s_cmd->msg = *msg;
    KIM_CHECK (kim_cmd_encode (s_cmd, buf) == 0);
    KIM_CHECK (kim_batch_payload (payload, size, buf) == 0);
}

static void
s_payload_entry (kim_buf_t *buf, const char *referral_id, const char *msg_id, size_t size)
{
    kim_msg_t msg;
    s_itest_msg (&msg, RECIPIENT, referral_id, msg_id);
    uint8_t payload [512];
    KIM_CHECK (size <= sizeof payload);
    s_itest_payload (payload, size, msg_id);
    s_entry (buf, &msg, payload, size);
}

static void
s_expect_receipt (const kim_entry_t *entry, const char *msg_id, bool dup, uint64_t *seq)
{
    kim_decode_error_t err;
    KIM_CHECK (kim_batch_entry_decode (KIM_CMD_RECEIPT_BATCH, entry, s_cmd, &err) == 0);
    if (s_cmd->id != KIM_CMD_RECEIPT || !streq (s_cmd->msg_id, msg_id) || s_cmd->dup != dup) {
        fprintf (stderr, "expected RECEIPT %s dup=%d\n", msg_id, dup);
        s_raw_print ("got", s_cmd);
        exit (1);
    }
    if (seq)
        *seq = s_cmd->seq;
}

static void
s_expect_reject (const kim_entry_t *entry, int code, const char *msg_id, const char *path)
{
    kim_decode_error_t err;
    KIM_CHECK (kim_batch_entry_decode (KIM_CMD_RECEIPT_BATCH, entry, s_cmd, &err) == 0);
    if (s_cmd->id != KIM_CMD_REJECT || s_cmd->code != code || !streq (s_cmd->msg_id, msg_id)
    ||  !streq (s_cmd->path, path)) {
        fprintf (stderr, "expected REJECT %s msg_id=%s path=%s\n", kim_errname (code), msg_id,
                 path);
        s_raw_print ("got", s_cmd);
        exit (1);
    }
}

static void
s_send_buf (zsock_t *sock, const kim_buf_t *buf)
{
    s_raw_send_bytes (sock, buf->data, buf->size);
}

//  Polls STATUS until the organisation's mailbox and in-flight figures are
//  as expected: acks commit at the end of the broker's turn.
static void
s_wait_status (zsock_t *sock, uint64_t mailbox, uint64_t in_flight)
{
    int64_t deadline = zclock_mono () + 10000;
    for (;;) {
        kim_cmd_init (s_cmd, KIM_CMD_STATUS);
        s_raw_send_cmd (sock, s_cmd, NULL, 0, 0);
        KIM_CHECK (s_raw_recv (sock, s_cmd, 10000) == 0);
        KIM_CHECK (s_cmd->id == KIM_CMD_STATUS_REPLY);
        if (s_cmd->status.mailbox == mailbox && s_cmd->status.in_flight == in_flight)
            return;
        if (zclock_mono () > deadline) {
            fprintf (stderr, "mailbox %" PRIu64 " in flight %" PRIu64 ", expected %" PRIu64
                     " and %" PRIu64 "\n", s_cmd->status.mailbox, s_cmd->status.in_flight,
                     mailbox, in_flight);
            exit (1);
        }
        zclock_sleep (20);              //  a poll interval, not synchronisation
    }
}

static void
s_ack_range (zsock_t *sock, const uint64_t *ranges, size_t values)
{
    kim_cmd_init (s_cmd, KIM_CMD_ACK_RANGE);
    memcpy (s_cmd->ranges, ranges, values * sizeof ranges [0]);
    s_cmd->range_count = values;
    s_raw_send_cmd (sock, s_cmd, NULL, 0, 0);
}

int
main (void)
{
    s_cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (s_cmd);
    const char *orgs [] = { SENDER, RECIPIENT, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_buf_t buf;
    kim_buf_init (&buf);
    kim_entry_t entries [KIM_BATCH_MAX];
    size_t count;
    uint64_t seqs [GOOD];

    //  1. A mixed batch: one RECEIPT_BATCH, in order
    zsock_t *sender = s_raw_new (broker, SENDER, NULL, NULL);
    s_hello (sender, SENDER, 2, 0, 2);
    KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    s_payload_entry (&buf, "v2-ref-0", "v2-ok-0", 100);
    kim_msg_t msg;
    s_itest_msg (&msg, "jc.nowhere", "v2-ref-1", "v2-unknown-1");
    s_entry (&buf, &msg, "x", 1);
    //  An entry that does not decode: an unknown priority
    const char *bad = "{\"cmd\": \"SEND\", \"hdr\": {\"type\": \"REFERRAL\", \"schema\": 1, "
                      "\"msg_id\": \"v2-bad-2\", \"priority\": \"urgent\"}}";
    KIM_CHECK (kim_json_to_msgpack (bad, strlen (bad), &buf) == 0);
    KIM_CHECK (kim_batch_payload (NULL, 0, &buf) == 0);
    s_payload_entry (&buf, "v2-ref-3", "v2-ok-3", 0);
    s_payload_entry (&buf, "v2-ref-0", "v2-ok-0", 100);      //  a duplicate of entry 0
    //  Decodes, but made before the de-duplication window: stale
    s_itest_msg (&msg, RECIPIENT, "v2-ref-5", "v2-stale-5");
    msg.created_at = 1000;
    s_entry (&buf, &msg, "x", 1);
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 6, 0, &buf) == 0);
    s_send_buf (sender, &buf);
    zmsg_t *reply = s_recv_batch (sender, KIM_CMD_RECEIPT_BATCH, entries, &count);
    KIM_CHECK (count == 6);
    uint64_t dup_seq;
    s_expect_receipt (&entries [0], "v2-ok-0", false, &seqs [0]);
    s_expect_reject (&entries [1], KIM_E_UNKNOWN_RECIPIENT, "v2-unknown-1", "hdr.recipient");
    s_expect_reject (&entries [2], KIM_E_BAD_VALUE, "v2-bad-2", "hdr.priority");
    s_expect_receipt (&entries [3], "v2-ok-3", false, &seqs [1]);
    s_expect_receipt (&entries [4], "v2-ok-0", true, &dup_seq);
    s_expect_reject (&entries [5], KIM_E_STALE, "v2-stale-5", "hdr.created_at");
    KIM_CHECK (dup_seq == seqs [0] && seqs [1] > seqs [0]);
    zmsg_destroy (&reply);

    //  Eight more, in one batch, all good
    kim_buf_reset (&buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    for (int i = 2; i < GOOD; i++) {
        char referral_id [32], msg_id [32];
        snprintf (referral_id, sizeof referral_id, "v2-ref-%d", 10 + i);
        snprintf (msg_id, sizeof msg_id, "v2-ok-%d", 10 + i);
        s_payload_entry (&buf, referral_id, msg_id, 50 + (size_t) i);
    }
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, GOOD - 2, 0, &buf) == 0);
    s_send_buf (sender, &buf);
    reply = s_recv_batch (sender, KIM_CMD_RECEIPT_BATCH, entries, &count);
    KIM_CHECK (count == GOOD - 2);
    for (int i = 2; i < GOOD; i++) {
        char msg_id [32];
        snprintf (msg_id, sizeof msg_id, "v2-ok-%d", 10 + i);
        s_expect_receipt (&entries [i - 2], msg_id, false, &seqs [i]);
        KIM_CHECK (seqs [i] > seqs [i - 1]);
    }
    zmsg_destroy (&reply);

    //  2. The recipient connects to a mailbox of GOOD: one DELIVER_BATCH
    zsock_t *recipient = s_raw_new (broker, RECIPIENT, NULL, NULL);
    s_hello (recipient, RECIPIENT, 2, 64, 2);
    reply = s_recv_batch (recipient, KIM_CMD_DELIVER_BATCH, entries, &count);
    KIM_CHECK (count == GOOD);
    for (size_t i = 0; i < count; i++) {
        kim_decode_error_t err;
        KIM_CHECK (kim_batch_entry_decode (KIM_CMD_DELIVER_BATCH, &entries [i], s_cmd, &err) == 0);
        KIM_CHECK (s_cmd->id == KIM_CMD_DELIVER && s_cmd->seq == seqs [i]);
        KIM_CHECK (streq (s_cmd->msg.sender, SENDER));
        size_t expected = i == 0? 100: i == 1? 0: 50 + i;
        KIM_CHECK (s_cmd->msg.payload_len == expected);
        KIM_CHECK (s_itest_payload_ok (entries [i].payload, entries [i].payload_size, expected,
                                       s_cmd->msg.msg_id));
        uint8_t hash [KIM_HASH_SIZE];
        crypto_generichash (hash, sizeof hash, entries [i].payload, entries [i].payload_size,
                            NULL, 0);
        KIM_CHECK (memcmp (hash, s_cmd->msg.payload_hash, KIM_HASH_SIZE) == 0);
    }
    zmsg_destroy (&reply);
    s_wait_status (recipient, GOOD, GOOD);

    //  3. Range acks: the first five and a range with nothing in flight
    uint64_t ranges [4] = { seqs [0], seqs [4], seqs [GOOD - 1] + 1000, seqs [GOOD - 1] + 2000 };
    s_ack_range (recipient, ranges, 4);
    RAW_EXPECT_REJECT (recipient, KIM_E_BAD_ACK, NULL, "ranges[2]");
    s_wait_status (recipient, GOOD - 5, GOOD - 5);
    //  The rest in one range that spans the whole gap-riddled sequence
    ranges [0] = seqs [5];
    ranges [1] = seqs [GOOD - 1];
    s_ack_range (recipient, ranges, 2);
    s_wait_status (recipient, 0, 0);
    //  A range out of order is refused by the decoder, the session stays
    const char *backwards = "{\"cmd\": \"ACK_RANGE\", \"ranges\": [20, 10]}";
    kim_buf_reset (&buf);
    KIM_CHECK (kim_json_to_msgpack (backwards, strlen (backwards), &buf) == 0);
    s_send_buf (recipient, &buf);
    RAW_EXPECT_REJECT (recipient, KIM_E_BAD_VALUE, NULL, "ranges[1]");
    s_raw_ping (recipient);

    //  4. Version 1 beside version 2. A version 1 session of the recipient
    //  takes over deliveries and is refused version 2's commands.
    zsock_t *old = s_raw_new (broker, RECIPIENT, NULL, NULL);
    s_hello (old, RECIPIENT, 1, 8, 1);
    ranges [0] = 1;
    ranges [1] = 2;
    s_ack_range (old, ranges, 2);
    RAW_EXPECT_REJECT (old, KIM_E_UNKNOWN_CMD, NULL, "cmd");
    kim_buf_reset (&buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    s_payload_entry (&buf, "v2-ref-old", "v2-from-old", 5);
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 1, 0, &buf) == 0);
    s_send_buf (old, &buf);
    RAW_EXPECT_REJECT (old, KIM_E_UNKNOWN_CMD, NULL, "cmd");
    //  A version 1 sender's SEND and a version 2 sender's SEND_BATCH both
    //  reach it as DELIVER with the payload in frame 1
    zsock_t *old_sender = s_raw_new (broker, SENDER, NULL, NULL);
    s_hello (old_sender, SENDER, 1, 0, 1);
    s_itest_msg (&msg, RECIPIENT, "v2-ref-v1", "v1-sent");
    s_raw_send_msg (old_sender, &msg, "abc", 3, 1);
    s_raw_expect_receipt (old_sender, "v1-sent");
    kim_buf_reset (&buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    s_payload_entry (&buf, "v2-ref-v2", "v2-sent", 7);
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 1, 0, &buf) == 0);
    s_send_buf (sender, &buf);
    reply = s_recv_batch (sender, KIM_CMD_RECEIPT_BATCH, entries, &count);
    KIM_CHECK (count == 1);
    s_expect_receipt (&entries [0], "v2-sent", false, NULL);
    zmsg_destroy (&reply);
    //  A version 2 session may still SEND
    s_itest_msg (&msg, RECIPIENT, "v2-ref-plain", "v2-plain-send");
    s_raw_send_msg (sender, &msg, "defg", 4, 1);
    s_raw_expect_receipt (sender, "v2-plain-send");
    const char *expect [] = { "v1-sent", "v2-sent", "v2-plain-send" };
    size_t sizes [] = { 3, 7, 4 };
    for (int i = 0; i < 3; i++) {
        zmsg_t *delivery = s_recv (old, 10000);
        KIM_CHECK (delivery && zmsg_size (delivery) == 2);
        zframe_t *frame = zmsg_first (delivery);
        kim_decode_error_t err;
        KIM_CHECK (kim_cmd_decode (s_cmd, zframe_data (frame), zframe_size (frame), &err) == 0);
        KIM_CHECK (s_cmd->id == KIM_CMD_DELIVER && streq (s_cmd->msg.msg_id, expect [i]));
        KIM_CHECK (zframe_size (zmsg_next (delivery)) == sizes [i]);
        uint64_t seq = s_cmd->seq;
        kim_cmd_init (s_cmd, KIM_CMD_ACK);
        s_cmd->ack_count = 1;
        s_cmd->acks [0] = seq;
        s_raw_send_cmd (old, s_cmd, NULL, 0, 0);
        zmsg_destroy (&delivery);
    }
    s_wait_status (old, 0, 0);

    //  Frames that do not split are refused as a whole, with no msg_id
    kim_buf_reset (&buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    s_payload_entry (&buf, "v2-ref-cut", "v2-cut", 10);
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 2, 0, &buf) == 0);      //  claims two
    s_send_buf (sender, &buf);
    RAW_EXPECT_REJECT (sender, KIM_E_MALFORMED, NULL, "entries[1]");
    buf.size -= 3;                                                      //  a payload cut short
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 1, 0, &buf) == 0);
    s_send_buf (sender, &buf);
    RAW_EXPECT_REJECT (sender, KIM_E_MALFORMED, NULL, "entries[0]");
    //  A batch frame with a second frame
    kim_buf_reset (&buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    s_payload_entry (&buf, "v2-ref-two", "v2-two-frames", 10);
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 1, 0, &buf) == 0);
    const void *frames [] = { buf.data, "x" };
    size_t frame_sizes [] = { buf.size, 1 };
    s_raw_send_frames (sender, frames, frame_sizes, 2);
    RAW_EXPECT_REJECT (sender, KIM_E_BAD_FRAMES, NULL, NULL);
    //  A client sending what the broker sends
    kim_buf_reset (&buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_RECEIPT_BATCH, &buf) == 0);
    kim_cmd_init (s_cmd, KIM_CMD_RECEIPT);
    snprintf (s_cmd->msg_id, sizeof s_cmd->msg_id, "m-1");
    s_cmd->seq = 1;
    KIM_CHECK (kim_cmd_encode (s_cmd, &buf) == 0);
    KIM_CHECK (kim_batch_end (KIM_CMD_RECEIPT_BATCH, 1, 0, &buf) == 0);
    s_send_buf (sender, &buf);
    RAW_EXPECT_REJECT (sender, KIM_E_UNKNOWN_CMD, NULL, "cmd");
    s_raw_ping (sender);
    zsock_destroy (&old_sender);
    zsock_destroy (&old);
    zsock_destroy (&recipient);

    //  5. Two big messages in one frame pass the limit: refused whole.
    //  One by one they pass, and come back in frames within the limit.
    uint8_t *big = (uint8_t *) malloc (BIG);
    KIM_CHECK (big);
    const char *big_ids [] = { "v2-big-0", "v2-big-1", "v2-big-2" };
    kim_buf_reset (&buf);
    KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
    for (int i = 0; i < 2; i++) {
        s_itest_msg (&msg, RECIPIENT, big_ids [i], big_ids [i]);
        s_itest_payload (big, BIG, big_ids [i]);
        s_entry (&buf, &msg, big, BIG);
    }
    KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 2, 0, &buf) == 0);
    s_send_buf (sender, &buf);
    RAW_EXPECT_REJECT (sender, KIM_E_TOO_LARGE, NULL, NULL);
    for (int i = 0; i < 3; i++) {
        kim_buf_reset (&buf);
        KIM_CHECK (kim_batch_begin (KIM_CMD_SEND_BATCH, &buf) == 0);
        s_itest_msg (&msg, RECIPIENT, big_ids [i], big_ids [i]);
        s_itest_payload (big, BIG, big_ids [i]);
        s_entry (&buf, &msg, big, BIG);
        KIM_CHECK (kim_batch_end (KIM_CMD_SEND_BATCH, 1, 0, &buf) == 0);
        s_send_buf (sender, &buf);
        reply = s_recv_batch (sender, KIM_CMD_RECEIPT_BATCH, entries, &count);
        KIM_CHECK (count == 1);
        s_expect_receipt (&entries [0], big_ids [i], false, NULL);
        zmsg_destroy (&reply);
    }
    recipient = s_raw_new (broker, RECIPIENT, NULL, NULL);
    s_hello (recipient, RECIPIENT, 2, 64, 2);
    size_t received = 0, frames_seen = 0;
    uint64_t last = 0;
    while (received < 3) {
        reply = s_recv_batch (recipient, KIM_CMD_DELIVER_BATCH, entries, &count);
        KIM_CHECK (zframe_size (zmsg_first (reply)) <= 1024 * 1024 + KIM_FRAME_MAX);
        frames_seen++;
        for (size_t i = 0; i < count; i++, received++) {
            kim_decode_error_t err;
            KIM_CHECK (received < 3);
            KIM_CHECK (kim_batch_entry_decode (KIM_CMD_DELIVER_BATCH, &entries [i], s_cmd,
                                               &err) == 0);
            KIM_CHECK (streq (s_cmd->msg.msg_id, big_ids [received]) && s_cmd->seq > last);
            KIM_CHECK (s_itest_payload_ok (entries [i].payload, entries [i].payload_size, BIG,
                                           big_ids [received]));
            last = s_cmd->seq;
        }
        zmsg_destroy (&reply);
    }
    KIM_CHECK (frames_seen == 3);
    ranges [0] = 1;
    ranges [1] = last;
    s_ack_range (recipient, ranges, 2);
    s_wait_status (recipient, 0, 0);
    free (big);
    zsock_destroy (&recipient);
    zsock_destroy (&sender);

    //  The client library speaks version 2, and version 1 when told to
    kim_client_t *client = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (client);
    uint64_t seq;
    bool dup;
    ITEST_RC (s_itest_send (client, RECIPIENT, "v2-ref-lib", "v2-lib", 20, &seq, &dup), 0);
    KIM_CHECK (kim_client_protocol (client) == 2);
    kim_client_destroy (&client);
    setenv ("KIM_PROTOCOL", "1", 1);
    client = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (client);
    ITEST_RC (s_itest_send (client, RECIPIENT, "v2-ref-lib1", "v1-lib", 20, &seq, &dup), 0);
    KIM_CHECK (kim_client_protocol (client) == 1);
    kim_client_destroy (&client);
    unsetenv ("KIM_PROTOCOL");

    kim_buf_free (&buf);
    free (s_cmd);
    s_itest_broker_destroy (&broker);
    printf ("test_v2: OK\n");
    return 0;
}
