/*  kim_agent_store.c — the agent's durable store: outbox, inbox, referral view.

    One LMDB environment in agent/data, opened with MDB_NOTLS so that the
    HTTP threads can run read transactions of their own, and with syncing
    left on: every commit is on disk before it returns, which is what lets
    the agent answer the local system "accepted" and lets it ack a delivery
    to the broker.

    Databases (keys; values):
      outbox          msg_id; the record (JSON)
      outbox_payload  msg_id; the payload as the local system gave it, sealed,
                      until the broker answered it
      queue           accept counter (8 bytes, big-endian); msg_id: what
                      still waits for the broker, oldest first
      inbox           seq (8 bytes, big-endian); the record (JSON)
      inbox_payload   seq; the payload, opened and sealed again at rest
      referrals       referral_id; the view's record (JSON)
      meta            "queue_next"; the next accept counter; "key_next",
                      "key_made", "payloads_sealed" (kim_agent_store_payload.c)
      push            seq; a delivery the webhook has still to push (JSON:
                      attempts, next_at, last_error), written with the delivery
      dead            seq; a delivery the webhook gave up on (JSON)
      drop            seq; a delivery still to be written into the inbox folder
      answers         msg_id; NAME: a broker answer to a message from the
                      outbox folder, still to be written as answers/NAME.json
      cases           case_id; the case view's record (JSON, with its timeline)
      consents        consent id; what this office recorded (JSON: the
                      grant's and the revocation's msg_ids and scope); the
                      state is read from their outbox records
      reports         msg_id of an ACCESS_REPORT we asked for; JSON:
                      subject, case_id, order, and once the broker's report
                      arrived, the seq of that delivery

    Records are JSON because every reader hands them out as JSON anyway;
    keys starting with '_' are the agent's own and are removed on the way out.
    The views' reads are in kim_agent_store_views.c, the work queues in
    kim_agent_store_queues.c (kim_agent_store_int.h).
*/
#include <errno.h>
#include <sys/stat.h>

#include <czmq.h>
#include <lmdb.h>
#include <sodium.h>

#include "kim_agent_store_int.h"

static const char *s_db_names [S_DBS] = {
    "outbox", "outbox_payload", "queue", "inbox", "inbox_payload", "referrals", "meta",
    "push", "dead", "drop", "answers", "cases", "consents", "reports"
};


uint64_t
kim_agent_store_i_now (void)
{
    return (uint64_t) zclock_time ();
}

void
kim_agent_store_i_key_u64 (uint8_t key [8], uint64_t value)
{
    for (int i = 7; i >= 0; i--) {
        key [i] = (uint8_t) value;
        value >>= 8;
    }
}

uint64_t
kim_agent_store_i_u64_key (const MDB_val *key)
{
    uint64_t value = 0;
    if (key->mv_size == 8)
        for (int i = 0; i < 8; i++)
            value = (value << 8) | ((const uint8_t *) key->mv_data) [i];
    return value;
}

int
kim_agent_store_i_mdb_code (int rc)
{
    return rc == MDB_MAP_FULL? -KIM_E_STORE_FULL: rc == MDB_NOTFOUND? -KIM_E_NOT_FOUND
                                                                      : -KIM_E_IO;
}

