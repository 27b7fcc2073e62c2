"""The broker's data-sharing policy, checked from its documents alone against
real brokers over real sockets: kim-policy(5), PROTOCOL.md §8.3 (order of
checks), §8.13 (RELOAD), §9 (`rule`), §9.3 (lawful by default), §9.5
(citations), §10 (codes), kim.cfg(5) SECTION policy, kim-broker(8) (--check,
SIGHUP), kim(1) (`kim policy lint|check`), docs/operations.md §3, and the
shipped deploy/policy.cfg.

Three kinds of broker:
- `ship`: the shipped policy, one organisation of every agency type it names
  (mbe.rheine and ikt.rheine private carriers), an auditor;
- `net`: a policy of this file's own (MATCHING below) whose rules each try
  one selector or one precedence rule of kim-policy(5);
- brokers of a test's own for the file's errors, the default file, RELOAD,
  SIGHUP and restarts.

A transfer passes when the recipient (for a FORWARD: `org`) gets it, with the
deciding rule in `rule` (§9, §9.3); it is refused with the code, path and
text §9.3 gives. Where the broker differs from the documents a test is
marked xfail(strict) with the section and both behaviours."""
import os
import re
import signal
import subprocess
import time

import msgpack
import pytest

import kim
from kim_inbox import WAIT, Inbox, uid
from kim.certs import write_cert
from kim_policyfiles import (CHECKS, SHIPPED_POLICY, PolicyBroker, add_org, kim_cli, line_of,
                             parse_rules, policy_text, set_org_key, write)

CODES = {"POLICY_DENY": 500, "NO_BASIS": 501, "CONSENT_UNKNOWN": 502, "CONSENT_REVOKED": 503,
         "CONSENT_SCOPE": 504, "CONSENT_EXPIRED": 505, "CONSENT_BOUND": 506}
FORBIDDEN, STALE, SENDER_MISMATCH, UNKNOWN_RECIPIENT = 205, 212, 204, 203
RELOAD_FAILED, REFERRAL_EXISTS = 213, 404
#   §9.3: "its path is hdr.recipient (POLICY_DENY), hdr.legal_basis (NO_BASIS) or
#   hdr.legal_basis.consent_id (every consent code)"
PATHS = {"POLICY_DENY": "hdr.recipient", "NO_BASIS": "hdr.legal_basis"}
CONSENT_PATH = "hdr.legal_basis.consent_id"
MESSAGE, DECISION = 1, 3
SGBX69 = "SGB X §69(1)1"


def now_ms():
    return int(time.time() * 1000)


def statute(citation):
    return {"kind": "statute", "citation": citation}


def consent(cid):
    return {"kind": "consent", "consent_id": cid}


class Net:
    """Sessions (each an Inbox, acking what it gets) of a broker's agencies,
    opened when first used, and the transfers the tests make."""

    def __init__(self, broker, rules):
        self.broker = broker
        self.rules = rules
        self.boxes = {}

    def box(self, org):
        if org not in self.boxes:
            c = kim.Client(self.broker.endpoint, self.broker.broker_cert,
                           self.broker.cert_secret(org), timeout=WAIT)
            c.connect()
            self.boxes[org] = Inbox(c)
        return self.boxes[org]

    def client(self, org):
        return self.box(org).client

    def close(self):
        for box in self.boxes.values():
            box.client.close()
        self.boxes = {}

    def send(self, sender, hdr, payload=b""):
        """("allow", the header delivered to the target) or ("reject", Rejected)."""
        hdr.setdefault("msg_id", uid("m"))
        try:
            self.client(sender).send(hdr, payload)
        except kim.Rejected as r:
            assert r.msg_id == hdr["msg_id"], r
            return "reject", r
        target = hdr["org"] if hdr["type"] == "FORWARD" else hdr["recipient"]
        got = self.box(target).wait(msg_id=hdr["msg_id"])
        assert got, "%s was receipted but never delivered to %s" % (hdr["msg_id"], target)
        return "allow", got[0].hdr

    def grant(self, lead, recipients, purposes=("benefits",), categories=(), giver=None,
              case_id=None, subject=None):
        """A CONSENT_GRANT by `lead` (opening a new case it leads, §9.3
        Consents); returns (case_id, consent_id, subject)."""
        case_id, cid, subject = case_id or uid("C"), uid("G"), subject or uid("p")
        hdr = {"type": "CONSENT_GRANT", "msg_id": uid("m"), "case_id": case_id,
               "consent": cid, "subject": subject, "recipients": list(recipients),
               "purposes": list(purposes), "valid_until": now_ms() + 3600 * 1000}
        if categories:
            hdr["categories"] = list(categories)
        if "art9" in categories:
            hdr["explicit"] = True
        if giver:
            hdr["giver"] = giver
        self.client(lead).send(hdr)
        return case_id, cid, subject

    def refer(self, sender, to, basis, purpose="benefits", categories=(), giver="entruster",
              **extra):
        """A REFERRAL from `sender` to `to`; `basis` is a citation or "consent"
        (then a consent covering exactly this transfer is granted first)."""
        if basis == "consent":
            case_id, cid, subject = self.grant(sender, [to], [purpose], categories, giver)
            lb = consent(cid)
        else:
            case_id, subject, lb = uid("C"), uid("p"), statute(basis)
        hdr = {"type": "REFERRAL", "recipient": to, "referral_id": uid("R"),
               "case_id": case_id, "subject": subject, "purpose": purpose, "legal_basis": lb}
        if categories:
            hdr["categories"] = list(categories)
        hdr.update(extra)
        return self.send(sender, hdr)

    def offer(self, sender, to, basis, with_subject=True, purpose=None, categories=()):
        """A HANDOVER_OFFER of a new case `sender` leads (opened by a grant)."""
        case_id, cid, subject = self.grant(sender, [to], [purpose or "benefits"], categories,
                                           "entruster")
        hdr = {"type": "HANDOVER_OFFER", "recipient": to, "case_id": case_id,
               "legal_basis": consent(cid) if basis == "consent" else statute(basis)}
        if with_subject:
            hdr["subject"] = subject
        if purpose:
            hdr["purpose"] = purpose
        if categories:
            hdr["categories"] = list(categories)
        return self.send(sender, hdr)

    def referred(self, sender, to, citation=SGBX69, **extra):
        """An allowed REFERRAL (statute) that `to` received; its header."""
        kind, got = self.refer(sender, to, citation, **extra)
        assert kind == "allow", got
        return got


def allowed(outcome, rule):
    kind, got = outcome
    assert kind == "allow", "refused, expected allowed by %s: %s" % (rule, got)
    assert got.get("rule") == rule, got          # §9 `rule`, §9.3: the deciding rule, delivered


def refused(outcome, reason, rule, rules, path=True):
    """§9.3: the code and reason, the path, and a text naming the rule (its
    id, as in "rule P8 (kim,kimw -> *, consent): ..."), the law, and for a
    deny rule its `why` (kim-policy(5): "A short reason shown with a denial")."""
    kind, r = outcome
    assert kind == "reject", "allowed by %s, expected %s by %s" % (r.get("rule"), reason, rule)
    assert (r.code, r.reason) == (CODES[reason], reason), r
    if path:
        assert r.path == PATHS.get(reason, CONSENT_PATH), r
    if rule == "default":
        assert re.search(r"\bdefault\b", r.text), r.text
        return r
    assert r.text.startswith("rule %s (" % rule), r.text
    assert "[%s]" % rules[rule]["law"] in r.text, r.text   # law: "shown in every answer"
    if rules[rule].get("decision") == "deny" and rules[rule].get("why"):
        assert rules[rule]["why"] in r.text, r.text
    return r


def records(auditor):
    """The whole log as an auditor reads it (§8.11), bodies decoded."""
    out = []
    for r in auditor.query(from_seq=1, window=512):
        body = msgpack.unpackb(r["body"], raw=False) if r["kind"] in (MESSAGE, DECISION) else None
        out.append((r["kind"], body))
    return out


#   === the shipped policy (deploy/policy.cfg) ====================================

SHIP_ORGS = {o: "agency" for o in (
    "kim.rheine", "kimw.rheine", "ki.steinfurt", "aba.rheine", "aba.coesfeld", "jc.rheine",
    "aa.rheine", "ja.rheine", "ja.coesfeld", "soz.rheine", "alb.rheine", "sch.rheine",
    "ehr.rheine", "mbe.rheine", "ikt.rheine", "bsk.rheine")}
SHIP_ORGS["dsb.steinfurt"] = "auditor"
SHIP_PRIVATE = ("mbe.rheine", "ikt.rheine")


@pytest.fixture(scope="module")
def ship():
    b = PolicyBroker(SHIPPED_POLICY, SHIP_ORGS, private=SHIP_PRIVATE).start()
    n = Net(b, parse_rules(SHIPPED_POLICY))
    yield n
    n.close()
    b.finish()


