/*  test_agent_kill.c — kill -9 a kim-agent and nothing is lost or doubled.

    1. Office A's system posts 60 referrals, one after another, retrying a
       post that got no answer with the same msg_id (as the API asks). Agent
       A dies twice meanwhile: once by its own SIGKILL right after the 10th
       message is on its disk and before the system got the answer
       (KIM_AGENT_CRASH_AFTER_ACCEPTS), once by the test's SIGKILL at
       whatever moment it lands; each time it is started again on the same
       store. Every message that got a 2xx reaches office B's inbox, each
       exactly once, and nothing arrives under an id the system did not give.
    2. Agent B is down while A sends 150 referrals. It starts and kills
       itself right after its first commit of deliveries, before acking them
       (KIM_AGENT_CRASH_AFTER_DELIVERIES); started again, it gets them again
       from the broker, recognises them, and its inbox holds each delivery
       exactly once (by seq and by msg_id). Then once more with the test's
       own SIGKILL while deliveries arrive.

    With KIM_POWERCUT=<path of libkim_powercut_shim.so> each kill of an agent
    is a power cut (tests/fault/powercut): the agents run with that library
    preloaded, and after each kill the writes to the agent's store that no
    flush covered are taken back, all of them or pages at random in turn.
    An agent answers its system and acks the broker only after its commit is
    on disk, so the same must hold.
*/
#include <czmq.h>
#include <signal.h>
#include <sys/wait.h>

#include "kim_agenttest.h"
#include "kim_itest.h"
#include "kim_powercut.h"

#define S_POSTS     60
#define S_DELIVERS  150

static size_t
s_count_lines (const char *path)
{
    FILE *file = fopen (path, "r");
    if (!file)
        return 0;
    size_t lines = 0;
    int c;
    while ((c = fgetc (file)) != EOF)
        lines += c == '\n';
    fclose (file);
    return lines;
}

static void
s_referral (char *buffer, size_t size, const char *prefix, int i)
{
    snprintf (buffer, size,
              "{\"type\":\"REFERRAL\",\"msg_id\":\"m-%s-%d\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r-%s-%d\",\"case_id\":\"c-%s\",\"subject\":\"p-%d\","
              "\"purpose\":\"job_placement\",\"legal_basis\":{\"kind\":\"statute\","
              "\"citation\":\"SGB X §69(1)1\"},\"payload\":\"payload %d\"}",
              prefix, i, prefix, i, prefix, i, i);
}

//  With KIM_POWERCUT: the power cuts so far.
static const char *s_powercut;
static uint64_t s_rng = 1;
static uint64_t s_cuts;
static kim_powercut_stats_t s_cut_total;

//  After an agent was killed: cuts the power under its folder, if asked to.
static void
s_after_kill (kim_agenttest_t *agent)
{
    if (!s_powercut)
        return;
    kim_powercut_stats_t cut;
    bool worst = s_cuts++ % 2 == 0;
    KIM_CHECK (kim_powercut_apply (agent->dir, worst, &s_rng, &cut) == 0);
    printf ("agent.kill: %s: power cut (%s): %" PRIu64 " unsynced writes in %" PRIu64
            " files, %" PRIu64 " of %" PRIu64 " pages set back\n", agent->org,
            worst? "every unsynced page": "pages at random", cut.writes, cut.files,
            cut.pages_back, cut.pages);
    s_cut_total.files += cut.files;
    s_cut_total.pages_back += cut.pages_back;
}

//  The local system: posts each message until it gets a 2xx, and notes it.
static void
s_poster (const char *port_file, const char *done_path)
{
    FILE *done = fopen (done_path, "w");
    if (!done)
        _exit (2);
    for (int i = 0; i < S_POSTS; i++) {
        char body [512];
        s_referral (body, sizeof body, "k", i);
        int64_t deadline = zclock_mono () + 60000;
        while (true) {
            int port = 0;
            FILE *file = fopen (port_file, "r");
            if (file) {
                if (fscanf (file, "%d", &port) != 1)
                    port = 0;
                fclose (file);
            }
            int status = port? kim_agenttest_http (port, "POST", "/v1/messages",
                                                   KIM_AGENTTEST_TOKEN, body, NULL): -1;
            if (status == 200 || status == 202) {
                fprintf (done, "m-k-%d\n", i);
                fflush (done);
                break;
            }
            if (status > 0 && status != 503)
                _exit (3);          //  a refusal the test does not expect
            if (zclock_mono () > deadline)
                _exit (4);
            zclock_sleep (20);
        }
    }
    fclose (done);
    _exit (0);
}

