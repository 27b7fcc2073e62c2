"""The referral life cycle against PROTOCOL.md, from the outside (§8.3–8.4,
§8.14, §9, §9.1, §9.2, §9.4, §10, §10.1).

Every move of the state table of §9.4 in every state it is allowed in, and
the refusal (BAD_STATE, with the state and the allowed moves in its text) of
every other move in every open and closed state; answers from the wrong
party, to the wrong party and from a non-party (who is told exactly what an
unused id gets); DELIVERED to the sender once per referral; FORWARD (who
gets what, both referrals' states and answers); OUTCOME's rules; what
REFERRAL_QUERY shows each party and hides from the rest; duplicate msg_ids;
deadlines (OVERDUE, REMINDER to both, EXPIRED to the sender) on a broker of
its own with `lifecycle/deadline_seconds` and `expire_seconds`.

Tests on the shared broker use ids of their own and filter what they
receive by referral; everything received is acknowledged. jc.rheine sends
the referrals, soz.rheine receives them, aa.rheine is the third party (the
FORWARD target, else an outsider); all three are social-code bodies, so the
shipped policy allows the transfers under rule P1 (`SGB X §69(1)1`).
Every wait is bounded."""
import time

import pytest

import kim
import kim_headers
from kim_inbox import Inbox, WAIT, state_of, uid, wait_state
from conftest import new_broker
from kim_headers import STATUTE as ST


BAD_VALUE, MISSING_FIELD, UNKNOWN_RECIPIENT, FORBIDDEN = 110, 102, 203, 205
BAD_STATE, NOT_PARTY, UNKNOWN_REFERRAL, UNKNOWN_CASE = 400, 401, 402, 403
REFERRAL_EXISTS, NOT_LEAD = 404, 405

JC, SOZ, AA = "jc.rheine", "soz.rheine", "aa.rheine"

OPEN = ("SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE")
CLOSED = ("COMPLETED", "DECLINED", "NOT_COMPETENT", "FORWARDED", "WITHDRAWN")

#   The state table of §9.4: message -> (who, states it is allowed in, new state).
TABLE = {
    "ACCEPT": ("recipient", ("SENT", "DELIVERED", "OVERDUE"), "ACCEPTED"),
    "DECLINE": ("recipient", ("SENT", "DELIVERED", "OVERDUE"), "DECLINED"),
    "NOT_COMPETENT": ("recipient", ("SENT", "DELIVERED", "OVERDUE"), "NOT_COMPETENT"),
    "FORWARD": ("recipient", OPEN, "FORWARDED"),
    "STATUS": ("recipient", ("ACCEPTED", "IN_PROGRESS"), "IN_PROGRESS"),
    "OUTCOME": ("recipient", ("ACCEPTED", "IN_PROGRESS"), "COMPLETED"),
    "WITHDRAW": ("sender", OPEN, "WITHDRAWN"),
    "INFO_REQUEST": ("either", OPEN, None),
    "INFO_RESPONSE": ("either", OPEN, None),
}

def fields(move, rid, to):
    """The header of `move` on referral `rid`, addressed to `to`, with what
    §9.1 requires of the type."""
    hdr = {"type": move, "msg_id": uid("m"), "recipient": to, "referral_id": rid}
    if move == "DECLINE":
        hdr["code"] = "capacity"
    elif move == "STATUS":
        hdr["code"] = "in_progress"
    elif move == "OUTCOME":
        hdr["code"] = "completed"
    elif move == "NOT_COMPETENT":
        hdr["org"] = AA
    elif move == "FORWARD":
        hdr.update(org=AA, purpose="employment", legal_basis=ST)
        hdr["msg_id"] = uid("F")
    return hdr


def referral(rid, case_id, recipient=SOZ, **extra):
    extra.setdefault("msg_id", uid("m"))
    return kim_headers.referral(rid, case_id, recipient, **extra)


def refused(client, hdr, payload=b""):
    """Sends and expects a REJECT; returns it (code, reason, text, msg_id, path)."""
    with pytest.raises(kim.Rejected) as info:
        client.send(hdr, payload)
    assert info.value.msg_id == hdr["msg_id"]
    return info.value


