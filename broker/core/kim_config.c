/*  kim_config.c — reads and validates the broker's ZPL configuration.

    One table (KIM_SETTINGS) lists every numeric setting with its path, bounds
    and default, so that parsing, validation and the error text come from one
    place. Organisations are the children of "orgs"; each child's name is the
    organisation id.
*/
#include <czmq.h>
#include <errno.h>
#include <stdarg.h>

#include "kim_config.h"
#include "kim_file.h"

//  X(field, path, min, max, default, scale): the file holds value/scale units.
#define KIM_SETTINGS(X)                                                                 \
    X(heartbeat_ms,    "broker/heartbeat_ms",   100,  600000,         5000,   1)       \
    X(max_payload,     "broker/max_payload",    0,    KIM_PAYLOAD_MAX, 1048576, 1)     \
    X(window_max,      "broker/window_max",     1,    4096,           1024,   1)       \
    X(redeliver_ms,    "broker/redeliver_ms",   100,  86400000,       60000,  1)       \
    X(batch_max,       "broker/batch_max",      1,    8192,           2048,   1)       \
    X(mailbox_quota,   "broker/mailbox_quota",  1,    1000000000,     2000000, 1)      \
    X(dedup_window_ms, "broker/dedup_window_s", 1,    31536000,       604800, 1000)    \
    X(rate_limit,      "broker/rate_limit",     1,    10000000,       50000,  1)       \
    X(rate_burst,      "broker/rate_burst",     1,    10000000,       20000,  1)       \
    X(clock_skew_ms,   "broker/clock_skew_s",   1,    86400,          300,    1000)    \
    X(org_sessions,    "broker/sessions_per_org", 1,    4096,           32,     1)       \
    X(org_subscriptions, "broker/subscriptions_per_org", 1, 1000000,        256,    1)       \
    X(org_queries,     "broker/queries_per_org", 1,    64,             4,      1)       \
    X(map_size,        "store/map_size_mb",     1,    1048576,        64,     1048576) \
    X(map_max,         "store/map_max_mb",      1,    16777216,       65536,  1048576)

#define KIM_ERR_BUF 256
#define S_CONFIG_MAX (4 << 20)      //  a registry of thousands of organisations fits

static void
s_set_error (char *error, size_t error_size, const char *format, ...)
{
    if (!error || error_size == 0)
        return;
    va_list args;
    va_start (args, format);
    vsnprintf (error, error_size, format, args);
    va_end (args);
}

static void
s_defaults (kim_config_t *self)
{
    snprintf (self->name, sizeof self->name, "kim.local");
    kim_str_copy (self->data, sizeof self->data, KIM_DEFAULT_DATA);
    self->endpoint_count = 1;
    kim_str_copy (self->endpoints [0], sizeof self->endpoints [0], KIM_DEFAULT_ENDPOINT);
#define KIM_X_DEFAULT(field, path, min, max, def, scale) self->field = (uint64_t) (def) * (scale);
    KIM_SETTINGS (KIM_X_DEFAULT)
#undef KIM_X_DEFAULT
    self->sync = true;
    self->verbose = false;
}

kim_config_t *
kim_config_new (void)
{
    kim_config_t *self = (kim_config_t *) calloc (1, sizeof (kim_config_t));
    if (self)
        s_defaults (self);
    return self;
}

void
kim_config_destroy (kim_config_t **self_p)
{
    if (self_p && *self_p) {
        zconfig_t *tree = (zconfig_t *) (*self_p)->tree;
        zconfig_destroy (&tree);
        free ((*self_p)->orgs);
        free ((*self_p)->peers);
        free (*self_p);
        *self_p = NULL;
    }
}

//  Parses an unsigned decimal with bounds. Returns 0 or -1.
static int
s_parse_uint (const char *text, uint64_t min, uint64_t max, uint64_t *value)
{
    if (!text || !*text)
        return -1;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    errno = 0;
    unsigned long long parsed = strtoull (text, NULL, 10);
    if (errno || parsed < min || parsed > max)
        return -1;
    *value = parsed;
    return 0;
}

static int
s_parse_bool (const char *text, bool *value)
{
    if (streq (text, "1") || streq (text, "true") || streq (text, "yes"))
        *value = true;
    else
    if (streq (text, "0") || streq (text, "false") || streq (text, "no"))
        *value = false;
    else
        return -1;
    return 0;
}

//  Copies a string setting, refusing values that do not fit.
static int
s_copy (char *dest, size_t dest_size, const char *value)
{
    if (strlen (value) >= dest_size)
        return -1;
    memcpy (dest, value, strlen (value) + 1);
    return 0;
}

