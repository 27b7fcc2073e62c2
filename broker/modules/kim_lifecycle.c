/*  kim_lifecycle.c — the referral life cycle (brief §4) and its deadlines.

    Owns every referral's state: which answer is allowed in which state and
    from whom (only the recipient answers, only the sender withdraws), the
    deadline timers that turn an unanswered referral OVERDUE and then
    EXPIRED, and the DELIVERED notice when a recipient acks a referral. This
    is kim's reason to exist: a referral is tracked until it is answered.

    Every state change is written in the same write transaction as the log
    record that caused it and is itself logged (KIM_RECORD_STATE), so the
    audit timeline shows it and a crash cannot separate state and log.
    Timers live in the store (KIM_DB_TIMER), so they survive restarts.
    Cases, handovers and subscriptions are in kim_case.c; the stored forms,
    the referral index, timers and state records in kim_lc_store.c.
*/
#include <czmq.h>

#include "kim/kim_log.h"
#include "kim_lifecycle_int.h"

//  --------------------------------------------------------------------------
//  The moves: which answer, from whom, in which states, to which state.

#define S_BY_RECIPIENT  1
#define S_BY_SENDER     2
#define S_BIT(state)    (1u << KIM_REFERRAL_##state)
#define S_UNANSWERED    (S_BIT (SENT) | S_BIT (DELIVERED) | S_BIT (OVERDUE))
#define S_TAKEN_UP      (S_BIT (ACCEPTED) | S_BIT (IN_PROGRESS))
#define S_OPEN          (S_UNANSWERED | S_TAKEN_UP)

typedef struct {
    kim_type_t type;
    unsigned by;                //  S_BY_* bits
    uint32_t from;              //  S_BIT of the states it is allowed in
    uint32_t to;                //  new state, 0 = unchanged
} s_move_t;

static const s_move_t s_moves [] = {
    { KIM_TYPE_ACCEPT,        S_BY_RECIPIENT, S_UNANSWERED, KIM_REFERRAL_ACCEPTED },
    { KIM_TYPE_DECLINE,       S_BY_RECIPIENT, S_UNANSWERED, KIM_REFERRAL_DECLINED },
    { KIM_TYPE_NOT_COMPETENT, S_BY_RECIPIENT, S_UNANSWERED, KIM_REFERRAL_NOT_COMPETENT },
    //  A recipient may also pass on what it took up (§ 86c SGB VIII).
    { KIM_TYPE_FORWARD,       S_BY_RECIPIENT, S_OPEN, KIM_REFERRAL_FORWARDED },
    { KIM_TYPE_STATUS,        S_BY_RECIPIENT, S_TAKEN_UP, KIM_REFERRAL_IN_PROGRESS },
    { KIM_TYPE_OUTCOME,       S_BY_RECIPIENT, S_TAKEN_UP, KIM_REFERRAL_COMPLETED },
    { KIM_TYPE_WITHDRAW,      S_BY_SENDER, S_OPEN | S_BIT (SUSPENDED) | S_BIT (LAPSED),
                              KIM_REFERRAL_WITHDRAWN },
    { KIM_TYPE_INFO_REQUEST,  S_BY_RECIPIENT | S_BY_SENDER, S_OPEN, 0 },
    { KIM_TYPE_INFO_RESPONSE, S_BY_RECIPIENT | S_BY_SENDER, S_OPEN, 0 },
};
#define S_MOVE_COUNT (sizeof s_moves / sizeof s_moves [0])

static const s_move_t *
s_move (kim_type_t type)
{
    for (size_t i = 0; i < S_MOVE_COUNT; i++)
        if (s_moves [i].type == type)
            return &s_moves [i];
    return NULL;
}

//  "STATUS, OUTCOME" for what `by` may send in `state`, or "nothing".
static void
s_moves_text (uint32_t state, unsigned by, char *out, size_t size)
{
    out [0] = 0;
    size_t used = 0;
    for (size_t i = 0; i < S_MOVE_COUNT; i++)
        if ((s_moves [i].by & by) && (s_moves [i].from & (1u << state)))
            used += (size_t) snprintf (out + used, used < size? size - used: 0, "%s%s",
                                       used? ", ": "", kim_type_name (s_moves [i].type));
    if (!out [0])
        snprintf (out, size, "nothing");
}

static int
s_refuse (kim_verdict_t *verdict, int code, const char *path, const char *format, ...)
{
    verdict->code = code;
    kim_str_copy (verdict->path, sizeof verdict->path, path? path: "");
    snprintf (verdict->rule, sizeof verdict->rule, "lifecycle");
    va_list args;
    va_start (args, format);
    vsnprintf (verdict->text, sizeof verdict->text, format, args);
    va_end (args);
    return -code;
}

static int
s_bad_state (kim_verdict_t *verdict, const kim_referral_t *referral, kim_type_t type)
{
    char by_recipient [128], by_sender [128];
    s_moves_text (referral->state, S_BY_RECIPIENT, by_recipient, sizeof by_recipient);
    s_moves_text (referral->state, S_BY_SENDER, by_sender, sizeof by_sender);
    if (streq (by_recipient, "nothing") && streq (by_sender, "nothing"))
        return s_refuse (verdict, KIM_E_BAD_STATE, "hdr.type",
                         "referral %s is %s: it is closed and takes no %s", referral->id,
                         kim_lc_state_name (referral->state), kim_type_name (type));
    return s_refuse (verdict, KIM_E_BAD_STATE, "hdr.type",
                     "referral %s is %s; the recipient may send %s; the sender may send %s",
                     referral->id, kim_lc_state_name (referral->state), by_recipient, by_sender);
}

//  --------------------------------------------------------------------------
//  check

//  Refusals about a referral name its state and parties to its parties
//  only: anyone else gets what an id it may not use gets.
static bool
s_party (const kim_referral_t *referral, const char *org)
{
    return streq (org, referral->sender) || streq (org, referral->recipient);
}

//  The broker an organisation of another district is homed at, or false
//  for one registered here (or unknown).
static bool
s_home (kim_ctx_t *ctx, const char *org, char home [KIM_ORG_MAX + 1])
{
    kim_org_t remote;
    home [0] = 0;
    return !kim_ctx_org (ctx, org) && kim_ctx_remote (ctx, org, &remote, home);
}

//  The default answer period runs from the message's created_at (the
//  sending broker checked it against its clock), not from its arrival here:
//  a referral that waited in a link mailbox while the link was down has the
//  same deadline at both ends.
static uint64_t
s_deadline (kim_lifecycle_t *self, kim_ctx_t *ctx, const kim_msg_t *msg)
{
    if (msg->deadline)
        return msg->deadline;
    uint64_t from = msg->created_at? msg->created_at: kim_ctx_now (ctx);
    for (size_t i = 0; i < self->purpose_count; i++)
        if (streq (self->purposes [i], msg->purpose))
            return from + self->purpose_deadline_ms [i];
    return from + self->deadline_ms;
}

