"""The broker on the wire, checked against proto/PROTOCOL.md as an outside
implementer reads it: framing (§5, §5.1), the encoding of frame 0 and its
error paths (§6, §6.1), the counter-examples of §10.1 one by one, the
conversation and the connection's states (§7.1, §7.2, §11), HELLO/WELCOME
(§8.1, §8.2), PING/PONG and heartbeating (§8.8, §12), BYE (§8.12), RELOAD
(§8.13), rate limits and per-organisation limits (§7.3) and robustness
(§13.5).

Frames are written by hand on a raw CURVE DEALER (kim.Client's own socket,
opened with `_open_socket`, no HELLO) and the broker's frames are read raw,
so that non-canonical input can be sent and the broker's own encoding seen.
What other files check already (several sessions, REPLACED, a second HELLO,
expiry with a takeover, the costs of STATUS/DIRECTORY/SUBSCRIBE/QUERY,
subscriptions_per_org, queries_per_org) is not repeated here. Tests use the
shared broker unless they need other settings. Every wait is bounded."""
import os
import re
import time

import msgpack
import pytest
import zmq

import kim
from kim.client import HEADER_ORDER
from kim_frames import pump
from kim_headers import referral

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = os.path.join(HERE, "..", "..", "..", "proto", "PROTOCOL.md")

WAIT = 5.0              # s an answer may take at most
QUIET = 0.3             # s without a frame that count as "nothing came"
ANY = object()          # a path the spec does not fix

#   §10: the reason codes these tests meet
CODES = {"MALFORMED": 100, "BAD_TYPE": 101, "MISSING_FIELD": 102, "TOO_LONG": 103,
         "BAD_UTF8": 104, "BAD_ID": 105, "TOO_MANY": 106, "TOO_DEEP": 107,
         "UNKNOWN_CMD": 108, "UNKNOWN_TYPE": 109, "BAD_VALUE": 110, "UNKNOWN_FIELD": 111,
         "TOO_LARGE": 112, "BAD_FRAMES": 113, "DUPLICATE_FIELD": 114,
         "NO_SESSION": 200, "VERSION": 201, "UNKNOWN_ORG": 202, "FORBIDDEN": 205,
         "RATE_LIMITED": 207, "SESSION_EXPIRED": 209, "REVOKED": 210, "RELOAD_FAILED": 213,
         "QUOTA": 300}

#   §8: the fields after `cmd` in canonical order (rule 8), of what the broker sends here
ORDER = {"WELCOME": ("version", "org", "broker", "heartbeat_ms", "max_payload", "window"),
         "REJECT": ("code", "reason", "text", "msg_id", "path"),
         "RECEIPT": ("msg_id", "seq", "dup"),
         "DELIVER": ("seq", "hdr"),
         "PONG": (),
         "RELOADED": ("count", "text"),
         "STATUS_REPLY": ("status", "body")}
STATUS_ORDER = ("log_head", "mailbox", "in_flight", "sessions", "uptime_ms", "store_bytes")
OPTIONAL = {"REJECT": ("msg_id", "path"), "RECEIPT": ("dup",), "STATUS_REPLY": ("body",)}

PONG_BYTES = bytes.fromhex("81 a3 63 6d 64 a4 50 4f 4e 47")         # §8.8 example
HELLO_EXAMPLE = bytes.fromhex(                                        # §8.1 example
    "84 a3 63 6d 64 a5 48 45 4c 4c 4f a8 76 65 72 73 69 6f 6e 73 91 01 a5 61 67 65 6e 74"
    " ad 6b 69 6d 2d 61 67 65 6e 74 2f 30 2e 31 a6 77 69 6e 64 6f 77 40")
FRAME_MAX = 65536
CEILING = (16 << 20) + FRAME_MAX        # §5: what the transport cuts off above


#   --- MessagePack written by hand ---------------------------------------------

class Raw(bytes):
    """Bytes that are MessagePack already (written as they are)."""


def enc(value):
    if isinstance(value, Raw):
        return bytes(value)
    return msgpack.packb(value, use_bin_type=True)


def mapping(*pairs, head=None):
    """A map of these (key, value) pairs in this order, duplicates kept; `head`
    replaces the shortest map header."""
    n = len(pairs)
    if head is None:
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return Raw(head + b"".join(enc(k) + enc(v) for k, v in pairs))


def array(*items):
    n = len(items)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return Raw(head + b"".join(enc(v) for v in items))


def str_of(data):
    """A MessagePack str holding these bytes, valid UTF-8 or not."""
    n = len(data)
    head = bytes([0xa0 | n]) if n < 32 else b"\xd9" + bytes([n])
    return Raw(head + data)


def ping(*pairs):
    return mapping(("cmd", "PING"), *pairs)


def hello(versions=(1, 2), window=0, agent="kim-test/wire"):
    return mapping(("cmd", "HELLO"), ("versions", list(versions)), ("agent", agent),
                   ("window", window))


def canonical(cmd):
    """`cmd` encoded as §6 rule 8 says the broker encodes it."""
    name = cmd["cmd"]
    fields = dict([("cmd", name)] + [(k, cmd[k]) for k in ORDER[name] if k in cmd])
    if name == "STATUS_REPLY":
        fields["status"] = {k: cmd["status"][k] for k in STATUS_ORDER if k in cmd["status"]}
    return enc(fields)


#   --- a raw session ------------------------------------------------------------

class Reply(dict):
    """A command from the broker; `frames` the raw ZeroMQ frames it came in."""
    frames = ()


def decode(frames):
    """Frame 0 as one map and nothing after it (a batch frame: its head, the
    other values under "entries")."""
    values = msgpack.Unpacker(raw=False, strict_map_key=False)
    values.feed(frames[0])
    reply = Reply(values.unpack())
    rest = list(values)
    if reply.get("cmd") in ("RECEIPT_BATCH", "DELIVER_BATCH"):
        reply["entries"] = rest
    else:
        assert rest == [], "data after the %s map: %r" % (reply.get("cmd"), rest)
    reply.frames = frames
    return reply


