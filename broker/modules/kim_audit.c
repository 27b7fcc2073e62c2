/*  kim_audit.c — accountability: signed checkpoints and logged log reads.

    Owns the broker's Ed25519 signing key, the checkpoint schedule and the
    auditors' open queries. It exists so that the log can prove itself:
    every few thousand records or seconds the `tick` hook appends a
    checkpoint record that signs the head of the hash chain (kim_log.h
    defines the format), and so that reading the log is itself on the log
    (§ 79 (4) SGB X): every QUERY is appended as an AUDIT_READ record and
    synced before its first RECORD goes out.

    Queries stream with flow control: a query holds credit (the window the
    auditor granted) and a cursor; RECORDs go out while credit lasts, then
    the query waits for a QUERY continuation with more. A query therefore
    costs a few hundred bytes however long the log, and never puts more
    than `window` RECORDs on the wire ahead of the auditor. A query reads
    up to the log's head as it was when the query was logged (its own
    AUDIT_READ record is the last it can return).

    The server does not tell modules when a session ends, so queries of a
    vanished auditor are forgotten after KIM_AUDIT_QUERY_IDLE_MS.
*/
#include <assert.h>
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim/kim_log.h"
#include "kim_audit.h"
#include "kim_keys.h"

//  The store's record kinds are the log format's
_Static_assert (KIM_RECORD_MESSAGE == KIM_LOG_MESSAGE && KIM_RECORD_CHECKPOINT == KIM_LOG_CHECKPOINT
                && KIM_RECORD_DECISION == KIM_LOG_DECISION && KIM_RECORD_AUDIT_READ == KIM_LOG_AUDIT_READ
                && KIM_RECORD_PURGE == KIM_LOG_PURGE && KIM_RECORD_STATE == KIM_LOG_STATE,
                "record kinds of kim_store.h and kim_log.h differ");

typedef struct {
    char query_id [KIM_ID_MAX + 1];
    uint8_t rid [256];
    size_t rid_size;
    char reader [KIM_ORG_MAX + 1];
    kim_log_filter_t filter;
    uint64_t next_seq;              //  cursor: the next seq to examine
    uint64_t end_seq;               //  the head when the query was logged
    uint32_t credit;                //  RECORDs the auditor still accepts
    uint64_t count;                 //  RECORDs sent
    uint64_t last_active_ms;
} s_query_t;

typedef struct {
    kim_store_t *store;
    uint64_t checkpoint_records;
    uint64_t checkpoint_ms;
    uint8_t secret_key [64];
    char checkpoint_path [PATH_MAX];
    //  The last checkpoint record (committed) and the one the open batch wrote
    uint64_t last_seq;
    uint64_t last_time_ms;
    bool pending;
    uint64_t pending_seq;
    kim_log_checkpoint_t pending_checkpoint;
    //  Open queries
    s_query_t *queries [KIM_AUDIT_QUERIES_MAX];
    uint64_t queries_per_org;       //  broker/queries_per_org, as at start
    //  Scratch for AUDIT_READ and RECORDs
    kim_buf_t buf;
    kim_cmd_t out;
    s_query_t *logging;             //  the query kim_ctx_batch logs
    int refused;                    //  ... and the code it was refused with, or 0
} s_audit_t;


//  --------------------------------------------------------------------------
//  The signing key

//  Writes `text` to `path` atomically: temp file (mode), fsync, rename,
//  fsync the folder.
static int
s_write_file (const char *path, const char *text, mode_t mode)
{
    char temp [PATH_MAX + 8];
    snprintf (temp, sizeof temp, "%s.tmp", path);
    int fd = open (temp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0)
        return -1;
    size_t size = strlen (text);
    bool ok = write (fd, text, size) == (ssize_t) size && fchmod (fd, mode) == 0
           && fsync (fd) == 0;
    ok = close (fd) == 0 && ok;
    if (!ok || rename (temp, path) != 0) {
        unlink (temp);
        return -1;
    }
    char dir [PATH_MAX];
    kim_str_copy (dir, sizeof dir, path);
    char *slash = strrchr (dir, '/');
    if (slash)
        *slash = 0;
    int dir_fd = open (slash? dir: ".", O_RDONLY | O_DIRECTORY);
    if (dir_fd >= 0) {
        fsync (dir_fd);
        close (dir_fd);
    }
    return 0;
}

