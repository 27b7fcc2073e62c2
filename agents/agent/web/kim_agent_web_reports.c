/*  kim_agent_web_reports.c — the staff page's access reports (Art. 15
    DSGVO, § 83 SGB X): a person asks which of their data the office passed
    on; staff request the broker's report (ACCESS_REPORT, answered from its
    log) and read it here, one transfer a row, to hand to the person.

    Opening a report shows personal data, so it is journaled (`open_report`,
    by the request's msg_id) as opening a referral's content is.
*/
#include <czmq.h>

#include "kim_agent_web_int.h"

//  Newest first: the store lists them by msg_id.
static int
s_compare_requested (const void *a, const void *b)
{
    json_int_t x = kim_agent_web_i_int (*(json_t *const *) a, "requested_at");
    json_int_t y = kim_agent_web_i_int (*(json_t *const *) b, "requested_at");
    return x > y? -1: x < y? 1: 0;
}

static void
s_status (kim_agent_web_req_t *req, json_t *record)
{
    kim_agent_web_i_state_text (req, kim_agent_web_i_str (record, "status"));
    if (*kim_agent_web_i_str (record, "error")) {
        kim_agent_html_raw (&req->html, ": ");
        kim_agent_html_text (&req->html, kim_agent_web_i_str (record, "error"));
        kim_agent_html_raw (&req->html, " ");
        kim_agent_html_text (&req->html, kim_agent_web_i_str (record, "text"));
    }
}

static void
s_request_form (kim_agent_web_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_rawf (html, "<h2 id=\"request\">%s</h2>\n", T (REPORT_REQUEST));
    if (req->session.role != KIM_AGENT_ROLE_STAFF) {
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (READONLY_REPORT));
        return;
    }
    kim_agent_html_raw (html, "<form method=\"post\" action=\"/ui/reports\" "
                              "aria-describedby=\"reports-hint\">\n");
    kim_agent_web_i_hidden (req, "csrf", req->session.csrf);
    kim_agent_web_i_form_msg_id (req);
    kim_agent_html_rawf (html, "<label for=\"ar-subject\">%s</label>\n<input type=\"text\" "
                         "id=\"ar-subject\" name=\"subject\" maxlength=\"%d\" required "
                         "spellcheck=\"false\">\n<label for=\"ar-case\">%s</label>\n"
                         "<input type=\"text\" id=\"ar-case\" name=\"case_id\" maxlength=\"%d\" "
                         "spellcheck=\"false\">\n<p><button type=\"submit\">%s</button></p>\n</form>\n",
                         T (SUBJECT), KIM_ID_MAX, T (CASE_ONLY), KIM_ID_MAX, T (REPORT_REQUEST));
}

