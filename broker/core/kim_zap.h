/*  kim_zap.h — the broker's ZAP handler: admits only registered CURVE keys.

    ZeroMQ asks the handler on inproc://zeromq.zap.01 about every new
    connection. The handler looks the client's public key up in the registry
    and answers with the organisation id as the ZAP User-Id, which libzmq
    then attaches to every message of that connection: this is how the
    broker knows who sent a message without trusting any header. The handler
    runs inside the server's loop, so it always sees the current registry.
*/
#ifndef KIM_ZAP_H_INCLUDED
#define KIM_ZAP_H_INCLUDED

#include <czmq.h>

#include "kim_config.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Binds the ZAP endpoint. Must exist before any CURVE socket binds.
zsock_t *
    kim_zap_new (void);

//  Answers one pending ZAP request against `config`'s registry.
//  Returns 0, or -1 if the request was malformed (it is then refused).
int
    kim_zap_handle (zsock_t *zap, const kim_config_t *config);

#ifdef __cplusplus
}
#endif

#endif
