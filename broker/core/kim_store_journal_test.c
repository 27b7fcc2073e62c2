/*  kim_store_journal_test.c — the store with its journal, on real files:
    a reader in another process sees each batch as it commits; batches
    after the last checkpoint, when the writer dies (a child killed), come
    back from the journal when the store opens again, LMDB's file first
    set back to that checkpoint; a torn last entry is left out whole; a
    journal left when the store opens without one is replayed and
    removed; a journal is not applied to another data.mdb than its own;
    the map grows under the journal; a clean close leaves nothing to
    replay.
*/
#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim_journal.h"
#include "kim_store.h"

static kim_store_t *
s_open (const char *path, bool journal, size_t map_size, size_t map_max)
{
    kim_store_config_t config = { .path = path, .journal = journal, .map_size = map_size,
                                  .map_max = map_max };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    assert (store && err == 0);
    return store;
}

//  One batch: a record "b<n>" with a payload of `size` bytes of `n`, in
//  the mailbox of "ja.x". Returns its seq.
static uint64_t
s_batch (kim_store_t *store, unsigned n, size_t size)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        assert (kim_store_begin (store) == 0);
        char body [32];
        int length = snprintf (body, sizeof body, "b%u", n);
        uint64_t seq = 0;
        assert (kim_store_append (store, KIM_RECORD_STATE, 1000 + n, (const uint8_t *) body,
                                  (size_t) length, &seq) == 0);
        uint8_t *payload = (uint8_t *) malloc (size);
        assert (payload);
        memset (payload, (int) (n & 0xff), size);
        int rc = kim_store_payload_put (store, seq, payload, size);
        free (payload);
        if (rc == 0)
            rc = kim_store_mailbox_put (store, "ja.x", seq);
        //  A write that did not fit marked the batch full: the commit
        //  grows the map and asks for the batch again
        bool retry = false;
        int committed = kim_store_commit (store, &retry);
        if (rc == 0 && committed == 0)
            return seq;
        assert (retry);
    }
    assert (false);
    return 0;
}

//  Every record 1..head is "b<seq - 1 + first>", with its payload and mail.
static void
s_check (kim_store_t *store, uint64_t head, unsigned first, size_t size)
{
    assert (kim_store_head (store) == head);
    assert (kim_store_read_begin (store) == 0);
    assert (kim_store_mailbox_count (store, "ja.x") == head);
    for (uint64_t seq = 1; seq <= head; seq++) {
        kim_record_t record;
        assert (kim_store_read (store, seq, &record) == 0);
        char body [32];
        int length = snprintf (body, sizeof body, "b%u", (unsigned) (seq - 1 + first));
        assert (record.body_size == (size_t) length && memcmp (record.body, body, record.body_size) == 0);
        const uint8_t *data;
        size_t data_size;
        assert (kim_store_payload_get (store, seq, &data, &data_size) == 0);
        if (data_size != size || !data || data [0] != (uint8_t) ((seq - 1 + first) & 0xff))
            zsys_error ("seq %" PRIu64 ": payload of %zu bytes, first %d", seq, data_size,
                        data? data [0]: -1);
        assert (data_size == size && data [0] == (uint8_t) ((seq - 1 + first) & 0xff)
                && data [size - 1] == data [0]);
    }
    kim_store_read_end (store);
}

//  In a child: opens the store with the journal, writes `count` batches,
//  and dies by SIGKILL before anything checkpoints. Returns the child's
//  status.
static void
s_child_writes_map (const char *path, unsigned count, size_t size, size_t map_size,
                    size_t map_max)
{
    pid_t pid = fork ();
    assert (pid >= 0);
    if (pid == 0) {
        kim_store_t *store = s_open (path, true, map_size, map_max);
        for (unsigned n = 1; n <= count; n++)
            s_batch (store, n, size);
        kill (getpid (), SIGKILL);
        _exit (1);
    }
    int status = 0;
    assert (waitpid (pid, &status, 0) == pid);
    if (!WIFSIGNALED (status) || WTERMSIG (status) != SIGKILL)
        zsys_error ("store_journal test: the writer ended with status %d", status);
    assert (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);
}

