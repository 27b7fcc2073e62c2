/*  kim_server.c — the broker's reactor: sessions, group commit, delivery.

    One thread owns everything: the ROUTER socket, the ZAP socket, the store
    and all session state, so nothing here needs a lock. The loop's turn is:

        read up to batch_max commands -> handle session commands at once,
        gather SEND and ACK into a batch -> one write transaction, one sync
        -> RECEIPTs -> deliveries that the batch made possible.

    A RECEIPT therefore always follows a synced commit. If the store fails,
    the server stops serving: it can no longer promise anything. The write
    batch itself, and what hooks may do inside it, is kim_batch.c; what
    both send to peers is kim_reply.c; how sessions end, kim_session.c; the
    registry re-read on SIGHUP or RELOAD, kim_server_reload.c. This file
    calls them, never the other way round.

    Protocol version 2 (PROTOCOL.md 5.1) changes the frames, not the turn:
    a SEND_BATCH's messages join the same write batch as SENDs, answered by
    one RECEIPT_BATCH after the synced commit, and a version 2 receiver's
    deliveries are packed into DELIVER_BATCH frames.

    Delivery: each organisation has at most one receiving session (the most
    recent HELLO with a window wins). The organisation's state keeps a cursor
    (highest seq handed out) and the deliveries in flight; deliveries read
    the mailbox in seq order, so a recipient sees each referral's messages in
    log order. When the receiving session ends, its deliveries in flight go
    back to the mailbox (cursor reset) and are delivered again, same seq.
*/
#include <czmq.h>
#include <signal.h>
#include <sodium.h>
#include <sys/signalfd.h>

#include "kim_keys.h"
#include "kim_modules.h"
#include "kim_recover.h"
#include "kim_deliver.h"
#include "kim_reply.h"
#include "kim_server_int.h"
#include "kim_session.h"
#include "kim_zap.h"

#define KIM_HOUSEKEEP_MS    200     //  timer for expiry and redelivery checks
#define KIM_STATS_MS        60000   //  how often traffic figures are logged
#define KIM_TURN_MS         50      //  a turn reads this long at most, then commits
#define KIM_LAZY_SYNC_MS    10      //  notices wait this long for a commit to carry them
#define KIM_ACK_DEFER_MS    5       //  ACKs wait this long for SENDs to commit with
#define KIM_US_PER_UNIT     50.0    //  loop time a rate-limit unit pays for (module commands)
#define KIM_TIME_CHARGE_MAX 4.0     //  ... up to this many times the command's own cost
#define KIM_RCVHWM          1000    //  commands waiting unread per connection

//  The broker's clock (kim_server_now, kim_server_int.h). Tests of deadlines
//  set KIM_CLOCK_FILE to a file that holds an offset in ms; it is re-read
//  every housekeeping turn, so a test moves time forward without sleeping.

//  Session liveness, rate limits and redelivery run on real elapsed time,
//  which a test's clock jump must not disturb.
static uint64_t
s_mono (void)
{
    return (uint64_t) zclock_mono ();
}

static void
s_clock_update (kim_server_t *self)
{
    if (!self->clock_file)
        return;
    FILE *file = fopen (self->clock_file, "r");
    long long offset;
    if (file && fscanf (file, "%lld", &offset) == 1 && offset != self->clock_offset_ms) {
        zsys_notice ("server: test clock moves by %lld ms", offset - (long long) self->clock_offset_ms);
        self->clock_offset_ms = offset;
    }
    if (file)
        fclose (file);
}

//  --------------------------------------------------------------------------
//  Sessions

static bool
s_has_version (const kim_cmd_t *cmd, uint32_t version)
{
    for (size_t i = 0; i < cmd->version_count; i++)
        if (cmd->versions [i] == version)
            return true;
    return false;
}

//  `curve_key` is the key the connection was admitted with (kim_zap.c): a
//  reload since may have given its organisation another, and then the
//  connection speaks for nobody (PROTOCOL.md 8.13).
static void
s_hello (kim_server_t *self, const uint8_t *rid, size_t rid_size, const char *key,
         const char *user_id, const char *curve_key, const kim_cmd_t *cmd)
{
    org_state_t *state = user_id? (org_state_t *) zhashx_lookup (self->orgs, user_id): NULL;
    if (!state || state->removed || !curve_key || !streq (curve_key, state->org->public_key)) {
        kim_reply_reject (self, rid, rid_size, KIM_E_UNKNOWN_ORG, NULL, NULL,
                  "the connection's key belongs to no registered organisation");
        return;
    }
    //  A second HELLO on a connection ends its session, whatever follows:
    //  without a common version the connection is left with none.
    session_t *session = (session_t *) zhashx_lookup (self->sessions, key);
    if (session)
        kim_session_end (self, session, "new HELLO");
    //  The highest version both speak (PROTOCOL.md 8.1).
    uint32_t version = 0;
    for (uint32_t v = KIM_PROTOCOL_VERSION; v <= KIM_PROTOCOL_MAX; v++)
        if (s_has_version (cmd, v))
            version = v;
    if (!version) {
        kim_reply_reject (self, rid, rid_size, KIM_E_VERSION, NULL, "versions",
                  "this broker speaks protocol versions %d to %d", KIM_PROTOCOL_VERSION,
                  KIM_PROTOCOL_MAX);
        return;
    }
    //  At its limit an organisation's oldest session makes room (section 7.2).
    if (state->session_count >= self->config->org_sessions)
        kim_session_end_oldest (self, state);

    session = (session_t *) calloc (1, sizeof (session_t));
    if (!session) {
        kim_reply_reject (self, rid, rid_size, KIM_E_BUSY, NULL, NULL, "out of memory");
        return;
    }
    kim_str_copy (session->key, sizeof session->key, key);
    memcpy (session->rid, rid, rid_size);
    session->rid_size = rid_size;
    session->org = state;
    session->version = version;
    session->window = cmd->window < self->config->window_max? cmd->window: self->config->window_max;
    //  Only agencies have mailboxes: auditors read the log, operators
    //  never see payloads.
    if (state->org->role != KIM_ROLE_AGENCY)
        session->window = 0;
    session->last_seen_ms = s_mono ();
    session->opened = ++self->sessions_opened;
    kim_str_copy (session->agent, sizeof session->agent, cmd->agent);
    zhashx_insert (self->sessions, key, session);
    state->session_count++;

    if (session->window > 0) {
        if (state->receiver)
            zsys_info ("server: %s: a new session takes over deliveries", state->org->id);
        //  ACKs of the old receiver's deliveries read but waiting for
        //  company are committed in this turn, before the new session is
        //  given what they acknowledge (as when a session ends)
        self->flush_acks = true;
        kim_session_release_receiver (state);
        state->receiver = session;
        kim_server_mark_dirty (self, state);
    }
    kim_cmd_t *reply = &self->reply;
    kim_cmd_init (reply, KIM_CMD_WELCOME);
    reply->version = version;
    kim_str_copy (reply->org, sizeof reply->org, state->org->id);
    kim_str_copy (reply->broker, sizeof reply->broker, self->config->name);
    reply->heartbeat_ms = self->config->heartbeat_ms;
    reply->max_payload = self->config->max_payload;
    reply->window = session->window;
    kim_reply_cmd (self, rid, rid_size, reply);
    zsys_info ("server: %s connected (%s, protocol %u, window %u)", state->org->id,
               session->agent [0]? session->agent: "no agent name", version, session->window);
}

