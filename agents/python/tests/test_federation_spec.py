"""Federation (PROTOCOL.md §16) against a real kim-broker, from the spec alone.

The test plays a linked district broker, `broker.far` (kim_peer.FarBroker),
with agencies of its own: soz.far (a social office the local agencies refer
to), jc.far (a job centre with a sign_key, whose referrals come in) and
sch.far (a school: no rule of the shipped policy lets it refer to a job
centre). The real broker, `kim.test` (TestBroker's name), has jc.rheine
(which signs), soz.rheine, aa.rheine and an auditor, and a `peers` section
naming broker.far with its endpoint (an ipc ROUTER of the test's, CURVE
server), CURVE public key and Ed25519 signing key.

Two connections make a link pair (§16.1): the real broker dials the far side
("inbound": its HELLO, PEER_DIRECTORY, PING and PEER_FORWARDs, answered by
the test), and the far side dials the real broker ("outbound": the test's
HELLO, PEER_DIRECTORY, PING and PEER_FORWARDs, answered by the broker). The
WELCOME the test gives the broker names a heartbeat of 60 s, so no link
heartbeat falls due within a test. Every wait is bounded (kim_inbox.WAIT);
"nothing came" means nothing within kim_inbox.QUIET."""
import json
import os
import subprocess
import time

import nacl.signing
import pytest
import zmq.utils.z85

import kim
import kim_headers
from kim.certs import load_cert
from kim_headers import STATUTE
from conftest import ORGS, new_broker
from kim_frames import pump
from kim_inbox import WAIT, Inbox, state_of, uid, wait_state
from kim_peer import (NEW_HELLO, FarBroker, Org, blake2b, broker_verify_key, seal_to,
                      verify_directory, verify_header)

LOCAL, FAR = "kim.test", "broker.far"
JC, SOZ, AA, AUDITOR = "jc.rheine", "soz.rheine", "aa.rheine", "dsb.steinfurt"
OPERATOR = "ops.steinfurt"
SOZ_FAR, JC_FAR, SCH_FAR = "soz.far", "jc.far", "sch.far"

UNKNOWN_RECIPIENT, SENDER_MISMATCH, FORBIDDEN = 203, 204, 205
BAD_SIGNATURE, STALE, QUOTA = 211, 212, 300
BAD_VALUE, MISSING_FIELD = 110, 102
BAD_STATE, NOT_PARTY, UNKNOWN_REFERRAL, POLICY_DENY = 400, 401, 402, 500


@pytest.fixture
def far():
    f = FarBroker(FAR)
    f.add(SOZ_FAR)
    f.add(JC_FAR, signing=True)
    f.add(SCH_FAR)
    yield f
    f.close()


@pytest.fixture
def district(brokers, far):
    """district(accept=True, publish=True, **sections) -> (broker, inbound,
    outbound): a broker linked to `far`; the far side's session says HELLO
    and, if `publish`, its directory of all its agencies; if `accept`, the
    broker's link is served until up (PONG given)."""
    def start(accept=True, publish=True, **sections):
        inbound = far.listen()
        b = brokers(peers=far.peers(), **sections)
        outbound = far.dial(b)
        assert outbound.hello()["cmd"] == "WELCOME"
        if publish:
            assert outbound.publish(far.directory()) == []
        if accept:
            inbound.accept()
        return b, inbound, outbound
    return start


def refer(client, recipient, plaintext=b"referral notes", **extra):
    """A REFERRAL of `client` under a statute P1 allows; (header sent, RECEIPT)."""
    hdr = kim_headers.referral(uid("r"), uid("c"), recipient, msg_id=uid("m"), **extra)
    return hdr, client.send(hdr, plaintext)


def far_referral(far, sender, recipient, payload=b"", **extra):
    """A REFERRAL header of a far agency (or any sender id) as its broker logs it."""
    fields = dict(type="REFERRAL", msg_id=uid("m"), recipient=recipient,
                  referral_id=uid("r"), case_id=uid("c"), subject="p-7f3a",
                  purpose="benefits", legal_basis=STATUTE)
    fields.update(extra)
    return far.header(far.orgs.get(sender, sender), payload, **fields)


def remote_ids(client):
    return [e["id"] for e in client.directory(timeout=WAIT, homes=True) if e.get("home") == FAR]


def rejects(answers):
    return [(m["cmd"], m.get("code"), m.get("reason"), m.get("path")) for m in answers]


def refusal(answer):
    """(code, reason, path) of a PEER_REFUSED, checking its required fields (§16.4)."""
    assert answer is not None, "no answer to the PEER_FORWARD"
    assert answer["cmd"] == "PEER_REFUSED", answer
    assert isinstance(answer.get("text"), str)
    return answer["code"], answer["reason"], answer.get("path")


