"""The guide for linking district brokers, checked from outside against real
programs: two (and three) real kim-broker processes, configured the way the
documents tell an operator to, driven with the commands they give.

Sources (every expectation cites one):
- README.md, "Connecting two districts" (steps 1-3 and the paragraphs after);
- docs/federation.md (§2 store and forward, §3 logs, §4 audit trace, §5 keys,
  §6 a link down, §7 how the harness links brokers);
- docs/operations.md §2 Keys, §3 "Links to other districts", §4 metrics,
  §5 "Link down";
- kim.cfg(5) SECTION peers, kim(1), kim-broker(8);
- proto/PROTOCOL.md §16 only for what a client sees (DIRECTORY `home`,
  UNDELIVERABLE, DELIVERED, HANDED_OVER).

Everything an operator or an office does goes through the `kim` tool
(KIM_CLI_BIN) and kim-broker (KIM_BROKER_BIN): keygen, --check, status,
directory, send, inbox, referral show, admin reload, audit trace.
Every wait is a bounded poll."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import zmq.utils.z85

from conftest import ROOT, _program

BROKER = _program("KIM_BROKER_BIN", "broker/kim-broker")
KIM = _program("KIM_CLI_BIN", "agents/cli/kim")
POLICY = os.path.join(ROOT, "deploy", "policy.cfg")

STEINFURT, COESFELD, BORKEN = "broker.steinfurt", "broker.coesfeld", "broker.borken"
STATUTE = "SGB X §69(1)1"
SUBJECT, PURPOSE = "p-7f3a", "benefits"
WAIT = 10.0                  # s for anything that crosses a link
BACKOFF_MAX = 10.0           # federation.md §6: the link dials again "up to 10 s"

# Steinfurt: jc.steinfurt signs its SENDs (README "sign_key"), so the far
# broker checks a signature against the directory (federation.md §2 step 4).
STEINFURT_ORGS = {"jc.steinfurt": "agency", "soz.steinfurt": "agency", "kim.steinfurt": "agency",
                  "ops.steinfurt": "operator"}
COESFELD_ORGS = {"jc.coesfeld": "agency", "soz.coesfeld": "agency", "aa.coesfeld": "agency",
                 "ki.coesfeld": "agency", "ja.coesfeld": "agency", "ops.coesfeld": "operator",
                 "dsb.coesfeld": "auditor"}
BORKEN_ORGS = {"soz.borken": "agency", "ops.borken": "operator"}

# Coesfeld's own policy (README: "each keeps its own registry, policy and log"):
# the shipped one with one rule of its own in front, so that a transfer
# Steinfurt allows is refused by Coesfeld (federation.md §2, README).
COESFELD_RULE = "C1"
COESFELD_WHY = "nothing goes to the employment agency from another district"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ids = iter(range(1, 1 << 30))


def uid(tag):
    return "%s-%x-%d" % (tag, int(time.time() * 1000) & 0xffffff, next(_ids))


def now_ms():
    return int(time.time() * 1000)


def poll(check, timeout=WAIT, step=0.1):
    """check() until truthy or timeout; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def run(*args, stdin=None, timeout=30):
    return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, text=True,
                          timeout=timeout)


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def zpl_value(path, key):
    """The value of `key = "..."` in a ZPL file (a zcert, a kim.cfg)."""
    with open(path, encoding="utf-8") as f:
        m = re.search(r'^\s*%s\s*=\s*"([^"]*)"' % re.escape(key), f.read(), re.M)
    return m.group(1) if m else None


def sign_pub_z85(path):
    """federation.md §7: sign_key is "<its Ed25519 public key, broker.sign.pub in
    Z85>". The file's own encoding is not documented: Z85 (40 characters) is
    taken as it is, hex (64 digits) is written in Z85."""
    with open(path, encoding="utf-8") as f:
        text = f.read().split()[0]
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return zmq.utils.z85.encode(bytes.fromhex(text)).decode()
    assert len(text) == 40, "broker.sign.pub holds neither Z85 nor hex: %r" % text
    return text


def policy_with_own_rule(path):
    """The shipped policy with Coesfeld's rule C1 first in `rules`."""
    with open(POLICY, encoding="utf-8") as f:
        text = f.read()
    rule = ("rules\n    %s\n        law = \"Kreis Coesfeld test rule\"\n"
            "        why = \"%s\"\n        from = *\n        to = aa\n"
            "        decision = deny\n" % (COESFELD_RULE, COESFELD_WHY))
    assert "\nrules\n" in text
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("\nrules\n", "\n" + rule, 1))
    return path


