/*  kim_reply.c — what the broker sends to a peer: frames, commands, REJECTs.

    Shared by the reactor (kim_server.c) and the write batch (kim_batch.c),
    below both: they call it, it calls neither. Everything goes out with
    ZMQ_DONTWAIT through the server's ROUTER socket, encoded in the server's
    scratch buffer (self->buf), so sending allocates nothing.
*/
#include <czmq.h>

#include "kim_reply.h"

void
kim_reply_frames (kim_server_t *self, const uint8_t *rid, size_t rid_size,
                  const uint8_t *payload, size_t payload_size, bool with_payload)
{
    void *router = zsock_resolve (self->router);
    if (zmq_send (router, rid, rid_size, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1)
        return;
    if (zmq_send (router, self->buf.data, self->buf.size,
                  (with_payload? ZMQ_SNDMORE: 0) | ZMQ_DONTWAIT) == -1)
        return;
    if (with_payload)
        zmq_send (router, payload, payload_size, ZMQ_DONTWAIT);
}

void
kim_reply_cmd (kim_server_t *self, const uint8_t *rid, size_t rid_size, const kim_cmd_t *cmd)
{
    kim_buf_reset (&self->buf);
    int rc = kim_cmd_encode (cmd, &self->buf);
    if (rc) {
        zsys_error ("server: cannot encode %s: %s", kim_cmd_name (cmd->id), kim_strerror (rc));
        return;
    }
    kim_reply_frames (self, rid, rid_size, NULL, 0, false);
}

void
kim_reply_buf (kim_server_t *self, const uint8_t *rid, size_t rid_size, const kim_buf_t *buf)
{
    void *router = zsock_resolve (self->router);
    if (zmq_send (router, rid, rid_size, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1)
        return;
    zmq_send (router, buf->data, buf->size, ZMQ_DONTWAIT);
}

void
kim_reply_reject_fill (kim_server_t *self, kim_cmd_t *reply, int code, const char *msg_id,
                       const char *path, const char *text)
{
    kim_cmd_init (reply, KIM_CMD_REJECT);
    code = code < 0? -code: code;
    //  Local failures (9xx) never travel: the peer learns that the broker
    //  failed, and the broker's log says how.
    if (code >= 900) {
        zsys_error ("server: refusing a command because of a local failure: %s",
                    kim_strerror (code));
        code = KIM_E_INTERNAL;
        text = NULL;
    }
    reply->code = code;
    if (msg_id)
        kim_str_copy (reply->msg_id, sizeof reply->msg_id, msg_id);
    if (path)
        kim_str_copy (reply->path, sizeof reply->path, path);
    kim_str_copy (reply->text, sizeof reply->text, text? text: kim_strerror (code));
    self->rejected++;
    kim_metrics_count_refusal (self->refused, code);
}

void
kim_reply_reject (kim_server_t *self, const uint8_t *rid, size_t rid_size, int code,
          const char *msg_id, const char *path, const char *format, ...)
{
    char text [KIM_TEXT_MAX + 1];
    if (format) {
        va_list args;
        va_start (args, format);
        vsnprintf (text, sizeof text, format, args);
        va_end (args);
    }
    kim_reply_reject_fill (self, &self->reply, code, msg_id, path, format? text: NULL);
    kim_reply_cmd (self, rid, rid_size, &self->reply);
}
