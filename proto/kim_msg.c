/*  kim_msg.c — the wire codec: canonical MessagePack encoding and strict
    decoding of kim's commands and message headers, and the per-type rules.

    Why a hand-written reader: msgpack-c's unpacker allocates count * sizeof
    (msgpack_object) for whatever count a map or array header claims, so five
    hostile bytes could demand gigabytes. Decoding here walks the bytes with a
    bounds-checked cursor instead, in two passes: the first checks the
    structure (every length within the input, depth, entry counts, no trailing
    bytes) and finds "cmd"; the second reads the fields straight into the
    fixed-size structs. Nothing is allocated per message.

    Encoding uses msgpack-c's packer, which writes the smallest encoding of
    every integer; with the fixed field order of the tables below and absent
    fields omitted, equal values encode to equal bytes.

    One table per map (command, header, legal basis, status) describes each
    field once — key, kind, place in the struct, limits — and drives decoding,
    checking, presence and encoding, so the four cannot disagree.
*/
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include <msgpack.h>

#include "kim/kim_msg.h"

//  --------------------------------------------------------------------------
//  Buffers

void
kim_buf_init (kim_buf_t *self)
{
    self->data = NULL;
    self->size = 0;
    self->capacity = 0;
}

void
kim_buf_reset (kim_buf_t *self)
{
    self->size = 0;
}

void
kim_buf_free (kim_buf_t *self)
{
    free (self->data);
    kim_buf_init (self);
}

int
kim_buf_reserve (kim_buf_t *self, size_t extra)
{
    if (extra <= self->capacity - self->size)
        return 0;
    if (extra > SIZE_MAX / 2 - self->size)
        return -KIM_E_NOMEM;
    size_t capacity = self->capacity? self->capacity: 256;
    while (capacity - self->size < extra)
        capacity *= 2;
    uint8_t *data = realloc (self->data, capacity);
    if (!data)
        return -KIM_E_NOMEM;
    self->data = data;
    self->capacity = capacity;
    return 0;
}

int
kim_buf_append (kim_buf_t *self, const void *data, size_t size)
{
    if (size == 0)
        return 0;               //  memcpy from NULL is undefined even for 0 bytes
    int rc = kim_buf_reserve (self, size);
    if (rc)
        return rc;
    memcpy (self->data + self->size, data, size);
    self->size += size;
    return 0;
}

//  --------------------------------------------------------------------------
//  Names and formats

const char *
kim_type_name (kim_type_t type)
{
    switch (type) {
#define KIM_X_CASE(name, wire, num, flags) case KIM_TYPE_##name: return wire;
        KIM_TYPES (KIM_X_CASE)
#undef KIM_X_CASE
        default: return NULL;
    }
}

unsigned
kim_type_flags (kim_type_t type)
{
    switch (type) {
#define KIM_X_CASE(name, wire, num, flags) case KIM_TYPE_##name: return flags;
        KIM_TYPES (KIM_X_CASE)
#undef KIM_X_CASE
        default: return 0;
    }
}

static kim_type_t
s_type_lookup (const uint8_t *name, size_t len)
{
#define KIM_X_CMP(tname, wire, num, flags) \
    if (len == sizeof wire - 1 && memcmp (name, wire, len) == 0) return KIM_TYPE_##tname;
    KIM_TYPES (KIM_X_CMP)
#undef KIM_X_CMP
    return KIM_TYPE_NONE;
}

kim_type_t
kim_type_from_name (const char *name)
{
    return name? s_type_lookup ((const uint8_t *) name, strlen (name)): KIM_TYPE_NONE;
}

const char *
kim_cmd_name (kim_cmd_id_t id)
{
    switch (id) {
#define KIM_X_CASE(name, wire, num, dir) case KIM_CMD_##name: return wire;
        KIM_CMDS (KIM_X_CASE)
#undef KIM_X_CASE
        default: return NULL;
    }
}

static kim_cmd_id_t
s_cmd_lookup (const uint8_t *name, size_t len)
{
#define KIM_X_CMP(cname, wire, num, dir) \
    if (len == sizeof wire - 1 && memcmp (name, wire, len) == 0) return KIM_CMD_##cname;
    KIM_CMDS (KIM_X_CMP)
#undef KIM_X_CMP
    return KIM_CMD_NONE;
}

const char *
kim_category_name (uint32_t bit)
{
    switch (bit) {
#define KIM_X_CASE(name, wire, cbit) case cbit: return wire;
        KIM_CATEGORIES (KIM_X_CASE)
#undef KIM_X_CASE
        default: return NULL;
    }
}

#define S_CATEGORIES_ALL (0u KIM_CATEGORIES (S_X_OR))
#define S_X_OR(name, wire, bit) | bit

static uint32_t
s_category_lookup (const uint8_t *name, size_t len)
{
#define KIM_X_CMP(cname, wire, bit) \
    if (len == sizeof wire - 1 && memcmp (name, wire, len) == 0) return bit;
    KIM_CATEGORIES (KIM_X_CMP)
#undef KIM_X_CMP
    return 0;
}

static const char *s_priority_names [] = { "normal", "low", "high" };
static const char *s_basis_names [] = { NULL, "consent", "statute" };

bool
kim_str_copy (char *dest, size_t size, const char *src)
{
    if (size == 0)
        return false;
    size_t length = src? strnlen (src, size): 0;
    bool fits = length < size;
    if (!fits)
        length = size - 1;
    memcpy (dest, src? src: "", length);
    dest [length] = 0;
    return fits;
}

