/*  kim_powercut_shim.c — a preload library that remembers, for the files
    a test names, every write that no sync has made durable yet.

    A SIGKILL leaves the kernel's page cache in place, so it cannot show what
    a power cut shows: writes that were never flushed are gone, page by page,
    in any combination. This library, loaded into kim-broker with LD_PRELOAD,
    watches the LMDB data files (`data.mdb`) and the store's journal
    (`journal`, broker/core/kim_journal.h) below $KIM_POWERCUT_DIR. Before
    each write to one it appends the bytes about to be overwritten to an undo
    file beside it (`data.mdb.undo`); a successful fsync or fdatasync of the
    file empties that undo file, and a write through a descriptor opened with
    O_DSYNC or O_SYNC is marked durable as it returns. A file is tracked from
    the first open for writing in the process. A rename over a watched file
    keeps the file it replaces (`data.mdb.renamed`) until an fsync of the
    folder makes the rename durable. With $KIM_POWERCUT_KILL_AFTER_RENAME
    set to a file name, the process kills itself right after a rename to
    that name: a cut at a moment a test chooses. After the broker is
    killed, kim_powercut_apply (kim_powercut.h) uses the undo files to put
    the data files into a state the disk could have been left in.

    It intercepts the calls LMDB makes (open, close, write, writev, pwrite,
    fsync, fdatasync; `nm -D liblmdb.so`) and rename, and passes everything
    else through untouched. It is built without sanitizers, which want to be
    loaded first.
*/
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "kim_powercut.h"

#define S_FILES_MAX     64              //  a compaction of the key store makes one more
#define S_FDS_MAX       1024

typedef struct {
    dev_t dev;
    ino_t ino;
    int read_fd;                //  LMDB writes its meta page through an O_WRONLY one
    int undo_fd;
} s_file_t;

typedef struct {
    int file;                   //  index into s_files + 1; 0: not tracked
    bool durable;               //  opened with O_DSYNC or O_SYNC
} s_fd_t;

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static char s_dir [PATH_MAX];   //  "" when $KIM_POWERCUT_DIR is not set
static s_file_t s_files [S_FILES_MAX];
static size_t s_file_count;
static s_fd_t s_fds [S_FDS_MAX];

static int (*s_open) (const char *, int, ...);
static int (*s_close) (int);
static ssize_t (*s_write) (int, const void *, size_t);
static ssize_t (*s_writev) (int, const struct iovec *, int);
static ssize_t (*s_pwrite) (int, const void *, size_t, off_t);
static ssize_t (*s_pread) (int, void *, size_t, off_t);
static int (*s_fsync) (int);
static int (*s_fdatasync) (int);
static int (*s_rename) (const char *, const char *);

static void
s_init (void)
{
    s_open = (int (*) (const char *, int, ...)) dlsym (RTLD_NEXT, "open");
    s_close = (int (*) (int)) dlsym (RTLD_NEXT, "close");
    s_write = (ssize_t (*) (int, const void *, size_t)) dlsym (RTLD_NEXT, "write");
    s_writev = (ssize_t (*) (int, const struct iovec *, int)) dlsym (RTLD_NEXT, "writev");
    s_pwrite = (ssize_t (*) (int, const void *, size_t, off_t)) dlsym (RTLD_NEXT, "pwrite");
    s_pread = (ssize_t (*) (int, void *, size_t, off_t)) dlsym (RTLD_NEXT, "pread");
    s_fsync = (int (*) (int)) dlsym (RTLD_NEXT, "fsync");
    s_fdatasync = (int (*) (int)) dlsym (RTLD_NEXT, "fdatasync");
    s_rename = (int (*) (const char *, const char *)) dlsym (RTLD_NEXT, "rename");
    const char *dir = getenv ("KIM_POWERCUT_DIR");
    if (dir && !realpath (dir, s_dir))
        s_dir [0] = 0;
}

//  The file a descriptor writes to, if it is tracked: NULL otherwise.
static s_file_t *
s_tracked (int fd, bool *durable)
{
    if (fd < 0 || fd >= S_FDS_MAX || !s_fds [fd].file)
        return NULL;
    *durable = s_fds [fd].durable;
    return &s_files [s_fds [fd].file - 1];
}

static void
s_die (const char *what)
{
    //  The undo record is what the test relies on: better no broker than a
    //  broker whose writes cannot be taken back.
    fprintf (stderr, "kim_powercut_shim: %s: %s\n", what, strerror (errno));
    abort ();
}

static void
s_write_all (int fd, const void *data, size_t size)
{
    const uint8_t *at = (const uint8_t *) data;
    while (size) {
        ssize_t done = s_write (fd, at, size);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            s_die ("writing the undo file");
        at += done;
        size -= (size_t) done;
    }
}

