/*  kim_powercut.h — a power cut, simulated: the preload library
    (kim_powercut_shim.c) records the writes to a broker's LMDB files that
    no sync has made durable yet, and kim_powercut_apply takes some or all
    of them back after the broker was killed, as a power cut could.

    The model: a file's contents at its last successful fsync/fdatasync are
    on the disk; each 4 KiB page written since holds one of the versions it
    went through, from the last durable one to the newest, independently of
    the other pages. A write through an O_DSYNC descriptor is durable when it
    returns. A rename over a watched file is durable once its folder was
    synced; before, a cut brings the replaced file back (as it was then, with
    its own unflushed writes taken back). Other directory entries and file
    sizes are not modelled (a page taken back past the file's old end reads
    as zeros).
*/
#ifndef KIM_POWERCUT_H_INCLUDED
#define KIM_POWERCUT_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#define KIM_POWERCUT_SUFFIX     ".undo"
#define KIM_POWERCUT_RENAMED    ".renamed"      //  a file a rename not yet durable replaced
#define KIM_POWERCUT_MAGIC      0x6b696d75u     //  "kimu"
#define KIM_POWERCUT_DURABLE    1u              //  the write was durable on return
#define KIM_POWERCUT_PAGE       4096

//  One record of an undo file, followed by `old_size` bytes: what
//  [offset, offset + old_size) held before the write of `size` bytes at
//  `offset` (old_size < size where the write went past the file's end).
typedef struct {
    uint32_t magic;
    uint32_t flags;
    uint64_t offset;
    uint32_t size;
    uint32_t old_size;
} kim_powercut_record_t;

//  What a cut took back.
typedef struct {
    uint64_t files;             //  undo files found
    uint64_t writes;            //  writes recorded since the files' last syncs
    uint64_t pages;             //  pages those writes touched
    uint64_t pages_back;        //  pages set back to an older version
    uint64_t renames_back;      //  renames over a watched file taken back
} kim_powercut_stats_t;

//  Cuts the power under `dir` (the folder the shim watched): every page
//  written since its file's last sync is set back to a version it held in
//  between, the oldest one when `worst`, else one drawn with `rng` (a
//  xorshift64* state). Removes the undo files. Returns 0, or -1 with errno
//  and a message on stderr when an undo file cannot be read or applied.
int
    kim_powercut_apply (const char *dir, bool worst, uint64_t *rng,
                        kim_powercut_stats_t *stats);

#endif
