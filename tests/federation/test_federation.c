/*  test_federation.c — brokers of different districts linked broker to
    broker (PROTOCOL.md 16), as real kim-broker processes over tcp loopback.

    Usage: test_federation referral|outage|refusal|rotation|roles|handover|
                           handover_referrals|forward|status|trust|consent

    referral  three districts: a REFERRAL from an office at A to one at C is
              receipted at A, delivered once at C (its sealed payload opens),
              DELIVERED and ACCEPT travel back, and REFERRAL_QUERY gives the
              same state at both ends; `kim directory` names remote homes.
    outage    the far broker is killed with messages queued for it; after its
              restart every message arrives once, in order.
    refusal   the far broker's policy refuses what the near one allowed: the
              sender gets UNDELIVERABLE naming the far broker and its rule,
              and the referral is UNDELIVERABLE (closed) at the sender's broker.
    rotation  a key rotation and a revocation at one broker reach its peer
              on SIGHUP, without a restart.
    roles     a non-peer key may not use the federation commands; a peer may
              use nothing else; a peer cannot forward for another's office.
    handover  a case led in one district is handed to another district's case
              management: the lead moves at both ends.
    handover_referrals
              the case's open referrals move with it: the new lead's broker
              holds them in their state, answers from the old district pass
              both life cycles, both ends agree on every state.
    forward   FORWARD to an office of the sender's district and to one of the
              forwarder's own; a third district is refused with the reason.
    status    an operator's STATUS lists the links: up, down with mail queued
              while the far broker is away, up and emptied once it is back.
    trust     a peer's wrong signing key keeps the link from forwarding, and the
              mail waits (not refused) until the key is corrected and reloaded.
    consent   a consent given in one district to an office of another goes to
              that office's broker, which checks the referral under it; its
              revocation follows and reaches the office.
*/
#include "../integration/kim_lctest.h"

#define HEARTBEAT "    heartbeat_ms = 500\n"

static kim_testbroker_t *s_brokers [3];

static void
s_cleanup (void)
{
    for (int i = 0; i < 3; i++)
        kim_testbroker_destroy (&s_brokers [i]);
}

//  Makes `count` linked brokers (names given) and starts them.
static void
s_districts (size_t count, const char *names [], const char **orgs [])
{
    atexit (s_cleanup);
    for (size_t i = 0; i < count; i++) {
        s_brokers [i] = kim_testbroker_new_named (names [i], orgs [i], HEARTBEAT);
        KIM_CHECK (s_brokers [i]);
    }
    KIM_CHECK (kim_testbroker_link (s_brokers, count) == 0);
}

static void
s_start_all (size_t count)
{
    for (size_t i = 0; i < count; i++)
        KIM_CHECK (kim_testbroker_start (s_brokers [i]) == 0);
}

//  Waits until `client`'s broker lists `org` in its directory (the peer's
//  signed directory arrived), or, with `present` false, until it does not.
static void
s_wait_directory (kim_client_t *client, const char *org, bool present)
{
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    int64_t deadline = s_itest_now () + 20000;
    while (s_itest_now () < deadline) {
        kim_cmd_init (&cmd [0], KIM_CMD_DIRECTORY);
        snprintf (cmd [0].org, sizeof cmd [0].org, "%s", org);
        ITEST_RC (kim_client_request (client, &cmd [0], &cmd [1], 5000), 0);
        if ((cmd [1].dir_count == 1) == present) {
            free (cmd);
            return;
        }
        zclock_sleep (100);
    }
    fprintf (stderr, "%s: %s %s in the directory in time\n", kim_client_org (client), org,
             present? "never appeared": "never left");
    exit (1);
}

//  The state of `referral` as `client`'s broker knows it.
static void
s_referral_state (kim_client_t *client, const char *referral, char *state, size_t size)
{
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (&cmd [0], KIM_CMD_REFERRAL_QUERY);
    snprintf (cmd [0].query_id, sizeof cmd [0].query_id, "rq");
    snprintf (cmd [0].referral_id, sizeof cmd [0].referral_id, "%s", referral);
    ITEST_RC (kim_client_request (client, &cmd [0], &cmd [1], 5000), 0);
    KIM_CHECK (cmd [1].id == KIM_CMD_REFERRAL_INFO && cmd [1].count == 1);
    const char *at = memmem (cmd [1].body, cmd [1].body_size, "\"state\":\"", 9);
    KIM_CHECK (at);
    at += 9;
    size_t n = 0;
    while (at + n < (const char *) cmd [1].body + cmd [1].body_size && at [n] != '"' && n + 1 < size)
        n++;
    memcpy (state, at, n);
    state [n] = 0;
    free (cmd);
}

//  Waits until both ends agree on `referral`'s state and it is `expected`.
static void
s_wait_state (kim_client_t *a, kim_client_t *b, const char *referral, const char *expected)
{
    char one [32] = "", two [32] = "";
    int64_t deadline = s_itest_now () + 15000;
    while (s_itest_now () < deadline) {
        s_referral_state (a, referral, one, sizeof one);
        s_referral_state (b, referral, two, sizeof two);
        if (streq (one, expected) && streq (two, expected))
            return;
        zclock_sleep (100);
    }
    fprintf (stderr, "referral %s: %s at %s, %s at %s; expected %s at both\n", referral, one,
             kim_client_org (a), two, kim_client_org (b), expected);
    exit (1);
}

//  Receives deliveries for a while and fails on any: nothing arrives twice.
static void
s_expect_quiet (kim_client_t *client, int ms)
{
    kim_event_t event;
    int rc = kim_client_recv (client, &event, ms);
    if (rc == 0) {
        s_itest_print_event (kim_client_org (client), &event);
        KIM_CHECK (!"an unexpected delivery");
    }
    KIM_CHECK (rc == -KIM_E_TIMEOUT);
}

