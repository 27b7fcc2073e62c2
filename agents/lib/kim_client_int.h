/*  kim_client_int.h — what the client library's files share. Private to
    agents/: applications see only include/kim/kim_client.h.

    Every part of the library reads and writes one kim_client_t, driven by
    the application's own calls (there is no background thread), so the
    struct is defined here once. The files form layers; each calls only
    the layers below it, never one above, so no two files call each other:

      4 the calls that wait (run the session loop and use the bookkeeping)
        kim_client_send.c       kim_client_send, _send_async, _flush
        kim_client_recv.c       kim_client_recv, kim_client_ack
        kim_client_request.c    kim_client_request, _status, _directory
                                (kim_client_send.c asks _directory for the
                                keys it seals to; nothing calls back)
      3 the session loop
        kim_client.c            the socket, HELLO and WELCOME, heartbeat,
                                backoff and reconnect; the pump that reads
                                the broker and fires the timers; the session
                                loss; kim_client_new and kim_client_destroy
      2 the bookkeeping (never runs the loop, never ends a session: a send
        the socket refuses comes back as -KIM_E_* and the caller hands it
        to kim_client_i_session_check)
        kim_client_pending.c    pending sends, the send window's batches,
                                receipts; the waiting request
        kim_client_events.c     the event queue, acks and what is still
                                outstanding
      1 the bottom
        kim_client_util.c       error texts, small helpers, sending frames
        kim_client_seal.c       sealed payloads and signatures
                                (kim_client_seal.h)
        kim_client_cert.c       reading certificates and key files (calls
                                kim_client_util.c only)

    kim_client_pending.c calls kim_client_events.c (a receipt nobody waits
    for becomes an event), not the other way round.

    A function one file defines and another calls is named kim_client_i_*
    and declared below, under the file that defines it, bottom first;
    helpers only one file uses stay static there as s_*.
*/
#ifndef KIM_CLIENT_INT_H_INCLUDED
#define KIM_CLIENT_INT_H_INCLUDED

#include <stdarg.h>

#include <czmq.h>

#include "kim/kim_client.h"
#include "kim_client_seal.h"

//  Where the session is (kim_client.c's state machine).
typedef enum {
    KIM_CLIENT_DISCONNECTED,             //  no socket; reconnect at next_attempt
    KIM_CLIENT_HELLO_SENT,               //  socket up, waiting for WELCOME until hello_deadline
    KIM_CLIENT_ACTIVE,                   //  session open
    KIM_CLIENT_FAILED                    //  the broker refused us for good (fatal)
} kim_client_state_t;

//  One unreceipted SEND: its encoded frame 0 and its payload, in one block.
typedef struct _kim_client_entry_t {
    struct _kim_client_entry_t *prev;
    struct _kim_client_entry_t *next;
    char msg_id [KIM_ID_MAX + 1];       //  the hash key (not duplicated)
    uint64_t batch;                     //  the SEND_BATCH frame it went in this session
                                        //  (numbered from 1), 0 when it went as a SEND
    size_t frame_size;
    size_t payload_size;
    uint8_t data [];                    //  frame, then payload
} kim_client_entry_t;

//  A REJECT without msg_id that refused one of our SEND_BATCH frames as a
//  whole (PROTOCOL.md 5.1), kept until it is known which frame it answers.
typedef struct {
    int code;
    char text [KIM_TEXT_MAX + 1];
    char path [KIM_PATH_MAX + 1];
} kim_client_refusal_t;

//  One queued event for kim_client_recv.
typedef struct _kim_client_node_t {
    struct _kim_client_node_t *next;
    kim_event_type_t type;
    char msg_id [KIM_ID_MAX + 1];
    uint64_t seq;
    bool dup;
    int code;
    char text [KIM_TEXT_MAX + 1];
    char path [KIM_PATH_MAX + 1];
    kim_msg_t *msg;                     //  DELIVER header; kept when the node is recycled
    zmq_msg_t payload;                  //  DELIVER payload, moved from the socket; in a
                                        //  version 2 session the DELIVER_BATCH frame it
                                        //  lies in (shared, not copied)
    size_t payload_offset;              //  where the payload lies in `payload`
    size_t payload_size;
} kim_client_node_t;

struct _kim_client_t {
    //  Configuration (copied)
    char *endpoint;
    char broker_key [41];
    char public_key [41];
    char secret_key [41];
    char agent [KIM_AGENT_MAX + 1];
    uint32_t window;
    uint32_t send_window;
    int timeout_ms;
    bool verbose;                       //  KIM_DEBUG set: log session changes

