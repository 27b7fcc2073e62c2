"""Consent and the data subject's rights against PROTOCOL.md, from the outside
(§9.1, §9.2 CONSENT_GRANT, CONSENT_REVOKE, ERASURE, ACCESS_REPORT, §9.3, §9.4
SUSPENDED and LAPSED, §10).

Who may grant (the case's lead; a grant opens an unknown case), a consent id
registered once; a REFERRAL under a valid consent passes with the deciding
rule; outside the consent's recipients, purposes, categories, giver or
binding it is refused with the 5xx code §9.3 names, at
`hdr.legal_basis.consent_id`, with a text naming the rule and its law, and a
sender the consent is not known to is told what an unused id gets;
revocation by the lead only (NOT_LEAD for a named recipient,
CONSENT_UNKNOWN word for word for an outsider), its effect on open referrals
(SUSPENDED, which takes only a WITHDRAW), the notices, the withholding of
mail not yet acknowledged; expiry (`valid_until`) on a broker of its own
(LAPSED, CONSENT_EXPIRED, notices with code `expired`); ACCESS_REPORT and
ERASURE, and `kim subject report` when the tool is built.

On the shared broker jc.rheine, soz.rheine and aa.rheine are social-code
bodies: rule P1 of the shipped policy allows transfers between them on a
statute or a consent, P2 (data under § 65 SGB VIII) on a consent given by
the entruster. Every test uses ids of its own and filters what it receives;
every wait is bounded."""
import json
import os
import subprocess
import time

import pytest

import kim
import kim_headers
from kim_inbox import Inbox, WAIT, state_of, uid, wait_state


BAD_VALUE, MISSING_FIELD, BAD_ACK = 110, 102, 208
BAD_STATE, NOT_PARTY, UNKNOWN_CASE, NOT_LEAD = 400, 401, 403, 405
CONSENT_UNKNOWN, CONSENT_REVOKED, CONSENT_SCOPE = 502, 503, 504
CONSENT_EXPIRED, CONSENT_BOUND = 505, 506

JC, SOZ, AA = "jc.rheine", "soz.rheine", "aa.rheine"
P1 = "rule P1 (jc,aa,ja,soz,alb -> jc,aa,ja,soz,alb, statute or consent): "
P1_LAW = "[§ 69 Abs. 1 Nr. 1 SGB X]"
CONSENT_PATH = "hdr.legal_basis.consent_id"

def now_ms():
    return int(time.time() * 1000)


def grant(case_id, consent, subject, recipients=(SOZ,), purposes=("benefits",),
          valid_for_s=3600, **extra):
    hdr = {"type": "CONSENT_GRANT", "msg_id": uid("m"), "case_id": case_id,
           "consent": consent, "subject": subject, "recipients": list(recipients),
           "purposes": list(purposes), "valid_until": now_ms() + int(valid_for_s * 1000)}
    hdr.update(extra)
    return hdr


def revoke(consent, **extra):
    hdr = {"type": "CONSENT_REVOKE", "msg_id": uid("m"), "consent": consent}
    hdr.update(extra)
    return hdr


def under(rid, case_id, consent, subject, recipient=SOZ, **extra):
    """A REFERRAL (the shared header) on legal basis consent `consent`."""
    extra.setdefault("msg_id", uid("m"))
    return kim_headers.referral(rid, case_id, recipient, subject=subject,
                                legal_basis={"kind": "consent", "consent_id": consent},
                                **extra)


def answer(move, rid, to, **extra):
    hdr = {"type": move, "msg_id": uid("m"), "recipient": to, "referral_id": rid}
    hdr.update(extra)
    return hdr


def refused(client, hdr, payload=b""):
    """Sends and expects a REJECT; returns it (code, reason, text, msg_id, path)."""
    with pytest.raises(kim.Rejected) as info:
        client.send(hdr, payload)
    assert info.value.msg_id == hdr["msg_id"]
    return info.value


def granted(client, tag, subject=None, **extra):
    """A new case led by `client`'s organisation and a consent in it; returns
    (case_id, consent_id, subject)."""
    case_id, consent, subject = uid("C-" + tag), uid("G-" + tag), subject or uid("p")
    receipt = client.send(grant(case_id, consent, subject, **extra))
    assert receipt["seq"] > 0 and not receipt.get("dup")
    return case_id, consent, subject


