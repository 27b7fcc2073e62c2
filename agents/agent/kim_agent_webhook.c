/*  kim_agent_webhook.c — pushes each new delivery to the local system.

    For systems that want to be told rather than poll the inbox. Every fresh
    delivery is queued for the webhook in the same commit that writes it
    into the inbox, so a crash can delay a push but never lose one. This
    thread POSTs the delivery (the JSON of GET /v1/inbox/{seq}, payload
    included) to webhook/url and removes it from the queue on a 2xx; any
    other answer, or none, is tried again after webhook/backoff_ms, doubled
    per attempt up to webhook/backoff_max_ms. After webhook/max_attempts the
    delivery becomes a dead letter, listed by GET /v1/webhook/dead and put
    back with POST /v1/webhook/dead/{seq}/retry. At least once: a receiver
    that crashes after its work but before its 2xx gets the delivery again,
    with the same id.

    Signing follows the Standard Webhooks convention: headers webhook-id
    (the delivery's seq), webhook-timestamp (Unix seconds) and
    webhook-signature "v1,<base64 HMAC-SHA256 over id.timestamp.body>",
    keyed with the bytes of webhook/secret_file. A receiver recomputes it,
    refuses a mismatch (forgery) and a timestamp far from its clock or an
    id it has seen (replay).

    The thread has its own libcurl handle and touches nothing but the store.
*/
#include <inttypes.h>
#include <pthread.h>

#include <curl/curl.h>
#include <czmq.h>
#include <sodium.h>

#include "kim_agent.h"

#define S_ROUND_MAX     32          //  deliveries pushed per look at the queue
#define S_IDLE_MS       100         //  how often an idle thread looks

struct _kim_agent_webhook_t {
    const kim_agent_config_t *config;
    kim_agent_store_t *store;
    pthread_t thread;
    bool started;
    atomic_bool stop;
};

void
kim_agent_webhook_sign (const uint8_t *key, size_t key_size, const char *id,
                        const char *timestamp, const char *body, size_t body_size, char out [64])
{
    crypto_auth_hmacsha256_state state;
    uint8_t mac [crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_init (&state, key, key_size);
    crypto_auth_hmacsha256_update (&state, (const uint8_t *) id, strlen (id));
    crypto_auth_hmacsha256_update (&state, (const uint8_t *) ".", 1);
    crypto_auth_hmacsha256_update (&state, (const uint8_t *) timestamp, strlen (timestamp));
    crypto_auth_hmacsha256_update (&state, (const uint8_t *) ".", 1);
    crypto_auth_hmacsha256_update (&state, (const uint8_t *) body, body_size);
    crypto_auth_hmacsha256_final (&state, mac);
    memcpy (out, "v1,", 3);
    sodium_bin2base64 (out + 3, 61, mac, sizeof mac, sodium_base64_VARIANT_ORIGINAL);
}

static size_t
s_discard (char *data, size_t size, size_t count, void *user)
{
    return size * count;
}

//  One POST. Returns NULL on a 2xx, else why not (static text or `why`).
static const char *
s_push (kim_agent_webhook_t *self, CURL *curl, uint64_t seq, char *why, size_t why_size)
{
    json_t *delivery = kim_agent_store_inbox_get (self->store, seq);
    if (!delivery)
        return NULL;                //  gone from the inbox: nothing to push
    char *body = json_dumps (delivery, JSON_COMPACT);
    json_decref (delivery);
    if (!body)
        return "out of memory";
    char id [32], timestamp [32], signature [64], header [128];
    snprintf (id, sizeof id, "%" PRIu64, seq);
    snprintf (timestamp, sizeof timestamp, "%" PRId64, zclock_time () / 1000);
    kim_agent_webhook_sign (self->config->webhook_secret, self->config->webhook_secret_size,
                            id, timestamp, body, strlen (body), signature);
    struct curl_slist *headers = curl_slist_append (NULL, "Content-Type: application/json");
    snprintf (header, sizeof header, "webhook-id: %s", id);
    headers = curl_slist_append (headers, header);
    snprintf (header, sizeof header, "webhook-timestamp: %s", timestamp);
    headers = curl_slist_append (headers, header);
    snprintf (header, sizeof header, "webhook-signature: %s", signature);
    headers = curl_slist_append (headers, header);
    curl_easy_reset (curl);
    curl_easy_setopt (curl, CURLOPT_URL, self->config->webhook_url);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE, (long) strlen (body));
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, (long) self->config->webhook_timeout_ms);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_discard);
    curl_easy_setopt (curl, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode code = curl_easy_perform (curl);
    long status = 0;
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all (headers);
    sodium_memzero (body, strlen (body));
    free (body);
    if (code != CURLE_OK) {
        snprintf (why, why_size, "%s", curl_easy_strerror (code));
        return why;
    }
    if (status < 200 || status > 299) {
        snprintf (why, why_size, "the receiver answered HTTP %ld", status);
        return why;
    }
    return NULL;
}

static void *
s_run (void *arg)
{
    kim_agent_webhook_t *self = (kim_agent_webhook_t *) arg;
    const kim_agent_config_t *config = self->config;
    CURL *curl = curl_easy_init ();
    if (!curl) {
        zsys_error ("kim-agent %s: cannot start the webhook (libcurl)", config->org);
        return NULL;
    }
    while (!atomic_load (&self->stop)) {
        json_t *due = kim_agent_store_push_due (self->store, (uint64_t) zclock_time (),
                                                S_ROUND_MAX);
        size_t index;
        json_t *value;
        json_array_foreach (due, index, value) {
            if (atomic_load (&self->stop))
                break;
            uint64_t seq = (uint64_t) json_integer_value (value);
            char why [CURL_ERROR_SIZE + 64];
            const char *error = s_push (self, curl, seq, why, sizeof why);
            bool dead = false;
            int rc = kim_agent_store_push_result (self->store, seq, error, config->webhook_attempts,
                                                  config->webhook_backoff_ms,
                                                  config->webhook_backoff_max_ms, &dead);
            if (rc)
                zsys_error ("kim-agent %s: cannot record the webhook push of seq %" PRIu64 ": %s",
                            config->org, seq, kim_strerror (rc));
            if (dead)
                zsys_warning ("kim-agent %s: webhook gave up on seq %" PRIu64 " (%s): dead letter",
                              config->org, seq, error);
            else
            if (error && config->verbose)
                zsys_debug ("kim-agent %s: webhook push of seq %" PRIu64 " failed: %s",
                            config->org, seq, error);
        }
        bool idle = json_array_size (due) == 0;
        json_decref (due);
        if (idle)
            zclock_sleep (S_IDLE_MS);
    }
    curl_easy_cleanup (curl);
    return NULL;
}

kim_agent_webhook_t *
kim_agent_webhook_new (const kim_agent_config_t *config, kim_agent_store_t *store)
{
    kim_agent_webhook_t *self = (kim_agent_webhook_t *) calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = config;
    self->store = store;
    atomic_init (&self->stop, false);
    if (pthread_create (&self->thread, NULL, s_run, self) != 0) {
        free (self);
        return NULL;
    }
    self->started = true;
    return self;
}

void
kim_agent_webhook_destroy (kim_agent_webhook_t **self_p)
{
    if (self_p && *self_p) {
        kim_agent_webhook_t *self = *self_p;
        atomic_store (&self->stop, true);
        if (self->started)
            pthread_join (self->thread, NULL);
        free (self);
        *self_p = NULL;
    }
}
