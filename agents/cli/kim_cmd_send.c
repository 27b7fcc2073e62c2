/*  kim_cmd_send.c — `kim send`: one message from flags, or many as JSON lines.

    Both forms go through the same pipeline: each message is queued with
    kim_client_send_async (up to the send window in flight), answers are
    printed as they come, in whatever order the broker gives them, one JSON
    line per message; at the end the tool waits for the rest. A message the
    broker never answered (it went away for longer than --timeout) is
    reported as TIMEOUT so a script can send it again: the broker
    de-duplicates by msg_id, so resending is always safe.
*/
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <czmq.h>
#include <jansson.h>
#include <sodium.h>

#include "kim_cli.h"
#include "kim_json.h"

const char kim_cmd_send_usage [] =
    "Usage: kim send [connection options] [header options] [--payload FILE|-]\n"
    "       kim send [connection options] --json < messages.jsonl\n"
    "\n"
    "Sends messages and prints one JSON line per message when the broker answers:\n"
    "  {\"msg_id\":\"...\",\"seq\":12,\"dup\":false}            durably in the log\n"
    "  {\"msg_id\":\"...\",\"error\":\"QUOTA\",\"code\":300,\"text\":\"...\",\"path\":\"...\"}\n"
    "With --json each answer also names its input line (\"line\"): answers come in the\n"
    "order the broker gives them, which need not be the input's.\n"
    "Exit status: 0 all receipted, 1 some refused, 2 usage or connection error.\n"
    "\n"
    "Header options (one message):\n"
    "  --type TYPE         REFERRAL, ACCEPT, DECLINE, NOT_COMPETENT, FORWARD, STATUS,\n"
    "                      OUTCOME, WITHDRAW, INFO_REQUEST, INFO_RESPONSE, HANDOVER_OFFER,\n"
    "                      HANDOVER_ACCEPT, HANDOVER_DECLINE, CASE_CLOSED, CONSENT_GRANT,\n"
    "                      CONSENT_REVOKE, ERASURE, ACCESS_REPORT (required)\n"
    "  --to ORG            recipient organisation, e.g. jc.rheine\n"
    "  --referral ID       referral_id: the conversation\n"
    "  --case ID           case_id\n"
    "  --subject PSEUDONYM subject pseudonym (never a name)\n"
    "  --purpose CODE      purpose code, e.g. job_placement\n"
    "  --consent ID        legal basis: the registered consent ID; with --type\n"
    "                      CONSENT_REVOKE: the consent to revoke\n"
    "  --statute CITATION  legal basis: a statute, e.g. 'SGB X §69(1)1'\n"
    "  --category NAME     data category, repeatable: art9, sgb8_s65, stgb203,\n"
    "                      residence_status, contact\n"
    "  --deadline TIME     ISO-8601 UTC (2026-12-01T12:00:00Z) or ms since the epoch\n"
    "  --msg-id ID         our id for the message (default: 32 random hex digits)\n"
    "  --ref-msg ID        ref_msg_id: the message this one answers\n"
    "  --code CODE         reason, status or outcome code\n"
    "  --org ORG           suggested or forwarded-to organisation\n"
    "  --note TEXT         short note (never case content)\n"
    "  --priority P        normal, low or high\n"
    "  --sender-ref REF    our own case reference\n"
    "  --recipient-ref REF the recipient's case reference\n"
    "  --payload FILE      the payload (sealed for the recipient) from FILE, - for stdin\n"
    "\n"
    "JSON lines (many messages, pipelined):\n"
    "  --json              read one header object per line from stdin, keys as on the\n"
    "                      wire (type, recipient, referral_id, legal_basis, ...), plus\n"
    "                      \"payload\" (UTF-8 text) or \"payload_base64\"; a line the tool\n"
    "                      cannot use is reported with its \"line\" number\n"
    "\n"
    "Example:\n"
    "  kim send --cert kim.rheine.cert_secret --type REFERRAL --to jc.rheine \\\n"
    "      --referral r-2026-001 --case c-17 --subject p-7f3a --purpose job_placement \\\n"
    "      --statute 'SGB X §69(1)1' --payload sealed.bin\n"
    "  echo '{\"type\":\"ACCEPT\",\"recipient\":\"kim.rheine\",' \\\n"
    "       '\"referral_id\":\"r-2026-001\"}' | kim send --json\n";

