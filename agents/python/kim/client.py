"""The kim client: one CURVE-secured DEALER session with a kim broker.

Written from proto/PROTOCOL.md: HELLO/WELCOME (§8.1–8.2), SEND with sealed
payloads (§13.2) and sender signatures (§13.4), RECEIPT/REJECT, DELIVER and
ACK (§8.6–8.7), and the requests DIRECTORY (§8.15), REFERRAL_QUERY (§8.14),
SUBSCRIBE/UNSUBSCRIBE (§8.10), QUERY (§8.11, auditors), STATUS and PING.

The client is synchronous: a request waits for its answer, and deliveries
that arrive meanwhile are queued for deliveries()/recv(). It is not
thread-safe; use one client per thread.
"""
import collections
import json
import os
import time

import msgpack
import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.signing
import zmq
import zmq.utils.z85
from nacl.encoding import RawEncoder

from .certs import load_cert, load_sign_key

FRAME_MAX = 65536
BAD_ACK = 208

#   §9: header fields in canonical order; §9 legal_basis keys; category order.
HEADER_ORDER = ("type", "schema", "msg_id", "created_at", "sender", "recipient", "referral_id",
                "ref_msg_id", "case_id", "sender_case_ref", "recipient_case_ref", "subject",
                "purpose", "legal_basis", "categories", "deadline", "priority", "code", "org",
                "note", "referrals", "consent", "recipients", "purposes", "explicit",
                "valid_until", "rule", "payload_len", "payload_hash", "sig")
LEGAL_BASIS_ORDER = ("kind", "consent_id", "citation")
CATEGORY_ORDER = ("art9", "sgb8_s65", "stgb203", "residence_status")


class KimError(Exception):
    """A local failure: no answer in time, a bad key, a broken frame."""


class Rejected(KimError):
    """The broker answered REJECT (§8.5)."""

    def __init__(self, reject):
        self.code = reject.get("code")
        self.reason = reject.get("reason", "")
        self.text = reject.get("text", "")
        self.msg_id = reject.get("msg_id")
        self.path = reject.get("path")
        where = " at %s" % self.path if self.path else ""
        super().__init__("%s (%s)%s: %s" % (self.reason, self.code, where, self.text))


class Delivery:
    """One DELIVER: `seq`, `hdr` (dict), `payload` (opened when sealed to us),
    `sealed_error` (True when a non-empty payload did not open, §13.2)."""

    def __init__(self, seq, hdr, payload, sealed_error):
        self.seq = seq
        self.hdr = hdr
        self.payload = payload
        self.sealed_error = sealed_error

    def __repr__(self):
        return "Delivery(seq=%d, type=%s, msg_id=%s)" % (
            self.seq, self.hdr.get("type"), self.hdr.get("msg_id"))


def _blake2b(data):
    return nacl.hash.blake2b(data, digest_size=32, encoder=RawEncoder)


def _absent(value):
    #   §6 rule 7: an empty string, zero, false or an empty list means absent
    return value is None or value == "" or value == [] or value is False or (
        isinstance(value, int) and not isinstance(value, bool) and value == 0)


def canonical_header(hdr):
    """The header as a dict in canonical order (§6 rule 8, §9), absent fields left out."""
    unknown = set(hdr) - set(HEADER_ORDER)
    if unknown:
        raise KimError("unknown header fields: %s" % ", ".join(sorted(unknown)))
    out = {}
    for key in HEADER_ORDER:
        value = hdr.get(key)
        if key == "schema":
            value = value or 1          # encoders always write it
        if _absent(value):
            continue
        if key == "legal_basis":
            value = {k: value[k] for k in LEGAL_BASIS_ORDER if not _absent(value.get(k))}
        elif key == "categories":
            value = sorted(value, key=lambda c: CATEGORY_ORDER.index(c)
                           if c in CATEGORY_ORDER else len(CATEGORY_ORDER))
        out[key] = value
    return out


def _pack(value):
    return msgpack.packb(value, use_bin_type=True)


