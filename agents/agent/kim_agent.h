/*  kim_agent.h — what the parts of kim-agent share.

    kim-agent is the daemon an office runs beside its own systems. It has
    three parts, one thread of control each:

    - the link (kim_agent_link.c) runs on the main thread and alone owns
      the kim_client: it sends what waits in the outbox, records receipts
      and refusals, and writes deliveries into the inbox before it acks them;
    - the HTTP API (kim_agent_http.c) runs on libmicrohttpd's threads: it
      writes accepted messages into the outbox (a synced LMDB commit), wakes
      the link through a pipe, and answers reads from LMDB read transactions;
    - the store (kim_agent_store.c, with the referral view in
      kim_agent_view.c) is the LMDB environment both use. LMDB serialises
      writers itself, and MDB_NOTLS lets any thread run a read transaction.

    So no two threads ever touch the client's socket, and the only thing the
    threads share besides the store is the small status block below.
*/
#ifndef KIM_AGENT_H_INCLUDED
#define KIM_AGENT_H_INCLUDED

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "kim/kim_client.h"
#include "kim_json.h"

#define KIM_AGENT_VERSION       "0.1.0"
#define KIM_AGENT_BODY_DEFAULT  (4u * 1024 * 1024)
#define KIM_AGENT_BODY_MAX      (64u * 1024 * 1024)
#define KIM_AGENT_TOKENS_MAX    64
//  The agent's subscription to the handovers and closings of its cases
#define KIM_AGENT_SUB_ID        "kim-agent-cases"

//  --------------------------------------------------------------------------
//  Configuration (kim_agent_config.c)

typedef struct {
    char name [KIM_CODE_MAX + 1];       //  the client system's name, for logs
    uint8_t hash [32];                  //  BLAKE2b of its token
} kim_agent_token_t;

typedef struct {
    char org [KIM_ORG_MAX + 1];         //  agent/org
    char data [PATH_MAX];               //  agent/data: the store's folder
    char cert [PATH_MAX];               //  agent/cert: the organisation's secret cert
    char sign_key [PATH_MAX];           //  agent/sign_key: optional Ed25519 key file
    bool verbose;                       //  agent/verbose
    char endpoint [256];                //  broker/endpoint
    char broker_key [41];               //  broker/key or the key in broker/key_file
    int timeout_ms;                     //  broker/timeout_ms
    bool plaintext;                     //  broker/plaintext (tests only)
    char bind [64];                     //  http/bind: an IP address
    uint16_t port;                      //  http/port (0: the kernel's choice)
    char port_file [PATH_MAX];          //  http/port_file: where the bound port is written
    char tokens_path [PATH_MAX];        //  http/tokens
    size_t max_body;                    //  http/max_body
    char tls_cert [PATH_MAX];           //  http/tls_cert (PEM)
    char tls_key [PATH_MAX];            //  http/tls_key (PEM, mode 0600)
    size_t map_size;                    //  store/map_size_mb, in bytes
    char webhook_url [1024];            //  webhook/url ("" : no webhook)
    char webhook_secret_path [PATH_MAX];//  webhook/secret_file
    uint32_t webhook_attempts;          //  webhook/max_attempts
    uint64_t webhook_backoff_ms;        //  webhook/backoff_ms
    uint64_t webhook_backoff_max_ms;    //  webhook/backoff_max_ms
    int webhook_timeout_ms;             //  webhook/timeout_ms
    char folder_outbox [PATH_MAX];      //  folder/outbox: files to send ("" : none)
    char folder_inbox [PATH_MAX];       //  folder/inbox: deliveries as files ("" : none)
    int folder_poll_ms;                 //  folder/poll_ms
    bool web_enabled;                   //  web/enabled: the staff web page (agents/agent/web)
    char web_users [PATH_MAX];          //  web/users: the staff accounts file
    char web_lang [3];                  //  web/lang: "de" or "en", the default language
    uint32_t web_max_failures;          //  web/max_failures: failed logins before a lockout
    uint32_t web_lockout_s;             //  web/lockout_s: how long a lockout lasts
    char web_policy [PATH_MAX];         //  web/policy: a copy of the broker's policy ("": none)

    //  Loaded from the files named above.
    char public_key [41];
    char secret_key [41];
    char sign_public [41];
    char sign_secret [41];
    kim_agent_token_t tokens [KIM_AGENT_TOKENS_MAX];
    size_t token_count;
    uint8_t webhook_secret [256];       //  the HMAC key
    size_t webhook_secret_size;
} kim_agent_config_t;

