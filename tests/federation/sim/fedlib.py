"""Broker folders, configs and processes for the federation harnesses.

Shared by fedsim.py (54 districts on one machine) and linkcost.py (what
an idle link costs a broker). Only Debian's python3-zmq, -msgpack, -nacl
and the kim package in agents/python are used.

A district's folder holds its broker's config (kim.cfg), its data folder
(data/, where kim-broker makes its keys on first start), the key pairs of
its offices (keys/) and the broker's log (broker.log).
"""
import atexit
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "agents", "python"))

import zmq.utils.z85                    # noqa: E402

from kim.certs import load_cert, write_cert     # noqa: E402
from kim.testing import terminate               # noqa: E402

#   Every transfer passes, its legal basis unchecked: the harnesses test
#   transport, not the law. The broker warns when it loads this policy.
TEST_POLICY = """#   TEST-ONLY policy of tests/federation/sim: every transfer passes and
#   its legal basis is NOT checked. Never use it in a real broker.
policy
    checks = "REFERRAL, FORWARD, HANDOVER_OFFER"
rules
    test_allow_all
        law = "none: test-only policy"
        from = *
        to = *
        decision = allow
        basis = unchecked
        categories = "art9, sgb8_s65, stgb203, residence_status, contact"
"""


#   Brokers this process started: none outlives it, also when it fails
_STARTED = []


def _kill_started():
    for broker in _STARTED:
        if broker.running():
            broker.kill()


