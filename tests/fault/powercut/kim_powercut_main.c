/*  kim-powercut — cuts the power under a broker's data folder after the
    broker was killed: takes back the writes that kim_powercut_shim.c saw
    no flush cover (kim_powercut.h), for tests written in other languages
    (the federation simulation).
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kim_powercut.h"

static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: kim-powercut [--worst] [--seed N] DIR\n"
        "\n"
        "Sets every page that a broker run with LD_PRELOAD=libkim_powercut_shim.so and\n"
        "KIM_POWERCUT_DIR=DIR wrote since its file's last flush back to a version it held\n"
        "in between, as a power cut could, and removes the undo files. Run it after the\n"
        "broker was killed, before it starts again.\n"
        "\n"
        "  --worst   every page to its oldest version (every unflushed write lost);\n"
        "            default: one version drawn at random per page\n"
        "  --seed N  the random draw's seed (default: time and pid)\n"
        "\n"
        "Prints one line of what it took back. Exit 0, or 1 when an undo file could not\n"
        "be read or applied, 2 on bad arguments.\n");
}

int
main (int argc, char *argv [])
{
    bool worst = false;
    uint64_t seed = (uint64_t) time (NULL) ^ ((uint64_t) getpid () << 32);
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp (argv [i], "--help") || !strcmp (argv [i], "-h")) {
            s_usage (stdout);
            return 0;
        }
        if (!strcmp (argv [i], "--worst"))
            worst = true;
        else
        if (!strcmp (argv [i], "--seed") && i + 1 < argc)
            seed = strtoull (argv [++i], NULL, 10);
        else
        if (argv [i][0] != '-' && !dir)
            dir = argv [i];
        else {
            s_usage (stderr);
            return 2;
        }
    }
    if (!dir) {
        s_usage (stderr);
        return 2;
    }
    if (seed == 0)
        seed = 1;               //  xorshift stays at zero
    kim_powercut_stats_t stats;
    if (kim_powercut_apply (dir, worst, &seed, &stats))
        return 1;
    printf ("power cut (%s) in %s: %" PRIu64 " unsynced writes in %" PRIu64 " files, %" PRIu64
            " of %" PRIu64 " pages set back, %" PRIu64 " renames taken back\n",
            worst? "every unsynced page": "pages at random", dir, stats.writes, stats.files,
            stats.pages_back, stats.pages, stats.renames_back);
    return 0;
}