static int
s_parse_endpoint_list (const char *path, const char *value, size_t *count,
                       char endpoints [KIM_ENDPOINTS_MAX][KIM_ENDPOINT_MAX + 1],
                       char *error, size_t error_size);

static int
s_parse_endpoints (kim_config_t *self, const char *value, char *error, size_t error_size)
{
    return s_parse_endpoint_list ("broker/bind", value, &self->endpoint_count, self->endpoints,
                                  error, error_size);
}

static int
s_parse_endpoint_list (const char *path, const char *value, size_t *count,
                       char endpoints [KIM_ENDPOINTS_MAX][KIM_ENDPOINT_MAX + 1],
                       char *error, size_t error_size)
{
    *count = 0;
    const char *start = value;
    while (*start) {
        const char *end = strchr (start, ',');
        size_t len = end? (size_t) (end - start): strlen (start);
        while (len && (*start == ' ')) {
            start++;
            len--;
        }
        while (len && start [len - 1] == ' ')
            len--;
        if (len == 0 || len > KIM_ENDPOINT_MAX
        || *count == KIM_ENDPOINTS_MAX
        || (strncmp (start, "tcp://", 6) && strncmp (start, "ipc://", 6))) {
            s_set_error (error, error_size,
                         "%s: '%s' is not a list of up to %d tcp:// or ipc:// endpoints",
                         path, value, KIM_ENDPOINTS_MAX);
            return -1;
        }
        memcpy (endpoints [*count], start, len);
        endpoints [*count][len] = 0;
        (*count)++;
        if (!end)
            break;
        start = end + 1;
    }
    if (*count == 0) {
        s_set_error (error, error_size, "%s: no endpoint given", path);
        return -1;
    }
    return 0;
}

static int
s_parse_role (const char *text, kim_role_t *role)
{
    if (streq (text, "agency"))
        *role = KIM_ROLE_AGENCY;
    else
    if (streq (text, "auditor"))
        *role = KIM_ROLE_AUDITOR;
    else
    if (streq (text, "operator"))
        *role = KIM_ROLE_OPERATOR;
    else
        return -1;
    return 0;
}

const char *
kim_role_name (kim_role_t role)
{
    switch (role) {
        case KIM_ROLE_AGENCY: return "agency";
        case KIM_ROLE_AUDITOR: return "auditor";
        case KIM_ROLE_OPERATOR: return "operator";
        case KIM_ROLE_PEER: return "peer";
    }
    return "unknown";
}

static bool
s_z85_key_valid (const char *key)
{
    if (strlen (key) != 40)
        return false;
    uint8_t raw [32];
    return zmq_z85_decode (raw, key) != NULL;
}

//  Unknown keys in an entry of `section` are errors (kim.cfg(5)): a typo
//  must not pass as a default. `known` ends with NULL.
static int
s_known_keys (zconfig_t *node, const char *section, const char *const known [],
              char *error, size_t error_size)
{
    for (zconfig_t *key = zconfig_child (node); key; key = zconfig_next (key)) {
        const char *name = zconfig_name (key);
        size_t i = 0;
        while (known [i] && !streq (known [i], name))
            i++;
        if (!known [i]) {
            char expected [256] = "";
            for (i = 0; known [i]; i++)
                snprintf (expected + strlen (expected), sizeof expected - strlen (expected),
                          "%s%s", i? ", ": "", known [i]);
            s_set_error (error, error_size, "%s/%s/%s: unknown key (expected %s)", section,
                         zconfig_name (node), name, expected);
            return -1;
        }
    }
    return 0;
}

