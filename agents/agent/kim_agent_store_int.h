/*  kim_agent_store_int.h — what the agent store's files share: the
    databases, the store's state and the helpers every part uses. The store
    is one module in four files: kim_agent_store.c (opening, the view's
    writes, outbox, the link's transactions, inbox reads),
    kim_agent_store_views.c (the referral, case, consent and report reads),
    kim_agent_store_queues.c (webhook, inbox folder and answer queues) and
    kim_agent_store_payload.c (payloads sealed at rest, and their erasure).
*/
#ifndef KIM_AGENT_STORE_INT_H_INCLUDED
#define KIM_AGENT_STORE_INT_H_INCLUDED

#include <lmdb.h>
#include <pthread.h>

#include "kim_agent.h"
#include "kim_keystore.h"

enum { S_OUTBOX, S_OUTBOX_PAYLOAD, S_QUEUE, S_INBOX, S_INBOX_PAYLOAD, S_REFERRALS, S_META,
       S_PUSH, S_DEAD, S_DROP, S_ANSWERS, S_CASES, S_CONSENTS, S_REPORTS, S_DBS };

struct _kim_agent_store_t {
    MDB_env *env;
    MDB_dbi dbi [S_DBS];
    char org [KIM_ORG_MAX + 1];
    bool push;                          //  new deliveries go to the webhook too
    bool drop;                          //  ... and to the inbox folder
    kim_keystore_t *keys;               //  the payloads' keys (<data>/keys/)
    pthread_mutex_t keys_lock;          //  held around every call into `keys`
    bool keys_lock_made;
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

//  Payloads sealed at rest (kim_agent_store_payload.c). Opens and closes
//  the key store in <dir>/keys/.
int
    kim_agent_store_i_keys_open (kim_agent_store_t *self, const char *dir, size_t map_size,
                                 char *error, size_t error_size);
void
    kim_agent_store_i_keys_close (kim_agent_store_t *self);

//  Seals `data` under a fresh key and puts it as `key` of `db` in `txn`;
//  an empty payload is not stored. Returns 0 or -KIM_E_*.
int
    kim_agent_store_i_payload_put (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key,
                                   const uint8_t *data, size_t size);

//  Opens the payload `key` of `db` into *data (malloc'd, the caller frees).
//  Returns 1, 0 when there is none or its key was erased, or -KIM_E_*.
int
    kim_agent_store_i_payload_get (kim_agent_store_t *self, MDB_txn *txn, int db, MDB_val *key,
                                   uint8_t **data, size_t *size);

//  Erases the payloads `keys` of `db` in `txn`: their keys are deleted and
//  the key store compacted (committed at once), then the sealed bytes are
//  deleted in `txn`. Returns 0 or -KIM_E_*; the caller aborts on failure.
int
    kim_agent_store_i_payload_erase (kim_agent_store_t *self, MDB_txn *txn, int db,
                                     MDB_val *const *keys, size_t count);

//  Seals, once, the payloads a store from before sealing at rest holds.
int
    kim_agent_store_i_payloads_seal (kim_agent_store_t *self);

#endif