static void
s_test_referral (void)
{
    //  Steinfurt's office signs: Coesfeld checks its signature with the key
    //  from Steinfurt's directory.
    const char *a_orgs [] = { "kim.steinfurt:agency+sign", NULL };
    const char *b_orgs [] = { "jc.borken", NULL };
    const char *c_orgs [] = { "jc.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.borken", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, b_orgs, c_orgs };
    s_districts (3, names, orgs);
    s_start_all (3);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *jc = kim_testbroker_client (s_brokers [2], "jc.coesfeld", 16, true);
    KIM_CHECK (kim && jc);
    s_wait_directory (kim, "jc.coesfeld", true);
    s_wait_directory (kim, "jc.borken", true);
    s_wait_directory (jc, "kim.steinfurt", true);

    //  The directory names the home broker of a remote organisation.
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (&cmd [0], KIM_CMD_DIRECTORY);
    cmd [0].homes = true;
    ITEST_RC (kim_client_request (kim, &cmd [0], &cmd [1], 5000), 0);
    KIM_CHECK (cmd [1].count == 3 && cmd [1].dir_count == 3 && cmd [1].dir);
    for (size_t i = 0; i < cmd [1].dir_count; i++) {
        const kim_dir_entry_t *entry = &cmd [1].dir [i];
        const char *home = streq (entry->id, "jc.coesfeld")? "broker.coesfeld"
                         : streq (entry->id, "jc.borken")? "broker.borken": "";
        KIM_CHECK (streq (entry->home, home));
    }
    free (cmd);
    const kim_dir_entry_t *entries;
    size_t count;
    ITEST_RC (kim_client_directory (kim, "jc.coesfeld", &entries, &count, 5000), 0);
    KIM_CHECK (count == 1 && !entries [0].home [0]);        //  not asked: not told
    ITEST_RC (kim_client_directory (jc, "kim.steinfurt", &entries, &count, 5000), 0);
    KIM_CHECK (count == 1 && streq (entries [0].sign_key,
                                    kim_testbroker_sign_public (s_brokers [0], "kim.steinfurt")));

    //  A REFERRAL across districts: receipted at home, sealed end to end.
    kim_msg_t msg;
    kim_test_referral (&msg, "jc.coesfeld", "R-X1");
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-x1");
    uint64_t seq;
    bool dup;
    ITEST_RC (kim_client_send (kim, &msg, "Hallo Coesfeld", 14, &seq, &dup, 10000), 0);
    KIM_CHECK (!dup);
    kim_event_t event;
    int64_t deadline = s_itest_now () + 15000;
    int rc;
    while ((rc = kim_client_recv (jc, &event, 200)) == -KIM_E_TIMEOUT && s_itest_now () < deadline)
        ;
    ITEST_RC (rc, 0);
    KIM_CHECK (event.type == KIM_EVENT_DELIVER && event.msg.type == KIM_TYPE_REFERRAL);
    KIM_CHECK (streq (event.msg.msg_id, "m-x1") && streq (event.msg.sender, "kim.steinfurt"));
    KIM_CHECK (event.msg.has_sig);                  //  the header crossed unchanged
    KIM_CHECK (!event.sealed_error && event.payload_size == 14
               && memcmp (event.payload, "Hallo Coesfeld", 14) == 0);
    ITEST_RC (kim_client_ack (jc, event.seq), 0);
    ITEST_RC (kim_client_flush (jc, 5000), 0);

    //  The far broker's DELIVERED travels back to the sender.
    LC_WAIT (kim, KIM_TYPE_DELIVERED, "R-X1", &event);
    KIM_CHECK (streq (event.msg.sender, "broker.coesfeld"));
    s_wait_state (kim, jc, "R-X1", "DELIVERED");

    //  The answer travels the reverse link; both ends agree.
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, "kim.steinfurt", "R-X1", "m-x2", NULL);
    LC_SEND (jc, &msg, 0, NULL);
    LC_WAIT (kim, KIM_TYPE_ACCEPT, "R-X1", &event);
    KIM_CHECK (streq (event.msg.sender, "jc.coesfeld"));
    s_wait_state (kim, jc, "R-X1", "ACCEPTED");

    //  A resend of the same msg_id is a duplicate at home and goes no further.
    kim_test_referral (&msg, "jc.coesfeld", "R-X1");
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-x1");
    ITEST_RC (kim_client_send (kim, &msg, "Hallo Coesfeld", 14, &seq, &dup, 10000), 0);
    KIM_CHECK (dup);
    s_expect_quiet (jc, 1500);

    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
}