//  Reads and validates the ZPL file and the key, token and TLS files it
//  names. Returns 0, or -KIM_E_CONFIG with `error` naming the key path.
int
    kim_agent_config_load (kim_agent_config_t *self, const char *path,
                           char *error, size_t error_size);

//  True when `bind` is a loopback address.
bool
    kim_agent_config_local (const kim_agent_config_t *self);

//  Wipes the secrets.
void
    kim_agent_config_clear (kim_agent_config_t *self);

//  --------------------------------------------------------------------------
//  Store (kim_agent_store.c): the outbox, the inbox and the referral view.
//  Records are JSON objects; keys starting with '_' are internal and never
//  leave the agent.

typedef struct _kim_agent_store_t kim_agent_store_t;
typedef struct _kim_agent_txn_t kim_agent_txn_t;

kim_agent_store_t *
    kim_agent_store_new (const char *dir, size_t map_size, const char *org,
                         char *error, size_t error_size);
void
    kim_agent_store_destroy (kim_agent_store_t **self_p);

//  Commits a message from the local system to the outbox (synced). msg_id
//  must be set. `folder_name` is the NAME of a message from the outbox
//  folder (its broker answer is then queued for the folder), or NULL.
//  Returns 0 (new; *record is its record), 1 (the same message was
//  accepted before; *record is its current record), -KIM_E_BAD_VALUE (the
//  msg_id was used for a different message), or another -KIM_E_*.
int
    kim_agent_store_accept (kim_agent_store_t *self, const kim_msg_t *msg,
                            const uint8_t *payload, size_t size, const char *folder_name,
                            json_t **record);

//  The outbox record of a msg_id (owned by the caller), or NULL.
json_t *
    kim_agent_store_outbox_get (kim_agent_store_t *self, const char *msg_id);

//  Up to `max` msg_ids still waiting for the broker, oldest first, as a
//  JSON array of strings (owned by the caller).
json_t *
    kim_agent_store_outbox_queued (kim_agent_store_t *self, size_t max);

//  Loads a queued message for sending. *payload is malloc'ed (NULL when
//  empty). Returns 0 or -KIM_E_*.
int
    kim_agent_store_outbox_load (kim_agent_store_t *self, const char *msg_id, kim_msg_t *msg,
                                 uint8_t **payload, size_t *size);

//  A write transaction for the link's answers and deliveries, committed
//  (synced) as one.
kim_agent_txn_t *
    kim_agent_store_begin (kim_agent_store_t *self);
int
    kim_agent_store_receipt (kim_agent_txn_t *txn, const char *msg_id, uint64_t seq, bool dup);
int
    kim_agent_store_refused (kim_agent_txn_t *txn, const char *msg_id, int code,
                             const char *text, const char *path);
//  Writes a delivery into the inbox unless its seq is there already
//  (*fresh says which). The payload must be the opened one.
int
    kim_agent_store_deliver (kim_agent_txn_t *txn, const kim_event_t *event, bool *fresh);
int
    kim_agent_store_commit (kim_agent_txn_t **txn_p);
void
    kim_agent_store_abort (kim_agent_txn_t **txn_p);

