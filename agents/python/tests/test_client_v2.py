"""Protocol version 2 in the Python client (PROTOCOL.md §5.1, §8.16–8.19).

Against a real kim-broker: WELCOME chooses version 2; send_many() sends
SEND_BATCH frames and returns each message's RECEIPT or refusal in order;
deliveries come as DELIVER_BATCH and are acknowledged with ACK_RANGE; a
retried batch is receipted as duplicates; version 1 and version 2 clients
work side by side. Against a scripted broker (a CURVE ROUTER in a thread):
batch frames that do not split, or answers that do not fit, raise KimError
instead of hanging. Every test leaves the mailboxes it used empty, so the
tests after it see only their own messages."""
import os
import tempfile
import threading
import time

import msgpack
import pytest
import zmq

import kim
from kim.certs import load_cert, write_cert

from kim_headers import referral as _referral


def _spy(client):
    """The commands `client` sends from now on, as decoded maps (a list that grows)."""
    sent = []
    send_cmd = client._send_cmd

    def record(cmd, payload=None):
        sent.append(cmd)
        return send_cmd(cmd, payload)
    client._send_cmd = record
    return sent


def _receive(client, want, timeout=30):
    """Receives until every seq in `want` has come; acknowledges what it receives
    a window's worth at a time (so consecutive deliveries share one range).
    Returns {seq: Delivery} of the wanted ones."""
    got, deadline = {}, time.monotonic() + timeout
    while not set(want) <= set(got):
        assert time.monotonic() < deadline, "%d of %d deliveries came" % (
            len(set(want) & set(got)), len(want))
        chunk = []
        d = client.recv(timeout=1)
        while d is not None:
            chunk.append(d)
            d = client.recv(timeout=0.05)
        client.ack(*[d.seq for d in chunk])
        got.update((d.seq, d) for d in chunk if d.seq in want)
    return got


def _empty_mailbox(client, timeout=30):
    """Receives and acknowledges until the organisation's mailbox is empty (the
    broker commits ACKs within a few ms, so status() is polled)."""
    deadline = time.monotonic() + timeout
    while True:
        chunk = list(client.deliveries(timeout=0.1))
        if chunk:
            client.ack(*[d.seq for d in chunk])
        elif client.status()["mailbox"] == 0:
            return
        assert time.monotonic() < deadline, "the mailbox of %s stays full" % client.org


def _receipted(results):
    for r in results:
        assert isinstance(r, dict) and r["cmd"] == "RECEIPT", r
    return [r["seq"] for r in results]


#   --- against the real broker -----------------------------------------------

def test_welcome_chooses_version_2(connect, broker):
    c = connect("soz.rheine", window=16)
    assert c.welcome["version"] == 2 and c.version == 2
    assert c.welcome["window"] == 16
    c.ping()
    assert c.status()["sessions"] >= 1
    old = connect("aa.rheine", versions=(1,))
    assert old.welcome["version"] == 1 and old.version == 1
    assert connect("aa.rheine", versions=[2]).version == 2
    with pytest.raises(kim.KimError):
        kim.Client(broker.endpoint, broker.broker_cert, broker.cert_secret("jc.rheine"),
                   versions=(3,))


def test_send_many_200_referrals(connect):
    jc = connect("jc.rheine")
    soz = connect("soz.rheine")
    _empty_mailbox(soz)
    items = [(_referral("R-V2-B-%d" % i, "C-V2-B", msg_id="m-v2-b-%d" % i),
              ("Akte %d: " % i).encode() + os.urandom(i % 50)) for i in range(200)]
    results = jc.send_many(items)
    seqs = _receipted(results)
    assert len(set(seqs)) == 200 and not any(r.get("dup") for r in results)
    assert [r["msg_id"] for r in results] == ["m-v2-b-%d" % i for i in range(200)]

    sent = _spy(soz)
    got = _receive(soz, seqs)
    for (hdr, payload), seq in zip(items, seqs):
        d = got[seq]
        assert not d.sealed_error and d.payload == payload          # opened with soz's key
        assert d.hdr["msg_id"] == hdr["msg_id"] and d.hdr["sender"] == "jc.rheine"
        assert d.hdr["referral_id"] == hdr["referral_id"]
        assert d.hdr["payload_len"] == len(payload) + 48            # sealed on the wire
        assert "sig" in d.hdr
    # this session's deliveries, stored in a row, are acknowledged by ranges
    assert sent and all(c["cmd"] == "ACK_RANGE" for c in sent)
    assert sum(len(c["ranges"]) for c in sent) < 2 * len(seqs) / 4
    _empty_mailbox(soz)
    assert soz.late_rejects == []
    _empty_mailbox(jc)                                  # the DELIVERED notices


