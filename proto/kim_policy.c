/*  kim_policy.c — the data-sharing policy engine: a small ZPL reader that
    keeps line numbers (so `kim policy lint` can name the line), the rule
    compiler, and the first-match decision with its explanation.

    Pure code: it owns the compiled rules and nothing else. The broker's
    consent module and the `kim policy` tool both link it (kimproto), so an
    operator's dry run decides exactly as the broker will.
*/
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kim/kim_citation.h"
#include "kim/kim_policy.h"
#include "kim_file.h"

#define S_LIST_MAX      24      //  entries in a rule's list
#define S_TYPES_MAX     24      //  agency types in from/to
#define S_LINE_MAX      1024
#define S_DEPTH_MAX     3

enum { S_DENY = 1, S_ALLOW = 2 };
enum { S_STATUTE = 1, S_CONSENT = 2, S_UNCHECKED = 4 };

typedef struct {
    char id [KIM_RULE_MAX + 1];
    int line;
    char law [KIM_LAW_MAX + 1];
    char why [KIM_TEXT_MAX + 1];
    size_t from_count, to_count;            //  0: any ("*")
    char from [S_TYPES_MAX][KIM_CODE_MAX + 1];
    char to [S_TYPES_MAX][KIM_CODE_MAX + 1];
    int from_public;                        //  -1 any
    uint64_t types;                         //  bit per type number; 0: every checked type
    size_t purpose_count, unless_count;
    char purposes [S_LIST_MAX][KIM_CODE_MAX + 1];
    char unless [S_LIST_MAX][KIM_CODE_MAX + 1];
    uint32_t if_categories;
    int if_subject;                         //  -1 any, 1 subject present
    int decision;
    int basis;                              //  S_STATUTE | S_CONSENT
    size_t citation_count;
    char citations [S_LIST_MAX][KIM_CITATION_MAX + 1];     //  as written
    kim_citation_t provisions [S_LIST_MAX];                 //  as read
    uint32_t categories;                    //  permitted
    size_t giver_count;                     //  consent: who must have given it; 0 any
    char givers [S_LIST_MAX][KIM_CODE_MAX + 1];
} s_rule_t;

//  The transfers of personal data: the types the policy checks
#define S_TRANSFERS ((1ull << KIM_TYPE_REFERRAL) | (1ull << KIM_TYPE_FORWARD) \
                   | (1ull << KIM_TYPE_HANDOVER_OFFER))

struct _kim_policy_t {
    uint64_t checks;                        //  bit per checked type number
    size_t rule_count;
    s_rule_t *rules;
};

//  --------------------------------------------------------------------------
//  A ZPL reader that remembers lines. ZPL: "name" opens a section, "name =
//  value" sets a key, 4 spaces per level, '#' starts a comment (a line's, or
//  the rest of one).

typedef struct {
    int line;
    int depth;
    char name [64];
    char value [S_LINE_MAX];
    bool has_value;
} s_entry_t;

typedef struct {
    const char *name;                       //  file name for errors
    char *error;
    size_t error_size;
} s_ctx_t;

static int
s_fail (s_ctx_t *ctx, int line, const char *format, ...)
{
    char text [KIM_POLICY_ERROR_MAX];
    va_list args;
    va_start (args, format);
    vsnprintf (text, sizeof text, format, args);
    va_end (args);
    if (line)
        snprintf (ctx->error, ctx->error_size, "%s:%d: %s", ctx->name, line, text);
    else
        snprintf (ctx->error, ctx->error_size, "%s: %s", ctx->name, text);
    return -1;
}

//  Reads one line into an entry. Returns 1 for an entry, 0 for a blank or
//  comment line, -1 on a syntax error.
static int
s_read_line (s_ctx_t *ctx, int number, const char *start, size_t size, s_entry_t *entry)
{
    char line [S_LINE_MAX];
    if (size >= sizeof line)
        return s_fail (ctx, number, "line longer than %d bytes", S_LINE_MAX - 1);
    memcpy (line, start, size);
    line [size] = 0;
    while (size && (line [size - 1] == '\r' || line [size - 1] == ' ' || line [size - 1] == '\t'))
        line [--size] = 0;
    size_t indent = 0;
    while (line [indent] == ' ')
        indent++;
    if (line [indent] == '\t')
        return s_fail (ctx, number, "tab in the indentation (indent with 4 spaces)");
    if (line [indent] == 0 || line [indent] == '#')
        return 0;
    if (indent % 4)
        return s_fail (ctx, number, "indentation of %zu spaces (indent with 4 spaces per level)", indent);
    entry->line = number;
    entry->depth = (int) (indent / 4);
    if (entry->depth >= S_DEPTH_MAX)
        return s_fail (ctx, number, "nested too deep (sections policy and rules, then rule keys)");
    char *name = line + indent;
    char *equals = strchr (name, '=');
    //  ZPL: a comment may follow a name on its own line ("P1    # note")
    char *comment = strchr (name, '#');
    if (comment && (!equals || comment < equals)) {
        *comment = 0;
        equals = NULL;
    }
    char *end = equals? equals: name + strlen (name);
    while (end > name && end [-1] == ' ')
        end--;
    size_t name_size = (size_t) (end - name);
    if (name_size == 0 || name_size >= sizeof entry->name)
        return s_fail (ctx, number, "missing or overlong name");
    for (size_t i = 0; i < name_size; i++)
        if (!isalnum ((unsigned char) name [i]) && name [i] != '_' && name [i] != '-'
        &&  name [i] != '.' && name [i] != ':')
            return s_fail (ctx, number, "'%.*s' is not a valid name", (int) name_size, name);
    memcpy (entry->name, name, name_size);
    entry->name [name_size] = 0;
    entry->has_value = equals != NULL;
    entry->value [0] = 0;
    if (!equals)
        return 1;
    char *value = equals + 1;
    while (*value == ' ')
        value++;
    if (*value == '"' || *value == '\'') {
        char quote = *value++;
        char *close = strchr (value, quote);
        if (!close)
            return s_fail (ctx, number, "%s: unterminated quoted value", entry->name);
        char *rest = close + 1;
        while (*rest == ' ')
            rest++;
        if (*rest && *rest != '#')
            return s_fail (ctx, number, "%s: text after the quoted value", entry->name);
        *close = 0;
    }
    else {
        char *hash = strchr (value, '#');
        if (hash)
            *hash = 0;
        size_t length = strlen (value);
        while (length && value [length - 1] == ' ')
            value [--length] = 0;
    }
    kim_str_copy (entry->value, sizeof entry->value, value);
    return 1;
}

