/*  kim_agent_store_payload.c — payloads sealed at rest, so that erasing one
    is real.

    The agent keeps the payloads its office sent (until the broker answered
    them) and the opened payloads of every delivery. Deleting a record from
    LMDB only frees its page, and the bytes stay in data.mdb until the page
    is reused; so, as the broker does (PROTOCOL.md 9.3), every payload is
    sealed (XChaCha20-Poly1305) under a key of its own, and the keys live
    apart in a small LMDB environment, <agent/data>/keys/ (kim_keystore).
    Erasing a payload deletes its key and compacts that environment into a
    fresh file before the sealed bytes are deleted: from then on nothing in
    the data folder can open what freed pages still hold.

    Keys are made ahead, S_KEYS_AHEAD at a time, and committed (synced) to
    the key store before any payload uses one, so that no payload is ever on
    disk without its key and a payload costs no commit of the key store.
    META "key_next" names the first unused key id and "key_made" the first
    one not made; ids are never used twice. An id made but never used (its
    transaction aborted) is made again the next time, which is harmless.

    A sealed value: [u8 1][u64 BE key id][24-byte nonce][ciphertext, tag];
    the associated data binds it to its place: [u8 database][record key].

    Threads: the key store is one per agent and not thread-safe; every call
    into it holds `keys_lock`. Writers take it inside their LMDB write
    transaction, readers inside a read transaction, so the lock order is
    always LMDB's writer lock, then this one.

    Part of the store module (kim_agent_store_int.h).
*/
#include <czmq.h>
#include <lmdb.h>
#include <sodium.h>

#include "kim/kim_log.h"
#include "kim_agent_store_int.h"

#define S_VERSION       1
#define S_HEAD          (1 + 8)
#define S_NONCE         crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define S_TAG           crypto_aead_xchacha20poly1305_ietf_ABYTES
#define S_SEALED(size)  (S_HEAD + S_NONCE + (size) + S_TAG)
#define S_KEYS_AHEAD    1024
#define S_AAD_MAX       (1 + 511)   //  LMDB's largest key

int
kim_agent_store_i_keys_open (kim_agent_store_t *self, const char *dir, size_t map_size,
                             char *error, size_t error_size)
{
    char path [PATH_MAX];
    if (snprintf (path, sizeof path, "%s/" KIM_KEYSTORE_DIR, dir) >= (int) sizeof path) {
        snprintf (error, error_size, "agent/data: %s: the path is too long", dir);
        return -KIM_E_ARGS;
    }
    if (pthread_mutex_init (&self->keys_lock, NULL) != 0) {
        snprintf (error, error_size, "out of memory");
        return -KIM_E_NOMEM;
    }
    self->keys_lock_made = true;
    int rc = 0;
    //  The store's map size: a ceiling, not a reservation (the file grows
    //  with the keys), and never the one that fills first
    self->keys = kim_keystore_new (path, false, false, map_size, &rc);
    if (!self->keys) {
        snprintf (error, error_size, "agent/data: cannot open the payload keys in %s: %s", path,
                  kim_strerror (rc < 0? -rc: KIM_E_IO));
        return rc? rc: -KIM_E_IO;
    }
    return 0;
}

void
kim_agent_store_i_keys_close (kim_agent_store_t *self)
{
    kim_keystore_destroy (&self->keys);
    if (self->keys_lock_made)
        pthread_mutex_destroy (&self->keys_lock);
    self->keys_lock_made = false;
}

static uint64_t
s_meta_u64 (kim_agent_store_t *self, MDB_txn *txn, const char *name, uint64_t fallback)
{
    MDB_val key = { strlen (name), (void *) name }, value;
    if (mdb_get (txn, self->dbi [S_META], &key, &value) == 0 && value.mv_size == 8)
        return kim_agent_store_i_u64_key (&value);
    return fallback;
}

