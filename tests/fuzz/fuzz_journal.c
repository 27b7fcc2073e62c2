/*  fuzz_journal.c — libFuzzer target for the store's journal reader.

    A broker that starts after a crash reads its journal (proto/kim_journal.c):
    the latest checkpoint slot, then every entry of its generation. Random
    bytes would never pass the BLAKE2b checks in front of each, so the
    input is a recipe: the target lays out the file as kim_journal.h
    describes it, from the input's pieces, and makes the checksums right
    where the recipe asks. The bodies (the writes) and every field are the
    input's, so the parser behind the checksums meets hostile bytes.

    Recipe: [flags u8][page u8][generation u8][slot fields 40][metas…], then
    entries [length u16 LE][flags u8][body…] to the end. Flags: 1 repair
    slot 0, 2 also write slot 1 (generation + 1, repaired likewise), 4
    repair the entries. An entry's flags: 1 leave its checksum wrong, 2 an
    older generation.

    Checked: kim_journal_last finds a repaired slot; the replay calls back
    with bytes inside the entry (ASan) and replays exactly the entries this
    target itself finds whole, in order; a write added after the replay
    goes after the last one replayed and reads back.
*/
#include <czmq.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim/kim_error.h"
#include "kim_journal.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

//  The layout, from kim_journal.h
#define S_SLOT          ((size_t) 4096 + 2 * KIM_JOURNAL_PAGE_MAX)
#define S_SLOT_HEAD     56
#define S_HEAD          32
#define S_WRITE_HEAD    8
#define S_AREA          ((size_t) 65536)
#define S_FILE          (KIM_JOURNAL_ENTRIES_AT + S_AREA)

static char s_path [128];
static uint8_t *s_file;

static void
s_cleanup (void)
{
    unlink (s_path);
    free (s_file);
}

static void
s_le32 (uint8_t *at, uint32_t value)
{
    for (int i = 0; i < 4; i++)
        at [i] = (uint8_t) (value >> (8 * i));
}

static void
s_le64 (uint8_t *at, uint64_t value)
{
    for (int i = 0; i < 8; i++)
        at [i] = (uint8_t) (value >> (8 * i));
}

static void
s_slot (uint8_t *slot, uint32_t page_size, uint64_t generation, const uint8_t *fields,
        const uint8_t *metas, size_t metas_size)
{
    memcpy (slot, "KIMJHDR1", 8);
    s_le64 (slot + 8, generation);
    memcpy (slot + 16, fields, 40);
    s_le32 (slot + 20, page_size);
    size_t size = S_SLOT_HEAD + 2 * (size_t) page_size;
    memcpy (slot + S_SLOT_HEAD, metas, metas_size < size - S_SLOT_HEAD? metas_size: size - S_SLOT_HEAD);
    memset (slot + S_SLOT_HEAD - 16, 0, 16);
    uint8_t check [16];
    crypto_generichash (check, 16, slot, size, NULL, 0);
    memcpy (slot + S_SLOT_HEAD - 16, check, 16);
}

//  Whether `body` is whole writes, as this target reads kim_journal.h.
static bool
s_whole (const uint8_t *body, size_t size, size_t *writes)
{
    size_t at = 0;
    *writes = 0;
    while (at + S_WRITE_HEAD <= size) {
        size_t need = S_WRITE_HEAD + ((size_t) body [at + 2] | (size_t) body [at + 3] << 8)
                    + ((size_t) body [at + 4] | (size_t) body [at + 5] << 8
                       | (size_t) body [at + 6] << 16 | (size_t) body [at + 7] << 24);
        if (need > size - at)
            return false;
        at += need;
        (*writes)++;
    }
    return at == size;
}

typedef struct {
    size_t writes;
    uint64_t sum;
    const uint8_t *expect_key;
    size_t expect_key_size;
    bool found;
} s_seen_t;

