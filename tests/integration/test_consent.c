/*  test_consent.c — a consent is bound, over a real broker running the
    shipped deploy/policy.cfg: to its subject, to its case and to the case's
    lead (the organisation that recorded it, or the lead after a handover
    the consent covers). Every other use is refused with CONSENT_BOUND and
    a text that names the binding that failed, the rule and the law; an
    organisation that does not know the consent learns nothing of it.
    An answer with a payload is in its sender's access report and erasure.
    A consent records who gave it; rule P2 requires the one who entrusted
    § 65 SGB VIII data. Volunteers get data of category contact only (P12).

    Revocation and expiry (the broker's test clock moves) withhold what was
    receipted but not yet delivered under the consent: the recipient never
    gets it, the sender is told, and the referral is SUSPENDED (revoked) or
    LAPSED (expired: renew the consent). The kim tool revokes with
    `kim send --type CONSENT_REVOKE --consent ID`; `kim policy check` says
    that it checks offline only.
*/
#include <czmq.h>

#include "kim_itest.h"
#include "kim_lctest.h"

#define KIM     "kim.rheine"
#define JC      "jc.rheine"
#define ABA     "aba.rheine"
#define COE     "kim.coesfeld"
#define MBE     "mbe.rheine"
#define JA      "ja.rheine"
#define EHR     "ehr.rheine"

#define HOUR    (3600 * 1000ull)

//  A CONSENT_GRANT for subject p-1 in `case_id`, to the recipients listed
//  (NULL-terminated), for employment and residence, residence data.
static void
s_grant (kim_msg_t *msg, const char *id, const char *case_id, uint64_t valid_until, ...)
{
    kim_msg_init (msg);
    msg->type = KIM_TYPE_CONSENT_GRANT;
    msg->created_at = (uint64_t) zclock_time ();
    snprintf (msg->msg_id, sizeof msg->msg_id, "grant-%s", id);
    snprintf (msg->case_id, sizeof msg->case_id, "%s", case_id);
    snprintf (msg->grant_id, sizeof msg->grant_id, "%s", id);
    snprintf (msg->subject, sizeof msg->subject, "p-1");
    va_list args;
    va_start (args, valid_until);
    for (const char *to = va_arg (args, const char *); to; to = va_arg (args, const char *))
        snprintf (msg->recipients [msg->recipient_count++], KIM_ORG_MAX + 1, "%s", to);
    va_end (args);
    msg->purpose_count = 2;
    snprintf (msg->purposes [0], sizeof msg->purposes [0], "employment");
    snprintf (msg->purposes [1], sizeof msg->purposes [1], "residence");
    msg->categories = KIM_CAT_RESIDENCE_STATUS;
    msg->valid_until = valid_until;
}

//  A REFERRAL about `subject` in `case_id` citing consent `consent`.
static void
s_referral (kim_msg_t *msg, const char *to, const char *id, const char *case_id,
            const char *subject, const char *purpose, const char *consent)
{
    s_lc_msg (msg, KIM_TYPE_REFERRAL, to, id, id, case_id);
    snprintf (msg->subject, sizeof msg->subject, "%s", subject);
    snprintf (msg->purpose, sizeof msg->purpose, "%s", purpose);
    msg->categories = KIM_CAT_RESIDENCE_STATUS;
    msg->basis = KIM_BASIS_CONSENT;
    msg->citation [0] = 0;
    snprintf (msg->consent_id, sizeof msg->consent_id, "%s", consent);
}

static void
s_set_clock (const char *path, long long offset_ms)
{
    char temp [PATH_MAX];
    snprintf (temp, sizeof temp, "%s.new", path);
    FILE *file = fopen (temp, "w");
    KIM_CHECK (file);
    fprintf (file, "%lld\n", offset_ms);
    fclose (file);
    KIM_CHECK (rename (temp, path) == 0);
}

