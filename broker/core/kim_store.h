/*  kim_store.h — the broker's durable store: one LMDB environment holding the
    append-only log, payloads, mailboxes and the de-duplication index, and
    beside it the small key store (<path>/keys/, kim_keystore.h) with the key
    each payload is encrypted under at rest.

    Everything the broker promises rests here. A write batch is one LMDB write
    transaction: the server appends every message it read in one turn of its
    loop, then commits once, and only once that commit is durable (a later
    commit or kim_store_sync() returned 0, see Durability below) does it
    send RECEIPTs or deliver what it wrote. A failed commit makes the store
    refuse all further writes (fail closed): the broker must never confirm
    what may not be on disk.

    Thread and lifetime rules: a store belongs to one thread (a helper set
    with kim_store_set_work only seals payloads and hashes the log's
    records, and the store waits for it before a batch ends). At most one
    write batch is open at a time. Pointers into records (kim_record_t.body)
    point into LMDB's map and stay valid only until the next call that starts
    or ends a transaction on this store (kim_store_read_begin/_end, _begin,
    _commit, _abort); copy what must outlive that. Inside a batch, reads go
    through the write transaction, and LMDB may move what they point at on
    the batch's next write: copy before writing.

    The log's records are hash-chained: each record's hash covers its format,
    kind, sequence number, time, the previous record's hash and its body, so
    that altering, removing or reordering a record breaks the chain.
*/
#ifndef KIM_STORE_H_INCLUDED
#define KIM_STORE_H_INCLUDED

#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kim/kim_msg.h"
#include "kim_work.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_store_t kim_store_t;

//  The file in the store's folder that one writing broker holds locked.
#define KIM_STORE_LOCK_NAME "broker.lock"


//  Record kinds in the log. Numbers are stable and never reused.
#define KIM_RECORD_MESSAGE      1   //  body: canonical header (kim_msg_encode)
#define KIM_RECORD_CHECKPOINT   2   //  body: signed checkpoint (audit)
#define KIM_RECORD_DECISION     3   //  body: policy decision, also denials
#define KIM_RECORD_AUDIT_READ   4   //  body: who read the log with which filter
#define KIM_RECORD_PURGE        5   //  body: payloads purged and why
#define KIM_RECORD_STATE        6   //  body: referral/case state change

//  Named databases inside the environment. Modules that keep state next to
//  the log (life cycle, consent, subscriptions) write it in the same write
//  transaction as the log append, through kim_store_txn()/kim_store_dbi().
#define KIM_STORE_DBS(X)                                                    \
    X(LOG,       "log")       /* seq (u64 BE) -> record                   */ \
    X(PAYLOAD,   "payload")   /* seq (u64 BE) -> payload bytes            */ \
    X(MAILBOX,   "mailbox")   /* org NUL seq (u64 BE) -> [flags [note]]   */ \
    X(DEDUP,     "dedup")     /* sender NUL msg_id -> seq u64 BE, time u64 BE */ \
    X(DEDUP_AGE, "dedup_age") /* empty since format 4 (kim_store_dedup.c)  */ \
    X(META,      "meta")      /* name -> value (head, format version)     */ \
    X(REFERRAL,  "referral")  /* referral_id -> seq; 0xFF seq -> state    */ \
    X(CASE,      "case")      /* case_id -> case state                    */ \
    X(CONSENT,   "consent")   /* consent id -> consent                    */ \
    X(SUB,       "sub")       /* org NUL name -> subscription cursor      */ \
    X(TIMER,     "timer")     /* due (u64 BE) referral_id -> kind         */ \
    X(CASE_SEQ,  "case_seq")  /* case_id NUL seq (u64 BE) -> empty: payloads of a case */ \
    X(REFERRAL_BY, "referral_by") /* index -> empty: see kim_lifecycle_int.h */ \
    X(REMOTE_DIR, "remote_dir") /* peer name -> its signed PEER_DIRECTORY frame */