//  Records the outcome of a delivery's sender-signature check: "valid",
//  "invalid" or "unknown_key" (written "none" or "unchecked" at delivery).
int
    kim_agent_store_inbox_signature (kim_agent_store_t *self, uint64_t seq, const char *value);

//  Inbox reads. `handled`: -1 all, 0 unhandled, 1 handled; `type`: only
//  deliveries of this type (a type name, "ERASURE"), or NULL for all.
json_t *
    kim_agent_store_inbox_list (kim_agent_store_t *self, uint64_t after, size_t limit,
                                int handled, const char *type);
//  One delivery with its payload, or NULL.
json_t *
    kim_agent_store_inbox_get (kim_agent_store_t *self, uint64_t seq);
//  Marks a delivery handled. Returns 0 with *record set, or -KIM_E_NOT_FOUND.
int
    kim_agent_store_inbox_handled (kim_agent_store_t *self, uint64_t seq, json_t **record);

//  Erasing the office's copies (kim_agent_store_payload.c). Payloads are
//  sealed at rest under keys of their own (<data>/keys/); erasing one
//  deletes its key and compacts the key store before the sealed bytes go,
//  so that nothing in agent/data can open it again. Records stay, with
//  their headers: they are the office's account of what came and went.
//
//  The payload of delivery `seq`; *record is the delivery as in the inbox
//  list, with "erased_at". -KIM_E_NOT_FOUND when there is no such delivery.
int
    kim_agent_store_inbox_erase (kim_agent_store_t *self, uint64_t seq, json_t **record);
//  The payloads of the deliveries under `seqs` (those of a broker's ERASURE
//  notice): *result lists the seqs found ("inbox") and not ("missing").
int
    kim_agent_store_inbox_erase_seqs (kim_agent_store_t *self, const uint64_t *seqs,
                                      size_t count, json_t **result);

//  Every payload about `subject` (a record's header names it, or for an
//  answer inside a referral, the referral's): deliveries, and messages the
//  broker answered. *result: {"subject", "inbox": [seq], "outbox": [msg_id],
//  "waiting": [msg_id]}; "waiting" are outbox messages the broker has not
//  answered yet, whose payloads must stay until it has.
int
    kim_agent_store_subject_erase (kim_agent_store_t *self, const char *subject,
                                   json_t **result);

//  The payloads of outbox messages the broker has answered (receipted or
//  refused) are never sent again: erases them. *count: how many.
int
    kim_agent_store_outbox_shed (kim_agent_store_t *self, size_t *count);

//  Referral view reads. `state`: NULL for all; `overdue`: -1 all, 0, 1.
json_t *
    kim_agent_store_referrals (kim_agent_store_t *self, const char *state, int overdue);
json_t *
    kim_agent_store_referral (kim_agent_store_t *self, const char *referral_id);

//  Case view reads: the cases (without timelines; "events" counts them),
//  optionally only those in `state` (OPEN, CLOSED), and one case with its
//  timeline. NULL when unknown.
json_t *
    kim_agent_store_cases (kim_agent_store_t *self, const char *state);
json_t *
    kim_agent_store_case (kim_agent_store_t *self, const char *case_id);

//  The consents this office granted or revoked, with their state (pending,
//  active, refused, expired, revoking, revoked), optionally only those in
//  `state`; and one of them (NULL when unknown).
json_t *
    kim_agent_store_consents (kim_agent_store_t *self, const char *state);
json_t *
    kim_agent_store_consent (kim_agent_store_t *self, const char *consent);

//  An access report this office asked for (by the request's msg_id): its
//  status (queued, receipted, refused, answered) and, once answered, the
//  broker's report. NULL when there is no such request.
json_t *
    kim_agent_store_report (kim_agent_store_t *self, const char *msg_id);
//  Every access report this office asked for, with its status, in the order
//  of their msg_ids, without the reports themselves.
json_t *
    kim_agent_store_reports (kim_agent_store_t *self);

