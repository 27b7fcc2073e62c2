/*  kim_agent_web_int.h — what the staff web page's files share: a
    request being answered and the helpers every page uses. The page is one
    module in three files: kim_agent_web.c (requests, journal, page frame,
    sign-in, dispatch), kim_agent_web_referrals.c (the lists, a referral, the
    answers and new referrals, the legal-basis picker),
    kim_agent_web_cases.c (cases, handovers and consents),
    kim_agent_web_reports.c (access reports) and kim_agent_web_erasures.c
    (erasure notices and requests).
*/
#ifndef KIM_AGENT_WEB_INT_H_INCLUDED
#define KIM_AGENT_WEB_INT_H_INCLUDED

#include <pthread.h>

#include <czmq.h>

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
} kim_agent_web_field_t;

//  One request being answered.
typedef struct {
    kim_agent_web_t *self;
    struct MHD_Connection *connection;
    const char *url;
    int lang;                           //  0 de, 1 en
    bool signed_in;
    kim_agent_session_t session;
    char address [64];
    kim_agent_web_field_t fields [S_FIELDS_MAX];
    size_t field_count;
    char *cookies [S_COOKIES_MAX];      //  Set-Cookie values to send
    size_t cookie_count;
    kim_agent_html_t html;
} kim_agent_web_req_t;

#define T(key) kim_agent_web_text (KIM_WEB_T_##key, req->lang)

//  kim_agent_web.c
void
    kim_agent_web_i_begin (kim_agent_web_req_t *req, const char *title, const char *current);
void
    kim_agent_web_i_end (kim_agent_web_req_t *req);
const char *
    kim_agent_web_i_field (kim_agent_web_req_t *req, const char *name);
void
    kim_agent_web_i_form_msg_id (kim_agent_web_req_t *req);
void
    kim_agent_web_i_hidden (kim_agent_web_req_t *req, const char *name, const char *value);
void
    kim_agent_web_i_journal (kim_agent_web_t *self, const char *user, const char *action,
                             const char *referral_id, const char *msg_id, const char *address);
enum MHD_Result
    kim_agent_web_i_message_page (kim_agent_web_req_t *req, unsigned status, const char *title,
                                  const char *text, const char *detail);
enum MHD_Result
    kim_agent_web_i_redirect (kim_agent_web_req_t *req, const char *location);
enum MHD_Result
    kim_agent_web_i_send_page (kim_agent_web_req_t *req, unsigned status);
void
    kim_agent_web_i_state_text (kim_agent_web_req_t *req, const char *state);
void
    kim_agent_web_i_time_text (kim_agent_web_req_t *req, json_int_t ms);
void
    kim_agent_web_i_step_two (kim_agent_web_req_t *req, const char *label, const char *kind,
                              const char *id, const char *recipient, const char *purpose,
                              const char *anchor, const char *action);

//  kim_agent_web_referrals.c
void
    kim_agent_web_i_basis_picker (kim_agent_web_req_t *req, const char *recipient,
                                  const char *purpose);
void
    kim_agent_web_i_fact (kim_agent_web_req_t *req, const char *term, const char *value);
enum MHD_Result
    kim_agent_web_i_forward_page (kim_agent_web_req_t *req, const char *id);
json_int_t
    kim_agent_web_i_int (json_t *record, const char *key);
bool
    kim_agent_web_i_is_open (const char *state);
bool
    kim_agent_web_i_legal_basis (kim_agent_web_req_t *req, json_t *message);
enum MHD_Result
    kim_agent_web_i_list (kim_agent_web_req_t *req, bool received);
enum MHD_Result
    kim_agent_web_i_new_page (kim_agent_web_req_t *req);
void
    kim_agent_web_i_notice_sent (kim_agent_web_req_t *req, const char *msg_id);
void
    kim_agent_web_i_optional (kim_agent_web_req_t *req, json_t *message, const char *field,
                              const char *key);
enum MHD_Result
    kim_agent_web_i_post_answer (kim_agent_web_req_t *req, const char *id);
enum MHD_Result
    kim_agent_web_i_post_erase (kim_agent_web_req_t *req, const char *id);
enum MHD_Result
    kim_agent_web_i_post_new (kim_agent_web_req_t *req);
enum MHD_Result
    kim_agent_web_i_referral_page (kim_agent_web_req_t *req, const char *id);
int
    kim_agent_web_i_send (kim_agent_web_req_t *req, json_t *message, const char *action,
                          const char *referral_id, char *why, size_t why_size);
const char *
    kim_agent_web_i_str (json_t *record, const char *key);

//  kim_agent_web_cases.c
void
    kim_agent_web_i_case_cell (kim_agent_web_req_t *req, const char *case_id);
enum MHD_Result
    kim_agent_web_i_case_page (kim_agent_web_req_t *req, const char *id);
enum MHD_Result
    kim_agent_web_i_cases_page (kim_agent_web_req_t *req);
enum MHD_Result
    kim_agent_web_i_handover_page (kim_agent_web_req_t *req, const char *id);
enum MHD_Result
    kim_agent_web_i_consent_page (kim_agent_web_req_t *req, const char *id);
enum MHD_Result
    kim_agent_web_i_consents_page (kim_agent_web_req_t *req);
void
    kim_agent_web_i_link (kim_agent_web_req_t *req, const char *prefix, const char *id);
const char *
    kim_agent_web_i_path_id (const char *url, const char *prefix, char *id);
enum MHD_Result
    kim_agent_web_i_post_consent (kim_agent_web_req_t *req);
enum MHD_Result
    kim_agent_web_i_post_handover (kim_agent_web_req_t *req, const char *id);
enum MHD_Result
    kim_agent_web_i_post_revoke (kim_agent_web_req_t *req, const char *id);

//  kim_agent_web_reports.c
enum MHD_Result
    kim_agent_web_i_post_report (kim_agent_web_req_t *req);
enum MHD_Result
    kim_agent_web_i_report_page (kim_agent_web_req_t *req, const char *msg_id);
enum MHD_Result
    kim_agent_web_i_reports_page (kim_agent_web_req_t *req);

//  kim_agent_web_erasures.c
enum MHD_Result
    kim_agent_web_i_erasures_page (kim_agent_web_req_t *req);
enum MHD_Result
    kim_agent_web_i_post_erasure (kim_agent_web_req_t *req);
enum MHD_Result
    kim_agent_web_i_post_notice (kim_agent_web_req_t *req, uint64_t seq);

#endif
