/*  kim_msg_int.h — what the codec's files share. Private to proto/: the
    API is include/kim/kim_msg.h.

    The codec is one module in four files: kim_msg.c (the field tables,
    the per-command and per-type rules and the checks on values: the one
    definition of the wire format), kim_msg_names.c (wire names and text
    formats), kim_msg_decode.c (the bounds-checked reader) and
    kim_msg_encode.c (the canonical writer and its buffers). The field
    lists are here, not in kim_msg.c, because every file walks the tables
    and needs their sizes and field numbers.

    Naming: what was file-local (s_foo) when the codec was one file and is
    now used by more than one of its files is kim_msgi_foo, declared here
    only. Types, enum constants and macros keep their s_ and S_ names: they
    have no linkage and do not leave proto/kim_msg*.c.
*/
#ifndef KIM_MSG_INT_H_INCLUDED
#define KIM_MSG_INT_H_INCLUDED

#include "kim/kim_msg.h"

//  --------------------------------------------------------------------------
//  Names and formats (kim_msg_names.c)

//  A wire name of `len` bytes, not NUL-terminated, to its value; KIM_TYPE_NONE,
//  KIM_CMD_NONE or 0 when unknown.
kim_type_t
    kim_msgi_type_lookup (const uint8_t *name, size_t len);
kim_cmd_id_t
    kim_msgi_cmd_lookup (const uint8_t *name, size_t len);
uint32_t
    kim_msgi_category_lookup (const uint8_t *name, size_t len);

//  Wire names of kim_priority_t and kim_basis_t values, indexed by value
//  (KIM_BASIS_NONE has none: NULL).
extern const char *const kim_msgi_priority_names [3];
extern const char *const kim_msgi_basis_names [3];

//  The id, org id and code formats (see kim_id_valid) on `len` bytes.
bool
    kim_msgi_id_ok (const char *s, size_t len);
bool
    kim_msgi_org_ok (const char *s, size_t len);
bool
    kim_msgi_code_ok (const char *s, size_t len);

//  --------------------------------------------------------------------------
//  Field tables (defined in kim_msg.c)

typedef enum {
    S_K_CMD,            //  the command name (decoded before the fields)
    S_K_ID,             //  char []: id format
    S_K_ORG,            //  char []: org id format
    S_K_CODE,           //  char []: code format
    S_K_TEXT,           //  char []: UTF-8 without NUL; empty = absent
    S_K_U32,            //  uint32_t in [lo, hi]; 0 = absent
    S_K_U64,            //  uint64_t in [lo, hi]; 0 = absent
    S_K_SCHEMA,         //  uint32_t, always written
    S_K_BOOL,           //  bool; false = absent
    S_K_BIN,            //  uint8_t [size]; aux: bool has_ flag (aux == offset: always)
    S_K_TYPE,           //  kim_type_t by wire name
    S_K_PRIORITY,       //  kim_priority_t by name; normal = absent
    S_K_BASIS,          //  legal_basis map: kim_msg_t basis, consent_id, citation
    S_K_BASIS_KIND,     //  kim_basis_t by name
    S_K_CATEGORIES,     //  uint32_t KIM_CAT_ bits as an array of names
    S_K_ID_LIST,        //  char [max][size / max]; aux: size_t count
    S_K_ORG_LIST,
    S_K_CODE_LIST,
    S_K_U32_LIST,       //  uint32_t [max], elements in [lo, hi]
    S_K_U64_LIST,       //  uint64_t [max], elements in [lo, hi]
    S_K_TYPE_LIST,      //  kim_type_t [max]
    S_K_ERRCODE,        //  int in [lo, hi]
    S_K_REASON,         //  written from the code (offset: code); checked on decode
    S_K_HDR,            //  kim_msg_t
    S_K_STATUS,         //  kim_status_t
    S_K_BODY,           //  const uint8_t *; aux: size_t size (borrowed)
    S_K_KEY,            //  char [41]: a Z85-encoded 32-byte key, exactly 40 characters
    S_K_DIR             //  const kim_dir_entry_t *; aux: size_t count (DIRECTORY_REPLY)
} s_kind_t;

