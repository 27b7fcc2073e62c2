"""The far side of a federation link, played in Python: a linked district
broker (PROTOCOL.md §16) with agencies of its own, for the spec tests of
test_federation_spec.py.

A FarBroker has its CURVE key pair and Ed25519 signing key (§16.1), a
`peers` section naming it for the real broker's config, and two kinds of
connection:

- Inbound: its ROUTER, a CURVE server, where the real broker dials in with a
  DEALER as a CURVE client under its own broker key (the link, §16.1). Here
  the real broker sends HELLO, PEER_DIRECTORY, PING and PEER_FORWARD, and
  the FarBroker answers (WELCOME, PONG, PEER_ACK, PEER_REFUSED, REJECT).
- Outbound: a DEALER the FarBroker dials to the real broker's ROUTER with its
  own key (role peer, §16.2); here the FarBroker sends HELLO, its
  PEER_DIRECTORY, PING and PEER_FORWARD, and the real broker answers.

Both read frames through kim_frames.pump (they are "sessions" in its sense:
`sock`, `client._recv_cmd`, `take`) and keep what came, in arrival order.
Every wait is bounded."""
import itertools
import os
import shutil
import tempfile
import time

import msgpack
import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.signing
import zmq
import zmq.auth
import zmq.auth.thread
import zmq.utils.z85
from nacl.encoding import RawEncoder

from kim.certs import load_cert
from kim.client import canonical_header, sign_header
from kim_frames import pump
from kim_inbox import QUIET, WAIT

FRESH_HELLO = 1.5       # s: a link HELLO older than this is not answered (§16.1: 3 s)
NEW_HELLO = 15.0        # s a redial may take: the back-off (§16.1) plus the 3 s timeout
_order = itertools.count(1)


def blake2b(data):
    return nacl.hash.blake2b(bytes(data), digest_size=32, encoder=RawEncoder)


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def z85(raw):
    return zmq.utils.z85.encode(bytes(raw)).decode()


class Org:
    """An agency of the far district: CURVE key pair (its X25519 sealing key,
    §13.2) and, if `signing`, an Ed25519 key registered as its sign_key."""

    def __init__(self, org_id, org_type=None, signing=False, name=None, public_body=True):
        self.id = org_id
        self.type = org_type or org_id.split(".")[0]
        self.name = name or "Far %s" % org_id
        self.public_body = public_body
        public, secret = zmq.curve_keypair()
        self.public, self.secret = public.decode(), secret.decode()
        self.signing = nacl.signing.SigningKey.generate() if signing else None

    def entry(self):
        """Its directory entry, in the field order of §8.15 (without `home`, §16.3)."""
        entry = {"id": self.id, "name": self.name, "type": self.type,
                 "public_body": self.public_body, "public_key": self.public}
        if self.signing is not None:
            entry["sign_key"] = z85(self.signing.verify_key)
        return entry

    def open(self, sealed):
        """Opens a payload sealed to this organisation (crypto_box_seal, §13.2)."""
        key = nacl.public.PrivateKey(zmq.utils.z85.decode(self.secret))
        return nacl.public.SealedBox(key).decrypt(bytes(sealed))


def seal_to(public_z85, plaintext):
    return nacl.public.SealedBox(nacl.public.PublicKey(
        zmq.utils.z85.decode(public_z85))).encrypt(plaintext)


class Msg(dict):
    """A command received: the map, plus `payload` (frame 1 or None), `rid`
    (the ROUTER's routing id), `user_id` (the ZAP User-Id: the z85 CURVE key
    of the connection) and `order` (arrival order over all connections)."""

    def __init__(self, cmd, payload=None, rid=None, user_id=None):
        super().__init__(cmd)
        self.payload = payload
        self.rid = rid
        self.user_id = user_id
        self.order = next(_order)
        self.at = time.monotonic()


def _matcher(match):
    if match is None:
        return lambda m: True
    if isinstance(match, str):
        return lambda m: m.get("cmd") == match
    return match


