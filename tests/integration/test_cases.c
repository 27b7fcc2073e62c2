/*  test_cases.c — cases, their lead, handover atomicity, closing, retention.

    The first REFERRAL's sender leads the case. Only the lead offers a
    handover or closes the case (NOT_LEAD); only the offered organisation
    answers the open offer (BAD_STATE otherwise). A SIGKILL between offer and
    accept leaves the old lead; a SIGKILL after the accept leaves the new one:
    exactly one lead, probed by who may offer. The accepted handover moves
    the listed open referrals: their answers now go to the new lead. A
    declined offer changes nothing. CASE_CLOSED reaches every participant and
    no one else; a closed case takes no more referrals; after
    retention/payload_seconds (clock moved) the case's payloads are purged
    and a purge record says which.
*/
#include "kim_lctest.h"
#include "kim/kim_log.h"
#include "kim_store.h"

#define KIM     "kim.rheine"
#define COE     "kim.coesfeld"
#define BOR     "kim.borken"
#define JC      "jc.rheine"
#define JA      "ja.rheine"
#define ABA     "aba.rheine"

//  Who leads C-1? Offer the case to `probe_to` from each candidate: the one
//  that is not refused with NOT_LEAD is the lead (the refusal does not name
//  it). The probe offer replaces the open offer, so the test re-offers what
//  it needs afterwards.
static void
s_expect_lead (kim_client_t *lead, kim_client_t *other, const char *probe_to)
{
    static int probe = 0;
    kim_msg_t msg;
    char msg_id [32];
    snprintf (msg_id, sizeof msg_id, "probe-%d", ++probe);
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, probe_to, "C-1", msg_id, NULL);
    LC_SEND (other, &msg, KIM_E_NOT_LEAD, "is not the lead of case C-1");
    snprintf (msg_id, sizeof msg_id, "probe-%d", ++probe);
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, probe_to, "C-1", msg_id, NULL);
    LC_SEND (lead, &msg, 0, "");
}

static void
s_restart (kim_testbroker_t *broker, kim_client_t **clients [], const char *orgs [])
{
    for (int i = 0; clients [i]; i++)
        kim_client_destroy (clients [i]);
    kim_testbroker_stop (broker, SIGKILL);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    for (int i = 0; clients [i]; i++) {
        *clients [i] = kim_testbroker_client (broker, orgs [i], 64, false);
        KIM_CHECK (*clients [i]);
    }
}