def delivered_under_consent(connect, tag):
    """jc grants a consent for soz and refers under it; soz has the REFERRAL and
    acknowledged it. Returns (jc, soz, aa inboxes, rid, case_id, consent, subject)."""
    jc, soz, aa = Inbox(connect(JC)), Inbox(connect(SOZ)), Inbox(connect(AA))
    case_id, consent, subject = granted(jc.client, tag)
    rid = uid("R-" + tag)
    jc.client.send(under(rid, case_id, consent, subject), b"what soz needs")
    assert soz.wait(type="REFERRAL", referral_id=rid)
    assert wait_state(jc.client, rid, "DELIVERED") == "DELIVERED"
    return jc, soz, aa, rid, case_id, consent, subject


#   --- a REFERRAL under a valid consent (§9.3) --------------------------------

def test_a_referral_under_a_valid_consent_passes_with_its_rule_and_the_grant_goes_nowhere(
        connect):
    jc, soz, aa = Inbox(connect(JC)), Inbox(connect(SOZ)), Inbox(connect(AA))
    case_id, consent, subject = granted(jc.client, "OK")
    rid = uid("R-OK")
    hdr = under(rid, case_id, consent, subject)
    receipt = jc.client.send(hdr, b"what soz needs")
    (got,) = soz.wait(type="REFERRAL", referral_id=rid)
    assert got.seq == receipt["seq"] and got.payload == b"what soz needs"
    assert got.hdr["legal_basis"] == {"kind": "consent", "consent_id": consent}
    assert got.hdr["rule"] == "P1"                     # the deciding rule, delivered
    assert wait_state(jc.client, rid, "DELIVERED") == "DELIVERED"
    (row,) = jc.client.referral_query(referral_id=rid)
    assert (row["consent_id"], row["case_id"]) == (consent, case_id)
    # CONSENT_GRANT is not delivered to anyone (§9.2)
    for box in (jc, soz, aa):
        box.settle()
        assert not box.where(type="CONSENT_GRANT"), box.client.org
        assert not box.where(consent=consent), box.client.org


#   --- outside the consent: CONSENT_SCOPE, the rule named (§9.3) --------------

def test_outside_the_consents_recipients_purposes_or_categories_is_consent_scope(connect):
    jc = connect(JC)
    aa, soz = Inbox(connect(AA)), Inbox(connect(SOZ))
    case_id, consent, subject = granted(jc, "SCOPE")
    cases = (
        (under(uid("R-PUR"), case_id, consent, subject, purpose="housing"), "purpose housing"),
        (under(uid("R-REC"), case_id, consent, subject, recipient=AA), "recipient aa.rheine"),
        (under(uid("R-ART9"), case_id, consent, subject, categories=["art9"]), "art9"),
    )
    for hdr, part in cases:
        r = refused(jc, hdr)
        assert (r.code, r.reason, r.path) == (CONSENT_SCOPE, "CONSENT_SCOPE", CONSENT_PATH)
        assert r.text.startswith(P1 + "consent %s does not cover %s" % (consent, part)), r.text
        assert r.text.endswith(P1_LAW), r.text
        assert jc.referral_query(referral_id=hdr["referral_id"]) == []
    # art9 passes with an explicit consent that names it
    case2, explicit, subject2 = granted(jc, "ART9", categories=["art9"], explicit=True)
    rid = uid("R-ART9OK")
    jc.send(under(rid, case2, explicit, subject2, categories=["art9"]), b"health data")
    assert soz.wait(type="REFERRAL", referral_id=rid)
    aa.settle()
    assert not aa.where(case_id=case_id)


