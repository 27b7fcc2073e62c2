/*  kim_store_int.h — what the store's two files share: its state and the
    read helpers. kim_store.c opens, writes and snapshots; kim_store_read.c
    serves the reads from the committed snapshot. Not for other modules:
    they see kim_store.h.
*/
#ifndef KIM_STORE_INT_H_INCLUDED
#define KIM_STORE_INT_H_INCLUDED

#include <czmq.h>
#include <sodium.h>

#include "kim/kim_log.h"
#include "kim_journal.h"
#include "kim_keystore.h"
#include "kim_store.h"
#include "kim_work.h"

#define S_FORMAT            KIM_LOG_FORMAT          //  record format byte and store format
#define S_RECORD_FIXED      KIM_LOG_RECORD_FIXED
#define S_KEY_BUF           512         //  LMDB's default maximum key is 511 bytes
#define S_MAXDBS            32          //  room for modules added later
#define S_MAP_DEFAULT       ((size_t) 64 << 20)
#define S_MAP_MAX_DEFAULT   ((size_t) 64 << 30)
#define S_WINDOW_DEFAULT    ((uint64_t) 7 * 24 * 3600 * 1000)
#define S_SEALED_NONCE      crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define S_SEALED_TAG        crypto_aead_xchacha20poly1305_ietf_ABYTES
#define S_SEALED_OVERHEAD   (1 + S_SEALED_NONCE + S_SEALED_TAG)

//  One organisation's mailbox size. `delta` is the open batch's change, kept
//  apart so that an abort can forget it.
typedef struct {
    uint64_t count;
    int64_t delta;
    bool touched;               //  listed in self->touched
    char org [];                //  also the key in self->mailboxes
} kim_store_mailbox_t;

//  A payload stored lately, as it came (kim_store_payload.c, Recent payloads)
typedef struct {
    uint64_t seq;
    bool live;
    uint32_t size;
    uint32_t max;               //  bytes allocated at `data`
    uint8_t *data;
} kim_store_recent_t;

typedef struct _kim_store_group_t kim_store_group_t;
typedef struct _kim_store_seals_t kim_store_seals_t;
typedef struct _kim_store_chain_t kim_store_chain_t;

//  A value read in the open batch (kim_store_read.c, kim_store_get), kept
//  while its tree has seen no write since
#define S_MEMO_SLOTS        4
#define S_MEMO_KEY          (KIM_ID_MAX + 16)
#define S_MEMO_VALUE        1024
typedef struct {
    uint64_t batch;             //  self->batch_serial when read; 0: empty
    uint64_t writes;            //  the tree's writes in that batch by then
    kim_db_t db;
    bool found;
    size_t key_size;
    size_t value_size;
    uint8_t key [S_MEMO_KEY];
    uint8_t value [S_MEMO_VALUE];
} kim_store_memo_t;

struct _kim_store_t {
    char *path;
    MDB_env *env;
    MDB_dbi dbi [KIM_DB_COUNT];
    int lock_fd;                //  holds the flock; -1 when read-only
    bool read_only;
    bool failed;                //  fail closed: no writes until reopened
    size_t map_size;            //  current map size
    size_t map_max;
    size_t page_size;           //  OS page: map sizes are multiples of it
    size_t key_max;             //  LMDB's maximum key size
    uint64_t dedup_window_ms;

    //  Payload keys (NULL: a reader on a store from before at-rest
    //  encryption) and the first seq whose payload is encrypted
    kim_keystore_t *keys;
    uint64_t keys_from;
    uint8_t *scratch;           //  the last payload read, decrypted
    //  The pool of payload keys made ahead (kim_store_payload.c): ids from
    //  key_next on are unused, ids below key_end are in the key store; the
    //  batch_ pair is the open batch's view. The cache holds the keys of
    //  ids [key_cache_base, key_cache_end), in locked memory.
    uint64_t key_next;
    uint64_t key_end;
    uint64_t batch_key_next;
    uint64_t batch_key_end;
    uint8_t *key_cache;
    uint64_t key_cache_base;
    uint64_t key_cache_end;
    size_t scratch_max;
    //  Nonces at rest: a prefix drawn at open, then a counter, which spares
    //  a call into the kernel's random source per payload
    uint8_t nonce_prefix [16];
    uint64_t nonce_next;
    //  The payloads stored lately, by seq modulo their number; NULL until
    //  the first payload is stored
    kim_store_recent_t *recent;
    size_t recent_bytes;        //  allocated in all its slots
    //  The helper that seals payloads (NULL: they are sealed inline), and
    //  the open batch's payloads it seals (kim_store_seal.c)
    kim_work_t *work;
    kim_store_seals_t *seals;
    //  The open batch's records whose hashes the helper computes
    //  (kim_store_chain.c); batch_hash is the chain's end only without them
    kim_store_chain_t *chain;

