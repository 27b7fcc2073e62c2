/*  kim_client_seal.h — private to the client library: the cryptography of
    sealed payloads and sender signatures (PROTOCOL.md 13.2, 13.4), and the
    per-session cache of recipients' sealing keys.
*/
#ifndef KIM_CLIENT_SEAL_H_INCLUDED
#define KIM_CLIENT_SEAL_H_INCLUDED

#include <sodium.h>

#include "kim/kim_client.h"

typedef struct {
    bool plaintext;                             //  sealing off
    uint8_t box_public [crypto_box_PUBLICKEYBYTES];     //  our CURVE keys = X25519
    uint8_t box_secret [crypto_box_SECRETKEYBYTES];
    bool signing;
    uint8_t sign_secret [crypto_sign_SECRETKEYBYTES];
    void *keys;                                 //  zhashx: org id -> 32-byte X25519 key
    kim_dir_entry_t *entries;                   //  last DIRECTORY_REPLY (KIM_DIRECTORY_MAX)
    kim_buf_t sealed;                           //  a SEND's sealed payload
    kim_buf_t opened;                           //  the lent delivery's plaintext
} kim_seal_t;

//  Sets up from the config. Returns 0, or -KIM_E_KEY with `why` filled.
int
    kim_seal_init (kim_seal_t *self, const kim_client_config_t *config, char *why, size_t why_size);
void
    kim_seal_fini (kim_seal_t *self);

//  Forgets cached recipient keys (a new session: keys may have rotated).
void
    kim_seal_forget (kim_seal_t *self);

//  Remembers the sealing keys of directory entries.
void
    kim_seal_learn (kim_seal_t *self, const kim_dir_entry_t *entries, size_t count);

//  The X25519 key of `org` if cached, else NULL.
const uint8_t *
    kim_seal_key (kim_seal_t *self, const char *org);

//  Which organisation a payload of `msg` is sealed to ("" for none).
const char *
    kim_seal_target (const kim_msg_t *msg);

//  Seals `size` bytes to `key` into self->sealed. Returns 0 or -KIM_E_NOMEM.
int
    kim_seal_payload (kim_seal_t *self, const uint8_t *key, const void *payload, size_t size);

//  Opens a sealed payload into self->opened. Returns 0 or -1.
int
    kim_seal_open (kim_seal_t *self, const uint8_t *payload, size_t size);

//  Signs `msg` (sets sender = org, payload_len, payload_hash, sig) for the
//  payload as it goes on the wire. Returns 0 or -KIM_E_*.
int
    kim_seal_sign (kim_seal_t *self, kim_msg_t *msg, const char *org,
                   const void *payload, size_t size);

#endif
