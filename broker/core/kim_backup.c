/*  kim_backup.c — a hot, consistent, compacted copy of a broker's data folder.

    Owns the backup procedure so that it is one command an operator can run
    from cron while the broker serves. Why it is safe on a live store: LMDB
    allows any number of reader processes beside the one writer; a second
    process opening the environment with MDB_RDONLY and calling
    mdb_env_copy2 (MDB_CP_COMPACT) walks one read snapshot and writes a fresh,
    compacted B-tree of it. The writer goes on committing meanwhile; its
    commits after the snapshot are simply not in the copy. The only cost is
    that LMDB cannot reuse pages freed during the copy, so the live file may
    grow a little while a long copy runs.

    The store is checked before (it must be a kim store of a version this
    broker knows) and after (the copy opens as a kim store and its head is at
    least the live head seen before the copy). Keys and any other files of the
    data folder are copied with their modes; secrets stay 0600.

    The payload keys (store/keys/, see kim_keystore.h) are copied the same
    way, after the store: a payload in the copy then has its key in the
    copy unless it was erased meanwhile, and then it reads as erased. Being
    compacted copies, neither holds the bytes of what was erased before the
    backup began.
*/
#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim/kim_error.h"
#include "kim_backup.h"
#include "kim_keystore.h"
#include "kim_store.h"

#define S_STORE_DIR     "store"
#define S_DEPTH_MAX     8           //  data folders are shallow; a deep one is not ours
#define S_COPY_BUF      65536

static int
s_fail (char *error, size_t error_size, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    vsnprintf (error, error_size, format, args);
    va_end (args);
    return -1;
}

//  fsync a file or folder by path: the backup is only a backup once on disk.
static int
s_sync_path (const char *path)
{
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return -1;
    int rc = fsync (fd);
    close (fd);
    return rc;
}

//  Opens the store read-only through kim_store to learn its head and check
//  that it is a kim store this broker understands. The handle is closed
//  again at once: LMDB forbids one process opening an environment twice.
static int
s_store_head (const char *path, uint64_t *head, char *error, size_t error_size)
{
    kim_store_config_t config = { .path = path, .read_only = true };
    int rc = 0;
    kim_store_t *store = kim_store_new (&config, &rc);
    if (!store)
        return s_fail (error, error_size, "%s: cannot open the store: %s", path,
                       kim_strerror (rc));
    *head = kim_store_head (store);
    kim_store_destroy (&store);
    return 0;
}

static uint64_t
s_file_size (const char *path)
{
    struct stat st;
    return stat (path, &st) == 0? (uint64_t) st.st_size: 0;
}

static int
s_copy_store (const char *from, const char *to, char *error, size_t error_size)
{
    MDB_env *env;
    int rc = mdb_env_create (&env);
    if (rc)
        return s_fail (error, error_size, "lmdb: %s", mdb_strerror (rc));
    rc = mdb_env_set_maxdbs (env, 32);
    if (rc == 0)
        rc = mdb_env_open (env, from, MDB_RDONLY | MDB_NOTLS, 0600);
    if (rc == 0)
        rc = mdb_env_copy2 (env, to, MDB_CP_COMPACT);
    mdb_env_close (env);
    if (rc)
        return s_fail (error, error_size, "copying %s: %s", from, mdb_strerror (rc));
    char path [PATH_MAX + 16];
    snprintf (path, sizeof path, "%s/data.mdb", to);
    //  LMDB creates the copy with the umask's mode; it holds personal data
    if (chmod (path, 0600) || s_sync_path (path) || s_sync_path (to))
        return s_fail (error, error_size, "syncing %s: %s", path, strerror (errno));
    return 0;
}

