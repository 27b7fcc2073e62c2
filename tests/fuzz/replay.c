/*  replay.c — runs a fuzz target over its corpus without libFuzzer, so the
    corpus (every crash ever found included) is a regression test in any
    build. Fails when the directory holds no file: an empty corpus would
    pass vacuously.

    Usage: fuzz_<name> corpus/<name>
*/
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
main (int argc, char *argv [])
{
    if (argc != 2) {
        fprintf (stderr, "usage: %s corpus-directory\n", argv [0]);
        return 2;
    }
    DIR *dir = opendir (argv [1]);
    if (!dir) {
        fprintf (stderr, "%s: cannot open %s\n", argv [0], argv [1]);
        return 1;
    }
    size_t files = 0;
    struct dirent *entry;
    while ((entry = readdir (dir))) {
        char path [4096];
        snprintf (path, sizeof path, "%s/%s", argv [1], entry->d_name);
        struct stat st;
        if (stat (path, &st) != 0 || !S_ISREG (st.st_mode))
            continue;
        FILE *file = fopen (path, "rb");
        if (!file) {
            fprintf (stderr, "%s: cannot read %s\n", argv [0], path);
            closedir (dir);
            return 1;
        }
        //  An exact-size copy, so ASan sees reads past the end.
        uint8_t *data = malloc (st.st_size? (size_t) st.st_size: 1);
        size_t size = data? fread (data, 1, (size_t) st.st_size, file): 0;
        fclose (file);
        if (!data || size != (size_t) st.st_size) {
            fprintf (stderr, "%s: cannot read %s\n", argv [0], path);
            free (data);
            closedir (dir);
            return 1;
        }
        LLVMFuzzerTestOneInput (data, size);
        free (data);
        files++;
    }
    closedir (dir);
    if (files == 0) {
        fprintf (stderr, "%s: no inputs in %s\n", argv [0], argv [1]);
        return 1;
    }
    printf ("%s: %zu inputs replayed\n", argv [0], files);
    return 0;
}