def test_send_many_refuses_one_entry_and_receipts_the_others(connect):
    receipted = []
    for versions, tag in (((2, 1), "N2"), ((1,), "N1")):
        jc = connect("jc.rheine", versions=versions)
        items = [(_referral("R-V2-%s-%d" % (tag, i), "C-V2-N", msg_id="m-v2-%s-%d" % (tag, i)),
                  b"ok %d" % i) for i in range(6)]
        items[1][0]["purpose"] = "Not A Code"             # BAD_VALUE at hdr.purpose
        items[3][0]["msg_id"] = "bad id!"                   # BAD_ID: no msg_id to echo
        items[4][0]["recipient"] = "jc.nowhere"             # refused by the broker...
        items[4] = (items[4][0], b"")                       # ...having no key to seal to
        results = jc.send_many(items)
        assert [type(r).__name__ for r in results] == [
            "dict", "Rejected", "dict", "Rejected", "Rejected", "dict"], (tag, results)
        assert results[1].reason == "BAD_VALUE" and results[1].path == "hdr.purpose"
        assert results[1].msg_id == "m-v2-%s-1" % tag
        assert results[3].reason == "BAD_ID" and results[3].path == "hdr.msg_id"
        assert results[3].msg_id is None
        assert results[4].reason == "UNKNOWN_RECIPIENT" and results[4].code == 203
        receipted += _receipted([results[0], results[2], results[5]])
        jc.ping()                                           # the session lives on
    assert len(set(receipted)) == 6
    soz = connect("soz.rheine")
    got = _receive(soz, receipted)
    assert sorted(d.payload for d in got.values()) == [b"ok 0", b"ok 0", b"ok 2", b"ok 2",
                                                       b"ok 5", b"ok 5"]
    _empty_mailbox(soz)


def test_retried_batch_gets_dup_receipts(connect):
    jc = connect("jc.rheine")
    items = [(_referral("R-V2-D-%d" % i, "C-V2-D", msg_id="m-v2-d-%d" % i), b"once")
             for i in range(10)]
    first = _receipted(jc.send_many(items))
    again = jc.send_many(items)
    assert _receipted(again) == first and all(r.get("dup") is True for r in again)
    soz = connect("soz.rheine")
    got = _receive(soz, first)
    assert len(got) == 10
    _empty_mailbox(soz)
    # stored once: nothing more for R-V2-D came or comes
    fresh = connect("soz.rheine")
    assert all(not d.hdr.get("referral_id", "").startswith("R-V2-D")
               for d in fresh.deliveries(timeout=0.5))


def test_ack_range_empties_the_mailbox_nothing_comes_again(connect):
    jc = connect("jc.rheine")
    aa = connect("aa.rheine", window=32)
    _empty_mailbox(aa)
    seqs = _receipted(jc.send_many(
        [(_referral("R-V2-A-%d" % i, "C-V2-A", recipient="aa.rheine"), b"a") for i in range(100)]))
    sent = _spy(aa)
    _receive(aa, seqs)
    assert {c["cmd"] for c in sent} == {"ACK_RANGE"}
    deadline = time.monotonic() + 30
    while aa.status()["mailbox"] != 0:
        assert time.monotonic() < deadline, "ACK_RANGE left the mailbox full"
    aa.close()
    again = connect("aa.rheine")
    assert again.recv(timeout=0.5) is None              # no redelivery
    _empty_mailbox(jc)


