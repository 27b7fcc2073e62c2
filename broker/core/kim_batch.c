/*  kim_batch.c — the broker's write batch: the one pipeline every SEND and
    ACK goes through, and what modules' hooks may do inside it.

    A batch is one LMDB write transaction: each SEND is checked (identity,
    de-duplication, recipient, every hook's check), appended to the log,
    its payload stored apart, and put into the recipient's mailbox; each ACK
    takes entries out of a mailbox. The transaction is committed and synced
    once, and only then do RECEIPTs and REJECTs go out (kim_batch_commit),
    so a receipt always names a message that is on disk. A full map grows
    and the whole batch is replayed, hooks included; that is why hooks keep
    no in-memory effects until `committed`.
*/
#include <sodium.h>

#include "kim_reply.h"
#include "kim_server_int.h"

//  --------------------------------------------------------------------------
//  What hooks may do inside a write batch

//  Mail written in the open batch becomes deliverable only after the commit.
static void
s_touch (kim_server_t *self, org_state_t *state)
{
    if (!state->touched) {
        state->touched = true;
        state->next_touched = self->touched;
        self->touched = state;
    }
}

//  --------------------------------------------------------------------------
//  Durability: answers and mail wait until their commit is on disk
//
//  A commit is durable once a later commit or a sync has returned
//  (kim_store.h, Durability). So what a batch has to tell (its RECEIPTs and
//  REJECTs, the mail it wrote) is held as of the store's commit mark, and
//  goes out when the synced mark reaches it: after the next commit when the
//  loop is busy (one flush per commit), or after a sync when it is not.

static bool
s_held (kim_server_t *self)
{
    return self->held.size || self->held_orgs;
}

static void
s_release (kim_server_t *self)
{
    kim_reply_release (self);
    while (self->held_orgs) {
        org_state_t *state = self->held_orgs;
        self->held_orgs = state->next_held;
        state->held = false;
        kim_server_mark_dirty (self, state);
    }
}

//  Sends what earlier commits held if they are durable by now, and marks
//  what is held next as of the last commit.
static void
s_hold_begin (kim_server_t *self)
{
    if (s_held (self) && kim_store_synced_mark (self->store) >= self->held_mark)
        s_release (self);
    if (!s_held (self))
        self->held_ms = (uint64_t) zclock_mono ();
    self->held_mark = kim_store_commit_mark (self->store);
}

void
kim_batch_durable (kim_server_t *self, bool later)
{
    //  Unless later, every commit is made durable, held or not: mail that
    //  no organisation here waits for (a link's) goes out once it is.
    if (!later && !kim_store_synced (self->store)) {
        int64_t started = zclock_usecs ();
        if (kim_store_sync (self->store)) {
            self->failed = true;        //  nothing held goes out: fail closed
            return;
        }
        kim_metrics_observe_commit (&self->sync_seconds, zclock_usecs () - started);
    }
    if (s_held (self) && kim_store_synced_mark (self->store) >= self->held_mark)
        s_release (self);
}

bool
kim_batch_answers_held (kim_server_t *self)
{
    return self->held.size > 0;
}

//  Mail written in the open batch becomes deliverable once its commit is
//  durable: the organisation waits in the held list until then.
static void
s_touched_settle (kim_server_t *self, bool committed)
{
    if (committed)
        s_hold_begin (self);
    while (self->touched) {
        org_state_t *state = self->touched;
        self->touched = state->next_touched;
        state->touched = false;
        if (committed && !state->held) {
            state->held = true;
            state->next_held = self->held_orgs;
            self->held_orgs = state;
        }
    }
}

kim_store_t *
kim_ctx_store (kim_ctx_t *ctx)
{
    return ctx->server->store;
}

const kim_config_t *
kim_ctx_config (kim_ctx_t *ctx)
{
    return ctx->server->config;
}

uint64_t
kim_ctx_now (kim_ctx_t *ctx)
{
    return ctx->now;
}

const kim_org_t *
kim_ctx_org (kim_ctx_t *ctx, const char *id)
{
    org_state_t *state = (org_state_t *) zhashx_lookup (ctx->server->orgs, id);
    return state? state->org: NULL;
}

