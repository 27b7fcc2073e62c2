/*  kim_client_pending.c — what the client keeps of the send side: the
    pending sends and the one waiting request, and putting them on the
    wire.

    Every SEND stays in `pending` — hashed by msg_id so a RECEIPT finds its
    entry in O(1), linked in send order so a resend keeps the order — until
    the broker answers it. When a session is lost (kim_client.c) the next
    one resends everything pending in order with the same msg_ids; the
    broker's de-duplication answers RECEIPT dup=true for what it already
    had, so a sender sees each message receipted once.

    In a version 2 session the queued SEND maps travel as SEND_BATCH frames
    (PROTOCOL.md 8.16), each map followed by its payload, up to 64 a frame.
    Sends wait to be packed while earlier ones await their answers: they go
    when the batch is full, when every earlier send is answered, or when the
    caller is about to wait, so a lone message never waits for company and
    a stream of them fills frames by itself.

    A request (kim_client_request.c) is kept here too, to send it again in
    a new session. It is not a message: it has no msg_id, no place in the
    send window and no receipt.

    Bookkeeping only: a send the socket refuses comes back as -KIM_E_*
    for the caller to end the session (kim_client_i_session_lost); nothing
    here runs the session loop.
*/
#include <string.h>

#include <czmq.h>

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
        entry->batch = self->batches_sent + 1;
        count++;
        entry = entry->next;
    }
    if (count == 0 || kim_batch_end (KIM_CMD_SEND_BATCH, count, 0, &self->buf))
        self->buf.size = 0;
    return entry;
}

//  Sends every pending entry not yet sent in this session, in order.
int
kim_client_i_send_unsent (kim_client_t *self)
{
    while (self->unsent && self->state == KIM_CLIENT_ACTIVE && self->version >= 2) {
        kim_client_entry_t *next = s_pack_batch (self, self->unsent);
        if (self->buf.size == 0) {
            kim_client_i_set_error (self, "out of memory packing a SEND_BATCH");
            return -KIM_E_NOMEM;
        }
        if (kim_client_i_send_frames (self, self->buf.data, self->buf.size, NULL, 0, false))
            return -KIM_E_CLOSED;
        self->batches_sent++;
        self->unsent = next;
    }
    while (self->unsent && self->state == KIM_CLIENT_ACTIVE) {
        kim_client_entry_t *entry = self->unsent;
        entry->batch = 0;
        if (kim_client_i_send_frames (self, entry->data, entry->frame_size,
                                      entry->data + entry->frame_size, entry->payload_size,
                                      entry->payload_size > 0))
            return -KIM_E_CLOSED;
        self->unsent = entry->next;
    }
    return 0;
}

//  An answer answered an entry: hand it to whoever waits. `code` is 0 for
//  a RECEIPT, else the REJECT's.
static void
s_answer (kim_client_t *self, kim_client_entry_t *entry, int code, uint64_t seq, bool dup,
          const char *text, const char *path)
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

    if (self->sync_entry == entry) {
        self->sync_entry = NULL;
        self->sync_done = true;
        self->sync_code = code;
        self->sync_seq = seq;
        self->sync_dup = dup;
        if (code)
            kim_client_i_set_error (self, "%s (%d) %s%s%s", kim_errname (code), code,
                                    text [0]? text: kim_strerror (code),
                                    path [0]? " at ": "", path);
    }
    else {
        kim_client_node_t *node = kim_client_i_node_new (self);
        if (node) {
            node->type = code? KIM_EVENT_REJECT: KIM_EVENT_RECEIPT;
            memcpy (node->msg_id, entry->msg_id, sizeof node->msg_id);
            node->seq = seq;
            node->dup = dup;
            node->code = code;
            kim_client_i_copy (node->text, sizeof node->text, text);
            kim_client_i_copy (node->path, sizeof node->path, path);
            kim_client_i_queue_push (self, node);
        }
    }
    free (entry);
}

void
kim_client_i_resolve (kim_client_t *self, kim_client_entry_t *entry, const kim_cmd_t *answer)
{
    if (answer->id == KIM_CMD_RECEIPT)
        s_answer (self, entry, 0, answer->seq, answer->dup, "", "");
    else
        s_answer (self, entry, answer->code > 0? answer->code: KIM_E_INTERNAL, 0, false,
                  answer->text, answer->path);
}


//  --------------------------------------------------------------------------
//  Frames refused as a whole

//  How many SEND_BATCH frames sent in this session have entries still
//  waiting: a frame's RECEIPT_BATCH answers all of its entries at once, so
//  a frame is unanswered while any of its entries is pending.
static size_t
s_unanswered_batches (kim_client_t *self)
{
    size_t count = 0;
    uint64_t last = 0;
    for (kim_client_entry_t *entry = self->head; entry && entry != self->unsent;
         entry = entry->next)
        if (entry->batch && entry->batch != last) {
            last = entry->batch;
            count++;
        }
    return count;
}

bool
kim_client_i_batch_refused (kim_client_t *self, const kim_cmd_t *reject)
{
    size_t unanswered = s_unanswered_batches (self);
    if (unanswered <= self->refusal_count)
        return false;
    if (self->refusal_count == self->refusal_max) {
        size_t max = self->refusal_max? 2 * self->refusal_max: 4;
        kim_client_refusal_t *refusals = (kim_client_refusal_t *)
            realloc (self->refusals, max * sizeof *refusals);
        if (!refusals)
            return false;               //  then it is an event, as a stray REJECT
        self->refusals = refusals;
        self->refusal_max = max;
    }
    kim_client_refusal_t *refusal = &self->refusals [self->refusal_count++];
    refusal->code = reject->code > 0? reject->code: KIM_E_INTERNAL;
    kim_client_i_copy (refusal->text, sizeof refusal->text, reject->text);
    kim_client_i_copy (refusal->path, sizeof refusal->path, reject->path);
    kim_client_i_batch_settle (self);
    return true;
}

void
kim_client_i_batch_settle (kim_client_t *self)
{
    if (self->refusal_count == 0 || s_unanswered_batches (self) != self->refusal_count)
        return;
    //  Every frame still unanswered is a refused one, in the order sent
    kim_client_entry_t *stop = self->unsent;
    kim_client_entry_t *entry = self->head;
    size_t index = 0;
    uint64_t last = 0;
    while (entry && entry != stop) {
        kim_client_entry_t *next = entry->next;
        if (entry->batch) {
            if (last && entry->batch != last)
                index++;
            last = entry->batch;
            const kim_client_refusal_t *refusal = &self->refusals [index];
            s_answer (self, entry, refusal->code, 0, false, refusal->text, refusal->path);
        }
        entry = next;
    }
    self->refusal_count = 0;
}

void
kim_client_i_batches_new_session (kim_client_t *self)
{
    self->refusal_count = 0;
}


//  --------------------------------------------------------------------------
//  The waiting request

int
kim_client_i_send_request (kim_client_t *self)
{
    self->tx = *self->request;
    int rc = kim_client_i_send_tx (self);
    return rc == -KIM_E_CLOSED? rc: 0;
}
