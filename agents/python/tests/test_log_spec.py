"""The content of the audit log against PROTOCOL.md, read as an auditor's
outside tool would: §8.11 (QUERY, RECORD, QUERY_END, "Record bodies and the
chain", the log file layout, record kinds 1-6), §8.3 (a REJECTed message
leaves nothing but the policy decision), §8.6 (DELIVER carries the header as
the log holds it), §9.1 (per-type fields), §9.3 (DECISION records,
revocation notices, ACCESS_REPORT, ERASURE and its PURGE record), §9.4
(state records, retention PURGE), §13.3.

tests/python/kim_verify.py and its tests check the chain and the checkpoint
signatures; test_reads_spec.py the QUERY mechanics (credit, QUERY_END, the
seq and time filters, a first look at case/org/type). This file checks what
the records *say*. One broker of the module's own runs a scripted day:
REFERRALs allowed and denied (POLICY_DENY, NO_BASIS, CONSENT_REVOKED, rule
"default"), DELIVERED by ack, ACCEPT, STATUS, OUTCOME, FORWARD, WITHDRAW, a
consent granted and revoked (one referral suspended, one withheld), a
handover, a referral past its deadline (OVERDUE, EXPIRED), ERASUREs and
ACCESS_REPORTs, an agency's and an operator's refused QUERY, CASE_CLOSED and
its retention purge. Then the log is read both ways: over the wire by the
auditor's QUERY (RECORD frames) and, with the broker stopped, from
<data>/store with python3-lmdb; the broker is started again for the tests
that query it.

Payloads are sent unsealed (seal=False) so that their bytes and hashes are
known to the test. Where the spec is silent the tests accept either reading
and say so. Every wait is bounded; no sleep is an assertion."""
import json
import os
import struct
import sys
import time

import msgpack
import nacl.hash
import pytest
from nacl.encoding import RawEncoder

import kim
import kim_headers
from conftest import ORGS, new_broker
from kim_headers import STATUTE
from kim_inbox import Inbox, WAIT, uid, wait_state

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import kim_verify  # noqa: E402  (tests/python: the independent verifier)

JC, SOZ, AA, KI, DSB = "jc.rheine", "soz.rheine", "aa.rheine", "ki.rheine", "dsb.steinfurt"
OPS = "ops.steinfurt"
CHECKPOINT_RECORDS = 8
MESSAGE, CHECKPOINT, DECISION, AUDIT_READ, PURGE, STATE = 1, 2, 3, 4, 5, 6

#   §9.1: fields every type allows, and per type (required, optional)
UNIVERSAL = {"type", "msg_id", "schema", "created_at", "sender", "priority", "payload_len",
             "payload_hash", "sig", "rule"}
ANSWER_OPT = {"ref_msg_id", "sender_case_ref", "recipient_case_ref", "categories", "note"}
PER_TYPE = {
    "REFERRAL": ({"recipient", "referral_id", "case_id", "subject", "purpose", "legal_basis"},
                 {"sender_case_ref", "recipient_case_ref", "categories", "deadline", "note"}),
    "ACCEPT": ({"recipient", "referral_id"}, ANSWER_OPT),
    "STATUS": ({"recipient", "referral_id", "code"}, ANSWER_OPT),
    "OUTCOME": ({"recipient", "referral_id", "code"}, ANSWER_OPT - {"note"}),
    "WITHDRAW": ({"recipient", "referral_id"}, ANSWER_OPT),
    "INFO_RESPONSE": ({"recipient", "referral_id"}, ANSWER_OPT),
    "FORWARD": ({"recipient", "referral_id", "org", "purpose", "legal_basis"},
                ANSWER_OPT | {"subject", "deadline"}),
    "HANDOVER_OFFER": ({"recipient", "case_id", "legal_basis"},
                       {"referrals", "subject", "purpose", "categories", "deadline",
                        "sender_case_ref", "note"}),
    "HANDOVER_ACCEPT": ({"recipient", "case_id", "ref_msg_id"},
                        {"sender_case_ref", "recipient_case_ref", "note"}),
    "CASE_CLOSED": ({"case_id"}, {"recipient", "sender_case_ref", "note"}),
    "CONSENT_GRANT": ({"case_id", "consent", "subject", "recipients", "purposes",
                       "valid_until"}, {"categories", "explicit", "giver"}),
    "CONSENT_REVOKE": ({"consent"}, {"recipient", "case_id", "referral_id", "ref_msg_id",
                                     "code"}),
    "ERASURE": ({"subject"}, {"recipient", "case_id"}),
    "ACCESS_REPORT": ({"subject"}, {"recipient", "case_id"}),
    "DELIVERED": ({"recipient", "ref_msg_id"}, {"referral_id", "case_id"}),
    "REMINDER": ({"recipient", "referral_id", "deadline"}, {"ref_msg_id", "case_id"}),
    "EXPIRED": ({"recipient", "referral_id", "deadline"}, {"ref_msg_id", "case_id"}),
}
FILTER_ORDER = ("from_seq", "to_seq", "from_time", "to_time", "case_id", "org", "type")


def blake2b(data):
    return nacl.hash.blake2b(data, digest_size=32, encoder=RawEncoder)


def now_ms():
    return int(time.time() * 1000)


def unpack(body):
    """One MessagePack value and nothing after it (raises otherwise)."""
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def policy_law(rule):
    """The `law` of a rule in the policy file the broker runs."""
    path = os.environ.get("KIM_POLICY_FILE") or os.path.join(ROOT, "deploy", "policy.cfg")
    current = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            depth = (len(line) - len(line.lstrip(" "))) // 4
            if depth == 1:
                current = text
            elif depth == 2 and current == rule and text.startswith("law"):
                return text.split("=", 1)[1].strip().strip('"')
    raise KeyError(rule)


#   --- the scripted day ------------------------------------------------------

class Sent:
    def __init__(self, org, hdr, payload, seq, rule):
        self.org, self.hdr, self.payload, self.seq, self.rule = org, hdr, payload, seq, rule


