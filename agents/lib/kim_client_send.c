/*  kim_client_send.c — the send side of the client library: pending sends,
    the send window, resends after a reconnect, and receipts.

    Every SEND stays in `pending` — hashed by msg_id so a RECEIPT finds its
    entry in O(1), linked in send order so a resend keeps the order — until
    the broker answers it. When a session is lost (kim_client.c) the next
    one resends everything pending in order with the same msg_ids; the
    broker's de-duplication answers RECEIPT dup=true for what it already
    had, so a sender sees each message receipted once.

    A SEND is sealed, signed and encoded once, when queued, and resent from
    those bytes. At most send_window wait for their answer: a send that
    finds the window full pumps the session until there is room.

    In a version 2 session the queued SEND maps travel as SEND_BATCH frames
    (PROTOCOL.md 8.16), each map followed by its payload, up to 64 a frame.
    Sends wait to be packed while earlier ones await their answers: they go
    when the batch is full, when every earlier send is answered, or when the
    caller is about to wait, so a lone message never waits for company and
    a stream of them fills frames by itself.
*/
#include <string.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_client_int.h"

bool
kim_client_i_hold_unsent (kim_client_t *self, bool waiting)
{
    if (self->version < 2 || waiting || !self->unsent || self->unsent == self->head)
        return false;
    size_t count = 0;
    for (kim_client_entry_t *entry = self->unsent; entry && count < KIM_BATCH_MAX;
         entry = entry->next)
        count++;
    return count < KIM_BATCH_MAX;
}

//  Packs unsent entries into one SEND_BATCH in self->buf, at most
//  KIM_BATCH_MAX and max_payload + KIM_FRAME_MAX bytes; returns the first
//  entry not packed.
static kim_client_entry_t *
s_pack_batch (kim_client_t *self, kim_client_entry_t *entry)
{
    size_t limit = (size_t) self->max_payload + KIM_FRAME_MAX;
    size_t count = 0;
    kim_buf_reset (&self->buf);
    if (kim_batch_begin (KIM_CMD_SEND_BATCH, &self->buf))
        return entry;
    while (entry && count < KIM_BATCH_MAX) {
        size_t need = entry->frame_size + entry->payload_size + 5;
        if (count && self->buf.size + need > limit)
            break;
        size_t mark = self->buf.size;
        if (kim_buf_append (&self->buf, entry->data, entry->frame_size)
        ||  kim_batch_payload (entry->data + entry->frame_size, entry->payload_size, &self->buf)) {
            self->buf.size = mark;
            break;
        }
        count++;
        entry = entry->next;
    }
    if (count == 0 || kim_batch_end (KIM_CMD_SEND_BATCH, count, 0, &self->buf))
        self->buf.size = 0;
    return entry;
}

//  Sends every pending entry not yet sent in this session, in order.
void
kim_client_i_send_unsent (kim_client_t *self)
{
    while (self->unsent && self->state == KIM_CLIENT_ACTIVE && self->version >= 2) {
        kim_client_entry_t *next = s_pack_batch (self, self->unsent);
        if (self->buf.size == 0) {
            kim_client_i_session_lost (self, KIM_E_NOMEM, "out of memory packing a SEND_BATCH");
            return;
        }
        if (kim_client_i_send_frames (self, self->buf.data, self->buf.size, NULL, 0, false)) {
            kim_client_i_session_lost (self, KIM_E_CLOSED, "%s", self->error);
            return;
        }
        self->unsent = next;
    }
    while (self->unsent && self->state == KIM_CLIENT_ACTIVE) {
        kim_client_entry_t *entry = self->unsent;
        if (kim_client_i_send_frames (self, entry->data, entry->frame_size,
                                      entry->data + entry->frame_size, entry->payload_size,
                                      entry->payload_size > 0)) {
            kim_client_i_session_lost (self, KIM_E_CLOSED, "%s", self->error);
            return;
        }
        self->unsent = entry->next;
    }
}

