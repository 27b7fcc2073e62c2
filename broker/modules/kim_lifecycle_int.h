/*  kim_lifecycle_int.h — what the life-cycle module's files share
    (kim_lifecycle.c: referrals, deadlines, the hook; kim_case.c: cases,
    handovers, subscriptions, retention; kim_lc_store.c: stored forms, the
    referral index, timers, state records). Calls point one way:
    kim_lifecycle.c -> kim_case.c -> kim_lc_store.c. Private to the module.

    Referrals and cases are stored compactly (version 2): [u8 version],
    the numbers as u64 big-endian, then each string as [u8 length][bytes].
    Every message writes one of each, so their size is what each message
    costs the disk. Version 1 stored the structs as they lie in memory; it
    is still read. Subscriptions are fixed-size structs. A layout this
    broker does not know is refused loudly rather than misread.
*/
#ifndef KIM_LIFECYCLE_INT_H_INCLUDED
#define KIM_LIFECYCLE_INT_H_INCLUDED

#include "kim/kim_log.h"
#include "kim_lifecycle.h"

#define S_REFERRAL_VERSION  2
#define S_CASE_VERSION      2
#define S_LEGACY_VERSION    1       //  referrals and cases as in-memory structs
#define S_SUB_VERSION       1
#define S_PARTICIPANTS_MAX  32

//  Referral states (brief §4). Numbers are stored: never reuse one.
#define KIM_REFERRAL_STATES(X)  \
    X(SENT,           1)        \
    X(DELIVERED,      2)        \
    X(ACCEPTED,       3)        \
    X(IN_PROGRESS,    4)        \
    X(COMPLETED,      5)        \
    X(DECLINED,       6)        \
    X(NOT_COMPETENT,  7)        \
    X(FORWARDED,      8)        \
    X(OVERDUE,        9)        \
    X(EXPIRED,       10)        \
    X(WITHDRAWN,     11)        \
    X(SUSPENDED,     12)        \
    X(LAPSED,        13)        \
    X(UNDELIVERABLE, 14)

typedef enum {
    KIM_REFERRAL_NONE = 0,
#define KIM_X_ENUM(name, num) KIM_REFERRAL_##name = num,
    KIM_REFERRAL_STATES (KIM_X_ENUM)
#undef KIM_X_ENUM
} kim_referral_state_t;

//  Timer kinds (kim_lc_timer_put).
#define S_TIMER_DEADLINE    1       //  key id: a referral; SENT/DELIVERED -> OVERDUE
#define S_TIMER_EXPIRY      2       //  key id: a referral; OVERDUE -> EXPIRED
#define S_TIMER_PURGE       3       //  key id: a closed case; purge its payloads
#define S_TIMER_IDLE_NOTICE 4       //  key id: an open case; tell the lead of the purge to come
#define S_TIMER_IDLE_PURGE  5       //  key id: an open case, idle: purge its payloads

typedef struct {
    uint32_t version;
    uint32_t state;                         //  kim_referral_state_t
    char id [KIM_ID_MAX + 1];
    char msg_id [KIM_ID_MAX + 1];           //  the REFERRAL (or FORWARD) that opened it
    char sender [KIM_ORG_MAX + 1];
    char recipient [KIM_ORG_MAX + 1];
    char case_id [KIM_ID_MAX + 1];
    char consent_id [KIM_ID_MAX + 1];       //  legal basis, if consent
    char parent [KIM_ID_MAX + 1];           //  forwarded from this referral
    char purpose [KIM_CODE_MAX + 1];
    uint64_t deadline;                      //  ms
    uint64_t created_seq;
    uint64_t last_seq;
} kim_referral_t;

