/*  kim_store_chain.c — the log's hash chain computed beside the main thread.

    Every record's hash covers the hash of the record before it, so the
    chain is one sequential computation: a tenth of what the broker's main
    thread spends on a message (three records a delivered message). It
    needs nothing of the write batch but the records' bytes, so when the
    store has a helper thread (kim_store_set_work), a record appended in a
    batch is built in a buffer of the batch with its hash left open, the
    helper hashes the records in order as they come, and the batch puts
    them into the log tree when it commits. Anything that needs them
    earlier waits for the rest of the chain itself: a read of the log tree
    in the batch puts them first, the batch's head hash (a checkpoint
    signs it) completes the chain, and an abandoned batch forgets them.

    Whoever hashes (the helper, or the main thread when it waits) does so
    under one lock and from where the last one stopped, so the order holds
    however the jobs are run. The entries and the buffer never move while
    a job may run on them: a batch that fills them puts what it has and
    starts again.

    Part of the store module (kim_store_int.h).
*/
#include <czmq.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim_store_int.h"

#define S_CHAIN_BYTES   ((size_t) 4 << 20)
#define S_CHAIN_MAX     4096
//  A job is posted for every few records: each hashes all that wait
#define S_CHAIN_EVERY   4

typedef struct {
    uint64_t seq;
    uint64_t time_ms;
    uint8_t kind;
    uint8_t *value;             //  in the buffer: the record, its hash still open
    size_t value_size;
} s_link_t;

struct _kim_store_chain_t {
    uint8_t *buffer;
    size_t used;
    s_link_t entries [S_CHAIN_MAX];
    size_t count;               //  entries built (the main thread's)
    size_t unposted;            //  entries since the last job posted
    uint64_t ticket;            //  of the last job posted
    atomic_size_t ready;        //  entries the helper may hash
    pthread_mutex_t lock;
    size_t hashed;              //  under lock: entries hashed, in order
    uint8_t prev [KIM_HASH_SIZE];   //  under lock: the last hashed record's hash
};

//  Hashes every entry that is ready and not yet hashed, in order.
static void
s_chain_job (void *arg)
{
    kim_store_chain_t *chain = (kim_store_chain_t *) arg;
    pthread_mutex_lock (&chain->lock);
    size_t ready = atomic_load_explicit (&chain->ready, memory_order_acquire);
    for (; chain->hashed < ready; chain->hashed++) {
        s_link_t *link = &chain->entries [chain->hashed];
        uint8_t *hash = link->value + KIM_LOG_RECORD_FIXED - KIM_HASH_SIZE;
        kim_log_record_hash (chain->prev, link->kind, link->seq, link->time_ms,
                             link->value + KIM_LOG_RECORD_FIXED,
                             link->value_size - KIM_LOG_RECORD_FIXED, hash);
        memcpy (chain->prev, hash, KIM_HASH_SIZE);
    }
    pthread_mutex_unlock (&chain->lock);
}

bool
kim_store_i_chain_defers (kim_store_t *self, size_t value_size)
{
    return self->work && self->txn && value_size <= S_CHAIN_BYTES / 4;
}

int
kim_store_i_chain_reserve (kim_store_t *self, uint64_t seq, uint8_t kind, uint64_t time_ms,
                           size_t value_size, uint8_t **value)
{
    *value = NULL;
    if (!self->chain) {
        kim_store_chain_t *chain = (kim_store_chain_t *) calloc (1, sizeof *chain);
        if (chain)
            chain->buffer = (uint8_t *) malloc (S_CHAIN_BYTES);
        if (!chain || !chain->buffer) {
            free (chain);
            return 0;
        }
        pthread_mutex_init (&chain->lock, NULL);
        self->chain = chain;
    }
    kim_store_chain_t *chain = self->chain;
    if (chain->count == S_CHAIN_MAX || S_CHAIN_BYTES - chain->used < value_size) {
        int rc = kim_store_i_chain_write (self);
        if (rc)
            return rc;
    }
    if (chain->count == 0) {
        pthread_mutex_lock (&chain->lock);
        memcpy (chain->prev, self->batch_hash, KIM_HASH_SIZE);
        pthread_mutex_unlock (&chain->lock);
    }
    s_link_t *link = &chain->entries [chain->count];
    link->seq = seq;
    link->time_ms = time_ms;
    link->kind = kind;
    link->value = chain->buffer + chain->used;
    link->value_size = value_size;
    *value = link->value;
    return 0;
}

void
kim_store_i_chain_post (kim_store_t *self)
{
    kim_store_chain_t *chain = self->chain;
    chain->used += chain->entries [chain->count].value_size;
    chain->count++;
    atomic_store_explicit (&chain->ready, chain->count, memory_order_release);
    if (++chain->unposted == S_CHAIN_EVERY) {
        chain->unposted = 0;
        chain->ticket = kim_work_post (self->work, s_chain_job, chain);
    }
}

//  Completes the chain (the jobs posted, then the rest here)
static void
s_chain_complete (kim_store_t *self)
{
    kim_store_chain_t *chain = self->chain;
    kim_work_wait (self->work, chain->ticket);
    s_chain_job (chain);
    pthread_mutex_lock (&chain->lock);
    memcpy (self->batch_hash, chain->prev, KIM_HASH_SIZE);
    pthread_mutex_unlock (&chain->lock);
}

void
kim_store_i_chain_hash (kim_store_t *self)
{
    if (self->chain && self->chain->count)
        s_chain_complete (self);
}

//  Forgets the entries; the caller has waited for the jobs
static void
s_chain_reset (kim_store_chain_t *chain)
{
    pthread_mutex_lock (&chain->lock);
    chain->count = chain->unposted = chain->used = chain->hashed = 0;
    atomic_store_explicit (&chain->ready, 0, memory_order_relaxed);
    pthread_mutex_unlock (&chain->lock);
}

int
kim_store_i_chain_write (kim_store_t *self)
{
    kim_store_chain_t *chain = self->chain;
    if (!chain || chain->count == 0)
        return 0;
    s_chain_complete (self);
    int rc = 0;
    for (size_t i = 0; i < chain->count && rc == 0; i++) {
        s_link_t *link = &chain->entries [i];
        rc = kim_store_i_put_seq (self, KIM_DB_LOG, link->seq, link->value, link->value_size);
        if (rc == MDB_KEYEXIST) {
            //  The log holds a seq beyond our head: someone wrote behind our back
            zsys_error ("kim_store: %s: log already holds seq %" PRIu64 "; store fails closed",
                        self->path, link->seq);
            self->failed = true;
            rc = -KIM_E_STORE_FAILED;
        }
        else
        if (rc)
            rc = kim_store_i_write_error (self, rc, "appending a record");
    }
    s_chain_reset (chain);
    return rc;
}

void
kim_store_i_chain_drop (kim_store_t *self)
{
    kim_store_chain_t *chain = self->chain;
    if (!chain || chain->count == 0)
        return;
    kim_work_wait (self->work, chain->ticket);
    s_chain_reset (chain);
}

void
kim_store_i_chain_free (kim_store_t *self)
{
    kim_store_i_chain_drop (self);
    if (self->chain) {
        pthread_mutex_destroy (&self->chain->lock);
        free (self->chain->buffer);
        free (self->chain);
        self->chain = NULL;
    }
}
