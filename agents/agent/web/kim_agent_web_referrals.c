/*  kim_agent_web_referrals.c — the staff page's referrals: the inbox and
    sent lists, one referral with its payload, timeline and the answers its
    state allows, and the forms that send answers and new referrals (with
    the legal-basis picker). Part of the web module (kim_agent_web_int.h).
*/
#include <czmq.h>
#include <sodium.h>

#include "kim_agent_web_int.h"

//  --------------------------------------------------------------------------
//  Lists

json_int_t
kim_agent_web_i_int (json_t *record, const char *key)
{
    return json_integer_value (json_object_get (record, key));
}

const char *
kim_agent_web_i_str (json_t *record, const char *key)
{
    const char *value = json_string_value (json_object_get (record, key));
    return value? value: "";
}

bool
kim_agent_web_i_is_open (const char *state)
{
    return streq (state, "SENT") || streq (state, "DELIVERED") || streq (state, "ACCEPTED")
        || streq (state, "IN_PROGRESS") || streq (state, "OVERDUE") || streq (state, "SUSPENDED")
        || streq (state, "LAPSED");
}

//  Open first: overdue, then by deadline (none last), then oldest.
static int
s_compare_open (const void *a, const void *b)
{
    json_t *x = *(json_t *const *) a, *y = *(json_t *const *) b;
    int ox = json_is_true (json_object_get (x, "overdue")), oy = json_is_true (json_object_get (y, "overdue"));
    if (ox != oy)
        return oy - ox;
    json_int_t dx = kim_agent_web_i_int (x, "deadline"), dy = kim_agent_web_i_int (y, "deadline");
    if (dx != dy)
        return dx == 0? 1: dy == 0? -1: dx < dy? -1: 1;
    json_int_t cx = kim_agent_web_i_int (x, "created_at"), cy = kim_agent_web_i_int (y, "created_at");
    return cx < cy? -1: cx > cy? 1: 0;
}

//  Closed: most recently changed first.
static int
s_compare_closed (const void *a, const void *b)
{
    json_int_t x = kim_agent_web_i_int (*(json_t *const *) a, "updated_at");
    json_int_t y = kim_agent_web_i_int (*(json_t *const *) b, "updated_at");
    return x > y? -1: x < y? 1: 0;
}

static void
s_table (kim_agent_web_req_t *req, json_t **rows, size_t count, const char *caption, bool received)
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
        const char *id = kim_agent_web_i_str (row, "referral_id");
        kim_agent_html_rawf (html, "<tr%s><td><a href=\"/ui/referral/", overdue? " class=\"overdue\"": "");
        kim_agent_html_text (html, id);
        kim_agent_html_raw (html, "\">");
        kim_agent_html_text (html, id);
        kim_agent_html_raw (html, "</a></td><td>");
        kim_agent_html_text (html, kim_agent_web_i_str (row, "counterpart"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, kim_agent_web_i_str (row, "purpose"));
        kim_agent_html_raw (html, "</td><td class=\"state\">");
        kim_agent_web_i_state_text (req, kim_agent_web_i_str (row, "state"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (row, "deadline"));
        if (overdue) {
            kim_agent_html_raw (html, " <span class=\"mark\">");
            kim_agent_html_text (html, T (OVERDUE));
            kim_agent_html_raw (html, "</span>");
        }
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (row, "created_at"));
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    if (count == 0)
        kim_agent_html_rawf (html, "<tr><td colspan=\"6\">%s</td></tr>\n", T (NONE));
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
}

enum MHD_Result
kim_agent_web_i_list (kim_agent_web_req_t *req, bool received)
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
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    for (size_t i = 0; i < total; i++) {
        json_t *row = json_array_get (items, i);
        if (!streq (kim_agent_web_i_str (row, "role"), received? "recipient": "sender"))
            continue;
        if (kim_agent_web_i_is_open (kim_agent_web_i_str (row, "state")))
            open [open_count++] = row;
        else
            closed [closed_count++] = row;
    }
    qsort (open, open_count, sizeof (json_t *), s_compare_open);
    qsort (closed, closed_count, sizeof (json_t *), s_compare_closed);
    kim_agent_web_i_begin (req, received? T (INBOX): T (SENT_LIST), received? "/ui/inbox": "/ui/sent");
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        kim_agent_web_i_notice_sent (req, sent);
    s_table (req, open, open_count, T (OPEN_LIST), received);
    s_table (req, closed, closed_count, T (CLOSED_LIST), received);
    kim_agent_web_i_end (req);
    free (open);
    free (closed);
    json_decref (items);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
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
            return !recipient && (kim_agent_web_i_is_open (state));
        default:
            return false;
    }
}