//  Header options that set one string field.
typedef struct {
    const char *option;
    size_t offset;
    size_t size;
} s_field_t;

#define S_FIELD(option, member) \
    { option, offsetof (kim_msg_t, member), sizeof (((kim_msg_t *) 0)->member) }

static const s_field_t s_fields [] = {
    S_FIELD ("--to", recipient),
    S_FIELD ("--referral", referral_id),
    S_FIELD ("--case", case_id),
    S_FIELD ("--subject", subject),
    S_FIELD ("--purpose", purpose),
    S_FIELD ("--msg-id", msg_id),
    S_FIELD ("--ref-msg", ref_msg_id),
    S_FIELD ("--code", code),
    S_FIELD ("--org", org),
    S_FIELD ("--note", note),
    S_FIELD ("--sender-ref", sender_ref),
    S_FIELD ("--recipient-ref", recipient_ref),
    S_FIELD ("--consent", consent_id),
    S_FIELD ("--statute", citation),
};

//  What the pipeline shares.
typedef struct {
    kim_client_t *client;
    zhashx_t *waiting;              //  msg_id -> line number: sent, not answered
    bool json_mode;
    int refused;                    //  messages refused (by us or the broker)
    int failed;                     //  a connection-level error happened
    size_t receipted;
} s_send_t;

static void
s_print (json_t *line)
{
    if (line) {
        json_dumpf (line, stdout, JSON_COMPACT);
        fputc ('\n', stdout);
        json_decref (line);
    }
}

static void
s_print_error (s_send_t *self, size_t line, const char *msg_id, int code,
               const char *text, const char *path)
{
    code = code < 0? -code: code;
    json_t *out = json_object ();
    if (!out)
        return;
    if (line)
        json_object_set_new (out, "line", json_integer ((json_int_t) line));
    if (msg_id && *msg_id)
        json_object_set_new (out, "msg_id", json_string (msg_id));
    json_object_set_new (out, "error", json_string (kim_errname (code)));
    json_object_set_new (out, "code", json_integer (code));
    json_object_set_new (out, "text", json_string (text && *text? text: kim_strerror (code)));
    json_object_set_new (out, "path", json_string (path? path: ""));
    s_print (out);
    self->refused++;
}

//  Prints every answer that is ready.
static void
s_drain (s_send_t *self)
{
    kim_event_t event;
    while (kim_client_recv (self->client, &event, 0) == 0) {
        //  With --json the answer names the input line it answers, since
        //  answers come in the broker's order, not the input's
        size_t line = self->json_mode
                    ? (size_t) (uintptr_t) zhashx_lookup (self->waiting, event.msg_id): 0;
        if (event.type == KIM_EVENT_RECEIPT) {
            zhashx_delete (self->waiting, event.msg_id);
            json_t *out = json_pack ("{s:s, s:I, s:b}", "msg_id", event.msg_id,
                                     "seq", (json_int_t) event.seq, "dup", event.dup);
            if (out && line)
                json_object_set_new (out, "line", json_integer ((json_int_t) line));
            s_print (out);
            self->receipted++;
        }
        else
        if (event.type == KIM_EVENT_REJECT && event.msg_id [0]) {
            zhashx_delete (self->waiting, event.msg_id);
            s_print_error (self, line, event.msg_id, event.code, event.text, event.path);
        }
        else
        if (event.type == KIM_EVENT_REJECT)
            kim_cli_warn ("send", "broker refused a command: %s (%d) %s", kim_errname (event.code),
                          event.code, event.text);
    }
    fflush (stdout);
}

//  Codes that refuse one message; anything else means the client is stuck.
//  UNKNOWN_RECIPIENT: no key to seal the payload to (the library asks the
//  directory before the message leaves).
static bool
s_message_error (int rc)
{
    int code = -rc;
    return (code >= 100 && code < 200) || code == KIM_E_ARGS || code == KIM_E_UNKNOWN_RECIPIENT;
}