typedef struct {
    const char *key;
    uint32_t key_len;
    uint32_t kind;
    uint32_t offset;            //  of the value in its struct
    uint32_t size;              //  of the value (whole array for lists)
    uint32_t aux;               //  see s_kind_t
    uint32_t max;               //  lists: entries
    uint64_t lo, hi;            //  numbers: allowed range
} s_field_t;

//  Times in headers are ms since the epoch; capped at 2^53 - 1 so that every
//  JSON reader (the kim tool, JavaScript, jansson) holds them exactly.
#define S_TIME_MAX ((1ull << 53) - 1)

//  Header fields in canonical order: X(NAME, key, kind, member, aux member, max, lo, hi)
#define S_HDR_FIELDS(X) \
    X (TYPE,          "type",               S_K_TYPE,       type,          type,             0, 0, 0) \
    X (SCHEMA,        "schema",             S_K_SCHEMA,     schema,        schema,           0, 1, UINT32_MAX) \
    X (MSG_ID,        "msg_id",             S_K_ID,         msg_id,        msg_id,           0, 0, 0) \
    X (CREATED_AT,    "created_at",         S_K_U64,        created_at,    created_at,       0, 0, S_TIME_MAX) \
    X (SENDER,        "sender",             S_K_ORG,        sender,        sender,           0, 0, 0) \
    X (RECIPIENT,     "recipient",          S_K_ORG,        recipient,     recipient,        0, 0, 0) \
    X (REFERRAL_ID,   "referral_id",        S_K_ID,         referral_id,   referral_id,      0, 0, 0) \
    X (REF_MSG_ID,    "ref_msg_id",         S_K_ID,         ref_msg_id,    ref_msg_id,       0, 0, 0) \
    X (CASE_ID,       "case_id",            S_K_ID,         case_id,       case_id,          0, 0, 0) \
    X (SENDER_REF,    "sender_case_ref",    S_K_TEXT,       sender_ref,    sender_ref,       0, 0, 0) \
    X (RECIPIENT_REF, "recipient_case_ref", S_K_TEXT,       recipient_ref, recipient_ref,    0, 0, 0) \
    X (SUBJECT,       "subject",            S_K_ID,         subject,       subject,          0, 0, 0) \
    X (PURPOSE,       "purpose",            S_K_CODE,       purpose,       purpose,          0, 0, 0) \
    X (LEGAL_BASIS,   "legal_basis",        S_K_BASIS,      basis,         basis,            0, 0, 0) \
    X (CATEGORIES,    "categories",         S_K_CATEGORIES, categories,    categories,       KIM_LIST_MAX, 0, 0) \
    X (DEADLINE,      "deadline",           S_K_U64,        deadline,      deadline,         0, 0, S_TIME_MAX) \
    X (PRIORITY,      "priority",           S_K_PRIORITY,   priority,      priority,         0, 0, 0) \
    X (CODE,          "code",               S_K_CODE,       code,          code,             0, 0, 0) \
    X (ORG,           "org",                S_K_ORG,        org,           org,              0, 0, 0) \
    X (NOTE,          "note",               S_K_TEXT,       note,          note,             0, 0, 0) \
    X (REFERRALS,     "referrals",          S_K_ID_LIST,    referrals,     referral_count,   KIM_REFERRALS_MAX, 0, 0) \
    X (CONSENT,       "consent",            S_K_ID,         grant_id,      grant_id,         0, 0, 0) \
    X (RECIPIENTS,    "recipients",         S_K_ORG_LIST,   recipients,    recipient_count,  KIM_LIST_MAX, 0, 0) \
    X (PURPOSES,      "purposes",           S_K_CODE_LIST,  purposes,      purpose_count,    KIM_LIST_MAX, 0, 0) \
    X (EXPLICIT,      "explicit",           S_K_BOOL,       explicit_art9, explicit_art9,    0, 0, 0) \
    X (VALID_UNTIL,   "valid_until",        S_K_U64,        valid_until,   valid_until,      0, 0, S_TIME_MAX) \
    X (GIVER,         "giver",              S_K_CODE,       giver,         giver,            0, 0, 0) \
    X (RULE,          "rule",               S_K_ID,         rule,          rule,             0, 0, 0) \
    X (PAYLOAD_LEN,   "payload_len",        S_K_U32,        payload_len,   payload_len,      0, 0, KIM_PAYLOAD_MAX) \
    X (PAYLOAD_HASH,  "payload_hash",       S_K_BIN,        payload_hash,  has_payload_hash, 0, 0, 0) \
    X (SIG,           "sig",                S_K_BIN,        sig,           has_sig,          0, 0, 0)