typedef struct {
    uint32_t version;
    uint32_t closed;                        //  1 after CASE_CLOSED
    char id [KIM_ID_MAX + 1];
    char lead [KIM_ORG_MAX + 1];            //  exactly one, always
    char offer_msg_id [KIM_ID_MAX + 1];     //  open HANDOVER_OFFER, "" when none
    char offer_to [KIM_ORG_MAX + 1];
    uint64_t offer_seq;                     //  its log record: lists the referrals
    uint64_t created_seq;
    uint64_t closed_at;                     //  ms
    uint64_t active_at;                     //  ms: last message in the case (0: before this was kept)
    uint32_t idle_armed;                    //  1 while an inactivity timer is set
    uint32_t participant_count;
    //  Stored up to participant_count only: most cases have a handful.
    char participants [S_PARTICIPANTS_MAX][KIM_ORG_MAX + 1];
} kim_case_t;

typedef struct {
    uint32_t version;
    uint32_t type_count;                    //  0: every type
    char case_id [KIM_ID_MAX + 1];          //  "": every case
    uint32_t types [KIM_LIST_MAX];
} kim_sub_t;

//  The module's settings and per-batch scratch.
typedef struct {
    uint64_t deadline_ms;                   //  default answer period
    uint64_t expire_ms;                     //  grace period after the deadline
    uint64_t payload_ms;                    //  retention of payloads after CASE_CLOSED
    uint64_t idle_ms;                       //  an open case this long quiet: purged (0: never)
    uint64_t notice_ms;                     //  the lead is told this long before
    size_t purpose_count;                   //  per-purpose deadline overrides
    char purposes [16][KIM_CODE_MAX + 1];
    uint64_t purpose_deadline_ms [16];
    //  The case last read or written in the open batch (kim_lc_case_read):
    //  `check` and `applied` of one message read the same case.
    bool known;                             //  known_case/known_rc hold a read
    int known_rc;                           //  0, or -KIM_E_NOT_FOUND
    char known_id [KIM_ID_MAX + 1];
    kim_case_t known_case;
} kim_lifecycle_t;

//  Store access through the open batch (kim_lc_store.c, as everything
//  down to the next section).
int
    kim_lc_put (kim_store_t *store, kim_db_t db, const void *key, size_t key_size,
                const void *value, size_t value_size, const char *what);
//  A timer of `kind` for `id` (a referral or a case), due at `due` (ms).
//  Timers are store groups (kim_store_group_add): the group is due (u64
//  BE) | kind, each member an id, so a batch's timers due at the same
//  moment take one entry. Stores from before hold an entry per timer: key
//  due | id, value the kind (one byte); both are read.
int
    kim_lc_timer_put (kim_store_t *store, uint64_t due, const char *id, uint8_t kind);
//  Reads the value under `id` in `db` and decodes it `into` a struct: 0,
//  -KIM_E_NOT_FOUND, or -KIM_E_IO (logged, naming `what`) for a value of
//  a form this broker does not know.
int
    kim_lc_fetch (kim_store_t *store, kim_db_t db, const char *id, const char *what,
                  int (*decode) (const uint8_t *value, size_t size, void *into), void *into);
//  A referral is kept under two keys in REFERRAL:
//    referral_id                 -> created_seq (u64 BE), written once
//    0xFF created_seq (u64 BE)   -> the referral (compact form)
//  Why: ids are the agencies' own (often UUIDs), so an entry under an id
//  lands on a page of its own anywhere in the tree, which a commit writes
//  whole. The ack that makes a referral DELIVERED follows its opening by
//  moments and rewrites its state: under the seq, beside the states of the
//  referrals opened with it, at the tree's growing end. Ids are letters,
//  digits and . _ : - (kim_msgi_id_ok), never a byte 0xFF, so the states
//  sort after every id, and one tree keeps both: a new referral's commit
//  touches no more trees than before. Stores from before (the referral
//  under its id) get their states moved once at start
//  (kim_lc_referral_split, kim_lc_reindex.c).
#define S_REFERRAL_STATE_TAG    0xFF
#define S_REFERRAL_STATE_KEY    9
//  Reads a referral by id: 0, -KIM_E_NOT_FOUND, or -KIM_E_IO (logged).
int
    kim_lc_referral_get (kim_store_t *store, const char *id, kim_referral_t *referral);