//  Appends what [offset, offset + size) holds now to the file's undo file.
static void
s_remember (s_file_t *file, off_t offset, size_t size, uint32_t flags)
{
    uint8_t *old = (uint8_t *) malloc (size? size: 1);
    if (!old)
        s_die ("allocating an undo record");
    size_t have = 0;
    while (have < size) {
        ssize_t got = s_pread (file->read_fd, old + have, size - have, offset + (off_t) have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            s_die ("reading what a write overwrites");
        if (got == 0)
            break;              //  past the end of the file: nothing there yet
        have += (size_t) got;
    }
    kim_powercut_record_t record = {
        .magic = KIM_POWERCUT_MAGIC, .flags = flags,
        .offset = (uint64_t) offset, .size = (uint32_t) size, .old_size = (uint32_t) have
    };
    s_write_all (file->undo_fd, &record, sizeof record);
    s_write_all (file->undo_fd, old, have);
    free (old);
}

//  Whether `real` (a resolved path) lies below the watched folder.
static bool
s_below (const char *real)
{
    size_t dir_size = strlen (s_dir);
    return s_dir [0] && strncmp (real, s_dir, dir_size) == 0 && real [dir_size] == '/';
}

//  Starts tracking `fd` if it is a data.mdb or a journal below the watched
//  folder.
static void
s_track (int fd, const char *path, int flags)
{
    pthread_once (&s_once, s_init);
    if (!s_dir [0] || fd < 0 || fd >= S_FDS_MAX)
        return;
    const char *name = strrchr (path, '/');
    name = name? name + 1: path;
    char real [PATH_MAX];
    if ((strcmp (name, "data.mdb") && strcmp (name, "journal")) || !realpath (path, real)
    ||  !s_below (real))
        return;
    struct stat info;
    if (fstat (fd, &info))
        return;
    pthread_mutex_lock (&s_lock);
    size_t index = 0;
    while (index < s_file_count
       && (s_files [index].dev != info.st_dev || s_files [index].ino != info.st_ino))
        index++;
    if (index == s_file_count && (flags & O_ACCMODE) == O_RDONLY) {
        //  Only a writer starts the tracking (a reader of another broker's
        //  store gets no undo file beside it); a reader of a tracked file
        //  is tracked too, as its fsync flushes the file all the same.
        pthread_mutex_unlock (&s_lock);
        return;
    }
    if (index == s_file_count) {
        if (s_file_count == S_FILES_MAX)
            s_die ("too many files to track");
        //  What the file holds when a process first opens it is what the
        //  disk holds: undo records of an earlier process are void.
        char undo [PATH_MAX + 8];
        snprintf (undo, sizeof undo, "%s" KIM_POWERCUT_SUFFIX, real);
        int undo_fd = s_open (undo, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        int read_fd = s_open (real, O_RDONLY | O_CLOEXEC);
        if (undo_fd < 0 || read_fd < 0)
            s_die ("opening the undo file and the file to read");
        s_files [index] = (s_file_t) { info.st_dev, info.st_ino, read_fd, undo_fd };
        s_file_count++;
    }
    s_fds [fd].file = (int) index + 1;
    s_fds [fd].durable = (flags & (O_DSYNC | O_SYNC)) != 0;
    pthread_mutex_unlock (&s_lock);
}

int
open (const char *path, int flags, ...)
{
    pthread_once (&s_once, s_init);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list args;
        va_start (args, flags);
        mode = (mode_t) va_arg (args, int);
        va_end (args);
    }
    int fd = s_open (path, flags, mode);
    s_track (fd, path, flags);
    return fd;
}

int
close (int fd)
{
    pthread_once (&s_once, s_init);
    if (fd >= 0 && fd < S_FDS_MAX) {
        pthread_mutex_lock (&s_lock);
        s_fds [fd].file = 0;
        pthread_mutex_unlock (&s_lock);
    }
    return s_close (fd);
}

ssize_t
pwrite (int fd, const void *data, size_t size, off_t offset)
{
    pthread_once (&s_once, s_init);
    bool durable;
    s_file_t *file = s_tracked (fd, &durable);
    if (!file)
        return s_pwrite (fd, data, size, offset);
    pthread_mutex_lock (&s_lock);
    s_remember (file, offset, size, durable? KIM_POWERCUT_DURABLE: 0);
    ssize_t done = s_pwrite (fd, data, size, offset);
    pthread_mutex_unlock (&s_lock);
    return done;
}

ssize_t
write (int fd, const void *data, size_t size)
{
    pthread_once (&s_once, s_init);
    bool durable;
    s_file_t *file = s_tracked (fd, &durable);
    if (!file)
        return s_write (fd, data, size);
    pthread_mutex_lock (&s_lock);
    s_remember (file, lseek (fd, 0, SEEK_CUR), size, durable? KIM_POWERCUT_DURABLE: 0);
    ssize_t done = s_write (fd, data, size);
    pthread_mutex_unlock (&s_lock);
    return done;
}

ssize_t
writev (int fd, const struct iovec *iov, int count)
{
    pthread_once (&s_once, s_init);
    bool durable;
    s_file_t *file = s_tracked (fd, &durable);
    if (!file)
        return s_writev (fd, iov, count);
    size_t size = 0;
    for (int i = 0; i < count; i++)
        size += iov [i].iov_len;
    pthread_mutex_lock (&s_lock);
    s_remember (file, lseek (fd, 0, SEEK_CUR), size, durable? KIM_POWERCUT_DURABLE: 0);
    ssize_t done = s_writev (fd, iov, count);
    pthread_mutex_unlock (&s_lock);
    return done;
}

//  A folder's fsync makes the renames into it durable: the old files kept
//  for a cut (KIM_POWERCUT_RENAMED) are no longer what a cut brings back.
static void
s_sync_folder (int fd)
{
    struct stat info;
    char link [64], folder [PATH_MAX];
    snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t size = fstat (fd, &info) == 0 && S_ISDIR (info.st_mode)
                 ? readlink (link, folder, sizeof folder - 1): -1;
    if (size <= 0)
        return;
    folder [size] = 0;
    if (!s_below (folder) && strcmp (folder, s_dir))
        return;
    char kept [PATH_MAX + 32], undo [PATH_MAX + 48];
    snprintf (kept, sizeof kept, "%s/data.mdb" KIM_POWERCUT_RENAMED, folder);
    snprintf (undo, sizeof undo, "%s" KIM_POWERCUT_SUFFIX, kept);
    unlink (kept);
    unlink (undo);
}

//  A rename over a watched file is durable only once its folder is synced:
//  until then a cut brings the file it replaced back. That file is kept
//  under a second name (a hard link), with its undo file, unless one is
//  kept already (the last durable one, of an earlier rename not synced).
//  $KIM_POWERCUT_KILL_AFTER_RENAME names a file: the process dies by
//  SIGKILL right after a rename to that name, a cut at a chosen moment.
static int
s_rename_then (const char *from, const char *to, const char *name)
{
    int rc = s_rename (from, to);
    const char *kill_after = getenv ("KIM_POWERCUT_KILL_AFTER_RENAME");
    if (rc == 0 && kill_after && strcmp (kill_after, name) == 0)
        kill (getpid (), SIGKILL);
    return rc;
}

int
rename (const char *from, const char *to)
{
    pthread_once (&s_once, s_init);
    const char *name = strrchr (to, '/');
    name = name? name + 1: to;
    char real [PATH_MAX];
    if (strcmp (name, "data.mdb") || !realpath (to, real) || !s_below (real))
        return s_rename_then (from, to, name);
    pthread_mutex_lock (&s_lock);
    char kept [PATH_MAX + 32], undo [PATH_MAX + 16], kept_undo [PATH_MAX + 48];
    snprintf (kept, sizeof kept, "%s" KIM_POWERCUT_RENAMED, real);
    snprintf (undo, sizeof undo, "%s" KIM_POWERCUT_SUFFIX, real);
    snprintf (kept_undo, sizeof kept_undo, "%s" KIM_POWERCUT_SUFFIX, kept);
    if (access (kept, F_OK) == 0)
        unlink (undo);          //  a file no sync made durable the name of: gone
    else
    if (link (real, kept) == 0 && s_rename (undo, kept_undo) && errno != ENOENT)
        s_die ("keeping the replaced file's undo file");
    int rc = s_rename_then (from, to, name);
    pthread_mutex_unlock (&s_lock);
    return rc;
}

//  A sync that returned makes everything written to the file durable.
static int
s_sync (int fd, int (*sync_fn) (int))
{
    bool durable;
    s_file_t *file = s_tracked (fd, &durable);
    if (!file) {
        int rc = sync_fn (fd);
        if (rc == 0 && s_dir [0]) {
            pthread_mutex_lock (&s_lock);
            s_sync_folder (fd);
            pthread_mutex_unlock (&s_lock);
        }
        return rc;
    }
    pthread_mutex_lock (&s_lock);
    int rc = sync_fn (fd);
    if (rc == 0 && ftruncate (file->undo_fd, 0))
        s_die ("emptying the undo file");
    pthread_mutex_unlock (&s_lock);
    return rc;
}

int
fsync (int fd)
{
    pthread_once (&s_once, s_init);
    return s_sync (fd, s_fsync);
}

int
fdatasync (int fd)
{
    pthread_once (&s_once, s_init);
    return s_sync (fd, s_fdatasync);
}
