/*  main.c — kim-agent: the daemon that connects an office's own systems to kim.

    Reads the config, opens the store, starts the HTTP API on its threads
    and runs the broker link on this one until SIGTERM or SIGINT; then stops
    the HTTP side first (no new messages), lets the link say BYE, and closes
    the store. Everything the agent promised is on disk at every moment, so
    a kill -9 loses nothing either: it only costs a resend.
*/
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <curl/curl.h>
#include <czmq.h>
#include <sodium.h>

#include "kim_agent.h"
#include "kim_logfmt.h"
#include "web/kim_agent_web.h"

static const char s_usage [] =
    "Usage: kim-agent --config FILE [--check] [--verbose]\n"
    "       kim-agent --config FILE --add-user NAME --role staff|readonly < password\n"
    "       kim-agent --routes | --help | --version\n"
    "\n"
    "Connects an office's own systems to a kim broker: keeps the office's key, a\n"
    "durable outbox and inbox, and a view of the office's referrals, and serves\n"
    "them over a local HTTP/JSON API (agents/agent/openapi.json).\n"
    "\n"
    "  --config FILE   the agent's configuration (ZPL; see deploy/agent.cfg)\n"
    "  --check         validate the config and the files it names, then exit\n"
    "                  (0: valid, 2: not)\n"
    "  --verbose       debug logging (also agent/verbose = 1)\n"
    "  --add-user NAME add or replace a staff account of the web page (web/users);\n"
    "                  the password (10..256 characters) is read from stdin\n"
    "  --role ROLE     with --add-user: staff (may answer and send) or readonly\n"
    "  --routes        print the HTTP routes the agent serves and exit\n"
    "  --version       print the version and exit\n"
    "  --help          this text\n"
    "\n"
    "Stops cleanly on SIGTERM or SIGINT; ignores SIGHUP (the configuration is read at\n"
    "start: restart the agent to apply a change).\n"
    "\n"
    "Example:\n"
    "  kim-agent --config /etc/kim/agent.cfg\n"
    "  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:7480/v1/inbox\n";

static int
s_write_port_file (const char *path, uint16_t port)
{
    char temp [PATH_MAX + 8];
    snprintf (temp, sizeof temp, "%s.tmp", path);
    FILE *file = fopen (temp, "w");
    if (!file)
        return -1;
    fprintf (file, "%u\n", (unsigned) port);
    if (fflush (file) != 0 || fsync (fileno (file)) != 0) {
        fclose (file);
        return -1;
    }
    fclose (file);
    return rename (temp, path);
}

