/*  kim_agent_http.c — the local HTTP/JSON API that an office's systems call.

    libmicrohttpd parses HTTP and runs the handlers on its own threads. A
    handler never touches the broker session: a message to send is committed
    to the outbox (synced) and the link is woken through its pipe; every
    read is an LMDB read transaction. So the answer "accepted" (202) means
    the message is on the agent's disk and will be sent, and resent, with
    its msg_id until the broker answers; posting it again is safe.

    Every request needs a bearer token of the token file, compared through
    its hash in constant time. Bodies are bounded (http/max_body): a larger
    Content-Length is refused before the body is read. Every error is JSON:
    {"error": kim_errname, "code": kim code, "text": ..., "path": ...}.

    The route table below is the API; `kim-agent --routes` prints it, and
    the test compares it with agents/agent/openapi.json.
*/
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>

#include <czmq.h>
#include <microhttpd.h>
#include <sodium.h>

#include "kim_agent.h"
#include "web/kim_agent_web.h"

#define S_PARAM_MAX         KIM_ID_MAX
#define S_LIST_LIMIT_MAX    1000

struct _kim_agent_http_t {
    const kim_agent_config_t *config;
    kim_agent_store_t *store;
    kim_agent_shared_t *shared;
    struct MHD_Daemon *daemon;
    uint16_t port;
    char *tls_cert;
    char *tls_key;
    //  Fault injection for the tests (KIM_AGENT_CRASH_AFTER_ACCEPTS=N):
    //  kill ourselves after the N-th message is committed to the outbox,
    //  before the local system gets its answer.
    long crash_after;
    atomic_long accepts;
    kim_agent_web_t *web;               //  the staff page (web/enabled), or NULL
};

//  One request in progress.
typedef struct {
    char *body;
    size_t size;
    bool too_large;
    bool answered;
    bool web;                           //  for the staff page, which has its own login
} s_request_t;

typedef struct {
    kim_agent_http_t *self;
    struct MHD_Connection *connection;
    const char *param;                  //  the {…} of the path, if any
    json_t *body;                       //  parsed JSON body (POST)
} s_call_t;

typedef enum MHD_Result (*s_handler_t) (s_call_t *call);

typedef enum { S_NO_BODY, S_BODY, S_BODY_OPTIONAL } s_body_t;

typedef struct {
    const char *method;
    const char *path;                   //  with one {name} at most
    s_handler_t handler;
    s_body_t body;                      //  S_BODY_OPTIONAL: none means {}
} s_route_t;


//  --------------------------------------------------------------------------
//  Replies

//  `allow`: the methods the path serves, for a 405 (RFC 9110 requires them)
static enum MHD_Result
s_reply_allow (struct MHD_Connection *connection, unsigned status, json_t *body,
               const char *allow)
{
    char *text = body? json_dumps (body, JSON_COMPACT): NULL;
    json_decref (body);
    if (!text)
        text = strdup ("{\"error\":\"NOMEM\",\"code\":900,\"text\":\"out of memory\",\"path\":\"\"}");
    if (!text)
        return MHD_NO;
    size_t length = strlen (text);
    struct MHD_Response *response =
        MHD_create_response_from_buffer (length, text, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        free (text);
        return MHD_NO;
    }
    MHD_add_response_header (response, "Content-Type", "application/json");
    MHD_add_response_header (response, "Cache-Control", "no-store");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header (response, "WWW-Authenticate", "Bearer realm=\"kim-agent\"");
    if (allow)
        MHD_add_response_header (response, "Allow", allow);
    enum MHD_Result result = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
    return result;
}

static enum MHD_Result
s_reply (struct MHD_Connection *connection, unsigned status, json_t *body)
{
    return s_reply_allow (connection, status, body, NULL);
}

static json_t *
s_error_body (int code, const char *text, const char *path)
{
    code = code < 0? -code: code;
    return json_pack ("{s:s, s:i, s:s, s:s}", "error", kim_errname (code), "code", code,
                      "text", text && *text? text: kim_strerror (code), "path", path? path: "");
}

static enum MHD_Result
s_error (struct MHD_Connection *connection, unsigned status, int code, const char *text,
         const char *path)
{
    return s_reply (connection, status, s_error_body (code, text, path));
}

static enum MHD_Result
s_store_error (struct MHD_Connection *connection, int rc)
{
    return s_error (connection, rc == -KIM_E_NOT_FOUND? MHD_HTTP_NOT_FOUND
                              : MHD_HTTP_SERVICE_UNAVAILABLE, rc, NULL, "");
}


