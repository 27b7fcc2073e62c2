/*  kim_lc_reindex.c — builds the referral index of a store written before
    it existed, or before its present form (part of the life-cycle module;
    see kim_lifecycle_int.h).

    META "index/referral_by" holds the form the index has: absent in a
    store from before the index, 1 for its first form (ids in the party
    keys), S_INDEX_VERSION for the present one (seqs). At start, a store
    without the present form gets its index emptied and built again from
    the referrals, in one batch, once; the broker logs it. A referral's
    party entries need its case's created_seq, so this reads cases too:
    kim_lifecycle.c -> kim_lc_reindex.c -> kim_case.c -> kim_lc_store.c.
*/
#include <czmq.h>

#include "kim_lifecycle_int.h"

#define S_INDEX_META        "index/referral_by"
#define S_INDEX_VERSION     2

//  One pass of the build, inside a batch: indexes every referral and marks
//  the index complete. Sets *count to the referrals indexed, *bad to those
//  that do not decode (they stay unindexed, as they stay unread). Returns
//  1 when the index has its present form already.
static int
s_build_batch (kim_store_t *store, size_t *count, size_t *bad, uint8_t *was)
{
    MDB_txn *txn = kim_store_txn (store);
    MDB_val meta_key = { strlen (S_INDEX_META), (void *) S_INDEX_META }, value;
    int rc = mdb_get (txn, kim_store_dbi (store, KIM_DB_META), &meta_key, &value);
    *was = 0;
    if (rc == 0 && value.mv_size == 1) {
        *was = *(const uint8_t *) value.mv_data;
        if (*was == S_INDEX_VERSION)
            return 1;
    }
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_error (store, rc, "lifecycle: reading the index's version");
    //  Entries of an older form go: the build writes every referral's anew.
    rc = mdb_drop (txn, kim_store_dbi (store, KIM_DB_REFERRAL_BY), 0);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: emptying the referral index");
    *count = *bad = 0;
    MDB_cursor *cursor;
    rc = mdb_cursor_open (txn, kim_store_dbi (store, KIM_DB_REFERRAL), &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: opening the referrals");
    //  Writing to the index (and reading cases) does not disturb a cursor
    //  on the referrals.
    MDB_val key;
    int put_rc = 0;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_FIRST); rc == 0 && put_rc == 0;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        kim_referral_t referral;
        if (kim_lc_referral_decode (value.mv_data, value.mv_size, &referral)) {
            (*bad)++;
            continue;
        }
        //  A referral whose case has no record (a store from before case
        //  records) goes under case_seq 0, where a query by case looks too.
        uint64_t case_seq = 0;
        kim_case_t kcase;
        put_rc = referral.case_id [0]? kim_lc_case_get (store, referral.case_id, &kcase): 0;
        if (put_rc == 0 && referral.case_id [0])
            case_seq = kcase.created_seq;
        if (put_rc == -KIM_E_NOT_FOUND || put_rc == -KIM_E_IO)
            put_rc = 0;         //  no case, or one this broker cannot read (logged)
        if (put_rc == 0)
            put_rc = kim_lc_index_put (store, &referral, case_seq);
        (*count)++;
    }
    mdb_cursor_close (cursor);
    if (put_rc)
        return put_rc;
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_error (store, rc, "lifecycle: reading the referrals");
    uint8_t version = S_INDEX_VERSION;
    return kim_lc_put (store, KIM_DB_META, S_INDEX_META, strlen (S_INDEX_META), &version, 1,
                       "lifecycle: marking the referral index complete");
}

int
kim_lc_index_build (kim_store_t *store)
{
    for (int attempt = 0; attempt < 64; attempt++) {
        int rc = kim_store_begin (store);
        if (rc)
            return rc;
        size_t count = 0, bad = 0;
        uint8_t was = 0;
        rc = s_build_batch (store, &count, &bad, &was);
        if (rc) {
            kim_store_abort (store);
            return rc == 1? 0: rc;
        }
        bool retry = false;
        rc = kim_store_commit (store, &retry);
        if (rc == 0) {
            if (count || bad)
                zsys_info ("lifecycle: indexed %zu referrals by party, case and consent "
                           "(%s; done once)%s", count,
                           was? "the index had an older form": "a store from before the index",
                           bad? "; some referrals do not decode and stay unindexed": "");
            return 0;
        }
        if (!retry)
            return rc;
        //  The map grew: the whole batch again.
    }
    return -KIM_E_STORE_FULL;
}
