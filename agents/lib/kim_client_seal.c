/*  kim_client_seal.c — sealed payloads and sender signatures for the client
    library (PROTOCOL.md 13.2 and 13.4).

    Kept apart from kim_client.c, which owns the session, so that the
    cryptography reads in one place: the broker must only ever see
    ciphertext, and a header signed here must hash exactly as the broker
    and any later auditor hash it.

    A CURVE key pair is an X25519 key pair, so the organisation's transport
    key doubles as its sealing key: the directory publishes one key, and an
    organisation has one secret to guard. Ed25519 signing keys are separate
    (a signing key must never be used for key agreement).
*/
#include <string.h>

#include <czmq.h>

#include "kim_client_seal.h"

static void
s_why (char *why, size_t why_size, const char *text)
{
    if (why && why_size)
        snprintf (why, why_size, "%s", text);
}

int
kim_seal_init (kim_seal_t *self, const kim_client_config_t *config, char *why, size_t why_size)
{
    memset (self, 0, sizeof *self);
    kim_buf_init (&self->sealed);
    kim_buf_init (&self->opened);
    self->plaintext = config->plaintext;
    if (!zmq_z85_decode (self->box_public, config->public_key)
    ||  !zmq_z85_decode (self->box_secret, config->secret_key)) {
        s_why (why, why_size, "our key pair is not two 40-character Z85 CURVE keys");
        return -KIM_E_KEY;
    }
    if (config->sign_secret_key) {
        uint8_t seed [crypto_sign_SEEDBYTES], public_key [crypto_sign_PUBLICKEYBYTES];
        if (strlen (config->sign_secret_key) != 40
        ||  !zmq_z85_decode (seed, config->sign_secret_key)) {
            s_why (why, why_size, "sign_secret_key is not the 40-character Z85 seed of an "
                   "Ed25519 key (see `kim keygen --sign`)");
            return -KIM_E_KEY;
        }
        crypto_sign_seed_keypair (public_key, self->sign_secret, seed);
        sodium_memzero (seed, sizeof seed);
        self->signing = true;
    }
    self->keys = zhashx_new ();
    self->entries = (kim_dir_entry_t *) calloc (KIM_DIRECTORY_MAX, sizeof (kim_dir_entry_t));
    if (!self->keys || !self->entries) {
        s_why (why, why_size, "out of memory");
        return -KIM_E_NOMEM;
    }
    zhashx_set_destructor ((zhashx_t *) self->keys, (zhashx_destructor_fn *) zstr_free);
    return 0;
}

void
kim_seal_fini (kim_seal_t *self)
{
    zhashx_t *keys = (zhashx_t *) self->keys;
    zhashx_destroy (&keys);
    self->keys = NULL;
    free (self->entries);
    self->entries = NULL;
    if (self->opened.data)
        sodium_memzero (self->opened.data, self->opened.capacity);
    kim_buf_free (&self->sealed);
    kim_buf_free (&self->opened);
    sodium_memzero (self->box_secret, sizeof self->box_secret);
    sodium_memzero (self->sign_secret, sizeof self->sign_secret);
}

void
kim_seal_forget (kim_seal_t *self)
{
    if (self->keys)
        zhashx_purge ((zhashx_t *) self->keys);
}

void
kim_seal_learn (kim_seal_t *self, const kim_dir_entry_t *entries, size_t count)
{
    for (size_t i = 0; i < count && self->keys; i++) {
        uint8_t *key = (uint8_t *) malloc (crypto_box_PUBLICKEYBYTES);
        if (!key)
            return;
        if (!zmq_z85_decode (key, entries [i].public_key)) {
            free (key);
            continue;
        }
        zhashx_update ((zhashx_t *) self->keys, entries [i].id, key);
    }
}

const uint8_t *
kim_seal_key (kim_seal_t *self, const char *org)
{
    return self->keys? (const uint8_t *) zhashx_lookup ((zhashx_t *) self->keys, org): NULL;
}

const char *
kim_seal_target (const kim_msg_t *msg)
{
    //  A FORWARD's payload is for the organisation it forwards to.
    if (msg->type == KIM_TYPE_FORWARD && msg->org [0])
        return msg->org;
    return msg->recipient;
}

int
kim_seal_payload (kim_seal_t *self, const uint8_t *key, const void *payload, size_t size)
{
    kim_buf_reset (&self->sealed);
    if (kim_buf_reserve (&self->sealed, size + crypto_box_SEALBYTES))
        return -KIM_E_NOMEM;
    if (crypto_box_seal (self->sealed.data, (const uint8_t *) payload, size, key) != 0)
        return -KIM_E_KEY;
    self->sealed.size = size + crypto_box_SEALBYTES;
    return 0;
}

int
kim_seal_open (kim_seal_t *self, const uint8_t *payload, size_t size)
{
    kim_buf_reset (&self->opened);
    if (size < crypto_box_SEALBYTES
    ||  kim_buf_reserve (&self->opened, size - crypto_box_SEALBYTES + 1))
        return -1;
    if (crypto_box_seal_open (self->opened.data, payload, size, self->box_public,
                              self->box_secret) != 0)
        return -1;
    self->opened.size = size - crypto_box_SEALBYTES;
    return 0;
}

int
kim_seal_sign (kim_seal_t *self, kim_msg_t *msg, const char *org, const void *payload, size_t size)
{
    //  What the broker will log, minus sig and rule: so the signature
    //  verifies against the logged header as it stands.
    kim_str_copy (msg->sender, sizeof msg->sender, org);
    msg->payload_len = (uint32_t) size;
    msg->has_payload_hash = true;
    crypto_generichash (msg->payload_hash, KIM_HASH_SIZE, (const uint8_t *) payload, size, NULL, 0);
    msg->has_sig = false;
    msg->rule [0] = 0;
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = kim_msg_encode (msg, &buf);
    if (rc == 0) {
        uint8_t bytes [2 * KIM_HASH_SIZE];
        crypto_generichash (bytes, KIM_HASH_SIZE, buf.data, buf.size, NULL, 0);
        memcpy (bytes + KIM_HASH_SIZE, msg->payload_hash, KIM_HASH_SIZE);
        crypto_sign_detached (msg->sig, NULL, bytes, sizeof bytes, self->sign_secret);
        msg->has_sig = true;
    }
    kim_buf_free (&buf);
    return rc;
}
