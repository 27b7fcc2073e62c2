/*  kim_ceiling_store.c — the least a durable broker with kim's guarantees
    writes for a message: the store behind kim-ceiling-curve --durable.

    The ZeroMQ+CURVE ceiling forwards and does nothing else. kim's targets
    ask for more than forwarding: a RECEIPT only after a synced commit, the
    payload encrypted at rest under a key of its own, a log whose records
    chain by hash and name their payload's hash, and a retried message id
    answered with the seq it already has. This store does exactly that for
    each message and nothing more, so that a forwarder using it shows what
    those guarantees cost on this machine before any of kim's own work:

      - the payload's BLAKE2b-256 hash;
      - the payload sealed with XChaCha20-Poly1305 under a fresh random key,
        the seq as associated data, and put under its seq ("payload");
      - a log record (seq, time, kind, the payload hash, a stand-in of
        S_HEADER bytes for the header) and its chain hash over the previous
        record's hash, put under its seq ("log");
      - the message id (producer, index) put with its seq ("dedup");
      - per ack, the consumer's cursor ("cursor"): one in-order consumer
        needs no mailbox entry per message.

    With extra trees, each message also puts one 64-byte entry under a
    short text key into each of them: as many trees as kim's indexes
    touch show what those pages cost, apart from kim's own work. The keys
    name the message in order, or (random_keys) begin with a hash of it,
    so that they land anywhere in a tree, as message ids and an index by
    case, referral or subject id do when agencies make their ids as UUIDs.

    Left out, so that this stays below what any such broker spends: the
    key store (kim keeps each payload key, made ahead 4,096 to a synced
    commit), the policy, the referral's life cycle, the closed loop's
    DELIVERED notice and the mailboxes of many organisations.

    The environment is opened as kim's store is (MDB_NOMETASYNC, MDB_NOTLS),
    so a commit costs one flush and the caller decides when to sync.

    With a journal in front (journal), a commit does not commit LMDB's
    transaction: it appends every put of the transaction (tree, key, value)
    to a preallocated file (<dir>/journal) as one entry with a BLAKE2b
    checksum and flushes that file, one flush of a few sequential pages.
    LMDB's transaction stays open across commits and is committed and
    synced as a checkpoint once S_JOURNAL_CHECKPOINT_MS have passed or the
    journal is full; the journal then starts again under a new generation.
    A broker built so would replay the entries of the current generation
    after LMDB's last checkpoint when it starts; this store only measures
    what such a commit costs, it has no replay.
*/
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "kim_ceiling_store.h"

#define S_MAP_SIZE      ((size_t) 32 << 30)
#define S_FILL_PRODUCER UINT32_MAX   //  kim_ceiling_store_fill's messages
#define S_FILL_TXN      20000        //  messages a fill transaction
#define S_HEADER        160     //  bytes standing in for a message's header
#define S_HASH          32
#define S_NONCE         crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define S_TAG           crypto_aead_xchacha20poly1305_ietf_ABYTES
#define S_RECORD        (8 + 8 + 1 + S_HASH + S_HEADER + S_HASH)
#define S_JOURNAL_SIZE  ((size_t) 64 << 20)     //  the journal file, written ahead
#define S_JOURNAL_CHECKPOINT_MS 1000
#define S_JOURNAL_HEAD  (8 + 8 + 16)            //  generation, length, checksum

struct _kim_ceiling_store_t {
    MDB_env *env;
    MDB_txn *txn;               //  the open transaction, or NULL
    MDB_dbi log, payload, dedup, cursor;
    MDB_dbi extra [KIM_CEILING_STORE_TREES_MAX];
    int extra_trees;
    bool random_keys;
    uint64_t seq;               //  the last seq stored
    uint8_t chain [S_HASH];     //  the last record's chain hash
    uint8_t nonce [S_NONCE];    //  a random prefix and a counter
    uint64_t nonce_next;
    uint32_t run;               //  drawn at open: the keys of one run are its own
    uint8_t *sealed;            //  room for one sealed payload
    size_t sealed_max;
    uint64_t commits;
    uint64_t puts;
    int journal_fd;             //  -1: no journal, commits are LMDB's
    uint64_t journal_generation;
    size_t journal_at;          //  where the next entry goes
    uint8_t *entry;             //  the open transaction's puts, as journalled
    size_t entry_size, entry_max;
    uint64_t checkpoint_ms;     //  the last checkpoint
};

static void
s_be64 (uint8_t *at, uint64_t value)
{
    for (int i = 7; i >= 0; i--, value >>= 8)
        at [i] = (uint8_t) value;
}

static uint64_t
s_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