static int
s_meta_put_u64 (kim_agent_store_t *self, MDB_txn *txn, const char *name, uint64_t number)
{
    uint8_t bytes [8];
    kim_agent_store_i_key_u64 (bytes, number);
    MDB_val key = { strlen (name), (void *) name }, value = { 8, bytes };
    int rc = mdb_put (txn, self->dbi [S_META], &key, &value, 0);
    return rc? kim_agent_store_i_mdb_code (rc): 0;
}

//  Makes the next S_KEYS_AHEAD keys and commits them to the key store.
static int
s_keys_make (kim_agent_store_t *self, uint64_t from)
{
    uint8_t secret [KIM_KEYSTORE_KEY];
    int rc = 0;
    pthread_mutex_lock (&self->keys_lock);
    for (uint64_t id = from; rc == 0 && id < from + S_KEYS_AHEAD; id++) {
        randombytes_buf (secret, sizeof secret);
        rc = kim_keystore_put (self->keys, id, secret);
    }
    sodium_memzero (secret, sizeof secret);
    if (rc == 0)
        rc = kim_keystore_commit (self->keys);
    else
        kim_keystore_abort (self->keys);
    pthread_mutex_unlock (&self->keys_lock);
    return rc;
}

//  Takes the next unused key (made ahead if need be) for a payload.
static int
s_key_take (kim_agent_store_t *self, MDB_txn *txn, uint64_t *id,
            uint8_t secret [KIM_KEYSTORE_KEY])
{
    uint64_t next = s_meta_u64 (self, txn, "key_next", 1);
    uint64_t made = s_meta_u64 (self, txn, "key_made", 1);
    int rc = 0;
    if (next >= made) {
        made = next;
        rc = s_keys_make (self, made);
        if (rc == 0)
            rc = s_meta_put_u64 (self, txn, "key_made", made + S_KEYS_AHEAD);
    }
    if (rc == 0) {
        pthread_mutex_lock (&self->keys_lock);
        int found = kim_keystore_get (self->keys, next, secret);
        pthread_mutex_unlock (&self->keys_lock);
        rc = found == 1? 0: found < 0? found: -KIM_E_IO;
    }
    if (rc == 0)
        rc = s_meta_put_u64 (self, txn, "key_next", next + 1);
    *id = next;
    return rc;
}

static size_t
s_aad (uint8_t aad [S_AAD_MAX], int db, const MDB_val *key)
{
    size_t size = key->mv_size < S_AAD_MAX - 1? key->mv_size: S_AAD_MAX - 1;
    aad [0] = (uint8_t) db;
    memcpy (aad + 1, key->mv_data, size);
    return size + 1;
}

int
kim_agent_store_i_payload_put (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key,
                               const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint64_t id;
    uint8_t secret [KIM_KEYSTORE_KEY];
    int rc = s_key_take (self, txn, &id, secret);
    MDB_val value = { S_SEALED (size), NULL };
    if (rc == 0) {
        int mrc = mdb_put (txn, self->dbi [db], key, &value, MDB_RESERVE);
        rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
    }
    if (rc == 0) {
        uint8_t *sealed = (uint8_t *) value.mv_data;
        uint8_t aad [S_AAD_MAX];
        size_t aad_size = s_aad (aad, db, key);
        sealed [0] = S_VERSION;
        kim_log_put_be64 (sealed + 1, id);
        randombytes_buf (sealed + S_HEAD, S_NONCE);
        crypto_aead_xchacha20poly1305_ietf_encrypt (sealed + S_HEAD + S_NONCE, NULL, data, size,
                                                    aad, aad_size, NULL, sealed + S_HEAD,
                                                    secret);
    }
    sodium_memzero (secret, sizeof secret);
    return rc;
}

//  The key id of a sealed value; 0 when the value is no sealed payload.
static uint64_t
s_key_id (const MDB_val *value)
{
    const uint8_t *bytes = (const uint8_t *) value->mv_data;
    if (value->mv_size < S_SEALED (0) || bytes [0] != S_VERSION)
        return 0;
    return kim_log_get_be64 (bytes + 1);
}

