"""An outside check of kim-agent(8) and of the shipped sample deploy/agent.cfg.

Written from those documents alone (and, where the man page sends the reader
there, docs/agent.md and kim.cfg(5); kim-broker(8), kim(1) and README.md only to
run a broker beside the agent), as a municipal IT administrator reads them, and
run against the real programs: KIM_AGENT_BIN, KIM_BROKER_BIN, KIM_CLI_BIN
(default /tmp/kim-spec/...). No source was read. Every expectation names the
page and section it comes from; where the program does otherwise the test keeps
the document's word and is marked xfail(strict=True) with the difference.

Every program run is also checked for sanitizer reports (the binaries are built
with AddressSanitizer): a report fails the test that caused it.
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

AGENT = os.environ.get("KIM_AGENT_BIN") or "/tmp/kim-spec/kim-agent"
BROKER = os.environ.get("KIM_BROKER_BIN") or "/tmp/kim-spec/kim-broker"
CLI = os.environ.get("KIM_CLI_BIN") or "/tmp/kim-spec/kim"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
POLICY = os.path.join(ROOT, "deploy", "policy.cfg")
SAMPLE = os.path.join(ROOT, "deploy", "agent.cfg")
START_WAIT = 30.0                       # s: an ASan build on a busy 2-core machine
SANITIZER = re.compile(r"ERROR: \w*Sanitizer|SUMMARY: \w*Sanitizer|runtime error:")
VALID_UNTIL = 1893456000000             # 2030-01-01, as in docs/agent.md

pytestmark = pytest.mark.skipif(
    not all(os.access(p, os.X_OK) for p in (AGENT, BROKER, CLI)),
    reason="kim-agent, kim-broker or kim not built")


# ----------------------------------------------------------------- helpers

def clean(text, what="output"):
    """No sanitizer report in a program's output."""
    m = SANITIZER.search(text or "")
    assert m is None, "sanitizer report in %s:\n%s" % (what, text[max(0, m.start() - 200):][:4000])


def run(args, stdin=None, cwd=None, timeout=60):
    """Runs a program to its end; returns (rc, stdout, stderr) and checks for sanitizer reports."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    p = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, cwd=cwd)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    clean(out + err, " ".join(map(str, args)))
    return p.returncode, out, err


def run_bounded(args, limit=4.0, stdin=b""):
    """Runs a program that should exit at once; one that is still running after
    `limit` s is stopped and reported as rc None."""
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(stdin, timeout=limit)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        rc = None
    text = (out + err).decode("utf-8", "replace")
    clean(text, " ".join(args))
    return rc, text


def poll(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.05)


def write_file(path, text, mode=0o600):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def zpl(sections):
    """ZPL (agent.cfg header: 4-space indent, "name = value", values quoted)."""
    lines = []
    for name, keys in sections.items():
        lines.append(name)
        for key, value in keys.items():
            if value is None:
                continue
            lines.append('    %s = "%s"' % (key, value) if isinstance(value, str)
                         else "    %s = %s" % (key, int(value)))
    return "\n".join(lines) + "\n"


def loads(raw):
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def http_call(port, method, path, body=None, token=None, headers=None, tls=False, timeout=15):
    """One request; returns (status, lower-case headers, body bytes, json or None)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                       context=ssl._create_unverified_context()) if tls \
        else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = "Bearer " + token
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        raw = r.read()
        heads = [(k.lower(), v) for k, v in r.getheaders()]
    finally:
        conn.close()
    return r.status, heads, raw, loads(raw)