//  --------------------------------------------------------------------------
//  Compiling rules

//  Splits a comma-separated list; calls `add` for each trimmed item.
typedef int (s_add_fn) (s_ctx_t *ctx, const s_entry_t *entry, const char *item, void *arg);

static int
s_split (s_ctx_t *ctx, const s_entry_t *entry, s_add_fn *add, void *arg)
{
    const char *cursor = entry->value;
    if (!*cursor)
        return s_fail (ctx, entry->line, "%s: empty list", entry->name);
    while (*cursor) {
        const char *comma = strchr (cursor, ',');
        size_t size = comma? (size_t) (comma - cursor): strlen (cursor);
        char item [KIM_CITATION_MAX + 1];
        while (size && *cursor == ' ')
            cursor++, size--;
        while (size && cursor [size - 1] == ' ')
            size--;
        if (size == 0 || size >= sizeof item)
            return s_fail (ctx, entry->line, "%s: empty or overlong list item", entry->name);
        memcpy (item, cursor, size);
        item [size] = 0;
        if (add (ctx, entry, item, arg))
            return -1;
        cursor = comma? comma + 1: cursor + size;
    }
    return 0;
}

typedef struct {
    char (*items) [KIM_CODE_MAX + 1];
    size_t *count;
    bool any;                   //  "*" allowed
} s_codes_t;

static int
s_add_code (s_ctx_t *ctx, const s_entry_t *entry, const char *item, void *arg)
{
    s_codes_t *codes = (s_codes_t *) arg;
    if (codes->any && strcmp (item, "*") == 0) {
        if (strcmp (entry->value, "*") != 0)
            return s_fail (ctx, entry->line, "%s: '*' (any) cannot be combined with names", entry->name);
        return 0;
    }
    if (!kim_code_valid (item))
        return s_fail (ctx, entry->line, "%s: '%s' is not a code ([a-z0-9_], 1-32 bytes)",
                       entry->name, item);
    if (*codes->count == S_LIST_MAX)
        return s_fail (ctx, entry->line, "%s: more than %d entries", entry->name, S_LIST_MAX);
    //  kim_code_valid bounded it to KIM_CODE_MAX bytes.
    snprintf (codes->items [(*codes->count)++], KIM_CODE_MAX + 1, "%.32s", item);
    return 0;
}

static int
s_add_type (s_ctx_t *ctx, const s_entry_t *entry, const char *item, void *arg)
{
    kim_type_t type = kim_type_from_name (item);
    if (type == KIM_TYPE_NONE || !(kim_type_flags (type) & KIM_MSG_FROM_AGENCY))
        return s_fail (ctx, entry->line, "%s: '%s' is not a message type an agency sends",
                       entry->name, item);
    *(uint64_t *) arg |= 1ull << (unsigned) type;
    return 0;
}

static int
s_add_category (s_ctx_t *ctx, const s_entry_t *entry, const char *item, void *arg)
{
    for (uint32_t bit = 1; bit && bit <= KIM_CAT_LAST; bit <<= 1)
        if (kim_category_name (bit) && strcmp (kim_category_name (bit), item) == 0) {
            *(uint32_t *) arg |= bit;
            return 0;
        }
    return s_fail (ctx, entry->line, "%s: '%s' is not a data category "
                   "(art9, sgb8_s65, stgb203, residence_status, contact)", entry->name, item);
}

static int
s_add_basis (s_ctx_t *ctx, const s_entry_t *entry, const char *item, void *arg)
{
    if (strcmp (item, "statute") == 0)
        *(int *) arg |= S_STATUTE;
    else
    if (strcmp (item, "consent") == 0)
        *(int *) arg |= S_CONSENT;
    else
    if (strcmp (item, "unchecked") == 0)
        *(int *) arg |= S_UNCHECKED;        //  test brokers only: see kim_policy_unchecked
    else
        return s_fail (ctx, entry->line, "basis: '%s' must be statute or consent", item);
    return 0;
}

