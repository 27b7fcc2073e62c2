/*  main.c — kim-broker: flags, configuration, signals; the server does the rest. */
#include <czmq.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>

#include "kim_backup.h"
#include "kim_config.h"
#include "kim_consent.h"
#include "kim_logfmt.h"
#include "kim_metrics.h"
#include "kim_modules.h"
#include "kim_server.h"
#include "kim_recover.h"
#include "kim_service.h"

static void
s_usage (FILE *out)
{
    fprintf (out,
        "Usage: kim-broker [options]\n"
        "\n"
        "The kim broker: routes referral and case-handover messages between agencies,\n"
        "keeps the append-only audit log, and receipts only what is synced to disk.\n"
        "With no options it serves on " KIM_DEFAULT_ENDPOINT " with its data in "
        KIM_DEFAULT_DATA ",\n"
        "making the broker's key pair there on first start.\n"
        "\n"
        "Options:\n"
        "  -c, --config FILE    read settings and the organisation registry from a ZPL file\n"
        "                       (every key is documented in deploy/kim.cfg)\n"
        "  -d, --data DIR       data folder (overrides broker/data)\n"
        "  -b, --bind LIST      comma-separated tcp:// and ipc:// endpoints (overrides broker/bind)\n"
        "      --check          validate the configuration (every section and the policy),\n"
        "                       print a summary and exit\n"
        "      --backup DIR     copy the data folder (a compacted snapshot of the store, and\n"
        "                       the keys) to the new folder DIR while the broker serves, and\n"
        "                       exit; restore by copying DIR back as the data folder of a\n"
        "                       stopped broker (see docs/operations.md)\n"
        "      --recover        make the store of a stopped broker whole (replay its journal\n"
        "                       after a crash or power loss, store/journal) and exit, so\n"
        "                       that kim audit and --backup can read it\n"
        "  -v, --verbose        debug logging\n"
        "  -h, --help           this help\n"
        "      --version        print the version\n"
        "\n"
        "Stops cleanly on SIGINT or SIGTERM. SIGHUP (or `kim admin reload` by an operator)\n"
        "re-reads the registry: keys added, rotated or revoked take effect at once.\n"
        "Examples:\n"
        "  kim-broker --config deploy/kim.cfg\n"
        "  kim-broker --config /etc/kim/kim.cfg --backup /srv/backup/kim-$(date +%%F)\n"
        "  kim-broker --config /etc/kim/kim.cfg --recover\n");
}