    //  Session
    zsock_t *dealer;
    void *handle;                       //  libzmq socket of dealer
    kim_client_state_t state;
    int fatal;                          //  KIM_E_* that ended the client, or 0
    int last_code;                      //  KIM_E_* of the last session loss
    char org [KIM_ORG_MAX + 1];
    char broker [KIM_ORG_MAX + 1];
    uint32_t heartbeat_ms;
    uint32_t max_payload;
    uint32_t session_window;
    uint32_t version;                   //  of the protocol in this session (WELCOME)
    bool v1_only;                       //  KIM_PROTOCOL=1: offer version 1 only
    bool welcomed;                      //  a session was opened once
    uint64_t reconnects;
    int backoff_ms;
    int64_t next_attempt;               //  KIM_CLIENT_DISCONNECTED: when to reconnect
    int64_t hello_deadline;             //  KIM_CLIENT_HELLO_SENT: when to give up
    int64_t session_started;
    int64_t last_sent;
    int64_t last_heard;
    int64_t last_ping;

    //  Unreceipted sends
    zhashx_t *pending;                  //  msg_id -> kim_client_entry_t
    kim_client_entry_t *head;           //  oldest
    kim_client_entry_t *tail;
    kim_client_entry_t *unsent;         //  first entry not sent in this session
    size_t pending_count;
    uint64_t batches_sent;              //  SEND_BATCH frames, numbering entry->batch
    kim_client_refusal_t *refusals;     //  whole-frame REJECTs of this session not yet
    size_t refusal_count;               //  matched to their frames (5.1)
    size_t refusal_max;

    //  kim_client_send waits for one entry's answer
    kim_client_entry_t *sync_entry;
    bool sync_done;
    int sync_code;
    uint64_t sync_seq;
    bool sync_dup;

    //  kim_client_request waits for the broker's answer to one command;
    //  the request is kept to send it again after a reconnect.
    kim_cmd_t *request;
    kim_cmd_t *reply;
    bool status_waiting;
    bool status_done;
    int status_code;
    kim_buf_t reply_body;           //  a reply's body (REFERRAL_INFO), copied out of its frame

    //  Events for kim_client_recv
    kim_client_node_t *queue_head;
    kim_client_node_t *queue_tail;
    kim_client_node_t *lent;            //  handed out; its payload lives until the next call
    kim_client_node_t *free_nodes;
    size_t free_count;

    //  Acks not yet sent: `acks` go as ACK; in a version 2 session the
    //  acks of this session's deliveries go as ACK_RANGE, in ranges that
    //  span no delivery still `outstanding` (received, not acked).
    uint64_t acks [KIM_ACKS_MAX];
    size_t ack_count;
    uint64_t range_acks [KIM_ACKS_MAX];
    size_t range_ack_count;
    uint64_t outstanding [KIM_WINDOW_MAX];  //  ascending
    size_t outstanding_count;
    bool ranges_unsafe;                 //  a delivery may have escaped `outstanding`
                                        //  (dropped, or no room): plain ACKs until the
                                        //  next session

    //  Scratch, reused to keep the hot path free of allocations
    kim_buf_t buf;                      //  commands we send at once
    kim_buf_t send_buf;                 //  a SEND being queued (survives pumping)
    zmq_msg_t frame;
    kim_cmd_t tx;
    kim_cmd_t rx;
    bool rx_entry;                      //  rx is an entry of a batch frame, not a frame
    char error [KIM_TEXT_MAX + 256];

    //  Sealed payloads and signatures (kim_client_seal.c)
    kim_seal_t seal;
};


//  --------------------------------------------------------------------------
//  1. kim_client_util.c: helpers, sending on the socket

