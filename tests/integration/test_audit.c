/*  test_audit.c — the log proves itself.

    A real broker writes a real log: referrals, the life cycle's records and
    signed checkpoints (every 10 records or second). Then:
    - offline, the public log module and the real `kim audit verify` binary
      verify the chain and every signature;
    - an auditor replays online with QUERY: never more than `window`
      RECORDs ahead, the rest after a continuation, ending in QUERY_END;
      the records chain-verify, and the query's own AUDIT_READ record
      (who, which filter) is on the log before the first RECORD went out;
      `kim audit replay` does the same through the broker;
    - both verify the folder of a broker that is writing (a sender in a
      thread, a checkpoint every 10 records): a checkpoint saved after the
      reader's snapshot is read on to, never taken for a cut-off tail;
    - an agency's QUERY is refused (FORBIDDEN), the attempt is logged, and the
      broker still answers;
    - tampering with a copy of the stopped broker's LMDB file (flip a byte,
      delete a record, swap two, cut off the tail, forge a checkpoint with
      another key) is found at the right sequence number, by the module and
      by the binary.
    Usage: test_audit PATH_TO_KIM
*/
#include <lmdb.h>
#include <pthread.h>

#include "kim/kim_log.h"
#include "kim_itest.h"
#include "kim_rawsock.h"

#define SENDER      "kim.rheine"
#define RECIPIENT   "jc.rheine"
#define AUDITOR     "dsb.nrw"
#define MESSAGES    25

static const char *s_kim;               //  the kim binary

//  Receives one command; RECORD bodies are copied into `body` (64 KiB).
static int
s_recv (zsock_t *sock, kim_cmd_t *cmd, uint8_t *body, int timeout_ms)
{
    zmq_pollitem_t item = { zsock_resolve (sock), 0, ZMQ_POLLIN, 0 };
    if (zmq_poll (&item, 1, timeout_ms) != 1)
        return -1;
    zmsg_t *msg = zmsg_recv (sock);
    KIM_CHECK (msg);
    zframe_t *frame = zmsg_first (msg);
    kim_decode_error_t error = { 0, "" };
    KIM_CHECK (kim_cmd_decode (cmd, zframe_data (frame), zframe_size (frame), &error) == 0);
    if (cmd->id == KIM_CMD_RECORD) {
        KIM_CHECK (cmd->body_size <= KIM_FRAME_MAX);
        memcpy (body, cmd->body, cmd->body_size);
        cmd->body = body;
    }
    zmsg_destroy (&msg);
    return 0;
}

//  --------------------------------------------------------------------------
//  Verifying the folder of a broker that writes

typedef struct {
    kim_testbroker_t *broker;
    volatile int stop;
    int sent;
} s_traffic_t;

static void *
s_traffic (void *arg)
{
    s_traffic_t *traffic = (s_traffic_t *) arg;
    kim_client_t *client = kim_testbroker_client (traffic->broker, SENDER, 0, false);
    KIM_CHECK (client);
    while (!__atomic_load_n (&traffic->stop, __ATOMIC_ACQUIRE)) {
        char referral [32], msg_id [32];
        snprintf (referral, sizeof referral, "ref-live-%d", traffic->sent);
        snprintf (msg_id, sizeof msg_id, "msg-live-%d", traffic->sent);
        ITEST_RC (s_itest_send (client, RECIPIENT, referral, msg_id, 100, NULL, NULL), 0);
        traffic->sent++;
    }
    kim_client_destroy (&client);
    return NULL;
}

//  The broker saves audit.checkpoint once the records it covers are
//  committed, so a reader whose snapshot ended before that commit finds a
//  checkpoint past its last record. Both readers must read on to it.
static void
s_verify_live (kim_testbroker_t *broker, const char *data, const uint8_t *public_key)
{
    s_traffic_t traffic = { broker, 0, 0 };
    pthread_t thread;
    KIM_CHECK (pthread_create (&thread, NULL, s_traffic, &traffic) == 0);
    uint64_t read_on = 0;
    int64_t until = s_itest_now () + 3000;
    int round = 0;
    for (; round < 20 || s_itest_now () < until; round++) {
        kim_log_verify_t result;
        int rc = kim_log_verify_store (data, public_key, &result);
        if (rc) {
            fprintf (stderr, "verifying a live folder, round %d: %s\n", round, result.why);
            exit (1);
        }
        if (round % 6 == 0) {
            char args [1024], out [1 << 16];
            snprintf (args, sizeof args, "audit verify --data %s", data);
            int code = s_itest_run (s_kim, args, out, sizeof out);
            if (code != 0 || strncmp (out, "OK: records 1..", 15) != 0) {
                fprintf (stderr, "kim audit verify of a live folder exited %d:\n%s\n", code,
                         out);
                exit (1);
            }
        }
        read_on = result.last;
    }
    __atomic_store_n (&traffic.stop, 1, __ATOMIC_RELEASE);
    KIM_CHECK (pthread_join (thread, NULL) == 0);
    KIM_CHECK (traffic.sent > 0 && read_on > 0);
    printf ("live: %d verifications while %d messages came in, the last to seq %" PRIu64 "\n",
            round, traffic.sent, read_on);
}