static int
s_main (int argc, char *argv [], FILE *log_stream)
{
    static const struct option options [] = {
        { "config", required_argument, NULL, 'c' },
        { "data", required_argument, NULL, 'd' },
        { "bind", required_argument, NULL, 'b' },
        { "check", no_argument, NULL, 'k' },
        { "backup", required_argument, NULL, 'B' },
        { "recover", no_argument, NULL, 'R' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 }
    };
    const char *config_path = NULL, *data = NULL, *bind = NULL, *backup = NULL;
    bool check = false, verbose = false, recover = false;
    int opt;
    while ((opt = getopt_long (argc, argv, "c:d:b:vh", options, NULL)) != -1) {
        switch (opt) {
            case 'c': config_path = optarg; break;
            case 'd': data = optarg; break;
            case 'b': bind = optarg; break;
            case 'k': check = true; break;
            case 'B': backup = optarg; break;
            case 'R': recover = true; break;
            case 'v': verbose = true; break;
            case 'h': s_usage (stdout); return 0;
            case 'V': printf ("kim-broker 0.1.0 (protocol %d to %d)\n", KIM_PROTOCOL_VERSION, KIM_PROTOCOL_MAX); return 0;
            default: s_usage (stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf (stderr, "kim-broker: unexpected argument '%s'\n", argv [optind]);
        s_usage (stderr);
        return 2;
    }
    //  SIGHUP reloads the registry through the server's signalfd; block it
    //  before any thread exists so that no thread takes it instead.
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGHUP);
    pthread_sigmask (SIG_BLOCK, &signals, NULL);
    zsys_init ();
    zsys_set_logident ("kim-broker");
    zsys_set_logstream (log_stream? log_stream: stderr);

    char error [512] = "";
    int rc = 0;
    kim_config_t *config = config_path
        ? kim_config_load (config_path, error, sizeof error, &rc)
        : kim_config_new ();
    if (!config) {
        //  Named by its file (the key path alone does not say which file the
        //  service read); a start's refusal is a log event like any other
        const char *why = error [0]? error: kim_strerror (rc);
        bool named = !config_path || strncmp (why, config_path, strlen (config_path)) == 0;
        const char *file = named? "": config_path, *colon = named? "": ": ";
        if (check)
            fprintf (stderr, "kim-broker: %s%s%s\n", file, colon, why);
        else
            zsys_error ("cannot start: %s%s%s", file, colon, why);
        return 2;
    }
    if (data) {
        kim_str_copy (config->data, sizeof config->data, data);
        config->overridden |= KIM_CONFIG_DATA;
    }
    if (bind) {
        //  Reuse the config parser's validation for the flag's list.
        char text [2048];
        snprintf (text, sizeof text, "broker\n    bind = \"%s\"\n", bind);
        kim_config_t *parsed = kim_config_parse (text, error, sizeof error, &rc);
        if (!parsed) {
            fprintf (stderr, "kim-broker: --bind: %s\n", error);
            kim_config_destroy (&config);
            return 2;
        }
        config->endpoint_count = parsed->endpoint_count;
        memcpy (config->endpoints, parsed->endpoints, sizeof config->endpoints);
        config->overridden |= KIM_CONFIG_BIND;
        kim_config_destroy (&parsed);
    }
    if (verbose) {
        config->verbose = true;
        config->overridden |= KIM_CONFIG_VERBOSE;
    }
    if (backup) {
        kim_backup_result_t result;
        rc = kim_backup_run (config->data, backup, &result, error, sizeof error);
        if (rc == 0)
            printf ("backup of %s in %s: log up to seq %" PRIu64 " (live head %" PRIu64
                    " when it began), store %" PRIu64 " bytes (live %" PRIu64 "), "
                    "%zu other files\n", config->data, backup, result.head, result.head_before,
                    result.store_bytes, result.live_bytes, result.files);
        else
            fprintf (stderr, "kim-broker: %s\n", error);
        kim_config_destroy (&config);
        return rc == 0? 0: 1;
    }
    if (recover) {
        kim_recover_result_t result;
        rc = kim_recover_run (config, &result, error, sizeof error);
        if (rc == 0)
            printf ("store of %s: %s; closed cleanly, log up to seq %" PRIu64 "\n",
                    config->data, result.replayed? "journal replayed"
                                                 : "whole already, nothing to replay",
                    result.head);
        else
            fprintf (stderr, "kim-broker: %s\n", error);
        kim_config_destroy (&config);
        return rc == 0? 0: 1;
    }
    //  A configuration error (the policy file and the modules' sections
    //  included) is one for --check and at start alike: exit status 2.
    if (kim_modules_check (config, error, sizeof error)
    ||  kim_metrics_check (config, error, sizeof error)) {
        if (check)
            fprintf (stderr, "kim-broker: %s\n", error);
        else
            zsys_error ("cannot start: %s", error);
        kim_config_destroy (&config);
        return 2;
    }
    if (check) {
        char policy_path [PATH_MAX];
        kim_policy_t *policy = kim_consent_policy_open (config, policy_path, sizeof policy_path,
                                                        error, sizeof error);
        if (!policy) {
            fprintf (stderr, "kim-broker: %s\n", error);
            kim_config_destroy (&config);
            return 2;
        }
        printf ("configuration OK: broker %s, %zu endpoint(s), data %s, %zu organisation(s), "
                "%zu peer(s), policy %s (%zu rules)\n", config->name, config->endpoint_count,
                config->data, config->org_count - config->peer_count, config->peer_count,
                policy_path [0]? policy_path: "built-in default deny",
                kim_policy_rule_count (policy));
        kim_policy_destroy (&policy);
        for (size_t i = 0; i < config->org_count; i++)
            if (config->orgs [i].role != KIM_ROLE_PEER)
                printf ("  %-28s %-9s %-8s %s%s\n", config->orgs [i].id,
                        kim_role_name (config->orgs [i].role),
                        config->orgs [i].public_body? "public": "private", config->orgs [i].name,
                        config->orgs [i].revoked? " (revoked)": "");
        for (size_t i = 0; i < config->peer_count; i++) {
            const kim_peer_config_t *peer = &config->peers [i];
            printf ("  %-28s %-9s %s", peer->name, "peer", peer->endpoints [0]);
            for (size_t e = 1; e < peer->endpoint_count; e++)
                printf (", %s", peer->endpoints [e]);
            printf ("\n");
        }
        kim_config_destroy (&config);
        return 0;
    }
    kim_server_t *server = kim_server_new (&config, error, sizeof error);
    kim_config_destroy (&config);
    if (!server) {
        zsys_error ("cannot start: %s", error);
        return 1;
    }
    kim_metrics_t *metrics = NULL;
    if (kim_metrics_new (server, &metrics, error, sizeof error)) {
        zsys_error ("cannot start: %s", error);
        kim_server_destroy (&server);
        return 1;
    }
    if (kim_service_attach (server))
        zsys_warning ("cannot arm the service notifications");
    rc = kim_server_run (server);
    kim_service_stopping (rc == 0? "stopping": "store failed");
    kim_metrics_destroy (&metrics);
    kim_server_destroy (&server);
    return rc == 0? 0: 1;
}

int
main (int argc, char *argv [])
{
    //  Log lines become logfmt events on stderr (journald under systemd).
    //  zsys logs until it shuts down, so the stream closes after that.
    FILE *log_stream = kim_logfmt_stream ("kim-broker");
    int rc = s_main (argc, argv, log_stream);
    zsys_shutdown ();
    if (log_stream)
        fclose (log_stream);
    return rc;
}
