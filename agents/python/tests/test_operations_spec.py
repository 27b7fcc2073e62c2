"""An outside check of the operator's guide, docs/operations.md, written from the
documents alone and run against the real programs (kim-broker, kim).

It follows the guide as a municipal IT administrator would, without root or
systemd: each broker is a child process with its own temp folder, ipc:// endpoint
and free metrics port. Sections checked: §2 Keys, §3 Registry and policy changes
(with "Links to other districts"), §5 Alerts: what to do at 3 a.m. (the commands of
each runbook, the log lines it says to grep for, the metrics it names), §6 Backup,
§7 Restore, §8 Upgrades (what needs no older release), §9 Capacity planning (what a
limit does when reached), and deploy/monitoring/kim-alerts.yml (every metric and label
an alert expression uses is served, and the cheap situations are provoked so that the
expression's inputs move). The man pages kim-broker(8), kim(1), kim.cfg(5),
kim-policy(5), docs/federation.md and README.md are read where the guide sends the
reader there. Left out on purpose (checked elsewhere): the meaning, default and range
of each kim.cfg key, config-file errors in general, metric names and types in
general, and §1 Install / packages / systemd units.

Every expectation cites the section it comes from. Where the program does otherwise,
the test keeps the guide's word and is marked xfail(strict=True).

Programs: KIM_BROKER_BIN, KIM_CLI_BIN (default /tmp/kim-spec/...).
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import pytest
import zmq
import zmq.utils.z85

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "agents", "python"))
sys.path.insert(0, HERE)

import kim  # noqa: E402
from kim.certs import load_cert  # noqa: E402
from kim.testing import TestBroker, _items  # noqa: E402

BROKER_BIN = os.environ.get("KIM_BROKER_BIN") or "/tmp/kim-spec/kim-broker"
CLI_BIN = os.environ.get("KIM_CLI_BIN") or "/tmp/kim-spec/kim"
POLICY = os.path.join(ROOT, "deploy", "policy.cfg")
GUIDE = os.path.join(ROOT, "docs", "operations.md")
ALERTS = os.path.join(ROOT, "deploy", "monitoring", "kim-alerts.yml")
SCRAPE = os.path.join(ROOT, "deploy", "monitoring", "prometheus-scrape.yml")
ORGS = {"jc.rheine": "agency", "soz.rheine": "agency", "ops.rheine": "operator",
        "dsb.rheine": "auditor"}
SANITIZER = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                       r"Sanitizer:DEADLYSIGNAL")
START_LINE = re.compile(r'msg="kim-broker \S+ serving on .*log head (\d+)')

for _program in (BROKER_BIN, CLI_BIN):
    if not os.access(_program, os.X_OK):
        pytest.skip("%s: no such program" % _program, allow_module_level=True)


# ---------------------------------------------------------------- helpers

def wait_for(predicate, timeout=30.0, what="condition", step=0.05):
    """Polls `predicate` until it returns a true value (returned); fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(step)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, timeout=60, **kw):
    """Runs a program to its end; its output must hold no sanitizer report."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    found = SANITIZER.search(r.stdout + r.stderr)
    assert found is None, "sanitizer report from %s:\n%s" % (args, (r.stdout + r.stderr)[-3000:])
    return r


def referral(rid, to="soz.rheine", **fields):
    """A REFERRAL the shipped policy allows between agencies (rule P1: § 69 SGB X)."""
    hdr = {"type": "REFERRAL", "recipient": to, "referral_id": rid, "case_id": "C-1",
           "subject": "p-1", "purpose": "benefits",
           "legal_basis": {"kind": "statute", "citation": "SGB X §69(1)1"}}
    hdr.update(fields)
    return hdr


def peer_keys(log_text):
    """The keys for peers of each start line (§3: module=link, `public_key = ...,
    sign_key = ...`, Z85)."""
    return re.findall(r'module=link msg="[^\n]*public_key = \\"(\S{40})\\", '
                      r'sign_key = \\"(\S{40})\\"', log_text)


class Ops(TestBroker):
    """A TestBroker with the metrics endpoint on a free port (§4), refreshed
    every 100 ms, and the operator's tools at hand."""

    def __init__(self, orgs=None, policy=POLICY, **sections):
        self.port = free_port()
        metrics = {"enabled": 1, "port": self.port, "interval_ms": 100,
                   "referral_interval_s": 1}
        metrics.update(sections.pop("metrics", {}))
        sections["metrics"] = metrics
        super().__init__(BROKER_BIN, policy, ORGS if orgs is None else orgs,
                         sections=sections)
        self.preexec = None
        self.clients = []

    def start(self, timeout=60.0):
        """Starts the broker and waits for its start line ("serving on")."""
        starts = len(START_LINE.findall(self.log())) if os.path.exists(self.log_path) else 0
        socket_path = self.endpoint[len("ipc://"):]
        if os.path.exists(socket_path):
            os.unlink(socket_path)          # left by the last run: not a sign of this one
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([self.broker_bin, "--config", self.config],
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=self.preexec)
        wait_for(lambda: len(START_LINE.findall(self.log())) > starts
                 or self.process.poll() is not None, timeout, "the broker's start line")
        assert self.process.poll() is None, self.log_tail()
        return self

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_log(self, pattern, timeout=30.0):
        return wait_for(lambda: re.search(pattern, self.log()), timeout,
                        "%r in the broker's log" % pattern)

    def scrape(self):
        """[(name, {label: value}, float)] from GET /metrics (§4)."""
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port,
                                    timeout=5) as r:
            text = r.read().decode()
        samples = []
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
            if m and not line.startswith("#"):
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                samples.append((m.group(1), labels, float(m.group(3))))
        return samples

    def metric(self, name, **labels):
        for n, have, value in self.scrape():
            if n == name and all(have.get(k) == v for k, v in labels.items()):
                return value
        return None

    def wait_metric(self, name, check, timeout=30.0, **labels):
        def ok():
            value = self.metric(name, **labels)
            return value is not None and check(value) and (value,)
        return wait_for(ok, timeout, "%s%r to pass its check" % (name, labels))[0]

    def kim(self, *args, org="jc.rheine"):
        """The kim tool as `org` (KIM_ENDPOINT, KIM_BROKER_KEY = broker.cert, KIM_CERT)."""
        env = dict(os.environ, KIM_ENDPOINT=self.endpoint, KIM_BROKER_KEY=self.broker_cert,
                   KIM_CERT=self.cert_secret(org))
        return run([CLI_BIN] + list(args), env=env)

    def client(self, org, **options):
        """A connected kim.Client, closed at the latest when this broker stops (an
        unclosed client's context could block the interpreter when collected)."""
        c = kim.Client(self.endpoint, self.broker_cert, self.cert_secret(org), **options)
        try:
            c.connect()
        except BaseException:
            c.close()
            raise
        self.clients.append(c)
        return c

    def stop(self, timeout=60.0):
        while self.clients:
            with contextlib.suppress(Exception):          # closing is best effort
                self.clients.pop().close()
        return super().stop(timeout)

    def edit(self, change):
        with open(self.config, encoding="utf-8") as f:
            text = f.read()
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(change(text))

    def set_name(self, name):
        self.edit(lambda t: t.replace("    name = kim.test\n", "    name = %s\n" % name, 1))

    def hup(self):
        self.process.send_signal(signal.SIGHUP)

    def admin_reload(self):
        return self.kim("admin", "reload", org="ops.rheine")

    def restart(self):
        assert self.stop() == 0, self.log_tail()
        return self.start()

    def backup(self, target):
        return run([BROKER_BIN, "--config", self.config, "--backup", target])


