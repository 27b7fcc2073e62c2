"""Outside conformance check of the Python client library `kim` (agents/python/kim),
written from its documentation alone: the README section "Python client", the module,
class and method docstrings of kim/__init__.py, kim/client.py and kim/certs.py, the
examples in agents/python/examples, and proto/PROTOCOL.md for what the wire means.

Every expectation cites the docstring or README line it comes from ("client.Client.send:"
names the docstring of Client.send, "§8.3" a section of PROTOCOL.md). Observations that
must not depend on the library under test (what travels on the wire, how it is sealed and
signed) are made with a raw pyzmq DEALER session (class Raw) and pynacl directly.

Each test that depends on a mailbox's contents starts a broker of its own (they start in
milliseconds); every wait is bounded."""
import itertools
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import msgpack
import nacl.hash
import nacl.public
import nacl.signing
import pytest
import zmq
import zmq.auth
import zmq.utils.z85
from nacl.encoding import RawEncoder

import kim
import kim.certs
from conftest import new_broker

JC, SOZ, AA, AUDITOR = "jc.rheine", "soz.rheine", "aa.rheine", "dsb.steinfurt"
STATUTE = {"kind": "statute", "citation": "SGB X §69(1)1"}
WAIT = 5.0              # s an answer or a delivery may take at most
QUIET = 0.4             # s without a delivery that count as "nothing came"
ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")

#   §9: the header fields in canonical order (the table of §9), and legal_basis's keys
CANONICAL = ("type", "schema", "msg_id", "created_at", "sender", "recipient", "referral_id",
             "ref_msg_id", "case_id", "sender_case_ref", "recipient_case_ref", "subject",
             "purpose", "legal_basis", "categories", "deadline", "priority", "code", "org",
             "note", "referrals", "consent", "recipients", "purposes", "explicit",
             "valid_until", "giver", "rule", "payload_len", "payload_hash", "sig")

_ids = itertools.count(1)


def uid(tag):
    return "P-%s-%x-%d" % (tag, os.getpid(), next(_ids))


def referral(rid=None, case_id=None, recipient=SOZ, **extra):
    """A REFERRAL under a statute the shipped policy allows (jc/soz/aa, benefits)."""
    hdr = {"type": "REFERRAL", "recipient": recipient, "referral_id": rid or uid("R"),
           "case_id": case_id or uid("C"), "subject": "p-7f3a", "purpose": "benefits",
           "legal_basis": dict(STATUTE)}
    hdr.update(extra)
    return hdr


def blake2b(data):
    return nacl.hash.blake2b(bytes(data), digest_size=32, encoder=RawEncoder)


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def verifies(hdr, sign_key_z85):
    """§13.4, computed here without the library: Ed25519 over BLAKE2b-256(canonical
    header without sig and rule) || payload_hash. The header is re-ordered by the
    table of §9 (canonical order, §6 rule 8), legal_basis by its table."""
    signed = {k: hdr[k] for k in CANONICAL if k in hdr and k not in ("sig", "rule")}
    if "legal_basis" in signed:
        signed["legal_basis"] = {k: signed["legal_basis"][k] for k in
                                 ("kind", "consent_id", "citation") if k in signed["legal_basis"]}
    key = nacl.signing.VerifyKey(zmq.utils.z85.decode(sign_key_z85))
    try:
        key.verify(blake2b(pack(signed)) + bytes(hdr["payload_hash"]), bytes(hdr["sig"]))
        return True
    except nacl.exceptions.BadSignatureError:
        return False


def receive(client, count=1, timeout=WAIT, ack=True, match=None):
    """Deliveries until `count` matching ones came (acknowledging each unless ack=False)."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        d = client.recv(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
        if d is None:
            continue
        if ack:
            client.ack(d.seq)
        if match is None or match(d):
            got.append(d)
    assert len(got) == count, "%d of %d deliveries came" % (len(got), count)
    return got


def nothing_comes(client, seconds=QUIET):
    d = client.recv(timeout=seconds)
    return d is None


class Raw:
    """A session spoken with pyzmq alone (PROTOCOL.md §15), keys read with
    zmq.auth.load_certificate: what really travels on the wire."""

    def __init__(self, b, org, window=16, versions=(1,)):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        public, secret = zmq.auth.load_certificate(b.cert_secret(org))
        self.public, self.secret = public, secret
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.curve_serverkey = zmq.auth.load_certificate(b.broker_cert)[0]
        self.sock.connect(b.endpoint)
        self.send({"cmd": "HELLO", "versions": list(versions), "agent": "raw/1",
                   "window": window})
        self.welcome, _ = self.recv()
        assert self.welcome and self.welcome["cmd"] == "WELCOME", self.welcome

    def send(self, cmd, payload=None):
        self.sock.send_multipart([pack(cmd)] + ([payload] if payload is not None else []))

    def recv(self, timeout=WAIT):
        if not self.sock.poll(int(timeout * 1000)):
            return None, None
        frames = self.sock.recv_multipart()
        return (msgpack.unpackb(frames[0], raw=False),
                frames[1] if len(frames) > 1 else None)

    def deliver(self, timeout=WAIT):
        """The next DELIVER (version 1): (map, raw payload)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cmd, payload = self.recv(deadline - time.monotonic())
            if cmd is not None and cmd["cmd"] == "DELIVER":
                return cmd, payload
        raise AssertionError("no DELIVER on the raw session")

    def open(self, sealed):
        return nacl.public.SealedBox(nacl.public.PrivateKey(
            zmq.utils.z85.decode(self.secret))).decrypt(bytes(sealed))

    def close(self):
        self.send({"cmd": "BYE"})
        self.sock.close(linger=0)


@pytest.fixture
def lab():
    """lab.broker(edit=None, orgs=None, **sections): a broker of the test's own (its
    config text passed through `edit` before it starts), finished (it must exit 0) after
    the test; lab.client(b, org, **options): a connected kim.Client (as conftest's
    connect_to), closed after the test; lab.raw(b, org, ...): a Raw session."""
    class Lab:
        def __init__(self):
            self.brokers, self.clients, self.raws, self.folders = [], [], [], []

        def broker(self, edit=None, orgs=None, **sections):
            b = new_broker(orgs, **sections)
            if edit is not None:
                with open(b.config, encoding="utf-8") as f:
                    text = f.read()
                with open(b.config, "w", encoding="utf-8") as f:
                    f.write(edit(b, text))
            self.brokers.append(b)
            return b.start()

        def client(self, b, org, **options):
            c = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(org), **options)
            self.clients.append(c)
            c.connect()
            return c

        def raw(self, b, org, **options):
            r = Raw(b, org, **options)
            self.raws.append(r)
            return r

        def folder(self):
            self.folders.append(tempfile.mkdtemp(prefix="kim-pyspec-"))
            return self.folders[-1]

    the = Lab()
    yield the
    for b in the.brokers:
        if b.process is not None and b.process.poll() is None:
            os.kill(b.process.pid, signal.SIGCONT)          # after a SIGSTOP test
    for c in the.clients:
        c.close()
    for r in the.raws:
        r.close()
    for b in the.brokers:
        b.finish()
    for f in the.folders:
        shutil.rmtree(f, ignore_errors=True)


def set_org_line(text, org, line):
    """The config text with `line` added to the orgs entry of `org`."""
    marker = "    %s\n        name = " % org
    assert marker in text
    return text.replace(marker, "    %s\n        %s\n        name = " % (org, line), 1)


#   --- the package (kim/__init__.py) -----------------------------------------------------