#define S_BASIS_FIELDS(X) \
    X (KIND,          "kind",               S_K_BASIS_KIND, basis,         basis,            0, 0, 0) \
    X (CONSENT_ID,    "consent_id",         S_K_ID,         consent_id,    consent_id,       0, 0, 0) \
    X (CITATION,      "citation",           S_K_TEXT,       citation,      citation,         0, 0, 0)

#define S_STATUS_FIELDS(X) \
    X (LOG_HEAD,      "log_head",           S_K_U64,        log_head,      log_head,         0, 0, UINT64_MAX) \
    X (MAILBOX,       "mailbox",            S_K_U64,        mailbox,       mailbox,          0, 0, UINT64_MAX) \
    X (IN_FLIGHT,     "in_flight",          S_K_U64,        in_flight,     in_flight,        0, 0, UINT64_MAX) \
    X (SESSIONS,      "sessions",           S_K_U64,        sessions,      sessions,         0, 0, UINT64_MAX) \
    X (UPTIME_MS,     "uptime_ms",          S_K_U64,        uptime_ms,     uptime_ms,        0, 0, UINT64_MAX) \
    X (STORE_BYTES,   "store_bytes",        S_K_U64,        store_bytes,   store_bytes,      0, 0, UINT64_MAX)

//  Command fields, one canonical order for all commands; it agrees with the
//  field order of every command in PROTOCOL.md.
#define S_CMD_FIELDS(X) \
    X (CMD,           "cmd",                S_K_CMD,        id,            id,               0, 0, 0) \
    X (VERSIONS,      "versions",           S_K_U32_LIST,   versions,      version_count,    KIM_LIST_MAX, 1, UINT32_MAX) \
    X (AGENT,         "agent",              S_K_TEXT,       agent,         agent,            0, 0, 0) \
    X (VERSION,       "version",            S_K_U32,        version,       version,          0, 1, UINT32_MAX) \
    X (SUB_ID,        "sub_id",             S_K_ID,         sub_id,        sub_id,           0, 0, 0) \
    X (QUERY_ID,      "query_id",           S_K_ID,         query_id,      query_id,         0, 0, 0) \
    X (FROM_SEQ,      "from_seq",           S_K_U64,        from_seq,      from_seq,         0, 0, UINT64_MAX) \
    X (TO_SEQ,        "to_seq",             S_K_U64,        to_seq,        to_seq,           0, 0, UINT64_MAX) \
    X (FROM_TIME,     "from_time",          S_K_U64,        from_time,     from_time,        0, 0, UINT64_MAX) \
    X (TO_TIME,       "to_time",            S_K_U64,        to_time,       to_time,          0, 0, UINT64_MAX) \
    X (CASE_ID,       "case_id",            S_K_ID,         case_id,       case_id,          0, 0, 0) \
    X (ORG,           "org",                S_K_ORG,        org,           org,              0, 0, 0) \
    X (BROKER,        "broker",             S_K_ORG,        broker,        broker,           0, 0, 0) \
    X (HEARTBEAT_MS,  "heartbeat_ms",       S_K_U32,        heartbeat_ms,  heartbeat_ms,     0, 1, UINT32_MAX) \
    X (MAX_PAYLOAD,   "max_payload",        S_K_U32,        max_payload,   max_payload,      0, 1, KIM_PAYLOAD_MAX) \
    X (TYPE,          "type",               S_K_TYPE,       type,          type,             0, 0, 0) \
    X (TYPES,         "types",              S_K_TYPE_LIST,  types,         type_count,       KIM_LIST_MAX, 0, 0) \
    X (WINDOW,        "window",             S_K_U32,        window,        window,           0, 0, KIM_WINDOW_MAX) \
    X (COUNT,         "count",              S_K_U64,        count,         count,            0, 0, UINT64_MAX) \
    X (CODE,          "code",               S_K_ERRCODE,    code,          code,             0, 0, 999) \
    X (REASON,        "reason",             S_K_REASON,     code,          code,             0, 0, 0) \
    X (TEXT,          "text",               S_K_TEXT,       text,          text,             0, 0, 0) \
    X (MSG_ID,        "msg_id",             S_K_ID,         msg_id,        msg_id,           0, 0, 0) \
    X (SEQ,           "seq",                S_K_U64,        seq,           seq,              0, 0, UINT64_MAX) \
    X (TIME,          "time",               S_K_U64,        time,          time,             0, 0, UINT64_MAX) \
    X (KIND,          "kind",               S_K_U32,        kind,          kind,             0, 1, 255) \
    X (HASH,          "hash",               S_K_BIN,        hash,          hash,             0, 0, 0) \
    X (BODY,          "body",               S_K_BODY,       body,          body_size,        0, 0, 0) \
    X (DUP,           "dup",                S_K_BOOL,       dup,           dup,              0, 0, 0) \
    X (PATH,          "path",               S_K_TEXT,       path,          path,             0, 0, 0) \
    X (SEQS,          "seqs",               S_K_U64_LIST,   acks,          ack_count,        KIM_ACKS_MAX, 0, UINT64_MAX) \
    X (RANGES,        "ranges",             S_K_U64_LIST,   ranges,        range_count,      2 * KIM_RANGES_MAX, 1, UINT64_MAX) \
    X (HDR,           "hdr",                S_K_HDR,        msg,           msg,              0, 0, 0) \
    X (STATUS,        "status",             S_K_STATUS,     status,        status,           0, 0, 0) \
    X (REFERRAL_ID,   "referral_id",        S_K_ID,         referral_id,   referral_id,      0, 0, 0) \
    X (ORGS,          "orgs",               S_K_DIR,        dir,           dir_count,        KIM_DIRECTORY_MAX, 0, 0) \
    X (HOMES,         "homes",              S_K_BOOL,       homes,         homes,            0, 0, 0) \
    X (SERIAL,        "serial",             S_K_U64,        serial,        serial,           0, 0, S_TIME_MAX) \
    X (RULE,          "rule",               S_K_ID,         rule,          rule,             0, 0, 0) \
    X (SIG,           "sig",                S_K_BIN,        sig,           has_sig,          0, 0, 0)

