/*  kim_agent_link.c — the agent's one session with the broker.

    The main thread owns the kim_client; nothing else touches it. It
    connects (and, while the broker is away, tries again with a backoff),
    sends what waits in the outbox, and turns what the broker sends into
    store writes:

    - RECEIPT and REJECT end an outbox record's wait, in the same commit
      that moves the referral view;
    - DELIVER goes into the inbox, payload opened by the library, and is
      acked only after the commit that holds it returned (synced). A crash
      before the ack means a redelivery with the same seq, which the inbox
      recognises; so each delivery reaches the inbox once. A delivery that
      carries its sender's signature (PROTOCOL.md 13.4) is checked after
      the ack against the sign_key the broker's directory lists, and its
      inbox record says "valid", "invalid" or "unknown_key" (the library
      does not check signatures of deliveries, so the agent does);
    - each session renews the subscription to the handovers and closings
      of the office's cases, which keep the views right after a handover.

    Events are handled in batches of whatever is queued, one commit each:
    group commit, so a burst costs one sync, not one per message.

    A message the local system handed us keeps its msg_id for ever: after a
    reconnect the library resends it, after a restart of the agent this
    loop does, and the broker's de-duplication answers a resend with the
    original's seq. Refusals that say "later" (QUOTA, BUSY, rate limits,
    store trouble at the broker) keep the message queued and retry it.
*/
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_agent.h"

#define S_BATCH_MAX         256     //  events per commit
#define S_INFLIGHT_MAX      128     //  outbox messages handed to the client at once
#define S_RETRY_MS          2000    //  a "later" refusal waits this long
#define S_RESCAN_MS         1000    //  the outbox is looked at least this often
#define S_BACKOFF_MIN_MS    200
#define S_BACKOFF_MAX_MS    5000
#define S_SHED_MS           5000    //  answered outbox payloads are erased this often

typedef struct {
    const kim_agent_config_t *config;
    kim_agent_store_t *store;
    kim_agent_shared_t *shared;
    int wake_fd;
    kim_client_t *client;
    zhashx_t *inflight;                 //  msg_id: handed to the current client
    zhashx_t *held;                     //  msg_id -> retry time (ms, as a pointer-sized int)
    zhashx_t *sign_keys;                //  org -> its Ed25519 key, Z85 ("" : none)
    int64_t next_connect;
    int backoff_ms;
    int64_t next_scan;
    int64_t next_shed;
    bool must_stop;
    bool warned;                        //  "no session" said once since the last session
    //  Fault injection for the tests (KIM_AGENT_CRASH_AFTER_DELIVERIES=N):
    //  kill ourselves after the N-th commit that holds deliveries, before
    //  acking them: the worst moment for a crash on the receiving side.
    long crash_after;
    long delivery_commits;
} s_link_t;

void
kim_agent_wake (kim_agent_shared_t *shared)
{
    char byte = 1;
    if (write (shared->wake_fd, &byte, 1) < 0) {
        //  EAGAIN: the pipe is full, so the link has a wake-up waiting
    }
}

static bool
s_drain_wake (s_link_t *self)
{
    char bytes [256];
    bool woken = false;
    while (read (self->wake_fd, bytes, sizeof bytes) > 0)
        woken = true;
    return woken;
}

//  Codes that refuse a message for good, as opposed to "not now".
static bool
s_final (int code)
{
    code = code < 0? -code: code;
    return code != KIM_E_RATE_LIMITED && code != KIM_E_QUOTA && code != KIM_E_STORE_FULL
        && code != KIM_E_STORE_FAILED && code != KIM_E_INTERNAL && code != KIM_E_BUSY
        && code != KIM_E_TIMEOUT && code != KIM_E_CLOSED && code != KIM_E_NOMEM
        && code != KIM_E_IO && code != KIM_E_NO_SESSION && code != KIM_E_SESSION_EXPIRED
        && code != KIM_E_REPLACED;
}

