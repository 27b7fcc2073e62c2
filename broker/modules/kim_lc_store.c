/*  kim_lc_store.c — what the life-cycle module keeps in the store, and the
    pieces both of its files build on (part of the life-cycle module; see
    kim_lifecycle_int.h).

    Owns the stored form of referrals, the referral index, the timers, the
    state records and a referral's move to a new state. kim_lifecycle.c (the
    referral life cycle and the hook) and kim_case.c (cases, handovers,
    subscriptions, retention) both use these, and this file uses neither,
    so the module's calls point one way: kim_lifecycle.c -> kim_case.c ->
    kim_lc_store.c.
*/
#include <czmq.h>
#include <inttypes.h>

#include "kim/kim_log.h"
#include "kim_lifecycle_int.h"

//  --------------------------------------------------------------------------
//  Store helpers: everything goes through the open batch's transaction.

int
kim_lc_put (kim_store_t *store, kim_db_t db, const void *key, size_t key_size,
            const void *value, size_t value_size, const char *what)
{
    MDB_txn *txn = kim_store_txn (store);
    if (!txn)
        return -KIM_E_ARGS;
    MDB_val k = { key_size, (void *) key }, v = { value_size, (void *) value };
    int rc = kim_store_put (store, db, &k, &v, 0);
    return rc? kim_store_error (store, rc, what): 0;
}

int
kim_lc_timer_put (kim_store_t *store, uint64_t due, const char *id, uint8_t kind)
{
    //  The timers of a batch due at the same moment share one entry
    uint8_t group [9];
    kim_log_put_be64 (group, due);
    group [8] = kind;
    int rc = kim_store_group_add (store, KIM_DB_TIMER, group, sizeof group, id, strlen (id));
    if (rc)
        zsys_error ("lifecycle: storing a timer: %s", kim_strerror (rc));
    return rc;
}

int
kim_lc_referral_decode (const uint8_t *value, size_t value_size, kim_referral_t *referral)
{
    memset (referral, 0, sizeof *referral);
    if (value_size == sizeof *referral && value [0] == S_LEGACY_VERSION) {
        memcpy (referral, value, sizeof *referral);     //  LMDB does not align values
        return 0;
    }
    kim_lc_reader_t reader = { value, value + value_size, false };
    if (kim_lc_get_u8 (&reader) != S_REFERRAL_VERSION)
        return -KIM_E_IO;
    referral->version = S_REFERRAL_VERSION;
    referral->state = kim_lc_get_u8 (&reader);
    referral->deadline = kim_lc_get_u64 (&reader);
    referral->created_seq = kim_lc_get_u64 (&reader);
    referral->last_seq = kim_lc_get_u64 (&reader);
    kim_lc_get_text (&reader, referral->id, sizeof referral->id);
    kim_lc_get_text (&reader, referral->msg_id, sizeof referral->msg_id);
    kim_lc_get_text (&reader, referral->sender, sizeof referral->sender);
    kim_lc_get_text (&reader, referral->recipient, sizeof referral->recipient);
    kim_lc_get_text (&reader, referral->case_id, sizeof referral->case_id);
    kim_lc_get_text (&reader, referral->consent_id, sizeof referral->consent_id);
    kim_lc_get_text (&reader, referral->parent, sizeof referral->parent);
    kim_lc_get_text (&reader, referral->purpose, sizeof referral->purpose);
    return reader.bad || reader.at != reader.end? -KIM_E_IO: 0;
}

//  Reads the value under `key` in `db` through `decode`; `name` names it
//  in the error a value this broker cannot decode makes.
static int
s_fetch (kim_store_t *store, kim_db_t db, const void *key_data, size_t key_size,
         const char *what, const char *name,
         int (*decode) (const uint8_t *value, size_t size, void *into), void *into)
{
    if (!kim_store_txn (store))
        return -KIM_E_ARGS;
    MDB_val key = { key_size, (void *) key_data }, value;
    int rc = kim_store_get (store, db, &key, &value);
    if (rc == MDB_NOTFOUND)
        return -KIM_E_NOT_FOUND;
    if (rc)
        return kim_store_error (store, rc, "lifecycle: reading its state");
    if (decode ((const uint8_t *) value.mv_data, value.mv_size, into)) {
        zsys_error ("lifecycle: %s %s is stored in a form this broker does not know "
                    "(%zu bytes)", what, name, value.mv_size);
        return -KIM_E_IO;
    }
    return 0;
}