//  One DIRECTORY_REPLY entry; sign_key is the only optional one.
#define S_DIR_FIELDS(X) \
    X (ID,            "id",                 S_K_ORG,        id,            id,               0, 0, 0) \
    X (NAME,          "name",               S_K_TEXT,       name,          name,             0, 0, 0) \
    X (TYPE,          "type",               S_K_CODE,       type,          type,             0, 0, 0) \
    X (PUBLIC_BODY,   "public_body",        S_K_BOOL,       public_body,   public_body,      0, 0, 0) \
    X (PUBLIC_KEY,    "public_key",         S_K_KEY,        public_key,    public_key,       0, 0, 0) \
    X (SIGN_KEY,      "sign_key",           S_K_KEY,        sign_key,      sign_key,         0, 0, 0) \
    X (HOME,          "home",               S_K_ORG,        home,          home,             0, 0, 0)

#define S_COUNT(table) (sizeof table / sizeof table [0])

enum {
#define S_X_ENUM(NAME, ...) S_H_##NAME,
    S_HDR_FIELDS (S_X_ENUM)
#undef S_X_ENUM
    S_H_END
};
enum {
#define S_X_ENUM(NAME, ...) S_B_##NAME,
    S_BASIS_FIELDS (S_X_ENUM)
#undef S_X_ENUM
    S_B_END
};
enum {
#define S_X_ENUM(NAME, ...) S_C_##NAME,
    S_CMD_FIELDS (S_X_ENUM)
#undef S_X_ENUM
    S_C_END
};

