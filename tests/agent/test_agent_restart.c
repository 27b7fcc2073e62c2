/*  test_agent_restart.c — the broker goes away; the agents carry on.

    Agent A starts while the broker is down: it serves HTTP and accepts
    messages into its outbox at once. The broker starts; A connects by
    itself and sends them, B receives them. The broker is killed (-9)
    while A has more queued; after its restart everything queued arrives,
    each message once, and the outbox records say receipted.
*/
#include <czmq.h>
#include <signal.h>

#include "kim_agenttest.h"

static void
s_post (kim_agenttest_t *agent, int i)
{
    char body [512];
    snprintf (body, sizeof body,
              "{\"type\":\"REFERRAL\",\"msg_id\":\"m-r-%d\",\"recipient\":\"jc.b\","
              "\"referral_id\":\"r-r-%d\",\"case_id\":\"c-r\",\"subject\":\"p-%d\","
              "\"purpose\":\"job_placement\",\"legal_basis\":{\"kind\":\"statute\","
              "\"citation\":\"SGB X §69(1)1\"},\"payload\":\"text %d\"}", i, i, i, i);
    json_t *json = NULL;
    KIM_CHECK (kim_agenttest_call (agent, "POST", "/v1/messages", body, &json) == 202);
    KIM_CHECK (streq (json_string_value (json_object_get (json, "status")), "queued"));
    json_decref (json);
}

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

int
main (void)
{
    const char *orgs [] = { "kim.a", "jc.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    //  The broker makes its key on first start: start it once, stop it
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_testbroker_stop (broker, SIGTERM);

    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    KIM_CHECK (kim_agenttest_init (&b, broker, "jc.b", NULL) == 0);
    KIM_CHECK (kim_agenttest_start (&a, false) == 0);
    json_t *json = NULL;
    KIM_CHECK (kim_agenttest_call (&a, "GET", "/v1/status", NULL, &json) == 200);
    KIM_CHECK (json_is_false (json_object_get (json, "connected")));
    json_decref (json);
    for (int i = 0; i < 5; i++)
        s_post (&a, i);

    KIM_CHECK (kim_testbroker_start (broker) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);
    json = s_inbox (&b, 5);
    KIM_CHECK (json);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 5);
    json_decref (json);

    //  The broker dies while more is queued
    kim_testbroker_stop (broker, SIGKILL);
    for (int i = 5; i < 15; i++)
        s_post (&a, i);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    json = s_inbox (&b, 15);
    KIM_CHECK (json);
    KIM_CHECK (json_array_size (json_object_get (json, "items")) == 15);
    zhashx_t *ids = zhashx_new ();
    size_t index;
    json_t *item;
    json_array_foreach (json_object_get (json, "items"), index, item)
        KIM_CHECK (zhashx_insert (ids, json_string_value (json_object_get (item, "msg_id")),
                                  (void *) 1) == 0);
    zhashx_destroy (&ids);
    json_decref (json);
    for (int i = 0; i < 15; i++) {
        char path [64];
        snprintf (path, sizeof path, "/v1/outbox/m-r-%d", i);
        bool receipted = false;
        for (int attempt = 0; attempt < 600 && !receipted; attempt++) {
            KIM_CHECK (kim_agenttest_call (&a, "GET", path, NULL, &json) == 200);
            receipted = streq (json_string_value (json_object_get (json, "status")), "receipted");
            json_decref (json);
            if (!receipted)
                zclock_sleep (50);
        }
        KIM_CHECK (receipted);
    }

    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("agent.restart: OK\n");
    return 0;
}
