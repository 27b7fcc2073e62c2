/*  fuzz_cmd.c — libFuzzer target for the command decoder.

    Hostile bytes must never crash the decoder or make it allocate, and what
    it accepts must survive a round trip: encode succeeds, the encoding
    decodes to the same value and re-encodes to the same bytes. A decoded
    header also round-trips through JSON. A version 2 batch frame is split
    and every entry decoded; a batch whose entries all decode re-encodes to
    a frame that splits and decodes to the same entries.
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

static void
s_check_error (int rc, const kim_decode_error_t *err)
{
    if (rc != -err->code || err->code < 100 || err->code >= 900
    ||  strnlen (err->path, sizeof err->path) > KIM_PATH_MAX)
        abort ();
}

//  Splits and decodes a batch frame into `out` re-encoded; returns the
//  entry count, or 0 when the frame or an entry does not decode.
static size_t
s_batch_round (const uint8_t *data, size_t size, kim_cmd_t *cmd, kim_buf_t *out)
{
    kim_entry_t entries [KIM_BATCH_MAX];
    kim_decode_error_t err;
    int rc = kim_batch_split (cmd, data, size, entries, &err);
    if (rc) {
        s_check_error (rc, &err);
        return 0;
    }
    kim_cmd_id_t batch = cmd->id;
    size_t count = cmd->count;
    if (!kim_cmd_is_batch (batch) || count == 0 || count > KIM_BATCH_MAX)
        abort ();
    kim_buf_reset (out);
    if (kim_batch_begin (batch, out))
        abort ();
    size_t good = 0;
    for (size_t i = 0; i < count; i++) {
        const kim_entry_t *entry = &entries [i];
        //  Entries lie inside the frame
        if (entry->cmd < data || entry->cmd + entry->cmd_size > data + size
        ||  (entry->payload && (entry->payload < data
                             || entry->payload + entry->payload_size > data + size)))
            abort ();
        if ((batch == KIM_CMD_RECEIPT_BATCH) != (entry->payload == NULL))
            abort ();
        rc = kim_batch_entry_decode (batch, entry, cmd, &err);
        if (rc) {
            s_check_error (rc, &err);
            continue;
        }
        if (kim_cmd_encode (cmd, out) != 0)
            abort ();
        if (entry->payload && kim_batch_payload (entry->payload, entry->payload_size, out) != 0)
            abort ();
        good++;
    }
    if (good < count)
        return 0;
    if (kim_batch_end (batch, count, 0, out) != 0)
        abort ();
    return count;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    //  kim_cmd_t is some 14 KB: heap, not stack.
    kim_cmd_t *cmd = malloc (4 * sizeof *cmd);
    if (!cmd)
        abort ();
    kim_cmd_t *back = cmd + 1, *tmp = cmd + 2;
    kim_decode_error_t err;
    if (kim_cmd_is_batch (kim_cmd_peek (data, size))) {
        kim_buf_t buf, again;
        kim_buf_init (&buf);
        kim_buf_init (&again);
        size_t count = s_batch_round (data, size, cmd, &buf);
        if (count) {
            //  What decodes re-encodes to a frame that decodes the same way
            if (s_batch_round (buf.data, buf.size, back, &again) != count
            ||  again.size != buf.size || memcmp (again.data, buf.data, buf.size) != 0)
                abort ();
        }
        kim_buf_free (&buf);
        kim_buf_free (&again);
        free (cmd);
        return 0;
    }
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
