/*  kim_cmd_policy.c — `kim policy lint FILE` and `kim policy check`: the
    operator's and the case worker's view of the data-sharing policy, offline.

    Both run the very engine the broker runs (include/kim/kim_policy.h), so
    "why was my referral refused?" gets the broker's answer, step by step
    and naming the law, without sending anything.
*/
#include <czmq.h>
#include <jansson.h>

#include "kim/kim_policy.h"
#include "kim_cli.h"

const char kim_cmd_policy_usage [] =
    "Usage: kim policy lint FILE\n"
    "       kim policy check --policy FILE [--json | header options] [check options]\n"
    "\n"
    "lint: validates a policy file; an error names the file, line and key.\n"
    "\n"
    "check: decides one transfer against the policy offline and explains each\n"
    "step: which rules did not apply and why, which rule decided, the law it\n"
    "rests on, and what is missing. Exit 0 when allowed, 1 when denied.\n"
    "check works OFFLINE: it does not ask a broker. A consent comes from\n"
    "--consent-file or --assume-consent, so check cannot know whether it was\n"
    "revoked since, nor who leads its case now; the broker checks both.\n"
    "The header comes as one JSON object on stdin (--json, as `kim send --json`\n"
    "takes it; give \"sender\") or from the options below.\n"
    "\n"
    "Header options:\n"
    "  --type TYPE         message type (default REFERRAL)\n"
    "  --from ORG          sender organisation (its type is the id's first part)\n"
    "  --to ORG            recipient (for FORWARD: --org)\n"
    "  --org ORG           FORWARD: the organisation the referral is passed on to\n"
    "  --purpose CODE      purpose code\n"
    "  --categories LIST   comma-separated: art9, sgb8_s65, stgb203,\n"
    "                      residence_status, contact\n"
    "  --statute TEXT      legal basis: a statute citation, e.g. \"SGB X §69(1)1\"\n"
    "  --consent ID        legal basis: a registered consent\n"
    "  --subject ID        subject pseudonym (default p-check)\n"
    "  --case ID           the case the transfer belongs to (a consent is bound to its\n"
    "                      case: --consent-file's must be this one)\n"
    "Check options:\n"
    "  --from-type T, --to-type T   agency types, when not the ids' first part\n"
    "  --private           the sender is a private carrier (default: a public body)\n"
    "  --consent-file FILE the consent as registered: a CONSENT_GRANT header (JSON)\n"
    "  --assume-consent    assume the consent exists and covers the transfer\n"
    "  --giver ROLE        who gave the assumed consent: subject, guardian or\n"
    "                      entruster (default: entruster, as § 65 SGB VIII asks)\n"
    "\n"
    "Examples:\n"
    "  kim policy lint deploy/policy.cfg\n"
    "  kim policy check --policy deploy/policy.cfg --from sch.rheine --to aba.rheine \\\n"
    "      --purpose residence --statute \"AufenthG §87(1)\"\n";

typedef struct {
    kim_consent_t consent;
    bool have;                  //  --consent-file given
    bool assume;                //  --assume-consent
    const kim_msg_t *msg;
    const char *recipient;
    const char *giver;          //  --giver, for an assumed consent
} s_registry_t;

static int
s_lookup (void *arg, const char *id, kim_consent_t *consent)
{
    s_registry_t *registry = (s_registry_t *) arg;
    if (registry->have && streq (registry->consent.id, id)) {
        *consent = registry->consent;
        return 0;
    }
    if (!registry->assume)
        return -KIM_E_NOT_FOUND;
    //  A consent made to measure: it covers exactly this transfer.
    memset (consent, 0, sizeof *consent);
    kim_str_copy (consent->id, sizeof consent->id, id);
    kim_str_copy (consent->subject, sizeof consent->subject, registry->msg->subject);
    kim_str_copy (consent->case_id, sizeof consent->case_id, registry->msg->case_id);
    kim_str_copy (consent->giver, sizeof consent->giver,
                  registry->giver? registry->giver: "entruster");
    snprintf (consent->granted_by, sizeof consent->granted_by, "(assumed)");
    consent->recipient_count = 1;
    kim_str_copy (consent->recipients [0], sizeof consent->recipients [0], registry->recipient);
    consent->purpose_count = 1;
    kim_str_copy (consent->purposes [0], sizeof consent->purposes [0], registry->msg->purpose);
    consent->categories = registry->msg->categories;
    consent->explicit_art9 = true;
    consent->valid_until = UINT64_MAX;
    return 0;
}

