"""What the broker answers to reading commands, checked against PROTOCOL.md
over real sockets: STATUS (§8.9), SUBSCRIBE and UNSUBSCRIBE (§8.10), an
auditor's QUERY, RECORD and QUERY_END (§8.11), DIRECTORY (§8.15), their rate
costs (§7.3), error paths (§6.1), reason codes (§10) and the connection's
states (§11).

Most tests use a broker of this module's own (jc.rheine, soz.rheine,
aa.rheine, the auditor dsb.steinfurt) so that the log and the mailboxes hold
only what the tests put there; tests that need other limits start one more.
Sessions are read frame by frame (class Session) so that every DELIVER and
every REJECT is seen. Every wait is bounded."""
import os
import time

import msgpack
import nacl.hash
import pytest
from nacl.encoding import RawEncoder

import kim
from kim_frames import pump
from conftest import new_broker
from kim_headers import referral

QUIET = 0.3             # s without a frame that count as "nothing came"
WAIT = 5.0              # s an answer may take at most

MALFORMED, BAD_ID, TOO_MANY, UNKNOWN_TYPE, BAD_VALUE, UNKNOWN_FIELD = 100, 105, 106, 109, 110, 111
MISSING_FIELD = 102
NO_SESSION, FORBIDDEN, RATE_LIMITED = 200, 205, 207
ORG_LIMIT = 305
STATUS_KEYS = {"log_head", "mailbox", "in_flight", "sessions", "uptime_ms", "store_bytes"}


#   --- brokers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def own():
    """This module's broker, default settings."""
    b = new_broker().start()
    b.started_ms = int(time.time() * 1000)
    yield b
    b.finish()


@pytest.fixture
def open_session():
    """open_session(broker, org, window=0, versions=(2, 1)) -> a Session after HELLO."""
    sessions = []

    def make(b, org, window=0, versions=(2, 1), hello=True):
        c = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(org), window=window,
                       timeout=WAIT, versions=versions)
        s = Session(c)
        sessions.append(s)
        if hello:
            c.connect()
            s.take_queued()
        else:
            s.dial()
        return s
    yield make
    for s in sessions:
        s.client.close()


#   --- one session, frame by frame --------------------------------------------

class Session:
    """A kim.Client read frame by frame: `delivered` (seq, hdr, payload) in
    arrival order, repeats kept; `rejects` every REJECT; `others` every other
    command."""

    def __init__(self, client):
        self.client = client
        self.delivered, self.rejects, self.others = [], [], []

    def take_queued(self):
        while self.client._deliveries:
            d = self.client._deliveries.popleft()
            self.delivered.append((d.seq, d.hdr, d.payload))

    def dial(self):
        """Connects without HELLO (the CURVE handshake runs in the background)."""
        self.client._open_socket()

    @property
    def sock(self):
        return self.client._sock

    def take(self, cmd, payload):
        if cmd["cmd"] == "DELIVER":
            self.delivered.append((cmd["seq"], cmd["hdr"], payload or b""))
        elif cmd["cmd"] == "DELIVER_BATCH":
            for entry, entry_payload in cmd["entries"]:
                self.delivered.append((entry["seq"], entry["hdr"], entry_payload or b""))
        elif cmd["cmd"] == "REJECT":
            self.rejects.append(cmd)
        else:
            self.others.append(cmd)

    def send(self, cmd, payload=None):
        self.client._send_cmd(cmd, payload)

    def send_raw(self, frame):
        self.client._send_frames(frame)

    def pump(self, seconds, until=None):
        return pump([self], seconds, until)

    def answer(self, cmd, match, timeout=WAIT):
        """Sends `cmd`, pumps until a command or REJECT that `match` accepts
        comes; returns it."""
        others, rejects = len(self.others), len(self.rejects)

        def found():
            return [c for c in self.others[others:] + self.rejects[rejects:] if match(c)]
        self.send(cmd)
        assert self.pump(timeout, found), "no answer to %r within %.1f s" % (cmd, timeout)
        return found()[0]

    def ask(self, cmd, name, timeout=WAIT):
        """Sends `cmd`; returns the first `name` command or REJECT after it."""
        return self.answer(cmd, lambda c: c["cmd"] in (name, "REJECT"), timeout)

    def by_id(self, cmd, msg_id, timeout=WAIT):
        """Sends `cmd`; returns its RECEIPT or REJECT, matched by msg_id."""
        return self.answer(cmd, lambda c: c["cmd"] in ("RECEIPT", "REJECT")
                           and c.get("msg_id") == msg_id, timeout)

    def alive(self):
        assert self.ask({"cmd": "PING"}, "PONG")["cmd"] == "PONG"

    def status(self):
        reply = self.ask({"cmd": "STATUS"}, "STATUS_REPLY")
        assert reply["cmd"] == "STATUS_REPLY", reply
        return reply["status"]

    def subscribe(self, sub_id, **fields):
        cmd = {"cmd": "SUBSCRIBE", "sub_id": sub_id}
        cmd.update(fields)
        return self.by_id(cmd, sub_id)

    def unsubscribe(self, sub_id):
        return self.by_id({"cmd": "UNSUBSCRIBE", "sub_id": sub_id}, sub_id)

    def ack_all(self):
        seqs = sorted({seq for seq, _, _ in self.delivered})
        if seqs:
            self.send({"cmd": "ACK", "seqs": seqs})
            self.alive()

    def seqs(self):
        return [seq for seq, _, _ in self.delivered]

    def query(self, query_id, window=4096, timeout=WAIT, **filters):
        """A whole QUERY: returns (records, QUERY_END), granting more credit as
        the window is used up; or (None, REJECT)."""
        cmd = {"cmd": "QUERY", "query_id": query_id}
        cmd.update(filters)
        cmd["window"] = window
        records = []
        mark = len(self.others)
        rejects = len(self.rejects)
        self.send(cmd)
        credit = window
        deadline = time.monotonic() + timeout
        while True:
            def mine():
                return [c for c in self.others[mark:] if c.get("query_id") == query_id]

            def refused():
                return [r for r in self.rejects[rejects:] if r.get("msg_id") == query_id]
            assert self.pump(deadline - time.monotonic(),
                             lambda: mine() or refused()), "query %s: no answer" % query_id
            if refused():
                return None, refused()[0]
            for c in mine():
                mark = self.others.index(c, mark) + 1
                if c["cmd"] == "QUERY_END":
                    return records, c
                assert c["cmd"] == "RECORD", c
                records.append(c)
                credit -= 1
                if credit == 0:
                    self.send({"cmd": "QUERY", "query_id": query_id, "window": window})
                    credit = window
                break