static void
s_child_writes (const char *path, unsigned count, size_t size)
{
    s_child_writes_map (path, count, size, 0, 0);
}

//  In a child: a reader's view of the store, its head.
static uint64_t
s_reader_head (const char *path)
{
    int fds [2];
    assert (pipe (fds) == 0);
    pid_t pid = fork ();
    assert (pid >= 0);
    if (pid == 0) {
        close (fds [0]);
        kim_store_config_t config = { .path = path, .read_only = true };
        int err = 0;
        kim_store_t *reader = kim_store_new (&config, &err);
        uint64_t head = reader? kim_store_head (reader): UINT64_MAX;
        kim_store_destroy (&reader);
        _exit (write (fds [1], &head, sizeof head) == sizeof head? 0: 1);
    }
    close (fds [1]);
    uint64_t head = UINT64_MAX;
    assert (read (fds [0], &head, sizeof head) == sizeof head);
    close (fds [0]);
    int status = 0;
    assert (waitpid (pid, &status, 0) == pid && WIFEXITED (status) && WEXITSTATUS (status) == 0);
    return head;
}

static void
s_remove_tree (const char *dir)
{
    char *command = zsys_sprintf ("rm -rf '%s'", dir);
    assert (command && system (command) == 0);
    zstr_free (&command);
}

static off_t
s_journal_end (const char *path)
{
    //  The entries' end, found by reading their heads (kim_journal.h)
    char *file = zsys_sprintf ("%s/%s", path, KIM_JOURNAL_NAME);
    int fd = open (file, O_RDONLY);
    assert (fd != -1);
    off_t at = (off_t) KIM_JOURNAL_ENTRIES_AT;
    uint8_t head [32];
    while (pread (fd, head, sizeof head, at) == sizeof head
       &&  head [0] == 0x4b && head [1] == 0x49 && head [2] == 0x4d && head [3] == 0x4a) {
        uint32_t body = (uint32_t) head [12] | (uint32_t) head [13] << 8
                      | (uint32_t) head [14] << 16 | (uint32_t) head [15] << 24;
        at += (off_t) (sizeof head + body);
    }
    close (fd);
    zstr_free (&file);
    return at;
}

static void
s_fresh (const char *dir)
{
    s_remove_tree (dir);
    assert (mkdir (dir, 0700) == 0);
}

//  The store holds batches 1..head and takes the next one in its chain;
//  then it is closed and its folder emptied for the next case.
static void
s_check_goes_on (kim_store_t **store_p, uint64_t head, const char *dir)
{
    s_check (*store_p, head, 1, 100);
    assert (s_batch (*store_p, (unsigned) head + 1, 100) == head + 1);
    s_check (*store_p, head + 1, 1, 100);
    kim_store_destroy (store_p);
    s_fresh (dir);
}