int
kim_agent_accept_message (const kim_agent_config_t *config, kim_agent_store_t *store,
                          kim_msg_t *msg, const uint8_t *payload, size_t size,
                          const char *folder_name, json_t **record, char *why, size_t why_size,
                          char *path, size_t path_size)
{
    *record = NULL;
    path [0] = 0;
    if (msg->type == KIM_TYPE_NONE || !(kim_type_flags (msg->type) & KIM_MSG_FROM_AGENCY)) {
        snprintf (why, why_size, "type must be a message type an agency sends (REFERRAL, "
                  "ACCEPT, ...)");
        snprintf (path, path_size, "type");
        return -KIM_E_UNKNOWN_TYPE;
    }
    if (msg->sender [0] && !streq (msg->sender, config->org)) {
        snprintf (why, why_size, "sender must be this agent's organisation (or absent)");
        snprintf (path, path_size, "sender");
        return -KIM_E_SENDER_MISMATCH;
    }
    if (msg->type == KIM_TYPE_OUTCOME && size > 0) {
        snprintf (why, why_size, "an OUTCOME carries no payload (never counselling content)");
        snprintf (path, path_size, "payload");
        return -KIM_E_BAD_VALUE;
    }
    if (!msg->msg_id [0]) {
        uint8_t random [16];
        randombytes_buf (random, sizeof random);
        sodium_bin2hex (msg->msg_id, sizeof msg->msg_id, random, sizeof random);
    }
    kim_decode_error_t derr = { 0, "" };
    int rc = kim_msg_validate (msg, &derr);
    if (rc) {
        snprintf (why, why_size, "%s%s%s", kim_strerror (rc), derr.path [0]? " at ": "",
                  derr.path);
        snprintf (path, path_size, "%s", derr.path);
        return rc;
    }
    rc = kim_agent_store_accept (store, msg, payload, size, folder_name, record);
    if (rc == -KIM_E_BAD_VALUE) {
        snprintf (why, why_size, "msg_id %s was used for a different message", msg->msg_id);
        snprintf (path, path_size, "msg_id");
        return -KIM_E_REFERRAL_EXISTS;  //  mapped back to BAD_VALUE by the callers
    }
    if (rc < 0) {
        zsys_error ("kim-agent %s: cannot store %s: %s", config->org, msg->msg_id,
                    kim_strerror (rc));
        snprintf (why, why_size, "%s", kim_strerror (rc));
        return rc;
    }
    if (rc == 0 && config->verbose)
        zsys_debug ("kim-agent %s: accepted %s (to %s)", config->org, msg->msg_id,
                    msg->recipient);
    return rc;
}

//  Checks a parsed message as the outbox needs it, accepts it, answers.
static enum MHD_Result
s_accept (s_call_t *call, json_t *root)
{
    kim_agent_http_t *self = call->self;
    kim_msg_t msg;
    uint8_t *payload = NULL;
    size_t size = 0;
    char why [KIM_TEXT_MAX + 1], path [KIM_PATH_MAX + 1];
    int rc = kim_json_message (root, &msg, &payload, &size, why, sizeof why,
                                     path, sizeof path);
    if (rc)
        return s_error (call->connection, rc == -KIM_E_TOO_LARGE? MHD_HTTP_CONTENT_TOO_LARGE
                                                                : MHD_HTTP_BAD_REQUEST,
                        rc, why, path);
    json_t *record = NULL;
    rc = kim_agent_accept_message (self->config, self->store, &msg, payload, size, NULL,
                                   &record, why, sizeof why, path, sizeof path);
    free (payload);
    if (rc == -KIM_E_REFERRAL_EXISTS)
        return s_error (call->connection, MHD_HTTP_CONFLICT, KIM_E_BAD_VALUE, why, path);
    if (rc == -KIM_E_STORE_FULL || rc == -KIM_E_IO || rc == -KIM_E_NOMEM)
        return s_store_error (call->connection, rc);
    if (rc < 0)
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, rc, why, path);
    if (rc == 0 && self->crash_after && atomic_fetch_add (&self->accepts, 1) + 1 == self->crash_after)
        raise (SIGKILL);
    if (rc == 0)
        kim_agent_wake (self->shared);
    return s_reply (call->connection, rc == 0? MHD_HTTP_ACCEPTED: MHD_HTTP_OK, record);
}


//  --------------------------------------------------------------------------
//  Handlers

static enum MHD_Result
s_get_status (s_call_t *call)
{
    kim_agent_http_t *self = call->self;
    size_t queued, inbox, unhandled;
    kim_agent_store_counts (self->store, &queued, &inbox, &unhandled);
    return s_reply (call->connection, MHD_HTTP_OK,
                    json_pack ("{s:s, s:s, s:b, s:I, s:I, s:I, s:I}", "org", self->config->org,
                               "version", KIM_AGENT_VERSION,
                               "connected", atomic_load (&self->shared->connected),
                               "sessions", (json_int_t) atomic_load (&self->shared->reconnects),
                               "queued", (json_int_t) queued, "inbox", (json_int_t) inbox,
                               "unhandled", (json_int_t) unhandled));
}

static enum MHD_Result
s_post_message (s_call_t *call)
{
    return s_accept (call, call->body);
}

