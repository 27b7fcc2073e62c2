/*  test_agent_erasure.c — what an office erases in its kim-agent is gone
    from the agent's disk.

    A real broker and two real agents (kim.a sends, jc.b receives). Payloads
    are sealed at rest: right after they arrived, no file of either agent's
    folder holds one as it was sent. B erases one delivery's payload, then
    every payload about a subject; A erases its sent payloads by itself
    once the broker answered them. Then both agents are stopped and every
    file of their folders is scanned for the erased payloads and for the
    keys they were sealed under: none may be found. A payload B kept, and
    its key, must be found (the scan sees keys) and read back.

    Also: a subject's erasure leaves the payload of a message the broker
    has not answered yet (it is "waiting"), which then arrives whole; and a
    store from before sealing at rest, with a payload as given, is sealed
    at the next start and reads back the same.
*/
#include <czmq.h>
#include <dirent.h>
#include <lmdb.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "kim_agenttest.h"
#include "kim_keystore.h"
#include "kim/kim_log.h"

#define S_SENT  4               //  the REFERRALs m-e0 .. m-e3

static const char *s_payloads [S_SENT] = {
    "warm-up payload about p-e9, kept by B and read back after the scan",
    "ERASE-ME-1 the first referral about p-e1, with a long enough text",
    "ERASE-ME-2 the second referral about p-e1, with a long enough text",
    "ERASE-ME-3 a referral about p-e2 whose one payload B erases by seq",
};
static const char *s_subjects [S_SENT] = { "p-e9", "p-e1", "p-e1", "p-e2" };

static void
s_post (kim_agenttest_t *agent, int index, const char *subject, const char *payload)
{
    char body [1024];
    snprintf (body, sizeof body,
              "{\"type\":\"REFERRAL\",\"msg_id\":\"m-e%d\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r-e%d\",\"case_id\":\"c-e%d\",\"subject\":\"%s\","
              "\"purpose\":\"job_placement\",\"legal_basis\":{\"kind\":\"statute\","
              "\"citation\":\"SGB X §69(1)1\"},\"deadline\":4102444800000,\"payload\":\"%s\"}",
              index, index, index, subject, payload);
    KIM_CHECK (kim_agenttest_call (agent, "POST", "/v1/messages", body, NULL) == 202);
}

//  The deliveries' seqs, oldest first, once B has `count` of them.
static size_t
s_wait_inbox (kim_agenttest_t *agent, size_t count, json_int_t *seqs)
{
    for (int attempt = 0; attempt < 600; attempt++) {
        json_t *json = NULL;
        size_t have = 0;
        if (kim_agenttest_call (agent, "GET", "/v1/inbox?limit=1000", NULL, &json) == 200)
            have = json_array_size (json_object_get (json, "items"));
        for (size_t i = 0; have >= count && i < count; i++)
            seqs [i] = json_integer_value (json_object_get (
                json_array_get (json_object_get (json, "items"), i), "seq"));
        json_decref (json);
        if (have >= count)
            return have;
        zclock_sleep (50);
    }
    return 0;
}

//  The agent's store, opened by this process (read-only unless `write`).
static MDB_env *
s_env (kim_agenttest_t *agent, bool write)
{
    char path [256];
    snprintf (path, sizeof path, "%s/store", agent->dir);
    MDB_env *env;
    KIM_CHECK (mdb_env_create (&env) == 0);
    KIM_CHECK (mdb_env_set_maxdbs (env, 32) == 0);
    KIM_CHECK (mdb_env_set_mapsize (env, (size_t) 1 << 30) == 0);
    KIM_CHECK (mdb_env_open (env, path, MDB_NOTLS | (write? 0: MDB_RDONLY), 0600) == 0);
    return env;
}