static int
s_lint (const char *cmd, int argc, char *argv [])
{
    if (argc != 3)
        return kim_cli_usage_error (cmd, "lint takes one FILE");
    char error [KIM_POLICY_ERROR_MAX];
    kim_policy_t *policy = kim_policy_load (argv [2], error, sizeof error);
    if (!policy) {
        fprintf (stderr, "%s\n", error);
        return KIM_EXIT_REJECTED;
    }
    printf ("%s: OK: %zu rules, default deny%s\n", argv [2], kim_policy_rule_count (policy),
            kim_policy_unchecked (policy)? " (WARNING: a rule allows with basis unchecked: "
            "test brokers only)": "");
    kim_policy_destroy (&policy);
    return KIM_EXIT_OK;
}

static bool
s_set (char *field, size_t size, const char *value)
{
    if (!value || strlen (value) >= size)
        return false;
    snprintf (field, size, "%s", value);
    return true;
}

//  The agency type of an org id: its first part.
static void
s_type_of (const char *org, char *type, size_t size)
{
    const char *dot = strchr (org, '.');
    snprintf (type, size, "%.*s", (int) (dot? (size_t) (dot - org): strlen (org)), org);
}

static int
s_categories (const char *list, uint32_t *bits)
{
    char copy [256];
    kim_str_copy (copy, sizeof copy, list);
    for (char *item = strtok (copy, ", "); item; item = strtok (NULL, ", ")) {
        uint32_t bit = 1;
        for (; bit <= KIM_CAT_LAST; bit <<= 1)
            if (kim_category_name (bit) && streq (kim_category_name (bit), item))
                break;
        if (bit > KIM_CAT_LAST)
            return -1;
        *bits |= bit;
    }
    return 0;
}