def sent(client, hdr, payload=b""):
    """Sends with the client's own SEND; returns the RECEIPT's seq."""
    r = client.client.send(hdr, payload)
    assert r["cmd"] == "RECEIPT" and not r.get("dup"), r
    return r["seq"]


def reject_of(answer, code, path=None, msg_id=None):
    assert answer["cmd"] == "REJECT", answer
    assert answer["code"] == code, answer
    if path is not None:
        assert answer.get("path", "") == path, answer
    assert answer.get("msg_id") == msg_id, answer


def case_traffic(b, open_session, tag):
    """In case C-<tag>: jc -> soz (R-<tag>-1), then jc -> aa (R-<tag>-2),
    aa's ACCEPT of it (no case_id in its header) and aa's STATUS. Returns
    the seqs by name. soz takes part in the case; aa in the case too."""
    jc = open_session(b, "jc.rheine")
    aa = open_session(b, "aa.rheine")
    case = "C-%s" % tag
    seqs = {"to_soz": sent(jc, referral("R-%s-1" % tag, case, "soz.rheine"), b"for soz")}
    seqs["to_aa"] = sent(jc, referral("R-%s-2" % tag, case, "aa.rheine"), b"for aa only")
    seqs["accept"] = sent(aa, {"type": "ACCEPT", "recipient": "jc.rheine",
                               "referral_id": "R-%s-2" % tag})
    seqs["status"] = sent(aa, {"type": "STATUS", "recipient": "jc.rheine",
                               "referral_id": "R-%s-2" % tag, "code": "in_progress"})
    return seqs


def drain(b, open_session, org):
    """Receives and acknowledges everything waiting for `org`; says BYE."""
    s = open_session(b, org, window=256)
    deadline = time.monotonic() + 10
    while True:
        s.pump(0.2)
        s.ack_all()
        s.delivered = []
        if s.status()["mailbox"] == 0:
            break
        assert time.monotonic() < deadline, "the mailbox of %s stays full" % org
    s.client.close()


#   --- §8.9 STATUS -----------------------------------------------------------

def test_status_reply_figures_for_the_callers_organisation(own, open_session):
    drain(own, open_session, "aa.rheine")
    jc = open_session(own, "jc.rheine")
    quiet = open_session(own, "aa.rheine", window=0)
    seqs = [sent(jc, referral("R-ST-%d" % i, "C-ST", "aa.rheine"), b"x") for i in range(3)]
    status = quiet.status()
    assert set(status) == STATUS_KEYS                       # all six, nothing else
    assert all(isinstance(v, int) and v >= 0 for v in status.values())
    assert status["log_head"] >= seqs[-1]                   # the last seq in the log
    assert status["mailbox"] == 3 and status["in_flight"] == 0
    assert status["sessions"] == 1
    assert 0 < status["uptime_ms"] <= int(time.time() * 1000) - own.started_ms + 1000
    assert status["store_bytes"] > 0
    reply = quiet.ask({"cmd": "STATUS"}, "STATUS_REPLY")
    assert "body" not in reply                              # agencies never get a body

    receiver = open_session(own, "aa.rheine", window=2)
    assert receiver.pump(WAIT, lambda: len(receiver.delivered) == 2)
    status = quiet.status()
    assert status["mailbox"] == 3 and status["in_flight"] == 2 and status["sessions"] == 2
    receiver.send({"cmd": "ACK", "seqs": [seqs[0]]})
    assert receiver.pump(WAIT, lambda: len(receiver.delivered) == 3)
    receiver.alive()
    status = quiet.status()
    assert status["mailbox"] == 2 and status["in_flight"] == 2   # the third came
    receiver.ack_all()
    deadline = time.monotonic() + WAIT
    while quiet.status()["mailbox"] and time.monotonic() < deadline:
        quiet.pump(0.05)
    status = quiet.status()
    assert status["mailbox"] == 0 and status["in_flight"] == 0
    head = jc.status()["log_head"]
    later = sent(jc, referral("R-ST-9", "C-ST", "soz.rheine"))
    assert later > head and jc.status()["log_head"] >= later


