/*  kim_cmd_subscribe.c — `kim subscribe`, `kim unsubscribe` and
    `kim directory`: the standing questions an agency system asks the broker
    about others, beside its own mail.

    subscribe/unsubscribe manage case-event subscriptions (SUBSCRIBE,
    UNSUBSCRIBE, PROTOCOL.md 8.10): durable cursors kept by the broker, so
    this command only names one and leaves; the events themselves arrive in
    the organisation's mailbox and are read with `kim inbox` like any mail.
    directory prints the broker's key directory (DIRECTORY, 8.14): who can be
    sealed to, and with which keys their signatures are checked.

    Everything the broker would refuse for its form (ids, type names,
    duplicates, too many types) is checked here first, so that a typo is a
    usage error naming the option, not a round trip.
*/
#include <string.h>

#include <czmq.h>
#include <jansson.h>

#include "kim_cli.h"

const char kim_cmd_subscribe_usage [] =
    "Usage: kim subscribe [--case ID] [--types TYPE,...] [--sub-id ID] [connection options]\n"
    "\n"
    "Subscribes our organisation to the events of a case (or of every case it takes part\n"
    "in, as sender or recipient of one of its messages): the messages the case's other\n"
    "organisations send each other from now on. The broker keeps the subscription, also\n"
    "while we are offline; events arrive in our mailbox and are read, in log order and\n"
    "once, with `kim inbox` (with an empty payload unless the message was for us).\n"
    "Prints what the broker stored, one JSON object:\n"
    "  {\"subscribed\":\"s-C-17\",\"org\":\"jc.rheine\",\"case\":\"C-17\",\n"
    "   \"types\":[\"ACCEPT\",\"OUTCOME\"],\"seq\":1044}\n"
    "case null and types [] mean all; events start after log position seq.\n"
    "Subscribing again with the same id replaces the filter and keeps the position.\n"
    "\n"
    "Options:\n"
    "  --case ID         only events of case ID\n"
    "  --types LIST      only these message types, comma-separated (at most 16), e.g.\n"
    "                    ACCEPT,DECLINE,OUTCOME (repeatable)\n"
    "  --sub-id ID       the subscription's name, unique for our organisation\n"
    "                    (default s-CASE with --case, else s-all)\n"
    "\n"
    "Exit status: 1 when the broker refuses (e.g. FORBIDDEN for a role that has no\n"
    "mailbox); 2 for usage and connection errors.\n"
    "\n"
    "Example:\n"
    "  kim subscribe --case C-17 --types ACCEPT,OUTCOME --cert ./kim-data/keys/jc.rheine.cert_secret\n"
    "  kim inbox --cert ./kim-data/keys/jc.rheine.cert_secret\n";

const char kim_cmd_unsubscribe_usage [] =
    "Usage: kim unsubscribe SUB_ID [connection options]\n"
    "\n"
    "Ends our organisation's subscription SUB_ID (see kim subscribe); no events are\n"
    "added to our mailbox for it from then on. Prints one JSON object:\n"
    "  {\"unsubscribed\":\"s-C-17\",\"org\":\"jc.rheine\",\"seq\":1051}\n"
    "The broker answers the same when there was no such subscription, so a retry is\n"
    "safe, and an id that was never subscribed is not an error.\n"
    "\n"
    "Exit status: 1 when the broker refuses; 2 for usage (SUB_ID not 1..64 of\n"
    "A-Za-z0-9._:-) and connection errors.\n"
    "\n"
    "Example:\n"
    "  kim unsubscribe s-C-17 --cert ./kim-data/keys/jc.rheine.cert_secret\n";