int
kim_audit_signing_key (const char *keys_dir, uint8_t secret_key [64], char *error,
                       size_t error_size)
{
    char secret_path [PATH_MAX], public_path [PATH_MAX];
    snprintf (secret_path, sizeof secret_path, "%s/broker.sign_secret", keys_dir);
    snprintf (public_path, sizeof public_path, "%s/broker.sign.pub", keys_dir);
    if (zsys_dir_create ("%s", keys_dir) != 0) {
        snprintf (error, error_size, "%s: cannot create the key folder: %s", keys_dir,
                  strerror (errno));
        return -KIM_E_KEY;
    }
    uint8_t public_key [32];
    char line [2 * 64 + 2];
    if (zsys_file_exists (secret_path)) {
        if (!kim_keys_private (secret_path)) {
            snprintf (error, error_size, "%s: the broker's signing key is readable by others; "
                      "run: chmod 600 %s", secret_path, secret_path);
            return -KIM_E_KEY;
        }
        FILE *file = fopen (secret_path, "r");
        if (!file) {
            snprintf (error, error_size, "%s: cannot read the broker's signing key: %s (the "
                      "data folder belongs to the user the broker runs as)", secret_path,
                      strerror (errno));
            return -KIM_E_KEY;
        }
        bool ok = fgets (line, sizeof line, file) != NULL;
        fclose (file);
        line [ok? strcspn (line, "\r\n"): 0] = 0;
        size_t bin_size = 0;
        ok = ok && strlen (line) == 128
          && sodium_hex2bin (secret_key, 64, line, 128, NULL, &bin_size, NULL) == 0
          && bin_size == 64;
        if (!ok) {
            snprintf (error, error_size, "%s: not a signing key (expected 128 hex characters)",
                      secret_path);
            return -KIM_E_KEY;
        }
        crypto_sign_ed25519_sk_to_pk (public_key, secret_key);
        uint8_t stored [32];
        char why [256];
        if (kim_log_load_public_key (public_path, stored, why, sizeof why) == 0
        &&  memcmp (stored, public_key, 32) == 0)
            return 0;
        zsys_warning ("audit: %s missing or not matching the signing key: writing it again",
                      public_path);
    }
    else {
        crypto_sign_keypair (public_key, secret_key);
        sodium_bin2hex (line, sizeof line, secret_key, 64);
        strcat (line, "\n");
        int rc = s_write_file (secret_path, line, 0600);
        sodium_memzero (line, sizeof line);
        if (rc) {
            snprintf (error, error_size, "%s: cannot write the signing key: %s", secret_path,
                      strerror (errno));
            return -KIM_E_KEY;
        }
        zsys_info ("audit: made the broker's signing key %s", secret_path);
    }
    sodium_bin2hex (line, sizeof line, public_key, 32);
    strcat (line, "\n");
    if (s_write_file (public_path, line, 0644)) {
        snprintf (error, error_size, "%s: cannot write the public signing key: %s",
                  public_path, strerror (errno));
        return -KIM_E_KEY;
    }
    return 0;
}


//  --------------------------------------------------------------------------
//  Checkpoints

static int
s_tick_checkpoint (s_audit_t *self, kim_ctx_t *ctx)
{
    kim_store_t *store = kim_ctx_store (ctx);
    uint64_t head = kim_store_head (store);
    uint64_t now = kim_ctx_now (ctx);
    if (head <= self->last_seq)
        return 0;               //  nothing since the last checkpoint
    if (head - self->last_seq < self->checkpoint_records
    &&  now - self->last_time_ms < self->checkpoint_ms && now >= self->last_time_ms)
        return 0;
    kim_log_checkpoint_t *checkpoint = &self->pending_checkpoint;
    memset (checkpoint, 0, sizeof *checkpoint);
    checkpoint->seq = head;
    memcpy (checkpoint->head, kim_store_head_hash (store), KIM_HASH_SIZE);
    checkpoint->time_ms = now;
    kim_log_checkpoint_sign (checkpoint, self->secret_key);
    uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
    kim_log_checkpoint_encode (checkpoint, body);
    uint64_t seq = 0;
    int rc = kim_ctx_record (ctx, KIM_LOG_CHECKPOINT, body, sizeof body, &seq);
    if (rc)
        return rc;
    self->pending = true;
    self->pending_seq = seq;
    return 0;
}

