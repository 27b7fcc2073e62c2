"""A kim-agent process for tests, configured as docs/agent.md ("Setting it
up") and the sample deploy/agent.cfg describe: a ZPL file with the sections
agent, broker, http (port 0 and a port_file, so each agent gets a free port
from the kernel), a token file of mode 0600 with one "name token" line per
client system, and the store in a temporary folder. Talks to the agent's
HTTP API with http.client only."""
import http.client
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time

from kim.testing import ChildProcess

START_WAIT = 20.0       # s an ASan-built agent may take to serve and connect


def zpl(sections):
    """ZPL text of {section: {key: value}}; strings are quoted, None drops a key."""
    lines = []
    for name, keys in sections.items():
        lines.append(name)
        for key, value in keys.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, str):
                value = '"%s"' % value
            lines.append("    %s = %s" % (key, value))
    return "\n".join(lines) + "\n"


def write_secret(path, text, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class Reply:
    """An HTTP answer: status, headers (lower-case names), raw body, json (or None)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError):
            self.json = None

    def __repr__(self):
        return "<%d %s>" % (self.status, self.body[:400])


class AgentProc(ChildProcess):
    """kim-agent for `org` against `broker` (a kim.testing.TestBroker, or None
    with `endpoint`/`key_file` given in sections["broker"]). `sections`
    overrides or adds config keys by section (None removes one)."""

    def __init__(self, agent_bin, broker, org, sections=None, tokens=None, env=None):
        self.agent_bin = agent_bin
        self.org = org
        self.folder = tempfile.mkdtemp(prefix="kim-agentspec-")
        self.data = os.path.join(self.folder, "data")
        self.config = os.path.join(self.folder, "agent.cfg")
        self.port_file = os.path.join(self.folder, "http.port")
        self.log_path = os.path.join(self.folder, "agent.log")
        self.tokens = tokens or {"case_system": secrets.token_hex(32)}
        self.token = next(iter(self.tokens.values()))
        self.tokens_path = write_secret(
            os.path.join(self.folder, "agent.tokens"),
            "".join("%s %s\n" % item for item in self.tokens.items()))
        self.env = dict(os.environ, **(env or {}))
        self.process = None
        self.port = None
        self.sections = {
            "agent": {"org": org, "data": self.data,
                      "cert": broker.cert_secret(org) if broker else None, "verbose": 1},
            "broker": {"endpoint": broker.endpoint if broker else None,
                       "key_file": broker.broker_cert if broker else None,
                       "timeout_ms": 2000},
            "http": {"bind": "127.0.0.1", "port": 0, "port_file": self.port_file,
                     "tokens": self.tokens_path},
        }
        for name, keys in (sections or {}).items():
            self.sections.setdefault(name, {}).update(keys)
        self.write_config()

    def write_config(self):
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(zpl(self.sections))

    def run(self, *args, stdin=None, timeout=30):
        """Runs the binary once (e.g. --check); returns (rc, stdout + stderr)."""
        p = subprocess.run([self.agent_bin] + list(args), input=stdin, capture_output=True,
                           timeout=timeout, env=self.env)
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")

    def spawn(self):
        """Starts the process and returns at once (the log goes to log_path)."""
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([self.agent_bin, "--config", self.config],
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        env=self.env)
        return self

    def start(self, connected=True, timeout=START_WAIT):
        """Starts the agent; waits until it serves (and, with `connected`, until
        GET /v1/status says the broker session is open)."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("kim-agent exited with %d: %s" % (
                    self.process.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("kim-agent did not come up: %s" % self.log_tail())
            if self.port is None:
                try:
                    with open(self.port_file, encoding="ascii") as f:
                        text = f.read().strip()
                    self.port = int(text) if text else None
                except (OSError, ValueError):
                    pass
            if self.port is not None:
                try:
                    r = self.call("GET", "/v1/status")
                    if r.status == 200 and (r.json["connected"] or not connected):
                        return self
                except OSError:
                    pass
            time.sleep(0.05)

    def call(self, method, path, body=None, token=None, headers=None, timeout=10.0):
        """One request. `body`: a dict/list (sent as JSON), bytes or str;
        token=False sends no Authorization header."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = {}
        if token is not False:
            hdrs["Authorization"] = "Bearer %s" % (token or self.token)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        elif isinstance(body, str):
            body = body.encode("utf-8")
        hdrs.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                         resp.read())
        finally:
            conn.close()

    def wait(self, path, pred, timeout=5.0):
        """Polls GET `path` until pred(json) holds; returns the last Reply."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.call("GET", path)
            if r.status == 200 and pred(r.json):
                return r
            if time.monotonic() > deadline:
                return r
            time.sleep(0.05)

    def log_tail(self, lines=30):
        return ChildProcess.log_tail(self, lines)

    def log_text(self):
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=20.0):
        """SIGTERM and wait; returns the exit code (None when not running)."""
        rc = ChildProcess.stop(self, timeout)
        self.port = None
        return rc

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
