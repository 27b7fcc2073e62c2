"""README.md as a new user follows it by hand: an outside conformance check.

Written from README.md and the documents it points to (docs/agent.md,
deploy/agent.cfg, deploy/kim.cfg, docs/man/kim.cfg.5.scd, deploy/policy.cfg,
proto/PROTOCOL.md where the README sends the reader there), run against the
real programs. Sections checked: "Your first referral", "Connecting an
office's system: kim-agent", "What the broker promises", "Running the broker
yourself", "Keys, roles and revocation", "Lawful by default", "The closed
loop", "Audit: verify and replay the log", "Python client". Not here: "The two
commands", "Connecting two districts", "Performance".

Where the README names `build/release/...` or the demo folder of
`./deploy/run.sh` (kim-data/demo/...), the state is made by hand the way the
README and kim.cfg(5) say: a kim-broker with a config written here (the
organisations, policy and lifecycle/expire_seconds that run.sh gives Kreis
Steinfurt's broker), keys from `kim keygen`, the job centre's kim-agent as
run.sh configures it. Then the README's commands run literally, paths and
ports substituted. Every expectation cites its README section; where a
program does otherwise the test is a strict xfail that says both.

Binaries: KIM_BROKER_BIN, KIM_CLI_BIN, KIM_AGENT_BIN (default build/test/...).
"""
import base64
import hashlib
import hmac
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
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
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

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
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

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


# === Your first referral ===========================================================

def test_first_referral_consent_heredoc_as_printed(story):
    # README "Your first referral": "the consent comes first" -> one answer line with a seq;
    # the commands here are the README's, word for word
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for block in (README_CONSENT, README_REFERRAL):
        assert "\n".join("    " + l for l in block.strip("\n").split("\n")) in readme, block
    r = story["consent"]
    assert r.rc == 0, r
    assert len(r.json()) == 1 and isinstance(r.json()[0].get("seq"), int), r


def test_first_referral_consent_one_line_is_receipted(story):
    # README "Your first referral": `kim send --json` reads one header object per line;
    # each answer is one JSON line with the log sequence number.
    r = story["consent"]
    a = receipt(r)
    assert a["line"] == 1


def test_first_referral_answer_is_one_json_line_with_seq(story, demo):
    # README "Your first referral": {"msg_id":"4d7f…","seq":101,"dup":false}
    r = story["referral"]
    a = receipt(r)
    assert set(a) == {"msg_id", "seq", "dup"}, r
    assert re.fullmatch(r"[0-9a-f]{32}", a["msg_id"]), a
    # "which the broker gives only after the message is on disk": the record is in the log
    records = demo.replay("--from", a["seq"], "--to", a["seq"])
    assert records and records[0]["body"]["msg_id"] == a["msg_id"]
    assert records[0]["body"]["type"] == "REFERRAL"


def test_first_referral_payload_stored_as_ciphertext_only(story, demo):
    # README "Your first referral": "kim seals the payload to the job centre's key, so the
    # broker stores ciphertext only" (Concepts: payload_len is the sealed size, +48)
    receipt(story["referral"])
    assert broker_files_holding(demo, b"job search support") == []
    assert "job search support" not in demo.log_text()
    rec = [x for x in demo.replay("--type", "REFERRAL")
           if x["body"].get("referral_id") == "R-1"][0]
    assert rec["body"]["payload_len"] == len('{"need":"job search support"}\n') + 48


def test_first_referral_agent_has_it_opened_and_acknowledged(story, demo):
    # README "Your first referral": the agent "has the referral already, opened in its own
    # store and acknowledged"; curl "$AGENT/v1/inbox?handled=false"   # R-1
    r = story["agent_inbox"]
    assert r.rc == 0, r
    items = [i for i in json.loads(r.out)["items"] if i.get("referral_id") == "R-1"]
    assert len(items) == 1 and items[0]["type"] == "REFERRAL", r
    assert items[0]["sealed_error"] is False
    status, _, one = demo.agent.api("GET", "/v1/inbox/%d" % items[0]["seq"])
    assert status == 200 and one["payload"] == '{"need":"job search support"}\n', one


def test_first_referral_kim_inbox_finds_nothing(story, demo):
    # README "Your first referral": "the broker's mailbox for jc.rheine is empty (`$kim inbox
    # --cert $keys/jc.rheine.cert_secret` ... would find nothing)"
    r = story["kim_inbox"]
    assert r.rc == 0 and r.lines() == [], r
    assert demo.kim("status", cert="jc.rheine").one()["mailbox"] == 0


def test_first_referral_consent_comes_first(story, demo):
    # README "Your first referral": "The shipped policy (deploy/policy.cfg) lets case
    # management pass data only with the person's consent, so the consent comes first"
    a = refusal(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                          "R-NC", "--case", "C-NC", "--subject", "p-nc", "--purpose",
                          "employment", "--statute", STATUTE))
    assert a["error"] in ("NO_BASIS", "CONSENT_UNKNOWN") and "rule P8" in a["text"], a


def test_first_referral_accept_then_state_accepted(story):
    # README "Your first referral": ACCEPT, then `kim referral show R-1` # "state":"ACCEPTED"
    receipt(story["accept"])
    r = story["show"]
    assert r.rc == 0, r
    assert r.one()["state"] == "ACCEPTED" and r.one()["referral_id"] == "R-1", r
    assert '"state":"ACCEPTED"' in r.out


def test_first_referral_default_deadline_14_days(story, demo):
    # README "The closed loop", Deadlines: "A referral's deadline (or lifecycle/deadline_days,
    # default 14)"
    a = receipt(story["referral"])
    created = demo.replay("--from", a["seq"], "--to", a["seq"])[0]["body"]["created_at"]
    deadline = demo.show("kim.rheine", "R-1")["deadline"]
    assert abs(deadline - created - 14 * 86400 * 1000) < 5000, (created, deadline)


def test_first_referral_refusal_names_rule_and_law(story):
    # README "Your first referral": {"msg_id":"40ec…","error":"CONSENT_SCOPE","code":504,
    # "text":"rule P8 (kim,kimw -> *, consent): consent G-1 does not cover purpose housing
    # [§ 67b SGB X; …]", …}; kim --help: exit 1 when the broker refused a message
    a = refusal(story["refused"], "CONSENT_SCOPE")
    assert a["code"] == 504 and re.fullmatch(r"[0-9a-f]{32}", a["msg_id"])
    assert a["text"].startswith("rule P8 (kim,kimw -> *, consent): consent G-1 does not cover "
                                "purpose housing [§ 67b SGB X; "), a


def test_first_referral_audit_verify_live(story):
    # README "Your first referral": `$kim audit verify --data kim-data`, read-only, while the
    # broker runs; "Audit": OK: records 1..N verified (...)
    r = story["verify"]
    assert r.rc == 0, r
    m = re.match(r"OK: records 1\.\.(\d+) verified \((\d+) records, ", r.out)
    assert m and m.group(1) == m.group(2), r


def test_first_referral_audit_replay_case(story):
    # README "Your first referral": `$kim audit replay --data kim-data --case C-1`;
    # "Audit": replay as JSON lines (kim(1): {"seq","time","kind","body"})
    r = story["replay"]
    assert r.rc == 0, r
    records = r.json()
    assert records and all(set(x) == {"seq", "time", "kind", "body"} for x in records), r
    kinds = {(x["kind"], x["body"].get("type")) for x in records}
    assert ("message", "CONSENT_GRANT") in kinds and ("message", "REFERRAL") in kinds, r
    assert [x["seq"] for x in records] == sorted(x["seq"] for x in records)


def test_first_referral_help_lists_every_command(story):
    # README "Your first referral": "`kim --help` lists every command" (the ones the README uses)
    r = story["help"]
    assert r.rc == 0, r
    for cmd in ("send", "inbox", "referral", "audit", "subscribe", "unsubscribe", "admin",
                "keygen", "policy", "subject", "directory", "status"):
        assert re.search(r"^\s+%s\s" % cmd, r.out, re.M), cmd


def test_first_referral_ids_can_be_used_once(story):
    # README "Your first referral": "The ids above can be used once: pick new ones"
    a = refusal(story["again"])
    assert a["error"] == "REFERRAL_EXISTS", a


def test_first_referral_consent_sender_leads_case(story, demo):
    # README "Your first referral": the consent's "sender becomes the lead of case C-1";
    # "The closed loop": HANDOVER_OFFER is the lead's only
    r = demo.send_json("jc.rheine", {"type": "HANDOVER_OFFER", "recipient": "ja.rheine",
                                     "case_id": "C-1", "subject": "p-7f3a",
                                     "purpose": "case_handover",
                                     "legal_basis": {"kind": "statute", "citation": STATUTE},
                                     "referrals": ["R-1"]})
    assert refusal(r)["error"] == "NOT_LEAD", r


def test_first_referral_bad_state_text_as_printed(story, demo):
    # README "The closed loop": "BAD_STATE: referral R-1 is ACCEPTED; the recipient may send
    # FORWARD, STATUS, OUTCOME, INFO_REQUEST, INFO_RESPONSE; the sender may send WITHDRAW,
    # INFO_REQUEST, INFO_RESPONSE" -- here the sender tries to accept its own referral
    receipt(story["accept"])
    a = refusal(demo.send("kim.rheine", "--type", "ACCEPT", "--to", "jc.rheine",
                          "--referral", "R-1"), "BAD_STATE")
    assert a["code"] == 400
    assert a["text"] == ("referral R-1 is ACCEPTED; the recipient may send FORWARD, STATUS, "
                         "OUTCOME, INFO_REQUEST, INFO_RESPONSE; the sender may send WITHDRAW, "
                         "INFO_REQUEST, INFO_RESPONSE"), a


# === Connecting an office's system: kim-agent ====================================

def _agent_referral(demo, referral, case="C-1", payload="details"):
    r = demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral", referral,
                  "--case", case, "--subject", "p-7f3a", "--purpose", "employment",
                  "--consent", "G-1", "--payload", "-", stdin=payload)
    return receipt(r)


