/*  kim_ceiling_store.h — the least a durable broker with kim's guarantees
    writes for a message, for kim-ceiling-curve --durable (kim_ceiling_store.c
    says what that is and what it leaves out).

    One thread owns a store. Writes go into the open transaction, which the
    first write begins; kim_ceiling_store_commit ends it.
*/
#ifndef KIM_CEILING_STORE_H_INCLUDED
#define KIM_CEILING_STORE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _kim_ceiling_store_t kim_ceiling_store_t;

#define KIM_CEILING_STORE_TREES_MAX 16

//  Opens (creating) an LMDB environment in the folder dir, which must
//  exist. With extra_trees (at most KIM_CEILING_STORE_TREES_MAX) every
//  message also puts one small entry into each of that many more trees:
//  what a broker's indexes cost. Their keys and the message ids follow
//  the messages, or with random_keys fall anywhere in their trees, as
//  ids that agencies make (UUIDs) do. With journal, commits go to a journal
//  in front of LMDB (kim_ceiling_store.c). Returns NULL and prints the cause
//  on stderr on failure.
kim_ceiling_store_t *
    kim_ceiling_store_new (const char *dir, int extra_trees, bool random_keys, bool journal);

void
    kim_ceiling_store_destroy (kim_ceiling_store_t **self_p);

//  Stores one message as a broker must before it may confirm it: its
//  payload hashed, sealed and put apart, a hash-chained log record naming
//  the hash, and the sender's message id. Returns 0 or an LMDB error.
int
    kim_ceiling_store_message (kim_ceiling_store_t *self, uint32_t producer, uint64_t index,
                               const uint8_t *payload, size_t size);

//  Fills the store with `count` messages of `size` bytes each, stored as
//  kim_ceiling_store_message stores them, from a producer that no run
//  uses, committed in large transactions and synced at the end: a store
//  that already holds what a broker's holds after months. Returns 0 or an
//  LMDB error.
int
    kim_ceiling_store_fill (kim_ceiling_store_t *self, uint64_t count, size_t size);

//  Records how far the consumer has acked. Returns 0 or an LMDB error.
int
    kim_ceiling_store_ack (kim_ceiling_store_t *self, uint64_t index);

//  Commits the open transaction, if any: its data pages are flushed, its
//  meta page written without a flush (MDB_NOMETASYNC), so the commit is
//  durable once a later commit or kim_ceiling_store_sync has returned.
//  Returns 0 or an LMDB error.
int
    kim_ceiling_store_commit (kim_ceiling_store_t *self);

//  True when a commit is durable as it returns (a journal in front).
bool
    kim_ceiling_store_durable_at_commit (kim_ceiling_store_t *self);

//  Flushes what the last commit left unflushed. Returns 0 or an LMDB error.
int
    kim_ceiling_store_sync (kim_ceiling_store_t *self);

//  What an error these functions returned means (LMDB's or errno's).
const char *
    kim_ceiling_store_strerror (int rc);

//  Commits so far, and puts so far (the three trees and the ack cursor).
uint64_t
    kim_ceiling_store_commits (kim_ceiling_store_t *self);
uint64_t
    kim_ceiling_store_puts (kim_ceiling_store_t *self);

#endif