static int
s_add_citation (s_ctx_t *ctx, const s_entry_t *entry, const char *item, void *arg)
{
    s_rule_t *rule = (s_rule_t *) arg;
    if (rule->citation_count == S_LIST_MAX)
        return s_fail (ctx, entry->line, "citations: more than %d entries", S_LIST_MAX);
    char error [128];
    if (kim_citation_parse (item, &rule->provisions [rule->citation_count], error, sizeof error))
        return s_fail (ctx, entry->line, "citations: '%s' cannot be read: %s", item, error);
    snprintf (rule->citations [rule->citation_count++], KIM_CITATION_MAX + 1, "%s", item);
    return 0;
}

static int
s_add_giver (s_ctx_t *ctx, const s_entry_t *entry, const char *item, void *arg)
{
    s_rule_t *rule = (s_rule_t *) arg;
    if (strcmp (item, "subject") && strcmp (item, "guardian") && strcmp (item, "entruster"))
        return s_fail (ctx, entry->line, "givers: '%s' is not a giver (%s)", item,
                       KIM_CONSENT_GIVERS);
    if (rule->giver_count == S_LIST_MAX)
        return s_fail (ctx, entry->line, "givers: more than %d entries", S_LIST_MAX);
    kim_str_copy (rule->givers [rule->giver_count++], sizeof rule->givers [0], item);
    return 0;
}

static int
s_bool (s_ctx_t *ctx, const s_entry_t *entry, int *out)
{
    if (strcmp (entry->value, "0") && strcmp (entry->value, "1"))
        return s_fail (ctx, entry->line, "%s: must be 0 or 1", entry->name);
    *out = entry->value [0] == '1';
    return 0;
}

static int
s_rule_key (s_ctx_t *ctx, s_rule_t *rule, const s_entry_t *entry)
{
    const char *key = entry->name;
    if (!entry->has_value)
        return s_fail (ctx, entry->line, "rules/%s/%s: expected 'key = value'", rule->id, key);
    s_codes_t codes = { NULL, NULL, false };
    if (strcmp (key, "law") == 0 || strcmp (key, "why") == 0) {
        char *target = key [0] == 'l'? rule->law: rule->why;
        size_t size = key [0] == 'l'? sizeof rule->law: sizeof rule->why;
        if (!entry->value [0] || strlen (entry->value) >= size)
            return s_fail (ctx, entry->line, "rules/%s/%s: must be 1-%zu bytes", rule->id, key, size - 1);
        snprintf (target, size, "%s", entry->value);
        return 0;
    }
    if (strcmp (key, "from") == 0)
        codes = (s_codes_t) { rule->from, &rule->from_count, true };
    else
    if (strcmp (key, "to") == 0)
        codes = (s_codes_t) { rule->to, &rule->to_count, true };
    else
    if (strcmp (key, "purposes") == 0)
        codes = (s_codes_t) { rule->purposes, &rule->purpose_count, false };
    else
    if (strcmp (key, "unless_purposes") == 0)
        codes = (s_codes_t) { rule->unless, &rule->unless_count, false };
    if (codes.items)
        return s_split (ctx, entry, s_add_code, &codes);
    if (strcmp (key, "from_public") == 0)
        return s_bool (ctx, entry, &rule->from_public);
    if (strcmp (key, "if_subject") == 0) {
        int value = 0;
        if (s_bool (ctx, entry, &value))
            return -1;
        rule->if_subject = value? 1: -1;
        return 0;
    }
    if (strcmp (key, "types") == 0)
        return s_split (ctx, entry, s_add_type, &rule->types);
    if (strcmp (key, "if_categories") == 0)
        return s_split (ctx, entry, s_add_category, &rule->if_categories);
    if (strcmp (key, "categories") == 0)
        return s_split (ctx, entry, s_add_category, &rule->categories);
    if (strcmp (key, "basis") == 0)
        return s_split (ctx, entry, s_add_basis, &rule->basis);
    if (strcmp (key, "citations") == 0)
        return s_split (ctx, entry, s_add_citation, rule);
    if (strcmp (key, "givers") == 0)
        return s_split (ctx, entry, s_add_giver, rule);
    if (strcmp (key, "decision") == 0) {
        if (strcmp (entry->value, "deny") == 0)
            rule->decision = S_DENY;
        else
        if (strcmp (entry->value, "allow") == 0)
            rule->decision = S_ALLOW;
        else
            return s_fail (ctx, entry->line, "rules/%s/decision: '%s' must be deny or allow",
                           rule->id, entry->value);
        return 0;
    }
    return s_fail (ctx, entry->line, "rules/%s/%s: unknown key (law, why, from, to, from_public, "
                   "types, purposes, unless_purposes, if_categories, if_subject, decision, basis, "
                   "citations, categories, givers)", rule->id, key);
}

