/*  test_trace.c — `kim audit trace` follows one message across brokers' logs.

    Three independent brokers stand for three districts. The same
    organisation (the same CURVE and signing keys at each broker) sends the
    same msg_id with the same payload bytes to brokers A and B, as a copy
    that a link forwarded from A to B would be logged at B: same header,
    same signature, same payload hash. At C it sends that msg_id with other
    payload bytes: a copy whose header differs. At A the recipient takes the
    referral (DELIVERED, a state record) and answers it (ACCEPT). Then the
    real `kim` binary must:
    - trace the message over A and B offline: both logs verify, both copies
      are shown with the DELIVERED notice, the ACCEPT and the state records,
      and the headers agree (exit 0); the same as one JSON document;
    - read B online as its auditor (broker name from its WELCOME);
    - name the differing fields (payload_hash, sig) when C is added (exit 1);
    - say when the msg_id is in no log (exit 1);
    - say which log does not verify when one is a tampered copy (exit 1);
    - refuse a trace without sources, one log given twice, or a broker read
      online without --sign-key (exit 2).
    Usage: test_trace PATH_TO_KIM
*/
#include <jansson.h>
#include <lmdb.h>

#include "kim/kim_log.h"
#include "kim_itest.h"

#define SENDER      "kim.a"
#define RECIPIENT   "jc.b"
#define AUDITOR     "dsb.nrw"
#define MSG_ID      "m-trace-1"
#define REFERRAL    "r-trace-1"

static const char *s_kim;
static uint64_t s_created_at;           //  one creation time for every copy

static void
s_expect (const char *what, const char *args, int code, const char *needles [])
{
    static char out [1 << 17];
    int got = s_itest_run (s_kim, args, out, sizeof out);
    bool ok = got == code;
    for (int i = 0; ok && needles [i]; i++)
        if (!strstr (out, needles [i])) {
            fprintf (stderr, "%s: '%s' missing\n", what, needles [i]);
            ok = false;
        }
    if (!ok) {
        fprintf (stderr, "%s: kim %s\nexited %d, expected %d:\n%s\n", what, args, got, code, out);
        exit (1);
    }
    printf ("--- %s (exit %d)\n%s", what, got, out);
}

//  A test broker that shares the keys of `keys_from`, killed at exit.
static kim_testbroker_t *
s_broker (const char *orgs [], const kim_testbroker_t *keys_from)
{
    const char *extra = "audit\n    checkpoint_records = 5\n    checkpoint_seconds = 1\n";
    kim_testbroker_t *broker = keys_from? kim_testbroker_new_sharing (orgs, extra, keys_from)
                                        : s_itest_broker (orgs, extra);
    KIM_CHECK (broker);
    if (keys_from) {
        for (int i = 0; i < ITEST_BROKERS_MAX; i++)
            if (!s_itest_brokers [i]) {
                s_itest_brokers [i] = broker;
                break;
            }
    }
    kim_testbroker_plaintext (broker, true);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    return broker;
}

//  The referral, the same header at every broker but for the payload.
static void
s_send_referral (kim_testbroker_t *broker, const char *payload)
{
    kim_client_t *client = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (client);
    kim_msg_t msg;
    kim_test_referral (&msg, RECIPIENT, REFERRAL);
    snprintf (msg.msg_id, sizeof msg.msg_id, MSG_ID);
    msg.created_at = s_created_at;
    uint64_t seq = 0;
    bool dup = false;
    ITEST_RC (kim_client_send (client, &msg, payload, strlen (payload), &seq, &dup, 10000), 0);
    //  Unrelated traffic around it
    for (int i = 0; i < 3; i++) {
        char referral [32], msg_id [32];
        snprintf (referral, sizeof referral, "r-other-%d", i);
        snprintf (msg_id, sizeof msg_id, "m-other-%d", i);
        ITEST_RC (s_itest_send (client, RECIPIENT, referral, msg_id, 16, NULL, NULL), 0);
    }
    kim_client_destroy (&client);
}

