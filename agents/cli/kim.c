/*  kim.c — the `kim` command-line tool: subcommand dispatch and what every
    subcommand shares (help, option cursor, connection settings, messages).

    Subcommands live in a table so that new ones (referral, audit, policy,
    subject, admin, subscribe, directory) are one line here plus their own kim_cmd_*.c file. Every
    subcommand reads and writes JSON lines, so the tool composes with jq and
    shell pipelines, and agency integrations can start as scripts.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <czmq.h>

#include "kim_cli.h"

static const kim_cli_command_t s_commands [] = {
    { "send", kim_cmd_send, "send one message from flags, or many as JSON lines",
      kim_cmd_send_usage, true },
    { "inbox", kim_cmd_inbox, "receive messages for our organisation as JSON lines and ack them",
      kim_cmd_inbox_usage, true },
    { "status", kim_cmd_status, "print the broker's figures for our organisation",
      kim_cmd_status_usage, true },
    { "keygen", kim_cmd_keygen, "make an organisation's CURVE key pair (certificate files)",
      kim_cmd_keygen_usage, false },
    { "referral", kim_cmd_referral, "show one referral's state, or list ours (open, overdue, by org)",
      kim_cmd_referral_usage, true },
    { "admin", kim_cmd_admin, "operator commands: reload the broker's registry",
      kim_cmd_admin_usage, true },
    { "audit", kim_cmd_audit, "verify, replay, export the log or show a case (offline or as auditor)",
      kim_cmd_audit_usage, true },
    { "policy", kim_cmd_policy, "lint a policy file, or check offline why a transfer passes or not",
      kim_cmd_policy_usage, false },
    { "subject", kim_cmd_subject, "a data subject's rights: access report, erasure of payloads",
      kim_cmd_subject_usage, true },
    { "subscribe", kim_cmd_subscribe, "get a case's events (or all our cases') in our inbox",
      kim_cmd_subscribe_usage, true },
    { "unsubscribe", kim_cmd_unsubscribe, "end one of our subscriptions",
      kim_cmd_unsubscribe_usage, true },
    { "directory", kim_cmd_directory, "list the broker's key directory, or one organisation",
      kim_cmd_directory_usage, true },
};
#define S_COMMAND_COUNT (sizeof s_commands / sizeof s_commands [0])

static const char s_connection_usage [] =
    "Connection options:\n"
    "  --endpoint URL      broker endpoint (env KIM_ENDPOINT; default " KIM_DEFAULT_ENDPOINT ")\n"
    "  --broker-key FILE   the broker's public certificate (env KIM_BROKER_KEY;\n"
    "                      default " KIM_DEFAULT_BROKER_KEY ")\n"
    "  --cert FILE         our organisation's secret certificate, NAME.cert_secret, written\n"
    "                      by `kim keygen` (env KIM_CERT; required)\n"
    "  --timeout MS        how long to wait for the broker (default 5000)\n";

static const kim_cli_command_t *
s_command (const char *name)
{
    for (size_t i = 0; i < S_COMMAND_COUNT; i++)
        if (streq (s_commands [i].name, name))
            return &s_commands [i];
    return NULL;
}

static void
s_usage (FILE *out)
{
    fprintf (out,
        "Usage: kim COMMAND [options]\n"
        "\n"
        "The command-line client of the kim broker, which routes referrals and case\n"
        "handovers between agencies. Reads and writes JSON lines.\n"
        "\n"
        "Commands:\n");
    for (size_t i = 0; i < S_COMMAND_COUNT; i++)
        fprintf (out, "  %-11s %s\n", s_commands [i].name, s_commands [i].summary);
    fprintf (out,
        "  help        print the help of a command: kim help COMMAND\n"
        "\n"
        "Options:\n"
        "  -h, --help      this help (kim COMMAND --help for a command's)\n"
        "  --version       print the version\n"
        "\n"
        "Exit status: 0 success, 1 the broker refused a message, 2 usage or connection error.\n"
        "\n"
        "Example:\n"
        "  kim keygen kim.rheine --dir ./kim-data/keys\n"
        "  export KIM_CERT=./kim-data/keys/kim.rheine.cert_secret\n"
        "  kim send --type REFERRAL --to jc.rheine --referral r-1 --case c-17 --subject p-7f3a \\\n"
        "      --purpose job_placement --statute 'SGB X §69(1)1' --payload sealed.bin\n");
}

bool
kim_cli_help (FILE *out, const char *name)
{
    const kim_cli_command_t *command = s_command (name);
    if (!command)
        return false;
    fprintf (out, "%s", command->usage);
    if (command->connects)
        fprintf (out, "\n%s", s_connection_usage);
    return true;
}

int
main (int argc, char *argv [])
{
    if (argc < 2) {
        s_usage (stderr);
        return KIM_EXIT_USAGE;
    }
    const char *name = argv [1];
    if (streq (name, "--help") || streq (name, "-h")) {
        s_usage (stdout);
        return KIM_EXIT_OK;
    }
    if (streq (name, "--version") || streq (name, "version")) {
        printf ("kim %s (protocol %d to %d)\n", KIM_VERSION, KIM_PROTOCOL_VERSION, KIM_PROTOCOL_MAX);
        return KIM_EXIT_OK;
    }
    if (streq (name, "help")) {
        //  "kim help", "kim help help" and "kim help --help" all ask for
        //  what help does: the overview names it
        if (argc < 3 || streq (argv [2], "help") || streq (argv [2], "--help")
        ||  streq (argv [2], "-h")) {
            s_usage (stdout);
            return KIM_EXIT_OK;
        }
        if (!kim_cli_help (stdout, argv [2])) {
            fprintf (stderr, "kim: no command '%s' (kim --help lists them)\n", argv [2]);
            return KIM_EXIT_USAGE;
        }
        return KIM_EXIT_OK;
    }
    const kim_cli_command_t *command = s_command (name);
    if (!command) {
        if (name [0] == '-')
            fprintf (stderr, "kim: unknown option '%s' (kim --help lists the options)\n", name);
        else
            fprintf (stderr, "kim: unknown command '%s' (kim --help lists the commands)\n", name);
        return KIM_EXIT_USAGE;
    }
    //  The library logs through zsys; keep its lines on stderr, named, and
    //  out of the JSON on stdout.
    zsys_init ();
    zsys_set_logident ("kim");
    zsys_set_logstream (stderr);
    zsys_set_logsystem (false);
    return command->run (argc - 1, argv + 1);
}


//  --------------------------------------------------------------------------
//  Messages

static void
s_vmessage (const char *cmd, const char *format, va_list args)
{
    fprintf (stderr, "kim%s%s: ", cmd? " ": "", cmd? cmd: "");
    vfprintf (stderr, format, args);
}

int
kim_cli_usage_error (const char *cmd, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_vmessage (cmd, format, args);
    va_end (args);
    fprintf (stderr, " (see kim %s --help)\n", cmd? cmd: "");
    return KIM_EXIT_USAGE;
}

int
kim_cli_error (const char *cmd, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_vmessage (cmd, format, args);
    va_end (args);
    fputc ('\n', stderr);
    return KIM_EXIT_USAGE;
}

void
kim_cli_warn (const char *cmd, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    s_vmessage (cmd, format, args);
    va_end (args);
    fputc ('\n', stderr);
}


//  --------------------------------------------------------------------------
//  Option cursor

void
kim_cli_args_init (kim_cli_args_t *self, int argc, char *argv [])
{
    memset (self, 0, sizeof *self);
    self->argc = argc;
    self->argv = argv;
    self->index = 1;
    self->cmd = argc > 0? argv [0]: "";
}

bool
kim_cli_args_next (kim_cli_args_t *self)
{
    if (self->failed || self->index >= self->argc)
        return false;
    self->arg = self->argv [self->index++];
    self->inline_value = NULL;
    self->name [0] = 0;
    if (!self->options_done && streq (self->arg, "--")) {
        self->options_done = true;
        return kim_cli_args_next (self);
    }
    self->positional = self->options_done || self->arg [0] != '-' || self->arg [1] == 0;
    if (!self->positional) {
        const char *equals = strchr (self->arg, '=');
        size_t length = equals? (size_t) (equals - self->arg): strlen (self->arg);
        if (length >= sizeof self->name)
            length = sizeof self->name - 1;
        memcpy (self->name, self->arg, length);
        self->name [length] = 0;
        if (equals)
            self->inline_value = equals + 1;
    }
    return true;
}

bool
kim_cli_args_is (kim_cli_args_t *self, const char *option)
{
    return !self->positional && streq (self->name, option);
}

bool
kim_cli_args_help (kim_cli_args_t *self)
{
    return kim_cli_args_is (self, "--help") || kim_cli_args_is (self, "-h");
}

const char *
kim_cli_args_value (kim_cli_args_t *self)
{
    if (self->inline_value)
        return self->inline_value;
    if (self->index < self->argc)
        return self->argv [self->index++];
    kim_cli_usage_error (self->cmd, "option %s needs a value", self->name);
    self->failed = true;
    return NULL;
}

int
kim_cli_args_unknown (kim_cli_args_t *self)
{
    if (self->positional)
        return kim_cli_usage_error (self->cmd, "unexpected argument '%s'", self->arg);
    return kim_cli_usage_error (self->cmd, "unknown option '%s'", self->name);
}

bool
kim_cli_parse_uint (const char *text, uint64_t min, uint64_t max, uint64_t *value)
{
    if (!text || *text < '0' || *text > '9')
        return false;
    errno = 0;
    char *end;
    unsigned long long parsed = strtoull (text, &end, 10);
    if (errno || *end || parsed < min || parsed > max)
        return false;
    *value = parsed;
    return true;
}


//  --------------------------------------------------------------------------
//  Connection settings

void
kim_cli_conn_init (kim_cli_conn_t *self)
{
    const char *env;
    self->endpoint = (env = getenv ("KIM_ENDPOINT")) && *env? env: KIM_DEFAULT_ENDPOINT;
    self->broker_key = (env = getenv ("KIM_BROKER_KEY")) && *env? env: KIM_DEFAULT_BROKER_KEY;
    self->cert = (env = getenv ("KIM_CERT")) && *env? env: NULL;
    self->timeout_ms = KIM_DEFAULT_TIMEOUT_MS;
}

int
kim_cli_args_common (const char *cmd, kim_cli_conn_t *conn, kim_cli_args_t *args, int *exit_code)
{
    //  Nested commands (subject report, admin reload) start their arguments
    //  at the action; messages should still name the command.
    args->cmd = cmd;
    if (kim_cli_args_help (args)) {
        kim_cli_help (stdout, cmd);
        *exit_code = KIM_EXIT_OK;
        return -1;
    }
    int rc = kim_cli_conn_option (conn, args);
    if (rc < 0)
        *exit_code = KIM_EXIT_USAGE;
    return rc;
}

int
kim_cli_conn_only (const char *cmd, kim_cli_conn_t *conn, int argc, char *argv [],
                   const char **operand)
{
    if (operand)
        *operand = NULL;
    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    while (kim_cli_args_next (&args)) {
        int exit_code;
        int taken = kim_cli_args_common (cmd, conn, &args, &exit_code);
        if (taken < 0)
            return exit_code;
        if (taken)
            continue;
        if (operand && args.positional && !*operand)
            *operand = args.arg;
        else
            return kim_cli_args_unknown (&args);
    }
    return args.failed? KIM_EXIT_USAGE: -1;
}

int
kim_cli_conn_option (kim_cli_conn_t *self, kim_cli_args_t *args)
{
    const char **target = NULL;
    if (kim_cli_args_is (args, "--endpoint"))
        target = &self->endpoint;
    else
    if (kim_cli_args_is (args, "--broker-key"))
        target = &self->broker_key;
    else
    if (kim_cli_args_is (args, "--cert"))
        target = &self->cert;
    else
    if (!kim_cli_args_is (args, "--timeout"))
        return 0;

    const char *value = kim_cli_args_value (args);
    if (!value)
        return -1;
    if (target) {
        if (!*value) {
            kim_cli_usage_error (args->cmd, "%s must not be empty", args->name);
            return -1;
        }
        *target = value;
        return 1;
    }
    uint64_t timeout;
    if (!kim_cli_parse_uint (value, 1, INT32_MAX, &timeout)) {
        kim_cli_usage_error (args->cmd, "--timeout wants milliseconds (1 or more), not '%s'",
                             value);
        return -1;
    }
    self->timeout_ms = (int) timeout;
    return 1;
}

kim_client_t *
kim_cli_connect (const char *cmd, const kim_cli_conn_t *self, uint32_t window)
{
    if (!self->cert) {
        kim_cli_error (cmd, "no organisation certificate: pass --cert FILE or set KIM_CERT "
                       "(make one with `kim keygen NAME`)");
        return NULL;
    }
    char why [1024];
    char broker_key [41], public_key [41], secret_key [41];
    if (kim_client_load_public_key_explain (self->broker_key, broker_key, why, sizeof why)) {
        kim_cli_error (cmd, "broker key: %s (set --broker-key or KIM_BROKER_KEY)", why);
        return NULL;
    }
    if (kim_client_load_cert_explain (self->cert, public_key, secret_key, why, sizeof why)) {
        kim_cli_error (cmd, "certificate: %s", why);
        return NULL;
    }
    //  A signing key beside the certificate (`kim keygen NAME --sign`):
    //  NAME.sign_secret next to NAME.cert_secret. With it, every SEND is signed.
    char sign_path [PATH_MAX], sign_public [41], sign_secret [41];
    bool signing = false;
    size_t cert_len = strlen (self->cert);
    const char *suffix = cert_len >= 12 && streq (self->cert + cert_len - 12, ".cert_secret")
                       ? ".cert_secret": ".cert";
    size_t stem = cert_len - (cert_len >= strlen (suffix)
                              && streq (self->cert + cert_len - strlen (suffix), suffix)
                              ? strlen (suffix): 0);
    if (snprintf (sign_path, sizeof sign_path, "%.*s.sign_secret", (int) stem, self->cert)
            < (int) sizeof sign_path
    &&  access (sign_path, F_OK) == 0) {
        if (kim_client_load_sign_key (sign_path, sign_public, sign_secret)) {
            kim_cli_error (cmd, "signing key %s cannot be used (see the log above)", sign_path);
            return NULL;
        }
        signing = true;
    }
    char agent [KIM_AGENT_MAX + 1];
    snprintf (agent, sizeof agent, "kim/%s %s", KIM_VERSION, cmd);
    kim_client_config_t config = {
        .sign_secret_key = signing? sign_secret: NULL,
        .endpoint = self->endpoint,
        .broker_key = broker_key,
        .public_key = public_key,
        .secret_key = secret_key,
        .agent = agent,
        .window = window,
        .timeout_ms = self->timeout_ms,
    };
    int err = 0;
    kim_client_t *client = kim_client_new_explain (&config, &err, why, sizeof why);
    memset (secret_key, 0, sizeof secret_key);
    memset (sign_secret, 0, sizeof sign_secret);
    if (!client)
        kim_cli_error (cmd, "%s", why [0]? why: kim_strerror (err));
    return client;
}

int
kim_cli_read_file (const char *cmd, const char *path, size_t max, uint8_t **data, size_t *size)
{
    bool is_stdin = streq (path, "-");
    FILE *file = is_stdin? stdin: fopen (path, "rb");
    if (!file) {
        kim_cli_error (cmd, "cannot open %s: %s", path, strerror (errno));
        return -1;
    }
    size_t capacity = 65536, used = 0;
    uint8_t *buffer = (uint8_t *) malloc (capacity);
    int rc = buffer? 0: -1;
    while (rc == 0) {
        if (used == capacity) {
            if (used > max)
                break;              //  reported below
            uint8_t *bigger = (uint8_t *) realloc (buffer, capacity * 2);
            if (!bigger) {
                rc = -1;
                break;
            }
            buffer = bigger;
            capacity *= 2;
        }
        size_t got = fread (buffer + used, 1, capacity - used, file);
        used += got;
        if (got == 0) {
            if (ferror (file)) {
                kim_cli_error (cmd, "cannot read %s: %s", is_stdin? "stdin": path,
                               strerror (errno));
                rc = -2;
            }
            break;
        }
    }
    if (rc == -1)
        kim_cli_error (cmd, "out of memory reading %s", is_stdin? "stdin": path);
    else
    if (rc == 0 && used > max) {
        kim_cli_error (cmd, "%s is larger than %zu bytes", is_stdin? "stdin": path, max);
        rc = -1;
    }
    if (!is_stdin)
        fclose (file);
    if (rc) {
        free (buffer);
        return -1;
    }
    *data = buffer;
    *size = used;
    return 0;
}
