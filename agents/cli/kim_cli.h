/*  kim_cli.h — what the parts of the `kim` command-line tool share.

    The tool is one binary with subcommands. kim.c owns the command table,
    the help texts' common parts and the option cursor; each kim_cmd_*.c
    file implements one or more subcommands as `int run (argc, argv)`,
    where argv[0] is the subcommand's name, and returns the exit code.

    Exit codes are the same for every subcommand: 0 success, 1 the broker
    (or local validation) refused some message, 2 usage or connection error.
*/
#ifndef KIM_CLI_H_INCLUDED
#define KIM_CLI_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kim/kim_client.h"
#include "kim_client_explain.h"

#ifndef KIM_VERSION
#   define KIM_VERSION "0.1.0"
#endif

#define KIM_EXIT_OK         0
#define KIM_EXIT_REJECTED   1
#define KIM_EXIT_USAGE      2

#define KIM_DEFAULT_ENDPOINT    "tcp://127.0.0.1:7470"
#define KIM_DEFAULT_BROKER_KEY  "./kim-data/keys/broker.cert"
#define KIM_DEFAULT_KEY_DIR     "./kim-data/keys"
#define KIM_DEFAULT_TIMEOUT_MS  5000

//  --------------------------------------------------------------------------
//  Subcommands

typedef struct {
    const char *name;
    int (*run) (int argc, char *argv []);
    const char *summary;        //  one line for `kim --help`
    const char *usage;          //  synopsis, option list and an example
    bool connects;              //  takes the shared connection options
} kim_cli_command_t;

//  Prints the full help of a subcommand (with the connection options when
//  it connects). Returns false if there is no such subcommand.
bool
    kim_cli_help (FILE *out, const char *name);

//  The subcommands (kim_cmd_*.c).
int kim_cmd_send (int argc, char *argv []);
int kim_cmd_inbox (int argc, char *argv []);
int kim_cmd_status (int argc, char *argv []);
int kim_cmd_keygen (int argc, char *argv []);
int kim_cmd_referral (int argc, char *argv []);
extern const char kim_cmd_referral_usage [];
int kim_cmd_admin (int argc, char *argv []);
extern const char kim_cmd_admin_usage [];
int kim_cmd_audit (int argc, char *argv []);
extern const char kim_cmd_audit_usage [];
int kim_cmd_policy (int argc, char *argv []);
extern const char kim_cmd_policy_usage [];
int kim_cmd_subject (int argc, char *argv []);
extern const char kim_cmd_subject_usage [];
int kim_cmd_subscribe (int argc, char *argv []);
extern const char kim_cmd_subscribe_usage [];
int kim_cmd_unsubscribe (int argc, char *argv []);
extern const char kim_cmd_unsubscribe_usage [];
int kim_cmd_directory (int argc, char *argv []);
extern const char kim_cmd_directory_usage [];
extern const char kim_cmd_send_usage [];
extern const char kim_cmd_inbox_usage [];
extern const char kim_cmd_status_usage [];
extern const char kim_cmd_keygen_usage [];

//  --------------------------------------------------------------------------
//  Option cursor. Accepts "--name value", "--name=value", positional
//  arguments, and "--" to end options. Typical use:
//
//      kim_cli_args_t args;
//      kim_cli_args_init (&args, argc, argv);
//      while (kim_cli_args_next (&args)) {
//          if (kim_cli_args_is (&args, "--count")) { value = kim_cli_args_value (&args); ... }
//          else if (args.positional) ...
//          else return kim_cli_args_unknown (&args);
//      }

typedef struct {
    int argc;
    char **argv;
    int index;                  //  of the next argument to read
    const char *cmd;            //  subcommand name, for messages
    const char *arg;            //  current argument as given
    char name [64];             //  current option name without "=value"
    const char *inline_value;   //  value after '=', or NULL
    bool positional;            //  the current argument is not an option
    bool options_done;          //  "--" seen
    bool failed;                //  a value was missing; a message was printed
} kim_cli_args_t;

void
    kim_cli_args_init (kim_cli_args_t *self, int argc, char *argv []);
bool
    kim_cli_args_next (kim_cli_args_t *self);
bool
    kim_cli_args_is (kim_cli_args_t *self, const char *option);
//  The option's value; NULL (and a message, self->failed set) if missing.
const char *
    kim_cli_args_value (kim_cli_args_t *self);
//  Prints "unknown option" / "unexpected argument" and returns KIM_EXIT_USAGE.
int
    kim_cli_args_unknown (kim_cli_args_t *self);
//  True when the current option is --help or -h (the caller prints help).
bool
    kim_cli_args_help (kim_cli_args_t *self);

//  Parses a decimal number in [min, max]; false if it is not one.
bool
    kim_cli_parse_uint (const char *text, uint64_t min, uint64_t max, uint64_t *value);

//  Messages to stderr, prefixed "kim CMD: ". usage_error adds a pointer to
//  --help. Both return KIM_EXIT_USAGE so callers can `return` them.
int
    kim_cli_usage_error (const char *cmd, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));
int
    kim_cli_error (const char *cmd, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));
void
    kim_cli_warn (const char *cmd, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

//  --------------------------------------------------------------------------
//  Connection settings shared by every subcommand that talks to the broker.

typedef struct {
    const char *endpoint;       //  --endpoint, KIM_ENDPOINT
    const char *broker_key;     //  --broker-key FILE, KIM_BROKER_KEY
    const char *cert;           //  --cert FILE, KIM_CERT
    int timeout_ms;             //  --timeout MS
} kim_cli_conn_t;

//  Fills in defaults and the environment.
void
    kim_cli_conn_init (kim_cli_conn_t *self);
//  If the cursor is at a connection option, consumes it and returns 1;
//  returns 0 if it is another option, or -1 after printing a usage error.
int
    kim_cli_conn_option (kim_cli_conn_t *self, kim_cli_args_t *args);
//  What every connecting subcommand accepts at the cursor: --help (prints
//  the command's help) and the connection options. Returns 1 when it took
//  the argument, 0 when the caller must look at it, or -1 when the command
//  ends now with *exit_code.
int
    kim_cli_args_common (const char *cmd, kim_cli_conn_t *conn, kim_cli_args_t *args,
                         int *exit_code);
//  Parses the arguments of a command that takes connection options only,
//  and, when `operand` is not NULL, at most one positional argument (set to
//  it, or NULL). Returns -1 to go on, or the exit code the command ends with.
int
    kim_cli_conn_only (const char *cmd, kim_cli_conn_t *conn, int argc, char *argv [],
                       const char **operand);
//  Loads the keys and opens a session; on failure prints why and returns NULL.
kim_client_t *
    kim_cli_connect (const char *cmd, const kim_cli_conn_t *self, uint32_t window);

//  Reads a whole file ("-" for stdin) into a fresh buffer of at most `max`
//  bytes. Returns 0, or prints why and returns -1.
int
    kim_cli_read_file (const char *cmd, const char *path, size_t max, uint8_t **data, size_t *size);

#endif