static enum MHD_Result
s_get_outbox (s_call_t *call)
{
    json_t *record = kim_agent_store_outbox_get (call->self->store, call->param);
    if (!record)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND,
                        "no message with this msg_id in the outbox", "msg_id");
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

//  A decimal query argument in [0, max]; `fallback` when absent.
static bool
s_query_uint (s_call_t *call, const char *name, uint64_t max, uint64_t fallback, uint64_t *value)
{
    const char *text = MHD_lookup_connection_value (call->connection, MHD_GET_ARGUMENT_KIND, name);
    *value = fallback;
    if (!text)
        return true;
    if (!*text || strlen (text) > 20)
        return false;
    uint64_t parsed = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9' || parsed > (UINT64_MAX - 9) / 10)
            return false;
        parsed = parsed * 10 + (uint64_t) (*p - '0');
    }
    if (parsed > max)
        return false;
    *value = parsed;
    return true;
}

//  "true"/"false" query argument: 1, 0, -1 when absent, -2 when invalid.
static int
s_query_bool (s_call_t *call, const char *name)
{
    const char *text = MHD_lookup_connection_value (call->connection, MHD_GET_ARGUMENT_KIND, name);
    if (!text)
        return -1;
    if (streq (text, "true") || streq (text, "1"))
        return 1;
    if (streq (text, "false") || streq (text, "0"))
        return 0;
    return -2;
}

static enum MHD_Result
s_get_inbox (s_call_t *call)
{
    uint64_t after, limit;
    if (!s_query_uint (call, "after", UINT64_MAX - 1, 0, &after))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "after must be a seq (a decimal number)", "after");
    if (!s_query_uint (call, "limit", S_LIST_LIMIT_MAX, 100, &limit) || limit == 0)
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "limit must be a number from 1 to 1000", "limit");
    int handled = s_query_bool (call, "handled");
    if (handled == -2)
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "handled must be true or false", "handled");
    const char *type = MHD_lookup_connection_value (call->connection, MHD_GET_ARGUMENT_KIND, "type");
    if (type && kim_type_from_name (type) == KIM_TYPE_NONE)
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "type must be a message type's name, e.g. ERASURE", "type");
    json_t *items = kim_agent_store_inbox_list (call->self->store, after, (size_t) limit, handled,
                                                type);
    json_int_t last = (json_int_t) after;
    size_t count = json_array_size (items);
    if (count)
        last = json_integer_value (json_object_get (json_array_get (items, count - 1), "seq"));
    return s_reply (call->connection, MHD_HTTP_OK,
                    json_pack ("{s:o, s:I}", "items", items, "next_after", last));
}

static bool
s_param_seq (s_call_t *call, uint64_t *seq)
{
    const char *p = call->param;
    *seq = 0;
    if (!*p || strlen (p) > 20)
        return false;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || *seq > (UINT64_MAX - 9) / 10)
            return false;
        *seq = *seq * 10 + (uint64_t) (*p - '0');
    }
    return *seq > 0;
}

static enum MHD_Result
s_get_inbox_item (s_call_t *call)
{
    uint64_t seq;
    if (!s_param_seq (call, &seq))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "seq must be a positive decimal number", "seq");
    json_t *record = kim_agent_store_inbox_get (call->self->store, seq);
    if (!record)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND,
                        "no delivery with this seq in the inbox", "seq");
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

static enum MHD_Result
s_post_handled (s_call_t *call)
{
    uint64_t seq;
    if (!s_param_seq (call, &seq))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "seq must be a positive decimal number", "seq");
    json_t *record = NULL;
    int rc = kim_agent_store_inbox_handled (call->self->store, seq, &record);
    if (rc == -KIM_E_NOT_FOUND)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND,
                        "no delivery with this seq in the inbox", "seq");
    if (rc)
        return s_store_error (call->connection, rc);
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

static enum MHD_Result
s_delete_payload (s_call_t *call)
{
    uint64_t seq;
    if (!s_param_seq (call, &seq))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "seq must be a positive decimal number", "seq");
    json_t *record = NULL;
    int rc = kim_agent_store_inbox_erase (call->self->store, seq, &record);
    if (rc == -KIM_E_NOT_FOUND)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND,
                        "no delivery with this seq in the inbox", "seq");
    if (rc)
        return s_store_error (call->connection, rc);
    zsys_info ("kim-agent %s: the payload of delivery %" PRIu64 " erased on request",
               call->self->config->org, seq);
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

static enum MHD_Result
s_delete_payloads (s_call_t *call)
{
    json_t *result = NULL;
    int rc = kim_agent_store_subject_erase (call->self->store, call->param, &result);
    if (rc)
        return s_store_error (call->connection, rc);
    //  The subject is personal data: the log names only the counts
    zsys_info ("kim-agent %s: payloads about a subject erased on request: %zu deliveries, %zu "
               "sent messages, %zu still waiting for the broker", call->self->config->org,
               json_array_size (json_object_get (result, "inbox")),
               json_array_size (json_object_get (result, "outbox")),
               json_array_size (json_object_get (result, "waiting")));
    return s_reply (call->connection, MHD_HTTP_OK, result);
}