bool
kim_utf8_valid (const uint8_t *data, size_t size)
{
    if (!data)
        return size == 0;
    size_t i = 0;
    while (i < size) {
        uint8_t c = data [i];
        if (c < 0x80) {
            if (c == 0)
                return false;
            i++;
            continue;
        }
        //  Second-byte ranges exclude overlong forms (E0, F0), surrogates
        //  (ED) and code points above U+10FFFF (F4).
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf)
            need = 1;
        else
        if (c == 0xe0) {
            need = 2;
            lo = 0xa0;
        }
        else
        if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
            need = 2;
        else
        if (c == 0xed) {
            need = 2;
            hi = 0x9f;
        }
        else
        if (c == 0xf0) {
            need = 3;
            lo = 0x90;
        }
        else
        if (c >= 0xf1 && c <= 0xf3)
            need = 3;
        else
        if (c == 0xf4) {
            need = 3;
            hi = 0x8f;
        }
        else
            return false;
        if (size - i - 1 < need)
            return false;
        if (data [i + 1] < lo || data [i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if ((data [i + k] & 0xc0) != 0x80)
                return false;
        i += need + 1;
    }
    return true;
}

static bool
s_id_ok (const char *s, size_t len)
{
    if (len < 1 || len > KIM_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s [i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
        ||    c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

static bool
s_org_ok (const char *s, size_t len)
{
    if (len < 3 || len > KIM_ORG_MAX)
        return false;
    size_t parts = 1, part_len = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s [i];
        if (c == '.') {
            if (part_len == 0)
                return false;
            parts++;
            part_len = 0;
        }
        else
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')
            part_len++;
        else
            return false;
    }
    return part_len > 0 && (parts == 2 || parts == 3);
}

static bool
s_code_ok (const char *s, size_t len)
{
    if (len < 1 || len > KIM_CODE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s [i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

bool
kim_id_valid (const char *id)
{
    return id && s_id_ok (id, strnlen (id, KIM_ID_MAX + 1));
}

bool
kim_org_valid (const char *org)
{
    return org && s_org_ok (org, strnlen (org, KIM_ORG_MAX + 1));
}

bool
kim_code_valid (const char *code)
{
    return code && s_code_ok (code, strnlen (code, KIM_CODE_MAX + 1));
}

//  --------------------------------------------------------------------------
//  Field tables

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

#define S_FIELD(T, key, kind, member, auxm, max, lo, hi) \
    { key, sizeof key - 1, kind, offsetof (T, member), sizeof (((T *) 0)->member), \
      offsetof (T, auxm), max, lo, hi },

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
    X (HDR,           "hdr",                S_K_HDR,        msg,           msg,              0, 0, 0) \
    X (STATUS,        "status",             S_K_STATUS,     status,        status,           0, 0, 0) \
    X (REFERRAL_ID,   "referral_id",        S_K_ID,         referral_id,   referral_id,      0, 0, 0) \
    X (ORGS,          "orgs",               S_K_DIR,        dir,           dir_count,        KIM_DIRECTORY_MAX, 0, 0)

//  One DIRECTORY_REPLY entry; sign_key is the only optional one.
#define S_DIR_FIELDS(X) \
    X (ID,            "id",                 S_K_ORG,        id,            id,               0, 0, 0) \
    X (NAME,          "name",               S_K_TEXT,       name,          name,             0, 0, 0) \
    X (TYPE,          "type",               S_K_CODE,       type,          type,             0, 0, 0) \
    X (PUBLIC_BODY,   "public_body",        S_K_BOOL,       public_body,   public_body,      0, 0, 0) \
    X (PUBLIC_KEY,    "public_key",         S_K_KEY,        public_key,    public_key,       0, 0, 0) \
    X (SIGN_KEY,      "sign_key",           S_K_KEY,        sign_key,      sign_key,         0, 0, 0)

#define S_X_HDR(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_msg_t, key, kind, m, a, max, lo, hi)
#define S_X_CMD(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_cmd_t, key, kind, m, a, max, lo, hi)
#define S_X_STATUS(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_status_t, key, kind, m, a, max, lo, hi)

static const s_field_t s_hdr_fields [] = { S_HDR_FIELDS (S_X_HDR) };
static const s_field_t s_basis_fields [] = { S_BASIS_FIELDS (S_X_HDR) };
static const s_field_t s_status_fields [] = { S_STATUS_FIELDS (S_X_STATUS) };
static const s_field_t s_cmd_fields [] = { S_CMD_FIELDS (S_X_CMD) };
#define S_X_DIR(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_dir_entry_t, key, kind, m, a, max, lo, hi)
static const s_field_t s_dir_fields [] = { S_DIR_FIELDS (S_X_DIR) };
#define S_DIR_REQUIRED ((1ull << (S_COUNT (s_dir_fields) - 1)) - 1)     //  all but sign_key

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

#define H(NAME) (1ull << S_H_##NAME)
#define C(NAME) (1ull << S_C_##NAME)

//  Per-command fields: X(NAME, required, optional).
#define S_CMD_RULES(X) \
    X (HELLO,        C (VERSIONS) | C (AGENT) | C (WINDOW), 0) \
    X (WELCOME,      C (VERSION) | C (ORG) | C (BROKER) | C (HEARTBEAT_MS) | C (MAX_PAYLOAD) \
                     | C (WINDOW), 0) \
    X (SEND,         C (HDR), 0) \
    X (RECEIPT,      C (MSG_ID) | C (SEQ), C (DUP)) \
    X (REJECT,       C (CODE) | C (REASON) | C (TEXT), C (MSG_ID) | C (PATH)) \
    X (DELIVER,      C (SEQ) | C (HDR), 0) \
    X (ACK,          C (SEQS), 0) \
    X (PING,         0, 0) \
    X (PONG,         0, 0) \
    X (SUBSCRIBE,    C (SUB_ID), C (CASE_ID) | C (TYPES)) \
    X (UNSUBSCRIBE,  C (SUB_ID), 0) \
    X (STATUS,       0, 0) \
    X (STATUS_REPLY, C (STATUS), 0) \
    X (QUERY,        C (QUERY_ID) | C (WINDOW), C (FROM_SEQ) | C (TO_SEQ) | C (FROM_TIME) \
                     | C (TO_TIME) | C (CASE_ID) | C (ORG) | C (TYPE)) \
    X (RECORD,       C (QUERY_ID) | C (SEQ) | C (TIME) | C (KIND) | C (HASH) | C (BODY), 0) \
    X (QUERY_END,    C (QUERY_ID) | C (COUNT) | C (CODE), 0) \
    X (BYE,          0, 0) \
    X (RELOAD,       0, 0) \
    X (RELOADED,     C (COUNT) | C (TEXT), 0) \
    X (REFERRAL_QUERY, C (QUERY_ID), C (CASE_ID) | C (ORG) | C (REFERRAL_ID)) \
    X (REFERRAL_INFO,  C (QUERY_ID) | C (COUNT) | C (BODY), 0) \
    X (DIRECTORY,      0, C (ORG)) \
    X (DIRECTORY_REPLY, C (COUNT) | C (ORGS), 0)

typedef struct {
    kim_cmd_id_t id;
    uint64_t required;
    uint64_t optional;
} s_cmd_rule_t;

static const s_cmd_rule_t s_cmd_rules [] = {
#define S_X_RULE(NAME, req, opt) { KIM_CMD_##NAME, C (CMD) | (req), (opt) },
    S_CMD_RULES (S_X_RULE)
#undef S_X_RULE
};

//  Per-type header fields: every type requires type, schema and msg_id and
//  may carry the fields in S_COMMON_OPT; the rest is per type. A field
//  neither required nor optional must be absent.
#define S_COMMON_REQ (H (TYPE) | H (SCHEMA) | H (MSG_ID))
#define S_COMMON_OPT (H (CREATED_AT) | H (SENDER) | H (PRIORITY) | H (PAYLOAD_LEN) \
                    | H (PAYLOAD_HASH) | H (SIG) | H (RULE))
#define S_ANSWER_REQ (H (RECIPIENT) | H (REFERRAL_ID))
#define S_ANSWER_OPT (H (REF_MSG_ID) | H (SENDER_REF) | H (RECIPIENT_REF) | H (CATEGORIES) \
                    | H (NOTE))

static const char *s_decline_codes [] = { "capacity", "not_eligible", "person_declined", "other", NULL };
static const char *s_status_codes [] = { "in_progress", "appointment_set", "no_show", NULL };

//  X(TYPE, required, optional, allowed codes or NULL)
#define S_TYPE_RULES(X) \
    X (REFERRAL,         H (RECIPIENT) | H (REFERRAL_ID) | H (CASE_ID) | H (SUBJECT) | H (PURPOSE) \
                         | H (LEGAL_BASIS), \
                         H (SENDER_REF) | H (RECIPIENT_REF) | H (CATEGORIES) | H (DEADLINE) | H (NOTE), NULL) \
    X (ACCEPT,           S_ANSWER_REQ, S_ANSWER_OPT, NULL) \
    X (DECLINE,          S_ANSWER_REQ | H (CODE), S_ANSWER_OPT, s_decline_codes) \
    X (NOT_COMPETENT,    S_ANSWER_REQ, S_ANSWER_OPT | H (ORG), NULL) \
    X (FORWARD,          S_ANSWER_REQ | H (ORG) | H (PURPOSE) | H (LEGAL_BASIS), \
                         S_ANSWER_OPT | H (SUBJECT) | H (DEADLINE), NULL) \
    X (STATUS,           S_ANSWER_REQ | H (CODE), S_ANSWER_OPT, s_status_codes) \
    X (OUTCOME,          S_ANSWER_REQ | H (CODE), S_ANSWER_OPT & ~H (NOTE), NULL) \
    X (WITHDRAW,         S_ANSWER_REQ, S_ANSWER_OPT, NULL) \
    X (INFO_REQUEST,     S_ANSWER_REQ, S_ANSWER_OPT, NULL) \
    X (INFO_RESPONSE,    S_ANSWER_REQ, S_ANSWER_OPT, NULL) \
    X (HANDOVER_OFFER,   H (RECIPIENT) | H (CASE_ID) | H (LEGAL_BASIS), \
                         H (REFERRALS) | H (SUBJECT) | H (PURPOSE) | H (CATEGORIES) | H (DEADLINE) \
                         | H (SENDER_REF) | H (NOTE), NULL) \
    X (HANDOVER_ACCEPT,  H (RECIPIENT) | H (CASE_ID) | H (REF_MSG_ID), \
                         H (SENDER_REF) | H (RECIPIENT_REF) | H (NOTE), NULL) \
    X (HANDOVER_DECLINE, H (RECIPIENT) | H (CASE_ID) | H (REF_MSG_ID), \
                         H (CODE) | H (SENDER_REF) | H (RECIPIENT_REF) | H (NOTE), NULL) \
    X (CASE_CLOSED,      H (CASE_ID), H (RECIPIENT) | H (SENDER_REF) | H (NOTE), NULL) \
    X (CONSENT_GRANT,    H (CASE_ID) | H (CONSENT) | H (SUBJECT) | H (RECIPIENTS) | H (PURPOSES) \
                         | H (VALID_UNTIL), H (CATEGORIES) | H (EXPLICIT), NULL) \
    X (CONSENT_REVOKE,   H (CONSENT), H (RECIPIENT) | H (CASE_ID), NULL) \
    X (ERASURE,          H (SUBJECT), H (RECIPIENT) | H (CASE_ID), NULL) \
    X (ACCESS_REPORT,    H (SUBJECT), H (RECIPIENT) | H (CASE_ID), NULL) \
    X (DELIVERED,        H (RECIPIENT) | H (REF_MSG_ID), H (REFERRAL_ID) | H (CASE_ID), NULL) \
    X (REMINDER,         H (RECIPIENT) | H (REFERRAL_ID) | H (DEADLINE), \
                         H (REF_MSG_ID) | H (CASE_ID), NULL) \
    X (EXPIRED,          H (RECIPIENT) | H (REFERRAL_ID) | H (DEADLINE), \
                         H (REF_MSG_ID) | H (CASE_ID), NULL)

typedef struct {
    kim_type_t type;
    uint64_t required;
    uint64_t optional;
    const char **codes;
} s_type_rule_t;

static const s_type_rule_t s_type_rules [] = {
#define S_X_RULE(NAME, req, opt, codes) { KIM_TYPE_##NAME, S_COMMON_REQ | (req), S_COMMON_OPT | (opt), codes },
    S_TYPE_RULES (S_X_RULE)
#undef S_X_RULE
};

static const s_cmd_rule_t *
s_cmd_rule (kim_cmd_id_t id)
{
    for (size_t i = 0; i < S_COUNT (s_cmd_rules); i++)
        if (s_cmd_rules [i].id == id)
            return &s_cmd_rules [i];
    return NULL;
}

static const s_type_rule_t *
s_type_rule (kim_type_t type)
{
    for (size_t i = 0; i < S_COUNT (s_type_rules); i++)
        if (s_type_rules [i].type == type)
            return &s_type_rules [i];
    return NULL;
}

static int
s_field_find (const s_field_t *table, size_t count, const uint8_t *key, size_t len)
{
    for (size_t i = 0; i < count; i++)
        if (table [i].key_len == len && memcmp (table [i].key, key, len) == 0)
            return (int) i;
    return -1;
}

static int
s_lowest_bit (uint64_t mask)
{
    int i = 0;
    while (!(mask & 1)) {
        mask >>= 1;
        i++;
    }
    return i;
}

//  --------------------------------------------------------------------------
//  Errors and paths

static void
s_path_add (char *path, const char *text, size_t len, bool sanitize)
{
    size_t at = strlen (path);
    for (size_t i = 0; i < len && at < KIM_PATH_MAX; i++) {
        char c = text [i];
        //  Keys from the wire may be anything; a path stays printable ASCII.
        if (sanitize && (c < 0x21 || c > 0x7e))
            c = '?';
        path [at++] = c;
    }
    path [at] = 0;
}

static void
s_path_index (char *path, uint64_t index)
{
    char tmp [24];
    snprintf (tmp, sizeof tmp, "[%" PRIu64 "]", index);
    s_path_add (path, tmp, strlen (tmp), false);
}

//  Fills err with code and the path prefix.key[index] (key may be NULL,
//  index < 0 for none). Returns -code.
static int
s_fail_raw (kim_decode_error_t *err, int code, const char *prefix,
            const char *key, size_t key_len, bool sanitize, int64_t index)
{
    err->code = code;
    err->path [0] = 0;
    s_path_add (err->path, prefix, strlen (prefix), false);
    if (key && key_len) {
        if (*prefix)
            s_path_add (err->path, ".", 1, false);
        s_path_add (err->path, key, key_len, sanitize);
    }
    if (index >= 0)
        s_path_index (err->path, (uint64_t) index);
    return -code;
}

static int
s_fail (kim_decode_error_t *err, int code, const char *prefix, const char *key, int64_t index)
{
    return s_fail_raw (err, code, prefix, key, key? strlen (key): 0, false, index);
}

static void
s_join (char *out, const char *prefix, const char *key)
{
    out [0] = 0;
    s_path_add (out, prefix, strlen (prefix), false);
    if (*prefix)
        s_path_add (out, ".", 1, false);
    s_path_add (out, key, strlen (key), false);
}

//  --------------------------------------------------------------------------
//  Checks on values in the structs (shared by decode, encode and validate)

static int
s_check_string (int kind, const char *s, size_t len, kim_decode_error_t *err,
                const char *prefix, const char *key, int64_t index)
{
    if (!kim_utf8_valid ((const uint8_t *) s, len))
        return s_fail (err, KIM_E_BAD_UTF8, prefix, key, index);
    if (kind == S_K_ID && !s_id_ok (s, len))
        return s_fail (err, KIM_E_BAD_ID, prefix, key, index);
    if (kind == S_K_ORG && !s_org_ok (s, len))
        return s_fail (err, KIM_E_BAD_ID, prefix, key, index);
    if (kind == S_K_CODE && !s_code_ok (s, len))
        return s_fail (err, KIM_E_BAD_VALUE, prefix, key, index);
    return 0;
}

static int
s_check_basis (const kim_msg_t *msg, const char *prefix, kim_decode_error_t *err)
{
    char sub [KIM_PATH_MAX + 1];
    s_join (sub, prefix, "legal_basis");
    size_t clen = strnlen (msg->consent_id, sizeof msg->consent_id);
    size_t tlen = strnlen (msg->citation, sizeof msg->citation);
    if (clen == sizeof msg->consent_id)
        return s_fail (err, KIM_E_TOO_LONG, sub, "consent_id", -1);
    if (tlen == sizeof msg->citation)
        return s_fail (err, KIM_E_TOO_LONG, sub, "citation", -1);
    if (clen && s_check_string (S_K_ID, msg->consent_id, clen, err, sub, "consent_id", -1))
        return -err->code;
    if (tlen && s_check_string (S_K_TEXT, msg->citation, tlen, err, sub, "citation", -1))
        return -err->code;
    switch (msg->basis) {
        case KIM_BASIS_NONE:
            return s_fail (err, KIM_E_MISSING_FIELD, sub, "kind", -1);
        case KIM_BASIS_CONSENT:
            if (!clen)
                return s_fail (err, KIM_E_MISSING_FIELD, sub, "consent_id", -1);
            if (tlen)
                return s_fail (err, KIM_E_BAD_VALUE, sub, "citation", -1);
            return 0;
        case KIM_BASIS_STATUTE:
            if (!tlen)
                return s_fail (err, KIM_E_MISSING_FIELD, sub, "citation", -1);
            if (clen)
                return s_fail (err, KIM_E_BAD_VALUE, sub, "consent_id", -1);
            return 0;
        default:
            return s_fail (err, KIM_E_BAD_VALUE, sub, "kind", -1);
    }
}

static bool
s_present (const s_field_t *f, const void *base)
{
    const uint8_t *v = (const uint8_t *) base + f->offset;
    switch (f->kind) {
        case S_K_ID: case S_K_ORG: case S_K_CODE: case S_K_TEXT: case S_K_KEY:
            return v [0] != 0;
        case S_K_U32:
            return *(const uint32_t *) v != 0;
        case S_K_U64:
            return *(const uint64_t *) v != 0;
        case S_K_BOOL:
            return *(const bool *) v;
        case S_K_BIN:
            return f->aux == f->offset || *((const bool *) ((const uint8_t *) base + f->aux));
        case S_K_TYPE:
            return *(const kim_type_t *) v != KIM_TYPE_NONE;
        case S_K_PRIORITY:
            return *(const kim_priority_t *) v != KIM_PRIORITY_NORMAL;
        case S_K_BASIS: {
            const kim_msg_t *msg = base;
            return msg->basis != KIM_BASIS_NONE || msg->consent_id [0] || msg->citation [0];
        }
        case S_K_CATEGORIES:
            return *(const uint32_t *) v != 0;
        case S_K_ID_LIST: case S_K_ORG_LIST: case S_K_CODE_LIST:
        case S_K_U32_LIST: case S_K_U64_LIST: case S_K_TYPE_LIST:
            return *(const size_t *) ((const uint8_t *) base + f->aux) != 0;
        case S_K_ERRCODE:
            return *(const int *) v != 0;
        case S_K_BODY:
            return *(const size_t *) ((const uint8_t *) base + f->aux) != 0;
        default:        //  SCHEMA, CMD, REASON, HDR, STATUS: always
            return true;
    }
}

static uint64_t
s_msg_presence (const kim_msg_t *msg)
{
    uint64_t mask = 0;
    for (size_t i = 0; i < S_COUNT (s_hdr_fields); i++)
        if (s_present (&s_hdr_fields [i], msg))
            mask |= 1ull << i;
    return mask;
}

static int s_msg_check_fields (const kim_msg_t *msg, const char *prefix, kim_decode_error_t *err);
static int s_check_field (const s_field_t *f, const void *base, const char *prefix, kim_decode_error_t *err);

//  Z85 (ZeroMQ RFC 32) alphabet only; the length is checked by the caller.
static bool
s_z85_ok (const char *s, size_t len)
{
    static const char alphabet [] = "0123456789abcdefghijklmnopqrstuvwxyz"
                                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    for (size_t i = 0; i < len; i++)
        if (!s [i] || !strchr (alphabet, s [i]))
            return false;
    return true;
}

//  "orgs[i]" as the prefix of an entry's fields.
static void
s_dir_prefix (char *sub, const char *prefix, const char *key, size_t index)
{
    s_join (sub, prefix, key);
    s_path_index (sub, (uint64_t) index);
}

//  One directory entry: every field valid, the required ones present.
static int
s_dir_entry_check (const kim_dir_entry_t *entry, const char *prefix, const char *key,
                   size_t index, kim_decode_error_t *err)
{
    char sub [KIM_PATH_MAX + 1];
    s_dir_prefix (sub, prefix, key, index);
    for (size_t i = 0; i < S_COUNT (s_dir_fields); i++) {
        const s_field_t *f = &s_dir_fields [i];
        bool present = f->kind == S_K_BOOL || s_present (f, entry);
        if (!present && (S_DIR_REQUIRED & (1ull << i)))
            return s_fail (err, KIM_E_MISSING_FIELD, sub, f->key, -1);
        if (present && s_check_field (f, entry, sub, err))
            return -err->code;
    }
    return 0;
}

//  Checks the value of one field as it is in the struct: format, range,
//  list counts, duplicates. Counts are checked before any element is read,
//  so a corrupt count cannot make us read past an array.
static int
s_check_field (const s_field_t *f, const void *base, const char *prefix, kim_decode_error_t *err)
{
    const uint8_t *v = (const uint8_t *) base + f->offset;
    switch (f->kind) {
        case S_K_ID: case S_K_ORG: case S_K_CODE: case S_K_TEXT: {
            size_t len = strnlen ((const char *) v, f->size);
            if (len == f->size)
                return s_fail (err, KIM_E_TOO_LONG, prefix, f->key, -1);
            return s_check_string ((int) f->kind, (const char *) v, len, err, prefix, f->key, -1);
        }
        case S_K_U32: case S_K_SCHEMA: {
            uint32_t x = *(const uint32_t *) v;
            if (x < f->lo || x > f->hi)
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_U64: {
            uint64_t x = *(const uint64_t *) v;
            if (x < f->lo || x > f->hi)
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_ERRCODE: {
            int x = *(const int *) v;
            if (x < (int) f->lo || x > (int) f->hi)
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_TYPE:
            if (!kim_type_name (*(const kim_type_t *) v))
                return s_fail (err, KIM_E_UNKNOWN_TYPE, prefix, f->key, -1);
            return 0;
        case S_K_PRIORITY: {
            kim_priority_t x = *(const kim_priority_t *) v;
            if (x != KIM_PRIORITY_NORMAL && x != KIM_PRIORITY_LOW && x != KIM_PRIORITY_HIGH)
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_BASIS:
            return s_check_basis (base, prefix, err);
        case S_K_CATEGORIES:
            if (*(const uint32_t *) v & ~S_CATEGORIES_ALL)
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        case S_K_ID_LIST: case S_K_ORG_LIST: case S_K_CODE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            size_t esize = f->size / f->max;
            if (count > f->max)
                return s_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            int kind = f->kind == S_K_ID_LIST? S_K_ID: f->kind == S_K_ORG_LIST? S_K_ORG: S_K_CODE;
            for (size_t i = 0; i < count; i++) {
                const char *s = (const char *) v + i * esize;
                size_t len = strnlen (s, esize);
                if (len == esize)
                    return s_fail (err, KIM_E_TOO_LONG, prefix, f->key, (int64_t) i);
                if (s_check_string (kind, s, len, err, prefix, f->key, (int64_t) i))
                    return -err->code;
                for (size_t j = 0; j < i; j++)
                    if (strcmp (s, (const char *) v + j * esize) == 0)
                        return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, (int64_t) i);
            }
            return 0;
        }
        case S_K_U32_LIST: case S_K_U64_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            if (count > f->max)
                return s_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            for (size_t i = 0; i < count; i++) {
                uint64_t x = f->kind == S_K_U32_LIST? ((const uint32_t *) v) [i]
                                                    : ((const uint64_t *) v) [i];
                if (x < f->lo || x > f->hi)
                    return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, (int64_t) i);
            }
            return 0;
        }
        case S_K_TYPE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            const kim_type_t *types = (const kim_type_t *) v;
            if (count > f->max)
                return s_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            for (size_t i = 0; i < count; i++) {
                if (!kim_type_name (types [i]))
                    return s_fail (err, KIM_E_UNKNOWN_TYPE, prefix, f->key, (int64_t) i);
                for (size_t j = 0; j < i; j++)
                    if (types [j] == types [i])
                        return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, (int64_t) i);
            }
            return 0;
        }
        case S_K_BODY: {
            const kim_cmd_t *cmd = base;
            if (cmd->body_size > KIM_FRAME_MAX || (cmd->body_size && !cmd->body))
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_HDR: {
            char sub [KIM_PATH_MAX + 1];
            s_join (sub, prefix, f->key);
            return s_msg_check_fields ((const kim_msg_t *) v, sub, err);
        }
        case S_K_KEY: {
            size_t len = strnlen ((const char *) v, f->size);
            if (len == f->size)
                return s_fail (err, KIM_E_TOO_LONG, prefix, f->key, -1);
            if (len != KIM_KEY_TEXT_MAX || !s_z85_ok ((const char *) v, len))
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_DIR: {
            const kim_cmd_t *cmd = base;
            if (cmd->dir_count > KIM_DIRECTORY_MAX)
                return s_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            if (cmd->dir_count && !cmd->dir && !(cmd->dir_raw && cmd->dir_raw_size))
                return s_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            for (size_t i = 0; cmd->dir && i < cmd->dir_count; i++)
                if (s_dir_entry_check (&cmd->dir [i], prefix, f->key, i, err))
                    return -err->code;
            return 0;
        }
        default:        //  BOOL, BIN, CMD, REASON, STATUS (plain numbers)
            return 0;
    }
}

static int
s_msg_check_fields (const kim_msg_t *msg, const char *prefix, kim_decode_error_t *err)
{
    for (size_t i = 0; i < S_COUNT (s_hdr_fields); i++) {
        const s_field_t *f = &s_hdr_fields [i];
        if (s_present (f, msg) && s_check_field (f, msg, prefix, err))
            return -err->code;
    }
    return 0;
}

//  The per-type rules, on a header whose fields are each valid.
static int
s_msg_rules (const kim_msg_t *msg, const char *prefix, kim_decode_error_t *err)
{
    if (msg->type == KIM_TYPE_NONE)
        return s_fail (err, KIM_E_MISSING_FIELD, prefix, "type", -1);
    const s_type_rule_t *rule = s_type_rule (msg->type);
    if (!rule)
        return s_fail (err, KIM_E_UNKNOWN_TYPE, prefix, "type", -1);
    uint64_t mask = s_msg_presence (msg);
    uint64_t missing = rule->required & ~mask;
    if (missing)
        return s_fail (err, KIM_E_MISSING_FIELD, prefix, s_hdr_fields [s_lowest_bit (missing)].key, -1);
    uint64_t extra = mask & ~(rule->required | rule->optional);
    if (extra)
        return s_fail (err, KIM_E_BAD_VALUE, prefix, s_hdr_fields [s_lowest_bit (extra)].key, -1);
    if (msg->schema != KIM_SCHEMA_VERSION)
        return s_fail (err, KIM_E_BAD_VALUE, prefix, "schema", -1);
    if (rule->codes) {
        size_t i = 0;
        while (rule->codes [i] && strcmp (rule->codes [i], msg->code) != 0)
            i++;
        if (!rule->codes [i])
            return s_fail (err, KIM_E_BAD_VALUE, prefix, "code", -1);
    }
    return 0;
}

int
kim_msg_validate (const kim_msg_t *self, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    if (!err)
        err = &dummy;
    err->code = 0;
    err->path [0] = 0;
    if (!self)
        return s_fail (err, KIM_E_ARGS, "", NULL, -1);
    if (s_msg_check_fields (self, "", err))
        return -err->code;
    return s_msg_rules (self, "", err);
}

static bool
s_wire_code (int code)
{
    return code >= 100 && code <= 899;
}

//  Rules of a command beyond its single fields. `self` has valid fields.
static int
s_cmd_check_rules (const kim_cmd_t *self, kim_decode_error_t *err)
{
    switch (self->id) {
        case KIM_CMD_HELLO:
            if (self->version_count == 0)
                return s_fail (err, KIM_E_BAD_VALUE, "", "versions", -1);
            for (size_t i = 1; i < self->version_count; i++)
                if (self->versions [i] <= self->versions [i - 1])
                    return s_fail (err, KIM_E_BAD_VALUE, "", "versions", (int64_t) i);
            return 0;
        case KIM_CMD_ACK:
            if (self->ack_count == 0)
                return s_fail (err, KIM_E_BAD_VALUE, "", "seqs", -1);
            return 0;
        case KIM_CMD_REJECT:
            if (!s_wire_code (self->code))
                return s_fail (err, KIM_E_BAD_VALUE, "", "code", -1);
            return 0;
        case KIM_CMD_QUERY_END:
            if (self->code != 0 && !s_wire_code (self->code))
                return s_fail (err, KIM_E_BAD_VALUE, "", "code", -1);
            return 0;
        case KIM_CMD_QUERY:
            if (self->window == 0)
                return s_fail (err, KIM_E_BAD_VALUE, "", "window", -1);
            if (self->from_seq && self->to_seq && self->from_seq > self->to_seq)
                return s_fail (err, KIM_E_BAD_VALUE, "", "to_seq", -1);
            if (self->from_time && self->to_time && self->from_time > self->to_time)
                return s_fail (err, KIM_E_BAD_VALUE, "", "to_time", -1);
            return 0;
        case KIM_CMD_SEND: {
            const kim_msg_t *msg = &self->msg;
            if (msg->type == KIM_TYPE_NONE)
                return s_fail (err, KIM_E_MISSING_FIELD, "hdr", "type", -1);
            unsigned flags = kim_type_flags (msg->type);
            //  Broker-made types cannot be sent: the check lives here so no
            //  broker code path can forget it.
            if (!(flags & KIM_MSG_FROM_AGENCY))
                return s_fail (err, KIM_E_FORBIDDEN, "hdr", "type", -1);
            if (s_msg_rules (msg, "hdr", err))
                return -err->code;
            //  Registry messages go to the broker; it sets recipient when it
            //  tells earlier recipients.
            if ((flags & KIM_MSG_FROM_BROKER) && msg->recipient [0])
                return s_fail (err, KIM_E_BAD_VALUE, "hdr", "recipient", -1);
            return 0;
        }
        case KIM_CMD_DELIVER:
            if (s_msg_rules (&self->msg, "hdr", err))
                return -err->code;
            if (!self->msg.sender [0])
                return s_fail (err, KIM_E_MISSING_FIELD, "hdr", "sender", -1);
            if (!self->msg.has_payload_hash)
                return s_fail (err, KIM_E_MISSING_FIELD, "hdr", "payload_hash", -1);
            return 0;
        default:
            return 0;
    }
}

//  --------------------------------------------------------------------------
//  Decoding: a bounds-checked cursor over MessagePack

typedef enum {
    S_T_NIL, S_T_BOOL, S_T_UINT, S_T_NINT, S_T_FLOAT, S_T_STR, S_T_BIN,
    S_T_ARRAY, S_T_MAP, S_T_EXT
} s_tag_t;

typedef struct {
    s_tag_t tag;
    uint64_t u;                 //  UINT value, BOOL value, ARRAY/MAP count
    const uint8_t *ptr;         //  STR/BIN/EXT bytes
    size_t len;
} s_obj_t;

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} s_cur_t;

static uint64_t
s_be (const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p [i];
    return v;
}

//  Reads the next object's header; for STR, BIN and EXT also its bytes.
//  Returns 0, or -1 when the input ends early or the byte is never used.
static int
s_next (s_cur_t *c, s_obj_t *o)
{
    if (c->p >= c->end)
        return -1;
    uint8_t b = *c->p++;
    size_t avail = (size_t) (c->end - c->p);
    int n = 0;                  //  bytes of the length or value that follow
    o->u = 0;
    o->ptr = NULL;
    o->len = 0;
    if (b <= 0x7f) {
        o->tag = S_T_UINT;
        o->u = b;
        return 0;
    }
    if (b >= 0xe0) {
        o->tag = S_T_NINT;
        return 0;
    }
    if (b <= 0x8f) {
        o->tag = S_T_MAP;
        o->u = b & 0x0f;
        return 0;
    }
    if (b <= 0x9f) {
        o->tag = S_T_ARRAY;
        o->u = b & 0x0f;
        return 0;
    }
    if (b <= 0xbf) {
        o->tag = S_T_STR;
        o->len = b & 0x1f;
        goto bytes;
    }
    switch (b) {
        case 0xc0: o->tag = S_T_NIL; return 0;
        case 0xc2: case 0xc3: o->tag = S_T_BOOL; o->u = b & 1; return 0;
        case 0xc4: o->tag = S_T_BIN; n = 1; goto length;
        case 0xc5: o->tag = S_T_BIN; n = 2; goto length;
        case 0xc6: o->tag = S_T_BIN; n = 4; goto length;
        case 0xc7: o->tag = S_T_EXT; n = 1; goto ext_length;
        case 0xc8: o->tag = S_T_EXT; n = 2; goto ext_length;
        case 0xc9: o->tag = S_T_EXT; n = 4; goto ext_length;
        case 0xca: o->tag = S_T_FLOAT; o->len = 4; goto bytes;
        case 0xcb: o->tag = S_T_FLOAT; o->len = 8; goto bytes;
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            n = 1 << (b - 0xcc);
            if (avail < (size_t) n)
                return -1;
            o->tag = S_T_UINT;
            o->u = s_be (c->p, n);
            c->p += n;
            return 0;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3:
            n = 1 << (b - 0xd0);
            if (avail < (size_t) n)
                return -1;
            //  A signed encoding of a non-negative value is still a valid uint.
            o->tag = (c->p [0] & 0x80)? S_T_NINT: S_T_UINT;
            o->u = o->tag == S_T_UINT? s_be (c->p, n): 0;
            c->p += n;
            return 0;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            o->tag = S_T_EXT;
            o->len = ((size_t) 1 << (b - 0xd4)) + 1;
            goto bytes;
        case 0xd9: o->tag = S_T_STR; n = 1; goto length;
        case 0xda: o->tag = S_T_STR; n = 2; goto length;
        case 0xdb: o->tag = S_T_STR; n = 4; goto length;
        case 0xdc: case 0xdd: case 0xde: case 0xdf:
            n = (b & 1)? 4: 2;
            if (avail < (size_t) n)
                return -1;
            o->tag = b <= 0xdd? S_T_ARRAY: S_T_MAP;
            o->u = s_be (c->p, n);
            c->p += n;
            return 0;
        default:        //  0xc1, never used
            return -1;
    }
ext_length:
    if (avail < (size_t) n)
        return -1;
    o->len = (size_t) s_be (c->p, n) + 1;       //  + the ext type byte
    c->p += n;
    goto bytes;
length:
    if (avail < (size_t) n)
        return -1;
    o->len = (size_t) s_be (c->p, n);
    c->p += n;
bytes:
    if ((size_t) (c->end - c->p) < o->len)
        return -1;
    o->ptr = c->p;
    c->p += o->len;
    return 0;
}

typedef struct {
    const uint8_t *key;         //  map key, or NULL for an array index
    size_t key_len;
    uint64_t index;
} s_comp_t;

typedef struct {
    s_cur_t c;
    kim_decode_error_t *err;
    //  Structure pass: where we are, for error paths
    int base_depth;             //  depth of the outermost map (command 1, header 2)
    bool find_cmd;
    s_comp_t comp [KIM_DEPTH_MAX + 2];
    const uint8_t *cmd_value;   //  the first top-level "cmd" value
    //  Field pass
    const uint8_t *reason;
    size_t reason_len;
    kim_dir_entry_t *dir_out;   //  DIRECTORY_REPLY entries go here, if not NULL
    size_t dir_max;
} s_dec_t;

static int
s_scan_fail (s_dec_t *d, int code, int upto)
{
    kim_decode_error_t *err = d->err;
    err->code = code;
    err->path [0] = 0;
    for (int level = d->base_depth; level <= upto; level++) {
        s_comp_t *comp = &d->comp [level];
        if (comp->key) {
            if (err->path [0])
                s_path_add (err->path, ".", 1, false);
            s_path_add (err->path, (const char *) comp->key, comp->key_len, true);
        }
        else
            s_path_index (err->path, comp->index);
    }
    return -code;
}

static int s_scan_value (s_dec_t *d, s_obj_t *o, int depth);

static int
s_scan (s_dec_t *d, int depth)
{
    s_obj_t o;
    if (s_next (&d->c, &o))
        return s_scan_fail (d, KIM_E_MALFORMED, depth - 1);
    return s_scan_value (d, &o, depth);
}

//  Checks the contents of an object whose header was read. `depth` is the
//  depth the object has if it is a map or array; recursion stops at
//  KIM_DEPTH_MAX + 1, so hostile nesting cannot exhaust the stack.
static int
s_scan_value (s_dec_t *d, s_obj_t *o, int depth)
{
    if (o->tag != S_T_MAP && o->tag != S_T_ARRAY)
        return 0;
    if (depth > KIM_DEPTH_MAX)
        return s_scan_fail (d, KIM_E_TOO_DEEP, depth - 1);
    if (o->u > (o->tag == S_T_MAP? KIM_MAP_MAX: KIM_ARRAY_MAX))
        return s_scan_fail (d, KIM_E_TOO_MANY, depth - 1);
    s_comp_t *comp = &d->comp [depth];
    for (uint64_t i = 0; i < o->u; i++) {
        comp->key = NULL;
        comp->key_len = 0;
        comp->index = i;
        if (o->tag == S_T_MAP) {
            s_obj_t k;
            if (s_next (&d->c, &k))
                return s_scan_fail (d, KIM_E_MALFORMED, depth);
            if (k.tag == S_T_STR) {
                comp->key = k.ptr;
                comp->key_len = k.len;
            }
            else {
                comp->key = (const uint8_t *) "?";
                comp->key_len = 1;
                if (s_scan_value (d, &k, depth + 1))
                    return -d->err->code;
            }
            if (d->find_cmd && depth == d->base_depth && !d->cmd_value
            &&  k.tag == S_T_STR && k.len == 3 && memcmp (k.ptr, "cmd", 3) == 0)
                d->cmd_value = d->c.p;
        }
        if (s_scan (d, depth + 1))
            return -d->err->code;
    }
    return 0;
}

//  Skips one object of a structure that passed the scan.
static int
s_skip (s_cur_t *c, int depth)
{
    s_obj_t o;
    if (s_next (c, &o) || depth > KIM_DEPTH_MAX + 1)
        return -1;
    if (o.tag == S_T_ARRAY || o.tag == S_T_MAP) {
        uint64_t n = o.tag == S_T_MAP? o.u * 2: o.u;
        for (uint64_t i = 0; i < n; i++)
            if (s_skip (c, depth + 1))
                return -1;
    }
    return 0;
}

//  First pass over a whole frame: the structure only.
static int
s_scan_frame (s_dec_t *d, const uint8_t *data, size_t size, int base_depth, bool find_cmd)
{
    d->c.p = data;
    d->c.end = data + size;
    d->base_depth = base_depth;
    d->find_cmd = find_cmd;
    d->cmd_value = NULL;
    d->reason = NULL;
    d->reason_len = 0;
    s_obj_t o;
    if (s_next (&d->c, &o) || o.tag != S_T_MAP)
        return s_fail (d->err, KIM_E_MALFORMED, "", NULL, -1);
    if (s_scan_value (d, &o, base_depth))
        return -d->err->code;
    if (d->c.p != d->c.end)
        return s_fail (d->err, KIM_E_MALFORMED, "", NULL, -1);
    d->c.p = data;              //  rewind for the field pass
    return 0;
}

static int
s_read_str (s_dec_t *d, s_obj_t *o, const char *prefix, const char *key, int64_t index)
{
    if (s_next (&d->c, o))
        return s_fail (d->err, KIM_E_MALFORMED, prefix, key, index);
    if (o->tag != S_T_STR)
        return s_fail (d->err, KIM_E_BAD_TYPE, prefix, key, index);
    return 0;
}

//  Reads a str into a char buffer. Type, length and UTF-8 are checked here;
//  the format is checked on the copy (s_check_field), as for encoding.
static int
s_read_str_into (s_dec_t *d, char *buf, size_t size, const char *prefix, const char *key, int64_t index)
{
    s_obj_t o = { 0 };
    if (s_read_str (d, &o, prefix, key, index))
        return -d->err->code;
    if (o.len > size - 1)
        return s_fail (d->err, KIM_E_TOO_LONG, prefix, key, index);
    //  Before copying: a NUL would silently cut the C string short.
    if (!kim_utf8_valid (o.ptr, o.len))
        return s_fail (d->err, KIM_E_BAD_UTF8, prefix, key, index);
    if (o.len)
        memcpy (buf, o.ptr, o.len);
    buf [o.len] = 0;
    return 0;
}

static int
s_read_uint (s_dec_t *d, uint64_t *value, uint64_t max, const char *prefix, const char *key, int64_t index)
{
    s_obj_t o;
    if (s_next (&d->c, &o))
        return s_fail (d->err, KIM_E_MALFORMED, prefix, key, index);
    if (o.tag == S_T_NINT)
        return s_fail (d->err, KIM_E_BAD_VALUE, prefix, key, index);
    if (o.tag != S_T_UINT)
        return s_fail (d->err, KIM_E_BAD_TYPE, prefix, key, index);
    if (o.u > max)
        return s_fail (d->err, KIM_E_BAD_VALUE, prefix, key, index);
    *value = o.u;
    return 0;
}

static int
s_read_array (s_dec_t *d, s_obj_t *o, uint64_t max, const char *prefix, const char *key)
{
    if (s_next (&d->c, o))
        return s_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
    if (o->tag != S_T_ARRAY)
        return s_fail (d->err, KIM_E_BAD_TYPE, prefix, key, -1);
    if (o->u > max)
        return s_fail (d->err, KIM_E_TOO_MANY, prefix, key, -1);
    return 0;
}

static int s_decode_map (s_dec_t *d, const s_field_t *table, size_t count, uint64_t allowed,
                         void *base, const char *prefix, uint64_t *seen_p);

static int
s_decode_field (s_dec_t *d, const s_field_t *f, void *base, const char *prefix)
{
    uint8_t *v = (uint8_t *) base + f->offset;
    const char *key = f->key;
    s_obj_t o;
    uint64_t x;
    switch (f->kind) {
        case S_K_CMD:
            if (s_skip (&d->c, 0))
                return s_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
            return 0;
        case S_K_ID: case S_K_ORG: case S_K_CODE: case S_K_TEXT: case S_K_KEY:
            if (s_read_str_into (d, (char *) v, f->size, prefix, key, -1))
                return -d->err->code;
            break;
        case S_K_DIR: {
            kim_cmd_t *cmd = base;
            const uint8_t *start = d->c.p;
            if (s_read_array (d, &o, KIM_DIRECTORY_MAX, prefix, key))
                return -d->err->code;
            if (d->dir_out && o.u > d->dir_max)
                return s_fail (d->err, KIM_E_TOO_MANY, prefix, key, -1);
            for (uint64_t i = 0; i < o.u; i++) {
                kim_dir_entry_t scratch, *entry = d->dir_out? &d->dir_out [i]: &scratch;
                memset (entry, 0, sizeof *entry);
                char sub [KIM_PATH_MAX + 1];
                s_dir_prefix (sub, prefix, key, (size_t) i);
                uint64_t seen;
                if (s_decode_map (d, s_dir_fields, S_COUNT (s_dir_fields), ~0ull, entry, sub, &seen))
                    return -d->err->code;
                if (S_DIR_REQUIRED & ~seen)
                    return s_fail (d->err, KIM_E_MISSING_FIELD, sub,
                                   s_dir_fields [s_lowest_bit (S_DIR_REQUIRED & ~seen)].key, -1);
                //  The fields were checked one by one as they were read.
            }
            cmd->dir_count = (size_t) o.u;
            cmd->dir = d->dir_out;
            cmd->dir_raw = start;
            cmd->dir_raw_size = (size_t) (d->c.p - start);
            return 0;
        }
        case S_K_U32: case S_K_SCHEMA:
            if (s_read_uint (d, &x, UINT32_MAX, prefix, key, -1))
                return -d->err->code;
            *(uint32_t *) v = (uint32_t) x;
            break;
        case S_K_U64:
            if (s_read_uint (d, &x, UINT64_MAX, prefix, key, -1))
                return -d->err->code;
            *(uint64_t *) v = x;
            break;
        case S_K_ERRCODE:
            if (s_read_uint (d, &x, f->hi, prefix, key, -1))
                return -d->err->code;
            *(int *) v = (int) x;
            break;
        case S_K_BOOL:
            if (s_next (&d->c, &o))
                return s_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
            if (o.tag != S_T_BOOL)
                return s_fail (d->err, KIM_E_BAD_TYPE, prefix, key, -1);
            *(bool *) v = o.u != 0;
            break;
        case S_K_BIN: case S_K_BODY:
            if (s_next (&d->c, &o))
                return s_fail (d->err, KIM_E_MALFORMED, prefix, key, -1);
            if (o.tag != S_T_BIN)
                return s_fail (d->err, KIM_E_BAD_TYPE, prefix, key, -1);
            if (f->kind == S_K_BODY) {
                *(const uint8_t **) v = o.len? o.ptr: NULL;
                *(size_t *) ((uint8_t *) base + f->aux) = o.len;
                break;
            }
            if (o.len != f->size)
                return s_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            memcpy (v, o.ptr, o.len);
            if (f->aux != f->offset)
                *(bool *) ((uint8_t *) base + f->aux) = true;
            break;
        case S_K_TYPE: {
            if (s_read_str (d, &o, prefix, key, -1))
                return -d->err->code;
            kim_type_t type = s_type_lookup (o.ptr, o.len);
            if (type == KIM_TYPE_NONE)
                return s_fail (d->err, KIM_E_UNKNOWN_TYPE, prefix, key, -1);
            *(kim_type_t *) v = type;
            break;
        }
        case S_K_PRIORITY: case S_K_BASIS_KIND: {
            if (s_read_str (d, &o, prefix, key, -1))
                return -d->err->code;
            const char **names = f->kind == S_K_PRIORITY? s_priority_names: s_basis_names;
            int found = -1;
            for (int i = 0; i < 3; i++)
                if (names [i] && o.len == strlen (names [i]) && memcmp (o.ptr, names [i], o.len) == 0)
                    found = i;
            if (found < 0)
                return s_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            //  Both enums are plain ints numbered as their name tables.
            if (f->kind == S_K_PRIORITY)
                *(kim_priority_t *) v = (kim_priority_t) found;
            else
                *(kim_basis_t *) v = (kim_basis_t) found;
            return 0;
        }
        case S_K_BASIS: {
            char sub [KIM_PATH_MAX + 1];
            s_join (sub, prefix, key);
            uint64_t seen;
            if (s_decode_map (d, s_basis_fields, S_COUNT (s_basis_fields), ~0ull, base, sub, &seen))
                return -d->err->code;
            if (!(seen & (1ull << S_B_KIND)))
                return s_fail (d->err, KIM_E_MISSING_FIELD, sub, "kind", -1);
            return s_check_basis (base, prefix, d->err);
        }
        case S_K_CATEGORIES: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            uint32_t bits = 0;
            for (uint64_t i = 0; i < o.u; i++) {
                s_obj_t name;
                if (s_read_str (d, &name, prefix, key, (int64_t) i))
                    return -d->err->code;
                uint32_t bit = s_category_lookup (name.ptr, name.len);
                if (!bit || (bits & bit))
                    return s_fail (d->err, KIM_E_BAD_VALUE, prefix, key, (int64_t) i);
                bits |= bit;
            }
            *(uint32_t *) v = bits;
            return 0;
        }
        case S_K_ID_LIST: case S_K_ORG_LIST: case S_K_CODE_LIST: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            size_t esize = f->size / f->max;
            for (uint64_t i = 0; i < o.u; i++)
                if (s_read_str_into (d, (char *) v + i * esize, esize, prefix, key, (int64_t) i))
                    return -d->err->code;
            *(size_t *) ((uint8_t *) base + f->aux) = (size_t) o.u;
            break;
        }
        case S_K_U32_LIST: case S_K_U64_LIST: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            uint64_t max = f->kind == S_K_U32_LIST? UINT32_MAX: UINT64_MAX;
            for (uint64_t i = 0; i < o.u; i++) {
                if (s_read_uint (d, &x, max, prefix, key, (int64_t) i))
                    return -d->err->code;
                if (f->kind == S_K_U32_LIST)
                    ((uint32_t *) v) [i] = (uint32_t) x;
                else
                    ((uint64_t *) v) [i] = x;
            }
            *(size_t *) ((uint8_t *) base + f->aux) = (size_t) o.u;
            break;
        }
        case S_K_TYPE_LIST: {
            if (s_read_array (d, &o, f->max, prefix, key))
                return -d->err->code;
            for (uint64_t i = 0; i < o.u; i++) {
                s_obj_t name;
                if (s_read_str (d, &name, prefix, key, (int64_t) i))
                    return -d->err->code;
                kim_type_t type = s_type_lookup (name.ptr, name.len);
                if (type == KIM_TYPE_NONE)
                    return s_fail (d->err, KIM_E_UNKNOWN_TYPE, prefix, key, (int64_t) i);
                ((kim_type_t *) v) [i] = type;
            }
            *(size_t *) ((uint8_t *) base + f->aux) = (size_t) o.u;
            break;
        }
        case S_K_REASON: {
            if (s_read_str (d, &o, prefix, key, -1))
                return -d->err->code;
            if (o.len > KIM_REASON_MAX)
                return s_fail (d->err, KIM_E_TOO_LONG, prefix, key, -1);
            if (o.len == 0)
                return s_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            for (size_t i = 0; i < o.len; i++) {
                uint8_t c = o.ptr [i];
                if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
                    return s_fail (d->err, KIM_E_BAD_VALUE, prefix, key, -1);
            }
            d->reason = o.ptr;
            d->reason_len = o.len;
            return 0;
        }
        case S_K_HDR: {
            char sub [KIM_PATH_MAX + 1];
            s_join (sub, prefix, key);
            uint64_t seen;
            return s_decode_map (d, s_hdr_fields, S_COUNT (s_hdr_fields), ~0ull, v, sub, &seen);
        }
        case S_K_STATUS: {
            char sub [KIM_PATH_MAX + 1];
            s_join (sub, prefix, key);
            uint64_t seen, all = (1ull << S_COUNT (s_status_fields)) - 1;
            if (s_decode_map (d, s_status_fields, S_COUNT (s_status_fields), all, v, sub, &seen))
                return -d->err->code;
            if (seen != all)
                return s_fail (d->err, KIM_E_MISSING_FIELD, sub,
                               s_status_fields [s_lowest_bit (all & ~seen)].key, -1);
            return 0;
        }
        default:
            return s_fail (d->err, KIM_E_INTERNAL, prefix, key, -1);
    }
    //  The key was present, so its value is checked even when it reads as
    //  "absent" (an empty id is a bad id, not a missing one).
    return s_check_field (f, base, prefix, d->err);
}