atexit.register(_kill_started)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def find_binary(name, given=None):
    """The program: as given, from the environment (KIM_BROKER_BIN, KIM_BIN),
    or from a build folder of this tree, Release first (figures of memory and
    CPU mean little from a sanitizer build)."""
    if given:
        return os.path.abspath(given)
    env = {"kim-broker": "KIM_BROKER_BIN", "kim": "KIM_BIN"}[name]
    if os.environ.get(env):
        return os.environ[env]
    sub = {"kim-broker": "broker", "kim": "agents/cli"}[name]
    for build in ("release", "test", "debug"):
        path = os.path.join(ROOT, "build", build, sub, name)
        if os.access(path, os.X_OK):
            return path
    raise SystemExit("no %s found: build the tree or pass its path" % name)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    """Resident set size of a process, KiB (0 when it is gone)."""
    try:
        with open("/proc/%d/status" % pid, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    """User plus system CPU time a process has used, seconds."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Broker:
    """One district's broker: its folder, config and process.

    name     the broker's name (broker/name). WELCOME carries it as an org id,
             so it has the form type.place: "broker.coesfeld"
    offices  {"kim.coesfeld": "agency", "dsb.coesfeld": "auditor", ...}
    """

    def __init__(self, binary, root, name, offices, extra=""):
        self.binary = binary
        self.name = name
        self.folder = os.path.join(root, name)
        self.data = os.path.join(self.folder, "data")
        self.keys = os.path.join(self.folder, "keys")
        self.config = os.path.join(self.folder, "kim.cfg")
        self.policy = os.path.join(self.folder, "policy.cfg")
        self.log_path = os.path.join(self.folder, "broker.log")
        self.ipc = "ipc://%s/kim.sock" % self.folder
        self.port = free_port()
        self.tcp = "tcp://127.0.0.1:%d" % self.port
        self.offices = dict(offices)
        self.extra = extra
        self.process = None
        self.peers = []                 # other Broker objects, once keys exist
        self.starts = 0
        self.powercut = None            # (preload library, kim-powercut): see cut_power
        os.makedirs(self.data, exist_ok=True)
        os.makedirs(self.keys, exist_ok=True)
        with open(self.policy, "w", encoding="utf-8") as f:
            f.write(TEST_POLICY)
        self.office_keys = {org: write_cert(os.path.join(self.keys, org), org)
                            for org in self.offices}

    #   --- keys the broker made -------------------------------------------------

    @property
    def broker_cert(self):
        return os.path.join(self.data, "keys", "broker.cert")

    @property
    def sign_pub_path(self):
        return os.path.join(self.data, "keys", "broker.sign.pub")

    def public_key(self):
        return load_cert(self.broker_cert)[0]

    def sign_key(self):
        """The broker's Ed25519 public key in Z85, as the registry writes sign keys
        (broker.sign.pub holds it in hex)."""
        with open(self.sign_pub_path, encoding="ascii") as f:
            return zmq.utils.z85.encode(bytes.fromhex(f.readline().strip())).decode()

    def cert_secret(self, org):
        return os.path.join(self.keys, org + ".cert_secret")

    #   --- config ---------------------------------------------------------------

    def write_config(self, peers=True):
        """The broker's ZPL config; with `peers`, a peers section naming every
        broker in self.peers (their keys must exist by then)."""
        lines = ["broker", "    name = %s" % self.name, "    data = \"%s\"" % self.data,
                 "    bind = \"%s, %s\"" % (self.ipc, self.tcp)]
        lines += [line for line in self.extra.splitlines() if line.strip()]
        lines += ["policy", "    file = \"%s\"" % self.policy, "orgs"]
        for org, role in self.offices.items():
            lines += ["    %s" % org, "        name = \"%s (%s)\"" % (org, self.name),
                      "        role = %s" % role, "        public_body = 1",
                      "        public_key = \"%s\"" % self.office_keys[org]]
        if peers and self.peers:
            lines.append("peers")
            for peer in self.peers:
                lines += ["    %s" % peer.name,
                          "        endpoint = \"%s\"" % peer.tcp,
                          "        public_key = \"%s\"" % peer.public_key(),
                          "        sign_key = \"%s\"" % peer.sign_key()]
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    #   --- process --------------------------------------------------------------

    def start(self):
        """Starts kim-broker; does not wait (see wait_ready)."""
        log = open(self.log_path, "ab")
        env = None
        if self.powercut:
            #   The library records the writes no flush has covered yet; it is
            #   built without sanitizers, whose runtime wants to come first.
            env = dict(os.environ, LD_PRELOAD=self.powercut[0], KIM_POWERCUT_DIR=self.data)
            asan = env.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = asan + (":" if asan else "") + "verify_asan_link_order=0"
        self.process = subprocess.Popen([self.binary, "--config", self.config],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
        log.close()
        self.starts += 1
        if self not in _STARTED:
            _STARTED.append(self)

    def wait_ready(self, timeout=60.0):
        """Waits until the broker's keys and ipc socket exist; raises if it exits.
        Polls: the broker says nothing else when it is ready."""
        deadline = time.monotonic() + timeout
        socket_path = self.ipc[len("ipc://"):]
        while not (os.path.exists(self.broker_cert) and os.path.exists(socket_path)):
            if self.process.poll() is not None:
                raise RuntimeError("%s: kim-broker exited with %d: %s" % (
                    self.name, self.process.returncode, self.complaint()))
            if time.monotonic() > deadline:
                raise RuntimeError("%s: kim-broker did not start: %s" % (
                    self.name, self.log_tail(5)))
            time.sleep(0.02)

    def running(self):
        return self.process is not None and self.process.poll() is None

    def pid(self):
        return self.process.pid if self.running() else 0

    def kill(self):
        """SIGKILL, as a crash or power loss would stop it."""
        if self.running():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._unlink_socket()

    def wait_unflushed(self, timeout):
        """With the power-cut library loaded: waits until the store holds writes
        no flush has covered yet (its undo file is not empty), so that a kill
        lands where a cut can take something back. True if it came to that.
        Polls: the window lasts a commit, some milliseconds."""
        undo = os.path.join(self.data, "store", "data.mdb.undo")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.path.getsize(undo) > 0:
                    return True
            except OSError:
                pass
            time.sleep(0.0002)
        return False

    def cut_power(self, worst, seed):
        """After kill(): takes back the writes to the store that no flush covered
        (tests/fault/powercut), every one when `worst`, else pages at random.
        Returns (pages set back, kim-powercut's line); raises if the cut fails."""
        out = subprocess.run([self.powercut[1], "--seed", str(seed)]
                             + (["--worst"] if worst else []) + [self.data],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError("%s: kim-powercut failed: %s" % (self.name, out.stderr.strip()))
        #   "... B of P pages set back"
        words = out.stdout.split()
        return int(words[words.index("pages") - 3]), out.stdout.strip()

    def stop(self, timeout=30.0):
        """SIGTERM and wait; SIGKILL after `timeout`. Returns the exit code."""
        if self.process is None:
            return None
        rc = terminate(self.process, timeout)
        self._unlink_socket()
        return rc

    def _unlink_socket(self):
        #   A killed broker leaves its ipc file; wait_ready must not take it for
        #   the next run's
        try:
            os.unlink(self.ipc[len("ipc://"):])
        except OSError:
            pass

    def complaint(self):
        """The last line of the broker's log that says what it refused or
        failed at (a config error is printed without logfmt)."""
        lines = self.log_tail(40).splitlines()
        for line in reversed(lines):
            if "level=error" in line or line.startswith("kim-broker:"):
                return line.strip()
        return lines[-1].strip() if lines else "no log"

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""
