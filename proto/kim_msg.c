/*  kim_msg.c — the wire format, defined once: the field tables, the fields
    each command and each message type requires and allows, and the checks
    on values that decoding, encoding and kim_msg_validate share.

    One table per map (command, header, legal basis, status) describes each
    field once — key, kind, place in the struct, limits — and drives decoding,
    checking, presence and encoding, so the four cannot disagree.

    The codec's other files build on this one through kim_msg_int.h, which
    holds the field lists: kim_msg_names.c (wire names and text formats),
    kim_msg_decode.c (the bounds-checked reader), kim_msg_encode.c (the
    canonical writer).
*/
#include <inttypes.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>

#include "kim_msg_int.h"

//  --------------------------------------------------------------------------
//  Field tables

#define S_FIELD(T, key, kind, member, auxm, max, lo, hi) \
    { key, sizeof key - 1, kind, offsetof (T, member), sizeof (((T *) 0)->member), \
      offsetof (T, auxm), max, lo, hi },

#define S_X_HDR(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_msg_t, key, kind, m, a, max, lo, hi)
#define S_X_CMD(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_cmd_t, key, kind, m, a, max, lo, hi)
#define S_X_STATUS(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_status_t, key, kind, m, a, max, lo, hi)

const s_field_t kim_msgi_hdr_fields [] = { S_HDR_FIELDS (S_X_HDR) };
const s_field_t kim_msgi_basis_fields [] = { S_BASIS_FIELDS (S_X_HDR) };
const s_field_t kim_msgi_status_fields [] = { S_STATUS_FIELDS (S_X_STATUS) };
const s_field_t kim_msgi_cmd_fields [] = { S_CMD_FIELDS (S_X_CMD) };
#define S_X_DIR(NAME, key, kind, m, a, max, lo, hi) S_FIELD (kim_dir_entry_t, key, kind, m, a, max, lo, hi)
const s_field_t kim_msgi_dir_fields [] = { S_DIR_FIELDS (S_X_DIR) };

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
    X (STATUS_REPLY, C (STATUS), C (BODY)) \
    X (QUERY,        C (QUERY_ID) | C (WINDOW), C (FROM_SEQ) | C (TO_SEQ) | C (FROM_TIME) \
                     | C (TO_TIME) | C (CASE_ID) | C (ORG) | C (TYPE)) \
    X (RECORD,       C (QUERY_ID) | C (SEQ) | C (TIME) | C (KIND) | C (HASH) | C (BODY), 0) \
    X (QUERY_END,    C (QUERY_ID) | C (COUNT) | C (CODE), 0) \
    X (BYE,          0, 0) \
    X (SEND_BATCH,   C (COUNT), 0) \
    X (RECEIPT_BATCH, C (COUNT), 0) \
    X (DELIVER_BATCH, C (COUNT), 0) \
    X (ACK_RANGE,    C (RANGES), 0) \
    X (RELOAD,       0, 0) \
    X (RELOADED,     C (COUNT) | C (TEXT), 0) \
    X (REFERRAL_QUERY, C (QUERY_ID), C (CASE_ID) | C (ORG) | C (REFERRAL_ID)) \
    X (REFERRAL_INFO,  C (QUERY_ID) | C (COUNT) | C (BODY), 0) \
    X (DIRECTORY,      0, C (ORG) | C (HOMES)) \
    X (DIRECTORY_REPLY, C (COUNT) | C (ORGS), 0) \
    X (PEER_DIRECTORY, C (BROKER) | C (ORGS) | C (SERIAL) | C (SIG), 0) \
    X (PEER_FORWARD,   C (SEQ) | C (HDR), 0) \
    X (PEER_ACK,       C (SEQ), C (DUP)) \
    X (PEER_REFUSED,   C (CODE) | C (REASON) | C (TEXT) | C (SEQ), C (PATH) | C (RULE))

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
static const char *s_consent_codes [] = { "revoked", "expired", "withheld", NULL };

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
                         | H (VALID_UNTIL), H (CATEGORIES) | H (EXPLICIT) | H (GIVER), NULL) \
    X (CONSENT_REVOKE,   H (CONSENT), H (RECIPIENT) | H (CASE_ID) | H (REFERRAL_ID) \
                         | H (REF_MSG_ID) | H (CODE), s_consent_codes) \
    X (ERASURE,          H (SUBJECT), H (RECIPIENT) | H (CASE_ID), NULL) \
    X (ACCESS_REPORT,    H (SUBJECT), H (RECIPIENT) | H (CASE_ID), NULL) \
    X (DELIVERED,        H (RECIPIENT) | H (REF_MSG_ID), H (REFERRAL_ID) | H (CASE_ID), NULL) \
    X (REMINDER,         H (RECIPIENT) | H (REFERRAL_ID) | H (DEADLINE), \
                         H (REF_MSG_ID) | H (CASE_ID), NULL) \
    X (EXPIRED,          H (RECIPIENT) | H (REFERRAL_ID) | H (DEADLINE), \
                         H (REF_MSG_ID) | H (CASE_ID), NULL) \
    X (UNDELIVERABLE,    H (RECIPIENT) | H (REF_MSG_ID) | H (CODE) | H (ORG), \
                         H (REFERRAL_ID) | H (CASE_ID) | H (NOTE), NULL) \
    X (HANDED_OVER,      H (RECIPIENT) | H (REFERRAL_ID) | H (CASE_ID) | H (REF_MSG_ID) | H (ORG) \
                         | H (CODE) | H (DEADLINE), H (PURPOSE) | H (LEGAL_BASIS) | H (NOTE), NULL)

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

