/*  kim_zap.c — ZAP (RFC 27) handler for CURVE connections to the broker. */
#include "kim_zap.h"

#define KIM_ZAP_ENDPOINT "inproc://zeromq.zap.01"

zsock_t *
kim_zap_new (void)
{
    zsock_t *zap = zsock_new (ZMQ_REP);
    if (zap && zsock_bind (zap, KIM_ZAP_ENDPOINT) != 0)
        zsock_destroy (&zap);
    return zap;
}

//  `key`, when given, goes into the reply's metadata as KIM_ZAP_KEY: the
//  connection's frames carry it (zmq_msg_gets), so that a HELLO on a
//  connection whose key was rotated out since it was admitted is refused.
static void
s_reply (zsock_t *zap, const char *request_id, const char *status, const char *text,
         const char *user_id, const char *key)
{
    zmsg_t *reply = zmsg_new ();
    zmsg_addstr (reply, "1.0");
    zmsg_addstr (reply, request_id);
    zmsg_addstr (reply, status);
    zmsg_addstr (reply, text);
    zmsg_addstr (reply, user_id);
    //  ZMTP metadata: name length (1 byte), name, value length (4 bytes,
    //  network order), value
    uint8_t metadata [1 + sizeof KIM_ZAP_KEY - 1 + 4 + 40];
    size_t size = 0;
    if (key && strlen (key) == 40) {
        size_t name = sizeof KIM_ZAP_KEY - 1;
        metadata [size++] = (uint8_t) name;
        memcpy (metadata + size, KIM_ZAP_KEY, name);
        size += name;
        metadata [size++] = 0;
        metadata [size++] = 0;
        metadata [size++] = 0;
        metadata [size++] = 40;
        memcpy (metadata + size, key, 40);
        size += 40;
    }
    zmsg_addmem (reply, size? metadata: NULL, size);
    zmsg_send (&reply, zap);
}

void
kim_zap_log_flush (kim_zap_log_t *log, uint64_t now_ms)
{
    if (log->pending && now_ms - log->logged_ms >= KIM_ZAP_LOG_MS) {
        zsys_warning ("zap: refused %" PRIu64 " more connections in the last %" PRIu64
                      " s (latest from %s: %s)", log->pending,
                      (now_ms - log->logged_ms) / 1000, log->last_address, log->last_why);
        log->pending = 0;
        log->logged_ms = now_ms;
    }
}

//  One line at most per KIM_ZAP_LOG_MS; the rest are counted.
static void
s_refused (kim_zap_log_t *log, uint64_t now_ms, const char *address, const char *why)
{
    snprintf (log->last_address, sizeof log->last_address, "%s", address? address: "?");
    snprintf (log->last_why, sizeof log->last_why, "%s", why);
    if (log->logged_ms && now_ms - log->logged_ms < KIM_ZAP_LOG_MS) {
        log->pending++;
        return;
    }
    kim_zap_log_flush (log, now_ms);
    zsys_warning ("zap: refused connection from %s: %s (further refusals are summarised "
                  "once a minute)", log->last_address, why);
    log->logged_ms = now_ms? now_ms: 1;
}

int
kim_zap_handle (zsock_t *zap, const kim_config_t *config, kim_zap_log_t *log, uint64_t now_ms)
{
    zmsg_t *request = zmsg_recv (zap);
    if (!request)
        return -1;
    //  version, request id, domain, address, routing id, mechanism, credentials
    char *version = zmsg_popstr (request);
    char *request_id = zmsg_popstr (request);
    char *domain = zmsg_popstr (request);
    char *address = zmsg_popstr (request);
    zframe_t *routing_id = zmsg_pop (request);
    char *mechanism = zmsg_popstr (request);
    zframe_t *credentials = zmsg_pop (request);
    int rc = 0;

    if (!version || !streq (version, "1.0") || !request_id || !mechanism) {
        rc = -1;
        if (request_id)
            s_reply (zap, request_id, "500", "malformed ZAP request", "", NULL);
    }
    else
    if (!streq (mechanism, "CURVE") || !credentials || zframe_size (credentials) != 32) {
        s_refused (log, now_ms, address, "only CURVE is accepted");
        s_reply (zap, request_id, "400", "CURVE required", "", NULL);
    }
    else {
        char key [41];
        zmq_z85_encode (key, zframe_data (credentials), 32);
        const kim_org_t *org = kim_config_org_by_key (config, key);
        //  A revoked key is admitted so that its client hears why it is
        //  refused (REJECT REVOKED to every command) instead of timing out.
        if (!org)
            org = kim_config_org_by_revoked_key (config, key);
        if (org) {
            s_reply (zap, request_id, "200", "OK", org->id, key);
            if (config->verbose)
                zsys_debug ("zap: %s admitted as %s%s", address, org->id,
                            org->revoked? " (revoked)": "");
        }
        else {
            s_refused (log, now_ms, address, "key not registered");
            s_reply (zap, request_id, "400", "key not registered", "", NULL);
        }
    }
    zstr_free (&version);
    zstr_free (&request_id);
    zstr_free (&domain);
    zstr_free (&address);
    zstr_free (&mechanism);
    zframe_destroy (&routing_id);
    zframe_destroy (&credentials);
    zmsg_destroy (&request);
    return rc;
}