def add_org(text, org, public_key, role="agency", extra=""):
    entry = ('    %s\n        name = "Test %s"\n        public_body = 1\n        role = %s\n'
             '        public_key = "%s"\n%s' % (org, org, role, public_key, extra))
    return text.replace("orgs\n", "orgs\n" + entry, 1)


def set_in_org(text, org, line):
    """Adds `line` (e.g. "revoked = 1") to the entry of `org`."""
    return re.sub(r"(    %s\n(?:        .*\n)*)" % re.escape(org),
                  lambda m: m.group(1) + "        %s\n" % line, text, count=1)


def with_peers(text, peers):
    return text + "peers\n" + "\n".join(_items(peers, 1)) + "\n"


class Raw:
    """A bare CURVE session (a DEALER) under an organisation's key, for what the
    client library hides: the REJECT that ends a session, a second HELLO."""
    opened = []

    def __init__(self, broker, org, broker_cert=None):
        Raw.opened.append(self)
        public, secret = load_cert(broker.cert_secret(org), secret=True)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.curve_publickey, self.sock.curve_secretkey = public.encode(), secret.encode()
        self.sock.curve_serverkey = load_cert(broker_cert or broker.broker_cert)[0].encode()
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(broker.endpoint)

    def recv(self, timeout=10.0):
        ready = self.sock.poll(int(timeout * 1000))
        return msgpack.unpackb(self.sock.recv_multipart()[0], raw=False) if ready else None

    def hello(self, timeout=10.0):
        self.sock.send(msgpack.packb({"cmd": "HELLO", "versions": [1], "agent": "ops-spec",
                                      "window": 0}))
        return self.recv(timeout)

    def close(self):
        self.sock.close(linger=0)

    @classmethod
    def close_all(cls):
        while cls.opened:
            cls.opened.pop().close()


@pytest.fixture
def ops():
    """ops(orgs=None, **sections) -> a started Ops broker; stopped after the test,
    which must then exit 0 with no sanitizer report in its log."""
    made = []

    def make(orgs=None, start=True, **sections):
        b = Ops(orgs, **sections)
        made.append(b)
        return b.start() if start else b
    yield make
    Raw.close_all()
    problems = []
    for b in made:
        running = b.process is not None
        rc = b.stop()
        text = b.log() if os.path.exists(b.log_path) else ""
        if SANITIZER.search(text):
            problems.append("sanitizer report in %s:\n%s" % (b.log_path, text[-3000:]))
        elif running and rc != 0:
            problems.append("kim-broker exited with %s: %s" % (rc, text[-1500:]))
        else:
            b.cleanup()
    if problems:
        pytest.fail("\n".join(problems))


def drain(b, org, count):
    """The seqs of `count` deliveries to `org` (a client session), acked."""
    c = b.client(org, window=64)
    seqs = [d.seq for d in (c.recv(20) for _ in range(count)) if d is not None]
    c.ack()
    c.close()
    return sorted(seqs)


def inbox(b, org, count, idle_ms=3000):
    """`kim inbox` of `org` until `count` messages came (or idle): JSON lines."""
    r = b.kim("inbox", "--count", str(count), "--idle", str(idle_ms), org=org)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------- §2 Keys

def test_first_start_makes_the_keys_and_refuses_secrets_readable_by_others(ops):
    """§2: on the first start in keys/: broker.cert (public), broker.cert_secret (0600),
    broker.sign_secret (0600) and broker.sign.pub; "The broker refuses to start when a
    secret file is readable by others"."""
    b = ops()
    keys = os.path.join(b.data, "keys")
    assert set(os.listdir(keys)) >= {"broker.cert", "broker.cert_secret",
                                     "broker.sign_secret", "broker.sign.pub"}
    assert len(load_cert(b.broker_cert)[0]) == 40
    with open(os.path.join(keys, "broker.sign.pub"), encoding="ascii") as f:
        assert len(bytes.fromhex(f.read().strip())) == 32       # §3: "in hex"
    assert b.stop() == 0
    for secret in ("broker.cert_secret", "broker.sign_secret"):
        path = os.path.join(keys, secret)
        assert os.stat(path).st_mode & 0o777 == 0o600, secret
        os.chmod(path, 0o644)
        r = run([BROKER_BIN, "--config", b.config])
        assert r.returncode != 0 and "serving on" not in r.stdout + r.stderr, secret
        os.chmod(path, 0o600)
    b.start()                                                    # and starts once fixed


def test_keygen_pair_whose_public_key_line_goes_into_the_registry(ops):
    """§2: `kim keygen jc.rheine --dir ./keys` makes ORG.cert (its public-key line goes
    into the registry) and ORG.cert_secret (0600); §3: after `kim-broker --check` and a
    reload the new key is admitted at once."""
    b = ops()
    keydir = os.path.join(b.folder, "agency-keys")
    r = run([CLI_BIN, "keygen", "aa.rheine", "--dir", keydir])
    assert r.returncode == 0, r.stderr
    cert, secret = (os.path.join(keydir, "aa.rheine" + s) for s in (".cert", ".cert_secret"))
    assert os.stat(secret).st_mode & 0o777 == 0o600
    with open(cert, encoding="utf-8") as f:
        public = re.search(r'public-key = "(.{40})"', f.read()).group(1)
    shutil.copy(secret, b.cert_secret("aa.rheine"))
    # before the registry has it, the key gets no session
    raw = Raw(b, "aa.rheine")
    assert raw.hello(timeout=1.5) is None
    raw.close()
    b.edit(lambda t: add_org(t, "aa.rheine", public))
    check = run([BROKER_BIN, "--check", "--config", b.config])
    assert check.returncode == 0 and "aa.rheine" in check.stdout + check.stderr, check
    b.hup()
    welcome = wait_for(lambda: Raw(b, "aa.rheine").hello(timeout=1), 30, "aa.rheine admitted")
    assert welcome["cmd"] == "WELCOME" and welcome["org"] == "aa.rheine"


def test_replacing_the_broker_curve_key(ops):
    """§2: stop, move broker.cert and broker.cert_secret out of keys/, start: the broker
    makes a new pair and logs its keys (module=link); agencies need the new public key."""
    b = ops()
    b.client("jc.rheine").send(referral("R-1"), b"x")
    assert b.stop() == 0
    aside = os.path.join(b.folder, "old-keys")
    os.makedirs(aside)
    for name in ("broker.cert", "broker.cert_secret"):
        os.rename(os.path.join(b.data, "keys", name), os.path.join(aside, name))
    old_public = load_cert(os.path.join(aside, "broker.cert"))[0]
    b.start()
    new_public = load_cert(b.broker_cert)[0]
    assert new_public != old_public
    b.wait_log(r"module=link msg=\"[^\n]*public_key = \\\"" + re.escape(new_public))
    stale = Raw(b, "jc.rheine", broker_cert=os.path.join(aside, "broker.cert"))
    assert stale.hello(timeout=2) is None, "a session under the old broker key"
    stale.close()
    c = b.client("jc.rheine")
    assert c.status()["log_head"] >= 1                          # the store is the same
    c.close()


