/*  kim_agent_store_views.c — the agent store's reads for the local system
    and the staff page: the referral, case, consent and access-report views,
    the status counts, and a referral's timeline. Part of the store module
    (kim_agent_store_int.h).
*/
#include <czmq.h>
#include <lmdb.h>

#include "kim_agent_store_int.h"

//  --------------------------------------------------------------------------
//  Referral view reads

//  Every record of `db` that `keep` keeps (it finishes the record for the
//  reader and returns it, or frees it and returns NULL), in key order.
typedef json_t *(s_keep_fn) (kim_agent_store_t *self, MDB_txn *txn, json_t *record,
                             const void *arg);

static json_t *
s_list (kim_agent_store_t *self, int db, s_keep_fn *keep, const void *arg)
{
    json_t *items = json_array ();
    MDB_txn *txn;
    MDB_cursor *cursor;
    if (!items || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return items;
    if (mdb_cursor_open (txn, self->dbi [db], &cursor) == 0) {
        MDB_val key, value;
        int op = MDB_FIRST;
        while (mdb_cursor_get (cursor, &key, &value, op) == 0) {
            op = MDB_NEXT;
            json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
            if (record)
                record = keep (self, txn, record, arg);
            if (record)
                json_array_append_new (items, kim_agent_store_i_public (record));
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    return items;
}

//  True when the record's state is `state` (or no state is asked for).
static bool
s_state_is (json_t *record, const char *state)
{
    const char *record_state = json_string_value (json_object_get (record, "state"));
    return !state || (record_state && streq (state, record_state));
}

typedef struct {
    const char *state;
    int overdue;                        //  -1 either, 0 not overdue, 1 overdue
    uint64_t now;
} s_referral_filter_t;

static json_t *
s_keep_referral (kim_agent_store_t *self, MDB_txn *txn, json_t *record, const void *arg)
{
    const s_referral_filter_t *filter = (const s_referral_filter_t *) arg;
    kim_agent_view_finish (record, filter->now);
    bool is_overdue = json_is_true (json_object_get (record, "overdue"));
    if (!s_state_is (record, filter->state)
    ||  (filter->overdue >= 0 && (filter->overdue == 1) != is_overdue)) {
        json_decref (record);
        return NULL;
    }
    return record;
}

json_t *
kim_agent_store_referrals (kim_agent_store_t *self, const char *state, int overdue)
{
    s_referral_filter_t filter = { state, overdue, kim_agent_store_i_now () };
    return s_list (self, S_REFERRALS, s_keep_referral, &filter);
}

json_t *
kim_agent_store_referral (kim_agent_store_t *self, const char *referral_id)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return NULL;
    MDB_val key = { strlen (referral_id), (void *) referral_id };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_REFERRALS, &key);
    mdb_txn_abort (txn);
    if (record)
        kim_agent_view_finish (record, kim_agent_store_i_now ());
    return kim_agent_store_i_public (record);
}

//  --------------------------------------------------------------------------
//  Case view, consents and access reports: reads

//  A case in a list: its timeline's length, not the timeline.
static json_t *
s_keep_case (kim_agent_store_t *self, MDB_txn *txn, json_t *record, const void *state)
{
    if (!s_state_is (record, (const char *) state)) {
        json_decref (record);
        return NULL;
    }
    json_object_set_new (record, "events",
                         json_integer ((json_int_t) json_array_size (
                             json_object_get (record, "timeline"))));
    json_object_del (record, "timeline");
    return record;
}

json_t *
kim_agent_store_cases (kim_agent_store_t *self, const char *state)
{
    return s_list (self, S_CASES, s_keep_case, state);
}

json_t *
kim_agent_store_case (kim_agent_store_t *self, const char *case_id)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return NULL;
    MDB_val key = { strlen (case_id), (void *) case_id };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_CASES, &key);
    mdb_txn_abort (txn);
    if (record)
        json_object_set_new (record, "events",
                             json_integer ((json_int_t) json_array_size (
                                 json_object_get (record, "timeline"))));
    return kim_agent_store_i_public (record);
}

//  The status of an outbox record, or NULL when there is none.
static const char *
s_outbox_status (kim_agent_store_t *self, MDB_txn *txn, json_t *record, const char *field,
                 json_t **outbox)
{
    *outbox = NULL;
    const char *msg_id = json_string_value (json_object_get (record, field));
    if (!msg_id)
        return NULL;
    MDB_val key = { strlen (msg_id), (void *) msg_id };
    *outbox = kim_agent_store_i_get_json (self, txn, S_OUTBOX, &key);
    return json_string_value (json_object_get (*outbox, "status"));
}

