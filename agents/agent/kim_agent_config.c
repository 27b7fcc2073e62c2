/*  kim_agent_config.c — reads and validates kim-agent's ZPL configuration.

    Every key has its path in the error text, unknown keys are errors (a
    misspelt key never falls back to a default silently), and the files the
    config names are read here too: the organisation's key pair, the
    broker's key, the token file. So `kim-agent --check` finds every mistake
    a start would find, before the agent runs.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <microhttpd.h>
#include <sodium.h>

#include "kim/kim_policy.h"
#include "kim_agent.h"
#include "kim_file.h"

#define S_CONFIG_MAX        (1 << 20)
#define S_TOKENS_FILE_MAX   65536
#define S_TOKEN_MIN         32
#define S_TOKEN_MAX         256

static int
s_error (char *error, size_t error_size, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

static int
s_error (char *error, size_t error_size, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    vsnprintf (error, error_size, format, args);
    va_end (args);
    return -KIM_E_CONFIG;
}

//  The keys each section may hold.
static const char *s_known [] = {
    "agent/org", "agent/data", "agent/cert", "agent/sign_key", "agent/verbose",
    "broker/endpoint", "broker/key", "broker/key_file", "broker/timeout_ms", "broker/plaintext",
    "http/bind", "http/port", "http/port_file", "http/tokens", "http/max_body", "http/tls_cert",
    "http/tls_key",
    "store/map_size_mb",
    "webhook/url", "webhook/secret_file", "webhook/max_attempts", "webhook/backoff_ms",
    "webhook/backoff_max_ms", "webhook/timeout_ms",
    "folder/outbox", "folder/inbox", "folder/poll_ms",
    "web/enabled", "web/users", "web/lang", "web/max_failures", "web/lockout_s", "web/policy",
    NULL
};

//  A ZeroMQ endpoint the agent can connect to: tcp://HOST:PORT or
//  ipc://PATH. ZeroMQ itself refuses others only when it connects, and the
//  agent would retry for ever.
static bool
s_endpoint_valid (const char *endpoint)
{
    if (strncmp (endpoint, "ipc://", 6) == 0)
        return endpoint [6] != 0;
    if (strncmp (endpoint, "tcp://", 6) != 0)
        return false;
    const char *colon = strrchr (endpoint + 6, ':');
    if (!colon || colon == endpoint + 6 || !colon [1] || strlen (colon + 1) > 5
    ||  strspn (colon + 1, "0123456789") != strlen (colon + 1))
        return false;
    long port = strtol (colon + 1, NULL, 10);
    return port >= 1 && port <= 65535;
}

static int
s_check_known (zconfig_t *root, char *error, size_t error_size)
{
    for (zconfig_t *section = zconfig_child (root); section; section = zconfig_next (section)) {
        const char *name = zconfig_name (section);
        bool section_known = false;
        //  ZPL reads the first of two equal names and ignores the other: a
        //  section or key given twice would fall back silently
        for (zconfig_t *other = zconfig_next (section); other; other = zconfig_next (other))
            if (streq (zconfig_name (other), name))
                return s_error (error, error_size, "%s: the section appears twice", name);
        for (zconfig_t *key = zconfig_child (section); key; key = zconfig_next (key)) {
            char path [256];
            snprintf (path, sizeof path, "%s/%s", name, zconfig_name (key));
            for (zconfig_t *other = zconfig_next (key); other; other = zconfig_next (other))
                if (streq (zconfig_name (other), zconfig_name (key)))
                    return s_error (error, error_size, "%s: the key appears twice", path);
            bool known = false;
            for (size_t i = 0; s_known [i]; i++)
                if (streq (s_known [i], path))
                    known = true;
            if (!known)
                return s_error (error, error_size, "%s: unknown key", path);
            if (zconfig_child (key))
                return s_error (error, error_size, "%s: a value, not a section", path);
        }
        for (size_t i = 0; s_known [i]; i++)
            if (strncmp (s_known [i], name, strlen (name)) == 0
            &&  s_known [i][strlen (name)] == '/')
                section_known = true;
        if (!section_known)
            return s_error (error, error_size, "%s: unknown section (agent, broker, http, "
                            "store, webhook, folder, web)", name);
    }
    return 0;
}

static int
s_string (zconfig_t *root, const char *path, char *dest, size_t size, const char *fallback,
          char *error, size_t error_size)
{
    const char *value = zconfig_get (root, path, fallback);
    if (!value)
        value = "";
    if (strlen (value) >= size)
        return s_error (error, error_size, "%s: longer than %zu bytes", path, size - 1);
    memcpy (dest, value, strlen (value) + 1);
    return 0;
}

static int
s_number (zconfig_t *root, const char *path, uint64_t min, uint64_t max, uint64_t fallback,
          uint64_t *value, char *error, size_t error_size)
{
    const char *text = zconfig_get (root, path, NULL);
    if (!text) {
        *value = fallback;
        return 0;
    }
    bool digits = *text != 0;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9')
            digits = false;
    errno = 0;
    unsigned long long parsed = digits? strtoull (text, NULL, 10): 0;
    if (!digits || errno || parsed < min || parsed > max)
        return s_error (error, error_size, "%s: '%s' is not a number from %llu to %llu", path,
                        text, (unsigned long long) min, (unsigned long long) max);
    *value = parsed;
    return 0;
}

static int
s_bool (zconfig_t *root, const char *path, bool *value, char *error, size_t error_size)
{
    const char *text = zconfig_get (root, path, "0");
    if (streq (text, "1") || streq (text, "true") || streq (text, "yes"))
        *value = true;
    else
    if (streq (text, "0") || streq (text, "false") || streq (text, "no"))
        *value = false;
    else
        return s_error (error, error_size, "%s: '%s' is not 0 or 1", path, text);
    return 0;
}

//  Reads a small file that holds secrets: a regular file of mode 0600 or
//  stricter, at most `max` bytes. Returns a NUL-terminated copy or NULL.
static char *
s_read_private (const char *key, const char *path, size_t max, char *error, size_t error_size)
{
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        s_error (error, error_size, "%s: cannot open %s: %s", key, path, strerror (errno));
        return NULL;
    }
    struct stat st;
    char *text = NULL;
    if (fstat (fd, &st) == -1 || !S_ISREG (st.st_mode))
        s_error (error, error_size, "%s: %s is not a regular file", key, path);
    else
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        s_error (error, error_size, "%s: %s holds secrets but group or others may access it "
                 "(mode %04o): run chmod 600 %s", key, path, (unsigned) (st.st_mode & 07777), path);
    else
    if ((size_t) st.st_size > max)
        s_error (error, error_size, "%s: %s is larger than %zu bytes", key, path, max);
    else
    if ((text = (char *) calloc (1, (size_t) st.st_size + 1)) == NULL)
        s_error (error, error_size, "%s: out of memory", key);
    else {
        ssize_t got = read (fd, text, (size_t) st.st_size);
        if (got != (ssize_t) st.st_size) {
            s_error (error, error_size, "%s: cannot read %s", key, path);
            free (text);
            text = NULL;
        }
    }
    close (fd);
    return text;
}

//  Token file: one "name token" per line; '#' starts a comment. A token is
//  32 to 256 printable characters; only its hash is kept.
static int
s_load_tokens (kim_agent_config_t *self, char *error, size_t error_size)
{
    char *text = s_read_private ("http/tokens", self->tokens_path, S_TOKENS_FILE_MAX,
                                 error, error_size);
    if (!text)
        return -KIM_E_CONFIG;
    int rc = 0;
    size_t line_number = 0;
    char *save = NULL;
    for (char *line = strtok_r (text, "\n", &save); line && rc == 0;
         line = strtok_r (NULL, "\n", &save)) {
        line_number++;
        while (*line == ' ' || *line == '\t')
            line++;
        size_t length = strlen (line);
        while (length && (line [length - 1] == '\r' || line [length - 1] == ' '
                      ||  line [length - 1] == '\t'))
            line [--length] = 0;
        if (!*line || *line == '#')
            continue;
        char *space = strpbrk (line, " \t");
        char *token = space;
        if (space) {
            *space = 0;
            for (token = space + 1; *token == ' ' || *token == '\t'; token++)
                ;
        }
        if (!space || !*token || strpbrk (token, " \t"))
            rc = s_error (error, error_size, "http/tokens: %s line %zu: want \"name token\"",
                          self->tokens_path, line_number);
        else
        if (!kim_code_valid (line))
            rc = s_error (error, error_size, "http/tokens: %s line %zu: the name must be "
                          "1..32 of a-z, 0-9 and _", self->tokens_path, line_number);
        else
        if (strlen (token) < S_TOKEN_MIN || strlen (token) > S_TOKEN_MAX)
            rc = s_error (error, error_size, "http/tokens: %s line %zu: a token has %d to %d "
                          "characters (e.g. openssl rand -hex 32)", self->tokens_path,
                          line_number, S_TOKEN_MIN, S_TOKEN_MAX);
        else
        if (self->token_count == KIM_AGENT_TOKENS_MAX)
            rc = s_error (error, error_size, "http/tokens: more than %d tokens",
                          KIM_AGENT_TOKENS_MAX);
        else {
            kim_agent_token_t *entry = &self->tokens [self->token_count];
            kim_str_copy (entry->name, sizeof entry->name, line);
            crypto_generichash (entry->hash, sizeof entry->hash, (const uint8_t *) token,
                                strlen (token), NULL, 0);
            //  A token names the client system that used it (logs, outbox
            //  records): one token, one name
            for (size_t i = 0; i < self->token_count && rc == 0; i++)
                if (streq (self->tokens [i].name, entry->name)
                ||  sodium_memcmp (self->tokens [i].hash, entry->hash, sizeof entry->hash) == 0)
                    rc = s_error (error, error_size, "http/tokens: %s line %zu: the name or "
                                  "the token of an earlier line again", self->tokens_path,
                                  line_number);
            if (rc == 0)
                self->token_count++;
        }
    }
    if (rc == 0 && self->token_count == 0)
        rc = s_error (error, error_size, "http/tokens: %s holds no token", self->tokens_path);
    sodium_memzero (text, strlen (text));
    free (text);
    return rc;
}

static int
s_readable (const char *key, const char *path, char *error, size_t error_size)
{
    if (access (path, R_OK) != 0)
        return s_error (error, error_size, "%s: cannot read %s: %s", key, path, strerror (errno));
    return 0;
}

static enum MHD_Result
s_answer_none (void *cls, struct MHD_Connection *connection, const char *url,
               const char *method, const char *version, const char *upload_data,
               size_t *upload_data_size, void **request)
{
    (void) cls, (void) connection, (void) url, (void) method, (void) version;
    (void) upload_data, (void) upload_data_size, (void) request;
    return MHD_NO;
}

//  The certificate and key as the HTTP daemon will load them: a daemon that
//  listens nowhere takes the pair or refuses it as the running one would,
//  so that --check finds a file that is not PEM, or a key of another
//  certificate, before a start does.
static int
s_tls_pair (const kim_agent_config_t *self, const char *key, char *error, size_t error_size)
{
    int why;
    char *cert = kim_file_text (self->tls_cert, S_TOKENS_FILE_MAX, NULL, &why);
    if (!cert)
        return s_error (error, error_size, "http/tls_cert: cannot read %s: %s", self->tls_cert,
                        why == EFBIG? "larger than 64 KiB": strerror (why));
    struct MHD_Daemon *probe = MHD_start_daemon (MHD_USE_TLS | MHD_USE_NO_LISTEN_SOCKET, 0,
                                                 NULL, NULL, s_answer_none, NULL,
                                                 MHD_OPTION_HTTPS_MEM_CERT, cert,
                                                 MHD_OPTION_HTTPS_MEM_KEY, key,
                                                 MHD_OPTION_END);
    free (cert);
    if (!probe)
        return s_error (error, error_size, "http/tls_cert, http/tls_key: %s and %s are not a "
                        "PEM certificate and its private key", self->tls_cert, self->tls_key);
    MHD_stop_daemon (probe);
    return 0;
}

bool
kim_agent_config_local (const kim_agent_config_t *self)
{
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton (AF_INET, self->bind, &v4) == 1)
        return (ntohl (v4.s_addr) >> 24) == 127;
    if (inet_pton (AF_INET6, self->bind, &v6) == 1)
        return IN6_IS_ADDR_LOOPBACK (&v6);
    return false;
}

int
kim_agent_config_load (kim_agent_config_t *self, const char *path, char *error, size_t error_size)
{
    memset (self, 0, sizeof *self);
    snprintf (error, error_size, "%s", "");
    int read_error;
    char *text = kim_file_text (path, S_CONFIG_MAX, NULL, &read_error);
    if (!text)
        return s_error (error, error_size, "cannot read %s: %s", path,
                        read_error == EFBIG? "larger than 1 MiB": strerror (read_error));
    zconfig_t *root = zconfig_str_load (text);
    free (text);
    if (!root)
        return s_error (error, error_size, "%s is not valid ZPL (indent with 4 spaces, "
                        "'name = value' per line)", path);
    uint64_t number = 0;
    int rc = s_check_known (root, error, error_size);
    if (rc == 0)
        rc = s_string (root, "agent/org", self->org, sizeof self->org, "", error, error_size);
    if (rc == 0 && !kim_org_valid (self->org))
        rc = s_error (error, error_size, "agent/org: '%s' is not an organisation id "
                      "(<type>.<place>[.<unit>])", self->org);
    if (rc == 0)
        rc = s_string (root, "agent/data", self->data, sizeof self->data, "./kim-agent-data",
                       error, error_size);
    if (rc == 0)
        rc = s_string (root, "agent/cert", self->cert, sizeof self->cert, "", error, error_size);
    if (rc == 0 && !self->cert [0])
        rc = s_error (error, error_size, "agent/cert: required (the organisation's secret "
                      "certificate, from kim keygen)");
    if (rc == 0)
        rc = s_string (root, "agent/sign_key", self->sign_key, sizeof self->sign_key, "",
                       error, error_size);
    if (rc == 0)
        rc = s_bool (root, "agent/verbose", &self->verbose, error, error_size);
    if (rc == 0)
        rc = s_string (root, "broker/endpoint", self->endpoint, sizeof self->endpoint,
                       "tcp://127.0.0.1:7470", error, error_size);
    if (rc == 0 && !s_endpoint_valid (self->endpoint))
        rc = s_error (error, error_size, "broker/endpoint: '%s' is not tcp://HOST:PORT (port "
                      "1 to 65535) or ipc://PATH", self->endpoint);
    if (rc == 0)
        rc = s_number (root, "broker/timeout_ms", 100, 600000, 5000, &number, error, error_size);
    self->timeout_ms = (int) number;
    if (rc == 0)
        rc = s_bool (root, "broker/plaintext", &self->plaintext, error, error_size);
    if (rc == 0)
        rc = s_string (root, "http/bind", self->bind, sizeof self->bind, "127.0.0.1",
                       error, error_size);
    if (rc == 0)
        rc = s_number (root, "http/port", 0, 65535, 7480, &number, error, error_size);
    self->port = (uint16_t) number;
    if (rc == 0)
        rc = s_string (root, "http/port_file", self->port_file, sizeof self->port_file, "",
                       error, error_size);
    if (rc == 0)
        rc = s_string (root, "http/tokens", self->tokens_path, sizeof self->tokens_path, "",
                       error, error_size);
    if (rc == 0 && !self->tokens_path [0])
        rc = s_error (error, error_size, "http/tokens: required (a file of \"name token\" "
                      "lines, mode 0600: one token per client system)");
    if (rc == 0)
        rc = s_number (root, "http/max_body", 1024, KIM_AGENT_BODY_MAX, KIM_AGENT_BODY_DEFAULT,
                       &number, error, error_size);
    self->max_body = (size_t) number;
    if (rc == 0)
        rc = s_string (root, "http/tls_cert", self->tls_cert, sizeof self->tls_cert, "",
                       error, error_size);
    if (rc == 0)
        rc = s_string (root, "http/tls_key", self->tls_key, sizeof self->tls_key, "",
                       error, error_size);
    if (rc == 0)
        rc = s_number (root, "store/map_size_mb", 1, 1048576, 256, &number, error, error_size);
    self->map_size = (size_t) number * 1024 * 1024;
    if (rc == 0)
        rc = s_string (root, "webhook/url", self->webhook_url, sizeof self->webhook_url, "",
                       error, error_size);
    if (rc == 0 && self->webhook_url [0] && strncmp (self->webhook_url, "http://", 7) != 0
    &&  strncmp (self->webhook_url, "https://", 8) != 0)
        rc = s_error (error, error_size, "webhook/url: '%s' is not an http:// or https:// URL",
                      self->webhook_url);
    if (rc == 0)
        rc = s_string (root, "webhook/secret_file", self->webhook_secret_path,
                       sizeof self->webhook_secret_path, "", error, error_size);
    if (rc == 0)
        rc = s_number (root, "webhook/max_attempts", 1, 1000, 10, &number, error, error_size);
    self->webhook_attempts = (uint32_t) number;
    if (rc == 0)
        rc = s_number (root, "webhook/backoff_ms", 100, 3600000, 1000, &number, error, error_size);
    self->webhook_backoff_ms = number;
    if (rc == 0)
        rc = s_number (root, "webhook/backoff_max_ms", 100, 86400000, 300000, &number,
                       error, error_size);
    self->webhook_backoff_max_ms = number;
    if (rc == 0)
        rc = s_number (root, "webhook/timeout_ms", 100, 600000, 10000, &number, error, error_size);
    self->webhook_timeout_ms = (int) number;
    if (rc == 0)
        rc = s_string (root, "folder/outbox", self->folder_outbox, sizeof self->folder_outbox,
                       "", error, error_size);
    if (rc == 0)
        rc = s_string (root, "folder/inbox", self->folder_inbox, sizeof self->folder_inbox, "",
                       error, error_size);
    if (rc == 0)
        rc = s_number (root, "folder/poll_ms", 50, 60000, 500, &number, error, error_size);
    self->folder_poll_ms = (int) number;
    if (rc == 0)
        rc = s_bool (root, "web/enabled", &self->web_enabled, error, error_size);
    if (rc == 0)
        rc = s_string (root, "web/users", self->web_users, sizeof self->web_users, "",
                       error, error_size);
    if (rc == 0 && self->web_enabled && !self->web_users [0])
        rc = s_error (error, error_size, "web/users: required with web/enabled (the staff "
                      "accounts file that kim-agent --add-user writes)");
    if (rc == 0)
        rc = s_string (root, "web/lang", self->web_lang, sizeof self->web_lang, "de",
                       error, error_size);
    if (rc == 0 && !streq (self->web_lang, "de") && !streq (self->web_lang, "en"))
        rc = s_error (error, error_size, "web/lang: '%s' is not de or en", self->web_lang);
    if (rc == 0)
        rc = s_number (root, "web/max_failures", 1, 1000, 5, &number, error, error_size);
    self->web_max_failures = (uint32_t) number;
    if (rc == 0)
        rc = s_number (root, "web/lockout_s", 1, 86400, 900, &number, error, error_size);
    self->web_lockout_s = (uint32_t) number;
    if (rc == 0)
        rc = s_string (root, "web/policy", self->web_policy, sizeof self->web_policy, "",
                       error, error_size);
    if (rc == 0 && self->web_policy [0]) {
        //  Read now, so --check names a broken copy; the page loads it again
        char why [KIM_POLICY_ERROR_MAX];
        kim_policy_t *policy = kim_policy_load (self->web_policy, why, sizeof why);
        if (!policy)
            rc = s_error (error, error_size, "web/policy: %s", why);
        kim_policy_destroy (&policy);
    }

    //  The broker's key: inline or in a certificate file, not both.
    char key_text [64] = "";
    char key_file [PATH_MAX] = "";
    if (rc == 0)
        rc = s_string (root, "broker/key", key_text, sizeof key_text, "", error, error_size);
    if (rc == 0)
        rc = s_string (root, "broker/key_file", key_file, sizeof key_file, "", error, error_size);
    zconfig_destroy (&root);
    if (rc)
        return rc;
    if (!!key_text [0] == !!key_file [0])
        return s_error (error, error_size, "broker/key or broker/key_file: give exactly one "
                        "(the broker's public key, Z85, or its certificate file)");
    if (key_file [0]) {
        if (kim_client_load_public_key (key_file, self->broker_key) != 0)
            return s_error (error, error_size, "broker/key_file: %s is not a readable "
                            "certificate", key_file);
    }
    else {
        uint8_t binary [32];
        if (strlen (key_text) != 40 || !zmq_z85_decode (binary, key_text))
            return s_error (error, error_size, "broker/key: not a 40-character Z85 key");
        memcpy (self->broker_key, key_text, 41);
    }
    if (kim_client_load_cert (self->cert, self->public_key, self->secret_key) != 0)
        return s_error (error, error_size, "agent/cert: %s is missing, not a certificate, or "
                        "readable by group or others (chmod 600)", self->cert);
    if (self->sign_key [0]
    &&  kim_client_load_sign_key (self->sign_key, self->sign_public, self->sign_secret) != 0)
        return s_error (error, error_size, "agent/sign_key: %s is missing, not a signing key, "
                        "or readable by group or others (chmod 600)", self->sign_key);

    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton (AF_INET, self->bind, &v4) != 1 && inet_pton (AF_INET6, self->bind, &v6) != 1)
        return s_error (error, error_size, "http/bind: '%s' is not an IP address", self->bind);
    if (!!self->tls_cert [0] != !!self->tls_key [0])
        return s_error (error, error_size, "http/tls_cert and http/tls_key go together");
    if (!kim_agent_config_local (self) && !self->tls_cert [0])
        return s_error (error, error_size, "http/bind: %s is not a loopback address; binding "
                        "there needs TLS (http/tls_cert and http/tls_key)", self->bind);
    if (self->tls_cert [0] && MHD_is_feature_supported (MHD_FEATURE_TLS) != MHD_YES)
        return s_error (error, error_size, "http/tls_cert: this libmicrohttpd has no TLS "
                        "support; bind to 127.0.0.1 instead");
    if (self->tls_cert [0]) {
        rc = s_readable ("http/tls_cert", self->tls_cert, error, error_size);
        if (rc)
            return rc;
        char *key = s_read_private ("http/tls_key", self->tls_key, S_TOKENS_FILE_MAX,
                                    error, error_size);
        if (!key)
            return -KIM_E_CONFIG;
        rc = s_tls_pair (self, key, error, error_size);
        sodium_memzero (key, strlen (key));
        free (key);
        if (rc)
            return rc;
    }
    struct stat data_st;
    if (stat (self->data, &data_st) == 0 && !S_ISDIR (data_st.st_mode))
        return s_error (error, error_size, "agent/data: %s is not a folder (the agent keeps "
                        "its store there)", self->data);
    //  The accounts' hashes are secrets as the tokens are: the same rule
    //  (the file may be missing: no accounts yet).
    struct stat users_st;
    if (self->web_enabled && stat (self->web_users, &users_st) == 0) {
        if (!S_ISREG (users_st.st_mode))
            return s_error (error, error_size, "web/users: %s is not a regular file",
                            self->web_users);
        if (users_st.st_mode & (S_IRWXG | S_IRWXO))
            return s_error (error, error_size, "web/users: %s holds secrets but group or others "
                            "may access it (mode %04o): run chmod 600 %s", self->web_users,
                            (unsigned) (users_st.st_mode & 07777), self->web_users);
    }
    const char *folders [2] = { self->folder_outbox, self->folder_inbox };
    const char *folder_keys [2] = { "folder/outbox", "folder/inbox" };
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (folders [i][0] && (stat (folders [i], &st) != 0 || !S_ISDIR (st.st_mode)))
            return s_error (error, error_size, "%s: %s is not a folder", folder_keys [i],
                            folders [i]);
        if (folders [i][0] && access (folders [i], R_OK | W_OK | X_OK) != 0)
            return s_error (error, error_size, "%s: cannot read and write %s", folder_keys [i],
                            folders [i]);
    }
    if (self->folder_outbox [0] && self->folder_inbox [0]
    &&  streq (self->folder_outbox, self->folder_inbox))
        return s_error (error, error_size, "folder/inbox: must differ from folder/outbox");
    if (self->webhook_url [0]) {
        if (!self->webhook_secret_path [0])
            return s_error (error, error_size, "webhook/secret_file: required with webhook/url "
                            "(the HMAC-SHA256 key the receiver checks signatures with)");
        char *secret = s_read_private ("webhook/secret_file", self->webhook_secret_path, 4096,
                                       error, error_size);
        if (!secret)
            return -KIM_E_CONFIG;
        size_t length = strlen (secret);
        while (length && (secret [length - 1] == '\n' || secret [length - 1] == '\r'
                      ||  secret [length - 1] == ' '))
            length--;
        if (length < 16 || length > sizeof self->webhook_secret)
            rc = s_error (error, error_size, "webhook/secret_file: the secret has 16 to %zu "
                          "bytes (e.g. openssl rand -hex 32)", sizeof self->webhook_secret);
        else {
            memcpy (self->webhook_secret, secret, length);
            self->webhook_secret_size = length;
        }
        sodium_memzero (secret, strlen (secret));
        free (secret);
        if (rc)
            return rc;
    }
    return s_load_tokens (self, error, error_size);
}

void
kim_agent_config_clear (kim_agent_config_t *self)
{
    sodium_memzero (self->secret_key, sizeof self->secret_key);
    sodium_memzero (self->sign_secret, sizeof self->sign_secret);
    sodium_memzero (self->tokens, sizeof self->tokens);
    sodium_memzero (self->webhook_secret, sizeof self->webhook_secret);
}
