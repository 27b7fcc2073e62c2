/*  test_client.c — the client library against a real broker.

    Covers: session open (and the clear failure for an unregistered key),
    synchronous and pipelined sends, de-duplication by msg_id, REJECTs with
    their path, local validation, delivery with payload and acks, status,
    certificate loading (mode checks), and the recovery paths: a broker
    killed with SIGKILL while sends are in flight, and a session that
    expired while the application was idle. Each case waits with timeouts
    on real events, never with sleep, except where idleness is the point.
*/
#include <czmq.h>
#include <signal.h>
#include <sys/stat.h>

#include "kim_cli.h"            //  agents/cli/: the _explain variants of new and load_cert
#include "kim_testbroker.h"

static bool verbose = false;

#define S_LOG(...) do { if (verbose) { printf (__VA_ARGS__); printf ("\n"); } } while (0)

//  Waits for the next event of `type`, failing on anything else.
static void
s_expect (kim_client_t *client, kim_event_t *event, kim_event_type_t type, int timeout_ms)
{
    int rc = kim_client_recv (client, event, timeout_ms);
    if (rc)
        fprintf (stderr, "recv: %s (%s)\n", kim_strerror (rc), kim_client_error (client));
    KIM_CHECK (rc == 0);
    if (event->type != type)
        fprintf (stderr, "expected event %d, got %d (code %d %s)\n", type, event->type,
                 event->code, event->text);
    KIM_CHECK (event->type == type);
}

//  Waits until our mailbox is empty. The broker answers STATUS as it reads
//  it, before committing the ACKs read in the same batch, so poll briefly.
static void
s_expect_empty_mailbox (kim_client_t *client)
{
    kim_status_t status;
    int64_t deadline = zclock_mono () + 5000;
    do {
        KIM_CHECK (kim_client_status (client, &status, 5000) == 0);
        if (status.mailbox == 0)
            return;
        kim_event_t event;
        kim_client_recv (client, &event, 50);
    } while (zclock_mono () < deadline);
    fprintf (stderr, "mailbox still holds %" PRIu64 "\n", status.mailbox);
    KIM_CHECK (status.mailbox == 0);
}

static void
s_test_session (kim_testbroker_t *broker)
{
    S_LOG ("session: open, org, limits, status");
    kim_client_t *a = kim_testbroker_client (broker, "kim.rheine", 0, false);
    KIM_CHECK (a);
    KIM_CHECK (streq (kim_client_org (a), "kim.rheine"));
    KIM_CHECK (kim_client_max_payload (a) > 0);
    KIM_CHECK (kim_client_pending (a) == 0);
    kim_status_t status;
    KIM_CHECK (kim_client_status (a, &status, 5000) == 0);
    KIM_CHECK (status.sessions >= 1);

    S_LOG ("session: SUBSCRIBE and UNSUBSCRIBE as requests, answered by their sub_id");
    kim_cmd_t *request = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (request && reply);
    kim_cmd_init (request, KIM_CMD_SUBSCRIBE);
    kim_str_copy (request->sub_id, sizeof request->sub_id, "s-client");
    kim_str_copy (request->case_id, sizeof request->case_id, "c-client");
    KIM_CHECK (kim_client_request (a, request, reply, 5000) == 0);
    KIM_CHECK (reply->id == KIM_CMD_RECEIPT && streq (reply->msg_id, "s-client"));
    kim_cmd_init (request, KIM_CMD_UNSUBSCRIBE);
    kim_str_copy (request->sub_id, sizeof request->sub_id, "s-client");
    KIM_CHECK (kim_client_request (a, request, reply, 5000) == 0);
    KIM_CHECK (reply->id == KIM_CMD_RECEIPT && streq (reply->msg_id, "s-client"));
    free (request);
    free (reply);
    kim_client_destroy (&a);
    KIM_CHECK (a == NULL);
    kim_client_destroy (&a);            //  idempotent

    //  Over tcp too
    a = kim_testbroker_client (broker, "kim.rheine", 0, true);
    KIM_CHECK (a);
    kim_client_destroy (&a);

    S_LOG ("session: an unregistered key times out with a clear error");
    kim_client_config_t config = kim_testbroker_client_config (broker, "kim.rheine", 0, false);
    zcert_t *stranger = zcert_new ();
    config.public_key = zcert_public_txt (stranger);
    config.secret_key = zcert_secret_txt (stranger);
    config.timeout_ms = 300;
    char why [512];
    int err = 0;
    int64_t started = zclock_mono ();
    a = kim_client_new_explain (&config, &err, why, sizeof why);
    KIM_CHECK (a == NULL);
    KIM_CHECK (err == -KIM_E_TIMEOUT);
    KIM_CHECK (strstr (why, "no WELCOME within 300 ms"));
    KIM_CHECK (zclock_mono () - started < 3000);
    zcert_destroy (&stranger);

    S_LOG ("session: bad arguments");
    config = kim_testbroker_client_config (broker, "kim.rheine", 0, false);
    config.broker_key = "short";
    KIM_CHECK (kim_client_new (&config, &err) == NULL && err == -KIM_E_KEY);
    config = kim_testbroker_client_config (broker, "kim.rheine", 0, false);
    config.endpoint = "nonsense://x";
    KIM_CHECK (kim_client_new (&config, &err) == NULL && err == -KIM_E_ARGS);
}

