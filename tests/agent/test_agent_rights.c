/*  test_agent_rights.c — cases, consents and the subject's rights through
    kim-agent, against a broker that runs the shipped policy.

    The KIM office (kim.a) records a consent over HTTP, refers a person to
    the job centre (jc.b) under it, and asks for an access report that
    lists the transfer. It revokes the consent: both agents' views say
    SUSPENDED, a new referral under it is refused, and the job centre's
    inbox has the broker's notice. An erasure is receipted, the job centre
    is told, and a second report says the payload is erased. A grant the
    broker refuses shows as refused with the reason. Then the case view: a
    handover to another KIM office (kim.c, a plain client) moves the lead in
    kim.a's view, and the referral it lists moves in both agents' views:
    the job centre hears of the handover through the agent's subscription,
    and its next answer goes to the new lead. The new lead's CASE_CLOSED
    closes the case.
*/
#include <czmq.h>

#include "kim_agenttest.h"

//  Waits for a delivery of `type` in the agent's inbox; returns its seq.
static json_int_t
s_wait_delivery (kim_agenttest_t *agent, const char *type)
{
    for (int attempt = 0; attempt < 600; attempt++) {
        json_t *json = NULL;
        json_int_t seq = 0;
        if (kim_agenttest_call (agent, "GET", "/v1/inbox?limit=1000", NULL, &json) == 200) {
            size_t index;
            json_t *item;
            json_array_foreach (json_object_get (json, "items"), index, item)
                if (streq (json_string_value (json_object_get (item, "type")), type))
                    seq = json_integer_value (json_object_get (item, "seq"));
        }
        json_decref (json);
        if (seq)
            return seq;
        zclock_sleep (50);
    }
    fprintf (stderr, "timed out waiting for a %s in the inbox of %s\n", type, agent->org);
    return 0;
}

//  True when the case's timeline has an entry of `type` in `direction`.
static bool
s_timeline_has (json_t *record, const char *type, const char *direction)
{
    size_t index;
    json_t *entry;
    json_array_foreach (json_object_get (record, "timeline"), index, entry)
        if (streq (json_string_value (json_object_get (entry, "type")), type)
        &&  streq (json_string_value (json_object_get (entry, "direction")), direction))
            return true;
    return false;
}

static void
s_post (kim_agenttest_t *agent, const char *path, const char *body, int want)
{
    json_t *json = NULL;
    int status = kim_agenttest_call (agent, "POST", path, body, &json);
    if (status != want) {
        char *text = json? json_dumps (json, 0): NULL;
        fprintf (stderr, "POST %s: %d, want %d: %s\n", path, status, want, text? text: "");
        free (text);
    }
    KIM_CHECK (status == want);
    json_decref (json);
}

