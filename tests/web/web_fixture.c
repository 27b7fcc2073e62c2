/*  web_fixture.c — two offices for the browser test of the staff page.

    Starts a real broker and two real kim-agents: kim.a (a case manager's
    office, driven over its HTTP API, with the web page on too, for a case
    handover between the two pages) and mbe.b (a counselling service with
    the web page on). Both have the same accounts, made with `kim-agent
    --add-user`. Prints one
    JSON line with the ports, the API token and the paths, then keeps
    everything running until its stdin closes; then stops the agents and the
    broker and removes the folder (unless KIM_TEST_KEEP is set).

    mbe.b's agent holds a copy of a policy (web/policy) whose rules name
    two statutes for mbe -> kim and the purpose counselling, for the
    legal-basis picker.

    With --seed N, mbe.b's store holds N more received referrals before
    its agent starts (written as deliveries, as its link would write them),
    for the test of the inbox with many referrals.

    Usage: web_fixture [--seed N]   (tests/web/web.test.js runs it)
*/
#include <czmq.h>
#include <signal.h>
#include <sys/wait.h>

#include "kim_agenttest.h"
#include "kim_agent.h"

//  The policy copy mbe.b's page reads: statutes for mbe -> kim when the
//  purpose is counselling, one more for any purpose, none for other pairs.
static const char s_policy [] =
    "policy\n"
    "    version = 1\n"
    "    checks = \"REFERRAL, FORWARD, HANDOVER_OFFER\"\n"
    "rules\n"
    "    W1\n"
    "        law = \"§ 69 Abs. 1 Nr. 1 SGB X\"\n"
    "        from = mbe\n"
    "        to = kim\n"
    "        purposes = counselling\n"
    "        if_categories = contact\n"
    "        decision = allow\n"
    "        basis = \"statute, consent\"\n"
    "        citations = \"SGB X §69(1)1, SGB X §69(1)2\"\n"
    "        categories = contact\n"
    "    W2\n"
    "        law = \"§ 71 Abs. 1 SGB X\"\n"
    "        from = mbe\n"
    "        to = kim\n"
    "        decision = allow\n"
    "        basis = statute\n"
    "        citations = \"SGB X §71(1)1\"\n"
    "        categories = contact\n"
    "    W3\n"
    "        law = \"consent only\"\n"
    "        from = *\n"
    "        to = *\n"
    "        decision = allow\n"
    "        basis = consent\n"
    "        categories = contact\n";

static const char *const s_accounts [][3] = {
    { "anna", "staff", "correct horse battery" },
    { "rolf", "readonly", "read only password 1" },
};

//  Runs `kim-agent --config CONFIG --add-user NAME --role ROLE` with the
//  password on stdin, as an administrator would.
static int
s_add_user (const char *config, const char *name, const char *role, const char *password)
{
    char command [512];
    const char *agent = getenv ("KIM_AGENT");
    snprintf (command, sizeof command, "'%s' --config '%s' --add-user %s --role %s >/dev/null",
              agent? agent: KIM_AGENT_PATH, config, name, role);
    FILE *pipe = popen (command, "w");
    if (!pipe)
        return -1;
    fprintf (pipe, "%s\n", password);
    return pclose (pipe) == 0? 0: -1;
}

//  Writes `count` received referrals into the store in `dir`, with seqs far
//  above any the test broker hands out, half of them past their deadline.
static int
s_seed (const char *dir, int count)
{
    char error [256];
    kim_agent_store_t *store = kim_agent_store_new (dir, 64u * 1024 * 1024, "mbe.b", error,
                                                    sizeof error);
    if (!store) {
        fprintf (stderr, "web_fixture: %s\n", error);
        return -1;
    }
    kim_agent_txn_t *txn = kim_agent_store_begin (store);
    int rc = txn? 0: -1;
    uint64_t now = (uint64_t) zclock_time ();
    for (int i = 0; i < count && rc == 0; i++) {
        kim_event_t event;
        memset (&event, 0, sizeof event);
        event.type = KIM_EVENT_DELIVER;
        event.seq = 1000000000ULL + (uint64_t) i;
        kim_msg_t *msg = &event.msg;
        kim_msg_init (msg);
        msg->type = KIM_TYPE_REFERRAL;
        snprintf (msg->msg_id, sizeof msg->msg_id, "seed-%d", i);
        snprintf (msg->sender, sizeof msg->sender, "kim.a");
        snprintf (msg->recipient, sizeof msg->recipient, "mbe.b");
        snprintf (msg->referral_id, sizeof msg->referral_id, "L-%04d", i);
        snprintf (msg->case_id, sizeof msg->case_id, "C-L-%d", i);
        snprintf (msg->subject, sizeof msg->subject, "p-%d", i);
        snprintf (msg->purpose, sizeof msg->purpose, "counselling");
        msg->deadline = now + (uint64_t) (i - count / 2) * 3600000ULL;
        char payload [64];
        snprintf (payload, sizeof payload, "Nummer %d", i);
        event.payload = (const uint8_t *) payload;
        event.payload_size = strlen (payload);
        bool fresh;
        rc = kim_agent_store_deliver (txn, &event, &fresh) == 0? 0: -1;
    }
    if (txn)
        rc = rc == 0 && kim_agent_store_commit (&txn) == 0? 0: -1;
    kim_agent_store_abort (&txn);
    kim_agent_store_destroy (&store);
    return rc;
}

