/*  kim_cmd_audit_trace.c — `kim audit trace`: one message across several
    brokers' logs. Part of the audit command (kim_cmd_audit_int.h).
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

//  --------------------------------------------------------------------------
//  Trace: one message across several brokers' logs
//
//  With federation a message is logged by every broker it passes: the
//  sender's broker, and each far broker that a link forwarded it to, with
//  its header unchanged. `trace` reads each log in full (a filtered read
//  could not be verified), verifies its chain, and keeps the few records
//  that concern the message: the message itself, its policy decision, the
//  state records it caused, and the messages that answer it or, for a
//  REFERRAL, belong to its referral. Copies of the message from the same
//  sender must carry the same header in every log; `rule` alone differs,
//  because each broker's own policy sets it.

#define S_TRACE_SOURCES_MAX     64
#define S_TRACE_MATCHES_MAX     100000  //  records kept over all logs
#define S_TRACE_SEQS_MAX        1024    //  message seqs per log that state records name

typedef struct {
    const char *data;                   //  offline source, or NULL
    kim_cli_conn_t conn;                //  online source
    const char *sign_key;               //  the first --sign-key
    const char *sign_keys [KIM_LOG_VERIFY_KEYS];
    size_t sign_key_count;
    bool own_keys;                      //  a --sign-key after it: not those before
    const char *name;                   //  --name
    char label [KIM_ORG_MAX + 8];       //  the broker's name as printed
    //  Outcome
    bool read_failed;                   //  the log could not be read to its end
    bool checked_end;                   //  the checkpoint held outside the log was checked
    kim_log_verify_t verify;
    uint64_t matches;
    uint64_t first_time;                //  of its first matching record
} s_trace_source_t;

typedef struct {
    size_t source;
    uint64_t seq;
    uint64_t time_ms;
    uint8_t kind;
    const char *role;                   //  message, decision, state, answer, notice, ...
    json_t *body;
} s_trace_match_t;

struct _kim_audit_trace_t {
    const char *msg_id;
    const char *sender;                 //  --sender, or NULL
    bool json;
    s_trace_source_t sources [S_TRACE_SOURCES_MAX];
    size_t source_count;
    s_trace_match_t *matches;
    size_t match_count;
    size_t match_capacity;
    bool truncated;
    //  While one log is read
    size_t current;
    char referral_id [KIM_ID_MAX + 1];  //  of the traced REFERRAL in this log
    uint64_t seqs [S_TRACE_SEQS_MAX];   //  matched message records in this log
    size_t seq_count;
};

static json_t *
s_trace_body (const kim_log_record_t *record)
{
    kim_buf_t buf;
    kim_buf_init (&buf);
    json_t *body = NULL;
    if (kim_log_body_to_json (record->body, record->body_size, &buf) == 0)
        body = json_loadb ((const char *) buf.data, buf.size, 0, NULL);
    kim_buf_free (&buf);
    return body? body: json_object ();
}

static const char *
s_trace_str (json_t *body, const char *key)
{
    const char *value = json_string_value (json_object_get (body, key));
    return value? value: "";
}

static int
s_trace_keep (kim_audit_trace_t *trace, const kim_log_record_t *record, const char *role,
              json_t *body)
{
    if (trace->match_count == S_TRACE_MATCHES_MAX) {
        trace->truncated = true;
        json_decref (body);
        return 0;
    }
    if (trace->match_count == trace->match_capacity) {
        size_t capacity = trace->match_capacity? 2 * trace->match_capacity: 64;
        s_trace_match_t *bigger = (s_trace_match_t *) realloc (trace->matches,
                                                               capacity * sizeof *bigger);
        if (!bigger) {
            json_decref (body);
            return kim_cli_error ("audit", "out of memory");
        }
        trace->matches = bigger;
        trace->match_capacity = capacity;
    }
    s_trace_match_t *match = &trace->matches [trace->match_count++];
    match->source = trace->current;
    match->seq = record->seq;
    match->time_ms = record->time_ms;
    match->kind = record->kind;
    match->role = role;
    match->body = body;
    s_trace_source_t *source = &trace->sources [trace->current];
    if (source->matches++ == 0)
        source->first_time = record->time_ms;
    if (record->kind == KIM_LOG_MESSAGE && trace->seq_count < S_TRACE_SEQS_MAX)
        trace->seqs [trace->seq_count++] = record->seq;
    return 0;
}

static int
s_trace_record (kim_audit_t *self, const kim_log_record_t *record)
{
    kim_audit_trace_t *trace = self->trace;
    s_trace_source_t *source = &trace->sources [trace->current];
    if (!source->verify.failed)
        kim_log_verify_step (&source->verify, record);
    if (record->kind == KIM_LOG_CHECKPOINT || record->kind == KIM_LOG_AUDIT_READ
    ||  record->body_size == 0)
        return 0;
    //  Cheap string lookups first: most records concern other messages
    char msg_id [KIM_ID_MAX + 1] = "", ref_msg_id [KIM_ID_MAX + 1] = "";
    char referral_id [KIM_ID_MAX + 1] = "", sender [KIM_ORG_MAX + 1] = "";
    char type [KIM_CODE_MAX + 1] = "";
    const uint8_t *body = record->body;
    size_t size = record->body_size;
    kim_log_body_str (body, size, "msg_id", msg_id, sizeof msg_id);
    kim_log_body_str (body, size, "ref_msg_id", ref_msg_id, sizeof ref_msg_id);
    kim_log_body_str (body, size, "referral_id", referral_id, sizeof referral_id);
    kim_log_body_str (body, size, "sender", sender, sizeof sender);
    kim_log_body_str (body, size, "type", type, sizeof type);
    bool own = streq (msg_id, trace->msg_id) && (!trace->sender || streq (sender, trace->sender));
    bool names_it = streq (ref_msg_id, trace->msg_id)
                 || (trace->referral_id [0] && streq (referral_id, trace->referral_id));
    bool notice = kim_type_flags (kim_type_from_name (type)) == KIM_MSG_FROM_BROKER;
    const char *role = NULL;
    switch (record->kind) {
        case KIM_LOG_MESSAGE:
            if (own) {
                role = "message";
                if (streq (type, "REFERRAL") && referral_id [0])
                    kim_str_copy (trace->referral_id, sizeof trace->referral_id, referral_id);
            }
            else
            if (names_it)
                role = notice? "notice": "answer";
            break;
        case KIM_LOG_DECISION:
            role = own? "decision": names_it? "decision": NULL;
            break;
        case KIM_LOG_STATE:
            if (trace->referral_id [0] && streq (referral_id, trace->referral_id))
                role = "state";
            else
            if (trace->seq_count) {
                //  A state record names the message that caused it by seq
                uint64_t seq = 0;
                json_t *json = s_trace_body (record);
                json_t *value = json_object_get (json, "seq");
                if (json_is_integer (value))
                    seq = (uint64_t) json_integer_value (value);
                for (size_t i = 0; seq && i < trace->seq_count; i++)
                    if (trace->seqs [i] == seq)
                        return s_trace_keep (trace, record, "state", json);
                json_decref (json);
            }
            break;
        default:
            if (own || names_it) {
                const char *name = kim_log_kind_name (record->kind);
                role = name? name: "record";
            }
    }
    return role? s_trace_keep (trace, record, role, s_trace_body (record)): 0;
}

//  Reads and verifies one source. Returns 0, or the exit code of an error
//  that stops the whole trace (a usage error).
static int
s_trace_source (kim_audit_t *self, kim_audit_trace_t *trace, size_t index)
{
    s_trace_source_t *source = &trace->sources [index];
    trace->current = index;
    trace->referral_id [0] = 0;
    trace->seq_count = 0;
    self->data = source->data;
    self->conn = source->conn;
    self->have_outside = false;
    self->have_outside_hash = false;
    self->welcome_broker [0] = 0;
    memset (&self->filter, 0, sizeof self->filter);

    char path [4200], why [4400];
    if (source->sign_key)
        kim_str_copy (path, sizeof path, source->sign_key);
    else
    if (source->data)
        snprintf (path, sizeof path, "%s/" KIM_LOG_SIGN_PUBLIC, source->data);
    else
        return kim_cli_usage_error (self->cmd, "the broker at %s needs --sign-key FILE (its "
                                    "public signing key) to verify its log",
                                    source->conn.endpoint);
    uint8_t public_key [32];
    if (kim_log_load_public_key (path, public_key, why, sizeof why))
        return kim_cli_error (self->cmd, "%s (pass --sign-key FILE after the source)", why);
    kim_log_verify_init (&source->verify, public_key, 1, NULL);
    if (kim_audit_i_trust_more_keys (self, &source->verify, source->sign_keys,
                                     source->sign_key_count, " after the source"))
        return KIM_EXIT_USAGE;
    int rc = kim_audit_i_each (self, s_trace_record);
    if (rc && !source->verify.failed)
        source->read_failed = true;
    if (!source->verify.failed && !source->read_failed && self->have_outside) {
        kim_log_verify_end (&source->verify, &self->outside,
                            self->have_outside_hash? self->outside_hash: NULL);
        source->checked_end = true;
    }
    //  The broker's name: --name, the WELCOME, or the data folder's
    if (source->name)
        kim_str_copy (source->label, sizeof source->label, source->name);
    else
    if (self->welcome_broker [0])
        kim_str_copy (source->label, sizeof source->label, self->welcome_broker);
    else {
        //  <...>/NAME/data or <...>/NAME: the folder that names the broker
        char folder [4200];
        kim_str_copy (folder, sizeof folder, source->data? source->data: source->conn.endpoint);
        size_t length = strlen (folder);
        while (length > 1 && folder [length - 1] == '/')
            folder [--length] = 0;
        char *base = strrchr (folder, '/');
        if (base && streq (base + 1, "data") && base > folder) {
            *base = 0;
            base = strrchr (folder, '/');
        }
        kim_str_copy (source->label, sizeof source->label, base? base + 1: folder);
    }
    //  Two sources of one name get a number each, so lines stay apart
    for (size_t i = 0; i < index; i++)
        if (streq (trace->sources [i].label, source->label)) {
            size_t used = strnlen (source->label, sizeof source->label - 5);
            snprintf (source->label + used, sizeof source->label - used, "#%zu", index + 1);
            break;
        }
    return 0;
}

//  The fields of two logged copies of one message that differ; `rule` is
//  each broker's own. Appends their names to `out` (a JSON array).
static void
s_trace_diff (json_t *a, json_t *b, json_t *out)
{
    const char *key;
    json_t *value;
    json_object_foreach (a, key, value)
        if (!streq (key, "rule") && !json_equal (value, json_object_get (b, key)))
            json_array_append_new (out, json_string (key));
    json_object_foreach (b, key, value)
        if (!streq (key, "rule") && !json_object_get (a, key))
            json_array_append_new (out, json_string (key));
}

static int
s_trace_compare_matches (const void *left, const void *right)
{
    const s_trace_match_t *a = (const s_trace_match_t *) left;
    const s_trace_match_t *b = (const s_trace_match_t *) right;
    if (a->source != b->source)
        return a->source < b->source? -1: 1;
    return a->seq < b->seq? -1: a->seq > b->seq;
}

static void
s_trace_print_source (const kim_audit_trace_t *trace, size_t index, json_t *sources)
{
    const s_trace_source_t *source = &trace->sources [index];
    const kim_log_verify_t *v = &source->verify;
    const char *where = source->data? source->data: source->conn.endpoint;
    bool verified = !v->failed && !source->read_failed;
    if (sources) {
        json_t *entry = json_pack ("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:b}",
                                   "broker", source->label, "source", where,
                                   "read", source->data? "offline": "online",
                                   "verified", verified, "records", (json_int_t) v->records,
                                   "last_seq", (json_int_t) v->last,
                                   "checkpoints", (json_int_t) v->checkpoints,
                                   "sealed_to", (json_int_t) v->sealed,
                                   "end_checked", source->checked_end);
        json_object_set_new (entry, "matches", json_integer ((json_int_t) source->matches));
        if (v->failed) {
            json_object_set_new (entry, "bad_seq", json_integer ((json_int_t) v->bad_seq));
            json_object_set_new (entry, "why", json_string (v->why));
        }
        else
        if (source->read_failed)
            json_object_set_new (entry, "why", json_string ("the log could not be read to "
                                                            "its end"));
        json_array_append_new (sources, entry);
        return;
    }
    printf ("  [%zu] %-24s %s\n", index + 1, source->label, where);
    if (v->failed)
        printf ("      LOG DOES NOT VERIFY: FAILED at seq %" PRIu64 ": %s\n"
                "      its records below are not proven\n", v->bad_seq, v->why);
    else
    if (source->read_failed)
        printf ("      LOG NOT VERIFIED: it could not be read to its end (see above)\n");
    else
    if (v->records == 0)
        printf ("      verified: the log is empty\n");
    else
        printf ("      verified: records 1..%" PRIu64 ", %" PRIu64 " checkpoint%s, sealed up to "
                "seq %" PRIu64 "%s\n", v->last, v->checkpoints, v->checkpoints == 1? "": "s",
                v->sealed, source->checked_end? ", matches the checkpoint file": "");
    if (source->matches == 0)
        printf ("      the message is not in this log\n");
}

static void
s_trace_print_match (kim_audit_t *self, const kim_audit_trace_t *trace,
                     const s_trace_match_t *match)
{
    char when [32], what [200], parties [2 * KIM_ORG_MAX + 8];
    kim_audit_i_time_text (match->time_ms, when, sizeof when);
    json_t *body = match->body;
    const char *type = s_trace_str (body, "type");
    const char *from = s_trace_str (body, "sender");
    const char *to = s_trace_str (body, "recipient");
    snprintf (parties, sizeof parties, "%s -> %s", *from? from: "-", *to? to: "-");
    if (match->kind == KIM_LOG_MESSAGE)
        snprintf (what, sizeof what, "%s %s%s%s", type, s_trace_str (body, "msg_id"),
                  *s_trace_str (body, "rule")? " rule ": "", s_trace_str (body, "rule"));
    else
    if (match->kind == KIM_LOG_STATE && *s_trace_str (body, "lead_to"))
        snprintf (what, sizeof what, "case %s lead %s -> %s", s_trace_str (body, "case_id"),
                  s_trace_str (body, "lead_from"), s_trace_str (body, "lead_to"));
    else
    if (match->kind == KIM_LOG_STATE)
        snprintf (what, sizeof what, "%s%s %s -> %s", *s_trace_str (body, "referral_id")
                  ? "referral ": "case ", *s_trace_str (body, "referral_id")
                  ? s_trace_str (body, "referral_id"): s_trace_str (body, "case_id"),
                  s_trace_str (body, "from"), s_trace_str (body, "to"));
    else
    if (match->kind == KIM_LOG_DECISION)
        snprintf (what, sizeof what, "%s %s rule %s: %s", s_trace_str (body, "decision"),
                  s_trace_str (body, "code"), s_trace_str (body, "rule"),
                  s_trace_str (body, "reason"));
    else
        snprintf (what, sizeof what, "%s", s_trace_str (body, "reason"));
    const char *kind = kim_log_kind_name (match->kind);
    kim_audit_i_emit (self, "%-19s %-18s %8" PRIu64 "  %-8s %-8s %-44s %s\n", when,
                      trace->sources [match->source].label, match->seq, kind? kind: "?",
                      match->role, what, match->kind == KIM_LOG_STATE? "": parties);
}

static int
s_do_trace (kim_audit_t *self, kim_audit_trace_t *trace)
{
    self->trace = trace;
    //  One folder given twice would show as two copies that agree
    for (size_t i = 0; i < trace->source_count; i++)
        for (size_t j = 0; j < i; j++) {
            const char *a = trace->sources [i].data, *b = trace->sources [j].data;
            char real_a [PATH_MAX], real_b [PATH_MAX];
            if (a && b && realpath (a, real_a) && realpath (b, real_b) && streq (real_a, real_b))
                return kim_cli_usage_error (self->cmd, "%s is given twice: one log counts once",
                                            a);
        }
    for (size_t i = 0; i < trace->source_count; i++) {
        int rc = s_trace_source (self, trace, i);
        if (rc)
            return rc;
    }
    if (trace->match_count)
        qsort (trace->matches, trace->match_count, sizeof trace->matches [0],
               s_trace_compare_matches);
    //  Brokers in the order the message reached them
    size_t order [S_TRACE_SOURCES_MAX];
    for (size_t i = 0; i < trace->source_count; i++)
        order [i] = i;
    for (size_t i = 1; i < trace->source_count; i++)
        for (size_t j = i; j > 0; j--) {
            const s_trace_source_t *a = &trace->sources [order [j - 1]];
            const s_trace_source_t *b = &trace->sources [order [j]];
            bool later = (a->matches == 0 && b->matches)
                      || (a->matches && b->matches && a->first_time > b->first_time);
            if (!later)
                break;
            size_t swap = order [j];
            order [j] = order [j - 1];
            order [j - 1] = swap;
        }
    //  Findings: logs that do not verify, copies whose headers differ
    json_t *findings = json_array ();
    size_t failed_logs = 0, copies = 0, differing = 0;
    for (size_t i = 0; i < trace->source_count; i++)
        if (trace->sources [i].verify.failed || trace->sources [i].read_failed)
            failed_logs++;
    for (size_t i = 0; i < trace->match_count; i++) {
        s_trace_match_t *a = &trace->matches [i];
        if (strcmp (a->role, "message") != 0)
            continue;
        copies++;
        //  Compared with the first copy from the same sender
        for (size_t j = 0; j < i; j++) {
            s_trace_match_t *b = &trace->matches [j];
            if (strcmp (b->role, "message") != 0
            ||  !streq (s_trace_str (a->body, "sender"), s_trace_str (b->body, "sender")))
                continue;
            json_t *fields = json_array ();
            s_trace_diff (b->body, a->body, fields);
            if (json_array_size (fields)) {
                differing++;
                json_array_append_new (findings, json_pack (
                    "{s:s, s:s, s:s, s:I, s:s, s:I, s:o}", "finding", "header_differs",
                    "sender", s_trace_str (a->body, "sender"),
                    "broker_a", trace->sources [b->source].label, "seq_a", (json_int_t) b->seq,
                    "broker_b", trace->sources [a->source].label, "seq_b", (json_int_t) a->seq,
                    "fields", fields));
            }
            else
                json_decref (fields);
            break;
        }
    }
    for (size_t i = 0; i < trace->source_count; i++) {
        s_trace_source_t *source = &trace->sources [i];
        if (source->verify.failed || source->read_failed)
            json_array_append_new (findings, json_pack (
                "{s:s, s:s, s:I, s:s}", "finding", "log_does_not_verify", "broker",
                source->label, "bad_seq", (json_int_t) source->verify.bad_seq,
                "why", source->verify.failed? source->verify.why: "not read to its end"));
    }
    if (copies == 0)
        json_array_append_new (findings, json_pack ("{s:s}", "finding", "not_found"));
    bool ok = failed_logs == 0 && differing == 0 && copies > 0;

    if (trace->json) {
        json_t *root = json_pack ("{s:s, s:b}", "msg_id", trace->msg_id, "ok", ok);
        if (trace->sender)
            json_object_set_new (root, "sender", json_string (trace->sender));
        json_t *sources = json_array (), *records = json_array ();
        for (size_t k = 0; k < trace->source_count; k++)
            s_trace_print_source (trace, order [k], sources);
        for (size_t k = 0; k < trace->source_count; k++)
            for (size_t i = 0; i < trace->match_count; i++) {
                s_trace_match_t *match = &trace->matches [i];
                if (match->source != order [k])
                    continue;
                const char *kind = kim_log_kind_name (match->kind);
                json_t *entry = json_pack ("{s:s, s:I, s:I, s:s, s:s, s:O}",
                                           "broker", trace->sources [match->source].label,
                                           "seq", (json_int_t) match->seq,
                                           "time", (json_int_t) match->time_ms,
                                           "kind", kind? kind: "record", "role", match->role,
                                           "body", match->body);
                json_array_append_new (records, entry);
            }
        json_object_set_new (root, "sources", sources);
        json_object_set_new (root, "records", records);
        json_object_set_new (root, "findings", findings);
        if (trace->truncated)
            json_object_set_new (root, "truncated", json_true ());
        char *text = json_dumps (root, JSON_COMPACT);
        if (text && kim_buf_append (&self->out, text, strlen (text)))
            self->out_failed = true;
        free (text);
        json_decref (root);
        kim_audit_i_emit (self, "\n");
    }
    else {
        kim_audit_i_emit (self, "trace of %s%s%s over %zu logs\n", trace->msg_id,
                          trace->sender? " from ": "", trace->sender? trace->sender: "",
                          trace->source_count);
        kim_audit_i_flush (self);
        for (size_t k = 0; k < trace->source_count; k++)
            s_trace_print_source (trace, order [k], NULL);
        fflush (stdout);
        if (trace->match_count)
            kim_audit_i_emit (self, "\n%-19s %-18s %8s  %-8s %-8s %-44s %s\n", "WHEN (UTC)",
                              "BROKER", "SEQ", "KIND", "ROLE", "WHAT", "SENDER -> RECIPIENT");
        for (size_t k = 0; k < trace->source_count; k++)
            for (size_t i = 0; i < trace->match_count; i++)
                if (trace->matches [i].source == order [k])
                    s_trace_print_match (self, trace, &trace->matches [i]);
        kim_audit_i_emit (self, "\n");
        size_t index;
        json_t *finding;
        json_array_foreach (findings, index, finding) {
            const char *name = s_trace_str (finding, "finding");
            if (streq (name, "header_differs")) {
                json_t *fields = json_object_get (finding, "fields");
                char list [512] = "";
                size_t f;
                json_t *field;
                json_array_foreach (fields, f, field) {
                    size_t used = strlen (list);
                    snprintf (list + used, sizeof list - used, "%s%s", f? ", ": "",
                              json_string_value (field));
                }
                json_t *seq_a = json_object_get (finding, "seq_a");
                json_t *seq_b = json_object_get (finding, "seq_b");
                kim_audit_i_emit (self, "HEADER DIFFERS: %s from %s: %s seq %" PRIu64 " and %s "
                                  "seq %" PRIu64 " differ in %s\n", trace->msg_id,
                                  s_trace_str (finding, "sender"),
                                  s_trace_str (finding, "broker_a"),
                                  (uint64_t) json_integer_value (seq_a),
                                  s_trace_str (finding, "broker_b"),
                                  (uint64_t) json_integer_value (seq_b), list);
            }
            else
            if (streq (name, "log_does_not_verify"))
                kim_audit_i_emit (self, "LOG DOES NOT VERIFY: %s\n",
                                  s_trace_str (finding, "broker"));
            else
                kim_audit_i_emit (self, "NOT FOUND: %s is in none of the %zu logs\n", trace->msg_id,
                                  trace->source_count);
        }
        if (trace->truncated)
            kim_audit_i_emit (self, "note: more than %d records matched; the rest are not shown\n",
                              S_TRACE_MATCHES_MAX);
        if (ok)
            kim_audit_i_emit (self, "OK: %zu copies of %s in %zu logs, every log verifies, the "
                              "headers agree\n", copies, trace->msg_id, trace->source_count);
        json_decref (findings);
    }
    kim_audit_i_flush (self);
    if (fflush (stdout) || self->out_failed)
        return kim_cli_error (self->cmd, "cannot write to stdout");
    return ok? KIM_EXIT_OK: KIM_EXIT_REJECTED;
}

//  The options of `trace`: each --data or --endpoint opens a source, and
//  the key options after it belong to it; given before any source they
//  are the defaults of every source. Returns 1 when it took the option, 0
//  when it is not one of these, or -1 after a usage error.
static int
s_trace_option (kim_audit_t *self, kim_audit_trace_t *trace, kim_cli_args_t *args)
{
    bool opens = kim_cli_args_is (args, "--data") || kim_cli_args_is (args, "--endpoint");
    if (!opens && !kim_cli_args_is (args, "--broker-key") && !kim_cli_args_is (args, "--cert")
    &&  !kim_cli_args_is (args, "--timeout") && !kim_cli_args_is (args, "--sign-key")
    &&  !kim_cli_args_is (args, "--name") && !kim_cli_args_is (args, "--sender")
    &&  !kim_cli_args_is (args, "--json"))
        return 0;
    if (kim_cli_args_is (args, "--json")) {
        trace->json = true;
        return 1;
    }
    if (opens) {
        if (trace->source_count == S_TRACE_SOURCES_MAX) {
            kim_cli_usage_error (self->cmd, "at most %d logs", S_TRACE_SOURCES_MAX);
            return -1;
        }
        s_trace_source_t *source = &trace->sources [trace->source_count++];
        memset (source, 0, sizeof *source);
        source->conn = self->conn;
        source->sign_key = self->sign_key;
        memcpy (source->sign_keys, self->sign_keys, sizeof source->sign_keys);
        source->sign_key_count = self->sign_key_count;
    }
    s_trace_source_t *source = trace->source_count
                             ? &trace->sources [trace->source_count - 1]: NULL;
    if (!kim_cli_args_is (args, "--data") && !kim_cli_args_is (args, "--sign-key")
    &&  !kim_cli_args_is (args, "--name") && !kim_cli_args_is (args, "--sender"))
        return kim_cli_conn_option (source? &source->conn: &self->conn, args) < 0? -1: 1;
    const char *value = kim_cli_args_value (args);
    if (!value)
        return -1;
    if (kim_cli_args_is (args, "--data"))
        source->data = value;
    else
    if (kim_cli_args_is (args, "--sender")) {
        if (!kim_org_valid (value)) {
            kim_cli_usage_error (self->cmd, "--sender: '%s' is not an org id", value);
            return -1;
        }
        trace->sender = value;
    }
    else
    if (kim_cli_args_is (args, "--sign-key")) {
        //  The first --sign-key after a source replaces the keys it took
        //  from before the first source; more add to them.
        const char **keys = source? source->sign_keys: self->sign_keys;
        size_t *count = source? &source->sign_key_count: &self->sign_key_count;
        if (source && !source->own_keys) {
            source->own_keys = true;
            *count = 0;
        }
        if (*count == KIM_LOG_VERIFY_KEYS) {
            kim_cli_usage_error (self->cmd, "--sign-key: at most %d keys a log",
                                 KIM_LOG_VERIFY_KEYS);
            return -1;
        }
        keys [(*count)++] = value;
        *(source? &source->sign_key: &self->sign_key) = keys [0];
    }
    else {
        if (!source) {
            kim_cli_usage_error (self->cmd, "--name names the broker of the --data or "
                                 "--endpoint before it");
            return -1;
        }
        source->name = value;
    }
    return 1;
}

kim_audit_trace_t *
kim_audit_trace_new (void)
{
    return (kim_audit_trace_t *) calloc (1, sizeof (kim_audit_trace_t));
}

void
kim_audit_trace_destroy (kim_audit_trace_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_audit_trace_t *self = *self_p;
    for (size_t i = 0; i < self->match_count; i++)
        json_decref (self->matches [i].body);
    free (self->matches);
    free (self);
    *self_p = NULL;
}

int
kim_audit_trace_option (kim_audit_trace_t *self, kim_audit_t *audit, kim_cli_args_t *args)
{
    return s_trace_option (audit, self, args);
}

size_t
kim_audit_trace_source_count (kim_audit_trace_t *self)
{
    return self->source_count;
}

int
kim_audit_trace_run (kim_audit_trace_t *self, kim_audit_t *audit, const char *msg_id)
{
    self->msg_id = msg_id;
    return s_do_trace (audit, self);
}
