/*  kim_keys.h — the broker's long-term CURVE key pair.

    The key pair lives in <data>/keys/broker.cert (public, shareable) and
    broker.cert_secret (mode 0600) in czmq's certificate format. The embedded
    default makes them on first start, so that no endpoint is ever plaintext.
    A secret file that others can read is refused: a leaked broker key lets
    anyone impersonate the broker to every agency.
*/
#ifndef KIM_KEYS_H_INCLUDED
#define KIM_KEYS_H_INCLUDED

#include <czmq.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Loads the broker's certificate from `dir`, creating the folder (0700) and
//  a new key pair when none exists. Returns NULL and fills `error` when the
//  secret file is readable by group or others, unreadable or malformed.
zcert_t *
    kim_keys_broker_cert (const char *dir, const char *name, char *error, size_t error_size);

//  Checks that a secret key file is private to its owner (no group/other bits).
bool
    kim_keys_private (const char *path);

#ifdef __cplusplus
}
#endif

#endif