static const char *const s_states [] = {
    "SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE", "COMPLETED", "DECLINED",
    "NOT_COMPETENT", "FORWARDED", "EXPIRED", "WITHDRAWN", "SUSPENDED", "LAPSED", "UNDELIVERABLE",
    NULL
};

static enum MHD_Result
s_get_referrals (s_call_t *call)
{
    const char *state = MHD_lookup_connection_value (call->connection, MHD_GET_ARGUMENT_KIND,
                                                     "state");
    if (state) {
        bool known = false;
        for (size_t i = 0; s_states [i]; i++)
            if (streq (s_states [i], state))
                known = true;
        if (!known)
            return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                            "state must be a referral state (SENT, DELIVERED, ACCEPTED, "
                            "IN_PROGRESS, OVERDUE, COMPLETED, DECLINED, NOT_COMPETENT, "
                            "FORWARDED, EXPIRED, WITHDRAWN, SUSPENDED, LAPSED, "
                            "UNDELIVERABLE)", "state");
    }
    int overdue = s_query_bool (call, "overdue");
    if (overdue == -2)
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "overdue must be true or false", "overdue");
    return s_reply (call->connection, MHD_HTTP_OK,
                    json_pack ("{s:o}", "items",
                               kim_agent_store_referrals (call->self->store, state, overdue)));
}

static enum MHD_Result
s_get_referral (s_call_t *call)
{
    json_t *record = kim_agent_store_referral (call->self->store, call->param);
    if (!record)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND,
                        "no referral with this id in the agent's view", "referral_id");
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

//  answer -> message type, and which side of the referral may send it.
static const struct {
    const char *answer;
    kim_type_t type;
    const char *role;
} s_answers [] = {
    { "accept", KIM_TYPE_ACCEPT, "recipient" },
    { "decline", KIM_TYPE_DECLINE, "recipient" },
    { "not_competent", KIM_TYPE_NOT_COMPETENT, "recipient" },
    { "forward", KIM_TYPE_FORWARD, "recipient" },
    { "status", KIM_TYPE_STATUS, "recipient" },
    { "outcome", KIM_TYPE_OUTCOME, "recipient" },
    { "withdraw", KIM_TYPE_WITHDRAW, "sender" },
    { "info_request", KIM_TYPE_INFO_REQUEST, NULL },
    { "info_response", KIM_TYPE_INFO_RESPONSE, NULL },
};

//  Body keys an answer may carry besides "answer"; "reason" is the
//  decline's word for "code".
static const char *const s_answer_keys [] = {
    "msg_id", "code", "reason", "org", "note", "purpose", "legal_basis", "subject", "deadline",
    "categories", "sender_case_ref", "recipient_case_ref", "ref_msg_id", "priority",
    "payload", "payload_base64", NULL
};

static enum MHD_Result
s_post_answer (s_call_t *call)
{
    json_t *body = call->body;
    if (!json_is_object (body))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_MALFORMED,
                        "the body must be one JSON object", "");
    const char *answer = json_string_value (json_object_get (body, "answer"));
    size_t which = SIZE_MAX;
    for (size_t i = 0; answer && i < sizeof s_answers / sizeof s_answers [0]; i++)
        if (streq (s_answers [i].answer, answer))
            which = i;
    if (which == SIZE_MAX)
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "answer must be accept, decline, not_competent, forward, status, "
                        "outcome, withdraw, info_request or info_response", "answer");
    const char *key;
    json_t *value;
    json_object_foreach (body, key, value) {
        bool known = streq (key, "answer");
        for (size_t i = 0; s_answer_keys [i]; i++)
            if (streq (s_answer_keys [i], key))
                known = true;
        if (!known) {
            char why [KIM_TEXT_MAX + 1];
            snprintf (why, sizeof why, "an answer carries no field '%.64s'", key);
            return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_UNKNOWN_FIELD, why,
                            key);
        }
    }
    if (json_object_get (body, "reason") && json_object_get (body, "code"))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "give reason or code, not both", "reason");
    json_t *referral = kim_agent_store_referral (call->self->store, call->param);
    if (!referral)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_UNKNOWN_REFERRAL,
                        "no referral with this id in the agent's view", "referral_id");
    const char *role = json_string_value (json_object_get (referral, "role"));
    if (s_answers [which].role && (!role || !streq (role, s_answers [which].role))) {
        json_decref (referral);
        return s_error (call->connection, MHD_HTTP_CONFLICT, KIM_E_NOT_PARTY,
                        streq (s_answers [which].role, "sender")
                        ? "only the referral's sender withdraws it"
                        : "only the referral's recipient answers it", "answer");
    }
    json_t *message = json_pack ("{s:s, s:O, s:s}", "type", kim_type_name (s_answers [which].type),
                                 "recipient", json_object_get (referral, "counterpart"),
                                 "referral_id", call->param);
    json_decref (referral);
    if (!message)
        return s_store_error (call->connection, -KIM_E_NOMEM);
    json_object_foreach (body, key, value)
        if (!streq (key, "answer"))
            json_object_set (message, streq (key, "reason")? "code": key, value);
    enum MHD_Result result = s_accept (call, message);
    json_decref (message);
    return result;
}