static void
s_form_begin (kim_agent_web_req_t *req, const char *id, s_answer_t answer, kim_agent_text_t legend)
{
    kim_agent_html_raw (&req->html, "<form method=\"post\" action=\"/ui/referral/");
    kim_agent_html_text (&req->html, id);
    kim_agent_html_rawf (&req->html, "/answer\">\n<fieldset>\n<legend>%s</legend>\n",
                         kim_agent_web_text (legend, req->lang));
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
    kim_agent_web_i_hidden (req, "answer", s_answer_names [answer]);
    kim_agent_web_i_form_msg_id (req);
}

static void
s_form_end (kim_agent_web_req_t *req, s_answer_t answer, const char *button)
{
    if (answer != S_OUTCOME)
        kim_agent_html_rawf (&req->html, "<label for=\"note-%s\">%s</label>\n"
                             "<input type=\"text\" id=\"note-%s\" name=\"note\" maxlength=\"280\">\n",
                             s_answer_names [answer], T (NOTE), s_answer_names [answer]);
    kim_agent_html_rawf (&req->html, "<button type=\"submit\">%s</button>\n</fieldset>\n</form>\n",
                         button);
}

static void
s_select (kim_agent_web_req_t *req, const char *id, const char *name, kim_agent_text_t label,
          const char *const *codes, const kim_agent_text_t *texts, size_t count)
{
    kim_agent_html_rawf (&req->html, "<label for=\"%s\">%s</label>\n<select id=\"%s\" name=\"%s\" "
                         "required>\n", id, kim_agent_web_text (label, req->lang), id, name);
    for (size_t i = 0; i < count; i++)
        kim_agent_html_rawf (&req->html, "<option value=\"%s\">%s</option>\n", codes [i],
                             kim_agent_web_text (texts [i], req->lang));
    kim_agent_html_raw (&req->html, "</select>\n");
}

//  The fields of a forward's first step: the new office and the purpose.
static void
s_forward_step1 (kim_agent_web_req_t *req, const char *purpose)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_rawf (html, "<label for=\"fw-org\">%s</label>\n<input type=\"text\" "
                         "id=\"fw-org\" name=\"org\" required maxlength=\"64\" spellcheck=\"false\" "
                         "aria-describedby=\"fw-hint\">\n<label for=\"fw-purpose\">%s</label>\n"
                         "<input type=\"text\" id=\"fw-purpose\" name=\"purpose\" required "
                         "maxlength=\"32\" spellcheck=\"false\" value=\"", T (FORWARD_TO),
                         T (PURPOSE_CODE));
    kim_agent_html_text (html, purpose);
    kim_agent_html_rawf (html, "\">\n<button type=\"submit\">%s</button>\n", T (NEXT));
}

static void
s_answer_forms (kim_agent_web_req_t *req, json_t *referral)
{
    kim_agent_html_t *html = &req->html;
    const char *id = kim_agent_web_i_str (referral, "referral_id");
    const char *role = kim_agent_web_i_str (referral, "role");
    const char *state = kim_agent_web_i_str (referral, "state");
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
        //  Step one of two: the legal bases on offer depend on the new
        //  recipient and purpose (kim_agent_web_i_forward_page)
        kim_agent_html_raw (html, "<form method=\"get\" action=\"/ui/referral/");
        kim_agent_html_text (html, id);
        kim_agent_html_rawf (html, "/forward\">\n<fieldset>\n<legend>%s</legend>\n"
                             "<p class=\"hint\" id=\"fw-hint\">%s</p>\n", T (FORWARD),
                             T (STEP1_HINT));
        s_forward_step1 (req, kim_agent_web_i_str (referral, "purpose"));
        kim_agent_html_raw (html, "</fieldset>\n</form>\n");
    }
    if (s_allowed (S_WITHDRAW, role, state)) {
        s_form_begin (req, id, S_WITHDRAW, KIM_WEB_T_WITHDRAW);
        s_form_end (req, S_WITHDRAW, T (WITHDRAW));
    }
    kim_agent_html_raw (html, "</div>\n");
}

