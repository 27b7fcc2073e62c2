/*  kim_cmd_audit.c — `kim audit`: verify, replay, export and read a case's
    timeline from the broker's log.

    Offline (--data DIR) it reads the broker's LMDB store read-only through
    the public log module (include/kim/kim_log.h), which is safe while the
    broker runs. Online (an auditor's --cert) it streams the log through the
    broker with QUERY, granting credit as it consumes RECORDs, so a replay
    of millions of records holds a window's worth in memory at most; the
    broker logs every such read. Both paths feed the same record callback,
    so verify/replay/export/case behave the same whichever the source.

    Output is hand-written JSON into one buffer flushed in large writes: a
    replay is meant to run at millions of records per second.
*/
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <czmq.h>
#include <jansson.h>
#include <sodium.h>

#include "kim/kim_log.h"
#include "kim_cli.h"

#define S_FLUSH_AT      (1u << 20)
#define S_WINDOW        1000

const char kim_cmd_audit_usage [] =
    "Usage: kim audit verify|replay|export|case [ID] [options]\n"
    "       kim audit trace MSG_ID SOURCE... [--sender ORG] [--json]\n"
    "\n"
    "Reads the broker's log offline (--data DIR: the broker's data folder, read-only,\n"
    "safe while the broker runs) or online through the broker (--cert of an organisation\n"
    "with the auditor role; every online read is itself logged by the broker).\n"
    "\n"
    "  verify        recompute the hash chain and check every checkpoint signature\n"
    "                against the broker's public signing key; prints the verified range,\n"
    "                or the first bad sequence number and what is wrong (exit 1)\n"
    "  replay        records as JSON lines: {\"seq\",\"time\",\"kind\",\"body\"}\n"
    "  export        JSON lines with each record's hash and raw body, plus the broker's\n"
    "                latest checkpoint: an archive that `verify --from-export` checks\n"
    "  case ID       the timeline of one case as a table: when, seq, who, what, state\n"
    "  trace MSG_ID  follow one message across several brokers' logs (federation): each\n"
    "                log is verified in full, then per broker, in the order the message\n"
    "                reached them, the records that concern it: the message, its policy\n"
    "                decision, its state records, answers, notices. Says when a log does\n"
    "                not verify, when the message is in no log, and when two logged copies\n"
    "                from the same sender differ in their header (payload hash, signature,\n"
    "                ...; `rule` is each broker's own). Exit 1 on any such finding\n"
    "\n"
    "Sources of trace, one per broker, as many as needed (at most 64):\n"
    "  --data DIR          a broker's data folder (offline; key: DIR/keys/broker.sign.pub)\n"
    "  --endpoint URL      a live broker, read as auditor with --cert (and --broker-key)\n"
    "  The options --broker-key, --cert, --timeout, --sign-key and --name after a source\n"
    "  belong to it; before the first source they hold for all.\n"
    "  --sign-key FILE     the broker's public signing key (required online); again for\n"
    "                      each key of a broker whose signing key was replaced\n"
    "  --name NAME         the broker's name as printed (default: its WELCOME online, the\n"
    "                      folder's name offline)\n"
    "  --sender ORG        only the message with this msg_id from this sender\n"
    "  --json              one JSON document: sources, records, findings, ok\n"
    "\n"
    "Options:\n"
    "  --data DIR          read the log from the broker's data folder (offline)\n"
    "  --sign-key FILE     the broker's public signing key (default DIR/keys/broker.sign.pub\n"
    "                      offline, " KIM_DEFAULT_KEY_DIR "/broker.sign.pub online); verify\n"
    "                      takes it up to 8 times: every key the broker signed with\n"
    "  --from-export FILE  verify: check an export instead of a store ('-': stdin)\n"
    "  --from SEQ --to SEQ sequence range, inclusive\n"
    "  --since T --until T time range, inclusive: ms since the epoch, YYYY-MM-DD or\n"
    "                      YYYY-MM-DDTHH:MM:SSZ (UTC)\n"
    "  --case ID           only records of this case\n"
    "  --org ORG           only records this organisation sent, received or read\n"
    "  --type NAME         a message type (REFERRAL, ...) or a record kind (message,\n"
    "                      checkpoint, decision, audit_read, purge, state)\n"
    "  --window N          online: RECORDs in flight (1..4096, default 1000)\n"
    "\n"
    "Examples:\n"
    "  kim audit verify --data ./kim-data\n"
    "  kim audit replay --data ./kim-data --case C-1 --since 2026-01-01\n"
    "  kim audit export --cert ./keys/dsb.nrw.cert_secret > log.jsonl\n"
    "  kim audit verify --from-export log.jsonl --sign-key broker.sign.pub\n"
    "  kim audit trace m-4711 --data /srv/steinfurt/kim-data --name kreis-steinfurt \\\n"
    "      --endpoint tcp://10.1.2.3:7470 --broker-key coesfeld.cert --sign-key \\\n"
    "      coesfeld.sign.pub --cert dsb.nrw.cert_secret\n";

typedef struct {
    const char *cmd;
    const char *action;
    const char *case_id;
    const char *data;
    const char *sign_key;               //  the first --sign-key
    const char *sign_keys [KIM_LOG_VERIFY_KEYS];
    size_t sign_key_count;
    const char *from_export;
    kim_cli_conn_t conn;
    kim_log_filter_t filter;
    uint32_t window;
    kim_buf_t out;
    bool out_failed;
    //  Outcome of a source: the checkpoint held outside the log, if any
    bool have_outside;
    kim_log_checkpoint_t outside;
    uint8_t outside_hash [KIM_HASH_SIZE];
    bool have_outside_hash;
    //  An export: the first record whose `body` is not what its `raw` says
    uint64_t body_differs;
    //  Online: the broker's name from its WELCOME
    char welcome_broker [KIM_ORG_MAX + 1];
    //  `trace`: the message followed and the logs it is looked for in
    struct _s_trace_t *trace;
} s_audit_t;

typedef int (s_record_fn) (s_audit_t *self, const kim_log_record_t *record);


//  --------------------------------------------------------------------------
//  Output

static void
s_flush (s_audit_t *self)
{
    if (self->out.size && fwrite (self->out.data, 1, self->out.size, stdout) != self->out.size)
        self->out_failed = true;
    kim_buf_reset (&self->out);
}

static int
s_emit (s_audit_t *self, const char *format, ...) __attribute__ ((format (printf, 2, 3)));

static int
s_emit (s_audit_t *self, const char *format, ...)
{
    char line [1024];
    va_list args;
    va_start (args, format);
    int len = vsnprintf (line, sizeof line, format, args);
    va_end (args);
    if (len < 0)
        return -1;
    if ((size_t) len >= sizeof line)
        len = sizeof line - 1;
    return kim_buf_append (&self->out, line, (size_t) len);
}


//  --------------------------------------------------------------------------
//  Sources: the store, the broker, an export

static int
s_each_offline (s_audit_t *self, s_record_fn *fn)
{
    char why [512];
    kim_log_t *log = kim_log_open (self->data, why, sizeof why);
    if (!log)
        return kim_cli_error (self->cmd, "%s", why);
    uint64_t head = 0;
    int rc = kim_log_seek (log, self->filter.from_seq? self->filter.from_seq: 1, &head);
    kim_log_record_t record;
    int stop = 0;
    while (rc == 0 && stop == 0) {
        int more = kim_log_next (log, &record);
        if (more == 0)
            break;
        if (more < 0) {
            //  A malformed record is something to report, not to skip
            record.kind = 0;
            record.body = NULL;
            record.body_size = 0;
            memset (record.hash, 0, sizeof record.hash);
        }
        if (self->filter.to_seq && record.seq > self->filter.to_seq)
            break;
        if (more < 0 || kim_log_filter_match (&self->filter, &record))
            stop = fn (self, &record);
    }
    if (rc)
        kim_cli_error (self->cmd, "%s: cannot read the log: %s", self->data, kim_strerror (rc));
    //  The broker's latest checkpoint, kept outside the log
    char path [4200];
    snprintf (path, sizeof path, "%s/" KIM_LOG_CHECKPOINT_FILE, self->data);
    self->have_outside = rc == 0 && stop == 0
                      && kim_log_load_checkpoint_file (path, &self->outside) == 0;
    if (self->have_outside && kim_log_get (log, self->outside.seq, &record) == 0) {
        memcpy (self->outside_hash, record.hash, KIM_HASH_SIZE);
        self->have_outside_hash = true;
    }
    kim_log_close (&log);
    return rc? KIM_EXIT_USAGE: stop > 0? stop: 0;
}