def reject_of(client):
    """The next REJECT on a client's session (read past anything else)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        cmd, _ = client._recv_cmd(deadline - time.monotonic())
        if cmd is not None and cmd["cmd"] == "REJECT":
            return cmd
    return None


def local_key(b, org):
    return load_cert(os.path.join(b.keys, org + ".cert"))[0]


#   --- the link (§16.1, §16.2) ----------------------------------------------------

def test_link_opens_with_hello_directory_then_ping(brokers, far, connect_to):
    """§16.1/§16.2/§16.3: the broker dials under its own key, HELLO [1] window 0,
    then a signed PEER_DIRECTORY of its agencies, then PING."""
    inbound = far.listen()
    b = brokers(peers=far.peers())
    hello, doc, ping = inbound.accept()
    assert hello.user_id == load_cert(b.broker_cert)[0]
    assert hello["versions"] == [1] and hello["window"] == 0
    assert isinstance(hello["agent"], str) and hello["agent"]
    assert doc.rid == ping.rid == hello.rid and doc.order < ping.order
    assert set(doc) == {"cmd", "broker", "orgs", "serial", "sig"}
    assert doc["broker"] == LOCAL
    assert 1 <= doc["serial"] <= 2 ** 53 - 1
    assert verify_directory(doc, broker_verify_key(b))
    #   Its agencies (not the auditor) as DIRECTORY_REPLY gives them, without `home`
    assert doc["orgs"] == connect_to(b, JC).directory(timeout=WAIT)
    assert [e["id"] for e in doc["orgs"]] == [JC, SOZ, AA]


def test_welcome_with_another_name_drops_the_link(brokers, far):
    """§16.2: a WELCOME whose `broker` is not the configured name: the broker drops
    the link (no directory, no PING), logs it, and dials again (§16.1)."""
    inbound = far.listen()
    b = brokers(peers=far.peers())
    first = inbound.hello()
    assert first is not None
    inbound.welcome(first, name="broker.other")
    assert inbound.quiet(lambda m: m.rid == first.rid and m["cmd"] != "HELLO") == []
    again = inbound.wait("HELLO", NEW_HELLO)
    assert again is not None and again.rid != first.rid
    _, doc, _ = inbound.accept(hello=again)
    assert doc["broker"] == LOCAL
    assert "broker.other" in b.log_tail(200)


def test_mail_waits_for_the_link_and_nothing_goes_before_pong(district, far, connect_to):
    """§16.1/§16.5: a SEND to a far office is receipted while the link is down; once
    up, nothing is forwarded before the PONG, then it comes with its seq, its
    header as logged and its payload still sealed to the recipient."""
    b, inbound, _ = district(accept=False)
    jc = connect_to(b, JC)
    hdr, receipt = refer(jc, SOZ_FAR, b"for the far office")
    _, doc, _ = inbound.accept(pong=False)
    assert inbound.quiet("PEER_FORWARD") == []
    inbound.pong()
    fwd = inbound.forward()
    assert fwd is not None and fwd["seq"] == receipt["seq"]
    sent = fwd["hdr"]
    for key in ("type", "msg_id", "recipient", "referral_id", "case_id", "subject", "purpose",
                "legal_basis"):
        assert sent[key] == hdr[key], key
    assert sent["sender"] == JC
    assert sent["payload_hash"] == blake2b(fwd.payload)
    assert sent["payload_len"] == len(fwd.payload)
    assert far.orgs[SOZ_FAR].open(fwd.payload) == b"for the far office"
    #   The sender's signature travels with it and checks against the sender's
    #   directory entry
    jc_entry = next(e for e in doc["orgs"] if e["id"] == JC)
    assert verify_header(sent, nacl.signing.VerifyKey(zmq.utils.z85.decode(jc_entry["sign_key"])))
    inbound.ack(fwd["seq"])


def test_unanswered_forwards_come_again_in_order(district, connect_to):
    """§16.5/§16.1: a REJECT on the link takes it down; a forward not answered comes
    again on the next connection, in seq order with what was sent meanwhile."""
    b, inbound, _ = district()
    jc = connect_to(b, JC)
    _, r1 = refer(jc, SOZ_FAR)
    f1 = inbound.forward()
    assert f1["seq"] == r1["seq"]
    old = inbound.rid
    inbound.drop()
    redial = inbound.wait("HELLO", NEW_HELLO)
    assert redial is not None and redial.rid != old
    _, r2 = refer(jc, SOZ_FAR)
    assert inbound.quiet("PEER_FORWARD") == []
    inbound.accept(hello=redial)
    again = [inbound.forward(), inbound.forward()]
    assert [f["seq"] for f in again if f] == [r1["seq"], r2["seq"]]
    assert again[0]["hdr"] == f1["hdr"]
    for f in again:
        inbound.ack(f["seq"])
    assert inbound.quiet("PEER_FORWARD") == []


def test_link_mailbox_survives_a_restart(district, connect_to):
    """§16.5: a receipted message for a far office stays in the link mailbox, on
    disk, across a restart of the broker and is forwarded once the link is up."""
    b, inbound, _ = district(accept=False)
    jc = connect_to(b, JC)
    hdr, receipt = refer(jc, SOZ_FAR)
    assert b.stop() == 0
    inbound.quiet("HELLO", 0.1)         # the stopped broker's dials: all read now
    b.start()
    hello = inbound.wait("HELLO", NEW_HELLO)
    inbound.accept(hello=hello)
    fwd = inbound.forward()
    assert fwd is not None and fwd["seq"] == receipt["seq"]
    assert fwd["hdr"]["msg_id"] == hdr["msg_id"]
    inbound.ack(fwd["seq"])


def test_link_heartbeat_follows_the_peers_heartbeat_ms(district):
    """§16.1: the link PINGs every half of the peer's `heartbeat_ms` and goes down
    (dialling again) when nothing is heard for three of them."""
    b, inbound, _ = district(accept=False)
    hello, _, _ = inbound.accept(heartbeat_ms=300)
    assert pump([inbound], WAIT, until=lambda: inbound.pings >= 3)
    inbound.up = False                  # silence from now on
    silent = time.monotonic()
    again = inbound.wait("HELLO", NEW_HELLO)
    assert again is not None and again.rid != hello.rid
    assert again.at - silent >= 0.6     # not before ~3 x 300 ms of silence


def test_link_tries_the_next_endpoint_after_a_failure(brokers, far):
    """§16.1/kim.cfg(5): with several endpoints the link tries the next one after a
    failure; a REJECT on the link is one (§16.1)."""
    first = far.listen(endpoint="ipc://%s/first.sock" % far.folder)
    second = far.listen(endpoint="ipc://%s/second.sock" % far.folder)
    endpoints = "ipc://%s/first.sock, ipc://%s/second.sock" % (far.folder, far.folder)
    brokers(peers=far.peers(endpoint=endpoints))
    hello = first.hello()
    assert hello is not None
    first.rid = hello.rid
    first.drop()

    def hellos(conn):
        return [m for m in conn.got if m["cmd"] == "HELLO"]
    assert pump([first, second], NEW_HELLO, until=lambda: hellos(first) or hellos(second))
    assert (len(hellos(first)), len(hellos(second))) == (0, 1)
    _, doc, _ = second.accept()
    assert doc["broker"] == LOCAL


def test_link_mailbox_holds_mailbox_quota(district, connect_to):
    """§16.5: a link mailbox holds at most `mailbox_quota` messages until the peer
    answers them; beyond it a SEND gets QUOTA, which may succeed later."""
    b, inbound, _ = district(broker={"mailbox_quota": 2})
    jc = connect_to(b, JC)
    refer(jc, SOZ_FAR)
    refer(jc, SOZ_FAR)
    first, second = inbound.forward(), inbound.forward()
    assert first and second
    hdr = kim_headers.referral(uid("r"), uid("c"), SOZ_FAR, msg_id=uid("m"))
    with pytest.raises(kim.Rejected) as info:
        jc.send(hdr, b"x")
    assert (info.value.code, info.value.reason) == (QUOTA, "QUOTA")
    inbound.ack(first["seq"])
    deadline = time.monotonic() + WAIT
    while True:                     # the ACK's commit is due; same msg_id (§10)
        try:
            assert jc.send(hdr, b"x")["cmd"] == "RECEIPT"
            break
        except kim.Rejected as e:
            assert e.code == QUOTA and time.monotonic() < deadline
            time.sleep(0.05)


#   --- PEER_DIRECTORY (§16.3) -----------------------------------------------------

def test_peer_directory_checks_in_spec_order(district, far, connect_to):
    """§16.3: broker name (SENDER_MISMATCH at broker), then signature (BAD_SIGNATURE
    at sig), then serial (STALE at serial); the same serial is ignored silently;
    a refused document changes nothing, a newer one is in force at once."""
    b, _, out = district(accept=False, publish=False)
    jc = connect_to(b, JC)
    serial = 1_000_000
    assert out.publish(far.directory([SOZ_FAR], serial=serial)) == []
    assert remote_ids(jc) == [SOZ_FAR]
    stranger = nacl.signing.SigningKey.generate()
    everything = [SOZ_FAR, JC_FAR]
    assert rejects(out.publish(far.directory(everything, serial=serial - 1, broker="broker.other",
                                             signer=stranger))) == [
        ("REJECT", SENDER_MISMATCH, "SENDER_MISMATCH", "broker")]
    assert rejects(out.publish(far.directory(everything, serial=serial - 1, signer=stranger))) == [
        ("REJECT", BAD_SIGNATURE, "BAD_SIGNATURE", "sig")]
    tampered = far.directory([SOZ_FAR], serial=serial + 1)
    tampered["orgs"] = [o.entry() for o in far.orgs.values()]
    assert rejects(out.publish(tampered)) == [("REJECT", BAD_SIGNATURE, "BAD_SIGNATURE", "sig")]
    assert rejects(out.publish(far.directory(everything, serial=serial - 1))) == [
        ("REJECT", STALE, "STALE", "serial")]
    assert out.publish(far.directory(everything, serial=serial)) == []
    assert remote_ids(jc) == [SOZ_FAR]
    assert out.publish(far.directory(everything, serial=serial + 1)) == []
    assert remote_ids(jc) == [SOZ_FAR, JC_FAR]


def test_directory_of_a_client_names_far_orgs_and_ignores_local_ids(district, far, connect_to):
    """§16.3/§8.15: remote agencies follow the local ones, with `home` when asked;
    a published id that is registered here is ignored, and the peer may not
    speak for it."""
    b, _, out = district(accept=False, publish=False)
    jc = connect_to(b, JC)
    impostor = Org(SOZ)
    assert out.publish(far.directory([impostor, far.orgs[SOZ_FAR], far.orgs[JC_FAR]])) == []
    entries = jc.directory(timeout=WAIT, homes=True)
    assert [e["id"] for e in entries] == [JC, SOZ, AA, SOZ_FAR, JC_FAR]
    by_id = {e["id"]: e for e in entries}
    assert by_id[SOZ]["public_key"] == local_key(b, SOZ) and "home" not in by_id[SOZ]
    assert "home" not in by_id[JC]
    assert by_id[SOZ_FAR] == dict(far.orgs[SOZ_FAR].entry(), home=FAR)
    assert by_id[JC_FAR] == dict(far.orgs[JC_FAR].entry(), home=FAR)
    plain = jc.directory(timeout=WAIT)
    assert [e["id"] for e in plain] == [JC, SOZ, AA, SOZ_FAR, JC_FAR]
    assert all("home" not in e for e in plain)
    _, answer = out.forward(far_referral(far, SOZ, JC))
    assert refusal(answer)[:2] == (SENDER_MISMATCH, "SENDER_MISMATCH")


def test_org_published_by_two_peers_is_not_the_second_ones(brokers, far, connect_to):
    """§16.3: a peer's directory vouches for its own organisations only; an id two
    peers publish is ignored (not homed at the second), and that peer may not
    speak for it."""
    other = FarBroker("broker.other")
    try:
        twin = other.add(SOZ_FAR)
        other.add("ja.other")
        b = brokers(peers=dict(far.peers(), **other.peers()))
        jc = connect_to(b, JC)
        first, second = far.dial(b), other.dial(b)
        assert first.hello()["cmd"] == second.hello()["cmd"] == "WELCOME"
        assert first.publish(far.directory([SOZ_FAR])) == []
        assert second.publish(other.directory()) == []     # passes; the id is ignored
        homes = [(e["id"], e.get("home"), e["public_key"]) for e in jc.directory(timeout=WAIT, homes=True)
                 if e.get("home")]
        assert (SOZ_FAR, "broker.other", twin.public) not in homes
        #   Whether the first publisher keeps it the spec does not say ("is ignored");
        #   the broker drops the id altogether
        assert [h for h in homes if h[0] == SOZ_FAR] in ([], [(SOZ_FAR, FAR,
                                                               far.orgs[SOZ_FAR].public)])
        assert ("ja.other", "broker.other", other.orgs["ja.other"].public) in homes
        _, answer = second.forward(far_referral(other, SOZ_FAR, SOZ))
        assert refusal(answer)[:2] == (SENDER_MISMATCH, "SENDER_MISMATCH")
    finally:
        other.close()


def test_org_left_out_of_next_directory_is_gone(district, far, connect_to):
    """§16.3: an agency absent from the peer's next document is no longer routed
    to nor accepted from."""
    b, _, out = district(accept=False)
    jc = connect_to(b, JC)
    assert remote_ids(jc) == [SOZ_FAR, JC_FAR, SCH_FAR]
    assert out.publish(far.directory([SOZ_FAR, SCH_FAR])) == []
    assert remote_ids(jc) == [SOZ_FAR, SCH_FAR]
    _, answer = out.forward(far_referral(far, JC_FAR, SOZ))
    assert refusal(answer)[:2] == (SENDER_MISMATCH, "SENDER_MISMATCH")
    with pytest.raises(kim.Rejected) as info:
        jc.send(kim_headers.referral(uid("r"), uid("c"), JC_FAR), b"", seal=False)
    assert info.value.code == UNKNOWN_RECIPIENT


def test_directory_is_stored_and_read_again_at_start(district, far, connect_to):
    """§16.3: a document that passes is stored durably and read again at start
    (its serial too: the same serial is then ignored, a lower one STALE)."""
    b, _, out = district(accept=False, publish=False)
    serial = 5_000_000
    assert out.publish(far.directory([SOZ_FAR], serial=serial)) == []
    out.close()
    assert b.stop() == 0
    b.start()
    jc = connect_to(b, JC)
    assert remote_ids(jc) == [SOZ_FAR]
    again = far.dial(b)
    assert again.hello()["cmd"] == "WELCOME"
    assert again.publish(far.directory([SOZ_FAR, JC_FAR], serial=serial)) == []
    assert remote_ids(jc) == [SOZ_FAR]
    assert rejects(again.publish(far.directory([SOZ_FAR, JC_FAR], serial=serial - 1))) == [
        ("REJECT", STALE, "STALE", "serial")]
    #   Checked at start with the sign_key configured then: another key, no document
    again.close()
    jc.close()
    assert b.stop() == 0
    rotated = zmq.utils.z85.encode(bytes(nacl.signing.SigningKey.generate().verify_key))
    with open(b.config, encoding="utf-8") as f:
        text = f.read()
    with open(b.config, "w", encoding="utf-8") as f:
        f.write(text.replace(far.sign_key, rotated.decode()))
    b.start()
    assert remote_ids(connect_to(b, JC)) == []


#   --- PEER_FORWARD from the peer (§16.4) -----------------------------------------

def test_forward_from_peer_reaches_local_agency_unchanged(district, far, connect_to):
    """§16.4: PEER_ACK once stored; the local agency gets the header as sent (only
    `rule` is this broker's) and the sealed payload; a second copy is
    acknowledged with dup and not stored twice; freshness is not checked again."""
    b, _, out = district()
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    sealed = seal_to(local_key(b, SOZ), b"case notes")
    hdr = far_referral(far, JC_FAR, SOZ, sealed, rule="far_rule")
    assert "sig" in hdr
    seq, answer = out.forward(hdr, sealed)
    assert answer == {"cmd": "PEER_ACK", "seq": seq}
    got = inbox.wait(referral_id=hdr["referral_id"])
    assert len(got) == 1
    delivered = got[0]
    #   `rule` is this broker's (P1 of the shipped policy: jc -> soz under SGB X)
    assert delivered.hdr.get("rule") == "P1"
    assert ({k: v for k, v in delivered.hdr.items() if k != "rule"}
            == {k: v for k, v in hdr.items() if k != "rule"})
    assert not delivered.sealed_error and delivered.payload == b"case notes"
    seq2, answer = out.forward(hdr, sealed)
    assert answer == {"cmd": "PEER_ACK", "seq": seq2, "dup": True}
    #   A message logged at the far broker a month ago (its link was down)
    old = far_referral(far, JC_FAR, SOZ, created_at=int(time.time() * 1000) - 30 * 86400000)
    seq3, answer = out.forward(old)
    assert answer == {"cmd": "PEER_ACK", "seq": seq3}
    inbox.wait(referral_id=old["referral_id"])
    inbox.settle()
    assert len(inbox.where(referral_id=hdr["referral_id"])) == 1
    assert len(inbox.where(referral_id=old["referral_id"], type="REFERRAL")) == 1
    #   §9.4: its default answer period ran from its created_at, as at the far
    #   broker: a month later it arrives past its deadline, and the recipient is
    #   reminded at once
    assert inbox.wait(referral_id=old["referral_id"], type="REMINDER"), inbox.got


def test_forward_from_peer_refusals(district, far, connect_to):
    """§16.4: whom the peer may speak for (SENDER_MISMATCH, FORBIDDEN at hdr.type),
    then the write pipeline: recipient registered here, no transit
    (UNKNOWN_RECIPIENT), the directory's sign_key (BAD_SIGNATURE), payload,
    life cycle and policy; each PEER_REFUSED names the seq; nothing is delivered."""
    b, _, out = district()
    soz, jc = connect_to(b, SOZ), connect_to(b, JC)
    inboxes = [Inbox(soz), Inbox(jc)]
    ids = []

    def refused(hdr, payload=None):
        ids.append(hdr["msg_id"])
        seq, answer = out.forward(hdr, payload)
        assert answer is not None and answer.get("seq") == seq, answer
        return refusal(answer)

    assert refused(far_referral(far, "jc.nowhere", SOZ))[:2] == (SENDER_MISMATCH,
                                                                  "SENDER_MISMATCH")
    notice = far.header(far.orgs[JC_FAR], type="DELIVERED", msg_id=uid("b"), recipient=SOZ,
                        ref_msg_id=uid("m"))
    assert refused(notice) == (FORBIDDEN, "FORBIDDEN", "hdr.type")
    #   The peer's own name with a type agencies send
    assert refused(far_referral(far, FAR, SOZ)) == (SENDER_MISMATCH, "SENDER_MISMATCH",
                                                    "hdr.sender")
    assert refused(far_referral(far, JC_FAR, SOZ_FAR))[:2] == (UNKNOWN_RECIPIENT,
                                                               "UNKNOWN_RECIPIENT")
    assert refused(far_referral(far, JC_FAR, "soz.nowhere"))[:2] == (UNKNOWN_RECIPIENT,
                                                                     "UNKNOWN_RECIPIENT")
    forged = far_referral(far, JC_FAR, SOZ, sign=False)
    forged["sig"] = bytes(64)
    assert refused(forged)[:2] == (BAD_SIGNATURE, "BAD_SIGNATURE")
    assert refused(far_referral(far, JC_FAR, SOZ, sign=False))[:2] == (BAD_SIGNATURE,
                                                                      "BAD_SIGNATURE")
    assert refused(far_referral(far, JC_FAR, SOZ), b"not the hashed payload")[:2] == (
        BAD_VALUE, "BAD_VALUE")
    answer = far.header(far.orgs[JC_FAR], type="ACCEPT", msg_id=uid("m"), recipient=SOZ,
                        referral_id=uid("r"))
    assert refused(answer)[:2] == (UNKNOWN_REFERRAL, "UNKNOWN_REFERRAL")
    assert refused(far_referral(far, SCH_FAR, JC))[:2] == (POLICY_DENY, "POLICY_DENY")
    for inbox in inboxes:
        inbox.settle()
        assert [d for d in inbox.got if d.hdr.get("msg_id") in ids] == []


def test_forward_without_payload_hash_is_rejected(district, far):
    """§16.4/§6/§7.2: `hdr.payload_hash` is required in a PEER_FORWARD: the frame
    does not decode and is answered with REJECT MISSING_FIELD."""
    b, _, out = district()
    hdr = far_referral(far, JC_FAR, SOZ)
    del hdr["payload_hash"]
    _, answer = out.forward(hdr)
    assert answer is not None
    assert (answer["cmd"], answer["code"], answer.get("path")) == (
        "REJECT", MISSING_FIELD, "hdr.payload_hash")


#   --- the closed loop (§16.6) and UNDELIVERABLE (§16.7) ---------------------------

def test_delivered_made_here_goes_back_to_far_sender(district, far, connect_to):
    """§16.6: when the local recipient acknowledges a forwarded REFERRAL, this broker
    makes it DELIVERED and sends the DELIVERED over the link with its own name as
    sender; answers travel back as any message."""
    b, inbound, out = district()
    soz = connect_to(b, SOZ)
    hdr = far_referral(far, JC_FAR, SOZ)
    _, answer = out.forward(hdr)
    assert answer["cmd"] == "PEER_ACK"
    assert Inbox(soz).wait(referral_id=hdr["referral_id"])
    notice = inbound.forward()
    assert notice is not None
    assert {k: notice["hdr"].get(k) for k in ("type", "sender", "recipient", "ref_msg_id",
                                              "referral_id")} == {
        "type": "DELIVERED", "sender": LOCAL, "recipient": JC_FAR,
        "ref_msg_id": hdr["msg_id"], "referral_id": hdr["referral_id"]}
    inbound.ack(notice["seq"])
    assert wait_state(soz, hdr["referral_id"], "DELIVERED") == "DELIVERED"
    soz.send({"type": "ACCEPT", "recipient": JC_FAR, "referral_id": hdr["referral_id"],
              "msg_id": uid("m")})
    accept = inbound.forward()
    assert accept is not None
    assert (accept["hdr"]["type"], accept["hdr"]["sender"], accept["hdr"]["recipient"]) == (
        "ACCEPT", SOZ, JC_FAR)
    inbound.ack(accept["seq"])
    assert state_of(soz, hdr["referral_id"]) == "ACCEPTED"


def test_refused_answer_leaves_the_state(district, far, connect_to):
    """§16.7/§16.8: when the far broker refuses an answer (here an ACCEPT), the
    answering office gets UNDELIVERABLE and its referral keeps the state its
    broker holds."""
    b, inbound, out = district()
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    hdr = far_referral(far, JC_FAR, SOZ)
    assert out.forward(hdr)[1]["cmd"] == "PEER_ACK"
    assert inbox.wait(referral_id=hdr["referral_id"])
    inbound.ack(inbound.forward()["seq"])           # the DELIVERED (§16.6)
    accept = {"type": "ACCEPT", "recipient": JC_FAR, "referral_id": hdr["referral_id"],
              "msg_id": uid("m")}
    soz.send(accept)
    fwd = inbound.forward()
    assert fwd["hdr"]["msg_id"] == accept["msg_id"]
    inbound.refuse(fwd["seq"], BAD_STATE, "BAD_STATE", "the referral is closed here")
    got = inbox.wait(type="UNDELIVERABLE", ref_msg_id=accept["msg_id"])
    assert len(got) == 1
    assert (got[0].hdr["recipient"], got[0].hdr["code"], got[0].hdr["org"]) == (
        SOZ, "bad_state", FAR)
    assert state_of(soz, hdr["referral_id"]) == "ACCEPTED"


def test_consents_cross_to_the_districts_of_their_recipients(district, connect_to):
    """§16.5/§16.8: a CONSENT_GRANT naming an office of the peer goes into its link
    mailbox, its CONSENT_REVOKE follows; a consent with local recipients only
    stays local."""
    b, inbound, _ = district()
    jc = connect_to(b, JC)
    case_id = uid("c")
    until = int(time.time() * 1000) + 86400000

    def grant(recipients):
        consent = uid("g")
        jc.send({"type": "CONSENT_GRANT", "msg_id": uid("m"), "case_id": case_id,
                 "subject": "p-7f3a", "consent": consent, "recipients": recipients,
                 "purposes": ["benefits"], "valid_until": until})
        return consent

    local = grant([SOZ])
    remote = grant([SOZ_FAR])
    jc.send({"type": "CONSENT_REVOKE", "msg_id": uid("m"), "consent": local})
    jc.send({"type": "CONSENT_REVOKE", "msg_id": uid("m"), "consent": remote})
    #   The link sends in seq order: whatever of the local consent went would
    #   come before the remote one's
    forwards = [inbound.forward(), inbound.forward()]
    assert [(f["hdr"]["type"], f["hdr"]["consent"]) for f in forwards if f] == [
        ("CONSENT_GRANT", remote), ("CONSENT_REVOKE", remote)]
    assert forwards[0]["hdr"]["recipients"] == [SOZ_FAR]
    for f in forwards:
        inbound.ack(f["seq"])


def _delivered_far(district, connect_to):
    """jc.rheine's REFERRAL to soz.far, forwarded over the link and acknowledged
    by the far side: (jc's client, its Inbox, the REFERRAL's header, the far
    side's outbound connection)."""
    b, inbound, out = district()
    jc = connect_to(b, JC)
    inbox = Inbox(jc)
    hdr, _ = refer(jc, SOZ_FAR)
    inbound.ack(inbound.forward()["seq"])
    return jc, inbox, hdr, out


def test_delivered_from_far_broker_reaches_sender(district, far, connect_to):
    """§16.6: the far broker's DELIVERED (its name as sender) is accepted from its
    link, delivered to the sender, and makes the referral DELIVERED here."""
    jc, inbox, hdr, out = _delivered_far(district, connect_to)
    assert state_of(jc, hdr["referral_id"]) == "SENT"
    notice = far.header(FAR, type="DELIVERED", msg_id=uid("b"), recipient=JC,
                        referral_id=hdr["referral_id"], ref_msg_id=hdr["msg_id"],
                        case_id=hdr["case_id"])
    seq, answer = out.forward(notice)
    assert answer == {"cmd": "PEER_ACK", "seq": seq}
    got = inbox.wait(type="DELIVERED", referral_id=hdr["referral_id"])
    assert len(got) == 1 and got[0].hdr["sender"] == FAR
    assert got[0].hdr["ref_msg_id"] == hdr["msg_id"]
    assert wait_state(jc, hdr["referral_id"], "DELIVERED") == "DELIVERED"


def test_far_delivered_after_a_withdrawal_is_delivered_and_moves_no_state(
        district, far, connect_to):
    """§16.6: the far broker's DELIVERED makes the referral DELIVERED here only if
    it is SENT; one the sender withdrew while the notice travelled stays WITHDRAWN,
    and the sender still hears that its office had it."""
    jc, inbox, hdr, out = _delivered_far(district, connect_to)
    jc.send({"type": "WITHDRAW", "msg_id": uid("m"), "recipient": SOZ_FAR,
             "referral_id": hdr["referral_id"]})
    assert state_of(jc, hdr["referral_id"]) == "WITHDRAWN"
    notice = far.header(FAR, type="DELIVERED", msg_id=uid("b"), recipient=JC,
                        referral_id=hdr["referral_id"], ref_msg_id=hdr["msg_id"],
                        case_id=hdr["case_id"])
    seq, answer = out.forward(notice)
    assert answer == {"cmd": "PEER_ACK", "seq": seq}
    assert len(inbox.wait(type="DELIVERED", referral_id=hdr["referral_id"])) == 1
    assert state_of(jc, hdr["referral_id"]) == "WITHDRAWN"


def test_far_delivered_for_a_referral_not_of_its_offices_is_refused(district, far,
                                                                     connect_to):
    """§16.6: a peer's DELIVERED is taken only for a referral known here whose
    recipient is homed at that peer: NOT_PARTY for one to a local office,
    UNKNOWN_REFERRAL for none; neither is delivered or moves a state."""
    b, _, out = district()
    jc = connect_to(b, JC)
    inbox = Inbox(jc)
    hdr, _ = refer(jc, SOZ)
    notice = far.header(FAR, type="DELIVERED", msg_id=uid("b"), recipient=JC,
                        referral_id=hdr["referral_id"], ref_msg_id=hdr["msg_id"])
    _, answer = out.forward(notice)
    assert refusal(answer) == (NOT_PARTY, "NOT_PARTY", "hdr.referral_id")
    unknown = far.header(FAR, type="DELIVERED", msg_id=uid("b"), recipient=JC,
                         referral_id=uid("r"), ref_msg_id=uid("m"))
    _, answer = out.forward(unknown)
    assert refusal(answer) == (UNKNOWN_REFERRAL, "UNKNOWN_REFERRAL", "hdr.referral_id")
    inbox.settle()
    assert inbox.where(type="DELIVERED") == []
    assert state_of(jc, hdr["referral_id"]) == "SENT"


def test_refusal_by_far_broker_is_undeliverable(district, connect_to):
    """§16.5/§16.7/§9.4: a PEER_REFUSED takes the message out of the link mailbox,
    tells the sender with a broker-made UNDELIVERABLE (org, code, rule, note) and
    closes the referral as UNDELIVERABLE, which takes no further message."""
    b, inbound, _ = district()
    jc = connect_to(b, JC)
    inbox = Inbox(jc)
    hdr, _ = refer(jc, SOZ_FAR)
    fwd = inbound.forward()
    inbound.refuse(fwd["seq"], POLICY_DENY, "POLICY_DENY", "nothing goes to this office",
                   rule="far_no_soz")
    got = inbox.wait(type="UNDELIVERABLE", ref_msg_id=hdr["msg_id"])
    assert len(got) == 1
    notice = got[0].hdr
    assert {k: notice.get(k) for k in ("sender", "recipient", "referral_id", "code", "org",
                                       "rule")} == {
        "sender": LOCAL, "recipient": JC, "referral_id": hdr["referral_id"],
        "code": "policy_deny", "org": FAR, "rule": "far_no_soz"}
    #   `note` is "the far broker's text" (§16.5, §16.7); §16.7's example shows a note
    #   the refusing broker's name and rule make up, so only containment is asked
    assert "nothing goes to this office" in notice["note"]
    assert wait_state(jc, hdr["referral_id"], "UNDELIVERABLE") == "UNDELIVERABLE"
    with pytest.raises(kim.Rejected) as info:
        jc.send({"type": "WITHDRAW", "recipient": SOZ_FAR, "referral_id": hdr["referral_id"],
                 "msg_id": uid("m")})
    assert info.value.code == BAD_STATE
    #   Out of the link mailbox: not sent again on the next connection
    inbound.drop()
    inbound.accept()
    assert inbound.quiet("PEER_FORWARD") == []


def test_undeliverable_note_keeps_the_header_limit(district, connect_to):
    """§16.7/§9: the UNDELIVERABLE's `note` is a header text of at most 280 bytes of
    valid UTF-8, also for the longest text (256 bytes) and rule a refusal carries."""
    b, inbound, _ = district()
    jc = connect_to(b, JC)
    inbox = Inbox(jc)
    hdr, _ = refer(jc, SOZ_FAR)
    fwd = inbound.forward()
    inbound.refuse(fwd["seq"], POLICY_DENY, "POLICY_DENY", "\u00e4" * 128, rule="r" * 63)
    got = inbox.wait(type="UNDELIVERABLE", ref_msg_id=hdr["msg_id"])
    assert len(got) == 1 and not got[0].sealed_error
    note = got[0].hdr.get("note", "")
    assert len(note.encode("utf-8")) <= 280
    assert got[0].hdr["rule"] == "r" * 63


def test_store_refusal_delays_without_undeliverable(district, connect_to):
    """§16.5/§16.8: a refusal with 301–304 (here BUSY) is no UNDELIVERABLE: the link
    drops and sends the message again after its back-off."""
    b, inbound, _ = district()
    jc = connect_to(b, JC)
    inbox = Inbox(jc)
    hdr, receipt = refer(jc, SOZ_FAR)
    fwd = inbound.forward()
    old = inbound.rid
    inbound.refuse(fwd["seq"], 304, "BUSY", "shutting down")
    inbound.accept()
    assert inbound.rid != old
    again = inbound.forward()
    assert again is not None and again["seq"] == receipt["seq"] and again["hdr"] == fwd["hdr"]
    inbound.ack(again["seq"])
    inbox.settle()
    assert inbox.where(type="UNDELIVERABLE") == []
    assert state_of(jc, hdr["referral_id"]) == "SENT"


def test_reminder_for_far_org_is_not_forwarded(district, connect_to):
    """§16.5: REMINDER and other notices for an office of another district are
    logged, not sent over the link (the local sender still gets its REMINDER)."""
    b, inbound, _ = district(lifecycle={"deadline_seconds": 1, "expire_seconds": 3600})
    jc = connect_to(b, JC)
    inbox = Inbox(jc)
    hdr, _ = refer(jc, SOZ_FAR)
    fwd = inbound.forward()
    inbound.ack(fwd["seq"])
    assert inbox.wait(type="REMINDER", referral_id=hdr["referral_id"])
    assert state_of(jc, hdr["referral_id"]) == "OVERDUE"
    assert inbound.quiet("PEER_FORWARD") == []


def test_an_erasure_crosses_to_the_districts_that_received_the_data(district, far,
                                                                    connect_to):
    """§9.3/§16.5: an office's ERASURE goes, once, into the link mailbox of each
    broker whose offices received its transfers about the subject; one whose
    transfers stayed local stays local. An ERASURE a peer forwards for its office
    purges this broker's copies of that office's transfers and tells their local
    recipients, and is not passed on."""
    b, inbound, out = district()
    jc = connect_to(b, JC)
    subject = uid("p")
    for recipient in (SOZ_FAR, SOZ_FAR):
        refer(jc, recipient, subject=subject)
        inbound.ack(inbound.forward()["seq"])
    refer(jc, SOZ, subject=subject)
    erasure = {"type": "ERASURE", "msg_id": uid("m"), "subject": subject}
    jc.send(erasure)
    fwd = inbound.forward()
    assert fwd is not None, "the erasure did not cross to the far district"
    assert (fwd["hdr"]["type"], fwd["hdr"]["subject"], fwd["hdr"]["sender"],
            fwd["hdr"]["msg_id"]) == ("ERASURE", subject, JC, erasure["msg_id"])
    inbound.ack(fwd["seq"])
    assert inbound.quiet("PEER_FORWARD") == []                   # once per broker
    other = uid("p")
    refer(jc, SOZ, subject=other)
    jc.send({"type": "ERASURE", "msg_id": uid("m"), "subject": other})
    assert inbound.quiet("PEER_FORWARD") == []                   # local only

    #   The other way: the far broker forwards its office's erasure
    soz = connect_to(b, SOZ)
    inbox = Inbox(soz)
    far_subject = uid("p")
    sealed = seal_to(local_key(b, SOZ), b"case notes")
    hdr = far_referral(far, JC_FAR, SOZ, sealed, subject=far_subject)
    _, answer = out.forward(hdr, sealed)
    assert answer["cmd"] == "PEER_ACK", answer
    inbox.wait(referral_id=hdr["referral_id"])
    asked = far.header(far.orgs[JC_FAR], type="ERASURE", msg_id=uid("m"), subject=far_subject)
    _, answer = out.forward(asked)
    assert answer["cmd"] == "PEER_ACK", answer
    assert inbox.wait(type="ERASURE", subject=far_subject), inbox.got
    back = inbound.quiet("PEER_FORWARD")                        # the DELIVERED goes back,
    assert [f["hdr"]["type"] for f in back] == ["DELIVERED"]     # the erasure no further
    #   and this broker purged its copy of the far office's payload
    line = "erasure of subject %s for %s: 1 payloads purged, 1 recipients told" % (
        far_subject, JC_FAR)
    deadline = time.monotonic() + WAIT
    while line not in b.log_tail(200) and time.monotonic() < deadline:
        time.sleep(0.05)                # a poll: the log line follows the commit
    assert line in b.log_tail(200), b.log_tail(40)


def test_peer_broker_notices_other_than_delivered_are_refused(district, far, connect_to):
    """§16.4/§16.5: in its own name a peer forwards only DELIVERED and HANDED_OVER;
    REMINDER, EXPIRED and the like stay in their broker's log, so anything else
    is refused at once and stored nowhere."""
    jc, inbox, hdr, out = _delivered_far(district, connect_to)
    now = int(time.time() * 1000)
    notices = [
        dict(type="REMINDER", referral_id=hdr["referral_id"], deadline=now),
        dict(type="EXPIRED", referral_id=hdr["referral_id"], deadline=now),
        dict(type="UNDELIVERABLE", ref_msg_id=hdr["msg_id"], code="policy_deny", org=FAR),
    ]
    for fields in notices:
        _, answer = out.forward(far.header(FAR, msg_id=uid("b"), recipient=JC, **fields))
        assert refusal(answer) == (FORBIDDEN, "FORBIDDEN", "hdr.type")
    inbox.settle()
    assert [d.hdr["type"] for d in inbox.got if d.hdr["sender"] == FAR] == []


#   --- roles (§16.2, §7.2) --------------------------------------------------------

def test_peer_may_not_use_agency_commands_and_gets_no_delivers(district, far, connect_to):
    """§16.2/§7.2: a peer's session has window 0 and its broker name as identity;
    commands outside HELLO, PING, BYE and PEER_* are FORBIDDEN; mail for its
    offices goes over the link, never as DELIVER."""
    b, inbound, out = district()
    second = far.dial(b)
    welcome = second.hello(window=64)
    assert (welcome["cmd"], welcome["org"], welcome["broker"], welcome["window"]) == (
        "WELCOME", FAR, LOCAL, 0)
    commands = [
        {"cmd": "SEND", "hdr": kim_headers.referral(uid("r"), uid("c"), SOZ, msg_id=uid("m"),
                                                    schema=1)},
        {"cmd": "STATUS"},
        {"cmd": "DIRECTORY"},
        {"cmd": "ACK", "seqs": [1]},
        {"cmd": "SUBSCRIBE", "sub_id": uid("s")},
        {"cmd": "REFERRAL_QUERY", "query_id": uid("q")},
    ]
    for cmd in commands:
        second.send(cmd)
        assert [(m["cmd"], m["code"]) for m in second.sync()] == [("REJECT", FORBIDDEN)], cmd
    jc = connect_to(b, JC)
    _, receipt = refer(jc, SOZ_FAR)
    fwd = inbound.forward()
    assert fwd["seq"] == receipt["seq"]
    inbound.ack(fwd["seq"])
    assert out.quiet("DELIVER") == [] and second.quiet("DELIVER") == []


def test_agencies_and_auditors_may_not_use_peer_commands(district, far, connect_to):
    """§16.2/§7.2: PEER_DIRECTORY, PEER_FORWARD, PEER_ACK and PEER_REFUSED from an
    agency or an auditor are refused with FORBIDDEN; the session stays."""
    b, _, _ = district(accept=False)
    commands = [
        far.directory([SOZ_FAR]),
        {"cmd": "PEER_FORWARD", "seq": 1, "hdr": far_referral(far, JC, SOZ)},
        {"cmd": "PEER_ACK", "seq": 1},
        {"cmd": "PEER_REFUSED", "code": POLICY_DENY, "reason": "POLICY_DENY", "text": "no",
         "seq": 1},
    ]
    for org in (JC, AUDITOR):
        client = connect_to(b, org)
        for cmd in commands:
            client._send_cmd(cmd)
            reject = reject_of(client)
            assert reject is not None and reject["code"] == FORBIDDEN, (org, cmd["cmd"], reject)
        client.ping()


def test_peer_key_of_an_organisation_is_a_config_error(far):
    """§16.2/kim.cfg(5): a peer's public_key may not belong to an organisation: a
    config error (kim-broker --check fails; the valid file passes)."""
    b = new_broker(peers=far.peers())
    try:
        check = [b.broker_bin, "--check", "--config", b.config]
        assert subprocess.run(check, capture_output=True, timeout=WAIT * 4).returncode == 0
        with open(b.config, encoding="utf-8") as f:
            text = f.read()
        with open(b.config, "w", encoding="utf-8") as f:
            f.write(text.replace(far.public, local_key(b, SOZ)))
        assert subprocess.run(check, capture_output=True, timeout=WAIT * 4).returncode != 0
    finally:
        b.cleanup()


def test_operator_sees_the_link_and_reload_publishes_again(district, connect_to):
    """§8.9/§16.8: an operator's STATUS has one line per link (up, queued, in_flight,
    remote_orgs), an agency's none; §16.3: RELOAD publishes the directory again,
    with a higher serial."""
    b, inbound, _ = district(orgs=dict(ORGS, **{OPERATOR: "operator"}))
    op, jc = connect_to(b, OPERATOR), connect_to(b, JC)
    refer(jc, SOZ_FAR)
    assert inbound.forward() is not None

    def links(client):
        client._send_cmd({"cmd": "STATUS"})
        reply = client._wait(lambda c: c["cmd"] == "STATUS_REPLY", None, WAIT)
        body = reply.get("body")
        return None if body is None else [json.loads(line) for line in
                                          bytes(body).decode("utf-8").splitlines()]

    assert links(jc) is None
    [line] = links(op)
    assert {k: line.get(k) for k in ("peer", "up", "queued", "in_flight", "remote_orgs")} == {
        "peer": FAR, "up": True, "queued": 1, "in_flight": 1, "remote_orgs": 3}
    assert isinstance(line.get("since_ms"), int)
    op._send_cmd({"cmd": "RELOAD"})
    assert op._wait(lambda c: c["cmd"] == "RELOADED", None, WAIT)
    doc = inbound.wait(lambda m: m["cmd"] == "PEER_DIRECTORY" and inbound.on_link(m))
    assert doc is not None and doc["broker"] == LOCAL
    assert doc["serial"] > inbound.directory["serial"]
    assert verify_directory(doc, broker_verify_key(b))
    inbound.drop()
    deadline = time.monotonic() + WAIT
    while links(op)[0]["up"] and time.monotonic() < deadline:
        time.sleep(0.05)            # a poll: the REJECT is read in the broker's turn
    [line] = links(op)
    assert (line["up"], line["queued"], line["in_flight"]) == (False, 1, 0)


def test_peer_directory_field_limits(district, far):
    """§16.3/§6: `orgs` holds at most 128 entries (TOO_MANY); `serial` is at most
    2^53 - 1 (BAD_VALUE at serial)."""
    b, _, out = district(accept=False, publish=False)
    many = [Org("soz.far%d" % i) for i in range(129)]
    assert [m.get("code") for m in out.publish(far.directory(many))] == [106]
    assert [(m.get("code"), m.get("path")) for m in
            out.publish(far.directory([SOZ_FAR], serial=2 ** 53))] == [(BAD_VALUE, "serial")]


def test_zero_serial_and_seq_are_out_of_range(district, far):
    """§16.3: `serial` is 1 to 2^53 - 1; §16.4: `seq` is >= 1. Out of its limits a
    value is BAD_VALUE (§6 rules 3 and 5) at its path."""
    b, _, out = district(accept=False, publish=False)
    zero = out.publish(far.directory([SOZ_FAR], serial=0))
    _, answer = out.forward(far_referral(far, JC_FAR, SOZ), seq=0)
    assert [(m.get("code"), m.get("path")) for m in zero] == [(BAD_VALUE, "serial")]
    assert (answer["cmd"], answer.get("code"), answer.get("path")) == (
        "REJECT", BAD_VALUE, "seq")