//  A folder used before goes on after its last record, chain included.
static int
s_last_seq (kim_ceiling_store_t *self, MDB_txn *txn)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, self->log, &cursor);
    if (rc)
        return rc;
    MDB_val key, value;
    rc = mdb_cursor_get (cursor, &key, &value, MDB_LAST);
    if (rc == 0 && key.mv_size == 8 && value.mv_size == S_RECORD) {
        for (size_t i = 0; i < 8; i++)
            self->seq = self->seq << 8 | ((const uint8_t *) key.mv_data) [i];
        memcpy (self->chain, (const uint8_t *) value.mv_data + S_RECORD - S_HASH, S_HASH);
    }
    mdb_cursor_close (cursor);
    return rc == MDB_NOTFOUND? 0: rc;
}

//  Opens <dir>/journal and writes it whole ahead, so that a flush of an
//  entry never has to change the file's size or its extents as well.
static int
s_journal_open (kim_ceiling_store_t *self, const char *dir)
{
    char path [4096];
    snprintf (path, sizeof path, "%s/journal", dir);
    self->journal_fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (self->journal_fd < 0)
        return errno;
    uint8_t *zeros = (uint8_t *) calloc (1, (size_t) 1 << 20);
    if (!zeros)
        return ENOMEM;
    int rc = 0;
    for (size_t at = 0; rc == 0 && at < S_JOURNAL_SIZE; at += (size_t) 1 << 20)
        if (pwrite (self->journal_fd, zeros, (size_t) 1 << 20, (off_t) at) != (ssize_t) 1 << 20)
            rc = errno? errno: EIO;
    free (zeros);
    if (rc == 0 && fsync (self->journal_fd))
        rc = errno;
    self->checkpoint_ms = s_now_ms ();
    return rc;
}