//  Decodes one map of known fields. Keys may come in any order; `allowed`
//  says which table entries this map may hold, anything else is unknown
//  unless it starts with "x-" (ignored). *seen_p gets the fields present.
static int
s_decode_map (s_dec_t *d, const s_field_t *table, size_t count, uint64_t allowed,
              void *base, const char *prefix, uint64_t *seen_p)
{
    s_obj_t m;
    if (s_next (&d->c, &m))
        return s_fail (d->err, KIM_E_MALFORMED, prefix, NULL, -1);
    if (m.tag != S_T_MAP)
        return s_fail (d->err, KIM_E_BAD_TYPE, prefix, NULL, -1);
    //  Extension keys are remembered to refuse duplicates among them too.
    struct { const uint8_t *ptr; size_t len; } ext [KIM_MAP_MAX];
    size_t ext_count = 0;
    uint64_t seen = 0;
    for (uint64_t i = 0; i < m.u; i++) {
        s_obj_t k;
        if (s_next (&d->c, &k))
            return s_fail (d->err, KIM_E_MALFORMED, prefix, NULL, -1);
        if (k.tag != S_T_STR)
            return s_fail (d->err, KIM_E_BAD_TYPE, prefix, NULL, -1);
        int idx = s_field_find (table, count, k.ptr, k.len);
        if (idx < 0 || !(allowed & (1ull << idx))) {
            if (k.len < 2 || k.ptr [0] != 'x' || k.ptr [1] != '-')
                return s_fail_raw (d->err, KIM_E_UNKNOWN_FIELD, prefix,
                                   (const char *) k.ptr, k.len, true, -1);
            if (!kim_utf8_valid (k.ptr, k.len))
                return s_fail_raw (d->err, KIM_E_BAD_UTF8, prefix,
                                   (const char *) k.ptr, k.len, true, -1);
            for (size_t j = 0; j < ext_count; j++)
                if (ext [j].len == k.len && memcmp (ext [j].ptr, k.ptr, k.len) == 0)
                    return s_fail_raw (d->err, KIM_E_DUPLICATE_FIELD, prefix,
                                       (const char *) k.ptr, k.len, true, -1);
            if (ext_count < KIM_MAP_MAX) {
                ext [ext_count].ptr = k.ptr;
                ext [ext_count].len = k.len;
                ext_count++;
            }
            if (s_skip (&d->c, 0))
                return s_fail (d->err, KIM_E_MALFORMED, prefix, NULL, -1);
            continue;
        }
        if (seen & (1ull << idx))
            return s_fail (d->err, KIM_E_DUPLICATE_FIELD, prefix, table [idx].key, -1);
        seen |= 1ull << idx;
        if (s_decode_field (d, &table [idx], base, prefix))
            return -d->err->code;
    }
    *seen_p = seen;
    return 0;
}

