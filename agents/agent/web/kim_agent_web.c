/*  kim_agent_web.c — the staff web page: routes, forms, journal.

    Served by the agent's HTTP daemon under /ui/ when web/enabled = 1, for
    offices without case software. Every page is rendered here from the
    agent's store (the referral view, the inbox with its opened payloads,
    the outbox); every answer goes into the outbox exactly as the HTTP
    API's answer route puts it there, so the same guarantees hold: the
    answer is on disk before the page says "sent", and resent until the
    broker takes or refuses it. Each form carries a msg_id made when the form
    was drawn, so a form sent twice (a double click, a reload) is one message.

    Security: a login (kim_agent_users.c) gives a session cookie (HttpOnly,
    SameSite=Strict, Secure under TLS); every POST must carry the session's
    CSRF token (the login form a token bound to a cookie of its own), and a
    POST whose Origin is not this host is refused. Readonly accounts see
    everything and send nothing. The Content-Security-Policy allows no
    script at all. Every action is journaled with the user's name and the
    msg_id (web.journal in agent/data, and the log), never payload content.
*/
#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <czmq.h>
#include <sodium.h>

#include "kim/kim_policy.h"
#include "kim_agent_web.h"

#define S_FIELDS_MAX    32
#define S_COOKIES_MAX   3

struct _kim_agent_web_t {
    const kim_agent_config_t *config;
    kim_agent_store_t *store;
    kim_agent_shared_t *shared;
    kim_agent_users_t *users;
    kim_policy_t *policy;               //  web/policy: offers statutes (NULL: none)
    int journal_fd;
    pthread_mutex_t journal_mutex;
    bool tls;
};

//  One form field, decoded.
typedef struct {
    char *name;
    char *value;
} s_field_t;

//  One request being answered.
typedef struct {
    kim_agent_web_t *self;
    struct MHD_Connection *connection;
    const char *url;
    int lang;                           //  0 de, 1 en
    bool signed_in;
    kim_agent_session_t session;
    char address [64];
    s_field_t fields [S_FIELDS_MAX];
    size_t field_count;
    char *cookies [S_COOKIES_MAX];      //  Set-Cookie values to send
    size_t cookie_count;
    kim_agent_html_t html;
} s_req_t;

#define T(key) kim_agent_web_text (KIM_WEB_T_##key, req->lang)


//  --------------------------------------------------------------------------
//  Journal

static void
s_journal (kim_agent_web_t *self, const char *user, const char *action, const char *referral_id,
           const char *msg_id, const char *address)
{
    json_t *entry = json_pack ("{s:I, s:s, s:s}", "at", (json_int_t) zclock_time (),
                               "user", user && *user? user: "-", "action", action);
    if (!entry)
        return;
    if (referral_id && *referral_id)
        json_object_set_new (entry, "referral_id", json_string (referral_id));
    if (msg_id && *msg_id)
        json_object_set_new (entry, "msg_id", json_string (msg_id));
    if (address && *address)
        json_object_set_new (entry, "address", json_string (address));
    char *line = json_dumps (entry, JSON_COMPACT);
    json_decref (entry);
    if (!line)
        return;
    zsys_info ("kim-agent %s: web: %s", self->config->org, line);
    if (self->journal_fd >= 0) {
        pthread_mutex_lock (&self->journal_mutex);
        size_t length = strlen (line);
        line [length] = '\n';           //  the NUL becomes the line end (dumps gave us length+1)
        if (write (self->journal_fd, line, length + 1) != (ssize_t) (length + 1)
        ||  fdatasync (self->journal_fd) != 0)
            zsys_error ("kim-agent %s: cannot write the web journal", self->config->org);
        pthread_mutex_unlock (&self->journal_mutex);
    }
    free (line);
}


//  --------------------------------------------------------------------------
//  Requests: forms, cookies, replies

static int
s_hex (char c)
{
    return c >= '0' && c <= '9'? c - '0': c >= 'a' && c <= 'f'? c - 'a' + 10
         : c >= 'A' && c <= 'F'? c - 'A' + 10: -1;
}

//  Decodes one application/x-www-form-urlencoded part in place.
static size_t
s_decode (char *text, size_t size)
{
    size_t out = 0;
    for (size_t i = 0; i < size; i++) {
        if (text [i] == '+')
            text [out++] = ' ';
        else
        if (text [i] == '%' && i + 2 < size && s_hex (text [i + 1]) >= 0
        &&  s_hex (text [i + 2]) >= 0) {
            text [out++] = (char) (s_hex (text [i + 1]) * 16 + s_hex (text [i + 2]));
            i += 2;
        }
        else
            text [out++] = text [i];
    }
    return out;
}

//  Parses the form body. Returns false when it is not a valid form (too
//  many fields, a field twice, bytes that are not UTF-8 or hold a NUL).
static bool
s_parse_form (s_req_t *req, const char *body, size_t size)
{
    size_t start = 0;
    while (start < size) {
        const char *amp = memchr (body + start, '&', size - start);
        size_t end = amp? (size_t) (amp - body): size;
        if (end > start) {
            if (req->field_count == S_FIELDS_MAX)
                return false;
            char *part = (char *) malloc (end - start + 1);
            if (!part)
                return false;
            memcpy (part, body + start, end - start);
            part [end - start] = 0;
            char *equals = strchr (part, '=');
            char *value = equals? equals + 1: part + strlen (part);
            if (equals)
                *equals = 0;
            size_t name_length = s_decode (part, strlen (part));
            part [name_length] = 0;
            size_t value_length = s_decode (value, strlen (value));
            value [value_length] = 0;
            if (strlen (part) != name_length || strlen (value) != value_length
            ||  !kim_utf8_valid ((const uint8_t *) part, name_length)
            ||  !kim_utf8_valid ((const uint8_t *) value, value_length)) {
                free (part);
                return false;
            }
            for (size_t i = 0; i < req->field_count; i++)
                if (streq (req->fields [i].name, part)) {
                    free (part);
                    return false;
                }
            req->fields [req->field_count].name = part;
            req->fields [req->field_count].value = value;
            req->field_count++;
        }
        start = end + 1;
    }
    return true;
}

//  A form field's value ("" when absent).
static const char *
s_field (s_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->field_count; i++)
        if (streq (req->fields [i].name, name))
            return req->fields [i].value;
    return "";
}

static void
s_set_cookie (s_req_t *req, const char *name, const char *value, const char *path, int max_age)
{
    if (req->cookie_count == S_COOKIES_MAX)
        return;
    char text [256];
    snprintf (text, sizeof text, "%s=%s; Path=%s; HttpOnly; SameSite=Strict%s%s", name, value,
              path, req->self->tls? "; Secure": "", max_age == 0? "; Max-Age=0": "");
    req->cookies [req->cookie_count++] = strdup (text);
}

static const char *
s_cookie (s_req_t *req, const char *name)
{
    return MHD_lookup_connection_value (req->connection, MHD_COOKIE_KIND, name);
}