//  The links to other districts' brokers, one JSON line each, for an
//  operator's STATUS (PROTOCOL.md 8.9): names and counts, never content.
static void
s_status_links (kim_server_t *self, kim_buf_t *body)
{
    for (size_t i = 0; i < self->hook_count; i++) {
        if (!self->hooks [i].link_at)
            continue;
        kim_link_info_t info;
        for (size_t index = 0; self->hooks [i].link_at (self->hooks [i].state, index, &info);
             index++) {
            char line [256];
            int size = snprintf (line, sizeof line, "{\"peer\":\"%s\",\"up\":%s,\"since_ms\":%"
                                 PRIu64 ",\"queued\":%" PRIu64 ",\"in_flight\":%" PRIu64
                                 ",\"remote_orgs\":%" PRIu64 "}\n", info.peer,
                                 info.up? "true": "false", info.since_ms, info.queued,
                                 info.in_flight, info.remote_orgs);
            //  KIM_PEERS_MAX lines of at most 256 bytes fit the frame
            if (size > 0 && (size_t) size < sizeof line)
                kim_buf_append (body, line, (size_t) size);
        }
    }
}

static void
s_status (kim_server_t *self, session_t *session)
{
    kim_cmd_t *reply = &self->reply;
    kim_cmd_init (reply, KIM_CMD_STATUS_REPLY);
    org_state_t *state = session->org;
    reply->status.log_head = kim_store_head (self->store);
    reply->status.mailbox = kim_store_mailbox_count (self->store, state->org->id);
    reply->status.in_flight = state->flight_count;
    reply->status.sessions = state->session_count;
    reply->status.uptime_ms = s_mono () - self->started_ms;
    reply->status.store_bytes = kim_store_bytes (self->store);
    kim_buf_t body;
    kim_buf_init (&body);
    if (state->org->role == KIM_ROLE_OPERATOR)
        s_status_links (self, &body);
    if (body.size) {
        reply->body = body.data;
        reply->body_size = body.size;
    }
    kim_reply_cmd (self, session->rid, session->rid_size, reply);
    kim_buf_free (&body);
}

//  --------------------------------------------------------------------------
//  Reading commands

static bool
s_recv_part (void *router, zmq_msg_t *msg)
{
    zmq_msg_init (msg);
    return zmq_msg_recv (msg, router, 0) != -1;
}

//  What a command costs against the rate limit, in units of a PING: a
//  command that writes and syncs on its own (outside the SEND batch), logs
//  a line or reads more than one record costs more, so that a flood of dear
//  commands is cut off as early as a flood of cheap ones. A frame that does
//  not decode costs 1 (its REJECT is cheap). PROTOCOL.md section 7.3 lists
//  these.
static double
s_cost (int rc, const kim_cmd_t *cmd)
{
    if (rc)
        return 1;
    switch (cmd->id) {
        case KIM_CMD_HELLO:             return 5;      //  a session, a log line
        case KIM_CMD_QUERY:                            //  an audit record, synced,
            return 20 + cmd->window / 32;              //  and the records it grants
        case KIM_CMD_REFERRAL_QUERY:    return 20;     //  reads referral records
        case KIM_CMD_SUBSCRIBE:         return 20;     //  a synced write
        case KIM_CMD_UNSUBSCRIBE:       return 20;
        case KIM_CMD_RELOAD:            return 100;    //  reads the config file
        case KIM_CMD_DIRECTORY:         return 5;      //  the whole registry
        case KIM_CMD_STATUS:            return 2;
        default:                        return 1;      //  SEND, ACK, PING, BYE, ...
    }
}

//  Token bucket per organisation, shared by all its connections: a flooding
//  organisation gets RATE_LIMITED answers while the others keep their share
//  of the loop, however many sessions it opens.
static bool
s_rate_ok (kim_server_t *self, org_state_t *state, double cost)
{
    uint64_t now = s_mono ();
    double burst = (double) self->config->rate_burst;
    if (now > state->refilled_ms) {
        state->tokens += (double) (now - state->refilled_ms) * (double) self->config->rate_limit / 1000.0;
        if (state->tokens > burst)
            state->tokens = burst;
        state->refilled_ms = now;
    }
    //  A burst smaller than a command's cost must not lock it out for good.
    if (cost > burst)
        cost = burst;
    if (state->tokens < cost)
        return false;
    state->tokens -= cost;
    return true;
}

//  A revoked key that keeps connecting is refused each time; the log says
//  so once a minute per organisation, so that an operator looking for
//  REVOKED finds which agency still tries, without a line per attempt.
static void
s_log_revoked (kim_server_t *self, org_state_t *state)
{
    uint64_t now = s_mono ();
    if (state->revoked_logged_ms && now - state->revoked_logged_ms < 60000)
        return;
    state->revoked_logged_ms = now;
    zsys_warning ("server: %s connects with its revoked key: refused (REVOKED)",
                  state->org->id);
}

static int
s_signal_ready (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    kim_server_t *self = (kim_server_t *) arg;
    struct signalfd_siginfo info;
    if (read (self->signal_fd, &info, sizeof info) != (ssize_t) sizeof info)
        return 0;
    char summary [KIM_TEXT_MAX + 1];
    zsys_notice ("SIGHUP: reloading the registry");
    if (kim_server_reload (self, summary, sizeof summary))
        zsys_error ("reload refused, the registry is unchanged: %s", summary);
    return 0;
}

//  The id a client matches a command's REJECT by (section 7.1), or NULL.
static const char *
s_cmd_ref (const kim_cmd_t *cmd)
{
    switch (cmd->id) {
        case KIM_CMD_SEND:              return cmd->msg.msg_id;
        case KIM_CMD_QUERY:
        case KIM_CMD_REFERRAL_QUERY:    return cmd->query_id [0]? cmd->query_id: NULL;
        case KIM_CMD_SUBSCRIBE:
        case KIM_CMD_UNSUBSCRIBE:       return cmd->sub_id [0]? cmd->sub_id: NULL;
        default:                        return NULL;
    }
}