//  Callers may pass no err; errors then go to a local dummy.
static void
s_begin (kim_decode_error_t **err_p, kim_decode_error_t *dummy)
{
    if (!*err_p)
        *err_p = dummy;
    (*err_p)->code = 0;
    (*err_p)->path [0] = 0;
}

int
kim_msg_decode (kim_msg_t *self, const uint8_t *data, size_t size, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    s_begin (&err, &dummy);
    if (!self)
        return s_fail (err, KIM_E_ARGS, "", NULL, -1);
    kim_msg_init (self);
    if (!data || size == 0)
        return s_fail (err, KIM_E_MALFORMED, "", NULL, -1);
    if (size > KIM_FRAME_MAX)
        return s_fail (err, KIM_E_TOO_LARGE, "", NULL, -1);
    s_dec_t d;
    d.err = err;
    //  A header alone is as deep as it is inside a command, so the limits
    //  are the same whichever way it is read.
    if (s_scan_frame (&d, data, size, 2, false))
        return -err->code;
    uint64_t seen;
    if (s_decode_map (&d, s_hdr_fields, S_COUNT (s_hdr_fields), ~0ull, self, "", &seen))
        return -err->code;
    return 0;
}

static int
s_cmd_decode (kim_cmd_t *self, const uint8_t *data, size_t size, kim_dir_entry_t *entries,
              size_t max, kim_decode_error_t *err);