def raw_query(client, **filters):
    """REFERRAL_QUERY as sent on the wire; returns the REFERRAL_INFO itself."""
    query_id = uid("rq")
    cmd = {"cmd": "REFERRAL_QUERY", "query_id": query_id}
    cmd.update(filters)
    client._send_cmd(cmd)
    return client._wait(lambda c: c["cmd"] == "REFERRAL_INFO"
                        and c.get("query_id") == query_id, query_id)


class Story:
    """jc.rheine (sender), soz.rheine (recipient), aa.rheine (third) on one broker."""

    def __init__(self, connect, soz_window=16):
        self.jc = connect(JC)
        self.soz = connect(SOZ, window=soz_window)
        self.aa = connect(AA)
        self.inbox = {JC: Inbox(self.jc), SOZ: Inbox(self.soz), AA: Inbox(self.aa)}
        self.by_org = {JC: self.jc, SOZ: self.soz, AA: self.aa}

    def refer(self, tag, payload=b"what soz needs", **extra):
        """A new referral jc -> soz; returns (referral_id, case_id, REFERRAL hdr, RECEIPT)."""
        rid, case_id = uid("R-" + tag), uid("C-" + tag)
        hdr = referral(rid, case_id, **extra)
        receipt = self.jc.send(hdr, payload)
        assert receipt["seq"] > 0 and not receipt.get("dup")
        return rid, case_id, hdr, receipt

    def party(self, role):
        return (self.jc, SOZ) if role == "sender" else (self.soz, JC)


def open_in(connect, state, tag):
    """A Story and a referral jc -> soz brought into `state` by the moves of
    §9.4; returns (story, referral_id, case_id)."""
    delivered = state in ("DELIVERED", "ACCEPTED", "IN_PROGRESS", "COMPLETED")
    story = Story(connect, soz_window=16 if delivered else 0)
    extra = {}
    if state == "OVERDUE":
        extra["deadline"] = int(time.time() * 1000) - 1000     # passed, within the skew
    rid, case_id, _, _ = story.refer(tag, **extra)
    if delivered:
        assert story.inbox[SOZ].wait(type="REFERRAL", referral_id=rid)
        assert wait_state(story.jc, rid, "DELIVERED") == "DELIVERED"
    steps = {"ACCEPTED": ["ACCEPT"], "IN_PROGRESS": ["ACCEPT", "STATUS"],
             "COMPLETED": ["ACCEPT", "OUTCOME"], "DECLINED": ["DECLINE"],
             "NOT_COMPETENT": ["NOT_COMPETENT"], "FORWARDED": ["FORWARD"]}.get(state, [])
    for move in steps:
        story.soz.send(fields(move, rid, JC))
    if state == "WITHDRAWN":
        story.jc.send(fields("WITHDRAW", rid, SOZ))
    assert wait_state(story.jc, rid, state) == state
    return story, rid, case_id


#   --- the state table: every allowed move (§9.4) ----------------------------

ALLOWED = [(move, state, role)
           for move, (who, states, _) in TABLE.items()
           for state in states
           for role in (("sender", "recipient") if who == "either" else (who,))]


@pytest.mark.parametrize("move,state,role", ALLOWED,
                         ids=["%s-in-%s-by-%s" % a for a in ALLOWED])
def test_an_allowed_move_is_taken_and_changes_the_state_as_the_table_says(
        connect, move, state, role):
    story, rid, _ = open_in(connect, state, "%s-%s" % (move[:6], state[:4]))
    client, to = story.party(role)
    hdr = fields(move, rid, to)
    receipt = client.send(hdr)
    assert receipt["msg_id"] == hdr["msg_id"] and not receipt.get("dup")
    new = TABLE[move][2] or state
    assert state_of(story.jc, rid) == new
    assert state_of(story.soz, rid) == new
    if to == JC:                        # the other party gets the answer as sent
        (got,) = story.inbox[JC].wait(msg_id=hdr["msg_id"])
        assert (got.seq, got.hdr["type"], got.hdr["sender"], got.hdr["recipient"]) == \
            (receipt["seq"], move, SOZ, JC)
        assert got.hdr["referral_id"] == rid


#   --- the state table: every other move is BAD_STATE ------------------------