class District:
    """One district's broker, as its operator runs it: a folder with kim.cfg,
    the data folder (the broker's keys in data/keys), the organisations' keys
    made with `kim keygen`, a log file (the journal)."""

    def __init__(self, root, name, orgs, signing=(), policy=POLICY, bind_ipc=False,
                 broker=None, sections=None):
        self.name = name
        self.dir = os.path.join(root, name)
        self.data = os.path.join(self.dir, "data")
        self.keys = os.path.join(self.dir, "keys")
        self.config = os.path.join(self.dir, "kim.cfg")
        self.log_path = os.path.join(self.dir, "broker.log")
        os.makedirs(self.keys)
        self.port = free_port()
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.ipc = "ipc://%s/kim.sock" % self.dir if bind_ipc else None
        self.orgs = dict(orgs)
        self.revoked = set()
        self.policy = policy
        self.broker = dict(broker or {})
        self.sections = dict(sections or {})
        self.peers = {}
        self.process = None
        self._log = None
        for org in self.orgs:
            self.keygen(org)
        for org in signing:
            r = run(KIM, "keygen", org, "--dir", self.keys, "--sign")
            assert r.returncode == 0, r.stderr
        self.write_config()

    # --- keys and configuration ---------------------------------------------------

    def keygen(self, org, force=False):
        """operations.md §2: `kim keygen ORG --dir ./keys`; its public key."""
        r = run(KIM, "keygen", org, "--dir", self.keys, *(["--force"] if force else []))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["public_key"]

    @property
    def broker_cert(self):
        return os.path.join(self.data, "keys", "broker.cert")

    def keys_from_files(self):
        """README step 1 "or take `public-key` from <data>/keys/broker.cert";
        federation.md §7 the signing key "broker.sign.pub in Z85"."""
        return (zpl_value(self.broker_cert, "public-key"),
                sign_pub_z85(os.path.join(self.data, "keys", "broker.sign.pub")))

    def add_peer(self, other, endpoint=None, **override):
        """kim.cfg(5) SECTION peers / README step 2: the peer named by its
        broker/name, its endpoint, public_key and sign_key."""
        public_key, sign_key = other.keys_from_files()
        entry = {"endpoint": endpoint or other.endpoint, "public_key": public_key,
                 "sign_key": sign_key}
        entry.update(override)
        self.peers[other.name] = entry

    def write_config(self):
        bind = self.endpoint + (", " + self.ipc if self.ipc else "")
        lines = ["broker", "    name = %s" % self.name, '    data = "%s"' % self.data,
                 '    bind = "%s"' % bind]
        lines += ["    %s = %s" % kv for kv in self.broker.items()]
        lines += ["policy", '    file = "%s"' % self.policy]
        for section, keys in self.sections.items():
            lines.append(section)
            lines += ["    %s = %s" % kv for kv in keys.items()]
        lines.append("orgs")
        for org, role in self.orgs.items():
            lines += ["    %s" % org, '        name = "Test %s"' % org,
                      "        public_body = 1", "        role = %s" % role,
                      '        public_key = "%s"' % zpl_value(self.cert(org), "public-key")]
            if os.path.exists(os.path.join(self.keys, org + ".sign")):
                lines.append('        sign_key = "%s"' % zpl_value(
                    os.path.join(self.keys, org + ".sign"), "public-key"))
            if org in self.revoked:
                lines.append("        revoked = 1")
        if self.peers:
            # README step 2, literally (endpoint, public_key, sign_key, quoted)
            lines.append("peers")
            for name, entry in self.peers.items():
                lines += ["    %s" % name,
                          '        endpoint = "%s"' % entry["endpoint"],
                          '        public_key = "%s"' % entry["public_key"],
                          '        sign_key = "%s"' % entry["sign_key"]]
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def check(self):
        """README step 3, kim-broker(8): `kim-broker --check --config FILE`."""
        return run(BROKER, "--check", "--config", self.config)

    def cert(self, org):
        return os.path.join(self.keys, org + ".cert")

    def secret(self, org):
        return os.path.join(self.keys, org + ".cert_secret")

    # --- the process ----------------------------------------------------------------

    def start(self, timeout=30.0):
        """Starts the broker; ready once it logged that it serves (operations
        §1: `msg="kim-broker NAME serving on ..."`)."""
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([BROKER, "--config", self.config],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while "serving on" not in self.log(offset):
            if self.process.poll() is not None:
                raise RuntimeError("%s exited with %d: %s" % (self.name, self.process.returncode,
                                                              self.log(offset)[-2000:]))
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not start: %s" % (self.name, self.log(offset)[-2000:]))
            time.sleep(0.05)
        return offset

    def stop(self):
        """SIGTERM (kim-broker(8): a clean stop, exit 0); the exit code."""
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            rc = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rc = self.process.wait()
        self.process = None
        self._log.close()
        return rc

    def kill(self):
        self.process.kill()
        self.process.wait()
        self.process = None
        self._log.close()

    def reload(self):
        """`systemctl reload kim-broker` is SIGHUP (operations §1, kim-broker(8))."""
        self.process.send_signal(signal.SIGHUP)

    def log(self, offset=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_size(self):
        return os.path.getsize(self.log_path)

    # --- the kim tool ---------------------------------------------------------------

    def kim(self, org, *args, stdin=None):
        return run(KIM, *args, "--endpoint", self.endpoint, "--broker-key", self.broker_cert,
                   "--cert", self.secret(org), stdin=stdin)

    def status(self, org=None):
        """`kim status --cert <an operator's key>` (operations §3, README)."""
        org = org or next(o for o, r in self.orgs.items() if r == "operator")
        r = self.kim(org, "status")
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def link(self, peer):
        for entry in self.status().get("links", []):
            if entry.get("peer") == peer:
                return entry
        return None

    def wait_link(self, peer, up=True, timeout=WAIT, **fields):
        def ok():
            entry = self.link(peer)
            return entry if entry and entry.get("up") is up and all(
                entry.get(k) == v for k, v in fields.items()) else None
        entry = poll(ok, timeout)
        assert entry, "%s: link to %s not %s %r within %.0f s: %r\n%s" % (
            self.name, peer, "up" if up else "down", fields, timeout, self.link(peer),
            self.log()[-3000:])
        return entry

    def directory(self, org, target=None):
        """`kim directory [ORG]` (README): (exit code, rows)."""
        r = self.kim(org, "directory", *([target] if target else []))
        return r.returncode, json_lines(r.stdout)

    def knows(self, as_org, org):
        rc, rows = self.directory(as_org, org)
        return rows[0] if rc == 0 and rows else None

    def send(self, org, *flags):
        """`kim send` with flags: (exit code, the answer line)."""
        r = self.kim(org, "send", *flags)
        rows = json_lines(r.stdout)
        assert r.returncode in (0, 1) and len(rows) == 1, r.stdout + r.stderr
        return r.returncode, rows[0]

    def send_json(self, org, hdr):
        r = self.kim(org, "send", "--json", stdin=json.dumps(hdr) + "\n")
        rows = json_lines(r.stdout)
        assert r.returncode in (0, 1) and len(rows) == 1, r.stdout + r.stderr
        return r.returncode, rows[0]

    def show(self, org, rid):
        """`kim referral show ID` (README: "gives the same state at both ends")."""
        r = self.kim(org, "referral", "show", rid)
        rows = json_lines(r.stdout)
        return rows[0] if r.returncode == 0 and rows else None

    def state(self, org, rid):
        row = self.show(org, rid)
        return row and row["state"]

    def wait_state(self, org, rid, state, timeout=WAIT):
        poll(lambda: self.state(org, rid) == state, timeout)
        return self.state(org, rid)


class Inbox:
    """What `kim inbox` printed for one office so far (each message acked)."""

    def __init__(self, district, org):
        self.district, self.org, self.got = district, org, []

    def read(self, idle=300):
        r = self.district.kim(self.org, "inbox", "--idle", str(idle))
        assert r.returncode == 0, r.stdout + r.stderr
        self.got += json_lines(r.stdout)

    def where(self, **match):
        return [m for m in self.got if all(m["hdr"].get(k) == v for k, v in match.items())]

    def wait(self, count=1, timeout=WAIT, **match):
        deadline = time.monotonic() + timeout
        while len(self.where(**match)) < count and time.monotonic() < deadline:
            self.read()
        return self.where(**match)

    def one(self, timeout=WAIT, **match):
        got = self.wait(1, timeout, **match)
        assert len(got) == 1, "%s: %d messages %r, got %r" % (
            self.org, len(got), match, [m["hdr"] for m in self.got])
        return got[0]


def referral_flags(to, rid, case, *extra):
    return ["--type", "REFERRAL", "--to", to, "--referral", rid, "--case", case,
            "--subject", SUBJECT, "--purpose", PURPOSE, "--statute", STATUTE, *extra]


def link_lines(d, offset=0):
    """What `journalctl -u kim-broker | grep module=link` finds (README step 3,
    operations §3 and §5, federation.md §6)."""
    return [l for l in d.log(offset).splitlines() if "module=link" in l]


def link_together(*districts, restart=()):
    """The guide's procedure (federation.md §7, README steps 1-3): each broker
    has started once without peers (its keys exist); each takes every other
    one's public key (broker.cert) and signing key (broker.sign.pub in Z85)
    into its `peers` section, `--check`s the file, and reloads (SIGHUP), or
    restarts when named in `restart`. Returns the --check results."""
    checks = {}
    for d in districts:
        for other in districts:
            if other is not d:
                d.add_peer(other)
        d.write_config()
        checks[d.name] = d.check()
        assert checks[d.name].returncode == 0, checks[d.name].stdout + checks[d.name].stderr
    for d in districts:
        if d in restart:
            assert d.stop() == 0
            d.start()
        else:
            d.reload()
    for d in districts:
        for other in districts:
            if other is not d:
                d.wait_link(other.name)
    for d in districts:            # each knows the other's agencies (README)
        for other in districts:
            if other is not d:
                far = next(o for o, r in other.orgs.items() if r == "agency")
                near = next(o for o, r in d.orgs.items() if r == "agency")
                assert poll(lambda: d.knows(near, far)), "%s does not know %s" % (d.name, far)
    return checks


def finish(*districts):
    bad = []
    for d in districts:
        rc = d.stop()
        if rc not in (0, None):
            bad.append("%s exited with %s: %s" % (d.name, rc, d.log()[-2000:]))
    assert not bad, "\n".join(bad)


#   --- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def root():
    path = tempfile.mkdtemp(prefix="kfg-")       # short: ipc:// paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def nrw(root):
    """Steinfurt and Coesfeld, linked as the guide says: first starts without
    peers (keys made), peers written from each other's key files, Steinfurt
    reloaded (SIGHUP), Coesfeld restarted (README step 3: "reload (or a
    restart)"). Steinfurt serves metrics (operations §4)."""
    metrics_port = free_port()
    s = District(root, STEINFURT, STEINFURT_ORGS, signing=["jc.steinfurt"], bind_ipc=True,
                 sections={"metrics": {"enabled": 1, "port": metrics_port, "interval_ms": 200}})
    c = District(root, COESFELD, COESFELD_ORGS,
                 policy=policy_with_own_rule(os.path.join(root, "coesfeld-policy.cfg")))
    s.metrics_port = metrics_port
    s.start()
    c.start()
    c.restart_offset = c.log_size()
    s.reload_offset = s.log_size()
    checks = link_together(s, c, restart=[c])
    s.check_result, c.check_result = checks[s.name], checks[c.name]
    yield s, c
    finish(s, c)


@pytest.fixture
def fresh():
    """fresh(link=True, sections=None, **broker keys) -> two newly linked
    brokers (Steinfurt, Coesfeld) of this test's own, stopped after it."""
    made = []

    def make(link=True, sections=None, **broker):
        root = tempfile.mkdtemp(prefix="kfg-")
        s = District(root, STEINFURT, STEINFURT_ORGS, signing=["jc.steinfurt"], broker=broker,
                     sections=sections)
        c = District(root, COESFELD, COESFELD_ORGS, broker=broker, sections=sections)
        made.append((root, s, c))
        s.start()
        c.start()
        if link:
            link_together(s, c)
        return s, c
    yield make
    try:
        finish(*[d for _, s, c in made for d in (s, c)])
    finally:
        for root, _, _ in made:
            shutil.rmtree(root, ignore_errors=True)


#   --- README step 1: the keys an operator copies ------------------------------------

def test_first_start_makes_the_keys_an_operator_copies(nrw):
    s, c = nrw
    for d in (s, c):
        keys = os.path.join(d.data, "keys")
        # operations.md §2: broker.cert (public), broker.cert_secret (0600),
        # broker.sign_secret (0600), broker.sign.pub (public)
        for name in ("broker.cert", "broker.cert_secret", "broker.sign_secret",
                     "broker.sign.pub"):
            assert os.path.exists(os.path.join(keys, name)), name
        for name in ("broker.cert_secret", "broker.sign_secret"):
            assert os.stat(os.path.join(keys, name)).st_mode & 0o777 == 0o600, name
        # README step 1: `public-key` from <data>/keys/broker.cert; kim.cfg(5):
        # public_key and sign_key are Z85, 40 characters
        public_key, sign_key = d.keys_from_files()
        assert public_key and len(public_key) == 40
        assert len(sign_key) == 40


def test_own_keys_are_in_the_log_at_start_once_a_peer_is_configured(nrw):
    """README step 1: `module=link msg="... this broker's keys for its peers:
    public_key = ..., sign_key = ..."`, printed at every start;
    operations §3: "in the journal at start". Coesfeld was restarted with its
    peer; the keys it prints are those of its key files."""
    s, c = nrw
    text = "\n".join(link_lines(c, c.restart_offset))
    m = re.search(r'this broker\'s keys for its peers: public_key = \\?"([^"\\]+)\\?", '
                  r'sign_key = \\?"([^"\\]+)\\?"', text)
    assert m, text[-3000:]
    assert (m.group(1), m.group(2)) == c.keys_from_files()
    # what Steinfurt's operator copied into its peers section is what Coesfeld
    # says of itself
    with open(s.config, encoding="utf-8") as f:
        peers = f.read().split("\npeers\n")[1]
    assert '        public_key = "%s"' % m.group(1) in peers
    assert '        sign_key = "%s"' % m.group(2) in peers


def test_a_broker_without_peers_logs_its_keys_at_its_first_start(fresh):
    """README step 1: the two keys are "printed at every start, in the form the
    other broker's config takes", so the first peer can be configured from a
    broker that has none yet."""
    s, _ = fresh(link=False)
    m = re.search(r'this broker\'s keys for its peers: public_key = \\?"([^"\\]+)\\?", '
                  r'sign_key = \\?"([^"\\]+)\\?"', s.log(0))
    assert m, s.log(0)[-3000:]
    assert (m.group(1), m.group(2)) == s.keys_from_files()


#   --- README steps 2-3: peers section, --check, the link up ----------------------

def test_check_lists_the_peers(nrw):
    """README step 3: "`kim-broker --check` lists the peers"; kim-broker(8):
    exit 0 when valid."""
    s, c = nrw
    assert s.check_result.returncode == 0
    assert COESFELD in s.check_result.stdout + s.check_result.stderr
    assert c.check_result.returncode == 0
    assert STEINFURT in c.check_result.stdout + c.check_result.stderr


def test_check_refuses_a_peer_entry_without_a_required_key(nrw, tmp_path):
    """kim.cfg(5) SECTION peers: endpoint, public_key and sign_key are each
    "Required"; "Unknown sections and keys are errors"; kim-broker(8): --check
    exits 2 when the file is not valid."""
    s, _ = nrw
    with open(s.config, encoding="utf-8") as f:
        good = f.read()
    head, peers = good.split("\npeers\n")
    for section in (re.sub(r"\n\s+sign_key = .*", "", peers, count=1),
                    re.sub(r"\n\s+endpoint = .*", "", peers, count=1),
                    re.sub(r"\n\s+public_key = .*", "", peers, count=1),
                    peers.replace("sign_key =", "sign_kye =", 1)):
        assert section != peers
        broken = head + "\npeers\n" + section
        path = tmp_path / "kim.cfg"
        path.write_text(broken)
        r = run(BROKER, "--check", "--config", path)
        assert r.returncode == 2, broken
    # kim.cfg(5) public_key: "It may not be registered for an organisation."
    org_key = zpl_value(s.cert("soz.steinfurt"), "public-key")
    broken = head + "\npeers\n" + re.sub(r'public_key = "[^"]*"', 'public_key = "%s"' % org_key,
                                          peers, count=1)
    path = tmp_path / "kim.cfg"
    path.write_text(broken)
    r = run(BROKER, "--check", "--config", path)
    assert r.returncode == 2, r.stdout + r.stderr


def test_reload_with_a_broken_peers_section_changes_nothing(nrw):
    """kim.cfg(5): "A reload checks the whole file as a start would and changes
    nothing if it finds an error (RELOAD answers RELOAD_FAILED naming file and
    key)"; operations §3 "An invalid file changes nothing; the journal (and `kim
    admin reload`) names the file and the key"."""
    s, _ = nrw
    with open(s.config, encoding="utf-8") as f:
        good = f.read()
    head, peers = good.split("\npeers\n")
    try:
        with open(s.config, "w", encoding="utf-8") as f:
            f.write(head + "\npeers\n" + re.sub(r"\n\s+sign_key = .*", "", peers, count=1))
        r = s.kim("ops.steinfurt", "admin", "reload")
        assert r.returncode != 0, r.stdout + r.stderr
        assert "sign_key" in r.stdout + r.stderr and "kim.cfg" in r.stdout + r.stderr
    finally:
        with open(s.config, "w", encoding="utf-8") as f:
            f.write(good)
    time.sleep(0.3)
    assert s.link(COESFELD)["up"] is True
    assert s.knows("jc.steinfurt", "jc.coesfeld")


def test_log_says_the_link_is_up(nrw):
    """README step 3: "`systemctl reload kim-broker` (or a restart) and the link
    comes up: `journalctl -u kim-broker | grep module=link` says
    `msg="broker.coesfeld up (0 messages queued for it)"`". Steinfurt was
    reloaded, Coesfeld restarted."""
    s, c = nrw
    for d, peer, offset in ((s, COESFELD, s.reload_offset), (c, STEINFURT, c.restart_offset)):
        lines = link_lines(d, offset)
        assert any('msg="%s up (0 messages queued for it)"' % peer in l for l in lines), \
            "\n".join(lines)


def test_no_debug_lines_without_verbose(nrw):
    s, c = nrw
    for d in (s, c):
        debug = [l for l in d.log().splitlines() if "level=debug" in l]
        assert debug == [], debug[:3]


def test_status_shows_the_link_to_an_operator_only(nrw):
    """README: with an operator's key, `kim status` has
    `"links":[{"peer":"broker.coesfeld","up":true,"queued":0,...}]`;
    operations §3 (up or down since when, messages queued); kim(1) status:
    "with an operator's key also the links"; PROTOCOL §16.8 agencies see only
    its effects."""
    s, c = nrw
    link = s.wait_link(COESFELD)
    assert link["up"] is True and link["queued"] == 0
    assert isinstance(link.get("since_ms"), int) and link["since_ms"] <= now_ms()
    assert [l["peer"] for l in s.status()["links"]] == [COESFELD]
    assert [l["peer"] for l in c.status()["links"]] == [STEINFURT]
    assert "links" not in s.status("jc.steinfurt")


def test_metrics_show_the_link(nrw):
    """operations §4: kim_link_up{peer} 1 while up, kim_link_queued{peer},
    kim_link_remote_orgs{peer} = organisations the peer's directory homes
    there (Coesfeld's five agencies); federation.md §6 the same two names."""
    s, c = nrw
    agencies = sum(1 for o, r in COESFELD_ORGS.items() if r == "agency" and o not in c.revoked)

    def scrape():
        conn = http.client.HTTPConnection("127.0.0.1", s.metrics_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def figure(text, name):
        m = re.search(r'^%s\{peer="%s"\} (\S+)$' % (name, re.escape(COESFELD)), text, re.M)
        return m and float(m.group(1))

    text = poll(lambda: (lambda t: t if figure(t, "kim_link_up") == 1 else None)(scrape()))
    assert text, scrape()
    assert figure(text, "kim_link_queued") == 0
    assert figure(text, "kim_link_remote_orgs") == agencies


def test_directory_lists_the_other_districts_offices_with_home(nrw):
    """README: "`kim directory` lists the other district's offices with
    `"home":"broker.coesfeld"`"; kim(1)/PROTOCOL §16.3: agencies only, local
    ones without home; jc.steinfurt's sign_key travels (federation.md §2
    step 4)."""
    s, c = nrw
    rc, rows = s.directory("jc.steinfurt")
    assert rc == 0
    by_org = {r["org"]: r for r in rows}
    for org, role in COESFELD_ORGS.items():
        if role == "agency" and org not in c.revoked:
            assert by_org[org]["home"] == COESFELD, by_org.get(org)
            assert by_org[org]["public_key"] == zpl_value(c.cert(org), "public-key")
    assert "ops.coesfeld" not in by_org and "dsb.coesfeld" not in by_org   # no agencies
    assert "home" not in by_org["jc.steinfurt"]
    rc, rows = c.directory("soz.coesfeld", "jc.steinfurt")
    assert rc == 0 and rows[0]["home"] == STEINFURT
    assert rows[0]["sign_key"] == zpl_value(os.path.join(s.keys, "jc.steinfurt.sign"),
                                            "public-key")


#   --- federation.md §2, README: a referral across and its answers ---------------

def test_referral_delivered_accepted_completed_across_districts(nrw, tmp_path):
    """federation.md §2 steps 1-5, README: receipted at home, delivered by the
    far broker with the payload opened by the recipient, the DELIVERED made by
    Coesfeld reaches the sender, answers travel back, `kim referral show` gives
    the same state at both ends."""
    s, c = nrw
    rid, case = uid("r"), uid("c")
    payload = tmp_path / "referral.txt"
    payload.write_text("Frau M. sucht einen Sprachkurs")
    rc, receipt = s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rid, case,
                                                         "--payload", payload))
    assert rc == 0 and receipt["seq"] >= 1 and receipt["dup"] is False, receipt

    got = Inbox(c, "soz.coesfeld").one(referral_id=rid)
    hdr = got["hdr"]
    assert (hdr["type"], hdr["sender"], hdr["recipient"]) == ("REFERRAL", "jc.steinfurt",
                                                             "soz.coesfeld")
    assert hdr["msg_id"] == receipt["msg_id"]
    assert got.get("payload") == "Frau M. sucht einen Sprachkurs"

    sender = Inbox(s, "jc.steinfurt")
    delivered = sender.one(type="DELIVERED", referral_id=rid)["hdr"]
    assert delivered["sender"] == COESFELD          # §2 step 5: made by Coesfeld
    assert delivered["ref_msg_id"] == receipt["msg_id"]
    assert s.wait_state("jc.steinfurt", rid, "DELIVERED") == "DELIVERED"
    assert c.state("soz.coesfeld", rid) == "DELIVERED"

    rc, _ = c.send("soz.coesfeld", "--type", "ACCEPT", "--to", "jc.steinfurt",
                   "--referral", rid)
    assert rc == 0
    assert sender.one(type="ACCEPT", referral_id=rid)["hdr"]["sender"] == "soz.coesfeld"
    assert s.wait_state("jc.steinfurt", rid, "ACCEPTED") == "ACCEPTED"
    assert c.state("soz.coesfeld", rid) == "ACCEPTED"

    rc, _ = c.send("soz.coesfeld", "--type", "OUTCOME", "--to", "jc.steinfurt",
                   "--referral", rid, "--code", "completed")
    assert rc == 0
    sender.one(type="OUTCOME", referral_id=rid)
    assert s.wait_state("jc.steinfurt", rid, "COMPLETED") == "COMPLETED"
    assert c.state("soz.coesfeld", rid) == "COMPLETED"
    far, home = c.show("soz.coesfeld", rid), s.show("jc.steinfurt", rid)
    for key in ("state", "sender", "recipient", "case_id", "purpose"):
        assert far[key] == home[key], key
    # federation.md §3: "Neither log holds the payload's content"
    for d in (s, c):
        for folder, _, files in os.walk(d.data):
            for name in files:
                with open(os.path.join(folder, name), "rb") as f:
                    assert b"sucht einen Sprachkurs" not in f.read(), (d.name, name)


def test_the_header_travels_unchanged_and_trace_finds_both_copies(nrw):
    """federation.md §2 step 3 (the same msg_id, sender, created_at, sig,
    payload hash), §3 (each log holds the message; only `rule` may differ; the
    sending log holds the DELIVERED made by the far broker), §4 and README
    "Across districts": `kim audit trace` over two data folders, read-only while
    the brokers run, brokers "in the order the message reached them", the
    number in brackets the source's place on the command line, ending in `OK: 2
    copies of ID in 2 logs, every log verifies, the headers agree`."""
    s, c = nrw
    rid = uid("r")
    rc, receipt = s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rid, uid("c")))
    assert rc == 0
    msg_id = receipt["msg_id"]
    Inbox(c, "soz.coesfeld").one(referral_id=rid)
    Inbox(s, "jc.steinfurt").one(type="DELIVERED", referral_id=rid)

    # Coesfeld's log first on the command line: Steinfurt's must come first
    r = run(KIM, "audit", "trace", msg_id, "--data", c.data, "--name", COESFELD,
            "--data", s.data, "--name", STEINFURT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "OK: 2 copies of %s in 2 logs, every log verifies, the headers agree" % msg_id in out
    heads = re.findall(r"^\s+\[(\d)\]\s+(\S+)", out, re.M)
    assert heads == [("2", STEINFURT), ("1", COESFELD)], out

    r = run(KIM, "audit", "trace", msg_id, "--data", s.data, "--name", STEINFURT,
            "--data", c.data, "--name", COESFELD, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    copies = [rec["body"] for rec in doc["records"]
              if rec["kind"] == "message" and rec["body"].get("msg_id") == msg_id]
    assert len(copies) == 2
    for key in ("msg_id", "sender", "created_at", "payload_hash", "sig", "recipient"):
        assert copies[0].get(key) == copies[1].get(key), key
    assert copies[0].get("sig"), "jc.steinfurt signs; its sig is logged at both ends"
    delivered = [(rec["broker"], rec["body"]["sender"]) for rec in doc["records"]
                 if rec["kind"] == "message" and rec["body"].get("type") == "DELIVERED"]
    assert sorted(delivered) == [(COESFELD, COESFELD), (STEINFURT, COESFELD)], delivered

    # §4: a live broker read as auditor, beside a data folder (the guide's own
    # example: --endpoint, --broker-key, --sign-key keys/broker.sign.pub, --cert)
    r = run(KIM, "audit", "trace", msg_id, "--data", s.data, "--name", STEINFURT,
            "--endpoint", c.endpoint, "--broker-key", c.broker_cert,
            "--sign-key", os.path.join(c.data, "keys", "broker.sign.pub"),
            "--cert", c.secret("dsb.coesfeld"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: 2 copies of %s in 2 logs" % msg_id in r.stdout


def test_outbound_policy_refuses_at_home(nrw):
    """README: a `kim send` to another district's office "is checked by your
    broker (your outbound policy)"; PROTOCOL §16.5 "A refusal by the sending
    broker is an ordinary REJECT" (the shipped P11: no subject to ki)."""
    s, _ = nrw
    queued = s.link(COESFELD)["queued"]
    rc, answer = s.send("jc.steinfurt", *referral_flags("ki.coesfeld", uid("r"), uid("c")))
    assert rc == 1 and answer["error"] == "POLICY_DENY", answer
    assert s.link(COESFELD)["queued"] == queued


def test_refusal_by_the_far_district_is_undeliverable(nrw):
    """README: "A message the other district refuses comes back to the sender as
    `UNDELIVERABLE` naming that broker and its rule"; "A referral the other
    district refuses is `UNDELIVERABLE` (closed) at the sender's broker";
    federation.md §2 (the far side's policy). Steinfurt's shipped policy allows
    jc -> aa (P1); Coesfeld's own rule C1 refuses it."""
    s, c = nrw
    rid = uid("r")
    rc, receipt = s.send("jc.steinfurt", *referral_flags("aa.coesfeld", rid, uid("c")))
    assert rc == 0, receipt                      # receipted at home
    hdr = Inbox(s, "jc.steinfurt").one(type="UNDELIVERABLE", ref_msg_id=receipt["msg_id"])["hdr"]
    assert hdr["org"] == COESFELD
    assert hdr["code"] == "policy_deny"
    assert hdr.get("rule") == COESFELD_RULE
    assert COESFELD in hdr.get("note", "") and COESFELD_RULE in hdr.get("note", "")
    assert s.wait_state("jc.steinfurt", rid, "UNDELIVERABLE") == "UNDELIVERABLE"
    assert Inbox(c, "aa.coesfeld").wait(timeout=1.0) == []


#   --- README: handover, FORWARD, consent across districts -------------------------

def test_case_handover_takes_its_open_referrals_along(nrw):
    """README: "A case handed to another district takes its open referrals along:
    the new lead's broker gets each one's record (`HANDED_OVER`), so answers from
    the old district's offices reach the new lead and both ends keep the same
    state"; federation.md §2 step 5 (HANDOVER_ACCEPT travels back); PROTOCOL
    §16.6 (the old lead may not close the case: NOT_LEAD)."""
    s, c = nrw
    rid, case = uid("r"), uid("c")
    assert s.send("jc.steinfurt", *referral_flags("soz.steinfurt", rid, case))[0] == 0
    Inbox(s, "soz.steinfurt").one(referral_id=rid)
    assert s.send("soz.steinfurt", "--type", "ACCEPT", "--to", "jc.steinfurt",
                  "--referral", rid)[0] == 0
    assert s.wait_state("jc.steinfurt", rid, "ACCEPTED") == "ACCEPTED"

    offer_id = uid("m")
    rc, answer = s.send_json("jc.steinfurt", {
        "type": "HANDOVER_OFFER", "msg_id": offer_id, "recipient": "jc.coesfeld",
        "case_id": case, "subject": SUBJECT, "purpose": PURPOSE,
        "legal_basis": {"kind": "statute", "citation": STATUTE}, "referrals": [rid]})
    assert rc == 0, answer
    new_lead = Inbox(c, "jc.coesfeld")
    offer = new_lead.one(type="HANDOVER_OFFER", case_id=case)["hdr"]
    assert offer["sender"] == "jc.steinfurt" and offer["msg_id"] == offer_id

    rc, answer = c.send_json("jc.coesfeld", {
        "type": "HANDOVER_ACCEPT", "recipient": "jc.steinfurt", "case_id": case,
        "ref_msg_id": offer_id})
    assert rc == 0, answer
    Inbox(s, "jc.steinfurt").one(type="HANDOVER_ACCEPT", case_id=case)
    record = new_lead.one(type="HANDED_OVER", referral_id=rid)["hdr"]
    assert record["sender"] == STEINFURT and record["org"] == "soz.steinfurt"
    assert record["code"] == "accepted" and record["case_id"] == case

    assert c.wait_state("jc.coesfeld", rid, "ACCEPTED") == "ACCEPTED"
    assert c.show("jc.coesfeld", rid)["sender"] == "jc.coesfeld"
    assert s.show("soz.steinfurt", rid)["sender"] == "jc.coesfeld"

    # the old district's office answers the new lead, across the link
    rc, answer = s.send("soz.steinfurt", "--type", "OUTCOME", "--to", "jc.coesfeld",
                        "--referral", rid, "--code", "completed")
    assert rc == 0, answer
    new_lead.one(type="OUTCOME", referral_id=rid)
    assert c.wait_state("jc.coesfeld", rid, "COMPLETED") == "COMPLETED"
    assert s.state("soz.steinfurt", rid) == "COMPLETED"

    rc, answer = s.send("jc.steinfurt", "--type", "CASE_CLOSED", "--case", case)
    assert rc == 1 and answer["error"] == "NOT_LEAD", answer


def test_forward_to_an_office_of_the_other_partys_district(nrw):
    """README: "A `FORWARD` may go to an office of the district of the referral's
    other party"; its DELIVERED travels back as any DELIVERED (PROTOCOL §16.6)."""
    s, c = nrw
    rid, case = uid("r"), uid("c")
    assert s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rid, case))[0] == 0
    Inbox(c, "soz.coesfeld").one(referral_id=rid)
    rc, fwd = c.send("soz.coesfeld", "--type", "FORWARD", "--to", "jc.steinfurt",
                     "--referral", rid, "--org", "soz.steinfurt", "--purpose", PURPOSE,
                     "--statute", STATUTE)
    assert rc == 0, fwd
    got = Inbox(s, "soz.steinfurt").one(type="FORWARD", referral_id=rid)["hdr"]
    assert got["sender"] == "soz.coesfeld" and got["org"] == "soz.steinfurt"
    Inbox(s, "jc.steinfurt").one(type="FORWARD", referral_id=rid)
    assert s.wait_state("jc.steinfurt", rid, "FORWARDED") == "FORWARDED"
    assert c.state("soz.coesfeld", rid) == "FORWARDED"
    # the new referral (its id the FORWARD's msg_id), delivered in Steinfurt
    Inbox(c, "soz.coesfeld").one(type="DELIVERED", ref_msg_id=fwd["msg_id"])
    assert c.wait_state("soz.coesfeld", fwd["msg_id"], "DELIVERED") == "DELIVERED"


def test_consent_and_its_revocation_cross_with_the_data(nrw):
    """README: "A consent given in one district for an office of another goes to
    that office's broker with the data, and so does its revocation." The
    shipped P8 lets kim.* refer under consent only, at both ends, so the
    referral passes Coesfeld only if the consent reached it; the revocation
    tells the office that received data under it (PROTOCOL §16.5) and the
    referral has the same state at both ends (README)."""
    s, c = nrw
    rid, case, consent = uid("r"), uid("c"), uid("g")
    rc, answer = s.send_json("kim.steinfurt", {
        "type": "CONSENT_GRANT", "case_id": case, "consent": consent, "subject": SUBJECT,
        "recipients": ["jc.coesfeld"], "purposes": [PURPOSE],
        "valid_until": now_ms() + 30 * 86400000})
    assert rc == 0, answer
    rc, answer = s.send("kim.steinfurt", "--type", "REFERRAL", "--to", "jc.coesfeld",
                        "--referral", rid, "--case", case, "--subject", SUBJECT,
                        "--purpose", PURPOSE, "--consent", consent)
    assert rc == 0, answer
    office = Inbox(c, "jc.coesfeld")
    office.one(type="REFERRAL", referral_id=rid)
    assert s.wait_state("kim.steinfurt", rid, "DELIVERED") == "DELIVERED"

    rc, answer = s.send("kim.steinfurt", "--type", "CONSENT_REVOKE", "--consent", consent)
    assert rc == 0, answer
    office.one(type="CONSENT_REVOKE", consent=consent)
    assert c.wait_state("jc.coesfeld", rid, "SUSPENDED") == "SUSPENDED"
    assert s.state("kim.steinfurt", rid) == "SUSPENDED"


def test_an_erasure_asked_at_home_reaches_the_far_district(nrw, tmp_path):
    """README, federation.md §3: an erasure asked in one district goes with the data to
    the district that received it (PROTOCOL.md 16.5): the far broker purges its copy
    of the payload and tells its office with a broker-made ERASURE."""
    s, c = nrw
    rid, case, subject = uid("r"), uid("c"), uid("p")
    payload = tmp_path / "erase.txt"
    payload.write_text("Herr K. braucht eine Wohnung")
    rc, receipt = s.send("jc.steinfurt", "--type", "REFERRAL", "--to", "soz.coesfeld",
                         "--referral", rid, "--case", case, "--subject", subject,
                         "--purpose", PURPOSE, "--statute", STATUTE, "--payload", payload)
    assert rc == 0, receipt
    office = Inbox(c, "soz.coesfeld")
    delivered = office.one(referral_id=rid)
    assert delivered.get("payload") == "Herr K. braucht eine Wohnung"
    r = s.kim("jc.steinfurt", "subject", "erase", subject)
    assert r.returncode == 0, r.stdout + r.stderr
    notice = office.one(type="ERASURE", subject=subject)
    told = notice["hdr"]
    assert told["sender"] == COESFELD
    # PROTOCOL.md 9.3: the notice names the transfers it covers by the seqs the
    # office received them with, here the far broker's
    named = json.loads(notice["payload"])
    assert (named["requested_by"], named["seqs"], named["last"]) == (
        "jc.steinfurt", [delivered["seq"]], True), named
    for d, told_here in ((s, 0), (c, 1)):
        line = "erasure of subject %s for jc.steinfurt: 1 payloads purged, %d recipients told" % (
            subject, told_here)
        assert poll(lambda: line in d.log()), (d.name, d.log()[-2000:])


#   --- federation.md §5, README, operations §3: rotation and revocation -------------

def test_rotated_signing_key_of_an_office_is_checked_by_the_far_broker(nrw):
    """federation.md §5: a rotation (new `sign_key`) takes effect at the home
    broker on reload, which publishes its directory again "so that ... far
    brokers check signatures with it"; README `kim` signs whenever it finds
    NAME.sign_secret beside NAME.cert_secret."""
    s, c = nrw
    before = c.knows("soz.coesfeld", "jc.steinfurt")["sign_key"]
    r = run(KIM, "keygen", "jc.steinfurt", "--dir", s.keys, "--sign", "--force")
    assert r.returncode == 0, r.stderr
    new = json.loads(r.stdout)["sign_key"]
    assert new != before
    s.write_config()
    s.reload()
    assert poll(lambda: (c.knows("soz.coesfeld", "jc.steinfurt") or {}).get("sign_key") == new)
    rid = uid("r")
    rc, answer = s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rid, uid("c")))
    assert rc == 0, answer
    Inbox(c, "soz.coesfeld").one(referral_id=rid)
    Inbox(s, "jc.steinfurt").one(type="DELIVERED", referral_id=rid)