//  Asks the modules whether `id` lives at another broker (kim_link.c).
static bool
s_remote (kim_server_t *self, const char *id, kim_org_t *org, char *home)
{
    for (size_t i = 0; i < self->hook_count; i++)
        if (self->hooks [i].remote && self->hooks [i].remote (self->hooks [i].state, id, org, home))
            return true;
    return false;
}

bool
kim_ctx_remote (kim_ctx_t *ctx, const char *id, kim_org_t *org, char *home)
{
    return s_remote (ctx->server, id, org, home);
}

bool
kim_ctx_remote_at (kim_ctx_t *ctx, size_t index, kim_org_t *org, char *home)
{
    kim_server_t *self = ctx->server;
    for (size_t i = 0; i < self->hook_count; i++)
        if (self->hooks [i].remote_at)
            return self->hooks [i].remote_at (self->hooks [i].state, index, org, home);
    return false;
}

//  The link mailbox of the peer broker `home`: mail waits there until the
//  peer has it on disk (PEER_ACK), as an organisation's mail waits for ACK.
static int
s_link_mailbox_add (kim_server_t *self, const char *home, uint64_t seq, const char *note)
{
    char owner [KIM_LINK_MAILBOX_MAX + 1];
    snprintf (owner, sizeof owner, KIM_LINK_MAILBOX_PREFIX "%s", home);
    return kim_store_mailbox_put_note (self->store, owner, seq, note);
}

static int
s_mailbox_add (kim_server_t *self, const char *org, uint64_t seq, bool copy, const char *note)
{
    org_state_t *state = (org_state_t *) zhashx_lookup (self->orgs, org);
    if (!state)
        return -KIM_E_UNKNOWN_RECIPIENT;
    int rc = copy
        ? kim_store_mailbox_put_copy (self->store, org, seq)
        : kim_store_mailbox_put_note (self->store, org, seq, note);
    if (rc == 0)
        s_touch (self, state);
    return rc;
}

//  Copies for an organisation of another district (a participant of a case
//  handed across, say) are not sent: its own broker keeps its own copies
//  of what crosses the link. Returns true when `org` is such a one.
static bool
s_remote_only (kim_server_t *self, const char *org)
{
    kim_org_t remote;
    char home [KIM_ORG_MAX + 1];
    return !zhashx_lookup (self->orgs, org) && s_remote (self, org, &remote, home);
}

int
kim_ctx_deliver_also (kim_ctx_t *ctx, const char *org, uint64_t seq)
{
    if (s_remote_only (ctx->server, org))
        return 0;
    return s_mailbox_add (ctx->server, org, seq, true, NULL);
}

int
kim_ctx_deliver_payload (kim_ctx_t *ctx, const char *org, uint64_t seq)
{
    if (s_remote_only (ctx->server, org))
        return 0;
    return s_mailbox_add (ctx->server, org, seq, false, NULL);
}

int
kim_ctx_record (kim_ctx_t *ctx, uint8_t kind, const uint8_t *body, size_t size, uint64_t *seq)
{
    uint64_t ignored;
    return kim_store_append (ctx->server->store, kind, ctx->now, body, size, seq? seq: &ignored);
}

//  "broker-<seq>". Every DELIVERED notice takes one, so it is written
//  without printf's machinery (about 800 instructions a call).
static void
s_broker_msg_id (char id [KIM_ID_MAX + 1], uint64_t seq)
{
    static const char prefix [] = "broker-";
    _Static_assert (sizeof prefix - 1 + 20 <= KIM_ID_MAX, "a broker id fits any seq");
    char digits [20];
    size_t count = 0;
    do
        digits [count++] = (char) ('0' + seq % 10);
    while ((seq /= 10));
    size_t at = sizeof prefix - 1;
    memcpy (id, prefix, at);
    while (count)
        id [at++] = digits [--count];
    id [at] = 0;
}