class Day:
    """What the scenario did, for the tests to hold the log against."""

    def __init__(self, broker):
        self.broker = broker
        self.sent = {}          # msg_id -> Sent (accepted SENDs)
        self.refused = []       # (hdr, kim.Rejected or receipt, head before, head after, rule)
        self.moves = []         # expected state records, in order of the causes
        self.markers = []       # payload bytes the log must never hold
        self.inboxes = []
        self.t0 = now_ms()

    def marker(self, tag):
        m = ("PAYLOAD-%s-Herr-Mustermann-Emsstrasse-7" % uid(tag)).encode()
        self.markers.append(m)
        return m

    def send(self, client, hdr, payload=b"", rule=None):
        hdr = dict(hdr)
        hdr.setdefault("msg_id", uid("m"))
        hdr.setdefault("created_at", now_ms())
        r = client.send(hdr, payload, seal=False)
        assert r["cmd"] == "RECEIPT" and not r.get("dup"), r
        self.sent[hdr["msg_id"]] = Sent(client.org, hdr, payload, r["seq"], rule)
        return r["seq"]

    def refuse(self, client, hdr, payload=b"", rule=None):
        """A SEND the broker must refuse; the log head is read before and after."""
        hdr = dict(hdr)
        hdr.setdefault("msg_id", uid("m"))
        hdr.setdefault("created_at", now_ms())
        before = client.status()["log_head"]
        try:
            answer = client.send(hdr, payload, seal=False)
        except kim.Rejected as e:
            answer = e
        after = client.status()["log_head"]
        self.refused.append((hdr, answer, before, after, rule))
        return hdr

    def sent_by_seq(self, seq):
        return next(s for s in self.sent.values() if s.seq == seq)

    def move(self, cause, frm, to, referral_id=None, case_id=None, **extra):
        """An expected state record; `cause` a seq, or (type, msg_id): a move the
        broker made on an ACK or a timer, with a broker-made message of that type
        about the message msg_id opened the referral with."""
        self.moves.append(dict(cause=cause, frm=frm, to=to, referral_id=referral_id,
                               case_id=case_id, extra=extra))