int
main (void)
{
    const char *orgs [] = { "kim.a", "jc.b", "kim.c", NULL };
    kim_testbroker_t *broker = kim_testbroker_new_policy (orgs, NULL, KIM_POLICY_PATH);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    KIM_CHECK (kim_agenttest_init (&b, broker, "jc.b", NULL) == 0);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);

    //  1. The consent, recorded over HTTP
    s_post (&a, "/v1/consents",
            "{\"msg_id\":\"m-g1\",\"consent\":\"g-1\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
            "\"recipients\":[\"jc.b\"],\"purposes\":[\"employment\"],"
            "\"valid_until\":4102444800000}", 202);
    json_t *json = kim_agenttest_wait_for (&a, "/v1/consents/g-1", "state", "active");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "grant_msg_id")), "m-g1"));
    KIM_CHECK (streq (json_string_value (json_array_get (json_object_get (json, "recipients"),
                                                         0)), "jc.b"));
    json_decref (json);

    //  2. A referral under it; one outside its scope is refused
    s_post (&a, "/v1/messages",
            "{\"type\":\"REFERRAL\",\"msg_id\":\"m-r1\",\"recipient\":\"jc.b\","
            "\"referral_id\":\"r-1\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
            "\"purpose\":\"employment\",\"legal_basis\":{\"kind\":\"consent\","
            "\"consent_id\":\"g-1\"},\"payload\":\"Bitte um Termin\"}", 202);
    s_post (&a, "/v1/messages",
            "{\"type\":\"REFERRAL\",\"msg_id\":\"m-r2\",\"recipient\":\"jc.b\","
            "\"referral_id\":\"r-2\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
            "\"purpose\":\"housing\",\"legal_basis\":{\"kind\":\"consent\","
            "\"consent_id\":\"g-1\"}}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/outbox/m-r2", "status", "refused");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "error")), "CONSENT_SCOPE"));
    json_decref (json);
    json = kim_agenttest_wait_for (&b, "/v1/referrals/r-1", "state", "DELIVERED");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "consent_id")), "g-1"));
    json_decref (json);
    json = kim_agenttest_wait_for (&a, "/v1/referrals/r-1", "state", "DELIVERED");
    KIM_CHECK (json);
    json_decref (json);

    //  3. The access report lists the transfer
    s_post (&a, "/v1/subjects/p-1/report", "{\"msg_id\":\"m-rep1\"}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/reports/m-rep1", "status", "answered");
    KIM_CHECK (json);
    json_t *report = json_object_get (json, "report");
    KIM_CHECK (streq (json_string_value (json_object_get (report, "subject")), "p-1"));
    KIM_CHECK (streq (json_string_value (json_object_get (report, "requested_by")), "kim.a"));
    json_t *transfers = json_object_get (report, "transfers");
    KIM_CHECK (json_array_size (transfers) == 1);
    json_t *transfer = json_array_get (transfers, 0);
    KIM_CHECK (streq (json_string_value (json_object_get (transfer, "to")), "jc.b"));
    KIM_CHECK (streq (json_string_value (json_object_get (transfer, "type")), "REFERRAL"));
    KIM_CHECK (streq (json_string_value (json_object_get (transfer, "basis")), "consent"));
    KIM_CHECK (streq (json_string_value (json_object_get (transfer, "consent_id")), "g-1"));
    KIM_CHECK (streq (json_string_value (json_object_get (transfer, "payload")), "kept"));
    json_decref (json);

    //  4. The revocation suspends the referral on both sides and blocks
    //  new transfers; the job centre is told
    s_post (&a, "/v1/consents/g-1/revoke", "{\"msg_id\":\"m-v1\"}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/consents/g-1", "state", "revoked");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "revoke_msg_id")), "m-v1"));
    json_decref (json);
    json = kim_agenttest_wait_for (&a, "/v1/referrals/r-1", "state", "SUSPENDED");
    KIM_CHECK (json);
    json_decref (json);
    KIM_CHECK (s_wait_delivery (&b, "CONSENT_REVOKE") > 0);
    json = kim_agenttest_wait_for (&b, "/v1/referrals/r-1", "state", "SUSPENDED");
    KIM_CHECK (json);
    json_decref (json);
    s_post (&a, "/v1/messages",
            "{\"type\":\"REFERRAL\",\"msg_id\":\"m-r3\",\"recipient\":\"jc.b\","
            "\"referral_id\":\"r-3\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
            "\"purpose\":\"employment\",\"legal_basis\":{\"kind\":\"consent\","
            "\"consent_id\":\"g-1\"}}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/outbox/m-r3", "status", "refused");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "error")), "CONSENT_REVOKED"));
    json_decref (json);
    //  The job centre cannot revoke what it does not lead: refused, and the
    //  office's consent list says so (the job centre recorded it)
    s_post (&b, "/v1/consents/g-1/revoke", "{\"msg_id\":\"jc-v1\"}", 202);
    json = kim_agenttest_wait_for (&b, "/v1/outbox/jc-v1", "status", "refused");
    KIM_CHECK (json);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/consents/g-1", NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "state")), "active"));
    KIM_CHECK (json_string_value (json_object_get (json, "error")));
    json_decref (json);

    //  5. A grant the broker refuses: the job centre leads no case c-1
    s_post (&b, "/v1/consents",
            "{\"msg_id\":\"jc-g1\",\"consent\":\"g-jc\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
            "\"recipients\":[\"kim.a\"],\"purposes\":[\"employment\"],"
            "\"valid_until\":4102444800000}", 202);
    json = kim_agenttest_wait_for (&b, "/v1/consents/g-jc", "state", "refused");
    KIM_CHECK (json);
    KIM_CHECK (json_integer_value (json_object_get (json, "code")) > 0);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/consents?state=refused", NULL, &json) == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 1);
    json_decref (json);

    //  6. Erasure: receipted, the job centre told, the report says erased
    s_post (&a, "/v1/subjects/p-1/erasure", "{\"msg_id\":\"m-er1\",\"case_id\":\"c-1\"}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/outbox/m-er1", "status", "receipted");
    KIM_CHECK (json);
    KIM_CHECK (json_integer_value (json_object_get (json, "seq")) > 0);
    json_decref (json);
    KIM_CHECK (s_wait_delivery (&b, "ERASURE") > 0);
    s_post (&a, "/v1/subjects/p-1/report", "{\"msg_id\":\"m-rep2\",\"case_id\":\"c-1\"}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/reports/m-rep2", "status", "answered");
    KIM_CHECK (json);
    transfer = json_array_get (json_object_get (json_object_get (json, "report"), "transfers"), 0);
    KIM_CHECK (streq (json_string_value (json_object_get (transfer, "payload")), "erased"));
    json_decref (json);
    //  A report nobody may ask for: the job centre sent nothing about p-9
    s_post (&b, "/v1/subjects/p-9/report", "{\"msg_id\":\"jc-rep\"}", 202);
    json = kim_agenttest_wait_for (&b, "/v1/reports/jc-rep", "status", "refused");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "error")), "NOT_PARTY"));
    json_decref (json);

    //  7. The case view on both sides
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/cases/c-1", NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "lead")), "kim.a"));
    KIM_CHECK (streq (json_string_value (json_object_get (json, "state")), "OPEN"));
    KIM_CHECK (streq (json_string_value (json_array_get (json_object_get (json, "referrals"),
                                                         0)), "r-1"));
    KIM_CHECK (s_timeline_has (json, "CONSENT_GRANT", "out"));
    KIM_CHECK (s_timeline_has (json, "REFERRAL", "out"));
    KIM_CHECK (s_timeline_has (json, "DELIVERED", "in"));
    KIM_CHECK (s_timeline_has (json, "CONSENT_REVOKE", "out"));
    KIM_CHECK (s_timeline_has (json, "ACCESS_REPORT", "in"));
    KIM_CHECK (!s_timeline_has (json, "REFERRAL", "in"));
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/cases/c-1", NULL, &json) == 200);
    KIM_CHECK (s_timeline_has (json, "REFERRAL", "in"));
    KIM_CHECK (s_timeline_has (json, "CONSENT_REVOKE", "in"));
    json_decref (json);

    //  8. A handover to kim.c moves the lead and the open referral r-4 it
    //  lists; the job centre's agent hears of it through its subscription,
    //  so its answers go to the new lead; kim.c closes the case
    s_post (&a, "/v1/consents",
            "{\"msg_id\":\"m-g3\",\"consent\":\"g-3\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
            "\"recipients\":[\"jc.b\"],\"purposes\":[\"employment\"],"
            "\"valid_until\":4102444800000}", 202);
    s_post (&a, "/v1/messages",
            "{\"type\":\"REFERRAL\",\"msg_id\":\"m-r4\",\"recipient\":\"jc.b\","
            "\"referral_id\":\"r-4\",\"case_id\":\"c-1\",\"subject\":\"p-1\","
            "\"purpose\":\"employment\",\"legal_basis\":{\"kind\":\"consent\","
            "\"consent_id\":\"g-3\"}}", 202);
    json = kim_agenttest_wait_for (&b, "/v1/referrals/r-4", "state", "DELIVERED");
    KIM_CHECK (json);
    json_decref (json);
    s_post (&b, "/v1/referrals/r-4/answer", "{\"answer\":\"accept\",\"msg_id\":\"jc-a4\"}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/referrals/r-4", "state", "ACCEPTED");
    KIM_CHECK (json);
    json_decref (json);
    s_post (&a, "/v1/consents",
            "{\"msg_id\":\"m-g2\",\"consent\":\"g-2\",\"case_id\":\"c-1\",\"subject\":\"p-fam\","
            "\"recipients\":[\"kim.c\"],\"purposes\":[\"case_handover\"],"
            "\"valid_until\":4102444800000}", 202);
    s_post (&a, "/v1/messages",
            "{\"type\":\"HANDOVER_OFFER\",\"msg_id\":\"m-h1\",\"recipient\":\"kim.c\","
            "\"case_id\":\"c-1\",\"subject\":\"p-fam\",\"purpose\":\"case_handover\","
            "\"legal_basis\":{\"kind\":\"consent\",\"consent_id\":\"g-2\"},"
            "\"referrals\":[\"r-1\",\"r-4\"]}", 202);
    json = kim_agenttest_wait_for (&a, "/v1/outbox/m-h1", "status", "receipted");
    KIM_CHECK (json);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/cases/c-1", NULL, &json) == 200);
    json_t *offer = json_object_get (json, "offer");
    KIM_CHECK (streq (json_string_value (json_object_get (offer, "to")), "kim.c"));
    KIM_CHECK (streq (json_string_value (json_object_get (offer, "state")), "OPEN"));
    json_decref (json);
    kim_client_t *c = kim_testbroker_client (broker, "kim.c", 16, true);
    KIM_CHECK (c);
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_HANDOVER_ACCEPT;
    kim_str_copy (msg.msg_id, sizeof msg.msg_id, "c-h1");
    kim_str_copy (msg.recipient, sizeof msg.recipient, "kim.a");
    kim_str_copy (msg.case_id, sizeof msg.case_id, "c-1");
    kim_str_copy (msg.ref_msg_id, sizeof msg.ref_msg_id, "m-h1");
    uint64_t seq;
    bool dup;
    KIM_CHECK (kim_client_send (c, &msg, NULL, 0, &seq, &dup, 10000) == 0);
    json = kim_agenttest_wait_for (&a, "/v1/cases/c-1", "lead", "kim.c");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json_object_get (json, "offer"),
                                                          "state")), "ACCEPTED"));
    json_decref (json);
    //  The old lead's view: r-4 is kim.c's to send now; r-1 (SUSPENDED)
    //  did not move, at the broker or here
    json = kim_agenttest_wait_for (&a, "/v1/referrals/r-4", "handed_over_to", "kim.c");
    KIM_CHECK (json);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/referrals/r-1", NULL, &json) == 200);
    KIM_CHECK (!json_object_get (json, "handed_over_to"));
    json_decref (json);
    //  The job centre's view follows the handover it was no party to
    json = kim_agenttest_wait_for (&b, "/v1/referrals/r-4", "counterpart", "kim.c");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "handed_over_from")), "kim.a"));
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/referrals/r-1", NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "counterpart")), "kim.a"));
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&b, "GET", "/v1/cases/c-1", NULL, &json) == 200);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "lead")), "kim.c"));
    KIM_CHECK (s_timeline_has (json, "HANDOVER_OFFER", "in"));
    KIM_CHECK (s_timeline_has (json, "HANDOVER_ACCEPT", "in"));
    json_decref (json);
    //  ... so its answer goes to kim.c, and the broker takes it
    s_post (&b, "/v1/referrals/r-4/answer",
            "{\"answer\":\"status\",\"code\":\"in_progress\",\"msg_id\":\"jc-s4\"}", 202);
    json = kim_agenttest_wait_for (&b, "/v1/outbox/jc-s4", "status", "receipted");
    KIM_CHECK (json);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "recipient")), "kim.c"));
    json_decref (json);
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CASE_CLOSED;
    kim_str_copy (msg.msg_id, sizeof msg.msg_id, "c-close");
    kim_str_copy (msg.case_id, sizeof msg.case_id, "c-1");
    KIM_CHECK (kim_client_send (c, &msg, NULL, 0, &seq, &dup, 10000) == 0);
    kim_client_destroy (&c);
    json = kim_agenttest_wait_for (&a, "/v1/cases/c-1", "state", "CLOSED");
    KIM_CHECK (json);
    json_decref (json);
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/cases?state=CLOSED", NULL, &json) == 200);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 1);
    KIM_CHECK (!json_object_get (json_array_get (json_object_get (json, "items"), 0),
                                 "timeline"));
    json_decref (json);

    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("agent.rights: OK\n");
    return 0;
}
