/*  kim_store_read.c — the store's reads: records, payloads, mailboxes,
    de-duplication entries and the sizes a STATUS reports. Inside a write
    batch they read the batch (hooks see what the batch wrote so far);
    outside one, the reusable snapshot of the last commit. Part of the
    store module (kim_store_int.h).
*/
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_error.h"
#include "kim_store_int.h"

//  --------------------------------------------------------------------------
//  Reads

int
kim_store_read_begin (kim_store_t *self)
{
    if (self->txn)
        return 0;               //  reads go through the batch
    kim_store_i_snapshot_end (self);
    int rc = kim_store_i_snapshot_start (self);
    if (rc == 0 && self->read_only)
        //  A writer elsewhere moves the head on: report where this snapshot
        //  ends. A failure is logged and leaves the old head in place.
        kim_store_i_load_head (self, self->rtxn);
    return rc;
}

void
kim_store_read_end (kim_store_t *self)
{
    kim_store_i_snapshot_end (self);
}

int
kim_store_i_get_seq (kim_store_t *self, kim_db_t db, uint64_t seq, MDB_val *value,
                     const char *what)
{
    MDB_txn *txn;
    int rc = kim_store_i_reader (self, &txn);
    if (rc == 0 && db == KIM_DB_LOG && self->txn && seq > self->head)
        rc = kim_store_i_chain_write (self);
    if (rc)
        return rc;
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val key = { sizeof (key_bytes), key_bytes };
    rc = mdb_get (txn, self->dbi [db], &key, value);
    if (rc == MDB_NOTFOUND)
        return -KIM_E_NOT_FOUND;
    return rc? kim_store_i_read_error (self, rc, what): 0;
}

//  A batch often reads one value twice with nothing written to its tree in
//  between: the policy and the life cycle each read a new referral's case,
//  an answer's check and its application each read its referral. The
//  second read then costs a copy instead of a search down the tree, whose
//  pages LMDB looks up in the batch's dirty list, level by level. A slot
//  holds until its tree is written (kim_store_put and its kin count every
//  write) or the batch ends.
static uint64_t
s_tree_writes (kim_store_t *self, kim_db_t db)
{
    return self->batch_writes.tree [db].puts + self->batch_writes.tree [db].dels;
}

int
kim_store_get (kim_store_t *self, kim_db_t db, const MDB_val *key, MDB_val *value)
{
    if (!self->txn || (unsigned) db >= KIM_DB_COUNT)
        return EINVAL;
    uint64_t writes = s_tree_writes (self, db);
    for (size_t i = 0; i < S_MEMO_SLOTS; i++) {
        kim_store_memo_t *slot = &self->memo [i];
        if (slot->batch == self->batch_serial && slot->db == db && slot->writes == writes
        &&  slot->key_size == key->mv_size
        &&  memcmp (slot->key, key->mv_data, key->mv_size) == 0) {
            value->mv_size = slot->value_size;
            value->mv_data = slot->value;
            return slot->found? 0: MDB_NOTFOUND;
        }
    }
    int rc = mdb_get (self->txn, self->dbi [db], (MDB_val *) key, value);
    if ((rc && rc != MDB_NOTFOUND) || key->mv_size > S_MEMO_KEY
    ||  (rc == 0 && value->mv_size > S_MEMO_VALUE))
        return rc;
    kim_store_memo_t *slot = &self->memo [self->memo_next];
    self->memo_next = (self->memo_next + 1) % S_MEMO_SLOTS;
    slot->batch = self->batch_serial;
    slot->writes = writes;
    slot->db = db;
    slot->found = rc == 0;
    slot->key_size = key->mv_size;
    memcpy (slot->key, key->mv_data, key->mv_size);
    slot->value_size = rc == 0? value->mv_size: 0;
    if (rc == 0) {
        memcpy (slot->value, value->mv_data, value->mv_size);
        value->mv_data = slot->value;
    }
    return rc;
}

int
kim_store_read (kim_store_t *self, uint64_t seq, kim_record_t *record)
{
    MDB_val value;
    int rc = kim_store_i_get_seq (self, KIM_DB_LOG, seq, &value, "reading a record");
    return rc? rc: kim_store_i_parse_record (self, seq, &value, record);
}

int
kim_store_mailbox_scan (kim_store_t *self, const char *org, uint64_t after,
                        uint64_t *seqs, uint8_t *flags, int max)
{
    if (max < 0 || (max > 0 && !seqs))
        return -KIM_E_ARGS;
    uint8_t key_bytes [S_KEY_BUF];
    size_t key_size = kim_store_i_mailbox_key (self, org, after + 1, key_bytes);
    if (key_size == 0)
        return -KIM_E_ARGS;
    if (max == 0 || after == UINT64_MAX)
        return 0;
    size_t prefix_size = key_size - 8;      //  org and its NUL
    MDB_txn *txn;
    int rc = kim_store_i_reader (self, &txn);
    if (rc)
        return rc;
    MDB_cursor *cursor;
    rc = mdb_cursor_open (txn, self->dbi [KIM_DB_MAILBOX], &cursor);
    if (rc)
        return kim_store_i_read_error (self, rc, "opening a mailbox cursor");
    int count = 0;
    MDB_val key = { key_size, key_bytes };
    MDB_val value;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
         rc == 0 && count < max;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        //  The NUL in the prefix keeps "jc.a" out of "jc.ab"'s entries
        if (key.mv_size != key_size || memcmp (key.mv_data, key_bytes, prefix_size) != 0)
            break;
        if (flags)
            flags [count] = value.mv_size? *(const uint8_t *) value.mv_data: 0;
        seqs [count++] = kim_log_get_be64 ((const uint8_t *) key.mv_data + prefix_size);
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_i_read_error (self, rc, "scanning a mailbox");
    return count;
}

uint64_t
kim_store_mailbox_count (kim_store_t *self, const char *org)
{
    if (!org)
        return 0;
    kim_store_mailbox_t *mailbox = kim_store_i_mailbox_lookup (self, org, false);
    return mailbox? kim_store_i_mailbox_size (mailbox): 0;
}

uint64_t
kim_store_head (kim_store_t *self)
{
    return self->txn? self->batch_head: self->head;
}

const uint8_t *
kim_store_head_hash (kim_store_t *self)
{
    if (self->txn)
        kim_store_i_chain_hash (self);
    return self->txn? self->batch_hash: self->head_hash;
}

uint64_t
kim_store_checkpoint_last (kim_store_t *self, uint64_t *time_ms)
{
    if (time_ms)
        *time_ms = self->checkpoint_ms;
    return self->checkpoint_seq;
}

uint64_t
kim_store_bytes (kim_store_t *self)
{
    MDB_envinfo info;
    MDB_stat stat;
    if (mdb_env_info (self->env, &info) || mdb_env_stat (self->env, &stat))
        return 0;
    return ((uint64_t) info.me_last_pgno + 1) * stat.ms_psize;
}