//  --------------------------------------------------------------------------
//  Tampering with a copy of the store

typedef struct {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
} s_lmdb_t;

//  Copies <src>/store and the files beside it to a fresh data folder.
static void
s_copy_data (const char *src, const char *dest)
{
    char path [512];
    KIM_CHECK (zsys_dir_create ("%s/store", dest) == 0);
    KIM_CHECK (zsys_dir_create ("%s/keys", dest) == 0);
    MDB_env *env;
    KIM_CHECK (mdb_env_create (&env) == 0);
    KIM_CHECK (mdb_env_set_maxdbs (env, 32) == 0);
    snprintf (path, sizeof path, "%s/store", src);
    KIM_CHECK (mdb_env_open (env, path, MDB_RDONLY, 0600) == 0);
    snprintf (path, sizeof path, "%s/store", dest);
    KIM_CHECK (mdb_env_copy (env, path) == 0);
    mdb_env_close (env);
    const char *files [] = { KIM_LOG_SIGN_PUBLIC, KIM_LOG_CHECKPOINT_FILE };
    for (int i = 0; i < 2; i++) {
        char from [512];
        snprintf (from, sizeof from, "%s/%s", src, files [i]);
        snprintf (path, sizeof path, "%s/%s", dest, files [i]);
        zfile_t *file = zfile_new (NULL, from);
        KIM_CHECK (file && zfile_input (file) == 0);
        zchunk_t *chunk = zfile_read (file, 4096, 0);
        FILE *out = fopen (path, "w");
        KIM_CHECK (chunk && out);
        KIM_CHECK (fwrite (zchunk_data (chunk), 1, zchunk_size (chunk), out) == zchunk_size (chunk));
        fclose (out);
        zchunk_destroy (&chunk);
        zfile_destroy (&file);
    }
}

static void
s_lmdb_open (s_lmdb_t *self, const char *data)
{
    char path [512];
    snprintf (path, sizeof path, "%s/store", data);
    KIM_CHECK (mdb_env_create (&self->env) == 0);
    KIM_CHECK (mdb_env_set_maxdbs (self->env, 32) == 0);
    KIM_CHECK (mdb_env_set_mapsize (self->env, 256u << 20) == 0);
    KIM_CHECK (mdb_env_open (self->env, path, 0, 0600) == 0);
    KIM_CHECK (mdb_txn_begin (self->env, NULL, 0, &self->txn) == 0);
    KIM_CHECK (mdb_dbi_open (self->txn, "log", 0, &self->dbi) == 0);
}

static void
s_lmdb_close (s_lmdb_t *self)
{
    KIM_CHECK (mdb_txn_commit (self->txn) == 0);
    mdb_env_close (self->env);
}

static void
s_key (uint64_t seq, uint8_t bytes [8], MDB_val *key)
{
    for (int i = 7; i >= 0; i--, seq >>= 8)
        bytes [i] = (uint8_t) seq;
    key->mv_size = 8;
    key->mv_data = bytes;
}

//  Record `seq`'s value, copied (size in *size).
static uint8_t *
s_get (s_lmdb_t *self, uint64_t seq, size_t *size)
{
    uint8_t bytes [8];
    MDB_val key, value;
    s_key (seq, bytes, &key);
    KIM_CHECK (mdb_get (self->txn, self->dbi, &key, &value) == 0);
    uint8_t *copy = (uint8_t *) malloc (value.mv_size);
    KIM_CHECK (copy);
    memcpy (copy, value.mv_data, value.mv_size);
    *size = value.mv_size;
    return copy;
}

static void
s_put (s_lmdb_t *self, uint64_t seq, const uint8_t *data, size_t size)
{
    uint8_t bytes [8];
    MDB_val key, value = { size, (void *) data };
    s_key (seq, bytes, &key);
    KIM_CHECK (mdb_put (self->txn, self->dbi, &key, &value, 0) == 0);
}

