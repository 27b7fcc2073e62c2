/*  kim_msg.h — kim's wire model: business messages and protocol commands.

    A *message* (kim_msg_t) is what agencies exchange and what the log keeps:
    a header the broker reads plus an opaque payload it does not need to read.
    A *command* (kim_cmd_t) is one ZeroMQ message on the wire: frame 0 is a
    MessagePack map naming the command; SEND and DELIVER carry the payload
    as frame 1. Protocol version 2 adds batch frames: a head command and
    up to KIM_BATCH_MAX entries, each a command map and its payload, in one
    frame (kim_batch_*). proto/PROTOCOL.md is the normative description; this header
    and proto/kim_msg*.c implement it (kim_msg.c holds the field tables and
    rules, kim_msg_decode.c and kim_msg_encode.c the two directions).

    All structures are plain values with fixed-size fields: decoding never
    allocates, so the broker decodes on its hot path without touching the
    heap, and a decoded value owns nothing.
*/
#ifndef KIM_MSG_H_INCLUDED
#define KIM_MSG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kim_error.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Protocol versions this build speaks: 1, which every broker serves, up to
//  KIM_PROTOCOL_MAX. Version 2 adds the batch commands (PROTOCOL.md 5.1).
#define KIM_PROTOCOL_VERSION    1
#define KIM_PROTOCOL_MAX        2
#define KIM_SCHEMA_VERSION      1

//  Limits (bytes exclude the terminating NUL kept in the structs).
#define KIM_ID_MAX          64      //  msg_id, referral_id, case_id, consent_id
#define KIM_ORG_MAX         64      //  organisation id <type>.<place>[.<unit>]
#define KIM_REF_MAX         64      //  an agency's own case reference
#define KIM_SUBJECT_MAX     64      //  subject pseudonym
#define KIM_CODE_MAX        32      //  purpose codes, reason/status/outcome codes
#define KIM_CITATION_MAX    128     //  statute citation, e.g. "SGB X §69(1)1"
#define KIM_NOTE_MAX        280     //  short free text; never case content
#define KIM_TEXT_MAX        256     //  REJECT text
#define KIM_PATH_MAX        64      //  path of an offending field, e.g. "hdr.legal_basis.kind"
#define KIM_AGENT_MAX       64      //  client software name and version
#define KIM_LIST_MAX        16      //  recipients, purposes, versions
#define KIM_REFERRALS_MAX   32      //  referrals listed in a HANDOVER_OFFER
#define KIM_ACKS_MAX        1024    //  sequence numbers in one ACK
#define KIM_BATCH_MAX       64      //  entries in one SEND_BATCH, RECEIPT_BATCH, DELIVER_BATCH
#define KIM_RANGES_MAX      64      //  ranges in one ACK_RANGE
#define KIM_DEPTH_MAX       4       //  nesting depth of maps and arrays
#define KIM_MAP_MAX         64      //  entries in any map
#define KIM_ARRAY_MAX       1024    //  entries in any array (lists have lower limits)
#define KIM_WINDOW_MAX      4096    //  HELLO/WELCOME/QUERY window
#define KIM_REASON_MAX      32      //  REJECT reason (a kim_errname)
#define KIM_FRAME_MAX       65536   //  frame 0 (the command) in bytes
#define KIM_PAYLOAD_MAX     (16u * 1024 * 1024)  //  protocol ceiling for frame 1
#define KIM_PAYLOAD_DEFAULT (1024u * 1024)       //  max_payload a broker announces by default
#define KIM_JSON_MAX        (4u * KIM_FRAME_MAX) //  JSON text accepted by kim_msg_from_json
#define KIM_HASH_SIZE       32      //  BLAKE2b-256 (libsodium crypto_generichash)
#define KIM_SIG_SIZE        64      //  Ed25519 signature

