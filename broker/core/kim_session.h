/*  kim_session.h — an organisation's sessions (kim_session.c). */
#ifndef KIM_SESSION_H_INCLUDED
#define KIM_SESSION_H_INCLUDED

#include "kim_server_int.h"

//  Destructors of the server's tables (zhashx).
void
    kim_session_free (void **item);
void
    kim_session_org_free (void **item);

//  The receiving session is gone: what was in flight returns to the mailbox.
void
    kim_session_release_receiver (org_state_t *state);

//  Ends a session: what it had in flight goes back to the mailbox (another
//  receiving session of the organisation takes over), and the hooks hear.
void
    kim_session_end (kim_server_t *self, session_t *session, const char *why);

//  Ends the organisation's oldest session with REJECT REPLACED.
void
    kim_session_end_oldest (kim_server_t *self, org_state_t *state);

//  Ends every session of an organisation whose key is no longer valid, each
//  with REJECT REVOKED naming `why`. Returns how many ended.
size_t
    kim_session_end_all (kim_server_t *self, org_state_t *state, const char *why);

#endif