class _Conn:
    """What both kinds of connection share: the socket, what came (`got`,
    taken out as waits consume it), bounded waits through kim_frames.pump."""

    def __init__(self, far, sock):
        self.far = far
        self.sock = sock
        self.client = self          # kim_frames.pump reads s.client._recv_cmd
        self.got = []

    def _recv_cmd(self, timeout):
        if not self.sock.poll(int(max(timeout, 0) * 1000)):
            return None, None
        frames = self.sock.recv_multipart(copy=False)
        return self._message(frames), None

    def _message(self, frames):
        raise NotImplementedError

    def take(self, msg, _payload):
        self.got.append(msg)

    def _first(self, match):
        return next((m for m in self.got if match(m)), None)

    def wait(self, match=None, timeout=WAIT):
        """The first command received (earlier or now) that matches (a command
        name or a predicate), taken out of `got`; None after `timeout` s."""
        match = _matcher(match)
        pump([self], timeout, until=lambda: self._first(match) is not None)
        found = self._first(match)
        if found is not None:
            self.got.remove(found)
        return found

    def quiet(self, match=None, seconds=QUIET):
        """Reads for `seconds`; returns (and takes out) what matched meanwhile or before."""
        pump([self], seconds)
        match = _matcher(match)
        found = [m for m in self.got if match(m)]
        for m in found:
            self.got.remove(m)
        return found

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class Inbound(_Conn):
    """The FarBroker's ROUTER: the real broker's link to it (§16.1, §16.2: the
    broker that dialled is `C:`, this side `S:`)."""

    def __init__(self, far, sock, local):
        super().__init__(far, sock)
        self.local = local          # the dialling broker's name, WELCOME's `org`
        self.rid = None             # the connection of the link being served
        self.up = False
        self.pings = 0              # PINGs of the link answered while up
        self.directory = None       # the PEER_DIRECTORY of the last opening served

    def _message(self, frames):
        rid, body = bytes(frames[0]), frames[1]
        payload = bytes(frames[2]) if len(frames) > 2 else None
        user_id = body.get("User-Id")
        return Msg(msgpack.unpackb(bytes(body), raw=False), payload, rid, user_id)

    def take(self, msg, payload):
        if self.up and msg.get("cmd") == "PING" and msg.rid == self.rid:
            self.send({"cmd": "PONG"})      # heartbeats of a link that is up
            self.pings += 1
            return
        super().take(msg, payload)

    def send(self, cmd, payload=None, rid=None):
        frames = [rid or self.rid, pack(cmd)]
        if payload is not None:
            frames.append(payload)
        self.sock.send_multipart(frames)

    def hello(self, fresh=FRESH_HELLO, timeout=NEW_HELLO):
        """The newest HELLO young enough to answer; older ones are dropped."""
        hellos = [m for m in self.got if m.get("cmd") == "HELLO"]
        for m in hellos:
            self.got.remove(m)
        if hellos and time.monotonic() - hellos[-1].at < fresh:
            return hellos[-1]
        return self.wait("HELLO", timeout)

    def welcome(self, hello, name=None, heartbeat_ms=60000):
        """Answers a link HELLO with WELCOME (§8.2); `name` its `broker`."""
        self.rid = hello.rid
        self.up = False
        self.send({"cmd": "WELCOME", "version": 1, "org": self.local,
                   "broker": name or self.far.name, "heartbeat_ms": heartbeat_ms,
                   "max_payload": 1 << 20, "window": 0})

    def accept(self, pong=True, heartbeat_ms=60000, hello=None):
        """Serves the link's opening (§16.1): HELLO (`hello`, else the newest
        fresh one), WELCOME, then the broker's PEER_DIRECTORY and PING; PONG
        unless `pong` is False. Returns (hello, directory, ping)."""
        hello = hello or self.hello()
        assert hello is not None, "the broker did not dial the peer"
        self.welcome(hello, heartbeat_ms=heartbeat_ms)
        on_link = self.on_link
        directory = self.wait(lambda m: on_link(m) and m["cmd"] == "PEER_DIRECTORY")
        ping = self.wait(lambda m: on_link(m) and m["cmd"] == "PING")
        assert directory is not None and ping is not None, (directory, ping, self.got)
        self.directory = directory
        if pong:
            self.pong()
        return hello, directory, ping

    def on_link(self, msg):
        return msg.rid == self.rid

    def pong(self):
        self.send({"cmd": "PONG"})
        self.up = True

    def drop(self):
        """REJECT NO_SESSION on the link, as a restarted peer says (§16.1)."""
        self.send({"cmd": "REJECT", "code": 200, "reason": "NO_SESSION",
                   "text": "the peer restarted"})
        self.up = False

    def forward(self, timeout=WAIT):
        """The next PEER_FORWARD on the link's current connection."""
        return self.wait(lambda m: m.get("cmd") == "PEER_FORWARD" and self.on_link(m), timeout)

    def ack(self, seq, dup=False):
        cmd = {"cmd": "PEER_ACK", "seq": seq}
        if dup:
            cmd["dup"] = True
        self.send(cmd)

    def refuse(self, seq, code, reason, text, path=None, rule=None):
        cmd = {"cmd": "PEER_REFUSED", "code": code, "reason": reason, "text": text, "seq": seq}
        if path:
            cmd["path"] = path
        if rule:
            cmd["rule"] = rule
        self.send(cmd)