static void
s_test_outage (void)
{
    const char *a_orgs [] = { "kim.steinfurt", NULL };
    const char *c_orgs [] = { "jc.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    s_start_all (2);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    KIM_CHECK (kim);
    s_wait_directory (kim, "jc.coesfeld", true);

    //  The far broker crashes; the near one receipts and keeps what comes.
    KIM_CHECK (kim_testbroker_stop (s_brokers [1], SIGKILL) >= 0);
    enum { COUNT = 40 };
    for (int i = 0; i < COUNT; i++) {
        kim_msg_t msg;
        char id [32];
        snprintf (id, sizeof id, "R-O%02d", i);
        kim_test_referral (&msg, "jc.coesfeld", id);
        snprintf (msg.msg_id, sizeof msg.msg_id, "m-o%02d", i);
        uint64_t seq;
        bool dup;
        ITEST_RC (kim_client_send (kim, &msg, id, strlen (id), &seq, &dup, 10000), 0);
    }
    //  The near broker restarts too, with everything still queued on disk.
    KIM_CHECK (kim_testbroker_stop (s_brokers [0], SIGKILL) >= 0);
    kim_client_destroy (&kim);
    s_start_all (2);
    kim_client_t *jc = kim_testbroker_client (s_brokers [1], "jc.coesfeld", 64, true);
    KIM_CHECK (jc);
    int next = 0;
    int64_t deadline = s_itest_now () + 30000;
    while (next < COUNT && s_itest_now () < deadline) {
        kim_event_t event;
        int rc = kim_client_recv (jc, &event, 200);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        ITEST_RC (rc, 0);
        KIM_CHECK (event.type == KIM_EVENT_DELIVER);
        char want [32];
        snprintf (want, sizeof want, "m-o%02d", next);
        if (!streq (event.msg.msg_id, want)) {
            fprintf (stderr, "got %s, expected %s: out of order or twice\n", event.msg.msg_id,
                     want);
            exit (1);
        }
        ITEST_RC (kim_client_ack (jc, event.seq), 0);
        next++;
    }
    KIM_CHECK (next == COUNT);
    ITEST_RC (kim_client_flush (jc, 5000), 0);
    s_expect_quiet (jc, 1500);
    kim_client_destroy (&jc);
}

static void
s_test_refusal (void)
{
    const char *a_orgs [] = { "kim.steinfurt", NULL };
    const char *c_orgs [] = { "aba.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    //  The far district's policy refuses what the near one's allows.
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/test-policy.cfg", kim_testbroker_dir (s_brokers [1]));
    FILE *file = fopen (path, "w");
    KIM_CHECK (file);
    fprintf (file, "policy\n    checks = \"REFERRAL, FORWARD, HANDOVER_OFFER\"\n"
             "rules\n    coesfeld_no_aba\n        law = \"test\"\n"
             "        why = \"nothing goes to this immigration office\"\n"
             "        from = *\n        to = aba\n        decision = deny\n");
    fclose (file);
    s_start_all (2);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *aba = kim_testbroker_client (s_brokers [1], "aba.coesfeld", 16, true);
    KIM_CHECK (kim && aba);
    s_wait_directory (kim, "aba.coesfeld", true);
    kim_msg_t msg;
    kim_test_referral (&msg, "aba.coesfeld", "R-P1");
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-p1");
    LC_SEND (kim, &msg, 0, NULL);
    kim_event_t event;
    LC_WAIT (kim, KIM_TYPE_UNDELIVERABLE, "R-P1", &event);
    KIM_CHECK (streq (event.msg.ref_msg_id, "m-p1"));
    KIM_CHECK (streq (event.msg.org, "broker.coesfeld"));
    KIM_CHECK (streq (event.msg.code, "policy_deny"));
    KIM_CHECK (streq (event.msg.rule, "coesfeld_no_aba"));
    KIM_CHECK (strstr (event.msg.note, "broker.coesfeld") && strstr (event.msg.note, "coesfeld_no_aba"));
    //  The referral is closed at the sender's broker, not left SENT.
    char state [32];
    s_referral_state (kim, "R-P1", state, sizeof state);
    KIM_CHECK (streq (state, "UNDELIVERABLE"));
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, "aba.coesfeld", "R-P1", "m-p2", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_STATE, "UNDELIVERABLE");
    s_expect_quiet (aba, 1000);
    kim_client_destroy (&kim);
    kim_client_destroy (&aba);
}

//  Replaces the first `from` in the file at `path` by `to`.
static void
s_edit (const char *path, const char *from, const char *to)
{
    FILE *file = fopen (path, "r");
    KIM_CHECK (file);
    static char text [65536];
    size_t size = fread (text, 1, sizeof text - 1, file);
    fclose (file);
    text [size] = 0;
    char *at = strstr (text, from);
    KIM_CHECK (at);
    file = fopen (path, "w");
    KIM_CHECK (file);
    fwrite (text, 1, (size_t) (at - text), file);
    fputs (to, file);
    fputs (at + strlen (from), file);
    fclose (file);
}

static void
s_test_rotation (void)
{
    const char *a_orgs [] = { "kim.steinfurt", "mbe.steinfurt", NULL };
    const char *c_orgs [] = { "jc.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    s_start_all (2);
    kim_client_t *jc = kim_testbroker_client (s_brokers [1], "jc.coesfeld", 16, true);
    KIM_CHECK (jc);
    s_wait_directory (jc, "kim.steinfurt", true);
    s_wait_directory (jc, "mbe.steinfurt", true);
    const kim_dir_entry_t *entries;
    size_t count;
    ITEST_RC (kim_client_directory (jc, "kim.steinfurt", &entries, &count, 5000), 0);
    char old_key [41];
    memcpy (old_key, entries [0].public_key, 41);

    //  Steinfurt rotates one key and revokes another, and reloads.
    zcert_t *cert = zcert_new ();
    char new_key [41];
    memcpy (new_key, zcert_public_txt (cert), 41);
    zcert_destroy (&cert);
    const char *config = kim_testbroker_config (s_brokers [0]);
    char from [80], to [120];
    snprintf (from, sizeof from, "public_key = \"%s\"", old_key);
    snprintf (to, sizeof to, "public_key = \"%s\"", new_key);
    s_edit (config, from, to);
    s_edit (config, "name = \"Test mbe.steinfurt\"", "name = \"Test mbe.steinfurt\"\n        revoked = 1");
    KIM_CHECK (kill (kim_testbroker_pid (s_brokers [0]), SIGHUP) == 0);

    //  Coesfeld learns both without a restart.
    s_wait_directory (jc, "mbe.steinfurt", false);
    int64_t deadline = s_itest_now () + 15000;
    bool rotated = false;
    while (!rotated && s_itest_now () < deadline) {
        ITEST_RC (kim_client_directory (jc, "kim.steinfurt", &entries, &count, 5000), 0);
        rotated = count == 1 && streq (entries [0].public_key, new_key);
        if (!rotated)
            zclock_sleep (100);
    }
    KIM_CHECK (rotated);
    //  Mail to the revoked office is refused at once.
    kim_msg_t msg;
    kim_test_referral (&msg, "mbe.steinfurt", "R-V1");
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-v1");
    LC_SEND (jc, &msg, KIM_E_UNKNOWN_RECIPIENT, NULL);
    kim_client_destroy (&jc);
}

static void
s_test_handover (void)
{
    const char *a_orgs [] = { "kim.steinfurt", "jc.steinfurt", NULL };
    const char *c_orgs [] = { "kim.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    s_start_all (2);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *jc = kim_testbroker_client (s_brokers [0], "jc.steinfurt", 16, true);
    kim_client_t *far = kim_testbroker_client (s_brokers [1], "kim.coesfeld", 16, true);
    KIM_CHECK (kim && jc && far);
    s_wait_directory (kim, "kim.coesfeld", true);
    s_wait_directory (far, "kim.steinfurt", true);

    //  A case in Steinfurt with a referral to its job centre.
    kim_msg_t msg;
    kim_event_t event;
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, "jc.steinfurt", "R-H1", "m-h1", "C-H");
    LC_SEND (kim, &msg, 0, NULL);
    LC_WAIT (jc, KIM_TYPE_REFERRAL, "R-H1", &event);

    //  The family moves: Steinfurt hands the case to Coesfeld's case management.
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, "kim.coesfeld", "C-H", "m-h2", NULL);
    msg.referral_count = 1;
    snprintf (msg.referrals [0], sizeof msg.referrals [0], "R-H1");
    LC_SEND (kim, &msg, 0, NULL);
    LC_WAIT (far, KIM_TYPE_HANDOVER_OFFER, "C-H", &event);
    KIM_CHECK (streq (event.msg.sender, "kim.steinfurt"));
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, "kim.steinfurt", "C-H", "m-h3", "m-h2");
    LC_SEND (far, &msg, 0, NULL);
    LC_WAIT (kim, KIM_TYPE_HANDOVER_ACCEPT, "C-H", &event);

    //  Coesfeld leads at both ends: Steinfurt may no longer close the case,
    //  its open referral now has Coesfeld as sender, and Coesfeld may close it.
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-H", "m-h4", NULL);
    LC_SEND (kim, &msg, KIM_E_NOT_LEAD, "is not the lead of case C-H");
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (&cmd [0], KIM_CMD_REFERRAL_QUERY);
    snprintf (cmd [0].query_id, sizeof cmd [0].query_id, "rq");
    snprintf (cmd [0].referral_id, sizeof cmd [0].referral_id, "R-H1");
    ITEST_RC (kim_client_request (jc, &cmd [0], &cmd [1], 5000), 0);
    KIM_CHECK (cmd [1].count == 1);
    KIM_CHECK (memmem (cmd [1].body, cmd [1].body_size, "\"sender\":\"kim.coesfeld\"", 23));
    free (cmd);
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-H", "m-h5", NULL);
    LC_SEND (far, &msg, 0, NULL);
    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_client_destroy (&far);
}