def test_agent_readme_curl_calls(story, demo):
    # README "Connecting an office's system": the three curl calls (port 7480 -> the demo
    # agent's, R-1/JC-R-1-1 -> new ids: R-1 is answered already in "Your first referral")
    _agent_referral(demo, "R-4")
    demo.agent.wait_referral("R-4")
    base = demo.agent.url
    auth = "Authorization: Bearer " + demo.agent.token
    r = curl("-H", auth, base + "/v1/inbox?handled=false")
    assert r.rc == 0 and any(i.get("referral_id") == "R-4" for i in json.loads(r.out)["items"]), r
    r = curl("-H", auth, base + "/v1/referrals/R-4/answer", "-d",
             '{"answer":"accept","msg_id":"JC-R-4-1"}')
    assert r.rc == 0, r
    posted = json.loads(r.out)
    assert posted["msg_id"] == "JC-R-4-1" and posted["type"] == "ACCEPT", posted
    assert posted["recipient"] == "kim.rheine"      # docs/agent.md: addressed to the other party
    done = demo.agent.outbox_done("JC-R-4-1")
    r = curl("-H", auth, base + "/v1/outbox/JC-R-4-1")
    out = json.loads(r.out)
    assert done["status"] == "receipted" and out["status"] == "receipted", out
    assert isinstance(out["seq"], int)
    assert demo.state("kim.rheine", "R-4") == "ACCEPTED"


def test_agent_same_msg_id_again_is_safe(story, demo):
    # README "Connecting an office's system": "handing it over again with the same msg_id is
    # safe" (docs/agent.md: 200 with the record it has; the message is sent once)
    _agent_referral(demo, "R-5")
    demo.agent.wait_referral("R-5")
    body = {"answer": "accept", "msg_id": "JC-R-5-1"}
    s1, _, first = demo.agent.api("POST", "/v1/referrals/R-5/answer", body)
    assert s1 == 202, first       # "on the agent's disk before the agent says accepted"
    demo.agent.outbox_done("JC-R-5-1")
    s2, _, second = demo.agent.api("POST", "/v1/referrals/R-5/answer", body)
    assert s2 == 200 and second["msg_id"] == "JC-R-5-1", second
    sent = [x for x in demo.replay("--type", "ACCEPT") if x["body"]["msg_id"] == "JC-R-5-1"]
    assert len(sent) == 1, sent


def test_agent_api_offers_what_the_readme_lists():
    # README "Connecting an office's system": the HTTP API offers "send, inbox, referrals and
    # their answers, cases with their timelines, consents (record, revoke, list), access
    # reports and erasure" (kim-agent --routes, docs/agent.md)
    r = run([AGENT, "--routes"])
    assert r.rc == 0, r
    for route in ("POST /v1/messages", "GET /v1/inbox", "GET /v1/referrals",
                  "POST /v1/referrals/{referral_id}/answer", "GET /v1/cases/{case_id}",
                  "POST /v1/consents", "GET /v1/consents", "POST /v1/consents/{consent}/revoke",
                  "POST /v1/subjects/{subject}/report", "POST /v1/subjects/{subject}/erasure",
                  "GET /v1/webhook/dead"):
        assert route in r.out, route


def test_agent_keeps_message_until_broker_receipts(tmp_root):
    # README "Connecting an office's system": "A message is on the agent's disk before the
    # agent says "accepted", and is sent until the broker receipts it"
    b = Broker(os.path.join(tmp_root, "agent-offline"),
               [("kim.rheine", "KIM", 1, "agency"), ("jc.rheine", "JC", 1, "agency")])
    b.start()
    b.stop()
    agent = Agent(b, "kim.rheine")
    agent.start()
    try:
        grant = consent("C-OFF", "G-OFF", "p-off", ["jc.rheine"], ["employment"])
        grant["msg_id"] = "KIM-OFF-1"
        status, _, rec = agent.api("POST", "/v1/messages", grant)
        assert status == 202 and rec["status"] == "queued", rec
        b.start()
        done = agent.outbox_done("KIM-OFF-1")
        assert done and done["status"] == "receipted" and isinstance(done["seq"], int), done
    finally:
        agent.finish()
        b.finish()


class Hooks(http.server.BaseHTTPRequestHandler):
    calls = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hdrs = dict((k.lower(), v) for k, v in self.headers.items())
        hdrs["_at"] = time.monotonic()
        self.calls.append((hdrs, body))
        first = sum(1 for h, _ in self.calls if h.get("webhook-id") ==
                    self.headers.get("webhook-id")) == 1
        fail = b"R-DEAD" in body or first
        self.send_response(503 if fail else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_agent_webhook_and_folders(story, demo):
    # README "Connecting an office's system": Webhook -- each new delivery POSTed, signed with
    # HMAC-SHA256 (Standard Webhooks headers), retried with backoff, dead letters listed in
    # the API; Folders -- NAME.json dropped into the outbox folder is sent, deliveries appear
    # in the inbox folder as SEQ.json
    calls = []
    handler = type("H", (Hooks,), {"calls": calls})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = os.path.join(demo.root, "vhs")
    for sub in ("out", "in"):
        os.makedirs(os.path.join(folder, sub))
    secret = os.path.join(folder, "webhook.secret")
    with open(secret, "w") as f:
        f.write("s3cr3t-" + "a" * 40 + "\n")
    os.chmod(secret, 0o600)
    extra = ("webhook\n    url = \"http://127.0.0.1:%d/kim\"\n    secret_file = \"%s\"\n"
             "    max_attempts = 3\n    backoff_ms = 100\n    backoff_max_ms = 200\n"
             "folder\n    outbox = \"%s/out\"\n    inbox = \"%s/in\"\n    poll_ms = 100\n"
             % (server.server_address[1], secret, folder, folder))
    agent = Agent(demo, "ikt.rheine.vhs", extra=extra)
    agent.start()
    try:
        receipt(demo.send_json("kim.rheine", consent("C-W", "G-W", "p-w", ["ikt.rheine.vhs"],
                                                     ["language_course"])))
        for ref in ("R-W1", "R-DEAD"):
            receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "ikt.rheine.vhs",
                              "--referral", ref, "--case", "C-W", "--subject", "p-w",
                              "--purpose", "language_course", "--consent", "G-W",
                              "--payload", "-", stdin="Kursplatz gesucht"))
        w1 = agent.wait_referral("R-W1")
        dead = agent.wait_referral("R-DEAD")
        # webhook: signed, retried with the same webhook-id after a 503
        pushes = wait_for(lambda: [c for c in calls if c[0].get("webhook-id") == str(w1["seq"])]
                          if len([c for c in calls if c[0].get("webhook-id") ==
                                  str(w1["seq"])]) >= 2 else None, timeout=10)
        assert pushes, calls
        assert pushes[1][0]["_at"] - pushes[0][0]["_at"] >= 0.09     # backoff_ms = 100
        key = open(secret).read().strip().encode()
        for hdrs, body in pushes:
            mac = hmac.new(key, ("%s.%s." % (hdrs["webhook-id"], hdrs["webhook-timestamp"])
                                 ).encode() + body, hashlib.sha256).digest()
            assert hdrs["webhook-signature"] == "v1," + base64.b64encode(mac).decode(), hdrs
        pushed = json.loads(pushes[-1][1])
        assert pushed.get("payload") == "Kursplatz gesucht", pushed
        # dead letters, listed in the API
        dead_list = wait_for(lambda: [d for d in agent.api("GET", "/v1/webhook/dead")[2]["items"]
                                      if d["seq"] == dead["seq"]], timeout=10)
        assert dead_list, agent.api("GET", "/v1/webhook/dead")
        # folders: deliveries as SEQ.json
        path = os.path.join(folder, "in", "%d.json" % w1["seq"])
        assert wait_for(lambda: os.path.exists(path), timeout=10), os.listdir(
            os.path.join(folder, "in"))
        with open(path) as f:
            assert "R-W1" in f.read()
        # folders: NAME.json dropped into the outbox is sent (written under a dot-name, renamed)
        tmp = os.path.join(folder, "out", ".ACC-W1.json")
        with open(tmp, "w") as f:
            json.dump({"type": "ACCEPT", "recipient": "kim.rheine", "referral_id": "R-W1"}, f)
        os.rename(tmp, os.path.join(folder, "out", "ACC-W1.json"))
        answer = os.path.join(folder, "out", "answers", "ACC-W1.json")
        assert wait_for(lambda: os.path.exists(answer) and
                        '"receipted"' in open(answer).read(), timeout=10), os.listdir(
            os.path.join(folder, "out"))
        assert wait_for(lambda: demo.state("kim.rheine", "R-W1") == "ACCEPTED", timeout=5)
    finally:
        agent.finish()
        server.shutdown()


def _login(url, user, password):
    """The web page's sign-in as a browser does it: GET / (following redirects to the
    login form), POST the form with its CSRF token and cookie. Returns the session cookie."""
    cookies = {}
    location = "/"
    for _ in range(5):
        status, hdrs, body = http_call("GET", url + location,
                                       {"Cookie": "; ".join("%s=%s" % kv for kv in cookies.items())})
        for k, v in hdrs:
            if k.lower() == "set-cookie":
                name, value = v.split(";")[0].split("=", 1)
                cookies[name] = value
        if status in (301, 302, 303, 307):
            location = dict((k.lower(), v) for k, v in hdrs)["location"]
            continue
        break
    assert status == 200 and 'action="/ui/login"' in body, (status, body[:500])
    csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    form = urllib.parse.urlencode({"csrf": csrf, "user": user, "password": password})
    status, hdrs, body = http_call("POST", url + "/ui/login", {
        "Cookie": "; ".join("%s=%s" % kv for kv in cookies.items()), "Origin": url,
        "Content-Type": "application/x-www-form-urlencoded"}, form)
    session = None
    for k, v in hdrs:
        if k.lower() == "set-cookie" and v.startswith("kim_session="):
            session = v.split(";")[0]
    return status, session


def test_agent_web_page_sign_in(story, demo):
    # README "Connecting an office's system": with web/enabled = 1 staff sign in at
    # http://127.0.0.1:7480/ (accounts: kim-agent --config agent.cfg --add-user anna --role
    # staff, password on stdin) and see what was referred to them
    r = run([AGENT, "--config", demo.agent.cfg, "--add-user", "anna", "--role", "staff"],
            cwd=demo.root, stdin="anna-long-passphrase\n")
    assert r.rc == 0, r
    status, session = _login(demo.agent.url, "anna", "anna-long-passphrase")
    assert status == 303 and session, status
    status, _, page = http_call("GET", demo.agent.url + "/ui/inbox", {"Cookie": session})
    assert status == 200 and "R-1" in page
    # ... the demo login (user demo, password demo-jobcenter)
    status, session = _login(demo.agent.url, "demo", "demo-jobcenter")
    assert status == 303 and session
    assert _login(demo.agent.url, "demo", "wrong-password-x")[1] is None