static int
s_send (zsock_t *sock, const kim_cmd_t *cmd)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = kim_cmd_encode (cmd, &buf);
    if (rc == 0 && zmq_send (zsock_resolve (sock), buf.data, buf.size, 0) != (int) buf.size)
        rc = -KIM_E_CLOSED;
    kim_buf_free (&buf);
    return rc;
}

//  The frame the last decoded command points into (RECORD bodies), reused
static zmq_msg_t s_frame;
static bool s_frame_live;

//  Receives one command: without a poll while frames are waiting (a
//  replay receives millions), with one when the socket is idle.
static int
s_recv (zsock_t *sock, kim_cmd_t *cmd, int timeout_ms)
{
    void *handle = zsock_resolve (sock);
    if (!s_frame_live) {
        zmq_msg_init (&s_frame);
        s_frame_live = true;
    }
    while (true) {
        if (zmq_msg_recv (&s_frame, handle, ZMQ_DONTWAIT) >= 0)
            break;
        if (zmq_errno () != EAGAIN)
            return -KIM_E_CLOSED;
        zmq_pollitem_t item = { handle, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, timeout_ms) != 1)
            return -KIM_E_TIMEOUT;
    }
    //  Extra frames (none are expected) are drained
    while (zmq_msg_more (&s_frame)) {
        zmq_msg_t extra;
        zmq_msg_init (&extra);
        zmq_msg_recv (&extra, handle, 0);
        zmq_msg_close (&extra);
    }
    kim_decode_error_t error = { 0, "" };
    return kim_cmd_decode (cmd, (const uint8_t *) zmq_msg_data (&s_frame),
                           zmq_msg_size (&s_frame), &error);
}

static void
s_recv_done (void)
{
    if (s_frame_live)
        zmq_msg_close (&s_frame);
    s_frame_live = false;
}

static int
s_each_online (s_audit_t *self, s_record_fn *fn)
{
    const kim_cli_conn_t *conn = &self->conn;
    if (!conn->cert)
        return kim_cli_error (self->cmd, "give --data DIR (offline) or an auditor's --cert "
                              "FILE (online; or set KIM_CERT)");
    char why [1024], broker_key [41], public_key [41], secret_key [41];
    if (kim_client_load_public_key_explain (conn->broker_key, broker_key, why, sizeof why))
        return kim_cli_error (self->cmd, "broker key: %s (set --broker-key or KIM_BROKER_KEY)",
                              why);
    if (kim_client_load_cert_explain (conn->cert, public_key, secret_key, why, sizeof why))
        return kim_cli_error (self->cmd, "certificate: %s", why);
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    if (!sock)
        return kim_cli_error (self->cmd, "cannot create a socket");
    zsock_set_curve_serverkey (sock, broker_key);
    zsock_set_curve_publickey (sock, public_key);
    zsock_set_curve_secretkey (sock, secret_key);
    memset (secret_key, 0, sizeof secret_key);
    zsock_set_linger (sock, 0);
    int exit_code = KIM_EXIT_USAGE;
    kim_cmd_t *cmd = (kim_cmd_t *) malloc (sizeof (kim_cmd_t));
    if (!cmd || zsock_connect (sock, "%s", conn->endpoint) != 0) {
        kim_cli_error (self->cmd, "cannot connect to %s", conn->endpoint);
        goto done;
    }
    kim_cmd_init (cmd, KIM_CMD_HELLO);
    cmd->version_count = 1;
    cmd->versions [0] = KIM_PROTOCOL_VERSION;
    snprintf (cmd->agent, sizeof cmd->agent, "kim/%s audit", KIM_VERSION);
    int rc = s_send (sock, cmd);
    if (rc == 0)
        rc = s_recv (sock, cmd, conn->timeout_ms);
    if (rc || cmd->id != KIM_CMD_WELCOME) {
        kim_cli_error (self->cmd, "%s: no session: %s", conn->endpoint,
                       rc? kim_strerror (rc): cmd->id == KIM_CMD_REJECT? cmd->text
                                                : "unexpected answer to HELLO");
        goto done;
    }
    kim_str_copy (self->welcome_broker, sizeof self->welcome_broker, cmd->broker);
    char query_id [KIM_ID_MAX + 1];
    snprintf (query_id, sizeof query_id, "audit-%08x", randombytes_random ());
    kim_cmd_init (cmd, KIM_CMD_QUERY);
    kim_str_copy (cmd->query_id, sizeof cmd->query_id, query_id);
    const kim_log_filter_t *f = &self->filter;
    cmd->from_seq = f->from_seq;
    cmd->to_seq = f->to_seq;
    cmd->from_time = f->from_time;
    cmd->to_time = f->to_time;
    kim_str_copy (cmd->case_id, sizeof cmd->case_id, f->case_id);
    kim_str_copy (cmd->org, sizeof cmd->org, f->org);
    cmd->type = kim_type_from_name (f->type);
    cmd->window = self->window;
    if ((rc = s_send (sock, cmd)) != 0) {
        kim_cli_error (self->cmd, "cannot send QUERY: %s", kim_strerror (rc));
        goto done;
    }
    uint32_t outstanding = self->window;
    int stop = 0;
    while (true) {
        rc = s_recv (sock, cmd, conn->timeout_ms);
        if (rc) {
            kim_cli_error (self->cmd, "%s", rc == -KIM_E_TIMEOUT
                           ? "the broker stopped answering the query": kim_strerror (rc));
            break;
        }
        if (cmd->id == KIM_CMD_REJECT) {
            kim_cli_error (self->cmd, "the broker refused: %s (%s)", cmd->text,
                           kim_errname (cmd->code));
            exit_code = KIM_EXIT_REJECTED;
            break;
        }
        if (cmd->id == KIM_CMD_QUERY_END && streq (cmd->query_id, query_id)) {
            if (cmd->code)
                kim_cli_error (self->cmd, "the query ended early after %" PRIu64 " records: %s",
                               cmd->count, kim_strerror (-cmd->code));
            else
                exit_code = stop > 0? stop: 0;
            break;
        }
        if (cmd->id != KIM_CMD_RECORD || !streq (cmd->query_id, query_id))
            continue;
        if (outstanding)
            outstanding--;
        kim_log_record_t record = { cmd->seq, cmd->time, (uint8_t) cmd->kind, { 0 },
                                    cmd->body, cmd->body_size };
        memcpy (record.hash, cmd->hash, KIM_HASH_SIZE);
        if (stop == 0 && (!f->kind || record.kind == f->kind))
            stop = fn (self, &record);
        //  Grant more when half the window is used: the broker never runs
        //  more than `window` RECORDs ahead of us
        if (outstanding <= self->window / 2) {
            kim_cmd_t *more = (kim_cmd_t *) malloc (sizeof (kim_cmd_t));
            if (!more)
                break;
            kim_cmd_init (more, KIM_CMD_QUERY);
            kim_str_copy (more->query_id, sizeof more->query_id, query_id);
            more->window = self->window - outstanding;
            rc = s_send (sock, more);
            free (more);
            if (rc)
                break;
            outstanding = self->window;
        }
    }
done:
    s_recv_done ();
    free (cmd);
    zsock_destroy (&sock);
    return exit_code;
}

