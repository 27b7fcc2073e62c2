/*  kim_agent_web.h — the staff web page of kim-agent (web/enabled = 1).

    Offices without case software answer their referrals in a browser. The
    page is served by the agent's own HTTP daemon under /ui/ and is
    server-rendered HTML with one small style sheet: no script, no third-party
    host, nothing fetched at run time.

    - kim_agent_users.c: staff accounts (a file of argon2id hashes), the
      lockout after failed logins, and sessions with their CSRF tokens;
    - kim_agent_web.c: the routes, the forms and the journal of staff actions;
    - kim_agent_web_html.c: the page builder (escaping) and the German and
      English texts.

    Every staff action goes into the journal (agent/data/web.journal and the
    log) with the staff member's name and the msg_id, never payload content.
*/
#ifndef KIM_AGENT_WEB_H_INCLUDED
#define KIM_AGENT_WEB_H_INCLUDED

#include <microhttpd.h>

#include "../kim_agent.h"

//  --------------------------------------------------------------------------
//  Staff accounts and sessions (kim_agent_users.c). Thread-safe: the HTTP
//  daemon's threads share one instance behind its mutex.

#define KIM_AGENT_USER_MAX      32      //  a user name: 1..32 of a-z 0-9 . _ -
#define KIM_AGENT_TOKEN_HEX     64      //  session ids and CSRF tokens: 32 random bytes

typedef enum {
    KIM_AGENT_ROLE_NONE = 0,
    KIM_AGENT_ROLE_READONLY,            //  may look
    KIM_AGENT_ROLE_STAFF                //  may answer and send
} kim_agent_role_t;

typedef struct {
    char user [KIM_AGENT_USER_MAX + 1];
    kim_agent_role_t role;
    char csrf [KIM_AGENT_TOKEN_HEX + 1];
} kim_agent_session_t;

typedef struct _kim_agent_users_t kim_agent_users_t;

//  Accounts from `path` (re-read when the file changes); a missing file
//  means no accounts yet. Lockout after `max_failures` failed logins for a
//  user or an address, for `lockout_s` seconds.
//  A password's length in characters (UTF-8 code points), as the docs and
//  the login field's maxlength count it: 10 to KIM_AGENT_PASSWORD_MAX.
#define KIM_AGENT_PASSWORD_MIN  10
#define KIM_AGENT_PASSWORD_MAX  256
size_t
    kim_agent_users_password_length (const char *password);

kim_agent_users_t *
    kim_agent_users_new (const char *path, uint32_t max_failures, uint32_t lockout_s);
void
    kim_agent_users_destroy (kim_agent_users_t **self_p);

//  The clock that sessions and lockouts are measured by, in ms (NULL: the
//  wall clock, the default). Tests move it to check the 30 minutes and the
//  12 hours without waiting for them. Set it before the first login.
typedef uint64_t (kim_agent_clock_fn) (void);
void
    kim_agent_users_set_clock (kim_agent_users_t *self, kim_agent_clock_fn *clock);

//  Checks a login. Returns 0 with a new session (*session filled, `sid`
//  the cookie value), -KIM_E_FORBIDDEN for a wrong name or password, or
//  -KIM_E_RATE_LIMITED while the user or the address is locked out.
int
    kim_agent_users_login (kim_agent_users_t *self, const char *user, const char *password,
                           const char *address, char sid [KIM_AGENT_TOKEN_HEX + 1],
                           kim_agent_session_t *session);

//  The live session of a cookie value (its idle time restarts); false when
//  there is none or it expired.
bool
    kim_agent_users_session (kim_agent_users_t *self, const char *sid,
                             kim_agent_session_t *session);

//  Ends a session.
void
    kim_agent_users_logout (kim_agent_users_t *self, const char *sid);

//  True when a user name has the allowed form.
bool
    kim_agent_users_name_valid (const char *name);

//  Adds or replaces an account in the file (written atomically, mode
//  0600). Returns 0 or -1 with `error` set.
int
    kim_agent_users_add (const char *path, const char *user, const char *role,
                         const char *password, char *error, size_t error_size);

//  Fresh random hex (32 bytes).
void
    kim_agent_users_token (char out [KIM_AGENT_TOKEN_HEX + 1]);

//  --------------------------------------------------------------------------
//  The page (kim_agent_web.c)

typedef struct _kim_agent_web_t kim_agent_web_t;

kim_agent_web_t *
    kim_agent_web_new (const kim_agent_config_t *config, kim_agent_store_t *store,
                       kim_agent_shared_t *shared, char *error, size_t error_size);
void
    kim_agent_web_destroy (kim_agent_web_t **self_p);

//  True for the paths the page serves: "/" and "/ui" and below. These go
//  without a bearer token; the page has its own login.
bool
    kim_agent_web_owns (const char *url);

//  Answers one request (the body already read, bounded by http/max_body).
enum MHD_Result
    kim_agent_web_handle (kim_agent_web_t *self, struct MHD_Connection *connection,
                          const char *url, const char *method, const char *body, size_t size);

//  --------------------------------------------------------------------------
//  Page builder (kim_agent_web_html.c)

typedef struct {
    char *data;
    size_t size;
    size_t capacity;
    bool failed;                        //  out of memory: the page is not sent
} kim_agent_html_t;

void
    kim_agent_html_init (kim_agent_html_t *self);
void
    kim_agent_html_free (kim_agent_html_t *self);
//  Appends trusted markup (our own templates only).
void
    kim_agent_html_raw (kim_agent_html_t *self, const char *markup);
//  Appends formatted trusted markup; every %s must be escaped text already.
void
    kim_agent_html_rawf (kim_agent_html_t *self, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));
//  Appends text, escaped for element content and quoted attribute values.
void
    kim_agent_html_text (kim_agent_html_t *self, const char *text);
void
    kim_agent_html_textn (kim_agent_html_t *self, const char *text, size_t size);

//  The texts of the page, in German and English.
typedef enum {
#define KIM_WEB_TEXT(key, de, en) KIM_WEB_T_##key,
#include "kim_agent_web_texts.h"
#undef KIM_WEB_TEXT
    KIM_WEB_T_COUNT
} kim_agent_text_t;

//  lang: 0 German, 1 English.
const char *
    kim_agent_web_text (kim_agent_text_t key, int lang);

//  The style sheet served at /ui/style.css.
extern const char kim_agent_web_css [];

#endif
