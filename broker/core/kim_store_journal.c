/*  kim_store_journal.c — the store with a journal in front of LMDB
    (store/journal; kim_journal.h says what the journal is and why).

    With the journal, LMDB's environment is opened MDB_NOSYNC: a batch's
    commit writes its pages into the page cache (readers, here and in
    other processes, see it at once) and flushes nothing. The batch's
    writes, as kim_store_put and its siblings made them, are sealed into
    one journal entry before LMDB's commit and written and flushed after
    it: then the batch is durable, one flush of a few sequential pages.

    A checkpoint flushes LMDB's file, records LMDB's two meta pages in the
    journal under the next generation, and moves the read transaction that
    pins the latest checkpoint (`pin`) to it: LMDB reuses no page that
    transaction can reach, so the checkpoint stays whole on the disk while
    later commits write elsewhere. It comes when the journal is half full
    or a second has passed, at the start of the next batch; when a batch
    is too large for the journal (it is then made durable by the
    checkpoint); before the map grows; and when the store closes (a clean
    checkpoint: nothing to replay).

    Opening: unless the last checkpoint was clean, the meta pages it
    recorded are put back into LMDB's file before LMDB opens it (a power
    loss may have left later meta pages whose data never reached the disk;
    after a crash of the process they name what the page cache kept, and
    the replay writes it again), and the entries of its generation are
    replayed, in one transaction, then a checkpoint follows. A store opened
    without the journal does the same with a journal file it finds, then
    removes the file: switching the journal off loses nothing.

    Part of the store module (kim_store_int.h).
*/
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim/kim_error.h"
#include "kim_store_int.h"

#define S_JOURNAL_SIZE      ((size_t) 16 << 20)
#define S_CHECKPOINT_MS     1000
#define S_DIRECT_MIN        ((size_t) 64 << 10)     //  a batch this large is a checkpoint

//  --------------------------------------------------------------------------
//  Checkpoints

//  LMDB's file: its descriptor, device and inode, and its page size.
static int
s_file (kim_store_t *self, int *fd, struct stat *st, unsigned *page_size)
{
    MDB_stat stat;
    int rc = mdb_env_get_fd (self->env, fd);
    if (rc == 0)
        rc = mdb_env_stat (self->env, &stat);
    if (rc == 0 && fstat (*fd, st) == -1)
        rc = errno;
    *page_size = rc == 0? stat.ms_psize: 0;
    if (rc == 0 && (*page_size < 512 || *page_size > KIM_JOURNAL_PAGE_MAX))
        rc = MDB_INCOMPATIBLE;
    return rc;
}