def test_status_of_an_auditor_has_no_body_and_counts_its_sessions(own, open_session):
    a = open_session(own, "dsb.steinfurt", window=16)
    assert a.client.welcome["window"] == 0                  # §7.2: auditors get no window
    b = open_session(own, "dsb.steinfurt")
    reply = a.ask({"cmd": "STATUS"}, "STATUS_REPLY")
    assert set(reply) == {"cmd", "status"}
    assert reply["status"]["sessions"] == 2 and reply["status"]["mailbox"] == 0
    b.alive()


def test_status_with_a_field_is_refused_and_x_fields_are_ignored(own, open_session):
    s = open_session(own, "soz.rheine")
    reject_of(s.ask({"cmd": "STATUS", "org": "jc.rheine"}, "STATUS_REPLY"),
              UNKNOWN_FIELD, "org")
    assert s.ask({"cmd": "STATUS", "x-note": "hi"}, "STATUS_REPLY")["cmd"] == "STATUS_REPLY"
    s.alive()


#   --- §11, §7.2: before HELLO and by role -------------------------------------

@pytest.mark.parametrize("cmd", [
    {"cmd": "STATUS"}, {"cmd": "DIRECTORY"}, {"cmd": "SUBSCRIBE", "sub_id": "s-NS"},
    {"cmd": "UNSUBSCRIBE", "sub_id": "s-NS"}, {"cmd": "QUERY", "query_id": "q-NS", "window": 1}])
def test_reading_commands_before_hello_get_no_session(own, open_session, cmd):
    s = open_session(own, "dsb.steinfurt" if cmd["cmd"] == "QUERY" else "soz.rheine",
                     hello=False)
    answer = s.answer(cmd, lambda c: c["cmd"] == "REJECT")
    assert answer["code"] == NO_SESSION and answer["reason"] == "NO_SESSION"
    assert s.answer({"cmd": "PING"}, lambda c: c["cmd"] == "REJECT")["code"] == NO_SESSION
    assert s.others == [] and s.delivered == []


def test_an_auditor_may_not_subscribe_and_an_agency_may_not_query(own, open_session):
    auditor = open_session(own, "dsb.steinfurt")
    reject_of(auditor.subscribe("s-AUD"), FORBIDDEN, msg_id="s-AUD")
    reject_of(auditor.unsubscribe("s-AUD"), FORBIDDEN, msg_id="s-AUD")
    auditor.alive()
    agency = open_session(own, "jc.rheine")
    records, answer = agency.query("q-AGENCY", case_id="C-ST")
    assert records is None
    reject_of(answer, FORBIDDEN, msg_id="q-AGENCY")
    assert answer["reason"] == "FORBIDDEN"
    agency.alive()
    # §8.11: the refused attempt is on the record, "refused" after "window"
    records, _ = auditor.query("q-SEE-REFUSED", from_seq=1)
    reads = [msgpack.unpackb(r["body"], raw=False) for r in records if r["kind"] == 4]
    refused = [r for r in reads if r.get("query_id") == "q-AGENCY"]
    assert len(refused) == 1, reads
    assert refused[0]["reader"] == "jc.rheine" and refused[0]["case_id"] == "C-ST"
    assert list(refused[0])[-2:] == ["window", "refused"]
    assert refused[0]["refused"] == "FORBIDDEN"


#   --- §8.10 SUBSCRIBE -------------------------------------------------------

def test_events_are_the_cases_the_organisation_takes_part_in(own, open_session):
    drain(own, open_session, "soz.rheine")
    soz = open_session(own, "soz.rheine", window=64)
    before = soz.status()["log_head"]
    answer = soz.subscribe("s-EV")
    assert answer["cmd"] == "RECEIPT" and answer["msg_id"] == "s-EV"
    head = answer["seq"]
    assert head == before == soz.status()["log_head"]       # the log head when stored
    seqs = case_traffic(own, open_session, "EV")
    jc = open_session(own, "jc.rheine")
    other = sent(jc, referral("R-EV-X", "C-EV-X", "aa.rheine"), b"not soz's case")
    assert head < seqs["to_soz"]                            # events start after the head
    want = [seqs[k] for k in ("to_soz", "to_aa", "accept", "status")]
    assert soz.pump(WAIT, lambda: set(want) <= set(soz.seqs())), soz.seqs()
    soz.pump(QUIET)
    assert soz.seqs() == want                               # once each, in log order
    assert other not in soz.seqs()
    payloads = {seq: payload for seq, _, payload in soz.delivered}
    assert len(payloads[seqs["to_soz"]]) == len(b"for soz") + 48   # its mail, sealed (§13.2)
    assert payloads[seqs["to_aa"]] == payloads[seqs["accept"]] == b""   # events: no payload
    hdrs = {seq: hdr for seq, hdr, _ in soz.delivered}
    assert "case_id" not in hdrs[seqs["accept"]]            # matched by the referral's case
    soz.ack_all()
    assert soz.unsubscribe("s-EV")["cmd"] == "RECEIPT"


def test_the_case_id_filter_matches_by_header_and_by_referral(own, open_session):
    drain(own, open_session, "soz.rheine")
    soz = open_session(own, "soz.rheine", window=64)
    jc = open_session(own, "jc.rheine")
    sent(jc, referral("R-CF-0", "C-CF-OTHER", "soz.rheine"))   # soz in another case too
    soz.pump(QUIET)
    soz.ack_all()
    soz.delivered = []
    assert soz.subscribe("s-CF", case_id="C-CF")["cmd"] == "RECEIPT"
    seqs = case_traffic(own, open_session, "CF")
    outside = sent(jc, referral("R-CF-3", "C-CF-OTHER", "aa.rheine"))
    want = [seqs[k] for k in ("to_soz", "to_aa", "accept", "status")]
    assert soz.pump(WAIT, lambda: set(want) <= set(soz.seqs())), soz.seqs()
    soz.pump(QUIET)
    assert soz.seqs() == want and outside not in soz.seqs()
    soz.ack_all()
    soz.unsubscribe("s-CF")