//  A deadline that has passed would make the referral OVERDUE at once:
//  refused, with the clock skew the broker allows for created_at.
static int
s_check_deadline (kim_ctx_t *ctx, const kim_msg_t *msg, kim_verdict_t *verdict)
{
    uint64_t now = kim_ctx_now (ctx);
    uint64_t skew = kim_ctx_config (ctx)->clock_skew_ms;
    if (!msg->deadline || msg->deadline + skew >= now)
        return 0;
    return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.deadline",
                     "deadline %" PRIu64 " has passed (the broker's clock reads %" PRIu64
                     ", allowing %" PRIu64 " s of clock skew)", msg->deadline, now, skew / 1000);
}

static int
s_check_referral (kim_lifecycle_t *self, kim_ctx_t *ctx, kim_route_t *route,
                  kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    kim_store_t *store = kim_ctx_store (ctx);
    int deadline_rc = s_check_deadline (ctx, msg, verdict);
    if (deadline_rc)
        return deadline_rc;
    kim_referral_t referral;
    int rc = kim_lc_referral_get (store, msg->referral_id, &referral);
    if (rc == 0 && s_party (&referral, route->sender->id))
        return s_refuse (verdict, KIM_E_REFERRAL_EXISTS, "hdr.referral_id",
                         "referral %s exists already (%s, from %s to %s)", referral.id,
                         kim_lc_state_name (referral.state), referral.sender, referral.recipient);
    //  Referral ids are the broker's, not the sender's: another's id is
    //  taken, and that is all an outsider learns (also of an unreadable one).
    if (rc == 0 || rc == -KIM_E_IO)
        return s_refuse (verdict, KIM_E_REFERRAL_EXISTS, "hdr.referral_id",
                         "referral id %s is taken; choose another", msg->referral_id);
    if (rc != -KIM_E_NOT_FOUND)
        return rc;
    if (streq (msg->recipient, route->sender->id))
        return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.recipient",
                         "%s cannot refer to itself", route->sender->id);
    kim_case_t kcase;
    rc = kim_lc_case_read (self, store, msg->case_id, &kcase);
    if (rc == -KIM_E_NOT_FOUND)
        return 0;
    if (rc)
        return rc;
    //  An outsider learns that the case id is taken, nothing of the case.
    if (!kim_lc_case_party (&kcase, route->sender->id))
        return s_refuse (verdict, KIM_E_NOT_PARTY, "hdr.case_id",
                         "%s takes no part in case %s; only its participants refer within it",
                         route->sender->id, kcase.id);
    if (kcase.closed)
        return s_refuse (verdict, KIM_E_BAD_STATE, "hdr.case_id",
                         "case %s was closed by %s; open a new case", kcase.id, kcase.lead);
    return 0;
}

static int
s_check_answer (kim_lifecycle_t *self, kim_ctx_t *ctx, kim_route_t *route,
                kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    const char *who = route->sender->id;
    kim_store_t *store = kim_ctx_store (ctx);
    kim_referral_t referral;
    int rc = kim_lc_referral_get (store, msg->referral_id, &referral);
    //  Another's referral gets the answer an unknown id gets, word for word.
    if (rc == -KIM_E_NOT_FOUND || (rc == 0 && !s_party (&referral, who)))
        return s_refuse (verdict, KIM_E_UNKNOWN_REFERRAL, "hdr.referral_id",
                         "no referral %s with %s as its sender or recipient is known to this "
                         "broker", msg->referral_id, who);
    if (rc)
        return rc;
    bool is_sender = streq (who, referral.sender);
    const char *other = is_sender? referral.recipient: referral.sender;
    if (!streq (msg->recipient, other))
        return s_refuse (verdict, KIM_E_NOT_PARTY, "hdr.recipient",
                         "messages of referral %s from %s go to its other party, %s",
                         referral.id, who, other);
    const s_move_t *move = s_move (msg->type);
    if (!move)
        return 0;
    if (!(move->from & (1u << referral.state))
    ||  !(move->by & (is_sender? S_BY_SENDER: S_BY_RECIPIENT)))
        return s_bad_state (verdict, &referral, msg->type);
    if (msg->type == KIM_TYPE_FORWARD) {
        if ((rc = s_check_deadline (ctx, msg, verdict)))
            return rc;
        const kim_org_t *org = kim_ctx_org (ctx, msg->org);
        char home [KIM_ORG_MAX + 1], near [KIM_ORG_MAX + 1];
        if (!org && s_home (ctx, msg->org, home)) {
            //  An office of another district (federation): the FORWARD
            //  crosses one link, to the district of the referral's other
            //  party, whose broker hands it on with the payload. A third
            //  district is out of its reach (no transit, PROTOCOL.md 16.8).
            bool reach = (s_home (ctx, msg->recipient, near) && streq (near, home))
                      || (s_home (ctx, who, near) && streq (near, home));
            if (!reach)
                return s_refuse (verdict, KIM_E_UNKNOWN_RECIPIENT, "hdr.org",
                                 "%s is an office of %s: a FORWARD goes to an office of this "
                                 "district or of the district of %s only", msg->org, home,
                                 msg->recipient);
        }
        else
        if (!org || org->revoked || org->role != KIM_ROLE_AGENCY)
            return s_refuse (verdict, KIM_E_UNKNOWN_RECIPIENT, "hdr.org",
                             "%s is not a registered agency", msg->org);
        if (streq (msg->org, who) || streq (msg->org, referral.sender))
            return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.org",
                             "a FORWARD goes to a third organisation, not to %s", msg->org);
        kim_referral_t existing;
        rc = kim_lc_referral_get (store, msg->msg_id, &existing);
        if (rc == 0)
            return s_refuse (verdict, KIM_E_REFERRAL_EXISTS, "hdr.msg_id",
                             "the forwarded referral takes the FORWARD's msg_id %s as its id, "
                             "and a referral %s exists already", msg->msg_id, msg->msg_id);
        if (rc != -KIM_E_NOT_FOUND)
            return rc;
    }
    return 0;
}

//  The state a HANDED_OVER names in its code (the state's name in lower
//  case), or KIM_REFERRAL_NONE.
static uint32_t
s_state_from_code (const char *code)
{
    char upper [KIM_CODE_MAX + 1];
    size_t n = 0;
    for (; code [n] && n < KIM_CODE_MAX; n++)
        upper [n] = (char) (code [n] >= 'a' && code [n] <= 'z'? code [n] - 32: code [n]);
    upper [n] = 0;
#define KIM_X_STATE(name, num) if (streq (upper, #name)) return num;
    KIM_REFERRAL_STATES (KIM_X_STATE)
#undef KIM_X_STATE
    return KIM_REFERRAL_NONE;
}

