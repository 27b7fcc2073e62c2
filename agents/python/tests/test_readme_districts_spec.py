"""An outside check of four sections of README.md: "Connecting two districts",
"Concepts", "Layout" and "Running it as a service".

Written from the documents alone (README.md, docs/federation.md, docs/operations.md
section 3, kim.cfg(5) section peers, kim(1), kim-broker(8), deploy/kim.cfg and
deploy/systemd/*.service), never from the C source, and run against the real
programs: two kim-broker processes (Kreis Steinfurt and Kreis Coesfeld) set up
by the README's steps 1-3 as a new operator would, driven with the `kim` tool.
Every expectation cites the section (and the document) it comes from.

Binaries: KIM_BROKER_BIN, KIM_CLI_BIN (defaults under build/test)."""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from kim_readme import public_key

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
BROKER = os.environ.get("KIM_BROKER_BIN") or os.path.join(ROOT, "build/test/broker/kim-broker")
KIM = os.environ.get("KIM_CLI_BIN") or os.path.join(ROOT, "build/test/agents/cli/kim")
POLICY = os.path.join(ROOT, "deploy", "policy.cfg")
DEADLINE = 45.0          # s: generous, a CI run shares the 2 cores
SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                       r"runtime error:|ERROR: .*Sanitizer")
CONSENT_UNTIL = 1893456000000    # as in README "Your first referral"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what, deadline=DEADLINE, step=0.2):
    """Calls what() until it returns something true; returns the last value."""
    end = time.monotonic() + deadline
    while True:
        value = what()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


