/*  fuzz_checkpoint.c — libFuzzer target for the checkpoint reader.

    A checkpoint body comes from a log file or a checkpoint file of unknown
    origin. The decoder must refuse anything but the exact 161-byte layout
    without crashing; what it accepts must encode back to the same bytes,
    and its signature check (current and legacy layouts) must not crash.
*/
#include <stdlib.h>
#include <string.h>

#include "kim/kim_log.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    static const uint8_t public_key [32] = { 0x3d, 0x40, 0x17, 0xc3 };
    kim_log_checkpoint_t checkpoint;
    int rc = kim_log_checkpoint_decode (&checkpoint, data, size);
    if (rc) {
        if (rc != -KIM_E_MALFORMED)
            abort ();
        return 0;
    }
    if (size != KIM_LOG_CHECKPOINT_SIZE
    ||  strnlen (checkpoint.key_id, sizeof checkpoint.key_id) != KIM_LOG_KEY_ID_SIZE)
        abort ();
    uint8_t back [KIM_LOG_CHECKPOINT_SIZE];
    kim_log_checkpoint_encode (&checkpoint, back);
    if (memcmp (back, data, size) != 0)
        abort ();
    int layout = kim_log_checkpoint_layout (&checkpoint, public_key);
    if (layout != 0 && layout != KIM_LOG_CHECKPOINT_V1 && layout != KIM_LOG_CHECKPOINT_V2)
        abort ();
    if (kim_log_checkpoint_verify (&checkpoint, public_key) != (layout != 0))
        abort ();

    //  As the end of a log: the checkpoint held outside it
    kim_log_verify_t verify;
    kim_log_verify_init (&verify, public_key, 1, NULL);
    kim_log_verify_end (&verify, &checkpoint, NULL);
    kim_log_verify_init (&verify, NULL, 1, NULL);
    kim_log_verify_end (&verify, &checkpoint, checkpoint.head);
    return 0;
}