//  A peer broker hands over the record of an open referral of a case that
//  one of our offices now leads (PROTOCOL.md 16.6). Its key vouches for
//  its own offices only: the referral's other party must be homed there,
//  and the case must be led here by the office the record names.
static int
s_check_handed_over (kim_lifecycle_t *self, kim_ctx_t *ctx, kim_route_t *route,
                     kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    char home [KIM_ORG_MAX + 1];
    if (route->sender->role != KIM_ROLE_PEER)
        return 0;               //  made by this broker: nothing to check
    if (!s_home (ctx, msg->org, home) || !streq (home, route->sender->id))
        return s_refuse (verdict, KIM_E_SENDER_MISMATCH, "hdr.org",
                         "%s is not an office of %s: a broker hands over the referrals of "
                         "its own offices only", msg->org, route->sender->id);
    uint32_t state = s_state_from_code (msg->code);
    if (!kim_lc_state_open (state))
        return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.code",
                         "%s is not the state of an open referral", msg->code);
    //  It carries the referral's consent, if any (9.1): a statute basis is
    //  the opening transfer's, checked by the broker that took it.
    if (msg->basis != KIM_BASIS_NONE && msg->basis != KIM_BASIS_CONSENT)
        return s_refuse (verdict, KIM_E_BAD_VALUE, "hdr.legal_basis.kind",
                         "a handed-over referral's legal basis is its consent, if any");
    kim_case_t kcase;
    int rc = kim_lc_case_read (self, kim_ctx_store (ctx), msg->case_id, &kcase);
    if (rc == -KIM_E_NOT_FOUND)
        return s_refuse (verdict, KIM_E_UNKNOWN_CASE, "hdr.case_id",
                         "no case %s is known to this broker", msg->case_id);
    if (rc)
        return rc;
    if (!streq (kcase.lead, msg->recipient))
        return s_refuse (verdict, KIM_E_NOT_LEAD, "hdr.recipient",
                         "%s does not lead case %s", msg->recipient, kcase.id);
    kim_referral_t referral;
    rc = kim_lc_referral_get (kim_ctx_store (ctx), msg->referral_id, &referral);
    if (rc == 0 && !(streq (referral.sender, msg->recipient)
                 &&  streq (referral.recipient, msg->org)))
        return s_refuse (verdict, KIM_E_REFERRAL_EXISTS, "hdr.referral_id",
                         "referral id %s is taken here by another referral", msg->referral_id);
    return rc == -KIM_E_NOT_FOUND? 0: rc;
}

//  Opens here the referral a peer handed over (checked above), in the
//  state its broker holds, with its deadline timer: answers of it pass
//  this broker's life cycle from now on. A record known already (both
//  parties were here) is left as it is.
static int
s_take_handed_over (kim_lifecycle_t *self, kim_ctx_t *ctx, const kim_route_t *route)
{
    const kim_msg_t *msg = route->msg;
    kim_store_t *store = kim_ctx_store (ctx);
    kim_referral_t referral;
    int rc = kim_lc_referral_get (store, msg->referral_id, &referral);
    if (rc != -KIM_E_NOT_FOUND)
        return rc;
    memset (&referral, 0, sizeof referral);
    referral.version = S_REFERRAL_VERSION;
    referral.state = s_state_from_code (msg->code);
    kim_str_copy (referral.id, sizeof referral.id, msg->referral_id);
    kim_str_copy (referral.msg_id, sizeof referral.msg_id, msg->ref_msg_id);
    kim_str_copy (referral.sender, sizeof referral.sender, msg->recipient);
    kim_str_copy (referral.recipient, sizeof referral.recipient, msg->org);
    kim_str_copy (referral.case_id, sizeof referral.case_id, msg->case_id);
    kim_str_copy (referral.purpose, sizeof referral.purpose, msg->purpose);
    if (msg->basis == KIM_BASIS_CONSENT)
        kim_str_copy (referral.consent_id, sizeof referral.consent_id, msg->consent_id);
    referral.deadline = msg->deadline;
    referral.created_seq = referral.last_seq = route->seq;
    if (referral.state == KIM_REFERRAL_OVERDUE)
        rc = kim_lc_timer_put (store, referral.deadline + self->expire_ms, referral.id,
                               S_TIMER_EXPIRY);
    else
    if (referral.state == KIM_REFERRAL_SENT || referral.state == KIM_REFERRAL_DELIVERED)
        rc = kim_lc_timer_put (store, referral.deadline, referral.id, S_TIMER_DEADLINE);
    else
        rc = 0;
    uint64_t case_seq = 0;
    if (rc == 0)
        rc = kim_lc_index_case_seq (self, store, referral.case_id, 0, &case_seq);
    if (rc == 0)
        rc = kim_lc_referral_open (store, &referral);
    if (rc == 0)
        rc = kim_lc_index_put (store, &referral, case_seq);
    char json [512];
    snprintf (json, sizeof json, "{\"referral_id\":\"%s\",\"case_id\":\"%s\",\"from\":\"%s\","
              "\"to\":\"%s\",\"sender_to\":\"%s\",\"handed_over_by\":\"%s\",\"seq\":%"
              PRIu64 "}", referral.id, referral.case_id, kim_lc_state_name (referral.state),
              kim_lc_state_name (referral.state), referral.sender, route->sender->id, route->seq);
    if (rc == 0)
        rc = kim_lc_record (ctx, json);
    if (rc == 0)
        zsys_info ("lifecycle: %s handed over referral %s of case %s (%s) to %s",
                   route->sender->id, referral.id, referral.case_id,
                   kim_lc_state_name (referral.state), referral.sender);
    return rc;
}

//  A peer broker's DELIVERED: its word that one of its offices has a
//  referral. It vouches for its own offices only, so the referral must be
//  one known here whose recipient is homed at that peer.
static int
s_check_delivered (kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict)
{
    const kim_msg_t *msg = route->msg;
    if (route->sender->role != KIM_ROLE_PEER)
        return 0;               //  made by this broker: nothing to check
    if (!msg->referral_id [0])
        return s_refuse (verdict, KIM_E_MISSING_FIELD, "hdr.referral_id",
                         "a DELIVERED from another broker names the referral delivered");
    kim_referral_t referral;
    int rc = kim_lc_referral_get (kim_ctx_store (ctx), msg->referral_id, &referral);
    if (rc == -KIM_E_NOT_FOUND)
        return s_refuse (verdict, KIM_E_UNKNOWN_REFERRAL, "hdr.referral_id",
                         "no referral %s is known to this broker", msg->referral_id);
    if (rc)
        return rc;
    char home [KIM_ORG_MAX + 1];
    if (!s_home (ctx, referral.recipient, home) || !streq (home, route->sender->id))
        return s_refuse (verdict, KIM_E_NOT_PARTY, "hdr.referral_id",
                         "referral %s is not for an office of %s: a broker reports the "
                         "deliveries of its own offices only", referral.id, route->sender->id);
    return 0;
}

static int
s_check (void *state, kim_ctx_t *ctx, kim_route_t *route, kim_verdict_t *verdict)
{
    kim_lifecycle_t *self = (kim_lifecycle_t *) state;
    kim_type_t type = route->msg->type;
    if (type == KIM_TYPE_REFERRAL)
        return s_check_referral (self, ctx, route, verdict);
    if (type == KIM_TYPE_HANDED_OVER)
        return s_check_handed_over (self, ctx, route, verdict);
    if (type == KIM_TYPE_DELIVERED)
        return s_check_delivered (ctx, route, verdict);
    if (kim_type_flags (type) & KIM_MSG_REFERRAL_ANSWER)
        return s_check_answer (self, ctx, route, verdict);
    if (type == KIM_TYPE_HANDOVER_OFFER || type == KIM_TYPE_HANDOVER_ACCEPT
    ||  type == KIM_TYPE_HANDOVER_DECLINE || type == KIM_TYPE_CASE_CLOSED)
        return kim_lc_case_check (self, ctx, route, verdict);
    return 0;
}