const s_cmd_rule_t *
kim_msgi_cmd_rule (kim_cmd_id_t id)
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

int
kim_msgi_lowest_bit (uint64_t mask)
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

void
kim_msgi_path_add (char *path, const char *text, size_t len, bool sanitize)
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

void
kim_msgi_path_index (char *path, uint64_t index)
{
    char tmp [24];
    snprintf (tmp, sizeof tmp, "[%" PRIu64 "]", index);
    kim_msgi_path_add (path, tmp, strlen (tmp), false);
}

//  Fills err with code and the path prefix.key[index] (key may be NULL,
//  index < 0 for none). Returns -code.
int
kim_msgi_fail_raw (kim_decode_error_t *err, int code, const char *prefix,
                   const char *key, size_t key_len, bool sanitize, int64_t index)
{
    err->code = code;
    err->path [0] = 0;
    kim_msgi_path_add (err->path, prefix, strlen (prefix), false);
    if (key && key_len) {
        if (*prefix)
            kim_msgi_path_add (err->path, ".", 1, false);
        kim_msgi_path_add (err->path, key, key_len, sanitize);
    }
    if (index >= 0)
        kim_msgi_path_index (err->path, (uint64_t) index);
    return -code;
}

int
kim_msgi_fail (kim_decode_error_t *err, int code, const char *prefix, const char *key, int64_t index)
{
    return kim_msgi_fail_raw (err, code, prefix, key, key? strlen (key): 0, false, index);
}

void
kim_msgi_join (char *out, const char *prefix, const char *key)
{
    out [0] = 0;
    kim_msgi_path_add (out, prefix, strlen (prefix), false);
    if (*prefix)
        kim_msgi_path_add (out, ".", 1, false);
    kim_msgi_path_add (out, key, strlen (key), false);
}

//  --------------------------------------------------------------------------
//  Checks on values in the structs (shared by decode, encode and validate)

#define S_CATEGORIES_ALL (0u KIM_CATEGORIES (S_X_OR))
#define S_X_OR(name, wire, bit) | bit

