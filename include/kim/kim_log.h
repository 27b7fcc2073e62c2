/*  kim_log.h — the broker's log format, readable without broker internals.

    The broker appends every accepted message, policy decision, audit read,
    purge, state change and signed checkpoint to one append-only LMDB table
    ("log" in <data>/store), one record per sequence number. This header is
    the single definition of that format: the broker's store writes records
    with kim_log_record_hash()/kim_log_record_put(), and auditors' tools
    (`kim audit`) read, verify and replay them through the same calls.

    Record value (key: seq as u64 big-endian):
        [u8 format = 1][u8 kind][u64 time_ms BE][32-byte hash][body...]
    hash = BLAKE2b-256 (prev_hash || u8 format || u8 kind || u64 seq BE
    || u64 time_ms BE || body), unkeyed, 32-byte digest; the first record's
    prev_hash is 32 zero bytes. Bodies are MessagePack maps (a message
    record's body is the canonical header).

    A checkpoint record (kind 2) seals the chain: the broker signs, with its
    own Ed25519 key, the sequence number and hash of the record before it
    and the time (kim_log_checkpoint_message).
    Anyone holding the log and the broker's public signing key can check
    that nothing up to the last checkpoint was altered, removed or
    reordered. The broker also keeps its latest checkpoint in a file beside
    the store (KIM_LOG_CHECKPOINT_FILE), so a cut-off tail shows.

    Reading is safe while the broker runs: the store is opened MDB_RDONLY
    and each kim_log_seek() takes a fresh snapshot.
*/
#ifndef KIM_LOG_H_INCLUDED
#define KIM_LOG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kim_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Sequence numbers and times are 8-byte big-endian in keys and records, so
//  that LMDB's byte order is their numeric order.
static inline void
kim_log_put_be64 (uint8_t *dest, uint64_t value)
{
    for (int i = 7; i >= 0; i--) {
        dest [i] = (uint8_t) value;
        value >>= 8;
    }
}

static inline uint64_t
kim_log_get_be64 (const uint8_t *src)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value = (value << 8) | src [i];
    return value;
}

#define KIM_LOG_FORMAT          1
#define KIM_LOG_RECORD_FIXED    (1 + 1 + 8 + KIM_HASH_SIZE)
#define KIM_LOG_KEY_ID_SIZE     16      //  hex chars of the signing key's id
#define KIM_LOG_CHECKPOINT_SIZE 161     //  the fixed checkpoint body, bytes
//  Files in the broker's data folder.
#define KIM_LOG_STORE_DIR       "store"
#define KIM_LOG_SIGN_SECRET     "keys/broker.sign_secret"
#define KIM_LOG_SIGN_PUBLIC     "keys/broker.sign.pub"
#define KIM_LOG_CHECKPOINT_FILE "audit.checkpoint"

//  Record kinds. Numbers are stable and never reused (the same values as
//  the store's KIM_RECORD_*).
#define KIM_LOG_KINDS(X)                    \
    X(MESSAGE,    "message",    1)          \
    X(CHECKPOINT, "checkpoint", 2)          \
    X(DECISION,   "decision",   3)          \
    X(AUDIT_READ, "audit_read", 4)          \
    X(PURGE,      "purge",      5)          \
    X(STATE,      "state",      6)

enum {
#define KIM_X_ENUM(name, str, num) KIM_LOG_##name = num,
    KIM_LOG_KINDS (KIM_X_ENUM)
#undef KIM_X_ENUM
};

//  Name of a record kind ("message", ...), or NULL; and back (0 if unknown).
const char *
    kim_log_kind_name (unsigned kind);
unsigned
    kim_log_kind_from_name (const char *name);

//  One record. `body` is borrowed: from kim_log_next it lives until the
//  next kim_log_ call on the same log.
typedef struct {
    uint64_t seq;
    uint64_t time_ms;
    uint8_t kind;
    uint8_t hash [KIM_HASH_SIZE];
    const uint8_t *body;
    size_t body_size;
} kim_log_record_t;

//  --- the format ------------------------------------------------------------

//  The chain hash of a record.
void
    kim_log_record_hash (const uint8_t prev [KIM_HASH_SIZE], uint8_t kind, uint64_t seq,
                         uint64_t time_ms, const uint8_t *body, size_t body_size,
                         uint8_t out [KIM_HASH_SIZE]);

//  Writes a record value into `dest` (KIM_LOG_RECORD_FIXED + body_size bytes).
void
    kim_log_record_put (uint8_t *dest, uint8_t kind, uint64_t time_ms,
                        const uint8_t hash [KIM_HASH_SIZE], const uint8_t *body, size_t body_size);

//  Parses a record value; never trusts its size. Returns 0 or -KIM_E_IO.
int
    kim_log_record_parse (uint64_t seq, const uint8_t *value, size_t size,
                          kim_log_record_t *record);

//  --- checkpoints -------------------------------------------------------------