def test_a_consent_from_the_wrong_giver_does_not_cover_a_rule_that_names_givers(connect):
    """P2 (§ 65 SGB VIII data) needs the entruster's consent (§9.3)."""
    soz = connect(SOZ)
    jc = Inbox(connect(JC))
    subject = uid("p")
    for giver, passes in (("guardian", False), ("entruster", True)):
        case_id, consent = uid("C-GIVER"), uid("G-" + giver[:5])
        soz.send(grant(case_id, consent, subject, recipients=[JC], categories=["sgb8_s65"],
                       giver=giver))
        hdr = under(uid("R-GIVER"), case_id, consent, subject, recipient=JC,
                    categories=["sgb8_s65"])
        if passes:
            soz.send(hdr, b"entrusted data")
            (got,) = jc.wait(type="REFERRAL", referral_id=hdr["referral_id"])
            assert got.hdr["rule"] == "P2"
        else:
            r = refused(soz, hdr)
            assert (r.code, r.path) == (CONSENT_SCOPE, CONSENT_PATH)
            assert r.text.startswith("rule P2 "), r.text
            assert ("consent %s was given by guardian; the rule needs the consent of: "
                    "entruster" % consent) in r.text, r.text
            assert "§ 65 Abs. 1 SGB VIII" in r.text


def test_a_grant_with_a_bad_giver_is_bad_value(connect):
    soz = connect(SOZ)
    hdr = grant(uid("C-BADG"), uid("G-BADG"), uid("p"), recipients=[JC], giver="mother")
    with pytest.raises(kim.Rejected) as info:
        soz.send(hdr)
    assert (info.value.code, info.value.path) == (BAD_VALUE, "hdr.giver")
    # nothing was registered: the id is still free
    soz.send(grant(hdr["case_id"], hdr["consent"], hdr["subject"], recipients=[JC]))


#   --- unknown, bound (§9.3, §9.4) --------------------------------------------

def test_a_consent_not_known_to_the_sender_gets_the_text_of_an_unused_id(connect):
    jc, aa = connect(JC), connect(AA)
    case_id, consent, subject = granted(jc, "UNK")
    unused = uid("G-UNUSED")
    for sender, cid in ((jc, unused), (aa, consent), (aa, unused)):
        hdr = under(uid("R-UNK"), uid("C-AA") if sender is aa else case_id, cid, subject,
                    recipient=SOZ)
        r = refused(sender, hdr)
        assert (r.code, r.reason, r.path) == (CONSENT_UNKNOWN, "CONSENT_UNKNOWN",
                                              CONSENT_PATH), (sender.org, r.text)
        assert r.text == P1 + "consent %s is not registered %s" % (cid, P1_LAW)
        for secret in (JC, case_id, "benefits"):
            assert secret not in r.text


def test_a_citation_outside_the_consents_binding_is_consent_bound_in_order(connect):
    jc, soz = connect(JC), connect(SOZ)
    case_id, consent, subject = granted(jc, "BOUND")
    jc.send(under(uid("R-BOUND"), case_id, consent, subject))   # soz now takes part
    r = refused(jc, under(uid("R-SUBJ"), case_id, consent, uid("p-other")))
    assert (r.code, r.reason, r.path) == (CONSENT_BOUND, "CONSENT_BOUND", CONSENT_PATH)
    assert r.text.startswith(P1) and "subject" in r.text and r.text.endswith(P1_LAW)
    other_case = uid("C-OTHER")
    r = refused(jc, under(uid("R-CASE"), other_case, consent, subject))
    assert (r.code, r.path) == (CONSENT_BOUND, CONSENT_PATH)
    assert other_case in r.text and r.text.endswith(P1_LAW), r.text
    # a named recipient is not the lead: the binding's third part; it may be told the lead
    r = refused(soz, under(uid("R-LEAD"), case_id, consent, subject, recipient=AA))
    assert (r.code, r.path) == (CONSENT_BOUND, CONSENT_PATH)
    assert ("may be cited only by the lead of case %s" % case_id) in r.text, r.text
    assert SOZ in r.text
    # subject before case: both wrong, the subject is named
    r = refused(jc, under(uid("R-BOTH"), uid("C-OTHER"), consent, uid("p-other")))
    assert r.code == CONSENT_BOUND and "subject" in r.text, r.text


#   --- who may grant (§9.3, §9.4) ---------------------------------------------

def test_only_the_cases_lead_grants_and_not_lead_does_not_name_it(connect):
    jc, soz, aa = connect(JC), connect(SOZ), connect(AA)
    case_id, consent, subject = granted(jc, "LEAD")
    jc.send(under(uid("R-LEAD"), case_id, consent, subject))   # soz takes part now
    for client in (soz, aa):                                     # a participant, an outsider
        hdr = grant(case_id, uid("G-NL"), subject, recipients=[AA])
        r = refused(client, hdr)
        assert (r.code, r.reason, r.path) == (NOT_LEAD, "NOT_LEAD", "hdr.case_id"), r.text
        assert JC not in r.text, r.text
        # nothing was registered: the lead may take the same id
        jc.send(dict(hdr, msg_id=uid("m")))