int
kim_lc_fetch (kim_store_t *store, kim_db_t db, const char *id, const char *what,
              int (*decode) (const uint8_t *value, size_t size, void *into), void *into)
{
    return s_fetch (store, db, id, strlen (id), what, id, decode, into);
}

//  A referral is kept under two keys (kim_lifecycle_int.h): its id names
//  the seq that opened it, and its state lies under that seq.
static size_t
s_state_key (uint8_t key [S_REFERRAL_STATE_KEY], uint64_t seq)
{
    key [0] = S_REFERRAL_STATE_TAG;
    kim_log_put_be64 (key + 1, seq);
    return S_REFERRAL_STATE_KEY;
}

static int
s_referral_seq_decode (const uint8_t *value, size_t size, void *into)
{
    if (size != 8)
        return -KIM_E_IO;
    *(uint64_t *) into = kim_log_get_be64 (value);
    return 0;
}

static int
s_referral_decode (const uint8_t *value, size_t size, void *into)
{
    return kim_lc_referral_decode (value, size, (kim_referral_t *) into);
}

//  Referral `id` if it opened at `seq`: 0, -KIM_E_NOT_FOUND (none opened
//  there, or another), or -KIM_E_IO (logged).
static int
s_referral_get_at (kim_store_t *store, uint64_t seq, const char *id, kim_referral_t *referral)
{
    uint8_t key [S_REFERRAL_STATE_KEY];
    int rc = s_fetch (store, KIM_DB_REFERRAL, key, s_state_key (key, seq), "referral", id,
                      s_referral_decode, referral);
    return rc == 0 && !streq (referral->id, id)? -KIM_E_NOT_FOUND: rc;
}

int
kim_lc_referral_get (kim_store_t *store, const char *id, kim_referral_t *referral)
{
    uint64_t seq = 0;
    int rc = kim_lc_fetch (store, KIM_DB_REFERRAL, id, "referral", s_referral_seq_decode, &seq);
    if (rc)
        return rc;
    rc = s_referral_get_at (store, seq, id, referral);
    //  An id whose state is missing, or names another referral, is a
    //  damaged store: refused loudly, never read as another's.
    if (rc == -KIM_E_NOT_FOUND) {
        zsys_error ("lifecycle: referral %s names seq %" PRIu64 ", where its state is not",
                    id, seq);
        return -KIM_E_IO;
    }
    return rc;
}

int
kim_lc_referral_find (kim_store_t *store, const char *id, uint64_t seq,
                      kim_referral_t *referral)
{
    int rc = seq? s_referral_get_at (store, seq, id, referral): -KIM_E_NOT_FOUND;
    return rc == -KIM_E_NOT_FOUND? kim_lc_referral_get (store, id, referral): rc;
}

size_t
kim_lc_referral_encode (const kim_referral_t *referral, uint8_t value [KIM_LC_REFERRAL_MAX])
{
    uint8_t *at = value;
    *at++ = S_REFERRAL_VERSION;
    *at++ = (uint8_t) referral->state;
    at = kim_lc_put_u64 (at, referral->deadline);
    at = kim_lc_put_u64 (at, referral->created_seq);
    at = kim_lc_put_u64 (at, referral->last_seq);
    at = kim_lc_put_text (at, referral->id);
    at = kim_lc_put_text (at, referral->msg_id);
    at = kim_lc_put_text (at, referral->sender);
    at = kim_lc_put_text (at, referral->recipient);
    at = kim_lc_put_text (at, referral->case_id);
    at = kim_lc_put_text (at, referral->consent_id);
    at = kim_lc_put_text (at, referral->parent);
    at = kim_lc_put_text (at, referral->purpose);
    return (size_t) (at - value);
}