static int
s_parse_org (kim_config_t *self, zconfig_t *node, char *error, size_t error_size)
{
    const char *id = zconfig_name (node);
    kim_org_t *org = &self->orgs [self->org_count];
    memset (org, 0, sizeof *org);
    if (!kim_org_valid (id) || s_copy (org->id, sizeof org->id, id)) {
        s_set_error (error, error_size,
                     "orgs/%s: not a valid organisation id (<type>.<place>[.<unit>], "
                     "lowercase letters, digits, '_' and '-')", id);
        return -1;
    }
    if (kim_config_org (self, id)) {
        s_set_error (error, error_size, "orgs/%s: registered twice", id);
        return -1;
    }
    static const char *const known [] = {
        "name", "type", "public_body", "role", "public_key", "revoked", "sign_key", NULL
    };
    if (s_known_keys (node, "orgs", known, error, error_size))
        return -1;
    //  The agency type defaults to the id's first part, which is how ids are made.
    const char *dot = strchr (id, '.');
    char type [KIM_CODE_MAX + 1];
    snprintf (type, sizeof type, "%.*s", (int) (dot - id), id);

    const char *name = zconfig_get (node, "name", id);
    const char *type_value = zconfig_get (node, "type", type);
    const char *public_body = zconfig_get (node, "public_body", "1");
    const char *role = zconfig_get (node, "role", "agency");
    const char *key = zconfig_get (node, "public_key", "");
    const char *revoked = zconfig_get (node, "revoked", "0");
    const char *sign_key = zconfig_get (node, "sign_key", "");

    if (s_copy (org->name, sizeof org->name, name)
    ||  !kim_utf8_valid ((const uint8_t *) name, strlen (name))) {
        s_set_error (error, error_size, "orgs/%s/name: must be UTF-8 of at most %d bytes",
                     id, KIM_NAME_MAX);
        return -1;
    }
    if (!kim_code_valid (type_value) || s_copy (org->type, sizeof org->type, type_value)) {
        s_set_error (error, error_size, "orgs/%s/type: '%s' is not an agency type code",
                     id, type_value);
        return -1;
    }
    if (s_parse_bool (public_body, &org->public_body)) {
        s_set_error (error, error_size, "orgs/%s/public_body: must be 0 or 1", id);
        return -1;
    }
    if (s_parse_role (role, &org->role)) {
        s_set_error (error, error_size,
                     "orgs/%s/role: '%s' is not one of agency, auditor, operator", id, role);
        return -1;
    }
    if (!s_z85_key_valid (key)) {
        s_set_error (error, error_size,
                     "orgs/%s/public_key: must be a 40-character Z85 CURVE public key "
                     "(see `kim keygen`)", id);
        return -1;
    }
    memcpy (org->public_key, key, 41);
    //  Optional: with it, every SEND from this org must carry a valid hdr.sig.
    if (*sign_key && !s_z85_key_valid (sign_key)) {
        s_set_error (error, error_size,
                     "orgs/%s/sign_key: must be a 40-character Z85 Ed25519 public key "
                     "(see `kim keygen --sign`)", id);
        return -1;
    }
    kim_str_copy (org->sign_key, sizeof org->sign_key, sign_key);
    if (s_parse_bool (revoked, &org->revoked)) {
        s_set_error (error, error_size, "orgs/%s/revoked: must be 0 or 1", id);
        return -1;
    }
    if (!org->revoked && kim_config_org_by_key (self, key)) {
        s_set_error (error, error_size,
                     "orgs/%s/public_key: the key is registered for another organisation", id);
        return -1;
    }
    self->org_count++;
    return 0;
}

//  One child of "peers": the peer broker's name, where to dial it and its
//  two public keys. Every key is checked, and unknown keys are errors:
//  a link is trust between districts, a typo in it must not pass.
static int
s_parse_peer (kim_config_t *self, zconfig_t *node, char *error, size_t error_size)
{
    const char *name = zconfig_name (node);
    kim_peer_config_t *peer = &self->peers [self->peer_count];
    memset (peer, 0, sizeof *peer);
    if (!kim_org_valid (name) || s_copy (peer->name, sizeof peer->name, name)) {
        s_set_error (error, error_size, "peers/%s: not a valid broker name (<type>.<place>, "
                     "the peer's broker/name)", name);
        return -1;
    }
    if (kim_config_peer (self, name)) {
        s_set_error (error, error_size, "peers/%s: listed twice", name);
        return -1;
    }
    if (streq (name, self->name)) {
        s_set_error (error, error_size, "peers/%s: is this broker's own name", name);
        return -1;
    }
    if (kim_config_org (self, name)) {
        s_set_error (error, error_size, "peers/%s: the name is registered as an organisation",
                     name);
        return -1;
    }
    static const char *const known [] = { "endpoint", "public_key", "sign_key", NULL };
    if (s_known_keys (node, "peers", known, error, error_size))
        return -1;
    char path [KIM_ORG_MAX + 32];
    snprintf (path, sizeof path, "peers/%s/endpoint", name);
    const char *endpoint = zconfig_get (node, "endpoint", "");
    if (!*endpoint) {
        s_set_error (error, error_size, "%s: missing (where to dial the peer)", path);
        return -1;
    }
    if (s_parse_endpoint_list (path, endpoint, &peer->endpoint_count, peer->endpoints,
                               error, error_size))
        return -1;
    const char *key = zconfig_get (node, "public_key", "");
    if (!s_z85_key_valid (key)) {
        s_set_error (error, error_size, "peers/%s/public_key: must be the peer broker's "
                     "40-character Z85 CURVE public key (keys/broker.cert of its data)", name);
        return -1;
    }
    memcpy (peer->public_key, key, 41);
    const char *sign_key = zconfig_get (node, "sign_key", "");
    if (!s_z85_key_valid (sign_key)) {
        s_set_error (error, error_size, "peers/%s/sign_key: must be the peer broker's "
                     "40-character Z85 Ed25519 public key (keys/broker.sign.pub of its data)",
                     name);
        return -1;
    }
    memcpy (peer->sign_key, sign_key, 41);
    if (kim_config_org_by_key (self, key) || kim_config_org_by_revoked_key (self, key)) {
        s_set_error (error, error_size, "peers/%s/public_key: the key is registered for an "
                     "organisation or another peer", name);
        return -1;
    }
    //  The peer's entry in the registry: ZAP admits its key, and its
    //  connection has the role peer.
    kim_org_t *org = &self->orgs [self->org_count];
    memset (org, 0, sizeof *org);
    memcpy (org->id, peer->name, sizeof org->id);
    snprintf (org->name, sizeof org->name, "peer broker %s", peer->name);
    kim_str_copy (org->type, sizeof org->type, "broker");
    org->public_body = true;
    org->role = KIM_ROLE_PEER;
    memcpy (org->public_key, peer->public_key, sizeof org->public_key);
    memcpy (org->sign_key, peer->sign_key, sizeof org->sign_key);
    self->org_count++;
    self->peer_count++;
    return 0;
}