int
kim_cmd_decode (kim_cmd_t *self, const uint8_t *data, size_t size, kim_decode_error_t *err)
{
    return s_cmd_decode (self, data, size, NULL, 0, err);
}

int
kim_cmd_decode_directory (kim_cmd_t *self, const uint8_t *data, size_t size,
                          kim_dir_entry_t *entries, size_t max, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    if (!entries) {
        s_begin (&err, &dummy);
        return s_fail (err, KIM_E_ARGS, "", NULL, -1);
    }
    return s_cmd_decode (self, data, size, entries, max, err);
}

static int
s_cmd_decode (kim_cmd_t *self, const uint8_t *data, size_t size, kim_dir_entry_t *entries,
              size_t max, kim_decode_error_t *err)
{
    kim_decode_error_t dummy;
    s_begin (&err, &dummy);
    if (!self)
        return s_fail (err, KIM_E_ARGS, "", NULL, -1);
    kim_cmd_init (self, KIM_CMD_NONE);
    if (!data || size == 0)
        return s_fail (err, KIM_E_MALFORMED, "", NULL, -1);
    if (size > KIM_FRAME_MAX)
        return s_fail (err, KIM_E_TOO_LARGE, "", NULL, -1);
    s_dec_t d;
    d.err = err;
    if (s_scan_frame (&d, data, size, 1, true))
        return -err->code;
    d.dir_out = entries;
    d.dir_max = max;

    //  The command decides which keys are known, so it is read first.
    if (!d.cmd_value)
        return s_fail (err, KIM_E_MISSING_FIELD, "", "cmd", -1);
    s_cur_t c = { d.cmd_value, data + size };
    s_obj_t o;
    if (s_next (&c, &o) || o.tag != S_T_STR)
        return s_fail (err, KIM_E_BAD_TYPE, "", "cmd", -1);
    kim_cmd_id_t id = s_cmd_lookup (o.ptr, o.len);
    const s_cmd_rule_t *rule = s_cmd_rule (id);
    if (!rule)
        return s_fail (err, KIM_E_UNKNOWN_CMD, "", "cmd", -1);
    self->id = id;

    uint64_t seen;
    if (s_decode_map (&d, s_cmd_fields, S_COUNT (s_cmd_fields), rule->required | rule->optional,
                      self, "", &seen))
        return -err->code;
    uint64_t missing = rule->required & ~seen;
    if (missing)
        return s_fail (err, KIM_E_MISSING_FIELD, "", s_cmd_fields [s_lowest_bit (missing)].key, -1);
    //  The reason must name the code, unless the code is newer than this
    //  build (then any well-formed name passes).
    if (id == KIM_CMD_REJECT && strcmp (kim_errname (self->code), "UNKNOWN") != 0) {
        const char *name = kim_errname (self->code);
        if (d.reason_len != strlen (name) || memcmp (d.reason, name, d.reason_len) != 0)
            return s_fail (err, KIM_E_BAD_VALUE, "", "reason", -1);
    }
    return s_cmd_check_rules (self, err);
}

