"""Federation of cases (PROTOCOL.md §16.5-§16.8, §9.3, §9.4, §8.13) against a real
kim-broker, from the spec alone: what test_federation_spec.py left out.

- case handover across districts: HANDOVER_OFFER / ACCEPT / DECLINE between a
  lead in one district and a case manager in the other, the lead moving at
  both brokers, NOT_LEAD afterwards;
- HANDED_OVER, both the one the broker makes for its offices' referrals and
  the one it takes from the peer (its checks, the referral it opens, answers
  after it, its timers and its consent);
- FORWARD across districts (§16.6, §16.8);
- consents forwarded by the peer and how this broker registers them (§16.5);
- a reload that adds or removes peers (kim.cfg(5), §8.13).

The real broker, `kim.test`, has jc.rheine (signs), soz.rheine, aa.rheine and
an auditor; the Python side plays `broker.far` (kim_peer.FarBroker) with
soz.far and jc.far (signs). As in test_federation_spec.py the far side
dials the broker ("outbound": its HELLO, directory and PEER_FORWARDs) and
serves the broker's link ("inbound": the broker's PEER_FORWARDs, answered
here). Every wait is bounded (kim_inbox.WAIT); "nothing came" means nothing
within kim_inbox.QUIET."""
import json
import os
import time

import msgpack
import pytest

import kim
import kim_headers
from kim.certs import load_cert
from conftest import ORGS
from kim_headers import STATUTE
from kim_inbox import WAIT, Inbox, state_of, uid, wait_state
from kim_peer import FarBroker, seal_to

LOCAL, FAR, OTHER = "kim.test", "broker.far", "broker.other"
JC, SOZ, AA, AUDITOR, OPERATOR = ("jc.rheine", "soz.rheine", "aa.rheine", "dsb.steinfurt",
                                  "ops.steinfurt")
SOZ_FAR, JC_FAR, JA_OTHER = "soz.far", "jc.far", "ja.other"
SUBJECT, PURPOSE = "p-7f3a", "benefits"
DAY = 86400000

BAD_VALUE, UNKNOWN_RECIPIENT, SENDER_MISMATCH, FORBIDDEN, REVOKED = 110, 203, 204, 205, 210
BAD_STATE, NOT_PARTY, UNKNOWN_REFERRAL, UNKNOWN_CASE = 400, 401, 402, 403
REFERRAL_EXISTS, NOT_LEAD = 404, 405
POLICY_DENY, CONSENT_UNKNOWN, CONSENT_BOUND = 500, 502, 506
STALE = 212


def now_ms():
    return int(time.time() * 1000)


@pytest.fixture
def far():
    f = FarBroker(FAR)
    f.add(SOZ_FAR)
    f.add(JC_FAR, signing=True)
    yield f
    f.close()


@pytest.fixture
def district(brokers, far):
    """district(accept=True, **sections) -> (broker, inbound, outbound): a broker
    linked to `far`, the far side's directory published (all its agencies);
    if `accept`, the broker's link to it is served until up."""
    def start(accept=True, **sections):
        inbound = far.listen()
        b = brokers(peers=far.peers(), **sections)
        outbound = far.dial(b)
        assert outbound.hello()["cmd"] == "WELCOME"
        assert outbound.publish(far.directory()) == []
        if accept:
            inbound.accept()
        return b, inbound, outbound
    return start


@pytest.fixture
def other():
    """A second peer, broker.other, with one agency (a third district)."""
    f = FarBroker(OTHER)
    f.add(JA_OTHER)
    yield f
    f.close()


@pytest.fixture
def three_districts(brokers, far, other):
    """three_districts() -> (broker, far's inbound, far's outbound, other's
    inbound, other's outbound): a broker with both peers, each having
    published its directory, both links up."""
    def start():
        inbound, in_other = far.listen(), other.listen()
        b = brokers(peers=dict(far.peers(), **other.peers()))
        out, out_other = far.dial(b), other.dial(b)
        assert out.hello()["cmd"] == out_other.hello()["cmd"] == "WELCOME"
        assert out.publish(far.directory()) == []
        assert out_other.publish(other.directory()) == []
        inbound.accept()
        in_other.accept()
        return b, inbound, out, in_other, out_other
    return start


#   --- helpers ---------------------------------------------------------------------

def far_msg(far, sender, payload=b"", **fields):
    """A header of a far agency (an id of far.orgs) as the far broker logs it."""
    fields.setdefault("msg_id", uid("m"))
    return far.header(far.orgs[sender], payload, **fields)


def far_referral(far, sender, recipient, payload=b"", **extra):
    fields = dict(type="REFERRAL", recipient=recipient, referral_id=uid("r"),
                  case_id=uid("c"), subject=SUBJECT, purpose=PURPOSE, legal_basis=STATUTE)
    fields.update(extra)
    return far_msg(far, sender, payload, **fields)


def handed_over(far, recipient, referral_id, case_id, org, code, deadline, ref_msg_id=None,
                consent=None, sender=None, **extra):
    """A HANDED_OVER (§16.6, §9.1) as a far broker makes it: in its own name (or
    `sender`), the referral's record as it holds it; `legal_basis` only for a
    referral under a consent."""
    fields = dict(type="HANDED_OVER", msg_id=uid("b"), recipient=recipient,
                  referral_id=referral_id, ref_msg_id=ref_msg_id or uid("m"),
                  case_id=case_id, purpose=PURPOSE, deadline=deadline, code=code, org=org)
    if consent is not None:
        fields["legal_basis"] = {"kind": "consent", "consent_id": consent}
    fields.update(extra)
    return far.header(sender or far.name, **fields)


def refer(client, recipient, case_id, plaintext=b"", **extra):
    """A REFERRAL of `client` under a statute P1 allows; the header sent."""
    hdr = kim_headers.referral(uid("r"), case_id, recipient, msg_id=uid("m"), **extra)
    client.send(hdr, plaintext)
    return hdr


def refusal(answer):
    """(code, reason, path) of a PEER_REFUSED (§16.4)."""
    assert answer is not None, "no answer to the PEER_FORWARD"
    assert answer["cmd"] == "PEER_REFUSED", answer
    assert isinstance(answer.get("text"), str)
    return answer["code"], answer["reason"], answer.get("path")


def acked(out, hdr, payload=None):
    """Forwards `hdr` from the far side; asserts the plain PEER_ACK (§16.4)."""
    seq, answer = out.forward(hdr, payload)
    assert answer == {"cmd": "PEER_ACK", "seq": seq}, answer
    return seq


def rejected(client, hdr, payload=b""):
    """The REJECT (as kim.Rejected) a SEND of `hdr` gets."""
    with pytest.raises(kim.Rejected) as info:
        client.send(hdr, payload)
    return info.value


def forwards(inbound, count):
    """The next `count` PEER_FORWARDs on the broker's link, each acknowledged."""
    got = []
    for _ in range(count):
        fwd = inbound.forward()
        assert fwd is not None, "only %d of %d forwards came: %r" % (
            len(got), count, [f["hdr"]["type"] for f in got])
        inbound.ack(fwd["seq"])
        got.append(fwd)
    return got


def referral_row(client, rid):
    rows = client.referral_query(referral_id=rid)
    assert len(rows) == 1, rows
    return rows[0]


def state_records(b, connect_to):
    """The bodies of the log's state records (kind 6, §9.4), read by the auditor."""
    auditor = connect_to(b, AUDITOR)
    bodies = [msgpack.unpackb(bytes(r["body"]), raw=False) for r in auditor.query(timeout=WAIT)
              if r["kind"] == 6]
    auditor.close()
    return bodies


