/*  test_lifecycle.c — every transition and every refusal of the referral
    life cycle (brief §4), over a real broker.

    SENT -> DELIVERED (the recipient acks; the sender gets DELIVERED) ->
    ACCEPTED -> IN_PROGRESS -> COMPLETED; DECLINED; NOT_COMPETENT; FORWARDED
    with a new linked referral that reaches the new organisation; WITHDRAWN by
    the sender; INFO_REQUEST/INFO_RESPONSE both ways. Refusals: an answer by
    the sender, by an outsider, to the wrong party, in the wrong state, for an
    unknown referral, a REFERRAL with a known id, a deadline that has passed
    (beyond the clock skew). Each REJECT names the state
    and the allowed moves. At the end the stopped broker's log holds a state
    record for each change.
*/
#include "kim_lctest.h"
#include "kim_store.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"
#define MBE     "mbe.rheine"
#define IKT     "ikt.rheine"
#define JA      "ja.rheine"
#define ABA     "aba.rheine"

//  Counts state records whose body holds `a` and `b` (msgpack strings are
//  stored as plain bytes).
static int
s_state_records (kim_store_t *store, const char *a, const char *b)
{
    int count = 0;
    KIM_CHECK (kim_store_read_begin (store) == 0);
    for (uint64_t seq = 1; seq <= kim_store_head (store); seq++) {
        kim_record_t record;
        KIM_CHECK (kim_store_read (store, seq, &record) == 0);
        if (record.kind == KIM_RECORD_STATE
        &&  memmem (record.body, record.body_size, a, strlen (a))
        &&  memmem (record.body, record.body_size, b, strlen (b)))
            count++;
    }
    kim_store_read_end (store);
    return count;
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { KIM, JC, MBE, IKT, JA, ABA, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 64, false);
    kim_client_t *jc = kim_testbroker_client (broker, JC, 64, false);
    kim_client_t *mbe = kim_testbroker_client (broker, MBE, 64, false);
    kim_client_t *ikt = kim_testbroker_client (broker, IKT, 64, false);
    kim_client_t *ja = kim_testbroker_client (broker, JA, 64, false);
    kim_client_t *aba = kim_testbroker_client (broker, ABA, 0, false);
    KIM_CHECK (kim && jc && mbe && ikt && ja && aba);
    kim_msg_t msg;
    kim_event_t event;

    //  --- R1: SENT -> DELIVERED -> ACCEPTED -> IN_PROGRESS -> COMPLETED
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R1", "m-r1", "C-1");
    LC_SEND (kim, &msg, 0, "");

    //  Refusals while SENT: the sender answering its own referral...
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, JC, "R1", "m-bad-1", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_STATE, "referral R1 is SENT",
             "the recipient may send ACCEPT, DECLINE, NOT_COMPETENT, FORWARD, INFO_REQUEST",
             "the sender may send WITHDRAW, INFO_REQUEST, INFO_RESPONSE");
    //  ... an outsider, an answer to the wrong party, a move not yet allowed,
    //  the recipient withdrawing, an unknown referral, a reused referral id.
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R1", "m-bad-2", NULL);
    LC_SEND (aba, &msg, KIM_E_UNKNOWN_REFERRAL, "no referral R1 with " ABA " as its sender");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, ABA, "R1", "m-bad-3", NULL);
    LC_SEND (jc, &msg, KIM_E_NOT_PARTY, "go to its other party, " KIM);
    s_lc_msg (&msg, KIM_TYPE_STATUS, KIM, "R1", "m-bad-4", "in_progress");
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "referral R1 is SENT");
    s_lc_msg (&msg, KIM_TYPE_OUTCOME, KIM, "R1", "m-bad-5", "completed");
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "referral R1 is SENT");
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, KIM, "R1", "m-bad-6", NULL);
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "referral R1 is SENT");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R-none", "m-bad-7", NULL);
    LC_SEND (jc, &msg, KIM_E_UNKNOWN_REFERRAL, "no referral R-none");
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R1", "m-r1-again", "C-1");
    LC_SEND (kim, &msg, KIM_E_REFERRAL_EXISTS, "referral R1 exists already");
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, KIM, "R-self", "m-self", "C-1");
    LC_SEND (kim, &msg, KIM_E_BAD_VALUE, "refer to itself");
    //  An outsider cannot refer into a case it takes no part in.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R-intruder", "m-intruder", "C-1");
    LC_SEND (aba, &msg, KIM_E_NOT_PARTY, "takes no part in case C-1");
    //  A deadline that has passed is refused; within the clock skew
    //  (broker/clock_skew_s, 300 s by default) it is not.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "R-past", "m-past", "C-1");
    msg.deadline = (uint64_t) zclock_time () - 600 * 1000;
    LC_SEND (kim, &msg, KIM_E_BAD_VALUE, "deadline ", "has passed", "300 s of clock skew");
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "R-skew", "m-skew", "C-1");
    msg.deadline = (uint64_t) zclock_time () - 60 * 1000;
    LC_SEND (kim, &msg, 0, "");
    LC_WAIT (ja, KIM_TYPE_REFERRAL, "R-skew", &event);

    //  The job centre receives and acks: R1 is DELIVERED, and KIM is told.
    LC_WAIT (jc, KIM_TYPE_REFERRAL, "R1", &event);
    LC_WAIT (kim, KIM_TYPE_DELIVERED, "R1", &event);
    KIM_CHECK (streq (event.msg.ref_msg_id, "m-r1"));
    KIM_CHECK (streq (event.msg.sender, "kim.test"));
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, JC, "R1", "m-bad-8", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_STATE, "referral R1 is DELIVERED");

    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R1", "jc-1", NULL);
    LC_SEND (jc, &msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_ACCEPT, "R1", &event);
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R1", "jc-1b", NULL);
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "referral R1 is ACCEPTED",
             "the recipient may send FORWARD, STATUS, OUTCOME, INFO_REQUEST, INFO_RESPONSE",
             "the sender may send WITHDRAW, INFO_REQUEST, INFO_RESPONSE");
    s_lc_msg (&msg, KIM_TYPE_INFO_REQUEST, KIM, "R1", "jc-2", NULL);
    LC_SEND (jc, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_INFO_RESPONSE, JC, "R1", "m-r1-info", NULL);
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_INFO_REQUEST, JC, "R1", "m-r1-info-2", NULL);
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_STATUS, KIM, "R1", "jc-3", "appointment_set");
    LC_SEND (jc, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_STATUS, KIM, "R1", "jc-4", "in_progress");
    LC_SEND (jc, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_OUTCOME, KIM, "R1", "jc-5", "completed");
    LC_SEND (jc, &msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_OUTCOME, "R1", &event);
    //  COMPLETED is closed: nobody may send anything more.
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, JC, "R1", "m-r1-late", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_STATE, "referral R1 is COMPLETED: it is closed");
    s_lc_msg (&msg, KIM_TYPE_INFO_REQUEST, KIM, "R1", "jc-6", NULL);
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "referral R1 is COMPLETED");

    //  --- R2: DECLINED (capacity); nothing after that
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, MBE, "R2", "m-r2", "C-1");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_DECLINE, KIM, "R2", "mbe-1", "capacity");
    LC_SEND (mbe, &msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_DECLINE, "R2", &event);
    KIM_CHECK (streq (event.msg.code, "capacity"));
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R2", "mbe-2", NULL);
    LC_SEND (mbe, &msg, KIM_E_BAD_STATE, "referral R2 is DECLINED");
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, MBE, "R2", "m-r2-w", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_STATE, "referral R2 is DECLINED");

    //  --- R3: NOT_COMPETENT, naming a better recipient
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, MBE, "R3", "m-r3", "C-1");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_NOT_COMPETENT, KIM, "R3", "mbe-3", IKT);
    LC_SEND (mbe, &msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_NOT_COMPETENT, "R3", &event);
    KIM_CHECK (streq (event.msg.org, IKT));
    s_lc_msg (&msg, KIM_TYPE_DECLINE, KIM, "R3", "mbe-4", "other");
    LC_SEND (mbe, &msg, KIM_E_BAD_STATE, "referral R3 is NOT_COMPETENT");

    //  --- R4: FORWARDED; the new referral (id = the FORWARD's msg_id) runs
    //  from the forwarder to the new organisation, which gets the FORWARD.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, MBE, "R4", "m-r4", "C-1");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_FORWARD, KIM, "R4", "mbe-fwd-4", MBE);
    LC_SEND (mbe, &msg, KIM_E_BAD_VALUE, "third organisation");
    s_lc_msg (&msg, KIM_TYPE_FORWARD, KIM, "R4", "mbe-fwd-4", "jc.nowhere");
    LC_SEND (mbe, &msg, KIM_E_UNKNOWN_RECIPIENT, "jc.nowhere");
    s_lc_msg (&msg, KIM_TYPE_FORWARD, KIM, "R4", "R1", IKT);
    LC_SEND (mbe, &msg, KIM_E_REFERRAL_EXISTS, "a referral R1 exists already");
    s_lc_msg (&msg, KIM_TYPE_FORWARD, KIM, "R4", "mbe-fwd-past", IKT);
    msg.deadline = (uint64_t) zclock_time () - 600 * 1000;
    LC_SEND (mbe, &msg, KIM_E_BAD_VALUE, "has passed");
    s_lc_msg (&msg, KIM_TYPE_FORWARD, KIM, "R4", "mbe-fwd-4", IKT);
    LC_SEND (mbe, &msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_FORWARD, "R4", &event);
    LC_WAIT (ikt, KIM_TYPE_FORWARD, "R4", &event);
    KIM_CHECK (streq (event.msg.msg_id, "mbe-fwd-4"));
    //  Acking the FORWARD delivers the new referral: the forwarder is told.
    LC_WAIT (mbe, KIM_TYPE_DELIVERED, "mbe-fwd-4", &event);
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R4", "mbe-5", NULL);
    LC_SEND (mbe, &msg, KIM_E_BAD_STATE, "referral R4 is FORWARDED");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, MBE, "mbe-fwd-4", "ikt-1", NULL);
    LC_SEND (kim, &msg, KIM_E_UNKNOWN_REFERRAL, "no referral mbe-fwd-4 with " KIM " as its");
    LC_SEND (ikt, &msg, 0, "");
    LC_WAIT (mbe, KIM_TYPE_ACCEPT, "mbe-fwd-4", &event);

    //  --- R5: WITHDRAWN, only by the sender; also from ACCEPTED
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "R5", "m-r5", "C-1");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, KIM, "R5", "ja-1", NULL);
    LC_SEND (ja, &msg, KIM_E_BAD_STATE, "referral R5 is SENT");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R5", "ja-2", NULL);
    LC_SEND (ja, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, JA, "R5", "m-r5-w", NULL);
    LC_SEND (kim, &msg, 0, "");
    LC_WAIT (ja, KIM_TYPE_WITHDRAW, "R5", &event);
    s_lc_msg (&msg, KIM_TYPE_STATUS, KIM, "R5", "ja-3", "in_progress");
    LC_SEND (ja, &msg, KIM_E_BAD_STATE, "referral R5 is WITHDRAWN: it is closed");

    //  The broker still serves, and a de-duplicated resend of a refused
    //  move is refused again (nothing of it was logged).
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, JC, "R1", "m-bad-1", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_STATE, "referral R1 is COMPLETED");

    //  REFERRAL_QUERY: the parties see a referral's state, others nothing.
    kim_cmd_t *request = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (request);
    kim_cmd_t *reply = request + 1;
    kim_cmd_init (request, KIM_CMD_REFERRAL_QUERY);
    snprintf (request->query_id, sizeof request->query_id, "rq-1");
    snprintf (request->referral_id, sizeof request->referral_id, "R1");
    ITEST_RC (kim_client_request (kim, request, reply, 10000), 0);
    KIM_CHECK (reply->id == KIM_CMD_REFERRAL_INFO && reply->count == 1);
    KIM_CHECK (streq (reply->query_id, "rq-1"));
    KIM_CHECK (memmem (reply->body, reply->body_size, "\"state\":\"COMPLETED\"", 19));
    ITEST_RC (kim_client_request (aba, request, reply, 10000), 0);
    KIM_CHECK (reply->id == KIM_CMD_REFERRAL_INFO && reply->count == 0);
    //  The whole list of MBE: R2, R3, R4 and the forwarded one.
    kim_cmd_init (request, KIM_CMD_REFERRAL_QUERY);
    snprintf (request->query_id, sizeof request->query_id, "rq-2");
    ITEST_RC (kim_client_request (mbe, request, reply, 10000), 0);
    KIM_CHECK (reply->count == 4);
    KIM_CHECK (memmem (reply->body, reply->body_size, "\"forwarded_from\":\"R4\"", 21));
    snprintf (request->org, sizeof request->org, "%s", IKT);
    ITEST_RC (kim_client_request (mbe, request, reply, 10000), 0);
    KIM_CHECK (reply->count == 1);
    free (request);

    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_client_destroy (&mbe);
    kim_client_destroy (&ikt);
    kim_client_destroy (&ja);
    kim_client_destroy (&aba);
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);

    //  Every change is in the log as a state record.
    char path [PATH_MAX];
    snprintf (path, sizeof path, "%s/data/store", kim_testbroker_dir (broker));
    kim_store_config_t config = { .path = path, .read_only = true };
    int err = 0;
    kim_store_t *store = kim_store_new (&config, &err);
    KIM_CHECK (store);
    //  R1: SENT->DELIVERED, DELIVERED->ACCEPTED, ACCEPTED->IN_PROGRESS (the
    //  second STATUS changes nothing), IN_PROGRESS->COMPLETED.
    KIM_CHECK (s_state_records (store, "R1", "SENT") == 1);
    KIM_CHECK (s_state_records (store, "R1", "DELIVERED") == 2);
    KIM_CHECK (s_state_records (store, "R1", "ACCEPTED") == 2);
    KIM_CHECK (s_state_records (store, "R1", "IN_PROGRESS") == 2);
    KIM_CHECK (s_state_records (store, "R1", "COMPLETED") == 1);
    KIM_CHECK (s_state_records (store, "R2", "DECLINED") == 1);
    KIM_CHECK (s_state_records (store, "R3", "NOT_COMPETENT") == 1);
    KIM_CHECK (s_state_records (store, "R4", "FORWARDED") == 1);
    KIM_CHECK (s_state_records (store, "R5", "WITHDRAWN") == 1);
    kim_store_destroy (&store);
    s_itest_broker_destroy (&broker);
    printf ("test_lifecycle: OK\n");
    return 0;
}
