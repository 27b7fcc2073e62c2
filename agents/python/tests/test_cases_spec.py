"""Cases against PROTOCOL.md, from the outside, within one broker (§8.10,
§8.11, §8.14, §9.1, §9.2 HANDOVER_OFFER / HANDOVER_ACCEPT /
HANDOVER_DECLINE / CASE_CLOSED / REMINDER, §9.4 Cases, Events, Retention).

Who leads a case (the sender of its first REFERRAL); who may offer it, to
whom, and with which referrals; what an accept moves (the lead, and the
listed open referrals the old lead sent: their answers go to the new lead)
and what it leaves; what a decline and a second offer do to an open offer;
the refusals, their codes and paths, and what an outsider is told (word for
word what an unused case id gets); CASE_CLOSED (the lead only, delivered to
every other participant, no REFERRAL or HANDOVER_OFFER afterwards, open
referrals untouched); what REFERRAL_QUERY and a subscription show once a
handover changed who takes part; the state records of a handover; and, on
brokers of their own with the test-only `retention/*_seconds` keys, the
purge after CASE_CLOSED and the notice and purge of a quiet open case.

jc.rheine opens the cases and leads them, soz.rheine and aa.rheine receive
referrals and offers; all three are social-code bodies, so the shipped
policy allows every transfer here under `SGB X §69(1)1`. Federation (§16)
is out of scope. Every wait is bounded."""
import time

import msgpack
import pytest

import kim
import kim_headers
from kim_inbox import Inbox, QUIET, WAIT, uid
from kim_headers import STATUTE as ST


BAD_VALUE = 110
BAD_STATE, NOT_PARTY, UNKNOWN_REFERRAL, UNKNOWN_CASE, NOT_LEAD = 400, 401, 402, 403, 405
JC, SOZ, AA, DSB = "jc.rheine", "soz.rheine", "aa.rheine", "dsb.steinfurt"

def referral(rid, case_id, recipient=SOZ, **extra):
    extra.setdefault("msg_id", uid("m"))
    return kim_headers.referral(rid, case_id, recipient, **extra)


def offer(case_id, to, referrals=None, **extra):
    hdr = {"type": "HANDOVER_OFFER", "msg_id": uid("HO"), "recipient": to,
           "case_id": case_id, "subject": "p-7f3a", "purpose": "benefits", "legal_basis": ST}
    if referrals is not None:
        hdr["referrals"] = list(referrals)
    hdr.update(extra)
    return hdr


def reply(kind, case_id, offer_id, to=JC, **extra):
    hdr = {"type": kind, "msg_id": uid("HR"), "recipient": to, "case_id": case_id,
           "ref_msg_id": offer_id}
    hdr.update(extra)
    return hdr


def closed(case_id, **extra):
    hdr = {"type": "CASE_CLOSED", "msg_id": uid("CC"), "case_id": case_id}
    hdr.update(extra)
    return hdr


def answer(move, rid, to, **extra):
    hdr = {"type": move, "msg_id": uid("a"), "recipient": to, "referral_id": rid}
    hdr.update(extra)
    return hdr


def refused(client, hdr):
    """Sends and expects a REJECT for it; returns the kim.Rejected."""
    with pytest.raises(kim.Rejected) as info:
        client.send(hdr)
    assert info.value.msg_id == hdr["msg_id"]
    return info.value


def row(client, rid):
    rows = client.referral_query(referral_id=rid)
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def same_as_unused(client, hdr, case_id):
    """The REJECT `client` gets for `hdr` on `case_id`, and the one it gets
    for the same header on a case id nobody uses, compared with the ids taken
    out (§9.4 Refusals tell outsiders nothing)."""
    mine = refused(client, hdr)
    unused_id = uid("C-UNUSED")
    other = dict(hdr, msg_id=uid("m"), case_id=unused_id)
    theirs = refused(client, other)
    assert (mine.code, mine.reason, mine.path) == (theirs.code, theirs.reason, theirs.path)
    assert mine.text.replace(case_id, "<id>") == theirs.text.replace(unused_id, "<id>")
    return mine


