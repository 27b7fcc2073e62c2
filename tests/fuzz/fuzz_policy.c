/*  fuzz_policy.c — libFuzzer target for the policy file parser.

    A policy file is written by hand and loaded by the broker and by
    `kim policy lint`: a malformed one must get an error naming file, line
    and key, never a crash. A policy it accepts must decide a few transfers
    without crashing.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_policy.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static int
s_lookup (void *arg, const char *id, kim_consent_t *consent)
{
    (void) arg;
    if (strcmp (id, "c-ok") != 0)
        return -KIM_E_NOT_FOUND;
    memset (consent, 0, sizeof *consent);
    snprintf (consent->id, sizeof consent->id, "c-ok");
    snprintf (consent->subject, sizeof consent->subject, "p-1");
    consent->recipient_count = 1;
    snprintf (consent->recipients [0], sizeof consent->recipients [0], "jc.x");
    consent->purpose_count = 1;
    snprintf (consent->purposes [0], sizeof consent->purposes [0], "employment");
    consent->categories = 0xff;
    consent->valid_until = 5000;
    return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return 0;
    char *text = malloc (size + 1);
    if (!text)
        abort ();
    memcpy (text, data, size);
    text [size] = 0;
    char error [256];
    error [0] = 0;
    kim_policy_t *policy = kim_policy_parse (text, "fuzz.cfg", error, sizeof error);
    free (text);
    if (!policy) {
        if (!error [0] || strnlen (error, sizeof error) >= sizeof error)
            abort ();
        return 0;
    }
    kim_policy_rule_count (policy);
    kim_policy_unchecked (policy);
    static const char *senders [] = { "kim", "sch", "ja", "mbe" };
    for (size_t i = 0; i < sizeof senders / sizeof senders [0]; i++) {
        kim_msg_t msg;
        kim_msg_init (&msg);
        msg.type = i % 2? KIM_TYPE_FORWARD: KIM_TYPE_REFERRAL;
        kim_policy_checks (policy, msg.type);
        snprintf (msg.sender, sizeof msg.sender, "%s.x", senders [i]);
        snprintf (msg.purpose, sizeof msg.purpose, "employment");
        snprintf (msg.subject, sizeof msg.subject, "p-1");
        msg.categories = (uint32_t) i;
        if (i % 2) {
            msg.basis = KIM_BASIS_STATUTE;
            snprintf (msg.citation, sizeof msg.citation, "SGB X §69(1)1");
        }
        else {
            msg.basis = KIM_BASIS_CONSENT;
            snprintf (msg.consent_id, sizeof msg.consent_id, "c-ok");
        }
        kim_policy_facts_t facts = { .msg = &msg, .sender_type = senders [i], .sender_public = i % 2,
                                     .recipient = "jc.x", .recipient_type = "jc", .now = 2000 };
        kim_policy_decision_t decision;
        kim_buf_t explain;
        kim_buf_init (&explain);
        if (kim_policy_decide (policy, &facts, s_lookup, NULL, &decision, &explain) == 0
        &&  decision.checked && !decision.rule [0])
            abort ();
        kim_buf_free (&explain);
    }
    kim_policy_destroy (&policy);
    return 0;
}