//  A RECEIPT or REJECT answered an entry: hand the answer to whoever waits.
void
kim_client_i_resolve (kim_client_t *self, kim_client_entry_t *entry, const kim_cmd_t *answer)
{
    zhashx_delete (self->pending, entry->msg_id);
    if (entry->prev)
        entry->prev->next = entry->next;
    else
        self->head = entry->next;
    if (entry->next)
        entry->next->prev = entry->prev;
    else
        self->tail = entry->prev;
    if (self->unsent == entry)
        self->unsent = entry->next;
    self->pending_count--;

    bool receipt = answer->id == KIM_CMD_RECEIPT;
    int code = receipt? 0: answer->code > 0? answer->code: KIM_E_INTERNAL;
    if (self->sync_entry == entry) {
        self->sync_entry = NULL;
        self->sync_done = true;
        self->sync_code = code;
        self->sync_seq = answer->seq;
        self->sync_dup = answer->dup;
        if (!receipt)
            kim_client_i_set_error (self, "%s (%d) %s%s%s", kim_errname (code), code,
                                    answer->text [0]? answer->text: kim_strerror (code),
                                    answer->path [0]? " at ": "", answer->path);
    }
    else {
        kim_client_node_t *node = kim_client_i_node_new (self);
        if (node) {
            node->type = receipt? KIM_EVENT_RECEIPT: KIM_EVENT_REJECT;
            memcpy (node->msg_id, entry->msg_id, sizeof node->msg_id);
            node->seq = answer->seq;
            node->dup = answer->dup;
            node->code = code;
            if (!receipt) {
                kim_client_i_copy (node->text, sizeof node->text, answer->text);
                kim_client_i_copy (node->path, sizeof node->path, answer->path);
            }
            kim_client_i_queue_push (self, node);
        }
    }
    free (entry);
}

static bool
s_sync_done (kim_client_t *self)
{
    return self->sync_done;
}

static bool
s_flushed (kim_client_t *self)
{
    return self->pending_count == 0 && self->ack_count == 0 && self->range_ack_count == 0;
}

//  Makes sure the sealing key of `org` is cached, asking the directory.
static int
s_seal_lookup (kim_client_t *self, const char *org)
{
    if (kim_seal_key (&self->seal, org))
        return 0;
    const kim_dir_entry_t *entries;
    size_t count;
    int rc = kim_client_directory (self, org, &entries, &count, self->timeout_ms);
    if (rc == 0 && !kim_seal_key (&self->seal, org)) {
        kim_client_i_set_error (self, "%s is not in the broker's directory: no key to seal the "
                                "payload to (unregistered or revoked organisation)", org);
        return -KIM_E_UNKNOWN_RECIPIENT;
    }
    if (rc) {
        char why [sizeof self->error];
        kim_str_copy (why, sizeof why, self->error);
        kim_client_i_set_error (self, "cannot get the sealing key of %s from the directory: %s",
                                org, why);
    }
    return rc;
}


//  --------------------------------------------------------------------------
//  Public API

