/*  kim_cmd_admin.c — `kim admin reload`: an operator makes the broker re-read
    its registry, so that keys added, rotated or revoked take effect without
    a restart (the same as SIGHUP on the broker's host, but from anywhere an
    operator's key may connect).
*/
#include <czmq.h>
#include <jansson.h>

#include "kim_cli.h"

const char kim_cmd_admin_usage [] =
    "Usage: kim admin reload [connection options]\n"
    "\n"
    "Asks the broker to re-read its registry from its configuration file. Keys\n"
    "added are admitted at once; sessions of a revoked or rotated key end at once.\n"
    "An invalid file changes nothing and the broker says why. Needs the\n"
    "certificate of an organisation with the role operator.\n"
    "Prints {\"org_count\":N,\"changes\":\"...\"}.\n"
    "\n"
    "Example:\n"
    "  kim admin reload --cert ./keys/ops.steinfurt.cert_secret\n";

int
kim_cmd_admin (int argc, char *argv [])
{
    const char *cmd = "admin";
    if (argc < 2 || (strcmp (argv [1], "reload") && strcmp (argv [1], "--help")
                     && strcmp (argv [1], "-h")))
        return kim_cli_usage_error (cmd, "expected a subcommand: reload");
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    int parsed = kim_cli_conn_only (cmd, &conn, argc - 1, argv + 1, NULL);
    if (parsed >= 0)
        return parsed;
    if (strcmp (argv [1], "reload")) {
        kim_cli_help (stdout, cmd);
        return KIM_EXIT_OK;
    }
    kim_client_t *client = kim_cli_connect (cmd, &conn, 0);
    if (!client)
        return KIM_EXIT_USAGE;
    kim_cmd_t *request = (kim_cmd_t *) malloc (2 * sizeof (kim_cmd_t));
    if (!request) {
        kim_client_destroy (&client);
        return kim_cli_error (cmd, "out of memory");
    }
    kim_cmd_t *reply = request + 1;
    kim_cmd_init (request, KIM_CMD_RELOAD);
    int exit_code = KIM_EXIT_OK;
    int rc = kim_client_request (client, request, reply, conn.timeout_ms);
    if (rc == 0 && reply->id != KIM_CMD_RELOADED)
        rc = -KIM_E_INTERNAL;
    if (rc) {
        kim_cli_error (cmd, "reload refused: %s", kim_client_error (client));
        exit_code = KIM_EXIT_REJECTED;
    }
    else {
        json_t *out = json_pack ("{s:I, s:s}", "org_count", (json_int_t) reply->count,
                                 "changes", reply->text);
        if (!out || json_dumpf (out, stdout, JSON_COMPACT) || fputc ('\n', stdout) == EOF
        ||  fflush (stdout))
            exit_code = KIM_EXIT_USAGE;
        json_decref (out);
    }
    free (request);
    kim_client_destroy (&client);
    return exit_code;
}