def test_ack_range_never_spans_a_delivery_not_yet_stored(connect):
    jc = connect("jc.rheine")
    soz = connect("soz.rheine")
    _empty_mailbox(soz)
    seqs = _receipted(jc.send_many(
        [(_referral("R-V2-S-%d" % i, "C-V2-S"), b"s") for i in range(5)]))
    got = {}
    while len(got) < 5:
        d = soz.recv(timeout=10)
        assert d is not None
        got[d.seq] = d
    sent = _spy(soz)
    soz.ack(seqs[0], seqs[1], seqs[3], seqs[4])           # seqs[2] not stored yet
    assert sent == [{"cmd": "ACK_RANGE", "ranges": [seqs[0], seqs[1], seqs[3], seqs[4]]}]
    soz.close()                                             # seqs[2] goes back
    soz = connect("soz.rheine")
    d = soz.recv(timeout=10)
    assert d is not None and d.seq == seqs[2] and soz.recv(timeout=0.5) is None
    sent = _spy(soz)
    soz.ack(d.seq)
    assert sent == [{"cmd": "ACK_RANGE", "ranges": [d.seq, d.seq]}]
    _empty_mailbox(soz)
    _empty_mailbox(jc)


def test_send_many_splits_at_the_frame_limit(connect):
    jc = connect("jc.rheine")
    limit = jc.welcome["max_payload"] + 65536
    big = jc.welcome["max_payload"] // 3
    frames = []                                         # sizes of the SEND_BATCH frames
    send_frames = jc._send_frames

    def record(frame, payload=None):
        head = msgpack.Unpacker(raw=False)
        head.feed(frame)
        if next(head)["cmd"] == "SEND_BATCH":
            frames.append(len(frame))
        return send_frames(frame, payload)
    jc._send_frames = record
    items = [(_referral("R-V2-L-%d" % i, "C-V2-L"), bytes([i]) * big) for i in range(7)]
    seqs = _receipted(jc.send_many(items))
    assert len(frames) >= 3 and max(frames) <= limit
    soz = connect("soz.rheine")
    got = _receive(soz, seqs)
    assert [got[s].payload for s in seqs] == [p for _, p in items]
    _empty_mailbox(soz)


def test_version_1_client_still_works(connect):
    jc = connect("jc.rheine", versions=(1,))
    soz = connect("soz.rheine", versions=(1,))
    _empty_mailbox(soz)
    one = jc.send(_referral("R-V2-V1-0", "C-V2-V1"), b"eins")
    many = jc.send_many([(_referral("R-V2-V1-%d" % i, "C-V2-V1"), b"mehr %d" % i)
                         for i in range(1, 50)])
    seqs = [one["seq"]] + _receipted(many)
    sent = _spy(soz)
    got = _receive(soz, seqs)
    assert got[one["seq"]].payload == b"eins" and got[seqs[7]].payload == b"mehr 7"
    assert sent and {c["cmd"] for c in sent} == {"ACK"}
    _empty_mailbox(soz)
    _empty_mailbox(jc)


def test_versions_1_and_2_interoperate(connect):
    jc = connect("jc.rheine")                               # version 2
    aa = connect("aa.rheine", versions=(1,))
    _empty_mailbox(aa)
    ids = ["R-V2-X-%d" % i for i in range(20)]
    seqs = _receipted(jc.send_many([(_referral(r, "C-V2-X", recipient="aa.rheine"),
                                     r.encode()) for r in ids]))
    got = _receive(aa, seqs)
    assert [got[s].payload for s in seqs] == [r.encode() for r in ids]
    # answered from version 1 with send_many, received at version 2 in batches
    answers = aa.send_many([({"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": r,
                              "ref_msg_id": got[s].hdr["msg_id"]}, b"") for r, s in zip(ids, seqs)])
    accepted = set()
    deadline = time.monotonic() + 30
    while accepted != set(ids):
        assert time.monotonic() < deadline
        d = jc.recv(timeout=1)
        if d is not None:
            jc.ack(d.seq)
            if d.hdr["type"] == "ACCEPT":
                accepted.add(d.hdr["referral_id"])
    assert len(set(_receipted(answers))) == 20
    (info,) = aa.referral_query(referral_id=ids[3])
    assert info["state"] == "ACCEPTED"
    _empty_mailbox(jc)
    _empty_mailbox(aa)


#   --- against a scripted broker: bad input ----------------------------------

def _pack(*values):
    return b"".join(msgpack.packb(v, use_bin_type=True) for v in values)


