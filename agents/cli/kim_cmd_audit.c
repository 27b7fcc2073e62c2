/*  kim_cmd_audit.c — `kim audit`: verify, replay, export and read a case's
    timeline from the broker's log.

    Offline (--data DIR) it reads the broker's LMDB store read-only through
    the public log module (include/kim/kim_log.h), which is safe while the
    broker runs. Online (an auditor's --cert) it streams the log through the
    broker with QUERY, granting credit as it consumes RECORDs, so a replay
    of millions of records holds a window's worth in memory at most; the
    broker logs every such read. Both paths feed the same record callback,
    so verify/replay/export/case behave the same whichever the source.

    Output is hand-written JSON into one buffer flushed in large writes: a
    replay is meant to run at millions of records per second.
*/
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <czmq.h>
#include <jansson.h>
#include <sodium.h>

#include "kim_cmd_audit_int.h"

#define S_FLUSH_AT      (1u << 20)
#define S_WINDOW        1000

const char kim_cmd_audit_usage [] =
    "Usage: kim audit verify|replay|export|case [ID] [options]\n"
    "       kim audit trace MSG_ID SOURCE... [--sender ORG] [--json]\n"
    "\n"
    "Reads the broker's log offline (--data DIR: the broker's data folder, read-only,\n"
    "safe while the broker runs) or online through the broker (--cert of an organisation\n"
    "with the auditor role; every online read is itself logged by the broker).\n"
    "\n"
    "  verify        recompute the hash chain and check every checkpoint signature\n"
    "                against the broker's public signing key; prints the verified range,\n"
    "                or the first bad sequence number and what is wrong (exit 1)\n"
    "  replay        records as JSON lines: {\"seq\",\"time\",\"kind\",\"body\"}\n"
    "  export        JSON lines with each record's hash and raw body, plus the broker's\n"
    "                latest checkpoint: an archive that `verify --from-export` checks\n"
    "  case ID       the timeline of one case as a table: when, seq, who, what, state\n"
    "  trace MSG_ID  follow one message across several brokers' logs (federation): each\n"
    "                log is verified in full, then per broker, in the order the message\n"
    "                reached them, the records that concern it: the message, its policy\n"
    "                decision, its state records, answers, notices. Says when a log does\n"
    "                not verify, when the message is in no log, and when two logged copies\n"
    "                from the same sender differ in their header (payload hash, signature,\n"
    "                ...; `rule` is each broker's own). Exit 1 on any such finding\n"
    "\n"
    "Sources of trace, one per broker, as many as needed (at most 64):\n"
    "  --data DIR          a broker's data folder (offline; key: DIR/keys/broker.sign.pub)\n"
    "  --endpoint URL      a live broker, read as auditor with --cert (and --broker-key)\n"
    "  The options --broker-key, --cert, --timeout, --sign-key and --name after a source\n"
    "  belong to it; before the first source they hold for all.\n"
    "  --sign-key FILE     the broker's public signing key (required online); again for\n"
    "                      each key of a broker whose signing key was replaced\n"
    "  --name NAME         the broker's name as printed (default: its WELCOME online, the\n"
    "                      folder's name offline)\n"
    "  --sender ORG        only the message with this msg_id from this sender\n"
    "  --json              one JSON document: sources, records, findings, ok\n"
    "\n"
    "Options:\n"
    "  --data DIR          read the log from the broker's data folder (offline)\n"
    "  --sign-key FILE     the broker's public signing key (default DIR/keys/broker.sign.pub\n"
    "                      offline, " KIM_DEFAULT_KEY_DIR "/broker.sign.pub online); verify\n"
    "                      takes it up to 8 times: every key the broker signed with\n"
    "  --from-export FILE  verify: check an export instead of a store ('-': stdin)\n"
    "  --from SEQ --to SEQ sequence range, inclusive\n"
    "  --since T --until T time range, inclusive: ms since the epoch, YYYY-MM-DD or\n"
    "                      YYYY-MM-DDTHH:MM:SSZ (UTC)\n"
    "  --case ID           only records of this case\n"
    "  --org ORG           only records this organisation sent, received or read\n"
    "  --type NAME         a message type (REFERRAL, ...) or a record kind (message,\n"
    "                      checkpoint, decision, audit_read, purge, state)\n"
    "  --window N          online: RECORDs in flight (1..4096, default 1000)\n"
    "\n"
    "Examples:\n"
    "  kim audit verify --data ./kim-data\n"
    "  kim audit replay --data ./kim-data --case C-1 --since 2026-01-01\n"
    "  kim audit export --cert ./keys/dsb.nrw.cert_secret > log.jsonl\n"
    "  kim audit verify --from-export log.jsonl --sign-key broker.sign.pub\n"
    "  kim audit trace m-4711 --data /srv/steinfurt/kim-data --name kreis-steinfurt \\\n"
    "      --endpoint tcp://10.1.2.3:7470 --broker-key coesfeld.cert --sign-key \\\n"
    "      coesfeld.sign.pub --cert dsb.nrw.cert_secret\n";

