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

static void
s_reply (zsock_t *zap, const char *request_id, const char *status, const char *text,
         const char *user_id)
{
    zmsg_t *reply = zmsg_new ();
    zmsg_addstr (reply, "1.0");
    zmsg_addstr (reply, request_id);
    zmsg_addstr (reply, status);
    zmsg_addstr (reply, text);
    zmsg_addstr (reply, user_id);
    zmsg_addmem (reply, NULL, 0);
    zmsg_send (&reply, zap);
}

int
kim_zap_handle (zsock_t *zap, const kim_config_t *config)
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
            s_reply (zap, request_id, "500", "malformed ZAP request", "");
    }
    else
    if (!streq (mechanism, "CURVE") || !credentials || zframe_size (credentials) != 32) {
        zsys_warning ("zap: refused %s connection from %s: only CURVE is accepted",
                      mechanism, address? address: "?");
        s_reply (zap, request_id, "400", "CURVE required", "");
    }
    else {
        char key [41];
        zmq_z85_encode (key, zframe_data (credentials), 32);
        const kim_org_t *org = kim_config_org_by_key (config, key);
        if (org) {
            s_reply (zap, request_id, "200", "OK", org->id);
            if (config->verbose)
                zsys_debug ("zap: %s admitted as %s", address, org->id);
        }
        else {
            zsys_warning ("zap: refused connection from %s: key %s is not registered or revoked",
                          address? address: "?", key);
            s_reply (zap, request_id, "400", "key not registered", "");
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
