/*  kim_cmd_referral.c — `kim referral show ID` and `kim referral list`: where
    do my referrals stand?

    Asks the broker online (REFERRAL_QUERY -> REFERRAL_INFO): agencies do not
    have the broker's disk, and the broker answers only with the referrals
    the asking organisation takes part in. Prints one JSON object per
    referral. --open and --overdue filter here, on the state the broker
    reported; --org and --case are sent as filters.
*/
#include <string.h>

#include <czmq.h>

#include "kim_cli.h"

const char kim_cmd_referral_usage [] =
    "Usage: kim referral show ID [connection options]\n"
    "       kim referral list [--open] [--overdue] [--org ORG] [--case ID] [connection options]\n"
    "\n"
    "Prints the referrals our organisation sends or receives, one JSON object per line:\n"
    "  {\"referral_id\":\"R-1\",\"state\":\"ACCEPTED\",\"sender\":\"kim.rheine\",\n"
    "   \"recipient\":\"jc.rheine\",\"case_id\":\"C-17\",\"purpose\":\"employment\",\n"
    "   \"deadline\":1767225600000,\"forwarded_from\":\"\",\"consent_id\":\"g-1\",\n"
    "   \"created_seq\":12,\"last_seq\":40}\n"
    "States: SENT, DELIVERED, ACCEPTED, IN_PROGRESS, COMPLETED, DECLINED, NOT_COMPETENT,\n"
    "FORWARDED, OVERDUE, EXPIRED, WITHDRAWN, SUSPENDED, LAPSED, UNDELIVERABLE (refused by\n"
    "the broker of another district). A last line {\"more\":true} says the answer was cut\n"
    "at the frame limit: narrow it with --case or --org.\n"
    "\n"
    "Options:\n"
    "  --open          only referrals still open (SENT, DELIVERED, ACCEPTED, IN_PROGRESS, OVERDUE)\n"
    "  --overdue       only OVERDUE referrals\n"
    "  --org ORG       only referrals with ORG as sender or recipient\n"
    "  --case ID       only referrals of case ID\n"
    "\n"
    "Exit status: show: 1 when the broker knows no such referral of ours.\n"
    "\n"
    "Example:\n"
    "  kim referral list --open --cert ./kim-data/keys/kim.rheine.cert_secret\n";

static bool
s_open (const char *line)
{
    static const char *open [] = { "SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE", NULL };
    for (int i = 0; open [i]; i++) {
        char state [48];
        snprintf (state, sizeof state, "\"state\":\"%s\"", open [i]);
        if (strstr (line, state))
            return true;
    }
    return false;
}

int
kim_cmd_referral (int argc, char *argv [])
{
    const char *cmd = "referral";
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    const char *action = NULL, *id = NULL, *org = NULL, *case_id = NULL;
    bool only_open = false, only_overdue = false;
    while (kim_cli_args_next (&args)) {
        int exit_code;
        int taken = kim_cli_args_common (cmd, &conn, &args, &exit_code);
        if (taken < 0)
            return exit_code;
        if (taken)
            continue;
        if (args.positional && !action)
            action = args.arg;
        else
        if (args.positional && action && streq (action, "show") && !id)
            id = args.arg;
        else
        if (kim_cli_args_is (&args, "--open"))
            only_open = true;
        else
        if (kim_cli_args_is (&args, "--overdue"))
            only_overdue = true;
        else
        if (kim_cli_args_is (&args, "--org"))
            org = kim_cli_args_value (&args);
        else
        if (kim_cli_args_is (&args, "--case"))
            case_id = kim_cli_args_value (&args);
        else
            return kim_cli_args_unknown (&args);
    }
    if (args.failed)
        return KIM_EXIT_USAGE;
    if (!action || (!streq (action, "show") && !streq (action, "list")))
        return kim_cli_usage_error (cmd, "say `show ID` or `list`");
    if (streq (action, "show") && (!id || !kim_id_valid (id)))
        return kim_cli_usage_error (cmd, "show needs a referral id (1..64 of A-Za-z0-9._:-)");
    if (org && !kim_org_valid (org))
        return kim_cli_usage_error (cmd, "--org %s is not an organisation id", org);
    if (case_id && !kim_id_valid (case_id))
        return kim_cli_usage_error (cmd, "--case %s is not a case id", case_id);

    kim_cmd_t *request = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    if (!request || !reply) {
        free (request);
        free (reply);
        return kim_cli_error (cmd, "out of memory");
    }
    kim_client_t *client = kim_cli_connect (cmd, &conn, 0);
    if (!client) {
        free (request);
        free (reply);
        return KIM_EXIT_USAGE;
    }
    kim_cmd_init (request, KIM_CMD_REFERRAL_QUERY);
    snprintf (request->query_id, sizeof request->query_id, "rq-%d", (int) getpid ());
    if (id)
        kim_str_copy (request->referral_id, sizeof request->referral_id, id);
    if (org)
        kim_str_copy (request->org, sizeof request->org, org);
    if (case_id)
        kim_str_copy (request->case_id, sizeof request->case_id, case_id);
    int exit_code = KIM_EXIT_OK;
    int rc = kim_client_request (client, request, reply, conn.timeout_ms);
    if (rc) {
        kim_cli_error (cmd, "%s", kim_client_error (client));
        exit_code = rc == -KIM_E_TIMEOUT || rc == -KIM_E_UNKNOWN_CMD? KIM_EXIT_USAGE
                                                                   : KIM_EXIT_REJECTED;
    }
    else
    if (reply->id != KIM_CMD_REFERRAL_INFO) {
        kim_cli_error (cmd, "the broker answered %s", kim_cmd_name (reply->id));
        exit_code = KIM_EXIT_USAGE;
    }
    else {
        //  JSON lines; copy out of the reply's frame to cut them.
        char *body = (char *) malloc (reply->body_size + 1);
        if (body) {
            if (reply->body_size)
                memcpy (body, reply->body, reply->body_size);
            body [reply->body_size] = 0;
            for (char *line = strtok (body, "\n"); line; line = strtok (NULL, "\n")) {
                if ((only_open && !s_open (line))
                ||  (only_overdue && !strstr (line, "\"state\":\"OVERDUE\"")))
                    continue;
                printf ("%s\n", line);
            }
            free (body);
        }
        if (id && reply->count == 0) {
            kim_cli_error (cmd, "no referral %s of %s is known to the broker", id,
                           kim_client_org (client));
            exit_code = KIM_EXIT_REJECTED;
        }
    }
    kim_client_destroy (&client);
    free (request);
    free (reply);
    return exit_code;
}