//  Returns 0, 1 when `from` is gone (a temporary file the live broker
//  renamed meanwhile, such as audit.checkpoint.tmp), or -1 (error set).
static int
s_copy_file (const char *from, const char *to, mode_t mode, char *error, size_t error_size)
{
    int in = open (from, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in == -1 && errno == ENOENT)
        return 1;
    if (in == -1)
        return s_fail (error, error_size, "%s: %s", from, strerror (errno));
    int out = open (to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0777);
    if (out == -1) {
        close (in);
        return s_fail (error, error_size, "%s: %s", to, strerror (errno));
    }
    char buf [S_COPY_BUF];
    ssize_t got;
    int rc = 0;
    while ((got = read (in, buf, sizeof buf)) != 0) {
        if (got == -1 && errno == EINTR)
            continue;
        if (got == -1) {
            rc = s_fail (error, error_size, "%s: %s", from, strerror (errno));
            break;
        }
        for (ssize_t done = 0; done < got && rc == 0; ) {
            ssize_t put = write (out, buf + done, (size_t) (got - done));
            if (put == -1 && errno == EINTR)
                continue;
            if (put == -1)
                rc = s_fail (error, error_size, "%s: %s", to, strerror (errno));
            else
                done += put;
        }
        if (rc)
            break;
    }
    //  umask may have narrowed the mode; a secret stays exactly as private
    if (rc == 0 && (fchmod (out, mode & 0777) || fsync (out)))
        rc = s_fail (error, error_size, "%s: %s", to, strerror (errno));
    close (in);
    close (out);
    return rc;
}

//  Copies every regular file and folder under `from` to `to` (which exists),
//  leaving out the store at the top level. Anything else (links, sockets,
//  devices) is skipped with a warning: a data folder holds none.
static int
s_copy_tree (const char *from, const char *to, int depth, size_t *files,
             char *error, size_t error_size)
{
    if (depth > S_DEPTH_MAX)
        return s_fail (error, error_size, "%s: folders nested too deep", from);
    DIR *dir = opendir (from);
    if (!dir)
        return s_fail (error, error_size, "%s: %s", from, strerror (errno));
    int rc = 0;
    struct dirent *entry;
    while (rc == 0 && (entry = readdir (dir))) {
        if (streq (entry->d_name, ".") || streq (entry->d_name, "..")
        ||  (depth == 0 && streq (entry->d_name, S_STORE_DIR)))
            continue;
        char src [PATH_MAX], dst [PATH_MAX];
        if (snprintf (src, sizeof src, "%s/%s", from, entry->d_name) >= (int) sizeof src
        ||  snprintf (dst, sizeof dst, "%s/%s", to, entry->d_name) >= (int) sizeof dst) {
            rc = s_fail (error, error_size, "%s/%s: path too long", from, entry->d_name);
            break;
        }
        struct stat st;
        if (lstat (src, &st)) {
            if (errno == ENOENT)
                continue;           //  gone since readdir: a temporary file, renamed
            rc = s_fail (error, error_size, "%s: %s", src, strerror (errno));
            break;
        }
        if (S_ISDIR (st.st_mode)) {
            if (mkdir (dst, st.st_mode & 0777))
                rc = s_fail (error, error_size, "%s: %s", dst, strerror (errno));
            else
                rc = s_copy_tree (src, dst, depth + 1, files, error, error_size);
            if (rc == 0 && s_sync_path (dst))
                rc = s_fail (error, error_size, "syncing %s: %s", dst, strerror (errno));
        }
        else
        if (S_ISREG (st.st_mode)) {
            rc = s_copy_file (src, dst, st.st_mode, error, error_size);
            if (rc == 0)
                (*files)++;
            rc = rc == 1? 0: rc;
        }
        else
            zsys_warning ("backup: %s is not a regular file or folder: left out", src);
    }
    closedir (dir);
    return rc;
}

//  Removes what a failed backup left (our own partial folder only).
static void
s_remove_tree (const char *path, int depth)
{
    DIR *dir = depth <= S_DEPTH_MAX + 1? opendir (path): NULL;
    if (dir) {
        struct dirent *entry;
        while ((entry = readdir (dir))) {
            if (streq (entry->d_name, ".") || streq (entry->d_name, ".."))
                continue;
            char child [PATH_MAX];
            if (snprintf (child, sizeof child, "%s/%s", path, entry->d_name) >= (int) sizeof child)
                continue;
            struct stat st;
            if (lstat (child, &st) == 0 && S_ISDIR (st.st_mode))
                s_remove_tree (child, depth + 1);
            else
                unlink (child);
        }
        closedir (dir);
    }
    rmdir (path);
}