static void
s_disconnect (s_link_t *self, const char *why)
{
    if (self->client) {
        zsys_warning ("kim-agent %s: session with the broker ended: %s; reconnecting",
                      self->config->org, why);
        kim_client_destroy (&self->client);
    }
    atomic_store (&self->shared->connected, false);
    //  A new session resends from the outbox; the broker de-duplicates
    zhashx_purge (self->inflight);
    self->next_connect = zclock_mono () + self->backoff_ms;
}

//  Subscribes (durably, once per organisation: the same sub_id each time
//  keeps the broker's cursor) to the handovers and closings of the cases
//  the office takes part in, so that the views follow a handover the office
//  is no party to (PROTOCOL.md 8.10): a referral we received moves to the
//  new lead, and our answers must go there. The events arrive as
//  deliveries, into the inbox like mail.
static void
s_subscribe (s_link_t *self)
{
    kim_cmd_t *request = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    int rc = request && reply? 0: -KIM_E_NOMEM;
    if (rc == 0) {
        kim_cmd_init (request, KIM_CMD_SUBSCRIBE);
        kim_str_copy (request->sub_id, sizeof request->sub_id, KIM_AGENT_SUB_ID);
        const kim_type_t types [] = { KIM_TYPE_HANDOVER_OFFER, KIM_TYPE_HANDOVER_ACCEPT,
                                      KIM_TYPE_HANDOVER_DECLINE, KIM_TYPE_CASE_CLOSED };
        for (size_t i = 0; i < sizeof types / sizeof types [0]; i++)
            request->types [request->type_count++] = types [i];
        rc = kim_client_request (self->client, request, reply, self->config->timeout_ms);
        if (rc == 0 && reply->id != KIM_CMD_RECEIPT)
            rc = -KIM_E_UNKNOWN_CMD;
    }
    if (rc)
        zsys_warning ("kim-agent %s: cannot subscribe to the handovers of our cases (%s): the "
                      "views will not follow handovers we are no party to", self->config->org,
                      self->client? kim_client_error (self->client): kim_strerror (rc));
    else
    if (self->config->verbose)
        zsys_debug ("kim-agent %s: subscribed to the handovers of our cases", self->config->org);
    free (request);
    free (reply);
}

static void
s_connect (s_link_t *self)
{
    const kim_agent_config_t *config = self->config;
    kim_client_config_t client_config = { 0 };
    client_config.endpoint = config->endpoint;
    client_config.broker_key = config->broker_key;
    client_config.public_key = config->public_key;
    client_config.secret_key = config->secret_key;
    client_config.agent = "kim-agent/" KIM_AGENT_VERSION;
    client_config.window = 256;
    client_config.timeout_ms = config->timeout_ms;
    client_config.plaintext = config->plaintext;
    client_config.sign_secret_key = config->sign_secret [0]? config->sign_secret: NULL;
    int err = 0;
    self->client = kim_client_new (&client_config, &err);
    if (!self->client) {
        if (self->backoff_ms < S_BACKOFF_MAX_MS)
            self->backoff_ms = self->backoff_ms * 2 > S_BACKOFF_MAX_MS? S_BACKOFF_MAX_MS
                                                                       : self->backoff_ms * 2;
        self->next_connect = zclock_mono () + self->backoff_ms;
        //  Said once at warning level, so that a wrong key or endpoint shows
        //  in the log without flooding it while the broker is away
        if (!self->warned)
            zsys_warning ("kim-agent %s: no session with %s yet (%s); the outbox keeps "
                          "filling and the agent keeps trying", config->org, config->endpoint,
                          kim_strerror (err));
        else
        if (config->verbose)
            zsys_debug ("kim-agent %s: no session yet (%s); next try in %d ms", config->org,
                        kim_strerror (err), self->backoff_ms);
        self->warned = true;
        return;
    }
    if (!streq (kim_client_org (self->client), config->org)) {
        zsys_error ("kim-agent %s: the broker knows our key as '%s', not as agent/org '%s': "
                    "stopping", config->org, kim_client_org (self->client), config->org);
        kim_client_destroy (&self->client);
        self->must_stop = true;
        return;
    }
    self->backoff_ms = S_BACKOFF_MIN_MS;
    self->warned = false;
    zhashx_purge (self->sign_keys);     //  keys may have rotated meanwhile
    atomic_store (&self->shared->connected, true);
    atomic_fetch_add (&self->shared->reconnects, 1);
    zsys_info ("kim-agent %s: session open with %s", config->org, config->endpoint);
    s_subscribe (self);
    self->next_scan = 0;
}