static void
s_del (s_lmdb_t *self, uint64_t seq)
{
    uint8_t bytes [8];
    MDB_val key;
    s_key (seq, bytes, &key);
    KIM_CHECK (mdb_del (self->txn, self->dbi, &key, NULL) == 0);
}

//  Verifies a tampered copy with the module and the binary: both must
//  name `bad_seq`, and `why` must be in the module's explanation.
static void
s_expect_tamper (const char *what, const char *data, uint64_t bad_seq, const char *why)
{
    char path [512], why_key [512];
    snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, data);
    uint8_t public_key [32];
    KIM_CHECK (kim_log_load_public_key (path, public_key, why_key, sizeof why_key) == 0);
    kim_log_verify_t result;
    int rc = kim_log_verify_store (data, public_key, &result);
    if (rc != -KIM_E_VERIFY_FAILED || result.bad_seq != bad_seq || !strstr (result.why, why)) {
        fprintf (stderr, "%s: expected failure at seq %" PRIu64 " (%s); got rc=%s seq %" PRIu64
                 ": %s\n", what, bad_seq, why, kim_errname (rc), result.bad_seq, result.why);
        exit (1);
    }
    char args [600], out [8192], expected [64];
    snprintf (args, sizeof args, "audit verify --data %s", data);
    int code = s_itest_run (s_kim, args, out, sizeof out);
    snprintf (expected, sizeof expected, "FAILED at seq %" PRIu64 ":", bad_seq);
    if (code != 1 || !strstr (out, expected)) {
        fprintf (stderr, "%s: kim audit verify exited %d, expected 1 and '%s':\n%s\n", what,
                 code, expected, out);
        exit (1);
    }
    printf ("tamper %-28s found: %s", what, out);
}

static void
s_tamper_tests (const char *data, uint64_t head)
{
    char dir [] = "/tmp/kim-tamper-XXXXXX";
    KIM_CHECK (mkdtemp (dir));
    char copy [600];
    s_lmdb_t db;
    size_t size, size2;

    //  Find a message record and a checkpoint in the middle of the log
    char why [512];
    kim_log_t *log = kim_log_open (data, why, sizeof why);
    KIM_CHECK (log && kim_log_seek (log, 1, NULL) == 0);
    kim_log_record_t record;
    uint64_t message = 0, checkpoint = 0;
    while (kim_log_next (log, &record) == 1) {
        if (record.kind == KIM_LOG_MESSAGE && !message && record.seq > 3)
            message = record.seq;
        if (record.kind == KIM_LOG_CHECKPOINT && !checkpoint && record.seq > message && message)
            checkpoint = record.seq;
    }
    kim_log_close (&log);
    KIM_CHECK (message && checkpoint && checkpoint < head);

    //  1. A flipped byte inside a record's body
    snprintf (copy, sizeof copy, "%s/flip", dir);
    s_copy_data (data, copy);
    s_lmdb_open (&db, copy);
    uint8_t *value = s_get (&db, message, &size);
    value [size - 3] ^= 0x20;
    s_put (&db, message, value, size);
    free (value);
    s_lmdb_close (&db);
    s_expect_tamper ("flip a byte", copy, message, "hash mismatch");

    //  2. A deleted record
    snprintf (copy, sizeof copy, "%s/delete", dir);
    s_copy_data (data, copy);
    s_lmdb_open (&db, copy);
    s_del (&db, message + 1);
    s_lmdb_close (&db);
    s_expect_tamper ("delete a record", copy, message + 1, "missing");

    //  3. Two records swapped
    snprintf (copy, sizeof copy, "%s/swap", dir);
    s_copy_data (data, copy);
    s_lmdb_open (&db, copy);
    value = s_get (&db, message, &size);
    uint8_t *value2 = s_get (&db, message + 1, &size2);
    s_put (&db, message, value2, size2);
    s_put (&db, message + 1, value, size);
    free (value);
    free (value2);
    s_lmdb_close (&db);
    s_expect_tamper ("swap two records", copy, message, "hash mismatch");

    //  4. The tail cut off, the last checkpoint with it
    snprintf (copy, sizeof copy, "%s/truncate", dir);
    s_copy_data (data, copy);
    s_lmdb_open (&db, copy);
    for (uint64_t seq = head - 4; seq <= head; seq++)
        s_del (&db, seq);
    s_lmdb_close (&db);
    s_expect_tamper ("truncate the tail", copy, head - 4, "cut off");

    //  5. A checkpoint forged with another key, the chain recomputed after
    //     it so that only the signature can tell
    snprintf (copy, sizeof copy, "%s/forge", dir);
    s_copy_data (data, copy);
    s_lmdb_open (&db, copy);
    uint8_t pk [32], sk [64];
    crypto_sign_keypair (pk, sk);
    value = s_get (&db, checkpoint - 1, &size);
    uint8_t prev [KIM_HASH_SIZE];
    memcpy (prev, value + 10, KIM_HASH_SIZE);
    free (value);
    for (uint64_t seq = checkpoint; seq <= head; seq++) {
        value = s_get (&db, seq, &size);
        kim_log_record_t rec;
        KIM_CHECK (kim_log_record_parse (seq, value, size, &rec) == 0);
        uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
        if (seq == checkpoint) {
            kim_log_checkpoint_t forged;
            KIM_CHECK (kim_log_checkpoint_decode (&forged, rec.body, rec.body_size) == 0);
            kim_log_checkpoint_sign (&forged, sk);
            kim_log_checkpoint_encode (&forged, body);
            rec.body = body;
        }
        uint8_t hash [KIM_HASH_SIZE];
        kim_log_record_hash (prev, rec.kind, seq, rec.time_ms, rec.body, rec.body_size, hash);
        uint8_t *rewritten = (uint8_t *) malloc (size);
        KIM_CHECK (rewritten);
        kim_log_record_put (rewritten, rec.kind, rec.time_ms, hash, rec.body, rec.body_size);
        s_put (&db, seq, rewritten, size);
        memcpy (prev, hash, KIM_HASH_SIZE);
        free (rewritten);
        free (value);
    }
    s_lmdb_close (&db);
    s_expect_tamper ("forge a checkpoint", copy, checkpoint, "not by the broker's key");

    char command [700];
    snprintf (command, sizeof command, "rm -rf %s", dir);
    KIM_CHECK (system (command) == 0);
}