const kim_peer_config_t *
kim_config_peer (const kim_config_t *self, const char *name)
{
    for (size_t i = 0; self && name && i < self->peer_count; i++)
        if (streq (self->peers [i].name, name))
            return &self->peers [i];
    return NULL;
}

//  Keys that may appear in each section; anything else is a typo we report.
static const char *s_broker_keys [] = {
    "name", "data", "bind", "verbose",
#define KIM_X_KEY(field, path, min, max, def, scale) path,
    KIM_SETTINGS (KIM_X_KEY)
#undef KIM_X_KEY
    "store/sync", "store/journal", NULL
};

static bool
s_known_key (const char *section, const char *name)
{
    char path [128];
    snprintf (path, sizeof path, "%s/%s", section, name);
    for (int i = 0; s_broker_keys [i]; i++)
        if (streq (s_broker_keys [i], path) || streq (s_broker_keys [i], name))
            return true;
    return false;
}

static int
s_apply (kim_config_t *self, zconfig_t *root, char *error, size_t error_size)
{
    //  Unknown sections and keys are errors: a misspelt key silently falling
    //  back to a default is the kind of surprise nobody wants at 3 a.m.
    for (zconfig_t *section = zconfig_child (root); section; section = zconfig_next (section)) {
        const char *sname = zconfig_name (section);
        if (streq (sname, "orgs") || streq (sname, "peers") || streq (sname, "policy")
        ||  streq (sname, "lifecycle")
        ||  streq (sname, "audit") || streq (sname, "retention") || streq (sname, "metrics"))
            continue;
        if (!streq (sname, "broker") && !streq (sname, "store")) {
            s_set_error (error, error_size,
                         "%s: unknown section (expected broker, store, orgs, peers, policy, "
                         "lifecycle, retention, audit, metrics)", sname);
            return -1;
        }
        for (zconfig_t *key = zconfig_child (section); key; key = zconfig_next (key))
            if (!s_known_key (sname, zconfig_name (key))
            ||  (streq (sname, "broker") && strchr (zconfig_name (key), '/'))) {
                s_set_error (error, error_size, "%s/%s: unknown key", sname, zconfig_name (key));
                return -1;
            }
    }
    const char *value = zconfig_get (root, "broker/name", NULL);
    //  The broker signs its own messages (REMINDER, DELIVERED...) and names
    //  itself in WELCOME with it: it has the form of an organisation's id.
    if (value && !kim_org_valid (value)) {
        s_set_error (error, error_size, "broker/name: '%s' is not a valid name: it has the "
                     "form of an organisation id, <type>.<place> (lower case, digits, '-' "
                     "and '_'), e.g. broker.coesfeld", value);
        return -1;
    }
    if (value)
        s_copy (self->name, sizeof self->name, value);
    value = zconfig_get (root, "broker/data", NULL);
    if (value && (!*value || s_copy (self->data, sizeof self->data, value))) {
        s_set_error (error, error_size, "broker/data: must be a folder path of at most %d bytes",
                     KIM_ENDPOINT_MAX);
        return -1;
    }
    value = zconfig_get (root, "broker/bind", NULL);
    if (value && s_parse_endpoints (self, value, error, error_size))
        return -1;

#define KIM_X_PARSE(field, path, min, max, def, scale)                                   \
    value = zconfig_get (root, path, NULL);                                              \
    if (value) {                                                                         \
        uint64_t parsed;                                                                 \
        if (s_parse_uint (value, (min), (max), &parsed)) {                               \
            s_set_error (error, error_size, "%s: '%s' must be a whole number from %llu to %llu", \
                         path, value, (unsigned long long) (min), (unsigned long long) (max)); \
            return -1;                                                                   \
        }                                                                                \
        self->field = parsed * (scale);                                                  \
    }
    KIM_SETTINGS (KIM_X_PARSE)
#undef KIM_X_PARSE
    if (self->map_size > self->map_max) {
        s_set_error (error, error_size, "store/map_size_mb: larger than store/map_max_mb");
        return -1;
    }
    if (self->window_max > 4096 || self->max_payload > KIM_PAYLOAD_MAX)
        return -1;
    value = zconfig_get (root, "store/sync", NULL);
    if (value && s_parse_bool (value, &self->sync)) {
        s_set_error (error, error_size, "store/sync: must be 0 or 1");
        return -1;
    }
    value = zconfig_get (root, "store/journal", NULL);
    if (value && s_parse_bool (value, &self->journal)) {
        s_set_error (error, error_size, "store/journal: must be 0 or 1");
        return -1;
    }
    value = zconfig_get (root, "broker/verbose", NULL);
    if (value && s_parse_bool (value, &self->verbose)) {
        s_set_error (error, error_size, "broker/verbose: must be 0 or 1");
        return -1;
    }

    zconfig_t *orgs = zconfig_locate (root, "orgs");
    zconfig_t *peers = zconfig_locate (root, "peers");
    size_t count = 0, peer_count = 0;
    for (zconfig_t *node = orgs? zconfig_child (orgs): NULL; node; node = zconfig_next (node))
        count++;
    for (zconfig_t *node = peers? zconfig_child (peers): NULL; node; node = zconfig_next (node))
        peer_count++;
    if (peer_count > KIM_PEERS_MAX) {
        s_set_error (error, error_size, "peers: at most %d peer brokers", KIM_PEERS_MAX);
        return -1;
    }
    if (count + peer_count) {
        self->orgs = (kim_org_t *) calloc (count + peer_count, sizeof (kim_org_t));
        self->peers = peer_count
            ? (kim_peer_config_t *) calloc (peer_count, sizeof (kim_peer_config_t)): NULL;
        if (!self->orgs || (peer_count && !self->peers)) {
            s_set_error (error, error_size, "out of memory");
            return -1;
        }
        for (zconfig_t *node = orgs? zconfig_child (orgs): NULL; node; node = zconfig_next (node))
            if (s_parse_org (self, node, error, error_size))
                return -1;
        //  Peers after the organisations, so that a peer's name and key
        //  are checked against every organisation's.
        for (zconfig_t *node = peers? zconfig_child (peers): NULL; node; node = zconfig_next (node))
            if (s_parse_peer (self, node, error, error_size))
                return -1;
    }
    return 0;
}