static bool
s_json_hex (json_t *object, const char *key, uint8_t *out, size_t size, size_t *written)
{
    const char *text = json_string_value (json_object_get (object, key));
    size_t length = 0;
    if (!text || sodium_hex2bin (out, size, text, strlen (text), NULL, &length, NULL) != 0)
        return false;
    if (written)
        *written = length;
    return written || length == size;
}

//  Whether an export line's `body` is what its `raw` bytes decode to: the
//  hash covers `raw` only, so a `body` edited alone would pass unseen by a
//  reader who trusts it. A line without `body` has nothing to mislead.
static bool
s_body_matches (json_t *object, const kim_log_record_t *record)
{
    json_t *shown = json_object_get (object, "body");
    if (!shown)
        return true;
    kim_buf_t text;
    kim_buf_init (&text);
    json_t *decoded = NULL;
    if (kim_log_body_to_json (record->body, record->body_size, &text) == 0
    &&  kim_buf_append (&text, "", 1) == 0)
        decoded = json_loads ((const char *) text.data, JSON_DECODE_ANY, NULL);
    bool same = decoded && json_equal (decoded, shown);
    json_decref (decoded);
    kim_buf_free (&text);
    return same;
}

static int
s_each_export (s_audit_t *self, s_record_fn *fn)
{
    FILE *file = streq (self->from_export, "-")? stdin: fopen (self->from_export, "r");
    if (!file)
        return kim_cli_error (self->cmd, "%s: %s", self->from_export, strerror (errno));
    size_t capacity = 1 << 20;
    char *line = (char *) malloc (capacity);
    uint8_t *body = (uint8_t *) malloc (capacity / 2);
    int rc = line && body? 0: kim_cli_error (self->cmd, "out of memory");
    size_t number = 0;
    while (rc == 0 && fgets (line, (int) capacity, file)) {
        number++;
        json_error_t error;
        json_t *object = json_loads (line, 0, &error);
        if (!object) {
            rc = kim_cli_error (self->cmd, "%s:%zu: not JSON: %s", self->from_export, number,
                                error.text);
            break;
        }
        if (json_object_get (object, "checkpoint_file")) {
            uint8_t bytes [KIM_LOG_CHECKPOINT_SIZE];
            self->have_outside = s_json_hex (object, "checkpoint_file", bytes, sizeof bytes, NULL)
                              && kim_log_checkpoint_decode (&self->outside, bytes, sizeof bytes) == 0;
            json_decref (object);
            continue;
        }
        kim_log_record_t record = { 0 };
        json_t *kind = json_object_get (object, "kind");
        record.seq = (uint64_t) json_integer_value (json_object_get (object, "seq"));
        record.time_ms = (uint64_t) json_integer_value (json_object_get (object, "time"));
        record.kind = (uint8_t) (json_is_string (kind)
                                 ? kim_log_kind_from_name (json_string_value (kind))
                                 : (unsigned) json_integer_value (kind));
        record.body = body;
        if (!record.seq || !record.kind
        ||  !s_json_hex (object, "hash", record.hash, KIM_HASH_SIZE, NULL)
        ||  !s_json_hex (object, "raw", body, capacity / 2, &record.body_size)) {
            json_decref (object);
            rc = kim_cli_error (self->cmd, "%s:%zu: not a record of `kim audit export` "
                                "(needs seq, time, kind, hash, raw)", self->from_export, number);
            break;
        }
        if (!self->body_differs && !s_body_matches (object, &record))
            self->body_differs = record.seq;
        json_decref (object);
        if (self->have_outside_hash == false && self->have_outside
        &&  record.seq == self->outside.seq) {
            memcpy (self->outside_hash, record.hash, KIM_HASH_SIZE);
            self->have_outside_hash = true;
        }
        rc = fn (self, &record);
    }
    free (line);
    free (body);
    if (file != stdin)
        fclose (file);
    return rc;
}

static int
s_each (s_audit_t *self, s_record_fn *fn)
{
    if (self->from_export)
        return s_each_export (self, fn);
    return self->data? s_each_offline (self, fn): s_each_online (self, fn);
}


//  --------------------------------------------------------------------------
//  Actions

//  The keys after the first --sign-key: a broker whose signing key was
//  replaced (operations.md, Keys) signed its checkpoints with each, and
//  each checkpoint names the one that signed it. Returns 0, or -1 after
//  saying which file is no key.
static int
s_trust_more_keys (s_audit_t *self, kim_log_verify_t *verify, const char *const *keys,
                   size_t count, const char *where)
{
    for (size_t i = 1; i < count; i++) {
        uint8_t another [32];
        char why [4400];
        if (kim_log_load_public_key (keys [i], another, why, sizeof why)) {
            kim_cli_error (self->cmd, "%s (pass --sign-key FILE%s)", why, where);
            return -1;
        }
        kim_log_verify_add_key (verify, another);
    }
    return 0;
}

static kim_log_verify_t s_verify;

static int
s_verify_record (s_audit_t *self, const kim_log_record_t *record)
{
    (void) self;
    return kim_log_verify_step (&s_verify, record)? KIM_EXIT_REJECTED: 0;
}

static int
s_do_verify (s_audit_t *self)
{
    char path [4200];
    if (!self->sign_key && self->data)
        snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, self->data);
    else
        kim_str_copy (path, sizeof path, self->sign_key? self->sign_key
                                           : KIM_DEFAULT_KEY_DIR "/broker.sign.pub");
    uint8_t public_key [32];
    char why [4400];
    if (kim_log_load_public_key (path, public_key, why, sizeof why))
        return kim_cli_error (self->cmd, "%s (pass --sign-key FILE)", why);
    kim_log_verify_init (&s_verify, public_key, self->filter.from_seq, NULL);
    if (s_trust_more_keys (self, &s_verify, self->sign_keys, self->sign_key_count, ""))
        return KIM_EXIT_USAGE;
    int rc = s_each (self, s_verify_record);
    if (rc && !s_verify.failed)
        return rc;
    if (!s_verify.failed && self->have_outside)
        kim_log_verify_end (&s_verify, &self->outside,
                            self->have_outside_hash? self->outside_hash: NULL);
    if (self->body_differs && (!s_verify.failed || self->body_differs < s_verify.bad_seq)) {
        s_verify.failed = true;
        s_verify.bad_seq = self->body_differs;
        snprintf (s_verify.why, sizeof s_verify.why, "the record's body in the export is not "
                  "what its raw bytes (which the hash covers) say: it was altered");
        s_verify.records = s_verify.last = 0;
    }
    if (s_verify.failed) {
        printf ("FAILED at seq %" PRIu64 ": %s\n", s_verify.bad_seq, s_verify.why);
        if (s_verify.records)
            printf ("records %" PRIu64 "..%" PRIu64 " before it verify\n",
                    s_verify.last - s_verify.records + 1, s_verify.last);
        return KIM_EXIT_REJECTED;
    }
    //  The trusted keys' ids, as the checkpoints name them
    char key_ids [KIM_LOG_VERIFY_KEYS * (KIM_LOG_KEY_ID_SIZE + 2)] = "";
    for (size_t i = 0; i < s_verify.key_count; i++) {
        char key_id [KIM_LOG_KEY_ID_SIZE + 1];
        kim_log_key_id (s_verify.keys [i], key_id);
        size_t used = strlen (key_ids);
        snprintf (key_ids + used, sizeof key_ids - used, "%s%s", i? ", ": "", key_id);
    }
    if (s_verify.records == 0) {
        printf ("OK: no records in the range\n");
        return KIM_EXIT_OK;
    }
    uint64_t first = s_verify.last - s_verify.records + 1;
    printf ("OK: records %" PRIu64 "..%" PRIu64 " verified (%" PRIu64 " records, %" PRIu64
            " checkpoints signed by key%s %s)", first, s_verify.last, s_verify.records,
            s_verify.checkpoints, s_verify.key_count > 1? "s": "", key_ids);
    if (s_verify.sealed >= s_verify.last)
        printf ("; sealed up to the last record\n");
    else
    if (s_verify.sealed >= first)
        printf ("; sealed up to seq %" PRIu64 ", records %" PRIu64 "..%" PRIu64
                " await the next checkpoint\n", s_verify.sealed, s_verify.sealed + 1,
                s_verify.last);
    else
        printf ("; no checkpoint in the range yet: the chain is intact but not signed\n");
    if (first > 1 && !self->from_export)
        printf ("note: the range starts at seq %" PRIu64 ", anchored on that record's stored "
                "hash\n", first);
    return KIM_EXIT_OK;
}