def test_rotation_and_revocation_reach_the_other_district_on_reload(nrw):
    """federation.md §5: a rotation or revocation takes effect at the home broker
    on reload, which publishes its directory again to every peer; "a revoked
    office is simply missing from the next directory, and the other districts
    stop routing to it" -- "without a restart anywhere". README: "A key rotated
    or revoked in one district reaches the other on its next reload";
    operations §3."""
    s, c = nrw
    org = "ja.coesfeld"
    old = s.knows("jc.steinfurt", org)
    assert old and old["home"] == COESFELD

    new_key = c.keygen(org, force=True)
    assert new_key != old["public_key"]
    c.write_config()
    assert c.check().returncode == 0
    c.reload()
    assert poll(lambda: (s.knows("jc.steinfurt", org) or {}).get("public_key") == new_key), \
        s.knows("jc.steinfurt", org)

    c.revoked.add(org)
    c.write_config()
    # operations §3: an operator reloads remotely with `kim admin reload`
    r = c.kim("ops.coesfeld", "admin", "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "org_count" in json.loads(r.stdout)
    assert poll(lambda: s.directory("jc.steinfurt", org)[0] == 1), s.directory("jc.steinfurt",
                                                                                org)
    rows = s.directory("jc.steinfurt")[1]
    assert org not in [r["org"] for r in rows]
    # "stop routing to it": refused at home, nothing queued
    rc, answer = s.send("jc.steinfurt", *referral_flags(org, uid("r"), uid("c")))
    assert rc == 1 and answer["error"] == "UNKNOWN_RECIPIENT", answer
    assert s.process.poll() is None and s.link(COESFELD)["up"] is True


#   --- a third district: a new peer by reload, no transit, the trace -------------

def test_third_district_added_by_reload_over_ipc_and_traced(nrw, root):
    """operations §3: "A new peer is dialled at once"; kim.cfg(5) peers:
    endpoint "one or more tcp:// or ipc:// endpoints, comma-separated, tried in
    turn: after any failure of the link the next one is dialled"; federation.md
    §4: a trace over three logs, the district that never saw the message says
    so; PROTOCOL §16.8 no transit (Coesfeld does not learn Borken's offices)."""
    s, c = nrw
    b = District(root, BORKEN, BORKEN_ORGS)
    b.start()
    try:
        # Borken dials Steinfurt first at a dead port, then at its ipc:// endpoint:
        # a link up can only be the second one
        b.add_peer(s, endpoint="tcp://127.0.0.1:%d, %s" % (free_port(), s.ipc))
        b.write_config()
        assert b.check().returncode == 0
        b.reload()
        s.add_peer(b)
        s.write_config()
        assert s.check().returncode == 0
        s.reload()
        s.wait_link(BORKEN)
        b.wait_link(STEINFURT, timeout=15)
        assert s.link(COESFELD)["up"] is True            # the other link stays
        row = poll(lambda: s.knows("jc.steinfurt", "soz.borken"))
        assert row and row["home"] == BORKEN
        assert c.directory("jc.coesfeld", "soz.borken")[0] == 1

        rid = uid("r")
        rc, receipt = s.send("jc.steinfurt", *referral_flags("soz.borken", rid, uid("c")))
        assert rc == 0
        Inbox(b, "soz.borken").one(referral_id=rid)
        Inbox(s, "jc.steinfurt").one(type="DELIVERED", referral_id=rid)
        r = run(KIM, "audit", "trace", receipt["msg_id"], "--data", c.data, "--name", COESFELD,
                "--data", s.data, "--name", STEINFURT, "--data", b.data, "--name", BORKEN)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "OK: 2 copies of %s in 3 logs" % receipt["msg_id"] in r.stdout
        after_coesfeld = r.stdout.split(COESFELD, 1)[1]
        assert "the message is not in this log" in after_coesfeld.split("\n\n")[0]
    finally:
        rc = b.stop()
        assert rc == 0, b.log()[-2000:]


#   --- federation.md §6, README: a link down ---------------------------------------

def test_peer_down_mail_waits_and_arrives_in_order(fresh):
    """README: a message is "receipted here, and waits in the link's mailbox on
    disk until the other broker has ... logged and synced it"; "A link that is
    down loses nothing and catches up in order". federation.md §6: receipted as
    soon as logged at home, wait "on disk, in order"; the operator sees the
    link's state and mailbox depth (kim status `up`, `queued`; operations §5);
    the senders see no DELIVERED and past the deadline the usual REMINDER from
    their own broker; "a kill on either side at any moment loses nothing and
    delivers nothing twice"; back-off up to 10 s."""
    s, c = fresh(heartbeat_ms=1000, sections={"lifecycle": {"expire_seconds": 1}})
    down_at = s.log_size()
    assert c.stop() == 0
    rids = [uid("r") for _ in range(3)]
    cases = [uid("c") for _ in range(3)]
    receipts = []
    for i, rid in enumerate(rids):
        extra = ["--deadline", str(now_ms() + 1500)] if i == 1 else []
        rc, receipt = s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rid, cases[i],
                                                             *extra))
        assert rc == 0, receipt                   # receipted with the peer down
        receipts.append(receipt)
    s.wait_link(COESFELD, up=False, queued=3)

    sender = Inbox(s, "jc.steinfurt")
    reminder = sender.one(type="REMINDER", referral_id=rids[1])["hdr"]
    assert reminder["sender"] == STEINFURT
    expired = sender.one(type="EXPIRED", referral_id=rids[1])["hdr"]
    assert expired["sender"] == STEINFURT
    assert sender.where(type="DELIVERED") == []
    # operations §5: `no WELCOME` means unreachable (or a wrong public_key)
    assert poll(lambda: [l for l in link_lines(s, down_at) if "no WELCOME" in l]), \
        "\n".join(link_lines(s, down_at))

    s.kill()                                      # the sending broker dies
    s.start()
    assert s.link(COESFELD)["queued"] == 3
    # the sender resends the same msg_id: a duplicate, not a fourth message
    rc, again = s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rids[2], cases[2],
                                                       "--msg-id", receipts[2]["msg_id"]))
    assert rc == 0 and again.get("dup") is True, again
    # "Freshness (STALE) is not checked again on the far side": Coesfeld comes
    # back remembering msg_ids for 2 s only (kim.cfg(5) dedup_window_s: older
    # messages are refused as STALE), the waiting messages are older
    c.broker["dedup_window_s"] = 2
    c.write_config()
    assert c.check().returncode == 0
    c.start()
    s.wait_link(COESFELD, queued=0, timeout=BACKOFF_MAX + WAIT)
    got = Inbox(c, "soz.coesfeld").wait(3, type="REFERRAL")
    assert [m["hdr"]["msg_id"] for m in got] == [r["msg_id"] for r in receipts]
    assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
    assert now_ms() - got[0]["hdr"]["created_at"] > 2000
    # DELIVERED for the two that did not expire meanwhile (whether a referral
    # that expired at both ends before its office acked gets one is not said)
    for rid in (rids[0], rids[2]):
        sender.one(type="DELIVERED", referral_id=rid)
    assert sender.where(type="UNDELIVERABLE") == []
    time.sleep(0.5)
    assert len(Inbox(c, "soz.coesfeld").wait(1, timeout=0.5)) == 0   # nothing twice