class Wire:
    """A CURVE DEALER of `org`, connected (kim.Client._open_socket), written and
    read frame by frame. `seen` collects what `pump` reads (kim_frames)."""

    def __init__(self, b, org):
        self.client = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(org), timeout=WAIT)
        self.client._open_socket()
        self.seen = []

    @property
    def sock(self):
        return self.client._sock

    def take(self, cmd, payload):               # for kim_frames.pump
        self.seen.append(cmd)

    def send(self, *frames):
        """Frames as given: a dict is packed, bytes go as they are."""
        self.sock.send_multipart([enc(f) if isinstance(f, dict) else bytes(f) for f in frames])

    def next(self, timeout=WAIT):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return decode(self.sock.recv_multipart())

    def ask(self, *frames, timeout=WAIT):
        """Sends; returns the next command from the broker."""
        self.send(*frames)
        reply = self.next(timeout)
        assert reply is not None, "no answer within %.1f s" % timeout
        return reply

    def quiet(self, seconds=QUIET):
        """What comes within `seconds` (each frame restarts the wait)."""
        got = []
        while True:
            reply = self.next(seconds)
            if reply is None:
                return got
            got.append(reply)

    def hello(self, window=0, versions=(1, 2)):
        welcome = self.ask(hello(versions, window))
        assert welcome["cmd"] == "WELCOME", welcome
        return welcome

    def alive(self):
        """§8.8: the session answers PING with PONG (deliveries may come first, §7.1)."""
        reply = self.ask(ping())
        while reply["cmd"] in ("DELIVER", "DELIVER_BATCH"):
            reply = self.next()
            assert reply is not None, "no PONG"
        assert reply["cmd"] == "PONG", reply

    def no_session(self):
        rejected(self.ask(ping()), "NO_SESSION")

    def close(self):
        """BYE if it can go at once (a DEALER without a connection would block), then close."""
        try:
            self.sock.send(enc({"cmd": "BYE"}), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.client._sock.close(linger=100)
        self.client._sock = None
        self.client._ctx.term()
        self.client._ctx = None


@pytest.fixture
def wire(broker):
    """wire(org, b=broker, hello=True, window=0, versions=(1, 2)) -> a Wire,
    after HELLO unless hello=False; closed after the test."""
    made = []

    def make(org, b=None, hello=True, window=0, versions=(1, 2)):
        w = Wire(b or broker, org)
        made.append(w)
        if hello:
            w.hello(window, versions)
        return w
    yield make
    for w in made:
        w.close()


def rejected(reply, name, path="", msg_id=None):
    """§8.5: a REJECT with the code and name of §10, the path of §6.1 ("" for
    the frame as a whole, ANY when the spec fixes none) and msg_id (7.1)."""
    assert reply is not None, "no answer"
    assert reply["cmd"] == "REJECT", reply
    assert (reply["code"], reply["reason"]) == (CODES[name], name), reply
    assert isinstance(reply["text"], str) and len(reply["text"].encode()) <= 256, reply
    if path is not ANY:
        assert reply.get("path", "") == path, reply
    assert reply.get("msg_id") == msg_id, reply
    return reply


#   --- §10.1 counter-examples -----------------------------------------------------

def _counter_examples():
    with open(SPEC, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### 10.1 Counter-examples"):text.index("## 11. State machine")]
    found = re.findall(r"Counter-example: (.*?) — fails with `(\w+)` "
                       r"(?:at `([^`]*)`|for the frame as a whole)\.\n"
                       r"```hex-invalid (\w+)\n(.*?)```", section, re.S)
    cases = []
    for title, name, path, block_name, hexdump in found:
        assert name == block_name, title
        cases.append(pytest.param(bytes.fromhex(" ".join(hexdump.split())), name, path,
                                  id=re.sub(r"\W+", "-", title).strip("-")))
    assert len(cases) == section.count("Counter-example:") == 20
    return cases


@pytest.mark.parametrize("frame, name, path", _counter_examples())
def test_counter_example(wire, frame, name, path):
    """§10.1: each SHALL fail with its code; §6.1 the path; §7.2 the session stays."""
    try:                                        # what the frame is, bytes as they are
        cmd = msgpack.unpackb(frame, raw=True) if frame[:1] != b"\xdf" else {}
    except ValueError:
        cmd = {}
    hdr = cmd.get(b"hdr", {}) if cmd.get(b"cmd") == b"SEND" else {}
    msg_id = hdr[b"msg_id"].decode() if b"msg_id" in hdr else None     # §7.1
    if cmd.get(b"cmd") == b"HELLO":
        # A HELLO: on a connection without a session, where nothing else is in play
        w = wire("soz.rheine", hello=False)
        rejected(w.ask(frame), name, path, msg_id)
        w.no_session()
        w.hello()
        w.alive()
        return
    w = wire("soz.rheine")
    rejected(w.ask(frame), name, path, msg_id)
    w.alive()                                   # §7.2: a command that fails to decode


#   --- §6 rules 1-5, §6.1 paths ----------------------------------------------------

REFUSED = [
    # rule 1: exactly one map, nothing after it; input that ends early
    ("empty frame", b"", "MALFORMED", ""),
    ("an array", enc(["PING"]), "MALFORMED", ""),
    ("a str", enc("PING"), "MALFORMED", ""),
    ("nil", b"\xc0", "MALFORMED", ""),
    ("byte c1", b"\xc1", "MALFORMED", ""),
    ("two maps", ping() + ping(), "MALFORMED", ""),
    ("x- str claiming more than is left", ping(("x-a", Raw(b"\xd9\x40abc"))), "MALFORMED",
     "x-a"),
    # rule 2: keys
    ("no cmd", mapping(("x-a", 1)), "MISSING_FIELD", "cmd"),
    ("cmd an integer", mapping(("cmd", 7)), "BAD_TYPE", "cmd"),
    ("cmd a bin", mapping(("cmd", b"PING")), "BAD_TYPE", "cmd"),
    ("cmd in lower case", mapping(("cmd", "ping")), "UNKNOWN_CMD", "cmd"),
    ("a key that is an integer", mapping(("cmd", "PING"), (1, 2)), "BAD_TYPE", ""),
    ("X- is not x-", ping(("X-a", 1)), "UNKNOWN_FIELD", "X-a"),
    ("an x- key twice", ping(("x-a", 1), ("x-a", 1)), "DUPLICATE_FIELD", "x-a"),
    # rule 3: limits
    ("65 entries in the command map", ping(*[("x-%02d" % i, i) for i in range(64)]),
     "TOO_MANY", ""),
    ("1025 entries in an x- array", ping(("x-a", [0] * 1025)), "TOO_MANY", "x-a"),
    ("65 entries in an x- map", ping(("x-a", {"k%02d" % i: i for i in range(65)})),
     "TOO_MANY", "x-a"),
    ("ACK of no seqs", mapping(("cmd", "ACK"), ("seqs", [])), "BAD_VALUE", "seqs"),
    ("ACK of 1025 seqs", mapping(("cmd", "ACK"), ("seqs", list(range(1, 1026)))),
     "TOO_MANY", "seqs"),
    # rule 4: every str, wherever it is, before anything else is checked (§6.1)
    ("cmd not UTF-8", mapping(("cmd", str_of(b"PIN\xff"))), "BAD_UTF8", "cmd"),
    ("an unknown key not UTF-8", ping((str_of(b"q\xff"), 1)), "BAD_UTF8", "q?"),
    ("an x- value with a surrogate", ping(("x-a", str_of(b"\xed\xa0\x80"))), "BAD_UTF8",
     "x-a"),
    ("an x- value above U+10FFFF", ping(("x-a", str_of(b"\xf4\x90\x80\x80"))), "BAD_UTF8",
     "x-a"),
    ("an x- value with NUL", ping(("x-a", str_of(b"a\x00"))), "BAD_UTF8", "x-a"),
    ("bad UTF-8 before an unknown cmd",
     mapping(("cmd", "FETCH"), ("x-a", str_of(b"\xc0\xaf"))), "BAD_UTF8", "x-a"),
    ("bad UTF-8 before an unknown field",
     ping(("seq", 1), ("x-a", str_of(b"\xff"))), "BAD_UTF8", "x-a"),
    ("too deep before an unknown cmd",
     mapping(("cmd", "FETCH"), ("x-a", [[[[1]]]])), "TOO_DEEP", "x-a[0][0][0]"),
    # §6.1: an unknown key's bytes outside !-~ are shown as ?
    ("unknown key with a space and an umlaut", ping(("q \u00e9", 1)), "UNKNOWN_FIELD",
     "q???"),
    # rule 5: unsigned integers of the field's range, nothing else
    ("ACK seq negative", mapping(("cmd", "ACK"), ("seqs", [-1])), "BAD_VALUE", "seqs[0]"),
    ("ACK seq a float", mapping(("cmd", "ACK"), ("seqs", [1.0])), "BAD_TYPE", "seqs[0]"),
    ("ACK seq nil", mapping(("cmd", "ACK"), ("seqs", [None])), "BAD_TYPE", "seqs[0]"),
    ("ACK seq true", mapping(("cmd", "ACK"), ("seqs", [True])), "BAD_TYPE", "seqs[0]"),
    ("ACK seqs a map", mapping(("cmd", "ACK"), ("seqs", {"a": 1})), "BAD_TYPE", "seqs"),
]


@pytest.mark.parametrize("frame, name, path", [pytest.param(f, n, p, id=i)
                                               for i, f, n, p in REFUSED])
def test_frame_0_rule_refusals(wire, frame, name, path):
    """§6 rules 1-5 with the code §6 gives and the path of §6.1; §7.2 the session stays."""
    w = wire("soz.rheine")
    rejected(w.ask(frame), name, path)
    w.alive()


HELLO_REFUSED = [
    ("window a float", hello(window=64.0), "BAD_TYPE", "window"),
    ("window nil", hello(window=None), "BAD_TYPE", "window"),
    ("window true", hello(window=True), "BAD_TYPE", "window"),
    ("window 4097", hello(window=4097), "BAD_VALUE", "window"),
    ("versions empty", hello(versions=()), "BAD_VALUE", "versions"),
    ("versions a uint", mapping(("cmd", "HELLO"), ("versions", 1), ("agent", "a"),
                                ("window", 0)), "BAD_TYPE", "versions"),
    ("version 0", hello(versions=(0,)), "BAD_VALUE", "versions[0]"),
    ("versions descending", hello(versions=(2, 1)), "BAD_VALUE", "versions[1]"),
    ("versions twice", hello(versions=(1, 1)), "BAD_VALUE", "versions[1]"),
    ("17 versions", hello(versions=range(1, 18)), "TOO_MANY", "versions"),
    ("agent 65 bytes of umlauts", hello(agent="\u00e4" * 32 + "a"), "TOO_LONG", "agent"),
    ("agent a bin", hello(agent=b"kim"), "BAD_TYPE", "agent"),
    ("an unknown field", mapping(("cmd", "HELLO"), ("versions", [1]), ("agent", "a"),
                                 ("window", 0), ("org", "jc.rheine")), "UNKNOWN_FIELD", "org"),
    # §6.1: fields in the order they appear on the wire, then the required ones
    ("window first on the wire", mapping(("cmd", "HELLO"), ("window", "64"),
                                         ("agent", "a" * 65), ("versions", [1])),
     "BAD_TYPE", "window"),
    ("agent first on the wire", mapping(("cmd", "HELLO"), ("agent", "a" * 65),
                                        ("window", "64"), ("versions", [1])),
     "TOO_LONG", "agent"),
    ("a bad field before a missing one", mapping(("cmd", "HELLO"), ("versions", [1]),
                                                 ("window", -1)), "BAD_VALUE", "window"),
]


@pytest.mark.parametrize("frame, name, path", [pytest.param(f, n, p, id=i)
                                               for i, f, n, p in HELLO_REFUSED])
def test_hello_field_refusals(wire, frame, name, path):
    """§8.1 limits, §6 rules 3-5, §6.1 order of checks; the connection then takes a HELLO."""
    w = wire("soz.rheine", hello=False)
    rejected(w.ask(frame), name, path)
    w.no_session()
    w.hello()


ACCEPTED = [
    # rule 8: receivers SHALL NOT require canonical input (rules 2 and 5)
    ("window as uint64", mapping(("cmd", "HELLO"), ("versions", [1]), ("agent", "a"),
                                 ("window", Raw(b"\xcf" + (7).to_bytes(8, "big")))), 7),
    ("window as int8", mapping(("cmd", "HELLO"), ("versions", [1]), ("agent", "a"),
                               ("window", Raw(b"\xd0\x07"))), 7),
    ("version as int64", mapping(("cmd", "HELLO"),
                                 ("versions", array(Raw(b"\xd3" + (1).to_bytes(8, "big")))),
                                 ("agent", "a"), ("window", 7)), 7),
    ("cmd last", mapping(("window", 7), ("agent", "a"), ("versions", [1]), ("cmd", "HELLO")),
     7),
    ("a map16 header", mapping(("cmd", "HELLO"), ("versions", [1]), ("agent", "a"),
                               ("window", 7), head=b"\xde\x00\x04"), 7),
    ("agent as str8", mapping(("cmd", "HELLO"), ("versions", [1]),
                              ("agent", Raw(b"\xd9\x03kim")), ("window", 7)), 7),
    # rule 2: x- keys are ignored (rule 3 still holds: depth 4 is allowed)
    ("an x- key", mapping(("cmd", "HELLO"), ("versions", [1]), ("agent", "a"),
                          ("x-note", {"k": [[1]]}), ("window", 7)), 7),
    # rule 4: 4-byte UTF-8 is valid; lengths count bytes (64 is the limit)
    ("agent with 4-byte UTF-8", hello(versions=(1,), window=7, agent="kim \U0001f600"), 7),
    ("agent of 64 bytes", hello(versions=(1,), window=7, agent="\u00e4" * 32), 7),
]


@pytest.mark.parametrize("frame, window", [pytest.param(f, w, id=i) for i, f, w in ACCEPTED])
def test_hello_non_canonical_input_is_accepted(wire, frame, window):
    """§6 rules 2, 4, 5, 8: these HELLOs are valid and get WELCOME."""
    w = wire("soz.rheine", hello=False)
    welcome = w.ask(frame)
    assert welcome["cmd"] == "WELCOME" and welcome["version"] == 1, welcome
    assert 1 <= welcome["window"] <= window
    w.alive()


def test_depth_4_is_allowed_and_x_keys_are_ignored(wire):
    """§6 rule 3 (depth at most 4) and rule 2 (x- keys ignored) on PING and STATUS."""
    w = wire("soz.rheine")
    assert w.ask(ping(("x-a", [[[1]]]))).frames[0] == PONG_BYTES
    assert w.ask(ping(("x-a", {"b": {"c": 1}}), ("x-z", "zz"))).frames[0] == PONG_BYTES
    reply = w.ask(mapping(("x-first", "yes"), ("cmd", "STATUS")))
    assert reply["cmd"] == "STATUS_REPLY", reply


#   --- §5 framing and sizes -----------------------------------------------------------

def _ping_of_size(size):
    """A PING with an x- bin that makes frame 0 exactly `size` bytes."""
    pad = size - len(ping(("x-pad", Raw(b"")))) - 5       # a bin32: 5 header bytes
    frame = ping(("x-pad", Raw(b"\xc6" + pad.to_bytes(4, "big") + b"\0" * pad)))
    assert len(frame) == size
    return frame


def test_frame_0_above_65536_bytes_is_too_large_and_the_connection_stays(wire):
    """§5: frame 0 up to 65536 bytes; above it TOO_LARGE at once, the connection stays."""
    w = wire("soz.rheine")
    assert w.ask(_ping_of_size(FRAME_MAX))["cmd"] == "PONG"
    rejected(w.ask(_ping_of_size(FRAME_MAX + 1)), "TOO_LARGE")
    rejected(w.ask(_ping_of_size(1 << 20)), "TOO_LARGE")
    w.alive()


def test_a_payload_above_max_payload_is_too_large(wire):
    """§5, §8.3 step 1: TOO_LARGE carrying the SEND's msg_id, path payload (§8.5)."""
    w = wire("soz.rheine")
    max_payload = w.ask(hello())["max_payload"]
    hdr = referral("R-WS-BIG", "C-WS-BIG", recipient="aa.rheine", msg_id="m-ws-big", schema=1)
    rejected(w.ask({"cmd": "SEND", "hdr": hdr}, b"\0" * (max_payload + 1)), "TOO_LARGE",
             "payload", "m-ws-big")
    w.alive()


@pytest.mark.parametrize("frames, msg_id", [
    pytest.param([ping(), b"x"], None, id="PING with a payload"),
    pytest.param([mapping(("cmd", "STATUS")), b""], None, id="STATUS with an empty frame 1"),
    pytest.param([mapping(("cmd", "ACK"), ("seqs", [1])), b"x"], None, id="ACK with a payload"),
    pytest.param([mapping(("cmd", "BYE")), b"x"], None, id="BYE with a payload"),
    pytest.param([enc({"cmd": "SEND", "hdr": referral("R-WS-3F", "C-WS-3F", msg_id="m-ws-3f",
                                                      recipient="aa.rheine")}), b"x", b"y"],
                 "m-ws-3f", id="SEND in three frames"),
])
def test_wrong_number_of_frames_is_bad_frames(wire, frames, msg_id):
    """§5: only SEND and DELIVER have frame 1, others BAD_FRAMES (a SEND's with msg_id, §8.3)."""
    w = wire("soz.rheine")
    rejected(w.ask(*frames), "BAD_FRAMES", "", msg_id)
    w.alive()                                   # also after the BYE: it was refused


def test_hello_with_a_payload_is_bad_frames(wire):
    """§5: HELLO has exactly one frame."""
    w = wire("soz.rheine", hello=False)
    rejected(w.ask(hello(), b"x"), "BAD_FRAMES", "")
    w.no_session()
    w.hello()


def test_a_frame_0_at_the_protocol_ceiling_is_too_large_and_the_connection_stays(wire):
    """§5: only a frame above 16 MiB + 65536 bytes is cut off; one at it is TOO_LARGE."""
    w = wire("soz.rheine")
    rejected(w.ask(b"\x80" + b"\0" * (CEILING - 1)), "TOO_LARGE")
    w.alive()


def test_a_frame_above_the_ceiling_drops_the_connection_without_an_answer(wire, broker):
    """§5: above 16 MiB + 65536 bytes the transport drops the connection, no answer;
    the broker serves the others (§13.5). The DEALER dials again: no session there."""
    w = wire("soz.rheine")
    other = wire("aa.rheine")
    w.send(b"\x80" + b"\0" * CEILING)
    assert w.quiet(0.5) == []
    other.alive()
    deadline = time.monotonic() + WAIT
    answer = None
    while answer is None and time.monotonic() < deadline:
        w.sock.send(enc({"cmd": "PING"}), zmq.NOBLOCK)      # lost while no connection is up
        answer = w.next(0.3)
    rejected(answer, "NO_SESSION")
    assert broker.process.poll() is None


#   --- §5.1 batch frames -----------------------------------------------------------------

def _send_entry(tag):
    return enc({"cmd": "SEND", "hdr": referral("R-WS-%s" % tag, "C-WS-B", msg_id="m-ws-" + tag,
                                               recipient="aa.rheine")})


@pytest.mark.parametrize("frames, name, path", [
    # the §8.16 examples that are invalid
    pytest.param([bytes.fromhex("82 a3 63 6d 64 aa 53 45 4e 44 5f 42 41 54 43 48 a5 63 6f 75"
                                " 6e 74 02 81 a3 63 6d 64 a4 50 49 4e 47 c4 00")],
                 "MALFORMED", "entries[1]", id="two announced, one held"),
    pytest.param([bytes.fromhex("82 a3 63 6d 64 aa 53 45 4e 44 5f 42 41 54 43 48 a5 63 6f 75"
                                " 6e 74 00")], "BAD_VALUE", "count", id="count 0"),
    pytest.param([enc({"cmd": "SEND_BATCH", "count": 65})], "BAD_VALUE", "count",
                 id="count 65"),
    pytest.param([enc({"cmd": "SEND_BATCH", "count": 1}) + _send_entry("B2") + enc(b"")
                  + _send_entry("B3") + enc(b"")], "MALFORMED", "entries[1]",
                 id="more entries than count"),
    pytest.param([enc({"cmd": "SEND_BATCH", "count": 1}) + _send_entry("B4") + enc(b""),
                   b"x"], "BAD_FRAMES", "", id="two ZeroMQ frames"),
])
def test_a_batch_frame_that_does_not_split_is_refused_whole(wire, frames, name, path):
    """§5.1: one REJECT with the fault's code, path entries[i], without msg_id; nothing stored."""
    w = wire("soz.rheine", versions=(2,))
    rejected(w.ask(*frames), name, path)
    assert w.quiet() == []                      # exactly one answer
    w.alive()


@pytest.mark.parametrize("frame", [
    pytest.param(enc({"cmd": "SEND_BATCH", "count": 1}) + enc([1, 2]) + enc(b""),
                 id="an entry that is not a map"),
    pytest.param(enc({"cmd": "SEND_BATCH", "count": 1}) + _send_entry("B5") + enc("text"),
                 id="a payload that is not a bin"),
])
def test_a_batch_entry_of_the_wrong_type_is_refused_whole(wire, frame):
    """§5.1: refused as a whole, one REJECT, path entries[0], no msg_id. The spec names no
    code for these two faults ("the code of the fault"): MALFORMED (rule 1, an entry read as
    a frame 0) or BAD_TYPE (rule 4, a str where a bin belongs) are both readings."""
    w = wire("soz.rheine", versions=(2,))
    reply = w.ask(frame)
    assert reply["cmd"] == "REJECT" and reply["reason"] in ("MALFORMED", "BAD_TYPE"), reply
    rejected(reply, reply["reason"], "entries[0]")
    assert w.quiet() == []
    w.alive()


def test_a_batch_entry_that_is_not_a_send_is_bad_value_at_cmd(wire):
    """§8.16: an entry that is not a SEND is refused, BAD_VALUE at cmd, in the RECEIPT_BATCH."""
    w = wire("soz.rheine", versions=(2,))
    answer = w.ask(enc({"cmd": "SEND_BATCH", "count": 1}) + ping() + enc(b""))
    assert answer["cmd"] == "RECEIPT_BATCH" and answer["count"] == 1, answer
    (entry,) = answer["entries"]
    rejected(Reply(entry), "BAD_VALUE", "cmd")
    w.alive()


def test_send_batch_in_a_version_1_session_is_unknown_cmd(wire):
    """§5.1, §11: in a version 1 session the commands of version 2 are UNKNOWN_CMD."""
    w = wire("soz.rheine", versions=(1,))
    frame = enc({"cmd": "SEND_BATCH", "count": 1}) + _send_entry("V1") + enc(b"")
    rejected(w.ask(frame), "UNKNOWN_CMD", "cmd")
    w.alive()


#   --- §7.1, §7.2, §8.12, §11: the conversation and the connection's states -------------

def test_commands_before_hello_get_no_session_and_are_otherwise_ignored(wire):
    """§7.2, §11: any command but HELLO before a session: REJECT NO_SESSION, nothing else."""
    w = wire("soz.rheine", hello=False)
    send = {"cmd": "SEND", "hdr": referral("R-WS-NS", "C-WS-NS", recipient="aa.rheine",
                                           msg_id="m-ws-ns")}
    for cmd in (send, {"cmd": "ACK", "seqs": [1]}, {"cmd": "RELOAD"}, {"cmd": "BYE"},
                {"cmd": "REFERRAL_QUERY", "query_id": "q-ws-ns"}, {"cmd": "PING"}):
        reply = w.ask(cmd)
        assert (reply["cmd"], reply.get("code")) == ("REJECT", CODES["NO_SESSION"]), (cmd, reply)
        assert reply["reason"] == "NO_SESSION"
    assert w.quiet() == []
    w.hello(window=0)
    receipt = w.ask(send)                       # the SEND before HELLO was not stored
    assert receipt["cmd"] == "RECEIPT" and not receipt.get("dup"), receipt


def test_before_hello_a_frame_that_fails_to_decode_gets_its_decode_error(wire):
    """The spec is silent on which answer comes first before HELLO (§7.2 NO_SESSION for
    "a command other than HELLO", §6.1 the order of checks); pinned: the broker decodes
    first, a frame that fails gets its decode error, one that decodes NO_SESSION."""
    w = wire("soz.rheine", hello=False)
    rejected(w.ask(b"\xc1"), "MALFORMED")
    rejected(w.ask(mapping(("cmd", "FETCH"))), "UNKNOWN_CMD", "cmd")
    rejected(w.ask(ping(("seq", 1))), "UNKNOWN_FIELD", "seq")
    w.no_session()


def test_a_hello_that_fails_to_decode_leaves_the_session_as_it_was(wire):
    """§7.2 says a command that fails to decode leaves the session, §8.1 that a HELLO always
    ends the current one first; the spec does not say which holds for a HELLO that fails to
    decode. Pinned: the REJECT of §6.1, and the session stays."""
    w = wire("soz.rheine")
    rejected(w.ask(hello(window=-1)), "BAD_VALUE", "window")
    w.alive()


def test_bye_gets_no_answer_and_ends_the_session(wire):
    """§8.12: BYE has no answer; §11: afterwards NO SESSION (a BYE too), a HELLO opens one."""
    w = wire("soz.rheine")
    w.send({"cmd": "BYE"})
    assert w.quiet() == []
    w.no_session()
    rejected(w.ask({"cmd": "BYE"}), "NO_SESSION")
    rejected(w.ask({"cmd": "STATUS"}), "NO_SESSION")
    w.hello()
    w.alive()


@pytest.mark.parametrize("versions, chosen", [
    ((1,), 1), ((2,), 2), ((1, 2), 2), ((1, 2, 3), 2), ((2, 7), 2), ((1, 3), 1),
    ((3,), None), ((3, 4, 5), None)])
def test_version_negotiation(wire, versions, chosen):
    """§8.1: WELCOME with the highest version both speak, or REJECT VERSION; §11 then."""
    w = wire("jc.rheine", hello=False)
    answer = w.ask(hello(versions))
    if chosen is None:
        rejected(answer, "VERSION", "versions")
        w.no_session()
    else:
        assert answer["cmd"] == "WELCOME" and answer["version"] == chosen, answer
        w.alive()


def test_welcome_fields(wire, broker):
    """§8.2: the six fields, their limits, org the authenticated one, window ≤ the HELLO's."""
    for org, asked in (("aa.rheine", 5), ("aa.rheine", 4096), ("dsb.steinfurt", 8)):
        w = wire(org, hello=False)
        welcome = w.ask(hello(window=asked))
        assert welcome["cmd"] == "WELCOME", welcome
        assert set(welcome) == {"cmd"} | set(ORDER["WELCOME"])
        assert all(type(welcome[k]) is int for k in ("version", "heartbeat_ms", "max_payload",
                                                     "window"))
        assert welcome["version"] == 2
        assert welcome["org"] == org and welcome["broker"] == "kim.test"
        assert welcome["heartbeat_ms"] == 5000          # kim.cfg(5) default
        assert welcome["max_payload"] == 1048576        # kim.cfg(5) default, ≤ 16 MiB
        assert 0 <= welcome["window"] <= min(asked, 4096)
        if org == "dsb.steinfurt":
            assert welcome["window"] == 0               # §7.2: auditors get 0
        else:
            assert welcome["window"] >= 1


def test_the_brokers_frames_are_canonical(wire):
    """§6 rule 8: the broker writes cmd first, the table's order, shortest forms, absent
    optional fields left out; the PONG is the bytes of §8.8."""
    w = wire("soz.rheine", hello=False)
    frames = [w.ask(ping()), w.ask(hello(versions=(1,))), w.ask(hello(versions=(1, 2)))]
    frames += [w.ask(ping()), w.ask(mapping(("cmd", "FETCH"))), w.ask(b"\xc1"),
               w.ask(mapping(("cmd", "SUBSCRIBE"), ("sub_id", "s 1"))),
               w.ask({"cmd": "SEND", "hdr": {"type": "REFERRAL", "msg_id": "m-ws-canon",
                                             "priority": "urgent"}}),
               w.ask(mapping(("cmd", "STATUS")))]
    assert frames[3].frames[0] == PONG_BYTES
    for reply in frames:
        assert len(reply.frames) == 1
        name = reply["cmd"]
        assert set(reply) <= {"cmd"} | set(ORDER[name]), reply
        for key in OPTIONAL.get(name, ()):
            assert reply.get(key, True) not in ("", 0, False, [], None), reply   # rule 7
        assert reply.frames[0] == canonical(reply), reply


def test_a_header_sent_non_canonically_is_stored_and_forwarded_canonically(wire):
    """§6 rule 8: receivers accept non-canonical input; the broker stores and forwards
    headers canonically. Rule 2: x- keys are not stored and not forwarded."""
    receiver = wire("aa.rheine", versions=(1,), window=64)
    for reply in receiver.quiet():              # what others left in aa's mailbox
        if reply["cmd"] == "DELIVER":
            receiver.send({"cmd": "ACK", "seqs": [reply["seq"]]})
    sender = wire("soz.rheine", versions=(1,))
    hdr = referral("R-WS-CANON", "C-WS-CANON", recipient="aa.rheine", msg_id="m-ws-canon-1",
                   categories=["contact"])
    pairs = [(k, v) for k, v in reversed(list(hdr.items()))]      # the reverse of rule 8
    pairs.append(("schema", Raw(b"\xcf" + (1).to_bytes(8, "big"))))
    pairs.append(("x-trace", "not for the log"))
    frame = mapping(("hdr", mapping(*pairs, head=b"\xde" + len(pairs).to_bytes(2, "big"))),
                    ("cmd", "SEND"))
    receipt = sender.ask(frame, b"opaque")
    assert receipt["cmd"] == "RECEIPT" and receipt["msg_id"] == "m-ws-canon-1", receipt
    assert receipt.frames[0] == canonical(receipt)
    deadline = time.monotonic() + WAIT
    deliver = None
    while deliver is None and time.monotonic() < deadline:
        reply = receiver.next(deadline - time.monotonic())
        if reply is not None and reply["cmd"] == "DELIVER":
            if reply["seq"] == receipt["seq"]:
                deliver = reply
            else:
                receiver.send({"cmd": "ACK", "seqs": [reply["seq"]]})
    assert deliver is not None, "no DELIVER of seq %d" % receipt["seq"]
    assert deliver.frames[1] == b"opaque"
    got = deliver["hdr"]
    assert "x-trace" not in got
    assert got["sender"] == "soz.rheine" and got["schema"] == 1
    assert list(got) == [k for k in HEADER_ORDER if k in got]             # §9 order
    assert list(got["legal_basis"]) == ["kind", "citation"]
    assert deliver.frames[0] == canonical(deliver)
    receiver.send({"cmd": "ACK", "seqs": [deliver["seq"]]})
    receiver.alive()


#   --- §8.8, §12 PING and heartbeating -----------------------------------------------------

def test_a_silent_session_expires_after_3_heartbeats_an_active_one_lives(brokers, wire):
    """§12: a session silent for 3 x heartbeat_ms expires (MAY be told SESSION_EXPIRED, §11),
    later commands get NO_SESSION, HELLO starts anew; any command keeps a session alive."""
    heartbeat_ms = 300
    b = brokers(broker={"heartbeat_ms": heartbeat_ms})
    busy = wire("aa.rheine", b)
    silent = wire("aa.rheine", b, hello=False)
    spoke = time.monotonic()                    # silent's last command: its HELLO
    assert silent.ask(hello())["heartbeat_ms"] == heartbeat_ms

    def sessions():                             # STATUS, not PING: "some command"
        reply = busy.ask({"cmd": "STATUS"})
        assert reply["cmd"] == "STATUS_REPLY", reply
        return reply["status"]["sessions"]
    assert sessions() == 2
    deadline = time.monotonic() + WAIT
    while sessions() != 1:
        assert time.monotonic() < deadline, "the silent session never expired"
        pump([silent], heartbeat_ms / 3000.0)   # reads, sends nothing
    silence = time.monotonic() - spoke
    assert silence >= 3 * heartbeat_ms / 1000.0, "expired after %.2f s" % silence
    for reply in silent.seen + silent.quiet(0.1):       # §11: MAY send SESSION_EXPIRED
        rejected(Reply(reply), "SESSION_EXPIRED")
    silent.no_session()
    assert silent.ask(hello())["cmd"] == "WELCOME"
    silent.alive()
    busy.alive()                                # alive after more than 3 x heartbeat_ms


def test_a_session_is_not_expired_before_3_heartbeats(brokers, wire):
    """§12: silence up to 2 x heartbeat_ms does not end a session."""
    heartbeat_ms = 400
    b = brokers(broker={"heartbeat_ms": heartbeat_ms})
    w = wire("aa.rheine", b)
    for _ in range(2):
        assert w.quiet(2 * heartbeat_ms / 1000.0) == []
        w.alive()


#   --- §7.3 rate limits and per-organisation limits -----------------------------------------

def _answers(w, count, timeout=WAIT):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count:
        reply = w.next(max(deadline - time.monotonic(), 0))
        assert reply is not None, "%d of %d answers came" % (len(got), count)
        got.append(reply)
    return got


def _until_not_limited(w, frame, timeout=WAIT):
    """Sends `frame` every 0.1 s while it is RATE_LIMITED; returns the first other answer."""
    deadline = time.monotonic() + timeout
    while True:
        reply = w.ask(frame)
        if reply.get("reason") != "RATE_LIMITED":
            return reply
        assert time.monotonic() < deadline, "still RATE_LIMITED"
        time.sleep(0.1)                         # a poll: the bucket refills meanwhile


def test_frames_before_hello_count_and_a_limited_hello_starts_nothing(brokers, wire):
    """§7.3: every frame counts, also before HELLO; a command the bucket cannot pay for is
    RATE_LIMITED (no msg_id for PING, 7.1) with no other effect; the bucket is per org."""
    b = brokers(broker={"rate_limit": 5, "rate_burst": 20})
    w = wire("soz.rheine", b, hello=False)
    for _ in range(26):
        w.send(ping())
    answers = _answers(w, 26)
    reasons = [a["reason"] for a in answers]
    served = reasons.count("NO_SESSION")
    assert 20 <= served <= 21 and reasons == ["NO_SESSION"] * served + \
        ["RATE_LIMITED"] * (26 - served), reasons
    for a in answers[served:]:
        rejected(a, "RATE_LIMITED")
    rejected(w.ask(hello()), "RATE_LIMITED")    # HELLO costs 5: not there yet
    other = wire("jc.rheine", b, hello=False)   # another organisation's bucket
    other.no_session()
    other.hello()
    rejected(_until_not_limited(w, ping()), "NO_SESSION")       # the HELLO started nothing
    assert _until_not_limited(w, hello())["cmd"] == "WELCOME"


def test_undecodable_frames_count_and_a_limited_send_carries_its_msg_id(brokers, wire):
    """§7.3: a frame that does not decode costs 1; RATE_LIMITED carries the SEND's msg_id
    (7.1, 8.3); a frame the bucket cannot pay for is RATE_LIMITED whatever it holds."""
    b = brokers(broker={"rate_limit": 1, "rate_burst": 30})
    w = wire("soz.rheine", b)                   # HELLO: 5 of 30
    for _ in range(10):
        w.send(b"\xc1")
    for reply in _answers(w, 10):
        rejected(reply, "MALFORMED")
    bad = [{"cmd": "SEND", "hdr": {"type": "WITHDRAW", "msg_id": "m-ws-rl-%d" % i,
                                   "recipient": "jc.rheine", "referral_id": "r-1",
                                   "priority": "urgent"}} for i in range(20)]
    for cmd in bad:
        w.send(cmd)
    answers = _answers(w, 20)
    served = sum(a["reason"] == "BAD_VALUE" for a in answers)
    assert 15 <= served <= 17, [a["reason"] for a in answers]
    for i, a in enumerate(answers):
        if i < served:
            rejected(a, "BAD_VALUE", "hdr.priority", "m-ws-rl-%d" % i)
        else:
            rejected(a, "RATE_LIMITED", "", "m-ws-rl-%d" % i)
    rejected(w.ask(b"\xc1"), "RATE_LIMITED")
    rejected(w.ask(ping()), "RATE_LIMITED")


def test_reload_costs_100_units(brokers, wire):
    """§7.3: RELOAD costs 100, HELLO 5."""
    b = brokers({"ops.steinfurt": "operator", "jc.rheine": "agency"},
                broker={"rate_limit": 1, "rate_burst": 150})
    w = wire("ops.steinfurt", b)                # 145 left
    assert w.ask({"cmd": "RELOAD"})["cmd"] == "RELOADED"        # 45 left
    rejected(w.ask({"cmd": "RELOAD"}), "RATE_LIMITED")
    w.alive()                                   # 1 unit: there


def test_a_full_mailbox_refuses_with_quota_and_the_msg_id_stays_free(brokers, connect_to):
    """§7.3: beyond mailbox_quota a SEND to it is QUOTA (300); §8.3 a refused msg_id is
    not used up; §10: QUOTA MAY succeed later with the same msg_id."""
    b = brokers({"soz.rheine": "agency", "aa.rheine": "agency"}, broker={"mailbox_quota": 2})
    soz = connect_to(b, "soz.rheine", window=0, timeout=WAIT)
    for i in range(2):
        soz.send(referral("R-WS-Q%d" % i, "C-WS-Q", recipient="aa.rheine"), b"x")
    third = referral("R-WS-Q2", "C-WS-Q", recipient="aa.rheine", msg_id="m-ws-q2")
    with pytest.raises(kim.Rejected) as e:
        soz.send(third, b"x")
    assert (e.value.code, e.value.reason, e.value.msg_id) == (300, "QUOTA", "m-ws-q2")
    aa = connect_to(b, "aa.rheine", window=1, timeout=WAIT)
    d = aa.recv(WAIT)
    assert d is not None
    aa.ack(d.seq)
    deadline = time.monotonic() + WAIT
    while aa.status()["mailbox"] != 1:
        assert time.monotonic() < deadline, "the ACK was not committed"
    again = soz.send(third, b"x")
    assert again["cmd"] == "RECEIPT" and not again.get("dup")


#   --- §8.13 RELOAD -------------------------------------------------------------------------

OPS_ORGS = {"jc.rheine": "agency", "soz.rheine": "agency", "dsb.steinfurt": "auditor",
            "ops.steinfurt": "operator"}


def test_an_operator_reloads_and_may_do_nothing_an_agency_does(brokers, wire):
    """§8.13: RELOADED with count and text; §7.2: an operator's window is 0 and its SEND,
    ACK, SUBSCRIBE, QUERY, REFERRAL_QUERY are FORBIDDEN; PING, STATUS, DIRECTORY are not."""
    b = brokers(OPS_ORGS)
    w = wire("ops.steinfurt", b, hello=False)
    rejected(w.ask({"cmd": "RELOAD"}), "NO_SESSION")
    assert w.hello(window=64)["window"] == 0
    reloaded = w.ask({"cmd": "RELOAD"})
    assert reloaded["cmd"] == "RELOADED", reloaded
    assert set(reloaded) == {"cmd", "count", "text"} and reloaded["count"] == len(OPS_ORGS)
    assert isinstance(reloaded["text"], str) and len(reloaded["text"].encode()) <= 256
    assert reloaded.frames[0] == canonical(reloaded)
    send = {"cmd": "SEND", "hdr": referral("R-WS-OP", "C-WS-OP", msg_id="m-ws-op")}
    rejected(w.ask(send), "FORBIDDEN", "cmd", "m-ws-op")
    rejected(w.ask({"cmd": "ACK", "seqs": [1]}), "FORBIDDEN", "cmd")
    rejected(w.ask({"cmd": "SUBSCRIBE", "sub_id": "s-ws-op"}), "FORBIDDEN", "cmd", "s-ws-op")
    rejected(w.ask({"cmd": "QUERY", "query_id": "q-ws-op", "window": 1}), "FORBIDDEN", "cmd",
             "q-ws-op")
    rejected(w.ask({"cmd": "REFERRAL_QUERY", "query_id": "q-ws-rq"}), "FORBIDDEN", "cmd",
             "q-ws-rq")
    assert w.ask({"cmd": "STATUS"})["cmd"] == "STATUS_REPLY"
    assert w.ask({"cmd": "DIRECTORY"})["cmd"] == "DIRECTORY_REPLY"
    w.alive()


def test_reload_by_an_agency_or_an_auditor_is_forbidden(brokers, wire):
    """§8.13, §7.2: only an operator MAY send RELOAD; others get FORBIDDEN, no msg_id (7.1)."""
    b = brokers(OPS_ORGS)
    for org in ("jc.rheine", "dsb.steinfurt"):
        w = wire(org, b)
        rejected(w.ask({"cmd": "RELOAD"}), "FORBIDDEN", "cmd")
        w.alive()


def _registry_edit(b, org, add=None, drop=False, replace=None):
    """The broker's config with `org`'s registry entry changed: a line added, the entry
    dropped, or a key's line replaced ({key: new line})."""
    with open(b.config, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = lines.index("    %s" % org)
    end = start + 1
    while end < len(lines) and lines[end].startswith("        "):
        end += 1
    entry = lines[start:end]
    if add:
        entry.append("        " + add)
    for key, line in (replace or {}).items():
        entry = ["        " + line if old.strip().startswith(key + " ") else old
                 for old in entry]
    return "\n".join(lines[:start] + ([] if drop else entry) + lines[end:])


def _reload_with(b, ops, text):
    with open(b.config, "w", encoding="utf-8") as f:
        f.write(text)
    return ops.ask({"cmd": "RELOAD"})


def test_reload_revokes_a_key_its_connections_are_told_revoked(brokers, wire):
    """§8.13: the revoked org's session ends with REVOKED (no msg_id); the others stay.
    §4, §11: a connection of a revoked key gets REVOKED for every command, HELLO too."""
    b = brokers(OPS_ORGS)
    ops, soz, jc = wire("ops.steinfurt", b), wire("soz.rheine", b), wire("jc.rheine", b)
    reloaded = _reload_with(b, ops, _registry_edit(b, "soz.rheine", add="revoked = 1"))
    assert reloaded["cmd"] == "RELOADED", reloaded
    rejected(soz.next(), "REVOKED")
    fresh = wire("soz.rheine", b, hello=False)
    rejected(fresh.ask(ping()), "REVOKED")
    rejected(fresh.ask(hello()), "REVOKED", "")
    # The connection whose session ended: §8.13 says later commands get NO_SESSION and a
    # HELLO UNKNOWN_ORG, §4 that every command of a revoked key's connection is answered
    # REVOKED. The two disagree here; this pins what the broker does (§4).
    rejected(soz.ask(ping()), "REVOKED")
    rejected(soz.ask(hello()), "REVOKED", "")
    jc.alive()
    ops.alive()


def test_reload_removing_an_org_ends_its_session_then_unknown_org(brokers, wire):
    """§8.13: a removed org's session ends with REVOKED; later commands on the connection
    get NO_SESSION, a HELLO UNKNOWN_ORG; the count drops by one."""
    b = brokers(OPS_ORGS)
    ops, soz = wire("ops.steinfurt", b), wire("soz.rheine", b)
    reloaded = _reload_with(b, ops, _registry_edit(b, "soz.rheine", drop=True))
    assert reloaded["cmd"] == "RELOADED" and reloaded["count"] == len(OPS_ORGS) - 1, reloaded
    rejected(soz.next(), "REVOKED")
    soz.no_session()
    rejected(soz.ask(hello()), "UNKNOWN_ORG", "")
    soz.no_session()


def test_reload_changing_a_role_ends_the_session_and_a_hello_opens_one_in_the_new_role(
        brokers, wire):
    """§8.13: an org whose role changed has its session ended with REVOKED; its key is
    still its own, so a HELLO on the connection opens a session in the new role."""
    b = brokers(OPS_ORGS)
    ops, soz = wire("ops.steinfurt", b), wire("soz.rheine", b)
    soz.hello(window=8)
    reloaded = _reload_with(b, ops, _registry_edit(
        b, "soz.rheine", replace={"role": "role = auditor"}))
    assert reloaded["cmd"] == "RELOADED", reloaded
    rejected(soz.next(), "REVOKED")
    soz.no_session()
    assert soz.hello(window=8)["window"] == 0          # an auditor receives no mail
    rejected(soz.ask(mapping(("cmd", "REFERRAL_QUERY"), ("query_id", "q-1"))),
             "FORBIDDEN", "cmd", msg_id="q-1")


def test_reload_rotating_a_key_leaves_the_old_keys_connection_unknown_org(brokers, wire):
    """§8.13: a rotated key's session ends with REVOKED; then NO_SESSION, and a HELLO on
    that connection UNKNOWN_ORG (its key belongs to no registered organisation, §10)."""
    b = brokers(OPS_ORGS)
    ops, soz = wire("ops.steinfurt", b), wire("soz.rheine", b)
    new_key = kim.write_cert(os.path.join(b.folder, "soz-rotated"), "soz.rheine")
    reloaded = _reload_with(b, ops, _registry_edit(
        b, "soz.rheine", replace={"public_key": 'public_key = "%s"' % new_key}))
    assert reloaded["cmd"] == "RELOADED", reloaded
    rejected(soz.next(), "REVOKED")
    soz.no_session()
    rejected(soz.ask(hello()), "UNKNOWN_ORG", "")


def _failed_reload(b, ops, text):
    """RELOAD of a config `text`, then the good file back; returns the answer."""
    with open(b.config, encoding="utf-8") as f:
        good = f.read()
    try:
        return _reload_with(b, ops, text)
    finally:
        with open(b.config, "w", encoding="utf-8") as f:
            f.write(good)


def test_reload_of_an_invalid_file_changes_nothing(brokers, wire):
    """§8.13: RELOAD_FAILED (213), a text naming the key path; the registry stays."""
    b = brokers(OPS_ORGS)
    ops, soz = wire("ops.steinfurt", b), wire("soz.rheine", b)
    bad = _registry_edit(b, "soz.rheine", add="revoked = 1", replace={"role": "role = wizard"})
    failed = rejected(_failed_reload(b, ops, bad), "RELOAD_FAILED", "")
    assert "orgs/soz.rheine/role" in failed["text"], failed
    assert soz.quiet(0.1) == []                 # not revoked: the registry stayed
    soz.alive()
    wire("soz.rheine", b).alive()
    ops.alive()


def test_reload_failed_names_the_file(brokers, wire):
    """§8.13: RELOAD_FAILED "with a text naming the file and key path"."""
    b = brokers(OPS_ORGS)
    ops = wire("ops.steinfurt", b)
    bad = _registry_edit(b, "soz.rheine", replace={"role": "role = wizard"})
    failed = rejected(_failed_reload(b, ops, bad), "RELOAD_FAILED", "")
    assert "orgs/soz.rheine/role" in failed["text"], failed
    assert b.config in failed["text"] or "kim.cfg" in failed["text"], failed


def test_reload_of_a_file_with_an_unknown_key_fails(brokers, wire):
    """§8.13 with kim.cfg(5): "Unknown sections and keys are errors", so the file is invalid."""
    b = brokers(OPS_ORGS)
    ops = wire("ops.steinfurt", b)
    reply = _failed_reload(b, ops, _registry_edit(b, "soz.rheine", add="colour = blue"))
    rejected(reply, "RELOAD_FAILED", "")


#   --- §13.5 robustness ------------------------------------------------------------------------

HOSTILE = [
    b"\xdf\xff\xff\xff\xff",                                    # a map of 2^32-1 entries
    b"\x81\xa3cmd\xdb\xff\xff\xff\xff",                         # a str of 4 GiB
    ping(("x-a", Raw(b"\xc6\xff\xff\xff\xff"))),               # a bin of 4 GiB
    ping(("x-a", Raw(b"\xdd\xff\xff\xff\xff"))),               # an array of 2^32-1
    ping(("x-a", Raw(b"\xdf\xff\xff\xff\xff"))),               # a map of 2^32-1
    ping(("x-a", Raw(b"\x91" * 100000 + b"\x01"))),             # 100000 deep
    ping(("x-a", Raw(b"\x81\xa1k" * 20000 + b"\x01"))),         # 20000 maps deep
    ping(("x-a", Raw(b"\xdc\x04\x00" + b"\xdc\x04\x00" * 20))),  # counts of 1024, cut short
    b"\x80",                                                   # an empty map
]


def test_hostile_frames_leave_the_broker_serving(wire, broker):
    """§13.5 (with §6 rule 1): each hostile frame gets one REJECT of the 1xx, every early
    end of the §8.1 HELLO is MALFORMED, and the broker serves on."""
    w = wire("soz.rheine")
    bystander = wire("aa.rheine")
    for frame in HOSTILE:
        reply = w.ask(frame)
        assert reply["cmd"] == "REJECT" and 100 <= reply["code"] < 200, (frame[:16], reply)
        assert "msg_id" not in reply
    for end in range(len(HELLO_EXAMPLE)):
        rejected(w.ask(HELLO_EXAMPLE[:end]), "MALFORMED", ANY)
    w.alive()
    bystander.alive()
    assert bystander.ask({"cmd": "STATUS"})["cmd"] == "STATUS_REPLY"
    assert broker.process.poll() is None