static int
s_check_string (int kind, const char *s, size_t len, kim_decode_error_t *err,
                const char *prefix, const char *key, int64_t index)
{
    //  Ids, org ids and codes pass their character check only as ASCII
    //  without NUL, which is valid UTF-8: for them the UTF-8 check runs
    //  only to name a fault (bad UTF-8 is named before a bad character).
    bool ok = kind == S_K_ID? kim_msgi_id_ok (s, len)
            : kind == S_K_ORG? kim_msgi_org_ok (s, len)
            : kind == S_K_CODE? kim_msgi_code_ok (s, len)
            : kim_utf8_valid ((const uint8_t *) s, len);
    if (ok)
        return 0;
    if (!kim_utf8_valid ((const uint8_t *) s, len))
        return kim_msgi_fail (err, KIM_E_BAD_UTF8, prefix, key, index);
    return kim_msgi_fail (err, kind == S_K_CODE? KIM_E_BAD_VALUE: KIM_E_BAD_ID, prefix, key,
                          index);
}

int
kim_msgi_check_basis (const kim_msg_t *msg, const char *prefix, kim_decode_error_t *err)
{
    char sub [KIM_PATH_MAX + 1];
    kim_msgi_join (sub, prefix, "legal_basis");
    size_t clen = strnlen (msg->consent_id, sizeof msg->consent_id);
    size_t tlen = strnlen (msg->citation, sizeof msg->citation);
    if (clen == sizeof msg->consent_id)
        return kim_msgi_fail (err, KIM_E_TOO_LONG, sub, "consent_id", -1);
    if (tlen == sizeof msg->citation)
        return kim_msgi_fail (err, KIM_E_TOO_LONG, sub, "citation", -1);
    if (clen && s_check_string (S_K_ID, msg->consent_id, clen, err, sub, "consent_id", -1))
        return -err->code;
    if (tlen && s_check_string (S_K_TEXT, msg->citation, tlen, err, sub, "citation", -1))
        return -err->code;
    switch (msg->basis) {
        case KIM_BASIS_NONE:
            return kim_msgi_fail (err, KIM_E_MISSING_FIELD, sub, "kind", -1);
        case KIM_BASIS_CONSENT:
            if (!clen)
                return kim_msgi_fail (err, KIM_E_MISSING_FIELD, sub, "consent_id", -1);
            if (tlen)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, sub, "citation", -1);
            return 0;
        case KIM_BASIS_STATUTE:
            if (!tlen)
                return kim_msgi_fail (err, KIM_E_MISSING_FIELD, sub, "citation", -1);
            if (clen)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, sub, "consent_id", -1);
            return 0;
        default:
            return kim_msgi_fail (err, KIM_E_BAD_VALUE, sub, "kind", -1);
    }
}

bool
kim_msgi_present (const s_field_t *f, const void *base)
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

uint64_t
kim_msgi_msg_presence (const kim_msg_t *msg)
{
    uint64_t mask = 0;
    for (size_t i = 0; i < S_COUNT (kim_msgi_hdr_fields); i++)
        if (kim_msgi_present (&kim_msgi_hdr_fields [i], msg))
            mask |= 1ull << i;
    return mask;
}

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
void
kim_msgi_dir_prefix (char *sub, const char *prefix, const char *key, size_t index)
{
    kim_msgi_join (sub, prefix, key);
    kim_msgi_path_index (sub, (uint64_t) index);
}

//  One directory entry: every field valid, the required ones present.
static int
s_dir_entry_check (const kim_dir_entry_t *entry, const char *prefix, const char *key,
                   size_t index, kim_decode_error_t *err)
{
    char sub [KIM_PATH_MAX + 1];
    kim_msgi_dir_prefix (sub, prefix, key, index);
    for (size_t i = 0; i < S_COUNT (kim_msgi_dir_fields); i++) {
        const s_field_t *f = &kim_msgi_dir_fields [i];
        bool present = f->kind == S_K_BOOL || kim_msgi_present (f, entry);
        if (!present && (S_DIR_REQUIRED & (1ull << i)))
            return kim_msgi_fail (err, KIM_E_MISSING_FIELD, sub, f->key, -1);
        if (present && kim_msgi_check_field (f, entry, sub, err))
            return -err->code;
    }
    return 0;
}