//  Reads referral `id` at `seq` when that is where it opened, else by id
//  (`seq` 0: unknown): what kim_lc_referral_get returns. Spares the
//  lookup of the id where the seq is known (the ack of the mail that
//  opened it, an index entry).
int
    kim_lc_referral_find (kim_store_t *store, const char *id, uint64_t seq,
                          kim_referral_t *referral);
//  Writes a new referral: its id's entry and its state. A created_seq
//  that holds another referral's state is refused (-KIM_E_IO, logged).
int
    kim_lc_referral_open (kim_store_t *store, const kim_referral_t *referral);
//  Writes the state of a referral that kim_lc_referral_open wrote.
int
    kim_lc_referral_put (kim_store_t *store, const kim_referral_t *referral);
//  Writes a referral's state alone; `fresh` refuses a created_seq that
//  holds one already (as kim_lc_referral_open does).
int
    kim_lc_referral_state_put (kim_store_t *store, const kim_referral_t *referral, bool fresh);
//  Calls `fn` with each referral, in the order they opened, until it
//  returns non-zero (1 stops without error). Adds the states that do not
//  decode to *bad. `fn` must not write to REFERRAL. Returns 0 or -KIM_E_*.
int
    kim_lc_referral_scan (kim_store_t *store,
                          int (*fn) (void *arg, const kim_referral_t *referral), void *arg,
                          size_t *bad);
const char *
    kim_lc_state_name (uint32_t state);
bool
    kim_lc_state_open (uint32_t state);
//  Appends a KIM_RECORD_STATE record: a msgpack map built from `json`.
int
    kim_lc_record (kim_ctx_t *ctx, const char *json);
//  The compact form's pieces. A reader goes bad (and stays bad) on
//  anything that does not fit where it is read into.
typedef struct {
    const uint8_t *at;
    const uint8_t *end;
    bool bad;
} kim_lc_reader_t;

static inline uint8_t *
kim_lc_put_u64 (uint8_t *at, uint64_t value)
{
    kim_log_put_be64 (at, value);
    return at + 8;
}

//  Strings here are ids, org ids and codes: at most 64 bytes.
static inline uint8_t *
kim_lc_put_text (uint8_t *at, const char *text)
{
    size_t size = strnlen (text, 255);
    *at++ = (uint8_t) size;
    memcpy (at, text, size);
    return at + size;
}

static inline uint64_t
kim_lc_get_u64 (kim_lc_reader_t *reader)
{
    if (reader->bad || reader->end - reader->at < 8) {
        reader->bad = true;
        return 0;
    }
    uint64_t value = kim_log_get_be64 (reader->at);
    reader->at += 8;
    return value;
}

static inline uint8_t
kim_lc_get_u8 (kim_lc_reader_t *reader)
{
    if (reader->bad || reader->at >= reader->end) {
        reader->bad = true;
        return 0;
    }
    return *reader->at++;
}

static inline void
kim_lc_get_text (kim_lc_reader_t *reader, char *text, size_t text_size)
{
    size_t size = kim_lc_get_u8 (reader);
    if (reader->bad || size >= text_size || (size_t) (reader->end - reader->at) < size
    ||  memchr (reader->at, 0, size)) {
        reader->bad = true;
        text [0] = 0;
        return;
    }
    memcpy (text, reader->at, size);
    text [size] = 0;
    reader->at += size;
}

//  Stored forms of referrals and cases. _encode writes the compact form
//  and returns its size; _decode reads either form: 0, or -KIM_E_IO when
//  the value has a form this broker does not know.
#define KIM_LC_REFERRAL_MAX (2 + 3 * 8 + 8 * (1 + KIM_ID_MAX))
#define KIM_LC_CASE_MAX     (3 + 4 * 8 + 1 + (4 + S_PARTICIPANTS_MAX) * (1 + KIM_ID_MAX))
size_t
    kim_lc_referral_encode (const kim_referral_t *referral, uint8_t value [KIM_LC_REFERRAL_MAX]);
