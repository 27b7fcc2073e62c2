/*  test_agent_openapi.c — agents/agent/openapi.json and kim-agent agree.

    1. The routes kim-agent serves (`kim-agent --routes`, printed from the
       route table the server dispatches with) are exactly the operations
       of the file.
    2. Over real sockets, against two agents and a broker, every documented
       status code of every operation is provoked at least once, every
       answer's status is documented for its operation, and every answer's
       JSON body validates against the documented schema (types, required
       properties, enums, and no properties the schema does not list).
*/
#include <czmq.h>
#include <signal.h>
#include <sys/stat.h>

#include "kim_agenttest.h"

static json_t *s_spec;
static zhashx_t *s_seen;                //  "METHOD template status"

//  --------------------------------------------------------------------------
//  A small validator for the schema features the file uses

static json_t *
s_resolve (json_t *schema)
{
    const char *ref = json_string_value (json_object_get (schema, "$ref"));
    if (!ref)
        return schema;
    const char *prefix = "#/components/schemas/";
    KIM_CHECK (strncmp (ref, prefix, strlen (prefix)) == 0);
    json_t *target = json_object_get (json_object_get (json_object_get (s_spec, "components"),
                                                       "schemas"), ref + strlen (prefix));
    KIM_CHECK (target);
    return s_resolve (target);
}

static bool
s_valid (json_t *schema, json_t *value, const char *where)
{
    schema = s_resolve (schema);
    const char *type = json_string_value (json_object_get (schema, "type"));
    bool ok = true;
    if (type) {
        ok = streq (type, "object")? json_is_object (value)
           : streq (type, "array")? json_is_array (value)
           : streq (type, "string")? json_is_string (value)
           : streq (type, "integer")? json_is_integer (value)
           : streq (type, "number")? json_is_number (value)
           : streq (type, "boolean")? json_is_boolean (value): false;
        if (!ok) {
            fprintf (stderr, "%s: not a %s\n", where, type);
            return false;
        }
    }
    json_t *choices = json_object_get (schema, "enum");
    if (choices) {
        bool found = false;
        size_t index;
        json_t *choice;
        json_array_foreach (choices, index, choice)
            found |= json_equal (choice, value);
        if (!found) {
            fprintf (stderr, "%s: value not in the enum\n", where);
            return false;
        }
    }
    if (json_is_object (value)) {
        json_t *properties = json_object_get (schema, "properties");
        size_t index;
        json_t *name;
        json_array_foreach (json_object_get (schema, "required"), index, name)
            if (!json_object_get (value, json_string_value (name))) {
                fprintf (stderr, "%s: required property '%s' is missing\n", where,
                         json_string_value (name));
                return false;
            }
        const char *key;
        json_t *member;
        json_object_foreach (value, key, member) {
            char inner [256];
            snprintf (inner, sizeof inner, "%s.%s", where, key);
            json_t *property = json_object_get (properties, key);
            if (property)
                ok = ok && s_valid (property, member, inner);
            else
            if (json_is_false (json_object_get (schema, "additionalProperties"))) {
                fprintf (stderr, "%s: property not in the schema\n", inner);
                return false;
            }
        }
    }
    if (json_is_array (value) && json_object_get (schema, "items")) {
        size_t index;
        json_t *item;
        json_array_foreach (value, index, item) {
            char inner [256];
            snprintf (inner, sizeof inner, "%s[%zu]", where, index);
            ok = ok && s_valid (json_object_get (schema, "items"), item, inner);
        }
    }
    return ok;
}

//  --------------------------------------------------------------------------
//  Calls