def test_a_grant_in_an_unknown_case_opens_it_with_the_granter_as_lead(connect):
    soz, jc, aa = connect(SOZ), connect(JC), connect(AA)
    case_id, consent, subject = granted(soz, "OPEN", recipients=[JC])
    # the case is known now, and soz leads it: others cannot grant in it or close it,
    # and a REFERRAL into it from an organisation that takes no part is NOT_PARTY
    assert refused(jc, grant(case_id, uid("G-X"), subject)).code == NOT_LEAD
    r = refused(aa, kim_headers.referral(uid("R-INTO"), case_id, JC, msg_id=uid("m")))
    assert r.code == NOT_PARTY, r.text
    r = refused(aa, {"type": "CASE_CLOSED", "msg_id": uid("m"), "case_id": case_id})
    assert r.code == UNKNOWN_CASE, r.text
    rid = uid("R-OPEN")
    soz.send(under(rid, case_id, consent, subject, recipient=JC))
    (row,) = soz.referral_query(referral_id=rid)
    assert (row["sender"], row["case_id"], row["consent_id"]) == (SOZ, case_id, consent)
    soz.send({"type": "CASE_CLOSED", "msg_id": uid("m"), "case_id": case_id})   # the lead


def test_a_consent_id_is_registered_once_by_anyone(connect):
    jc, soz = connect(JC), connect(SOZ)
    case_id, consent, subject = granted(jc, "ONCE")
    for client, case in ((jc, case_id), (soz, uid("C-ONCE2"))):
        r = refused(client, grant(case, consent, subject, purposes=["housing"]))
        assert (r.code, r.path) == (BAD_VALUE, "hdr.consent"), r.text
    # the first grant stands: its scope is unchanged
    r = refused(jc, under(uid("R-ONCE"), case_id, consent, subject, purpose="housing"))
    assert r.code == CONSENT_SCOPE


def test_a_grant_must_be_well_formed(connect):
    jc = connect(JC)
    case_id, subject = uid("C-FORM"), uid("p")
    r = refused(jc, grant(case_id, uid("G-PAST"), subject, valid_for_s=-60))
    assert (r.code, r.path) == (BAD_VALUE, "hdr.valid_until")
    r = refused(jc, grant(case_id, uid("G-TO"), subject, recipient=SOZ))
    assert (r.code, r.path) == (BAD_VALUE, "hdr.recipient")
    for field in ("case_id", "subject", "recipients", "purposes", "valid_until"):
        hdr = grant(case_id, uid("G-MISS"), subject)
        del hdr[field]
        r = refused(jc, hdr)
        assert (r.code, r.path) == (MISSING_FIELD, "hdr." + field), (field, r.text)
    assert jc.status()


#   --- revocation (§9.2 CONSENT_REVOKE, §9.3, §9.4) ---------------------------

def test_only_the_lead_revokes_an_outsider_is_told_what_an_unused_id_gets(connect):
    jc, soz, aa, rid, case_id, consent, _ = delivered_under_consent(connect, "REVWHO")
    r = refused(soz.client, revoke(consent))                   # named, not the lead
    assert (r.code, r.reason, r.path) == (NOT_LEAD, "NOT_LEAD", "hdr.case_id")
    assert JC not in r.text, r.text
    unused = uid("G-UNUSED")
    taken = refused(aa.client, revoke(consent))
    free = refused(aa.client, revoke(unused))
    assert (taken.code, taken.reason, taken.path) == (free.code, free.reason, free.path) \
        == (CONSENT_UNKNOWN, "CONSENT_UNKNOWN", "hdr.consent")
    assert taken.text.replace(consent, "<id>") == free.text.replace(unused, "<id>")
    for secret in (JC, SOZ, case_id):
        assert secret not in taken.text
    assert state_of(jc.client, rid) == "DELIVERED"             # nothing changed
    soz.settle()
    assert not soz.where(type="CONSENT_REVOKE", consent=consent)


