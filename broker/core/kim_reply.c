/*  kim_reply.c — what the broker sends to a peer: frames, commands, REJECTs.

    Shared by the reactor (kim_server.c) and the write batch (kim_batch.c),
    below both: they call it, it calls neither. Everything goes out with
    ZMQ_DONTWAIT through the server's ROUTER socket, encoded in the server's
    scratch buffer (self->buf), so sending allocates nothing.
*/
#include <czmq.h>

#include "kim_reply.h"

//  Keeps [rid size u32][rid][frame size u32][frame] in self->held.
static void
s_hold (kim_server_t *self, const uint8_t *rid, size_t rid_size, const uint8_t *data,
        size_t size)
{
    uint8_t sizes [4];
    for (int i = 0; i < 4; i++)
        sizes [i] = (uint8_t) (rid_size >> (24 - 8 * i));
    int rc = kim_buf_append (&self->held, sizes, 4);
    rc = rc? rc: kim_buf_append (&self->held, rid, rid_size);
    for (int i = 0; i < 4; i++)
        sizes [i] = (uint8_t) (size >> (24 - 8 * i));
    rc = rc? rc: kim_buf_append (&self->held, sizes, 4);
    rc = rc? rc: kim_buf_append (&self->held, data, size);
    if (rc)
        //  Out of memory: the peer misses this answer, as with a full queue
        zsys_error ("server: cannot keep an answer until its batch is on disk");
}

static size_t
s_size_at (const uint8_t *at)
{
    return (size_t) at [0] << 24 | (size_t) at [1] << 16 | (size_t) at [2] << 8 | at [3];
}

void
kim_reply_release (kim_server_t *self)
{
    void *router = zsock_resolve (self->router);
    const uint8_t *at = self->held.data;
    const uint8_t *end = at + self->held.size;
    while (at + 4 <= end) {
        size_t rid_size = s_size_at (at);
        const uint8_t *rid = at + 4;
        size_t size = s_size_at (rid + rid_size);
        const uint8_t *data = rid + rid_size + 4;
        at = data + size;
        if (zmq_send (router, rid, rid_size, ZMQ_SNDMORE | ZMQ_DONTWAIT) != -1)
            zmq_send (router, data, size, ZMQ_DONTWAIT);
    }
    kim_buf_reset (&self->held);
}

void
kim_reply_frames (kim_server_t *self, const uint8_t *rid, size_t rid_size,
                  const uint8_t *payload, size_t payload_size, bool with_payload)
{
    if (self->holding && !with_payload) {
        s_hold (self, rid, rid_size, self->buf.data, self->buf.size);
        return;
    }
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
    if (self->holding) {
        s_hold (self, rid, rid_size, buf->data, buf->size);
        return;
    }
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