void
kim_store_journal_test (bool verbose)
{
    (void) verbose;
    assert (sodium_init () >= 0);
    char dir [] = "/tmp/kim_store_journal_test.XXXXXX";
    assert (mkdtemp (dir));
    char *path = zsys_sprintf ("%s/store", dir);
    char *journal = zsys_sprintf ("%s/%s", path, KIM_JOURNAL_NAME);

    //  A reader in another process sees every batch as it commits, though
    //  no checkpoint has flushed LMDB's file yet
    kim_store_t *store = s_open (path, true, 0, 0);
    for (unsigned n = 1; n <= 10; n++)
        assert (s_batch (store, n, 100) == n);
    assert (s_reader_head (path) == 10);
    //  An abandoned batch takes nothing with it
    assert (kim_store_begin (store) == 0);
    uint64_t seq = 0;
    assert (kim_store_append (store, KIM_RECORD_STATE, 7, (const uint8_t *) "gone", 4, &seq) == 0);
    assert (seq == 11);
    kim_store_abort (store);
    s_check (store, 10, 1, 100);
    kim_store_destroy (&store);
    //  Closed cleanly: opened again, nothing is replayed, nothing lost
    store = s_open (path, true, 0, 0);
    s_check (store, 10, 1, 100);
    kim_store_destroy (&store);
    s_fresh (dir);

    //  A writer killed after 40 small batches: opened again, LMDB's file
    //  goes back to the checkpoint made at the open (nothing in it) and the
    //  journal gives the 40 batches again, each as it was
    s_child_writes (path, 40, 100);
    //  Until then, readers refuse the folder: LMDB's file may be torn
    kim_store_config_t reader_config = { .path = path, .read_only = true };
    int reader_err = 0;
    assert (kim_store_new (&reader_config, &reader_err) == NULL && reader_err == -KIM_E_CONFIG);
    char why [512] = "";
    assert (kim_journal_unrecovered (path, KIM_STORE_LOCK_NAME, why, sizeof why));
    assert (strstr (why, "kim-broker --recover"));
    kim_log_t *log = kim_log_open (dir, why, sizeof why);  //  the audit tools' reader
    assert (!log && strstr (why, "kim-broker --recover"));
    store = s_open (path, true, 0, 0);
    assert (!kim_journal_unrecovered (path, KIM_STORE_LOCK_NAME, why, sizeof why));
    s_check_goes_on (&store, 40, dir);

    //  A torn last entry (its last byte not written) is left out whole,
    //  and the batch after takes its seq, in the chain
    s_child_writes (path, 5, 100);
    off_t end = s_journal_end (path);
    assert (end > (off_t) KIM_JOURNAL_ENTRIES_AT);
    int fd = open (journal, O_RDWR);
    assert (fd != -1);
    uint8_t byte;
    assert (pread (fd, &byte, 1, end - 1) == 1);
    byte ^= 0xff;
    assert (pwrite (fd, &byte, 1, end - 1) == 1);
    close (fd);
    store = s_open (path, true, 0, 0);
    s_check_goes_on (&store, 4, dir);

    //  A journal left by a killed writer, opened without the journal:
    //  replayed, flushed, and the file removed
    s_child_writes (path, 7, 100);
    store = s_open (path, false, 0, 0);
    s_check (store, 7, 1, 100);
    struct stat st;
    assert (stat (journal, &st) == -1 && errno == ENOENT);
    kim_store_destroy (&store);
    s_fresh (dir);

    //  A journal is not applied to another data.mdb than its own (a copy
    //  put in its place after a crash): the store does not open
    s_child_writes (path, 3, 100);
    char *data = zsys_sprintf ("%s/data.mdb", path);
    char *copy = zsys_sprintf ("cp '%s' '%s.copy' && mv '%s.copy' '%s'", data, data, data, data);
    assert (system (copy) == 0);
    kim_store_config_t config = { .path = path, .journal = true };
    int err = 0;
    assert (kim_store_new (&config, &err) == NULL && err == -KIM_E_CONFIG);
    zstr_free (&copy);
    zstr_free (&data);
    s_fresh (dir);

    //  The map grows under the journal: batches of 200 KiB into a map of
    //  1 MiB that may grow to 16; a batch that did not fit goes again, and
    //  a writer killed then leaves everything to replay into a map as small
    //  as the checkpoint's
    store = s_open (path, true, (size_t) 1 << 20, (size_t) 16 << 20);
    for (unsigned n = 1; n <= 40; n++)
        assert (s_batch (store, n, (size_t) 200 << 10) == n);
    s_check (store, 40, 1, (size_t) 200 << 10);
    kim_store_destroy (&store);
    store = s_open (path, true, (size_t) 1 << 20, (size_t) 16 << 20);
    s_check (store, 40, 1, (size_t) 200 << 10);
    kim_store_destroy (&store);
    s_fresh (dir);
    s_child_writes_map (path, 40, (size_t) 200 << 10, (size_t) 1 << 20, (size_t) 16 << 20);
    store = s_open (path, true, (size_t) 1 << 20, (size_t) 16 << 20);
    s_check (store, 40, 1, (size_t) 200 << 10);
    kim_store_destroy (&store);
    s_fresh (dir);

    //  A batch too large for the journal is made durable by a checkpoint
    store = s_open (path, true, 0, 0);
    assert (s_batch (store, 1, (size_t) 12 << 20) == 1);
    assert (s_batch (store, 2, 100) == 2);
    kim_store_destroy (&store);

    s_remove_tree (dir);
    zstr_free (&journal);
    zstr_free (&path);
}
