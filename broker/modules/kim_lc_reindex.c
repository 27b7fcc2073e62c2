/*  kim_lc_reindex.c — brings the life cycle's trees of a store written by
    an older broker to their present form, once, at start (part of the
    life-cycle module; see kim_lifecycle_int.h).

    Two steps, each one batch, logged, in this order:
    - The referrals' states. META "referral/state" is 1 once each
      referral's state lies under 0xFF created_seq and its id maps to
      that seq (both in REFERRAL, kim_lifecycle_int.h). A store without it
      had each referral whole under its id: the states move.
    - The referral index. META "index/referral_by" holds the form the
      index has: absent in a store from before the index, 1 for its first
      form (ids in the party keys), S_INDEX_VERSION for the present one
      (seqs). A store without the present form gets its index emptied and
      built again from the referrals. A referral's party entries need its
      case's created_seq, so this reads cases too: kim_lifecycle.c ->
      kim_lc_reindex.c -> kim_case.c -> kim_lc_store.c.
*/
#include <czmq.h>

#include "kim_lifecycle_int.h"

#define S_INDEX_META        "index/referral_by"
#define S_INDEX_VERSION     2
#define S_STATE_META        "referral/state"
#define S_STATE_VERSION     1

//  A step's batch: 1 when the store has the present form already, else 0
//  or -KIM_E_*. Sets *count to the referrals it wrote, *bad to those that
//  do not decode (they stay as they were, as they stay unread), *was to
//  the form it found.
typedef int (s_step_fn) (kim_store_t *store, size_t *count, size_t *bad, uint8_t *was);

//  Reads a step's marker: 1 (and *was) when it names `version`, 0 when
//  the step is to run, or -KIM_E_*.
static int
s_marker (kim_store_t *store, const char *name, uint8_t version, uint8_t *was)
{
    MDB_val key = { strlen (name), (void *) name }, value;
    int rc = mdb_get (kim_store_txn (store), kim_store_dbi (store, KIM_DB_META), &key, &value);
    *was = 0;
    if (rc == 0 && value.mv_size == 1)
        *was = *(const uint8_t *) value.mv_data;
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_error (store, rc, "lifecycle: reading a tree's form");
    return *was == version? 1: 0;
}

//  Moves every referral kept under its id to its created_seq.
static int
s_split_batch (kim_store_t *store, size_t *count, size_t *bad, uint8_t *was)
{
    int rc = s_marker (store, S_STATE_META, S_STATE_VERSION, was);
    if (rc)
        return rc;
    MDB_cursor *cursor;
    rc = mdb_cursor_open (kim_store_txn (store), kim_store_dbi (store, KIM_DB_REFERRAL),
                          &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: opening the referrals");
    MDB_val key, value;
    int put_rc = 0;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_FIRST); rc == 0 && put_rc == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size > 0 && *(const uint8_t *) key.mv_data == S_REFERRAL_STATE_TAG)
            break;              //  the states sort after every id
        kim_referral_t referral;
        uint8_t id [KIM_ID_MAX + 1];
        if (value.mv_size == 8)
            continue;           //  moved already
        if (key.mv_size > sizeof id
        ||  kim_lc_referral_decode (value.mv_data, value.mv_size, &referral)) {
            (*bad)++;
            continue;
        }
        //  The id is copied, and the cursor set on it again after the
        //  state's put: both go into this tree, and LMDB's replacement of
        //  a value by one of another size moves the page's nodes.
        memcpy (id, key.mv_data, key.mv_size);
        MDB_val copy = { key.mv_size, id };
        put_rc = kim_lc_referral_state_put (store, &referral, true);
        if (put_rc == 0) {
            int mdb_rc = mdb_cursor_get (cursor, &copy, &value, MDB_SET);
            if (mdb_rc == 0) {
                uint8_t seq [8];
                kim_log_put_be64 (seq, referral.created_seq);
                MDB_val pointer = { sizeof seq, seq };
                mdb_rc = kim_store_cursor_put (store, KIM_DB_REFERRAL, cursor, &copy, &pointer,
                                               MDB_CURRENT);
            }
            if (mdb_rc)
                put_rc = kim_store_error (store, mdb_rc, "lifecycle: moving a referral");
        }
        (*count)++;
    }
    mdb_cursor_close (cursor);
    if (put_rc)
        return put_rc;
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_error (store, rc, "lifecycle: reading the referrals");
    uint8_t version = S_STATE_VERSION;
    return kim_lc_put (store, KIM_DB_META, S_STATE_META, strlen (S_STATE_META), &version, 1,
                       "lifecycle: marking the referrals moved");
}