def expected_text(rid, state):
    """§9.4: a text naming the state and the allowed moves, as in its example."""
    recipient = [m for m, (who, states, _) in TABLE.items()
                 if who in ("recipient", "either") and state in states]
    sender = [m for m, (who, states, _) in TABLE.items()
              if who in ("sender", "either") and state in states]
    return "referral %s is %s; the recipient may send %s; the sender may send %s" % (
        rid, state, ", ".join(recipient), ", ".join(sender))


def forbidden_moves(state):
    for move, (who, states, _) in TABLE.items():
        for role in ("sender", "recipient"):
            if state not in states or who not in (role, "either"):
                yield move, role


@pytest.mark.parametrize("state", OPEN)
def test_a_move_the_table_does_not_allow_in_an_open_state_is_bad_state(connect, state):
    story, rid, _ = open_in(connect, state, "NO-" + state[:4])
    seen = []
    for move, role in forbidden_moves(state):
        client, to = story.party(role)
        r = refused(client, fields(move, rid, to))
        seen.append((move, role, r.code, r.path))
        assert r.text == expected_text(rid, state), (move, role, r.text)
    assert seen == [(m, role, BAD_STATE, "hdr.type") for m, role in forbidden_moves(state)]
    assert state_of(story.jc, rid) == state             # nothing changed
    assert story.jc.status()                            # and the broker still answers


@pytest.mark.parametrize("state", CLOSED)
def test_a_closed_referral_takes_nothing(connect, state):
    story, rid, _ = open_in(connect, state, "CL-" + state[:4])
    for move in TABLE:
        for role in ("sender", "recipient"):
            client, to = story.party(role)
            r = refused(client, fields(move, rid, to))
            assert (r.code, r.reason, r.path) == (BAD_STATE, "BAD_STATE", "hdr.type"), \
                (move, role, r.code, r.text)
            assert ("referral %s is %s" % (rid, state)) in r.text, r.text
    assert state_of(story.soz, rid) == state


def test_a_second_accept_is_bad_state_and_the_first_stands(connect):
    story, rid, _ = open_in(connect, "ACCEPTED", "ACC2")
    r = refused(story.soz, fields("ACCEPT", rid, JC))
    assert (r.code, r.text) == (BAD_STATE, expected_text(rid, "ACCEPTED"))
    story.inbox[JC].settle()
    assert len(story.inbox[JC].where(type="ACCEPT", referral_id=rid)) == 1


#   --- who may answer, and what others are told (§9.4) -----------------------

def test_an_answer_to_an_unknown_referral_is_unknown_referral(connect):
    soz = connect(SOZ, window=0)
    rid = uid("R-NONE")
    r = refused(soz, fields("ACCEPT", rid, JC))
    assert (r.code, r.reason, r.path) == (UNKNOWN_REFERRAL, "UNKNOWN_REFERRAL",
                                          "hdr.referral_id")
    assert rid in r.text


def test_a_non_party_is_told_what_an_unused_id_gets_word_for_word(connect):
    story, rid, case_id = open_in(connect, "DELIVERED", "OUTSIDER")
    unused = uid("R-UNUSED")
    for move in ("ACCEPT", "DECLINE", "STATUS", "OUTCOME", "WITHDRAW", "INFO_REQUEST",
                 "FORWARD"):
        for to in (JC, SOZ):                    # addressed to either party
            taken = refused(story.aa, fields(move, rid, to))
            free = refused(story.aa, fields(move, unused, to))
            assert (taken.code, taken.reason, taken.path) == \
                (free.code, free.reason, free.path) == \
                (UNKNOWN_REFERRAL, "UNKNOWN_REFERRAL", "hdr.referral_id"), (move, to)
            assert taken.text.replace(rid, "<id>") == free.text.replace(unused, "<id>")
            for secret in ("DELIVERED", JC, SOZ, case_id):
                assert secret not in taken.text, (move, taken.text)
    assert state_of(story.jc, rid) == "DELIVERED"
    story.inbox[JC].settle()
    story.inbox[SOZ].settle()
    assert not story.inbox[JC].where(sender=AA) and not story.inbox[SOZ].where(sender=AA)