void
kim_agent_web_i_notice_sent (kim_agent_web_req_t *req, const char *msg_id)
{
    json_t *record = kim_agent_store_outbox_get (req->self->store, msg_id);
    if (!record)
        return;
    const char *status = kim_agent_web_i_str (record, "status");
    kim_agent_html_t *html = &req->html;
    if (streq (status, "refused")) {
        kim_agent_html_raw (html, "<div class=\"error\" role=\"alert\"><p>");
        kim_agent_html_text (html, T (REFUSED_NOTICE));
        kim_agent_html_raw (html, " ");
        kim_agent_html_text (html, kim_agent_web_i_str (record, "error"));
        kim_agent_html_raw (html, ": ");
        kim_agent_html_text (html, kim_agent_web_i_str (record, "text"));
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

void
kim_agent_web_i_fact (kim_agent_web_req_t *req, const char *term, const char *value)
{
    kim_agent_html_raw (&req->html, "<dt>");
    kim_agent_html_text (&req->html, term);
    kim_agent_html_raw (&req->html, "</dt><dd>");
    kim_agent_html_text (&req->html, value && *value? value: "–");
    kim_agent_html_raw (&req->html, "</dd>\n");
}

//  The delivery that opened referral `id` for us (the REFERRAL, or the
//  FORWARD that brought it), from its timeline; NULL when there is none.
static json_t *
s_opening (json_t *timeline, const char *id)
{
    for (size_t i = 0; i < json_array_size (timeline); i++) {
        json_t *item = json_array_get (timeline, i);
        const char *type = kim_agent_web_i_str (item, "type");
        if (streq (kim_agent_web_i_str (item, "direction"), "in")
        &&  (streq (type, "REFERRAL")
             || (streq (type, "FORWARD") && streq (kim_agent_web_i_str (item, "msg_id"), id))))
            return item;
    }
    return NULL;
}

//  Staff may erase the agent's copy of the content (docs/agent.md,
//  "Erasing the office's copies"); the record and the timeline stay.
static void
s_erase_form (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_html_raw (&req->html, "<form method=\"post\" action=\"/ui/referral/");
    kim_agent_html_text (&req->html, id);
    kim_agent_html_rawf (&req->html, "/erase\">\n<p>%s</p>\n", T (ERASE_HINT));
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
    //  It cannot be undone: the box must be ticked, here and at the server
    kim_agent_html_rawf (&req->html, "<p><input type=\"checkbox\" id=\"erase-confirm\" "
                         "name=\"confirm\" value=\"yes\" required> <label for=\"erase-confirm\">"
                         "%s</label></p>\n<button type=\"submit\">%s</button>\n</form>\n",
                         T (ERASE_CONFIRM), T (ERASE_CONTENT));
}

enum MHD_Result
kim_agent_web_i_referral_page (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_web_t *self = req->self;
    json_t *referral = kim_agent_store_referral (self->store, id);
    if (!referral)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    json_t *timeline = kim_agent_store_timeline (self->store, id);
    kim_agent_html_t *html = &req->html;
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s %s", T (REFERRAL), id);
    bool received = streq (kim_agent_web_i_str (referral, "role"), "recipient");
    kim_agent_web_i_begin (req, title, NULL);
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        kim_agent_web_i_notice_sent (req, sent);

    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    kim_agent_web_i_fact (req, received? T (FROM): T (TO), kim_agent_web_i_str (referral, "counterpart"));
    kim_agent_web_i_fact (req, T (PURPOSE), kim_agent_web_i_str (referral, "purpose"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (CASE));
    kim_agent_web_i_link (req, "case", kim_agent_web_i_str (referral, "case_id"));
    kim_agent_html_raw (html, "</dd>\n");
    kim_agent_web_i_fact (req, T (SUBJECT), kim_agent_web_i_str (referral, "subject"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd class=\"state\">", T (STATE));
    kim_agent_web_i_state_text (req, kim_agent_web_i_str (referral, "state"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (DEADLINE));
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (referral, "deadline"));
    if (json_is_true (json_object_get (referral, "overdue"))) {
        kim_agent_html_raw (html, " <span class=\"mark\">");
        kim_agent_html_text (html, T (OVERDUE));
        kim_agent_html_raw (html, "</span>");
    }
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (RECEIVED));
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (referral, "created_at"));
    kim_agent_html_raw (html, "</dd>\n</dl>\n");

    //  The content: the opening delivery's payload, opened by the agent
    if (received) {
        kim_agent_html_rawf (html, "<h2>%s</h2>\n", T (CONTENT));
        json_t *opening = s_opening (timeline, id);
        json_t *delivery = opening
            ? kim_agent_store_inbox_get (self->store, (uint64_t) kim_agent_web_i_int (opening, "seq")): NULL;
        const char *payload = json_string_value (json_object_get (delivery, "payload"));
        if (delivery && json_is_true (json_object_get (delivery, "sealed_error")))
            kim_agent_html_rawf (html, "<p class=\"error\">%s</p>\n", T (SEALED_ERROR));
        else
        if (payload && *payload) {
            kim_agent_html_raw (html, "<pre class=\"payload\">");
            kim_agent_html_text (html, payload);
            kim_agent_html_raw (html, "</pre>\n");
            if (req->session.role == KIM_AGENT_ROLE_STAFF)
                s_erase_form (req, id);
        }
        else
        if (kim_agent_web_i_int (delivery, "erased_at")) {
            kim_agent_html_rawf (html, "<p>%s ", T (CONTENT_ERASED));
            kim_agent_web_i_time_text (req, kim_agent_web_i_int (delivery, "erased_at"));
            kim_agent_html_raw (html, ".</p>\n");
        }
        else
            kim_agent_html_rawf (html, "<p>%s</p>\n", T (NO_CONTENT));
        if (delivery)
            kim_agent_web_i_journal (self, req->session.user, "open", id, kim_agent_web_i_str (delivery, "msg_id"), NULL);
        json_decref (delivery);
    }

    kim_agent_html_rawf (html, "<h2>%s</h2>\n<table>\n<thead><tr><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                         "</tr></thead>\n<tbody>\n", T (TIMELINE), T (WHEN), T (DIRECTION),
                         T (MESSAGE), T (DETAIL));
    for (size_t i = 0; i < json_array_size (timeline); i++) {
        json_t *item = json_array_get (timeline, i);
        bool in = streq (kim_agent_web_i_str (item, "direction"), "in");
        kim_agent_html_raw (html, "<tr><td>");
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (item, "at"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, in? T (INCOMING): T (OUTGOING));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, kim_agent_web_i_str (item, "type"));
        kim_agent_html_raw (html, "</td><td>");
        const char *parts [3] = { kim_agent_web_i_str (item, "code"), kim_agent_web_i_str (item, "org"), kim_agent_web_i_str (item, "note") };
        bool first = true;
        for (int p = 0; p < 3; p++)
            if (*parts [p]) {
                if (!first)
                    kim_agent_html_raw (html, " · ");
                kim_agent_html_text (html, parts [p]);
                first = false;
            }
        if (!in) {
            const char *status = kim_agent_web_i_str (item, "status");
            kim_agent_html_raw (html, first? "": " · ");
            kim_agent_html_raw (html, "<span class=\"muted\">");
            kim_agent_html_text (html, streq (status, "receipted")? T (OUT_RECEIPTED)
                                     : streq (status, "refused")? T (OUT_REFUSED): T (OUT_QUEUED));
            if (streq (status, "refused")) {
                kim_agent_html_raw (html, ": ");
                kim_agent_html_text (html, kim_agent_web_i_str (item, "error"));
                kim_agent_html_raw (html, " ");
                kim_agent_html_text (html, kim_agent_web_i_str (item, "text"));
            }
            kim_agent_html_raw (html, "</span>");
        }
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
    s_answer_forms (req, referral);
    kim_agent_html_rawf (html, "<p><a href=\"%s\">%s</a></p>\n", received? "/ui/inbox": "/ui/sent",
                         received? T (BACK): T (BACK_SENT));
    kim_agent_web_i_end (req);
    json_decref (timeline);
    json_decref (referral);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}


//  --------------------------------------------------------------------------
//  Sending: answers and new referrals

//  Adds the form's legal basis to `message`. False when it is incomplete.
bool
kim_agent_web_i_legal_basis (kim_agent_web_req_t *req, json_t *message)
{
    const char *kind = kim_agent_web_i_field (req, "basis");
    if (strncmp (kind, "consent:", 8) == 0 && kind [8])
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "consent", "consent_id", kind + 8));
    else
    if (streq (kind, "consent") && *kim_agent_web_i_field (req, "consent_id"))
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "consent",
                                        "consent_id", kim_agent_web_i_field (req, "consent_id")));
    else
    if (strncmp (kind, "statute:", 8) == 0 && kind [8])
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "statute", "citation", kind + 8));
    else
    if (streq (kind, "statute") && *kim_agent_web_i_field (req, "citation"))
        json_object_set_new (message, "legal_basis",
                             json_pack ("{s:s, s:s}", "kind", "statute",
                                        "citation", kim_agent_web_i_field (req, "citation")));
    else
        return false;
    return true;
}

