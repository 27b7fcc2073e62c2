"""The Python client against a real kim-broker: HELLO, a sealed and signed
referral from one agency, received, opened and acknowledged at the other,
an ACCEPT, the referral's state, the directory, a case subscription and its
events, an auditor's query, and the broker's refusals as exceptions."""
import time

import nacl.hash
import nacl.signing
import pytest
import zmq.utils.z85
from nacl.encoding import RawEncoder

import kim

from kim_headers import referral as _referral


def _next_of(client, type_, timeout=15):
    """The next delivery of `type_` (others are acknowledged and skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = client.recv(timeout=max(deadline - time.monotonic(), 0.1))
        if d is None:
            break
        client.ack(d.seq)
        if d.hdr["type"] == type_:
            return d
    raise AssertionError("no %s delivery within %d s" % (type_, timeout))


def test_hello(connect):
    c = connect("soz.rheine", window=16)
    assert c.welcome["cmd"] == "WELCOME" and c.welcome["version"] == 2 == c.version
    assert c.welcome["org"] == "soz.rheine" and c.welcome["broker"] == "kim.test"
    assert c.welcome["window"] == 16 and c.welcome["max_payload"] >= 1
    assert c.status()["sessions"] >= 1
    c.ping()


def test_directory(connect):
    c = connect("soz.rheine")
    entries = {e["id"]: e for e in c.directory()}
    assert set(entries) == {"jc.rheine", "soz.rheine", "aa.rheine"}     # no auditor
    assert entries["soz.rheine"]["public_key"] == c.public
    assert "sign_key" in entries["jc.rheine"] and "sign_key" not in entries["aa.rheine"]
    assert [e["id"] for e in c.directory("aa.rheine")] == ["aa.rheine"]
    assert c.directory("jc.nowhere") == []


def test_sealed_signed_referral_accept_and_state(connect):
    jc = connect("jc.rheine")
    soz = connect("soz.rheine")
    details = "Herr M. braucht Unterstützung beim Antrag".encode()
    receipt = jc.send(_referral("R-PY-1", "C-PY-1"), details)
    assert receipt["cmd"] == "RECEIPT" and receipt["seq"] > 0 and not receipt.get("dup")

    d = _next_of(soz, "REFERRAL")
    assert d.seq == receipt["seq"] and not d.sealed_error
    assert d.payload == details                         # opened with soz's key
    hdr = d.hdr
    assert hdr["sender"] == "jc.rheine" and hdr["referral_id"] == "R-PY-1"
    assert hdr["payload_len"] == len(details) + 48      # sealed on the wire (§13.2)
    # the sender's signature (§13.4) verifies with the directory's sign_key
    entry = soz.directory("jc.rheine")[0]
    key = nacl.signing.VerifyKey(zmq.utils.z85.decode(entry["sign_key"]))
    signed = {k: v for k, v in kim.canonical_header(hdr).items() if k not in ("sig", "rule")}
    import msgpack
    digest = nacl.hash.blake2b(msgpack.packb(signed, use_bin_type=True), digest_size=32,
                               encoder=RawEncoder)
    key.verify(digest + hdr["payload_hash"], hdr["sig"])

    # the same msg_id again: a duplicate, the original's seq
    again = jc.send(_referral("R-PY-1", "C-PY-1", msg_id=hdr["msg_id"]), details)
    assert again.get("dup") is True and again["seq"] == receipt["seq"]

    accept = soz.send({"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": "R-PY-1",
                       "ref_msg_id": hdr["msg_id"], "recipient_case_ref": "SOZ-17"})
    assert accept["seq"] > receipt["seq"]
    assert _next_of(jc, "ACCEPT").hdr["referral_id"] == "R-PY-1"

    for client in (jc, soz):
        (info,) = client.referral_query(referral_id="R-PY-1")
        assert info["state"] == "ACCEPTED" and info["sender"] == "jc.rheine"
        assert info["recipient"] == "soz.rheine" and info["case_id"] == "C-PY-1"
        assert info["created_seq"] == receipt["seq"] and info["last_seq"] == accept["seq"]
    assert [r["referral_id"] for r in jc.referral_query(case_id="C-PY-1")] == ["R-PY-1"]
    # an outsider sees nothing of it
    assert connect("aa.rheine").referral_query(referral_id="R-PY-1") == []


def test_unacked_delivery_comes_again(connect, broker):
    jc = connect("jc.rheine")
    receipt = jc.send(_referral("R-PY-2", "C-PY-2", recipient="aa.rheine"), b"x")
    first = connect("aa.rheine")
    d = _next_of_seq(first, receipt["seq"])
    first.close()                                       # BYE without ACK
    second = connect("aa.rheine")
    again = _next_of_seq(second, receipt["seq"])
    assert again.hdr["msg_id"] == d.hdr["msg_id"] and again.payload == b"x"
    second.ack(again.seq)


def _next_of_seq(client, seq, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = client.recv(timeout=0.5)
        if d is not None and d.seq == seq:
            return d
    raise AssertionError("seq %d was not delivered" % seq)


def test_subscription_events(connect):
    jc = connect("jc.rheine")
    soz = connect("soz.rheine")
    jc.send(_referral("R-PY-3", "C-PY-3"), b"for soz")
    _next_of(soz, "REFERRAL")
    head = soz.subscribe("s-C-PY-3", case_id="C-PY-3", types=["REFERRAL", "ACCEPT"])
    assert head > 0
    # between jc and aa in the same case: events for soz, without the payload
    aa = connect("aa.rheine")
    r = jc.send(_referral("R-PY-4", "C-PY-3", recipient="aa.rheine"), b"for aa only")
    _next_of(aa, "REFERRAL")
    aa.send({"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": "R-PY-4"})
    aa.send({"type": "STATUS", "recipient": "jc.rheine", "referral_id": "R-PY-4",
             "code": "in_progress"})
    events = []
    deadline = time.monotonic() + 15
    while len(events) < 2 and time.monotonic() < deadline:
        d = soz.recv(timeout=0.5)
        if d is not None:
            soz.ack(d.seq)
            events.append(d)
    assert [e.hdr["type"] for e in events] == ["REFERRAL", "ACCEPT"]
    assert events[0].seq == r["seq"] and events[0].payload == b""
    assert events[0].hdr["case_id"] == "C-PY-3"
    assert all(e.hdr["referral_id"] == "R-PY-4" for e in events)
    assert soz.recv(timeout=1.0) is None                # not the STATUS
    assert soz.unsubscribe("s-C-PY-3") >= head
    assert soz.unsubscribe("s-C-PY-3") >= head          # idempotent


def test_auditor_query(connect):
    jc = connect("jc.rheine")
    sent = jc.send(_referral("R-PY-5", "C-PY-5"), b"audited")
    auditor = connect("dsb.steinfurt")
    assert auditor.welcome["window"] == 0
    records = list(auditor.query(case_id="C-PY-5", window=2))
    messages = [r for r in records if r["kind"] == 1]
    assert [r["seq"] for r in messages][:1] == [sent["seq"]]
    assert all(len(r["hash"]) == 32 for r in records)
    assert records[-1]["kind"] == 4                     # its own audit read, logged
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs)
    with pytest.raises(kim.Rejected) as e:
        list(jc.query(case_id="C-PY-5"))                # agencies may not QUERY
    assert e.value.reason == "FORBIDDEN"


def test_rejects(connect):
    jc = connect("jc.rheine")
    with pytest.raises(kim.Rejected) as e:
        jc.send(_referral("R-PY-6", "C-PY-6", recipient="jc.nowhere"), b"")
    assert e.value.reason == "UNKNOWN_RECIPIENT" and e.value.code == 203
    with pytest.raises(kim.Rejected) as e:
        jc.send({"type": "REFERRAL", "recipient": "soz.rheine", "referral_id": "R-PY-7",
                 "case_id": "C-PY-7", "subject": "p-1", "purpose": "benefits",
                 "legal_basis": {"kind": "consent", "consent_id": "g-none"}}, b"")
    assert e.value.code // 100 == 5                     # policy or consent
    with pytest.raises(kim.KimError):
        jc.send(_referral("R-PY-8", "C-PY-8", recipient="jc.nowhere"), b"sealed to whom?")
    with pytest.raises(kim.Rejected) as e:
        connect("dsb.steinfurt").subscribe("s-x")
    assert e.value.reason == "FORBIDDEN"
    jc.ping()                                           # the session lives on


def test_unsigned_send_of_signing_org_is_refused(connect, broker):
    jc = connect("jc.rheine", sign_secret=False)
    with pytest.raises(kim.Rejected) as e:
        jc.send(_referral("R-PY-9", "C-PY-9"), b"unsigned")
    assert e.value.reason == "BAD_SIGNATURE" and e.value.path == "hdr.sig"
