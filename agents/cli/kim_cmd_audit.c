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
    "\n"
    "Options:\n"
    "  --data DIR          read the log from the broker's data folder (offline)\n"
    "  --sign-key FILE     the broker's public signing key (default DIR/keys/broker.sign.pub\n"
    "                      offline, " KIM_DEFAULT_KEY_DIR "/broker.sign.pub online)\n"
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
    "  kim audit verify --from-export log.jsonl --sign-key broker.sign.pub\n";

typedef struct {
    const char *cmd;
    const char *action;
    const char *case_id;
    const char *data;
    const char *sign_key;
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
    int rc = s_each (self, s_verify_record);
    if (rc && !s_verify.failed)
        return rc;
    if (!s_verify.failed && self->have_outside)
        kim_log_verify_end (&s_verify, &self->outside,
                            self->have_outside_hash? self->outside_hash: NULL);
    if (s_verify.failed) {
        printf ("FAILED at seq %" PRIu64 ": %s\n", s_verify.bad_seq, s_verify.why);
        if (s_verify.records)
            printf ("records %" PRIu64 "..%" PRIu64 " before it verify\n",
                    s_verify.last - s_verify.records + 1, s_verify.last);
        return KIM_EXIT_REJECTED;
    }
    char key_id [KIM_LOG_KEY_ID_SIZE + 1];
    kim_log_key_id (public_key, key_id);
    if (s_verify.records == 0) {
        printf ("OK: no records in the range\n");
        return KIM_EXIT_OK;
    }
    uint64_t first = s_verify.last - s_verify.records + 1;
    printf ("OK: records %" PRIu64 "..%" PRIu64 " verified (%" PRIu64 " records, %" PRIu64
            " checkpoints signed by key %s)", first, s_verify.last, s_verify.records,
            s_verify.checkpoints, key_id);
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
                return kim_cli_args_unknown (&args);
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
        if (kim_cli_args_is (&args, "--sign-key"))
            self->sign_key = value;
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
        return kim_cli_usage_error (self->cmd, "say what to do: verify, replay, export or case");
    if (f->from_seq && f->to_seq && f->from_seq > f->to_seq)
        return kim_cli_usage_error (self->cmd, "--from is after --to");
    int rc;
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
                                    "case)", self->action);
    kim_buf_free (&self->out);
    return rc;
}