static int
s_replay_record (s_audit_t *self, const kim_log_record_t *record)
{
    if (kim_log_record_to_json (record, streq (self->action, "export"), &self->out))
        return kim_cli_error (self->cmd, "out of memory");
    if (self->out.size >= S_FLUSH_AT)
        s_flush (self);
    return self->out_failed? kim_cli_error (self->cmd, "cannot write to stdout"): 0;
}

static int
s_do_replay (s_audit_t *self)
{
    int rc = s_each (self, s_replay_record);
    if (rc == 0 && streq (self->action, "export") && self->have_outside) {
        uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
        char hex [2 * KIM_LOG_CHECKPOINT_SIZE + 1];
        kim_log_checkpoint_encode (&self->outside, body);
        sodium_bin2hex (hex, sizeof hex, body, sizeof body);
        s_emit (self, "{\"checkpoint_file\":\"%s\"}\n", hex);
    }
    s_flush (self);
    if (fflush (stdout) || self->out_failed)
        return kim_cli_error (self->cmd, "cannot write to stdout");
    return rc;
}

static void
s_time_text (uint64_t time_ms, char *out, size_t size)
{
    time_t seconds = (time_t) (time_ms / 1000);
    struct tm tm;
    gmtime_r (&seconds, &tm);
    strftime (out, size, "%Y-%m-%d %H:%M:%S", &tm);
}

static int
s_case_record (s_audit_t *self, const kim_log_record_t *record)
{
    char when [32], who [KIM_ORG_MAX + 16] = "", what [160] = "", state [160] = "";
    char a [KIM_ORG_MAX + 1], b [KIM_ORG_MAX + 1], c [KIM_ID_MAX + 1];
    const uint8_t *body = record->body;
    size_t size = record->body_size;
    s_time_text (record->time_ms, when, sizeof when);
#define S_STR(key, out) kim_log_body_str (body, size, key, out, sizeof out)
    switch (record->kind) {
        case KIM_LOG_MESSAGE:
            if (!S_STR ("sender", who))
                snprintf (who, sizeof who, "?");
            if (!S_STR ("type", a))
                snprintf (a, sizeof a, "?");
            kim_str_copy (what, sizeof what, a);
            if (S_STR ("recipient", b))
                snprintf (what + strlen (what), sizeof what - strlen (what), " to %s", b);
            if (S_STR ("referral_id", c))
                snprintf (state, sizeof state, "referral %s", c);
            break;
        case KIM_LOG_STATE:
            snprintf (who, sizeof who, "(broker)");
            if (S_STR ("referral_id", c))
                snprintf (what, sizeof what, "referral %s", c);
            else
                snprintf (what, sizeof what, "case");
            if (S_STR ("from", a) && S_STR ("to", b))
                snprintf (state, sizeof state, "%s -> %s", a, b);
            if (S_STR ("lead_to", b)) {
                size_t used = strlen (state);
                snprintf (state + used, sizeof state - used, "%slead %s%s%s", used? "; ": "",
                          S_STR ("lead_from", a)? a: "", S_STR ("lead_from", a)? " -> ": "", b);
            }
            break;
        case KIM_LOG_AUDIT_READ:
            if (!S_STR ("reader", who))
                snprintf (who, sizeof who, "?");
            snprintf (what, sizeof what, "read the log (%s)",
                      S_STR ("query_id", c)? c: "query");
            break;
        default: {
            const char *kind = kim_log_kind_name (record->kind);
            snprintf (who, sizeof who, "(broker)");
            kim_str_copy (what, sizeof what, kind? kind: "record");
            if (S_STR ("reason", a))
                kim_str_copy (state, sizeof state, a);
        }
    }
#undef S_STR
    s_emit (self, "%-19s %8" PRIu64 "  %-22s %-40s %s\n", when, record->seq, who, what, state);
    if (self->out.size >= S_FLUSH_AT)
        s_flush (self);
    return 0;
}

static int
s_do_case (s_audit_t *self)
{
    s_emit (self, "case %s\n%-19s %8s  %-22s %-40s %s\n", self->filter.case_id,
            "WHEN (UTC)", "SEQ", "WHO", "WHAT", "STATE");
    int rc = s_each (self, s_case_record);
    s_flush (self);
    fflush (stdout);
    return rc;
}


//  --------------------------------------------------------------------------
//  Trace: one message across several brokers' logs
//
//  With federation a message is logged by every broker it passes: the
//  sender's broker, and each far broker that a link forwarded it to, with
//  its header unchanged. `trace` reads each log in full (a filtered read
//  could not be verified), verifies its chain, and keeps the few records
//  that concern the message: the message itself, its policy decision, the
//  state records it caused, and the messages that answer it or, for a
//  REFERRAL, belong to its referral. Copies of the message from the same
//  sender must carry the same header in every log; `rule` alone differs,
//  because each broker's own policy sets it.

#define S_TRACE_SOURCES_MAX     64
#define S_TRACE_MATCHES_MAX     100000  //  records kept over all logs
#define S_TRACE_SEQS_MAX        1024    //  message seqs per log that state records name

typedef struct {
    const char *data;                   //  offline source, or NULL
    kim_cli_conn_t conn;                //  online source
    const char *sign_key;               //  the first --sign-key
    const char *sign_keys [KIM_LOG_VERIFY_KEYS];
    size_t sign_key_count;
    bool own_keys;                      //  a --sign-key after it: not those before
    const char *name;                   //  --name
    char label [KIM_ORG_MAX + 8];       //  the broker's name as printed
    //  Outcome
    bool read_failed;                   //  the log could not be read to its end
    bool checked_end;                   //  the checkpoint held outside the log was checked
    kim_log_verify_t verify;
    uint64_t matches;
    uint64_t first_time;                //  of its first matching record
} s_trace_source_t;

typedef struct {
    size_t source;
    uint64_t seq;
    uint64_t time_ms;
    uint8_t kind;
    const char *role;                   //  message, decision, state, answer, notice, ...
    json_t *body;
} s_trace_match_t;

typedef struct _s_trace_t {
    const char *msg_id;
    const char *sender;                 //  --sender, or NULL
    bool json;
    s_trace_source_t sources [S_TRACE_SOURCES_MAX];
    size_t source_count;
    s_trace_match_t *matches;
    size_t match_count;
    size_t match_capacity;
    bool truncated;
    //  While one log is read
    size_t current;
    char referral_id [KIM_ID_MAX + 1];  //  of the traced REFERRAL in this log
    uint64_t seqs [S_TRACE_SEQS_MAX];   //  matched message records in this log
    size_t seq_count;
} s_trace_t;

static json_t *
s_trace_body (const kim_log_record_t *record)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    json_t *body = NULL;
    if (kim_log_body_to_json (record->body, record->body_size, &buf) == 0)
        body = json_loadb ((const char *) buf.data, buf.size, 0, NULL);
    kim_buf_free (&buf);
    return body? body: json_object ();
}

static const char *
s_trace_str (json_t *body, const char *key)
{
    const char *value = json_string_value (json_object_get (body, key));
    return value? value: "";
}

