/*  kim_store.c — the broker's durable store on LMDB.

    Owns the LMDB environment: the hash-chained log, payloads kept apart from
    the log (so they can be purged while the chain still verifies), the
    mailboxes, and the de-duplication index. It exists so that everything the
    broker promises about durability is decided in one place: a write batch
    is one LMDB write transaction, committed and synced once per turn of the
    server loop (group commit), and a commit that fails for any reason but a
    full map fails the store closed.

    Layout of a log record value (key: seq as u64 big-endian):
        [u8 format = 1][u8 kind][u64 time_ms BE][32-byte hash][body...]
    hash = BLAKE2b-256 (prev_hash || format || kind || seq BE || time_ms BE
    || body); the first record's prev_hash is 32 zero bytes. The one definition
    of this format is include/kim/kim_log.h (proto/kim_log.c), which the
    audit tools read with; the store writes through it.

    One writer process: the writer holds an exclusive flock() on
    <path>/broker.lock for as long as the store is open. LMDB itself allows
    only one write transaction at a time, but two brokers appending in turn
    would each keep their own idea of the head and interleave two chains.

    Payloads at rest are encrypted, each under a key of its own, so that
    an erasure is final (crypto-shredding): kim_store_payload.c. With
    store/journal, a journal in front of LMDB makes commits durable with
    one flush: kim_store_journal.c.

    The reads served from the committed snapshot are in kim_store_read.c;
    what the two files share is kim_store_int.h.
*/
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim_store_int.h"

static const char *s_db_names [KIM_DB_COUNT] = {
#define KIM_X_NAME(name, str) str,
    KIM_STORE_DBS (KIM_X_NAME)
#undef KIM_X_NAME
};


//  --------------------------------------------------------------------------
//  Small helpers

static size_t
s_round_up (size_t size, size_t unit)
{
    if (size % unit == 0)
        return size;
    if (size > SIZE_MAX - unit)
        return SIZE_MAX - SIZE_MAX % unit;
    return size + unit - size % unit;
}

//  An LMDB failure while reading: logged, reported, the store stays usable.
int
kim_store_i_read_error (kim_store_t *self, int rc, const char *what)
{
    zsys_error ("kim_store: %s: %s: %s", self->path, what, mdb_strerror (rc));
    return rc == ENOMEM? -KIM_E_NOMEM: -KIM_E_IO;
}

//  An LMDB failure inside a write batch. A full map or transaction is an
//  expected event: the batch is marked full and kim_store_commit grows the
//  map. Anything else (I/O error, corruption, LMDB panic) leaves the write
//  transaction unusable and may mean the disk is failing, so the store
//  fails closed.
int
kim_store_i_write_error (kim_store_t *self, int rc, const char *what)
{
    if (rc == MDB_MAP_FULL) {
        if (!self->batch_full)
            zsys_warning ("kim_store: %s: map full at %zu bytes (%s)",
                          self->path, self->map_size, what);
        self->batch_full = true;
        return -KIM_E_STORE_FULL;
    }
    if (rc == MDB_TXN_FULL) {
        zsys_error ("kim_store: %s: %s: %s (batch too large)",
                    self->path, what, mdb_strerror (rc));
        self->batch_full = true;
        self->batch_growable = false;
        return -KIM_E_STORE_FULL;
    }
    zsys_error ("kim_store: %s: %s: %s; store fails closed",
                self->path, what, mdb_strerror (rc));
    self->failed = true;
    return -KIM_E_STORE_FAILED;
}

//  Checks that a write may go into the open batch.
int
kim_store_i_writable (kim_store_t *self, const char *what)
{
    if (!self->txn) {
        zsys_error ("kim_store: %s: %s outside a write batch", self->path, what);
        return -KIM_E_ARGS;
    }
    if (self->failed)
        return -KIM_E_STORE_FAILED;
    if (self->batch_full)
        return -KIM_E_STORE_FULL;
    return 0;
}

//  Builds `org` NUL seq(BE) into `key`; returns the key size or 0 if the
//  org is empty or too long for an LMDB key.
size_t
kim_store_i_mailbox_key (kim_store_t *self, const char *org, uint64_t seq, uint8_t *key)
{
    size_t org_size = org? strlen (org): 0;
    if (org_size == 0 || org_size + 9 > self->key_max)
        return 0;
    memcpy (key, org, org_size);
    key [org_size] = 0;
    kim_log_put_be64 (key + org_size + 1, seq);
    return org_size + 9;
}



//  --------------------------------------------------------------------------
//  Read snapshot

//  Makes the reusable read transaction current. When a writer in another
//  process grew the map past ours, LMDB says MDB_MAP_RESIZED: adopt the new
//  size and try once more.
int
kim_store_i_snapshot_start (kim_store_t *self)
{
    if (self->rtxn_live)
        return 0;
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (self->rtxn)
            rc = mdb_txn_renew (self->rtxn);
        else
            rc = mdb_txn_begin (self->env, NULL, MDB_RDONLY, &self->rtxn);
        if (rc != MDB_MAP_RESIZED)
            break;
        int rc2 = mdb_env_set_mapsize (self->env, 0);
        if (rc2)
            return kim_store_i_read_error (self, rc2, "adopting the grown map");
    }
    if (rc)
        return kim_store_i_read_error (self, rc, "starting a read snapshot");
    self->rtxn_live = true;
    return 0;
}

void
kim_store_i_snapshot_end (kim_store_t *self)
{
    if (self->rtxn_live) {
        mdb_txn_reset (self->rtxn);
        self->rtxn_live = false;
    }
}

//  The transaction reads go through: the batch when one is open (so reads
//  see its writes), else the read snapshot, started if need be.
int
kim_store_i_reader (kim_store_t *self, MDB_txn **txn_p)
{
    if (self->txn) {
        *txn_p = self->txn;
        return 0;
    }
    int rc = kim_store_i_snapshot_start (self);
    if (rc)
        return rc;
    *txn_p = self->rtxn;
    return 0;
}

