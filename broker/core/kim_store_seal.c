/*  kim_store_seal.c — payloads sealed beside the main thread.

    Sealing a payload at rest (XChaCha20-Poly1305 under its own key) is a
    tenth of what the broker's main thread spends on a message, and it
    needs nothing from the write batch but the bytes: so a payload stored
    as the log's newest record, when the store has a helper thread
    (kim_store_set_work), is copied with its sealed head into a buffer of
    the batch, sealed in place there by the helper, and put into the tree
    when the batch commits. Any other touch of the payload tree in the
    batch (a read that the recent copies do not serve, an erasure, a payload
    that is not the newest record's) first puts what is waiting, so that
    the tree is as it would have been; an abandoned batch forgets them.

    The entries and the buffer never move while a job may run on them: the
    buffer is S_SEALS_BYTES, made once, and a batch that fills it or the
    S_SEALS_MAX entries puts what it has and starts again.

    Part of the store module (kim_store_int.h).
*/
#include <czmq.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim_store_int.h"

#define S_SEALS_BYTES   ((size_t) 4 << 20)
#define S_SEALS_MAX     1024

typedef struct {
    uint64_t seq;
    uint8_t *value;             //  in the buffer: [head][nonce][plaintext, then its tag]
    size_t value_size;
    size_t head;
    uint8_t secret [KIM_KEYSTORE_KEY];
} s_seal_t;

struct _kim_store_seals_t {
    uint8_t *buffer;
    size_t used;
    s_seal_t entries [S_SEALS_MAX];
    size_t count;
    uint64_t ticket;            //  of the last job posted
};

void
kim_store_i_seal (uint8_t *value, size_t head, const uint8_t *plain, size_t size, uint64_t seq,
                  const uint8_t secret [KIM_KEYSTORE_KEY])
{
    uint8_t aad [8];
    kim_log_put_be64 (aad, seq);
    crypto_aead_xchacha20poly1305_ietf_encrypt (value + head + S_SEALED_NONCE, NULL, plain,
                                                size, aad, sizeof aad, NULL, value + head,
                                                secret);
}

//  The helper's job: seals an entry in place, then forgets its key.
static void
s_seal_job (void *arg)
{
    s_seal_t *seal = (s_seal_t *) arg;
    size_t size = seal->value_size - seal->head - S_SEALED_NONCE - S_SEALED_TAG;
    kim_store_i_seal (seal->value, seal->head, seal->value + seal->head + S_SEALED_NONCE,
                      size, seal->seq, seal->secret);
    sodium_memzero (seal->secret, sizeof seal->secret);
}

bool
kim_store_i_seal_defers (kim_store_t *self, uint64_t seq, size_t value_size)
{
    return self->work && self->txn && seq == self->batch_head
        && value_size <= S_SEALS_BYTES / 4
        && (!self->seals || self->seals->count == 0
            || seq > self->seals->entries [self->seals->count - 1].seq);
}

uint8_t *
kim_store_i_seal_reserve (kim_store_t *self, uint64_t seq, size_t head, size_t value_size,
                          uint8_t **secret)
{
    if (!self->seals) {
        //  The entries hold payload keys: in locked memory, as the pool's
        self->seals = (kim_store_seals_t *) sodium_malloc (sizeof *self->seals);
        if (self->seals) {
            memset (self->seals, 0, sizeof *self->seals);
            self->seals->buffer = (uint8_t *) malloc (S_SEALS_BYTES);
        }
        if (!self->seals || !self->seals->buffer) {
            kim_store_i_seals_free (self);
            return NULL;
        }
    }
    kim_store_seals_t *seals = self->seals;
    if ((seals->count == S_SEALS_MAX || S_SEALS_BYTES - seals->used < value_size)
    &&  kim_store_i_seals_write (self))
        return NULL;
    s_seal_t *seal = &seals->entries [seals->count];
    seal->seq = seq;
    seal->value = seals->buffer + seals->used;
    seal->value_size = value_size;
    seal->head = head;
    *secret = seal->secret;
    return seal->value;
}

void
kim_store_i_seal_post (kim_store_t *self)
{
    kim_store_seals_t *seals = self->seals;
    s_seal_t *seal = &seals->entries [seals->count++];
    seals->used += seal->value_size;
    seals->ticket = kim_work_post (self->work, s_seal_job, seal);
}

int
kim_store_i_seals_write (kim_store_t *self)
{
    kim_store_seals_t *seals = self->seals;
    if (!seals || seals->count == 0)
        return 0;
    kim_work_wait (self->work, seals->ticket);
    int rc = 0;
    for (size_t i = 0; i < seals->count && rc == 0; i++) {
        s_seal_t *seal = &seals->entries [i];
        rc = kim_store_i_put_seq (self, KIM_DB_PAYLOAD, seal->seq, seal->value,
                                  seal->value_size);
        if (rc)
            rc = kim_store_i_write_error (self, rc, "storing a payload");
    }
    seals->count = 0;
    seals->used = 0;
    return rc;
}

void
kim_store_i_seals_drop (kim_store_t *self)
{
    kim_store_seals_t *seals = self->seals;
    if (!seals || seals->count == 0)
        return;
    kim_work_wait (self->work, seals->ticket);
    seals->count = 0;
    seals->used = 0;
}

void
kim_store_i_seals_free (kim_store_t *self)
{
    kim_store_i_seals_drop (self);
    if (self->seals) {
        free (self->seals->buffer);
        sodium_free (self->seals);
        self->seals = NULL;
    }
}

int
kim_store_set_work (kim_store_t *self, kim_work_t *work)
{
    if (self->txn)
        return -KIM_E_BUSY;
    self->work = work;
    return 0;
}