static int
s_trace_keep (s_trace_t *trace, const kim_log_record_t *record, const char *role, json_t *body)
{
    if (trace->match_count == S_TRACE_MATCHES_MAX) {
        trace->truncated = true;
        json_decref (body);
        return 0;
    }
    if (trace->match_count == trace->match_capacity) {
        size_t capacity = trace->match_capacity? 2 * trace->match_capacity: 64;
        s_trace_match_t *bigger = (s_trace_match_t *) realloc (trace->matches,
                                                               capacity * sizeof *bigger);
        if (!bigger) {
            json_decref (body);
            return kim_cli_error ("audit", "out of memory");
        }
        trace->matches = bigger;
        trace->match_capacity = capacity;
    }
    s_trace_match_t *match = &trace->matches [trace->match_count++];
    match->source = trace->current;
    match->seq = record->seq;
    match->time_ms = record->time_ms;
    match->kind = record->kind;
    match->role = role;
    match->body = body;
    s_trace_source_t *source = &trace->sources [trace->current];
    if (source->matches++ == 0)
        source->first_time = record->time_ms;
    if (record->kind == KIM_LOG_MESSAGE && trace->seq_count < S_TRACE_SEQS_MAX)
        trace->seqs [trace->seq_count++] = record->seq;
    return 0;
}

static int
s_trace_record (s_audit_t *self, const kim_log_record_t *record)
{
    s_trace_t *trace = self->trace;
    s_trace_source_t *source = &trace->sources [trace->current];
    if (!source->verify.failed)
        kim_log_verify_step (&source->verify, record);
    if (record->kind == KIM_LOG_CHECKPOINT || record->kind == KIM_LOG_AUDIT_READ
    ||  record->body_size == 0)
        return 0;
    //  Cheap string lookups first: most records concern other messages
    char msg_id [KIM_ID_MAX + 1] = "", ref_msg_id [KIM_ID_MAX + 1] = "";
    char referral_id [KIM_ID_MAX + 1] = "", sender [KIM_ORG_MAX + 1] = "";
    char type [KIM_CODE_MAX + 1] = "";
    const uint8_t *body = record->body;
    size_t size = record->body_size;
    kim_log_body_str (body, size, "msg_id", msg_id, sizeof msg_id);
    kim_log_body_str (body, size, "ref_msg_id", ref_msg_id, sizeof ref_msg_id);
    kim_log_body_str (body, size, "referral_id", referral_id, sizeof referral_id);
    kim_log_body_str (body, size, "sender", sender, sizeof sender);
    kim_log_body_str (body, size, "type", type, sizeof type);
    bool own = streq (msg_id, trace->msg_id) && (!trace->sender || streq (sender, trace->sender));
    bool names_it = streq (ref_msg_id, trace->msg_id)
                 || (trace->referral_id [0] && streq (referral_id, trace->referral_id));
    bool notice = kim_type_flags (kim_type_from_name (type)) == KIM_MSG_FROM_BROKER;
    const char *role = NULL;
    switch (record->kind) {
        case KIM_LOG_MESSAGE:
            if (own) {
                role = "message";
                if (streq (type, "REFERRAL") && referral_id [0])
                    kim_str_copy (trace->referral_id, sizeof trace->referral_id, referral_id);
            }
            else
            if (names_it)
                role = notice? "notice": "answer";
            break;
        case KIM_LOG_DECISION:
            role = own? "decision": names_it? "decision": NULL;
            break;
        case KIM_LOG_STATE:
            if (trace->referral_id [0] && streq (referral_id, trace->referral_id))
                role = "state";
            else
            if (trace->seq_count) {
                //  A state record names the message that caused it by seq
                uint64_t seq = 0;
                json_t *json = s_trace_body (record);
                json_t *value = json_object_get (json, "seq");
                if (json_is_integer (value))
                    seq = (uint64_t) json_integer_value (value);
                for (size_t i = 0; seq && i < trace->seq_count; i++)
                    if (trace->seqs [i] == seq)
                        return s_trace_keep (trace, record, "state", json);
                json_decref (json);
            }
            break;
        default:
            if (own || names_it) {
                const char *name = kim_log_kind_name (record->kind);
                role = name? name: "record";
            }
    }
    return role? s_trace_keep (trace, record, role, s_trace_body (record)): 0;
}

//  Reads and verifies one source. Returns 0, or the exit code of an error
//  that stops the whole trace (a usage error).
static int
s_trace_source (s_audit_t *self, s_trace_t *trace, size_t index)
{
    s_trace_source_t *source = &trace->sources [index];
    trace->current = index;
    trace->referral_id [0] = 0;
    trace->seq_count = 0;
    self->data = source->data;
    self->conn = source->conn;
    self->have_outside = false;
    self->have_outside_hash = false;
    self->welcome_broker [0] = 0;
    memset (&self->filter, 0, sizeof self->filter);

    char path [4200], why [4400];
    if (source->sign_key)
        kim_str_copy (path, sizeof path, source->sign_key);
    else
    if (source->data)
        snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, source->data);
    else
        return kim_cli_usage_error (self->cmd, "the broker at %s needs --sign-key FILE (its "
                                    "public signing key) to verify its log",
                                    source->conn.endpoint);
    uint8_t public_key [32];
    if (kim_log_load_public_key (path, public_key, why, sizeof why))
        return kim_cli_error (self->cmd, "%s (pass --sign-key FILE after the source)", why);
    kim_log_verify_init (&source->verify, public_key, 1, NULL);
    if (s_trust_more_keys (self, &source->verify, source->sign_keys, source->sign_key_count,
                           " after the source"))
        return KIM_EXIT_USAGE;
    int rc = s_each (self, s_trace_record);
    if (rc && !source->verify.failed)
        source->read_failed = true;
    if (!source->verify.failed && !source->read_failed && self->have_outside) {
        kim_log_verify_end (&source->verify, &self->outside,
                            self->have_outside_hash? self->outside_hash: NULL);
        source->checked_end = true;
    }
    //  The broker's name: --name, the WELCOME, or the data folder's
    if (source->name)
        kim_str_copy (source->label, sizeof source->label, source->name);
    else
    if (self->welcome_broker [0])
        kim_str_copy (source->label, sizeof source->label, self->welcome_broker);
    else {
        //  <...>/NAME/data or <...>/NAME: the folder that names the broker
        char folder [4200];
        kim_str_copy (folder, sizeof folder, source->data? source->data: source->conn.endpoint);
        size_t length = strlen (folder);
        while (length > 1 && folder [length - 1] == '/')
            folder [--length] = 0;
        char *base = strrchr (folder, '/');
        if (base && streq (base + 1, "data") && base > folder) {
            *base = 0;
            base = strrchr (folder, '/');
        }
        kim_str_copy (source->label, sizeof source->label, base? base + 1: folder);
    }
    //  Two sources of one name get a number each, so lines stay apart
    for (size_t i = 0; i < index; i++)
        if (streq (trace->sources [i].label, source->label)) {
            size_t used = strnlen (source->label, sizeof source->label - 5);
            snprintf (source->label + used, sizeof source->label - used, "#%zu", index + 1);
            break;
        }
    return 0;
}

//  The fields of two logged copies of one message that differ; `rule` is
//  each broker's own. Appends their names to `out` (a JSON array).
static void
s_trace_diff (json_t *a, json_t *b, json_t *out)
{
    const char *key;
    json_t *value;
    json_object_foreach (a, key, value)
        if (!streq (key, "rule") && !json_equal (value, json_object_get (b, key)))
            json_array_append_new (out, json_string (key));
    json_object_foreach (b, key, value)
        if (!streq (key, "rule") && !json_object_get (a, key))
            json_array_append_new (out, json_string (key));
}

static int
s_trace_compare_matches (const void *left, const void *right)
{
    const s_trace_match_t *a = (const s_trace_match_t *) left;
    const s_trace_match_t *b = (const s_trace_match_t *) right;
    if (a->source != b->source)
        return a->source < b->source? -1: 1;
    return a->seq < b->seq? -1: a->seq > b->seq;
}