//  --------------------------------------------------------------------------
//  Encoding

typedef struct {
    msgpack_packer pk;
    kim_buf_t *out;
    bool failed;
} s_pack_t;

static int
s_pack_write (void *data, const char *buf, size_t len)
{
    s_pack_t *self = data;
    //  The packer writes a token at a time, mostly a few bytes: copy those
    //  in place rather than through kim_buf_append and a memcpy call.
    kim_buf_t *out = self->out;
    if (len <= 8 && out->capacity - out->size >= len) {
        for (size_t i = 0; i < len; i++)
            out->data [out->size + i] = (uint8_t) buf [i];
        out->size += len;
        return 0;
    }
    if (kim_buf_append (self->out, buf, len)) {
        self->failed = true;
        return -1;
    }
    return 0;
}

static void
s_pack_init (s_pack_t *self, kim_buf_t *out)
{
    self->out = out;
    self->failed = false;
    msgpack_packer_init (&self->pk, self, s_pack_write);
}

static void
s_pack_str (s_pack_t *self, const char *s, size_t len)
{
    msgpack_pack_str (&self->pk, len);
    msgpack_pack_str_body (&self->pk, s, len);
}

static void
s_pack_cstr (s_pack_t *self, const char *s)
{
    s_pack_str (self, s, strlen (s));
}