def test_far_side_killed_after_receipt_loses_nothing(fresh):
    """federation.md §6: "a kill on either side at any moment loses nothing and
    delivers nothing twice"; the link comes back by itself (back-off)."""
    s, c = fresh()
    rids = [uid("r") for _ in range(5)]
    for rid in rids:
        assert s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rid, uid("c")))[0] == 0
    c.kill()
    c.start()
    s.wait_link(COESFELD, queued=0, timeout=BACKOFF_MAX + WAIT)
    got = Inbox(c, "soz.coesfeld").wait(5, type="REFERRAL")
    assert sorted(m["hdr"]["referral_id"] for m in got) == sorted(rids)
    assert len(got) == 5


#   --- operations §3: a reload that removes and adds a peer ------------------------

def test_reload_removes_a_peer_and_its_queued_mail_stays(fresh):
    """operations §3 "Links to other districts": peers are reread by the same
    reload (here `kim admin reload` by an operator); "a removed one is dropped
    (mail queued for it stays in its link mailbox, on disk, and its offices are
    unknown here until it is configured again"; kim.cfg(5) SECTION peers
    "removed ones dropped (their queued mail stays)"."""
    s, c = fresh(heartbeat_ms=1000)
    assert c.stop() == 0
    rid = uid("r")
    assert s.send("jc.steinfurt", *referral_flags("soz.coesfeld", rid, uid("c")))[0] == 0
    s.wait_link(COESFELD, queued=1, up=False)

    saved = s.peers.pop(COESFELD)
    s.write_config()
    r = s.kim("ops.steinfurt", "admin", "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert poll(lambda: s.directory("jc.steinfurt", "soz.coesfeld")[0] == 1)
    rc, answer = s.send("jc.steinfurt", *referral_flags("soz.coesfeld", uid("r"), uid("c")))
    assert rc == 1 and answer["error"] == "UNKNOWN_RECIPIENT", answer

    c.start()
    s.peers[COESFELD] = saved
    s.write_config()
    s.reload()
    s.wait_link(COESFELD, queued=0, timeout=BACKOFF_MAX + WAIT)
    Inbox(c, "soz.coesfeld").one(referral_id=rid)
    row = poll(lambda: s.knows("jc.steinfurt", "soz.coesfeld"))
    assert row and row["home"] == COESFELD


def test_configured_again_its_last_directory_holds_at_once(fresh):
    s, c = fresh(heartbeat_ms=1000)
    assert c.stop() == 0
    saved = s.peers.pop(COESFELD)
    s.write_config()
    s.reload()
    assert poll(lambda: s.directory("jc.steinfurt", "soz.coesfeld")[0] == 1)
    s.peers[COESFELD] = saved
    s.write_config()
    s.reload()
    row = poll(lambda: s.knows("jc.steinfurt", "soz.coesfeld"), timeout=3)
    assert row and row["home"] == COESFELD, s.status()


#   --- operations §5 "Link down": what the log says --------------------------------

def test_link_down_log_names_the_cause(fresh):
    """operations §5 "Link down": `journalctl -u kim-broker | grep module=link` says
    why: `no WELCOME` (unreachable or a wrong `public_key`), `REJECT
    BAD_SIGNATURE` (its `sign_key` here is wrong), `calls itself` (a wrong
    peer name). Steinfurt's operator makes each mistake in turn, then fixes it."""
    s, c = fresh(link=False)
    for d, other in ((s, c), (c, s)):
        d.add_peer(other)
    c.write_config()
    c.reload()
    stranger = District(s.dir, "broker.nowhere", {})
    stranger.start()
    wrong_key = stranger.keys_from_files()
    assert stranger.stop() == 0
    good = dict(s.peers[COESFELD])

    def attempt(cause, entry=None, name=COESFELD, where=(s,)):
        s.peers.clear()
        s.peers[name] = dict(good, **(entry or {}))
        s.write_config()
        assert s.check().returncode == 0
        offsets = {d.name: d.log_size() for d in (s, c)}
        s.reload()
        found = poll(lambda: [l for d in where for l in link_lines(d, offsets[d.name])
                              if cause in l], timeout=8)
        assert found, "%r not in the link lines:\n%s" % (
            cause, "\n".join(l for d in where for l in link_lines(d, offsets[d.name])))
        return found

    attempt("no WELCOME", {"public_key": wrong_key[0]})
    offset = s.log_size()
    attempt("calls itself", name="broker.wrongname")
    # federation.md §6 / PROTOCOL §16.1: it dials again "with a back-off (from
    # 200 ms up to 10 s)", doubling
    # (each attempt logs its `calls itself` line: the times of the attempts)
    def dial_times():
        return [time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2))
                for m in re.finditer(r"ts=(\S+?)(\.\d+)Z .*module=link .*calls itself",
                                     s.log(offset))]
    times = poll(lambda: (lambda ts: ts if len(ts) >= 4 else None)(dial_times()), timeout=6)
    assert times, dial_times()
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.15 <= gaps[0] <= 0.6 and all(g <= BACKOFF_MAX + 0.5 for g in gaps), gaps
    assert gaps[2] > gaps[0] * 2.5, gaps
    # "its sign_key here is wrong": which broker's journal says REJECT is not
    # said; either of the two is taken
    attempt("REJECT BAD_SIGNATURE", {"sign_key": wrong_key[1]}, where=(s, c))
    s.peers.clear()
    s.peers[COESFELD] = good
    s.write_config()
    s.reload()
    s.wait_link(COESFELD, timeout=BACKOFF_MAX + WAIT)
    c.wait_link(STEINFURT, timeout=BACKOFF_MAX + WAIT)