//  Whether the organisation may store the subscription `sub_id`: one it
//  has already is replaced, a new one must fit under subscriptions_per_org.
//  Reads the organisation's own subscriptions only (org NUL name keys), at
//  most the limit's worth. Fails open on a store error: the write that
//  follows reports it.
static bool
s_subscription_fits (kim_server_t *self, const char *org, const char *sub_id)
{
    if (kim_store_begin (self->store))
        return true;
    MDB_txn *txn = kim_store_txn (self->store);
    MDB_dbi dbi = kim_store_dbi (self->store, KIM_DB_SUB);
    size_t org_size = strlen (org) + 1, id_size = strlen (sub_id);
    char name [KIM_ORG_MAX + 1 + KIM_ID_MAX];
    bool fits = org_size + id_size > sizeof name;       //  the decoder bounds both
    if (!fits) {
        memcpy (name, org, org_size);
        memcpy (name + org_size, sub_id, id_size);
        MDB_val key = { org_size + id_size, name }, value;
        fits = mdb_get (txn, dbi, &key, &value) == 0;
    }
    MDB_cursor *cursor = NULL;
    if (!fits && mdb_cursor_open (txn, dbi, &cursor) == 0) {
        uint64_t count = 0;
        MDB_val key = { org_size, (void *) org }, value;
        int rc = mdb_cursor_get (cursor, &key, &value, MDB_SET_RANGE);
        while (rc == 0 && key.mv_size >= org_size && memcmp (key.mv_data, org, org_size) == 0
        &&     count < self->config->org_subscriptions) {
            count++;
            rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT);
        }
        fits = count < self->config->org_subscriptions;
        mdb_cursor_close (cursor);
    }
    else
    if (!fits)
        fits = true;                //  fail open: the write that follows reports it
    kim_store_abort (self->store);
    return fits;
}

//  Commands the core does not serve go to the modules, in order.
static void
s_module_command (kim_server_t *self, session_t *session, const kim_cmd_t *cmd)
{
    kim_peer_t peer = { session->org->org, session->rid, session->rid_size };
    const char *ref = s_cmd_ref (cmd);
    if (cmd->id == KIM_CMD_SUBSCRIBE && session->org->org->role == KIM_ROLE_AGENCY
    &&  !s_subscription_fits (self, session->org->org->id, cmd->sub_id)) {
        kim_reply_reject (self, session->rid, session->rid_size, KIM_E_ORG_LIMIT, ref, NULL,
                  "%s holds %" PRIu64 " subscriptions, its limit; unsubscribe one first",
                  session->org->org->id, self->config->org_subscriptions);
        return;
    }
    unsigned direction = 0;
#define KIM_X_DIR(name, wire, num, dir) if (cmd->id == KIM_CMD_##name) direction = dir;
    KIM_CMDS (KIM_X_DIR)
#undef KIM_X_DIR
    if (direction == KIM_CMD_TO_BROKER) {
        //  A module reads the committed state and answers at once: what it
        //  may tell is on disk first, and earlier answers go out before.
        kim_batch_durable (self, false);
        self->ctx.now = kim_server_now (self);
        for (size_t i = 0; i < self->hook_count; i++) {
            kim_hook_t *hook = &self->hooks [i];
            if (!hook->command)
                continue;
            kim_verdict_t verdict = { 0, "", "", "" };
            int rc = hook->command (hook->state, &self->ctx, &peer, cmd, &verdict);
            if (rc == -KIM_E_UNKNOWN_CMD)
                continue;
            if (rc)
                kim_reply_reject (self, session->rid, session->rid_size, verdict.code? verdict.code: rc,
                          ref, verdict.path [0]? verdict.path: NULL, "%s",
                          verdict.text [0]? verdict.text: kim_strerror (rc));
            //  What the command wrote may be deliverable now.
            kim_deliver_dirty (self, s_mono ());
            return;
        }
    }
    kim_reply_reject (self, session->rid, session->rid_size, KIM_E_UNKNOWN_CMD, ref, "cmd",
              direction == KIM_CMD_TO_BROKER
              ? "%s is not served by this broker version"
              : "%s is sent by the broker, not to it", kim_cmd_name (cmd->id));
}

//  An ACK may name only deliveries of this session (section 8.7): a seq in
//  flight on another session of the organisation is refused with BAD_ACK
//  and dropped from the list, the rest still count. The first such entry
//  is kept on the item, whose one REJECT comes after the commit (the apply
//  may refuse an earlier entry, section 7.1); with none left, at once.
//  Returns whether any entry is left to commit.
static bool
s_ack_filter (kim_server_t *self, session_t *session, item_t *item)
{
    org_state_t *state = session->org;
    kim_cmd_t *cmd = &item->cmd;
    item->refused_at = 0;
    if (state->receiver == session || !state->receiver)
        return cmd->ack_count > 0;
    size_t kept = 0;
    for (size_t i = 0; i < cmd->ack_count; i++) {
        if (kim_server_flight_find (state, cmd->acks [i]) < 0)
            cmd->acks [kept++] = cmd->acks [i];
        else
        if (!item->refused_at) {
            item->refused_at = (uint32_t) i + 1;
            item->refused_seq = cmd->acks [i];
        }
    }
    cmd->ack_count = kept;
    if (kept == 0 && item->refused_at) {
        char path [KIM_PATH_MAX + 1];
        snprintf (path, sizeof path, "seqs[%u]", item->refused_at - 1);
        kim_reply_reject (self, session->rid, session->rid_size, KIM_E_BAD_ACK, NULL, path,
                  "seq %" PRIu64 " is in flight on another session of %s; that session "
                  "acknowledges it", item->refused_seq, state->org->id);
    }
    return kept > 0;
}

//  An ACK_RANGE acknowledges the deliveries in flight on this session that
//  lie in its ranges (section 8.19). It is queued as ACK items of at most
//  KIM_ACKS_MAX seqs each, starting in `item`; a window holds few enough
//  that they fit the spare item slots.
static void
s_ack_ranges (kim_server_t *self, session_t *session, item_t *item, const uint8_t *rid,
              size_t rid_size)
{
    org_state_t *state = session->org;
    const kim_cmd_t *ranges = &item->cmd;       //  read while acks fill: other fields
    item_t *slot = NULL;
    size_t used = 0;
    bool refused = false;
    for (size_t r = 0; r + 1 < ranges->range_count; r += 2) {
        uint64_t from = ranges->ranges [r], to = ranges->ranges [r + 1];
        size_t found = 0;
        for (size_t i = state->receiver == session? kim_server_flight_lower (state, from): state->flight_count;
             i < state->flight_count && state->flights [i].seq <= to; i++, found++) {
            if (!slot || slot->cmd.ack_count == KIM_ACKS_MAX) {
                slot = &self->items [self->item_count + used++];
                slot->cmd.id = KIM_CMD_ACK;
                slot->cmd.ack_count = 0;
            }
            slot->cmd.acks [slot->cmd.ack_count++] = state->flights [i].seq;
        }
        if (found == 0 && !refused) {
            char path [KIM_PATH_MAX + 1];
            snprintf (path, sizeof path, "ranges[%zu]", r);
            kim_reply_reject (self, rid, rid_size, KIM_E_BAD_ACK, NULL, path,
                      "no delivery in flight on this session lies in %" PRIu64 "..%" PRIu64,
                      from, to);
            refused = true;
        }
    }
    for (size_t i = 0; i < used; i++) {
        slot = &self->items [self->item_count + i];
        memcpy (slot->rid, rid, rid_size);
        slot->rid_size = rid_size;
        slot->org = state;
        slot->has_payload = false;
        slot->batch_count = 0;
        slot->settled = false;
        slot->from_range = true;
        slot->refused_at = 0;
        slot->forwarded = false;
        slot->prep_ticket = 0;
        slot->decode_due = false;
    }
    self->item_count += used;
}

