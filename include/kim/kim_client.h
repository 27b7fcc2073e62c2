/*  kim_client.h — the client library agency systems link to talk to a kim broker.

    A client is one authenticated session: a ZeroMQ DEALER socket secured
    with CurveZMQ, using the organisation's key pair; the broker knows the
    organisation by that key alone. The library keeps every message until the
    broker has receipted it, so when a connection or the broker goes away it
    reconnects, says HELLO again and resends what was not receipted, with the
    same msg_ids: the broker's de-duplication turns that into exactly-once.

    A client belongs to one thread. Events (receipts, rejects, deliveries)
    come out of kim_client_recv(); sends go in with kim_client_send_async()
    (pipelined, up to the send window) or kim_client_send() (waits for the
    receipt).
*/
#ifndef KIM_CLIENT_H_INCLUDED
#define KIM_CLIENT_H_INCLUDED

#include "kim_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_client_t kim_client_t;

typedef struct {
    const char *endpoint;       //  e.g. "tcp://127.0.0.1:7470" or "ipc:///path/kim.sock"
    const char *broker_key;     //  broker's CURVE public key, Z85 (40 chars)
    const char *public_key;     //  organisation's CURVE public key, Z85
    const char *secret_key;     //  organisation's CURVE secret key, Z85
    const char *agent;          //  software name/version for the broker's log (NULL: "libkim")
    uint32_t window;            //  deliveries in flight this client accepts (0: send only)
    uint32_t send_window;       //  unreceipted sends in flight (0: 256)
    int timeout_ms;             //  how long kim_client_new waits for WELCOME (0: 5000)
    //  Sealing (PROTOCOL.md 13.2). By default every non-empty payload is
    //  sealed (libsodium crypto_box_seal) to the X25519 key of the
    //  organisation it is for (`recipient`; `org` for FORWARD), taken from
    //  the broker's directory (DIRECTORY, fetched per organisation on first
    //  use and cached for the session), and every delivery from another
    //  organisation is opened with our own CURVE key pair. A payload for an
    //  organisation the directory does not list is refused before it leaves
    //  (-KIM_E_UNKNOWN_RECIPIENT); messages without a recipient (to the
    //  broker itself) and broker-made deliveries are not sealed.
    //  true: send and deliver payloads as they are (tests, benchmarks).
    bool plaintext;
    //  Signing (PROTOCOL.md 13.4): our Ed25519 key as the Z85 text of its
    //  32-byte seed (40 chars; `kim keygen --sign` writes it). When set,
    //  every SEND carries hdr.sig, with sender, created_at, payload_len and
    //  payload_hash set by us. Required when the registry has our sign_key.
    const char *sign_secret_key;
} kim_client_config_t;

typedef enum {
    KIM_EVENT_RECEIPT = 1,      //  a SEND is durable: msg_id, seq, dup
    KIM_EVENT_REJECT = 2,       //  a SEND (msg_id set) or another command was refused: code, text, path
    KIM_EVENT_DELIVER = 3       //  a message for us: seq, msg, payload; ack it when processed
} kim_event_type_t;

typedef struct {
    kim_event_type_t type;
    char msg_id [KIM_ID_MAX + 1];
    uint64_t seq;
    bool dup;
    int code;                           //  KIM_E_* for REJECT
    char text [KIM_TEXT_MAX + 1];
    char path [KIM_PATH_MAX + 1];
    kim_msg_t msg;                      //  DELIVER: the header as the broker logged it
    const uint8_t *payload;             //  DELIVER: borrowed until the next kim_client_ call
    size_t payload_size;                //  (opened: the plaintext; see sealed_error)
    //  DELIVER: the payload should have been sealed to us but does not open
    //  (wrong key, rotated key, corrupted, or sent in plaintext). `payload`
    //  is then the bytes as received. The event is still delivered, never
    //  dropped: ack it once handled, or the broker redelivers it.
    bool sealed_error;
} kim_event_t;

//  Reads a CURVE key pair from a czmq certificate file (the secret file
//  written by `kim keygen`, mode 0600). Keys are Z85, 40 chars plus NUL.
//  Returns 0 or -KIM_E_KEY (insecure mode, unreadable, malformed).
int
    kim_client_load_cert (const char *path, char public_key [41], char secret_key [41]);

//  Reads a public key from a certificate file (public or secret file).
int
    kim_client_load_public_key (const char *path, char public_key [41]);

//  Connects and opens a session (HELLO, WELCOME). Returns NULL and sets *err
//  (-KIM_E_*) on failure; kim_strerror(*err) says why.
kim_client_t *
    kim_client_new (const kim_client_config_t *config, int *err);

