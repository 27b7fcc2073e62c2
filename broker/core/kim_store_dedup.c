/*  kim_store_dedup.c — the de-duplication index: which (sender, msg_id)
    the log holds, and for how long it is remembered.

    DEDUP maps sender NUL msg_id to [seq u64 BE][time u64 BE]. Old entries
    are forgotten by walking the log itself, oldest first: the log is in
    time order already, and every entry names a MESSAGE record whose body
    holds its sender and msg_id. So a message costs one put here, where an
    age index of its own cost a second. META "dedup_from" (u64 BE) is the
    first seq the walk has not passed; an entry is removed only if it still
    names the record being passed (a msg_id recorded again names a later
    one). Stores before format version 4 kept that age index in DEDUP_AGE;
    the migration empties it and starts the walk at the log's first record.

    Part of the store module (kim_store_int.h).
*/
#include <czmq.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim/kim_msg.h"
#include "kim_store_int.h"

static const MDB_val s_from_name = { 10, (void *) "dedup_from" };

//  Builds sender NUL msg_id into `key`; returns the key size or 0.
static size_t
s_key (kim_store_t *self, const char *sender, const char *msg_id, uint8_t *key)
{
    size_t sender_size = sender? strlen (sender): 0;
    size_t msg_id_size = msg_id? strlen (msg_id): 0;
    if (sender_size == 0 || msg_id_size == 0
    ||  sender_size + 1 + msg_id_size > self->key_max)
        return 0;
    memcpy (key, sender, sender_size);
    key [sender_size] = 0;
    memcpy (key + sender_size + 1, msg_id, msg_id_size);
    return sender_size + 1 + msg_id_size;
}

int
kim_store_dedup_get (kim_store_t *self, const char *sender, const char *msg_id, uint64_t *seq)
{
    uint8_t key_bytes [S_KEY_BUF];
    size_t key_size = s_key (self, sender, msg_id, key_bytes);
    if (key_size == 0)
        return -KIM_E_ARGS;
    MDB_txn *txn;
    int rc = kim_store_i_reader (self, &txn);
    if (rc)
        return rc;
    MDB_val key = { key_size, key_bytes };
    MDB_val value;
    rc = mdb_get (txn, self->dbi [KIM_DB_DEDUP], &key, &value);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return kim_store_i_read_error (self, rc, "looking up a msg_id");
    if (value.mv_size != 16) {
        zsys_error ("kim_store: %s: malformed de-duplication entry for %s/%s",
                    self->path, sender, msg_id);
        return -KIM_E_IO;
    }
    if (seq)
        *seq = kim_log_get_be64 ((const uint8_t *) value.mv_data);
    return 1;
}

int
kim_store_dedup_put (kim_store_t *self, const char *sender, const char *msg_id,
                     uint64_t seq, uint64_t time_ms)
{
    int rc = kim_store_i_writable (self, "dedup_put");
    if (rc)
        return rc;
    uint8_t key_bytes [S_KEY_BUF];
    size_t key_size = s_key (self, sender, msg_id, key_bytes);
    if (key_size == 0)
        return -KIM_E_ARGS;
    uint8_t value_bytes [16];
    kim_log_put_be64 (value_bytes, seq);
    kim_log_put_be64 (value_bytes + 8, time_ms);
    MDB_val key = { key_size, key_bytes };
    MDB_val value = { sizeof (value_bytes), value_bytes };
    rc = kim_store_put (self, KIM_DB_DEDUP, &key, &value, 0);
    return rc? kim_store_i_write_error (self, rc, "recording a msg_id"): 0;
}

int
kim_store_i_dedup_migrate (kim_store_t *self, MDB_txn *txn)
{
    int rc = mdb_drop (txn, self->dbi [KIM_DB_DEDUP_AGE], 0);
    uint8_t bytes [8];
    kim_log_put_be64 (bytes, 1);
    MDB_val name = s_from_name;
    MDB_val value = { sizeof (bytes), bytes };
    if (rc == 0)
        rc = mdb_put (txn, self->dbi [KIM_DB_META], &name, &value, 0);
    return rc? kim_store_i_read_error (self, rc, "moving msg_id expiry to the log"): 0;
}

