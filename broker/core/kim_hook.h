/*  kim_hook.h — how broker modules take part in handling a message.

    The server's write path is one pipeline: identity, de-duplication,
    recipient, then every registered hook's `check` (life cycle, policy,
    consent...), the log append, and every hook's `applied`, all inside the
    same write transaction as the append. A module that keeps state next to
    the log (referral states, consents, subscriptions) therefore changes it
    atomically with the log, and a batch that is replayed after a map growth
    replays the hooks too, so hooks keep no in-memory effects until `committed`.
    The recipient's mailbox entry is written after every `applied`, so that
    a hook may put its own entry for the recipient first (a header-only
    copy) and leave a note with the mail.

    Hooks may emit broker-made messages (REMINDER, DELIVERED, notices to
    earlier recipients...) through kim_ctx_emit(): they are appended to the
    log and put into the recipients' mailboxes in the same transaction.

    Hooks run on the server's thread. They must not block.
*/
#ifndef KIM_HOOK_H_INCLUDED
#define KIM_HOOK_H_INCLUDED

#include "kim_config.h"
#include "kim_store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_ctx_t kim_ctx_t;

//  The mailbox of messages waiting for a peer broker is "peer:<name>":
//  no organisation id can contain ':' (PROTOCOL.md 6, rule 6).
#define KIM_LINK_MAILBOX_PREFIX "peer:"
#define KIM_LINK_MAILBOX_MAX    (sizeof KIM_LINK_MAILBOX_PREFIX - 1 + KIM_ORG_MAX)

//  Why a hook refused a message: becomes the REJECT's code, path and text.
//  `rule` names the policy rule or life-cycle rule that decided.
typedef struct {
    int code;                               //  KIM_E_* (positive), 0 = allowed
    char path [KIM_PATH_MAX + 1];
    char text [KIM_TEXT_MAX + 1];
    char rule [KIM_CODE_MAX + 1];
} kim_verdict_t;

//  A message on its way into the log. `msg` has the authenticated sender set.
typedef struct {
    const kim_org_t *sender;                //  the authenticated organisation
    const kim_org_t *recipient;             //  NULL for messages to the broker itself
    kim_msg_t *msg;                         //  hooks may set broker-made fields
    uint64_t seq;                           //  set before `applied` is called
    size_t payload_size;
    //  `applied` may leave a note with the recipient's mail (the referral
    //  id): `acked` gets it back without reading the record again.
    char note [KIM_MAILBOX_NOTE_MAX + 1];
} kim_route_t;

//  How a link to a peer broker stands (kim_link.c), for metrics and logs.
typedef struct {
    char peer [KIM_ORG_MAX + 1];            //  the peer broker's name
    bool up;                                //  WELCOME heard, not failed since
    uint64_t since_ms;                      //  wall clock of the last change
    uint64_t queued;                        //  messages in its link mailbox
    uint64_t in_flight;                     //  of those, sent and not yet answered
    uint64_t remote_orgs;                   //  organisations its directory homes there
} kim_link_info_t;

//  Who sent a command, and where answers go. Borrowed for the call: copy
//  the routing id to answer later.
typedef struct {
    const kim_org_t *org;                   //  the authenticated organisation
    const uint8_t *rid;                     //  ROUTER routing id of the connection
    size_t rid_size;
} kim_peer_t;

