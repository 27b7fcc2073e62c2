/*  kim_client_recv.c — kim_client_recv and kim_client_ack: what the
    application calls to take events and acknowledge deliveries.

    Deliveries are at-least-once: after a reconnect the broker redelivers
    what we had not acked, and the library hands it out again (the same
    seq). Applications that must not process a message twice remember the
    seqs they have handled, as `kim inbox` does.

    The queue and the acks are kept in kim_client_events.c; these calls
    run the session loop (kim_client.c) to wait for an event, and end the
    session when the socket refuses the acks. Events that arrive while the
    caller waits for something else (room in the send window, a flush, a
    STATUS_REPLY, a synchronous receipt) are queued for kim_client_recv.
*/
#include <inttypes.h>
#include <string.h>

#include <czmq.h>

#include "kim_client_int.h"

static bool
s_has_event (kim_client_t *self)
{
    return self->queue_head != NULL;
}


//  --------------------------------------------------------------------------
//  Public API

int
kim_client_recv (kim_client_t *self, kim_event_t *event, int timeout_ms)
{
    if (!self || !event)
        return -KIM_E_ARGS;
    kim_client_i_release_lent (self);
    //  Acks wait while events are queued (one ACK for a batch) but not so
    //  long that the broker's delivery window runs dry.
    uint32_t threshold = self->session_window / 2? self->session_window / 2: 1;
    if (self->ack_count + self->range_ack_count >= threshold)
        kim_client_i_session_check (self, kim_client_i_send_acks (self));
    int rc = kim_client_i_wait_for (self, timeout_ms, s_has_event);
    if (rc) {
        if (rc == -KIM_E_TIMEOUT)
            kim_client_i_set_error (self, "no event within %d ms", timeout_ms);
        return rc;
    }
    kim_client_node_t *node = self->queue_head;
    self->queue_head = node->next;
    if (!self->queue_head)
        self->queue_tail = NULL;
    self->lent = node;

    event->type = node->type;
    memcpy (event->msg_id, node->msg_id, sizeof event->msg_id);
    event->seq = node->seq;
    event->dup = node->dup;
    event->code = node->code;
    memcpy (event->text, node->text, sizeof event->text);
    memcpy (event->path, node->path, sizeof event->path);
    event->sealed_error = false;
    if (node->type == KIM_EVENT_DELIVER) {
        event->msg = *node->msg;
        event->payload = (const uint8_t *) zmq_msg_data (&node->payload) + node->payload_offset;
        event->payload_size = node->payload_size;
        //  Payloads from organisations are sealed to us; the broker's own
        //  messages (reports made from metadata) are not.
        if (!self->seal.plaintext && event->payload_size > 0
        &&  !streq (event->msg.sender, self->broker)) {
            if (kim_seal_open (&self->seal, event->payload, event->payload_size) == 0) {
                event->payload = self->seal.opened.data;
                event->payload_size = self->seal.opened.size;
            }
            else {
                event->sealed_error = true;
                zsys_warning ("kim_client: the payload of seq %" PRIu64 " (%s from %s, %zu "
                              "bytes) does not open with our key: delivered as received, "
                              "flagged sealed_error", event->seq, event->msg.msg_id,
                              event->msg.sender, event->payload_size);
            }
        }
    }
    else {
        kim_msg_init (&event->msg);
        event->payload = NULL;
        event->payload_size = 0;
    }
    return 0;
}

int
kim_client_ack (kim_client_t *self, uint64_t seq)
{
    if (!self || seq == 0)
        return -KIM_E_ARGS;
    if (self->fatal)
        return -self->fatal;
    if (self->version >= 2 && self->state == KIM_CLIENT_ACTIVE && !self->ranges_unsafe
    &&  kim_client_i_outstanding_take (self, seq)) {
        self->range_acks [self->range_ack_count++] = seq;
        if (self->range_ack_count == KIM_ACKS_MAX)
            kim_client_i_session_check (self, kim_client_i_send_acks (self));
        //  Not connected: keep the newest, the broker redelivers the rest
        if (self->range_ack_count == KIM_ACKS_MAX) {
            memmove (self->range_acks, self->range_acks + 1,
                     (KIM_ACKS_MAX - 1) * sizeof self->range_acks [0]);
            self->range_ack_count--;
        }
        return 0;
    }
    self->acks [self->ack_count++] = seq;
    if (self->ack_count == KIM_ACKS_MAX) {
        kim_client_i_session_check (self, kim_client_i_send_acks (self));
        //  Not connected: keep the newest, the broker redelivers the rest
        if (self->ack_count == KIM_ACKS_MAX) {
            memmove (self->acks, self->acks + 1, (KIM_ACKS_MAX - 1) * sizeof self->acks [0]);
            self->ack_count--;
        }
    }
    return 0;
}