kim_agent_store_t *
kim_agent_store_new (const char *dir, size_t map_size, const char *org,
                     char *error, size_t error_size)
{
    if (mkdir (dir, 0700) != 0 && errno != EEXIST) {
        snprintf (error, error_size, "agent/data: cannot make %s: %s", dir, strerror (errno));
        return NULL;
    }
    kim_agent_store_t *self = (kim_agent_store_t *) calloc (1, sizeof *self);
    if (!self) {
        snprintf (error, error_size, "out of memory");
        return NULL;
    }
    kim_str_copy (self->org, sizeof self->org, org);
    MDB_txn *txn = NULL;
    int rc = mdb_env_create (&self->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs (self->env, S_DBS);
    if (rc == 0)
        rc = mdb_env_set_mapsize (self->env, map_size);
    if (rc == 0)
        rc = mdb_env_open (self->env, dir, MDB_NOTLS, 0600);
    if (rc == 0)
        rc = mdb_txn_begin (self->env, NULL, 0, &txn);
    for (int i = 0; rc == 0 && i < S_DBS; i++)
        rc = mdb_dbi_open (txn, s_db_names [i], MDB_CREATE, &self->dbi [i]);
    if (rc == 0) {
        rc = mdb_txn_commit (txn);
        txn = NULL;
    }
    if (rc) {
        snprintf (error, error_size, "agent/data: cannot open the store in %s: %s", dir,
                  mdb_strerror (rc));
        if (txn)
            mdb_txn_abort (txn);
        kim_agent_store_destroy (&self);
        return NULL;
    }
    if (kim_agent_store_i_keys_open (self, dir, map_size, error, error_size) != 0)
        kim_agent_store_destroy (&self);
    else
    if ((rc = kim_agent_store_i_payloads_seal (self)) != 0) {
        snprintf (error, error_size, "agent/data: cannot seal the payloads stored in %s: %s",
                  dir, kim_strerror (-rc));
        kim_agent_store_destroy (&self);
    }
    return self;
}

void
kim_agent_store_destroy (kim_agent_store_t **self_p)
{
    if (self_p && *self_p) {
        kim_agent_store_i_keys_close (*self_p);
        if ((*self_p)->env)
            mdb_env_close ((*self_p)->env);
        free (*self_p);
        *self_p = NULL;
    }
}

int
kim_agent_store_i_end (MDB_txn *txn, int rc)
{
    if (rc) {
        mdb_txn_abort (txn);
        return rc;
    }
    int mrc = mdb_txn_commit (txn);
    return mrc? kim_agent_store_i_mdb_code (mrc): 0;
}

//  --------------------------------------------------------------------------
//  JSON records

json_t *
kim_agent_store_i_get_json (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key)
{
    MDB_val value;
    if (mdb_get (txn, self->dbi [db], key, &value) != 0)
        return NULL;
    return json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
}

int
kim_agent_store_i_put_json (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key,
                            json_t *record)
{
    char *text = json_dumps (record, JSON_COMPACT);
    if (!text)
        return -KIM_E_NOMEM;
    MDB_val value = { strlen (text), text };
    int rc = mdb_put (txn, self->dbi [db], key, &value, 0);
    free (text);
    return rc? kim_agent_store_i_mdb_code (rc): 0;
}

//  A copy of a record without its internal keys.
json_t *
kim_agent_store_i_public (json_t *record)
{
    if (!record)
        return NULL;
    json_t *copy = json_object ();
    const char *key;
    json_t *value;
    json_object_foreach (record, key, value)
        if (key [0] != '_')
            json_object_set (copy, key, value);
    json_decref (record);
    return copy;
}

json_t *
kim_agent_store_i_header_json (const kim_msg_t *msg)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    json_t *header = NULL;
    if (kim_msg_to_json (msg, &buf) == 0)
        header = json_loadb ((const char *) buf.data, buf.size, 0, NULL);
    kim_buf_free (&buf);
    return header? header: json_object ();
}

//  --------------------------------------------------------------------------
//  Referral view

//  Suspends the open referrals of the view that relied on a revoked consent.
static int
s_view_revoke (kim_agent_store_t *self, MDB_txn *txn, const kim_msg_t *msg)
{
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, self->dbi [S_REFERRALS], &cursor);
    if (rc)
        return kim_agent_store_i_mdb_code (rc);
    MDB_val key, value;
    int op = MDB_FIRST;
    while (rc == 0 && mdb_cursor_get (cursor, &key, &value, op) == 0) {
        op = MDB_NEXT;
        json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
        json_t *updated = record? kim_agent_view_revoked (record, msg, kim_agent_store_i_now ()): NULL;
        if (updated) {
            char *text = json_dumps (updated, JSON_COMPACT);
            MDB_val data = { text? strlen (text): 0, text };
            //  Overwriting the current item keeps the cursor where it is
            int mrc = text? mdb_cursor_put (cursor, &key, &data, MDB_CURRENT): ENOMEM;
            rc = mrc == ENOMEM? -KIM_E_NOMEM: mrc? kim_agent_store_i_mdb_code (mrc): 0;
            free (text);
        }
        json_decref (updated);
        json_decref (record);
    }
    mdb_cursor_close (cursor);
    return rc;
}

//  A HANDOVER_ACCEPT of the offer the case record holds moves the referrals
//  the offer listed, in our view as at the broker. We hear of it as its
//  sender (the new lead), its recipient (the old lead), or through the
//  agent's subscription to the handovers of our cases (a party to a
//  referral the handover moves).
static int
s_view_handover (kim_agent_store_t *self, MDB_txn *txn, const kim_msg_t *msg, bool outgoing,
                 json_t *kcase)
{
    json_t *offer = json_object_get (kcase, "offer");
    const char *offer_id = json_string_value (json_object_get (offer, "msg_id"));
    const char *old_lead = json_string_value (json_object_get (offer, "from"));
    const char *state = json_string_value (json_object_get (offer, "state"));
    const char *new_lead = outgoing? self->org: msg->sender;
    if (!offer_id || !old_lead || !state || !streq (offer_id, msg->ref_msg_id)
    ||  !streq (state, "ACCEPTED"))
        return 0;
    int rc = 0;
    size_t index;
    json_t *item;
    json_array_foreach (json_object_get (offer, "referrals"), index, item) {
        const char *id = json_string_value (item);
        if (!id || rc)
            continue;
        MDB_val key = { strlen (id), (void *) id };
        json_t *record = kim_agent_store_i_get_json (self, txn, S_REFERRALS, &key);
        json_t *moved = record? kim_agent_view_handover (self->org, record, old_lead, new_lead,
                                                         msg, kim_agent_store_i_now ()): NULL;
        if (moved)
            rc = kim_agent_store_i_put_json (self, txn, S_REFERRALS, &key, moved);
        json_decref (moved);
        json_decref (record);
    }
    return rc;
}