class Case:
    """jc.rheine leading a new case with `n` referrals to soz.rheine (and one
    to aa.rheine when `aa_referral`); everyone's deliveries are kept."""

    def __init__(self, connect, tag, n=1, aa_referral=False, window=64):
        self.jc, self.soz, self.aa = (connect(JC, window=window), connect(SOZ, window=window),
                                      connect(AA, window=window))
        self.by_org = {JC: self.jc, SOZ: self.soz, AA: self.aa}
        self.inbox = {org: Inbox(c) for org, c in self.by_org.items()}
        self.case_id = uid("C-" + tag)
        self.rids = []
        for _ in range(n):
            self.rids.append(self.refer(SOZ))
        self.aa_rid = self.refer(AA) if aa_referral else None

    def refer(self, to, tag="R"):
        rid = uid(tag)
        receipt = self.jc.send(referral(rid, self.case_id, to))
        assert receipt["seq"] > 0
        return rid

    def settle(self):
        for box in self.inbox.values():
            box.settle(QUIET)


#   --- the lead (§9.4 Cases: the first REFERRAL's sender leads) --------------

def test_the_sender_of_the_first_referral_leads_the_case(connect):
    case = Case(connect, "LEAD")
    # soz takes part (it received the REFERRAL) but does not lead
    r = refused(case.soz, offer(case.case_id, AA))
    assert (r.code, r.reason) == (NOT_LEAD, "NOT_LEAD")
    r = refused(case.soz, closed(case.case_id))
    assert (r.code, r.path) == (NOT_LEAD, "hdr.case_id")
    assert JC not in r.text                             # NOT_LEAD does not name the lead
    # a REFERRAL of soz into the case it takes part in does not make it lead
    case.soz.send(referral(uid("R-SOZ"), case.case_id, AA))
    assert refused(case.soz, offer(case.case_id, AA)).code == NOT_LEAD
    # jc, who opened it, may offer
    receipt = case.jc.send(offer(case.case_id, AA))
    assert receipt["seq"] > 0


def test_an_outsiders_handover_and_close_get_what_an_unused_case_id_gets(connect):
    case = Case(connect, "OUT")
    for hdr in (offer(case.case_id, SOZ), closed(case.case_id),
                reply("HANDOVER_ACCEPT", case.case_id, uid("HO-NONE")),
                reply("HANDOVER_DECLINE", case.case_id, uid("HO-NONE"))):
        r = same_as_unused(case.aa, hdr, case.case_id)
        assert (r.code, r.reason) == (UNKNOWN_CASE, "UNKNOWN_CASE"), hdr["type"]
        assert JC not in r.text and SOZ not in r.text


def test_an_outsider_is_told_nothing_of_an_open_offer_either(connect):
    case = Case(connect, "OUTOFFER")
    ho = offer(case.case_id, SOZ)
    case.jc.send(ho)
    for kind in ("HANDOVER_ACCEPT", "HANDOVER_DECLINE"):
        r = same_as_unused(case.aa, reply(kind, case.case_id, ho["msg_id"]), case.case_id)
        assert r.code == UNKNOWN_CASE
        assert ho["msg_id"] not in r.text and SOZ not in r.text


#   --- HANDOVER_OFFER: from the lead, to another, listing referrals of the case

def test_an_offer_to_the_lead_itself_is_refused(connect):
    case = Case(connect, "SELF")
    r = refused(case.jc, offer(case.case_id, JC))
    assert (r.code, r.path) == (BAD_VALUE, "hdr.recipient")     # §9.4 names no code for it
    # the lead is unchanged and still offers
    assert case.jc.send(offer(case.case_id, SOZ))["seq"] > 0


def test_an_offer_listing_a_referral_outside_the_case_is_unknown_referral_at_its_index(
        connect):
    case = Case(connect, "LIST", n=2)
    elsewhere = Case(connect, "ELSE")                         # jc's own referral, another case
    for bad in (uid("R-UNUSED"), elsewhere.rids[0]):
        hdr = offer(case.case_id, AA, referrals=[case.rids[0], bad, case.rids[1]])
        r = refused(case.jc, hdr)
        assert (r.code, r.reason, r.path) == (UNKNOWN_REFERRAL, "UNKNOWN_REFERRAL",
                                              "hdr.referrals[1]")
    assert case.jc.send(offer(case.case_id, AA, referrals=case.rids))["seq"] > 0


