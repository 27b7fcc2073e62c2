"""Configuration files, brokers and probes for the test_config_*_spec.py files.

A broker is kim.testing.TestBroker on a kim.cfg of the test's own (base_config: the
organisations and sections given, keys then set, dropped or added by editing its text),
or kim-broker started on a file TestBroker did not write (RawBroker). A Lab holds the
brokers and clients of one test and stops and closes them after it. The broker is read
from outside only: --check and a refused start, its log in logfmt (ops §1), the log line
of a reload after SIGHUP, its metrics endpoint (ops §4).

Binaries: KIM_BROKER_BIN, KIM_CLI_BIN (default build/test/...). Every wait is bounded;
sleeps are polls."""
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import kim
from conftest import ROOT, _program
from kim.certs import write_cert, write_sign_key
from kim.testing import TestBroker, terminate

BROKER = _program("KIM_BROKER_BIN", "broker/kim-broker")
CLI = _program("KIM_CLI_BIN", "agents/cli/kim")
POLICY = os.environ.get("KIM_POLICY_FILE") or os.path.join(ROOT, "deploy", "policy.cfg")

JC, SOZ, AA, DSB, OPS = "jc.rheine", "soz.rheine", "aa.rheine", "dsb.steinfurt", "ops.steinfurt"
ORGS = {JC: "agency", SOZ: "agency", AA: "agency", DSB: "auditor", OPS: "operator"}
WAIT = 5.0
DAY_MS = 86400 * 1000
LEVELS = ("error", "warning", "notice", "info", "debug")     # ops §1 "Log lines"


def now_ms():
    return int(time.time() * 1000)


_ids = iter(range(1, 1 << 30))


def uid(tag):
    return "%s-%x-%d" % (tag, os.getpid(), next(_ids))


