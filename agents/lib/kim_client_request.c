/*  kim_client_request.c — one command and its answer: kim_client_request,
    and kim_client_status and kim_client_directory built on it.

    One request waits at a time. It is kept (kim_client_pending.c), so that
    a reconnect sends it again in the new session (kim_client.c, on
    WELCOME), and the session's reader takes the broker's next answer that
    belongs to no SEND (a reply command, a REJECT without a msg_id, or, for
    SUBSCRIBE and UNSUBSCRIBE, the RECEIPT or REJECT naming its sub_id) as
    its reply. Kept apart from the send side because a request is not a
    message: it has no msg_id, no place in the send window and no receipt.
*/
#include <czmq.h>

#include "kim_client_int.h"

static bool
s_status_done (kim_client_t *self)
{
    return self->status_done;
}


//  --------------------------------------------------------------------------
//  Public API

int
kim_client_request (kim_client_t *self, const kim_cmd_t *request, kim_cmd_t *reply, int timeout_ms)
{
    if (!self || !request || !reply)
        return -KIM_E_ARGS;
    kim_client_i_release_lent (self);
    if (self->fatal)
        return -self->fatal;
    if (!self->request)
        self->request = (kim_cmd_t *) malloc (sizeof (kim_cmd_t));
    if (!self->request)
        return -KIM_E_NOMEM;
    *self->request = *request;
    self->reply = reply;
    self->status_waiting = true;
    self->status_done = false;
    if (self->state == KIM_CLIENT_ACTIVE)
        kim_client_i_session_check (self, kim_client_i_send_request (self));
    int rc = kim_client_i_wait_for (self, timeout_ms, s_status_done);
    self->status_waiting = false;
    self->reply = NULL;
    if (rc) {
        if (rc == -KIM_E_TIMEOUT)
            kim_client_i_set_error (self, "no answer to %s within %d ms",
                                    kim_cmd_name (request->id), timeout_ms);
        return rc;
    }
    return self->status_code? -self->status_code: 0;
}

int
kim_client_directory (kim_client_t *self, const char *org, const kim_dir_entry_t **entries,
                      size_t *count, int timeout_ms)
{
    if (!self || !entries || !count || (org && !kim_org_valid (org)))
        return -KIM_E_ARGS;
    kim_cmd_t *request = (kim_cmd_t *) malloc (2 * sizeof (kim_cmd_t));
    if (!request)
        return -KIM_E_NOMEM;
    kim_cmd_t *reply = request + 1;
    kim_cmd_init (request, KIM_CMD_DIRECTORY);
    if (org)
        kim_client_i_copy (request->org, sizeof request->org, org);
    int rc = kim_client_request (self, request, reply, timeout_ms);
    if (rc == 0 && reply->id != KIM_CMD_DIRECTORY_REPLY) {
        kim_client_i_set_error (self, "the broker answered DIRECTORY with %s",
                                kim_cmd_name (reply->id));
        rc = -KIM_E_MALFORMED;
    }
    if (rc == 0) {
        *entries = self->seal.entries;
        *count = reply->dir_count;
        kim_seal_learn (&self->seal, self->seal.entries, reply->dir_count);
    }
    free (request);
    return rc;
}

int
kim_client_status (kim_client_t *self, kim_status_t *status, int timeout_ms)
{
    if (!self || !status)
        return -KIM_E_ARGS;
    kim_cmd_t *request = (kim_cmd_t *) malloc (2 * sizeof (kim_cmd_t));
    if (!request)
        return -KIM_E_NOMEM;
    kim_cmd_t *reply = request + 1;
    kim_cmd_init (request, KIM_CMD_STATUS);
    int rc = kim_client_request (self, request, reply, timeout_ms);
    if (rc == 0 && reply->id != KIM_CMD_STATUS_REPLY) {
        kim_client_i_set_error (self, "the broker answered STATUS with %s",
                                kim_cmd_name (reply->id));
        rc = -KIM_E_INTERNAL;
    }
    if (rc == 0)
        *status = reply->status;
    free (request);
    return rc;
}
