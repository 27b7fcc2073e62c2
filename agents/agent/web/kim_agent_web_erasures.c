/*  kim_agent_web_erasures.c — the staff page's erasures (Art. 17, 19 DSGVO;
    § 84 SGB X): the broker's notices that another office erased what it had
    sent about a person, dealt with one by one (erase this office's copies in
    the agent, or keep them on a basis of its own); and a person's request
    for erasure, sent to the broker for this office's own transfers.

    A notice names the transfers it covers by the seqs this office received
    them with (PROTOCOL.md 9.3), and erasing erases exactly those; a notice
    without them (from a broker before that) erases every copy about the
    person.

    Nothing here writes the person's pseudonym into the journal or the
    system log: entries name the notice's or the request's msg_id, which the
    agent's store ties to the person.
*/
#include <czmq.h>

#include "kim_agent_web_int.h"

#define S_NOTICES_MAX   200             //  notices shown, each list
#define S_SEQS_MAX      4096            //  seqs a notice names (its part)
#define S_LINKS_MAX     10              //  referrals a notice's row links

//  The seqs a notice (a delivery read with its payload) names, into `seqs`
//  (room for S_SEQS_MAX). Returns how many; 0 for a notice that names none.
static size_t
s_notice_seqs (json_t *notice, uint64_t *seqs)
{
    json_t *named = json_loads (kim_agent_web_i_str (notice, "payload"), 0, NULL);
    json_t *list = json_object_get (named, "seqs");
    size_t count = 0;
    for (size_t i = 0; i < json_array_size (list) && count < S_SEQS_MAX; i++) {
        json_int_t value = json_integer_value (json_array_get (list, i));
        if (value > 0)
            seqs [count++] = (uint64_t) value;
    }
    json_decref (named);
    return count;
}

//  The referrals of the named deliveries this agent has, as links.
static void
s_named_links (kim_agent_web_req_t *req, const uint64_t *seqs, size_t count)
{
    kim_agent_html_t *html = &req->html;
    size_t shown = 0;
    for (size_t i = 0; i < count && shown < S_LINKS_MAX; i++) {
        json_t *delivery = kim_agent_store_inbox_get (req->self->store, seqs [i]);
        const char *referral_id = kim_agent_web_i_str (delivery, "referral_id");
        if (*referral_id) {
            kim_agent_html_raw (html, shown? ", ": "<p>");
            kim_agent_web_i_link (req, "referral", referral_id);
            shown++;
        }
        json_decref (delivery);
    }
    if (shown)
        kim_agent_html_raw (html, "</p>\n");
}

static void
s_notice_row (kim_agent_web_req_t *req, json_t *notice, bool handled)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_raw (html, "<tr><td>");
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (notice, "received_at"));
    kim_agent_html_raw (html, "</td><td>");
    kim_agent_html_text (html, kim_agent_web_i_str (notice, "subject"));
    kim_agent_html_raw (html, "</td><td>");
    kim_agent_web_i_case_cell (req, kim_agent_web_i_str (notice, "case_id"));
    kim_agent_html_raw (html, "</td><td>");
    json_int_t seq = kim_agent_web_i_int (notice, "seq");
    //  The list leaves payloads out: the notice's own is read here
    json_t *full = kim_agent_store_inbox_get (req->self->store, (uint64_t) seq);
    uint64_t *seqs = (uint64_t *) malloc (S_SEQS_MAX * sizeof (uint64_t));
    size_t named = seqs? s_notice_seqs (full, seqs): 0;
    json_decref (full);
    if (named)
        s_named_links (req, seqs, named);
    free (seqs);
    if (handled) {
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (notice, "handled_at"));
        kim_agent_html_raw (html, "</td></tr>\n");
        return;
    }
    if (req->session.role != KIM_AGENT_ROLE_STAFF) {
        kim_agent_html_text (html, T (OPEN_NOTICE));
        kim_agent_html_raw (html, "</td></tr>\n");
        return;
    }
    //  Erasing needs the box ticked (here and at the server); keeping the
    //  copies does not, so its button skips the form's check
    kim_agent_html_rawf (html, "<form method=\"post\" action=\"/ui/erasures/%" JSON_INTEGER_FORMAT
                         "\">\n", seq);
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
    kim_agent_html_rawf (html, "<div><input type=\"checkbox\" id=\"en-%" JSON_INTEGER_FORMAT "\" "
                         "name=\"confirm\" value=\"yes\" required><label class=\"inline\" "
                         "for=\"en-%" JSON_INTEGER_FORMAT "\">", seq, seq);
    if (named)
        kim_agent_html_rawf (html, "%s (%zu)", T (ERASE_NAMED_CONFIRM), named);
    else
        kim_agent_html_text (html, T (ERASE_COPIES_CONFIRM));
    kim_agent_html_rawf (html, "</label></div>\n"
                         "<button type=\"submit\" name=\"do\" value=\"erase\">%s</button>\n"
                         "<button type=\"submit\" name=\"do\" value=\"keep\" formnovalidate>%s"
                         "</button>\n</form></td></tr>\n", T (ERASE_COPIES), T (KEEP_COPIES));
}

