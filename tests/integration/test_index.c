/*  test_index.c — an organisation's lookups cost what its own referrals
    cost, not what the store holds.

    The test writes a store as a broker from before the referral index left
    it: 100,000 referrals between two busy organisations (KIM_INDEX_POPULATION
    sets another number), a few of a small one, two of them under a consent,
    each referral whole under its id, and no index tree. The broker moves
    the referrals' states under their seqs and builds the index once at its
    first start (and says so once, also after a restart). Then, over a real
    socket, which reads every referral through its new form:
    REFERRAL_QUERY of the small organisation answers its few referrals and
    reads no others (the broker's debug log counts the referrals a query
    read); a query with a case reads only that case's; a referral sent now
    is found the same way; revoking the consent suspends exactly the old
    referrals made under it, found through the index; a handover moves a
    referral from the old lead's list to the new one's, also one indexed
    while its case had no record. Last, a store with
    the index's first form (ids in its keys) gets it built again, once.
*/
#include "kim_lctest.h"
#include "kim_lifecycle_int.h"
#include "kim_store.h"

#define BIG_KIM     "kim.gross"
#define BIG_JC      "jc.gross"
#define SMALL       "kim.klein"
#define SMALL_JC    "jc.klein"
#define SMALL_JA    "ja.klein"

//  A referral as the life cycle stored it before states by seq (the whole
//  referral under its id), written straight into the store.
static void
s_put_referral (kim_store_t *store, const char *id, const char *sender, const char *recipient,
                const char *case_id, const char *consent_id, uint64_t seq)
{
    kim_referral_t referral;
    memset (&referral, 0, sizeof referral);
    referral.version = S_REFERRAL_VERSION;
    referral.state = KIM_REFERRAL_SENT;
    snprintf (referral.id, sizeof referral.id, "%s", id);
    snprintf (referral.msg_id, sizeof referral.msg_id, "m-%s", id);
    snprintf (referral.sender, sizeof referral.sender, "%s", sender);
    snprintf (referral.recipient, sizeof referral.recipient, "%s", recipient);
    snprintf (referral.case_id, sizeof referral.case_id, "%s", case_id);
    snprintf (referral.consent_id, sizeof referral.consent_id, "%s", consent_id);
    snprintf (referral.purpose, sizeof referral.purpose, "employment");
    referral.deadline = (uint64_t) zclock_time () + 3600 * 1000;
    referral.created_seq = referral.last_seq = seq;
    uint8_t value [KIM_LC_REFERRAL_MAX];
    size_t size = kim_lc_referral_encode (&referral, value);
    MDB_val key = { strlen (id), (void *) id }, val = { size, value };
    KIM_CHECK (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_REFERRAL), &key, &val,
                        0) == 0);
}

//  Opens the store at `path` (map_size 0: the store's default) with a batch.
static kim_store_t *
s_batch_open (const char *path, size_t map_size)
{
    kim_store_config_t config = { .path = path, .map_size = map_size };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    KIM_CHECK (kim_store_begin (store) == 0);
    return store;
}

//  Commits the batch and closes the store.
static void
s_batch_close (kim_store_t **store_p)
{
    bool retry = false;
    KIM_CHECK (kim_store_commit (*store_p, &retry) == 0);
    kim_store_destroy (store_p);
}

//  Writes the old-shaped store: referrals whole under their ids, no index
//  tree, no markers.
static void
s_populate (const char *path, int population)
{
    //  Room for the population in one batch (about 200 bytes a referral).
    kim_store_t *store = s_batch_open (path, ((size_t) 64 << 20) + (size_t) population * 512);
    //  Each referral opened at a seq of its own, far above the seqs the
    //  test's messages take (the store's log stays empty).
    uint64_t seq = (uint64_t) 1 << 40;
    char id [32], case_id [32];
    for (int i = 0; i < population; i++) {
        snprintf (id, sizeof id, "B-%07d", i);
        snprintf (case_id, sizeof case_id, "CB-%d", i / 10);
        s_put_referral (store, id, i % 2? BIG_JC: BIG_KIM, i % 2? BIG_KIM: BIG_JC, case_id, "",
                        ++seq);
    }
    //  The small organisation's: two under consent G-small, one not.
    s_put_referral (store, "S-1", SMALL, SMALL_JC, "CS-1", "G-small", ++seq);
    s_put_referral (store, "S-2", SMALL, SMALL_JA, "CS-1", "G-small", ++seq);
    s_put_referral (store, "S-3", SMALL_JC, SMALL, "CS-2", "", ++seq);
    s_put_referral (store, "S-5", SMALL, SMALL_JC, "CS-4", "", ++seq);
    //  A store from before the index has no such tree.
    KIM_CHECK (mdb_drop (kim_store_txn (store), kim_store_dbi (store, KIM_DB_REFERRAL_BY), 1) == 0);
    s_batch_close (&store);
}

