/*  kim_metrics.c — the broker's figures as a Prometheus text endpoint.

    Owns the `metrics` section of the config, the rendering of every figure
    into Prometheus' text format, and the HTTP server (libmicrohttpd) that
    serves it. It exists apart from the server loop so that monitoring
    costs the hot path an increment and nothing else.

    Threads: the broker is single-threaded by design and stays so. The
    render runs in the server's loop (a zloop timer), where reading the
    server's counters and the store is safe; it then swaps the finished text
    in under a mutex. libmicrohttpd's own thread only copies the latest
    text out under that mutex. Nothing else is shared.

    Cost: per render, one mailbox count and one oldest-record read per
    organisation; the referral states need a scan of the referral tree,
    done at most every referral_interval_s (default 60 s) under an aborted
    write transaction (the only way to read beside the store's own reads).
*/
#include <czmq.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>
#ifdef KIM_HAVE_MICROHTTPD
#include <microhttpd.h>
#endif

#include "kim/kim_error.h"
#include "kim_lifecycle_int.h"
#include "kim_metrics.h"
#include "kim_server_int.h"

#define M_PORT_DEFAULT          9470
#define M_INTERVAL_DEFAULT      5000
#define M_REFERRAL_DEFAULT      60
#define M_STATES                16      //  referral states are 1..12
#define M_CONNECTIONS           16      //  scrapers are few; a flood gets refused
#define M_CHECKPOINT_SCAN       100000  //  most log records read back for the last checkpoint

static const double s_commit_bounds [KIM_HISTOGRAM_BUCKETS] = {
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096
};
static const double s_batch_bounds [KIM_HISTOGRAM_BUCKETS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192
};

typedef struct {
    bool enabled;
    char listen [INET_ADDRSTRLEN];
    uint64_t port;
    uint64_t interval_ms;
    uint64_t referral_interval_s;
} s_settings_t;

struct _kim_metrics_t {
    kim_server_t *server;
    s_settings_t settings;
    int timer_id;
    //  Referral figures, refreshed every referral_interval_s
    uint64_t referrals [M_STATES];
    uint64_t referral_scan_ms;          //  when last scanned (monotonic), 0: never
    bool referrals_known;
    //  The last signed checkpoint in the log (s_scan_checkpoints)
    bool scanned;
    uint64_t checkpoint_seq;            //  0: none seen
    uint64_t checkpoint_ms;
    //  The text being rendered (loop thread only)
    char *text;
    size_t size;
    size_t capacity;
    bool overflow;
    //  The text being served: swapped in under the mutex
    pthread_mutex_t mutex;
    char *served;
    size_t served_size;
#ifdef KIM_HAVE_MICROHTTPD
    struct MHD_Daemon *daemon;
#endif
};


//  --------------------------------------------------------------------------
//  Counters the server feeds

static void
s_observe (kim_histogram_t *histogram, const double bounds [KIM_HISTOGRAM_BUCKETS], double value)
{
    size_t bucket = 0;
    while (bucket < KIM_HISTOGRAM_BUCKETS && value > bounds [bucket])
        bucket++;
    histogram->buckets [bucket]++;
    histogram->count++;
    histogram->sum += value;
}

void
kim_metrics_observe_commit (kim_histogram_t *histogram, int64_t usec)
{
    s_observe (histogram, s_commit_bounds, usec > 0? (double) usec / 1e6: 0);
}

void
kim_metrics_observe_batch (kim_histogram_t *histogram, size_t items)
{
    s_observe (histogram, s_batch_bounds, (double) items);
}

void
kim_metrics_count_refusal (uint64_t refused [KIM_METRICS_CODES], int code)
{
    if (code < 0)
        code = -code;
    if (code > 0 && code < KIM_METRICS_CODES)
        refused [code]++;
}


//  --------------------------------------------------------------------------
//  Configuration