typedef enum {
#define KIM_X_ENUM(name, str) KIM_DB_##name,
    KIM_STORE_DBS(KIM_X_ENUM)
#undef KIM_X_ENUM
    KIM_DB_COUNT
} kim_db_t;

typedef struct {
    const char *path;           //  directory; created (mode 0700) when missing
    size_t map_size;            //  initial map size in bytes (0: 64 MiB)
    size_t map_max;             //  the map grows up to this (0: 64 GiB)
    bool nosync;                //  do not sync on commit: benchmarks (W3) only
    bool journal;               //  a journal in front of LMDB (kim_journal.h)
    bool read_only;             //  open for readers (audit tools); no writes
    uint64_t dedup_window_ms;   //  keep msg_ids this long (0: 7 days)
} kim_store_config_t;

//  A log record as read back. `body` is borrowed (see the lifetime rules).
typedef struct {
    uint64_t seq;
    uint64_t time_ms;           //  broker's clock when appended
    uint8_t kind;               //  KIM_RECORD_*
    uint8_t hash [KIM_HASH_SIZE];
    const uint8_t *body;
    size_t body_size;
} kim_record_t;

//  Opens (creating if needed) the store. Returns NULL and sets *err to
//  -KIM_E_* on failure; the log names the cause.
kim_store_t *
    kim_store_new (const kim_store_config_t *config, int *err);

void
    kim_store_destroy (kim_store_t **self_p);

//  --- write batches -------------------------------------------------------

//  Starts a write batch. Fails with -KIM_E_STORE_FAILED once the store has
//  failed, -KIM_E_BUSY if a batch is open already, -KIM_E_ARGS on a
//  read-only store. Write calls outside a batch return -KIM_E_ARGS.
int
    kim_store_begin (kim_store_t *self);

//  Appends a record with the next sequence number; *seq is set to it. The
//  record is chained to the previous one. Returns 0, -KIM_E_STORE_FULL when
//  the map is full (the batch is then aborted: see kim_store_commit), or
//  another -KIM_E_*.
int
    kim_store_append (kim_store_t *self, uint8_t kind, uint64_t time_ms,
                      const uint8_t *body, size_t body_size, uint64_t *seq);

//  Seals payloads and hashes the log's records on `work`'s helper thread
//  from the next batch on (NULL: on the caller's thread). The store waits
//  for every job it posted before its batch ends, so `work` must outlive
//  the batches that used it. Not while a batch is open: -KIM_E_BUSY.
int
    kim_store_set_work (kim_store_t *self, kim_work_t *work);

//  Stores the payload of record `seq` apart from the log, so that it can be
//  purged later while the log stays whole. It is stored encrypted under a
//  key of its own kept in the store's key store (<path>/keys/, see
//  kim_keystore.h); commit writes that store first.
int
    kim_store_payload_put (kim_store_t *self, uint64_t seq, const uint8_t *data, size_t size);

//  Purges the payload of record `seq` (retention, erasure); the log record
//  and its payload hash stay, so the chain still verifies. No payload: 0.
//  Its key is deleted too, and the commit of a batch that deleted keys
//  compacts the key store, so that the freed pages of data.mdb, which
//  still hold the encrypted bytes, hold nothing anyone can open.
int
    kim_store_payload_del (kim_store_t *self, uint64_t seq);

//  Puts record `seq` into `org`'s mailbox (already there: no change).
int
    kim_store_mailbox_put (kim_store_t *self, const char *org, uint64_t seq);

//  Puts a copy of record `seq` into `org`'s mailbox: delivered with its
//  header and an empty payload, for organisations that follow a case
//  (subscriptions) but are not the message's recipient; the payload is
//  sealed to the recipient alone.
#define KIM_MAILBOX_COPY 0x01
int
    kim_store_mailbox_put_copy (kim_store_t *self, const char *org, uint64_t seq);