//  Writes the formatted text into `why`, if there is one.
void
    kim_client_i_why (char *why, size_t why_size, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

//  Sets what kim_client_error says. The arguments may include self->error.
void
    kim_client_i_set_error (kim_client_t *self, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

//  kim_client_i_set_error with a va_list.
void
    kim_client_i_verror (kim_client_t *self, const char *format, va_list args)
    __attribute__ ((format (printf, 2, 0)));

//  Copies `src` (NULL: "") into `dest`, truncated to `size`.
void
    kim_client_i_copy (char *dest, size_t size, const char *src);

//  Whether `key` is a 40-character Z85 CURVE key.
bool
    kim_client_i_z85_key_valid (const char *key);

//  Milliseconds from `now` until `deadline`: 0 when past, -1 for none
//  (INT64_MAX).
int
    kim_client_i_ms_until (int64_t deadline, int64_t now);

//  Sends one frame, and the payload as a second frame when with_payload.
//  Returns 0, or -KIM_E_CLOSED when there is no socket or it refused.
int
    kim_client_i_send_frames (kim_client_t *self, const void *frame, size_t frame_size,
                              const void *payload, size_t payload_size, bool with_payload);

//  Encodes self->tx and sends it as one frame. Returns 0 or -KIM_E_*.
int
    kim_client_i_send_tx (kim_client_t *self);


//  --------------------------------------------------------------------------
//  2. kim_client_events.c: the event queue and acks

//  A cleared node, recycled or new. NULL when out of memory, which ends the
//  client (KIM_E_NOMEM): an event must not be lost silently.
kim_client_node_t *
    kim_client_i_node_new (kim_client_t *self);

//  Frees a node with its header and payload.
void
    kim_client_i_node_free (kim_client_node_t *node);

//  Appends `node` to the events kim_client_recv hands out.
void
    kim_client_i_queue_push (kim_client_t *self, kim_client_node_t *node);

//  Ends the loan of the last event handed out (its payload dies now).
void
    kim_client_i_release_lent (kim_client_t *self);

//  Sends the acks collected so far as one ACK (and in a version 2 session
//  ACK_RANGEs), when the session is open. Returns 0, or -KIM_E_CLOSED when
//  the socket refused them (they are kept for the next session).
int
    kim_client_i_send_acks (kim_client_t *self);

//  A delivery of this session arrived: it is outstanding until acked.
void
    kim_client_i_outstanding_add (kim_client_t *self, uint64_t seq);

//  Takes `seq` off the outstanding list; whether it was on it.
bool
    kim_client_i_outstanding_take (kim_client_t *self, uint64_t seq);

//  Something from the broker was dropped that may have been a delivery:
//  a range could cross it unseen, so this session acks with ACK only.
void
    kim_client_i_ranges_unsafe (kim_client_t *self);

//  A new session: nothing of it is outstanding; acks of the last one go as
//  ACK.
void
    kim_client_i_acks_new_session (kim_client_t *self);


//  --------------------------------------------------------------------------
//  2. kim_client_pending.c: pending sends and the waiting request

//  Sends every pending entry not yet sent in this session, in order; in a
//  version 2 session up to KIM_BATCH_MAX of them in each SEND_BATCH frame.
//  Returns 0, or -KIM_E_CLOSED / -KIM_E_NOMEM (self->error says why).
int
    kim_client_i_send_unsent (kim_client_t *self);

//  In a version 2 session, whether unsent entries should wait to travel
//  with more: while others await their answers and a batch is not full,
//  unless the caller is about to wait (`waiting`).
bool
    kim_client_i_hold_unsent (kim_client_t *self, bool waiting);

//  A RECEIPT or REJECT answered `entry`: frees it and hands the answer to
//  kim_client_send, if it waits for this one, or else to the event queue.
void
    kim_client_i_resolve (kim_client_t *self, kim_client_entry_t *entry, const kim_cmd_t *answer);

//  A REJECT without msg_id came while SEND_BATCH frames of this session
//  await their answers: it refuses one of them as a whole (PROTOCOL.md
//  5.1). Once as many such REJECTs have come as frames are unanswered, the
//  n-th answers the n-th of those frames: each of its entries is answered
//  with that REJECT (kim_client_i_resolve). Returns false, keeping nothing,
//  when no SEND_BATCH frame awaits an answer: the REJECT is not a frame's.
bool
    kim_client_i_batch_refused (kim_client_t *self, const kim_cmd_t *reject);

//  Answers the frames held REJECTs refuse once the other frames sent
//  before them are answered; call after a RECEIPT_BATCH.
void
    kim_client_i_batch_settle (kim_client_t *self);

//  A new session: frames and their refusals of the last one are forgotten.
void
    kim_client_i_batches_new_session (kim_client_t *self);

//  Sends self->request: when it is made, and again after a reconnect.
//  Returns 0, or -KIM_E_CLOSED when the socket refused it.
int
    kim_client_i_send_request (kim_client_t *self);


//  --------------------------------------------------------------------------
//  3. kim_client.c: the session loop

//  Drops the socket and schedules a reconnect after the backoff; everything
//  pending is sent again in the next session.
void
    kim_client_i_session_lost (kim_client_t *self, int code, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

//  Takes what a bookkeeping send returned: -KIM_E_* (self->error says why)
//  loses the session with that code; 0 does nothing.
void
    kim_client_i_session_check (kim_client_t *self, int rc);

//  One turn of the state machine, waiting at most timeout_ms (-1: until a
//  timer is due). Returns 0, -fatal, or -KIM_E_CLOSED when interrupted.
int
    kim_client_i_pump (kim_client_t *self, int timeout_ms);

//  Pumps until done(self) or timeout_ms (-1: no limit). Returns 0,
//  -KIM_E_TIMEOUT, or the pump's error.
int
    kim_client_i_wait_for (kim_client_t *self, int timeout_ms,
                           bool (*done) (kim_client_t *self));

#endif