//  --------------------------------------------------------------------------

int
main (int argc, char *argv [])
{
    KIM_CHECK (argc == 2);
    s_kim = argv [1];
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { SENDER, RECIPIENT, AUDITOR ":auditor", NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs,
        "audit\n    checkpoint_records = 10\n    checkpoint_seconds = 1\n");
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    char data [256];
    snprintf (data, sizeof data, "%s/data", kim_testbroker_dir (broker));

    kim_client_t *sender = kim_testbroker_client (broker, SENDER, 0, false);
    KIM_CHECK (sender);
    uint64_t head = 0;
    for (int i = 0; i < MESSAGES; i++) {
        //  Sealed half way, so that a checkpoint stands in the middle
        if (i == MESSAGES / 2)
            head = s_itest_wait_sealed (data);
        char referral [32], msg_id [32];
        snprintf (referral, sizeof referral, "ref-audit-%d", i);
        snprintf (msg_id, sizeof msg_id, "msg-audit-%d", i);
        ITEST_RC (s_itest_send (sender, RECIPIENT, referral, msg_id, 100, NULL, NULL), 0);
    }
    KIM_CHECK (s_itest_wait_sealed (data) > head);
    head = s_itest_wait_sealed (data);
    KIM_CHECK (head > MESSAGES);

    //  Offline: the module and the binary verify, while the broker runs
    kim_log_verify_t result;
    char path [300], why [512];
    snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, data);
    uint8_t public_key [32];
    KIM_CHECK (kim_log_load_public_key (path, public_key, why, sizeof why) == 0);
    ITEST_RC (kim_log_verify_store (data, public_key, &result), 0);
    KIM_CHECK (result.last >= head && result.checkpoints >= 2 && result.sealed >= head - 1);
    char args [1024], out [1 << 16];
    snprintf (args, sizeof args, "audit verify --data %s", data);
    int code = s_itest_run (s_kim, args, out, sizeof out);
    if (code != 0 || strncmp (out, "OK: records 1..", 15) != 0) {
        fprintf (stderr, "kim audit verify exited %d:\n%s\n", code, out);
        exit (1);
    }
    printf ("offline: %s", out);

    //  An agency may not read the log
    zsock_t *agency = s_raw_new (broker, RECIPIENT, NULL, NULL);
    s_raw_hello (agency, RECIPIENT, 0);
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    uint8_t *body = (uint8_t *) malloc (KIM_FRAME_MAX);
    KIM_CHECK (cmd && body);
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-agency");
    cmd->window = 10;
    s_raw_send_cmd (agency, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (agency, KIM_E_FORBIDDEN, "q-agency", NULL);
    s_raw_ping (agency);
    zsock_destroy (&agency);

    //  An auditor replays online: window 4, then a continuation
    zsock_t *auditor = s_raw_new (broker, AUDITOR, NULL, NULL);
    s_raw_hello (auditor, AUDITOR, 0);
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-1");
    cmd->window = 4;
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    kim_log_verify_t online;
    kim_log_verify_init (&online, public_key, 1, NULL);
    uint64_t received = 0, audit_read_seq = 0;
    for (; received < 4; received++) {
        KIM_CHECK (s_recv (auditor, cmd, body, 5000) == 0);
        KIM_CHECK (cmd->id == KIM_CMD_RECORD && streq (cmd->query_id, "q-1"));
        kim_log_record_t record = { cmd->seq, cmd->time, (uint8_t) cmd->kind, { 0 },
                                    cmd->body, cmd->body_size };
        memcpy (record.hash, cmd->hash, KIM_HASH_SIZE);
        ITEST_RC (kim_log_verify_step (&online, &record), 0);
    }
    //  The window is used up: nothing more comes until we grant credit
    KIM_CHECK (s_recv (auditor, cmd, body, 300) == -1);
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-1");
    cmd->window = 1000;
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    while (true) {
        KIM_CHECK (s_recv (auditor, cmd, body, 5000) == 0);
        if (cmd->id == KIM_CMD_QUERY_END) {
            KIM_CHECK (streq (cmd->query_id, "q-1") && cmd->code == 0 && cmd->count == received);
            break;
        }
        KIM_CHECK (cmd->id == KIM_CMD_RECORD);
        kim_log_record_t record = { cmd->seq, cmd->time, (uint8_t) cmd->kind, { 0 },
                                    cmd->body, cmd->body_size };
        memcpy (record.hash, cmd->hash, KIM_HASH_SIZE);
        ITEST_RC (kim_log_verify_step (&online, &record), 0);
        received++;
        char refused [KIM_CODE_MAX + 1];
        if (record.kind == KIM_LOG_AUDIT_READ
        &&  kim_log_body_str (record.body, record.body_size, "refused", refused, sizeof refused)) {
            //  The agency's refused attempt is on the record too
            char reader [KIM_ORG_MAX + 1];
            KIM_CHECK (streq (refused, "FORBIDDEN")
                    && kim_log_body_str (record.body, record.body_size, "reader", reader,
                                         sizeof reader) && streq (reader, RECIPIENT));
        }
        else
        if (record.kind == KIM_LOG_AUDIT_READ) {
            char reader [KIM_ORG_MAX + 1], query_id [KIM_ID_MAX + 1];
            KIM_CHECK (kim_log_body_str (record.body, record.body_size, "reader", reader,
                                         sizeof reader) && streq (reader, AUDITOR));
            KIM_CHECK (kim_log_body_str (record.body, record.body_size, "query_id", query_id,
                                         sizeof query_id) && streq (query_id, "q-1"));
            audit_read_seq = record.seq;
        }
    }
    //  The query's own read was logged before its first RECORD: it is the
    //  last record the query returns
    KIM_CHECK (audit_read_seq > head && audit_read_seq == online.last);
    KIM_CHECK (received == online.last && online.checkpoints >= 2);

    //  A filtered query: only one case's records; the read names the filter
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-2");
    snprintf (cmd->case_id, sizeof cmd->case_id, "case-ref-audit-3");
    cmd->window = 100;
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    uint64_t case_records = 0;
    while (true) {
        KIM_CHECK (s_recv (auditor, cmd, body, 5000) == 0);
        if (cmd->id == KIM_CMD_QUERY_END)
            break;
        KIM_CHECK (cmd->id == KIM_CMD_RECORD);
        char case_id [KIM_ID_MAX + 1];
        KIM_CHECK (kim_log_body_str (cmd->body, cmd->body_size, "case_id", case_id,
                                     sizeof case_id) && streq (case_id, "case-ref-audit-3"));
        case_records++;
    }
    KIM_CHECK (case_records >= 2);      //  the message and its AUDIT_READ, at least
    //  A continuation that carries filters is refused
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-3");
    cmd->window = 1;
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    KIM_CHECK (s_recv (auditor, cmd, body, 5000) == 0 && cmd->id == KIM_CMD_RECORD);
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    snprintf (cmd->query_id, sizeof cmd->query_id, "q-3");
    snprintf (cmd->org, sizeof cmd->org, SENDER);
    cmd->window = 1;
    s_raw_send_cmd (auditor, cmd, NULL, 0, 0);
    RAW_EXPECT_REJECT (auditor, KIM_E_BAD_VALUE, "q-3", NULL);
    s_raw_ping (auditor);
    zsock_destroy (&auditor);

    //  The reads are on the log, offline too
    snprintf (args, sizeof args, "audit replay --data %s --type audit_read", data);
    ITEST_RC (s_itest_run (s_kim, args, out, sizeof out), 0);
    KIM_CHECK (strstr (out, "\"reader\":\"" AUDITOR "\",\"query_id\":\"q-1\",\"window\":4"));
    KIM_CHECK (strstr (out, "\"query_id\":\"q-2\",\"case_id\":\"case-ref-audit-3\""));
    KIM_CHECK (strstr (out, "\"reader\":\"" RECIPIENT "\",\"query_id\":\"q-agency\",\"window\":10,"
                            "\"refused\":\"FORBIDDEN\""));

    //  `kim audit replay` online, as the auditor, with a small window
    kim_client_config_t config = kim_testbroker_client_config (broker, AUDITOR, 0, false);
    uint8_t public_bin [32], secret_bin [32];
    KIM_CHECK (zmq_z85_decode (public_bin, config.public_key)
               && zmq_z85_decode (secret_bin, config.secret_key));
    zcert_t *cert = zcert_new_from (public_bin, secret_bin);
    char cert_path [300];
    snprintf (cert_path, sizeof cert_path, "%s/auditor.cert", kim_testbroker_dir (broker));
    KIM_CHECK (cert && zcert_save (cert, cert_path) == 0);
    zcert_destroy (&cert);
    snprintf (args, sizeof args, "audit replay --cert %s_secret --broker-key %s/keys/broker.cert "
              "--endpoint %s --window 3 --org " SENDER " --type REFERRAL", cert_path, data,
              kim_testbroker_endpoint (broker, false));
    code = s_itest_run (s_kim, args, out, sizeof out);
    size_t lines = 0;
    for (const char *line = out; (line = strstr (line, "\"type\":\"REFERRAL\"")); line++)
        lines++;
    if (code != 0 || lines != MESSAGES) {
        fprintf (stderr, "online replay exited %d with %zu REFERRALs:\n%s\n", code, lines, out);
        exit (1);
    }
    snprintf (args, sizeof args, "audit verify --cert %s_secret --broker-key %s/keys/broker.cert "
              "--endpoint %s --sign-key %s/" KIM_LOG_SIGN_PUBLIC, cert_path, data,
              kim_testbroker_endpoint (broker, false), data);
    code = s_itest_run (s_kim, args, out, sizeof out);
    if (code != 0 || strncmp (out, "OK: records 1..", 15) != 0) {
        fprintf (stderr, "online verify exited %d:\n%s\n", code, out);
        exit (1);
    }
    printf ("online: %s", out);

    //  Export and verify the export; the case timeline
    char export_path [300];
    snprintf (export_path, sizeof export_path, "%s/export.jsonl", kim_testbroker_dir (broker));
    snprintf (args, sizeof args, "audit export --data %s > %s", data, export_path);
    ITEST_RC (s_itest_run (s_kim, args, out, sizeof out), 0);
    snprintf (args, sizeof args, "audit verify --from-export %s --sign-key %s/" KIM_LOG_SIGN_PUBLIC,
              export_path, data);
    code = s_itest_run (s_kim, args, out, sizeof out);
    if (code != 0 || strncmp (out, "OK: records 1..", 15) != 0) {
        fprintf (stderr, "verify --from-export exited %d:\n%s\n", code, out);
        exit (1);
    }
    snprintf (args, sizeof args, "audit case case-ref-audit-7 --data %s", data);
    ITEST_RC (s_itest_run (s_kim, args, out, sizeof out), 0);
    printf ("%s", out);
    KIM_CHECK (strstr (out, SENDER) && strstr (out, "REFERRAL to " RECIPIENT));

    kim_client_destroy (&sender);
    s_verify_live (broker, data, public_key);
    //  Tampering, on copies of the stopped broker's store
    head = s_itest_wait_sealed (data);
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);
    KIM_CHECK (s_itest_wait_sealed (data) == head);
    s_tamper_tests (data, head);

    free (cmd);
    free (body);
    s_itest_broker_destroy (&broker);
    printf ("test_audit: OK\n");
    return 0;
}