static void
s_refuse_locally (s_link_t *self, const char *msg_id, int code, const char *text)
{
    kim_agent_txn_t *txn = kim_agent_store_begin (self->store);
    int rc = txn? kim_agent_store_refused (txn, msg_id, code, text, ""): -KIM_E_IO;
    if (txn)
        rc = kim_agent_store_commit (&txn);
    if (rc)
        zsys_error ("kim-agent %s: cannot record the refusal of %s: %s", self->config->org,
                    msg_id, kim_strerror (rc));
    zsys_warning ("kim-agent %s: %s refused before sending: %s (%s)", self->config->org,
                  msg_id, kim_errname (code), text);
}

//  What the office sent is kept, sealed, only until the broker answered
//  it: those payloads are never sent again, so they are erased.
static void
s_shed (s_link_t *self)
{
    self->next_shed = zclock_mono () + S_SHED_MS;
    size_t count = 0;
    int rc = kim_agent_store_outbox_shed (self->store, &count);
    if (rc)
        zsys_error ("kim-agent %s: cannot erase the payloads of answered messages: %s",
                    self->config->org, kim_strerror (rc));
    else
    if (count && self->config->verbose)
        zsys_info ("kim-agent %s: erased the payloads of %zu answered messages",
                   self->config->org, count);
}

//  Hands queued outbox messages to the client, up to S_INFLIGHT_MAX.
static void
s_send_queued (s_link_t *self)
{
    int64_t now = zclock_mono ();
    self->next_scan = now + S_RESCAN_MS;
    if (zhashx_size (self->inflight) >= S_INFLIGHT_MAX)
        return;
    json_t *ids = kim_agent_store_outbox_queued (self->store,
                                                 S_INFLIGHT_MAX + zhashx_size (self->held));
    size_t index;
    json_t *value;
    json_array_foreach (ids, index, value) {
        if (!self->client || zhashx_size (self->inflight) >= S_INFLIGHT_MAX)
            break;
        const char *msg_id = json_string_value (value);
        if (!msg_id || zhashx_lookup (self->inflight, msg_id))
            continue;
        void *retry = zhashx_lookup (self->held, msg_id);
        if (retry && (int64_t) (intptr_t) retry > now)
            continue;
        zhashx_delete (self->held, msg_id);
        kim_msg_t msg;
        uint8_t *payload = NULL;
        size_t size = 0;
        int rc = kim_agent_store_outbox_load (self->store, msg_id, &msg, &payload, &size);
        if (rc == 0)
            rc = kim_client_send_async (self->client, &msg, payload, size);
        free (payload);
        if (rc == 0) {
            zhashx_insert (self->inflight, msg_id, (void *) 1);
            if (self->config->verbose)
                zsys_debug ("kim-agent %s: sent %s (to %s)", self->config->org, msg_id,
                            msg.recipient);
        }
        else
        if (s_final (rc))
            s_refuse_locally (self, msg_id, rc, self->client? kim_client_error (self->client)
                                                            : kim_strerror (rc));
        else {
            zhashx_insert (self->held, msg_id, (void *) (intptr_t) (now + S_RETRY_MS));
            if (rc != -KIM_E_TIMEOUT) {
                s_disconnect (self, kim_client_error (self->client));
                break;
            }
        }
    }
    json_decref (ids);
}