static void
s_notice_table (kim_agent_web_req_t *req, bool handled)
{
    kim_agent_html_t *html = &req->html;
    //  Those still open from the oldest (the page shows the first of them
    //  latest first); those dealt with all, to show the latest
    json_t *notices = kim_agent_store_inbox_list (req->self->store, 0,
                                                  handled? SIZE_MAX: S_NOTICES_MAX, handled,
                                                  "ERASURE");
    size_t count = json_array_size (notices);
    kim_agent_html_raw (html, "<table>\n<caption>");
    kim_agent_html_text (html, handled? T (NOTICES_DONE): T (NOTICES_OPEN));
    kim_agent_html_rawf (html, " (%zu)</caption>\n<thead><tr><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s"
                         "</th></tr></thead>\n<tbody>\n", count, T (RECEIVED), T (SUBJECT),
                         T (CASE), handled? T (DEALT_WITH): T (ACTION));
    //  The latest first: the store lists them oldest first
    for (size_t i = count; i > 0 && count - i < S_NOTICES_MAX; i--)
        s_notice_row (req, json_array_get (notices, i - 1), handled);
    if (count == 0)
        kim_agent_html_rawf (html, "<tr><td colspan=\"4\">%s</td></tr>\n", T (NONE));
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
    json_decref (notices);
}

static void
s_request_form (kim_agent_web_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_rawf (html, "<h2 id=\"request\">%s</h2>\n", T (ERASURE_REQUEST));
    if (req->session.role != KIM_AGENT_ROLE_STAFF) {
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_ERASURE));
        return;
    }
    kim_agent_html_rawf (html, "<p class=\"hint\" id=\"er-hint\">%s</p>\n"
                         "<form method=\"post\" action=\"/ui/erasures\" "
                         "aria-describedby=\"er-hint\">\n", T (ERASURE_REQUEST_HINT));
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
    kim_agent_web_i_form_msg_id (req);
    kim_agent_html_rawf (html, "<label for=\"er-subject\">%s</label>\n<input type=\"text\" "
                         "id=\"er-subject\" name=\"subject\" maxlength=\"%d\" required "
                         "spellcheck=\"false\">\n<label for=\"er-case\">%s</label>\n"
                         "<input type=\"text\" id=\"er-case\" name=\"case_id\" maxlength=\"%d\" "
                         "spellcheck=\"false\">\n", T (SUBJECT), KIM_ID_MAX, T (CASE_ONLY),
                         KIM_ID_MAX);
    kim_agent_html_rawf (html, "<div><input type=\"checkbox\" id=\"er-local\" name=\"also_local\" "
                         "value=\"yes\"><label class=\"inline\" for=\"er-local\">%s</label></div>\n"
                         "<div><input type=\"checkbox\" id=\"er-confirm\" name=\"confirm\" "
                         "value=\"yes\" required><label class=\"inline\" for=\"er-confirm\">%s"
                         "</label></div>\n<button type=\"submit\">%s</button>\n</form>\n",
                         T (ERASE_ALSO_LOCAL), T (ERASURE_REQUEST_CONFIRM), T (ERASURE_REQUEST));
}

enum MHD_Result
kim_agent_web_i_erasures_page (kim_agent_web_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_web_i_begin (req, T (ERASURES), "/ui/erasures");
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        kim_agent_web_i_notice_sent (req, sent);
    const char *erased = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND,
                                                      "erased");
    if (erased && streq (erased, "1"))
        kim_agent_html_rawf (html, "<div class=\"notice\" role=\"status\"><p>%s</p></div>\n",
                             T (ERASED_DONE));
    kim_agent_html_rawf (html, "<h2 id=\"notices\">%s</h2>\n<p class=\"hint\">%s</p>\n",
                         T (ERASURE_NOTICES), T (ERASURE_NOTICES_HINT));
    s_notice_table (req, false);
    s_notice_table (req, true);
    s_request_form (req);
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