//  --------------------------------------------------------------------------
//  applied

//  Opens a referral in state SENT with its deadline timer.
static int
s_open (kim_lifecycle_t *self, kim_ctx_t *ctx, const kim_msg_t *msg, const char *id,
        const char *recipient, const char *case_id, const char *parent, uint64_t seq)
{
    kim_referral_t referral;
    memset (&referral, 0, sizeof referral);
    referral.version = S_REFERRAL_VERSION;
    referral.state = KIM_REFERRAL_NONE;
    kim_str_copy (referral.id, sizeof referral.id, id);
    kim_str_copy (referral.msg_id, sizeof referral.msg_id, msg->msg_id);
    kim_str_copy (referral.sender, sizeof referral.sender, msg->sender);
    kim_str_copy (referral.recipient, sizeof referral.recipient, recipient);
    kim_str_copy (referral.case_id, sizeof referral.case_id, case_id);
    kim_str_copy (referral.parent, sizeof referral.parent, parent);
    kim_str_copy (referral.purpose, sizeof referral.purpose, msg->purpose);
    if (msg->basis == KIM_BASIS_CONSENT)
        kim_str_copy (referral.consent_id, sizeof referral.consent_id, msg->consent_id);
    referral.deadline = s_deadline (self, ctx, msg);
    referral.created_seq = referral.last_seq = seq;
    referral.state = KIM_REFERRAL_SENT;
    //  No state record for SENT: the REFERRAL (or FORWARD) record opens it.
    int rc = kim_lc_timer_put (kim_ctx_store (ctx), referral.deadline, referral.id,
                               S_TIMER_DEADLINE);
    uint64_t case_seq = 0;
    if (rc == 0)
        rc = kim_lc_index_case_seq (self, kim_ctx_store (ctx), case_id, parent [0]? 0: seq,
                                    &case_seq);
    if (rc == 0)
        rc = kim_lc_referral_open (kim_ctx_store (ctx), &referral);
    if (rc == 0)
        rc = kim_lc_index_put (kim_ctx_store (ctx), &referral, case_seq);
    return rc;
}

static int
s_applied (void *state, kim_ctx_t *ctx, kim_route_t *route)
{
    kim_lifecycle_t *self = (kim_lifecycle_t *) state;
    const kim_msg_t *msg = route->msg;
    char case_id [KIM_ID_MAX + 1];
    kim_str_copy (case_id, sizeof case_id, msg->case_id);
    int rc = 0;
    if (msg->type == KIM_TYPE_REFERRAL) {
        rc = s_open (self, ctx, msg, msg->referral_id, msg->recipient, msg->case_id, "",
                     route->seq);
        //  The recipient's ack of this mail makes the referral DELIVERED.
        memcpy (route->note, msg->referral_id, sizeof route->note);
    }
    else
    if (kim_type_flags (msg->type) & KIM_MSG_REFERRAL_ANSWER) {
        kim_referral_t referral;
        rc = kim_lc_referral_get (kim_ctx_store (ctx), msg->referral_id, &referral);
        if (rc)
            return rc;             //  check saw it: a failure here is the store's
        kim_str_copy (case_id, sizeof case_id, referral.case_id);
        const s_move_t *move = s_move (msg->type);
        uint32_t to = move && move->to? move->to: referral.state;
        if (to != referral.state)
            rc = kim_lc_referral_move (ctx, &referral, to, route->seq);
        else {
            referral.last_seq = route->seq;
            rc = kim_lc_referral_put (kim_ctx_store (ctx), &referral);
        }
        if (rc == 0 && msg->type == KIM_TYPE_FORWARD) {
            rc = s_open (self, ctx, msg, msg->msg_id, msg->org, referral.case_id, referral.id,
                         route->seq);
            //  The FORWARD's payload is sealed to `org`, the new recipient;
            //  the original sender learns of the forward from the header.
            if (rc == 0)
                rc = kim_ctx_deliver_payload (ctx, msg->org, route->seq);
            //  Put before the server puts the recipient's full entry, which
            //  then finds this one and leaves it.
            if (rc == 0 && msg->recipient [0] && kim_ctx_org (ctx, msg->recipient))
                rc = kim_store_mailbox_put_copy (kim_ctx_store (ctx), msg->recipient,
                                                 route->seq);
        }
    }
    else
    if (msg->type == KIM_TYPE_HANDED_OVER && route->sender->role == KIM_ROLE_PEER)
        return s_take_handed_over (self, ctx, route);
    else
    if (msg->type == KIM_TYPE_DELIVERED && route->sender->role == KIM_ROLE_PEER
    &&  msg->referral_id [0]) {
        //  A peer broker's office has the referral (its broker made the
        //  DELIVERED on its ack, and s_check_delivered found the office
        //  homed there): this end says DELIVERED too.
        kim_referral_t referral;
        rc = kim_lc_referral_get (kim_ctx_store (ctx), msg->referral_id, &referral);
        if (rc == 0 && referral.state == KIM_REFERRAL_SENT)
            rc = kim_lc_referral_move (ctx, &referral, KIM_REFERRAL_DELIVERED, route->seq);
        return rc;
    }
    if (rc == 0)
        rc = kim_lc_case_applied (self, ctx, route, case_id);
    return rc;
}

//  --------------------------------------------------------------------------
//  acked: a recipient has the referral -> DELIVERED, and its sender is told.

//  The referral that an ack of record `seq` by `org` delivers, if any:
//  the mail's note names it; mail without one (a FORWARD's, or put by an
//  older broker) is read back.
static int
s_acked_referral (kim_store_t *store, const kim_org_t *org, uint64_t seq, const char *note,
                  char *id)
{
    if (note && note [0]) {
        memcpy (id, note, KIM_ID_MAX + 1);
        return 1;
    }
    kim_record_t record;
    int rc = kim_store_read (store, seq, &record);
    if (rc || record.kind != KIM_RECORD_MESSAGE)
        return rc == -KIM_E_NOT_FOUND? 0: rc;
    kim_msg_t msg;
    kim_decode_error_t error;
    if (kim_msg_decode (&msg, record.body, record.body_size, &error))
        return 0;
    if (msg.type == KIM_TYPE_REFERRAL && streq (org->id, msg.recipient))
        memcpy (id, msg.referral_id, KIM_ID_MAX + 1);
    else
    if (msg.type == KIM_TYPE_FORWARD && streq (org->id, msg.org))
        memcpy (id, msg.msg_id, KIM_ID_MAX + 1);
    else
        return 0;
    return 1;
}