//  --------------------------------------------------------------------------
//  Output

void
kim_audit_i_flush (kim_audit_t *self)
{
    if (self->out.size && fwrite (self->out.data, 1, self->out.size, stdout) != self->out.size)
        self->out_failed = true;
    kim_buf_reset (&self->out);
}

int
kim_audit_i_emit (kim_audit_t *self, const char *format, ...)
{
    char line [1024];
    va_list args;
    va_start (args, format);
    int len = vsnprintf (line, sizeof line, format, args);
    va_end (args);
    if (len < 0)
        return -1;
    if ((size_t) len >= sizeof line)
        len = sizeof line - 1;
    return kim_buf_append (&self->out, line, (size_t) len);
}


//  --------------------------------------------------------------------------
//  Actions

//  The keys after the first --sign-key: a broker whose signing key was
//  replaced (operations.md, Keys) signed its checkpoints with each, and
//  each checkpoint names the one that signed it. Returns 0, or -1 after
//  saying which file is no key.
int
kim_audit_i_trust_more_keys (kim_audit_t *self, kim_log_verify_t *verify, const char *const *keys,
                             size_t count, const char *where)
{
    for (size_t i = 1; i < count; i++) {
        uint8_t another [32];
        char why [4400];
        if (kim_log_load_public_key (keys [i], another, why, sizeof why)) {
            kim_cli_error (self->cmd, "%s (pass --sign-key FILE%s)", why, where);
            return -1;
        }
        kim_log_verify_add_key (verify, another);
    }
    return 0;
}

static kim_log_verify_t s_verify;

static int
s_verify_record (kim_audit_t *self, const kim_log_record_t *record)
{
    (void) self;
    return kim_log_verify_step (&s_verify, record)? KIM_EXIT_REJECTED: 0;
}

