/*  kim_store_payload.c — payloads at rest: stored apart from the log,
    each encrypted under a key of its own, and the pool of keys made ahead.

    Each payload is encrypted (XChaCha20-Poly1305, the seq as associated
    data) under a key of its own kept in kim_keystore, so that deleting the
    key and compacting the small key store erases the payload for good,
    although LMDB's freed pages in data.mdb keep the encrypted bytes
    (crypto-shredding). Why a key per payload, not per case or subject: a
    payload leaves by erasure (by subject), by retention (by case, closed or
    idle) or by a later put of the same seq; a key per payload makes each of
    them a shredding with no knowledge of cases or subjects here.

    Keys are made ahead, S_KEY_CHUNK at a time, and committed to the key
    store before any payload uses them. A key store commit is a synced LMDB
    commit of its own; making one per payload batch would double the flushes
    a message waits for. Pool key `id` lives in the key store under slot
    S_KEY_POOL | id; META "key_next" (u64 BE, written in the batch that
    moves it) names the first id no payload has taken. Ids from key_next up
    are unused whatever a crash left behind, so making a chunk may overwrite
    them. A stored value is
        version 2: [u8 2][u64 id BE][24-byte nonce][ciphertext and 16-byte tag]
        version 1: [u8 1][24-byte nonce][ciphertext and tag], key in slot seq
    Version 1 is what stores wrote before the pool; it is still read and
    erased. Stores from before at-rest encryption hold their payloads as
    they came: META "keys_from" (u64 BE) names the first seq stored
    encrypted, and payloads below it are read as they are. A nonce is a
    prefix drawn when the store opens and a counter: each key seals one
    payload, and the prefix keeps a key that a crash handed out twice from
    meeting the same nonce twice.

    A delivery reads its payload back soon after it was stored (under load
    a few thousand seqs later). Payloads of up to S_RECENT_MAX bytes stay
    in memory as they came, in S_RECENT_SLOTS slots by seq and
    S_RECENT_BUDGET bytes in all, so that such a read costs a copy instead
    of a lookup and a decryption. An erasure or a replacement drops its seq
    there, and an aborted batch drops them all.

    Part of the store module (kim_store_int.h).
*/
#include <czmq.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim_store_int.h"

#define S_SEALED_SEQ        1           //  version 1: key in slot seq
#define S_SEALED_POOLED     2           //  version 2: key id from the pool
#define S_POOLED_HEAD       (1 + 8)     //  version 2: [u8 2][u64 key id BE]
#define S_KEY_POOL          ((uint64_t) 1 << 63)
#define S_KEY_CHUNK         4096
#define S_RECENT_SLOTS      8192
#define S_RECENT_MAX        4096
#define S_RECENT_BUDGET     ((size_t) 8 << 20)

_Static_assert (sizeof ((kim_store_t *) 0)->nonce_prefix + 8 == S_SEALED_NONCE,
                "a nonce at rest is its prefix and a 64-bit counter");

static const MDB_val s_key_next_name = { 8, (void *) "key_next" };

//  --------------------------------------------------------------------------
//  Recent payloads

static void
s_recent_drop (kim_store_recent_t *slot)
{
    if (slot->live)
        sodium_memzero (slot->data, slot->size);
    slot->live = false;
}

static void
s_recent_forget (kim_store_t *self, uint64_t seq)
{
    if (self->recent && self->recent [seq % S_RECENT_SLOTS].seq == seq)
        s_recent_drop (&self->recent [seq % S_RECENT_SLOTS]);
}

static void
s_recent_clear (kim_store_t *self)
{
    for (size_t i = 0; self->recent && i < S_RECENT_SLOTS; i++)
        s_recent_drop (&self->recent [i]);
}