# === What the broker promises ====================================================

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


def test_promise_durable_and_dedup_across_kill9(lab):
    # README "What the broker promises": Durable -- neither kill -9 ... loses anything it has
    # receipted; Delivered -- "A msg_id the same sender repeats gets the original receipt,
    # even across restarts"
    first = receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-D1", "C-D", "durable-x",
                                     "--msg-id", "M-D1"))
    again = statute_referral(lab, "jc.rheine", "ja.rheine", "R-D1", "C-D", "durable-x",
                             "--msg-id", "M-D1")
    assert again.rc == 0 and again.one() == {"msg_id": "M-D1", "seq": first["seq"], "dup": True}
    lab.stop(signal.SIGKILL)
    lab.start()
    after = statute_referral(lab, "jc.rheine", "ja.rheine", "R-D1", "C-D", "durable-x",
                             "--msg-id", "M-D1")
    assert after.rc == 0 and after.one() == {"msg_id": "M-D1", "seq": first["seq"], "dup": True}
    got = [d for d in lab.inbox("ja.rheine").json() if d["hdr"].get("referral_id") == "R-D1"]
    assert len(got) == 1 and got[0]["seq"] == first["seq"] and got[0]["payload"] == "durable-x"


def test_promise_unacked_come_again_with_same_seq_in_log_order(lab):
    # README "What the broker promises": Delivered -- "in log order ... Unacknowledged
    # deliveries come again with the same sequence number"
    seqs = [receipt(statute_referral(lab, "jc.rheine", "soz.rheine", "R-U%d" % i, "C-U",
                                     "u%d" % i))["seq"] for i in range(3)]
    first = [d["seq"] for d in lab.inbox("soz.rheine", "--no-ack").json()]
    second = [d["seq"] for d in lab.inbox("soz.rheine").json()]
    assert first == seqs and second == seqs, (seqs, first, second)
    assert lab.inbox("soz.rheine").lines() == []


def test_promise_authentic_unregistered_key_and_sender_claim(lab):
    # README "What the broker promises": Authentic -- "Only keys in the registry are
    # admitted ... a header that claims otherwise is refused"
    r = run([KIM, "keygen", "stranger.rheine", "--dir", "other"], cwd=lab.root)
    assert r.rc == 0
    r = lab.kim("status", "--timeout", "1500", "--cert", "other/stranger.rheine.cert_secret")
    assert r.rc == 2 and r.out == "", r
    h = consent("C-A", "G-A", "p-a", ["ja.rheine"], ["employment"], sender="ja.rheine")
    a = refusal(lab.send_json("kim.rheine", h), "SENDER_MISMATCH")
    assert a["code"] == 204


@pytest.mark.parametrize("frame,reason,path", [
    ("81a3636d64a450494e", "MALFORMED", "cmd"),                       # truncated MessagePack
    ("84a3636d64a548454c4c4fa876657273696f6e739101a56167656e74a161a677696e646f77a23634",
     "BAD_TYPE", "window"),                                           # HELLO, window a string
    ("82a3636d64a450494e47a3782d6191919191" "01", "TOO_DEEP", "x-a[0][0][0]"),
    ("dfffffffff", "TOO_MANY", ""),                                   # a huge count
    ("81a3636d64a54645544348", "UNKNOWN_CMD", "cmd"),
])
def test_promise_bounded_malformed_input_named(lab, frame, reason, path):
    # README "Keys, roles and revocation" (Hostile habits) and "What the broker promises"
    # (Bounded): "malformed MessagePack, wrong types, deep nesting, huge counts, invalid UTF-8
    # and unknown commands each get a REJECT that names the offending field ... The broker
    # keeps serving everyone else." (frames from PROTOCOL.md 10.1, sent over CURVE)
    import msgpack
    import zmq
    sys.path.insert(0, PYDIR)
    from kim.certs import load_cert
    public, secret = load_cert(os.path.join(lab.root, lab.cert("ja.rheine")), secret=True)
    broker_public, _ = load_cert(os.path.join(lab.data, "keys", "broker.cert"))
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_publickey, s.curve_secretkey = public.encode(), secret.encode()
        s.curve_serverkey = broker_public.encode()
        s.connect(lab.endpoint)
        s.send(bytes.fromhex(frame))
        assert s.poll(5000), "no answer"
        answer = msgpack.unpackb(s.recv_multipart()[0], raw=False)
        s.close()
    finally:
        ctx.term()
    assert answer["cmd"] == "REJECT" and answer["reason"] == reason, answer
    assert answer.get("path", "") == path, answer
    assert lab.kim("status", cert="jc.rheine").rc == 0


def test_promise_bounded_payload_size(lab):
    # README "What the broker promises": Bounded -- size limits get a clear REJECT with a
    # reason code; "Keys, roles and revocation": "the plaintext limit is max_payload - 48"
    ok = statute_referral(lab, "jc.rheine", "ja.rheine", "R-S1", "C-S1", "x" * (1024 - 48))
    receipt(ok)
    big = statute_referral(lab, "jc.rheine", "ja.rheine", "R-S2", "C-S2", "x" * (1024 - 47))
    a = refusal(big)
    assert a.get("error") and isinstance(a.get("code"), int), a
    lab.inbox("ja.rheine")


def test_promise_bounded_mailbox_quota(tmp_root):
    # README "What the broker promises": Bounded -- "mailbox quotas ... get a clear REJECT
    # with a reason code. The broker keeps serving everyone else." (kim.cfg(5): QUOTA)
    b = Broker(os.path.join(tmp_root, "quota"), LAB_ORGS[1:4],
               sections={"broker": {"mailbox_quota": 2}})
    b.start()
    try:
        for i in range(2):
            receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-Q%d" % i, "C-Q"))
        a = refusal(statute_referral(b, "jc.rheine", "ja.rheine", "R-Q9", "C-Q"), "QUOTA")
        assert a["code"] == 300
        receipt(statute_referral(b, "jc.rheine", "soz.rheine", "R-Q5", "C-Q5"))
    finally:
        b.finish()


def test_promise_retention_and_inactivity_purge(timers):
    # README "What the broker promises": Forgetful on time -- "A closed case's payloads go
    # retention/payload_days after closing; an open case that stays quiet for
    # retention/open_case_days loses them too, its lead warned retention/notice_days before"
    b = timers

    def both():
        found = {p["body"].get("case_id"): p["body"] for p in b.replay("--type", "purge")}
        return found if {"C-RET", "C-QUIET"} <= set(found) else None
    by_case = wait_for(both, timeout=12, step=0.3) or {}
    purges = by_case
    assert by_case.get("C-RET", {}).get("reason") == "retention", purges
    assert b.seqs["R-RET"] in by_case["C-RET"]["seqs"]
    assert by_case.get("C-QUIET", {}).get("reason") == "inactivity", purges
    assert b.seqs["R-QUIET"] in by_case["C-QUIET"]["seqs"]
    # its lead warned before: a REMINDER naming the case, its deadline in the future
    warned = [d for d in timer_mail(b, "jc.rheine") if d["hdr"]["type"] == "REMINDER"
              and d["hdr"].get("case_id") == "C-QUIET"]
    assert warned and warned[0]["hdr"]["deadline"] > warned[0]["hdr"]["created_at"], warned
    # a delivery of a purged payload carries no payload any more
    got = [d for d in timer_mail(b, "ja.rheine") if d["hdr"].get("referral_id") == "R-RET"]
    assert got and got[0]["payload_base64"] == "", got
    r = b.kim("audit", "verify", "--data", "kim-data")
    assert r.rc == 0 and r.out.startswith("OK: "), r


# === Running the broker yourself =================================================

def test_running_broker_help_and_check_sample_config(tmp_root):
    # README "Running the broker yourself": kim-broker --help; kim-broker --check --config
    # deploy/kim.cfg (kim.cfg(5): --check validates a file)
    r = run([BROKER, "--help"])
    assert r.rc == 0 and "--config" in r.out and "--check" in r.out, r
    cwd = os.path.join(tmp_root, "check")
    os.makedirs(cwd)
    r = run([BROKER, "--check", "--config", os.path.join(ROOT, "deploy", "kim.cfg")], cwd=cwd)
    assert r.rc == 0 and "kim.rheine" in r.out, r
    assert os.listdir(cwd) == [], "--check wrote into the working folder"


