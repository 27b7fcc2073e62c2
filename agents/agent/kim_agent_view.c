/*  kim_agent_view.c — the office's own view of its referrals.

    The broker keeps the authoritative state of every referral; the agent
    keeps a copy of the part that concerns its office, moved by the messages
    it sends (once the broker receipted them) and receives, so that the
    local system can list its open, answered and overdue referrals without
    a round trip. The moves follow PROTOCOL.md 9.4; a message that the
    broker accepted was allowed, so the view only applies it.

    A record: referral_id, role ("sender": we referred; "recipient": we were
    referred to), counterpart, case_id, purpose, state, deadline (ms, 0 when
    the broker's default applies), created_at, updated_at, last_type,
    last_msg_id, consent_id (when the transfer relied on a consent), and
    for answers code, org and note. "overdue" is computed on output: state
    OVERDUE, or SENT/DELIVERED past the deadline.

    The case view (kim_agent_view_case) keeps, per case the office takes
    part in, what the office has seen of it: state, lead (when a message
    shows it), the referrals, an open handover offer, and a timeline of the
    messages, sent and received.
*/
#include <czmq.h>

#include "kim_agent.h"

static void
s_set_string (json_t *record, const char *key, const char *value)
{
    if (value && *value)
        json_object_set_new (record, key, json_string (value));
}

static json_t *
s_open (const char *id, const char *role, const char *counterpart, const kim_msg_t *msg,
        const char *state, uint64_t now)
{
    json_t *record = json_pack ("{s:s, s:s, s:s, s:s, s:I, s:I}", "referral_id", id,
                                "role", role, "counterpart", counterpart, "state", state,
                                "deadline", (json_int_t) msg->deadline,
                                "created_at", (json_int_t) now);
    if (record) {
        s_set_string (record, "case_id", msg->case_id);
        s_set_string (record, "purpose", msg->purpose);
        s_set_string (record, "subject", msg->subject);
        //  So that a revocation of the consent can suspend it here too
        if (msg->basis == KIM_BASIS_CONSENT)
            s_set_string (record, "consent_id", msg->consent_id);
    }
    return record;
}

static const char *
s_state (json_t *record)
{
    const char *state = json_string_value (json_object_get (record, "state"));
    return state? state: "";
}

static bool
s_in (const char *state, const char *const *states)
{
    for (size_t i = 0; states [i]; i++)
        if (streq (state, states [i]))
            return true;
    return false;
}

static const char *const s_open_states [] = {
    "SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE", "SUSPENDED", "LAPSED", NULL
};
static const char *const s_unanswered [] = { "SENT", "DELIVERED", "OVERDUE", NULL };

json_t *
kim_agent_view_apply (const char *self_org, const kim_msg_t *msg, bool outgoing,
                      json_t *record, uint64_t now, json_t **opened)
{
    *opened = NULL;
    const char *id = msg->referral_id;
    const char *state = record? s_state (record): "";
    const char *next = NULL;
    json_t *created = NULL;

    switch (msg->type) {
        case KIM_TYPE_REFERRAL:
            if (!record)
                created = outgoing? s_open (id, "sender", msg->recipient, msg, "SENT", now)
                                  : s_open (id, "recipient", msg->sender, msg, "DELIVERED", now);
            break;
        case KIM_TYPE_DELIVERED:
            if (record && streq (state, "SENT"))
                next = "DELIVERED";
            break;
        case KIM_TYPE_ACCEPT:
            if (s_in (state, s_unanswered))
                next = "ACCEPTED";
            break;
        case KIM_TYPE_DECLINE:
            if (s_in (state, s_unanswered))
                next = "DECLINED";
            break;
        case KIM_TYPE_NOT_COMPETENT:
            if (s_in (state, s_unanswered))
                next = "NOT_COMPETENT";
            break;
        case KIM_TYPE_STATUS:
            if (streq (state, "ACCEPTED") || streq (state, "IN_PROGRESS"))
                next = "IN_PROGRESS";
            break;
        case KIM_TYPE_OUTCOME:
            if (streq (state, "ACCEPTED") || streq (state, "IN_PROGRESS"))
                next = "COMPLETED";
            break;
        case KIM_TYPE_WITHDRAW:
            if (s_in (state, s_open_states))
                next = "WITHDRAWN";
            break;
        case KIM_TYPE_REMINDER:
            if (streq (state, "SENT") || streq (state, "DELIVERED"))
                next = "OVERDUE";
            break;
        case KIM_TYPE_EXPIRED:
            if (record)
                next = "EXPIRED";
            break;
        case KIM_TYPE_UNDELIVERABLE: {
            //  Another district's broker refused what opened our referral:
            //  the broker closes it (PROTOCOL.md 16.7). A refused answer
            //  leaves it; the REFERRAL was the last thing we sent on a
            //  referral still SENT (or OVERDUE, after its REMINDER).
            const char *last = json_string_value (json_object_get (record, "last_msg_id"));
            const char *last_type = json_string_value (json_object_get (record, "last_type"));
            if (record && (streq (state, "SENT") || streq (state, "OVERDUE"))
            &&  ((last && streq (last, msg->ref_msg_id))
            ||   (last_type && streq (last_type, "REMINDER"))))
                next = "UNDELIVERABLE";
            break;
        }
        case KIM_TYPE_HANDED_OVER: {
            //  A case handed to us from another district: its open referral,
            //  ours now, in the state the broker there held (PROTOCOL.md 16.6)
            char upper [KIM_CODE_MAX + 1];
            size_t n = 0;
            for (; msg->code [n] && n < KIM_CODE_MAX; n++)
                upper [n] = (char) toupper ((unsigned char) msg->code [n]);
            upper [n] = 0;
            if (!record && s_in (upper, s_open_states))
                created = s_open (id, "sender", msg->org, msg, upper, now);
            break;
        }
        case KIM_TYPE_FORWARD:
            //  The old referral ends; the FORWARD's msg_id names a new one,
            //  from the forwarding organisation to `org`.
            if (s_in (state, s_open_states) && (outgoing || !streq (msg->org, self_org)))
                next = "FORWARDED";
            if (outgoing)
                *opened = s_open (msg->msg_id, "sender", msg->org, msg, "SENT", now);
            else
            if (streq (msg->org, self_org))
                *opened = s_open (msg->msg_id, "recipient", msg->sender, msg, "DELIVERED", now);
            if (*opened)
                s_set_string (*opened, "forwarded_from", id);
            break;
        case KIM_TYPE_INFO_REQUEST:
        case KIM_TYPE_INFO_RESPONSE:
            if (record)
                next = state;
            break;
        default:
            break;
    }
    json_t *result = created;
    if (!result && next && record) {
        result = json_deep_copy (record);
        json_object_set_new (result, "state", json_string (next));
        if (msg->type == KIM_TYPE_REMINDER || msg->type == KIM_TYPE_EXPIRED)
            if (msg->deadline)
                json_object_set_new (result, "deadline", json_integer ((json_int_t) msg->deadline));
        s_set_string (result, "code", msg->code);
        s_set_string (result, "org", msg->org);
    }
    if (result) {
        json_object_set_new (result, "updated_at", json_integer ((json_int_t) now));
        json_object_set_new (result, "last_type", json_string (kim_type_name (msg->type)));
        json_object_set_new (result, "last_msg_id", json_string (msg->msg_id));
    }
    return result;
}