const char kim_cmd_directory_usage [] =
    "Usage: kim directory [ORG] [connection options]\n"
    "\n"
    "Prints the broker's key directory as it is now, one JSON object per organisation:\n"
    "every agency whose key is not revoked, in registry order, or only ORG:\n"
    "  {\"org\":\"jc.rheine\",\"name\":\"Jobcenter Rheine\",\"type\":\"jc\",\"public_body\":true,\n"
    "   \"public_key\":\"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\",\"sign_key\":\"Yne@$w-...\"}\n"
    "public_key is the organisation's CURVE key, to which payloads for it are sealed;\n"
    "sign_key (only when it registered one) checks its sender signatures. Organisations\n"
    "of other districts, published by linked brokers, follow with \"home\": their broker.\n"
    "A last line\n"
    "{\"more\":true,\"count\":N} says the answer was cut at 128 entries: ask for one ORG.\n"
    "\n"
    "Exit status: 1 when ORG is not in the directory (unknown, revoked, or not an\n"
    "agency); 2 for usage and connection errors.\n"
    "\n"
    "Example:\n"
    "  kim directory jc.rheine --cert ./kim-data/keys/kim.rheine.cert_secret\n";


//  --------------------------------------------------------------------------
//  Shared

//  Prints one JSON object as a line and takes it; false if stdout failed.
static bool
s_print (const char *cmd, json_t *object)
{
    bool ok = object && json_dumpf (object, stdout, JSON_COMPACT) == 0
           && fputc ('\n', stdout) != EOF && fflush (stdout) == 0;
    json_decref (object);
    if (!ok)
        kim_cli_error (cmd, "cannot write to stdout");
    return ok;
}

//  The exit code for a failed request: the broker's refusal is 1; no answer,
//  a lost session or a broker that does not serve the command is 2.
static int
s_request_failed (const char *cmd, kim_client_t *client, const char *what, int rc)
{
    kim_cli_error (cmd, "%s: %s", what, kim_client_error (client));
    return rc == -KIM_E_TIMEOUT || rc == -KIM_E_CLOSED || rc == -KIM_E_UNKNOWN_CMD
         ? KIM_EXIT_USAGE: KIM_EXIT_REJECTED;
}

//  Sends SUBSCRIBE or UNSUBSCRIBE and waits for its RECEIPT. Returns an exit
//  code; *seq is the log head the broker stored it at.
static int
s_subscription (const char *cmd, const kim_cli_conn_t *conn, const kim_cmd_t *request,
                char org [KIM_ORG_MAX + 1], uint64_t *seq)
{
    kim_cmd_t *reply = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    if (!reply)
        return kim_cli_error (cmd, "out of memory");
    kim_client_t *client = kim_cli_connect (cmd, conn, 0);
    if (!client) {
        free (reply);
        return KIM_EXIT_USAGE;
    }
    int exit_code = KIM_EXIT_OK;
    int rc = kim_client_request (client, request, reply, conn->timeout_ms);
    if (rc)
        exit_code = s_request_failed (cmd, client, request->id == KIM_CMD_SUBSCRIBE
                                      ? "subscription refused": "unsubscribe refused", rc);
    else
    if (reply->id != KIM_CMD_RECEIPT || !streq (reply->msg_id, request->sub_id))
        exit_code = kim_cli_error (cmd, "the broker answered %s %s, not a RECEIPT for %s",
                                   kim_cmd_name (reply->id), reply->msg_id, request->sub_id);
    else {
        kim_str_copy (org, KIM_ORG_MAX + 1, kim_client_org (client));
        *seq = reply->seq;
    }
    kim_client_destroy (&client);
    free (reply);
    return exit_code;
}


//  --------------------------------------------------------------------------
//  kim subscribe

//  Adds the comma-separated type names in `list` to the request. Returns 0,
//  or KIM_EXIT_USAGE after saying what is wrong.
static int
s_add_types (const char *cmd, kim_cmd_t *request, const char *list)
{
    const char *name = list;
    while (true) {
        size_t length = strcspn (name, ",");
        char upper [KIM_CODE_MAX + 1];
        if (length == 0 || length >= sizeof upper)
            return kim_cli_usage_error (cmd, "--types wants message type names separated by "
                                        "commas, e.g. ACCEPT,OUTCOME, not '%s'", list);
        //  As `kim send --type` does: accept-ish spellings like handover-offer
        for (size_t i = 0; i < length; i++)
            upper [i] = name [i] >= 'a' && name [i] <= 'z'? (char) (name [i] - 'a' + 'A')
                      : name [i] == '-'? '_': name [i];
        upper [length] = 0;
        kim_type_t type = kim_type_from_name (upper);
        if (type == KIM_TYPE_NONE)
            return kim_cli_usage_error (cmd, "--types: '%.*s' is not a message type",
                                        (int) length, name);
        for (size_t i = 0; i < request->type_count; i++)
            if (request->types [i] == type)
                return kim_cli_usage_error (cmd, "--types: %s is named twice", upper);
        if (request->type_count == KIM_LIST_MAX)
            return kim_cli_usage_error (cmd, "--types: at most %d types", KIM_LIST_MAX);
        request->types [request->type_count++] = type;
        if (name [length] == 0)
            return 0;
        name += length + 1;
    }
}

