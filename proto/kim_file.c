/*  kim_file.c — a small text file read whole (kim_file.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim_file.h"

char *
kim_file_text (const char *path, size_t max_size, size_t *size, int *why)
{
    *why = 0;
    FILE *file = fopen (path, "rb");
    if (!file) {
        *why = errno;
        return NULL;
    }
    char *text = NULL;
    size_t used = 0, capacity = 0;
    for (;;) {
        if (used + 4096 + 1 > capacity) {
            //  Grown in steps, so that a large limit costs a small file
            //  nothing; reading stops once the limit is passed.
            capacity = capacity? 2 * capacity: 16384;
            char *grown = (char *) realloc (text, capacity);
            if (!grown) {
                *why = ENOMEM;
                break;
            }
            text = grown;
        }
        size_t got = fread (text + used, 1, 4096, file);
        used += got;
        if (used > max_size) {
            *why = EFBIG;
            break;
        }
        if (got < 4096) {
            if (ferror (file))
                *why = EIO;
            break;
        }
    }
    fclose (file);
    if (*why == 0) {
        text [used] = 0;
        if (strlen (text) != used)
            *why = EILSEQ;
    }
    if (*why) {
        free (text);
        return NULL;
    }
    if (size)
        *size = used;
    return text;
}