static enum MHD_Result
s_get_dead (s_call_t *call)
{
    return s_reply (call->connection, MHD_HTTP_OK,
                    json_pack ("{s:o}", "items", kim_agent_store_dead_list (call->self->store)));
}

static enum MHD_Result
s_post_retry (s_call_t *call)
{
    uint64_t seq;
    if (!s_param_seq (call, &seq))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "seq must be a positive decimal number", "seq");
    json_t *letter = NULL;
    int rc = kim_agent_store_dead_retry (call->self->store, seq, &letter);
    if (rc == -KIM_E_NOT_FOUND)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND,
                        "no dead letter with this seq", "seq");
    if (rc)
        return s_store_error (call->connection, rc);
    return s_reply (call->connection, MHD_HTTP_OK, letter);
}

//  --------------------------------------------------------------------------
//  Cases, consents and the data subject's rights

static enum MHD_Result
s_get_cases (s_call_t *call)
{
    const char *state = MHD_lookup_connection_value (call->connection, MHD_GET_ARGUMENT_KIND,
                                                     "state");
    if (state && !streq (state, "OPEN") && !streq (state, "CLOSED"))
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "state must be OPEN or CLOSED", "state");
    return s_reply (call->connection, MHD_HTTP_OK,
                    json_pack ("{s:o}", "items", kim_agent_store_cases (call->self->store, state)));
}

static enum MHD_Result
s_get_case (s_call_t *call)
{
    json_t *record = kim_agent_store_case (call->self->store, call->param);
    if (!record)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_UNKNOWN_CASE,
                        "no case with this id in the agent's view", "case_id");
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

static const char *const s_consent_states [] = {
    "pending", "active", "refused", "expired", "revoking", "revoked", NULL
};

static enum MHD_Result
s_get_consents (s_call_t *call)
{
    const char *state = MHD_lookup_connection_value (call->connection, MHD_GET_ARGUMENT_KIND,
                                                     "state");
    bool known = !state;
    for (size_t i = 0; state && s_consent_states [i]; i++)
        known |= streq (s_consent_states [i], state);
    if (!known)
        return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_VALUE,
                        "state must be pending, active, refused, expired, revoking or revoked",
                        "state");
    return s_reply (call->connection, MHD_HTTP_OK,
                    json_pack ("{s:o}", "items",
                               kim_agent_store_consents (call->self->store, state)));
}

static enum MHD_Result
s_get_consent (s_call_t *call)
{
    json_t *record = kim_agent_store_consent (call->self->store, call->param);
    if (!record)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_CONSENT_UNKNOWN,
                        "this office recorded no consent with this id", "consent");
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

//  Makes a message of `type` from the body (only `keys` allowed) and the
//  path's id as `param_key`, and accepts it like POST /v1/messages.
static enum MHD_Result
s_post_typed (s_call_t *call, kim_type_t type, const char *param_key,
              const char *const *keys)
{
    const char *key;
    json_t *value;
    json_object_foreach (call->body, key, value) {
        bool known = false;
        for (size_t i = 0; keys [i]; i++)
            known |= streq (keys [i], key);
        if (!known) {
            char why [KIM_TEXT_MAX + 1];
            snprintf (why, sizeof why, "this route takes no field '%.64s'", key);
            return s_error (call->connection, MHD_HTTP_BAD_REQUEST, KIM_E_UNKNOWN_FIELD, why,
                            key);
        }
    }
    json_t *message = json_deep_copy (call->body);
    if (!message || json_object_set_new (message, "type", json_string (kim_type_name (type)))
    ||  (param_key && json_object_set_new (message, param_key, json_string (call->param)))) {
        json_decref (message);
        return s_store_error (call->connection, -KIM_E_NOMEM);
    }
    enum MHD_Result result = s_accept (call, message);
    json_decref (message);
    return result;
}

static enum MHD_Result
s_post_consent (s_call_t *call)
{
    static const char *const keys [] = {
        "msg_id", "consent", "case_id", "subject", "recipients", "purposes", "valid_until",
        "categories", "explicit", NULL
    };
    return s_post_typed (call, KIM_TYPE_CONSENT_GRANT, NULL, keys);
}

static enum MHD_Result
s_post_revoke (s_call_t *call)
{
    static const char *const keys [] = { "msg_id", "case_id", NULL };
    return s_post_typed (call, KIM_TYPE_CONSENT_REVOKE, "consent", keys);
}