//  Gives the store's index its first form back: an entry keyed by ids
//  and the marker of that form.
static void
s_first_form (const char *path)
{
    kim_store_t *store = s_batch_open (path, 0);
    const char entry [] = "P" SMALL "\0CS-1\0S-1";
    MDB_val key = { sizeof entry - 1, (void *) entry }, value = { 0, (void *) "" };
    KIM_CHECK (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_REFERRAL_BY), &key,
                        &value, 0) == 0);
    uint8_t version = 1;
    MDB_val marker = { strlen ("index/referral_by"), (void *) "index/referral_by" };
    value.mv_size = 1;
    value.mv_data = &version;
    KIM_CHECK (mdb_put (kim_store_txn (store), kim_store_dbi (store, KIM_DB_META), &marker,
                        &value, 0) == 0);
    s_batch_close (&store);
}

//  Writes a store of the old shape whose two referrals name one seq, as no
//  broker wrote them.
static void
s_one_seq_twice (const char *path)
{
    kim_store_t *store = s_batch_open (path, 0);
    s_put_referral (store, "T-1", SMALL, SMALL_JC, "CT-1", "", 42);
    s_put_referral (store, "T-2", SMALL, SMALL_JC, "CT-1", "", 42);
    s_batch_close (&store);
}

//  SMALL hands case `case_id` with `referral_id` over to SMALL_JC, which
//  accepts.
static void
s_hand_over (kim_client_t *small, kim_client_t *small_jc, const char *case_id,
             const char *referral_id)
{
    char offer [32], accept [32];
    snprintf (offer, sizeof offer, "offer-%s", case_id);
    snprintf (accept, sizeof accept, "accept-%s", case_id);
    kim_msg_t msg;
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, SMALL_JC, case_id, offer, NULL);
    msg.referral_count = 1;
    snprintf (msg.referrals [0], sizeof msg.referrals [0], "%s", referral_id);
    LC_SEND (small, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, SMALL, case_id, accept, offer);
    LC_SEND (small_jc, &msg, 0, "");
}

//  How often `text` occurs in the broker's log.
static int
s_log_count (kim_testbroker_t *broker, const char *text)
{
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/broker.log", kim_testbroker_dir (broker));
    FILE *file = fopen (path, "r");
    KIM_CHECK (file);
    int count = 0;
    char line [2048];
    while (fgets (line, sizeof line, file))
        if (strstr (line, text))
            count++;
    fclose (file);
    return count;
}