#   (id, sender, recipient, basis, purpose, categories, expected, rule); every
#   expectation follows from deploy/policy.cfg read with kim-policy(5) DESCRIPTION
#   ("the first rule whose selectors all match decides. No rule matching means
#   deny") and §9.3 (categories -> POLICY_DENY, basis kind / citation -> NO_BASIS).
HEALTH1 = "§ 71 Abs. 2 Satz 2 Nr. 1 SGB X"
HEALTH2 = "§ 71 Abs. 2 Satz 2 Nr. 2 SGB X"
SHIPPED_CASES = [
    # P11: * -> ki with a subject: deny; before P8 (kim -> *) too
    ("P11-jc-to-ki", "jc.rheine", "ki.steinfurt", SGBX69, "benefits", (), "POLICY_DENY", "P11"),
    ("P11-before-P8-kim-to-ki", "kim.rheine", "ki.steinfurt", "consent", "benefits", (),
     "POLICY_DENY", "P11"),
    # P5: schools pass nothing to the immigration office, on any basis
    ("P5-sch-to-aba", "sch.rheine", "aba.rheine", "AufenthG §87(1)", "residence", (),
     "POLICY_DENY", "P5"),
    # P7: stgb203 never to aba, unless public_health / drug_offence; before P6 too
    ("P7-stgb203-to-aba", "jc.rheine", "aba.rheine", "SGB X §71(2)1", "residence", ("stgb203",),
     "POLICY_DENY", "P7"),
    ("P7-before-P6-private-carrier", "mbe.rheine", "aba.rheine", "consent", "residence",
     ("stgb203",), "POLICY_DENY", "P7"),
    ("P7-unless-public-health-falls-to-P4", "jc.rheine", "aba.rheine", "SGB X §71(2)1",
     "public_health", ("stgb203",), "allow", "P4"),
    # P2: sgb8_s65 on § 65 Abs. 1 Nr. 2-5 SGB VIII; the first match decides, no fall-through to P1
    ("P2-sgb8-statute", "ja.rheine", "jc.rheine", "SGB VIII §65(1)2", "benefits", ("sgb8_s65",),
     "allow", "P2"),
    ("P2-first-match-no-fallthrough-to-P1", "ja.rheine", "jc.rheine", SGBX69, "benefits",
     ("sgb8_s65",), "NO_BASIS", "P2"),
    # P12 / P12x: volunteers get contact data only, with consent
    ("P12-contact-consent", "kim.rheine", "ehr.rheine", "consent", "language_support",
     ("contact",), "allow", "P12"),
    ("P12-statute-is-no-basis", "kim.rheine", "ehr.rheine", SGBX69, "language_support",
     ("contact",), "NO_BASIS", "P12"),
    ("P12-more-than-contact", "kim.rheine", "ehr.rheine", "consent", "language_support",
     ("residence_status", "contact"), "POLICY_DENY", "P12"),
    ("P12x-no-contact-category", "kim.rheine", "ehr.rheine", "consent", "language_support", (),
     "POLICY_DENY", "P12x"),
    # P6: private carriers to aba only with consent; a public non-social-code body: no rule
    ("P6-private-consent", "mbe.rheine", "aba.rheine", "consent", "residence",
     ("residence_status",), "allow", "P6"),
    ("P6-private-statute", "mbe.rheine", "aba.rheine", "AufenthG §87(1)", "residence", (),
     "NO_BASIS", "P6"),
    ("P6-before-P13r-private-course-provider", "ikt.rheine", "aba.rheine", "IntV §8(4)",
     "integration_course", (), "NO_BASIS", "P6"),
    ("public-bsk-to-aba-default", "bsk.rheine", "aba.rheine", "AufenthG §87(1)", "residence", (),
     "POLICY_DENY", "default"),
    # P4h / P4a / P4: social-code bodies to aba
    ("P4h-public-health", "jc.rheine", "aba.rheine", HEALTH1, "public_health", ("art9",),
     "allow", "P4h"),
    ("P4h-drug-rehabilitation", "soz.rheine", "aba.rheine", HEALTH2, "drug_rehabilitation",
     ("art9",), "allow", "P4h"),
    ("P4h-satz1-citation", "jc.rheine", "aba.rheine", "SGB X §71(2)1", "public_health", ("art9",),
     "NO_BASIS", "P4h"),
    ("P4a-other-purpose", "jc.rheine", "aba.rheine", HEALTH1, "residence", ("art9",),
     "POLICY_DENY", "P4a"),
    ("P4-statute", "jc.rheine", "aba.rheine", "SGB X §71(2)3", "residence", ("residence_status",),
     "allow", "P4"),
    ("P4-long-spelling", "aa.rheine", "aba.rheine", "§ 71 Abs. 2 Satz 1 Nr. 3 SGB X",
     "residence", (), "allow", "P4"),
    ("P4-aufenthg", "alb.rheine", "aba.rheine", "AufenthG §87(2)", "residence", (), "allow", "P4"),
    ("P4-consent-is-no-basis", "jc.rheine", "aba.rheine", "consent", "residence", (),
     "NO_BASIS", "P4"),
    # P3: ja -> ja REFERRAL (and HANDOVER_OFFER, below)
    ("P3-ja-to-ja-86c", "ja.rheine", "ja.coesfeld", "SGB VIII §86c(2)", "youth_welfare", (),
     "allow", "P3"),
    ("P3-letter-case-and-spaces", "ja.rheine", "ja.coesfeld", "sgb viii § 86C abs 2",
     "youth_welfare", (), "allow", "P3"),
    ("P3-86-is-not-86c", "ja.rheine", "ja.coesfeld", "SGB VIII §86(2)", "youth_welfare", (),
     "NO_BASIS", "P3"),
    # P1s / P1: between social-code bodies
    ("P1s-stgb203-statute", "jc.rheine", "soz.rheine", SGBX69, "benefits", ("stgb203",),
     "NO_BASIS", "P1s"),
    ("P1s-stgb203-consent", "jc.rheine", "soz.rheine", "consent", "benefits", ("stgb203",),
     "allow", "P1s"),
    ("P1-statute", "jc.rheine", "soz.rheine", SGBX69, "benefits", ("residence_status",),
     "allow", "P1"),
    ("P1-long-spelling", "alb.rheine", "aa.rheine", "§ 69 Abs. 1 Nr. 1 SGB X", "employment", (),
     "allow", "P1"),
    ("P1-consent", "aa.rheine", "jc.rheine", "consent", "employment", ("art9",), "allow", "P1"),
    ("P1-unlisted-citation", "jc.rheine", "soz.rheine", "SGB X §70(1)1", "benefits", (),
     "NO_BASIS", "P1"),
    # P14, P13, P13r
    ("P14-aba-to-aba", "aba.rheine", "aba.coesfeld", "AufenthG §86", "residence",
     ("residence_status",), "allow", "P14"),
    ("P13-aba-to-ikt", "aba.rheine", "ikt.rheine", "IntV §8(1)", "integration_course",
     ("residence_status",), "allow", "P13"),
    ("P13-art9-not-permitted", "aba.rheine", "ikt.rheine", "IntV §8(1)", "integration_course",
     ("art9",), "POLICY_DENY", "P13"),
    ("P13r-ikt-to-jc", "ikt.rheine", "jc.rheine", "IntV §8(4)", "integration_course", (),
     "allow", "P13r"),
    ("P13r-ikt-to-soz-default", "ikt.rheine", "soz.rheine", "IntV §8(4)", "integration_course",
     (), "POLICY_DENY", "default"),
    # P10 before P8; P8; P9
    ("P10-before-P8-kim-to-kimw", "kim.rheine", "kimw.rheine", "consent", "case_management",
     ("art9",), "allow", "P10"),
    ("P8-kim-to-jc", "kim.rheine", "jc.rheine", "consent", "employment", ("residence_status",),
     "allow", "P8"),
    ("P8-statute-is-no-basis", "kim.rheine", "jc.rheine", SGBX69, "employment", (),
     "NO_BASIS", "P8"),
    ("P9-jc-to-kim", "jc.rheine", "kim.rheine", "consent", "employment", (), "allow", "P9"),
    ("P9-statute-is-no-basis", "soz.rheine", "kim.rheine", SGBX69, "benefits", (),
     "NO_BASIS", "P9"),
    ("P9-stgb203-not-permitted", "jc.rheine", "kim.rheine", "consent", "employment",
     ("stgb203",), "POLICY_DENY", "P9"),
    # no rule at all
    ("default-sch-to-jc", "sch.rheine", "jc.rheine", SGBX69, "education", (),
     "POLICY_DENY", "default"),
    ("default-ehr-to-soz", "ehr.rheine", "soz.rheine", "consent", "benefits", (),
     "POLICY_DENY", "default"),
]


@pytest.mark.parametrize("sender,to,basis,purpose,categories,expected,rule",
                         [pytest.param(*c[1:], id=c[0]) for c in SHIPPED_CASES])
def test_shipped_policy_decides_a_referral(ship, sender, to, basis, purpose, categories,
                                           expected, rule):
    """deploy/policy.cfg rule `rule`; kim-policy(5) DESCRIPTION (first match,
    default deny), §9.3 (codes, paths, text, `rule` delivered)."""
    outcome = ship.refer(sender, to, basis, purpose, categories)
    if expected == "allow":
        allowed(outcome, rule)
    else:
        refused(outcome, expected, rule, ship.rules)


def test_shipped_P4_broader_citation_is_no_basis_naming_the_rules_citations_inside_it(ship):
    """§9.3 and §9.5: a citation broader than every citation the rule lists is
    NO_BASIS, "the text then names those inside it" (P4 lists SGB X §71(2)1..4)."""
    r = refused(ship.refer("jc.rheine", "aba.rheine", "SGB X §71(2)", "residence"),
                "NO_BASIS", "P4", ship.rules)
    for inside in ("SGB X §71(2)1", "SGB X §71(2)2", "SGB X §71(2)3", "SGB X §71(2)4"):
        assert inside in r.text, r.text