//  A rule is complete and consistent: required keys, and keys that only
//  make sense together.
static int
s_rule_finish (s_ctx_t *ctx, s_rule_t *rule, bool seen_from, bool seen_to)
{
    const char *missing = !rule->law [0]? "law": !seen_from? "from": !seen_to? "to":
                          !rule->decision? "decision": NULL;
    if (missing)
        return s_fail (ctx, rule->line, "rules/%s/%s: required key is missing", rule->id, missing);
    if (rule->decision == S_ALLOW && !rule->basis)
        return s_fail (ctx, rule->line, "rules/%s/basis: an allow rule needs basis "
                       "(statute, consent or both)", rule->id);
    if (rule->decision == S_DENY && (rule->basis || rule->citation_count || rule->categories))
        return s_fail (ctx, rule->line, "rules/%s: a deny rule takes no basis, citations "
                       "or categories", rule->id);
    if ((rule->basis & S_UNCHECKED) && rule->basis != S_UNCHECKED)
        return s_fail (ctx, rule->line, "rules/%s/basis: unchecked stands alone", rule->id);
    if ((rule->basis & S_STATUTE) && !rule->citation_count)
        return s_fail (ctx, rule->line, "rules/%s/citations: basis statute needs the list of "
                       "citations accepted", rule->id);
    if (!(rule->basis & S_STATUTE) && rule->citation_count)
        return s_fail (ctx, rule->line, "rules/%s/citations: only with basis statute", rule->id);
    if (!(rule->basis & S_CONSENT) && rule->giver_count)
        return s_fail (ctx, rule->line, "rules/%s/givers: only with basis consent", rule->id);
    return 0;
}

static int
s_compile (kim_policy_t *self, s_ctx_t *ctx, const char *text)
{
    enum { NONE, POLICY, RULES } section = NONE;
    s_rule_t *rule = NULL;
    bool seen_from = false, seen_to = false, seen_rules = false;
    size_t capacity = 0;
    int number = 0;
    const char *cursor = text;
    while (*cursor) {
        const char *newline = strchr (cursor, '\n');
        size_t size = newline? (size_t) (newline - cursor): strlen (cursor);
        s_entry_t entry;
        number++;
        int rc = s_read_line (ctx, number, cursor, size, &entry);
        cursor = newline? newline + 1: cursor + size;
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue;
        if (entry.depth < 2 && rule) {
            if (s_rule_finish (ctx, rule, seen_from, seen_to))
                return -1;
            rule = NULL;
        }
        if (entry.depth == 0) {
            if (entry.has_value)
                return s_fail (ctx, number, "%s: expected a section (policy or rules)", entry.name);
            if (strcmp (entry.name, "policy") == 0)
                section = POLICY;
            else
            if (strcmp (entry.name, "rules") == 0)
                section = RULES, seen_rules = true;
            else
                return s_fail (ctx, number, "%s: unknown section (expected policy or rules)", entry.name);
        }
        else
        if (section == POLICY) {
            if (entry.depth != 1 || !entry.has_value)
                return s_fail (ctx, number, "policy/%s: expected 'key = value'", entry.name);
            if (strcmp (entry.name, "version") == 0) {
                if (strcmp (entry.value, "1"))
                    return s_fail (ctx, number, "policy/version: '%s' is not supported (1)", entry.value);
            }
            else
            if (strcmp (entry.name, "checks") == 0) {
                //  Lawful by default (kim-policy(5)): every transfer of
                //  personal data is checked and nothing else (answers
                //  inherit the referral's basis, PROTOCOL.md 9.3). The key
                //  stays readable for files that name the three.
                uint64_t checks = 0;
                if (s_split (ctx, &entry, s_add_type, &checks))
                    return -1;
                if (checks != S_TRANSFERS)
                    return s_fail (ctx, number, "policy/checks: every transfer of personal data "
                                   "is checked, and only those: REFERRAL, FORWARD, "
                                   "HANDOVER_OFFER (the key may be left out)");
            }
            else
                return s_fail (ctx, number, "policy/%s: unknown key (version, checks)", entry.name);
        }
        else
        if (section == RULES && entry.depth == 1) {
            if (entry.has_value)
                return s_fail (ctx, number, "rules/%s: expected a rule id on its own line", entry.name);
            if (!kim_id_valid (entry.name) || strlen (entry.name) > KIM_RULE_MAX
            ||  strcmp (entry.name, "default") == 0)
                return s_fail (ctx, number, "rules/%s: not a valid rule id", entry.name);
            for (size_t i = 0; i < self->rule_count; i++)
                if (strcmp (self->rules [i].id, entry.name) == 0)
                    return s_fail (ctx, number, "rules/%s: duplicate rule id (first on line %d)",
                                   entry.name, self->rules [i].line);
            if (self->rule_count == capacity) {
                capacity = capacity? 2 * capacity: 32;
                s_rule_t *rules = (s_rule_t *) realloc (self->rules, capacity * sizeof (s_rule_t));
                if (!rules)
                    return s_fail (ctx, number, "out of memory");
                self->rules = rules;
            }
            rule = &self->rules [self->rule_count++];
            memset (rule, 0, sizeof *rule);
            kim_str_copy (rule->id, sizeof rule->id, entry.name);
            rule->line = number;
            rule->from_public = -1;
            rule->if_subject = -1;
            seen_from = seen_to = false;
        }
        else
        if (section == RULES && entry.depth == 2 && rule) {
            seen_from |= strcmp (entry.name, "from") == 0;
            seen_to |= strcmp (entry.name, "to") == 0;
            if (s_rule_key (ctx, rule, &entry))
                return -1;
        }
        else
            return s_fail (ctx, number, "%s: not expected here", entry.name);
    }
    if (rule && s_rule_finish (ctx, rule, seen_from, seen_to))
        return -1;
    if (!seen_rules)
        return s_fail (ctx, 0, "rules: section is missing (with no rules every transfer is denied; "
                       "write an empty section to mean that)");
    return 0;
}