static int
s_view_apply (kim_agent_store_t *self, MDB_txn *txn, const kim_msg_t *msg, bool outgoing,
              uint64_t seq)
{
    const char *id = msg->referral_id;
    json_t *record = NULL;
    if (id [0]) {
        MDB_val key = { strlen (id), (void *) id };
        record = kim_agent_store_i_get_json (self, txn, S_REFERRALS, &key);
    }
    json_t *opened = NULL;
    json_t *updated = kim_agent_view_apply (self->org, msg, outgoing, record, kim_agent_store_i_now (), &opened);
    //  The case a message belongs to: its own case_id, else its referral's
    char case_id [KIM_ID_MAX + 1];
    const char *referral_case = json_string_value (json_object_get (updated? updated: record,
                                                                    "case_id"));
    kim_str_copy (case_id, sizeof case_id, msg->case_id [0]? msg->case_id
                                           : referral_case? referral_case: "");
    json_decref (record);
    if (!case_id [0] && msg->type == KIM_TYPE_CONSENT_REVOKE && msg->grant_id [0]) {
        //  A revocation names its consent; the consent knows its case
        MDB_val key = { strlen (msg->grant_id), (void *) msg->grant_id };
        json_t *consent = kim_agent_store_i_get_json (self, txn, S_CONSENTS, &key);
        const char *consent_case = json_string_value (json_object_get (consent, "case_id"));
        kim_str_copy (case_id, sizeof case_id, consent_case? consent_case: "");
        json_decref (consent);
    }
    int rc = 0;
    if (updated) {
        MDB_val key = { strlen (id), (void *) id };
        rc = kim_agent_store_i_put_json (self, txn, S_REFERRALS, &key, updated);
        json_decref (updated);
    }
    if (opened && rc == 0) {
        const char *new_id = json_string_value (json_object_get (opened, "referral_id"));
        if (new_id) {
            MDB_val key = { strlen (new_id), (void *) new_id };
            json_t *existing = kim_agent_store_i_get_json (self, txn, S_REFERRALS, &key);
            if (!existing)
                rc = kim_agent_store_i_put_json (self, txn, S_REFERRALS, &key, opened);
            json_decref (existing);
        }
    }
    json_decref (opened);
    if (rc == 0 && msg->type == KIM_TYPE_CONSENT_REVOKE && msg->grant_id [0])
        rc = s_view_revoke (self, txn, msg);
    if (rc == 0 && case_id [0]) {
        MDB_val key = { strlen (case_id), case_id };
        json_t *current = kim_agent_store_i_get_json (self, txn, S_CASES, &key);
        json_t *moved = kim_agent_view_case (self->org, msg, outgoing, case_id, current, seq,
                                             kim_agent_store_i_now ());
        if (moved)
            rc = kim_agent_store_i_put_json (self, txn, S_CASES, &key, moved);
        if (rc == 0 && moved && msg->type == KIM_TYPE_HANDOVER_ACCEPT)
            rc = s_view_handover (self, txn, msg, outgoing, moved);
        json_decref (moved);
        json_decref (current);
    }
    return rc;
}