void
    kim_client_destroy (kim_client_t **self_p);

//  The organisation the broker authenticated us as, and session figures.
const char *
    kim_client_org (kim_client_t *self);
uint32_t
    kim_client_max_payload (kim_client_t *self);

//  Queues a message for sending and sends it when the send window allows.
//  The library copies header and payload. If msg_id is empty, a fresh random
//  one is set (written back into *msg). Blocks only while the send window is
//  full (processing events meanwhile; deliveries are kept for
//  kim_client_recv), and, when sealing, for the directory lookup of a
//  recipient not yet looked up in this session (one round trip, at most
//  timeout_ms). The payload is sealed (and the header signed) before it is
//  queued: resends reuse those bytes. Returns 0 or -KIM_E_*.
int
    kim_client_send_async (kim_client_t *self, kim_msg_t *msg, const void *payload, size_t size);

//  Sends one message and waits for its RECEIPT or REJECT. Returns 0 with *seq
//  set (and *dup when the broker had it already), the negated REJECT code,
//  or -KIM_E_TIMEOUT. On reject, kim_client_error() has the broker's text.
int
    kim_client_send (kim_client_t *self, kim_msg_t *msg, const void *payload, size_t size,
                     uint64_t *seq, bool *dup, int timeout_ms);

//  Waits up to timeout_ms (-1: forever) for the next event. Returns 0 with
//  *event filled, -KIM_E_TIMEOUT, or another -KIM_E_*.
int
    kim_client_recv (kim_client_t *self, kim_event_t *event, int timeout_ms);

//  Acknowledges a delivery. Acks are batched and sent at the latest on the
//  next kim_client_recv/_flush call.
int
    kim_client_ack (kim_client_t *self, uint64_t seq);

//  Sends pending acks and waits until every queued send is receipted or
//  rejected (events that arrive meanwhile stay queued for kim_client_recv).
//  Returns 0, or -KIM_E_TIMEOUT with sends still pending.
int
    kim_client_flush (kim_client_t *self, int timeout_ms);

//  Unreceipted sends.
size_t
    kim_client_pending (kim_client_t *self);

//  Asks the broker for its figures for our organisation.
int
    kim_client_status (kim_client_t *self, kim_status_t *status, int timeout_ms);

//  Sends a command the library has no call of its own for (RELOAD, ...) and
//  waits for the broker's answer: the next command that is not a delivery,
//  a receipt of a queued send or a PONG (SUBSCRIBE and UNSUBSCRIBE: the
//  RECEIPT or REJECT whose msg_id is the sub_id). After a reconnect the request is
//  sent again. Returns 0 with *reply filled, the negated code of a REJECT
//  (kim_client_error has its text), or -KIM_E_TIMEOUT. For single-answer
//  commands; QUERY streams RECORDs and has its own reader in `kim audit`.
//  A reply's `body` (REFERRAL_INFO) is a copy owned by the client: it lives
//  until the next kim_client_request or kim_client_destroy; so are the
//  entries of a DIRECTORY_REPLY (`dir`).
int
    kim_client_request (kim_client_t *self, const kim_cmd_t *request, kim_cmd_t *reply,
                        int timeout_ms);

//  Looks organisations up in the broker's directory (DIRECTORY): `org` for
//  one, NULL for all (up to KIM_DIRECTORY_MAX). *entries points into the
//  client and lives until the next kim_client_directory/_request call.
//  Returns 0 with *count set, or -KIM_E_*.
int
    kim_client_directory (kim_client_t *self, const char *org, const kim_dir_entry_t **entries,
                          size_t *count, int timeout_ms);

//  Reads an Ed25519 signing key file written by `kim keygen --sign` (ZPL,
//  mode 0600): sign/secret_key (Z85 seed) and sign/public_key. Returns 0
//  or -KIM_E_KEY.
int
    kim_client_load_sign_key (const char *path, char public_key [41], char secret_key [41]);

//  Text of the last error or reject (never NULL).
const char *
    kim_client_error (kim_client_t *self);

//  How often the library had to reconnect and resend (for tests and logs).
uint64_t
    kim_client_reconnects (kim_client_t *self);

//  The protocol version of the open session (WELCOME), or of the last one;
//  0 before the first. The library offers versions 1 and 2 (PROTOCOL.md
//  5.1) and speaks what the broker chooses; KIM_PROTOCOL=1 in the
//  environment makes it offer version 1 only.
uint32_t
    kim_client_protocol (kim_client_t *self);

#ifdef __cplusplus
}
#endif

#endif