//  Puts record `seq` into `org`'s mailbox with a note of at most
//  KIM_MAILBOX_NOTE_MAX bytes that comes back when the entry is taken: a
//  module's memo (the referral id) that spares it reading the record again
//  when the recipient acks. "" is no note.
#define KIM_MAILBOX_NOTE_MAX KIM_ID_MAX
int
    kim_store_mailbox_put_note (kim_store_t *self, const char *org, uint64_t seq,
                                const char *note);

//  Removes record `seq` from `org`'s mailbox (the recipient acked it).
//  Returns 0, or -KIM_E_NOT_FOUND if it was not there.
int
    kim_store_mailbox_del (kim_store_t *self, const char *org, uint64_t seq);

//  As kim_store_mailbox_del, and copies the entry's note (or "") into
//  `note`, which holds KIM_MAILBOX_NOTE_MAX + 1 bytes.
int
    kim_store_mailbox_take (kim_store_t *self, const char *org, uint64_t seq, char *note);

//  Looks up (sender, msg_id) in the de-duplication index, including records
//  of the open batch. Returns 1 and sets *seq if found, 0 if not, or -KIM_E_*.
//  Works inside a batch (sees its writes) and outside one.
int
    kim_store_dedup_get (kim_store_t *self, const char *sender, const char *msg_id, uint64_t *seq);

//  Records (sender, msg_id) -> seq in the de-duplication index; recording
//  a msg_id again replaces the entry.
int
    kim_store_dedup_put (kim_store_t *self, const char *sender, const char *msg_id,
                         uint64_t seq, uint64_t time_ms);

//  Forgets msg_ids older than the window (time < now_ms - window), oldest
//  first, by walking the log. Call inside a batch; passes at most `limit`
//  records, so a long backlog is spread over many batches. Returns 0 or
//  -KIM_E_*.
int
    kim_store_dedup_expire (kim_store_t *self, uint64_t now_ms, size_t limit);

//  Durability. A commit flushes its data pages (one flush, not LMDB's two)
//  and writes its meta page without waiting for it; the next commit that
//  writes flushes that meta page with its own data, and kim_store_sync
//  flushes it now. So a commit is durable once a later commit or a sync has
//  returned: until then its effects may be read (the snapshot shows them)
//  but must not be told to anyone outside (a RECEIPT, a delivery). A crash
//  of the process loses nothing committed; a power loss may lose the
//  commits after the last sync, whole (LMDB keeps the previous meta page),
//  which is why nothing of them has left the broker.
//  With the journal (config.journal, kim_store_journal.c) a commit is
//  durable as it returns (its entry flushed), and kim_store_sync flushes
//  LMDB's file as well (a checkpoint), for readers that read only that file.
//  kim_store_synced: whether every commit is durable; kim_store_synced_head:
//  the log head as of the last durable commit.
int
    kim_store_sync (kim_store_t *self);
bool
    kim_store_synced (kim_store_t *self);
uint64_t
    kim_store_synced_head (kim_store_t *self);
//  Marks to compare: what was committed by now becomes durable once the
//  synced mark reaches the commit mark taken now.
size_t
    kim_store_commit_mark (kim_store_t *self);
size_t
    kim_store_synced_mark (kim_store_t *self);

//  Commits the batch (see Durability above: durable after the next commit
//  or sync, unless nosync). Returns 0 when the data is committed. On MDB_MAP_FULL the batch is lost: the map is grown (if below
//  map_max) and -KIM_E_STORE_FULL returned with *retry set to true, so the
//  caller replays the batch; at map_max, *retry is false. Any other failure
//  fails the store closed (-KIM_E_STORE_FAILED for this and every later batch).
int
    kim_store_commit (kim_store_t *self, bool *retry);

//  Abandons the open batch. Appended records and their sequence numbers are
//  forgotten.
void
    kim_store_abort (kim_store_t *self);

//  True once a write failed; the store then refuses writes until reopened.
bool
    kim_store_failed (kim_store_t *self);

