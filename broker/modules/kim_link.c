/*  kim_link.c — links to the brokers of other districts: store and forward
    broker to broker, and the directory that crosses districts.

    Why a module: a link is a client of another broker and a source of
    organisations this broker does not register. It owns one DEALER per
    peer (added to the server's reactor), the remote directory (in memory
    and in the store's remote_dir database), and the forwarding of the link
    mailboxes ("peer:<name>", filled by the write batch like any mailbox).

    Each broker forwards its own outbound mail over the connection it
    dialled, and receives the peer's on its ROUTER (the peer dials it): so
    every connection has one sender of PEER_FORWARDs and one of answers.

    Guarantees (PROTOCOL.md 16):
    - a message leaves the link mailbox only when the peer answered
      PEER_ACK (it has the message on disk) or PEER_REFUSED (its rules
      refused it; the sender then gets an UNDELIVERABLE notice). A link
      that is down keeps everything and resends from the oldest entry, in
      seq order, when it comes back; the peer drops duplicates by msg_id;
    - a peer's directory is believed only when signed with the sign_key
      configured for it, and only with a serial above the one stored;
    - a remote organisation id that is also registered here, or claimed by
      two peers, is ignored (with a warning): a peer's key vouches for its
      own organisations only.
*/
#include <czmq.h>
#include <sodium.h>

#include "kim_audit.h"
#include "kim_consent.h"
#include "kim_keys.h"
#include "kim_lifecycle.h"
#include "kim_link.h"

#define S_WINDOW            64          //  PEER_FORWARDs in flight per link
#define S_BACKOFF_MIN_MS    200
#define S_BACKOFF_MAX_MS    10000
#define S_HELLO_TIMEOUT_MS  3000        //  no WELCOME by then: try again
#define S_TIMER_MS          20          //  link timers, and forwarding of new mail

//  DOWN -> HELLO (dialled, HELLO sent) -> SYNC (WELCOME heard; the
//  directory and a PING sent) -> UP (PONG heard: the peer took the
//  directory, so it knows whom this broker speaks for) -> DOWN.
typedef enum { S_DOWN, S_HELLO, S_SYNC, S_UP } s_state_t;

typedef struct {
    uint64_t seq;
    int code;
    char text [KIM_TEXT_MAX + 1];
    char rule [KIM_ID_MAX + 1];
} s_refusal_t;

typedef struct _s_mod_t s_mod_t;

typedef struct {
    s_mod_t *mod;
    kim_peer_config_t conf;
    char mailbox [KIM_LINK_MAILBOX_MAX + 1];
    bool removed;                       //  no longer configured
    zsock_t *dealer;
    size_t endpoint;                    //  index of the endpoint dialled
    s_state_t state;
    uint64_t since_ms;                  //  wall clock of the last change
    uint64_t next_try, backoff;         //  monotonic ms
    uint64_t hello_at, last_recv, last_send;
    uint64_t warned_at;                 //  last "still down" warning (monotonic ms)
    uint32_t heartbeat_ms;              //  from the peer's WELCOME
    uint64_t flights [S_WINDOW];        //  sent, not yet answered
    size_t flight_count;
    uint64_t sent_upto;                 //  highest seq sent on this connection
    uint64_t acks [S_WINDOW];           //  answered: to take out of the mailbox
    size_t ack_count;
    s_refusal_t refusals [S_WINDOW];
    size_t refusal_count;
    //  The peer's directory, as verified.
    uint64_t serial;
    kim_dir_entry_t *entries;           //  KIM_DIRECTORY_MAX
    size_t entry_count;
} s_link_t;

typedef struct {
    kim_org_t org;
    char home [KIM_ORG_MAX + 1];
} s_remote_t;

struct _s_mod_t {
    const kim_config_t *config;         //  the one links were made from
    kim_store_t *store;
    zloop_t *loop;
    kim_ctx_t *ctx;                     //  the server's, known from the first tick
    int timer;
    char keys_dir [PATH_MAX];
    zcert_t *cert;                      //  this broker's CURVE key pair
    uint8_t sign_secret [64];           //  this broker's Ed25519 key (keys/broker.sign_secret)
    s_link_t *links [KIM_PEERS_MAX];
    size_t link_count;
    zhashx_t *remote;                   //  org id -> s_remote_t
    //  The same entries in a stable order, for DIRECTORY: an array, so that
    //  listing thousands (54 districts' offices) stays linear.
    s_remote_t **remote_order;
    size_t remote_count;
    uint64_t serial;                    //  of the directory this broker publishes
    kim_buf_t buf, signed_buf;
    kim_cmd_t cmd;                      //  scratch: big, kept off the stack
    kim_dir_entry_t *entries;           //  KIM_DIRECTORY_MAX: scratch
};

static uint64_t
s_mono (void)
{
    return (uint64_t) zclock_mono ();
}

//  --------------------------------------------------------------------------
//  Signed directories

static int
s_directory_bytes (const kim_cmd_t *cmd, kim_buf_t *out)
{
    kim_cmd_t *copy = (kim_cmd_t *) malloc (sizeof *copy);
    if (!copy)
        return -KIM_E_NOMEM;
    memcpy (copy, cmd, sizeof *copy);
    copy->has_sig = false;
    memset (copy->sig, 0, sizeof copy->sig);
    kim_buf_reset (out);
    //  The encoder insists on a sig (a required field): sign over the map
    //  with a zero signature instead, which both sides rebuild alike.
    copy->has_sig = true;
    int rc = kim_cmd_encode (copy, out);
    free (copy);
    return rc;
}

int
kim_link_directory_sign (kim_cmd_t *cmd, const uint8_t secret_key [64])
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = s_directory_bytes (cmd, &buf);
    if (rc == 0) {
        crypto_sign_detached (cmd->sig, NULL, buf.data, buf.size, secret_key);
        cmd->has_sig = true;
    }
    kim_buf_free (&buf);
    return rc;
}