//  The tables built from the lists above, one per map (S_X_ONE counts a list).
#define S_X_ONE(NAME, ...) + 1
extern const s_field_t kim_msgi_hdr_fields [0 S_HDR_FIELDS (S_X_ONE)];
extern const s_field_t kim_msgi_basis_fields [0 S_BASIS_FIELDS (S_X_ONE)];
extern const s_field_t kim_msgi_status_fields [0 S_STATUS_FIELDS (S_X_ONE)];
extern const s_field_t kim_msgi_cmd_fields [0 S_CMD_FIELDS (S_X_ONE)];
extern const s_field_t kim_msgi_dir_fields [0 S_DIR_FIELDS (S_X_ONE)];
#define S_DIR_REQUIRED ((1ull << 5) - 1)    //  id, name, type, public_body, public_key

typedef struct {
    kim_cmd_id_t id;
    uint64_t required;
    uint64_t optional;
} s_cmd_rule_t;

//  The fields a command requires and allows, or NULL for an unknown one.
const s_cmd_rule_t *
    kim_msgi_cmd_rule (kim_cmd_id_t id);

//  The number of the lowest bit set in `mask`, which is not 0.
int
    kim_msgi_lowest_bit (uint64_t mask);

//  --------------------------------------------------------------------------
//  Errors and paths (kim_msg.c)

//  Appends `len` bytes of `text` to a path, cut at KIM_PATH_MAX; with
//  `sanitize`, bytes that are not printable ASCII become '?'.
void
    kim_msgi_path_add (char *path, const char *text, size_t len, bool sanitize);
//  Appends "[index]".
void
    kim_msgi_path_index (char *path, uint64_t index);
//  Fill err with `code` and the path prefix.key[index] (key may be NULL,
//  index < 0 for none); return -code.
int
    kim_msgi_fail_raw (kim_decode_error_t *err, int code, const char *prefix,
                       const char *key, size_t key_len, bool sanitize, int64_t index);
int
    kim_msgi_fail (kim_decode_error_t *err, int code, const char *prefix, const char *key,
                   int64_t index);
//  out = "prefix.key", or "key" when prefix is empty.
void
    kim_msgi_join (char *out, const char *prefix, const char *key);

//  --------------------------------------------------------------------------
//  Checks on values in the structs (kim_msg.c). Those returning int return
//  0, or -code with err filled in.

//  The legal_basis fields of a header, as a whole.
int
    kim_msgi_check_basis (const kim_msg_t *msg, const char *prefix, kim_decode_error_t *err);
//  Whether a field is present (not "absent" as its kind defines it).
bool
    kim_msgi_present (const s_field_t *f, const void *base);
//  The header fields present, one bit per kim_msgi_hdr_fields entry.
uint64_t
    kim_msgi_msg_presence (const kim_msg_t *msg);
//  One field's value as it is in the struct at `base`.
int
    kim_msgi_check_field (const s_field_t *f, const void *base, const char *prefix,
                          kim_decode_error_t *err);
//  Every field of a header in `mask` (kim_msgi_msg_presence: the present ones).
int
    kim_msgi_msg_check_fields (const kim_msg_t *msg, uint64_t mask, const char *prefix,
                               kim_decode_error_t *err);
//  sub = "prefix.key[index]", the prefix of a directory entry's fields.
void
    kim_msgi_dir_prefix (char *sub, const char *prefix, const char *key, size_t index);
//  The rules of a command beyond its single fields, on valid fields.
int
    kim_msgi_cmd_check_rules (const kim_cmd_t *self, kim_decode_error_t *err);

#endif