//  Makes a request, checks the status against `want` and the file, and
//  validates the body. Returns the parsed body (caller owns it).
static json_t *
s_call (kim_agenttest_t *agent, const char *method, const char *path, const char *template,
        const char *body, const char *token, int want)
{
    char *text = NULL;
    int status = kim_agenttest_http (agent->port, method, path, token, body, &text);
    if (want && status != want) {
        fprintf (stderr, "%s %s: status %d, want %d: %s\n", method, path, status, want,
                 text? text: "");
        KIM_CHECK (false);
    }
    char lower [8];
    size_t i;
    for (i = 0; method [i] && i < sizeof lower - 1; i++)
        lower [i] = (char) (method [i] | 0x20);
    lower [i] = 0;
    json_t *operation = json_object_get (json_object_get (json_object_get (s_spec, "paths"),
                                                          template), lower);
    if (!operation) {
        fprintf (stderr, "%s %s is not in openapi.json\n", method, template);
        KIM_CHECK (false);
    }
    char code [8];
    snprintf (code, sizeof code, "%d", status);
    json_t *responses = json_object_get (operation, "responses");
    json_t *response = json_object_get (responses, code);
    if (!response) {
        fprintf (stderr, "%s %s answered %d, which openapi.json does not list\n", method,
                 template, status);
        KIM_CHECK (false);
    }
    json_t *content = json_object_get (json_object_get (response, "content"), "application/json");
    json_t *schema = json_object_get (content, "schema");
    json_t *parsed = text? json_loads (text, 0, NULL): NULL;
    if (schema) {
        char where [160];
        snprintf (where, sizeof where, "%s %s %d", method, template, status);
        if (!parsed || !s_valid (schema, parsed, where)) {
            fprintf (stderr, "%s: body does not match the schema: %s\n", where, text? text: "");
            KIM_CHECK (false);
        }
    }
    free (text);
    char seen [256];
    snprintf (seen, sizeof seen, "%s %s %d", method, template, status);
    zhashx_insert (s_seen, seen, (void *) 1);
    return parsed;
}

#define T KIM_AGENTTEST_TOKEN

static json_t *
s_poll (kim_agenttest_t *agent, const char *path, const char *template, const char *key,
        const char *want)
{
    for (int attempt = 0; attempt < 600; attempt++) {
        json_t *json = s_call (agent, "GET", path, template, NULL, T, 0);
        const char *value = json_string_value (json_object_get (json, key));
        if (value && streq (value, want))
            return json;
        json_decref (json);
        zclock_sleep (50);
    }
    KIM_CHECK (false);
    return NULL;
}

//  --------------------------------------------------------------------------

static void
s_check_routes (void)
{
    char command [512];
    const char *agent = getenv ("KIM_AGENT");
    snprintf (command, sizeof command, "'%s' --routes", agent? agent: KIM_AGENT_PATH);
    FILE *pipe = popen (command, "r");
    KIM_CHECK (pipe);
    zhashx_t *served = zhashx_new ();
    char line [256];
    while (fgets (line, sizeof line, pipe)) {
        line [strcspn (line, "\n")] = 0;
        KIM_CHECK (zhashx_insert (served, line, (void *) 1) == 0);
    }
    KIM_CHECK (pclose (pipe) == 0);
    size_t documented = 0;
    const char *path;
    json_t *item;
    json_object_foreach (json_object_get (s_spec, "paths"), path, item) {
        const char *method;
        json_t *operation;
        json_object_foreach (item, method, operation) {
            char upper [8], entry [256];
            size_t i;
            for (i = 0; method [i] && i < sizeof upper - 1; i++)
                upper [i] = (char) (method [i] & ~0x20);
            upper [i] = 0;
            snprintf (entry, sizeof entry, "%s %s", upper, path);
            if (!zhashx_lookup (served, entry)) {
                fprintf (stderr, "openapi.json documents %s, which kim-agent does not serve\n",
                         entry);
                KIM_CHECK (false);
            }
            documented++;
        }
    }
    if (documented != zhashx_size (served)) {
        fprintf (stderr, "kim-agent serves %zu routes, openapi.json documents %zu\n",
                 zhashx_size (served), documented);
        KIM_CHECK (false);
    }
    zhashx_destroy (&served);
}