static enum MHD_Result
s_respond (s_req_t *req, unsigned status, const char *type, const char *body, size_t size,
           bool must_copy, const char *location)
{
    struct MHD_Response *response =
        MHD_create_response_from_buffer (size, (void *) body,
                                         must_copy? MHD_RESPMEM_MUST_COPY: MHD_RESPMEM_PERSISTENT);
    if (!response)
        return MHD_NO;
    MHD_add_response_header (response, "Content-Type", type);
    MHD_add_response_header (response, "Cache-Control", "no-store");
    MHD_add_response_header (response, "Content-Security-Policy",
                             "default-src 'none'; style-src 'self'; img-src 'self'; "
                             "form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
    MHD_add_response_header (response, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header (response, "X-Frame-Options", "DENY");
    MHD_add_response_header (response, "Referrer-Policy", "same-origin");
    if (location)
        MHD_add_response_header (response, "Location", location);
    for (size_t i = 0; i < req->cookie_count; i++)
        if (req->cookies [i])
            MHD_add_response_header (response, "Set-Cookie", req->cookies [i]);
    enum MHD_Result result = MHD_queue_response (req->connection, status, response);
    MHD_destroy_response (response);
    return result;
}

static enum MHD_Result
s_redirect (s_req_t *req, const char *location)
{
    static const char body [] = "";
    return s_respond (req, MHD_HTTP_SEE_OTHER, "text/plain; charset=utf-8", body, 0, false,
                      location);
}

static enum MHD_Result
s_send_page (s_req_t *req, unsigned status)
{
    if (req->html.failed) {
        static const char nomem [] = "out of memory";
        return s_respond (req, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
                          nomem, strlen (nomem), false, NULL);
    }
    return s_respond (req, status, "text/html; charset=utf-8", req->html.data, req->html.size,
                      true, NULL);
}


//  --------------------------------------------------------------------------
//  Page frame

static const struct {
    const char *state;
    const char *de;
    const char *en;
} s_states [] = {
    { "SENT", "gesendet", "sent" },
    { "DELIVERED", "neu", "new" },
    { "ACCEPTED", "angenommen", "accepted" },
    { "IN_PROGRESS", "in Bearbeitung", "in progress" },
    { "OVERDUE", "überfällig", "overdue" },
    { "COMPLETED", "abgeschlossen", "completed" },
    { "DECLINED", "abgelehnt", "declined" },
    { "NOT_COMPETENT", "nicht zuständig", "not competent" },
    { "FORWARDED", "weitergeleitet", "forwarded" },
    { "EXPIRED", "abgelaufen", "expired" },
    { "WITHDRAWN", "zurückgezogen", "withdrawn" },
    { "SUSPENDED", "ausgesetzt (Einwilligung widerrufen)", "suspended (consent revoked)" },
    { "OPEN", "offen", "open" },
    { "CLOSED", "abgeschlossen", "closed" },
    { "pending", "wartet auf den Broker", "waiting for the broker" },
    { "active", "gültig", "active" },
    { "refused", "abgewiesen", "refused" },
    { "expired", "abgelaufen", "expired" },
    { "revoking", "Widerruf wartet auf den Broker", "revocation waiting for the broker" },
    { "revoked", "widerrufen", "revoked" },
};

static void
s_state_text (s_req_t *req, const char *state)
{
    for (size_t i = 0; i < sizeof s_states / sizeof s_states [0]; i++)
        if (state && streq (s_states [i].state, state)) {
            kim_agent_html_text (&req->html, req->lang? s_states [i].en: s_states [i].de);
            return;
        }
    kim_agent_html_text (&req->html, state);
}

static void
s_time_text (s_req_t *req, json_int_t ms)
{
    if (ms <= 0) {
        kim_agent_html_text (&req->html, T (NO_DEADLINE));
        return;
    }
    time_t seconds = (time_t) (ms / 1000);
    struct tm tm;
    char text [64] = "";
    if (localtime_r (&seconds, &tm))
        strftime (text, sizeof text, req->lang? "%Y-%m-%d %H:%M": "%d.%m.%Y %H:%M", &tm);
    kim_agent_html_rawf (&req->html, "<time datetime=\"%lld\">", (long long) ms);
    kim_agent_html_text (&req->html, text);
    kim_agent_html_raw (&req->html, "</time>");
}

//  `current`: the navigation entry of this page (NULL: none).
static void
s_begin (s_req_t *req, const char *title, const char *current)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_rawf (html, "<!DOCTYPE html>\n<html lang=\"%s\">\n<head>\n"
                         "<meta charset=\"utf-8\">\n"
                         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                         "<title>", req->lang? "en": "de");
    kim_agent_html_text (html, title);
    kim_agent_html_raw (html, " – ");
    kim_agent_html_text (html, T (APP));
    kim_agent_html_raw (html, "</title>\n<link rel=\"stylesheet\" href=\"/ui/style.css\">\n"
                              "</head>\n<body>\n<a class=\"skip\" href=\"#main\">");
    kim_agent_html_text (html, T (SKIP));
    kim_agent_html_raw (html, "</a>\n<header>\n<p class=\"brand\">");
    kim_agent_html_text (html, T (APP));
    kim_agent_html_raw (html, " · ");
    kim_agent_html_text (html, req->self->config->org);
    kim_agent_html_raw (html, "</p>\n");
    if (req->signed_in) {
        static const struct { const char *path; kim_agent_text_t text; bool staff; } entries [] = {
            { "/ui/inbox", KIM_WEB_T_INBOX, false },
            { "/ui/sent", KIM_WEB_T_SENT_LIST, false },
            { "/ui/cases", KIM_WEB_T_CASES, false },
            { "/ui/consents", KIM_WEB_T_CONSENTS, false },
            { "/ui/new", KIM_WEB_T_NEW, true },
        };
        kim_agent_html_rawf (html, "<nav aria-label=\"%s\"><ul>\n", T (NAV));
        for (size_t i = 0; i < sizeof entries / sizeof entries [0]; i++) {
            if (entries [i].staff && req->session.role != KIM_AGENT_ROLE_STAFF)
                continue;
            bool here = current && streq (current, entries [i].path);
            kim_agent_html_rawf (html, "<li><a href=\"%s\"%s>%s</a></li>\n", entries [i].path,
                                 here? " aria-current=\"page\"": "",
                                 kim_agent_web_text (entries [i].text, req->lang));
        }
        kim_agent_html_raw (html, "</ul></nav>\n<div class=\"who\"><span>");
        kim_agent_html_text (html, T (SIGNED_IN_AS));
        kim_agent_html_raw (html, " <strong>");
        kim_agent_html_text (html, req->session.user);
        kim_agent_html_raw (html, "</strong> (");
        kim_agent_html_text (html, req->session.role == KIM_AGENT_ROLE_STAFF? T (ROLE_STAFF)
                                                                            : T (ROLE_READONLY));
        kim_agent_html_raw (html, ")</span>\n");
    }
    else
        kim_agent_html_raw (html, "<div class=\"who\">\n");
    //  The other language, on this same page
    kim_agent_html_raw (html, "<a href=\"");
    kim_agent_html_text (html, req->url);
    kim_agent_html_rawf (html, "?lang=%s\" lang=\"%s\" hreflang=\"%s\">%s</a>\n",
                         req->lang? "de": "en", req->lang? "de": "en", req->lang? "de": "en",
                         req->lang? "Deutsch": "English");
    if (req->signed_in) {
        kim_agent_html_raw (html, "<form method=\"post\" action=\"/ui/logout\">"
                                  "<input type=\"hidden\" name=\"csrf\" value=\"");
        kim_agent_html_text (html, req->session.csrf);
        kim_agent_html_rawf (html, "\"><button type=\"submit\">%s</button></form>\n", T (LOGOUT));
    }
    kim_agent_html_raw (html, "</div>\n</header>\n<main id=\"main\" tabindex=\"-1\">\n<h1>");
    kim_agent_html_text (html, title);
    kim_agent_html_raw (html, "</h1>\n");
}

static void
s_end (s_req_t *req)
{
    kim_agent_html_raw (&req->html, "</main>\n</body>\n</html>\n");
}

static enum MHD_Result
s_message_page (s_req_t *req, unsigned status, const char *title, const char *text,
                const char *detail)
{
    s_begin (req, title, NULL);
    kim_agent_html_raw (&req->html, "<div class=\"error\" role=\"alert\"><p>");
    kim_agent_html_text (&req->html, text);
    if (detail && *detail) {
        kim_agent_html_raw (&req->html, " ");
        kim_agent_html_text (&req->html, detail);
    }
    kim_agent_html_raw (&req->html, "</p></div>\n");
    if (req->signed_in)
        kim_agent_html_rawf (&req->html, "<p><a href=\"/ui/inbox\">%s</a></p>\n", T (BACK));
    s_end (req);
    return s_send_page (req, status);
}

static void
s_hidden (s_req_t *req, const char *name, const char *value)
{
    kim_agent_html_rawf (&req->html, "<input type=\"hidden\" name=\"%s\" value=\"", name);
    kim_agent_html_text (&req->html, value);
    kim_agent_html_raw (&req->html, "\">\n");
}

//  A fresh msg_id for a form: a resubmitted form sends the same message.
static void
s_form_msg_id (s_req_t *req)
{
    char token [KIM_AGENT_TOKEN_HEX + 1], msg_id [32];
    kim_agent_users_token (token);
    snprintf (msg_id, sizeof msg_id, "web-%.24s", token);
    s_hidden (req, "msg_id", msg_id);
}


//  --------------------------------------------------------------------------
//  Login and logout

static enum MHD_Result
s_login_page (s_req_t *req, unsigned status, const char *problem)
{
    //  A token bound to a cookie of its own: a login form cannot be posted
    //  from another site either
    char token [KIM_AGENT_TOKEN_HEX + 1];
    kim_agent_users_token (token);
    s_set_cookie (req, "kim_login", token, "/ui", -1);
    s_begin (req, T (LOGIN), NULL);
    kim_agent_html_t *html = &req->html;
    if (problem) {
        kim_agent_html_raw (html, "<div class=\"error\" role=\"alert\"><p>");
        kim_agent_html_text (html, problem);
        kim_agent_html_raw (html, "</p></div>\n");
    }
    kim_agent_html_raw (html, "<form class=\"login\" method=\"post\" action=\"/ui/login\">\n");
    s_hidden (req, "csrf", token);
    kim_agent_html_rawf (html, "<label for=\"user\">%s</label>\n"
                         "<input type=\"text\" id=\"user\" name=\"user\" autocomplete=\"username\" "
                         "required maxlength=\"32\" autocapitalize=\"none\" spellcheck=\"false\">\n"
                         "<label for=\"password\">%s</label>\n"
                         "<input type=\"password\" id=\"password\" name=\"password\" "
                         "autocomplete=\"current-password\" required maxlength=\"256\">\n"
                         "<button type=\"submit\">%s</button>\n</form>\n",
                         T (USER), T (PASSWORD), T (LOGIN));
    s_end (req);
    return s_send_page (req, status);
}

static enum MHD_Result
s_login (s_req_t *req)
{
    kim_agent_web_t *self = req->self;
    const char *expected = s_cookie (req, "kim_login");
    const char *token = s_field (req, "csrf");
    if (!expected || strlen (expected) != KIM_AGENT_TOKEN_HEX || strlen (token) != KIM_AGENT_TOKEN_HEX
    ||  sodium_memcmp (expected, token, KIM_AGENT_TOKEN_HEX) != 0) {
        s_journal (self, "-", "login_bad_form", NULL, NULL, req->address);
        return s_login_page (req, MHD_HTTP_FORBIDDEN, T (BAD_FORM));
    }
    const char *user = s_field (req, "user");
    const char *password = s_field (req, "password");
    char sid [KIM_AGENT_TOKEN_HEX + 1];
    kim_agent_session_t session;
    int rc = kim_agent_users_name_valid (user) && strlen (password) <= 256
           ? kim_agent_users_login (self->users, user, password, req->address, sid, &session)
           : -KIM_E_FORBIDDEN;
    const char *journal_user = kim_agent_users_name_valid (user)? user: "(invalid name)";
    if (rc == -KIM_E_RATE_LIMITED) {
        s_journal (self, journal_user, "login_locked", NULL, NULL, req->address);
        return s_login_page (req, MHD_HTTP_TOO_MANY_REQUESTS, T (LOCKED));
    }
    if (rc) {
        s_journal (self, journal_user, "login_failed", NULL, NULL, req->address);
        return s_login_page (req, MHD_HTTP_UNAUTHORIZED, T (LOGIN_FAILED));
    }
    s_journal (self, user, "login", NULL, NULL, req->address);
    s_set_cookie (req, "kim_session", sid, "/ui", -1);
    s_set_cookie (req, "kim_login", "", "/ui", 0);
    return s_redirect (req, "/ui/inbox");
}

static enum MHD_Result
s_logout (s_req_t *req)
{
    kim_agent_users_logout (req->self->users, s_cookie (req, "kim_session"));
    s_journal (req->self, req->session.user, "logout", NULL, NULL, req->address);
    s_set_cookie (req, "kim_session", "", "/ui", 0);
    req->signed_in = false;
    return s_login_page (req, MHD_HTTP_OK, T (SIGNED_OUT));
}


//  --------------------------------------------------------------------------
//  Lists

static json_int_t
s_int (json_t *record, const char *key)
{
    return json_integer_value (json_object_get (record, key));
}

static const char *
s_str (json_t *record, const char *key)
{
    const char *value = json_string_value (json_object_get (record, key));
    return value? value: "";
}

static bool
s_is_open (const char *state)
{
    return streq (state, "SENT") || streq (state, "DELIVERED") || streq (state, "ACCEPTED")
        || streq (state, "IN_PROGRESS") || streq (state, "OVERDUE") || streq (state, "SUSPENDED");
}

//  Open first: overdue, then by deadline (none last), then oldest.
static int
s_compare_open (const void *a, const void *b)
{
    json_t *x = *(json_t *const *) a, *y = *(json_t *const *) b;
    int ox = json_is_true (json_object_get (x, "overdue")), oy = json_is_true (json_object_get (y, "overdue"));
    if (ox != oy)
        return oy - ox;
    json_int_t dx = s_int (x, "deadline"), dy = s_int (y, "deadline");
    if (dx != dy)
        return dx == 0? 1: dy == 0? -1: dx < dy? -1: 1;
    json_int_t cx = s_int (x, "created_at"), cy = s_int (y, "created_at");
    return cx < cy? -1: cx > cy? 1: 0;
}

//  Closed: most recently changed first.
static int
s_compare_closed (const void *a, const void *b)
{
    json_int_t x = s_int (*(json_t *const *) a, "updated_at");
    json_int_t y = s_int (*(json_t *const *) b, "updated_at");
    return x > y? -1: x < y? 1: 0;
}

static void
s_table (s_req_t *req, json_t **rows, size_t count, const char *caption, bool received)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_raw (html, "<table>\n<caption>");
    kim_agent_html_text (html, caption);
    kim_agent_html_rawf (html, " (%zu)</caption>\n<thead><tr><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th></tr></thead>\n<tbody>\n",
                         count, T (REFERRAL), received? T (FROM): T (TO), T (PURPOSE), T (STATE),
                         T (DEADLINE), T (RECEIVED));
    for (size_t i = 0; i < count; i++) {
        json_t *row = rows [i];
        bool overdue = json_is_true (json_object_get (row, "overdue"));
        const char *id = s_str (row, "referral_id");
        kim_agent_html_rawf (html, "<tr%s><td><a href=\"/ui/referral/", overdue? " class=\"overdue\"": "");
        kim_agent_html_text (html, id);
        kim_agent_html_raw (html, "\">");
        kim_agent_html_text (html, id);
        kim_agent_html_raw (html, "</a></td><td>");
        kim_agent_html_text (html, s_str (row, "counterpart"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, s_str (row, "purpose"));
        kim_agent_html_raw (html, "</td><td class=\"state\">");
        s_state_text (req, s_str (row, "state"));
        kim_agent_html_raw (html, "</td><td>");
        s_time_text (req, s_int (row, "deadline"));
        if (overdue) {
            kim_agent_html_raw (html, " <span class=\"mark\">");
            kim_agent_html_text (html, T (OVERDUE));
            kim_agent_html_raw (html, "</span>");
        }
        kim_agent_html_raw (html, "</td><td>");
        s_time_text (req, s_int (row, "created_at"));
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    if (count == 0)
        kim_agent_html_rawf (html, "<tr><td colspan=\"6\">%s</td></tr>\n", T (NONE));
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
}

static void
s_notice_sent (s_req_t *req, const char *msg_id);
static void
s_link (s_req_t *req, const char *prefix, const char *id);

static enum MHD_Result
s_list (s_req_t *req, bool received)
{
    json_t *items = kim_agent_store_referrals (req->self->store, NULL, -1);
    size_t total = json_array_size (items);
    json_t **open = (json_t **) calloc (total + 1, sizeof (json_t *));
    json_t **closed = (json_t **) calloc (total + 1, sizeof (json_t *));
    size_t open_count = 0, closed_count = 0;
    if (!open || !closed) {
        free (open);
        free (closed);
        json_decref (items);
        req->html.failed = true;
        return s_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    for (size_t i = 0; i < total; i++) {
        json_t *row = json_array_get (items, i);
        if (!streq (s_str (row, "role"), received? "recipient": "sender"))
            continue;
        if (s_is_open (s_str (row, "state")))
            open [open_count++] = row;
        else
            closed [closed_count++] = row;
    }
    qsort (open, open_count, sizeof (json_t *), s_compare_open);
    qsort (closed, closed_count, sizeof (json_t *), s_compare_closed);
    s_begin (req, received? T (INBOX): T (SENT_LIST), received? "/ui/inbox": "/ui/sent");
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        s_notice_sent (req, sent);
    s_table (req, open, open_count, T (OPEN_LIST), received);
    s_table (req, closed, closed_count, T (CLOSED_LIST), received);
    s_end (req);
    free (open);
    free (closed);
    json_decref (items);
    return s_send_page (req, MHD_HTTP_OK);
}


//  --------------------------------------------------------------------------
//  One referral

typedef enum { S_ACCEPT, S_DECLINE, S_NOT_COMPETENT, S_FORWARD, S_STATUS, S_OUTCOME,
               S_WITHDRAW, S_ANSWERS } s_answer_t;

static const char *const s_answer_names [S_ANSWERS] = {
    "accept", "decline", "not_competent", "forward", "status", "outcome", "withdraw"
};
static const kim_type_t s_answer_types [S_ANSWERS] = {
    KIM_TYPE_ACCEPT, KIM_TYPE_DECLINE, KIM_TYPE_NOT_COMPETENT, KIM_TYPE_FORWARD, KIM_TYPE_STATUS,
    KIM_TYPE_OUTCOME, KIM_TYPE_WITHDRAW
};

//  Whether our side may give this answer in this state (PROTOCOL.md 9.4).
static bool
s_allowed (s_answer_t answer, const char *role, const char *state)
{
    bool recipient = streq (role, "recipient");
    bool unanswered = streq (state, "SENT") || streq (state, "DELIVERED") || streq (state, "OVERDUE");
    bool taken = streq (state, "ACCEPTED") || streq (state, "IN_PROGRESS");
    switch (answer) {
        case S_ACCEPT:
        case S_DECLINE:
        case S_NOT_COMPETENT:
            return recipient && unanswered;
        case S_FORWARD:
            return recipient && (unanswered || taken);
        case S_STATUS:
        case S_OUTCOME:
            return recipient && taken;
        case S_WITHDRAW:
            return !recipient && (s_is_open (state));
        default:
            return false;
    }
}

static void
s_form_begin (s_req_t *req, const char *id, s_answer_t answer, kim_agent_text_t legend)
{
    kim_agent_html_raw (&req->html, "<form method=\"post\" action=\"/ui/referral/");
    kim_agent_html_text (&req->html, id);
    kim_agent_html_rawf (&req->html, "/answer\">\n<fieldset>\n<legend>%s</legend>\n",
                         kim_agent_web_text (legend, req->lang));
    s_hidden (req, "csrf", req->session.csrf);
    s_hidden (req, "answer", s_answer_names [answer]);
    s_form_msg_id (req);
}

static void
s_form_end (s_req_t *req, s_answer_t answer, const char *button)
{
    if (answer != S_OUTCOME)
        kim_agent_html_rawf (&req->html, "<label for=\"note-%s\">%s</label>\n"
                             "<input type=\"text\" id=\"note-%s\" name=\"note\" maxlength=\"280\">\n",
                             s_answer_names [answer], T (NOTE), s_answer_names [answer]);
    kim_agent_html_rawf (&req->html, "<button type=\"submit\">%s</button>\n</fieldset>\n</form>\n",
                         button);
}

static void
s_select (s_req_t *req, const char *id, const char *name, kim_agent_text_t label,
          const char *const *codes, const kim_agent_text_t *texts, size_t count)
{
    kim_agent_html_rawf (&req->html, "<label for=\"%s\">%s</label>\n<select id=\"%s\" name=\"%s\" "
                         "required>\n", id, kim_agent_web_text (label, req->lang), id, name);
    for (size_t i = 0; i < count; i++)
        kim_agent_html_rawf (&req->html, "<option value=\"%s\">%s</option>\n", codes [i],
                             kim_agent_web_text (texts [i], req->lang));
    kim_agent_html_raw (&req->html, "</select>\n");
}

//  The legal-basis picker: consent id or statute citation, with the hint
//  that the broker, not the agent, knows what applies. `prefix` keeps the
//  ids of two pickers on one page apart.
static void
s_basis_picker (s_req_t *req, const char *prefix)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_rawf (html, "<fieldset>\n<legend>%s</legend>\n", T (LEGAL_BASIS));
    kim_agent_html_rawf (html, "<p class=\"hint\" id=\"%s-basis-hint\">%s</p>\n", prefix,
                         T (BASIS_HINT));
    kim_agent_html_rawf (html, "<input type=\"radio\" id=\"%s-kind-consent\" name=\"basis\" "
                         "value=\"consent\" checked aria-describedby=\"%s-basis-hint\">"
                         "<label class=\"inline\" for=\"%s-kind-consent\">%s</label>\n"
                         "<input type=\"radio\" id=\"%s-kind-statute\" name=\"basis\" "
                         "value=\"statute\"><label class=\"inline\" for=\"%s-kind-statute\">%s</label>\n",
                         prefix, prefix, prefix, T (CONSENT), prefix, prefix, T (STATUTE));
    kim_agent_html_rawf (html, "<label for=\"%s-consent\">%s</label>\n<input type=\"text\" "
                         "id=\"%s-consent\" name=\"consent_id\" maxlength=\"64\">\n"
                         "<label for=\"%s-citation\">%s</label>\n<input type=\"text\" "
                         "id=\"%s-citation\" name=\"citation\" maxlength=\"128\">\n</fieldset>\n",
                         prefix, T (CONSENT_ID), prefix, prefix, T (CITATION), prefix);
}

static void
s_answer_forms (s_req_t *req, json_t *referral)
{
    kim_agent_html_t *html = &req->html;
    const char *id = s_str (referral, "referral_id");
    const char *role = s_str (referral, "role");
    const char *state = s_str (referral, "state");
    kim_agent_html_rawf (html, "<h2 id=\"answer\">%s</h2>\n", T (ANSWER));
    bool any = false;
    for (int i = 0; i < S_ANSWERS; i++)
        any |= s_allowed ((s_answer_t) i, role, state);
    if (!any) {
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (NO_ANSWER));
        return;
    }
    if (req->session.role != KIM_AGENT_ROLE_STAFF) {
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_HINT));
        return;
    }
    kim_agent_html_raw (html, "<div class=\"answers\">\n");
    if (s_allowed (S_ACCEPT, role, state)) {
        s_form_begin (req, id, S_ACCEPT, KIM_WEB_T_ACCEPT);
        s_form_end (req, S_ACCEPT, T (ACCEPT));
    }
    if (s_allowed (S_DECLINE, role, state)) {
        static const char *const codes [] = { "capacity", "not_eligible", "person_declined", "other" };
        static const kim_agent_text_t texts [] = { KIM_WEB_T_R_CAPACITY, KIM_WEB_T_R_NOT_ELIGIBLE,
                                                   KIM_WEB_T_R_PERSON, KIM_WEB_T_R_OTHER };
        s_form_begin (req, id, S_DECLINE, KIM_WEB_T_DECLINE);
        s_select (req, "decline-reason", "code", KIM_WEB_T_REASON, codes, texts, 4);
        s_form_end (req, S_DECLINE, T (DECLINE));
    }
    if (s_allowed (S_NOT_COMPETENT, role, state)) {
        s_form_begin (req, id, S_NOT_COMPETENT, KIM_WEB_T_NOT_COMPETENT);
        kim_agent_html_rawf (html, "<label for=\"nc-org\">%s</label>\n<input type=\"text\" "
                             "id=\"nc-org\" name=\"org\" maxlength=\"64\" spellcheck=\"false\">\n",
                             T (BETTER_ORG));
        s_form_end (req, S_NOT_COMPETENT, T (SEND));
    }
    if (s_allowed (S_STATUS, role, state)) {
        static const char *const codes [] = { "in_progress", "appointment_set", "no_show" };
        static const kim_agent_text_t texts [] = { KIM_WEB_T_S_IN_PROGRESS, KIM_WEB_T_S_APPOINTMENT,
                                                   KIM_WEB_T_S_NO_SHOW };
        s_form_begin (req, id, S_STATUS, KIM_WEB_T_STATUS);
        s_select (req, "status-code", "code", KIM_WEB_T_STATE, codes, texts, 3);
        s_form_end (req, S_STATUS, T (SEND));
    }
    if (s_allowed (S_OUTCOME, role, state)) {
        s_form_begin (req, id, S_OUTCOME, KIM_WEB_T_OUTCOME);
        kim_agent_html_rawf (html, "<label for=\"outcome-code\">%s</label>\n<input type=\"text\" "
                             "id=\"outcome-code\" name=\"code\" value=\"completed\" required "
                             "maxlength=\"32\" pattern=\"[a-z0-9_]{1,32}\" spellcheck=\"false\">\n",
                             T (OUTCOME_CODE));
        s_form_end (req, S_OUTCOME, T (SEND));
    }
    if (s_allowed (S_FORWARD, role, state)) {
        s_form_begin (req, id, S_FORWARD, KIM_WEB_T_FORWARD);
        kim_agent_html_rawf (html, "<label for=\"fw-org\">%s</label>\n<input type=\"text\" "
                             "id=\"fw-org\" name=\"org\" required maxlength=\"64\" spellcheck=\"false\">\n"
                             "<label for=\"fw-purpose\">%s</label>\n<input type=\"text\" "
                             "id=\"fw-purpose\" name=\"purpose\" required maxlength=\"32\" value=\"",
                             T (FORWARD_TO), T (PURPOSE_CODE));
        kim_agent_html_text (html, s_str (referral, "purpose"));
        kim_agent_html_raw (html, "\">\n");
        s_basis_picker (req, "fw");
        s_form_end (req, S_FORWARD, T (FORWARD));
    }
    if (s_allowed (S_WITHDRAW, role, state)) {
        s_form_begin (req, id, S_WITHDRAW, KIM_WEB_T_WITHDRAW);
        s_form_end (req, S_WITHDRAW, T (WITHDRAW));
    }
    kim_agent_html_raw (html, "</div>\n");
}