def play(day, jc, soz, aa, dsb, ops):
    """The traffic. jc leads cases A, B and E; soz and aa answer."""
    A, B, E = uid("C-A"), uid("C-B"), uid("C-E")
    pA, pB, pE = uid("p-A"), uid("p-B"), uid("p-E")
    day.case_a, day.case_b, day.case_e, day.subject_e = A, B, E, pE
    ref = kim_headers.referral
    cat = ["residence_status"]

    # Case A: a REFERRAL allowed by P1 (a client's `rule` is discarded), three denied
    ra1, ra2 = uid("R-A1"), uid("R-A2")
    s_ra1 = day.send(jc.client, ref(ra1, A, SOZ, subject=pA, categories=cat, rule="CLIENT"),
                     day.marker("A1"), rule="P1")
    day.denied_deny = day.refuse(jc.client, ref(uid("R-KI"), A, KI, subject=pA,
                                                categories=cat), day.marker("KI"), rule="P11")
    no_basis = day.refuse(jc.client, ref(ra2, A, AA, subject=pA, categories=["stgb203"]),
                          day.marker("NB"), rule="P1s")
    day.denied_no_basis = no_basis
    # no rule selects a HANDOVER_OFFER naming no subject to ki: rule "default" (§9.3)
    day.denied_default = day.refuse(jc.client, {
        "type": "HANDOVER_OFFER", "recipient": KI, "case_id": A, "purpose": "benefits",
        "legal_basis": STATUTE, "categories": cat}, day.marker("DF"), rule="default")
    # §8.3: its msg_id is not used up
    day.send(jc.client, dict(no_basis, categories=cat), day.marker("A2"), rule="P1")
    day.reused_msg_id = no_basis["msg_id"]

    assert soz.wait(referral_id=ra1, type="REFERRAL")   # read and acknowledged
    assert wait_state(jc.client, ra1, "DELIVERED") == "DELIVERED"
    assert jc.wait(type="DELIVERED", ref_msg_id=day.sent_by_seq(s_ra1).hdr["msg_id"])
    day.move(("DELIVERED", day.sent_by_seq(s_ra1).hdr["msg_id"]), "SENT", "DELIVERED",
             referral_id=ra1)
    answer = {"recipient": JC, "referral_id": ra1}
    s = day.send(soz.client, dict(answer, type="ACCEPT", rule="CLIENT", recipient_case_ref="S-1"))
    day.move(s, "DELIVERED", "ACCEPTED", referral_id=ra1)
    s = day.send(soz.client, dict(answer, type="STATUS", code="appointment_set"))
    day.move(s, "ACCEPTED", "IN_PROGRESS", referral_id=ra1)
    s = day.send(soz.client, dict(answer, type="OUTCOME", code="completed"))
    day.move(s, "IN_PROGRESS", "COMPLETED", referral_id=ra1)
    s = day.send(aa.client, {"type": "ACCEPT", "recipient": JC, "referral_id": ra2})
    day.move(s, "SENT", "ACCEPTED", referral_id=ra2)

    # Case A: handed over to soz with ra2; aa answers the new lead
    offer = {"type": "HANDOVER_OFFER", "msg_id": uid("HO"), "recipient": SOZ, "case_id": A,
             "subject": pA, "purpose": "benefits", "legal_basis": STATUTE, "referrals": [ra2]}
    day.send(jc.client, offer, day.marker("HO"), rule="P1")
    assert soz.wait(type="HANDOVER_OFFER", msg_id=offer["msg_id"])
    s = day.send(soz.client, {"type": "HANDOVER_ACCEPT", "recipient": JC, "case_id": A,
                              "ref_msg_id": offer["msg_id"]})
    day.move(s, "OPEN", "OPEN", case_id=A, lead_from=JC, lead_to=SOZ)
    day.move(s, "ACCEPTED", "ACCEPTED", referral_id=ra2, sender_from=JC, sender_to=SOZ)
    s = day.send(aa.client, {"type": "STATUS", "recipient": SOZ, "referral_id": ra2,
                             "code": "in_progress"})
    day.move(s, "ACCEPTED", "IN_PROGRESS", referral_id=ra2)

    # Case B: a consent, a REFERRAL under it, a WITHDRAW, a revocation
    consent = uid("G-B")
    day.send(jc.client, {"type": "CONSENT_GRANT", "case_id": B, "consent": consent,
                         "subject": pB, "recipients": [SOZ, AA], "purposes": ["benefits"],
                         "categories": cat, "valid_until": now_ms() + 3600 * 1000,
                         "giver": "subject"})
    under = {"kind": "consent", "consent_id": consent}
    rb1, rb2 = uid("R-B1"), uid("R-B2")
    s_rb1 = day.send(jc.client, ref(rb1, B, SOZ, subject=pB, categories=cat, legal_basis=under),
                     day.marker("B1"), rule="P1")
    assert soz.wait(referral_id=rb1, type="REFERRAL")
    assert wait_state(jc.client, rb1, "DELIVERED") == "DELIVERED"
    day.move(("DELIVERED", day.sent_by_seq(s_rb1).hdr["msg_id"]), "SENT", "DELIVERED",
             referral_id=rb1)
    day.send(jc.client, ref(rb2, B, AA, subject=pB), day.marker("B2"), rule="P1")
    s = day.send(jc.client, {"type": "WITHDRAW", "recipient": AA, "referral_id": rb2})
    day.move(s, "SENT", "WITHDRAWN", referral_id=rb2)
    day.bad_state = day.refuse(aa.client, {"type": "ACCEPT", "recipient": JC,
                                           "referral_id": rb2})
    # soz forwards a referral to aa (§9.4 FORWARD: a new referral, to `org`)
    rb4 = uid("R-B4")
    s = day.send(jc.client, ref(rb4, B, SOZ, subject=pB), day.marker("B4"), rule="P1")
    assert soz.wait(referral_id=rb4, type="REFERRAL")
    assert wait_state(jc.client, rb4, "DELIVERED") == "DELIVERED"
    day.move(("DELIVERED", day.sent_by_seq(s).hdr["msg_id"]), "SENT", "DELIVERED",
             referral_id=rb4)
    day.forward = day.send(soz.client, {"type": "FORWARD", "recipient": JC, "referral_id": rb4,
                                        "org": AA, "subject": pB, "purpose": "benefits",
                                        "legal_basis": STATUTE}, day.marker("FW"), rule="P1")
    day.move(day.forward, "DELIVERED", "FORWARDED", referral_id=rb4)
    # rb5 to aa under the consent is receipted, never acknowledged (aa reads nothing)
    day.withheld = uid("R-B5")
    s_rb5 = day.send(jc.client, ref(day.withheld, B, AA, subject=pB, categories=cat,
                                    legal_basis=under), day.marker("B5"), rule="P1")
    day.withheld_msg_id = day.sent_by_seq(s_rb5).hdr["msg_id"]
    s = day.send(jc.client, {"type": "CONSENT_REVOKE", "consent": consent})
    day.revoke, day.consent = s, consent
    day.suspended = [rb1, day.withheld]     # their causes: test_a_revocation_names_itself
    day.move(None, "DELIVERED", "SUSPENDED", referral_id=rb1)
    day.move(None, "SENT", "SUSPENDED", referral_id=day.withheld)
    assert soz.wait(type="CONSENT_REVOKE", consent=consent)
    assert jc.wait(type="CONSENT_REVOKE", consent=consent, code="withheld")
    day.denied_revoked = day.refuse(jc.client, ref(uid("R-B3"), B, SOZ, subject=pB,
                                                   categories=cat, legal_basis=under),
                                    day.marker("B3"), rule="P1")
    s = day.send(jc.client, {"type": "WITHDRAW", "recipient": SOZ, "referral_id": rb1})
    day.move(s, "SUSPENDED", "WITHDRAWN", referral_id=rb1)

    # A referral left unanswered past its own deadline: OVERDUE, then EXPIRED
    day.overdue = uid("R-O")
    s = day.send(jc.client, ref(day.overdue, E, AA, subject=uid("p-O"),
                                deadline=now_ms() + 1000), day.marker("O"), rule="P1")
    msg_id = day.sent_by_seq(s).hdr["msg_id"]
    day.move(("REMINDER", msg_id), "SENT", "OVERDUE", referral_id=day.overdue)
    day.move(("EXPIRED", msg_id), "OVERDUE", "EXPIRED", referral_id=day.overdue)

    # Case E: two transfers about pE, their ERASURE, then an ACCESS_REPORT
    day.erased = []
    for n in (1, 2):
        rid = uid("R-E%d" % n)
        s = day.send(jc.client, ref(rid, E, SOZ, subject=pE, categories=cat,
                                    created_at=now_ms() - 3000),    # unlike the record's time
                     day.marker("E%d" % n), rule="P1")
        day.erased.append(s)
        assert soz.wait(referral_id=rid, type="REFERRAL")
        assert wait_state(jc.client, rid, "DELIVERED") == "DELIVERED"
        day.move(("DELIVERED", day.sent_by_seq(s).hdr["msg_id"]), "SENT", "DELIVERED",
                 referral_id=rid)
    # soz answers with a payload: indexed under pE as soz's (§9.3 Answers count)
    day.answer = day.send(soz.client, {"type": "INFO_RESPONSE", "recipient": JC,
                                       "referral_id": rid}, day.marker("IR"))
    day.erasure = day.send(jc.client, {"type": "ERASURE", "subject": pE, "case_id": E})
    assert soz.wait(type="ERASURE", subject=pE)
    day.erasure_soz = day.send(soz.client, {"type": "ERASURE", "subject": pE})
    assert jc.wait(type="ERASURE", subject=pE)
    day.report_request = day.send(jc.client, {"type": "ACCESS_REPORT", "subject": pE})
    day.report_pages = jc.wait(type="ACCESS_REPORT", subject=pE)
    day.report_request_soz = day.send(soz.client, {"type": "ACCESS_REPORT", "subject": pE})
    day.report_pages_soz = soz.wait(type="ACCESS_REPORT", subject=pE)

    # An agency's and an operator's QUERY are refused and logged (§8.11)
    day.refused_queries = []
    for client, filters in ((aa.client, dict(from_seq=1, case_id=A, org=JC, type="REFERRAL")),
                            (ops, dict(to_seq=5, from_time=day.t0))):
        try:
            list(client.query(window=10, **filters))
            day.refused_queries.append((client.org, filters, None))
        except kim.Rejected as e:
            day.refused_queries.append((client.org, filters, e))

    # Case A closes; its payloads go after retention/payload_seconds
    day.closed = day.send(soz.client, {"type": "CASE_CLOSED", "case_id": A})
    day.move(day.closed, "OPEN", "CLOSED", case_id=A)
    deadline = time.monotonic() + 10
    while not any(r["kind"] == PURGE and unpack(r["body"]).get("case_id") == A
                  for r in list(dsb.query(from_seq=day.closed))):
        assert time.monotonic() < deadline, "no retention purge: " + day.broker.log_tail()
        time.sleep(0.1)                 # a poll: the purge timer is due
    assert wait_state(jc.client, day.overdue, "EXPIRED", timeout=10) == "EXPIRED"
    assert jc.wait(type="EXPIRED", referral_id=day.overdue)
    jc.settle(0.2)
    soz.settle(0.2)


