/*  kim_agenttest.c — kim-agent processes and an HTTP client for tests. */
#include <czmq.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "kim_agenttest.h"
#include "kim_testhttp.h"

static int
s_write (const char *path, const char *text, mode_t mode)
{
    FILE *file = fopen (path, "w");
    if (!file)
        return -1;
    fputs (text, file);
    fclose (file);
    return chmod (path, mode);
}

int
kim_agenttest_init (kim_agenttest_t *self, kim_testbroker_t *broker, const char *org,
                    const char *extra)
{
    memset (self, 0, sizeof *self);
    snprintf (self->org, sizeof self->org, "%s", org);
    snprintf (self->dir, sizeof self->dir, "%s/agent-%s", kim_testbroker_dir (broker), org);
    if (mkdir (self->dir, 0700) != 0)
        return -1;
    snprintf (self->config, sizeof self->config, "%s/agent.cfg", self->dir);
    snprintf (self->port_file, sizeof self->port_file, "%s/port", self->dir);
    snprintf (self->log, sizeof self->log, "%s/agent.log", self->dir);

    kim_client_config_t client = kim_testbroker_client_config (broker, org, 0, false);
    char cert_path [200], tokens_path [200], text [2048];
    snprintf (cert_path, sizeof cert_path, "%s/org.cert_secret", self->dir);
    uint8_t public_key [32], secret_key [32];
    zmq_z85_decode (public_key, client.public_key);
    zmq_z85_decode (secret_key, client.secret_key);
    zcert_t *cert = zcert_new_from (public_key, secret_key);
    if (!cert || zcert_save_secret (cert, cert_path) != 0 || chmod (cert_path, 0600) != 0) {
        zcert_destroy (&cert);
        return -1;
    }
    zcert_destroy (&cert);
    //  An org made as "id:role+sign" signs what it sends
    char sign_line [256] = "";
    const char *sign_secret = kim_testbroker_sign_secret (broker, org);
    if (sign_secret) {
        char sign_path [200], sign_text [256];
        snprintf (sign_path, sizeof sign_path, "%s/org.sign_secret", self->dir);
        snprintf (sign_text, sizeof sign_text, "sign\n    public-key = \"%s\"\n"
                  "    secret-key = \"%s\"\n", kim_testbroker_sign_public (broker, org),
                  sign_secret);
        if (s_write (sign_path, sign_text, 0600))
            return -1;
        snprintf (sign_line, sizeof sign_line, "    sign_key = \"%s\"\n", sign_path);
    }
    snprintf (tokens_path, sizeof tokens_path, "%s/tokens", self->dir);
    if (s_write (tokens_path, "# test tokens\ncase_system " KIM_AGENTTEST_TOKEN "\n", 0600))
        return -1;
    snprintf (text, sizeof text,
              "agent\n    org = %s\n    data = \"%s/store\"\n    cert = \"%s\"\n%s"
              "broker\n    endpoint = \"%s\"\n    key = \"%s\"\n    timeout_ms = 2000\n"
              "http\n    bind = 127.0.0.1\n    port = 0\n    port_file = \"%s\"\n"
              "    tokens = \"%s\"\n    max_body = 65536\n%s",
              org, self->dir, cert_path, sign_line, client.endpoint, client.broker_key, self->port_file,
              tokens_path, extra? extra: "");
    return s_write (self->config, text, 0600);
}