//  REFERRAL_QUERY of `client` (case "" for all): returns the count and
//  checks that the broker read exactly `read` referrals to answer.
static uint64_t
s_query (kim_testbroker_t *broker, kim_client_t *client, const char *org, const char *case_id,
         uint64_t read, kim_cmd_t *reply)
{
    static int query = 0;
    kim_cmd_t *request = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (request);
    kim_cmd_init (request, KIM_CMD_REFERRAL_QUERY);
    snprintf (request->query_id, sizeof request->query_id, "q-%d", ++query);
    snprintf (request->case_id, sizeof request->case_id, "%s", case_id);
    char expected [256];
    snprintf (expected, sizeof expected, "REFERRAL_QUERY of %s read %" PRIu64 " referrals,", org,
              read);
    int before = s_log_count (broker, expected);
    ITEST_RC (kim_client_request (client, request, reply, 60000), 0);
    KIM_CHECK (reply->id == KIM_CMD_REFERRAL_INFO);
    free (request);
    if (s_log_count (broker, expected) != before + 1) {
        fprintf (stderr, "test_index: expected a log line '%s'\n", expected);
        exit (1);
    }
    return reply->count;
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *env = getenv ("KIM_INDEX_POPULATION");
    int population = env? atoi (env): 100000;
    KIM_CHECK (population >= 20);
    const char *orgs [] = { SMALL, SMALL_JC, SMALL_JA, BIG_KIM, BIG_JC, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, "    verbose = 1\n");
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/data", kim_testbroker_dir (broker));
    KIM_CHECK (mkdir (path, 0700) == 0 || errno == EEXIST);
    snprintf (path, sizeof path, "%s/data/store", kim_testbroker_dir (broker));
    int64_t started = zclock_mono ();
    s_populate (path, population);
    printf ("test_index: %d referrals written in %" PRId64 " ms\n", population,
            zclock_mono () - started);
    //  Readers (audit tools) open such a store as it is.
    kim_store_config_t reader_config = { .path = path, .read_only = true };
    int err = 0;
    kim_store_t *reader = kim_store_new (&reader_config, &err);
    KIM_CHECK (reader);
    kim_store_destroy (&reader);

    //  The first start moves the referrals' states under their seqs and
    //  builds the index, once.
    started = zclock_mono ();
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    printf ("test_index: broker started (states moved, index built) in %" PRId64 " ms\n",
            zclock_mono () - started);
    char built [64];
    snprintf (built, sizeof built, "moved %d referrals' states", population + 4);
    KIM_CHECK (s_log_count (broker, built) == 1);
    snprintf (built, sizeof built, "indexed %d referrals", population + 4);
    KIM_CHECK (s_log_count (broker, built) == 1);
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    KIM_CHECK (s_log_count (broker, "indexed") == 1);
    KIM_CHECK (s_log_count (broker, "moved") == 1);

    kim_client_t *small = kim_testbroker_client (broker, SMALL, 64, false);
    kim_client_t *big = kim_testbroker_client (broker, BIG_KIM, 64, false);
    KIM_CHECK (small && big);
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (reply);

    //  The small organisation's list reads its four referrals, not the store.
    KIM_CHECK (s_query (broker, small, SMALL, "", 4, reply) == 4);
    KIM_CHECK (memmem (reply->body, reply->body_size, "\"referral_id\":\"S-3\"", 19));
    KIM_CHECK (!memmem (reply->body, reply->body_size, "B-", 2));
    KIM_CHECK (s_query (broker, small, SMALL, "CS-1", 2, reply) == 2);
    //  A busy organisation's query of one case reads that case only.
    KIM_CHECK (s_query (broker, big, BIG_KIM, "CB-1", 10, reply) == 10);
    KIM_CHECK (s_query (broker, big, BIG_KIM, "CS-1", 0, reply) == 0);

    //  A referral sent now is indexed as it opens.
    kim_msg_t msg;
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, SMALL_JA, "S-4", "m-s-4", "CS-3");
    LC_SEND (small, &msg, 0, "");
    KIM_CHECK (s_query (broker, small, SMALL, "", 5, reply) == 5);
    KIM_CHECK (memmem (reply->body, reply->body_size, "\"referral_id\":\"S-4\"", 19));

    //  Revoking G-small suspends the two old referrals under it, found
    //  through the index the first start built.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_GRANT;
    snprintf (msg.msg_id, sizeof msg.msg_id, "grant-small");
    snprintf (msg.case_id, sizeof msg.case_id, "CS-1");
    snprintf (msg.grant_id, sizeof msg.grant_id, "G-small");
    snprintf (msg.subject, sizeof msg.subject, "p-1");
    msg.recipient_count = 1;
    snprintf (msg.recipients [0], sizeof msg.recipients [0], "%s", SMALL_JC);
    msg.purpose_count = 1;
    snprintf (msg.purposes [0], sizeof msg.purposes [0], "employment");
    msg.valid_until = (uint64_t) zclock_time () + 3600 * 1000;
    LC_SEND (small, &msg, 0, "");
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_REVOKE;
    snprintf (msg.msg_id, sizeof msg.msg_id, "revoke-small");
    snprintf (msg.grant_id, sizeof msg.grant_id, "G-small");
    LC_SEND (small, &msg, 0, "");
    KIM_CHECK (s_log_count (broker, "SUSPENDED: consent G-small") == 2);
    KIM_CHECK (s_query (broker, small, SMALL, "CS-1", 2, reply) == 2);
    const char *at = (const char *) reply->body;
    const char *end = at + reply->body_size;
    int suspended = 0;
    while ((at = memmem (at, (size_t) (end - at), "SUSPENDED", 9)) != NULL) {
        suspended++;
        at += 9;
    }
    KIM_CHECK (suspended == 2);

    //  A handover moves the old lead's entry of the referrals it hands over.
    kim_client_t *small_jc = kim_testbroker_client (broker, SMALL_JC, 64, false);
    KIM_CHECK (small_jc);
    s_hand_over (small, small_jc, "CS-3", "S-4");
    KIM_CHECK (s_query (broker, small, SMALL, "", 4, reply) == 4);
    KIM_CHECK (!memmem (reply->body, reply->body_size, "\"referral_id\":\"S-4\"", 19));
    KIM_CHECK (s_query (broker, small_jc, SMALL_JC, "", 4, reply) == 4);
    const char *moved = "\"referral_id\":\"S-4\",\"state\":\"SENT\",\"sender\":\"" SMALL_JC "\"";
    KIM_CHECK (memmem (reply->body, reply->body_size, moved, strlen (moved)));

    //  So does a handover of a referral indexed while its case had no
    //  record (S-5, from the old store): CS-4 gets its record from a new
    //  referral, then S-5 goes to its recipient. The old lead reads it no
    //  more; the new one finds it in the case once.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, SMALL_JA, "S-6", "m-s-6", "CS-4");
    LC_SEND (small, &msg, 0, "");
    s_hand_over (small, small_jc, "CS-4", "S-5");
    KIM_CHECK (s_query (broker, small, SMALL, "", 4, reply) == 4);
    KIM_CHECK (!memmem (reply->body, reply->body_size, "\"referral_id\":\"S-5\"", 19));
    KIM_CHECK (s_query (broker, small_jc, SMALL_JC, "CS-4", 1, reply) == 1);
    KIM_CHECK (memmem (reply->body, reply->body_size, "\"referral_id\":\"S-5\"", 19));
    kim_client_destroy (&small_jc);

    kim_client_destroy (&small);
    kim_client_destroy (&big);

    //  A store whose index has its first form (ids in the party keys, as
    //  brokers before this one wrote it) gets it built again, once: the
    //  entry of that form goes, the small organisation's list reads its
    //  four referrals and nothing else.
    KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) == 0);
    s_first_form (path);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    KIM_CHECK (s_log_count (broker, "the index had an older form") == 1);
    small = kim_testbroker_client (broker, SMALL, 64, false);
    KIM_CHECK (small);
    KIM_CHECK (s_query (broker, small, SMALL, "", 4, reply) == 4);
    KIM_CHECK (s_query (broker, small, SMALL, "CS-1", 2, reply) == 2);
    kim_client_destroy (&small);

    free (reply);
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);

    //  A store whose referrals cannot all move (two name one seq) is
    //  refused at start, with the referral named, and not half moved.
    char command [PATH_MAX + 16];
    snprintf (command, sizeof command, "rm -rf '%s'", path);
    KIM_CHECK (system (command) == 0);
    s_one_seq_twice (path);
    KIM_CHECK (kim_testbroker_start (broker) != 0);
    KIM_CHECK (s_log_count (broker, "referral T-2 opens at seq 42, which another referral "
                                    "opened") == 1);
    KIM_CHECK (s_log_count (broker, "cannot move the referrals' states") == 1);
    kim_store_t *store = s_batch_open (path, 0);
    MDB_val key = { 3, (void *) "T-1" }, value;
    KIM_CHECK (mdb_get (kim_store_txn (store), kim_store_dbi (store, KIM_DB_REFERRAL), &key,
                        &value) == 0 && value.mv_size > 8);
    kim_store_abort (store);
    kim_store_destroy (&store);
    s_itest_broker_destroy (&broker);
    printf ("test_index: OK\n");
    return 0;
}