//  Parses a record value; never trusts its size.
int
kim_store_i_parse_record (kim_store_t *self, uint64_t seq, const MDB_val *value, kim_record_t *record)
{
    const uint8_t *bytes = (const uint8_t *) value->mv_data;
    kim_log_record_t parsed;
    if (kim_log_record_parse (seq, bytes, value->mv_size, &parsed)) {
        zsys_error ("kim_store: %s: record %" PRIu64 " is malformed (%zu bytes, format %u)",
                    self->path, seq, value->mv_size, value->mv_size? (unsigned) bytes [0]: 0);
        return -KIM_E_IO;
    }
    record->seq = seq;
    record->kind = parsed.kind;
    record->time_ms = parsed.time_ms;
    memcpy (record->hash, parsed.hash, KIM_HASH_SIZE);
    record->body_size = parsed.body_size;
    record->body = parsed.body;
    return 0;
}

//  Finds the head (last seq and its hash) in `txn`.
int
kim_store_i_load_head (kim_store_t *self, MDB_txn *txn)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, self->dbi [KIM_DB_LOG], &cursor);
    if (rc)
        return kim_store_i_read_error (self, rc, "opening a log cursor");
    MDB_val key, value;
    rc = mdb_cursor_get (cursor, &key, &value, MDB_LAST);
    if (rc == MDB_NOTFOUND) {
        mdb_cursor_close (cursor);
        self->head = 0;
        memset (self->head_hash, 0, KIM_HASH_SIZE);
        return 0;
    }
    if (rc) {
        mdb_cursor_close (cursor);
        return kim_store_i_read_error (self, rc, "reading the last log record");
    }
    if (key.mv_size != 8) {
        mdb_cursor_close (cursor);
        zsys_error ("kim_store: %s: last log key is malformed (%zu bytes)",
                    self->path, key.mv_size);
        return -KIM_E_IO;
    }
    uint64_t seq = kim_log_get_be64 ((const uint8_t *) key.mv_data);
    kim_record_t record;
    rc = kim_store_i_parse_record (self, seq, &value, &record);
    mdb_cursor_close (cursor);
    if (rc)
        return rc;
    self->head = seq;
    memcpy (self->head_hash, record.hash, KIM_HASH_SIZE);
    return 0;
}


//  --------------------------------------------------------------------------
//  Mailbox sizes

static void
s_mailbox_free (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}

kim_store_mailbox_t *
kim_store_i_mailbox_lookup (kim_store_t *self, const char *org, bool create)
{
    kim_store_mailbox_t *mailbox = (kim_store_mailbox_t *) zhashx_lookup (self->mailboxes, org);
    if (mailbox || !create)
        return mailbox;
    size_t org_size = strlen (org);
    mailbox = (kim_store_mailbox_t *) calloc (1, sizeof (kim_store_mailbox_t) + org_size + 1);
    if (!mailbox)
        return NULL;
    memcpy (mailbox->org, org, org_size + 1);
    //  The entry's own copy of the name is the key (no key duplicator)
    if (zhashx_insert (self->mailboxes, mailbox->org, mailbox)) {
        free (mailbox);
        return NULL;
    }
    return mailbox;
}

uint64_t
kim_store_i_mailbox_size (const kim_store_mailbox_t *mailbox)
{
    if (mailbox->delta < 0 && (uint64_t) -mailbox->delta > mailbox->count)
        return 0;
    return mailbox->count + (uint64_t) mailbox->delta;
}

//  Finds or creates org's entry and makes room to list it as touched, so
//  that the LMDB write that follows cannot be left uncounted.
static int
s_mailbox_prepare (kim_store_t *self, const char *org, kim_store_mailbox_t **mailbox_p)
{
    kim_store_mailbox_t *mailbox = kim_store_i_mailbox_lookup (self, org, true);
    if (!mailbox)
        return -KIM_E_NOMEM;
    if (!mailbox->touched && self->touched_size == self->touched_max) {
        size_t max = self->touched_max? self->touched_max * 2: 64;
        kim_store_mailbox_t **touched = (kim_store_mailbox_t **) realloc (self->touched, max * sizeof (*touched));
        if (!touched)
            return -KIM_E_NOMEM;
        self->touched = touched;
        self->touched_max = max;
    }
    *mailbox_p = mailbox;
    return 0;
}

static void
s_mailbox_change (kim_store_t *self, kim_store_mailbox_t *mailbox, int64_t delta)
{
    if (!mailbox->touched) {
        mailbox->touched = true;
        self->touched [self->touched_size++] = mailbox;
    }
    mailbox->delta += delta;
}

//  Ends the batch for the mailbox sizes: applies (commit) or forgets
//  (abort) its changes; empty mailboxes leave the table.
static void
s_mailbox_settle (kim_store_t *self, bool apply)
{
    for (size_t i = 0; i < self->touched_size; i++) {
        kim_store_mailbox_t *mailbox = self->touched [i];
        if (apply)
            mailbox->count = kim_store_i_mailbox_size (mailbox);
        mailbox->delta = 0;
        mailbox->touched = false;
        if (mailbox->count == 0)
            zhashx_delete (self->mailboxes, mailbox->org);
    }
    self->touched_size = 0;
}

//  Counts every mailbox at open: one pass over the mailbox DB.
static int
s_mailbox_count_all (kim_store_t *self, MDB_txn *txn)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, self->dbi [KIM_DB_MAILBOX], &cursor);
    if (rc)
        return kim_store_i_read_error (self, rc, "opening a mailbox cursor");
    kim_store_mailbox_t *mailbox = NULL;
    size_t malformed = 0;
    MDB_val key, value;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_FIRST);
         rc == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        const uint8_t *bytes = (const uint8_t *) key.mv_data;
        size_t org_size = key.mv_size >= 10? key.mv_size - 9: 0;
        if (org_size == 0 || bytes [org_size] != 0
        ||  memchr (bytes, 0, org_size) || org_size >= S_KEY_BUF) {
            malformed++;
            continue;
        }
        //  Keys are sorted, so one org's entries come together
        if (!mailbox || strlen (mailbox->org) != org_size
        ||  memcmp (mailbox->org, bytes, org_size) != 0) {
            char org [S_KEY_BUF];
            memcpy (org, bytes, org_size);
            org [org_size] = 0;
            mailbox = kim_store_i_mailbox_lookup (self, org, true);
            if (!mailbox) {
                mdb_cursor_close (cursor);
                return -KIM_E_NOMEM;
            }
        }
        mailbox->count++;
    }
    mdb_cursor_close (cursor);
    if (rc != MDB_NOTFOUND)
        return kim_store_i_read_error (self, rc, "counting mailboxes");
    if (malformed)
        zsys_warning ("kim_store: %s: %zu malformed mailbox keys ignored",
                      self->path, malformed);
    return 0;
}