void
kim_agent_web_i_optional (kim_agent_web_req_t *req, json_t *message, const char *field, const char *key)
{
    const char *value = kim_agent_web_i_field (req, field);
    if (*value)
        json_object_set_new (message, key, json_string (value));
}

//  Puts a message from a form into the outbox. Returns 0 with `msg_id`,
//  or an error text in `why`.
int
kim_agent_web_i_send (kim_agent_web_req_t *req, json_t *message, const char *action, const char *referral_id,
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
        kim_agent_web_i_journal (self, req->session.user, "refused", referral_id, msg.msg_id, NULL);
        return rc;
    }
    if (rc == 0)
        kim_agent_wake (self->shared);
    kim_agent_web_i_journal (self, req->session.user, action, referral_id, msg.msg_id, NULL);
    return 0;
}

enum MHD_Result
kim_agent_web_i_post_answer (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_web_t *self = req->self;
    const char *answer = kim_agent_web_i_field (req, "answer");
    int which = -1;
    for (int i = 0; i < S_ANSWERS; i++)
        if (streq (answer, s_answer_names [i]))
            which = i;
    json_t *referral = kim_agent_store_referral (self->store, id);
    if (!referral)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    if (which < 0 || !s_allowed ((s_answer_t) which, kim_agent_web_i_str (referral, "role"),
                                 kim_agent_web_i_str (referral, "state"))) {
        json_decref (referral);
        kim_agent_web_i_journal (self, req->session.user, "answer_not_allowed", id, NULL, NULL);
        return kim_agent_web_i_message_page (req, MHD_HTTP_CONFLICT, T (ERROR), T (NOT_ALLOWED), NULL);
    }
    json_t *message = json_pack ("{s:s, s:s, s:s}",
                                 "type", kim_type_name (s_answer_types [which]),
                                 "recipient", kim_agent_web_i_str (referral, "counterpart"), "referral_id", id);
    json_decref (referral);
    if (!message) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    kim_agent_web_i_optional (req, message, "msg_id", "msg_id");
    kim_agent_web_i_optional (req, message, "code", "code");
    kim_agent_web_i_optional (req, message, "org", "org");
    kim_agent_web_i_optional (req, message, "note", "note");
    bool complete = true;
    if (which == S_FORWARD) {
        kim_agent_web_i_optional (req, message, "purpose", "purpose");
        complete = kim_agent_web_i_legal_basis (req, message);
    }
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = complete? kim_agent_web_i_send (req, message, s_answer_names [which], id, why, sizeof why)
                     : -KIM_E_MISSING_FIELD;
    if (!complete)
        snprintf (why, sizeof why, "%s", T (LEGAL_BASIS));
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX * 2 + 64];
    snprintf (location, sizeof location, "/ui/referral/%s?sent=%s", id, msg_id);
    return kim_agent_web_i_redirect (req, location);
}

