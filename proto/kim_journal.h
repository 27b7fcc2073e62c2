/*  kim_journal.h — a journal in front of the store's LMDB file.

    With LMDB alone, a batch is durable once its data pages are flushed and
    then its meta page: two flushes of pages scattered over the file, as
    many as the trees the batch touched. With the journal, the store
    commits each batch into LMDB without a flush (readers see it at once)
    and makes it durable by appending its writes (tree, key, value) to this
    file as one entry and flushing that: one flush of a few sequential
    pages. Now and then the store flushes LMDB's file (a checkpoint) and
    records it here: the generation of the entries that follow it, and a
    copy of LMDB's two meta pages as the flush left them. While a
    checkpoint is the latest, the store keeps a read transaction on it, so
    that LMDB reuses none of its pages: after a power loss, whatever of the
    later commits reached the disk, putting those meta pages back gives the
    checkpoint whole, and replaying the entries of its generation gives
    every batch since.

    Layout: two checkpoint slots (the newer valid one counts; a torn write
    of one leaves the other), then the entries. The file is written whole
    when it is made (zeros, then synced with its folder), so that flushing
    never has to change its size or its extents as well.

    Checkpoint slot: magic "KIMJHDR1", generation (u64 LE), flags (u32 LE:
    1 clean, the store closed with nothing to replay), page size (u32 LE),
    the LMDB file's device and inode (u64 LE each), BLAKE2b-128 of the slot
    with these 16 bytes zero, then the two meta pages.

    Entry: magic (u32 LE "KIMJ"), generation (u64 LE), body length (u32
    LE), BLAKE2b-128 of those 16 bytes and the body, then the body: writes
    [op u8][tree u8][key length u16 LE][value length u32 LE][key][value],
    op 'p' put, 'd' delete, 'e' empty the tree.

    One thread owns a journal (the store's).
*/
#ifndef KIM_JOURNAL_H_INCLUDED
#define KIM_JOURNAL_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_journal_t kim_journal_t;

#define KIM_JOURNAL_NAME        "journal"   //  the file, in the store's folder
#define KIM_JOURNAL_PUT         'p'
#define KIM_JOURNAL_DEL         'd'
#define KIM_JOURNAL_EMPTY       'e'
#define KIM_JOURNAL_PAGE_MAX    65536       //  LMDB pages this large at most
//  Where the entries begin, after the two checkpoint slots
#define KIM_JOURNAL_ENTRIES_AT  ((size_t) 2 * (4096 + 2 * KIM_JOURNAL_PAGE_MAX))

//  The latest checkpoint a journal records.
typedef struct {
    uint64_t generation;        //  of the entries after it
    bool clean;                 //  the store closed after it: nothing to replay
    uint32_t page_size;         //  LMDB's; the meta pages are 2 of them
    uint64_t device, inode;     //  of the LMDB file it is about
    const uint8_t *metas;       //  borrowed until the next call
} kim_journal_checkpoint_t;

//  Opens the journal file `path`, making it `size` bytes long (written
//  ahead and synced with its folder) if it is missing or shorter. Returns
//  NULL and sets *err to -KIM_E_* on failure; the log names the cause.
kim_journal_t *
    kim_journal_new (const char *path, size_t size, int *err);

void
    kim_journal_destroy (kim_journal_t **self_p);

//  Reads the latest checkpoint. Returns 1 (and fills *checkpoint), 0 when
//  the journal records none, or -KIM_E_*. Before new entries, replay its
//  generation (they then go after the last entry replayed) or record a
//  checkpoint.
int
    kim_journal_last (kim_journal_t *self, kim_journal_checkpoint_t *checkpoint);

//  Records a checkpoint (in the slot the latest one is not in), flushes it,
//  and makes entries go from the start again under its generation.
//  Returns 0 or -KIM_E_*.
int
    kim_journal_checkpoint (kim_journal_t *self, const kim_journal_checkpoint_t *checkpoint);

//  Adds a write to the open entry. A put whose value is not known yet
//  (LMDB's MDB_RESERVE: the caller fills it in place later) is added with
//  `late` set; kim_journal_seal asks for it. Returns 0 or -KIM_E_NOMEM.
int
    kim_journal_add (kim_journal_t *self, uint8_t op, uint8_t tree, const void *key,
                     size_t key_size, const void *value, size_t value_size, bool late);

//  Bytes of the open entry's writes so far.
size_t
    kim_journal_pending (kim_journal_t *self);

//  Forgets the open entry, sealed or not.
void
    kim_journal_forget (kim_journal_t *self);

//  Gives the value of a late put: sets *value and *size (borrowed until the
//  next call) and returns 1, or 0 when the key is gone again (a later
//  write of the batch deleted it), or -KIM_E_* on a failure.
typedef int (kim_journal_resolve_fn) (void *arg, uint8_t tree, const void *key, size_t key_size,
                                      const void **value, size_t *size);

//  Builds the open entry, asking `resolve` for late values. Returns 0 (an
//  empty entry too), -KIM_E_STORE_FULL when it does not fit after the
//  entries written since the last checkpoint (checkpoint first, then
//  seal again), or -KIM_E_*.
int
    kim_journal_seal (kim_journal_t *self, kim_journal_resolve_fn *resolve, void *arg);

//  Writes the sealed entry after the last one and flushes the file.
//  Returns 0 (the entry is durable; an empty entry writes nothing) or
//  -KIM_E_IO. The entry is gone either way.
int
    kim_journal_write (kim_journal_t *self);

//  Bytes of entries written since the last checkpoint, and room for them.
size_t
    kim_journal_used (kim_journal_t *self);
size_t
    kim_journal_room (kim_journal_t *self);

//  Calls `fn` for each write of each whole entry of `generation`, in order,
//  from the first. An error of `fn` stops the replay and is returned.
//  Returns 0 and sets *entries and *writes, or -KIM_E_*. New entries then
//  go after the last one replayed.
typedef int (kim_journal_apply_fn) (void *arg, uint8_t op, uint8_t tree, const void *key,
                                    size_t key_size, const void *value, size_t value_size);
int
    kim_journal_replay (kim_journal_t *self, uint64_t generation, kim_journal_apply_fn *fn,
                        void *arg, size_t *entries, size_t *writes);

//  Holds (or lets go of) the journal while its store is being recovered:
//  readers wait for that (kim_journal_unrecovered). Returns 0 or -KIM_E_IO.
int
    kim_journal_hold (kim_journal_t *self, bool hold);

//  Whether the store folder `store_dir` has a journal to replay that no
//  broker is replaying: its last checkpoint is not clean and no broker
//  holds the folder's lock file `lock_name`. LMDB's file may then be torn
//  (a power loss: commits after the checkpoint reached the disk in part),
//  and only the broker's recovery makes it whole. Sets `why` when true.
bool
    kim_journal_unrecovered (const char *store_dir, const char *lock_name, char *why,
                             size_t why_size);

//  Self test
void
    kim_journal_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