//  What the outbox accept records beside the message: a consent granted or
//  revoked, an access report asked for. In the accept's transaction.
static int
s_accept_extra (kim_agent_store_t *self, MDB_txn *txn, const kim_msg_t *msg, uint64_t order)
{
    int rc = 0;
    if (msg->type == KIM_TYPE_CONSENT_GRANT || msg->type == KIM_TYPE_CONSENT_REVOKE) {
        MDB_val key = { strlen (msg->grant_id), (void *) msg->grant_id };
        json_t *record = kim_agent_store_i_get_json (self, txn, S_CONSENTS, &key);
        if (!record)
            record = json_pack ("{s:s, s:I}", "consent", msg->grant_id,
                                "recorded_at", (json_int_t) kim_agent_store_i_now ());
        if (!record)
            return -KIM_E_NOMEM;
        //  A later grant or revocation replaces the earlier one's msg_id
        //  only when that one was refused: the broker takes a consent id once
        const char *field = msg->type == KIM_TYPE_CONSENT_GRANT? "grant_msg_id": "revoke_msg_id";
        const char *earlier = json_string_value (json_object_get (record, field));
        bool replace = !earlier;
        if (earlier) {
            MDB_val okey = { strlen (earlier), (void *) earlier };
            json_t *outbox = kim_agent_store_i_get_json (self, txn, S_OUTBOX, &okey);
            const char *status = json_string_value (json_object_get (outbox, "status"));
            replace = !outbox || (status && streq (status, "refused"));
            json_decref (outbox);
        }
        if (replace) {
            json_object_set_new (record, field, json_string (msg->msg_id));
            if (msg->case_id [0])
                json_object_set_new (record, "case_id", json_string (msg->case_id));
            if (msg->type == KIM_TYPE_CONSENT_GRANT) {
                json_t *header = kim_agent_store_i_header_json (msg);
                const char *keys [] = { "subject", "recipients", "purposes", "categories",
                                        "explicit", "valid_until", NULL };
                for (size_t i = 0; keys [i]; i++) {
                    json_t *value = json_object_get (header, keys [i]);
                    if (value)
                        json_object_set (record, keys [i], value);
                }
                json_decref (header);
            }
            rc = kim_agent_store_i_put_json (self, txn, S_CONSENTS, &key, record);
        }
        json_decref (record);
    }
    else
    if (msg->type == KIM_TYPE_ACCESS_REPORT) {
        MDB_val key = { strlen (msg->msg_id), (void *) msg->msg_id };
        json_t *record = json_pack ("{s:s, s:s, s:s, s:I, s:I}", "msg_id", msg->msg_id,
                                    "subject", msg->subject, "case_id", msg->case_id,
                                    "requested_at", (json_int_t) kim_agent_store_i_now (),
                                    "_order", (json_int_t) order);
        rc = record? kim_agent_store_i_put_json (self, txn, S_REPORTS, &key, record): -KIM_E_NOMEM;
        json_decref (record);
    }
    return rc;
}