enum MHD_Result
kim_agent_web_i_post_erase (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_web_t *self = req->self;
    if (!streq (kim_agent_web_i_field (req, "confirm"), "yes"))
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR),
                                             T (ERASE_UNCONFIRMED), NULL);
    json_t *referral = kim_agent_store_referral (self->store, id);
    json_t *timeline = referral? kim_agent_store_timeline (self->store, id): NULL;
    json_t *opening = referral && streq (kim_agent_web_i_str (referral, "role"), "recipient")
                    ? s_opening (timeline, id): NULL;
    uint64_t seq = (uint64_t) kim_agent_web_i_int (opening, "seq");
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, kim_agent_web_i_str (opening, "msg_id"));
    json_decref (timeline);
    json_decref (referral);
    if (!seq)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    json_t *record = NULL;
    int rc = kim_agent_store_inbox_erase (self->store, seq, &record);
    json_decref (record);
    if (rc) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    kim_agent_web_i_journal (self, req->session.user, "erase", id, msg_id, NULL);
    char location [KIM_ID_MAX + 32];
    snprintf (location, sizeof location, "/ui/referral/%s", id);
    return kim_agent_web_i_redirect (req, location);
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
    kim_agent_web_req_t *req;
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
    kim_agent_web_req_t *req = offer->req;
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