def links(op):
    """The link lines of an operator's STATUS_REPLY (§8.9), [] without `body`."""
    op._send_cmd({"cmd": "STATUS"})
    reply = op._wait(lambda c: c["cmd"] == "STATUS_REPLY", None, WAIT)
    body = reply.get("body")
    return [] if body is None else [json.loads(line) for line in
                                    bytes(body).decode("utf-8").splitlines()]


def reload(op):
    op._send_cmd({"cmd": "RELOAD"})
    return op._wait(lambda c: c["cmd"] == "RELOADED", None, WAIT)


def write_peers(b, peers):
    """Rewrites the broker's config with `peers` (far.peers() entries) as its
    peers section, or none; every other line stays (the keys too)."""
    with open(b.config, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept, inside = [], False
    for line in lines:
        if line and not line.startswith(" "):
            inside = line.strip() == "peers"
        if not inside:
            kept.append(line)
    if peers:
        block = ["peers"]
        for name, keys in peers.items():
            block.append("    " + name)
            block += ["        %s = %s" % item for item in keys.items()]
        at = kept.index("orgs")
        kept[at:at] = block
    with open(b.config, "w", encoding="utf-8") as f:
        f.write("\n".join(kept) + "\n")


def far_case_for_soz(far, out, soz, inbox, inbound, referrals=()):
    """A case of jc.far's (unknown here) offered to soz.rheine and accepted: its
    case_id; the HANDOVER_ACCEPT read off the link."""
    case_id = uid("c")
    offer = far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=SOZ, case_id=case_id,
                    subject=SUBJECT, purpose=PURPOSE, legal_basis=STATUTE,
                    referrals=list(referrals))
    acked(out, offer)
    assert inbox.wait(type="HANDOVER_OFFER", case_id=case_id)
    soz.send({"type": "HANDOVER_ACCEPT", "msg_id": uid("m"), "recipient": JC_FAR,
              "case_id": case_id, "ref_msg_id": offer["msg_id"]})
    [accept] = forwards(inbound, 1)
    assert accept["hdr"]["type"] == "HANDOVER_ACCEPT", accept["hdr"]
    return case_id


#   --- handover from a lead here to a case manager there (§16.6, §9.4) ------------

def test_handover_to_far_office_moves_lead_and_hands_over_referrals(district, far,
                                                                    connect_to):
    """§16.6/§9.4: the offer goes over the link; the far HANDOVER_ACCEPT moves the
    lead and the listed open referrals' sender here; for each listed open
    referral to a local office a HANDED_OVER (its record, a consent as
    `legal_basis`) follows on the link, before later answers."""
    b, inbound, out = district()
    jc, soz, aa = connect_to(b, JC), connect_to(b, SOZ), connect_to(b, AA)
    jc_inbox, soz_inbox = Inbox(jc), Inbox(soz)
    case_id, consent = uid("c"), uid("g")
    r_local = refer(jc, SOZ, case_id)
    assert soz_inbox.wait(referral_id=r_local["referral_id"])
    soz.send({"type": "ACCEPT", "msg_id": uid("m"), "recipient": JC,
              "referral_id": r_local["referral_id"]})
    r_far = refer(jc, JC_FAR, case_id)
    r_aa = refer(jc, AA, case_id)
    jc.send({"type": "CONSENT_GRANT", "msg_id": uid("m"), "case_id": case_id,
             "subject": SUBJECT, "consent": consent, "recipients": [AA],
             "purposes": [PURPOSE], "valid_until": now_ms() + DAY})
    r_consent = refer(jc, AA, case_id, legal_basis={"kind": "consent", "consent_id": consent})
    r_closed = refer(jc, AA, case_id)
    aa.send({"type": "DECLINE", "msg_id": uid("m"), "recipient": JC,
             "referral_id": r_closed["referral_id"], "code": "capacity"})
    deadlines = {r["referral_id"]: referral_row(jc, r["referral_id"])["deadline"]
                 for r in (r_local, r_consent)}
    listed = [r["referral_id"] for r in (r_local, r_far, r_consent, r_closed)]
    offer = {"type": "HANDOVER_OFFER", "msg_id": uid("m"), "recipient": SOZ_FAR,
             "case_id": case_id, "subject": SUBJECT, "purpose": PURPOSE, "legal_basis": STATUTE,
             "referrals": listed}
    #   Checked by the offering broker: only the lead offers
    assert rejected(soz, dict(offer, msg_id=uid("m"))).code == NOT_LEAD
    jc.send(offer)
    sent = forwards(inbound, 2)
    assert [f["hdr"]["type"] for f in sent] == ["REFERRAL", "HANDOVER_OFFER"]
    assert {k: sent[1]["hdr"].get(k) for k in ("sender", "recipient", "case_id", "referrals")} == {
        "sender": JC, "recipient": SOZ_FAR, "case_id": case_id, "referrals": listed}
    assert inbound.quiet("PEER_FORWARD") == []

    accept = far_msg(far, SOZ_FAR, type="HANDOVER_ACCEPT", recipient=JC, case_id=case_id,
                     ref_msg_id=offer["msg_id"])
    acked(out, accept)
    assert jc_inbox.wait(type="HANDOVER_ACCEPT", msg_id=accept["msg_id"])
    #   A HANDED_OVER for each listed open referral to a local office; none for the
    #   one to jc.far (the new lead's district holds it), the closed one or the
    #   unlisted one. Their order among themselves the spec does not give.
    notices = {f["hdr"]["referral_id"]: f["hdr"] for f in forwards(inbound, 2)}
    fields = ("type", "sender", "recipient", "referral_id", "case_id", "org", "code",
              "deadline", "ref_msg_id", "purpose", "legal_basis")
    expected = {
        r_local["referral_id"]: dict(org=SOZ, code="accepted", ref_msg_id=r_local["msg_id"],
                                     legal_basis=None),
        r_consent["referral_id"]: dict(org=AA, code="sent", ref_msg_id=r_consent["msg_id"],
                                       legal_basis={"kind": "consent", "consent_id": consent}),
    }
    assert sorted(notices) == sorted(expected)
    for rid, want in expected.items():
        assert {k: notices[rid].get(k) for k in fields} == dict(
            want, type="HANDED_OVER", sender=LOCAL, recipient=SOZ_FAR, referral_id=rid,
            case_id=case_id, deadline=deadlines[rid], purpose=PURPOSE), rid
    assert state_of(jc, r_closed["referral_id"]) == "DECLINED"

    #   The old lead may neither close nor offer the case any more
    assert rejected(jc, {"type": "CASE_CLOSED", "msg_id": uid("m"),
                         "case_id": case_id}).code == NOT_LEAD
    assert rejected(jc, dict(offer, msg_id=uid("m"), recipient=AA)).code == NOT_LEAD
    #   §9.3: nor grant a consent in it
    assert rejected(jc, {"type": "CONSENT_GRANT", "msg_id": uid("m"), "case_id": case_id,
                         "subject": SUBJECT, "consent": uid("g"), "recipients": [AA],
                         "purposes": [PURPOSE], "valid_until": now_ms() + DAY}).code == NOT_LEAD
    #   The listed open referrals are the new lead's; the unlisted one stays jc's
    row = referral_row(soz, r_local["referral_id"])
    assert (row["sender"], row["recipient"], row["state"]) == (SOZ_FAR, SOZ, "ACCEPTED")
    assert state_of(jc, r_local["referral_id"]) is None
    assert state_of(jc, r_far["referral_id"]) is None
    assert referral_row(jc, r_aa["referral_id"])["sender"] == JC
    #   An answer to the old lead is NOT_PARTY naming the new one; to the new lead
    #   it goes over the link, behind the HANDED_OVER
    wrong = rejected(soz, {"type": "STATUS", "msg_id": uid("m"), "recipient": JC,
                           "referral_id": r_local["referral_id"], "code": "in_progress"})
    assert wrong.code == NOT_PARTY and SOZ_FAR in wrong.text
    status = {"type": "STATUS", "msg_id": uid("m"), "recipient": SOZ_FAR,
              "referral_id": r_local["referral_id"], "code": "in_progress"}
    soz.send(status)
    [answer] = forwards(inbound, 1)
    assert (answer["hdr"]["type"], answer["hdr"]["msg_id"]) == ("STATUS", status["msg_id"])
    assert state_of(soz, r_local["referral_id"]) == "IN_PROGRESS"
    #   The new lead closes the case here; the local participants get its copy
    close = far_msg(far, SOZ_FAR, type="CASE_CLOSED", case_id=case_id)
    acked(out, close)
    assert jc_inbox.wait(type="CASE_CLOSED", msg_id=close["msg_id"])
    assert soz_inbox.wait(type="CASE_CLOSED", msg_id=close["msg_id"])

    #   §9.4: the state records of the handover
    records = state_records(b, connect_to)
    assert any(r.get("case_id") == case_id and "referral_id" not in r
               and (r.get("from"), r.get("to"), r.get("lead_from"), r.get("lead_to")) ==
               ("OPEN", "OPEN", JC, SOZ_FAR) for r in records), records
    for rid, state in ((r_local["referral_id"], "ACCEPTED"), (r_far["referral_id"], "SENT")):
        assert any(r.get("referral_id") == rid and
                   (r.get("from"), r.get("to"), r.get("sender_from"), r.get("sender_to")) ==
                   (state, state, JC, SOZ_FAR) for r in records), (rid, records)
    for rid in (r_aa["referral_id"], r_closed["referral_id"]):
        assert not any(r.get("referral_id") == rid and "sender_to" in r for r in records)


