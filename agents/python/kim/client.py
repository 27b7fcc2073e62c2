"""The kim client: one CURVE-secured DEALER session with a kim broker.

Written from proto/PROTOCOL.md: HELLO/WELCOME (§8.1–8.2), SEND with sealed
payloads (§13.2) and sender signatures (§13.4), RECEIPT/REJECT, DELIVER and
ACK (§8.6–8.7), and the requests DIRECTORY (§8.15), REFERRAL_QUERY (§8.14),
SUBSCRIBE/UNSUBSCRIBE (§8.10), QUERY (§8.11, auditors), STATUS and PING;
and protocol version 2 (§5.1): SEND_BATCH answered by RECEIPT_BATCH
(§8.16–8.17) for send_many(), DELIVER_BATCH (§8.18) and ACK_RANGE (§8.19).

The client is synchronous: a request waits for its answer, and deliveries
that arrive meanwhile are queued for deliveries()/recv(). It is not
thread-safe; use one client per thread.
"""
import bisect
import collections
import json
import os
import re
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
PAYLOAD_CEILING = 16 << 20      # §5: no broker's max_payload is larger
BATCH_MAX = 64                  # entries in one batch frame (§5.1)
ACKS_MAX = 1024                 # seqs in one ACK (§8.7)
RANGES_MAX = 64                 # pairs in one ACK_RANGE (§8.19)
VERSIONS = (1, 2)               # the protocol versions this client speaks
BATCHES_IN_FLIGHT = 8           # SEND_BATCH frames sent ahead of their answers
SENDS_IN_FLIGHT = 64            # version 1: SENDs sent ahead of their answers
BAD_ACK = 208
RATE_LIMITED = 207
BATCH_COMMANDS = ("SEND_BATCH", "RECEIPT_BATCH", "DELIVER_BATCH")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")     # §6 rule 6: an id the broker can echo

#   §9: header fields in canonical order; §9 legal_basis keys; category order.
HEADER_ORDER = ("type", "schema", "msg_id", "created_at", "sender", "recipient", "referral_id",
                "ref_msg_id", "case_id", "sender_case_ref", "recipient_case_ref", "subject",
                "purpose", "legal_basis", "categories", "deadline", "priority", "code", "org",
                "note", "referrals", "consent", "recipients", "purposes", "explicit",
                "valid_until", "giver", "rule", "payload_len", "payload_hash", "sig")
LEGAL_BASIS_ORDER = ("kind", "consent_id", "citation")
CATEGORY_ORDER = ("art9", "sgb8_s65", "stgb203", "residence_status", "contact")


class KimError(Exception):
    """A local failure: no answer in time, a bad key, a broken frame."""


class Directory(list):
    """DIRECTORY_REPLY's entries, a list; `matched` is the reply's `count`, the
    organisations that matched (more than the list holds when the reply was cut)."""

    def __init__(self, entries, matched):
        super().__init__(entries)
        self.matched = matched


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
    """The header as a dict in canonical order (§6 rule 8, §9), absent fields left out.
    Keys starting with `x-` are left out too: receivers ignore them and the broker
    neither stores nor forwards them (§6 rule 2), so they are no part of what is
    hashed and signed."""
    unknown = set(k for k in hdr if not k.startswith("x-")) - set(HEADER_ORDER)
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


#   --- frames from the broker (§5, §5.1, §6) ------------------------------------

def _is_uint(value):
    return type(value) is int and value >= 0        # bool is an int, but not here