static int
s_apply (void *arg, uint8_t op, uint8_t tree, const void *key, size_t key_size,
         const void *value, size_t value_size)
{
    s_seen_t *seen = (s_seen_t *) arg;
    //  Touch every byte: ASan catches a key or value past the entry
    const uint8_t *k = (const uint8_t *) key, *v = (const uint8_t *) value;
    for (size_t i = 0; i < key_size; i++)
        seen->sum += k [i];
    for (size_t i = 0; i < value_size; i++)
        seen->sum += v [i];
    seen->sum += op + tree;
    if (seen->expect_key && op == KIM_JOURNAL_PUT && tree == 7
    &&  key_size == seen->expect_key_size && memcmp (key, seen->expect_key, key_size) == 0)
        seen->found = true;
    seen->writes++;
    return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (!s_path [0]) {
        //  In memory where there is a /dev/shm: each write is flushed
        const char *dir = access ("/dev/shm", W_OK) == 0? "/dev/shm": "/tmp";
        snprintf (s_path, sizeof s_path, "%s/kim-fuzz-journal-%ld", dir, (long) getpid ());
        s_file = (uint8_t *) malloc (S_FILE);
        if (!s_file || sodium_init () < 0)
            abort ();
        atexit (s_cleanup);
        //  The reader warns of every malformed entry: thousands a second here
        zsys_init ();
        FILE *sink = fopen ("/dev/null", "w");
        if (sink)
            zsys_set_logstream (sink);
    }
    memset (s_file, 0, S_FILE);
    if (size < 3)
        return 0;
    uint8_t flags = data [0];
    uint32_t page_size = 512u * (1 + data [1] % 8u);
    uint64_t generation = data [2];
    uint8_t fields [40] = { 0 };
    size_t at = 3;
    size_t take = size - at < sizeof fields? size - at: sizeof fields;
    memcpy (fields, data + at, take);
    at += take;
    size_t metas_size = size - at < 2 * (size_t) page_size? size - at: 2 * (size_t) page_size;
    const uint8_t *metas = data + at;
    at += metas_size;
    if (flags & 1)
        s_slot (s_file, page_size, generation, fields, metas, metas_size);
    else {
        memcpy (s_file, fields, sizeof fields);
        memcpy (s_file + sizeof fields, metas, metas_size);
    }
    uint64_t latest = generation;
    if ((flags & 3) == 3) {
        latest = generation + 1;
        s_slot (s_file + S_SLOT, page_size, latest, fields, metas, metas_size);
    }

    //  The entries; `expect` counts those of the latest generation that
    //  are whole from the first on
    size_t put = KIM_JOURNAL_ENTRIES_AT, expect = 0, expect_writes = 0;
    bool run = true;
    while (at + 3 <= size) {
        size_t body = (size_t) data [at] | (size_t) data [at + 1] << 8;
        uint8_t entry_flags = data [at + 2];
        at += 3;
        if (body > size - at)
            body = size - at;
        if (put + S_HEAD + body > S_FILE)
            break;
        uint8_t *head = s_file + put;
        uint64_t entry_generation = entry_flags & 2? latest - 1: latest;
        if (flags & 4) {
            s_le32 (head, 0x4a4d494bu);
            s_le64 (head + 4, entry_generation);
            s_le32 (head + 12, (uint32_t) body);
        }
        else
            memcpy (head, data + at - 3, 3);
        memcpy (head + S_HEAD, data + at, body);
        crypto_generichash_state state;
        crypto_generichash_init (&state, NULL, 0, 16);
        crypto_generichash_update (&state, head, 16);
        crypto_generichash_update (&state, head + S_HEAD, body);
        crypto_generichash_final (&state, head + 16, 16);
        if (entry_flags & 1)
            head [16] ^= 0x55;
        size_t writes;
        bool whole = (flags & 4) && !(entry_flags & 3) && s_whole (data + at, body, &writes);
        if (run && whole) {
            expect++;
            expect_writes += writes;
        }
        else
            run = false;
        put += S_HEAD + body;
        at += body;
    }

    int fd = open (s_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd == -1 || write (fd, s_file, S_FILE) != (ssize_t) S_FILE)
        abort ();
    close (fd);
    int err;
    kim_journal_t *journal = kim_journal_new (s_path, S_FILE, &err);
    if (!journal)
        abort ();
    kim_journal_checkpoint_t checkpoint;
    int found = kim_journal_last (journal, &checkpoint);
    if (found < 0 || ((flags & 1) && found != 1))
        abort ();
    if (found == 1 && (flags & 1)) {
        if (checkpoint.generation != latest || checkpoint.page_size != page_size)
            abort ();
    }
    s_seen_t seen = { 0 };
    size_t entries, writes;
    uint64_t replay_generation = found == 1? checkpoint.generation: latest;
    if (kim_journal_replay (journal, replay_generation, s_apply, &seen, &entries, &writes))
        abort ();
    if (writes != seen.writes)
        abort ();
    //  Only a repaired slot tells this target which generation counts
    if (found == 1 && (flags & 1) && (entries != expect || writes != expect_writes))
        abort ();

    //  A write after the replay goes after the last entry replayed. (What
    //  lay after a torn entry may follow it: the broker checkpoints after a
    //  replay, so it never reads on past its own new entries.)
    static const uint8_t key [] = "fuzz";
    if (kim_journal_add (journal, KIM_JOURNAL_PUT, 7, key, sizeof key, "v", 1, false)
    ||  kim_journal_seal (journal, NULL, NULL)
    ||  kim_journal_write (journal))
        abort ();
    kim_journal_destroy (&journal);
    journal = kim_journal_new (s_path, S_FILE, &err);
    if (!journal)
        abort ();
    s_seen_t again = { .expect_key = key, .expect_key_size = sizeof key };
    size_t entries_again;
    if (kim_journal_replay (journal, replay_generation, s_apply, &again, &entries_again, &writes)
    ||  entries_again < entries + 1 || !again.found)
        abort ();
    kim_journal_destroy (&journal);
    return 0;
}
