/*  test_web_tls.c — kim-agent's web page over TLS: the cookies are Secure.

    An agent with TLS (a self-signed certificate made with openssl) and the
    page on; curl fetches the login page, signs in and reads the cookies.
    Every cookie the page sets carries Secure, so a browser never sends the
    session over plain HTTP. Skipped (77) without openssl or curl.
*/
#include <czmq.h>
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
        printf ("web.tls: skipped (needs openssl and curl)\n");
        return 77;
    }
    const char *orgs [] = { "mbe.b", NULL };
    kim_testbroker_t *broker = kim_testbroker_new (orgs, NULL);
    KIM_CHECK (broker);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    const char *dir = kim_testbroker_dir (broker);
    char command [2048], cert [200], key [200], extra [1024];
    snprintf (cert, sizeof cert, "%s/tls.crt", dir);
    snprintf (key, sizeof key, "%s/tls.key", dir);
    snprintf (command, sizeof command, "openssl req -x509 -newkey ec -pkeyopt "
              "ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 "
              "-addext subjectAltName=IP:127.0.0.1 -keyout '%s' -out '%s' 2>/dev/null",
              key, cert);
    KIM_CHECK (s_shell (command) == 0);
    KIM_CHECK (chmod (key, 0600) == 0);
    //  The first lines go under the http section, the last one written
    snprintf (extra, sizeof extra, "    tls_cert = \"%s\"\n    tls_key = \"%s\"\n"
              "web\n    enabled = 1\n    users = \"%s/users\"\n", cert, key, dir);
    kim_agenttest_t b;
    KIM_CHECK (kim_agenttest_init (&b, broker, "mbe.b", extra) == 0);
    snprintf (command, sizeof command, "echo 'correct horse battery' | '%s' --config '%s' "
              "--add-user anna --role staff >/dev/null",
              getenv ("KIM_AGENT")? getenv ("KIM_AGENT"): KIM_AGENT_PATH, b.config);
    KIM_CHECK (s_shell (command) == 0);
    b.no_wait = true;                   //  the harness speaks plain HTTP
    KIM_CHECK (kim_agenttest_start (&b, false) == 0);
    int port = 0;
    for (int attempt = 0; attempt < 600 && !port; attempt++) {
        FILE *file = fopen (b.port_file, "r");
        if (file) {
            if (fscanf (file, "%d", &port) != 1)
                port = 0;
            fclose (file);
        }
        if (!port)
            zclock_sleep (50);
    }
    KIM_CHECK (port);
    //  The login page, then a login with its token
    char base [256];
    snprintf (base, sizeof base, "curl -s --max-time 10 --cacert '%s' -b '%s/jar' -c '%s/jar'",
              cert, dir, dir);
    int status = -1;
    for (int attempt = 0; attempt < 100 && status != 0; attempt++) {
        snprintf (command, sizeof command, "%s -D '%s/h1' -o '%s/b1' https://127.0.0.1:%d/ui/login",
                  base, dir, dir, port);
        status = s_shell (command);
        if (status)
            zclock_sleep (50);
    }
    KIM_CHECK (status == 0);
    snprintf (command, sizeof command, "grep -q '^Set-Cookie: kim_login=[0-9a-f]*; Path=/ui; "
              "HttpOnly; SameSite=Strict; Secure' '%s/h1'", dir);
    KIM_CHECK (s_shell (command) == 0);
    snprintf (command, sizeof command, "token=$(grep -o 'name=\"csrf\" value=\"[0-9a-f]*' '%s/b1' "
              "| cut -d'\"' -f4) && %s -D '%s/h2' -o /dev/null -H 'Origin: https://127.0.0.1:%d' "
              "--data \"csrf=$token&user=anna&password=correct+horse+battery\" "
              "https://127.0.0.1:%d/ui/login", dir, base, dir, port, port);
    KIM_CHECK (s_shell (command) == 0);
    snprintf (command, sizeof command, "grep -q '^HTTP/1.1 303' '%s/h2' && grep -q "
              "'^Set-Cookie: kim_session=[0-9a-f]\\{64\\}; Path=/ui; HttpOnly; SameSite=Strict; "
              "Secure' '%s/h2'", dir, dir);
    KIM_CHECK (s_shell (command) == 0);
    //  And the session works over TLS
    snprintf (command, sizeof command, "%s -o /dev/null -w '%%{http_code}' "
              "https://127.0.0.1:%d/ui/inbox | grep -q '^200$'", base, port);
    KIM_CHECK (s_shell (command) == 0);

    kim_agenttest_cleanup (&b);
    kim_testbroker_destroy (&broker);
    printf ("web.tls: OK\n");
    return 0;
}