def test_far_handover_decline_keeps_the_lead(district, far, connect_to):
    """§16.6/§9.4: a HANDOVER_DECLINE from the far office reaches the lead, which
    stays lead; the declined offer takes no HANDOVER_ACCEPT (BAD_STATE); no
    HANDED_OVER is made."""
    b, inbound, out = district()
    jc = connect_to(b, JC)
    jc_inbox = Inbox(jc)
    case_id = uid("c")
    r = refer(jc, SOZ, case_id)
    offer = {"type": "HANDOVER_OFFER", "msg_id": uid("m"), "recipient": SOZ_FAR,
             "case_id": case_id, "legal_basis": STATUTE, "referrals": [r["referral_id"]]}
    jc.send(offer)
    forwards(inbound, 1)
    decline = far_msg(far, SOZ_FAR, type="HANDOVER_DECLINE", recipient=JC, case_id=case_id,
                      ref_msg_id=offer["msg_id"], code="not_resident")
    acked(out, decline)
    got = jc_inbox.wait(type="HANDOVER_DECLINE", msg_id=decline["msg_id"])
    assert len(got) == 1 and got[0].hdr["code"] == "not_resident"
    late = far_msg(far, SOZ_FAR, type="HANDOVER_ACCEPT", recipient=JC, case_id=case_id,
                   ref_msg_id=offer["msg_id"])
    assert refusal(out.forward(late)[1])[:2] == (BAD_STATE, "BAD_STATE")
    assert inbound.quiet("PEER_FORWARD") == []
    assert referral_row(jc, r["referral_id"])["sender"] == JC
    #   Still the lead: it may offer the case again
    assert jc.send(dict(offer, msg_id=uid("m"), recipient=AA))["cmd"] == "RECEIPT"


def test_refused_handed_over_is_logged_and_no_office_told(district, far, connect_to):
    """§16.6: a PEER_REFUSED of a HANDED_OVER is logged by the offering broker; no
    office is told (the notice is its own), and it leaves the link mailbox."""
    b, inbound, out = district()
    jc, soz = connect_to(b, JC), connect_to(b, SOZ)
    inboxes = [Inbox(jc), Inbox(soz)]
    case_id = uid("c")
    r = refer(jc, SOZ, case_id)
    assert inboxes[1].wait(referral_id=r["referral_id"])
    assert inboxes[0].wait(type="DELIVERED", referral_id=r["referral_id"])
    offer = {"type": "HANDOVER_OFFER", "msg_id": uid("m"), "recipient": SOZ_FAR,
             "case_id": case_id, "legal_basis": STATUTE, "referrals": [r["referral_id"]]}
    jc.send(offer)
    forwards(inbound, 1)
    acked(out, far_msg(far, SOZ_FAR, type="HANDOVER_ACCEPT", recipient=JC, case_id=case_id,
                       ref_msg_id=offer["msg_id"]))
    notice = inbound.forward()
    assert notice is not None and notice["hdr"]["type"] == "HANDED_OVER"
    assert notice["hdr"]["code"] == "delivered"
    inbound.refuse(notice["seq"], UNKNOWN_CASE, "UNKNOWN_CASE", "no such case here")
    for inbox in inboxes:
        inbox.settle()
        assert [d.hdr for d in inbox.got if d.hdr["type"] == "UNDELIVERABLE"] == []
    #   The referral stays moved at this broker
    assert referral_row(soz, r["referral_id"])["sender"] == SOZ_FAR
    inbound.drop()
    inbound.accept()
    assert [f["hdr"]["type"] for f in inbound.quiet("PEER_FORWARD")] == []


#   --- handover from a lead there to a case manager here (§16.6) ------------------

def test_far_offer_opens_case_and_handed_over_opens_referral(district, far, connect_to):
    """§16.6: the far offer opens the case (its sender lead); the local accept goes
    back and moves the lead (old lead NOT_LEAD); until the HANDED_OVER the new
    lead's message about the referral is UNKNOWN_REFERRAL; the notice opens it
    in its state with the new lead as sender, a state record, a delivery; then
    answers and WITHDRAW pass both life cycles."""
    b, inbound, out = district()
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    case_id, rid, ref_msg = uid("c"), uid("r"), uid("m")
    offer = far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=SOZ, case_id=case_id,
                    subject=SUBJECT, purpose=PURPOSE, legal_basis=STATUTE, referrals=[rid])
    acked(out, offer)
    assert inbox.wait(type="HANDOVER_OFFER", msg_id=offer["msg_id"])
    #   Offered, not yet lead
    assert rejected(soz, {"type": "CASE_CLOSED", "msg_id": uid("m"),
                          "case_id": case_id}).code == NOT_LEAD
    accept = {"type": "HANDOVER_ACCEPT", "msg_id": uid("m"), "recipient": JC_FAR,
              "case_id": case_id, "ref_msg_id": offer["msg_id"]}
    soz.send(accept)
    [fwd] = forwards(inbound, 1)
    assert {k: fwd["hdr"].get(k) for k in ("type", "msg_id", "sender", "recipient",
                                           "case_id", "ref_msg_id")} == dict(accept, sender=SOZ)
    #   The old lead may neither offer nor close the case here
    again = far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=AA, case_id=case_id,
                    legal_basis=STATUTE)
    assert refusal(out.forward(again)[1])[:2] == (NOT_LEAD, "NOT_LEAD")
    close = far_msg(far, JC_FAR, type="CASE_CLOSED", case_id=case_id)
    assert refusal(out.forward(close)[1])[:2] == (NOT_LEAD, "NOT_LEAD")

    withdraw = {"type": "WITHDRAW", "msg_id": uid("m"), "recipient": SOZ_FAR,
                "referral_id": rid}
    assert rejected(soz, withdraw).code == UNKNOWN_REFERRAL
    deadline = now_ms() + 7 * DAY
    notice = handed_over(far, SOZ, rid, case_id, SOZ_FAR, "accepted", deadline,
                         ref_msg_id=ref_msg)
    acked(out, notice)
    got = inbox.wait(type="HANDED_OVER", msg_id=notice["msg_id"])
    assert len(got) == 1
    assert {k: v for k, v in got[0].hdr.items() if k != "rule"} == notice
    row = referral_row(soz, rid)
    assert {k: row[k] for k in ("state", "sender", "recipient", "case_id", "purpose",
                                "deadline", "consent_id")} == {
        "state": "ACCEPTED", "sender": SOZ, "recipient": SOZ_FAR, "case_id": case_id,
        "purpose": PURPOSE, "deadline": deadline, "consent_id": ""}
    #   In the referral index: the new lead finds it by its case
    assert [r["referral_id"] for r in soz.referral_query(case_id=case_id)] == [rid]
    records = state_records(b, connect_to)
    assert any(r.get("referral_id") == rid and
               (r.get("from"), r.get("to"), r.get("sender_to"), r.get("handed_over_by")) ==
               ("ACCEPTED", "ACCEPTED", SOZ, FAR) for r in records), records
    assert any(r.get("case_id") == case_id and "referral_id" not in r and
               (r.get("lead_from"), r.get("lead_to")) == (JC_FAR, SOZ) for r in records), records

    #   Answers pass the life cycle here: STATUS moves it, an ACCEPT now is BAD_STATE
    status = far_msg(far, SOZ_FAR, type="STATUS", recipient=SOZ, referral_id=rid,
                     code="in_progress")
    acked(out, status)
    assert inbox.wait(type="STATUS", msg_id=status["msg_id"])
    assert state_of(soz, rid) == "IN_PROGRESS"
    late = far_msg(far, SOZ_FAR, type="ACCEPT", recipient=SOZ, referral_id=rid)
    assert refusal(out.forward(late)[1])[:2] == (BAD_STATE, "BAD_STATE")
    #   The refused WITHDRAW may now be sent again (same msg_id) and crosses the link
    assert soz.send(withdraw)["cmd"] == "RECEIPT"
    [sent] = forwards(inbound, 1)
    assert (sent["hdr"]["type"], sent["hdr"]["msg_id"]) == ("WITHDRAW", withdraw["msg_id"])
    assert state_of(soz, rid) == "WITHDRAWN"
    #   The new lead may close the case
    assert soz.send({"type": "CASE_CLOSED", "msg_id": uid("m"),
                     "case_id": case_id})["cmd"] == "RECEIPT"