kim_policy_t *
kim_policy_parse (const char *text, const char *name, char *error, size_t error_size)
{
    s_ctx_t ctx = { name? name: "policy", error, error_size };
    kim_policy_t *self = (kim_policy_t *) calloc (1, sizeof (kim_policy_t));
    if (!self) {
        s_fail (&ctx, 0, "out of memory");
        return NULL;
    }
    self->checks = S_TRANSFERS;
    if (s_compile (self, &ctx, text))
        kim_policy_destroy (&self);
    return self;
}

kim_policy_t *
kim_policy_load (const char *path, char *error, size_t error_size)
{
    int why;
    char *text = kim_file_text (path, 1u << 22, NULL, &why);
    if (!text) {
        if (why == EFBIG)
            snprintf (error, error_size, "%s: too large for a policy file (4 MiB)", path);
        else
        if (why == EILSEQ || why == EIO)
            snprintf (error, error_size, "%s: cannot read (or it holds NUL bytes)", path);
        else
            snprintf (error, error_size, "%s: cannot open: %s", path, strerror (why));
        return NULL;
    }
    kim_policy_t *self = kim_policy_parse (text, path, error, error_size);
    free (text);
    return self;
}

void
kim_policy_destroy (kim_policy_t **self_p)
{
    if (self_p && *self_p) {
        free ((*self_p)->rules);
        free (*self_p);
        *self_p = NULL;
    }
}

size_t
kim_policy_rule_count (const kim_policy_t *self)
{
    return self->rule_count;
}

bool
kim_policy_checks (const kim_policy_t *self, kim_type_t type)
{
    return (unsigned) type < 64 && (self->checks >> (unsigned) type) & 1;
}

//  --------------------------------------------------------------------------
//  Deciding

static void
s_say (kim_buf_t *explain, const char *format, ...)
{
    if (!explain)
        return;
    char line [512];
    va_list args;
    va_start (args, format);
    int size = vsnprintf (line, sizeof line - 1, format, args);
    va_end (args);
    if (size < 0)
        return;
    if ((size_t) size > sizeof line - 2)
        size = (int) sizeof line - 2;
    line [size++] = '\n';
    kim_buf_append (explain, line, (size_t) size);
}

static bool
s_in (const char (*list) [KIM_CODE_MAX + 1], size_t count, const char *item)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp (list [i], item) == 0)
            return true;
    return false;
}

//  "jc, aa" or "*" for a rule's from/to, for explanations.
static void
s_join (const char (*list) [KIM_CODE_MAX + 1], size_t count, char *out, size_t size)
{
    size_t used = 0;
    out [0] = 0;
    if (count == 0)
        snprintf (out, size, "*");
    for (size_t i = 0; i < count && used < size; i++)
        used += (size_t) snprintf (out + used, size - used, "%s%s", i? ",": "", list [i]);
}

static void
s_categories (uint32_t bits, char *out, size_t size)
{
    size_t used = 0;
    out [0] = 0;
    for (uint32_t bit = 1; bit && bit <= KIM_CAT_LAST && used < size; bit <<= 1)
        if ((bits & bit) && kim_category_name (bit))
            used += (size_t) snprintf (out + used, size - used, "%s%s", used? ", ": "",
                                       kim_category_name (bit));
    if (!used)
        snprintf (out, size, "none");
}

//  Why `rule` does not apply to the transfer, or NULL when it does.
static const char *
s_mismatch (const s_rule_t *rule, const kim_policy_facts_t *facts, char *why, size_t size)
{
    const kim_msg_t *msg = facts->msg;
    if (rule->from_count && !s_in (rule->from, rule->from_count, facts->sender_type))
        snprintf (why, size, "sender type %s is not in from", facts->sender_type);
    else
    if (rule->to_count && !s_in (rule->to, rule->to_count, facts->recipient_type))
        snprintf (why, size, "recipient type %s is not in to", facts->recipient_type);
    else
    if (rule->from_public >= 0 && rule->from_public != (int) facts->sender_public)
        snprintf (why, size, "the sender is %s", facts->sender_public? "a public body": "a private carrier");
    else
    if (rule->types && !((rule->types >> (unsigned) msg->type) & 1))
        snprintf (why, size, "type %s is not in types", kim_type_name (msg->type));
    else
    if (rule->purpose_count && !s_in (rule->purposes, rule->purpose_count, msg->purpose))
        snprintf (why, size, "purpose '%s' is not in purposes", msg->purpose);
    else
    if (rule->unless_count && s_in (rule->unless, rule->unless_count, msg->purpose))
        snprintf (why, size, "purpose '%s' is excepted (unless_purposes)", msg->purpose);
    else
    if (rule->if_categories && !(msg->categories & rule->if_categories))
        snprintf (why, size, "the message carries none of its if_categories");
    else
    if (rule->if_subject == 1 && !msg->subject [0])
        snprintf (why, size, "no subject pseudonym travels");
    else
        return NULL;
    return why;
}