//  --------------------------------------------------------------------------
//  Opening and closing

//  Takes the writer's lock: a second broker on the same store would chain
//  its own records to a head it does not share.
static int
s_lock (kim_store_t *self)
{
    char *lock_path = zsys_sprintf ("%s/%s", self->path, KIM_STORE_LOCK_NAME);
    if (!lock_path)
        return -KIM_E_NOMEM;
    self->lock_fd = open (lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (self->lock_fd == -1) {
        zsys_error ("kim_store: cannot open %s: %s", lock_path, strerror (errno));
        zstr_free (&lock_path);
        return -KIM_E_IO;
    }
    if (flock (self->lock_fd, LOCK_EX | LOCK_NB) == -1) {
        int err = errno;
        if (err == EWOULDBLOCK)
            zsys_error ("kim_store: %s is in use: another broker holds %s",
                        self->path, lock_path);
        else
            zsys_error ("kim_store: cannot lock %s: %s", lock_path, strerror (err));
        zstr_free (&lock_path);
        return err == EWOULDBLOCK? -KIM_E_BUSY: -KIM_E_IO;
    }
    zstr_free (&lock_path);
    return 0;
}

//  The store's format version, meta "version" (u32 BE), apart from the
//  record format byte: it changes whenever the layout of the named DBs
//  does. Version 1 stores (written before the key existed) carry "format"
//  only; a writer migrates an older store step by step inside the opening
//  transaction, so a migration is all or nothing. A store newer than this
//  broker is refused: its layout may mean something this code does not know.
//    1 -> 2: the layout is unchanged; the store now names its version.
//    2 -> 3: payloads are encrypted at rest from META "keys_from" on (the
//            key store is made, and keys_from recorded, right after the
//            opening transaction); an older broker would hand them out
//            still encrypted, so it must refuse the store.
//    3 -> 4: payload keys come from a pool (at-rest version 2, which an
//            older broker cannot open), and msg_ids expire by walking the
//            log: DEDUP_AGE is emptied (kim_store_dedup.c).
//    4 -> 5: timers are store groups (kim_store_group.c), which an older
//            broker skips (they would never fire), and the message that
//            opens a case is not in CASE_SEQ (an older broker's retention
//            would keep its payload). Nothing to migrate: earlier entries
//            are still read.
//    5 -> 6: the referral index (REFERRAL_BY) is keyed by seqs, not ids
//            (kim_lifecycle_int.h), which an older broker would misread.
//            Nothing to migrate here: the life cycle builds the index anew
//            at its first start (kim_lc_reindex.c).
//    6 -> 7: REFERRAL maps a referral's id to the seq that opened it and
//            keeps its state under that seq (kim_lifecycle_int.h), which
//            an older broker would misread. Nothing to migrate here: the
//            life cycle moves the states at its first start
//            (kim_lc_reindex.c).
#define S_VERSION 7

static int
s_store_version (kim_store_t *self, MDB_txn *txn)
{
    MDB_dbi meta = self->dbi [KIM_DB_META];
    MDB_val key = { 7, (void *) "version" }, format_key = { 6, (void *) "format" };
    MDB_val value;
    uint32_t version = S_VERSION;       //  a new, empty store is made current
    int rc = mdb_get (txn, meta, &key, &value);
    if (rc == 0 && value.mv_size == 4) {
        const uint8_t *bytes = (const uint8_t *) value.mv_data;
        version = (uint32_t) bytes [0] << 24 | (uint32_t) bytes [1] << 16
                | (uint32_t) bytes [2] << 8 | bytes [3];
    }
    else
    if (rc == 0) {
        zsys_error ("kim_store: %s: malformed store version", self->path);
        return -KIM_E_CONFIG;
    }
    else
    if (rc == MDB_NOTFOUND)
        version = mdb_get (txn, meta, &format_key, &value) == MDB_NOTFOUND? S_VERSION: 1;
    else
        return kim_store_i_read_error (self, rc, "reading the store version");
    if (version > S_VERSION || version == 0) {
        zsys_error ("kim_store: %s: store format version %u is newer than this kim-broker "
                    "understands (%u): it was written by a newer release. Run that release, "
                    "or restore a backup made before the upgrade", self->path, version,
                    S_VERSION);
        return -KIM_E_CONFIG;
    }
    if (self->read_only || (version == S_VERSION && rc == 0))
        return 0;               //  readers read versions 1..S_VERSION as they are
    if (version < S_VERSION)
        zsys_notice ("kim_store: %s: migrating the store from format version %u to %u",
                     self->path, version, S_VERSION);
    //  Migration steps, each from its version to the next
    if (version < 4 && (rc = kim_store_i_dedup_migrate (self, txn)))
        return rc;
    uint8_t bytes [4] = { 0, 0, 0, S_VERSION };
    value.mv_size = sizeof bytes;
    value.mv_data = bytes;
    rc = mdb_put (txn, meta, &key, &value, 0);
    return rc? kim_store_i_read_error (self, rc, "recording the store version"): 0;
}

//  Opens (writer: creates) the named DBs and checks the store's format.
static int
s_open_dbs (kim_store_t *self)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin (self->env, NULL, self->read_only? MDB_RDONLY: 0, &txn);
    if (rc)
        return kim_store_i_read_error (self, rc, "starting the opening transaction");
    for (int db = 0; db < KIM_DB_COUNT; db++) {
        rc = mdb_dbi_open (txn, s_db_names [db], self->read_only? 0: MDB_CREATE,
                           &self->dbi [db]);
        //  Index trees that a newer broker adds (and builds at its first
        //  start) may be missing from an older store that a reader opens:
        //  readers (audit tools) do not use them.
        if (rc == MDB_NOTFOUND && self->read_only && db == KIM_DB_REFERRAL_BY) {
            self->dbi [db] = 0;
            continue;
        }
        if (rc) {
            mdb_txn_abort (txn);
            if (rc == MDB_NOTFOUND) {
                zsys_error ("kim_store: %s: database '%s' missing: not a kim store "
                            "or one from an older version", self->path, s_db_names [db]);
                return -KIM_E_NOT_FOUND;
            }
            return kim_store_i_read_error (self, rc, "opening a database");
        }
    }
    if ((rc = s_store_version (self, txn))) {
        mdb_txn_abort (txn);
        return rc;
    }
    uint8_t format [4];
    format [0] = 0; format [1] = 0; format [2] = 0; format [3] = S_FORMAT;
    MDB_val key = { 6, (void *) "format" };
    MDB_val value;
    rc = mdb_get (txn, self->dbi [KIM_DB_META], &key, &value);
    if (rc == MDB_NOTFOUND && !self->read_only) {
        value.mv_size = sizeof (format);
        value.mv_data = format;
        rc = mdb_put (txn, self->dbi [KIM_DB_META], &key, &value, 0);
    }
    else
    if (rc == 0 && (value.mv_size != sizeof (format)
                ||  memcmp (value.mv_data, format, sizeof (format)) != 0)) {
        mdb_txn_abort (txn);
        zsys_error ("kim_store: %s: unsupported store format", self->path);
        return -KIM_E_CONFIG;
    }
    else
    if (rc == MDB_NOTFOUND)
        rc = 0;                 //  read-only on a store that never committed
    if (rc) {
        mdb_txn_abort (txn);
        return kim_store_i_read_error (self, rc, "recording the store format");
    }
    //  Commit also for the read-only txn: it keeps the DB handles
    rc = mdb_txn_commit (txn);
    if (rc)
        return kim_store_i_read_error (self, rc, "committing the opening transaction");
    return 0;
}