//  Keeps a copy of a payload just stored. The copy only saves work: when
//  memory or the budget runs short, the payload is simply not kept.
static void
s_recent_keep (kim_store_t *self, uint64_t seq, const uint8_t *data, size_t size)
{
    if (size > S_RECENT_MAX)
        return;
    if (!self->recent) {
        self->recent = (kim_store_recent_t *) calloc (S_RECENT_SLOTS, sizeof *self->recent);
        if (!self->recent)
            return;
    }
    kim_store_recent_t *slot = &self->recent [seq % S_RECENT_SLOTS];
    s_recent_drop (slot);
    if (slot->max < size) {
        if (self->recent_bytes - slot->max + size > S_RECENT_BUDGET)
            return;
        uint8_t *data_new = (uint8_t *) realloc (slot->data, size);
        if (!data_new)
            return;
        self->recent_bytes += size - slot->max;
        slot->data = data_new;
        slot->max = (uint32_t) size;
    }
    memcpy (slot->data, data, size);
    slot->seq = seq;
    slot->size = (uint32_t) size;
    slot->live = true;
}

//  Scratch space for a payload read back: the caller's copy, valid until
//  the next read.
static int
s_scratch (kim_store_t *self, size_t size)
{
    if (size <= self->scratch_max)
        return 0;
    uint8_t *scratch = (uint8_t *) realloc (self->scratch, size);
    if (!scratch)
        return -KIM_E_NOMEM;
    self->scratch = scratch;
    self->scratch_max = size;
    return 0;
}

//  --------------------------------------------------------------------------
//  The key pool

static void
s_cache_drop (kim_store_t *self)
{
    if (self->key_cache)
        sodium_memzero (self->key_cache, (size_t) S_KEY_CHUNK * KIM_KEYSTORE_KEY);
    self->key_cache_base = self->key_cache_end = 0;
}

//  Makes the next chunk of keys in the open key store batch, from `id` on.
static int
s_pool_make (kim_store_t *self, uint64_t id)
{
    if (!self->key_cache) {
        self->key_cache = (uint8_t *) sodium_malloc ((size_t) S_KEY_CHUNK * KIM_KEYSTORE_KEY);
        if (!self->key_cache)
            return -KIM_E_NOMEM;
    }
    s_cache_drop (self);
    randombytes_buf (self->key_cache, (size_t) S_KEY_CHUNK * KIM_KEYSTORE_KEY);
    for (uint64_t i = 0; i < S_KEY_CHUNK; i++) {
        int rc = kim_keystore_put (self->keys, S_KEY_POOL | (id + i),
                                   self->key_cache + i * KIM_KEYSTORE_KEY);
        if (rc) {
            s_cache_drop (self);
            return rc;
        }
    }
    self->key_cache_base = id;
    self->key_cache_end = self->batch_key_end = id + S_KEY_CHUNK;
    self->batch_writes.keys.puts += S_KEY_CHUNK;
    return 0;
}

//  Takes the next unused pool key: its id and a copy of the key.
static int
s_pool_take (kim_store_t *self, uint64_t *id, uint8_t secret [KIM_KEYSTORE_KEY])
{
    uint64_t next = self->batch_key_next;
    int rc = 0;
    if (next >= self->batch_key_end)
        rc = s_pool_make (self, next);
    else
    if (next < self->key_cache_base || next >= self->key_cache_end) {
        //  Made before a restart: read from the key store, once per key
        rc = kim_keystore_get (self->keys, S_KEY_POOL | next, secret);
        if (rc == 0)
            rc = s_pool_make (self, next);      //  gone: unused, make anew
        else
        if (rc == 1) {
            *id = next;
            self->batch_key_next = next + 1;
            return 0;
        }
    }
    if (rc)
        return rc;
    memcpy (secret, self->key_cache + (next - self->key_cache_base) * KIM_KEYSTORE_KEY,
            KIM_KEYSTORE_KEY);
    *id = next;
    self->batch_key_next = next + 1;
    return 0;
}

