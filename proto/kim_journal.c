/*  kim_journal.c — a journal in front of the store's LMDB file (see
    kim_journal.h for what it is for and its format).

    The open entry is kept as the writes came, with late puts' values left
    out; kim_journal_seal builds the entry from it (asking for the late
    values then, when the batch has filled them in), and kim_journal_write
    writes it with one pwrite and one fdatasync.
*/
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim/kim_error.h"
#include "kim_journal.h"

#define S_MAGIC         0x4a4d494bu     //  "KIMJ" little-endian
#define S_HEAD          (4 + 8 + 4 + 16)
#define S_SLOT_MAGIC    "KIMJHDR1"
#define S_SLOT_HEAD     (8 + 8 + 4 + 4 + 8 + 8 + 16)
#define S_SLOT          ((size_t) 4096 + 2 * KIM_JOURNAL_PAGE_MAX)
#define S_ENTRIES       KIM_JOURNAL_ENTRIES_AT
#define S_WRITE_HEAD    (1 + 1 + 2 + 4)
#define S_LATE          0x80            //  on op in the open entry: value to resolve
#define S_ZEROS         ((size_t) 1 << 20)

struct _kim_journal_t {
    char *path;
    int fd;
    size_t size;                //  of the file
    uint64_t generation;        //  of the entries written now
    size_t used;                //  bytes of entries since the last checkpoint
    int slot;                   //  of the latest checkpoint (-1: none)
    uint8_t *open;              //  the open entry's writes, late values left out
    size_t open_size, open_max;
    uint8_t *entry;             //  the entry as written: head and body
    size_t entry_max;
    size_t sealed;              //  bytes of the sealed entry (0: none)
    uint8_t *slot_bytes;        //  a checkpoint slot, read or to write
};

static void
s_le16 (uint8_t *at, uint16_t value)
{
    at [0] = (uint8_t) value;
    at [1] = (uint8_t) (value >> 8);
}

static void
s_le32 (uint8_t *at, uint32_t value)
{
    for (int i = 0; i < 4; i++, value >>= 8)
        at [i] = (uint8_t) value;
}

static void
s_le64 (uint8_t *at, uint64_t value)
{
    for (int i = 0; i < 8; i++, value >>= 8)
        at [i] = (uint8_t) value;
}

static uint32_t
s_get32 (const uint8_t *at)
{
    return (uint32_t) at [0] | (uint32_t) at [1] << 8 | (uint32_t) at [2] << 16
         | (uint32_t) at [3] << 24;
}

static uint64_t
s_get64 (const uint8_t *at)
{
    return (uint64_t) s_get32 (at) | (uint64_t) s_get32 (at + 4) << 32;
}

static bool
s_grow (uint8_t **buffer, size_t *max, size_t need)
{
    if (need <= *max)
        return true;
    size_t size = *max? *max: 4096;
    while (size < need)
        size *= 2;
    uint8_t *grown = (uint8_t *) realloc (*buffer, size);
    if (!grown)
        return false;
    *buffer = grown;
    *max = size;
    return true;
}