def test_shipped_P11_without_a_subject_does_not_apply(ship):
    """deploy/policy.cfg P11 `if_subject = 1` (kim-policy(5): "the rule applies
    only when a subject pseudonym travels"): a HANDOVER_OFFER to ki without a
    subject is not P11's; no other rule selects jc -> ki, so rule default."""
    refused(ship.offer("jc.rheine", "ki.steinfurt", SGBX69, with_subject=False),
            "POLICY_DENY", "default", ship.rules)
    refused(ship.offer("jc.rheine", "ki.steinfurt", SGBX69, with_subject=True),
            "POLICY_DENY", "P11", ship.rules)


def test_shipped_P11_selects_a_forward_carrying_a_subject(ship):
    """deploy/policy.cfg P11 (if_subject = 1) and §9.2 FORWARD (checked like a
    REFERRAL, against `org`): a FORWARD to ki whose header carries `subject`."""
    got = ship.referred("jc.rheine", "soz.rheine")
    fwd = {"type": "FORWARD", "recipient": "jc.rheine", "referral_id": got["referral_id"],
           "org": "ki.steinfurt", "purpose": "benefits", "subject": got["subject"],
           "legal_basis": statute(SGBX69)}
    r = refused(ship.send("soz.rheine", fwd), "POLICY_DENY", "P11", ship.rules, path=False)
    assert r.path == "hdr.org", r


def test_shipped_P3_handover_offer_ja_to_ja(ship):
    """deploy/policy.cfg P3 (types HANDOVER_OFFER, REFERRAL; § 86c SGB VIII);
    §9.3: HANDOVER_OFFER is a checked transfer, its `rule` delivered."""
    allowed(ship.offer("ja.rheine", "ja.coesfeld", "SGB VIII §86c(2)"), "P3")


def test_shipped_P3_does_not_select_a_forward_which_falls_to_P1(ship):
    """deploy/policy.cfg P3 `types = "HANDOVER_OFFER, REFERRAL"` (kim-policy(5)
    types); a FORWARD ja -> ja is checked like a REFERRAL (§9.2 FORWARD) against
    `org`, and the next rule selecting it is P1 (citations SGB X §69(1)1 only)."""
    got = ship.referred("jc.rheine", "ja.rheine")
    fwd = {"type": "FORWARD", "recipient": "jc.rheine", "referral_id": got["referral_id"],
           "org": "ja.coesfeld", "purpose": "youth_welfare",
           "legal_basis": statute("SGB VIII §86c(2)")}
    refused(ship.send("ja.rheine", fwd), "NO_BASIS", "P1", ship.rules)
    fwd = dict(fwd, msg_id=uid("m"), legal_basis=statute(SGBX69))
    allowed(ship.send("ja.rheine", fwd), "P1")


def test_shipped_refusal_text_has_the_form_of_the_protocol_example(ship):
    """§9.3 example, word for word but the consent id: "rule P8 (kim,kimw -> *,
    consent): consent C-17 does not cover purpose housing [§ 67b SGB X; Art. 6
    Abs. 1 lit. a, Art. 9 Abs. 2 lit. a DSGVO]" (CONSENT_SCOPE at consent_id)."""
    n = ship
    case_id, cid, subject = n.grant("kim.rheine", ["jc.rheine"], ["employment"])
    hdr = {"type": "REFERRAL", "recipient": "jc.rheine", "referral_id": uid("R"),
           "case_id": case_id, "subject": subject, "purpose": "housing",
           "legal_basis": consent(cid)}
    kind, r = n.send("kim.rheine", hdr)
    assert kind == "reject", r
    assert (r.code, r.reason, r.path) == (504, "CONSENT_SCOPE", CONSENT_PATH)
    assert r.text == ("rule P8 (kim,kimw -> *, consent): consent %s does not cover purpose "
                      "housing [§ 67b SGB X; Art. 6 Abs. 1 lit. a, Art. 9 Abs. 2 lit. a DSGVO]"
                      % cid), r.text


def test_shipped_P1_rejection_names_its_direction_and_basis(ship):
    """§9.3: the text "names the rule, its direction, what is missing and the
    law", in the form of its example: rule, (from -> to, basis), ..., [law]."""
    _, r = ship.refer("jc.rheine", "soz.rheine", "SGB X §70(1)1")
    assert r.text.startswith("rule P1 (jc,aa,ja,soz,alb -> jc,aa,ja,soz,alb, "), r.text
    assert r.text.endswith("[§ 69 Abs. 1 Nr. 1 SGB X]"), r.text


#   --- what is and is not a checked transfer (§9.3) ----------------------------------

def test_a_clients_rule_is_discarded_and_the_deciding_rule_delivered(ship):
    """§9 `rule`: "set by the broker on a transfer the policy checked and
    allowed ... a client's value is discarded"; §9 "a client's `rule` is
    removed, never trusted"."""
    got = ship.referred("jc.rheine", "soz.rheine", rule="P9")
    assert got["rule"] == "P1"
    accept = {"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": got["referral_id"],
              "rule": "P9"}
    kind, a = ship.send("soz.rheine", accept)
    assert kind == "allow", a
    assert a.get("rule") != "P9", a


def test_answers_inside_a_referral_are_not_checked(ship):
    """§9.3 "Answers inside a referral (ACCEPT, ... INFO_RESPONSE) go back only
    to the organisation that sent the checked REFERRAL and inherit its basis":
    aba -> mbe has no rule (it would be rule default), yet aba's answers to
    mbe's REFERRAL (allowed by P6) pass, a payload too."""
    kind, got = ship.refer("mbe.rheine", "aba.rheine", "consent", "residence")
    assert kind == "allow", got
    rid = got["referral_id"]
    for hdr, payload in (
            ({"type": "ACCEPT", "recipient": "mbe.rheine", "referral_id": rid}, b""),
            ({"type": "INFO_REQUEST", "recipient": "mbe.rheine", "referral_id": rid}, b""),
            ({"type": "INFO_RESPONSE", "recipient": "mbe.rheine", "referral_id": rid},
             b"what the immigration office answers"),
            ({"type": "STATUS", "recipient": "mbe.rheine", "referral_id": rid,
              "code": "in_progress"}, b""),
            ({"type": "OUTCOME", "recipient": "mbe.rheine", "referral_id": rid,
              "code": "completed"}, b"")):
        kind, a = ship.send("aba.rheine", hdr, payload)
        assert kind == "allow", (hdr["type"], a)


#   --- §8.3: the order of checks; policy comes late -----------------------------------

def _to_ki(**extra):
    """A REFERRAL jc -> ki that P11 denies (§9.3) were it checked."""
    hdr = {"type": "REFERRAL", "msg_id": uid("m"), "recipient": "ki.steinfurt",
           "referral_id": uid("R"), "case_id": uid("C"), "subject": uid("p"),
           "purpose": "benefits", "legal_basis": statute(SGBX69)}
    hdr.update(extra)
    return hdr


def _rejected(client, hdr):
    with pytest.raises(kim.Rejected) as info:
        client.send(hdr)
    assert info.value.msg_id == hdr["msg_id"], info.value
    return info.value


def test_order_role_before_policy(ship):
    """§8.3 check 2 (FORBIDDEN: only agencies send) before 11 (policy)."""
    assert _rejected(ship.client("dsb.steinfurt"), _to_ki()).code == FORBIDDEN


def test_order_freshness_and_sender_before_policy(ship):
    """§8.3 checks 4 (STALE) and 6 (SENDER_MISMATCH) before 11 (policy)."""
    jc = ship.client("jc.rheine")
    assert _rejected(jc, _to_ki(created_at=1000)).code == STALE
    assert _rejected(jc, _to_ki(sender="soz.rheine")).code == SENDER_MISMATCH


def test_order_unknown_recipient_before_policy(ship):
    """§8.3 check 8 (UNKNOWN_RECIPIENT) before 11: ki.nowhere is not registered."""
    r = _rejected(ship.client("jc.rheine"), _to_ki(recipient="ki.nowhere"))
    assert r.code == UNKNOWN_RECIPIENT, r


def test_order_life_cycle_before_policy(ship):
    """§8.3 check 11: "the referral life cycle and cases (4xx), then policy":
    a REFERRAL that reuses a known referral_id is REFERRAL_EXISTS though P11
    would deny it."""
    got = ship.referred("jc.rheine", "soz.rheine")
    r = _rejected(ship.client("jc.rheine"), _to_ki(referral_id=got["referral_id"]))
    assert r.code == REFERRAL_EXISTS, r


def test_order_a_retry_is_a_duplicate_before_policy(ship):
    """§8.3 check 7: a msg_id used before is answered RECEIPT dup with the
    original's seq "whatever the new header says ... the checks below do not run"."""
    jc = ship.client("jc.rheine")
    hdr = _to_ki(recipient="soz.rheine")
    first = jc.send(hdr)
    again = jc.send(_to_ki(msg_id=hdr["msg_id"]))
    assert again.get("dup") is True and again["seq"] == first["seq"], again


def test_a_policy_refusal_leaves_no_referral_and_does_not_use_up_the_msg_id(ship):
    """§8.3: "A REJECTed message leaves nothing in the log but the policy
    decision; its msg_id is not used up"; §9.3: no MESSAGE record, so no
    referral and no delivery."""
    jc = ship.client("jc.rheine")
    hdr = _to_ki()
    r = _rejected(jc, hdr)
    assert r.code == CODES["POLICY_DENY"], r
    assert jc.referral_query(referral_id=hdr["referral_id"]) == []
    again = jc.send(dict(hdr, recipient="soz.rheine"))
    assert not again.get("dup"), again
    ki = ship.box("ki.steinfurt")
    ki.settle()
    assert not ki.where(msg_id=hdr["msg_id"])


