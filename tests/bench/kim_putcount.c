/*  kim_putcount.c — counts a process's LMDB writes per named database.

    A preload library for measuring, never linked into kim: it wraps
    mdb_dbi_open (to learn each handle's name), mdb_put, mdb_del and
    mdb_cursor_del, and after every 16th commit and at exit rewrites the
    file named by KIM_PUTCOUNT with one line per database, "<database>
    puts <n> dels <n>", and the commits (rewritten as it goes, because a
    benchmark may end its broker with SIGKILL). Used to report LMDB writes per message beside the
    benchmark's figures (tests/bench/README.md):

        LD_PRELOAD=.../libkim_putcount.so KIM_PUTCOUNT=/tmp/puts.txt kim-bench ...

    Handles are numbered per environment, and the broker opens two (the
    store and its key store), so a handle's name is the last name opened
    with that number; the key store's one unnamed database shows as "(main)".
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <lmdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_DBIS 64

static char s_names [S_DBIS][32];
static atomic_ulong s_puts [S_DBIS];
static atomic_ulong s_dels [S_DBIS];
static atomic_ulong s_commits;

typedef int (dbi_open_fn) (MDB_txn *, const char *, unsigned int, MDB_dbi *);
typedef int (put_fn) (MDB_txn *, MDB_dbi, MDB_val *, MDB_val *, unsigned int);
typedef int (del_fn) (MDB_txn *, MDB_dbi, MDB_val *, MDB_val *);
typedef int (cursor_del_fn) (MDB_cursor *, unsigned int);
typedef int (commit_fn) (MDB_txn *);

//  The library's own function of that name
#define S_REAL(name, type) \
    static type *real = NULL; \
    if (!real) real = (type *) dlsym (RTLD_NEXT, name)

int
mdb_dbi_open (MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi)
{
    S_REAL ("mdb_dbi_open", dbi_open_fn);
    int rc = real (txn, name, flags, dbi);
    if (rc == 0 && *dbi < S_DBIS)
        snprintf (s_names [*dbi], sizeof s_names [*dbi], "%s", name? name: "(main)");
    return rc;
}

int
mdb_put (MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags)
{
    S_REAL ("mdb_put", put_fn);
    if (dbi < S_DBIS)
        s_puts [dbi]++;
    return real (txn, dbi, key, data, flags);
}

int
mdb_del (MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
{
    S_REAL ("mdb_del", del_fn);
    if (dbi < S_DBIS)
        s_dels [dbi]++;
    return real (txn, dbi, key, data);
}

int
mdb_cursor_del (MDB_cursor *cursor, unsigned int flags)
{
    S_REAL ("mdb_cursor_del", cursor_del_fn);
    MDB_dbi dbi = mdb_cursor_dbi (cursor);
    if (dbi < S_DBIS)
        s_dels [dbi]++;
    return real (cursor, flags);
}

__attribute__ ((destructor)) static void
s_report (void)
{
    if (!s_commits)
        return;
    const char *path = getenv ("KIM_PUTCOUNT");
    FILE *out = path? fopen (path, "w"): stderr;
    if (!out)
        return;
    for (int i = 0; i < S_DBIS; i++)
        if (s_puts [i] || s_dels [i])
            fprintf (out, "%s puts %lu dels %lu\n", s_names [i][0]? s_names [i]: "?",
                     (unsigned long) s_puts [i], (unsigned long) s_dels [i]);
    fprintf (out, "commits %lu\n", (unsigned long) s_commits);
    if (out != stderr)
        fclose (out);
}

int
mdb_txn_commit (MDB_txn *txn)
{
    S_REAL ("mdb_txn_commit", commit_fn);
    int rc = real (txn);
    if (++s_commits % 16 == 0 && getenv ("KIM_PUTCOUNT"))
        s_report ();
    return rc;
}