//  Raw access for modules that keep state next to the log in the same
//  write transaction. NULL when no batch is open.
MDB_txn *
    kim_store_txn (kim_store_t *self);
MDB_dbi
    kim_store_dbi (kim_store_t *self, kim_db_t db);

//  Writes inside the open batch: mdb_put, mdb_del, mdb_cursor_put,
//  mdb_cursor_del and mdb_drop on tree `db`, with LMDB's return code
//  (MDB_NOTFOUND and MDB_KEYEXIST mean what the caller makes of them; hand
//  other failures to kim_store_error). Every write of the store and its
//  modules goes through these, so that each is counted per tree
//  (kim_store_writes, and kim_store_get's copies).
int
    kim_store_put (kim_store_t *self, kim_db_t db, MDB_val *key, MDB_val *value,
                   unsigned flags);
int
    kim_store_del (kim_store_t *self, kim_db_t db, MDB_val *key, MDB_val *value);
int
    kim_store_cursor_put (kim_store_t *self, kim_db_t db, MDB_cursor *cursor, MDB_val *key,
                          MDB_val *value, unsigned flags);
int
    kim_store_cursor_del (kim_store_t *self, kim_db_t db, MDB_cursor *cursor, unsigned flags);
//  Deletes every entry of tree `db` (mdb_drop, the tree kept); counted as
//  one delete.
int
    kim_store_empty (kim_store_t *self, kim_db_t db);

//  mdb_get on tree `db` inside the open batch (EINVAL outside one), with
//  LMDB's return code. A value read again before its tree was written is
//  served from a copy: `value` then points into the store and holds until
//  the next call into it.
int
    kim_store_get (kim_store_t *self, kim_db_t db, const MDB_val *key, MDB_val *value);

//  Gathers `member` (1 to 255 bytes) under the key `group` (1 to
//  KIM_STORE_GROUP_MAX bytes) of tree `db`. The members that the open
//  batch gathers under one group are written when it commits, up to
//  KIM_STORE_GROUP_PART to a value, under the key group | the batch's
//  transaction id (u64 BE) | part (u16 BE); kim_store_group_next reads such
//  a value. So entries that every message of a batch adds alike (timers
//  due at the same moment) cost a put per batch rather than per message.
//  The batch itself does not read them back. Returns 0 or -KIM_E_*.
#define KIM_STORE_GROUP_MAX     16
#define KIM_STORE_GROUP_PART    64
int
    kim_store_group_add (kim_store_t *self, kim_db_t db, const void *group, size_t group_size,
                         const void *member, size_t member_size);
//  The next member of a group value: start with *at = 0. Returns it (with
//  its size in *size), or NULL after the last and for a value that is not
//  a group's.
const uint8_t *
    kim_store_group_next (const MDB_val *value, size_t *at, size_t *size);

//  The writes of the batches committed since the store opened: puts and
//  deletes per tree, and in the key store (payload keys made and erased).
//  A batch that was aborted or replayed counts once, as committed.
typedef struct {
    uint64_t puts;
    uint64_t dels;
} kim_store_count_t;

typedef struct {
    kim_store_count_t tree [KIM_DB_COUNT];
    kim_store_count_t keys;
    uint64_t commits;
} kim_store_writes_t;

void
    kim_store_writes (kim_store_t *self, kim_store_writes_t *writes);
//  A tree's name, as LMDB knows it ("log", "payload", ...).
const char *
    kim_store_db_name (kim_db_t db);

//  Modules writing through kim_store_txn() hand every LMDB failure here:
//  it is logged with `what` and the path, and treated as the store's own
//  writes are (MDB_MAP_FULL/MDB_TXN_FULL mark the batch full, so commit
//  grows the map; other failures fail the store closed). Returns 0 for 0,
//  -KIM_E_NOT_FOUND for MDB_NOTFOUND, else the -KIM_E_* code. Outside a
//  batch, failures are only logged and returned.
int
    kim_store_error (kim_store_t *self, int mdb_rc, const char *what);

