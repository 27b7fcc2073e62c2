/*  kim_policy_test.c — the policy engine's self-test: a table over the
    shipped default policy (deploy/policy.cfg; each rule with an allowed and
    a denied example) and the linter's error messages. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_policy.h"

#define ALL_ORGS { "jc.x", "ja.x", "aba.x", "kim.x", "ki.x", "ehr.x" }
#define PURPOSES { "employment", "contact", "residence", "coordination", "youth" }

static int
s_lookup (void *arg, const char *id, kim_consent_t *consent)
{
    (void) arg;
    static const char *orgs [] = ALL_ORGS;
    static const char *purposes [] = PURPOSES;
    if (strncmp (id, "c-", 2) || strcmp (id, "c-unknown") == 0)
        return -KIM_E_NOT_FOUND;
    memset (consent, 0, sizeof *consent);
    kim_str_copy (consent->id, sizeof consent->id, id);
    snprintf (consent->subject, sizeof consent->subject, "p-1");
    consent->recipient_count = sizeof orgs / sizeof orgs [0];
    for (size_t i = 0; i < consent->recipient_count; i++)
        kim_str_copy (consent->recipients [i], sizeof consent->recipients [i], orgs [i]);
    consent->purpose_count = sizeof purposes / sizeof purposes [0];
    for (size_t i = 0; i < consent->purpose_count; i++)
        kim_str_copy (consent->purposes [i], sizeof consent->purposes [i], purposes [i]);
    consent->categories = KIM_CAT_RESIDENCE_STATUS | KIM_CAT_ART9 | KIM_CAT_CONTACT;
    consent->explicit_art9 = strcmp (id, "c-noart9") != 0;
    if (strcmp (id, "c-s65") == 0)
        consent->categories |= KIM_CAT_SGB8_S65;
    if (strcmp (id, "c-203") == 0)
        consent->categories |= KIM_CAT_STGB203;
    consent->valid_until = strcmp (id, "c-expired") == 0? 1000: 4000000000000ull;
    consent->revoked_at = strcmp (id, "c-revoked") == 0? 500: 0;
    snprintf (consent->giver, sizeof consent->giver, "%s",
              strcmp (id, "c-s65-guardian") == 0? "guardian": "entruster");
    if (strcmp (id, "c-nocontact") == 0)
        consent->categories &= ~(uint32_t) KIM_CAT_CONTACT;
    if (strcmp (id, "c-s65-guardian") == 0)
        consent->categories |= KIM_CAT_SGB8_S65;
    return 0;
}

typedef struct {
    const char *from;               //  sender type
    bool pub;                       //  sender is a public body
    const char *to;                 //  recipient type (recipient org: "<to>.x")
    kim_type_t type;
    const char *purpose;
    uint32_t categories;
    const char *basis;              //  "s:<citation>", "c:<consent id>" or ""
    bool subject;
    int code;                       //  expected
    const char *rule;               //  expected
} s_case_t;

#define R   KIM_TYPE_REFERRAL
#define H   KIM_TYPE_HANDOVER_OFFER
#define RS  KIM_CAT_RESIDENCE_STATUS
#define A9  KIM_CAT_ART9
#define S65 KIM_CAT_SGB8_S65
#define S203 KIM_CAT_STGB203
#define CT  KIM_CAT_CONTACT
#define OK  0
#define DENY KIM_E_POLICY_DENY
#define NOB KIM_E_NO_BASIS

static const s_case_t s_cases [] = {
    //  P11: no subject pseudonym to the coordination
    { "kim", 1, "ki",  R, "coordination", 0, "c:c-ok", true, DENY, "P11" },
    { "kim", 1, "ki",  H, "coordination", 0, "s:SGB X §69(1)1", false, NOB, "P8" },
    //  A consent is bound to its subject: a transfer naming none cannot cite it
    { "kim", 1, "ki",  H, "coordination", 0, "c:c-ok", false, KIM_E_CONSENT_BOUND, "P8" },
    //  P5: school -> immigration office denied; school -> KIM with consent
    { "sch", 1, "aba", R, "residence", 0, "c:c-ok", true, DENY, "P5" },
    { "sch", 1, "kim", R, "youth", 0, "c:c-ok", true, OK, "P9" },
    //  P7: stgb203 never to aba, except public_health / drug_offence
    { "jc",  1, "aba", R, "residence", S203, "s:SGB X §71(2)1", true, DENY, "P7" },
    { "jc",  1, "aba", R, "public_health", S203, "s:SGB X §71(2)1", true, OK, "P4" },
    //  P2: sgb8_s65 only with consent (or a § 65 exception)
    { "ja",  1, "jc",  R, "employment", S65, "s:SGB X §69(1)1", true, NOB, "P2" },
    { "ja",  1, "jc",  R, "employment", S65, "c:c-s65", true, OK, "P2" },
    { "ja",  1, "jc",  R, "employment", S65, "c:c-ok", true, KIM_E_CONSENT_SCOPE, "P2" },
    //  P2 needs the consent of whoever entrusted the data (givers = entruster)
    { "ja",  1, "jc",  R, "employment", S65, "c:c-s65-guardian", true, KIM_E_CONSENT_SCOPE, "P2" },
    { "ja",  1, "ja",  R, "youth", S65, "s:SGB VIII §65(1)4", true, OK, "P2" },
    //  P12: volunteers get contact data (category contact) with consent, nothing else
    { "kim", 1, "ehr", R, "contact", CT, "c:c-ok", true, OK, "P12" },
    { "kim", 1, "ehr", R, "contact", 0, "c:c-ok", true, DENY, "P12x" },
    { "kim", 1, "ehr", R, "employment", 0, "c:c-ok", true, DENY, "P12x" },
    { "kim", 1, "ehr", R, "contact", CT | RS, "c:c-ok", true, DENY, "P12" },
    { "kim", 1, "ehr", R, "contact", CT, "c:c-nocontact", true, KIM_E_CONSENT_SCOPE, "P12" },
    //  contact data may go wherever data may go
    { "kim", 1, "jc",  R, "employment", CT | RS, "c:c-ok", true, OK, "P8" },
    //  P6: private carriers -> aba only with consent
    { "mbe", 0, "aba", R, "residence", RS, "c:c-ok", true, OK, "P6" },
    { "mbe", 0, "aba", R, "residence", RS, "s:AufenthG §87(1)", true, NOB, "P6" },
    //  P4h / P4a / P4: social-code bodies -> aba under § 71 SGB X; health
    //  data only in the two cases of § 71 Abs. 2 Satz 2, citing them
    { "jc",  1, "aba", R, "benefit", A9, "s:SGB X §71(2)2", true, DENY, "P4a" },
    { "jc",  1, "aba", R, "public_health", A9, "s:§ 71 Abs. 2 Satz 2 Nr. 1 SGB X", true, OK, "P4h" },
    { "jc",  1, "aba", R, "drug_rehabilitation", A9, "s:SGB X § 71 (2) S. 2 Nr. 2", true, OK, "P4h" },
    { "jc",  1, "aba", R, "public_health", A9, "s:SGB X §71(2)1", true, NOB, "P4h" },
    { "jc",  1, "aba", R, "public_health", A9 | S203, "s:§ 71 Abs. 2 Satz 2 Nr. 1 SGB X", true, OK, "P4h" },
    { "jc",  1, "aba", R, "drug_rehabilitation", A9 | S203, "s:§ 71 Abs. 2 Satz 2 Nr. 2 SGB X", true, DENY, "P7" },
    { "soz", 1, "aba", R, "benefit", RS, "s:SGB X §71(2)2", true, OK, "P4" },
    { "soz", 1, "aba", R, "benefit", RS, "s:SGB X §69(1)1", true, NOB, "P4" },
    //  Citations are read, not compared as text; broader ones are refused
    { "soz", 1, "aba", R, "benefit", RS, "s:§ 71 Abs. 2 Satz 1 Nr. 3 SGB X", true, OK, "P4" },
    { "soz", 1, "aba", R, "benefit", RS, "s:sgb x § 71 abs. 2 nr. 2", true, OK, "P4" },
    { "soz", 1, "aba", R, "benefit", RS, "s:§ 87 Absatz 1 Satz 2 AufenthG", true, OK, "P4" },
    { "soz", 1, "aba", R, "benefit", RS, "s:SGB X §71(2)", true, NOB, "P4" },
    { "soz", 1, "aba", R, "benefit", RS, "s:§ 71 Abs. 2 und 3 SGB X", true, NOB, "P4" },
    //  P3: youth office handover
    { "ja",  1, "ja",  H, "youth", 0, "s:SGB VIII §86c(2)", true, OK, "P3" },
    { "ja",  1, "ja",  H, "youth", S203, "s:SGB VIII §86c(2)", true, DENY, "P3" },
    //  P1s / P1: § 69 SGB X between social-code bodies, § 76 limits
    { "jc",  1, "ja",  R, "youth", S203, "c:c-203", true, OK, "P1s" },
    { "jc",  1, "ja",  R, "youth", S203, "s:SGB X §69(1)1", true, NOB, "P1s" },
    { "jc",  1, "ja",  R, "youth", RS, "s:SGB X §69(1)1", true, OK, "P1" },
    { "jc",  1, "soz", R, "benefit", 0, "s:BGB §1", true, NOB, "P1" },
    { "jc",  1, "ja",  R, "youth", 0, "c:c-unknown", true, KIM_E_CONSENT_UNKNOWN, "P1" },
    //  P14: immigration office to immigration office
    { "aba", 1, "aba", R, "residence", RS, "s:AufenthV §72", true, OK, "P14" },
    { "aba", 1, "aba", R, "residence", RS, "c:c-ok", true, NOB, "P14" },
    //  P13 / P13r: integration courses
    { "aba", 1, "ikt", R, "course", RS, "s:IntV §8(1)", true, OK, "P13" },
    { "aba", 1, "ikt", R, "course", A9, "s:IntV §8(1)", true, DENY, "P13" },
    { "ikt", 0, "jc",  R, "course", RS, "s:IntV §8(4)", true, OK, "P13r" },
    { "ikt", 0, "jc",  R, "course", RS, "s:IntV §8(1)", true, NOB, "P13r" },
    //  P10: KIM -> KIM only with consent
    { "kim", 1, "kim", H, "youth", 0, "c:c-ok", true, OK, "P10" },
    { "kim", 1, "kim", H, "youth", 0, "s:SGB X §69(1)1", true, NOB, "P10" },
    //  P8: KIM -> any agency with a consent covering the transfer
    { "kim", 1, "jc",  R, "employment", RS | A9, "c:c-ok", true, OK, "P8" },
    { "kim", 1, "jc",  R, "housing", 0, "c:c-ok", true, KIM_E_CONSENT_SCOPE, "P8" },
    { "kim", 1, "aa",  R, "employment", 0, "c:c-ok", true, KIM_E_CONSENT_SCOPE, "P8" },
    { "kim", 1, "jc",  R, "employment", A9, "c:c-noart9", true, KIM_E_CONSENT_SCOPE, "P8" },
    { "kim", 1, "jc",  R, "employment", 0, "c:c-revoked", true, KIM_E_CONSENT_REVOKED, "P8" },
    { "kim", 1, "jc",  R, "employment", 0, "c:c-expired", true, KIM_E_CONSENT_EXPIRED, "P8" },
    { "kim", 1, "jc",  R, "employment", 0, "s:SGB X §69(1)1", true, NOB, "P8" },
    //  P9: feedback to KIM with consent
    { "jc",  1, "kim", R, "employment", 0, "c:c-ok", true, OK, "P9" },
    { "jc",  1, "kim", R, "employment", 0, "s:SGB X §69(1)1", true, NOB, "P9" },
    //  default deny
    { "sch", 1, "jc",  R, "employment", 0, "c:c-ok", true, DENY, "default" },
    { "ehr", 0, "ja",  R, "youth", 0, "c:c-ok", true, DENY, "default" },
};

static void
s_run_case (const kim_policy_t *policy, const s_case_t *c, bool verbose)
{
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = c->type;
    snprintf (msg.sender, sizeof msg.sender, "%s.x", c->from);
    kim_str_copy (msg.purpose, sizeof msg.purpose, c->purpose);
    msg.categories = c->categories;
    if (c->subject)
        snprintf (msg.subject, sizeof msg.subject, "p-1");
    if (c->basis [0] == 's') {
        msg.basis = KIM_BASIS_STATUTE;
        kim_str_copy (msg.citation, sizeof msg.citation, c->basis + 2);
    }
    else
    if (c->basis [0] == 'c') {
        msg.basis = KIM_BASIS_CONSENT;
        kim_str_copy (msg.consent_id, sizeof msg.consent_id, c->basis + 2);
    }
    char recipient [KIM_ORG_MAX + 1];
    snprintf (recipient, sizeof recipient, "%s.x", c->to);
    kim_policy_facts_t facts = { &msg, c->from, c->pub, recipient, c->to, 2000, NULL, NULL };
    kim_policy_decision_t decision;
    kim_buf_t explain;
    kim_buf_init (&explain);
    int rc = kim_policy_decide (policy, &facts, s_lookup, NULL, &decision, &explain);
    bool pass = rc == 0 && decision.checked && decision.code == c->code
             && strcmp (decision.rule, c->rule) == 0
             && strstr (decision.text, decision.rule) && decision.law [0];
    if (verbose || !pass)
        printf ("  %s %s -> %s %s: %s (rule %s) %s\n%.*s", pass? "ok": "FAIL", c->from, c->to,
                c->purpose, kim_errname (decision.code), decision.rule, decision.text,
                pass? 0: (int) explain.size, (const char *) explain.data);
    kim_buf_free (&explain);
    fflush (stdout);
    assert (pass);
}

static void
s_expect_error (const char *text, const char *expected)
{
    char error [KIM_POLICY_ERROR_MAX] = "";
    kim_policy_t *policy = kim_policy_parse (text, "t.cfg", error, sizeof error);
    if (policy || !strstr (error, expected))
        printf ("  lint: expected '%s', got '%s'\n", expected, error);
    fflush (stdout);
    assert (!policy && strstr (error, expected));
}

//  Collects the statutes kim_policy_statutes offers, "rule:citation;..."
static void
s_statute (void *arg, const char *rule, const char *citation)
{
    char *out = (char *) arg;
    size_t used = strlen (out);
    snprintf (out + used, 2048 - used, "%s:%s;", rule, citation);
}

static void
s_test_statutes (kim_policy_t *policy)
{
    char seen [2048] = "";
    //  jc to aba: P2 (conditional on sgb8_s65 data), P4h not for this
    //  purpose, P4a a conditional deny, P4 decides: the walk stops there
    assert (kim_policy_statutes (policy, "jc", "aba", "employment", s_statute, seen) == 10);
    assert (strstr (seen, "P2:SGB VIII §65(1)2;"));
    assert (strstr (seen, "P4:SGB X §71(2)3;"));
    assert (strstr (seen, "P4:AufenthG §87(2);"));
    assert (!strstr (seen, "P4h:"));
    assert (!strstr (seen, "P1:"));
    //  The same with the purpose of P4h: its health citations come first
    seen [0] = 0;
    assert (kim_policy_statutes (policy, "jc", "aba", "public_health", s_statute, seen) == 12);
    assert (strstr (seen, "P4h:§ 71 Abs. 2 Satz 2 Nr. 1 SGB X;"));
    //  Between social-code bodies: P1's citation, nothing after it
    seen [0] = 0;
    assert (kim_policy_statutes (policy, "jc", "ja", "employment", s_statute, seen) == 5);
    assert (strstr (seen, "P1:SGB X §69(1)1;"));
    //  Volunteers: an unconditional deny (P12x) ends the walk
    seen [0] = 0;
    assert (kim_policy_statutes (policy, "jc", "ehr", "contact", s_statute, seen) == 4);
    assert (!strstr (seen, "P1:"));
    //  Schools to the immigration office: denied first, nothing offered
    assert (kim_policy_statutes (policy, "sch", "aba", "employment", NULL, NULL) == 0);
}

void
kim_policy_test (bool verbose)
{
    const char *path = getenv ("KIM_POLICY_FILE");
    if (!path)
        path = "deploy/policy.cfg";
    char error [KIM_POLICY_ERROR_MAX] = "";
    kim_policy_t *policy = kim_policy_load (path, error, sizeof error);
    if (!policy)
        printf ("  %s\n", error);
    assert (policy);
    assert (kim_policy_rule_count (policy) >= 14);
    if (strstr (path, "deploy/policy.cfg"))     //  the statutes of the shipped rules
        s_test_statutes (policy);
    assert (kim_policy_checks (policy, KIM_TYPE_REFERRAL));
    assert (kim_policy_checks (policy, KIM_TYPE_FORWARD));
    assert (kim_policy_checks (policy, KIM_TYPE_HANDOVER_OFFER));
    assert (!kim_policy_checks (policy, KIM_TYPE_ACCEPT));
    for (size_t i = 0; i < sizeof s_cases / sizeof s_cases [0]; i++)
        s_run_case (policy, &s_cases [i], verbose);

    //  Every rule of the default policy has an allowed (allow rules) and a
    //  denied example above.
    //  (Deny-only rules P5, P7, P11, P12x, P4a are paired with the allowed
    //  transfer next to them in the table.)

    //  A broader citation is refused naming the provisions that would pass.
    {
        kim_msg_t broad;
        kim_msg_init (&broad);
        broad.type = KIM_TYPE_REFERRAL;
        snprintf (broad.purpose, sizeof broad.purpose, "benefit");
        broad.basis = KIM_BASIS_STATUTE;
        snprintf (broad.citation, sizeof broad.citation, "SGB X § 71 Abs. 2");
        kim_policy_facts_t broad_facts = { &broad, "soz", true, "aba.x", "aba", 1, NULL, NULL };
        kim_policy_decision_t verdict;
        assert (kim_policy_decide (policy, &broad_facts, s_lookup, NULL, &verdict, NULL) == 0);
        if (verbose)
            printf ("  %s\n", verdict.text);
        assert (verdict.code == KIM_E_NO_BASIS && strstr (verdict.text, "broader than the rule")
             && strstr (verdict.text, "'SGB X §71(2)1', 'SGB X §71(2)2', 'SGB X §71(2)3', "
                                      "'SGB X §71(2)4'")
             && !strstr (verdict.text, "AufenthG §87(1)'"));
    }

    //  Types that are no transfer are not checked.
    kim_msg_t msg;
    kim_msg_init (&msg);
    msg.type = KIM_TYPE_ACCEPT;
    kim_policy_facts_t facts = { &msg, "jc", true, "kim.x", "kim", 1, NULL, NULL };
    kim_policy_decision_t decision;
    assert (kim_policy_decide (policy, &facts, s_lookup, NULL, &decision, NULL) == 0);
    assert (!decision.checked && decision.code == 0);
    kim_policy_destroy (&policy);
    kim_policy_destroy (&policy);

    //  The linter names file, line and key.
    s_expect_error ("policy\n    version = 1\nrules\n   P1\n", "t.cfg:4: indentation");
    s_expect_error ("policy\n    version = 1\nrules\n    P1\n        law = x\n"
                    "        from = *\n        to = *\n        decison = deny\n",
                    "t.cfg:8: rules/P1/decison: unknown key");
    s_expect_error ("policy\n    version = 1\nrules\n    P1\n        from = *\n"
                    "        to = *\n        decision = deny\n", "t.cfg:4: rules/P1/law: required");
    s_expect_error ("policy\n    version = 1\nrules\n    P1\n        law = x\n"
                    "        from = *\n        to = *\n        decision = allow\n"
                    "        basis = statute\n", "rules/P1/citations");
    s_expect_error ("policy\n    checks = REFERAL\nrules\n", "t.cfg:2: checks: 'REFERAL'");
    s_expect_error ("policy\n    version = 1\nrules\n    P1\n        law = x\n"
                    "        from = *\n        to = jc\n        decision = deny\n"
                    "        if_categories = art10\n", "t.cfg:9: if_categories: 'art10'");
    s_expect_error ("policy\n    version = 1\n", "rules: section is missing");
    s_expect_error ("policy\n    checks = REFERRAL\nrules\n",
                    "t.cfg:2: policy/checks: every transfer of personal data is checked");
    s_expect_error ("policy\n    checks = \"REFERRAL, FORWARD, HANDOVER_OFFER, ACCEPT\"\nrules\n",
                    "t.cfg:2: policy/checks: every transfer");
    //  A comment may follow a name; '#' inside a quoted value is text
    policy = kim_policy_parse ("policy   # the header\n"
                               "    checks = \"HANDOVER_OFFER, REFERRAL, FORWARD\"  # all three\n"
                               "rules    # in order\n    T    # a test rule\n        law = \"a # b\"\n"
                               "        from = *\n        to = *\n        decision = deny\n",
                               "t.cfg", error, sizeof error);
    assert (policy && kim_policy_rule_count (policy) == 1);
    kim_policy_destroy (&policy);
    s_expect_error ("policy\n    checks = \"REFERRAL\nrules\n", "t.cfg:2: checks: unterminated");
    s_expect_error ("polcy\n", "t.cfg:1: polcy: unknown section");
    s_expect_error ("policy\n    version = 1\nrules\n    P1\n        law = x\n"
                    "        from = *\n        to = *\n        decision = allow\n"
                    "        basis = consent\n        givers = parent\n",
                    "t.cfg:10: givers: 'parent' is not a giver");
    s_expect_error ("policy\n    version = 1\nrules\n    P1\n        law = x\n"
                    "        from = *\n        to = *\n        decision = allow\n"
                    "        basis = statute\n        citations = \"SGB X §69(1)1\"\n"
                    "        givers = guardian\n", "givers: only with basis consent");
    s_expect_error ("policy\n    version = 1\nrules\n    P1\n        law = x\n"
                    "        from = *\n        to = *\n        decision = allow\n"
                    "        basis = statute\n        citations = \"SGB X §71(2)1, SGB X\"\n",
                    "t.cfg:10: citations: 'SGB X' cannot be read: expected '§' or 'Art.'");
    //  A test policy's unchecked basis: allows without looking, and says so.
    s_expect_error ("policy\n    version = 1\nrules\n    T\n        law = x\n"
                    "        from = *\n        to = *\n        decision = allow\n"
                    "        basis = \"unchecked, consent\"\n", "unchecked stands alone");
    policy = kim_policy_parse ("policy\n    version = 1\nrules\n    T\n        law = x\n"
                               "        from = *\n        to = *\n        decision = allow\n"
                               "        basis = unchecked\n", "t.cfg", error, sizeof error);
    assert (policy && kim_policy_unchecked (policy));
    msg.type = KIM_TYPE_REFERRAL;
    assert (kim_policy_decide (policy, &facts, s_lookup, NULL, &decision, NULL) == 0);
    assert (decision.checked && decision.code == 0 && decision.unchecked
         && strcmp (decision.rule, "T") == 0);
    kim_policy_destroy (&policy);

    //  The smallest policy: allow nothing but what is not checked.
    policy = kim_policy_parse ("rules\n", "t.cfg", error, sizeof error);
    assert (policy && kim_policy_rule_count (policy) == 0);
    msg.type = KIM_TYPE_REFERRAL;
    assert (kim_policy_decide (policy, &facts, s_lookup, NULL, &decision, NULL) == 0);
    assert (decision.checked && decision.code == KIM_E_POLICY_DENY && strcmp (decision.rule, "default") == 0);
    kim_policy_destroy (&policy);
}