//  Receives (and acks) deliveries until a CONSENT_REVOKE notice about
//  `consent` with `code` (and, if given, `referral`) arrives. A REFERRAL
//  named in `never` fails the test: it was to be withheld.
static void
s_await_notice (kim_client_t *client, const char *consent, const char *code,
                const char *referral, const char *never [], kim_event_t *event)
{
    int64_t deadline = s_itest_now () + 15000;
    while (s_itest_now () < deadline) {
        int rc = kim_client_recv (client, event, 200);
        if (rc == -KIM_E_TIMEOUT)
            continue;
        ITEST_RC (rc, 0);
        if (event->type != KIM_EVENT_DELIVER)
            continue;
        for (size_t i = 0; never && never [i]; i++)
            if (event->msg.type == KIM_TYPE_REFERRAL && streq (event->msg.referral_id, never [i])) {
                fprintf (stderr, "test_consent: %s got withheld referral %s\n",
                         kim_client_org (client), never [i]);
                exit (1);
            }
        ITEST_RC (kim_client_ack (client, event->seq), 0);
        if (event->msg.type == KIM_TYPE_CONSENT_REVOKE && streq (event->msg.grant_id, consent)
        &&  streq (event->msg.code, code)
        &&  (!referral || streq (event->msg.referral_id, referral))) {
            printf ("  %s told: consent %s %s%s%s\n", kim_client_org (client), consent, code,
                    referral? ", referral ": "", referral? referral: "");
            kim_client_flush (client, 5000);
            return;
        }
    }
    fprintf (stderr, "test_consent: %s got no CONSENT_REVOKE %s for %s within 15 s\n",
             kim_client_org (client), code, consent);
    exit (1);
}