static void
s_notice_sent (s_req_t *req, const char *msg_id)
{
    json_t *record = kim_agent_store_outbox_get (req->self->store, msg_id);
    if (!record)
        return;
    const char *status = s_str (record, "status");
    kim_agent_html_t *html = &req->html;
    if (streq (status, "refused")) {
        kim_agent_html_raw (html, "<div class=\"error\" role=\"alert\"><p>");
        kim_agent_html_text (html, T (REFUSED_NOTICE));
        kim_agent_html_raw (html, " ");
        kim_agent_html_text (html, s_str (record, "error"));
        kim_agent_html_raw (html, ": ");
        kim_agent_html_text (html, s_str (record, "text"));
    }
    else {
        kim_agent_html_raw (html, "<div class=\"notice\" role=\"status\"><p>");
        kim_agent_html_text (html, T (QUEUED_NOTICE));
    }
    kim_agent_html_raw (html, " (msg_id ");
    kim_agent_html_text (html, msg_id);
    kim_agent_html_raw (html, ")</p></div>\n");
    json_decref (record);
}

static void
s_fact (s_req_t *req, const char *term, const char *value)
{
    kim_agent_html_raw (&req->html, "<dt>");
    kim_agent_html_text (&req->html, term);
    kim_agent_html_raw (&req->html, "</dt><dd>");
    kim_agent_html_text (&req->html, value && *value? value: "–");
    kim_agent_html_raw (&req->html, "</dd>\n");
}