def _client(b, org, **options):
    c = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(org), timeout=WAIT, **options)
    c.connect()
    return c


@pytest.fixture(scope="module")
def day():
    """A broker of this module's own (ki.rheine added, a checkpoint every 8
    records, payloads of a closed case kept 1 s, an OVERDUE referral EXPIRED
    after 1 s), after the scripted day."""
    orgs = dict(ORGS, **{KI: "agency", OPS: "operator"})
    b = new_broker(orgs, audit={"checkpoint_records": CHECKPOINT_RECORDS},
                   retention={"payload_seconds": 1}, lifecycle={"expire_seconds": 1}).start()
    d = Day(b)
    clients = []
    try:
        jc, soz = _client(b, JC), _client(b, SOZ)
        aa, dsb = _client(b, AA, window=0), _client(b, DSB)
        ops = _client(b, OPS, window=0)
        clients += [jc, soz, aa, dsb, ops]
        d.broker_name = jc.welcome["broker"]
        jc_box, soz_box = Inbox(jc), Inbox(soz)
        d.inboxes = [jc_box, soz_box]
        play(d, jc_box, soz_box, Inbox(aa), dsb, ops)
        d.t1 = now_ms()
        # The whole log over the wire, as an auditor reads it
        d.wire = list(dsb.query(from_seq=1, window=64))
        d.t2 = now_ms()
    except BaseException:
        b.cleanup()
        raise
    finally:
        for c in clients:
            c.close()
    yield d
    b.finish()


@pytest.fixture(scope="module")
def stored(day):
    """The broker stopped: its log read from <data>/store with python3-lmdb
    ({seq: (kind, time, hash, body, value)}), then started again."""
    assert day.broker.stop() == 0, day.broker.log_tail()
    with open(os.path.join(day.broker.data, "keys", "broker.sign.pub")) as f:
        day.public_key = bytes.fromhex(f.readline().strip())
    kim_verify.verify(day.broker.data, day.public_key)       # the chain holds (§13.3)
    records = {}
    for seq, value in kim_verify.read_records(day.broker.data):
        kind, t = struct.unpack(">xBQ", value[:10])
        records[seq] = (kind, t, value[10:42], value[42:], value)
    files = {}
    for folder, _, names in os.walk(day.broker.data):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[path] = f.read()
    day.broker.start()
    _client(day.broker, DSB).close()        # up again: WELCOME came
    return records, files


def by_seq(day):
    if not hasattr(day, "_by_seq"):
        day._by_seq = {r["seq"]: r for r in day.wire}
    return day._by_seq


def bodies(day):
    """Every record's body decoded, by seq (a fresh copy each call)."""
    return {r["seq"]: unpack(r["body"]) for r in day.wire}


def messages(day):
    return {seq: b for seq, b in bodies(day).items() if by_seq(day)[seq]["kind"] == MESSAGE}


#   --- both ways: RECORD frames and the store file (§8.11) ------------------

def test_wire_and_file_hold_the_same_records(day, stored):
    """§8.11: RECORD carries seq/time/kind/hash/body "as stored"; the store's
    key is seq (u64), its value format 01 ‖ kind ‖ time ‖ hash ‖ body; seqs from 1
    without gaps; time is the broker's clock at append."""
    records, _ = stored
    assert sorted(records) == list(range(1, len(records) + 1))
    wire = [r["seq"] for r in day.wire]
    assert wire == list(range(1, len(wire) + 1)) and len(wire) <= len(records)
    for r in day.wire:
        assert set(r) == {"cmd", "query_id", "seq", "time", "kind", "hash", "body"}
        kind, t, h, body, value = records[r["seq"]]
        assert value[0] == 1 and len(value) >= 42
        assert (r["kind"], r["time"], r["hash"], r["body"]) == (kind, t, h, body), r["seq"]
        assert day.t0 - 1000 <= t <= day.t2 + 1000, (r["seq"], t)
    # the wire's last record is the dump's own audit read (§8.11)
    last = unpack(day.wire[-1]["body"])
    assert day.wire[-1]["kind"] == AUDIT_READ and last["query_id"] == day.wire[-1]["query_id"]


def test_every_body_is_one_messagepack_map_and_kinds_are_known(day):
    """§8.11: "Bodies are MessagePack maps"; kind is 1 to 6 for what this broker
    writes; all six kinds occur in the day's log."""
    kinds = set()
    for r in day.wire:
        assert isinstance(unpack(r["body"]), dict), r["seq"]
        kinds.add(r["kind"])
    assert kinds == {MESSAGE, CHECKPOINT, DECISION, AUDIT_READ, PURGE, STATE}