static int
s_settings (const kim_config_t *config, s_settings_t *settings, char *error, size_t error_size)
{
    memset (settings, 0, sizeof *settings);
    strcpy (settings->listen, "127.0.0.1");
    settings->port = M_PORT_DEFAULT;
    settings->interval_ms = M_INTERVAL_DEFAULT;
    settings->referral_interval_s = M_REFERRAL_DEFAULT;
    zconfig_t *tree = (zconfig_t *) kim_config_tree (config);
    zconfig_t *section = tree? zconfig_locate (tree, "metrics"): NULL;
    for (zconfig_t *key = section? zconfig_child (section): NULL; key; key = zconfig_next (key)) {
        const char *name = zconfig_name (key);
        if (!streq (name, "enabled") && !streq (name, "listen") && !streq (name, "port")
        &&  !streq (name, "interval_ms") && !streq (name, "referral_interval_s")) {
            snprintf (error, error_size, "metrics/%s: unknown key (expected enabled, listen, "
                      "port, interval_ms, referral_interval_s)", name);
            return -1;
        }
    }
    uint64_t enabled = 0;
    if (kim_config_number (tree, "metrics/enabled", 0, 1, &enabled, error, error_size)
    ||  kim_config_number (tree, "metrics/port", 1, 65535, &settings->port, error, error_size)
    ||  kim_config_number (tree, "metrics/interval_ms", 100, 3600000, &settings->interval_ms, error, error_size)
    ||  kim_config_number (tree, "metrics/referral_interval_s", 1, 86400, &settings->referral_interval_s,
                  error, error_size))
        return -1;
    settings->enabled = enabled == 1;
    const char *listen = section? zconfig_get (section, "listen", NULL): NULL;
    if (listen) {
        struct in_addr addr;
        if (strlen (listen) >= sizeof settings->listen || inet_pton (AF_INET, listen, &addr) != 1) {
            snprintf (error, error_size, "metrics/listen: '%s' is not an IPv4 address", listen);
            return -1;
        }
        strcpy (settings->listen, listen);
    }
#ifndef KIM_HAVE_MICROHTTPD
    if (settings->enabled) {
        snprintf (error, error_size, "metrics/enabled: this kim-broker was built without "
                  "libmicrohttpd (Debian: libmicrohttpd-dev)");
        return -1;
    }
#endif
    return 0;
}

int
kim_metrics_check (const kim_config_t *config, char *error, size_t error_size)
{
    s_settings_t settings;
    return s_settings (config, &settings, error, error_size);
}


//  --------------------------------------------------------------------------
//  Rendering (the server's loop thread)

static void
s_put (kim_metrics_t *self, const char *format, ...) CHECK_PRINTF (2);

static void
s_put (kim_metrics_t *self, const char *format, ...)
{
    if (self->overflow)
        return;
    for (int attempt = 0; attempt < 2; attempt++) {
        va_list args;
        va_start (args, format);
        int size = vsnprintf (self->text + self->size, self->capacity - self->size, format, args);
        va_end (args);
        if (size < 0) {
            self->overflow = true;
            return;
        }
        if ((size_t) size < self->capacity - self->size) {
            self->size += (size_t) size;
            return;
        }
        size_t capacity = self->capacity * 2 + (size_t) size + 1;
        char *text = (char *) realloc (self->text, capacity);
        if (!text) {
            self->overflow = true;
            return;
        }
        self->text = text;
        self->capacity = capacity;
    }
}

