/*  test_agent_users.c — the web page's sessions and lockouts against the
    times docs/agent.md gives: a session ends after 30 minutes without a
    request or after 12 hours, whatever its use; after web/max_failures
    failed sign-ins of a name within web/lockout_s the name is locked for
    web/lockout_s, the right password included; an address after four times
    as many. Hours pass on the module's clock (kim_agent_users_set_clock), the
    accounts are a real users file written by kim_agent_users_add, and every
    password is checked by argon2id as in the running agent.
*/
#include <czmq.h>

#include "web/kim_agent_web.h"

#define S_MINUTE    (60 * 1000ull)
#define S_HOUR      (60 * S_MINUTE)
#define S_PASSWORD  "richtig-und-lang"
#define S_WRONG     "falsch-und-lang"

static uint64_t s_now = 1800000000000ull;

static uint64_t
s_clock (void)
{
    return s_now;
}

#define CHECK(cond) \
    do { if (!(cond)) { fprintf (stderr, "%s:%d: check failed: %s\n", \
                                 __FILE__, __LINE__, #cond); exit (1); } } while (0)

static int
s_login (kim_agent_users_t *users, const char *user, const char *password, const char *address,
         char sid [KIM_AGENT_TOKEN_HEX + 1])
{
    kim_agent_session_t session;
    return kim_agent_users_login (users, user, password, address, sid, &session);
}

static bool
s_live (kim_agent_users_t *users, const char *sid)
{
    kim_agent_session_t session;
    return kim_agent_users_session (users, sid, &session);
}

static void
s_test_idle_and_lifetime (kim_agent_users_t *users)
{
    char sid [KIM_AGENT_TOKEN_HEX + 1];
    CHECK (s_login (users, "anna", S_PASSWORD, "10.0.0.1", sid) == 0);
    kim_agent_session_t session;
    CHECK (kim_agent_users_session (users, sid, &session));
    CHECK (streq (session.user, "anna") && session.role == KIM_AGENT_ROLE_STAFF);

    //  Each request restarts the 30 minutes
    for (int i = 0; i < 4; i++) {
        s_now += 30 * S_MINUTE;
        CHECK (s_live (users, sid));
    }
    s_now += 30 * S_MINUTE + 1;
    CHECK (!s_live (users, sid));
    //  and an ended session stays ended, also once it is asked about sooner
    s_now += 1;
    CHECK (!s_live (users, sid));
    printf ("  a session ends after 30 minutes without a request\n");

    //  Used every 20 minutes, it still ends 12 hours after the sign-in
    CHECK (s_login (users, "anna", S_PASSWORD, "10.0.0.1", sid) == 0);
    uint64_t signed_in = s_now;
    while (s_now + 20 * S_MINUTE <= signed_in + 12 * S_HOUR) {
        s_now += 20 * S_MINUTE;
        CHECK (s_live (users, sid));
    }
    s_now = signed_in + 12 * S_HOUR;
    CHECK (s_live (users, sid));
    s_now += 1;
    CHECK (!s_live (users, sid));
    printf ("  a session ends 12 hours after its sign-in, in use or not\n");

    //  Signing out ends it at once
    CHECK (s_login (users, "anna", S_PASSWORD, "10.0.0.1", sid) == 0);
    CHECK (s_live (users, sid));
    kim_agent_users_logout (users, sid);
    CHECK (!s_live (users, sid));
}

static void
s_test_name_lockout (kim_agent_users_t *users)
{
    char sid [KIM_AGENT_TOKEN_HEX + 1];
    //  Two failures, then a quiet window: the count starts again
    s_now += S_HOUR;
    CHECK (s_login (users, "ben", S_WRONG, "10.0.0.2", sid) == -KIM_E_FORBIDDEN);
    CHECK (s_login (users, "ben", S_WRONG, "10.0.0.2", sid) == -KIM_E_FORBIDDEN);
    s_now += 15 * S_MINUTE + 1;
    CHECK (s_login (users, "ben", S_WRONG, "10.0.0.2", sid) == -KIM_E_FORBIDDEN);
    CHECK (s_login (users, "ben", S_WRONG, "10.0.0.2", sid) == -KIM_E_FORBIDDEN);
    CHECK (s_login (users, "ben", S_PASSWORD, "10.0.0.2", sid) == 0);
    printf ("  failures older than lockout_s do not count\n");

    //  Three within the window (max_failures 3): locked, the right password
    //  too, from any address, for lockout_s
    for (int i = 0; i < 3; i++)
        CHECK (s_login (users, "ben", S_WRONG, "10.0.0.2", sid) == -KIM_E_FORBIDDEN);
    CHECK (s_login (users, "ben", S_PASSWORD, "10.0.0.2", sid) == -KIM_E_RATE_LIMITED);
    CHECK (s_login (users, "ben", S_PASSWORD, "10.0.0.9", sid) == -KIM_E_RATE_LIMITED);
    //  Another name from the same address is not locked by it
    CHECK (s_login (users, "anna", S_PASSWORD, "10.0.0.2", sid) == 0);
    s_now += 15 * S_MINUTE - 1;
    CHECK (s_login (users, "ben", S_PASSWORD, "10.0.0.2", sid) == -KIM_E_RATE_LIMITED);
    s_now += 2;
    CHECK (s_login (users, "ben", S_PASSWORD, "10.0.0.2", sid) == 0);
    printf ("  max_failures failed sign-ins lock the name for lockout_s\n");
}

static void
s_test_address_lockout (kim_agent_users_t *users)
{
    char sid [KIM_AGENT_TOKEN_HEX + 1];
    s_now += S_HOUR;
    //  Four times max_failures from one address, spread over names so that
    //  no name reaches its own limit (unknown names count too)
    const char *names [] = { "carl", "dora", "emil", "fritz", "gerd", "hanna" };
    for (int i = 0; i < 12; i++)
        CHECK (s_login (users, names [i % 6], S_WRONG, "10.0.0.3", sid) == -KIM_E_FORBIDDEN);
    CHECK (s_login (users, "anna", S_PASSWORD, "10.0.0.3", sid) == -KIM_E_RATE_LIMITED);
    CHECK (s_login (users, "anna", S_PASSWORD, "10.0.0.4", sid) == 0);
    s_now += 15 * S_MINUTE + 1;
    CHECK (s_login (users, "anna", S_PASSWORD, "10.0.0.3", sid) == 0);
    printf ("  an address is locked after four times max_failures\n");
}

int
main (void)
{
    printf ("test_agent_users:\n");
    char folder [] = "/tmp/kim-agent-users-XXXXXX";
    CHECK (mkdtemp (folder));
    char path [PATH_MAX], error [256];
    snprintf (path, sizeof path, "%s/users", folder);
    CHECK (kim_agent_users_add (path, "anna", "staff", S_PASSWORD, error, sizeof error) == 0);
    CHECK (kim_agent_users_add (path, "ben", "readonly", S_PASSWORD, error, sizeof error) == 0);

    kim_agent_users_t *users = kim_agent_users_new (path, 3, 900);
    CHECK (users);
    kim_agent_users_set_clock (users, s_clock);
    s_test_idle_and_lifetime (users);
    s_test_name_lockout (users);
    s_test_address_lockout (users);
    kim_agent_users_destroy (&users);
    CHECK (users == NULL);

    CHECK (unlink (path) == 0 && rmdir (folder) == 0);
    printf ("test_agent_users: OK\n");
    return 0;
}