int
    kim_lc_referral_decode (const uint8_t *value, size_t value_size, kim_referral_t *referral);
size_t
    kim_lc_case_encode (const kim_case_t *kcase, uint8_t value [KIM_LC_CASE_MAX]);
int
    kim_lc_case_decode (const uint8_t *value, size_t value_size, kim_case_t *kcase);

//  The referral index (KIM_DB_REFERRAL_BY), so that every lookup an
//  organisation can trigger costs what its own referrals cost, not what
//  the whole store holds. Entries:
//    'P' party NUL case_seq referral_seq referral_id -> case_id
//        for the sender and the recipient; the seqs (u64 BE) are the
//        created_seq of the referral's case and of the referral
//    'C' consent_id NUL referral_id -> empty, for a referral under a consent
//  A party's referrals (REFERRAL_QUERY) and a consent's referrals
//  (revocation) are each one prefix range, a party's referrals of one case
//  (REFERRAL_QUERY with case_id) the range of the case's created_seq. A
//  case's referrals are only ever looked up for an organisation that takes
//  part in them, so the party key serves "by case" too, and a new referral
//  costs two puts (three under a consent).
//  Keys by seq, not by id: ids are the agencies' own (often UUIDs), and an
//  entry under an id lands on a page of its own anywhere in the tree, which
//  the commit rewrites whole; the referral of a new case goes at the end of
//  each party's range, beside the one before. A referral whose case has no
//  record (stores from before case records) is under case_seq 0, where a
//  query by case looks too. Entries are written with the referral when it
//  opens, in the same transaction; a handover moves the sender's. Stores
//  from before the index, or with its first form (ids in the keys), get it
//  built once at start (kim_lc_index_build, kim_lc_reindex.c).
#define S_INDEX_PARTY       'P'
#define S_INDEX_CONSENT     'C'
#define S_INDEX_KEY_MAX     (1 + 3 * (KIM_ID_MAX + 1))
//  The key of `party`'s entry of `referral` in the case of case_seq; with
//  referral NULL the prefix of its referrals in that case, with case_seq
//  NULL too the prefix of all its referrals. Returns the size.
size_t
    kim_lc_index_party_key (uint8_t key [S_INDEX_KEY_MAX], const char *party,
                            const uint64_t *case_seq, const kim_referral_t *referral);
//  As kim_lc_index_party_key, for a consent's referrals.
size_t
    kim_lc_index_consent_key (uint8_t key [S_INDEX_KEY_MAX], const char *consent_id,
                              const char *referral_id);
//  The case_seq of a referral's entries: its case's created_seq; for a
//  case without a record, `opens` (the seq of a REFERRAL that opens the
//  case in this batch, kim_lc_case_applied) or 0 (no case, or one known
//  only from a store written before cases had records). Reads through the
//  batch's case memo. Returns 0 or -KIM_E_*.
int
    kim_lc_index_case_seq (kim_lifecycle_t *self, kim_store_t *store, const char *case_id,
                           uint64_t opens, uint64_t *case_seq);
//  What a scan of the index calls for each referral it lists: its id, and
//  the seq that opened it where the entry holds it (party entries; 0 for
//  consent entries), for kim_lc_referral_find.
typedef int (kim_lc_scan_fn) (void *arg, const char *referral_id, uint64_t seq);
//  Calls `fn` with each of `party`'s referrals in case `case_id`, whose
//  record is `kcase` (NULL: none), as kim_lc_index_scan does: those under
//  its created_seq, then those under 0 (`fn` returning 1 stops both).
int
    kim_lc_index_case_scan (kim_store_t *store, const char *party, const char *case_id,
                            const kim_case_t *kcase, kim_lc_scan_fn *fn, void *arg);
//  Writes the entries of a new referral in its case of case_seq.
int
    kim_lc_index_put (kim_store_t *store, const kim_referral_t *referral, uint64_t case_seq);