static int
s_check (const char *cmd, int argc, char *argv [])
{
    kim_msg_t *msg = (kim_msg_t *) calloc (2, sizeof (kim_msg_t));
    if (!msg)
        return kim_cli_error (cmd, "out of memory");
    kim_msg_t *grant = msg + 1;
    kim_msg_init (msg);
    msg->type = KIM_TYPE_REFERRAL;
    snprintf (msg->subject, sizeof msg->subject, "p-check");
    const char *policy_path = NULL, *from_type = NULL, *to_type = NULL, *consent_file = NULL;
    bool json = false, private_body = false;
    s_registry_t registry = { .msg = msg };
    int exit_code = KIM_EXIT_USAGE;
    kim_cli_args_t args;
    kim_cli_args_init (&args, argc - 1, argv + 1);
    args.cmd = cmd;                     //  messages name the command, not the subcommand
    while (kim_cli_args_next (&args)) {
        const char *value = NULL;
        bool ok = true;
        if (kim_cli_args_help (&args)) {
            kim_cli_help (stdout, cmd);
            free (msg);
            return KIM_EXIT_OK;
        }
        else
        if (kim_cli_args_is (&args, "--policy"))
            policy_path = kim_cli_args_value (&args);
        else
        if (kim_cli_args_is (&args, "--json"))
            json = true;
        else
        if (kim_cli_args_is (&args, "--private"))
            private_body = true;
        else
        if (kim_cli_args_is (&args, "--assume-consent"))
            registry.assume = true;
        else
        if (kim_cli_args_is (&args, "--giver")) {
            value = registry.giver = kim_cli_args_value (&args);
            ok = value && (streq (value, "subject") || streq (value, "guardian")
                        || streq (value, "entruster"));
        }
        else
        if (kim_cli_args_is (&args, "--from-type"))
            from_type = kim_cli_args_value (&args);
        else
        if (kim_cli_args_is (&args, "--to-type"))
            to_type = kim_cli_args_value (&args);
        else
        if (kim_cli_args_is (&args, "--consent-file"))
            consent_file = kim_cli_args_value (&args);
        else
        if (kim_cli_args_is (&args, "--type")) {
            value = kim_cli_args_value (&args);
            msg->type = value? kim_type_from_name (value): KIM_TYPE_NONE;
            ok = msg->type != KIM_TYPE_NONE;
        }
        else
        if (kim_cli_args_is (&args, "--from"))
            ok = s_set (msg->sender, sizeof msg->sender, value = kim_cli_args_value (&args));
        else
        if (kim_cli_args_is (&args, "--to"))
            ok = s_set (msg->recipient, sizeof msg->recipient, value = kim_cli_args_value (&args));
        else
        if (kim_cli_args_is (&args, "--org"))
            ok = s_set (msg->org, sizeof msg->org, value = kim_cli_args_value (&args));
        else
        if (kim_cli_args_is (&args, "--purpose"))
            ok = s_set (msg->purpose, sizeof msg->purpose, value = kim_cli_args_value (&args));
        else
        if (kim_cli_args_is (&args, "--subject"))
            ok = s_set (msg->subject, sizeof msg->subject, value = kim_cli_args_value (&args));
        else
        if (kim_cli_args_is (&args, "--case"))
            ok = s_set (msg->case_id, sizeof msg->case_id, value = kim_cli_args_value (&args));
        else
        if (kim_cli_args_is (&args, "--categories")) {
            value = kim_cli_args_value (&args);
            ok = value && s_categories (value, &msg->categories) == 0;
        }
        else
        if (kim_cli_args_is (&args, "--statute")) {
            msg->basis = KIM_BASIS_STATUTE;
            ok = s_set (msg->citation, sizeof msg->citation, value = kim_cli_args_value (&args));
        }
        else
        if (kim_cli_args_is (&args, "--consent")) {
            msg->basis = KIM_BASIS_CONSENT;
            ok = s_set (msg->consent_id, sizeof msg->consent_id, value = kim_cli_args_value (&args));
        }
        else {
            free (msg);
            return kim_cli_args_unknown (&args);
        }
        if (args.failed) {
            free (msg);
            return KIM_EXIT_USAGE;
        }
        if (!ok) {
            free (msg);
            return kim_cli_usage_error (cmd, "%s: '%s' is not a valid value", args.name,
                                        value? value: "");
        }
    }
    if (!policy_path) {
        free (msg);
        return kim_cli_usage_error (cmd, "--policy FILE is required");
    }
    uint8_t *data = NULL;
    size_t size = 0;
    kim_decode_error_t error = { 0, "" };
    if (json) {
        if (kim_cli_read_file (cmd, "-", KIM_JSON_MAX, &data, &size)) {
            free (msg);
            return KIM_EXIT_USAGE;
        }
        int rc = kim_msg_from_json (msg, (const char *) data, size, &error);
        free (data);
        if (rc) {
            free (msg);
            return kim_cli_error (cmd, "stdin: %s at %s", kim_strerror (rc), error.path);
        }
    }
    if (consent_file) {
        if (kim_cli_read_file (cmd, consent_file, KIM_JSON_MAX, &data, &size)) {
            free (msg);
            return KIM_EXIT_USAGE;
        }
        int rc = kim_msg_from_json (grant, (const char *) data, size, &error);
        free (data);
        if (rc || grant->type != KIM_TYPE_CONSENT_GRANT) {
            free (msg);
            return kim_cli_error (cmd, "%s: not a CONSENT_GRANT header: %s %s", consent_file,
                                  kim_strerror (rc? rc: KIM_E_BAD_VALUE), error.path);
        }
        kim_consent_t *consent = &registry.consent;
        kim_str_copy (consent->id, sizeof consent->id, grant->grant_id);
        kim_str_copy (consent->subject, sizeof consent->subject, grant->subject);
        kim_str_copy (consent->case_id, sizeof consent->case_id, grant->case_id);
        kim_str_copy (consent->granted_by, sizeof consent->granted_by, grant->sender);
        consent->recipient_count = grant->recipient_count;
        memcpy (consent->recipients, grant->recipients, sizeof consent->recipients);
        consent->purpose_count = grant->purpose_count;
        memcpy (consent->purposes, grant->purposes, sizeof consent->purposes);
        consent->categories = grant->categories;
        consent->explicit_art9 = grant->explicit_art9;
        consent->valid_until = grant->valid_until;
        kim_str_copy (consent->giver, sizeof consent->giver, grant->giver);
        registry.have = true;
    }
    const char *recipient = msg->type == KIM_TYPE_FORWARD? msg->org: msg->recipient;
    if (!msg->sender [0] || !recipient [0]) {
        free (msg);
        return kim_cli_usage_error (cmd, "the sender (--from) and the recipient (--to, or --org "
                                    "for FORWARD) are needed");
    }
    char sender_type [KIM_CODE_MAX + 1], recipient_type [KIM_CODE_MAX + 1];
    s_type_of (msg->sender, sender_type, sizeof sender_type);
    s_type_of (recipient, recipient_type, sizeof recipient_type);
    registry.recipient = recipient;
    char policy_error [KIM_POLICY_ERROR_MAX];
    kim_policy_t *policy = kim_policy_load (policy_path, policy_error, sizeof policy_error);
    if (!policy) {
        fprintf (stderr, "%s\n", policy_error);
        free (msg);
        return KIM_EXIT_USAGE;
    }
    kim_policy_facts_t facts = {
        .msg = msg,
        .sender_type = from_type? from_type: sender_type,
        .sender_public = !private_body,
        .recipient = recipient,
        .recipient_type = to_type? to_type: recipient_type,
        .now = (uint64_t) zclock_time (),
    };
    kim_policy_decision_t decision;
    kim_buf_t explain;
    kim_buf_init (&explain);
    int rc = kim_policy_decide (policy, &facts, s_lookup, &registry, &decision, &explain);
    if (rc == 0) {
        fwrite (explain.data, 1, explain.size, stdout);
        if (decision.checked && msg->basis == KIM_BASIS_CONSENT)
            printf ("offline: the consent as given here (%s); whether it was revoked since, "
                    "and who leads its case now, only the broker knows\n",
                    registry.have? "--consent-file": registry.assume? "--assume-consent": "none");
        json_t *out = json_pack ("{s:s, s:s, s:s, s:s, s:s, s:s}",
                                 "decision", decision.code? "deny": "allow",
                                 "code", decision.code? kim_errname (decision.code): "OK",
                                 "rule", decision.rule, "law", decision.law,
                                 "basis", decision.basis, "text", decision.text);
        if (out && json_dumpf (out, stdout, JSON_COMPACT) == 0 && fputc ('\n', stdout) != EOF)
            exit_code = decision.code? KIM_EXIT_REJECTED: KIM_EXIT_OK;
        json_decref (out);
    }
    else
        kim_cli_error (cmd, "cannot decide: %s", kim_strerror (rc));
    kim_buf_free (&explain);
    kim_policy_destroy (&policy);
    free (msg);
    return exit_code;
}

int
kim_cmd_policy (int argc, char *argv [])
{
    const char *cmd = "policy";
    if (argc == 3 && streq (argv [1], "lint")
    &&  (streq (argv [2], "--help") || streq (argv [2], "-h"))) {
        kim_cli_help (stdout, cmd);
        return KIM_EXIT_OK;
    }
    if (argc >= 2 && streq (argv [1], "lint"))
        return s_lint (cmd, argc, argv);
    if (argc >= 2 && streq (argv [1], "check"))
        return s_check (cmd, argc, argv);
    if (argc >= 2 && (streq (argv [1], "--help") || streq (argv [1], "-h"))) {
        kim_cli_help (stdout, cmd);
        return KIM_EXIT_OK;
    }
    return kim_cli_usage_error (cmd, "expected a subcommand: lint or check");
}