def test_running_broker_keygen_register_and_serve(tmp_root):
    # README "Running the broker yourself": "Make a key pair for each organisation with
    # `kim keygen ORG --dir keys/`. Put its public key into the registry and give the secret
    # file (mode 0600) to that agency's agent"; kim-broker --config my.cfg
    root = os.path.join(tmp_root, "own")
    os.makedirs(root)
    r = run([KIM, "keygen", "jc.rheine", "--dir", "keys/"], cwd=root)
    assert r.rc == 0, r
    printed = r.one()
    assert stat.S_IMODE(os.stat(os.path.join(root, "keys", "jc.rheine.cert_secret")).st_mode) \
        == 0o600
    assert printed["public_key"] == public_key(os.path.join(root, "keys", "jc.rheine.cert"))
    # ... "give the secret file (mode 0600) to that agency's agent" (deploy/agent.cfg: the agent
    # refuses a key group or others may read)
    with open(os.path.join(root, "agent.cfg"), "w") as f:
        f.write('agent\n    org = jc.rheine\n    data = "%s/agent"\n    cert = "%s/keys/'
                'jc.rheine.cert_secret"\nbroker\n    key = "%s"\nhttp\n    tokens = "%s/tokens"\n'
                % (root, root, printed["public_key"], root))
    with open(os.path.join(root, "tokens"), "w") as f:
        f.write("case_system %s\n" % ("ab" * 32))
    os.chmod(os.path.join(root, "tokens"), 0o600)
    r = run([AGENT, "--check", "--config", "agent.cfg"], cwd=root)
    assert r.rc == 0, r
    os.chmod(os.path.join(root, "keys", "jc.rheine.cert_secret"), 0o644)
    r = run([AGENT, "--check", "--config", "agent.cfg"], cwd=root)
    assert r.rc == 2, r
    os.chmod(os.path.join(root, "keys", "jc.rheine.cert_secret"), 0o600)
    port = free_port()
    with open(os.path.join(root, "my.cfg"), "w") as f:
        f.write('broker\n    data = "%s/kim-data"\n    bind = "tcp://127.0.0.1:%d"\n'
                'policy\n    file = "%s"\norgs\n    jc.rheine\n        role = agency\n'
                '        public_key = "%s"\n' % (root, port, POLICY, printed["public_key"]))
    log = open(os.path.join(root, "broker.log"), "wb")
    proc = subprocess.Popen([BROKER, "--config", "my.cfg"], cwd=root, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        env = {"KIM_ENDPOINT": "tcp://127.0.0.1:%d" % port,
               "KIM_BROKER_KEY": "kim-data/keys/broker.cert"}
        r = wait_for(lambda: (lambda x: x if x.rc == 0 else None)(
            run([KIM, "status", "--timeout", "500", "--cert", "keys/jc.rheine.cert_secret"],
                cwd=root, env=env)), timeout=10)
        assert r and r.one()["org"] == "jc.rheine", r
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        log.close()


# === Keys, roles and revocation ===================================================

def test_keys_broker_makes_its_keys_and_refuses_readable_secrets(tmp_root):
    # README "Keys, roles and revocation": "The broker makes its own key pair in <data>/keys/
    # on first start and refuses to start if its secret key file is readable by others";
    # "Audit": broker.sign_secret (mode 0600; the broker refuses to start if others can
    # read it) and broker.sign.pub
    b = Broker(os.path.join(tmp_root, "keys"), LAB_ORGS[1:2])
    b.start()
    b.finish()
    keys = os.path.join(b.data, "keys")
    for name in ("broker.cert", "broker.cert_secret", "broker.sign_secret", "broker.sign.pub"):
        assert os.path.exists(os.path.join(keys, name)), os.listdir(keys)
    for secret in ("broker.cert_secret", "broker.sign_secret"):
        path = os.path.join(keys, secret)
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
        os.chmod(path, 0o644)
        b.start(wait=False)
        try:
            rc = b.proc.wait(15)
        except subprocess.TimeoutExpired:
            rc = None
        b.stop()
        os.chmod(path, 0o600)
        assert rc not in (None, 0), "broker started with %s mode 0644" % secret


def test_keys_embedded_default_is_curve(tmp_root):
    # README "Keys, roles and revocation": "Every endpoint is CurveZMQ, also the embedded
    # default" -- a broker without a config; a client without CURVE gets no answer
    import msgpack
    import zmq
    root = os.path.join(tmp_root, "embedded")
    os.makedirs(root)
    port = free_port()
    log = open(os.path.join(root, "broker.log"), "wb")
    proc = subprocess.Popen([BROKER, "--data", "kim-data", "--bind", "tcp://127.0.0.1:%d" % port],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    ctx = zmq.Context()
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(root, "kim-data", "keys",
                                                            "broker.cert")), timeout=10)
        time.sleep(0.2)
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect("tcp://127.0.0.1:%d" % port)
        s.send(msgpack.packb({"cmd": "HELLO", "versions": [1, 2], "agent": "plain", "window": 8}))
        assert s.poll(1000) == 0, "a plaintext client was answered"
        s.close()
    finally:
        ctx.term()
        proc.terminate()
        assert proc.wait(20) == 0
        log.close()


@pytest.fixture(scope="module")
def reg(tmp_root):
    b = Broker(os.path.join(tmp_root, "reg"), LAB_ORGS)
    b.start()
    yield b
    b.finish()


def test_roles_auditor_operator_agency(reg):
    # README "Keys, roles and revocation": an auditor "may not send and has no mailbox"; an
    # operator may reload the registry, "it never receives payloads"; "Audit": agencies and
    # operators are refused (FORBIDDEN) the log
    a = refusal(reg.send_json("dsb.steinfurt", consent("C-R", "G-R", "p-r", ["jc.rheine"],
                                                       ["employment"])), "FORBIDDEN")
    assert a["code"] == 205
    r = reg.kim("subscribe", "--case", "C-R", cert="dsb.steinfurt")
    assert r.rc == 1 and "FORBIDDEN" in r.out + r.err, r
    r = reg.kim("audit", "replay", "--sign-key", "kim-data/keys/broker.sign.pub",
                cert="dsb.steinfurt")
    assert r.rc == 0 and r.json(), r
    for org in ("jc.rheine", "ops.steinfurt"):
        r = reg.kim("audit", "replay", "--sign-key", "kim-data/keys/broker.sign.pub", cert=org)
        assert r.rc != 0 and "FORBIDDEN" in r.out + r.err, r
    r = reg.kim("admin", "reload", cert="jc.rheine")
    assert r.rc == 1 and "FORBIDDEN" in r.out + r.err, r
    r = reg.kim("admin", "reload", cert="ops.steinfurt")
    assert r.rc == 0 and set(r.one()) == {"org_count", "changes"}, r
    # no payload can be sealed to an operator: the directory has no key for it
    r = reg.kim("directory", "ops.steinfurt", cert="jc.rheine")
    assert r.rc == 1, r


def test_keys_revoke_rotate_add_and_invalid_reload(reg):
    # README "Keys, roles and revocation": "Rotate or revoke a key by editing the registry
    # (public_key, or revoked = 1). Then send the broker SIGHUP, or let an operator run kim
    # admin reload ... New keys are admitted at once. Every session of a revoked or rotated
    # key ends at once with REVOKED, and that key's next connection is refused. An invalid
    # file changes nothing; the broker answers RELOAD_FAILED and says which key is wrong."
    follow = subprocess.Popen([KIM, "inbox", "--follow", "--cert", reg.cert("aa.rheine")],
                              cwd=reg.root, env=dict(os.environ, **reg.env()),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: reg.kim("status", cert="ops.steinfurt").json()
                        and "aa.rheine connected" in reg.log_text(), timeout=10)
        reg.orgs["aa.rheine"]["revoked"] = 1
        reg.write_config()
        r = reg.kim("admin", "reload", cert="ops.steinfurt")
        assert r.rc == 0 and "1 revoked" in r.one()["changes"], r
        out, err = follow.communicate(timeout=10)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode != 0 and "REVOKED" in err, (follow.returncode, out, err)
    r = reg.kim("status", "--timeout", "1500", cert="aa.rheine")
    assert r.rc == 2 and "REVOKED" in r.err, r
    # rotate soz.rheine's key by SIGHUP: the old key is refused, the new one admitted at once
    old = os.path.join(reg.keys, "soz.rheine.cert_secret")
    shutil.copy(old, os.path.join(reg.root, "soz-old.cert_secret"))
    follow = subprocess.Popen([KIM, "inbox", "--follow", "--cert", "soz-old.cert_secret"],
                              cwd=reg.root, env=dict(os.environ, **reg.env()),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: reg.log_text().count("soz.rheine connected") >= 1, timeout=10)
    reg.keygen("soz.rheine", "--force")
    reg.write_config()
    reg.hup()
    try:
        out, err = follow.communicate(timeout=10)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode != 0 and "REVOKED" in err, (follow.returncode, out, err)
    assert wait_for(lambda: reg.kim("status", "--timeout", "1000", cert="soz.rheine").rc == 0,
                    timeout=5)
    r = reg.kim("status", "--timeout", "1500", "--cert", "soz-old.cert_secret")
    assert r.rc == 2, r
    # a new organisation is admitted at once
    reg.orgs["alb.rheine"] = {"name": "ALB", "public_body": 1, "role": "agency"}
    reg.keygen("alb.rheine")
    reg.write_config()
    r = reg.kim("admin", "reload", cert="ops.steinfurt")
    assert r.rc == 0 and "1 added" in r.one()["changes"], r
    assert reg.kim("status", cert="alb.rheine").rc == 0
    # an invalid file changes nothing and names the key
    good = reg.config_text()
    reg.write_config(good.replace(public_key(os.path.join(reg.keys, "jc.rheine.cert")),
                                  "not-a-key"))
    r = reg.kim("admin", "reload", cert="ops.steinfurt")
    assert r.rc == 1 and "RELOAD_FAILED" in r.out + r.err, r
    assert "orgs/jc.rheine/public_key" in r.out + r.err, r
    assert reg.kim("status", cert="jc.rheine").rc == 0
    reg.write_config(good)


def test_keys_stale_message_refused(reg):
    # README "Keys, roles and revocation": "A message whose created_at is older than the
    # de-duplication window is refused as STALE"
    h = consent("C-ST", "G-ST", "p-st", ["ja.rheine"], ["employment"],
                created_at=now_ms() - 8 * 86400 * 1000)
    a = refusal(reg.send_json("jc.rheine", h), "STALE")
    assert a["code"] == 212


def test_keys_rate_limited_while_others_served(tmp_root):
    # README "Keys, roles and revocation": "Each organisation has one rate budget over all
    # its connections ... above them, commands get RATE_LIMITED ... while other agents are
    # served as usual"
    b = Broker(os.path.join(tmp_root, "rate"), LAB_ORGS[1:4],
               sections={"broker": {"rate_limit": 5, "rate_burst": 400,
                                    "subscriptions_per_org": 1}})
    b.start()
    try:
        # ... "and limits on sessions, subscriptions and open queries ...; above them,
        # commands get RATE_LIMITED or ORG_LIMIT"
        assert b.kim("subscribe", "--case", "C-A", cert="soz.rheine").rc == 0
        r = b.kim("subscribe", "--case", "C-B", cert="soz.rheine")
        assert r.rc == 1 and "ORG_LIMIT" in r.out + r.err, r
        grants = [consent("C-RL%d" % i, "G-RL%d" % i, "p-rl", ["ja.rheine"], ["employment"])
                  for i in range(500)]
        r = b.send_json("jc.rheine", *grants)
        errors = {a.get("error") for a in r.json()}
        assert "RATE_LIMITED" in errors, r
        assert b.kim("status", cert="soz.rheine").rc == 0
    finally:
        b.finish()