//  A copy of a stopped broker's data folder with one byte of the traced
//  message's record flipped. Returns the record's seq.
static uint64_t
s_tampered_copy (const char *data, const char *copy)
{
    char command [1024];
    snprintf (command, sizeof command, "cp -a '%s' '%s'", data, copy);
    KIM_CHECK (system (command) == 0);
    char why [512];
    kim_log_t *log = kim_log_open (copy, why, sizeof why);
    KIM_CHECK (log && kim_log_seek (log, 1, NULL) == 0);
    kim_log_record_t record;
    uint64_t target = 0;
    char msg_id [KIM_ID_MAX + 1];
    while (!target && kim_log_next (log, &record) == 1)
        if (record.kind == KIM_LOG_MESSAGE
        &&  kim_log_body_str (record.body, record.body_size, "msg_id", msg_id, sizeof msg_id)
        &&  streq (msg_id, MSG_ID))
            target = record.seq;
    kim_log_close (&log);
    KIM_CHECK (target);

    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    char path [600];
    snprintf (path, sizeof path, "%s/store", copy);
    KIM_CHECK (mdb_env_create (&env) == 0);
    KIM_CHECK (mdb_env_set_maxdbs (env, 32) == 0);
    KIM_CHECK (mdb_env_set_mapsize (env, 256u << 20) == 0);
    KIM_CHECK (mdb_env_open (env, path, 0, 0600) == 0);
    KIM_CHECK (mdb_txn_begin (env, NULL, 0, &txn) == 0);
    KIM_CHECK (mdb_dbi_open (txn, "log", 0, &dbi) == 0);
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, target);
    MDB_val key = { 8, key_bytes }, value;
    KIM_CHECK (mdb_get (txn, dbi, &key, &value) == 0);
    uint8_t *bytes = (uint8_t *) malloc (value.mv_size);
    KIM_CHECK (bytes);
    memcpy (bytes, value.mv_data, value.mv_size);
    bytes [value.mv_size - 3] ^= 0x20;
    MDB_val changed = { value.mv_size, bytes };
    KIM_CHECK (mdb_put (txn, dbi, &key, &changed, 0) == 0);
    KIM_CHECK (mdb_txn_commit (txn) == 0);
    mdb_env_close (env);
    free (bytes);
    return target;
}

