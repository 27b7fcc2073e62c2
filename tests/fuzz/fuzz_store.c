/*  fuzz_store.c — libFuzzer target for reading a whole store file.

    `kim audit verify` and `replay` open a data.mdb that may come from
    anywhere (a backup, a copy handed to an auditor). The input is written
    as <tmp>/store/data.mdb; kim_log_open must refuse a damaged file with an
    error (LMDB itself trusts its pages), and a store it opens must be read
    to its end and verified without crashing.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kim/kim_log.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static char s_dir [64];

static void
s_cleanup (void)
{
    char path [128];
    const char *files [] = { "/data.mdb", "/lock.mdb", "" };
    for (size_t i = 0; i < 3; i++) {
        snprintf (path, sizeof path, "%s/" KIM_LOG_STORE_DIR "%s", s_dir, files [i]);
        i < 2? unlink (path): rmdir (path);
    }
    rmdir (s_dir);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char path [128];
    if (!s_dir [0]) {
        snprintf (s_dir, sizeof s_dir, "/tmp/kim-fuzz-store-%ld", (long) getpid ());
        snprintf (path, sizeof path, "%s/" KIM_LOG_STORE_DIR, s_dir);
        mkdir (s_dir, 0700);
        mkdir (path, 0700);
        atexit (s_cleanup);
    }
    snprintf (path, sizeof path, "%s/" KIM_LOG_STORE_DIR "/data.mdb", s_dir);
    FILE *file = fopen (path, "wb");
    if (!file || (size && fwrite (data, 1, size, file) != size))
        abort ();
    fclose (file);

    char why [300];
    why [0] = 0;
    kim_log_t *log = kim_log_open (s_dir, why, sizeof why);
    if (!log) {
        if (!why [0])
            abort ();
        return 0;
    }
    static const uint8_t public_key [32] = { 0x3d, 0x40, 0x17, 0xc3 };
    kim_log_verify_t verify;
    kim_log_verify_init (&verify, public_key, 1, NULL);
    uint64_t head = 0;
    if (kim_log_seek (log, 1, &head) == 0) {
        kim_log_record_t record;
        kim_buf_t buf;
        kim_buf_init (&buf);
        for (int count = 0; count < 100000; count++) {
            int more = kim_log_next (log, &record);
            if (more <= 0)
                break;
            kim_log_verify_step (&verify, &record);
            kim_buf_reset (&buf);
            kim_log_record_to_json (&record, true, &buf);
        }
        kim_buf_free (&buf);
        kim_log_get (log, head, &record);
    }
    kim_log_close (&log);
    return 0;
}