static int
s_send_one (s_send_t *self, size_t line, kim_msg_t *msg, const uint8_t *payload, size_t size)
{
    int rc = kim_client_send_async (self->client, msg, payload, size);
    if (rc == 0) {
        zhashx_insert (self->waiting, msg->msg_id, (void *) (uintptr_t) (line? line: 1));
        s_drain (self);
        return 0;
    }
    if (s_message_error (rc)) {
        //  A header the library refused: report its parts like a REJECT's
        kim_decode_error_t derr = { 0, "" };
        char text [KIM_TEXT_MAX + 1];
        bool invalid = kim_msg_validate (msg, &derr) == rc;
        if (invalid)
            snprintf (text, sizeof text, "%s%s%s", kim_strerror (rc),
                      derr.path [0]? " at ": "", derr.path);
        s_print_error (self, line, msg->msg_id, rc,
                       invalid? text: kim_client_error (self->client),
                       invalid? derr.path
                       : rc == -KIM_E_UNKNOWN_RECIPIENT? "hdr.recipient": "");
        fflush (stdout);
        return 0;
    }
    kim_cli_error ("send", "%s", kim_client_error (self->client));
    self->failed = 1;
    return -1;
}

typedef struct {
    size_t line;
    const char *msg_id;
} s_unanswered_t;

static int
s_unanswered_compare (const void *left, const void *right)
{
    size_t a = ((const s_unanswered_t *) left)->line;
    size_t b = ((const s_unanswered_t *) right)->line;
    return a < b? -1: a > b? 1: 0;
}

//  Waits for the answers still due. Gives up only when a whole --timeout
//  passes without any answer.
static void
s_finish (s_send_t *self, int timeout_ms)
{
    while (!self->failed) {
        size_t before = kim_client_pending (self->client);
        int rc = kim_client_flush (self->client, timeout_ms);
        s_drain (self);
        if (rc == 0)
            break;
        if (rc != -KIM_E_TIMEOUT || kim_client_pending (self->client) == before) {
            kim_cli_error ("send", "%s", kim_client_error (self->client));
            self->failed = 1;
        }
    }
    s_drain (self);
    //  What was never answered may or may not be in the log: say so, in
    //  input order
    size_t count = zhashx_size (self->waiting);
    s_unanswered_t *unanswered = count? (s_unanswered_t *) calloc (count, sizeof *unanswered): NULL;
    size_t index = 0;
    for (void *item = zhashx_first (self->waiting); item && unanswered;
         item = zhashx_next (self->waiting)) {
        unanswered [index].line = (size_t) (uintptr_t) item;
        unanswered [index++].msg_id = (const char *) zhashx_cursor (self->waiting);
    }
    if (unanswered)
        qsort (unanswered, count, sizeof *unanswered, s_unanswered_compare);
    for (size_t i = 0; i < count && unanswered; i++)
        s_print_error (self, self->json_mode? unanswered [i].line: 0, unanswered [i].msg_id,
                       KIM_E_TIMEOUT, "no answer from the broker; sending again is safe "
                       "(the broker de-duplicates by msg_id)", "");
    free (unanswered);
    fflush (stdout);
}