kim_store_t *
kim_store_new (const kim_store_config_t *config, int *err)
{
    int dummy;
    if (!err)
        err = &dummy;
    *err = 0;
    if (!config || !config->path || !*config->path) {
        zsys_error ("kim_store: no path configured");
        *err = -KIM_E_CONFIG;
        return NULL;
    }
    kim_store_t *self = (kim_store_t *) calloc (1, sizeof (kim_store_t));
    if (!self) {
        *err = -KIM_E_NOMEM;
        return NULL;
    }
    self->lock_fd = -1;
    self->path = strdup (config->path);
    self->mailboxes = zhashx_new ();
    if (!self->path || !self->mailboxes) {
        *err = -KIM_E_NOMEM;
        goto fail;
    }
    zhashx_set_key_duplicator (self->mailboxes, NULL);
    zhashx_set_key_destructor (self->mailboxes, NULL);
    zhashx_set_destructor (self->mailboxes, s_mailbox_free);

    self->read_only = config->read_only;
    long page = sysconf (_SC_PAGESIZE);
    self->page_size = page > 0? (size_t) page: 4096;
    size_t map_size = s_round_up (config->map_size? config->map_size: S_MAP_DEFAULT,
                                  self->page_size);
    self->map_max = config->map_max? config->map_max: S_MAP_MAX_DEFAULT;
    self->map_max -= self->map_max % self->page_size;
    if (self->map_max < map_size) {
        zsys_error ("kim_store: %s: map_max (%zu) below map_size (%zu)",
                    self->path, config->map_max, map_size);
        *err = -KIM_E_CONFIG;
        goto fail;
    }
    self->dedup_window_ms = config->dedup_window_ms? config->dedup_window_ms: S_WINDOW_DEFAULT;

    //  Personal data: the directory and files are the broker's alone
    if (!self->read_only && mkdir (self->path, 0700) == -1 && errno != EEXIST) {
        zsys_error ("kim_store: cannot create %s: %s", self->path, strerror (errno));
        *err = -KIM_E_IO;
        goto fail;
    }
    struct stat st;
    int stat_rc = stat (self->path, &st);
    if (stat_rc == -1 || !S_ISDIR (st.st_mode)) {
        zsys_error ("kim_store: %s: %s", self->path,
                    stat_rc == -1? strerror (errno): "not a directory");
        *err = -KIM_E_NOT_FOUND;
        goto fail;
    }
    //  With the journal, MDB_NOSYNC: the journal's flush makes a commit
    //  durable (kim_store_journal.c), LMDB's file is flushed at checkpoints.
    bool journal = config->journal && !config->nosync;
    if (!self->read_only && (*err = kim_store_i_journal_hold (self, journal)))
        goto fail;
    if (!self->read_only && (*err = s_lock (self)))
        goto fail;

    char why [512];
    if (self->read_only && kim_journal_unrecovered (self->path, KIM_STORE_LOCK_NAME, why,
                                                    sizeof why)) {
        zsys_error ("kim_store: %s", why);
        *err = -KIM_E_CONFIG;
        goto fail;
    }
    int rc = mdb_env_create (&self->env);
    if (rc) {
        self->env = NULL;
        *err = kim_store_i_read_error (self, rc, "creating the environment");
        goto fail;
    }
    //  MDB_NOTLS: the reusable read txn lives beside the write txn in one
    //  thread. No MDB_WRITEMAP: a stray pointer could then scribble on the
    //  log, and it measured half as fast here (msync of the whole map). No
    //  MDB_NOMEMINIT: it would write stale heap bytes into page slack.
    //  MDB_NOMETASYNC: a commit syncs its data pages but not its meta page,
    //  so it costs one flush, not two; the next commit's flush, or
    //  kim_store_sync, makes it durable (see kim_store.h, Durability).
    unsigned int flags = MDB_NOTLS;
    self->nosync = config->nosync;
    if (!self->read_only && (*err = kim_store_i_journal_recover (self)))
        goto fail;
    journal = journal && self->journal;
    if (config->nosync || journal)
        flags |= MDB_NOSYNC;
    else
        flags |= MDB_NOMETASYNC;
    if (self->read_only)
        flags |= MDB_RDONLY;
    rc = mdb_env_set_maxdbs (self->env, S_MAXDBS);
    if (rc == 0)
        rc = mdb_env_open (self->env, self->path, flags, 0600);
    if (rc) {
        *err = kim_store_i_read_error (self, rc, "opening the environment");
        if (rc == ENOENT)
            *err = -KIM_E_NOT_FOUND;
        goto fail;
    }
    int key_max = mdb_env_get_maxkeysize (self->env);
    self->key_max = key_max > 0 && key_max < S_KEY_BUF? (size_t) key_max: S_KEY_BUF - 1;

    //  No mapsize was set before opening, so LMDB took the size the file
    //  records (a map grown in an earlier run stays grown); a writer then
    //  raises it to the configured initial size if that is larger.
    MDB_envinfo info;
    mdb_env_info (self->env, &info);
    self->map_size = info.me_mapsize;
    if (!self->read_only && self->map_size < map_size) {
        rc = mdb_env_set_mapsize (self->env, map_size);
        if (rc) {
            *err = kim_store_i_read_error (self, rc, "setting the map size");
            goto fail;
        }
        self->map_size = map_size;
    }
    if ((*err = s_open_dbs (self)))
        goto fail;
    if (!self->read_only && (*err = kim_store_i_journal_open (self)))
        goto fail;

    //  The head and the mailbox sizes come from one snapshot
    if ((*err = kim_store_i_snapshot_start (self)))
        goto fail;
    *err = kim_store_i_load_head (self, self->rtxn);
    if (*err == 0)
        *err = s_mailbox_count_all (self, self->rtxn);
    kim_store_i_snapshot_end (self);
    //  What a reopened store holds is made durable first: the last run may
    //  have ended (killed) before its last commit was synced
    if (*err == 0 && !self->read_only && !config->nosync && (rc = mdb_env_sync (self->env, 1)))
        *err = kim_store_i_read_error (self, rc, "syncing what the last run committed");
    self->head_committed = self->head_synced = self->head;
    if (*err == 0)
        *err = kim_store_i_keys_open (self, config->nosync);
    if (*err == 0 && !self->read_only)
        *err = kim_store_i_journal_ready (self, journal);
    if (*err)
        goto fail;
    return self;

fail:
    kim_store_destroy (&self);
    return NULL;
}