//  The open referrals of a case handed across districts move with it: the
//  new lead's broker holds them in the state they had, answers of the
//  offering district's offices pass both brokers' life cycles, and both
//  ends agree on every state.
static void
s_test_handover_referrals (void)
{
    const char *a_orgs [] = { "kim.steinfurt", "jc.steinfurt", NULL };
    const char *c_orgs [] = { "kim.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    s_start_all (2);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *jc = kim_testbroker_client (s_brokers [0], "jc.steinfurt", 16, true);
    kim_client_t *far = kim_testbroker_client (s_brokers [1], "kim.coesfeld", 16, true);
    KIM_CHECK (kim && jc && far);
    s_wait_directory (kim, "kim.coesfeld", true);
    s_wait_directory (far, "kim.steinfurt", true);

    //  Two referrals to Steinfurt's job centre: one delivered, one accepted;
    //  a third withdrawn (closed: it does not move).
    kim_msg_t msg;
    kim_event_t event;
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, "jc.steinfurt", "R-M1", "m-m1", "C-M");
    LC_SEND (kim, &msg, 0, NULL);
    LC_WAIT (jc, KIM_TYPE_REFERRAL, "R-M1", &event);
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, "jc.steinfurt", "R-M2", "m-m2", "C-M");
    LC_SEND (kim, &msg, 0, NULL);
    LC_WAIT (jc, KIM_TYPE_REFERRAL, "R-M2", &event);
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, "kim.steinfurt", "R-M2", "m-m3", NULL);
    LC_SEND (jc, &msg, 0, NULL);
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, "jc.steinfurt", "R-M3", "m-m4", "C-M");
    LC_SEND (kim, &msg, 0, NULL);
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, "jc.steinfurt", "R-M3", "m-m5", NULL);
    LC_SEND (kim, &msg, 0, NULL);

    //  The family moves to Coesfeld.
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, "kim.coesfeld", "C-M", "m-m6", NULL);
    msg.referral_count = 3;
    snprintf (msg.referrals [0], sizeof msg.referrals [0], "R-M1");
    snprintf (msg.referrals [1], sizeof msg.referrals [1], "R-M2");
    snprintf (msg.referrals [2], sizeof msg.referrals [2], "R-M3");
    LC_SEND (kim, &msg, 0, NULL);
    LC_WAIT (far, KIM_TYPE_HANDOVER_OFFER, "C-M", &event);
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, "kim.steinfurt", "C-M", "m-m7", "m-m6");
    LC_SEND (far, &msg, 0, NULL);

    //  Coesfeld's broker is told of each open referral, in its state.
    LC_WAIT (far, KIM_TYPE_HANDED_OVER, "R-M1", &event);
    KIM_CHECK (streq (event.msg.sender, "broker.steinfurt") && streq (event.msg.org, "jc.steinfurt"));
    KIM_CHECK (streq (event.msg.code, "delivered") && streq (event.msg.ref_msg_id, "m-m1"));
    KIM_CHECK (event.msg.deadline > 0 && streq (event.msg.case_id, "C-M"));
    LC_WAIT (far, KIM_TYPE_HANDED_OVER, "R-M2", &event);
    KIM_CHECK (streq (event.msg.code, "accepted"));
    s_wait_state (jc, far, "R-M1", "DELIVERED");
    s_wait_state (jc, far, "R-M2", "ACCEPTED");

    //  The job centre answers the new lead across the link: both life
    //  cycles pass it, both ends agree.
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, "kim.coesfeld", "R-M1", "m-m8", NULL);
    LC_SEND (jc, &msg, 0, NULL);
    LC_WAIT (far, KIM_TYPE_ACCEPT, "R-M1", &event);
    KIM_CHECK (streq (event.msg.sender, "jc.steinfurt"));
    s_wait_state (jc, far, "R-M1", "ACCEPTED");
    s_lc_msg (&msg, KIM_TYPE_STATUS, "kim.coesfeld", "R-M2", "m-m9", "in_progress");
    LC_SEND (jc, &msg, 0, NULL);
    LC_WAIT (far, KIM_TYPE_STATUS, "R-M2", &event);
    s_wait_state (jc, far, "R-M2", "IN_PROGRESS");

    //  The new lead's own messages pass too; the old lead's are not its any more.
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, "jc.steinfurt", "R-M1", "m-m10", NULL);
    LC_SEND (far, &msg, 0, NULL);
    LC_WAIT (jc, KIM_TYPE_WITHDRAW, "R-M1", &event);
    s_wait_state (jc, far, "R-M1", "WITHDRAWN");
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, "jc.steinfurt", "R-M2", "m-m11", NULL);
    LC_SEND (kim, &msg, KIM_E_UNKNOWN_REFERRAL, "R-M2");
    //  A bad move is refused by the new lead's broker itself.
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, "jc.steinfurt", "R-M2", "m-m12", NULL);
    LC_SEND (far, &msg, KIM_E_BAD_STATE, "IN_PROGRESS");
    s_expect_quiet (far, 500);
    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_client_destroy (&far);
}