//  --- reads ---------------------------------------------------------------

//  Starts / ends a read snapshot for the calls below when no batch is open.
//  Inside a batch, reads see the batch. Cheap: the read txn is reused.
//  read_begin always takes a fresh snapshot (a read-only store also moves
//  its head to the snapshot's last record). Reads called without
//  read_begin start a snapshot implicitly; it lasts until read_end,
//  kim_store_begin or kim_store_commit. End snapshots promptly: an open
//  one keeps LMDB from reusing pages and the file grows.
int
    kim_store_read_begin (kim_store_t *self);
void
    kim_store_read_end (kim_store_t *self);

//  Reads record `seq`. Returns 0, -KIM_E_NOT_FOUND, or another -KIM_E_*
//  (-KIM_E_IO for a malformed record, which is logged).
int
    kim_store_read (kim_store_t *self, uint64_t seq, kim_record_t *record);

//  Reads the payload of record `seq`: the bytes kim_store_payload_put was
//  given, decrypted from their at-rest form (*data NULL, size 0 if purged,
//  erased or empty). *data is borrowed from a buffer of the store's that
//  the next kim_store_payload_get overwrites (and, for payloads of stores
//  from before at-rest encryption, from LMDB's map, under the lifetime
//  rules above): use or copy it before reading another payload. Returns 0
//  or -KIM_E_* (-KIM_E_IO for a stored payload that does not decrypt).
int
    kim_store_payload_get (kim_store_t *self, uint64_t seq, const uint8_t **data, size_t *size);

//  Whether record `seq` has a stored payload, without decrypting it.
//  Returns 1, 0, or -KIM_E_*.
int
    kim_store_payload_exists (kim_store_t *self, uint64_t seq);

//  Copies the at-rest key of payload `seq` into `key` (32 bytes), for
//  tests and audits that check an erasure left nothing behind. Returns 1,
//  0 if there is none (erased, never stored, or a payload stored before
//  at-rest encryption), or -KIM_E_*.
int
    kim_store_payload_key (kim_store_t *self, uint64_t seq, uint8_t key [32]);

//  Fills `seqs` with up to `max` sequence numbers from `org`'s mailbox that
//  are greater than `after`, ascending, and `flags` (if not NULL) with each
//  entry's KIM_MAILBOX_* flags. Returns how many, or -KIM_E_*.
int
    kim_store_mailbox_scan (kim_store_t *self, const char *org, uint64_t after,
                            uint64_t *seqs, uint8_t *flags, int max);

//  Number of entries in `org`'s mailbox (counted at open, kept current),
//  including the open batch's changes. Read-only stores count at open only.
uint64_t
    kim_store_mailbox_count (kim_store_t *self, const char *org);

//  Last sequence number in the log (0 when empty) and its hash. Inside a
//  batch: the batch's last record (abort reverts it). The hash is borrowed
//  until the next append, commit, abort or read_begin.
uint64_t
    kim_store_head (kim_store_t *self);
const uint8_t *
    kim_store_head_hash (kim_store_t *self);

//  The last CHECKPOINT record that this store appended and committed since
//  it was opened: its seq (0: none yet) and, if `time_ms`, its time. Older
//  checkpoints are found by reading the log back.
uint64_t
    kim_store_checkpoint_last (kim_store_t *self, uint64_t *time_ms);

//  Bytes of the map in use.
uint64_t
    kim_store_bytes (kim_store_t *self);

//  Hash of a record as the chain defines it (for verifiers).
void
    kim_store_record_hash (const uint8_t prev [KIM_HASH_SIZE], uint8_t kind, uint64_t seq,
                           uint64_t time_ms, const uint8_t *body, size_t body_size,
                           uint8_t out [KIM_HASH_SIZE]);

void
    kim_store_test (bool verbose);
//  The store with its journal (kim_store_journal_test.c)
void
    kim_store_journal_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
