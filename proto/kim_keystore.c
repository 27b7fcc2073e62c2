/*  kim_keystore.c — the payload keys, kept apart so that erasing is real.

    Owns the small LMDB environment <store>/keys/ that maps a key slot (u64
    BE: a payload's seq, or a key id from the owner's pool of keys made
    ahead, see kim_store_payload.c and kim_agent_store_payload.c) to the 32-byte key its bytes are
    encrypted under at rest. It
    exists because deleting a record from LMDB only frees its page: the
    bytes stay in the file until the page is reused. The payloads are large
    and many, so compacting the main store after every erasure would cost a
    copy of everything; the keys are small, so this file is compacted after
    every batch that deleted keys, and a deleted key is then in no file.

    Compaction writes a compacted copy (MDB_CP_COMPACT copies only live
    pages, and of each page only its used parts) to a temp file, syncs it,
    renames it over data.mdb, syncs the folder, and reopens. The lock file
    is removed before reopening: a reader in another process (a backup)
    keeps its handle on the old file and finishes its copy from it, while
    this process starts a fresh lock file on the new one. A reader opening
    the store in the middle of that swap could pair the old lock file with
    the new data file, so opening holds a shared flock on guard.lock and
    the swap an exclusive one (kim_keystore_guard).
*/
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim_keystore.h"

#define S_TEMP_NAME     "compact.tmp"
#define S_GUARD_NAME    "guard.lock"

struct _kim_keystore_t {
    char *path;
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn;               //  the open batch
    MDB_txn *rtxn;              //  reused for reads outside a batch
    bool read_only;
    bool nosync;
    bool dirty;                 //  keys deleted since the last compaction
    size_t map_size;
};

static int
s_error (kim_keystore_t *self, int rc, const char *what)
{
    zsys_error ("kim_keystore: %s: %s: %s", self->path, what, mdb_strerror (rc));
    return rc == ENOMEM? -KIM_E_NOMEM: rc == ENOENT? -KIM_E_NOT_FOUND: -KIM_E_IO;
}

static int
    s_open_env (kim_keystore_t *self);

static void
s_close (kim_keystore_t *self)
{
    if (self->txn)
        mdb_txn_abort (self->txn);
    self->txn = NULL;
    if (self->rtxn)
        mdb_txn_abort (self->rtxn);
    self->rtxn = NULL;
    if (self->env)
        mdb_env_close (self->env);
    self->env = NULL;
}

