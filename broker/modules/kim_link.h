/*  kim_link.h — links to the brokers of other districts (federation).

    Each configured peer (config section "peers") gets a link: this broker
    dials the peer with a DEALER as a CURVE client under its own broker key,
    opens a session of role peer, publishes its signed directory and forwards
    the mail waiting in the peer's link mailbox, in seq order, until the peer
    has it on disk. What the peer sends comes in on this broker's ROUTER from
    the connection the peer dialled. PROTOCOL.md section 16 is the contract.
*/
#ifndef KIM_LINK_H_INCLUDED
#define KIM_LINK_H_INCLUDED

#include "kim_modules.h"

#ifdef __cplusplus
extern "C" {
#endif

//  The module constructor (kim_modules.c).
int
    kim_link_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size);

//  Signs a PEER_DIRECTORY: sets cmd->sig over the canonical encoding of the
//  command without it. `secret_key` is the broker's Ed25519 secret key.
int
    kim_link_directory_sign (kim_cmd_t *cmd, const uint8_t secret_key [64]);

//  Checks a PEER_DIRECTORY's signature with `sign_key` (Z85 Ed25519 public
//  key). Returns 0 or -KIM_E_BAD_SIGNATURE.
int
    kim_link_directory_verify (const kim_cmd_t *cmd, const char *sign_key);

void
    kim_link_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