int
kim_ctx_emit (kim_ctx_t *ctx, kim_msg_t *msg, const char *recipient, uint64_t *seq)
{
    kim_server_t *self = ctx->server;
    if (!msg->msg_id [0])
        //  Broker-made ids name the seq they get: unique, and easy to trace.
        s_broker_msg_id (msg->msg_id, kim_store_head (self->store) + 1);
    kim_str_copy (msg->sender, sizeof msg->sender, self->config->name);
    if (recipient)
        kim_str_copy (msg->recipient, sizeof msg->recipient, recipient);
    if (!msg->schema)
        msg->schema = KIM_SCHEMA_VERSION;
    if (!msg->created_at)
        msg->created_at = ctx->now;
    msg->payload_len = 0;
    msg->has_payload_hash = true;
    memcpy (msg->payload_hash, self->empty_hash, KIM_HASH_SIZE);
    kim_buf_reset (&self->hdr_buf);
    uint64_t appended;
    int rc = kim_msg_encode (msg, &self->hdr_buf);
    if (rc == 0)
        rc = kim_store_append (self->store, KIM_RECORD_MESSAGE, ctx->now,
                               self->hdr_buf.data, self->hdr_buf.size, &appended);
    if (rc == 0 && recipient && !zhashx_lookup (self->orgs, recipient)) {
        kim_org_t remote;
        char home [KIM_ORG_MAX + 1];
        if (!s_remote (self, recipient, &remote, home))
            rc = -KIM_E_UNKNOWN_RECIPIENT;
        else
        if (msg->type == KIM_TYPE_DELIVERED || msg->type == KIM_TYPE_HANDED_OVER)
            rc = s_link_mailbox_add (self, home, appended, NULL);
        recipient = NULL;       //  other notices to a remote organisation: logged only
    }
    if (rc == 0 && recipient)
        rc = s_mailbox_add (self, recipient, appended, false, NULL);
    if (rc == 0 && seq)
        *seq = appended;
    return rc;
}

//  --------------------------------------------------------------------------
//  The write batch

//  Payloads from this size on are hashed by the helper thread: below it,
//  handing one over costs about what hashing it does.
#define S_HASH_BESIDE   256

static void
s_prep_job (void *arg)
{
    item_t *item = (item_t *) arg;
    if (item->decode_due)
        item->decode_rc = kim_batch_entry_decode (KIM_CMD_SEND_BATCH, &item->entry, &item->cmd,
                                                  &item->decode_error);
    if (item->hash_due)
        crypto_generichash (item->hash, KIM_HASH_SIZE, item->hash_data, item->payload_size,
                            NULL, 0);
}

void
kim_batch_prep_post (kim_server_t *self, item_t *item)
{
    item->prep_ticket = 0;
    item->hash_due = self->work && item->has_payload && item->payload_size >= S_HASH_BESIDE;
    if (item->hash_due)
        item->hash_data = (const uint8_t *) zmq_msg_data (&item->payload) + item->payload_offset;
    if (item->decode_due || item->hash_due)
        item->prep_ticket = kim_work_post (self->work, s_prep_job, item);
}

//  A message older than the de-duplication window could be replayed
//  without the broker recognising it, so it is refused as stale; so is one
//  from a clock too far ahead.
static bool
s_stale (kim_server_t *self, const kim_msg_t *msg)
{
    if (!msg->created_at)
        return false;
    uint64_t now = kim_server_now (self);
    return msg->created_at + self->config->dedup_window_ms < now
        || msg->created_at > now + self->config->clock_skew_ms;
}

int
kim_batch_send_check (kim_server_t *self, const org_state_t *sender, const kim_cmd_t *cmd,
                      size_t payload_size, const char **path, char *text, size_t text_size)
{
    *path = NULL;
    if (sender->org->role != KIM_ROLE_AGENCY) {
        *path = "cmd";
        snprintf (text, text_size, "role %s may not send messages",
                  kim_role_name (sender->org->role));
        return KIM_E_FORBIDDEN;
    }
    if (payload_size > self->config->max_payload) {
        *path = "payload";
        snprintf (text, text_size, "payload of %zu bytes exceeds max_payload %u", payload_size,
                  self->config->max_payload);
        return KIM_E_TOO_LARGE;
    }
    if (s_stale (self, &cmd->msg)) {
        *path = "hdr.created_at";
        snprintf (text, text_size, "created_at is outside the accepted window (de-duplication "
                  "window in the past, clock skew in the future)");
        return KIM_E_STALE;
    }
    if (cmd->msg.type == KIM_TYPE_OUTCOME && payload_size) {
        *path = "payload";
        snprintf (text, text_size, "an OUTCOME carries an outcome code only, never a payload");
        return KIM_E_BAD_VALUE;
    }
    return 0;
}

