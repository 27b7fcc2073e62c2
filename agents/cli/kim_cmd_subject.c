/*  kim_cmd_subject.c — `kim subject report SUBJECT` and `kim subject erase
    SUBJECT`: the data subject's rights (Art. 15, 17, 19 DSGVO; §§ 83, 84
    SGB X) from the organisation that sent data about the person.

    report sends ACCESS_REPORT and prints the broker's answer (JSON: which
    organisations received which categories, when, on which basis and
    rule). erase sends ERASURE: the broker purges the payloads of our
    transfers about the subject and tells their recipients.
*/
#include <czmq.h>
#include <jansson.h>

#include "kim_cli.h"

const char kim_cmd_subject_usage [] =
    "Usage: kim subject report SUBJECT [--case ID] [connection options]\n"
    "       kim subject erase SUBJECT [--case ID] [connection options]\n"
    "\n"
    "report: asks the broker which organisations received which categories of\n"
    "the subject's data, when, on which legal basis and under which policy rule\n"
    "(metadata from the log only) and prints the report, one JSON object per page\n"
    "of 1,000 transfers, the last with \"last\":true and the total. It\n"
    "covers our own transfers about SUBJECT and, when we lead the case --case\n"
    "names, every transfer in that case.\n"
    "\n"
    "erase: asks the broker to purge the payloads of our transfers about SUBJECT\n"
    "(in --case only, when given). Their recipients get an ERASURE notice; the\n"
    "log keeps each record and its payload hash, so it still verifies.\n"
    "Prints {\"msg_id\":...,\"seq\":N}.\n"
    "\n"
    "Only an organisation that sent data about SUBJECT, or the lead of the case\n"
    "named, may ask (else NOT_PARTY).\n"
    "\n"
    "Examples:\n"
    "  kim subject report p-7f3a --cert kim-data/demo/keys/kim.rheine.cert_secret\n"
    "  kim subject erase p-7f3a --case C-1 --cert kim-data/demo/keys/kim.rheine.cert_secret\n";

int
kim_cmd_subject (int argc, char *argv [])
{
    const char *cmd = "subject";
    if (argc >= 2 && (streq (argv [1], "--help") || streq (argv [1], "-h"))) {
        kim_cli_help (stdout, cmd);
        return KIM_EXIT_OK;
    }
    if (argc < 2 || (!streq (argv [1], "report") && !streq (argv [1], "erase")))
        return kim_cli_usage_error (cmd, "expected a subcommand: report or erase");
    bool report = streq (argv [1], "report");
    const char *subject = NULL, *case_id = NULL;
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    kim_cli_args_t args;
    kim_cli_args_init (&args, argc - 1, argv + 1);
    args.cmd = cmd;                     //  messages name the command, not the subcommand
    while (kim_cli_args_next (&args)) {
        int exit_code;
        int taken = kim_cli_args_common (cmd, &conn, &args, &exit_code);
        if (taken < 0)
            return exit_code;
        if (taken)
            continue;
        if (kim_cli_args_is (&args, "--case")) {
            case_id = kim_cli_args_value (&args);
            continue;
        }
        if (args.positional && !subject) {
            subject = args.arg;
            continue;
        }
        return kim_cli_args_unknown (&args);
    }
    if (args.failed)
        return KIM_EXIT_USAGE;
    if (!subject || !kim_id_valid (subject))
        return kim_cli_usage_error (cmd, "SUBJECT (a pseudonym id) is required");
    if (case_id && !kim_id_valid (case_id))
        return kim_cli_usage_error (cmd, "--case: '%s' is not a valid id", case_id);

    kim_msg_t *msg = (kim_msg_t *) calloc (1, sizeof (kim_msg_t));
    if (!msg)
        return kim_cli_error (cmd, "out of memory");
    kim_msg_init (msg);
    msg->type = report? KIM_TYPE_ACCESS_REPORT: KIM_TYPE_ERASURE;
    msg->created_at = (uint64_t) zclock_time ();
    zuuid_t *uuid = zuuid_new ();
    snprintf (msg->msg_id, sizeof msg->msg_id, "%s-%s", report? "report": "erase",
              uuid? zuuid_str_canonical (uuid): "x");
    zuuid_destroy (&uuid);
    kim_str_copy (msg->subject, sizeof msg->subject, subject);
    if (case_id)
        kim_str_copy (msg->case_id, sizeof msg->case_id, case_id);

    kim_client_t *client = kim_cli_connect (cmd, &conn, report? 16: 0);
    if (!client) {
        free (msg);
        return KIM_EXIT_USAGE;
    }
    int exit_code = KIM_EXIT_OK;
    uint64_t seq = 0;
    bool dup = false;
    int rc = kim_client_send (client, msg, NULL, 0, &seq, &dup, conn.timeout_ms);
    if (rc) {
        kim_cli_error (cmd, "%s refused: %s", kim_type_name (msg->type), kim_client_error (client));
        exit_code = rc == -KIM_E_TIMEOUT? KIM_EXIT_USAGE: KIM_EXIT_REJECTED;
    }
    else
    if (!report) {
        json_t *out = json_pack ("{s:s, s:I, s:b}", "msg_id", msg->msg_id, "seq",
                                 (json_int_t) seq, "dup", dup);
        if (!out || json_dumpf (out, stdout, JSON_COMPACT) || fputc ('\n', stdout) == EOF)
            exit_code = KIM_EXIT_USAGE;
        json_decref (out);
    }
    else {
        //  The report follows as a delivery. Other deliveries are left
        //  unacknowledged: they return to the mailbox for the inbox reader.
        int64_t deadline = zclock_mono () + conn.timeout_ms;
        bool found = false;
        while (!found && zclock_mono () < deadline) {
            kim_event_t event;
            rc = kim_client_recv (client, &event, (int) (deadline - zclock_mono ()));
            if (rc)
                break;
            if (event.type == KIM_EVENT_DELIVER && event.msg.type == KIM_TYPE_ACCESS_REPORT
            &&  streq (event.msg.subject, subject) && event.seq > seq) {
                //  The report comes in pages, one JSON object a line; the
                //  last says "last":true.
                fwrite (event.payload, 1, event.payload_size, stdout);
                found = memmem (event.payload, event.payload_size, "\"last\":true", 11) != NULL;
                kim_client_ack (client, event.seq);
                if (found)
                    kim_client_flush (client, conn.timeout_ms);
            }
        }
        if (!found)
            exit_code = kim_cli_error (cmd, "the broker receipted the request (seq %" PRIu64
                                       ") but no report arrived within %d ms; it waits in our "
                                       "mailbox (kim inbox)", seq, conn.timeout_ms);
    }
    kim_client_destroy (&client);
    free (msg);
    return exit_code;
}