static bool
s_takes_payload (const kim_cmd_t *cmd)
{
    return cmd->id == KIM_CMD_SEND || cmd->id == KIM_CMD_PEER_FORWARD;
}

//  A peer broker forwards a message (PROTOCOL.md 16.4). Its key vouches
//  for its own organisations only: the header's sender must be homed at
//  this peer by the peer's signed directory, or be the peer itself (a
//  DELIVERED or HANDED_OVER it made). Returns whether the message goes into the batch;
//  a refusal is answered with PEER_REFUSED so the peer stops sending it.
static bool
s_forward_accept (kim_server_t *self, session_t *session, item_t *item, const uint8_t *rid,
                  size_t rid_size, size_t payload_size)
{
    const kim_cmd_t *cmd = &item->cmd;
    const kim_org_t *peer = session->org->org;
    kim_org_t *sender = &item->remote_sender;
    char home [KIM_ORG_MAX + 1] = "";
    int code = 0;
    const char *path = "hdr.sender", *text = NULL;
    if (streq (cmd->msg.sender, peer->id)) {
        if (kim_type_flags (cmd->msg.type) & KIM_MSG_FROM_AGENCY) {
            code = KIM_E_SENDER_MISMATCH;
            text = "a broker sends only broker-made messages in its own name";
        }
        else
        //  Its other notices (REMINDER, EXPIRED...) are for its own offices
        if (cmd->msg.type != KIM_TYPE_DELIVERED && cmd->msg.type != KIM_TYPE_HANDED_OVER) {
            code = KIM_E_FORBIDDEN;
            path = "hdr.type";
            text = "a broker passes on only DELIVERED and HANDED_OVER of its own";
        }
        *sender = *peer;
        //  Its notices are unsigned; the link's key vouches for them.
        sender->sign_key [0] = 0;
    }
    else {
        bool known = false;
        for (size_t i = 0; i < self->hook_count && !known; i++)
            if (self->hooks [i].remote)
                known = self->hooks [i].remote (self->hooks [i].state, cmd->msg.sender, sender,
                                                home);
        if (!known || !streq (home, peer->id)) {
            code = KIM_E_SENDER_MISMATCH;
            text = known? "the sender is homed at another broker: a peer forwards its own "
                          "organisations' messages only"
                        : "the sender is in no directory this peer published";
        }
        else
        if (!(kim_type_flags (cmd->msg.type) & KIM_MSG_FROM_AGENCY)) {
            code = KIM_E_FORBIDDEN;
            path = "hdr.type";
            text = "broker-made messages come from the broker itself";
        }
    }
    if (!code && payload_size > self->config->max_payload) {
        code = KIM_E_TOO_LARGE;
        path = "payload";
        text = "payload exceeds max_payload";
    }
    if (!code)
        return true;
    kim_cmd_t *reply = &self->reply;
    kim_cmd_init (reply, KIM_CMD_PEER_REFUSED);
    reply->seq = cmd->seq;
    reply->code = code;
    kim_str_copy (reply->path, sizeof reply->path, path);
    kim_str_copy (reply->text, sizeof reply->text, text);
    zsys_warning ("link: %s forwarded %s claiming sender %s: refused (%s)", peer->id,
                  cmd->msg.msg_id, cmd->msg.sender, text);
    kim_reply_cmd (self, rid, rid_size, reply);
    return false;
}

//  Reads a version 2 batch frame (section 5.1). Only SEND_BATCH comes from
//  clients: its messages become items of the open write batch, each with
//  its place in the batch, answered together in one RECEIPT_BATCH after the
//  commit (kim_batch.c). The payloads stay where they lie in the frame:
//  every item holds a reference to it, and the store copies them once.
static void
s_read_batch (kim_server_t *self, const uint8_t *rid, size_t rid_size, const char *key,
              const char *user_id, zmq_msg_t *frame, int frames)
{
    const uint8_t *data = (const uint8_t *) zmq_msg_data (frame);
    size_t size = zmq_msg_size (frame);
    kim_cmd_t *head = &self->batch_head;
    kim_entry_t entries [KIM_BATCH_MAX];
    kim_decode_error_t error = { 0, "" };
    int rc = size > (size_t) self->config->max_payload + KIM_FRAME_MAX
        ? -KIM_E_TOO_LARGE
        : kim_batch_split (head, data, size, entries, &error);
    size_t count = rc == 0? head->count: 0;

    session_t *session = (session_t *) zhashx_lookup (self->sessions, key);
    org_state_t *payer = session? session->org
                       : user_id? (org_state_t *) zhashx_lookup (self->orgs, user_id): NULL;
    if (session)
        session->last_seen_ms = s_mono ();
    //  One unit per message, as for as many SENDs (section 7.3).
    bool paid = !payer || s_rate_ok (self, payer, count? (double) count: 1);
    if (!paid && !count)
        kim_reply_reject (self, rid, rid_size, KIM_E_RATE_LIMITED, NULL, NULL,
                  "%s sends more than %" PRIu64 " command units/s over all its connections; "
                  "slow down", payer->org->id, self->config->rate_limit);
    else
    if (rc)
        kim_reply_reject (self, rid, rid_size, rc, NULL, error.path [0]? error.path: NULL,
                  "%s%s%s", kim_strerror (rc), error.path [0]? " at ": "", error.path);
    else
    if (payer && payer->org->revoked) {
        s_log_revoked (self, payer);
        kim_reply_reject (self, rid, rid_size, KIM_E_REVOKED, NULL, NULL,
                  "the key of %s is revoked", payer->org->id);
    }
    else
    if (frames > 1)
        kim_reply_reject (self, rid, rid_size, KIM_E_BAD_FRAMES, NULL, NULL,
                  "%s takes one frame, got %d", kim_cmd_name (head->id), frames);
    else
    if (!session)
        kim_reply_reject (self, rid, rid_size, KIM_E_NO_SESSION, NULL, NULL,
                  "send HELLO first (the broker may have restarted)");
    else
    if (!user_id || strcmp (user_id, session->org->org->id) != 0)
        kim_reply_reject (self, rid, rid_size, KIM_E_SENDER_MISMATCH, NULL, NULL,
                  "connection identity changed");
    else
    if (head->id != KIM_CMD_SEND_BATCH)
        kim_reply_reject (self, rid, rid_size, KIM_E_UNKNOWN_CMD, NULL, "cmd",
                  "%s is sent by the broker, not to it", kim_cmd_name (head->id));
    else
    if (session->version < 2)
        kim_reply_reject (self, rid, rid_size, KIM_E_UNKNOWN_CMD, NULL, "cmd",
                  "SEND_BATCH is a command of protocol version 2; this session speaks "
                  "version %u", session->version);
    else
        for (size_t i = 0; i < count; i++) {
            item_t *item = &self->items [self->item_count++];
            memcpy (item->rid, rid, rid_size);
            item->rid_size = rid_size;
            item->org = session->org;
            item->batch_index = (uint8_t) i;
            item->batch_count = (uint8_t) count;
            item->settled = true;
            item->from_range = false;
            item->forwarded = false;
            item->has_payload = false;
            item->prep_ticket = 0;
            item->decode_due = false;
            item->seq = 0;
            item->dup = false;
            int code = 0;
            if (!paid) {
                code = KIM_E_RATE_LIMITED;
                snprintf (item->text, sizeof item->text, "%s sends more than %" PRIu64
                          " command units/s over all its connections; slow down",
                          payer->org->id, self->config->rate_limit);
            }
            if (code == 0) {
                //  Decoded by the helper thread while the turn is read on,
                //  then checked as it would have been here (section 8.3)
                //  before the entry is applied (kim_batch.c)
                zmq_msg_init (&item->payload);
                if (zmq_msg_copy (&item->payload, frame) == 0) {
                    item->has_payload = true;
                    item->payload_offset = (size_t) (entries [i].payload - data);
                    item->payload_size = entries [i].payload_size;
                    item->settled = false;
                    item->entry = entries [i];
                    item->decode_due = true;
                    kim_batch_prep_post (self, item);
                    continue;
                }
                zmq_msg_close (&item->payload);
                code = KIM_E_BUSY;
                snprintf (item->text, sizeof item->text, "%s", kim_strerror (code));
            }
            item->code = code;
            item->path [0] = 0;
            //  The id the refusal carries, also from an entry that did not
            //  decode (section 7.1)
            kim_cmd_ref (entries [i].cmd, entries [i].cmd_size, item->ref);
        }
}