//  ISO-8601 UTC "YYYY-MM-DDTHH:MM:SS[.fff]Z", or ms since the epoch.
static bool
s_parse_time (const char *text, uint64_t *ms)
{
    if (kim_cli_parse_uint (text, 1, UINT64_MAX, ms))
        return true;
    struct tm tm;
    memset (&tm, 0, sizeof tm);
    int millis = 0, consumed = 0;
    if (sscanf (text, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6 || consumed != 19)
        return false;
    const char *rest = text + consumed;
    if (*rest == '.') {
        int digits = 0;
        for (rest++; *rest >= '0' && *rest <= '9'; rest++, digits++)
            if (digits < 3)
                millis = millis * 10 + (*rest - '0');
        if (digits == 0)
            return false;
        for (; digits < 3; digits++)
            millis *= 10;
    }
    if (!streq (rest, "Z"))
        return false;
    if (tm.tm_year < 1970 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1
    ||  tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
        return false;
    int day = tm.tm_mday;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t seconds = timegm (&tm);
    if (seconds == (time_t) -1 || tm.tm_mday != day)
        return false;               //  31 February and friends
    *ms = (uint64_t) seconds * 1000 + (uint64_t) millis;
    return true;
}

static uint32_t
s_category_bit (const char *name)
{
    for (uint32_t bit = 1; bit; bit <<= 1) {
        const char *known = kim_category_name (bit);
        if (known && streq (known, name))
            return bit;
    }
    return 0;
}

//  Parses one JSON line into a header and payload. Returns 0 or -code with
//  text and path saying what is wrong.
static int
s_parse_line (const char *text, size_t size, kim_msg_t *msg, uint8_t **payload,
              size_t *payload_size, char *why, size_t why_size, char *path, size_t path_size)
{
    *payload = NULL;
    *payload_size = 0;
    path [0] = 0;
    json_error_t jerr;
    json_t *root = json_loadb (text, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf (why, why_size, "not JSON (column %d): %s", jerr.column, jerr.text);
        return -KIM_E_MALFORMED;
    }
    int rc = kim_json_message (root, msg, payload, payload_size, why, why_size, path, path_size);
    json_decref (root);
    return rc;
}

static int
s_send_json_lines (s_send_t *self, int timeout_ms)
{
    char *line = NULL;
    size_t capacity = 0;
    size_t number = 0;
    ssize_t length;
    kim_msg_t msg;
    while (!self->failed && !zsys_interrupted
    &&     (length = getline (&line, &capacity, stdin)) != -1) {
        number++;
        while (length > 0 && (line [length - 1] == '\n' || line [length - 1] == '\r'))
            line [--length] = 0;
        size_t start = strspn (line, " \t");
        if (line [start] == 0)
            continue;               //  blank lines separate nothing; skip them
        uint8_t *payload;
        size_t payload_size;
        char why [KIM_TEXT_MAX + 1], path [KIM_PATH_MAX + 1];
        int rc = s_parse_line (line, (size_t) length, &msg, &payload, &payload_size,
                               why, sizeof why, path, sizeof path);
        if (rc) {
            //  Name the msg_id if the line had one, so scripts can match it
            json_t *root = json_loadb (line, (size_t) length, 0, NULL);
            json_t *id = root? json_object_get (root, "msg_id"): NULL;
            s_print_error (self, number, json_is_string (id)? json_string_value (id): NULL,
                           rc, why, path);
            json_decref (root);
            fflush (stdout);
            continue;
        }
        s_send_one (self, number, &msg, payload, payload_size);
        free (payload);
    }
    if (self->failed && !feof (stdin))
        kim_cli_warn ("send", "stopped at line %zu: it and the lines after it were not sent",
                      number);
    if (ferror (stdin) && !zsys_interrupted) {
        kim_cli_error ("send", "cannot read stdin: %s", strerror (errno));
        self->failed = 1;
    }
    free (line);
    s_finish (self, timeout_ms);
    return 0;
}

int
kim_cmd_send (int argc, char *argv [])
{
    const char *cmd = "send";
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    kim_msg_t msg;
    kim_msg_init (&msg);
    bool json_mode = false, header_given = false;
    const char *payload_path = NULL;

    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    while (kim_cli_args_next (&args)) {
        int exit_code;
        int taken = kim_cli_args_common (cmd, &conn, &args, &exit_code);
        if (taken < 0)
            return exit_code;
        if (taken)
            continue;
        if (kim_cli_args_is (&args, "--json")) {
            json_mode = true;
            continue;
        }
        if (args.positional)
            return kim_cli_args_unknown (&args);

        //  Every other option takes a value
        const s_field_t *field = NULL;
        for (size_t i = 0; i < sizeof s_fields / sizeof s_fields [0]; i++)
            if (kim_cli_args_is (&args, s_fields [i].option))
                field = &s_fields [i];
        bool known = field
            || kim_cli_args_is (&args, "--type") || kim_cli_args_is (&args, "--category")
            || kim_cli_args_is (&args, "--deadline") || kim_cli_args_is (&args, "--priority")
            || kim_cli_args_is (&args, "--payload");
        if (!known)
            return kim_cli_args_unknown (&args);
        const char *value = kim_cli_args_value (&args);
        if (!value)
            return KIM_EXIT_USAGE;
        header_given = true;

        if (field) {
            if (strlen (value) >= field->size)
                return kim_cli_usage_error (cmd, "%s is longer than %zu bytes", args.name,
                                            field->size - 1);
            if (!*value)
                return kim_cli_usage_error (cmd, "%s must not be empty", args.name);
            snprintf ((char *) &msg + field->offset, field->size, "%s", value);
            if (streq (args.name, "--consent") || streq (args.name, "--statute")) {
                kim_basis_t basis = streq (args.name, "--consent")? KIM_BASIS_CONSENT
                                                                  : KIM_BASIS_STATUTE;
                if (msg.basis != KIM_BASIS_NONE && msg.basis != basis)
                    return kim_cli_usage_error (cmd, "give --consent or --statute, not both");
                msg.basis = basis;
            }
        }
        else
        if (kim_cli_args_is (&args, "--type")) {
            char upper [32];
            size_t i;
            for (i = 0; value [i] && i < sizeof upper - 1; i++)
                upper [i] = (char) (value [i] >= 'a' && value [i] <= 'z'? value [i] - 32
                                    : value [i] == '-'? '_': value [i]);
            upper [i] = 0;
            msg.type = kim_type_from_name (upper);
            if (msg.type == KIM_TYPE_NONE || !(kim_type_flags (msg.type) & KIM_MSG_FROM_AGENCY))
                return kim_cli_usage_error (cmd, "--type: '%s' is not a message type an "
                                            "agency sends", value);
        }
        else
        if (kim_cli_args_is (&args, "--category")) {
            uint32_t bit = s_category_bit (value);
            if (!bit)
                return kim_cli_usage_error (cmd, "--category: unknown category '%s' "
                                            "(art9, sgb8_s65, stgb203, residence_status, contact)", value);
            msg.categories |= bit;
        }
        else
        if (kim_cli_args_is (&args, "--deadline")) {
            if (!s_parse_time (value, &msg.deadline))
                return kim_cli_usage_error (cmd, "--deadline: '%s' is neither ISO-8601 UTC "
                                            "(2026-12-01T12:00:00Z) nor ms since the epoch",
                                            value);
        }
        else
        if (kim_cli_args_is (&args, "--priority")) {
            if (streq (value, "normal"))
                msg.priority = KIM_PRIORITY_NORMAL;
            else
            if (streq (value, "low"))
                msg.priority = KIM_PRIORITY_LOW;
            else
            if (streq (value, "high"))
                msg.priority = KIM_PRIORITY_HIGH;
            else
                return kim_cli_usage_error (cmd, "--priority: '%s' is not normal, low or high",
                                            value);
        }
        else
        if (kim_cli_args_is (&args, "--payload"))
            payload_path = value;
    }
    if (args.failed)
        return KIM_EXIT_USAGE;
    if (json_mode && header_given)
        return kim_cli_usage_error (cmd, "--json reads headers from stdin; header options "
                                    "and --payload go with one message without --json");
    if (!json_mode && msg.type == KIM_TYPE_NONE)
        return kim_cli_usage_error (cmd, "--type is required (or use --json)");
    //  A revocation names its consent in the header's `consent`, not as a
    //  legal basis: --consent says which one.
    if (msg.type == KIM_TYPE_CONSENT_REVOKE) {
        if (msg.basis != KIM_BASIS_CONSENT)
            return kim_cli_usage_error (cmd, "--type CONSENT_REVOKE needs --consent ID");
        memcpy (msg.grant_id, msg.consent_id, sizeof msg.grant_id);
        msg.consent_id [0] = 0;
        msg.basis = KIM_BASIS_NONE;
    }

    uint8_t *payload = NULL;
    size_t payload_size = 0;
    if (payload_path
    &&  kim_cli_read_file (cmd, payload_path, KIM_PAYLOAD_MAX, &payload, &payload_size))
        return KIM_EXIT_USAGE;

    s_send_t self = { 0 };
    self.json_mode = json_mode;
    self.waiting = zhashx_new ();
    self.client = kim_cli_connect (cmd, &conn, 0);
    if (!self.client || !self.waiting) {
        zhashx_destroy (&self.waiting);
        kim_client_destroy (&self.client);
        free (payload);
        return KIM_EXIT_USAGE;
    }
    if (json_mode)
        s_send_json_lines (&self, conn.timeout_ms);
    else {
        s_send_one (&self, 0, &msg, payload, payload_size);
        s_finish (&self, conn.timeout_ms);
    }
    free (payload);
    kim_client_destroy (&self.client);
    zhashx_destroy (&self.waiting);
    if (self.failed || zsys_interrupted)
        return KIM_EXIT_USAGE;
    return self.refused? KIM_EXIT_REJECTED: KIM_EXIT_OK;
}