#   === a policy of this file's own: matching and precedence (kim-policy(5)) ===========

def _allow(frm, to, law, basis="statute", citations=SGBX69, **keys):
    rule = {"law": law, "from": frm, "to": to, "decision": "allow", "basis": basis}
    if citations and "statute" in basis:
        rule["citations"] = citations
    rule.update(keys)
    return rule


def _deny(frm, to, law, why, **keys):
    rule = {"law": law, "why": why, "from": frm, "to": to}
    rule.update(keys)
    rule["decision"] = "deny"
    return rule


MATCHING = [
    # precedence: the first rule whose selectors all match decides
    ("R_first_deny", _deny("sch", "bsk", "Law first-deny", "the first rule denies")),
    ("R_second_allow", _allow("sch", "bsk", "Law second-allow")),
    ("R_first_allow", _allow("bsk", "sch", "Law first-allow")),
    ("R_later_deny", _deny("bsk", "sch", "Law later-deny", "never reached")),
    ("R_strict", _allow("ebb", "bsk", "Law strict", basis="consent")),
    ("R_lenient", _allow("ebb", "bsk", "Law lenient")),
    # purposes / unless_purposes
    ("R_purposes", _allow("jc", "ikt", "Law purposes", citations="IntV §8(1)",
                          purposes="language_course, employment")),
    ("R_unless", _deny("jc", "bsk", "Law unless", "jc to bsk for housing only",
                       unless_purposes="housing")),
    ("R_unless_allow", _allow("jc", "bsk", "Law unless-allow")),
    # if_categories; categories permitted (default none)
    ("R_if_cat", _deny("soz", "ikt", "Law if-cat", "no art9 or stgb203 to ikt",
                       if_categories="art9, stgb203")),
    ("R_cat_allow", _allow("soz", "ikt", "Law cat-allow",
                           categories="art9, stgb203, residence_status")),
    ("R_no_cats", _allow("aa", "ikt", "Law no-cats")),
    ("R_some_cats", _allow("aa", "bsk", "Law some-cats", categories="residence_status")),
    # if_subject, types, from_public
    ("R_if_subject", _deny("ja", "ebb", "Law if-subject", "ebb gets no subject", if_subject=1)),
    ("R_no_subject", _allow("ja", "ebb", "Law no-subject")),
    ("R_types", _allow("alb", "ebb", "Law types", types="HANDOVER_OFFER")),
    ("R_private", _allow("jmd", "ebb", "Law private", from_public=0)),
    ("R_public", _deny("jmd", "ebb", "Law public", "a public jmd may not", from_public=1)),
    # wildcards and lists
    ("R_wild_to", _allow("mbe", "*", "Law wild-to")),
    ("R_list", _allow("aa, alb", "kim, ki", "Law list")),
    # basis kinds, categories under consent, citations, givers
    ("R_basis_statute", _allow("kim", "ebb", "Law basis-statute")),
    ("R_basis_consent", _allow("kim", "ikt", "Law basis-consent", basis="consent",
                               categories="art9, residence_status")),
    ("R_basis_both", _allow("kim", "bsk", "Law basis-both", basis="statute, consent")),
    ("R_citations", _allow("ikt", "jc", "Law citations",
                           citations="SGB X §71(2), § 87 Abs. 1 AufenthG")),
    ("R_art", _allow("ikt", "soz", "Law art", citations="Art. 6 Abs. 1 lit. e DSGVO")),
    ("R_givers", _allow("kim", "kimw", "Law givers", basis="consent",
                        givers="subject, guardian")),
    # FORWARD: checked against `org`
    ("R_fwd_in", _allow("jc", "soz", "Law fwd-in")),
    ("R_fwd_out", _allow("soz", "alb", "Law fwd-out")),
    ("R_wild_from", _allow("*", "kimw", "Law wild-from")),
]
NET_ORGS = {o: "agency" for o in (
    "jc.rheine", "soz.rheine", "aa.rheine", "ja.rheine", "alb.rheine", "ebb.rheine",
    "bsk.rheine", "ikt.rheine", "sch.rheine", "mbe.rheine", "kim.rheine", "kimw.rheine",
    "ki.rheine", "jmd.rheine", "jmd.emsdetten", "beratung.rheine", "mbe.rheine.caritas",
    "jc.sonder")}
NET_ORGS["dsb.steinfurt"] = "auditor"
#   kim.cfg(5) orgs/type: "Agency type (defaults to the id's first part)"
NET_TYPES = {"beratung.rheine": "mbe", "jc.sonder": "sch"}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = write(str(tmp_path_factory.mktemp("policy") / "matching.cfg"), policy_text(MATCHING))
    b = PolicyBroker(path, NET_ORGS, private=("jmd.rheine",), types=NET_TYPES).start()
    n = Net(b, dict(MATCHING))
    yield n
    n.close()
    b.finish()


