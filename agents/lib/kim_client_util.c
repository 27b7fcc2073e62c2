/*  kim_client_util.c — the bottom of the client library: error texts,
    small helpers, and putting bytes on the session's socket.

    Everything above uses these; nothing here calls anything above
    (kim_client_int.h shows the layers). Sending reports a refused socket
    as -KIM_E_CLOSED and leaves it to the session loop (kim_client.c) to
    end the session: this file neither opens nor closes sockets.
*/
#include <limits.h>
#include <stdarg.h>
#include <string.h>

#include <czmq.h>

#include "kim_client_int.h"


//  --------------------------------------------------------------------------
//  Small helpers

void
kim_client_i_why (char *why, size_t why_size, const char *format, ...)
{
    if (!why || why_size == 0)
        return;
    va_list args;
    va_start (args, format);
    vsnprintf (why, why_size, format, args);
    va_end (args);
}

//  Formats into a scratch buffer first: callers often pass the previous
//  error text itself as an argument.
void
kim_client_i_verror (kim_client_t *self, const char *format, va_list args)
{
    char text [sizeof self->error];
    vsnprintf (text, sizeof text, format, args);
    memcpy (self->error, text, sizeof text);
}

void
kim_client_i_set_error (kim_client_t *self, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    kim_client_i_verror (self, format, args);
    va_end (args);
}

void
kim_client_i_copy (char *dest, size_t size, const char *src)
{
    snprintf (dest, size, "%s", src? src: "");
}

//  A CURVE key in Z85 is 40 characters from the Z85 alphabet.
bool
kim_client_i_z85_key_valid (const char *key)
{
    uint8_t binary [32];
    return key && strlen (key) == 40 && zmq_z85_decode (binary, key) != NULL;
}

int
kim_client_i_ms_until (int64_t deadline, int64_t now)
{
    if (deadline == INT64_MAX)
        return -1;
    int64_t left = deadline - now;
    return left <= 0? 0: left > INT_MAX? INT_MAX: (int) left;
}


//  --------------------------------------------------------------------------
//  Sending on the session's socket

int
kim_client_i_send_frames (kim_client_t *self, const void *frame, size_t frame_size,
                          const void *payload, size_t payload_size, bool with_payload)
{
    if (!self->handle)
        return -KIM_E_CLOSED;
    int flags = ZMQ_DONTWAIT | (with_payload? ZMQ_SNDMORE: 0);
    if (zmq_send (self->handle, frame, frame_size, flags) == -1
    || (with_payload && zmq_send (self->handle, payload, payload_size, ZMQ_DONTWAIT) == -1)) {
        kim_client_i_set_error (self, "cannot send to the broker: %s", zmq_strerror (zmq_errno ()));
        return -KIM_E_CLOSED;
    }
    self->last_sent = zclock_mono ();
    return 0;
}

//  Encodes self->tx into the scratch buffer and sends it as one frame.
int
kim_client_i_send_tx (kim_client_t *self)
{
    kim_buf_reset (&self->buf);
    int rc = kim_cmd_encode (&self->tx, &self->buf);
    if (rc) {
        kim_client_i_set_error (self, "cannot encode %s: %s", kim_cmd_name (self->tx.id),
                                kim_strerror (rc));
        return rc;
    }
    return kim_client_i_send_frames (self, self->buf.data, self->buf.size, NULL, 0, false);
}