void
kim_store_destroy (kim_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_store_t *self = *self_p;
    if (self->txn)
        kim_store_abort (self);
    if (self->rtxn)
        mdb_txn_abort (self->rtxn);
    if (self->env && !self->read_only && !self->failed)
        kim_store_sync (self);
    kim_store_i_journal_close (self);
    kim_store_i_keys_close (self);
    kim_store_i_groups_free (self);
    kim_store_i_seals_free (self);
    kim_store_i_chain_free (self);
    free (self->scratch);
    if (self->env)
        mdb_env_close (self->env);
    if (self->lock_fd != -1)
        close (self->lock_fd);  //  releases the flock
    zhashx_destroy (&self->mailboxes);
    free (self->touched);
    free (self->path);
    free (self);
    *self_p = NULL;
}


//  --------------------------------------------------------------------------
//  Write batches

int
kim_store_begin (kim_store_t *self)
{
    if (self->read_only) {
        zsys_error ("kim_store: %s: opened read-only, no writes", self->path);
        return -KIM_E_ARGS;
    }
    if (self->failed)
        return -KIM_E_STORE_FAILED;
    if (self->txn)
        return -KIM_E_BUSY;
    //  A live snapshot would pin old pages and make the file grow
    kim_store_i_snapshot_end (self);
    int rc = self->journal? kim_store_i_journal_begin (self): 0;
    if (rc)
        return rc;
    rc = mdb_txn_begin (self->env, NULL, 0, &self->txn);
    if (rc) {
        self->txn = NULL;
        return kim_store_i_read_error (self, rc, "starting a write batch");
    }
    self->mailbox_cursor = NULL;
    kim_store_i_groups_drop (self);
    memset (&self->batch_writes, 0, sizeof self->batch_writes);
    self->batch_serial++;
    self->batch_full = false;
    self->batch_growable = true;
    self->batch_head = self->head;
    memcpy (self->batch_hash, self->head_hash, KIM_HASH_SIZE);
    self->batch_checkpoint_seq = self->checkpoint_seq;
    self->batch_checkpoint_ms = self->checkpoint_ms;
    return 0;
}

void
kim_store_record_hash (const uint8_t prev [KIM_HASH_SIZE], uint8_t kind, uint64_t seq,
                       uint64_t time_ms, const uint8_t *body, size_t body_size,
                       uint8_t out [KIM_HASH_SIZE])
{
    //  One definition of the format: the public log module's (kim_log.h)
    kim_log_record_hash (prev, kind, seq, time_ms, body, body_size, out);
}

//  Hashes record `seq` onto the chain and puts it into the log at once,
//  after the records that wait for the helper (whose hashes it follows).
static int
s_append_now (kim_store_t *self, uint64_t seq, uint8_t kind, uint64_t time_ms,
              const uint8_t *body, size_t body_size)
{
    int rc = kim_store_i_chain_write (self);
    if (rc)
        return rc;
    uint8_t hash [KIM_HASH_SIZE];
    kim_store_record_hash (self->batch_hash, kind, seq, time_ms, body, body_size, hash);
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val key = { sizeof (key_bytes), key_bytes };
    MDB_val value = { S_RECORD_FIXED + body_size, NULL };
    //  MDB_RESERVE: the record is built in place, no copy through a buffer
    rc = kim_store_put (self, KIM_DB_LOG, &key, &value, MDB_APPEND | MDB_RESERVE);
    if (rc == MDB_KEYEXIST) {
        //  The log holds a seq beyond our head: someone wrote behind our back
        zsys_error ("kim_store: %s: log already holds seq %" PRIu64 "; store fails closed",
                    self->path, seq);
        self->failed = true;
        return -KIM_E_STORE_FAILED;
    }
    if (rc)
        return kim_store_i_write_error (self, rc, "appending a record");
    kim_log_record_put ((uint8_t *) value.mv_data, kind, time_ms, hash, body, body_size);
    memcpy (self->batch_hash, hash, KIM_HASH_SIZE);
    return 0;
}