//  Reads one [rid][frame 0][payload] message and handles or queues it.
//  Returns false when the socket has nothing more to read.
static bool
s_read_one (kim_server_t *self)
{
    void *router = zsock_resolve (self->router);
    zmq_msg_t rid_msg, frame;
    zmq_msg_init (&rid_msg);
    if (zmq_msg_recv (&rid_msg, router, ZMQ_DONTWAIT) == -1) {
        zmq_msg_close (&rid_msg);
        return false;
    }
    uint8_t rid [KIM_RID_MAX];
    size_t rid_size = zmq_msg_size (&rid_msg);
    bool rid_ok = rid_size > 0 && rid_size <= KIM_RID_MAX && zmq_msg_more (&rid_msg);
    if (rid_ok)
        memcpy (rid, zmq_msg_data (&rid_msg), rid_size);
    bool more = zmq_msg_more (&rid_msg);
    zmq_msg_close (&rid_msg);
    if (!rid_ok) {
        //  Drain whatever belongs to this message; nobody to answer.
        while (more && s_recv_part (router, &frame)) {
            more = zmq_msg_more (&frame);
            zmq_msg_close (&frame);
        }
        return true;
    }
    if (!s_recv_part (router, &frame)) {
        zmq_msg_close (&frame);
        return true;
    }
    item_t *item = &self->items [self->item_count];
    bool has_payload = false;
    int frames = 1;
    if (zmq_msg_more (&frame)) {
        has_payload = s_recv_part (router, &item->payload);
        frames++;
        more = has_payload && zmq_msg_more (&item->payload);
        while (more) {
            zmq_msg_t extra;
            if (!s_recv_part (router, &extra))
                break;
            more = zmq_msg_more (&extra);
            zmq_msg_close (&extra);
            frames++;
        }
    }
    char key [2 * KIM_RID_MAX + 1];
    sodium_bin2hex (key, sizeof key, rid, rid_size);
    //  The User-Id (set by our ZAP handler) lives in the frame's metadata,
    //  which dies with the frame: copy it.
    const char *meta_user_id = zmq_msg_gets (&frame, "User-Id");
    char user_id_copy [KIM_ORG_MAX + 1] = "";
    if (meta_user_id)
        kim_str_copy (user_id_copy, sizeof user_id_copy, meta_user_id);
    const char *user_id = meta_user_id? user_id_copy: NULL;

    if (kim_cmd_is_batch (kim_cmd_peek ((const uint8_t *) zmq_msg_data (&frame),
                                        zmq_msg_size (&frame)))) {
        if (has_payload)
            zmq_msg_close (&item->payload);
        s_read_batch (self, rid, rid_size, key, user_id, &frame, frames);
        zmq_msg_close (&frame);
        return true;
    }
    kim_cmd_t *cmd = &item->cmd;
    kim_decode_error_t error = { 0, "" };
    int rc = zmq_msg_size (&frame) > KIM_FRAME_MAX
        ? -KIM_E_TOO_LARGE
        : kim_cmd_decode (cmd, (const uint8_t *) zmq_msg_data (&frame), zmq_msg_size (&frame), &error);
    //  A command that does not decode may still name itself (section 7.1).
    char ref [KIM_ID_MAX + 1] = "";
    if (rc && rc != -KIM_E_TOO_LARGE)
        kim_cmd_ref ((const uint8_t *) zmq_msg_data (&frame), zmq_msg_size (&frame), ref);
    //  The frame stays open until the command is served: a PEER_DIRECTORY's
    //  entries are read where they lie in it (kim_cmd_t.dir_raw).
    bool queued = false;

    session_t *session = (session_t *) zhashx_lookup (self->sessions, key);
    const char *msg_id = rc == 0? s_cmd_ref (cmd): ref [0]? ref: NULL;
    //  Every frame from a connection counts against its organisation's
    //  budget, decoded or not, in a session or not: CURVE named the
    //  organisation before the first frame.
    org_state_t *payer = session? session->org
                       : user_id? (org_state_t *) zhashx_lookup (self->orgs, user_id): NULL;
    if (session)
        session->last_seen_ms = s_mono ();
    if (payer && !s_rate_ok (self, payer, s_cost (rc, cmd)))
        kim_reply_reject (self, rid, rid_size, KIM_E_RATE_LIMITED, msg_id, NULL,
                  "%s sends more than %" PRIu64 " command units/s over all its connections; "
                  "slow down", payer->org->id, self->config->rate_limit);
    else
    if (rc)
        kim_reply_reject (self, rid, rid_size, rc, msg_id, error.path [0]? error.path: NULL,
                  "%s%s%s", kim_strerror (rc), error.path [0]? " at ": "", error.path);
    else
    if (payer && payer->org->revoked) {
        //  ZAP admits revoked keys only so that they hear this.
        s_log_revoked (self, payer);
        kim_reply_reject (self, rid, rid_size, KIM_E_REVOKED, msg_id, NULL,
                  "the key of %s is revoked", payer->org->id);
    }
    else
    if (frames > (s_takes_payload (cmd)? 2: 1))
        kim_reply_reject (self, rid, rid_size, KIM_E_BAD_FRAMES, msg_id, NULL,
                  "%s takes %s frame%s, got %d", kim_cmd_name (cmd->id),
                  s_takes_payload (cmd)? "one or two": "one",
                  s_takes_payload (cmd)? "s": "", frames);
    else
    if (cmd->id == KIM_CMD_HELLO)
        s_hello (self, rid, rid_size, key, user_id, zmq_msg_gets (&frame, KIM_ZAP_KEY), cmd);
    else
    if (!session)
        kim_reply_reject (self, rid, rid_size, KIM_E_NO_SESSION, msg_id, NULL,
                  "send HELLO first (the broker may have restarted)");
    else
    if (!user_id || strcmp (user_id, session->org->org->id) != 0)
        //  Cannot happen with libzmq's per-connection routing ids; refuse
        //  loudly if it ever does rather than act for the wrong org.
        kim_reply_reject (self, rid, rid_size, KIM_E_SENDER_MISMATCH, msg_id, NULL,
                  "connection identity changed");
    else
    if ((session->org->org->role == KIM_ROLE_PEER) != kim_cmd_is_peer (cmd->id)
    &&  cmd->id != KIM_CMD_PING && cmd->id != KIM_CMD_BYE)
        //  A link carries federation commands only, and only a link may
        //  carry them (PROTOCOL.md 16.2).
        kim_reply_reject (self, rid, rid_size, KIM_E_FORBIDDEN, msg_id, "cmd",
                  session->org->org->role == KIM_ROLE_PEER
                  ? "a peer broker may send HELLO, PING, BYE and the PEER_ commands only"
                  : "%s is a command between brokers; role %s may not send it",
                  kim_cmd_name (cmd->id), kim_role_name (session->org->org->role));
    else {
        switch (cmd->id) {
            case KIM_CMD_PEER_FORWARD:
                queued = s_forward_accept (self, session, item, rid, rid_size,
                                           has_payload? zmq_msg_size (&item->payload): 0);
                break;
            case KIM_CMD_SEND: {
                const char *path;
                char text [KIM_TEXT_MAX + 1];
                int code = kim_batch_send_check (self, session->org, cmd,
                                                 has_payload? zmq_msg_size (&item->payload): 0,
                                                 &path, text, sizeof text);
                if (code)
                    kim_reply_reject (self, rid, rid_size, code, msg_id, path, "%s", text);
                else
                    queued = true;
                break;
            }
            case KIM_CMD_ACK_RANGE:
                if (session->version < 2)
                    kim_reply_reject (self, rid, rid_size, KIM_E_UNKNOWN_CMD, NULL, "cmd",
                              "ACK_RANGE is a command of protocol version 2; this session "
                              "speaks version %u", session->version);
                else
                if (session->org->org->role != KIM_ROLE_AGENCY)
                    kim_reply_reject (self, rid, rid_size, KIM_E_FORBIDDEN, NULL, "cmd",
                              "role %s receives no deliveries and acknowledges none",
                              kim_role_name (session->org->org->role));
                else
                    s_ack_ranges (self, session, item, rid, rid_size);
                break;
            case KIM_CMD_ACK:
                if (session->org->org->role != KIM_ROLE_AGENCY)
                    kim_reply_reject (self, rid, rid_size, KIM_E_FORBIDDEN, NULL, "cmd",
                              "role %s receives no deliveries and acknowledges none",
                              kim_role_name (session->org->org->role));
                else
                    queued = s_ack_filter (self, session, item);
                break;
            case KIM_CMD_PING: {
                kim_cmd_t *reply = &self->reply;
                kim_cmd_init (reply, KIM_CMD_PONG);
                kim_reply_cmd (self, rid, rid_size, reply);
                break;
            }
            case KIM_CMD_STATUS:
                s_status (self, session);
                break;
            case KIM_CMD_BYE:
                kim_session_end (self, session, "BYE");
                break;
            case KIM_CMD_RELOAD:
                if (session->org->org->role != KIM_ROLE_OPERATOR)
                    kim_reply_reject (self, rid, rid_size, KIM_E_FORBIDDEN, NULL, "cmd",
                              "only an operator may reload the registry");
                else
                    kim_server_reload_command (self, rid, rid_size, session->org->org->id);
                break;
            default: {
                //  A module's command is charged what it really took too:
                //  a dear lookup must not pass for a cheap one (section
                //  7.3). The debt may take the bucket below zero; the
                //  organisation then waits. The cap keeps a cheap command
                //  that met a busy machine (another process, a slow sync)
                //  from eating a whole burst.
                int64_t started = zclock_usecs ();
                s_module_command (self, session, cmd);
                double took = (double) (zclock_usecs () - started) / KIM_US_PER_UNIT;
                double paid = s_cost (0, cmd);
                if (took > KIM_TIME_CHARGE_MAX * paid)
                    took = KIM_TIME_CHARGE_MAX * paid;
                if (took > paid)
                    session->org->tokens -= took - paid;
            }
        }
    }
    if (queued) {
        memcpy (item->rid, rid, rid_size);
        item->rid_size = rid_size;
        item->org = session->org;
        item->has_payload = has_payload;
        item->payload_offset = 0;
        item->payload_size = has_payload? zmq_msg_size (&item->payload): 0;
        item->batch_count = 0;
        item->settled = false;
        item->from_range = false;
        item->forwarded = cmd->id == KIM_CMD_PEER_FORWARD;
        item->decode_due = false;
        kim_batch_prep_post (self, item);
        self->item_count++;
    }
    else
    if (has_payload)
        zmq_msg_close (&item->payload);
    zmq_msg_close (&frame);
    return true;
}