//  Flushes LMDB's file and records the checkpoint. Returns 0 or -KIM_E_*
//  (the store failed closed).
static int
s_checkpoint (kim_store_t *self, bool clean)
{
    int fd = -1;
    struct stat st;
    unsigned page_size = 0;
    uint8_t *metas = NULL;
    int rc = mdb_env_sync (self->env, 1);
    if (rc == 0)
        rc = s_file (self, &fd, &st, &page_size);
    if (rc == 0 && !(metas = (uint8_t *) malloc (2 * (size_t) page_size)))
        rc = ENOMEM;
    if (rc == 0 && pread (fd, metas, 2 * (size_t) page_size, 0) != (ssize_t) (2 * page_size))
        rc = errno? errno: EIO;
    if (rc == 0) {
        kim_journal_checkpoint_t checkpoint = {
            self->journal_generation + 1, clean, page_size,
            (uint64_t) st.st_dev, (uint64_t) st.st_ino, metas
        };
        rc = kim_journal_checkpoint (self->journal, &checkpoint) == 0? 0: EIO;
    }
    free (metas);
    if (rc) {
        zsys_error ("kim_store: %s: journal checkpoint failed: %s; store fails closed",
                    self->path, mdb_strerror (rc));
        self->failed = true;
        return -KIM_E_STORE_FAILED;
    }
    self->journal_generation++;
    self->journal_wrote = false;
    self->checkpoint_mono = zclock_mono ();
    if (clean)
        return 0;
    //  The pin moves on to what was just flushed; the old one held until now
    if (self->pin) {
        mdb_txn_reset (self->pin);
        rc = mdb_txn_renew (self->pin);
    }
    else
        rc = mdb_txn_begin (self->env, NULL, MDB_RDONLY, &self->pin);
    if (rc) {
        if (self->pin)
            mdb_txn_abort (self->pin);
        self->pin = NULL;
        zsys_error ("kim_store: %s: pinning the checkpoint failed: %s; store fails closed",
                    self->path, mdb_strerror (rc));
        self->failed = true;
        return -KIM_E_STORE_FAILED;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Opening and closing

//  Puts the meta pages of the journal's last checkpoint back into LMDB's
//  file at `data`, unless they are there already.
static int
s_restore_metas (kim_store_t *self, const char *data, const kim_journal_checkpoint_t *last)
{
    int fd = open (data, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd == -1 || fstat (fd, &st) == -1) {
        zsys_error ("kim_store: %s: the journal records a checkpoint of %s, which cannot be "
                    "opened (%s); move %s/%s away to start with the file as it is",
                    self->path, data, strerror (errno), self->path, KIM_JOURNAL_NAME);
        if (fd != -1)
            close (fd);
        return -KIM_E_CONFIG;
    }
    if ((uint64_t) st.st_dev != last->device || (uint64_t) st.st_ino != last->inode) {
        close (fd);
        zsys_error ("kim_store: %s: the journal belongs to another data.mdb than this one "
                    "(copied or restored since it was written); start the broker on the "
                    "folder it was written in, or move %s/%s away to start with this file "
                    "as it is", self->path, self->path, KIM_JOURNAL_NAME);
        return -KIM_E_CONFIG;
    }
    size_t size = 2 * (size_t) last->page_size;
    uint8_t *now = (uint8_t *) malloc (size);
    int rc = now? 0: -KIM_E_NOMEM;
    if (rc == 0 && pread (fd, now, size, 0) != (ssize_t) size)
        rc = -KIM_E_IO;
    if (rc == 0 && memcmp (now, last->metas, size) != 0) {
        if (pwrite (fd, last->metas, size, 0) != (ssize_t) size || fsync (fd) == -1)
            rc = -KIM_E_IO;
        else
            zsys_notice ("kim_store: %s: the store did not close cleanly; going back to its "
                         "last checkpoint to replay the journal from there", self->path);
    }
    if (rc == -KIM_E_IO)
        zsys_error ("kim_store: %s: restoring the checkpoint's meta pages: %s", self->path,
                    strerror (errno));
    free (now);
    close (fd);
    return rc;
}

int
kim_store_i_journal_hold (kim_store_t *self, bool journal)
{
    char *path = zsys_sprintf ("%s/%s", self->path, KIM_JOURNAL_NAME);
    if (!path)
        return -KIM_E_NOMEM;
    bool present = access (path, F_OK) == 0;
    int rc = 0;
    if (journal || present)
        self->journal = kim_journal_new (path, S_JOURNAL_SIZE, &rc);
    if (rc && !present) {
        //  No room for a new journal (a full disk, a file size limit): the
        //  store works as without one, a commit flushing LMDB's pages
        zsys_warning ("kim_store: %s: cannot make the journal; committing without it",
                      self->path);
        unlink (path);
        rc = 0;
    }
    //  Held before the store's lock, so that a reader who finds the lock
    //  held while the journal is not knows the broker has recovered
    if (rc == 0 && self->journal)
        rc = kim_journal_hold (self->journal, true);
    zstr_free (&path);
    return rc;
}

int
kim_store_i_journal_recover (kim_store_t *self)
{
    if (!self->journal)
        return 0;
    char *data = zsys_sprintf ("%s/data.mdb", self->path);
    if (!data)
        return -KIM_E_NOMEM;
    int rc = 0;
    kim_journal_checkpoint_t last;
    int found = rc == 0 && self->journal? kim_journal_last (self->journal, &last): 0;
    if (found < 0)
        rc = found;
    if (found == 1) {
        self->journal_generation = last.generation;
        self->replay_due = !last.clean;
    }
    if (rc == 0 && self->replay_due)
        rc = s_restore_metas (self, data, &last);
    zstr_free (&data);
    return rc;
}

static int
s_apply (void *arg, uint8_t op, uint8_t tree, const void *key, size_t key_size,
         const void *value, size_t value_size)
{
    MDB_txn *txn = (MDB_txn *) ((void **) arg) [0];
    kim_store_t *self = (kim_store_t *) ((void **) arg) [1];
    if (tree >= KIM_DB_COUNT)
        return -KIM_E_IO;
    MDB_val k = { key_size, (void *) key }, v = { value_size, (void *) value };
    int rc;
    if (op == KIM_JOURNAL_PUT)
        rc = mdb_put (txn, self->dbi [tree], &k, &v, 0);
    else
    if (op == KIM_JOURNAL_DEL) {
        rc = mdb_del (txn, self->dbi [tree], &k, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    else
    if (op == KIM_JOURNAL_EMPTY)
        rc = mdb_drop (txn, self->dbi [tree], 0);
    else
        return -KIM_E_IO;
    return rc;
}

//  Replays the entries after the last checkpoint in one transaction.
static int
s_replay (kim_store_t *self)
{
    size_t entries = 0, writes = 0;
    for (int attempt = 0; ; attempt++) {
        MDB_txn *txn;
        int rc = mdb_txn_begin (self->env, NULL, 0, &txn);
        if (rc)
            return kim_store_i_read_error (self, rc, "starting the journal's replay");
        void *arg [2] = { txn, self };
        rc = kim_journal_replay (self->journal, self->journal_generation, s_apply, arg,
                                 &entries, &writes);
        if (rc == 0)
            rc = mdb_txn_commit (txn);
        else
            mdb_txn_abort (txn);
        if ((rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) && attempt < 16) {
            //  The batches since the checkpoint grew the map: grow it again
            bool retry = false;
            kim_store_i_grow (self, rc == MDB_MAP_FULL, &retry);
            if (retry)
                continue;
        }
        if (rc < 0)
            return rc;
        if (rc)
            return kim_store_i_read_error (self, rc, "replaying the journal");
        break;
    }
    zsys_notice ("kim_store: %s: %zu batches (%zu writes) replayed from the journal",
                 self->path, entries, writes);
    return 0;
}

int
kim_store_i_journal_open (kim_store_t *self)
{
    int rc = self->journal && self->replay_due? s_replay (self): 0;
    self->replay_due = false;
    return rc;
}

int
kim_store_i_journal_ready (kim_store_t *self, bool journal)
{
    if (!self->journal)
        return 0;
    //  What opening wrote (the replay, the format, the key pool's start)
    //  is flushed and recorded before the first batch; then readers may come
    int rc = s_checkpoint (self, !journal);
    if (rc == 0)
        rc = kim_journal_hold (self->journal, false);
    self->journal_ready = rc == 0;
    if (rc == 0 && !journal) {
        //  Switched off: everything is in LMDB's file now, the journal goes
        char *path = zsys_sprintf ("%s/%s", self->path, KIM_JOURNAL_NAME);
        kim_journal_destroy (&self->journal);
        if (path && unlink (path) == -1)
            zsys_warning ("kim_store: %s: cannot remove %s: %s", self->path, path,
                          strerror (errno));
        zstr_free (&path);
    }
    return rc;
}

void
kim_store_i_journal_close (kim_store_t *self)
{
    if (self->journal && self->journal_ready && !self->failed)
        s_checkpoint (self, true);  //  clean: opened and serving until now
    if (self->pin)
        mdb_txn_abort (self->pin);
    self->pin = NULL;
    kim_journal_destroy (&self->journal);
}

//  --------------------------------------------------------------------------
//  Batches

int
kim_store_i_journal_begin (kim_store_t *self)
{
    bool due = self->journal_wrote
            && (kim_journal_used (self->journal) > kim_journal_room (self->journal) / 2
             || zclock_mono () - self->checkpoint_mono >= S_CHECKPOINT_MS);
    return due? s_checkpoint (self, false): 0;
}

int
kim_store_i_journal_add (kim_store_t *self, uint8_t op, kim_db_t db, const MDB_val *key,
                         const MDB_val *value, unsigned flags)
{
    bool late = (flags & MDB_RESERVE) != 0;
    int rc = kim_journal_add (self->journal, op, (uint8_t) db, key? key->mv_data: NULL,
                              key? key->mv_size: 0, value && !late? value->mv_data: NULL,
                              value && !late? value->mv_size: 0, late);
    return rc == 0? 0: ENOMEM;
}

//  A late put's value, as the batch left it.
static int
s_resolve (void *arg, uint8_t tree, const void *key, size_t key_size, const void **value,
           size_t *size)
{
    kim_store_t *self = (kim_store_t *) arg;
    MDB_val k = { key_size, (void *) key }, v;
    int rc = mdb_get (self->txn, self->dbi [tree], &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return -KIM_E_IO;
    *value = v.mv_data;
    *size = v.mv_size;
    return 1;
}

int
kim_store_i_journal_seal (kim_store_t *self)
{
    self->journal_direct = false;
    size_t pending = kim_journal_pending (self->journal);
    if (pending == 0)
        return 0;
    //  A large batch is written at about the cost of its bytes by LMDB
    //  itself, and a flush of its pages costs a few of its messages' share
    int rc = pending >= S_DIRECT_MIN? -KIM_E_STORE_FULL
           : kim_journal_seal (self->journal, s_resolve, self);
    if (rc == -KIM_E_STORE_FULL && pending < S_DIRECT_MIN) {
        //  Past the journal's end: checkpoint (the batch's writes are not
        //  in LMDB's file yet, so they stay out of it) and go again
        rc = s_checkpoint (self, false);
        if (rc == 0)
            rc = kim_journal_seal (self->journal, s_resolve, self);
    }
    if (rc == -KIM_E_STORE_FULL) {
        //  Too large for the journal: the checkpoint after LMDB's commit
        //  makes it durable, as a commit without a journal would
        kim_journal_forget (self->journal);
        self->journal_direct = true;
        return 0;
    }
    return rc;
}

int
kim_store_i_journal_write (kim_store_t *self)
{
    if (self->journal_direct) {
        self->journal_direct = false;
        return s_checkpoint (self, false);
    }
    if (kim_journal_pending (self->journal) == 0)
        return 0;
    if (kim_journal_write (self->journal)) {
        zsys_error ("kim_store: %s: the journal failed; store fails closed", self->path);
        self->failed = true;
        return -KIM_E_STORE_FAILED;
    }
    self->journal_wrote = true;
    //  LMDB's pages start for the disk now, so that the checkpoint's
    //  flush finds little left to write
    int fd;
    if (mdb_env_get_fd (self->env, &fd) == 0)
        sync_file_range (fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    return 0;
}

void
kim_store_i_journal_forget (kim_store_t *self)
{
    kim_journal_forget (self->journal);
    self->journal_direct = false;
}

int
kim_store_i_journal_sync (kim_store_t *self)
{
    if (self->txn)
        return 0;               //  inside a batch: its commit decides
    return self->journal_wrote? s_checkpoint (self, false): 0;
}

int
kim_store_i_journal_unpin (kim_store_t *self)
{
    //  Everything flushed first: without the pin LMDB may reuse the old
    //  checkpoint's pages, so the checkpoint on record must be the latest
    int rc = self->journal_wrote? s_checkpoint (self, false): 0;
    if (rc == 0 && self->pin)
        mdb_txn_reset (self->pin);
    return rc;
}

int
kim_store_i_journal_repin (kim_store_t *self)
{
    int rc = self->pin? mdb_txn_renew (self->pin): 0;
    if (rc) {
        zsys_error ("kim_store: %s: pinning the checkpoint failed: %s; store fails closed",
                    self->path, mdb_strerror (rc));
        self->failed = true;
        return -KIM_E_STORE_FAILED;
    }
    return 0;
}