int
kim_store_i_keys_prepare (kim_store_t *self)
{
    if (self->batch_key_next == self->key_next)
        return 0;
    uint8_t bytes [8];
    kim_log_put_be64 (bytes, self->batch_key_next);
    MDB_val name = s_key_next_name;
    MDB_val value = { sizeof (bytes), bytes };
    int rc = kim_store_put (self, KIM_DB_META, &name, &value, 0);
    return rc? kim_store_i_write_error (self, rc, "recording the next payload key"): 0;
}

void
kim_store_i_keys_settle (kim_store_t *self, bool committed)
{
    if (committed) {
        self->key_next = self->batch_key_next;
        self->key_end = self->batch_key_end;
        return;
    }
    self->batch_key_next = self->key_next;
    s_recent_clear (self);
    if (self->batch_key_end != self->key_end) {
        //  The chunk made in this batch was never written
        self->batch_key_end = self->key_end;
        s_cache_drop (self);
    }
}

//  Opens the payload keys and learns from META which seqs are encrypted at
//  rest. A writer on a store from before at-rest encryption records that
//  its payloads from the next seq on are; a reader on such a store has no
//  key store and reads every payload as stored.
int
kim_store_i_keys_open (kim_store_t *self, bool nosync)
{
    char path [PATH_MAX];
    if (snprintf (path, sizeof path, "%s/" KIM_KEYSTORE_DIR, self->path) >= (int) sizeof path)
        return -KIM_E_CONFIG;
    MDB_txn *txn;
    int rc = mdb_txn_begin (self->env, NULL, self->read_only? MDB_RDONLY: 0, &txn);
    if (rc)
        return kim_store_i_read_error (self, rc, "starting to read keys_from");
    MDB_val key = { 9, (void *) "keys_from" };
    MDB_val value;
    uint8_t from_bytes [8];
    rc = mdb_get (txn, self->dbi [KIM_DB_META], &key, &value);
    if (rc == 0 && value.mv_size == 8)
        self->keys_from = kim_log_get_be64 ((const uint8_t *) value.mv_data);
    else
    if (rc == 0) {
        mdb_txn_abort (txn);
        zsys_error ("kim_store: %s: keys_from is malformed", self->path);
        return -KIM_E_IO;
    }
    else
    if (rc == MDB_NOTFOUND && self->read_only)
        self->keys_from = UINT64_MAX;
    else
    if (rc == MDB_NOTFOUND) {
        self->keys_from = self->head + 1;
        kim_log_put_be64 (from_bytes, self->keys_from);
        value.mv_size = sizeof (from_bytes);
        value.mv_data = from_bytes;
        rc = mdb_put (txn, self->dbi [KIM_DB_META], &key, &value, 0);
    }
    if (rc == 0) {
        MDB_val name = s_key_next_name;
        rc = mdb_get (txn, self->dbi [KIM_DB_META], &name, &value);
        if (rc == 0 && value.mv_size == 8)
            self->key_next = kim_log_get_be64 ((const uint8_t *) value.mv_data);
        else
        if (rc == 0) {
            mdb_txn_abort (txn);
            zsys_error ("kim_store: %s: key_next is malformed", self->path);
            return -KIM_E_IO;
        }
        else
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    if (rc == 0 && !self->read_only) {
        rc = mdb_txn_commit (txn);
        txn = NULL;
    }
    if (txn)
        mdb_txn_abort (txn);
    if (rc)
        return kim_store_i_read_error (self, rc, "reading the payload keys' state");
    //  The key store's map: a key takes about 100 bytes, so a quarter of
    //  the main map's limit holds keys for more payloads than that map can
    //  (and 4 GiB is some 40 million payloads).
    size_t map_size = self->map_max / 4;
    if (map_size > ((size_t) 4 << 30))
        map_size = (size_t) 4 << 30;
    if (map_size < ((size_t) 1 << 20))
        map_size = (size_t) 1 << 20;
    map_size -= map_size % self->page_size;
    int err = 0;
    self->keys = kim_keystore_new (path, self->read_only, nosync, map_size, &err);
    if (!self->keys && self->read_only && err == -KIM_E_NOT_FOUND) {
        if (self->keys_from != UINT64_MAX)
            zsys_warning ("kim_store: %s: no key store; payloads from seq %" PRIu64
                          " on cannot be read", self->path, self->keys_from);
        return 0;
    }
    if (!self->keys)
        return err;
    randombytes_buf (self->nonce_prefix, sizeof self->nonce_prefix);
    self->nonce_next = 0;
    //  Keys made ahead before a restart are used first: ids from key_next
    //  up to the last one in the key store
    uint64_t last = 0;
    rc = kim_keystore_last (self->keys, &last);
    if (rc < 0)
        return rc;
    self->key_end = self->key_next;
    if (rc == 1 && (last & S_KEY_POOL) && (last & ~S_KEY_POOL) >= self->key_next)
        self->key_end = (last & ~S_KEY_POOL) + 1;
    self->batch_key_next = self->key_next;
    self->batch_key_end = self->key_end;
    return 0;
}

void
kim_store_i_keys_close (kim_store_t *self)
{
    if (self->key_cache)
        sodium_free (self->key_cache);
    self->key_cache = NULL;
    s_recent_clear (self);
    for (size_t i = 0; self->recent && i < S_RECENT_SLOTS; i++)
        free (self->recent [i].data);
    free (self->recent);
    self->recent = NULL;
    self->recent_bytes = 0;
    kim_keystore_destroy (&self->keys);
}

//  --------------------------------------------------------------------------
//  Stored values

//  Which key slot opens a stored value, and where its nonce starts.
//  Returns 0, or -KIM_E_IO for a value that is no sealed payload.
static int
s_sealed_slot (kim_store_t *self, uint64_t seq, const MDB_val *value, uint64_t *slot,
               size_t *head)
{
    const uint8_t *sealed = (const uint8_t *) value->mv_data;
    if (value->mv_size >= S_SEALED_OVERHEAD && sealed [0] == S_SEALED_SEQ) {
        *slot = seq;
        *head = 1;
        return 0;
    }
    if (value->mv_size >= S_SEALED_OVERHEAD + 8 && sealed [0] == S_SEALED_POOLED) {
        uint64_t id = kim_log_get_be64 (sealed + 1);
        if (!(id & S_KEY_POOL)) {
            *slot = S_KEY_POOL | id;
            *head = 1 + 8;
            return 0;
        }
    }
    zsys_error ("kim_store: %s: payload of %" PRIu64 " is malformed", self->path, seq);
    return -KIM_E_IO;
}

//  Deletes the key of the payload stored at `seq` in the open batch, if
//  there is one: that is what erases it (see kim_keystore.h).
static int
s_shred (kim_store_t *self, uint64_t seq, MDB_val *key)
{
    s_recent_forget (self, seq);
    if (!self->keys || seq < self->keys_from)
        return 0;
    MDB_val value;
    int rc = mdb_get (self->txn, self->dbi [KIM_DB_PAYLOAD], key, &value);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return kim_store_i_write_error (self, rc, "reading a payload to erase");
    uint64_t slot;
    size_t head;
    if (s_sealed_slot (self, seq, &value, &slot, &head))
        //  Unreadable anyway; a slot by seq may still hold its key
        slot = seq;
    if (slot & S_KEY_POOL) {
        uint64_t id = slot & ~S_KEY_POOL;
        if (id >= self->key_cache_base && id < self->key_cache_end)
            sodium_memzero (self->key_cache + (id - self->key_cache_base) * KIM_KEYSTORE_KEY,
                            KIM_KEYSTORE_KEY);
    }
    rc = kim_keystore_del (self->keys, slot);
    if (rc == 1)
        self->batch_writes.keys.dels++;     //  0: there was none
    return rc < 0? kim_store_i_keys_error (self, rc): 0;
}

//  Writes a sealed value's head: the pool key's id and the nonce; copies
//  the key to `secret`.
static int
s_seal_head (kim_store_t *self, uint8_t *sealed, uint8_t secret [KIM_KEYSTORE_KEY])
{
    uint64_t id;
    int rc = s_pool_take (self, &id, secret);
    if (rc)
        return kim_store_i_keys_error (self, rc);
    sealed [0] = S_SEALED_POOLED;
    kim_log_put_be64 (sealed + 1, id);
    memcpy (sealed + S_POOLED_HEAD, self->nonce_prefix, sizeof self->nonce_prefix);
    kim_log_put_be64 (sealed + S_POOLED_HEAD + sizeof self->nonce_prefix, self->nonce_next++);
    return 0;
}

int
kim_store_payload_put (kim_store_t *self, uint64_t seq, const uint8_t *data, size_t size)
{
    int rc = kim_store_i_writable (self, "payload_put");
    if (rc)
        return rc;
    if (!data && size)
        return -KIM_E_ARGS;
    if (size > UINT32_MAX - S_SEALED_OVERHEAD - 8)
        return -KIM_E_ARGS;
    size_t value_size = size + S_SEALED_OVERHEAD + 8;       //  a pooled key's id: 8 bytes
    //  The newest record's payload is sealed by the helper, when there is
    //  one, and put into the tree later (kim_store_seal.c)
    if (size && kim_store_i_seal_defers (self, seq, value_size)) {
        if (!self->keys || seq < self->keys_from)
            return kim_store_i_keys_error (self, -KIM_E_INTERNAL);
        uint8_t *secret;
        uint8_t *sealed = kim_store_i_seal_reserve (self, seq, S_POOLED_HEAD, value_size,
                                                   &secret);
        if (sealed) {
            rc = s_seal_head (self, sealed, secret);
            if (rc)
                return rc;
            memcpy (sealed + S_POOLED_HEAD + S_SEALED_NONCE, data, size);
            kim_store_i_seal_post (self);
            s_recent_keep (self, seq, data, size);
            return 0;
        }
        if (self->failed || self->batch_full)
            return self->failed? -KIM_E_STORE_FAILED: -KIM_E_STORE_FULL;
    }
    rc = kim_store_i_seals_write (self);
    if (rc)
        return rc;
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val key = { sizeof (key_bytes), key_bytes };
    if (size == 0) {
        //  Nothing stored for an empty payload; drop an older one, if any
        rc = s_shred (self, seq, &key);
        if (rc)
            return rc;
        rc = kim_store_del (self, KIM_DB_PAYLOAD, &key, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
        return rc? kim_store_i_write_error (self, rc, "removing a payload"): 0;
    }
    if (!self->keys || seq < self->keys_from)
        return kim_store_i_keys_error (self, -KIM_E_INTERNAL);
    //  MDB_RESERVE: encrypted in place, no copy through a buffer. A put
    //  that is not the largest seq may replace a payload: its key goes.
    MDB_val value = { value_size, NULL };
    MDB_val copy = value;
    rc = kim_store_put (self, KIM_DB_PAYLOAD, &key, &copy, MDB_APPEND | MDB_RESERVE);
    if (rc == MDB_KEYEXIST) {
        rc = s_shred (self, seq, &key);
        if (rc)
            return rc;
        copy = value;
        rc = kim_store_put (self, KIM_DB_PAYLOAD, &key, &copy, MDB_RESERVE);
    }
    if (rc)
        return kim_store_i_write_error (self, rc, "storing a payload");
    uint8_t secret [KIM_KEYSTORE_KEY];
    uint8_t *sealed = (uint8_t *) copy.mv_data;
    rc = s_seal_head (self, sealed, secret);
    if (rc)
        return rc;
    kim_store_i_seal (sealed, S_POOLED_HEAD, data, size, seq, secret);
    sodium_memzero (secret, sizeof secret);
    s_recent_keep (self, seq, data, size);
    return 0;
}

int
kim_store_payload_del (kim_store_t *self, uint64_t seq)
{
    //  Storing an empty payload removes the stored one.
    return kim_store_payload_put (self, seq, NULL, 0);
}

//  --------------------------------------------------------------------------
//  Reads

//  The stored value of payload `seq` (size 0: none). Returns 0 or -KIM_E_*.
static int
s_stored (kim_store_t *self, uint64_t seq, MDB_val *value)
{
    //  In a batch, the payloads the helper seals go into the tree first
    int rc = self->txn? kim_store_i_seals_write (self): 0;
    if (rc)
        return rc;
    rc = kim_store_i_get_seq (self, KIM_DB_PAYLOAD, seq, value, "reading a payload");
    if (rc == -KIM_E_NOT_FOUND) {
        value->mv_size = 0;
        value->mv_data = NULL;
        return 0;
    }
    return rc;
}

int
kim_store_payload_get (kim_store_t *self, uint64_t seq, const uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    kim_store_recent_t *recent = self->recent? &self->recent [seq % S_RECENT_SLOTS]: NULL;
    if (recent && recent->live && recent->seq == seq) {
        if (s_scratch (self, recent->size))
            return -KIM_E_NOMEM;
        memcpy (self->scratch, recent->data, recent->size);
        *data = self->scratch;
        *size = recent->size;
        return 0;
    }
    MDB_val value;
    int rc = s_stored (self, seq, &value);
    if (rc || value.mv_size == 0)
        return rc;
    if (seq < self->keys_from) {
        //  Stored before at-rest encryption: as it came
        *data = (const uint8_t *) value.mv_data;
        *size = value.mv_size;
        return 0;
    }
    uint64_t slot;
    size_t head;
    if ((rc = s_sealed_slot (self, seq, &value, &slot, &head)))
        return rc;
    uint8_t secret [KIM_KEYSTORE_KEY];
    rc = self->keys? kim_keystore_get (self->keys, slot, secret): 0;
    if (rc < 0)
        return rc;
    if (rc == 0)
        return 0;               //  its key is erased: so is the payload
    const uint8_t *sealed = (const uint8_t *) value.mv_data;
    size_t plain_size = value.mv_size - head - S_SEALED_NONCE - S_SEALED_TAG;
    if (s_scratch (self, plain_size)) {
        sodium_memzero (secret, sizeof secret);
        return -KIM_E_NOMEM;
    }
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    rc = crypto_aead_xchacha20poly1305_ietf_decrypt (
        self->scratch, NULL, NULL, sealed + head + S_SEALED_NONCE,
        value.mv_size - head - S_SEALED_NONCE, key_bytes, sizeof (key_bytes),
        sealed + head, secret);
    sodium_memzero (secret, sizeof secret);
    if (rc) {
        zsys_error ("kim_store: %s: payload of %" PRIu64 " does not decrypt", self->path, seq);
        return -KIM_E_IO;
    }
    *data = self->scratch;
    *size = plain_size;
    return 0;
}

int
kim_store_payload_exists (kim_store_t *self, uint64_t seq)
{
    MDB_val value;
    int rc = s_stored (self, seq, &value);
    return rc? rc: value.mv_size > 0;
}

int
kim_store_payload_key (kim_store_t *self, uint64_t seq, uint8_t key [32])
{
    if (!self->keys || seq < self->keys_from)
        return 0;
    MDB_val value;
    int rc = s_stored (self, seq, &value);
    if (rc || value.mv_size == 0)
        return rc;
    uint64_t slot;
    size_t head;
    if ((rc = s_sealed_slot (self, seq, &value, &slot, &head)))
        return rc;
    return kim_keystore_get (self->keys, slot, key);
}