static int
s_lazy_sync (zloop_t *loop, int timer_id, void *arg)
{
    kim_server_t *self = (kim_server_t *) arg;
    self->lazy_timer = 0;
    kim_batch_durable (self, false);
    kim_deliver_dirty (self, s_mono ());
    return self->failed? -1: 0;
}

//  After a turn: answers wait for a sync unless more commands are already
//  waiting, whose commit makes this one durable with the same flush (but
//  a turn at most). Anything else committed (the notices an ACK makes, mail
//  for a link) waits for the next commit or KIM_LAZY_SYNC_MS.
static void
s_durable (kim_server_t *self)
{
    bool waiting = (zsock_events (self->router) & ZMQ_POLLIN) != 0;
    if (kim_batch_answers_held (self)
    &&  (!waiting || (uint64_t) zclock_mono () - self->held_ms >= KIM_TURN_MS))
        kim_batch_durable (self, false);
    else
        kim_batch_durable (self, true);
    if (!self->lazy_timer
    &&  (self->held.size || self->held_orgs || !kim_store_synced (self->store))) {
        int id = zloop_timer (self->loop, KIM_LAZY_SYNC_MS, 1, s_lazy_sync, self);
        self->lazy_timer = id > 0? id: 0;
    }
}

static void
    s_commit_turn (kim_server_t *self, bool flush);

static int
s_ack_flush (zloop_t *loop, int timer_id, void *arg)
{
    kim_server_t *self = (kim_server_t *) arg;
    self->ack_timer = 0;
    s_commit_turn (self, true);
    return self->failed? -1: 0;
}

//  Commits what the turn read (ACKs alone may wait, see kim_batch_commit),
//  then lets out what is durable and delivers.
static void
s_commit_turn (kim_server_t *self, bool flush)
{
    bool waits = kim_batch_commit (self, flush || self->flush_acks);
    self->flush_acks = false;
    if (waits && !self->ack_timer) {
        int id = zloop_timer (self->loop, KIM_ACK_DEFER_MS, 1, s_ack_flush, self);
        self->ack_timer = id > 0? id: 0;
        if (!self->ack_timer)
            kim_batch_commit (self, true);
    }
    s_durable (self);
    kim_deliver_dirty (self, s_mono ());
}