static enum MHD_Result
s_referral_page (s_req_t *req, const char *id)
{
    kim_agent_web_t *self = req->self;
    json_t *referral = kim_agent_store_referral (self->store, id);
    if (!referral)
        return s_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    json_t *timeline = kim_agent_store_timeline (self->store, id);
    kim_agent_html_t *html = &req->html;
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s %s", T (REFERRAL), id);
    bool received = streq (s_str (referral, "role"), "recipient");
    s_begin (req, title, NULL);
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        s_notice_sent (req, sent);

    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    s_fact (req, received? T (FROM): T (TO), s_str (referral, "counterpart"));
    s_fact (req, T (PURPOSE), s_str (referral, "purpose"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (CASE));
    s_link (req, "case", s_str (referral, "case_id"));
    kim_agent_html_raw (html, "</dd>\n");
    s_fact (req, T (SUBJECT), s_str (referral, "subject"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd class=\"state\">", T (STATE));
    s_state_text (req, s_str (referral, "state"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (DEADLINE));
    s_time_text (req, s_int (referral, "deadline"));
    if (json_is_true (json_object_get (referral, "overdue"))) {
        kim_agent_html_raw (html, " <span class=\"mark\">");
        kim_agent_html_text (html, T (OVERDUE));
        kim_agent_html_raw (html, "</span>");
    }
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (RECEIVED));
    s_time_text (req, s_int (referral, "created_at"));
    kim_agent_html_raw (html, "</dd>\n</dl>\n");

    //  The content: the opening delivery's payload, opened by the agent
    if (received) {
        kim_agent_html_rawf (html, "<h2>%s</h2>\n", T (CONTENT));
        json_t *opening = NULL;
        for (size_t i = 0; i < json_array_size (timeline) && !opening; i++) {
            json_t *item = json_array_get (timeline, i);
            const char *type = s_str (item, "type");
            if (streq (s_str (item, "direction"), "in")
            &&  (streq (type, "REFERRAL") || (streq (type, "FORWARD") && streq (s_str (item, "msg_id"), id))))
                opening = item;
        }
        json_t *delivery = opening
            ? kim_agent_store_inbox_get (self->store, (uint64_t) s_int (opening, "seq")): NULL;
        const char *payload = json_string_value (json_object_get (delivery, "payload"));
        if (delivery && json_is_true (json_object_get (delivery, "sealed_error")))
            kim_agent_html_rawf (html, "<p class=\"error\">%s</p>\n", T (SEALED_ERROR));
        else
        if (payload && *payload) {
            kim_agent_html_raw (html, "<pre class=\"payload\">");
            kim_agent_html_text (html, payload);
            kim_agent_html_raw (html, "</pre>\n");
        }
        else
            kim_agent_html_rawf (html, "<p>%s</p>\n", T (NO_CONTENT));
        if (delivery)
            s_journal (self, req->session.user, "open", id, s_str (delivery, "msg_id"), NULL);
        json_decref (delivery);
    }

    kim_agent_html_rawf (html, "<h2>%s</h2>\n<table>\n<thead><tr><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                         "</tr></thead>\n<tbody>\n", T (TIMELINE), T (WHEN), T (DIRECTION),
                         T (MESSAGE), T (DETAIL));
    for (size_t i = 0; i < json_array_size (timeline); i++) {
        json_t *item = json_array_get (timeline, i);
        bool in = streq (s_str (item, "direction"), "in");
        kim_agent_html_raw (html, "<tr><td>");
        s_time_text (req, s_int (item, "at"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, in? T (INCOMING): T (OUTGOING));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, s_str (item, "type"));
        kim_agent_html_raw (html, "</td><td>");
        const char *parts [3] = { s_str (item, "code"), s_str (item, "org"), s_str (item, "note") };
        bool first = true;
        for (int p = 0; p < 3; p++)
            if (*parts [p]) {
                if (!first)
                    kim_agent_html_raw (html, " · ");
                kim_agent_html_text (html, parts [p]);
                first = false;
            }
        if (!in) {
            const char *status = s_str (item, "status");
            kim_agent_html_raw (html, first? "": " · ");
            kim_agent_html_raw (html, "<span class=\"muted\">");
            kim_agent_html_text (html, streq (status, "receipted")? T (OUT_RECEIPTED)
                                     : streq (status, "refused")? T (OUT_REFUSED): T (OUT_QUEUED));
            if (streq (status, "refused")) {
                kim_agent_html_raw (html, ": ");
                kim_agent_html_text (html, s_str (item, "error"));
                kim_agent_html_raw (html, " ");
                kim_agent_html_text (html, s_str (item, "text"));
            }
            kim_agent_html_raw (html, "</span>");
        }
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
    s_answer_forms (req, referral);
    kim_agent_html_rawf (html, "<p><a href=\"%s\">%s</a></p>\n", received? "/ui/inbox": "/ui/sent",
                         T (BACK));
    s_end (req);
    json_decref (timeline);
    json_decref (referral);
    return s_send_page (req, MHD_HTTP_OK);
}


//  --------------------------------------------------------------------------
//  Sending: answers and new referrals

//  Adds the form's legal basis to `message`. False when it is incomplete.
static bool
s_legal_basis (s_req_t *req, json_t *message)
{
    const char *kind = s_field (req, "basis");
    if (strncmp (kind, "consent:", 8) == 0 && kind [8])
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "consent", "consent_id", kind + 8));
    else
    if (streq (kind, "consent") && *s_field (req, "consent_id"))
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "consent",
                                        "consent_id", s_field (req, "consent_id")));
    else
    if (strncmp (kind, "statute:", 8) == 0 && kind [8])
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "statute", "citation", kind + 8));
    else
    if (streq (kind, "statute") && *s_field (req, "citation"))
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "statute",
                                        "citation", s_field (req, "citation")));
    else
        return false;
    return true;
}

static void
s_optional (s_req_t *req, json_t *message, const char *field, const char *key)
{
    const char *value = s_field (req, field);
    if (*value)
        json_object_set_new (message, key, json_string (value));
}

//  Puts a message from a form into the outbox. Returns 0 with `msg_id`,
//  or an error text in `why`.
static int
s_send (s_req_t *req, json_t *message, const char *action, const char *referral_id,
        char *why, size_t why_size)
{
    kim_agent_web_t *self = req->self;
    kim_msg_t msg;
    uint8_t *payload = NULL;
    size_t size = 0;
    char path [KIM_PATH_MAX + 1];
    int rc = kim_json_message (message, &msg, &payload, &size, why, why_size, path,
                                     sizeof path);
    json_t *record = NULL;
    if (rc == 0)
        rc = kim_agent_accept_message (self->config, self->store, &msg, payload, size, NULL,
                                       &record, why, why_size, path, sizeof path);
    free (payload);
    json_decref (record);
    if (rc == -KIM_E_REFERRAL_EXISTS)
        snprintf (why, why_size, "msg_id %s was used for a different message", msg.msg_id);
    if (rc < 0) {
        s_journal (self, req->session.user, "refused", referral_id, msg.msg_id, NULL);
        return rc;
    }
    if (rc == 0)
        kim_agent_wake (self->shared);
    s_journal (self, req->session.user, action, referral_id, msg.msg_id, NULL);
    return 0;
}