//  Settles what the helper found in a SEND_BATCH entry, once: the refusal
//  of an entry that did not decode or that the checks of a SEND refuse, as
//  if it had been refused when read (section 8.3).
static void
s_prep_settle (kim_server_t *self, item_t *item)
{
    if (!item->decode_due)
        return;
    kim_work_wait (self->work, item->prep_ticket);
    item->decode_due = false;
    const char *path = NULL;
    int code;
    if (item->decode_rc) {
        code = -item->decode_rc;
        path = item->decode_error.path [0]? item->decode_error.path: NULL;
        snprintf (item->text, sizeof item->text, "%s%s%s", kim_strerror (item->decode_rc),
                  path? " at ": "", path? path: "");
    }
    else
        code = kim_batch_send_check (self, item->org, &item->cmd, item->entry.payload_size,
                                     &path, item->text, sizeof item->text);
    if (code == 0)
        return;
    item->code = code;
    kim_str_copy (item->path, sizeof item->path, path);
    //  The id the refusal carries, also from an entry that did not decode
    //  (section 7.1)
    kim_cmd_ref (item->entry.cmd, item->entry.cmd_size, item->ref);
    item->settled = true;
}

static void
s_item_refuse (item_t *item, int code, const char *path, const char *text)
{
    item->code = code < 0? -code: code;
    kim_str_copy (item->path, sizeof item->path, path? path: "");
    kim_str_copy (item->text, sizeof item->text, text? text: kim_strerror (code));
}