//  FORWARD across districts: to an office of the district of the
//  referral's sender, and to one of the forwarder's own district while the
//  sender is far; a third district is out of reach.
static void
s_test_forward (void)
{
    const char *a_orgs [] = { "kim.steinfurt", "jc.steinfurt", NULL };
    const char *b_orgs [] = { "jc.borken", NULL };
    const char *c_orgs [] = { "jc.coesfeld", "mbe.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.borken", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, b_orgs, c_orgs };
    s_districts (3, names, orgs);
    s_start_all (3);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *jc = kim_testbroker_client (s_brokers [0], "jc.steinfurt", 16, true);
    kim_client_t *far = kim_testbroker_client (s_brokers [2], "jc.coesfeld", 16, true);
    kim_client_t *mbe = kim_testbroker_client (s_brokers [2], "mbe.coesfeld", 16, true);
    KIM_CHECK (kim && jc && far && mbe);
    s_wait_directory (kim, "jc.coesfeld", true);
    s_wait_directory (far, "jc.steinfurt", true);
    s_wait_directory (far, "jc.borken", true);

    kim_msg_t msg;
    kim_event_t event;
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, "jc.coesfeld", "R-F1", "m-f1", "C-F");
    LC_SEND (kim, &msg, 0, NULL);
    LC_WAIT (far, KIM_TYPE_REFERRAL, "R-F1", &event);
    s_wait_state (kim, far, "R-F1", "DELIVERED");

    //  Out of reach: an office of a third district.
    s_lc_msg (&msg, KIM_TYPE_FORWARD, "kim.steinfurt", "R-F1", "m-f2", "jc.borken");
    LC_SEND (far, &msg, KIM_E_UNKNOWN_RECIPIENT, "broker.borken");

    //  To the job centre of the sender's district: it crosses with the
    //  referral's sender as recipient, and opens the new referral at both.
    s_lc_msg (&msg, KIM_TYPE_FORWARD, "kim.steinfurt", "R-F1", "m-f3", "jc.steinfurt");
    LC_SEND (far, &msg, 0, NULL);
    LC_WAIT (jc, KIM_TYPE_FORWARD, "R-F1", &event);
    KIM_CHECK (streq (event.msg.sender, "jc.coesfeld") && streq (event.msg.org, "jc.steinfurt"));
    LC_WAIT (kim, KIM_TYPE_FORWARD, "R-F1", &event);
    s_wait_state (kim, far, "R-F1", "FORWARDED");
    //  The new recipient's ack makes it DELIVERED at both ends.
    LC_WAIT (far, KIM_TYPE_DELIVERED, "m-f3", &event);
    s_wait_state (jc, far, "m-f3", "DELIVERED");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, "jc.coesfeld", "m-f3", "m-f4", NULL);
    LC_SEND (jc, &msg, 0, NULL);
    LC_WAIT (far, KIM_TYPE_ACCEPT, "m-f3", &event);
    s_wait_state (jc, far, "m-f3", "ACCEPTED");

    //  To an office of the forwarder's own district, the sender being far:
    //  the sender's broker takes it although it does not know that office
    //  as its own.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, "jc.coesfeld", "R-F2", "m-f5", "C-F");
    LC_SEND (kim, &msg, 0, NULL);
    LC_WAIT (far, KIM_TYPE_REFERRAL, "R-F2", &event);
    s_lc_msg (&msg, KIM_TYPE_FORWARD, "kim.steinfurt", "R-F2", "m-f6", "mbe.coesfeld");
    LC_SEND (far, &msg, 0, NULL);
    LC_WAIT (mbe, KIM_TYPE_FORWARD, "R-F2", &event);
    LC_WAIT (kim, KIM_TYPE_FORWARD, "R-F2", &event);
    s_wait_state (kim, far, "R-F2", "FORWARDED");
    s_expect_quiet (kim, 1000);
    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_client_destroy (&far);
    kim_client_destroy (&mbe);
}