def test_an_agencys_revoke_carries_no_broker_fields(connect):
    jc = connect(JC)
    _, consent, _ = granted(jc, "REVF")
    for field, value in (("code", "revoked"), ("referral_id", "r-1"), ("ref_msg_id", "m-1"),
                         ("recipient", SOZ)):
        r = refused(jc, revoke(consent, **{field: value}))
        assert (r.code, r.path) == (BAD_VALUE, "hdr." + field), (field, r.text)
    jc.send(revoke(consent))                                     # the consent was still live


def test_a_revoke_naming_another_case_is_consent_bound(connect):
    """§9.3: a CONSENT_REVOKE names the consent's case if it names one
    (CONSENT_BOUND at hdr.case_id), so that the log files it under that case."""
    jc = connect(JC)
    case_id, consent, _ = granted(jc, "REVC")
    other, _, _ = granted(jc, "REVC2")                  # a case jc leads as well
    r = refused(jc, revoke(consent, case_id=other))
    assert (r.code, r.reason, r.path) == (CONSENT_BOUND, "CONSENT_BOUND", "hdr.case_id"), r.text
    jc.send(revoke(consent, case_id=case_id))            # the consent was still live


def test_revocation_suspends_open_referrals_tells_the_recipients_and_refuses_new_transfers(
        connect):
    jc, soz, aa, rid, case_id, consent, subject = delivered_under_consent(connect, "REV")
    accepted = uid("R-REV2")
    jc.client.send(under(accepted, case_id, consent, subject), b"second")
    assert soz.wait(type="REFERRAL", referral_id=accepted)
    soz.client.send(answer("ACCEPT", accepted, JC))
    assert wait_state(jc.client, accepted, "ACCEPTED") == "ACCEPTED"
    jc.client.send(revoke(consent))
    assert state_of(jc.client, rid) == state_of(soz.client, rid) == "SUSPENDED"
    assert state_of(jc.client, accepted) == "SUSPENDED"
    # the organisation that received data under it is told, once, with the consent's case
    (notice,) = soz.wait(type="CONSENT_REVOKE", consent=consent)
    assert (notice.hdr["recipient"], notice.hdr["case_id"], notice.hdr["code"]) == \
        (SOZ, case_id, "revoked")
    assert notice.hdr["sender"] not in (JC, SOZ, AA) and notice.payload == b""
    soz.settle()
    assert len(soz.where(type="CONSENT_REVOKE", consent=consent)) == 1
    aa.settle()
    assert not aa.where(consent=consent) and not aa.where(case_id=case_id)
    jc.settle()
    assert not jc.where(type="CONSENT_REVOKE", code="withheld")  # everything was delivered
    # new transfers under it, and a second revocation, are CONSENT_REVOKED
    r = refused(jc.client, under(uid("R-LATE"), case_id, consent, subject))
    assert (r.code, r.reason, r.path) == (CONSENT_REVOKED, "CONSENT_REVOKED", CONSENT_PATH)
    assert r.text.startswith(P1) and r.text.endswith(P1_LAW), r.text
    r = refused(jc.client, revoke(consent))
    assert (r.code, r.path) == (CONSENT_REVOKED, "hdr.consent")


def test_a_suspended_referral_takes_only_a_withdraw(connect):
    jc, soz, aa, rid, case_id, consent, _ = delivered_under_consent(connect, "SUSP")
    jc.client.send(revoke(consent))
    assert state_of(jc.client, rid) == "SUSPENDED"
    for client, move, to in ((soz.client, "ACCEPT", JC), (soz.client, "INFO_REQUEST", JC),
                             (soz.client, "FORWARD", JC), (jc.client, "INFO_REQUEST", SOZ)):
        extra = {"org": AA, "purpose": "employment", "legal_basis": kim_headers.STATUTE} \
            if move == "FORWARD" else {}
        r = refused(client, answer(move, rid, to, **extra))
        assert (r.code, r.path) == (BAD_STATE, "hdr.type"), (move, r.text)
        assert ("referral %s is SUSPENDED" % rid) in r.text, r.text
    assert state_of(jc.client, rid) == "SUSPENDED"
    withdraw = answer("WITHDRAW", rid, SOZ)
    jc.client.send(withdraw)
    assert state_of(soz.client, rid) == "WITHDRAWN"
    assert soz.wait(msg_id=withdraw["msg_id"])