int
kim_cmd_subscribe (int argc, char *argv [])
{
    const char *cmd = "subscribe";
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    kim_cmd_t *request = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    if (!request)
        return kim_cli_error (cmd, "out of memory");
    kim_cmd_init (request, KIM_CMD_SUBSCRIBE);
    const char *sub_id = NULL, *case_id = NULL;
    int exit_code = -1;

    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    while (exit_code < 0 && kim_cli_args_next (&args)) {
        int taken = kim_cli_args_common (cmd, &conn, &args, &exit_code);
        if (taken)
            continue;
        if (kim_cli_args_is (&args, "--case"))
            case_id = kim_cli_args_value (&args);
        else
        if (kim_cli_args_is (&args, "--sub-id"))
            sub_id = kim_cli_args_value (&args);
        else
        if (kim_cli_args_is (&args, "--types")) {
            const char *list = kim_cli_args_value (&args);
            if (list && s_add_types (cmd, request, list))
                exit_code = KIM_EXIT_USAGE;
        }
        else
            exit_code = kim_cli_args_unknown (&args);
    }
    if (exit_code < 0 && args.failed)
        exit_code = KIM_EXIT_USAGE;
    if (exit_code < 0 && case_id && !kim_id_valid (case_id))
        exit_code = kim_cli_usage_error (cmd, "--case '%s' is not a case id (1..%d of "
                                         "A-Za-z0-9._:-)", case_id, KIM_ID_MAX);
    if (exit_code < 0) {
        if (sub_id)
            kim_str_copy (request->sub_id, sizeof request->sub_id, sub_id);
        else
            snprintf (request->sub_id, sizeof request->sub_id, "s-%s", case_id? case_id: "all");
        if (!kim_id_valid (request->sub_id))
            exit_code = kim_cli_usage_error (cmd, "%s '%s' is not a subscription id (1..%d of "
                                             "A-Za-z0-9._:-)%s",
                                             sub_id? "--sub-id": "the default id s-CASE",
                                             sub_id? sub_id: case_id, KIM_ID_MAX,
                                             sub_id? "": ": name it with --sub-id");
    }
    if (exit_code >= 0) {
        free (request);
        return exit_code;
    }
    if (case_id)
        kim_str_copy (request->case_id, sizeof request->case_id, case_id);

    char org [KIM_ORG_MAX + 1] = "";
    uint64_t seq = 0;
    exit_code = s_subscription (cmd, &conn, request, org, &seq);
    if (exit_code == KIM_EXIT_OK) {
        json_t *types = json_array ();
        for (size_t i = 0; types && i < request->type_count; i++)
            json_array_append_new (types, json_string (kim_type_name (request->types [i])));
        json_t *out = json_pack ("{s:s, s:s, s:o, s:o, s:I}", "subscribed", request->sub_id,
                                 "org", org,
                                 "case", case_id? json_string (case_id): json_null (),
                                 "types", types, "seq", (json_int_t) seq);
        if (!s_print (cmd, out))
            exit_code = KIM_EXIT_USAGE;
    }
    free (request);
    return exit_code;
}


//  --------------------------------------------------------------------------
//  kim unsubscribe