//  Waits until B's inbox holds at least `count` items; returns them.
static json_t *
s_inbox (kim_agenttest_t *agent, size_t count)
{
    for (int attempt = 0; attempt < 1200; attempt++) {
        json_t *json = NULL;
        if (kim_agenttest_call (agent, "GET", "/v1/inbox?limit=1000", NULL, &json) == 200
        &&  json_array_size (json_object_get (json, "items")) >= count)
            return json;
        json_decref (json);
        zclock_sleep (50);
    }
    return NULL;
}

//  Every item of `prefix` appears once by msg_id and once by seq; returns
//  how many there are.
static size_t
s_check_once (json_t *inbox, const char *prefix, size_t expected)
{
    zhashx_t *ids = zhashx_new ();
    zhashx_t *seqs = zhashx_new ();
    size_t count = 0, index;
    json_t *item;
    char want [32];
    snprintf (want, sizeof want, "m-%s-", prefix);
    json_array_foreach (json_object_get (inbox, "items"), index, item) {
        const char *msg_id = json_string_value (json_object_get (item, "msg_id"));
        char seq [32];
        snprintf (seq, sizeof seq, "%lld", (long long) json_integer_value (json_object_get (item, "seq")));
        KIM_CHECK (zhashx_insert (seqs, seq, (void *) 1) == 0);
        if (!msg_id || strncmp (msg_id, want, strlen (want)) != 0)
            continue;
        int number = atoi (msg_id + strlen (want));
        KIM_CHECK (number >= 0 && (size_t) number < expected);
        if (zhashx_insert (ids, msg_id, (void *) 1) != 0) {
            fprintf (stderr, "%s is in the inbox twice\n", msg_id);
            KIM_CHECK (false);
        }
        count++;
    }
    zhashx_destroy (&ids);
    zhashx_destroy (&seqs);
    return count;
}