int
main (int argc, char *argv [])
{
    KIM_CHECK (argc == 2);
    s_kim = argv [1];
    KIM_CHECK (sodium_init () >= 0);
    s_created_at = (uint64_t) zclock_time ();
    const char *orgs [] = { SENDER ":agency+sign", RECIPIENT, AUDITOR ":auditor", NULL };
    kim_testbroker_t *a = s_broker (orgs, NULL);
    kim_testbroker_t *b = s_broker (orgs, a);
    kim_testbroker_t *c = s_broker (orgs, a);
    s_send_referral (a, "sealed-bytes-of-the-referral");
    s_send_referral (b, "sealed-bytes-of-the-referral");
    s_send_referral (c, "sealed-bytes-of-another-one!");

    //  At A the recipient takes it (DELIVERED) and accepts it
    kim_client_t *recipient = kim_testbroker_client (a, RECIPIENT, 16, false);
    KIM_CHECK (recipient);
    kim_event_t event;
    bool seen = false;
    while (ITEST_DELIVER (recipient, &event, 2000) == 0) {
        seen |= streq (event.msg.msg_id, MSG_ID);
        ITEST_RC (kim_client_ack (recipient, event.seq), 0);
    }
    KIM_CHECK (seen);
    kim_msg_t answer;
    kim_msg_init (&answer);
    answer.type = KIM_TYPE_ACCEPT;
    snprintf (answer.msg_id, sizeof answer.msg_id, "m-trace-accept");
    snprintf (answer.recipient, sizeof answer.recipient, SENDER);
    snprintf (answer.referral_id, sizeof answer.referral_id, REFERRAL);
    snprintf (answer.ref_msg_id, sizeof answer.ref_msg_id, MSG_ID);
    uint64_t seq = 0;
    bool dup = false;
    ITEST_RC (kim_client_send (recipient, &answer, "", 0, &seq, &dup, 10000), 0);
    kim_client_destroy (&recipient);

    char data_a [300], data_b [300], data_c [300];
    snprintf (data_a, sizeof data_a, "%s/data", kim_testbroker_dir (a));
    snprintf (data_b, sizeof data_b, "%s/data", kim_testbroker_dir (b));
    snprintf (data_c, sizeof data_c, "%s/data", kim_testbroker_dir (c));
    s_itest_wait_sealed (data_a);
    s_itest_wait_sealed (data_b);
    s_itest_wait_sealed (data_c);

    //  A and B: the same message, both logs verify
    char args [3000];
    snprintf (args, sizeof args, "audit trace " MSG_ID " --data %s --name kreis-a --data %s "
              "--name kreis-b", data_a, data_b);
    const char *agree [] = { "kreis-a", "kreis-b", "verified: records 1..",
                             "REFERRAL " MSG_ID, "DELIVERED", "ACCEPT m-trace-accept",
                             "SENT -> DELIVERED", "DELIVERED -> ACCEPTED", SENDER " -> " RECIPIENT,
                             "OK: 2 copies of " MSG_ID " in 2 logs", NULL };
    s_expect ("two logs, one message", args, 0, agree);

    //  The same as JSON
    snprintf (args, sizeof args, "audit trace " MSG_ID " --json --data %s --name kreis-a "
              "--data %s --name kreis-b", data_a, data_b);
    static char out [1 << 17];
    ITEST_RC (s_itest_run (s_kim, args, out, sizeof out), 0);
    json_error_t error;
    json_t *root = json_loads (out, 0, &error);
    if (!root)
        fprintf (stderr, "not JSON (%s):\n%s\n", error.text, out);
    KIM_CHECK (root && json_is_true (json_object_get (root, "ok")));
    json_t *sources = json_object_get (root, "sources");
    KIM_CHECK (json_array_size (sources) == 2);
    for (size_t i = 0; i < 2; i++)
        KIM_CHECK (json_is_true (json_object_get (json_array_get (sources, i), "verified")));
    size_t messages = 0, notices = 0, answers = 0, states = 0, index;
    json_t *record;
    json_array_foreach (json_object_get (root, "records"), index, record) {
        const char *role = json_string_value (json_object_get (record, "role"));
        KIM_CHECK (role);
        messages += streq (role, "message");
        notices += streq (role, "notice");
        answers += streq (role, "answer");
        states += streq (role, "state");
        if (streq (role, "message"))
            KIM_CHECK (streq (json_string_value (json_object_get (
                json_object_get (record, "body"), "msg_id")), MSG_ID));
    }
    KIM_CHECK (messages == 2 && notices == 1 && answers == 1 && states >= 2);
    KIM_CHECK (json_array_size (json_object_get (root, "findings")) == 0);
    json_decref (root);

    //  B online, as its auditor: the name comes from the broker's WELCOME
    kim_client_config_t config = kim_testbroker_client_config (b, AUDITOR, 0, false);
    uint8_t public_bin [32], secret_bin [32];
    KIM_CHECK (zmq_z85_decode (public_bin, config.public_key)
               && zmq_z85_decode (secret_bin, config.secret_key));
    zcert_t *cert = zcert_new_from (public_bin, secret_bin);
    char cert_path [300];
    snprintf (cert_path, sizeof cert_path, "%s/auditor.cert", kim_testbroker_dir (b));
    KIM_CHECK (cert && zcert_save (cert, cert_path) == 0);
    zcert_destroy (&cert);
    snprintf (args, sizeof args, "audit trace " MSG_ID " --data %s --name kreis-a "
              "--endpoint %s --broker-key %s/keys/broker.cert --cert %s_secret "
              "--sign-key %s/" KIM_LOG_SIGN_PUBLIC, data_a, kim_testbroker_endpoint (b, false),
              data_b, cert_path, data_b);
    const char *online [] = { "kim.test", "OK: 2 copies", NULL };
    s_expect ("one log offline, one online", args, 0, online);
    //  Online without the broker's signing key: refused
    snprintf (args, sizeof args, "audit trace " MSG_ID " --endpoint %s --broker-key "
              "%s/keys/broker.cert --cert %s_secret", kim_testbroker_endpoint (b, false), data_b,
              cert_path);
    const char *no_key [] = { "needs --sign-key", NULL };
    s_expect ("online without --sign-key", args, 2, no_key);

    //  C logged the same msg_id and sender with another payload
    snprintf (args, sizeof args, "audit trace " MSG_ID " --data %s --name kreis-a --data %s "
              "--name kreis-b --data %s --name kreis-c", data_a, data_b, data_c);
    const char *differs [] = { "HEADER DIFFERS: " MSG_ID " from " SENDER ": kreis-a seq",
                               "and kreis-c seq", "payload_hash", "sig", NULL };
    s_expect ("a copy whose header differs", args, 1, differs);
    snprintf (args, sizeof args, "audit trace " MSG_ID " --json --data %s --data %s",
              data_a, data_c);
    const char *differs_json [] = { "\"finding\":\"header_differs\"", "\"ok\":false", NULL };
    s_expect ("a copy whose header differs, JSON", args, 1, differs_json);

    //  A msg_id in no log
    snprintf (args, sizeof args, "audit trace m-nowhere --data %s --data %s", data_a, data_b);
    const char *nowhere [] = { "the message is not in this log",
                               "NOT FOUND: m-nowhere is in none of the 2 logs", NULL };
    s_expect ("a message in no log", args, 1, nowhere);

    //  A tampered copy of A's log, next to B's
    KIM_CHECK (kim_testbroker_stop (a, SIGTERM) == 0);
    char copy [400], bad_seq [64];
    snprintf (copy, sizeof copy, "%s/tampered", kim_testbroker_dir (b));
    uint64_t target = s_tampered_copy (data_a, copy);
    snprintf (bad_seq, sizeof bad_seq, "FAILED at seq %" PRIu64 ": hash mismatch", target);
    snprintf (args, sizeof args, "audit trace " MSG_ID " --data %s --name kreis-a-copy "
              "--data %s --name kreis-b", copy, data_b);
    const char *tampered [] = { "LOG DOES NOT VERIFY", bad_seq, "kreis-a-copy", NULL };
    s_expect ("a tampered log", args, 1, tampered);

    //  Usage
    snprintf (args, sizeof args, "audit trace " MSG_ID " --data %s --data %s/", data_b, data_b);
    const char *twice [] = { "is given twice", NULL };
    s_expect ("one log given twice", args, 2, twice);
    const char *none [] = { "trace needs the logs to read", NULL };
    s_expect ("no sources", "audit trace " MSG_ID, 2, none);
    const char *help [] = { "trace MSG_ID", "--sender ORG", NULL };
    s_expect ("help", "audit --help", 0, help);

    printf ("test_trace: OK\n");
    return 0;
}
