/*  kim_agent_web_cases.c — the staff page's cases and consents: the case
    list and a case's timeline, a case's handover (offered by its lead,
    answered by the office it was offered to), the consents with their
    state, recording a consent and revoking one. Part of the web module (kim_agent_web_int.h).
*/
#include <czmq.h>
#include <sodium.h>

#include "kim_agent_web_int.h"

//  Referrals offered on a handover's form (PROTOCOL.md allows 32; the
//  form's other fields share the page's limit of 32 fields)
#define S_HANDOVER_REFERRALS_MAX    20

static void
    s_handover_section (kim_agent_web_req_t *req, const char *id, json_t *record);
static json_t *
    s_open_offer (json_t *record);

//  --------------------------------------------------------------------------
//  Cases and consents

//  A link to one record's page: <a href="/ui/PREFIX/ID">ID</a>
void
kim_agent_web_i_link (kim_agent_web_req_t *req, const char *prefix, const char *id)
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

//  The case a request or a notice is limited to, or "all cases" for none.
void
kim_agent_web_i_case_cell (kim_agent_web_req_t *req, const char *case_id)
{
    if (*case_id)
        kim_agent_web_i_link (req, "case", case_id);
    else
        kim_agent_html_text (&req->html, T (ALL_CASES));
}

//  A JSON array of strings as "a, b, c".
static void
s_list_text (kim_agent_web_req_t *req, json_t *array)
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

enum MHD_Result
kim_agent_web_i_cases_page (kim_agent_web_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    json_t *cases = kim_agent_store_cases (req->self->store, NULL);
    kim_agent_web_i_begin (req, T (CASES), "/ui/cases");
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
            kim_agent_web_i_link (req, "case", kim_agent_web_i_str (item, "case_id"));
            kim_agent_html_raw (html, "</td><td>");
            kim_agent_web_i_state_text (req, kim_agent_web_i_str (item, "state"));
            //  An offer waiting for this office's answer is marked
            json_t *offer = s_open_offer (item);
            if (offer && streq (kim_agent_web_i_str (offer, "to"), req->self->config->org)) {
                kim_agent_html_raw (html, " <span class=\"mark\">");
                kim_agent_html_text (html, T (HANDOVER_OPEN));
                kim_agent_html_raw (html, "</span>");
            }
            kim_agent_html_raw (html, "</td><td>");
            kim_agent_html_text (html, *kim_agent_web_i_str (item, "lead")? kim_agent_web_i_str (item, "lead"): "–");
            kim_agent_html_rawf (html, "</td><td>%lld</td><td>", (long long) kim_agent_web_i_int (item, "events"));
            kim_agent_web_i_time_text (req, kim_agent_web_i_int (item, "updated_at"));
            kim_agent_html_raw (html, "</td></tr>\n");
        }
        kim_agent_html_raw (html, "</tbody>\n</table>\n");
    }
    json_decref (cases);
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