//  Checks the value of one field as it is in the struct: format, range,
//  list counts, duplicates. Counts are checked before any element is read,
//  so a corrupt count cannot make us read past an array.
int
kim_msgi_check_field (const s_field_t *f, const void *base, const char *prefix, kim_decode_error_t *err)
{
    const uint8_t *v = (const uint8_t *) base + f->offset;
    switch (f->kind) {
        case S_K_ID: case S_K_ORG: case S_K_CODE: case S_K_TEXT: {
            size_t len = strnlen ((const char *) v, f->size);
            if (len == f->size)
                return kim_msgi_fail (err, KIM_E_TOO_LONG, prefix, f->key, -1);
            return s_check_string ((int) f->kind, (const char *) v, len, err, prefix, f->key, -1);
        }
        case S_K_U32: case S_K_SCHEMA: {
            uint32_t x = *(const uint32_t *) v;
            if (x < f->lo || x > f->hi)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_U64: {
            uint64_t x = *(const uint64_t *) v;
            if (x < f->lo || x > f->hi)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_ERRCODE: {
            int x = *(const int *) v;
            if (x < (int) f->lo || x > (int) f->hi)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_TYPE:
            if (!kim_type_name (*(const kim_type_t *) v))
                return kim_msgi_fail (err, KIM_E_UNKNOWN_TYPE, prefix, f->key, -1);
            return 0;
        case S_K_PRIORITY: {
            kim_priority_t x = *(const kim_priority_t *) v;
            if (x != KIM_PRIORITY_NORMAL && x != KIM_PRIORITY_LOW && x != KIM_PRIORITY_HIGH)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_BASIS:
            return kim_msgi_check_basis (base, prefix, err);
        case S_K_CATEGORIES:
            if (*(const uint32_t *) v & ~S_CATEGORIES_ALL)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        case S_K_ID_LIST: case S_K_ORG_LIST: case S_K_CODE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            size_t esize = f->size / f->max;
            if (count > f->max)
                return kim_msgi_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            int kind = f->kind == S_K_ID_LIST? S_K_ID: f->kind == S_K_ORG_LIST? S_K_ORG: S_K_CODE;
            for (size_t i = 0; i < count; i++) {
                const char *s = (const char *) v + i * esize;
                size_t len = strnlen (s, esize);
                if (len == esize)
                    return kim_msgi_fail (err, KIM_E_TOO_LONG, prefix, f->key, (int64_t) i);
                if (s_check_string (kind, s, len, err, prefix, f->key, (int64_t) i))
                    return -err->code;
                for (size_t j = 0; j < i; j++)
                    if (strcmp (s, (const char *) v + j * esize) == 0)
                        return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, (int64_t) i);
            }
            return 0;
        }
        case S_K_U32_LIST: case S_K_U64_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            if (count > f->max)
                return kim_msgi_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            for (size_t i = 0; i < count; i++) {
                uint64_t x = f->kind == S_K_U32_LIST? ((const uint32_t *) v) [i]
                                                    : ((const uint64_t *) v) [i];
                if (x < f->lo || x > f->hi)
                    return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, (int64_t) i);
            }
            return 0;
        }
        case S_K_TYPE_LIST: {
            size_t count = *(const size_t *) ((const uint8_t *) base + f->aux);
            const kim_type_t *types = (const kim_type_t *) v;
            if (count > f->max)
                return kim_msgi_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            for (size_t i = 0; i < count; i++) {
                if (!kim_type_name (types [i]))
                    return kim_msgi_fail (err, KIM_E_UNKNOWN_TYPE, prefix, f->key, (int64_t) i);
                for (size_t j = 0; j < i; j++)
                    if (types [j] == types [i])
                        return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, (int64_t) i);
            }
            return 0;
        }
        case S_K_BODY: {
            const kim_cmd_t *cmd = base;
            if (cmd->body_size > KIM_FRAME_MAX || (cmd->body_size && !cmd->body))
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_HDR: {
            const kim_msg_t *msg = (const kim_msg_t *) v;
            char sub [KIM_PATH_MAX + 1];
            kim_msgi_join (sub, prefix, f->key);
            return kim_msgi_msg_check_fields (msg, kim_msgi_msg_presence (msg), sub, err);
        }
        case S_K_KEY: {
            size_t len = strnlen ((const char *) v, f->size);
            if (len == f->size)
                return kim_msgi_fail (err, KIM_E_TOO_LONG, prefix, f->key, -1);
            if (len != KIM_KEY_TEXT_MAX || !s_z85_ok ((const char *) v, len))
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            return 0;
        }
        case S_K_DIR: {
            const kim_cmd_t *cmd = base;
            if (cmd->dir_count > KIM_DIRECTORY_MAX)
                return kim_msgi_fail (err, KIM_E_TOO_MANY, prefix, f->key, -1);
            if (cmd->dir_count && !cmd->dir && !(cmd->dir_raw && cmd->dir_raw_size))
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, f->key, -1);
            for (size_t i = 0; cmd->dir && i < cmd->dir_count; i++)
                if (s_dir_entry_check (&cmd->dir [i], prefix, f->key, i, err))
                    return -err->code;
            return 0;
        }
        default:        //  BOOL, BIN, CMD, REASON, STATUS (plain numbers)
            return 0;
    }
}