#   --- federation.md §5, operations §2/§3: a broker's lost signing key --------------

def test_lost_signing_key_is_refused_until_the_peer_takes_the_new_one(fresh):
    """operations §2: after a lost signing key the broker makes a new one;
    operations §3: "a lost signing key ... must be given to every peer again".
    federation.md §5: "a directory signed with a key the peer does not know is
    refused and the last good one stays in force. Nothing is lost, and nothing
    is accepted from an unknown key"; the peers take the new key into their
    config and reload. Coesfeld comes back with a new signing key and a new
    office (soz2.coesfeld), which Steinfurt may learn only under the new key."""
    s, c = fresh()
    assert c.stop() == 0
    os.unlink(os.path.join(c.data, "keys", "broker.sign_secret"))
    os.unlink(os.path.join(c.data, "keys", "broker.sign.pub"))
    c.orgs["soz2.coesfeld"] = "agency"
    c.keygen("soz2.coesfeld")
    c.write_config()
    offset = c.start()
    new_sign = c.keys_from_files()[1]
    assert new_sign != s.peers[COESFELD]["sign_key"]
    # the new key is in Coesfeld's log at start (README step 1)
    assert new_sign in c.log(offset)

    time.sleep(2.0)                                   # Coesfeld has published by now
    assert s.knows("jc.steinfurt", "jc.coesfeld"), "the last good directory stays in force"
    assert s.directory("jc.steinfurt", "soz2.coesfeld")[0] == 1, \
        "nothing is accepted from an unknown key"

    s.peers[COESFELD]["sign_key"] = new_sign
    s.write_config()
    s.reload()
    row = poll(lambda: s.knows("jc.steinfurt", "soz2.coesfeld"), timeout=BACKOFF_MAX + WAIT)
    assert row and row["home"] == COESFELD
    s.wait_link(COESFELD)
    c.wait_link(STEINFURT, timeout=BACKOFF_MAX + WAIT)


