/*  test_agent_flow.c — two offices talk through their kim-agents over HTTP.

    A real broker, two real agents (kim.a and jc.b), real sockets and real
    LMDB stores: office A posts a referral, B's agent receives it (payload
    sealed to B, opened by B's agent), B lists and reads its inbox, accepts
    over the answer route, and A's referral view says ACCEPTED. Then the
    idempotency of POST /v1/messages, the referral filters, the answer
    rules, and a clean stop on SIGTERM.
*/
#include <czmq.h>
#include <signal.h>
#include <sys/wait.h>

#include "kim_agenttest.h"

static json_t *
s_wait_inbox (kim_agenttest_t *agent, size_t count)
{
    for (int attempt = 0; attempt < 600; attempt++) {
        json_t *json = NULL;
        if (kim_agenttest_call (agent, "GET", "/v1/inbox?limit=1000", NULL, &json) == 200
        &&  json_array_size (json_object_get (json, "items")) >= count)
            return json;
        json_decref (json);
        zclock_sleep (50);
    }
    return NULL;
}

int
main (void)
{
    //  A signs what it sends; B does not
    const char *orgs [] = { "kim.a:agency+sign", "jc.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    KIM_CHECK (kim_agenttest_init (&b, broker, "jc.b", NULL) == 0);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);

    //  A refers someone to B, with a payload
    const char *referral =
        "{\"type\":\"REFERRAL\",\"msg_id\":\"m-ref-1\",\"recipient\":\"jc.b\","
        "\"referral_id\":\"r-1\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
        "\"purpose\":\"job_placement\",\"legal_basis\":{\"kind\":\"statute\","
        "\"citation\":\"SGB X §69(1)1\"},\"deadline\":4102444800000,"
        "\"payload\":\"Bitte um Termin\"}";
    json_t *json = NULL;
    KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/messages", referral, &json) == 202);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "msg_id")), "m-ref-1"));
    KIM_CHECK (streq (json_string_value (json_object_get (json, "status")), "queued"));
    KIM_CHECK (!json_object_get (json, "_digest"));
    json_decref (json);

    //  The same again: the same record, not a second message
    KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/messages", referral, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "msg_id")), "m-ref-1"));
    json_decref (json);
    //  The same msg_id for something else is a conflict
    KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/messages",
                                   "{\"type\":\"REFERRAL\",\"msg_id\":\"m-ref-1\","
                                   "\"recipient\":\"jc.b\",\"referral_id\":\"r-9\","
                                   "\"case_id\":\"c-1\",\"subject\":\"p-1\",\"purpose\":\"x\","
                                   "\"legal_basis\":{\"kind\":\"statute\",\"citation\":\"y\"}}",
                                   &json) == 409);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "error")), "BAD_VALUE"));
    json_decref (json);

    //  The outbox record gets the broker's receipt
    json = kim_agenttest_wait_for (&a, "/v1/outbox/m-ref-1", "status", "receipted");
    KIM_CHECK (json);
    KIM_CHECK (json_integer_value (json_object_get (json, "seq")) > 0);
    json_decref (json);

    //  B's inbox has it once, opened
    json = s_wait_inbox (&b, 1);
    KIM_CHECK (json);
    json_t *items = json_object_get (json, "items");
    KIM_CHECK (json_array_size (items) == 1);
    json_t *item = json_array_get (items, 0);
    KIM_CHECK (streq (json_string_value (json_object_get (item, "msg_id")), "m-ref-1"));
    KIM_CHECK (streq (json_string_value (json_object_get (item, "sender")), "kim.a"));
    KIM_CHECK (json_is_false (json_object_get (item, "handled")));
    json_int_t seq = json_integer_value (json_object_get (item, "seq"));
    json_decref (json);
    char path [128];
    snprintf (path, sizeof path, "/v1/inbox/%lld", (long long) seq);
    KIM_CHECK (kim_agenttest_call (&b, "GET", path, NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "payload")), "Bitte um Termin"));
    KIM_CHECK (json_is_false (json_object_get (json, "sealed_error")));
    json_decref (json);
    //  A's signature is checked against the directory's key (after the
    //  ack, so the record may say "unchecked" for a moment)
    json = kim_agenttest_wait_for (&b, path, "signature", "valid");
    KIM_CHECK (json);
    json_decref (json);
    snprintf (path, sizeof path, "/v1/inbox/%lld/handled", (long long) seq);
    KIM_CHECK (kim_agenttest_call (&b, "POST", path, NULL, &json) == 200);
    KIM_CHECK (json_is_true (json_object_get (json, "handled")));
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/inbox?handled=false", NULL, &json) == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 0);
    json_decref (json);

    //  B's view: a referral it received, not yet answered
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/referrals/r-1", NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "role")), "recipient"));
    KIM_CHECK (streq (json_string_value (json_object_get (json, "counterpart")), "kim.a"));
    KIM_CHECK (streq (json_string_value (json_object_get (json, "state")), "DELIVERED"));
    KIM_CHECK (json_is_false (json_object_get (json, "overdue")));
    json_decref (json);

    //  Answer rules: the sender cannot accept, the recipient cannot withdraw,
    //  a decline needs its reason, an unknown answer is refused
    KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"accept\"}", &json) == 409);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "error")), "NOT_PARTY"));
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"withdraw\"}", NULL) == 409);
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"decline\"}", &json) == 400);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "path")), "code"));
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"maybe\"}", NULL) == 400);
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-404/answer",
                                   "{\"answer\":\"accept\"}", NULL) == 404);

    //  B accepts; A's view follows
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"accept\",\"msg_id\":\"m-acc-1\","
                                   "\"note\":\"Termin folgt\"}", &json) == 202);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "type")), "ACCEPT"));
    KIM_CHECK (streq (json_string_value (json_object_get (json, "recipient")), "kim.a"));
    json_decref (json);
    json = kim_agenttest_wait_for (&a, "/v1/referrals/r-1", "state", "ACCEPTED");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "role")), "sender"));
    json_decref (json);
    //  B's ACCEPT in A's inbox: B does not sign
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/inbox", NULL, &json) == 200);
    bool found = false;
    size_t index;
    json_t *entry;
    json_array_foreach (json_object_get (json, "items"), index, entry)
        if (streq (json_string_value (json_object_get (entry, "msg_id")), "m-acc-1")) {
            found = true;
            KIM_CHECK (streq (json_string_value (json_object_get (entry, "signature")), "none"));
        }
    KIM_CHECK (found);
    json_decref (json);
    json = kim_agenttest_wait_for (&b, "/v1/referrals/r-1", "state", "ACCEPTED");
    KIM_CHECK (json);
    json_decref (json);

    //  A status, then an outcome; a decline now is refused by the broker
    //  and the outbox record says so
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"status\",\"code\":\"appointment_set\"}",
                                   NULL) == 202);
    json = kim_agenttest_wait_for (&a, "/v1/referrals/r-1", "state", "IN_PROGRESS");
    KIM_CHECK (json);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"decline\",\"reason\":\"capacity\","
                                   "\"msg_id\":\"m-late-decline\"}", NULL) == 202);
    json = kim_agenttest_wait_for (&b, "/v1/outbox/m-late-decline", "status", "refused");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "error")), "BAD_STATE"));
    KIM_CHECK (json_integer_value (json_object_get (json, "code")) == 400);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "POST", "/v1/referrals/r-1/answer",
                                   "{\"answer\":\"outcome\",\"code\":\"completed\"}", NULL) == 202);
    json = kim_agenttest_wait_for (&a, "/v1/referrals/r-1", "state", "COMPLETED");
    KIM_CHECK (json);
    json_decref (json);

    //  Filters
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/referrals?state=COMPLETED", NULL, &json) == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 1);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/referrals?state=ACCEPTED", NULL, &json) == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 0);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/referrals?overdue=true", NULL, &json) == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 0);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/referrals?state=BOGUS", NULL, NULL) == 400);

    //  A referral past its deadline counts as overdue in the view (a
    //  minute ago: the broker refuses deadlines further in the past than
    //  its clock skew allows, 5 minutes by default)
    char late [512];
    snprintf (late, sizeof late,
              "{\"type\":\"REFERRAL\",\"msg_id\":\"m-ref-2\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r-2\",\"case_id\":\"c-2\",\"subject\":\"p-2\","
              "\"purpose\":\"x\",\"legal_basis\":{\"kind\":\"statute\",\"citation\":\"y\"},"
              "\"deadline\":%lld}", (long long) zclock_time () - 60000);
    KIM_CHECK (kim_agenttest_call (&a, "POST", "/v1/messages", late, NULL) == 202);
    json = kim_agenttest_wait_for (&a, "/v1/outbox/m-ref-2", "status", "receipted");
    KIM_CHECK (json);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/referrals?overdue=true", NULL, &json) == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 1);
    KIM_CHECK (streq (json_string_value (json_object_get (json_array_get (
               json_object_get (json, "items"), 0), "referral_id")), "r-2"));
    json_decref (json);

    //  A clean stop on SIGTERM, and the store is there after a restart
    int status = kim_agenttest_stop (&b, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/referrals/r-1", NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "state")), "COMPLETED"));
    json_decref (json);
    status = kim_agenttest_stop (&a, SIGINT);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);

    //  Both agents' logs: one logfmt event per line, naming the program,
    //  and never the payload's words.
    const char *logs [] = { a.log, b.log };
    for (size_t i = 0; i < 2; i++) {
        FILE *file = fopen (logs [i], "r");
        KIM_CHECK (file);
        char line [8192];
        size_t lines = 0;
        while (fgets (line, sizeof line, file)) {
            lines++;
            KIM_CHECK (strncmp (line, "ts=", 3) == 0 && strstr (line, " prog=kim-agent ")
                       && strstr (line, " msg=\"") && strstr (line, "level="));
            KIM_CHECK (!strstr (line, "Bitte um Termin") && !strstr (line, "Termin"));
        }
        fclose (file);
        KIM_CHECK (lines > 0);
    }

    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("agent.flow: OK\n");
    return 0;
}