int
kim_agent_store_i_payload_get (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key,
                               uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    MDB_val value;
    int rc = mdb_get (txn, self->dbi [db], key, &value);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return kim_agent_store_i_mdb_code (rc);
    uint64_t id = s_key_id (&value);
    if (id == 0) {
        zsys_error ("agent store: a stored payload is not sealed (%zu bytes)", value.mv_size);
        return -KIM_E_IO;
    }
    uint8_t secret [KIM_KEYSTORE_KEY];
    pthread_mutex_lock (&self->keys_lock);
    int found = kim_keystore_get (self->keys, id, secret);
    pthread_mutex_unlock (&self->keys_lock);
    if (found != 1)
        return found < 0? found: 0;     //  its key is gone: it was erased
    size_t plain_size = value.mv_size - S_SEALED (0);
    uint8_t *plain = (uint8_t *) malloc (plain_size + 1);
    const uint8_t *sealed = (const uint8_t *) value.mv_data;
    uint8_t aad [S_AAD_MAX];
    size_t aad_size = s_aad (aad, db, key);
    rc = plain? 0: -KIM_E_NOMEM;
    if (rc == 0
    &&  crypto_aead_xchacha20poly1305_ietf_decrypt (plain, NULL, NULL, sealed + S_HEAD + S_NONCE,
                                                    value.mv_size - S_HEAD - S_NONCE, aad,
                                                    aad_size, sealed + S_HEAD, secret) != 0) {
        zsys_error ("agent store: a stored payload does not open under its key (key id %"
                    PRIu64 ")", id);
        rc = -KIM_E_IO;
    }
    sodium_memzero (secret, sizeof secret);
    if (rc) {
        free (plain);
        return rc;
    }
    *data = plain;
    *size = plain_size;
    return 1;
}

int
kim_agent_store_i_payload_erase (kim_agent_store_t *self, MDB_txn *txn, int db,
                                 MDB_val *const *keys, size_t count)
{
    //  The keys leave first, and the key store is compacted, before the
    //  sealed bytes are deleted: should this transaction then fail, what
    //  stays is bytes that no key opens (read as no payload).
    int rc = 0;
    pthread_mutex_lock (&self->keys_lock);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        MDB_val value;
        int mrc = mdb_get (txn, self->dbi [db], keys [i], &value);
        if (mrc == MDB_NOTFOUND)
            continue;
        uint64_t id = mrc? 0: s_key_id (&value);
        rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
        if (rc == 0 && id) {
            int deleted = kim_keystore_del (self->keys, id);
            rc = deleted < 0? deleted: 0;
        }
    }
    if (rc == 0)
        rc = kim_keystore_commit (self->keys);
    else
        kim_keystore_abort (self->keys);
    if (rc == 0 && kim_keystore_dirty (self->keys))
        rc = kim_keystore_compact (self->keys);
    pthread_mutex_unlock (&self->keys_lock);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        int mrc = mdb_del (txn, self->dbi [db], keys [i], NULL);
        rc = mrc && mrc != MDB_NOTFOUND? kim_agent_store_i_mdb_code (mrc): 0;
    }
    return rc;
}

//  Record keys copied out of a cursor's pages, to act on after the scan.
typedef struct {
    zlist_t *chunks;
    MDB_val *vals;
    MDB_val **keys;
    size_t count;
} s_keys_t;

static int
s_keys_add (s_keys_t *self, const MDB_val *key)
{
    if (!self->chunks && !(self->chunks = zlist_new ()))
        return -KIM_E_NOMEM;
    zchunk_t *chunk = zchunk_new (key->mv_data, key->mv_size);
    if (!chunk || zlist_append (self->chunks, chunk) != 0) {
        zchunk_destroy (&chunk);
        return -KIM_E_NOMEM;
    }
    return 0;
}