//  The latest checkpoint also lives outside the log, so a cut-off tail shows.
static void
s_save_checkpoint (s_audit_t *self)
{
    uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
    kim_log_checkpoint_encode (&self->pending_checkpoint, body);
    char text [2 * KIM_LOG_CHECKPOINT_SIZE + 2];
    sodium_bin2hex (text, sizeof text, body, sizeof body);
    strcat (text, "\n");
    if (s_write_file (self->checkpoint_path, text, 0644))
        zsys_error ("audit: %s: cannot save the latest checkpoint (seq %" PRIu64 "): %s",
                    self->checkpoint_path, self->pending_checkpoint.seq, strerror (errno));
}


//  --------------------------------------------------------------------------
//  Queries

static void
s_query_destroy (s_audit_t *self, size_t index)
{
    free (self->queries [index]);
    self->queries [index] = NULL;
}

static s_query_t *
s_query_find (s_audit_t *self, const kim_peer_t *peer, const char *query_id, size_t *index)
{
    for (size_t i = 0; i < KIM_AUDIT_QUERIES_MAX; i++) {
        s_query_t *query = self->queries [i];
        if (query && query->rid_size == peer->rid_size
        &&  memcmp (query->rid, peer->rid, peer->rid_size) == 0
        &&  strcmp (query->query_id, query_id) == 0) {
            if (index)
                *index = i;
            return query;
        }
    }
    return NULL;
}

static void
s_reject (kim_ctx_t *ctx, const kim_peer_t *peer, const char *query_id, int code,
          const char *path, const char *text)
{
    kim_cmd_t *reply = (kim_cmd_t *) malloc (sizeof (kim_cmd_t));
    if (!reply)
        return;
    kim_cmd_init (reply, KIM_CMD_REJECT);
    reply->code = code;
    kim_str_copy (reply->msg_id, sizeof reply->msg_id, query_id);
    kim_str_copy (reply->path, sizeof reply->path, path? path: "");
    kim_str_copy (reply->text, sizeof reply->text, text);
    kim_ctx_send (ctx, peer->rid, peer->rid_size, reply);
    free (reply);
}

static void
s_query_end (s_audit_t *self, kim_ctx_t *ctx, size_t index, int code)
{
    s_query_t *query = self->queries [index];
    kim_cmd_init (&self->out, KIM_CMD_QUERY_END);
    kim_str_copy (self->out.query_id, sizeof self->out.query_id, query->query_id);
    self->out.count = query->count;
    self->out.code = code;
    kim_ctx_send (ctx, query->rid, query->rid_size, &self->out);
    if (code)
        zsys_warning ("audit: query %s of %s ended early: %s", query->query_id, query->reader,
                      kim_strerror (-code));
    s_query_destroy (self, index);
}

//  Sends what the query's credit allows. Reads through the open batch when
//  there is one (tick), else in a snapshot of its own.
static void
s_pump (s_audit_t *self, kim_ctx_t *ctx, size_t index)
{
    s_query_t *query = self->queries [index];
    kim_store_t *store = kim_ctx_store (ctx);
    bool snapshot = kim_store_txn (store) == NULL;
    if (snapshot && kim_store_read_begin (store)) {
        s_query_end (self, ctx, index, KIM_E_INTERNAL);
        return;
    }
    int code = 0;
    kim_cmd_t *out = &self->out;
    kim_cmd_init (out, KIM_CMD_RECORD);
    kim_str_copy (out->query_id, sizeof out->query_id, query->query_id);
    for (size_t scanned = 0; query->credit && query->next_seq <= query->end_seq
                             && scanned < KIM_AUDIT_SCAN_MAX; scanned++) {
        kim_record_t record;
        uint64_t seq = query->next_seq++;
        int rc = kim_store_read (store, seq, &record);
        if (rc == -KIM_E_NOT_FOUND)
            continue;
        if (rc) {
            code = KIM_E_INTERNAL;
            break;
        }
        kim_log_record_t view = { record.seq, record.time_ms, record.kind, { 0 },
                                  record.body, record.body_size };
        if (!kim_log_filter_match (&query->filter, &view))
            continue;
        out->seq = record.seq;
        out->time = record.time_ms;
        out->kind = record.kind;
        memcpy (out->hash, record.hash, KIM_HASH_SIZE);
        out->body = record.body;
        out->body_size = record.body_size;
        kim_ctx_send (ctx, query->rid, query->rid_size, out);
        query->credit--;
        query->count++;
    }
    if (snapshot)
        kim_store_read_end (store);
    if (code || query->next_seq > query->end_seq)
        s_query_end (self, ctx, index, code);
}