//  Erases every payload about `subject` in the agent. Returns 0 or a
//  negative error.
static int
s_erase_local (kim_agent_web_req_t *req, const char *subject)
{
    json_t *result = NULL;
    int rc = kim_agent_store_subject_erase (req->self->store, subject, &result);
    json_decref (result);
    return rc;
}

//  Back to the page, which says what was sent and whether copies went.
static enum MHD_Result
s_done (kim_agent_web_req_t *req, const char *msg_id, bool erased)
{
    char location [KIM_ID_MAX + 64];
    snprintf (location, sizeof location, "/ui/erasures%s%s%s", msg_id? "?sent=": "",
              msg_id? msg_id: "", !erased? "": msg_id? "&erased=1": "?erased=1");
    return kim_agent_web_i_redirect (req, location);
}

enum MHD_Result
kim_agent_web_i_post_erasure (kim_agent_web_req_t *req)
{
    kim_agent_web_t *self = req->self;
    const char *subject = kim_agent_web_i_field (req, "subject");
    const char *case_id = kim_agent_web_i_field (req, "case_id");
    if (!streq (kim_agent_web_i_field (req, "confirm"), "yes"))
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR),
                                             T (ERASE_UNCONFIRMED), NULL);
    json_t *message = json_pack ("{s:s, s:s}", "type", "ERASURE", "subject", subject);
    if (!message) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    if (*case_id)
        json_object_set_new (message, "case_id", json_string (case_id));
    kim_agent_web_i_optional (req, message, "msg_id", "msg_id");
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = kim_agent_web_i_send (req, message, "erasure_request", NULL, why, sizeof why);
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, json_string_value (json_object_get (message, "msg_id")));
    json_decref (message);
    if (rc)
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE),
                                             why);
    //  The request is in the outbox; the agent's own copies go only when
    //  asked for, and only once the subject was a valid one (the send
    //  checked it)
    bool local = streq (kim_agent_web_i_field (req, "also_local"), "yes");
    if (local) {
        if (s_erase_local (req, subject)) {
            req->html.failed = true;
            return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
        }
        kim_agent_web_i_journal (self, req->session.user, "erase_subject", NULL, msg_id, NULL);
    }
    return s_done (req, msg_id, local);
}

enum MHD_Result
kim_agent_web_i_post_notice (kim_agent_web_req_t *req, uint64_t seq)
{
    kim_agent_web_t *self = req->self;
    const char *what = kim_agent_web_i_field (req, "do");
    bool erase = streq (what, "erase");
    if (!erase && !streq (what, "keep"))
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR),
                                             T (MALFORMED_FORM), NULL);
    if (erase && !streq (kim_agent_web_i_field (req, "confirm"), "yes"))
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR),
                                             T (ERASE_UNCONFIRMED), NULL);
    json_t *notice = kim_agent_store_inbox_get (self->store, seq);
    json_t *header = json_object_get (notice, "header");
    if (!notice || !streq (kim_agent_web_i_str (notice, "type"), "ERASURE")
    ||  !*kim_agent_web_i_str (header, "subject")) {
        json_decref (notice);
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND),
                                             NULL);
    }
    char msg_id [KIM_ID_MAX + 1];
    kim_str_copy (msg_id, sizeof msg_id, kim_agent_web_i_str (notice, "msg_id"));
    //  Erased first, then marked: a failure between leaves the notice open
    //  to be dealt with again, and erasing twice is harmless
    int rc = 0;
    if (erase) {
        uint64_t *seqs = (uint64_t *) malloc (S_SEQS_MAX * sizeof (uint64_t));
        size_t named = seqs? s_notice_seqs (notice, seqs): 0;
        json_t *result = NULL;
        rc = !seqs? -KIM_E_NOMEM
           : named? kim_agent_store_inbox_erase_seqs (self->store, seqs, named, &result)
                  : s_erase_local (req, kim_agent_web_i_str (header, "subject"));
        json_decref (result);
        free (seqs);
    }
    json_decref (notice);
    json_t *record = NULL;
    if (rc == 0)
        rc = kim_agent_store_inbox_handled (self->store, seq, &record);
    json_decref (record);
    if (rc) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    kim_agent_web_i_journal (self, req->session.user, erase? "erasure_notice_erase"
                                                           : "erasure_notice_keep", NULL, msg_id,
                             NULL);
    return s_done (req, NULL, erase);
}