def test_checkpoints_seal_the_record_before_them(day, stored):
    """§8.11 kind 2: exactly the 161-byte layout; seq/head are the previous
    record's (as the wire shows it), key_id the broker key's."""
    seqs = by_seq(day)
    cps = [r for r in day.wire if r["kind"] == CHECKPOINT]
    assert cps
    for r in cps:
        fields = kim_verify.parse_checkpoint(r["body"])
        assert fields is not None, r["seq"]
        cp_seq, head, _, key_id, _ = fields
        assert cp_seq == r["seq"] - 1 and head == seqs[cp_seq]["hash"]
        assert key_id == kim_verify.key_id(day.public_key)
        assert list(unpack(r["body"])) == ["seq", "head", "time", "key_id", "sig"]


#   --- kind 1: message records ----------------------------------------------

def test_message_records_are_the_canonical_headers_as_sent_with_the_brokers_fields(day):
    """§8.11 kind 1 "body: canonical header" (§6 rule 8); §8.3: RECEIPT's seq is
    the record's, the broker sets sender, payload_len, payload_hash; §9/§9.3: it
    sets `rule` on an allowed transfer and discards a client's `rule`."""
    wire = by_seq(day)
    for s in day.sent.values():
        r = wire[s.seq]
        assert r["kind"] == MESSAGE, s.hdr
        logged = unpack(r["body"])
        expected = {k: v for k, v in s.hdr.items() if k != "rule"}
        expected.update(sender=s.org, payload_hash=blake2b(s.payload))
        if s.payload:
            expected["payload_len"] = len(s.payload)
        if s.rule:
            expected["rule"] = s.rule
        assert ("sig" in logged) == (s.org == JC), logged    # jc.rheine signs (§13.4)
        if "sig" in logged:
            expected["sig"] = logged["sig"]
        canonical = msgpack.packb(kim.canonical_header(expected), use_bin_type=True)
        assert r["body"] == canonical, (s.hdr["type"], logged)


def test_every_message_record_keeps_the_per_type_field_rules(day):
    """§9.1: each type's required fields present, no field beyond them; schema 1;
    sender set; payload_hash 32 bytes; broker-made ones sent by the broker."""
    for seq, hdr in messages(day).items():
        required, optional = PER_TYPE[hdr["type"]]
        assert required <= set(hdr), (seq, hdr)
        assert set(hdr) <= UNIVERSAL | required | optional, (seq, hdr)
        body = by_seq(day)[seq]["body"]
        assert body == msgpack.packb(kim.canonical_header(hdr), use_bin_type=True), hdr
        assert hdr["schema"] == 1 and isinstance(hdr["payload_hash"], bytes)
        assert len(hdr["payload_hash"]) == 32
        sent = next((s for s in day.sent.values() if s.seq == seq), None)
        if sent is None:            # made by the broker
            assert hdr["sender"] == day.broker_name, hdr
        else:
            assert hdr["sender"] == sent.org
    types = {h["type"] for h in messages(day).values()}
    assert {"DELIVERED", "ERASURE", "ACCESS_REPORT", "CONSENT_REVOKE", "REMINDER",
            "EXPIRED"} <= types


def test_what_recipients_got_is_the_header_the_log_holds(day):
    """§8.6: DELIVER's seq is the log's and hdr is "the header as the log holds
    it", byte for byte in canonical form; DELIVERED names the acknowledged
    REFERRAL (§9.4)."""
    wire = by_seq(day)
    got = [d for box in day.inboxes for d in box.got]
    assert len(got) >= 10
    for d in got:
        assert wire[d.seq]["kind"] == MESSAGE
        assert msgpack.packb(d.hdr, use_bin_type=True) == wire[d.seq]["body"], d
    delivered = [d.hdr for d in got if d.hdr["type"] == "DELIVERED"]
    referrals = {s.hdr["msg_id"]: s for s in day.sent.values() if s.hdr["type"] == "REFERRAL"}
    assert delivered
    for hdr in delivered:
        ref = referrals[hdr["ref_msg_id"]]
        assert (hdr["recipient"], hdr["referral_id"]) == (JC, ref.hdr["referral_id"])


def test_payloads_are_never_in_the_log_nor_in_plain_in_the_data_folder(day, stored):
    """§8.11/§9.3: the log never holds payloads (only their hashes); every
    payload is stored encrypted, so the bytes as sent are in no file of the
    data folder."""
    records, files = stored
    assert day.markers
    for m in day.markers:
        for seq, (_, _, _, _, value) in records.items():
            assert m not in value, (m, seq)
        for path, data in files.items():
            assert m not in data, (m, path)


#   --- kind 3: policy decisions (§8.3, §9.3) --------------------------------

def test_a_refused_send_leaves_nothing_but_the_policy_decision(day):
    """§8.3: "A REJECTed message leaves nothing in the log but the policy
    decision"; a refusal that is not a policy decision (BAD_STATE) leaves
    nothing; a denied msg_id is not used up."""
    wire = by_seq(day)
    for hdr, answer, before, after, rule in day.refused:
        assert isinstance(answer, kim.Rejected), (hdr, answer)
        added = [wire[s] for s in range(before + 1, after + 1) if wire[s]["kind"] != CHECKPOINT]
        if rule is None:
            assert answer.reason == "BAD_STATE" and added == [], added
            continue
        assert [r["kind"] for r in added] == [DECISION], added
        assert unpack(added[0]["body"])["msg_id"] == hdr["msg_id"]
        logged = [s for s, h in messages(day).items() if h["msg_id"] == hdr["msg_id"]
                  and h.get("sender") == JC]
        if hdr["msg_id"] == day.reused_msg_id:
            assert logged == [day.sent[hdr["msg_id"]].seq] and logged[0] > after
        else:
            assert logged == []


