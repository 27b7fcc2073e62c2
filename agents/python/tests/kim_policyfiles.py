"""Policy files and brokers for test_policy_spec.py.

A policy file is written from a list of rules (kim-policy(5) FORMAT: ZPL,
4-space indents, a `policy` section with `version` and `checks`, a `rules`
section with one subsection per rule). The broker is kim.testing.TestBroker
with two things more that kim.cfg(5) allows and the policy tests need: some
organisations registered as private carriers (`public_body = 0`), and the
`policy` section written as given (a relative `file`, or no section at all).
"""
import os
import re
import subprocess

from kim.testing import TestBroker

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SHIPPED_POLICY = os.path.join(ROOT, "deploy", "policy.cfg")
CHECKS = "REFERRAL, FORWARD, HANDOVER_OFFER"


def program(env, relative):
    path = os.environ.get(env) or os.path.join(ROOT, "build", "test", relative)
    if not os.access(path, os.X_OK):
        raise RuntimeError("%s: no such program (set %s)" % (path, env))
    return path


def broker_bin():
    return program("KIM_BROKER_BIN", "broker/kim-broker")


def kim_cli():
    """The `kim` tool: KIM_CLI_BIN, else beside KIM_BROKER_BIN, else the build's."""
    broker = os.environ.get("KIM_BROKER_BIN", "/nonexistent/x/kim-broker")
    for path in (os.environ.get("KIM_CLI_BIN"),
                 os.path.join(os.path.dirname(broker), "kim"),
                 os.path.join(os.path.dirname(os.path.dirname(broker)), "agents", "cli", "kim"),
                 os.path.join(ROOT, "build", "test", "agents", "cli", "kim")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _value(v):
    """A ZPL value: quoted unless a plain token (kim.cfg(5): values with
    spaces or commas in double quotes)."""
    v = str(v)
    return v if re.fullmatch(r"[A-Za-z0-9_*.-]+", v) else '"%s"' % v


def policy_text(rules, checks=CHECKS, version=1):
    """rules: [(name, {key: value})] in order -> the text of a policy file."""
    lines = ["#   written by test_policy_spec.py", "policy", "    version = %s" % version]
    if checks is not None:
        lines.append("    checks = %s" % _value(checks))
    lines.append("rules")
    for name, keys in rules:
        lines.append("    " + name)
        for key, value in keys.items():
            lines.append("        %s = %s" % (key, _value(value)))
    return "\n".join(lines) + "\n"


def line_of(text, pattern):
    """1-based number of the first line matching the regex `pattern`."""
    for n, line in enumerate(text.splitlines(), 1):
        if re.search(pattern, line):
            return n
    raise ValueError("no line matches %r" % pattern)


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class PolicyBroker(TestBroker):
    """TestBroker whose `private` organisations are private carriers, `types`
    ({org: agency type}) registers an explicit `type` for some, and whose
    `policy` section is `policy_file` as written (None: no section at all);
    without policy_file it names `policy` (an absolute path) like TestBroker."""

    __test__ = False

    def __init__(self, policy, orgs, private=(), policy_file=False, types=None, **options):
        self.private = set(private)
        self.types = dict(types or {})
        self.policy_file = policy_file
        super().__init__(broker_bin(), policy or SHIPPED_POLICY, orgs, **options)

    def _write_config(self):
        super()._write_config()
        with open(self.config, encoding="utf-8") as f:
            lines = f.read().splitlines()
        out, org = [], None
        for line in lines:
            if re.fullmatch(r"    [a-z0-9_.-]+", line):
                org = line.strip()
            if line.startswith("policy"):
                org = None
            if line.startswith("    file = ") and self.policy_file is not False:
                if self.policy_file is not None:
                    out.append("    file = %s" % _value(self.policy_file))
                continue
            if line == "policy" and self.policy_file is None:
                continue
            if line == "        public_body = 1" and org in self.private:
                line = "        public_body = 0"
            out.append(line)
            if line.startswith("        name = ") and org in self.types:
                out.append("        type = %s" % self.types[org])
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("\n".join(out) + "\n")

    def check(self, timeout=20):
        """`kim-broker --check --config` on this broker's config: (rc, output)."""
        r = subprocess.run([self.broker_bin, "--check", "--config", self.config],
                           capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def start_fails(self, timeout=15):
        """Runs the broker expecting it to refuse to start: (rc, output); rc is
        None when it was still running after `timeout` s (it is then stopped)."""
        try:
            r = subprocess.run([self.broker_bin, "--config", self.config],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"")
            return None, out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        return r.returncode, r.stdout + r.stderr


def parse_rules(path):
    """The `rules` of a policy file as {name: {key: value}} (values unquoted),
    in order: enough of ZPL for the shipped file, to quote its laws and whys."""
    rules, section, rule = {}, None, None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            indent = len(line) - len(line.lstrip(" "))
            text = line.strip()
            if indent == 0:
                section = text
            elif section == "rules" and indent == 4:
                rule = rules.setdefault(text, {})
            elif section == "rules" and indent == 8 and "=" in text:
                key, value = (s.strip() for s in text.split("=", 1))
                if value.startswith('"'):
                    value = value[1:value.index('"', 1)]
                else:
                    value = value.split("#", 1)[0].strip()
                rule[key] = value
    return rules


def set_org_key(config, org, key, value):
    """Sets `key = value` in the registry entry of `org` in a kim.cfg (added
    when absent), leaving everything else, keys included, as it is."""
    with open(config, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("    " + org) + 1
    end = start
    while end < len(lines) and lines[end].startswith("        "):
        end += 1
    for i in range(start, end):
        if lines[i].strip().split(" = ")[0] == key:
            lines[i] = "        %s = %s" % (key, value)
            break
    else:
        lines.insert(start, "        %s = %s" % (key, value))
    with open(config, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def add_org(config, org, role, public_key, **keys):
    """Appends an organisation to the `orgs` section (the last one TestBroker writes)."""
    lines = ["    " + org, '        name = "Test %s"' % org, "        public_body = 1",
             "        role = %s" % role, '        public_key = "%s"' % public_key]
    lines += ["        %s = %s" % (k, v) for k, v in keys.items()]
    with open(config, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