//  Every documented status of every operation was seen.
static void
s_check_coverage (void)
{
    const char *path;
    json_t *item;
    json_object_foreach (json_object_get (s_spec, "paths"), path, item) {
        const char *method;
        json_t *operation;
        json_object_foreach (item, method, operation) {
            const char *code;
            json_t *response;
            json_object_foreach (json_object_get (operation, "responses"), code, response) {
                if (streq (code, "default"))
                    continue;
                char upper [8], seen [256];
                size_t i;
                for (i = 0; method [i] && i < sizeof upper - 1; i++)
                    upper [i] = (char) (method [i] & ~0x20);
                upper [i] = 0;
                snprintf (seen, sizeof seen, "%s %s %s", upper, path, code);
                if (!zhashx_lookup (s_seen, seen)) {
                    fprintf (stderr, "openapi.json lists %s, which the test never saw\n", seen);
                    KIM_CHECK (false);
                }
            }
        }
    }
}

int
main (void)
{
    json_error_t jerr;
    s_spec = json_load_file (KIM_OPENAPI_PATH, JSON_REJECT_DUPLICATES, &jerr);
    if (!s_spec)
        fprintf (stderr, "%s: %s (line %d)\n", KIM_OPENAPI_PATH, jerr.text, jerr.line);
    KIM_CHECK (s_spec);
    KIM_CHECK (strncmp (json_string_value (json_object_get (s_spec, "openapi")), "3.", 2) == 0);
    s_seen = zhashx_new ();
    s_check_routes ();

    const char *orgs [] = { "kim.a", "jc.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_agenttest_t a, b;
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", NULL) == 0);
    //  B pushes to a webhook nobody listens on, and gives up at once:
    //  its deliveries become dead letters
    char secret [200], extra [512];
    snprintf (secret, sizeof secret, "%s/webhook-b.secret", kim_testbroker_dir (broker));
    FILE *file = fopen (secret, "w");
    KIM_CHECK (file);
    fputs ("0123456789abcdef0123456789abcdef\n", file);
    fclose (file);
    KIM_CHECK (chmod (secret, 0600) == 0);
    snprintf (extra, sizeof extra, "webhook\n    url = \"http://127.0.0.1:%d/hook\"\n"
              "    secret_file = \"%s\"\n    max_attempts = 1\n    timeout_ms = 1000\n",
              kim_testbroker_free_port (), secret);
    KIM_CHECK (kim_agenttest_init (&b, broker, "jc.b", extra) == 0);
    KIM_CHECK (kim_agenttest_start (&a, true) == 0);
    KIM_CHECK (kim_agenttest_start (&b, true) == 0);

    size_t big_size = 100 * 1024;
    char *big = (char *) malloc (big_size + 1);
    KIM_CHECK (big);
    memset (big, ' ', big_size);
    big [big_size] = 0;
    big [0] = '{';
    big [big_size - 1] = '}';

    //  status
    json_decref (s_call (&a, "GET", "/v1/status", "/v1/status", NULL, T, 200));
    json_decref (s_call (&a, "GET", "/v1/status", "/v1/status", NULL, NULL, 401));

    //  messages
    const char *referral =
        "{\"type\":\"REFERRAL\",\"msg_id\":\"m-o1\",\"recipient\":\"jc.b\","
        "\"referral_id\":\"r-o1\",\"case_id\":\"c-o1\",\"subject\":\"p-o1\","
        "\"purpose\":\"job_placement\",\"legal_basis\":{\"kind\":\"statute\","
        "\"citation\":\"SGB X §69(1)1\"},\"payload_base64\":\"AAEC/w==\"}";
    const char *m = "/v1/messages";
    json_decref (s_call (&a, "POST", m, m, referral, T, 202));
    json_decref (s_call (&a, "POST", m, m, referral, T, 200));
    json_decref (s_call (&a, "POST", m, m, "{\"type\":", T, 400));
    json_decref (s_call (&a, "POST", m, m, "{\"type\":\"ACCEPT\",\"msg_id\":\"m-o1\","
                         "\"recipient\":\"jc.b\",\"referral_id\":\"r-o1\"}", T, 409));
    json_decref (s_call (&a, "POST", m, m, big, T, 413));
    json_decref (s_call (&a, "POST", m, m, referral, NULL, 401));

    //  outbox
    const char *o = "/v1/outbox/{msg_id}";
    json_decref (s_poll (&a, "/v1/outbox/m-o1", o, "status", "receipted"));
    json_decref (s_call (&a, "GET", "/v1/outbox/a%20b", o, NULL, T, 400));
    json_decref (s_call (&a, "GET", "/v1/outbox/m-none", o, NULL, T, 404));
    json_decref (s_call (&a, "GET", "/v1/outbox/m-o1", o, NULL, NULL, 401));

    //  referrals (B's view gets the referral with the delivery)
    const char *r = "/v1/referrals/{referral_id}";
    json_decref (s_poll (&b, "/v1/referrals/r-o1", r, "state", "DELIVERED"));
    json_decref (s_call (&b, "GET", "/v1/referrals/a%20b", r, NULL, T, 400));
    json_decref (s_call (&b, "GET", "/v1/referrals/r-none", r, NULL, T, 404));
    json_decref (s_call (&b, "GET", "/v1/referrals/r-o1", r, NULL, NULL, 401));
    json_decref (s_call (&b, "GET", "/v1/referrals", "/v1/referrals", NULL, T, 200));
    json_decref (s_call (&b, "GET", "/v1/referrals?state=DELIVERED&overdue=false",
                         "/v1/referrals", NULL, T, 200));
    json_decref (s_call (&b, "GET", "/v1/referrals?state=X", "/v1/referrals", NULL, T, 400));
    json_decref (s_call (&b, "GET", "/v1/referrals", "/v1/referrals", NULL, NULL, 401));

    //  inbox
    json_t *list = s_call (&b, "GET", "/v1/inbox", "/v1/inbox", NULL, T, 200);
    KIM_CHECK (json_array_size (json_object_get (list, "items")) == 1);
    json_int_t seq = json_integer_value (json_object_get (json_array_get (
        json_object_get (list, "items"), 0), "seq"));
    json_decref (list);
    json_decref (s_call (&b, "GET", "/v1/inbox?limit=0", "/v1/inbox", NULL, T, 400));
    json_decref (s_call (&b, "GET", "/v1/inbox", "/v1/inbox", NULL, NULL, 401));
    char path [128];
    const char *i1 = "/v1/inbox/{seq}", *i2 = "/v1/inbox/{seq}/handled";
    snprintf (path, sizeof path, "/v1/inbox/%lld", (long long) seq);
    json_t *item = s_call (&b, "GET", path, i1, NULL, T, 200);
    KIM_CHECK (streq (json_string_value (json_object_get (item, "payload_base64")), "AAEC/w=="));
    KIM_CHECK (!json_object_get (item, "payload"));      //  not UTF-8
    json_decref (item);
    json_decref (s_call (&b, "GET", "/v1/inbox/abc", i1, NULL, T, 400));
    json_decref (s_call (&b, "GET", "/v1/inbox/999999", i1, NULL, T, 404));
    json_decref (s_call (&b, "GET", path, i1, NULL, NULL, 401));
    snprintf (path, sizeof path, "/v1/inbox/%lld/handled", (long long) seq);
    json_decref (s_call (&b, "POST", path, i2, NULL, T, 200));
    json_decref (s_call (&b, "POST", "/v1/inbox/x/handled", i2, NULL, T, 400));
    json_decref (s_call (&b, "POST", "/v1/inbox/999999/handled", i2, NULL, T, 404));
    json_decref (s_call (&b, "POST", path, i2, NULL, NULL, 401));

    //  answer
    const char *an = "/v1/referrals/{referral_id}/answer";
    const char *accept = "{\"answer\":\"accept\",\"msg_id\":\"m-o-acc\"}";
    json_decref (s_call (&b, "POST", "/v1/referrals/r-o1/answer", an, accept, T, 202));
    json_decref (s_call (&b, "POST", "/v1/referrals/r-o1/answer", an, accept, T, 200));
    json_decref (s_call (&b, "POST", "/v1/referrals/r-o1/answer", an, "{\"answer\":\"nope\"}",
                         T, 400));
    json_decref (s_call (&b, "POST", "/v1/referrals/r-none/answer", an, accept, T, 404));
    json_decref (s_call (&a, "POST", "/v1/referrals/r-o1/answer", an, accept, T, 409));
    json_decref (s_call (&b, "POST", "/v1/referrals/r-o1/answer", an, big, T, 413));
    json_decref (s_call (&b, "POST", "/v1/referrals/r-o1/answer", an, accept, NULL, 401));
    json_decref (s_poll (&a, "/v1/referrals/r-o1", r, "state", "ACCEPTED"));
    json_decref (s_call (&a, "GET", "/v1/referrals?state=ACCEPTED", "/v1/referrals", NULL, T,
                         200));

    //  webhook dead letters
    const char *d = "/v1/webhook/dead", *dr = "/v1/webhook/dead/{seq}/retry";
    json_decref (s_call (&a, "GET", d, d, NULL, T, 200));
    json_decref (s_call (&b, "GET", d, d, NULL, NULL, 401));
    bool dead = false;
    for (int attempt = 0; attempt < 600 && !dead; attempt++) {
        json_t *letters = s_call (&b, "GET", d, d, NULL, T, 200);
        dead = json_array_size (json_object_get (letters, "items")) > 0
            && json_integer_value (json_object_get (json_array_get (
                   json_object_get (letters, "items"), 0), "seq")) == seq;
        json_decref (letters);
        if (!dead)
            zclock_sleep (50);
    }
    KIM_CHECK (dead);
    snprintf (path, sizeof path, "/v1/webhook/dead/%lld/retry", (long long) seq);
    json_decref (s_call (&b, "POST", path, dr, NULL, T, 200));
    json_decref (s_call (&b, "POST", path, dr, NULL, NULL, 401));
    json_decref (s_call (&b, "POST", "/v1/webhook/dead/x/retry", dr, NULL, T, 400));
    json_decref (s_call (&a, "POST", "/v1/webhook/dead/999999/retry", dr, NULL, T, 404));

    //  cases: A's view has the case of its referral
    const char *cs = "/v1/cases", *c1 = "/v1/cases/{case_id}";
    json_t *cases = s_call (&a, "GET", cs, cs, NULL, T, 200);
    KIM_CHECK (json_array_size (json_object_get (cases, "items")) == 1);
    json_decref (cases);
    json_decref (s_call (&a, "GET", "/v1/cases?state=OPEN", cs, NULL, T, 200));
    json_decref (s_call (&a, "GET", "/v1/cases?state=X", cs, NULL, T, 400));
    json_decref (s_call (&a, "GET", cs, cs, NULL, NULL, 401));
    json_t *one = s_call (&a, "GET", "/v1/cases/c-o1", c1, NULL, T, 200);
    KIM_CHECK (json_array_size (json_object_get (one, "timeline")) >= 2);
    json_decref (one);
    json_decref (s_call (&a, "GET", "/v1/cases/a%20b", c1, NULL, T, 400));
    json_decref (s_call (&a, "GET", "/v1/cases/c-none", c1, NULL, T, 404));
    json_decref (s_call (&a, "GET", "/v1/cases/c-o1", c1, NULL, NULL, 401));

    //  consents
    const char *g = "/v1/consents", *g1 = "/v1/consents/{consent}",
               *gr = "/v1/consents/{consent}/revoke";
    const char *grant =
        "{\"msg_id\":\"m-o-g1\",\"consent\":\"g-o1\",\"case_id\":\"c-o2\",\"subject\":\"p-o2\","
        "\"recipients\":[\"jc.b\"],\"purposes\":[\"job_placement\"],\"valid_until\":4102444800000}";
    json_decref (s_call (&a, "POST", g, g, grant, T, 202));
    json_decref (s_call (&a, "POST", g, g, grant, T, 200));
    json_decref (s_call (&a, "POST", g, g, "{\"consent\":\"g-o9\"}", T, 400));
    json_decref (s_call (&a, "POST", g, g, "{\"referral_id\":\"r-o1\"}", T, 400));
    json_decref (s_call (&a, "POST", g, g, "{\"msg_id\":\"m-o1\",\"consent\":\"g-o9\","
                         "\"case_id\":\"c-o2\",\"subject\":\"p-o2\",\"recipients\":[\"jc.b\"],"
                         "\"purposes\":[\"x\"],\"valid_until\":4102444800000}", T, 409));
    json_decref (s_call (&a, "POST", g, g, big, T, 413));
    json_decref (s_call (&a, "POST", g, g, grant, NULL, 401));
    json_decref (s_poll (&a, "/v1/consents/g-o1", g1, "state", "active"));
    json_decref (s_call (&a, "GET", "/v1/consents/a%20b", g1, NULL, T, 400));
    json_decref (s_call (&a, "GET", "/v1/consents/g-none", g1, NULL, T, 404));
    json_decref (s_call (&a, "GET", "/v1/consents/g-o1", g1, NULL, NULL, 401));
    json_decref (s_call (&a, "GET", g, g, NULL, T, 200));
    json_decref (s_call (&a, "GET", "/v1/consents?state=active", g, NULL, T, 200));
    json_decref (s_call (&a, "GET", "/v1/consents?state=gone", g, NULL, T, 400));
    json_decref (s_call (&a, "GET", g, g, NULL, NULL, 401));
    const char *revoke = "{\"msg_id\":\"m-o-v1\"}";
    json_decref (s_call (&a, "POST", "/v1/consents/g-o1/revoke", gr, revoke, T, 202));
    json_decref (s_call (&a, "POST", "/v1/consents/g-o1/revoke", gr, revoke, T, 200));
    json_decref (s_call (&a, "POST", "/v1/consents/g-o1/revoke", gr, "{\"note\":\"x\"}", T, 400));
    json_decref (s_call (&a, "POST", "/v1/consents/g-o1/revoke", gr, "{\"msg_id\":\"m-o-g1\"}",
                         T, 409));
    json_decref (s_call (&a, "POST", "/v1/consents/g-o1/revoke", gr, big, T, 413));
    json_decref (s_call (&a, "POST", "/v1/consents/g-o1/revoke", gr, revoke, NULL, 401));
    json_decref (s_poll (&a, "/v1/consents/g-o1", g1, "state", "revoked"));

    //  access report and erasure
    const char *sr = "/v1/subjects/{subject}/report", *rp = "/v1/reports/{msg_id}",
               *se = "/v1/subjects/{subject}/erasure";
    const char *ask = "{\"msg_id\":\"m-o-rep\"}";
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/report", sr, ask, T, 202));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/report", sr, ask, T, 200));
    json_t *second = s_call (&a, "POST", "/v1/subjects/p-o1/report", sr, NULL, T, 202);
    KIM_CHECK (json_string_value (json_object_get (second, "msg_id")));
    json_decref (second);
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/report", sr, "{\"x\":1}", T, 400));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/report", sr, "{\"msg_id\":\"m-o1\"}",
                         T, 409));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/report", sr, big, T, 413));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/report", sr, ask, NULL, 401));
    json_t *report = s_poll (&a, "/v1/reports/m-o-rep", rp, "status", "answered");
    KIM_CHECK (json_array_size (json_object_get (json_object_get (report, "report"),
                                                 "transfers")) == 1);
    json_decref (report);
    json_decref (s_call (&a, "GET", "/v1/reports/a%20b", rp, NULL, T, 400));
    json_decref (s_call (&a, "GET", "/v1/reports/m-none", rp, NULL, T, 404));
    json_decref (s_call (&a, "GET", "/v1/reports/m-o-rep", rp, NULL, NULL, 401));
    json_t *reports = s_call (&a, "GET", "/v1/reports", "/v1/reports", NULL, T, 200);
    json_t *items = json_object_get (reports, "items"), *asked = NULL;
    for (size_t i = 0; i < json_array_size (items); i++)
        if (streq (json_string_value (json_object_get (json_array_get (items, i), "msg_id")),
                   "m-o-rep"))
            asked = json_array_get (items, i);
    KIM_CHECK (json_array_size (items) == 2 && asked
               && streq (json_string_value (json_object_get (asked, "status")), "answered")
               && !json_object_get (asked, "report"));
    json_decref (reports);
    json_decref (s_call (&a, "GET", "/v1/reports", "/v1/reports", NULL, NULL, 401));
    const char *erase = "{\"msg_id\":\"m-o-er\",\"case_id\":\"c-o1\"}";
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/erasure", se, erase, T, 202));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/erasure", se, erase, T, 200));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/erasure", se, "{\"case_id\":\"a b\"}",
                         T, 400));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/erasure", se, "{\"msg_id\":\"m-o-rep\"}",
                         T, 409));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/erasure", se, big, T, 413));
    json_decref (s_call (&a, "POST", "/v1/subjects/p-o1/erasure", se, erase, NULL, 401));
    json_decref (s_poll (&a, "/v1/outbox/m-o-er", o, "status", "receipted"));

    //  the office's own copies: one delivery's payload, a subject's payloads
    const char *ip = "/v1/inbox/{seq}/payload", *sp = "/v1/subjects/{subject}/payloads";
    snprintf (path, sizeof path, "/v1/inbox/%lld/payload", (long long) seq);
    json_t *erased = s_call (&b, "DELETE", path, ip, NULL, T, 200);
    KIM_CHECK (json_integer_value (json_object_get (erased, "erased_at")) > 0);
    json_decref (erased);
    snprintf (path, sizeof path, "/v1/inbox/%lld", (long long) seq);
    erased = s_call (&b, "GET", path, i1, NULL, T, 200);
    KIM_CHECK (streq (json_string_value (json_object_get (erased, "payload_base64")), ""));
    json_decref (erased);
    snprintf (path, sizeof path, "/v1/inbox/%lld/payload", (long long) seq);
    json_decref (s_call (&b, "DELETE", path, ip, NULL, T, 200));
    json_decref (s_call (&b, "DELETE", "/v1/inbox/x/payload", ip, NULL, T, 400));
    json_decref (s_call (&b, "DELETE", "/v1/inbox/999999/payload", ip, NULL, T, 404));
    json_decref (s_call (&b, "DELETE", path, ip, NULL, NULL, 401));
    erased = s_call (&b, "DELETE", "/v1/subjects/p-o1/payloads", sp, NULL, T, 200);
    KIM_CHECK (json_array_size (json_object_get (erased, "inbox")) >= 1);
    json_decref (erased);
    json_decref (s_call (&b, "DELETE", "/v1/subjects/a%20b/payloads", sp, NULL, T, 400));
    json_decref (s_call (&b, "DELETE", "/v1/subjects/p-o1/payloads", sp, NULL, NULL, 401));

    s_check_coverage ();
    free (big);
    kim_agenttest_cleanup (&a);
    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    zhashx_destroy (&s_seen);
    json_decref (s_spec);
    printf ("agent.openapi: OK\n");
    return 0;
}