def _checkpoints(data):
    r = run([CLI_BIN, "audit", "replay", "--data", data, "--type", "checkpoint"])
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _rotated_signing_key(ops):
    """A broker whose signing key was replaced by §2's steps, one checkpoint under
    each key; returns (broker, old broker.sign.pub, old checkpoint seq, new one)."""
    b = ops(audit={"checkpoint_seconds": 1})
    c = b.client("jc.rheine")
    c.send(referral("R-1"), b"x")
    first = wait_for(lambda: _checkpoints(b.data), 30, "a checkpoint")[0]["seq"]
    c.close()
    assert b.stop() == 0
    aside = os.path.join(b.folder, "old-keys")
    os.makedirs(aside)
    for name in ("broker.sign_secret", "broker.sign.pub"):
        os.rename(os.path.join(b.data, "keys", name), os.path.join(aside, name))
    b.start()
    c = b.client("jc.rheine")
    c.send(referral("R-2"), b"x")
    later = wait_for(lambda: _checkpoints(b.data)[1:], 30, "a second checkpoint")[0]["seq"]
    c.close()
    assert b.stop() == 0
    return b, os.path.join(aside, "broker.sign.pub"), first, later


def test_replacing_the_signing_key_old_checkpoints_need_the_old_public_key(ops):
    """§2: after a new signing key, checkpoints signed before verify only against the
    old broker.sign.pub (keep it); the new key signs what follows."""
    b, old_pub, first, _later = _rotated_signing_key(ops)
    with open(old_pub) as f, open(os.path.join(b.data, "keys", "broker.sign.pub")) as g:
        assert f.read() != g.read()
    new = run([CLI_BIN, "audit", "verify", "--data", b.data])
    failed = re.search(r"FAILED at seq (\d+)", new.stdout + new.stderr)
    assert new.returncode == 1 and failed and int(failed.group(1)) == first, new
    old = run([CLI_BIN, "audit", "verify", "--data", b.data, "--sign-key", old_pub])
    failed = re.search(r"FAILED at seq (\d+)", old.stdout + old.stderr)
    assert old.returncode == 0 or (failed and int(failed.group(1)) > first), old


def test_an_intact_store_verifies_after_the_signing_key_replacement(ops):
    """§2: a log signed by several keys verifies with all of them given
    (`--sign-key` twice); §5 'Audit verify fails': exit 1 only for a broken log,
    and the message for a missing key says which key signed."""
    b, old_pub, first, later = _rotated_signing_key(ops)
    new_pub = os.path.join(b.data, "keys", "broker.sign.pub")
    both = run([CLI_BIN, "audit", "verify", "--data", b.data, "--sign-key", new_pub,
                "--sign-key", old_pub])
    assert both.returncode == 0, both
    assert "checkpoints signed by keys " in both.stdout, both
    alone = run([CLI_BIN, "audit", "verify", "--data", b.data])
    assert alone.returncode == 1 and "not by the broker's key" in alone.stdout, alone
    # kim(1) audit trace: --sign-key again for each key of such a broker
    replay = run([CLI_BIN, "audit", "replay", "--data", b.data, "--type", "REFERRAL"])
    msg_id = json.loads(replay.stdout.splitlines()[0])["body"]["msg_id"]
    traced = run([CLI_BIN, "audit", "trace", msg_id, "--data", b.data, "--sign-key", new_pub,
                  "--sign-key", old_pub])
    assert traced.returncode == 0, traced
    assert run([CLI_BIN, "audit", "trace", msg_id, "--data", b.data]).returncode == 1


# ---------------------------------------------------------------- §3 Registry

def test_reload_ends_sessions_of_a_revoked_key_with_REVOKED(ops):
    """§3: revoked = 1 and a reload: sessions of the revoked key end with REVOKED at once."""
    b = ops()
    raw = Raw(b, "soz.rheine")
    assert raw.hello()["cmd"] == "WELCOME"
    b.edit(lambda t: set_in_org(t, "soz.rheine", "revoked = 1"))
    b.hup()
    reject = raw.recv(timeout=20) or {}
    assert (reject.get("cmd"), reject.get("reason")) == ("REJECT", "REVOKED"), reject
    with pytest.raises(kim.Rejected) as refused:
        b.client("soz.rheine", timeout=5)
    assert refused.value.reason == "REVOKED"
    b.client("jc.rheine").close()                                # others unaffected


def test_reload_of_a_rotated_key_locks_out_the_old_one_UNKNOWN_ORG(ops):
    """§3: a rotated key's sessions end with REVOKED, and a connection still open under
    the key rotated out can open no new session (UNKNOWN_ORG)."""
    b = ops()
    raw = Raw(b, "soz.rheine")
    assert raw.hello()["cmd"] == "WELCOME"
    fresh = os.path.join(b.folder, "rotated")
    assert run([CLI_BIN, "keygen", "soz.rheine", "--dir", fresh]).returncode == 0
    new_public = load_cert(os.path.join(fresh, "soz.rheine.cert"))[0]
    old_public = load_cert(b.cert_secret("soz.rheine"))[0]
    b.edit(lambda t: t.replace(old_public, new_public))
    b.hup()
    reject = raw.recv(timeout=20) or {}
    assert reject.get("reason") == "REVOKED", reject
    again = raw.hello() or {}
    assert (again.get("cmd"), again.get("reason")) == ("REJECT", "UNKNOWN_ORG"), again
    shutil.copy(os.path.join(fresh, "soz.rheine.cert_secret"), b.cert_secret("soz.rheine"))
    b.client("soz.rheine").close()                               # the new key is admitted


def test_invalid_registry_changes_nothing_and_names_file_and_key(ops):
    """§3: "An invalid file changes nothing; the journal (and `kim admin reload`) names
    the file and the key." An operator reloads remotely with `kim admin reload`."""
    b = ops()
    jc = b.client("jc.rheine")
    assert run([CLI_BIN, "keygen", "aa.rheine", "--dir", b.keys]).returncode == 0
    public = load_cert(b.cert_secret("aa.rheine"))[0]
    good = open(b.config, encoding="utf-8").read()
    b.edit(lambda t: add_org(t, "aa.rheine", public, extra="        colour = blue\n"))
    r = b.admin_reload()
    assert r.returncode != 0
    assert b.config in r.stdout + r.stderr and "colour" in r.stdout + r.stderr, r
    named = r"level=error[^\n]*%s[^\n]*colour" % re.escape(b.config)
    seen = len(re.findall(named, b.log()))
    assert seen >= 1                                             # the journal names them too
    b.hup()
    wait_for(lambda: len(re.findall(named, b.log())) > seen, 30, "the SIGHUP's error line")
    raw = Raw(b, "aa.rheine")
    assert raw.hello(timeout=1.5) is None                        # the new key: not admitted
    raw.close()
    jc.ping()                                                   # the old session goes on
    b.edit(lambda t: add_org(good, "aa.rheine", public))
    r = b.admin_reload()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["org_count"] == 5
    b.client("aa.rheine").close()
    jc.close()


