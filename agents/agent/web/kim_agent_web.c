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
#include "kim_agent_web_int.h"



//  --------------------------------------------------------------------------
//  Journal

void
kim_agent_web_i_journal (kim_agent_web_t *self, const char *user, const char *action, const char *referral_id,
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
s_parse_form (kim_agent_web_req_t *req, const char *body, size_t size)
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
            //  A name twice is refused (which one would count?), but for a
            //  group of check boxes, whose values are a list
            for (size_t i = 0; i < req->field_count && !streq (part, "category"); i++)
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
const char *
kim_agent_web_i_field (kim_agent_web_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->field_count; i++)
        if (streq (req->fields [i].name, name))
            return req->fields [i].value;
    return "";
}

static void
s_set_cookie (kim_agent_web_req_t *req, const char *name, const char *value, const char *path, int max_age)
{
    if (req->cookie_count == S_COOKIES_MAX)
        return;
    char text [256];
    snprintf (text, sizeof text, "%s=%s; Path=%s; HttpOnly; SameSite=Strict%s%s", name, value,
              path, req->self->tls? "; Secure": "", max_age == 0? "; Max-Age=0": "");
    req->cookies [req->cookie_count++] = strdup (text);
}

static const char *
s_cookie (kim_agent_web_req_t *req, const char *name)
{
    return MHD_lookup_connection_value (req->connection, MHD_COOKIE_KIND, name);
}

static enum MHD_Result
s_respond (kim_agent_web_req_t *req, unsigned status, const char *type, const char *body, size_t size,
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

enum MHD_Result
kim_agent_web_i_redirect (kim_agent_web_req_t *req, const char *location)
{
    static const char body [] = "";
    return s_respond (req, MHD_HTTP_SEE_OTHER, "text/plain; charset=utf-8", body, 0, false,
                      location);
}

enum MHD_Result
kim_agent_web_i_send_page (kim_agent_web_req_t *req, unsigned status)
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
    { "LAPSED", "ruht (Einwilligung abgelaufen)", "lapsed (consent expired)" },
    { "UNDELIVERABLE", "unzustellbar (anderer Kreis lehnte ab)",
      "undeliverable (refused by another district)" },
    { "OPEN", "offen", "open" },
    { "CLOSED", "abgeschlossen", "closed" },
    { "pending", "wartet auf den Broker", "waiting for the broker" },
    { "active", "gültig", "active" },
    { "refused", "abgewiesen", "refused" },
    { "expired", "abgelaufen", "expired" },
    { "revoking", "Widerruf wartet auf den Broker", "revocation waiting for the broker" },
    { "revoked", "widerrufen", "revoked" },
    { "queued", "wartet auf den Broker", "waiting for the broker" },
    { "receipted", "vom Broker angenommen, wird erstellt", "taken by the broker, being made" },
    { "answered", "liegt vor", "ready" },
};

void
kim_agent_web_i_state_text (kim_agent_web_req_t *req, const char *state)
{
    for (size_t i = 0; i < sizeof s_states / sizeof s_states [0]; i++)
        if (state && streq (s_states [i].state, state)) {
            kim_agent_html_text (&req->html, req->lang? s_states [i].en: s_states [i].de);
            return;
        }
    kim_agent_html_text (&req->html, state);
}

void
kim_agent_web_i_time_text (kim_agent_web_req_t *req, json_int_t ms)
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
void
kim_agent_web_i_begin (kim_agent_web_req_t *req, const char *title, const char *current)
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
            { "/ui/reports", KIM_WEB_T_REPORTS, false },
            { "/ui/erasures", KIM_WEB_T_ERASURES, false },
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

void
kim_agent_web_i_end (kim_agent_web_req_t *req)
{
    kim_agent_html_raw (&req->html, "</main>\n</body>\n</html>\n");
}

enum MHD_Result
kim_agent_web_i_message_page (kim_agent_web_req_t *req, unsigned status, const char *title, const char *text,
                const char *detail)
{
    kim_agent_web_i_begin (req, title, NULL);
    kim_agent_html_raw (&req->html, "<div class=\"error\" role=\"alert\"><p>");
    kim_agent_html_text (&req->html, text);
    if (detail && *detail) {
        kim_agent_html_raw (&req->html, " ");
        kim_agent_html_text (&req->html, detail);
    }
    kim_agent_html_raw (&req->html, "</p></div>\n");
    if (req->signed_in)
        kim_agent_html_rawf (&req->html, "<p><a href=\"/ui/inbox\">%s</a></p>\n", T (BACK));
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, status);
}