def test_revocation_withholds_a_referral_its_recipient_has_not_acknowledged(connect):
    jc = Inbox(connect(JC))
    idle = connect(SOZ, window=0)                   # soz is there but takes nothing
    case_id, consent, subject = granted(jc.client, "WH")
    rid = uid("R-WH")
    hdr = under(rid, case_id, consent, subject)
    receipt = jc.client.send(hdr, b"never to be delivered")
    assert state_of(jc.client, rid) == "SENT"
    jc.client.send(revoke(consent))
    (notice,) = jc.wait(type="CONSENT_REVOKE", code="withheld")
    assert (notice.hdr["consent"], notice.hdr["referral_id"], notice.hdr["ref_msg_id"],
            notice.hdr["recipient"]) == (consent, rid, hdr["msg_id"], JC)
    assert state_of(jc.client, rid) == "SUSPENDED"
    idle.close()
    soz = Inbox(connect(SOZ))
    soz.settle()
    assert not soz.where(referral_id=rid, type="REFERRAL")
    assert not [d for d in soz.got if d.seq == receipt["seq"]]
    # the log keeps the record; its payload is purged (the sender's access report says so)
    jc.client.send({"type": "ACCESS_REPORT", "msg_id": uid("m"), "subject": subject})
    (page,) = jc.wait(type="ACCESS_REPORT", subject=subject)
    (row,) = json.loads(page.payload)["transfers"]
    assert (row["seq"], row["payload"]) == (receipt["seq"], "erased")


def on_the_wire_then_revoked(connect, tag):
    """soz holds a REFERRAL under a consent, delivered and not acknowledged, when
    the lead revokes the consent; returns (jc, soz, delivery, rid, REFERRAL hdr)."""
    jc = Inbox(connect(JC))
    soz = Inbox(connect(SOZ), ack=False)
    case_id, consent, subject = granted(jc.client, tag)
    rid = uid("R-" + tag)
    hdr = under(rid, case_id, consent, subject)
    jc.client.send(hdr, b"on the wire")
    (d,) = soz.wait(type="REFERRAL", referral_id=rid)         # delivered, not acknowledged
    jc.client.send(revoke(consent))
    (notice,) = jc.wait(type="CONSENT_REVOKE", code="withheld", referral_id=rid)
    assert notice.hdr["ref_msg_id"] == hdr["msg_id"]
    return jc, soz, d, rid, hdr


def test_a_delivery_on_the_wire_when_revoked_is_withheld_and_its_ack_is_bad_ack(connect):
    jc, soz, d, rid, hdr = on_the_wire_then_revoked(connect, "WIRE")
    soz.client._send_cmd({"cmd": "ACK", "seqs": [d.seq]})     # ACK (8.7), as sent
    soz.settle()
    bad = [r for r in soz.client.late_rejects if r.get("code") == BAD_ACK]
    assert len(bad) == 1 and bad[0]["path"] == "seqs[0]", soz.client.late_rejects
    assert state_of(jc.client, rid) == "SUSPENDED"
    jc.settle()
    assert not jc.where(type="DELIVERED", referral_id=rid)
    soz.client.close()
    again = Inbox(connect(SOZ))                # a later session: no payload comes again
    again.settle()
    assert all(x.payload == b"" for x in again.got if x.seq == d.seq)


def test_an_ack_range_over_a_withheld_delivery_passes_quietly_and_ends_it(connect):
    """§9.3 Withholding, §8.19: a range over a withheld delivery of this session
    acknowledges nothing and passes quietly, as over a seq acknowledged already;
    either way the delivery is no longer in flight and never comes again."""
    jc, soz, d, rid, hdr = on_the_wire_then_revoked(connect, "WIRER")
    assert soz.client.version == 2
    soz.settle()
    in_flight = soz.client.status()["in_flight"]          # d and the `revoked` notice
    soz.client._send_cmd({"cmd": "ACK_RANGE", "ranges": [d.seq, d.seq]})
    soz.settle()
    assert [r for r in soz.client.late_rejects if r.get("code") == BAD_ACK] == []
    assert soz.client.status()["in_flight"] == in_flight - 1
    assert state_of(jc.client, rid) == "SUSPENDED"


