/*  kim_client_events.c — what the client keeps of the receive side: the
    event queue and the acks not yet sent.

    The session's reader (kim_client.c) fills the queue and the send side
    (kim_client_pending.c) adds receipts to it; kim_client_recv
    (kim_client_recv.c) empties it. Queue nodes are recycled, and a
    delivery's payload is moved out of the socket, not copied, so a busy
    client does not allocate per event.

    Acks are collected and sent as one ACK; in a version 2 session the acks
    of the session's own deliveries go as ACK_RANGE (PROTOCOL.md 8.19),
    whose ranges span only deliveries the application has acked: the
    library keeps the seqs it received and that are not acked yet
    (`outstanding`), and a range never crosses one.

    Bookkeeping only: a send the socket refuses comes back as -KIM_E_CLOSED
    for the caller to end the session (kim_client_i_session_lost); nothing
    here runs the session loop.
*/
#include <string.h>

#include <czmq.h>

#include "kim_client_int.h"

#define S_FREE_NODES_MAX        4096    //  recycled event nodes kept after a burst


//  --------------------------------------------------------------------------
//  Event queue

kim_client_node_t *
kim_client_i_node_new (kim_client_t *self)
{
    kim_client_node_t *node = self->free_nodes;
    if (node) {
        self->free_nodes = node->next;
        self->free_count--;
    }
    else {
        node = (kim_client_node_t *) calloc (1, sizeof (kim_client_node_t));
        if (!node) {
            //  An event we cannot queue would be lost silently; stop instead.
            self->fatal = KIM_E_NOMEM;
            self->state = KIM_CLIENT_FAILED;
            kim_client_i_set_error (self, "out of memory queueing an event");
            return NULL;
        }
        zmq_msg_init (&node->payload);
    }
    node->next = NULL;
    node->msg_id [0] = 0;
    node->seq = 0;
    node->dup = false;
    node->code = 0;
    node->text [0] = 0;
    node->path [0] = 0;
    return node;
}

void
kim_client_i_node_free (kim_client_node_t *node)
{
    zmq_msg_close (&node->payload);
    free (node->msg);
    free (node);
}

static void
s_node_recycle (kim_client_t *self, kim_client_node_t *node)
{
    //  Release the payload now; a big one should not wait in the free list
    zmq_msg_close (&node->payload);
    zmq_msg_init (&node->payload);
    if (self->free_count < S_FREE_NODES_MAX) {
        node->next = self->free_nodes;
        self->free_nodes = node;
        self->free_count++;
    }
    else
        kim_client_i_node_free (node);
}

void
kim_client_i_queue_push (kim_client_t *self, kim_client_node_t *node)
{
    node->next = NULL;
    if (self->queue_tail)
        self->queue_tail->next = node;
    else
        self->queue_head = node;
    self->queue_tail = node;
}

//  The payload of the last event handed out lives until the next call.
void
kim_client_i_release_lent (kim_client_t *self)
{
    if (self->lent) {
        s_node_recycle (self, self->lent);
        self->lent = NULL;
    }
}

//  Index of the first outstanding seq at or above `seq`.
static size_t
s_outstanding_lower (const kim_client_t *self, uint64_t seq)
{
    size_t low = 0, high = self->outstanding_count;
    while (low < high) {
        size_t mid = (low + high) / 2;
        if (self->outstanding [mid] < seq)
            low = mid + 1;
        else
            high = mid;
    }
    return low;
}

void
kim_client_i_outstanding_add (kim_client_t *self, uint64_t seq)
{
    if (self->version < 2)
        return;
    size_t at = s_outstanding_lower (self, seq);
    if (at < self->outstanding_count && self->outstanding [at] == seq)
        return;                         //  delivered again: still one
    //  Full (cannot happen within a window): a range could cross this seq
    //  unseen, so the session acks with ACK from now on.
    if (self->outstanding_count == KIM_WINDOW_MAX) {
        kim_client_i_ranges_unsafe (self);
        return;
    }
    memmove (self->outstanding + at + 1, self->outstanding + at,
             (self->outstanding_count - at) * sizeof self->outstanding [0]);
    self->outstanding [at] = seq;
    self->outstanding_count++;
}

