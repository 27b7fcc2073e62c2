/*  fuzz_json.c — libFuzzer target for kim_msg_from_json.

    JSON from the kim tool's users is input like any other: it must not
    crash the parser or the transcoder, and a header it accepts must
    round-trip through JSON and through the canonical MessagePack encoding.
*/
#include <stdlib.h>
#include <string.h>

#include "kim/kim_msg.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    kim_msg_t *msg = malloc (2 * sizeof *msg);
    if (!msg)
        abort ();
    kim_msg_t *back = msg + 1;
    kim_decode_error_t err;
    int rc = kim_msg_from_json (msg, (const char *) data, size, &err);
    if (rc) {
        if (rc != -err.code || err.code < 100 || err.code >= 1000
        ||  strnlen (err.path, sizeof err.path) > KIM_PATH_MAX)
            abort ();
        free (msg);
        return 0;
    }
    kim_buf_t buf;
    kim_buf_init (&buf);
    if (kim_msg_to_json (msg, &buf) != 0)
        abort ();
    if (kim_msg_from_json (back, (const char *) buf.data, buf.size, &err) != 0)
        abort ();
    if (memcmp (msg, back, sizeof *msg) != 0)
        abort ();
    kim_buf_reset (&buf);
    if (kim_msg_encode (msg, &buf) != 0)
        abort ();
    if (kim_msg_decode (back, buf.data, buf.size, &err) != 0)
        abort ();
    if (memcmp (msg, back, sizeof *msg) != 0)
        abort ();
    //  Whether it passes the per-type rules or not, validation must not crash.
    kim_msg_validate (msg, &err);
    kim_buf_free (&buf);
    free (msg);
    return 0;
}