static void s_pack_msg (s_pack_t *self, const kim_msg_t *msg);

static void
s_pack_field (s_pack_t *self, const s_field_t *f, const void *base)
{
    const uint8_t *v = (const uint8_t *) base + f->offset;
    msgpack_packer *pk = &self->pk;
    s_pack_str (self, f->key, f->key_len);
    switch (f->kind) {
        case S_K_CMD:
            s_pack_cstr (self, kim_cmd_name (*(const kim_cmd_id_t *) v));
            break;
        case S_K_ID: case S_K_ORG: case S_K_CODE: case S_K_TEXT: case S_K_KEY:
            s_pack_str (self, (const char *) v, strnlen ((const char *) v, f->size));
            break;
        case S_K_DIR: {
            const kim_cmd_t *cmd = base;
            if (!cmd->dir && cmd->dir_raw && cmd->dir_raw_size) {
                //  Re-encoding a decoded reply: the array was checked then.
                if (kim_buf_append (self->out, cmd->dir_raw, cmd->dir_raw_size))
                    self->failed = true;
                break;
            }
            msgpack_pack_array (pk, cmd->dir_count);
            for (size_t i = 0; i < cmd->dir_count; i++) {
                const kim_dir_entry_t *entry = &cmd->dir [i];
                bool sign = entry->sign_key [0] != 0;
                msgpack_pack_map (pk, S_COUNT (s_dir_fields) - (sign? 0: 1));
                for (size_t j = 0; j < S_COUNT (s_dir_fields); j++)
                    if (j < S_COUNT (s_dir_fields) - 1 || sign)
                        s_pack_field (self, &s_dir_fields [j], entry);
            }
            break;
        }
        case S_K_U32: case S_K_SCHEMA:
            msgpack_pack_uint32 (pk, *(const uint32_t *) v);
            break;
        case S_K_U64:
            msgpack_pack_uint64 (pk, *(const uint64_t *) v);
            break;
        case S_K_ERRCODE:
            msgpack_pack_uint32 (pk, (uint32_t) *(const int *) v);
            break;
        case S_K_REASON:
            s_pack_cstr (self, kim_errname (*(const int *) v));
            break;
        case S_K_BOOL:
            if (*(const bool *) v)
                msgpack_pack_true (pk);
            else
                msgpack_pack_false (pk);
            break;
        case S_K_BIN:
            msgpack_pack_bin (pk, f->size);
            msgpack_pack_bin_body (pk, v, f->size);
            break;
        case S_K_BODY: {
            const kim_cmd_t *cmd = base;
            msgpack_pack_bin (pk, cmd->body_size);
            if (cmd->body_size)
                msgpack_pack_bin_body (pk, cmd->body, cmd->body_size);
            break;
        }
        case S_K_TYPE:
            s_pack_cstr (self, kim_type_name (*(const kim_type_t *) v));
            break;
        case S_K_PRIORITY:
            s_pack_cstr (self, s_priority_names [*(const kim_priority_t *) v]);
            break;
        case S_K_BASIS: {
            const kim_msg_t *msg = base;
            msgpack_pack_map (pk, 1 + (msg->consent_id [0] != 0) + (msg->citation [0] != 0));
            for (size_t i = 0; i < S_COUNT (s_basis_fields); i++)
                if (i == S_B_KIND || s_present (&s_basis_fields [i], msg)) {
                    if (i == S_B_KIND) {
                        s_pack_str (self, "kind", 4);
                        s_pack_cstr (self, s_basis_names [msg->basis]);
                    }
                    else
                        s_pack_field (self, &s_basis_fields [i], msg);
                }
            break;
        }
        case S_K_CATEGORIES: {
            uint32_t bits = *(const uint32_t *) v;
            msgpack_pack_array (pk, (size_t) __builtin_popcount (bits));
            for (uint32_t bit = 1; bit && bit <= bits; bit <<= 1)
                if (bits & bit)
                    s_pack_cstr (self, kim_category_name (bit));
            break;
        }
        case S_K_ID_LIST: case S_K_ORG_LIST: case S_K_CODE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            size_t esize = f->size / f->max;
            msgpack_pack_array (pk, count);
            for (size_t i = 0; i < count; i++) {
                const char *s = (const char *) v + i * esize;
                s_pack_str (self, s, strnlen (s, esize));
            }
            break;
        }
        case S_K_U32_LIST: case S_K_U64_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            msgpack_pack_array (pk, count);
            for (size_t i = 0; i < count; i++)
                msgpack_pack_uint64 (pk, f->kind == S_K_U32_LIST? ((const uint32_t *) v) [i]
                                                                : ((const uint64_t *) v) [i]);
            break;
        }
        case S_K_TYPE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            msgpack_pack_array (pk, count);
            for (size_t i = 0; i < count; i++)
                s_pack_cstr (self, kim_type_name (((const kim_type_t *) v) [i]));
            break;
        }
        case S_K_HDR:
            s_pack_msg (self, (const kim_msg_t *) v);
            break;
        case S_K_STATUS:
            msgpack_pack_map (pk, S_COUNT (s_status_fields));
            for (size_t i = 0; i < S_COUNT (s_status_fields); i++)
                s_pack_field (self, &s_status_fields [i], v);
            break;
        default:
            self->failed = true;
            break;
    }
}