def test_policy_is_read_at_start_only(ops):
    """§3: the policy is read at start only: `kim policy lint`, `kim policy check`,
    then a restart; a reload does not apply it (kim-policy(5))."""
    b = ops(start=False)
    policy = os.path.join(b.folder, "policy.cfg")
    shutil.copy(POLICY, policy)
    b.edit(lambda t: t.replace(b.policy, policy))
    check = [CLI_BIN, "policy", "check", "--policy", policy, "--from", "jc.rheine",
             "--to", "soz.rheine", "--purpose", "benefits", "--statute", "SGB X §69(1)1"]
    assert run([CLI_BIN, "policy", "lint", policy]).returncode == 0
    assert run(check).returncode == 0                            # the guide's example passes
    b.start()
    assert b.client("jc.rheine").send(referral("R-1"), b"x")["seq"] >= 1
    with open(policy, encoding="utf-8") as f:
        text = f.read()
    deny = ('    P0\n        law = "test"\n        why = "jc to soz denied"\n'
            '        from = jc\n        to = soz\n        decision = deny\n')
    at = text.index("\nrules\n") + len("\nrules\n")
    with open(policy, "w", encoding="utf-8") as f:
        f.write(text[:at] + deny + text[at:])
    assert run([CLI_BIN, "policy", "lint", policy]).returncode == 0
    assert run(check).returncode == 1                            # check says: denied
    assert b.admin_reload().returncode == 0
    c = b.client("jc.rheine")
    assert c.send(referral("R-2"), b"x")["seq"] >= 1             # not applied by a reload
    c.close()
    b.restart()
    with pytest.raises(kim.Rejected) as denied:
        b.client("jc.rheine").send(referral("R-3"), b"x")
    assert denied.value.reason == "POLICY_DENY"


def test_restart_is_safe_unacked_deliveries_come_again(ops):
    """§3: "A restart is safe at any time: receipted messages are on disk, agents
    reconnect and get their unacked deliveries again"."""
    b = ops()
    jc = b.client("jc.rheine")
    seqs = [jc.send(referral("R-%d" % i), b"x")["seq"] for i in range(3)]
    jc.close()
    soz = b.client("soz.rheine", window=16)
    got = [soz.recv(20) for _ in seqs]
    assert [d.seq for d in got if d] == seqs
    b.restart()                                                  # SIGTERM, no ack sent
    soz2 = b.client("soz.rheine", window=16)
    again = [soz2.recv(20) for _ in seqs]
    assert [d.seq for d in again if d] == seqs
    soz2.ack()
    soz2.close()


# ---------------------------------------------------------------- §3 Links

def test_every_start_logs_the_keys_for_peers(ops):
    """§3: this broker's keys for its peers are in the log at every start (module=link,
    `public_key = ..., sign_key = ...` in Z85); keys/broker.sign.pub holds the same
    signing key in hex."""
    b = ops()
    b.restart()
    found = peer_keys(b.log())
    assert len(found) >= 2, "one line per start"
    with open(os.path.join(b.data, "keys", "broker.sign.pub")) as f:
        sign_hex = f.read().strip()
    for public, sign in found:
        assert public == load_cert(b.broker_cert)[0]
        assert zmq.utils.z85.decode(sign).hex() == sign_hex.lower()