static enum MHD_Result
s_post_report (s_call_t *call)
{
    static const char *const keys [] = { "msg_id", "case_id", NULL };
    return s_post_typed (call, KIM_TYPE_ACCESS_REPORT, "subject", keys);
}

static enum MHD_Result
s_post_erasure (s_call_t *call)
{
    static const char *const keys [] = { "msg_id", "case_id", NULL };
    return s_post_typed (call, KIM_TYPE_ERASURE, "subject", keys);
}

static enum MHD_Result
s_get_reports (s_call_t *call)
{
    return s_reply (call->connection, MHD_HTTP_OK,
                    json_pack ("{s:o}", "items", kim_agent_store_reports (call->self->store)));
}

static enum MHD_Result
s_get_report (s_call_t *call)
{
    json_t *record = kim_agent_store_report (call->self->store, call->param);
    if (!record)
        return s_error (call->connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND,
                        "no access report was asked for with this msg_id", "msg_id");
    return s_reply (call->connection, MHD_HTTP_OK, record);
}

static const s_route_t s_routes [] = {
    { "GET",  "/v1/status",                          s_get_status,      S_NO_BODY },
    { "POST", "/v1/messages",                        s_post_message,    S_BODY },
    { "GET",  "/v1/outbox/{msg_id}",                 s_get_outbox,      S_NO_BODY },
    { "GET",  "/v1/inbox",                           s_get_inbox,       S_NO_BODY },
    { "GET",  "/v1/inbox/{seq}",                     s_get_inbox_item,  S_NO_BODY },
    { "POST", "/v1/inbox/{seq}/handled",             s_post_handled,    S_NO_BODY },
    { "DELETE", "/v1/inbox/{seq}/payload",           s_delete_payload,  S_NO_BODY },
    { "GET",  "/v1/referrals",                       s_get_referrals,   S_NO_BODY },
    { "GET",  "/v1/referrals/{referral_id}",         s_get_referral,    S_NO_BODY },
    { "POST", "/v1/referrals/{referral_id}/answer",  s_post_answer,     S_BODY },
    { "GET",  "/v1/cases",                           s_get_cases,       S_NO_BODY },
    { "GET",  "/v1/cases/{case_id}",                 s_get_case,        S_NO_BODY },
    { "GET",  "/v1/consents",                        s_get_consents,    S_NO_BODY },
    { "POST", "/v1/consents",                        s_post_consent,    S_BODY },
    { "GET",  "/v1/consents/{consent}",              s_get_consent,     S_NO_BODY },
    { "POST", "/v1/consents/{consent}/revoke",       s_post_revoke,     S_BODY_OPTIONAL },
    { "POST", "/v1/subjects/{subject}/report",       s_post_report,     S_BODY_OPTIONAL },
    { "GET",  "/v1/reports",                         s_get_reports,     S_NO_BODY },
    { "GET",  "/v1/reports/{msg_id}",                s_get_report,      S_NO_BODY },
    { "POST", "/v1/subjects/{subject}/erasure",      s_post_erasure,    S_BODY_OPTIONAL },
    { "DELETE", "/v1/subjects/{subject}/payloads",   s_delete_payloads, S_NO_BODY },
    { "GET",  "/v1/webhook/dead",                    s_get_dead,        S_NO_BODY },
    { "POST", "/v1/webhook/dead/{seq}/retry",        s_post_retry,      S_NO_BODY },
};
#define S_ROUTES (sizeof s_routes / sizeof s_routes [0])

void
kim_agent_http_routes (FILE *out)
{
    for (size_t i = 0; i < S_ROUTES; i++)
        fprintf (out, "%s %s\n", s_routes [i].method, s_routes [i].path);
}

//  Matches a path against a template; the {param} segment is copied out.
static bool
s_match (const char *template, const char *url, char *param, size_t param_size)
{
    param [0] = 0;
    while (*template && *url) {
        if (*template == '{') {
            const char *end = strchr (url, '/');
            size_t length = end? (size_t) (end - url): strlen (url);
            if (length == 0 || length >= param_size)
                return false;
            memcpy (param, url, length);
            param [length] = 0;
            url += length;
            template = strchr (template, '}') + 1;
        }
        else
        if (*template++ != *url++)
            return false;
    }
    return *template == 0 && *url == 0;
}

//  --------------------------------------------------------------------------
//  libmicrohttpd callbacks

static bool
s_authorized (kim_agent_http_t *self, struct MHD_Connection *connection)
{
    const char *header = MHD_lookup_connection_value (connection, MHD_HEADER_KIND,
                                                      MHD_HTTP_HEADER_AUTHORIZATION);
    if (!header || strncmp (header, "Bearer ", 7) != 0)
        return false;
    const char *token = header + 7;
    uint8_t hash [32];
    crypto_generichash (hash, sizeof hash, (const uint8_t *) token, strlen (token), NULL, 0);
    //  Every entry is compared, each in constant time
    int matches = 0;
    for (size_t i = 0; i < self->config->token_count; i++)
        matches |= sodium_memcmp (hash, self->config->tokens [i].hash, sizeof hash) == 0;
    return matches != 0;
}