void
kim_agent_web_i_hidden (kim_agent_web_req_t *req, const char *name, const char *value)
{
    kim_agent_html_rawf (&req->html, "<input type=\"hidden\" name=\"%s\" value=\"", name);
    kim_agent_html_text (&req->html, value);
    kim_agent_html_raw (&req->html, "\">\n");
}

//  A fresh msg_id for a form: a resubmitted form sends the same message.
void
kim_agent_web_i_form_msg_id (kim_agent_web_req_t *req)
{
    char token [KIM_AGENT_TOKEN_HEX + 1], msg_id [32];
    kim_agent_users_token (token);
    snprintf (msg_id, sizeof msg_id, "web-%.24s", token);
    kim_agent_web_i_hidden (req, "msg_id", msg_id);
}


//  --------------------------------------------------------------------------
//  Login and logout

static enum MHD_Result
s_login_page (kim_agent_web_req_t *req, unsigned status, const char *problem)
{
    //  A token bound to a cookie of its own: a login form cannot be posted
    //  from another site either
    char token [KIM_AGENT_TOKEN_HEX + 1];
    kim_agent_users_token (token);
    s_set_cookie (req, "kim_login", token, "/ui", -1);
    kim_agent_web_i_begin (req, T (LOGIN), NULL);
    kim_agent_html_t *html = &req->html;
    if (problem) {
        kim_agent_html_raw (html, "<div class=\"error\" role=\"alert\"><p>");
        kim_agent_html_text (html, problem);
        kim_agent_html_raw (html, "</p></div>\n");
    }
    kim_agent_html_raw (html, "<form class=\"login\" method=\"post\" action=\"/ui/login\">\n");
    kim_agent_web_i_hidden (req, "csrf", token);
    kim_agent_html_rawf (html, "<label for=\"user\">%s</label>\n"
                         "<input type=\"text\" id=\"user\" name=\"user\" autocomplete=\"username\" "
                         "required maxlength=\"32\" autocapitalize=\"none\" spellcheck=\"false\">\n"
                         "<label for=\"password\">%s</label>\n"
                         "<input type=\"password\" id=\"password\" name=\"password\" "
                         "autocomplete=\"current-password\" required maxlength=\"256\">\n"
                         "<button type=\"submit\">%s</button>\n</form>\n",
                         T (USER), T (PASSWORD), T (LOGIN));
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, status);
}

static enum MHD_Result
s_login (kim_agent_web_req_t *req)
{
    kim_agent_web_t *self = req->self;
    const char *expected = s_cookie (req, "kim_login");
    const char *token = kim_agent_web_i_field (req, "csrf");
    if (!expected || strlen (expected) != KIM_AGENT_TOKEN_HEX || strlen (token) != KIM_AGENT_TOKEN_HEX
    ||  sodium_memcmp (expected, token, KIM_AGENT_TOKEN_HEX) != 0) {
        kim_agent_web_i_journal (self, "-", "bad_csrf", NULL, NULL, req->address);
        return s_login_page (req, MHD_HTTP_FORBIDDEN, T (BAD_FORM));
    }
    const char *user = kim_agent_web_i_field (req, "user");
    const char *password = kim_agent_web_i_field (req, "password");
    char sid [KIM_AGENT_TOKEN_HEX + 1];
    kim_agent_session_t session;
    int rc = kim_agent_users_name_valid (user)
          && kim_agent_users_password_length (password) <= KIM_AGENT_PASSWORD_MAX
           ? kim_agent_users_login (self->users, user, password, req->address, sid, &session)
           : -KIM_E_FORBIDDEN;
    const char *journal_user = kim_agent_users_name_valid (user)? user: "(invalid name)";
    if (rc == -KIM_E_RATE_LIMITED) {
        kim_agent_web_i_journal (self, journal_user, "login_locked", NULL, NULL, req->address);
        return s_login_page (req, MHD_HTTP_TOO_MANY_REQUESTS, T (LOCKED));
    }
    if (rc) {
        kim_agent_web_i_journal (self, journal_user, "login_failed", NULL, NULL, req->address);
        return s_login_page (req, MHD_HTTP_UNAUTHORIZED, T (LOGIN_FAILED));
    }
    kim_agent_web_i_journal (self, user, "login", NULL, NULL, req->address);
    s_set_cookie (req, "kim_session", sid, "/ui", -1);
    s_set_cookie (req, "kim_login", "", "/ui", 0);
    return kim_agent_web_i_redirect (req, "/ui/inbox");
}