class Outbound(_Conn):
    """The FarBroker's DEALER to the real broker's ROUTER: its own traffic
    (HELLO, PEER_DIRECTORY, PING, PEER_FORWARD) and the broker's answers."""

    def __init__(self, far, sock):
        super().__init__(far, sock)
        self.seqs = itertools.count(1001)

    def _message(self, frames):
        payload = bytes(frames[1]) if len(frames) > 1 else None
        return Msg(msgpack.unpackb(bytes(frames[0]), raw=False), payload)

    def send(self, cmd, payload=None):
        frames = [pack(cmd)] if payload is None else [pack(cmd), payload]
        self.sock.send_multipart(frames)

    def hello(self, window=0, versions=(1,), agent="far-broker-py/1"):
        """HELLO (§16.2); the WELCOME or REJECT that answers it."""
        self.send({"cmd": "HELLO", "versions": list(versions), "agent": agent,
                   "window": window})
        return self.wait(lambda m: m.get("cmd") in ("WELCOME", "REJECT"))

    def sync(self, timeout=WAIT):
        """PING, and what the broker answered before its PONG (taken out):
        the broker answers in order (§16.1), so these answer what was sent
        before the PING. Raises AssertionError without a PONG."""
        self.send({"cmd": "PING"})
        pong = self.wait("PONG", timeout)
        assert pong is not None, "no PONG from the broker: %r" % self.got
        before = [m for m in self.got if m.order < pong.order]
        for m in before:
            self.got.remove(m)
        return before

    def publish(self, document):
        """Sends a PEER_DIRECTORY (§16.3); returns what answered it (a success has none)."""
        self.send(document)
        return self.sync()

    def forward(self, hdr, payload=None, seq=None, timeout=WAIT):
        """PEER_FORWARD (§16.4); returns (seq, the PEER_ACK, PEER_REFUSED or REJECT)."""
        seq = next(self.seqs) if seq is None else seq
        self.send({"cmd": "PEER_FORWARD", "seq": seq, "hdr": hdr}, payload)
        answer = self.wait(lambda m: (m.get("cmd") in ("PEER_ACK", "PEER_REFUSED")
                                      and m.get("seq") == seq) or m.get("cmd") == "REJECT",
                           timeout)
        return seq, answer