//  Fills the decision's text as "rule ID (from -> to, how): detail".
static int
s_verdict (kim_policy_decision_t *decision, const s_rule_t *rule, int code, kim_buf_t *explain,
           const char *format, ...)
{
    decision->code = code;
    //  An allowance nobody asks to explain is the broker's hot path: its
    //  text would be written for no reader (kim_policy.h, text).
    if (code == 0 && !explain) {
        decision->text [0] = 0;
        return 0;
    }
    char detail [KIM_TEXT_MAX + 1];
    va_list args;
    va_start (args, format);
    vsnprintf (detail, sizeof detail, format, args);
    va_end (args);
    char from [64], to [64];
    s_join (rule->from, rule->from_count, from, sizeof from);
    s_join (rule->to, rule->to_count, to, sizeof to);
    const char *how = rule->decision == S_DENY? "deny"
                    : rule->basis == S_UNCHECKED? "unchecked"
                    : rule->basis == (S_STATUTE | S_CONSENT)? "statute or consent"
                    : rule->basis == S_STATUTE? "statute": "consent";
    //  Long details may cut the law short; the DECISION record keeps it whole.
    if (snprintf (decision->text, sizeof decision->text, "rule %s (%s -> %s, %s): %s [%s]",
                  rule->id, from, to, how, detail, rule->law) < 0)
        decision->text [0] = 0;
    s_say (explain, "%s: %s", code? "DENIED": "ALLOWED", decision->text);
    return 0;
}

//  A consent's end for people reading a decision: a UTC date, not the
//  milliseconds of the header. A time beyond what a header can carry
//  (2^53 - 1 ms) is an end that was never set: `kim policy check
//  --assume-consent` assumes such a consent.
static void
s_until (uint64_t valid_until_ms, char *out, size_t size)
{
    if (valid_until_ms > (1ull << 53) - 1) {
        snprintf (out, size, "with no end");
        return;
    }
    time_t seconds = (time_t) (valid_until_ms / 1000);
    struct tm utc;
    if (!gmtime_r (&seconds, &utc)
    ||  strftime (out, size, "until %Y-%m-%d %H:%M:%S UTC", &utc) == 0)
        snprintf (out, size, "until %llu ms", (unsigned long long) valid_until_ms);
}

static int
s_check_consent (const s_rule_t *rule, const kim_policy_facts_t *facts,
                 kim_policy_consent_fn *lookup, void *arg,
                 kim_policy_decision_t *decision, kim_buf_t *explain)
{
    const kim_msg_t *msg = facts->msg;
    const char *id = msg->consent_id;
    kim_consent_t consent;
    int rc = lookup? lookup (arg, id, &consent): -KIM_E_NOT_FOUND;
    if (rc == -KIM_E_NOT_FOUND)
        return s_verdict (decision, rule, KIM_E_CONSENT_UNKNOWN, explain,
                          "consent %s is not registered", id);
    if (rc)
        return rc;
    s_say (explain, "consent %s: subject %s, given by %s, recorded by %s, %zu recipient(s), "
           "%zu purpose(s)", id, consent.subject, consent.giver [0]? consent.giver: "(not recorded)",
           consent.granted_by [0]? consent.granted_by: "?", consent.recipient_count,
           consent.purpose_count);
    //  The binding comes before state and scope: a consent cited outside it
    //  is no basis whatever its state, and its state is not the sender's
    //  business then. The texts name what the consent is bound to only
    //  where the sender holds that already (its own case and lead).
    if (strcmp (consent.subject, msg->subject) != 0)
        return s_verdict (decision, rule, KIM_E_CONSENT_BOUND, explain,
                          "consent %s was not given for subject '%s': a consent is bound to "
                          "the person who gave it", id, msg->subject);
    const char *case_id = facts->case_id? facts->case_id: msg->case_id;
    if (strcmp (consent.case_id, case_id) != 0)
        return s_verdict (decision, rule, KIM_E_CONSENT_BOUND, explain,
                          "consent %s does not belong to case '%s': a consent is bound to the "
                          "case it was recorded in", id, case_id);
    if (facts->case_lead) {
        bool named = strcmp (consent.granted_by, msg->sender) == 0;
        for (size_t i = 0; i < consent.recipient_count && !named; i++)
            named = strcmp (consent.recipients [i], msg->sender) == 0;
        if (strcmp (facts->case_lead, msg->sender) != 0)
            return s_verdict (decision, rule, KIM_E_CONSENT_BOUND, explain,
                              "consent %s may be cited only by the lead of case %s (%s), not "
                              "by %s", id, case_id, facts->case_lead, msg->sender);
        if (!named)
            return s_verdict (decision, rule, KIM_E_CONSENT_BOUND, explain,
                              "case %s was handed over to %s, which consent %s (recorded by "
                              "%s) does not name: the new lead needs a consent of its own",
                              case_id, msg->sender, id, consent.granted_by);
        s_say (explain, "consent %s: bound to subject, case %s and its lead %s: holds", id,
               case_id, facts->case_lead);
    }
    else
        s_say (explain, "consent %s: bound to subject and case: holds; the case's lead is "
               "not known here and is checked by the broker", id);
    if (consent.revoked_at)
        return s_verdict (decision, rule, KIM_E_CONSENT_REVOKED, explain,
                          "consent %s was revoked", id);
    if (consent.valid_until <= facts->now)
        return s_verdict (decision, rule, KIM_E_CONSENT_EXPIRED, explain,
                          "consent %s expired", id);
    bool covered = rule->giver_count == 0;
    for (size_t i = 0; i < rule->giver_count && !covered; i++)
        covered = strcmp (rule->givers [i], consent.giver) == 0;
    if (!covered) {
        char givers [96];
        s_join (rule->givers, rule->giver_count, givers, sizeof givers);
        return s_verdict (decision, rule, KIM_E_CONSENT_SCOPE, explain,
                          "consent %s was given by %s; the rule needs the consent of: %s", id,
                          consent.giver [0]? consent.giver: "(not recorded)", givers);
    }
    covered = false;
    for (size_t i = 0; i < consent.recipient_count && !covered; i++)
        covered = strcmp (consent.recipients [i], facts->recipient) == 0;
    if (!covered)
        return s_verdict (decision, rule, KIM_E_CONSENT_SCOPE, explain,
                          "consent %s does not cover recipient %s", id, facts->recipient);
    //  A consent is given for purposes: a transfer that names none is in
    //  none of them
    if (!msg->purpose [0])
        return s_verdict (decision, rule, KIM_E_CONSENT_SCOPE, explain,
                          "consent %s covers named purposes only: give the transfer's purpose",
                          id);
    covered = false;
    for (size_t i = 0; i < consent.purpose_count && !covered; i++)
        covered = strcmp (consent.purposes [i], msg->purpose) == 0;
    if (!covered)
        return s_verdict (decision, rule, KIM_E_CONSENT_SCOPE, explain,
                          "consent %s does not cover purpose %s", id, msg->purpose);
    uint32_t granted = consent.categories & ~(uint32_t) KIM_CAT_ART9;
    if (consent.explicit_art9)
        granted |= KIM_CAT_ART9;
    uint32_t uncovered = msg->categories & ~granted;
    if (uncovered) {
        char names [96];
        s_categories (uncovered, names, sizeof names);
        return s_verdict (decision, rule, KIM_E_CONSENT_SCOPE, explain,
                          "consent %s does not cover %s%s", id, names,
                          (uncovered & KIM_CAT_ART9)? " (art9 needs an explicit consent, "
                          "Art. 9 Abs. 2 lit. a DSGVO)": "");
    }
    snprintf (decision->basis, sizeof decision->basis, "consent: %s", id);
    char until [48];
    s_until (consent.valid_until, until, sizeof until);
    return s_verdict (decision, rule, 0, explain, "consent %s covers recipient, purpose and "
                      "categories %s", id, until);
}