static void
s_wait_sent (kim_agenttest_t *agent)
{
    for (int attempt = 0; attempt < 1200; attempt++) {
        json_t *json = NULL;
        bool done = kim_agenttest_call (agent, "GET", "/v1/status", NULL, &json) == 200
                 && json_integer_value (json_object_get (json, "queued")) == 0;
        json_decref (json);
        if (done)
            return;
        zclock_sleep (50);
    }
    KIM_CHECK (false);
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
    s_powercut = getenv ("KIM_POWERCUT");
    if (s_powercut && s_powercut [0]) {
        //  The agents' folders lie in the broker's, whose own store is not
        //  watched: the broker runs without the library.
        KIM_CHECK (access (s_powercut, R_OK) == 0);
        KIM_CHECK (setenv ("KIM_POWERCUT_DIR", kim_testbroker_dir (broker), 1) == 0);
        a.preload = b.preload = s_powercut;
        const char *seed = getenv ("KIM_TEST_SEED");
        s_rng = (seed? strtoull (seed, NULL, 10): (uint64_t) time (NULL)) | 1;
        printf ("agent.kill: every kill of an agent is a power cut (seed %" PRIu64
                ", KIM_TEST_SEED repeats it)\n", s_rng);
    }
    else
        s_powercut = NULL;
    a.env = "KIM_AGENT_CRASH_AFTER_ACCEPTS=10";
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);

    //  1. Kill A while its system posts
    char done_path [200];
    snprintf (done_path, sizeof done_path, "%s/posted", a.dir);
    pid_t poster = fork ();
    KIM_CHECK (poster >= 0);
    if (poster == 0)
        s_poster (a.port_file, done_path);
    int status = kim_agenttest_wait (&a);
    KIM_CHECK (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);
    s_after_kill (&a);
    KIM_CHECK (s_count_lines (done_path) == 9);
    KIM_CHECK (kim_agenttest_start (&a, false) == 0);
    for (int attempt = 0; attempt < 1200 && s_count_lines (done_path) < 30; attempt++)
        zclock_sleep (5);
    KIM_CHECK (s_count_lines (done_path) >= 30);
    kim_agenttest_stop (&a, SIGKILL);
    s_after_kill (&a);
    KIM_CHECK (kim_agenttest_start (&a, false) == 0);
    KIM_CHECK (waitpid (poster, &status, 0) == poster);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    KIM_CHECK (s_count_lines (done_path) == S_POSTS);
    json_t *inbox = s_inbox (&b, S_POSTS);
    KIM_CHECK (inbox);
    KIM_CHECK (s_check_once (inbox, "k", S_POSTS) == S_POSTS);
    KIM_CHECK (json_array_size (json_object_get (inbox, "items")) == S_POSTS);
    json_decref (inbox);
    s_wait_sent (&a);

    //  2. Kill B while deliveries are written
    kim_agenttest_stop (&b, SIGTERM);
    for (int i = 0; i < S_DELIVERS; i++) {
        char body [512];
        s_referral (body, sizeof body, "d", i);
        KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/messages", body, NULL) == 202);
    }
    s_wait_sent (&a);
    b.env = "KIM_AGENT_CRASH_AFTER_DELIVERIES=1";
    if (kim_agenttest_start (&b, false) == 0) {
        status = kim_agenttest_wait (&b);
        KIM_CHECK (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);
        s_after_kill (&b);
    }
    KIM_CHECK (kim_agenttest_start (&b, false) == 0);
    inbox = s_inbox (&b, S_POSTS + 1);
    KIM_CHECK (inbox);
    json_decref (inbox);
    kim_agenttest_stop (&b, SIGKILL);
    s_after_kill (&b);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);
    //  A last message: deliveries come in seq order, so once it is in,
    //  every earlier one (and any redelivery of one) has been handled
    char body [512];
    s_referral (body, sizeof body, "z", 0);
    KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/messages", body, NULL) == 202);
    inbox = s_inbox (&b, S_POSTS + S_DELIVERS + 1);
    KIM_CHECK (inbox);
    KIM_CHECK (s_check_once (inbox, "k", S_POSTS) == S_POSTS);
    KIM_CHECK (s_check_once (inbox, "d", S_DELIVERS) == S_DELIVERS);
    KIM_CHECK (s_check_once (inbox, "z", 1) == 1);
    KIM_CHECK (json_array_size (json_object_get (inbox, "items")) == S_POSTS + S_DELIVERS + 1);
    //  Payloads survived the crash, opened
    json_t *item = json_array_get (json_object_get (inbox, "items"), S_POSTS + 10);
    char path [64];
    snprintf (path, sizeof path, "/v1/inbox/%lld",
              (long long) json_integer_value (json_object_get (item, "seq")));
    json_decref (inbox);
    json_t *json = NULL;
    KIM_CHECK (kim_agenttest_call (&b, "GET", path, NULL, &json) == 200);
    KIM_CHECK (strncmp (json_string_value (json_object_get (json, "payload")), "payload ", 8) == 0);
    json_decref (json);
    //  The crash after the commit really left deliveries unacked: the
    //  broker delivered them again and the inbox knew them
    char command [256];
    snprintf (command, sizeof command, "grep -q 'was there already' '%s'", b.log);
    KIM_CHECK (system (command) == 0);

    //  A cut that found no store to watch tested nothing
    if (s_powercut && s_cut_total.files == 0) {
        fprintf (stderr, "agent.kill: the power cuts found no watched store\n");
        KIM_CHECK (false);
    }
    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("agent.kill: OK (%" PRIu64 " power cuts, %" PRIu64 " pages set back)\n", s_cuts,
            s_cut_total.pages_back);
    return 0;
}