//  Lays the copied keys out as the array kim_agent_store_i_payload_erase takes.
static int
s_keys_array (s_keys_t *self)
{
    self->count = self->chunks? zlist_size (self->chunks): 0;
    self->vals = (MDB_val *) calloc (self->count + 1, sizeof (MDB_val));
    self->keys = (MDB_val **) calloc (self->count + 1, sizeof (MDB_val *));
    if (!self->vals || !self->keys)
        return -KIM_E_NOMEM;
    size_t i = 0;
    for (zchunk_t *chunk = self->count? (zchunk_t *) zlist_first (self->chunks): NULL; chunk;
         chunk = (zchunk_t *) zlist_next (self->chunks), i++) {
        self->vals [i] = (MDB_val) { zchunk_size (chunk), zchunk_data (chunk) };
        self->keys [i] = &self->vals [i];
    }
    return 0;
}

static void
s_keys_free (s_keys_t *self)
{
    while (self->chunks && zlist_size (self->chunks)) {
        zchunk_t *chunk = (zchunk_t *) zlist_pop (self->chunks);
        zchunk_destroy (&chunk);
    }
    zlist_destroy (&self->chunks);
    free (self->vals);
    free (self->keys);
}

int
kim_agent_store_i_payloads_seal (kim_agent_store_t *self)
{
    //  Stores from before sealing at rest hold their payloads as given:
    //  they are sealed once, in one transaction, at the first start.
    MDB_txn *txn;
    int rc = mdb_txn_begin (self->env, NULL, 0, &txn);
    if (rc)
        return kim_agent_store_i_mdb_code (rc);
    if (s_meta_u64 (self, txn, "payloads_sealed", 0)) {
        mdb_txn_abort (txn);
        return 0;
    }
    size_t sealed = 0;
    const int dbs [] = { S_INBOX_PAYLOAD, S_OUTBOX_PAYLOAD };
    for (size_t d = 0; rc == 0 && d < sizeof dbs / sizeof dbs [0]; d++) {
        s_keys_t names = { 0 };
        MDB_cursor *cursor = NULL;
        rc = mdb_cursor_open (txn, self->dbi [dbs [d]], &cursor);
        rc = rc? kim_agent_store_i_mdb_code (rc): 0;
        MDB_val key, value;
        int op = MDB_FIRST;
        while (rc == 0 && mdb_cursor_get (cursor, &key, &value, op) == 0) {
            rc = s_keys_add (&names, &key);
            op = MDB_NEXT;
        }
        if (cursor)
            mdb_cursor_close (cursor);
        if (rc == 0)
            rc = s_keys_array (&names);
        for (size_t i = 0; rc == 0 && i < names.count; i++) {
            //  Copied out: the put below writes over the value's pages
            zchunk_t *plain = NULL;
            rc = mdb_get (txn, self->dbi [dbs [d]], names.keys [i], &value);
            rc = rc? kim_agent_store_i_mdb_code (rc): 0;
            if (rc == 0 && value.mv_size == 0) {
                int mrc = mdb_del (txn, self->dbi [dbs [d]], names.keys [i], NULL);
                rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
            }
            else
            if (rc == 0) {
                plain = zchunk_new (value.mv_data, value.mv_size);
                rc = plain? kim_agent_store_i_payload_put (self, txn, dbs [d], names.keys [i],
                                                           zchunk_data (plain),
                                                           zchunk_size (plain))
                          : -KIM_E_NOMEM;
            }
            sealed += rc == 0;
            zchunk_destroy (&plain);
        }
        s_keys_free (&names);
    }
    if (rc == 0)
        rc = s_meta_put_u64 (self, txn, "payloads_sealed", 1);
    rc = kim_agent_store_i_end (txn, rc);
    if (rc == 0 && sealed)
        zsys_notice ("agent store: sealed %zu payloads stored before sealing at rest; their "
                     "plain bytes may stay in freed pages of data.mdb until LMDB reuses them",
                     sealed);
    return rc;
}

//  --------------------------------------------------------------------------
//  Erasing the office's copies