    //  The open write batch, if any
    MDB_txn *txn;
    MDB_cursor *mailbox_cursor;     //  opened on the batch's first ack; LMDB closes it
    //  Groups the open batch gathered (kim_store_group.c); the slots past
    //  group_count keep their buffers for later batches
    kim_store_group_t *groups;
    size_t group_count;
    size_t group_max;
    //  Writes of the open batch, added to `writes` when it commits
    kim_store_writes_t batch_writes;
    kim_store_writes_t writes;
    uint64_t batch_serial;      //  counts the batches begun, from 1
    kim_store_memo_t memo [S_MEMO_SLOTS];
    size_t memo_next;           //  the slot the next miss takes
    bool batch_full;            //  MDB_MAP_FULL or MDB_TXN_FULL seen
    bool batch_growable;        //  false once MDB_TXN_FULL was seen
    uint64_t batch_head;
    uint8_t batch_hash [KIM_HASH_SIZE];
    uint64_t batch_checkpoint_seq;
    uint64_t batch_checkpoint_ms;

    //  The journal in front of LMDB (kim_store_journal.c), NULL without
    //  one; `pin` reads the latest checkpoint, so that its pages stay
    kim_journal_t *journal;
    MDB_txn *pin;
    uint64_t journal_generation;    //  of the entries written now
    bool journal_wrote;         //  an entry was written since the last checkpoint
    bool journal_direct;        //  the open batch is too large for an entry
    bool replay_due;            //  opening: the last run did not close cleanly
    bool journal_ready;         //  opened: a clean checkpoint when it closes
    int64_t checkpoint_mono;    //  zclock_mono () of the last checkpoint

    //  The reusable read snapshot; `rtxn_live` while it is not reset
    MDB_txn *rtxn;
    bool rtxn_live;

    //  Committed head of the log, and the last checkpoint record this
    //  store appended since it was opened (0: none)
    uint64_t head;
    uint8_t head_hash [KIM_HASH_SIZE];
    uint64_t checkpoint_seq;
    uint64_t checkpoint_ms;

    //  Durability (see kim_store_sync): the last commit that wrote, the
    //  last one known on disk, and the log head each of them left.
    bool nosync;
    size_t txn_committed;
    size_t txn_synced;
    uint64_t head_committed;
    uint64_t head_synced;

    //  Mailbox sizes: org -> kim_store_mailbox_t; `touched` lists the
    //  entries the open batch changed, so commit and abort visit only those.
    zhashx_t *mailboxes;
    kim_store_mailbox_t **touched;
    size_t touched_size;
    size_t touched_max;
};

int
    kim_store_i_dedup_migrate (kim_store_t *self, MDB_txn *txn);
//  Grows the map after MDB_MAP_FULL (growable) or MDB_TXN_FULL, with no
//  transaction of the store open; sets *retry when the caller may try
//  again. Returns -KIM_E_STORE_FULL or -KIM_E_STORE_FAILED.
int
    kim_store_i_grow (kim_store_t *self, bool growable, bool *retry);
//  The journal (kim_store_journal.c). _hold, before the store's lock:
//  opens the journal when `journal` is set or a journal file was left, and
//  holds it until _ready (readers wait for that); _recover, before LMDB
//  opens its file: unless the last run closed cleanly puts the last
//  checkpoint's meta pages back; _open, once the trees are open: replays the entries after
//  it; _ready, when the store is open: checkpoints what opening wrote (a
//  file left while `journal` is off is then removed); _close: a clean
//  checkpoint. _begin: a checkpoint when one is
//  due. _add: a write, after LMDB made it (0 or ENOMEM). _seal, before
//  LMDB's commit, and _write after it: the batch's entry (a batch too
//  large for it is made durable by a checkpoint); _forget: the abandoned
//  batch's. _sync: a checkpoint if an entry was written since the last. _unpin and _repin: around a growth of the map (LMDB needs no
//  transaction open), with a checkpoint first. All return 0 or -KIM_E_*.
int
    kim_store_i_journal_hold (kim_store_t *self, bool journal);
int
    kim_store_i_journal_recover (kim_store_t *self);
int
    kim_store_i_journal_open (kim_store_t *self);
int
    kim_store_i_journal_ready (kim_store_t *self, bool journal);
void
    kim_store_i_journal_close (kim_store_t *self);
int
    kim_store_i_journal_begin (kim_store_t *self);
int
    kim_store_i_journal_add (kim_store_t *self, uint8_t op, kim_db_t db, const MDB_val *key,
                             const MDB_val *value, unsigned flags);
int
    kim_store_i_journal_seal (kim_store_t *self);
int
    kim_store_i_journal_write (kim_store_t *self);
void
    kim_store_i_journal_forget (kim_store_t *self);
int
    kim_store_i_journal_sync (kim_store_t *self);
int
    kim_store_i_journal_unpin (kim_store_t *self);
int
    kim_store_i_journal_repin (kim_store_t *self);
//  Groups (kim_store_group.c): written into the batch before it commits
//  (0, or the write error, which marks the batch full or the store
//  failed), forgotten with an abandoned batch, freed with the store.
int
    kim_store_i_groups_write (kim_store_t *self);