def test_an_answer_addressed_to_anyone_but_the_other_party_is_not_party(connect):
    story, rid, _ = open_in(connect, "ACCEPTED", "WRONGTO")
    for client, move in ((story.soz, "STATUS"), (story.soz, "OUTCOME"),
                         (story.jc, "WITHDRAW"), (story.jc, "INFO_REQUEST")):
        r = refused(client, fields(move, rid, AA))
        assert (r.code, r.reason, r.path) == (NOT_PARTY, "NOT_PARTY", "hdr.recipient"), \
            (move, r.code, r.text)
    assert state_of(story.jc, rid) == "ACCEPTED"
    story.inbox[AA].settle()
    assert not story.inbox[AA].where(referral_id=rid)


def test_referral_exists_and_not_party_for_a_referral_into_anothers_case(connect):
    story, rid, case_id = open_in(connect, "SENT", "EXISTS")
    for client in (story.jc, story.aa):         # its sender, and an outsider
        r = refused(client, referral(rid, uid("C-OTHER")))
        assert (r.code, r.reason, r.path) == (REFERRAL_EXISTS, "REFERRAL_EXISTS",
                                              "hdr.referral_id")
    # a party may be told more; the outsider gets the text an id in use gets
    assert r.text == "referral id %s is taken; choose another" % rid
    r = refused(story.aa, referral(uid("R-INTO"), case_id))
    assert (r.code, r.reason) == (NOT_PARTY, "NOT_PARTY")
    assert JC not in r.text and SOZ not in r.text
    r = refused(story.jc, referral(uid("R-SELF"), case_id, recipient=JC))
    assert (r.code, r.path) == (BAD_VALUE, "hdr.recipient")


def test_a_forward_whose_msg_id_names_a_known_referral_is_referral_exists(connect):
    story, rid, _ = open_in(connect, "DELIVERED", "FWDID")
    other, _, _, _ = story.refer("FWDID-2")
    hdr = fields("FORWARD", rid, JC)
    hdr["msg_id"] = other
    r = refused(story.soz, hdr)
    assert (r.code, r.reason) == (REFERRAL_EXISTS, "REFERRAL_EXISTS")
    assert state_of(story.jc, rid) == "DELIVERED"


def test_a_forward_to_an_unregistered_org_is_unknown_recipient_at_org(connect):
    story, rid, _ = open_in(connect, "DELIVERED", "FWDORG")
    hdr = fields("FORWARD", rid, JC)
    hdr["org"] = "nobody.rheine"
    r = refused(story.soz, hdr)
    assert (r.code, r.path) == (UNKNOWN_RECIPIENT, "hdr.org")
    assert state_of(story.jc, rid) == "DELIVERED"


#   --- DELIVERED (§9.4, §9.2) ------------------------------------------------

def test_delivered_reaches_the_sender_once_on_the_ack_not_per_redelivery(broker, connect):
    jc = connect(JC)
    sender = Inbox(jc)
    first = Inbox(connect(SOZ, window=16), ack=False)
    rid, case_id = uid("R-DLV"), uid("C-DLV")
    hdr = referral(rid, case_id)
    receipt = jc.send(hdr, b"details")
    (d,) = first.wait(referral_id=rid, type="REFERRAL")
    sender.settle()
    assert not sender.where(type="DELIVERED", referral_id=rid)     # not on delivery
    assert state_of(jc, rid) == "SENT"
    first.client.close()                    # BYE: back to the mailbox, unacknowledged
    second = Inbox(connect(SOZ, window=16))
    (again,) = second.wait(referral_id=rid, type="REFERRAL")
    assert again.seq == d.seq == receipt["seq"]
    (notice,) = sender.wait(type="DELIVERED", referral_id=rid)
    assert notice.hdr["ref_msg_id"] == hdr["msg_id"]
    assert (notice.hdr["recipient"], notice.hdr["case_id"]) == (JC, case_id)
    assert notice.hdr["sender"] != SOZ and notice.payload == b""
    assert state_of(jc, rid) == "DELIVERED"
    third = Inbox(connect(SOZ, window=16))  # nothing left to deliver, nothing to notify
    third.settle()
    sender.settle()
    assert not third.where(referral_id=rid)
    assert len(sender.where(type="DELIVERED", referral_id=rid)) == 1