//  Runs one SEND through the pipeline. Refusals land in item->code; the
//  return value is for failures that doom the whole batch (store errors).
static int
s_apply_send (kim_server_t *self, item_t *item)
{
    kim_msg_t *msg = &item->cmd.msg;
    const kim_org_t *sender = item->forwarded? &item->remote_sender: item->org->org;

    //  Identity comes from the key: a header may only repeat it.
    if (msg->sender [0] && strcmp (msg->sender, sender->id) != 0) {
        s_item_refuse (item, KIM_E_SENDER_MISMATCH, "hdr.sender",
                       "the header names another sender than the connection's key");
        return 0;
    }
    uint64_t seq;
    int rc = kim_store_dedup_get (self->store, sender->id, msg->msg_id, &seq);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        item->seq = seq;
        item->dup = true;
        return 0;
    }
    org_state_t *recipient = NULL;
    //  A recipient at another district's broker: its mail goes into the
    //  link mailbox of its home broker (federation, PROTOCOL.md 16).
    kim_org_t remote;
    char home [KIM_ORG_MAX + 1] = "";
    bool to_remote = false;
    if (msg->recipient [0]) {
        recipient = (org_state_t *) zhashx_lookup (self->orgs, msg->recipient);
        if ((!recipient || recipient->removed) && s_remote (self, msg->recipient, &remote, home)) {
            //  A broker passes on its own organisations' mail only: no transit.
            if (item->forwarded) {
                s_item_refuse (item, KIM_E_UNKNOWN_RECIPIENT, "hdr.recipient",
                               "the recipient is not registered at this broker (brokers hand "
                               "on their own organisations' mail only)");
                return 0;
            }
            to_remote = true;
            recipient = NULL;
        }
        else
        //  Say which: an auditor or operator is registered, but only
        //  agencies have mailboxes.
        if (!recipient || recipient->removed) {
            s_item_refuse (item, KIM_E_UNKNOWN_RECIPIENT, "hdr.recipient", NULL);
            return 0;
        }
        if (!to_remote && (recipient->org->revoked || recipient->org->role != KIM_ROLE_AGENCY)) {
            char text [KIM_TEXT_MAX + 1];
            if (recipient->org->revoked)
                snprintf (text, sizeof text, "%s is registered, but its key is revoked: it "
                          "receives nothing", msg->recipient);
            else
                snprintf (text, sizeof text, "%s is registered as %s, not as an agency: only "
                          "agencies receive messages", msg->recipient,
                          kim_role_name (recipient->org->role));
            s_item_refuse (item, KIM_E_UNKNOWN_RECIPIENT, "hdr.recipient", text);
            return 0;
        }
        //  A link mailbox has the quota of a mailbox: a peer that stays away
        //  for long slows its senders down rather than filling the disk.
        char owner [KIM_LINK_MAILBOX_MAX + 1];
        if (to_remote)
            snprintf (owner, sizeof owner, KIM_LINK_MAILBOX_PREFIX "%s", home);
        if (kim_store_mailbox_count (self->store, to_remote? owner: recipient->org->id)
            >= self->config->mailbox_quota) {
            s_item_refuse (item, KIM_E_QUOTA, "hdr.recipient", NULL);
            return 0;
        }
    }
    const uint8_t *payload = NULL;
    size_t payload_size = 0;
    if (item->has_payload) {
        payload = (const uint8_t *) zmq_msg_data (&item->payload) + item->payload_offset;
        payload_size = item->payload_size;
    }
    //  A sender may state the payload's length and hash; they must be true.
    uint8_t hash [KIM_HASH_SIZE];
    if (item->hash_due) {
        kim_work_wait (self->work, item->prep_ticket);
        memcpy (hash, item->hash, KIM_HASH_SIZE);
    }
    else
        crypto_generichash (hash, KIM_HASH_SIZE, payload, payload_size, NULL, 0);
    bool bad_len = msg->payload_len && msg->payload_len != payload_size;
    if (bad_len || (msg->has_payload_hash && sodium_memcmp (msg->payload_hash, hash, KIM_HASH_SIZE))) {
        s_item_refuse (item, KIM_E_BAD_VALUE, bad_len? "hdr.payload_len": "hdr.payload_hash",
                       "the header's payload length or hash does not describe frame 1");
        return 0;
    }
    kim_str_copy (msg->sender, sizeof msg->sender, sender->id);
    if (!msg->created_at)
        msg->created_at = self->ctx.now;
    msg->payload_len = (uint32_t) payload_size;
    msg->has_payload_hash = true;
    memcpy (msg->payload_hash, hash, KIM_HASH_SIZE);

    kim_route_t route = {
        .sender = sender,
        .recipient = to_remote? &remote: recipient? recipient->org: NULL,
        .msg = msg,
        .payload_size = payload_size,
    };
    for (size_t i = 0; i < self->hook_count; i++) {
        kim_hook_t *hook = &self->hooks [i];
        if (!hook->check)
            continue;
        kim_verdict_t verdict = { 0, "", "", "" };
        rc = hook->check (hook->state, &self->ctx, &route, &verdict);
        if (rc && verdict.code) {
            s_item_refuse (item, verdict.code, verdict.path, verdict.text [0]? verdict.text: NULL);
            kim_str_copy (item->rule, sizeof item->rule, verdict.rule);
            return 0;
        }
        if (rc)
            return rc;
    }
    kim_buf_reset (&self->hdr_buf);
    rc = kim_msg_encode (msg, &self->hdr_buf);
    if (rc == 0)
        rc = kim_store_append (self->store, KIM_RECORD_MESSAGE, self->ctx.now,
                               self->hdr_buf.data, self->hdr_buf.size, &seq);
    if (rc == 0 && payload_size)
        rc = kim_store_payload_put (self->store, seq, payload, payload_size);
    if (rc == 0)
        rc = kim_store_dedup_put (self->store, sender->id, msg->msg_id, seq, self->ctx.now);
    route.seq = seq;
    for (size_t i = 0; rc == 0 && i < self->hook_count; i++)
        if (self->hooks [i].applied)
            rc = self->hooks [i].applied (self->hooks [i].state, &self->ctx, &route);
    if (rc == 0 && recipient)
        rc = s_mailbox_add (self, recipient->org->id, seq, false, route.note);
    if (rc == 0 && to_remote)
        rc = s_link_mailbox_add (self, home, seq, route.note);
    if (rc == 0)
        item->seq = seq;
    return rc;
}

