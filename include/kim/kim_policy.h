/*  kim_policy.h — kim's data-sharing policy: parse, lint, decide, explain.

    The policy is a readable ZPL file (deploy/policy.cfg is the default) of
    ordered rules over the transfer's facts: sender agency type and whether
    the sender is a public body, recipient agency type, message type,
    purpose, data-category flags and whether a subject pseudonym travels.
    The first rule that matches decides: deny, or allow on a legal basis
    (a statute the rule lists, or a registered consent whose scope covers
    the transfer). No rule matching means deny (default deny).

    The engine is pure: no store, no sockets, no clock of its own. The
    broker (broker/kim_consent.c) and the `kim policy` tool link the same
    code; consents come in through a lookup callback. Rules are compiled at
    load, so a decision costs a few comparisons per rule tried.
*/
#ifndef KIM_POLICY_H_INCLUDED
#define KIM_POLICY_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kim_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _kim_policy_t kim_policy_t;

#define KIM_RULE_MAX        32      //  bytes of a rule id (kim_id_valid)
#define KIM_LAW_MAX         160     //  bytes of a rule's `law` text
#define KIM_POLICY_ERROR_MAX 256

//  A consent as the registry holds it. The lookup fills it; `revoked` and
//  `valid_until` are judged by the engine against `now`.
typedef struct {
    char id [KIM_ID_MAX + 1];
    char subject [KIM_SUBJECT_MAX + 1];
    char case_id [KIM_ID_MAX + 1];
    char granted_by [KIM_ORG_MAX + 1];
    size_t recipient_count;
    char recipients [KIM_LIST_MAX][KIM_ORG_MAX + 1];
    size_t purpose_count;
    char purposes [KIM_LIST_MAX][KIM_CODE_MAX + 1];
    uint32_t categories;                //  KIM_CAT_* the consent covers
    bool explicit_art9;                 //  explicit consent for art9 data
    uint64_t valid_until;               //  ms since the epoch
    uint64_t revoked_at;                //  0: not revoked
    //  Added later: a registry record written before ends at revoked_at
    //  and reads with an empty giver.
    char giver [KIM_CODE_MAX + 1];      //  who consented: subject, guardian, entruster; "" unrecorded
} kim_consent_t;

//  The givers a CONSENT_GRANT may name, and the policy's `givers` key.
#define KIM_CONSENT_GIVERS "subject, guardian, entruster"

//  Returns 0 and fills `consent`, -KIM_E_NOT_FOUND when no such consent is
//  registered, or another -KIM_E_* (a store failure: the decision fails).
typedef int (kim_policy_consent_fn) (void *arg, const char *consent_id, kim_consent_t *consent);

//  The facts of one transfer. `recipient` is the organisation that receives
//  the data (for FORWARD: the header's `org`).
typedef struct {
    const kim_msg_t *msg;
    const char *sender_type;
    bool sender_public;
    const char *recipient;
    const char *recipient_type;
    uint64_t now;                       //  ms since the epoch (consent expiry)
    //  A consent's binding (PROTOCOL.md 9.3): the case the transfer happens
    //  in (NULL: the header's case_id; a FORWARD's is its referral's) and
    //  that case's lead now ("" when the case is unknown). NULL case_lead:
    //  not known (an offline check), the lead binding is not checked.
    const char *case_id;
    const char *case_lead;
} kim_policy_facts_t;

typedef struct {
    int code;                           //  0 allowed, else KIM_E_POLICY_DENY..CONSENT_BOUND
    bool checked;                       //  false: the type is no transfer; code is 0
    bool unchecked;                     //  allowed by a `basis = unchecked` (test) rule
    char rule [KIM_RULE_MAX + 1];       //  the rule that decided, "default" for default deny
    char law [KIM_LAW_MAX + 1];         //  the rule's `law`
    char basis [KIM_CITATION_MAX + 16]; //  "statute: <citation>" / "consent: <id>" when allowed
    //  One line naming rule, law and what is missing: for every denial, and
    //  for an allowance when kim_policy_decide is asked to explain ("" else)
    char text [KIM_TEXT_MAX + 1];
} kim_policy_decision_t;

//  Loads and compiles a policy file / ZPL text. Returns NULL with `error`
//  naming the file, line and key on any problem (`kim policy lint` prints it).
kim_policy_t *
    kim_policy_load (const char *path, char *error, size_t error_size);
kim_policy_t *
    kim_policy_parse (const char *text, const char *name, char *error, size_t error_size);

void
    kim_policy_destroy (kim_policy_t **self_p);

//  Number of rules; whether the policy checks messages of `type`.
size_t
    kim_policy_rule_count (const kim_policy_t *self);
bool
    kim_policy_checks (const kim_policy_t *self, kim_type_t type);

//  Decides one transfer. Returns 0 (the verdict is in `decision`) or a
//  -KIM_E_* from the consent lookup. When `explain` is not NULL, appends a
//  step-by-step account (text, one step per line) of how the decision came.
int
    kim_policy_decide (const kim_policy_t *self, const kim_policy_facts_t *facts,
                       kim_policy_consent_fn *lookup, void *arg,
                       kim_policy_decision_t *decision, kim_buf_t *explain);

//  True when a rule uses `basis = unchecked`: allows without checking the
//  legal basis. Only the test harness's permissive policy does; the broker
//  warns loudly at start when it loads such a policy.
bool
    kim_policy_unchecked (const kim_policy_t *self);

//  The statutes a form may offer for a transfer from `sender_type` to
//  `recipient_type` for `purpose` (NULL: any): calls `each` with the rule
//  id and each citation (as written) of the statute-allowing rules that
//  can decide it, in rule order; returns how many. Offers, not a decision.
typedef void (kim_policy_statute_fn) (void *arg, const char *rule, const char *citation);
size_t
    kim_policy_statutes (const kim_policy_t *self, const char *sender_type,
                         const char *recipient_type, const char *purpose,
                         kim_policy_statute_fn *each, void *arg);

void
    kim_policy_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