int
kim_store_append (kim_store_t *self, uint8_t kind, uint64_t time_ms,
                  const uint8_t *body, size_t body_size, uint64_t *seq)
{
    int rc = kim_store_i_writable (self, "append");
    if (rc)
        return rc;
    if ((!body && body_size) || body_size > UINT32_MAX - S_RECORD_FIXED)
        return -KIM_E_ARGS;
    uint64_t next = self->batch_head + 1;
    size_t value_size = S_RECORD_FIXED + body_size;
    //  With a helper, the record waits in the batch for its hash
    //  (kim_store_chain.c); the chain's end is then known once it is done
    uint8_t *deferred = NULL;
    if (kim_store_i_chain_defers (self, value_size)
    &&  (rc = kim_store_i_chain_reserve (self, next, kind, time_ms, value_size, &deferred)))
        return rc;
    if (deferred) {
        kim_log_record_put (deferred, kind, time_ms, self->batch_hash, body, body_size);
        kim_store_i_chain_post (self);
    }
    else
    if ((rc = s_append_now (self, next, kind, time_ms, body, body_size)))
        return rc;

    self->batch_head = next;
    if (kind == KIM_RECORD_CHECKPOINT) {
        self->batch_checkpoint_seq = next;
        self->batch_checkpoint_ms = time_ms;
    }
    if (seq)
        *seq = next;
    return 0;
}

int
kim_store_i_put_seq (kim_store_t *self, kim_db_t db, uint64_t seq, const uint8_t *data,
                     size_t size)
{
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val key = { sizeof key_bytes, key_bytes };
    MDB_val value = { size, NULL };
    int rc = kim_store_put (self, db, &key, &value, MDB_APPEND | MDB_RESERVE);
    if (rc == 0)
        memcpy (value.mv_data, data, size);
    return rc;
}

//  A key store failure fails the store closed: a payload must never be on
//  disk without the key that opens it, nor a key outlive an erasure.
int
kim_store_i_keys_error (kim_store_t *self, int rc)
{
    zsys_error ("kim_store: %s: payload keys: %s; store fails closed", self->path,
                kim_strerror (rc));
    self->failed = true;
    return -KIM_E_STORE_FAILED;
}

//  Puts in key order when it can: MDB_APPEND fills pages instead of
//  splitting them in half. Falls back to a plain put when the key is not
//  the largest (a clock step back, a late payload).
int
kim_store_i_put_appending (kim_store_t *self, kim_db_t db, MDB_val *key, MDB_val *value)
{
    MDB_val copy = *value;
    int rc = kim_store_put (self, db, key, &copy, MDB_APPEND);
    if (rc == MDB_KEYEXIST)
        rc = kim_store_put (self, db, key, value, 0);
    return rc;
}

static int
s_mailbox_put (kim_store_t *self, const char *org, uint64_t seq, uint8_t flags, const char *note)
{
    int rc = kim_store_i_writable (self, "mailbox_put");
    if (rc)
        return rc;
    size_t note_size = note? strlen (note): 0;
    if (note_size > KIM_MAILBOX_NOTE_MAX)
        return -KIM_E_ARGS;
    uint8_t key_bytes [S_KEY_BUF];
    size_t key_size = kim_store_i_mailbox_key (self, org, seq, key_bytes);
    if (key_size == 0)
        return -KIM_E_ARGS;
    kim_store_mailbox_t *mailbox;
    if ((rc = s_mailbox_prepare (self, org, &mailbox)))
        return rc;
    //  [flags [note]]: full entries without a note (the common case once
    //  acked) store no value at all.
    uint8_t value_bytes [1 + KIM_MAILBOX_NOTE_MAX];
    value_bytes [0] = flags;
    if (note_size)
        memcpy (value_bytes + 1, note, note_size);
    MDB_val key = { key_size, key_bytes };
    MDB_val value = { note_size? 1 + note_size: flags? 1: 0, value_bytes };
    rc = kim_store_put (self, KIM_DB_MAILBOX, &key, &value, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        return 0;               //  there already: the count stays right
    if (rc)
        return kim_store_i_write_error (self, rc, "putting into a mailbox");
    s_mailbox_change (self, mailbox, 1);
    return 0;
}

int
kim_store_mailbox_put (kim_store_t *self, const char *org, uint64_t seq)
{
    return s_mailbox_put (self, org, seq, 0, NULL);
}

int
kim_store_mailbox_put_copy (kim_store_t *self, const char *org, uint64_t seq)
{
    return s_mailbox_put (self, org, seq, KIM_MAILBOX_COPY, NULL);
}

int
kim_store_mailbox_put_note (kim_store_t *self, const char *org, uint64_t seq, const char *note)
{
    return s_mailbox_put (self, org, seq, 0, note);
}

int
kim_store_mailbox_take (kim_store_t *self, const char *org, uint64_t seq, char *note)
{
    if (note)
        note [0] = 0;
    int rc = kim_store_i_writable (self, "mailbox_del");
    if (rc)
        return rc;
    uint8_t key_bytes [S_KEY_BUF];
    size_t key_size = kim_store_i_mailbox_key (self, org, seq, key_bytes);
    if (key_size == 0)
        return -KIM_E_ARGS;
    kim_store_mailbox_t *mailbox;
    if ((rc = s_mailbox_prepare (self, org, &mailbox)))
        return rc;
    //  One cursor serves every ack of the batch: a write transaction's
    //  cursors end with it.
    if (!self->mailbox_cursor
    &&  (rc = mdb_cursor_open (self->txn, self->dbi [KIM_DB_MAILBOX], &self->mailbox_cursor))) {
        self->mailbox_cursor = NULL;
        return kim_store_i_write_error (self, rc, "opening a mailbox cursor");
    }
    MDB_cursor *cursor = self->mailbox_cursor;
    MDB_val key = { key_size, key_bytes }, value;
    rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_KEY);
    if (rc == 0) {
        //  The value points into the page that the delete may change.
        size_t note_size = value.mv_size > 1? value.mv_size - 1: 0;
        if (note && note_size <= KIM_MAILBOX_NOTE_MAX) {
            memcpy (note, (const uint8_t *) value.mv_data + 1, note_size);
            note [note_size] = 0;
        }
        rc = kim_store_cursor_del (self, KIM_DB_MAILBOX, cursor, 0);
    }
    if (rc == MDB_NOTFOUND)
        return -KIM_E_NOT_FOUND;
    if (rc)
        return kim_store_i_write_error (self, rc, "deleting from a mailbox");
    s_mailbox_change (self, mailbox, -1);
    return 0;
}

int
kim_store_mailbox_del (kim_store_t *self, const char *org, uint64_t seq)
{
    return kim_store_mailbox_take (self, org, seq, NULL);
}