int
kim_cmd_unsubscribe (int argc, char *argv [])
{
    const char *cmd = "unsubscribe";
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    const char *sub_id;
    int parsed = kim_cli_conn_only (cmd, &conn, argc, argv, &sub_id);
    if (parsed >= 0)
        return parsed;
    if (!sub_id)
        return kim_cli_usage_error (cmd, "which SUB_ID? e.g. kim unsubscribe s-C-17");
    if (!kim_id_valid (sub_id))
        return kim_cli_usage_error (cmd, "'%s' is not a subscription id (1..%d of A-Za-z0-9._:-)",
                                    sub_id, KIM_ID_MAX);

    kim_cmd_t *request = (kim_cmd_t *) calloc (1, sizeof (kim_cmd_t));
    if (!request)
        return kim_cli_error (cmd, "out of memory");
    kim_cmd_init (request, KIM_CMD_UNSUBSCRIBE);
    kim_str_copy (request->sub_id, sizeof request->sub_id, sub_id);
    char org [KIM_ORG_MAX + 1] = "";
    uint64_t seq = 0;
    int exit_code = s_subscription (cmd, &conn, request, org, &seq);
    if (exit_code == KIM_EXIT_OK
    &&  !s_print (cmd, json_pack ("{s:s, s:s, s:I}", "unsubscribed", sub_id, "org", org,
                                  "seq", (json_int_t) seq)))
        exit_code = KIM_EXIT_USAGE;
    free (request);
    return exit_code;
}


//  --------------------------------------------------------------------------
//  kim directory

int
kim_cmd_directory (int argc, char *argv [])
{
    const char *cmd = "directory";
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    const char *org;
    int parsed = kim_cli_conn_only (cmd, &conn, argc, argv, &org);
    if (parsed >= 0)
        return parsed;
    if (org && !kim_org_valid (org))
        return kim_cli_usage_error (cmd, "'%s' is not an organisation id (<type>.<place>"
                                    "[.<unit>], e.g. jc.rheine)", org);

    //  kim_client_request rather than kim_client_directory, which does the
    //  same but keeps the reply's `count` (how many matched) to itself: we
    //  need it to say when the answer was cut.
    kim_cmd_t *request = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    if (!request)
        return kim_cli_error (cmd, "out of memory");
    kim_cmd_t *reply = request + 1;
    kim_client_t *client = kim_cli_connect (cmd, &conn, 0);
    if (!client) {
        free (request);
        return KIM_EXIT_USAGE;
    }
    kim_cmd_init (request, KIM_CMD_DIRECTORY);
    if (org)
        kim_str_copy (request->org, sizeof request->org, org);
    request->homes = true;              //  organisations of other districts name their broker
    int exit_code = KIM_EXIT_OK;
    int rc = kim_client_request (client, request, reply, conn.timeout_ms);
    if (rc)
        exit_code = s_request_failed (cmd, client, "directory refused", rc);
    else
    if (reply->id != KIM_CMD_DIRECTORY_REPLY || (reply->dir_count && !reply->dir))
        exit_code = kim_cli_error (cmd, "the broker answered DIRECTORY with %s",
                                   kim_cmd_name (reply->id));
    //  The entries live in the client until its next request.
    for (size_t i = 0; exit_code == KIM_EXIT_OK && i < reply->dir_count; i++) {
        const kim_dir_entry_t *entry = &reply->dir [i];
        json_t *out = json_pack ("{s:s, s:s, s:s, s:b, s:s}", "org", entry->id,
                                 "name", entry->name, "type", entry->type,
                                 "public_body", entry->public_body,
                                 "public_key", entry->public_key);
        if (out && entry->sign_key [0])
            json_object_set_new (out, "sign_key", json_string (entry->sign_key));
        if (out && entry->home [0])
            json_object_set_new (out, "home", json_string (entry->home));
        if (!s_print (cmd, out))
            exit_code = KIM_EXIT_USAGE;
    }
    if (exit_code == KIM_EXIT_OK && reply->count > reply->dir_count
    &&  !s_print (cmd, json_pack ("{s:b, s:I}", "more", 1, "count", (json_int_t) reply->count)))
        exit_code = KIM_EXIT_USAGE;
    if (exit_code == KIM_EXIT_OK && org && reply->dir_count == 0) {
        kim_cli_error (cmd, "%s is not in the broker's directory (unknown, revoked, or not "
                       "an agency)", org);
        exit_code = KIM_EXIT_REJECTED;
    }
    kim_client_destroy (&client);
    free (request);
    return exit_code;
}