def test_decision_records_carry_the_rule_the_law_the_text_and_the_metadata(day):
    """§9.3: a DECISION body is a map: decision "deny", code (reason name),
    rule, law, reason (the REJECT text), and the header's msg_id, type, sender,
    recipient, referral_id, case_id, subject, purpose, categories, basis and
    citation or consent_id."""
    decisions = {b["msg_id"]: b for seq, b in bodies(day).items()
                 if by_seq(day)[seq]["kind"] == DECISION}
    cases = [(day.denied_deny, "POLICY_DENY", "P11"), (day.denied_no_basis, "NO_BASIS", "P1s"),
             (day.denied_revoked, "CONSENT_REVOKED", "P1"),
             (day.denied_default, "POLICY_DENY", "default")]
    for hdr, code, rule in cases:
        answer = next(a for h, a, _, _, _ in day.refused if h["msg_id"] == hdr["msg_id"])
        assert isinstance(answer, kim.Rejected) and answer.reason == code, answer
        d = decisions[hdr["msg_id"]]
        basis = hdr["legal_basis"]
        proof = "citation" if basis["kind"] == "statute" else "consent_id"
        assert set(d) | {"referral_id", "subject"} == {
            "decision", "code", "rule", "law", "reason", "msg_id", "type", "sender",
            "recipient", "referral_id", "case_id", "subject", "purpose", "categories", "basis",
            proof}, d
        assert (d["decision"], d["code"], d["rule"], d["reason"]) == (
            "deny", code, rule, answer.text)
        # the law of rule "default": §9.3 does not say; a str all the same
        assert d["law"] == policy_law(rule) if rule != "default" else isinstance(d["law"], str)
        # a field the header lacks (an offer's referral_id, subject): absent or ""
        # (the broker writes ""; §9.3 does not say)
        assert (d["type"], d["sender"], d["recipient"], d.get("referral_id", ""), d["case_id"],
                d.get("subject", ""), d["purpose"], d["categories"], d["basis"], d[proof]) == (
            hdr["type"], JC, hdr["recipient"], hdr.get("referral_id", ""), hdr["case_id"],
            hdr.get("subject", ""), hdr["purpose"], hdr["categories"], basis["kind"],
            basis[proof])
    assert len(decisions) == len(cases)


#   --- kind 6: state records (§9.4) -----------------------------------------

def _cause(day, cause):
    """The seqs a state record may name as its cause: the message's; for a move
    on an ACK or a timer the REFERRAL's or the broker-made DELIVERED, REMINDER
    or EXPIRED's (§9.4 is silent on which: neither an ACK nor a timer is a
    record)."""
    if cause is None:           # any: checked by a test of its own
        return set(by_seq(day))
    if isinstance(cause, int):
        return {cause}
    made_type, msg_id = cause
    opened = day.sent[msg_id]
    made = {s for s, h in messages(day).items()
            if h["type"] == made_type and h["sender"] == day.broker_name
            and (h.get("ref_msg_id") == msg_id
                 or h.get("referral_id") == opened.hdr["referral_id"])}
    assert made, cause
    return made | {opened.seq}


def test_every_move_is_a_state_record_with_from_to_and_its_cause(day):
    """§9.4: each change of a referral's state and of a case's lead or state is
    a kind 6 map: referral_id or case_id, from, to, seq (the causing record);
    a handover adds lead_from/lead_to to the case's record and
    sender_from/sender_to to each moved referral's; nothing else."""
    ours = {m["referral_id"] for m in day.moves} | {day.case_a, day.case_b, day.case_e}
    states = [(seq, b) for seq, b in bodies(day).items() if by_seq(day)[seq]["kind"] == STATE]
    mine = [(seq, b) for seq, b in states
            if b.get("referral_id") in ours or ("referral_id" not in b and b.get("case_id")
                                                in ours)]
    assert len(mine) == len(states)         # the day's log holds only these
    for seq, b in mine:
        assert isinstance(b["from"], str) and isinstance(b["to"], str)
        assert type(b["seq"]) is int
        if b.get("referral_id") not in day.suspended:
            assert by_seq(day)[b["seq"]]["kind"] == MESSAGE, (seq, b)
        if "referral_id" in b:
            assert set(b) - {"case_id", "sender_from", "sender_to"} == {
                "referral_id", "from", "to", "seq"}, b
        else:
            assert set(b) - {"lead_from", "lead_to"} == {"case_id", "from", "to", "seq"}, b
    got = [b for _, b in mine]
    for m in day.moves:
        key = ("referral_id", m["referral_id"]) if m["referral_id"] else ("case_id",
                                                                        m["case_id"])
        found = [b for b in got if b.get(key[0]) == key[1] and (key[0] == "referral_id"
                                                                or "referral_id" not in b)
                 and b["from"] == m["frm"] and b["to"] == m["to"]
                 and b["seq"] in _cause(day, m["cause"])]
        assert len(found) == 1, (m, [b for b in got if b.get(key[0]) == key[1]])
        b = found[0]
        for k, v in m["extra"].items():
            assert b[k] == v, (m, b)
        for k in ("lead_from", "lead_to", "sender_from", "sender_to"):
            assert (k in b) == (k in m["extra"]), (m, b)
        got.remove(b)
    assert got == [], got                   # no state record the day did not cause


def test_a_revocation_names_itself_as_the_cause_of_every_suspension(day):
    """§9.4: a state record's `seq` is "the record that caused it": each referral
    a CONSENT_REVOKE suspends (here two, in one transaction) names the revoke."""
    suspended = {b["referral_id"]: b["seq"] for seq, b in bodies(day).items()
                 if by_seq(day)[seq]["kind"] == STATE and b["to"] == "SUSPENDED"}
    assert sorted(suspended) == sorted(day.suspended)
    assert suspended == {rid: day.revoke for rid in day.suspended}, suspended


def test_each_referrals_states_follow_on_from_each_other(day):
    """§9.4: `from` and `to` are always the state before and after: each record's
    `from` is the `to` of the one before it; the REFERRAL opens in SENT."""
    chains = {}
    for seq, b in sorted(bodies(day).items()):
        if by_seq(day)[seq]["kind"] == STATE and "referral_id" in b:
            chains.setdefault(b["referral_id"], []).append((b["from"], b["to"]))
    assert len(chains) >= 5
    for rid, chain in chains.items():
        assert chain[0][0] == "SENT", (rid, chain)
        for (_, to), (frm, _) in zip(chain, chain[1:]):
            assert frm == to, (rid, chain)


