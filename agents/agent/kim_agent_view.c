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
    last_msg_id, and for answers code, org and note. "overdue" is computed
    on output: state OVERDUE, or SENT/DELIVERED past the deadline.
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
    "SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE", "SUSPENDED", NULL
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
