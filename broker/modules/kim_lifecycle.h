/*  kim_lifecycle.h — the closed loop: referral life cycle, deadlines, cases,
    handovers, case-event subscriptions and payload retention.

    One broker module (registered first in kim_modules.c, so a move is
    checked against the life cycle before policy looks at it). Its state
    lives in the store's named DBs (REFERRAL, CASE, CASE_SEQ, SUB, TIMER) and
    changes in the same write transaction as the log append, so a crash
    never leaves a referral's state and the log apart.

    The calls below are for other modules (consent, link). All must be called
    inside a write batch (from a hook's check/applied/tick or a kim_ctx_batch
    function): they read and write through the batch's transaction.
*/
#ifndef KIM_LIFECYCLE_H_INCLUDED
#define KIM_LIFECYCLE_H_INCLUDED

#include "kim_hook.h"
#include "kim_modules.h"

#ifdef __cplusplus
extern "C" {
#endif

//  The module constructor (kim_module_new_fn). Reads the `lifecycle` and
//  `retention` config sections.
int
    kim_lifecycle_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size);
//  Validates the lifecycle and retention sections alone (kim-broker --check).
int
    kim_lifecycle_check_config (const kim_config_t *config, char *error, size_t error_size);

//  Copies the lead organisation of `case_id` into `lead`. Returns 0,
//  -KIM_E_UNKNOWN_CASE, -KIM_E_ARGS outside a write batch, or -KIM_E_*.
int
    kim_lifecycle_case_lead (kim_ctx_t *ctx, const char *case_id, char lead [KIM_ORG_MAX + 1]);

//  Copies the case of referral `referral_id` into `case_id` and, when
//  `opened_seq` is not NULL, sets it to the log seq of the REFERRAL or
//  FORWARD that opened it. Returns 0, -KIM_E_UNKNOWN_REFERRAL, -KIM_E_ARGS
//  outside a write batch, or -KIM_E_*.
int
    kim_lifecycle_referral_case (kim_ctx_t *ctx, const char *referral_id,
                                 char case_id [KIM_ID_MAX + 1], uint64_t *opened_seq);

//  Consent `consent_id` was revoked (or, `expired`, ran out): every open
//  referral that relies on it (legal_basis consent_id of its REFERRAL or
//  FORWARD) becomes SUSPENDED (LAPSED), with a state record in the log
//  naming `cause` (the seq of the record that ended the consent).
//  An opening message its recipient has not acknowledged yet is withheld:
//  taken from the mailbox, its payload purged, and its sender told by a
//  broker-made CONSENT_REVOKE with code "withheld" (counted in *withheld).
//  Earlier recipients are told by the consent module. Returns how many
//  referrals were suspended, or -KIM_E_*.
int
    kim_lifecycle_suspend_consent (kim_ctx_t *ctx, const char *consent_id, bool expired,
                                   uint64_t cause, size_t *withheld);

//  The recipient's broker in another district refused `refused` (link
//  module, PROTOCOL.md 16.7): the referral it opened (a REFERRAL's, or the
//  one a FORWARD opened) becomes UNDELIVERABLE, closed, if it is still
//  unanswered here; `seq` is the UNDELIVERABLE notice's. Anything else
//  (an answer refused) leaves the state as it is. Returns 0 or -KIM_E_*.
int
    kim_lifecycle_undeliverable (kim_ctx_t *ctx, const kim_msg_t *refused, uint64_t seq);

void
    kim_lifecycle_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