kim_ceiling_store_t *
kim_ceiling_store_new (const char *dir, int extra_trees, bool random_keys, bool journal)
{
    if (sodium_init () < 0 || extra_trees < 0 || extra_trees > KIM_CEILING_STORE_TREES_MAX)
        return NULL;
    kim_ceiling_store_t *self = (kim_ceiling_store_t *) calloc (1, sizeof *self);
    if (!self)
        return NULL;
    randombytes_buf (self->nonce, sizeof self->nonce);
    self->run = randombytes_random ();
    self->journal_fd = -1;
    self->extra_trees = extra_trees;
    self->random_keys = random_keys;
    MDB_txn *txn = NULL;
    int rc = mdb_env_create (&self->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs (self->env, 4 + KIM_CEILING_STORE_TREES_MAX);
    if (rc == 0)
        rc = mdb_env_set_mapsize (self->env, S_MAP_SIZE);
    if (rc == 0)
        rc = mdb_env_open (self->env, dir, MDB_NOMETASYNC | MDB_NOTLS, 0600);
    if (rc == 0)
        rc = mdb_txn_begin (self->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open (txn, "log", MDB_CREATE, &self->log);
    if (rc == 0)
        rc = mdb_dbi_open (txn, "payload", MDB_CREATE, &self->payload);
    if (rc == 0)
        rc = mdb_dbi_open (txn, "dedup", MDB_CREATE, &self->dedup);
    if (rc == 0)
        rc = mdb_dbi_open (txn, "cursor", MDB_CREATE, &self->cursor);
    for (int i = 0; rc == 0 && i < extra_trees; i++) {
        char name [16];
        snprintf (name, sizeof name, "extra%d", i);
        rc = mdb_dbi_open (txn, name, MDB_CREATE, &self->extra [i]);
    }
    if (rc == 0)
        rc = s_last_seq (self, txn);
    if (rc == 0) {
        rc = mdb_txn_commit (txn);
        txn = NULL;
    }
    if (rc == 0 && journal)
        rc = s_journal_open (self, dir);
    if (txn)
        mdb_txn_abort (txn);
    if (rc) {
        fprintf (stderr, "kim-ceiling-curve: store in %s: %s\n", dir, mdb_strerror (rc));
        kim_ceiling_store_destroy (&self);
    }
    return self;
}

void
kim_ceiling_store_destroy (kim_ceiling_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_ceiling_store_t *self = *self_p;
    if (self->txn)
        mdb_txn_abort (self->txn);
    if (self->env)
        mdb_env_close (self->env);
    if (self->journal_fd >= 0)
        close (self->journal_fd);
    free (self->entry);
    free (self->sealed);
    free (self);
    *self_p = NULL;
}

static int
s_begin (kim_ceiling_store_t *self)
{
    return self->txn? 0: mdb_txn_begin (self->env, NULL, 0, &self->txn);
}

static int
s_put (kim_ceiling_store_t *self, MDB_dbi dbi, const void *key, size_t key_size,
       const void *value, size_t value_size, unsigned flags)
{
    MDB_val k = { key_size, (void *) key }, v = { value_size, (void *) value };
    self->puts++;
    if (self->journal_fd >= 0) {
        size_t need = self->entry_size + 1 + 4 + 4 + key_size + value_size;
        if (need > self->entry_max) {
            size_t max = need * 2 < 4096? 4096: need * 2;
            uint8_t *entry = (uint8_t *) realloc (self->entry, max);
            if (!entry)
                return ENOMEM;
            self->entry = entry;
            self->entry_max = max;
        }
        uint8_t *at = self->entry + self->entry_size;
        uint32_t sizes [2] = { (uint32_t) key_size, (uint32_t) value_size };
        *at++ = (uint8_t) dbi;
        memcpy (at, sizes, sizeof sizes);
        at += sizeof sizes;
        memcpy (at, key, key_size);
        memcpy (at + key_size, value, value_size);
        self->entry_size = need;
    }
    return mdb_put (self->txn, dbi, &k, &v, flags);
}

int
kim_ceiling_store_message (kim_ceiling_store_t *self, uint32_t producer, uint64_t index,
                           const uint8_t *payload, size_t size)
{
    int rc = s_begin (self);
    if (rc)
        return rc;
    uint64_t seq = self->seq + 1;
    uint8_t seq_key [8];
    s_be64 (seq_key, seq);

    uint8_t record [S_RECORD];
    uint8_t *at = record;
    memcpy (at, seq_key, 8);
    s_be64 (at + 8, s_now_ms ());
    at [16] = 1;                                    //  kind: a message
    at += 17;
    crypto_generichash (at, S_HASH, payload, size, NULL, 0);
    at += S_HASH;
    memset (at, 'h', S_HEADER);
    memcpy (at, &producer, sizeof producer);
    memcpy (at + sizeof producer, &index, sizeof index);
    at += S_HEADER;
    crypto_generichash_state chain;
    crypto_generichash_init (&chain, NULL, 0, S_HASH);
    crypto_generichash_update (&chain, self->chain, S_HASH);
    crypto_generichash_update (&chain, record, (size_t) (at - record));
    crypto_generichash_final (&chain, at, S_HASH);

    size_t sealed_size = S_NONCE + size + S_TAG;
    if (sealed_size > self->sealed_max) {
        uint8_t *sealed = (uint8_t *) realloc (self->sealed, sealed_size);
        if (!sealed)
            return ENOMEM;
        self->sealed = sealed;
        self->sealed_max = sealed_size;
    }
    uint8_t key [crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
    randombytes_buf (key, sizeof key);
    s_be64 (self->nonce + S_NONCE - 8, ++self->nonce_next);
    memcpy (self->sealed, self->nonce, S_NONCE);
    crypto_aead_xchacha20poly1305_ietf_encrypt (self->sealed + S_NONCE, NULL, payload, size,
                                                seq_key, 8, NULL, self->nonce, key);
    sodium_memzero (key, sizeof key);

    //  A message id as a sender makes them, unique in the store: runs on a
    //  folder used before add entries rather than overwrite those of the
    //  run before (which would cost no page splits). With random keys it
    //  begins with a hash of itself, as a UUID would fall.
    uint8_t id [8 + 4 + 4 + 8];
    memcpy (id + 8, &self->run, 4);
    memcpy (id + 12, &producer, 4);
    s_be64 (id + 16, index);
    if (self->random_keys)
        crypto_generichash (id, 8, id + 8, sizeof id - 8, NULL, 0);
    else
        memset (id, 0, 8);
    rc = s_put (self, self->log, seq_key, 8, record, sizeof record, MDB_APPEND);
    if (rc == 0)
        rc = s_put (self, self->payload, seq_key, 8, self->sealed, sealed_size, MDB_APPEND);
    if (rc == 0)
        rc = s_put (self, self->dedup, id, sizeof id, seq_key, 8, 0);
    //  An index entry as a broker keeps them: a short text key naming the
    //  message, a small value.
    for (int i = 0; rc == 0 && i < self->extra_trees; i++) {
        char entry_key [48];
        uint8_t value [64];
        int key_size;
        if (self->random_keys) {
            uint8_t name [4 + sizeof id], hash [12];
            memcpy (name, &i, 4);
            memcpy (name + 4, id, sizeof id);
            crypto_generichash (hash, sizeof hash, name, sizeof name, NULL, 0);
            char hex [2 * sizeof hash + 1];
            sodium_bin2hex (hex, sizeof hex, hash, sizeof hash);
            key_size = snprintf (entry_key, sizeof entry_key, "x%d-%s", i, hex);
        }
        else
            key_size = snprintf (entry_key, sizeof entry_key, "x%d-%08x-%u-%012llu", i,
                                 (unsigned) self->run, producer, (unsigned long long) index);
        memset (value, 'v', sizeof value);
        rc = s_put (self, self->extra [i], entry_key, (size_t) key_size, value, sizeof value, 0);
    }
    if (rc == 0) {
        self->seq = seq;
        memcpy (self->chain, at, S_HASH);
    }
    return rc;
}

int
kim_ceiling_store_fill (kim_ceiling_store_t *self, uint64_t count, size_t size)
{
    uint8_t *payload = (uint8_t *) malloc (size? size: 1);
    if (!payload)
        return ENOMEM;
    randombytes_buf (payload, size);
    int rc = 0;
    for (uint64_t i = 0; rc == 0 && i < count; i++) {
        //  The seq names each message once, whatever the folder held
        rc = kim_ceiling_store_message (self, S_FILL_PRODUCER, self->seq + 1, payload, size);
        if (rc == 0 && (i + 1) % S_FILL_TXN == 0)
            rc = kim_ceiling_store_commit (self);
    }
    free (payload);
    if (rc == 0)
        rc = kim_ceiling_store_commit (self);
    if (rc == 0)
        rc = kim_ceiling_store_sync (self);
    return rc;
}

int
kim_ceiling_store_ack (kim_ceiling_store_t *self, uint64_t index)
{
    int rc = s_begin (self);
    uint8_t value [8];
    s_be64 (value, index);
    return rc? rc: s_put (self, self->cursor, "consumer", 8, value, sizeof value, 0);
}

//  Commits and syncs LMDB's transaction: what the journal held is in the
//  store now, and the journal starts again.
static int
s_checkpoint (kim_ceiling_store_t *self)
{
    int rc = self->txn? mdb_txn_commit (self->txn): 0;
    self->txn = NULL;
    if (rc == 0)
        rc = mdb_env_sync (self->env, 1);
    self->journal_generation++;
    self->journal_at = 0;
    self->checkpoint_ms = s_now_ms ();
    return rc;
}

//  Appends the open transaction's puts as one entry and flushes it.
static int
s_journal_commit (kim_ceiling_store_t *self)
{
    if (self->entry_size == 0)
        return 0;
    size_t size = S_JOURNAL_HEAD + self->entry_size;
    if (size > S_JOURNAL_SIZE)
        return EFBIG;
    if (self->journal_at + size > S_JOURNAL_SIZE) {
        int rc = s_checkpoint (self);
        if (rc)
            return rc;
    }
    uint8_t head [S_JOURNAL_HEAD];
    uint64_t length = self->entry_size;
    memcpy (head, &self->journal_generation, 8);
    memcpy (head + 8, &length, 8);
    crypto_generichash (head + 16, 16, self->entry, self->entry_size, head, 16);
    struct iovec parts [2] = {
        { head, sizeof head }, { self->entry, self->entry_size }
    };
    if (pwritev (self->journal_fd, parts, 2, (off_t) self->journal_at) != (ssize_t) size)
        return errno? errno: EIO;
    if (fdatasync (self->journal_fd))
        return errno;
    self->journal_at += size;
    self->entry_size = 0;
    self->commits++;
    if (s_now_ms () - self->checkpoint_ms >= S_JOURNAL_CHECKPOINT_MS)
        return s_checkpoint (self);
    return 0;
}

int
kim_ceiling_store_commit (kim_ceiling_store_t *self)
{
    if (self->journal_fd >= 0)
        return s_journal_commit (self);
    if (!self->txn)
        return 0;
    int rc = mdb_txn_commit (self->txn);
    self->txn = NULL;
    self->commits++;
    return rc;
}

bool
kim_ceiling_store_durable_at_commit (kim_ceiling_store_t *self)
{
    return self->journal_fd >= 0;
}

int
kim_ceiling_store_sync (kim_ceiling_store_t *self)
{
    return self->journal_fd >= 0? 0: mdb_env_sync (self->env, 1);
}

const char *
kim_ceiling_store_strerror (int rc)
{
    return mdb_strerror (rc);  //  errno values too
}

uint64_t
kim_ceiling_store_commits (kim_ceiling_store_t *self)
{
    return self->commits;
}

uint64_t
kim_ceiling_store_puts (kim_ceiling_store_t *self)
{
    return self->puts;
}
