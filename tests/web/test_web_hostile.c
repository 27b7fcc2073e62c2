/*  test_web_hostile.c — kim-agent's web page against requests no browser sends.

    A real broker and two real agents (kim.a over its API, mbe.b with the
    page on), raw HTTP over TCP so the test can send what a browser would
    not: forms without or with forged tokens, from other origins, with
    broken encodings, NULs, duplicate or too many fields; hostile paths and
    methods; garbage cookies. Also: the page does not open the bearer API,
    markup in a header field comes out escaped, the lockout ends after its
    time, and `kim-agent --add-user` refuses bad input. And a broker's
    ERASURE notice from before notices named their transfers (written into
    the store as the link would have): dealing with it erases every copy
    about the person, and forms for it that the page did not make change
    nothing.
*/
#include <czmq.h>
#include <signal.h>
#include <sys/wait.h>

#include "kim_agent.h"
#include "kim_agenttest.h"
#include "kim_testhttp.h"

#define S_PASSWORD "correct horse battery"

//  One request; returns the status, with the whole answer (headers and
//  body) in *answer.
static int
s_raw (int port, const char *request, char **answer)
{
    return kim_testhttp_exchange (port, request, strlen (request), 20000, answer);
}

//  A GET or a form POST with optional cookie and extra header lines.
static int
s_request (int port, const char *method, const char *path, const char *cookie,
           const char *extra, const char *form, char **answer)
{
    char request [16384];
    int length = snprintf (request, sizeof request, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                           "Connection: close\r\n%s", method, path, port, extra? extra: "");
    if (cookie)
        length += snprintf (request + length, sizeof request - (size_t) length,
                            "Cookie: %s\r\n", cookie);
    if (form)
        length += snprintf (request + length, sizeof request - (size_t) length,
                            "Content-Type: application/x-www-form-urlencoded\r\n"
                            "Content-Length: %zu\r\n", strlen (form));
    snprintf (request + length, sizeof request - (size_t) length, "\r\n%s", form? form: "");
    return s_raw (port, request, answer);
}

//  Copies the value of `name=` from a Set-Cookie or an input of `answer`.
static bool
s_find (const char *answer, const char *prefix, char *out, size_t size)
{
    const char *at = answer? strstr (answer, prefix): NULL;
    if (!at)
        return false;
    at += strlen (prefix);
    size_t length = strcspn (at, ";\"\r\n");
    if (length >= size)
        return false;
    memcpy (out, at, length);
    out [length] = 0;
    return true;
}

//  The login page's cookie and token, as "kim_login=..." and the token.
static void
s_login_form (int port, char cookie [128], char token [80])
{
    char *answer = NULL;
    KIM_CHECK (s_request (port, "GET", "/ui/login", NULL, NULL, NULL, &answer) == 200);
    char value [80];
    KIM_CHECK (s_find (answer, "Set-Cookie: kim_login=", value, sizeof value));
    snprintf (cookie, 128, "kim_login=%s", value);
    KIM_CHECK (s_find (answer, "name=\"csrf\" value=\"", token, 80));
    KIM_CHECK (streq (value, token));
    free (answer);
}

//  A login attempt; returns the status, and the session cookie when 303.
static int
s_login (int port, const char *user, const char *password, char session [128])
{
    char cookie [128], token [80], form [512], *answer = NULL;
    s_login_form (port, cookie, token);
    snprintf (form, sizeof form, "csrf=%s&user=%s&password=%s", token, user, password);
    for (char *p = form; *p; p++)
        if (*p == ' ')
            *p = '+';
    int status = s_request (port, "POST", "/ui/login", cookie, NULL, form, &answer);
    if (session) {
        session [0] = 0;
        char value [80];
        if (status == 303 && s_find (answer, "Set-Cookie: kim_session=", value, sizeof value))
            snprintf (session, 128, "kim_session=%s", value);
    }
    free (answer);
    return status;
}

static int
s_add_user (const char *config, const char *name, const char *role, const char *password)
{
    char command [512];
    const char *agent = getenv ("KIM_AGENT");
    snprintf (command, sizeof command, "'%s' --config '%s' --add-user '%s' --role '%s' "
              ">/dev/null 2>&1", agent? agent: KIM_AGENT_PATH, config, name, role);
    FILE *pipe = popen (command, "w");
    if (!pipe)
        return -1;
    fprintf (pipe, "%s\n", password);
    int status = pclose (pipe);
    return WIFEXITED (status)? WEXITSTATUS (status): -1;
}