static void
s_trace_print_source (const s_trace_t *trace, size_t index, json_t *sources)
{
    const s_trace_source_t *source = &trace->sources [index];
    const kim_log_verify_t *v = &source->verify;
    const char *where = source->data? source->data: source->conn.endpoint;
    bool verified = !v->failed && !source->read_failed;
    if (sources) {
        json_t *entry = json_pack ("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:b}",
                                   "broker", source->label, "source", where,
                                   "read", source->data? "offline": "online",
                                   "verified", verified, "records", (json_int_t) v->records,
                                   "last_seq", (json_int_t) v->last,
                                   "checkpoints", (json_int_t) v->checkpoints,
                                   "sealed_to", (json_int_t) v->sealed,
                                   "end_checked", source->checked_end);
        json_object_set_new (entry, "matches", json_integer ((json_int_t) source->matches));
        if (v->failed) {
            json_object_set_new (entry, "bad_seq", json_integer ((json_int_t) v->bad_seq));
            json_object_set_new (entry, "why", json_string (v->why));
        }
        else
        if (source->read_failed)
            json_object_set_new (entry, "why", json_string ("the log could not be read to "
                                                            "its end"));
        json_array_append_new (sources, entry);
        return;
    }
    printf ("  [%zu] %-24s %s\n", index + 1, source->label, where);
    if (v->failed)
        printf ("      LOG DOES NOT VERIFY: FAILED at seq %" PRIu64 ": %s\n"
                "      its records below are not proven\n", v->bad_seq, v->why);
    else
    if (source->read_failed)
        printf ("      LOG NOT VERIFIED: it could not be read to its end (see above)\n");
    else
    if (v->records == 0)
        printf ("      verified: the log is empty\n");
    else
        printf ("      verified: records 1..%" PRIu64 ", %" PRIu64 " checkpoint%s, sealed up to "
                "seq %" PRIu64 "%s\n", v->last, v->checkpoints, v->checkpoints == 1? "": "s",
                v->sealed, source->checked_end? ", matches the checkpoint file": "");
    if (source->matches == 0)
        printf ("      the message is not in this log\n");
}

static void
s_trace_print_match (s_audit_t *self, const s_trace_t *trace, const s_trace_match_t *match)
{
    char when [32], what [200], parties [2 * KIM_ORG_MAX + 8];
    s_time_text (match->time_ms, when, sizeof when);
    json_t *body = match->body;
    const char *type = s_trace_str (body, "type");
    const char *from = s_trace_str (body, "sender");
    const char *to = s_trace_str (body, "recipient");
    snprintf (parties, sizeof parties, "%s -> %s", *from? from: "-", *to? to: "-");
    if (match->kind == KIM_LOG_MESSAGE)
        snprintf (what, sizeof what, "%s %s%s%s", type, s_trace_str (body, "msg_id"),
                  *s_trace_str (body, "rule")? " rule ": "", s_trace_str (body, "rule"));
    else
    if (match->kind == KIM_LOG_STATE && *s_trace_str (body, "lead_to"))
        snprintf (what, sizeof what, "case %s lead %s -> %s", s_trace_str (body, "case_id"),
                  s_trace_str (body, "lead_from"), s_trace_str (body, "lead_to"));
    else
    if (match->kind == KIM_LOG_STATE)
        snprintf (what, sizeof what, "%s%s %s -> %s", *s_trace_str (body, "referral_id")
                  ? "referral ": "case ", *s_trace_str (body, "referral_id")
                  ? s_trace_str (body, "referral_id"): s_trace_str (body, "case_id"),
                  s_trace_str (body, "from"), s_trace_str (body, "to"));
    else
    if (match->kind == KIM_LOG_DECISION)
        snprintf (what, sizeof what, "%s %s rule %s: %s", s_trace_str (body, "decision"),
                  s_trace_str (body, "code"), s_trace_str (body, "rule"),
                  s_trace_str (body, "reason"));
    else
        snprintf (what, sizeof what, "%s", s_trace_str (body, "reason"));
    const char *kind = kim_log_kind_name (match->kind);
    s_emit (self, "%-19s %-18s %8" PRIu64 "  %-8s %-8s %-44s %s\n", when,
            trace->sources [match->source].label, match->seq, kind? kind: "?", match->role,
            what, match->kind == KIM_LOG_STATE? "": parties);
}