//  Removes acked deliveries from the mailbox. In-memory flights change only
//  after the commit, so that a replayed batch sees the same state.
static int
s_apply_ack (kim_server_t *self, item_t *item)
{
    org_state_t *state = item->org;
    //  The ACK's one REJECT names its first refused entry: one missing
    //  here, or the one refused when read. Entries before that one stood
    //  where they stand now, so index i is the client's index.
    size_t first_refused = item->refused_at? item->refused_at - 1: SIZE_MAX;
    if (item->refused_at) {
        char path [KIM_PATH_MAX + 1], text [KIM_TEXT_MAX + 1];
        snprintf (path, sizeof path, "seqs[%zu]", first_refused);
        snprintf (text, sizeof text, "seq %" PRIu64 " is in flight on another session of %s; "
                  "that session acknowledges it", item->refused_seq, state->org->id);
        s_item_refuse (item, KIM_E_BAD_ACK, path, text);
    }
    for (size_t i = 0; i < item->cmd.ack_count; i++) {
        uint64_t seq = item->cmd.acks [i];
        char note [KIM_MAILBOX_NOTE_MAX + 1];
        int rc = kim_store_mailbox_take (self->store, state->org->id, seq, note);
        if (rc == -KIM_E_NOT_FOUND) {
            //  A range names what is in flight; an ACK earlier in this
            //  batch may have taken a seq of it already.
            if (item->from_range)
                continue;
            if (i < first_refused) {
                char path [KIM_PATH_MAX + 1], text [KIM_TEXT_MAX + 1];
                snprintf (path, sizeof path, "seqs[%zu]", i);
                snprintf (text, sizeof text, "seq %" PRIu64 " is not in your mailbox", seq);
                s_item_refuse (item, KIM_E_BAD_ACK, path, text);
                first_refused = i;
            }
            continue;
        }
        if (rc)
            return rc;
        for (size_t h = 0; h < self->hook_count; h++)
            if (self->hooks [h].acked
            &&  (rc = self->hooks [h].acked (self->hooks [h].state, &self->ctx, state->org, seq,
                                            note)))
                return rc;
    }
    return 0;
}

static void
s_hooks_settle (kim_server_t *self, bool committed)
{
    for (size_t i = 0; i < self->hook_count; i++) {
        kim_hook_t *hook = &self->hooks [i];
        if (committed && hook->committed)
            hook->committed (hook->state);
        else
        if (!committed && hook->aborted)
            hook->aborted (hook->state);
    }
    s_touched_settle (self, committed);
}

//  Commits the open batch. Returns 0, 1 when the map grew and the batch must
//  be replayed, or -KIM_E_*.
static int
s_commit (kim_server_t *self)
{
    bool retry = false;
    int64_t started = zclock_usecs ();
    int rc = kim_store_commit (self->store, &retry);
    kim_metrics_observe_commit (&self->commit_seconds, zclock_usecs () - started);
    s_hooks_settle (self, rc == 0);
    if (rc == -KIM_E_STORE_FULL && retry)
        return 1;
    if (rc && kim_store_failed (self->store))
        self->failed = true;
    return rc;
}

static void
s_abort (kim_server_t *self)
{
    kim_store_abort (self->store);
    s_hooks_settle (self, false);
}

static int
s_apply_batch (kim_server_t *self)
{
    int rc = kim_store_begin (self->store);
    if (rc)
        return rc;
    for (size_t i = 0; i < self->item_count && rc == 0; i++) {
        item_t *item = &self->items [i];
        s_prep_settle (self, item);
        if (item->settled)
            continue;
        item->code = 0;
        item->path [0] = item->text [0] = 0;
        item->seq = 0;
        item->dup = false;
        item->rule [0] = 0;
        rc = item->cmd.id == KIM_CMD_SEND || item->cmd.id == KIM_CMD_PEER_FORWARD
            ? s_apply_send (self, item)
            : s_apply_ack (self, item);
    }
    //  A full map poisons the whole transaction; commit grows the map.
    if (rc && rc != -KIM_E_STORE_FULL) {
        s_abort (self);
        return rc;
    }
    if (self->ctx.now - self->last_dedup_expire_ms >= KIM_DEDUP_EXPIRE_MS) {
        kim_store_dedup_expire (self->store, self->ctx.now, 1000);
        self->last_dedup_expire_ms = self->ctx.now;
    }
    return s_commit (self);
}