def announce(port, length, token):
    """POST /v1/messages announcing `length` bytes but sending none; returns (status, json)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(("POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                   % (token, length)).encode())
        data = b""
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            if sep and m and len(body) >= int(m.group(1)):
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else None), loads(data.partition(b"\r\n\r\n")[2])


# ----------------------------------------------------------------- the world

class Keys:
    """Key pairs made with `kim keygen` (kim(1), COMMANDS keygen); soz.rheine signs."""

    def __init__(self, folder):
        self.dir = os.path.join(folder, "keys")
        made = [json.loads(run([CLI, "keygen", org, "--dir", self.dir] + extra)[1])
                for org, extra in [("jc.rheine", []), ("kim.rheine", []), ("soz.rheine", []),
                                   ("soz.rheine", ["--sign"])]]
        self.public = {k["name"]: k["public_key"] for k in made if "public_key" in k}
        self.sign = {k["name"]: k["sign_key"] for k in made if "sign_key" in k}

    def secret(self, org):
        return os.path.join(self.dir, org + ".cert_secret")


class Broker:
    """A kim-broker with a config written per kim.cfg(5): jc.rheine, kim.rheine and
    soz.rheine (which signs, orgs/<id>/sign_key) and the shipped policy."""

    def __init__(self, folder, keys):
        self.dir = tempfile.mkdtemp(prefix="b-", dir=folder)
        self.data = os.path.join(self.dir, "data")
        self.endpoint = "ipc://%s/broker.ipc" % self.dir
        self.broker_cert = os.path.join(self.data, "keys", "broker.cert")
        self.config = os.path.join(self.dir, "kim.cfg")
        self.log = os.path.join(self.dir, "broker.log")
        self.keys = keys
        self.process = None
        lines = ["broker", "    name = broker.test", '    data = "%s"' % self.data,
                 '    bind = "%s"' % self.endpoint, "policy", '    file = "%s"' % POLICY, "orgs"]
        for org, public in keys.public.items():
            lines += ["    " + org, '        name = "%s"' % org, "        public_body = 1",
                      "        role = agency", '        public_key = "%s"' % public]
            if org in keys.sign:
                lines.append('        sign_key = "%s"' % keys.sign[org])
        write_file(self.config, "\n".join(lines) + "\n", 0o644)

    def start(self):
        size = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.process = subprocess.Popen([BROKER, "--config", self.config],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

        def up():
            assert self.process.poll() is None, "broker exited: " + self.text()[-2000:]
            return "serving on" in self.text()[size:]
        poll(up, START_WAIT, "the broker to serve")
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=30) == 0
        self.process = None
        clean(self.text(), "broker log")

    def text(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def cli(self, args, org, stdin=None):
        return run([CLI] + args + ["--endpoint", self.endpoint, "--broker-key", self.broker_cert,
                                   "--cert", self.keys.secret(org)], stdin=stdin)

    def deliver(self, payload, to="jc.rheine", subject="p-7f3a", sender="kim.rheine"):
        """kim.rheine grants a consent and refers to `to` under it (README, "Your
        first referral"); returns the REFERRAL's msg_id and referral_id."""
        n = uuid.uuid4().hex[:10]
        lines = [{"type": "CONSENT_GRANT", "msg_id": "G-msg-" + n, "case_id": "C-" + n,
                  "consent": "G-" + n, "subject": subject, "recipients": [to],
                  "purposes": ["employment"], "valid_until": VALID_UNTIL},
                 {"type": "REFERRAL", "msg_id": "R-msg-" + n, "recipient": to,
                  "referral_id": "R-" + n, "case_id": "C-" + n, "subject": subject,
                  "purpose": "employment",
                  "legal_basis": {"kind": "consent", "consent_id": "G-" + n}, "payload": payload}]
        for line in lines:
            rc, out, err = self.cli(["send", "--json"], sender, json.dumps(line) + "\n")
            assert rc == 0 and '"seq"' in out, out + err
        return "R-msg-" + n, "R-" + n


@pytest.fixture(scope="session")
def world():
    folder = tempfile.mkdtemp(prefix="kim-mansp-")
    keys = Keys(folder)
    broker = Broker(folder, keys).start()
    yield folder, keys, broker
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def keys(world):
    return world[1]


@pytest.fixture
def broker(world):
    return world[2]


@pytest.fixture
def idle_broker(world):
    """A broker of the test's own that has made its keys (kim-broker(8): on its
    first start) and is stopped again: the test starts it when it wants."""
    b = Broker(world[0], world[1]).start()
    b.stop()
    yield b
    b.stop()


class Agent:
    """kim-agent configured as deploy/agent.cfg and docs/agent.md ("Setting it up")
    describe: port 0 with a port_file, a token file of mode 0600."""

    def __init__(self, folder, keys, broker, org="jc.rheine", endpoint=None):
        self.dir = tempfile.mkdtemp(prefix="a-", dir=folder)
        self.config = os.path.join(self.dir, "agent.cfg")
        self.port_file = os.path.join(self.dir, "http.port")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.token = secrets.token_hex(32)
        self.tokens = write_file(os.path.join(self.dir, "agent.tokens"),
                                 "case_system %s\n" % self.token)
        self.process, self.port, self.tls = None, None, False
        self.org = org
        self.sections = {
            "agent": {"org": org, "data": os.path.join(self.dir, "data"),
                      "cert": keys.secret(org if org in keys.public else "jc.rheine")},
            "broker": {"endpoint": endpoint or broker.endpoint, "key_file": broker.broker_cert,
                       "timeout_ms": 1000},
            "http": {"bind": "127.0.0.1", "port": 0, "port_file": self.port_file,
                     "tokens": self.tokens},
        }
        self.write()

    def set(self, section, **keys):
        self.sections.setdefault(section, {}).update(keys)
        return self.write()

    def write(self, text=None):
        write_file(self.config, text if text is not None else zpl(self.sections), 0o644)
        return self

    def broker_z85(self):
        with open(self.sections["broker"]["key_file"]) as f:
            return re.search(r'public-key = "([^"]{40})"', f.read()).group(1)

    def path(self, name):
        return os.path.join(self.dir, name)

    def check(self, *extra):
        rc, out, err = run([AGENT, "--check", "--config", self.config] + list(extra))
        return rc, out + err

    def spawn(self, *extra):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.port = None
        self.process = subprocess.Popen([AGENT, "--config", self.config] + list(extra),
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return self

    def start(self, *extra, connected=True):
        self.spawn(*extra)

        def ready():
            assert self.process.poll() is None, "kim-agent exited %s: %s" % (
                self.process.returncode, self.log()[-2000:])
            if self.port is None:
                try:
                    with open(self.port_file) as f:
                        self.port = int(f.read().strip())
                except (OSError, ValueError):
                    return False
            try:
                st, _, _, js = self.call("GET", "/v1/status")
            except OSError:
                return False
            return st == 200 and (js.get("connected") or not connected)
        poll(ready, START_WAIT, "kim-agent to serve" + (" and connect" if connected else ""))
        return self

    def call(self, method, path, body=None, token=True, headers=None):
        return http_call(self.port, method, path, body,
                         self.token if token is True else token, headers, self.tls)

    def outbox_done(self, msg_id, timeout=20):
        """Waits until the broker receipted or refused msg_id (docs/agent.md, outbox)."""
        def done():
            st, _, _, js = self.call("GET", "/v1/outbox/" + msg_id)
            return js if st == 200 and js.get("status") in ("receipted", "refused") else None
        return poll(done, timeout, "the broker's answer to " + msg_id)

    def delivered(self, msg_id, settled=False):
        """Waits for msg_id in GET /v1/inbox (with `settled`, its signature checked)."""
        def find():
            item = next((i for i in self.call("GET", "/v1/inbox")[3]["items"]
                         if i["msg_id"] == msg_id), None)
            return item if item and not (settled and item["signature"] == "unchecked") else None
        return poll(find, 20, "the delivery of " + msg_id)

    def send_and_stop(self, prefix="JC-"):
        """Posts one message, waits for the broker's answer, stops; returns the msg_id."""
        msg_id = prefix + uuid.uuid4().hex[:8]
        assert self.call("POST", "/v1/messages", message(msg_id))[0] == 202
        self.outbox_done(msg_id)
        assert self.stop() == 0
        return msg_id

    def wait_exit(self, timeout=START_WAIT):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM):
        """Sends `sig` and returns the exit code (None: not started, or still running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if self.wait_exit() is None:
                self.process.kill()
                self.process.wait()
                return None
        return self.process and self.process.returncode

    def status(self):
        try:
            return self.call("GET", "/v1/status")[0]
        except OSError:
            return None

    def offline(self):
        """Points broker/endpoint where no broker listens."""
        return self.set("broker", endpoint="ipc://%s/nobroker.ipc" % self.dir)

    def log(self):
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


@pytest.fixture
def make_agent(world):
    made = []

    def make(org="jc.rheine", broker=None, endpoint=None):
        a = Agent(world[0], world[1], broker or world[2], org, endpoint)
        made.append(a)
        return a
    yield make
    for a in made:
        a.stop()
        clean(a.log(), "kim-agent log")


@pytest.fixture
def agent(make_agent):
    return make_agent()


# ----------------------------------------------------------------- SYNOPSIS and OPTIONS

@pytest.mark.parametrize("option,expect", [
    ("--help", r"(?s)(?=.*--config)(?=.*--check)(?=.*--verbose)(?=.*--add-user)(?=.*--role)"
               r"(?=.*staff)(?=.*readonly)(?=.*--routes)(?=.*--version)(?=.*--help)"),
    ("--version", r"\d+\.\d+"), ("--routes", r"(?m)^(GET|POST) /v1/")])
def test_third_synopsis_form_needs_no_config_and_exits_0(option, expect, tmp_path):
    """kim-agent(8) SYNOPSIS: "kim-agent --routes | --help | --version" (no --config);
    OPTIONS: --help "Print the usage" (the SYNOPSIS' options), --version "Print the
    version", --routes "Print the HTTP routes", each "and exit"; EXIT STATUS: 0."""
    rc, out, err = run([AGENT, option], cwd=str(tmp_path))
    assert rc == 0 and re.search(expect, out + err), out + err


API_ROUTES = [("POST", "/v1/messages"), ("GET", "/v1/inbox"), ("GET", "/v1/inbox/{seq}"),
              ("POST", "/v1/inbox/{seq}/handled"), ("GET", "/v1/referrals"),
              ("POST", "/v1/referrals/{id}/answer"), ("GET", "/v1/outbox/{msg_id}"),
              ("GET", "/v1/cases"), ("GET", "/v1/consents"), ("POST", "/v1/consents"),
              ("POST", "/v1/subjects/{subject}/report"),
              ("POST", "/v1/subjects/{subject}/erasure"), ("GET", "/v1/webhook/dead")]


def routes():
    rc, out, err = run([AGENT, "--routes"])
    assert rc == 0, err
    return [tuple(line.split(None, 1)) for line in out.splitlines() if line.strip()]


def test_routes_lists_every_route_of_the_api_section():
    """kim-agent(8) API: the main routes, all under /v1; "kim-agent --routes lists
    every route"."""
    listed = routes()
    assert listed and all(m in ("GET", "POST", "PUT", "DELETE", "PATCH") and p.startswith("/v1/")
                          for m, p in listed), listed
    shape = {(m, re.sub(r"\{[^}]*\}", "{}", p)) for m, p in listed}
    for method, path in API_ROUTES:
        assert (method, re.sub(r"\{[^}]*\}", "{}", path)) in shape, (method, path)


def test_every_listed_route_needs_a_bearer_token(agent):
    """kim-agent(8) API: "All routes are under /v1 and need Authorization: Bearer TOKEN
    with a token from http/tokens"; "Errors are JSON with kim's reason code and text"."""
    agent.offline().start(connected=False)
    for method, path in routes():
        path = re.sub(r"\{[^}]*\}", "x1", path)
        for token in (None, "f" * 64):
            st, _, _, js = agent.call(method, path, body={} if method == "POST" else None,
                                      token=token)
            assert st == 401, (method, path, st)
            assert isinstance(js, dict) and js.get("error") and js.get("code") and js.get("text")


@pytest.mark.parametrize("args", [
    [], ["--bogus"], ["--config"], ["--check"], ["--verbose"], ["--check", "--verbose"],
    ["--check", "--config", "/nonexistent/agent.cfg"],
    ["--config", "{cfg}", "stray"], ["--config", "{cfg}", "--add-user"],
    ["--config", "{cfg}", "--add-user", "anna"],
    ["--config", "{cfg}", "--add-user", "anna", "--role", "admin"],
    ["--config", "{cfg}", "--role", "staff"],
], ids=["none", "unknown", "config-no-file", "check-no-config", "verbose-no-config",
        "check-verbose-no-config", "config-missing", "stray-argument", "add-user-no-name",
        "add-user-no-role", "bad-role", "role-without-add-user"])
def test_usage_errors_exit_2(args, agent):
    """kim-agent(8) SYNOPSIS (the three forms) and EXIT STATUS: "2 for a usage or
    configuration error"; --check: "2 not" valid (a file that is not there)."""
    agent.offline()
    agent.set("web", users=agent.path("agent.users"))
    rc, text = run_bounded([AGENT] + [a.replace("{cfg}", agent.config) for a in args],
                           stdin=b"a long passphrase\n")
    assert rc == 2, text
    assert not os.path.exists(agent.path("agent.users")) or "anna" not in open(
        agent.path("agent.users")).read()


@pytest.mark.parametrize("twice", ["section", "key"])
def test_a_section_or_key_given_twice_is_a_configuration_error(twice, agent):
    """kim-agent(8) CONFIGURATION: "a section or key given twice is a configuration error
    (exit 2)" (ZPL would read the first and ignore the other)."""
    agent.offline().write()
    with open(agent.config, encoding="utf-8") as f:
        text = f.read()
    assert "\nfolder" not in text and not text.startswith("folder")
    text += ("folder\n    poll_ms = 500\nfolder\n    poll_ms = 600\n" if twice == "section"
             else "folder\n    poll_ms = 500\n    poll_ms = 600\n")
    agent.write(text)
    rc, out = agent.check()
    assert rc == 2 and "twice" in out, out


def test_check_of_a_valid_config_exits_0_without_a_broker(agent):
    """kim-agent(8) OPTIONS --check: validate, then exit: 0 valid (no broker involved);
    SYNOPSIS allows --verbose beside it; deploy/agent.cfg header writes
    "kim-agent --check --config agent.cfg" (options in either order)."""
    agent.offline().write()
    assert agent.check()[0] == 0
    assert agent.check("--verbose")[0] == 0
    assert run([AGENT, "--config", agent.config, "--check"])[0] == 0
    assert not os.path.exists(agent.port_file)


@pytest.mark.parametrize("text,form", [
    ("agent\n\torg = jc.rheine\n", ["--check"]), ('agent\n    org = "open\n', ["--check"]),
    ("agent\n\torg = jc.rheine\n", []),
    ("agent\n\torg = jc.rheine\n", ["--add-user", "anna", "--role", "staff"])],
    ids=["check-tab-indent", "check-unclosed-quote", "start", "add-user"])
def test_a_file_that_is_not_zpl_is_a_clean_configuration_error(text, form, tmp_path):
    """kim-agent(8) OPTIONS --config: "The agent's configuration (ZPL ...)"; deploy/agent.cfg:
    "Indent with 4 spaces"; EXIT STATUS: "2 for a usage or configuration error"."""
    cfg = write_file(str(tmp_path / "bad.cfg"), text, 0o644)
    rc, text = run_bounded([AGENT, "--config", cfg] + form, stdin=b"a long passphrase\n")
    assert rc == 2, text


# ----------------------------------------------------------------- --check: keys, tokens, folders

def tls_pair(folder):
    crt, key = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
    if not os.path.exists(key):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
        os.chmod(key, 0o600)
    return crt, key


_files = iter(range(1000))


def F(text, mode=0o600):
    """A file written into the test's folder when the case is applied."""
    name = "f%d" % next(_files)
    return lambda tmp, agent: write_file(os.path.join(tmp, name), text, mode)


def CERT(mode):
    def make(tmp, agent):
        path = os.path.join(tmp, "copy.cert_secret")
        shutil.copy(agent.sections["agent"]["cert"], path)
        os.chmod(path, mode)
        return path
    return make


def TLS(part, mode=0o600):
    def make(tmp, agent):
        path = tls_pair(tmp)[part]
        os.chmod(path, mode)
        return path
    return make


NONE = lambda tmp, agent: os.path.join(tmp, "none")                      # noqa: E731
DIR = lambda tmp, agent: tmp                                             # noqa: E731
HOOK = "http://127.0.0.1:9/hook"
ANY_TLS = [("http", "bind", "0.0.0.0"), ("http", "tls_cert", TLS(0, 0o644)),
           ("http", "tls_key", TLS(1))]
SECTIONS = ["agent", "broker", "http", "webhook", "folder", "web", "store"]
NUMERIC = ["broker/timeout_ms", "http/port", "http/max_body", "webhook/max_attempts",
           "webhook/backoff_ms", "webhook/backoff_max_ms", "webhook/timeout_ms",
           "folder/poll_ms", "web/max_failures", "web/lockout_s", "store/map_size_mb",
           "agent/verbose", "broker/plaintext", "web/enabled"]

# case: (the exit --check owes, [(section, key, value or maker)], xfail reason or None)
CHECK_CASES = {
    # kim-agent(8) agent/cert "mode 0600"; agent.cfg "the agent refuses a key group or others
    # may read"; --check validates "keys"; sign_key "(optional Ed25519 key)"
    "cert-mode-640": (2, [("agent", "cert", CERT(0o640))]),
    "cert-mode-604": (2, [("agent", "cert", CERT(0o604))]),
    "cert-mode-400": (0, [("agent", "cert", CERT(0o400))]),
    "cert-missing": (2, [("agent", "cert", NONE)]),
    "cert-not-a-certificate": (2, [("agent", "cert", F("not a certificate\n"))]),
    "no-cert": (2, [("agent", "cert", None)]),
    "sign-key-missing": (2, [("agent", "sign_key", NONE)]),
    "org-not-an-id": (2, [("agent", "org", "Not An Id")]),          # kim.cfg(5): type.place
    # --check validates "the files it names" ("folders"), agent/data "the store's folder"
    "data-is-a-file": (2, [("agent", "data", F("x"))]),
    # broker: key_file (or key); deploy/agent.cfg "give one of the two"
    "key-file-missing": (2, [("broker", "key_file", NONE)]),
    "key-file-not-a-certificate": (2, [("broker", "key_file", F("hello\n", 0o644))]),
    "no-broker-key": (2, [("broker", "key_file", None)]),
    "key-not-z85": (2, [("broker", "key_file", None), ("broker", "key", "not-a-key")]),
    # http/tokens "mode 0600"; deploy/agent.cfg "a token of 32..256 characters"
    "token-31": (2, [("http", "tokens", F("a %s\n" % ("t" * 31)))]),
    "token-32": (0, [("http", "tokens", F("a %s\n" % ("t" * 32)))]),
    "token-256": (0, [("http", "tokens", F("a %s\n" % ("t" * 256)))]),
    "token-257": (2, [("http", "tokens", F("a %s\n" % ("t" * 257)))]),
    "token-two": (0, [("http", "tokens", F("a %s\nb %s\n" % ("t" * 40, "u" * 40)))]),
    # tokens: "each name and each token once"
    "token-name-twice": (2, [("http", "tokens", F("a %s\na %s\n" % ("t" * 40, "u" * 40)))]),
    "token-twice": (2, [("http", "tokens", F("a %s\nb %s\n" % ("t" * 40, "t" * 40)))]),
    # broker/endpoint: "tcp://HOST:PORT or ipc://PATH"
    "endpoint-nonsense": (2, [("broker", "endpoint", "nonsense")]),
    "endpoint-port-99999": (2, [("broker", "endpoint", "tcp://127.0.0.1:99999")]),
    "endpoint-no-port": (2, [("broker", "endpoint", "tcp://127.0.0.1")]),
    "endpoint-ipc": (0, [("broker", "endpoint", "ipc:///run/kim/broker.sock")]),
    "token-mode-640": (2, [("http", "tokens", F("a %s\n" % ("t" * 40), 0o640))]),
    "token-empty": (2, [("http", "tokens", F(""))]),
    "tokens-missing": (2, [("http", "tokens", NONE)]),
    # folder: deploy/agent.cfg "Each folder must exist"; --check validates "folders"
    "folder-outbox-missing": (2, [("folder", "outbox", NONE)]),
    "folder-inbox-missing": (2, [("folder", "inbox", NONE)]),
    "folder-outbox-is-a-file": (2, [("folder", "outbox", F("x"))]),
    "folders-exist": (0, [("folder", "outbox", DIR), ("folder", "poll_ms", 100)]),
    # webhook: agent.cfg url "(http:// or https://)", secret "16..256 bytes of text, mode
    # 0600"; docs/agent.md: line ends at the end of the file are not part of the secret
    "webhook-secret-15": (2, [("webhook", "url", HOOK), ("webhook", "secret_file", F("s" * 15))]),
    "webhook-secret-16": (0, [("webhook", "url", HOOK), ("webhook", "secret_file", F("s" * 16))]),
    "webhook-secret-256": (0, [("webhook", "url", HOOK), ("webhook", "secret_file", F("s" * 256))]),
    "webhook-secret-257": (2, [("webhook", "url", HOOK), ("webhook", "secret_file", F("s" * 257))]),
    "webhook-secret-15-newline": (2, [("webhook", "url", HOOK),
                                      ("webhook", "secret_file", F("s" * 15 + "\n\n"))]),
    "webhook-secret-mode-640": (2, [("webhook", "url", HOOK),
                                    ("webhook", "secret_file", F("s" * 40, 0o640))]),
    "webhook-ftp-url": (2, [("webhook", "url", "ftp://127.0.0.1/hook"),
                            ("webhook", "secret_file", F("s" * 40))]),
    "webhook-https-url": (0, [("webhook", "url", "https://127.0.0.1:9/hook"),
                              ("webhook", "secret_file", F("s" * 40))]),
    # web: kim-agent(8) "enabled (0 or 1)", "users (the accounts file, mode 0600)", "lang (de
    # or en)", policy "in deploy/policy.cfg's format"; agent.cfg users "Required with enabled
    # = 1"; docs/agent.md: a policy file "that does not parse stops the agent"
    "web-enabled-2": (2, [("web", "enabled", 2)]),
    "web-enabled-no-users": (2, [("web", "enabled", 1)]),
    "web-enabled-with-users": (0, [("web", "enabled", 1), ("web", "users", F(""))]),
    # web/users: "the accounts file, mode 0600", refused otherwise as http/tokens is
    "web-users-mode-644": (2, [("web", "enabled", 1), ("web", "users", F("", 0o644))]),
    "web-lang-fr": (2, [("web", "lang", "fr")]),
    "web-lang-en": (0, [("web", "lang", "en")]),
    "web-policy-shipped": (0, [("web", "policy", POLICY)]),
    "web-policy-missing": (2, [("web", "policy", NONE)]),
    "web-policy-malformed": (2, [("web", "policy", F("rules [[[\n", 0o644))]),
    # http/bind "loopback by default; any other address needs TLS"; agent.cfg "the key mode 0600"
    "bind-any-without-tls": (2, [("http", "bind", "0.0.0.0")]),
    "tls-both": (0, ANY_TLS),
    "tls-key-mode-644": (2, ANY_TLS[:2] + [("http", "tls_key", TLS(1, 0o644))]),
    "tls-cert-only": (2, ANY_TLS[:2]),
    # --check validates "the files it names": a tls_cert that is no PEM, before a start would
    "tls-cert-not-pem": (2, [ANY_TLS[0], ("http", "tls_cert", F("no PEM\n", 0o644)), ANY_TLS[2]]),
    "port-65536": (2, [("http", "port", 65536)]),
    # deploy/agent.cfg: "Unknown keys are errors, so a misspelt key never falls back"
    "unknown-section": (2, [("extras", "colour", "blue")]),
}
CHECK_CASES.update({"unknown-key-" + s: (2, [(s, "colour", "blue")]) for s in SECTIONS})
CHECK_CASES.update({"junk-" + k: (2, [tuple(k.split("/")) + ("lots",)]) for k in NUMERIC})


def apply(agent, tmp, case):
    for section, key, value in CHECK_CASES[case][1]:
        agent.sections.setdefault(section, {})[key] = \
            value(tmp, agent) if callable(value) else value
    return agent.write()


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=[pytest.mark.xfail(strict=True, reason=v[2])] if len(v) > 2 else [])
    for c, v in CHECK_CASES.items()])
