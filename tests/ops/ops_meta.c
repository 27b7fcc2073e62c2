/*  ops_meta.c — reads or sets the format version of a kim store, as a
    newer or older release would have left it, for the upgrade test.

    ops_meta STORE_DIR            prints the version, or "none" (version 1)
    ops_meta STORE_DIR VERSION    sets it (0..4294967295)
*/
#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
s_fail (const char *what, int rc)
{
    fprintf (stderr, "ops_meta: %s: %s\n", what, mdb_strerror (rc));
    return 1;
}

int
main (int argc, char *argv [])
{
    if (argc != 2 && argc != 3) {
        fprintf (stderr, "Usage: ops_meta STORE_DIR [VERSION]\n");
        return 2;
    }
    uint32_t version = 0;
    if (argc == 3) {
        char *end;
        errno = 0;
        unsigned long long value = strtoull (argv [2], &end, 10);
        if (errno || *end || end == argv [2] || value > UINT32_MAX) {
            fprintf (stderr, "ops_meta: '%s' is not a version\n", argv [2]);
            return 2;
        }
        version = (uint32_t) value;
    }
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta;
    int rc = mdb_env_create (&env);
    if (rc)
        return s_fail ("env", rc);
    mdb_env_set_maxdbs (env, 32);
    if ((rc = mdb_env_open (env, argv [1], argc == 2? MDB_RDONLY: 0, 0600))
    ||  (rc = mdb_txn_begin (env, NULL, argc == 2? MDB_RDONLY: 0, &txn))) {
        mdb_env_close (env);
        return s_fail (argv [1], rc);
    }
    if ((rc = mdb_dbi_open (txn, "meta", 0, &meta))) {
        mdb_txn_abort (txn);
        mdb_env_close (env);
        return s_fail ("meta", rc);
    }
    MDB_val key = { 7, (void *) "version" }, value;
    if (argc == 2) {
        rc = mdb_get (txn, meta, &key, &value);
        if (rc == MDB_NOTFOUND)
            printf ("none\n");
        else
        if (rc == 0 && value.mv_size == 4) {
            const uint8_t *b = (const uint8_t *) value.mv_data;
            printf ("%" PRIu32 "\n", (uint32_t) b [0] << 24 | (uint32_t) b [1] << 16
                                   | (uint32_t) b [2] << 8 | b [3]);
        }
        else
            printf ("malformed\n");
        mdb_txn_abort (txn);
        rc = 0;
    }
    else {
        uint8_t b [4] = { (uint8_t) (version >> 24), (uint8_t) (version >> 16),
                          (uint8_t) (version >> 8), (uint8_t) version };
        value.mv_size = sizeof b;
        value.mv_data = b;
        rc = mdb_put (txn, meta, &key, &value, 0);
        rc = rc? (mdb_txn_abort (txn), rc): mdb_txn_commit (txn);
    }
    mdb_env_close (env);
    return rc? s_fail ("version", rc): 0;
}
