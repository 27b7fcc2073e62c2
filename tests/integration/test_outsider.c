/*  test_outsider.c — refusals tell an outsider nothing about records it
    takes no part in, over a real broker.

    Two organisations work a case: a referral that was accepted, a
    consent, a case that is then closed. An outsider guessing their ids
    gets, for each, the answer an id nobody uses gets (the same code, and
    the same text once the id is taken out): re-using the referral id says
    only that it is taken; answering the referral, offering or closing the
    case, and revoking the consent read as unknown ids; a REFERRAL_QUERY
    finds nothing; referring into the case says it takes no part, not that
    the case is closed or who leads it. No refusal names the parties, the
    state, the lead or the open offer. The parties themselves still get the
    detailed answers. The broker serves on.
*/
#include "kim_lctest.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"
#define JA      "ja.rheine"
#define ABA     "aba.rheine"

//  Sends `msg` and expects a REJECT with `code`; returns its text with each
//  occurrence of `id` replaced by "<id>", so that refusals about two ids
//  compare equal when they say the same.
static char *
s_refusal (kim_client_t *client, kim_msg_t *msg, int code, const char *id)
{
    int rc = kim_client_send (client, msg, NULL, 0, NULL, NULL, 10000);
    const char *text = kim_client_error (client);
    if (rc != -code) {
        fprintf (stderr, "test_outsider: %s %s: got %s (%s), expected %s\n",
                 kim_type_name (msg->type), msg->msg_id, kim_errname (rc), rc? text: "receipted",
                 kim_errname (code));
        exit (1);
    }
    char *out = (char *) calloc (1, strlen (text) * 2 + 16);
    KIM_CHECK (out);
    size_t id_size = strlen (id), used = 0;
    for (const char *at = text; *at; ) {
        if (id_size && strncmp (at, id, id_size) == 0) {
            used += (size_t) sprintf (out + used, "<id>");
            at += id_size;
        }
        else
            out [used++] = *at++;
    }
    //  Nothing of the record: its parties, state, lead or offer.
    const char *secrets [] = { KIM, JC, "ACCEPTED", "CLOSED", "closed", "m-offer", "lead (", NULL };
    for (int i = 0; secrets [i]; i++)
        if (strstr (out, secrets [i])) {
            fprintf (stderr, "test_outsider: refusal '%s' tells the outsider '%s'\n", text,
                     secrets [i]);
            exit (1);
        }
    return out;
}