//  A consent record with its state, read from the outbox records of its
//  grant and revocation: pending, active, refused, expired, revoking,
//  revoked. A refusal's reason is in "error", "code", "text".
static json_t *
s_consent_finish (kim_agent_store_t *self, MDB_txn *txn, json_t *record)
{
    json_t *grant, *revoke;
    const char *granted = s_outbox_status (self, txn, record, "grant_msg_id", &grant);
    const char *revoked = s_outbox_status (self, txn, record, "revoke_msg_id", &revoke);
    const char *state = "active";       //  a consent another office granted
    json_t *refusal = NULL;
    if (granted && streq (granted, "queued"))
        state = "pending";
    else
    if (granted && streq (granted, "refused")) {
        state = "refused";
        refusal = grant;
    }
    if (!streq (state, "refused") && revoked) {
        if (streq (revoked, "receipted"))
            state = "revoked";
        else
        if (streq (revoked, "queued"))
            state = "revoking";
        else
            refusal = revoke;           //  the revocation was refused: still in force
    }
    uint64_t valid_until = (uint64_t) json_integer_value (json_object_get (record, "valid_until"));
    if (streq (state, "active") && valid_until && kim_agent_store_i_now () > valid_until)
        state = "expired";
    json_object_set_new (record, "state", json_string (state));
    if (refusal) {
        const char *keys [] = { "error", "code", "text", NULL };
        for (size_t i = 0; keys [i]; i++)
            if (json_object_get (refusal, keys [i]))
                json_object_set (record, keys [i], json_object_get (refusal, keys [i]));
    }
    json_decref (grant);
    json_decref (revoke);
    return kim_agent_store_i_public (record);
}

static json_t *
s_keep_consent (kim_agent_store_t *self, MDB_txn *txn, json_t *record, const void *state)
{
    record = s_consent_finish (self, txn, record);
    if (record && !s_state_is (record, (const char *) state)) {
        json_decref (record);
        return NULL;
    }
    return record;
}

json_t *
kim_agent_store_consents (kim_agent_store_t *self, const char *state)
{
    return s_list (self, S_CONSENTS, s_keep_consent, state);
}

json_t *
kim_agent_store_consent (kim_agent_store_t *self, const char *consent)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return NULL;
    MDB_val key = { strlen (consent), (void *) consent };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_CONSENTS, &key);
    if (record)
        record = s_consent_finish (self, txn, record);
    mdb_txn_abort (txn);
    return record;
}

//  A report request with its status (queued, receipted, refused, answered)
//  and the broker's answer to the request (seq, error, code, text).
static json_t *
s_report_finish (kim_agent_store_t *self, MDB_txn *txn, json_t *record)
{
    json_t *outbox;
    const char *status = s_outbox_status (self, txn, record, "msg_id", &outbox);
    bool answered = json_integer_value (json_object_get (record, "report_seq")) != 0;
    json_object_set_new (record, "status", json_string (answered? "answered"
                                                        : status? status: "queued"));
    const char *keys [] = { "seq", "error", "code", "text", NULL };
    for (size_t i = 0; keys [i]; i++)
        if (json_object_get (outbox, keys [i]))
            json_object_set (record, keys [i], json_object_get (outbox, keys [i]));
    json_decref (outbox);
    return record;
}

static json_t *
s_keep_report (kim_agent_store_t *self, MDB_txn *txn, json_t *record, const void *arg)
{
    (void) arg;
    return s_report_finish (self, txn, record);
}

json_t *
kim_agent_store_reports (kim_agent_store_t *self)
{
    return s_list (self, S_REPORTS, s_keep_report, NULL);
}

json_t *
kim_agent_store_report (kim_agent_store_t *self, const char *msg_id)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return NULL;
    MDB_val key = { strlen (msg_id), (void *) msg_id };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_REPORTS, &key);
    if (record)
        record = s_report_finish (self, txn, record);
    //  The report itself: the payloads of the broker's deliveries (JSON),
    //  its pages as one (a request from before pages were kept has one)
    json_t *pages = json_object_get (record, "_pages");
    json_t *first = json_object_get (record, "report_seq");
    json_t *report = NULL;
    for (size_t i = 0; record && i < (pages? json_array_size (pages): first? 1: 0); i++) {
        uint8_t seq_key [8];
        kim_agent_store_i_key_u64 (seq_key, (uint64_t) json_integer_value (
                                   pages? json_array_get (pages, i): first));
        MDB_val pkey = { 8, seq_key };
        uint8_t *data = NULL;
        size_t size = 0;
        json_t *page = NULL;
        if (kim_agent_store_i_payload_get (self, txn, S_INBOX_PAYLOAD, &pkey, &data, &size) == 1)
            page = json_loadb ((const char *) data, size, 0, NULL);
        free (data);
        if (!json_is_object (page))
            json_decref (page);
        else
        if (!report)
            report = page;
        else {
            //  The later page's fields (last, total) over the first's,
            //  its transfers after the ones before
            json_t *transfers = json_incref (json_object_get (report, "transfers"));
            json_array_extend (transfers, json_object_get (page, "transfers"));
            json_object_update (report, page);
            json_object_set_new (report, "transfers", transfers);
            json_decref (page);
        }
    }
    if (report)
        json_object_set_new (record, "report", report);
    mdb_txn_abort (txn);
    return kim_agent_store_i_public (record);
}