//  `kim-agent --check` of `config` with web/policy = `policy` added: its
//  exit status, and the first line it printed in `output`.
static int
s_check_policy (const char *config, const char *policy, char *output, size_t size)
{
    FILE *file = fopen (config, "r");
    KIM_CHECK (file);
    char text [8192];
    size_t length = fread (text, 1, sizeof text - 1, file);
    fclose (file);
    text [length] = 0;
    char *web = strstr (text, "web\n    enabled = 1\n");
    KIM_CHECK (web);
    char copy [PATH_MAX], edited [9000];
    snprintf (copy, sizeof copy, "%s.policy", config);
    web += strlen ("web\n    enabled = 1\n");
    snprintf (edited, sizeof edited, "%.*s    policy = \"%s\"\n%s", (int) (web - text), text,
              policy, web);
    file = fopen (copy, "w");
    KIM_CHECK (file && fputs (edited, file) >= 0 && fclose (file) == 0);
    char command [PATH_MAX * 2];
    const char *agent = getenv ("KIM_AGENT");
    snprintf (command, sizeof command, "'%s' --check --config '%s' 2>&1",
              agent? agent: KIM_AGENT_PATH, copy);
    FILE *pipe = popen (command, "r");
    KIM_CHECK (pipe);
    output [0] = 0;
    if (!fgets (output, (int) size, pipe))
        output [0] = 0;
    char rest [256];
    while (fgets (rest, sizeof rest, pipe))
        ;
    int status = pclose (pipe);
    unlink (copy);
    return WIFEXITED (status)? WEXITSTATUS (status): -1;
}

//  Seqs far above any the test broker hands out: two referrals from kim.a,
//  one about p-old and one about p-keep, and the broker's ERASURE about
//  p-old without a payload, as brokers sent it before PROTOCOL.md 9.3
//  named the transfers.
#define S_OLD_REFERRAL  1000000001ULL
#define S_KEPT_REFERRAL 1000000002ULL
#define S_OLD_NOTICE    1000000003ULL

static void
s_seed_old_notice (const char *dir)
{
    char error [256];
    kim_agent_store_t *store = kim_agent_store_new (dir, 64u * 1024 * 1024, "mbe.b", error,
                                                    sizeof error);
    KIM_CHECK (store);
    kim_agent_txn_t *txn = kim_agent_store_begin (store);
    KIM_CHECK (txn);
    const struct { uint64_t seq; kim_type_t type; const char *subject; const char *payload; }
    items [] = {
        { S_OLD_REFERRAL, KIM_TYPE_REFERRAL, "p-old", "alt und zu loeschen" },
        { S_KEPT_REFERRAL, KIM_TYPE_REFERRAL, "p-keep", "bleibt" },
        { S_OLD_NOTICE, KIM_TYPE_ERASURE, "p-old", "" },
    };
    for (size_t i = 0; i < sizeof items / sizeof items [0]; i++) {
        kim_event_t event;
        memset (&event, 0, sizeof event);
        event.type = KIM_EVENT_DELIVER;
        event.seq = items [i].seq;
        kim_msg_t *msg = &event.msg;
        kim_msg_init (msg);
        msg->type = items [i].type;
        bool referral = items [i].type == KIM_TYPE_REFERRAL;
        snprintf (msg->msg_id, sizeof msg->msg_id, "old-%zu", i);
        msg->created_at = (uint64_t) zclock_time ();
        snprintf (msg->sender, sizeof msg->sender, "%s", referral? "kim.a": "kim.broker");
        snprintf (msg->recipient, sizeof msg->recipient, "mbe.b");
        snprintf (msg->subject, sizeof msg->subject, "%s", items [i].subject);
        if (referral) {
            snprintf (msg->referral_id, sizeof msg->referral_id, "R-old-%zu", i);
            snprintf (msg->case_id, sizeof msg->case_id, "C-old-%zu", i);
            snprintf (msg->purpose, sizeof msg->purpose, "counselling");
            msg->basis = KIM_BASIS_STATUTE;
            snprintf (msg->citation, sizeof msg->citation, "SGB X §69(1)1");
        }
        event.payload = (const uint8_t *) items [i].payload;
        event.payload_size = strlen (items [i].payload);
        bool fresh;
        KIM_CHECK (kim_agent_store_deliver (txn, &event, &fresh) == 0 && fresh);
    }
    KIM_CHECK (kim_agent_store_commit (&txn) == 0);
    kim_agent_store_destroy (&store);
}