bool
kim_client_i_outstanding_take (kim_client_t *self, uint64_t seq)
{
    size_t at = s_outstanding_lower (self, seq);
    if (at == self->outstanding_count || self->outstanding [at] != seq)
        return false;
    memmove (self->outstanding + at, self->outstanding + at + 1,
             (self->outstanding_count - at - 1) * sizeof self->outstanding [0]);
    self->outstanding_count--;
    return true;
}

void
kim_client_i_ranges_unsafe (kim_client_t *self)
{
    if (self->version >= 2 && !self->ranges_unsafe)
        zsys_warning ("kim_client: acknowledging with ACK only until the next session");
    self->ranges_unsafe = true;
}

void
kim_client_i_acks_new_session (kim_client_t *self)
{
    self->outstanding_count = 0;
    self->ranges_unsafe = false;
    //  Their deliveries were in flight on the last session: an ACK names them
    for (size_t i = 0; i < self->range_ack_count; i++) {
        if (self->ack_count == KIM_ACKS_MAX)
            break;                      //  the broker delivers these again
        self->acks [self->ack_count++] = self->range_acks [i];
    }
    self->range_ack_count = 0;
}

static int
s_compare_seq (const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y? -1: x > y;
}

//  Sends the range acks as ACK_RANGEs: sorted, each run of acked seqs that
//  no outstanding delivery interrupts is one range.
static int
s_send_ranges (kim_client_t *self)
{
    qsort (self->range_acks, self->range_ack_count, sizeof self->range_acks [0], s_compare_seq);
    size_t i = 0;
    while (i < self->range_ack_count) {
        size_t first = i;
        self->tx.id = KIM_CMD_ACK_RANGE;
        self->tx.range_count = 0;
        while (i < self->range_ack_count && self->tx.range_count < 2 * KIM_RANGES_MAX) {
            uint64_t from = self->range_acks [i], to = from;
            //  Extend while nothing outstanding lies between
            while (i + 1 < self->range_ack_count) {
                uint64_t next = self->range_acks [i + 1];
                size_t at = s_outstanding_lower (self, to + 1);
                if (next == to || (at < self->outstanding_count && self->outstanding [at] < next))
                    break;
                to = next;
                i++;
            }
            i++;
            self->tx.ranges [self->tx.range_count++] = from;
            self->tx.ranges [self->tx.range_count++] = to;
        }
        int rc = kim_client_i_send_tx (self);
        if (rc == -KIM_E_CLOSED) {
            //  What was not sent stays for the next session (as an ACK)
            memmove (self->range_acks, self->range_acks + first,
                     (self->range_ack_count - first) * sizeof self->range_acks [0]);
            self->range_ack_count -= first;
            return rc;
        }
        if (rc) {
            //  An encode failure would repeat forever; drop them but say so
            zsys_warning ("kim_client: dropped %zu range acks: %s",
                          self->range_ack_count - first, self->error);
            break;
        }
    }
    self->range_ack_count = 0;
    return 0;
}

int
kim_client_i_send_acks (kim_client_t *self)
{
    if (self->state != KIM_CLIENT_ACTIVE)
        return 0;
    if (self->range_ack_count) {
        int rc = s_send_ranges (self);
        if (rc == -KIM_E_CLOSED)
            return rc;
    }
    if (self->ack_count == 0)
        return 0;
    //  Only the ACK fields matter for an ACK; skip clearing the big struct
    self->tx.id = KIM_CMD_ACK;
    self->tx.ack_count = self->ack_count;
    memcpy (self->tx.acks, self->acks, self->ack_count * sizeof self->acks [0]);
    int rc = kim_client_i_send_tx (self);
    if (rc == 0)
        self->ack_count = 0;
    else
    if (rc == -KIM_E_CLOSED)
        return rc;
    //  An encode failure would repeat forever; drop the batch but say so
    else {
        zsys_warning ("kim_client: dropped %zu acks: %s", self->ack_count, self->error);
        self->ack_count = 0;
    }
    return 0;
}