def _deliver(seq, payload=b""):
    return [{"cmd": "DELIVER", "seq": seq, "hdr": {"type": "STATUS", "msg_id": "m-%d" % seq,
                                                   "sender": "soz.rheine"}}, payload]


class ScriptedBroker(threading.Thread):
    """A CURVE ROUTER that answers HELLO with a WELCOME of `version`, then sends
    `after_welcome` (lists of frames); answers each further command with what
    `answer(cmd, frame)` returns (lists of frames). `received` holds what came."""

    def __init__(self, folder, version=2, after_welcome=(), answer=None):
        super().__init__(daemon=True)
        self.endpoint = "ipc://%s/scripted.sock" % folder
        self.cert = os.path.join(folder, "scripted.cert")
        write_cert(os.path.join(folder, "scripted"), "scripted")
        _, self.secret = load_cert(self.cert + "_secret", secret=True)
        self.version = version
        self.after_welcome = list(after_welcome)
        self.answer = answer or (lambda cmd, frame: [])
        self.received = []
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.curve_server = True
        self.sock.curve_secretkey = self.secret.encode()
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            if not self.sock.poll(50):
                continue
            rid, frame, *_ = self.sock.recv_multipart()
            cmd = msgpack.Unpacker(raw=False)
            cmd.feed(frame)
            cmd = next(cmd)
            self.received.append(cmd)
            if cmd["cmd"] == "PING":
                replies = [[_pack({"cmd": "PONG"})]]
            elif cmd["cmd"] == "HELLO":
                replies = [[_pack({"cmd": "WELCOME", "version": self.version,
                                   "org": "jc.rheine", "broker": "kim.scripted",
                                   "heartbeat_ms": 10000, "max_payload": 1 << 20,
                                   "window": 64})]] + self.after_welcome
            else:
                replies = self.answer(cmd, frame)
            for reply in replies:
                self.sock.send_multipart([rid] + reply)
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def scripted():
    """scripted(**options) -> (ScriptedBroker, a kim.Client connected to it)."""
    folder = tempfile.mkdtemp(prefix="kim-py-scripted-")
    made = []

    def make(**options):
        server = ScriptedBroker(folder, **options)
        server.start()
        write_cert(os.path.join(folder, "org"), "org")
        client = kim.Client(server.endpoint, server.cert, os.path.join(folder, "org.cert_secret"),
                            sign_secret=False, timeout=5)
        made.append((server, client))
        client.connect()
        return server, client
    yield make
    for server, client in made:
        client.close()
        server.stopping.set()
        server.join(10)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


BAD_DELIVER_BATCHES = {
    "fewer entries than count": [_pack({"cmd": "DELIVER_BATCH", "count": 2}, *_deliver(7))],
    "more entries than count": [_pack({"cmd": "DELIVER_BATCH", "count": 1}, *_deliver(7),
                                      *_deliver(8))],
    "count 0": [_pack({"cmd": "DELIVER_BATCH", "count": 0})],
    "count 65": [_pack({"cmd": "DELIVER_BATCH", "count": 65})],
    "count a string": [_pack({"cmd": "DELIVER_BATCH", "count": "1"}, *_deliver(7))],
    "payload a str": [_pack({"cmd": "DELIVER_BATCH", "count": 1}, _deliver(7)[0], "text")],
    "entry not a map": [_pack({"cmd": "DELIVER_BATCH", "count": 1}, [1, 2], b"")],
    "entry a RECEIPT": [_pack({"cmd": "DELIVER_BATCH", "count": 1},
                              {"cmd": "RECEIPT", "msg_id": "m-1", "seq": 7}, b"")],
    "seq a str": [_pack({"cmd": "DELIVER_BATCH", "count": 1},
                        dict(_deliver(7)[0], seq="7"), b"")],
    "seqs descending": [_pack({"cmd": "DELIVER_BATCH", "count": 2}, *_deliver(8),
                              *_deliver(7))],
    "cut short": [_pack({"cmd": "DELIVER_BATCH", "count": 1}, *_deliver(7))[:-3]],
    "two frames": [_pack({"cmd": "DELIVER_BATCH", "count": 1}, *_deliver(7)), b"x"],
    "a SEND_BATCH": [_pack({"cmd": "SEND_BATCH", "count": 1}, *_deliver(7))],
    "not MessagePack": [b"\xc1\x00"],
}