static enum MHD_Result
s_logout (kim_agent_web_req_t *req)
{
    kim_agent_users_logout (req->self->users, s_cookie (req, "kim_session"));
    kim_agent_web_i_journal (req->self, req->session.user, "logout", NULL, NULL, req->address);
    s_set_cookie (req, "kim_session", "", "/ui", 0);
    req->signed_in = false;
    return s_login_page (req, MHD_HTTP_OK, T (SIGNED_OUT));
}


//  The head of a form's second step: what the first step chose (the
//  record, the receiving office, the purpose), a link back to change it,
//  and the form opened with its CSRF token. The caller adds the rest and
//  closes the form.
void
kim_agent_web_i_step_two (kim_agent_web_req_t *req, const char *label, const char *kind,
                          const char *id, const char *recipient, const char *purpose,
                          const char *anchor, const char *action)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_rawf (html, "<dl class=\"facts\">\n<dt>%s</dt><dd>", label);
    kim_agent_web_i_link (req, kind, id);
    kim_agent_html_raw (html, "</dd>\n");
    kim_agent_web_i_fact (req, T (TO), recipient);
    kim_agent_web_i_fact (req, T (PURPOSE), purpose);
    kim_agent_html_rawf (html, "</dl>\n<p><a href=\"/ui/%s/", kind);
    kim_agent_html_text (html, id);
    kim_agent_html_rawf (html, "#%s\">%s</a></p>\n<form method=\"post\" action=\"/ui/%s/",
                         anchor, T (CHANGE), kind);
    kim_agent_html_text (html, id);
    kim_agent_html_rawf (html, "/%s\">\n", action);
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
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
s_same_origin (kim_agent_web_req_t *req)
{
    const char *origin = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Origin");
    if (!origin)
        return true;
    //  The origin is scheme, host and port: the page's own scheme only
    const char *host = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Host");
    const char *scheme = req->self->tls? "https://": "http://";
    size_t length = strlen (scheme);
    return host && strncmp (origin, scheme, length) == 0 && streq (origin + length, host);
}

static bool
s_csrf_valid (kim_agent_web_req_t *req)
{
    const char *token = kim_agent_web_i_field (req, "csrf");
    return req->signed_in && strlen (token) == KIM_AGENT_TOKEN_HEX
        && sodium_memcmp (token, req->session.csrf, KIM_AGENT_TOKEN_HEX) == 0;
}