static int
s_main (int argc, char *argv [], FILE *log_stream)
{
    const char *config_path = NULL;
    const char *add_user = NULL, *role = NULL;
    bool check = false, verbose = false;
    for (int i = 1; i < argc; i++) {
        if (streq (argv [i], "--help") || streq (argv [i], "-h")) {
            fputs (s_usage, stdout);
            return 0;
        }
        else
        if (streq (argv [i], "--version")) {
            printf ("kim-agent %s\n", KIM_AGENT_VERSION);
            return 0;
        }
        else
        if (streq (argv [i], "--routes")) {
            kim_agent_http_routes (stdout);
            return 0;
        }
        else
        if (streq (argv [i], "--add-user") && i + 1 < argc)
            add_user = argv [++i];
        else
        if (streq (argv [i], "--role") && i + 1 < argc)
            role = argv [++i];
        else
        if (streq (argv [i], "--check"))
            check = true;
        else
        if (streq (argv [i], "--verbose"))
            verbose = true;
        else
        if (streq (argv [i], "--config") && i + 1 < argc)
            config_path = argv [++i];
        else
        if (strncmp (argv [i], "--config=", 9) == 0)
            config_path = argv [i] + 9;
        else {
            fprintf (stderr, "kim-agent: unknown argument '%s' (see --help)\n", argv [i]);
            return 2;
        }
    }
    if (!config_path) {
        fprintf (stderr, "kim-agent: --config FILE is required (see --help)\n");
        return 2;
    }
    if (role && !add_user) {
        fprintf (stderr, "kim-agent: --role goes with --add-user NAME (see --help)\n");
        return 2;
    }
    signal (SIGPIPE, SIG_IGN);
    //  The configuration is read at start only; a stray SIGHUP (a reload
    //  meant for another service, a closed terminal) must not end the agent.
    signal (SIGHUP, SIG_IGN);
    zsys_init ();
    zsys_set_logident ("kim-agent");
    zsys_set_logstream (log_stream? log_stream: stderr);

    static kim_agent_config_t config;
    char error [512];
    if (kim_agent_config_load (&config, config_path, error, sizeof error) != 0) {
        fprintf (stderr, "kim-agent: %s: %s\n", config_path, error);
        kim_agent_config_clear (&config);
        return 2;
    }
    if (verbose)
        config.verbose = true;
    if (add_user) {
        //  The password from stdin: one line, never an argument (ps shows
        //  those). Room for 256 characters of 4 UTF-8 bytes each and more,
        //  so that a longer line is refused rather than cut.
        char password [4 * KIM_AGENT_PASSWORD_MAX + 8] = "";
        int rc = 0;
        if (!fgets (password, sizeof password, stdin))
            password [0] = 0;
        bool whole = strchr (password, '\n') || feof (stdin);
        password [strcspn (password, "\r\n")] = 0;
        if (!whole) {
            fprintf (stderr, "kim-agent: --add-user: the password must have %d to %d "
                     "characters\n", KIM_AGENT_PASSWORD_MIN, KIM_AGENT_PASSWORD_MAX);
            rc = 2;
        }
        else
        if (!config.web_users [0]) {
            fprintf (stderr, "kim-agent: web/users is not set in %s\n", config_path);
            rc = 2;
        }
        else
        if (kim_agent_users_add (config.web_users, add_user, role? role: "", password,
                                 error, sizeof error) != 0) {
            fprintf (stderr, "kim-agent: --add-user: %s\n", error);
            rc = 2;
        }
        else
            printf ("kim-agent: account %s (%s) written to %s\n", add_user, role,
                    config.web_users);
        sodium_memzero (password, sizeof password);
        kim_agent_config_clear (&config);
        return rc;
    }
    if (check) {
        printf ("kim-agent: %s is valid: organisation %s, broker %s, HTTP on %s port %u%s, "
                "%zu client token(s)\n", config_path, config.org, config.endpoint, config.bind,
                (unsigned) config.port, config.tls_cert [0]? " (TLS)": "", config.token_count);
        kim_agent_config_clear (&config);
        return 0;
    }

    kim_agent_store_t *store = kim_agent_store_new (config.data, config.map_size, config.org,
                                                    error, sizeof error);
    if (!store) {
        fprintf (stderr, "kim-agent: %s\n", error);
        kim_agent_config_clear (&config);
        return 1;
    }
    curl_global_init (CURL_GLOBAL_DEFAULT);
    kim_agent_webhook_t *webhook = NULL;
    if (config.webhook_url [0]) {
        kim_agent_store_set_push (store, true);
        webhook = kim_agent_webhook_new (&config, store);
        if (!webhook) {
            fprintf (stderr, "kim-agent: cannot start the webhook thread\n");
            kim_agent_store_destroy (&store);
            kim_agent_config_clear (&config);
            return 1;
        }
    }
    int pipe_fds [2];
    if (pipe2 (pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        fprintf (stderr, "kim-agent: cannot make a pipe\n");
        kim_agent_webhook_destroy (&webhook);
        kim_agent_store_destroy (&store);
        return 1;
    }
    kim_agent_shared_t shared;
    atomic_init (&shared.connected, false);
    atomic_init (&shared.reconnects, 0);
    shared.wake_fd = pipe_fds [1];

    kim_agent_folder_t *folder = NULL;
    if (config.folder_outbox [0] || config.folder_inbox [0]) {
        kim_agent_store_set_drop (store, config.folder_inbox [0] != 0);
        folder = kim_agent_folder_new (&config, store, &shared, error, sizeof error);
    }
    kim_agent_http_t *http = folder || !(config.folder_outbox [0] || config.folder_inbox [0])
                           ? kim_agent_http_new (&config, store, &shared, error, sizeof error)
                           : NULL;
    if (!http) {
        fprintf (stderr, "kim-agent: %s\n", error);
        kim_agent_folder_destroy (&folder);
        close (pipe_fds [0]);
        close (pipe_fds [1]);
        kim_agent_webhook_destroy (&webhook);
        kim_agent_store_destroy (&store);
        kim_agent_config_clear (&config);
        return 1;
    }
    uint16_t port = kim_agent_http_port (http);
    if (config.port_file [0] && s_write_port_file (config.port_file, port) != 0)
        zsys_warning ("kim-agent %s: cannot write http/port_file %s", config.org,
                      config.port_file);
    zsys_info ("kim-agent %s: HTTP API on %s port %u%s; broker %s%s", config.org, config.bind,
               (unsigned) port, config.tls_cert [0]? " (TLS)": "", config.endpoint,
               webhook? "; webhook on": "");
    if (folder)
        zsys_info ("kim-agent %s: folder bridge: outbox %s, inbox %s", config.org,
                   config.folder_outbox [0]? config.folder_outbox: "(none)",
                   config.folder_inbox [0]? config.folder_inbox: "(none)");

    int rc = kim_agent_link_run (&config, store, &shared, pipe_fds [0]);

    kim_agent_http_destroy (&http);
    kim_agent_folder_destroy (&folder);
    kim_agent_webhook_destroy (&webhook);
    close (pipe_fds [0]);
    close (pipe_fds [1]);
    kim_agent_store_destroy (&store);
    kim_agent_config_clear (&config);
    curl_global_cleanup ();
    zsys_info ("kim-agent %s: stopped", config.org);
    return rc;
}

int
main (int argc, char *argv [])
{
    //  Log lines become logfmt events on stderr (journald under systemd).
    //  zsys logs until it shuts down, so the stream closes after that.
    FILE *log_stream = kim_logfmt_stream ("kim-agent");
    int rc = s_main (argc, argv, log_stream);
    zsys_shutdown ();
    if (log_stream)
        fclose (log_stream);
    return rc;
}