static enum MHD_Result
s_dispatch (kim_agent_http_t *self, struct MHD_Connection *connection, const char *url,
            const char *method, s_request_t *request)
{
    char param [S_PARAM_MAX + 2];
    const s_route_t *route = NULL;
    char allow [64] = "";               //  the methods the path serves
    for (size_t i = 0; i < S_ROUTES && !route; i++)
        if (s_match (s_routes [i].path, url, param, sizeof param)) {
            if (streq (s_routes [i].method, method))
                route = &s_routes [i];
            else
            if (strlen (allow) + strlen (s_routes [i].method) + 3 < sizeof allow)
                strcat (strcat (allow, *allow? ", ": ""), s_routes [i].method);
        }
    if (!route && *allow)
        return s_reply_allow (connection, MHD_HTTP_METHOD_NOT_ALLOWED,
                              s_error_body (KIM_E_ARGS, "this method is not served on this "
                                            "path", ""), allow);
    if (!route)
        return s_error (connection, MHD_HTTP_NOT_FOUND, KIM_E_NOT_FOUND, "no such route", "");
    if (strchr (route->path, '{') && !kim_id_valid (param))
        return s_error (connection, MHD_HTTP_BAD_REQUEST, KIM_E_BAD_ID,
                        "the id in the path must be 1..64 of A-Z a-z 0-9 . _ : -", "");
    s_call_t call = { self, connection, param, NULL };
    if (route->body == S_BODY_OPTIONAL && (!request->body || request->size == 0)) {
        call.body = json_object ();
        if (!call.body)
            return s_store_error (connection, -KIM_E_NOMEM);
    }
    else
    if (route->body != S_NO_BODY) {
        json_error_t jerr;
        if (!request->body || request->size == 0)
            return s_error (connection, MHD_HTTP_BAD_REQUEST, KIM_E_MALFORMED,
                            "this route needs a JSON object as its body", "");
        call.body = json_loadb (request->body, request->size, JSON_REJECT_DUPLICATES, &jerr);
        if (!call.body) {
            char why [KIM_TEXT_MAX + 1];
            snprintf (why, sizeof why, "the body is not JSON (line %d, column %d): %.160s",
                      jerr.line, jerr.column, jerr.text);
            return s_error (connection, MHD_HTTP_BAD_REQUEST, KIM_E_MALFORMED, why, "");
        }
        if (!json_is_object (call.body)) {
            json_decref (call.body);
            return s_error (connection, MHD_HTTP_BAD_REQUEST, KIM_E_MALFORMED,
                            "the body must be one JSON object", "");
        }
    }
    else
    if (request->size > 0)
        return s_error (connection, MHD_HTTP_BAD_REQUEST, KIM_E_ARGS,
                        "this route takes no body", "");
    enum MHD_Result result = route->handler (&call);
    json_decref (call.body);
    return result;
}

static enum MHD_Result
s_handle (void *cls, struct MHD_Connection *connection, const char *url, const char *method,
          const char *version, const char *upload_data, size_t *upload_data_size, void **state)
{
    kim_agent_http_t *self = (kim_agent_http_t *) cls;
    s_request_t *request = (s_request_t *) *state;
    if (!request) {
        request = (s_request_t *) calloc (1, sizeof *request);
        if (!request)
            return MHD_NO;
        *state = request;
        //  Refuse before reading a body: no token, or a body too large
        request->web = self->web && kim_agent_web_owns (url);
        if (!request->web && !s_authorized (self, connection)) {
            request->answered = true;
            return s_error (connection, MHD_HTTP_UNAUTHORIZED, KIM_E_FORBIDDEN,
                            "missing or wrong bearer token (Authorization: Bearer ...)", "");
        }
        const char *length = MHD_lookup_connection_value (connection, MHD_HEADER_KIND,
                                                          MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (length && (strlen (length) > 12 || strtoull (length, NULL, 10) > self->config->max_body)) {
            request->answered = true;
            return s_error (connection, MHD_HTTP_CONTENT_TOO_LARGE, KIM_E_TOO_LARGE,
                            "the body is larger than http/max_body", "");
        }
        return MHD_YES;
    }
    if (request->answered) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t size = *upload_data_size;
        *upload_data_size = 0;
        if (request->too_large || request->size + size > self->config->max_body) {
            request->too_large = true;
            return MHD_YES;
        }
        char *grown = (char *) realloc (request->body, request->size + size);
        if (!grown)
            return MHD_NO;
        memcpy (grown + request->size, upload_data, size);
        request->body = grown;
        request->size += size;
        return MHD_YES;
    }
    request->answered = true;
    if (request->too_large)
        return s_error (connection, MHD_HTTP_CONTENT_TOO_LARGE, KIM_E_TOO_LARGE,
                        "the body is larger than http/max_body", "");
    if (request->web)
        return kim_agent_web_handle (self->web, connection, url, method, request->body,
                                     request->size);
    return s_dispatch (self, connection, url, method, request);
}