def test_check(case, agent, tmp_path):
    """kim-agent(8) OPTIONS --check: "Validate the configuration and the files it names
    (keys, tokens, folders), then exit: 0 valid, 2 not"; each case's source is noted in
    CHECK_CASES, the valid side of a range beside the invalid one."""
    rc, text = apply(agent, str(tmp_path), case).check()
    assert rc == CHECK_CASES[case][0], text


def test_every_documented_key_is_known(agent, tmp_path):
    """kim-agent(8) CONFIGURATION lists the keys; deploy/agent.cfg: unknown keys are errors,
    so each listed key must be accepted (two files: broker key_file or key)."""
    tmp = str(tmp_path)
    crt, key = tls_pair(tmp)
    users = write_file(os.path.join(tmp, "agent.users"), "")
    hook = write_file(os.path.join(tmp, "hook.secret"), "h" * 32)
    assert run([CLI, "keygen", "jc.rheine", "--sign", "--dir", tmp])[0] == 0
    s = agent.sections
    s["agent"].update(sign_key=os.path.join(tmp, "jc.rheine.sign_secret"), verbose=0)
    s["broker"].update(plaintext=0, timeout_ms=5000)
    s["http"].update(max_body=4194304, tls_cert=crt, tls_key=key)
    s["webhook"] = {"url": "http://127.0.0.1:9/hook", "secret_file": hook, "max_attempts": 10,
                    "backoff_ms": 1000, "backoff_max_ms": 300000, "timeout_ms": 10000}
    s["folder"] = {"outbox": tmp, "inbox": os.path.dirname(tmp), "poll_ms": 500}
    s["web"] = {"enabled": 1, "users": users, "lang": "de", "max_failures": 5, "lockout_s": 900,
                "policy": POLICY}
    s["store"] = {"map_size_mb": 256}
    rc, text = agent.write().check()
    assert rc == 0, text
    s["broker"].update(key_file=None, key=agent.broker_z85())
    rc, text = agent.write().check()
    assert rc == 0, text


