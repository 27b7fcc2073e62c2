"""The README's state made by hand, and the helpers, for test_readme_*_spec.py.

Where the README names `build/release/...` or the demo folder of
`./deploy/run.sh` (kim-data/demo/...), the state is made by hand the way the
README and kim.cfg(5) say: a kim-broker with a config written here (the
organisations, policy and lifecycle/expire_seconds that run.sh gives Kreis
Steinfurt's broker), keys from `kim keygen`, the job centre's kim-agent as
run.sh configures it (`demo`), and on it the README's first referral, its
commands word for word (`story`). Beside it two brokers of the checks' own:
`lab` (every role, a small max_payload, a checkpoint each second) and
`timers` (timers that run in seconds). The fixtures are module scoped: each
test file that binds them starts its own.

Binaries: KIM_BROKER_BIN, KIM_CLI_BIN, KIM_AGENT_BIN (default build/test/...).
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def _program(env, relative):
    path = os.environ.get(env) or relative
    if not os.path.isabs(path):
        path = os.path.join(ROOT, path)
    return path


BROKER = _program("KIM_BROKER_BIN", "build/test/broker/kim-broker")
KIM = _program("KIM_CLI_BIN", "build/test/agents/cli/kim")
AGENT = _program("KIM_AGENT_BIN", "build/test/agents/agent/kim-agent")
POLICY = os.path.join(ROOT, "deploy", "policy.cfg")
PYDIR = os.path.join(ROOT, "agents", "python")
EXAMPLES = os.path.join(PYDIR, "examples")
sys.path.insert(0, PYDIR)
from kim.testing import terminate  # noqa: E402
SANITIZER = re.compile(r"Sanitizer|runtime error:")
STATUTE = "SGB X §69(1)1"

#   deploy/run.sh's demo registry for Kreis Steinfurt (read only to match the
#   README reader's state): id, name, public_body, role.
STEINFURT = [
    ("kim.rheine", "KIM Case Management Stadt Rheine", 1, "agency"),
    ("jc.rheine", "Jobcenter Kreis Steinfurt, Standort Rheine", 1, "agency"),
    ("mbe.rheine.caritas", "Migrationsberatung Caritas Rheine", 0, "agency"),
    ("ikt.rheine.vhs", "Integrationskurs VHS Rheine", 0, "agency"),
    ("ja.rheine", "Jugendamt Stadt Rheine", 1, "agency"),
    ("aba.rheine", "Ausländerbehörde Stadt Rheine", 1, "agency"),
    ("dsb.steinfurt", "Datenschutzbeauftragte Kreis Steinfurt", 1, "auditor"),
]


@pytest.fixture(scope="module", autouse=True)
def programs():
    for path, env in ((KIM, "KIM_CLI_BIN"), (BROKER, "KIM_BROKER_BIN"), (AGENT, "KIM_AGENT_BIN")):
        assert os.access(path, os.X_OK), "%s: no such program (set %s)" % (path, env)


# --- helpers -------------------------------------------------------------------

class Run:
    def __init__(self, args, rc, out, err):
        self.args, self.rc, self.out, self.err = args, rc, out, err

    def __repr__(self):
        return "%r -> rc %s\nstdout: %s\nstderr: %s" % (self.args, self.rc, self.out[-3000:],
                                                       self.err[-3000:])

    def lines(self):
        return [line for line in self.out.splitlines() if line.strip()]

    def json(self):
        return [json.loads(line) for line in self.lines() if line.startswith("{")]

    def one(self):
        objs = self.json()
        assert len(objs) == 1, self
        return objs[0]


def run(args, cwd=None, env=None, stdin=None, timeout=30):
    full = dict(os.environ)
    full.update(env or {})
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=full, input=stdin,
                          capture_output=True, text=True, timeout=timeout)
    r = Run(args, done.returncode, done.stdout, done.stderr)
    assert not SANITIZER.search(done.stderr), r
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, timeout=10.0, step=0.1):
    """Polls what() until it returns something true; returns that (or the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def read_log(path):
    """A program's log so far ("" before it wrote one)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def public_key(cert_path):
    with open(cert_path) as f:
        return re.search(r'public-key = "(.*)"', f.read()).group(1)


def now_ms():
    return int(time.time() * 1000)


def grep_tree(folder, needle):
    """Files under folder whose bytes contain needle."""
    hits = []
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def broker_files_holding(b, needle):
    """The broker's own files under its data folder (store, keys, checkpoint) holding
    needle; kim-data/demo/ is run.sh's demo folder (keys, config, the agent's store)."""
    return [p for p in grep_tree(b.data, needle)
            if not p.startswith(os.path.join(b.data, "demo") + os.sep)]


class Broker:
    """A kim-broker with the layout of run.sh's demo: data in ROOT/kim-data,
    keys in kim-data/demo/keys, config kim-data/demo/kim.cfg. Commands run
    with ROOT as their working folder, as the README's relative paths assume."""

    def __init__(self, root, orgs, sections=None, name="kim.steinfurt", policy=POLICY):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.data = os.path.join(root, "kim-data")
        self.keys = os.path.join(self.data, "demo", "keys")
        os.makedirs(self.keys, exist_ok=True)
        self.cfg = os.path.join(self.data, "demo", "kim.cfg")
        self.port = free_port()
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.name = name
        self.policy = policy
        self.sections = sections or {}
        self.orgs = {}
        for entry in orgs:
            org, label, public, role = entry
            self.orgs[org] = {"name": label, "public_body": public, "role": role}
            self.keygen(org)
        self.proc = None
        self.log_path = os.path.join(root, "broker.log")
        self.write_config()

    # keys and config
    def keygen(self, org, *extra):
        r = run([KIM, "keygen", org, "--dir", "kim-data/demo/keys"] + list(extra), cwd=self.root)
        assert r.rc == 0, r
        return r.one()

    def cert(self, org):
        return "kim-data/demo/keys/%s.cert_secret" % org

    def config_text(self):
        lines = ["broker", "    name = %s" % self.name, '    data = "%s"' % self.data,
                 '    bind = "%s"' % self.endpoint]
        for key, value in self.sections.get("broker", {}).items():
            lines.append("    %s = %s" % (key, value))
        if self.policy:
            lines += ["policy", '    file = "%s"' % self.policy]
        for section, keys in self.sections.items():
            if section == "broker":
                continue
            lines.append(section)
            for key, value in keys.items():
                lines.append("    %s = %s" % (key, value))
        lines.append("orgs")
        for org, o in self.orgs.items():
            lines += ["    " + org, '        name = "%s"' % o["name"],
                      "        public_body = %d" % o["public_body"], "        role = " + o["role"],
                      '        public_key = "%s"' % o.get("public_key",
                                                         public_key(os.path.join(
                                                             self.keys, org + ".cert")))]
            if o.get("revoked"):
                lines.append("        revoked = 1")
            if o.get("sign_key"):
                lines.append('        sign_key = "%s"' % o["sign_key"])
        return "\n".join(lines) + "\n"

    def write_config(self, text=None):
        with open(self.cfg, "w") as f:
            f.write(text if text is not None else self.config_text())

    # process
    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BROKER, "--config", self.cfg], cwd=self.root,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            ok = wait_for(lambda: self.proc.poll() is not None or "serving on" in self.log_text(),
                          timeout=15, step=0.05)
            assert ok and self.proc.poll() is None, self.log_text()[-3000:]
        return self

    def log_text(self):
        return read_log(self.log_path)

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None:
            return None
        terminate(self.proc, 20, sig)
        self.log.close()
        return self.proc.returncode

    def finish(self):
        self.stop()
        assert not SANITIZER.search(self.log_text()), self.log_text()[-3000:]

    def hup(self):
        self.proc.send_signal(signal.SIGHUP)

    # the kim tool, as the README runs it: KIM_ENDPOINT and KIM_BROKER_KEY set
    def env(self):
        return {"KIM_ENDPOINT": self.endpoint, "KIM_BROKER_KEY": "kim-data/keys/broker.cert"}

    def kim(self, *args, cert=None, stdin=None, timeout=30):
        argv = [KIM] + [str(a) for a in args]
        if cert:
            argv += ["--cert", self.cert(cert)]
        return run(argv, cwd=self.root, env=self.env(), stdin=stdin, timeout=timeout)

    def sh(self, script, env=None, timeout=60):
        """A README block, run by bash in the broker's folder."""
        full = self.env()
        full.update(env or {})
        return run(["bash", "-c", script], cwd=self.root, env=full, timeout=timeout)

    def send(self, org, *args, stdin=None):
        return self.kim("send", *args, cert=org, stdin=stdin)

    def send_json(self, org, *headers):
        return self.kim("send", "--json", cert=org,
                        stdin="".join(json.dumps(h) + "\n" for h in headers))

    def inbox(self, org, *args):
        return self.kim("inbox", "--idle", "400", *args, cert=org)

    def show(self, org, referral):
        r = self.kim("referral", "show", referral, cert=org)
        return r.one() if r.rc == 0 else {}

    def state(self, org, referral):
        return self.show(org, referral).get("state")

    def replay(self, *args):
        r = self.kim("audit", "replay", "--data", "kim-data", *args)
        assert r.rc == 0, r
        return r.json()