class District:
    """One district's broker, configured as README "Connecting two districts"
    has an operator do it: its own folder, registry, policy and log."""

    def __init__(self, base, name, orgs):
        self.name = name
        self.folder = os.path.join(base, name)
        os.makedirs(os.path.join(self.folder, "keys"))
        self.port, self.metrics_port = free_port(), free_port()
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.config = os.path.join(self.folder, "kim.cfg")
        self.log_path = os.path.join(self.folder, "broker.log")
        self.orgs = orgs            # {id: role}
        self.revoked = set()
        self.peers = ""
        self.proc = None
        self.crashes = []
        for org in orgs:
            subprocess.run([KIM, "keygen", org, "--dir", self.keys], check=True,
                           capture_output=True, timeout=30)

    keys = property(lambda self: os.path.join(self.folder, "keys"))
    broker_cert = property(lambda self: os.path.join(self.folder, "data", "keys", "broker.cert"))

    def cert(self, org):
        return os.path.join(self.keys, org + ".cert_secret")

    def write_config(self):
        lines = ["broker", "    name = " + self.name, "    data = ./data",
                 '    bind = "%s"' % self.endpoint, "    heartbeat_ms = 1000",
                 "policy", "    file = " + POLICY,
                 "metrics", "    enabled = 1", "    listen = 127.0.0.1",
                 "    port = %d" % self.metrics_port, "    interval_ms = 200", "orgs"]
        for org, role in self.orgs.items():
            lines += ["    " + org, '        name = "%s office"' % org,
                      "        role = " + role,
                      '        public_key = "%s"' % public_key(os.path.join(self.keys, org + ".cert")),
                      "        revoked = %d" % (org in self.revoked)]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n" + self.peers)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def start(self):
        self.write_config()
        self.mark = len(self.log()) if os.path.exists(self.log_path) else 0
        out = open(self.log_path, "a")
        self.proc = subprocess.Popen([BROKER, "--config", self.config], cwd=self.folder,
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()
        assert poll(lambda: "serving on" in self.log()[self.mark:] or self.proc.poll() is not None), \
            self.log()[-3000:]
        assert self.proc.poll() is None, self.log()[-3000:]

    def since_start(self):
        return self.log()[self.mark:]

    def reload(self):
        self.write_config()
        self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "hung (killed)"
        self.proc = None
        bad = SANITIZER.search(self.log())
        if rc != 0 or bad:
            self.crashes.append((rc, self.log()[-4000:]))
        return rc

    def kim(self, org, *args, stdin=None, timeout=30):
        """Runs `kim ARGS` as `org` against this broker; (exit code, JSON lines, stderr)."""
        env = dict(os.environ, KIM_ENDPOINT=self.endpoint, KIM_BROKER_KEY=self.broker_cert,
                   KIM_CERT=self.cert(org))
        r = subprocess.run([KIM] + list(args), input=stdin, env=env, capture_output=True,
                           text=True, timeout=timeout)
        out = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        assert not SANITIZER.search(r.stderr), r.stderr
        return r.returncode, out, r.stderr

    def metrics(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                        timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""

    def metric(self, family, peer):
        """The value of `family` for `peer` (a label naming it), or None."""
        for line in self.metrics().splitlines():
            if line.startswith(family + "{") and '"%s"' % peer in line:
                return float(line.rsplit(None, 1)[1])
        return None


KEYS_LINE = re.compile(r'module=link msg=".*this broker\'s keys for its peers: '
                       r'public_key = \\"([^"\\]{40})\\", sign_key = \\"([^"\\]{40})\\""')


@contextlib.contextmanager
def linked_pair(before_reload=None):
    """Steinfurt and Coesfeld, linked by README "Connecting two districts" steps 1-3."""
    base = tempfile.mkdtemp(prefix="kim-districts-")
    st = District(base, "broker.steinfurt", {"kim.rheine": "agency", "ops.steinfurt": "operator"})
    co = District(base, "broker.coesfeld", {"jc.coesfeld": "agency", "jc.dulmen": "agency",
                                            "ops.coesfeld": "operator"})
    both = (st, co)
    try:
        for d in both:          # step 1: first start; each logs its keys for its peers
            d.start()
        keys = {}
        for d in both:
            found = poll(lambda: KEYS_LINE.search(d.log()))
            assert found, "README step 1: no module=link keys line in\n" + d.log()
            keys[d.name] = found.groups()
        for d, other in ((st, co), (co, st)):   # step 2: a peers section as printed
            d.peers = ("peers\n    %s\n        endpoint = \"%s\"\n        public_key = \"%s\"\n"
                       "        sign_key = \"%s\"\n" % (other.name, other.endpoint,
                                                         *keys[other.name]))
            d.write_config()
        st.keys_logged, co.keys_logged = keys[st.name], keys[co.name]
        if before_reload:
            before_reload(st, co)
        for d in both:          # step 3: `systemctl reload kim-broker` is SIGHUP
            d.mark = len(d.log())
            d.reload()
        yield st, co
    finally:
        for d in both:
            d.stop()
        crashes = st.crashes + co.crashes
        if not crashes:
            shutil.rmtree(base, ignore_errors=True)
        assert not crashes, "a broker did not end cleanly (exit code, log tail): %r" % crashes


@pytest.fixture(scope="module")
def districts():
    with linked_pair() as pair:
        yield pair


def consent(d, org, consent_id, case, subject, recipient):
    line = json.dumps({"type": "CONSENT_GRANT", "case_id": case, "consent": consent_id,
                       "subject": subject, "recipients": [recipient],
                       "purposes": ["employment"], "valid_until": CONSENT_UNTIL})
    rc, out, err = d.kim(org, "send", "--json", stdin=line + "\n")
    assert rc == 0 and out and "seq" in out[0], (rc, out, err)


def referral(d, org, to, ref, case, subject, consent_id, need):
    return d.kim(org, "send", "--type", "REFERRAL", "--to", to, "--referral", ref,
                 "--case", case, "--subject", subject, "--purpose", "employment",
                 "--consent", consent_id, "--payload", "-", stdin=json.dumps({"need": need}))


def inbox_until(d, org, match, count=1, deadline=DEADLINE):
    """Reads (and acks) org's inbox until `count` messages matching have come."""
    got = []

    def more():
        rc, out, err = d.kim(org, "inbox", "--idle", "1500")
        assert rc == 0, (rc, err)
        got.extend(out)
        return len([m for m in got if match(m)]) >= count
    poll(more, deadline, 0.5)
    return [m for m in got if match(m)], got


def hdr(m, key):
    return m.get("hdr", {}).get(key)


# -- Connecting two districts: steps 1-3 ------------------------------------------------------

def test_step1_each_broker_logs_its_two_keys_in_the_peer_config_form(districts):
    """README "Connecting two districts" step 1: the log says `module=link msg="... this
    broker's keys for its peers: public_key = ..., sign_key = ..."`; operations.md section 3:
    in Z85, public_key the one of keys/broker.cert."""
    for d in districts:
        public, sign = d.keys_logged
        assert public == public_key(d.broker_cert)
        assert sign != public and len(sign) == 40


def test_step1_keys_are_printed_at_every_start(districts):
    """README step 1: "printed at every start"; checked by a restart of Coesfeld."""
    st, co = districts
    co.stop()
    co.start()
    found = poll(lambda: KEYS_LINE.search(co.since_start()))
    assert found and found.groups() == co.keys_logged
    assert poll(lambda: "broker.steinfurt up" in co.since_start()), co.since_start()[-2000:]


def test_step3_check_lists_the_peers(districts):
    """README step 3: "`kim-broker --check` lists the peers"."""
    for d, other in zip(districts, reversed(districts)):
        r = subprocess.run([BROKER, "--check", "--config", d.config], cwd=d.folder,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert other.name in r.stdout + r.stderr, r.stdout + r.stderr


def test_step3_reload_brings_the_link_up_and_logs_it(districts):
    """README step 3: after a reload `grep module=link` says
    `msg="broker.coesfeld up (0 messages queued for it)"` (and Coesfeld the same of Steinfurt)."""
    st, co = districts
    for d, other in ((st, co), (co, st)):
        want = 'msg="%s up (0 messages queued for it)"' % other.name
        assert poll(lambda: any("module=link" in line and want in line
                                for line in d.log().splitlines())), d.log()[-3000:]


# -- Connecting two districts: after the steps ------------------------------------------------

def test_directory_lists_the_other_districts_offices_with_home(districts):
    """README: "`kim directory` lists the other district's offices with
    `"home":"broker.coesfeld"`" (each broker publishes its agencies to the other)."""
    st, co = districts

    def entry(d, asker, org):
        rc, out, _ = d.kim(asker, "directory")
        return next((e for e in out if e.get("org") == org), None) if rc == 0 else None
    far = poll(lambda: entry(st, "kim.rheine", "jc.coesfeld"))
    assert far and far.get("home") == "broker.coesfeld", far
    assert far["public_key"] == public_key(os.path.join(co.keys, "jc.coesfeld.cert"))
    back = poll(lambda: entry(co, "jc.coesfeld", "kim.rheine"))
    assert back and back.get("home") == "broker.steinfurt", back
    own = entry(st, "kim.rheine", "kim.rheine")
    assert own and "home" not in own, own
    # an operator is no office: only agencies are published (kim(1) directory: "every agency")
    assert entry(st, "kim.rheine", "ops.coesfeld") is None


def test_send_is_receipted_here_and_delivered_there(districts):
    """README: "A `kim send` to one of them is ... logged, synced and receipted here, and
    waits in the link's mailbox ... until the other broker has ... logged and synced it";
    "A consent given in one district for an office of another goes to that office's broker"."""
    st, co = districts
    consent(st, "kim.rheine", "G-S1", "C-S1", "p-s1", "jc.coesfeld")
    rc, out, err = referral(st, "kim.rheine", "jc.coesfeld", "R-S1", "C-S1", "p-s1", "G-S1",
                            "job search support")
    assert rc == 0 and out and isinstance(out[0].get("seq"), int) and out[0]["dup"] is False, \
        (rc, out, err)
    got, _ = inbox_until(co, "jc.coesfeld", lambda m: hdr(m, "referral_id") == "R-S1")
    assert got, "the referral never reached jc.coesfeld at Coesfeld"
    m = got[0]
    assert hdr(m, "type") == "REFERRAL" and json.loads(m["payload"]) == {"need": "job search support"}
    assert not m.get("sealed_error")


def test_answers_and_delivered_come_back_and_state_agrees(districts):
    """README: "answers, `DELIVERED` and case handovers come back the same way, and
    `kim referral show` gives the same state at both ends"."""
    st, co = districts
    consent(st, "kim.rheine", "G-S2", "C-S2", "p-s2", "jc.coesfeld")
    rc, out, err = referral(st, "kim.rheine", "jc.coesfeld", "R-S2", "C-S2", "p-s2", "G-S2", "x")
    assert rc == 0, (rc, out, err)
    got, _ = inbox_until(co, "jc.coesfeld", lambda m: hdr(m, "referral_id") == "R-S2")
    assert got
    rc, out, err = co.kim("jc.coesfeld", "send", "--type", "ACCEPT", "--to", "kim.rheine",
                          "--referral", "R-S2")
    assert rc == 0 and out and "seq" in out[0], (rc, out, err)
    types = set()

    def back():
        rc, out, _ = st.kim("kim.rheine", "inbox", "--idle", "1500")
        types.update(hdr(m, "type") for m in out if hdr(m, "referral_id") == "R-S2")
        return {"ACCEPT", "DELIVERED"} <= types
    assert poll(back, DEADLINE, 0.5), "kim.rheine got only %s for R-S2" % sorted(types)

    def states():
        a = st.kim("kim.rheine", "referral", "show", "R-S2")
        b = co.kim("jc.coesfeld", "referral", "show", "R-S2")
        if a[0] or b[0] or not a[1] or not b[1]:
            return None
        return (a[1][0], b[1][0]) if a[1][0]["state"] == b[1][0]["state"] == "ACCEPTED" else None
    both = poll(states)
    assert both, (st.kim("kim.rheine", "referral", "show", "R-S2")[1],
                  co.kim("jc.coesfeld", "referral", "show", "R-S2")[1])
    for key in ("sender", "recipient", "case_id", "purpose"):
        assert both[0][key] == both[1][key], (key, both)


def test_a_consent_for_an_office_not_yet_known_is_refused_then_crosses_with_the_data():
    """README: after steps 1-3 "A consent given in one district for an office of another
    goes to that office's broker with the data"; "A `kim send` to one of them is ...
    receipted here, and waits ... until the other broker has ... logged and synced it".
    A fresh pair. Given before step 3's reload, when no directory names jc.coesfeld yet,
    the consent could not go: it is refused (UNKNOWN_RECIPIENT at hdr.recipients[0],
    kim(1) exit 1), not receipted and lost. Given again once the directory lists the
    office, it crosses, and the referral under it is delivered there."""
    early = []

    def give_early(st, co):
        line = json.dumps({"type": "CONSENT_GRANT", "case_id": "C-F", "consent": "G-F",
                           "subject": "p-f", "recipients": ["jc.coesfeld"],
                           "purposes": ["employment"], "valid_until": CONSENT_UNTIL})
        early.append(st.kim("kim.rheine", "send", "--json", stdin=line + "\n"))
    with linked_pair(give_early) as (st, co):
        rc, out, err = early[0]
        assert rc == 1 and out and out[0].get("error") == "UNKNOWN_RECIPIENT" \
            and out[0].get("path") == "hdr.recipients[0]", early
        assert poll(lambda: st.kim("kim.rheine", "directory", "jc.coesfeld")[0] == 0)
        consent(st, "kim.rheine", "G-F", "C-F", "p-f", "jc.coesfeld")
        rc, out, err = referral(st, "kim.rheine", "jc.coesfeld", "R-F", "C-F", "p-f", "G-F", "f")
        assert rc == 0, (rc, out, err)
        got, everything = inbox_until(co, "jc.coesfeld", lambda m: hdr(m, "referral_id") == "R-F",
                                      deadline=20)
        assert got, st.kim("kim.rheine", "referral", "show", "R-F")[1]


def test_operator_status_shows_links(districts):
    """README: link state is "with an operator's key, in `kim status`
    (`"links":[{"peer":"broker.coesfeld","up":true,"queued":0,...}]`)"."""
    st, co = districts

    def link(d, org, peer):
        rc, out, _ = d.kim(org, "status")
        links = out[0].get("links", []) if rc == 0 and out else []
        one = [l for l in links if l.get("peer") == peer]
        return one[0] if one and one[0].get("up") is True and one[0].get("queued") == 0 else None
    assert poll(lambda: link(st, "ops.steinfurt", "broker.coesfeld")), st.kim("ops.steinfurt", "status")
    assert poll(lambda: link(co, "ops.coesfeld", "broker.steinfurt")), co.kim("ops.coesfeld", "status")
    rc, out, _ = st.kim("kim.rheine", "status")     # kim(1): links only with an operator's key
    assert rc == 0 and out and "links" not in out[0], out


def test_metrics_show_link_up_and_queued(districts):
    """README: "Link state is in the metrics (`kim_link_up`, `kim_link_queued`)"."""
    st, co = districts
    assert poll(lambda: st.metric("kim_link_up", "broker.coesfeld") == 1), st.metrics()[-3000:]
    assert st.metric("kim_link_queued", "broker.coesfeld") == 0, st.metrics()[-3000:]
    assert poll(lambda: co.metric("kim_link_up", "broker.steinfurt") == 1)


def test_link_down_loses_nothing_and_catches_up_in_order(districts):
    """README: "A link that is down loses nothing and catches up in order"; federation.md
    section 6: senders are receipted by their own broker, the messages wait in the link
    mailbox, the operator sees it in kim_link_up / kim_link_queued."""
    st, co = districts
    consent(st, "kim.rheine", "G-D", "C-D", "p-d", "jc.coesfeld")
    inbox_until(co, "jc.coesfeld", lambda m: False, deadline=2)    # drain earlier mail
    co.stop()
    assert poll(lambda: st.metric("kim_link_up", "broker.coesfeld") == 0), st.metrics()[-2000:]
    seqs, down_since = [], time.monotonic()
    for i in range(1, 6):
        rc, out, err = referral(st, "kim.rheine", "jc.coesfeld", "R-D%d" % i, "C-D", "p-d",
                                "G-D", "n%d" % i)
        assert rc == 0 and out and "seq" in out[0], ("receipted while the link is down", rc, out, err)
        seqs.append(out[0]["seq"])
    assert seqs == sorted(seqs)
    assert poll(lambda: (st.metric("kim_link_queued", "broker.coesfeld") or 0) >= 5), \
        st.metrics()[-2000:]
    # a downtime of at least 3 s, so that the next test can see whether it shows
    poll(lambda: time.monotonic() - down_since > 3.0, 10)
    co.start()
    got, everything = inbox_until(co, "jc.coesfeld",
                                  lambda m: str(hdr(m, "referral_id")).startswith("R-D"), count=5,
                                  deadline=60)
    ids = [hdr(m, "referral_id") for m in got]
    assert ids == ["R-D%d" % i for i in range(1, 6)], ids
    assert [json.loads(m["payload"])["need"] for m in got] == ["n%d" % i for i in range(1, 6)]
    assert poll(lambda: st.metric("kim_link_queued", "broker.coesfeld") == 0)


def test_referral_show_same_deadline_at_both_ends_after_a_link_outage(districts):
    """README: "`kim referral show` gives the same state at both ends" and "A link that is
    down loses nothing"; federation.md section 6: past the deadline the senders get the usual
    REMINDER and EXPIRED, so the deadline is part of the referral's state at both ends
    (PROTOCOL.md 9.4: the default period runs from its created_at). Uses R-D1 of the test
    above (sent while Coesfeld was down for >3 s)."""
    st, co = districts
    a = st.kim("kim.rheine", "referral", "show", "R-D1")
    b = co.kim("jc.coesfeld", "referral", "show", "R-D1")
    assert a[0] == 0 and b[0] == 0, (a, b)
    here, there = a[1][0], b[1][0]
    assert here["state"] == there["state"], (here, there)
    assert abs(here["deadline"] - there["deadline"]) < 1000, (here, there)


def test_revocation_in_one_district_reaches_the_other_on_reload(districts):
    """README: "A key rotated or revoked in one district reaches the other on its next
    reload"; federation.md section 5: "a revoked office is simply missing from the next
    directory"; kim(1) directory: exit 1 when ORG is not in it."""
    st, co = districts
    assert poll(lambda: st.kim("kim.rheine", "directory", "jc.dulmen")[0] == 0)
    co.revoked.add("jc.dulmen")
    co.reload()
    assert poll(lambda: st.kim("kim.rheine", "directory", "jc.dulmen")[0] == 1), \
        st.kim("kim.rheine", "directory", "jc.dulmen")
    assert st.kim("kim.rheine", "directory", "jc.coesfeld")[0] == 0   # the others stay
    rc, out, err = st.kim("kim.rheine", "send", "--type", "REFERRAL", "--to", "jc.dulmen",
                          "--referral", "R-V", "--case", "C-V", "--purpose", "employment",
                          "--payload", "-", stdin="{}")
    assert rc == 1 and "UNKNOWN_RECIPIENT" in json.dumps(out) + err, (rc, out, err)


def test_check_refuses_a_peer_key_registered_for_an_organisation(districts, tmp_path):
    """kim.cfg(5) peers/public_key: "It may not be registered for an organisation";
    kim-broker(8): --check exits 2 when the configuration is not valid."""
    st, co = districts
    with open(st.config) as f:
        text = f.read()
    mine = public_key(os.path.join(st.keys, "kim.rheine.cert"))
    bad = re.sub(r'(peers\n.*?public_key = )"[^"]*"', r'\1"%s"' % mine.replace("\\", "\\\\"),
                 text, flags=re.S)
    assert bad != text
    path = tmp_path / "bad.cfg"
    path.write_text(bad)
    r = subprocess.run([BROKER, "--check", "--config", str(path)], cwd=st.folder,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr


# -- Concepts ---------------------------------------------------------------------------------

def test_concepts_registry_ids_and_roles(tmp_path):
    """README "Concepts": an organisation id is `<type>.<place>[.<unit>]` (e.g.
    `mbe.rheine.caritas`), with a role agency, auditor or operator; "The registry is the
    `orgs` section of the configuration" (--check lists the registry, kim-broker(8))."""
    orgs = {"jc.rheine": "agency", "mbe.rheine.caritas": "agency",
            "dsb.steinfurt": "auditor", "ops.steinfurt": "operator"}
    lines = ["broker", "    name = broker.steinfurt", "    data = ./data",
             "policy", "    file = " + POLICY, "orgs"]
    for org, role in orgs.items():
        subprocess.run([KIM, "keygen", org, "--dir", str(tmp_path)], check=True,
                       capture_output=True, timeout=30)
        lines += ["    " + org, "        role = " + role,
                  '        public_key = "%s"' % public_key(str(tmp_path / (org + ".cert")))]
    cfg = tmp_path / "kim.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    r = subprocess.run([BROKER, "--check", "--config", str(cfg)], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for org, role in orgs.items():
        assert re.search(r"^\s*%s\s+%s\b" % (re.escape(org), role), r.stdout, re.M), r.stdout
    cfg.write_text("\n".join(lines).replace("role = auditor", "role = reader") + "\n")
    r = subprocess.run([BROKER, "--check", "--config", str(cfg)], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, "a fourth role was accepted: " + r.stdout


def test_concepts_log_sequence_and_mailbox_ack(districts):
    """README "Concepts": every accepted message gets the next sequence number; "Mailbox:
    the log entries waiting for one organisation. An acknowledgement removes an entry"
    (kim(1) status: mailbox counts messages waiting for us until acked)."""
    st, co = districts
    consent(st, "kim.rheine", "G-M", "C-M", "p-m", "jc.coesfeld")
    inbox_until(co, "jc.coesfeld", lambda m: False, deadline=2)
    seqs = []
    for i in (1, 2):
        rc, out, err = referral(st, "kim.rheine", "jc.coesfeld", "R-M%d" % i, "C-M", "p-m",
                                "G-M", "m")
        assert rc == 0, (rc, out, err)
        seqs.append(out[0]["seq"])
    assert seqs[1] > seqs[0]

    def mailbox():
        rc, out, _ = co.kim("jc.coesfeld", "status")
        return out[0]["mailbox"] if rc == 0 and out else None
    assert poll(lambda: (mailbox() or 0) >= 2), mailbox()
    rc, out, _ = co.kim("jc.coesfeld", "inbox", "--no-ack", "--idle", "1500")
    assert rc == 0 and (mailbox() or 0) >= 2      # not acked: still waiting
    got, _ = inbox_until(co, "jc.coesfeld", lambda m: str(hdr(m, "referral_id")).startswith("R-M"),
                         count=2)
    assert len(got) == 2
    assert poll(lambda: mailbox() == 0), mailbox()


# -- Layout -----------------------------------------------------------------------------------

LAYOUT = ["proto/PROTOCOL.md", "include/kim/kim_msg.h", "include/kim/kim_client.h",
          "include/kim/kim_error.h", "include/kim/kim_log.h", "broker/core", "broker/modules",
          "broker/main.c", "agents/lib", "agents/cli", "agents/agent", "tests/unit",
          "tests/integration", "tests/fault", "tests/fuzz", "tests/bench", "tests/agent",
          "tests/web", "deploy/run.sh", "deploy/test.sh", "deploy/kim.cfg",
          "tests/fault/test_netfuzz.c", "tests/federation", "docs/federation.md",
          "docs/operations.md", "tests/federation/sim/fedsim.py"]


@pytest.mark.parametrize("path", LAYOUT)
def test_layout_names_what_exists(path):
    """README "Layout" (and the paths "Connecting two districts" cites)."""
    assert os.path.exists(os.path.join(ROOT, path)), path


def test_layout_sample_config_checks_and_documents_peers():
    """README "Layout": deploy/kim.cfg "a sample configuration that documents every key";
    "Running the broker yourself": `kim-broker --check --config deploy/kim.cfg`."""
    with open(os.path.join(ROOT, "deploy", "kim.cfg")) as f:
        text = f.read()
    for key in ("endpoint", "public_key", "sign_key"):
        assert re.search(r"^#\s+%s = " % key, text, re.M), key
    r = subprocess.run([BROKER, "--check", "--config", "deploy/kim.cfg"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# -- Running it as a service ------------------------------------------------------------------

def unit(name):
    with open(os.path.join(ROOT, "deploy", "systemd", name)) as f:
        settings = {}
        for line in f:
            if "=" in line and not line.startswith(("#", "[")):
                k, v = line.rstrip("\n").split("=", 1)
                settings.setdefault(k, []).append(v)
        return settings


def test_service_unit_settings_the_readme_names():
    """README "Running it as a service": the unit `kim-broker` is `Type=notify`, with a
    watchdog, `systemctl reload` re-reads the registry (kim-broker(8): SIGHUP), runs as user
    `kim`, data in /var/lib/kim, configuration in /etc/kim."""
    u = unit("kim-broker.service")
    assert u["Type"] == ["notify"]
    assert u.get("WatchdogSec") and u["WatchdogSec"][0] not in ("0", "infinity")
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert u["User"] == ["kim"]
    assert "/var/lib/kim" in u["ReadWritePaths"][0] and u["StateDirectory"] == ["kim"]
    assert u["ConfigurationDirectory"] == ["kim"]
    assert all("--config /etc/kim/kim.cfg" in v for v in u["ExecStart"] + u["ExecStartPre"])
    assert u["ExecStartPre"][0].split()[1] == "--check"
    assert "NoNewPrivileges" in u and "ProtectSystem" in u      # "hardened"


def test_backup_unit_uses_the_backup_option():
    """README "Running it as a service": `kim-broker --backup DIR` takes a hot backup."""
    u = unit("kim-backup.service")
    assert "--backup /var/backups/kim/" in u["ExecStart"][0]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_units_verify():
    """README "Running it as a service": the shipped units are valid systemd units."""
    units = [os.path.join(ROOT, "deploy", "systemd", n)
             for n in ("kim-broker.service", "kim-backup.service", "kim-backup.timer")]
    r = subprocess.run(["systemd-analyze", "verify", "--man=no"] + units,
                       capture_output=True, text=True, timeout=60)
    # the binaries are not installed in /usr/bin here: only that complaint is allowed
    problems = [l for l in (r.stdout + r.stderr).splitlines()
                if l.strip() and "/usr/bin/kim-broker" not in l and "kim-broker.service" not in l]
    assert not problems, r.stdout + r.stderr


def test_service_documents_and_man_pages_exist():
    """README "Running it as a service": ./deploy/package.sh; docs/operations.md; the man
    pages kim-broker(8), kim(1), kim.cfg(5) and kim-policy(5)."""
    for p in ("deploy/package.sh", "docs/operations.md", "docs/man/kim-broker.8.scd",
              "docs/man/kim.1.scd", "docs/man/kim.cfg.5.scd", "docs/man/kim-policy.5.scd"):
        assert os.path.exists(os.path.join(ROOT, p)), p
    assert os.access(os.path.join(ROOT, "deploy/package.sh"), os.X_OK)


def test_hot_backup_while_serving(districts, tmp_path):
    """README "Running it as a service": "`kim-broker --backup DIR` takes a hot, compacted
    backup"; kim-broker(8): DIR must not exist, prints the last sequence number, keys copied
    with their modes."""
    st, co = districts
    target = tmp_path / "backup"
    r = subprocess.run([BROKER, "--config", st.config, "--backup", str(target)], cwd=st.folder,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"\d", r.stdout + r.stderr)
    secret = target / "keys" / "broker.cert_secret"
    assert secret.exists() and (secret.stat().st_mode & 0o077) == 0
    assert st.proc.poll() is None                   # still serving
    r = subprocess.run([BROKER, "--config", st.config, "--backup", str(target)], cwd=st.folder,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, "a backup into an existing folder succeeded"