//  Checks a delivered header's signature: "valid", "invalid", "unknown_key",
//  or NULL when the sender's key cannot be looked up now.
static const char *
s_check_signature (s_link_t *self, const kim_msg_t *msg)
{
    const char *key = (const char *) zhashx_lookup (self->sign_keys, msg->sender);
    if (!key) {
        const kim_dir_entry_t *entries = NULL;
        size_t count = 0;
        if (kim_client_directory (self->client, msg->sender, &entries, &count,
                                  self->config->timeout_ms) != 0)
            return NULL;
        zhashx_update (self->sign_keys, msg->sender,
                       strdup (count == 1? entries [0].sign_key: ""));
        key = (const char *) zhashx_lookup (self->sign_keys, msg->sender);
    }
    uint8_t public_key [32];
    if (!key || strlen (key) != 40 || !zmq_z85_decode (public_key, key))
        return "unknown_key";
    //  The sender signed the header as the log keeps it, without sig and
    //  without the broker's rule, followed by the payload's hash
    kim_msg_t copy = *msg;
    copy.has_sig = false;
    copy.rule [0] = 0;
    kim_buf_t buf;
    kim_buf_init (&buf);
    uint8_t signed_bytes [2 * KIM_HASH_SIZE];
    bool valid = kim_msg_encode (&copy, &buf) == 0;
    if (valid) {
        crypto_generichash (signed_bytes, KIM_HASH_SIZE, buf.data, buf.size, NULL, 0);
        memcpy (signed_bytes + KIM_HASH_SIZE, msg->payload_hash, KIM_HASH_SIZE);
        valid = msg->has_payload_hash
             && crypto_sign_verify_detached (msg->sig, signed_bytes, sizeof signed_bytes,
                                             public_key) == 0;
    }
    kim_buf_free (&buf);
    return valid? "valid": "invalid";
}

//  Handles `first` and whatever else is queued, in one commit; then acks.
static int
s_handle_batch (s_link_t *self, kim_event_t *event)
{
    const char *org = self->config->org;
    uint64_t acks [S_BATCH_MAX];
    size_t ack_count = 0;
    kim_msg_t *signed_msgs [S_BATCH_MAX];
    uint64_t signed_seqs [S_BATCH_MAX];
    size_t signed_count = 0;
    kim_agent_txn_t *txn = kim_agent_store_begin (self->store);
    if (!txn) {
        zsys_error ("kim-agent %s: cannot begin a store transaction", org);
        return -KIM_E_IO;
    }
    int rc = 0, count = 0;
    do {
        if (event->type == KIM_EVENT_RECEIPT) {
            zhashx_delete (self->inflight, event->msg_id);
            kim_agent_store_receipt (txn, event->msg_id, event->seq, event->dup);
            if (self->config->verbose)
                zsys_debug ("kim-agent %s: %s receipted, seq %" PRIu64 "%s", org, event->msg_id,
                            event->seq, event->dup? " (dup)": "");
        }
        else
        if (event->type == KIM_EVENT_REJECT && event->msg_id [0]
        &&  zhashx_lookup (self->inflight, event->msg_id)) {
            zhashx_delete (self->inflight, event->msg_id);
            if (s_final (event->code)) {
                kim_agent_store_refused (txn, event->msg_id, event->code, event->text,
                                         event->path);
                zsys_warning ("kim-agent %s: broker refused %s: %s", org, event->msg_id,
                              kim_errname (event->code));
            }
            else
                zhashx_insert (self->held, event->msg_id,
                               (void *) (intptr_t) (zclock_mono () + S_RETRY_MS));
        }
        else
        if (event->type == KIM_EVENT_REJECT)
            zsys_warning ("kim-agent %s: broker refused a command: %s %s", org,
                          kim_errname (event->code), event->text);
        else
        if (event->type == KIM_EVENT_DELIVER) {
            bool fresh = false;
            if (kim_agent_store_deliver (txn, event, &fresh) == 0) {
                acks [ack_count++] = event->seq;
                if (fresh && event->msg.has_sig
                &&  (signed_msgs [signed_count] = (kim_msg_t *) malloc (sizeof (kim_msg_t)))) {
                    *signed_msgs [signed_count] = event->msg;
                    signed_seqs [signed_count++] = event->seq;
                }
                if (self->config->verbose)
                    zsys_debug ("kim-agent %s: seq %" PRIu64 " (%s from %s) %s", org,
                                event->seq, event->msg.msg_id, event->msg.sender,
                                fresh? "in the inbox": "was there already");
                if (event->sealed_error)
                    zsys_warning ("kim-agent %s: payload of %s does not open with our key; "
                                  "kept as received", org, event->msg.msg_id);
            }
        }
        if (++count == S_BATCH_MAX || ack_count == S_BATCH_MAX)
            break;
    } while ((rc = kim_client_recv (self->client, event, 0)) == 0);

    int commit_rc = kim_agent_store_commit (&txn);
    if (commit_rc) {
        //  Nothing of the batch is stored: the broker redelivers, and the
        //  outbox messages are sent again (and de-duplicated)
        zsys_error ("kim-agent %s: store commit failed: %s", org, kim_strerror (commit_rc));
        zhashx_purge (self->inflight);
        for (size_t i = 0; i < signed_count; i++)
            free (signed_msgs [i]);
        return commit_rc;
    }
    if (ack_count && self->crash_after && ++self->delivery_commits == self->crash_after)
        raise (SIGKILL);
    for (size_t i = 0; i < ack_count; i++)
        kim_client_ack (self->client, acks [i]);
    for (size_t i = 0; i < signed_count; i++) {
        const char *result = rc == 0 || rc == -KIM_E_TIMEOUT
                           ? s_check_signature (self, signed_msgs [i]): NULL;
        if (result && kim_agent_store_inbox_signature (self->store, signed_seqs [i], result) != 0)
            zsys_error ("kim-agent %s: cannot record the signature check of %s", org,
                        signed_msgs [i]->msg_id);
        if (result && !streq (result, "valid"))
            zsys_warning ("kim-agent %s: signature of %s from %s: %s", org,
                          signed_msgs [i]->msg_id, signed_msgs [i]->sender, result);
        free (signed_msgs [i]);
    }
    return rc == -KIM_E_TIMEOUT || rc == 0? 0: rc;
}

