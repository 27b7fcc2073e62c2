/*  kim_recover.h — `kim-broker --recover`: a stopped broker's store made
    whole without serving.

    With the store's journal (store/journal), a broker that crashed or lost
    its power leaves data.mdb possibly torn until a broker opens the store
    again: it puts the journal's last checkpoint back and replays the
    batches since (kim_store_journal.c). Readers (`kim audit`, `kim-broker
    --backup`) refuse such a folder. This opens the store exactly as the
    broker does, which replays the journal, and closes it cleanly, so that
    the folder can be read, copied or moved without the broker serving.
*/
#ifndef KIM_RECOVER_H_INCLUDED
#define KIM_RECOVER_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kim_config.h"
#include "kim_store.h"

#ifdef __cplusplus
extern "C" {
#endif

//  What a recovery found and did.
typedef struct {
    bool replayed;              //  the journal held batches no broker had replayed
    uint64_t head;              //  the log's last seq once the store is whole
} kim_recover_result_t;

//  The options the broker opens its store with, from its configuration:
//  the server and the recovery alike. `path` receives <data>/store and
//  stays the options' path.
void
    kim_recover_store_options (const kim_config_t *config, char *path, size_t path_size,
                               kim_store_config_t *options);

//  Opens the store of `config`'s data folder as the broker does (replaying
//  a journal it holds) and closes it cleanly. Returns 0, or -1 and fills
//  `error` (no store there, a broker serving on it, a store that cannot be
//  opened).
int
    kim_recover_run (const kim_config_t *config, kim_recover_result_t *result, char *error,
                     size_t error_size);

#ifdef __cplusplus
}
#endif

#endif