def test_the_types_filter(own, open_session):
    drain(own, open_session, "soz.rheine")
    soz = open_session(own, "soz.rheine", window=64)
    assert soz.subscribe("s-TY", case_id="C-TY", types=["ACCEPT", "STATUS"])["cmd"] == "RECEIPT"
    seqs = case_traffic(own, open_session, "TY")
    want = [seqs["to_soz"], seqs["accept"], seqs["status"]]    # its mail comes anyway
    assert soz.pump(WAIT, lambda: set(want) <= set(soz.seqs())), soz.seqs()
    soz.pump(QUIET)
    assert soz.seqs() == want                               # not the REFERRAL to aa
    soz.ack_all()
    soz.unsubscribe("s-TY")


def test_events_logged_while_offline_come_at_the_next_hello(own, open_session):
    drain(own, open_session, "soz.rheine")
    subscriber = open_session(own, "soz.rheine")
    assert subscriber.subscribe("s-OFF", case_id="C-OFF")["cmd"] == "RECEIPT"
    subscriber.client.close()                               # no session of soz now
    seqs = case_traffic(own, open_session, "OFF")
    soz = open_session(own, "soz.rheine", window=64)        # durable across sessions
    want = [seqs[k] for k in ("to_soz", "to_aa", "accept", "status")]
    assert soz.pump(WAIT, lambda: set(want) <= set(soz.seqs())), soz.seqs()
    soz.pump(QUIET)
    assert soz.seqs() == want
    soz.ack_all()
    soz.unsubscribe("s-OFF")


def test_a_subscription_outlives_a_broker_restart(brokers, open_session):
    b = brokers()
    soz = open_session(b, "soz.rheine")
    head = soz.subscribe("s-RS", case_id="C-RS")["seq"]
    soz.client.close()
    assert b.stop() == 0
    socket_path = b.endpoint[len("ipc://"):]
    if os.path.exists(socket_path):                         # start() waits for a new one
        os.unlink(socket_path)
    b.start()
    seqs = case_traffic(b, open_session, "RS")
    soz = open_session(b, "soz.rheine", window=64)
    want = [seqs[k] for k in ("to_soz", "to_aa", "accept", "status")]
    assert soz.pump(WAIT, lambda: set(want) <= set(soz.seqs())), soz.seqs()
    assert min(want) > head
    soz.ack_all()


def test_mail_that_is_also_an_event_comes_once(own, open_session):
    drain(own, open_session, "soz.rheine")
    soz = open_session(own, "soz.rheine", window=64)
    assert soz.subscribe("s-ONCE", case_id="C-ONCE")["cmd"] == "RECEIPT"
    assert soz.subscribe("s-ONCE-2")["cmd"] == "RECEIPT"     # two subscriptions match
    jc = open_session(own, "jc.rheine")
    seq = sent(jc, referral("R-ONCE", "C-ONCE", "soz.rheine"), b"mail")
    assert soz.pump(WAIT, lambda: seq in soz.seqs())
    soz.pump(QUIET)
    assert soz.seqs() == [seq] and len(soz.delivered[0][2]) == 4 + 48
    soz.ack_all()
    soz.pump(QUIET)
    assert soz.seqs() == [seq] and soz.status()["mailbox"] == 0
    soz.unsubscribe("s-ONCE")
    soz.unsubscribe("s-ONCE-2")


def test_replacing_the_filter_keeps_what_is_waiting(own, open_session):
    drain(own, open_session, "soz.rheine")
    first = open_session(own, "soz.rheine")
    jc = open_session(own, "jc.rheine")
    aa = open_session(own, "aa.rheine")
    sent(jc, referral("R-RP-1", "C-RP", "soz.rheine"))       # soz takes part
    stored = first.subscribe("s-RP", case_id="C-RP", types=["REFERRAL"])
    assert stored["cmd"] == "RECEIPT"
    before = sent(jc, referral("R-RP-2", "C-RP", "aa.rheine"))  # an event, waiting
    again = first.subscribe("s-RP", case_id="C-RP", types=["ACCEPT"])
    assert again["cmd"] == "RECEIPT" and again["msg_id"] == "s-RP"
    assert again["seq"] >= before                           # the log head at the time
    not_now = sent(jc, referral("R-RP-3", "C-RP", "aa.rheine"))
    accept = sent(aa, {"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": "R-RP-2"})
    first.client.close()
    soz = open_session(own, "soz.rheine", window=64)
    assert soz.pump(WAIT, lambda: {before, accept} <= set(soz.seqs())), soz.seqs()
    soz.pump(QUIET)
    assert not_now not in soz.seqs()                        # the new filter holds
    assert soz.seqs().count(before) == 1                    # nothing lost, nothing twice
    soz.ack_all()
    soz.unsubscribe("s-RP")