//  A broker-made ACCESS_REPORT's first page answers the oldest request of
//  ours for the same subject and case that has no answer yet and was not
//  refused (the broker answers requests in the order it logs them; the
//  report names no request). A later page belongs to the request whose
//  report has the pages before it and no last page yet. The pages' seqs are
//  kept in "_pages" (the first also in report_seq), "_last" once the last
//  page is in.
static int
s_report_arrived (kim_agent_store_t *self, MDB_txn *txn, const kim_msg_t *msg, uint64_t seq,
                  const uint8_t *payload, size_t size)
{
    json_t *page_json = json_loadb ((const char *) payload, size, 0, NULL);
    json_int_t page = json_integer_value (json_object_get (page_json, "page"));
    bool last = !json_is_false (json_object_get (page_json, "last"));
    json_decref (page_json);
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, self->dbi [S_REPORTS], &cursor);
    if (rc)
        return kim_agent_store_i_mdb_code (rc);
    json_t *best = NULL;
    int64_t best_order = INT64_MAX;
    MDB_val key, value;
    int op = MDB_FIRST;
    while (mdb_cursor_get (cursor, &key, &value, op) == 0) {
        op = MDB_NEXT;
        json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
        const char *subject = json_string_value (json_object_get (record, "subject"));
        const char *case_id = json_string_value (json_object_get (record, "case_id"));
        const char *msg_id = json_string_value (json_object_get (record, "msg_id"));
        int64_t order = (int64_t) json_integer_value (json_object_get (record, "_order"));
        json_t *pages = json_object_get (record, "_pages");
        bool candidate = subject && case_id && msg_id && streq (subject, msg->subject)
                      && streq (case_id, msg->case_id) && order < best_order;
        if (candidate && page > 1)
            candidate = json_object_get (record, "report_seq")
                     && !json_is_true (json_object_get (record, "_last"))
                     && (json_int_t) json_array_size (pages) == page - 1;
        else
        if (candidate)
            candidate = !json_object_get (record, "report_seq");
        if (candidate && page <= 1) {
            MDB_val okey = { strlen (msg_id), (void *) msg_id };
            json_t *outbox = kim_agent_store_i_get_json (self, txn, S_OUTBOX, &okey);
            const char *status = json_string_value (json_object_get (outbox, "status"));
            candidate = !status || !streq (status, "refused");
            json_decref (outbox);
        }
        if (candidate) {
            json_decref (best);
            best = record;
            best_order = order;
        }
        else
            json_decref (record);
    }
    mdb_cursor_close (cursor);
    if (best) {
        const char *msg_id = json_string_value (json_object_get (best, "msg_id"));
        MDB_val bkey = { strlen (msg_id), (void *) msg_id };
        if (page <= 1) {
            json_object_set_new (best, "report_seq", json_integer ((json_int_t) seq));
            json_object_set_new (best, "answered_at",
                                 json_integer ((json_int_t) kim_agent_store_i_now ()));
            json_object_set_new (best, "_pages", json_array ());
        }
        json_array_append_new (json_object_get (best, "_pages"), json_integer ((json_int_t) seq));
        json_object_set_new (best, "_last", json_boolean (last));
        rc = kim_agent_store_i_put_json (self, txn, S_REPORTS, &bkey, best);
        json_decref (best);
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  Outbox

//  What makes two requests "the same message": the header as the local
//  system gave it (before we stamp created_at) and the payload.
static void
s_digest (const kim_msg_t *msg, const uint8_t *payload, size_t size, char hex [65])
{
    kim_msg_t copy = *msg;
    copy.created_at = 0;
    kim_buf_t buf;
    kim_buf_init (&buf);
    kim_msg_encode (&copy, &buf);
    crypto_generichash_state state;
    crypto_generichash_init (&state, NULL, 0, 32);
    crypto_generichash_update (&state, buf.data, buf.size);
    crypto_generichash_update (&state, payload, size);
    uint8_t hash [32];
    crypto_generichash_final (&state, hash, sizeof hash);
    sodium_bin2hex (hex, 65, hash, sizeof hash);
    kim_buf_free (&buf);
}

//  One put of an accepted message: a store whose map is full says so
//  (STORE_FULL, a 503 the office's system may retry), whichever put met it.
static int
s_put (MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *value)
{
    int rc = mdb_put (txn, dbi, key, value, 0);
    return rc? kim_agent_store_i_mdb_code (rc): 0;
}

int
kim_agent_store_accept (kim_agent_store_t *self, const kim_msg_t *msg, const uint8_t *payload,
                        size_t size, const char *folder_name, json_t **record)
{
    *record = NULL;
    char digest [65];
    s_digest (msg, payload, size, digest);
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, 0, &txn) != 0)
        return -KIM_E_IO;
    MDB_val key = { strlen (msg->msg_id), (void *) msg->msg_id };
    json_t *existing = kim_agent_store_i_get_json (self, txn, S_OUTBOX, &key);
    if (existing) {
        mdb_txn_abort (txn);
        bool same = streq (json_string_value (json_object_get (existing, "_digest"))
                           ? json_string_value (json_object_get (existing, "_digest")): "",
                           digest);
        if (!same) {
            json_decref (existing);
            return -KIM_E_BAD_VALUE;
        }
        *record = kim_agent_store_i_public (existing);
        return 1;
    }
    //  Stamp created_at now, so that every resend carries the same header
    kim_msg_t stamped = *msg;
    stamped.created_at = kim_agent_store_i_now ();
    uint64_t counter = 1;
    MDB_val meta_key = { 10, (void *) "queue_next" }, meta_value;
    if (mdb_get (txn, self->dbi [S_META], &meta_key, &meta_value) == 0)
        counter = kim_agent_store_i_u64_key (&meta_value);
    uint8_t counter_bytes [8], next_bytes [8];
    kim_agent_store_i_key_u64 (counter_bytes, counter);
    kim_agent_store_i_key_u64 (next_bytes, counter + 1);

    json_t *out = json_pack ("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:o, s:s, s:I}",
                             "msg_id", stamped.msg_id, "status", "queued",
                             "type", kim_type_name (stamped.type), "recipient", stamped.recipient,
                             "referral_id", stamped.referral_id,
                             "accepted_at", (json_int_t) stamped.created_at,
                             "payload_size", (json_int_t) size,
                             "header", kim_agent_store_i_header_json (&stamped),
                             "_digest", digest, "_queue", (json_int_t) counter);
    int rc = out? 0: -KIM_E_NOMEM;
    if (rc == 0 && folder_name)
        json_object_set_new (out, "_folder", json_string (folder_name));
    if (rc == 0)
        rc = kim_agent_store_i_put_json (self, txn, S_OUTBOX, &key, out);
    if (rc == 0)
        rc = s_accept_extra (self, txn, &stamped, counter);
    if (rc == 0)
        rc = kim_agent_store_i_payload_put (self, txn, S_OUTBOX_PAYLOAD, &key, payload, size);
    MDB_val queue_key = { 8, counter_bytes };
    MDB_val queue_value = { strlen (msg->msg_id), (void *) msg->msg_id };
    if (rc == 0)
        rc = s_put (txn, self->dbi [S_QUEUE], &queue_key, &queue_value);
    MDB_val next_value = { 8, next_bytes };
    if (rc == 0)
        rc = s_put (txn, self->dbi [S_META], &meta_key, &next_value);
    rc = kim_agent_store_i_end (txn, rc);
    if (rc) {
        json_decref (out);
        return rc;
    }
    *record = kim_agent_store_i_public (out);
    return 0;
}