static int
s_router_ready (zloop_t *loop, zsock_t *reader, void *arg)
{
    kim_server_t *self = (kim_server_t *) arg;
    //  Read what is waiting, up to a batch, then commit it as one.
    //  A turn is bounded in time too: what was read is committed and
    //  answered within about KIM_TURN_MS, however much a flood leaves
    //  waiting, so that every agent's command waits one short turn at most.
    size_t read = 0;
    bool more = true;
    uint64_t started = s_mono ();
    while (self->item_count < self->config->batch_max && read < 4 * self->config->batch_max
    &&     (read % 64 || s_mono () - started < KIM_TURN_MS)
    &&     (more = s_read_one (self)))
        read++;
    if (!more)
        self->drained_ms = s_mono ();
    s_commit_turn (self, false);
    return self->failed? -1: 0;
}

static int
s_zap_ready (zloop_t *loop, zsock_t *reader, void *arg)
{
    kim_server_t *self = (kim_server_t *) arg;
    kim_zap_handle (self->zap, self->config, &self->zap_log, s_mono ());
    return 0;
}

//  --------------------------------------------------------------------------
//  Housekeeping: silent sessions, overdue acks, figures.

static int
s_housekeep (zloop_t *loop, int timer_id, void *arg)
{
    kim_server_t *self = (kim_server_t *) arg;
    s_clock_update (self);
    uint64_t now = s_mono ();
    uint64_t silence = 3ull * self->config->heartbeat_ms;

    //  A session is silent by what the broker has read: as of the last time
    //  it emptied its socket. A loop held up by a slow sync has not read the
    //  heartbeats that arrived meanwhile, and must not expire their senders.
    if (!(zsock_events (self->router) & ZMQ_POLLIN))
        self->drained_ms = now;
    zlistx_t *expired = zlistx_new ();
    for (session_t *session = (session_t *) zhashx_first (self->sessions); session;
         session = (session_t *) zhashx_next (self->sessions))
        if (self->drained_ms > session->last_seen_ms
        &&  self->drained_ms - session->last_seen_ms > silence)
            zlistx_add_end (expired, session);
    for (session_t *session = (session_t *) zlistx_first (expired); session;
         session = (session_t *) zlistx_next (expired)) {
        zsys_info ("server: %s silent for %" PRIu64 " ms; session expired",
                   session->org->org->id, now - session->last_seen_ms);
        kim_reply_reject (self, session->rid, session->rid_size, KIM_E_SESSION_EXPIRED,
                           NULL, NULL, NULL);
        org_state_t *state = session->org;
        kim_session_end (self, session, "expired");
        kim_server_mark_dirty (self, state);
    }
    zlistx_destroy (&expired);

    kim_deliver_overdue (self, now);
    bool ticking = kim_server_now (self) - self->last_dedup_expire_ms >= KIM_DEDUP_EXPIRE_MS;
    for (size_t i = 0; i < self->hook_count; i++)
        ticking |= self->hooks [i].tick != NULL;
    if (ticking && kim_batch_run (self, kim_batch_apply_ticks) && self->failed)
        return -1;
    s_durable (self);
    kim_deliver_dirty (self, s_mono ());
    kim_zap_log_flush (&self->zap_log, now);
    if (now - self->last_stats_ms >= KIM_STATS_MS) {
        if (self->receipted || self->delivered)
            zsys_info ("server: %" PRIu64 " receipted, %" PRIu64 " duplicates, %" PRIu64
                       " rejected, %" PRIu64 " delivered, %" PRIu64 " redelivered, %" PRIu64
                       " acked, %" PRIu64 " batches, %zu sessions, log head %" PRIu64,
                       self->receipted, self->duplicates, self->rejected, self->delivered,
                       self->redelivered, self->acked, self->batches,
                       zhashx_size (self->sessions), kim_store_head (self->store));
        self->last_stats_ms = now;
    }
    return self->failed? -1: 0;
}

//  --------------------------------------------------------------------------
//  Construction