def test_keys_session_limit_ends_the_oldest(tmp_root):
    # README "Keys, roles and revocation": "a session beyond sessions_per_org ends the
    # organisation's oldest, while other agents are served as usual"
    b = Broker(os.path.join(tmp_root, "sessions"), LAB_ORGS[1:3],
               sections={"broker": {"sessions_per_org": 1}})
    b.start()
    follow = subprocess.Popen([KIM, "inbox", "--follow", "--cert", b.cert("ja.rheine")],
                              cwd=b.root, env=dict(os.environ, **b.env()),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not wait_for(lambda: "ja.rheine connected" in b.log_text(), timeout=10):
            pytest.fail("kim inbox --follow did not connect")
        second = b.kim("status", "--timeout", "2000", cert="ja.rheine")
        time.sleep(0.3)
        first_alive = follow.poll() is None
    finally:
        if follow.poll() is None:
            follow.kill()
        _, err = follow.communicate()
        b.finish()
    assert second.rc == 0, (second, err)
    assert "the oldest ends" in b.log_text() or "REPLACED" in err, (b.log_text()[-2000:], err)
    assert first_alive, err                     # kim inbox --follow comes back by itself


def test_sealing_directory_unknown_recipient_and_sealed_error(reg):
    # README "Keys, roles and revocation", Sealed payloads: `kim directory [ORG]` prints one
    # JSON line per organisation with its keys; "A payload for an organisation the directory
    # does not list is refused before it leaves (UNKNOWN_RECIPIENT)"; "A delivery that does
    # not open with our key is handed to the application flagged sealed_error with the bytes
    # as received, never dropped"
    r = reg.kim("directory", cert="jc.rheine")
    listed = [x["org"] for x in r.json()]
    assert r.rc == 0 and "ja.rheine" in listed and "dsb.steinfurt" not in listed, r
    r = reg.kim("directory", "ja.rheine", cert="jc.rheine")
    assert r.rc == 0 and r.one()["org"] == "ja.rheine"
    assert r.one()["public_key"] == public_key(os.path.join(reg.keys, "ja.rheine.cert"))
    head = reg.kim("status", cert="jc.rheine").one()["log_head"]
    a = refusal(statute_referral(reg, "jc.rheine", "nobody.rheine", "R-N", "C-N", "x"),
                "UNKNOWN_RECIPIENT")
    assert reg.kim("status", cert="jc.rheine").one()["log_head"] == head, a
    script = ("import kim, json\n"
              "with kim.Client(%r, 'kim-data/keys/broker.cert', %r) as c:\n"
              "    r = c.send({'type': 'REFERRAL', 'recipient': 'ja.rheine', 'referral_id': 'R-PL',"
              " 'case_id': 'C-PL', 'subject': 'p-pl', 'purpose': 'employment',"
              " 'legal_basis': {'kind': 'statute', 'citation': %r}}, b'not sealed', seal=False)\n"
              "    print(json.dumps({'seq': r['seq']}))\n"
              % (reg.endpoint, reg.cert("jc.rheine"), STATUTE))
    r = run([sys.executable, "-c", script], cwd=reg.root, env={"PYTHONPATH": PYDIR})
    assert r.rc == 0, r
    got = [d for d in reg.inbox("ja.rheine").json() if d["hdr"].get("referral_id") == "R-PL"]
    assert got and got[0].get("sealed_error") is True, got
    assert base64.b64decode(got[0]["payload_base64"]) == b"not sealed"


def test_sender_signatures(reg):
    # README "Keys, roles and revocation", Sender signatures: `kim keygen NAME --sign` writes
    # NAME.sign and NAME.sign_secret (0600); register orgs/<id>/sign_key; from the next reload
    # every SEND must carry hdr.sig or is refused with BAD_SIGNATURE; kim signs whenever it
    # finds NAME.sign_secret beside NAME.cert_secret; an organisation without a sign_key
    # must not send sig
    r = reg.keygen("ja.rheine", "--sign")
    sign_secret = os.path.join(reg.keys, "ja.rheine.sign_secret")
    assert os.path.exists(os.path.join(reg.keys, "ja.rheine.sign"))
    assert stat.S_IMODE(os.stat(sign_secret).st_mode) == 0o600
    reg.orgs["ja.rheine"]["sign_key"] = r["sign_key"]
    reg.write_config()
    assert reg.kim("admin", "reload", cert="ops.steinfurt").rc == 0
    signed = receipt(statute_referral(reg, "ja.rheine", "jc.rheine", "R-SIG1", "C-SIG", "s"))
    rec = reg.replay("--from", signed["seq"], "--to", signed["seq"])[0]
    assert rec["body"].get("sig"), rec          # the signature stays in the logged header
    hidden = os.path.join(reg.root, "ja.rheine.sign_secret")
    os.rename(sign_secret, hidden)
    try:
        a = refusal(statute_referral(reg, "ja.rheine", "jc.rheine", "R-SIG2", "C-SIG", "s"),
                    "BAD_SIGNATURE")
        assert a["code"] == 211
    finally:
        os.rename(hidden, sign_secret)
    # soz.rheine has no sign_key: a signature it sends is refused too
    reg.keygen("soz.rheine", "--sign")
    try:
        a = refusal(statute_referral(reg, "soz.rheine", "jc.rheine", "R-SIG3", "C-SIG3", "s"))
        assert a["error"] == "BAD_SIGNATURE", a
    finally:
        os.unlink(os.path.join(reg.keys, "soz.rheine.sign_secret"))


# === Lawful by default ==============================================================

def test_lawful_no_policy_file_denies(tmp_root):
    # README "Lawful by default": "no match means deny, and so does a broker without a
    # policy file"
    b = Broker(os.path.join(tmp_root, "nopolicy"), LAB_ORGS[1:3], policy=None)
    b.start()
    try:
        a = refusal(statute_referral(b, "jc.rheine", "ja.rheine", "R-NP", "C-NP"))
        assert a["error"] == "POLICY_DENY" and a["code"] == 500, a
    finally:
        b.finish()


def test_lawful_forward_checked_for_the_new_organisation(lab):
    # README "Lawful by default": "FORWARD (checked for the organisation it passes the
    # referral on to)": ja -> aba under SGB X §69(1)1 is not what rule P4 accepts, although
    # the FORWARD itself is addressed to the referral's sender (jc, where P1 would allow it)
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-LF", "C-LF"))
    a = refusal(lab.send("ja.rheine", "--type", "FORWARD", "--to", "jc.rheine", "--referral",
                         "R-LF", "--org", "aba.rheine", "--purpose", "residence", "--statute",
                         STATUTE))
    assert a["error"] == "NO_BASIS" and "rule P4" in a["text"], a
    receipt(lab.send("ja.rheine", "--type", "FORWARD", "--to", "jc.rheine", "--referral",
                     "R-LF", "--org", "aba.rheine", "--purpose", "residence", "--statute",
                     "SGB X §71(2)1", "--msg-id", "R-LF-F"))
    assert lab.state("jc.rheine", "R-LF") == "FORWARDED"


def test_lawful_p2_needs_the_entrusters_consent():
    # README "Lawful by default", Consents: "who gave it (giver: subject, guardian, or
    # entruster for data confided under § 65 SGB VIII, which rule P2 requires)"
    base = [KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "ja.rheine",
            "--to", "jc.rheine", "--purpose", "employment", "--categories", "sgb8_s65",
            "--consent", "G-65", "--assume-consent", "--giver"]
    r = run(base + ["entruster"], cwd=ROOT)
    assert r.rc == 0 and json.loads(r.lines()[-1])["rule"] == "P2", r
    r = run(base + ["subject"], cwd=ROOT)
    assert r.rc == 1 and json.loads(r.lines()[-1])["rule"] == "P2", r


def test_lawful_decisions_in_log_and_rule_seen_by_recipient(story, demo):
    # README "Lawful by default": "Every decision is in the log: a denial as a DECISION
    # record, an allowed transfer with its rule in the header field rule, which the
    # recipient sees too"
    refusal(story["refused"], "CONSENT_SCOPE")
    denials = [x for x in demo.replay("--type", "decision")
               if x["body"].get("referral_id") == "R-2"]
    assert denials and denials[0]["body"]["rule"] == "P8", denials
    item = demo.agent.wait_referral("R-1")
    status, _, one = demo.agent.api("GET", "/v1/inbox/%d" % item["seq"])
    hdr = one.get("header") or one.get("hdr") or {}
    assert hdr.get("rule") == "P8", one


def test_lawful_policy_lint_and_check():
    # README "Lawful by default": kim policy lint deploy/policy.cfg; kim policy check ... sch
    # -> aba prints each rule it tried and why, then the verdict as JSON; works offline and
    # says so
    r = run([KIM, "policy", "lint", "deploy/policy.cfg"], cwd=ROOT)
    assert r.rc == 0, r
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "sch.rheine",
             "--to", "aba.rheine", "--purpose", "residence", "--statute", "AufenthG §87(1)"],
            cwd=ROOT)
    assert r.rc == 1, r
    assert re.search(r"^rule P11 .*does not apply", r.out, re.M), r
    assert re.search(r"^rule P5 .*applies", r.out, re.M), r
    verdict = json.loads(r.lines()[-1])
    assert verdict["decision"] == "deny" and verdict["rule"] == "P5", verdict
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "kim.rheine",
             "--to", "jc.rheine", "--purpose", "employment", "--consent", "G-1",
             "--assume-consent"], cwd=ROOT)
    assert r.rc == 0 and "offline" in r.out.lower(), r


@pytest.mark.parametrize("citation", ["SGB X §71(2)3", "§ 71 Abs. 2 Satz 1 Nr. 3 SGB X",
                                      "sgb x § 71 abs. 2 nr. 3"])
def test_lawful_citations_read_as_provisions(citation):
    # README "Lawful by default": the three spellings are the same provision (rule P4 lists
    # SGB X §71(2)3 for jc -> aba)
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "jc.rheine",
             "--to", "aba.rheine", "--purpose", "residence", "--statute", citation], cwd=ROOT)
    assert r.rc == 0 and json.loads(r.lines()[-1])["rule"] == "P4", r


def test_lawful_broader_citation_refused():
    # README "Lawful by default": "a citation broader than the rule's is refused"
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "jc.rheine",
             "--to", "aba.rheine", "--purpose", "residence", "--statute", "SGB X §71"], cwd=ROOT)
    assert r.rc == 1 and json.loads(r.lines()[-1])["decision"] == "deny", r