def test_local_decline_of_a_far_offer_keeps_the_far_lead(district, far, connect_to):
    """§16.6/§9.4: a local HANDOVER_DECLINE of a far offer travels back over the
    link; the far office stays lead (it may offer again), the decliner is not."""
    b, inbound, out = district()
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    case_id = uid("c")
    offer = far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=SOZ, case_id=case_id,
                    legal_basis=STATUTE)
    acked(out, offer)
    assert inbox.wait(type="HANDOVER_OFFER", msg_id=offer["msg_id"])
    decline = {"type": "HANDOVER_DECLINE", "msg_id": uid("m"), "recipient": JC_FAR,
               "case_id": case_id, "ref_msg_id": offer["msg_id"], "code": "not_resident"}
    soz.send(decline)
    [sent] = forwards(inbound, 1)
    assert {k: sent["hdr"].get(k) for k in decline} == decline
    assert rejected(soz, {"type": "CASE_CLOSED", "msg_id": uid("m"),
                          "case_id": case_id}).code == NOT_LEAD
    acked(out, far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=AA, case_id=case_id,
                       legal_basis=STATUTE))


def test_far_offer_of_a_case_led_here_is_refused(district, far, connect_to):
    """§16.6/§9.4: the far broker opens only a case it does not know; of a case
    known here a far office's offer passes this broker's case rules: NOT_LEAD
    from a participant, UNKNOWN_CASE from an office taking no part."""
    b, inbound, out = district()
    jc = connect_to(b, JC)
    case_id = uid("c")
    refer(jc, JC_FAR, case_id)
    forwards(inbound, 1)
    participant = far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=SOZ, case_id=case_id,
                          legal_basis=STATUTE)
    assert refusal(out.forward(participant)[1])[:2] == (NOT_LEAD, "NOT_LEAD")
    outsider = far_msg(far, SOZ_FAR, type="HANDOVER_OFFER", recipient=SOZ, case_id=case_id,
                       legal_basis=STATUTE)
    assert refusal(out.forward(outsider)[1])[:2] == (UNKNOWN_CASE, "UNKNOWN_CASE")
    #   jc.rheine still leads
    assert jc.send({"type": "HANDOVER_OFFER", "msg_id": uid("m"), "recipient": SOZ,
                    "case_id": case_id, "legal_basis": STATUTE})["cmd"] == "RECEIPT"


def test_far_case_handed_to_a_second_local_office_needs_no_notice(district, far,
                                                                  connect_to):
    """§16.6: a far lead's referral to a local office, listed in its offer to
    another local office, is moved by this broker's own HANDOVER_ACCEPT (no
    HANDED_OVER needed): its answers go to the new lead, the old one is
    NOT_PARTY for them."""
    b, inbound, out = district()
    soz, aa = connect_to(b, SOZ), connect_to(b, AA)
    soz_inbox, aa_inbox = Inbox(soz), Inbox(aa)
    case_id = uid("c")
    ref = far_referral(far, JC_FAR, SOZ, case_id=case_id)
    acked(out, ref)
    assert soz_inbox.wait(referral_id=ref["referral_id"], type="REFERRAL")
    [delivered] = forwards(inbound, 1)
    assert delivered["hdr"]["type"] == "DELIVERED"
    offer = far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=AA, case_id=case_id,
                    legal_basis=STATUTE, referrals=[ref["referral_id"], uid("r")])
    acked(out, offer)
    assert aa_inbox.wait(type="HANDOVER_OFFER", msg_id=offer["msg_id"])
    aa.send({"type": "HANDOVER_ACCEPT", "msg_id": uid("m"), "recipient": JC_FAR,
             "case_id": case_id, "ref_msg_id": offer["msg_id"]})
    [accept] = forwards(inbound, 1)
    assert accept["hdr"]["type"] == "HANDOVER_ACCEPT"
    assert inbound.quiet("PEER_FORWARD") == []
    row = referral_row(soz, ref["referral_id"])
    assert (row["sender"], row["recipient"], row["state"]) == (AA, SOZ, "DELIVERED")
    wrong = rejected(soz, {"type": "ACCEPT", "msg_id": uid("m"), "recipient": JC_FAR,
                           "referral_id": ref["referral_id"]})
    assert wrong.code == NOT_PARTY and AA in wrong.text
    accept_answer = {"type": "ACCEPT", "msg_id": uid("m"), "recipient": AA,
                     "referral_id": ref["referral_id"]}
    soz.send(accept_answer)
    assert aa_inbox.wait(type="ACCEPT", msg_id=accept_answer["msg_id"])
    assert state_of(aa, ref["referral_id"]) == "ACCEPTED"
    refused = out.forward(far_msg(far, JC_FAR, type="WITHDRAW", recipient=SOZ,
                                  referral_id=ref["referral_id"]))[1]
    #   §9.4: the old lead is no party of the referral any more
    assert refusal(refused)[:2] == (UNKNOWN_REFERRAL, "UNKNOWN_REFERRAL")