//  Writes the file whole, then syncs it and its folder: a new journal (or
//  one made longer) is then as long as it will stay, on the disk too.
static int
s_write_ahead (kim_journal_t *self, size_t from)
{
    uint8_t *zeros = (uint8_t *) calloc (1, S_ZEROS);
    if (!zeros)
        return -KIM_E_NOMEM;
    int rc = 0;
    for (size_t at = from; rc == 0 && at < self->size; ) {
        size_t chunk = self->size - at < S_ZEROS? self->size - at: S_ZEROS;
        ssize_t wrote = pwrite (self->fd, zeros, chunk, (off_t) at);
        if (wrote <= 0)
            rc = -KIM_E_IO;
        else
            at += (size_t) wrote;
    }
    free (zeros);
    if (rc == 0 && fsync (self->fd) == -1)
        rc = -KIM_E_IO;
    if (rc == 0) {
        char *copy = strdup (self->path);
        int dir = copy? open (dirname (copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC): -1;
        if (dir == -1 || fsync (dir) == -1)
            rc = -KIM_E_IO;
        if (dir != -1)
            close (dir);
        free (copy);
    }
    if (rc)
        zsys_error ("kim_journal: %s: writing the journal ahead: %s", self->path,
                    strerror (errno));
    return rc;
}

kim_journal_t *
kim_journal_new (const char *path, size_t size, int *err)
{
    int dummy;
    if (!err)
        err = &dummy;
    *err = 0;
    if (!path || size < S_ENTRIES + 2 * S_HEAD || size > ((size_t) 1 << 40)) {
        *err = -KIM_E_ARGS;
        return NULL;
    }
    kim_journal_t *self = (kim_journal_t *) calloc (1, sizeof *self);
    if (!self || !(self->path = strdup (path))) {
        free (self);
        *err = -KIM_E_NOMEM;
        return NULL;
    }
    self->size = size;
    self->slot = -1;
    //  Personal data (headers, sealed payloads): the broker's alone
    self->fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    struct stat st;
    if (self->fd == -1 || fstat (self->fd, &st) == -1) {
        zsys_error ("kim_journal: cannot open %s: %s", path, strerror (errno));
        *err = -KIM_E_IO;
        kim_journal_destroy (&self);
        return NULL;
    }
    if ((size_t) st.st_size < size && (*err = s_write_ahead (self, (size_t) st.st_size))) {
        kim_journal_destroy (&self);
        return NULL;
    }
    return self;
}

void
kim_journal_destroy (kim_journal_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_journal_t *self = *self_p;
    if (self->fd != -1)
        close (self->fd);
    free (self->open);
    free (self->entry);
    free (self->slot_bytes);
    free (self->path);
    free (self);
    *self_p = NULL;
}

int
kim_journal_add (kim_journal_t *self, uint8_t op, uint8_t tree, const void *key,
                 size_t key_size, const void *value, size_t value_size, bool late)
{
    if (key_size > UINT16_MAX || value_size > UINT32_MAX - S_HEAD)
        return -KIM_E_ARGS;
    if (late)
        value_size = 0;
    size_t need = self->open_size + S_WRITE_HEAD + key_size + value_size;
    if (!s_grow (&self->open, &self->open_max, need))
        return -KIM_E_NOMEM;
    uint8_t *at = self->open + self->open_size;
    at [0] = late? (uint8_t) (op | S_LATE): op;
    at [1] = tree;
    s_le16 (at + 2, (uint16_t) key_size);
    s_le32 (at + 4, (uint32_t) value_size);
    at += S_WRITE_HEAD;
    if (key_size)
        memcpy (at, key, key_size);
    if (value_size)
        memcpy (at + key_size, value, value_size);
    self->open_size = need;
    return 0;
}

size_t
kim_journal_pending (kim_journal_t *self)
{
    return self->open_size;
}

void
kim_journal_forget (kim_journal_t *self)
{
    self->open_size = 0;
    self->sealed = 0;
}

size_t
kim_journal_used (kim_journal_t *self)
{
    return self->used;
}

size_t
kim_journal_room (kim_journal_t *self)
{
    return self->size - S_ENTRIES;
}

//  --------------------------------------------------------------------------
//  Checkpoints

//  Reads slot `index` into self->slot_bytes; returns true when it holds a
//  whole checkpoint and sets *generation.
static bool
s_slot_read (kim_journal_t *self, int index, uint64_t *generation)
{
    if (!self->slot_bytes && !(self->slot_bytes = (uint8_t *) malloc (S_SLOT)))
        return false;
    uint8_t *slot = self->slot_bytes;
    if (pread (self->fd, slot, S_SLOT, (off_t) index * (off_t) S_SLOT) != (ssize_t) S_SLOT
    ||  memcmp (slot, S_SLOT_MAGIC, 8) != 0)
        return false;
    uint32_t page_size = s_get32 (slot + 20);
    if (page_size < 512 || page_size > KIM_JOURNAL_PAGE_MAX)
        return false;
    size_t size = S_SLOT_HEAD + 2 * (size_t) page_size;
    uint8_t check [16], saved [16];
    memcpy (saved, slot + S_SLOT_HEAD - 16, 16);
    memset (slot + S_SLOT_HEAD - 16, 0, 16);
    crypto_generichash (check, 16, slot, size, NULL, 0);
    memcpy (slot + S_SLOT_HEAD - 16, saved, 16);
    if (sodium_memcmp (check, saved, 16) != 0)
        return false;
    *generation = s_get64 (slot + 8);
    return true;
}

int
kim_journal_last (kim_journal_t *self, kim_journal_checkpoint_t *checkpoint)
{
    uint64_t generations [2] = { 0, 0 };
    bool valid [2];
    for (int i = 0; i < 2; i++)
        valid [i] = s_slot_read (self, i, &generations [i]);
    if (!self->slot_bytes)
        return -KIM_E_NOMEM;
    int latest = valid [0] && valid [1]? (generations [1] > generations [0]? 1: 0)
               : valid [0]? 0: valid [1]? 1: -1;
    self->slot = latest;
    if (latest < 0)
        return 0;
    if (!s_slot_read (self, latest, &generations [latest]))
        return -KIM_E_IO;       //  changed under us: not by this program
    const uint8_t *slot = self->slot_bytes;
    checkpoint->generation = generations [latest];
    checkpoint->clean = (s_get32 (slot + 16) & 1) != 0;
    checkpoint->page_size = s_get32 (slot + 20);
    checkpoint->device = s_get64 (slot + 24);
    checkpoint->inode = s_get64 (slot + 32);
    checkpoint->metas = slot + S_SLOT_HEAD;
    self->generation = checkpoint->generation;
    self->used = 0;
    return 1;
}

int
kim_journal_checkpoint (kim_journal_t *self, const kim_journal_checkpoint_t *checkpoint)
{
    if (checkpoint->page_size < 512 || checkpoint->page_size > KIM_JOURNAL_PAGE_MAX)
        return -KIM_E_ARGS;
    if (!self->slot_bytes && !(self->slot_bytes = (uint8_t *) malloc (S_SLOT)))
        return -KIM_E_NOMEM;
    uint8_t *slot = self->slot_bytes;
    size_t size = S_SLOT_HEAD + 2 * (size_t) checkpoint->page_size;
    memset (slot, 0, S_SLOT);
    memcpy (slot, S_SLOT_MAGIC, 8);
    s_le64 (slot + 8, checkpoint->generation);
    s_le32 (slot + 16, checkpoint->clean? 1: 0);
    s_le32 (slot + 20, checkpoint->page_size);
    s_le64 (slot + 24, checkpoint->device);
    s_le64 (slot + 32, checkpoint->inode);
    memcpy (slot + S_SLOT_HEAD, checkpoint->metas, 2 * (size_t) checkpoint->page_size);
    crypto_generichash (slot + S_SLOT_HEAD - 16, 16, slot, size, NULL, 0);
    int index = self->slot == 0? 1: 0;
    ssize_t wrote = pwrite (self->fd, slot, size, (off_t) index * (off_t) S_SLOT);
    if (wrote != (ssize_t) size || fdatasync (self->fd) == -1) {
        zsys_error ("kim_journal: %s: writing a checkpoint: %s", self->path,
                    wrote == -1 || wrote == (ssize_t) size? strerror (errno): "short write");
        return -KIM_E_IO;
    }
    self->slot = index;
    self->generation = checkpoint->generation;
    self->used = 0;
    return 0;
}

//  Builds the entry from the open writes into self->entry; sets *size.
static int
s_build (kim_journal_t *self, kim_journal_resolve_fn *resolve, void *arg, size_t *size)
{
    size_t body = 0;
    for (size_t at = 0; at < self->open_size; ) {
        const uint8_t *write = self->open + at;
        size_t key_size = (size_t) write [2] | (size_t) write [3] << 8;
        size_t value_size = s_get32 (write + 4);
        const void *value = write + S_WRITE_HEAD + key_size;
        if (write [0] & S_LATE) {
            int rc = resolve (arg, write [1], write + S_WRITE_HEAD, key_size, &value,
                              &value_size);
            if (rc < 0)
                return rc;
            if (rc == 0) {
                //  Deleted again later in the batch: the delete follows
                at += S_WRITE_HEAD + key_size;
                continue;
            }
        }
        if (value_size > UINT32_MAX - S_HEAD
        ||  !s_grow (&self->entry, &self->entry_max,
                     S_HEAD + body + S_WRITE_HEAD + key_size + value_size))
            return -KIM_E_NOMEM;
        uint8_t *out = self->entry + S_HEAD + body;
        memcpy (out, write, S_WRITE_HEAD + key_size);
        out [0] = (uint8_t) (write [0] & ~S_LATE);
        s_le32 (out + 4, (uint32_t) value_size);
        if (value_size)
            memcpy (out + S_WRITE_HEAD + key_size, value, value_size);
        body += S_WRITE_HEAD + key_size + value_size;
        at += S_WRITE_HEAD + key_size + ((write [0] & S_LATE)? 0: s_get32 (write + 4));
    }
    if (body > UINT32_MAX)
        return -KIM_E_NOMEM;
    uint8_t *head = self->entry;
    s_le32 (head, S_MAGIC);
    s_le64 (head + 4, self->generation);
    s_le32 (head + 12, (uint32_t) body);
    crypto_generichash_state state;
    crypto_generichash_init (&state, NULL, 0, 16);
    crypto_generichash_update (&state, head, 16);
    crypto_generichash_update (&state, head + S_HEAD, body);
    crypto_generichash_final (&state, head + 16, 16);
    *size = S_HEAD + body;
    return 0;
}

int
kim_journal_seal (kim_journal_t *self, kim_journal_resolve_fn *resolve, void *arg)
{
    self->sealed = 0;
    if (self->open_size == 0)
        return 0;
    size_t size = 0;
    int rc = s_build (self, resolve, arg, &size);
    if (rc)
        return rc;
    if (self->used + size > self->size - S_ENTRIES)
        return -KIM_E_STORE_FULL;
    self->sealed = size;
    return 0;
}

int
kim_journal_write (kim_journal_t *self)
{
    size_t size = self->sealed;
    self->sealed = 0;
    self->open_size = 0;
    if (size == 0)
        return 0;
    off_t at = (off_t) (S_ENTRIES + self->used);
    ssize_t wrote = pwrite (self->fd, self->entry, size, at);
    if (wrote != (ssize_t) size || fdatasync (self->fd) == -1) {
        zsys_error ("kim_journal: %s: writing an entry: %s", self->path,
                    wrote == -1 || wrote == (ssize_t) size? strerror (errno): "short write");
        return -KIM_E_IO;
    }
    self->used += size;
    return 0;
}

int
kim_journal_hold (kim_journal_t *self, bool hold)
{
    return flock (self->fd, hold? LOCK_EX: LOCK_UN) == 0? 0: -KIM_E_IO;
}

int
kim_journal_replay (kim_journal_t *self, uint64_t generation, kim_journal_apply_fn *fn,
                    void *arg, size_t *entries, size_t *writes)
{
    *entries = *writes = 0;
    size_t at = S_ENTRIES;
    int rc = 0;
    uint8_t head [S_HEAD];
    while (rc == 0 && at + S_HEAD <= self->size) {
        if (pread (self->fd, head, S_HEAD, (off_t) at) != S_HEAD)
            return -KIM_E_IO;
        size_t body = s_get32 (head + 12);
        if (s_get32 (head) != S_MAGIC || s_get64 (head + 4) != generation
        ||  body > self->size - at - S_HEAD)
            break;              //  the end: zeros, an older generation, or torn
        if (!s_grow (&self->entry, &self->entry_max, S_HEAD + body))
            return -KIM_E_NOMEM;
        memcpy (self->entry, head, S_HEAD);
        if (pread (self->fd, self->entry + S_HEAD, body, (off_t) (at + S_HEAD)) != (ssize_t) body)
            return -KIM_E_IO;
        uint8_t check [16];
        crypto_generichash_state state;
        crypto_generichash_init (&state, NULL, 0, 16);
        crypto_generichash_update (&state, head, 16);
        crypto_generichash_update (&state, self->entry + S_HEAD, body);
        crypto_generichash_final (&state, check, 16);
        if (sodium_memcmp (check, head + 16, 16) != 0)
            break;              //  torn: its flush never returned
        //  Checked whole before the first write is applied: a malformed
        //  body is the end, like a torn one
        const uint8_t *p = self->entry + S_HEAD, *end = p + body;
        size_t count = 0;
        while (p + S_WRITE_HEAD <= end) {
            size_t need = S_WRITE_HEAD + ((size_t) p [2] | (size_t) p [3] << 8)
                        + s_get32 (p + 4);
            if (need > (size_t) (end - p))
                break;
            p += need;
            count++;
        }
        if (p != end) {
            zsys_warning ("kim_journal: %s: entry at %zu is malformed; replay ends there",
                          self->path, at);
            break;
        }
        for (p = self->entry + S_HEAD; rc == 0 && p < end; ) {
            size_t key_size = (size_t) p [2] | (size_t) p [3] << 8;
            size_t value_size = s_get32 (p + 4);
            rc = fn (arg, p [0], p [1], p + S_WRITE_HEAD, key_size,
                     p + S_WRITE_HEAD + key_size, value_size);
            p += S_WRITE_HEAD + key_size + value_size;
        }
        if (rc == 0) {
            (*entries)++;
            *writes += count;
            at += S_HEAD + body;
        }
    }
    self->generation = generation;
    self->used = at - S_ENTRIES;
    return rc;
}

bool
kim_journal_unrecovered (const char *store_dir, const char *lock_name, char *why,
                         size_t why_size)
{
    char path [4200];
    snprintf (path, sizeof path, "%s/%s", store_dir, KIM_JOURNAL_NAME);
    kim_journal_t probe = { .path = path, .slot = -1 };
    probe.fd = open (path, O_RDONLY | O_CLOEXEC);
    if (probe.fd == -1)
        return false;           //  no journal: LMDB's file is whole as it is
    //  A broker that is starting holds the journal until it has replayed it
    //  (kim_journal_hold): wait for that, a few seconds at most. Held here
    //  while the lock is looked at, so that no broker starts in between.
    bool busy = true;
    for (int wait = 0; busy && wait < 1000; wait++) {
        busy = flock (probe.fd, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK;
        if (busy)
            usleep (10000);
    }
    if (busy) {
        close (probe.fd);
        snprintf (why, why_size, "%s: the broker is replaying this store's journal and has "
                  "not finished in 10 s; read the folder once it serves", store_dir);
        return true;
    }
    struct stat st;
    kim_journal_checkpoint_t last;
    bool unclean = fstat (probe.fd, &st) == 0 && (size_t) st.st_size >= S_ENTRIES
                && (probe.size = (size_t) st.st_size, kim_journal_last (&probe, &last) == 1)
                && !last.clean;
    free (probe.slot_bytes);
    //  A broker that holds the lock has recovered the store already
    bool held = false;
    if (unclean) {
        snprintf (path, sizeof path, "%s/%s", store_dir, lock_name);
        int lock = open (path, O_RDONLY | O_CLOEXEC);
        held = lock != -1 && flock (lock, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK;
        if (lock != -1)
            close (lock);
    }
    close (probe.fd);
    if (!unclean || held)
        return false;
    snprintf (why, why_size, "%s: the broker did not close this store and has not replayed "
              "its journal since: run kim-broker --recover with the broker's configuration "
              "(or start the broker), then read it", store_dir);
    return true;
}

//  --------------------------------------------------------------------------
//  Self test

typedef struct {
    char log [4096];
    size_t used;
} s_test_sink_t;

static int
s_test_apply (void *arg, uint8_t op, uint8_t tree, const void *key, size_t key_size,
              const void *value, size_t value_size)
{
    s_test_sink_t *sink = (s_test_sink_t *) arg;
    int n = snprintf (sink->log + sink->used, sizeof sink->log - sink->used, "%c%u:%.*s=%.*s;",
                      op, tree, (int) key_size, (const char *) key, (int) value_size,
                      (const char *) value);
    sink->used += (size_t) n;
    return 0;
}

static int
s_test_resolve (void *arg, uint8_t tree, const void *key, size_t key_size, const void **value,
                size_t *size)
{
    (void) arg;
    (void) tree;
    if (key_size == 4 && memcmp (key, "gone", 4) == 0)
        return 0;
    *value = "late";
    *size = 4;
    return 1;
}

static void
s_test_replay (kim_journal_t *journal, uint64_t generation, const char *expected,
               size_t expected_entries)
{
    s_test_sink_t sink = { "", 0 };
    size_t entries, writes;
    assert (kim_journal_replay (journal, generation, s_test_apply, &sink, &entries,
                                &writes) == 0);
    assert (entries == expected_entries);
    assert (streq (sink.log, expected));
}

static void
s_test_commit (kim_journal_t *journal)
{
    assert (kim_journal_seal (journal, s_test_resolve, NULL) == 0);
    assert (kim_journal_write (journal) == 0);
}

static void
s_test_checkpoint (kim_journal_t *journal, uint64_t generation, bool clean, char fill)
{
    uint8_t metas [2 * 4096];
    memset (metas, fill, sizeof metas);
    kim_journal_checkpoint_t checkpoint = { generation, clean, 4096, 7, 42, metas };
    assert (kim_journal_checkpoint (journal, &checkpoint) == 0);
}

void
kim_journal_test (bool verbose)
{
    (void) verbose;
    assert (sodium_init () >= 0);
    char dir [] = "/tmp/kim_journal_test.XXXXXX";
    assert (mkdtemp (dir));
    char *path = zsys_sprintf ("%s/%s", dir, KIM_JOURNAL_NAME);
    size_t size = S_ENTRIES + 4096;
    int err;
    kim_journal_t *journal = kim_journal_new (path, size, &err);
    assert (journal && err == 0);
    struct stat st;
    assert (stat (path, &st) == 0 && (size_t) st.st_size == size && (st.st_mode & 0777) == 0600);
    kim_journal_checkpoint_t last;
    assert (kim_journal_last (journal, &last) == 0);

    //  Entries of generation 1 replay in order, late values resolved, a
    //  late put whose key went again dropped
    s_test_checkpoint (journal, 1, false, 'a');
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 3, "k1", 2, "v1", 2, false) == 0);
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 4, "k2", 2, NULL, 0, true) == 0);
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 4, "gone", 4, NULL, 0, true) == 0);
    assert (kim_journal_add (journal, KIM_JOURNAL_DEL, 4, "gone", 4, NULL, 0, false) == 0);
    assert (kim_journal_pending (journal) > 0);
    s_test_commit (journal);
    assert (kim_journal_pending (journal) == 0);
    assert (kim_journal_add (journal, KIM_JOURNAL_EMPTY, 5, NULL, 0, NULL, 0, false) == 0);
    s_test_commit (journal);
    size_t two = kim_journal_used (journal);
    const char *both = "p3:k1=v1;p4:k2=late;d4:gone=;e5:=;";
    s_test_replay (journal, 1, both, 2);
    //  Another generation's entries are not this one's; a replay leaves
    //  the journal at its end, to go on from there
    s_test_replay (journal, 2, "", 0);
    assert (kim_journal_used (journal) == 0);
    s_test_replay (journal, 1, both, 2);
    assert (kim_journal_used (journal) == two);
    //  An empty entry writes nothing; a forgotten one is not written
    s_test_commit (journal);
    assert (kim_journal_used (journal) == two);
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 3, "k9", 2, "v9", 2, false) == 0);
    assert (kim_journal_seal (journal, s_test_resolve, NULL) == 0);
    kim_journal_forget (journal);
    assert (kim_journal_write (journal) == 0);
    s_test_replay (journal, 1, both, 2);

    //  A torn third entry (a byte of its body not written) ends the replay
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 3, "k3", 2, "v3", 2, false) == 0);
    s_test_commit (journal);
    int fd = open (path, O_RDWR);
    assert (fd != -1);
    assert (pwrite (fd, "X", 1, (off_t) (S_ENTRIES + kim_journal_used (journal) - 1)) == 1);
    close (fd);
    s_test_replay (journal, 1, both, 2);
    assert (kim_journal_used (journal) == two);     //  the next entry overwrites it

    //  The latest checkpoint counts; after it, the old entries behind the
    //  new first one are not replayed
    s_test_checkpoint (journal, 2, false, 'b');
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 3, "n1", 2, "w1", 2, false) == 0);
    s_test_commit (journal);
    //  An entry that does not fit after it is refused and kept
    char big [4040];
    memset (big, 'b', sizeof big);
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 3, "b1", 2, big, sizeof big, false) == 0);
    assert (kim_journal_seal (journal, s_test_resolve, NULL) == -KIM_E_STORE_FULL);
    assert (kim_journal_pending (journal) > 0);
    kim_journal_forget (journal);
    s_test_replay (journal, 2, "p3:n1=w1;", 1);
    s_test_replay (journal, 1, "", 0);
    assert (kim_journal_last (journal, &last) == 1);
    assert (last.generation == 2 && !last.clean && last.page_size == 4096
            && last.device == 7 && last.inode == 42 && last.metas [0] == 'b'
            && last.metas [2 * 4096 - 1] == 'b');

    //  A torn checkpoint leaves the one before it
    s_test_checkpoint (journal, 3, true, 'c');
    assert (kim_journal_last (journal, &last) == 1 && last.generation == 3 && last.clean);
    fd = open (path, O_RDWR);
    assert (fd != -1);
    assert (pwrite (fd, "X", 1, 100) == 1);         //  slot 0: generation 3's
    close (fd);
    assert (kim_journal_last (journal, &last) == 1 && last.generation == 2
            && last.metas [0] == 'b');

    //  ... and fits after a checkpoint
    s_test_checkpoint (journal, 4, false, 'd');
    assert (kim_journal_add (journal, KIM_JOURNAL_PUT, 3, "b1", 2, big, sizeof big, false) == 0);
    s_test_commit (journal);
    kim_journal_destroy (&journal);

    //  Reopened: the file is not written ahead again, the entries stay
    journal = kim_journal_new (path, size, &err);
    assert (journal);
    assert (kim_journal_last (journal, &last) == 1 && last.generation == 4);
    size_t entries, writes;
    s_test_sink_t sink = { "", 0 };
    assert (kim_journal_replay (journal, 4, s_test_apply, &sink, &entries, &writes) == 0);
    assert (entries == 1 && writes == 1);
    kim_journal_destroy (&journal);
    assert (unlink (path) == 0);
    assert (rmdir (dir) == 0);
    zstr_free (&path);
}