def test_lawful_check_with_consent_file_as_json_header(tmp_root):
    # README "Lawful by default": "--consent-file GRANT.json ... stand in for the broker's
    # consent registry" -- the README's own grant, the README's transfer (header on stdin)
    path = os.path.join(tmp_root, "grant.json")
    with open(path, "w") as f:
        json.dump(consent("C-1", "G-1", "p-7f3a", ["jc.rheine"], ["employment"]), f)
    hdr = {"type": "REFERRAL", "sender": "kim.rheine", "recipient": "jc.rheine",
           "referral_id": "R-1", "case_id": "C-1", "subject": "p-7f3a", "purpose": "employment",
           "legal_basis": {"kind": "consent", "consent_id": "G-1"}}
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--json",
             "--consent-file", path], cwd=ROOT, stdin=json.dumps(hdr) + "\n")
    assert r.rc == 0 and json.loads(r.lines()[-1])["decision"] == "allow", r
    hdr["purpose"] = "housing"
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--json",
             "--consent-file", path], cwd=ROOT, stdin=json.dumps(hdr) + "\n")
    assert r.rc == 1 and json.loads(r.lines()[-1])["code"] == "CONSENT_SCOPE", r


def test_lawful_check_with_consent_file_from_options(tmp_root):
    path = os.path.join(tmp_root, "grant2.json")
    with open(path, "w") as f:
        json.dump(consent("C-1", "G-1", "p-7f3a", ["jc.rheine"], ["employment"]), f)
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "kim.rheine",
             "--to", "jc.rheine", "--purpose", "employment", "--subject", "p-7f3a",
             "--consent", "G-1", "--consent-file", path, "--case", "C-1"], cwd=ROOT)
    assert r.rc == 0 and json.loads(r.lines()[-1])["decision"] == "allow", r


def test_lawful_consent_revoke_blocks_suspends_withholds_tells(story, demo):
    # README "Lawful by default": "`kim send --type CONSENT_REVOKE --consent ID` revokes one";
    # CONSENT_REVOKE "blocks new transfers under it at once, suspends the open referrals that
    # rely on it, withholds what was receipted under it but not yet delivered (the sender is
    # told), and tells every organisation that received data under it"
    receipt(demo.send_json("kim.rheine", consent("C-REV", "G-REV", "p-rev",
                                                 ["jc.rheine", "mbe.rheine.caritas"],
                                                 ["employment", "counselling"])))
    receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                      "R-REV1", "--case", "C-REV", "--subject", "p-rev", "--purpose",
                      "employment", "--consent", "G-REV", "--payload", "-", stdin="rev1"))
    held = receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "mbe.rheine.caritas",
                             "--referral", "R-REV2", "--case", "C-REV", "--subject", "p-rev",
                             "--purpose", "counselling", "--consent", "G-REV"))
    demo.agent.wait_referral("R-REV1")
    assert wait_for(lambda: demo.state("kim.rheine", "R-REV1") == "DELIVERED", timeout=5)
    r = demo.send("kim.rheine", "--type", "CONSENT_REVOKE", "--consent", "G-REV")
    receipt(r)
    a = refusal(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                          "R-REV3", "--case", "C-REV", "--subject", "p-rev", "--purpose",
                          "employment", "--consent", "G-REV"), "CONSENT_REVOKED")
    assert a["code"] == 503
    assert demo.state("kim.rheine", "R-REV1") == "SUSPENDED"
    told = wait_for(lambda: [i for i in demo.agent.api("GET", "/v1/inbox?limit=1000")[2]["items"]
                             if i["type"] == "CONSENT_REVOKE"], timeout=5)
    assert told, "jc.rheine (received data under G-REV) was not told"
    mbe = demo.inbox("mbe.rheine.caritas").json()
    assert not [d for d in mbe if d["hdr"].get("referral_id") == "R-REV2"
                and d["hdr"]["type"] == "REFERRAL"], "withheld referral was delivered"
    notes = [d for d in demo.inbox("kim.rheine").json()
             if d["hdr"]["type"] == "CONSENT_REVOKE" and d["hdr"].get("ref_msg_id") ==
             held["msg_id"]]
    assert notes and notes[0]["hdr"].get("code") == "withheld", notes


def test_lawful_consent_bound(story, demo):
    # README "Lawful by default", Consents: "A consent is bound to its subject, its case and
    # the case's lead ...; any other use is refused with CONSENT_BOUND"
    for case, subject in (("C-OTHER", "p-7f3a"), ("C-1", "p-other")):
        a = refusal(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine",
                              "--referral", "R-B-" + case + subject, "--case", case,
                              "--subject", subject, "--purpose", "employment",
                              "--consent", "G-1"), "CONSENT_BOUND")
        assert a["code"] == 506


def test_lawful_consent_expired_and_lapsed(timers):
    # README "Lawful by default": "An expired consent is refused with CONSENT_EXPIRED and ends
    # the same way on its own, its referrals LAPSED rather than SUSPENDED"
    b = timers
    wait = b.expiry_ms / 1000.0 - time.time() + 0.3
    if wait > 0:
        time.sleep(wait)
    a = refusal(b.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                       "R-EXP2", "--case", "C-EXP", "--subject", "p-exp", "--purpose",
                       "employment", "--consent", "G-EXP"), "CONSENT_EXPIRED")
    assert a["code"] == 505
    assert wait_for(lambda: b.state("kim.rheine", "R-EXP1") == "LAPSED", timeout=5), \
        b.show("kim.rheine", "R-EXP1")


def test_lawful_subject_report_and_erase(story, demo):
    # README "Lawful by default", Data subject rights: kim subject report (JSON built from the
    # log's metadata, in pages) and kim subject erase (purge our payloads, tell the
    # recipients); the chain still verifies
    receipt(demo.send_json("kim.rheine", consent("C-ER", "G-ER", "p-er", ["jc.rheine"],
                                                 ["employment"])))
    sent = receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine",
                             "--referral", "R-ER", "--case", "C-ER", "--subject", "p-er",
                             "--purpose", "employment", "--consent", "G-ER", "--payload", "-",
                             stdin="erase me"))
    demo.agent.wait_referral("R-ER")
    r = demo.kim("subject", "report", "p-er", cert="kim.rheine")
    assert r.rc == 0, r
    page = r.json()[-1]
    assert page["last"] is True and page["total"] == 1, page
    t = page["transfers"][0]
    assert (t["seq"], t["to"], t["rule"], t["payload"]) == (sent["seq"], "jc.rheine", "P8",
                                                             "kept"), t
    r = demo.kim("subject", "erase", "p-er", cert="kim.rheine")
    assert r.rc == 0 and isinstance(r.one()["seq"], int) and r.one()["msg_id"], r
    page = demo.kim("subject", "report", "p-er", cert="kim.rheine").json()[-1]
    assert page["transfers"][0]["payload"] == "erased", page
    assert wait_for(lambda: [i for i in demo.agent.api("GET", "/v1/inbox?limit=1000")[2]["items"]
                             if i["type"] == "ERASURE"], timeout=5)
    assert broker_files_holding(demo, b"erase me") == []
    r = demo.kim("audit", "verify", "--data", "kim-data")
    assert r.rc == 0 and r.out.startswith("OK: "), r
    r = demo.kim("subject", "report", "p-er", cert="ja.rheine")
    assert r.rc == 1 and "NOT_PARTY" in r.out + r.err, r


def test_lawful_erased_gone_from_the_brokers_data_folder(story, demo):
    # README "Lawful by default": "Erased means gone from the broker's disk: ... no file of
    # the broker's data folder ... holds the payload or its key"; "the ERASURE in their
    # inbox tells" the recipients, who keep their own copies
    receipt(demo.send_json("kim.rheine", consent("C-ER2", "G-ER2", "p-er2", ["jc.rheine"],
                                                 ["employment"])))
    receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                      "R-ER2", "--case", "C-ER2", "--subject", "p-er2", "--purpose",
                      "employment", "--consent", "G-ER2", "--payload", "-",
                      stdin="Erasure-Marker-77"))
    demo.agent.wait_referral("R-ER2")
    r = demo.kim("subject", "erase", "p-er2", cert="kim.rheine")
    if r.rc != 0:
        pytest.fail("erasure refused: %r" % r)
    if not wait_for(lambda: [i for i in demo.agent.api("GET", "/v1/inbox?limit=1000")[2]["items"]
                             if i["type"] == "ERASURE" and i.get("case_id") in (None, "", "C-ER2")],
                    timeout=5):
        pytest.fail("the agent was not told")
    assert broker_files_holding(demo, b"Erasure-Marker-77") == []


# === The closed loop ================================================================

def test_loop_states_sent_to_completed(lab):
    # README "The closed loop": SENT -> DELIVERED (the recipient acked it; the sender gets
    # DELIVERED) -> ACCEPTED -> IN_PROGRESS (STATUS) -> COMPLETED (OUTCOME)
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-L1", "C-L", "loop"))
    assert lab.state("jc.rheine", "R-L1") == "SENT"
    lab.inbox("ja.rheine")
    assert lab.state("jc.rheine", "R-L1") == "DELIVERED"
    told = [d for d in lab.inbox("jc.rheine").json() if d["hdr"]["type"] == "DELIVERED"
            and d["hdr"].get("referral_id") == "R-L1"]
    assert told
    for mtype, args, state in (("ACCEPT", [], "ACCEPTED"),
                               ("STATUS", ["--code", "in_progress"], "IN_PROGRESS"),
                               ("OUTCOME", ["--code", "completed"], "COMPLETED")):
        receipt(lab.send("ja.rheine", "--type", mtype, "--to", "jc.rheine", "--referral", "R-L1",
                         *args))
        assert lab.state("jc.rheine", "R-L1") == state, mtype
    # "logged as a state record for the audit timeline"
    moves = [(x["body"]["from"], x["body"]["to"]) for x in lab.replay("--type", "state")
             if x["body"].get("referral_id") == "R-L1"]
    assert moves == [("SENT", "DELIVERED"), ("DELIVERED", "ACCEPTED"),
                     ("ACCEPTED", "IN_PROGRESS"), ("IN_PROGRESS", "COMPLETED")], moves