static int
s_do_verify (kim_audit_t *self)
{
    char path [4200];
    if (!self->sign_key && self->data)
        snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, self->data);
    else
        kim_str_copy (path, sizeof path, self->sign_key? self->sign_key
                                           : KIM_DEFAULT_KEY_DIR "/broker.sign.pub");
    uint8_t public_key [32];
    char why [4400];
    if (kim_log_load_public_key (path, public_key, why, sizeof why))
        return kim_cli_error (self->cmd, "%s (pass --sign-key FILE)", why);
    kim_log_verify_init (&s_verify, public_key, self->filter.from_seq, NULL);
    if (kim_audit_i_trust_more_keys (self, &s_verify, self->sign_keys, self->sign_key_count, ""))
        return KIM_EXIT_USAGE;
    int rc = kim_audit_i_each (self, s_verify_record);
    if (rc && !s_verify.failed)
        return rc;
    if (!s_verify.failed && self->have_outside)
        kim_log_verify_end (&s_verify, &self->outside,
                            self->have_outside_hash? self->outside_hash: NULL);
    if (self->body_differs && (!s_verify.failed || self->body_differs < s_verify.bad_seq)) {
        s_verify.failed = true;
        s_verify.bad_seq = self->body_differs;
        snprintf (s_verify.why, sizeof s_verify.why, "the record's body in the export is not "
                  "what its raw bytes (which the hash covers) say: it was altered");
        s_verify.records = s_verify.last = 0;
    }
    if (s_verify.failed) {
        printf ("FAILED at seq %" PRIu64 ": %s\n", s_verify.bad_seq, s_verify.why);
        if (s_verify.records)
            printf ("records %" PRIu64 "..%" PRIu64 " before it verify\n",
                    s_verify.last - s_verify.records + 1, s_verify.last);
        return KIM_EXIT_REJECTED;
    }
    //  The trusted keys' ids, as the checkpoints name them
    char key_ids [KIM_LOG_VERIFY_KEYS * (KIM_LOG_KEY_ID_SIZE + 2)] = "";
    for (size_t i = 0; i < s_verify.key_count; i++) {
        char key_id [KIM_LOG_KEY_ID_SIZE + 1];
        kim_log_key_id (s_verify.keys [i], key_id);
        size_t used = strlen (key_ids);
        snprintf (key_ids + used, sizeof key_ids - used, "%s%s", i? ", ": "", key_id);
    }
    if (s_verify.records == 0) {
        printf ("OK: no records in the range\n");
        return KIM_EXIT_OK;
    }
    uint64_t first = s_verify.last - s_verify.records + 1;
    printf ("OK: records %" PRIu64 "..%" PRIu64 " verified (%" PRIu64 " records, %" PRIu64
            " checkpoints signed by key%s %s)", first, s_verify.last, s_verify.records,
            s_verify.checkpoints, s_verify.key_count > 1? "s": "", key_ids);
    if (s_verify.sealed >= s_verify.last)
        printf ("; sealed up to the last record\n");
    else
    if (s_verify.sealed >= first)
        printf ("; sealed up to seq %" PRIu64 ", records %" PRIu64 "..%" PRIu64
                " await the next checkpoint\n", s_verify.sealed, s_verify.sealed + 1,
                s_verify.last);
    else
        printf ("; no checkpoint in the range yet: the chain is intact but not signed\n");
    if (first > 1 && !self->from_export)
        printf ("note: the range starts at seq %" PRIu64 ", anchored on that record's stored "
                "hash\n", first);
    return KIM_EXIT_OK;
}

static int
s_replay_record (kim_audit_t *self, const kim_log_record_t *record)
{
    if (kim_log_record_to_json (record, streq (self->action, "export"), &self->out))
        return kim_cli_error (self->cmd, "out of memory");
    if (self->out.size >= S_FLUSH_AT)
        kim_audit_i_flush (self);
    return self->out_failed? kim_cli_error (self->cmd, "cannot write to stdout"): 0;
}

static int
s_do_replay (kim_audit_t *self)
{
    int rc = kim_audit_i_each (self, s_replay_record);
    if (rc == 0 && streq (self->action, "export") && self->have_outside) {
        uint8_t body [KIM_LOG_CHECKPOINT_SIZE];
        char hex [2 * KIM_LOG_CHECKPOINT_SIZE + 1];
        kim_log_checkpoint_encode (&self->outside, body);
        sodium_bin2hex (hex, sizeof hex, body, sizeof body);
        kim_audit_i_emit (self, "{\"checkpoint_file\":\"%s\"}\n", hex);
    }
    kim_audit_i_flush (self);
    if (fflush (stdout) || self->out_failed)
        return kim_cli_error (self->cmd, "cannot write to stdout");
    return rc;
}