@pytest.mark.parametrize("fault", sorted(BAD_DELIVER_BATCHES))
def test_bad_deliver_batch_raises_and_the_client_goes_on(scripted, fault):
    good = [_pack({"cmd": "DELIVER_BATCH", "count": 2}, *_deliver(20, b""), *_deliver(21))]
    server, client = scripted(after_welcome=[BAD_DELIVER_BATCHES[fault], good])
    start = time.monotonic()
    with pytest.raises(kim.KimError) as e:
        client.recv(timeout=5)
    assert time.monotonic() - start < 4, "no hang"
    assert not isinstance(e.value, kim.Rejected) and "broker" in str(e.value)
    assert [client.recv(timeout=5).seq, client.recv(timeout=5).seq] == [20, 21]
    # after a frame it could not read, the client acknowledges with ACK (§8.19)
    client.ack(20, 21)
    client.ping()
    assert {"cmd": "ACK", "seqs": [20, 21]} in server.received


def test_deliver_batch_in_a_version_1_session_raises(scripted):
    _, client = scripted(version=1, after_welcome=[
        [_pack({"cmd": "DELIVER_BATCH", "count": 1}, *_deliver(7))]])
    with pytest.raises(kim.KimError) as e:
        client.recv(timeout=5)
    assert "version 1" in str(e.value)


def _split_send_batch(frame):
    values = msgpack.Unpacker(raw=False)
    values.feed(frame)
    head = next(values)
    entries = [(next(values), next(values)) for _ in range(head["count"])]
    return [entry["hdr"]["msg_id"] for entry, _ in entries]


def _receipts(msg_ids, first_seq=100):
    return [{"cmd": "RECEIPT", "msg_id": m, "seq": first_seq + i} for i, m in enumerate(msg_ids)]


def _items(n):
    return [({"type": "STATUS", "recipient": "soz.rheine", "referral_id": "R-1",
              "code": "in_progress", "msg_id": "m-%d" % i}, b"") for i in range(n)]


def test_receipt_batch_of_the_wrong_count_raises(scripted):
    def answer(cmd, frame):
        if cmd["cmd"] != "SEND_BATCH":
            return []
        receipts = _receipts(_split_send_batch(frame))[:-1]       # one answer short
        return [[_pack({"cmd": "RECEIPT_BATCH", "count": len(receipts)}, *receipts)]]
    _, client = scripted(answer=answer)
    with pytest.raises(kim.KimError) as e:
        client.send_many(_items(3), seal=False)
    assert "RECEIPT_BATCH of 2 answers" in str(e.value) and e.value.results == [None] * 3


def test_receipt_batch_holding_a_deliver_raises(scripted):
    def answer(cmd, frame):
        if cmd["cmd"] != "SEND_BATCH":
            return []
        return [[_pack({"cmd": "RECEIPT_BATCH", "count": 1}, _deliver(7)[0])]]
    _, client = scripted(answer=answer)
    with pytest.raises(kim.KimError) as e:
        client.send_many(_items(1), seal=False)
    assert "neither RECEIPT nor REJECT" in str(e.value)


def test_a_frame_refused_whole_is_matched_to_its_batch(scripted):
    """Two SEND_BATCH frames in flight; the second is refused whole (a REJECT
    without msg_id, §5.1) before the first is receipted: each message still
    gets its own answer."""
    held = []

    def answer(cmd, frame):
        if cmd["cmd"] != "SEND_BATCH":
            return []
        msg_ids = _split_send_batch(frame)
        if not held:
            held.append(msg_ids)
            return []
        receipts = _receipts(held[0])
        return [[_pack({"cmd": "REJECT", "code": 100, "reason": "MALFORMED", "text": "",
                        "path": "entries[1]"})],
                [_pack({"cmd": "RECEIPT_BATCH", "count": len(receipts)}, *receipts)]]
    _, client = scripted(answer=answer)
    results = client.send_many(_items(70), seal=False)
    assert [r["seq"] for r in results[:64]] == list(range(100, 164))
    assert all(isinstance(r, kim.Rejected) and r.reason == "MALFORMED" for r in results[64:])
    assert [r.msg_id for r in results[64:]] == ["m-%d" % i for i in range(64, 70)]