void
kim_agent_view_finish (json_t *record, uint64_t now)
{
    const char *state = s_state (record);
    uint64_t deadline = (uint64_t) json_integer_value (json_object_get (record, "deadline"));
    bool overdue = streq (state, "OVERDUE")
                || ((streq (state, "SENT") || streq (state, "DELIVERED"))
                    && deadline && now > deadline);
    json_object_set_new (record, "overdue", json_boolean (overdue));
}

json_t *
kim_agent_view_revoked (json_t *record, const kim_msg_t *msg, uint64_t now)
{
    const char *consent = json_string_value (json_object_get (record, "consent_id"));
    if (!consent || !streq (consent, msg->grant_id) || !s_in (s_state (record), s_open_states)
    ||  streq (s_state (record), "SUSPENDED") || streq (s_state (record), "LAPSED"))
        return NULL;
    //  The broker's notice says why (PROTOCOL.md 9.3): a consent that ran
    //  out lapses (renew it), one the person took back suspends
    const char *state = streq (msg->code, "expired")? "LAPSED": "SUSPENDED";
    json_t *result = json_deep_copy (record);
    if (result) {
        json_object_set_new (result, "state", json_string (state));
        json_object_set_new (result, "updated_at", json_integer ((json_int_t) now));
        json_object_set_new (result, "last_type", json_string (kim_type_name (msg->type)));
        json_object_set_new (result, "last_msg_id", json_string (msg->msg_id));
    }
    return result;
}

//  The states a handover moves (PROTOCOL.md 9.4: the open ones; not
//  SUSPENDED)
static const char *const s_movable [] = {
    "SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE", NULL
};

json_t *
kim_agent_view_handover (const char *self_org, json_t *record, const char *old_lead,
                         const char *new_lead, const kim_msg_t *msg, uint64_t now)
{
    const char *role = json_string_value (json_object_get (record, "role"));
    const char *counterpart = json_string_value (json_object_get (record, "counterpart"));
    if (!role || !counterpart || !s_in (s_state (record), s_movable) || streq (old_lead, new_lead))
        return NULL;
    json_t *result = NULL;
    if (streq (role, "recipient") && streq (counterpart, old_lead)
    &&  !streq (new_lead, self_org)) {
        //  We were referred by the old lead: our answers go to the new one
        result = json_deep_copy (record);
        if (result) {
            json_object_set_new (result, "counterpart", json_string (new_lead));
            json_object_set_new (result, "handed_over_from", json_string (old_lead));
        }
    }
    else
    if (streq (role, "sender") && streq (old_lead, self_org)) {
        //  We referred, and handed the case over: the new lead is the
        //  referral's sender from now on
        result = json_deep_copy (record);
        if (result)
            json_object_set_new (result, "handed_over_to", json_string (new_lead));
    }
    if (result) {
        json_object_set_new (result, "updated_at", json_integer ((json_int_t) now));
        json_object_set_new (result, "last_type", json_string (kim_type_name (msg->type)));
        json_object_set_new (result, "last_msg_id", json_string (msg->msg_id));
    }
    return result;
}