//  The consents this office recorded, optionally only those of `case_id`.
static void
s_consent_table (kim_agent_web_req_t *req, const char *case_id)
{
    kim_agent_html_t *html = &req->html;
    json_t *consents = kim_agent_store_consents (req->self->store, NULL);
    size_t shown = 0;
    for (size_t i = 0; i < json_array_size (consents); i++) {
        json_t *item = json_array_get (consents, i);
        if (case_id && !streq (kim_agent_web_i_str (item, "case_id"), case_id))
            continue;
        if (!shown++)
            kim_agent_html_rawf (html, "<table>\n<thead><tr><th scope=\"col\">%s</th>"
                                 "<th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                                 "<th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                                 "<th scope=\"col\">%s</th><th scope=\"col\">%s</th></tr></thead>\n"
                                 "<tbody>\n", T (CONSENT_ID), T (CASE), T (SUBJECT), T (TO),
                                 T (PURPOSE), T (VALID_UNTIL), T (STATE));
        kim_agent_html_raw (html, "<tr><td>");
        kim_agent_web_i_link (req, "consent", kim_agent_web_i_str (item, "consent"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_web_i_link (req, "case", kim_agent_web_i_str (item, "case_id"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, kim_agent_web_i_str (item, "subject"));
        kim_agent_html_raw (html, "</td><td>");
        s_list_text (req, json_object_get (item, "recipients"));
        kim_agent_html_raw (html, "</td><td>");
        s_list_text (req, json_object_get (item, "purposes"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (item, "valid_until"));
        kim_agent_html_raw (html, "</td><td class=\"state\">");
        kim_agent_web_i_state_text (req, kim_agent_web_i_str (item, "state"));
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    if (shown)
        kim_agent_html_raw (html, "</tbody>\n</table>\n");
    else
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (NONE));
    json_decref (consents);
}

enum MHD_Result
kim_agent_web_i_case_page (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_html_t *html = &req->html;
    json_t *record = kim_agent_store_case (req->self->store, id);
    if (!record)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s %s", T (CASE), id);
    kim_agent_web_i_begin (req, title, NULL);
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        kim_agent_web_i_notice_sent (req, sent);
    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    kim_agent_html_rawf (html, "<dt>%s</dt><dd class=\"state\">", T (STATE));
    kim_agent_web_i_state_text (req, kim_agent_web_i_str (record, "state"));
    kim_agent_html_raw (html, "</dd>\n");
    kim_agent_web_i_fact (req, T (LEAD), kim_agent_web_i_str (record, "lead"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (STARTED));
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (record, "created_at"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (REFERRALS));
    json_t *referrals = json_object_get (record, "referrals");
    if (!json_array_size (referrals))
        kim_agent_html_raw (html, "–");
    for (size_t i = 0; i < json_array_size (referrals); i++) {
        if (i)
            kim_agent_html_raw (html, ", ");
        kim_agent_web_i_link (req, "referral", json_string_value (json_array_get (referrals, i)));
    }
    kim_agent_html_raw (html, "</dd>\n</dl>\n");
    s_handover_section (req, id, record);

    json_t *timeline = json_object_get (record, "timeline");
    kim_agent_html_rawf (html, "<h2>%s</h2>\n<table>\n<thead><tr><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th></tr></thead>\n<tbody>\n",
                         T (CASE_TIMELINE), T (WHEN), T (MESSAGE), T (FROM), T (TO), T (REFERRAL),
                         T (DETAIL));
    for (size_t i = 0; i < json_array_size (timeline); i++) {
        json_t *item = json_array_get (timeline, i);
        kim_agent_html_raw (html, "<tr><td>");
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (item, "at"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, kim_agent_web_i_str (item, "type"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, *kim_agent_web_i_str (item, "from")? kim_agent_web_i_str (item, "from"): "–");
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, *kim_agent_web_i_str (item, "to")? kim_agent_web_i_str (item, "to"): "–");
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_web_i_link (req, "referral", kim_agent_web_i_str (item, "referral_id"));
        kim_agent_html_raw (html, "</td><td>");
        const char *parts [3] = { kim_agent_web_i_str (item, "code"), kim_agent_web_i_str (item, "org"), kim_agent_web_i_str (item, "consent") };
        bool first = true;
        for (int p = 0; p < 3; p++)
            if (*parts [p]) {
                if (!first)
                    kim_agent_html_raw (html, " · ");
                if (p == 2)
                    kim_agent_web_i_link (req, "consent", parts [p]);
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
    kim_agent_web_i_end (req);
    json_decref (record);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

//  --------------------------------------------------------------------------
//  Handover

//  The case's handover offer when it is still open, else NULL.
static json_t *
s_open_offer (json_t *record)
{
    json_t *offer = json_object_get (record, "offer");
    return streq (kim_agent_web_i_str (offer, "state"), "OPEN")? offer: NULL;
}

//  Whether this office may offer the case: it is open, no offer of it is
//  open, and the lead is this office or one the agent has not seen (then
//  the broker decides).
static bool
s_may_offer (kim_agent_web_req_t *req, json_t *record)
{
    const char *lead = kim_agent_web_i_str (record, "lead");
    return !streq (kim_agent_web_i_str (record, "state"), "CLOSED") && !s_open_offer (record)
        && (!*lead || streq (lead, req->self->config->org));
}

//  The fields of a handover's first step: the receiving office and purpose.
static void
s_handover_step1 (kim_agent_web_req_t *req, const char *id, const char *purpose)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_raw (html, "<form method=\"get\" action=\"/ui/case/");
    kim_agent_html_text (html, id);
    kim_agent_html_rawf (html, "/handover\">\n<p class=\"hint\" id=\"ho-hint\">%s</p>\n"
                         "<label for=\"ho-recipient\">%s</label>\n<input type=\"text\" "
                         "id=\"ho-recipient\" name=\"recipient\" required maxlength=\"64\" "
                         "spellcheck=\"false\" aria-describedby=\"ho-hint\">\n<label "
                         "for=\"ho-purpose\">%s</label>\n<input type=\"text\" id=\"ho-purpose\" "
                         "name=\"purpose\" required maxlength=\"32\" spellcheck=\"false\" value=\"",
                         T (STEP1_HINT), T (HANDOVER_TO), T (PURPOSE_CODE));
    kim_agent_html_text (html, purpose);
    kim_agent_html_rawf (html, "\">\n<button type=\"submit\">%s</button>\n</form>\n", T (NEXT));
}

//  A case page's handover part: the open offer with its answers for the
//  office it was made to, or the first step of an offer for the lead.
static void
s_handover_section (kim_agent_web_req_t *req, const char *id, json_t *record)
{
    kim_agent_html_t *html = &req->html;
    const char *self_org = req->self->config->org;
    bool staff = req->session.role == KIM_AGENT_ROLE_STAFF;
    json_t *offer = json_object_get (record, "offer");
    kim_agent_html_rawf (html, "<h2 id=\"handover\">%s</h2>\n", T (HANDOVER));
    if (json_is_object (offer)) {
        bool open = s_open_offer (record) != NULL;
        kim_agent_html_rawf (html, "<dl class=\"facts offer\">\n<dt>%s</dt><dd class=\"state\">",
                             open? T (HANDOVER_OPEN): T (HANDOVER_LAST));
        kim_agent_web_i_state_text (req, kim_agent_web_i_str (offer, "state"));
        kim_agent_html_raw (html, "</dd>\n");
        kim_agent_web_i_fact (req, T (FROM), kim_agent_web_i_str (offer, "from"));
        kim_agent_web_i_fact (req, T (TO), kim_agent_web_i_str (offer, "to"));
        kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (REFERRALS));
        json_t *referrals = json_object_get (offer, "referrals");
        if (!json_array_size (referrals))
            kim_agent_html_raw (html, "–");
        for (size_t i = 0; i < json_array_size (referrals); i++) {
            if (i)
                kim_agent_html_raw (html, ", ");
            kim_agent_html_text (html, json_string_value (json_array_get (referrals, i)));
        }
        kim_agent_html_raw (html, "</dd>\n</dl>\n");
        if (open && streq (kim_agent_web_i_str (offer, "to"), self_org)) {
            if (!staff) {
                kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_HINT));
                return;
            }
            static const struct { const char *answer; kim_agent_text_t legend; } answers [] = {
                { "accept", KIM_WEB_T_HANDOVER_ACCEPT }, { "decline", KIM_WEB_T_HANDOVER_DECLINE }
            };
            kim_agent_html_raw (html, "<div class=\"answers\">\n");
            for (size_t i = 0; i < 2; i++) {
                const char *legend = kim_agent_web_text (answers [i].legend, req->lang);
                kim_agent_html_raw (html, "<form method=\"post\" action=\"/ui/case/");
                kim_agent_html_text (html, id);
                kim_agent_html_rawf (html, "/handover\">\n<fieldset>\n<legend>%s</legend>\n", legend);
                kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
                kim_agent_web_i_hidden (req, "answer", answers [i].answer);
                kim_agent_web_i_form_msg_id (req);
                kim_agent_html_rawf (html, "<label for=\"ho-note-%s\">%s</label>\n<input "
                                     "type=\"text\" id=\"ho-note-%s\" name=\"note\" "
                                     "maxlength=\"280\">\n<button type=\"submit\">%s</button>\n"
                                     "</fieldset>\n</form>\n", answers [i].answer, T (NOTE),
                                     answers [i].answer, legend);
            }
            kim_agent_html_raw (html, "</div>\n");
            return;
        }
        if (open) {
            kim_agent_html_rawf (html, "<p>%s</p>\n", T (HANDOVER_WAIT));
            return;
        }
    }
    const char *lead = kim_agent_web_i_str (record, "lead");
    if (!s_may_offer (req, record)) {
        if (*lead && !streq (lead, self_org))
            kim_agent_html_rawf (html, "<p>%s</p>\n", T (NOT_LEAD));
        else
            kim_agent_html_rawf (html, "<p>%s</p>\n", T (NO_ANSWER));
        return;
    }
    if (!staff) {
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_HINT));
        return;
    }
    if (!*lead)
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (LEAD_UNKNOWN));
    s_handover_step1 (req, id, "case_handover");
}

//  A handover's second step: the receiving office and purpose chosen, the
//  subject, the open referrals to hand over and the legal bases that apply.
enum MHD_Result
kim_agent_web_i_handover_page (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_html_t *html = &req->html;
    json_t *record = kim_agent_store_case (req->self->store, id);
    if (!record)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    if (req->session.role != KIM_AGENT_ROLE_STAFF || !s_may_offer (req, record)) {
        json_decref (record);
        return kim_agent_web_i_message_page (req, MHD_HTTP_CONFLICT, T (ERROR), T (NOT_ALLOWED), NULL);
    }
    const char *recipient = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                         "recipient");
    const char *purpose = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                       "purpose");
    bool chosen = recipient && purpose && kim_org_valid (recipient) && kim_code_valid (purpose)
               && !streq (recipient, req->self->config->org);
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s: %s %s", T (HANDOVER), T (CASE), id);
    kim_agent_web_i_begin (req, title, NULL);
    if (!chosen) {
        kim_agent_html_rawf (html, "<div class=\"error\" role=\"alert\"><p>%s, %s</p></div>\n",
                             T (HANDOVER_TO), T (PURPOSE_CODE));
        s_handover_step1 (req, id, purpose && kim_code_valid (purpose)? purpose: "case_handover");
        kim_agent_web_i_end (req);
        json_decref (record);
        return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
    }
    //  The open referrals of the case, and a subject to propose: the first
    //  one a referral of the case names
    json_t *referrals = json_object_get (record, "referrals");
    json_t *open = json_array ();
    char subject [KIM_ID_MAX + 1] = "";
    for (size_t i = 0; open && i < json_array_size (referrals); i++) {
        const char *referral_id = json_string_value (json_array_get (referrals, i));
        json_t *referral = referral_id? kim_agent_store_referral (req->self->store, referral_id): NULL;
        if (referral && !*subject)
            kim_str_copy (subject, sizeof subject, kim_agent_web_i_str (referral, "subject"));
        if (referral && kim_agent_web_i_is_open (kim_agent_web_i_str (referral, "state"))
        &&  json_array_size (open) < S_HANDOVER_REFERRALS_MAX)
            json_array_append_new (open, json_string (referral_id));
        json_decref (referral);
    }
    kim_agent_web_i_step_two (req, T (CASE), "case", id, recipient, purpose, "handover", "handover");
    kim_agent_web_i_hidden (req, "answer", "offer");
    kim_agent_web_i_hidden (req, "recipient", recipient);
    kim_agent_web_i_hidden (req, "purpose", purpose);
    kim_agent_web_i_form_msg_id (req);
    kim_agent_html_rawf (html, "<label for=\"ho-subject\">%s</label>\n<input type=\"text\" "
                         "id=\"ho-subject\" name=\"subject\" maxlength=\"64\" required "
                         "spellcheck=\"false\" value=\"", T (SUBJECT));
    kim_agent_html_text (html, subject);
    kim_agent_html_rawf (html, "\">\n<fieldset>\n<legend>%s</legend>\n", T (HANDOVER_REFS));
    for (size_t i = 0; i < json_array_size (open); i++) {
        kim_agent_html_rawf (html, "<div><input type=\"checkbox\" id=\"ho-ref-%zu\" "
                             "name=\"ref-%zu\" value=\"", i, i);
        kim_agent_html_text (html, json_string_value (json_array_get (open, i)));
        kim_agent_html_rawf (html, "\" checked><label class=\"inline\" for=\"ho-ref-%zu\">", i);
        kim_agent_html_text (html, json_string_value (json_array_get (open, i)));
        kim_agent_html_raw (html, "</label></div>\n");
    }
    if (!json_array_size (open))
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (NONE));
    kim_agent_html_raw (html, "</fieldset>\n");
    kim_agent_web_i_basis_picker (req, recipient, purpose);
    kim_agent_html_rawf (html, "<label for=\"ho-note\">%s</label>\n<input type=\"text\" "
                         "id=\"ho-note\" name=\"note\" maxlength=\"280\">\n"
                         "<button type=\"submit\">%s</button>\n</form>\n", T (NOTE),
                         T (HANDOVER_OFFER));
    json_decref (open);
    json_decref (record);
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

