/*  kim_modules.h — the broker's modules, in the order their hooks run.

    Each module (life cycle, policy and consent, audit, ...) offers one
    constructor that reads its own config section and returns its hook. The
    server builds them all at start through kim_modules_new(); a module that
    cannot start (a bad policy file, say) stops the broker with an error
    that names the file and key.
*/
#ifndef KIM_MODULES_H_INCLUDED
#define KIM_MODULES_H_INCLUDED

#include "kim_hook.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KIM_MODULES_MAX 8

//  What a module constructor gets.
typedef struct {
    const kim_config_t *config;     //  lives as long as the server
    kim_store_t *store;             //  open; no batch
    const char *keys_dir;           //  <data>/keys: where modules keep key files
    struct _zloop_t *loop;          //  the server's reactor: modules with sockets
                                    //  of their own (links) add readers and timers
} kim_module_env_t;

//  A module constructor: fills `hook` (state included) or returns -KIM_E_*
//  with `error` naming the problem.
typedef int (kim_module_new_fn) (const kim_module_env_t *env, kim_hook_t *hook,
                                 char *error, size_t error_size);

//  Builds every module's hook into `hooks`. Returns how many, or -1.
int
    kim_modules_new (const kim_module_env_t *env, kim_hook_t *hooks, size_t max,
                     char *error, size_t error_size);

//  Validates every module's sections of the configuration without opening
//  anything (kim-broker --check): 0, or -KIM_E_* with `error` naming the key.
int
    kim_modules_check (const kim_config_t *config, char *error, size_t error_size);

//  Destroys hooks made by kim_modules_new.
void
    kim_modules_destroy (kim_hook_t *hooks, size_t count);

#ifdef __cplusplus
}
#endif

#endif
