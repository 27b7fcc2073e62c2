/*  kim_client_send.c — kim_client_send, kim_client_send_async and
    kim_client_flush: what the application calls to send messages.

    A SEND is sealed, signed and encoded once, when queued, and resent from
    those bytes. At most send_window wait for their answer: a send that
    finds the window full pumps the session until there is room. The
    pending sends themselves are kept in kim_client_pending.c; these calls
    run the session loop (kim_client.c) to wait, and end the session when
    the socket refuses a send.
*/
#include <string.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_client_int.h"

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
        kim_client_i_session_check (self, kim_client_i_send_unsent (self));
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
    kim_client_i_session_check (self, kim_client_i_send_acks (self));
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
