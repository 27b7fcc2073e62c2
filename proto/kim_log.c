/*  kim_log.c — the log's record format, signed checkpoints, a read-only
    reader of a broker's store (which checks the store file's structure
    before LMDB trusts it) and a streaming chain verifier.

    It exists so that there is one definition of the log format that the
    broker's store writes with and that auditors' tools read with, and so
    that `kim audit` can verify a log from the LMDB folder alone, linking
    only the protocol library: no broker internals. See include/kim/kim_log.h
    for the layout. Bodies as JSON live in kim_log_json.c.
*/
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <lmdb.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim_journal.h"
#include "kim/kim_log.h"

#define S_MAXDBS    32          //  as the store opens its environment

static const uint8_t s_zero_hash [KIM_HASH_SIZE];

static int
s_unhex_digit (int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

//  Decodes exactly `size` bytes of hex from `text`; false if malformed.
static bool
s_unhex (const char *text, uint8_t *out, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        int high = s_unhex_digit (text [2 * i]);
        int low = high < 0? -1: s_unhex_digit (text [2 * i + 1]);
        if (low < 0)
            return false;
        out [i] = (uint8_t) (high << 4 | low);
    }
    return true;
}


//  --------------------------------------------------------------------------
//  The format

const char *
kim_log_kind_name (unsigned kind)
{
#define KIM_X_NAME(name, str, num) if (kind == num) return str;
    KIM_LOG_KINDS (KIM_X_NAME)
#undef KIM_X_NAME
    return NULL;
}

unsigned
kim_log_kind_from_name (const char *name)
{
#define KIM_X_NUM(kname, str, num) if (name && strcmp (name, str) == 0) return num;
    KIM_LOG_KINDS (KIM_X_NUM)
#undef KIM_X_NUM
    return 0;
}

void
kim_log_record_hash (const uint8_t prev [KIM_HASH_SIZE], uint8_t kind, uint64_t seq,
                     uint64_t time_ms, const uint8_t *body, size_t body_size,
                     uint8_t out [KIM_HASH_SIZE])
{
    uint8_t fields [1 + 1 + 8 + 8];
    fields [0] = KIM_LOG_FORMAT;
    fields [1] = kind;
    kim_log_put_be64 (fields + 2, seq);
    kim_log_put_be64 (fields + 10, time_ms);
    crypto_generichash_state state;
    crypto_generichash_init (&state, NULL, 0, KIM_HASH_SIZE);
    crypto_generichash_update (&state, prev, KIM_HASH_SIZE);
    crypto_generichash_update (&state, fields, sizeof (fields));
    if (body_size)
        crypto_generichash_update (&state, body, body_size);
    crypto_generichash_final (&state, out, KIM_HASH_SIZE);
}

void
kim_log_record_put (uint8_t *dest, uint8_t kind, uint64_t time_ms,
                    const uint8_t hash [KIM_HASH_SIZE], const uint8_t *body, size_t body_size)
{
    dest [0] = KIM_LOG_FORMAT;
    dest [1] = kind;
    kim_log_put_be64 (dest + 2, time_ms);
    memcpy (dest + 10, hash, KIM_HASH_SIZE);
    if (body_size)
        memcpy (dest + KIM_LOG_RECORD_FIXED, body, body_size);
}

int
kim_log_record_parse (uint64_t seq, const uint8_t *value, size_t size, kim_log_record_t *record)
{
    record->seq = seq;
    if (!value || size < KIM_LOG_RECORD_FIXED || value [0] != KIM_LOG_FORMAT)
        return -KIM_E_IO;
    record->kind = value [1];
    record->time_ms = kim_log_get_be64 (value + 2);
    memcpy (record->hash, value + 10, KIM_HASH_SIZE);
    record->body_size = size - KIM_LOG_RECORD_FIXED;
    record->body = record->body_size? value + KIM_LOG_RECORD_FIXED: NULL;
    return 0;
}


//  --------------------------------------------------------------------------
//  Checkpoints

void
kim_log_key_id (const uint8_t public_key [32], char key_id [KIM_LOG_KEY_ID_SIZE + 1])
{
    uint8_t hash [KIM_HASH_SIZE];
    crypto_generichash (hash, sizeof hash, public_key, 32, NULL, 0);
    sodium_bin2hex (key_id, KIM_LOG_KEY_ID_SIZE + 1, hash, KIM_LOG_KEY_ID_SIZE / 2);
}

void
kim_log_checkpoint_message (const kim_log_checkpoint_t *self, uint8_t out [KIM_LOG_SIGNED_SIZE])
{
    memcpy (out, KIM_LOG_CHECKPOINT_DOMAIN, 16);
    kim_log_put_be64 (out + 16, self->seq);
    memcpy (out + 24, self->head, KIM_HASH_SIZE);
    kim_log_put_be64 (out + 24 + KIM_HASH_SIZE, self->time_ms);
}

//  What brokers signed before the layout was fixed: the time overwrote the
//  last 8 bytes of the head, so only head [0..24) is covered. Kept so that
//  older logs still verify; never signed any more.
void
kim_log_checkpoint_message_legacy (const kim_log_checkpoint_t *self,
                                   uint8_t out [KIM_LOG_SIGNED_SIZE_LEGACY])
{
    memcpy (out, KIM_LOG_CHECKPOINT_DOMAIN_LEGACY, 16);
    kim_log_put_be64 (out + 16, self->seq);
    memcpy (out + 24, self->head, KIM_LOG_SIGNED_SIZE_LEGACY - 24 - 8);
    kim_log_put_be64 (out + KIM_LOG_SIGNED_SIZE_LEGACY - 8, self->time_ms);
}