//  How many records `db` holds; with `seq`, copies that seq's value.
static size_t
s_records (MDB_env *env, const char *db, uint64_t seq, uint8_t *value, size_t *value_size)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat stat;
    KIM_CHECK (mdb_txn_begin (env, NULL, MDB_RDONLY, &txn) == 0);
    KIM_CHECK (mdb_dbi_open (txn, db, 0, &dbi) == 0);
    KIM_CHECK (mdb_stat (txn, dbi, &stat) == 0);
    if (seq) {
        uint8_t key_bytes [8];
        kim_log_put_be64 (key_bytes, seq);
        MDB_val key = { 8, key_bytes }, found;
        KIM_CHECK (mdb_get (txn, dbi, &key, &found) == 0);
        KIM_CHECK (found.mv_size <= *value_size);
        memcpy (value, found.mv_data, found.mv_size);
        *value_size = found.mv_size;
    }
    mdb_txn_abort (txn);
    return stat.ms_entries;
}

//  The key `id` of the agent's key store; false when it has none.
static bool
s_key (kim_agenttest_t *agent, uint64_t id, uint8_t key [KIM_KEYSTORE_KEY])
{
    char path [256];
    snprintf (path, sizeof path, "%s/store/" KIM_KEYSTORE_DIR, agent->dir);
    kim_keystore_t *keys = kim_keystore_new (path, true, false, (size_t) 256 << 20, NULL);
    KIM_CHECK (keys);
    int found = kim_keystore_get (keys, id, key);
    kim_keystore_destroy (&keys);
    KIM_CHECK (found >= 0);
    return found == 1;
}

//  How many files under `path` hold `needle`.
static int
s_scan (const char *path, const void *needle, size_t size, int *files)
{
    DIR *dir = opendir (path);
    KIM_CHECK (dir);
    int hits = 0;
    struct dirent *entry;
    while ((entry = readdir (dir))) {
        if (streq (entry->d_name, ".") || streq (entry->d_name, ".."))
            continue;
        char child [512];
        snprintf (child, sizeof child, "%s/%s", path, entry->d_name);
        struct stat st;
        if (lstat (child, &st) != 0)
            continue;
        if (S_ISDIR (st.st_mode)) {
            hits += s_scan (child, needle, size, files);
            continue;
        }
        if (!S_ISREG (st.st_mode))
            continue;
        FILE *file = fopen (child, "rb");
        KIM_CHECK (file);
        uint8_t *bytes = (uint8_t *) malloc ((size_t) st.st_size + 1);
        KIM_CHECK (bytes);
        size_t got = fread (bytes, 1, (size_t) st.st_size, file);
        fclose (file);
        if (memmem (bytes, got, needle, size)) {
            printf ("  found in %s\n", child);
            hits++;
        }
        free (bytes);
        if (files)
            (*files)++;
    }
    closedir (dir);
    return hits;
}