enum MHD_Result
kim_agent_web_i_reports_page (kim_agent_web_req_t *req)
{
    kim_agent_html_t *html = &req->html;
    json_t *reports = kim_agent_store_reports (req->self->store);
    size_t count = json_array_size (reports);
    json_t **rows = (json_t **) calloc (count + 1, sizeof (json_t *));
    if (!rows) {
        json_decref (reports);
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    for (size_t i = 0; i < count; i++)
        rows [i] = json_array_get (reports, i);
    qsort (rows, count, sizeof (json_t *), s_compare_requested);
    kim_agent_web_i_begin (req, T (REPORTS), "/ui/reports");
    const char *sent = MHD_lookup_connection_value (req->connection, MHD_GET_ARGUMENT_KIND, "sent");
    if (sent && kim_id_valid (sent))
        kim_agent_web_i_notice_sent (req, sent);
    kim_agent_html_rawf (html, "<p class=\"hint\" id=\"reports-hint\">%s</p>\n", T (REPORTS_HINT));
    kim_agent_html_rawf (html, "<table>\n<caption>%s (%zu)</caption>\n<thead><tr>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s"
                         "</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th></tr></thead>\n"
                         "<tbody>\n", T (REPORTS), count, T (REQUESTED), T (SUBJECT), T (CASE),
                         T (STATE), T (REPORT));
    for (size_t i = 0; i < count; i++) {
        json_t *row = rows [i];
        kim_agent_html_raw (html, "<tr><td>");
        kim_agent_web_i_time_text (req, kim_agent_web_i_int (row, "requested_at"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, kim_agent_web_i_str (row, "subject"));
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_web_i_case_cell (req, kim_agent_web_i_str (row, "case_id"));
        kim_agent_html_raw (html, "</td><td class=\"state\">");
        s_status (req, row);
        kim_agent_html_raw (html, "</td><td>");
        if (streq (kim_agent_web_i_str (row, "status"), "answered")) {
            //  The link names the person: "Show" alone, repeated, would not say which
            kim_agent_html_raw (html, "<a href=\"/ui/report/");
            kim_agent_html_text (html, kim_agent_web_i_str (row, "msg_id"));
            kim_agent_html_rawf (html, "\">%s<span class=\"visually-hidden\"> ", T (SHOW));
            kim_agent_html_text (html, kim_agent_web_i_str (row, "subject"));
            kim_agent_html_raw (html, "</span></a>");
        }
        kim_agent_html_raw (html, "</td></tr>\n");
    }
    if (count == 0)
        kim_agent_html_rawf (html, "<tr><td colspan=\"5\">%s</td></tr>\n", T (NONE));
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
    free (rows);
    json_decref (reports);
    s_request_form (req);
    kim_agent_web_i_end (req);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

//  A transfer's legal basis as the report gives it: the kind, and the
//  consent or the statute it names.
static void
s_basis_cell (kim_agent_web_req_t *req, json_t *transfer)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_text (html, kim_agent_web_i_str (transfer, "basis"));
    const char *named = *kim_agent_web_i_str (transfer, "consent_id")
                      ? kim_agent_web_i_str (transfer, "consent_id")
                      : kim_agent_web_i_str (transfer, "citation");
    if (*named) {
        kim_agent_html_raw (html, " ");
        kim_agent_html_text (html, named);
    }
    //  The policy rule that allowed it, for whoever checks the answer
    if (*kim_agent_web_i_str (transfer, "rule")) {
        kim_agent_html_rawf (html, " (%s ", T (RULE));
        kim_agent_html_text (html, kim_agent_web_i_str (transfer, "rule"));
        kim_agent_html_raw (html, ")");
    }
}

static void
s_transfer_row (kim_agent_web_req_t *req, json_t *transfer)
{
    kim_agent_html_t *html = &req->html;
    kim_agent_html_raw (html, "<tr><td>");
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (transfer, "time"));
    static const char *const texts [] = { "type", "from", "to" };
    for (size_t i = 0; i < sizeof texts / sizeof texts [0]; i++) {
        kim_agent_html_raw (html, "</td><td>");
        kim_agent_html_text (html, kim_agent_web_i_str (transfer, texts [i]));
    }
    kim_agent_html_raw (html, "</td><td>");
    kim_agent_html_text (html, kim_agent_web_i_str (transfer, "case_id"));
    kim_agent_html_raw (html, "</td><td>");
    kim_agent_html_text (html, kim_agent_web_i_str (transfer, "purpose"));
    kim_agent_html_raw (html, "</td><td>");
    json_t *categories = json_object_get (transfer, "categories");
    for (size_t i = 0; i < json_array_size (categories); i++) {
        const char *category = json_string_value (json_array_get (categories, i));
        kim_agent_html_text (html, i? ", ": "");
        kim_agent_html_text (html, category? category: "");
    }
    kim_agent_html_raw (html, "</td><td>");
    s_basis_cell (req, transfer);
    kim_agent_html_raw (html, "</td><td>");
    kim_agent_html_text (html, streq (kim_agent_web_i_str (transfer, "payload"), "erased")
                               ? T (ERASED): T (KEPT));
    kim_agent_html_raw (html, "</td></tr>\n");
}

enum MHD_Result
kim_agent_web_i_report_page (kim_agent_web_req_t *req, const char *msg_id)
{
    kim_agent_html_t *html = &req->html;
    json_t *record = kim_agent_store_report (req->self->store, msg_id);
    json_t *report = json_object_get (record, "report");
    if (!json_is_object (report)) {
        json_decref (record);
        return kim_agent_web_i_message_page (req, MHD_HTTP_NOT_FOUND, T (NOT_FOUND), T (NOT_FOUND),
                                             NULL);
    }
    kim_agent_web_i_journal (req->self, req->session.user, "open_report", NULL, msg_id, NULL);
    kim_agent_web_i_begin (req, T (REPORT), NULL);
    kim_agent_html_raw (html, "<dl class=\"facts\">\n");
    kim_agent_web_i_fact (req, T (SUBJECT), kim_agent_web_i_str (report, "subject"));
    kim_agent_html_rawf (html, "<dt>%s</dt><dd>", T (CASE));
    kim_agent_web_i_case_cell (req, kim_agent_web_i_str (report, "case_id"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (REQUESTED));
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (record, "requested_at"));
    kim_agent_html_rawf (html, "</dd>\n<dt>%s</dt><dd>", T (MADE_AT));
    kim_agent_web_i_time_text (req, kim_agent_web_i_int (report, "generated_at"));
    kim_agent_html_raw (html, "</dd>\n</dl>\n");
    json_t *transfers = json_object_get (report, "transfers");
    size_t count = json_array_size (transfers);
    kim_agent_html_rawf (html, "<table>\n<caption>%s (%zu)</caption>\n<thead><tr>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s"
                         "</th><th scope=\"col\">%s</th><th scope=\"col\">%s</th>"
                         "<th scope=\"col\">%s</th><th scope=\"col\">%s</th><th scope=\"col\">%s"
                         "</th><th scope=\"col\">%s</th></tr></thead>\n<tbody>\n", T (TRANSFERS),
                         count, T (WHEN), T (MESSAGE), T (FROM), T (TO), T (CASE), T (PURPOSE),
                         T (DATA_CATEGORIES), T (LEGAL_BASIS), T (CONTENT));
    for (size_t i = 0; i < count; i++)
        s_transfer_row (req, json_array_get (transfers, i));
    if (count == 0)
        kim_agent_html_rawf (html, "<tr><td colspan=\"9\">%s</td></tr>\n", T (NONE));
    kim_agent_html_raw (html, "</tbody>\n</table>\n");
    if (json_is_false (json_object_get (report, "last")))
        kim_agent_html_rawf (html, "<p>%s</p>\n", T (REPORT_MORE));
    kim_agent_html_rawf (html, "<p><a href=\"/ui/reports\">%s</a></p>\n", T (REPORTS));
    kim_agent_web_i_end (req);
    json_decref (record);
    return kim_agent_web_i_send_page (req, MHD_HTTP_OK);
}

enum MHD_Result
kim_agent_web_i_post_report (kim_agent_web_req_t *req)
{
    json_t *message = json_pack ("{s:s, s:s}", "type", "ACCESS_REPORT", "subject",
                                 kim_agent_web_i_field (req, "subject"));
    if (!message) {
        req->html.failed = true;
        return kim_agent_web_i_send_page (req, MHD_HTTP_SERVICE_UNAVAILABLE);
    }
    kim_agent_web_i_optional (req, message, "case_id", "case_id");
    kim_agent_web_i_optional (req, message, "msg_id", "msg_id");
    char why [KIM_TEXT_MAX + 64] = "";
    int rc = kim_agent_web_i_send (req, message, "access_report", NULL, why, sizeof why);
    const char *msg_id = json_string_value (json_object_get (message, "msg_id"));
    char location [KIM_ID_MAX + 32];
    snprintf (location, sizeof location, "/ui/reports?sent=%s", msg_id? msg_id: "");
    json_decref (message);
    if (rc)
        return kim_agent_web_i_message_page (req, MHD_HTTP_BAD_REQUEST, T (ERROR), T (REFUSED_NOTICE),
                                             why);
    return kim_agent_web_i_redirect (req, location);
}