def test_a_revocation_is_logged_with_its_notices(day):
    """§9.3: from a CONSENT_REVOKE's commit open referrals under it are SUSPENDED
    (state records above); each organisation that received data under it gets a
    broker-made CONSENT_REVOKE (consent, case_id, code "revoked"); a REFERRAL
    receipted but not acknowledged is withheld and its sender gets one with code
    "withheld", referral_id and ref_msg_id, "which like every record is in the log"."""
    notices = {h["recipient"]: (seq, h) for seq, h in messages(day).items()
               if h["type"] == "CONSENT_REVOKE" and h["sender"] == day.broker_name}
    seq, soz = notices[SOZ]
    assert (soz["consent"], soz["case_id"], soz["code"]) == (day.consent, day.case_b, "revoked")
    assert seq > day.revoke
    seq, jc = notices[JC]
    assert (jc["consent"], jc["code"], jc["referral_id"], jc["ref_msg_id"]) == (
        day.consent, "withheld", day.withheld, day.withheld_msg_id)
    assert seq > day.revoke


#   --- kind 5: purge records (§9.3 ERASURE, §9.4 Retention) ----------------

def _purges(day, reason):
    return [(seq, b) for seq, b in bodies(day).items()
            if by_seq(day)[seq]["kind"] == PURGE and b.get("reason") == reason]


def test_the_erasure_purge_records(day):
    """§9.3: an ERASURE appends a PURGE (kind 5) with reason "erasure", subject,
    requested_by, msg_id, request_seq, case_id, part, seqs (the payloads
    purged: the asker's transfers, or its answers with a payload), told and
    last; each organisation told gets a broker-made ERASURE (subject, case_id)."""
    purges = {b["requested_by"]: b for _, b in _purges(day, "erasure")}
    assert sorted(purges) == [JC, SOZ], purges
    fields = {"reason", "subject", "requested_by", "msg_id", "request_seq", "case_id",
              "part", "seqs", "told", "last"}
    for org, request_seq, case_id, seqs, told in (
            (JC, day.erasure, day.case_e, day.erased, SOZ),
            (SOZ, day.erasure_soz, None, [day.answer], JC)):
        p = purges[org]
        request = day.sent_by_seq(request_seq)
        # an ERASURE without case_id: §9.3 lists case_id among the fields
        # without saying how "none" is written; absent or "" are both taken
        assert set(p) | {"case_id"} == fields, p
        assert (p["subject"], p["msg_id"], p["request_seq"], p.get("case_id") or None,
                p["part"], p["last"]) == (day.subject_e, request.hdr["msg_id"], request_seq,
                                          case_id, 1, True), p
        assert all(type(s) is int for s in p["seqs"]) and sorted(p["seqs"]) == sorted(seqs)
        assert p["told"] == [told], p
        copies = [(seq, h) for seq, h in messages(day).items() if h["type"] == "ERASURE"
                  and h["sender"] == day.broker_name and h["recipient"] == told]
        assert len(copies) == 1 and copies[0][0] > request_seq, copies
        assert (copies[0][1]["subject"], copies[0][1].get("case_id")) == (day.subject_e, case_id)


def test_the_retention_purge_record(day):
    """§9.4 Retention: retention/payload_days after CASE_CLOSED (here
    payload_seconds = 1) a PURGE: case_id, reason "retention", retention_s,
    seqs naming the case's purged payloads; the message records stay."""
    purges = _purges(day, "retention")
    assert len(purges) == 1, purges
    seq, p = purges[0]
    assert seq > day.closed
    assert set(p) == {"case_id", "reason", "retention_s", "seqs"}, p
    assert (p["case_id"], p["retention_s"]) == (day.case_a, 1)
    msgs = messages(day)
    rids = {h.get("referral_id") for h in msgs.values() if h.get("case_id") == day.case_a}
    in_case = {s for s, h in msgs.items() if h.get("case_id") == day.case_a
               or (h.get("referral_id") in rids and h.get("referral_id"))}
    with_payload = {s for s in in_case if msgs[s].get("payload_len")}
    assert len(with_payload) == 3                   # ra1, ra2 and the offer
    assert with_payload <= set(p["seqs"]) <= in_case, p["seqs"]
    assert all(by_seq(day)[s]["kind"] == MESSAGE for s in p["seqs"])
    assert p["seqs"] == sorted(p["seqs"]), p["seqs"]       # §8.11 kind 5: the log's order


def test_a_withheld_payload_has_its_purge_record(day):
    """§9.3 Withholding, §8.11 kind 5: the withheld REFERRAL's payload is purged with a
    purge record (reason "withheld", case_id, consent, seqs) in the revocation's
    transaction: every payload the broker removes is named by one."""
    purges = _purges(day, "withheld")
    assert len(purges) == 1, purges
    seq, p = purges[0]
    (held,) = [(s, h) for s, h in messages(day).items() if h["msg_id"] == day.withheld_msg_id]
    assert set(p) == {"case_id", "reason", "consent", "seqs"}, p
    assert (p["case_id"], p["consent"], p["seqs"]) == (held[1]["case_id"], day.consent,
                                                      [held[0]]), p
    assert seq > day.revoke


#   --- ACCESS_REPORT: metadata from the log (§9.3) -------------------------

