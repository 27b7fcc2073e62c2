/*  kim_reply.h — what the broker sends to a peer: frames, commands, REJECTs.

    The reactor (kim_server.c) and its write batch (kim_batch.c) both answer
    peers; this is the piece they share, below both, so that neither calls
    the other to send. Private to the broker's core.
*/
#ifndef KIM_REPLY_H_INCLUDED
#define KIM_REPLY_H_INCLUDED

#include "kim_server_int.h"

//  Sends [rid][self->buf] or, with_payload, [rid][self->buf][payload].
//  Failures (a vanished peer, a full queue) drop the message: everything the
//  broker sends is either regenerated on request (replies) or redelivered
//  (deliveries).
void
    kim_reply_frames (kim_server_t *self, const uint8_t *rid, size_t rid_size,
                      const uint8_t *payload, size_t payload_size, bool with_payload);
//  While self->holding, frames without a payload (answers) are kept in
//  self->held instead of sent: the answers to a batch wait until its commit
//  is durable (kim_batch_durable). kim_reply_release sends them, in order.
void
    kim_reply_release (kim_server_t *self);
//  Sends a frame already encoded in `buf`.
void
    kim_reply_buf (kim_server_t *self, const uint8_t *rid, size_t rid_size, const kim_buf_t *buf);
//  Encodes `cmd` into self->buf and sends it; a failure drops it.
void
    kim_reply_cmd (kim_server_t *self, const uint8_t *rid, size_t rid_size, const kim_cmd_t *cmd);
//  Fills `reply` as a REJECT with `code` (local 9xx codes travel as
//  INTERNAL, their text stays in the broker's log) and counts it.
void
    kim_reply_reject_fill (kim_server_t *self, kim_cmd_t *reply, int code, const char *msg_id,
                           const char *path, const char *text);
//  Sends a REJECT with `code`, built in self->reply.
void
    kim_reply_reject (kim_server_t *self, const uint8_t *rid, size_t rid_size, int code,
                      const char *msg_id, const char *path, const char *format, ...)
    CHECK_PRINTF (7);

#endif