typedef struct {
    kim_store_t *store;
    size_t count;
} s_index_t;

static int
s_index_one (void *arg, const kim_referral_t *referral)
{
    s_index_t *self = (s_index_t *) arg;
    //  A referral whose case has no record (a store from before case
    //  records) goes under case_seq 0, where a query by case looks too.
    uint64_t case_seq = 0;
    kim_case_t kcase;
    int rc = referral->case_id [0]? kim_lc_case_get (self->store, referral->case_id, &kcase): 0;
    if (rc == 0 && referral->case_id [0])
        case_seq = kcase.created_seq;
    if (rc == -KIM_E_NOT_FOUND || rc == -KIM_E_IO)
        rc = 0;                 //  no case, or one this broker cannot read (logged)
    if (rc == 0)
        rc = kim_lc_index_put (self->store, referral, case_seq);
    self->count++;
    return rc;
}

//  Indexes every referral anew and marks the index complete.
static int
s_index_batch (kim_store_t *store, size_t *count, size_t *bad, uint8_t *was)
{
    int rc = s_marker (store, S_INDEX_META, S_INDEX_VERSION, was);
    if (rc)
        return rc;
    //  Entries of an older form go: the build writes every referral's anew.
    rc = kim_store_empty (store, KIM_DB_REFERRAL_BY);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: emptying the referral index");
    //  Writing to the index (and reading cases) does not disturb the scan.
    s_index_t index = { store, 0 };
    rc = kim_lc_referral_scan (store, s_index_one, &index, bad);
    *count = index.count;
    if (rc)
        return rc;
    uint8_t version = S_INDEX_VERSION;
    return kim_lc_put (store, KIM_DB_META, S_INDEX_META, strlen (S_INDEX_META), &version, 1,
                       "lifecycle: marking the referral index complete");
}

//  Runs a step's batch until it commits (a full map grows, and the whole
//  batch goes again), then has `report` log what it did, if anything.
static int
s_run (kim_store_t *store, s_step_fn *step,
       void (*report) (size_t count, size_t bad, uint8_t was))
{
    for (int attempt = 0; attempt < 64; attempt++) {
        int rc = kim_store_begin (store);
        if (rc)
            return rc;
        size_t count = 0, bad = 0;
        uint8_t was = 0;
        rc = step (store, &count, &bad, &was);
        if (rc) {
            kim_store_abort (store);
            return rc == 1? 0: rc;
        }
        bool retry = false;
        rc = kim_store_commit (store, &retry);
        if (rc == 0 && (count || bad))
            report (count, bad, was);
        if (rc == 0 || !retry)
            return rc;
    }
    return -KIM_E_STORE_FULL;
}

static void
s_split_report (size_t count, size_t bad, uint8_t was)
{
    (void) was;
    zsys_info ("lifecycle: moved %zu referrals' states under the seqs that opened them "
               "(a store from before; done once)%s", count,
               bad? "; some referrals do not decode and stay as they were": "");
}

int
kim_lc_referral_split (kim_store_t *store)
{
    return s_run (store, s_split_batch, s_split_report);
}

static void
s_index_report (size_t count, size_t bad, uint8_t was)
{
    zsys_info ("lifecycle: indexed %zu referrals by party, case and consent (%s; done once)%s",
               count, was? "the index had an older form": "a store from before the index",
               bad? "; some referrals do not decode and stay unindexed": "");
}

int
kim_lc_index_build (kim_store_t *store)
{
    return s_run (store, s_index_batch, s_index_report);
}