int
kim_agent_store_inbox_erase (kim_agent_store_t *self, uint64_t seq, json_t **out)
{
    *out = NULL;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, seq);
    MDB_val key = { 8, seq_key };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_INBOX, &key);
    if (!record) {
        mdb_txn_abort (txn);
        return -KIM_E_NOT_FOUND;
    }
    MDB_val *keys [] = { &key };
    int rc = kim_agent_store_i_payload_erase (self, txn, S_INBOX_PAYLOAD, keys, 1);
    if (rc == 0 && !json_object_get (record, "erased_at")) {
        json_object_set_new (record, "erased_at",
                             json_integer ((json_int_t) kim_agent_store_i_now ()));
        rc = kim_agent_store_i_put_json (self, txn, S_INBOX, &key, record);
    }
    rc = kim_agent_store_i_end (txn, rc);
    if (rc) {
        json_decref (record);
        return rc;
    }
    json_object_del (record, "header");
    *out = kim_agent_store_i_public (record);
    return 0;
}

//  Stamps the deliveries under `keys` with when their payload went (once).
static int
s_mark_erased (kim_agent_store_t *self, MDB_txn *txn, MDB_val **keys, size_t count)
{
    json_int_t now = (json_int_t) kim_agent_store_i_now ();
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        json_t *record = kim_agent_store_i_get_json (self, txn, S_INBOX, keys [i]);
        if (record && !json_object_get (record, "erased_at")) {
            json_object_set_new (record, "erased_at", json_integer (now));
            rc = kim_agent_store_i_put_json (self, txn, S_INBOX, keys [i], record);
        }
        json_decref (record);
    }
    return rc;
}

int
kim_agent_store_inbox_erase_seqs (kim_agent_store_t *self, const uint64_t *seqs, size_t count,
                                  json_t **out)
{
    *out = NULL;
    json_t *result = json_pack ("{s:[], s:[]}", "inbox", "missing");
    if (!result)
        return -KIM_E_NOMEM;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0) {
        json_decref (result);
        return -KIM_E_IO;
    }
    s_keys_t found = { 0 };
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        uint8_t seq_key [8];
        kim_agent_store_i_key_u64 (seq_key, seqs [i]);
        MDB_val key = { 8, seq_key }, value;
        bool here = mdb_get (txn, self->dbi [S_INBOX], &key, &value) == 0;
        json_array_append_new (json_object_get (result, here? "inbox": "missing"),
                               json_integer ((json_int_t) seqs [i]));
        if (here)
            rc = s_keys_add (&found, &key);
    }
    if (rc == 0)
        rc = s_keys_array (&found);
    if (rc == 0)
        rc = kim_agent_store_i_payload_erase (self, txn, S_INBOX_PAYLOAD, found.keys, found.count);
    if (rc == 0)
        rc = s_mark_erased (self, txn, found.keys, found.count);
    rc = kim_agent_store_i_end (txn, rc);
    s_keys_free (&found);
    if (rc) {
        json_decref (result);
        return rc;
    }
    *out = result;
    return 0;
}

//  The subject a record (inbox or outbox) is about: its header's, or for
//  an answer inside a referral, the referral's.
static bool
s_about (kim_agent_store_t *self, MDB_txn *txn, json_t *record, const char *subject)
{
    json_t *header = json_object_get (record, "header");
    const char *own = json_string_value (json_object_get (header, "subject"));
    if (own && *own)
        return streq (own, subject);
    const char *referral_id = json_string_value (json_object_get (header, "referral_id"));
    if (!referral_id || !*referral_id)
        return false;
    MDB_val key = { strlen (referral_id), (void *) referral_id };
    json_t *referral = kim_agent_store_i_get_json (self, txn, S_REFERRALS, &key);
    const char *theirs = json_string_value (json_object_get (referral, "subject"));
    bool about = theirs && streq (theirs, subject);
    json_decref (referral);
    return about;
}