def test_sample_config_documents_every_key():
    """kim-agent(8) CONFIGURATION: "the sample ... agent.cfg explains each" key."""
    with open(SAMPLE, encoding="utf-8") as f:
        sample = f.read()
    for key in ["org", "data", "cert", "sign_key", "verbose", "endpoint", "key_file", "key",
                "timeout_ms", "plaintext", "bind", "port", "port_file", "tokens", "max_body",
                "tls_cert", "tls_key", "url", "secret_file", "max_attempts", "backoff_ms",
                "backoff_max_ms", "outbox", "inbox", "poll_ms", "enabled", "users", "lang",
                "max_failures", "lockout_s", "policy", "map_size_mb"]:
        assert re.search(r"^\s*#?\s*%s = " % key, sample, re.M) or "`%s = " % key in sample, key


def test_sample_config_passes_check_once_its_files_exist(tmp_path):
    """deploy/agent.cfg header: "Check a file with: kim-agent --check --config agent.cfg";
    its files made as docs/agent.md "Setting it up" says (kim keygen, a token file 0600)."""
    d = str(tmp_path)
    shutil.copy(SAMPLE, os.path.join(d, "agent.cfg"))
    assert run([CLI, "keygen", "jc.rheine", "--dir", os.path.join(d, "keys")])[0] == 0
    assert run([CLI, "keygen", "broker", "--dir", os.path.join(d, "kim-data", "keys")])[0] == 0
    write_file(os.path.join(d, "agent.tokens"), "case_system %s\n" % secrets.token_hex(32))
    rc, out, err = run([AGENT, "--check", "--config", "agent.cfg"], cwd=d)
    assert rc == 0, out + err
    os.chmod(os.path.join(d, "agent.tokens"), 0o644)       # and it is a real check
    assert run([AGENT, "--check", "--config", "agent.cfg"], cwd=d)[0] == 2