static void
s_test_send (kim_testbroker_t *broker)
{
    kim_client_t *a = kim_testbroker_client (broker, "kim.rheine", 0, false);
    KIM_CHECK (a);
    kim_msg_t msg;

    S_LOG ("send: synchronous, then the same msg_id again is a duplicate");
    kim_test_referral (&msg, "jc.rheine", "r-sync");
    uint64_t seq = 0, seq2 = 0;
    bool dup = true;
    KIM_CHECK (kim_client_send (a, &msg, "hello", 5, &seq, &dup, 5000) == 0);
    KIM_CHECK (seq > 0 && !dup);
    KIM_CHECK (strlen (msg.msg_id) == 32);          //  generated and written back
    KIM_CHECK (kim_client_send (a, &msg, "hello", 5, &seq2, &dup, 5000) == 0);
    KIM_CHECK (seq2 == seq && dup);

    S_LOG ("send: the broker's REJECT names code and path");
    kim_test_referral (&msg, "jc.nowhere", "r-nowhere");
    int rc = kim_client_send (a, &msg, NULL, 0, &seq, &dup, 5000);
    KIM_CHECK (rc == -KIM_E_UNKNOWN_RECIPIENT);
    KIM_CHECK (strstr (kim_client_error (a), "UNKNOWN_RECIPIENT"));

    kim_test_referral (&msg, "jc.nowhere", "r-nowhere-2");
    snprintf (msg.msg_id, sizeof msg.msg_id, "async-reject");
    KIM_CHECK (kim_client_send_async (a, &msg, NULL, 0) == 0);
    kim_event_t event;
    s_expect (a, &event, KIM_EVENT_REJECT, 5000);
    KIM_CHECK (streq (event.msg_id, "async-reject"));
    KIM_CHECK (event.code == KIM_E_UNKNOWN_RECIPIENT);
    KIM_CHECK (streq (event.path, "hdr.recipient"));

    S_LOG ("send: invalid headers are refused locally");
    kim_msg_init (&msg);                            //  no type
    KIM_CHECK (kim_client_send_async (a, &msg, NULL, 0) < 0);
    kim_test_referral (&msg, "jc.rheine", "r-bad-id");
    snprintf (msg.msg_id, sizeof msg.msg_id, "bad id with spaces");
    KIM_CHECK (kim_client_send_async (a, &msg, NULL, 0) == -KIM_E_BAD_ID);
    KIM_CHECK (kim_client_pending (a) == 0);
    size_t too_big = kim_client_max_payload (a) + 1;
    uint8_t *big = (uint8_t *) calloc (1, too_big);
    kim_test_referral (&msg, "jc.rheine", "r-big");
    KIM_CHECK (kim_client_send_async (a, &msg, big, too_big) == -KIM_E_TOO_LARGE);
    free (big);

    S_LOG ("send: 1000 pipelined, every one receipted once, seqs distinct");
    const int count = 1000;
    zhashx_t *ids = zhashx_new ();
    for (int i = 0; i < count; i++) {
        char referral [KIM_ID_MAX + 1];
        snprintf (referral, sizeof referral, "r-pipe-%d", i);  //  each REFERRAL opens one
        kim_test_referral (&msg, "jc.rheine", referral);
        char payload [32];
        int size = snprintf (payload, sizeof payload, "payload %d", i);
        rc = kim_client_send_async (a, &msg, payload, (size_t) size);
        if (rc)
            fprintf (stderr, "send_async %d: %s\n", i, kim_client_error (a));
        KIM_CHECK (rc == 0);
        KIM_CHECK (zhashx_insert (ids, msg.msg_id, (void *) 1) == 0);
    }
    KIM_CHECK (kim_client_flush (a, 10000) == 0);
    KIM_CHECK (kim_client_pending (a) == 0);
    uint64_t last_seq = 0;
    int receipts = 0;
    while (kim_client_recv (a, &event, 0) == 0) {
        KIM_CHECK (event.type == KIM_EVENT_RECEIPT);
        KIM_CHECK (zhashx_lookup (ids, event.msg_id));
        zhashx_delete (ids, event.msg_id);
        KIM_CHECK (event.seq > last_seq);            //  one connection: log order
        last_seq = event.seq;
        receipts++;
    }
    KIM_CHECK (receipts == count);
    zhashx_destroy (&ids);
    kim_client_destroy (&a);

    S_LOG ("deliver: the recipient gets them in order with payloads, acks them");
    kim_client_t *b = kim_testbroker_client (broker, "jc.rheine", 64, false);
    KIM_CHECK (b);
    int delivered = 0;
    uint64_t previous = 0;
    while (delivered < count + 1) {
        s_expect (b, &event, KIM_EVENT_DELIVER, 5000);
        KIM_CHECK (event.seq > previous);
        previous = event.seq;
        KIM_CHECK (streq (event.msg.sender, "kim.rheine"));
        KIM_CHECK (event.msg.type == KIM_TYPE_REFERRAL);
        if (delivered == 0)
            KIM_CHECK (event.payload_size == 5 && memcmp (event.payload, "hello", 5) == 0);
        else {
            char expected [32];
            int size = snprintf (expected, sizeof expected, "payload %d", delivered - 1);
            KIM_CHECK (event.payload_size == (size_t) size);
            KIM_CHECK (memcmp (event.payload, expected, (size_t) size) == 0);
        }
        KIM_CHECK (kim_client_ack (b, event.seq) == 0);
        delivered++;
    }
    KIM_CHECK (kim_client_flush (b, 5000) == 0);
    s_expect_empty_mailbox (b);
    kim_status_t status;
    KIM_CHECK (kim_client_status (b, &status, 5000) == 0);
    KIM_CHECK (status.log_head >= (uint64_t) count + 1);
    KIM_CHECK (kim_client_recv (b, &event, 200) == -KIM_E_TIMEOUT);
    kim_client_destroy (&b);
}