static enum MHD_Result
s_post_answer (s_req_t *req, const char *id)
{
    kim_agent_web_t *self = req->self;
    const char *answer = s_field (req, "answer");
    int which = -1;
    for (int i = 0; i < S_ANSWERS; i++)
        if (streq (answer, s_answer_names [i]))
            which = i;
    json_t *referral = kim_agent_store_referral (self->store, id);
    if (!referral)
        return s_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    if (which < 0 || !s_allowed ((s_answer_t) which, s_str (referral, "role"),
                                 s_str (referral, "state"))) {
        json_decref (referral);
        s_journal (self, req->session.user, "answer_not_allowed", id, NULL, NULL);
        return s_message_page (req, MHD_HTTP_CONFLICT, T (ERROR), T (NOT_ALLOWED), NULL);
    }
    json_t *message = json_pack ("{s:s, s:s, s:s}",
                                 "type", kim_type_name (s_answer_types [which]),
                                 "recipient", s_str (referral, "counterpart"), "referral_id", id);
    json_decref (referral);
    if (!message) {
        req->html.failed = true;
        return s_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    s_optional (req, message, "msg_id", "msg_id");
    s_optional (req, message, "code", "code");
    s_optional (req, message, "org", "org");
    s_optional (req, message, "note", "note");
    bool complete = true;
    if (which == S_FORWARD) {
        s_optional (req, message, "purpose", "purpose");
        complete = s_legal_basis (req, message);
    }
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = complete? s_send (req, message, s_answer_names [which], id, why, sizeof why)
                     : -KIM_E_MISSING_FIELD;
    if (!complete)
        snprintf (why, sizeof why, "%s", T (LEGAL_BASIS));
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return s_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX * 2 + 64];
    snprintf (location, sizeof location, "/ui/referral/%s?sent=%s", id, msg_id);
    return s_redirect (req, location);
}

static bool
s_contains (json_t *array, const char *value)
{
    for (size_t i = 0; i < json_array_size (array); i++) {
        const char *item = json_string_value (json_array_get (array, i));
        if (item && streq (item, value))
            return true;
    }
    return false;
}

//  An organisation's agency type: the part of its id before the first dot.
static void
s_org_type (const char *org, char *type, size_t size)
{
    size_t length = strcspn (org, ".");
    snprintf (type, size, "%.*s", (int) length, org);
}

#define S_OFFERS_MAX    64

typedef struct {
    s_req_t *req;
    size_t offered;                     //  radio buttons drawn so far
    size_t statutes;                    //  citations among them
    const char *seen [S_OFFERS_MAX];    //  the citations drawn (the policy owns them)
} s_offer_t;

//  One statute the policy copy offers, as a radio button (once each, and
//  a bounded number: the field below takes any other).
static void
s_offer_statute (void *arg, const char *rule, const char *citation)
{
    s_offer_t *offer = (s_offer_t *) arg;
    s_req_t *req = offer->req;
    kim_agent_html_t *html = &req->html;
    if (offer->statutes >= S_OFFERS_MAX)
        return;
    for (size_t i = 0; i < offer->statutes; i++)
        if (streq (offer->seen [i], citation))
            return;
    offer->seen [offer->statutes] = citation;
    kim_agent_html_rawf (html, "<div><input type=\"radio\" id=\"basis-%zu\" name=\"basis\" "
                         "value=\"statute:", offer->offered);
    kim_agent_html_text (html, citation);
    kim_agent_html_rawf (html, "\"%s aria-describedby=\"basis-hint\"><label class=\"inline\" "
                         "for=\"basis-%zu\">%s: ", offer->offered? "": " checked", offer->offered,
                         T (STATUTE));
    kim_agent_html_text (html, citation);
    kim_agent_html_rawf (html, " <span class=\"muted\">(%s ", T (RULE));
    kim_agent_html_text (html, rule);
    kim_agent_html_raw (html, ")</span></label></div>\n");
    offer->offered++;
    offer->statutes++;
}

//  The legal-basis picker of a new referral: the office's own consents
//  that cover this recipient and purpose, the statutes the policy copy
//  (web/policy) names for this pair and purpose, or a citation typed in.
static void
s_basis_known (s_req_t *req, const char *recipient, const char *purpose)
{
    kim_agent_html_t *html = &req->html;
    kim_policy_t *policy = req->self->policy;
    kim_agent_html_rawf (html, "<fieldset>\n<legend>%s</legend>\n<p class=\"hint\" "
                         "id=\"basis-hint\">%s</p>\n", T (LEGAL_BASIS),
                         policy? T (POLICY_HINT): T (KNOWN_HINT));
    json_t *consents = kim_agent_store_consents (req->self->store, "active");
    uint64_t now = (uint64_t) zclock_time ();
    size_t offered = 0;
    for (size_t i = 0; i < json_array_size (consents); i++) {
        json_t *consent = json_array_get (consents, i);
        if (!s_contains (json_object_get (consent, "recipients"), recipient)
        ||  !s_contains (json_object_get (consent, "purposes"), purpose)
        ||  (uint64_t) s_int (consent, "valid_until") <= now)
            continue;
        kim_agent_html_rawf (html, "<div><input type=\"radio\" id=\"basis-%zu\" name=\"basis\" "
                             "value=\"consent:", offered);
        kim_agent_html_text (html, s_str (consent, "consent"));
        kim_agent_html_rawf (html, "\"%s aria-describedby=\"basis-hint\"><label class=\"inline\" "
                             "for=\"basis-%zu\">%s ", offered? "": " checked", offered, T (CONSENT));
        kim_agent_html_text (html, s_str (consent, "consent"));
        kim_agent_html_raw (html, " (");
        kim_agent_html_text (html, T (CASE));
        kim_agent_html_raw (html, " ");
        kim_agent_html_text (html, s_str (consent, "case_id"));
        kim_agent_html_raw (html, ", ");
        kim_agent_html_text (html, s_str (consent, "subject"));
        kim_agent_html_raw (html, ", ");
        kim_agent_html_text (html, T (VALID_UNTIL));
        kim_agent_html_raw (html, " ");
        s_time_text (req, s_int (consent, "valid_until"));
        kim_agent_html_raw (html, ")</label></div>\n");
        offered++;
    }
    json_decref (consents);
    if (!offered)
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (NO_CONSENT));
    if (policy) {
        char own [KIM_CODE_MAX + 1], theirs [KIM_CODE_MAX + 1];
        s_org_type (req->self->config->org, own, sizeof own);
        s_org_type (recipient, theirs, sizeof theirs);
        s_offer_t offer;
        memset (&offer, 0, sizeof offer);
        offer.req = req;
        offer.offered = offered;
        kim_policy_statutes (policy, own, theirs, purpose, s_offer_statute, &offer);
        offered = offer.offered;
    }
    kim_agent_html_rawf (html, "<div><input type=\"radio\" id=\"basis-statute\" name=\"basis\" "
                         "value=\"statute\"%s><label class=\"inline\" for=\"basis-statute\">%s"
                         "</label></div>\n<label for=\"new-citation\">%s</label>\n<input "
                         "type=\"text\" id=\"new-citation\" name=\"citation\" maxlength=\"128\">\n"
                         "</fieldset>\n", offered? "": " checked",
                         policy? T (OTHER_CITATION): T (STATUTE), T (CITATION));
}

//  A new referral in two steps, without script: recipient and purpose
//  first (a GET form), then the rest with the legal bases that can apply.
static enum MHD_Result
s_new_page (s_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    const char *recipient = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                         "recipient");
    const char *purpose = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                       "purpose");
    bool chosen = recipient && purpose && kim_org_valid (recipient) && kim_code_valid (purpose);
    s_begin (req, T (NEW), "/ui/new");
    if (!chosen) {
        if (recipient || purpose)
            kim_agent_html_rawf (html, "<div class=\"error\" role=\"alert\"><p>%s, %s</p></div>\n",
                                 T (RECIPIENT), T (PURPOSE_CODE));
        kim_agent_html_rawf (html, "<p>%s</p>\n<form method=\"get\" action=\"/ui/new\">\n"
                             "<label for=\"new-recipient\">%s</label>\n<input type=\"text\" "
                             "id=\"new-recipient\" name=\"recipient\" maxlength=\"64\" required "
                             "spellcheck=\"false\">\n<label for=\"new-purpose\">%s</label>\n"
                             "<input type=\"text\" id=\"new-purpose\" name=\"purpose\" "
                             "maxlength=\"32\" required spellcheck=\"false\">\n"
                             "<button type=\"submit\">%s</button>\n</form>\n",
                             T (STEP1_HINT), T (RECIPIENT), T (PURPOSE_CODE), T (NEXT));
        s_end (req);
        return s_send_page (req, MHD_HTTP_OK);
    }
    char token [KIM_AGENT_TOKEN_HEX + 1], referral_id [32];
    kim_agent_users_token (token);
    snprintf (referral_id, sizeof referral_id, "R-%.12s", token);
    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    s_fact (req, T (TO), recipient);
    s_fact (req, T (PURPOSE), purpose);
    kim_agent_html_rawf (html, "</dl>\n<p><a href=\"/ui/new\">%s</a></p>\n"
                         "<form method=\"post\" action=\"/ui/new\">\n", T (CHANGE));
    s_hidden (req, "csrf", req->session.csrf);
    s_hidden (req, "recipient", recipient);
    s_hidden (req, "purpose", purpose);
    s_form_msg_id (req);
    static const struct { const char *name; kim_agent_text_t label; } fields [] = {
        { "referral_id", KIM_WEB_T_REFERRAL_ID },
        { "case_id", KIM_WEB_T_CASE },
        { "subject", KIM_WEB_T_SUBJECT },
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields [0]; i++) {
        kim_agent_html_rawf (html, "<label for=\"new-%s\">%s</label>\n<input type=\"text\" "
                             "id=\"new-%s\" name=\"%s\" maxlength=\"64\" required "
                             "spellcheck=\"false\"", fields [i].name,
                             kim_agent_web_text (fields [i].label, req->lang), fields [i].name,
                             fields [i].name);
        if (streq (fields [i].name, "referral_id")) {
            kim_agent_html_raw (html, " value=\"");
            kim_agent_html_text (html, referral_id);
            kim_agent_html_raw (html, "\" aria-describedby=\"id-hint\">\n");
            kim_agent_html_rawf (html, "<p class=\"hint\" id=\"id-hint\">%s</p>\n", T (ID_HINT));
        }
        else
            kim_agent_html_raw (html, ">\n");
    }
    kim_agent_html_rawf (html, "<label for=\"new-deadline\">%s</label>\n<input type=\"date\" "
                         "id=\"new-deadline\" name=\"deadline\">\n", T (DEADLINE_DATE));
    s_basis_known (req, recipient, purpose);
    kim_agent_html_rawf (html, "<label for=\"new-note\">%s</label>\n<input type=\"text\" "
                         "id=\"new-note\" name=\"note\" maxlength=\"280\">\n"
                         "<label for=\"new-payload\">%s</label>\n<textarea id=\"new-payload\" "
                         "name=\"payload\"></textarea>\n<button type=\"submit\">%s</button>\n"
                         "</form>\n", T (NOTE), T (PAYLOAD), T (SEND));
    s_end (req);
    return s_send_page (req, MHD_HTTP_OK);
}