def test_an_offer_reaches_the_offered_organisation_only(connect):
    case = Case(connect, "REACH")
    case.settle()
    ho = offer(case.case_id, AA, referrals=case.rids)
    case.jc.send(ho)
    (got,) = case.inbox[AA].wait(type="HANDOVER_OFFER", msg_id=ho["msg_id"])
    assert got.hdr["sender"] == JC and got.hdr["recipient"] == AA
    assert got.hdr["referrals"] == case.rids and got.hdr["case_id"] == case.case_id
    case.settle()
    assert not case.inbox[SOZ].where(msg_id=ho["msg_id"])
    assert not case.inbox[JC].where(msg_id=ho["msg_id"])


#   --- HANDOVER_ACCEPT: the lead and the listed open referrals move ----------

def test_an_accept_makes_the_offeree_lead_and_moves_the_listed_open_referrals(connect):
    case = Case(connect, "ACC", n=3)
    moved, kept, done = case.rids
    assert case.inbox[SOZ].wait(count=3, type="REFERRAL", case_id=case.case_id)
    case.soz.send(answer("ACCEPT", moved, JC))
    case.soz.send(answer("ACCEPT", done, JC))
    case.soz.send(answer("OUTCOME", done, JC, code="completed"))   # closed before the handover
    ho = offer(case.case_id, AA, referrals=[moved, done])
    case.jc.send(ho)
    assert case.inbox[AA].wait(type="HANDOVER_OFFER", msg_id=ho["msg_id"])
    acc = reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"], recipient_case_ref="AA-1")
    case.aa.send(acc)
    (told,) = case.inbox[JC].wait(type="HANDOVER_ACCEPT", msg_id=acc["msg_id"])
    assert told.hdr["sender"] == AA and told.hdr["ref_msg_id"] == ho["msg_id"]
    # the listed open referral is the new lead's, its state unchanged
    assert (row(case.aa, moved)["sender"], row(case.aa, moved)["state"]) == (AA, "ACCEPTED")
    assert row(case.soz, moved)["sender"] == AA
    # a closed one, and one not listed, stay the old lead's
    assert row(case.jc, done)["sender"] == JC and row(case.jc, done)["state"] == "COMPLETED"
    assert row(case.jc, kept)["sender"] == JC
    # answers go to the new lead: to the old one is NOT_PARTY
    r = refused(case.soz, answer("STATUS", moved, JC, code="in_progress"))
    assert r.code == NOT_PARTY
    st = answer("STATUS", moved, AA, code="in_progress")
    case.soz.send(st)
    assert case.inbox[AA].wait(type="STATUS", msg_id=st["msg_id"])
    assert row(case.aa, moved)["state"] == "IN_PROGRESS"
    # the new lead withdraws and offers; the old one may not
    r = refused(case.jc, answer("WITHDRAW", moved, SOZ))
    assert r.code == UNKNOWN_REFERRAL                   # no longer its sender nor recipient
    assert refused(case.jc, offer(case.case_id, SOZ)).code == NOT_LEAD
    assert refused(case.jc, closed(case.case_id)).code == NOT_LEAD
    # the old lead still answers the referral it kept
    case.soz.send(answer("ACCEPT", kept, JC))
    assert row(case.jc, kept)["state"] == "ACCEPTED"
    assert case.aa.send(offer(case.case_id, JC))["seq"] > 0