def test_loop_other_endings(lab):
    # README "The closed loop": "Or DECLINED, NOT_COMPETENT, FORWARDED (a new linked referral
    # to the named organisation), WITHDRAWN (by the sender) ... Only the recipient answers
    # and only the sender withdraws."
    for ref in ("R-L2", "R-L3", "R-L4", "R-L5"):
        receipt(statute_referral(lab, "jc.rheine", "ja.rheine", ref, "C-L"))
    receipt(lab.send("ja.rheine", "--type", "DECLINE", "--to", "jc.rheine", "--referral", "R-L2",
                     "--code", "capacity"))
    receipt(lab.send("ja.rheine", "--type", "NOT_COMPETENT", "--to", "jc.rheine",
                     "--referral", "R-L3"))
    receipt(lab.send("ja.rheine", "--type", "FORWARD", "--to", "jc.rheine", "--referral", "R-L4",
                     "--org", "soz.rheine", "--purpose", "employment", "--statute", STATUTE,
                     "--msg-id", "R-L4-F"))
    a = refusal(lab.send("ja.rheine", "--type", "WITHDRAW", "--to", "jc.rheine",
                         "--referral", "R-L5"), "BAD_STATE")
    assert "referral R-L5 is SENT" in a["text"] and "the sender may send" in a["text"], a
    receipt(lab.send("jc.rheine", "--type", "WITHDRAW", "--to", "ja.rheine", "--referral", "R-L5"))
    states = {ref: lab.state("jc.rheine", ref) for ref in ("R-L2", "R-L3", "R-L4", "R-L5")}
    assert states == {"R-L2": "DECLINED", "R-L3": "NOT_COMPETENT", "R-L4": "FORWARDED",
                      "R-L5": "WITHDRAWN"}, states
    linked = [x for x in lab.kim("referral", "list", cert="soz.rheine").json()
              if x.get("forwarded_from") == "R-L4"]
    assert linked and linked[0]["sender"] == "ja.rheine" and linked[0]["recipient"] == \
        "soz.rheine", linked


def test_loop_cases_handover_and_close(lab):
    # README "The closed loop", Cases: "The first referral's sender leads the case.
    # HANDOVER_OFFER (lead only, listing the open referrals) and HANDOVER_ACCEPT move the
    # lead and those referrals in one transaction ... CASE_CLOSED tells every participant."
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-H1", "C-H"))
    offer = {"type": "HANDOVER_OFFER", "msg_id": "H-1", "recipient": "soz.rheine",
             "case_id": "C-H", "subject": "p-c-h", "purpose": "case_handover",
             "legal_basis": {"kind": "statute", "citation": STATUTE}, "referrals": ["R-H1"]}
    refusal(lab.send_json("ja.rheine", dict(offer, msg_id="H-0")), "NOT_LEAD")
    receipt(lab.send_json("jc.rheine", offer))
    receipt(lab.send("soz.rheine", "--type", "HANDOVER_ACCEPT", "--to", "jc.rheine", "--case",
                     "C-H", "--ref-msg", "H-1"))
    assert wait_for(lambda: lab.show("ja.rheine", "R-H1").get("sender") == "soz.rheine",
                    timeout=5), lab.show("ja.rheine", "R-H1")
    refusal(lab.send("jc.rheine", "--type", "CASE_CLOSED", "--case", "C-H"), "NOT_LEAD")
    receipt(lab.send("soz.rheine", "--type", "CASE_CLOSED", "--case", "C-H"))
    for org in ("ja.rheine", "jc.rheine"):
        closed = [d for d in lab.inbox(org).json() if d["hdr"]["type"] == "CASE_CLOSED"
                  and d["hdr"].get("case_id") == "C-H"]
        assert closed, org


def test_loop_subscriptions(lab):
    # README "The closed loop", Subscriptions: kim subscribe --case C-1 --types ACCEPT,OUTCOME
    # # {"subscribed":"s-C-1",…}; kim inbox # the events arrive with the mail; kim unsubscribe
    # s-C-1. "Organisations outside a case get none of its events."
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-SB1", "C-SB"))
    receipt(statute_referral(lab, "jc.rheine", "soz.rheine", "R-SB2", "C-SB"))
    lab.inbox("ja.rheine")
    lab.inbox("soz.rheine")
    lab.inbox("aa.rheine")
    r = lab.kim("subscribe", "--case", "C-SB", "--types", "ACCEPT,OUTCOME", cert="ja.rheine")
    assert r.rc == 0 and r.one()["subscribed"] == "s-C-SB", r
    r = lab.kim("subscribe", "--case", "C-SB", "--types", "ACCEPT,OUTCOME", cert="aa.rheine")
    outsider_subscribed = r.rc == 0
    receipt(lab.send("soz.rheine", "--type", "ACCEPT", "--to", "jc.rheine", "--referral", "R-SB2"))
    events = [d for d in lab.kim("inbox", cert="ja.rheine").json()
              if d["hdr"].get("referral_id") == "R-SB2"]
    assert [d["hdr"]["type"] for d in events] == ["ACCEPT"], events
    if outsider_subscribed:
        assert not [d for d in lab.inbox("aa.rheine").json()
                    if d["hdr"].get("referral_id") == "R-SB2"]
    r = lab.kim("unsubscribe", "s-C-SB", cert="ja.rheine")
    assert r.rc == 0 and r.one()["unsubscribed"] == "s-C-SB", r


def test_loop_where_do_my_referrals_stand(lab):
    # README "The closed loop": kim referral list --open / --overdue --org jc.rheine / show;
    # "One JSON line per referral; the broker answers only with referrals the asking
    # organisation sends or receives."
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-W", "C-WH"))
    r = lab.kim("referral", "list", "--open", cert="jc.rheine")
    assert r.rc == 0 and "R-W" in [x["referral_id"] for x in r.json()], r
    assert all(x["state"] in ("SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE")
               for x in r.json()), r
    r = lab.kim("referral", "list", "--overdue", "--org", "ja.rheine", cert="jc.rheine")
    assert r.rc == 0 and all(x["state"] == "OVERDUE" for x in r.json()), r
    assert lab.show("ja.rheine", "R-W")["referral_id"] == "R-W"
    r = lab.kim("referral", "show", "R-W", cert="aa.rheine")
    assert r.rc == 1, r
    assert "R-W" not in lab.kim("referral", "list", cert="aa.rheine").out


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


def test_loop_deadlines_overdue_then_expired(timers):
    # README "The closed loop", Deadlines: "A referral's deadline ... passes unanswered: it
    # turns OVERDUE and both sides get a REMINDER. Still unanswered lifecycle/expire_days
    # later, it turns EXPIRED and the sender gets an EXPIRED. The timers are in the store and
    # survive restarts." (the broker was restarted after the referral, before its deadline)
    b = timers
    assert wait_for(lambda: b.state("jc.rheine", "R-OD") in ("OVERDUE", "EXPIRED"), timeout=8)
    assert wait_for(lambda: b.state("jc.rheine", "R-OD") == "EXPIRED", timeout=8)
    moves = [(x["body"]["from"], x["body"]["to"]) for x in b.replay("--type", "state")
             if x["body"].get("referral_id") == "R-OD"]
    assert ("SENT", "OVERDUE") in moves and ("OVERDUE", "EXPIRED") in moves, moves
    kinds_jc = {d["hdr"]["type"] for d in timer_mail(b, "jc.rheine")
                if d["hdr"].get("referral_id") == "R-OD"}
    kinds_ja = {d["hdr"]["type"] for d in timer_mail(b, "ja.rheine")
                if d["hdr"].get("referral_id") == "R-OD"}
    assert {"REMINDER", "EXPIRED"} <= kinds_jc, kinds_jc
    assert "REMINDER" in kinds_ja and "EXPIRED" not in kinds_ja, kinds_ja


# === Audit: verify and replay the log =============================================

VERIFY_OK = re.compile(r"^OK: records 1\.\.(\d+) verified \((\d+) records, (\d+) checkpoints "
                       r"signed by key ([0-9a-f]+)…?\); sealed up to the last record$")


def sealed_to(b, data="kim-data"):
    """The seq up to which `kim audit verify --data` says the log is sealed."""
    out = b.kim("audit", "verify", "--data", data).out
    if "sealed up to the last record" in out:
        return float("inf")
    m = re.search(r"sealed up to seq (\d+)", out)
    return int(m.group(1)) if m else 0


def test_audit_verify_output_and_checkpoint_file(lab):
    # README "Audit": "OK: records 1..N verified (N records, K checkpoints signed by key
    # 9f3c…)..."; a checkpoint every checkpoint_seconds when records were added; "The latest
    # checkpoint is also kept in kim-data/audit.checkpoint"
    sent = receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-AV", "C-AV"))
    assert wait_for(lambda: sealed_to(lab) >= sent["seq"], timeout=6, step=0.3)
    r = lab.kim("audit", "verify", "--data", "kim-data")
    m = re.match(r"OK: records 1\.\.(\d+) verified \((\d+) records, (\d+) checkpoints "
                 r"signed by key ([0-9a-f]+)…?\); ", r.out)
    assert r.rc == 0 and m and m.group(1) == m.group(2) and int(m.group(3)) >= 1, r
    assert os.path.exists(os.path.join(lab.data, "audit.checkpoint"))


def test_audit_verify_sealed_up_to_the_last_record(tmp_root):
    # README "Audit": "OK: records 1..20412 verified (20412 records, 3 checkpoints signed by
    # key 9f3c…); sealed up to the last record"
    b = Broker(os.path.join(tmp_root, "sealed"), LAB_ORGS[1:3],
               sections={"audit": {"checkpoint_seconds": 1}})
    b.start()
    try:
        sent = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-SE", "C-SE"))
        if not wait_for(lambda: sealed_to(b) >= sent["seq"], timeout=6, step=0.3):
            pytest.fail("no checkpoint within 6 s")
        time.sleep(1.5)          # quiet: checkpoint_seconds passes again without a record
        r = b.kim("audit", "verify", "--data", "kim-data")
    finally:
        b.finish()
    assert r.rc == 0, r
    assert VERIFY_OK.match(r.out.strip()), r.out