def test_new_broker_key_is_refused_until_the_peer_takes_it(fresh):
    """federation.md §5: a broker's CURVE key "authenticates its links" and is
    named in every peer's `peers` section; "A peer that does not know the new
    CURVE key yet refuses the link, and messages wait in the link mailbox
    meanwhile ... Nothing is lost"; operations §3 "a changed key ... redials".
    Coesfeld comes back with a new key pair (operations §2: the broker makes its
    key pair when there is none); mail waits both ways until Steinfurt's operator
    takes the new public_key and reloads."""
    s, c = fresh(heartbeat_ms=1000)
    old_public = c.keys_from_files()[0]
    assert c.stop() == 0
    os.unlink(os.path.join(c.data, "keys", "broker.cert"))
    os.unlink(os.path.join(c.data, "keys", "broker.cert_secret"))
    c.start()
    new_public = c.keys_from_files()[0]
    assert new_public != old_public

    there, back = uid("r"), uid("r")
    assert s.send("jc.steinfurt", *referral_flags("soz.coesfeld", there, uid("c")))[0] == 0
    assert c.send("soz.coesfeld", *referral_flags("jc.steinfurt", back, uid("c")))[0] == 0
    s.wait_link(COESFELD, up=False, queued=1)
    c.wait_link(STEINFURT, up=False, queued=1)
    assert Inbox(c, "soz.coesfeld").wait(timeout=1.0) == []

    s.peers[COESFELD]["public_key"] = new_public
    s.write_config()
    assert s.check().returncode == 0
    s.reload()
    s.wait_link(COESFELD, queued=0, timeout=BACKOFF_MAX + WAIT)
    c.wait_link(STEINFURT, queued=0, timeout=BACKOFF_MAX + WAIT)
    Inbox(c, "soz.coesfeld").one(referral_id=there)
    Inbox(s, "jc.steinfurt").one(referral_id=back)