def test_delivered_cannot_be_sent_by_a_client(connect):
    """§10.1: SEND of a broker-made type is FORBIDDEN at hdr.type."""
    soz = connect(SOZ, window=0)
    for kind, extra in (("DELIVERED", {"ref_msg_id": "m-0"}),
                        ("REMINDER", {"referral_id": "r-1", "deadline": 1}),
                        ("EXPIRED", {"referral_id": "r-1", "deadline": 1})):
        hdr = {"type": kind, "msg_id": uid("m"), "recipient": JC}
        hdr.update(extra)
        r = refused(soz, hdr)
        assert (r.code, r.path) == (FORBIDDEN, "hdr.type"), (kind, r.code, r.text)
    assert soz.status()


#   --- FORWARD (§9.2, §9.4) --------------------------------------------------

@pytest.mark.parametrize("state", ("DELIVERED", "ACCEPTED"))
def test_forward_opens_a_linked_referral_and_closes_the_original(connect, state):
    story, rid, case_id = open_in(connect, state, "FWD-" + state[:4])
    hdr = fields("FORWARD", rid, JC)
    fid = hdr["msg_id"]
    receipt = story.soz.send(hdr, b"for aa only")
    # who gets what: the original sender the header, org the header and the payload
    (to_jc,) = story.inbox[JC].wait(msg_id=fid)
    (to_aa,) = story.inbox[AA].wait(msg_id=fid)
    assert to_jc.seq == to_aa.seq == receipt["seq"]
    assert to_jc.hdr["type"] == to_aa.hdr["type"] == "FORWARD"
    assert (to_jc.hdr["recipient"], to_jc.hdr["org"]) == (JC, AA)
    assert to_jc.payload == b"" and to_aa.payload == b"for aa only"
    # the original is FORWARDED; the new one runs soz -> aa in the same case
    assert state_of(story.jc, rid) == "FORWARDED"
    (new,) = story.soz.referral_query(referral_id=fid)
    assert (new["sender"], new["recipient"], new["case_id"], new["forwarded_from"],
            new["purpose"], new["created_seq"]) == \
        (SOZ, AA, case_id, rid, "employment", receipt["seq"])
    # aa acknowledged it: the new referral is DELIVERED, its sender soz is told
    assert wait_state(story.aa, fid, "DELIVERED") == "DELIVERED"
    (notice,) = story.inbox[SOZ].wait(type="DELIVERED", referral_id=fid)
    assert notice.hdr["ref_msg_id"] == fid
    story.inbox[JC].settle()
    assert not story.inbox[JC].where(type="DELIVERED", referral_id=fid)
    # jc is no party of the new referral, aa none of the old one
    assert story.jc.referral_query(referral_id=fid) == []
    assert story.aa.referral_query(referral_id=rid) == []
    assert [r["referral_id"] for r in story.jc.referral_query(case_id=case_id)] == [rid]
    # answers: the old one takes none; the new one is answered to soz only
    assert refused(story.soz, fields("OUTCOME" if state == "ACCEPTED" else "ACCEPT",
                                     rid, JC)).code == BAD_STATE
    assert refused(story.jc, fields("WITHDRAW", rid, SOZ)).code == BAD_STATE
    assert refused(story.aa, fields("ACCEPT", fid, JC)).code == NOT_PARTY
    assert refused(story.jc, fields("WITHDRAW", fid, AA)).code == UNKNOWN_REFERRAL
    accept = fields("ACCEPT", fid, SOZ)
    story.aa.send(accept)
    (got,) = story.inbox[SOZ].wait(msg_id=accept["msg_id"])
    assert got.hdr["referral_id"] == fid
    assert state_of(story.soz, fid) == "ACCEPTED"
    assert state_of(story.jc, rid) == "FORWARDED"
    story.inbox[JC].settle()
    assert not story.inbox[JC].where(msg_id=accept["msg_id"])


def test_a_forward_with_a_passed_deadline_is_bad_value(connect):
    story, rid, _ = open_in(connect, "DELIVERED", "FWDDL")
    hdr = fields("FORWARD", rid, JC)
    hdr["deadline"] = int(time.time() * 1000) - 3600 * 1000
    r = refused(story.soz, hdr)
    assert (r.code, r.path) == (BAD_VALUE, "hdr.deadline")
    assert state_of(story.jc, rid) == "DELIVERED"


#   --- OUTCOME (§9.1, §9.2, §10.1) -------------------------------------------