//  Sends a handover offer (answer=offer), or the answer to the open offer
//  made to this office (accept, decline), through the outbox.
enum MHD_Result
kim_agent_web_i_post_handover (kim_agent_web_req_t *req, const char *id)
{
    json_t *record = kim_agent_store_case (req->self->store, id);
    if (!record)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    const char *answer = kim_agent_web_i_field (req, "answer");
    json_t *offer = s_open_offer (record);
    bool answering = streq (answer, "accept") || streq (answer, "decline");
    bool allowed = answering? offer && streq (kim_agent_web_i_str (offer, "to"), req->self->config->org)
                            : streq (answer, "offer") && s_may_offer (req, record);
    json_t *message = NULL;
    if (allowed && answering)
        message = json_pack ("{s:s, s:s, s:s, s:s}",
                             "type", streq (answer, "accept")? "HANDOVER_ACCEPT": "HANDOVER_DECLINE",
                             "recipient", kim_agent_web_i_str (offer, "from"), "case_id", id,
                             "ref_msg_id", kim_agent_web_i_str (offer, "msg_id"));
    else
    if (allowed)
        message = json_pack ("{s:s, s:s, s:o}", "type", "HANDOVER_OFFER", "case_id", id,
                             "referrals", json_array ());
    json_decref (record);
    if (!allowed) {
        kim_agent_web_i_journal (req->self, req->session.user, "answer_not_allowed", NULL, NULL, NULL);
        return kim_agent_web_i_message_page (req, MHD_HTTP_CONFLICT, T (ERROR), T (NOT_ALLOWED), NULL);
    }
    if (!message) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    kim_agent_web_i_optional (req, message, "msg_id", "msg_id");
    kim_agent_web_i_optional (req, message, "note", "note");
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = 0;
    if (!answering) {
        kim_agent_web_i_optional (req, message, "recipient", "recipient");
        kim_agent_web_i_optional (req, message, "subject", "subject");
        kim_agent_web_i_optional (req, message, "purpose", "purpose");
        //  The ticked referrals: fields ref-0, ref-1, ... (a name only once)
        json_t *referrals = json_object_get (message, "referrals");
        for (size_t i = 0; i < req->field_count; i++)
            if (strncmp (req->fields [i].name, "ref-", 4) == 0)
                json_array_append_new (referrals, json_string (req->fields [i].value));
        if (json_array_size (referrals) == 0)
            json_object_del (message, "referrals");
        if (!kim_agent_web_i_legal_basis (req, message)) {
            snprintf (why, sizeof why, "%s", T (LEGAL_BASIS));
            rc = -KIM_E_MISSING_FIELD;
        }
    }
    if (rc == 0)
        rc = kim_agent_web_i_send (req, message, answering? streq (answer, "accept")? "handover_accept"
                                                                                  : "handover_decline"
                                                         : "handover_offer", NULL, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX * 2 + 64];
    snprintf (location, sizeof location, "/ui/case/%s?sent=%s#handover", id, msg_id);
    return kim_agent_web_i_redirect (req, location);
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
enum MHD_Result
kim_agent_web_i_consents_page (kim_agent_web_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_web_i_begin (req, T (CONSENTS), "/ui/consents");
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        kim_agent_web_i_notice_sent (req, sent);
    s_consent_table (req, NULL);
    kim_agent_html_rawf (html, "<h2 id=\"record\">%s</h2>\n", T (CONSENT_NEW));
    if (req->session.role != KIM_AGENT_ROLE_STAFF) {
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_CONSENT));
        kim_agent_web_i_end (req);
        return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
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
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
    kim_agent_web_i_form_msg_id (req);
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
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
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

enum MHD_Result
kim_agent_web_i_post_consent (kim_agent_web_req_t *req)
{
    json_t *message = json_pack ("{s:s}", "type", "CONSENT_GRANT");
    json_t *categories = json_array ();
    if (!message || !categories) {
        json_decref (message);
        json_decref (categories);
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    static const char *const keys [] = { "msg_id", "consent", "case_id", "subject", "giver" };
    for (size_t i = 0; i < sizeof keys / sizeof keys [0]; i++)
        kim_agent_web_i_optional (req, message, keys [i], keys [i]);
    for (size_t i = 0; i < req->field_count; i++)
        if (streq (req->fields [i].name, "category"))
            json_array_append_new (categories, json_string (req->fields [i].value));
    json_object_set_new (message, "categories", categories);
    if (streq (kim_agent_web_i_field (req, "explicit"), "1"))
        json_object_set_new (message, "explicit", json_true ());
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = 0;
    json_t *recipients = s_split_list (kim_agent_web_i_field (req, "recipients"));
    json_t *purposes = s_split_list (kim_agent_web_i_field (req, "purposes"));
    json_int_t valid_until = s_end_of_day (kim_agent_web_i_field (req, "valid_until"));
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
        rc = kim_agent_web_i_send (req, message, "consent_grant", NULL, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1], consent [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    kim_str_copy (consent, sizeof consent, json_string_value (json_object_get (message, "consent")));
    json_decref (message);
    if (rc)
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX * 2 + 64];
    snprintf (location, sizeof location, "/ui/consent/%s?sent=%s", consent, msg_id);
    return kim_agent_web_i_redirect (req, location);
}

static bool
s_revocable (const char *state)
{
    return streq (state, "active") || streq (state, "pending") || streq (state, "expired");
}

enum MHD_Result
kim_agent_web_i_consent_page (kim_agent_web_req_t *req, const char *id)
{
    kim_agent_html_t *html = &req->html;
    json_t *record = kim_agent_store_consent (req->self->store, id);
    if (!record)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    char title [KIM_ID_MAX + 64];
    snprintf (title, sizeof title, "%s %s", T (CONSENT), id);
    kim_agent_web_i_begin (req, title, NULL);
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        kim_agent_web_i_notice_sent (req, sent);
    const char *state = kim_agent_web_i_str (record, "state");
    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    kim_agent_html_rawf (html, "<dt>%s</dt><dd class=\"state\">", T (STATE));
    kim_agent_web_i_state_text (req, state);
    if (*kim_agent_web_i_str (record, "error")) {
        kim_agent_html_raw (html, ": ");
        kim_agent_html_text (html, kim_agent_web_i_str (record, "error"));
        kim_agent_html_raw (html, " ");
        kim_agent_html_text (html, kim_agent_web_i_str (record, "text"));
    }
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (CASE));
    kim_agent_web_i_link (req, "case", kim_agent_web_i_str (record, "case_id"));
    kim_agent_html_raw (html, "</dd>\n");
    kim_agent_web_i_fact (req, T (SUBJECT), kim_agent_web_i_str (record, "subject"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (TO));
    s_list_text (req, json_object_get (record, "recipients"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (PURPOSE));
    s_list_text (req, json_object_get (record, "purposes"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (CATEGORIES));
    s_list_text (req, json_object_get (record, "categories"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (VALID_UNTIL_DATE));
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (record, "valid_until"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (RECORDED));
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (record, "recorded_at"));
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
        kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
        kim_agent_web_i_form_msg_id (req);
        kim_agent_html_rawf (html, "<div><input type=\"checkbox\" id=\"revoke-confirm\" "
                             "name=\"confirm\" value=\"1\" required aria-describedby=\"revoke-hint\">"
                             "<label class=\"inline\" for=\"revoke-confirm\">%s</label></div>\n"
                             "<button type=\"submit\">%s</button>\n</fieldset>\n</form>\n",
                             T (REVOKE_CONFIRM), T (REVOKE));
    }
    kim_agent_html_rawf (html, "<p><a href=\"/ui/consents\">%s</a></p>\n", T (CONSENTS));
    kim_agent_web_i_end (req);
    json_decref (record);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

enum MHD_Result
kim_agent_web_i_post_revoke (kim_agent_web_req_t *req, const char *id)
{
    json_t *record = kim_agent_store_consent (req->self->store, id);
    if (!record)
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND), NULL);
    bool revocable = s_revocable (kim_agent_web_i_str (record, "state"));
    json_t *message = json_pack ("{s:s, s:s}", "type", "CONSENT_REVOKE", "consent", id);
    if (message && *kim_agent_web_i_str (record, "case_id"))
        json_object_set_new (message, "case_id", json_string (kim_agent_web_i_str (record, "case_id")));
    json_decref (record);
    if (!message) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    kim_agent_web_i_optional (req, message, "msg_id", "msg_id");
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = 0;
    if (!streq (kim_agent_web_i_field (req, "confirm"), "1")) {
        snprintf (why, sizeof why, "%s", T (CONFIRM_MISSING));
        rc = -KIM_E_MISSING_FIELD;
    }
    else
    if (!revocable) {
        //  A resubmitted form of a revocation already sent is that same message
        json_t *earlier = kim_agent_store_outbox_get (req->self->store, kim_agent_web_i_field (req, "msg_id"));
        json_decref (earlier);
        if (!earlier) {
            kim_agent_web_i_journal (req->self, req->session.user, "revoke_not_allowed", NULL, NULL, NULL);
            json_decref (message);
            return kim_agent_web_i_message_page (req, MHD_HTTP_CONFLICT, T (ERROR), T (NO_REVOKE), NULL);
        }
    }
    if (rc == 0)
        rc = kim_agent_web_i_send (req, message, "consent_revoke", NULL, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE), why);
    char location [KIM_ID_MAX * 2 + 64];
    snprintf (location, sizeof location, "/ui/consent/%s?sent=%s", id, msg_id);
    return kim_agent_web_i_redirect (req, location);
}

//  "/ui/PREFIX/ID[/rest]": copies a valid ID and returns the rest ("" or
//  "/..."), or NULL when the url is not of this form.
const char *
kim_agent_web_i_path_id (const char *url, const char *prefix, char *id)
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