static int
s_bind (kim_server_t *self, char *error, size_t error_size)
{
    void *router = zsock_resolve (self->router);
    //  libzmq drops a connection whose frame exceeds ZMQ_MAXMSGSIZE without
    //  a word. The broker enforces the frame and payload limits itself and
    //  answers TOO_LARGE (section 5); the socket's cap sits at the
    //  protocol's ceiling, above any limit the broker may be configured to.
    //  libzmq compares the cap with the frame as it travels, in its CurveZMQ
    //  MESSAGE box: 33 bytes more (command name 8, nonce 8, MAC 16, flags 1).
    int64_t max_size = (int64_t) KIM_PAYLOAD_MAX + KIM_FRAME_MAX + 33;
    int hwm = 0;                        //  windows bound what we queue
    //  What a connection may have waiting unread: beyond it libzmq stops
    //  reading that connection (TCP pushes back on the sender), so a client
    //  sending faster than the broker serves queues at home, not here.
    int rcvhwm = KIM_RCVHWM;
    zmq_setsockopt (router, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size);
    zmq_setsockopt (router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt (router, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    int heartbeat = (int) self->config->heartbeat_ms;
    int heartbeat_timeout = 3 * heartbeat;
    zmq_setsockopt (router, ZMQ_HEARTBEAT_IVL, &heartbeat, sizeof heartbeat);
    zmq_setsockopt (router, ZMQ_HEARTBEAT_TIMEOUT, &heartbeat_timeout, sizeof heartbeat_timeout);
    zsock_set_zap_domain (self->router, "kim");
    zcert_apply (self->cert, self->router);
    zsock_set_curve_server (self->router, 1);
    for (size_t i = 0; i < self->config->endpoint_count; i++) {
        const char *endpoint = self->config->endpoints [i];
        if (zsock_bind (self->router, "%s", endpoint) == -1) {
            snprintf (error, error_size, "broker/bind: cannot bind %s: %s", endpoint,
                      zmq_strerror (zmq_errno ()));
            return -1;
        }
        //  An ipc socket file is reachable by whoever may open it: the
        //  owner only; CURVE still authenticates every connection.
        if (strncmp (endpoint, "ipc://", 6) == 0)
            chmod (endpoint + 6, 0600);
    }
    return 0;
}

kim_server_t *
kim_server_new (kim_config_t **config_p, char *error, size_t error_size)
{
    kim_server_t *self = (kim_server_t *) calloc (1, sizeof (kim_server_t));
    if (!self) {
        snprintf (error, error_size, "out of memory");
        return NULL;
    }
    self->config = *config_p;
    *config_p = NULL;
    kim_config_t *config = self->config;
    kim_buf_init (&self->buf);
    kim_buf_init (&self->hdr_buf);
    kim_buf_init (&self->batch_buf);
    kim_buf_init (&self->held);
    self->ctx.server = self;
    kim_cmd_init (&self->receipt, KIM_CMD_RECEIPT);
    crypto_generichash (self->empty_hash, KIM_HASH_SIZE, NULL, 0, NULL, 0);
    self->signal_fd = -1;
    self->clock_file = getenv ("KIM_CLOCK_FILE");
    s_clock_update (self);
    self->started_ms = self->last_stats_ms = self->drained_ms = s_mono ();
    self->last_dedup_expire_ms = kim_server_now (self);

    if (sodium_init () < 0) {
        snprintf (error, error_size, "libsodium failed to initialise");
        kim_server_destroy (&self);
        return NULL;
    }
    if (zsys_dir_create ("%s", config->data) != 0) {
        snprintf (error, error_size, "broker/data: cannot create %s: %s", config->data,
                  strerror (errno));
        kim_server_destroy (&self);
        return NULL;
    }
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/keys", config->data);
    self->cert = kim_keys_broker_cert (path, config->name, error, error_size);
    if (!self->cert) {
        kim_server_destroy (&self);
        return NULL;
    }
    kim_store_config_t store_config;
    kim_recover_store_options (config, path, sizeof path, &store_config);
    int rc = 0;
    self->store = kim_store_new (&store_config, &rc);
    if (!self->store) {
        snprintf (error, error_size, "%s: cannot open the store: %s", path,
                  rc == -KIM_E_BUSY? "another broker uses this data folder (it holds "
                                     "store/" KIM_STORE_LOCK_NAME ")": kim_strerror (rc));
        kim_server_destroy (&self);
        return NULL;
    }
    //  A helper thread decodes, hashes, seals and chains beside this one
    //  (when it cannot start, all of that is done here)
    self->work = kim_work_new (2 * (config->batch_max + KIM_ITEMS_SPARE));
    if (self->work && kim_store_set_work (self->store, self->work))
        kim_work_destroy (&self->work);
    self->sessions = zhashx_new ();
    self->orgs = zhashx_new ();
    self->items = (item_t *) calloc (config->batch_max + KIM_ITEMS_SPARE, sizeof (item_t));
    if (!self->sessions || !self->orgs || !self->items) {
        snprintf (error, error_size, "out of memory");
        kim_server_destroy (&self);
        return NULL;
    }
    zhashx_set_destructor (self->sessions, kim_session_free);
    zhashx_set_destructor (self->orgs, kim_session_org_free);
    for (size_t i = 0; i < config->org_count; i++) {
        org_state_t *state = (org_state_t *) calloc (1, sizeof (org_state_t));
        if (state)
            state->flights = (flight_t *) calloc (config->window_max, sizeof (flight_t));
        if (!state || !state->flights) {
            free (state);
            snprintf (error, error_size, "out of memory");
            kim_server_destroy (&self);
            return NULL;
        }
        kim_server_org_state_init (self, state, &config->orgs [i]);
        zhashx_insert (self->orgs, state->org->id, state);
        //  Mail that waited while the broker was down goes out on HELLO.
    }
    self->loop = zloop_new ();
    if (!self->loop) {
        snprintf (error, error_size, "out of memory");
        kim_server_destroy (&self);
        return NULL;
    }
    kim_module_env_t env = { config, self->store, path, self->loop };
    snprintf (path, sizeof path, "%s/keys", config->data);
    int hooks = kim_modules_new (&env, self->hooks, KIM_HOOKS_MAX, error, error_size);
    if (hooks < 0) {
        kim_server_destroy (&self);
        return NULL;
    }
    self->hook_count = (size_t) hooks;
    self->zap = kim_zap_new ();
    self->router = zsock_new (ZMQ_ROUTER);
    if (!self->zap || !self->router) {
        snprintf (error, error_size, "cannot create sockets (is another broker in this process?)");
        kim_server_destroy (&self);
        return NULL;
    }
    if (s_bind (self, error, error_size)) {
        kim_server_destroy (&self);
        return NULL;
    }
    self->retired = zlistx_new ();
    zlistx_set_destructor (self->retired, (czmq_destructor *) kim_config_destroy);
    //  SIGHUP reloads the registry. main() blocked it in every thread, so
    //  it arrives here, in the loop, and never interrupts a write.
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGHUP);
    self->signal_fd = signalfd (-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
    if (self->signal_fd >= 0) {
        zmq_pollitem_t item = { NULL, self->signal_fd, ZMQ_POLLIN, 0 };
        zloop_poller (self->loop, &item, s_signal_ready, self);
    }
    zloop_reader (self->loop, self->zap, s_zap_ready, self);
    zloop_reader (self->loop, self->router, s_router_ready, self);
    zloop_timer (self->loop, KIM_HOUSEKEEP_MS, 0, s_housekeep, self);
    return self;
}

void
kim_server_destroy (kim_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_server_t *self = *self_p;
    zloop_destroy (&self->loop);
    zsock_destroy (&self->router);
    zsock_destroy (&self->zap);
    zhashx_destroy (&self->sessions);
    zhashx_destroy (&self->orgs);
    kim_modules_destroy (self->hooks, self->hook_count);
    zlistx_destroy (&self->retired);
    if (self->signal_fd >= 0)
        close (self->signal_fd);
    kim_work_drain (self->work);
    free (self->items);
    kim_store_destroy (&self->store);
    kim_work_destroy (&self->work);
    zcert_destroy (&self->cert);
    kim_buf_free (&self->buf);
    kim_buf_free (&self->hdr_buf);
    kim_buf_free (&self->batch_buf);
    kim_buf_free (&self->held);
    kim_config_destroy (&self->config);
    free (self);
    *self_p = NULL;
}

int
kim_server_run (kim_server_t *self)
{
    kim_config_t *config = self->config;
    char endpoints [KIM_ENDPOINTS_MAX * (KIM_ENDPOINT_MAX + 2)] = "";
    for (size_t i = 0; i < config->endpoint_count; i++) {
        strcat (endpoints, i? ", ": "");
        strcat (endpoints, config->endpoints [i]);
    }
    zsys_notice ("kim-broker %s serving on %s; data in %s; %zu organisations; "
                 "log head %" PRIu64 "; broker public key %s",
                 config->name, endpoints, config->data, config->org_count - config->peer_count,
                 kim_store_head (self->store), zcert_public_txt (self->cert));
    if (config->org_count == config->peer_count)
        zsys_warning ("no organisations are registered: nobody can connect. Add them under "
                      "'orgs' in a config file (see deploy/kim.cfg) and pass --config");
    if (!config->sync)
        zsys_warning ("store/sync = 0: receipts are NOT synced to disk (benchmarks only)");
    zloop_start (self->loop);
    //  ACKs still waiting are committed, answers still waiting for a sync
    //  go out: the peers may be there yet
    if (!self->failed)
        kim_batch_commit (self, true);
    if (!self->failed)
        kim_batch_durable (self, false);
    zsys_notice ("kim-broker stopping: %" PRIu64 " receipted, %" PRIu64 " delivered, %" PRIu64
                 " acked; log head %" PRIu64, self->receipted, self->delivered, self->acked,
                 kim_store_head (self->store));
    return self->failed? -1: 0;
}