//  Moves `referral`'s party entry from `from` to `to` (a handover).
int
    kim_lc_index_move (kim_store_t *store, const kim_referral_t *referral, uint64_t case_seq,
                       const char *from, const char *to);
//  Calls `fn` with each referral id under `prefix` (a key from above), in
//  key order, until `fn` returns non-zero (its result is returned; 1 stops
//  without error). With `case_id`, party entries of other cases are
//  skipped: a party's range read for a case whose record is gone. `fn`
//  must not write to the index.
int
    kim_lc_index_scan (kim_store_t *store, const uint8_t *prefix, size_t prefix_size,
                       const char *case_id, kim_lc_scan_fn *fn, void *arg);
//  Moves the referrals of a store from before states by seq (each whole
//  under its id) to their present form: once, logged, in one batch, when the
//  broker starts, before kim_lc_index_build. Returns 0 or -KIM_E_*.
int
    kim_lc_referral_split (kim_store_t *store);
//  Builds the index of a store written before it existed: once, logged,
//  in one batch, when the broker starts. Returns 0 or -KIM_E_*.
int
    kim_lc_index_build (kim_store_t *store);

//  Moves a referral to `to`, writes it and records the change (cause: seq).
int
    kim_lc_referral_move (kim_ctx_t *ctx, kim_referral_t *referral, uint32_t to, uint64_t seq);

//  Cases, subscriptions, retention (kim_case.c).
int
    kim_lc_case_get (kim_store_t *store, const char *id, kim_case_t *kcase);
//  Does `org` take part in the case (a participant, its lead, or offered
//  it)? Only those hear anything about a case in a refusal. Inline, so
//  that kim_lifecycle.c needs no more of kim_case.c for it.
static inline bool
kim_lc_case_party (const kim_case_t *kcase, const char *org)
{
    for (uint32_t i = 0; i < kcase->participant_count && i < S_PARTICIPANTS_MAX; i++)
        if (strcmp (kcase->participants [i], org) == 0)
            return true;
    return strcmp (kcase->lead, org) == 0
        || (kcase->offer_to [0] && strcmp (kcase->offer_to, org) == 0);
}
//  kim_lc_case_get through the batch's memo of the last case read or
//  written; the memo ends with the batch (kim_lc_case_forget).
int
    kim_lc_case_read (kim_lifecycle_t *self, kim_store_t *store, const char *id,
                      kim_case_t *kcase);
void
    kim_lc_case_forget (kim_lifecycle_t *self);
int
    kim_lc_case_check (kim_lifecycle_t *self, kim_ctx_t *ctx, kim_route_t *route,
                       kim_verdict_t *verdict);
//  Updates the case of a message (participants, lead, seq index) and fans
//  it out to subscribers. `case_id` is the message's case ("" for none).
int
    kim_lc_case_applied (kim_lifecycle_t *self, kim_ctx_t *ctx, kim_route_t *route,
                         const char *case_id);
//  Purges up to 256 payloads of a case and logs a PURGE record; `kind` is
//  S_TIMER_PURGE (closed, retention) or S_TIMER_IDLE_PURGE (open, idle): a
//  timer of that kind continues a larger case at the next tick.
int
    kim_lc_purge (kim_lifecycle_t *self, kim_ctx_t *ctx, const char *case_id, uint8_t kind);
//  At start: gives every open case without an inactivity timer one (cases
//  from before store version 3, or from while open_case_days was 0); one
//  whose last activity is unknown is quiet from its first tick on. One scan
//  of the cases, one batch, at every start while open_case_days is set.
int
    kim_lc_idle_arm (kim_lifecycle_t *self, kim_store_t *store);
//  An inactivity timer of an open case fired (S_TIMER_IDLE_NOTICE/_PURGE).
int
    kim_lc_idle_fire (kim_lifecycle_t *self, kim_ctx_t *ctx, const char *case_id, uint8_t kind);
int
    kim_lc_command (void *state, kim_ctx_t *ctx, const kim_peer_t *peer, const kim_cmd_t *cmd,
                    kim_verdict_t *verdict);

#endif