int
main (int argc, char *argv [])
{
    int seed = 0;
    if (argc > 2 && streq (argv [1], "--seed"))
        seed = atoi (argv [2]);
    else
    if (argc > 1) {
        printf ("Usage: web_fixture [--seed N]\nStarts a broker and two kim-agents (kim.a with the API, "
                "mbe.b with the web page), prints their ports as JSON, and runs until stdin "
                "closes.\n  --seed N   N more received referrals in mbe.b's store\n");
        return streq (argv [1], "--help") || streq (argv [1], "-h")? 0: 2;
    }
    const char *orgs [] = { "kim.a", "mbe.b", "ikt.c", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    if (!broker || kim_testbroker_start (broker) != 0) {
        fprintf (stderr, "web_fixture: cannot start the broker\n");
        return 1;
    }
    char users [256], users_a [256], policy [256], extra [1024], extra_a [512];
    snprintf (users, sizeof users, "%s/agent-mbe.b/users", kim_testbroker_dir (broker));
    snprintf (users_a, sizeof users_a, "%s/agent-kim.a/users", kim_testbroker_dir (broker));
    snprintf (policy, sizeof policy, "%s/web-policy.cfg", kim_testbroker_dir (broker));
    FILE *file = fopen (policy, "w");
    if (!file || fputs (s_policy, file) < 0 || fclose (file) != 0) {
        fprintf (stderr, "web_fixture: cannot write %s\n", policy);
        kim_testbroker_destroy (&broker);
        return 1;
    }
    snprintf (extra, sizeof extra, "web\n    enabled = 1\n    users = \"%s\"\n"
              "    max_failures = 3\n    lockout_s = 120\n    policy = \"%s\"\n", users, policy);
    //  kim.a's page (same accounts, no policy copy) hands a case over
    snprintf (extra_a, sizeof extra_a, "web\n    enabled = 1\n    users = \"%s\"\n", users_a);
    kim_agenttest_t a, b;
    int rc = kim_agenttest_init (&a, broker, "kim.a", extra_a) == 0
          && kim_agenttest_init (&b, broker, "mbe.b", extra) == 0? 0: 1;
    for (size_t i = 0; rc == 0 && i < sizeof s_accounts / sizeof s_accounts [0]; i++)
        rc = s_add_user (b.config, s_accounts [i][0], s_accounts [i][1], s_accounts [i][2])
          || s_add_user (a.config, s_accounts [i][0], s_accounts [i][1], s_accounts [i][2])? 1: 0;
    char store [256];
    snprintf (store, sizeof store, "%s/store", b.dir);
    if (rc == 0 && seed > 0)
        rc = s_seed (store, seed)? 1: 0;
    if (rc == 0)
        rc = kim_agenttest_start (&a, true) == 0 && kim_agenttest_start (&b, true) == 0? 0: 1;
    if (rc) {
        fprintf (stderr, "web_fixture: cannot start the agents\n");
        kim_testbroker_destroy (&broker);
        return 1;
    }
    json_t *info = json_pack ("{s:i, s:i, s:i, s:s, s:s, s:s, s:s, s:s, s:[[s,s,s],[s,s,s]]}",
                              "api_a", a.port, "web_a", a.port, "web_b", b.port,
                              "token", KIM_AGENTTEST_TOKEN, "org_a", "kim.a", "org_b", "mbe.b",
                              "dir", kim_testbroker_dir (broker), "config_b", b.config,
                              "accounts",
                              s_accounts [0][0], s_accounts [0][1], s_accounts [0][2],
                              s_accounts [1][0], s_accounts [1][1], s_accounts [1][2]);
    char *text = info? json_dumps (info, JSON_COMPACT): NULL;
    printf ("%s\n", text? text: "{}");
    fflush (stdout);
    free (text);
    json_decref (info);

    //  Until the test closes our stdin
    char buffer [256];
    while (fread (buffer, 1, sizeof buffer, stdin) > 0)
        ;
    kim_agenttest_stop (&a, SIGTERM);
    kim_agenttest_stop (&b, SIGTERM);
    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    return 0;
}