static int
s_acked (void *state, kim_ctx_t *ctx, const kim_org_t *org, uint64_t seq, const char *note)
{
    kim_store_t *store = kim_ctx_store (ctx);
    char id [KIM_ID_MAX + 1];
    int rc = s_acked_referral (store, org, seq, note, id);
    if (rc <= 0)
        return rc;
    //  The mail is most often the REFERRAL (or FORWARD) that opened it
    kim_referral_t referral;
    rc = kim_lc_referral_find (store, id, seq, &referral);
    if (rc || referral.state != KIM_REFERRAL_SENT || !streq (referral.recipient, org->id))
        return rc == -KIM_E_NOT_FOUND? 0: rc;
    kim_msg_t notice;
    kim_msg_init (&notice);
    notice.type = KIM_TYPE_DELIVERED;
    kim_str_copy (notice.referral_id, sizeof notice.referral_id, referral.id);
    kim_str_copy (notice.ref_msg_id, sizeof notice.ref_msg_id, referral.msg_id);
    kim_str_copy (notice.case_id, sizeof notice.case_id, referral.case_id);
    //  The ack of `seq` causes the move; the notice is the referral's
    //  latest message (REFERRAL_INFO's last_seq)
    uint64_t notice_seq = 0;
    rc = kim_ctx_emit (ctx, &notice, referral.sender, &notice_seq);
    if (rc == 0) {
        referral.last_seq = notice_seq;
        rc = kim_lc_referral_move (ctx, &referral, KIM_REFERRAL_DELIVERED, seq);
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  tick: deadline, expiry and retention timers that are due.

#define S_TIMERS_PER_TICK 64

_Static_assert (KIM_STORE_GROUP_PART <= S_TIMERS_PER_TICK,
                "a group of timers fits into one tick");

typedef struct {
    uint8_t kind;
    char id [KIM_ID_MAX + 1];
    uint8_t key [8 + KIM_ID_MAX];
    size_t key_size;
} s_due_t;

static int
s_notify (kim_ctx_t *ctx, const kim_referral_t *referral, kim_type_t type, const char *to)
{
    kim_msg_t notice;
    kim_msg_init (&notice);
    notice.type = type;
    kim_str_copy (notice.referral_id, sizeof notice.referral_id, referral->id);
    kim_str_copy (notice.ref_msg_id, sizeof notice.ref_msg_id, referral->msg_id);
    kim_str_copy (notice.case_id, sizeof notice.case_id, referral->case_id);
    notice.deadline = referral->deadline;
    return kim_ctx_emit (ctx, &notice, to, NULL);
}

static int
s_fire (kim_lifecycle_t *self, kim_ctx_t *ctx, const s_due_t *due)
{
    kim_store_t *store = kim_ctx_store (ctx);
    if (due->kind == S_TIMER_PURGE)
        return kim_lc_purge (self, ctx, due->id, S_TIMER_PURGE);
    if (due->kind == S_TIMER_IDLE_NOTICE || due->kind == S_TIMER_IDLE_PURGE)
        return kim_lc_idle_fire (self, ctx, due->id, due->kind);
    kim_referral_t referral;
    int rc = kim_lc_referral_get (store, due->id, &referral);
    if (rc)
        return rc == -KIM_E_NOT_FOUND? 0: rc;
    if (due->kind == S_TIMER_DEADLINE
    &&  (referral.state == KIM_REFERRAL_SENT || referral.state == KIM_REFERRAL_DELIVERED)) {
        zsys_info ("lifecycle: referral %s from %s to %s is OVERDUE; reminding both",
                   referral.id, referral.sender, referral.recipient);
        rc = s_notify (ctx, &referral, KIM_TYPE_REMINDER, referral.sender);
        if (rc == 0)
            rc = s_notify (ctx, &referral, KIM_TYPE_REMINDER, referral.recipient);
        if (rc == 0)
            rc = kim_lc_referral_move (ctx, &referral, KIM_REFERRAL_OVERDUE,
                                       kim_store_head (store));
        if (rc == 0)
            rc = kim_lc_timer_put (store, referral.deadline + self->expire_ms, referral.id,
                                   S_TIMER_EXPIRY);
    }
    else
    if (due->kind == S_TIMER_EXPIRY && referral.state == KIM_REFERRAL_OVERDUE) {
        zsys_info ("lifecycle: referral %s from %s to %s EXPIRED unanswered; alerting %s",
                   referral.id, referral.sender, referral.recipient, referral.sender);
        rc = s_notify (ctx, &referral, KIM_TYPE_EXPIRED, referral.sender);
        if (rc == 0)
            rc = kim_lc_referral_move (ctx, &referral, KIM_REFERRAL_EXPIRED,
                                       kim_store_head (store));
    }
    return rc;
}

static int
s_tick (void *state, kim_ctx_t *ctx)
{
    kim_lifecycle_t *self = (kim_lifecycle_t *) state;
    kim_store_t *store = kim_ctx_store (ctx);
    MDB_txn *txn = kim_store_txn (store);
    if (!txn)
        return -KIM_E_ARGS;
    uint64_t now = kim_ctx_now (ctx);
    s_due_t due [S_TIMERS_PER_TICK];
    size_t count = 0;
    MDB_cursor *cursor;
    int rc = mdb_cursor_open (txn, kim_store_dbi (store, KIM_DB_TIMER), &cursor);
    if (rc)
        return kim_store_error (store, rc, "lifecycle: opening the timers");
    MDB_val key, value;
    for (rc = mdb_cursor_get (cursor, &key, &value, MDB_FIRST);
         rc == 0 && count < S_TIMERS_PER_TICK;
         rc = mdb_cursor_get (cursor, &key, &value, MDB_NEXT)) {
        if (key.mv_size < 9 || key.mv_size > 8 + KIM_ID_MAX)
            continue;           //  not ours to judge; never fires
        const uint8_t *bytes = (const uint8_t *) key.mv_data;
        uint64_t when = kim_log_get_be64 (bytes);
        if (when > now)
            break;
        if (value.mv_size == 1) {
            //  One timer, as stores kept them before groups: due | id
            s_due_t *entry = &due [count++];
            entry->kind = *(const uint8_t *) value.mv_data;
            entry->key_size = key.mv_size;
            memcpy (entry->key, key.mv_data, key.mv_size);
            memcpy (entry->id, bytes + 8, key.mv_size - 8);
            entry->id [key.mv_size - 8] = 0;
            continue;
        }
        //  A group: due | kind | batch | part, one id a member. It fires
        //  whole, in this tick or (if it does not fit) in the next.
        if (key.mv_size != 9 + 10)
            continue;
        size_t first = count, at = 0, size;
        const uint8_t *member;
        while (count < S_TIMERS_PER_TICK
        &&     (member = kim_store_group_next (&value, &at, &size))) {
            if (size > KIM_ID_MAX)
                continue;
            s_due_t *entry = &due [count++];
            entry->kind = bytes [8];
            entry->key_size = key.mv_size;
            memcpy (entry->key, key.mv_data, key.mv_size);
            memcpy (entry->id, member, size);
            entry->id [size] = 0;
        }
        if (member && count == S_TIMERS_PER_TICK && kim_store_group_next (&value, &at, &size)) {
            count = first;      //  not whole: the next tick takes it
            break;
        }
    }
    mdb_cursor_close (cursor);
    if (rc && rc != MDB_NOTFOUND)
        return kim_store_error (store, rc, "lifecycle: reading the timers");
    rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        //  The members of a group share its key: the first removes it
        MDB_val k = { due [i].key_size, due [i].key };
        rc = kim_store_del (store, KIM_DB_TIMER, &k, NULL);
        rc = rc && rc != MDB_NOTFOUND? kim_store_error (store, rc, "lifecycle: removing a timer"): 0;
        if (rc == 0)
            rc = s_fire (self, ctx, &due [i]);
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  For the consent module

static int
s_collect_id (void *arg, const char *referral_id, uint64_t seq)
{
    (void) seq;                 //  consent entries hold none
    return zlistx_add_end ((zlistx_t *) arg, strdup (referral_id))? 0: -KIM_E_NOMEM;
}

int
kim_lifecycle_referral_case (kim_ctx_t *ctx, const char *referral_id,
                             char case_id [KIM_ID_MAX + 1], uint64_t *opened_seq)
{
    kim_store_t *store = kim_ctx_store (ctx);
    if (!kim_store_txn (store) || !referral_id)
        return -KIM_E_ARGS;
    kim_referral_t referral;
    int rc = referral_id [0]? kim_lc_referral_get (store, referral_id, &referral): -KIM_E_NOT_FOUND;
    if (rc == -KIM_E_NOT_FOUND)
        return -KIM_E_UNKNOWN_REFERRAL;
    if (rc == 0)
        snprintf (case_id, KIM_ID_MAX + 1, "%s", referral.case_id);
    if (rc == 0 && opened_seq)
        *opened_seq = referral.created_seq;
    return rc;
}

int
kim_lifecycle_undeliverable (kim_ctx_t *ctx, const kim_msg_t *refused, uint64_t seq)
{
    kim_store_t *store = kim_ctx_store (ctx);
    if (!kim_store_txn (store) || !refused)
        return -KIM_E_ARGS;
    //  A FORWARD opens the referral named by its msg_id
    const char *id = refused->type == KIM_TYPE_REFERRAL? refused->referral_id
                   : refused->type == KIM_TYPE_FORWARD? refused->msg_id: NULL;
    if (!id || !id [0])
        return 0;
    kim_referral_t referral;
    int rc = kim_lc_referral_get (store, id, &referral);
    if (rc)
        return rc == -KIM_E_NOT_FOUND? 0: rc;
    if (!streq (referral.msg_id, refused->msg_id)
    ||  (referral.state != KIM_REFERRAL_SENT && referral.state != KIM_REFERRAL_OVERDUE))
        return 0;
    zsys_info ("lifecycle: referral %s from %s to %s is UNDELIVERABLE", referral.id,
               referral.sender, referral.recipient);
    return kim_lc_referral_move (ctx, &referral, KIM_REFERRAL_UNDELIVERABLE, seq);
}

//  The purge record of a withheld message's payload (kind 5, as every
//  purge has one): auditors see why it is gone.
static int
s_withheld_record (kim_ctx_t *ctx, const kim_referral_t *referral)
{
    char json [3 * KIM_ID_MAX + 128];
    snprintf (json, sizeof json, "{\"case_id\":\"%s\",\"reason\":\"withheld\","
              "\"consent\":\"%s\",\"seqs\":[%" PRIu64 "]}", referral->case_id,
              referral->consent_id, referral->created_seq);
    kim_buf_t buf;
    kim_buf_init (&buf);
    int rc = kim_json_to_msgpack (json, strlen (json), &buf);
    if (rc == 0)
        rc = kim_ctx_record (ctx, KIM_RECORD_PURGE, buf.data, buf.size, NULL);
    kim_buf_free (&buf);
    return rc;
}

//  A referral's opening message (REFERRAL or FORWARD) that its recipient
//  has not acknowledged is still in the recipient's mailbox: take it out
//  and purge its payload, so that neither a delivery nor a redelivery
//  carries the data, and tell its sender. 1 withheld, 0 not there, -code.
static int
s_withhold (kim_ctx_t *ctx, const kim_referral_t *referral, bool expired)
{
    kim_store_t *store = kim_ctx_store (ctx);
    char note [KIM_MAILBOX_NOTE_MAX + 1];
    int rc = kim_store_mailbox_take (store, referral->recipient, referral->created_seq, note);
    if (rc == -KIM_E_NOT_FOUND)
        return 0;
    if (rc == 0)
        rc = kim_store_payload_del (store, referral->created_seq);
    if (rc == 0)
        rc = s_withheld_record (ctx, referral);
    if (rc)
        return rc;
    kim_msg_t notice;
    kim_msg_init (&notice);
    notice.type = KIM_TYPE_CONSENT_REVOKE;
    kim_str_copy (notice.grant_id, sizeof notice.grant_id, referral->consent_id);
    kim_str_copy (notice.case_id, sizeof notice.case_id, referral->case_id);
    kim_str_copy (notice.referral_id, sizeof notice.referral_id, referral->id);
    kim_str_copy (notice.ref_msg_id, sizeof notice.ref_msg_id, referral->msg_id);
    kim_str_copy (notice.code, sizeof notice.code, "withheld");
    if (kim_ctx_org (ctx, referral->sender))
        rc = kim_ctx_emit (ctx, &notice, referral->sender, NULL);
    if (rc == 0)
        zsys_info ("lifecycle: referral %s (seq %" PRIu64 ") withheld from %s: consent %s %s "
                   "before delivery", referral->id, referral->created_seq, referral->recipient,
                   referral->consent_id, expired? "expired": "was revoked");
    return rc == 0? 1: rc;
}

int
kim_lifecycle_suspend_consent (kim_ctx_t *ctx, const char *consent_id, bool expired,
                               uint64_t cause, size_t *withheld)
{
    kim_store_t *store = kim_ctx_store (ctx);
    MDB_txn *txn = kim_store_txn (store);
    if (withheld)
        *withheld = 0;
    if (!txn || !consent_id || !consent_id [0])
        return -KIM_E_ARGS;
    //  Collect first: moving writes to the store. The index lists the
    //  referrals ever opened under the consent; the open ones stop.
    zlistx_t *ids = zlistx_new ();
    if (!ids)
        return -KIM_E_NOMEM;
    zlistx_set_destructor (ids, (zlistx_destructor_fn *) zstr_free);
    uint8_t prefix [S_INDEX_KEY_MAX];
    size_t prefix_size = kim_lc_index_consent_key (prefix, consent_id, NULL);
    int rc = kim_lc_index_scan (store, prefix, prefix_size, NULL, s_collect_id, ids);
    //  The parties hear of the revocation from the consent module, which
    //  tells every earlier recipient once; here the referrals stop, and
    //  what was not delivered yet is withheld.
    uint32_t to = expired? KIM_REFERRAL_LAPSED: KIM_REFERRAL_SUSPENDED;
    int suspended = 0;
    for (char *id = (char *) zlistx_first (ids); rc == 0 && id; id = (char *) zlistx_next (ids)) {
        kim_referral_t referral;
        rc = kim_lc_referral_get (store, id, &referral);
        if (rc == -KIM_E_NOT_FOUND || rc == -KIM_E_IO) {
            rc = 0;             //  gone, or in a form this broker cannot read (logged)
            continue;
        }
        if (rc || !kim_lc_state_open (referral.state) || !streq (referral.consent_id, consent_id))
            continue;
        rc = kim_lc_referral_move (ctx, &referral, to, cause);
        if (rc == 0) {
            suspended++;
            zsys_info ("lifecycle: referral %s %s: consent %s %s", id, kim_lc_state_name (to),
                       consent_id, expired? "expired": "was revoked");
            rc = s_withhold (ctx, &referral, expired);
            if (rc > 0 && withheld)
                (*withheld)++;
            rc = rc > 0? 0: rc;
        }
    }
    zlistx_destroy (&ids);
    return rc? rc: suspended;
}

//  --------------------------------------------------------------------------
//  Construction

static int
s_configure (kim_lifecycle_t *self, zconfig_t *tree, char *error, size_t error_size)
{
    const uint64_t day = 24ull * 3600 * 1000;
    uint64_t deadline_days = 14, expire_days = 14, payload_days = 1095;
    uint64_t deadline_s = 0, expire_s = 0, payload_s = 0;
    uint64_t open_case_days = 1095, notice_days = 30, open_case_s = 0, notice_s = 0;
    static const char *lifecycle_keys [] = {
        "deadline_days", "expire_days", "deadline_seconds", "expire_seconds", "purpose", NULL
    };
    static const char *retention_keys [] = {
        "payload_days", "payload_seconds", "open_case_days", "open_case_seconds",
        "notice_days", "notice_seconds", NULL
    };
    const char *sections [] = { "lifecycle", "retention" };
    const char **keys [] = { lifecycle_keys, retention_keys };
    for (int s = 0; tree && s < 2; s++) {
        zconfig_t *section = zconfig_locate (tree, sections [s]);
        for (zconfig_t *key = section? zconfig_child (section): NULL; key; key = zconfig_next (key)) {
            bool known = false;
            for (int k = 0; keys [s][k] && !known; k++)
                known = streq (keys [s][k], zconfig_name (key));
            if (!known) {
                snprintf (error, error_size, "%s/%s: unknown key", sections [s], zconfig_name (key));
                return -KIM_E_CONFIG;
            }
        }
    }
    if (kim_config_number (tree, "lifecycle/deadline_days", 1, 3650, &deadline_days, error, error_size)
    ||  kim_config_number (tree, "lifecycle/expire_days", 1, 3650, &expire_days, error, error_size)
    ||  kim_config_number (tree, "lifecycle/deadline_seconds", 0, 315360000, &deadline_s, error, error_size)
    ||  kim_config_number (tree, "lifecycle/expire_seconds", 0, 315360000, &expire_s, error, error_size)
    ||  kim_config_number (tree, "retention/payload_days", 1, 36500, &payload_days, error, error_size)
    ||  kim_config_number (tree, "retention/payload_seconds", 0, 3153600000ull, &payload_s, error, error_size)
    ||  kim_config_number (tree, "retention/open_case_days", 0, 36500, &open_case_days, error, error_size)
    ||  kim_config_number (tree, "retention/open_case_seconds", 0, 3153600000ull, &open_case_s, error, error_size)
    ||  kim_config_number (tree, "retention/notice_days", 0, 3650, &notice_days, error, error_size)
    ||  kim_config_number (tree, "retention/notice_seconds", 0, 315360000, &notice_s, error, error_size))
        return -KIM_E_CONFIG;
    self->idle_ms = open_case_s? open_case_s * 1000: open_case_days * day;
    self->notice_ms = notice_s? notice_s * 1000: notice_days * day;
    if (self->idle_ms && self->notice_ms >= self->idle_ms) {
        snprintf (error, error_size, "retention/notice_days: the notice (%" PRIu64 " s) must "
                  "come before the end of retention/open_case_days (%" PRIu64 " s)",
                  self->notice_ms / 1000, self->idle_ms / 1000);
        return -KIM_E_CONFIG;
    }
    self->deadline_ms = deadline_s? deadline_s * 1000: deadline_days * day;
    self->expire_ms = expire_s? expire_s * 1000: expire_days * day;
    self->payload_ms = payload_s? payload_s * 1000: payload_days * day;
    zconfig_t *purposes = tree? zconfig_locate (tree, "lifecycle/purpose"): NULL;
    for (zconfig_t *purpose = purposes? zconfig_child (purposes): NULL; purpose;
         purpose = zconfig_next (purpose)) {
        const char *name = zconfig_name (purpose);
        if (!kim_code_valid (name) || self->purpose_count == 16) {
            snprintf (error, error_size, "lifecycle/purpose/%s: not a purpose code, or more "
                      "than 16 purposes", name);
            return -KIM_E_CONFIG;
        }
        for (zconfig_t *key = zconfig_child (purpose); key; key = zconfig_next (key))
            if (!streq (zconfig_name (key), "deadline_days")) {
                snprintf (error, error_size, "lifecycle/purpose/%s/%s: unknown key (expected "
                          "deadline_days)", name, zconfig_name (key));
                return -KIM_E_CONFIG;
            }
        char path [128];
        snprintf (path, sizeof path, "lifecycle/purpose/%s/deadline_days", name);
        uint64_t days = 0;
        if (kim_config_number (tree, path, 1, 3650, &days, error, error_size))
            return -KIM_E_CONFIG;
        if (!days) {
            snprintf (error, error_size, "%s: missing", path);
            return -KIM_E_CONFIG;
        }
        snprintf (self->purposes [self->purpose_count], KIM_CODE_MAX + 1, "%s", name);
        self->purpose_deadline_ms [self->purpose_count++] = days * day;
    }
    return 0;
}

static void
s_destroy (void **state_p)
{
    free (*state_p);
    *state_p = NULL;
}

//  The batch ended: what it read may change before the next one.
static void
s_settled (void *state)
{
    kim_lc_case_forget ((kim_lifecycle_t *) state);
}

int
kim_lifecycle_check_config (const kim_config_t *config, char *error, size_t error_size)
{
    kim_lifecycle_t scratch;
    memset (&scratch, 0, sizeof scratch);
    return s_configure (&scratch, (zconfig_t *) kim_config_tree (config), error, error_size);
}

int
kim_lifecycle_new (const kim_module_env_t *env, kim_hook_t *hook, char *error, size_t error_size)
{
    kim_lifecycle_t *self = (kim_lifecycle_t *) calloc (1, sizeof (kim_lifecycle_t));
    if (!self) {
        snprintf (error, error_size, "lifecycle: out of memory");
        return -KIM_E_NOMEM;
    }
    int rc = s_configure (self, (zconfig_t *) kim_config_tree (env->config), error, error_size);
    if (rc) {
        free (self);
        return rc;
    }
    rc = kim_lc_referral_split (env->store);
    if (rc)
        snprintf (error, error_size, "lifecycle: cannot move the referrals' states: %s",
                  kim_strerror (rc));
    else
    if ((rc = kim_lc_index_build (env->store)))
        snprintf (error, error_size, "lifecycle: cannot build the referral index: %s",
                  kim_strerror (rc));
    if (rc) {
        free (self);
        return rc;
    }
    rc = kim_lc_idle_arm (self, env->store);
    if (rc) {
        snprintf (error, error_size, "lifecycle: cannot set the open cases' inactivity "
                  "timers: %s", kim_strerror (rc));
        free (self);
        return rc;
    }
    zsys_info ("lifecycle: referrals are due after %" PRIu64 " s and expire %" PRIu64
               " s later; payloads of closed cases are kept %" PRIu64 " s",
               self->deadline_ms / 1000, self->expire_ms / 1000, self->payload_ms / 1000);
    hook->name = "lifecycle";
    hook->command = kim_lc_command;
    hook->check = s_check;
    hook->applied = s_applied;
    hook->acked = s_acked;
    hook->tick = s_tick;
    hook->committed = s_settled;
    hook->aborted = s_settled;
    hook->destroy = s_destroy;
    hook->state = self;
    return 0;
}

//  --------------------------------------------------------------------------
//  Self-test: the move table and the config section. The behaviour over
//  real sockets is tested in tests/integration/test_{lifecycle,deadlines,
//  cases,subscriptions}.c.

static void
s_test_config (const char *text, const char *expected_error)
{
    char error [256] = "";
    int err = 0;
    kim_config_t *config = kim_config_parse (text, error, sizeof error, &err);
    assert (config);
    kim_lifecycle_t self;
    memset (&self, 0, sizeof self);
    int rc = s_configure (&self, (zconfig_t *) kim_config_tree (config), error, sizeof error);
    if (expected_error) {
        assert (rc == -KIM_E_CONFIG);
        if (!strstr (error, expected_error)) {
            fprintf (stderr, "expected '%s', got '%s'\n", expected_error, error);
            assert (false);
        }
    }
    else
        assert (rc == 0);
    kim_config_destroy (&config);
}

void
kim_lifecycle_test (bool verbose)
{
    char text [128];
    s_moves_text (KIM_REFERRAL_ACCEPTED, S_BY_RECIPIENT, text, sizeof text);
    if (verbose)
        printf ("ACCEPTED, recipient: %s\n", text);
    assert (streq (text, "FORWARD, STATUS, OUTCOME, INFO_REQUEST, INFO_RESPONSE"));
    s_moves_text (KIM_REFERRAL_ACCEPTED, S_BY_SENDER, text, sizeof text);
    assert (streq (text, "WITHDRAW, INFO_REQUEST, INFO_RESPONSE"));
    s_moves_text (KIM_REFERRAL_COMPLETED, S_BY_SENDER | S_BY_RECIPIENT, text, sizeof text);
    assert (streq (text, "nothing"));
    s_moves_text (KIM_REFERRAL_SUSPENDED, S_BY_SENDER, text, sizeof text);
    assert (streq (text, "WITHDRAW"));
    assert (streq (kim_lc_state_name (KIM_REFERRAL_NOT_COMPETENT), "NOT_COMPETENT"));
    assert (kim_lc_state_open (KIM_REFERRAL_OVERDUE));
    assert (!kim_lc_state_open (KIM_REFERRAL_EXPIRED));

    //  Stored forms: the compact one round-trips, the in-memory one of
    //  version 1 is still read, anything cut or overlong is refused.
    kim_referral_t referral, back;
    memset (&referral, 0, sizeof referral);
    referral.version = S_REFERRAL_VERSION;
    referral.state = KIM_REFERRAL_DELIVERED;
    kim_str_copy (referral.id, sizeof referral.id, "r-1");
    kim_str_copy (referral.msg_id, sizeof referral.msg_id, "m-1");
    kim_str_copy (referral.sender, sizeof referral.sender, "kim.rheine");
    kim_str_copy (referral.recipient, sizeof referral.recipient, "jc.rheine");
    kim_str_copy (referral.case_id, sizeof referral.case_id, "c-1");
    kim_str_copy (referral.purpose, sizeof referral.purpose, "employment");
    referral.deadline = 1234567890123ull;
    referral.created_seq = 7;
    referral.last_seq = 9;
    uint8_t value [KIM_LC_REFERRAL_MAX + sizeof (kim_referral_t)];
    size_t size = kim_lc_referral_encode (&referral, value);
    assert (size < 100);
    assert (kim_lc_referral_decode (value, size, &back) == 0);
    assert (memcmp (&back, &referral, sizeof back) == 0);
    for (size_t cut = 0; cut < size; cut++)
        assert (kim_lc_referral_decode (value, cut, &back) == -KIM_E_IO);
    value [size] = 0;
    assert (kim_lc_referral_decode (value, size + 1, &back) == -KIM_E_IO);
    value [26] = KIM_ID_MAX + 1;            //  the id's length: more than an id holds
    assert (kim_lc_referral_decode (value, size, &back) == -KIM_E_IO);
    referral.version = S_LEGACY_VERSION;
    memcpy (value, &referral, sizeof referral);
    assert (kim_lc_referral_decode (value, sizeof referral, &back) == 0);
    assert (streq (back.case_id, "c-1") && back.last_seq == 9);

    kim_case_t kcase, kback;
    memset (&kcase, 0, sizeof kcase);
    kcase.version = S_CASE_VERSION;
    kim_str_copy (kcase.id, sizeof kcase.id, "c-1");
    kim_str_copy (kcase.lead, sizeof kcase.lead, "kim.rheine");
    kcase.created_seq = 3;
    for (uint32_t i = 0; i < S_PARTICIPANTS_MAX; i++)
        snprintf (kcase.participants [kcase.participant_count++], KIM_ORG_MAX + 1,
                  "jc.place%u", i);
    uint8_t case_value [KIM_LC_CASE_MAX];
    size = kim_lc_case_encode (&kcase, case_value);
    assert (kim_lc_case_decode (case_value, size, &kback) == 0);
    assert (memcmp (&kback, &kcase, sizeof kback) == 0);
    assert (kim_lc_case_decode (case_value, size - 1, &kback) == -KIM_E_IO);
    case_value [0] = 9;
    assert (kim_lc_case_decode (case_value, size, &kback) == -KIM_E_IO);

    s_test_config ("lifecycle\n    deadline_days = 7\n", NULL);
    s_test_config ("lifecycle\n    purpose\n        employment\n            deadline_days = 3\n", NULL);
    s_test_config ("lifecycle\n    deadline_days = 0\n", "lifecycle/deadline_days");
    s_test_config ("lifecycle\n    deadline_days = x\n", "lifecycle/deadline_days");
    s_test_config ("lifecycle\n    dedline_days = 3\n", "lifecycle/dedline_days: unknown key");
    s_test_config ("retention\n    payload_days = -1\n", "retention/payload_days");
    s_test_config ("retention\n    open_case_days = 0\n    notice_days = 90\n", NULL);
    s_test_config ("retention\n    open_case_days = 60\n    notice_days = 60\n",
                   "retention/notice_days: the notice");
    s_test_config ("retention\n    open_case_days = 36501\n", "retention/open_case_days");
    s_test_config ("lifecycle\n    purpose\n        employment\n            deadline_days = 9999\n",
                   "lifecycle/purpose/employment/deadline_days");
    s_test_config ("lifecycle\n    purpose\n        employment\n            deadline_days = 3\n"
                   "            expire_days = 3\n", "lifecycle/purpose/employment/expire_days: unknown key");
}
