/*  kim_powercut.c — takes back what a power cut could take back, from the
    undo files kim_powercut_shim.c wrote (the model is in kim_powercut.h).

    Each record holds what a write overwrote. For every page, the records
    that touched it since the last sync are that page's history: putting
    back the old bytes of its last k writes, newest first, leaves the page
    as it was before them. A write marked durable bounds how far back a page
    can go.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim_itest.h"
#include "kim_powercut.h"

typedef struct {
    kim_powercut_record_t head;
    const uint8_t *old;         //  head.old_size bytes inside the undo file's image
} s_record_t;

typedef struct {
    uint64_t page;
    size_t record;              //  index in write order
} s_touch_t;

static int
s_compare_touch (const void *a, const void *b)
{
    const s_touch_t *x = (const s_touch_t *) a, *y = (const s_touch_t *) b;
    if (x->page != y->page)
        return x->page < y->page? -1: 1;
    return x->record < y->record? -1: x->record > y->record;
}

static int
s_fail (const char *path, const char *what)
{
    int saved = errno;
    fprintf (stderr, "kim_powercut: %s: %s: %s\n", path, what,
             saved? strerror (saved): "bad record");
    errno = saved? saved: EINVAL;
    return -1;
}

//  Reads a whole file into memory; *size set. NULL on failure.
static uint8_t *
s_slurp (const char *path, size_t *size)
{
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat info;
    uint8_t *data = NULL;
    if (fstat (fd, &info) == 0 && (data = (uint8_t *) malloc ((size_t) info.st_size + 1))) {
        size_t have = 0;
        while (have < (size_t) info.st_size) {
            ssize_t got = read (fd, data + have, (size_t) info.st_size - have);
            if (got <= 0)
                break;
            have += (size_t) got;
        }
        if (have == (size_t) info.st_size)
            *size = have;
        else {
            free (data);
            data = NULL;
        }
    }
    close (fd);
    return data;
}

//  Puts back what record `r` overwrote inside page `page` of `fd`.
static int
s_undo (int fd, const s_record_t *r, uint64_t page)
{
    uint64_t from = page * KIM_POWERCUT_PAGE, to = from + KIM_POWERCUT_PAGE;
    uint64_t start = r->head.offset > from? r->head.offset: from;
    uint64_t end = r->head.offset + r->head.size < to? r->head.offset + r->head.size: to;
    static const uint8_t zeros [KIM_POWERCUT_PAGE];
    for (uint64_t at = start; at < end; ) {
        uint64_t in_record = at - r->head.offset;
        const uint8_t *bytes;
        size_t count;
        if (in_record < r->head.old_size) {
            bytes = r->old + in_record;
            count = (size_t) ((r->head.old_size - in_record) < end - at
                              ? r->head.old_size - in_record: end - at);
        }
        else {
            bytes = zeros;      //  the write went past the file's end: nothing was there
            count = (size_t) (end - at);
        }
        if (pwrite (fd, bytes, count, (off_t) at) != (ssize_t) count)
            return -1;
        at += count;
    }
    return 0;
}

//  Applies one undo file to the data file beside it.
static int
s_apply_file (const char *undo_path, bool worst, uint64_t *rng, kim_powercut_stats_t *stats)
{
    char data_path [PATH_MAX];
    size_t length = strlen (undo_path) - strlen (KIM_POWERCUT_SUFFIX);
    if (length >= sizeof data_path)
        return s_fail (undo_path, "path too long");
    memcpy (data_path, undo_path, length);
    data_path [length] = 0;

    size_t size = 0;
    uint8_t *image = s_slurp (undo_path, &size);
    if (!image)
        return s_fail (undo_path, "reading the undo file");
    //  Parse the records; a torn last record (the broker killed inside a
    //  write of the undo file) was never followed by its data write.
    size_t record_max = size / sizeof (kim_powercut_record_t) + 1, count = 0;
    s_record_t *records = (s_record_t *) calloc (record_max, sizeof (s_record_t));
    size_t touch_max = 0;
    for (size_t at = 0; records && at + sizeof (kim_powercut_record_t) <= size; ) {
        kim_powercut_record_t head;
        memcpy (&head, image + at, sizeof head);
        if (head.magic != KIM_POWERCUT_MAGIC || head.old_size > head.size) {
            free (records);
            free (image);
            errno = 0;
            return s_fail (undo_path, "not an undo file");
        }
        if (at + sizeof head + head.old_size > size)
            break;
        records [count].head = head;
        records [count].old = image + at + sizeof head;
        if (head.size)
            touch_max += (size_t) ((head.offset + head.size - 1) / KIM_POWERCUT_PAGE
                                 - head.offset / KIM_POWERCUT_PAGE + 1);
        count++;
        at += sizeof head + head.old_size;
    }
    s_touch_t *touches = (s_touch_t *) malloc ((touch_max + 1) * sizeof (s_touch_t));
    if (!records || !touches) {
        free (records);
        free (touches);
        free (image);
        return s_fail (undo_path, "out of memory");
    }
    size_t touch_count = 0;
    for (size_t i = 0; i < count; i++) {
        const kim_powercut_record_t *head = &records [i].head;
        if (!head->size)
            continue;
        for (uint64_t page = head->offset / KIM_POWERCUT_PAGE;
             page <= (head->offset + head->size - 1) / KIM_POWERCUT_PAGE; page++)
            touches [touch_count++] = (s_touch_t) { page, i };
    }
    qsort (touches, touch_count, sizeof (s_touch_t), s_compare_touch);

    int rc = 0;
    int fd = open (data_path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        rc = s_fail (data_path, "opening the data file");
    for (size_t first = 0; rc == 0 && first < touch_count; ) {
        //  touches [first, last) are one page's writes, oldest first
        size_t last = first;
        while (last < touch_count && touches [last].page == touches [first].page)
            last++;
        size_t writes = last - first, floor = 0;
        for (size_t i = first; i < last; i++)
            if (records [touches [i].record].head.flags & KIM_POWERCUT_DURABLE)
                floor = i - first + 1;
        //  Keep the page's first `keep` writes, floor <= keep <= writes.
        size_t keep = worst? floor: floor + (size_t) (s_itest_rand (rng) % (writes - floor + 1));
        for (size_t i = last; rc == 0 && i > first + keep; i--)
            if (s_undo (fd, &records [touches [i - 1].record], touches [first].page))
                rc = s_fail (data_path, "writing a page back");
        stats->pages++;
        if (keep < writes)
            stats->pages_back++;
        first = last;
    }
    if (fd >= 0 && rc == 0 && fsync (fd))
        rc = s_fail (data_path, "syncing");
    if (fd >= 0)
        close (fd);
    stats->files++;
    stats->writes += count;
    free (touches);
    free (records);
    free (image);
    if (rc == 0 && unlink (undo_path))
        rc = s_fail (undo_path, "removing");
    return rc;
}

//  Takes back a rename that no sync of its folder made durable: the file
//  it replaced comes back, with that file's undo file.
static int
s_rename_back (const char *kept, kim_powercut_stats_t *stats)
{
    char name [PATH_MAX], undo [PATH_MAX + 8], kept_undo [PATH_MAX + 8];
    size_t length = strlen (kept) - strlen (KIM_POWERCUT_RENAMED);
    if (length >= sizeof name)
        return s_fail (kept, "path too long");
    memcpy (name, kept, length);
    name [length] = 0;
    snprintf (undo, sizeof undo, "%s" KIM_POWERCUT_SUFFIX, name);
    snprintf (kept_undo, sizeof kept_undo, "%s" KIM_POWERCUT_SUFFIX, kept);
    unlink (undo);              //  of the file that goes
    if (rename (kept, name))
        return s_fail (kept, "renaming back");
    if (rename (kept_undo, undo) && errno != ENOENT)
        return s_fail (kept_undo, "renaming back");
    stats->renames_back++;
    return 0;
}

static bool
s_ends_with (const char *text, const char *tail)
{
    size_t length = strlen (text), tail_length = strlen (tail);
    return length > tail_length && strcmp (text + length - tail_length, tail) == 0;
}

//  Walks `dir` and the folders below it: the renames to take back first
//  (`renames`), else the undo files to apply.
static int
s_walk (const char *dir, int depth, bool renames, bool worst, uint64_t *rng,
        kim_powercut_stats_t *stats)
{
    DIR *handle = opendir (dir);
    if (!handle)
        return s_fail (dir, "opening the folder");
    int rc = 0;
    struct dirent *entry;
    while (rc == 0 && (entry = readdir (handle))) {
        if (entry->d_name [0] == '.')
            continue;
        char path [PATH_MAX];
        if (snprintf (path, sizeof path, "%s/%s", dir, entry->d_name) >= (int) sizeof path)
            continue;
        struct stat info;
        if (lstat (path, &info))
            continue;
        if (S_ISDIR (info.st_mode) && depth < 4)
            rc = s_walk (path, depth + 1, renames, worst, rng, stats);
        else
        if (S_ISREG (info.st_mode) && renames && s_ends_with (entry->d_name, KIM_POWERCUT_RENAMED))
            rc = s_rename_back (path, stats);
        else
        if (S_ISREG (info.st_mode) && !renames && s_ends_with (entry->d_name, KIM_POWERCUT_SUFFIX))
            rc = s_apply_file (path, worst, rng, stats);
    }
    closedir (handle);
    return rc;
}

int
kim_powercut_apply (const char *dir, bool worst, uint64_t *rng, kim_powercut_stats_t *stats)
{
    memset (stats, 0, sizeof *stats);
    int rc = s_walk (dir, 0, true, worst, rng, stats);
    return rc? rc: s_walk (dir, 0, false, worst, rng, stats);
}