//  The AUDIT_READ record: who read, with which filter (kim_ctx_batch).
static int
s_log_read (void *arg, kim_ctx_t *ctx)
{
    s_audit_t *self = (s_audit_t *) arg;
    s_query_t *query = self->logging;
    const kim_log_filter_t *f = &query->filter;
    char json [1024];
    int len = snprintf (json, sizeof json, "{\"reader\":\"%s\",\"query_id\":\"%s\"",
                        query->reader, query->query_id);
    if (f->from_seq)
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"from_seq\":%" PRIu64,
                         f->from_seq);
    if (f->to_seq)
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"to_seq\":%" PRIu64,
                         f->to_seq);
    if (f->from_time)
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"from_time\":%" PRIu64,
                         f->from_time);
    if (f->to_time)
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"to_time\":%" PRIu64,
                         f->to_time);
    if (f->case_id [0])
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"case_id\":\"%s\"",
                         f->case_id);
    if (f->org [0])
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"org\":\"%s\"", f->org);
    if (f->type [0])
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"type\":\"%s\"", f->type);
    len += snprintf (json + len, sizeof json - (size_t) len, ",\"window\":%u", query->credit);
    if (self->refused)
        len += snprintf (json + len, sizeof json - (size_t) len, ",\"refused\":\"%s\"",
                         kim_errname (self->refused));
    len += snprintf (json + len, sizeof json - (size_t) len, "}");
    kim_buf_reset (&self->buf);
    int rc = kim_json_to_msgpack (json, (size_t) len, &self->buf);
    if (rc)
        return rc;
    uint64_t seq = 0;
    rc = kim_ctx_record (ctx, KIM_LOG_AUDIT_READ, self->buf.data, self->buf.size, &seq);
    if (rc == 0)
        query->end_seq = seq;
    return rc;
}

//  A QUERY's filters as the query keeps them (and its AUDIT_READ shows them).
static void
s_filter_set (kim_log_filter_t *f, const kim_cmd_t *cmd)
{
    f->from_seq = cmd->from_seq;
    f->to_seq = cmd->to_seq;
    f->from_time = cmd->from_time;
    f->to_time = cmd->to_time;
    kim_str_copy (f->case_id, sizeof f->case_id, cmd->case_id);
    kim_str_copy (f->org, sizeof f->org, cmd->org);
    if (cmd->type != KIM_TYPE_NONE)
        kim_str_copy (f->type, sizeof f->type, kim_type_name (cmd->type));
}

static bool
s_has_filters (const kim_cmd_t *cmd)
{
    return cmd->from_seq || cmd->to_seq || cmd->from_time || cmd->to_time
        || cmd->case_id [0] || cmd->org [0] || cmd->type != KIM_TYPE_NONE;
}