def test_outcome_carries_a_code_only(connect):
    story, rid, _ = open_in(connect, "IN_PROGRESS", "OUT")
    hdr = fields("OUTCOME", rid, JC)
    with_note = dict(hdr, note="x")
    r = refused(story.soz, with_note)
    assert (r.code, r.path) == (BAD_VALUE, "hdr.note")
    r = refused(story.soz, hdr, b"counselling content")
    assert (r.code, r.path) == (BAD_VALUE, "payload")
    no_code = dict(hdr)
    del no_code["code"]
    r = refused(story.soz, no_code)
    assert (r.code, r.path) == (MISSING_FIELD, "hdr.code")
    assert refused(story.jc, fields("OUTCOME", rid, SOZ)).code == BAD_STATE  # not the sender
    assert state_of(story.jc, rid) == "IN_PROGRESS"
    hdr["code"] = "moved_away"              # any code (§9.1)
    receipt = story.soz.send(hdr)           # the refused msg_id was not used up (§8.3)
    assert not receipt.get("dup")
    (got,) = story.inbox[JC].wait(msg_id=hdr["msg_id"])
    assert (got.hdr["code"], got.payload) == ("moved_away", b"")
    assert state_of(story.jc, rid) == "COMPLETED"
    assert refused(story.soz, fields("STATUS", rid, JC)).code == BAD_STATE


def test_status_and_decline_codes_are_limited(connect):
    story, rid, _ = open_in(connect, "DELIVERED", "CODES")
    hdr = fields("DECLINE", rid, JC)
    hdr["code"] = "busy"
    r = refused(story.soz, hdr)
    assert (r.code, r.path) == (BAD_VALUE, "hdr.code")
    story.soz.send(fields("ACCEPT", rid, JC))
    hdr = fields("STATUS", rid, JC)
    hdr["code"] = "done"
    r = refused(story.soz, hdr)
    assert (r.code, r.path) == (BAD_VALUE, "hdr.code")
    for code in ("appointment_set", "no_show", "in_progress"):
        hdr = fields("STATUS", rid, JC)
        hdr["code"] = code
        story.soz.send(hdr)
    assert state_of(story.jc, rid) == "IN_PROGRESS"


#   --- REFERRAL_QUERY and REFERRAL_INFO (§8.14) -------------------------------

KEYS = {"referral_id", "state", "sender", "recipient", "case_id", "purpose", "deadline",
        "forwarded_from", "consent_id", "created_seq", "last_seq"}


def test_referral_info_last_seq_is_the_delivered_notice_an_ack_made(connect):
    """§8.14: last_seq is the referral's latest message; the ack makes the DELIVERED
    notice to the sender (§9.4), a message about the referral, logged after it."""
    story, rid, _ = open_in(connect, "DELIVERED", "LS")
    (notice,) = story.inbox[JC].wait(type="DELIVERED", referral_id=rid)
    (row,) = story.jc.referral_query(referral_id=rid)
    assert row["created_seq"] < notice.seq
    assert row["last_seq"] == notice.seq, (row, notice.seq)


def test_referral_query_shows_each_party_its_referral_and_nobody_else(connect):
    story, rid, case_id = open_in(connect, "DELIVERED", "RQ")
    accept = fields("ACCEPT", rid, JC)
    seq = story.soz.send(accept)["seq"]
    rows = {}
    for client in (story.jc, story.soz):
        for filters in ({"referral_id": rid}, {"case_id": case_id},
                        {"case_id": case_id, "org": JC if client is story.soz else SOZ}):
            info = raw_query(client, **filters)
            assert info["count"] == 1, (client.org, filters, info)
            (row,) = client.referral_query(**filters)
            rows.setdefault(client.org, row)
            assert row == rows[client.org]
    assert rows[JC] == rows[SOZ]
    row = rows[JC]
    assert set(row) == KEYS
    assert (row["referral_id"], row["state"], row["sender"], row["recipient"],
            row["case_id"], row["purpose"], row["forwarded_from"], row["consent_id"]) == \
        (rid, "ACCEPTED", JC, SOZ, case_id, "benefits", "", "")
    assert row["last_seq"] == seq and row["created_seq"] < seq
    # a non-party: count 0 for every filter, as for an id nobody uses
    for filters in ({"referral_id": rid}, {"case_id": case_id},
                    {"case_id": case_id, "org": JC}, {"referral_id": rid, "org": SOZ},
                    {"referral_id": uid("R-UNUSED")}):
        info = raw_query(story.aa, **filters)
        assert (info["count"], bytes(info["body"])) == (0, b""), (filters, info)
    # a party filtering on an org that is not the other party: nothing
    assert story.jc.referral_query(case_id=case_id, org=AA) == []