def test_two_districts_linked_by_their_logged_keys_and_a_link_down(ops):
    """§3 Links, README "Connecting two districts", §5 Link down: keys from the start
    line, a `peers` entry each, a reload, and the link comes up; with the other broker
    stopped, kim_link_up{peer} is 0, `grep module=link` says `no WELCOME` (unreachable),
    mail waits (kim_link_queued, `kim status` links) and goes out in order on return."""
    a = ops({"jc.rheine": "agency", "ops.rheine": "operator"}, start=False,
            broker={"heartbeat_ms": 1000})
    z = ops({"soz.coesfeld": "agency"}, start=False, broker={"heartbeat_ms": 1000})
    a.set_name("broker.steinfurt")
    z.set_name("broker.coesfeld")
    a.start()
    z.start()
    (a_pub, a_sign), (z_pub, z_sign) = peer_keys(a.log())[0], peer_keys(z.log())[0]
    a.edit(lambda t: with_peers(t, {"broker.coesfeld": {
        "endpoint": '"%s"' % z.endpoint, "public_key": '"%s"' % z_pub,
        "sign_key": '"%s"' % z_sign}}))
    z.edit(lambda t: with_peers(t, {"broker.steinfurt": {
        "endpoint": '"%s"' % a.endpoint, "public_key": '"%s"' % a_pub,
        "sign_key": '"%s"' % a_sign}}))
    check = run([BROKER_BIN, "--check", "--config", a.config])
    assert check.returncode == 0 and "broker.coesfeld" in check.stdout + check.stderr
    a.hup()
    z.hup()
    a.wait_log(r'module=link msg="broker\.coesfeld up \(0 messages queued for it\)"')
    z.wait_log(r'module=link msg="broker\.steinfurt up')
    assert a.wait_metric("kim_link_up", lambda v: v == 1, peer="broker.coesfeld") == 1

    def known():
        r = a.kim("directory", "soz.coesfeld")
        return r.returncode == 0 and json.loads(r.stdout.splitlines()[0])
    assert wait_for(known, 30, "soz.coesfeld in the directory")["home"] == "broker.coesfeld"
    send = ["send", "--type", "REFERRAL", "--to", "soz.coesfeld", "--case", "C-9",
            "--subject", "p-9", "--purpose", "benefits", "--statute", "SGB X §69(1)1"]
    r = a.kim(*send, "--referral", "R-0", "--msg-id", "x-0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [m["hdr"]["msg_id"] for m in inbox(z, "soz.coesfeld", 1, 20000)] == ["x-0"]

    assert z.stop() == 0                                         # the other district is down
    a.wait_metric("kim_link_up", lambda v: v == 0, timeout=40, peer="broker.coesfeld")
    for i in (1, 2):
        r = a.kim(*send, "--referral", "R-%d" % i, "--msg-id", "x-%d" % i)
        assert r.returncode == 0, r.stdout + r.stderr            # receipted at home
    a.wait_metric("kim_link_queued", lambda v: v == 2, peer="broker.coesfeld")
    status = json.loads(a.kim("status", org="ops.rheine").stdout)
    link = [x for x in status["links"] if x["peer"] == "broker.coesfeld"][0]
    assert link["up"] is False and link["queued"] == 2
    a.wait_log(r"module=link[^\n]*broker\.coesfeld[^\n]*no WELCOME", timeout=40)

    z.start()
    a.wait_metric("kim_link_queued", lambda v: v == 0, timeout=60, peer="broker.coesfeld")
    assert a.metric("kim_link_up", peer="broker.coesfeld") == 1
    assert [m["hdr"]["msg_id"] for m in inbox(z, "soz.coesfeld", 2, 20000)] == ["x-1", "x-2"]


@pytest.fixture
def far():
    from kim_peer import FarBroker
    made = []

    def make(name="broker.far"):
        made.append(FarBroker(name))
        return made[-1]
    yield make
    for f in made:
        f.close()


def test_reload_dials_a_new_peer_drops_a_removed_one_and_republishes(ops, far):
    """§3 Links: a new peer is dialled at once; a removed one is dropped (its queued mail
    stays, its offices are unknown until configured again, when its last directory holds
    again); the directory is published to every peer again on a reload, so a
    revocation reaches the other district without a restart; a changed endpoint redials."""
    f = far()
    f.add("soz.far")
    inbound = f.listen(local="kim.test")
    b = ops()
    base = open(b.config, encoding="utf-8").read()
    b.edit(lambda t: with_peers(t, f.peers()))
    b.hup()
    hello = inbound.hello(timeout=5)
    assert hello is not None, "the new peer was not dialled at once"
    _hello, first, _ping = inbound.accept(hello=hello)
    assert {o["id"] for o in first["orgs"]} >= {"jc.rheine", "soz.rheine"}
    outbound = f.dial(b)
    assert outbound.hello()["cmd"] == "WELCOME"
    assert outbound.publish(f.directory()) == []
    wait_for(lambda: b.kim("directory", "soz.far").returncode == 0, 30, "soz.far known")
    r = b.kim("send", "--type", "REFERRAL", "--to", "soz.far", "--referral", "R-9",
              "--case", "C-9", "--subject", "p-9", "--purpose", "benefits",
              "--statute", "SGB X §69(1)1", "--msg-id", "queued-1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert inbound.forward()["hdr"]["msg_id"] == "queued-1"     # not acked: still queued

    b.edit(lambda t: base)                                       # the peer removed
    b.hup()
    wait_for(lambda: b.kim("directory", "soz.far").returncode == 1, 30, "soz.far unknown")

    b.edit(lambda t: with_peers(base, f.peers()))                # configured again
    b.hup()
    wait_for(lambda: b.kim("directory", "soz.far").returncode == 0, 30,
             "soz.far known again from the last directory")
    inbound.accept()
    again = inbound.forward()
    assert again is not None and again["hdr"]["msg_id"] == "queued-1"   # the mail stayed
    inbound.ack(again["seq"])
    b.wait_metric("kim_link_queued", lambda v: v == 0, peer="broker.far")

    b.edit(lambda t: set_in_org(t, "soz.rheine", "revoked = 1"))
    b.hup()
    doc = inbound.wait(lambda m: m.get("cmd") == "PEER_DIRECTORY" and "soz.rheine" not in
                       {o["id"] for o in m["orgs"]})
    assert doc is not None, "no directory without the revoked soz.rheine after the reload"
    assert "jc.rheine" in {o["id"] for o in doc["orgs"]}

    moved = "ipc://%s/moved.sock" % f.folder                      # a changed endpoint
    second = f.listen(local="kim.test", endpoint=moved)
    b.edit(lambda t: t.replace(f.endpoint, moved))
    b.hup()
    assert second.hello(timeout=20) is not None, "no redial to the changed endpoint"


def test_a_silent_peer_counts_as_down_after_three_heartbeats(ops, far):
    """§5 Link down: a link counts as down three heartbeats after the peer went silent
    (15 s with the default 5 s): kim_link_up{peer} turns 0, `module=link` says so."""
    f = far()
    inbound = f.listen(local="kim.test")
    b = ops(broker={"heartbeat_ms": 1000}, peers=f.peers())
    inbound.accept(heartbeat_ms=1000)
    b.wait_metric("kim_link_up", lambda v: v == 1, peer="broker.far")
    silent = time.monotonic()                                    # no PONG from here on
    b.wait_metric("kim_link_up", lambda v: v == 0, timeout=30, peer="broker.far")
    assert 2.0 <= time.monotonic() - silent <= 10.0, "not about three heartbeats (1 s)"
    b.wait_log(r"module=link[^\n]*broker\.far[^\n]*down")


def test_link_log_says_why_no_WELCOME_and_calls_itself(ops, far):
    """§5 Link down: `grep module=link` says `no WELCOME` (unreachable, or a wrong
    public_key) and `calls itself` (a wrong peer name)."""
    named = far("broker.far")
    wrong_key = far("broker.wrongkey")
    nowhere = far("broker.nowhere")
    inbound = named.listen(local="kim.test")
    wrong_key.listen(local="kim.test")
    peers = {}
    peers.update(named.peers())
    peers.update(wrong_key.peers(public_key=zmq.curve_keypair()[0].decode()))
    peers.update(nowhere.peers(endpoint="ipc://%s/nobody.sock" % nowhere.folder))
    b = ops(peers=peers)
    inbound.welcome(inbound.hello(), name="broker.other")
    b.wait_log(r"module=link[^\n]*calls itself")
    b.wait_log(r"module=link[^\n]*broker\.wrongkey[^\n]*no WELCOME")
    b.wait_log(r"module=link[^\n]*broker\.nowhere[^\n]*no WELCOME")
    for peer in ("broker.far", "broker.wrongkey", "broker.nowhere"):
        assert b.metric("kim_link_up", peer=peer) == 0


def test_a_directory_not_signed_with_the_peers_sign_key_is_ignored(ops, far):
    """§5 Link down: `does not verify with its sign_key: ignored` (the peer's sign_key
    here is wrong: the link is up but none of its offices are known; the other broker's
    log says `REJECT BAD_SIGNATURE`)."""
    import nacl.signing
    f = far()
    f.add("soz.far")
    inbound = f.listen(local="kim.test")
    b = ops(peers=f.peers())
    inbound.accept()
    assert b.wait_metric("kim_link_up", lambda v: v == 1, peer="broker.far") == 1
    outbound = f.dial(b)
    outbound.hello()
    answer = outbound.publish(f.directory(signer=nacl.signing.SigningKey.generate()))
    assert [a.get("reason") for a in answer] == ["BAD_SIGNATURE"]
    b.wait_log(r"module=link[^\n]*does not verify with its sign_key: ignored")
    assert b.metric("kim_link_up", peer="broker.far") == 1
    assert b.metric("kim_link_remote_orgs", peer="broker.far") == 0
    assert b.kim("directory", "soz.far").returncode == 1


def test_a_peer_refusing_our_directory_shows_REJECT_BAD_SIGNATURE_in_our_log(ops, far):
    """§5 Link down: the broker whose directory the other side refuses logs
    `REJECT BAD_SIGNATURE` (module=link)."""
    f = far()
    inbound = f.listen(local="kim.test")
    b = ops(peers=f.peers())
    inbound.welcome(inbound.hello())
    assert inbound.wait(lambda m: m.get("cmd") == "PEER_DIRECTORY") is not None
    inbound.send({"cmd": "REJECT", "code": 211, "reason": "BAD_SIGNATURE", "path": "sig",
                  "text": "the directory's signature does not verify"})
    b.wait_log(r"module=link[^\n]*REJECT BAD_SIGNATURE")


# ---------------------------------------------------------------- §5 Alerts

def test_broker_down_second_broker_on_the_same_folder(ops):
    """§5 Broker down: "is in use: another broker holds …/broker.lock" (a second broker
    on the same folder); kim-broker(8): exit 1 when it cannot start (the store)."""
    b = ops()
    r = run([BROKER_BIN, "--config", b.config, "--bind", "ipc://%s/second.sock" % b.folder])
    assert r.returncode == 1, r
    assert re.search(r"is in use: another broker holds \S*/broker\.lock", r.stdout + r.stderr)
    assert re.search(r"level=error[^\n]*cannot", r.stdout + r.stderr)   # §4 "cannot"
    assert b.kim("status").returncode == 0                       # the first goes on


def test_broker_down_a_failed_write_fails_closed_and_loses_nothing(ops):
    """§5: "store failed" (a failed write, usually a full disk); "a failed write fails
    it closed": free space and restart; receipted messages are never lost, agents catch
    up. The full disk is played by RLIMIT_FSIZE (SIGXFSZ ignored: writes fail)."""
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))
    b = ops(start=False)
    b.preexec = small_files
    b.start()
    c = b.client("jc.rheine", timeout=20)
    receipted, refusal = [], None
    for i in range(400):
        try:
            receipted.append(c.send(referral("R-%d" % i), os.urandom(60000), seal=False)["seq"])
        except (kim.Rejected, kim.KimError) as e:
            refusal = e
            break
    c.close()
    assert refusal is not None, "the store never failed"
    assert getattr(refusal, "reason", None) == "STORE_FAILED"     # kim-alerts.yml's reason
    wait_for(lambda: b.process.poll() is not None, 30, "the broker to stop")
    assert b.process.returncode == 1                              # kim-broker(8)
    b.process = None
    b._log.close()
    assert re.search(r"level=error[^\n]*store failed", b.log()), b.log_tail()
    b.preexec = None                                              # space freed
    b.start()
    assert drain(b, "soz.rheine", len(receipted)) == receipted