typedef struct {
    uint64_t seq;                       //  last record covered
    uint8_t head [KIM_HASH_SIZE];       //  its chain hash
    uint64_t time_ms;                   //  when the broker signed
    char key_id [KIM_LOG_KEY_ID_SIZE + 1];
    uint8_t sig [KIM_SIG_SIZE];         //  Ed25519 over kim_log_checkpoint_message
} kim_log_checkpoint_t;

//  Key id: the first 8 bytes of BLAKE2b-256(public key), in hex.
void
    kim_log_key_id (const uint8_t public_key [32], char key_id [KIM_LOG_KEY_ID_SIZE + 1]);

//  The bytes signed (PROTOCOL.md §8.11), 64 bytes:
//      "kim-checkpoint-2" (16 ASCII bytes) || seq (u64 BE) || head (32 bytes)
//      || time_ms (u64 BE)
#define KIM_LOG_CHECKPOINT_DOMAIN   "kim-checkpoint-2"
#define KIM_LOG_SIGNED_SIZE         64
void
    kim_log_checkpoint_message (const kim_log_checkpoint_t *self, uint8_t out [KIM_LOG_SIGNED_SIZE]);

//  The legacy bytes that brokers signed before "kim-checkpoint-2", 56 bytes:
//      "kim-checkpoint-1" || seq (u64 BE) || head [0..24) || time_ms (u64 BE)
//  (the time overwrote the last 8 bytes of the head). Verified, never signed.
#define KIM_LOG_CHECKPOINT_DOMAIN_LEGACY    "kim-checkpoint-1"
#define KIM_LOG_SIGNED_SIZE_LEGACY          56
void
    kim_log_checkpoint_message_legacy (const kim_log_checkpoint_t *self,
                                       uint8_t out [KIM_LOG_SIGNED_SIZE_LEGACY]);

//  Fills key_id and sig with `secret_key` (libsodium Ed25519, 64 bytes).
void
    kim_log_checkpoint_sign (kim_log_checkpoint_t *self, const uint8_t secret_key [64]);

//  Encodes the body of a checkpoint record: a MessagePack map
//  {seq, head, time, key_id, sig} in this order and with fixed widths, so
//  that it is exactly KIM_LOG_CHECKPOINT_SIZE bytes.
void
    kim_log_checkpoint_encode (const kim_log_checkpoint_t *self,
                               uint8_t out [KIM_LOG_CHECKPOINT_SIZE]);

//  Strict decode of a checkpoint body. Returns 0 or -KIM_E_MALFORMED.
int
    kim_log_checkpoint_decode (kim_log_checkpoint_t *self, const uint8_t *body, size_t size);

//  Which signed layout the signature verifies with `public_key` (32 bytes):
//  KIM_LOG_CHECKPOINT_V2 (current), KIM_LOG_CHECKPOINT_V1 (legacy), or 0
//  when it verifies with neither.
#define KIM_LOG_CHECKPOINT_V1   1
#define KIM_LOG_CHECKPOINT_V2   2
int
    kim_log_checkpoint_layout (const kim_log_checkpoint_t *self, const uint8_t public_key [32]);

//  True when the signature verifies with `public_key` in either layout.
bool
    kim_log_checkpoint_verify (const kim_log_checkpoint_t *self, const uint8_t public_key [32]);

//  Reads the broker's public signing key (64 hex chars on the first line).
//  Returns 0 or -KIM_E_KEY with `why` filled in.
int
    kim_log_load_public_key (const char *path, uint8_t public_key [32], char *why, size_t why_size);

//  Reads the latest checkpoint the broker saved beside the store (a hex
//  line of the checkpoint body). Returns 0, -KIM_E_NOT_FOUND or -KIM_E_IO.
int
    kim_log_load_checkpoint_file (const char *path, kim_log_checkpoint_t *checkpoint);

//  --- reading a store -----------------------------------------------------

typedef struct _kim_log_t kim_log_t;

//  Opens <data_dir>/store read-only. Returns NULL with `why` filled in, also
//  for a file that is truncated or whose pages are damaged: those are
//  checked (one pass over the log's pages) before LMDB reads them.
kim_log_t *
    kim_log_open (const char *data_dir, char *why, size_t why_size);
void
    kim_log_close (kim_log_t **self_p);

//  Takes a fresh snapshot and positions before the first record >= seq.
//  Returns 0 or -KIM_E_*. Sets *head to the last seq in the snapshot (0:
//  empty log) when head is not NULL.
int
    kim_log_seek (kim_log_t *self, uint64_t seq, uint64_t *head);

//  Next record of the snapshot. Returns 1 with *record set, 0 at the end,
//  or -KIM_E_IO for a malformed record (record->seq says which).
int
    kim_log_next (kim_log_t *self, kim_log_record_t *record);