def test_handed_over_checks(district, far, connect_to):
    """§16.6/§16.4: a HANDED_OVER is taken only in the peer's own name (FORBIDDEN
    under an agency's, SENDER_MISMATCH under another broker's), with `org`
    homed at the peer (SENDER_MISMATCH), `code` an open state (BAD_VALUE), the
    case known (UNKNOWN_CASE) and led by its recipient (NOT_LEAD), its
    referral_id not another referral's (REFERRAL_EXISTS); a record with the
    same parties is kept as it is. Nothing refused is delivered."""
    b, inbound, out = district()
    soz, jc = connect_to(b, SOZ), connect_to(b, JC)
    inbox = Inbox(soz)
    case_id = far_case_for_soz(far, out, soz, inbox, inbound)
    deadline = now_ms() + 7 * DAY
    refused_ids = []

    def refused(hdr):
        refused_ids.append(hdr["msg_id"])
        return refusal(out.forward(hdr)[1])[:2]

    def notice(**changes):
        fields = dict(recipient=SOZ, referral_id=uid("r"), case_id=case_id, org=SOZ_FAR,
                      code="accepted", deadline=deadline)
        fields.update(changes)
        return handed_over(far, **fields)

    agency = notice(sender=far.orgs[JC_FAR])
    assert "sig" in agency
    assert refusal(out.forward(agency)[1]) == (FORBIDDEN, "FORBIDDEN", "hdr.type")
    refused_ids.append(agency["msg_id"])
    assert refused(notice(sender=OTHER)) == (SENDER_MISMATCH, "SENDER_MISMATCH")
    assert refused(notice(org=AA)) == (SENDER_MISMATCH, "SENDER_MISMATCH")
    assert refused(notice(org="soz.nowhere")) == (SENDER_MISMATCH, "SENDER_MISMATCH")
    for code in ("completed", "suspended", "undeliverable", "bogus"):
        assert refused(notice(code=code)) == (BAD_VALUE, "BAD_VALUE"), code
    assert refused(notice(case_id=uid("c"))) == (UNKNOWN_CASE, "UNKNOWN_CASE")
    #   A case offered to soz.rheine but not accepted: jc.far leads it
    offered = uid("c")
    acked(out, far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=SOZ, case_id=offered,
                       legal_basis=STATUTE))
    assert refused(notice(case_id=offered)) == (NOT_LEAD, "NOT_LEAD")
    #   A local case led by jc.rheine, the notice to aa.rheine (a participant)
    local_case = uid("c")
    taken = refer(jc, AA, local_case)
    assert refused(notice(recipient=AA, case_id=local_case)) == (NOT_LEAD, "NOT_LEAD")
    assert refused(notice(referral_id=taken["referral_id"])) == (REFERRAL_EXISTS,
                                                                "REFERRAL_EXISTS")
    #   The same parties again: kept as it is (its state moved on meanwhile). Not
    #   a refusal, so the PEER_ACK of §16.4 (the spec names no other answer)
    first = notice()
    rid = first["referral_id"]
    acked(out, first)
    acked(out, far_msg(far, SOZ_FAR, type="STATUS", recipient=SOZ, referral_id=rid,
                       code="in_progress"))
    assert state_of(soz, rid) == "IN_PROGRESS"
    seq, answer = out.forward(notice(referral_id=rid))
    assert answer is not None and answer["cmd"] == "PEER_ACK" and answer["seq"] == seq, answer
    row = referral_row(soz, rid)
    assert (row["state"], row["sender"], row["recipient"]) == ("IN_PROGRESS", SOZ, SOZ_FAR)
    inbox.settle()
    assert [d.hdr["msg_id"] for d in inbox.got if d.hdr["msg_id"] in refused_ids] == []
    assert state_of(soz, taken["referral_id"]) is None
    assert referral_row(jc, taken["referral_id"])["recipient"] == AA


def test_handed_over_legal_basis_is_a_consent_only(district, far, connect_to):
    """§9.1/§16.6: HANDED_OVER allows `legal_basis` only as a consent; a statute
    one is refused with BAD_VALUE ("A refusal answers PEER_REFUSED", §16.6), and
    nothing is opened or delivered."""
    b, inbound, out = district()
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    case_id = far_case_for_soz(far, out, soz, inbox, inbound)
    notice = handed_over(far, SOZ, uid("r"), case_id, SOZ_FAR, "accepted", now_ms() + DAY,
                         legal_basis=STATUTE)
    answer = out.forward(notice)[1]
    assert answer is not None and answer["cmd"] == "PEER_REFUSED", answer
    assert (answer["code"], answer.get("path")) == (BAD_VALUE, "hdr.legal_basis.kind"), answer
    assert state_of(soz, notice["referral_id"]) is None


def test_handed_over_starts_the_referrals_timers(district, far, connect_to):
    """§16.6/§9.4: the HANDED_OVER referral gets its deadline's timer (a DELIVERED
    one turns OVERDUE with a REMINDER to the new lead, later EXPIRED); an
    OVERDUE one the expiry timer only; an ACCEPTED one none."""
    b, inbound, out = district(lifecycle={"deadline_seconds": 3600, "expire_seconds": 1})
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    case_id = far_case_for_soz(far, out, soz, inbox, inbound)
    now = now_ms()
    due = handed_over(far, SOZ, uid("r"), case_id, SOZ_FAR, "delivered", now + 4000)
    late = handed_over(far, SOZ, uid("r"), case_id, SOZ_FAR, "overdue", now - 1000)
    taken = handed_over(far, SOZ, uid("r"), case_id, SOZ_FAR, "accepted", now + 1000)
    for hdr in (due, late, taken):
        acked(out, hdr)
    assert state_of(soz, due["referral_id"]) == "DELIVERED"
    assert inbox.wait(type="EXPIRED", referral_id=late["referral_id"])
    assert inbox.wait(type="REMINDER", referral_id=due["referral_id"])
    assert inbox.wait(type="EXPIRED", referral_id=due["referral_id"])
    assert state_of(soz, due["referral_id"]) == "EXPIRED"
    assert state_of(soz, late["referral_id"]) == "EXPIRED"
    inbox.settle()
    assert inbox.where(type="REMINDER", referral_id=late["referral_id"]) == []
    assert state_of(soz, taken["referral_id"]) == "ACCEPTED"
    assert [d.hdr["type"] for d in inbox.got if d.hdr.get("referral_id") ==
            taken["referral_id"]] == ["HANDED_OVER"]


def test_handed_over_under_consent_is_suspended_by_its_revocation(district, far, connect_to):
    """§16.6/§9.3: a HANDED_OVER with a consent `legal_basis` opens the referral
    under that consent (one registered here from the peer, §16.5); the new lead
    may cite the consent, the old one not (CONSENT_BOUND); its revocation by
    the new lead suspends the referral."""
    b, inbound, out = district()
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    case_id, consent = uid("c"), uid("g")
    acked(out, far_msg(far, JC_FAR, type="CONSENT_GRANT", case_id=case_id, subject=SUBJECT,
                       consent=consent, recipients=[SOZ_FAR, SOZ], purposes=[PURPOSE],
                       valid_until=now_ms() + DAY))
    offer = far_msg(far, JC_FAR, type="HANDOVER_OFFER", recipient=SOZ, case_id=case_id,
                    subject=SUBJECT, purpose=PURPOSE, legal_basis=STATUTE)
    acked(out, offer)
    assert inbox.wait(type="HANDOVER_OFFER", msg_id=offer["msg_id"])
    soz.send({"type": "HANDOVER_ACCEPT", "msg_id": uid("m"), "recipient": JC_FAR,
              "case_id": case_id, "ref_msg_id": offer["msg_id"]})
    notice = handed_over(far, SOZ, uid("r"), case_id, SOZ_FAR, "accepted",
                         now_ms() + 7 * DAY, consent=consent)
    rid = notice["referral_id"]
    acked(out, notice)
    assert inbox.wait(type="HANDED_OVER", referral_id=rid)
    assert referral_row(soz, rid)["consent_id"] == consent
    #   §9.3 binding 3: the consent may be cited by the case's lead now (a
    #   recipient it names), no longer by the far office that recorded it
    old_lead = far_referral(far, JC_FAR, SOZ, case_id=case_id,
                            legal_basis={"kind": "consent", "consent_id": consent})
    assert refusal(out.forward(old_lead)[1]) == (CONSENT_BOUND, "CONSENT_BOUND",
                                                 "hdr.legal_basis.consent_id")
    cited = refer(soz, SOZ_FAR, case_id, legal_basis={"kind": "consent", "consent_id": consent})
    assert referral_row(soz, cited["referral_id"])["consent_id"] == consent
    soz.send({"type": "CONSENT_REVOKE", "msg_id": uid("m"), "consent": consent})
    assert wait_state(soz, rid, "SUSPENDED") == "SUSPENDED"