void
    kim_store_i_groups_drop (kim_store_t *self);
void
    kim_store_i_groups_free (kim_store_t *self);
//  Payloads sealed by the helper (kim_store_seal.c). kim_store_i_seal
//  seals `size` bytes at `plain` (which may be where the ciphertext goes)
//  into `value`: [head][nonce, written by the caller][ciphertext and tag].
//  _seal_defers: whether payload `seq` of a sealed value this large goes
//  to the helper; then _seal_reserve gives the room for the value (whose
//  head, nonce and plaintext the caller writes) and for its key (NULL: out
//  of memory or a write failed), and _seal_post hands it over. Waiting
//  payloads go into the tree with _seals_write (0 or the write error, as
//  groups), which every other touch of the payload tree in a batch calls
//  first; _seals_drop forgets them with an abandoned batch.
void
    kim_store_i_seal (uint8_t *value, size_t head, const uint8_t *plain, size_t size,
                      uint64_t seq, const uint8_t secret [KIM_KEYSTORE_KEY]);
bool
    kim_store_i_seal_defers (kim_store_t *self, uint64_t seq, size_t value_size);
uint8_t *
    kim_store_i_seal_reserve (kim_store_t *self, uint64_t seq, size_t head, size_t value_size,
                              uint8_t **secret);
void
    kim_store_i_seal_post (kim_store_t *self);
int
    kim_store_i_seals_write (kim_store_t *self);
void
    kim_store_i_seals_drop (kim_store_t *self);
void
    kim_store_i_seals_free (kim_store_t *self);
//  Records hashed by the helper (kim_store_chain.c). _chain_defers: whether
//  a record this large goes to the helper; then _chain_reserve gives its
//  room in *value (NULL when out of memory: the caller appends at once),
//  where the caller builds the record of that kind and time with any hash,
//  and _chain_post hands it over; it returns 0, or the error of putting
//  what waited when the buffer was full. _chain_hash
//  completes the chain into batch_hash; _chain_write puts the waiting
//  records into the log tree (0 or the write error, as groups), which every
//  read of the log tree in a batch calls first; _chain_drop forgets them
//  with an abandoned batch.
bool
    kim_store_i_chain_defers (kim_store_t *self, size_t value_size);
int
    kim_store_i_chain_reserve (kim_store_t *self, uint64_t seq, uint8_t kind, uint64_t time_ms,
                               size_t value_size, uint8_t **value);
void
    kim_store_i_chain_post (kim_store_t *self);
void
    kim_store_i_chain_hash (kim_store_t *self);
int
    kim_store_i_chain_write (kim_store_t *self);
void
    kim_store_i_chain_drop (kim_store_t *self);
void
    kim_store_i_chain_free (kim_store_t *self);
//  Puts a copy of `size` bytes under seq (u64 BE) at the end of `db`: the
//  values that waited for the helper. Returns LMDB's code (MDB_KEYEXIST
//  when seq is not past the tree's last key).
int
    kim_store_i_put_seq (kim_store_t *self, kim_db_t db, uint64_t seq, const uint8_t *data,
                         size_t size);
//  Reads the value under seq (u64 BE) in `db`, in the batch or the
//  snapshot. Returns 0, -KIM_E_NOT_FOUND or -KIM_E_IO.
int
    kim_store_i_get_seq (kim_store_t *self, kim_db_t db, uint64_t seq, MDB_val *value,
                         const char *what);
int
    kim_store_i_keys_error (kim_store_t *self, int rc);
void
    kim_store_i_keys_close (kim_store_t *self);
int
    kim_store_i_keys_open (kim_store_t *self, bool nosync);
int
    kim_store_i_keys_prepare (kim_store_t *self);
void
    kim_store_i_keys_settle (kim_store_t *self, bool committed);
int
    kim_store_i_load_head (kim_store_t *self, MDB_txn *txn);
size_t
    kim_store_i_mailbox_key (kim_store_t *self, const char *org, uint64_t seq, uint8_t *key);
kim_store_mailbox_t *
    kim_store_i_mailbox_lookup (kim_store_t *self, const char *org, bool create);
uint64_t
    kim_store_i_mailbox_size (const kim_store_mailbox_t *mailbox);
int
    kim_store_i_parse_record (kim_store_t *self, uint64_t seq, const MDB_val *value,
                              kim_record_t *record);
int
    kim_store_i_put_appending (kim_store_t *self, kim_db_t db, MDB_val *key, MDB_val *value);
int
    kim_store_i_read_error (kim_store_t *self, int rc, const char *what);
int
    kim_store_i_reader (kim_store_t *self, MDB_txn **txn_p);
void
    kim_store_i_snapshot_end (kim_store_t *self);
int
    kim_store_i_snapshot_start (kim_store_t *self);
int
    kim_store_i_writable (kim_store_t *self, const char *what);
int
    kim_store_i_write_error (kim_store_t *self, int rc, const char *what);

#endif