int
kim_link_directory_verify (const kim_cmd_t *cmd, const char *sign_key)
{
    uint8_t key [32];
    if (!cmd->has_sig || !sign_key || strlen (sign_key) != 40 || !zmq_z85_decode (key, sign_key))
        return -KIM_E_BAD_SIGNATURE;
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = s_directory_bytes (cmd, &buf);
    if (rc == 0 && crypto_sign_verify_detached (cmd->sig, buf.data, buf.size, key) != 0)
        rc = -KIM_E_BAD_SIGNATURE;
    kim_buf_free (&buf);
    return rc == -KIM_E_NOMEM? rc: rc? -KIM_E_BAD_SIGNATURE: 0;
}

static s_link_t *
s_link_find (s_mod_t *self, const char *name)
{
    for (size_t i = 0; i < self->link_count; i++)
        if (streq (self->links [i]->conf.name, name))
            return self->links [i];
    return NULL;
}

//  Rebuilds the map of remote organisations from every link's directory.
//  An id registered here, or claimed by two peers, is nobody's remote.
static void
s_remote_rebuild (s_mod_t *self)
{
    zhashx_purge (self->remote);
    self->remote_count = 0;
    zhashx_t *claimed = zhashx_new ();         //  id -> count of peers claiming it
    if (!claimed)
        return;
    for (size_t i = 0; i < self->link_count; i++) {
        s_link_t *link = self->links [i];
        for (size_t e = 0; !link->removed && e < link->entry_count; e++) {
            const char *id = link->entries [e].id;
            uintptr_t count = (uintptr_t) zhashx_lookup (claimed, id);
            zhashx_update (claimed, id, (void *) (count + 1));
        }
    }
    for (size_t i = 0; i < self->link_count; i++) {
        s_link_t *link = self->links [i];
        for (size_t e = 0; !link->removed && e < link->entry_count; e++) {
            const kim_dir_entry_t *entry = &link->entries [e];
            if (kim_config_org (self->config, entry->id) || streq (entry->id, self->config->name)) {
                zsys_warning ("link: %s publishes %s, which is registered here: ignored",
                              link->conf.name, entry->id);
                continue;
            }
            if ((uintptr_t) zhashx_lookup (claimed, entry->id) > 1) {
                zsys_warning ("link: %s is published by more than one peer: ignored",
                              entry->id);
                continue;
            }
            s_remote_t *remote = (s_remote_t *) calloc (1, sizeof *remote);
            if (!remote)
                break;
            kim_org_t *org = &remote->org;
            kim_str_copy (org->id, sizeof org->id, entry->id);
            kim_str_copy (org->name, sizeof org->name, entry->name);
            kim_str_copy (org->type, sizeof org->type, entry->type);
            org->public_body = entry->public_body;
            org->role = KIM_ROLE_AGENCY;
            kim_str_copy (org->public_key, sizeof org->public_key, entry->public_key);
            kim_str_copy (org->sign_key, sizeof org->sign_key, entry->sign_key);
            kim_str_copy (remote->home, sizeof remote->home, link->conf.name);
            zhashx_insert (self->remote, org->id, remote);
            self->remote_order [self->remote_count++] = remote;
        }
    }
    zhashx_destroy (&claimed);
}

//  Takes a verified PEER_DIRECTORY (encoded in `frame`) as the link's
//  directory. Returns 0 or -KIM_E_*.
static int
s_link_take_directory (s_mod_t *self, s_link_t *link, const uint8_t *data, size_t size)
{
    kim_decode_error_t err;
    int rc = kim_cmd_decode_directory (&self->cmd, data, size, self->entries, KIM_DIRECTORY_MAX,
                                       &err);
    if (rc)
        return rc;
    memcpy (link->entries, self->entries, self->cmd.dir_count * sizeof (kim_dir_entry_t));
    link->entry_count = self->cmd.dir_count;
    link->serial = self->cmd.serial;
    return 0;
}

typedef struct {
    const char *peer;
    const uint8_t *data;
    size_t size;
} s_store_doc_t;

static int
s_store_doc (void *arg, kim_ctx_t *ctx)
{
    s_store_doc_t *doc = (s_store_doc_t *) arg;
    kim_store_t *store = kim_ctx_store (ctx);
    MDB_val key = { strlen (doc->peer), (void *) doc->peer };
    MDB_val value = { doc->size, (void *) doc->data };
    return kim_store_error (store, kim_store_put (store, KIM_DB_REMOTE_DIR, &key, &value, 0),
                            "remote_dir put");
}

//  A peer's PEER_DIRECTORY, read on the ROUTER (the core let only peers
//  send it). Verified, kept if newer, stored, and in force at once.
static int
s_directory_command (s_mod_t *self, kim_ctx_t *ctx, const kim_peer_t *peer,
                     const kim_cmd_t *cmd, kim_verdict_t *verdict)
{
    s_link_t *link = s_link_find (self, peer->org->id);
    const kim_peer_config_t *conf = kim_config_peer (kim_ctx_config (ctx), peer->org->id);
    if (!link || !conf) {
        verdict->code = KIM_E_FORBIDDEN;
        snprintf (verdict->text, sizeof verdict->text, "%s is not a configured peer",
                  peer->org->id);
        return -KIM_E_FORBIDDEN;
    }
    if (!streq (cmd->broker, conf->name)) {
        verdict->code = KIM_E_SENDER_MISMATCH;
        snprintf (verdict->path, sizeof verdict->path, "broker");
        snprintf (verdict->text, sizeof verdict->text, "a peer publishes its own directory "
                  "only; this connection is %s", conf->name);
        return -KIM_E_SENDER_MISMATCH;
    }
    if (kim_link_directory_verify (cmd, conf->sign_key)) {
        zsys_warning ("link: the directory of %s does not verify with its sign_key: ignored",
                      conf->name);
        verdict->code = KIM_E_BAD_SIGNATURE;
        snprintf (verdict->path, sizeof verdict->path, "sig");
        snprintf (verdict->text, sizeof verdict->text, "the directory's signature does not "
                  "verify with peers/%s/sign_key", conf->name);
        return -KIM_E_BAD_SIGNATURE;
    }
    if (cmd->serial <= link->serial) {
        if (cmd->serial < link->serial)
            zsys_warning ("link: %s sent directory %" PRIu64 ", older than %" PRIu64 ": ignored",
                          conf->name, cmd->serial, link->serial);
        verdict->code = KIM_E_STALE;
        snprintf (verdict->path, sizeof verdict->path, "serial");
        snprintf (verdict->text, sizeof verdict->text, "serial %" PRIu64 " is not above %"
                  PRIu64 ", the directory held", cmd->serial, link->serial);
        return cmd->serial == link->serial? 0: -KIM_E_STALE;
    }
    kim_buf_reset (&self->signed_buf);
    int rc = kim_cmd_encode (cmd, &self->signed_buf);
    s_store_doc_t doc = { conf->name, self->signed_buf.data, self->signed_buf.size };
    if (rc == 0)
        rc = kim_ctx_batch (ctx, s_store_doc, &doc);
    if (rc == 0)
        rc = s_link_take_directory (self, link, self->signed_buf.data, self->signed_buf.size);
    if (rc) {
        zsys_error ("link: cannot keep the directory of %s: %s", conf->name, kim_strerror (rc));
        return rc;
    }
    s_remote_rebuild (self);
    zsys_notice ("link: directory %" PRIu64 " of %s: %zu organisations", link->serial,
                 conf->name, link->entry_count);
    return 0;
}