static void
s_test_broker_crash (kim_testbroker_t *broker)
{
    S_LOG ("recovery: SIGKILL with 200 in flight; restart; nothing lost, no duplicates");
    kim_client_t *a = kim_testbroker_client (broker, "kim.rheine", 0, false);
    KIM_CHECK (a);
    const int count = 200;
    zhashx_t *ids = zhashx_new ();
    kim_msg_t msg;
    for (int i = 0; i < count; i++) {
        char referral [KIM_ID_MAX + 1];
        snprintf (referral, sizeof referral, "r-crash-%d", i);
        kim_test_referral (&msg, "jc.rheine", referral);
        KIM_CHECK (kim_client_send_async (a, &msg, "x", 1) == 0);
        zhashx_insert (ids, msg.msg_id, (void *) 1);
    }
    kim_testbroker_stop (broker, SIGKILL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    int answered = 0;
    kim_event_t event;
    while (answered < count) {
        s_expect (a, &event, KIM_EVENT_RECEIPT, 15000);
        KIM_CHECK (zhashx_lookup (ids, event.msg_id));
        zhashx_delete (ids, event.msg_id);
        answered++;
    }
    KIM_CHECK (kim_client_pending (a) == 0);
    KIM_CHECK (kim_client_reconnects (a) >= 1);
    S_LOG ("recovery: %" PRIu64 " reconnects", kim_client_reconnects (a));
    zhashx_destroy (&ids);
    kim_client_destroy (&a);

    //  The recipient sees each message once (the broker de-duplicated resends)
    kim_client_t *b = kim_testbroker_client (broker, "jc.rheine", 256, false);
    KIM_CHECK (b);
    int delivered = 0;
    while (kim_client_recv (b, &event, 1000) == 0) {
        KIM_CHECK (event.type == KIM_EVENT_DELIVER);
        KIM_CHECK (strncmp (event.msg.referral_id, "r-crash-", 8) == 0);
        kim_client_ack (b, event.seq);
        delivered++;
    }
    KIM_CHECK (delivered == count);
    kim_client_destroy (&b);
}

static void
s_test_idle_expiry (kim_testbroker_t *broker)
{
    S_LOG ("recovery: a client idle past 3 heartbeats sends again transparently");
    kim_client_t *a = kim_testbroker_client (broker, "kim.rheine", 0, false);
    KIM_CHECK (a);
    kim_msg_t msg;
    uint64_t seq;
    bool dup;
    //  Heartbeat is 200 ms in this broker: idle for well over 600 ms
    zclock_sleep (1200);
    kim_test_referral (&msg, "jc.rheine", "r-idle");
    KIM_CHECK (kim_client_send (a, &msg, NULL, 0, &seq, &dup, 10000) == 0);
    KIM_CHECK (kim_client_reconnects (a) == 1);

    S_LOG ("recovery: a client that keeps calling keeps its session");
    kim_event_t event;
    int64_t until = zclock_mono () + 1500;
    while (zclock_mono () < until)
        KIM_CHECK (kim_client_recv (a, &event, 100) == -KIM_E_TIMEOUT);
    KIM_CHECK (kim_client_reconnects (a) == 1);
    kim_client_destroy (&a);

    //  Drain jc.rheine for the next tests
    kim_client_t *b = kim_testbroker_client (broker, "jc.rheine", 64, false);
    KIM_CHECK (b);
    while (kim_client_recv (b, &event, 500) == 0)
        if (event.type == KIM_EVENT_DELIVER)
            kim_client_ack (b, event.seq);
    kim_client_flush (b, 2000);
    kim_client_destroy (&b);
}

static void
s_test_redelivery (kim_testbroker_t *broker)
{
    S_LOG ("deliver: unacked deliveries come again to the next session, same seq");
    kim_client_t *a = kim_testbroker_client (broker, "kim.rheine", 0, false);
    KIM_CHECK (a);
    kim_msg_t msg;
    uint64_t seqs [3];
    bool dup;
    for (int i = 0; i < 3; i++) {
        char referral [KIM_ID_MAX + 1];
        snprintf (referral, sizeof referral, "r-redeliver-%d", i);
        kim_test_referral (&msg, "jc.rheine", referral);
        KIM_CHECK (kim_client_send (a, &msg, NULL, 0, &seqs [i], &dup, 5000) == 0);
    }
    kim_client_destroy (&a);

    kim_client_t *b = kim_testbroker_client (broker, "jc.rheine", 8, false);
    KIM_CHECK (b);
    kim_event_t event;
    for (int i = 0; i < 3; i++) {
        s_expect (b, &event, KIM_EVENT_DELIVER, 5000);
        KIM_CHECK (event.seq == seqs [i]);
    }
    kim_client_destroy (&b);                        //  no acks

    b = kim_testbroker_client (broker, "jc.rheine", 8, false);
    KIM_CHECK (b);
    for (int i = 0; i < 3; i++) {
        s_expect (b, &event, KIM_EVENT_DELIVER, 5000);
        KIM_CHECK (event.seq == seqs [i]);
        kim_client_ack (b, event.seq);
    }
    KIM_CHECK (kim_client_flush (b, 5000) == 0);
    s_expect_empty_mailbox (b);
    kim_client_destroy (&b);
}

static void
s_test_certs (kim_testbroker_t *broker)
{
    S_LOG ("certs: secret files must be private; public file finds its secret");
    char dir [PATH_MAX], public_path [PATH_MAX + 32], secret_path [PATH_MAX + 40];
    snprintf (dir, sizeof dir, "%s/certs", kim_testbroker_dir (broker));
    KIM_CHECK (zsys_dir_create ("%s", dir) == 0);
    snprintf (public_path, sizeof public_path, "%s/org.cert", dir);
    snprintf (secret_path, sizeof secret_path, "%s/org.cert_secret", dir);
    zcert_t *cert = zcert_new ();
    KIM_CHECK (zcert_save (cert, public_path) == 0);

    char public_key [41], secret_key [41];
    KIM_CHECK (chmod (secret_path, 0644) == 0);
    char why [1024];
    KIM_CHECK (kim_client_load_cert_explain (secret_path, public_key, secret_key,
                                             why, sizeof why) == -KIM_E_KEY);
    KIM_CHECK (strstr (why, "chmod 600"));
    KIM_CHECK (chmod (secret_path, 0600) == 0);
    KIM_CHECK (kim_client_load_cert (secret_path, public_key, secret_key) == 0);
    KIM_CHECK (streq (public_key, zcert_public_txt (cert)));
    KIM_CHECK (streq (secret_key, zcert_secret_txt (cert)));
    memset (secret_key, 0, sizeof secret_key);
    KIM_CHECK (kim_client_load_cert (public_path, public_key, secret_key) == 0);
    KIM_CHECK (streq (secret_key, zcert_secret_txt (cert)));
    KIM_CHECK (kim_client_load_public_key (public_path, public_key) == 0);
    KIM_CHECK (streq (public_key, zcert_public_txt (cert)));

    //  A public certificate alone has no secret key
    KIM_CHECK (unlink (secret_path) == 0);
    KIM_CHECK (chmod (public_path, 0600) == 0);
    KIM_CHECK (kim_client_load_cert_explain (public_path, public_key, secret_key,
                                             why, sizeof why) == -KIM_E_KEY);
    KIM_CHECK (strstr (why, "secret-key"));
    KIM_CHECK (kim_client_load_cert (dir, public_key, secret_key) == -KIM_E_KEY);
    KIM_CHECK (kim_client_load_cert ("/nonexistent/x.cert_secret", public_key, secret_key)
               == -KIM_E_KEY);
    zcert_destroy (&cert);
}

int
main (int argc, char *argv [])
{
    verbose = argc > 1 && streq (argv [1], "-v");
    zsys_init ();
    zsys_set_logstream (verbose? stderr: NULL);
    const char *orgs [] = { "kim.rheine", "jc.rheine", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, "    heartbeat_ms = 200\n");
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    s_test_session (broker);
    s_test_send (broker);
    s_test_redelivery (broker);
    s_test_idle_expiry (broker);
    s_test_broker_crash (broker);
    s_test_certs (broker);

    kim_testbroker_destroy (&broker);
    printf ("test_client: OK\n");
    return 0;
}