class FarBroker:
    """A broker of another district, named `name`, with agencies `orgs`."""

    def __init__(self, name="broker.far"):
        self.name = name
        self.folder = tempfile.mkdtemp(prefix="kim-far-")
        self.endpoint = "ipc://%s/far.sock" % self.folder
        public, secret = zmq.curve_keypair()
        self.public, self.secret = public.decode(), secret.decode()
        self.signing = nacl.signing.SigningKey.generate()
        self.orgs = {}
        self.serial = 0
        self.ctx = zmq.Context()
        #   A ZAP handler admitting any CURVE key, so that each frame names the
        #   key its connection authenticated with (User-Id, z85)
        self.auth = zmq.auth.thread.ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        self.conns = []

    @property
    def sign_key(self):
        return z85(self.signing.verify_key)

    def peers(self, endpoint=None, public_key=None, sign_key=None):
        """This broker's entry of a `peers` section (kim.cfg(5)), as TestBroker's
        `sections` take it: {"peers": far.peers()}, or several peers' merged."""
        return {self.name: {"endpoint": '"%s"' % (endpoint or self.endpoint),
                            "public_key": '"%s"' % (public_key or self.public),
                            "sign_key": '"%s"' % (sign_key or self.sign_key)}}

    def add(self, org_id, **options):
        self.orgs[org_id] = Org(org_id, **options)
        return self.orgs[org_id]

    def directory(self, orgs=None, serial=None, broker=None, signer=None, sig=None):
        """A PEER_DIRECTORY (§16.3) of `orgs` (ids or Org, default all), signed
        over its canonical encoding with `sig` zeroed, by `signer` (default
        this broker's key); `sig` replaces the signature. The serial grows
        with every document unless given (§16.3)."""
        if serial is None:
            serial = self.serial = max(int(time.time() * 1000), self.serial + 1)
        chosen = self.orgs.values() if orgs is None else [
            o if isinstance(o, Org) else self.orgs[o] for o in orgs]
        doc = {"cmd": "PEER_DIRECTORY", "broker": broker or self.name,
               "orgs": [o.entry() for o in chosen],
               "serial": serial,
               "sig": bytes(64)}
        doc["sig"] = sig if sig is not None else (signer or self.signing).sign(
            pack(doc)).signature
        return doc

    def listen(self, local="kim.test", endpoint=None):
        """Binds a ROUTER (CURVE server under this broker's key) at `endpoint`
        (default self.endpoint)."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.curve_server = True
        sock.curve_publickey = self.public.encode()
        sock.curve_secretkey = self.secret.encode()
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint or self.endpoint)
        conn = Inbound(self, sock, local)
        self.conns.append(conn)
        return conn

    def dial(self, broker):
        """A DEALER to the TestBroker `broker`, a CURVE client under this broker's key."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.curve_publickey = self.public.encode()
        sock.curve_secretkey = self.secret.encode()
        sock.curve_serverkey = load_cert(broker.broker_cert)[0].encode()
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(broker.endpoint)
        conn = Outbound(self, sock)
        self.conns.append(conn)
        return conn

    def header(self, sender, payload=b"", sign=True, **fields):
        """A header as the far broker's log holds it (§16.4): canonical, with
        `sender`, `created_at`, `payload_len` and `payload_hash`, and `sig`
        when the sender (an Org of this broker) has a signing key."""
        hdr = dict(fields)
        hdr.setdefault("schema", 1)
        hdr["sender"] = sender.id if isinstance(sender, Org) else sender
        hdr.setdefault("created_at", int(time.time() * 1000))
        hdr["payload_len"] = len(payload)
        hdr["payload_hash"] = blake2b(payload)
        if sign and isinstance(sender, Org) and sender.signing is not None:
            sign_header(hdr, sender.signing)
        return canonical_header(hdr)

    def close(self):
        for conn in self.conns:
            conn.close()
        self.auth.stop()
        self.ctx.term()
        shutil.rmtree(self.folder, ignore_errors=True)


def verify_directory(doc, verify_key):
    """Whether a PEER_DIRECTORY's `sig` verifies (§16.3): over the canonical
    encoding (§6 rule 8: cmd, then the table's order; entries in §8.15's
    order) with `sig` replaced by 64 zero bytes."""
    order = ("id", "name", "type", "public_body", "public_key", "sign_key")
    canonical = {"cmd": "PEER_DIRECTORY", "broker": doc["broker"],
                 "orgs": [{k: e[k] for k in order if k in e} for e in doc["orgs"]],
                 "serial": doc["serial"], "sig": bytes(64)}
    try:
        verify_key.verify(pack(canonical), bytes(doc["sig"]))
        return True
    except nacl.exceptions.BadSignatureError:
        return False


def verify_header(hdr, verify_key):
    """Whether a header's `sig` verifies (§13.4): Ed25519 over BLAKE2b-256 of the
    canonical header without `sig` and `rule`, then `payload_hash`."""
    signed = {k: v for k, v in canonical_header(hdr).items() if k not in ("sig", "rule")}
    try:
        verify_key.verify(blake2b(pack(signed)) + bytes(signed["payload_hash"]),
                          bytes(hdr["sig"]))
        return True
    except nacl.exceptions.BadSignatureError:
        return False


def broker_verify_key(broker):
    """The real broker's Ed25519 key: keys/broker.sign.pub (hex, kim-broker(8))."""
    with open(os.path.join(broker.data, "keys", "broker.sign.pub"), encoding="ascii") as f:
        return nacl.signing.VerifyKey(bytes.fromhex(f.read().strip()))
