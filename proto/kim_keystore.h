/*  kim_keystore.h — the keys that open payloads at rest (crypto-shredding).

    Every payload the broker's store (kim_store) and kim-agent's store keep
    is encrypted at rest under a key of its own; the keys live here, in a
    small LMDB environment of their own (<store>/keys/). Erasing a payload deletes its key, and after a batch
    that deleted keys the store compacts this environment into a fresh file
    (copy, fsync, rename, fsync the folder), so that the deleted keys' bytes
    are no longer in any file. What stays of the payload in the main store's
    freed pages is then noise that nothing can open.

    Thread and lifetime rules: one thread at a time (the agent, whose
    threads share one, holds a lock around every call). Writes go into a
    batch that starts with the first put or delete and ends with commit or
    abort; the owning store commits it before its own batch, so that no
    payload is ever on disk without its key.
*/
#ifndef KIM_KEYSTORE_H_INCLUDED
#define KIM_KEYSTORE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_keystore_t kim_keystore_t;

#define KIM_KEYSTORE_DIR    "keys"      //  folder inside the store's folder
#define KIM_KEYSTORE_KEY    32          //  bytes of one payload key

//  Opens (a writer creates) the key store in `path` (the folder itself).
//  A reader on a store without one gets NULL and *err = -KIM_E_NOT_FOUND.
kim_keystore_t *
    kim_keystore_new (const char *path, bool read_only, bool nosync, size_t map_size,
                      int *err);

void
    kim_keystore_destroy (kim_keystore_t **self_p);

//  Stores `key` for payload `seq` in the open batch (started if need be);
//  an older key of that seq is replaced. Returns 0 or -KIM_E_*.
int
    kim_keystore_put (kim_keystore_t *self, uint64_t seq, const uint8_t key [KIM_KEYSTORE_KEY]);

//  Deletes the key of payload `seq`. Returns 1 if there was one, 0 if not,
//  or -KIM_E_*. A deletion marks the store for compaction.
int
    kim_keystore_del (kim_keystore_t *self, uint64_t seq);

//  Copies the key of payload `seq` into `key` (the open batch's view when
//  one is open). Returns 1 if found, 0 if not, or -KIM_E_*.
int
    kim_keystore_get (kim_keystore_t *self, uint64_t seq, uint8_t key [KIM_KEYSTORE_KEY]);

//  The highest slot that holds a key, committed (outside a batch) or in
//  the open batch. Returns 1 and sets *seq, 0 when there is none, or -KIM_E_*.
int
    kim_keystore_last (kim_keystore_t *self, uint64_t *seq);

//  Commits (and syncs unless nosync) the open batch; no batch: 0. On
//  failure the batch is lost and -KIM_E_* returned.
int
    kim_keystore_commit (kim_keystore_t *self);

void
    kim_keystore_abort (kim_keystore_t *self);

//  True when keys were deleted since the last compaction.
bool
    kim_keystore_dirty (kim_keystore_t *self);

//  Rewrites the key store into a fresh file that holds only live keys and
//  replaces the old one (temp file, fsync, rename, fsync folder, reopen).
//  Outside a batch. Returns 0 or -KIM_E_*; on failure the store stays dirty
//  (the next call tries again) and usable, unless reopening failed.
int
    kim_keystore_compact (kim_keystore_t *self);

//  Another process that opens the key store's LMDB files itself (a backup)
//  holds the shared guard of folder `path` while it opens them; compaction
//  swaps the files under the exclusive one. Returns a file descriptor to
//  give to kim_keystore_unguard, or -1.
int
    kim_keystore_guard (const char *path, bool exclusive);
void
    kim_keystore_unguard (int fd);

#ifdef __cplusplus
}
#endif

#endif