//  The batch ran out of room: grow the map for the caller's replay.
//  mdb_env_set_mapsize needs no transaction of ours open, so the read
//  snapshot ends first (the write txn is gone already).
int
kim_store_i_grow (kim_store_t *self, bool growable, bool *retry)
{
    kim_store_i_snapshot_end (self);
    if (!growable)
        return -KIM_E_STORE_FULL;
    if (self->map_size >= self->map_max) {
        zsys_error ("kim_store: %s: store full at its maximum of %zu bytes",
                    self->path, self->map_max);
        return -KIM_E_STORE_FULL;
    }
    size_t size = self->map_size > self->map_max / 2? self->map_max: self->map_size * 2;
    //  No transaction may be open: the journal's pin goes, a checkpoint first
    if (self->journal && kim_store_i_journal_unpin (self))
        return -KIM_E_STORE_FAILED;
    int rc = mdb_env_set_mapsize (self->env, size);
    if (rc) {
        //  LMDB may have unmapped the old map already: nothing is safe now
        zsys_error ("kim_store: %s: growing the map to %zu bytes: %s; store fails closed",
                    self->path, size, mdb_strerror (rc));
        self->failed = true;
        return -KIM_E_STORE_FAILED;
    }
    zsys_info ("kim_store: %s: map grown from %zu to %zu bytes",
               self->path, self->map_size, size);
    self->map_size = size;
    if (self->journal && kim_store_i_journal_repin (self))
        return -KIM_E_STORE_FAILED;
    *retry = true;
    return -KIM_E_STORE_FULL;
}

//  A commit that wrote flushed the data file: the meta page of the commit
//  before it, written since, is on disk now. A commit that wrote nothing
//  flushed nothing (LMDB skips it), and its txn id is not the env's last.
static void
s_synced_by_commit (kim_store_t *self, size_t txn_id)
{
    MDB_envinfo info;
    if (mdb_env_info (self->env, &info) || info.me_last_txnid != txn_id)
        return;
    self->txn_synced = self->txn_committed;
    self->head_synced = self->head_committed;
    self->txn_committed = txn_id;
    self->head_committed = self->batch_head;
    if (self->nosync) {
        self->txn_synced = self->txn_committed;
        self->head_synced = self->head_committed;
    }
}

int
kim_store_sync (kim_store_t *self)
{
    //  With the journal every commit is durable already; a sync then
    //  flushes LMDB's file too, for readers that do not read the journal
    if (self->journal)
        return kim_store_i_journal_sync (self);
    if (self->txn_synced == self->txn_committed)
        return 0;
    int rc = mdb_env_sync (self->env, 1);
    if (rc) {
        zsys_error ("kim_store: %s: sync failed: %s; store fails closed", self->path,
                    mdb_strerror (rc));
        self->failed = true;
        return -KIM_E_STORE_FAILED;
    }
    self->txn_synced = self->txn_committed;
    self->head_synced = self->head_committed;
    return 0;
}

bool
kim_store_synced (kim_store_t *self)
{
    return self->txn_synced == self->txn_committed;
}

uint64_t
kim_store_synced_head (kim_store_t *self)
{
    return self->head_synced;
}

size_t
kim_store_commit_mark (kim_store_t *self)
{
    return self->txn_committed;
}

size_t
kim_store_synced_mark (kim_store_t *self)
{
    return self->txn_synced;
}

//  Forgets the open batch: LMDB's transactions and what the batch changed
//  in memory.
static void
s_batch_drop (kim_store_t *self)
{
    if (self->txn)
        mdb_txn_abort (self->txn);
    self->txn = NULL;
    if (self->journal)
        kim_store_i_journal_forget (self);
    kim_store_i_chain_drop (self);
    kim_store_i_seals_drop (self);
    kim_store_i_groups_drop (self);
    if (self->keys)
        kim_keystore_abort (self->keys);
    kim_store_i_keys_settle (self, false);
    s_mailbox_settle (self, false);
}

static void
s_count_add (kim_store_count_t *to, const kim_store_count_t *from)
{
    to->puts += from->puts;
    to->dels += from->dels;
}

static void
s_writes_add (kim_store_writes_t *to, const kim_store_writes_t *from)
{
    for (size_t db = 0; db < KIM_DB_COUNT; db++)
        s_count_add (&to->tree [db], &from->tree [db]);
    s_count_add (&to->keys, &from->keys);
    to->commits++;
}

int
kim_store_commit (kim_store_t *self, bool *retry)
{
    bool dummy;
    if (!retry)
        retry = &dummy;
    *retry = false;
    if (!self->txn) {
        zsys_error ("kim_store: %s: commit without a write batch", self->path);
        return -KIM_E_ARGS;
    }
    //  A failed put marks the batch full or the store failed
    if (!self->failed && !self->batch_full)
        kim_store_i_chain_write (self);
    if (!self->failed && !self->batch_full)
        kim_store_i_seals_write (self);
    if (!self->failed && !self->batch_full)
        kim_store_i_groups_write (self);
    if (!self->failed && !self->batch_full)
        kim_store_i_keys_prepare (self);
    if (self->failed || self->batch_full) {
        s_batch_drop (self);
        if (self->failed)
            return -KIM_E_STORE_FAILED;
        return kim_store_i_grow (self, self->batch_growable, retry);
    }
    //  The snapshot ends with the batch (see the header's lifetime rules)
    kim_store_i_snapshot_end (self);
    //  Keys first: a payload on disk always has its key. Should the main
    //  commit then fail, the new keys open nothing and the deleted ones
    //  belonged to payloads that the replayed batch deletes again.
    int rc = self->keys? kim_keystore_commit (self->keys): 0;
    if (rc) {
        s_batch_drop (self);
        return kim_store_i_keys_error (self, rc);
    }
    size_t txn_id = mdb_txn_id (self->txn);
    //  With the journal, the batch's entry is made while the batch can
    //  still be read (MDB_RESERVE values are filled in by now)
    if (self->journal && (rc = kim_store_i_journal_seal (self))) {
        s_batch_drop (self);
        return rc;
    }
    rc = mdb_txn_commit (self->txn);
    self->txn = NULL;           //  freed by LMDB, whatever the outcome
    if (rc == 0 && self->journal) {
        //  Written and flushed (or a checkpoint): durable as it returns
        bool wrote = kim_journal_pending (self->journal) > 0 || self->journal_direct;
        if ((rc = kim_store_i_journal_write (self))) {
            kim_store_i_keys_settle (self, false);
            s_mailbox_settle (self, false);
            return rc;
        }
        if (wrote) {
            self->txn_committed = self->txn_synced = txn_id;
            self->head_committed = self->head_synced = self->batch_head;
        }
    }
    if (rc == 0) {
        if (!self->journal)
            s_synced_by_commit (self, txn_id);
        self->head = self->batch_head;
        memcpy (self->head_hash, self->batch_hash, KIM_HASH_SIZE);
        self->checkpoint_seq = self->batch_checkpoint_seq;
        self->checkpoint_ms = self->batch_checkpoint_ms;
        kim_store_i_keys_settle (self, true);
        s_mailbox_settle (self, true);
        s_writes_add (&self->writes, &self->batch_writes);
        //  An erasure or purge is final once the deleted keys are in no
        //  file; a failed compaction is tried again after the next batch.
        if (self->keys && kim_keystore_dirty (self->keys))
            kim_keystore_compact (self->keys);
        return 0;
    }
    if (self->journal)
        kim_store_i_journal_forget (self);
    kim_store_i_keys_settle (self, false);
    s_mailbox_settle (self, false);
    if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) {
        //  Saving the free list can need pages too; nothing was written
        zsys_warning ("kim_store: %s: commit: %s", self->path, mdb_strerror (rc));
        return kim_store_i_grow (self, rc == MDB_MAP_FULL, retry);
    }
    zsys_error ("kim_store: %s: commit failed: %s; store fails closed",
                self->path, mdb_strerror (rc));
    self->failed = true;
    return -KIM_E_STORE_FAILED;
}