//  Reads the directory kept in the store for `link`, checked again with the
//  sign_key configured now, inside a read of the store the caller opened.
static void
s_load_directory (s_mod_t *self, s_link_t *link)
{
    MDB_txn *txn = kim_store_txn (self->store);
    MDB_dbi dbi = kim_store_dbi (self->store, KIM_DB_REMOTE_DIR);
    MDB_val key = { strlen (link->conf.name), link->conf.name }, value;
    if (mdb_get (txn, dbi, &key, &value) != 0 || value.mv_size > KIM_FRAME_MAX)
        return;
    kim_decode_error_t err;
    if (kim_cmd_decode_directory (&self->cmd, value.mv_data, value.mv_size, self->entries,
                                  KIM_DIRECTORY_MAX, &err) == 0
    &&  self->cmd.id == KIM_CMD_PEER_DIRECTORY && streq (self->cmd.broker, link->conf.name)
    &&  kim_link_directory_verify (&self->cmd, link->conf.sign_key) == 0) {
        memcpy (link->entries, self->entries, self->cmd.dir_count * sizeof (kim_dir_entry_t));
        link->entry_count = self->cmd.dir_count;
        link->serial = self->cmd.serial;
    }
    else
        zsys_warning ("link: the stored directory of %s does not verify: waiting for a "
                      "new one", link->conf.name);
}

//  Reads the stored directories of the links in `links`: at start, and for
//  the peers a reload configures again, so that a peer's last document is
//  in force, and its serial the one to pass, whenever its link is made.
//  Reads inside the open write batch if there is one (a reload seen in a
//  turn), else in a batch of its own that it abandons.
static void
s_load_directories (s_mod_t *self, s_link_t **links, size_t count)
{
    bool own = kim_store_txn (self->store) == NULL;
    if (count == 0 || (own && kim_store_begin (self->store)))
        return;
    for (size_t i = 0; i < count; i++)
        s_load_directory (self, links [i]);
    if (own)
        kim_store_abort (self->store);
}

//  --------------------------------------------------------------------------
//  The connection this broker dials

static void
s_link_send (s_link_t *link, const kim_buf_t *buf, const void *payload, size_t payload_size,
             bool with_payload)
{
    void *socket = zsock_resolve (link->dealer);
    if (zmq_send (socket, buf->data, buf->size, ZMQ_DONTWAIT | (with_payload? ZMQ_SNDMORE: 0))
        == -1)
        return;
    if (with_payload)
        zmq_send (socket, payload, payload_size, ZMQ_DONTWAIT);
    link->last_send = s_mono ();
}

static void
s_link_send_cmd (s_mod_t *self, s_link_t *link, const kim_cmd_t *cmd)
{
    kim_buf_reset (&self->buf);
    if (kim_cmd_encode (cmd, &self->buf) == 0)
        s_link_send (link, &self->buf, NULL, 0, false);
}

static void
s_link_state (s_link_t *link, s_state_t state, const char *why)
{
    if ((link->state == S_UP) != (state == S_UP))
        zsys_notice ("link: %s %s%s%s (%" PRIu64 " messages queued for it)", link->conf.name,
                     state == S_UP? "up": "down", why? ": ": "", why? why: "",
                     kim_store_mailbox_count (link->mod->store, link->mailbox));
    if ((link->state == S_UP) != (state == S_UP))
        link->since_ms = (uint64_t) zclock_time ();
    link->state = state;
}

//  Drops the connection; what was in flight stays in the mailbox and goes
//  out again, from the oldest, when the link is back.
static void
s_link_down (s_mod_t *self, s_link_t *link, const char *why)
{
    //  Whatever failed, the peer's next endpoint is tried next (16.1)
    link->endpoint++;
    //  A link that does not come up says why, once a minute at most.
    uint64_t now = s_mono ();
    if (link->state != S_UP && why && now - link->warned_at >= 60000) {
        zsys_warning ("link: %s is down: %s (dialling %s next)", link->conf.name, why,
                      link->conf.endpoints [link->endpoint % link->conf.endpoint_count]);
        link->warned_at = now;
    }
    if (link->dealer) {
        zloop_reader_end (self->loop, link->dealer);
        zsock_destroy (&link->dealer);
    }
    s_link_state (link, S_DOWN, why);
    link->flight_count = 0;
    link->sent_upto = 0;
    link->next_try = s_mono () + link->backoff;
    link->backoff = link->backoff * 2 > S_BACKOFF_MAX_MS? S_BACKOFF_MAX_MS: link->backoff * 2;
}