def _unpacker(frame):
    """An Unpacker holding `frame`: the limits of §6 rule 3; str, bin and the
    buffer bounded by the frame itself."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True,
                                max_buffer_size=max(len(frame), 1), max_bin_len=len(frame),
                                max_str_len=FRAME_MAX, max_array_len=1024, max_map_len=64)
    unpacker.feed(frame)
    return unpacker


def _next_value(unpacker, what):
    try:
        return unpacker.unpack()
    except msgpack.exceptions.OutOfData:
        raise KimError("malformed frame from the broker: %s is missing" % what)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as e:
        raise KimError("malformed frame from the broker at %s: %s" % (what, e))


def _decode_frame(frame, max_payload):
    """Frame 0 from the broker as (command map, entries). entries is None for a
    plain command; for a batch frame (§5.1) a list of (entry map, payload),
    payload None in a RECEIPT_BATCH. Raises KimError when the frame does not
    split exactly into a head and `count` entries."""
    if len(frame) > max_payload + FRAME_MAX:
        raise KimError("broker frame of %d bytes exceeds the frame limit" % len(frame))
    unpacker = _unpacker(frame)
    head = _next_value(unpacker, "the command map")
    if not isinstance(head, dict) or not isinstance(head.get("cmd"), str):
        raise KimError("frame 0 from the broker is not a command map")
    if head["cmd"] not in BATCH_COMMANDS:
        if len(frame) > FRAME_MAX:
            raise KimError("broker frame of %d bytes exceeds the frame limit" % len(frame))
        if unpacker.tell() != len(frame):
            raise KimError("malformed frame from the broker: data after the %s map"
                           % head["cmd"])
        return head, None
    return head, _split_entries(head, unpacker, len(frame), max_payload)


def _split_entries(head, unpacker, size, max_payload):
    name, count = head["cmd"], head.get("count")
    if not _is_uint(count) or not 1 <= count <= BATCH_MAX:
        raise KimError("%s from the broker with count %r (1 to %d)" % (name, count, BATCH_MAX))
    entries = []
    for i in range(count):
        where = "%s entries[%d]" % (name, i)
        start = unpacker.tell()
        entry = _next_value(unpacker, where)
        if not isinstance(entry, dict):
            raise KimError("%s from the broker is not a map" % where)
        if unpacker.tell() - start > FRAME_MAX:
            raise KimError("%s from the broker exceeds the frame limit" % where)
        payload = None
        if name != "RECEIPT_BATCH":
            payload = _next_value(unpacker, where + " payload")
            if not isinstance(payload, bytes):
                raise KimError("the payload of %s from the broker is not a bin" % where)
            if len(payload) > max_payload:
                raise KimError("the payload of %s from the broker exceeds max_payload" % where)
        entries.append((entry, payload))
    if unpacker.tell() != size:
        raise KimError("%s from the broker holds more than its count of %d entries"
                       % (name, count))
    return entries


def _check_deliveries(entries):
    """DELIVER_BATCH entries (§8.18): DELIVER maps with seq and hdr, ascending seq."""
    last = -1
    for i, (entry, _) in enumerate(entries):
        if entry.get("cmd") != "DELIVER":
            raise KimError("DELIVER_BATCH entries[%d] from the broker is a %r, not a DELIVER"
                           % (i, entry.get("cmd")))
        seq = entry.get("seq")
        if not _is_uint(seq) or not isinstance(entry.get("hdr"), dict):
            raise KimError("DELIVER_BATCH entries[%d] from the broker is a malformed DELIVER"
                           % i)
        if seq <= last:
            raise KimError("DELIVER_BATCH from the broker is not in ascending seq at "
                           "entries[%d]" % i)
        last = seq


def _check_answers(entries):
    """RECEIPT_BATCH entries (§8.17): each a RECEIPT (msg_id, seq) or a REJECT (code, reason)."""
    for i, (entry, _) in enumerate(entries):
        name = entry.get("cmd")
        if name == "RECEIPT":
            good = isinstance(entry.get("msg_id"), str) and _is_uint(entry.get("seq"))
        elif name == "REJECT":
            good = _is_uint(entry.get("code")) and isinstance(entry.get("reason"), str) \
                and isinstance(entry.get("msg_id", ""), str)
        else:
            raise KimError("RECEIPT_BATCH entries[%d] from the broker is a %r, neither "
                           "RECEIPT nor REJECT" % (i, name))
        if not good:
            raise KimError("RECEIPT_BATCH entries[%d] from the broker is a malformed %s"
                           % (i, name))


#   --- acknowledgements (§8.19) -------------------------------------------------

def _ack_ranges(acked, outstanding):
    """[from, to] pairs covering the ascending seqs `acked`. Seqs have gaps (§8.6),
    so one range takes every acked seq in a row; it ends before a seq in
    `outstanding` (delivered on this session, not yet stored), which a range
    must not span."""
    ranges = []
    for seq in acked:
        if ranges and not _any_between(outstanding, ranges[-1][1], seq):
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


def _any_between(ordered, low, high):
    i = bisect.bisect_right(ordered, low)
    return i < len(ordered) and ordered[i] < high


#   --- sending many (§8.16) -----------------------------------------------------

class _Prepared:
    """One message ready for the wire: its msg_id (None when absent), its SEND map
    packed, its payload (sealed if asked)."""

    __slots__ = ("msg_id", "cmd", "payload")

    def __init__(self, msg_id, cmd, payload):
        self.msg_id = msg_id
        self.cmd = cmd
        self.payload = payload


class _Batch:
    """A SEND_BATCH on the wire: its first item's index in send_many's list and
    the msg_ids of its messages, in order (the RECEIPT_BATCH answers in order)."""

    __slots__ = ("start", "msg_ids", "frame")

    def __init__(self, start, msg_ids, frame):
        self.start = start
        self.msg_ids = msg_ids
        self.frame = frame

    def answered_by(self, entries):
        """Whether a RECEIPT_BATCH's entries fit this batch: as many, and every
        msg_id the broker could read at the place of the same message."""
        return len(entries) == len(self.msg_ids) and self._names_own(entries)

    def miscounted_by(self, entries):
        """Whether a RECEIPT_BATCH names this batch's messages at their places
        but holds a different number of answers."""
        return len(entries) != len(self.msg_ids) and self._names_own(entries) \
            and any(entry.get("msg_id") is not None for entry, _ in entries)

    def _names_own(self, entries):
        #   Every msg_id the broker could read is the one sent at that place
        for i, (entry, _) in enumerate(entries):
            msg_id = entry.get("msg_id")
            if msg_id is not None and (i >= len(self.msg_ids) or self.msg_ids[i] != msg_id):
                return False
        return True


def _refuses_frame(reject):
    """Whether a REJECT may refuse a whole SEND_BATCH frame (§5.1): no msg_id and
    a fault of the frame (1xx); session faults (2xx) end the session instead."""
    code = reject.get("code")
    return reject.get("msg_id") is None and _is_uint(code) and 100 <= code < 200


def _answer(entry):
    """A RECEIPT as it is, a REJECT as a Rejected (returned, not raised)."""
    return entry if entry["cmd"] == "RECEIPT" else Rejected(entry)


class Client:
    """A session with a kim broker.

    endpoint     "tcp://host:port" or "ipc://path"
    broker_cert  the broker's public zcert file (data/keys/broker.cert)
    cert_secret  the organisation's NAME.cert_secret (its CURVE key pair)
    sign_secret  the organisation's NAME.sign_secret; None: look beside
                 cert_secret, False: do not sign
    window       deliveries accepted in flight (HELLO window; 0: send only)
    agent        the HELLO's agent string
    timeout      seconds a call waits for the broker when it is given no timeout
    versions     protocol versions offered in HELLO; (1,) insists on version 1.
                 The session speaks what WELCOME chose (`version`).

    A bad key file raises KimError. While a call waits, a quiet session says
    PING every half heartbeat_ms (WELCOME), so that the broker keeps it (§12):
    a client that only waits for deliveries stays connected however long.
    """

    def __init__(self, endpoint, broker_cert, cert_secret, sign_secret=None, window=64,
                 agent="kim-python/0.2", timeout=10.0, versions=(2, 1)):
        self.endpoint = endpoint
        self.timeout = timeout
        self.window = window
        self.agent = agent
        self.versions = sorted(set(versions))       # §8.1: strictly ascending
        if not self.versions or not set(self.versions) <= set(VERSIONS):
            raise KimError("versions %r: this client speaks %s" % (
                tuple(versions), ", ".join(map(str, VERSIONS))))
        try:
            self.broker_public, _ = load_cert(broker_cert)
            self.public, self.secret = load_cert(cert_secret, secret=True)
            self._box_key = nacl.public.PrivateKey(zmq.utils.z85.decode(self.secret))
            if sign_secret is None and cert_secret.endswith(".cert_secret"):
                beside = cert_secret[:-len(".cert_secret")] + ".sign_secret"
                sign_secret = beside if os.path.exists(beside) else False
            self._signing_key = (nacl.signing.SigningKey(load_sign_key(sign_secret))
                                 if sign_secret else None)
        except ValueError as e:         # a key file that is not one: a bad key
            raise KimError(str(e)) from e
        self._ctx = None
        self._sock = None
        self._deliveries = collections.deque()
        self._seen = set()              # seqs delivered on this session (de-dup, §8.6)
        self._outstanding = []          # of those, the ones not acked yet, ascending
        self._ranges_unsafe = False     # a frame was dropped: ACK only (§8.19)
        self._seal_keys = {}            # org -> X25519 public key, per session (§14)
        self._counter = 0
        self._last_sent = 0.0           # monotonic time of the last frame sent (§12)
        self._beats = 0                 # PINGs sent on our own, their PONGs not yet read
        self.welcome = None
        self.version = None             # the session's protocol version, from WELCOME
        self.org = None
        self.late_rejects = []          # REJECTs that answer no pending request (BAD_ACK)

    #   --- the session ---------------------------------------------------------

    def connect(self):
        """Connects and says HELLO; returns the WELCOME. Raises Rejected or KimError."""
        self._open_socket()
        self._send_cmd({"cmd": "HELLO", "versions": self.versions, "agent": self.agent,
                        "window": self.window})
        welcome = self._wait(lambda c: c["cmd"] == "WELCOME", None)
        if welcome.get("version") not in self.versions:
            raise KimError("WELCOME chose version %r; HELLO offered %s" % (
                welcome.get("version"), self.versions))
        self.welcome = welcome
        self._beats = 0
        self.version = welcome["version"]
        self.org = welcome["org"]
        self._seal_keys.clear()
        self._seen.clear()
        self._outstanding = []
        self._ranges_unsafe = False
        return welcome

    def _open_socket(self):
        """The CURVE DEALER to the broker, connected (the handshake runs in the
        background); no HELLO yet."""
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

    def close(self):
        """Says BYE and closes; deliveries not acknowledged return to the mailbox."""
        if self._sock is not None:
            try:                        # never waits: the broker may be gone or never
                self._sock.send(_pack({"cmd": "BYE"}), zmq.NOBLOCK)    # have taken us
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
        frame = _pack(cmd)
        if len(frame) > FRAME_MAX:
            raise KimError("command of %d bytes exceeds the frame limit" % len(frame))
        self._send_frames(frame, payload)

    def _send_frames(self, frame, payload=None):
        self._sock.send_multipart([frame] if payload is None else [frame, payload])
        self._last_sent = time.monotonic()

    def _beat_in(self):
        """Seconds until this session must say something (a PING) so that the
        broker does not end it: §12 asks for a command at least every
        heartbeat_ms; sent at half that. None before WELCOME."""
        heartbeat = (self.welcome or {}).get("heartbeat_ms")
        if not heartbeat:
            return None
        return max(self._last_sent + heartbeat / 2000.0 - time.monotonic(), 0.0)

    def _max_payload(self):
        return self.welcome.get("max_payload", 1 << 20) if self.welcome else PAYLOAD_CEILING

    def _recv_cmd(self, timeout):
        """The next command from the broker, or (None, None) after `timeout` s.
        A batch frame comes back as its head, its entries (map, payload) under
        "entries". A quiet session says PING on its own (§12); those PONGs are
        taken here."""
        deadline = time.monotonic() + max(timeout, 0)
        while True:
            cmd, payload = self._recv_frame(deadline)
            if cmd is None or cmd["cmd"] != "PONG" or not self._beats:
                return cmd, payload
            self._beats -= 1

    def _recv_frame(self, deadline):
        while True:
            wait = deadline - time.monotonic()
            beat = self._beat_in()
            if beat is not None and beat < wait:
                wait = beat
            if self._sock.poll(int(max(wait, 0) * 1000)):
                break
            if self._beat_in() == 0:
                self._send_cmd({"cmd": "PING"})
                self._beats += 1
            elif time.monotonic() >= deadline:
                return None, None
        frames = self._sock.recv_multipart()
        try:
            cmd, entries = _decode_frame(frames[0], self._max_payload())
            if entries is not None:
                self._check_batch(cmd, entries, len(frames))
        except KimError:
            #   What we drop may have been a delivery, which a range would then
            #   acknowledge unseen (§8.19)
            self._ranges_unsafe = True
            raise
        if entries is None:
            return cmd, (frames[1] if len(frames) > 1 else None)
        cmd["entries"] = entries
        return cmd, None

    def _check_batch(self, head, entries, frame_count):
        name = head["cmd"]
        if (self.version or 1) < 2:
            raise KimError("%s from the broker in a version 1 session" % name)
        if frame_count != 1:
            raise KimError("%s from the broker in %d frames; batch frames have one"
                           % (name, frame_count))
        if name == "SEND_BATCH":
            raise KimError("SEND_BATCH from the broker: clients send those")
        if name == "DELIVER_BATCH":
            _check_deliveries(entries)
        else:
            _check_answers(entries)

    def _take_deliveries(self, cmd, payload):
        """Queues what a DELIVER or DELIVER_BATCH carries; False for other commands."""
        if cmd["cmd"] == "DELIVER":
            self._take_delivery(cmd, payload)
        elif cmd["cmd"] == "DELIVER_BATCH":
            for entry, entry_payload in cmd["entries"]:
                self._take_delivery(entry, entry_payload)
        else:
            return False
        return True

    def _take_delivery(self, cmd, payload):
        seq = cmd.get("seq")
        hdr = cmd.get("hdr")
        if not _is_uint(seq) or not isinstance(hdr, dict) or payload is None:
            self._ranges_unsafe = True
            raise KimError("malformed DELIVER")
        if seq in self._seen:
            return                      # delivered again on this session: de-duplicate
        self._seen.add(seq)
        bisect.insort(self._outstanding, seq)
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
            if self._take_deliveries(cmd, payload):
                continue
            if cmd["cmd"] == "REJECT":
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
        item = self._prepare(hdr, payload, seal)
        self._send_frames(item.cmd, item.payload or None)
        msg_id = item.msg_id
        return self._wait(lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == msg_id,
                          msg_id, timeout)

    def _prepare(self, hdr, payload, seal):
        """The message as send() puts it on the wire: schema and msg_id set, the
        payload sealed, the header signed and canonical, the SEND map packed."""
        hdr = dict(hdr)
        hdr.setdefault("schema", 1)
        hdr.setdefault("msg_id", self._next_id("m"))
        target = hdr.get("org") if hdr.get("type") == "FORWARD" else hdr.get("recipient")
        payload = bytes(payload or b"")
        if payload and seal and target:
            payload = nacl.public.SealedBox(nacl.public.PublicKey(self.seal_key(target))) \
                .encrypt(payload)
        max_payload = self._max_payload()
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
        cmd = _pack({"cmd": "SEND", "hdr": hdr})
        if len(cmd) > FRAME_MAX:
            raise KimError("command of %d bytes exceeds the frame limit" % len(cmd))
        return _Prepared(hdr.get("msg_id"), cmd, payload)

    def send_many(self, items, seal=True, timeout=None):
        """Sends (hdr, payload) pairs, each as send() would, and waits for all
        their answers. Returns, per item in order, its RECEIPT (a dict with
        msg_id, seq, maybe dup) or its refusal: a Rejected (code, reason,
        text, msg_id, path), returned, not raised, so that one refused
        message hides nothing of the others.

        Version 2 packs them into SEND_BATCH frames (§8.16), version 1 sends
        one SEND after another, a few ahead of their answers. Refusals with
        code 207 (RATE_LIMITED) may be sent again with the same msg_id.
        Raises KimError, before sending anything, when an item cannot be
        prepared (as send() would); when the answers do not all come within
        `timeout` (or another failure stops it) the KimError or Rejected
        raised has `results`: the answers so far, None for the others."""
        if self._sock is None or self.version is None:
            raise KimError("not connected")
        prepared = []
        for i, (hdr, payload) in enumerate(items):
            try:
                prepared.append(self._prepare(hdr, payload, seal))
            except Rejected:
                raise
            except KimError as e:
                raise KimError("item %d: %s" % (i, e)) from e
        results = [None] * len(prepared)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            if self.version >= 2:
                self._send_batches(prepared, results, deadline)
            else:
                self._send_pipelined(prepared, results, deadline)
        except KimError as e:
            e.results = results
            raise
        return results

    def _next_answer(self, deadline, results):
        """The next command from the broker for send_many, deliveries queued."""
        while True:
            cmd, payload = self._recv_cmd(deadline - time.monotonic())
            if cmd is None:
                raise KimError("no answer from the broker in time for %d of %d messages"
                               % (results.count(None), len(results)))
            if not self._take_deliveries(cmd, payload):
                return cmd

    def _stray_reject(self, cmd):
        """A REJECT that answers none of send_many's messages: kept when it is
        about something else (an ACK, an earlier request), raised when it ends
        the session (§7.1)."""
        if cmd.get("msg_id") is None and cmd.get("code") not in (BAD_ACK, RATE_LIMITED):
            raise Rejected(cmd)
        self.late_rejects.append(cmd)

    #   Version 2: SEND_BATCH frames, answered by RECEIPT_BATCH (§8.16–8.17)

    def _send_batches(self, prepared, results, deadline):
        frames = self._batch_frames(prepared)
        in_flight = []                  # _Batch, in the order sent
        refused = []                    # REJECTs of whole frames, not yet matched
        while True:
            while len(in_flight) < BATCHES_IN_FLIGHT:
                batch = next(frames, None)
                if batch is None:
                    break
                self._send_frames(batch.frame)
                in_flight.append(batch)
            if not in_flight:
                return
            cmd = self._next_answer(deadline, results)
            if cmd["cmd"] == "RECEIPT_BATCH":
                self._take_receipt_batch(cmd["entries"], in_flight, results)
            elif cmd["cmd"] == "REJECT" and _refuses_frame(cmd):
                refused.append(cmd)
            elif cmd["cmd"] == "REJECT":
                self._stray_reject(cmd)
            if refused:
                self._take_frame_rejects(refused, in_flight, results)

    def _batch_frames(self, prepared):
        """Yields SEND_BATCH frames of the prepared messages (§5.1): each at most
        BATCH_MAX messages and max_payload + FRAME_MAX bytes; a message that
        would not fit goes first into the next frame."""
        limit = self._max_payload() + FRAME_MAX
        head_max = len(_pack({"cmd": "SEND_BATCH", "count": BATCH_MAX}))
        start, entries, size = 0, [], head_max
        for i, item in enumerate(prepared):
            entry = item.cmd + _pack(item.payload)      # the payload as a bin, maybe c4 00
            if entries and (len(entries) == BATCH_MAX or size + len(entry) > limit):
                yield self._batch(prepared, start, entries)
                start, entries, size = i, [], head_max
            entries.append(entry)
            size += len(entry)
        if entries:
            yield self._batch(prepared, start, entries)

    @staticmethod
    def _batch(prepared, start, entries):
        head = _pack({"cmd": "SEND_BATCH", "count": len(entries)})
        msg_ids = [item.msg_id for item in prepared[start:start + len(entries)]]
        return _Batch(start, msg_ids, head + b"".join(entries))

    @staticmethod
    def _take_receipt_batch(entries, in_flight, results):
        #   The oldest batch it fits: entries without a readable msg_id fit
        #   any place, and the broker answers a connection's batches in turn
        batch = next((b for b in in_flight if b.answered_by(entries)), None)
        if batch is None:
            wrong = next((b for b in in_flight if b.miscounted_by(entries)), None)
            if wrong is not None:
                raise KimError("a RECEIPT_BATCH of %d answers from the broker for a "
                               "SEND_BATCH of %d messages" % (len(entries), len(wrong.msg_ids)))
            return                      # answers a batch no longer waited for
        in_flight.remove(batch)
        for i, (entry, _) in enumerate(entries):
            results[batch.start + i] = _answer(entry)

    @staticmethod
    def _take_frame_rejects(refused, in_flight, results):
        """A frame that does not split is refused whole, by a REJECT without
        msg_id (§5.1), which does not say which frame it refuses. Each frame
        gets one answer, and the broker refuses frames as it reads them, in
        order: so once as many such REJECTs came as frames are unanswered,
        the n-th REJECT answers the n-th of them."""
        if len(refused) > len(in_flight):
            raise KimError("the broker refused more SEND_BATCH frames than are in flight: "
                           "%s" % Rejected(refused[-1]))
        if len(refused) < len(in_flight):
            return
        for batch, reject in zip(in_flight, refused):
            for i, msg_id in enumerate(batch.msg_ids):
                results[batch.start + i] = Rejected(dict(reject, msg_id=msg_id))
        del in_flight[:], refused[:]

    #   Version 1: SENDs sent ahead of their answers, matched by msg_id (§7.1)

    def _send_pipelined(self, prepared, results, deadline):
        waiting = {}                    # msg_id -> indexes sent, in order (ids may repeat)
        for i, item in enumerate(prepared):
            if not isinstance(item.msg_id, str) or not _ID.match(item.msg_id):
                #   Its REJECT cannot name it: send it when nothing else waits
                self._collect(waiting, 0, results, deadline)
                results[i] = self._send_alone(item, deadline)
                continue
            self._collect(waiting, SENDS_IN_FLIGHT - 1, results, deadline)
            self._send_frames(item.cmd, item.payload or None)
            waiting.setdefault(item.msg_id, collections.deque()).append(i)
        self._collect(waiting, 0, results, deadline)

    def _collect(self, waiting, keep, results, deadline):
        """Reads answers until at most `keep` SENDs wait for theirs."""
        while sum(map(len, waiting.values())) > keep:
            cmd = self._next_answer(deadline, results)
            msg_id = cmd.get("msg_id")
            indexes = waiting.get(msg_id) if isinstance(msg_id, str) else None
            if cmd["cmd"] in ("RECEIPT", "REJECT") and indexes:
                results[indexes.popleft()] = _answer(cmd)
                if not indexes:
                    del waiting[msg_id]
            elif cmd["cmd"] == "REJECT":
                self._stray_reject(cmd)

    def _send_alone(self, item, deadline):
        self._send_frames(item.cmd, item.payload or None)
        msg_id = item.msg_id
        try:
            return self._wait(lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == msg_id,
                              msg_id, max(deadline - time.monotonic(), 0))
        except Rejected as e:
            return e

    #   --- receiving ----------------------------------------------------------

    def recv(self, timeout=None):
        """The next delivery, or None when none arrives within `timeout` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._deliveries:
            cmd, payload = self._recv_cmd(deadline - time.monotonic())
            if cmd is None:
                return None
            if cmd["cmd"] == "REJECT":
                self.late_rejects.append(cmd)
            else:
                self._take_deliveries(cmd, payload)
        return self._deliveries.popleft()

    def deliveries(self, timeout=None):
        """Yields deliveries until none arrives for `timeout` seconds."""
        while True:
            d = self.recv(timeout)
            if d is None:
                return
            yield d

    def ack(self, *seqs):
        """Acknowledges deliveries (§8.7): call once they are stored. Under
        version 2 this session's deliveries go as ACK_RANGE (§8.19), a run of
        stored seqs as one range; an earlier session's as ACK."""
        ranged, single = set(), []
        use_ranges = self.version is not None and self.version >= 2 and not self._ranges_unsafe
        for seq in seqs:
            ours = self._forget_outstanding(seq)
            if use_ranges and (ours or (_is_uint(seq) and seq in ranged)):
                ranged.add(seq)
            else:
                single.append(seq)
        pairs = _ack_ranges(sorted(ranged), self._outstanding)
        for i in range(0, len(pairs), RANGES_MAX):
            self._send_cmd({"cmd": "ACK_RANGE",
                            "ranges": [seq for pair in pairs[i:i + RANGES_MAX] for seq in pair]})
        for i in range(0, len(single), ACKS_MAX):
            self._send_cmd({"cmd": "ACK", "seqs": single[i:i + ACKS_MAX]})

    def _forget_outstanding(self, seq):
        """Takes `seq` off the deliveries of this session not yet acked; whether it was one."""
        if not _is_uint(seq):
            return False
        i = bisect.bisect_left(self._outstanding, seq)
        if i < len(self._outstanding) and self._outstanding[i] == seq:
            del self._outstanding[i]
            return True
        return False

    #   --- requests -----------------------------------------------------------

    def ping(self, timeout=None):
        self._send_cmd({"cmd": "PING"})
        self._wait(lambda c: c["cmd"] == "PONG", None, timeout)

    def status(self, timeout=None):
        self._send_cmd({"cmd": "STATUS"})
        return self._wait(lambda c: c["cmd"] == "STATUS_REPLY", None, timeout)["status"]

    def directory(self, org=None, timeout=None, homes=False):
        """The directory's entries (§8.15): dicts with id, name, type, public_body,
        public_key and maybe sign_key; with `homes`, an organisation of another
        district also has `home`, the broker it is homed at (§16.3).

        The list's `matched` is how many organisations matched (the reply's
        `count`). A reply holds at most 128 entries, so a `matched` larger than
        the list means it was cut: ask again with `org` for one that is missing."""
        cmd = {"cmd": "DIRECTORY"}
        if org:
            cmd["org"] = org
        if homes:
            cmd["homes"] = True
        self._send_cmd(cmd)
        reply = self._wait(lambda c: c["cmd"] == "DIRECTORY_REPLY", None, timeout)
        return Directory(reply["orgs"], reply.get("count", len(reply["orgs"])))

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