class Agent:
    """kim-agent as run.sh sets up the job centre's: config, token file and
    store in kim-data/demo/agent-ORG/, HTTP on 127.0.0.1, a port the kernel
    chooses (written to http.port)."""

    def __init__(self, broker, org, extra="", web=False):
        self.broker, self.org = broker, org
        self.dir = os.path.join(broker.data, "demo", "agent-" + org)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.token = os.urandom(32).hex()
        tokens = os.path.join(self.dir, "tokens")
        with open(tokens, "w") as f:
            f.write("case_system %s\n" % self.token)
        os.chmod(tokens, 0o600)
        self.cfg = os.path.join(self.dir, "agent.cfg")
        text = ("agent\n    org = %s\n    data = \"%s/store\"\n    cert = \"%s\"\n"
                "broker\n    endpoint = \"%s\"\n    key_file = \"%s/keys/broker.cert\"\n"
                "http\n    bind = 127.0.0.1\n    port = 0\n    port_file = \"%s/http.port\"\n"
                "    tokens = \"%s\"\n" % (org, self.dir, os.path.join(broker.keys,
                                                                  org + ".cert_secret"),
                                          broker.endpoint, broker.data, self.dir, tokens))
        if web:
            text += ("web\n    enabled = 1\n    users = \"%s/web.users\"\n    policy = \"%s\"\n"
                     % (self.dir, POLICY))
        text += extra
        with open(self.cfg, "w") as f:
            f.write(text)
        self.proc = None
        self.log_path = os.path.join(self.dir, "agent.log")

    def start(self):
        port_file = os.path.join(self.dir, "http.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([AGENT, "--config", self.cfg], cwd=self.broker.root,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        port = wait_for(lambda: self.proc.poll() is not None or (
            os.path.exists(port_file) and open(port_file).read().strip()), timeout=15)
        assert self.proc.poll() is None and port, self.log_text()
        self.port = int(port)
        self.url = "http://127.0.0.1:%d" % self.port
        return self

    def connected(self):
        return wait_for(lambda: (self.api("GET", "/v1/status")[2] or {}).get("connected"),
                        timeout=15)

    def log_text(self):
        return read_log(self.log_path)

    def api(self, method, path, body=None, token=True):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + self.token
        status, hdrs, data = http_call(method, self.url + path, headers,
                                       None if body is None else json.dumps(body))
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return status, hdrs, parsed

    def wait_referral(self, referral, mtype="REFERRAL"):
        def find():
            for item in self.api("GET", "/v1/inbox?limit=1000")[2]["items"]:
                if item.get("referral_id") == referral and item["type"] == mtype:
                    return item
        item = wait_for(find, timeout=10)
        assert item, "agent of %s never got %s %s" % (self.org, mtype, referral)
        return item

    def outbox_done(self, msg_id):
        return wait_for(lambda: (lambda r: r if r and r.get("status") != "queued" else None)(
            self.api("GET", "/v1/outbox/" + msg_id)[2]), timeout=10)

    def stop(self):
        if self.proc is None:
            return None
        terminate(self.proc, 20)
        self.log.close()
        return self.proc.returncode

    def finish(self):
        self.stop()
        assert not SANITIZER.search(self.log_text()), self.log_text()[-3000:]