//  Walks `db`'s records about `subject`: `erase` gets the keys of those
//  whose payload is to go, `list` their ids (seq or msg_id), `waiting` the
//  outbox messages the broker has not answered yet (their payload stays).
static int
s_collect (kim_agent_store_t *self, MDB_txn *txn, int db, const char *subject, s_keys_t *erase,
           json_t *list, json_t *waiting)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, self->dbi [db], &cursor);
    if (rc)
        return kim_agent_store_i_mdb_code (rc);
    MDB_val key, value;
    int op = MDB_FIRST;
    while (rc == 0 && mdb_cursor_get (cursor, &key, &value, op) == 0) {
        op = MDB_NEXT;
        json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
        if (record && s_about (self, txn, record, subject)) {
            const char *status = json_string_value (json_object_get (record, "status"));
            json_t *id = db == S_INBOX? json_integer ((json_int_t) kim_agent_store_i_u64_key (&key))
                                      : json_stringn ((const char *) key.mv_data, key.mv_size);
            if (db == S_OUTBOX && status && streq (status, "queued"))
                json_array_append_new (waiting, id);
            else {
                json_array_append_new (list, id);
                rc = s_keys_add (erase, &key);
            }
        }
        json_decref (record);
    }
    mdb_cursor_close (cursor);
    return rc;
}

int
kim_agent_store_subject_erase (kim_agent_store_t *self, const char *subject, json_t **out)
{
    *out = NULL;
    json_t *result = json_pack ("{s:s, s:[], s:[], s:[]}", "subject", subject, "inbox",
                                "outbox", "waiting");
    if (!result)
        return -KIM_E_NOMEM;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0) {
        json_decref (result);
        return -KIM_E_IO;
    }
    s_keys_t inbox = { 0 }, outbox = { 0 };
    int rc = s_collect (self, txn, S_INBOX, subject, &inbox, json_object_get (result, "inbox"),
                        NULL);
    if (rc == 0)
        rc = s_collect (self, txn, S_OUTBOX, subject, &outbox,
                        json_object_get (result, "outbox"), json_object_get (result, "waiting"));
    if (rc == 0)
        rc = s_keys_array (&inbox);
    if (rc == 0)
        rc = s_keys_array (&outbox);
    if (rc == 0)
        rc = kim_agent_store_i_payload_erase (self, txn, S_INBOX_PAYLOAD, inbox.keys,
                                              inbox.count);
    if (rc == 0)
        rc = kim_agent_store_i_payload_erase (self, txn, S_OUTBOX_PAYLOAD, outbox.keys,
                                              outbox.count);
    //  The deliveries say when their payload went; outbox records need not
    if (rc == 0)
        rc = s_mark_erased (self, txn, inbox.keys, inbox.count);
    rc = kim_agent_store_i_end (txn, rc);
    s_keys_free (&inbox);
    s_keys_free (&outbox);
    if (rc) {
        json_decref (result);
        return rc;
    }
    *out = result;
    return 0;
}

int
kim_agent_store_outbox_shed (kim_agent_store_t *self, size_t *count)
{
    *count = 0;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    s_keys_t answered = { 0 };
    MDB_cursor *cursor = NULL;
    int rc = mdb_cursor_open (txn, self->dbi [S_OUTBOX_PAYLOAD], &cursor);
    rc = rc? kim_agent_store_i_mdb_code (rc): 0;
    MDB_val key, value;
    int op = MDB_FIRST;
    while (rc == 0 && mdb_cursor_get (cursor, &key, &value, op) == 0) {
        op = MDB_NEXT;
        json_t *record = kim_agent_store_i_get_json (self, txn, S_OUTBOX, &key);
        const char *status = json_string_value (json_object_get (record, "status"));
        if (!status || !streq (status, "queued"))
            rc = s_keys_add (&answered, &key);
        json_decref (record);
    }
    if (cursor)
        mdb_cursor_close (cursor);
    if (rc == 0)
        rc = s_keys_array (&answered);
    if (rc == 0 && answered.count)
        rc = kim_agent_store_i_payload_erase (self, txn, S_OUTBOX_PAYLOAD, answered.keys,
                                              answered.count);
    if (rc == 0 && answered.count == 0)
        mdb_txn_abort (txn);
    else
        rc = kim_agent_store_i_end (txn, rc);
    *count = rc? 0: answered.count;
    s_keys_free (&answered);
    return rc;
}