static int
s_command (void *state, kim_ctx_t *ctx, const kim_peer_t *peer, const kim_cmd_t *cmd,
           kim_verdict_t *verdict)
{
    (void) verdict;
    s_audit_t *self = (s_audit_t *) state;
    if (cmd->id != KIM_CMD_QUERY)
        return -KIM_E_UNKNOWN_CMD;
    if (peer->org->role != KIM_ROLE_AUDITOR) {
        char text [KIM_TEXT_MAX + 1];
        snprintf (text, sizeof text, "role %s may not read the log; QUERY is for auditors",
                  kim_role_name (peer->org->role));
        //  A refused read is an attempt the auditor must see (§ 79 (4) SGB
        //  X asks who tried to read, not only who read): logged like a
        //  read, with the code it got. The session's rate limit bounds them.
        s_query_t refused;
        memset (&refused, 0, sizeof refused);
        kim_str_copy (refused.query_id, sizeof refused.query_id, cmd->query_id);
        kim_str_copy (refused.reader, sizeof refused.reader, peer->org->id);
        s_filter_set (&refused.filter, cmd);
        refused.credit = cmd->window;
        self->logging = &refused;
        self->refused = KIM_E_FORBIDDEN;
        int rc = kim_ctx_batch (ctx, s_log_read, self);
        self->logging = NULL;
        self->refused = 0;
        if (rc)
            zsys_error ("audit: cannot log the refused query %s of %s: %s", refused.query_id,
                        refused.reader, kim_strerror (rc));
        else
            zsys_info ("audit: %s may not read the log (query %s refused, logged)",
                       refused.reader, refused.query_id);
        s_reject (ctx, peer, cmd->query_id, KIM_E_FORBIDDEN, "cmd", text);
        return 0;
    }
    size_t index;
    s_query_t *query = s_query_find (self, peer, cmd->query_id, &index);
    if (query) {
        //  A continuation: more credit, nothing else
        if (s_has_filters (cmd)) {
            s_reject (ctx, peer, cmd->query_id, KIM_E_BAD_VALUE, NULL,
                      "a QUERY continuing an open query carries query_id and window only");
            return 0;
        }
        uint64_t credit = (uint64_t) query->credit + cmd->window;
        query->credit = credit > KIM_WINDOW_MAX? KIM_WINDOW_MAX: (uint32_t) credit;
        query->last_active_ms = kim_ctx_now (ctx);
        s_pump (self, ctx, index);
        return 0;
    }
    //  One auditor must not hold every slot: each organisation has its share.
    uint64_t own = 0;
    for (index = 0; index < KIM_AUDIT_QUERIES_MAX; index++)
        if (self->queries [index] && streq (self->queries [index]->reader, peer->org->id))
            own++;
    if (own >= self->queries_per_org) {
        char text [KIM_TEXT_MAX + 1];
        snprintf (text, sizeof text, "%s has %" PRIu64 " open queries, its limit "
                  "(queries_per_org); finish one first", peer->org->id, own);
        s_reject (ctx, peer, cmd->query_id, KIM_E_ORG_LIMIT, NULL, text);
        return 0;
    }
    for (index = 0; index < KIM_AUDIT_QUERIES_MAX && self->queries [index]; index++)
        ;
    if (index == KIM_AUDIT_QUERIES_MAX) {
        s_reject (ctx, peer, cmd->query_id, KIM_E_BUSY, NULL,
                  "too many open queries; finish one first");
        return 0;
    }
    query = (s_query_t *) calloc (1, sizeof (s_query_t));
    if (!query || peer->rid_size > sizeof query->rid) {
        free (query);
        s_reject (ctx, peer, cmd->query_id, KIM_E_BUSY, NULL, "out of memory");
        return 0;
    }
    kim_str_copy (query->query_id, sizeof query->query_id, cmd->query_id);
    memcpy (query->rid, peer->rid, peer->rid_size);
    query->rid_size = peer->rid_size;
    kim_str_copy (query->reader, sizeof query->reader, peer->org->id);
    kim_log_filter_t *f = &query->filter;
    s_filter_set (f, cmd);
    query->credit = cmd->window;
    query->next_seq = cmd->from_seq? cmd->from_seq: 1;
    query->last_active_ms = kim_ctx_now (ctx);

    //  Logged and synced before the first RECORD goes out
    self->logging = query;
    int rc = kim_ctx_batch (ctx, s_log_read, self);
    self->logging = NULL;
    if (rc) {
        zsys_error ("audit: cannot log the query %s of %s: %s; refused", query->query_id,
                    query->reader, kim_strerror (rc));
        free (query);
        s_reject (ctx, peer, cmd->query_id, -rc, NULL, "the read could not be logged");
        return 0;
    }
    if (f->to_seq && f->to_seq < query->end_seq)
        query->end_seq = f->to_seq;
    zsys_info ("audit: %s reads the log (query %s, seq %" PRIu64 "..%" PRIu64 "%s%s%s%s)",
               query->reader, query->query_id, query->next_seq, query->end_seq,
               f->case_id [0]? ", case ": "", f->case_id, f->org [0]? ", org ": "", f->org);
    self->queries [index] = query;
    s_pump (self, ctx, index);
    return 0;
}