int
kim_agenttest_start (kim_agenttest_t *self, bool connected)
{
    unlink (self->port_file);
    const char *env = self->env;
    self->env = NULL;
    pid_t pid = fork ();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl (PR_SET_PDEATHSIG, SIGKILL);
        FILE *log = fopen (self->log, "a");
        if (log)
            dup2 (fileno (log), STDERR_FILENO);
        if (env)
            putenv ((char *) env);
        if (self->preload)
            kim_testbroker_preload_env (self->preload);
        const char *path = getenv ("KIM_AGENT");
        execl (path? path: KIM_AGENT_PATH, "kim-agent", "--config", self->config, "--verbose",
               (char *) NULL);
        _exit (127);
    }
    self->pid = pid;
    self->port = 0;
    if (self->no_wait)
        return 0;
    //  Generous for sanitizer builds on a busy machine
    for (int attempt = 0; attempt < 600; attempt++) {
        int status;
        if (waitpid (pid, &status, WNOHANG) == pid) {
            fprintf (stderr, "agenttest: kim-agent exited at start (see %s)\n", self->log);
            self->pid = 0;
            return -1;
        }
        if (!self->port) {
            FILE *file = fopen (self->port_file, "r");
            if (file) {
                if (fscanf (file, "%d", &self->port) != 1)
                    self->port = 0;
                fclose (file);
            }
        }
        if (self->port) {
            json_t *status_json = NULL;
            if (kim_agenttest_call (self, "GET", "/v1/status", NULL, &status_json) == 200
            &&  (!connected || json_is_true (json_object_get (status_json, "connected")))) {
                json_decref (status_json);
                return 0;
            }
            json_decref (status_json);
        }
        zclock_sleep (50);
    }
    fprintf (stderr, "agenttest: kim-agent did not become ready (see %s)\n", self->log);
    return -1;
}

int
kim_agenttest_wait (kim_agenttest_t *self)
{
    int status = 0;
    if (self->pid)
        waitpid (self->pid, &status, 0);
    self->pid = 0;
    return status;
}

int
kim_agenttest_stop (kim_agenttest_t *self, int signal)
{
    if (!self->pid)
        return -1;
    kill (self->pid, signal);
    int status = 0;
    waitpid (self->pid, &status, 0);
    self->pid = 0;
    return status;
}

void
kim_agenttest_cleanup (kim_agenttest_t *self)
{
    if (self->pid)
        kim_agenttest_stop (self, SIGKILL);
}

//  Reads until EOF (the request says Connection: close) or 10 s pass.
static int
s_exchange (int port, const char *request, size_t size, char **body)
{
    if (body)
        *body = NULL;
    char *answer;
    int status = kim_testhttp_exchange (port, request, size, 10000, &answer);
    if (!answer)
        return -1;
    char *start = strstr (answer, "\r\n\r\n");
    if (body && start)
        *body = strdup (start + 4);
    free (answer);
    return status;
}

int
kim_agenttest_raw (int port, const char *request, size_t size, char **body)
{
    return s_exchange (port, request, size, body);
}

int
kim_agenttest_http (int port, const char *method, const char *path, const char *token,
                    const char *content, char **body)
{
    size_t length = content? strlen (content): 0;
    size_t size = length + 512 + strlen (path);
    char *request = (char *) malloc (size);
    if (!request)
        return -1;
    int head = snprintf (request, size, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Connection: close\r\n%s%s%s", method, path,
                         token? "Authorization: Bearer ": "", token? token: "", token? "\r\n": "");
    if (content)
        head += snprintf (request + head, size - (size_t) head,
                          "Content-Type: application/json\r\nContent-Length: %zu\r\n", length);
    head += snprintf (request + head, size - (size_t) head, "\r\n");
    if (content)
        memcpy (request + head, content, length);
    int status = s_exchange (port, request, (size_t) head + length, body);
    free (request);
    return status;
}

int
kim_agenttest_call (kim_agenttest_t *self, const char *method, const char *path,
                    const char *content, json_t **json)
{
    char *body = NULL;
    int status = kim_agenttest_http (self->port, method, path, KIM_AGENTTEST_TOKEN, content,
                                     &body);
    if (json)
        *json = body? json_loads (body, 0, NULL): NULL;
    free (body);
    return status;
}

json_t *
kim_agenttest_wait_for (kim_agenttest_t *agent, const char *path, const char *key, const char *want)
{
    for (int attempt = 0; attempt < 600; attempt++) {
        json_t *json = NULL;
        if (kim_agenttest_call (agent, "GET", path, NULL, &json) == 200) {
            const char *value = json_string_value (json_object_get (json, key));
            if (value && streq (value, want))
                return json;
        }
        json_decref (json);
        zclock_sleep (50);
    }
    fprintf (stderr, "timed out waiting for %s of %s to be %s\n", key, path, want);
    return NULL;
}