void
kim_audit_i_time_text (uint64_t time_ms, char *out, size_t size)
{
    time_t seconds = (time_t) (time_ms / 1000);
    struct tm tm;
    gmtime_r (&seconds, &tm);
    strftime (out, size, "%Y-%m-%d %H:%M:%S", &tm);
}

static int
s_case_record (kim_audit_t *self, const kim_log_record_t *record)
{
    char when [32], who [KIM_ORG_MAX + 16] = "", what [160] = "", state [160] = "";
    char a [KIM_ORG_MAX + 1], b [KIM_ORG_MAX + 1], c [KIM_ID_MAX + 1];
    const uint8_t *body = record->body;
    size_t size = record->body_size;
    kim_audit_i_time_text (record->time_ms, when, sizeof when);
#define S_STR(key, out) kim_log_body_str (body, size, key, out, sizeof out)
    switch (record->kind) {
        case KIM_LOG_MESSAGE:
            if (!S_STR ("sender", who))
                snprintf (who, sizeof who, "?");
            if (!S_STR ("type", a))
                snprintf (a, sizeof a, "?");
            kim_str_copy (what, sizeof what, a);
            if (S_STR ("recipient", b))
                snprintf (what + strlen (what), sizeof what - strlen (what), " to %s", b);
            if (S_STR ("referral_id", c))
                snprintf (state, sizeof state, "referral %s", c);
            break;
        case KIM_LOG_STATE:
            snprintf (who, sizeof who, "(broker)");
            if (S_STR ("referral_id", c))
                snprintf (what, sizeof what, "referral %s", c);
            else
                snprintf (what, sizeof what, "case");
            if (S_STR ("from", a) && S_STR ("to", b))
                snprintf (state, sizeof state, "%s -> %s", a, b);
            if (S_STR ("lead_to", b)) {
                size_t used = strlen (state);
                snprintf (state + used, sizeof state - used, "%slead %s%s%s", used? "; ": "",
                          S_STR ("lead_from", a)? a: "", S_STR ("lead_from", a)? " -> ": "", b);
            }
            break;
        case KIM_LOG_AUDIT_READ:
            if (!S_STR ("reader", who))
                snprintf (who, sizeof who, "?");
            snprintf (what, sizeof what, "read the log (%s)",
                      S_STR ("query_id", c)? c: "query");
            break;
        default: {
            const char *kind = kim_log_kind_name (record->kind);
            snprintf (who, sizeof who, "(broker)");
            kim_str_copy (what, sizeof what, kind? kind: "record");
            if (S_STR ("reason", a))
                kim_str_copy (state, sizeof state, a);
        }
    }
#undef S_STR
    kim_audit_i_emit (self, "%-19s %8" PRIu64 "  %-22s %-40s %s\n", when, record->seq, who,
                      what, state);
    if (self->out.size >= S_FLUSH_AT)
        kim_audit_i_flush (self);
    return 0;
}

static int
s_do_case (kim_audit_t *self)
{
    kim_audit_i_emit (self, "case %s\n%-19s %8s  %-22s %-40s %s\n", self->filter.case_id,
                      "WHEN (UTC)", "SEQ", "WHO", "WHAT", "STATE");
    int rc = kim_audit_i_each (self, s_case_record);
    kim_audit_i_flush (self);
    fflush (stdout);
    return rc;
}


//  --------------------------------------------------------------------------
//  Options

//  Milliseconds since the epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).
static bool
s_parse_time (const char *text, bool end_of_day, uint64_t *ms)
{
    if (kim_cli_parse_uint (text, 0, UINT64_MAX, ms))
        return true;
    struct tm tm;
    memset (&tm, 0, sizeof tm);
    const char *rest = strptime (text, "%Y-%m-%dT%H:%M:%S", &tm);
    bool date_only = false;
    if (!rest) {
        memset (&tm, 0, sizeof tm);
        rest = strptime (text, "%Y-%m-%d", &tm);
        date_only = true;
    }
    if (!rest || (*rest && strcmp (rest, "Z") != 0))
        return false;
    time_t seconds = timegm (&tm);
    if (seconds < 0)
        return false;
    *ms = (uint64_t) seconds * 1000;
    if (date_only && end_of_day)
        *ms += 24 * 3600 * 1000 - 1;
    return true;
}