# ----------------------------------------------------------------- --add-user

def users_of(path):
    with open(path, encoding="utf-8") as f:
        return [l.split() for l in f if l.strip() and not l.startswith("#")]


def add_user(agent, name, role, password):
    return run([AGENT, "--config", agent.config, "--add-user", name, "--role", role],
               stdin=password)


def test_add_user_stores_only_an_argon2id_hash(agent):
    """kim-agent(8) OPTIONS --add-user: "the password is read from standard input and only
    its argon2id hash is stored"; deploy/agent.cfg users "(name, role, argon2id hash; mode
    0600)"; running it again "Add or replace"s the account."""
    users = agent.path("agent.users")
    agent.set("web", enabled=1, users=users)
    rc, out, err = add_user(agent, "anna", "staff", "correct horse battery\n")
    assert rc == 0, err
    assert os.stat(users).st_mode & 0o777 == 0o600
    text = open(users).read()
    assert "correct horse" not in text and "$argon2id$" in text
    assert [u[:2] for u in users_of(users)] == [["anna", "staff"]]
    rc, out, err = add_user(agent, "anna", "readonly", "another passphrase\n")
    assert rc == 0, err
    assert [u[:2] for u in users_of(users)] == [["anna", "readonly"]]
    assert add_user(agent, "rolf", "readonly", "rolfs passphrase")[0] == 0
    assert sorted(u[:2] for u in users_of(users)) == [["anna", "readonly"], ["rolf", "readonly"]]


@pytest.mark.parametrize("password,ok", [("123456789", False), ("1234567890", True),
                                         ("p" * 256, True), ("p" * 257, False)])
def test_add_user_password_length(password, ok, agent):
    """docs/agent.md "Web inbox": "the password (10 to 256 characters) is read from stdin";
    kim-agent(8) EXIT STATUS 2 for a usage error."""
    users = agent.path("agent.users")
    agent.set("web", users=users)
    rc, out, err = add_user(agent, "bert", "staff", password + "\n")
    assert (rc == 0) == ok and (ok or rc == 2), (rc, err)
    listed = [u[0] for u in users_of(users)] if os.path.exists(users) else []
    assert ("bert" in listed) == ok, listed


def test_add_user_without_web_users_fails(agent):
    """kim-agent(8) --add-user adds the account "in web/users": without that key there is
    nowhere to write (a configuration error, EXIT STATUS 2)."""
    assert add_user(agent, "anna", "staff", "a long passphrase\n")[0] == 2


# ----------------------------------------------------------------- web page

def web_login(agent, user, password):
    """Signs in on the staff page; True when /ui/inbox then answers 200."""
    st, h, body, _ = agent.call("GET", "/ui/login", token=False)
    assert st == 200, st
    cookies = [v.split(";")[0] for k, v in h if k == "set-cookie"]
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    form = urllib.parse.urlencode({"csrf": csrf, "user": user, "password": password})
    st, h, body, _ = agent.call("POST", "/ui/login", form, token=False, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": "; ".join(cookies),
        "Origin": "http://127.0.0.1:%d" % agent.port})
    cookies += [v.split(";")[0] for k, v in h if k == "set-cookie"]
    st, h, body, _ = agent.call("GET", "/ui/inbox", token=False,
                                headers={"Cookie": "; ".join(cookies)})
    return st == 200


def test_web_page_is_off_unless_enabled(agent):
    """kim-agent(8) DESCRIPTION: "a web page under /ui/ (off unless web/enabled)"."""
    agent.offline().start(connected=False)
    for path in ("/", "/ui/", "/ui/login"):
        for token in (False, True):
            st, h, _, _ = agent.call("GET", path, token=token)
            assert st in (401, 404) and "text/html" not in dict(h).get("content-type", ""), \
                (path, token, st)


@pytest.mark.parametrize("lang", [None, "en"])
def test_web_page_language(lang, agent):
    """kim-agent(8) CONFIGURATION web/lang "(de or en)"; deploy/agent.cfg "lang = de";
    docs/agent.md: "German by default"."""
    web_agent(agent, lang=lang)
    st, _, body, _ = agent.call("GET", "/ui/login", token=False)
    assert st == 200
    assert re.search(rb'<html[^>]*\blang="%s"' % (lang or "de").encode(), body), body[:200]


def web_agent(agent, **web):
    """The agent with web/enabled, web/users and the account anna (--add-user), started."""
    agent.offline().set("web", enabled=1, users=agent.path("agent.users"), **web)
    assert add_user(agent, "anna", "staff", "a long passphrase\n")[0] == 0
    return agent.start(connected=False)


def test_web_sign_in_lockout_and_new_accounts(agent):
    """kim-agent(8) --add-user (password on stdin, as docs/agent.md "printf '%s\\n' ... |");
    web/max_failures "failed sign-ins of one name before a lockout", web/lockout_s;
    docs/agent.md: locked "the right password included"; "the running agent picks up
    changes" of web/users."""
    web_agent(agent, max_failures=2, lockout_s=2)
    assert web_login(agent, "anna", "a long passphrase")
    assert not web_login(agent, "anna", "a wrong passphrase")
    assert not web_login(agent, "anna", "a wrong passphrase")
    assert not web_login(agent, "anna", "a long passphrase")        # locked
    poll(lambda: web_login(agent, "anna", "a long passphrase"), 15, "the lockout to end")
    assert add_user(agent, "rolf", "readonly", "rolfs passphrase\n")[0] == 0
    poll(lambda: web_login(agent, "rolf", "rolfs passphrase"), 10, "rolf's account")


def test_web_address_gets_four_times_as_many(agent):
    """kim-agent(8) web/max_failures: "failed sign-ins of one name before a lockout; an
    address gets four times as many"."""
    web_agent(agent, max_failures=1, lockout_s=600)
    for name in ("b1", "b2", "b3"):
        assert not web_login(agent, name, "a wrong passphrase")
    assert web_login(agent, "anna", "a long passphrase")              # 3 of 4
    for name in ("c1", "c2", "c3", "c4"):
        assert not web_login(agent, name, "a wrong passphrase")
    assert not web_login(agent, "anna", "a long passphrase")          # the address is locked


def test_web_max_failures_defaults_to_5(agent):
    """deploy/agent.cfg "max_failures = 5"; docs/agent.md "web/max_failures (5)"."""
    web_agent(agent)
    for _ in range(4):
        assert not web_login(agent, "anna", "a wrong passphrase")
    assert web_login(agent, "anna", "a long passphrase")              # 4 failures: not yet
    for _ in range(5):
        assert not web_login(agent, "anna", "a wrong passphrase")
    assert not web_login(agent, "anna", "a long passphrase")          # 5: locked


# ----------------------------------------------------------------- running: HTTP side