def test_audit_replay_export_case_online(story, demo):
    # README "Audit": replay --case C-1 --since 2026-01-01; export > log.jsonl; verify
    # --from-export log.jsonl --sign-key kim-data/keys/broker.sign.pub; audit case C-1
    r = demo.sh("%s audit replay --data kim-data --case C-1 --since 2026-01-01\n" % KIM)
    assert r.rc == 0 and r.json(), r
    assert all(x["body"].get("case_id") == "C-1" for x in r.json()), r
    r = demo.sh("%s audit export --data kim-data > log.jsonl\n" % KIM)
    assert r.rc == 0, r
    r = demo.sh("%s audit verify --from-export log.jsonl --sign-key "
                "kim-data/keys/broker.sign.pub\n" % KIM)
    assert r.rc == 0 and r.out.startswith("OK: records 1.."), r
    r = demo.sh("%s audit case C-1 --data kim-data\n" % KIM)
    assert r.rc == 0 and "R-1" in r.out and "ACCEPTED" in r.out, r
    # "The same commands work online through the broker for organisations with the auditor
    # role (--cert, as for kim inbox; --sign-key for verify)"; every read logged as
    # audit_read; agencies refused
    r = demo.kim("audit", "replay", "--case", "C-1", cert="dsb.steinfurt")
    assert r.rc == 0 and r.json(), r
    r = demo.kim("audit", "verify", "--sign-key", "kim-data/keys/broker.sign.pub",
                 cert="dsb.steinfurt")
    assert r.rc == 0 and r.out.startswith("OK: "), r
    r = demo.kim("audit", "replay", "--case", "C-1", cert="kim.rheine")
    assert r.rc != 0 and "FORBIDDEN" in r.out + r.err, r
    r = demo.kim("audit", "replay", "--type", "audit_read", cert="dsb.steinfurt")
    reads = r.json()
    assert r.rc == 0 and reads and all(x["kind"] == "audit_read" for x in reads), r
    assert reads[-1]["body"]["reader"] == "dsb.steinfurt"   # logged before its first record
    assert any(x["body"]["reader"] == "kim.rheine" for x in reads)


def test_audit_altered_record_and_cut_tail(tmp_root):
    # README "Audit": "An altered, removed, reordered or forged record is named by its
    # sequence number (exit 1): FAILED at seq 4117: hash mismatch: record 4117 was altered,
    # or records before it were removed or reordered"; "The latest checkpoint is also kept in
    # kim-data/audit.checkpoint, so a log whose tail was cut off no longer matches it."
    b = Broker(os.path.join(tmp_root, "tamper"), LAB_ORGS[1:3],
               sections={"audit": {"checkpoint_seconds": 1}})
    b.start()
    try:
        marked = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-T1", "C-T", None,
                                          "--note", "NOTEMARKQX"))
        assert wait_for(lambda: sealed_to(b) >= marked["seq"], timeout=6, step=0.3)
        b.stop()
        early = os.path.join(tmp_root, "tamper-early")
        shutil.copytree(b.data, early)
        b.start()
        later = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-T2", "C-T"))
        assert wait_for(lambda: sealed_to(b) >= later["seq"], timeout=6, step=0.3)
    finally:
        b.finish()
    # README "Audit": "An auditor verifies a copy of the data folder"
    r = run([KIM, "audit", "verify", "--data", early])
    assert r.rc == 0 and r.out.startswith("OK: records 1.."), r
    r = run([KIM, "audit", "replay", "--data", early, "--org", "ja.rheine"])
    assert r.rc == 0 and r.json() and all("ja.rheine" in json.dumps(x["body"])
                                          for x in r.json()), r
    # a cut tail: the early store with the later checkpoint
    shutil.copy(os.path.join(b.data, "audit.checkpoint"), os.path.join(early, "audit.checkpoint"))
    r = run([KIM, "audit", "verify", "--data", early])
    assert r.rc == 1 and "FAILED" in r.out + r.err, r
    # an altered record
    altered = os.path.join(tmp_root, "tamper-altered")
    shutil.copytree(b.data, altered)
    store = os.path.join(altered, "store", "data.mdb")
    if not os.path.exists(store):
        store = [os.path.join(base, f) for base, _, files in os.walk(altered) for f in files
                 if f == "data.mdb" and "keys" not in base][0]
    with open(store, "rb") as f:
        data = f.read()
    assert b"NOTEMARKQX" in data
    with open(store, "wb") as f:
        f.write(data.replace(b"NOTEMARKQX", b"NOTEMARKQY"))
    r = run([KIM, "audit", "verify", "--data", altered])
    n = marked["seq"]
    assert r.rc == 1, r
    assert ("FAILED at seq %d: hash mismatch: record %d was altered, or records before it were "
            "removed or reordered" % (n, n)) in r.out + r.err, r


def test_audit_trace_single_log(story, demo):
    # README "Audit", Across districts: `kim audit trace MSG_ID` ... "says so, and exits 1,
    # when ... the message is in no log"
    r = demo.kim("audit", "trace", "no-such-message", "--data", "kim-data", "--name",
                 "broker.steinfurt")
    assert r.rc == 1 and "NOT FOUND" in r.out, r
    msg_id = receipt(story["referral"])["msg_id"]
    r = demo.kim("audit", "trace", msg_id, "--data", "kim-data", "--name", "broker.steinfurt")
    assert r.rc == 0 and re.search(r"^OK: 1 cop", r.out, re.M), r
    assert "broker.steinfurt" in r.out and "REFERRAL" in r.out
    # "--json gives the same as one document"
    r = demo.kim("audit", "trace", msg_id, "--data", "kim-data", "--name", "broker.steinfurt",
                 "--json")
    assert r.rc == 0 and json.loads(r.out)["ok"] is True, r


# === Python client ===================================================================

def test_python_examples_send_referral_and_follow_case(story, demo):
    # README "Python client": the two examples, run as printed (endpoint and paths
    # substituted; keys/ is the demo's key folder). With the shipped policy the consent
    # G-42-1 must exist first: recorded as "Your first referral" does it.
    if not os.path.exists(os.path.join(demo.root, "keys")):
        os.symlink(demo.keys, os.path.join(demo.root, "keys"))
    with open(os.path.join(demo.root, "details.txt"), "w") as f:
        f.write("needs a job search course\n")
    receipt(demo.send_json("kim.rheine", consent("C-42", "G-42-1", "p-3f9a1c", ["jc.rheine"],
                                                 ["employment"])))
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    env.pop("PYTHONPATH", None)
    send = subprocess.Popen(
        [os.path.join(EXAMPLES, "send_referral.py"), "--endpoint", demo.endpoint,
         "--broker-cert", "kim-data/keys/broker.cert", "--cert", "keys/kim.rheine.cert_secret",
         "--to", "jc.rheine", "--referral", "R-17", "--case", "C-42", "--subject", "p-3f9a1c",
         "--purpose", "employment", "--consent", "G-42-1", "--payload", "details.txt",
         "--wait", "60"], cwd=demo.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        first = json.loads(send.stdout.readline())
        assert set(first) == {"receipt", "msg_id", "dup"} and first["dup"] is False, first
        item = demo.agent.wait_referral("R-17")
        one = demo.agent.api("GET", "/v1/inbox/%d" % item["seq"])[2]
        assert one["payload"] == "needs a job search course\n"     # sealed, opened by the agent
        status, _, _ = demo.agent.api("POST", "/v1/referrals/R-17/answer",
                                      {"answer": "accept", "msg_id": "JC-R-17-1"})
        assert status == 202
        out, err = send.communicate(timeout=30)
    finally:
        if send.poll() is None:
            send.kill()
            send.communicate()
    assert send.returncode == 0, err
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["answer"] == "ACCEPT", out
    follow = subprocess.Popen(
        [os.path.join(EXAMPLES, "follow_case.py"), "--endpoint", demo.endpoint,
         "--broker-cert", "kim-data/keys/broker.cert", "--cert", "keys/kim.rheine.cert_secret",
         "--case", "C-42"], cwd=demo.root, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # as from a terminal: Ctrl-C interrupts (a background job's shell would ignore SIGINT)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        while True:
            line = follow.stdout.readline()
            assert line, follow.stderr.read() if follow.poll() is not None else "eof"
            lines.append(json.loads(line))
            if "subscribed" in lines[-1]:
                break
        assert {"referral": "R-17", "state": "ACCEPTED", "sender": "kim.rheine",
                "recipient": "jc.rheine"} in lines, lines
        assert lines[-1]["subscribed"] == "s-C-42", lines
        status, _, _ = demo.agent.api("POST", "/v1/referrals/R-17/answer",
                                      {"answer": "status", "code": "in_progress",
                                       "msg_id": "JC-R-17-2"})
        assert status == 202
        event = json.loads(follow.stdout.readline())
        assert event["type"] == "STATUS" and event["referral_id"] == "R-17", event
        follow.send_signal(signal.SIGINT)       # "runs until interrupted"
        try:
            follow.wait(15)
        except subprocess.TimeoutExpired:
            follow.send_signal(signal.SIGABRT)  # faulthandler: where it hangs
    finally:
        if follow.poll() is None:
            time.sleep(1)
            follow.kill()
        _, err = follow.communicate()
    assert follow.returncode == 0, err


def test_python_send_many_and_version_1(story, demo):
    # README "Python client": send_many returns per message in order its RECEIPT or its
    # refusal (a kim.Rejected, returned); kim.Client(..., versions=(1,)) insists on version 1
    script = """
import json, kim
def hdr(i, consent):
    return {"type": "REFERRAL", "recipient": "jc.rheine", "referral_id": "R-PY" + str(i),
            "case_id": "C-1", "subject": "p-7f3a", "purpose": "employment",
            "legal_basis": {"kind": "consent", "consent_id": consent}}
out = []
for versions, base in (((1, 2), 0), ((1,), 10)):
    with kim.Client(%r, "kim-data/keys/broker.cert", %r, versions=versions) as c:
        res = c.send_many([(hdr(base + 1, "G-1"), b"a"), (hdr(base + 2, "G-NONE"), b"b"),
                           (hdr(base + 3, "G-1"), b"c")])
        out.append([r.reason if isinstance(r, kim.Rejected) else r["seq"] for r in res]
                   + [c.version])
print(json.dumps(out))
""" % (demo.endpoint, demo.cert("kim.rheine"))
    r = run([sys.executable, "-c", script], cwd=demo.root, env={"PYTHONPATH": PYDIR})
    assert r.rc == 0, r
    got = json.loads(r.lines()[-1])
    for res in got:
        assert isinstance(res[0], int) and res[1] == "CONSENT_UNKNOWN" and isinstance(res[2], int)
        assert res[0] < res[2]
    # "The client speaks protocol version 2 by default (it offers versions 1 and 2; the
    # broker chooses)"; versions=(1,) insists on version 1
    assert [res[3] for res in got] == [2, 1], got


def test_python_independent_log_verifier(story, demo):
    # README "Python client": "tests/python/kim_verify.py DATA_DIR is an independent verifier
    # of the audit log (hash chain and checkpoint signatures, with python3-lmdb and
    # python3-nacl)"
    pytest.importorskip("lmdb")
    r = run([sys.executable, os.path.join(ROOT, "tests", "python", "kim_verify.py"), demo.data])
    assert r.rc == 0, r