int
kim_msgi_msg_check_fields (const kim_msg_t *msg, uint64_t mask, const char *prefix,
                           kim_decode_error_t *err)
{
    for (size_t i = 0; i < S_COUNT (kim_msgi_hdr_fields); i++)
        if ((mask & (1ull << i))
        &&  kim_msgi_check_field (&kim_msgi_hdr_fields [i], msg, prefix, err))
            return -err->code;
    return 0;
}

//  The per-type rules, on a header whose fields are each valid.
static int
s_msg_rules (const kim_msg_t *msg, const char *prefix, kim_decode_error_t *err)
{
    if (msg->type == KIM_TYPE_NONE)
        return kim_msgi_fail (err, KIM_E_MISSING_FIELD, prefix, "type", -1);
    const s_type_rule_t *rule = s_type_rule (msg->type);
    if (!rule)
        return kim_msgi_fail (err, KIM_E_UNKNOWN_TYPE, prefix, "type", -1);
    uint64_t mask = kim_msgi_msg_presence (msg);
    uint64_t missing = rule->required & ~mask;
    if (missing)
        return kim_msgi_fail (err, KIM_E_MISSING_FIELD, prefix,
                              kim_msgi_hdr_fields [kim_msgi_lowest_bit (missing)].key, -1);
    uint64_t extra = mask & ~(rule->required | rule->optional);
    if (extra)
        return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix,
                              kim_msgi_hdr_fields [kim_msgi_lowest_bit (extra)].key, -1);
    if (msg->schema != KIM_SCHEMA_VERSION)
        return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, "schema", -1);
    //  An optional code, when absent, needs no value from the list.
    if (rule->codes && (msg->code [0] || (rule->required & H (CODE)))) {
        size_t i = 0;
        while (rule->codes [i] && strcmp (rule->codes [i], msg->code) != 0)
            i++;
        if (!rule->codes [i])
            return kim_msgi_fail (err, KIM_E_BAD_VALUE, prefix, "code", -1);
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
        return kim_msgi_fail (err, KIM_E_ARGS, "", NULL, -1);
    if (kim_msgi_msg_check_fields (self, kim_msgi_msg_presence (self), "", err))
        return -err->code;
    return s_msg_rules (self, "", err);
}

static bool
s_wire_code (int code)
{
    return code >= 100 && code <= 899;
}