#   (id, sender, to, basis, purpose, categories, expected, rule)
MATCHING_CASES = [
    # kim-policy(5) "the first rule whose selectors all match decides"
    ("deny-before-allow", "sch.rheine", "bsk.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "R_first_deny"),
    ("allow-before-deny", "bsk.rheine", "sch.rheine", SGBX69, "benefits", (),
     "allow", "R_first_allow"),
    ("first-match-decides-even-when-its-basis-fails", "ebb.rheine", "bsk.rheine", SGBX69,
     "benefits", (), "NO_BASIS", "R_strict"),
    # purposes: "The rule applies only to ... these purpose codes"
    ("purposes-listed", "jc.rheine", "ikt.rheine", "IntV §8(1)", "language_course", (),
     "allow", "R_purposes"),
    ("purposes-second-of-list", "jc.rheine", "ikt.rheine", "IntV §8(1)", "employment", (),
     "allow", "R_purposes"),
    ("purposes-not-listed-default", "jc.rheine", "ikt.rheine", "IntV §8(1)", "housing", (),
     "POLICY_DENY", "default"),
    # unless_purposes: "... or not to, these purpose codes"
    ("unless-purposes-applies", "jc.rheine", "bsk.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "R_unless"),
    ("unless-purposes-skipped", "jc.rheine", "bsk.rheine", SGBX69, "housing", (),
     "allow", "R_unless_allow"),
    # if_categories: "applies only when the message carries one of these"
    ("if-categories-one-carried", "soz.rheine", "ikt.rheine", SGBX69, "benefits", ("stgb203",),
     "POLICY_DENY", "R_if_cat"),
    ("if-categories-one-of-several", "soz.rheine", "ikt.rheine", SGBX69, "benefits",
     ("art9", "residence_status"), "POLICY_DENY", "R_if_cat"),
    ("if-categories-none-carried", "soz.rheine", "ikt.rheine", SGBX69, "benefits",
     ("residence_status",), "allow", "R_cat_allow"),
    ("if-categories-no-categories", "soz.rheine", "ikt.rheine", SGBX69, "benefits", (),
     "allow", "R_cat_allow"),
    # categories: "the data categories the rule permits (default none)"; §9.3 -> POLICY_DENY
    ("categories-default-none-passes-without", "aa.rheine", "ikt.rheine", SGBX69, "benefits",
     (), "allow", "R_no_cats"),
    ("categories-default-none-refuses-contact", "aa.rheine", "ikt.rheine", SGBX69, "benefits",
     ("contact",), "POLICY_DENY", "R_no_cats"),
    ("categories-permitted", "aa.rheine", "bsk.rheine", SGBX69, "benefits",
     ("residence_status",), "allow", "R_some_cats"),
    ("categories-one-not-permitted", "aa.rheine", "bsk.rheine", SGBX69, "benefits",
     ("art9", "residence_status"), "POLICY_DENY", "R_some_cats"),
    # if_subject: a REFERRAL always carries a subject (§9.1)
    ("if-subject-referral", "ja.rheine", "ebb.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "R_if_subject"),
    # types: a REFERRAL is not a HANDOVER_OFFER
    ("types-not-listed-default", "alb.rheine", "ebb.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "default"),
    # from_public: "1: the sender must be a public body; 0: a private carrier"
    ("from-public-0-private", "jmd.rheine", "ebb.rheine", SGBX69, "benefits", (),
     "allow", "R_private"),
    ("from-public-1-public", "jmd.emsdetten", "ebb.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "R_public"),
    # "*" means any; lists are comma-separated
    ("wildcard-to-ikt", "mbe.rheine", "ikt.rheine", SGBX69, "benefits", (), "allow", "R_wild_to"),
    ("wildcard-to-sch", "mbe.rheine", "sch.rheine", SGBX69, "benefits", (), "allow", "R_wild_to"),
    ("wildcard-from-ikt", "ikt.rheine", "kimw.rheine", SGBX69, "benefits", (),
     "allow", "R_wild_from"),
    ("wildcard-from-sch", "sch.rheine", "kimw.rheine", SGBX69, "benefits", (),
     "allow", "R_wild_from"),
    ("list-aa-to-ki", "aa.rheine", "ki.rheine", SGBX69, "benefits", (), "allow", "R_list"),
    ("list-alb-to-kim", "alb.rheine", "kim.rheine", SGBX69, "benefits", (), "allow", "R_list"),
    ("list-jc-not-in-from-default", "jc.rheine", "ki.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "default"),
    # basis: "statute, consent, or 'statute, consent'"; §9.3 wrong kind -> NO_BASIS
    ("basis-statute-refuses-consent", "kim.rheine", "ebb.rheine", "consent", "benefits", (),
     "NO_BASIS", "R_basis_statute"),
    ("basis-statute-accepts-statute", "kim.rheine", "ebb.rheine", SGBX69, "benefits", (),
     "allow", "R_basis_statute"),
    ("basis-consent-refuses-statute", "kim.rheine", "ikt.rheine", SGBX69, "benefits", (),
     "NO_BASIS", "R_basis_consent"),
    ("basis-consent-accepts-consent", "kim.rheine", "ikt.rheine", "consent", "benefits",
     ("residence_status",), "allow", "R_basis_consent"),
    ("basis-both-statute", "kim.rheine", "bsk.rheine", SGBX69, "benefits", (),
     "allow", "R_basis_both"),
    ("basis-both-consent", "kim.rheine", "bsk.rheine", "consent", "benefits", (),
     "allow", "R_basis_both"),
    # citations (§9.3, §9.5): the provision listed or one inside it, any spelling
    ("citation-inside-listed", "ikt.rheine", "jc.rheine", "SGB X §71(2)4", "benefits", (),
     "allow", "R_citations"),
    ("citation-inside-long-spelling", "ikt.rheine", "jc.rheine",
     "§ 71 Abs. 2 Satz 1 Nr. 4 SGB X", "benefits", (), "allow", "R_citations"),
    ("citation-exact-second-of-list-other-spelling", "ikt.rheine", "jc.rheine", "AufenthG §87(1)",
     "benefits", (), "allow", "R_citations"),
    ("citation-inside-second-of-list", "ikt.rheine", "jc.rheine", "AufenthG §87(1)2",
     "benefits", (), "allow", "R_citations"),
    ("citation-case-and-dots-do-not-matter", "ikt.rheine", "jc.rheine",
     "sgb x § 71 abs 2 satz 1 nr 4", "benefits", (), "allow", "R_citations"),
    ("citation-no-break-spaces", "ikt.rheine", "jc.rheine", "\u00a771\u00a0Abs.\u00a02 SGB X",
     "benefits", (), "allow", "R_citations"),
    ("citation-other-paragraph", "ikt.rheine", "jc.rheine", "SGB X §71(3)", "benefits", (),
     "NO_BASIS", "R_citations"),
    ("citation-unreadable", "ikt.rheine", "jc.rheine", "§§ 71 SGB X", "benefits", (),
     "NO_BASIS", "R_citations"),
    ("citation-other-law", "ikt.rheine", "jc.rheine", "SGB XII §71(2)1", "benefits", (),
     "NO_BASIS", "R_citations"),
    # §9.5 "Art." provisions, their long keywords, the law before or after
    ("citation-article-compact-law-first", "ikt.rheine", "soz.rheine", "DSGVO Art. 6(1) lit. e",
     "benefits", (), "allow", "R_art"),
    ("citation-article-long-keywords", "ikt.rheine", "soz.rheine",
     "Artikel 6 Absatz 1 Buchstabe e DSGVO", "benefits", (), "allow", "R_art"),
    ("citation-article-other-letter", "ikt.rheine", "soz.rheine", "Art. 6 Abs. 1 lit. a DSGVO",
     "benefits", (), "NO_BASIS", "R_art"),
    ("citation-article-broader", "ikt.rheine", "soz.rheine", "Art. 6 DSGVO",
     "benefits", (), "NO_BASIS", "R_art"),
    # from/to are agency types (kim-policy(5)), the registry's `type` (kim.cfg(5))
    ("type-from-registry-not-id", "beratung.rheine", "ikt.rheine", SGBX69, "benefits", (),
     "allow", "R_wild_to"),
    ("type-default-first-part-of-three", "mbe.rheine.caritas", "ikt.rheine", SGBX69, "benefits",
     (), "allow", "R_wild_to"),
    ("type-overrides-id-prefix", "jc.sonder", "bsk.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "R_first_deny"),
    ("recipient-type-from-registry", "alb.rheine", "jc.sonder", SGBX69, "benefits", (),
     "POLICY_DENY", "default"),
    # no rule: "No rule matching means deny (rule "default")"
    ("no-rule-default", "ebb.rheine", "jc.rheine", SGBX69, "benefits", (),
     "POLICY_DENY", "default"),
]


@pytest.mark.parametrize("sender,to,basis,purpose,categories,expected,rule",
                         [pytest.param(*c[1:], id=c[0]) for c in MATCHING_CASES])
def test_rule_matching(net, sender, to, basis, purpose, categories, expected, rule):
    """kim-policy(5) DESCRIPTION and RULE KEYS; §9.3 "How a transfer is decided"."""
    outcome = net.refer(sender, to, basis, purpose, categories)
    if expected == "allow":
        allowed(outcome, rule)
    else:
        refused(outcome, expected, rule, net.rules)


def test_citation_broader_than_the_rules_is_no_basis_naming_those_inside(net):
    """§9.3/§9.5: "SGB X §71" is broader than the rule's "SGB X §71(2)":
    NO_BASIS, "its text naming the rule's citations inside it"."""
    r = refused(net.refer("ikt.rheine", "jc.rheine", "SGB X §71"), "NO_BASIS", "R_citations",
                net.rules)
    assert "SGB X §71(2)" in r.text, r.text
    assert "AufenthG" not in r.text, r.text       # not inside § 71 SGB X


def test_if_subject_and_types_select_handover_offers(net):
    """kim-policy(5) if_subject ("only when a subject pseudonym travels") and
    types ("Message types the rule applies to (default: all checked types)")."""
    refused(net.offer("ja.rheine", "ebb.rheine", SGBX69, with_subject=True),
            "POLICY_DENY", "R_if_subject", net.rules)
    allowed(net.offer("ja.rheine", "ebb.rheine", SGBX69, with_subject=False), "R_no_subject")
    allowed(net.offer("alb.rheine", "ebb.rheine", SGBX69), "R_types")


def test_purposes_and_unless_purposes_on_a_transfer_without_purpose(net):
    """kim-policy(5) purposes: "The rule applies only to, or not to, these
    purpose codes": a HANDOVER_OFFER naming no purpose is not one of R_purposes'
    (jc -> ikt: rule default) and is not exempt from R_unless (jc -> bsk)."""
    refused(net.offer("jc.rheine", "ikt.rheine", "IntV §8(1)"), "POLICY_DENY", "default",
            net.rules)
    allowed(net.offer("jc.rheine", "ikt.rheine", "IntV §8(1)", purpose="employment"),
            "R_purposes")
    refused(net.offer("jc.rheine", "bsk.rheine", SGBX69), "POLICY_DENY", "R_unless", net.rules)
    allowed(net.offer("jc.rheine", "bsk.rheine", SGBX69, purpose="housing"), "R_unless_allow")


def test_a_forward_is_checked_against_org_not_recipient(net):
    """§9.2 FORWARD: "The transfer to `org` is checked like a REFERRAL"; §9.3
    FORWARD "(the data go to `org`)". soz -> alb has a rule, soz -> jc (the
    FORWARD's recipient) and soz -> aa none."""
    rid = net.referred("jc.rheine", "soz.rheine")["referral_id"]
    fwd = {"type": "FORWARD", "recipient": "jc.rheine", "referral_id": rid, "org": "aa.rheine",
           "purpose": "benefits", "legal_basis": statute(SGBX69)}
    r = refused(net.send("soz.rheine", fwd), "POLICY_DENY", "default", net.rules, path=False)
    assert r.path == "hdr.org", r                   # §9.3: the refused party, `org`
    assert net.client("jc.rheine").referral_query(referral_id=fwd["msg_id"]) == []
    fwd = dict(fwd, msg_id=uid("m"), org="alb.rheine")
    allowed(net.send("soz.rheine", fwd), "R_fwd_out")


def test_answers_pass_where_no_rule_selects_the_way_back(net):
    """§9.3: answers are not checked; soz -> jc has no rule in this policy."""
    rid = net.referred("jc.rheine", "soz.rheine")["referral_id"]
    for hdr, payload in (
            ({"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": rid}, b""),
            ({"type": "INFO_RESPONSE", "recipient": "jc.rheine", "referral_id": rid},
             b"answer with data"),
            ({"type": "OUTCOME", "recipient": "jc.rheine", "referral_id": rid,
              "code": "completed"}, b"")):
        kind, got = net.send("soz.rheine", hdr, payload)
        assert kind == "allow", (hdr["type"], got)


def test_categories_under_consent_need_the_rule_and_the_consent(net):
    """kim-policy(5) categories: "the data categories the rule permits ... Under
    consent the consent must cover them too; art9 explicitly"; §9.3: a category
    the rule does not permit is POLICY_DENY, one the consent does not cover
    CONSENT_SCOPE."""
    n = net
    # the consent covers stgb203, the rule (art9, residence_status) does not
    case_id, cid, subject = n.grant("kim.rheine", ["ikt.rheine"], ["benefits"], ["stgb203"])
    hdr = {"type": "REFERRAL", "recipient": "ikt.rheine", "referral_id": uid("R"),
           "case_id": case_id, "subject": subject, "purpose": "benefits",
           "legal_basis": consent(cid), "categories": ["stgb203"]}
    refused(n.send("kim.rheine", hdr), "POLICY_DENY", "R_basis_consent", n.rules)
    # the rule permits art9, the consent (residence_status only) does not cover it
    case_id, cid, subject = n.grant("kim.rheine", ["ikt.rheine"], ["benefits"],
                                    ["residence_status"])
    hdr = dict(hdr, msg_id=uid("m"), referral_id=uid("R"), case_id=case_id, subject=subject,
               legal_basis=consent(cid), categories=["art9", "residence_status"])
    refused(n.send("kim.rheine", hdr), "CONSENT_SCOPE", "R_basis_consent", n.rules)


def test_a_handover_offer_under_consent_without_purpose_is_consent_scope(net):
    """§9.3: "a transfer under one that names no purpose, a HANDOVER_OFFER too,
    is CONSENT_SCOPE as well"."""
    refused(net.offer("kim.rheine", "ikt.rheine", "consent"), "CONSENT_SCOPE",
            "R_basis_consent", net.rules)


@pytest.mark.parametrize("giver,passes", [("guardian", True), ("subject", True),
                                          ("entruster", False)])
def test_givers(net, giver, passes):
    """§9.3 Consents: "A rule MAY require givers (`givers` in the policy): a
    consent whose giver is not among them does not cover the transfer
    (CONSENT_SCOPE, ...)"; deploy/policy.cfg header: givers "for consent: who
    must have given it"."""
    outcome = net.refer("kim.rheine", "kimw.rheine", "consent", giver=giver)
    if passes:
        allowed(outcome, "R_givers")
    else:
        r = refused(outcome, "CONSENT_SCOPE", "R_givers", net.rules)
        assert "given by entruster" in r.text, r.text


def test_every_decision_is_logged_with_its_rule(net):
    """kim-policy(5): "Every decision, denials included, is logged with the rule
    that decided it"; §9.3 "Every decision is in the log": an allowed transfer's
    MESSAGE record carries `rule`; a denied one leaves no MESSAGE record but a
    DECISION record (kind 3) with decision, code, rule, law, reason (the REJECT
    text) and the header's metadata."""
    n = net
    deny = {"type": "REFERRAL", "msg_id": uid("m"), "recipient": "bsk.rheine",
            "referral_id": uid("R"), "case_id": uid("C"), "subject": uid("p"),
            "purpose": "benefits", "legal_basis": statute(SGBX69),
            "categories": ["residence_status"]}
    r1 = refused(n.send("sch.rheine", deny), "POLICY_DENY", "R_first_deny", n.rules)
    no_basis = dict(deny, msg_id=uid("m"), referral_id=uid("R"))
    del no_basis["categories"]
    r2 = refused(n.send("ebb.rheine", no_basis), "NO_BASIS", "R_strict", n.rules)
    ok = n.referred("bsk.rheine", "sch.rheine")
    case_id, cid, subject = n.grant("kim.rheine", ["kimw.rheine"], ["benefits"],
                                    giver="entruster")
    scope = {"type": "REFERRAL", "msg_id": uid("m"), "recipient": "kimw.rheine",
             "referral_id": uid("R"), "case_id": case_id, "subject": subject,
             "purpose": "benefits", "legal_basis": consent(cid)}
    r3 = refused(n.send("kim.rheine", scope), "CONSENT_SCOPE", "R_givers", n.rules)
    log = records(n.client("dsb.steinfurt"))
    for hdr, r, sender, rule, law in (
            (deny, r1, "sch.rheine", "R_first_deny", "Law first-deny"),
            (no_basis, r2, "ebb.rheine", "R_strict", "Law strict")):
        assert not [b for k, b in log if k == MESSAGE and b.get("msg_id") == hdr["msg_id"]]
        (d,) = [b for k, b in log if k == DECISION and b.get("msg_id") == hdr["msg_id"]]
        assert (d["decision"], d["code"], d["rule"], d["law"], d["reason"]) == \
            ("deny", r.reason, rule, law, r.text), d
        assert (d["type"], d["sender"], d["recipient"], d["referral_id"], d["case_id"],
                d["subject"], d["purpose"], d["basis"], d["citation"]) == \
            ("REFERRAL", sender, hdr["recipient"], hdr["referral_id"], hdr["case_id"],
             hdr["subject"], "benefits", "statute", SGBX69), d
    (d,) = [b for k, b in log if k == DECISION and b.get("msg_id") == deny["msg_id"]]
    assert list(d["categories"]) == ["residence_status"], d
    (d,) = [b for k, b in log if k == DECISION and b.get("msg_id") == scope["msg_id"]]
    assert (d["decision"], d["code"], d["rule"], d["law"], d["reason"], d["basis"],
            d["consent_id"], d["sender"]) == ("deny", "CONSENT_SCOPE", "R_givers", "Law givers",
                                              r3.text, "consent", cid, "kim.rheine"), d
    (m,) = [b for k, b in log if k == MESSAGE and b.get("msg_id") == ok["msg_id"]]
    assert m["rule"] == "R_first_allow", m


#   === the file: where it is, what without it (kim.cfg(5) SECTION policy) =============

ONE_RULE = [("R_only", _allow("jc", "soz", "Law only"))]


def test_without_a_policy_file_every_transfer_is_denied(tmp_path):
    """kim.cfg(5) policy/file "= policy.cfg ... Without it every transfer is
    denied"; §9.3 "without a policy file every transfer is denied" (rule
    default). Types that are not transfers (CONSENT_GRANT) still pass."""
    b = PolicyBroker(None, {"jc.rheine": "agency", "soz.rheine": "agency"},
                     policy_file=None, folder=str(tmp_path)).start()
    n = Net(b, {})
    try:
        refused(n.refer("jc.rheine", "soz.rheine", SGBX69), "POLICY_DENY", "default", {})
        n.grant("jc.rheine", ["soz.rheine"])
    finally:
        n.close()
        b.finish()


def test_a_relative_policy_file_is_read_from_the_configs_folder(tmp_path):
    """kim.cfg(5) policy/file: "relative to this file's folder" (the broker runs
    with another working directory)."""
    write(str(tmp_path / "own-policy.cfg"), policy_text(ONE_RULE))
    b = PolicyBroker(None, {"jc.rheine": "agency", "soz.rheine": "agency"},
                     policy_file="own-policy.cfg", folder=str(tmp_path))
    assert os.getcwd() != str(tmp_path)
    b.start()
    n = Net(b, dict(ONE_RULE))
    try:
        allowed(n.refer("jc.rheine", "soz.rheine", SGBX69), "R_only")
    finally:
        n.close()
        b.finish()


MAN_PAGE = os.path.join(os.path.dirname(SHIPPED_POLICY), "..", "docs", "man", "kim-policy.5.scd")


def _format_example():
    """The policy in kim-policy(5) FORMAT, as the page shows it (scdoc: a tab
    opens the literal block, "++" ends each line of it)."""
    with open(MAN_PAGE, encoding="utf-8") as f:
        page = f.read()
    block = page.split("# FORMAT", 1)[1].split("\n# ", 1)[0].strip("\n")
    lines = [line[1:] if line.startswith("\t") else line for line in block.splitlines()]
    lines = [line[:-2] if line.endswith("++") else line for line in lines if line.strip()]
    assert lines[0] == "policy" and "rules" in lines, lines
    return "\n".join(lines) + "\n"


def test_the_format_example_of_the_man_page_loads_and_decides(tmp_path):
    """kim-policy(5) FORMAT: the example is a policy file; its rule P1 allows
    jc -> soz on "SGB X §69(1)1" (and `types` defaults to "all checked types",
    RULE KEYS, so no `checks` key is needed for it)."""
    path = write(str(tmp_path / "example.cfg"), _format_example())
    b = PolicyBroker(path, {"jc.rheine": "agency", "soz.rheine": "agency"},
                     folder=str(tmp_path / "b"))
    rc, out = b.check()
    assert rc == 0, out
    b.start()
    n = Net(b, {})
    try:
        allowed(n.refer("jc.rheine", "soz.rheine", SGBX69), "P1")
    finally:
        n.close()
        b.finish()


@pytest.mark.skipif(kim_cli() is None, reason="no kim tool (KIM_CLI_BIN, or beside the broker)")
def test_the_format_example_of_the_man_page_passes_lint(tmp_path):
    """kim-policy(5) FORMAT and "kim policy lint validates one"."""
    path = write(str(tmp_path / "example.cfg"), _format_example())
    r = subprocess.run([kim_cli(), "policy", "lint", path], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr


def test_zpl_comment_after_a_rule_name(tmp_path):
    """kim-policy(5): ZPL, czmq's config format; a comment may follow a name."""
    text = policy_text([("R_x", _deny("jc", "soz", "Law x", "commented"))])
    text = text.replace("\n    R_x\n", "\n    R_x          # a rule with a comment\n")
    text = text.replace("\nrules\n", "\nrules    # the rules\n")
    path = write(str(tmp_path / "comments.cfg"), text)
    b = PolicyBroker(path, {"jc.rheine": "agency", "soz.rheine": "agency"},
                     folder=str(tmp_path / "b"))
    rc, out = b.check()
    assert rc == 0, out
    b.start()
    rules = {"R_x": {"law": "Law x", "why": "commented", "decision": "deny"}}
    n = Net(b, rules)
    try:
        refused(n.refer("jc.rheine", "soz.rheine", SGBX69), "POLICY_DENY", "R_x", rules)
    finally:
        n.close()
        b.finish()


def test_zpl_comments_quotes_and_a_long_law_in_a_refusal(tmp_path):
    """kim-policy(5): the file is ZPL; kim.cfg(5): "values with spaces or commas
    in double quotes, comments after '#'" (a '#' inside quotes is text). §8.5:
    a REJECT `text` is at most 256 bytes of valid UTF-8 (§6 rule 4), also when
    the rule's law and why are long; §9.3: the DECISION's `reason` is that text."""
    long_law = "Gesetz über die Übermittlung " * 5             # 154 bytes, umlauts
    text = "\n".join([
        "#   comments and quotes", "policy", "    version = 1    # the format",
        '    checks = "%s"' % CHECKS, "rules",
        "    R_hash", '        law = "Law #7"', '        why = "why # not"',
        "        from = jc   # sender", "        to = soz", "        decision = deny   # trailing",
        "    R_long", '        law = "%s"' % long_law.strip(), '        why = "%s"' % ("Ä" * 100),
        "        from = jc", "        to = aa", "        decision = deny", ""])
    assert len(long_law.strip().encode()) + 2 * 100 > 256
    path = write(str(tmp_path / "zpl.cfg"), text)
    orgs = {"jc.rheine": "agency", "soz.rheine": "agency", "aa.rheine": "agency",
            "dsb.steinfurt": "auditor"}
    b = PolicyBroker(path, orgs, folder=str(tmp_path / "b")).start()
    rules = {"R_hash": {"law": "Law #7", "why": "why # not", "decision": "deny"}}
    n = Net(b, rules)
    try:
        refused(n.refer("jc.rheine", "soz.rheine", SGBX69), "POLICY_DENY", "R_hash", rules)
        hdr = {"type": "REFERRAL", "msg_id": uid("m"), "recipient": "aa.rheine",
               "referral_id": uid("R"), "case_id": uid("C"), "subject": uid("p"),
               "purpose": "benefits", "legal_basis": statute(SGBX69)}
        kind, r = n.send("jc.rheine", hdr)
        assert kind == "reject" and r.code == CODES["POLICY_DENY"], r
        assert r.text.startswith("rule R_long ("), r.text
        assert 0 < len(r.text.encode("utf-8")) <= 256, len(r.text.encode("utf-8"))
        (d,) = [b for k, b in records(n.client("dsb.steinfurt"))
                if k == DECISION and b.get("msg_id") == hdr["msg_id"]]
        assert d["rule"] == "R_long" and d["reason"] == r.text, d
    finally:
        n.close()
        b.finish()


def test_the_shipped_policy_is_valid(tmp_path):
    """kim(1) `kim policy lint`, kim-broker(8) --check "0 when valid"."""
    b = PolicyBroker(SHIPPED_POLICY, {"jc.rheine": "agency"}, folder=str(tmp_path))
    rc, out = b.check()
    assert rc == 0, out
    if kim_cli():
        r = subprocess.run([kim_cli(), "policy", "lint", SHIPPED_POLICY],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr


#   === a malformed file: the broker does not start; --check and lint say where ========

def _good(**keys):
    rule = {"law": "Law X", "from": "jc", "to": "soz", "decision": "allow", "basis": "statute",
            "citations": SGBX69}
    rule.update(keys)
    return rule


def _without(key):
    rule = _good()
    del rule[key]
    return rule


#   (id, rules, key named, regex of the line named); the line of a missing key is
#   its rule's. Sources: kim-policy(5) RULE KEYS (law, from, to, decision
#   "required"; decision "deny or allow"; basis "statute, consent, or
#   'statute, consent'"), §9.5 ("A policy citation that cannot be read stops the
#   policy from loading (kim policy lint names file and line)"), FORMAT (ZPL,
#   4-space indents).
MALFORMED = [
    ("missing-law", [("R_ok", _good()), ("R_bad", _without("law"))], "law", r"^    R_bad$"),
    ("missing-from", [("R_bad", _without("from"))], "from", r"^    R_bad$"),
    ("missing-to", [("R_ok", _good()), ("R_bad", _without("to"))], "to", r"^    R_bad$"),
    ("missing-decision", [("R_bad", _without("decision"))], "decision", r"^    R_bad$"),
    ("decision-value", [("R_ok", _good()), ("R_bad", _good(decision="maybe"))], "decision",
     r"decision = maybe"),
    ("basis-value", [("R_bad", _good(basis="contract"))], "basis", r"basis = contract"),
    ("unreadable-citation", [("R_ok", _good()), ("R_bad", _good(citations="§§ 69 SGB X"))],
     "citations", r"citations = .*§§"),
]


def _malformed_file(folder, rules, line_re):
    text = policy_text(rules)
    path = write(os.path.join(folder, "broken-policy.cfg"), text)
    return path, line_of(text, line_re)


def _names_file_line_key(out, key, line):
    """kim-policy(5) "a malformed file stops it with the file, line and key"."""
    assert "broken-policy.cfg" in out, out
    assert re.search(r"broken-policy\.cfg:%d\b|\bline %d\b" % (line, line), out), (line, out)
    assert re.search(r"\b%s\b" % key, out), (key, out)


@pytest.mark.parametrize("rules,key,line_re", [pytest.param(*m[1:], id=m[0]) for m in MALFORMED])
def test_malformed_policy_stops_the_broker(tmp_path, rules, key, line_re):
    """kim-policy(5) DESCRIPTION: "The broker reads it at start (a malformed
    file stops it with the file, line and key)"; kim-broker(8) EXIT STATUS: 2 on
    a configuration error."""
    path, line = _malformed_file(str(tmp_path), rules, line_re)
    b = PolicyBroker(path, {"jc.rheine": "agency"}, folder=str(tmp_path))
    rc, out = b.start_fails()
    assert rc is not None, "the broker started with a malformed policy: %s" % out
    assert rc == 2, out
    _names_file_line_key(out, key, line)


@pytest.mark.parametrize("rules,key,line_re", [pytest.param(*m[1:], id=m[0]) for m in MALFORMED])
def test_malformed_policy_fails_broker_check(tmp_path, rules, key, line_re):
    """kim-broker(8) --check: "Validate the configuration (every section and the
    policy file it names) ... exit: 0 when valid, 2 when not"."""
    path, line = _malformed_file(str(tmp_path), rules, line_re)
    rc, out = PolicyBroker(path, {"jc.rheine": "agency"}, folder=str(tmp_path)).check()
    assert rc == 2, out
    _names_file_line_key(out, key, line)


@pytest.mark.skipif(kim_cli() is None, reason="no kim tool (KIM_CLI_BIN, or beside the broker)")
@pytest.mark.parametrize("rules,key,line_re", [pytest.param(*m[1:], id=m[0]) for m in MALFORMED])
def test_malformed_policy_fails_kim_policy_lint(tmp_path, rules, key, line_re):
    """kim(1) `policy lint` "Validate a policy file"; kim-policy(5) "kim policy
    lint validates one"; §9.5 "kim policy lint names file and line"."""
    path, line = _malformed_file(str(tmp_path), rules, line_re)
    r = subprocess.run([kim_cli(), "policy", "lint", path], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode != 0, r.stdout + r.stderr
    _names_file_line_key(r.stdout + r.stderr, key, line)


def test_a_policy_file_with_a_bad_indent_stops_the_broker(tmp_path):
    """kim-policy(5): "The file is ZPL (czmq's config format, 4-space indents)";
    a malformed file stops the broker, naming the file and line."""
    text = policy_text([("R_ok", _good())]).replace("        decision = allow",
                                                     "      decision = allow")
    path = write(str(tmp_path / "broken-policy.cfg"), text)
    line = line_of(text, r"^      decision")
    rc, out = PolicyBroker(path, {"jc.rheine": "agency"}, folder=str(tmp_path)).start_fails()
    assert rc not in (None, 0), out
    assert "broken-policy.cfg" in out, out
    assert re.search(r"broken-policy\.cfg:%d\b|\bline %d\b" % (line, line), out), out


#   === changing the policy: restart, not reload (kim-policy(5) CHANGING THE POLICY) ===

OPS = "ops.steinfurt"
RELOAD_ORGS = {"jc.rheine": "agency", "soz.rheine": "agency", OPS: "operator"}
DENY_NOW = [("R_now_deny", _deny("jc", "soz", "Law now-deny", "changed policy"))]


def _reload(op):
    op._send_cmd({"cmd": "RELOAD"})
    return op._wait(lambda c: c["cmd"] == "RELOADED", None, WAIT)


def test_a_changed_policy_takes_effect_at_restart_not_at_reload_or_sighup(tmp_path):
    """kim-policy(5) CHANGING THE POLICY: "restart the broker ...; a reload
    (SIGHUP) re-reads the registry only"; docs/operations.md §3 "The policy ...
    is read at start only"; §8.13 RELOAD re-reads the registry "exactly as on
    SIGHUP". So after a changed file, RELOAD and SIGHUP leave the decisions as
    they were; after a restart the new file decides."""
    path = write(str(tmp_path / "policy.cfg"), policy_text(ONE_RULE))
    b = PolicyBroker(path, RELOAD_ORGS, folder=str(tmp_path / "b")).start()
    n = Net(b, dict(ONE_RULE + DENY_NOW))
    try:
        allowed(n.refer("jc.rheine", "soz.rheine", SGBX69), "R_only")
        write(path, policy_text(DENY_NOW))
        assert _reload(n.client(OPS))["cmd"] == "RELOADED"
        allowed(n.refer("jc.rheine", "soz.rheine", SGBX69), "R_only")
        b.process.send_signal(signal.SIGHUP)
        n.client("jc.rheine").ping()
        time.sleep(0.3)
        allowed(n.refer("jc.rheine", "soz.rheine", SGBX69), "R_only")
        n.close()
        assert b.stop() == 0
        b.start()
        refused(n.refer("jc.rheine", "soz.rheine", SGBX69), "POLICY_DENY", "R_now_deny", n.rules)
    finally:
        n.close()
        b.finish()


def test_reload_with_a_broken_policy_file_changes_nothing_and_a_restart_is_refused(tmp_path):
    """kim-policy(5): a reload applies the registry only, but checks the policy
    file as a start would and refuses (RELOAD_FAILED, naming file, line and key)
    when the broker would not start with it; no decision changes; "a malformed
    file stops" the broker at its next start, naming file, line and key."""
    path = write(str(tmp_path / "broken-policy.cfg"), policy_text(ONE_RULE))
    b = PolicyBroker(path, RELOAD_ORGS, folder=str(tmp_path / "b")).start()
    n = Net(b, dict(ONE_RULE))
    try:
        text = policy_text([("R_only", _good(decision="maybe"))])
        write(path, text)
        with pytest.raises(kim.Rejected) as info:
            _reload(n.client(OPS))
        r = info.value
        assert (r.code, r.reason) == (RELOAD_FAILED, "RELOAD_FAILED"), r
        _names_file_line_key(r.text, "decision", line_of(text, "decision = maybe"))
        allowed(n.refer("jc.rheine", "soz.rheine", SGBX69), "R_only")
        n.close()
        assert b.stop() == 0
        rc, out = b.start_fails()
        assert rc not in (None, 0), out
        _names_file_line_key(out, "decision", line_of(text, "decision = maybe"))
    finally:
        n.close()
        b.cleanup()


def test_reload_does_not_switch_to_another_policy_file(tmp_path):
    """kim.cfg(5): "A reload ... re-reads the orgs and peers sections; changes
    to other sections need a restart" — a new policy/file is not read by RELOAD."""
    first = write(str(tmp_path / "first.cfg"), policy_text(ONE_RULE))
    second = write(str(tmp_path / "second.cfg"), policy_text(DENY_NOW))
    b = PolicyBroker(first, RELOAD_ORGS, folder=str(tmp_path / "b")).start()
    n = Net(b, dict(ONE_RULE + DENY_NOW))
    try:
        with open(b.config, encoding="utf-8") as f:
            cfg = f.read()
        with open(b.config, "w", encoding="utf-8") as f:
            f.write(cfg.replace(first, second))
        assert _reload(n.client(OPS))["cmd"] == "RELOADED"
        allowed(n.refer("jc.rheine", "soz.rheine", SGBX69), "R_only")
    finally:
        n.close()
        b.finish()


REGISTRY_RULES = [
    ("R_private", _allow("jmd", "ebb", "Law private", from_public=0)),
    ("R_public", _deny("jmd", "ebb", "Law public", "a public jmd may not", from_public=1)),
    ("R_mbe", _allow("mbe", "ebb", "Law mbe")),
    ("R_ki", _deny("*", "ki", "Law ki", "nothing to ki")),
]


def test_reload_applies_the_policy_to_the_new_registry_at_once(tmp_path):
    """kim.cfg(5): "A reload ... re-reads the orgs and peers sections"; the
    policy selects by the sender's agency type and public_body (kim-policy(5)
    from, from_public; kim.cfg(5) orgs/type, orgs/public_body), so after
    RELOAD the unchanged policy decides later messages by the new registry: an
    organisation added, one turned public, one given another type — for an
    open session too (§8.13 ends sessions only on key, role or removal)."""
    path = write(str(tmp_path / "policy.cfg"), policy_text(REGISTRY_RULES))
    orgs = {"jmd.rheine": "agency", "beratung.rheine": "agency", "ebb.rheine": "agency",
            "jc.rheine": "agency", OPS: "operator"}
    b = PolicyBroker(path, orgs, private=("jmd.rheine",), types={"beratung.rheine": "mbe"},
                     folder=str(tmp_path / "b")).start()
    n = Net(b, dict(REGISTRY_RULES))
    try:
        allowed(n.refer("jmd.rheine", "ebb.rheine", SGBX69), "R_private")
        allowed(n.refer("beratung.rheine", "ebb.rheine", SGBX69), "R_mbe")
        set_org_key(b.config, "jmd.rheine", "public_body", 1)
        set_org_key(b.config, "beratung.rheine", "type", "jmd")
        add_org(b.config, "ki.neu", "agency",
                write_cert(os.path.join(b.keys, "ki.neu"), "ki.neu"))
        assert _reload(n.client(OPS))["count"] == len(orgs) + 1
        # the sessions opened before the reload
        refused(n.refer("jmd.rheine", "ebb.rheine", SGBX69), "POLICY_DENY", "R_public", n.rules)
        refused(n.refer("beratung.rheine", "ebb.rheine", SGBX69), "POLICY_DENY", "R_public",
                n.rules)
        refused(n.refer("jc.rheine", "ki.neu", SGBX69), "POLICY_DENY", "R_ki", n.rules)
        # new sessions
        n.close()
        refused(n.refer("jmd.rheine", "ebb.rheine", SGBX69), "POLICY_DENY", "R_public", n.rules)
        refused(n.refer("beratung.rheine", "ebb.rheine", SGBX69), "POLICY_DENY", "R_public",
                n.rules)
    finally:
        n.close()
        b.finish()


def _misspell_policy_key(config):
    with open(config, encoding="utf-8") as f:
        cfg = f.read()
    assert "\npolicy\n" in cfg
    with open(config, "w", encoding="utf-8") as f:
        f.write(cfg.replace("\npolicy\n", "\npolicy\n    fiel = other.cfg\n"))


def test_reload_of_an_invalid_policy_section_is_reload_failed_naming_file_and_key(tmp_path):
    """§8.13: "If the file is invalid, the registry stays as it was and the
    broker answers REJECT RELOAD_FAILED (213) with a text naming the file and
    key path"; kim.cfg(5): "Unknown sections and keys are errors, so a
    misspelt key never falls back silently"."""
    path = write(str(tmp_path / "policy.cfg"), policy_text(ONE_RULE))
    b = PolicyBroker(path, RELOAD_ORGS, folder=str(tmp_path / "b")).start()
    n = Net(b, dict(ONE_RULE))
    try:
        _misspell_policy_key(b.config)
        with pytest.raises(kim.Rejected) as info:
            _reload(n.client(OPS))
        r = info.value
        assert (r.code, r.reason) == (RELOAD_FAILED, "RELOAD_FAILED"), r
        assert "kim.cfg" in r.text and "policy/fiel" in r.text, r.text
    finally:
        n.close()
        b.finish()


def test_check_of_an_invalid_policy_section_fails_naming_the_key(tmp_path):
    """kim-broker(8) --check validates "every section and the policy file it
    names ... 2 when not"; kim.cfg(5): unknown keys are errors."""
    path = write(str(tmp_path / "policy.cfg"), policy_text(ONE_RULE))
    b = PolicyBroker(path, RELOAD_ORGS, folder=str(tmp_path / "b"))
    _misspell_policy_key(b.config)
    rc, out = b.check()
    assert rc == 2 and "policy/fiel" in out, out


#   === kim policy check: the same answer offline (§9.3, kim(1), kim-policy(5)) =========

CHECK_CASES = [
    # (id, sender, to, purpose, citation, private, exit code, rule)
    ("P5-deny", "sch.rheine", "aba.rheine", "residence", "AufenthG §87(1)", False, 1, "P5"),
    ("P1-allow", "jc.rheine", "soz.rheine", "benefits", SGBX69, False, 0, "P1"),
    ("P1-no-basis", "jc.rheine", "soz.rheine", "benefits", "SGB X §70(1)1", False, 1, "P1"),
    ("P6-private-no-basis", "mbe.rheine", "aba.rheine", "residence", "AufenthG §87(1)", True, 1,
     "P6"),
    ("P4-broader", "jc.rheine", "aba.rheine", "residence", "SGB X §71(2)", False, 1, "P4"),
    ("default", "sch.rheine", "jc.rheine", "education", SGBX69, False, 1, "default"),
]


@pytest.mark.skipif(kim_cli() is None, reason="no kim tool (KIM_CLI_BIN, or beside the broker)")
@pytest.mark.parametrize("sender,to,purpose,citation,private,rc,rule",
                         [pytest.param(*c[1:], id=c[0]) for c in CHECK_CASES])
def test_kim_policy_check_gives_the_brokers_answer_offline(ship, sender, to, purpose, citation,
                                                           private, rc, rule):
    """kim-policy(5): "kim policy check shows which rule decides a given header";
    §9.3: "kim policy check gives the same answer offline, step by step": the
    rule the broker names and, for a refusal, the broker's REJECT text; exit 0
    allowed, 1 denied (`kim policy check --help`)."""
    outcome = ship.refer(sender, to, citation, purpose)
    r = subprocess.run([kim_cli(), "policy", "check", "--policy", SHIPPED_POLICY, "--from", sender,
                        "--to", to, "--purpose", purpose, "--statute", citation]
                       + (["--private"] if private else []),
                       capture_output=True, text=True, timeout=20)
    out = r.stdout + r.stderr
    assert r.returncode == rc, out
    assert re.search(r"\b%s\b" % re.escape(rule), out), out
    if rc == 0:
        allowed(outcome, rule)
    else:
        kind, rejected = outcome
        assert kind == "reject", rejected
        assert rejected.text in out, (rejected.text, out)