int
kim_client_send_async (kim_client_t *self, kim_msg_t *msg, const void *payload, size_t size)
{
    if (!self || !msg || (size > 0 && !payload))
        return -KIM_E_ARGS;
    kim_client_i_release_lent (self);
    if (self->fatal)
        return -self->fatal;
    uint32_t limit = self->max_payload? self->max_payload: KIM_PAYLOAD_MAX;
    if (size > limit) {
        kim_client_i_set_error (self, "payload of %zu bytes exceeds the broker's limit of %u bytes",
                                size, limit);
        return -KIM_E_TOO_LARGE;
    }
    if (!msg->msg_id [0]) {
        uint8_t random [16];
        randombytes_buf (random, sizeof random);
        sodium_bin2hex (msg->msg_id, sizeof msg->msg_id, random, sizeof random);
    }
    if (msg->schema == 0)
        msg->schema = KIM_SCHEMA_VERSION;
    if (msg->created_at == 0)
        msg->created_at = (uint64_t) zclock_time ();

    if (zhashx_lookup (self->pending, msg->msg_id)) {
        kim_client_i_set_error (self, "msg_id '%s' is already waiting for its receipt",
                                msg->msg_id);
        return -KIM_E_ARGS;
    }
    //  Seal to the organisation the payload is for; the broker sees
    //  ciphertext only. From here on, payload/size are what goes on the wire.
    const char *target = kim_seal_target (msg);
    if (!self->seal.plaintext && size > 0 && target [0]) {
        int rc = s_seal_lookup (self, target);
        if (rc)
            return rc;
        rc = kim_seal_payload (&self->seal, kim_seal_key (&self->seal, target), payload, size);
        if (rc) {
            kim_client_i_set_error (self, "cannot seal the payload to %s: %s", target,
                                    kim_strerror (rc));
            return rc;
        }
        payload = self->seal.sealed.data;
        size = self->seal.sealed.size;
        if (size > limit) {
            kim_client_i_set_error (self, "sealed payload of %zu bytes exceeds the broker's "
                                    "limit of %u bytes", size, limit);
            return -KIM_E_TOO_LARGE;
        }
    }
    if (self->seal.signing) {
        int rc = kim_seal_sign (&self->seal, msg, self->org, payload, size);
        if (rc) {
            kim_client_i_set_error (self, "cannot sign %s: %s", msg->msg_id, kim_strerror (rc));
            return rc;
        }
    }
    //  Encode once, now: the encoder applies the broker's own header rules,
    //  so we refuse here what the broker would refuse anyway, with the same
    //  code. Resends reuse these bytes.
    self->tx.id = KIM_CMD_SEND;         //  only SEND's fields matter: no full init
    self->tx.msg = *msg;
    kim_buf_reset (&self->send_buf);
    int rc = kim_cmd_encode (&self->tx, &self->send_buf);
    if (rc) {
        kim_decode_error_t derr = { 0, "" };
        bool located = kim_msg_validate (msg, &derr) == rc && derr.path [0];
        kim_client_i_set_error (self, "%s (%d) %s%s%s", kim_errname (rc), -rc, kim_strerror (rc),
                                located? " at ": "", located? derr.path: "");
        return rc;
    }

    //  Wait for room. Give up when the broker has answered nothing for
    //  timeout_ms: the message is then not queued and stays the caller's.
    int64_t stall_deadline = zclock_mono () + self->timeout_ms;
    while (self->pending_count >= self->send_window) {
        size_t before = self->pending_count;
        int wait = kim_client_i_ms_until (stall_deadline, zclock_mono ());
        if (wait == 0) {
            kim_client_i_set_error (self, "send window full (%zu unreceipted) and no answer from "
                                    "the broker for %d ms (%s)", self->pending_count,
                                    self->timeout_ms,
                                    self->state == KIM_CLIENT_ACTIVE? "session open": self->error);
            return -KIM_E_TIMEOUT;
        }
        rc = kim_client_i_pump (self, wait);
        if (rc)
            return rc;
        if (self->pending_count < before)
            stall_deadline = zclock_mono () + self->timeout_ms;
    }

    kim_buf_t *frame = &self->send_buf;
    kim_client_entry_t *entry =
        (kim_client_entry_t *) malloc (sizeof (kim_client_entry_t) + frame->size + size);
    if (!entry) {
        kim_client_i_set_error (self, "out of memory queueing a message");
        return -KIM_E_NOMEM;
    }
    memcpy (entry->msg_id, msg->msg_id, sizeof entry->msg_id);
    entry->frame_size = frame->size;
    entry->payload_size = size;
    memcpy (entry->data, frame->data, frame->size);
    if (size)
        memcpy (entry->data + frame->size, payload, size);
    if (zhashx_insert (self->pending, entry->msg_id, entry)) {
        free (entry);
        kim_client_i_set_error (self, "msg_id '%s' is already waiting for its receipt",
                                msg->msg_id);
        return -KIM_E_ARGS;
    }
    entry->next = NULL;
    entry->prev = self->tail;
    if (self->tail)
        self->tail->next = entry;
    else
        self->head = entry;
    self->tail = entry;
    self->pending_count++;
    if (!self->unsent)
        self->unsent = entry;
    if (self->state == KIM_CLIENT_ACTIVE && !kim_client_i_hold_unsent (self, false))
        kim_client_i_send_unsent (self);
    return 0;
}

int
kim_client_send (kim_client_t *self, kim_msg_t *msg, const void *payload, size_t size,
                 uint64_t *seq, bool *dup, int timeout_ms)
{
    int rc = kim_client_send_async (self, msg, payload, size);
    if (rc)
        return rc;
    self->sync_entry = self->tail;
    self->sync_done = false;
    rc = kim_client_i_wait_for (self, timeout_ms, s_sync_done);
    if (rc) {
        //  Still pending: its answer will come out of kim_client_recv
        self->sync_entry = NULL;
        if (rc == -KIM_E_TIMEOUT)
            kim_client_i_set_error (self, "no receipt for %s within %d ms", msg->msg_id,
                                    timeout_ms);
        return rc;
    }
    if (self->sync_code)
        return -self->sync_code;
    if (seq)
        *seq = self->sync_seq;
    if (dup)
        *dup = self->sync_dup;
    return 0;
}

int
kim_client_flush (kim_client_t *self, int timeout_ms)
{
    if (!self)
        return -KIM_E_ARGS;
    kim_client_i_release_lent (self);
    kim_client_i_send_acks (self);
    int rc = kim_client_i_wait_for (self, timeout_ms, s_flushed);
    if (rc == -KIM_E_TIMEOUT)
        kim_client_i_set_error (self, "%zu sends still unreceipted after %d ms (%s)",
                                self->pending_count, timeout_ms,
                                self->state == KIM_CLIENT_ACTIVE? "session open": self->error);
    return rc;
}

size_t
kim_client_pending (kim_client_t *self)
{
    return self? self->pending_count: 0;
}