//  An operator's STATUS lists the links: the peer, whether it is up, and
//  what waits for it (`queued`). Until `up` and `queued` read as asked.
static void
s_wait_link (kim_client_t *ops, const char *peer, bool up, uint64_t queued)
{
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    char want [128], line [512] = "";
    snprintf (want, sizeof want, "{\"peer\":\"%s\",\"up\":%s,", peer, up? "true": "false");
    char count [64];
    snprintf (count, sizeof count, "\"queued\":%" PRIu64 ",", queued);
    int64_t deadline = s_itest_now () + 15000;
    while (s_itest_now () < deadline) {
        kim_cmd_init (&cmd [0], KIM_CMD_STATUS);
        ITEST_RC (kim_client_request (ops, &cmd [0], &cmd [1], 5000), 0);
        KIM_CHECK (cmd [1].id == KIM_CMD_STATUS_REPLY && cmd [1].body_size > 0);
        size_t size = cmd [1].body_size < sizeof line - 1? cmd [1].body_size: sizeof line - 1;
        memcpy (line, cmd [1].body, size);
        line [size] = 0;
        if (strstr (line, want) && strstr (line, count) && strstr (line, "\"remote_orgs\":1}")) {
            free (cmd);
            return;
        }
        zclock_sleep (100);
    }
    fprintf (stderr, "link to %s: %s; expected up %d, queued %" PRIu64 "\n", peer, line, up,
             queued);
    exit (1);
}