static void
s_publish (s_mod_t *self, s_link_t *link)
{
    const kim_config_t *config = self->config;
    kim_cmd_t *cmd = &self->cmd;
    kim_cmd_init (cmd, KIM_CMD_PEER_DIRECTORY);
    size_t count = 0, listed = 0;
    for (size_t i = 0; i < config->org_count; i++) {
        const kim_org_t *org = &config->orgs [i];
        if (org->revoked || org->role != KIM_ROLE_AGENCY)
            continue;
        listed++;
        if (count == KIM_DIRECTORY_MAX)
            continue;
        kim_dir_entry_t *entry = &self->entries [count++];
        memset (entry, 0, sizeof *entry);
        kim_str_copy (entry->id, sizeof entry->id, org->id);
        kim_str_copy (entry->name, sizeof entry->name, org->name);
        kim_str_copy (entry->type, sizeof entry->type, org->type);
        entry->public_body = org->public_body;
        kim_str_copy (entry->public_key, sizeof entry->public_key, org->public_key);
        kim_str_copy (entry->sign_key, sizeof entry->sign_key, org->sign_key);
    }
    if (listed > count)
        zsys_warning ("link: %zu agencies registered, a directory carries %d: the rest are "
                      "not reachable from other districts", listed, KIM_DIRECTORY_MAX);
    kim_str_copy (cmd->broker, sizeof cmd->broker, config->name);
    cmd->dir = self->entries;
    cmd->dir_count = count;
    cmd->serial = self->serial;
    if (kim_link_directory_sign (cmd, self->sign_secret) == 0)
        s_link_send_cmd (self, link, cmd);
    else
        zsys_error ("link: cannot sign the directory for %s", link->conf.name);
}

static int s_link_ready (zloop_t *loop, zsock_t *reader, void *arg);

static void
s_link_dial (s_mod_t *self, s_link_t *link)
{
    const char *endpoint = link->conf.endpoints [link->endpoint % link->conf.endpoint_count];
    link->dealer = zsock_new (ZMQ_DEALER);
    if (!link->dealer) {
        s_link_down (self, link, "cannot make a socket");
        return;
    }
    zsock_set_linger (link->dealer, 0);
    zcert_apply (self->cert, link->dealer);
    zsock_set_curve_serverkey (link->dealer, link->conf.public_key);
    zsock_set_heartbeat_ivl (link->dealer, 5000);
    zsock_set_heartbeat_timeout (link->dealer, 15000);
    if (zsock_connect (link->dealer, "%s", endpoint) != 0) {
        zsock_destroy (&link->dealer);
        s_link_down (self, link, "cannot dial the endpoint");
        return;
    }
    zloop_reader (self->loop, link->dealer, s_link_ready, link);
    zloop_reader_set_tolerant (self->loop, link->dealer);
    kim_cmd_t *hello = &self->cmd;
    kim_cmd_init (hello, KIM_CMD_HELLO);
    hello->version_count = 1;
    hello->versions [0] = KIM_PROTOCOL_VERSION;
    kim_str_copy (hello->agent, sizeof hello->agent, "kim-broker link");
    hello->window = 0;
    s_link_send_cmd (self, link, hello);
    link->state = S_HELLO;
    link->hello_at = link->last_recv = s_mono ();
    if (self->config->verbose)
        zsys_debug ("link: dialling %s at %s", link->conf.name, endpoint);
}

//  Sends what waits in the link mailbox beyond what is in flight, oldest
//  first, up to the window.
static void
s_link_pump (s_mod_t *self, s_link_t *link)
{
    if (link->state != S_UP || link->flight_count + link->ack_count + link->refusal_count
        >= S_WINDOW)
        return;
    if (kim_store_mailbox_count (self->store, link->mailbox)
        <= link->flight_count + link->ack_count + link->refusal_count)
        return;
    uint64_t seqs [S_WINDOW];
    int max = (int) (S_WINDOW - link->flight_count - link->ack_count - link->refusal_count);
    if (kim_store_read_begin (self->store))
        return;
    int count = kim_store_mailbox_scan (self->store, link->mailbox, link->sent_upto, seqs, NULL,
                                        max);
    //  Like any mail, a message leaves only once its commit is durable
    uint64_t synced = kim_store_synced_head (self->store);
    for (int i = 0; i < count && seqs [i] <= synced; i++) {
        kim_record_t record;
        const uint8_t *payload = NULL;
        size_t payload_size = 0;
        if (kim_store_read (self->store, seqs [i], &record)
        ||  record.kind != KIM_RECORD_MESSAGE)
            break;
        kim_buf_reset (&self->buf);
        if (kim_cmd_encode_forward (seqs [i], record.body, record.body_size, &self->buf))
            break;
        if (kim_store_payload_get (self->store, seqs [i], &payload, &payload_size) < 0)
            break;
        s_link_send (link, &self->buf, payload, payload_size, true);
        link->flights [link->flight_count++] = seqs [i];
        link->sent_upto = seqs [i];
    }
    kim_store_read_end (self->store);
}