def test_a_handover_is_logged_as_state_records_of_the_case_and_each_moved_referral(
        connect):
    case = Case(connect, "LOG", n=2)
    moved, kept = case.rids
    ho = offer(case.case_id, AA, referrals=[moved])
    case.jc.send(ho)
    acc = reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"])
    receipt = case.aa.send(acc)
    auditor = connect(DSB)
    states = [msgpack.unpackb(r["body"], raw=False)
              for r in auditor.query(case_id=case.case_id, timeout=WAIT) if r["kind"] == 6]
    caused = [s for s in states if s.get("seq") == receipt["seq"]]
    lead = [s for s in caused if "lead_from" in s]
    assert lead == [{"case_id": case.case_id, "from": "OPEN", "to": "OPEN",
                     "lead_from": JC, "lead_to": AA, "seq": receipt["seq"]}]
    refs = [s for s in caused if "referral_id" in s]
    assert len(refs) == 1, refs
    assert refs[0]["referral_id"] == moved
    assert (refs[0]["sender_from"], refs[0]["sender_to"]) == (JC, AA)
    assert refs[0]["from"] == refs[0]["to"] == row(case.jc, kept)["state"]


def test_a_handover_that_moves_no_referral_moves_the_lead_only(connect):
    case = Case(connect, "NONE")
    ho = offer(case.case_id, AA)
    case.jc.send(ho)
    case.aa.send(reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"]))
    assert row(case.jc, case.rids[0])["sender"] == JC
    assert refused(case.jc, closed(case.case_id)).code == NOT_LEAD
    assert case.aa.send(closed(case.case_id))["seq"] > 0


#   --- refusals of HANDOVER_ACCEPT / HANDOVER_DECLINE ------------------------

@pytest.mark.parametrize("kind", ["HANDOVER_ACCEPT", "HANDOVER_DECLINE"])
def test_only_the_offered_organisation_answers_the_open_offer_and_only_to_the_lead(
        connect, kind):
    case = Case(connect, "RULES")
    ho = offer(case.case_id, AA)
    case.jc.send(ho)
    # §9.4: "only from the offered organisation, naming the open offer in
    # ref_msg_id, to the lead (BAD_STATE, NOT_PARTY otherwise)"
    # a participant that was not offered the case
    r = refused(case.soz, reply(kind, case.case_id, ho["msg_id"]))
    assert (r.code, r.path) == (BAD_STATE, "hdr.ref_msg_id"), r
    # the lead answering its own offer
    r = refused(case.jc, reply(kind, case.case_id, ho["msg_id"], to=AA))
    assert (r.code, r.path) == (BAD_STATE, "hdr.ref_msg_id"), r
    # the offered organisation, naming a message that is not the open offer
    r = refused(case.aa, reply(kind, case.case_id, uid("HO-WRONG")))
    assert (r.code, r.path) == (BAD_STATE, "hdr.ref_msg_id"), r
    # the offered organisation, to someone other than the lead
    r = refused(case.aa, reply(kind, case.case_id, ho["msg_id"], to=SOZ))
    assert (r.code, r.path) == (NOT_PARTY, "hdr.recipient"), r
    # none of it moved anything: the offer is still open and the lead unchanged
    assert refused(case.aa, closed(case.case_id)).code == NOT_LEAD
    case.aa.send(reply(kind, case.case_id, ho["msg_id"]))


def test_an_answer_to_a_case_without_an_open_offer_is_bad_state(connect):
    case = Case(connect, "NOOFFER")
    r = refused(case.soz, reply("HANDOVER_ACCEPT", case.case_id, uid("HO-NONE")))
    assert (r.code, r.path) == (BAD_STATE, "hdr.ref_msg_id")


def test_a_decline_closes_the_offer_and_leaves_the_lead(connect):
    case = Case(connect, "DECL")
    ho = offer(case.case_id, AA, referrals=case.rids)
    case.jc.send(ho)
    dec = reply("HANDOVER_DECLINE", case.case_id, ho["msg_id"], code="not_resident")
    case.aa.send(dec)
    (told,) = case.inbox[JC].wait(type="HANDOVER_DECLINE", msg_id=dec["msg_id"])
    assert told.hdr["code"] == "not_resident" and told.hdr["sender"] == AA
    assert row(case.jc, case.rids[0])["sender"] == JC
    # the offer is answered: neither an accept nor a second decline of it
    r = refused(case.aa, reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"]))
    assert r.code == BAD_STATE
    r = refused(case.aa, reply("HANDOVER_DECLINE", case.case_id, ho["msg_id"]))
    assert r.code == BAD_STATE
    assert refused(case.aa, closed(case.case_id)).code == NOT_LEAD
    assert case.jc.send(closed(case.case_id))["seq"] > 0


def test_a_second_offer_replaces_the_open_one(connect):
    case = Case(connect, "SECOND")
    first = offer(case.case_id, AA)
    case.jc.send(first)
    second = offer(case.case_id, SOZ, referrals=case.rids)
    case.jc.send(second)
    # the first offer is no longer open: its offeree cannot take it up
    for kind in ("HANDOVER_ACCEPT", "HANDOVER_DECLINE"):
        r = refused(case.aa, reply(kind, case.case_id, first["msg_id"]))
        assert (r.code, r.path) == (BAD_STATE, "hdr.ref_msg_id")
    assert refused(case.aa, closed(case.case_id)).code == NOT_LEAD
    # nor can the new offeree accept it by the old offer's id
    r = refused(case.soz, reply("HANDOVER_ACCEPT", case.case_id, first["msg_id"]))
    assert r.code == BAD_STATE
    case.soz.send(reply("HANDOVER_ACCEPT", case.case_id, second["msg_id"]))
    assert case.soz.send(closed(case.case_id))["seq"] > 0


def test_an_accepted_offer_cannot_be_accepted_again(connect):
    case = Case(connect, "TWICE")
    ho = offer(case.case_id, AA)
    case.jc.send(ho)
    case.aa.send(reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"]))
    r = refused(case.aa, reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"], to=JC))
    assert (r.code, r.path) == (BAD_STATE, "hdr.ref_msg_id")
    assert refused(case.jc, offer(case.case_id, SOZ)).code == NOT_LEAD


#   --- CASE_CLOSED -------------------------------------------------------------

def test_case_closed_reaches_every_other_participant_without_recipient(connect):
    case = Case(connect, "CLOSE", aa_referral=True)
    case.settle()
    cc = closed(case.case_id, note="family moved away")
    receipt = case.jc.send(cc)
    for org in (SOZ, AA):
        (got,) = case.inbox[org].wait(type="CASE_CLOSED", msg_id=cc["msg_id"])
        assert got.seq > 0 and "recipient" not in got.hdr
        assert got.hdr["sender"] == JC and got.hdr["case_id"] == case.case_id
    case.settle()
    assert not case.inbox[JC].where(msg_id=cc["msg_id"])
    assert receipt["seq"] > 0


def test_a_closed_case_takes_no_referral_no_offer_no_second_close(connect):
    case = Case(connect, "SHUT")
    case.jc.send(closed(case.case_id))
    r = refused(case.jc, referral(uid("R-LATE"), case.case_id))
    assert (r.code, r.reason) == (BAD_STATE, "BAD_STATE")
    assert refused(case.jc, offer(case.case_id, AA)).code == BAD_STATE
    assert refused(case.jc, closed(case.case_id)).code == BAD_STATE
    # a participant that is not the lead (§9.2 allows NOT_LEAD or BAD_STATE
    # here), an outsider UNKNOWN_CASE
    assert refused(case.soz, closed(case.case_id)).code in (NOT_LEAD, BAD_STATE)
    assert same_as_unused(case.aa, closed(case.case_id), case.case_id).code == UNKNOWN_CASE
    # and the referral a REFERRAL into the closed case tried to open does not exist
    rid = uid("R-LATE2")
    refused(case.soz, referral(rid, case.case_id, AA))
    assert row(case.soz, rid) is None


def test_an_open_offer_dies_with_the_case(connect):
    case = Case(connect, "OFFERCLOSE")
    ho = offer(case.case_id, AA)
    case.jc.send(ho)
    case.jc.send(closed(case.case_id))
    r = refused(case.aa, reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"]))
    assert r.code == BAD_STATE


def test_closing_a_case_leaves_its_open_referrals_as_they_were(connect):
    # §9.2 CASE_CLOSED changes the case, and §9.4's state table has no move
    # for it: the referrals keep their states and their moves
    case = Case(connect, "OPENREF", n=2)
    sent, accepted = case.rids
    case.soz.send(answer("ACCEPT", accepted, JC))
    case.jc.send(closed(case.case_id))
    assert row(case.jc, accepted)["state"] == "ACCEPTED"
    assert row(case.jc, sent)["state"] in ("SENT", "DELIVERED")
    case.soz.send(answer("OUTCOME", accepted, JC, code="completed"))
    assert row(case.jc, accepted)["state"] == "COMPLETED"
    case.jc.send(answer("WITHDRAW", sent, SOZ))
    assert row(case.jc, sent)["state"] == "WITHDRAWN"


#   --- REFERRAL_QUERY and subscriptions after a handover (§8.14, §8.10) -------

def test_referral_query_after_a_handover_follows_the_referrals_sender(connect):
    case = Case(connect, "RQ", n=2)
    moved, kept = case.rids
    ho = offer(case.case_id, AA, referrals=[moved])
    case.jc.send(ho)
    # an offer alone shows the offeree nothing
    assert case.aa.referral_query(case_id=case.case_id) == []
    case.aa.send(reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"]))
    mine = {r["referral_id"]: r for r in case.aa.referral_query(case_id=case.case_id)}
    assert set(mine) == {moved}
    assert (mine[moved]["sender"], mine[moved]["recipient"]) == (AA, SOZ)
    # the old lead is no longer sender nor recipient of the moved referral
    assert [r["referral_id"] for r in case.jc.referral_query(case_id=case.case_id)] == [kept]
    assert row(case.jc, moved) is None
    # the recipient sees both, in the order they opened
    assert [r["referral_id"] for r in case.soz.referral_query(case_id=case.case_id)] == \
        [moved, kept]


def test_a_subscription_sees_a_case_once_a_handover_makes_it_a_participant(connect):
    case = Case(connect, "SUB", n=2)
    moved, kept = case.rids
    sub = uid("s")
    case.aa.subscribe(sub, case_id=case.case_id)
    try:
        # aa takes no part yet: no event of the case
        before = answer("INFO_REQUEST", kept, JC)
        case.soz.send(before)
        case.settle()
        assert not case.inbox[AA].where(msg_id=before["msg_id"])
        ho = offer(case.case_id, AA, referrals=[moved])
        case.jc.send(ho)
        case.aa.send(reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"]))
        # now it does: an answer in a referral it is no party of is its event
        after = answer("INFO_REQUEST", kept, JC)
        case.soz.send(after)
        (ev,) = case.inbox[AA].wait(msg_id=after["msg_id"])
        assert ev.hdr["recipient"] == JC and ev.payload == b""
        case.settle()
        assert not case.inbox[AA].where(msg_id=before["msg_id"])
    finally:
        case.aa.unsubscribe(sub)


def test_a_subscribed_participant_sees_the_handover_it_is_no_party_of(connect):
    case = Case(connect, "SUBHO")
    sub = uid("s")
    case.soz.subscribe(sub, case_id=case.case_id)
    try:
        ho = offer(case.case_id, AA, referrals=case.rids)
        case.jc.send(ho)
        acc = reply("HANDOVER_ACCEPT", case.case_id, ho["msg_id"])
        case.aa.send(acc)
        soz = case.inbox[SOZ]
        (o,) = soz.wait(type="HANDOVER_OFFER", msg_id=ho["msg_id"])
        (a,) = soz.wait(type="HANDOVER_ACCEPT", msg_id=acc["msg_id"])
        assert o.hdr["recipient"] == AA and a.hdr["recipient"] == JC
        assert o.payload == b"" and a.payload == b""
    finally:
        case.soz.unsubscribe(sub)


#   --- retention (§9.4 Retention, Retention of cases that never close) -------

def purges(auditor, case_id):
    return [msgpack.unpackb(r["body"], raw=False)
            for r in auditor.query(case_id=case_id, timeout=WAIT) if r["kind"] == 5]


def wait_purge(auditor, case_id, timeout, keep=()):
    """Polls the log for the case's purge records; PINGs the sessions in
    `keep` meanwhile so that none expires."""
    deadline = time.monotonic() + timeout
    while True:
        found = purges(auditor, case_id)
        if found or time.monotonic() > deadline:
            return found
        for c in keep:
            c.ping(WAIT)
        time.sleep(0.2)                 # a poll: the purge timer is due


def test_payloads_of_a_closed_case_are_purged_after_the_retention_period(
        brokers, connect_to):
    own = brokers(retention={"payload_seconds": 2})
    jc, soz, dsb = connect_to(own, JC), connect_to(own, SOZ), connect_to(own, DSB)
    case_id, rid = uid("C-RET"), uid("R")
    r1 = jc.send(referral(rid, case_id), b"what soz needs")
    acc = soz.send(answer("ACCEPT", rid, JC))
    assert purges(dsb, case_id) == []
    cc = jc.send(closed(case_id))
    t_closed = time.monotonic()
    found = wait_purge(dsb, case_id, 2 + WAIT)
    assert time.monotonic() - t_closed >= 1.5
    assert len(found) == 1, found
    p = found[0]
    assert (p["case_id"], p["reason"], p["retention_s"]) == (case_id, "retention", 2)
    assert r1["seq"] in p["seqs"]
    assert set(p["seqs"]) <= {r1["seq"], acc["seq"], cc["seq"]}
    # the log keeps the message records (the REFERRAL and CASE_CLOSED carry
    # case_id) and their payload hashes
    kept = {r["seq"]: msgpack.unpackb(r["body"], raw=False)
            for r in dsb.query(case_id=case_id, timeout=WAIT) if r["kind"] == 1}
    assert {r1["seq"], cc["seq"]} <= set(kept)
    assert len(kept[r1["seq"]]["payload_hash"]) == 32


def quiet_broker(brokers):
    return brokers(retention={"open_case_seconds": 4, "notice_seconds": 3})


def test_a_quiet_open_case_gives_its_lead_a_notice_then_its_payloads_go(
        brokers, connect_to):
    own = quiet_broker(brokers)
    jc, soz, dsb = connect_to(own, JC), connect_to(own, SOZ), connect_to(own, DSB)
    jc_box, soz_box = Inbox(jc), Inbox(soz)
    case_id, rid = uid("C-QUIET"), uid("R")
    r = jc.send(referral(rid, case_id), b"what soz needs")
    t0 = time.time() * 1000
    (notice,) = jc_box.wait(type="REMINDER", case_id=case_id, timeout=1 + WAIT)
    h = notice.hdr
    assert h["recipient"] == JC and h["referral_id"] == rid
    assert h["deadline"] > h["created_at"]                  # in the future: a case notice
    assert t0 - 1000 <= h["deadline"] - 4000 <= t0 + 1000   # the last message + 4 s
    found = wait_purge(dsb, case_id, 4 + WAIT)
    assert len(found) == 1
    p = found[0]
    assert (p["reason"], p["retention_s"], p["case_id"]) == ("inactivity", 4, case_id)
    assert r["seq"] in p["seqs"]
    assert time.time() * 1000 >= h["deadline"] - 500
    # the recipient got no notice; the case stays open and takes a referral
    soz_box.settle(QUIET)
    assert not soz_box.where(type="REMINDER", case_id=case_id)
    assert jc.send(referral(uid("R"), case_id))["seq"] > 0


def test_a_message_in_the_case_before_the_deadline_calls_the_purge_off(
        brokers, connect_to):
    own = quiet_broker(brokers)
    jc, soz, dsb = connect_to(own, JC), connect_to(own, SOZ), connect_to(own, DSB)
    jc_box = Inbox(jc)
    case_id, rid = uid("C-CALLOFF"), uid("R")
    jc.send(referral(rid, case_id))
    (notice,) = jc_box.wait(type="REMINDER", case_id=case_id, timeout=1 + WAIT)
    first_deadline = notice.hdr["deadline"]
    soz.send(answer("ACCEPT", rid, JC))                     # before the deadline
    assert time.time() * 1000 < first_deadline
    while time.time() * 1000 < first_deadline + 1500:       # the old deadline passes
        assert purges(dsb, case_id) == []
        soz.ping(WAIT)
        time.sleep(0.2)
    assert purges(dsb, case_id) == []


def test_after_a_call_off_the_quiet_time_starts_again(brokers, connect_to):
    own = quiet_broker(brokers)
    jc, soz, dsb = connect_to(own, JC), connect_to(own, SOZ), connect_to(own, DSB)
    jc_box = Inbox(jc)
    case_id, rid = uid("C-AGAIN"), uid("R")
    jc.send(referral(rid, case_id), b"what soz needs")      # a payload to purge
    (notice,) = jc_box.wait(type="REMINDER", case_id=case_id, timeout=1 + WAIT)
    soz.send(answer("ACCEPT", rid, JC))                     # calls the purge off
    t_msg = time.time() * 1000
    notices = jc_box.wait(count=2, type="REMINDER", case_id=case_id, timeout=4 + WAIT)
    assert len(notices) == 2
    assert notices[1].hdr["deadline"] >= t_msg + 4000 - 1000
    found = wait_purge(dsb, case_id, 4 + WAIT, keep=(jc, soz))
    assert found and found[0]["reason"] == "inactivity"


def test_after_a_handover_the_new_lead_gets_the_notice(brokers, connect_to):
    own = quiet_broker(brokers)
    jc, soz, aa = connect_to(own, JC), connect_to(own, SOZ), connect_to(own, AA)
    jc_box, aa_box, soz_box = Inbox(jc), Inbox(aa), Inbox(soz)
    case_id, rid = uid("C-NEWLEAD"), uid("R")
    jc.send(referral(rid, case_id))
    ho = offer(case_id, AA, referrals=[rid])
    jc.send(ho)
    aa.send(reply("HANDOVER_ACCEPT", case_id, ho["msg_id"]))
    (notice,) = aa_box.wait(type="REMINDER", case_id=case_id, timeout=1 + WAIT)
    assert notice.hdr["referral_id"] == rid and notice.hdr["recipient"] == AA
    jc_box.settle(QUIET)
    soz_box.settle(QUIET)
    assert not jc_box.where(type="REMINDER", case_id=case_id)
    assert not soz_box.where(type="REMINDER", case_id=case_id)


def test_a_lead_without_a_referral_in_the_case_gets_no_notice(brokers, connect_to):
    own = quiet_broker(brokers)
    jc, aa = connect_to(own, JC), connect_to(own, AA)
    jc_box, aa_box = Inbox(jc), Inbox(aa)
    case_id, rid = uid("C-NONOTE"), uid("R")
    jc.send(referral(rid, case_id))
    ho = offer(case_id, AA)                                 # moves no referral
    jc.send(ho)
    aa.send(reply("HANDOVER_ACCEPT", case_id, ho["msg_id"]))
    deadline = time.monotonic() + 1 + 2.0                   # the notice would be due at 1 s
    while time.monotonic() < deadline:
        aa_box._read(0.2)
        jc_box._read(0.2)
    assert not aa_box.where(type="REMINDER", case_id=case_id)
    assert not jc_box.where(type="REMINDER", case_id=case_id)


def test_a_quiet_case_whose_lead_has_no_referral_is_purged_all_the_same(
        brokers, connect_to):
    own = quiet_broker(brokers)
    jc, aa, dsb = connect_to(own, JC), connect_to(own, AA), connect_to(own, DSB)
    case_id, rid = uid("C-NOREF"), uid("R")
    jc.send(referral(rid, case_id), b"what soz needs")      # a payload to purge
    ho = offer(case_id, AA)                                 # moves no referral
    jc.send(ho)
    aa.send(reply("HANDOVER_ACCEPT", case_id, ho["msg_id"]))
    found = wait_purge(dsb, case_id, 4 + WAIT, keep=(jc, aa))
    assert found and found[0]["reason"] == "inactivity"