//  The payload the agent's API serves for delivery `seq`.
static char *
s_payload (int port, uint64_t seq)
{
    char path [64], *body = NULL;
    snprintf (path, sizeof path, "/v1/inbox/%" PRIu64, seq);
    KIM_CHECK (kim_agenttest_http (port, "GET", path, KIM_AGENTTEST_TOKEN, NULL, &body) == 200);
    json_t *delivery = json_loads (body, 0, NULL);
    free (body);
    const char *payload = json_string_value (json_object_get (delivery, "payload"));
    char *copy = strdup (payload? payload: "(none)");
    json_decref (delivery);
    return copy;
}

int
main (void)
{
    const char *orgs [] = { "kim.a", "mbe.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    char extra [512];
    snprintf (extra, sizeof extra, "web\n    enabled = 1\n    users = \"%s/agent-mbe.b/users\"\n"
              "    max_failures = 2\n    lockout_s = 2\n", kim_testbroker_dir (broker));
    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    KIM_CHECK (kim_agenttest_init (&b, broker, "mbe.b", extra) == 0);

    //  --add-user refuses what it must
    KIM_CHECK (s_add_user (b.config, "anna", "staff", "short") == 2);
    KIM_CHECK (s_add_user (b.config, "anna", "admin", S_PASSWORD) == 2);
    KIM_CHECK (s_add_user (b.config, "Anna Maria", "staff", S_PASSWORD) == 2);
    KIM_CHECK (s_add_user (a.config, "anna", "staff", S_PASSWORD) == 2);   //  no web/users
    KIM_CHECK (s_add_user (b.config, "anna", "staff", "an old password") == 0);
    KIM_CHECK (s_add_user (b.config, "anna", "staff", S_PASSWORD) == 0);   //  replaces it
    KIM_CHECK (s_add_user (b.config, "bert", "readonly", S_PASSWORD) == 0);
    char users_path [256];
    snprintf (users_path, sizeof users_path, "%s/users", b.dir);
    zfile_t *users = zfile_new (NULL, users_path);
    KIM_CHECK (users && zfile_input (users) == 0);
    zchunk_t *chunk = zfile_read (users, 65536, 0);
    KIM_CHECK (chunk);
    char *text = zchunk_strdup (chunk);
    KIM_CHECK (strstr (text, "anna staff $argon2id$") && strstr (text, "bert readonly $argon2id$"));
    KIM_CHECK (!strstr (text, "horse"));
    KIM_CHECK (!strstr (strstr (text, "anna staff") + 1, "anna staff"));   //  replaced, not added
    free (text);
    zchunk_destroy (&chunk);
    zfile_destroy (&users);

    //  web/policy: a copy of the broker's policy is read at --check (and
    //  start); one that does not parse, or is missing, is named
    char output [512], broken_policy [256];
    KIM_CHECK (s_check_policy (b.config, KIM_SOURCE_DIR "/deploy/policy.cfg", output,
                               sizeof output) == 0);
    snprintf (broken_policy, sizeof broken_policy, "%s/broken-policy.cfg", b.dir);
    FILE *file = fopen (broken_policy, "w");
    KIM_CHECK (file && fputs ("policy\n    version = 1\nrules\n    R1\n        from = jc\n",
                              file) >= 0 && fclose (file) == 0);
    KIM_CHECK (s_check_policy (b.config, broken_policy, output, sizeof output) != 0);
    KIM_CHECK (strstr (output, "web/policy") && strstr (output, "broken-policy.cfg"));
    KIM_CHECK (s_check_policy (b.config, "/nonexistent/policy.cfg", output, sizeof output) != 0);
    KIM_CHECK (strstr (output, "web/policy"));

    char store_dir [256];
    snprintf (store_dir, sizeof store_dir, "%s/store", b.dir);
    s_seed_old_notice (store_dir);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);
    int port = b.port;
    char *answer = NULL;

    //  The start page leads to the login; the API still wants its token
    KIM_CHECK (s_request (port, "GET", "/", NULL, NULL, NULL, &answer) == 303);
    KIM_CHECK (strstr (answer, "Location: /ui/inbox"));
    free (answer);
    KIM_CHECK (s_request (port, "GET", "/ui/inbox", NULL, NULL, NULL, &answer) == 303);
    KIM_CHECK (strstr (answer, "Location: /ui/login"));
    free (answer);
    KIM_CHECK (kim_agenttest_http (port, "GET", "/v1/status", NULL, NULL, NULL) == 401);
    KIM_CHECK (s_request (port, "GET", "/ui/style.css", NULL, NULL, NULL, &answer) == 200);
    KIM_CHECK (strstr (answer, "text/css"));
    free (answer);

    //  Login forms that are not what the page made
    char cookie [128], token [80], form [4096];
    s_login_form (port, cookie, token);
    snprintf (form, sizeof form, "csrf=%s&user=anna&password=correct+horse+battery", token);
    KIM_CHECK (s_request (port, "POST", "/ui/login", NULL, NULL, form, &answer) == 403);
    free (answer);                                      //  no login cookie
    KIM_CHECK (s_request (port, "POST", "/ui/login", "kim_login=0000", NULL, form, &answer) == 403);
    free (answer);                                      //  another token
    KIM_CHECK (s_request (port, "POST", "/ui/login", cookie, "Origin: http://evil.example\r\n",
                          form, &answer) == 403);
    free (answer);                                      //  another origin
    char request [8192];
    snprintf (request, sizeof request, "POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
              "Connection: close\r\nCookie: %s\r\nContent-Type: application/json\r\n"
              "Content-Length: %zu\r\n\r\n%s", port, cookie, strlen (form), form);
    KIM_CHECK (s_raw (port, request, &answer) == 403);
    free (answer);                                      //  not a form
    const char *broken [] = {
        "csrf=%s&user=anna&user=anna&password=x",        //  a field twice
        "csrf=%s&user=an%%00na&password=x",              //  a NUL
        "csrf=%s&user=%%ff%%fe&password=x",              //  not UTF-8
        "csrf=%s&%%00=1",
        NULL
    };
    for (size_t i = 0; broken [i]; i++) {
        char bad [512];
        snprintf (bad, sizeof bad, broken [i], token);
        KIM_CHECK (s_request (port, "POST", "/ui/login", cookie, NULL, bad, &answer) == 403);
        free (answer);
    }
    //  Too many fields
    int length = snprintf (form, sizeof form, "csrf=%s", token);
    for (int i = 0; i < 40; i++)
        length += snprintf (form + length, sizeof form - (size_t) length, "&f%d=1", i);
    KIM_CHECK (s_request (port, "POST", "/ui/login", cookie, NULL, form, &answer) == 403);
    free (answer);
    //  Broken percent escapes are taken literally, not crashed on
    snprintf (form, sizeof form, "csrf=%s&user=%%zz%%&password=%%4", token);
    KIM_CHECK (s_request (port, "POST", "/ui/login", cookie, NULL, form, &answer) == 401);
    free (answer);

    //  A real login; the cookie's attributes
    char session [128];
    s_login_form (port, cookie, token);
    snprintf (form, sizeof form, "csrf=%s&user=anna&password=correct+horse+battery", token);
    KIM_CHECK (s_request (port, "POST", "/ui/login", cookie, NULL, form, &answer) == 303);
    KIM_CHECK (strstr (answer, "; Path=/ui; HttpOnly; SameSite=Strict\r\n"));
    char value [80];
    KIM_CHECK (s_find (answer, "Set-Cookie: kim_session=", value, sizeof value));
    KIM_CHECK (strlen (value) == 64);
    snprintf (session, sizeof session, "kim_session=%s", value);
    free (answer);
    KIM_CHECK (s_request (port, "GET", "/ui/inbox", session, NULL, NULL, &answer) == 200);
    char csrf [80];
    KIM_CHECK (s_find (answer, "name=\"csrf\" value=\"", csrf, sizeof csrf));
    KIM_CHECK (strstr (answer, "<html lang=\"de\">"));
    free (answer);
    KIM_CHECK (s_request (port, "GET", "/ui/inbox", "kim_session=zzz", NULL, NULL, &answer) == 303);
    free (answer);

    //  An ERASURE notice that names no transfers: forms the page did not
    //  make change nothing; dealing with it erases every copy about p-old
    KIM_CHECK (s_request (port, "GET", "/ui/erasures", session, NULL, NULL, &answer) == 200);
    KIM_CHECK (strstr (answer, "action=\"/ui/erasures/1000000003\""));
    KIM_CHECK (strstr (answer, "auch aus anderen F"));   //  the label says: every copy
    free (answer);
    const char *notice_forms [][2] = {
        { "/ui/erasures/1000000003", "do=erase" },                  //  the box not ticked
        { "/ui/erasures/1000000003", "do=shred&confirm=yes" },      //  neither erase nor keep
        { "/ui/erasures/1000000001", "do=erase&confirm=yes" },      //  a referral, no notice
        { "/ui/erasures/1000000999", "do=keep" },                   //  no such delivery
        { "/ui/erasures/99999999999999999999", "do=keep" },         //  no seq
        { "/ui/erasures/0", "do=keep" },
        { "/ui/erasures/-3", "do=keep" },
        { "/ui/erasures/1e9", "do=keep" },
    };
    const int notice_status [] = { 400, 400, 404, 404, 404, 404, 404, 404 };
    for (size_t i = 0; i < sizeof notice_forms / sizeof notice_forms [0]; i++) {
        snprintf (form, sizeof form, "csrf=%s&%s", csrf, notice_forms [i][1]);
        KIM_CHECK (s_request (port, "POST", notice_forms [i][0], session, NULL, form, &answer)
                   == notice_status [i]);
        free (answer);
    }
    char *payload = s_payload (port, S_OLD_REFERRAL);
    KIM_CHECK (streq (payload, "alt und zu loeschen"));
    free (payload);
    snprintf (form, sizeof form, "csrf=%s&do=erase&confirm=yes", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/erasures/1000000003", session, NULL, form,
                          &answer) == 303);
    KIM_CHECK (strstr (answer, "Location: /ui/erasures?erased=1\r\n"));
    free (answer);
    payload = s_payload (port, S_OLD_REFERRAL);
    KIM_CHECK (streq (payload, ""));
    free (payload);
    payload = s_payload (port, S_KEPT_REFERRAL);
    KIM_CHECK (streq (payload, "bleibt"));
    free (payload);

    //  Hostile paths and methods
    const char *paths [] = {
        "/ui/referral/..%2f..%2fetc%2fpasswd", "/ui/referral/<script>", "/ui/referral/",
        "/ui/referral/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "/ui/referral/R-none", "/ui/nothing", "/ui/inbox/x", NULL
    };
    for (size_t i = 0; paths [i]; i++) {
        KIM_CHECK (s_request (port, "GET", paths [i], session, NULL, NULL, &answer) == 404);
        KIM_CHECK (!strstr (answer, "<script>"));
        free (answer);
    }
    KIM_CHECK (s_request (port, "PUT", "/ui/inbox", session, NULL, NULL, &answer) == 405);
    free (answer);

    //  Markup in a header field comes out as text
    KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/messages",
                                   "{\"type\":\"REFERRAL\",\"msg_id\":\"m-x\",\"recipient\":\"mbe.b\","
                                   "\"referral_id\":\"R-x\",\"case_id\":\"C-x\",\"subject\":\"p-x\","
                                   "\"purpose\":\"counselling\",\"note\":\"<script>alert(1)</script>\","
                                   "\"legal_basis\":{\"kind\":\"statute\",\"citation\":\"a<b\"}}",
                                   NULL) == 202);
    int status = 0;
    for (int attempt = 0; attempt < 600; attempt++) {
        status = s_request (port, "GET", "/ui/referral/R-x", session, NULL, NULL, &answer);
        if (status == 200)
            break;
        free (answer);
        answer = NULL;
        zclock_sleep (50);
    }
    KIM_CHECK (status == 200);
    KIM_CHECK (strstr (answer, "&lt;script&gt;alert(1)&lt;/script&gt;"));
    KIM_CHECK (!strstr (answer, "<script>"));
    free (answer);

    //  Answers: no token, a wrong one, a state that does not allow it
    KIM_CHECK (s_request (port, "POST", "/ui/referral/R-x/answer", session, NULL,
                          "answer=accept", &answer) == 403);
    free (answer);
    KIM_CHECK (s_request (port, "POST", "/ui/referral/R-x/answer", session, NULL,
                          "answer=accept&csrf=0000000000000000000000000000000000000000000000000000000000000000",
                          &answer) == 403);
    free (answer);
    snprintf (form, sizeof form, "csrf=%s&answer=outcome&code=completed&msg_id=w-1", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/referral/R-x/answer", session, NULL, form,
                          &answer) == 409);
    free (answer);
    snprintf (form, sizeof form, "csrf=%s&answer=withdraw&msg_id=w-2", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/referral/R-x/answer", session, NULL, form,
                          &answer) == 409);
    free (answer);
    snprintf (form, sizeof form, "csrf=%s&answer=decline&code=no+such+code&msg_id=w-3", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/referral/R-x/answer", session, NULL, form,
                          &answer) == 400);
    free (answer);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/outbox/w-1", NULL, NULL) == 404);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/outbox/w-3", NULL, NULL) == 404);
    //  The right one, twice: one message
    snprintf (form, sizeof form, "csrf=%s&answer=decline&code=capacity&msg_id=w-4", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/referral/R-x/answer", session, NULL, form,
                          &answer) == 303);
    free (answer);
    KIM_CHECK (s_request (port, "POST", "/ui/referral/R-x/answer", session, NULL, form,
                          &answer) == 303);
    free (answer);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/outbox/w-4", NULL, NULL) == 200);

    //  A new referral the broker refuses (its deadline has passed): the
    //  page says so with the broker's reason
    snprintf (form, sizeof form, "csrf=%s&msg_id=w-5&recipient=kim.a&referral_id=R-y&case_id=C-y"
              "&subject=p-y&purpose=counselling&deadline=2020-01-01&basis=statute"
              "&citation=SGB+X&note=&payload=x", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/new", session, NULL, form, &answer) == 303);
    KIM_CHECK (strstr (answer, "Location: /ui/sent?sent=w-5"));
    free (answer);
    bool refused = false;
    for (int attempt = 0; attempt < 600 && !refused; attempt++) {
        KIM_CHECK (s_request (port, "GET", "/ui/sent?sent=w-5", session, NULL, NULL, &answer) == 200);
        refused = strstr (answer, "Nicht gesendet: BAD_VALUE") != NULL;
        free (answer);
        if (!refused)
            zclock_sleep (50);
    }
    KIM_CHECK (refused);
    //  A date that is no date is refused by the page
    snprintf (form, sizeof form, "csrf=%s&msg_id=w-6&recipient=kim.a&referral_id=R-z&case_id=C-z"
              "&subject=p-z&purpose=counselling&deadline=tomorrow&basis=consent&consent_id=G-1", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/new", session, NULL, form, &answer) == 400);
    free (answer);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/outbox/w-6", NULL, NULL) == 404);

    //  A handover of C-x, whose lead (kim.a) mbe.b's agent has not seen:
    //  the page offers it, says so, and the broker refuses it (NOT_LEAD)
    KIM_CHECK (s_request (port, "GET", "/ui/case/C-x", session, NULL, NULL, &answer) == 200);
    KIM_CHECK (strstr (answer, "noch nicht gesehen"));
    KIM_CHECK (strstr (answer, "action=\"/ui/case/C-x/handover\""));
    free (answer);
    KIM_CHECK (s_request (port, "GET", "/ui/case/C-nope/handover?recipient=kim.a&purpose=p", session,
                          NULL, NULL, &answer) == 404);
    free (answer);
    //  A recipient that is no org id, or this office itself: step one again
    KIM_CHECK (s_request (port, "GET", "/ui/case/C-x/handover?recipient=%3Cb%3E&purpose=p", session,
                          NULL, NULL, &answer) == 200);
    KIM_CHECK (strstr (answer, "role=\"alert\"") && !strstr (answer, "<b>")
            && !strstr (answer, "name=\"basis\""));
    free (answer);
    KIM_CHECK (s_request (port, "GET", "/ui/case/C-x/handover?recipient=mbe.b&purpose=p", session,
                          NULL, NULL, &answer) == 200);
    KIM_CHECK (!strstr (answer, "name=\"basis\""));
    free (answer);
    KIM_CHECK (s_request (port, "GET", "/ui/case/C-x/handover?recipient=kim.a&purpose=case_handover",
                          session, NULL, NULL, &answer) == 200);
    KIM_CHECK (strstr (answer, "name=\"basis\"") && strstr (answer, "name=\"subject\""));
    free (answer);
    //  No open offer to answer; no such answer; no legal basis: nothing sent
    snprintf (form, sizeof form, "csrf=%s&answer=accept&msg_id=w-7", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/case/C-x/handover", session, NULL, form, &answer) == 409);
    free (answer);
    snprintf (form, sizeof form, "csrf=%s&answer=steal&msg_id=w-8", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/case/C-x/handover", session, NULL, form, &answer) == 409);
    free (answer);
    snprintf (form, sizeof form, "csrf=%s&answer=offer&msg_id=w-9&recipient=kim.a&subject=p-x"
              "&purpose=case_handover&basis=statute&citation=", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/case/C-x/handover", session, NULL, form, &answer) == 400);
    free (answer);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/outbox/w-7", NULL, NULL) == 404);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/outbox/w-8", NULL, NULL) == 404);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/outbox/w-9", NULL, NULL) == 404);
    snprintf (form, sizeof form, "csrf=%s&answer=offer&msg_id=w-10&recipient=kim.a&subject=p-x"
              "&purpose=case_handover&ref-0=R-x&basis=statute&citation=SGB+VIII+%%C2%%A786c", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/case/C-x/handover", session, NULL, form, &answer) == 303);
    KIM_CHECK (strstr (answer, "Location: /ui/case/C-x?sent=w-10#handover"));
    free (answer);
    refused = false;
    for (int attempt = 0; attempt < 600 && !refused; attempt++) {
        KIM_CHECK (s_request (port, "GET", "/ui/case/C-x?sent=w-10", session, NULL, NULL, &answer) == 200);
        refused = strstr (answer, "Nicht gesendet: NOT_LEAD") != NULL;
        free (answer);
        if (!refused)
            zclock_sleep (50);
    }
    KIM_CHECK (refused);
    //  A declined referral has no forward's second step
    KIM_CHECK (s_request (port, "GET", "/ui/referral/R-x/forward?org=ikt.c&purpose=p", session, NULL,
                          NULL, &answer) == 409);
    free (answer);

    //  Logout ends the session for good
    snprintf (form, sizeof form, "csrf=%s", csrf);
    KIM_CHECK (s_request (port, "POST", "/ui/logout", session, NULL, form, &answer) == 200);
    KIM_CHECK (strstr (answer, "kim_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"));
    free (answer);
    KIM_CHECK (s_request (port, "GET", "/ui/inbox", session, NULL, NULL, &answer) == 303);
    free (answer);

    //  Lockout: 2 failures lock bert for 2 s, then he gets in again
    KIM_CHECK (s_login (port, "bert", "wrong+one", NULL) == 401);
    KIM_CHECK (s_login (port, "bert", "wrong+two", NULL) == 401);
    status = s_login (port, "bert", "correct+horse+battery", NULL);
    if (status != 429)
        fprintf (stderr, "locked login: %d\n", status);
    KIM_CHECK (status == 429);
    KIM_CHECK (s_login (port, "anna", "correct+horse+battery", session) == 303);
    int64_t locked_at = zclock_mono ();
    status = 429;
    while (status == 429 && zclock_mono () - locked_at < 30000) {
        zclock_sleep (200);
        status = s_login (port, "bert", "correct+horse+battery", NULL);
    }
    KIM_CHECK (status == 303);
    //  An unknown name is refused like a wrong password
    KIM_CHECK (s_login (port, "nobody", "correct+horse+battery", NULL) == 401);

    //  The journal: names and msg_ids, never the password or the note
    char journal_path [256];
    snprintf (journal_path, sizeof journal_path, "%s/store/web.journal", b.dir);
    zfile_t *journal = zfile_new (NULL, journal_path);
    KIM_CHECK (journal && zfile_input (journal) == 0);
    chunk = zfile_read (journal, 1 << 20, 0);
    text = zchunk_strdup (chunk);
    KIM_CHECK (strstr (text, "\"user\":\"anna\",\"action\":\"decline\",\"referral_id\":\"R-x\","
                             "\"msg_id\":\"w-4\""));
    KIM_CHECK (strstr (text, "\"user\":\"bert\",\"action\":\"login_locked\""));
    KIM_CHECK (strstr (text, "\"action\":\"bad_csrf\""));
    KIM_CHECK (!strstr (text, "horse") && !strstr (text, "script"));
    free (text);
    zchunk_destroy (&chunk);
    zfile_destroy (&journal);

    kim_agenttest_stop (&b, SIGTERM);
    kim_agenttest_stop (&a, SIGTERM);
    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("web.hostile: OK\n");
    return 0;
}