//  Message types: X(NAME, wire name, number, flags). Numbers are stable and
//  never reused; flags say who may originate the type.
#define KIM_MSG_FROM_AGENCY 0x01    //  sent by an agency with SEND
#define KIM_MSG_FROM_BROKER 0x02    //  made by the broker, delivered only
#define KIM_MSG_REFERRAL_ANSWER 0x04 //  answers an existing referral (needs referral_id)

#define KIM_TYPES(X)                                                        \
    X(REFERRAL,         "REFERRAL",          1, KIM_MSG_FROM_AGENCY)         \
    X(ACCEPT,           "ACCEPT",            2, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(DECLINE,          "DECLINE",           3, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(NOT_COMPETENT,    "NOT_COMPETENT",     4, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(FORWARD,          "FORWARD",           5, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(STATUS,           "STATUS",            6, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(OUTCOME,          "OUTCOME",           7, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(WITHDRAW,         "WITHDRAW",          8, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(INFO_REQUEST,     "INFO_REQUEST",      9, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(INFO_RESPONSE,    "INFO_RESPONSE",    10, KIM_MSG_FROM_AGENCY | KIM_MSG_REFERRAL_ANSWER) \
    X(HANDOVER_OFFER,   "HANDOVER_OFFER",   20, KIM_MSG_FROM_AGENCY)         \
    X(HANDOVER_ACCEPT,  "HANDOVER_ACCEPT",  21, KIM_MSG_FROM_AGENCY)         \
    X(HANDOVER_DECLINE, "HANDOVER_DECLINE", 22, KIM_MSG_FROM_AGENCY)         \
    X(CASE_CLOSED,      "CASE_CLOSED",      23, KIM_MSG_FROM_AGENCY)         \
    X(CONSENT_GRANT,    "CONSENT_GRANT",    30, KIM_MSG_FROM_AGENCY)         \
    X(CONSENT_REVOKE,   "CONSENT_REVOKE",   31, KIM_MSG_FROM_AGENCY | KIM_MSG_FROM_BROKER) \
    X(ERASURE,          "ERASURE",          40, KIM_MSG_FROM_AGENCY | KIM_MSG_FROM_BROKER) \
    X(ACCESS_REPORT,    "ACCESS_REPORT",    41, KIM_MSG_FROM_AGENCY | KIM_MSG_FROM_BROKER) \
    X(DELIVERED,        "DELIVERED",        50, KIM_MSG_FROM_BROKER)         \
    X(REMINDER,         "REMINDER",         51, KIM_MSG_FROM_BROKER)         \
    X(EXPIRED,          "EXPIRED",          52, KIM_MSG_FROM_BROKER)         \
    X(UNDELIVERABLE,    "UNDELIVERABLE",    53, KIM_MSG_FROM_BROKER)         \
    X(HANDED_OVER,      "HANDED_OVER",      54, KIM_MSG_FROM_BROKER)

typedef enum {
    KIM_TYPE_NONE = 0,
#define KIM_X_ENUM(name, wire, num, flags) KIM_TYPE_##name = num,
    KIM_TYPES(KIM_X_ENUM)
#undef KIM_X_ENUM
} kim_type_t;

//  Data-category flags (header field "categories", an array of names).
#define KIM_CATEGORIES(X)                           \
    X(ART9,             "art9",             0x01)   \
    X(SGB8_S65,         "sgb8_s65",         0x02)   \
    X(STGB203,          "stgb203",          0x04)   \
    X(RESIDENCE_STATUS, "residence_status", 0x08)   \
    X(CONTACT,          "contact",          0x10)

enum {
#define KIM_X_ENUM(name, wire, bit) KIM_CAT_##name = bit,
    KIM_CATEGORIES(KIM_X_ENUM)
#undef KIM_X_ENUM
};
//  The highest category bit: loops over the categories stop here.
#define KIM_CAT_LAST KIM_CAT_CONTACT


typedef enum {
    KIM_BASIS_NONE = 0,             //  no legal basis given
    KIM_BASIS_CONSENT = 1,          //  "consent": consent_id names a registered consent
    KIM_BASIS_STATUTE = 2           //  "statute": citation names the norm
} kim_basis_t;

typedef enum {
    KIM_PRIORITY_NORMAL = 0,        //  "normal" (the default when absent)
    KIM_PRIORITY_LOW = 1,           //  "low"
    KIM_PRIORITY_HIGH = 2           //  "high"
} kim_priority_t;

//  A business message header. Empty strings and zero numbers mean "absent";
//  the codec omits absent fields when encoding. Times are milliseconds since
//  the Unix epoch, UTC.
typedef struct {
    kim_type_t type;                            //  "type"
    uint32_t schema;                            //  "schema" (KIM_SCHEMA_VERSION)
    char msg_id [KIM_ID_MAX + 1];               //  "msg_id", chosen by the sender
    uint64_t created_at;                        //  "created_at", sender's clock
    char sender [KIM_ORG_MAX + 1];              //  "sender": set by the broker only
    char recipient [KIM_ORG_MAX + 1];           //  "recipient"
    char referral_id [KIM_ID_MAX + 1];          //  "referral_id": the conversation
    char ref_msg_id [KIM_ID_MAX + 1];           //  "ref_msg_id": message answered
    char case_id [KIM_ID_MAX + 1];              //  "case_id"
    char sender_ref [KIM_REF_MAX + 1];          //  "sender_case_ref"
    char recipient_ref [KIM_REF_MAX + 1];       //  "recipient_case_ref"
    char subject [KIM_SUBJECT_MAX + 1];         //  "subject": pseudonym, never a name
    char purpose [KIM_CODE_MAX + 1];            //  "purpose"
    kim_basis_t basis;                          //  "legal_basis.kind"
    char consent_id [KIM_ID_MAX + 1];           //  "legal_basis.consent_id"
    char citation [KIM_CITATION_MAX + 1];       //  "legal_basis.citation"
    uint32_t categories;                        //  "categories": KIM_CAT_* bits
    uint64_t deadline;                          //  "deadline"
    kim_priority_t priority;                    //  "priority"

    //  Type-specific fields (see PROTOCOL.md for which type uses which).
    char code [KIM_CODE_MAX + 1];               //  "code": reason, status or outcome code
    char org [KIM_ORG_MAX + 1];                 //  "org": suggested or forwarded-to org
    char note [KIM_NOTE_MAX + 1];               //  "note": short free text
    size_t referral_count;                      //  "referrals": open referrals handed over
    char referrals [KIM_REFERRALS_MAX][KIM_ID_MAX + 1];
    char grant_id [KIM_ID_MAX + 1];             //  "consent": id granted or revoked
    size_t recipient_count;                     //  "recipients": consent scope
    char recipients [KIM_LIST_MAX][KIM_ORG_MAX + 1];
    size_t purpose_count;                       //  "purposes": consent scope
    char purposes [KIM_LIST_MAX][KIM_CODE_MAX + 1];
    bool explicit_art9;                         //  "explicit": consent covers art9 data
    uint64_t valid_until;                       //  "valid_until": consent expiry
    char giver [KIM_CODE_MAX + 1];              //  "giver": who consented: subject,
                                                //  guardian or entruster (CONSENT_GRANT)
    char rule [KIM_ID_MAX + 1];                 //  "rule": set by the broker: the policy
                                                //  rule that allowed a checked transfer

    //  Payload description: set by the broker from frame 1.
    uint32_t payload_len;                       //  "payload_len"
    bool has_payload_hash;
    uint8_t payload_hash [KIM_HASH_SIZE];       //  "payload_hash" (bin 32)
    bool has_sig;
    uint8_t sig [KIM_SIG_SIZE];                 //  "sig" (bin 64): sender signature
} kim_msg_t;

//  Protocol commands: X(NAME, wire name, number, direction).
#define KIM_CMD_TO_BROKER   0x01
#define KIM_CMD_TO_CLIENT   0x02

#define KIM_CMDS(X)                                             \
    X(HELLO,        "HELLO",         1, KIM_CMD_TO_BROKER)      \
    X(WELCOME,      "WELCOME",       2, KIM_CMD_TO_CLIENT)      \
    X(SEND,         "SEND",          3, KIM_CMD_TO_BROKER)      \
    X(RECEIPT,      "RECEIPT",       4, KIM_CMD_TO_CLIENT)      \
    X(REJECT,       "REJECT",        5, KIM_CMD_TO_CLIENT)      \
    X(DELIVER,      "DELIVER",       6, KIM_CMD_TO_CLIENT)      \
    X(ACK,          "ACK",           7, KIM_CMD_TO_BROKER)      \
    X(PING,         "PING",          8, KIM_CMD_TO_BROKER)      \
    X(PONG,         "PONG",          9, KIM_CMD_TO_CLIENT)      \
    X(SUBSCRIBE,    "SUBSCRIBE",    10, KIM_CMD_TO_BROKER)      \
    X(UNSUBSCRIBE,  "UNSUBSCRIBE",  11, KIM_CMD_TO_BROKER)      \
    X(STATUS,       "STATUS",       12, KIM_CMD_TO_BROKER)      \
    X(STATUS_REPLY, "STATUS_REPLY", 13, KIM_CMD_TO_CLIENT)      \
    X(QUERY,        "QUERY",        14, KIM_CMD_TO_BROKER)      \
    X(RECORD,       "RECORD",       15, KIM_CMD_TO_CLIENT)      \
    X(QUERY_END,    "QUERY_END",    16, KIM_CMD_TO_CLIENT)      \
    X(BYE,          "BYE",          17, KIM_CMD_TO_BROKER)      \
    X(SEND_BATCH,   "SEND_BATCH",   18, KIM_CMD_TO_BROKER)      \
    X(RECEIPT_BATCH, "RECEIPT_BATCH", 19, KIM_CMD_TO_CLIENT)    \
    X(DELIVER_BATCH, "DELIVER_BATCH", 20, KIM_CMD_TO_CLIENT)    \
    X(ACK_RANGE,    "ACK_RANGE",    21, KIM_CMD_TO_BROKER)      \
    X(RELOAD,       "RELOAD",       40, KIM_CMD_TO_BROKER)      \
    X(RELOADED,     "RELOADED",     41, KIM_CMD_TO_CLIENT)      \
    X(REFERRAL_QUERY, "REFERRAL_QUERY", 50, KIM_CMD_TO_BROKER)  \
    X(REFERRAL_INFO,  "REFERRAL_INFO",  51, KIM_CMD_TO_CLIENT)  \
    X(DIRECTORY,      "DIRECTORY",      60, KIM_CMD_TO_BROKER)  \
    X(DIRECTORY_REPLY, "DIRECTORY_REPLY", 61, KIM_CMD_TO_CLIENT)  \
    X(PEER_DIRECTORY, "PEER_DIRECTORY", 70, KIM_CMD_TO_BROKER)  \
    X(PEER_FORWARD,   "PEER_FORWARD",   71, KIM_CMD_TO_BROKER)  \
    X(PEER_ACK,       "PEER_ACK",       72, KIM_CMD_TO_CLIENT)  \
    X(PEER_REFUSED,   "PEER_REFUSED",   73, KIM_CMD_TO_CLIENT)

typedef enum {
    KIM_CMD_NONE = 0,
#define KIM_X_ENUM(name, wire, num, dir) KIM_CMD_##name = num,
    KIM_CMDS(KIM_X_ENUM)
#undef KIM_X_ENUM
} kim_cmd_id_t;

//  Figures in a STATUS_REPLY.
typedef struct {
    uint64_t log_head;          //  "log_head": last sequence number in the log
    uint64_t mailbox;           //  "mailbox": undelivered/unacked messages for the org
    uint64_t in_flight;         //  "in_flight": delivered, not yet acked
    uint64_t sessions;          //  "sessions": connected sessions
    uint64_t uptime_ms;         //  "uptime_ms"
    uint64_t store_bytes;       //  "store_bytes": size of the store's map in use
} kim_status_t;

//  One organisation in a DIRECTORY_REPLY: what a client needs to seal to it
//  and to check its signatures. Keys are Z85 text (40 characters).
#define KIM_DIRECTORY_MAX   128     //  entries in one DIRECTORY_REPLY (fits KIM_FRAME_MAX)
#define KIM_DIR_NAME_MAX    128     //  display name, UTF-8 bytes
#define KIM_KEY_TEXT_MAX    40      //  Z85 of a 32-byte key

typedef struct {
    char id [KIM_ORG_MAX + 1];                  //  "id"
    char name [KIM_DIR_NAME_MAX + 1];           //  "name"
    char type [KIM_CODE_MAX + 1];               //  "type": agency type code
    bool public_body;                           //  "public_body"
    char public_key [KIM_KEY_TEXT_MAX + 1];     //  "public_key": CURVE = X25519 sealing key
    char sign_key [KIM_KEY_TEXT_MAX + 1];       //  "sign_key": Ed25519, "" when none
    char home [KIM_ORG_MAX + 1];                //  "home": the peer broker it lives at,
                                                //  "" for the answering broker's own
} kim_dir_entry_t;

//  One wire command. Only the fields of `id` are meaningful.
typedef struct {
    kim_cmd_id_t id;                            //  "cmd"
    //  HELLO
    size_t version_count;                       //  "versions": supported, ascending
    uint32_t versions [KIM_LIST_MAX];
    char agent [KIM_AGENT_MAX + 1];             //  "agent"
    uint32_t window;                            //  "window": deliveries in flight (0: send only);
                                                //  WELCOME: granted; QUERY: records (1..4096)
    //  WELCOME
    uint32_t version;                           //  "version": chosen
    char org [KIM_ORG_MAX + 1];                 //  "org": authenticated organisation; QUERY: filter
    char broker [KIM_ORG_MAX + 1];              //  "broker": broker's name
    uint32_t heartbeat_ms;                      //  "heartbeat_ms"
    uint32_t max_payload;                       //  "max_payload"
    //  RECEIPT, REJECT, DELIVER
    char msg_id [KIM_ID_MAX + 1];               //  "msg_id"
    uint64_t seq;                               //  "seq": log sequence number (also RECORD)
    bool dup;                                   //  "dup": RECEIPT for a duplicate
    int code;                                   //  "code": kim_error_t (REJECT, QUERY_END)
    char text [KIM_TEXT_MAX + 1];               //  "text"
    char path [KIM_PATH_MAX + 1];               //  "path": offending field, if any
    //  ACK_RANGE: pairs from, to (inclusive), so 2 values per range
    size_t range_count;                         //  "ranges": values, not pairs
    uint64_t ranges [2 * KIM_RANGES_MAX];
    //  ACK
    size_t ack_count;                           //  "seqs"
    uint64_t acks [KIM_ACKS_MAX];
    //  SEND, DELIVER
    kim_msg_t msg;                              //  "hdr"
    //  STATUS_REPLY
    kim_status_t status;                        //  "status"
    //  SUBSCRIBE, UNSUBSCRIBE (RECEIPT answers with msg_id = sub_id)
    char sub_id [KIM_ID_MAX + 1];               //  "sub_id"
    char case_id [KIM_ID_MAX + 1];              //  "case_id": SUBSCRIBE and QUERY filter
    size_t type_count;                          //  "types": SUBSCRIBE filter (0: all)
    kim_type_t types [KIM_LIST_MAX];
    //  QUERY, RECORD, QUERY_END (QUERY also uses org and window, RECORD seq,
    //  QUERY_END code)
    char query_id [KIM_ID_MAX + 1];             //  "query_id"
    char referral_id [KIM_ID_MAX + 1];          //  "referral_id": REFERRAL_QUERY filter
    uint64_t from_seq;                          //  "from_seq": QUERY filter, inclusive
    uint64_t to_seq;                            //  "to_seq": inclusive
    uint64_t from_time;                         //  "from_time": ms, inclusive
    uint64_t to_time;                           //  "to_time": ms, inclusive
    kim_type_t type;                            //  "type": QUERY filter
    uint64_t time;                              //  "time": RECORD, broker's clock (ms)
    uint32_t kind;                              //  "kind": RECORD, KIM_RECORD_* (1..255)
    uint8_t hash [KIM_HASH_SIZE];               //  "hash": RECORD, the record's chain hash
    const uint8_t *body;                        //  "body": RECORD body. After decoding it
    size_t body_size;                           //  points into the decoded frame (borrowed)
    uint64_t count;                             //  "count": QUERY_END, records sent;
                                                //  batch commands: entries that follow
    //  DIRECTORY_REPLY (DIRECTORY filters with `org`; the reply's `count` is
    //  how many organisations matched, more than dir_count if cut at
    //  KIM_DIRECTORY_MAX). Encoding reads dir [0..dir_count) (borrowed).
    //  kim_cmd_decode checks every entry but copies none: dir = NULL and
    //  dir_raw/_size point at the array's bytes in the decoded frame
    //  (borrowed), which an encode with dir = NULL writes back as they are.
    //  kim_cmd_decode_directory also copies them into the caller's array.
    size_t dir_count;                           //  "orgs": array of maps
    const kim_dir_entry_t *dir;
    const uint8_t *dir_raw;
    size_t dir_raw_size;
    //  Federation (PROTOCOL.md 16): PEER_DIRECTORY's serial and signature,
    //  PEER_REFUSED's rule. PEER_FORWARD uses seq and hdr, PEER_ACK seq and
    //  dup, PEER_REFUSED seq, code, text and path besides.
    bool homes;                                 //  "homes": DIRECTORY: name remote orgs' brokers
    uint64_t serial;                            //  "serial": grows with each document
    bool has_sig;
    uint8_t sig [KIM_SIG_SIZE];                 //  "sig": Ed25519 over the map without it
    char rule [KIM_ID_MAX + 1];                 //  "rule": the far broker's rule that refused
} kim_cmd_t;

//  Whether `id` is one of the commands brokers exchange over a link
//  (PEER_*): only a connection of role peer may send them, and a peer
//  nothing else but HELLO, PING and BYE.
bool
    kim_cmd_is_peer (kim_cmd_id_t id);

//  Where a decode failed: the error code and the dotted path of the field.
//  Paths are relative to the map decoded: kim_cmd_decode reports header
//  fields as "hdr.<key>", kim_msg_decode/_validate/_from_json as "<key>".
//  The path is empty when the error concerns the frame as a whole.
typedef struct {
    int code;                                   //  KIM_E_* (positive)
    char path [KIM_PATH_MAX + 1];               //  e.g. "hdr.categories[2]"
} kim_decode_error_t;

//  The id a command names itself by, read from a frame that may not decode:
//  a SEND's hdr.msg_id, a QUERY's or REFERRAL_QUERY's query_id, a
//  SUBSCRIBE's or UNSUBSCRIBE's sub_id, so that a REJECT of an invalid
//  command can still carry it (section 7.1). Bounds-checked like the
//  decoder. Returns true and copies the id into `ref` (KIM_ID_MAX + 1 bytes)
//  if the frame has one in a valid id format; false and "" otherwise.
bool
    kim_cmd_ref (const uint8_t *data, size_t size, char ref [KIM_ID_MAX + 1]);

//  A growable byte buffer for encoders; reuse it to avoid allocations.
typedef struct {
    uint8_t *data;
    size_t size;
    size_t capacity;
} kim_buf_t;

void
    kim_buf_init (kim_buf_t *self);
void
    kim_buf_reset (kim_buf_t *self);            //  size = 0, keeps the memory
void
    kim_buf_free (kim_buf_t *self);
int
    kim_buf_append (kim_buf_t *self, const void *data, size_t size);
int
    kim_buf_reserve (kim_buf_t *self, size_t extra);    //  room for `extra` more bytes

//  Names and numbers.
const char *
    kim_type_name (kim_type_t type);            //  wire name, or NULL
kim_type_t
    kim_type_from_name (const char *name);      //  KIM_TYPE_NONE if unknown
unsigned
    kim_type_flags (kim_type_t type);           //  KIM_MSG_* bits, 0 if unknown
const char *
    kim_cmd_name (kim_cmd_id_t id);             //  wire name, or NULL
const char *
    kim_category_name (uint32_t bit);           //  wire name of one KIM_CAT_ bit, or NULL

//  Clears a message or command to "all absent" (schema = KIM_SCHEMA_VERSION).
void
    kim_msg_init (kim_msg_t *self);
void
    kim_cmd_init (kim_cmd_t *self, kim_cmd_id_t id);

//  Canonical encoding of a header: a MessagePack map with the fields in the
//  fixed order of the spec, absent fields omitted. Equal headers encode to
//  equal bytes, so the log can hash them. Appends to `out`. Returns 0 or -KIM_E_*.
int
    kim_msg_encode (const kim_msg_t *self, kim_buf_t *out);

//  Strict decode of a header map. Returns 0, or -code with `err` filled in.
int
    kim_msg_decode (kim_msg_t *self, const uint8_t *data, size_t size, kim_decode_error_t *err);

//  The per-type rules that need no broker state: required fields, allowed
//  codes, fields a type must not carry. Returns 0 or -code with `err` set.
int
    kim_msg_validate (const kim_msg_t *self, kim_decode_error_t *err);

//  Encodes frame 0 of a command. Appends to `out`. Returns 0 or -KIM_E_*.
//  The command is checked first with the decoder's rules (a SEND or DELIVER
//  header also with kim_msg_validate): what encodes, decodes.
int
    kim_cmd_encode (const kim_cmd_t *self, kim_buf_t *out);

//  Encodes frame 0 of a DELIVER whose header is already canonically encoded
//  (as the log stores it), without decoding and re-encoding it.
int
    kim_cmd_encode_deliver (uint64_t seq, const uint8_t *hdr, size_t hdr_size, kim_buf_t *out);
//  The same for a PEER_FORWARD: a logged message handed to a peer broker.
int
    kim_cmd_encode_forward (uint64_t seq, const uint8_t *hdr, size_t hdr_size, kim_buf_t *out);

//  Strict decode of frame 0. Returns 0, or -code with `err` filled in.
//  A SEND or DELIVER header is decoded and validated (kim_msg_validate).
int
    kim_cmd_decode (kim_cmd_t *self, const uint8_t *data, size_t size, kim_decode_error_t *err);

//  kim_cmd_decode, and for a DIRECTORY_REPLY also copies up to `max` entries
//  into `entries` (self->dir then points there). A reply with more entries
//  than `max` fails with -KIM_E_TOO_MANY.
int
    kim_cmd_decode_directory (kim_cmd_t *self, const uint8_t *data, size_t size,
                              kim_dir_entry_t *entries, size_t max, kim_decode_error_t *err);

//  Version 2's batch frames (PROTOCOL.md 5.1): a head, the command map of
//  SEND_BATCH, RECEIPT_BATCH or DELIVER_BATCH with `count` (1..KIM_BATCH_MAX),
//  followed in the same frame by `count` entries, each a command map
//  (SEND, RECEIPT or REJECT, DELIVER) and, in SEND_BATCH and DELIVER_BATCH,
//  the payload as a MessagePack bin right after its map. An entry points
//  into the frame (borrowed: valid while the frame is).
typedef struct {
    const uint8_t *cmd;                         //  the entry's command map
    size_t cmd_size;
    const uint8_t *payload;                     //  the payload bytes, or NULL
    size_t payload_size;
} kim_entry_t;

//  The command the frame's first map names, read without decoding the rest
//  (bounded like the decoder); KIM_CMD_NONE when it names none it knows.
kim_cmd_id_t
    kim_cmd_peek (const uint8_t *data, size_t size);

//  Whether `id` is one of the batch commands whose frame carries entries.
bool
    kim_cmd_is_batch (kim_cmd_id_t id);

//  Splits a batch frame: decodes the head into `head` and finds its
//  entries, checking their outer shape (each a map of at most KIM_FRAME_MAX
//  bytes, a bin after it where the command has payloads, nothing after the
//  last) but not their contents. Returns 0 or -code with `err` set; an
//  entry's fault has the path "entries[i]".
int
    kim_batch_split (kim_cmd_t *head, const uint8_t *data, size_t size,
                     kim_entry_t entries [KIM_BATCH_MAX], kim_decode_error_t *err);

//  Decodes one entry of a batch of `batch` (the head's id) into `cmd` and
//  checks it is of a command the batch carries (SEND in SEND_BATCH, RECEIPT
//  or REJECT in RECEIPT_BATCH, DELIVER in DELIVER_BATCH; else BAD_VALUE at
//  "cmd"). Paths are relative to the entry's map.
int
    kim_batch_entry_decode (kim_cmd_id_t batch, const kim_entry_t *entry, kim_cmd_t *cmd,
                            kim_decode_error_t *err);

//  Encoding a batch: kim_batch_begin appends the head of `id`, then the
//  caller appends each entry (kim_cmd_encode, kim_cmd_encode_deliver, or a
//  SEND map it encoded before) and, for payload-carrying batches, its
//  payload with kim_batch_payload; kim_batch_end writes the entry count
//  (1..KIM_BATCH_MAX) into the head that starts at `start`.
int
    kim_batch_begin (kim_cmd_id_t id, kim_buf_t *out);
int
    kim_batch_payload (const void *data, size_t size, kim_buf_t *out);
int
    kim_batch_end (kim_cmd_id_t id, size_t count, size_t start, kim_buf_t *out);

//  Identifier formats. An id (msg_id, referral_id, case_id, consent id) is
//  1..64 of [A-Za-z0-9._:-]; an org id is <type>.<place>[.<unit>] with each
//  part 1..: [a-z0-9_-], type one of the registered agency types or any
//  lowercase word; a code is 1..32 of [a-z0-9_]. kim_utf8_valid accepts
//  well-formed UTF-8 only: no overlong forms, surrogates or NUL.
bool
    kim_id_valid (const char *id);
bool
    kim_org_valid (const char *org);
bool
    kim_code_valid (const char *code);
bool
    kim_utf8_valid (const uint8_t *data, size_t size);

//  Copies the string `src` (NULL: "") into `dest` of `size` bytes, cut to
//  fit and always terminated; true when it fitted. snprintf's "%s" without
//  its format parser, for the paths every message takes.
bool
    kim_str_copy (char *dest, size_t size, const char *src);

//  Header <-> JSON, for the kim tool and logs: one JSON object, keys as on
//  the wire, binary fields in lowercase hex. kim_msg_to_json appends to
//  `out` (not NUL-terminated). kim_msg_from_json applies the same limits
//  and rules as the MessagePack decoder.
int
    kim_msg_to_json (const kim_msg_t *self, kim_buf_t *out);
int
    kim_msg_from_json (kim_msg_t *self, const char *json, size_t size, kim_decode_error_t *err);

//  Transcodes JSON text to MessagePack applying no kim rules: objects become
//  maps (keys in the order written), arrays arrays, strings str, integers
//  the smallest int, reals float64, true/false/null bool/nil. For tests and
//  tools that craft commands, valid or deliberately not. Appends to `out`.
//  Returns 0, -KIM_E_MALFORMED, -KIM_E_TOO_LARGE or -KIM_E_NOMEM.
int
    kim_json_to_msgpack (const char *json, size_t size, kim_buf_t *out);

//  Self-tests of the codec (kim_msg_test also runs kim_msg_json_test).
void
    kim_msg_test (bool verbose);
void
    kim_msg_json_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
