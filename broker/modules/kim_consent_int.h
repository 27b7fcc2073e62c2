/*  kim_consent_int.h — shared between kim_consent.c (policy check, consent
    registry), kim_subject.c (access reports and erasure) and
    kim_consent_json.c (the JSON writer both use). Private. Calls go one
    way: kim_consent.c -> kim_subject.c -> kim_consent_json.c. */
#ifndef KIM_CONSENT_INT_H_INCLUDED
#define KIM_CONSENT_INT_H_INCLUDED

#include "kim/kim_policy.h"
#include "kim_hook.h"

//  Key prefixes in KIM_DB_CONSENT (see kim_consent.h).
#define KIM_CONSENT_KEY_CONSENT   'C'
#define KIM_CONSENT_KEY_RECIPIENT 'R'
#define KIM_CONSENT_KEY_SUBJECT   'S'
#define KIM_CONSENT_KEY_EXPIRY    'E'
#define KIM_CONSENT_KEY_META      'M'

typedef struct {
    kim_policy_t *policy;
    kim_buf_t json;                 //  JSON scratch (decision records, reports)
    kim_buf_t pack;                 //  MessagePack scratch
    kim_buf_t hdr;                  //  header encoding scratch
    kim_msg_t *scratch;             //  decode scratch (big: kept off the stack)
    bool allowed;                   //  `check` allowed the message now being applied
} kim_consent_mod_t;

//  Appends formatted text / a JSON string literal (quoted, escaped)
//  (kim_consent_json.c).
int
    kim_consent_json (kim_buf_t *buf, const char *format, ...);
int
    kim_consent_json_str (kim_buf_t *buf, const char *text);

//  Subject rights (kim_subject.c): ACCESS_REPORT and ERASURE.
int
    kim_subject_index (kim_ctx_t *ctx, const char *subject, uint64_t seq);
int
    kim_subject_check (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route,
                       kim_verdict_t *verdict);
int
    kim_subject_applied (kim_consent_mod_t *self, kim_ctx_t *ctx, kim_route_t *route);

#endif
