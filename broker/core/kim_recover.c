/*  kim_recover.c — `kim-broker --recover` (see kim_recover.h).
*/
#include <czmq.h>
#include <limits.h>

#include "kim/kim_error.h"
#include "kim_journal.h"
#include "kim_recover.h"

void
kim_recover_store_options (const kim_config_t *config, char *path, size_t path_size,
                           kim_store_config_t *options)
{
    snprintf (path, path_size, "%s/store", config->data);
    memset (options, 0, sizeof *options);
    options->path = path;
    options->map_size = config->map_size;
    options->map_max = config->map_max;
    options->nosync = !config->sync;
    options->journal = config->journal;
    options->dedup_window_ms = config->dedup_window_ms;
}

int
kim_recover_run (const kim_config_t *config, kim_recover_result_t *result, char *error,
                 size_t error_size)
{
    memset (result, 0, sizeof *result);
    char path [PATH_MAX];
    kim_store_config_t options;
    kim_recover_store_options (config, path, sizeof path, &options);
    char data [PATH_MAX + 16];
    snprintf (data, sizeof data, "%s/data.mdb", path);
    if (!zsys_file_exists (data)) {
        snprintf (error, error_size, "%s: no store here (is %s the broker's data folder?)",
                  path, config->data);
        return -1;
    }
    //  Whether a replay is due, as readers see it (they wait for a broker
    //  that is replaying); a serving broker is refused by the store's lock
    char why [512];
    result->replayed = kim_journal_unrecovered (path, KIM_STORE_LOCK_NAME, why, sizeof why);
    int rc = 0;
    kim_store_t *store = kim_store_new (&options, &rc);
    if (!store) {
        if (rc == -KIM_E_BUSY)
            snprintf (error, error_size, "%s: a broker serves on this folder (it holds "
                      "store/" KIM_STORE_LOCK_NAME "): it has replayed the journal itself",
                      path);
        else
            snprintf (error, error_size, "%s: cannot open the store: %s (the log says why)",
                      path, kim_strerror (rc));
        return -1;
    }
    result->head = kim_store_head (store);
    kim_store_destroy (&store);
    return 0;
}
