/*  kim_cmd_audit_source.c — where `kim audit` reads records from: the
    broker's store offline (read-only, through the public log module), the
    broker online (QUERY as an auditor, granting credit as RECORDs are
    consumed), or an export's JSON lines (whose `body` must be what its
    `raw` bytes decode to). Part of the audit command (kim_cmd_audit_int.h).
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

#include "kim_cmd_audit_int.h"

//  --------------------------------------------------------------------------
//  Sources: the store, the broker, an export

//  Passes the records from `from` to the end of a new snapshot (or to the
//  filter's last seq) to `fn`, until it returns non-zero (*stop). Sets
//  *last to the last seq read and *ended when the snapshot's end was
//  reached. Returns 0 or -KIM_E_*.
static int
s_read_from (kim_audit_t *self, kim_log_t *log, uint64_t from, kim_audit_record_fn *fn,
             uint64_t *last, bool *ended, int *stop)
{
    int rc = kim_log_seek (log, from, NULL);
    kim_log_record_t record;
    *ended = false;
    while (rc == 0 && *stop == 0) {
        int more = kim_log_next (log, &record);
        if (more == 0) {
            *ended = true;
            break;
        }
        if (more < 0) {
            //  A malformed record is something to report, not to skip
            record.kind = 0;
            record.body = NULL;
            record.body_size = 0;
            memset (record.hash, 0, sizeof record.hash);
        }
        if (self->filter.to_seq && record.seq > self->filter.to_seq)
            break;
        if (record.seq > *last)
            *last = record.seq;
        if (more < 0 || kim_log_filter_match (&self->filter, &record))
            *stop = fn (self, &record);
    }
    return rc;
}

static int
s_each_offline (kim_audit_t *self, kim_audit_record_fn *fn)
{
    char why [512];
    kim_log_t *log = kim_log_open (self->data, why, sizeof why);
    if (!log)
        return kim_cli_error (self->cmd, "%s", why);
    uint64_t from = self->filter.from_seq? self->filter.from_seq: 1, last = 0;
    bool ended = false;
    int stop = 0;
    int rc = s_read_from (self, log, from, fn, &last, &ended, &stop);
    //  The broker's latest checkpoint, kept outside the log
    char path [4200];
    snprintf (path, sizeof path, "%s/" KIM_LOG_CHECKPOINT_FILE, self->data);
    self->have_outside = rc == 0 && stop == 0
                      && kim_log_load_checkpoint_file (path, &self->outside) == 0;
    //  A running broker saves the file once the records it covers are
    //  committed: records beyond this snapshot came since, and a new
    //  snapshot, taken after the file was read, holds them
    if (self->have_outside && ended && self->outside.seq > last)
        rc = s_read_from (self, log, last + 1 > from? last + 1: from, fn, &last, &ended,
                          &stop);
    self->have_outside = self->have_outside && rc == 0 && stop == 0;
    kim_log_record_t record;
    if (self->have_outside && kim_log_get (log, self->outside.seq, &record) == 0) {
        memcpy (self->outside_hash, record.hash, KIM_HASH_SIZE);
        self->have_outside_hash = true;
    }
    kim_log_close (&log);
    if (rc)
        kim_cli_error (self->cmd, "%s: cannot read the log: %s", self->data, kim_strerror (rc));
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
s_each_online (kim_audit_t *self, kim_audit_record_fn *fn)
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
s_each_export (kim_audit_t *self, kim_audit_record_fn *fn)
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

int
kim_audit_i_each (kim_audit_t *self, kim_audit_record_fn *fn)
{
    if (self->from_export)
        return s_each_export (self, fn);
    return self->data? s_each_offline (self, fn): s_each_online (self, fn);
}