def until(predicate, timeout=WAIT, step=0.05):
    """Polls `predicate` until it returns something true; returns that (or the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_busy(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as servers do
    try:
        s.bind(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def standalone(number, text):
    """Whether `number` appears in `text` as a number of its own."""
    return re.search(r"(?<![\d.])%d(?![\d.])" % number, text) is not None


#   --- configuration files -------------------------------------------------------------

def base_config(folder=None, orgs=None, sections=None):
    """A TestBroker (not started) whose kim.cfg has `orgs` and `sections`; its text is
    b.config. TestBroker writes broker/name, data and bind, policy/file and the orgs."""
    return TestBroker(BROKER, POLICY, ORGS if orgs is None else orgs, folder=folder,
                      sections=sections or {})


def set_key(text, section, key, value):
    """The config text with `section/key = value` (replaced if the section has it, else
    added as the section's first key; a section the text lacks is added before orgs)."""
    lines = text.split("\n")
    if section in lines:
        start = lines.index(section)
        end = start + 1
        while end < len(lines) and lines[end].startswith("    "):
            if lines[end].strip().split(" = ")[0] == key and lines[end].startswith("    " + key):
                lines[end] = "    %s = %s" % (key, value)
                return "\n".join(lines)
            end += 1
        lines.insert(start + 1, "    %s = %s" % (key, value))
        return "\n".join(lines)
    at = lines.index("orgs")
    return "\n".join(lines[:at] + [section, "    %s = %s" % (key, value)] + lines[at:])


def drop_key(text, section, key):
    lines = text.split("\n")
    start = lines.index(section)
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        if lines[end].startswith("    %s = " % key):
            del lines[end]
            return "\n".join(lines)
        end += 1
    raise KeyError("%s/%s" % (section, key))


def org_add_line(text, org, line):
    """The config text with `line` added to the orgs entry of `org`."""
    return text.replace("    %s\n        name = " % org,
                        "    %s\n        %s\n        name = " % (org, line), 1)


def peer_section(folder, name="broker.far", **override):
    """A peers entry for a broker that is not there (an ipc socket nobody binds)."""
    public = write_cert(os.path.join(folder, name), name)
    sign = write_sign_key(os.path.join(folder, name))
    entry = {"endpoint": '"ipc://%s/nowhere-%s.sock"' % (folder, name),
             "public_key": '"%s"' % public, "sign_key": '"%s"' % sign}
    entry.update(override)
    return {name: {k: v for k, v in entry.items() if v is not None}}


def check(text, folder):
    """`kim-broker --check --config FILE` of the text: (rc, stdout, stderr, path)."""
    path = os.path.join(folder, "check.cfg")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    p = subprocess.run([BROKER, "--check", "--config", path], capture_output=True,
                       text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr, path


def start_refused(config, timeout=20, cwd=None):
    """Starts kim-broker on `config`, expecting it to exit by itself: (rc, its output)."""
    try:
        p = subprocess.run([BROKER, "--config", config], capture_output=True, text=True,
                           timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail("kim-broker served on %s instead of refusing to start" % config)
    return p.returncode, p.stdout + p.stderr


class RawBroker:
    """kim-broker started on a config file of the test's own (not TestBroker's)."""

    def __init__(self, config, endpoint, broker_cert, log_path, cwd=None, args=()):
        self.config, self.endpoint, self.broker_cert = config, endpoint, broker_cert
        self.log_path, self.cwd, self.args = log_path, cwd, list(args)
        self.process = None

    def start(self, timeout=30):
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([BROKER, "--config", self.config] + self.args,
                                        cwd=self.cwd, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        ipc = self.endpoint[len("ipc://"):] if self.endpoint.startswith("ipc://") else None

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError("kim-broker exited %d: %s" % (self.process.returncode,
                                                                  read(self.log_path)[-2000:]))
            if not os.path.exists(self.broker_cert):
                return False
            return os.path.exists(ipc) if ipc else "serving on" in read(self.log_path)
        assert until(ready, timeout), "kim-broker did not start: %s" % read(self.log_path)
        return self

    def stop(self):
        if self.process is None:
            return None
        rc = terminate(self.process, 30)
        self.process = None
        self._log.close()
        return rc


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Lab:
    """Brokers and clients of one test, stopped and closed after it; a broker must exit 0
    on SIGTERM (kim-broker(8) EXIT STATUS: 0 on a clean stop)."""

    def __init__(self):
        self.brokers = []
        self.clients = []
        self.raw = []

    def broker(self, orgs=None, sections=None, edit=None, start=True):
        b = base_config(orgs=orgs, sections=sections)
        if edit:
            with open(b.config, encoding="utf-8") as f:
                text = edit(f.read())
            with open(b.config, "w", encoding="utf-8") as f:
                f.write(text)
        self.brokers.append(b)
        return b.start() if start else b

    def raw_broker(self, *args, **kw):
        r = RawBroker(*args, **kw)
        self.raw.append(r)
        return r.start()

    def client(self, b, org, connect=True, **options):
        options.setdefault("timeout", WAIT)
        c = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(org) if hasattr(
            b, "cert_secret") else options.pop("cert"), **options)
        self.clients.append(c)
        if connect:
            try:
                c.connect()
            except kim.KimError:
                #   No session: a BYE would wait for a connection that never comes
                if c._sock is not None:
                    c._sock.close(linger=0)
                    c._sock = None
                if c._ctx is not None:
                    c._ctx.term()
                    c._ctx = None
                raise
        return c

    def close(self):
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        bad = []
        for r in self.raw:
            rc = r.stop()
            if rc not in (0, None):
                bad.append("%s exited %s: %s" % (r.config, rc, read(r.log_path)[-1500:]))
        for b in self.brokers:
            rc = b.stop()
            if rc not in (0, None):
                bad.append("kim-broker exited %s: %s" % (rc, b.log_tail()))
            b.cleanup()
        assert not bad, bad


@pytest.fixture
def lab():
    lab = Lab()
    yield lab
    lab.close()


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


def log_of(b):
    return read(b.log_path)


def log_lines(b):
    return [l for l in log_of(b).split("\n") if l]


def sighup(b, pattern=r"reload of |reload refused"):
    """SIGHUP (kim-broker(8) SIGNALS) and wait for the log line that says how it went (the
    documents fix no wording: the pattern is what this broker writes, used to wait only)."""
    before = len(re.findall(pattern, log_of(b)))
    b.process.send_signal(signal.SIGHUP)
    assert until(lambda: len(re.findall(pattern, log_of(b))) > before), log_of(b)[-2000:]
    return [l for l in log_lines(b) if re.search(pattern, l)][-1]


def rewrite(b, edit):
    with open(b.config, encoding="utf-8") as f:
        text = f.read()
    with open(b.config, "w", encoding="utf-8") as f:
        f.write(edit(text))
    return text


def send(c, hdr, payload=b"", seal=False):
    """A RECEIPT, or the Rejected."""
    try:
        return c.send(hdr, payload, seal=seal)
    except kim.Rejected as e:
        return e


def reason(answer):
    return answer.reason if isinstance(answer, kim.Rejected) else answer.get("cmd")


def _open_queries(auditor, count):
    """QUERYs with window 1 (each stays open after its first RECORD); the answers."""
    ids = [uid("q") for _ in range(count)]
    for q in ids:
        auditor._send_cmd({"cmd": "QUERY", "query_id": q, "window": 1})
    answers = {}

    def collect():
        cmd, _ = auditor._recv_cmd(0.2)
        if cmd is not None:
            key = cmd.get("query_id") or cmd.get("msg_id")
            answers.setdefault(key, cmd)
        return len(answers) >= count
    until(collect, WAIT, step=0)
    return [answers.get(q) for q in ids]


#   --- logfmt (ops §1 "Log lines are events in logfmt, one per line, on stderr") ------

_LOGFMT_PAIR = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "=]+)(?: |$)')


def logfmt(line):
    """The fields of a logfmt line, or None when it is not one."""
    fields, at = {}, 0
    while at < len(line):
        m = _LOGFMT_PAIR.match(line, at)
        if not m:
            return None
        fields[m.group(1)] = m.group(2)
        at = m.end()
    return fields or None


def is_event(line):
    f = logfmt(line)
    return bool(f) and list(f)[:3] == ["ts", "level", "prog"] \
        and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", f["ts"]) is not None \
        and f["level"] in LEVELS and f["prog"] == "kim-broker" and "msg" in f


#   --- metrics (ops §4) -------------------------------------------------------------------

def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def parse_metrics(text):
    """({series: value}, {name: type})"""
    values, types = {}, {}
    for line in text.split("\n"):
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values, types


def series_of(values, name):
    """{labels-dict-as-tuple: value} of the series of metric `name`."""
    out = {}
    for series, value in values.items():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})?", series)
        if m and m.group(1) == name:
            labels = tuple(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out[labels] = value
    return out


def metric(port, series):
    """The value of one series, None when it is not served (or nothing serves yet)."""
    try:
        return parse_metrics(scrape(port))[0].get(series)
    except (urllib.error.URLError, ConnectionError):
        return None


def until_metric(port, series, low, high=float("inf"), timeout=WAIT):
    got = until(lambda: (lambda v: v is not None and low <= v <= high)(metric(port, series)),
                timeout)
    assert got, "%s not in [%s, %s]: %s" % (series, low, high, metric(port, series))