//  Webhook queue. With push on, every fresh delivery is queued for the
//  webhook in the commit that writes it into the inbox.
void
    kim_agent_store_set_push (kim_agent_store_t *self, bool push);
//  Seqs due for a push attempt (next_at <= now), as a JSON array.
json_t *
    kim_agent_store_push_due (kim_agent_store_t *self, uint64_t now, size_t max);
//  Records an attempt: error NULL for success (the entry goes), else the
//  next attempt waits backoff_ms doubled per attempt (at most
//  backoff_max_ms), and after max_attempts the delivery becomes a dead
//  letter (*dead set).
int
    kim_agent_store_push_result (kim_agent_store_t *self, uint64_t seq, const char *error,
                                 uint32_t max_attempts, uint64_t backoff_ms,
                                 uint64_t backoff_max_ms, bool *dead);
//  Dead letters, and putting one back into the queue (*letter: its record).
json_t *
    kim_agent_store_dead_list (kim_agent_store_t *self);
int
    kim_agent_store_dead_retry (kim_agent_store_t *self, uint64_t seq, json_t **letter);

//  Inbox folder queue: with drop on, every fresh delivery is queued for the
//  folder bridge in the commit that writes it into the inbox.
void
    kim_agent_store_set_drop (kim_agent_store_t *self, bool drop);
json_t *
    kim_agent_store_drop_due (kim_agent_store_t *self, size_t max);
int
    kim_agent_store_drop_done (kim_agent_store_t *self, uint64_t seq);
//  Broker answers (receipt or refusal) of messages from the outbox folder,
//  still to be written as files: a JSON array of [msg_id, NAME] pairs.
json_t *
    kim_agent_store_answers_due (kim_agent_store_t *self, size_t max);
int
    kim_agent_store_answers_done (kim_agent_store_t *self, const char *msg_id);
//  A delivery's opened payload (malloc'ed; NULL when empty).
int
    kim_agent_store_inbox_payload (kim_agent_store_t *self, uint64_t seq, uint8_t **data,
                                   size_t *size);

//  The messages of one referral, received and sent, oldest first: a JSON
//  array of {direction "in"|"out", type, msg_id, at, code, org, note,
//  sender, and seq (in) or status, error, text (out)}. Never payloads.
json_t *
    kim_agent_store_timeline (kim_agent_store_t *self, const char *referral_id);

//  Counts for the status route.
void
    kim_agent_store_counts (kim_agent_store_t *self, size_t *queued, size_t *inbox,
                            size_t *unhandled);

//  --------------------------------------------------------------------------
//  Referral view (kim_agent_view.c): how a message moves a referral, seen
//  from our organisation. `record` is the referral's current record (NULL if
//  unknown); returns the new record (a new reference) or NULL when the
//  message does not concern the view. A FORWARD also opens a new referral:
//  *opened is then set (a new reference) with its id in its "referral_id".

json_t *
    kim_agent_view_apply (const char *self_org, const kim_msg_t *msg, bool outgoing,
                          json_t *record, uint64_t now_ms, json_t **opened);

//  A referral record after a CONSENT_REVOKE (sent by us and receipted, or
//  delivered by the broker): SUSPENDED when it is open and relied on the
//  revoked consent; NULL when it does not move.
json_t *
    kim_agent_view_revoked (json_t *record, const kim_msg_t *msg, uint64_t now_ms);

//  A referral record after a handover of its case from old_lead to new_lead
//  (msg: the HANDOVER_ACCEPT) listed it: when we are its recipient and the
//  old lead referred us, the new lead becomes our counterpart (answers go
//  there; "handed_over_from" keeps the old); when we were the old lead and
//  referred, "handed_over_to" names the new sender. Only open referrals move
//  (not SUSPENDED ones), as at the broker. NULL when nothing moves.
json_t *
    kim_agent_view_handover (const char *self_org, json_t *record, const char *old_lead,
                             const char *new_lead, const kim_msg_t *msg, uint64_t now_ms);