//  ZPL reads the first of two equal names and ignores the other, so a
//  section or key given twice would pass with one of its values silently
//  (kim.cfg(5): nothing falls back silently). A hash a level keeps this
//  linear for a registry of thousands of organisations.
static int
s_given_twice (zconfig_t *node, const char *path, char *error, size_t error_size)
{
    zhashx_t *names = zhashx_new ();
    if (!names) {
        s_set_error (error, error_size, "out of memory");
        return -1;
    }
    int rc = 0;
    for (zconfig_t *child = zconfig_child (node); child && rc == 0;
         child = zconfig_next (child)) {
        char here [512];
        snprintf (here, sizeof here, "%s%s%s", path, *path? "/": "", zconfig_name (child));
        if (zhashx_insert (names, zconfig_name (child), child) != 0) {
            s_set_error (error, error_size, "%s: given twice", here);
            rc = -1;
        }
        else
            rc = s_given_twice (child, here, error, error_size);
    }
    zhashx_destroy (&names);
    return rc;
}

static kim_config_t *
s_from_zconfig (zconfig_t *root, char *error, size_t error_size, int *err)
{
    kim_config_t *self = kim_config_new ();
    if (!self) {
        *err = -KIM_E_NOMEM;
        return NULL;
    }
    if (s_given_twice (root, "", error, error_size) || s_apply (self, root, error, error_size)) {
        kim_config_destroy (&self);
        *err = -KIM_E_CONFIG;
    }
    return self;
}