def test_runs_serves_and_connects(agent):
    """kim-agent(8) SYNOPSIS "kim-agent --config FILE"; deploy/agent.cfg http/port "0 lets
    the kernel choose; port_file then tells which"; broker "The broker's public key: its
    certificate file, or the Z85 text itself as `key = "..."`" (here the text; every other
    test uses the file); docs/agent.md GET /v1/status: organisation, session open."""
    agent.set("broker", key_file=None, key=agent.broker_z85()).start()
    st, _, _, js = agent.call("GET", "/v1/status")
    assert st == 200 and js["org"] == "jc.rheine" and js["connected"] is True
    for path in ("/v1/inbox", "/v1/referrals", "/v1/cases", "/v1/consents", "/v1/webhook/dead"):
        assert agent.call("GET", path)[0] == 200, path
    assert agent.stop() == 0


def test_each_token_of_the_file_works_and_others_do_not(agent):
    """kim-agent(8) CONFIGURATION http/tokens "one "name token" line per client system"; API:
    a token from http/tokens; docs/agent.md Errors: 401 for "a wrong one (FORBIDDEN)"."""
    second = secrets.token_hex(40)
    write_file(agent.tokens, "case_system %s\nfolder_job %s\n" % (agent.token, second))
    agent.offline().start(connected=False)
    assert agent.call("GET", "/v1/inbox")[0] == 200
    assert agent.call("GET", "/v1/inbox", token=second)[0] == 200
    wrong = second[:-1] + ("1" if second[-1] == "0" else "0")
    st, _, _, js = agent.call("GET", "/v1/inbox", token=wrong)
    assert st == 401 and js["error"] == "FORBIDDEN"


def test_errors_are_json_with_reason_code_and_text(agent):
    """kim-agent(8) API: "Errors are JSON with kim's reason code and text"."""
    agent.offline().start(connected=False)
    for method, path, body in [("GET", "/v1/nosuchroute", None), ("GET", "/v1/outbox/none", None),
                               ("POST", "/v1/messages", "not json")]:
        st, _, _, js = agent.call(method, path, body)
        assert st >= 400 and isinstance(js, dict), (path, st)
        assert isinstance(js.get("error"), str) and isinstance(js.get("code"), int)
        assert js.get("text"), js


def message(msg_id, payload="hello", referral="R-x"):
    return {"type": "ACCEPT", "msg_id": msg_id, "recipient": "kim.rheine",
            "referral_id": referral, "payload": payload}


def test_post_messages_is_idempotent_by_msg_id(agent):
    """kim-agent(8) API "POST /v1/messages (send; idempotent by msg_id)"; docs/agent.md:
    202, then 200 with the record it has; the same msg_id with another message is 409."""
    agent.offline().start(connected=False)
    st, _, _, first = agent.call("POST", "/v1/messages", message("JC-1"))
    assert st == 202 and first["status"] == "queued"
    st, _, _, again = agent.call("POST", "/v1/messages", message("JC-1"))
    assert st == 200 and again["msg_id"] == "JC-1"
    assert agent.call("POST", "/v1/messages", message("JC-1", payload="other"))[0] == 409


def test_accepted_message_survives_sigkill(agent):
    """kim-agent(8) DESCRIPTION outbox: "a message the local system hands over is committed
    and synced before the system gets its answer"."""
    agent.offline().start(connected=False)
    assert agent.call("POST", "/v1/messages", message("JC-K9"))[0] == 202
    agent.process.kill()
    agent.process.wait()
    agent.start(connected=False)
    st, _, _, js = agent.call("GET", "/v1/outbox/JC-K9")
    assert st == 200 and js["status"] == "queued"


@pytest.mark.parametrize("limit", [None, 4096])
def test_max_body(limit, agent):
    """kim-agent(8) http/max_body; deploy/agent.cfg "max_body = 4194304"; docs/agent.md
    Errors: 413 "a body larger than http/max_body (refused before it is read when announced)"."""
    agent.offline()
    agent.set("http", max_body=limit).start(connected=False)
    size = limit or 4194304
    st, js = announce(agent.port, size + 1, agent.token)
    assert st == 413 and js["error"] and js["code"] and js["text"], (st, js)
    st, _, _, js = agent.call("POST", "/v1/messages", b"x" * size)
    assert st == 400 and js["error"], st                  # read, and refused as not JSON


def test_store_full_is_503(agent):
    """kim-agent(8) store/map_size_mb; deploy/agent.cfg "the agent refuses new messages (503,
    STORE_FULL) when it is full"."""
    agent.offline()
    agent.set("store", map_size_mb=1).start(connected=False)
    answers = []
    for i in range(12):
        st, _, _, js = agent.call("POST", "/v1/messages", message("JC-F%d" % i, "f" * 200000))
        answers.append(st)
        if st == 503:
            assert js["error"] == "STORE_FULL"
            break
    assert answers[0] == 202 and answers[-1] == 503, answers
    assert agent.call("GET", "/v1/status")[0] == 200          # and it keeps serving


def test_tls_elsewhere_than_loopback(agent, tmp_path):
    """kim-agent(8) http/bind: "any other address needs TLS"; http/tls_cert, http/tls_key."""
    crt, key = tls_pair(str(tmp_path))
    agent.offline()
    agent.set("http", bind="0.0.0.0", tls_cert=crt, tls_key=key)
    agent.tls = True
    agent.start(connected=False)
    assert agent.call("GET", "/v1/status")[0] == 200
    with pytest.raises((http.client.HTTPException, OSError)):
        http_call(agent.port, "GET", "/v1/status", token=agent.token)


def test_defaults_bind_loopback_port_7480(agent):
    """kim-agent(8) http/bind "loopback by default"; deploy/agent.cfg "port = 7480";
    docs/agent.md "The API listens on 127.0.0.1:7480 by default"."""
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", 7480))
    except OSError:
        pytest.skip("port 7480 is in use on this machine")
    finally:
        s.close()
    agent.sections["http"].update(bind=None, port=None, port_file=None)
    agent.offline().spawn()
    agent.port = 7480
    poll(lambda: agent.process.poll() is not None or agent.status() == 200, START_WAIT,
         "the agent on 7480")
    if agent.process.poll() == 1 and "in use" in agent.log():
        pytest.skip("another program took port 7480 meanwhile")
    assert agent.process.poll() is None, agent.log()
    rows = [line.split() for t in ("/proc/net/tcp", "/proc/net/tcp6") for line in open(t)]
    listening = {r[1].split(":")[0] for r in rows if r[3] == "0A" and r[1].endswith(":1D38")}
    assert listening == {"0100007F"}, listening


# ----------------------------------------------------------------- running: broker side

def test_delivery_is_opened_kept_and_acknowledged(agent, broker):
    """kim-agent(8) DESCRIPTION inbox: "a delivery is acknowledged to the broker only once
    it is committed here, its sealed payload opened and the sender's signature checked";
    views of referrals kept current."""
    agent.start()
    msg_id, referral = broker.deliver('{"need":"support"}')
    item = agent.delivered(msg_id)
    st, _, _, one = agent.call("GET", "/v1/inbox/%d" % item["seq"])
    assert st == 200 and one["payload"].startswith('{"need":"support"}')
    assert one["sealed_error"] is False and one["signature"] == "none"
    st, _, _, ref = agent.call("GET", "/v1/referrals")
    mine = [r for r in ref["items"] if r["referral_id"] == referral]
    assert len(mine) == 1 and {"state", "deadline", "overdue"} <= set(mine[0]), mine
    case = one["header"]["case_id"]
    assert case in [c["case_id"] for c in agent.call("GET", "/v1/cases")[3]["items"]]
    assert agent.call("POST", "/v1/inbox/%d/handled" % item["seq"])[0] in (200, 204)
    st, _, _, js = agent.call("GET", "/v1/inbox?handled=false")
    assert msg_id not in [i["msg_id"] for i in js["items"]]
    st, _, _, js = agent.call("POST", "/v1/referrals/%s/answer" % referral,
                              {"answer": "accept", "msg_id": "JC-ACC-" + referral})
    assert st in (200, 202), js
    assert agent.outbox_done("JC-ACC-" + referral)["status"] == "receipted"
    poll(lambda: agent.call("GET", "/v1/referrals/" + referral)[3].get("state") == "ACCEPTED",
         10, "the view to follow the answer")
    assert agent.stop() == 0
    rc, out, err = broker.cli(["inbox", "--idle", "500"], "jc.rheine")
    assert rc == 0 and msg_id not in out, out