json_t *
kim_agent_store_outbox_get (kim_agent_store_t *self, const char *msg_id)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return NULL;
    MDB_val key = { strlen (msg_id), (void *) msg_id };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_OUTBOX, &key);
    mdb_txn_abort (txn);
    return kim_agent_store_i_public (record);
}

json_t *
kim_agent_store_outbox_queued (kim_agent_store_t *self, size_t max)
{
    json_t *list = json_array ();
    MDB_txn *txn;
    MDB_cursor *cursor;
    if (!list || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return list;
    if (mdb_cursor_open (txn, self->dbi [S_QUEUE], &cursor) == 0) {
        MDB_val key, value;
        int op = MDB_FIRST;
        while (json_array_size (list) < max && mdb_cursor_get (cursor, &key, &value, op) == 0) {
            json_array_append_new (list, json_stringn ((const char *) value.mv_data,
                                                       value.mv_size));
            op = MDB_NEXT;
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    return list;
}

int
kim_agent_store_outbox_load (kim_agent_store_t *self, const char *msg_id, kim_msg_t *msg,
                             uint8_t **payload, size_t *size)
{
    *payload = NULL;
    *size = 0;
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return -KIM_E_IO;
    MDB_val key = { strlen (msg_id), (void *) msg_id };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_OUTBOX, &key);
    int rc = record? 0: -KIM_E_NOT_FOUND;
    if (rc == 0) {
        char *header = json_dumps (json_object_get (record, "header"), JSON_COMPACT);
        kim_decode_error_t derr = { 0, "" };
        kim_msg_init (msg);
        rc = header? kim_msg_from_json (msg, header, strlen (header), &derr): -KIM_E_NOMEM;
        free (header);
    }
    if (rc == 0) {
        int found = kim_agent_store_i_payload_get (self, txn, S_OUTBOX_PAYLOAD, &key, payload,
                                                   size);
        rc = found < 0? found: 0;
    }
    json_decref (record);
    mdb_txn_abort (txn);
    return rc;
}

//  --------------------------------------------------------------------------
//  The link's write transactions

kim_agent_txn_t *
kim_agent_store_begin (kim_agent_store_t *self)
{
    kim_agent_txn_t *txn = (kim_agent_txn_t *) calloc (1, sizeof *txn);
    if (!txn)
        return NULL;
    txn->store = self;
    if (mdb_txn_begin (self->env, NULL, 0, &txn->txn) != 0) {
        free (txn);
        return NULL;
    }
    return txn;
}

//  Ends an outbox record's wait: updates it and drops it from the queue.
static int
s_answer (kim_agent_txn_t *txn, const char *msg_id, json_t *fields, const kim_msg_t **sent)
{
    kim_agent_store_t *self = txn->store;
    MDB_val key = { strlen (msg_id), (void *) msg_id };
    json_t *record = kim_agent_store_i_get_json (self, txn->txn, S_OUTBOX, &key);
    if (!record) {
        json_decref (fields);
        return -KIM_E_NOT_FOUND;
    }
    if (!streq (json_string_value (json_object_get (record, "status"))
                ? json_string_value (json_object_get (record, "status")): "", "queued")) {
        json_decref (fields);
        json_decref (record);
        return 1;                       //  answered already
    }
    json_object_update (record, fields);
    json_decref (fields);
    json_object_set_new (record, "answered_at", json_integer ((json_int_t) kim_agent_store_i_now ()));
    uint8_t queue_key [8];
    kim_agent_store_i_key_u64 (queue_key, (uint64_t) json_integer_value (json_object_get (record, "_queue")));
    MDB_val qkey = { 8, queue_key };
    int rc = mdb_del (txn->txn, self->dbi [S_QUEUE], &qkey, NULL);
    rc = rc == MDB_NOTFOUND? 0: rc? kim_agent_store_i_mdb_code (rc): 0;
    if (rc == 0)
        rc = kim_agent_store_i_put_json (self, txn->txn, S_OUTBOX, &key, record);
    const char *folder_name = json_string_value (json_object_get (record, "_folder"));
    if (rc == 0 && folder_name) {
        MDB_val name = { strlen (folder_name), (void *) folder_name };
        int mrc = mdb_put (txn->txn, self->dbi [S_ANSWERS], &key, &name, 0);
        rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
    }
    (void) sent;
    json_decref (record);
    return rc;
}

int
kim_agent_store_receipt (kim_agent_txn_t *txn, const char *msg_id, uint64_t seq, bool dup)
{
    if (txn->failed)
        return txn->failed;
    int rc = s_answer (txn, msg_id, json_pack ("{s:s, s:I, s:b}", "status", "receipted",
                                               "seq", (json_int_t) seq, "dup", dup), NULL);
    if (rc == 0) {
        //  The referral view moves with what the broker took
        MDB_val key = { strlen (msg_id), (void *) msg_id };
        json_t *record = kim_agent_store_i_get_json (txn->store, txn->txn, S_OUTBOX, &key);
        char *header = record? json_dumps (json_object_get (record, "header"), JSON_COMPACT)
                             : NULL;
        kim_msg_t msg;
        kim_decode_error_t derr = { 0, "" };
        kim_msg_init (&msg);
        if (header && kim_msg_from_json (&msg, header, strlen (header), &derr) == 0)
            rc = s_view_apply (txn->store, txn->txn, &msg, true, seq);
        free (header);
        json_decref (record);
    }
    if (rc < 0 && rc != -KIM_E_NOT_FOUND)
        txn->failed = rc;
    return rc < 0? rc: 0;
}

int
kim_agent_store_refused (kim_agent_txn_t *txn, const char *msg_id, int code, const char *text,
                         const char *path)
{
    if (txn->failed)
        return txn->failed;
    code = code < 0? -code: code;
    int rc = s_answer (txn, msg_id, json_pack ("{s:s, s:s, s:i, s:s, s:s}", "status", "refused",
                                               "error", kim_errname (code), "code", code,
                                               "text", text && *text? text: kim_strerror (code),
                                               "path", path? path: ""), NULL);
    if (rc < 0 && rc != -KIM_E_NOT_FOUND)
        txn->failed = rc;
    return rc < 0? rc: 0;
}

int
kim_agent_store_deliver (kim_agent_txn_t *txn, const kim_event_t *event, bool *fresh)
{
    *fresh = false;
    if (txn->failed)
        return txn->failed;
    kim_agent_store_t *self = txn->store;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, event->seq);
    MDB_val key = { 8, seq_key }, value;
    if (mdb_get (txn->txn, self->dbi [S_INBOX], &key, &value) == 0)
        return 0;                       //  a redelivery of what we have
    const kim_msg_t *msg = &event->msg;
    json_t *record = json_pack ("{s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:b, s:I, s:b, s:s, s:o}",
                                "seq", (json_int_t) event->seq, "msg_id", msg->msg_id,
                                "type", kim_type_name (msg->type)? kim_type_name (msg->type): "",
                                "sender", msg->sender, "recipient", msg->recipient,
                                "referral_id", msg->referral_id, "case_id", msg->case_id,
                                "received_at", (json_int_t) kim_agent_store_i_now (), "handled", 0,
                                "payload_size", (json_int_t) event->payload_size,
                                "sealed_error", event->sealed_error,
                                "signature", msg->has_sig? "unchecked": "none",
                                "header", kim_agent_store_i_header_json (msg));
    int rc = record? kim_agent_store_i_put_json (self, txn->txn, S_INBOX, &key, record): -KIM_E_NOMEM;
    json_decref (record);
    if (rc == 0)
        rc = kim_agent_store_i_payload_put (self, txn->txn, S_INBOX_PAYLOAD, &key,
                                            event->payload, event->payload_size);
    if (rc == 0)
        rc = s_view_apply (self, txn->txn, msg, false, event->seq);
    if (rc == 0 && msg->type == KIM_TYPE_ACCESS_REPORT)
        rc = s_report_arrived (self, txn->txn, msg, event->seq, event->payload,
                               event->payload_size);
    if (rc == 0 && self->push) {
        json_t *push = json_pack ("{s:i, s:I, s:s}", "attempts", 0, "next_at", (json_int_t) 0,
                                  "last_error", "");
        rc = push? kim_agent_store_i_put_json (self, txn->txn, S_PUSH, &key, push): -KIM_E_NOMEM;
        json_decref (push);
    }
    if (rc == 0 && self->drop) {
        MDB_val empty = { 0, (void *) "" };
        int mrc = mdb_put (txn->txn, self->dbi [S_DROP], &key, &empty, 0);
        rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
    }
    if (rc)
        txn->failed = rc;
    else
        *fresh = true;
    return rc;
}

int
kim_agent_store_commit (kim_agent_txn_t **txn_p)
{
    kim_agent_txn_t *txn = *txn_p;
    *txn_p = NULL;
    if (!txn)
        return -KIM_E_ARGS;
    int rc = txn->failed;
    if (rc)
        mdb_txn_abort (txn->txn);
    else {
        int mrc = mdb_txn_commit (txn->txn);
        rc = mrc? kim_agent_store_i_mdb_code (mrc): 0;
    }
    free (txn);
    return rc;
}

void
kim_agent_store_abort (kim_agent_txn_t **txn_p)
{
    if (txn_p && *txn_p) {
        mdb_txn_abort ((*txn_p)->txn);
        free (*txn_p);
        *txn_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Inbox reads

//  The person a delivery is about, from its header, as a field of its own:
//  a list of notices about people (ERASURE) then needs no second read.
static void
s_subject_field (json_t *record)
{
    json_t *subject = json_object_get (json_object_get (record, "header"), "subject");
    json_object_set_new (record, "subject",
                         json_string (json_is_string (subject)? json_string_value (subject): ""));
}

json_t *
kim_agent_store_inbox_list (kim_agent_store_t *self, uint64_t after, size_t limit, int handled,
                            const char *type)
{
    json_t *items = json_array ();
    MDB_txn *txn;
    MDB_cursor *cursor;
    if (!items || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return items;
    //  Records are compact JSON, so a record of `type` holds these bytes:
    //  most records of another type are passed over without parsing them
    char needle [KIM_CODE_MAX + 16] = "";
    if (type)
        snprintf (needle, sizeof needle, "\"type\":\"%s\"", type);
    size_t needle_size = strlen (needle);
    if (mdb_cursor_open (txn, self->dbi [S_INBOX], &cursor) == 0) {
        uint8_t start [8];
        kim_agent_store_i_key_u64 (start, after + 1);
        MDB_val key = { 8, start }, value;
        int rc = after == UINT64_MAX? MDB_NOTFOUND
                                    : mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
        while (rc == 0 && json_array_size (items) < limit) {
            if (needle_size && !memmem (value.mv_data, value.mv_size, needle, needle_size)) {
                rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT);
                continue;
            }
            json_t *record = json_loadb ((const char *) value.mv_data, value.mv_size, 0, NULL);
            if (record) {
                s_subject_field (record);
                json_object_del (record, "header");
                bool is_handled = json_is_true (json_object_get (record, "handled"));
                const char *its_type = json_string_value (json_object_get (record, "type"));
                bool of_type = !type || (its_type && streq (its_type, type));
                if (of_type && (handled < 0 || (handled == 1) == is_handled))
                    json_array_append_new (items, kim_agent_store_i_public (record));
                else
                    json_decref (record);
            }
            rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT);
        }
        mdb_cursor_close (cursor);
    }
    mdb_txn_abort (txn);
    return items;
}

json_t *
kim_agent_store_inbox_get (kim_agent_store_t *self, uint64_t seq)
{
    MDB_txn *txn;
    if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0)
        return NULL;
    uint8_t seq_key [8];
    kim_agent_store_i_key_u64 (seq_key, seq);
    MDB_val key = { 8, seq_key };
    json_t *record = kim_agent_store_i_get_json (self, txn, S_INBOX, &key);
    uint8_t *data = NULL;
    size_t size = 0;
    if (record && kim_agent_store_i_payload_get (self, txn, S_INBOX_PAYLOAD, &key, &data,
                                                 &size) < 0) {
        json_decref (record);
        record = NULL;
    }
    if (record) {
        s_subject_field (record);
        size_t b64_size = sodium_base64_encoded_len (size, sodium_base64_VARIANT_ORIGINAL);
        char *b64 = (char *) malloc (b64_size);
        if (b64) {
            sodium_bin2base64 (b64, b64_size, data? data: (const uint8_t *) "", size,
                               sodium_base64_VARIANT_ORIGINAL);
            json_object_set_new (record, "payload_base64", json_string (b64));
            free (b64);
        }
        //  Text payloads also as text, for systems that send text
        if (kim_utf8_valid (data? data: (const uint8_t *) "", size))
            json_object_set_new (record, "payload", json_stringn (data? (const char *) data: "",
                                                                  size));
    }
    free (data);
    mdb_txn_abort (txn);
    return kim_agent_store_i_public (record);
}

int
kim_agent_store_inbox_handled (kim_agent_store_t *self, uint64_t seq, json_t **out)
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
    int rc = 0;
    if (!json_is_true (json_object_get (record, "handled"))) {
        json_object_set_new (record, "handled", json_true ());
        json_object_set_new (record, "handled_at", json_integer ((json_int_t) kim_agent_store_i_now ()));
        rc = kim_agent_store_i_put_json (self, txn, S_INBOX, &key, record);
        rc = kim_agent_store_i_end (txn, rc);
    }
    else
        mdb_txn_abort (txn);
    if (rc) {
        json_decref (record);
        return rc;
    }
    json_object_del (record, "header");
    *out = kim_agent_store_i_public (record);
    return 0;
}