static int
s_do_trace (s_audit_t *self, s_trace_t *trace)
{
    self->trace = trace;
    //  One folder given twice would show as two copies that agree
    for (size_t i = 0; i < trace->source_count; i++)
        for (size_t j = 0; j < i; j++) {
            const char *a = trace->sources [i].data, *b = trace->sources [j].data;
            char real_a [PATH_MAX], real_b [PATH_MAX];
            if (a && b && realpath (a, real_a) && realpath (b, real_b) && streq (real_a, real_b))
                return kim_cli_usage_error (self->cmd, "%s is given twice: one log counts once",
                                            a);
        }
    for (size_t i = 0; i < trace->source_count; i++) {
        int rc = s_trace_source (self, trace, i);
        if (rc)
            return rc;
    }
    if (trace->match_count)
        qsort (trace->matches, trace->match_count, sizeof trace->matches [0],
               s_trace_compare_matches);
    //  Brokers in the order the message reached them
    size_t order [S_TRACE_SOURCES_MAX];
    for (size_t i = 0; i < trace->source_count; i++)
        order [i] = i;
    for (size_t i = 1; i < trace->source_count; i++)
        for (size_t j = i; j > 0; j--) {
            const s_trace_source_t *a = &trace->sources [order [j - 1]];
            const s_trace_source_t *b = &trace->sources [order [j]];
            bool later = (a->matches == 0 && b->matches)
                      || (a->matches && b->matches && a->first_time > b->first_time);
            if (!later)
                break;
            size_t swap = order [j];
            order [j] = order [j - 1];
            order [j - 1] = swap;
        }
    //  Findings: logs that do not verify, copies whose headers differ
    json_t *findings = json_array ();
    size_t failed_logs = 0, copies = 0, differing = 0;
    for (size_t i = 0; i < trace->source_count; i++)
        if (trace->sources [i].verify.failed || trace->sources [i].read_failed)
            failed_logs++;
    for (size_t i = 0; i < trace->match_count; i++) {
        s_trace_match_t *a = &trace->matches [i];
        if (strcmp (a->role, "message") != 0)
            continue;
        copies++;
        //  Compared with the first copy from the same sender
        for (size_t j = 0; j < i; j++) {
            s_trace_match_t *b = &trace->matches [j];
            if (strcmp (b->role, "message") != 0
            ||  !streq (s_trace_str (a->body, "sender"), s_trace_str (b->body, "sender")))
                continue;
            json_t *fields = json_array ();
            s_trace_diff (b->body, a->body, fields);
            if (json_array_size (fields)) {
                differing++;
                json_array_append_new (findings, json_pack (
                    "{s:s, s:s, s:s, s:I, s:s, s:I, s:o}", "finding", "header_differs",
                    "sender", s_trace_str (a->body, "sender"),
                    "broker_a", trace->sources [b->source].label, "seq_a", (json_int_t) b->seq,
                    "broker_b", trace->sources [a->source].label, "seq_b", (json_int_t) a->seq,
                    "fields", fields));
            }
            else
                json_decref (fields);
            break;
        }
    }
    for (size_t i = 0; i < trace->source_count; i++) {
        s_trace_source_t *source = &trace->sources [i];
        if (source->verify.failed || source->read_failed)
            json_array_append_new (findings, json_pack (
                "{s:s, s:s, s:I, s:s}", "finding", "log_does_not_verify", "broker",
                source->label, "bad_seq", (json_int_t) source->verify.bad_seq,
                "why", source->verify.failed? source->verify.why: "not read to its end"));
    }
    if (copies == 0)
        json_array_append_new (findings, json_pack ("{s:s}", "finding", "not_found"));
    bool ok = failed_logs == 0 && differing == 0 && copies > 0;

    if (trace->json) {
        json_t *root = json_pack ("{s:s, s:b}", "msg_id", trace->msg_id, "ok", ok);
        if (trace->sender)
            json_object_set_new (root, "sender", json_string (trace->sender));
        json_t *sources = json_array (), *records = json_array ();
        for (size_t k = 0; k < trace->source_count; k++)
            s_trace_print_source (trace, order [k], sources);
        for (size_t k = 0; k < trace->source_count; k++)
            for (size_t i = 0; i < trace->match_count; i++) {
                s_trace_match_t *match = &trace->matches [i];
                if (match->source != order [k])
                    continue;
                const char *kind = kim_log_kind_name (match->kind);
                json_t *entry = json_pack ("{s:s, s:I, s:I, s:s, s:s, s:O}",
                                           "broker", trace->sources [match->source].label,
                                           "seq", (json_int_t) match->seq,
                                           "time", (json_int_t) match->time_ms,
                                           "kind", kind? kind: "record", "role", match->role,
                                           "body", match->body);
                json_array_append_new (records, entry);
            }
        json_object_set_new (root, "sources", sources);
        json_object_set_new (root, "records", records);
        json_object_set_new (root, "findings", findings);
        if (trace->truncated)
            json_object_set_new (root, "truncated", json_true ());
        char *text = json_dumps (root, JSON_COMPACT);
        if (text && kim_buf_append (&self->out, text, strlen (text)))
            self->out_failed = true;
        free (text);
        json_decref (root);
        s_emit (self, "\n");
    }
    else {
        s_emit (self, "trace of %s%s%s over %zu logs\n", trace->msg_id,
                trace->sender? " from ": "", trace->sender? trace->sender: "",
                trace->source_count);
        s_flush (self);
        for (size_t k = 0; k < trace->source_count; k++)
            s_trace_print_source (trace, order [k], NULL);
        fflush (stdout);
        if (trace->match_count)
            s_emit (self, "\n%-19s %-18s %8s  %-8s %-8s %-44s %s\n", "WHEN (UTC)", "BROKER",
                    "SEQ", "KIND", "ROLE", "WHAT", "SENDER -> RECIPIENT");
        for (size_t k = 0; k < trace->source_count; k++)
            for (size_t i = 0; i < trace->match_count; i++)
                if (trace->matches [i].source == order [k])
                    s_trace_print_match (self, trace, &trace->matches [i]);
        s_emit (self, "\n");
        size_t index;
        json_t *finding;
        json_array_foreach (findings, index, finding) {
            const char *name = s_trace_str (finding, "finding");
            if (streq (name, "header_differs")) {
                json_t *fields = json_object_get (finding, "fields");
                char list [512] = "";
                size_t f;
                json_t *field;
                json_array_foreach (fields, f, field) {
                    size_t used = strlen (list);
                    snprintf (list + used, sizeof list - used, "%s%s", f? ", ": "",
                              json_string_value (field));
                }
                s_emit (self, "HEADER DIFFERS: %s from %s: %s seq %" PRIu64 " and %s seq %"
                        PRIu64 " differ in %s\n", trace->msg_id, s_trace_str (finding, "sender"),
                        s_trace_str (finding, "broker_a"),
                        (uint64_t) json_integer_value (json_object_get (finding, "seq_a")),
                        s_trace_str (finding, "broker_b"),
                        (uint64_t) json_integer_value (json_object_get (finding, "seq_b")),
                        list);
            }
            else
            if (streq (name, "log_does_not_verify"))
                s_emit (self, "LOG DOES NOT VERIFY: %s\n", s_trace_str (finding, "broker"));
            else
                s_emit (self, "NOT FOUND: %s is in none of the %zu logs\n", trace->msg_id,
                        trace->source_count);
        }
        if (trace->truncated)
            s_emit (self, "note: more than %d records matched; the rest are not shown\n",
                    S_TRACE_MATCHES_MAX);
        if (ok)
            s_emit (self, "OK: %zu copies of %s in %zu logs, every log verifies, the headers "
                    "agree\n", copies, trace->msg_id, trace->source_count);
        json_decref (findings);
    }
    s_flush (self);
    for (size_t i = 0; i < trace->match_count; i++)
        json_decref (trace->matches [i].body);
    free (trace->matches);
    trace->matches = NULL;
    if (fflush (stdout) || self->out_failed)
        return kim_cli_error (self->cmd, "cannot write to stdout");
    return ok? KIM_EXIT_OK: KIM_EXIT_REJECTED;
}

//  The options of `trace`: each --data or --endpoint opens a source, and
//  the key options after it belong to it; given before any source they
//  are the defaults of every source. Returns 1 when it took the option, 0
//  when it is not one of these, or -1 after a usage error.
static int
s_trace_option (s_audit_t *self, s_trace_t *trace, kim_cli_args_t *args)
{
    bool opens = kim_cli_args_is (args, "--data") || kim_cli_args_is (args, "--endpoint");
    if (!opens && !kim_cli_args_is (args, "--broker-key") && !kim_cli_args_is (args, "--cert")
    &&  !kim_cli_args_is (args, "--timeout") && !kim_cli_args_is (args, "--sign-key")
    &&  !kim_cli_args_is (args, "--name") && !kim_cli_args_is (args, "--sender")
    &&  !kim_cli_args_is (args, "--json"))
        return 0;
    if (kim_cli_args_is (args, "--json")) {
        trace->json = true;
        return 1;
    }
    if (opens) {
        if (trace->source_count == S_TRACE_SOURCES_MAX) {
            kim_cli_usage_error (self->cmd, "at most %d logs", S_TRACE_SOURCES_MAX);
            return -1;
        }
        s_trace_source_t *source = &trace->sources [trace->source_count++];
        memset (source, 0, sizeof *source);
        source->conn = self->conn;
        source->sign_key = self->sign_key;
        memcpy (source->sign_keys, self->sign_keys, sizeof source->sign_keys);
        source->sign_key_count = self->sign_key_count;
    }
    s_trace_source_t *source = trace->source_count
                             ? &trace->sources [trace->source_count - 1]: NULL;
    if (!kim_cli_args_is (args, "--data") && !kim_cli_args_is (args, "--sign-key")
    &&  !kim_cli_args_is (args, "--name") && !kim_cli_args_is (args, "--sender"))
        return kim_cli_conn_option (source? &source->conn: &self->conn, args) < 0? -1: 1;
    const char *value = kim_cli_args_value (args);
    if (!value)
        return -1;
    if (kim_cli_args_is (args, "--data"))
        source->data = value;
    else
    if (kim_cli_args_is (args, "--sender")) {
        if (!kim_org_valid (value)) {
            kim_cli_usage_error (self->cmd, "--sender: '%s' is not an org id", value);
            return -1;
        }
        trace->sender = value;
    }
    else
    if (kim_cli_args_is (args, "--sign-key")) {
        //  The first --sign-key after a source replaces the keys it took
        //  from before the first source; more add to them.
        const char **keys = source? source->sign_keys: self->sign_keys;
        size_t *count = source? &source->sign_key_count: &self->sign_key_count;
        if (source && !source->own_keys) {
            source->own_keys = true;
            *count = 0;
        }
        if (*count == KIM_LOG_VERIFY_KEYS) {
            kim_cli_usage_error (self->cmd, "--sign-key: at most %d keys a log",
                                 KIM_LOG_VERIFY_KEYS);
            return -1;
        }
        keys [(*count)++] = value;
        *(source? &source->sign_key: &self->sign_key) = keys [0];
    }
    else {
        if (!source) {
            kim_cli_usage_error (self->cmd, "--name names the broker of the --data or "
                                 "--endpoint before it");
            return -1;
        }
        source->name = value;
    }
    return 1;
}

//  --------------------------------------------------------------------------
//  Options