int
kim_lc_referral_state_put (kim_store_t *store, const kim_referral_t *referral, bool fresh)
{
    uint8_t value [KIM_LC_REFERRAL_MAX];
    size_t size = kim_lc_referral_encode (referral, value);
    uint8_t key [S_REFERRAL_STATE_KEY];
    MDB_val k = { s_state_key (key, referral->created_seq), key }, v = { size, value };
    int rc = kim_store_put (store, KIM_DB_REFERRAL, &k, &v, fresh? MDB_NOOVERWRITE: 0);
    if (rc == MDB_KEYEXIST) {
        zsys_error ("lifecycle: referral %s opens at seq %" PRIu64 ", which another "
                    "referral opened", referral->id, referral->created_seq);
        return -KIM_E_IO;
    }
    return rc? kim_store_error (store, rc, "lifecycle: storing a referral"): 0;
}

int
kim_lc_referral_open (kim_store_t *store, const kim_referral_t *referral)
{
    int rc = kim_lc_referral_state_put (store, referral, true);
    if (rc)
        return rc;
    uint8_t seq [8];
    kim_log_put_be64 (seq, referral->created_seq);
    return kim_lc_put (store, KIM_DB_REFERRAL, referral->id, strlen (referral->id), seq,
                       sizeof seq, "lifecycle: storing a referral");
}

int
kim_lc_referral_put (kim_store_t *store, const kim_referral_t *referral)
{
    return kim_lc_referral_state_put (store, referral, false);
}

int
kim_lc_referral_scan (kim_store_t *store, int (*fn) (void *arg, const kim_referral_t *referral),
                      void *arg, size_t *bad)
{
    MDB_txn *txn = kim_store_txn (store);
    if (!txn)
        return -KIM_E_ARGS;
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, kim_store_dbi (store, KIM_DB_REFERRAL), &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: opening the referrals");
    uint8_t first = S_REFERRAL_STATE_TAG;
    MDB_val key = { 1, &first }, value;
    int fn_rc = 0;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE); rc == 0 && fn_rc == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        kim_referral_t referral;
        if (kim_lc_referral_decode (value.mv_data, value.mv_size, &referral))
            (*bad)++;
        else
            fn_rc = fn (arg, &referral);
    }
    mdb_cursor_close (cursor);
    if (fn_rc)
        return fn_rc == 1? 0: fn_rc;
    return rc == MDB_NOTFOUND? 0: kim_store_error (store, rc, "lifecycle: reading the referrals");
}

//  --------------------------------------------------------------------------
//  The referral index (see kim_lifecycle_int.h; built for older stores in
//  kim_lc_reindex.c)

static uint8_t *
s_index_text (uint8_t *at, const char *text, bool nul)
{
    size_t size = strnlen (text, KIM_ID_MAX);
    memcpy (at, text, size);
    at += size;
    if (nul)
        *at++ = 0;
    return at;
}

size_t
kim_lc_index_party_key (uint8_t key [S_INDEX_KEY_MAX], const char *party,
                        const uint64_t *case_seq, const kim_referral_t *referral)
{
    uint8_t *at = key;
    *at++ = S_INDEX_PARTY;
    at = s_index_text (at, party, true);
    if (case_seq) {
        at = kim_lc_put_u64 (at, *case_seq);
        if (referral) {
            at = kim_lc_put_u64 (at, referral->created_seq);
            at = s_index_text (at, referral->id, false);
        }
    }
    return (size_t) (at - key);
}

size_t
kim_lc_index_consent_key (uint8_t key [S_INDEX_KEY_MAX], const char *consent_id,
                          const char *referral_id)
{
    uint8_t *at = key;
    *at++ = S_INDEX_CONSENT;
    at = s_index_text (at, consent_id, true);
    if (referral_id)
        at = s_index_text (at, referral_id, false);
    return (size_t) (at - key);
}