//  The case view: how a message moves the record of case `case_id` (the
//  message's own, or its referral's), seen from our organisation. `record`
//  is the current record or NULL; returns the new record (a new
//  reference), with the message appended to its timeline (at most
//  KIM_AGENT_TIMELINE_MAX entries, the oldest dropped), or NULL when
//  case_id is empty.
#define KIM_AGENT_TIMELINE_MAX 500
json_t *
    kim_agent_view_case (const char *self_org, const kim_msg_t *msg, bool outgoing,
                         const char *case_id, json_t *record, uint64_t seq, uint64_t now_ms);

//  Adds the computed "overdue" to a referral record for output.
void
    kim_agent_view_finish (json_t *record, uint64_t now_ms);

//  --------------------------------------------------------------------------
//  What the threads share.

typedef struct {
    atomic_bool connected;              //  the link has a session with the broker
    atomic_uint_fast64_t reconnects;
    int wake_fd;                        //  write end: the HTTP side wakes the link
} kim_agent_shared_t;

//  Nudges the link (never blocks; a full pipe already means "wake up").
void
    kim_agent_wake (kim_agent_shared_t *shared);

//  --------------------------------------------------------------------------
//  The link (kim_agent_link.c): runs until zsys_interrupted. Returns 0, or
//  1 when it must stop (the broker knows our key as another organisation).

int
    kim_agent_link_run (const kim_agent_config_t *config, kim_agent_store_t *store,
                        kim_agent_shared_t *shared, int wake_read_fd);

//  --------------------------------------------------------------------------
//  The webhook (kim_agent_webhook.c): a thread of its own that POSTs each
//  queued delivery to webhook/url, signed, and retries with backoff.

typedef struct _kim_agent_webhook_t kim_agent_webhook_t;

kim_agent_webhook_t *
    kim_agent_webhook_new (const kim_agent_config_t *config, kim_agent_store_t *store);
void
    kim_agent_webhook_destroy (kim_agent_webhook_t **self_p);
//  The signature header value for id, timestamp and body: "v1,<base64>".
void
    kim_agent_webhook_sign (const uint8_t *key, size_t key_size, const char *id,
                            const char *timestamp, const char *body, size_t body_size,
                            char out [64]);

//  --------------------------------------------------------------------------
//  The folder bridge (kim_agent_folder.c): a thread that sends the files
//  dropped into folder/outbox and writes deliveries into folder/inbox.

typedef struct _kim_agent_folder_t kim_agent_folder_t;

kim_agent_folder_t *
    kim_agent_folder_new (const kim_agent_config_t *config, kim_agent_store_t *store,
                          kim_agent_shared_t *shared, char *error, size_t error_size);
void
    kim_agent_folder_destroy (kim_agent_folder_t **self_p);

//  Checks, completes and commits a message to the outbox, as POST
//  /v1/messages does (kim_agent_http.c). Returns 0 (new), 1 (a repeat),
//  or -code with `why` and `path`; *record is the outbox record.
int
    kim_agent_accept_message (const kim_agent_config_t *config, kim_agent_store_t *store,
                              kim_msg_t *msg, const uint8_t *payload, size_t size,
                              const char *folder_name, json_t **record, char *why,
                              size_t why_size, char *path, size_t path_size);

//  --------------------------------------------------------------------------
//  The HTTP API (kim_agent_http.c)

typedef struct _kim_agent_http_t kim_agent_http_t;

kim_agent_http_t *
    kim_agent_http_new (const kim_agent_config_t *config, kim_agent_store_t *store,
                        kim_agent_shared_t *shared, char *error, size_t error_size);
void
    kim_agent_http_destroy (kim_agent_http_t **self_p);
//  The bound port.
uint16_t
    kim_agent_http_port (kim_agent_http_t *self);
//  Prints the route table ("METHOD /path/{param}" lines).
void
    kim_agent_http_routes (FILE *out);

#endif
