/*  kim_agent_store_queues.c — the agent store's work queues: deliveries
    still to push to the webhook (and those it gave up on), still to write
    into the inbox folder, and broker answers still to write for the outbox
    folder. Part of the store module (kim_agent_store_int.h).
*/
#include <czmq.h>
#include <lmdb.h>

#include "kim_agent_store_int.h"

//  --------------------------------------------------------------------------
//  Webhook queue and dead letters

void
kim_agent_store_set_push (kim_agent_store_t *self, bool push)
{
    self->push = push;
}

json_t *
kim_agent_store_push_due (kim_agent_store_t *self, uint64_t now, size_t max)
{
    json_t *due = json_array ();
    MDB_txn *txn;
    MDB_cursor *cursor;
    if (!due || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return due;
    if (mdb_cursor_open (txn, self->dbi [S_PUSH], &cursor) == 0) {
        MDB_val key, value;
        int op = MDB_FIRST;
        while (json_array_size (due) < max && mdb_cursor_get (cursor, &key, &value, op) == 0) {
            op = MDB_NEXT;
            json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
            if (record && (uint64_t) json_integer_value (json_object_get (record, "next_at")) <= now)
                json_array_append_new (due, json_integer ((json_int_t) kim_agent_store_i_u64_key (&key)));
            json_decref (record);
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    return due;
}

int
kim_agent_store_push_result (kim_agent_store_t *self, uint64_t seq, const char *error,
                             uint32_t max_attempts, uint64_t backoff_ms, uint64_t backoff_max_ms,
                             bool *dead)
{
    *dead = false;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, seq);
    MDB_val key = { 8, seq_key };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_PUSH, &key);
    int rc = record? 0: -KIM_E_NOT_FOUND;
    if (rc == 0 && !error) {
        int mrc = mdb_del (txn, self->dbi [S_PUSH], &key, NULL);
        rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
    }
    else
    if (rc == 0) {
        uint32_t attempts = (uint32_t) json_integer_value (json_object_get (record, "attempts")) + 1;
        if (attempts >= max_attempts) {
            json_t *inbox = kim_agent_store_i_get_json (self, txn, S_INBOX, &key);
            json_t *letter = json_pack ("{s:I, s:s, s:s, s:i, s:s, s:I}", "seq", (json_int_t) seq,
                                        "msg_id", inbox? json_string_value (json_object_get (inbox, "msg_id")): "",
                                        "type", inbox? json_string_value (json_object_get (inbox, "type")): "",
                                        "attempts", (int) attempts, "last_error", error,
                                        "dead_at", (json_int_t) kim_agent_store_i_now ());
            json_decref (inbox);
            rc = letter? kim_agent_store_i_put_json (self, txn, S_DEAD, &key, letter): -KIM_E_NOMEM;
            json_decref (letter);
            if (rc == 0) {
                int mrc = mdb_del (txn, self->dbi [S_PUSH], &key, NULL);
                rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
            }
            *dead = true;
        }
        else {
            uint64_t wait = backoff_ms;
            for (uint32_t i = 1; i < attempts && wait < backoff_max_ms; i++)
                wait *= 2;
            if (wait > backoff_max_ms)
                wait = backoff_max_ms;
            json_object_set_new (record, "attempts", json_integer (attempts));
            json_object_set_new (record, "next_at", json_integer ((json_int_t) (kim_agent_store_i_now () + wait)));
            json_object_set_new (record, "last_error", json_string (error));
            rc = kim_agent_store_i_put_json (self, txn, S_PUSH, &key, record);
        }
    }
    json_decref (record);
    return kim_agent_store_i_end (txn, rc);
}

json_t *
kim_agent_store_dead_list (kim_agent_store_t *self)
{
    json_t *items = json_array ();
    MDB_txn *txn;
    MDB_cursor *cursor;
    if (!items || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return items;
    if (mdb_cursor_open (txn, self->dbi [S_DEAD], &cursor) == 0) {
        MDB_val key, value;
        int op = MDB_FIRST;
        while (json_array_size (items) < 10000 && mdb_cursor_get (cursor, &key, &value, op) == 0) {
            op = MDB_NEXT;
            json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
            if (record)
                json_array_append_new (items, record);
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    return items;
}

int
kim_agent_store_dead_retry (kim_agent_store_t *self, uint64_t seq, json_t **out)
{
    *out = NULL;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, seq);
    MDB_val key = { 8, seq_key };
    json_t *letter = kim_agent_store_i_get_json (self, txn, S_DEAD, &key);
    int rc = letter? 0: -KIM_E_NOT_FOUND;
    json_t *push = rc == 0? json_pack ("{s:i, s:I, s:s}", "attempts", 0,
                                       "next_at", (json_int_t) 0, "last_error", ""): NULL;
    if (rc == 0)
        rc = push? kim_agent_store_i_put_json (self, txn, S_PUSH, &key, push): -KIM_E_NOMEM;
    if (rc == 0) {
        int mrc = mdb_del (txn, self->dbi [S_DEAD], &key, NULL);
        rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
    }
    json_decref (push);
    rc = kim_agent_store_i_end (txn, rc);
    if (rc == 0)
        *out = letter;
    else
        json_decref (letter);
    return rc;
}

//  --------------------------------------------------------------------------
//  Inbox folder queue

void
kim_agent_store_set_drop (kim_agent_store_t *self, bool drop)
{
    self->drop = drop;
}

json_t *
kim_agent_store_drop_due (kim_agent_store_t *self, size_t max)
{
    json_t *due = json_array ();
    MDB_txn *txn;
    MDB_cursor *cursor;
    if (!due || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return due;
    if (mdb_cursor_open (txn, self->dbi [S_DROP], &cursor) == 0) {
        MDB_val key, value;
        int op = MDB_FIRST;
        while (json_array_size (due) < max && mdb_cursor_get (cursor, &key, &value, op) == 0) {
            op = MDB_NEXT;
            json_array_append_new (due, json_integer ((json_int_t) kim_agent_store_i_u64_key (&key)));
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    return due;
}

int
kim_agent_store_drop_done (kim_agent_store_t *self, uint64_t seq)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, seq);
    MDB_val key = { 8, seq_key };
    int rc = mdb_del (txn, self->dbi [S_DROP], &key, NULL);
    if (rc == 0 || rc == MDB_NOTFOUND) {
        rc = mdb_txn_commit (txn);
        return rc? kim_agent_store_i_mdb_code (rc): 0;
    }
    mdb_txn_abort (txn);
    return kim_agent_store_i_mdb_code (rc);
}

int
kim_agent_store_inbox_payload (kim_agent_store_t *self, uint64_t seq, uint8_t **data,
                               size_t *size)
{
    *data = NULL;
    *size = 0;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return -KIM_E_IO;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, seq);
    MDB_val key = { 8, seq_key };
    int rc = kim_agent_store_i_payload_get (self, txn, S_INBOX_PAYLOAD, &key, data, size);
    mdb_txn_abort (txn);
    return rc < 0? rc: 0;
}

int
kim_agent_store_inbox_signature (kim_agent_store_t *self, uint64_t seq, const char *value)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, seq);
    MDB_val key = { 8, seq_key };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_INBOX, &key);
    int rc = record? 0: -KIM_E_NOT_FOUND;
    if (rc == 0) {
        json_object_set_new (record, "signature", json_string (value));
        rc = kim_agent_store_i_put_json (self, txn, S_INBOX, &key, record);
    }
    json_decref (record);
    return kim_agent_store_i_end (txn, rc);
}