static void
s_pack_msg (s_pack_t *self, const kim_msg_t *msg)
{
    uint64_t mask = s_msg_presence (msg);
    msgpack_pack_map (&self->pk, (size_t) __builtin_popcountll (mask));
    for (size_t i = 0; i < S_COUNT (s_hdr_fields); i++)
        if (mask & (1ull << i))
            s_pack_field (self, &s_hdr_fields [i], msg);
}

static int
s_pack_finish (s_pack_t *pack, size_t start)
{
    if (pack->failed) {
        pack->out->size = start;
        return -KIM_E_NOMEM;
    }
    if (pack->out->size - start > KIM_FRAME_MAX) {
        pack->out->size = start;
        return -KIM_E_TOO_LARGE;
    }
    return 0;
}

int
kim_msg_encode (const kim_msg_t *self, kim_buf_t *out)
{
    if (!self || !out)
        return -KIM_E_ARGS;
    kim_decode_error_t err;
    if (s_msg_check_fields (self, "", &err))
        return -err.code;
    size_t start = out->size;
    s_pack_t pack;
    s_pack_init (&pack, out);
    s_pack_msg (&pack, self);
    return s_pack_finish (&pack, start);
}

//  The fields a command writes: the required ones, and the optional ones
//  that are present.
static uint64_t
s_cmd_mask (const kim_cmd_t *self, const s_cmd_rule_t *rule)
{
    uint64_t mask = rule->required;
    for (size_t i = 0; i < S_COUNT (s_cmd_fields); i++)
        if ((rule->optional & (1ull << i)) && s_present (&s_cmd_fields [i], self))
            mask |= 1ull << i;
    return mask;
}

int
kim_cmd_encode (const kim_cmd_t *self, kim_buf_t *out)
{
    if (!self || !out)
        return -KIM_E_ARGS;
    const s_cmd_rule_t *rule = s_cmd_rule (self->id);
    if (!rule)
        return -KIM_E_UNKNOWN_CMD;
    uint64_t mask = s_cmd_mask (self, rule);
    kim_decode_error_t err;
    for (size_t i = 1; i < S_COUNT (s_cmd_fields); i++)
        if ((mask & (1ull << i)) && s_check_field (&s_cmd_fields [i], self, "", &err))
            return -err.code;
    if (s_cmd_check_rules (self, &err))
        return -err.code;

    size_t start = out->size;
    s_pack_t pack;
    s_pack_init (&pack, out);
    msgpack_pack_map (&pack.pk, (size_t) __builtin_popcountll (mask));
    for (size_t i = 0; i < S_COUNT (s_cmd_fields); i++)
        if (mask & (1ull << i))
            s_pack_field (&pack, &s_cmd_fields [i], self);
    return s_pack_finish (&pack, start);
}

int
kim_cmd_encode_deliver (uint64_t seq, const uint8_t *hdr, size_t hdr_size, kim_buf_t *out)
{
    //  The header comes from our own log, canonical already; only its
    //  outer shape is checked here.
    if (!hdr || !out || hdr_size == 0 || hdr_size > KIM_FRAME_MAX
    ||  !((hdr [0] >= 0x80 && hdr [0] <= 0x8f) || hdr [0] == 0xde || hdr [0] == 0xdf))
        return -KIM_E_ARGS;
    size_t start = out->size;
    s_pack_t pack;
    s_pack_init (&pack, out);
    msgpack_pack_map (&pack.pk, 3);
    s_pack_str (&pack, "cmd", 3);
    s_pack_str (&pack, "DELIVER", 7);
    s_pack_str (&pack, "seq", 3);
    msgpack_pack_uint64 (&pack.pk, seq);
    s_pack_str (&pack, "hdr", 3);
    if (kim_buf_append (out, hdr, hdr_size))
        pack.failed = true;
    return s_pack_finish (&pack, start);
}

void
kim_msg_init (kim_msg_t *self)
{
    memset (self, 0, sizeof *self);
    self->schema = KIM_SCHEMA_VERSION;
}

void
kim_cmd_init (kim_cmd_t *self, kim_cmd_id_t id)
{
    //  The broker decodes every command into a kim_cmd_t: clearing its 8 KB
    //  of ACK numbers each time cost more than decoding. Only the first
    //  ack_count entries mean anything, so they are left as they are.
    size_t acks = offsetof (kim_cmd_t, acks);
    size_t after = acks + sizeof self->acks;
    memset (self, 0, acks);
    memset ((char *) self + after, 0, sizeof *self - after);
    self->id = id;
    self->msg.schema = KIM_SCHEMA_VERSION;     //  kim_msg_init, without clearing it twice
}
