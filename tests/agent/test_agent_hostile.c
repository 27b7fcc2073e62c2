/*  test_agent_hostile.c — what a careless or hostile local client sends.

    Every request below gets a clear 4xx with a JSON error naming kim's
    reason code, and the agent keeps serving: missing and wrong tokens,
    bodies over http/max_body (announced, and chunked without a length),
    malformed JSON, wrong types, unknown fields, unknown routes and methods,
    ids with path tricks, bad query values, bytes that are not HTTP. Then
    `kim-agent --check` on good and bad configs.
*/
#include <czmq.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "kim_agenttest.h"

//  A request with the test token; checks the status and the error name.
static void
s_expect (kim_agenttest_t *agent, const char *method, const char *path, const char *body,
          int status, const char *error)
{
    json_t *json = NULL;
    int got = kim_agenttest_call (agent, method, path, body, &json);
    if (got != status) {
        fprintf (stderr, "%s %s: status %d, want %d\n", method, path, got, status);
        KIM_CHECK (false);
    }
    if (error) {
        const char *name = json_string_value (json_object_get (json, "error"));
        if (!name || !streq (name, error)) {
            fprintf (stderr, "%s %s: error %s, want %s\n", method, path, name? name: "(none)",
                     error);
            KIM_CHECK (false);
        }
        KIM_CHECK (json_is_integer (json_object_get (json, "code")));
        KIM_CHECK (json_string_length (json_object_get (json, "text")) > 0);
    }
    json_decref (json);
}

static void
s_still_serving (kim_agenttest_t *agent)
{
    int status;
    KIM_CHECK (waitpid (agent->pid, &status, WNOHANG) == 0);
    s_expect (agent, "GET", "/v1/status", NULL, 200, NULL);
}

//  Runs kim-agent with `args`; returns its exit code, output in `out`.
static int
s_run (const char *args, const char *out)
{
    char command [1024];
    const char *path = getenv ("KIM_AGENT");
    snprintf (command, sizeof command, "'%s' %s >'%s' 2>&1", path? path: KIM_AGENT_PATH, args,
              out);
    int status = system (command);
    return WIFEXITED (status)? WEXITSTATUS (status): -1;
}

static bool
s_output_has (const char *out, const char *text)
{
    char command [512];
    snprintf (command, sizeof command, "grep -qF -- '%s' '%s'", text, out);
    return system (command) == 0;
}