#   --- FORWARD across districts (§16.6, §16.8, §9.4) -------------------------------

def _far_referral_at_soz(district, far, connect_to):
    """jc.far's REFERRAL to soz.rheine, taken and delivered: (the link the broker
    dials, the far side's own connection, soz's client, its Inbox, the REFERRAL's
    header)."""
    b, inbound, out = district()
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    original = far_referral(far, JC_FAR, SOZ)
    acked(out, original)
    assert inbox.wait(referral_id=original["referral_id"], type="REFERRAL")
    return inbound, out, soz, inbox, original


def test_forward_to_an_office_of_the_senders_district(district, far, connect_to):
    """§16.6: a local office forwards a far referral to another office of the far
    district: one PEER_FORWARD with the payload sealed to `org`; both referrals
    change here; the far DELIVERED and the answers of `org` come back."""
    inbound, out, soz, inbox, original = _far_referral_at_soz(district, far, connect_to)
    rid = original["referral_id"]
    [delivered] = forwards(inbound, 1)
    assert delivered["hdr"]["type"] == "DELIVERED"
    fwd_id = uid("m")
    soz.send({"type": "FORWARD", "msg_id": fwd_id, "recipient": JC_FAR, "referral_id": rid,
              "org": SOZ_FAR, "purpose": PURPOSE, "legal_basis": STATUTE},
             b"for the far social office")
    [sent] = forwards(inbound, 1)
    assert {k: sent["hdr"].get(k) for k in ("type", "msg_id", "sender", "recipient", "org")} == {
        "type": "FORWARD", "msg_id": fwd_id, "sender": SOZ, "recipient": JC_FAR, "org": SOZ_FAR}
    assert far.orgs[SOZ_FAR].open(sent.payload) == b"for the far social office"
    assert inbound.quiet("PEER_FORWARD") == []
    assert state_of(soz, rid) == "FORWARDED"
    row = referral_row(soz, fwd_id)
    assert {k: row[k] for k in ("state", "sender", "recipient", "forwarded_from", "case_id")} == {
        "state": "SENT", "sender": SOZ, "recipient": SOZ_FAR, "forwarded_from": rid,
        "case_id": original["case_id"]}
    acked(out, far.header(FAR, type="DELIVERED", msg_id=uid("b"), recipient=SOZ,
                          referral_id=fwd_id, ref_msg_id=fwd_id))
    assert inbox.wait(type="DELIVERED", referral_id=fwd_id)
    assert wait_state(soz, fwd_id, "DELIVERED") == "DELIVERED"
    accept = far_msg(far, SOZ_FAR, type="ACCEPT", recipient=SOZ, referral_id=fwd_id)
    acked(out, accept)
    assert inbox.wait(type="ACCEPT", msg_id=accept["msg_id"])
    assert state_of(soz, fwd_id) == "ACCEPTED"


def test_forward_of_a_far_referral_to_a_local_office(district, far, connect_to):
    """§16.6/§9.4: a local office forwards a far referral to another local office:
    the FORWARD goes over the link to the referral's sender, `org` gets it here
    with the payload, and the new referral is local."""
    b, inbound, out = district()
    soz, aa = connect_to(b, SOZ), connect_to(b, AA)
    soz_inbox, aa_inbox = Inbox(soz), Inbox(aa)
    original = far_referral(far, JC_FAR, SOZ)
    rid = original["referral_id"]
    acked(out, original)
    assert soz_inbox.wait(referral_id=rid, type="REFERRAL")
    forwards(inbound, 1)
    fwd_id = uid("m")
    soz.send({"type": "FORWARD", "msg_id": fwd_id, "recipient": JC_FAR, "referral_id": rid,
              "org": AA, "purpose": PURPOSE, "legal_basis": STATUTE}, b"for aa.rheine")
    [sent] = forwards(inbound, 1)
    assert {k: sent["hdr"].get(k) for k in ("type", "msg_id", "recipient", "org")} == {
        "type": "FORWARD", "msg_id": fwd_id, "recipient": JC_FAR, "org": AA}
    got = aa_inbox.wait(type="FORWARD", msg_id=fwd_id)
    assert len(got) == 1 and got[0].payload == b"for aa.rheine"
    assert state_of(soz, rid) == "FORWARDED"
    assert wait_state(aa, fwd_id, "DELIVERED") == "DELIVERED"
    assert soz_inbox.wait(type="DELIVERED", referral_id=fwd_id)
    #   The DELIVERED of a local referral stays local
    assert inbound.quiet("PEER_FORWARD") == []


def test_refused_forward_closes_the_new_referral(district, far, connect_to):
    """§16.7/§16.8: when the far broker refuses a FORWARD, the referral it opened
    becomes UNDELIVERABLE and the forwarding office gets the UNDELIVERABLE;
    the forwarded referral stays FORWARDED (a refused answer is not undone)."""
    inbound, out, soz, inbox, original = _far_referral_at_soz(district, far, connect_to)
    rid = original["referral_id"]
    forwards(inbound, 1)
    fwd_id = uid("m")
    soz.send({"type": "FORWARD", "msg_id": fwd_id, "recipient": JC_FAR, "referral_id": rid,
              "org": SOZ_FAR, "purpose": PURPOSE, "legal_basis": STATUTE})
    sent = inbound.forward()
    assert sent is not None and sent["hdr"]["msg_id"] == fwd_id
    inbound.refuse(sent["seq"], POLICY_DENY, "POLICY_DENY", "no forwards here", rule="far_no_fwd")
    got = inbox.wait(type="UNDELIVERABLE", ref_msg_id=fwd_id)
    assert len(got) == 1
    assert (got[0].hdr["code"], got[0].hdr["org"], got[0].hdr.get("rule")) == (
        "policy_deny", FAR, "far_no_fwd")
    assert wait_state(soz, fwd_id, "UNDELIVERABLE") == "UNDELIVERABLE"
    assert state_of(soz, rid) == "FORWARDED"


def test_far_forward_to_its_own_district_reaches_the_sender(district, far, connect_to):
    """§16.6/§9.2: a FORWARD of a far office to an office of its own district
    reaches the referral's sender here (the payload, sealed to `org`, stays
    off its delivery); the referral is FORWARDED and the new one opened here
    (its id taken)."""
    b, inbound, out = district()
    jc = connect_to(b, JC)
    inbox = Inbox(jc)
    case_id = uid("c")
    hdr = refer(jc, SOZ_FAR, case_id)
    forwards(inbound, 1)
    sealed = seal_to(far.orgs[JC_FAR].public, b"for the far job centre")
    fwd = far_msg(far, SOZ_FAR, sealed, type="FORWARD", recipient=JC,
                  referral_id=hdr["referral_id"], org=JC_FAR, purpose=PURPOSE,
                  legal_basis=STATUTE)
    acked(out, fwd, sealed)
    got = inbox.wait(type="FORWARD", msg_id=fwd["msg_id"])
    assert len(got) == 1 and got[0].hdr["org"] == JC_FAR and got[0].payload == b""
    assert state_of(jc, hdr["referral_id"]) == "FORWARDED"
    taken = rejected(jc, kim_headers.referral(fwd["msg_id"], case_id, SOZ, msg_id=uid("m")))
    assert taken.code == REFERRAL_EXISTS