def test_referral_query_is_forbidden_to_an_auditor(connect):
    dsb = connect("dsb.steinfurt", window=0)
    with pytest.raises(kim.Rejected) as info:
        dsb.referral_query(referral_id="R-1")
    assert (info.value.code, info.value.reason) == (FORBIDDEN, "FORBIDDEN")
    assert dsb.status()


def test_referral_query_lists_a_case_in_the_order_the_referrals_opened(connect):
    story = Story(connect, soz_window=0)
    case_id = uid("C-ORD")
    rids = ["LC-ZZ-%s" % uid("o"), "LC-AA-%s" % uid("o"), "LC-MM-%s" % uid("o")]
    seqs = [story.jc.send(referral(r, case_id))["seq"] for r in rids]
    rows = story.jc.referral_query(case_id=case_id)
    assert [(r["referral_id"], r["created_seq"]) for r in rows] == list(zip(rids, seqs))


#   --- duplicates (§8.3 step 6, §8.4) -----------------------------------------

def test_a_repeated_referral_msg_id_is_a_dup_with_the_original_seq(connect):
    story = Story(connect)
    rid, case_id, hdr, receipt = story.refer("DUP")
    again = story.jc.send(hdr, b"what soz needs")
    assert (again["seq"], again.get("dup")) == (receipt["seq"], True)
    other = dict(hdr, referral_id=uid("R-DUP-OTHER"))      # whatever the new header says
    again = story.jc.send(other, b"else")
    assert (again["seq"], again.get("dup")) == (receipt["seq"], True)
    assert story.jc.referral_query(referral_id=other["referral_id"]) == []
    story.inbox[SOZ].wait(referral_id=rid)
    story.inbox[SOZ].settle()
    assert [d.seq for d in story.inbox[SOZ].where(msg_id=hdr["msg_id"])] == [receipt["seq"]]
    assert story.inbox[SOZ].where(referral_id=other["referral_id"]) == []


def test_a_repeated_answer_msg_id_is_a_dup_not_bad_state(connect):
    story, rid, _ = open_in(connect, "DELIVERED", "DUPA")
    accept = fields("ACCEPT", rid, JC)
    first = story.soz.send(accept)
    again = story.soz.send(accept)          # ACCEPTED now: a new ACCEPT would be BAD_STATE
    assert (again["seq"], again.get("dup")) == (first["seq"], True)
    status = fields("STATUS", rid, JC)
    status["msg_id"] = accept["msg_id"]     # another type under the same msg_id
    again = story.soz.send(status)
    assert (again["seq"], again.get("dup")) == (first["seq"], True)
    assert state_of(story.jc, rid) == "ACCEPTED"
    story.inbox[JC].wait(msg_id=accept["msg_id"])
    story.inbox[JC].settle()
    assert len(story.inbox[JC].where(msg_id=accept["msg_id"])) == 1


#   --- cases (§9.2 CASE_CLOSED, §9.4) -----------------------------------------

def test_a_closed_case_takes_no_referral_and_only_its_lead_closes_it(connect):
    story, rid, case_id = open_in(connect, "SENT", "CASE")
    r = refused(story.soz, {"type": "CASE_CLOSED", "msg_id": uid("m"), "case_id": case_id})
    assert (r.code, r.reason, r.path) == (NOT_LEAD, "NOT_LEAD", "hdr.case_id")
    outsider = refused(story.aa, {"type": "CASE_CLOSED", "msg_id": uid("m"),
                                  "case_id": case_id})
    unused_id = uid("C-UNUSED")
    unused = refused(story.aa, {"type": "CASE_CLOSED", "msg_id": uid("m"),
                                "case_id": unused_id})
    assert outsider.code == unused.code == UNKNOWN_CASE
    assert outsider.text.replace(case_id, "<id>") == unused.text.replace(unused_id, "<id>")
    close = {"type": "CASE_CLOSED", "msg_id": uid("m"), "case_id": case_id}
    story.jc.send(close)
    r = refused(story.jc, {"type": "CASE_CLOSED", "msg_id": uid("m"), "case_id": case_id})
    assert r.code == BAD_STATE
    r = refused(story.jc, referral(uid("R-LATE"), case_id))
    assert r.code == BAD_STATE