//  A party entry: its key, and its case id as its value.
static int
s_index_party_put (kim_store_t *store, const kim_referral_t *referral, uint64_t case_seq,
                   const char *party, const char *what)
{
    uint8_t key [S_INDEX_KEY_MAX];
    size_t key_size = kim_lc_index_party_key (key, party, &case_seq, referral);
    return kim_lc_put (store, KIM_DB_REFERRAL_BY, key, key_size, referral->case_id,
                       strnlen (referral->case_id, KIM_ID_MAX), what);
}

int
kim_lc_index_put (kim_store_t *store, const kim_referral_t *referral, uint64_t case_seq)
{
    int rc = s_index_party_put (store, referral, case_seq, referral->sender,
                                "lifecycle: indexing a referral");
    if (rc == 0 && !streq (referral->recipient, referral->sender))
        rc = s_index_party_put (store, referral, case_seq, referral->recipient,
                                "lifecycle: indexing a referral");
    if (rc == 0 && referral->consent_id [0]) {
        uint8_t key [S_INDEX_KEY_MAX];
        size_t size = kim_lc_index_consent_key (key, referral->consent_id, referral->id);
        rc = kim_lc_put (store, KIM_DB_REFERRAL_BY, key, size, "", 0,
                         "lifecycle: indexing a referral");
    }
    return rc;
}

int
kim_lc_index_move (kim_store_t *store, const kim_referral_t *referral, uint64_t case_seq,
                   const char *from, const char *to)
{
    //  The old sender keeps its entry while it is the recipient too. An
    //  entry made while the case had no record is under case seq 0.
    uint64_t none = 0;
    for (int pass = 0; pass < 2 && !streq (from, referral->recipient); pass++) {
        uint8_t key [S_INDEX_KEY_MAX];
        MDB_val k = { kim_lc_index_party_key (key, from, pass? &none: &case_seq, referral), key };
        int rc = kim_store_del (store, KIM_DB_REFERRAL_BY, &k, NULL);
        if (rc == 0)
            break;
        if (rc != MDB_NOTFOUND)
            return kim_store_error (store, rc, "lifecycle: moving a referral's index entry");
    }
    //  A new sender that is the recipient has its entry already.
    if (streq (to, referral->recipient))
        return 0;
    return s_index_party_put (store, referral, case_seq, to,
                              "lifecycle: moving a referral's index entry");
}

//  The referral id (and for a party entry its case id) of an index entry.
//  False for an entry of neither form, which is never ours.
static bool
s_index_entry (const MDB_val *key, const MDB_val *value, char case_id [KIM_ID_MAX + 1],
               char id [KIM_ID_MAX + 1], uint64_t *seq)
{
    const uint8_t *bytes = (const uint8_t *) key->mv_data;
    size_t start;
    case_id [0] = 0;
    *seq = 0;
    if (key->mv_size && bytes [0] == S_INDEX_PARTY) {
        //  'P' party NUL case_seq referral_seq referral_id -> case_id
        const uint8_t *nul = (const uint8_t *) memchr (bytes, 0, key->mv_size);
        if (!nul || value->mv_size > KIM_ID_MAX)
            return false;
        start = (size_t) (nul - bytes) + 1 + 16;
        if (key->mv_size <= start)
            return false;
        *seq = kim_log_get_be64 (bytes + start - 8);
        memcpy (case_id, value->mv_data, value->mv_size);
        case_id [value->mv_size] = 0;
    }
    else {
        //  'C' consent_id NUL referral_id: the id follows the key's NUL
        const uint8_t *nul = (const uint8_t *) memchr (bytes, 0, key->mv_size);
        if (!nul)
            return false;
        start = (size_t) (nul - bytes) + 1;
    }
    if (key->mv_size <= start || key->mv_size - start > KIM_ID_MAX)
        return false;
    memcpy (id, bytes + start, key->mv_size - start);
    id [key->mv_size - start] = 0;
    return true;
}