def test_unsubscribe_ends_events_and_is_idempotent(own, open_session):
    drain(own, open_session, "soz.rheine")
    soz = open_session(own, "soz.rheine", window=64)
    jc = open_session(own, "jc.rheine")
    sent(jc, referral("R-UN-1", "C-UN", "soz.rheine"))
    soz.subscribe("s-UN", case_id="C-UN")
    first = soz.unsubscribe("s-UN")
    assert first["cmd"] == "RECEIPT" and first["msg_id"] == "s-UN"
    head = soz.status()["log_head"]
    assert first["seq"] <= head
    second = soz.unsubscribe("s-UN")                        # no such subscription now
    assert second["cmd"] == "RECEIPT" and second["seq"] == head
    never = soz.unsubscribe("s-UN-NEVER")
    assert never["cmd"] == "RECEIPT" and never["msg_id"] == "s-UN-NEVER"
    event = sent(jc, referral("R-UN-2", "C-UN", "aa.rheine"))
    soz.pump(QUIET * 2)
    assert event not in soz.seqs()
    soz.ack_all()


@pytest.mark.parametrize("fields, code, path", [
    ({"types": ["ACCEPT", "ACCEPT"]}, BAD_VALUE, "types[1]"),
    ({"types": ["ACCEPT", "NOPE"]}, UNKNOWN_TYPE, "types[1]"),
    ({"types": ["ACCEPT"] * 17}, TOO_MANY, "types"),
    ({"types": "ACCEPT"}, 101, "types"),
    ({"case_id": "no spaces"}, BAD_ID, "case_id"),
    ({"org": "jc.rheine"}, UNKNOWN_FIELD, "org"),
])
def test_subscribe_refusals_carry_the_sub_id_and_path(own, open_session, fields, code, path):
    soz = open_session(own, "soz.rheine")
    cmd = {"cmd": "SUBSCRIBE", "sub_id": "s-BAD"}
    cmd.update(fields)
    reject_of(soz.by_id(cmd, "s-BAD"), code, path, msg_id="s-BAD")
    soz.alive()


def test_subscribe_without_a_valid_sub_id(own, open_session):
    soz = open_session(own, "soz.rheine")
    answer = soz.answer({"cmd": "SUBSCRIBE"}, lambda c: c["cmd"] == "REJECT")
    reject_of(answer, MISSING_FIELD, "sub_id")
    answer = soz.answer({"cmd": "UNSUBSCRIBE", "sub_id": "bad id"},
                        lambda c: c["cmd"] == "REJECT")
    reject_of(answer, BAD_ID, "sub_id")                     # no valid id: no msg_id
    soz.alive()


def test_subscriptions_per_org(brokers, open_session):
    b = brokers(broker={"subscriptions_per_org": 2})
    soz = open_session(b, "soz.rheine")
    assert soz.subscribe("s-L1")["cmd"] == "RECEIPT"
    assert soz.subscribe("s-L2", case_id="C-L")["cmd"] == "RECEIPT"
    answer = soz.subscribe("s-L3")
    reject_of(answer, ORG_LIMIT, msg_id="s-L3")
    assert answer["reason"] == "ORG_LIMIT"
    other = open_session(b, "soz.rheine")                   # per organisation
    reject_of(other.subscribe("s-L4"), ORG_LIMIT, msg_id="s-L4")
    assert soz.subscribe("s-L2", types=["ACCEPT"])["cmd"] == "RECEIPT"   # a replacement
    assert soz.unsubscribe("s-L1")["cmd"] == "RECEIPT"
    assert soz.subscribe("s-L3")["cmd"] == "RECEIPT"
    assert open_session(b, "jc.rheine").subscribe("s-L1")["cmd"] == "RECEIPT"  # not jc's


#   --- §8.11 QUERY -----------------------------------------------------------

def _chain_hash(prev, kind, seq, t, body):
    data = prev + bytes([1, kind]) + seq.to_bytes(8, "big") + t.to_bytes(8, "big") + body
    return nacl.hash.blake2b(data, digest_size=32, encoder=RawEncoder)


def _headers(records):
    return {r["seq"]: msgpack.unpackb(r["body"], raw=False) for r in records if r["kind"] == 1}


def test_query_reads_the_whole_chain_and_logs_itself_first(own, open_session):
    case_traffic(own, open_session, "QA")
    auditor = open_session(own, "dsb.steinfurt")
    head = auditor.status()["log_head"]
    records, end = auditor.query("q-ALL", from_seq=1, window=64)
    assert end["code"] == 0 and end["count"] == len(records)
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(records) + 1))         # from 1, no gaps, ascending
    prev = bytes(32)
    for r in records:
        assert set(r) == {"cmd", "query_id", "seq", "time", "kind", "hash", "body"}
        assert 1 <= r["kind"] <= 255 and len(r["hash"]) == 32
        assert r["hash"] == _chain_hash(prev, r["kind"], r["seq"], r["time"], r["body"]), r["seq"]
        prev = r["hash"]
    last = records[-1]                                      # up to its own audit read
    assert last["kind"] == 4 and last["seq"] == head + 1    # STATUS's log_head was the last
    body = msgpack.unpackb(last["body"], raw=False)
    assert body == {"reader": "dsb.steinfurt", "query_id": "q-ALL", "from_seq": 1, "window": 64}
    assert list(body) == ["reader", "query_id", "from_seq", "window"]
    times = [r["time"] for r in records]
    assert times == sorted(times)
    assert own.started_ms - 1000 <= times[0] and times[-1] <= int(time.time() * 1000) + 1000


