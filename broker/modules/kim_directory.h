/*  kim_directory.h — the key directory (DIRECTORY / DIRECTORY_REPLY) and
    sender signatures (hdr.sig, PROTOCOL.md 13.2 and 13.4).

    Clients seal payloads to the recipient organisation's public key and
    check signatures against its signing key; both come from the broker's
    registry, which this module publishes as it is now (reloads included).
    For organisations with a registered `sign_key`, its `check` hook refuses
    every SEND whose signature is missing or does not verify (BAD_SIGNATURE),
    so the signature kept in the log proves who wrote the message.
*/
#ifndef KIM_DIRECTORY_H_INCLUDED
#define KIM_DIRECTORY_H_INCLUDED

#include "kim_modules.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Module constructor (kim_modules.c).
int
    kim_directory_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size);

//  The 64 bytes a sender signs: BLAKE2b-256 of the canonical header without
//  `sig` and `rule`, then the header's payload_hash. Returns 0 or -KIM_E_*.
int
    kim_directory_signed_bytes (const kim_msg_t *msg, uint8_t out [2 * KIM_HASH_SIZE]);

//  Verifies msg->sig against a Z85 Ed25519 public key. Returns 0 or
//  -KIM_E_BAD_SIGNATURE (also for a malformed key or a missing sig).
int
    kim_directory_verify (const kim_msg_t *msg, const char *sign_key);

void
    kim_directory_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