//  --------------------------------------------------------------------------
//  Answers for the outbox folder

json_t *
kim_agent_store_answers_due (kim_agent_store_t *self, size_t max)
{
    json_t *due = json_array ();
    MDB_txn *txn;
    MDB_cursor *cursor;
    if (!due || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return due;
    if (mdb_cursor_open (txn, self->dbi [S_ANSWERS], &cursor) == 0) {
        MDB_val key, value;
        int op = MDB_FIRST;
        while (json_array_size (due) < max && mdb_cursor_get (cursor, &key, &value, op) == 0) {
            op = MDB_NEXT;
            json_array_append_new (due, json_pack ("[s#, s#]", (const char *) key.mv_data,
                                                   (int) key.mv_size,
                                                   (const char *) value.mv_data,
                                                   (int) value.mv_size));
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    return due;
}

int
kim_agent_store_answers_done (kim_agent_store_t *self, const char *msg_id)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    MDB_val key = { strlen (msg_id), (void *) msg_id };
    int rc = mdb_del (txn, self->dbi [S_ANSWERS], &key, NULL);
    if (rc == 0 || rc == MDB_NOTFOUND) {
        rc = mdb_txn_commit (txn);
        return rc? kim_agent_store_i_mdb_code (rc): 0;
    }
    mdb_txn_abort (txn);
    return kim_agent_store_i_mdb_code (rc);
}