//  --------------------------------------------------------------------------
//  Hooks

static int
s_tick (void *state, kim_ctx_t *ctx)
{
    s_audit_t *self = (s_audit_t *) state;
    uint64_t now = kim_ctx_now (ctx);
    for (size_t i = 0; i < KIM_AUDIT_QUERIES_MAX; i++) {
        s_query_t *query = self->queries [i];
        if (!query)
            continue;
        if (now - query->last_active_ms > KIM_AUDIT_QUERY_IDLE_MS) {
            zsys_info ("audit: query %s of %s idle for %d s: forgotten", query->query_id,
                       query->reader, KIM_AUDIT_QUERY_IDLE_MS / 1000);
            s_query_destroy (self, i);
        }
        else
        if (query->credit)
            s_pump (self, ctx, i);      //  a long scan goes on where it stopped
    }
    return s_tick_checkpoint (self, ctx);
}

//  The reader's session is gone: its open queries go with it.
static void
s_session_end (void *state, const uint8_t *rid, size_t rid_size)
{
    s_audit_t *self = (s_audit_t *) state;
    for (size_t i = 0; i < KIM_AUDIT_QUERIES_MAX; i++) {
        s_query_t *query = self->queries [i];
        if (query && query->rid_size == rid_size && memcmp (query->rid, rid, rid_size) == 0)
            s_query_destroy (self, i);
    }
}

static void
s_committed (void *state)
{
    s_audit_t *self = (s_audit_t *) state;
    if (!self->pending)
        return;
    self->pending = false;
    self->last_seq = self->pending_seq;
    self->last_time_ms = self->pending_checkpoint.time_ms;
    //  The file must not claim records a power cut may still take back (it
    //  would read as a log cut short): the commit that holds the checkpoint,
    //  and records of the same batch it covers, is made durable first. One
    //  flush more a checkpoint (kim_store.h, Durability). A failed sync
    //  fails the store closed; the file then keeps the checkpoint before.
    if (kim_store_sync (self->store) == 0)
        s_save_checkpoint (self);
}

static void
s_aborted (void *state)
{
    ((s_audit_t *) state)->pending = false;
}

static void
s_destroy (void **state_p)
{
    s_audit_t *self = (s_audit_t *) *state_p;
    if (!self)
        return;
    for (size_t i = 0; i < KIM_AUDIT_QUERIES_MAX; i++)
        s_query_destroy (self, i);
    sodium_memzero (self->secret_key, sizeof self->secret_key);
    kim_buf_free (&self->buf);
    free (self);
    *state_p = NULL;
}

//  The audit section: the checkpoint schedule, every key known.
static int
s_configure (const kim_config_t *config, uint64_t *records, uint64_t *seconds, char *error,
             size_t error_size)
{
    zconfig_t *tree = (zconfig_t *) kim_config_tree (config);
    zconfig_t *section = tree? zconfig_locate (tree, "audit"): NULL;
    for (zconfig_t *key = section? zconfig_child (section): NULL; key; key = zconfig_next (key))
        if (!streq (zconfig_name (key), "checkpoint_records")
        &&  !streq (zconfig_name (key), "checkpoint_seconds")) {
            snprintf (error, error_size, "audit/%s: unknown key (expected checkpoint_records, "
                      "checkpoint_seconds)", zconfig_name (key));
            return -KIM_E_CONFIG;
        }
    *records = KIM_AUDIT_RECORDS_DEFAULT;
    *seconds = KIM_AUDIT_SECONDS_DEFAULT;
    int rc = kim_config_number (tree, "audit/checkpoint_records", 1, 100000000, records, error, error_size);
    if (rc == 0)
        rc = kim_config_number (tree, "audit/checkpoint_seconds", 1, 86400, seconds, error, error_size);
    return rc;
}

int
kim_audit_check_config (const kim_config_t *config, char *error, size_t error_size)
{
    uint64_t records, seconds;
    return s_configure (config, &records, &seconds, error, error_size);
}