kim_config_t *
kim_config_load (const char *path, char *error, size_t error_size, int *err)
{
    if (!zsys_file_exists (path)) {
        s_set_error (error, error_size, "%s: no such file", path);
        *err = -KIM_E_CONFIG;
        return NULL;
    }
    int why;
    char *text = kim_file_text (path, S_CONFIG_MAX, NULL, &why);
    if (!text) {
        s_set_error (error, error_size, "%s: cannot read it: %s", path,
                     why == EFBIG? "larger than 4 MiB": strerror (why));
        *err = -KIM_E_CONFIG;
        return NULL;
    }
    zconfig_t *root = zconfig_str_load (text);
    free (text);
    if (!root) {
        s_set_error (error, error_size, "%s: not a valid ZPL file (indent with 4 spaces, "
                     "'name = value' per line; the line is in the log just before)", path);
        *err = -KIM_E_CONFIG;
        return NULL;
    }
    kim_config_t *self = s_from_zconfig (root, error, error_size, err);
    if (self) {
        self->tree = root;
        kim_str_copy (self->path, sizeof self->path, path);
    }
    else
        zconfig_destroy (&root);
    return self;
}

bool
kim_config_keep_running (kim_config_t *fresh, const kim_config_t *old)
{
    //  These sized arrays and bound sockets at start; the name is the
    //  broker's identity to its peers and the sender of its own messages.
    bool data_moved = !(old->overridden & KIM_CONFIG_DATA) && strcmp (fresh->data, old->data);
    bool bind_moved = !(old->overridden & KIM_CONFIG_BIND)
        && (fresh->endpoint_count != old->endpoint_count
        ||  memcmp (fresh->endpoints, old->endpoints, sizeof fresh->endpoints));
    bool changed = fresh->window_max != old->window_max || fresh->batch_max != old->batch_max
                || data_moved || bind_moved
                || fresh->max_payload != old->max_payload || fresh->map_max != old->map_max
                || fresh->sync != old->sync || fresh->journal != old->journal
                || strcmp (fresh->name, old->name);
    memcpy (fresh->name, old->name, sizeof fresh->name);
    fresh->overridden = old->overridden;
    if (old->overridden & KIM_CONFIG_VERBOSE)
        fresh->verbose = true;
    fresh->window_max = old->window_max;
    fresh->batch_max = old->batch_max;
    fresh->max_payload = old->max_payload;
    fresh->map_size = old->map_size;
    fresh->map_max = old->map_max;
    fresh->sync = old->sync;
    fresh->journal = old->journal;
    memcpy (fresh->data, old->data, sizeof fresh->data);
    fresh->endpoint_count = old->endpoint_count;
    memcpy (fresh->endpoints, old->endpoints, sizeof fresh->endpoints);
    return changed;
}

kim_config_t *
kim_config_parse (const char *text, char *error, size_t error_size, int *err)
{
    zconfig_t *root = zconfig_str_load (text);
    if (!root) {
        s_set_error (error, error_size, "not valid ZPL text");
        *err = -KIM_E_CONFIG;
        return NULL;
    }
    kim_config_t *self = s_from_zconfig (root, error, error_size, err);
    if (self)
        self->tree = root;
    else
        zconfig_destroy (&root);
    return self;
}

void *
kim_config_tree (const kim_config_t *self)
{
    return self->tree;
}

int
kim_config_number (void *tree, const char *path, uint64_t min, uint64_t max, uint64_t *value,
                   char *error, size_t error_size)
{
    const char *text = tree? zconfig_get ((zconfig_t *) tree, path, NULL): NULL;
    if (!text)
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long number = strtoull (text, &end, 10);
    if (!*text || *end || errno || text [0] == '-' || number < min || number > max) {
        snprintf (error, error_size, "%s: '%s' must be a whole number %" PRIu64 "..%" PRIu64,
                  path, text, min, max);
        return -KIM_E_CONFIG;
    }
    *value = number;
    return 0;
}

const kim_org_t *
kim_config_org (const kim_config_t *self, const char *id)
{
    for (size_t i = 0; i < self->org_count; i++)
        if (streq (self->orgs [i].id, id))
            return &self->orgs [i];
    return NULL;
}

const kim_org_t *
kim_config_org_by_key (const kim_config_t *self, const char *public_key)
{
    for (size_t i = 0; i < self->org_count; i++)
        if (!self->orgs [i].revoked && streq (self->orgs [i].public_key, public_key))
            return &self->orgs [i];
    return NULL;
}

const kim_org_t *
kim_config_org_by_revoked_key (const kim_config_t *self, const char *public_key)
{
    for (size_t i = 0; i < self->org_count; i++)
        if (self->orgs [i].revoked && streq (self->orgs [i].public_key, public_key))
            return &self->orgs [i];
    return NULL;
}