static void
s_family (kim_metrics_t *self, const char *name, const char *type, const char *help)
{
    s_put (self, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
s_scalar (kim_metrics_t *self, const char *name, const char *type, const char *help,
          uint64_t value)
{
    s_family (self, name, type, help);
    s_put (self, "%s %" PRIu64 "\n", name, value);
}

static void
s_histogram (kim_metrics_t *self, const char *name, const char *help,
             const kim_histogram_t *histogram, const double bounds [KIM_HISTOGRAM_BUCKETS])
{
    s_family (self, name, "histogram", help);
    uint64_t cumulative = 0;
    for (size_t bucket = 0; bucket < KIM_HISTOGRAM_BUCKETS; bucket++) {
        cumulative += histogram->buckets [bucket];
        s_put (self, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds [bucket], cumulative);
    }
    s_put (self, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, histogram->count);
    s_put (self, "%s_sum %.6f\n%s_count %" PRIu64 "\n", name, histogram->sum, name,
           histogram->count);
}

static int
s_count_referral (void *arg, const kim_referral_t *referral)
{
    uint64_t *counts = (uint64_t *) arg;
    if (referral->state < M_STATES)
        counts [referral->state]++;
    return 0;
}

//  Counts referrals by state: one pass over the referrals in a write
//  transaction that is then aborted (it writes nothing).
static void
s_scan_referrals (kim_metrics_t *self)
{
    kim_store_t *store = self->server->store;
    if (kim_store_begin (store))
        return;                 //  a failed store: keep the last figures
    uint64_t counts [M_STATES] = { 0 };
    size_t bad = 0;
    int rc = kim_lc_referral_scan (store, s_count_referral, counts, &bad);
    kim_store_abort (store);
    if (rc == 0) {
        memcpy (self->referrals, counts, sizeof counts);
        self->referrals_known = true;
    }
    else
        zsys_warning ("metrics: scanning referrals: %s", kim_strerror (rc));
}

//  Finds the log's last checkpoint. The store knows those it appended
//  since it was opened; one written before that is found once, at the
//  first call, by walking back from the head at most M_CHECKPOINT_SCAN
//  records. Call inside a read snapshot.
static void
s_scan_checkpoints (kim_metrics_t *self)
{
    kim_store_t *store = self->server->store;
    if (!self->scanned) {
        uint64_t head = kim_store_head (store);
        uint64_t stop = head > M_CHECKPOINT_SCAN? head - M_CHECKPOINT_SCAN: 0;
        kim_record_t record;
        for (uint64_t seq = head; seq > stop; seq--)
            if (kim_store_read (store, seq, &record) == 0
            &&  record.kind == KIM_RECORD_CHECKPOINT) {
                self->checkpoint_seq = seq;
                self->checkpoint_ms = record.time_ms;
                break;
            }
        self->scanned = true;
    }
    uint64_t time_ms;
    uint64_t seq = kim_store_checkpoint_last (store, &time_ms);
    if (seq > self->checkpoint_seq) {
        self->checkpoint_seq = seq;
        self->checkpoint_ms = time_ms;
    }
}

static void
s_label (kim_metrics_t *self, const char *value)
{
    //  Organisation ids are validated at load; escape anyway, as the format asks
    for (const char *at = value; *at; at++)
        if (*at == '\\' || *at == '"')
            s_put (self, "\\%c", *at);
        else
        if (*at == '\n')
            s_put (self, "\\n");
        else
            s_put (self, "%c", *at);
}

//  The refusals deploy/monitoring/kim-alerts.yml watches: served from 0,
//  so that the first one after a start is an increase too.
static bool
s_alerted (int code)
{
    static const int alerted [] = { KIM_E_STORE_FULL, KIM_E_STORE_FAILED };
    for (size_t i = 0; i < sizeof alerted / sizeof alerted [0]; i++)
        if (code == alerted [i])
            return true;
    return false;
}

int
kim_metrics_render (kim_metrics_t *self, const char **text)
{
    kim_server_t *server = self->server;
    kim_store_t *store = server->store;
    const kim_config_t *config = server->config;
    self->size = 0;
    self->overflow = false;
    if (!self->text) {
        self->text = (char *) malloc (4096);
        if (!self->text)
            return -1;
        self->capacity = 4096;
    }
    self->text [0] = 0;

    uint64_t mono = (uint64_t) zclock_mono ();
    if (!self->referrals_known
    ||  mono - self->referral_scan_ms >= self->settings.referral_interval_s * 1000) {
        s_scan_referrals (self);
        self->referral_scan_ms = mono;
    }

    s_family (self, "kim_build_info", "gauge", "The broker's version and store format.");
    s_put (self, "kim_build_info{version=\"%s\",broker=\"", KIM_VERSION_STRING);
    s_label (self, config->name);
    s_put (self, "\"} 1\n");
    s_scalar (self, "kim_uptime_seconds", "gauge", "Seconds since the broker started.",
              (mono - server->started_ms) / 1000);
    s_scalar (self, "kim_messages_receipted_total", "counter",
              "Messages durably accepted (RECEIPT sent, not duplicates).", server->receipted);
    s_scalar (self, "kim_messages_duplicate_total", "counter",
              "Messages whose msg_id the broker had already: receipted again, stored once.",
              server->duplicates);
    s_family (self, "kim_refusals_total", "counter",
              "REJECTs sent, by reason (wire code and name, see PROTOCOL.md).");
    for (int code = 1; code < KIM_METRICS_CODES; code++)
        if (server->refused [code] || s_alerted (code))
            s_put (self, "kim_refusals_total{reason=\"%s\",code=\"%d\"} %" PRIu64 "\n",
                   kim_errname (code), code, server->refused [code]);
    s_scalar (self, "kim_deliveries_total", "counter", "Deliveries sent to agents.",
              server->delivered);
    s_scalar (self, "kim_redeliveries_total", "counter",
              "Deliveries sent again because no ack came in time.", server->redelivered);
    s_scalar (self, "kim_acks_total", "counter", "Deliveries acknowledged by agents.",
              server->acked);
    s_scalar (self, "kim_batches_total", "counter", "Write batches committed (group commits).",
              server->batches);
    s_histogram (self, "kim_commit_seconds",
                 "Time of one write batch's commit: its pages written and flushed.",
                 &server->commit_seconds, s_commit_bounds);
    s_histogram (self, "kim_sync_seconds",
                 "Time of one sync that makes the last commits durable when no commit follows.",
                 &server->sync_seconds, s_commit_bounds);
    s_histogram (self, "kim_batch_commands", "Commands (SENDs and ACKs) per write batch.",
                 &server->batch_commands, s_batch_bounds);
    s_scalar (self, "kim_sessions", "gauge", "Agent sessions connected now.",
              zhashx_size (server->sessions));
    s_scalar (self, "kim_log_head", "gauge", "Sequence number of the last log record.",
              kim_store_head (store));

    //  The store: bytes in use against the ceiling, and the file itself
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/store/data.mdb", config->data);
    struct stat st;
    uint64_t used = kim_store_bytes (store);
    s_scalar (self, "kim_store_used_bytes", "gauge", "Bytes of the store's map in use.", used);
    s_scalar (self, "kim_store_file_bytes", "gauge", "Size of the store file on disk.",
              stat (path, &st) == 0? (uint64_t) st.st_size: 0);
    s_scalar (self, "kim_store_map_max_bytes", "gauge",
              "The map's ceiling (store/map_max_mb): beyond it, STORE_FULL.", config->map_max);
    s_family (self, "kim_store_map_used_ratio", "gauge", "Share of the map's ceiling in use.");
    s_put (self, "kim_store_map_used_ratio %.6f\n",
           config->map_max? (double) used / (double) config->map_max: 0);

    //  Writes per tree: what each message costs the store, and where
    kim_store_writes_t writes;
    kim_store_writes (store, &writes);
    s_family (self, "kim_store_writes_total", "counter",
              "LMDB writes of committed batches, by tree and operation (tree \"keys\": "
              "the payload key store).");
    for (int db = 0; db <= KIM_DB_COUNT; db++) {
        const kim_store_count_t *count = db < KIM_DB_COUNT? &writes.tree [db]: &writes.keys;
        const char *tree = db < KIM_DB_COUNT? kim_store_db_name ((kim_db_t) db): "keys";
        s_put (self, "kim_store_writes_total{tree=\"%s\",op=\"put\"} %" PRIu64 "\n"
               "kim_store_writes_total{tree=\"%s\",op=\"del\"} %" PRIu64 "\n",
               tree, count->puts, tree, count->dels);
    }

    //  Mailboxes per organisation: depth, in flight, the oldest message's age
    uint64_t now = kim_server_now (server);
    s_family (self, "kim_mailbox_messages", "gauge",
              "Messages waiting for an organisation (delivered or not, until acked).");
    s_family (self, "kim_mailbox_in_flight", "gauge",
              "Deliveries sent to an organisation and not yet acked.");
    s_family (self, "kim_mailbox_oldest_age_seconds", "gauge",
              "Age of the oldest message waiting for an organisation (0: none).");
    kim_store_read_begin (store);
    for (org_state_t *state = (org_state_t *) zhashx_first (server->orgs); state;
         state = (org_state_t *) zhashx_next (server->orgs)) {
        if (state->removed || state->org->role != KIM_ROLE_AGENCY)
            continue;
        const char *org = state->org->id;
        uint64_t seq = 0, age = 0;
        kim_record_t record;
        if (kim_store_mailbox_scan (store, org, 0, &seq, NULL, 1) == 1
        &&  kim_store_read (store, seq, &record) == 0 && now > record.time_ms)
            age = (now - record.time_ms) / 1000;
        s_put (self, "kim_mailbox_messages{org=\"");
        s_label (self, org);
        s_put (self, "\"} %" PRIu64 "\nkim_mailbox_in_flight{org=\"",
               kim_store_mailbox_count (store, org));
        s_label (self, org);
        s_put (self, "\"} %zu\nkim_mailbox_oldest_age_seconds{org=\"", state->flight_count);
        s_label (self, org);
        s_put (self, "\"} %" PRIu64 "\n", age);
    }
    //  Links to the brokers of other districts (federation)
    s_family (self, "kim_link_up", "gauge", "1 while the link to a peer broker is up.");
    s_family (self, "kim_link_queued", "gauge",
              "Messages waiting in a peer broker's link mailbox (until the peer has them).");
    s_family (self, "kim_link_remote_orgs", "gauge",
              "Organisations the peer broker's signed directory homes there.");
    for (size_t h = 0; h < server->hook_count; h++) {
        kim_link_info_t info;
        for (size_t i = 0; server->hooks [h].link_at
                        && server->hooks [h].link_at (server->hooks [h].state, i, &info); i++) {
            s_put (self, "kim_link_up{peer=\"");
            s_label (self, info.peer);
            s_put (self, "\"} %d\nkim_link_queued{peer=\"", info.up? 1: 0);
            s_label (self, info.peer);
            s_put (self, "\"} %" PRIu64 "\nkim_link_remote_orgs{peer=\"", info.queued);
            s_label (self, info.peer);
            s_put (self, "\"} %" PRIu64 "\n", info.remote_orgs);
        }
    }
    s_scan_checkpoints (self);
    kim_store_read_end (store);
    s_scalar (self, "kim_audit_checkpoint_lag_records", "gauge",
              "Log records appended since the last signed checkpoint.",
              kim_store_head (store) - self->checkpoint_seq);
    if (self->checkpoint_seq) {
        s_scalar (self, "kim_audit_checkpoint_age_seconds", "gauge",
                  "Age of the last signed checkpoint in the log.",
                  now > self->checkpoint_ms? (now - self->checkpoint_ms) / 1000: 0);
    }

    if (self->referrals_known) {
        s_family (self, "kim_referrals", "gauge", "Referrals by state (brief, section 4).");
        for (uint32_t referral_state = 1; referral_state < M_STATES; referral_state++) {
            const char *name = kim_lc_state_name (referral_state);
            if (!streq (name, "NONE"))
                s_put (self, "kim_referrals{state=\"%s\"} %" PRIu64 "\n", name,
                       self->referrals [referral_state]);
        }
        s_scalar (self, "kim_referrals_overdue", "gauge",
                  "Referrals past their deadline and unanswered (state OVERDUE).",
                  self->referrals [KIM_REFERRAL_OVERDUE]);
    }
    if (self->overflow)
        return -1;
    if (text)
        *text = self->text;
    return (int) self->size;
}

//  The timer: render, then hand the text to the HTTP thread.
static int
s_tick (zloop_t *loop, int timer_id, void *arg)
{
    kim_metrics_t *self = (kim_metrics_t *) arg;
    if (kim_metrics_render (self, NULL) < 0)
        return 0;               //  out of memory: serve the last figures
    char *copy = (char *) malloc (self->size + 1);
    if (!copy)
        return 0;
    memcpy (copy, self->text, self->size + 1);
    pthread_mutex_lock (&self->mutex);
    char *old = self->served;
    self->served = copy;
    self->served_size = self->size;
    pthread_mutex_unlock (&self->mutex);
    free (old);
    return 0;
}


//  --------------------------------------------------------------------------
//  HTTP (libmicrohttpd's thread: touches only `served` under the mutex)

#ifdef KIM_HAVE_MICROHTTPD
static enum MHD_Result
s_answer (void *cls, struct MHD_Connection *connection, const char *url, const char *method,
          const char *version, const char *upload_data, size_t *upload_data_size,
          void **con_cls)
{
    kim_metrics_t *self = (kim_metrics_t *) cls;
    bool get = streq (method, MHD_HTTP_METHOD_GET) || streq (method, MHD_HTTP_METHOD_HEAD);
    if (*upload_data_size)
        return MHD_NO;          //  nobody uploads to a metrics endpoint
    struct MHD_Response *response;
    unsigned int status = MHD_HTTP_OK;
    if (!get || (!streq (url, "/metrics") && !streq (url, "/"))) {
        static const char missing [] = "kim-broker serves GET /metrics only\n";
        status = get? MHD_HTTP_NOT_FOUND: MHD_HTTP_METHOD_NOT_ALLOWED;
        response = MHD_create_response_from_buffer (sizeof missing - 1, (void *) missing,
                                                    MHD_RESPMEM_PERSISTENT);
    }
    else {
        pthread_mutex_lock (&self->mutex);
        response = MHD_create_response_from_buffer (self->served_size, self->served,
                                                    MHD_RESPMEM_MUST_COPY);
        pthread_mutex_unlock (&self->mutex);
    }
    if (!response)
        return MHD_NO;
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE,
                             status == MHD_HTTP_OK? "text/plain; version=0.0.4; charset=utf-8"
                                                  : "text/plain; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
    return rc;
}
#endif

int
kim_metrics_new (kim_server_t *server, kim_metrics_t **self_p, char *error, size_t error_size)
{
    *self_p = NULL;
    s_settings_t settings;
    if (s_settings (server->config, &settings, error, error_size))
        return -1;
    if (!settings.enabled)
        return 0;
    kim_metrics_t *self = (kim_metrics_t *) calloc (1, sizeof (kim_metrics_t));
    if (!self || pthread_mutex_init (&self->mutex, NULL)) {
        free (self);
        snprintf (error, error_size, "metrics: out of memory");
        return -1;
    }
    self->server = server;
    self->settings = settings;
    self->timer_id = -1;
    //  The first figures are there before the first scrape can come
    s_tick (NULL, 0, self);
#ifdef KIM_HAVE_MICROHTTPD
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) settings.port) };
    inet_pton (AF_INET, settings.listen, &addr.sin_addr);
    self->daemon = MHD_start_daemon (MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL,
        (uint16_t) settings.port, NULL, NULL, s_answer, self,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int) M_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 10,
        MHD_OPTION_END);
    if (!self->daemon) {
        snprintf (error, error_size, "metrics: cannot listen on %s:%" PRIu64 " (in use?)",
                  settings.listen, settings.port);
        kim_metrics_destroy (&self);
        return -1;
    }
#endif
    self->timer_id = zloop_timer (server->loop, settings.interval_ms, 0, s_tick, self);
    if (self->timer_id == -1) {
        snprintf (error, error_size, "metrics: cannot set the render timer");
        kim_metrics_destroy (&self);
        return -1;
    }
    zsys_notice ("metrics: serving http://%s:%" PRIu64 "/metrics (every %" PRIu64 " ms)",
                 settings.listen, settings.port, settings.interval_ms);
    *self_p = self;
    return 0;
}

void
kim_metrics_destroy (kim_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kim_metrics_t *self = *self_p;
#ifdef KIM_HAVE_MICROHTTPD
    if (self->daemon)
        MHD_stop_daemon (self->daemon);
#endif
    if (self->timer_id != -1)
        zloop_timer_end (self->server->loop, self->timer_id);
    pthread_mutex_destroy (&self->mutex);
    free (self->served);
    free (self->text);
    free (self);
    *self_p = NULL;
}