void
kim_log_checkpoint_sign (kim_log_checkpoint_t *self, const uint8_t secret_key [64])
{
    //  libsodium's Ed25519 secret key holds the public key in its second half
    kim_log_key_id (secret_key + 32, self->key_id);
    uint8_t message [KIM_LOG_SIGNED_SIZE];
    kim_log_checkpoint_message (self, message);
    crypto_sign_detached (self->sig, NULL, message, sizeof message, secret_key);
}

//  The fixed shape of a checkpoint body: key strings and value markers.
#define S_CP_SEQ    1
#define S_CP_HEAD   (S_CP_SEQ + 4 + 9)
#define S_CP_TIME   (S_CP_HEAD + 5 + 34)
#define S_CP_KEYID  (S_CP_TIME + 5 + 9)
#define S_CP_SIG    (S_CP_KEYID + 7 + 17)
#define S_CP_END    (S_CP_SIG + 4 + 66)

static void
s_checkpoint_frame (uint8_t *out)
{
    out [0] = 0x85;
    memcpy (out + S_CP_SEQ, "\xa3" "seq" "\xcf", 5);
    memcpy (out + S_CP_HEAD, "\xa4" "head" "\xc4\x20", 7);
    memcpy (out + S_CP_TIME, "\xa4" "time" "\xcf", 6);
    memcpy (out + S_CP_KEYID, "\xa6" "key_id" "\xb0", 8);
    memcpy (out + S_CP_SIG, "\xa3" "sig" "\xc4\x40", 6);
}

void
kim_log_checkpoint_encode (const kim_log_checkpoint_t *self, uint8_t out [KIM_LOG_CHECKPOINT_SIZE])
{
    _Static_assert (S_CP_END == KIM_LOG_CHECKPOINT_SIZE, "checkpoint layout");
    s_checkpoint_frame (out);
    kim_log_put_be64 (out + S_CP_SEQ + 5, self->seq);
    memcpy (out + S_CP_HEAD + 7, self->head, KIM_HASH_SIZE);
    kim_log_put_be64 (out + S_CP_TIME + 6, self->time_ms);
    memcpy (out + S_CP_KEYID + 8, self->key_id, KIM_LOG_KEY_ID_SIZE);
    memcpy (out + S_CP_SIG + 6, self->sig, KIM_SIG_SIZE);
}