//  --------------------------------------------------------------------------
//  Case view

static void
s_add_unique (json_t *array, const char *value)
{
    size_t index;
    json_t *item;
    json_array_foreach (array, index, item)
        if (streq (json_string_value (item)? json_string_value (item): "", value))
            return;
    json_array_append_new (array, json_string (value));
}

static json_t *
s_string_array (const char items [][KIM_ID_MAX + 1], size_t count)
{
    json_t *array = json_array ();
    for (size_t i = 0; array && i < count; i++)
        json_array_append_new (array, json_string (items [i]));
    return array;
}

json_t *
kim_agent_view_case (const char *self_org, const kim_msg_t *msg, bool outgoing,
                     const char *case_id, json_t *record, uint64_t seq, uint64_t now)
{
    if (!case_id || !*case_id)
        return NULL;
    json_t *result = record? json_deep_copy (record)
                           : json_pack ("{s:s, s:s, s:s, s:o, s:I, s:o}", "case_id", case_id,
                                        "state", "OPEN", "lead", "", "referrals", json_array (),
                                        "created_at", (json_int_t) now, "timeline", json_array ());
    if (!result)
        return NULL;
    const char *sender = outgoing? self_org: msg->sender;
    const char *to = msg->recipient [0]? msg->recipient: outgoing? "": self_org;
    json_t *referrals = json_object_get (result, "referrals");
    if (msg->referral_id [0] && json_is_array (referrals)
    &&  (msg->type == KIM_TYPE_REFERRAL || msg->type == KIM_TYPE_FORWARD))
        s_add_unique (referrals, msg->referral_id);
    if (msg->type == KIM_TYPE_FORWARD && json_is_array (referrals))
        s_add_unique (referrals, msg->msg_id);      //  the new, linked referral

    switch (msg->type) {
        case KIM_TYPE_CONSENT_GRANT:
            //  Only the lead grants, and a grant opens an unknown case
            if (outgoing)
                json_object_set_new (result, "lead", json_string (self_org));
            break;
        case KIM_TYPE_HANDOVER_OFFER: {
            //  Only the lead offers
            json_object_set_new (result, "lead", json_string (sender));
            json_t *offer = json_pack ("{s:s, s:s, s:s, s:s, s:o, s:I}", "msg_id", msg->msg_id,
                                       "from", sender, "to", to,
                                       "state", "OPEN", "referrals",
                                       s_string_array (msg->referrals, msg->referral_count),
                                       "offered_at", (json_int_t) now);
            if (offer)
                json_object_set_new (result, "offer", offer);
            break;
        }
        case KIM_TYPE_HANDOVER_ACCEPT:
        case KIM_TYPE_HANDOVER_DECLINE: {
            bool accepted = msg->type == KIM_TYPE_HANDOVER_ACCEPT;
            json_t *offer = json_object_get (result, "offer");
            const char *offer_id = json_string_value (json_object_get (offer, "msg_id"));
            if (offer_id && streq (offer_id, msg->ref_msg_id))
                json_object_set_new (offer, "state", json_string (accepted? "ACCEPTED"
                                                                          : "DECLINED"));
            if (accepted)
                json_object_set_new (result, "lead", json_string (sender));
            break;
        }
        case KIM_TYPE_CASE_CLOSED:
            json_object_set_new (result, "state", json_string ("CLOSED"));
            json_object_set_new (result, "lead", json_string (sender));
            break;
        default:
            break;
    }
    json_t *entry = json_pack ("{s:I, s:I, s:s, s:s, s:s, s:s, s:s}", "at", (json_int_t) now,
                               "seq", (json_int_t) seq, "direction", outgoing? "out": "in",
                               "type", kim_type_name (msg->type), "msg_id", msg->msg_id,
                               "from", sender, "to", to);
    if (entry) {
        s_set_string (entry, "referral_id", msg->referral_id);
        s_set_string (entry, "code", msg->code);
        s_set_string (entry, "org", msg->org);
        s_set_string (entry, "consent", msg->grant_id);
        json_t *timeline = json_object_get (result, "timeline");
        if (!json_is_array (timeline)) {
            timeline = json_array ();
            json_object_set_new (result, "timeline", timeline);
        }
        //  Bounded: the oldest entries go first (the broker's log has all)
        while (json_array_size (timeline) >= KIM_AGENT_TIMELINE_MAX)
            json_array_remove (timeline, 0);
        json_array_append_new (timeline, entry);
    }
    json_object_set_new (result, "updated_at", json_integer ((json_int_t) now));
    json_object_set_new (result, "last_type", json_string (kim_type_name (msg->type)));
    return result;
}