int
kim_lc_index_scan (kim_store_t *store, const uint8_t *prefix, size_t prefix_size,
                   const char *case_id, kim_lc_scan_fn *fn, void *arg)
{
    MDB_txn *txn = kim_store_txn (store);
    if (!txn)
        return -KIM_E_ARGS;
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, kim_store_dbi (store, KIM_DB_REFERRAL_BY), &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: reading the referral index");
    MDB_val key = { prefix_size, (void *) prefix }, value;
    int result = 0;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE); rc == 0 && result == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size < prefix_size || memcmp (key.mv_data, prefix, prefix_size) != 0)
            break;
        char entry_case [KIM_ID_MAX + 1], id [KIM_ID_MAX + 1];
        uint64_t seq;
        if (!s_index_entry (&key, &value, entry_case, id, &seq)
        ||  (case_id && !streq (entry_case, case_id)))
            continue;
        result = fn (arg, id, seq);
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND && result == 0)
        return kim_store_error (store, rc, "lifecycle: reading the referral index");
    return result == 1? 0: result;
}

const char *
kim_lc_state_name (uint32_t state)
{
#define KIM_X_NAME(name, num) if (state == num) return #name;
    KIM_REFERRAL_STATES (KIM_X_NAME)
#undef KIM_X_NAME
    return "NONE";
}

bool
kim_lc_state_open (uint32_t state)
{
    return state == KIM_REFERRAL_SENT || state == KIM_REFERRAL_DELIVERED
        || state == KIM_REFERRAL_ACCEPTED || state == KIM_REFERRAL_IN_PROGRESS
        || state == KIM_REFERRAL_OVERDUE;
}

int
kim_lc_record (kim_ctx_t *ctx, const char *json)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = kim_json_to_msgpack (json, strlen (json), &buf);
    if (rc == 0)
        rc = kim_ctx_record (ctx, KIM_RECORD_STATE, buf.data, buf.size, NULL);
    else
        zsys_error ("lifecycle: cannot encode a state record (%s): %s", kim_strerror (rc), json);
    kim_buf_free (&buf);
    return rc;
}

//  Packs a MessagePack str of at most 255 bytes (ids, state names, keys).
static uint8_t *
s_pack_str (uint8_t *p, const char *text)
{
    size_t size = strnlen (text, 255);
    if (size < 32)
        *p++ = (uint8_t) (0xa0 | size);
    else {
        *p++ = 0xd9;
        *p++ = (uint8_t) size;
    }
    memcpy (p, text, size);
    return p + size;
}

int
kim_lc_referral_move (kim_ctx_t *ctx, kim_referral_t *referral, uint32_t to, uint64_t seq)
{
    uint32_t from = referral->state;
    referral->state = to;
    if (seq > referral->last_seq)
        referral->last_seq = seq;
    int rc = kim_lc_referral_put (kim_ctx_store (ctx), referral);
    if (rc)
        return rc;
    //  A state change happens for nearly every message (DELIVERED on each
    //  ack), so its record is packed here directly, on the stack:
    //  {referral_id, case_id, from, to, seq}.
    uint8_t body [4 * (2 + KIM_ID_MAX) + 64];
    uint8_t *p = body;
    *p++ = 0x85;
    p = s_pack_str (p, "referral_id");
    p = s_pack_str (p, referral->id);
    p = s_pack_str (p, "case_id");
    p = s_pack_str (p, referral->case_id);
    p = s_pack_str (p, "from");
    p = s_pack_str (p, kim_lc_state_name (from));
    p = s_pack_str (p, "to");
    p = s_pack_str (p, kim_lc_state_name (to));
    p = s_pack_str (p, "seq");
    *p++ = 0xcf;
    kim_log_put_be64 (p, seq);
    p += 8;
    return kim_ctx_record (ctx, KIM_RECORD_STATE, body, (size_t) (p - body), NULL);
}