//  Rules of a command beyond its single fields. `self` has valid fields.
int
kim_msgi_cmd_check_rules (const kim_cmd_t *self, kim_decode_error_t *err)
{
    switch (self->id) {
        case KIM_CMD_HELLO:
            if (self->version_count == 0)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "versions", -1);
            for (size_t i = 1; i < self->version_count; i++)
                if (self->versions [i] <= self->versions [i - 1])
                    return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "versions", (int64_t) i);
            return 0;
        case KIM_CMD_ACK:
            if (self->ack_count == 0)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "seqs", -1);
            return 0;
        case KIM_CMD_SEND_BATCH:
        case KIM_CMD_RECEIPT_BATCH:
        case KIM_CMD_DELIVER_BATCH:
            if (self->count == 0 || self->count > KIM_BATCH_MAX)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "count", -1);
            return 0;
        case KIM_CMD_ACK_RANGE:
            //  Pairs of from, to: each range ordered, the ranges ascending
            //  and apart, so that every seq is named at most once.
            if (self->range_count == 0 || self->range_count % 2)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "ranges", -1);
            for (size_t i = 1; i < self->range_count; i++)
                if (i % 2? self->ranges [i] < self->ranges [i - 1]
                         : self->ranges [i] <= self->ranges [i - 1])
                    return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "ranges", (int64_t) i);
            return 0;
        case KIM_CMD_REJECT:
            if (!s_wire_code (self->code))
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "code", -1);
            return 0;
        case KIM_CMD_QUERY_END:
            if (self->code != 0 && !s_wire_code (self->code))
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "code", -1);
            return 0;
        case KIM_CMD_QUERY:
            if (self->window == 0)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "window", -1);
            if (self->from_seq && self->to_seq && self->from_seq > self->to_seq)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "to_seq", -1);
            if (self->from_time && self->to_time && self->from_time > self->to_time)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "to_time", -1);
            return 0;
        case KIM_CMD_SEND: {
            const kim_msg_t *msg = &self->msg;
            if (msg->type == KIM_TYPE_NONE)
                return kim_msgi_fail (err, KIM_E_MISSING_FIELD, "hdr", "type", -1);
            unsigned flags = kim_type_flags (msg->type);
            //  Broker-made types cannot be sent: the check lives here so no
            //  broker code path can forget it.
            if (!(flags & KIM_MSG_FROM_AGENCY))
                return kim_msgi_fail (err, KIM_E_FORBIDDEN, "hdr", "type", -1);
            if (s_msg_rules (msg, "hdr", err))
                return -err->code;
            //  Registry messages go to the broker; it sets recipient when it
            //  tells earlier recipients.
            if ((flags & KIM_MSG_FROM_BROKER) && msg->recipient [0])
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "hdr", "recipient", -1);
            return 0;
        }
        case KIM_CMD_PEER_REFUSED:
            if (!s_wire_code (self->code))
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "code", -1);
            return 0;
        case KIM_CMD_PEER_DIRECTORY:
            if (self->serial == 0)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "serial", -1);
            return 0;
        case KIM_CMD_DELIVER:
        case KIM_CMD_PEER_FORWARD:
            //  PEER_FORWARD's seq is a log's, and logs start at 1 (16.4)
            if (self->id == KIM_CMD_PEER_FORWARD && self->seq == 0)
                return kim_msgi_fail (err, KIM_E_BAD_VALUE, "", "seq", -1);
            //  A forwarded message is a whole logged header, broker-made
            //  types included (a DELIVERED travels back to its sender's broker).
            if (s_msg_rules (&self->msg, "hdr", err))
                return -err->code;
            if (!self->msg.sender [0])
                return kim_msgi_fail (err, KIM_E_MISSING_FIELD, "hdr", "sender", -1);
            if (!self->msg.has_payload_hash)
                return kim_msgi_fail (err, KIM_E_MISSING_FIELD, "hdr", "payload_hash", -1);
            return 0;
        default:
            return 0;
    }
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