static enum MHD_Result
s_post_new (s_req_t *req)
{
    json_t *message = json_pack ("{s:s}", "type", "REFERRAL");
    if (!message) {
        req->html.failed = true;
        return s_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    static const char *const keys [] = { "msg_id", "recipient", "referral_id", "case_id",
                                         "subject", "purpose", "note", "payload" };
    for (size_t i = 0; i < sizeof keys / sizeof keys [0]; i++)
        s_optional (req, message, keys [i], keys [i]);
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = 0;
    const char *deadline = s_field (req, "deadline");
    if (*deadline) {
        //  A date: the end of that day, local time
        struct tm tm;
        memset (&tm, 0, sizeof tm);
        char *end = strptime (deadline, "%Y-%m-%d", &tm);
        if (!end || *end) {
            snprintf (why, sizeof why, "%s: %s", T (DEADLINE_DATE), deadline);
            rc = -KIM_E_BAD_VALUE;
        }
        else {
            tm.tm_hour = 23;
            tm.tm_min = 59;
            tm.tm_isdst = -1;
            time_t at = mktime (&tm);
            json_object_set_new (message, "deadline", json_integer ((json_int_t) at * 1000));
        }
    }
    if (rc == 0 && !s_legal_basis (req, message)) {
        snprintf (why, sizeof why, "%s", T (LEGAL_BASIS));
        rc = -KIM_E_MISSING_FIELD;
    }
    const char *referral_id = s_field (req, "referral_id");
    if (rc == 0)
        rc = s_send (req, message, "referral", referral_id, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return s_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX + 64];
    snprintf (location, sizeof location, "/ui/sent?sent=%s", msg_id);
    return s_redirect (req, location);
}


//  --------------------------------------------------------------------------
//  Cases and consents

//  A link to one record's page: <a href="/ui/PREFIX/ID">ID</a>
static void
s_link (s_req_t *req, const char *prefix, const char *id)
{
    if (!id || !*id) {
        kim_agent_html_raw (&req->html, "–");
        return;
    }
    kim_agent_html_rawf (&req->html, "<a href=\"/ui/%s/", prefix);
    kim_agent_html_text (&req->html, id);
    kim_agent_html_raw (&req->html, "\">");
    kim_agent_html_text (&req->html, id);
    kim_agent_html_raw (&req->html, "</a>");
}

//  A JSON array of strings as "a, b, c".
static void
s_list_text (s_req_t *req, json_t *array)
{
    size_t count = json_array_size (array);
    if (!count)
        kim_agent_html_raw (&req->html, "–");
    for (size_t i = 0; i < count; i++) {
        if (i)
            kim_agent_html_raw (&req->html, ", ");
        kim_agent_html_text (&req->html, json_string_value (json_array_get (array, i)));
    }
}

static enum MHD_Result
s_cases_page (s_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    json_t *cases = kim_agent_store_cases (req->self->store, NULL);
    s_begin (req, T (CASES), "/ui/cases");
    if (json_array_size (cases) == 0)
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (NONE));
    else {
        kim_agent_html_rawf (html, "<table>\n<thead><tr><th scope=\"col\">%s</th><th scope=\"col\">"
                             "%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                             "<th scope=\"col\">%s</th></tr></thead>\n<tbody>\n", T (CASE),
                             T (STATE), T (LEAD), T (EVENTS), T (UPDATED));
        for (size_t i = 0; i < json_array_size (cases); i++) {
            json_t *item = json_array_get (cases, i);
            kim_agent_html_raw (html, "<tr><td>");
            s_link (req, "case", s_str (item, "case_id"));
            kim_agent_html_raw (html, "</td><td>");
            s_state_text (req, s_str (item, "state"));
            kim_agent_html_raw (html, "</td><td>");
            kim_agent_html_text (html, *s_str (item, "lead")? s_str (item, "lead"): "–");
            kim_agent_html_rawf (html, "</td><td>%lld</td><td>", (long long) s_int (item, "events"));
            s_time_text (req, s_int (item, "updated_at"));
            kim_agent_html_raw (html, "</td></tr>\n");
        }
        kim_agent_html_raw (html, "</tbody>\n</table>\n");
    }
    json_decref (cases);
    s_end (req);
    return s_send_page (req, MHD_HTTP_OK);
}