//  The outsider's refusals about `known` and `unknown` are the same.
static void
s_same (char *known, char *unknown, const char *what)
{
    if (!streq (known, unknown)) {
        fprintf (stderr, "test_outsider: %s: a known id gets '%s', an unknown one '%s'\n", what,
                 known, unknown);
        exit (1);
    }
    printf ("  %s: '%s' either way\n", what, known);
    free (known);
    free (unknown);
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { KIM, JC, JA, ABA, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, NULL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 64, true);
    kim_client_t *jc = kim_testbroker_client (broker, JC, 64, true);
    kim_client_t *aba = kim_testbroker_client (broker, ABA, 64, true);
    KIM_CHECK (kim && jc && aba);
    kim_msg_t msg;
    kim_event_t event;

    //  The record: R1 from KIM to JC, accepted; R2 to JA, still SENT; a
    //  consent G-1; an open handover offer of C-1 to JA.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R1", "m-r1", "C-1");
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R1", "m-r1-accept", NULL);
    LC_SEND (jc, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "R2", "m-r2", "C-1");
    LC_SEND (kim, &msg, 0, "");
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_GRANT;
    snprintf (msg.msg_id, sizeof msg.msg_id, "m-grant");
    snprintf (msg.case_id, sizeof msg.case_id, "C-1");
    snprintf (msg.grant_id, sizeof msg.grant_id, "G-1");
    snprintf (msg.subject, sizeof msg.subject, "p-1");
    msg.recipient_count = 1;
    snprintf (msg.recipients [0], sizeof msg.recipients [0], "%s", JC);
    msg.purpose_count = 1;
    snprintf (msg.purposes [0], sizeof msg.purposes [0], "employment");
    msg.valid_until = (uint64_t) zclock_time () + 3600 * 1000;
    LC_SEND (kim, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, JA, "C-1", "m-offer-1", NULL);
    LC_SEND (kim, &msg, 0, "");

    //  The parties get the details.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R1", "m-r1-again", "C-1");
    LC_SEND (kim, &msg, KIM_E_REFERRAL_EXISTS, "referral R1 exists already (ACCEPTED, from "
             KIM " to " JC ")");

    printf ("test_outsider: %s guesses ids\n", ABA);
    //  A referral id in use: taken, and nothing more; R1 and R2 alike.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R1", "aba-1", "C-aba");
    char *r1 = s_refusal (aba, &msg, KIM_E_REFERRAL_EXISTS, "R1");
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R2", "aba-2", "C-aba");
    s_same (r1, s_refusal (aba, &msg, KIM_E_REFERRAL_EXISTS, "R2"), "REFERRAL with a taken id");
    //  Answering another's referral reads as an unknown referral.
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R2", "aba-3", NULL);
    char *known = s_refusal (aba, &msg, KIM_E_UNKNOWN_REFERRAL, "R2");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "R-none", "aba-4", NULL);
    s_same (known, s_refusal (aba, &msg, KIM_E_UNKNOWN_REFERRAL, "R-none"), "ACCEPT");
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, JC, "R1", "aba-5", NULL);
    known = s_refusal (aba, &msg, KIM_E_UNKNOWN_REFERRAL, "R1");
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, JC, "R-none", "aba-6", NULL);
    s_same (known, s_refusal (aba, &msg, KIM_E_UNKNOWN_REFERRAL, "R-none"), "WITHDRAW");
    //  Offering, answering the open offer of, or closing another's case.
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, JC, "C-1", "aba-7", NULL);
    known = s_refusal (aba, &msg, KIM_E_UNKNOWN_CASE, "C-1");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, JC, "C-none", "aba-8", NULL);
    s_same (known, s_refusal (aba, &msg, KIM_E_UNKNOWN_CASE, "C-none"), "HANDOVER_OFFER");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "C-1", "aba-9", "m-offer-1");
    known = s_refusal (aba, &msg, KIM_E_UNKNOWN_CASE, "C-1");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "C-none", "aba-10", "m-offer-1");
    s_same (known, s_refusal (aba, &msg, KIM_E_UNKNOWN_CASE, "C-none"), "HANDOVER_ACCEPT");
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-1", "aba-11", NULL);
    known = s_refusal (aba, &msg, KIM_E_UNKNOWN_CASE, "C-1");
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-none", "aba-12", NULL);
    s_same (known, s_refusal (aba, &msg, KIM_E_UNKNOWN_CASE, "C-none"), "CASE_CLOSED");
    //  Revoking another's consent reads as an unknown consent.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_REVOKE;
    snprintf (msg.msg_id, sizeof msg.msg_id, "aba-13");
    snprintf (msg.grant_id, sizeof msg.grant_id, "G-1");
    known = s_refusal (aba, &msg, KIM_E_CONSENT_UNKNOWN, "G-1");
    snprintf (msg.msg_id, sizeof msg.msg_id, "aba-14");
    snprintf (msg.grant_id, sizeof msg.grant_id, "G-none");
    s_same (known, s_refusal (aba, &msg, KIM_E_CONSENT_UNKNOWN, "G-none"), "CONSENT_REVOKE");
    //  REFERRAL_QUERY finds nothing of it.
    kim_cmd_t *request = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    KIM_CHECK (request);
    kim_cmd_t *reply = request + 1;
    kim_cmd_init (request, KIM_CMD_REFERRAL_QUERY);
    snprintf (request->query_id, sizeof request->query_id, "aba-q");
    snprintf (request->referral_id, sizeof request->referral_id, "R1");
    ITEST_RC (kim_client_request (aba, request, reply, 10000), 0);
    KIM_CHECK (reply->id == KIM_CMD_REFERRAL_INFO && reply->count == 0 && reply->body_size == 0);
    kim_cmd_init (request, KIM_CMD_REFERRAL_QUERY);
    snprintf (request->query_id, sizeof request->query_id, "aba-q2");
    snprintf (request->case_id, sizeof request->case_id, "C-1");
    ITEST_RC (kim_client_request (aba, request, reply, 10000), 0);
    KIM_CHECK (reply->id == KIM_CMD_REFERRAL_INFO && reply->count == 0 && reply->body_size == 0);
    free (request);

    //  Once the case is closed, referring into it still tells the outsider
    //  only that it takes no part (case ids are shared, so that much shows).
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-1", "m-close", NULL);
    LC_SEND (kim, &msg, 0, "");
    LC_WAIT (jc, KIM_TYPE_CASE_CLOSED, "C-1", &event);
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R-aba", "aba-15", "C-1");
    free (s_refusal (aba, &msg, KIM_E_NOT_PARTY, "C-1"));
    //  A participant hears that it is closed.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "R-jc", "jc-1", "C-1");
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "case C-1 was closed by " KIM);

    //  The broker serves on: the outsider's own referral passes.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "R-aba-own", "aba-16", "C-aba");
    LC_SEND (aba, &msg, 0, "");

    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_client_destroy (&aba);
    int status = kim_testbroker_stop (broker, SIGTERM);
    KIM_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    s_itest_broker_destroy (&broker);
    printf ("test_outsider: OK\n");
    return 0;
}