//  Milliseconds since the epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).
static bool
s_parse_time (const char *text, bool end_of_day, uint64_t *ms)
{
    if (kim_cli_parse_uint (text, 0, UINT64_MAX, ms))
        return true;
    struct tm tm;
    memset (&tm, 0, sizeof tm);
    const char *rest = strptime (text, "%Y-%m-%dT%H:%M:%S", &tm);
    bool date_only = false;
    if (!rest) {
        memset (&tm, 0, sizeof tm);
        rest = strptime (text, "%Y-%m-%d", &tm);
        date_only = true;
    }
    if (!rest || (*rest && strcmp (rest, "Z") != 0))
        return false;
    time_t seconds = timegm (&tm);
    if (seconds < 0)
        return false;
    *ms = (uint64_t) seconds * 1000;
    if (date_only && end_of_day)
        *ms += 24 * 3600 * 1000 - 1;
    return true;
}

int
kim_cmd_audit (int argc, char *argv [])
{
    s_audit_t self_value;
    s_audit_t *self = &self_value;
    memset (self, 0, sizeof *self);
    self->cmd = "audit";
    self->window = S_WINDOW;
    kim_cli_conn_init (&self->conn);
    kim_buf_init (&self->out);
    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    kim_log_filter_t *f = &self->filter;
    uint64_t number;
    s_trace_t trace_value;
    s_trace_t *trace = &trace_value;
    memset (trace, 0, sizeof *trace);
    const char *trace_id = NULL;
    while (kim_cli_args_next (&args)) {
        const char *value = NULL;
        if (kim_cli_args_help (&args)) {
            kim_cli_help (stdout, "audit");
            return KIM_EXIT_OK;
        }
        if (args.positional) {
            if (!self->action)
                self->action = args.arg;
            else
            if (streq (self->action, "case") && !self->case_id)
                self->case_id = args.arg;
            else
            if (streq (self->action, "trace") && !trace_id)
                trace_id = args.arg;
            else
                return kim_cli_args_unknown (&args);
            continue;
        }
        if (self->action && streq (self->action, "trace")) {
            int taken = s_trace_option (self, trace, &args);
            if (taken < 0)
                return KIM_EXIT_USAGE;
            if (taken)
                continue;
        }
        int conn = kim_cli_conn_option (&self->conn, &args);
        if (conn < 0)
            return KIM_EXIT_USAGE;
        if (conn > 0)
            continue;
        if (!kim_cli_args_is (&args, "--data") && !kim_cli_args_is (&args, "--sign-key")
        &&  !kim_cli_args_is (&args, "--from-export") && !kim_cli_args_is (&args, "--from")
        &&  !kim_cli_args_is (&args, "--to") && !kim_cli_args_is (&args, "--since")
        &&  !kim_cli_args_is (&args, "--until") && !kim_cli_args_is (&args, "--case")
        &&  !kim_cli_args_is (&args, "--org") && !kim_cli_args_is (&args, "--type")
        &&  !kim_cli_args_is (&args, "--window"))
            return kim_cli_args_unknown (&args);
        value = kim_cli_args_value (&args);
        if (!value)
            return KIM_EXIT_USAGE;
        if (kim_cli_args_is (&args, "--data"))
            self->data = value;
        else
        if (kim_cli_args_is (&args, "--sign-key")) {
            if (self->sign_key_count == KIM_LOG_VERIFY_KEYS)
                return kim_cli_usage_error (self->cmd, "--sign-key: at most %d keys",
                                            KIM_LOG_VERIFY_KEYS);
            self->sign_keys [self->sign_key_count++] = value;
            self->sign_key = self->sign_keys [0];
        }
        else
        if (kim_cli_args_is (&args, "--from-export"))
            self->from_export = value;
        else
        if (kim_cli_args_is (&args, "--from") || kim_cli_args_is (&args, "--to")) {
            if (!kim_cli_parse_uint (value, 1, UINT64_MAX, &number))
                return kim_cli_usage_error (self->cmd, "%s: '%s' is not a sequence number",
                                            args.name, value);
            *(kim_cli_args_is (&args, "--from")? &f->from_seq: &f->to_seq) = number;
        }
        else
        if (kim_cli_args_is (&args, "--since") || kim_cli_args_is (&args, "--until")) {
            bool until = kim_cli_args_is (&args, "--until");
            if (!s_parse_time (value, until, &number))
                return kim_cli_usage_error (self->cmd, "%s: '%s' is not a time (ms since the "
                                            "epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)",
                                            args.name, value);
            *(until? &f->to_time: &f->from_time) = number;
        }
        else
        if (kim_cli_args_is (&args, "--case")) {
            if (!kim_id_valid (value))
                return kim_cli_usage_error (self->cmd, "--case: '%s' is not an id", value);
            kim_str_copy (f->case_id, sizeof f->case_id, value);
        }
        else
        if (kim_cli_args_is (&args, "--org")) {
            if (!kim_org_valid (value))
                return kim_cli_usage_error (self->cmd, "--org: '%s' is not an org id", value);
            kim_str_copy (f->org, sizeof f->org, value);
        }
        else
        if (kim_cli_args_is (&args, "--type")) {
            f->kind = kim_log_kind_from_name (value);
            if (kim_type_from_name (value) != KIM_TYPE_NONE) {
                kim_str_copy (f->type, sizeof f->type, value);
                f->kind = KIM_LOG_MESSAGE;
            }
            else
            if (!f->kind)
                return kim_cli_usage_error (self->cmd, "--type: '%s' is neither a message "
                                            "type nor a record kind", value);
        }
        else {
            if (!kim_cli_parse_uint (value, 1, KIM_WINDOW_MAX, &number))
                return kim_cli_usage_error (self->cmd, "--window: must be 1..%d", KIM_WINDOW_MAX);
            self->window = (uint32_t) number;
        }
    }
    if (args.failed)
        return KIM_EXIT_USAGE;
    if (!self->action)
        return kim_cli_usage_error (self->cmd, "say what to do: verify, replay, export, case or "
                                    "trace");
    if (f->from_seq && f->to_seq && f->from_seq > f->to_seq)
        return kim_cli_usage_error (self->cmd, "--from is after --to");
    int rc;
    if (streq (self->action, "trace")) {
        if (!trace_id || !kim_id_valid (trace_id))
            return kim_cli_usage_error (self->cmd, "trace needs a message id: kim audit trace "
                                        "MSG_ID --data DIR ...");
        if (trace->source_count == 0)
            return kim_cli_usage_error (self->cmd, "trace needs the logs to read: --data DIR "
                                        "or --endpoint URL, once per broker");
        if (self->data || self->from_export || f->from_seq || f->to_seq || f->from_time
        ||  f->to_time || f->case_id [0] || f->org [0] || f->kind)
            return kim_cli_usage_error (self->cmd, "trace reads and verifies whole logs: give "
                                        "only sources after `trace MSG_ID`");
        trace->msg_id = trace_id;
        rc = s_do_trace (self, trace);
    }
    else
    if (streq (self->action, "verify")) {
        if (f->case_id [0] || f->org [0] || f->type [0] || f->kind || f->from_time || f->to_time)
            return kim_cli_usage_error (self->cmd, "verify checks the whole chain: only --from "
                                        "and --to narrow it");
        rc = s_do_verify (self);
    }
    else
    if (self->from_export)
        return kim_cli_usage_error (self->cmd, "--from-export goes with verify");
    else
    if (streq (self->action, "replay") || streq (self->action, "export"))
        rc = s_do_replay (self);
    else
    if (streq (self->action, "case")) {
        if (!self->case_id || !kim_id_valid (self->case_id))
            return kim_cli_usage_error (self->cmd, "case needs a case id: kim audit case ID");
        kim_str_copy (f->case_id, sizeof f->case_id, self->case_id);
        rc = s_do_case (self);
    }
    else
        return kim_cli_usage_error (self->cmd, "unknown action '%s' (verify, replay, export, "
                                    "case, trace)", self->action);
    kim_buf_free (&self->out);
    return rc;
}