def test_an_auditor_sees_headers_never_payloads(own, open_session):
    jc = open_session(own, "jc.rheine")
    secret = b"Herr M. lebt in der Emsstrasse 7"
    seq = sent(jc, referral("R-PL", "C-PL", "soz.rheine"), secret)
    auditor = open_session(own, "dsb.steinfurt", window=8)
    records, _ = auditor.query("q-PL", case_id="C-PL")
    (message,) = [r for r in records if r["kind"] == 1]
    assert message["seq"] == seq
    hdr = msgpack.unpackb(message["body"], raw=False)
    assert hdr["referral_id"] == "R-PL" and hdr["sender"] == "jc.rheine"
    assert "payload_hash" in hdr
    assert all(secret not in r["body"] for r in records)
    assert all(b"Emsstrasse" not in r["body"] for r in records)
    auditor.pump(QUIET)
    assert auditor.delivered == []                          # no deliveries for auditors
    with pytest.raises(kim.Rejected) as e:
        auditor.client.send(referral("R-PL-A", "C-PL", "soz.rheine"), b"")
    assert e.value.code == FORBIDDEN
    reject_of(auditor.answer({"cmd": "ACK", "seqs": [seq]}, lambda c: c["cmd"] == "REJECT"),
              FORBIDDEN)
    auditor.alive()


def test_query_seq_and_time_filters(own, open_session):
    case_traffic(own, open_session, "QS")
    auditor = open_session(own, "dsb.steinfurt")
    everything, _ = auditor.query("q-S0", from_seq=1)
    low, high = everything[2]["seq"], everything[6]["seq"]
    records, end = auditor.query("q-S1", from_seq=low, to_seq=high)
    assert [r["seq"] for r in records] == list(range(low, high + 1)) and end["count"] == 5
    records, _ = auditor.query("q-S2", from_seq=low, to_seq=low)
    assert [r["seq"] for r in records] == [low]
    t = everything[4]["time"]
    records, _ = auditor.query("q-T1", from_time=t, to_time=t)
    want = [r["seq"] for r in everything if r["time"] == t]
    assert [r["seq"] for r in records] == want and want
    records, _ = auditor.query("q-T2", from_time=t + 1, to_seq=everything[-1]["seq"])
    assert all(r["time"] > t for r in records)
    assert [r["seq"] for r in records] == [r["seq"] for r in everything if r["time"] > t]
    far = int(time.time() * 1000) + 10 ** 9
    records, end = auditor.query("q-T3", from_time=far, to_time=far + 1)
    assert records == []                                    # its own read is older too
    assert end == {"cmd": "QUERY_END", "query_id": "q-T3", "count": 0, "code": 0}


def test_query_case_org_and_type_filters(own, open_session):
    seqs = case_traffic(own, open_session, "QF")
    auditor = open_session(own, "dsb.steinfurt")
    records, _ = auditor.query("q-F1", case_id="C-QF")
    own_read = msgpack.unpackb(records[-1]["body"], raw=False)
    assert records[-1]["kind"] == 4 and own_read["query_id"] == "q-F1"
    hdrs = _headers(records)
    assert all(h.get("case_id") == "C-QF" for h in hdrs.values())
    assert {seqs["to_soz"], seqs["to_aa"]} <= set(hdrs)
    changes = [msgpack.unpackb(r["body"], raw=False) for r in records if r["kind"] == 6]
    assert changes and all(c["case_id"] == "C-QF" for c in changes)   # same meaning
    records, _ = auditor.query("q-F2", org="soz.rheine", from_seq=seqs["to_soz"])
    hdrs = _headers(records)
    assert seqs["to_soz"] in hdrs and seqs["to_aa"] not in hdrs
    assert all("soz.rheine" in (h.get("sender"), h.get("recipient")) for h in hdrs.values())
    # its own audit read record carries the filter's fields, so it matches them
    records, _ = auditor.query("q-F3", type="ACCEPT", from_seq=seqs["to_soz"])
    assert [(r["seq"], r["kind"]) for r in records[:-1]] == [(seqs["accept"], 1)]
    assert records[-1]["kind"] == 4
    records, _ = auditor.query("q-F4", case_id="C-QF", org="aa.rheine", type="REFERRAL")
    assert [r["seq"] for r in records[:-1]] == [seqs["to_aa"]]   # AND
    records, end = auditor.query("q-F5", case_id="C-QF-NONE")
    assert [r["kind"] for r in records] == [4] and end["count"] == 1 and end["code"] == 0
    assert msgpack.unpackb(records[0]["body"], raw=False)["query_id"] == "q-F5"


def test_query_case_filter_leaves_out_messages_that_name_only_their_referral(own, open_session):
    """§8.11: case_id matches the header; a record without the field does not
    match (unlike §8.10's subscriptions). The broker's choice, noted."""
    seqs = case_traffic(own, open_session, "QC")
    auditor = open_session(own, "dsb.steinfurt")
    records, _ = auditor.query("q-C1", case_id="C-QC")
    message_seqs = {r["seq"] for r in records if r["kind"] == 1}
    assert seqs["accept"] not in message_seqs and seqs["status"] not in message_seqs


