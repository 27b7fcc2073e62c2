/*  test_agent_tls.c — kim-agent's API over TLS (libmicrohttpd with GnuTLS).

    A self-signed certificate made with openssl; curl checks it against that
    certificate and needs the token as ever; a plain-HTTP request to the TLS
    port gets no answer. A TLS key file that others may read is refused by
    --check. Skipped (77) when openssl or curl is not installed.
*/
#include <czmq.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "kim_agenttest.h"

static int
s_shell (const char *command)
{
    int status = system (command);
    return WIFEXITED (status)? WEXITSTATUS (status): -1;
}

int
main (void)
{
    if (s_shell ("command -v openssl >/dev/null && command -v curl >/dev/null") != 0) {
        printf ("agent.tls: skipped (needs openssl and curl)\n");
        return 77;
    }
    const char *orgs [] = { "kim.a", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    const char *dir = kim_testbroker_dir (broker);
    char command [1024], cert [200], key [200], extra [512];
    snprintf (cert, sizeof cert, "%s/tls.crt", dir);
    snprintf (key, sizeof key, "%s/tls.key", dir);
    snprintf (command, sizeof command, "openssl req -x509 -newkey ec -pkeyopt "
              "ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 "
              "-addext subjectAltName=IP:127.0.0.1 -keyout '%s' -out '%s' 2>/dev/null",
              key, cert);
    KIM_CHECK (s_shell (command) == 0);
    KIM_CHECK (chmod (key, 0600) == 0);
    snprintf (extra, sizeof extra, "    tls_cert = \"%s\"\n    tls_key = \"%s\"\n", cert, key);
    kim_agenttest_t a;
    //  The extra lines go under the http section, the last one written
    KIM_CHECK (kim_agenttest_init (&a, broker, "kim.a", extra) == 0);

    //  The harness talks plain HTTP, so start without waiting for it
    char out [200];
    snprintf (out, sizeof out, "%s/curl.out", dir);
    //  The harness speaks plain HTTP: it starts the agent without waiting,
    //  and the test waits for the port file, then uses curl
    a.no_wait = true;
    KIM_CHECK (kim_agenttest_start (&a, false) == 0);
    int port = 0;
    for (int attempt = 0; attempt < 600 && !port; attempt++) {
        FILE *file = fopen (a.port_file, "r");
        if (file) {
            if (fscanf (file, "%d", &port) != 1)
                port = 0;
            fclose (file);
        }
        if (!port)
            zclock_sleep (50);
    }
    KIM_CHECK (port);
    int status = -1;
    for (int attempt = 0; attempt < 100 && status != 0; attempt++) {
        snprintf (command, sizeof command, "curl -s --max-time 5 --cacert '%s' -o '%s' -w "
                  "'%%{http_code}' -H 'Authorization: Bearer %s' "
                  "https://127.0.0.1:%d/v1/status > '%s.code'", cert, out,
                  KIM_AGENTTEST_TOKEN, port, out);
        status = s_shell (command);
        if (status)
            zclock_sleep (50);
    }
    KIM_CHECK (status == 0);
    snprintf (command, sizeof command, "grep -q '^200$' '%s.code' && grep -q '\"org\":\"kim.a\"' "
              "'%s'", out, out);
    KIM_CHECK (s_shell (command) == 0);
    //  The token is still needed
    snprintf (command, sizeof command, "curl -s --max-time 5 --cacert '%s' -o /dev/null -w "
              "'%%{http_code}' https://127.0.0.1:%d/v1/status | grep -q '^401$'", cert, port);
    KIM_CHECK (s_shell (command) == 0);
    //  Plain HTTP to the TLS port gets no HTTP answer
    KIM_CHECK (kim_agenttest_http (port, "GET", "/v1/status", KIM_AGENTTEST_TOKEN, NULL, NULL)
               != 200);

    //  A TLS key others may read
    KIM_CHECK (chmod (key, 0644) == 0);
    snprintf (command, sizeof command, "'%s' --check --config '%s' 2>&1 | grep -q 'http/tls_key'",
              getenv ("KIM_AGENT")? getenv ("KIM_AGENT"): KIM_AGENT_PATH, a.config);
    KIM_CHECK (s_shell (command) == 0);

    kim_agenttest_cleanup (&a);
    kim_testbroker_destroy (&broker);
    printf ("agent.tls: OK\n");
    return 0;
}