static void
s_completed (void *cls, struct MHD_Connection *connection, void **state,
             enum MHD_RequestTerminationCode code)
{
    s_request_t *request = (s_request_t *) *state;
    if (request) {
        free (request->body);
        free (request);
        *state = NULL;
    }
}

static char *
s_read_file (const char *path)
{
    zfile_t *file = zfile_new (NULL, path);
    char *text = NULL;
    if (file && zfile_input (file) == 0) {
        zchunk_t *chunk = zfile_read (file, zfile_cursize (file), 0);
        if (chunk) {
            text = (char *) calloc (1, zchunk_size (chunk) + 1);
            if (text)
                memcpy (text, zchunk_data (chunk), zchunk_size (chunk));
            zchunk_destroy (&chunk);
        }
    }
    zfile_destroy (&file);
    return text;
}

kim_agent_http_t *
kim_agent_http_new (const kim_agent_config_t *config, kim_agent_store_t *store,
                    kim_agent_shared_t *shared, char *error, size_t error_size)
{
    kim_agent_http_t *self = (kim_agent_http_t *) calloc (1, sizeof *self);
    if (!self) {
        snprintf (error, error_size, "out of memory");
        return NULL;
    }
    self->config = config;
    self->store = store;
    self->shared = shared;
    const char *crash = getenv ("KIM_AGENT_CRASH_AFTER_ACCEPTS");
    self->crash_after = crash? atol (crash): 0;
    struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons (config->port) };
    struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons (config->port) };
    bool ipv6 = inet_pton (AF_INET, config->bind, &v4.sin_addr) != 1;
    if (ipv6 && inet_pton (AF_INET6, config->bind, &v6.sin6_addr) != 1) {
        snprintf (error, error_size, "http/bind: '%s' is not an IP address", config->bind);
        kim_agent_http_destroy (&self);
        return NULL;
    }
    if (config->web_enabled
    &&  !(self->web = kim_agent_web_new (config, store, shared, error, error_size))) {
        kim_agent_http_destroy (&self);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG
                   | (ipv6? MHD_USE_IPv6: 0);
    if (config->tls_cert [0]) {
        self->tls_cert = s_read_file (config->tls_cert);
        self->tls_key = s_read_file (config->tls_key);
        if (!self->tls_cert || !self->tls_key) {
            snprintf (error, error_size, "http/tls_cert, http/tls_key: cannot read %s or %s",
                      config->tls_cert, config->tls_key);
            kim_agent_http_destroy (&self);
            return NULL;
        }
        flags |= MHD_USE_TLS;
    }
    struct MHD_OptionItem tls_options [] = {
        { MHD_OPTION_HTTPS_MEM_CERT, 0, self->tls_cert },
        { MHD_OPTION_HTTPS_MEM_KEY, 0, self->tls_key },
        { MHD_OPTION_END, 0, NULL }
    };
    self->daemon = MHD_start_daemon (flags, config->port, NULL, NULL, s_handle, self,
                                     MHD_OPTION_SOCK_ADDR, ipv6? (struct sockaddr *) &v6
                                                               : (struct sockaddr *) &v4,
                                     MHD_OPTION_NOTIFY_COMPLETED, s_completed, self,
                                     MHD_OPTION_THREAD_POOL_SIZE, (unsigned) 2,
                                     MHD_OPTION_CONNECTION_LIMIT, (unsigned) 64,
                                     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) 30,
                                     MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) 65536,
                                     MHD_OPTION_ARRAY, config->tls_cert [0]? tls_options
                                                                          : tls_options + 2,
                                     MHD_OPTION_END);
    if (!self->daemon) {
        snprintf (error, error_size, "http/bind: cannot listen on %s port %u (in use, or the "
                  "TLS files are not a PEM certificate and key)", config->bind,
                  (unsigned) config->port);
        kim_agent_http_destroy (&self);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info (self->daemon,
                                                            MHD_DAEMON_INFO_BIND_PORT);
    self->port = info? info->port: config->port;
    return self;
}

void
kim_agent_http_destroy (kim_agent_http_t **self_p)
{
    if (self_p && *self_p) {
        kim_agent_http_t *self = *self_p;
        if (self->daemon)
            MHD_stop_daemon (self->daemon);
        kim_agent_web_destroy (&self->web);
        if (self->tls_key) {
            sodium_memzero (self->tls_key, strlen (self->tls_key));
            free (self->tls_key);
        }
        free (self->tls_cert);
        free (self);
        *self_p = NULL;
    }
}

uint16_t
kim_agent_http_port (kim_agent_http_t *self)
{
    return self->port;
}
