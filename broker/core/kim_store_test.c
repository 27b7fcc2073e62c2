/*  kim_store_test.c — the store's self-test (kim_store_test) on real LMDB
    files in a temporary folder: appends and the hash chain, abort, reopen,
    mailboxes, de-duplication and its expiry, a second writer refused, a
    read-only reader in another process, map growth up to the maximum, a
    failed write closing the store, and malformed records read safely.
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
#include "kim_keystore.h"
#include "kim_store.h"

//  --------------------------------------------------------------------------
//  Self test

static void
s_test_remove (const char *dir)
{
    const char *names [] = { "data.mdb", "lock.mdb", KIM_STORE_LOCK_NAME,
                             "keys/data.mdb", "keys/lock.mdb", "keys/guard.lock",
                             "keys/compact.tmp", "keys" };
    for (size_t i = 0; i < sizeof (names) / sizeof (names [0]); i++) {
        char *file = zsys_sprintf ("%s/%s", dir, names [i]);
        assert (file);
        if (unlink (file) == -1)
            rmdir (file);
        zstr_free (&file);
    }
    rmdir (dir);
}

static uint64_t
    s_test_append (kim_store_t *store, uint8_t kind, uint64_t time_ms, const char *body);

//  Appends a MESSAGE record of `sender` at `time_ms` and records its msg_id
static uint64_t
s_test_message (kim_store_t *store, const char *sender, const char *msg_id, uint64_t time_ms)
{
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_REFERRAL;
    snprintf (msg.msg_id, sizeof msg.msg_id, "%s", msg_id);
    snprintf (msg.sender, sizeof msg.sender, "%s", sender);
    snprintf (msg.recipient, sizeof msg.recipient, "ja.b");
    snprintf (msg.referral_id, sizeof msg.referral_id, "r-%s", msg_id);
    snprintf (msg.case_id, sizeof msg.case_id, "case");
    snprintf (msg.subject, sizeof msg.subject, "subject");
    snprintf (msg.purpose, sizeof msg.purpose, "test");
    msg.basis = KIM_BASIS_STATUTE;
    snprintf (msg.citation, sizeof msg.citation, "SGB X §69(1)1");
    msg.created_at = time_ms;
    msg.has_payload_hash = true;
    kim_buf_t buf;
    kim_buf_init (&buf);
    assert (kim_msg_encode (&msg, &buf) == 0);
    uint64_t seq = 0;
    assert (kim_store_append (store, KIM_RECORD_MESSAGE, time_ms, buf.data, buf.size, &seq) == 0);
    kim_buf_free (&buf);
    assert (kim_store_dedup_put (store, sender, msg_id, seq, time_ms) == 0);
    return seq;
}

//  De-duplication expires oldest first, by walking the log, at most
//  `limit` records per call. The window is 1000 ms: at 5500, msg_ids of
//  records older than 4500 go.
static void
s_test_dedup_expiry (const char *path)
{
    kim_store_config_t config = { .path = path, .dedup_window_ms = 1000 };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    assert (store);
    uint64_t seq;
    assert (kim_store_begin (store) == 0);
    assert (s_test_message (store, "jc.a", "m1", 1000) == 1);
    //  Recorded again later: the entry then names the later record
    assert (s_test_message (store, "jc.b", "x", 1500) == 2);
    assert (kim_store_append (store, KIM_RECORD_STATE, 1600, (const uint8_t *) "{}", 2, &seq) == 0);
    assert (s_test_message (store, "jc.a", "m2", 2000) == 4);
    assert (s_test_message (store, "jc.a", "m3", 3000) == 5);
    assert (s_test_message (store, "jc.a", "m4", 4000) == 6);
    assert (s_test_message (store, "jc.b", "x", 4800) == 7);
    assert (s_test_message (store, "jc.a", "m5", 5000) == 8);
    assert (kim_store_dedup_expire (store, 500, 100) == 0);     //  before the window
    assert (kim_store_dedup_get (store, "jc.a", "m1", &seq) == 1);
    assert (kim_store_dedup_expire (store, 5500, 3) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m1", &seq) == 0);
    assert (kim_store_dedup_get (store, "jc.b", "x", &seq) == 1 && seq == 7);
    assert (kim_store_dedup_get (store, "jc.a", "m2", &seq) == 1 && seq == 4);
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_dedup_expire (store, 5500, 100) == 0);
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m2", &seq) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m3", &seq) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m4", &seq) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m5", &seq) == 1 && seq == 8);
    assert (kim_store_dedup_get (store, "jc.b", "x", &seq) == 1 && seq == 7);
    //  Where the walk stopped survives a reopen: later, the rest goes
    kim_store_read_end (store);
    kim_store_destroy (&store);
    store = kim_store_new (&config, &err);
    assert (store);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_dedup_expire (store, 6500, 100) == 0);
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_dedup_get (store, "jc.b", "x", &seq) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m5", &seq) == 0);
    //  The records stay: only the msg_ids are forgotten
    kim_record_t record;
    assert (kim_store_read (store, 8, &record) == 0 && record.kind == KIM_RECORD_MESSAGE);
    kim_store_read_end (store);
    kim_store_destroy (&store);
}

//  Asserts what kim_store_get reads under `key` in `db`: `text`, or
//  nothing for NULL.
//  Opens the store at `path` as configured by default.
static kim_store_t *
s_test_open (const char *path)
{
    kim_store_config_t config = { .path = path };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    assert (store);
    return store;
}

static void
s_test_get_is (kim_store_t *store, kim_db_t db, const char *key, const char *text)
{
    MDB_val k = { strlen (key), (void *) key }, value;
    int rc = kim_store_get (store, db, &k, &value);
    if (!text)
        assert (rc == MDB_NOTFOUND);
    else
        assert (rc == 0 && value.mv_size == strlen (text)
                && memcmp (value.mv_data, text, value.mv_size) == 0);
}

static void
s_test_put_text (kim_store_t *store, kim_db_t db, const char *key, const char *text)
{
    MDB_val k = { strlen (key), (void *) key }, value = { strlen (text), (void *) text };
    assert (kim_store_put (store, db, &k, &value, 0) == 0);
}

//  A value read again in a batch comes from the copy only while its tree
//  saw no write: a put, a delete or an emptied tree in between, or another
//  batch, reads the tree again.
static void
s_test_get_memo (const char *path)
{
    kim_store_t *store = s_test_open (path);
    MDB_val key = { 4, (void *) "case" }, value;
    assert (kim_store_get (store, KIM_DB_CASE, &key, &value) == EINVAL);    //  no batch
    assert (kim_store_begin (store) == 0);
    s_test_get_is (store, KIM_DB_CASE, "case", NULL);
    s_test_get_is (store, KIM_DB_CASE, "case", NULL);
    s_test_put_text (store, KIM_DB_CASE, "case", "one");
    s_test_get_is (store, KIM_DB_CASE, "case", "one");
    s_test_get_is (store, KIM_DB_CASE, "cas", NULL);    //  a key's prefix is another key
    //  A write to another tree leaves the copy; the same key in another
    //  tree is another value
    s_test_put_text (store, KIM_DB_CONSENT, "case", "other");
    s_test_get_is (store, KIM_DB_CASE, "case", "one");
    s_test_get_is (store, KIM_DB_CONSENT, "case", "other");
    s_test_put_text (store, KIM_DB_CASE, "case", "two");
    s_test_get_is (store, KIM_DB_CASE, "case", "two");
    assert (kim_store_del (store, KIM_DB_CASE, &key, NULL) == 0);
    s_test_get_is (store, KIM_DB_CASE, "case", NULL);
    s_test_put_text (store, KIM_DB_CASE, "case", "two");
    s_test_get_is (store, KIM_DB_CASE, "case", "two");
    assert (kim_store_empty (store, KIM_DB_CASE) == 0);
    s_test_get_is (store, KIM_DB_CASE, "case", NULL);
    //  Writes through a cursor count as well
    MDB_cursor *cursor;
    assert (mdb_cursor_open (kim_store_txn (store), kim_store_dbi (store, KIM_DB_CASE),
                             &cursor) == 0);
    MDB_val put = { 3, (void *) "two" };
    assert (kim_store_cursor_put (store, KIM_DB_CASE, cursor, &key, &put, 0) == 0);
    s_test_get_is (store, KIM_DB_CASE, "case", "two");
    assert (mdb_cursor_get (cursor, &key, &value, MDB_SET) == 0);
    assert (kim_store_cursor_del (store, KIM_DB_CASE, cursor, 0) == 0);
    mdb_cursor_close (cursor);
    s_test_get_is (store, KIM_DB_CASE, "case", NULL);
    //  A value larger than a copy holds is read from the tree each time
    static char large [2049];
    memset (large, 'x', sizeof large - 1);
    s_test_put_text (store, KIM_DB_CASE, "case", large);
    s_test_get_is (store, KIM_DB_CASE, "case", large);
    s_test_put_text (store, KIM_DB_CASE, "case", "one");
    s_test_get_is (store, KIM_DB_CASE, "case", "one");
    assert (kim_store_commit (store, NULL) == 0);
    //  The next batch reads the tree again: an aborted one's write is gone,
    //  though the new batch has written the tree as often
    assert (kim_store_begin (store) == 0);
    s_test_put_text (store, KIM_DB_CASE, "case", "new");
    s_test_get_is (store, KIM_DB_CASE, "case", "new");
    kim_store_abort (store);
    assert (kim_store_begin (store) == 0);
    s_test_put_text (store, KIM_DB_CASE, "another", "two");
    s_test_get_is (store, KIM_DB_CASE, "case", "one");
    kim_store_abort (store);
    kim_store_destroy (&store);
}

//  The last checkpoint the store appended: known once its batch commits,
//  the later of two, forgotten with an aborted batch, unknown after a
//  reopen (the metrics endpoint reads the log back for it once).
static void
s_test_checkpoint_last (const char *path)
{
    kim_store_t *store = s_test_open (path);
    uint64_t time_ms = 0;
    assert (kim_store_checkpoint_last (store, &time_ms) == 0);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_CHECKPOINT, 100, "first") == 1);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 200, "message") == 2);
    assert (s_test_append (store, KIM_RECORD_CHECKPOINT, 300, "second") == 3);
    assert (s_test_append (store, KIM_RECORD_STATE, 400, "state") == 4);
    assert (kim_store_checkpoint_last (store, NULL) == 0);
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_checkpoint_last (store, &time_ms) == 3 && time_ms == 300);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_CHECKPOINT, 500, "lost") == 5);
    kim_store_abort (store);
    assert (kim_store_checkpoint_last (store, &time_ms) == 3 && time_ms == 300);
    kim_store_destroy (&store);
    store = s_test_open (path);
    assert (kim_store_checkpoint_last (store, NULL) == 0);
    kim_store_destroy (&store);
}

//  Members gathered under a group in a batch: written at commit, one put
//  per KIM_STORE_GROUP_PART members, each part under its own key; a batch
//  given up writes none; a value that is not a group's reads as none.
static size_t
s_test_group_count (kim_store_t *store, uint8_t kind, size_t *entries)
{
    assert (kim_store_begin (store) == 0);
    MDB_cursor *cursor;
    assert (mdb_cursor_open (kim_store_txn (store), kim_store_dbi (store, KIM_DB_TIMER),
                             &cursor) == 0);
    size_t members = 0;
    *entries = 0;
    MDB_val key, value;
    int rc;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        assert (key.mv_size == 2 + 8 + 2);
        if (((const uint8_t *) key.mv_data) [1] != kind)
            continue;
        (*entries)++;
        size_t at = 0, size;
        const uint8_t *member;
        while ((member = kim_store_group_next (&value, &at, &size))) {
            assert (size == 3 && memcmp (member, "id", 2) == 0);
            members++;
        }
    }
    assert (rc == MDB_NOTFOUND);
    mdb_cursor_close (cursor);
    kim_store_abort (store);
    return members;
}

static void
s_test_groups (const char *path)
{
    kim_store_t *store = s_test_open (path);
    kim_store_writes_t before, after;
    kim_store_writes (store, &before);
    //  150 members of group 'a', 3 of group 'b', in one batch
    assert (kim_store_begin (store) == 0);
    for (int i = 0; i < 150; i++) {
        char id [4] = { 'i', 'd', (char) ('0' + i % 10), 0 };
        assert (kim_store_group_add (store, KIM_DB_TIMER, "ga", 2, id, 3) == 0);
        if (i < 3)
            assert (kim_store_group_add (store, KIM_DB_TIMER, "gb", 2, id, 3) == 0);
    }
    assert (kim_store_group_add (store, KIM_DB_TIMER, "", 0, "x", 1) == -KIM_E_ARGS);
    assert (kim_store_group_add (store, KIM_DB_TIMER, "ga", 2, "", 0) == -KIM_E_ARGS);
    assert (kim_store_commit (store, NULL) == 0);
    kim_store_writes (store, &after);
    //  Three parts of 'a' (64, 64, 22) and one of 'b': four puts in all
    assert (after.tree [KIM_DB_TIMER].puts - before.tree [KIM_DB_TIMER].puts == 4);
    size_t entries;
    assert (s_test_group_count (store, 'a', &entries) == 150 && entries == 3);
    assert (s_test_group_count (store, 'b', &entries) == 3 && entries == 1);
    //  A batch given up writes nothing; the next batch's groups are its own
    assert (kim_store_begin (store) == 0);
    assert (kim_store_group_add (store, KIM_DB_TIMER, "gb", 2, "id7", 3) == 0);
    kim_store_abort (store);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_group_add (store, KIM_DB_TIMER, "gb", 2, "id8", 3) == 0);
    assert (kim_store_commit (store, NULL) == 0);
    assert (s_test_group_count (store, 'b', &entries) == 4 && entries == 2);
    //  Values of another form are no group
    size_t at = 0, size;
    MDB_val one = { 1, (void *) "\x01" }, empty = { 3, (void *) "\x00\x00x" };
    MDB_val short_member = { 3, (void *) "\x00\x05x" };
    assert (!kim_store_group_next (&one, &at, &size));
    at = 0;
    assert (!kim_store_group_next (&empty, &at, &size));
    at = 0;
    assert (!kim_store_group_next (&short_member, &at, &size));
    kim_store_read_end (store);
    kim_store_destroy (&store);
}

//  Keys are made ahead: a payload batch commits the key store only when a
//  chunk runs out, keys made before a restart are used after it, a batch
//  given up takes none, and payloads stored before the pool (version 1,
//  key by seq) still read.
static void
s_test_key_pool (const char *path, const char *keys_path)
{
    kim_store_t *store = s_test_open (path);
    uint64_t first = kim_store_head (store) + 1;
    bool retry;
    uint64_t last_id = 0;
    for (int i = 0; i < 3; i++) {
        assert (kim_store_begin (store) == 0);
        uint64_t seq = s_test_append (store, KIM_RECORD_MESSAGE, 3, "pooled");
        assert (kim_store_payload_put (store, seq, (const uint8_t *) "pool", 4) == 0);
        uint8_t seq_bytes [8];
        kim_log_put_be64 (seq_bytes, seq);
        MDB_val seq_key = { 8, seq_bytes }, stored;
        assert (mdb_get (kim_store_txn (store), kim_store_dbi (store, KIM_DB_PAYLOAD), &seq_key,
                         &stored) == 0);
        uint64_t id = kim_log_get_be64 ((const uint8_t *) stored.mv_data + 1);
        assert (i == 0 || id == last_id + 1);
        last_id = id;
        assert (kim_store_commit (store, &retry) == 0);
    }
    //  Given up: the replayed batch takes the same key id again
    assert (kim_store_begin (store) == 0);
    uint64_t given_up = s_test_append (store, KIM_RECORD_MESSAGE, 3, "given up");
    assert (kim_store_payload_put (store, given_up, (const uint8_t *) "lost", 4) == 0);
    kim_store_abort (store);
    //  Nothing of a batch given up reads back, not even from the payloads
    //  kept in memory; one committed does, until it is erased
    const uint8_t *kept;
    size_t kept_size;
    assert (kim_store_payload_get (store, given_up, &kept, &kept_size) == 0 && kept_size == 0);
    assert (kim_store_payload_get (store, given_up - 1, &kept, &kept_size) == 0);
    assert (kept_size == 4 && memcmp (kept, "pool", 4) == 0);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_payload_del (store, given_up - 1) == 0);
    assert (kim_store_payload_get (store, given_up - 1, &kept, &kept_size) == 0 && kept_size == 0);
    kim_store_abort (store);
    kim_store_destroy (&store);

    //  A version-1 payload: the key in the slot of its seq
    uint64_t old_seq = first + 3;
    uint8_t old_key [32], nonce [24], sealed [1 + 24 + 7 + 16], ad [8];
    crypto_aead_xchacha20poly1305_ietf_keygen (old_key);
    randombytes_buf (nonce, sizeof nonce);
    kim_log_put_be64 (ad, old_seq);
    sealed [0] = 1;
    memcpy (sealed + 1, nonce, sizeof nonce);
    crypto_aead_xchacha20poly1305_ietf_encrypt (sealed + 25, NULL, (const uint8_t *) "version",
                                                7, ad, 8, NULL, nonce, old_key);
    char *keys_dir = zsys_sprintf ("%s/keys", path);
    int err = 0;
    kim_keystore_t *keystore = kim_keystore_new (keys_dir, false, false, (size_t) 1 << 24, &err);
    assert (keystore);
    uint64_t last = 0;
    assert (kim_keystore_last (keystore, &last) == 1);
    //  One chunk made for the three batches, none for the one given up
    assert (last == (((uint64_t) 1 << 63) | 4095));
    assert (kim_keystore_put (keystore, old_seq, old_key) == 0);
    assert (kim_keystore_commit (keystore) == 0);
    kim_keystore_destroy (&keystore);
    zstr_free (&keys_dir);

    store = s_test_open (path);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 3, "version 1") == old_seq);
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, old_seq);
    MDB_val key = { 8, key_bytes }, value = { sizeof sealed, sealed };
    assert (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_PAYLOAD), &key, &value,
                     0) == 0);
    //  After the restart: the next id of the chunk made before, no new chunk
    uint64_t seq = s_test_append (store, KIM_RECORD_MESSAGE, 3, "after");
    assert (kim_store_payload_put (store, seq, (const uint8_t *) "after", 5) == 0);
    kim_log_put_be64 (key_bytes, seq);
    assert (mdb_get (kim_store_txn (store), kim_store_dbi (store, KIM_DB_PAYLOAD), &key,
                     &value) == 0);
    assert (kim_log_get_be64 ((const uint8_t *) value.mv_data + 1) == last_id + 1);
    assert (kim_store_commit (store, &retry) == 0);
    const uint8_t *data;
    size_t size;
    assert (kim_store_payload_get (store, old_seq, &data, &size) == 0);
    assert (size == 7 && memcmp (data, "version", 7) == 0);
    assert (kim_store_payload_get (store, seq, &data, &size) == 0);
    assert (size == 5 && memcmp (data, "after", 5) == 0);
    for (uint64_t s = first; s < first + 3; s++) {
        assert (kim_store_payload_get (store, s, &data, &size) == 0);
        assert (size == 4 && memcmp (data, "pool", 4) == 0);
    }
    kim_store_read_end (store);
    //  Erasing a version-1 payload deletes the key in its seq's slot
    uint8_t secret [32];
    assert (kim_store_payload_key (store, old_seq, secret) == 1);
    assert (memcmp (secret, old_key, 32) == 0);
    kim_store_read_end (store);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_payload_del (store, old_seq) == 0);
    assert (kim_store_commit (store, &retry) == 0);
    assert (kim_store_payload_key (store, old_seq, secret) == 0);
    kim_store_read_end (store);
    kim_store_destroy (&store);
    zchunk_t *file = zchunk_slurp (keys_path, 0);
    assert (file && !memmem (zchunk_data (file), zchunk_size (file), old_key, 32));
    zchunk_destroy (&file);
}

//  Payloads at rest: encrypted under a key of their own, which a purge
//  deletes; payloads from before (below META keys_from) read as stored.
static void
s_test_at_rest (const char *path)
{
    kim_store_t *store = s_test_open (path);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 1, "old") == 1);
    //  As a store before at-rest encryption held it, and says so
    uint8_t key_bytes [8], from [8];
    kim_log_put_be64 (key_bytes, 1);
    kim_log_put_be64 (from, 2);
    MDB_val key = { 8, key_bytes }, value = { 3, (void *) "old" };
    assert (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_PAYLOAD), &key, &value,
                     0) == 0);
    MDB_val meta = { 9, (void *) "keys_from" }, meta_value = { 8, from };
    assert (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_META), &meta,
                     &meta_value, 0) == 0);
    bool retry;
    assert (kim_store_commit (store, &retry) == 0);
    kim_store_destroy (&store);

    store = s_test_open (path);
    const uint8_t *data;
    size_t size;
    uint8_t secret [32];
    assert (kim_store_payload_get (store, 1, &data, &size) == 0);
    assert (size == 3 && memcmp (data, "old", 3) == 0);
    assert (kim_store_payload_key (store, 1, secret) == 0);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 2, "new") == 2);
    assert (kim_store_payload_put (store, 2, (const uint8_t *) "sealed new", 10) == 0);
    //  At rest: version byte, key id, nonce, ciphertext and tag; not the
    //  bytes given
    kim_log_put_be64 (key_bytes, 2);
    assert (mdb_get (kim_store_txn (store), kim_store_dbi (store, KIM_DB_PAYLOAD), &key,
                     &value) == 0);
    assert (value.mv_size == 10 + 49 && ((const uint8_t *) value.mv_data) [0] == 2);
    assert (!memmem (value.mv_data, value.mv_size, "sealed new", 10));
    assert (kim_store_commit (store, &retry) == 0);
    assert (kim_store_payload_get (store, 2, &data, &size) == 0);
    assert (size == 10 && memcmp (data, "sealed new", 10) == 0);
    assert (kim_store_payload_exists (store, 2) == 1);
    assert (kim_store_payload_key (store, 2, secret) == 1);
    kim_store_read_end (store);

    //  A purge deletes the key; the compacted key store no longer holds it
    assert (kim_store_begin (store) == 0);
    assert (kim_store_payload_del (store, 2) == 0);
    assert (kim_store_payload_del (store, 1) == 0);
    assert (kim_store_commit (store, &retry) == 0);
    assert (kim_store_payload_key (store, 2, secret) == 0);
    assert (kim_store_payload_get (store, 2, &data, &size) == 0 && size == 0);
    assert (kim_store_payload_get (store, 1, &data, &size) == 0 && size == 0);
    assert (kim_store_payload_exists (store, 2) == 0);
    kim_store_read_end (store);
    char *keys = zsys_sprintf ("%s/keys/data.mdb", path);
    assert (keys);
    zchunk_t *file = zchunk_slurp (keys, 0);
    assert (file && zchunk_size (file) > 0);
    assert (!memmem (zchunk_data (file), zchunk_size (file), secret, sizeof secret));
    zchunk_destroy (&file);
    kim_store_destroy (&store);
    s_test_key_pool (path, keys);
    zstr_free (&keys);
}

//  The bytes of payload `i` in s_test_seal_beside: sizes up to 5,401
//  bytes, above what the recent copies keep (4,096), so that reads of the
//  larger ones go to the tree.
static size_t
s_test_seal_payload (size_t i, uint8_t *data)
{
    size_t size = 1 + (i % 7) * 900;
    for (size_t j = 0; j < size; j++)
        data [j] = (uint8_t) (i * 31 + j);
    return size;
}

static bool
s_test_payload_is (kim_store_t *store, uint64_t seq, const uint8_t *data, size_t size)
{
    const uint8_t *read;
    size_t read_size;
    return kim_store_payload_get (store, seq, &read, &read_size) == 0 && read_size == size
        && memcmp (read, data, size) == 0;
}

//  Whether `db` holds seq in the open batch's transaction itself
static bool
s_test_in_db (kim_store_t *store, kim_db_t db, uint64_t seq)
{
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val key = { 8, key_bytes }, value;
    return mdb_get (kim_store_txn (store), kim_store_dbi (store, db), &key, &value) == 0;
}

static bool
s_test_in_tree (kim_store_t *store, uint64_t seq)
{
    return s_test_in_db (store, KIM_DB_PAYLOAD, seq);
}

//  With a helper thread, the newest record's payload is sealed beside the
//  caller and put into the tree when the batch commits, or before the
//  batch touches the payload tree otherwise (a read, an erasure, a put for
//  an older record); an abandoned batch forgets it. What was stored reads
//  back the same, also through a store opened without a helper.
static void
s_test_seal_beside (const char *path)
{
    kim_work_t *work = kim_work_new (8);    //  few slots: posting waits too
    assert (work);
    kim_store_t *store = s_test_open (path);
    assert (kim_store_set_work (store, work) == 0);
    uint8_t data [6000];
    size_t size;
    bool retry;
    //  More than a batch holds waiting (1,024): the first ones go into the
    //  tree while the batch goes on
    enum { COUNT = 1100 };
    uint64_t first = kim_store_head (store) + 1;
    assert (kim_store_begin (store) == 0);
    assert (kim_store_set_work (store, NULL) == -KIM_E_BUSY);
    for (size_t i = 0; i < COUNT; i++) {
        uint64_t seq = s_test_append (store, KIM_RECORD_MESSAGE, 5, "beside");
        assert (seq == first + i);
        size = s_test_seal_payload (i, data);
        assert (kim_store_payload_put (store, seq, data, size) == 0);
    }
    assert (s_test_in_tree (store, first));
    assert (!s_test_in_tree (store, first + COUNT - 1));
    //  A read the recent copies do not serve puts what waits first
    size_t large = COUNT - 1;
    while (s_test_seal_payload (large, data) <= 4096)
        large--;
    size = s_test_seal_payload (large, data);
    assert (s_test_payload_is (store, first + large, data, size));
    assert (s_test_in_tree (store, first + COUNT - 1));
    //  Erased while waiting: gone, key and all
    uint64_t erased = s_test_append (store, KIM_RECORD_MESSAGE, 5, "erased");
    assert (kim_store_payload_put (store, erased, (const uint8_t *) "erase me", 8) == 0);
    assert (!s_test_in_tree (store, erased));
    assert (kim_store_payload_del (store, erased) == 0);
    assert (kim_store_payload_exists (store, erased) == 0);
    //  An older record's payload replaced while a newer one waits
    uint64_t newest = s_test_append (store, KIM_RECORD_MESSAGE, 5, "newest");
    assert (kim_store_payload_put (store, newest, (const uint8_t *) "newest", 6) == 0);
    assert (kim_store_payload_put (store, first, (const uint8_t *) "replaced", 8) == 0);
    assert (s_test_in_tree (store, newest));
    //  One still waits when the batch commits
    uint64_t last = s_test_append (store, KIM_RECORD_MESSAGE, 5, "last");
    assert (kim_store_payload_put (store, last, (const uint8_t *) "last", 4) == 0);
    assert (!s_test_in_tree (store, last));
    assert (kim_store_commit (store, &retry) == 0);

    //  An abandoned batch forgets what waited
    assert (kim_store_begin (store) == 0);
    uint64_t given_up = s_test_append (store, KIM_RECORD_MESSAGE, 5, "given up");
    assert (given_up == last + 1);
    assert (kim_store_payload_put (store, given_up, (const uint8_t *) "lost", 4) == 0);
    kim_store_abort (store);
    //  ...also when the next batch writes the same seq without a payload
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 5, "no payload") == given_up);
    assert (kim_store_commit (store, &retry) == 0);
    kim_store_destroy (&store);
    kim_work_destroy (&work);

    store = s_test_open (path);
    assert (s_test_payload_is (store, first, (const uint8_t *) "replaced", 8));
    for (size_t i = 1; i < COUNT; i++) {
        size = s_test_seal_payload (i, data);
        assert (s_test_payload_is (store, first + i, data, size));
    }
    assert (kim_store_payload_exists (store, erased) == 0);
    assert (s_test_payload_is (store, newest, (const uint8_t *) "newest", 6));
    assert (s_test_payload_is (store, last, (const uint8_t *) "last", 4));
    assert (kim_store_payload_exists (store, given_up) == 0);
    kim_store_read_end (store);
    kim_store_destroy (&store);
}

//  Appends a record and checks it reads back; returns its seq
static uint64_t
s_test_append (kim_store_t *store, uint8_t kind, uint64_t time_ms, const char *body)
{
    uint64_t seq = 0;
    int rc = kim_store_append (store, kind, time_ms, (const uint8_t *) body,
                               strlen (body), &seq);
    assert (rc == 0);
    assert (seq == kim_store_head (store));
    return seq;
}

//  Checks records from..to read back and chain onto `prev`
static void
s_test_chain (kim_store_t *store, uint64_t from, uint64_t to, const uint8_t *prev_hash)
{
    uint8_t prev [KIM_HASH_SIZE];
    memcpy (prev, prev_hash, KIM_HASH_SIZE);
    for (uint64_t seq = from; seq <= to; seq++) {
        kim_record_t record;
        assert (kim_store_read (store, seq, &record) == 0);
        assert (record.seq == seq);
        uint8_t hash [KIM_HASH_SIZE];
        kim_store_record_hash (prev, record.kind, seq, record.time_ms,
                               record.body, record.body_size, hash);
        assert (memcmp (hash, record.hash, KIM_HASH_SIZE) == 0);
        memcpy (prev, hash, KIM_HASH_SIZE);
    }
}

static bool
s_test_in_log (kim_store_t *store, uint64_t seq)
{
    return s_test_in_db (store, KIM_DB_LOG, seq);
}

//  Appends record `i` of s_test_chain_beside (bodies of 0 to 1,999 bytes)
//  and carries the hash the chain must reach in `chain`
static uint64_t
s_test_chain_append (kim_store_t *store, size_t i, uint8_t *body, uint8_t chain [KIM_HASH_SIZE])
{
    size_t size = (i * 37) % 2000;
    for (size_t j = 0; j < size; j++)
        body [j] = (uint8_t) (i + j * 7);
    uint64_t seq = 0;
    assert (kim_store_append (store, KIM_RECORD_STATE, 1000 + i, body, size, &seq) == 0);
    kim_store_record_hash (chain, KIM_RECORD_STATE, seq, 1000 + i, body, size, chain);
    return seq;
}

//  With a helper thread, the records of a batch are hashed beside the
//  caller and put into the log when the batch commits, or before the batch
//  reads the log; the batch's head hash completes the chain without
//  putting them, and an abandoned batch forgets them. The chain verifies
//  through a store opened without a helper.
static void
s_test_chain_beside (const char *path)
{
    //  Room for more jobs than wake the helper (32): it hashes beside this
    //  thread (ThreadSanitizer's runs of kim-bench check how they share)
    kim_work_t *work = kim_work_new (64);
    assert (work);
    kim_store_t *store = s_test_open (path);
    assert (kim_store_set_work (store, work) == 0);
    size_t huge_size = (size_t) 1100 << 10;     //  beyond what the helper takes
    uint8_t *body = (uint8_t *) malloc (huge_size);
    assert (body);
    uint8_t chain [KIM_HASH_SIZE], start [KIM_HASH_SIZE];
    memcpy (start, kim_store_head_hash (store), KIM_HASH_SIZE);
    memcpy (chain, start, KIM_HASH_SIZE);
    bool retry;
    //  More records than a batch holds waiting (4,096): the first ones go
    //  into the log while the batch goes on
    enum { COUNT = 4500 };
    uint64_t first = kim_store_head (store) + 1;
    assert (kim_store_begin (store) == 0);
    for (size_t i = 0; i < COUNT; i++)
        assert (s_test_chain_append (store, i, body, chain) == first + i);
    uint64_t last = first + COUNT - 1;
    assert (s_test_in_log (store, first));
    assert (!s_test_in_log (store, last));
    //  The head hash is the chain's end, and the records still wait
    assert (memcmp (kim_store_head_hash (store), chain, KIM_HASH_SIZE) == 0);
    assert (!s_test_in_log (store, last));
    //  ...and the chain goes on from there
    uint64_t more = s_test_chain_append (store, COUNT, body, chain);
    //  A read of the log puts what waits first
    kim_record_t record;
    assert (kim_store_read (store, more, &record) == 0);
    assert (memcmp (record.hash, chain, KIM_HASH_SIZE) == 0);
    assert (s_test_in_log (store, last));
    //  A record too large for the helper, after some that wait
    uint64_t before = s_test_chain_append (store, COUNT + 1, body, chain);
    assert (!s_test_in_log (store, before));
    memset (body, 'h', huge_size);
    uint64_t huge = 0;
    assert (kim_store_append (store, KIM_RECORD_STATE, 7, body, huge_size, &huge) == 0);
    kim_store_record_hash (chain, KIM_RECORD_STATE, huge, 7, body, huge_size, chain);
    assert (s_test_in_log (store, before) && s_test_in_log (store, huge));
    //  Some still wait when the batch commits
    for (size_t i = 0; i < 10; i++)
        last = s_test_chain_append (store, COUNT + 2 + i, body, chain);
    assert (!s_test_in_log (store, last));
    assert (kim_store_commit (store, &retry) == 0);
    assert (memcmp (kim_store_head_hash (store), chain, KIM_HASH_SIZE) == 0);

    //  An abandoned batch forgets what waited, also when the next batch
    //  writes the same seqs
    assert (kim_store_begin (store) == 0);
    uint8_t lost [KIM_HASH_SIZE];
    memcpy (lost, chain, KIM_HASH_SIZE);
    for (size_t i = 0; i < 6; i++)
        assert (s_test_chain_append (store, 9000 + i, body, lost) == last + 1 + i);
    kim_store_abort (store);
    assert (kim_store_begin (store) == 0);
    for (size_t i = 0; i < 3; i++)
        assert (s_test_chain_append (store, 7000 + i, body, chain) == last + 1 + i);
    last += 3;
    assert (kim_store_commit (store, &retry) == 0);
    kim_store_destroy (&store);
    kim_work_destroy (&work);

    store = s_test_open (path);
    assert (kim_store_head (store) == last);
    assert (memcmp (kim_store_head_hash (store), chain, KIM_HASH_SIZE) == 0);
    s_test_chain (store, first, last, start);
    kim_store_read_end (store);
    kim_store_destroy (&store);
    free (body);
}

static void
s_test_pipe_write (int fd, char c)
{
    ssize_t n = write (fd, &c, 1);
    assert (n == 1);
}

static char
s_test_pipe_read (int fd)
{
    char c = 0;
    ssize_t n = read (fd, &c, 1);
    assert (n == 1);
    return c;
}

//  A reader in another process, as an audit tool would be: sees what the
//  writer committed, and after a new snapshot what it committed since.
static int
s_test_reader (const char *path, uint64_t head, const uint8_t *head_hash,
               int ready_fd, int go_fd)
{
    kim_store_config_t config = { .path = path, .read_only = true };
    int err;
    kim_store_t *reader = kim_store_new (&config, &err);
    if (!reader)
        return 1;
    if (kim_store_head (reader) != head
    ||  memcmp (kim_store_head_hash (reader), head_hash, KIM_HASH_SIZE) != 0)
        return 2;
    kim_record_t record;
    if (kim_store_read (reader, head, &record) || record.body_size != 4
    ||  memcmp (record.body, "last", 4) != 0)
        return 3;
    if (kim_store_mailbox_count (reader, "jc.a") != 2)
        return 4;
    if (kim_store_begin (reader) != -KIM_E_ARGS)
        return 5;
    kim_store_read_end (reader);
    s_test_pipe_write (ready_fd, 'r');
    if (s_test_pipe_read (go_fd) != 'g')
        return 6;
    if (kim_store_read_begin (reader) || kim_store_head (reader) != head + 1)
        return 7;
    if (kim_store_read (reader, head + 1, &record) || record.body_size != 5
    ||  memcmp (record.body, "later", 5) != 0)
        return 8;
    kim_store_read_end (reader);
    kim_store_destroy (&reader);
    return 0;
}

//  Opens read-only while the map is small, then reads everything the
//  writer committed after growing it.
static int
s_test_growth_reader (const char *path, size_t payload_size, int ready_fd, int go_fd)
{
    kim_store_config_t config = { .path = path, .read_only = true };
    int err;
    kim_store_t *reader = kim_store_new (&config, &err);
    if (!reader)
        return 1;
    s_test_pipe_write (ready_fd, 'r');
    uint8_t head_bytes [8];
    if (read (go_fd, head_bytes, 8) != 8)
        return 2;
    uint64_t head = kim_log_get_be64 (head_bytes);
    if (kim_store_read_begin (reader) || kim_store_head (reader) != head)
        return 3;
    for (uint64_t seq = 1; seq <= head; seq++) {
        const uint8_t *data;
        size_t size;
        if (kim_store_payload_get (reader, seq, &data, &size) || size != payload_size
        ||  data [size - 1] != (uint8_t) (seq & 0xff))
            return 4;
    }
    kim_store_read_end (reader);
    kim_store_destroy (&reader);
    return 0;
}

//  Map growth: 64 KiB payloads into a 1 MiB map that may grow to 4 MiB
static void
s_test_map_growth (const char *path, bool verbose)
{
    kim_store_config_t config = {
        .path = path, .map_size = 1 << 20, .map_max = 4 << 20, .nosync = true
    };
    //  Create the store, so that a reader in another process can open it
    //  at the small map; it must then follow the writer's growth (LMDB
    //  tells it MDB_MAP_RESIZED). The child is forked with no store open.
    int err;
    kim_store_t *store = kim_store_new (&config, &err);
    assert (store);
    kim_store_destroy (&store);
    size_t payload_size = 64 * 1024;
    int ready [2], go [2];
    assert (pipe (ready) == 0 && pipe (go) == 0);
    fflush (stdout);
    fflush (stderr);
    pid_t pid = fork ();
    assert (pid >= 0);
    if (pid == 0) {
        close (ready [0]);
        close (go [1]);
        _exit (s_test_growth_reader (path, payload_size, ready [1], go [0]));
    }
    close (ready [1]);
    close (go [0]);
    assert (s_test_pipe_read (ready [0]) == 'r');
    store = kim_store_new (&config, &err);
    assert (store);
    uint8_t *payload = (uint8_t *) malloc (payload_size);
    assert (payload);

    uint64_t committed = 0;
    int grown = 0;
    bool at_max = false;
    while (!at_max) {
        //  One batch: four records with payloads; replayed after growth
        assert (kim_store_begin (store) == 0);
        int rc = 0;
        for (int i = 0; i < 4 && rc == 0; i++) {
            uint64_t seq;
            rc = kim_store_append (store, KIM_RECORD_MESSAGE, 1000, (const uint8_t *) "big", 3, &seq);
            if (rc == 0) {
                assert (seq == committed + (uint64_t) i + 1);
                memset (payload, (int) (seq & 0xff), payload_size);
                rc = kim_store_payload_put (store, seq, payload, payload_size);
            }
            assert (rc == 0 || rc == -KIM_E_STORE_FULL);
        }
        if (rc == -KIM_E_STORE_FULL) {
            //  Once full, the batch refuses everything until commit
            uint64_t seq;
            assert (kim_store_append (store, 1, 1, NULL, 0, &seq) == -KIM_E_STORE_FULL);
            assert (kim_store_mailbox_put (store, "jc.a", 1) == -KIM_E_STORE_FULL);
        }
        bool retry = true;
        rc = kim_store_commit (store, &retry);
        if (rc == 0) {
            assert (kim_store_head (store) == committed + 4);
            committed += 4;
            continue;
        }
        assert (rc == -KIM_E_STORE_FULL);
        assert (!kim_store_failed (store));
        assert (kim_store_head (store) == committed);
        if (retry)
            grown++;
        else
            at_max = true;
    }
    if (verbose)
        zsys_info ("kim_store_test: map grew %d times, %" PRIu64 " records at the maximum",
                   grown, committed);
    assert (grown == 2);
    assert (committed >= 40);           //  4 MiB holds some 60 such records
    assert (!kim_store_failed (store));
    assert (kim_store_bytes (store) <= (uint64_t) 4 << 20);

    uint8_t head_bytes [8];
    kim_log_put_be64 (head_bytes, committed);
    assert (write (go [1], head_bytes, 8) == 8);
    int status = 0;
    assert (waitpid (pid, &status, 0) == pid);
    if (!WIFEXITED (status) || WEXITSTATUS (status) != 0)
        zsys_error ("kim_store_test: growth reader failed with status %d", status);
    assert (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    close (ready [0]);
    close (go [1]);

    //  Everything committed reads back, also after reopening at a smaller
    //  configured size: the grown map is kept.
    for (int round = 0; round < 2; round++) {
        assert (kim_store_read_begin (store) == 0);
        for (uint64_t seq = 1; seq <= committed; seq++) {
            kim_record_t record;
            assert (kim_store_read (store, seq, &record) == 0);
            const uint8_t *data;
            size_t size;
            assert (kim_store_payload_get (store, seq, &data, &size) == 0);
            assert (size == payload_size);
            assert (data [0] == (uint8_t) (seq & 0xff) && data [size - 1] == data [0]);
        }
        kim_store_read_end (store);
        //  A small batch still fits or is refused cleanly; never fails
        assert (kim_store_begin (store) == 0);
        assert (kim_store_commit (store, NULL) == 0);
        assert (!kim_store_failed (store));
        kim_store_destroy (&store);
        store = kim_store_new (&config, &err);
        assert (store);
        assert (kim_store_head (store) == committed);
    }
    kim_store_destroy (&store);
    free (payload);
}

//  Runs `test` on a store of its own, `name` in `dir`, and removes it.
static void
s_test_in (const char *dir, const char *name, void (*test) (const char *path))
{
    char *path = zsys_sprintf ("%s/%s", dir, name);
    assert (path);
    test (path);
    s_test_remove (path);
    zstr_free (&path);
}

void
kim_store_test (bool verbose)
{
    printf (" * kim_store: ");
    if (verbose)
        printf ("\n");

    char template_ [] = "/tmp/kim_store_test.XXXXXX";
    char *dir = mkdtemp (template_);
    assert (dir);
    char *path = zsys_sprintf ("%s/store", dir);
    char *path2 = zsys_sprintf ("%s/grow", dir);
    char *path3 = zsys_sprintf ("%s/bad", dir);
    assert (path && path2 && path3);

    kim_store_config_t config = { .path = path, .dedup_window_ms = 1000 };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    assert (store);
    assert (err == 0);
    assert (kim_store_head (store) == 0);
    uint8_t zero [KIM_HASH_SIZE] = { 0 };
    assert (memcmp (kim_store_head_hash (store), zero, KIM_HASH_SIZE) == 0);
    assert (kim_store_txn (store) == NULL);

    //  Writes outside a batch are refused
    assert (kim_store_append (store, 1, 1, NULL, 0, NULL) == -KIM_E_ARGS);

    //  Append, commit, read back; the chain starts at zero
    assert (kim_store_begin (store) == 0);
    assert (kim_store_begin (store) == -KIM_E_BUSY);
    assert (kim_store_txn (store) != NULL);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 1001, "alpha") == 1);
    assert (s_test_append (store, KIM_RECORD_DECISION, 1002, "") == 2);
    assert (s_test_append (store, KIM_RECORD_STATE, 1003, "gamma") == 3);
    //  Reads inside the batch see it
    kim_record_t record;
    assert (kim_store_read (store, 3, &record) == 0);
    assert (record.kind == KIM_RECORD_STATE);
    bool retry = true;
    assert (kim_store_commit (store, &retry) == 0);
    assert (!retry);
    assert (kim_store_head (store) == 3);

    assert (kim_store_read_begin (store) == 0);
    assert (kim_store_read (store, 1, &record) == 0);
    assert (record.seq == 1 && record.kind == KIM_RECORD_MESSAGE && record.time_ms == 1001);
    assert (record.body_size == 5 && memcmp (record.body, "alpha", 5) == 0);
    assert (kim_store_read (store, 2, &record) == 0);
    assert (record.kind == KIM_RECORD_DECISION && record.body_size == 0);
    assert (kim_store_read (store, 3, &record) == 0);
    assert (record.time_ms == 1003 && memcmp (record.body, "gamma", 5) == 0);
    assert (memcmp (record.hash, kim_store_head_hash (store), KIM_HASH_SIZE) == 0);
    s_test_chain (store, 1, 3, zero);
    assert (kim_store_read (store, 0, &record) == -KIM_E_NOT_FOUND);
    assert (kim_store_read (store, 4, &record) == -KIM_E_NOT_FOUND);
    kim_store_read_end (store);
    //  Reads work without read_begin too (implicit snapshot)
    assert (kim_store_read (store, 2, &record) == 0);

    //  Abort forgets records; their seqs are used again
    uint8_t head_hash [KIM_HASH_SIZE];
    memcpy (head_hash, kim_store_head_hash (store), KIM_HASH_SIZE);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 1004, "lost") == 4);
    kim_store_abort (store);
    assert (kim_store_head (store) == 3);
    assert (memcmp (kim_store_head_hash (store), head_hash, KIM_HASH_SIZE) == 0);
    assert (kim_store_read (store, 4, &record) == -KIM_E_NOT_FOUND);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 1005, "kept") == 4);

    //  Payloads, including an empty one
    assert (kim_store_payload_put (store, 1, (const uint8_t *) "data", 4) == 0);
    assert (kim_store_payload_put (store, 2, NULL, 0) == 0);
    const uint8_t *data;
    size_t size;
    assert (kim_store_payload_get (store, 1, &data, &size) == 0);
    assert (size == 4 && memcmp (data, "data", 4) == 0);

    //  Mailboxes; "jc.ab" shares a prefix with "jc.a"
    assert (kim_store_mailbox_put (store, "jc.a", 1) == 0);
    assert (kim_store_mailbox_put (store, "jc.a", 2) == 0);
    assert (kim_store_mailbox_put (store, "jc.ab", 3) == 0);
    assert (kim_store_mailbox_put (store, "jc.a", 4) == 0);
    assert (kim_store_mailbox_put (store, "jc.a", 1) == 0);      //  again: no change
    assert (kim_store_mailbox_put (store, "", 1) == -KIM_E_ARGS);
    assert (kim_store_mailbox_count (store, "jc.a") == 3);
    assert (kim_store_mailbox_count (store, "jc.ab") == 1);

    //  De-duplication sees its own batch
    uint64_t seq = 0;
    assert (kim_store_dedup_get (store, "jc.a", "m1", &seq) == 0);
    assert (kim_store_dedup_put (store, "jc.a", "m1", 1, 1000) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m1", &seq) == 1 && seq == 1);
    assert (kim_store_dedup_get (store, "jc.a", "", &seq) == -KIM_E_ARGS);
    assert (kim_store_commit (store, &retry) == 0);

    assert (kim_store_read_begin (store) == 0);
    assert (kim_store_payload_get (store, 1, &data, &size) == 0);
    assert (size == 4 && memcmp (data, "data", 4) == 0);
    assert (kim_store_payload_get (store, 2, &data, &size) == 0);
    assert (data == NULL && size == 0);
    assert (kim_store_payload_get (store, 99, &data, &size) == 0);
    assert (data == NULL && size == 0);

    uint64_t seqs [8];
    assert (kim_store_mailbox_scan (store, "jc.a", 0, seqs, NULL, 8) == 3);
    assert (seqs [0] == 1 && seqs [1] == 2 && seqs [2] == 4);
    assert (kim_store_mailbox_scan (store, "jc.a", 2, seqs, NULL, 8) == 1 && seqs [0] == 4);
    assert (kim_store_mailbox_scan (store, "jc.a", 0, seqs, NULL, 2) == 2 && seqs [1] == 2);
    assert (kim_store_mailbox_scan (store, "jc.a", 4, seqs, NULL, 8) == 0);
    assert (kim_store_mailbox_scan (store, "jc.a", UINT64_MAX, seqs, NULL, 8) == 0);
    assert (kim_store_mailbox_scan (store, "jc.ab", 0, seqs, NULL, 8) == 1 && seqs [0] == 3);
    assert (kim_store_mailbox_scan (store, "jc", 0, seqs, NULL, 8) == 0);
    assert (kim_store_mailbox_scan (store, "jc.abc", 0, seqs, NULL, 8) == 0);
    assert (kim_store_dedup_get (store, "jc.a", "m1", &seq) == 1 && seq == 1);
    assert (kim_store_dedup_get (store, "jc.a", "m2", &seq) == 0);
    assert (kim_store_dedup_get (store, "jc.ab", "m1", &seq) == 0);
    kim_store_read_end (store);

    //  Mailbox deletes: counted in the batch, forgotten on abort
    assert (kim_store_begin (store) == 0);
    assert (kim_store_mailbox_del (store, "jc.a", 2) == 0);
    assert (kim_store_mailbox_del (store, "jc.a", 2) == -KIM_E_NOT_FOUND);
    assert (kim_store_mailbox_del (store, "jc.zz", 2) == -KIM_E_NOT_FOUND);
    assert (kim_store_mailbox_count (store, "jc.a") == 2);
    assert (kim_store_mailbox_scan (store, "jc.a", 0, seqs, NULL, 8) == 2);
    kim_store_abort (store);
    assert (kim_store_mailbox_count (store, "jc.a") == 3);
    assert (kim_store_mailbox_count (store, "jc.zz") == 0);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_mailbox_put (store, "jc.x", 5) == 0);
    assert (kim_store_mailbox_count (store, "jc.x") == 1);
    kim_store_abort (store);
    assert (kim_store_mailbox_count (store, "jc.x") == 0);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_mailbox_del (store, "jc.a", 2) == 0);
    assert (kim_store_mailbox_put (store, "jc.y", 9) == 0);
    assert (kim_store_mailbox_del (store, "jc.y", 9) == 0);
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_mailbox_count (store, "jc.a") == 2);
    assert (kim_store_mailbox_count (store, "jc.y") == 0);

    //  Notes come back when the entry is taken; a copy keeps its flag
    char note [KIM_MAILBOX_NOTE_MAX + 1];
    char long_note [KIM_MAILBOX_NOTE_MAX + 2];
    memset (long_note, 'x', sizeof long_note - 1);
    long_note [sizeof long_note - 1] = 0;
    assert (kim_store_begin (store) == 0);
    assert (kim_store_mailbox_put_note (store, "jc.n", 10, "ref-10") == 0);
    assert (kim_store_mailbox_put_note (store, "jc.n", 11, "") == 0);
    assert (kim_store_mailbox_put_copy (store, "jc.n", 12) == 0);
    assert (kim_store_mailbox_put_note (store, "jc.n", 12, "late") == 0);  //  there: unchanged
    assert (kim_store_mailbox_put_note (store, "jc.n", 13, long_note) == -KIM_E_ARGS);
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_read_begin (store) == 0);
    uint8_t flags [8];
    assert (kim_store_mailbox_scan (store, "jc.n", 0, seqs, flags, 8) == 3);
    assert (flags [0] == 0 && flags [1] == 0 && flags [2] == KIM_MAILBOX_COPY);
    kim_store_read_end (store);
    assert (kim_store_begin (store) == 0);
    assert (kim_store_mailbox_take (store, "jc.n", 10, note) == 0 && streq (note, "ref-10"));
    assert (kim_store_mailbox_take (store, "jc.n", 10, note) == -KIM_E_NOT_FOUND);
    assert (kim_store_mailbox_take (store, "jc.n", 11, note) == 0 && streq (note, ""));
    assert (kim_store_mailbox_take (store, "jc.n", 12, note) == 0 && streq (note, ""));
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_mailbox_count (store, "jc.n") == 0);

    //  A second writer is refused while this one is open
    kim_store_t *second = kim_store_new (&config, &err);
    assert (second == NULL);
    assert (err == -KIM_E_BUSY);

    //  Close and reopen: seqs continue, head hash and counts survive
    memcpy (head_hash, kim_store_head_hash (store), KIM_HASH_SIZE);
    kim_store_destroy (&store);
    kim_store_destroy (&store);                 //  idempotent
    store = kim_store_new (&config, &err);
    assert (store);
    assert (kim_store_head (store) == 4);
    assert (memcmp (kim_store_head_hash (store), head_hash, KIM_HASH_SIZE) == 0);
    assert (kim_store_mailbox_count (store, "jc.a") == 2);
    assert (kim_store_mailbox_count (store, "jc.ab") == 1);
    assert (kim_store_dedup_get (store, "jc.a", "m1", &seq) == 1 && seq == 1);
    s_test_chain (store, 1, 4, zero);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 1006, "last") == 5);
    assert (kim_store_commit (store, NULL) == 0);
    s_test_chain (store, 5, 5, head_hash);
    kim_store_read_end (store);

    //  A read-only opener in another process sees what was committed,
    //  and after a new snapshot what was committed while it was open
    int ready [2], go [2];
    assert (pipe (ready) == 0 && pipe (go) == 0);
    fflush (stdout);
    fflush (stderr);
    pid_t pid = fork ();
    assert (pid >= 0);
    if (pid == 0) {
        close (ready [0]);
        close (go [1]);
        _exit (s_test_reader (path, 5, kim_store_head_hash (store), ready [1], go [0]));
    }
    close (ready [1]);
    close (go [0]);
    assert (s_test_pipe_read (ready [0]) == 'r');
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 1007, "later") == 6);
    assert (kim_store_commit (store, NULL) == 0);
    s_test_pipe_write (go [1], 'g');
    int status = 0;
    assert (waitpid (pid, &status, 0) == pid);
    if (!WIFEXITED (status) || WEXITSTATUS (status) != 0)
        zsys_error ("kim_store_test: reader failed with status %d", status);
    assert (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    close (ready [0]);
    close (go [1]);

    kim_store_read_end (store);
    kim_store_destroy (&store);
    char *dedup_path = zsys_sprintf ("%s-dedup", path);
    assert (dedup_path);
    s_test_dedup_expiry (dedup_path);
    s_test_remove (dedup_path);
    zstr_free (&dedup_path);
    store = kim_store_new (&config, &err);
    assert (store);
    assert (kim_store_bytes (store) > 0);

    //  A malformed record (3 bytes) written with LMDB directly is reported,
    //  not trusted; its neighbours still read
    assert (kim_store_begin (store) == 0);
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, 2);
    MDB_val key = { 8, key_bytes };
    MDB_val value = { 3, (void *) "bad" };
    assert (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_LOG),
                     &key, &value, 0) == 0);
    assert (kim_store_read (store, 2, &record) == -KIM_E_IO);
    assert (kim_store_commit (store, NULL) == 0);
    assert (kim_store_read (store, 2, &record) == -KIM_E_IO);
    assert (kim_store_read (store, 3, &record) == 0);
    assert (kim_store_error (store, MDB_NOTFOUND, "test") == -KIM_E_NOT_FOUND);
    assert (!kim_store_failed (store));

    //  A raw writer's MDB_MAP_FULL makes the batch full: commit grows
    assert (kim_store_begin (store) == 0);
    assert (kim_store_error (store, MDB_MAP_FULL, "test") == -KIM_E_STORE_FULL);
    assert (kim_store_append (store, 1, 1, NULL, 0, NULL) == -KIM_E_STORE_FULL);
    assert (kim_store_commit (store, &retry) == -KIM_E_STORE_FULL && retry);
    assert (!kim_store_failed (store));
    //  ... MDB_TXN_FULL too, but growing would not help
    assert (kim_store_begin (store) == 0);
    assert (kim_store_error (store, MDB_TXN_FULL, "test") == -KIM_E_STORE_FULL);
    assert (kim_store_commit (store, &retry) == -KIM_E_STORE_FULL && !retry);
    assert (!kim_store_failed (store));

    //  Any other write failure fails the store closed, until reopened
    uint64_t head = kim_store_head (store);
    assert (kim_store_begin (store) == 0);
    assert (s_test_append (store, KIM_RECORD_MESSAGE, 1008, "doomed") == head + 1);
    assert (kim_store_error (store, EIO, "test") == -KIM_E_STORE_FAILED);
    assert (kim_store_failed (store));
    assert (kim_store_append (store, 1, 1, NULL, 0, NULL) == -KIM_E_STORE_FAILED);
    assert (kim_store_commit (store, &retry) == -KIM_E_STORE_FAILED && !retry);
    assert (kim_store_begin (store) == -KIM_E_STORE_FAILED);
    assert (kim_store_head (store) == head);
    assert (kim_store_read (store, head, &record) == 0);   //  reads still work
    kim_store_destroy (&store);
    store = kim_store_new (&config, &err);
    assert (store && !kim_store_failed (store));
    assert (kim_store_head (store) == head);
    assert (kim_store_read (store, head + 1, &record) == -KIM_E_NOT_FOUND);
    kim_store_destroy (&store);

    //  A store whose last record is malformed does not open for writing
    kim_store_config_t bad_config = { .path = path3, .nosync = true };
    store = kim_store_new (&bad_config, &err);
    assert (store);
    assert (kim_store_begin (store) == 0);
    kim_log_put_be64 (key_bytes, 1);
    assert (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_LOG),
                     &key, &value, 0) == 0);
    assert (kim_store_commit (store, NULL) == 0);
    kim_store_destroy (&store);
    store = kim_store_new (&bad_config, &err);
    assert (store == NULL);
    assert (err == -KIM_E_IO);

    //  Read-only on a missing store fails cleanly
    char *path4 = zsys_sprintf ("%s/missing", dir);
    assert (path4);
    kim_store_config_t missing = { .path = path4, .read_only = true };
    assert (kim_store_new (&missing, &err) == NULL && err == -KIM_E_NOT_FOUND);
    zstr_free (&path4);
    //  Nor does a configuration whose maximum is below its start
    kim_store_config_t small = { .path = path2, .map_size = 8 << 20, .map_max = 4 << 20 };
    assert (kim_store_new (&small, &err) == NULL && err == -KIM_E_CONFIG);

    s_test_map_growth (path2, verbose);
    s_test_in (dir, "at-rest", s_test_at_rest);
    s_test_in (dir, "groups", s_test_groups);
    s_test_in (dir, "checkpoint", s_test_checkpoint_last);
    s_test_in (dir, "memo", s_test_get_memo);
    s_test_in (dir, "seal", s_test_seal_beside);
    s_test_in (dir, "chain", s_test_chain_beside);

    s_test_remove (path);
    s_test_remove (path2);
    s_test_remove (path3);
    rmdir (dir);
    zstr_free (&path);
    zstr_free (&path2);
    zstr_free (&path3);
    printf ("OK\n");
}