//  Writes the answer to one message of a SEND_BATCH into the batch's
//  RECEIPT_BATCH, and sends that after the batch's last message.
static void
s_answer_in_batch (kim_server_t *self, item_t *item)
{
    kim_buf_t *out = &self->batch_buf;
    if (item->batch_index == 0) {
        kim_buf_reset (out);
        kim_batch_begin (KIM_CMD_RECEIPT_BATCH, out);
    }
    //  A message refused when read may not have decoded: its id was read
    //  apart (item->ref)
    const char *ref = item->settled? item->ref: item->cmd.msg.msg_id;
    kim_cmd_t *answer = &self->receipt;
    if (item->code == 0) {
        memcpy (answer->msg_id, item->cmd.msg.msg_id, sizeof answer->msg_id);
        answer->seq = item->seq;
        answer->dup = item->dup;
        if (item->dup)
            self->duplicates++;
        else
            self->receipted++;
    }
    else {
        answer = &self->reply;
        kim_reply_reject_fill (self, answer, item->code, ref [0]? ref: NULL,
                               item->path [0]? item->path: NULL, item->text);
    }
    size_t mark = out->size;
    if (kim_cmd_encode (answer, out)) {
        //  Cannot happen with what the broker fills in; the place must be
        //  answered all the same.
        out->size = mark;
        kim_reply_reject_fill (self, &self->reply, KIM_E_INTERNAL, ref [0]? ref: NULL, NULL,
                               NULL);
        if (kim_cmd_encode (&self->reply, out))
            zsys_error ("server: cannot encode an answer in a RECEIPT_BATCH");
    }
    if (item->batch_index + 1 == item->batch_count
    &&  kim_batch_end (KIM_CMD_RECEIPT_BATCH, item->batch_count, 0, out) == 0)
        kim_reply_buf (self, item->rid, item->rid_size, out);
}

//  Answers a peer's PEER_FORWARD after the commit: PEER_ACK names the
//  sending broker's seq, so that it takes the message out of its link
//  mailbox; a refusal says which rule of this broker refused it.
static void
s_answer_forward (kim_server_t *self, item_t *item)
{
    kim_cmd_t *answer = &self->reply;
    kim_cmd_init (answer, item->code? KIM_CMD_PEER_REFUSED: KIM_CMD_PEER_ACK);
    answer->seq = item->cmd.seq;
    if (item->code) {
        answer->code = item->code;
        kim_str_copy (answer->text, sizeof answer->text, item->text);
        kim_str_copy (answer->path, sizeof answer->path, item->path);
        kim_str_copy (answer->rule, sizeof answer->rule, item->rule);
        zsys_info ("link: refused %s from %s for %s: %s%s%s", item->cmd.msg.msg_id,
                   item->cmd.msg.sender, item->org->org->id, kim_errname (-item->code),
                   item->rule [0]? " by rule ": "", item->rule);
        self->rejected++;
    }
    else {
        answer->dup = item->dup;
        if (item->dup)
            self->duplicates++;
        else
            self->receipted++;
    }
    kim_reply_cmd (self, item->rid, item->rid_size, answer);
}

static void
s_finish_batch (kim_server_t *self, int rc)
{
    //  No job may still read a payload about to be let go
    kim_work_drain (self->work);
    s_hold_begin (self);
    self->holding = true;
    for (size_t i = 0; i < self->item_count; i++) {
        item_t *item = &self->items [i];
        s_prep_settle (self, item);         //  a batch that failed did not reach it
        if (rc && !item->settled)
            s_item_refuse (item, rc, NULL, NULL);
        if (item->batch_count)
            s_answer_in_batch (self, item);
        else
        if (item->cmd.id == KIM_CMD_PEER_FORWARD)
            s_answer_forward (self, item);
        else
        if (item->cmd.id == KIM_CMD_SEND) {
            if (item->code == 0) {
                //  One receipt per message: reuse a prepared command rather
                //  than clearing a whole kim_cmd_t each time.
                kim_cmd_t *receipt = &self->receipt;
                memcpy (receipt->msg_id, item->cmd.msg.msg_id, sizeof receipt->msg_id);
                receipt->seq = item->seq;
                receipt->dup = item->dup;
                kim_reply_cmd (self, item->rid, item->rid_size, receipt);
                if (item->dup)
                    self->duplicates++;
                else
                    self->receipted++;
            }
            else
                kim_reply_reject (self, item->rid, item->rid_size, item->code, item->cmd.msg.msg_id,
                          item->path [0]? item->path: NULL, "%s", item->text);
        }
        else {
            if (rc == 0) {
                org_state_t *state = item->org;
                kim_server_flights_remove (state, item->cmd.acks, item->cmd.ack_count);
                self->acked += item->cmd.ack_count;
                kim_server_mark_dirty (self, state);
            }
            if (item->code)
                kim_reply_reject (self, item->rid, item->rid_size, item->code, NULL,
                          item->path [0]? item->path: NULL, "%s", item->text);
        }
        if (item->has_payload) {
            zmq_msg_close (&item->payload);
            item->has_payload = false;
        }
        item->prep_ticket = 0;
        item->hash_due = false;
    }
    self->holding = false;
    self->item_count = 0;
}