int
kim_audit_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size)
{
    uint64_t records, seconds;
    int rc = s_configure (env->config, &records, &seconds, error, error_size);
    if (rc)
        return rc;

    s_audit_t *self = (s_audit_t *) calloc (1, sizeof (s_audit_t));
    if (!self) {
        snprintf (error, error_size, "audit: out of memory");
        return -KIM_E_NOMEM;
    }
    self->store = env->store;
    self->checkpoint_records = records;
    self->queries_per_org = env->config->org_queries;
    self->checkpoint_ms = seconds * 1000;
    kim_buf_init (&self->buf);
    rc = kim_audit_signing_key (env->keys_dir, self->secret_key, error, error_size);
    if (rc) {
        free (self);
        return rc;
    }
    snprintf (self->checkpoint_path, sizeof self->checkpoint_path, "%s/" KIM_LOG_CHECKPOINT_FILE,
              env->config->data);
    //  Where the chain was last sealed: a log that ends in a checkpoint needs
    //  none now; otherwise the first tick seals what is there.
    if (kim_store_read_begin (env->store) == 0) {
        uint64_t head = kim_store_head (env->store);
        kim_record_t record;
        if (head && kim_store_read (env->store, head, &record) == 0
        &&  record.kind == KIM_LOG_CHECKPOINT) {
            self->last_seq = head;
            self->last_time_ms = record.time_ms;
        }
        kim_store_read_end (env->store);
    }
    *hook = (kim_hook_t) {
        .name = "audit",
        .command = s_command,
        .tick = s_tick,
        .committed = s_committed,
        .aborted = s_aborted,
        .session_end = s_session_end,
        .destroy = s_destroy,
        .state = self,
    };
    return 0;
}


//  --------------------------------------------------------------------------
//  Self-test

void
kim_audit_test (bool verbose)
{
    assert (sodium_init () >= 0);
    char dir [] = "/tmp/kim-audit-test-XXXXXX";
    assert (mkdtemp (dir));
    char error [512];
    uint8_t first [64], again [64];
    //  First start makes the pair; the second loads the same key
    assert (kim_audit_signing_key (dir, first, error, sizeof error) == 0);
    assert (kim_audit_signing_key (dir, again, error, sizeof error) == 0);
    assert (memcmp (first, again, 64) == 0);
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/broker.sign.pub", dir);
    uint8_t public_key [32];
    assert (kim_log_load_public_key (path, public_key, error, sizeof error) == 0);
    assert (memcmp (public_key, first + 32, 32) == 0);
    //  A checkpoint signed with it verifies with the public file
    kim_log_checkpoint_t checkpoint = { .seq = 7, .time_ms = 1 };
    kim_log_checkpoint_sign (&checkpoint, first);
    assert (kim_log_checkpoint_verify (&checkpoint, public_key));
    //  A secret file others can read is refused, naming the file
    snprintf (path, sizeof path, "%s/broker.sign_secret", dir);
    assert (chmod (path, 0644) == 0);
    assert (kim_audit_signing_key (dir, again, error, sizeof error) == -KIM_E_KEY);
    assert (strstr (error, "broker.sign_secret") && strstr (error, "readable by others"));
    unlink (path);
    snprintf (path, sizeof path, "%s/broker.sign.pub", dir);
    unlink (path);
    rmdir (dir);

    //  Bad settings are refused before anything is opened, naming the key
    const char *bad [][2] = {
        { "audit\n    checkpoint_record = 5\n", "audit/checkpoint_record: unknown key" },
        { "audit\n    checkpoint_seconds = 0\n", "audit/checkpoint_seconds: '0' must be a whole number 1..86400" },
        { "audit\n    checkpoint_records = 1x\n", "audit/checkpoint_records: '1x'" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++) {
        int err = 0;
        kim_config_t *config = kim_config_parse (bad [i][0], error, sizeof error, &err);
        assert (config);
        kim_module_env_t env = { config, NULL, "/nonexistent", NULL };
        kim_hook_t hook;
        error [0] = 0;
        assert (kim_audit_new (&env, &hook, error, sizeof error) == -KIM_E_CONFIG);
        if (verbose)
            printf ("  %s\n", error);
        assert (strstr (error, bad [i][1]));
        kim_config_destroy (&config);
    }
}