int
main (void)
{
    KIM_CHECK (sodium_init () >= 0);
    const char *orgs [] = { KIM, COE, BOR, JC, JA, ABA, NULL };
    kim_testbroker_t *broker = s_itest_broker (orgs, "retention\n    payload_seconds = 3600\n");
    kim_testbroker_plaintext (broker, true);    //  reads payload sizes from the store
    char clock_path [PATH_MAX];
    snprintf (clock_path, sizeof clock_path, "%s/clock", kim_testbroker_dir (broker));
    FILE *file = fopen (clock_path, "w");
    KIM_CHECK (file && fprintf (file, "0\n") > 0 && fclose (file) == 0);
    KIM_CHECK (setenv ("KIM_CLOCK_FILE", clock_path, 1) == 0);
    KIM_CHECK (kim_testbroker_start (broker) == 0);

    kim_client_t *kim = NULL, *coe = NULL, *bor = NULL, *jc = NULL, *ja = NULL, *aba = NULL;
    kim_client_t **clients [] = { &kim, &coe, &bor, &jc, &ja, &aba, NULL };
    for (int i = 0; clients [i]; i++) {
        *clients [i] = kim_testbroker_client (broker, orgs [i], 64, false);
        KIM_CHECK (*clients [i]);
    }
    kim_msg_t msg;
    kim_event_t event;

    //  KIM Rheine opens C-1 with two referrals (with payloads, for retention).
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "RC1", "m-rc1", "C-1");
    uint64_t rc1_seq = 0;
    bool dup;
    ITEST_RC (kim_client_send (kim, &msg, "sealed for jc", 13, &rc1_seq, &dup, 10000), 0);
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JA, "RC2", "m-rc2", "C-1");
    uint64_t rc2_seq = 0;
    ITEST_RC (kim_client_send (kim, &msg, "sealed for ja", 13, &rc2_seq, &dup, 10000), 0);
    //  Another case, for contrast: its payload is kept.
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "RX", "m-rx", "C-X");
    uint64_t rx_seq = 0;
    ITEST_RC (kim_client_send (kim, &msg, "sealed too", 10, &rx_seq, &dup, 10000), 0);

    //  Refusals: not the lead, unknown case, answering an offer nobody made.
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, COE, "C-1", "jc-offer", NULL);
    LC_SEND (jc, &msg, KIM_E_NOT_LEAD, JC " is not the lead of case C-1; only its lead");
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-1", "jc-close", NULL);
    LC_SEND (jc, &msg, KIM_E_NOT_LEAD, "not the lead");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, COE, "C-none", "m-offer-x", NULL);
    LC_SEND (kim, &msg, KIM_E_UNKNOWN_CASE, "no case C-none");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, KIM, "C-1", "m-offer-self", NULL);
    LC_SEND (kim, &msg, KIM_E_BAD_VALUE, "leads case C-1 already");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, COE, "C-1", "m-offer-bad", NULL);
    msg.referral_count = 1;
    snprintf (msg.referrals [0], sizeof msg.referrals [0], "RX");
    LC_SEND (kim, &msg, KIM_E_UNKNOWN_REFERRAL, "referral RX is not part of case C-1");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "C-1", "coe-early", "m-offer-1");
    LC_SEND (coe, &msg, KIM_E_UNKNOWN_CASE, "no case C-1 that " COE " takes part in");

    //  The offer, listing the open referrals.
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, COE, "C-1", "m-offer-1", NULL);
    msg.referral_count = 2;
    snprintf (msg.referrals [0], sizeof msg.referrals [0], "RC1");
    snprintf (msg.referrals [1], sizeof msg.referrals [1], "RC2");
    LC_SEND (kim, &msg, 0, "");
    LC_WAIT (coe, KIM_TYPE_HANDOVER_OFFER, "C-1", &event);
    KIM_CHECK (event.msg.referral_count == 2);
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "C-1", "aba-accept", "m-offer-1");
    LC_SEND (aba, &msg, KIM_E_UNKNOWN_CASE, "no case C-1 that " ABA " takes part in");
    //  A participant hears which offer is open; the outsider above did not.
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "C-1", "jc-accept-offer", "m-offer-1");
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "no open handover offer m-offer-1 to " JC,
             "the open offer is m-offer-1");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, JC, "C-1", "coe-wrong-to", "m-offer-1");
    LC_SEND (coe, &msg, KIM_E_NOT_PARTY, "goes to the lead, " KIM);

    //  Crash between offer and accept: the old lead leads.
    s_restart (broker, clients, orgs);
    s_expect_lead (kim, coe, BOR);
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, COE, "C-1", "m-offer-2", NULL);
    msg.referral_count = 2;
    snprintf (msg.referrals [0], sizeof msg.referrals [0], "RC1");
    snprintf (msg.referrals [1], sizeof msg.referrals [1], "RC2");
    LC_SEND (kim, &msg, 0, "");
    //  The probe's offer to Borken was replaced: Borken cannot take it now.
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "C-1", "bor-stale", "probe-2");
    LC_SEND (bor, &msg, KIM_E_BAD_STATE, "no open handover offer probe-2");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "C-1", "coe-accept", "m-offer-2");
    LC_SEND (coe, &msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_HANDOVER_ACCEPT, "C-1", &event);

    //  Crash after the accept: the new lead leads, the old one does not.
    s_restart (broker, clients, orgs);
    s_expect_lead (coe, kim, BOR);
    //  The open referrals moved with the case: answers go to the new lead.
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "RC1", "jc-accept", NULL);
    LC_SEND (jc, &msg, KIM_E_NOT_PARTY, "go to its other party, " COE);
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, COE, "RC1", "jc-accept", NULL);
    LC_SEND (jc, &msg, 0, "");
    LC_WAIT (coe, KIM_TYPE_ACCEPT, "RC1", &event);
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, JA, "RC2", "m-rc2-w", NULL);
    LC_SEND (kim, &msg, KIM_E_UNKNOWN_REFERRAL, "no referral RC2 with " KIM " as its sender");

    //  A declined offer leaves the lead where it is (the probe offered C-1
    //  to Borken last).
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_DECLINE, COE, "C-1", "bor-decline", "probe-4");
    snprintf (msg.code, sizeof msg.code, "not_resident");
    LC_SEND (bor, &msg, 0, "");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, COE, "C-1", "bor-accept", "probe-4");
    LC_SEND (bor, &msg, KIM_E_BAD_STATE, "no open handover offer");
    s_expect_lead (coe, kim, BOR);

    //  Closing: the lead only; every participant is told, outsiders not.
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-1", "kim-close", NULL);
    LC_SEND (kim, &msg, KIM_E_NOT_LEAD, "not the lead");
    s_lc_msg (&msg, KIM_TYPE_CASE_CLOSED, NULL, "C-1", "coe-close", NULL);
    LC_SEND (coe, &msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_CASE_CLOSED, "C-1", &event);
    LC_WAIT (jc, KIM_TYPE_CASE_CLOSED, "C-1", &event);
    LC_WAIT (ja, KIM_TYPE_CASE_CLOSED, "C-1", &event);
    ITEST_WAIT_MAILBOX (aba, 0, 0, 5000);
    KIM_CHECK (ITEST_DELIVER (aba, &event, 300) == -KIM_E_TIMEOUT);
    s_lc_msg (&msg, KIM_TYPE_REFERRAL, JC, "RC3", "m-rc3", "C-1");
    LC_SEND (coe, &msg, KIM_E_BAD_STATE, "case C-1 was closed");
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, KIM, "C-1", "coe-offer-late", NULL);
    LC_SEND (coe, &msg, KIM_E_BAD_STATE, "case C-1 was closed");

    //  Retention: an hour after closing (moved clock), the payloads go.
    file = fopen (clock_path, "w");
    KIM_CHECK (file && fprintf (file, "%d\n", 3700 * 1000) > 0 && fclose (file) == 0);
    for (int i = 0; clients [i]; i++)
        kim_client_destroy (clients [i]);
    //  The purge runs on a tick; a SIGTERM after it shows in the store.
    int64_t deadline = s_itest_now () + 15000;
    bool purged = false;
    while (!purged && s_itest_now () < deadline) {
        zclock_sleep (200);             //  poll interval, not synchronisation
        KIM_CHECK (kim_testbroker_stop (broker, SIGTERM) != -1);
        char path [PATH_MAX];
        snprintf (path, sizeof path, "%s/data/store", kim_testbroker_dir (broker));
        kim_store_config_t config = { .path = path, .read_only = true };
        int err = 0;
        kim_store_t *store = kim_store_new (&config, &err);
        KIM_CHECK (store);
        KIM_CHECK (kim_store_read_begin (store) == 0);
        const uint8_t *data;
        size_t size;
        KIM_CHECK (kim_store_payload_get (store, rc1_seq, &data, &size) == 0);
        purged = size == 0;
        if (purged) {
            KIM_CHECK (kim_store_payload_get (store, rc2_seq, &data, &size) == 0 && size == 0);
            KIM_CHECK (kim_store_payload_get (store, rx_seq, &data, &size) == 0 && size == 10);
            int purge_records = 0;
            for (uint64_t seq = 1; seq <= kim_store_head (store); seq++) {
                kim_record_t record;
                KIM_CHECK (kim_store_read (store, seq, &record) == 0);
                if (record.kind == KIM_RECORD_PURGE) {
                    KIM_CHECK (memmem (record.body, record.body_size, "C-1", 3));
                    KIM_CHECK (memmem (record.body, record.body_size, "retention", 9));
                    purge_records++;
                }
            }
            KIM_CHECK (purge_records == 1);
            //  A handover's state record: the case stays OPEN, the lead moves
            //  (PROTOCOL.md section 9.4).
            int handovers = 0;
            for (uint64_t seq = 1; seq <= kim_store_head (store); seq++) {
                kim_record_t record;
                char from [32], to [32], lead_from [64], lead_to [64];
                KIM_CHECK (kim_store_read (store, seq, &record) == 0);
                if (record.kind != KIM_RECORD_STATE
                ||  !kim_log_body_str (record.body, record.body_size, "lead_to", lead_to,
                                       sizeof lead_to))
                    continue;
                KIM_CHECK (kim_log_body_str (record.body, record.body_size, "from", from,
                                             sizeof from) && streq (from, "OPEN"));
                KIM_CHECK (kim_log_body_str (record.body, record.body_size, "to", to,
                                             sizeof to) && streq (to, "OPEN"));
                KIM_CHECK (kim_log_body_str (record.body, record.body_size, "lead_from",
                                             lead_from, sizeof lead_from));
                if (streq (lead_from, KIM) && streq (lead_to, COE))
                    handovers++;
            }
            KIM_CHECK (handovers == 1);
        }
        kim_store_read_end (store);
        kim_store_destroy (&store);
        if (!purged)
            KIM_CHECK (kim_testbroker_start (broker) == 0);
    }
    KIM_CHECK (purged);
    s_itest_broker_destroy (&broker);
    printf ("test_cases: OK\n");
    return 0;
}