//  Forgets the entry that names record `seq`, a MESSAGE, if it still does.
static int
s_forget (kim_store_t *self, uint64_t seq, const kim_record_t *record, kim_msg_t *msg)
{
    kim_decode_error_t error;
    if (kim_msg_decode (msg, record->body, record->body_size, &error))
        return 0;               //  a header the broker wrote: cannot happen
    uint8_t key_bytes [S_KEY_BUF];
    size_t key_size = s_key (self, msg->sender, msg->msg_id, key_bytes);
    if (key_size == 0)
        return 0;
    MDB_val key = { key_size, key_bytes };
    MDB_val value;
    int rc = mdb_get (self->txn, self->dbi [KIM_DB_DEDUP], &key, &value);
    if (rc == 0 && value.mv_size == 16
    &&  kim_log_get_be64 ((const uint8_t *) value.mv_data) == seq)
        rc = kim_store_del (self, KIM_DB_DEDUP, &key, NULL);
    return rc == MDB_NOTFOUND? 0: rc;
}

int
kim_store_dedup_expire (kim_store_t *self, uint64_t now_ms, size_t limit)
{
    int rc = kim_store_i_writable (self, "dedup_expire");
    if (rc)
        return rc;
    if (now_ms <= self->dedup_window_ms || limit == 0)
        return 0;
    uint64_t cutoff = now_ms - self->dedup_window_ms;
    MDB_val name = s_from_name;
    MDB_val value;
    uint64_t from = 1;
    rc = mdb_get (self->txn, self->dbi [KIM_DB_META], &name, &value);
    if (rc == 0 && value.mv_size == 8)
        from = kim_log_get_be64 ((const uint8_t *) value.mv_data);
    else
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_i_write_error (self, rc, "reading where msg_ids expire");
    kim_msg_t *msg = NULL;
    MDB_cursor *cursor;
    if ((rc = kim_store_i_chain_write (self)))
        return rc;
    rc = mdb_cursor_open (self->txn, self->dbi [KIM_DB_LOG], &cursor);
    if (rc)
        return kim_store_i_write_error (self, rc, "opening the log to expire msg_ids");
    uint8_t from_bytes [8];
    kim_log_put_be64 (from_bytes, from);
    MDB_val key = { sizeof (from_bytes), from_bytes };
    uint64_t passed = from;
    rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
    for (size_t seen = 0; rc == 0 && seen < limit; seen++) {
        if (key.mv_size != 8)
            break;
        uint64_t seq = kim_log_get_be64 ((const uint8_t *) key.mv_data);
        kim_record_t record;
        //  A malformed record is the verifier's finding; here it is passed
        bool parsed = kim_store_i_parse_record (self, seq, &value, &record) == 0;
        if (parsed && record.time_ms >= cutoff)
            break;
        if (parsed && record.kind == KIM_RECORD_MESSAGE) {
            if (!msg && !(msg = (kim_msg_t *) malloc (sizeof *msg))) {
                rc = ENOMEM;
                break;
            }
            if ((rc = s_forget (self, seq, &record, msg)))
                break;
        }
        passed = seq + 1;
        rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT);
    }
    mdb_cursor_close (cursor);
    free (msg);
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_i_write_error (self, rc, "expiring msg_ids");
    if (passed == from)
        return 0;
    kim_log_put_be64 (from_bytes, passed);
    value.mv_size = sizeof (from_bytes);
    value.mv_data = from_bytes;
    rc = kim_store_put (self, KIM_DB_META, &name, &value, 0);
    return rc? kim_store_i_write_error (self, rc, "recording where msg_ids expire"): 0;
}