def test_package_exports_the_documented_names():
    # kim/__init__.py: __all__ = Client, Delivery, Rejected, KimError, canonical_header,
    # sign_header, load_cert, load_sign_key, write_cert
    for name in ("Client", "Delivery", "Rejected", "KimError", "canonical_header",
                 "sign_header", "load_cert", "load_sign_key", "write_cert"):
        assert hasattr(kim, name), name
    # client.KimError: "A local failure"; client.Rejected(KimError): "The broker answered REJECT"
    assert issubclass(kim.KimError, Exception) and issubclass(kim.Rejected, kim.KimError)


#   --- certs.py ----------------------------------------------------------------------------

def test_write_cert_makes_a_zcert_pair_the_secret_one_0600(tmp_path):
    stem = str(tmp_path / "jc.x")
    public = kim.write_cert(stem, "jc.x")
    # certs.write_cert: "Makes a CURVE key pair: STEM.cert and STEM.cert_secret (0600).
    # Returns the public key."
    assert isinstance(public, str) and len(public) == 40
    assert stat.S_IMODE(os.stat(stem + ".cert_secret").st_mode) == 0o600
    # certs module: "A NAME.cert holds curve/public-key, a NAME.cert_secret also
    # curve/secret-key ... in Z85" -- ZeroMQ's ZPL certificates: pyzmq reads them too
    zpub, zsec = zmq.auth.load_certificate(stem + ".cert")
    assert zpub.decode() == public and zsec is None
    zpub, zsec = zmq.auth.load_certificate(stem + ".cert_secret")
    assert zpub.decode() == public and zmq.curve_public(zsec) == zpub
    # certs.load_cert: "(public_z85, secret_z85 or None) of a zcert file"
    assert kim.load_cert(stem + ".cert") == (public, None)
    assert kim.load_cert(stem + ".cert_secret") == (public, None)      # secret=False default
    assert kim.load_cert(stem + ".cert_secret", secret=True) == (public, zsec.decode())


def test_load_cert_checks_that_public_and_secret_belong_together(tmp_path):
    stem = str(tmp_path / "a")
    kim.write_cert(stem, "a")
    other = kim.write_cert(str(tmp_path / "b"), "b")
    _, secret = kim.load_cert(stem + ".cert_secret", secret=True)
    with open(str(tmp_path / "mixed.cert_secret"), "w", encoding="utf-8") as f:
        f.write('curve\n    public-key = "%s"\n    secret-key = "%s"\n' % (other, secret))
    # certs.load_cert: "checks that they belong together" (how it says so is not documented)
    with pytest.raises(Exception):
        kim.load_cert(str(tmp_path / "mixed.cert_secret"), secret=True)


def test_write_sign_key_and_load_sign_key(tmp_path):
    stem = str(tmp_path / "jc.x")
    public = kim.certs.write_sign_key(stem)
    # certs.write_sign_key: "Makes an Ed25519 key pair: STEM.sign_secret (0600). Returns
    # the public key in Z85."
    assert isinstance(public, str) and len(public) == 40
    assert stat.S_IMODE(os.stat(stem + ".sign_secret").st_mode) == 0o600
    # certs.load_sign_key: "The 32-byte Ed25519 seed of a NAME.sign_secret file"
    seed = kim.load_sign_key(stem + ".sign_secret")
    assert isinstance(seed, bytes) and len(seed) == 32
    key = nacl.signing.SigningKey(seed)
    assert zmq.utils.z85.encode(bytes(key.verify_key)).decode() == public


def test_load_sign_key_checks_that_public_and_secret_belong_together(tmp_path):
    kim.certs.write_sign_key(str(tmp_path / "a"))
    other = kim.certs.write_sign_key(str(tmp_path / "b"))
    with open(str(tmp_path / "a.sign_secret"), encoding="utf-8") as f:
        secret_line = [line for line in f if "secret-key" in line][0]
    with open(str(tmp_path / "mixed.sign_secret"), "w", encoding="utf-8") as f:
        f.write('sign\n    public-key = "%s"\n%s' % (other, secret_line))
    # certs module: a NAME.sign_secret holds sign/public-key and sign/secret-key
    # (the pair; load_sign_key's checking mirrors load_cert's -- not documented how)
    with pytest.raises(Exception):
        kim.load_sign_key(str(tmp_path / "mixed.sign_secret"))