//  The legal-basis picker of a new referral, a forward and a handover: the
//  office's own consents that cover this recipient and purpose, the
//  statutes the policy copy (web/policy) names for this pair and purpose,
//  or a citation typed in. Its choice is the field "basis" (read by
//  kim_agent_web_i_legal_basis).
void
kim_agent_web_i_basis_picker (kim_agent_web_req_t *req, const char *recipient, const char *purpose)
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
        ||  (uint64_t) kim_agent_web_i_int (consent, "valid_until") <= now)
            continue;
        kim_agent_html_rawf (html, "<div><input type=\"radio\" id=\"basis-%zu\" name=\"basis\" "
                             "value=\"consent:", offered);
        kim_agent_html_text (html, kim_agent_web_i_str (consent, "consent"));
        kim_agent_html_rawf (html, "\"%s aria-describedby=\"basis-hint\"><label class=\"inline\" "
                             "for=\"basis-%zu\">%s ", offered? "": " checked", offered, T (CONSENT));
        kim_agent_html_text (html, kim_agent_web_i_str (consent, "consent"));
        kim_agent_html_raw (html, " (");
        kim_agent_html_text (html, T (CASE));
        kim_agent_html_raw (html, " ");
        kim_agent_html_text (html, kim_agent_web_i_str (consent, "case_id"));
        kim_agent_html_raw (html, ", ");
        kim_agent_html_text (html, kim_agent_web_i_str (consent, "subject"));
        kim_agent_html_raw (html, ", ");
        kim_agent_html_text (html, T (VALID_UNTIL));
        kim_agent_html_raw (html, " ");
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (consent, "valid_until"));
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
enum MHD_Result
kim_agent_web_i_new_page (kim_agent_web_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    const char *recipient = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                         "recipient");
    const char *purpose = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                       "purpose");
    bool chosen = recipient && purpose && kim_org_valid (recipient) && kim_code_valid (purpose);
    kim_agent_web_i_begin (req, T (NEW), "/ui/new");
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
        kim_agent_web_i_end (req);
        return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
    }
    char token [KIM_AGENT_TOKEN_HEX + 1], referral_id [32];
    kim_agent_users_token (token);
    snprintf (referral_id, sizeof referral_id, "R-%.12s", token);
    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    kim_agent_web_i_fact (req, T (TO), recipient);
    kim_agent_web_i_fact (req, T (PURPOSE), purpose);
    kim_agent_html_rawf (html, "</dl>\n<p><a href=\"/ui/new\">%s</a></p>\n"
                         "<form method=\"post\" action=\"/ui/new\">\n", T (CHANGE));
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
    kim_agent_web_i_hidden (req, "recipient", recipient);
    kim_agent_web_i_hidden (req, "purpose", purpose);
    kim_agent_web_i_form_msg_id (req);
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
    kim_agent_web_i_basis_picker (req, recipient, purpose);
    kim_agent_html_rawf (html, "<label for=\"new-note\">%s</label>\n<input type=\"text\" "
                         "id=\"new-note\" name=\"note\" maxlength=\"280\">\n"
                         "<label for=\"new-payload\">%s</label>\n<textarea id=\"new-payload\" "
                         "name=\"payload\"></textarea>\n<button type=\"submit\">%s</button>\n"
                         "</form>\n", T (NOTE), T (PAYLOAD), T (SEND));
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