def http_call(method, url, headers=None, body=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    path = u.path + ("?" + u.query if u.query else "")
    conn.request(method, path or "/", body=body.encode() if isinstance(body, str) else body,
                 headers=headers or {})
    resp = conn.getresponse()
    data = resp.read().decode("utf-8", "replace")
    hdrs = resp.getheaders()
    conn.close()
    return resp.status, hdrs, data


def curl(*args):
    """curl as the README calls it (always -s: the README's agent section does)."""
    return run(["curl", "-s"] + list(args))


def consent(case, cid, subject, recipients, purposes, valid_until=1893456000000, **more):
    h = {"type": "CONSENT_GRANT", "case_id": case, "consent": cid, "subject": subject,
         "recipients": recipients, "purposes": purposes, "valid_until": valid_until}
    h.update(more)
    return h


def receipt(r):
    """The one receipt line of a kim send that the broker took."""
    assert r.rc == 0, r
    answer = r.one()
    assert isinstance(answer.get("seq"), int) and answer.get("dup") is False, r
    return answer


def refusal(r, error=None):
    assert r.rc == 1, r
    answer = r.json()[-1]
    if error:
        assert answer.get("error") == error, r
    return answer


# --- the demo of run.sh, made by hand -----------------------------------------------

@pytest.fixture(scope="module")
def tmp_root():
    path = tempfile.mkdtemp(prefix="kim-readme-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def demo(tmp_root):
    """Kreis Steinfurt's broker as run.sh configures it (its offices, the shipped
    policy, lifecycle/expire_seconds = 6) and the job centre's kim-agent with
    its web page and the demo login."""
    b = Broker(os.path.join(tmp_root, "demo"), STEINFURT,
               sections={"lifecycle": {"expire_seconds": 6}})
    r = run([BROKER, "--check", "--config", b.cfg], cwd=b.root)
    assert r.rc == 0, r
    b.start()
    agent = Agent(b, "jc.rheine", web=True)
    r = run([AGENT, "--check", "--config", agent.cfg], cwd=b.root)
    assert r.rc == 0, r
    r = run([AGENT, "--config", agent.cfg, "--add-user", "demo", "--role", "staff"],
            cwd=b.root, stdin="demo-jobcenter\n")
    assert r.rc == 0, r
    agent.start()
    assert agent.connected(), agent.log_text()
    b.agent = agent
    yield b
    agent.finish()
    b.finish()


README_PRELUDE = """export KIM_ENDPOINT=%(endpoint)s KIM_BROKER_KEY=kim-data/keys/broker.cert
kim=%(kim)s keys=kim-data/demo/keys
AGENT=%(agent)s TOKEN=$(awk '{print $2}' kim-data/demo/agent-jc.rheine/tokens)
"""

#   README "Your first referral", word for word.
README_CONSENT = """$kim send --json --cert $keys/kim.rheine.cert_secret <<'EOF'
{"type":"CONSENT_GRANT","case_id":"C-1","consent":"G-1","subject":"p-7f3a","recipients":["jc.rheine"],"purposes":["employment"],"valid_until":1893456000000}
EOF
"""
README_REFERRAL = """$kim send --cert $keys/kim.rheine.cert_secret --type REFERRAL --to jc.rheine \\
    --referral R-1 --case C-1 --subject p-7f3a --purpose employment --consent G-1 \\
    --payload - <<< '{"need":"job search support"}'
"""
README_AGENT_INBOX = """curl -H "Authorization: Bearer $TOKEN" "$AGENT/v1/inbox?handled=false"   # R-1
"""
README_KIM_INBOX = "$kim inbox --cert $keys/jc.rheine.cert_secret\n"
README_ACCEPT = """$kim send --cert $keys/jc.rheine.cert_secret --type ACCEPT --to kim.rheine --referral R-1
"""
README_SHOW = """$kim referral show R-1 --cert $keys/kim.rheine.cert_secret      # "state":"ACCEPTED"
"""
README_REFUSED = """$kim send --cert $keys/kim.rheine.cert_secret --type REFERRAL --to jc.rheine \\
    --referral R-2 --case C-1 --subject p-7f3a --purpose housing --consent G-1
"""
README_VERIFY = "$kim audit verify --data kim-data\n"
README_REPLAY = "$kim audit replay --data kim-data --case C-1\n"


@pytest.fixture(scope="module")
def story(demo):
    """The README's first referral, step by step, each step's output kept."""
    prelude = README_PRELUDE % {"endpoint": demo.endpoint, "kim": KIM, "agent": demo.agent.url}
    s = {}

    def step(name, text):
        s[name] = demo.sh(prelude + text)
        return s[name]

    step("consent", README_CONSENT)
    step("referral", README_REFERRAL)
    s["agent_inbox"] = wait_for(
        lambda: (lambda r: r if '"R-1"' in r.out else None)(demo.sh(prelude + README_AGENT_INBOX)),
        timeout=10) or demo.sh(prelude + README_AGENT_INBOX)
    step("kim_inbox", README_KIM_INBOX)
    step("accept", README_ACCEPT)
    step("show", README_SHOW)
    step("refused", README_REFUSED)
    step("verify", README_VERIFY)
    step("replay", README_REPLAY)
    step("help", "$kim --help\n")
    step("again", README_REFERRAL)
    return s


# --- brokers of the checks' own, which more than one README section uses ----------

LAB_ORGS = [("kim.rheine", "KIM Rheine", 1, "agency"), ("jc.rheine", "Jobcenter", 1, "agency"),
            ("ja.rheine", "Jugendamt", 1, "agency"), ("soz.rheine", "Sozialamt", 1, "agency"),
            ("aa.rheine", "Arbeitsagentur", 1, "agency"),
            ("dsb.steinfurt", "DSB", 1, "auditor"), ("ops.steinfurt", "Betrieb", 1, "operator"),
            ("aba.rheine", "Auslaenderbehoerde", 1, "agency")]


@pytest.fixture(scope="module")
def lab(tmp_root):
    b = Broker(os.path.join(tmp_root, "lab"), LAB_ORGS,
               sections={"broker": {"max_payload": 1024}, "audit": {"checkpoint_seconds": 1}})
    b.start()
    yield b
    b.finish()


def statute_referral(b, sender, to, referral, case, payload=None, *extra):
    args = ["--type", "REFERRAL", "--to", to, "--referral", referral, "--case", case,
            "--subject", "p-" + case.lower(), "--purpose", "employment", "--statute", STATUTE]
    args += list(extra)
    if payload is not None:
        args += ["--payload", "-"]
    return b.send(sender, *args, stdin=payload)


def timer_mail(b, org):
    """Everything org's inbox held so far (read and acked once, kept here)."""
    b.mail.setdefault(org, []).extend(b.inbox(org).json())
    return b.mail[org]


@pytest.fixture(scope="module")
def timers(tmp_root):
    """A broker whose timers run in seconds (kim.cfg(5): lifecycle/expire_seconds,
    retention/payload_seconds, open_case_seconds, notice_seconds), every timed
    thing started at once so that the waits overlap."""
    b = Broker(os.path.join(tmp_root, "timers"),
               [("kim.rheine", "KIM", 1, "agency"), ("jc.rheine", "JC", 1, "agency"),
                ("ja.rheine", "JA", 1, "agency")],
               sections={"lifecycle": {"expire_seconds": 1},
                         "retention": {"payload_seconds": 1, "open_case_seconds": 4,
                                       "notice_seconds": 3}})
    b.start()
    b.seqs, b.mail = {}, {}
    # a closed case
    b.seqs["R-RET"] = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-RET", "C-RET",
                                               "retained"))["seq"]
    receipt(b.send("jc.rheine", "--type", "CASE_CLOSED", "--case", "C-RET"))
    # a quiet open case
    b.seqs["R-QUIET"] = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-QUIET",
                                                 "C-QUIET", "quiet"))["seq"]
    # a referral whose deadline passes
    b.deadline_ms = now_ms() + 1000
    receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-OD", "C-OD", None,
                             "--deadline", str(b.deadline_ms)))
    # a consent that expires
    b.expiry_ms = now_ms() + 1500
    receipt(b.send_json("kim.rheine", consent("C-EXP", "G-EXP", "p-exp", ["jc.rheine"],
                                              ["employment"], valid_until=b.expiry_ms)))
    receipt(b.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                   "R-EXP1", "--case", "C-EXP", "--subject", "p-exp", "--purpose", "employment",
                   "--consent", "G-EXP"))
    # README "The closed loop": "The timers are in the store and survive restarts"
    b.stop()
    b.start()
    yield b
    b.finish()