def test_signature_of_a_signing_sender_is_checked(agent, broker):
    """kim-agent(8) DESCRIPTION inbox: "the sender's signature checked" (docs/agent.md:
    "signature" is "valid" for a sender that signs, "unchecked" for the moment between the
    ack and the check; soz.rheine signs, kim(1) keygen --sign)."""
    agent.start()
    msg_id, _ = broker.deliver("signed", sender="soz.rheine")
    assert agent.delivered(msg_id, settled=True)["signature"] == "valid"


@pytest.mark.parametrize("signs", [True, False])
def test_sign_key_required_when_registered(signs, make_agent, keys):
    """kim-agent(8) agent/sign_key "(optional Ed25519 key)"; deploy/agent.cfg "required when
    the registry lists a sign_key for the organisation" (soz.rheine has one)."""
    a = make_agent("soz.rheine")
    if signs:
        a.set("agent", sign_key=os.path.join(keys.dir, "soz.rheine.sign_secret"))
    a.start()
    n = uuid.uuid4().hex[:8]
    st, _, _, js = a.call("POST", "/v1/consents", {
        "msg_id": "SOZ-G-" + n, "consent": "G-" + n, "case_id": "C-" + n, "subject": "p-1",
        "recipients": ["jc.rheine"], "purposes": ["employment"], "valid_until": VALID_UNTIL})
    assert st in (200, 202), js
    record = a.outbox_done("SOZ-G-" + n)
    if signs:
        assert record["status"] == "receipted", record
    else:
        assert record["status"] == "refused" and record["error"] == "BAD_SIGNATURE", record


def test_stops_when_the_broker_knows_its_key_as_another(make_agent):
    """deploy/agent.cfg agent/org: "The agent stops if the broker knows its key as another";
    kim-agent(8) EXIT STATUS: not 0 (0 is a clean stop)."""
    a = make_agent("kim.rheine")                      # with jc.rheine's certificate
    a.sections["agent"]["cert"] = a.sections["agent"]["cert"].replace("kim.rheine", "jc.rheine")
    a.write().spawn()
    rc = a.wait_exit()
    assert rc in (1, 2), a.log()[-1500:]


def test_keeps_accepting_while_the_broker_is_away(make_agent, idle_broker):
    """deploy/agent.cfg broker/timeout_ms: "While the broker is away the agent keeps
    accepting messages and tries again with a backoff of up to 5 s"; kim-agent(8) outbox:
    "sent and resent with the same msg_id until the broker receipts or refuses it"."""
    a = make_agent(broker=idle_broker).start(connected=False)
    assert a.call("GET", "/v1/status")[3]["connected"] is False
    assert a.call("POST", "/v1/messages", message("JC-AWAY"))[0] == 202
    idle_broker.start()
    poll(lambda: a.call("GET", "/v1/status")[3]["connected"], 1 + 5 + 10, "the session")
    assert a.outbox_done("JC-AWAY")["status"] in ("receipted", "refused")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_sends_after_next_start(sig, make_agent, idle_broker):
    """kim-agent(8) SIGNALS: "Stop cleanly: what was accepted is in the store and is sent
    after the next start"; EXIT STATUS: "0 after a clean stop"."""
    a = make_agent(broker=idle_broker).start(connected=False)
    assert a.call("POST", "/v1/messages", message("JC-SIG"))[0] == 202
    assert a.stop(sig) == 0
    idle_broker.start()
    a.start()
    assert a.outbox_done("JC-SIG")["status"] in ("receipted", "refused")


def test_sighup_is_ignored(agent):
    """kim-agent(8) SIGNALS: "SIGHUP: ignored; the configuration is read at start only"
    (a stray hang-up, or a reload meant for another service, must not end the agent)."""
    agent.start()
    msg_id = "JC-HUP-" + uuid.uuid4().hex[:8]
    agent.process.send_signal(signal.SIGHUP)
    assert agent.call("POST", "/v1/messages", message(msg_id))[0] == 202
    assert agent.outbox_done(msg_id)["status"] in ("receipted", "refused")
    assert agent.process.poll() is None
    assert agent.stop() == 0


def test_exit_1_when_the_port_is_taken(agent):
    """kim-agent(8) EXIT STATUS: "1 when the agent cannot start"."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        agent.set("http", port=holder.getsockname()[1]).spawn()
        assert agent.wait_exit() == 1, agent.log()[-1500:]
    finally:
        holder.close()


def test_exit_1_when_the_store_fails(agent, tmp_path):
    """kim-agent(8) EXIT STATUS: 1 when "its store fails" (a store file that is not
    one: the configuration itself is valid)."""
    data = tmp_path / "data"
    data.mkdir()
    write_file(str(data / "data.mdb"), "not a store " * 2000, 0o600)
    agent.set("agent", data=str(data)).spawn()
    assert agent.wait_exit() == 1, agent.log()[-1500:]


@pytest.mark.parametrize("case", ["unknown-key-store", "web-policy-malformed"])
def test_exit_2_at_start_for_a_configuration_error(case, agent, tmp_path):
    """kim-agent(8) EXIT STATUS: "2 for a ... configuration error" (also without --check);
    docs/agent.md: a web/policy file "that does not parse stops the agent"."""
    apply(agent, str(tmp_path), case).spawn()
    assert agent.wait_exit() == 2, agent.log()[-1500:]


# ----------------------------------------------------------------- logging

def debug_lines(text, word):
    return [l for l in text.splitlines() if word in l and "level=debug" in l]


@pytest.mark.parametrize("how", ["flag", "config"])
def test_verbose_logs_sent_messages_by_msg_id(how, agent):
    """kim-agent(8) --verbose "Debug logging: one line per message"; agent/verbose (deploy/
    agent.cfg: "Also: kim-agent --verbose")."""
    if how == "config":
        agent.set("agent", verbose=1)
    msg_id = agent.start(*(["--verbose"] if how == "flag" else [])).send_and_stop()
    assert debug_lines(agent.log(), msg_id), agent.log()


def test_no_debug_lines_without_verbose(agent):
    """kim-agent(8) --verbose turns on debug logging; deploy/agent.cfg "verbose = 0"."""
    agent.set("agent", verbose=0).start().send_and_stop()
    assert "level=debug" not in agent.log(), agent.log()


def test_verbose_line_names_both_organisations(agent):
    """kim-agent(8) OPTIONS --verbose: "(msg_id and organisations, never payloads)"."""
    msg_id = agent.start("--verbose").send_and_stop()
    lines = debug_lines(agent.log(), msg_id)
    assert any("jc.rheine" in l and "kim.rheine" in l for l in lines), lines


def test_verbose_logs_received_messages(agent, broker):
    """kim-agent(8) OPTIONS --verbose: one line per message (msg_id and organisations),
    received ones included."""
    agent.start("--verbose")
    msg_id, _ = broker.deliver("x")
    agent.delivered(msg_id)
    assert agent.stop() == 0
    lines = debug_lines(agent.log(), msg_id)
    assert len(lines) == 1 and "jc.rheine" in lines[0] and "kim.rheine" in lines[0], lines


def test_logs_never_hold_payload_contents(agent, broker):
    """kim-agent(8) DESCRIPTION: "Logs name the office and msg_ids, never payload contents";
    --verbose "never payloads"; docs/agent.md Operations: "never payloads, subjects or notes"."""
    marker = "Geheimwort" + uuid.uuid4().hex[:12]
    subject = "p-" + uuid.uuid4().hex[:12]
    agent.start("--verbose")
    msg_id, referral = broker.deliver('{"note":"%s"}' % marker, subject=subject)
    item = agent.delivered(msg_id)
    assert marker in agent.call("GET", "/v1/inbox/%d" % item["seq"])[3]["payload"]
    out = {"type": "REFERRAL", "msg_id": "JC-P-" + marker[-8:], "recipient": "kim.rheine",
           "referral_id": "R-P-" + marker[-8:], "case_id": "C-P", "subject": subject,
           "purpose": "employment", "legal_basis": {"kind": "consent", "consent_id": "G-none"},
           "payload": "out " + marker}
    assert agent.call("POST", "/v1/messages", out)[0] == 202
    agent.outbox_done(out["msg_id"])
    st, _, _, js = agent.call("POST", "/v1/referrals/%s/answer" % referral,
                              {"answer": "accept", "msg_id": "JC-PA-" + marker[-8:]})
    assert st in (200, 202), js
    agent.outbox_done("JC-PA-" + marker[-8:])
    assert agent.stop() == 0
    log = agent.log()
    assert out["msg_id"] in log                              # the log does name messages
    assert marker not in log
    assert subject not in log


# ----------------------------------------------------------------- webhook and folders

@pytest.fixture
def receiver():
    """receiver(status, gate) -> (url, hits): a local system's webhook endpoint that
    answers `status`, after `gate` is set when one is given."""
    servers = []

    def make(status=200, gate=None):
        hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if gate is not None:
                    gate.wait(20)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        servers.append(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        return "http://127.0.0.1:%d/kim/deliveries" % servers[-1].server_address[1], hits
    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def dead_letter(agent, msg_id):
    return poll(lambda: [i for i in agent.call("GET", "/v1/webhook/dead")[3]["items"]
                         if i["msg_id"] == msg_id], 30, "the dead letter of " + msg_id)


def test_webhook_pushes_each_delivery_signed(agent, broker, receiver):
    """kim-agent(8) DESCRIPTION: "webhooks that push each new delivery signed with
    HMAC-SHA256"; webhook/url, webhook/secret_file (docs/agent.md "Webhooks": the headers,
    HMAC over id.timestamp.body, line ends at the end not part of the secret)."""
    url, hits = receiver()
    secret = secrets.token_hex(32)
    agent.set("webhook", url=url,
              secret_file=write_file(agent.path("webhook.secret"), secret + "\n"))
    agent.start()
    msg_id, _ = broker.deliver("webhook body")
    poll(lambda: hits, 20, "the push")
    heads, body = hits[0]
    doc = json.loads(body)
    assert doc["msg_id"] == msg_id and heads["webhook-id"] == str(doc["seq"])
    mac = hmac.new(secret.encode(), ("%s.%s." % (heads["webhook-id"], heads["webhook-timestamp"])
                                     ).encode() + body, hashlib.sha256).digest()
    assert heads["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_webhook_gives_up_after_max_attempts(agent, broker, receiver):
    """deploy/agent.cfg webhook/max_attempts: "Pushes per delivery before it becomes a dead
    letter (GET /v1/webhook/dead)"; backoff_ms, backoff_max_ms."""
    url, hits = receiver(503)
    agent.set("webhook", url=url, secret_file=write_file(agent.path("s"), "k" * 32),
              max_attempts=2, backoff_ms=100, backoff_max_ms=200, timeout_ms=2000)
    agent.start()
    msg_id, _ = broker.deliver("dead letter")
    dead = dead_letter(agent, msg_id)
    assert dead[0]["attempts"] == 2 and len(hits) == 2