int
main (void)
{
    const char *orgs [] = { "kim.a", "jc.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_agenttest_t a;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);

    //  Tokens
    char *body = NULL;
    KIM_CHECK (kim_agenttest_http (a.port, "GET", "/v1/inbox", NULL, NULL, &body) == 401);
    json_t *json = body? json_loads (body, 0, NULL): NULL;
    KIM_CHECK (streq (json_string_value (json_object_get (json, "error")), "FORBIDDEN"));
    json_decref (json);
    free (body);
    KIM_CHECK (kim_agenttest_http (a.port, "GET", "/v1/inbox", "wrong-token", NULL, NULL) == 401);
    KIM_CHECK (kim_agenttest_http (a.port, "GET", "/v1/inbox", "", NULL, NULL) == 401);
    KIM_CHECK (kim_agenttest_http (a.port, "POST", "/v1/messages",
                                   KIM_AGENTTEST_TOKEN "x", "{}", NULL) == 401);
    //  A token is needed even for unknown routes: nothing is revealed
    KIM_CHECK (kim_agenttest_http (a.port, "GET", "/nowhere", NULL, NULL, NULL) == 401);

    //  Bodies over the limit (the test config sets max_body = 65536)
    size_t big_size = 200 * 1024;
    char *big = (char *) malloc (big_size + 1);
    KIM_CHECK (big);
    memset (big, 'a', big_size);
    big [0] = '"';
    big [big_size - 1] = '"';
    big [big_size] = 0;
    s_expect (&a, "POST", "/v1/messages", big, 413, "TOO_LARGE");
    //  ... chunked, without a Content-Length
    size_t raw_size = big_size + 1024;
    char *raw = (char *) malloc (raw_size);
    KIM_CHECK (raw);
    int head = snprintf (raw, raw_size, "POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                         "Authorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n"
                         "Connection: close\r\n\r\n%zx\r\n", KIM_AGENTTEST_TOKEN, big_size);
    memcpy (raw + head, big, big_size);
    memcpy (raw + head + big_size, "\r\n0\r\n\r\n", 7);
    KIM_CHECK (kim_agenttest_raw (a.port, raw, (size_t) head + big_size + 7, NULL) == 413);
    free (raw);
    free (big);
    s_still_serving (&a);

    //  Malformed and ill-typed JSON
    s_expect (&a, "POST", "/v1/messages", "{\"type\":", 400, "MALFORMED");
    s_expect (&a, "POST", "/v1/messages", "[1,2,3]", 400, "MALFORMED");
    s_expect (&a, "POST", "/v1/messages", "\"just a string\"", 400, "MALFORMED");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"type\":\"ACCEPT\"}", 400,
              "MALFORMED");
    s_expect (&a, "POST", "/v1/messages", "", 400, "MALFORMED");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"recipient\":5,"
              "\"referral_id\":\"r\"}", 400, "BAD_TYPE");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r\",\"colour\":\"blue\"}", 400, "UNKNOWN_FIELD");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"DELIVERED\",\"recipient\":\"jc.b\","
              "\"ref_msg_id\":\"x\"}", 400, "UNKNOWN_TYPE");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\"}", 400,
              "MISSING_FIELD");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r\",\"sender\":\"jc.b\"}", 400, "SENDER_MISMATCH");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r\",\"payload_base64\":\"!!!\"}", 400, "BAD_VALUE");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"a/../../b\"}", 400, "BAD_ID");
    s_expect (&a, "POST", "/v1/messages", "{\"type\":\"ACCEPT\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r\",\"msg_id\":\"\\u0000\"}", 400, NULL);
    s_expect (&a, "POST", "/v1/referrals/r-1/answer", "{\"answer\":\"accept\",\"x\":1}", 400,
              "UNKNOWN_FIELD");
    s_expect (&a, "POST", "/v1/referrals/r-1/answer", "{\"answer\":7}", 400, "BAD_VALUE");
    s_still_serving (&a);

    //  Routes, methods, ids, query values
    s_expect (&a, "GET", "/v1/nowhere", NULL, 404, "NOT_FOUND");
    s_expect (&a, "GET", "/", NULL, 404, "NOT_FOUND");
    s_expect (&a, "DELETE", "/v1/inbox", NULL, 405, "ARGS");
    s_expect (&a, "GET", "/v1/messages", NULL, 405, "ARGS");
    s_expect (&a, "GET", "/v1/inbox/abc", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/inbox/0", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/inbox/99999999999999999999999", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/inbox/12345", NULL, 404, "NOT_FOUND");
    s_expect (&a, "POST", "/v1/inbox/12345/handled", NULL, 404, "NOT_FOUND");
    s_expect (&a, "GET", "/v1/referrals/..%2F..%2Fetc%2Fpasswd", NULL, 404, NULL);
    s_expect (&a, "GET", "/v1/referrals/%00", NULL, 404, "NOT_FOUND");
    s_expect (&a, "GET", "/v1/referrals/r%20x", NULL, 400, "BAD_ID");
    s_expect (&a, "GET", "/v1/outbox/nope", NULL, 404, "NOT_FOUND");
    s_expect (&a, "GET", "/v1/inbox?after=abc", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/inbox?limit=0", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/inbox?limit=100000", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/inbox?handled=maybe", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/referrals?overdue=2", NULL, 400, "BAD_VALUE");
    s_expect (&a, "GET", "/v1/inbox", "{}", 400, "ARGS");
    char long_path [9000];
    memset (long_path, 'a', sizeof long_path - 1);
    long_path [sizeof long_path - 1] = 0;
    memcpy (long_path, "/v1/referrals/", 14);
    int status = kim_agenttest_call (&a, "GET", long_path, NULL, NULL);
    KIM_CHECK (status >= 400 && status < 500);
    s_still_serving (&a);

    //  Mutations of a valid message: each answer is a 2xx or a 4xx with a
    //  JSON error, never a crash (the agent runs under ASan in the tests)
    const char *valid =
        "{\"type\":\"REFERRAL\",\"msg_id\":\"m-x\",\"recipient\":\"jc.b\","
        "\"referral_id\":\"r-x\",\"case_id\":\"c-x\",\"subject\":\"p-x\","
        "\"purpose\":\"job_placement\",\"legal_basis\":{\"kind\":\"statute\","
        "\"citation\":\"SGB X §69(1)1\"},\"categories\":[\"art9\"],\"deadline\":5,"
        "\"payload_base64\":\"aGVsbG8=\"}";
    const char alphabet [] = "{}[]\":,0123456789-.eE tfnaluxr\\\x01\xff\xc3";
    uint32_t random_state = 12345;
    zhashx_t *errors = zhashx_new ();
    for (int round = 0; round < 300; round++) {
        char mutated [1024];
        snprintf (mutated, sizeof mutated, "%s", valid);
        size_t length = strlen (mutated);
        int edits = 1 + round % 4;
        for (int e = 0; e < edits && length > 1; e++) {
            random_state = random_state * 1103515245 + 12345;
            size_t at = (random_state >> 8) % length;
            random_state = random_state * 1103515245 + 12345;
            int kind = (int) ((random_state >> 8) % 3);
            char c = alphabet [(random_state >> 16) % (sizeof alphabet - 1)];
            if (kind == 0)
                mutated [at] = c;                                   //  replace
            else
            if (kind == 1) {                                        //  delete
                memmove (mutated + at, mutated + at + 1, length - at);
                length--;
            }
            else
            if (length + 1 < sizeof mutated) {                      //  insert
                memmove (mutated + at + 1, mutated + at, length - at + 1);
                mutated [at] = c;
                length++;
            }
        }
        //  A mutation that stays valid but reuses msg_id m-x is a 409
        json_t *answer = NULL;
        status = kim_agenttest_call (&a, "POST", "/v1/messages", mutated, &answer);
        if (!((status >= 200 && status < 300) || status == 400 || status == 409
           || status == 413)) {
            fprintf (stderr, "mutation %d: status %d for %s\n", round, status, mutated);
            KIM_CHECK (false);
        }
        if (status >= 400) {
            KIM_CHECK (json_is_string (json_object_get (answer, "error")));
            zhashx_update (errors, json_string_value (json_object_get (answer, "error")),
                           (void *) 1);
        }
        json_decref (answer);
    }
    //  The mutations got past the JSON parser too: the header checks refused
    //  some for reasons of their own
    KIM_CHECK (zhashx_size (errors) >= 4);
    zhashx_destroy (&errors);
    s_still_serving (&a);

    //  Bytes that are not HTTP
    const char garbage [] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n";
    status = kim_agenttest_raw (a.port, garbage, sizeof garbage - 1, NULL);
    KIM_CHECK (status == -1 || (status >= 400 && status < 500));
    status = kim_agenttest_raw (a.port, "GET\r\n\r\n", 7, NULL);
    KIM_CHECK (status == -1 || (status >= 400 && status < 500));
    s_still_serving (&a);

    //  kim-agent --check
    char out [200], args [1024], bad [200];
    snprintf (out, sizeof out, "%s/check.out", a.dir);
    snprintf (args, sizeof args, "--check --config '%s'", a.config);
    KIM_CHECK (s_run (args, out) == 0);
    KIM_CHECK (s_output_has (out, "is valid"));
    KIM_CHECK (s_run ("--help", out) == 0);
    KIM_CHECK (s_output_has (out, "Usage: kim-agent"));
    KIM_CHECK (s_run ("--check", out) == 2);
    snprintf (bad, sizeof bad, "%s/bad.cfg", a.dir);
    //  A config that binds beyond loopback without TLS
    snprintf (args, sizeof args, "sed 's/bind = 127.0.0.1/bind = 0.0.0.0/' '%s' > '%s'",
              a.config, bad);
    KIM_CHECK (system (args) == 0);
    snprintf (args, sizeof args, "--check --config '%s'", bad);
    KIM_CHECK (s_run (args, out) == 2);
    KIM_CHECK (s_output_has (out, "http/bind"));
    KIM_CHECK (s_output_has (out, "TLS"));
    //  An unknown key
    snprintf (args, sizeof args, "sed 's/max_body/max_bodies/' '%s' > '%s'", a.config, bad);
    KIM_CHECK (system (args) == 0);
    snprintf (args, sizeof args, "--check --config '%s'", bad);
    KIM_CHECK (s_run (args, out) == 2);
    KIM_CHECK (s_output_has (out, "http/max_bodies: unknown key"));
    //  A token file others may read
    char tokens [200];
    snprintf (tokens, sizeof tokens, "%s/tokens", a.dir);
    KIM_CHECK (chmod (tokens, 0644) == 0);
    snprintf (args, sizeof args, "--check --config '%s'", a.config);
    KIM_CHECK (s_run (args, out) == 2);
    KIM_CHECK (s_output_has (out, "chmod 600"));
    KIM_CHECK (chmod (tokens, 0600) == 0);
    KIM_CHECK (s_run (args, out) == 0);
    //  The sample config has only known keys with valid values: what stops
    //  it here is the key files it names, which this machine lacks
    snprintf (args, sizeof args, "--check --config '%s'", KIM_SAMPLE_CONFIG);
    KIM_CHECK (s_run (args, out) == 2);
    KIM_CHECK (s_output_has (out, "broker/key_file"));
    KIM_CHECK (!s_output_has (out, "unknown"));

    s_still_serving (&a);
    status = kim_agenttest_stop (&a, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    kim_agenttest_cleanup (&a);
    kim_testbroker_destroy (&broker);
    printf ("agent.hostile: OK\n");
    return 0;
}