//  Runs `apply` in a write batch, replaying it while the map grows. Each
//  replay follows a growth that at most doubles towards map_max, so this
//  ends; the bound is a guard, not a policy.
int
kim_batch_run (kim_server_t *self, int (*apply) (kim_server_t *self))
{
    self->ctx.now = kim_server_now (self);
    int rc;
    for (int attempt = 0; (rc = apply (self)) == 1 && attempt < 64; attempt++)
        zsys_notice ("server: store map grew; replaying the batch (%" PRIu64 " bytes of the "
                     "store in use)", kim_store_bytes (self->store));
    if (rc == 1)
        rc = -KIM_E_STORE_FULL;
    if (rc == -KIM_E_STORE_FULL)
        zsys_error ("server: store is full at store/map_max_mb; refusing the batch "
                    "(STORE_FULL)");
    else
    if (rc)
        zsys_error ("server: write batch failed: %s", kim_strerror (rc));
    return rc;
}

//  A turn that read only ACKs commits nothing yet (unless told to): an ACK
//  needs no sync of its own, since one lost to a crash only means the
//  message comes again. Its commit rides with the next turn's SENDs, so a
//  message and the ack of the one before cost one commit, not two; the
//  server's timer bounds the wait (KIM_ACK_DEFER_MS).
static bool
s_defer (kim_server_t *self, bool flush)
{
    if (flush || self->item_count >= self->config->batch_max)
        return false;
    //  An entry the helper decodes is a SEND: its cmd is not read before
    //  the helper is done with it
    for (size_t i = 0; i < self->item_count; i++)
        if (self->items [i].decode_due || self->items [i].cmd.id != KIM_CMD_ACK)
            return false;
    return true;
}

bool
kim_batch_commit (kim_server_t *self, bool flush)
{
    if (self->item_count == 0)
        return false;
    if (s_defer (self, flush))
        return true;
    kim_metrics_observe_batch (&self->batch_commands, self->item_count);
    int rc = kim_batch_run (self, s_apply_batch);
    self->batches++;
    s_finish_batch (self, rc);
    return false;
}

//  Timers of the hooks (deadlines, retention) run in a batch of their own.
int
kim_batch_apply_ticks (kim_server_t *self)
{
    int rc = kim_store_begin (self->store);
    if (rc)
        return rc;
    //  Old msg_ids are forgotten even when no traffic comes to do it.
    if (self->ctx.now - self->last_dedup_expire_ms >= KIM_DEDUP_EXPIRE_MS) {
        rc = kim_store_dedup_expire (self->store, self->ctx.now, 10000);
        self->last_dedup_expire_ms = self->ctx.now;
    }
    for (size_t i = 0; rc == 0 && i < self->hook_count; i++)
        if (self->hooks [i].tick)
            rc = self->hooks [i].tick (self->hooks [i].state, &self->ctx);
    if (rc && rc != -KIM_E_STORE_FULL) {
        s_abort (self);
        return rc;
    }
    return s_commit (self);
}

void
kim_ctx_send (kim_ctx_t *ctx, const uint8_t *rid, size_t rid_size, const kim_cmd_t *cmd)
{
    kim_reply_cmd (ctx->server, rid, rid_size, cmd);
}

static int
s_apply_module_batch (kim_server_t *self)
{
    int rc = kim_store_begin (self->store);
    if (rc)
        return rc;
    rc = self->module_fn (self->module_arg, &self->ctx);
    if (rc && rc != -KIM_E_STORE_FULL) {
        s_abort (self);
        return rc;
    }
    return s_commit (self);
}

int
kim_ctx_batch (kim_ctx_t *ctx, int (*fn) (void *arg, kim_ctx_t *ctx), void *arg)
{
    kim_server_t *self = ctx->server;
    self->module_fn = fn;
    self->module_arg = arg;
    int rc = kim_batch_run (self, s_apply_module_batch);
    self->module_fn = NULL;
    self->module_arg = NULL;
    //  The module answers when this returns: what it wrote is on disk then
    if (rc == 0)
        kim_batch_durable (self, false);
    return self->failed? -KIM_E_STORE_FAILED: rc;
}