typedef struct {
    const char *name;
    //  Serves a command the core does not (SUBSCRIBE, QUERY, ...). Return
    //  -KIM_E_UNKNOWN_CMD when it is not this module's, 0 when served
    //  (answer with kim_ctx_send), or another -code to have the server REJECT
    //  it with `verdict`. Runs outside any write batch: use kim_ctx_batch to write.
    int (*command) (void *state, kim_ctx_t *ctx, const kim_peer_t *peer, const kim_cmd_t *cmd,
                    kim_verdict_t *verdict);
    //  Decides whether the message may pass. Fill `verdict` and return its
    //  -code to refuse; return 0 to allow. Store errors: return -KIM_E_*.
    int (*check) (void *state, kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict);
    //  The message has its seq, in the same transaction: update state, emit.
    int (*applied) (void *state, kim_ctx_t *ctx, kim_route_t *route);
    //  `org` acknowledged the delivery of record `seq` (in the batch's
    //  transaction); `note` is what `applied` left with the mail, or "".
    int (*acked) (void *state, kim_ctx_t *ctx, const kim_org_t *org, uint64_t seq,
                  const char *note);
    //  Called about every 200 ms inside a write transaction: timers, retention.
    int (*tick) (void *state, kim_ctx_t *ctx);
    //  The batch is committed: in-memory caches may follow now. It is not
    //  yet durable (kim_store.h, Durability: the next flush makes it so); a
    //  hook that tells anything outside the store about it (a file, a
    //  message) syncs first (kim_store_sync), as the audit module does
    //  before it saves the latest checkpoint.
    void (*committed) (void *state);
    //  The batch was abandoned: forget what `check`/`applied` cached.
    void (*aborted) (void *state);
    //  A session ended (BYE, a new HELLO, expiry, revocation): forget what
    //  was kept for that routing id (open queries, ...).
    void (*session_end) (void *state, const uint8_t *rid, size_t rid_size);
    //  Organisations that live at another district's broker (kim_link.c):
    //  copies the remote organisation `id` into *org and its home broker's
    //  name into `home` (KIM_ORG_MAX + 1 bytes) and returns true, or false
    //  when `id` is not known as remote. Mail to a remote organisation goes
    //  into the link mailbox KIM_LINK_MAILBOX_PREFIX + home.
    bool (*remote) (void *state, const char *id, kim_org_t *org, char *home);
    //  The index-th remote organisation (0, 1, ...), as `remote`; false past
    //  the last. For DIRECTORY.
    bool (*remote_at) (void *state, size_t index, kim_org_t *org, char *home);
    //  The index-th link to a peer broker; false past the last.
    bool (*link_at) (void *state, size_t index, kim_link_info_t *info);
    //  Frees `state` at shutdown.
    void (*destroy) (void **state_p);
    void *state;
} kim_hook_t;

//  --- what the server offers hooks ----------------------------------------

kim_store_t *
    kim_ctx_store (kim_ctx_t *ctx);
const kim_config_t *
    kim_ctx_config (kim_ctx_t *ctx);
uint64_t
    kim_ctx_now (kim_ctx_t *ctx);               //  the broker's clock (ms)
const kim_org_t *
    kim_ctx_org (kim_ctx_t *ctx, const char *id);

//  Appends a broker-made message (its sender is set to the broker's name,
//  msg_id made up if empty) to the log and puts it into `recipient`'s
//  mailbox. A recipient at another district's broker gets only DELIVERED
//  (through the link); other notices to it are logged, not sent, since its
//  own broker runs the same life cycle and tells it itself. Sets *seq when
//  not NULL. Returns 0 or -KIM_E_*.
int
    kim_ctx_emit (kim_ctx_t *ctx, kim_msg_t *msg, const char *recipient, uint64_t *seq);

//  Appends a non-message record (KIM_RECORD_DECISION, _STATE, ...) to the log.
int
    kim_ctx_record (kim_ctx_t *ctx, uint8_t kind, const uint8_t *body, size_t size, uint64_t *seq);

//  Also puts an existing record into `org`'s mailbox (fan-out to subscribers):
//  delivered with its header and an empty payload (the payload is sealed to
//  the message's own recipient).
int
    kim_ctx_deliver_also (kim_ctx_t *ctx, const char *org, uint64_t seq);

//  Puts an existing record into `org`'s mailbox with its payload: for a
//  message whose payload is meant for `org` although the header's recipient
//  is another (a FORWARD's payload goes to the organisation it names).
int
    kim_ctx_deliver_payload (kim_ctx_t *ctx, const char *org, uint64_t seq);

//  The organisation `id` homed at a peer broker (kim_link.c): copies it and
//  its home broker's name (KIM_ORG_MAX + 1 bytes); false when not remote.
bool
    kim_ctx_remote (kim_ctx_t *ctx, const char *id, kim_org_t *org, char *home);

//  The index-th organisation homed at a peer broker (kim_link.c): copies it
//  and its home broker's name (KIM_ORG_MAX + 1 bytes); false past the last.
bool
    kim_ctx_remote_at (kim_ctx_t *ctx, size_t index, kim_org_t *org, char *home);

//  Sends a command to a peer (a reply, a RECORD of a query...).
void
    kim_ctx_send (kim_ctx_t *ctx, const uint8_t *rid, size_t rid_size, const kim_cmd_t *cmd);

//  Runs `fn` inside a write batch of its own (for commands that write, such
//  as SUBSCRIBE or a logged QUERY), replayed if the map grows, committed and
//  synced before it returns. The other hooks' check/applied do not run for
//  records written here. Returns fn's or the commit's result.
int
    kim_ctx_batch (kim_ctx_t *ctx, int (*fn) (void *arg, kim_ctx_t *ctx), void *arg);

#ifdef __cplusplus
}
#endif

#endif