//  Takes answered messages out of the link mailbox; refused ones are told
//  to their senders. In a batch of its own (kim_ctx_batch).
static int
s_settle_batch (void *arg, kim_ctx_t *ctx)
{
    s_link_t *link = (s_link_t *) arg;
    kim_store_t *store = kim_ctx_store (ctx);
    for (size_t i = 0; i < link->ack_count; i++) {
        int rc = kim_store_mailbox_del (store, link->mailbox, link->acks [i]);
        if (rc && rc != -KIM_E_NOT_FOUND)
            return rc;
    }
    for (size_t i = 0; i < link->refusal_count; i++) {
        const s_refusal_t *refusal = &link->refusals [i];
        int rc = kim_store_mailbox_del (store, link->mailbox, refusal->seq);
        if (rc == -KIM_E_NOT_FOUND)
            continue;           //  answered before: told already
        if (rc)
            return rc;
        kim_record_t record;
        kim_msg_t original;
        kim_decode_error_t err;
        if ((rc = kim_store_read (store, refusal->seq, &record)))
            return rc;
        if (kim_msg_decode (&original, record.body, record.body_size, &err))
            continue;
        if (!kim_ctx_org (ctx, original.sender))
            continue;           //  a notice of this broker's: nobody to tell
        kim_msg_t notice;
        kim_msg_init (&notice);
        notice.type = KIM_TYPE_UNDELIVERABLE;
        kim_str_copy (notice.ref_msg_id, sizeof notice.ref_msg_id, original.msg_id);
        kim_str_copy (notice.referral_id, sizeof notice.referral_id, original.referral_id);
        kim_str_copy (notice.case_id, sizeof notice.case_id, original.case_id);
        kim_str_copy (notice.org, sizeof notice.org, link->conf.name);
        //  The reason as a code: its name in lower case (POLICY_DENY -> policy_deny).
        const char *name = kim_errname (refusal->code);
        size_t n = 0;
        for (; name [n] && n < KIM_CODE_MAX; n++)
            notice.code [n] = (char) (name [n] >= 'A' && name [n] <= 'Z'? name [n] + 32: name [n]);
        notice.code [n] = 0;
        if (refusal->rule [0] && kim_id_valid (refusal->rule))
            kim_str_copy (notice.rule, sizeof notice.rule, refusal->rule);
        char note [KIM_NOTE_MAX + 1];
        snprintf (note, sizeof note, "refused by %s%s%s: %s", link->conf.name,
                  refusal->rule [0]? ", rule ": "", refusal->rule, refusal->text);
        //  Text from the peer: keep it valid UTF-8 for the header.
        if (!kim_utf8_valid ((const uint8_t *) note, strlen (note)))
            snprintf (note, sizeof note, "refused by %s", link->conf.name);
        kim_str_copy (notice.note, sizeof notice.note, note);
        uint64_t notice_seq;
        if ((rc = kim_ctx_emit (ctx, &notice, original.sender, &notice_seq)))
            return rc;
        //  A referral its recipient's broker never took is closed here
        //  (UNDELIVERABLE), not left SENT.
        if ((rc = kim_lifecycle_undeliverable (ctx, &original, notice_seq)))
            return rc;
        zsys_info ("link: %s refused %s (%s%s%s): the sender is told", link->conf.name,
                   original.msg_id, kim_errname (refusal->code), refusal->rule [0]? ", rule ": "",
                   refusal->rule);
    }
    return 0;
}

static void
s_link_settle (s_mod_t *self, s_link_t *link)
{
    if (!self->ctx || (link->ack_count == 0 && link->refusal_count == 0))
        return;
    if (kim_ctx_batch (self->ctx, s_settle_batch, link) == 0) {
        link->ack_count = 0;
        link->refusal_count = 0;
    }
}

static void
s_flight_remove (s_link_t *link, uint64_t seq)
{
    for (size_t i = 0; i < link->flight_count; i++)
        if (link->flights [i] == seq) {
            memmove (&link->flights [i], &link->flights [i + 1],
                     (link->flight_count - i - 1) * sizeof link->flights [0]);
            link->flight_count--;
            return;
        }
}