//  A statute citation is read as the provision it names and accepted when
//  one of the rule's citations names that provision or one containing it.
static int
s_check_citation (const s_rule_t *rule, const kim_msg_t *msg, kim_policy_decision_t *decision,
                  kim_buf_t *explain)
{
    kim_citation_t cited;
    char error [128], text [KIM_CITATION_TEXT_MAX + KIM_CITATION_LAW_MAX];
    if (kim_citation_parse (msg->citation, &cited, error, sizeof error))
        return s_verdict (decision, rule, KIM_E_NO_BASIS, explain,
                          "citation '%s' cannot be read: %s", msg->citation, error);
    s_say (explain, "citation '%s' reads as %s", msg->citation,
           kim_citation_format (&cited, text, sizeof text));
    bool broader = false;
    for (size_t c = 0; c < rule->citation_count; c++) {
        int covers = kim_citation_covers (&rule->provisions [c], &cited);
        if (covers == 1) {
            snprintf (decision->basis, sizeof decision->basis, "statute: %s", msg->citation);
            return s_verdict (decision, rule, 0, explain, "citation '%s' is accepted (%s)",
                              msg->citation, rule->citations [c]);
        }
        broader |= covers < 0;
    }
    //  Name what would pass: for a broader citation the provisions inside
    //  it the rule accepts, else every citation the rule lists.
    char accepted [KIM_TEXT_MAX + 1] = "";
    size_t used = 0;
    for (size_t c = 0; c < rule->citation_count && used < sizeof accepted; c++)
        if (!broader || kim_citation_covers (&rule->provisions [c], &cited) < 0)
            used += (size_t) snprintf (accepted + used, sizeof accepted - used, "%s'%s'",
                                       used? ", ": "", rule->citations [c]);
    if (broader)
        return s_verdict (decision, rule, KIM_E_NO_BASIS, explain,
                          "citation '%s' is broader than the rule allows; it accepts only %s",
                          msg->citation, accepted);
    return s_verdict (decision, rule, KIM_E_NO_BASIS, explain,
                      "citation '%s' is not accepted (accepted: %s)", msg->citation, accepted);
}