def test_not_lead_does_not_name_the_lead(connect):
    story, rid, case_id = open_in(connect, "SENT", "NOTLEAD")
    r = refused(story.soz, {"type": "CASE_CLOSED", "msg_id": uid("m"), "case_id": case_id})
    assert r.code == NOT_LEAD
    assert JC not in r.text, r.text


#   --- deadlines (§9.4 Deadlines, §9.2 REMINDER, EXPIRED) ---------------------

DEADLINE_S, EXPIRE_S = 1, 2


@pytest.fixture(scope="module")
def timed():
    """A broker of its own: answer period DEADLINE_S s, grace EXPIRE_S s."""
    b = new_broker({JC: "agency", SOZ: "agency", AA: "agency"},
                   lifecycle={"deadline_seconds": DEADLINE_S,
                              "expire_seconds": EXPIRE_S}).start()
    yield b
    b.finish()


@pytest.fixture
def timed_connect(timed, connect_to):
    return lambda org, **options: connect_to(timed, org, **dict({"timeout": WAIT}, **options))


def test_deadlines_overdue_reminder_to_both_then_expired_to_the_sender(timed_connect):
    story = Story(timed_connect)
    t0 = time.time() * 1000
    quiet, _, _, q_receipt = story.refer("QUIET")           # never answered
    late, _, _, _ = story.refer("LATE")                     # answered while OVERDUE
    early, _, _, _ = story.refer("EARLY")                   # answered at once
    story.soz.send(fields("ACCEPT", early, JC))
    jc, soz = story.inbox[JC], story.inbox[SOZ]
    for rid in (quiet, late):
        (to_jc,) = jc.wait(type="REMINDER", referral_id=rid, timeout=DEADLINE_S + WAIT)
        (to_soz,) = soz.wait(type="REMINDER", referral_id=rid, timeout=WAIT)
        for d, org in ((to_jc, JC), (to_soz, SOZ)):
            assert d.hdr["recipient"] == org
            assert t0 <= d.hdr["deadline"] <= t0 + DEADLINE_S * 1000 + 1000
            assert d.hdr["deadline"] <= d.hdr["created_at"]     # in the past
        assert state_of(story.jc, rid) == "OVERDUE"
    answer = fields("ACCEPT", late, JC)
    story.soz.send(answer)
    assert state_of(story.jc, late) == "ACCEPTED"
    (expired,) = jc.wait(type="EXPIRED", referral_id=quiet, timeout=EXPIRE_S + WAIT)
    assert expired.hdr["ref_msg_id"] == q_receipt["msg_id"]
    assert expired.hdr["deadline"] + EXPIRE_S * 1000 <= expired.hdr["created_at"] + 500
    assert state_of(story.jc, quiet) == state_of(story.soz, quiet) == "EXPIRED"
    jc.settle(0.5)
    soz.settle(0.5)
    assert not soz.where(type="EXPIRED")                # the sender is alerted, only
    assert not jc.where(type="EXPIRED", referral_id=late)
    assert not jc.where(type="REMINDER", referral_id=early)
    assert not soz.where(type="REMINDER", referral_id=early)
    assert len(jc.where(type="REMINDER", referral_id=quiet)) == 1
    assert state_of(story.jc, early) == state_of(story.jc, late) == "ACCEPTED"
    r = refused(story.soz, fields("ACCEPT", quiet, JC))
    assert r.code == BAD_STATE and "EXPIRED" in r.text


def test_a_referral_with_a_passed_deadline_is_bad_value_beyond_the_skew(connect):
    jc = connect(JC, window=0)
    hdr = referral(uid("R-PAST"), uid("C-PAST"),
                   deadline=int(time.time() * 1000) - 3600 * 1000)
    r = refused(jc, hdr)
    assert (r.code, r.path) == (BAD_VALUE, "hdr.deadline")
    assert jc.referral_query(referral_id=hdr["referral_id"]) == []
