/*  kim_agent_store_int.h — what the agent store's files share: the
    databases, the store's state and the helpers every part uses. The store
    is one module in three files: kim_agent_store.c (opening, the view's
    writes, outbox, the link's transactions, inbox reads),
    kim_agent_store_views.c (the referral, case, consent and report reads)
    and kim_agent_store_queues.c (webhook, inbox folder and answer queues).
*/
#ifndef KIM_AGENT_STORE_INT_H_INCLUDED
#define KIM_AGENT_STORE_INT_H_INCLUDED

#include <lmdb.h>

#include "kim_agent.h"

enum { S_OUTBOX, S_OUTBOX_PAYLOAD, S_QUEUE, S_INBOX, S_INBOX_PAYLOAD, S_REFERRALS, S_META,
       S_PUSH, S_DEAD, S_DROP, S_ANSWERS, S_CASES, S_CONSENTS, S_REPORTS, S_DBS };

struct _kim_agent_store_t {
    MDB_env *env;
    MDB_dbi dbi [S_DBS];
    char org [KIM_ORG_MAX + 1];
    bool push;                          //  new deliveries go to the webhook too
    bool drop;                          //  ... and to the inbox folder
};

struct _kim_agent_txn_t {
    kim_agent_store_t *store;
    MDB_txn *txn;
    int failed;                         //  -KIM_E_* of the first failed write
};

//  Wall-clock ms; 8-byte big-endian keys; an LMDB code as a kim error.
uint64_t
    kim_agent_store_i_now (void);
void
    kim_agent_store_i_key_u64 (uint8_t key [8], uint64_t value);
uint64_t
    kim_agent_store_i_u64_key (const MDB_val *key);
int
    kim_agent_store_i_mdb_code (int rc);

//  Ends a write transaction: commits it (synced) when `rc` is 0, else
//  aborts it. Returns `rc`, or the commit's failure as a kim error.
int
    kim_agent_store_i_end (MDB_txn *txn, int rc);

//  A JSON record of `db` (NULL when there is none or it does not parse);
//  writes one. Both inside the caller's transaction.
json_t *
    kim_agent_store_i_get_json (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key);
int
    kim_agent_store_i_put_json (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key,
                                json_t *record);

//  Takes `record` and returns a copy without the agent's own keys ('_').
json_t *
    kim_agent_store_i_public (json_t *record);

//  A message's header as a JSON object (an empty one if it cannot be had).
json_t *
    kim_agent_store_i_header_json (const kim_msg_t *msg);

#endif