def test_webhook_timeout_counts_as_a_failure(agent, broker, receiver):
    """deploy/agent.cfg webhook/timeout_ms: "How long one push may take" (docs/agent.md: no
    answer within it is a failure); max_attempts = 1 makes it a dead letter at once."""
    gate = threading.Event()
    url, hits = receiver(200, gate)
    agent.set("webhook", url=url, secret_file=write_file(agent.path("s"), "k" * 32),
              max_attempts=1, timeout_ms=300)
    agent.start()
    msg_id, _ = broker.deliver("slow receiver")
    try:
        assert dead_letter(agent, msg_id)[0]["attempts"] == 1
    finally:
        gate.set()


def test_folder_bridge(agent, broker, tmp_path):
    """deploy/agent.cfg folder/outbox: NAME.json is moved to accepted/ or refused/ (with
    NAME.error.json) and the answer written as answers/NAME.json; folder/inbox: each delivery
    as SEQ.json (and SEQ.payload); poll_ms."""
    out, inn = tmp_path / "out", tmp_path / "in"
    out.mkdir()
    inn.mkdir()
    agent.set("folder", outbox=str(out), inbox=str(inn), poll_ms=100).start()
    name = "JC-FOLDER-" + uuid.uuid4().hex[:6]
    for n, text in ((name, json.dumps(message(name))), ("BROKEN", "{not json")):
        write_file(str(out / (".%s.tmp" % n)), text, 0o644)
        os.rename(str(out / (".%s.tmp" % n)), str(out / (n + ".json")))
    poll(lambda: (out / "accepted" / (name + ".json")).exists(), 20, "accepted/")
    answer = poll(lambda: (out / "answers" / (name + ".json")).exists() and json.loads(
        (out / "answers" / (name + ".json")).read_text()), 20, "answers/")
    assert answer["status"] in ("receipted", "refused")
    poll(lambda: (out / "refused" / "BROKEN.error.json").exists(), 20, "refused/")
    assert (out / "refused" / "BROKEN.json").exists()
    msg_id, _ = broker.deliver("folder payload")
    def found():
        for f in inn.glob("*.json"):
            doc = json.loads(f.read_text())
            if doc.get("msg_id") == msg_id:
                return f, doc
    f, doc = poll(found, 20, "the delivery file")
    assert f.name == "%d.json" % doc["seq"]
    assert (inn / ("%d.payload" % doc["seq"])).read_bytes() == b"folder payload"


# ----------------------------------------------------------------- FILES and EXAMPLES

def test_service_reads_etc_kim_agents_org_cfg():
    """kim-agent(8) FILES: /etc/kim/agents/ORG.cfg, "read by kim-agent@ORG.service"."""
    unit = os.path.join(ROOT, "deploy", "systemd", "kim-agent@.service")
    with open(unit, encoding="utf-8") as f:
        text = f.read()
    assert re.search(r"^ExecStart=\S*kim-agent .*--config /etc/kim/agents/%i\.cfg", text, re.M)


def test_example_install_as_service_config(agent, tmp_path):
    """kim-agent(8) EXAMPLES: "install -m 0640 -g kim-agent agent.cfg
    /etc/kim/agents/jc.rheine.cfg" (the folder under a temporary root, no group), then the
    agent of jc.rheine runs from that file."""
    target = tmp_path / "etc" / "kim" / "agents" / "jc.rheine.cfg"
    target.parent.mkdir(parents=True)
    rc, out, err = run(["install", "-m", "0640", agent.config, str(target)])
    assert rc == 0, err
    assert run([AGENT, "--check", "--config", str(target)])[0] == 0
    agent.config = str(target)
    agent.start()
    assert agent.call("GET", "/v1/status")[3]["org"] == "jc.rheine"


def test_example_read_its_inbox_with_curl(agent, broker):
    """kim-agent(8) EXAMPLES: curl -H "Authorization: Bearer $TOKEN"
    http://127.0.0.1:7480/v1/inbox (the port this agent was given)."""
    agent.start()
    msg_id, _ = broker.deliver("curl")
    agent.delivered(msg_id)
    rc, out, err = run(["curl", "-s", "-H", "Authorization: Bearer %s" % agent.token,
                        "http://127.0.0.1:%d/v1/inbox" % agent.port])
    assert rc == 0 and msg_id in [i["msg_id"] for i in json.loads(out)["items"]]
    rc, out, err = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        "http://127.0.0.1:%d/v1/inbox" % agent.port])
    assert out == "401"