int
kim_keystore_guard (const char *path, bool exclusive)
{
    char guard [PATH_MAX];
    if (snprintf (guard, sizeof guard, "%s/" S_GUARD_NAME, path) >= (int) sizeof guard)
        return -1;
    int fd = open (guard, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd == -1)
        fd = open (guard, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return -1;
    while (flock (fd, exclusive? LOCK_EX: LOCK_SH) == -1) {
        if (errno != EINTR) {
            close (fd);
            return -1;
        }
    }
    return fd;
}

void
kim_keystore_unguard (int fd)
{
    if (fd != -1)
        close (fd);             //  releases the flock
}

static int
s_open (kim_keystore_t *self)
{
    //  The writer holds the exclusive guard itself while it swaps files
    int guard = self->read_only? kim_keystore_guard (self->path, false): -1;
    int rc = s_open_env (self);
    kim_keystore_unguard (guard);
    return rc;
}

static int
s_open_env (kim_keystore_t *self)
{
    int rc = mdb_env_create (&self->env);
    if (rc) {
        self->env = NULL;
        return s_error (self, rc, "creating the environment");
    }
    unsigned int flags = MDB_NOTLS;
    if (self->nosync)
        flags |= MDB_NOSYNC;
    if (self->read_only)
        flags |= MDB_RDONLY;
    rc = mdb_env_set_mapsize (self->env, self->map_size);
    if (rc == 0)
        rc = mdb_env_open (self->env, self->path, flags, 0600);
    if (rc)
        return s_error (self, rc, "opening the environment");
    MDB_txn *txn;
    rc = mdb_txn_begin (self->env, NULL, self->read_only? MDB_RDONLY: 0, &txn);
    if (rc)
        return s_error (self, rc, "starting the opening transaction");
    rc = mdb_dbi_open (txn, NULL, 0, &self->dbi);
    if (rc == 0)
        rc = mdb_txn_commit (txn);
    else
        mdb_txn_abort (txn);
    return rc? s_error (self, rc, "opening the keys"): 0;
}

kim_keystore_t *
kim_keystore_new (const char *path, bool read_only, bool nosync, size_t map_size, int *err)
{
    int dummy;
    if (!err)
        err = &dummy;
    *err = 0;
    kim_keystore_t *self = (kim_keystore_t *) calloc (1, sizeof (kim_keystore_t));
    if (!self || !path || !(self->path = strdup (path))) {
        free (self);
        *err = -KIM_E_NOMEM;
        return NULL;
    }
    self->read_only = read_only;
    self->nosync = nosync;
    self->map_size = map_size;
    struct stat st;
    if (read_only && stat (path, &st) == -1) {
        *err = -KIM_E_NOT_FOUND;
        kim_keystore_destroy (&self);
        return NULL;
    }
    //  The keys open every payload: the folder is the owner's alone
    if (!read_only && mkdir (path, 0700) == -1 && errno != EEXIST) {
        zsys_error ("kim_keystore: cannot create %s: %s", path, strerror (errno));
        *err = -KIM_E_IO;
        kim_keystore_destroy (&self);
        return NULL;
    }
    //  A compaction cut short leaves its temp file: it is no key store
    if (!read_only) {
        char temp [PATH_MAX];
        snprintf (temp, sizeof temp, "%s/" S_TEMP_NAME, path);
        unlink (temp);
    }
    if ((*err = s_open (self)))
        kim_keystore_destroy (&self);
    return self;
}

void
kim_keystore_destroy (kim_keystore_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_keystore_t *self = *self_p;
    s_close (self);
    free (self->path);
    free (self);
    *self_p = NULL;
}

static int
s_batch (kim_keystore_t *self)
{
    if (self->read_only || !self->env)
        return -KIM_E_ARGS;
    if (self->txn)
        return 0;
    int rc = mdb_txn_begin (self->env, NULL, 0, &self->txn);
    if (rc) {
        self->txn = NULL;
        return s_error (self, rc, "starting a batch");
    }
    return 0;
}

int
kim_keystore_put (kim_keystore_t *self, uint64_t seq, const uint8_t key [KIM_KEYSTORE_KEY])
{
    int rc = s_batch (self);
    if (rc)
        return rc;
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val name = { sizeof (key_bytes), key_bytes };
    MDB_val value = { KIM_KEYSTORE_KEY, (void *) key };
    rc = mdb_put (self->txn, self->dbi, &name, &value, 0);
    return rc? s_error (self, rc, "storing a key"): 0;
}

int
kim_keystore_del (kim_keystore_t *self, uint64_t seq)
{
    int rc = s_batch (self);
    if (rc)
        return rc;
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val name = { sizeof (key_bytes), key_bytes };
    rc = mdb_del (self->txn, self->dbi, &name, NULL);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return s_error (self, rc, "deleting a key");
    self->dirty = true;
    return 1;
}

int
kim_keystore_get (kim_keystore_t *self, uint64_t seq, uint8_t key [KIM_KEYSTORE_KEY])
{
    if (!self->env)
        return -KIM_E_IO;
    MDB_txn *txn = self->txn;
    int rc = 0;
    if (!txn) {
        //  A fresh snapshot per read: the keys of a batch just committed
        //  must be seen, and a reader process follows the writer.
        rc = self->rtxn? mdb_txn_renew (self->rtxn)
                       : mdb_txn_begin (self->env, NULL, MDB_RDONLY, &self->rtxn);
        if (rc == MDB_MAP_RESIZED) {
            mdb_env_set_mapsize (self->env, 0);
            rc = self->rtxn? mdb_txn_renew (self->rtxn)
                           : mdb_txn_begin (self->env, NULL, MDB_RDONLY, &self->rtxn);
        }
        if (rc) {
            if (self->rtxn)
                mdb_txn_abort (self->rtxn);
            self->rtxn = NULL;
            return s_error (self, rc, "starting a read");
        }
        txn = self->rtxn;
    }
    uint8_t key_bytes [8];
    kim_log_put_be64 (key_bytes, seq);
    MDB_val name = { sizeof (key_bytes), key_bytes };
    MDB_val value;
    rc = mdb_get (txn, self->dbi, &name, &value);
    int result = 0;
    if (rc == 0 && value.mv_size == KIM_KEYSTORE_KEY) {
        memcpy (key, value.mv_data, KIM_KEYSTORE_KEY);
        result = 1;
    }
    else
    if (rc == 0) {
        zsys_error ("kim_keystore: %s: key of a payload is malformed", self->path);
        result = -KIM_E_IO;
    }
    else
    if (rc != MDB_NOTFOUND)
        result = s_error (self, rc, "reading a key");
    if (txn == self->rtxn)
        mdb_txn_reset (self->rtxn);
    return result;
}

int
kim_keystore_last (kim_keystore_t *self, uint64_t *seq)
{
    if (!self->env)
        return -KIM_E_IO;
    MDB_txn *txn = self->txn;
    int rc = txn? 0: mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return s_error (self, rc, "starting a read");
    MDB_cursor *cursor;
    rc = mdb_cursor_open (txn, self->dbi, &cursor);
    MDB_val name, value;
    if (rc == 0) {
        rc = mdb_cursor_get (cursor, &name, &value, MDB_LAST);
        mdb_cursor_close (cursor);
    }
    int result = 0;
    if (rc == 0 && name.mv_size == 8) {
        *seq = kim_log_get_be64 ((const uint8_t *) name.mv_data);
        result = 1;
    }
    else
    if (rc == 0) {
        zsys_error ("kim_keystore: %s: a key's slot is malformed", self->path);
        result = -KIM_E_IO;
    }
    else
    if (rc != MDB_NOTFOUND)
        result = s_error (self, rc, "reading the last key");
    if (txn != self->txn)
        mdb_txn_abort (txn);
    return result;
}

int
kim_keystore_commit (kim_keystore_t *self)
{
    if (!self->txn)
        return 0;
    int rc = mdb_txn_commit (self->txn);
    self->txn = NULL;
    return rc? s_error (self, rc, "committing keys"): 0;
}

void
kim_keystore_abort (kim_keystore_t *self)
{
    if (self->txn)
        mdb_txn_abort (self->txn);
    self->txn = NULL;
}

bool
kim_keystore_dirty (kim_keystore_t *self)
{
    return self->dirty;
}

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

int
kim_keystore_compact (kim_keystore_t *self)
{
    if (self->read_only || self->txn || !self->env)
        return -KIM_E_ARGS;
    char temp [PATH_MAX], data [PATH_MAX], lock [PATH_MAX];
    if (snprintf (temp, sizeof temp, "%s/" S_TEMP_NAME, self->path) >= (int) sizeof temp
    ||  snprintf (data, sizeof data, "%s/data.mdb", self->path) >= (int) sizeof data
    ||  snprintf (lock, sizeof lock, "%s/lock.mdb", self->path) >= (int) sizeof lock)
        return -KIM_E_ARGS;
    int fd = open (temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd == -1) {
        zsys_error ("kim_keystore: %s: %s", temp, strerror (errno));
        return -KIM_E_IO;
    }
    if (self->rtxn) {
        mdb_txn_abort (self->rtxn);
        self->rtxn = NULL;
    }
    int rc = mdb_env_copyfd2 (self->env, fd, MDB_CP_COMPACT);
    if (rc == 0 && fsync (fd))
        rc = errno;
    close (fd);
    if (rc) {
        unlink (temp);
        return s_error (self, rc, "compacting");
    }
    //  From here the old file is closed: the new one must take its place
    int guard = kim_keystore_guard (self->path, true);
    mdb_env_close (self->env);
    self->env = NULL;
    if (guard == -1 || rename (temp, data) || s_sync_path (self->path)) {
        zsys_error ("kim_keystore: %s: replacing the key store: %s", self->path,
                    strerror (errno));
        unlink (temp);
        rc = s_open (self);
        kim_keystore_unguard (guard);
        return rc? rc: -KIM_E_IO;
    }
    unlink (lock);
    rc = s_open (self);
    kim_keystore_unguard (guard);
    if (rc)
        return rc;
    self->dirty = false;
    return 0;
}