def _fill_store(b):
    c = b.client("jc.rheine")
    for i in range(200):
        try:
            c.send(referral("F-%d" % i), os.urandom(60000), seal=False)
        except kim.Rejected as e:
            c.close()
            return e
    pytest.fail("no STORE_FULL after 200 payloads of 60 KB under map_max_mb = 2")


def test_map_at_map_max_mb_refuses_with_STORE_FULL_and_a_raise_helps(ops):
    """§5 Disk or map almost full, §9 Map size, kim-alerts.yml KimStoreMapAbove80Percent
    and KimStoreFullRefusals: map_max_mb caps the store file, senders get STORE_FULL
    (kim_refusals_total{reason="STORE_FULL"}), kim_store_map_used_ratio > 0.8, the broker
    keeps serving; raise map_max_mb and restart, and messages are taken again."""
    b = ops(store={"map_size_mb": 1, "map_max_mb": 2})
    assert _fill_store(b).reason == "STORE_FULL"
    assert b.wait_metric("kim_refusals_total", lambda v: v >= 1, reason="STORE_FULL") >= 1
    assert b.wait_metric("kim_store_map_used_ratio", lambda v: v > 0.8) > 0.8
    assert os.path.getsize(os.path.join(b.data, "store", "data.mdb")) <= 2 << 20
    assert b.kim("status").returncode == 0                       # refuses, still serves
    assert b.stop() == 0
    b.edit(lambda t: t.replace("map_max_mb = 2", "map_max_mb = 64"))
    b.start()
    assert b.client("jc.rheine").send(referral("after"), os.urandom(60000), seal=False)
    assert b.metric("kim_store_map_used_ratio") < 0.8


def test_store_full_shows_in_the_journal_by_its_word(ops):
    """§4 'Without Prometheus': watch the journal for `STORE_FULL`."""
    b = ops(store={"map_size_mb": 1, "map_max_mb": 2})
    assert _fill_store(b).reason == "STORE_FULL"
    b.wait_log(r"level=error[^\n]*store")
    assert "STORE_FULL" in b.log()


def test_shrink_the_file_by_backup_and_restore(ops):
    """§5: a compacted copy is often much smaller (`kim-broker --backup` reports both
    sizes); to shrink the file: stop, back up (works on a stopped broker), restore (§7),
    start. §9: a compacted backup is smaller than the live file."""
    b = ops()
    c = b.client("jc.rheine")
    seqs = [c.send(referral("R-%d" % i), os.urandom(4000), seal=False)["seq"] for i in range(30)]
    c.close()
    assert b.stop() == 0
    target = os.path.join(b.folder, "compact")
    r = b.backup(target)
    assert r.returncode == 0, r.stderr
    m = re.search(r"store (\d+) bytes \(live (\d+)\)", r.stdout)
    assert m and int(m.group(1)) < int(m.group(2)), r.stdout
    live = os.path.getsize(os.path.join(b.data, "store", "data.mdb"))
    os.rename(b.data, b.data + ".broken")
    assert run(["cp", "-a", target, b.data]).returncode == 0
    assert os.path.getsize(os.path.join(b.data, "store", "data.mdb")) < live
    b.start()
    assert drain(b, "soz.rheine", len(seqs)) == seqs


def test_old_mail_waits_and_its_age_grows_and_QUOTA_only_at_the_quota(ops):
    """§5 Old mail, kim-alerts.yml KimOldMail (kim_mailbox_oldest_age_seconds{org}):
    the agency's agent is away, nothing is lost, the oldest message's age grows; 0 when
    nothing waits (§4). "Only if the mailbox approaches broker/mailbox_quota do senders
    start getting QUOTA" (kim_refusals_total{reason="QUOTA"})."""
    b = ops(broker={"mailbox_quota": 2})
    c = b.client("jc.rheine")
    c.send(referral("R-1"), b"x")
    c.send(referral("R-2"), b"x")
    with pytest.raises(kim.Rejected) as full:
        c.send(referral("R-3"), b"x")
    assert full.value.reason == "QUOTA"
    assert b.wait_metric("kim_refusals_total", lambda v: v == 1, reason="QUOTA") == 1
    c.close()
    assert b.wait_metric("kim_mailbox_messages", lambda v: v == 2, org="soz.rheine") == 2
    early = b.wait_metric("kim_mailbox_oldest_age_seconds", lambda v: v >= 1,
                          org="soz.rheine")
    later = b.wait_metric("kim_mailbox_oldest_age_seconds", lambda v: v >= early + 1,
                          org="soz.rheine")
    assert later > early
    assert len(inbox(b, "soz.rheine", 2)) == 2                   # the mail waited
    b.wait_metric("kim_mailbox_messages", lambda v: v == 0, org="soz.rheine")
    assert b.wait_metric("kim_mailbox_oldest_age_seconds", lambda v: v == 0,
                         org="soz.rheine") == 0


def test_a_revoked_agency_shows_in_the_journal(ops):
    """§5 Old mail: the journal says whether the agency's key was revoked and its
    sessions are refused (`REVOKED`), naming it."""
    b = ops()
    soz = b.client("soz.rheine")
    b.edit(lambda t: set_in_org(t, "soz.rheine", "revoked = 1"))
    b.hup()
    b.wait_log(r"the key of soz\.rheine is revoked")      # SIGHUP is handled in the loop
    with pytest.raises(kim.Rejected):
        soz.ping()
    for _ in range(2):
        with pytest.raises(kim.Rejected):
            b.client("soz.rheine", timeout=5)
    b.wait_log(r"soz\.rheine[^\n]*REVOKED|REVOKED[^\n]*soz\.rheine", timeout=3)


def test_overdue_referrals_remind_both_sides_then_expire(ops):
    """§5 Overdue referrals, kim-alerts.yml KimOverdueReferrals (kim_referrals_overdue):
    past its deadline a referral is counted overdue, both sides get a REMINDER,
    `kim referral list --overdue` lists it (§4), and the broker marks it EXPIRED."""
    b = ops(lifecycle={"deadline_seconds": 1, "expire_seconds": 4})
    b.client("jc.rheine").send(referral("R-1"), b"x")
    assert b.wait_metric("kim_referrals_overdue", lambda v: v == 1) == 1
    assert b.metric("kim_referrals", state="OVERDUE") == 1
    listed = [json.loads(x) for x in b.kim("referral", "list", "--overdue").stdout.splitlines()]
    assert [x["referral_id"] for x in listed] == ["R-1"]
    for org in ("jc.rheine", "soz.rheine"):
        types = [m["hdr"]["type"] for m in inbox(b, org, 2 if org == "soz.rheine" else 1)]
        assert "REMINDER" in types, (org, types)
    wait_for(lambda: '"EXPIRED"' in b.kim("referral", "show", "R-1").stdout, 30, "EXPIRED")
    assert b.wait_metric("kim_referrals_overdue", lambda v: v == 0) == 0


def test_slow_commits_inputs_are_served_and_move(ops):
    """§5 Slow commits, kim-alerts.yml KimSlowCommits:
    histogram_quantile(0.99, rate(kim_commit_seconds_bucket[10m])) > 0.5 needs
    cumulative buckets with `le` (one at or past 0.5 s, and +Inf) that count commits."""
    b = ops()
    before = b.metric("kim_commit_seconds_count") or 0
    c = b.client("jc.rheine")
    for i in range(5):
        c.send(referral("R-%d" % i), b"x")
    c.close()
    b.wait_metric("kim_commit_seconds_count", lambda v: v >= before + 1)
    buckets = sorted((float(l["le"]), v) for n, l, v in b.scrape()
                     if n == "kim_commit_seconds_bucket")
    assert buckets and buckets[-1][0] == float("inf")
    assert any(0.5 <= le < float("inf") for le, _ in buckets)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == b.metric("kim_commit_seconds_count")