def _kim_tool():
    """The `kim` command-line tool: KIM_CLI_BIN, else beside KIM_AGENT_BIN, else the build's."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("KIM_CLI_BIN", "")]
    if os.environ.get("KIM_AGENT_BIN"):
        candidates.append(os.path.join(os.path.dirname(os.environ["KIM_AGENT_BIN"]), "kim"))
    candidates.append(os.path.join(here, "..", "..", "..", "build", "test", "agents", "cli", "kim"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    pytest.skip("no kim tool (set KIM_CLI_BIN)")


def test_files_of_kim_keygen_load(tmp_path):
    # certs module: "Key files: zcert (ZeroMQ's ZPL certificates, as `kim keygen` writes them)"
    kim_tool = _kim_tool()
    import json
    made = json.loads(subprocess.run([kim_tool, "keygen", "jc.kg", "--dir", str(tmp_path)],
                                     capture_output=True, text=True, check=True).stdout)
    signed = json.loads(subprocess.run(
        [kim_tool, "keygen", "jc.kg", "--dir", str(tmp_path), "--sign"],
        capture_output=True, text=True, check=True).stdout)
    public, secret = kim.load_cert(str(tmp_path / "jc.kg.cert_secret"), secret=True)
    assert public == made["public_key"] and len(secret) == 40
    assert kim.load_cert(str(tmp_path / "jc.kg.cert")) == (public, None)
    seed = kim.load_sign_key(str(tmp_path / "jc.kg.sign_secret"))
    assert zmq.utils.z85.encode(bytes(nacl.signing.SigningKey(seed).verify_key)).decode() \
        == signed["sign_key"]


#   --- canonical_header and sign_header ---------------------------------------------------

def _full_header():
    return {"type": "REFERRAL", "schema": 1, "msg_id": "m-1", "created_at": 1718000000000,
            "sender": "jc.rheine", "recipient": "soz.rheine", "referral_id": "r-1",
            "case_id": "c-1", "sender_case_ref": "JC/17", "subject": "p-1",
            "purpose": "benefits",
            "legal_basis": {"kind": "consent", "consent_id": "g-1"},
            "categories": ["art9", "contact"], "deadline": 1719000000000,
            "note": "n", "payload_len": 60, "payload_hash": b"\x01" * 32}


def test_canonical_header_orders_fields_as_section_9():
    hdr = _full_header()
    shuffled = dict(reversed(list(hdr.items())))
    shuffled["legal_basis"] = {"consent_id": "g-1", "kind": "consent"}
    # client.canonical_header: "The header as a dict in canonical order (§6 rule 8, §9)"
    out = kim.canonical_header(shuffled)
    assert list(out) == [k for k in CANONICAL if k in hdr]
    # §9: legal_basis "a map with keys in this order: kind, consent_id, citation"
    assert list(out["legal_basis"]) == ["kind", "consent_id"]
    # §6 rule 8: "Equal values then encode to equal bytes"
    assert pack(out) == pack(kim.canonical_header(hdr))
    assert {k: v for k, v in out.items()} == hdr


def test_canonical_header_writes_categories_in_their_order():
    hdr = _full_header()
    hdr["categories"] = ["contact", "residence_status", "art9"]
    # §9: "categories names, written in this order: art9, sgb8_s65, stgb203,
    # residence_status, contact"; canonical_header cites §9
    assert kim.canonical_header(hdr)["categories"] == ["art9", "residence_status", "contact"]


def test_canonical_header_leaves_absent_fields_out():
    hdr = _full_header()
    hdr.update(note="", deadline=0, categories=[], sender_case_ref="")
    # client.canonical_header: "absent fields left out"; §6 rule 7: "An optional field
    # with an empty string, zero, false or an empty list means the same as the field
    # left out; the canonical encoding leaves it out"
    out = kim.canonical_header(hdr)
    for k in ("note", "deadline", "categories", "sender_case_ref"):
        assert k not in out, k
    assert out["msg_id"] == "m-1"


def test_canonical_header_leaves_x_keys_out():
    # §6 rule 2: keys starting with "x-" are ignored by receivers, "not stored and not
    # forwarded", so they are no part of the header the broker hashes and a signature covers
    hdr = referral()
    hdr["x-trace"] = "t-1"
    out = kim.canonical_header(hdr)
    assert "x-trace" not in out and out == kim.canonical_header(referral(hdr["referral_id"],
                                                                        hdr["case_id"]))
    # any other key the table of §9 does not name is still refused
    with pytest.raises(kim.KimError):
        kim.canonical_header(dict(referral(), trace="t-1"))


def test_send_with_an_x_key_is_signed_and_delivered_without_it(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    raw = lab.raw(b, SOZ)
    hdr = referral()
    hdr["x-trace"] = "t-1"
    r = jc.send(hdr, b"payload")
    cmd, _ = raw.deliver()
    assert cmd["seq"] == r["seq"] and "x-trace" not in cmd["hdr"]
    assert verifies(cmd["hdr"], jc.directory(JC)[0]["sign_key"])
    raw.send({"cmd": "ACK", "seqs": [cmd["seq"]]})


def test_canonical_header_matches_the_brokers_order(lab):
    # §6 rule 8: "the broker stores and forwards headers canonically"; the client's
    # canonical order (canonical_header, §6 rule 8, §9) is the same
    b = lab.broker()
    jc, soz = lab.client(b, JC), lab.client(b, SOZ)
    jc.send(referral(deadline=int(time.time() * 1000) + 86400000,
                     categories=["contact"], note="x", sender_case_ref="JC-1"), b"p")
    (d,) = receive(soz)
    assert list(kim.canonical_header(d.hdr)) == list(d.hdr)


def _sign(hdr, key):
    """sign_header's signing_key: its type is not documented (a nacl SigningKey or the
    32-byte seed load_sign_key returns); either is tried."""
    try:
        return kim.sign_header(hdr, key)
    except (TypeError, AttributeError, ValueError):
        return kim.sign_header(hdr, bytes(key))


def test_sign_header_signs_per_section_13_4():
    key = nacl.signing.SigningKey.generate()
    public = zmq.utils.z85.encode(bytes(key.verify_key)).decode()
    hdr = _full_header()
    hdr["rule"] = "P1"
    hdr["sig"] = b"\x00" * 64
    shuffled = dict(reversed(list(hdr.items())))
    # client.sign_header: "Sets hdr["sig"] per §13.4: Ed25519 over BLAKE2b-256(canonical
    # header without sig and rule) || payload_hash"
    _sign(shuffled, key)
    assert isinstance(shuffled["sig"], (bytes, bytearray)) and len(shuffled["sig"]) == 64
    assert verifies(shuffled, public)
    # the signature does not cover `rule` (§13.4: "a verifier removes rule as well as sig")
    del shuffled["rule"]
    assert verifies(shuffled, public)
    shuffled["note"] = "changed"
    assert not verifies(shuffled, public)


#   --- Client: connecting ----------------------------------------------------------------

def test_connect_returns_the_welcome_and_version_2_by_default(lab):
    b = lab.broker()
    c = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(SOZ), window=7)
    try:
        # client.Client.connect: "Connects and says HELLO; returns the WELCOME."
        w = c.connect()
        assert w["cmd"] == "WELCOME" and w["org"] == SOZ and w["window"] == 7
        for key in ("version", "broker", "heartbeat_ms", "max_payload"):     # §8.2
            assert key in w
        # README: "The client speaks protocol version 2 by default (it offers versions 1
        # and 2; the broker chooses)"; Client: "The session speaks what WELCOME chose (`version`)"
        assert w["version"] == 2 and c.version == 2
    finally:
        c.close()


def test_default_window_is_64(lab):
    b = lab.broker()
    # Client.__init__ signature: window=64 ("deliveries accepted in flight (HELLO window)")
    w = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(AA))
    try:
        assert w.connect()["window"] == 64
    finally:
        w.close()


@pytest.mark.parametrize("versions,chosen", [((1, 2), 2), ([1, 2], 2), ((2, 1), 2), ((2,), 2),
                                             ((1,), 1)])
def test_versions_offered(lab, versions, chosen):
    b = lab.broker()
    # Client: "versions  protocol versions offered in HELLO; (1,) insists on version 1.
    # The session speaks what WELCOME chose (`version`)"; §8.1: highest both speak
    c = lab.client(b, SOZ, versions=versions)
    assert c.version == chosen


def test_context_manager_connects_and_close_returns_unacked_deliveries(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    r = jc.send(referral(), b"comes again")
    # kim/__init__.py: "with kim.Client(...) as c: c.send(...) ... for d in c.deliveries()"
    # (no connect() call: the with statement connects)
    with kim.Client(b.endpoint, b.broker_cert, b.cert_secret(SOZ)) as c:
        assert isinstance(c, kim.Client) and c.version == 2
        (d,) = receive(c, ack=False)
        assert d.seq == r["seq"]
    # client.Client.close: "Says BYE and closes; deliveries not acknowledged return to the
    # mailbox" -- at once (§8.12), not after the redelivery timeout (60 s by default)
    again = lab.client(b, SOZ)
    (d2,) = receive(again, timeout=2.0)
    assert d2.seq == r["seq"] and d2.payload == b"comes again"


def test_tcp_endpoint(lab):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def bind_tcp(b, text):
        return text.replace('bind = "%s"' % b.endpoint,
                            'bind = "%s,tcp://127.0.0.1:%d"' % (b.endpoint, port), 1)
    b = lab.broker(edit=bind_tcp)
    # Client: 'endpoint  "tcp://host:port" or "ipc://path"'
    c = kim.Client("tcp://127.0.0.1:%d" % port, b.broker_cert, b.cert_secret(SOZ))
    try:
        assert c.connect()["org"] == SOZ
        assert [e["id"] for e in c.directory(SOZ)] == [SOZ]
    finally:
        c.close()


def test_wrong_broker_key_is_a_kimerror_in_time(lab, tmp_path):
    b = lab.broker()
    kim.write_cert(str(tmp_path / "impostor"), "impostor")
    c = kim.Client(b.endpoint, str(tmp_path / "impostor.cert"), b.cert_secret(SOZ), timeout=1.0)
    start = time.monotonic()
    # KimError: "A local failure: no answer in time, a bad key, ..."; connect: "Raises
    # Rejected or KimError" -- the CURVE handshake fails, the broker never answers
    with pytest.raises(kim.KimError) as e:
        c.connect()
    assert not isinstance(e.value, kim.Rejected)
    assert time.monotonic() - start < 5
    c.close()


_UNREGISTERED = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import kim
c = kim.Client(sys.argv[2], sys.argv[3], sys.argv[4], timeout=1.0)
start = time.monotonic()
try:
    c.connect()
    print(json.dumps({"connected": True}), flush=True)
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "rejected": isinstance(e, kim.Rejected),
                      "kimerror": isinstance(e, kim.KimError),
                      "seconds": time.monotonic() - start}), flush=True)
c.close()
print(json.dumps({"closed": True}), flush=True)
"""