static int
s_audit (kim_audit_t *self, kim_audit_trace_t *trace, int argc, char *argv [])
{
    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    kim_log_filter_t *f = &self->filter;
    uint64_t number;
    const char *trace_id = NULL;
    while (kim_cli_args_next (&args)) {
        const char *value = NULL;
        if (kim_cli_args_help (&args)) {
            kim_cli_help (stdout, "audit");
            return KIM_EXIT_OK;
        }
        if (args.positional) {
            if (!self->action)
                self->action = args.arg;
            else
            if (streq (self->action, "case") && !self->case_id)
                self->case_id = args.arg;
            else
            if (streq (self->action, "trace") && !trace_id)
                trace_id = args.arg;
            else
                return kim_cli_args_unknown (&args);
            continue;
        }
        if (self->action && streq (self->action, "trace")) {
            int taken = kim_audit_trace_option (trace, self, &args);
            if (taken < 0)
                return KIM_EXIT_USAGE;
            if (taken)
                continue;
        }
        int conn = kim_cli_conn_option (&self->conn, &args);
        if (conn < 0)
            return KIM_EXIT_USAGE;
        if (conn > 0)
            continue;
        if (!kim_cli_args_is (&args, "--data") && !kim_cli_args_is (&args, "--sign-key")
        &&  !kim_cli_args_is (&args, "--from-export") && !kim_cli_args_is (&args, "--from")
        &&  !kim_cli_args_is (&args, "--to") && !kim_cli_args_is (&args, "--since")
        &&  !kim_cli_args_is (&args, "--until") && !kim_cli_args_is (&args, "--case")
        &&  !kim_cli_args_is (&args, "--org") && !kim_cli_args_is (&args, "--type")
        &&  !kim_cli_args_is (&args, "--window"))
            return kim_cli_args_unknown (&args);
        value = kim_cli_args_value (&args);
        if (!value)
            return KIM_EXIT_USAGE;
        if (kim_cli_args_is (&args, "--data"))
            self->data = value;
        else
        if (kim_cli_args_is (&args, "--sign-key")) {
            if (self->sign_key_count == KIM_LOG_VERIFY_KEYS)
                return kim_cli_usage_error (self->cmd, "--sign-key: at most %d keys",
                                            KIM_LOG_VERIFY_KEYS);
            self->sign_keys [self->sign_key_count++] = value;
            self->sign_key = self->sign_keys [0];
        }
        else
        if (kim_cli_args_is (&args, "--from-export"))
            self->from_export = value;
        else
        if (kim_cli_args_is (&args, "--from") || kim_cli_args_is (&args, "--to")) {
            if (!kim_cli_parse_uint (value, 1, UINT64_MAX, &number))
                return kim_cli_usage_error (self->cmd, "%s: '%s' is not a sequence number",
                                            args.name, value);
            *(kim_cli_args_is (&args, "--from")? &f->from_seq: &f->to_seq) = number;
        }
        else
        if (kim_cli_args_is (&args, "--since") || kim_cli_args_is (&args, "--until")) {
            bool until = kim_cli_args_is (&args, "--until");
            if (!s_parse_time (value, until, &number))
                return kim_cli_usage_error (self->cmd, "%s: '%s' is not a time (ms since the "
                                            "epoch, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)",
                                            args.name, value);
            *(until? &f->to_time: &f->from_time) = number;
        }
        else
        if (kim_cli_args_is (&args, "--case")) {
            if (!kim_id_valid (value))
                return kim_cli_usage_error (self->cmd, "--case: '%s' is not an id", value);
            kim_str_copy (f->case_id, sizeof f->case_id, value);
        }
        else
        if (kim_cli_args_is (&args, "--org")) {
            if (!kim_org_valid (value))
                return kim_cli_usage_error (self->cmd, "--org: '%s' is not an org id", value);
            kim_str_copy (f->org, sizeof f->org, value);
        }
        else
        if (kim_cli_args_is (&args, "--type")) {
            f->kind = kim_log_kind_from_name (value);
            if (kim_type_from_name (value) != KIM_TYPE_NONE) {
                kim_str_copy (f->type, sizeof f->type, value);
                f->kind = KIM_LOG_MESSAGE;
            }
            else
            if (!f->kind)
                return kim_cli_usage_error (self->cmd, "--type: '%s' is neither a message "
                                            "type nor a record kind", value);
        }
        else {
            if (!kim_cli_parse_uint (value, 1, KIM_WINDOW_MAX, &number))
                return kim_cli_usage_error (self->cmd, "--window: must be 1..%d", KIM_WINDOW_MAX);
            self->window = (uint32_t) number;
        }
    }
    if (args.failed)
        return KIM_EXIT_USAGE;
    if (!self->action)
        return kim_cli_usage_error (self->cmd, "say what to do: verify, replay, export, case or "
                                    "trace");
    if (f->from_seq && f->to_seq && f->from_seq > f->to_seq)
        return kim_cli_usage_error (self->cmd, "--from is after --to");
    int rc;
    if (streq (self->action, "trace")) {
        if (!trace_id || !kim_id_valid (trace_id))
            return kim_cli_usage_error (self->cmd, "trace needs a message id: kim audit trace "
                                        "MSG_ID --data DIR ...");
        if (kim_audit_trace_source_count (trace) == 0)
            return kim_cli_usage_error (self->cmd, "trace needs the logs to read: --data DIR "
                                        "or --endpoint URL, once per broker");
        if (self->data || self->from_export || f->from_seq || f->to_seq || f->from_time
        ||  f->to_time || f->case_id [0] || f->org [0] || f->kind)
            return kim_cli_usage_error (self->cmd, "trace reads and verifies whole logs: give "
                                        "only sources after `trace MSG_ID`");
        rc = kim_audit_trace_run (trace, self, trace_id);
    }
    else
    if (streq (self->action, "verify")) {
        if (f->case_id [0] || f->org [0] || f->type [0] || f->kind || f->from_time || f->to_time)
            return kim_cli_usage_error (self->cmd, "verify checks the whole chain: only --from "
                                        "and --to narrow it");
        rc = s_do_verify (self);
    }
    else
    if (self->from_export)
        return kim_cli_usage_error (self->cmd, "--from-export goes with verify");
    else
    if (streq (self->action, "replay") || streq (self->action, "export"))
        rc = s_do_replay (self);
    else
    if (streq (self->action, "case")) {
        if (!self->case_id || !kim_id_valid (self->case_id))
            return kim_cli_usage_error (self->cmd, "case needs a case id: kim audit case ID");
        kim_str_copy (f->case_id, sizeof f->case_id, self->case_id);
        rc = s_do_case (self);
    }
    else
        return kim_cli_usage_error (self->cmd, "unknown action '%s' (verify, replay, export, "
                                    "case, trace)", self->action);
    return rc;
}

int
kim_cmd_audit (int argc, char *argv [])
{
    kim_audit_t self;
    memset (&self, 0, sizeof self);
    self.cmd = "audit";
    self.window = S_WINDOW;
    kim_cli_conn_init (&self.conn);
    kim_buf_init (&self.out);
    kim_audit_trace_t *trace = kim_audit_trace_new ();
    int rc = trace? s_audit (&self, trace, argc, argv): kim_cli_error (self.cmd, "out of memory");
    kim_audit_trace_destroy (&trace);
    kim_buf_free (&self.out);
    return rc;
}