int
kim_policy_decide (const kim_policy_t *self, const kim_policy_facts_t *facts,
                   kim_policy_consent_fn *lookup, void *arg,
                   kim_policy_decision_t *decision, kim_buf_t *explain)
{
    const kim_msg_t *msg = facts->msg;
    memset (decision, 0, sizeof *decision);
    char categories [96];
    s_categories (msg->categories, categories, sizeof categories);
    s_say (explain, "transfer: %s %s (%s%s) -> %s (%s), purpose '%s', categories %s, basis %s%s%s",
           kim_type_name (msg->type)? kim_type_name (msg->type): "?",
           msg->sender [0]? msg->sender: "sender", facts->sender_type,
           facts->sender_public? ", public body": ", private carrier",
           facts->recipient, facts->recipient_type, msg->purpose, categories,
           msg->basis == KIM_BASIS_STATUTE? "statute ": msg->basis == KIM_BASIS_CONSENT? "consent ": "none",
           msg->basis == KIM_BASIS_STATUTE? msg->citation: msg->consent_id,
           msg->subject [0]? ", with a subject pseudonym": "");
    if (!kim_policy_checks (self, msg->type)) {
        snprintf (decision->text, sizeof decision->text, "%s is not a checked transfer (policy/checks)",
                  kim_type_name (msg->type)? kim_type_name (msg->type): "this type");
        s_say (explain, "not checked: %s", decision->text);
        return 0;
    }
    decision->checked = true;
    for (size_t i = 0; i < self->rule_count; i++) {
        const s_rule_t *rule = &self->rules [i];
        char why [128];
        if (s_mismatch (rule, facts, why, sizeof why)) {
            s_say (explain, "rule %s (line %d): does not apply: %s", rule->id, rule->line, why);
            continue;
        }
        s_say (explain, "rule %s (line %d): applies [%s]", rule->id, rule->line, rule->law);
        kim_str_copy (decision->rule, sizeof decision->rule, rule->id);
        kim_str_copy (decision->law, sizeof decision->law, rule->law);
        if (rule->decision == S_DENY)
            return s_verdict (decision, rule, KIM_E_POLICY_DENY, explain, "%s",
                              rule->why [0]? rule->why: "this transfer is not allowed");
        uint32_t forbidden = msg->categories & ~rule->categories;
        if (forbidden) {
            char names [96];
            s_categories (forbidden, names, sizeof names);
            return s_verdict (decision, rule, KIM_E_POLICY_DENY, explain,
                              "the rule does not permit data of category %s", names);
        }
        if (rule->basis == S_UNCHECKED) {
            decision->unchecked = true;
            snprintf (decision->basis, sizeof decision->basis, "unchecked (test policy)");
            return s_verdict (decision, rule, 0, explain, "the basis is not checked (test policy)");
        }
        if (msg->basis == KIM_BASIS_STATUTE) {
            if (!(rule->basis & S_STATUTE))
                return s_verdict (decision, rule, KIM_E_NO_BASIS, explain,
                                  "needs a registered consent; a statute ('%s') is no basis here",
                                  msg->citation);
            return s_check_citation (rule, msg, decision, explain);
        }
        if (msg->basis == KIM_BASIS_CONSENT) {
            if (!(rule->basis & S_CONSENT))
                return s_verdict (decision, rule, KIM_E_NO_BASIS, explain,
                                  "needs a statute the rule lists; consent %s is no basis here",
                                  msg->consent_id);
            return s_check_consent (rule, facts, lookup, arg, decision, explain);
        }
        return s_verdict (decision, rule, KIM_E_NO_BASIS, explain, "the message names no legal basis");
    }
    snprintf (decision->rule, sizeof decision->rule, "default");
    snprintf (decision->law, sizeof decision->law, "default deny");
    decision->code = KIM_E_POLICY_DENY;
    snprintf (decision->text, sizeof decision->text,
              "rule default (deny): no rule allows %s -> %s for %s, purpose %s",
              facts->sender_type, facts->recipient_type,
              kim_type_name (msg->type)? kim_type_name (msg->type): "?", msg->purpose);
    s_say (explain, "DENIED: %s", decision->text);
    return 0;
}

//  Read only, for pickers: an unconditional deny that matches ends the
//  walk, as does an unconditional allow (no later rule can decide); rules
//  with conditions (categories, subject, public sender, types) may or may
//  not apply, so their statutes are offered and the walk goes on.
size_t
kim_policy_statutes (const kim_policy_t *self, const char *sender_type,
                     const char *recipient_type, const char *purpose,
                     kim_policy_statute_fn *each, void *arg)
{
    size_t count = 0;
    for (size_t i = 0; i < self->rule_count; i++) {
        const s_rule_t *rule = &self->rules [i];
        if ((rule->from_count && !s_in (rule->from, rule->from_count, sender_type))
        ||  (rule->to_count && !s_in (rule->to, rule->to_count, recipient_type)))
            continue;
        if (purpose && ((rule->purpose_count && !s_in (rule->purposes, rule->purpose_count, purpose))
                    ||  (rule->unless_count && s_in (rule->unless, rule->unless_count, purpose))))
            continue;
        bool conditional = rule->if_categories || rule->if_subject == 1
                        || rule->from_public >= 0 || rule->types
                        || (!purpose && (rule->purpose_count || rule->unless_count));
        if (rule->decision == S_ALLOW && (rule->basis & S_STATUTE))
            for (size_t c = 0; c < rule->citation_count; c++, count++)
                if (each)
                    each (arg, rule->id, rule->citations [c]);
        if (!conditional)
            break;
    }
    return count;
}

bool
kim_policy_unchecked (const kim_policy_t *self)
{
    for (size_t i = 0; i < self->rule_count; i++)
        if (self->rules [i].basis == S_UNCHECKED)
            return true;
    return false;
}