//  Answers from the peer on the connection this broker dialled.
static int
s_link_ready (zloop_t *loop, zsock_t *reader, void *arg)
{
    s_link_t *link = (s_link_t *) arg;
    s_mod_t *self = link->mod;
    void *socket = zsock_resolve (reader);
    for (int turn = 0; turn < 256 && link->dealer == reader; turn++) {
        zmq_msg_t frame;
        zmq_msg_init (&frame);
        if (zmq_msg_recv (&frame, socket, ZMQ_DONTWAIT) == -1) {
            zmq_msg_close (&frame);
            break;
        }
        bool more = zmq_msg_more (&frame);
        kim_decode_error_t err;
        int rc = kim_cmd_decode (&self->cmd, zmq_msg_data (&frame), zmq_msg_size (&frame), &err);
        zmq_msg_close (&frame);
        while (more) {                  //  answers have one frame; drop the rest
            zmq_msg_init (&frame);
            if (zmq_msg_recv (&frame, socket, ZMQ_DONTWAIT) == -1)
                more = false;
            else
                more = zmq_msg_more (&frame);
            zmq_msg_close (&frame);
        }
        link->last_recv = s_mono ();
        if (rc) {
            zsys_warning ("link: %s sent a command that does not decode (%s at '%s')",
                          link->conf.name, kim_errname (rc), err.path);
            continue;
        }
        kim_cmd_t *cmd = &self->cmd;
        switch (cmd->id) {
            case KIM_CMD_WELCOME:
                if (!streq (cmd->broker, link->conf.name)) {
                    zsys_error ("link: the broker at %s calls itself %s, not %s: check "
                                "peers/%s", link->conf.endpoints [link->endpoint
                                % link->conf.endpoint_count], cmd->broker, link->conf.name,
                                link->conf.name);
                    s_link_down (self, link, "wrong broker name");
                    break;
                }
                link->heartbeat_ms = cmd->heartbeat_ms;
                link->flight_count = 0;
                link->sent_upto = 0;
                //  Forward nothing before the peer has taken the directory:
                //  it would refuse every sender it does not know yet. A
                //  PING behind it comes back only once it did, or a REJECT
                //  first when it did not.
                link->state = S_SYNC;
                s_publish (self, link);
                kim_cmd_init (&self->cmd, KIM_CMD_PING);
                s_link_send_cmd (self, link, &self->cmd);
                break;
            case KIM_CMD_PEER_ACK:
                s_flight_remove (link, cmd->seq);
                if (link->ack_count == S_WINDOW)
                    s_link_settle (self, link);
                //  Still full (no batch yet): the message goes out again
                //  on the next connection, and the peer acks the duplicate.
                if (link->ack_count < S_WINDOW)
                    link->acks [link->ack_count++] = cmd->seq;
                break;
            case KIM_CMD_PEER_REFUSED:
                //  The peer's store cannot take it now (full, failed, busy):
                //  not the message's fault. It stays, and goes again later.
                if (cmd->code > KIM_E_QUOTA && cmd->code <= KIM_E_BUSY) {
                    s_link_down (self, link, kim_errname (cmd->code));
                    break;
                }
                s_flight_remove (link, cmd->seq);
                if (link->refusal_count == S_WINDOW)
                    s_link_settle (self, link);
                if (link->refusal_count < S_WINDOW) {
                    s_refusal_t *refusal = &link->refusals [link->refusal_count++];
                    refusal->seq = cmd->seq;
                    refusal->code = cmd->code;
                    kim_str_copy (refusal->text, sizeof refusal->text, cmd->text);
                    kim_str_copy (refusal->rule, sizeof refusal->rule, cmd->rule);
                }
                break;
            case KIM_CMD_PONG:
                if (link->state == S_SYNC) {
                    link->backoff = S_BACKOFF_MIN_MS;
                    s_link_state (link, S_UP, NULL);
                }
                break;
            case KIM_CMD_REJECT:
                //  The peer lost the session (it restarted) or refused a
                //  command: start over; nothing is lost, all is resent.
                zsys_warning ("link: %s: REJECT %s: %s", link->conf.name,
                              kim_errname (cmd->code), cmd->text);
                if (cmd->code != KIM_E_STALE)
                    s_link_down (self, link, kim_errname (cmd->code));
                break;
            default:
                zsys_warning ("link: %s sent %s on the link: ignored", link->conf.name,
                              kim_cmd_name (cmd->id));
        }
    }
    if (link->dealer == reader) {
        s_link_settle (self, link);
        s_link_pump (self, link);
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Links made from the configuration, and reloads

static s_link_t *
s_link_new (s_mod_t *self, const kim_peer_config_t *conf)
{
    s_link_t *link = (s_link_t *) calloc (1, sizeof *link);
    if (link)
        link->entries = (kim_dir_entry_t *) calloc (KIM_DIRECTORY_MAX, sizeof (kim_dir_entry_t));
    if (!link || !link->entries) {
        if (link)
            free (link->entries);
        free (link);
        return NULL;
    }
    link->mod = self;
    link->conf = *conf;
    snprintf (link->mailbox, sizeof link->mailbox, KIM_LINK_MAILBOX_PREFIX "%s", conf->name);
    link->backoff = S_BACKOFF_MIN_MS;
    link->since_ms = (uint64_t) zclock_time ();
    return link;
}

static void
s_link_destroy (s_mod_t *self, s_link_t **link_p)
{
    s_link_t *link = *link_p;
    if (link) {
        if (link->dealer) {
            if (self->loop)
                zloop_reader_end (self->loop, link->dealer);
            zsock_destroy (&link->dealer);
        }
        free (link->entries);
        free (link);
        *link_p = NULL;
    }
}

//  A new directory serial: above any published before, also within one ms.
static void
s_next_serial (s_mod_t *self)
{
    uint64_t now = (uint64_t) zclock_time ();
    self->serial = now > self->serial? now: self->serial + 1;
}

static int
s_start (s_mod_t *self, char *error, size_t error_size);

//  The registry was reloaded: follow the peers section (new, removed and
//  re-keyed peers) and publish the directory again to every peer.
static void
s_reconfigure (s_mod_t *self, const kim_config_t *config)
{
    self->config = config;
    char error [256];
    if (config->peer_count && s_start (self, error, sizeof error)) {
        zsys_error ("link: cannot start links: %s", error);
        return;
    }
    for (size_t i = 0; i < self->link_count; i++)
        self->links [i]->removed = true;
    for (size_t i = 0; i < config->peer_count; i++) {
        const kim_peer_config_t *conf = &config->peers [i];
        s_link_t *link = s_link_find (self, conf->name);
        if (link) {
            bool rekeyed = !streq (link->conf.public_key, conf->public_key)
                        || memcmp (link->conf.endpoints, conf->endpoints, sizeof conf->endpoints);
            bool resign = !streq (link->conf.sign_key, conf->sign_key);
            link->conf = *conf;
            link->removed = false;
            if (resign) {
                //  A directory signed with the old key is not believed any more.
                link->entry_count = 0;
                link->serial = 0;
            }
            if (rekeyed && link->state != S_DOWN) {
                s_link_down (self, link, "key or endpoint changed");
                link->next_try = 0;
            }
        }
        else
        if (self->link_count < KIM_PEERS_MAX && (link = s_link_new (self, conf))) {
            self->links [self->link_count++] = link;
            s_load_directories (self, &link, 1);
        }
    }
    for (size_t i = 0; i < self->link_count; ) {
        s_link_t *link = self->links [i];
        if (link->removed) {
            zsys_notice ("link: %s is no longer a peer; its link mailbox keeps %" PRIu64
                         " messages", link->conf.name,
                         kim_store_mailbox_count (self->store, link->mailbox));
            s_link_destroy (self, &self->links [i]);
            self->links [i] = self->links [--self->link_count];
        }
        else
            i++;
    }
    s_remote_rebuild (self);
    s_next_serial (self);
    for (size_t i = 0; i < self->link_count; i++)
        if (self->links [i]->state == S_UP)
            s_publish (self, self->links [i]);
}

static int
s_timer (zloop_t *loop, int timer_id, void *arg);

//  The broker's two keys and the link timer, once there is a peer.
static int
s_start (s_mod_t *self, char *error, size_t error_size)
{
    if (self->cert)
        return 0;
    int rc = kim_audit_signing_key (self->keys_dir, self->sign_secret, error, error_size);
    if (rc == 0) {
        self->cert = kim_keys_broker_cert (self->keys_dir, self->config->name, error, error_size);
        if (!self->cert)
            rc = -KIM_E_KEY;
    }
    if (rc == 0 && self->loop)
        self->timer = zloop_timer (self->loop, S_TIMER_MS, 0, s_timer, self);
    return rc;
}

static int
s_timer (zloop_t *loop, int timer_id, void *arg)
{
    s_mod_t *self = (s_mod_t *) arg;
    uint64_t now = s_mono ();
    for (size_t i = 0; i < self->link_count; i++) {
        s_link_t *link = self->links [i];
        if (link->state == S_DOWN && now >= link->next_try)
            s_link_dial (self, link);
        else
        if ((link->state == S_HELLO || link->state == S_SYNC)
        &&  now - link->hello_at > S_HELLO_TIMEOUT_MS)
            s_link_down (self, link, link->state == S_HELLO? "no WELCOME": "no PONG");
        else
        if (link->state == S_UP) {
            uint64_t beat = link->heartbeat_ms? link->heartbeat_ms: 5000;
            if (now - link->last_recv > 3 * beat)
                s_link_down (self, link, "the peer is silent");
            else {
                if (now - link->last_send >= beat / 2) {
                    kim_cmd_init (&self->cmd, KIM_CMD_PING);
                    s_link_send_cmd (self, link, &self->cmd);
                }
                s_link_settle (self, link);
                s_link_pump (self, link);
            }
        }
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Hooks

static int
s_command (void *state, kim_ctx_t *ctx, const kim_peer_t *peer, const kim_cmd_t *cmd,
           kim_verdict_t *verdict)
{
    s_mod_t *self = (s_mod_t *) state;
    self->ctx = ctx;
    if (cmd->id != KIM_CMD_PEER_DIRECTORY)
        return -KIM_E_UNKNOWN_CMD;
    if (kim_ctx_config (ctx) != self->config)
        s_reconfigure (self, kim_ctx_config (ctx));
    return s_directory_command (self, ctx, peer, cmd, verdict);
}

static int
s_tick (void *state, kim_ctx_t *ctx)
{
    s_mod_t *self = (s_mod_t *) state;
    self->ctx = ctx;
    //  A reload (SIGHUP, RELOAD) gave the server a new config.
    if (kim_ctx_config (ctx) != self->config)
        s_reconfigure (self, kim_ctx_config (ctx));
    return 0;
}

//  A consent names its recipients, some of whom may live in other
//  districts: their brokers check the transfers made under it, so the
//  CONSENT_GRANT (and later its CONSENT_REVOKE) of one of our offices goes
//  to each of those brokers too, through the link mailbox, before any
//  REFERRAL that cites it (seq order). Consents forwarded to us stay here.
static int
s_applied (void *state, kim_ctx_t *ctx, kim_route_t *route)
{
    s_mod_t *self = (s_mod_t *) state;
    const kim_msg_t *msg = route->msg;
    if (self->link_count == 0
    ||  (msg->type != KIM_TYPE_CONSENT_GRANT && msg->type != KIM_TYPE_CONSENT_REVOKE))
        return 0;
    const kim_org_t *sender = kim_ctx_org (ctx, msg->sender);
    if (!sender || sender->role != KIM_ROLE_AGENCY)
        return 0;
    char recipients [KIM_LIST_MAX][KIM_ORG_MAX + 1];
    int count;
    if (msg->type == KIM_TYPE_CONSENT_GRANT) {
        count = (int) (msg->recipient_count < KIM_LIST_MAX? msg->recipient_count: KIM_LIST_MAX);
        memcpy (recipients, msg->recipients, (size_t) count * sizeof recipients [0]);
    }
    else
    if ((count = kim_consent_recipients (ctx, msg->grant_id, recipients)) < 0)
        return count == -KIM_E_NOT_FOUND? 0: count;
    bool sent [KIM_PEERS_MAX] = { false };
    for (int i = 0; i < count; i++) {
        s_remote_t *remote = (s_remote_t *) zhashx_lookup (self->remote, recipients [i]);
        for (size_t l = 0; remote && l < self->link_count; l++)
            if (!sent [l] && streq (self->links [l]->conf.name, remote->home)) {
                int rc = kim_store_mailbox_put_note (kim_ctx_store (ctx),
                                                     self->links [l]->mailbox, route->seq, "");
                if (rc)
                    return rc;
                sent [l] = true;
            }
    }
    return 0;
}

static bool
s_remote (void *state, const char *id, kim_org_t *org, char *home)
{
    s_mod_t *self = (s_mod_t *) state;
    s_remote_t *remote = (s_remote_t *) zhashx_lookup (self->remote, id);
    if (!remote)
        return false;
    *org = remote->org;
    memcpy (home, remote->home, KIM_ORG_MAX + 1);
    return true;
}

static bool
s_remote_at (void *state, size_t index, kim_org_t *org, char *home)
{
    s_mod_t *self = (s_mod_t *) state;
    if (index >= self->remote_count)
        return false;
    s_remote_t *remote = self->remote_order [index];
    *org = remote->org;
    memcpy (home, remote->home, KIM_ORG_MAX + 1);
    return true;
}

static bool
s_link_at (void *state, size_t index, kim_link_info_t *info)
{
    s_mod_t *self = (s_mod_t *) state;
    if (index >= self->link_count)
        return false;
    s_link_t *link = self->links [index];
    memset (info, 0, sizeof *info);
    kim_str_copy (info->peer, sizeof info->peer, link->conf.name);
    info->up = link->state == S_UP;
    info->since_ms = link->since_ms;
    info->queued = kim_store_mailbox_count (self->store, link->mailbox);
    info->in_flight = link->flight_count;
    size_t remote = 0;
    for (size_t i = 0; i < self->remote_count; i++)
        remote += streq (self->remote_order [i]->home, link->conf.name);
    info->remote_orgs = remote;
    return true;
}

static void
s_destroy (void **state_p)
{
    s_mod_t *self = (s_mod_t *) *state_p;
    if (!self)
        return;
    //  The server destroys its reactor before its modules.
    self->loop = NULL;
    for (size_t i = 0; i < self->link_count; i++)
        s_link_destroy (self, &self->links [i]);
    free (self->remote_order);
    zhashx_destroy (&self->remote);
    zcert_destroy (&self->cert);
    sodium_memzero (self->sign_secret, sizeof self->sign_secret);
    kim_buf_free (&self->buf);
    kim_buf_free (&self->signed_buf);
    free (self->entries);
    free (self);
    *state_p = NULL;
}

static void
s_remote_free (void **item)
{
    free (*item);
    *item = NULL;
}

//  The line an operator copies into a peer's config (README, "Connecting
//  two districts"): this broker's CURVE public key and its signing key.
static void
s_log_keys (s_mod_t *self, zcert_t *cert, const uint8_t sign_secret [64])
{
    uint8_t sign_public [32];
    char sign_text [41];
    crypto_sign_ed25519_sk_to_pk (sign_public, sign_secret);
    zmq_z85_encode (sign_text, sign_public, 32);
    zsys_notice ("link: %zu peers, %zu remote organisations known; this broker's keys for its "
                 "peers: public_key = \"%s\", sign_key = \"%s\"", self->link_count,
                 self->remote? zhashx_size (self->remote): 0, zcert_public_txt (cert), sign_text);
}

int
kim_link_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size)
{
    s_mod_t *self = (s_mod_t *) calloc (1, sizeof *self);
    if (self) {
        self->entries = (kim_dir_entry_t *) calloc (KIM_DIRECTORY_MAX, sizeof (kim_dir_entry_t));
        self->remote = zhashx_new ();
        self->remote_order = (s_remote_t **) calloc (KIM_PEERS_MAX * KIM_DIRECTORY_MAX,
                                                     sizeof (s_remote_t *));
    }
    if (!self || !self->entries || !self->remote || !self->remote_order) {
        void *state = self;
        s_destroy (&state);
        snprintf (error, error_size, "link: out of memory");
        return -KIM_E_NOMEM;
    }
    zhashx_set_destructor (self->remote, s_remote_free);
    self->config = env->config;
    self->store = env->store;
    self->loop = env->loop;
    kim_buf_init (&self->buf);
    kim_buf_init (&self->signed_buf);
    hook->name = "link";
    hook->command = s_command;
    hook->tick = s_tick;
    hook->applied = s_applied;
    hook->remote = s_remote;
    hook->remote_at = s_remote_at;
    hook->link_at = s_link_at;
    hook->destroy = s_destroy;
    hook->state = self;
    kim_str_copy (self->keys_dir, sizeof self->keys_dir, env->keys_dir);
    if (env->config->peer_count == 0) {
        //  A broker of one district. Its operator needs its two keys to
        //  configure its first peer at the other end: in the log at start.
        uint8_t secret [64];
        zcert_t *cert = NULL;
        if (kim_audit_signing_key (self->keys_dir, secret, error, error_size) == 0
        &&  (cert = kim_keys_broker_cert (self->keys_dir, env->config->name, error,
                                          error_size)) != NULL)
            s_log_keys (self, cert, secret);
        sodium_memzero (secret, sizeof secret);
        zcert_destroy (&cert);
        error [0] = 0;
        return 0;
    }
    int rc = s_start (self, error, error_size);
    if (rc) {
        void *state = self;
        s_destroy (&state);
        hook->state = NULL;
        return rc;
    }
    for (size_t i = 0; i < env->config->peer_count; i++) {
        s_link_t *link = s_link_new (self, &env->config->peers [i]);
        if (!link) {
            void *state = self;
            s_destroy (&state);
            hook->state = NULL;
            snprintf (error, error_size, "link: out of memory");
            return -KIM_E_NOMEM;
        }
        self->links [self->link_count++] = link;
    }
    s_load_directories (self, self->links, self->link_count);
    s_remote_rebuild (self);
    s_next_serial (self);
    s_log_keys (self, self->cert, self->sign_secret);
    return 0;
}

//  --------------------------------------------------------------------------
//  Self-test

#undef NDEBUG
#include <assert.h>

void
kim_link_test (bool verbose)
{
    assert (sodium_init () >= 0);
    uint8_t pk [crypto_sign_PUBLICKEYBYTES], sk [crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair (pk, sk);
    char pk_txt [41], other_txt [41];
    assert (zmq_z85_encode (pk_txt, pk, 32));
    uint8_t other [crypto_sign_PUBLICKEYBYTES], other_sk [crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair (other, other_sk);
    assert (zmq_z85_encode (other_txt, other, 32));

    kim_dir_entry_t entries [2] = {
        { "jc.coesfeld", "Jobcenter Coesfeld", "jc", true, "", "", "" },
        { "kim.coesfeld", "KIM Coesfeld", "kim", true, "", "", "" }
    };
    memcpy (entries [0].public_key, pk_txt, 41);
    memcpy (entries [1].public_key, pk_txt, 41);
    memcpy (entries [1].sign_key, other_txt, 41);
    kim_cmd_t *cmd = (kim_cmd_t *) malloc (2 * sizeof (kim_cmd_t));
    assert (cmd);
    kim_cmd_init (&cmd [0], KIM_CMD_PEER_DIRECTORY);
    strcpy (cmd [0].broker, "broker.coesfeld");
    cmd [0].dir = entries;
    cmd [0].dir_count = 2;
    cmd [0].serial = 1718000000000;
    assert (kim_link_directory_sign (&cmd [0], sk) == 0 && cmd [0].has_sig);
    assert (kim_link_directory_verify (&cmd [0], pk_txt) == 0);
    assert (kim_link_directory_verify (&cmd [0], other_txt) == -KIM_E_BAD_SIGNATURE);
    assert (kim_link_directory_verify (&cmd [0], "short") == -KIM_E_BAD_SIGNATURE);

    //  What travels verifies on the other side, entries read from the frame.
    kim_buf_t buf;
    kim_buf_init (&buf);
    assert (kim_cmd_encode (&cmd [0], &buf) == 0);
    kim_decode_error_t err;
    assert (kim_cmd_decode (&cmd [1], buf.data, buf.size, &err) == 0);
    assert (cmd [1].dir == NULL && cmd [1].dir_raw);
    assert (kim_link_directory_verify (&cmd [1], pk_txt) == 0);
    if (verbose)
        printf ("  PEER_DIRECTORY of 2 entries: %zu bytes, verifies\n", buf.size);

    //  Any change breaks it: the serial, an entry's key, the broker's name.
    cmd [0].serial++;
    assert (kim_link_directory_verify (&cmd [0], pk_txt) == -KIM_E_BAD_SIGNATURE);
    cmd [0].serial--;
    entries [0].public_key [3] = entries [0].public_key [3] == 'a'? 'b': 'a';
    assert (kim_link_directory_verify (&cmd [0], pk_txt) == -KIM_E_BAD_SIGNATURE);
    entries [0].public_key [3] = pk_txt [3];
    assert (kim_link_directory_verify (&cmd [0], pk_txt) == 0);
    strcpy (cmd [0].broker, "broker.borken");
    assert (kim_link_directory_verify (&cmd [0], pk_txt) == -KIM_E_BAD_SIGNATURE);
    //  A flipped byte of the entries in the frame, too.
    size_t at = (size_t) (cmd [1].dir_raw - buf.data) + 8;
    buf.data [at] ^= 0x01;
    if (kim_cmd_decode (&cmd [1], buf.data, buf.size, &err) == 0)
        assert (kim_link_directory_verify (&cmd [1], pk_txt) == -KIM_E_BAD_SIGNATURE);
    kim_buf_free (&buf);
    free (cmd);
}