#   --- expiry (§9.3 Expiry, §9.4 LAPSED) on a broker of its own ----------------

VALID_S = 3.0


def test_expiry_lapses_open_referrals_withholds_tells_and_refuses(brokers, connect_to):
    b = brokers()
    conn = lambda org, **o: connect_to(b, org, **dict({"timeout": WAIT}, **o))  # noqa: E731
    jc, soz = Inbox(conn(JC)), Inbox(conn(SOZ))
    case_id, consent, subject = granted(jc.client, "EXP", recipients=[SOZ, AA],
                                        valid_for_s=VALID_S)
    t_end = now_ms() + VALID_S * 1000
    rid = uid("R-EXP")                      # to soz, delivered
    jc.client.send(under(rid, case_id, consent, subject), b"for soz")
    assert soz.wait(type="REFERRAL", referral_id=rid)
    assert wait_state(jc.client, rid, "DELIVERED") == "DELIVERED"
    held = uid("R-HELD")                    # to aa, which is not connected: not delivered
    held_hdr = under(held, case_id, consent, subject, recipient=AA)
    jc.client.send(held_hdr, b"for aa")
    # within about a second of valid_until: the lead is told `expired`, the sender
    # of the held REFERRAL `withheld`, the recipient of data `expired`
    (lead,) = jc.wait(type="CONSENT_REVOKE", code="expired", timeout=VALID_S + WAIT)
    assert lead.hdr["created_at"] >= t_end - 500
    assert (lead.hdr["consent"], lead.hdr["case_id"]) == (consent, case_id)
    (withheld,) = jc.wait(type="CONSENT_REVOKE", code="withheld", timeout=WAIT)
    assert (withheld.hdr["referral_id"], withheld.hdr["ref_msg_id"]) == \
        (held, held_hdr["msg_id"])
    (told,) = soz.wait(type="CONSENT_REVOKE", code="expired", timeout=WAIT)
    assert (told.hdr["consent"], told.hdr["case_id"]) == (consent, case_id)
    assert state_of(jc.client, rid) == state_of(soz.client, rid) == "LAPSED"
    assert state_of(jc.client, held) == "LAPSED"
    r = refused(jc.client, under(uid("R-AFTER"), case_id, consent, subject))
    assert (r.code, r.reason, r.path) == (CONSENT_EXPIRED, "CONSENT_EXPIRED", CONSENT_PATH)
    assert r.text.startswith(P1) and r.text.endswith(P1_LAW), r.text
    # LAPSED takes only a WITHDRAW
    r = refused(soz.client, answer("ACCEPT", rid, JC))
    assert r.code == BAD_STATE and ("referral %s is LAPSED" % rid) in r.text, r.text
    jc.client.send(answer("WITHDRAW", rid, SOZ))
    assert state_of(soz.client, rid) == "WITHDRAWN"
    aa = Inbox(conn(AA))                    # the held REFERRAL never reaches aa
    aa.settle()
    assert not aa.where(referral_id=held, type="REFERRAL")
    soz.settle()
    jc.settle()
    assert len(soz.where(type="CONSENT_REVOKE", consent=consent)) == 1
    assert len(jc.where(type="CONSENT_REVOKE", code="expired")) == 1


#   --- subject rights: ACCESS_REPORT and ERASURE (§9.2, §9.3) ------------------