def test_far_forward_to_an_office_here(district, far, connect_to):
    """§16.6/§9.4: a far office forwards a local referral to another local office:
    the referral's sender gets the FORWARD without the payload, `org` gets it
    with the payload; the new referral (from the far office) is opened here,
    and `org`'s acknowledgement makes the DELIVERED that goes back."""
    b, inbound, out = district()
    jc, aa = connect_to(b, JC), connect_to(b, AA)
    jc_inbox, aa_inbox = Inbox(jc), Inbox(aa)
    hdr = refer(jc, SOZ_FAR, uid("c"))
    forwards(inbound, 1)
    aa_key = load_cert(os.path.join(b.keys, AA + ".cert"))[0]
    sealed = seal_to(aa_key, b"for the local employment agency")
    fwd = far_msg(far, SOZ_FAR, sealed, type="FORWARD", recipient=JC,
                  referral_id=hdr["referral_id"], org=AA, purpose=PURPOSE, legal_basis=STATUTE)
    acked(out, fwd, sealed)
    to_sender = jc_inbox.wait(type="FORWARD", msg_id=fwd["msg_id"])
    to_org = aa_inbox.wait(type="FORWARD", msg_id=fwd["msg_id"])
    assert len(to_sender) == 1 and to_sender[0].payload == b""
    assert len(to_org) == 1 and not to_org[0].sealed_error
    assert to_org[0].payload == b"for the local employment agency"
    assert state_of(jc, hdr["referral_id"]) == "FORWARDED"
    [notice] = forwards(inbound, 1)
    assert {k: notice["hdr"].get(k) for k in ("type", "sender", "recipient", "referral_id",
                                              "ref_msg_id")} == {
        "type": "DELIVERED", "sender": LOCAL, "recipient": SOZ_FAR,
        "referral_id": fwd["msg_id"], "ref_msg_id": fwd["msg_id"]}
    row = referral_row(aa, fwd["msg_id"])
    assert {k: row[k] for k in ("state", "sender", "recipient", "forwarded_from")} == {
        "state": "DELIVERED", "sender": SOZ_FAR, "recipient": AA,
        "forwarded_from": hdr["referral_id"]}
    aa.send({"type": "ACCEPT", "msg_id": uid("m"), "recipient": SOZ_FAR,
             "referral_id": fwd["msg_id"]})
    [answer] = forwards(inbound, 1)
    assert (answer["hdr"]["type"], answer["hdr"]["sender"]) == ("ACCEPT", AA)


def test_forward_to_a_third_district_is_refused(three_districts, far, other, connect_to):
    """§16.8/§9.4: a FORWARD's `org` is an office of this district or of the
    district of the referral's other party; any other is UNKNOWN_RECIPIENT at
    hdr.org with a text naming its broker, from a local office (REJECT) and
    from a far one (PEER_REFUSED)."""
    b, inbound, out, _, _ = three_districts()
    jc, soz = connect_to(b, JC), connect_to(b, SOZ)
    inbox = Inbox(soz)

    def forward_to(referral_id, org, recipient):
        return {"type": "FORWARD", "msg_id": uid("m"), "recipient": recipient,
                "referral_id": referral_id, "org": org, "purpose": PURPOSE,
                "legal_basis": STATUTE}

    #   A local referral: a far office is of neither party's district
    local = refer(jc, SOZ, uid("c"))
    assert inbox.wait(referral_id=local["referral_id"])
    e = rejected(soz, forward_to(local["referral_id"], SOZ_FAR, JC))
    assert (e.code, e.path) == (UNKNOWN_RECIPIENT, "hdr.org") and FAR in e.text
    #   A far referral: the other peer's office is of a third district
    remote = far_referral(far, JC_FAR, SOZ)
    acked(out, remote)
    assert inbox.wait(referral_id=remote["referral_id"])
    e = rejected(soz, forward_to(remote["referral_id"], JA_OTHER, JC_FAR))
    assert (e.code, e.path) == (UNKNOWN_RECIPIENT, "hdr.org") and OTHER in e.text
    assert wait_state(soz, local["referral_id"], "DELIVERED") == "DELIVERED"
    assert wait_state(soz, remote["referral_id"], "DELIVERED") == "DELIVERED"
    #   From the far office of a local referral, to the third district
    mine = refer(jc, SOZ_FAR, uid("c"))
    fwd = far_msg(far, SOZ_FAR, **forward_to(mine["referral_id"], JA_OTHER, JC))
    answer = out.forward(fwd)[1]
    assert refusal(answer) == (UNKNOWN_RECIPIENT, "UNKNOWN_RECIPIENT", "hdr.org")
    assert OTHER in answer["text"]
    assert state_of(jc, mine["referral_id"]) == "SENT"
    #   Only the REFERRAL and the DELIVERED went to the far side
    assert sorted(f["hdr"]["type"] for f in forwards(inbound, 2)) == ["DELIVERED", "REFERRAL"]
    assert inbound.quiet("PEER_FORWARD") == []


def test_handover_moves_a_third_districts_referral_here_only(three_districts, far, other,
                                                             connect_to):
    """§16.8: a listed referral to an office of a third district is moved at the
    offering broker only (no HANDED_OVER); that office's answer to the old
    lead is then refused NOT_PARTY (§9.4: the text names the new lead)."""
    b, inbound, out, in_other, out_other = three_districts()
    jc = connect_to(b, JC)
    case_id = uid("c")
    third = refer(jc, JA_OTHER, case_id)
    offer = {"type": "HANDOVER_OFFER", "msg_id": uid("m"), "recipient": SOZ_FAR,
             "case_id": case_id, "legal_basis": STATUTE, "referrals": [third["referral_id"]]}
    jc.send(offer)
    [sent] = forwards(inbound, 1)
    assert sent["hdr"]["type"] == "HANDOVER_OFFER"
    acked(out, far_msg(far, SOZ_FAR, type="HANDOVER_ACCEPT", recipient=JC, case_id=case_id,
                       ref_msg_id=offer["msg_id"]))
    assert inbound.quiet("PEER_FORWARD") == []
    assert state_of(jc, third["referral_id"]) is None
    answer = other.header(other.orgs[JA_OTHER], type="ACCEPT", msg_id=uid("m"), recipient=JC,
                          referral_id=third["referral_id"])
    refused = out_other.forward(answer)[1]
    assert refusal(refused)[:2] == (NOT_PARTY, "NOT_PARTY")
    assert SOZ_FAR in refused["text"]
    [referral] = forwards(in_other, 1)
    assert referral["hdr"]["referral_id"] == third["referral_id"]
    assert in_other.quiet("PEER_FORWARD") == []


#   --- consents across districts (§16.5, §9.3) --------------------------------------

