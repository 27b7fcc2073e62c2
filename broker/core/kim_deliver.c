/*  kim_deliver.c — what the broker hands agents: deliveries from the
    mailboxes into each receiver's window, in seq order, packed into
    DELIVER_BATCH frames for version 2 sessions, and the same seqs again
    when their ack is overdue.

    Below the reactor (kim_server.c), above kim_reply.c: the server calls it
    after a turn; it calls only the store and the reply sender. It hands out
    nothing beyond the store's synced head (kim_store.h, Durability).
*/
#include <czmq.h>

#include "kim_deliver.h"
#include "kim_reply.h"

#define KIM_SCAN_CHUNK      64      //  mailbox entries read per scan

//  A version 2 session's deliveries wait in self->buf as one DELIVER_BATCH
//  until it is full or the turn's deliveries are done.
typedef struct {
    size_t count;
    size_t limit;                   //  bytes in one frame
} s_packing_t;

static void
s_packing_flush (kim_server_t *self, session_t *session, s_packing_t *packing)
{
    if (packing->count == 0)
        return;
    if (kim_batch_end (KIM_CMD_DELIVER_BATCH, packing->count, 0, &self->buf) == 0)
        kim_reply_buf (self, session->rid, session->rid_size, &self->buf);
    packing->count = 0;
}

static int
s_send_delivery (kim_server_t *self, session_t *session, uint64_t seq, bool copy,
                 s_packing_t *packing)
{
    kim_record_t record;
    int rc = kim_store_read (self->store, seq, &record);
    if (rc == 0 && record.kind != KIM_RECORD_MESSAGE)
        rc = -KIM_E_INTERNAL;
    if (rc) {
        zsys_error ("server: mailbox of %s names seq %" PRIu64 " which cannot be read: %s",
                    session->org->org->id, seq, kim_strerror (rc));
        return rc;
    }
    const uint8_t *payload = NULL;
    size_t payload_size = 0;
    if (!copy && (rc = kim_store_payload_get (self->store, seq, &payload, &payload_size)))
        return rc;
    if (packing) {
        //  Room for the header, its DELIVER map and the bin's head
        size_t need = record.body_size + payload_size + 32;
        if (packing->count == KIM_BATCH_MAX
        ||  (packing->count && self->buf.size + need > packing->limit))
            s_packing_flush (self, session, packing);
        size_t mark = self->buf.size;
        if (packing->count == 0) {
            kim_buf_reset (&self->buf);
            mark = 0;
            if ((rc = kim_batch_begin (KIM_CMD_DELIVER_BATCH, &self->buf)))
                return rc;
        }
        rc = kim_cmd_encode_deliver (seq, record.body, record.body_size, &self->buf);
        if (rc == 0)
            rc = kim_batch_payload (payload, payload_size, &self->buf);
        if (rc) {
            self->buf.size = mark;
            return rc;
        }
        packing->count++;
        return 0;
    }
    kim_buf_reset (&self->buf);
    rc = kim_cmd_encode_deliver (seq, record.body, record.body_size, &self->buf);
    if (rc)
        return rc;
    kim_reply_frames (self, session->rid, session->rid_size, payload, payload_size, true);
    return 0;
}

//  Fills the receiver's window from the mailbox, in seq order.
static void
s_deliver (kim_server_t *self, org_state_t *state, uint64_t now)
{
    session_t *session = state->receiver;
    s_packing_t packing = { 0, (size_t) self->config->max_payload + KIM_FRAME_MAX };
    s_packing_t *packed = session && session->version >= 2? &packing: NULL;
    while (session && state->flight_count < session->window) {
        uint64_t seqs [KIM_SCAN_CHUNK];
        uint8_t flags [KIM_SCAN_CHUNK];
        size_t room = session->window - state->flight_count;
        int want = room < KIM_SCAN_CHUNK? (int) room: KIM_SCAN_CHUNK;
        int count = kim_store_mailbox_scan (self->store, state->org->id, state->cursor, seqs,
                                            flags, want);
        if (count <= 0)
            break;
        //  Mail of a commit not yet durable waits (kim_batch_durable)
        uint64_t synced = kim_store_synced_head (self->store);
        for (int i = 0; i < count; i++) {
            if (seqs [i] > synced) {
                count = 0;
                break;
            }
            state->cursor = seqs [i];
            bool copy = (flags [i] & KIM_MAILBOX_COPY) != 0;
            if (s_send_delivery (self, session, seqs [i], copy, packed))
                continue;
            state->flights [state->flight_count].seq = seqs [i];
            state->flights [state->flight_count].copy = copy;
            state->flights [state->flight_count].sent_ms = now;
            state->flight_count++;
            self->delivered++;
        }
        if (count < want)
            break;
    }
    if (packed)
        s_packing_flush (self, session, packed);
}

void
kim_deliver_dirty (kim_server_t *self, uint64_t now)
{
    if (!self->dirty)
        return;
    if (kim_store_read_begin (self->store) == 0) {
        while (self->dirty) {
            org_state_t *state = self->dirty;
            self->dirty = state->next_dirty;
            state->dirty = false;
            s_deliver (self, state, now);
        }
        kim_store_read_end (self->store);
    }
}

void
kim_deliver_overdue (kim_server_t *self, uint64_t now)
{
    if (kim_store_read_begin (self->store))
        return;
    for (org_state_t *state = (org_state_t *) zhashx_first (self->orgs); state;
         state = (org_state_t *) zhashx_next (self->orgs)) {
        if (!state->receiver)
            continue;
        s_packing_t packing = { 0, (size_t) self->config->max_payload + KIM_FRAME_MAX };
        s_packing_t *packed = state->receiver->version >= 2? &packing: NULL;
        for (size_t i = 0; i < state->flight_count; i++) {
            flight_t *flight = &state->flights [i];
            if (now - flight->sent_ms >= self->config->redeliver_ms
            &&  s_send_delivery (self, state->receiver, flight->seq, flight->copy,
                                 packed) == 0) {
                flight->sent_ms = now;
                self->redelivered++;
            }
        }
        if (packed)
            s_packing_flush (self, state->receiver, packed);
    }
    kim_store_read_end (self->store);
}