void
kim_store_abort (kim_store_t *self)
{
    if (self->txn)
        s_batch_drop (self);
}

bool
kim_store_failed (kim_store_t *self)
{
    return self->failed;
}

MDB_txn *
kim_store_txn (kim_store_t *self)
{
    return self->txn;
}

MDB_dbi
kim_store_dbi (kim_store_t *self, kim_db_t db)
{
    assert ((unsigned) db < KIM_DB_COUNT);
    return self->dbi [db];
}

int
kim_store_put (kim_store_t *self, kim_db_t db, MDB_val *key, MDB_val *value, unsigned flags)
{
    assert ((unsigned) db < KIM_DB_COUNT);
    int rc = mdb_put (self->txn, self->dbi [db], key, value, flags);
    if (rc == 0)
        self->batch_writes.tree [db].puts++;
    if (rc == 0 && self->journal)
        rc = kim_store_i_journal_add (self, KIM_JOURNAL_PUT, db, key, value, flags);
    return rc;
}

int
kim_store_del (kim_store_t *self, kim_db_t db, MDB_val *key, MDB_val *value)
{
    assert ((unsigned) db < KIM_DB_COUNT);
    int rc = mdb_del (self->txn, self->dbi [db], key, value);
    if (rc == 0)
        self->batch_writes.tree [db].dels++;
    if (rc == 0 && self->journal)
        rc = kim_store_i_journal_add (self, KIM_JOURNAL_DEL, db, key, NULL, 0);
    return rc;
}

int
kim_store_cursor_put (kim_store_t *self, kim_db_t db, MDB_cursor *cursor, MDB_val *key,
                      MDB_val *value, unsigned flags)
{
    assert ((unsigned) db < KIM_DB_COUNT);
    int rc = mdb_cursor_put (cursor, key, value, flags);
    if (rc == 0)
        self->batch_writes.tree [db].puts++;
    if (rc == 0 && self->journal) {
        //  The key as stored (MDB_CURRENT may have named none)
        MDB_val at, ignored;
        rc = mdb_cursor_get (cursor, &at, &ignored, MDB_GET_CURRENT);
        if (rc == 0)
            rc = kim_store_i_journal_add (self, KIM_JOURNAL_PUT, db, &at, value, flags);
    }
    return rc;
}

int
kim_store_cursor_del (kim_store_t *self, kim_db_t db, MDB_cursor *cursor, unsigned flags)
{
    assert ((unsigned) db < KIM_DB_COUNT);
    MDB_val at = { 0, NULL }, ignored;
    uint8_t key [S_KEY_BUF];
    int rc = 0;
    if (self->journal) {
        //  The key goes with the entry: copied before LMDB drops it
        rc = mdb_cursor_get (cursor, &at, &ignored, MDB_GET_CURRENT);
        if (rc == 0 && at.mv_size > sizeof key)
            rc = MDB_BAD_VALSIZE;
        if (rc)
            return rc;
        memcpy (key, at.mv_data, at.mv_size);
        at.mv_data = key;
    }
    rc = mdb_cursor_del (cursor, flags);
    if (rc == 0)
        self->batch_writes.tree [db].dels++;
    if (rc == 0 && self->journal)
        rc = kim_store_i_journal_add (self, KIM_JOURNAL_DEL, db, &at, NULL, 0);
    return rc;
}

int
kim_store_empty (kim_store_t *self, kim_db_t db)
{
    assert ((unsigned) db < KIM_DB_COUNT);
    int rc = mdb_drop (self->txn, self->dbi [db], 0);
    if (rc == 0)
        self->batch_writes.tree [db].dels++;
    if (rc == 0 && self->journal)
        rc = kim_store_i_journal_add (self, KIM_JOURNAL_EMPTY, db, NULL, NULL, 0);
    return rc;
}

void
kim_store_writes (kim_store_t *self, kim_store_writes_t *writes)
{
    *writes = self->writes;
}

const char *
kim_store_db_name (kim_db_t db)
{
    return (unsigned) db < KIM_DB_COUNT? s_db_names [db]: "?";
}

int
kim_store_error (kim_store_t *self, int mdb_rc, const char *what)
{
    if (mdb_rc == 0)
        return 0;
    if (mdb_rc == MDB_NOTFOUND)
        return -KIM_E_NOT_FOUND;
    if (self->txn)
        return kim_store_i_write_error (self, mdb_rc, what? what: "writing");
    return kim_store_i_read_error (self, mdb_rc, what? what: "reading");
}
