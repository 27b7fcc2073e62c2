/*  kim_session.c — an organisation's sessions: which one receives its
    mail, and how one, the oldest or all of them end.

    Called by the reactor (kim_server.c) and by the registry reload
    (kim_server_reload.c); it calls only the reply sender and the hooks.
    An organisation has at most one receiving session, the newest with a
    window; when it ends, what it had in flight goes back to the mailbox
    and another connected session of the organisation takes over.
*/
#include <czmq.h>

#include "kim_reply.h"
#include "kim_server_int.h"
#include "kim_session.h"

void
kim_session_org_free (void **item)
{
    org_state_t *state = (org_state_t *) *item;
    if (state) {
        free (state->flights);
        free (state);
        *item = NULL;
    }
}

//  The receiving session is gone: what was in flight returns to the mailbox.
void
kim_session_release_receiver (org_state_t *state)
{
    state->receiver = NULL;
    state->flight_count = 0;
    state->cursor = 0;
}

//  The organisation's newest session other than `gone` that takes
//  deliveries (window > 0), or NULL. A scan of all sessions, as for the
//  oldest: it runs when a receiving session ends, not per message.
static session_t *
s_newest_receiver (kim_server_t *self, org_state_t *state, session_t *gone)
{
    session_t *newest = NULL;
    for (session_t *session = (session_t *) zhashx_first (self->sessions); session;
         session = (session_t *) zhashx_next (self->sessions))
        if (session->org == state && session != gone && session->window > 0
        &&  (!newest || session->opened > newest->opened))
            newest = session;
    return newest;
}

void
kim_session_end (kim_server_t *self, session_t *session, const char *why)
{
    org_state_t *state = session->org;
    //  ACKs waiting for company are committed at the end of this turn,
    //  before a new session could be given the same deliveries again
    self->flush_acks = true;
    if (state->receiver == session) {
        if (state->flight_count)
            zsys_info ("server: %s: %zu deliveries in flight return to the mailbox (%s)",
                       state->org->id, state->flight_count, why);
        kim_session_release_receiver (state);
        //  Another agent of the organisation that is still connected takes
        //  over, as the newest session does on its HELLO: left without a
        //  receiver, the mailbox would wait for the next HELLO.
        session_t *next = state->session_count > 1? s_newest_receiver (self, state, session): NULL;
        if (next) {
            state->receiver = next;
            kim_server_mark_dirty (self, state);
        }
    }
    if (state->session_count)
        state->session_count--;
    if (self->config->verbose)
        zsys_debug ("server: session %s of %s ended: %s", session->key, state->org->id, why);
    for (size_t i = 0; i < self->hook_count; i++)
        if (self->hooks [i].session_end)
            self->hooks [i].session_end (self->hooks [i].state, session->rid, session->rid_size);
    zhashx_delete (self->sessions, session->key);
}

void
kim_session_free (void **item)
{
    free (*item);
    *item = NULL;
}

//  Ends the organisation's oldest session with REJECT REPLACED.
void
kim_session_end_oldest (kim_server_t *self, org_state_t *state)
{
    session_t *oldest = NULL;
    for (session_t *session = (session_t *) zhashx_first (self->sessions); session;
         session = (session_t *) zhashx_next (self->sessions))
        if (session->org == state && (!oldest || session->opened < oldest->opened))
            oldest = session;
    if (!oldest)
        return;
    zsys_info ("server: %s has %zu sessions, its limit (sessions_per_org): the oldest ends",
               state->org->id, state->session_count);
    kim_reply_reject (self, oldest->rid, oldest->rid_size, KIM_E_REPLACED, NULL, NULL,
                       "%s opened more than %" PRIu64 " sessions; this, the oldest, ends",
                       state->org->id, self->config->org_sessions);
    kim_session_end (self, oldest, "replaced");
}

//  Ends every session of an organisation whose key is no longer valid.
size_t
kim_session_end_all (kim_server_t *self, org_state_t *state, const char *why)
{
    zlistx_t *doomed = zlistx_new ();
    if (!doomed)
        return 0;
    for (session_t *session = (session_t *) zhashx_first (self->sessions); session;
         session = (session_t *) zhashx_next (self->sessions))
        if (session->org == state)
            zlistx_add_end (doomed, session);
    size_t count = zlistx_size (doomed);
    for (session_t *session = (session_t *) zlistx_first (doomed); session;
         session = (session_t *) zlistx_next (doomed)) {
        kim_reply_reject (self, session->rid, session->rid_size, KIM_E_REVOKED, NULL, NULL,
                  "%s: %s", state->org->id, why);
        kim_session_end (self, session, why);
    }
    zlistx_destroy (&doomed);
    return count;
}