def test_checkpoint_lag_inputs_move(ops):
    """§5 Checkpoint lag, kim-alerts.yml KimCheckpointLag: records added after the last
    signed checkpoint show in kim_audit_checkpoint_lag_records while
    kim_audit_checkpoint_age_seconds grows; a checkpoint follows every
    audit/checkpoint_seconds and both fall back."""
    b = ops(audit={"checkpoint_seconds": 6})
    c = b.client("jc.rheine")
    c.send(referral("R-0"), b"x")
    wait_for(lambda: _checkpoints(b.data), 30, "the first checkpoint")
    for i in range(1, 4):
        c.send(referral("R-%d" % i), b"x")
    c.close()

    def lagging():      # both inputs of the expression, from one scrape
        v = {n: x for n, _l, x in b.scrape()}
        lag = v.get("kim_audit_checkpoint_lag_records")
        age = v.get("kim_audit_checkpoint_age_seconds")
        return lag is not None and age is not None and lag >= 3 and age >= 1 and (age,)
    aged = wait_for(lagging, 30, "lag_records > 0 while age_seconds grows")[0]
    assert b.wait_metric("kim_audit_checkpoint_lag_records", lambda v: v == 0) == 0
    assert b.metric("kim_audit_checkpoint_age_seconds") <= aged


def test_audit_verify_fails_on_an_altered_record_and_changes_nothing(ops):
    """§5 Audit verify fails: `kim audit verify --data` exits 1 and, run again read-only,
    shows the first bad sequence number and what is wrong."""
    lmdb = pytest.importorskip("lmdb")
    b = ops()
    c = b.client("jc.rheine")
    for i in range(5):
        c.send(referral("R-%d" % i, msg_id="alter-me-%d" % i), b"x")
    c.close()
    assert b.stop() == 0
    assert run([CLI_BIN, "audit", "verify", "--data", b.data]).returncode == 0
    env = lmdb.open(os.path.join(b.data, "store"), max_dbs=64)
    with env.begin(db=env.open_db(b"log"), write=True) as txn:
        key = (3).to_bytes(8, "big")
        record = bytearray(txn.get(key))
        at = record.find(b"alter-me-2")
        record[at + 9] = ord("9")
        txn.put(key, bytes(record))
    env.close()
    data_mdb = os.path.join(b.data, "store", "data.mdb")
    before = open(data_mdb, "rb").read()
    outputs = []
    for _ in range(2):
        r = run([CLI_BIN, "audit", "verify", "--data", b.data])
        assert r.returncode == 1
        outputs.append(r.stdout + r.stderr)
        assert re.search(r"\b3\b", r.stdout + r.stderr), r.stdout
    assert outputs[0] == outputs[1]
    assert open(data_mdb, "rb").read() == before                 # read-only


# ---------------------------------------------------------------- §6 Backup

BACKUP_LINE = re.compile(r"^backup of (\S+) in (\S+): log up to seq (\d+) \(live head (\d+) "
                         r"when it began\), store (\d+) bytes \(live (\d+)\), (\d+) other files$",
                         re.M)