int
kim_log_checkpoint_decode (kim_log_checkpoint_t *self, const uint8_t *body, size_t size)
{
    uint8_t frame [KIM_LOG_CHECKPOINT_SIZE];
    memset (frame, 0, sizeof frame);
    s_checkpoint_frame (frame);
    if (!body || size != KIM_LOG_CHECKPOINT_SIZE || body [0] != frame [0]
    ||  memcmp (body + S_CP_SEQ, frame + S_CP_SEQ, 5) != 0
    ||  memcmp (body + S_CP_HEAD, frame + S_CP_HEAD, 7) != 0
    ||  memcmp (body + S_CP_TIME, frame + S_CP_TIME, 6) != 0
    ||  memcmp (body + S_CP_KEYID, frame + S_CP_KEYID, 8) != 0
    ||  memcmp (body + S_CP_SIG, frame + S_CP_SIG, 6) != 0)
        return -KIM_E_MALFORMED;
    //  key_id is lowercase hex: anything else (a NUL byte, say) would print
    //  as another key than the one compared
    for (size_t i = 0; i < KIM_LOG_KEY_ID_SIZE; i++) {
        uint8_t c = body [S_CP_KEYID + 8 + i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return -KIM_E_MALFORMED;
    }
    self->seq = kim_log_get_be64 (body + S_CP_SEQ + 5);
    memcpy (self->head, body + S_CP_HEAD + 7, KIM_HASH_SIZE);
    self->time_ms = kim_log_get_be64 (body + S_CP_TIME + 6);
    memcpy (self->key_id, body + S_CP_KEYID + 8, KIM_LOG_KEY_ID_SIZE);
    self->key_id [KIM_LOG_KEY_ID_SIZE] = 0;
    memcpy (self->sig, body + S_CP_SIG + 6, KIM_SIG_SIZE);
    return 0;
}

int
kim_log_checkpoint_layout (const kim_log_checkpoint_t *self, const uint8_t public_key [32])
{
    uint8_t message [KIM_LOG_SIGNED_SIZE];
    kim_log_checkpoint_message (self, message);
    if (crypto_sign_verify_detached (self->sig, message, sizeof message, public_key) == 0)
        return KIM_LOG_CHECKPOINT_V2;
    uint8_t legacy [KIM_LOG_SIGNED_SIZE_LEGACY];
    kim_log_checkpoint_message_legacy (self, legacy);
    if (crypto_sign_verify_detached (self->sig, legacy, sizeof legacy, public_key) == 0)
        return KIM_LOG_CHECKPOINT_V1;
    return 0;
}

bool
kim_log_checkpoint_verify (const kim_log_checkpoint_t *self, const uint8_t public_key [32])
{
    return kim_log_checkpoint_layout (self, public_key) != 0;
}

//  Reads the first line of a small text file into `line` (without newline).
static int
s_read_line (const char *path, char *line, size_t size)
{
    FILE *file = fopen (path, "r");
    if (!file)
        return errno == ENOENT? -KIM_E_NOT_FOUND: -KIM_E_IO;
    bool ok = fgets (line, (int) size, file) != NULL;
    fclose (file);
    if (!ok)
        return -KIM_E_IO;
    line [strcspn (line, "\r\n")] = 0;
    return 0;
}

int
kim_log_load_public_key (const char *path, uint8_t public_key [32], char *why, size_t why_size)
{
    char line [160];
    int rc = s_read_line (path, line, sizeof line);
    if (rc) {
        snprintf (why, why_size, "%s: cannot read the broker's public signing key: %s",
                  path, rc == -KIM_E_NOT_FOUND? "no such file": "unreadable");
        return -KIM_E_KEY;
    }
    if (strlen (line) != 64 || !s_unhex (line, public_key, 32)) {
        snprintf (why, why_size, "%s: not a public signing key (expected 64 hex characters)",
                  path);
        return -KIM_E_KEY;
    }
    return 0;
}

int
kim_log_load_checkpoint_file (const char *path, kim_log_checkpoint_t *checkpoint)
{
    char line [2 * KIM_LOG_CHECKPOINT_SIZE + 8];
    int rc = s_read_line (path, line, sizeof line);
    if (rc)
        return rc;
    uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
    if (strlen (line) != 2 * KIM_LOG_CHECKPOINT_SIZE
    ||  !s_unhex (line, body, sizeof body)
    ||  kim_log_checkpoint_decode (checkpoint, body, sizeof body))
        return -KIM_E_IO;
    return 0;
}


//  --------------------------------------------------------------------------
//  Reading a store

struct _kim_log_t {
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn;               //  the snapshot, reset between uses
    bool txn_live;
    MDB_cursor *cursor;
    bool positioned;            //  the cursor sits on the next record to return
    bool at_end;                //  the seek found nothing: next returns 0
    char path [4096];
};

//  A store copied short (a truncated backup, a full disk) has pages its meta
//  page points to beyond the end of the file: LMDB would read them through
//  its map and die of SIGBUS. Refuse such a file with a clear error first.
//  (LMDB trusts the pages it has; a file scrambled inside is caught by the
//  chain only as far as LMDB can walk it.)
static int
s_check_size (kim_log_t *self, char *why, size_t why_size)
{
    MDB_envinfo info;
    MDB_stat stat_;
    char file [4200];
    snprintf (file, sizeof file, "%s/data.mdb", self->path);
    struct stat st;
    if (mdb_env_info (self->env, &info) || mdb_env_stat (self->env, &stat_)
    ||  stat (file, &st) != 0) {
        snprintf (why, why_size, "%s: cannot read the store's size", self->path);
        return -KIM_E_IO;
    }
    uint64_t needed = ((uint64_t) info.me_last_pgno + 1) * stat_.ms_psize;
    if ((uint64_t) st.st_size < needed) {
        snprintf (why, why_size, "%s: the store is truncated: data.mdb has %" PRIu64
                  " bytes, its last page ends at byte %" PRIu64, self->path,
                  (uint64_t) st.st_size, needed);
        return -KIM_E_IO;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  A structural check of the store's pages
//
//  LMDB trusts the pages of its file: a data.mdb scrambled inside (a node
//  that claims duplicates, an offset past its page, a child page that is no
//  page of the tree) makes it read or write wild addresses, and the tool
//  dies. Before anything reads the log, this walks the pages of the main
//  table and of the log table in the snapshot and checks every page header,
//  node offset, node size, child page number and overflow run against the
//  file, each page at most once. It reads the on-disk format of LMDB 0.9
//  (data format version 1, 64-bit): page header {u64 pgno, u16 pad, u16
//  flags, u16 lower, u16 upper} then u16 node offsets; node {u16 lo, u16 hi,
//  u16 flags, u16 ksize, key, data}; a table record (MDB_db) is 48 bytes
//  with its root page at offset 40; the meta page holds the main table's
//  record at offset 88 and its txnid at 144. Costs one pass over the log's
//  pages, which verify and replay read anyway.

#define S_PAGEHDR       16
#define S_P_BRANCH      0x01
#define S_P_LEAF        0x02
#define S_P_OVERFLOW    0x04
#define S_F_BIGDATA     0x01
#define S_F_SUBDATA     0x02
#define S_DB_SIZE       48
#define S_DEPTH_MAX     32

typedef struct {
    const uint8_t *map;
    size_t psize;
    uint64_t last_pgno;
    uint8_t *seen;              //  one bit per page
    bool main;                  //  walking the main table (values are MDB_db)
    uint64_t pgno;              //  the first bad page
    const char *what;
} s_walk_t;

static uint16_t
s_u16 (const uint8_t *p)
{
    uint16_t v;
    memcpy (&v, p, sizeof v);
    return v;
}

static uint64_t
s_u64 (const uint8_t *p)
{
    uint64_t v;
    memcpy (&v, p, sizeof v);
    return v;
}

static bool
s_bad (s_walk_t *w, uint64_t pgno, const char *what)
{
    w->pgno = pgno;
    w->what = what;
    return false;
}

//  Claims page run [pgno, pgno + pages) for this walk.
static bool
s_claim (s_walk_t *w, uint64_t pgno, uint64_t pages)
{
    if (pgno < 2 || pages == 0 || pgno > w->last_pgno || pages > w->last_pgno - pgno + 1)
        return s_bad (w, pgno, "a page number outside the file");
    for (uint64_t p = pgno; p < pgno + pages; p++) {
        if (w->seen [p / 8] & (1u << (p % 8)))
            return s_bad (w, pgno, "a page reached twice");
        w->seen [p / 8] |= (uint8_t) (1u << (p % 8));
    }
    return true;
}

static bool
s_walk_page (s_walk_t *w, uint64_t pgno, int depth)
{
    if (depth > S_DEPTH_MAX)
        return s_bad (w, pgno, "a tree deeper than any store");
    if (!s_claim (w, pgno, 1))
        return false;
    const uint8_t *page = w->map + pgno * w->psize;
    uint16_t flags = s_u16 (page + 10) & 0x7f;
    uint16_t lower = s_u16 (page + 12), upper = s_u16 (page + 14);
    if (s_u64 (page) != pgno)
        return s_bad (w, pgno, "a page header with another page's number");
    if (flags != S_P_BRANCH && flags != S_P_LEAF)
        return s_bad (w, pgno, "a page that is neither branch nor leaf");
    if (lower < S_PAGEHDR || lower % 2 || lower > upper || upper > w->psize)
        return s_bad (w, pgno, "a page with bad bounds");
    //  LMDB never keeps an empty page in a tree (an emptied table's root
    //  is P_INVALID), and its cursor takes the last node of a page it
    //  lands on: in an empty one that is an offset read from nowhere.
    size_t count = (size_t) (lower - S_PAGEHDR) / 2;
    if (count == 0)
        return s_bad (w, pgno, flags == S_P_BRANCH? "an empty branch page": "an empty leaf page");
    for (size_t i = 0; i < count; i++) {
        size_t at = s_u16 (page + S_PAGEHDR + 2 * i);
        if (at < upper || at % 2 || at + 8 > w->psize)
            return s_bad (w, pgno, "a node offset outside its page");
        const uint8_t *node = page + at;
        uint16_t lo = s_u16 (node), hi = s_u16 (node + 2);
        uint16_t node_flags = s_u16 (node + 4), ksize = s_u16 (node + 6);
        if (at + 8 + ksize > w->psize)
            return s_bad (w, pgno, "a key past the end of its page");
        if (flags == S_P_BRANCH) {
            uint64_t child = lo | (uint64_t) hi << 16 | (uint64_t) node_flags << 32;
            if (!s_walk_page (w, child, depth + 1))
                return false;
            continue;
        }
        size_t dsize = lo | (size_t) hi << 16;
        if (w->main) {
            //  Named tables: a key and an MDB_db record, inline
            if (node_flags != S_F_SUBDATA || dsize != S_DB_SIZE
            ||  at + 8 + ksize + dsize > w->psize)
                return s_bad (w, pgno, "a table record of the wrong shape");
            continue;
        }
        if (ksize != 8)
            return s_bad (w, pgno, "a log key that is not 8 bytes");
        if (node_flags == 0) {
            if (at + 8 + ksize + dsize > w->psize)
                return s_bad (w, pgno, "a record past the end of its page");
        }
        else
        if (node_flags == S_F_BIGDATA) {
            if (at + 8 + ksize + 8 > w->psize)
                return s_bad (w, pgno, "an overflow pointer past the end of its page");
            uint64_t first = s_u64 (node + 8 + ksize);
            if (first < 2 || first > w->last_pgno)
                return s_bad (w, pgno, "an overflow page outside the file");
            const uint8_t *over = w->map + first * w->psize;
            uint32_t pages;
            memcpy (&pages, over + 12, sizeof pages);
            if (s_u64 (over) != first || (s_u16 (over + 10) & 0x7f) != S_P_OVERFLOW
            ||  (uint64_t) pages * w->psize < dsize + S_PAGEHDR)
                return s_bad (w, first, "a bad overflow page");
            if (!s_claim (w, first, pages))
                return false;
        }
        else
            return s_bad (w, pgno, "a log record with table or duplicate flags");
    }
    return true;
}

//  Walks one table from its root (P_INVALID, all ones: an empty table).
static bool
s_walk_table (s_walk_t *w, uint64_t root, bool main)
{
    w->main = main;
    if (root == UINT64_MAX)
        return true;
    return s_walk_page (w, root, 0);
}

//  LMDB takes the page size and the end of the store from the meta pages
//  and maps the file by them: a meta page claiming a page size or a last
//  page past the end of the file crashes mdb_env_open itself. Checks both
//  meta pages, as LMDB will read them, before LMDB opens the file.
static int
s_check_meta (kim_log_t *self, char *why, size_t why_size)
{
    char file [4200];
    snprintf (file, sizeof file, "%s/data.mdb", self->path);
    FILE *handle = fopen (file, "rb");
    if (!handle)
        return 0;               //  no file: mdb_env_open names the problem
    struct stat st;
    uint8_t meta [2][160];
    bool ok = fstat (fileno (handle), &st) == 0
           && fread (meta [0], 1, sizeof meta [0], handle) == sizeof meta [0];
    uint32_t psize = 0;
    if (ok)
        memcpy (&psize, meta [0] + 40, sizeof psize);
    //  LMDB reads the second meta page at the first one's page size
    ok = ok && psize >= 512 && psize <= 65536 && (psize & (psize - 1)) == 0
       && (uint64_t) st.st_size >= 2 * (uint64_t) psize
       && fseek (handle, (long) psize, SEEK_SET) == 0
       && fread (meta [1], 1, sizeof meta [1], handle) == sizeof meta [1];
    fclose (handle);
    for (int i = 0; ok && i < 2; i++) {
        uint32_t magic, version, page_size;
        memcpy (&magic, meta [i] + 16, sizeof magic);
        memcpy (&version, meta [i] + 20, sizeof version);
        memcpy (&page_size, meta [i] + 40, sizeof page_size);
        uint64_t last = s_u64 (meta [i] + 136);
        ok = magic == 0xBEEFC0DE && version == 1 && page_size == psize
          && last < (uint64_t) st.st_size / psize;
    }
    if (ok || st.st_size == 0)
        return 0;               //  an empty file: mdb_env_open names it
    snprintf (why, why_size, "%s: the store is damaged or truncated: its meta pages do not "
              "describe data.mdb (%" PRIu64 " bytes)", self->path, (uint64_t) st.st_size);
    return -KIM_E_IO;
}

static int
s_check_pages (kim_log_t *self, char *why, size_t why_size)
{
    MDB_envinfo info;
    MDB_stat stat_;
    MDB_txn *txn = NULL;
    if (mdb_env_info (self->env, &info) || mdb_env_stat (self->env, &stat_)
    ||  stat_.ms_psize < 512 || mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn)) {
        snprintf (why, why_size, "%s: cannot read the store", self->path);
        return -KIM_E_IO;
    }
    //  LMDB does not say where its map is: map the file once more, read
    //  only. The snapshot's pages stay put while `txn` lives.
    char file [4200];
    snprintf (file, sizeof file, "%s/data.mdb", self->path);
    int fd = open (file, O_RDONLY);
    struct stat st;
    void *map = MAP_FAILED;
    if (fd >= 0 && fstat (fd, &st) == 0 && st.st_size > 0)
        map = mmap (NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (fd >= 0)
        close (fd);
    if (map == MAP_FAILED) {
        mdb_txn_abort (txn);
        snprintf (why, why_size, "%s: cannot map the store: %s", self->path, strerror (errno));
        return -KIM_E_IO;
    }
    //  A read transaction uses the meta page its txnid's parity names (as
    //  LMDB picks it), whatever the other one says.
    uint64_t file_pages = (uint64_t) st.st_size / stat_.ms_psize;
    uint64_t txnid = (uint64_t) mdb_txn_id (txn);
    const uint8_t *meta = (const uint8_t *) map + (txnid & 1) * stat_.ms_psize;
    bool ok = file_pages >= 2;
    bool live = false;
    if (ok && s_u64 (meta + 144) != txnid) {
        //  A newer txnid: a broker wrote since our snapshot began, which
        //  is no damage. Anything else is.
        live = s_u64 (meta + 144) > txnid;
        ok = live;
    }
    s_walk_t walk = { (const uint8_t *) map, stat_.ms_psize, ok? s_u64 (meta + 136): 0,
                      NULL, false, txnid & 1, "a meta page that is not the snapshot's" };
    if (ok && !live) {
        if (walk.last_pgno > file_pages - 1)
            walk.last_pgno = file_pages - 1;
        walk.seen = (uint8_t *) calloc (walk.last_pgno / 8 + 1, 1);
        ok = walk.seen != NULL;
        if (!ok)
            walk.what = NULL;
    }
    //  The main table, from the meta page
    if (ok && !live)
        ok = s_u16 (meta + 88 + 4) == 0
           ? s_walk_table (&walk, s_u64 (meta + 88 + 40), true)
           : s_bad (&walk, txnid & 1, "a main table with flags");
    //  The log table's root, from its record in the main table
    //  (none: the open says "not a kim store" next)
    MDB_dbi main_dbi;
    MDB_val key = { 3, (void *) "log" }, value;
    if (live) {
        mdb_txn_abort (txn);
        munmap (map, (size_t) st.st_size);
        return 0;
    }
    int rc = ok? mdb_dbi_open (txn, NULL, 0, &main_dbi): 0;
    if (ok && rc == 0)
        rc = mdb_get (txn, main_dbi, &key, &value);
    //  The log table is a plain one (no duplicates, byte-order keys)
    if (ok && rc == 0 && value.mv_size == S_DB_SIZE
    &&  s_u16 ((const uint8_t *) value.mv_data + 4) != 0)
        ok = s_bad (&walk, 0, "a log table with flags");
    else
    if (ok && rc == 0 && value.mv_size == S_DB_SIZE)
        ok = s_walk_table (&walk, s_u64 ((const uint8_t *) value.mv_data + 40), false);
    else
    if (ok && rc != MDB_NOTFOUND)
        ok = s_bad (&walk, 0, "no readable record of the log table");
    mdb_txn_abort (txn);
    munmap (map, (size_t) st.st_size);
    free (walk.seen);
    if (ok)
        return 0;
    if (!walk.what)
        snprintf (why, why_size, "%s: out of memory", self->path);
    else
        snprintf (why, why_size, "%s: the store is damaged: %s (page %" PRIu64 ")",
                  self->path, walk.what, walk.pgno);
    return -KIM_E_IO;
}

kim_log_t *
kim_log_open (const char *data_dir, char *why, size_t why_size)
{
    kim_log_t *self = (kim_log_t *) calloc (1, sizeof (kim_log_t));
    if (!self) {
        snprintf (why, why_size, "out of memory");
        return NULL;
    }
    snprintf (self->path, sizeof self->path, "%s/" KIM_LOG_STORE_DIR, data_dir);
    const char *what = "creating the environment";
    int rc = mdb_env_create (&self->env);
    if (rc == 0) {
        what = "opening the store";
        rc = mdb_env_set_maxdbs (self->env, S_MAXDBS);
    }
    //  A journal still to replay (kim_journal.h): the file may be torn
    if (rc == 0 && (kim_journal_unrecovered (self->path, "broker.lock", why, why_size)
                ||  s_check_meta (self, why, why_size))) {
        kim_log_close (&self);
        return NULL;
    }
    if (rc == 0)
        rc = mdb_env_open (self->env, self->path, MDB_RDONLY | MDB_NOTLS, 0600);
    if (rc == EACCES || rc == EROFS) {
        //  No right to LMDB's lock file (a copy on read-only media, a folder
        //  an auditor may only read): read without it. Safe while no broker
        //  writes the store, which is the case for a copy; a running
        //  broker's folder needs write access to store/lock.mdb.
        mdb_env_close (self->env);
        self->env = NULL;
        rc = mdb_env_create (&self->env);
        if (rc == 0)
            rc = mdb_env_set_maxdbs (self->env, S_MAXDBS);
        if (rc == 0)
            rc = mdb_env_open (self->env, self->path, MDB_RDONLY | MDB_NOTLS | MDB_NOLOCK, 0600);
        if (rc == 0)
            fprintf (stderr, "note: %s: no write access to its lock file, read without it "
                     "(right for a copy; a running broker's store needs it)\n", self->path);
    }
    //  Before LMDB reads a table: a damaged file must not crash it
    if (rc == 0
    &&  (s_check_size (self, why, why_size) || s_check_pages (self, why, why_size))) {
        kim_log_close (&self);
        return NULL;
    }
    MDB_txn *txn = NULL;
    if (rc == 0) {
        what = "starting a read transaction";
        rc = mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn);
    }
    if (rc == 0) {
        what = "opening the log table";
        rc = mdb_dbi_open (txn, "log", 0, &self->dbi);
        if (rc == 0)
            rc = mdb_txn_commit (txn);      //  keeps the handle
        else
            mdb_txn_abort (txn);
    }
    if (rc) {
        snprintf (why, why_size, "%s: %s: %s%s", self->path, what, mdb_strerror (rc),
                  rc == MDB_NOTFOUND? " (not a kim store)": "");
        kim_log_close (&self);
        return NULL;
    }
    return self;
}

void
kim_log_close (kim_log_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_log_t *self = *self_p;
    if (self->cursor)
        mdb_cursor_close (self->cursor);
    if (self->txn)
        mdb_txn_abort (self->txn);
    if (self->env)
        mdb_env_close (self->env);
    free (self);
    *self_p = NULL;
}

void
kim_log_release (kim_log_t *self)
{
    if (self->txn_live) {
        mdb_txn_reset (self->txn);
        self->txn_live = false;
    }
    self->positioned = false;
    self->at_end = false;
}

//  A fresh snapshot; adopts a map the broker grew meanwhile.
static int
s_snapshot (kim_log_t *self)
{
    kim_log_release (self);
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (self->txn)
            rc = mdb_txn_renew (self->txn);
        else
            rc = mdb_txn_begin (self->env, NULL, MDB_RDONLY, &self->txn);
        if (rc != MDB_MAP_RESIZED)
            break;
        if (self->txn) {
            mdb_txn_abort (self->txn);
            self->txn = NULL;
            if (self->cursor) {
                mdb_cursor_close (self->cursor);
                self->cursor = NULL;
            }
        }
        mdb_env_set_mapsize (self->env, 0);
    }
    if (rc)
        return -KIM_E_IO;
    self->txn_live = true;
    rc = self->cursor? mdb_cursor_renew (self->txn, self->cursor)
                     : mdb_cursor_open (self->txn, self->dbi, &self->cursor);
    return rc? -KIM_E_IO: 0;
}

static int
s_parse (const MDB_val *key, const MDB_val *value, kim_log_record_t *record)
{
    if (key->mv_size != 8) {
        record->seq = 0;
        return -KIM_E_IO;
    }
    return kim_log_record_parse (kim_log_get_be64 ((const uint8_t *) key->mv_data),
                                 (const uint8_t *) value->mv_data, value->mv_size, record);
}

int
kim_log_seek (kim_log_t *self, uint64_t seq, uint64_t *head)
{
    int rc = s_snapshot (self);
    if (rc)
        return rc;
    MDB_val key, value;
    if (head) {
        rc = mdb_cursor_get (self->cursor, &key, &value, MDB_LAST);
        *head = rc == 0 && key.mv_size == 8? kim_log_get_be64 ((const uint8_t *) key.mv_data): 0;
        if (rc && rc != MDB_NOTFOUND)
            return -KIM_E_IO;
    }
    uint8_t bytes [8];
    kim_log_put_be64 (bytes, seq);
    key.mv_size = sizeof bytes;
    key.mv_data = bytes;
    rc = mdb_cursor_get (self->cursor, &key, &value, MDB_SET_RANGE);
    if (rc && rc != MDB_NOTFOUND)
        return -KIM_E_IO;
    self->positioned = rc == 0;
    self->at_end = rc == MDB_NOTFOUND;     //  past the end until the next seek
    return 0;
}

int
kim_log_next (kim_log_t *self, kim_log_record_t *record)
{
    if (!self->txn_live)
        return -KIM_E_ARGS;
    if (self->at_end)
        return 0;
    MDB_val key, value;
    int rc;
    if (self->positioned) {
        rc = mdb_cursor_get (self->cursor, &key, &value, MDB_GET_CURRENT);
        self->positioned = false;
    }
    else
        rc = mdb_cursor_get (self->cursor, &key, &value, MDB_NEXT);
    if (rc == MDB_NOTFOUND) {
        self->at_end = true;
        return 0;
    }
    if (rc)
        return -KIM_E_IO;
    rc = s_parse (&key, &value, record);
    return rc? rc: 1;
}

int
kim_log_get (kim_log_t *self, uint64_t seq, kim_log_record_t *record)
{
    if (!self->txn_live) {
        int rc = s_snapshot (self);
        if (rc)
            return rc;
    }
    uint8_t bytes [8];
    kim_log_put_be64 (bytes, seq);
    MDB_val key = { sizeof bytes, bytes }, value;
    int rc = mdb_get (self->txn, self->dbi, &key, &value);
    if (rc == MDB_NOTFOUND)
        return -KIM_E_NOT_FOUND;
    if (rc)
        return -KIM_E_IO;
    return s_parse (&key, &value, record);
}


//  --------------------------------------------------------------------------
//  Verifying

static int
s_fail (kim_log_verify_t *self, uint64_t seq, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

static int
s_fail (kim_log_verify_t *self, uint64_t seq, const char *format, ...)
{
    self->failed = true;
    self->bad_seq = seq;
    va_list args;
    va_start (args, format);
    vsnprintf (self->why, sizeof self->why, format, args);
    va_end (args);
    return -KIM_E_VERIFY_FAILED;
}

void
kim_log_verify_init (kim_log_verify_t *self, const uint8_t *public_key, uint64_t from_seq,
                     const uint8_t *prev)
{
    memset (self, 0, sizeof *self);
    if (public_key)
        kim_log_verify_add_key (self, public_key);
    if (from_seq < 1)
        from_seq = 1;
    self->first = from_seq;
    self->last = from_seq - 1;
    self->anchored = prev || from_seq == 1;
    memcpy (self->prev, prev? prev: s_zero_hash, KIM_HASH_SIZE);
}

int
kim_log_verify_add_key (kim_log_verify_t *self, const uint8_t public_key [32])
{
    if (self->key_count == KIM_LOG_VERIFY_KEYS)
        return -KIM_E_ARGS;
    memcpy (self->keys [self->key_count++], public_key, 32);
    return 0;
}

//  The trusted key whose id a checkpoint names, or NULL.
static const uint8_t *
s_trusted_key (const kim_log_verify_t *self, const char *key_id)
{
    for (size_t i = 0; i < self->key_count; i++) {
        char id [KIM_LOG_KEY_ID_SIZE + 1];
        kim_log_key_id (self->keys [i], id);
        if (strcmp (id, key_id) == 0)
            return self->keys [i];
    }
    return NULL;
}

int
kim_log_verify_step (kim_log_verify_t *self, const kim_log_record_t *record)
{
    if (self->failed)
        return -KIM_E_VERIFY_FAILED;
    uint64_t expected = self->last + 1;
    bool trust_first = !self->anchored && self->records == 0;
    if (trust_first && record->seq >= self->first)
        expected = record->seq;
    if (record->seq > expected)
        return s_fail (self, expected, "record %" PRIu64 " is missing (the log jumps from %"
                       PRIu64 " to %" PRIu64 ")", expected, self->last, record->seq);
    if (record->seq < expected)
        return s_fail (self, expected, "records out of order: %" PRIu64 " follows %" PRIu64,
                       record->seq, self->last);
    if (!trust_first) {
        uint8_t hash [KIM_HASH_SIZE];
        kim_log_record_hash (self->prev, record->kind, record->seq, record->time_ms,
                             record->body, record->body_size, hash);
        if (memcmp (hash, record->hash, KIM_HASH_SIZE) != 0)
            return s_fail (self, record->seq, "hash mismatch: record %" PRIu64 " was altered, "
                           "or records before it were removed or reordered", record->seq);
    }
    if (record->kind == KIM_LOG_CHECKPOINT) {
        kim_log_checkpoint_t checkpoint;
        if (kim_log_checkpoint_decode (&checkpoint, record->body, record->body_size))
            return s_fail (self, record->seq, "checkpoint %" PRIu64 " is malformed", record->seq);
        if (trust_first)
            ;   //  the head it covers is before our anchor: the signature still counts
        else
        if (checkpoint.seq != record->seq - 1
        ||  memcmp (checkpoint.head, self->prev, KIM_HASH_SIZE) != 0)
            return s_fail (self, record->seq, "checkpoint %" PRIu64 " covers seq %" PRIu64
                           " with a head hash the log does not have", record->seq,
                           checkpoint.seq);
        if (self->key_count) {
            const uint8_t *key = s_trusted_key (self, checkpoint.key_id);
            if (!key && self->key_count == 1) {
                char key_id [KIM_LOG_KEY_ID_SIZE + 1];
                kim_log_key_id (self->keys [0], key_id);
                return s_fail (self, record->seq, "checkpoint %" PRIu64 " is signed by key %s, "
                               "not by the broker's key %s", record->seq, checkpoint.key_id,
                               key_id);
            }
            if (!key)
                return s_fail (self, record->seq, "checkpoint %" PRIu64 " is signed by key %s, "
                               "none of the %zu keys given", record->seq, checkpoint.key_id,
                               self->key_count);
            int layout = kim_log_checkpoint_layout (&checkpoint, key);
            if (layout == 0)
                return s_fail (self, record->seq, "checkpoint %" PRIu64 " has a bad signature",
                               record->seq);
            //  A broker that signs the current layout never goes back to the
            //  legacy one: a legacy checkpoint after a current one is forged
            //  or spliced in.
            if (layout == KIM_LOG_CHECKPOINT_V1 && self->current_seen)
                return s_fail (self, record->seq, "checkpoint %" PRIu64 " is signed in the legacy "
                               "layout after checkpoints in the current one", record->seq);
            if (layout == KIM_LOG_CHECKPOINT_V2)
                self->current_seen = true;
            else
                self->legacy++;
            self->sealed = checkpoint.seq;
            //  The checkpoint record seals itself too when its signature
            //  covers all of it: seq and body always, its time when it is
            //  the checkpoint's (as the broker writes it). So a quiet log
            //  that ends with a checkpoint is sealed to its last record.
            if (record->time_ms == checkpoint.time_ms)
                self->sealed = record->seq;
        }
        self->checkpoints++;
    }
    memcpy (self->prev, record->hash, KIM_HASH_SIZE);
    self->last = record->seq;
    self->records++;
    return 0;
}

int
kim_log_verify_end (kim_log_verify_t *self, const kim_log_checkpoint_t *outside,
                    const uint8_t *hash_at_seq)
{
    if (self->failed || !outside)
        return self->failed? -KIM_E_VERIFY_FAILED: 0;
    const uint8_t *key = s_trusted_key (self, outside->key_id);
    int layout = key? kim_log_checkpoint_layout (outside, key): 0;
    if (self->key_count
    &&  (layout == 0 || (layout == KIM_LOG_CHECKPOINT_V1 && self->current_seen)))
        return s_fail (self, outside->seq, "the checkpoint held outside the log (seq %" PRIu64
                       ") has a bad signature", outside->seq);
    if (outside->seq > self->last)
        return s_fail (self, self->last + 1, "the log ends at seq %" PRIu64 " but a signed "
                       "checkpoint covers up to seq %" PRIu64 ": records %" PRIu64 "..%" PRIu64
                       " were cut off", self->last, outside->seq, self->last + 1, outside->seq);
    if (hash_at_seq && memcmp (hash_at_seq, outside->head, KIM_HASH_SIZE) != 0)
        return s_fail (self, outside->seq, "record %" PRIu64 " differs from the signed "
                       "checkpoint held outside the log", outside->seq);
    if (self->key_count && outside->seq > self->sealed)
        self->sealed = outside->seq;
    return 0;
}

//  Verifies the records from `from` to the end of a new snapshot.
static int
s_verify_from (kim_log_t *log, uint64_t from, kim_log_verify_t *result)
{
    int rc = kim_log_seek (log, from, NULL);
    kim_log_record_t record;
    while (rc == 0) {
        int more = kim_log_next (log, &record);
        if (more == 0)
            break;
        if (more < 0) {
            rc = s_fail (result, record.seq, "record %" PRIu64 " is malformed", record.seq);
            break;
        }
        rc = kim_log_verify_step (result, &record);
    }
    return rc;
}

int
kim_log_verify_store (const char *data_dir, const uint8_t *public_key, kim_log_verify_t *result)
{
    kim_log_verify_init (result, public_key, 1, NULL);
    char why [300];
    kim_log_t *log = kim_log_open (data_dir, why, sizeof why);
    if (!log) {
        snprintf (result->why, sizeof result->why, "%.190s", why);
        result->failed = true;
        return -KIM_E_IO;
    }
    int rc = s_verify_from (log, 1, result);
    char path [4200];
    snprintf (path, sizeof path, "%s/" KIM_LOG_CHECKPOINT_FILE, data_dir);
    kim_log_checkpoint_t outside;
    if (rc == 0 && kim_log_load_checkpoint_file (path, &outside) == 0) {
        //  A running broker saves the file once the records it covers are
        //  committed: records beyond this snapshot came since, and a new
        //  snapshot, taken after the file was read, holds them
        if (outside.seq > result->last)
            rc = s_verify_from (log, result->last + 1, result);
        kim_log_record_t record;
        uint8_t *hash = NULL;
        if (rc == 0 && outside.seq <= result->last
        &&  kim_log_get (log, outside.seq, &record) == 0)
            hash = record.hash;
        if (rc == 0)
            rc = kim_log_verify_end (result, &outside, hash);
    }
    kim_log_close (&log);
    return rc;
}