static enum MHD_Result
s_route (kim_agent_web_req_t *req, const char *method, const char *body, size_t size)
{
    kim_agent_web_t *self = req->self;
    const char *url = req->url;
    bool get = streq (method, "GET") || streq (method, "HEAD");
    bool post = streq (method, "POST");
    if (streq (url, "/") || streq (url, "/ui") || streq (url, "/ui/"))
        return kim_agent_web_i_redirect (req, "/ui/inbox");
    if (streq (url, "/ui/style.css") && get)
        return s_respond (req, MHD_HTTP_OK, "text/css; charset=utf-8", kim_agent_web_css,
                          strlen (kim_agent_web_css), false, NULL);
    if (!get && !post)
        return kim_agent_web_i_message_page (req, MHD_HTTP_METHOD_NOT_ALLOWED, T (ERROR), T (NOT_FOUND), method);
    if (post) {
        const char *type = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND,
                                                        MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!type || strncmp (type, "application/x-www-form-urlencoded", 33) != 0
        ||  !s_same_origin (req) || !s_parse_form (req, body, size)) {
            kim_agent_web_i_journal (self, req->signed_in? req->session.user: "-", "bad_form", NULL, NULL,
                       req->address);
            return kim_agent_web_i_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR),
                                                 T (MALFORMED_FORM), NULL);
        }
    }
    if (streq (url, "/ui/login"))
        return post? s_login (req): s_login_page (req, MHD_HTTP_OK, NULL);
    if (!req->signed_in)
        return kim_agent_web_i_redirect (req, "/ui/login");
    if (post && !s_csrf_valid (req)) {
        kim_agent_web_i_journal (self, req->session.user, "bad_csrf", NULL, NULL, req->address);
        return kim_agent_web_i_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR), T (BAD_FORM), NULL);
    }
    if (post && !streq (url, "/ui/logout") && req->session.role != KIM_AGENT_ROLE_STAFF) {
        kim_agent_web_i_journal (self, req->session.user, "forbidden", NULL, NULL, req->address);
        return kim_agent_web_i_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR), T (FORBIDDEN), NULL);
    }
    if (streq (url, "/ui/logout") && post)
        return s_logout (req);
    if (streq (url, "/ui/inbox") && get)
        return kim_agent_web_i_list (req, true);
    if (streq (url, "/ui/sent") && get)
        return kim_agent_web_i_list (req, false);
    if (streq (url, "/ui/new")) {
        if (req->session.role != KIM_AGENT_ROLE_STAFF)
            return kim_agent_web_i_message_page (req, MHD_HTTP_FORBIDDEN, T (ERROR), T (FORBIDDEN), NULL);
        return post? kim_agent_web_i_post_new (req): kim_agent_web_i_new_page (req);
    }
    if (streq (url, "/ui/cases") && get)
        return kim_agent_web_i_cases_page (req);
    if (streq (url, "/ui/consents"))
        return post? kim_agent_web_i_post_consent (req): kim_agent_web_i_consents_page (req);
    char record_id [KIM_ID_MAX + 1];
    const char *rest;
    if (streq (url, "/ui/reports"))
        return post? kim_agent_web_i_post_report (req): kim_agent_web_i_reports_page (req);
    rest = kim_agent_web_i_path_id (url, "/ui/report/", record_id);
    if (rest && !*rest && get)
        return kim_agent_web_i_report_page (req, record_id);
    if (streq (url, "/ui/erasures"))
        return post? kim_agent_web_i_post_erasure (req): kim_agent_web_i_erasures_page (req);
    if (strncmp (url, "/ui/erasures/", 13) == 0 && post) {
        uint64_t seq = 0;
        const char *digits = url + 13;
        size_t length = strlen (digits);
        if (length > 0 && length <= 19 && strspn (digits, "0123456789") == length)
            seq = strtoull (digits, NULL, 10);
        if (seq)
            return kim_agent_web_i_post_notice (req, seq);
    }
    rest = kim_agent_web_i_path_id (url, "/ui/case/", record_id);
    if (rest && !*rest && get)
        return kim_agent_web_i_case_page (req, record_id);
    if (rest && streq (rest, "/handover"))
        return post? kim_agent_web_i_post_handover (req, record_id)
                   : kim_agent_web_i_handover_page (req, record_id);
    rest = kim_agent_web_i_path_id (url, "/ui/consent/", record_id);
    if (rest && !*rest && get)
        return kim_agent_web_i_consent_page (req, record_id);
    if (rest && streq (rest, "/revoke") && post)
        return kim_agent_web_i_post_revoke (req, record_id);
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
                    return kim_agent_web_i_referral_page (req, id);
                if (slash && streq (slash, "/answer") && post)
                    return kim_agent_web_i_post_answer (req, id);
                if (slash && streq (slash, "/erase") && post)
                    return kim_agent_web_i_post_erase (req, id);
                if (slash && streq (slash, "/forward") && get)
                    return kim_agent_web_i_forward_page (req, id);
            }
        }
    }
    return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
}

enum MHD_Result
kim_agent_web_handle (kim_agent_web_t *self, struct MHD_Connection *connection, const char *url,
                      const char *method, const char *body, size_t size)
{
    kim_agent_web_req_t *req = (kim_agent_web_req_t *) calloc (1, sizeof *req);
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
