/*  fuzz_cmd.c — libFuzzer target for the command decoder.

    Hostile bytes must never crash the decoder or make it allocate, and what
    it accepts must survive a round trip: encode succeeds, the encoding
    decodes to the same value and re-encodes to the same bytes. A decoded
    header also round-trips through JSON.
*/
#include <stdlib.h>
#include <string.h>

#include "kim/kim_msg.h"

//  Decoded commands are compared through memcmp; the RECORD body and the
//  directory are borrowed from the input, so the body is compared by
//  content, and ACK numbers past ack_count mean nothing.
static int
s_same (const kim_cmd_t *a, const kim_cmd_t *b, kim_cmd_t *tmp)
{
    if (a->body_size != b->body_size
    ||  (a->body_size && memcmp (a->body, b->body, a->body_size) != 0))
        return 0;
    memcpy (&tmp [0], a, sizeof *a);
    memcpy (&tmp [1], b, sizeof *b);
    tmp [0].body = tmp [1].body = NULL;
    tmp [0].dir_raw = tmp [1].dir_raw = NULL;       //  borrowed, like the body
    tmp [0].dir_raw_size = tmp [1].dir_raw_size = 0;
    for (int i = 0; i < 2; i++)                     //  entries past the count are undefined
        memset (tmp [i].acks + tmp [i].ack_count, 0,
                (KIM_ACKS_MAX - tmp [i].ack_count) * sizeof tmp [i].acks [0]);
    return memcmp (&tmp [0], &tmp [1], sizeof *a) == 0;
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    //  kim_cmd_t is some 14 KB: heap, not stack.
    kim_cmd_t *cmd = malloc (4 * sizeof *cmd);
    if (!cmd)
        abort ();
    kim_cmd_t *back = cmd + 1, *tmp = cmd + 2;
    kim_decode_error_t err;
    int rc = kim_cmd_decode (cmd, data, size, &err);
    //  The id the broker's REJECT carries: bounded, and always a valid id.
    char ref [KIM_ID_MAX + 1];
    if (kim_cmd_ref (data, size, ref) != (ref [0] != 0)
    ||  (ref [0] && !kim_id_valid (ref)))
        abort ();
    if (rc) {
        //  Failures carry a wire code and a terminated path.
        if (rc != -err.code || err.code < 100 || err.code >= 900
        ||  strnlen (err.path, sizeof err.path) > KIM_PATH_MAX)
            abort ();
        free (cmd);
        return 0;
    }
    kim_buf_t buf, again;
    kim_buf_init (&buf);
    kim_buf_init (&again);
    if (kim_cmd_encode (cmd, &buf) != 0)
        abort ();
    if (kim_cmd_decode (back, buf.data, buf.size, &err) != 0)
        abort ();
    if (!s_same (cmd, back, tmp))
        abort ();
    if (kim_cmd_encode (back, &again) != 0 || again.size != buf.size
    ||  memcmp (again.data, buf.data, buf.size) != 0)
        abort ();
    if (cmd->id == KIM_CMD_SEND || cmd->id == KIM_CMD_DELIVER) {
        kim_msg_t *msg = &tmp->msg;
        kim_buf_reset (&again);
        if (kim_msg_to_json (&cmd->msg, &again) != 0)
            abort ();
        if (kim_msg_from_json (msg, (const char *) again.data, again.size, &err) != 0)
            abort ();
        if (memcmp (msg, &cmd->msg, sizeof *msg) != 0)
            abort ();
        if (kim_msg_validate (msg, &err) != 0)
            abort ();
    }
    if (cmd->id == KIM_CMD_DELIVER) {
        kim_buf_t hdr;
        kim_buf_init (&hdr);
        kim_buf_reset (&again);
        if (kim_msg_encode (&cmd->msg, &hdr) != 0
        ||  kim_cmd_encode_deliver (cmd->seq, hdr.data, hdr.size, &again) != 0
        ||  again.size != buf.size || memcmp (again.data, buf.data, buf.size) != 0)
            abort ();
        kim_buf_free (&hdr);
    }
    kim_buf_free (&buf);
    kim_buf_free (&again);
    free (cmd);
    return 0;
}