void
kim_agent_store_counts (kim_agent_store_t *self, size_t *queued, size_t *inbox,
                        size_t *unhandled)
{
    *queued = *inbox = *unhandled = 0;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return;
    MDB_stat stat;
    if (mdb_stat (txn, self->dbi [S_QUEUE], &stat) == 0)
        *queued = stat.ms_entries;
    if (mdb_stat (txn, self->dbi [S_INBOX], &stat) == 0)
        *inbox = stat.ms_entries;
    MDB_cursor *cursor;
    if (mdb_cursor_open (txn, self->dbi [S_INBOX], &cursor) == 0) {
        MDB_val key, value;
        int op = MDB_FIRST;
        while (mdb_cursor_get (cursor, &key, &value, op) == 0) {
            op = MDB_NEXT;
            //  Cheap test: records are compact JSON written by us
            if (memmem (value.mv_data, value.mv_size, "\"handled\":false", 15))
                (*unhandled)++;
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
}

//  --------------------------------------------------------------------------
//  A referral's messages, for the staff page

//  True when a stored record belongs to the referral: its referral_id, or
//  the FORWARD whose msg_id opened it.
static bool
s_of_referral (json_t *record, const char *referral_id)
{
    const char *id = json_string_value (json_object_get (record, "referral_id"));
    const char *msg_id = json_string_value (json_object_get (record, "msg_id"));
    const char *type = json_string_value (json_object_get (record, "type"));
    return (id && streq (id, referral_id))
        || (msg_id && type && streq (msg_id, referral_id) && streq (type, "FORWARD"));
}

json_t *
kim_agent_store_timeline (kim_agent_store_t *self, const char *referral_id)
{
    json_t *items = json_array ();
    MDB_txn *txn;
    if (!items || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return items;
    size_t id_length = strlen (referral_id);
    const int dbs [2] = { S_INBOX, S_OUTBOX };
    for (int i = 0; i < 2; i++) {
        MDB_cursor *cursor;
        if (mdb_cursor_open (txn, self->dbi [dbs [i]], &cursor) != 0)
            continue;
        MDB_val key, value;
        int op = MDB_FIRST;
        while (mdb_cursor_get (cursor, &key, &value, op) == 0) {
            op = MDB_NEXT;
            //  Cheap filter before parsing: the id must occur in the record
            if (!memmem (value.mv_data, value.mv_size, referral_id, id_length))
                continue;
            json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
            if (record && s_of_referral (record, referral_id)) {
                json_t *header = json_object_get (record, "header");
                json_t *item = json_pack ("{s:s, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?}",
                                          "direction", dbs [i] == S_INBOX? "in": "out",
                                          "type", json_object_get (record, "type"),
                                          "msg_id", json_object_get (record, "msg_id"),
                                          "code", json_object_get (header, "code"),
                                          "org", json_object_get (header, "org"),
                                          "note", json_object_get (header, "note"),
                                          "sender", json_object_get (record, "sender"));
                if (item && dbs [i] == S_INBOX) {
                    json_object_set (item, "seq", json_object_get (record, "seq"));
                    json_object_set (item, "at", json_object_get (record, "received_at"));
                    json_object_set (item, "sealed_error", json_object_get (record, "sealed_error"));
                }
                else
                if (item) {
                    json_object_set (item, "at", json_object_get (record, "accepted_at"));
                    json_object_set (item, "status", json_object_get (record, "status"));
                    json_object_set (item, "error", json_object_get (record, "error"));
                    json_object_set (item, "text", json_object_get (record, "text"));
                }
                if (item)
                    json_array_append_new (items, item);
            }
            json_decref (record);
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    //  Oldest first
    size_t count = json_array_size (items);
    for (size_t i = 1; i < count; i++)
        for (size_t j = i; j > 0; j--) {
            json_int_t a = json_integer_value (json_object_get (json_array_get (items, j - 1), "at"));
            json_int_t b = json_integer_value (json_object_get (json_array_get (items, j), "at"));
            if (a <= b)
                break;
            json_t *swap = json_incref (json_array_get (items, j));
            json_array_set (items, j, json_array_get (items, j - 1));
            json_array_set_new (items, j - 1, swap);
        }
    return items;
}