enum MHD_Result
kim_agent_web_i_post_new (kim_agent_web_req_t *req)
{
    json_t *message = json_pack ("{s:s}", "type", "REFERRAL");
    if (!message) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    static const char *const keys [] = { "msg_id", "recipient", "referral_id", "case_id",
                                         "subject", "purpose", "note", "payload" };
    for (size_t i = 0; i < sizeof keys / sizeof keys [0]; i++)
        kim_agent_web_i_optional (req, message, keys [i], keys [i]);
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = 0;
    const char *deadline = kim_agent_web_i_field (req, "deadline");
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
    if (rc == 0 && !kim_agent_web_i_legal_basis (req, message)) {
        snprintf (why, sizeof why, "%s", T (LEGAL_BASIS));
        rc = -KIM_E_MISSING_FIELD;
    }
    const char *referral_id = kim_agent_web_i_field (req, "referral_id");
    if (rc == 0)
        rc = kim_agent_web_i_send (req, message, "referral", referral_id, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX + 64];
    snprintf (location, sizeof location, "/ui/sent?sent=%s", msg_id);
    return kim_agent_web_i_redirect (req, location);
}

//  A forward's second step: the new office and purpose chosen in the first
//  (a GET form on the referral's page), the legal bases that apply to them.
enum MHD_Result
kim_agent_web_i_forward_page (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_html_t *html = &req->html;
    json_t *referral = kim_agent_store_referral (req->self->store, id);
    if (!referral)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    bool allowed = s_allowed (S_FORWARD, kim_agent_web_i_str (referral, "role"),
                              kim_agent_web_i_str (referral, "state"));
    char purpose_before [KIM_CODE_MAX + 1];
    kim_str_copy (purpose_before, sizeof purpose_before, kim_agent_web_i_str (referral, "purpose"));
    json_decref (referral);
    if (!allowed || req->session.role != KIM_AGENT_ROLE_STAFF)
        return kim_agent_web_i_message_page (req, MHD_HTTP_CONFLICT, T (ERROR), T (NOT_ALLOWED), NULL);
    const char *org = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "org");
    const char *purpose = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                       "purpose");
    bool chosen = org && purpose && kim_org_valid (org) && kim_code_valid (purpose);
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s: %s %s", T (FORWARD), T (REFERRAL), id);
    kim_agent_web_i_begin (req, title, NULL);
    if (!chosen) {
        kim_agent_html_rawf (html, "<div class=\"error\" role=\"alert\"><p>%s, %s</p></div>\n"
                             "<form method=\"get\" action=\"/ui/referral/", T (FORWARD_TO),
                             T (PURPOSE_CODE));
        kim_agent_html_text (html, id);
        kim_agent_html_rawf (html, "/forward\">\n<p class=\"hint\" id=\"fw-hint\">%s</p>\n",
                             T (STEP1_HINT));
        s_forward_step1 (req, purpose && kim_code_valid (purpose)? purpose: purpose_before);
        kim_agent_html_raw (html, "</form>\n");
        kim_agent_web_i_end (req);
        return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
    }
    kim_agent_web_i_step_two (req, T (REFERRAL), "referral", id, org, purpose, "answer", "answer");
    kim_agent_web_i_hidden (req, "answer", s_answer_names [S_FORWARD]);
    kim_agent_web_i_hidden (req, "org", org);
    kim_agent_web_i_hidden (req, "purpose", purpose);
    kim_agent_web_i_form_msg_id (req);
    kim_agent_web_i_basis_picker (req, org, purpose);
    kim_agent_html_rawf (html, "<label for=\"fw-note\">%s</label>\n<input type=\"text\" "
                         "id=\"fw-note\" name=\"note\" maxlength=\"280\">\n"
                         "<button type=\"submit\">%s</button>\n</form>\n", T (NOTE), T (FORWARD));
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}
