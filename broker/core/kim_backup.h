/*  kim_backup.h — a hot, consistent, compacted copy of a broker's data folder.

    `kim-broker --backup DIR` calls this while the broker serves. The store is
    copied with LMDB's mdb_env_copy2 (MDB_CP_COMPACT) from a second, read-only
    environment handle: the copy is one read snapshot, so it holds exactly the
    records committed before that snapshot began, and it never blocks the
    broker's writer. The rest of the data folder (the broker's keys) is copied
    file by file. The copy is built under DIR.partial-PID and renamed to DIR
    only when complete, so DIR either is a whole backup or does not exist.

    Restoring is copying DIR back as the data folder of a stopped broker.
*/
#ifndef KIM_BACKUP_H_INCLUDED
#define KIM_BACKUP_H_INCLUDED

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  What a finished backup holds.
typedef struct {
    uint64_t head;              //  last log sequence number in the copy
    uint64_t head_before;       //  the live log's head just before the copy began
    uint64_t store_bytes;       //  size of the copied store file
    uint64_t live_bytes;        //  size of the live store file
    size_t files;               //  other files copied (keys)
} kim_backup_result_t;

//  Copies the data folder `data` (its store/ and every other regular file
//  and folder in it) to `target`, which must not exist. Returns 0, or -1 and
//  fills `error`; on failure nothing is left at `target`.
int
    kim_backup_run (const char *data, const char *target, kim_backup_result_t *result,
                    char *error, size_t error_size);

#ifdef __cplusplus
}
#endif

#endif