def test_backup_while_the_broker_serves(ops):
    """§6: one command while the broker serves; the copy holds what was committed when it
    began (log up to seq N >= the live head seen before), keys copied with their modes,
    store/keys/ copied too, DIR appears whole (no DIR.partial-PID left), mode 0700 kept;
    `kim audit verify --data DIR` verifies it. It refuses a target inside the data folder
    and (kim-broker(8)) one that exists."""
    b = ops()
    os.chmod(b.data, 0o700)
    c = b.client("jc.rheine")
    before = [c.send(referral("R-%d" % i), b"x") for i in range(5)]
    stop, during, errors = threading.Event(), [], []

    def traffic():
        t = kim.Client(b.endpoint, b.broker_cert, b.cert_secret("jc.rheine"))
        try:
            t.connect()
            while not stop.is_set():
                during.append(t.send(referral("D-%d" % len(during)), b"y"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            t.close()
    sender = threading.Thread(target=traffic)
    sender.start()
    wait_for(lambda: len(during) >= 3 or errors, 30, "traffic")
    target = os.path.join(b.folder, "backups", "kim-2026-12-06")
    os.makedirs(os.path.dirname(target))
    r = b.backup(target)
    wait_for(lambda: len(during) >= 6 or errors, 30, "traffic after the backup")
    stop.set()
    sender.join(30)
    assert not errors, errors
    assert r.returncode == 0, r.stderr
    m = BACKUP_LINE.search(r.stdout)
    assert m, r.stdout
    assert (m.group(1), m.group(2)) == (b.data, target)
    seq, live = int(m.group(3)), int(m.group(4))
    assert seq >= live >= before[-1]["seq"]
    assert os.listdir(os.path.dirname(target)) == ["kim-2026-12-06"]
    assert os.stat(target).st_mode & 0o777 == 0o700
    for name in os.listdir(os.path.join(b.data, "keys")):
        live_mode = os.stat(os.path.join(b.data, "keys", name)).st_mode & 0o777
        assert os.stat(os.path.join(target, "keys", name)).st_mode & 0o777 == live_mode, name
    assert os.path.isdir(os.path.join(target, "store", "keys"))
    v = run([CLI_BIN, "audit", "verify", "--data", target])
    assert v.returncode == 0, v.stdout + v.stderr
    replay = run([CLI_BIN, "audit", "replay", "--data", target]).stdout.splitlines()
    assert json.loads(replay[-1])["seq"] == seq
    held = {json.loads(x)["body"].get("msg_id") for x in replay}
    assert {x["msg_id"] for x in before} <= held
    assert {x["msg_id"] for x in during if x["seq"] <= live} <= held
    c.close()
    inside, existing = os.path.join(b.data, "backup"), os.path.join(b.folder, "exists")
    os.makedirs(existing)
    for refused in (inside, existing):      # §6: not inside the data folder; (8): a new DIR
        assert b.backup(refused).returncode != 0, refused
    assert not os.path.exists(inside) and os.listdir(existing) == []


# ---------------------------------------------------------------- §7 Restore

def _restored(ops):
    """§7's steps on a broker with messages before and after its backup; returns
    (broker, backup's seq, receipts before, receipts after)."""
    b = ops()
    jc = b.client("jc.rheine")
    pre = [jc.send(referral("R-%d" % i, msg_id="pre-%d" % i), b"x") for i in range(3)]
    soz = b.client("soz.rheine", window=4)
    assert soz.recv(20).seq == pre[0]["seq"]
    soz.send({"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": "R-0"})
    soz.close()
    target = os.path.join(b.folder, "kim-backup")
    r = b.backup(target)
    assert r.returncode == 0, r.stderr
    seq = int(BACKUP_LINE.search(r.stdout).group(3))
    post = [jc.send(referral("R-%d" % i, msg_id="post-%d" % i), b"x") for i in (3, 4)]
    jc.close()
    assert b.stop() == 0                                          # systemctl stop
    os.rename(b.data, b.data + ".broken")                         # mv
    assert run(["cp", "-a", target, b.data]).returncode == 0      # cp -a
    os.chmod(b.data, 0o700)                                       # chmod 0700
    v = run([CLI_BIN, "audit", "verify", "--data", b.data])       # kim audit verify
    assert v.returncode == 0, v.stdout + v.stderr
    b.start()                                                     # systemctl start
    return b, seq, pre, post


def test_restore_keeps_messages_states_and_deduplication(ops):
    """§7: the journal's start line names the restored log head ("log head N"); the
    restored broker has every message receipted before the backup, its mailbox entries,
    referral states and de-duplication index (a resent msg_id from before is answered as
    a duplicate with its first seq); a msg_id receipted after the backup is taken as new."""
    b, seq, pre, _post = _restored(ops)
    assert START_LINE.findall(b.log())[-1] == str(seq)          # "log head N"
    shown = json.loads(b.kim("referral", "show", "R-0").stdout)
    assert shown["state"] == "ACCEPTED"
    got = inbox(b, "soz.rheine", 3)
    assert [m["hdr"]["msg_id"] for m in got] == ["pre-0", "pre-1", "pre-2"]
    jc = b.client("jc.rheine")
    dup = jc.send(referral("R-1", msg_id="pre-1"), b"x")
    assert dup.get("dup") is True and dup["seq"] == pre[1]["seq"]
    new = jc.send(referral("R-3", msg_id="post-3"), b"x")
    assert not new.get("dup") and new["seq"] > seq
    jc.close()


# ---------------------------------------------------------------- §8 Upgrades

def test_store_format_version_7_and_a_newer_store_is_refused_untouched(ops):
    """§8: the store records its format version (meta/version; the current is 7); a
    store written by a newer release is refused, and left untouched, with "store format
    version 8 is newer than this kim-broker understands (7): ..." (§5 Broker down)."""
    lmdb = pytest.importorskip("lmdb")
    b = ops()
    b.client("jc.rheine").send(referral("R-1"), b"x")
    assert b.stop() == 0
    env = lmdb.open(os.path.join(b.data, "store"), max_dbs=64)
    with env.begin(db=env.open_db(b"meta"), write=True) as txn:
        assert int.from_bytes(txn.get(b"version"), "big") == 7
        txn.put(b"version", (8).to_bytes(4, "big"))
    env.close()
    data_mdb = os.path.join(b.data, "store", "data.mdb")
    before = open(data_mdb, "rb").read()
    r = run([BROKER_BIN, "--config", b.config])
    assert r.returncode != 0
    assert ("store format version 8 is newer than this kim-broker understands (7): it was "
            "written by a newer release. Run that release, or restore a backup made "
            "before the upgrade") in r.stdout + r.stderr
    assert open(data_mdb, "rb").read() == before


def test_a_misspelt_key_in_an_orgs_entry_is_an_error(ops):
    """§8: an unknown key inside an `orgs` entry is an error (`sign_kye`); --check keeps
    the broker stopped with the key path: exit 2 (kim-broker(8))."""
    b = ops(start=False)
    b.edit(lambda t: set_in_org(t, "jc.rheine", 'sign_kye = "x"'))
    r = run([BROKER_BIN, "--check", "--config", b.config])
    assert r.returncode == 2
    assert "orgs/jc.rheine/sign_kye" in r.stdout + r.stderr, r


# ---------------------------------------------------------------- §9 Capacity

def test_payloads_are_stored_encrypted_at_rest(ops):
    """§9 Payloads at rest, §6: each payload is stored encrypted under a key of its own in
    store/keys/: the plaintext of an unsealed payload is in no file of the data folder
    nor of a backup, and is delivered intact."""
    b = ops()
    marker = b"PLAINTEXT-AT-REST-" + os.urandom(8).hex().encode()
    c = b.client("jc.rheine")
    c.send(referral("R-1"), marker * 4, seal=False)
    c.close()
    target = os.path.join(b.folder, "bk")
    assert b.backup(target).returncode == 0
    assert b.stop() == 0
    assert os.path.isdir(os.path.join(b.data, "store", "keys"))
    for top in (b.data, target):
        for folder, _dirs, files in os.walk(top):
            for name in files:
                with open(os.path.join(folder, name), "rb") as f:
                    assert marker not in f.read(), os.path.join(folder, name)
    b.start()
    soz = b.client("soz.rheine", window=4)
    assert soz.recv(20).payload == marker * 4
    soz.ack()
    soz.close()


# ---------------------------------------------------------------- kim-alerts.yml

def _rules():
    yaml = pytest.importorskip("yaml")
    with open(ALERTS, encoding="utf-8") as f:
        return [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]


def test_every_alert_names_served_metrics_and_labels_and_a_runbook(ops, far):
    """kim-alerts.yml: every kim_ metric of an expression is served by the broker, with
    the labels the expression and its annotations use; every runbook names a §5 entry.
    A peer is configured (nowhere to be reached) so that the link figures have series."""
    nowhere = far("broker.nowhere")
    b = ops(broker={"mailbox_quota": 1},
            peers=nowhere.peers(endpoint="ipc://%s/nobody.sock" % nowhere.folder))
    # KimStoreFullRefusals takes increase() of these: served from 0, or the first
    # refusal after a start would be no increase
    for reason in ("STORE_FULL", "STORE_FAILED"):
        assert b.metric("kim_refusals_total", reason=reason) == 0, reason
    c = b.client("jc.rheine")
    c.send(referral("R-1"), b"x")
    with pytest.raises(kim.Rejected):
        c.send(referral("R-2"), b"x")                            # a QUOTA refusal
    c.close()
    b.wait_metric("kim_refusals_total", lambda v: v == 1, reason="QUOTA")
    b.wait_metric("kim_audit_checkpoint_age_seconds", lambda v: v >= 0)
    samples = b.scrape()
    with open(GUIDE, encoding="utf-8") as f:
        guide = f.read()
    section5 = guide[guide.index("## 5. Alerts"):guide.index("## 6. Backup")]
    for rule in _rules():
        expr = rule["expr"]
        names = set(re.findall(r"\bkim_\w+", expr))
        if rule["alert"] != "KimBrokerDown":
            assert names, rule["alert"]
        for name in names:
            served = [l for n, l, _ in samples if n == name]
            assert served, "%s: %s is not served" % (rule["alert"], name)
            used = set(re.findall(name + r"\{(\w+)", expr))
            used |= set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
            used -= {"instance", "job"}
            for label in used:
                assert all(label in l for l in served), (rule["alert"], name, label)
        runbook = rule["annotations"]["runbook"].split(": ", 1)[1]
        assert "**%s**" % runbook in section5, rule["alert"]


def test_broker_down_alert_is_the_scrape_job_and_a_stopped_broker_fails_it(ops):
    """kim-alerts.yml KimBrokerDown (up{job="kim-broker"} == 0), prometheus-scrape.yml and
    §4: the job is kim-broker at the endpoint's default 127.0.0.1:9470; a stopped broker
    answers no scrape."""
    yaml = pytest.importorskip("yaml")
    down = [r for r in _rules() if r["alert"] == "KimBrokerDown"][0]
    job = re.search(r'up\{job="([^"]+)"\} == 0', down["expr"]).group(1)
    with open(SCRAPE, encoding="utf-8") as f:
        scrape = yaml.safe_load(f)
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    assert job in jobs
    assert jobs[job]["static_configs"][0]["targets"] == ["127.0.0.1:9470"]
    assert "kim-alerts.yml" in scrape["rule_files"]
    b = ops()
    assert b.scrape()
    assert b.stop() == 0
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        b.scrape()