//  --------------------------------------------------------------------------
//  Self-test

static void
s_expect_error (const char *text, const char *fragment)
{
    char error [KIM_ERR_BUF] = "";
    int err = 0;
    kim_config_t *config = kim_config_parse (text, error, sizeof error, &err);
    if (config || err != -KIM_E_CONFIG || !strstr (error, fragment)) {
        fprintf (stderr, "expected error containing '%s', got '%s'\n", fragment, error);
        assert (false);
    }
}

void
kim_config_test (bool verbose)
{
    kim_config_t *config = kim_config_new ();
    assert (config);
    assert (config->endpoint_count == 1);
    assert (streq (config->endpoints [0], KIM_DEFAULT_ENDPOINT));
    assert (config->heartbeat_ms == 5000);
    assert (config->dedup_window_ms == 604800ull * 1000);
    assert (config->map_size == 64ull << 20);
    assert (config->sync);
    assert (!config->journal);
    kim_config_destroy (&config);
    assert (config == NULL);
    kim_config_destroy (&config);

    zcert_t *cert = zcert_new ();
    char text [2048];
    snprintf (text, sizeof text,
              "broker\n"
              "    name = kim.rheine\n"
              "    bind = \"tcp://127.0.0.1:7999, ipc:///tmp/kim-test.sock\"\n"
              "    heartbeat_ms = 1000\n"
              "store\n"
              "    map_size_mb = 8\n"
              "    sync = 0\n"
              "    journal = 1\n"
              "orgs\n"
              "    jc.rheine\n"
              "        name = \"Jobcenter Rheine\"\n"
              "        public_key = \"%s\"\n"
              "    mbe.rheine.caritas\n"
              "        public_body = 0\n"
              "        public_key = \"%s\"\n",
              zcert_public_txt (cert), "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
    char error [KIM_ERR_BUF] = "";
    int err = 0;
    config = kim_config_parse (text, error, sizeof error, &err);
    if (!config)
        fprintf (stderr, "config: %s\n", error);
    assert (config);
    assert (streq (config->name, "kim.rheine"));
    assert (config->endpoint_count == 2);
    assert (streq (config->endpoints [1], "ipc:///tmp/kim-test.sock"));
    assert (config->heartbeat_ms == 1000);
    assert (config->map_size == 8ull << 20);
    assert (!config->sync);
    assert (config->journal);
    assert (config->org_count == 2);
    const kim_org_t *org = kim_config_org (config, "jc.rheine");
    assert (org && streq (org->type, "jc") && org->public_body && org->role == KIM_ROLE_AGENCY);
    assert (streq (org->name, "Jobcenter Rheine"));
    assert (kim_config_org_by_key (config, zcert_public_txt (cert)) == org);
    org = kim_config_org (config, "mbe.rheine.caritas");
    assert (org && streq (org->type, "mbe") && !org->public_body);
    assert (kim_config_org (config, "jc.other") == NULL);
    kim_config_destroy (&config);

    //  Every error names the key path.
    s_expect_error ("broker\n    heartbeat_ms = 5\n", "broker/heartbeat_ms");
    s_expect_error ("broker\n    heartbeat_ms = 5x\n", "broker/heartbeat_ms");
    s_expect_error ("broker\n    bind = http://x\n", "broker/bind");
    s_expect_error ("broker\n    hartbeat_ms = 5\n", "broker/hartbeat_ms: unknown key");
    s_expect_error ("brokr\n    name = x\n", "brokr: unknown section");
    s_expect_error ("store\n    sync = maybe\n", "store/sync");
    s_expect_error ("store\n    journal = 2\n", "store/journal");
    s_expect_error ("store\n    map_size_mb = 100\n    map_max_mb = 10\n", "store/map_size_mb");
    s_expect_error ("orgs\n    JC.Rheine\n        public_key = x\n", "orgs/JC.Rheine");
    s_expect_error ("orgs\n    jc.rheine\n        public_key = short\n", "orgs/jc.rheine/public_key");
    snprintf (text, sizeof text, "orgs\n    jc.rheine\n        role = king\n"
              "        public_key = \"%s\"\n", zcert_public_txt (cert));
    s_expect_error (text, "orgs/jc.rheine/role");
    snprintf (text, sizeof text, "orgs\n    jc.a\n        public_key = \"%s\"\n"
              "    jc.b\n        public_key = \"%s\"\n",
              zcert_public_txt (cert), zcert_public_txt (cert));
    s_expect_error (text, "orgs/jc.b/public_key: the key is registered for another");
    snprintf (text, sizeof text, "orgs\n    jc.a\n        public_key = \"%s\"\n"
              "        sign_key = \"not-a-key\"\n", zcert_public_txt (cert));
    s_expect_error (text, "orgs/jc.a/sign_key: must be a 40-character Z85 Ed25519");
    snprintf (text, sizeof text, "orgs\n    jc.a\n        public_key = \"%s\"\n"
              "        sign_key = \"%s\"\n", zcert_public_txt (cert), zcert_public_txt (cert));
    config = kim_config_parse (text, error, sizeof error, &err);
    assert (config && streq (config->orgs [0].sign_key, zcert_public_txt (cert)));
    kim_config_destroy (&config);

    //  The broker's own name has the form of an organisation's id: it is
    //  the sender of its messages, and peers know it by it.
    s_expect_error ("broker\n    name = kreis-coesfeld\n",
                    "broker/name: 'kreis-coesfeld' is not a valid name");

    //  Peers: every key checked, unknown keys refused, keys not shared
    //  with organisations; each becomes a registry entry of role peer.
    zcert_t *peer_cert = zcert_new ();
    assert (peer_cert);
    const char *pk = zcert_public_txt (peer_cert);
    snprintf (text, sizeof text, "orgs\n    jc.a\n        public_key = \"%s\"\n"
              "peers\n    broker.coesfeld\n        endpoint = \"tcp://10.1.2.3:7470, "
              "tcp://10.1.2.4:7470\"\n        public_key = \"%s\"\n        sign_key = \"%s\"\n",
              zcert_public_txt (cert), pk, pk);
    config = kim_config_parse (text, error, sizeof error, &err);
    assert (config && config->peer_count == 1 && config->org_count == 2);
    assert (config->peers [0].endpoint_count == 2);
    assert (streq (config->peers [0].endpoints [1], "tcp://10.1.2.4:7470"));
    const kim_org_t *peer_org = kim_config_org_by_key (config, pk);
    assert (peer_org && peer_org->role == KIM_ROLE_PEER && streq (peer_org->id, "broker.coesfeld"));
    assert (kim_config_peer (config, "broker.coesfeld") && !kim_config_peer (config, "jc.a"));
    kim_config_destroy (&config);
    snprintf (text, sizeof text, "peers\n    broker.c\n        endpoint = \"tcp://a:1\"\n"
              "        public_key = \"%s\"\n        sign_key = \"%s\"\n        colour = red\n", pk, pk);
    s_expect_error (text, "peers/broker.c/colour: unknown key");
    snprintf (text, sizeof text, "peers\n    broker.c\n        public_key = \"%s\"\n"
              "        sign_key = \"%s\"\n", pk, pk);
    s_expect_error (text, "peers/broker.c/endpoint: missing");
    snprintf (text, sizeof text, "peers\n    broker.c\n        endpoint = \"http://a\"\n"
              "        public_key = \"%s\"\n        sign_key = \"%s\"\n", pk, pk);
    s_expect_error (text, "peers/broker.c/endpoint:");
    snprintf (text, sizeof text, "peers\n    broker.c\n        endpoint = \"tcp://a:1\"\n"
              "        public_key = \"%s\"\n", pk);
    s_expect_error (text, "peers/broker.c/sign_key");
    snprintf (text, sizeof text, "orgs\n    jc.a\n        public_key = \"%s\"\n"
              "peers\n    broker.c\n        endpoint = \"tcp://a:1\"\n"
              "        public_key = \"%s\"\n        sign_key = \"%s\"\n", pk, pk, pk);
    s_expect_error (text, "peers/broker.c/public_key: the key is registered");
    snprintf (text, sizeof text, "orgs\n    jc.a\n        public_key = \"%s\"\n"
              "peers\n    jc.a\n        endpoint = \"tcp://a:1\"\n"
              "        public_key = \"%s\"\n        sign_key = \"%s\"\n",
              zcert_public_txt (cert), pk, pk);
    s_expect_error (text, "peers/jc.a: the name is registered as an organisation");
    snprintf (text, sizeof text, "peers\n    Not_A_Name\n        endpoint = \"tcp://a:1\"\n");
    s_expect_error (text, "peers/Not_A_Name: not a valid broker name");
    zcert_destroy (&peer_cert);

    error [0] = 0;
    config = kim_config_load ("/nonexistent/kim.cfg", error, sizeof error, &err);
    assert (!config && err == -KIM_E_CONFIG && strstr (error, "no such file"));
    zcert_destroy (&cert);
    if (verbose)
        printf ("kim_config: all checks passed\n");
}