int
main (int argc, char *argv [])
{
    const char *orgs [] = { KIM, JC, ABA, COE, MBE ":agency+private", JA, EHR ":agency+private", NULL };
    kim_testbroker_t *broker = s_itest_broker_policy (orgs, NULL, KIM_POLICY_PATH);
    char clock_path [PATH_MAX];
    snprintf (clock_path, sizeof clock_path, "%s/clock", kim_testbroker_dir (broker));
    s_set_clock (clock_path, 0);
    setenv ("KIM_CLOCK_FILE", clock_path, 1);
    KIM_CHECK (kim_testbroker_start (broker) == 0);
    kim_client_t *kim = kim_testbroker_client (broker, KIM, 16, false);
    kim_client_t *jc = kim_testbroker_client (broker, JC, 16, false);
    kim_client_t *coe = kim_testbroker_client (broker, COE, 16, false);
    kim_client_t *mbe = kim_testbroker_client (broker, MBE, 0, false);
    kim_client_t *ja = kim_testbroker_client (broker, JA, 0, false);
    KIM_CHECK (kim && jc && coe && mbe && ja);
    kim_msg_t msg;
    kim_event_t event;
    uint64_t until = (uint64_t) zclock_time () + 24 * HOUR;

    //  KIM Rheine leads case-A and records C-1 (naming Coesfeld, which may
    //  take the case over) and C-2 (not naming it).
    s_grant (&msg, "C-1", "case-A", until, JC, ABA, COE, NULL);
    LC_SEND (kim, &msg, 0, "");
    s_grant (&msg, "C-2", "case-A", until, JC, NULL);
    LC_SEND (kim, &msg, 0, "");
    //  Consent ids are unique across the broker, whoever asks.
    s_grant (&msg, "C-1", "case-C", until, JC, NULL);
    snprintf (msg.msg_id, sizeof msg.msg_id, "grant-C-1-by-coe");
    LC_SEND (coe, &msg, KIM_E_BAD_VALUE, "registered already");

    //  Within its binding: allowed.
    s_referral (&msg, JC, "r-1", "case-A", "p-1", "employment", "C-1");
    LC_SEND (kim, &msg, 0, "");
    LC_WAIT (jc, KIM_TYPE_REFERRAL, "r-1", &event);
    KIM_CHECK (streq (event.msg.rule, "P8"));

    //  An answer with a payload is data about the referral's subject too:
    //  the job centre's INFO_RESPONSE is in its access report and its
    //  erasure purges it (and tells KIM Rheine).
    kim_msg_t subject_msg;
    kim_msg_init (&subject_msg);
    subject_msg.type = KIM_TYPE_ACCESS_REPORT;
    snprintf (subject_msg.msg_id, sizeof subject_msg.msg_id, "report-jc-0");
    snprintf (subject_msg.subject, sizeof subject_msg.subject, "p-1");
    LC_SEND (jc, &subject_msg, KIM_E_NOT_PARTY, "sent no data about subject p-1");
    s_lc_msg (&msg, KIM_TYPE_INFO_RESPONSE, KIM, "r-1", "info-r-1", NULL);
    uint64_t info_seq = 0;
    bool dup = false;
    ITEST_RC (kim_client_send (jc, &msg, "answer about p-1", 16, &info_seq, &dup, 10000), 0);
    snprintf (subject_msg.msg_id, sizeof subject_msg.msg_id, "report-jc-1");
    LC_SEND (jc, &subject_msg, 0, "");
    LC_WAIT (jc, KIM_TYPE_ACCESS_REPORT, NULL, &event);
    KIM_CHECK (memmem (event.payload, event.payload_size, "\"type\":\"INFO_RESPONSE\"", 22)
            && memmem (event.payload, event.payload_size, "\"payload\":\"kept\"", 16));
    subject_msg.type = KIM_TYPE_ERASURE;
    snprintf (subject_msg.msg_id, sizeof subject_msg.msg_id, "erase-jc-1");
    LC_SEND (jc, &subject_msg, 0, "");
    LC_WAIT (kim, KIM_TYPE_ERASURE, NULL, &event);
    subject_msg.type = KIM_TYPE_ACCESS_REPORT;
    snprintf (subject_msg.msg_id, sizeof subject_msg.msg_id, "report-jc-2");
    LC_SEND (jc, &subject_msg, 0, "");
    LC_WAIT (jc, KIM_TYPE_ACCESS_REPORT, NULL, &event);
    KIM_CHECK (memmem (event.payload, event.payload_size, "\"payload\":\"erased\"", 18)
            && !memmem (event.payload, event.payload_size, "\"payload\":\"kept\"", 16));
    printf ("  an answer's payload is reported and erased (seq %" PRIu64 ")\n", info_seq);

    //  Another subject, another case: refused, naming the binding and rule.
    s_referral (&msg, JC, "r-2", "case-A", "p-2", "employment", "C-1");
    LC_SEND (kim, &msg, KIM_E_CONSENT_BOUND, "rule P8", "consent C-1 was not given for subject 'p-2'",
             "§ 67b SGB X");
    s_referral (&msg, JC, "r-3", "case-B", "p-1", "employment", "C-1");
    LC_SEND (kim, &msg, KIM_E_CONSENT_BOUND, "rule P8", "consent C-1 does not belong to case 'case-B'");

    //  A named recipient knows C-1 but may not cite it: only the lead does.
    s_referral (&msg, KIM, "r-4", "case-A", "p-1", "employment", "C-1");
    LC_SEND (jc, &msg, KIM_E_CONSENT_BOUND, "rule P9",
             "consent C-1 may be cited only by the lead of case case-A (" KIM "), not by " JC);

    //  A private carrier's residence data to the immigration office (P6)
    //  under C-1: it does not know C-1, and learns nothing of it.
    s_referral (&msg, ABA, "r-5", "case-M", "p-1", "residence", "C-1");
    LC_SEND (mbe, &msg, KIM_E_CONSENT_UNKNOWN, "rule P6", "consent C-1 is not registered");

    //  Another KIM office, named by C-1 but neither its recorder nor the
    //  lead of case-A, in a case of its own.
    s_referral (&msg, JC, "r-6", "case-X", "p-1", "employment", "C-1");
    LC_SEND (coe, &msg, KIM_E_CONSENT_BOUND, "rule P8", "consent C-1 does not belong to case 'case-X'");

    //  The case moves to Coesfeld under C-1, which names it (P10).
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_OFFER, COE, "case-A", "offer-1", NULL);
    snprintf (msg.subject, sizeof msg.subject, "p-1");
    snprintf (msg.purpose, sizeof msg.purpose, "employment");
    msg.basis = KIM_BASIS_CONSENT;
    msg.citation [0] = 0;
    snprintf (msg.consent_id, sizeof msg.consent_id, "C-1");
    LC_SEND (kim, &msg, 0, "");
    LC_WAIT (coe, KIM_TYPE_HANDOVER_OFFER, "case-A", &event);
    s_lc_msg (&msg, KIM_TYPE_HANDOVER_ACCEPT, KIM, "case-A", "accept-1", "offer-1");
    LC_SEND (coe, &msg, 0, "");

    //  The recorder is no longer the lead: it may not cite C-1 any more.
    s_referral (&msg, JC, "r-7", "case-A", "p-1", "employment", "C-1");
    LC_SEND (kim, &msg, KIM_E_CONSENT_BOUND,
             "consent C-1 may be cited only by the lead of case case-A (" COE "), not by " KIM);
    //  The new lead may cite C-1, which covers the handover...
    s_referral (&msg, JC, "r-8", "case-A", "p-1", "employment", "C-1");
    LC_SEND (coe, &msg, 0, "");
    LC_WAIT (jc, KIM_TYPE_REFERRAL, "r-8", &event);
    //  ... but not C-2, which does not name it.
    s_referral (&msg, JC, "r-9", "case-A", "p-1", "employment", "C-2");
    LC_SEND (coe, &msg, KIM_E_CONSENT_BOUND, "case case-A was handed over to " COE,
             "consent C-2 (recorded by " KIM ") does not name");

    //  Who consented. Data entrusted to the youth office (§ 65 SGB VIII)
    //  pass under a consent only when it records the one who entrusted
    //  them as its giver (rule P2, givers = entruster).
    s_grant (&msg, "C-Y1", "case-Y", until, JC, NULL);
    snprintf (msg.giver, sizeof msg.giver, "parent");
    LC_SEND (ja, &msg, KIM_E_BAD_VALUE, "giver 'parent' is none of subject, guardian, entruster");
    snprintf (msg.giver, sizeof msg.giver, "guardian");
    msg.categories |= KIM_CAT_SGB8_S65;
    LC_SEND (ja, &msg, 0, "");
    s_grant (&msg, "C-Y2", "case-Y", until, JC, NULL);
    snprintf (msg.giver, sizeof msg.giver, "entruster");
    msg.categories |= KIM_CAT_SGB8_S65;
    LC_SEND (ja, &msg, 0, "");
    s_referral (&msg, JC, "r-y1", "case-Y", "p-1", "employment", "C-Y1");
    msg.categories = KIM_CAT_SGB8_S65;
    LC_SEND (ja, &msg, KIM_E_CONSENT_SCOPE, "rule P2", "consent C-Y1 was given by guardian",
             "needs the consent of: entruster", "§ 65 Abs. 1 SGB VIII");
    s_referral (&msg, JC, "r-y2", "case-Y", "p-1", "employment", "C-Y2");
    msg.categories = KIM_CAT_SGB8_S65;
    LC_SEND (ja, &msg, 0, "");

    //  Volunteers get contact data, flagged as such, and nothing else (P12).
    s_grant (&msg, "C-V", "case-V", until, EHR, NULL);
    msg.categories = KIM_CAT_CONTACT;
    LC_SEND (kim, &msg, 0, "");
    s_referral (&msg, EHR, "r-v1", "case-V", "p-1", "employment", "C-V");
    msg.categories = KIM_CAT_CONTACT;
    LC_SEND (kim, &msg, 0, "");
    s_referral (&msg, EHR, "r-v2", "case-V", "p-1", "employment", "C-V");
    msg.categories = KIM_CAT_CONTACT | KIM_CAT_RESIDENCE_STATUS;
    LC_SEND (kim, &msg, KIM_E_POLICY_DENY, "rule P12", "does not permit data of category residence_status");
    s_referral (&msg, EHR, "r-v3", "case-V", "p-1", "employment", "C-V");
    msg.categories = 0;
    LC_SEND (kim, &msg, KIM_E_POLICY_DENY, "rule P12x", "contact data only");

    //  Withholding. Case-W, led by KIM Rheine: C-3 will be revoked, C-4
    //  runs out in a minute. The job centre stops receiving, so what
    //  follows waits in its mailbox, receipted but not delivered.
    kim_client_destroy (&jc);
    uint64_t now = (uint64_t) zclock_time ();
    s_grant (&msg, "C-3", "case-W", until, JC, NULL);
    LC_SEND (kim, &msg, 0, "");
    s_grant (&msg, "C-4", "case-W", now + 60 * 1000, JC, NULL);
    LC_SEND (kim, &msg, 0, "");
    s_referral (&msg, JC, "r-w1", "case-W", "p-1", "employment", "C-3");
    LC_SEND (kim, &msg, 0, "");
    s_referral (&msg, JC, "r-w2", "case-W", "p-1", "employment", "C-4");
    LC_SEND (kim, &msg, 0, "");
    const char *withheld [] = { "r-w1", "r-w2", NULL };

    //  Revocation: r-w1 is withheld and its sender told.
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_CONSENT_REVOKE;
    msg.created_at = (uint64_t) zclock_time ();
    snprintf (msg.msg_id, sizeof msg.msg_id, "revoke-C-3");
    snprintf (msg.grant_id, sizeof msg.grant_id, "C-3");
    snprintf (msg.code, sizeof msg.code, "withheld");
    LC_SEND (kim, &msg, KIM_E_BAD_VALUE, "code is set by the broker");
    msg.code [0] = 0;
    LC_SEND (kim, &msg, 0, "");
    s_await_notice (kim, "C-3", "withheld", "r-w1", NULL, &event);
    KIM_CHECK (streq (event.msg.ref_msg_id, "r-w1") && streq (event.msg.case_id, "case-W"));

    //  Expiry: the broker's clock moves two minutes; C-4 lapses on its own.
    //  The lead is told to renew it, and r-w2 is withheld as well.
    s_set_clock (clock_path, 120 * 1000);
    //  The notices that it expired come first: they are the cause the
    //  lapsed referrals' state records name
    s_await_notice (kim, "C-4", "expired", NULL, NULL, &event);
    s_await_notice (kim, "C-4", "withheld", "r-w2", NULL, &event);
    KIM_CHECK (streq (event.msg.case_id, "case-W"));
    s_referral (&msg, JC, "r-w3", "case-W", "p-1", "employment", "C-4");
    LC_SEND (kim, &msg, KIM_E_CONSENT_EXPIRED, "consent C-4 expired");

    //  The job centre comes back: it hears that C-3 was revoked and C-4
    //  ran out, and never gets r-w1 or r-w2 (they came before the notices
    //  in its mailbox, so they would have been delivered first).
    jc = kim_testbroker_client (broker, JC, 16, false);
    KIM_CHECK (jc);
    s_await_notice (jc, "C-3", "revoked", NULL, withheld, &event);
    s_await_notice (jc, "C-4", "expired", NULL, withheld, &event);
    //  Both referrals stopped: SUSPENDED (revoked) and LAPSED (expired).
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "r-w1", "accept-w1", NULL);
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "SUSPENDED");
    s_lc_msg (&msg, KIM_TYPE_ACCEPT, KIM, "r-w2", "accept-w2", NULL);
    LC_SEND (jc, &msg, KIM_E_BAD_STATE, "LAPSED");
    //  The sender may still withdraw a lapsed referral.
    s_lc_msg (&msg, KIM_TYPE_WITHDRAW, JC, "r-w2", "withdraw-w2", NULL);
    LC_SEND (kim, &msg, 0, "");

    //  The kim tool: `kim send --type CONSENT_REVOKE --consent ID` revokes,
    //  and `kim policy check` says that it checks offline only.
    if (argc > 1) {
        s_grant (&msg, "C-T", "case-W", until, JC, NULL);
        LC_SEND (kim, &msg, 0, "");
        kim_client_config_t config = kim_testbroker_client_config (broker, KIM, 0, false);
        uint8_t public_bin [32], secret_bin [32];
        KIM_CHECK (zmq_z85_decode (public_bin, config.public_key)
                && zmq_z85_decode (secret_bin, config.secret_key));
        zcert_t *cert = zcert_new_from (public_bin, secret_bin);
        char cert_path [PATH_MAX], args [3 * PATH_MAX], out [8192];
        snprintf (cert_path, sizeof cert_path, "%s/kim.cert", kim_testbroker_dir (broker));
        KIM_CHECK (cert && zcert_save (cert, cert_path) == 0);
        zcert_destroy (&cert);
        snprintf (args, sizeof args, "send --cert '%s_secret' --broker-key '%s/data/keys/broker.cert' "
                  "--endpoint '%s' --type CONSENT_REVOKE --consent C-T --msg-id revoke-C-T",
                  cert_path, kim_testbroker_dir (broker), kim_testbroker_endpoint (broker, false));
        int code = s_itest_run (argv [1], args, out, sizeof out);
        printf ("  kim send --type CONSENT_REVOKE --consent C-T: %s", out);
        KIM_CHECK (code == 0 && strstr (out, "\"msg_id\":\"revoke-C-T\",\"seq\":"));
        s_referral (&msg, JC, "r-t1", "case-W", "p-1", "employment", "C-T");
        LC_SEND (kim, &msg, KIM_E_CONSENT_REVOKED, "consent C-T was revoked");
        snprintf (args, sizeof args, "policy check --policy '%s' --from " KIM " --to " JC
                  " --purpose employment --consent C-T --assume-consent",
                  KIM_POLICY_PATH);
        code = s_itest_run (argv [1], args, out, sizeof out);
        //  An assumed consent has no end; the verdict says so rather than
        //  printing the largest 64-bit number as a time.
        KIM_CHECK (code == 0 && strstr (out, "offline: the consent as given here (--assume-consent)")
                && strstr (out, "only the broker knows")
                && strstr (out, "categories with no end"));
        snprintf (args, sizeof args, "policy check --help");
        KIM_CHECK (s_itest_run (argv [1], args, out, sizeof out) == 0
                && strstr (out, "check works OFFLINE"));
        printf ("  kim policy check says it checks offline only\n");
    }

    //  The broker still answers after every refusal.
    kim_status_t status;
    ITEST_RC (kim_client_status (kim, &status, 5000), 0);
    kim_client_destroy (&kim);
    kim_client_destroy (&jc);
    kim_client_destroy (&coe);
    kim_client_destroy (&mbe);
    kim_client_destroy (&ja);
    s_itest_broker_destroy (&broker);
    printf ("test_consent: OK\n");
    return 0;
}