def sign_header(hdr, signing_key):
    """Sets hdr["sig"] per §13.4: Ed25519 over BLAKE2b-256(canonical header without
    sig and rule) || payload_hash. The header must already carry sender,
    created_at, payload_len and payload_hash."""
    signed = {k: v for k, v in canonical_header(hdr).items() if k not in ("sig", "rule")}
    message = _blake2b(_pack(signed)) + signed["payload_hash"]
    hdr["sig"] = signing_key.sign(message).signature
    return hdr


class Client:
    """A session with a kim broker.

    endpoint     "tcp://host:port" or "ipc://path"
    broker_cert  the broker's public zcert file (data/keys/broker.cert)
    cert_secret  the organisation's NAME.cert_secret (its CURVE key pair)
    sign_secret  the organisation's NAME.sign_secret; None: look beside
                 cert_secret, False: do not sign
    window       deliveries accepted in flight (HELLO window; 0: send only)
    """

    def __init__(self, endpoint, broker_cert, cert_secret, sign_secret=None, window=64,
                 agent="kim-python/0.1", timeout=10.0):
        self.endpoint = endpoint
        self.timeout = timeout
        self.window = window
        self.agent = agent
        self.broker_public, _ = load_cert(broker_cert)
        self.public, self.secret = load_cert(cert_secret, secret=True)
        self._box_key = nacl.public.PrivateKey(zmq.utils.z85.decode(self.secret))
        if sign_secret is None and cert_secret.endswith(".cert_secret"):
            beside = cert_secret[:-len(".cert_secret")] + ".sign_secret"
            sign_secret = beside if os.path.exists(beside) else False
        self._signing_key = (nacl.signing.SigningKey(load_sign_key(sign_secret))
                             if sign_secret else None)
        self._ctx = None
        self._sock = None
        self._deliveries = collections.deque()
        self._seen = set()              # seqs delivered on this session (de-dup, §8.6)
        self._seal_keys = {}            # org -> X25519 public key, per session (§14)
        self._counter = 0
        self.welcome = None
        self.org = None
        self.late_rejects = []          # REJECTs that answer no pending request (BAD_ACK)

    #   --- the session ---------------------------------------------------------

    def connect(self):
        """Connects and says HELLO; returns the WELCOME. Raises Rejected or KimError."""
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.curve_publickey = self.public.encode()
        sock.curve_secretkey = self.secret.encode()
        sock.curve_serverkey = self.broker_public.encode()
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
        sock.connect(self.endpoint)
        self._sock = sock
        self._send_cmd({"cmd": "HELLO", "versions": [1], "agent": self.agent,
                        "window": self.window})
        self.welcome = self._wait(lambda c: c["cmd"] == "WELCOME", None)
        self.org = self.welcome["org"]
        self._seal_keys.clear()
        self._seen.clear()
        return self.welcome

    def close(self):
        """Says BYE and closes; deliveries not acknowledged return to the mailbox."""
        if self._sock is not None:
            try:
                self._send_cmd({"cmd": "BYE"})
            except zmq.ZMQError:
                pass
            self._sock.close(linger=500)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def _next_id(self, prefix):
        self._counter += 1
        return "%s-%x-%d-%d" % (prefix, os.getpid(), int(time.time() * 1000), self._counter)

    #   --- frames -------------------------------------------------------------

    def _send_cmd(self, cmd, payload=None):
        frames = [_pack(cmd)]
        if len(frames[0]) > FRAME_MAX:
            raise KimError("command of %d bytes exceeds the frame limit" % len(frames[0]))
        if payload is not None:
            frames.append(payload)
        self._sock.send_multipart(frames)

    def _recv_cmd(self, timeout):
        if not self._sock.poll(int(max(timeout, 0) * 1000)):
            return None, None
        frames = self._sock.recv_multipart()
        if len(frames[0]) > FRAME_MAX:
            raise KimError("broker frame of %d bytes exceeds the frame limit" % len(frames[0]))
        try:
            cmd = msgpack.unpackb(frames[0], raw=False, strict_map_key=True,
                                  max_bin_len=FRAME_MAX, max_str_len=FRAME_MAX,
                                  max_array_len=1024, max_map_len=64)
        except (ValueError, msgpack.exceptions.ExtraData) as e:
            raise KimError("malformed frame from the broker: %s" % e)
        if not isinstance(cmd, dict) or not isinstance(cmd.get("cmd"), str):
            raise KimError("frame 0 from the broker is not a command map")
        return cmd, (frames[1] if len(frames) > 1 else None)

    def _take_delivery(self, cmd, payload):
        seq = cmd.get("seq")
        hdr = cmd.get("hdr")
        if not isinstance(seq, int) or not isinstance(hdr, dict) or payload is None:
            raise KimError("malformed DELIVER")
        if seq in self._seen:
            return                      # delivered again on this session: de-duplicate
        self._seen.add(seq)
        sealed_error = False
        if payload and _blake2b(payload) != hdr.get("payload_hash"):
            sealed_error = True         # corrupted: hand it over as received, flagged
        elif payload:
            try:
                payload = nacl.public.SealedBox(self._box_key).decrypt(payload)
            except nacl.exceptions.CryptoError:
                sealed_error = True     # §13.2: hand it over as received, flagged
        self._deliveries.append(Delivery(seq, hdr, payload, sealed_error))

    def _wait(self, match, msg_id, timeout=None):
        """Reads until `match(cmd)`; queues deliveries; raises Rejected for a REJECT
        that answers this request (its msg_id, or none when msg_id is None)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            cmd, payload = self._recv_cmd(deadline - time.monotonic())
            if cmd is None:
                raise KimError("no answer from the broker within %.1f s" % (
                    self.timeout if timeout is None else timeout))
            name = cmd["cmd"]
            if name == "DELIVER":
                self._take_delivery(cmd, payload)
            elif name == "REJECT":
                rid = cmd.get("msg_id")
                if rid is not None and rid == msg_id:
                    raise Rejected(cmd)
                if rid is None and cmd.get("code") != BAD_ACK:
                    raise Rejected(cmd)
                self.late_rejects.append(cmd)
            elif match(cmd):
                return cmd

    #   --- sending ------------------------------------------------------------

    def seal_key(self, org):
        """The X25519 key payloads to `org` are sealed to, from the directory (§13.2)."""
        if org not in self._seal_keys:
            entries = self.directory(org)
            entry = next((e for e in entries if e.get("id") == org), None)
            if entry is None:
                raise KimError("%s is not in the broker's directory: no key to seal to" % org)
            self._seal_keys[org] = zmq.utils.z85.decode(entry["public_key"])
        return self._seal_keys[org]

    def send(self, hdr, payload=b"", seal=True, timeout=None):
        """Sends one message; returns the RECEIPT (a dict with seq, maybe dup).

        Sets schema and msg_id if missing. A non-empty payload is sealed to the
        recipient (`org` for FORWARD) unless seal is False. With a signing key
        the header is signed (§13.4). Raises Rejected on REJECT."""
        hdr = dict(hdr)
        hdr.setdefault("schema", 1)
        hdr.setdefault("msg_id", self._next_id("m"))
        target = hdr.get("org") if hdr.get("type") == "FORWARD" else hdr.get("recipient")
        payload = bytes(payload or b"")
        if payload and seal and target:
            payload = nacl.public.SealedBox(nacl.public.PublicKey(self.seal_key(target))) \
                .encrypt(payload)
        max_payload = self.welcome.get("max_payload", 1 << 20)
        if len(payload) > max_payload:
            raise KimError("payload of %d bytes exceeds the broker's max_payload %d"
                           % (len(payload), max_payload))
        if self._signing_key is not None:
            hdr["sender"] = self.org
            hdr.setdefault("created_at", int(time.time() * 1000))
            hdr["payload_len"] = len(payload)
            hdr["payload_hash"] = _blake2b(payload)
            sign_header(hdr, self._signing_key)
        hdr = canonical_header(hdr)
        self._send_cmd({"cmd": "SEND", "hdr": hdr}, payload if payload else None)
        msg_id = hdr["msg_id"]
        return self._wait(lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == msg_id,
                          msg_id, timeout)

    #   --- receiving ----------------------------------------------------------

    def recv(self, timeout=None):
        """The next delivery, or None when none arrives within `timeout` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._deliveries:
            cmd, payload = self._recv_cmd(deadline - time.monotonic())
            if cmd is None:
                return None
            if cmd["cmd"] == "DELIVER":
                self._take_delivery(cmd, payload)
            elif cmd["cmd"] == "REJECT":
                self.late_rejects.append(cmd)
        return self._deliveries.popleft()

    def deliveries(self, timeout=None):
        """Yields deliveries until none arrives for `timeout` seconds."""
        while True:
            d = self.recv(timeout)
            if d is None:
                return
            yield d

    def ack(self, *seqs):
        """Acknowledges deliveries (§8.7): call once they are stored."""
        seqs = list(seqs)
        for i in range(0, len(seqs), 1024):
            self._send_cmd({"cmd": "ACK", "seqs": seqs[i:i + 1024]})

    #   --- requests -----------------------------------------------------------

    def ping(self, timeout=None):
        self._send_cmd({"cmd": "PING"})
        self._wait(lambda c: c["cmd"] == "PONG", None, timeout)

    def status(self, timeout=None):
        self._send_cmd({"cmd": "STATUS"})
        return self._wait(lambda c: c["cmd"] == "STATUS_REPLY", None, timeout)["status"]

    def directory(self, org=None, timeout=None):
        """The directory's entries (§8.15): dicts with id, name, type, public_body,
        public_key and maybe sign_key."""
        cmd = {"cmd": "DIRECTORY"}
        if org:
            cmd["org"] = org
        self._send_cmd(cmd)
        return self._wait(lambda c: c["cmd"] == "DIRECTORY_REPLY", None, timeout)["orgs"]

    def referral_query(self, referral_id=None, case_id=None, org=None, timeout=None):
        """Referrals this organisation takes part in (§8.14), as dicts."""
        query_id = self._next_id("rq")
        cmd = {"cmd": "REFERRAL_QUERY", "query_id": query_id}
        for key, value in (("case_id", case_id), ("org", org), ("referral_id", referral_id)):
            if value:
                cmd[key] = value
        self._send_cmd(cmd)
        reply = self._wait(lambda c: c["cmd"] == "REFERRAL_INFO"
                           and c.get("query_id") == query_id, query_id, timeout)
        lines = bytes(reply["body"]).decode("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def subscribe(self, sub_id, case_id=None, types=None, timeout=None):
        """A durable subscription (§8.10); returns the log head it starts after."""
        cmd = {"cmd": "SUBSCRIBE", "sub_id": sub_id}
        if case_id:
            cmd["case_id"] = case_id
        if types:
            cmd["types"] = list(types)
        self._send_cmd(cmd)
        return self._wait(lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == sub_id,
                          sub_id, timeout)["seq"]

    def unsubscribe(self, sub_id, timeout=None):
        self._send_cmd({"cmd": "UNSUBSCRIBE", "sub_id": sub_id})
        return self._wait(lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == sub_id,
                          sub_id, timeout)["seq"]

    def query(self, window=256, timeout=None, **filters):
        """An auditor's QUERY (§8.11): yields RECORD dicts (seq, time, kind, hash,
        body) until QUERY_END; grants more credit as the window is used up.
        Filters: from_seq, to_seq, from_time, to_time, case_id, org, type."""
        query_id = self._next_id("q")
        order = ("from_seq", "to_seq", "from_time", "to_time", "case_id", "org", "type")
        unknown = set(filters) - set(order)
        if unknown:
            raise KimError("unknown query filters: %s" % ", ".join(sorted(unknown)))
        cmd = {"cmd": "QUERY", "query_id": query_id}
        cmd.update((k, filters[k]) for k in order if not _absent(filters.get(k)))
        cmd["window"] = window
        self._send_cmd(cmd)
        credit = window
        while True:
            c = self._wait(lambda c: c["cmd"] in ("RECORD", "QUERY_END")
                           and c.get("query_id") == query_id, query_id, timeout)
            if c["cmd"] == "QUERY_END":
                if c.get("code"):
                    raise KimError("query %s stopped with code %d" % (query_id, c["code"]))
                return
            yield c
            credit -= 1
            if credit == 0:
                self._send_cmd({"cmd": "QUERY", "query_id": query_id, "window": window})
                credit = window
