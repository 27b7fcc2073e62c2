/*  kim_server.h — the broker: one thread, one ROUTER socket, one store.

    The server reads every command waiting on its socket (up to batch_max),
    handles session commands at once and gathers SENDs and ACKs into one
    write batch, commits and syncs that batch once (group commit), and only
    then sends the RECEIPTs and the deliveries the batch made possible.
*/
#ifndef KIM_SERVER_H_INCLUDED
#define KIM_SERVER_H_INCLUDED

#include "kim_config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_server_t kim_server_t;

//  Opens the store, loads or makes the broker's keys, binds the endpoints.
//  Takes ownership of the config. Returns NULL with `error` filled in.
kim_server_t *
    kim_server_new (kim_config_t **config_p, char *error, size_t error_size);

void
    kim_server_destroy (kim_server_t **self_p);

//  Serves until SIGINT/SIGTERM. Returns 0 on a clean stop, -1 when the
//  store failed (the broker must stop: it can no longer receipt anything).
int
    kim_server_run (kim_server_t *self);

#ifdef __cplusplus
}
#endif

#endif