//  The snapshot's record `seq`. Returns 0, -KIM_E_NOT_FOUND or -KIM_E_*.
int
    kim_log_get (kim_log_t *self, uint64_t seq, kim_log_record_t *record);

//  Ends the snapshot (call when done reading for a while).
void
    kim_log_release (kim_log_t *self);

//  --- verifying -------------------------------------------------------------

//  A streaming verifier: feed it records in the order read. Plain value.
#define KIM_LOG_VERIFY_KEYS     8       //  signing keys one verification trusts
typedef struct {
    size_t key_count;                   //  trusted signing keys; 0: signatures unchecked
    uint8_t keys [KIM_LOG_VERIFY_KEYS][32];
    bool anchored;                      //  the first record's prev hash is trusted
    uint64_t first;                     //  first seq fed
    uint64_t last;                      //  last seq fed and verified
    uint8_t prev [KIM_HASH_SIZE];       //  chain hash of `last`
    uint64_t records;
    uint64_t checkpoints;
    uint64_t sealed;                    //  last seq covered by a good checkpoint
                                        //  (the checkpoint record itself included)
    uint64_t legacy;                    //  good checkpoints in the legacy layout
    bool current_seen;                  //  a checkpoint in the current layout was seen
    bool failed;
    uint64_t bad_seq;                   //  first bad sequence number
    char why [200];                     //  what is wrong with it
} kim_log_verify_t;

//  Starts a verification. `public_key` NULL: signatures are not checked
//  (reported as such). `from_seq` > 1 anchors the chain on the stored
//  hash of the record before it: the caller passes it as `prev` (NULL:
//  trust the first record's own hash as the anchor).
void
    kim_log_verify_init (kim_log_verify_t *self, const uint8_t *public_key,
                         uint64_t from_seq, const uint8_t *prev);

//  Trusts one more public signing key. A broker whose signing key was
//  replaced leaves checkpoints signed by each of its keys; every checkpoint
//  must verify with the trusted key its key_id names. Returns 0, or
//  -KIM_E_ARGS when KIM_LOG_VERIFY_KEYS are trusted already.
int
    kim_log_verify_add_key (kim_log_verify_t *self, const uint8_t public_key [32]);

//  Checks one record: its seq follows the last, its stored hash is the
//  chain hash, and a checkpoint decodes, covers the record before it and
//  carries a good signature (legacy layout only before the first
//  checkpoint in the current one). Returns 0, or -KIM_E_VERIFY_FAILED with
//  bad_seq and why set (the verifier then stays failed).
int
    kim_log_verify_step (kim_log_verify_t *self, const kim_log_record_t *record);

//  Checks the end of the log against a checkpoint held outside it (the
//  checkpoint file, an archived export): records it covers must be there
//  and hash as it says. Call after the last step.
int
    kim_log_verify_end (kim_log_verify_t *self, const kim_log_checkpoint_t *outside,
                        const uint8_t *hash_at_seq);

//  Verifies a whole store: opens it, feeds every record from `from_seq`
//  and checks the checkpoint file. Fills `result`. Returns 0 or -KIM_E_*.
int
    kim_log_verify_store (const char *data_dir, const uint8_t *public_key,
                          kim_log_verify_t *result);

//  --- bodies ------------------------------------------------------------------

//  Appends a MessagePack body as JSON (maps, arrays, strings, numbers;
//  binary as lowercase hex). Bodies that are not MessagePack come out as a
//  hex string. Returns 0 or -KIM_E_NOMEM.
int
    kim_log_body_to_json (const uint8_t *body, size_t size, kim_buf_t *out);

//  Copies the string value of top-level key `key` of a MessagePack map
//  body into `out`. Returns true when found (and it fit).
bool
    kim_log_body_str (const uint8_t *body, size_t size, const char *key,
                      char *out, size_t out_size);

//  Appends one JSON line for a record: {"seq","time","kind","body"...};
//  with `hashes` also "hash" and "raw" (the body bytes in hex), as
//  `kim audit export` writes and `verify --from-export` reads.
int
    kim_log_record_to_json (const kim_log_record_t *record, bool hashes, kim_buf_t *out);

//  --- filters (QUERY and `kim audit replay`) --------------------------------

//  Zero/empty fields do not filter. Filters combine with AND. `case_id`,
//  `org` and `type` look at the body's "case_id", "sender"/"recipient"/
//  "org"/"reader" and "type" strings: records without them do not match.
typedef struct {
    uint64_t from_seq, to_seq;          //  inclusive
    uint64_t from_time, to_time;        //  ms, inclusive
    char case_id [KIM_ID_MAX + 1];
    char org [KIM_ORG_MAX + 1];
    char type [KIM_CODE_MAX + 1];       //  a message type name
    unsigned kind;                      //  a record kind (KIM_LOG_*)
} kim_log_filter_t;

bool
    kim_log_filter_match (const kim_log_filter_t *self, const kim_log_record_t *record);

void
    kim_log_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