//  The consents this office recorded, optionally only those of `case_id`.
static void
s_consent_table (s_req_t *req, const char *case_id)
{
    kim_agent_html_t *html = &req->html;
    json_t *consents = kim_agent_store_consents (req->self->store, NULL);
    size_t shown = 0;
    for (size_t i = 0; i < json_array_size (consents); i++) {
        json_t *item = json_array_get (consents, i);
        if (case_id && !streq (s_str (item, "case_id"), case_id))
            continue;
        if (!shown++)
            kim_agent_html_rawf (html, "<table>\n<thead><tr><th scope=\"col\">%s</th>"
                                 "<th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                                 "<th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                                 "<th scope=\"col\">%s</th><th scope=\"col\">%s</th></tr></thead>\n"
                                 "<tbody>\n", T (CONSENT_ID), T (CASE), T (SUBJECT), T (TO),
                                 T (PURPOSE), T (VALID_UNTIL), T (STATE));
        kim_agent_html_raw (html, "<tr><td>");
        s_link (req, "consent", s_str (item, "consent"));
        kim_agent_html_raw (html, "</td><td>");
        s_link (req, "case", s_str (item, "case_id"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, s_str (item, "subject"));
        kim_agent_html_raw (html, "</td><td>");
        s_list_text (req, json_object_get (item, "recipients"));
        kim_agent_html_raw (html, "</td><td>");
        s_list_text (req, json_object_get (item, "purposes"));
        kim_agent_html_raw (html, "</td><td>");
        s_time_text (req, s_int (item, "valid_until"));
        kim_agent_html_raw (html, "</td><td class=\"state\">");
        s_state_text (req, s_str (item, "state"));
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    if (shown)
        kim_agent_html_raw (html, "</tbody>\n</table>\n");
    else
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (NONE));
    json_decref (consents);
}

static enum MHD_Result
s_case_page (s_req_t *req, const char *id)
{
    kim_agent_html_t *html = &req->html;
    json_t *record = kim_agent_store_case (req->self->store, id);
    if (!record)
        return s_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s %s", T (CASE), id);
    s_begin (req, title, NULL);
    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    kim_agent_html_rawf (html, "<dt>%s</dt><dd class=\"state\">", T (STATE));
    s_state_text (req, s_str (record, "state"));
    kim_agent_html_raw (html, "</dd>\n");
    s_fact (req, T (LEAD), s_str (record, "lead"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (STARTED));
    s_time_text (req, s_int (record, "created_at"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (REFERRALS));
    json_t *referrals = json_object_get (record, "referrals");
    if (!json_array_size (referrals))
        kim_agent_html_raw (html, "–");
    for (size_t i = 0; i < json_array_size (referrals); i++) {
        if (i)
            kim_agent_html_raw (html, ", ");
        s_link (req, "referral", json_string_value (json_array_get (referrals, i)));
    }
    kim_agent_html_raw (html, "</dd>\n</dl>\n");

    json_t *timeline = json_object_get (record, "timeline");
    kim_agent_html_rawf (html, "<h2>%s</h2>\n<table>\n<thead><tr><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th></tr></thead>\n<tbody>\n",
                         T (CASE_TIMELINE), T (WHEN), T (MESSAGE), T (FROM), T (TO), T (REFERRAL),
                         T (DETAIL));
    for (size_t i = 0; i < json_array_size (timeline); i++) {
        json_t *item = json_array_get (timeline, i);
        kim_agent_html_raw (html, "<tr><td>");
        s_time_text (req, s_int (item, "at"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, s_str (item, "type"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, *s_str (item, "from")? s_str (item, "from"): "–");
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, *s_str (item, "to")? s_str (item, "to"): "–");
        kim_agent_html_raw (html, "</td><td>");
        s_link (req, "referral", s_str (item, "referral_id"));
        kim_agent_html_raw (html, "</td><td>");
        const char *parts [3] = { s_str (item, "code"), s_str (item, "org"), s_str (item, "consent") };
        bool first = true;
        for (int p = 0; p < 3; p++)
            if (*parts [p]) {
                if (!first)
                    kim_agent_html_raw (html, " · ");
                if (p == 2)
                    s_link (req, "consent", parts [p]);
                else
                    kim_agent_html_text (html, parts [p]);
                first = false;
            }
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
    kim_agent_html_rawf (html, "<h2>%s</h2>\n", T (CONSENTS));
    s_consent_table (req, id);
    if (req->session.role == KIM_AGENT_ROLE_STAFF) {
        kim_agent_html_raw (html, "<p><a href=\"/ui/consents?case_id=");
        kim_agent_html_text (html, id);
        kim_agent_html_rawf (html, "#record\">%s</a></p>\n", T (CONSENT_NEW));
    }
    kim_agent_html_rawf (html, "<p><a href=\"/ui/cases\">%s</a></p>\n", T (CASES));
    s_end (req);
    json_decref (record);
    return s_send_page (req, MHD_HTTP_OK);
}

static const char *const s_category_codes [] = {
    "art9", "sgb8_s65", "stgb203", "residence_status", "contact"
};
static const kim_agent_text_t s_category_texts [] = {
    KIM_WEB_T_C_ART9, KIM_WEB_T_C_SGB8_S65, KIM_WEB_T_C_STGB203, KIM_WEB_T_C_RESIDENCE,
    KIM_WEB_T_C_CONTACT
};
static const char *const s_giver_codes [] = { "subject", "guardian", "entruster" };
static const kim_agent_text_t s_giver_texts [] = {
    KIM_WEB_T_G_SUBJECT, KIM_WEB_T_G_GUARDIAN, KIM_WEB_T_G_ENTRUSTER
};

//  The consents list with, for staff, the form that records one.
static enum MHD_Result
s_consents_page (s_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    s_begin (req, T (CONSENTS), "/ui/consents");
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        s_notice_sent (req, sent);
    s_consent_table (req, NULL);
    kim_agent_html_rawf (html, "<h2 id=\"record\">%s</h2>\n", T (CONSENT_NEW));
    if (req->session.role != KIM_AGENT_ROLE_STAFF) {
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_CONSENT));
        s_end (req);
        return s_send_page (req, MHD_HTTP_OK);
    }
    const char *case_id = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                       "case_id");
    if (!case_id || !kim_id_valid (case_id))
        case_id = "";
    char token [KIM_AGENT_TOKEN_HEX + 1], consent_id [32];
    kim_agent_users_token (token);
    snprintf (consent_id, sizeof consent_id, "G-%.12s", token);
    kim_agent_html_rawf (html, "<p class=\"hint\" id=\"consent-hint\">%s</p>\n"
                         "<form method=\"post\" action=\"/ui/consents\" "
                         "aria-describedby=\"consent-hint\">\n", T (CONSENT_NEW_HINT));
    s_hidden (req, "csrf", req->session.csrf);
    s_form_msg_id (req);
    static const struct { const char *name; kim_agent_text_t label; } fields [] = {
        { "consent", KIM_WEB_T_CONSENT_ID },
        { "case_id", KIM_WEB_T_CASE },
        { "subject", KIM_WEB_T_SUBJECT },
        { "recipients", KIM_WEB_T_RECIPIENTS },
        { "purposes", KIM_WEB_T_PURPOSES },
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields [0]; i++) {
        const char *value = streq (fields [i].name, "consent")? consent_id
                          : streq (fields [i].name, "case_id")? case_id: "";
        kim_agent_html_rawf (html, "<label for=\"cg-%s\">%s</label>\n<input type=\"text\" "
                             "id=\"cg-%s\" name=\"%s\" maxlength=\"%d\" required "
                             "spellcheck=\"false\" value=\"", fields [i].name,
                             kim_agent_web_text (fields [i].label, req->lang), fields [i].name,
                             fields [i].name, i >= 3? 1024: 64);
        kim_agent_html_text (html, value);
        kim_agent_html_raw (html, "\">\n");
    }
    kim_agent_html_rawf (html, "<fieldset>\n<legend>%s</legend>\n", T (CATEGORIES));
    for (size_t i = 0; i < sizeof s_category_codes / sizeof s_category_codes [0]; i++)
        kim_agent_html_rawf (html, "<div><input type=\"checkbox\" id=\"cg-cat-%s\" "
                             "name=\"category\" value=\"%s\"%s><label class=\"inline\" "
                             "for=\"cg-cat-%s\">%s</label></div>\n", s_category_codes [i],
                             s_category_codes [i], streq (s_category_codes [i], "contact")
                             ? " checked": "", s_category_codes [i],
                             kim_agent_web_text (s_category_texts [i], req->lang));
    kim_agent_html_rawf (html, "<div><input type=\"checkbox\" id=\"cg-explicit\" name=\"explicit\" "
                         "value=\"1\"><label class=\"inline\" for=\"cg-explicit\">%s</label></div>\n"
                         "</fieldset>\n", T (EXPLICIT));
    kim_agent_html_rawf (html, "<label for=\"cg-valid\">%s</label>\n<input type=\"date\" "
                         "id=\"cg-valid\" name=\"valid_until\" required>\n", T (VALID_UNTIL_DATE));
    kim_agent_html_rawf (html, "<fieldset>\n<legend>%s</legend>\n", T (GIVER));
    for (size_t i = 0; i < sizeof s_giver_codes / sizeof s_giver_codes [0]; i++)
        kim_agent_html_rawf (html, "<div><input type=\"radio\" id=\"cg-giver-%s\" name=\"giver\" "
                             "value=\"%s\"%s required><label class=\"inline\" for=\"cg-giver-%s\">"
                             "%s</label></div>\n", s_giver_codes [i], s_giver_codes [i],
                             i? "": " checked", s_giver_codes [i],
                             kim_agent_web_text (s_giver_texts [i], req->lang));
    kim_agent_html_rawf (html, "</fieldset>\n<button type=\"submit\">%s</button>\n</form>\n",
                         T (RECORD));
    s_end (req);
    return s_send_page (req, MHD_HTTP_OK);
}

//  "a, b,c" into a JSON array of trimmed items; NULL when an item is empty.
static json_t *
s_split_list (const char *text)
{
    json_t *array = json_array ();
    while (array && *text) {
        while (*text == ' ')
            text++;
        size_t length = strcspn (text, ",");
        size_t trimmed = length;
        while (trimmed && text [trimmed - 1] == ' ')
            trimmed--;
        if (trimmed == 0 || trimmed > KIM_ORG_MAX) {
            json_decref (array);
            return NULL;
        }
        json_array_append_new (array, json_stringn (text, trimmed));
        text += length;
        if (*text == ',')
            text++;
    }
    if (array && json_array_size (array) == 0) {
        json_decref (array);
        return NULL;
    }
    return array;
}

//  A date "YYYY-MM-DD" as the end of that day, local time, in ms; 0 if bad.
static json_int_t
s_end_of_day (const char *date)
{
    struct tm tm;
    memset (&tm, 0, sizeof tm);
    char *end = strptime (date, "%Y-%m-%d", &tm);
    if (!end || *end)
        return 0;
    tm.tm_hour = 23;
    tm.tm_min = 59;
    tm.tm_isdst = -1;
    time_t at = mktime (&tm);
    return at > 0? (json_int_t) at * 1000: 0;
}

static enum MHD_Result
s_post_consent (s_req_t *req)
{
    json_t *message = json_pack ("{s:s}", "type", "CONSENT_GRANT");
    json_t *categories = json_array ();
    if (!message || !categories) {
        json_decref (message);
        json_decref (categories);
        req->html.failed = true;
        return s_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    static const char *const keys [] = { "msg_id", "consent", "case_id", "subject", "giver" };
    for (size_t i = 0; i < sizeof keys / sizeof keys [0]; i++)
        s_optional (req, message, keys [i], keys [i]);
    for (size_t i = 0; i < req->field_count; i++)
        if (streq (req->fields [i].name, "category"))
            json_array_append_new (categories, json_string (req->fields [i].value));
    json_object_set_new (message, "categories", categories);
    if (streq (s_field (req, "explicit"), "1"))
        json_object_set_new (message, "explicit", json_true ());
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = 0;
    json_t *recipients = s_split_list (s_field (req, "recipients"));
    json_t *purposes = s_split_list (s_field (req, "purposes"));
    json_int_t valid_until = s_end_of_day (s_field (req, "valid_until"));
    if (!recipients || !purposes || !valid_until) {
        snprintf (why, sizeof why, "%s", !recipients? T (RECIPIENTS): !purposes? T (PURPOSES)
                                                                   : T (VALID_UNTIL_DATE));
        rc = -KIM_E_BAD_VALUE;
        json_decref (recipients);
        json_decref (purposes);
    }
    else {
        json_object_set_new (message, "recipients", recipients);
        json_object_set_new (message, "purposes", purposes);
        json_object_set_new (message, "valid_until", json_integer (valid_until));
    }
    if (rc == 0)
        rc = s_send (req, message, "consent_grant", NULL, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1], consent [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    kim_str_copy (consent, sizeof consent, json_string_value (json_object_get (message, "consent")));
    json_decref (message);
    if (rc)
        return s_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX * 2 + 64];
    snprintf (location, sizeof location, "/ui/consent/%s?sent=%s", consent, msg_id);
    return s_redirect (req, location);
}

static bool
s_revocable (const char *state)
{
    return streq (state, "active") || streq (state, "pending") || streq (state, "expired");
}

static enum MHD_Result
s_consent_page (s_req_t *req, const char *id)
{
    kim_agent_html_t *html = &req->html;
    json_t *record = kim_agent_store_consent (req->self->store, id);
    if (!record)
        return s_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s %s", T (CONSENT), id);
    s_begin (req, title, NULL);
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        s_notice_sent (req, sent);
    const char *state = s_str (record, "state");
    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    kim_agent_html_rawf (html, "<dt>%s</dt><dd class=\"state\">", T (STATE));
    s_state_text (req, state);
    if (*s_str (record, "error")) {
        kim_agent_html_raw (html, ": ");
        kim_agent_html_text (html, s_str (record, "error"));
        kim_agent_html_raw (html, " ");
        kim_agent_html_text (html, s_str (record, "text"));
    }
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (CASE));
    s_link (req, "case", s_str (record, "case_id"));
    kim_agent_html_raw (html, "</dd>\n");
    s_fact (req, T (SUBJECT), s_str (record, "subject"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (TO));
    s_list_text (req, json_object_get (record, "recipients"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (PURPOSE));
    s_list_text (req, json_object_get (record, "purposes"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (CATEGORIES));
    s_list_text (req, json_object_get (record, "categories"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (VALID_UNTIL_DATE));
    s_time_text (req, s_int (record, "valid_until"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (RECORDED));
    s_time_text (req, s_int (record, "recorded_at"));
    kim_agent_html_raw (html, "</dd>\n</dl>\n");

    kim_agent_html_rawf (html, "<h2 id=\"revoke\">%s</h2>\n", T (REVOKE));
    if (!s_revocable (state))
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (NO_REVOKE));
    else
    if (req->session.role != KIM_AGENT_ROLE_STAFF)
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_CONSENT));
    else {
        kim_agent_html_raw (html, "<form method=\"post\" action=\"/ui/consent/");
        kim_agent_html_text (html, id);
        kim_agent_html_rawf (html, "/revoke\">\n<fieldset>\n<legend>%s</legend>\n"
                             "<p class=\"hint\" id=\"revoke-hint\">%s</p>\n", T (REVOKE),
                             T (REVOKE_HINT));
        s_hidden (req, "csrf", req->session.csrf);
        s_form_msg_id (req);
        kim_agent_html_rawf (html, "<div><input type=\"checkbox\" id=\"revoke-confirm\" "
                             "name=\"confirm\" value=\"1\" required aria-describedby=\"revoke-hint\">"
                             "<label class=\"inline\" for=\"revoke-confirm\">%s</label></div>\n"
                             "<button type=\"submit\">%s</button>\n</fieldset>\n</form>\n",
                             T (REVOKE_CONFIRM), T (REVOKE));
    }
    kim_agent_html_rawf (html, "<p><a href=\"/ui/consents\">%s</a></p>\n", T (CONSENTS));
    s_end (req);
    json_decref (record);
    return s_send_page (req, MHD_HTTP_OK);
}

static enum MHD_Result
s_post_revoke (s_req_t *req, const char *id)
{
    json_t *record = kim_agent_store_consent (req->self->store, id);
    if (!record)
        return s_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    bool revocable = s_revocable (s_str (record, "state"));
    json_t *message = json_pack ("{s:s, s:s}", "type", "CONSENT_REVOKE", "consent", id);
    if (message && *s_str (record, "case_id"))
        json_object_set_new (message, "case_id", json_string (s_str (record, "case_id")));
    json_decref (record);
    if (!message) {
        req->html.failed = true;
        return s_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    s_optional (req, message, "msg_id", "msg_id");
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = 0;
    if (!streq (s_field (req, "confirm"), "1")) {
        snprintf (why, sizeof why, "%s", T (CONFIRM_MISSING));
        rc = -KIM_E_MISSING_FIELD;
    }
    else
    if (!revocable) {
        //  A resubmitted form of a revocation already sent is that same message
        json_t *earlier = kim_agent_store_outbox_get (req->self->store, s_field (req, "msg_id"));
        json_decref (earlier);
        if (!earlier) {
            s_journal (req->self, req->session.user, "revoke_not_allowed", NULL, NULL, NULL);
            json_decref (message);
            return s_message_page (req, MHD_HTTP_CONFLICT, T (ERROR), T (NO_REVOKE), NULL);
        }
    }
    if (rc == 0)
        rc = s_send (req, message, "consent_revoke", NULL, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return s_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX * 2 + 64];
    snprintf (location, sizeof location, "/ui/consent/%s?sent=%s", id, msg_id);
    return s_redirect (req, location);
}

//  "/ui/PREFIX/ID[/rest]": copies a valid ID and returns the rest ("" or
//  "/..."), or NULL when the url is not of this form.
static const char *
s_path_id (const char *url, const char *prefix, char *id)
{
    size_t prefix_length = strlen (prefix);
    if (strncmp (url, prefix, prefix_length) != 0)
        return NULL;
    const char *start = url + prefix_length;
    const char *slash = strchr (start, '/');
    size_t length = slash? (size_t) (slash - start): strlen (start);
    if (length == 0 || length > KIM_ID_MAX)
        return NULL;
    memcpy (id, start, length);
    id [length] = 0;
    return kim_id_valid (id)? start + length: NULL;
}


//  --------------------------------------------------------------------------
//  Dispatch

bool
kim_agent_web_owns (const char *url)
{
    return streq (url, "/") || streq (url, "/ui") || strncmp (url, "/ui/", 4) == 0;
}

//  A POST from another origin is refused even with a valid token.
static bool
s_same_origin (s_req_t *req)
{
    const char *origin = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Origin");
    if (!origin)
        return true;
    const char *host = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Host");
    const char *rest = strncmp (origin, "https://", 8) == 0? origin + 8
                     : strncmp (origin, "http://", 7) == 0? origin + 7: NULL;
    return host && rest && streq (rest, host);
}

static bool
s_csrf_valid (s_req_t *req)
{
    const char *token = s_field (req, "csrf");
    return req->signed_in && strlen (token) == KIM_AGENT_TOKEN_HEX
        && sodium_memcmp (token, req->session.csrf, KIM_AGENT_TOKEN_HEX) == 0;
}

static enum MHD_Result
s_route (s_req_t *req, const char *method, const char *body, size_t size)
{
    kim_agent_web_t *self = req->self;
    const char *url = req->url;
    bool get = streq (method, "GET") || streq (method, "HEAD");
    bool post = streq (method, "POST");
    if (streq (url, "/") || streq (url, "/ui") || streq (url, "/ui/"))
        return s_redirect (req, "/ui/inbox");
    if (streq (url, "/ui/style.css") && get)
        return s_respond (req, MHD_HTTP_OK, "text/css; charset=utf-8", kim_agent_web_css,
                          strlen (kim_agent_web_css), false, NULL);
    if (!get && !post)
        return s_message_page (req, MHD_HTTP_METHOD_NOT_ALLOWED, T (ERROR), T (NOT_FOUND), method);
    if (post) {
        const char *type = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND,
                                                        MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!type || strncmp (type, "application/x-www-form-urlencoded", 33) != 0
        ||  !s_same_origin (req) || !s_parse_form (req, body, size)) {
            s_journal (self, req->signed_in? req->session.user: "-", "bad_form", NULL, NULL,
                       req->address);
            return s_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR), T (BAD_FORM), NULL);
        }
    }
    if (streq (url, "/ui/login"))
        return post? s_login (req): s_login_page (req, MHD_HTTP_OK, NULL);
    if (!req->signed_in)
        return s_redirect (req, "/ui/login");
    if (post && !s_csrf_valid (req)) {
        s_journal (self, req->session.user, "bad_csrf", NULL, NULL, req->address);
        return s_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR), T (BAD_FORM), NULL);
    }
    if (post && !streq (url, "/ui/logout") && req->session.role != KIM_AGENT_ROLE_STAFF) {
        s_journal (self, req->session.user, "forbidden", NULL, NULL, req->address);
        return s_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR), T (FORBIDDEN), NULL);
    }
    if (streq (url, "/ui/logout") && post)
        return s_logout (req);
    if (streq (url, "/ui/inbox") && get)
        return s_list (req, true);
    if (streq (url, "/ui/sent") && get)
        return s_list (req, false);
    if (streq (url, "/ui/new")) {
        if (req->session.role != KIM_AGENT_ROLE_STAFF)
            return s_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR), T (FORBIDDEN), NULL);
        return post? s_post_new (req): s_new_page (req);
    }
    if (streq (url, "/ui/cases") && get)
        return s_cases_page (req);
    if (streq (url, "/ui/consents"))
        return post? s_post_consent (req): s_consents_page (req);
    char record_id [KIM_ID_MAX + 1];
    const char *rest = s_path_id (url, "/ui/case/", record_id);
    if (rest && !*rest && get)
        return s_case_page (req, record_id);
    rest = s_path_id (url, "/ui/consent/", record_id);
    if (rest && !*rest && get)
        return s_consent_page (req, record_id);
    if (rest && streq (rest, "/revoke") && post)
        return s_post_revoke (req, record_id);
    if (strncmp (url, "/ui/referral/", 13) == 0) {
        char id [KIM_ID_MAX + 1];
        const char *start = url + 13;
        const char *slash = strchr (start, '/');
        size_t length = slash? (size_t) (slash - start): strlen (start);
        if (length > 0 && length <= KIM_ID_MAX) {
            memcpy (id, start, length);
            id [length] = 0;
            if (kim_id_valid (id)) {
                if (!slash && get)
                    return s_referral_page (req, id);
                if (slash && streq (slash, "/answer") && post)
                    return s_post_answer (req, id);
            }
        }
    }
    return s_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
}