def test_window_and_credit(own, open_session):
    case_traffic(own, open_session, "QW")
    auditor = open_session(own, "dsb.steinfurt")
    auditor.send({"cmd": "QUERY", "query_id": "q-W", "from_seq": 1, "window": 3})
    def records():
        return [c for c in auditor.others if c.get("query_id") == "q-W"]
    assert auditor.pump(WAIT, lambda: len(records()) >= 3)
    auditor.pump(QUIET)
    assert [c["cmd"] for c in records()] == ["RECORD"] * 3  # waits for credit
    reject_of(auditor.by_id({"cmd": "QUERY", "query_id": "q-W", "case_id": "C-QW",
                             "window": 3}, "q-W"), BAD_VALUE, msg_id="q-W")
    auditor.send({"cmd": "QUERY", "query_id": "q-W", "window": 2})
    assert auditor.pump(WAIT, lambda: len(records()) >= 5)
    auditor.pump(QUIET)
    assert [c["cmd"] for c in records()] == ["RECORD"] * 5
    seqs = [c["seq"] for c in records()]
    assert seqs == list(range(1, 6))
    auditor.send({"cmd": "QUERY", "query_id": "q-W", "window": 4096})
    assert auditor.pump(WAIT, lambda: records()[-1]["cmd"] == "QUERY_END")
    end = records()[-1]
    assert end["count"] == len(records()) - 1 and end["code"] == 0
    assert [c["seq"] for c in records()[:-1]] == list(range(1, len(records())))


@pytest.mark.parametrize("fields, code, path", [
    ({"window": 0}, BAD_VALUE, "window"),
    ({"window": 4097}, BAD_VALUE, "window"),
    ({"from_seq": 5, "to_seq": 4, "window": 1}, BAD_VALUE, "to_seq"),
    ({"from_time": 5, "to_time": 4, "window": 1}, BAD_VALUE, "to_time"),
    ({"type": "NOPE", "window": 1}, UNKNOWN_TYPE, "type"),
    ({"org": "JC", "window": 1}, BAD_ID, "org"),
    ({"case_id": "a b", "window": 1}, BAD_ID, "case_id"),
    ({"sub_id": "x", "window": 1}, UNKNOWN_FIELD, "sub_id"),
    ({}, MISSING_FIELD, "window"),
])
def test_query_refusals_carry_the_query_id_and_path(own, open_session, fields, code, path):
    auditor = open_session(own, "dsb.steinfurt")
    cmd = {"cmd": "QUERY", "query_id": "q-BAD"}
    cmd.update(fields)
    reject_of(auditor.by_id(cmd, "q-BAD"), code, path, msg_id="q-BAD")
    auditor.alive()


def test_queries_per_org_and_a_query_ends_with_its_session(brokers, open_session):
    b = brokers(broker={"queries_per_org": 2})
    case_traffic(b, open_session, "QL")
    one = open_session(b, "dsb.steinfurt")
    two = open_session(b, "dsb.steinfurt")
    for s, query_id in ((one, "q-L1"), (two, "q-L2")):      # open: window used up
        s.send({"cmd": "QUERY", "query_id": query_id, "from_seq": 1, "window": 1})
        assert s.pump(WAIT, lambda: any(c.get("query_id") == query_id for c in s.others))
    answer = one.by_id({"cmd": "QUERY", "query_id": "q-L3", "window": 1}, "q-L3")
    reject_of(answer, ORG_LIMIT, msg_id="q-L3")             # per organisation
    two.send({"cmd": "BYE"})                                # its query ends with it
    deadline = time.monotonic() + WAIT
    tries = 0
    while True:                                             # the BYE may come after
        tries += 1
        query_id = "q-L4-%d" % tries
        records, end = one.query(query_id, to_seq=1, window=1)
        if records is not None or end["code"] != ORG_LIMIT or time.monotonic() > deadline:
            break
        one.pump(0.05)
    assert records is not None and end["code"] == 0, end
    one.send({"cmd": "QUERY", "query_id": "q-L1", "window": 100})   # q-L1 finishes
    assert one.pump(WAIT, lambda: any(c["cmd"] == "QUERY_END" and c["query_id"] == "q-L1"
                                      for c in one.others))


def test_a_second_hello_ends_open_queries(own, open_session):
    case_traffic(own, open_session, "QH")
    auditor = open_session(own, "dsb.steinfurt")
    auditor.send({"cmd": "QUERY", "query_id": "q-H", "from_seq": 1, "window": 1})
    assert auditor.pump(WAIT, lambda: any(c.get("query_id") == "q-H" for c in auditor.others))
    auditor.send({"cmd": "HELLO", "versions": [1, 2], "agent": "kim-test/reads", "window": 0})
    assert auditor.pump(WAIT, lambda: auditor.others[-1]["cmd"] == "WELCOME")
    mark = len(auditor.others)
    # q-H ended: the same id is free for a new query with filters (§8.11)
    records, end = auditor.query("q-H", from_seq=1, to_seq=2)
    assert [r["seq"] for r in records] == [1, 2] and end["code"] == 0
    assert [c["cmd"] for c in auditor.others[mark:] if c.get("query_id") == "q-H"] == \
        ["RECORD", "RECORD", "QUERY_END"]                   # nothing more of the old one


#   --- §8.15 DIRECTORY -------------------------------------------------------

def test_directory_lists_agencies_in_registry_order(own, open_session):
    for org in ("soz.rheine", "dsb.steinfurt"):             # any authenticated role
        s = open_session(own, org)
        reply = s.ask({"cmd": "DIRECTORY"}, "DIRECTORY_REPLY")
        assert set(reply) == {"cmd", "count", "orgs"}
        assert [e["id"] for e in reply["orgs"]] == ["jc.rheine", "soz.rheine", "aa.rheine"]
        assert reply["count"] == 3                          # no auditor
        for e in reply["orgs"]:
            assert set(e) - {"sign_key"} == {"id", "name", "type", "public_body", "public_key"}
            assert e["name"] == "Test " + e["id"] and e["type"] == e["id"].split(".")[0]
            assert e["public_body"] is True and len(e["public_key"]) == 40
            assert ("sign_key" in e) == (e["id"] == "jc.rheine")
        assert reply["orgs"][1]["public_key"] == \
            kim.load_cert(own.cert_secret("soz.rheine"), secret=True)[0]
        assert len(reply["orgs"][0]["sign_key"]) == 40