static void
s_test_status (void)
{
    const char *a_orgs [] = { "kim.steinfurt", "ops.steinfurt:operator", NULL };
    const char *c_orgs [] = { "jc.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    s_start_all (2);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *ops = kim_testbroker_client (s_brokers [0], "ops.steinfurt", 0, true);
    KIM_CHECK (kim && ops);
    s_wait_link (ops, "broker.coesfeld", true, 0);
    //  An agency's STATUS names no links.
    kim_cmd_t *cmd = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    kim_cmd_init (&cmd [0], KIM_CMD_STATUS);
    ITEST_RC (kim_client_request (kim, &cmd [0], &cmd [1], 5000), 0);
    KIM_CHECK (cmd [1].id == KIM_CMD_STATUS_REPLY && cmd [1].body_size == 0);
    free (cmd);

    //  The far broker goes away: the link goes down, and mail waits for it.
    KIM_CHECK (kim_testbroker_stop (s_brokers [1], SIGKILL) >= 0);
    s_wait_link (ops, "broker.coesfeld", false, 0);
    for (int i = 0; i < 3; i++) {
        kim_msg_t msg;
        char id [32];
        snprintf (id, sizeof id, "R-S%d", i);
        kim_test_referral (&msg, "jc.coesfeld", id);
        snprintf (msg.msg_id, sizeof msg.msg_id, "m-s%d", i);
        LC_SEND (kim, &msg, 0, NULL);
    }
    s_wait_link (ops, "broker.coesfeld", false, 3);
    //  Back: the link comes up and the link mailbox empties.
    KIM_CHECK (kim_testbroker_start (s_brokers [1]) == 0);
    s_wait_link (ops, "broker.coesfeld", true, 0);
    kim_client_destroy (&kim);
    kim_client_destroy (&ops);
}

static void
s_test_trust (void)
{
    const char *a_orgs [] = { "kim.steinfurt", NULL };
    const char *c_orgs [] = { "jc.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    //  Coesfeld's operator typed a wrong signing key for Steinfurt.
    uint8_t pk [crypto_sign_PUBLICKEYBYTES], sk [crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair (pk, sk);
    char wrong [41], from [64], to [64];
    zmq_z85_encode (wrong, pk, sizeof pk);
    snprintf (from, sizeof from, "sign_key = \"%s\"", kim_testbroker_broker_sign (s_brokers [0]));
    snprintf (to, sizeof to, "sign_key = \"%s\"", wrong);
    const char *config = kim_testbroker_config (s_brokers [1]);
    s_edit (config, from, to);
    s_start_all (2);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *jc = kim_testbroker_client (s_brokers [1], "jc.coesfeld", 16, true);
    KIM_CHECK (kim && jc);
    //  Steinfurt believes Coesfeld's directory; Coesfeld refuses Steinfurt's.
    s_wait_directory (kim, "jc.coesfeld", true);
    kim_msg_t msg;
    kim_test_referral (&msg, "jc.coesfeld", "R-T1");
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-t1");
    LC_SEND (kim, &msg, 0, NULL);
    //  The message waits at home: neither delivered nor refused.
    s_expect_quiet (jc, 2000);
    s_expect_quiet (kim, 100);
    const kim_dir_entry_t *entries;
    size_t count;
    ITEST_RC (kim_client_directory (jc, "kim.steinfurt", &entries, &count, 5000), 0);
    KIM_CHECK (count == 0);                 //  a directory that does not verify is not believed
    //  The key is corrected and reloaded: the link comes up and it arrives.
    s_edit (config, to, from);
    KIM_CHECK (kill (kim_testbroker_pid (s_brokers [1]), SIGHUP) == 0);
    kim_event_t event;
    s_lc_wait (__FILE__, __LINE__, jc, KIM_TYPE_REFERRAL, "R-T1", &event, 30000);
    KIM_CHECK (streq (event.msg.msg_id, "m-t1"));
    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
}

//  Every transfer needs a valid consent, at this broker.
static void
s_consent_policy (kim_testbroker_t *broker)
{
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/test-policy.cfg", kim_testbroker_dir (broker));
    FILE *file = fopen (path, "w");
    KIM_CHECK (file);
    fprintf (file, "policy\n    checks = \"REFERRAL, FORWARD, HANDOVER_OFFER\"\n"
             "rules\n    consent_only\n        law = \"test: consent only\"\n"
             "        from = *\n        to = *\n        decision = allow\n        basis = consent\n"
             "        categories = \"art9, sgb8_s65, stgb203, residence_status, contact\"\n");
    fclose (file);
}

static void
s_test_consent (void)
{
    const char *a_orgs [] = { "kim.steinfurt", NULL };
    const char *c_orgs [] = { "jc.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, c_orgs };
    s_districts (2, names, orgs);
    s_consent_policy (s_brokers [0]);
    s_consent_policy (s_brokers [1]);
    s_start_all (2);
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    kim_client_t *jc = kim_testbroker_client (s_brokers [1], "jc.coesfeld", 16, true);
    KIM_CHECK (kim && jc);
    s_wait_directory (kim, "jc.coesfeld", true);
    s_wait_directory (jc, "kim.steinfurt", true);

    //  The person consents, in Steinfurt, to a transfer to Coesfeld's job centre.
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_GRANT;
    msg.created_at = (uint64_t) zclock_time ();
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-g1");
    snprintf (msg.case_id, sizeof msg.case_id, "case-R-G1");
    snprintf (msg.grant_id, sizeof msg.grant_id, "g-1");
    snprintf (msg.subject, sizeof msg.subject, "subj-R-G1");
    msg.recipient_count = 1;
    snprintf (msg.recipients [0], sizeof msg.recipients [0], "jc.coesfeld");
    msg.purpose_count = 1;
    snprintf (msg.purposes [0], sizeof msg.purposes [0], "integration");
    msg.valid_until = (uint64_t) zclock_time () + 86400000;
    LC_SEND (kim, &msg, 0, NULL);

    //  A referral under it passes both brokers' policies: the consent went
    //  to Coesfeld's broker ahead of it.
    kim_test_referral (&msg, "jc.coesfeld", "R-G1");
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-g2");
    msg.basis = KIM_BASIS_CONSENT;
    msg.citation [0] = 0;
    snprintf (msg.consent_id, sizeof msg.consent_id, "g-1");
    LC_SEND (kim, &msg, 0, NULL);
    kim_event_t event;
    LC_WAIT (jc, KIM_TYPE_REFERRAL, "R-G1", &event);
    KIM_CHECK (streq (event.msg.consent_id, "g-1"));
    LC_WAIT (kim, KIM_TYPE_DELIVERED, "R-G1", &event);      //  not UNDELIVERABLE

    //  The person withdraws the consent in Steinfurt: Coesfeld's broker
    //  learns it too and tells its job centre, which received data under it.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_REVOKE;
    msg.created_at = (uint64_t) zclock_time ();
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-g3");
    snprintf (msg.grant_id, sizeof msg.grant_id, "g-1");
    LC_SEND (kim, &msg, 0, NULL);
    int64_t deadline = s_itest_now () + 15000;
    bool told = false;
    while (!told && s_itest_now () < deadline) {
        int rc = kim_client_recv (jc, &event, 200);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        ITEST_RC (rc, 0);
        KIM_CHECK (event.type == KIM_EVENT_DELIVER);
        ITEST_RC (kim_client_ack (jc, event.seq), 0);
        told = event.msg.type == KIM_TYPE_CONSENT_REVOKE && streq (event.msg.grant_id, "g-1")
            && streq (event.msg.sender, "broker.coesfeld");
    }
    KIM_CHECK (told);
    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
}

//  A raw session of the peer broker `as` (its broker key) at `broker`.
static zsock_t *
s_peer_session (kim_testbroker_t *broker, kim_testbroker_t *as)
{
    zsock_t *sock = s_raw_new (broker, kim_testbroker_name (as), kim_testbroker_broker_public (as),
                               kim_testbroker_broker_secret (as));
    s_raw_hello (sock, kim_testbroker_name (as), 0);
    return sock;
}

static void
s_test_roles (void)
{
    const char *a_orgs [] = { "kim.steinfurt", NULL };
    const char *b_orgs [] = { "jc.borken", NULL };
    const char *c_orgs [] = { "jc.coesfeld", NULL };
    const char *names [] = { "broker.steinfurt", "broker.borken", "broker.coesfeld" };
    const char **orgs [] = { a_orgs, b_orgs, c_orgs };
    s_districts (3, names, orgs);
    s_start_all (3);
    kim_client_t *jc = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 0, true);
    KIM_CHECK (jc);
    s_wait_directory (jc, "jc.coesfeld", true);
    s_wait_directory (jc, "jc.borken", true);
    kim_client_destroy (&jc);

    kim_cmd_t *cmd = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    KIM_CHECK (cmd);
    //  An organisation's key may not forward as a broker would.
    zsock_t *office = s_raw_new (s_brokers [0], "kim.steinfurt", NULL, NULL);
    s_raw_hello (office, "kim.steinfurt", 0);
    kim_cmd_init (cmd, KIM_CMD_PEER_FORWARD);
    cmd->seq = 1;
    kim_test_referral (&cmd->msg, "kim.steinfurt", "R-F1");
    snprintf (cmd->msg.msg_id, sizeof cmd->msg.msg_id, "m-f1");
    snprintf (cmd->msg.sender, sizeof cmd->msg.sender, "jc.coesfeld");
    cmd->msg.has_payload_hash = true;
    crypto_generichash (cmd->msg.payload_hash, KIM_HASH_SIZE, NULL, 0, NULL, 0);
    s_raw_send_cmd (office, cmd, NULL, 0, 0);
    s_raw_expect_reject (__FILE__, __LINE__, office, KIM_E_FORBIDDEN, NULL, NULL);
    s_raw_ping (office);
    zsock_destroy (&office);

    //  A peer may use the federation commands only.
    zsock_t *peer = s_peer_session (s_brokers [0], s_brokers [1]);
    kim_msg_t msg;
    kim_test_referral (&msg, "kim.steinfurt", "R-F2");
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-f2");
    s_raw_send_msg (peer, &msg, NULL, 0, 0);
    s_raw_expect_reject (__FILE__, __LINE__, peer, KIM_E_FORBIDDEN, "m-f2", NULL);
    kim_cmd_init (cmd, KIM_CMD_STATUS);
    s_raw_send_cmd (peer, cmd, NULL, 0, 0);
    s_raw_expect_reject (__FILE__, __LINE__, peer, KIM_E_FORBIDDEN, NULL, NULL);
    kim_cmd_init (cmd, KIM_CMD_DIRECTORY);
    s_raw_send_cmd (peer, cmd, NULL, 0, 0);
    s_raw_expect_reject (__FILE__, __LINE__, peer, KIM_E_FORBIDDEN, NULL, NULL);
    s_raw_ping (peer);

    //  Borken's key vouches for Borken's offices only: a message claiming
    //  Coesfeld's job centre as sender is refused and stored nowhere.
    kim_cmd_init (cmd, KIM_CMD_PEER_FORWARD);
    cmd->seq = 7;
    kim_test_referral (&cmd->msg, "kim.steinfurt", "R-F3");
    snprintf (cmd->msg.msg_id, sizeof cmd->msg.msg_id, "m-f3");
    snprintf (cmd->msg.sender, sizeof cmd->msg.sender, "jc.coesfeld");
    cmd->msg.has_payload_hash = true;
    crypto_generichash (cmd->msg.payload_hash, KIM_HASH_SIZE, NULL, 0, NULL, 0);
    s_raw_send_cmd (peer, cmd, NULL, 0, 0);
    KIM_CHECK (s_raw_recv (peer, cmd, 10000) == 0);
    if (cmd->id != KIM_CMD_PEER_REFUSED || cmd->seq != 7 || cmd->code != KIM_E_SENDER_MISMATCH) {
        s_raw_print ("forged PEER_FORWARD answered with", cmd);
        exit (1);
    }
    //  Nor may it make a broker message up in its own name for an office.
    kim_cmd_init (cmd, KIM_CMD_PEER_FORWARD);
    cmd->seq = 8;
    kim_test_referral (&cmd->msg, "kim.steinfurt", "R-F4");
    snprintf (cmd->msg.msg_id, sizeof cmd->msg.msg_id, "m-f4");
    snprintf (cmd->msg.sender, sizeof cmd->msg.sender, "broker.borken");
    cmd->msg.has_payload_hash = true;
    crypto_generichash (cmd->msg.payload_hash, KIM_HASH_SIZE, NULL, 0, NULL, 0);
    s_raw_send_cmd (peer, cmd, NULL, 0, 0);
    KIM_CHECK (s_raw_recv (peer, cmd, 10000) == 0);
    KIM_CHECK (cmd->id == KIM_CMD_PEER_REFUSED && cmd->seq == 8
               && cmd->code == KIM_E_SENDER_MISMATCH);
    //  A directory that is not signed by the peer's key is refused.
    kim_dir_entry_t entry = { "jc.fake", "Fake", "jc", true, "", "", "" };
    memcpy (entry.public_key, kim_testbroker_broker_public (s_brokers [1]), 41);
    kim_cmd_init (cmd, KIM_CMD_PEER_DIRECTORY);
    snprintf (cmd->broker, sizeof cmd->broker, "broker.borken");
    cmd->dir = &entry;
    cmd->dir_count = 1;
    cmd->serial = (uint64_t) zclock_time () + 100000;
    cmd->has_sig = true;
    memset (cmd->sig, 7, sizeof cmd->sig);
    s_raw_send_cmd (peer, cmd, NULL, 0, 0);
    s_raw_expect_reject (__FILE__, __LINE__, peer, KIM_E_BAD_SIGNATURE, NULL, "sig");
    s_raw_ping (peer);
    zsock_destroy (&peer);

    //  The genuine offices were untouched by all this.
    kim_client_t *kim = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 16, true);
    KIM_CHECK (kim);
    s_expect_quiet (kim, 500);
    kim_client_t *check = kim_testbroker_client (s_brokers [0], "kim.steinfurt", 0, true);
    KIM_CHECK (check);
    s_wait_directory (check, "jc.fake", false);
    kim_client_destroy (&check);
    kim_client_destroy (&kim);
    free (cmd);
}

int
main (int argc, char *argv [])
{
    if (argc != 2) {
        fprintf (stderr, "usage: test_federation referral|outage|refusal|rotation|roles|"
                 "handover|handover_referrals|forward|status|trust|consent\n");
        return 2;
    }
    zsys_init ();
    if (streq (argv [1], "referral"))
        s_test_referral ();
    else
    if (streq (argv [1], "outage"))
        s_test_outage ();
    else
    if (streq (argv [1], "refusal"))
        s_test_refusal ();
    else
    if (streq (argv [1], "rotation"))
        s_test_rotation ();
    else
    if (streq (argv [1], "roles"))
        s_test_roles ();
    else
    if (streq (argv [1], "handover"))
        s_test_handover ();
    else
    if (streq (argv [1], "handover_referrals"))
        s_test_handover_referrals ();
    else
    if (streq (argv [1], "forward"))
        s_test_forward ();
    else
    if (streq (argv [1], "status"))
        s_test_status ();
    else
    if (streq (argv [1], "trust"))
        s_test_trust ();
    else
    if (streq (argv [1], "consent"))
        s_test_consent ();
    else {
        fprintf (stderr, "unknown test %s\n", argv [1]);
        return 2;
    }
    printf ("federation %s: OK\n", argv [1]);
    return 0;
}
