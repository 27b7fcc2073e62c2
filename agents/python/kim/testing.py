"""A throw-away kim broker for tests and examples.

Starts the real `kim-broker` binary on an ipc:// endpoint in a temporary
folder, with a registry of test organisations whose key files it writes
(zcert, as `kim keygen` does), and stops it again. Not for production.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time


from .certs import write_cert, write_sign_key


def _items(keys, depth):
    """ZPL lines of a section's keys; a dict value is a subsection of its own
    ({"peers": {"broker.far": {"endpoint": '"tcp://..."'}}})."""
    lines = []
    for key, value in keys.items():
        if isinstance(value, dict):
            lines.append("    " * depth + key)
            lines += _items(value, depth + 1)
        else:
            lines.append("    " * depth + "%s = %s" % (key, value))
    return lines


def terminate(process, timeout, sig=signal.SIGTERM):
    """`sig` (SIGTERM) to a running Popen, SIGKILL after `timeout` s; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ChildProcess:
    """A program the tests run, with its output in `log_path`: `process` (a
    Popen while it runs) and `_log` (the open log file) are the subclass's."""

    process = None
    _log = None
    log_path = None

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout=60.0):
        """SIGTERM and wait; returns the exit code (None when not running)."""
        if self.process is None:
            return None
        rc, self.process = terminate(self.process, timeout), None
        self._log.close()
        return rc


class TestBroker(ChildProcess):
    """orgs: {"jc.rheine": "agency", "dsb.steinfurt": "auditor", ...}; `signing`
    lists organisations that register an Ed25519 sign_key. `sections` adds
    config keys by section: {"broker": {"sessions_per_org": 2},
    "lifecycle": {"deadline_seconds": 1}}, a dict value a subsection (a peer
    under "peers"); `audit` is sections["audit"]."""

    __test__ = False        # not a pytest test class

    def __init__(self, broker_bin, policy, orgs, signing=(), audit=None, folder=None,
                 sections=None):
        self.broker_bin = broker_bin
        self.policy = os.path.abspath(policy)
        self.orgs = dict(orgs)
        self.signing = set(signing)
        self.sections = {name: dict(keys) for name, keys in (sections or {}).items()}
        if audit:
            self.sections.setdefault("audit", {}).update(audit)
        self.folder = folder or tempfile.mkdtemp(prefix="kim-py-")
        self._own_folder = folder is None
        self.data = os.path.join(self.folder, "data")
        self.keys = os.path.join(self.folder, "keys")
        self.endpoint = "ipc://%s/kim.sock" % self.folder
        self.config = os.path.join(self.folder, "kim.cfg")
        self.log_path = os.path.join(self.folder, "broker.log")
        self.process = None
        os.makedirs(self.data, exist_ok=True)
        os.makedirs(self.keys, exist_ok=True)
        self._write_config()

    @property
    def broker_cert(self):
        return os.path.join(self.data, "keys", "broker.cert")

    def cert_secret(self, org):
        return os.path.join(self.keys, org + ".cert_secret")

    def _write_config(self):
        lines = ["broker", "    name = kim.test", "    data = \"%s\"" % self.data,
                 "    bind = \"%s\"" % self.endpoint]
        lines += _items(self.sections.get("broker", {}), 1)
        lines += ["policy", "    file = \"%s\"" % self.policy]
        for name, keys in self.sections.items():
            if name != "broker":
                lines.append(name)
                lines += _items(keys, 1)
        lines.append("orgs")
        for org, role in self.orgs.items():
            public = write_cert(os.path.join(self.keys, org), org)
            lines += ["    %s" % org, "        name = \"Test %s\"" % org,
                      "        public_body = 1", "        role = %s" % role,
                      "        public_key = \"%s\"" % public]
            if org in self.signing:
                lines.append("        sign_key = \"%s\"" % write_sign_key(
                    os.path.join(self.keys, org)))
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=60.0):
        """Starts the broker and waits until its CURVE key exists and it accepts
        connections (polls, no fixed sleep)."""
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([self.broker_bin, "--config", self.config],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        socket_path = self.endpoint[len("ipc://"):]
        while not (os.path.exists(self.broker_cert) and os.path.exists(socket_path)):
            if self.process.poll() is not None:
                raise RuntimeError("kim-broker exited with %d: %s" % (
                    self.process.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("kim-broker did not start: %s" % self.log_tail())
            time.sleep(0.05)
        return self

    def cleanup(self):
        self.stop()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self):
        """Stops and cleans up; raises RuntimeError with the log's tail when the
        broker did not exit 0 (a test's broker must end cleanly)."""
        rc = self.stop()
        log = self.log_tail()
        self.cleanup()
        if rc != 0:
            raise RuntimeError("kim-broker exited with %s: %s" % (rc, log))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