def test_far_consent_is_registered_and_binds_here(district, far, connect_to):
    """§16.5/§9.3: a far office's CONSENT_GRANT is registered here (its case opened
    with the granting office as lead) and is not passed on; a far REFERRAL
    under it passes, one under an unknown consent is CONSENT_UNKNOWN; the far
    revocation suspends what was delivered, withholds what was not, and tells
    the local office that received data."""
    b, inbound, out = district()
    jc = connect_to(b, JC)
    soz = connect_to(b, SOZ)
    case_id, consent = uid("c"), uid("g")
    grant = far_msg(far, JC_FAR, type="CONSENT_GRANT", case_id=case_id, subject=SUBJECT,
                    consent=consent, recipients=[SOZ, SOZ_FAR], purposes=[PURPOSE],
                    valid_until=now_ms() + DAY)
    acked(out, grant)
    #   The case is known now, and jc.rheine takes no part in it
    assert rejected(jc, kim_headers.referral(uid("r"), case_id, AA,
                                             msg_id=uid("m"))).code == NOT_PARTY
    basis = {"kind": "consent", "consent_id": consent}
    first = far_referral(far, JC_FAR, SOZ, case_id=case_id, legal_basis=basis)
    acked(out, first)
    unknown = far_referral(far, JC_FAR, SOZ, case_id=case_id,
                           legal_basis={"kind": "consent", "consent_id": uid("g")})
    assert refusal(out.forward(unknown)[1])[:2] == (CONSENT_UNKNOWN, "CONSENT_UNKNOWN")
    inbox = Inbox(soz)
    assert inbox.wait(referral_id=first["referral_id"], type="REFERRAL")
    assert referral_row(soz, first["referral_id"])["consent_id"] == consent
    [delivered] = forwards(inbound, 1)
    assert delivered["hdr"]["type"] == "DELIVERED"
    #   A second one reaches the mailbox while soz.rheine is away
    soz.close()
    second = far_referral(far, JC_FAR, SOZ, case_id=case_id, legal_basis=basis)
    acked(out, second)
    acked(out, far_msg(far, JC_FAR, type="CONSENT_REVOKE", consent=consent))
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    assert wait_state(soz, first["referral_id"], "SUSPENDED") == "SUSPENDED"
    told = inbox.wait(type="CONSENT_REVOKE", consent=consent)
    assert told and told[0].hdr["sender"] == LOCAL and told[0].hdr.get("code") == "revoked"
    inbox.settle()
    assert inbox.where(referral_id=second["referral_id"], type="REFERRAL") == []
    #   Neither the grant nor the revocation nor any notice went back to the peer
    assert inbound.quiet("PEER_FORWARD") == []


def test_far_consent_is_not_passed_on_to_a_third_district(three_districts, far, other,
                                                          connect_to):
    """§16.5: consents forwarded by a peer are not passed on, not even to the
    district of a recipient they name; a local office's consent naming that
    district's office goes there."""
    b, inbound, out, in_other, _ = three_districts()
    jc = connect_to(b, JC)
    grant = far_msg(far, JC_FAR, type="CONSENT_GRANT", case_id=uid("c"), subject=SUBJECT,
                    consent=uid("g"), recipients=[SOZ, JA_OTHER], purposes=[PURPOSE],
                    valid_until=now_ms() + DAY)
    acked(out, grant)
    local = uid("g")
    jc.send({"type": "CONSENT_GRANT", "msg_id": uid("m"), "case_id": uid("c"),
             "subject": SUBJECT, "consent": local, "recipients": [JA_OTHER],
             "purposes": [PURPOSE], "valid_until": now_ms() + DAY})
    [sent] = forwards(in_other, 1)
    assert (sent["hdr"]["type"], sent["hdr"]["consent"]) == ("CONSENT_GRANT", local)
    assert in_other.quiet("PEER_FORWARD") == [] and inbound.quiet("PEER_FORWARD") == []


def test_local_consent_precedes_the_referral_citing_it(district, connect_to):
    """§16.5: a CONSENT_GRANT naming a far office goes into the link mailbox in the
    log's order, so it reaches the far broker before the REFERRAL citing it."""
    b, inbound, _ = district()
    jc = connect_to(b, JC)
    case_id, consent = uid("c"), uid("g")
    jc.send({"type": "CONSENT_GRANT", "msg_id": uid("m"), "case_id": case_id,
             "subject": SUBJECT, "consent": consent, "recipients": [SOZ_FAR],
             "purposes": [PURPOSE], "valid_until": now_ms() + DAY})
    hdr = refer(jc, SOZ_FAR, case_id, legal_basis={"kind": "consent", "consent_id": consent})
    got = forwards(inbound, 2)
    assert [(f["hdr"]["type"], f["hdr"].get("consent"), f["hdr"].get("referral_id"))
            for f in got] == [("CONSENT_GRANT", consent, None),
                              ("REFERRAL", None, hdr["referral_id"])]
    assert got[1]["hdr"]["legal_basis"] == {"kind": "consent", "consent_id": consent}


#   --- RELOAD adds and removes peers (kim.cfg(5) peers, §8.13, §16.1, §16.3) ---------

def test_reload_dials_a_new_peer(brokers, far, connect_to):
    """kim.cfg(5)/§16.1: a reload that adds a peer dials it (HELLO, its directory,
    PING); the peer's key then has the role peer, and mail flows."""
    inbound = far.listen()
    b = brokers(orgs=dict(ORGS, **{OPERATOR: "operator"}))
    op, jc = connect_to(b, OPERATOR), connect_to(b, JC)
    assert links(op) == []
    write_peers(b, far.peers())
    reload(op)
    _, doc, _ = inbound.accept()
    assert doc["broker"] == LOCAL
    out = far.dial(b)
    welcome = out.hello()
    assert (welcome["cmd"], welcome["org"]) == ("WELCOME", FAR)
    assert out.publish(far.directory()) == []
    assert [line["peer"] for line in links(op)] == [FAR]
    hdr = refer(jc, SOZ_FAR, uid("c"))
    [fwd] = forwards(inbound, 1)
    assert fwd["hdr"]["msg_id"] == hdr["msg_id"]


def test_reload_drops_a_removed_peer_and_keeps_its_mail(district, far, connect_to):
    """kim.cfg(5)/§8.13: a reload that removes a peer drops its link (no line in
    STATUS, no redial) and its session; its queued mail stays and is
    forwarded, same seq, once the peer is configured again. §16.3: while removed
    its organisations are unknown; configured again, its last document is in
    force at once and the next must pass its serial."""
    b, inbound, out = district(orgs=dict(ORGS, **{OPERATOR: "operator"}))
    published = far.serial
    op, jc = connect_to(b, OPERATOR), connect_to(b, JC)
    hdr = refer(jc, SOZ_FAR, uid("c"))
    first = inbound.forward()
    assert first is not None and first["hdr"]["msg_id"] == hdr["msg_id"]
    write_peers(b, None)
    reload(op)
    #   The link goes after the reload (when exactly, the spec does not say): a poll
    deadline = time.monotonic() + WAIT
    while links(op) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert links(op) == []
    #   §16.2: the peer is a registry entry (role peer); §8.13: a removed entry's
    #   session is ended with REJECT REVOKED. Its PEER_FORWARD is not taken
    _, answer = out.forward(far_referral(far, JC_FAR, SOZ))
    assert answer is not None and (answer["cmd"], answer["code"]) == ("REJECT", REVOKED), answer
    #   While it is removed its agencies are not routed to (the spec is silent on
    #   the removed peer's directory; pinned)
    assert rejected(jc, kim_headers.referral(uid("r"), uid("c"), SOZ_FAR,
                                             msg_id=uid("m"))).code == UNKNOWN_RECIPIENT
    #   The link is gone: a REJECT on it brings no redial
    inbound.drop()
    assert inbound.quiet("HELLO") == []
    write_peers(b, far.peers())
    reload(op)
    _, doc, _ = inbound.accept()
    again = inbound.forward()
    assert again is not None
    assert (again["seq"], again["hdr"]) == (first["seq"], first["hdr"])
    inbound.ack(again["seq"])
    #   The far side has published nothing since: its stored document routes
    later = refer(jc, SOZ_FAR, uid("c"))
    assert inbound.forward()["hdr"]["msg_id"] == later["msg_id"]
    #   ...and a replay of an older document over a new session is STALE
    out = far.dial(b)
    assert out.hello()["cmd"] == "WELCOME"
    (stale,) = out.publish(far.directory(serial=published - 1))
    assert (stale["code"], stale["path"]) == (STALE, "serial"), stale
