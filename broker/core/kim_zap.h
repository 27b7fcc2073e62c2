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

//  How often at most a refused connection writes a log line: whoever can
//  reach the port can try to connect as often as it likes, and must not be
//  able to grow the log. The first refusal after a quiet period is logged at
//  once; the ones that follow within the interval are counted and
//  summarised in one line when it ends.
#define KIM_ZAP_LOG_MS  60000

//  The metadata property in which the handler also attaches the
//  connection's CURVE public key (Z85) to its messages: the key the
//  connection was admitted with, which a later reload may have rotated out.
#define KIM_ZAP_KEY     "X-Kim-Key"

//  The refusals not yet logged. Owned by the server, zeroed at start.
typedef struct {
    uint64_t logged_ms;             //  when the last line was written (0: never)
    uint64_t pending;               //  refusals since then, not yet logged
    char last_address [64];         //  peer address of the latest of them
    char last_why [64];
} kim_zap_log_t;

//  Binds the ZAP endpoint. Must exist before any CURVE socket binds.
zsock_t *
    kim_zap_new (void);

//  Answers one pending ZAP request against `config`'s registry. Registered
//  keys, revoked ones included, are admitted with their organisation id as
//  User-Id (the server answers a revoked key's commands with REJECT
//  REVOKED); unknown keys and other mechanisms are refused. `now_ms` is a
//  monotonic clock for the log's rate limit. Returns 0, or -1 if the
//  request was malformed (it is then refused).
int
    kim_zap_handle (zsock_t *zap, const kim_config_t *config, kim_zap_log_t *log,
                    uint64_t now_ms);

//  Writes the summary line of refusals counted and not yet logged, once the
//  interval since the last line has passed. Call it now and then.
void
    kim_zap_log_flush (kim_zap_log_t *log, uint64_t now_ms);

#ifdef __cplusplus
}
#endif

#endif