int
kim_agent_link_run (const kim_agent_config_t *config, kim_agent_store_t *store,
                    kim_agent_shared_t *shared, int wake_read_fd)
{
    s_link_t self = { 0 };
    self.config = config;
    self.store = store;
    self.shared = shared;
    self.wake_fd = wake_read_fd;
    self.inflight = zhashx_new ();
    self.held = zhashx_new ();
    self.sign_keys = zhashx_new ();
    if (self.sign_keys)
        zhashx_set_destructor (self.sign_keys, (zhashx_destructor_fn *) zstr_free);
    self.backoff_ms = S_BACKOFF_MIN_MS;
    const char *crash = getenv ("KIM_AGENT_CRASH_AFTER_DELIVERIES");
    self.crash_after = crash? atol (crash): 0;
    if (!self.inflight || !self.held || !self.sign_keys) {
        zhashx_destroy (&self.inflight);
        zhashx_destroy (&self.held);
        zhashx_destroy (&self.sign_keys);
        return 1;
    }
    while (!zsys_interrupted && !self.must_stop) {
        if (zclock_mono () >= self.next_shed)
            s_shed (&self);
        if (!self.client) {
            if (zclock_mono () >= self.next_connect)
                s_connect (&self);
            if (!self.client) {
                //  Wait for the next attempt; HTTP keeps filling the outbox
                int wait = (int) (self.next_connect - zclock_mono ());
                struct pollfd item = { self.wake_fd, POLLIN, 0 };
                if (wait > 0)
                    poll (&item, 1, wait > 200? 200: wait);
                s_drain_wake (&self);
                continue;
            }
        }
        if (s_drain_wake (&self) || zclock_mono () >= self.next_scan)
            s_send_queued (&self);
        if (!self.client)
            continue;
        kim_event_t event;
        int rc = kim_client_recv (self.client, &event, 50);
        if (rc == 0)
            rc = s_handle_batch (&self, &event);
        if (rc == -KIM_E_TIMEOUT || rc == 0)
            continue;
        if (zsys_interrupted)
            break;
        s_disconnect (&self, kim_client_error (self.client));
    }
    if (self.client) {
        //  Acks still batched leave with the BYE
        kim_client_flush (self.client, 500);
        kim_client_destroy (&self.client);
    }
    atomic_store (&shared->connected, false);
    zhashx_destroy (&self.inflight);
    zhashx_destroy (&self.held);
    zhashx_destroy (&self.sign_keys);
    return self.must_stop? 1: 0;
}
