/*  test_agent_view.c — the referral view's moves, one message at a time.

    kim_agent_view.c decides how each sent or received message moves the
    office's copy of a referral (PROTOCOL.md 9.4). The integration tests
    walk the common path; this walks every type, both sides, forwards,
    reminders and expiry, and the overdue flag.
*/
#include <czmq.h>

#include "kim_agent.h"

#define CHECK(cond) \
    do { if (!(cond)) { fprintf (stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
         #cond); exit (1); } } while (0)

static kim_msg_t
s_msg (kim_type_t type, const char *msg_id, const char *sender, const char *recipient,
       const char *referral_id)
{
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = type;
    kim_str_copy (msg.msg_id, sizeof msg.msg_id, msg_id);
    kim_str_copy (msg.sender, sizeof msg.sender, sender);
    kim_str_copy (msg.recipient, sizeof msg.recipient, recipient);
    kim_str_copy (msg.referral_id, sizeof msg.referral_id, referral_id);
    return msg;
}

//  Applies a message to *record (replacing it when the view moves).
static bool
s_apply (const char *self_org, const kim_msg_t *msg, bool outgoing, json_t **record,
         json_t **opened)
{
    json_t *dummy = NULL;
    json_t *updated = kim_agent_view_apply (self_org, msg, outgoing, *record, 1000,
                                            opened? opened: &dummy);
    json_decref (dummy);
    if (!updated)
        return false;
    json_decref (*record);
    *record = updated;
    return true;
}

static const char *
s_state (json_t *record)
{
    return json_string_value (json_object_get (record, "state"));
}

int
main (void)
{
    //  We refer: SENT, DELIVERED, OVERDUE, then answered late, worked, done
    json_t *record = NULL;
    kim_msg_t msg = s_msg (KIM_TYPE_REFERRAL, "m1", "", "jc.b", "r1");
    msg.deadline = 500;
    CHECK (s_apply ("kim.a", &msg, true, &record, NULL));
    CHECK (streq (s_state (record), "SENT"));
    CHECK (streq (json_string_value (json_object_get (record, "role")), "sender"));
    CHECK (streq (json_string_value (json_object_get (record, "counterpart")), "jc.b"));
    kim_agent_view_finish (record, 400);
    CHECK (json_is_false (json_object_get (record, "overdue")));
    kim_agent_view_finish (record, 600);
    CHECK (json_is_true (json_object_get (record, "overdue")));
    //  A second REFERRAL with the same id does not reopen it
    CHECK (!s_apply ("kim.a", &msg, true, &record, NULL));
    msg = s_msg (KIM_TYPE_DELIVERED, "b1", "kim.test", "kim.a", "r1");
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "DELIVERED"));
    msg = s_msg (KIM_TYPE_REMINDER, "b2", "kim.test", "kim.a", "r1");
    msg.deadline = 500;
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "OVERDUE"));
    kim_agent_view_finish (record, 0);
    CHECK (json_is_true (json_object_get (record, "overdue")));
    msg = s_msg (KIM_TYPE_STATUS, "s0", "jc.b", "kim.a", "r1");
    CHECK (!s_apply ("kim.a", &msg, false, &record, NULL));     //  not before an accept
    msg = s_msg (KIM_TYPE_ACCEPT, "a1", "jc.b", "kim.a", "r1");
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "ACCEPTED"));
    CHECK (streq (json_string_value (json_object_get (record, "last_msg_id")), "a1"));
    kim_agent_view_finish (record, 600);
    CHECK (json_is_false (json_object_get (record, "overdue")));
    msg = s_msg (KIM_TYPE_INFO_REQUEST, "i1", "kim.a", "jc.b", "r1");
    CHECK (s_apply ("kim.a", &msg, true, &record, NULL));
    CHECK (streq (s_state (record), "ACCEPTED"));
    msg = s_msg (KIM_TYPE_STATUS, "s1", "jc.b", "kim.a", "r1");
    kim_str_copy (msg.code, sizeof msg.code, "appointment_set");
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "IN_PROGRESS"));
    CHECK (streq (json_string_value (json_object_get (record, "code")), "appointment_set"));
    msg = s_msg (KIM_TYPE_OUTCOME, "o1", "jc.b", "kim.a", "r1");
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "COMPLETED"));
    //  Closed: nothing moves it any more
    msg = s_msg (KIM_TYPE_DECLINE, "d1", "jc.b", "kim.a", "r1");
    CHECK (!s_apply ("kim.a", &msg, false, &record, NULL));
    msg = s_msg (KIM_TYPE_WITHDRAW, "w1", "kim.a", "jc.b", "r1");
    CHECK (!s_apply ("kim.a", &msg, true, &record, NULL));
    json_decref (record);
    record = NULL;

    //  We are referred to; we decline; another is withdrawn; one expires
    msg = s_msg (KIM_TYPE_REFERRAL, "m2", "kim.a", "jc.b", "r2");
    CHECK (s_apply ("jc.b", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "DELIVERED"));
    CHECK (streq (json_string_value (json_object_get (record, "role")), "recipient"));
    CHECK (streq (json_string_value (json_object_get (record, "counterpart")), "kim.a"));
    json_t *copy = json_deep_copy (record);
    msg = s_msg (KIM_TYPE_DECLINE, "d2", "jc.b", "kim.a", "r2");
    kim_str_copy (msg.code, sizeof msg.code, "capacity");
    CHECK (s_apply ("jc.b", &msg, true, &record, NULL));
    CHECK (streq (s_state (record), "DECLINED"));
    msg = s_msg (KIM_TYPE_WITHDRAW, "w2", "kim.a", "jc.b", "r2");
    CHECK (s_apply ("jc.b", &msg, false, &copy, NULL));
    CHECK (streq (s_state (copy), "WITHDRAWN"));
    json_decref (copy);
    json_decref (record);
    record = NULL;
    msg = s_msg (KIM_TYPE_REFERRAL, "m3", "", "jc.b", "r3");
    CHECK (s_apply ("kim.a", &msg, true, &record, NULL));
    msg = s_msg (KIM_TYPE_EXPIRED, "e3", "kim.test", "kim.a", "r3");
    msg.deadline = 700;
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "EXPIRED"));
    CHECK (json_integer_value (json_object_get (record, "deadline")) == 700);
    kim_agent_view_finish (record, 10000);
    CHECK (json_is_false (json_object_get (record, "overdue")));
    json_decref (record);
    record = NULL;

    //  Federation: a REFERRAL refused by the far broker closes; a refused
    //  answer does not; a handed-over referral opens in its state
    msg = s_msg (KIM_TYPE_REFERRAL, "m4", "", "jc.far", "r4");
    CHECK (s_apply ("kim.a", &msg, true, &record, NULL));
    msg = s_msg (KIM_TYPE_UNDELIVERABLE, "u1", "broker.a", "kim.a", "r4");
    kim_str_copy (msg.ref_msg_id, sizeof msg.ref_msg_id, "other");
    CHECK (!s_apply ("kim.a", &msg, false, &record, NULL));
    kim_str_copy (msg.ref_msg_id, sizeof msg.ref_msg_id, "m4");
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "UNDELIVERABLE"));
    json_decref (record);
    record = NULL;
    msg = s_msg (KIM_TYPE_HANDED_OVER, "broker-9", "broker.b", "kim.a", "r5");
    kim_str_copy (msg.org, sizeof msg.org, "jc.b");
    kim_str_copy (msg.case_id, sizeof msg.case_id, "c5");
    kim_str_copy (msg.code, sizeof msg.code, "in_progress");
    msg.deadline = 900;
    CHECK (s_apply ("kim.a", &msg, false, &record, NULL));
    CHECK (streq (s_state (record), "IN_PROGRESS"));
    CHECK (streq (json_string_value (json_object_get (record, "role")), "sender"));
    CHECK (streq (json_string_value (json_object_get (record, "counterpart")), "jc.b"));
    CHECK (!s_apply ("kim.a", &msg, false, &record, NULL));    //  known: not again
    json_decref (record);
    record = NULL;

    //  Forwards: we forward (old FORWARDED, a new one of ours opens); the
    //  new recipient opens it; the original sender sees FORWARDED
    msg = s_msg (KIM_TYPE_REFERRAL, "m4", "kim.a", "jc.b", "r4");
    CHECK (s_apply ("jc.b", &msg, false, &record, NULL));
    json_t *at_sender = NULL;
    kim_msg_t sent = s_msg (KIM_TYPE_REFERRAL, "m4", "", "jc.b", "r4");
    CHECK (s_apply ("kim.a", &sent, true, &at_sender, NULL));
    kim_msg_t forward = s_msg (KIM_TYPE_FORWARD, "f4", "jc.b", "kim.a", "r4");
    kim_str_copy (forward.org, sizeof forward.org, "ja.c");
    json_t *opened = NULL;
    CHECK (s_apply ("jc.b", &forward, true, &record, &opened));
    CHECK (streq (s_state (record), "FORWARDED"));
    CHECK (opened);
    CHECK (streq (json_string_value (json_object_get (opened, "referral_id")), "f4"));
    CHECK (streq (json_string_value (json_object_get (opened, "role")), "sender"));
    CHECK (streq (json_string_value (json_object_get (opened, "counterpart")), "ja.c"));
    CHECK (streq (json_string_value (json_object_get (opened, "forwarded_from")), "r4"));
    json_decref (opened);
    opened = NULL;
    json_t *nothing = NULL;
    CHECK (!s_apply ("ja.c", &forward, false, &nothing, &opened));
    CHECK (opened);
    CHECK (streq (json_string_value (json_object_get (opened, "role")), "recipient"));
    CHECK (streq (json_string_value (json_object_get (opened, "counterpart")), "jc.b"));
    CHECK (streq (s_state (opened), "DELIVERED"));
    json_decref (opened);
    opened = NULL;
    CHECK (s_apply ("kim.a", &forward, false, &at_sender, &opened));
    CHECK (streq (s_state (at_sender), "FORWARDED"));
    CHECK (!opened);
    json_decref (at_sender);
    json_decref (record);

    //  Messages of no referral leave the view alone
    record = NULL;
    msg = s_msg (KIM_TYPE_CONSENT_GRANT, "g1", "", "", "");
    CHECK (!s_apply ("kim.a", &msg, true, &record, NULL));
    msg = s_msg (KIM_TYPE_ACCEPT, "a9", "jc.b", "kim.a", "r-unknown");
    CHECK (!s_apply ("kim.a", &msg, false, &record, NULL));

    //  A revoked consent suspends the open referrals that relied on it
    record = NULL;
    msg = s_msg (KIM_TYPE_REFERRAL, "m5", "", "jc.b", "r5");
    msg.basis = KIM_BASIS_CONSENT;
    kim_str_copy (msg.consent_id, sizeof msg.consent_id, "g5");
    CHECK (s_apply ("kim.a", &msg, true, &record, NULL));
    CHECK (streq (json_string_value (json_object_get (record, "consent_id")), "g5"));
    kim_msg_t revoke = s_msg (KIM_TYPE_CONSENT_REVOKE, "v5", "", "", "");
    kim_str_copy (revoke.grant_id, sizeof revoke.grant_id, "g-other");
    CHECK (!kim_agent_view_revoked (record, &revoke, 2000));
    kim_str_copy (revoke.grant_id, sizeof revoke.grant_id, "g5");
    json_t *suspended = kim_agent_view_revoked (record, &revoke, 2000);
    CHECK (suspended && streq (s_state (suspended), "SUSPENDED"));
    CHECK (!kim_agent_view_revoked (suspended, &revoke, 2000));     //  once
    json_decref (suspended);
    msg = s_msg (KIM_TYPE_WITHDRAW, "w5", "", "jc.b", "r5");
    CHECK (s_apply ("kim.a", &msg, true, &record, NULL));
    CHECK (!kim_agent_view_revoked (record, &revoke, 2000));        //  closed
    json_decref (record);

    //  The case view: lead, offer, closing, timeline
    msg = s_msg (KIM_TYPE_CONSENT_GRANT, "g6", "", "", "");
    CHECK (!kim_agent_view_case ("kim.a", &msg, true, "", NULL, 1, 1000));
    json_t *acase = kim_agent_view_case ("kim.a", &msg, true, "c6", NULL, 1, 1000);
    CHECK (streq (json_string_value (json_object_get (acase, "lead")), "kim.a"));
    CHECK (streq (json_string_value (json_object_get (acase, "state")), "OPEN"));
    msg = s_msg (KIM_TYPE_REFERRAL, "m6", "", "jc.b", "r6");
    json_t *next = kim_agent_view_case ("kim.a", &msg, true, "c6", acase, 2, 1000);
    json_decref (acase);
    acase = next;
    CHECK (json_array_size (json_object_get (acase, "referrals")) == 1);
    msg = s_msg (KIM_TYPE_HANDOVER_OFFER, "h6", "", "kim.c", "");
    kim_str_copy (msg.referrals [0], sizeof msg.referrals [0], "r6");
    msg.referral_count = 1;
    next = kim_agent_view_case ("kim.a", &msg, true, "c6", acase, 3, 1000);
    json_decref (acase);
    acase = next;
    json_t *offer = json_object_get (acase, "offer");
    CHECK (streq (json_string_value (json_object_get (offer, "state")), "OPEN"));
    CHECK (streq (json_string_value (json_object_get (offer, "to")), "kim.c"));
    msg = s_msg (KIM_TYPE_HANDOVER_ACCEPT, "x6", "kim.c", "kim.a", "");
    kim_str_copy (msg.ref_msg_id, sizeof msg.ref_msg_id, "h6");
    next = kim_agent_view_case ("kim.a", &msg, false, "c6", acase, 4, 1000);
    json_decref (acase);
    acase = next;
    CHECK (streq (json_string_value (json_object_get (acase, "lead")), "kim.c"));
    CHECK (streq (json_string_value (json_object_get (json_object_get (acase, "offer"),
                                                      "state")), "ACCEPTED"));
    msg = s_msg (KIM_TYPE_CASE_CLOSED, "z6", "kim.c", "", "");
    next = kim_agent_view_case ("kim.a", &msg, false, "c6", acase, 5, 1000);
    json_decref (acase);
    acase = next;
    CHECK (streq (json_string_value (json_object_get (acase, "state")), "CLOSED"));
    json_t *timeline = json_object_get (acase, "timeline");
    CHECK (json_array_size (timeline) == 5);
    json_t *last = json_array_get (timeline, 4);
    CHECK (streq (json_string_value (json_object_get (last, "direction")), "in"));
    CHECK (streq (json_string_value (json_object_get (last, "from")), "kim.c"));
    CHECK (streq (json_string_value (json_object_get (last, "to")), "kim.a"));
    CHECK (json_integer_value (json_object_get (last, "seq")) == 5);
    //  The timeline is bounded, the oldest entries go
    for (int i = 0; i < KIM_AGENT_TIMELINE_MAX + 10; i++) {
        msg = s_msg (KIM_TYPE_STATUS, "s6", "jc.b", "kim.a", "r6");
        next = kim_agent_view_case ("kim.a", &msg, false, "c6", acase, 6 + (uint64_t) i, 1000);
        json_decref (acase);
        acase = next;
    }
    timeline = json_object_get (acase, "timeline");
    CHECK (json_array_size (timeline) == KIM_AGENT_TIMELINE_MAX);
    CHECK (json_integer_value (json_object_get (json_array_get (timeline, 0), "seq")) > 5);
    json_decref (acase);

    //  A handover moves the open referrals of the old lead: on the
    //  recipient's side the counterpart, on the old lead's side the sender
    record = NULL;
    msg = s_msg (KIM_TYPE_REFERRAL, "m7", "kim.a", "jc.b", "r7");
    CHECK (s_apply ("jc.b", &msg, false, &record, NULL));
    kim_msg_t took = s_msg (KIM_TYPE_HANDOVER_ACCEPT, "x7", "kim.c", "kim.a", "");
    CHECK (!kim_agent_view_handover ("jc.b", record, "kim.x", "kim.c", &took, 3000));
    json_t *moved = kim_agent_view_handover ("jc.b", record, "kim.a", "kim.c", &took, 3000);
    CHECK (moved);
    CHECK (streq (json_string_value (json_object_get (moved, "counterpart")), "kim.c"));
    CHECK (streq (json_string_value (json_object_get (moved, "handed_over_from")), "kim.a"));
    CHECK (streq (s_state (moved), "DELIVERED"));
    json_decref (moved);
    json_t *ours = NULL;
    msg = s_msg (KIM_TYPE_REFERRAL, "m7", "", "jc.b", "r7");
    CHECK (s_apply ("kim.a", &msg, true, &ours, NULL));
    moved = kim_agent_view_handover ("kim.a", ours, "kim.a", "kim.c", &took, 3000);
    CHECK (moved);
    CHECK (streq (json_string_value (json_object_get (moved, "handed_over_to")), "kim.c"));
    CHECK (streq (json_string_value (json_object_get (moved, "counterpart")), "jc.b"));
    json_decref (moved);
    //  Closed and suspended referrals stay where they are
    msg = s_msg (KIM_TYPE_DECLINE, "d7", "jc.b", "kim.a", "r7");
    kim_str_copy (msg.code, sizeof msg.code, "capacity");
    CHECK (s_apply ("jc.b", &msg, true, &record, NULL));
    CHECK (!kim_agent_view_handover ("jc.b", record, "kim.a", "kim.c", &took, 3000));
    json_object_set_new (ours, "state", json_string ("SUSPENDED"));
    CHECK (!kim_agent_view_handover ("kim.a", ours, "kim.a", "kim.c", &took, 3000));
    json_decref (ours);
    json_decref (record);

    printf ("agent.view: OK\n");
    return 0;
}