enum MHD_Result
kim_agent_web_handle (kim_agent_web_t *self, struct MHD_Connection *connection, const char *url,
                      const char *method, const char *body, size_t size)
{
    s_req_t *req = (s_req_t *) calloc (1, sizeof *req);
    if (!req)
        return MHD_NO;
    req->self = self;
    req->connection = connection;
    req->url = url;
    kim_agent_html_init (&req->html);
    //  Language: ?lang= (remembered in a cookie), the cookie, the config
    const char *lang = MHD_lookup_connection_value (connection, MHD_GET_ARGUMENT_KIND, "lang");
    const char *cookie_lang = MHD_lookup_connection_value (connection, MHD_COOKIE_KIND, "kim_lang");
    if (lang && (streq (lang, "de") || streq (lang, "en"))) {
        req->lang = streq (lang, "en");
        s_set_cookie (req, "kim_lang", lang, "/ui", -1);
    }
    else
    if (cookie_lang && (streq (cookie_lang, "de") || streq (cookie_lang, "en")))
        req->lang = streq (cookie_lang, "en");
    else
        req->lang = streq (self->config->web_lang, "en");
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (info && info->client_addr) {
        const struct sockaddr *address = info->client_addr;
        if (address->sa_family == AF_INET)
            inet_ntop (AF_INET, &((const struct sockaddr_in *) address)->sin_addr, req->address,
                       sizeof req->address);
        else
        if (address->sa_family == AF_INET6)
            inet_ntop (AF_INET6, &((const struct sockaddr_in6 *) address)->sin6_addr,
                       req->address, sizeof req->address);
    }
    const char *sid = MHD_lookup_connection_value (connection, MHD_COOKIE_KIND, "kim_session");
    req->signed_in = sid && kim_agent_users_session (self->users, sid, &req->session);

    enum MHD_Result result = s_route (req, method, body? body: "", body? size: 0);

    for (size_t i = 0; i < req->field_count; i++) {
        sodium_memzero (req->fields [i].name, strlen (req->fields [i].name));
        sodium_memzero (req->fields [i].value, strlen (req->fields [i].value));
        free (req->fields [i].name);
    }
    for (size_t i = 0; i < req->cookie_count; i++)
        free (req->cookies [i]);
    kim_agent_html_free (&req->html);
    sodium_memzero (&req->session, sizeof req->session);
    free (req);
    return result;
}

kim_agent_web_t *
kim_agent_web_new (const kim_agent_config_t *config, kim_agent_store_t *store,
                   kim_agent_shared_t *shared, char *error, size_t error_size)
{
    kim_agent_web_t *self = (kim_agent_web_t *) calloc (1, sizeof *self);
    if (!self) {
        snprintf (error, error_size, "out of memory");
        return NULL;
    }
    self->config = config;
    self->store = store;
    self->shared = shared;
    self->tls = config->tls_cert [0] != 0;
    pthread_mutex_init (&self->journal_mutex, NULL);
    self->users = kim_agent_users_new (config->web_users, config->web_max_failures,
                                       config->web_lockout_s);
    char journal [PATH_MAX + 16];
    snprintf (journal, sizeof journal, "%s/web.journal", config->data);
    self->journal_fd = open (journal, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (!self->users || self->journal_fd < 0) {
        snprintf (error, error_size, "web: cannot start the web page (accounts %s, journal %s)",
                  config->web_users, journal);
        kim_agent_web_destroy (&self);
        return NULL;
    }
    if (config->web_policy [0]) {
        char why [KIM_POLICY_ERROR_MAX];
        self->policy = kim_policy_load (config->web_policy, why, sizeof why);
        if (!self->policy) {
            snprintf (error, error_size, "web/policy: %s", why);
            kim_agent_web_destroy (&self);
            return NULL;
        }
    }
    zsys_info ("kim-agent %s: web page on under /ui/ (accounts in %s)", config->org,
               config->web_users);
    if (access (config->web_users, F_OK) != 0)
        zsys_warning ("kim-agent %s: %s does not exist yet: nobody can sign in until "
                      "kim-agent --add-user makes an account", config->org, config->web_users);
    return self;
}

void
kim_agent_web_destroy (kim_agent_web_t **self_p)
{
    if (self_p && *self_p) {
        kim_agent_web_t *self = *self_p;
        kim_agent_users_destroy (&self->users);
        kim_policy_destroy (&self->policy);
        if (self->journal_fd >= 0)
            close (self->journal_fd);
        pthread_mutex_destroy (&self->journal_mutex);
        free (self);
        *self_p = NULL;
    }
}