def test_the_access_report_is_the_logs_metadata(day):
    """§9.3: broker-made ACCESS_REPORTs to the asker in the transaction that logs
    the request; each page's transfers (seq, type, from, to, case_id, purpose,
    categories, basis, citation, rule) are the log records' metadata; payload
    "erased" once purged."""
    (page,) = day.report_pages
    wire = by_seq(day)
    assert page.hdr["sender"] == day.broker_name and page.hdr["recipient"] == JC
    assert page.hdr["subject"] == day.subject_e and page.seq > day.report_request
    # "all in the transaction that logs the request": nothing else comes between
    between = [wire[s] for s in range(day.report_request + 1, page.seq)]
    assert all(r["kind"] == CHECKPOINT for r in between), between
    assert page.sealed_error is False or blake2b(page.payload) == page.hdr["payload_hash"]
    report = json.loads(page.payload)
    assert (report["requested_by"], report["page"], report["last"], report["total"]) == (
        JC, 1, True, len(day.erased))
    assert sorted(t["seq"] for t in report["transfers"]) == sorted(day.erased)
    for t in report["transfers"]:
        hdr = unpack(wire[t["seq"]]["body"])
        assert (t["type"], t["from"], t["to"], t["case_id"], t["purpose"], t["categories"],
                t["basis"], t["citation"], t["rule"], t["payload"]) == (
            hdr["type"], hdr["sender"], hdr["recipient"], hdr["case_id"], hdr["purpose"],
            hdr["categories"], hdr["legal_basis"]["kind"], hdr["legal_basis"]["citation"],
            hdr["rule"], "erased")
        # §9.3 says "time" but not whose: the record's time or the sender's created_at
        assert t["time"] in (wire[t["seq"]]["time"], hdr["created_at"]), t
    # soz's answer with a payload is listed to soz: basis "none", no rule
    (page,) = day.report_pages_soz
    report = json.loads(page.payload)
    assert (report["requested_by"], report["total"]) == (SOZ, 1)
    (t,) = report["transfers"]
    assert (t["seq"], t["type"], t["from"], t["to"], t["basis"], t["payload"]) == (
        day.answer, "INFO_RESPONSE", SOZ, JC, "none", "erased")
    assert t.get("rule", "") == "", t        # "no rule": the broker writes "rule": ""


#   --- kind 4: audit reads (§8.11) -----------------------------------------

def _own_reads(client, since, query_id=None):
    return [(r["seq"], unpack(r["body"])) for r in client.query(from_seq=since)
            if r["kind"] == AUDIT_READ and (query_id is None
                                            or unpack(r["body"])["query_id"] == query_id)]


def test_a_refused_query_is_on_the_record_with_its_filters(day):
    """§8.11 kind 4: {"reader", "query_id"}, the QUERY's filters as given, its
    window, and "refused": "FORBIDDEN" after window for a role that may not
    read the log (an agency, an operator)."""
    assert [org for org, _, _ in day.refused_queries] == [AA, OPS]
    for org, filters, refused in day.refused_queries:
        assert isinstance(refused, kim.Rejected) and refused.reason == "FORBIDDEN", refused
        reads = [b for seq, b in bodies(day).items() if by_seq(day)[seq]["kind"] == AUDIT_READ
                 and b["query_id"] == refused.msg_id]
        assert len(reads) == 1, reads
        assert list(reads[0].items()) == [("reader", org), ("query_id", refused.msg_id)] + [
            (k, filters[k]) for k in FILTER_ORDER if k in filters] + [
            ("window", 10), ("refused", "FORBIDDEN")]


def test_an_audit_read_carries_every_filter_and_only_the_first_window(day, stored, connect_to):
    """§8.11 kind 4: reader, query_id, then from_seq, to_seq, from_time, to_time,
    case_id, org, type as given, then the first window; more credit is the
    same query: no second record."""
    dsb = connect_to(day.broker, DSB)
    last = day.wire[-1]["seq"]
    filters = dict(from_seq=1, to_seq=last, from_time=day.t0 - 1000, to_time=day.t2 + 1000,
                   case_id=day.case_a, org=JC, type="REFERRAL")
    got = list(dsb.query(window=1, **filters))      # window 1: credit after each record
    assert len(got) >= 3
    query_id = got[0]["query_id"]
    reads = _own_reads(dsb, last + 1, query_id)
    assert len(reads) == 1, reads
    assert list(reads[0][1].items()) == [("reader", DSB), ("query_id", query_id)] + [
        (k, filters[k]) for k in FILTER_ORDER] + [("window", 1)]


#   --- QUERY filters on every kind of record (§8.11) -----------------------

def _matches(kind, body, key, value):
    """§8.11: a filter matches the header of a message record and the field of
    the same meaning in other records; a record without it does not match.
    None where the spec does not say which field means "sent or received"."""
    if key in ("case_id", "type"):
        return body.get(key) == value
    if kind == MESSAGE and body.get("type") == "FORWARD" and body.get("org") == value:
        return True             # a FORWARD is delivered to `org` too (§9.4 FORWARD)
    if kind in (MESSAGE, DECISION):
        return value in (body.get("sender"), body.get("recipient"))
    if kind == AUDIT_READ:     # its `org` filter; whether `reader` counts is not said
        return True if body.get("org") == value else (None if body["reader"] == value
                                                      else False)
    if kind == CHECKPOINT:
        return False
    return None


@pytest.mark.parametrize("key,value", [("case_id", "A"), ("case_id", "E"), ("type", "REFERRAL"),
                                       ("type", "DELIVERED"), ("org", JC), ("org", SOZ),
                                       ("org", AA)])
def test_a_filter_matches_exactly_the_records_with_that_field(day, stored, connect_to,
                                                              key, value):
    """§8.11: case_id, org and type select on every kind of record by its own
    fields (a DECISION by its header metadata, an audit read by its filters, a
    state or purge record by case_id); checkpoints and records without the
    field never match."""
    value = {"A": day.case_a, "E": day.case_e}.get(value, value)
    dsb = connect_to(day.broker, DSB)
    last = day.wire[-1]["seq"]
    got = {r["seq"]: r["kind"] for r in dsb.query(to_seq=last, **{key: value})}
    all_bodies = bodies(day)
    want, unsure = set(), set()
    for r in day.wire:
        m = _matches(r["kind"], all_bodies[r["seq"]], key, value)
        if m is None:
            unsure.add(r["seq"])
        elif m:
            want.add(r["seq"])
    assert want
    assert set(got) - unsure == want, sorted((set(got) - unsure) ^ want)
    assert all(got[s] == by_seq(day)[s]["kind"] for s in got)