int
kim_backup_run (const char *data, const char *target_arg, kim_backup_result_t *result,
                char *error, size_t error_size)
{
    kim_backup_result_t dummy;
    if (!result)
        result = &dummy;
    memset (result, 0, sizeof *result);
    if (!data || !*data || !target_arg || !*target_arg)
        return s_fail (error, error_size, "backup: a data folder and a target are needed");
    //  "DIR/" names DIR: the partial folder and the parent come from the name
    char target [PATH_MAX];
    if (snprintf (target, sizeof target, "%s", target_arg) >= (int) sizeof target)
        return s_fail (error, error_size, "backup: path too long");
    for (size_t length = strlen (target); length > 1 && target [length - 1] == '/'; length--)
        target [length - 1] = 0;
    struct stat st;
    if (lstat (target, &st) == 0)
        return s_fail (error, error_size, "backup: %s exists; give a new folder", target);

    //  A backup inside the data folder would copy itself into itself
    char data_real [PATH_MAX], parent_real [PATH_MAX];
    char *parent = strdup (target);
    if (!parent)
        return s_fail (error, error_size, "out of memory");
    char *slash = strrchr (parent, '/');
    const char *parent_path = !slash? ".": slash == parent? "/": (*slash = 0, parent);
    if (!realpath (parent_path, parent_real)) {
        s_fail (error, error_size, "backup: %s: %s", parent_path, strerror (errno));
        free (parent);
        return -1;
    }
    free (parent);
    bool inside = realpath (data, data_real)
               && (streq (data_real, parent_real)
                   || (strncmp (parent_real, data_real, strlen (data_real)) == 0
                       && parent_real [strlen (data_real)] == '/'));
    if (inside)
        return s_fail (error, error_size, "backup: %s is inside the data folder %s",
                       target, data);

    char live [PATH_MAX], partial [PATH_MAX], copy [PATH_MAX], path [PATH_MAX + 32];
    if (snprintf (live, sizeof live, "%s/" S_STORE_DIR, data) >= (int) sizeof live
    ||  snprintf (partial, sizeof partial, "%s.partial-%d", target, (int) getpid ())
            >= (int) sizeof partial
    ||  snprintf (copy, sizeof copy, "%s/" S_STORE_DIR, partial) >= (int) sizeof copy)
        return s_fail (error, error_size, "backup: path too long");

    //  Checked first: a folder that is no kim store yields no backup at all
    if (s_store_head (live, &result->head_before, error, error_size))
        return -1;
    if (mkdir (partial, 0700))
        return s_fail (error, error_size, "backup: %s: %s", partial, strerror (errno));
    int rc = 0;
    if (mkdir (copy, 0700))
        rc = s_fail (error, error_size, "backup: %s: %s", copy, strerror (errno));
    if (rc == 0)
        rc = s_copy_store (live, copy, error, error_size);
    char live_keys [PATH_MAX + 16], copy_keys [PATH_MAX + 16];
    snprintf (live_keys, sizeof live_keys, "%s/" KIM_KEYSTORE_DIR, live);
    snprintf (copy_keys, sizeof copy_keys, "%s/" KIM_KEYSTORE_DIR, copy);
    if (rc == 0 && lstat (live_keys, &st) == 0) {
        if (mkdir (copy_keys, 0700))
            rc = s_fail (error, error_size, "backup: %s: %s", copy_keys, strerror (errno));
        else {
            int guard = kim_keystore_guard (live_keys, false);
            rc = s_copy_store (live_keys, copy_keys, error, error_size);
            kim_keystore_unguard (guard);
        }
    }
    //  A reader's lock file is rebuilt by whoever opens the copy next
    snprintf (path, sizeof path, "%s/lock.mdb", copy);
    if (rc == 0)
        rc = s_copy_tree (data, partial, 0, &result->files, error, error_size);
    if (rc == 0 && (rc = s_store_head (copy, &result->head, error, error_size)) == 0
    &&  result->head < result->head_before)
        rc = s_fail (error, error_size, "backup: the copy ends at %" PRIu64 ", before the "
                     "live head %" PRIu64, result->head, result->head_before);
    unlink (path);
    snprintf (path, sizeof path, "%s/lock.mdb", copy_keys);
    unlink (path);
    snprintf (path, sizeof path, "%s/data.mdb", copy);
    result->store_bytes = s_file_size (path);
    snprintf (path, sizeof path, "%s/data.mdb", live);
    result->live_bytes = s_file_size (path);
    if (rc == 0 && s_sync_path (partial))
        rc = s_fail (error, error_size, "syncing %s: %s", partial, strerror (errno));
    if (rc == 0 && rename (partial, target))
        rc = s_fail (error, error_size, "backup: renaming to %s: %s", target, strerror (errno));
    if (rc) {
        s_remove_tree (partial, 0);
        return -1;
    }
    //  The rename is durable once the parent folder is synced
    s_sync_path (parent_real);
    return 0;
}