static void
s_stop (kim_agenttest_t *agent)
{
    int status = kim_agenttest_stop (agent, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
}

static int
s_scan_both (kim_agenttest_t *a, kim_agenttest_t *b, const void *needle, size_t size)
{
    return s_scan (a->dir, needle, size, NULL) + s_scan (b->dir, needle, size, NULL);
}

int
main (void)
{
    const char *orgs [] = { "kim.a", "jc.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    KIM_CHECK (kim_agenttest_init (&b, broker, "jc.b", NULL) == 0);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);

    //  The first payload makes A's keys ahead; the next three take the ids
    //  after it, in order. They are read now, before A can erase them.
    s_post (&a, 0, s_subjects [0], s_payloads [0]);
    uint8_t sent_keys [S_SENT][KIM_KEYSTORE_KEY];
    for (int i = 1; i < S_SENT; i++)
        KIM_CHECK (s_key (&a, (uint64_t) i + 1, sent_keys [i]));
    for (int i = 1; i < S_SENT; i++)
        s_post (&a, i, s_subjects [i], s_payloads [i]);
    for (int i = 0; i < S_SENT; i++) {
        char path [64];
        snprintf (path, sizeof path, "/v1/outbox/m-e%d", i);
        json_decref (kim_agenttest_wait_for (&a, path, "status", "receipted"));
    }
    json_int_t seqs [S_SENT + 1];
    KIM_CHECK (s_wait_inbox (&b, S_SENT, seqs) == S_SENT);

    //  Sealed at rest: no payload as sent is in any file of either agent
    for (int i = 0; i < S_SENT; i++)
        KIM_CHECK (s_scan_both (&a, &b, s_payloads [i], strlen (s_payloads [i])) == 0);

    //  B's keys, from the sealed values' key ids
    uint8_t received_keys [S_SENT][KIM_KEYSTORE_KEY];
    MDB_env *env = s_env (&b, false);
    for (int i = 0; i < S_SENT; i++) {
        uint8_t value [512];
        size_t size = sizeof value;
        s_records (env, "inbox_payload", (uint64_t) seqs [i], value, &size);
        KIM_CHECK (value [0] == 1 && size == strlen (s_payloads [i]) + 1 + 8 + 24 + 16);
        KIM_CHECK (s_key (&b, kim_log_get_be64 (value + 1), received_keys [i]));
    }
    mdb_env_close (env);

    //  A erases what the broker answered by itself, within seconds
    env = s_env (&a, false);
    size_t left = S_SENT;
    for (int attempt = 0; attempt < 300 && left; attempt++) {
        left = s_records (env, "outbox_payload", 0, NULL, NULL);
        if (left)
            zclock_sleep (50);
    }
    mdb_env_close (env);
    KIM_CHECK (left == 0);
    uint8_t key [KIM_KEYSTORE_KEY];
    for (int i = 1; i < S_SENT; i++)
        KIM_CHECK (!s_key (&a, (uint64_t) i + 1, key));

    //  B erases one delivery's payload by seq ...
    char path [128];
    json_t *json = NULL;
    snprintf (path, sizeof path, "/v1/inbox/%lld/payload", (long long) seqs [3]);
    KIM_CHECK (kim_agenttest_call (&b, "DELETE", path, NULL, &json) == 200);
    KIM_CHECK (json_integer_value (json_object_get (json, "erased_at")) > 0);
    KIM_CHECK (json_integer_value (json_object_get (json, "payload_size"))
               == (json_int_t) strlen (s_payloads [3]));
    json_decref (json);
    snprintf (path, sizeof path, "/v1/inbox/%lld", (long long) seqs [3]);
    KIM_CHECK (kim_agenttest_call (&b, "GET", path, NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "payload_base64")), ""));
    KIM_CHECK (streq (json_string_value (json_object_get (json, "payload")), ""));
    KIM_CHECK (streq (json_string_value (json_object_get (json_object_get (json, "header"),
                                                          "subject")), "p-e2"));
    json_decref (json);

    //  ... and every payload about p-e1
    KIM_CHECK (kim_agenttest_call (&b, "DELETE", "/v1/subjects/p-e1/payloads", NULL, &json)
               == 200);
    json_t *inbox = json_object_get (json, "inbox");
    KIM_CHECK (json_array_size (inbox) == 2);
    KIM_CHECK (json_integer_value (json_array_get (inbox, 0)) == seqs [1]);
    KIM_CHECK (json_integer_value (json_array_get (inbox, 1)) == seqs [2]);
    KIM_CHECK (json_array_size (json_object_get (json, "outbox")) == 0);
    json_decref (json);
    for (int i = 1; i <= 2; i++) {
        snprintf (path, sizeof path, "/v1/inbox/%lld", (long long) seqs [i]);
        KIM_CHECK (kim_agenttest_call (&b, "GET", path, NULL, &json) == 200);
        KIM_CHECK (streq (json_string_value (json_object_get (json, "payload")), ""));
        KIM_CHECK (json_integer_value (json_object_get (json, "erased_at")) > 0);
        json_decref (json);
    }
    //  A asks about p-e1 too: its sent messages were answered, their
    //  payloads are gone already, and nothing waits
    KIM_CHECK (kim_agenttest_call (&a, "DELETE", "/v1/subjects/p-e1/payloads", NULL, &json)
               == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "outbox")) == 2);
    KIM_CHECK (json_array_size (json_object_get (json, "waiting")) == 0);
    json_decref (json);

    //  The scan, with both agents stopped
    s_stop (&a);
    s_stop (&b);
    int files = 0;
    int hits = s_scan (a.dir, received_keys [0], KIM_KEYSTORE_KEY, &files);
    hits += s_scan (b.dir, received_keys [0], KIM_KEYSTORE_KEY, &files);
    printf ("  scanned %d files\n", files);
    KIM_CHECK (hits >= 1);                  //  the scan sees a kept key
    for (int i = 1; i < S_SENT; i++) {
        KIM_CHECK (s_scan_both (&a, &b, s_payloads [i], strlen (s_payloads [i])) == 0);
        KIM_CHECK (s_scan_both (&a, &b, sent_keys [i], KIM_KEYSTORE_KEY) == 0);
        KIM_CHECK (s_scan_both (&a, &b, received_keys [i], KIM_KEYSTORE_KEY) == 0);
    }

    //  A store from before sealing at rest: B's kept payload as given
    const char *old = "OLD-PLAIN payload stored as given, before sealing at rest";
    env = s_env (&b, true);
    MDB_txn *txn;
    MDB_dbi payloads, meta;
    KIM_CHECK (mdb_txn_begin (env, NULL, 0, &txn) == 0);
    KIM_CHECK (mdb_dbi_open (txn, "inbox_payload", 0, &payloads) == 0);
    KIM_CHECK (mdb_dbi_open (txn, "meta", 0, &meta) == 0);
    uint8_t seq_key [8];
    kim_log_put_be64 (seq_key, (uint64_t) seqs [0]);
    MDB_val pkey = { 8, seq_key }, pvalue = { strlen (old), (void *) old };
    KIM_CHECK (mdb_put (txn, payloads, &pkey, &pvalue, 0) == 0);
    MDB_val mkey = { 15, (void *) "payloads_sealed" };
    KIM_CHECK (mdb_del (txn, meta, &mkey, NULL) == 0);
    KIM_CHECK (mdb_txn_commit (txn) == 0);
    mdb_env_close (env);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);
    snprintf (path, sizeof path, "/v1/inbox/%lld", (long long) seqs [0]);
    KIM_CHECK (kim_agenttest_call (&b, "GET", path, NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "payload")), old));
    json_decref (json);
    env = s_env (&b, false);
    uint8_t value [512];
    size_t size = sizeof value;
    s_records (env, "inbox_payload", (uint64_t) seqs [0], value, &size);
    KIM_CHECK (value [0] == 1 && size == strlen (old) + 1 + 8 + 24 + 16);
    mdb_env_close (env);

    //  A message the broker has not answered keeps its payload through an
    //  erasure of its subject, and arrives whole
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    kim_testbroker_stop (broker, SIGTERM);
    const char *late = "LATE payload about p-e1 that waits for the broker";
    s_post (&a, 4, "p-e1", late);
    KIM_CHECK (kim_agenttest_call (&a, "DELETE", "/v1/subjects/p-e1/payloads", NULL, &json)
               == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "waiting")) == 1);
    KIM_CHECK (streq (json_string_value (json_array_get (json_object_get (json, "waiting"), 0)),
                      "m-e4"));
    json_decref (json);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    json_decref (kim_agenttest_wait_for (&a, "/v1/outbox/m-e4", "status", "receipted"));
    KIM_CHECK (s_wait_inbox (&b, S_SENT + 1, seqs) == S_SENT + 1);
    snprintf (path, sizeof path, "/v1/inbox/%lld", (long long) seqs [S_SENT]);
    KIM_CHECK (kim_agenttest_call (&b, "GET", path, NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "payload")), late));
    json_decref (json);

    s_stop (&a);
    s_stop (&b);
    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("agent.erasure: OK\n");
    return 0;
}