@pytest.fixture(scope="module")
def unregistered_run():
    """Runs, in a process of its own (it may hang), a Client with a key the broker does
    not know: connect(), then close(). The JSON lines it printed within 3.5 s."""
    import json
    b = new_broker().start()
    folder = tempfile.mkdtemp(prefix="kim-pyspec-")
    try:
        kim.write_cert(os.path.join(folder, "jc.nobody"), "jc.nobody")
        package = os.path.dirname(os.path.dirname(os.path.abspath(kim.__file__)))
        proc = subprocess.Popen([sys.executable, "-c", _UNREGISTERED, package, b.endpoint,
                                 b.broker_cert, os.path.join(folder, "jc.nobody.cert_secret")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, _ = proc.communicate(timeout=3.5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return [json.loads(line) for line in out.splitlines() if line.strip()]
    finally:
        b.finish()
        shutil.rmtree(folder, ignore_errors=True)


def test_unregistered_key_is_a_kimerror_in_time(unregistered_run):
    lines = unregistered_run
    # §14: "A key the broker does not know gets no answer ... the client sees only a
    # timeout"; KimError: "A local failure: no answer in time"; connect: "Raises Rejected
    # or KimError"
    assert lines and lines[0].get("kimerror") is True and lines[0]["rejected"] is False, lines
    assert lines[0]["seconds"] < 4


def test_close_after_a_connect_that_got_no_answer_returns(unregistered_run):
    lines = unregistered_run
    assert lines and lines[0].get("kimerror") is True, lines
    # client.Client.close: "Says BYE and closes"
    assert {"closed": True} in lines, lines


def test_a_bad_key_file_is_a_kimerror(tmp_path):
    kim.write_cert(str(tmp_path / "broker"), "broker")
    kim.write_cert(str(tmp_path / "a"), "a")
    other = kim.write_cert(str(tmp_path / "b"), "b")
    _, secret = kim.load_cert(str(tmp_path / "a.cert_secret"), secret=True)
    bad = str(tmp_path / "jc.bad.cert_secret")
    with open(bad, "w", encoding="utf-8") as f:
        f.write('curve\n    public-key = "%s"\n    secret-key = "%s"\n' % (other, secret))
    # KimError: "A local failure: no answer in time, a bad key, a broken frame"
    with pytest.raises(kim.KimError):
        kim.Client("ipc://%s/none.sock" % tmp_path, str(tmp_path / "broker.cert"), bad)


def test_revoked_org_connect_raises_rejected_210(lab):
    b = lab.broker(edit=lambda b, t: set_org_line(t, AA, "revoked = 1"))
    c = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(AA), timeout=WAIT)
    # connect: "Raises Rejected or KimError"; §4: a revoked key's "every command on its
    # connection is answered with REJECT REVOKED (210) and no session starts"
    with pytest.raises(kim.Rejected) as e:
        c.connect()
    assert (e.value.code, e.value.reason) == (210, "REVOKED")
    # §6.1: refusals of the session "(... REVOKED ...) have the empty path"; no msg_id
    assert not e.value.path and e.value.msg_id is None
    assert isinstance(e.value.text, str)
    c.close()
    # §8.15: the directory lists agencies "whose key is not revoked"
    assert AA not in [e["id"] for e in lab.client(b, JC).directory()]


def test_revocation_mid_session_ends_it_with_rejected_210(lab):
    b = lab.broker()
    aa = lab.client(b, AA, window=0)
    with open(b.config, encoding="utf-8") as f:
        text = f.read()
    with open(b.config, "w", encoding="utf-8") as f:
        f.write(set_org_line(text, AA, "revoked = 1"))
    os.kill(b.process.pid, signal.SIGHUP)
    # README "Keys, roles and revocation": "Every session of a revoked or rotated key ends
    # at once with REVOKED"; §4: then every command is answered REJECT REVOKED.
    # client.Client.directory asks DIRECTORY, whose REJECT carries no msg_id (§7.1)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            aa.directory(timeout=1.0)
        except kim.Rejected as e:
            assert (e.code, e.reason) == (210, "REVOKED")
            break
        assert time.monotonic() < deadline, "the revoked session goes on"
        time.sleep(0.05)


#   --- sign_secret ------------------------------------------------------------------------

def test_sign_secret_none_looks_beside_the_cert_an_explicit_path_signs(lab):
    b = lab.broker()
    folder = lab.folder()
    bare = os.path.join(folder, "jc.rheine.cert_secret")      # no sign_secret beside it
    shutil.copy(b.cert_secret(JC), bare)
    sign_file = os.path.join(b.keys, JC + ".sign_secret")
    # Client: "sign_secret  the organisation's NAME.sign_secret; None: look beside
    # cert_secret" -- nothing beside: no signature, which jc's registered sign_key makes
    # the broker refuse (§13.4: BAD_SIGNATURE, path hdr.sig)
    c = kim.Client(b.endpoint, b.broker_cert, bare)
    c.connect()
    try:
        with pytest.raises(kim.Rejected) as e:
            c.send(referral(), b"x")
        assert (e.value.code, e.value.reason, e.value.path) == (211, "BAD_SIGNATURE", "hdr.sig")
    finally:
        c.close()
    # an explicit path: signed, and the signature verifies with the directory's sign_key
    c = kim.Client(b.endpoint, b.broker_cert, bare, sign_secret=sign_file)
    c.connect()
    try:
        r = c.send(referral(), b"signed")
        assert r["seq"] > 0
    finally:
        c.close()
    soz = lab.client(b, SOZ)
    (d,) = receive(soz)
    entry = soz.directory(JC)[0]
    assert "sig" in d.hdr and verifies(d.hdr, entry["sign_key"])


def test_keys_of_kim_keygen_connect_and_sign(lab):
    # README "Python client": "CURVE connection with the same zcert files as the kim tool";
    # Client sign_secret None: "look beside cert_secret" (kim keygen --sign writes
    # NAME.sign_secret beside NAME.cert_secret)
    kim_tool = _kim_tool()
    import json
    folder = lab.folder()
    made = json.loads(subprocess.run([kim_tool, "keygen", AA, "--dir", folder],
                                     capture_output=True, text=True, check=True).stdout)
    signed = json.loads(subprocess.run([kim_tool, "keygen", AA, "--dir", folder, "--sign"],
                                       capture_output=True, text=True, check=True).stdout)

    def register(b, text):
        old = kim.load_cert(os.path.join(b.keys, AA + ".cert"))[0]
        text = text.replace('public_key = "%s"' % old, 'public_key = "%s"' % made["public_key"])
        return set_org_line(text, AA, 'sign_key = "%s"' % signed["sign_key"])
    b = lab.broker(edit=register)
    c = kim.Client(b.endpoint, b.broker_cert, os.path.join(folder, AA + ".cert_secret"))
    try:
        assert c.connect()["org"] == AA
        r = c.send(referral(), b"from keygen keys")           # refused unless signed (§13.4)
        assert r["seq"] > 0
    finally:
        c.close()
    soz = lab.client(b, SOZ)
    (d,) = receive(soz)
    assert d.payload == b"from keygen keys" and verifies(d.hdr, signed["sign_key"])


def test_an_org_without_sign_key_sends_no_sig(lab):
    b = lab.broker()
    soz, aa = lab.client(b, SOZ), lab.client(b, AA)
    # Client sign_secret None: "look beside cert_secret" -- soz has none (conftest signs
    # jc only), so its header carries no sig (§13.4: a sig would be refused)
    soz.send(referral(recipient=AA), b"unsigned")
    (d,) = receive(aa)
    assert "sig" not in d.hdr and d.payload == b"unsigned"


#   --- send ------------------------------------------------------------------------------

def test_send_sets_schema_and_msg_id_and_returns_the_receipt(lab):
    b = lab.broker()
    jc, soz = lab.client(b, JC), lab.client(b, SOZ)
    hdr = referral()
    assert "msg_id" not in hdr and "schema" not in hdr
    # client.Client.send: "returns the RECEIPT (a dict with seq, maybe dup). Sets schema
    # and msg_id if missing."
    r = jc.send(hdr, b"p")
    assert isinstance(r, dict) and isinstance(r["seq"], int) and r["seq"] > 0
    assert not r.get("dup")
    # §8.4: the RECEIPT's msg_id is the SEND's hdr.msg_id, an id (§6 rule 6)
    assert 1 <= len(r["msg_id"]) <= 64 and set(r["msg_id"]) <= ID_CHARS
    (d,) = receive(soz)
    assert d.hdr["msg_id"] == r["msg_id"] and d.hdr["schema"] == 1 and d.seq == r["seq"]
    # a msg_id given is kept
    r2 = jc.send(referral(msg_id="m-given-1"), b"")
    assert r2["msg_id"] == "m-given-1"


def test_send_seals_to_the_recipients_directory_key_and_signs(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    raw = lab.raw(b, SOZ)
    plaintext = "Antrag auf Unterstützung".encode()
    r = jc.send(referral(), plaintext)
    cmd, wire = raw.deliver()
    assert cmd["seq"] == r["seq"]
    # client.Client.send: "A non-empty payload is sealed to the recipient"; §13.2:
    # crypto_box_seal to the recipient's CURVE public key, 48 bytes more than the plaintext
    assert len(wire) == len(plaintext) + 48 and wire != plaintext
    assert raw.open(wire) == plaintext
    entry = jc.directory(SOZ)[0]
    assert entry["public_key"] == raw.public.decode()
    hdr = cmd["hdr"]
    assert hdr["payload_len"] == len(wire) and hdr["payload_hash"] == blake2b(wire)
    # "With a signing key the header is signed (§13.4)": over the sealed payload's hash
    assert verifies(hdr, jc.directory(JC)[0]["sign_key"])
    raw.send({"cmd": "ACK", "seqs": [cmd["seq"]]})


def test_send_seal_false_sends_plaintext_and_the_delivery_is_flagged(lab):
    b = lab.broker()
    jc, soz = lab.client(b, JC), lab.client(b, SOZ)
    raw = lab.raw(b, AA)
    # client.Client.send: "sealed to the recipient ... unless seal is False"
    jc.send(referral(recipient=AA), b"plain text", seal=False)
    cmd, wire = raw.deliver()
    assert wire == b"plain text" and cmd["hdr"]["payload_len"] == len(b"plain text")
    raw.send({"cmd": "ACK", "seqs": [cmd["seq"]]})
    # Delivery: "sealed_error (True when a non-empty payload did not open, §13.2)"; §13.2:
    # "The reference client sets sealed_error on such a delivery and gives the bytes as
    # received"
    jc.send(referral(), b"plain text", seal=False)
    (d,) = receive(soz)
    assert d.sealed_error is True and d.payload == b"plain text"


def test_empty_payload_is_not_sealed(lab):
    b = lab.broker()
    jc, soz = lab.client(b, JC), lab.client(b, SOZ)
    jc.send(referral(), b"")
    (d,) = receive(soz)
    # send: "A non-empty payload is sealed"; §13.2 "An empty payload is not sealed";
    # §9: payload_len "absent when 0"; Delivery.sealed_error only for a non-empty payload
    assert d.payload == b"" and d.sealed_error is False and "payload_len" not in d.hdr
    assert d.hdr["payload_hash"] == blake2b(b"")


def test_forward_payload_is_sealed_to_org(lab):
    b = lab.broker()
    jc, soz, aa = lab.client(b, JC), lab.client(b, SOZ), lab.client(b, AA)
    rid = uid("R")
    jc.send(referral(rid), b"to soz")
    receive(soz)
    fid = uid("F")
    # client.Client.send: "A non-empty payload is sealed to the recipient (`org` for FORWARD)"
    r = soz.send({"type": "FORWARD", "msg_id": fid, "recipient": JC, "referral_id": rid,
                  "org": AA, "purpose": "employment", "legal_basis": dict(STATUTE)},
                 b"for aa only")
    (to_aa,) = receive(aa, match=lambda d: d.hdr["msg_id"] == fid)
    assert to_aa.seq == r["seq"] and to_aa.payload == b"for aa only"
    assert to_aa.sealed_error is False and to_aa.hdr["payload_len"] == len(b"for aa only") + 48
    # §8.6: the original sender of a FORWARD gets the header with an empty frame 1
    (to_jc,) = receive(jc, match=lambda d: d.hdr["msg_id"] == fid)
    assert to_jc.payload == b"" and to_jc.sealed_error is False


def test_rejected_carries_code_reason_text_msg_id_path(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    # client.Client.send: "Raises Rejected on REJECT"; Rejected: "(code, reason, text,
    # msg_id, path)" (send_many's docstring names the attributes)
    with pytest.raises(kim.Rejected) as e:
        jc.send(referral(purpose="Not A Code", msg_id="m-bad-purpose"), b"")
    r = e.value
    assert isinstance(r, kim.KimError)
    assert (r.code, r.reason, r.path, r.msg_id) == (110, "BAD_VALUE", "hdr.purpose",
                                                    "m-bad-purpose")
    assert isinstance(r.text, str)
    # §8.3: a REJECTed message's msg_id is not used up
    ok = jc.send(referral(msg_id="m-bad-purpose"), b"")
    assert ok["seq"] > 0 and not ok.get("dup")


def test_send_with_a_msg_id_the_broker_cannot_echo_raises_rejected(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    start = time.monotonic()
    # send: "Raises Rejected on REJECT"; §6 rule 6: a msg_id outside [A-Za-z0-9._:-] is
    # BAD_ID, and its REJECT cannot carry it (§7.1)
    with pytest.raises(kim.Rejected) as e:
        jc.send(referral(msg_id="bad id!"), b"", timeout=WAIT)
    assert (e.value.code, e.value.reason, e.value.path) == (105, "BAD_ID", "hdr.msg_id")
    assert time.monotonic() - start < WAIT
    assert jc.directory(JC)                             # the session goes on (§7.2)


@pytest.mark.parametrize("versions", [(2, 1), (1,)])
def test_send_again_with_the_same_msg_id_is_a_dup_whatever_the_header(lab, versions):
    b = lab.broker()
    jc = lab.client(b, JC, versions=versions)
    first = jc.send(referral(msg_id="m-once"), b"first")
    # README/send: "returns the RECEIPT (a dict with seq, maybe dup)"; §8.3 step 7: a
    # msg_id used before "is answered with RECEIPT dup: true and the original's seq,
    # whatever the new header says"
    again = jc.send(referral(msg_id="m-once", purpose="employment"), b"other")
    assert again.get("dup") is True and again["seq"] == first["seq"]
    assert not first.get("dup")


def test_send_timeout_is_a_kimerror(lab):
    b = lab.broker()
    soz = lab.client(b, SOZ, timeout=0.5)
    soz.directory(JC)                                   # the sealing key, asked beforehand
    os.kill(b.process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        # KimError: "no answer in time"; send(..., timeout=...)
        with pytest.raises(kim.KimError) as e:
            soz.send(referral(recipient=JC), b"", timeout=0.5)
        assert not isinstance(e.value, kim.Rejected)
        assert time.monotonic() - start < 3
        # the Client's own timeout (Client(..., timeout=0.5)) bounds a request too
        start = time.monotonic()
        with pytest.raises(kim.KimError):
            soz.directory()
        assert time.monotonic() - start < 3
    finally:
        os.kill(b.process.pid, signal.SIGCONT)


#   --- send_many -------------------------------------------------------------------------

@pytest.mark.parametrize("versions", [(2, 1), (1,)])
def test_send_many_item_that_cannot_be_prepared_raises_before_sending_anything(lab, versions):
    b = lab.broker()
    jc = lab.client(b, JC, versions=versions)
    good = referral(msg_id=uid("m"))
    unsealable = referral(recipient="jc.nowhere", msg_id=uid("m"))
    # client.Client.send_many: "Raises KimError, before sending anything, when an item
    # cannot be prepared (as send() would)" -- a payload for an organisation the
    # directory does not list cannot be sealed
    with pytest.raises(kim.KimError):
        jc.send_many([(good, b"first"), (unsealable, b"sealed to whom?")])
    # nothing was sent: the good message's msg_id is new to the broker
    r = jc.send(dict(good), b"first")
    assert not r.get("dup")


@pytest.mark.parametrize("versions", [(2, 1), (1,)])
def test_send_many_answers_each_item_in_order_even_with_a_repeated_msg_id(lab, versions):
    b = lab.broker()
    jc = lab.client(b, JC, versions=versions)
    hdr = referral(msg_id=uid("m"))
    items = [(hdr, b"one"), (referral(msg_id=uid("m")), b"two"), (dict(hdr), b"one")]
    # send_many: "Returns, per item in order, its RECEIPT (a dict with msg_id, seq, maybe
    # dup)"; §8.16: "a later message of the batch sees the earlier ones" -- the third is
    # the duplicate of the first (§8.3 step 7)
    results = jc.send_many(items)
    assert [r["msg_id"] for r in results] == [h["msg_id"] for h, _ in items]
    assert not results[0].get("dup") and not results[1].get("dup")
    assert results[2].get("dup") is True and results[2]["seq"] == results[0]["seq"]


@pytest.mark.parametrize("versions", [(2, 1), (1,)])
def test_send_many_seals_and_signs_each_message(lab, versions):
    b = lab.broker()
    jc = lab.client(b, JC, versions=versions)
    raw = lab.raw(b, SOZ, window=64)
    items = [(referral(msg_id=uid("m")), ("Akte %d" % i).encode()) for i in range(5)]
    # send_many: "Sends (hdr, payload) pairs, each as send() would" -- sealed to the
    # recipient (§13.2), signed with jc's key (§13.4)
    results = jc.send_many(items)
    sign_key = jc.directory(JC)[0]["sign_key"]
    by_seq = {r["seq"]: p for r, (_, p) in zip(results, items)}
    for _ in items:
        cmd, wire = raw.deliver()
        assert raw.open(wire) == by_seq[cmd["seq"]]
        assert verifies(cmd["hdr"], sign_key)
        raw.send({"cmd": "ACK", "seqs": [cmd["seq"]]})


def test_send_many_seal_false(lab):
    b = lab.broker()
    jc, soz = lab.client(b, JC), lab.client(b, SOZ)
    # send_many(items, seal=True, ...): each as send() would -- seal=False: plaintext
    jc.send_many([(referral(), b"plain")], seal=False)
    (d,) = receive(soz)
    assert d.payload == b"plain" and d.sealed_error is True


def test_send_many_rate_limited_refusals_may_be_sent_again(lab):
    b = lab.broker(broker={"rate_limit": 20, "rate_burst": 40})
    jc = lab.client(b, JC)                                 # HELLO: 5 units (§7.3)
    first = jc.send_many([(referral(msg_id=uid("m")), b"") for _ in range(25)])
    assert all(isinstance(r, dict) for r in first), first
    items = [(referral(msg_id=uid("m")), b"") for _ in range(30)]
    # send_many: "its refusal: a Rejected (code, reason, text, msg_id, path), returned,
    # not raised ... Refusals with code 207 (RATE_LIMITED) may be sent again with the
    # same msg_id"; §8.16: "When the organisation's rate cannot pay for count units,
    # every message is refused with RATE_LIMITED"
    refused = jc.send_many(items)
    assert all(isinstance(r, kim.Rejected) for r in refused), refused
    assert {(r.code, r.reason) for r in refused} == {(207, "RATE_LIMITED")}
    assert [r.msg_id for r in refused] == [h["msg_id"] for h, _ in items]
    time.sleep(2.0)                                        # the bucket refills (20/s)
    again = jc.send_many(items)
    assert [r["msg_id"] for r in again] == [h["msg_id"] for h, _ in items]
    assert not any(r.get("dup") for r in again)            # §8.3: not used up by the REJECT


def test_send_many_timeout_raises_with_results(lab):
    b = lab.broker()
    soz = lab.client(b, SOZ)
    items = [(referral(recipient=AA, msg_id=uid("m")), b"") for _ in range(3)]
    os.kill(b.process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        # send_many: "when the answers do not all come within `timeout` ... the KimError
        # or Rejected raised has `results`: the answers so far, None for the others"
        with pytest.raises(kim.KimError) as e:
            soz.send_many(items, seal=False, timeout=0.5)
        assert time.monotonic() - start < 3
        assert e.value.results == [None, None, None]
    finally:
        os.kill(b.process.pid, signal.SIGCONT)


#   --- deliveries, recv, ack -------------------------------------------------------------

def test_delivery_attributes(lab):
    b = lab.broker()
    jc, soz = lab.client(b, JC), lab.client(b, SOZ)
    r = jc.send(referral(), b"inhalt")
    (d,) = receive(soz)
    # Delivery: "One DELIVER: `seq`, `hdr` (dict), `payload` (opened when sealed to us),
    # `sealed_error` (True when a non-empty payload did not open, §13.2)"
    assert isinstance(d, kim.Delivery)
    assert d.seq == r["seq"] and isinstance(d.hdr, dict) and d.payload == b"inhalt"
    assert d.sealed_error is False
    assert d.hdr["sender"] == JC and len(d.hdr["payload_hash"]) == 32       # §8.6


def test_recv_returns_none_after_its_timeout(lab):
    b = lab.broker()
    soz = lab.client(b, SOZ)
    start = time.monotonic()
    # client.Client.recv: "The next delivery, or None when none arrives within
    # `timeout` seconds"
    assert soz.recv(timeout=0.3) is None
    assert 0.25 <= time.monotonic() - start < 2


def test_deliveries_yields_until_idle(lab):
    b = lab.broker()
    jc, soz = lab.client(b, JC), lab.client(b, SOZ)
    seqs = [r["seq"] for r in jc.send_many([(referral(), b"%d" % i) for i in range(3)])]
    got = []
    start = time.monotonic()
    # client.Client.deliveries: "Yields deliveries until none arrives for `timeout` seconds"
    for d in soz.deliveries(timeout=1.0):
        got.append(d.seq)
        soz.ack(d.seq)
    assert sorted(got) == seqs
    assert time.monotonic() - start < 1.0 + 3


def test_window_0_receives_nothing(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    r = jc.send(referral(), b"waits")
    # Client: "window  deliveries accepted in flight (HELLO window; 0: send only)"
    soz = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(SOZ), window=0)
    try:
        assert soz.connect()["window"] == 0          # connect: "returns the WELCOME"
        assert nothing_comes(soz)
    finally:
        soz.close()
    later = lab.client(b, SOZ)
    (d,) = receive(later)
    assert d.seq == r["seq"]


@pytest.mark.parametrize("versions", [(2, 1), (1,)])
def test_ack_of_an_earlier_sessions_delivery(lab, versions):
    b = lab.broker()
    jc = lab.client(b, JC)
    r = jc.send(referral(), b"stored by the first session")
    first = lab.client(b, SOZ, versions=versions)
    (d,) = receive(first, ack=False)
    first.close()                                       # BYE before the ACK (§8.12)
    # client.Client.ack: "Under version 2 this session's deliveries go as ACK_RANGE
    # (§8.19) ...; an earlier session's as ACK" -- §8.7: a seq "still in the mailbox but
    # in flight nowhere ... a client may acknowledge from its new session"
    second = lab.client(b, SOZ, window=0, versions=versions)
    second.ack(d.seq)
    second.close()
    # acknowledged: it is not delivered again
    third = lab.client(b, SOZ)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        again = third.recv(timeout=0.2)
        assert again is None or again.seq != r["seq"], "the ACK did not take"


def test_redelivery_after_a_missing_ack_then_ack(lab):
    b = lab.broker(broker={"redeliver_ms": 300})
    jc = lab.client(b, JC)
    r = jc.send(referral(), b"again")
    soz = lab.client(b, SOZ)
    (d,) = receive(soz, ack=False)
    # §8.6: "Unacknowledged deliveries are delivered again, with the same seq, ... after
    # the broker's redelivery timeout". Whether recv() hands the repeat on is not
    # documented (§8.6 asks clients to de-duplicate by seq): either is accepted here.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        again = soz.recv(timeout=0.2)
        assert again is None or (again.seq == d.seq and again.hdr["msg_id"] == d.hdr["msg_id"])
    # ack(): "Acknowledges deliveries (§8.7)" -- also one sent again
    soz.ack(d.seq)
    soz.close()
    fresh = lab.client(b, SOZ)
    assert nothing_comes(fresh, 0.8)
    assert r["seq"] == d.seq


#   --- directory, seal_key -------------------------------------------------------------------

def test_directory_entries(lab):
    b = lab.broker()
    c = lab.client(b, SOZ)
    # client.Client.directory: "dicts with id, name, type, public_body, public_key and
    # maybe sign_key"
    entries = c.directory()
    assert [e["id"] for e in entries] == [JC, SOZ, AA]              # §8.15: registry order
    for e in entries:
        assert isinstance(e["name"], str) and isinstance(e["type"], str)
        assert isinstance(e["public_body"], bool)
        assert e["public_key"] == kim.load_cert(os.path.join(b.keys, e["id"] + ".cert"))[0]
        assert "home" not in e
    jc_entry = entries[0]
    seed = kim.load_sign_key(os.path.join(b.keys, JC + ".sign_secret"))
    assert jc_entry["sign_key"] == zmq.utils.z85.encode(
        bytes(nacl.signing.SigningKey(seed).verify_key)).decode()
    # "with `homes`, an organisation of another district also has `home`" -- §8.15: "absent
    # for the answering broker's own"
    assert [e for e in c.directory(homes=True) if "home" in e] == []
    assert [e["id"] for e in c.directory(org=AA, homes=True)] == [AA]


def test_directory_count_says_when_the_reply_was_cut(lab):
    orgs = {"jc.o%03d" % i: "agency" for i in range(130)}
    b = lab.broker(orgs=orgs)
    c = lab.client(b, "jc.o129")
    # client.Client.directory: "The list's `matched` is how many organisations matched
    # (the reply's `count`). A reply holds at most 128 entries" (§8.15)
    entries = c.directory()
    assert isinstance(entries, list) and len(entries) == 128 and entries.matched == 130
    one = c.directory("jc.o129")
    assert [e["id"] for e in one] == ["jc.o129"] and one.matched == 1
    assert c.directory("jc.nobody").matched == 0


def test_seal_key_is_the_directorys_public_key(lab):
    b = lab.broker()
    c = lab.client(b, JC)
    z85 = c.directory(SOZ)[0]["public_key"]
    # client.Client.seal_key: "The X25519 key payloads to `org` are sealed to, from the
    # directory (§13.2)"; its form (Z85 text, 32 bytes, a PublicKey) is not documented
    key = c.seal_key(SOZ)
    raw = zmq.utils.z85.decode(z85)
    assert key == z85 or bytes(key) == raw


#   --- referral_query ---------------------------------------------------------------------------

def test_referral_query_rows_and_filters(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    case_id = uid("C")
    r1 = jc.send(referral(uid("R"), case_id, recipient=SOZ), b"")
    r2 = jc.send(referral(uid("R"), case_id, recipient=AA), b"")
    # client.Client.referral_query: "Referrals this organisation takes part in (§8.14),
    # as dicts" -- §8.14's keys
    rows = jc.referral_query(case_id=case_id)
    assert [r["created_seq"] for r in rows] == [r1["seq"], r2["seq"]]
    for row in rows:
        assert set(row) >= {"referral_id", "state", "sender", "recipient", "case_id",
                            "purpose", "deadline", "forwarded_from", "consent_id",
                            "created_seq", "last_seq"}
        assert row["consent_id"] == "" and row["forwarded_from"] == ""
    # filter `org` (§8.14: "only referrals with this organisation as sender or recipient")
    assert [r["recipient"] for r in jc.referral_query(case_id=case_id, org=AA)] == [AA]
    assert [r["recipient"] for r in jc.referral_query(org=SOZ)] == [SOZ]
    # the recipient takes part too
    (row,) = lab.client(b, AA).referral_query(case_id=case_id)
    assert row["sender"] == JC and row["recipient"] == AA


def test_referral_query_of_an_auditor_is_rejected_forbidden(lab):
    b = lab.broker()
    auditor = lab.client(b, AUDITOR)
    # §8.14: "auditors and operators get REJECT FORBIDDEN (205)"; §7.1: "Every REJECT of
    # such a command carries that id" (the query_id)
    with pytest.raises(kim.Rejected) as e:
        auditor.referral_query()
    assert (e.value.code, e.value.reason) == (205, "FORBIDDEN") and e.value.msg_id


#   --- subscribe ---------------------------------------------------------------------------------

def test_subscribe_returns_the_head_and_events_have_no_payload(lab):
    b = lab.broker()
    jc, soz, aa = lab.client(b, JC), lab.client(b, SOZ), lab.client(b, AA)
    case_id = uid("C")
    jc.send(referral(uid("R"), case_id), b"for soz")
    receive(soz)
    # client.Client.subscribe: "A durable subscription (§8.10); returns the log head it
    # starts after"
    head = soz.subscribe("s-all")
    assert isinstance(head, int) and head > 0
    r = jc.send(referral(uid("R"), case_id, recipient=AA), b"for aa only")
    receive(aa)
    assert r["seq"] > head
    (event,) = receive(soz, match=lambda d: d.seq == r["seq"])
    # §8.10: events come "with an empty frame 1 unless the organisation is the payload's
    # addressee"; §13.2 "subscription copies ... have nothing to open": no sealed_error
    assert event.payload == b"" and event.sealed_error is False
    # §8.10: "Subscribing again with the same sub_id replaces the filter and keeps the cursor"
    again = soz.subscribe("s-all", case_id=case_id, types=["ACCEPT"])
    assert isinstance(again, int) and again >= head


def test_subscribe_refusals_carry_the_sub_id(lab):
    b = lab.broker(broker={"subscriptions_per_org": 1})
    soz = lab.client(b, SOZ)
    # subscribe(sub_id, case_id=None, types=None): §8.10 "each known (UNKNOWN_TYPE)";
    # "Every REJECT of a SUBSCRIBE or UNSUBSCRIBE carries msg_id = sub_id"
    with pytest.raises(kim.Rejected) as e:
        soz.subscribe("s-bad", types=["NO_SUCH_TYPE"])
    assert (e.value.code, e.value.reason, e.value.msg_id) == (109, "UNKNOWN_TYPE", "s-bad")
    soz.subscribe("s-one")
    # §8.10: "A new sub_id beyond the organisation's subscriptions_per_org is refused
    # with ORG_LIMIT (305)"
    with pytest.raises(kim.Rejected) as e:
        soz.subscribe("s-two")
    assert (e.value.code, e.value.reason, e.value.msg_id) == (305, "ORG_LIMIT", "s-two")


#   --- query (auditors) --------------------------------------------------------------------------

def test_query_records_and_filters(lab):
    b = lab.broker()
    jc, auditor = lab.client(b, JC), lab.client(b, AUDITOR)
    case_id = uid("C")
    sent = jc.send_many([(referral(uid("R"), case_id, recipient=rcpt), b"")
                         for rcpt in (SOZ, AA, SOZ)])
    seqs = [r["seq"] for r in sent]
    # client.Client.query: "yields RECORD dicts (seq, time, kind, hash, body) until
    # QUERY_END; grants more credit as the window is used up"
    records = list(auditor.query(case_id=case_id, window=1))
    messages = [r for r in records if r["kind"] == 1]
    assert [r["seq"] for r in messages] == seqs
    for rec in records:
        assert isinstance(rec["time"], int) and len(rec["hash"]) == 32
        assert isinstance(rec["body"], (bytes, bytearray))
    # §8.11: kind 1's body is the canonical header
    hdr = msgpack.unpackb(messages[0]["body"], raw=False)
    assert hdr["msg_id"] == sent[0]["msg_id"] and hdr["case_id"] == case_id
    # "Filters: from_seq, to_seq, from_time, to_time, case_id, org, type"
    got = [r["seq"] for r in auditor.query(case_id=case_id, from_seq=seqs[1], to_seq=seqs[1])]
    assert got == [seqs[1]]
    got = [r["seq"] for r in auditor.query(case_id=case_id, org=AA) if r["kind"] == 1]
    assert got == [seqs[1]]
    got = [r["seq"] for r in auditor.query(case_id=case_id, type="REFERRAL") if r["kind"] == 1]
    assert got == seqs
    t = messages[0]["time"]
    in_time = list(auditor.query(case_id=case_id, from_time=t, to_time=t))
    assert in_time and all(r["time"] == t for r in in_time)
    assert seqs[0] in [r["seq"] for r in in_time]


def test_query_refusal_is_raised_with_the_query_id(lab):
    b = lab.broker()
    auditor = lab.client(b, AUDITOR)
    # §8.11: to_seq "≥ from_seq (BAD_VALUE)"; "Every REJECT of a QUERY carries msg_id =
    # query_id"; a REJECT raises Rejected (client module: "raises Rejected")
    with pytest.raises(kim.Rejected) as e:
        list(auditor.query(from_seq=10, to_seq=5))
    assert (e.value.code, e.value.reason) == (110, "BAD_VALUE") and e.value.msg_id


#   --- more than one frame's worth --------------------------------------------------------

@pytest.mark.parametrize("versions", [(2, 1), (1,)])
def test_send_many_600_in_order(lab, versions):
    b = lab.broker()
    jc = lab.client(b, JC, versions=versions)
    items = [(referral(msg_id=uid("m"), recipient=AA if i % 3 else SOZ), b"%d" % i)
             for i in range(600)]
    # README: "send_many([(hdr, payload), ...]) sends many messages in SEND_BATCH frames of up
    # to 64 and returns, per message in order, its RECEIPT" (600: more frames than the
    # client keeps in flight); version 1: "one SEND after another, a few ahead"
    results = jc.send_many(items)
    assert [r["msg_id"] for r in results] == [h["msg_id"] for h, _ in items]
    seqs = [r["seq"] for r in results]
    assert len(set(seqs)) == 600 and not any(r.get("dup") for r in results)


def test_ack_of_more_runs_than_one_ack_range_holds(lab):
    b = lab.broker()
    jc = lab.client(b, JC)
    seqs = [r["seq"] for r in jc.send_many([(referral(), b"") for _ in range(150)])]
    soz = lab.client(b, SOZ, window=200)
    got = receive(soz, count=150, ack=False, timeout=10)
    assert sorted(d.seq for d in got) == seqs
    # ack(): "a run of stored seqs as one range" -- every other seq stored: 75 runs, more
    # than one ACK_RANGE holds (§8.19: 64 pairs); each of them is acknowledged
    soz.ack(*seqs[::2])
    soz.close()
    again = lab.client(b, SOZ, window=200)
    back = set()
    for d in again.deliveries(timeout=0.5):
        back.add(d.seq)
    assert back == set(seqs[1::2])


def test_send_many_rate_limited_in_version_1(lab):
    b = lab.broker(broker={"rate_limit": 20, "rate_burst": 40})
    jc = lab.client(b, JC, versions=(1,))
    items = [(referral(msg_id=uid("m")), b"") for _ in range(60)]
    # send_many: "a Rejected (code, reason, text, msg_id, path), returned, not raised ...
    # Refusals with code 207 (RATE_LIMITED) may be sent again with the same msg_id"
    results = jc.send_many(items)
    refused = [(h, r) for (h, _), r in zip(items, results) if isinstance(r, kim.Rejected)]
    assert refused and len(refused) < 60
    assert all((r.code, r.msg_id) == (207, h["msg_id"]) for h, r in refused)
    time.sleep(2.0)
    again = jc.send_many([(h, b"") for h, _ in refused])
    assert all(isinstance(r, dict) and not r.get("dup") for r in again), again


#   --- the examples -------------------------------------------------------------------------

def _lines_of(process):
    """A queue of the lines `process` prints, read by a thread."""
    import queue
    import threading
    lines = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put(line)
    threading.Thread(target=read, daemon=True).start()
    return lines


def test_follow_case_goes_on_after_a_quiet_spell(lab):
    import json
    import queue
    b = lab.broker(broker={"heartbeat_ms": 250})       # 5000 in deploy/kim.cfg: 15 s quiet
    case_id = uid("C")
    example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                           "follow_case.py")
    follower = subprocess.Popen([sys.executable, example, "--endpoint", b.endpoint,
                                 "--broker-cert", b.broker_cert, "--cert",
                                 b.cert_secret(SOZ), "--case", case_id, "--idle", "3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _lines_of(follower)
        assert "subscribed" in json.loads(lines.get(timeout=WAIT))
        time.sleep(1.5)                                 # a quiet spell of 6 heartbeats
        rid = uid("R")
        lab.client(b, JC).send(referral(rid, case_id), b"for soz")
        try:
            event = json.loads(lines.get(timeout=2.5))
        except queue.Empty:
            event = None
        # follow_case.py: events are printed "each as a JSON line" while it runs
        assert event is not None and event["referral_id"] == rid
    finally:
        follower.terminate()
        follower.wait(10)