def test_access_report_lists_the_askers_transfers_and_outsiders_are_not_party(connect):
    jc, soz, aa, rid, case_id, consent, subject = delivered_under_consent(connect, "AR")
    statute_rid = uid("R-AR-ST")
    jc.client.send(kim_headers.referral(statute_rid, case_id, SOZ, subject=subject,
                                        msg_id=uid("m"), purpose="employment"), b"x")
    assert soz.wait(referral_id=statute_rid)
    ask = {"type": "ACCESS_REPORT", "msg_id": uid("m"), "subject": subject}
    receipt = jc.client.send(ask)
    (page,) = jc.wait(type="ACCESS_REPORT", subject=subject)
    assert page.hdr["recipient"] == JC and page.hdr["sender"] not in (JC, SOZ, AA)
    assert page.hdr["payload_len"] == len(page.payload)
    report = json.loads(page.payload)
    assert (report["subject"], report["requested_by"], report["page"], report["last"],
            report["total"]) == (subject, JC, 1, True, 2)
    assert receipt["seq"] < page.seq and report["generated_at"] > 0
    by_type = {(t["purpose"], t["basis"]): t for t in report["transfers"]}
    t = by_type[("benefits", "consent")]
    assert (t["type"], t["from"], t["to"], t["case_id"], t["consent_id"], t["rule"],
            t["payload"]) == ("REFERRAL", JC, SOZ, case_id, consent, "P1", "kept")
    t = by_type[("employment", "statute")]
    assert (t["citation"], t["rule"]) == ("SGB X §69(1)1", "P1") and "consent_id" not in t
    # soz received, but sent nothing and leads nothing; aa takes no part
    for box in (soz, aa):
        r = refused(box.client, dict(ask, msg_id=uid("m")))
        assert (r.code, r.reason, r.path) == (NOT_PARTY, "NOT_PARTY", "hdr.subject"), r.text
        assert JC not in r.text and case_id not in r.text
    aa.settle()
    assert not aa.where(type="ACCESS_REPORT")
    r = refused(jc.client, dict(ask, msg_id=uid("m"), recipient=JC))
    assert (r.code, r.path) == (BAD_VALUE, "hdr.recipient")


def test_erasure_purges_the_askers_payloads_and_tells_their_recipients(connect):
    jc, soz, aa, rid, case_id, consent, subject = delivered_under_consent(connect, "ER")
    r = refused(aa.client, {"type": "ERASURE", "msg_id": uid("m"), "subject": subject})
    assert (r.code, r.path) == (NOT_PARTY, "hdr.subject")
    jc.client.send({"type": "ERASURE", "msg_id": uid("m"), "subject": subject,
                    "case_id": case_id})
    (told,) = soz.wait(type="ERASURE", subject=subject)
    assert (told.hdr["recipient"], told.hdr["case_id"]) == (SOZ, case_id)
    # its payload names the request and the transfers to soz it covers,
    # under the seqs soz received them with
    assert told.hdr["payload_len"] == len(told.payload)
    notice = json.loads(told.payload)
    (referral,) = soz.where(referral_id=rid)
    assert notice == {"subject": subject, "requested_by": JC, "request_seq": notice["request_seq"],
                      "case_id": case_id, "part": 1, "seqs": [referral.seq], "last": True}
    assert referral.seq < notice["request_seq"] < told.seq
    aa.settle()
    assert not aa.where(type="ERASURE", subject=subject)
    jc.client.send({"type": "ACCESS_REPORT", "msg_id": uid("m"), "subject": subject})
    (page,) = jc.wait(type="ACCESS_REPORT", subject=subject)
    (row,) = json.loads(page.payload)["transfers"]
    assert (row["type"], row["payload"], row["consent_id"]) == ("REFERRAL", "erased", consent)


def _kim_cli():
    path = os.environ.get("KIM_CLI_BIN") or os.path.join(
        os.path.dirname(os.path.dirname(os.environ.get("KIM_BROKER_BIN", "/nonexistent"))),
        "agents", "cli", "kim")
    return path if os.access(path, os.X_OK) else None


@pytest.mark.skipif(_kim_cli() is None, reason="no kim tool beside KIM_BROKER_BIN")
def test_kim_subject_report_prints_the_access_report(broker, connect):
    jc, soz, aa, rid, case_id, consent, subject = delivered_under_consent(connect, "CLI")
    out = subprocess.run([_kim_cli(), "subject", "report", subject, "--endpoint",
                          broker.endpoint, "--broker-key", broker.broker_cert,
                          "--cert", broker.cert_secret(JC), "--timeout", "5000"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.strip()]
    report = json.loads(line)
    assert (report["subject"], report["requested_by"], report["last"], report["total"]) == \
        (subject, JC, True, 1)
    assert report["transfers"][0]["consent_id"] == consent
    out = subprocess.run([_kim_cli(), "subject", "report", subject, "--endpoint",
                          broker.endpoint, "--broker-key", broker.broker_cert,
                          "--cert", broker.cert_secret(AA), "--timeout", "5000"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "NOT_PARTY" in out.stdout + out.stderr