def test_directory_for_one_organisation_and_for_none(own, open_session):
    s = open_session(own, "aa.rheine")
    reply = s.ask({"cmd": "DIRECTORY", "org": "jc.rheine"}, "DIRECTORY_REPLY")
    assert reply["count"] == 1 and [e["id"] for e in reply["orgs"]] == ["jc.rheine"]
    for org in ("jc.nowhere", "dsb.steinfurt"):             # no such agency: not a REJECT
        reply = s.ask({"cmd": "DIRECTORY", "org": org}, "DIRECTORY_REPLY")
        assert reply["cmd"] == "DIRECTORY_REPLY" and reply["count"] == 0 and reply["orgs"] == []
    reply = s.ask({"cmd": "DIRECTORY", "homes": True}, "DIRECTORY_REPLY")
    assert reply["count"] == 3 and all("home" not in e for e in reply["orgs"])  # all own


@pytest.mark.parametrize("fields, code, path", [
    ({"org": "JC.Rheine"}, BAD_ID, "org"),
    ({"org": 7}, 101, "org"),
    ({"homes": 1}, 101, "homes"),
    ({"case_id": "C-1"}, UNKNOWN_FIELD, "case_id"),
])
def test_directory_refusals(own, open_session, fields, code, path):
    s = open_session(own, "aa.rheine")
    cmd = {"cmd": "DIRECTORY"}
    cmd.update(fields)
    reject_of(s.ask(cmd, "DIRECTORY_REPLY"), code, path)
    s.alive()


def test_directory_cut_at_128_entries(brokers, open_session):
    orgs = {"jc.o%03d" % i: "agency" for i in range(130)}
    b = brokers(orgs)
    s = open_session(b, "jc.o129")
    reply = s.ask({"cmd": "DIRECTORY"}, "DIRECTORY_REPLY")
    assert reply["count"] == 130 and len(reply["orgs"]) == 128
    assert [e["id"] for e in reply["orgs"]] == sorted(orgs)[:128]
    reply = s.ask({"cmd": "DIRECTORY", "org": "jc.o129"}, "DIRECTORY_REPLY")
    assert reply["count"] == 1 and reply["orgs"][0]["id"] == "jc.o129"


#   --- §7.3 rate costs ---------------------------------------------------------

def _burst(s, cmd, count, name, id_key=None):
    """Sends `count` commands at once; returns (answered, rejects) once all
    are answered."""
    others, rejects = len(s.others), len(s.rejects)
    for i in range(count):
        c = dict(cmd)
        if id_key:
            c[id_key] = "%s-%d" % (c[id_key], i)
        s.send(c)
    assert s.pump(WAIT, lambda: len(s.others) - others + len(s.rejects) - rejects >= count)
    s.pump(QUIET)
    return ([c for c in s.others[others:] if c["cmd"] == name], s.rejects[rejects:])


def test_status_costs_2_from_a_bucket_shared_by_the_organisations_sessions(brokers,
                                                                           open_session):
    b = brokers(broker={"rate_limit": 1, "rate_burst": 50})
    first = open_session(b, "jc.rheine")                    # HELLO: 5
    second = open_session(b, "jc.rheine")                   # HELLO: 5, 40 left
    answered, rejects = _burst(first, {"cmd": "STATUS"}, 25, "STATUS_REPLY")
    assert len(answered) in (20, 21), len(answered)         # 1 unit/s may add one
    assert len(rejects) == 25 - len(answered)
    assert all(r["code"] == RATE_LIMITED and "msg_id" not in r for r in rejects)
    assert rejects[0]["reason"] == "RATE_LIMITED"
    answer = second.ask({"cmd": "STATUS"}, "STATUS_REPLY")
    reject_of(answer, RATE_LIMITED)                         # the same bucket
    assert open_session(b, "soz.rheine").status()["sessions"] == 1   # not soz's


def test_directory_subscribe_and_query_costs(brokers, open_session):
    b = brokers(broker={"rate_limit": 1, "rate_burst": 50})
    aa = open_session(b, "aa.rheine")                       # 45 left
    answered, rejects = _burst(aa, {"cmd": "DIRECTORY"}, 12, "DIRECTORY_REPLY")
    assert 2 <= len(answered) <= 9, len(answered)           # 5 each, up to 4 x 5 in all
    assert all(r["code"] == RATE_LIMITED and "msg_id" not in r for r in rejects)
    soz = open_session(b, "soz.rheine")                     # 45 left: two SUBSCRIBEs
    answers = [soz.by_id({"cmd": "SUBSCRIBE", "sub_id": "s-R%d" % i}, "s-R%d" % i)
               for i in range(3)]
    assert answers[0]["cmd"] == "RECEIPT"
    reject_of(answers[2], RATE_LIMITED, msg_id="s-R2")
    auditor = open_session(b, "dsb.steinfurt")             # 45 left
    records, answer = auditor.query("q-RATE", window=4096)  # costs 20 + 128
    reject_of(answer, RATE_LIMITED, msg_id="q-RATE")
    records, end = auditor.query("q-CHEAP", window=31, to_seq=1)   # costs 20
    assert end["cmd"] == "QUERY_END" and [r["seq"] for r in records] == [1]
