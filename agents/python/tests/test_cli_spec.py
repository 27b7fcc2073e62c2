"""The command-line programs `kim` and `kim-broker` as an outside user reads
their documents: kim(1) (docs/man/kim.1.scd), kim-broker(8)
(docs/man/kim-broker.8.scd), the README's walkthrough and the parts of
docs/operations.md that name these commands. Every expectation cites the
section it comes from; where a program does otherwise, the test is an xfail
that says both.

Not repeated here (tests/integration/test_tools.sh has them): policy lint and
the basic policy check verdicts, keygen's plain key pair and --force,
subscribe/unsubscribe/directory, the usage errors of subscribe, unsubscribe
and directory, kim-broker --check on a bad lifecycle or audit key; nor the
log verifier's byte flips (tests/python/test_verify.py).

Binaries: KIM_CLI_BIN and KIM_BROKER_BIN (default build/test/...).
"""
import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

from kim.testing import TestBroker

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
KIM = os.environ.get("KIM_CLI_BIN") or os.path.join(ROOT, "build", "test", "agents", "cli", "kim")
BROKER = os.environ.get("KIM_BROKER_BIN") or os.path.join(ROOT, "build", "test", "broker",
                                                          "kim-broker")
POLICY = os.environ.get("KIM_POLICY_FILE") or os.path.join(ROOT, "deploy", "policy.cfg")

ORGS = {"jc.rheine": "agency", "soz.rheine": "agency", "aa.rheine": "agency",
        "kim.rheine": "agency", "dsb.steinfurt": "auditor", "ops.steinfurt": "operator"}
STATUTE = "SGB X §69(1)1"
#   README "Your first referral": the consent and the referral, word for word
GRANT = {"type": "CONSENT_GRANT", "case_id": "C-1", "consent": "G-1", "subject": "p-7f3a",
         "recipients": ["jc.rheine"], "purposes": ["employment"], "valid_until": 1893456000000}
#   Words that may never reach the broker's log or its files in clear
#   (operations.md §1 "never payloads or personal names"; README "ciphertext only").
PAYLOAD_WORD = "Bewerbungstrainingxq7"
PERSON_NAME = "Ahmad Karimiqz"
NOTE_MARK = "NOTEMARK4711"
SANITIZER = re.compile(r"Sanitizer|runtime error:")
LOGFMT = re.compile(r'^ts=[0-9-]+T[0-9:.]+Z level=(error|warning|notice|info|debug) '
                    r'prog=kim-broker( module=[a-z0-9_]+)? msg=".*"$')



@pytest.fixture(scope="module", autouse=True)
def programs():
    for path, env in ((KIM, "KIM_CLI_BIN"), (BROKER, "KIM_BROKER_BIN")):
        assert os.access(path, os.X_OK), "%s: no such program (set %s)" % (path, env)


# --- helpers -------------------------------------------------------------------

class Run:
    def __init__(self, args, rc, out, err, seconds):
        self.args, self.rc, self.out, self.err, self.seconds = args, rc, out, err, seconds

    def __repr__(self):
        return "%s -> rc %s\nstdout: %s\nstderr: %s" % (
            " ".join(self.args), self.rc, self.out[-2000:], self.err[-2000:])

    def lines(self):
        return [line for line in self.out.splitlines() if line.strip()]

    def json_lines(self):
        return [json.loads(line) for line in self.lines()]


def _run(program, args, stdin=None, env=None, timeout=60, sanitizer_clean=True, **kw):
    started = time.monotonic()
    done = subprocess.run([program] + [str(a) for a in args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout, **kw)
    run = Run([os.path.basename(program)] + [str(a) for a in args], done.returncode,
              done.stdout, done.stderr, time.monotonic() - started)
    assert done.returncode >= 0, "died of signal %d: %r" % (-done.returncode, run)
    if sanitizer_clean:      # an ASan/UBSan report is a finding in any test
        assert not SANITIZER.search(done.stderr), run
    return run


def kim(*args, **kw):
    return _run(KIM, list(args), **kw)


def kim_broker(*args, **kw):
    return _run(BROKER, list(args), **kw)


def conn(b, org, endpoint=None, timeout=None):
    """kim(1) CONNECTION OPTIONS for organisation `org` of broker `b`."""
    args = ["--endpoint", endpoint or b.endpoint, "--broker-key", b.broker_cert,
            "--cert", b.cert_secret(org)]
    return args + (["--timeout", str(timeout)] if timeout else [])


def kim_as(b, org, *args, **kw):
    return kim(*(list(args) + conn(b, org)), **kw)


def referral(b, org, to, ref, case, subject="p-cli", purpose="benefits", *extra, **kw):
    return kim_as(b, org, "send", "--type", "REFERRAL", "--to", to, "--referral", ref,
                  "--case", case, "--subject", subject, "--purpose", purpose,
                  "--statute", STATUTE, *extra, **kw)


def wait_for(predicate, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def read(path):
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return f.read()


def public_key_of(cert):
    """The `public-key` line of a certificate (operations.md §2)."""
    return re.search(r'public-key = "(.*)"', read(cert)).group(1)


def strings_in(value):
    """Every string inside a JSON value, base64 ones also decoded."""
    if isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)
    elif isinstance(value, str):
        yield value
        try:
            yield base64.b64decode(value, validate=True).decode("utf-8")
        except Exception:   # noqa: BLE001 - not base64 text
            pass


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(folder):
    files = {}
    for where, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(where, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


# --- the brokers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One broker for the module: four agencies (jc.rheine registers a signing
    key), an auditor, an operator, the shipped policy, a small max_payload,
    checkpoints every second, and one peer that is never up."""
    peer = tmp_path_factory.mktemp("peer")
    from kim.certs import write_cert, write_sign_key
    peer_public = write_cert(str(peer / "far"), "broker.far")
    peer_sign = write_sign_key(str(peer / "far"))
    b = TestBroker(BROKER, POLICY, ORGS, signing=["jc.rheine"], sections={
        "broker": {"max_payload": 4096},
        "audit": {"checkpoint_seconds": 1},
        "peers": {"broker.far": {"endpoint": '"ipc://%s/none.sock"' % peer,
                                 "public_key": '"%s"' % peer_public,
                                 "sign_key": '"%s"' % peer_sign}}})
    b.start()
    yield b
    rc = b.stop()
    log = read(b.log_path)
    b.cleanup()
    assert rc == 0, "kim-broker exited %s: %s" % (rc, log[-2000:])
    assert not SANITIZER.search(log), log[-4000:]


@pytest.fixture(scope="module")
def story(world):
    """The README's "Your first referral", played with the kim tool."""
    s = {}
    s["grant"] = kim_as(world, "kim.rheine", "send", "--json", stdin=json.dumps(GRANT) + "\n")
    s["referral"] = kim_as(world, "kim.rheine", "send", "--type", "REFERRAL", "--to", "jc.rheine",
                           "--referral", "R-1", "--case", "C-1", "--subject", "p-7f3a",
                           "--purpose", "employment", "--consent", "G-1", "--note", NOTE_MARK,
                           "--payload", "-",
                           stdin='{"need":"job search support %s","name":"%s"}\n' % (
                               PAYLOAD_WORD, PERSON_NAME))
    s["inbox"] = kim_as(world, "jc.rheine", "inbox", "--idle", "500")
    s["inbox_again"] = kim_as(world, "jc.rheine", "inbox", "--idle", "300")
    s["accept"] = kim_as(world, "jc.rheine", "send", "--type", "ACCEPT", "--to", "kim.rheine",
                         "--referral", "R-1")
    s["show"] = kim_as(world, "kim.rheine", "referral", "show", "R-1")
    s["outside"] = kim_as(world, "kim.rheine", "send", "--type", "REFERRAL", "--to", "jc.rheine",
                          "--referral", "R-2", "--case", "C-1", "--subject", "p-7f3a",
                          "--purpose", "housing", "--consent", "G-1")
    s["own_accept"] = kim_as(world, "kim.rheine", "send", "--type", "ACCEPT", "--to", "jc.rheine",
                             "--referral", "R-1")
    return s


def sealed_to(data):
    """The last seq a signed checkpoint covers, from `kim audit verify --data`."""
    out = kim("audit", "verify", "--data", data).out
    if "sealed up to the last record" in out:
        return float("inf")
    m = re.search(r"sealed up to seq (\d+)", out)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module")
def checkpointed(world, story):
    """The story's last receipted seq, once a signed checkpoint covers it
    (README "Audit": a checkpoint every checkpoint_seconds when records were
    added; a checkpoint record itself is sealed only by the next one)."""
    last = max(story[n].json_lines()[0]["seq"] for n in ("grant", "referral", "accept"))
    wait_for(lambda: sealed_to(world.data) >= last, "a checkpoint over the story", 20)
    return last


@pytest.fixture(scope="module")
def backup(world, story, tmp_path_factory):
    """kim-broker --backup of the world while it serves (kim-broker(8) OPTIONS)."""
    target = str(tmp_path_factory.mktemp("backup") / "kim-backup")
    head = json.loads(kim_as(world, "jc.rheine", "status").out)["log_head"]
    run = kim_broker("--config", world.config, "--backup", target, timeout=120)
    return {"dir": target, "run": run, "head": head}


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    """A broker started by hand with --data, --bind and --verbose overriding
    its configuration, reloaded by SIGHUP (a key added, then an invalid file),
    stopped by SIGINT. Records what happened; the tests check it."""
    from kim.certs import write_cert
    b = TestBroker(BROKER, POLICY, {"jc.rheine": "agency", "soz.rheine": "agency"},
                   folder=str(tmp_path_factory.mktemp("second")))
    data = os.path.join(b.folder, "data2")
    sock = os.path.join(b.folder, "other.sock")
    endpoint = "ipc://" + sock
    r = {"data": data, "endpoint": endpoint, "broker": b}
    out_path, err_path = os.path.join(b.folder, "stdout"), os.path.join(b.folder, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([BROKER, "--config", b.config, "--data", data, "--bind", endpoint,
                              "--verbose"], stdout=out, stderr=err)
    try:
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None, "the second broker")
        assert p.poll() is None, read(err_path)
        cert = os.path.join(data, "keys", "broker.cert")
        r["keys"] = {name: mode(os.path.join(data, "keys", name))
                     for name in os.listdir(os.path.join(data, "keys"))}
        r["config_data_keys"] = os.path.exists(os.path.join(b.data, "keys"))
        r["config_bind_sock"] = os.path.exists(os.path.join(b.folder, "kim.sock"))

        def status(org, timeout=2000):
            return kim("status", "--endpoint", endpoint, "--broker-key", cert,
                       "--cert", b.cert_secret(org), "--timeout", timeout)
        r["jc_status"] = status("jc.rheine")
        public = write_cert(os.path.join(b.keys, "aa.rheine"), "aa.rheine")
        r["aa_before"] = status("aa.rheine", 500)
        good = read(b.config)
        entry = ('    aa.rheine\n        name = "Test aa.rheine"\n        public_body = 1\n'
                 '        role = agency\n        public_key = "%s"\n' % public)
        with open(b.config, "w") as f:
            f.write(good + entry)
        p.send_signal(signal.SIGHUP)
        r["aa_after"] = wait_for(lambda: [s for s in [status("aa.rheine", 500)] if s.rc == 0],
                                 "aa.rheine admitted after SIGHUP")[0]
        with open(b.config, "w") as f:
            f.write(good + entry.replace("role = agency", "role = agency\n        colour = blue"))
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "colour" in read(err_path), "the refused reload in the log")
        r["alive_after_bad_reload"] = p.poll() is None
        r["aa_after_bad"] = status("aa.rheine")
        p.send_signal(signal.SIGINT)
        r["rc"] = p.wait(60)
        with open(b.config, "w") as f:
            f.write(good)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r["stdout"], r["stderr"] = read(out_path), read(err_path)
    return r


# --- kim: help and usage (kim(1) SYNOPSIS, DESCRIPTION, COMMANDS, EXIT STATUS) ----

COMMANDS = ["send", "inbox", "status", "keygen", "referral", "admin", "audit", "policy",
            "subject", "subscribe", "unsubscribe", "directory", "help"]


def test_kim_help_lists_every_command():
    # kim(1) COMMANDS; README "Your first referral": "`kim --help` lists every command"
    run = kim("--help")
    assert run.rc == 0 and run.err == "", run
    assert run.out.startswith("Usage: kim"), run
    for command in COMMANDS:
        assert re.search(r"^\s+%s\s" % command, run.out, re.M), (command, run)


@pytest.mark.parametrize("words", [
    "send", "inbox", "status", "keygen", "referral", "referral show", "referral list",
    "admin", "admin reload", "audit", "audit verify", "audit replay", "audit export",
    "audit case", "audit trace", "policy", "policy check", "subject", "subject report",
    "subject erase", "subscribe", "unsubscribe", "directory",
    "policy lint", "help",
])
def test_every_command_prints_its_help(words):
    # kim(1) SYNOPSIS "kim COMMAND --help"; DESCRIPTION "Every command prints its own
    # help with --help": exit 0, the usage on stdout, nothing on stderr
    run = kim(*(words.split() + ["--help"]))
    assert run.rc == 0, run
    usage = "Usage: kim" if words == "help" else "Usage: kim " + words.split()[0]
    assert run.out.startswith(usage), run
    assert run.err == "", run


@pytest.mark.parametrize("command", COMMANDS[:-1] + ["help"])
def test_help_command_prints_the_command_help(command):
    # kim(1) COMMANDS "help COMMAND: Print the help of a command"
    run = kim("help", command)
    assert run.rc == 0 and run.out.startswith("Usage: kim"), run
    if command != "help":
        assert run.out == kim(command, "--help").out


def test_unknown_command_is_a_usage_error():
    # kim(1) EXIT STATUS "2 a usage ... error"; the message is not the output
    run = kim("no-such-command")
    assert run.rc == 2 and run.out == "" and "no-such-command" in run.err, run


def test_no_command_is_a_usage_error():
    # kim(1) SYNOPSIS: a COMMAND is required; EXIT STATUS 2 for usage errors
    run = kim()
    assert run.rc == 2 and run.out == "" and run.err, run


@pytest.mark.parametrize("args", [
    "send --bogus", "inbox --bogus", "status --bogus", "keygen x.y --bogus",
    "referral list --bogus", "referral show R-1 --bogus", "admin reload --bogus",
    "audit verify --bogus", "audit replay --bogus", "audit export --bogus",
    "audit case C-1 --bogus", "audit trace m-1 --bogus", "policy check --bogus",
    "policy lint x.cfg --bogus", "subject report p-1 --bogus", "subject erase p-1 --bogus",
    "audit no-such-action", "policy no-such-action", "subject no-such-action",
    "admin no-such-action", "referral no-such-action",
])
def test_unknown_option_or_subcommand_is_a_usage_error(args):
    # kim(1) EXIT STATUS "2 a usage ... error": nothing on stdout, the reason on stderr
    run = kim(*args.split())
    assert run.rc == 2 and run.out == "" and run.err.strip(), run


@pytest.mark.parametrize("args", ["keygen", "audit trace", "referral show", "subject report",
                                  "send --cert /nonexistent.cert_secret"])
def test_missing_argument_is_a_usage_error(args):
    # kim(1) COMMANDS: keygen ORG, audit trace MSG_ID SOURCE..., referral shows "one
    # referral", subject names a subject; send needs a message. EXIT STATUS 2.
    run = kim(*args.split())
    assert run.rc == 2 and run.out == "" and run.err.strip(), run


# --- kim keygen (kim(1) COMMANDS keygen; README "Sender signatures") ------------

def test_keygen_pair_and_signing_key(tmp_path):
    # kim(1) EXAMPLES "kim keygen kim.rheine --dir ./keys"; COMMANDS keygen: ORG.cert
    # (public), ORG.cert_secret (mode 0600); --sign an Ed25519 key. README "Sender
    # signatures": `kim keygen NAME --sign` writes NAME.sign and NAME.sign_secret (0600).
    keys = tmp_path / "keys"
    run = kim("keygen", "kim.rheine", "--dir", keys)
    assert run.rc == 0, run
    assert mode(keys / "kim.rheine.cert_secret") == 0o600
    assert "secret" not in read(keys / "kim.rheine.cert").lower()
    # operations.md §2: its `public-key` line goes into the registry
    public = public_key_of(keys / "kim.rheine.cert")
    assert public == public_key_of(keys / "kim.rheine.cert_secret")
    run = kim("keygen", "kim.rheine", "--dir", keys, "--sign")
    assert run.rc == 0, run
    assert os.path.exists(keys / "kim.rheine.sign")
    assert mode(keys / "kim.rheine.sign_secret") == 0o600
    assert "secret" not in read(keys / "kim.rheine.sign").lower()
    # the CURVE pair is left as it was
    assert public_key_of(keys / "kim.rheine.cert") == public
    assert public_key_of(keys / "kim.rheine.cert_secret") == public


# --- kim policy check offline (README "Lawful by default") ---------------------

def test_policy_check_with_a_consent_file(tmp_path):
    # README "Lawful by default": `--consent-file GRANT.json` stands in for the broker's
    # consent registry; check prints each rule it tried, then the verdict as JSON; it
    # works offline and says so. The README's own grant covers employment, not housing.
    grant = tmp_path / "grant.json"
    grant.write_text(json.dumps(GRANT))
    header = {"type": "REFERRAL", "sender": "kim.rheine", "recipient": "jc.rheine",
              "case_id": "C-1", "subject": "p-7f3a", "purpose": "employment",
              "legal_basis": {"kind": "consent", "consent_id": "G-1"}}
    allow = kim("policy", "check", "--policy", POLICY, "--json", "--consent-file", grant,
                stdin=json.dumps(header) + "\n")
    assert allow.rc == 0, allow
    verdict = json.loads(allow.lines()[-1])
    assert verdict["decision"] == "allow" and verdict["rule"] == "P8", allow
    assert "offline" in allow.out.lower(), allow
    assert re.search(r"rule P1\b.*does not apply", allow.out), allow     # rules it tried
    # the consent's end as a date a person reads (valid_until 1893456000000 ms)
    assert "categories until 2030-01-01 00:00:00 UTC" in verdict["text"], allow
    header["purpose"] = "housing"
    deny = kim("policy", "check", "--policy", POLICY, "--json", "--consent-file", grant,
               stdin=json.dumps(header) + "\n")
    verdict = json.loads(deny.lines()[-1])
    assert deny.rc == 1 and verdict["decision"] == "deny", deny
    assert verdict["code"] == "CONSENT_SCOPE" and "housing" in verdict["text"], deny


# --- kim against a broker: the README walkthrough ------------------------------

def test_send_prints_the_receipt(story):
    # README "Your first referral": each answer is one JSON line with the log sequence
    # number: {"msg_id":"4d7f…","seq":101,"dup":false}; kim(1) EXIT STATUS 0
    for name in ("grant", "referral", "accept"):
        run = story[name]
        assert run.rc == 0, run
        (line,) = run.json_lines()
        # (the grant went with --json, whose answers also name their input "line")
        assert set(line) - {"line"} == {"msg_id", "seq", "dup"}, run
        assert isinstance(line["seq"], int) and line["seq"] > 0 and line["dup"] is False, run
    seqs = [story[n].json_lines()[0]["seq"] for n in ("grant", "referral", "accept")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_refusal_names_rule_and_law(story):
    # README "Your first referral": a transfer outside the consent is refused, the answer
    # names the rule and the law: {"msg_id":"40ec…","error":"CONSENT_SCOPE","code":504,
    # "text":"rule P8 (kim,kimw -> *, consent): consent G-1 does not cover purpose housing
    # [§ 67b SGB X; …]", …}; kim(1) EXIT STATUS 1 the broker refused a message
    run = story["outside"]
    assert run.rc == 1, run
    (line,) = run.json_lines()
    assert line["msg_id"] and line["error"] == "CONSENT_SCOPE" and line["code"] == 504, run
    assert line["text"].startswith("rule P8 (kim,kimw -> *, consent): consent G-1 does not "
                                   "cover purpose housing [§ 67b SGB X;"), run


def test_answer_moves_the_referral(story):
    # README "Your first referral": after the ACCEPT, `kim referral show R-1` -> "state":"ACCEPTED"
    run = story["show"]
    assert run.rc == 0, run
    (line,) = run.json_lines()
    assert line["referral_id"] == "R-1" and line["state"] == "ACCEPTED", run


def test_refused_move_names_the_state_and_allowed_moves(story):
    # README "The closed loop": only the recipient answers; any other move gets a REJECT
    # naming the state and the allowed moves, e.g. "BAD_STATE: referral R-1 is ACCEPTED;
    # the recipient may send FORWARD, STATUS, OUTCOME, INFO_REQUEST, INFO_RESPONSE; the
    # sender may send WITHDRAW, INFO_REQUEST, INFO_RESPONSE"
    run = story["own_accept"]
    assert run.rc == 1, run
    (line,) = run.json_lines()
    assert line["error"] == "BAD_STATE", run
    assert line["text"] == ("referral R-1 is ACCEPTED; the recipient may send FORWARD, STATUS, "
                            "OUTCOME, INFO_REQUEST, INFO_RESPONSE; the sender may send WITHDRAW, "
                            "INFO_REQUEST, INFO_RESPONSE"), run


def test_inbox_opens_and_acks(story):
    # README "Your first referral": `kim inbox` prints each delivery as a JSON line, opens
    # and acknowledges it; kim(1) COMMANDS inbox "... as JSON lines and ack them"
    run = story["inbox"]
    assert run.rc == 0, run
    deliveries = run.json_lines()
    ours = [d for d in deliveries if "R-1" in list(strings_in(d))]
    assert len(ours) == 1, run
    texts = list(strings_in(ours[0]))
    assert any(PAYLOAD_WORD in t for t in texts), run          # opened with our key
    again = story["inbox_again"]
    assert again.rc == 0 and again.out.strip() == "", again      # acked: not delivered again


def test_payload_is_sealed_on_the_broker(world, story):
    # README "Your first referral": kim seals the payload to the recipient's key, so the
    # broker stores ciphertext only ("Sealed payloads": stores and forwards ciphertext)
    for name, content in snapshot(world.data).items():
        assert PAYLOAD_WORD.encode() not in content, name
        assert PERSON_NAME.encode() not in content, name


def test_broker_log_holds_no_payload_or_names(world, story):
    # operations.md §1: the log names organisations, ids, codes and counts; never
    # payloads or personal names. The note is none of those either.
    log = read(world.log_path)
    for word in (PAYLOAD_WORD, PERSON_NAME, "job search support", NOTE_MARK):
        assert word not in log, word


def test_referral_list(world, story):
    # README "The closed loop" / "Where do my referrals stand?": `kim referral list --open`,
    # `--org`; one JSON line per referral; only referrals the asking organisation sends
    # or receives
    assert referral(world, "jc.rheine", "soz.rheine", "R-LIST1", "C-LIST").rc == 0
    run = kim_as(world, "kim.rheine", "referral", "list", "--open")
    assert run.rc == 0, run
    assert [r["referral_id"] for r in run.json_lines() if r["referral_id"] == "R-1"] == ["R-1"]
    run = kim_as(world, "jc.rheine", "referral", "list", "--org", "kim.rheine")
    assert run.rc == 0 and "R-1" in [r["referral_id"] for r in run.json_lines()], run
    run = kim_as(world, "soz.rheine", "referral", "list")
    ids = [r["referral_id"] for r in run.json_lines()]
    assert run.rc == 0 and "R-LIST1" in ids and "R-1" not in ids, run   # not soz.rheine's


def test_referral_list_with_no_match(world):
    run = kim_as(world, "jc.rheine", "referral", "list", "--case", "C-NO-SUCH-CASE",
                 sanitizer_clean=False)
    assert not SANITIZER.search(run.err), run
    assert run.rc == 0 and run.out == "", run


def test_referral_show_unknown(world):
    run = kim_as(world, "jc.rheine", "referral", "show", "R-NO-SUCH", sanitizer_clean=False)
    assert not SANITIZER.search(run.err), run
    assert run.rc in (1, 2) and run.err.strip() and run.out == "", run


def test_same_msg_id_gets_the_original_receipt(world):
    # README "What the broker promises" (Delivered): a msg_id the same sender repeats gets
    # the original receipt
    first = referral(world, "jc.rheine", "soz.rheine", "R-DUP", "C-DUP", "p-dup", "benefits",
                     "--msg-id", "m-cli-dup-1")
    second = referral(world, "jc.rheine", "soz.rheine", "R-DUP", "C-DUP", "p-dup", "benefits",
                      "--msg-id", "m-cli-dup-1")
    assert first.rc == 0 and second.rc == 0, (first, second)
    a, b = first.json_lines()[0], second.json_lines()[0]
    assert a["msg_id"] == b["msg_id"] == "m-cli-dup-1" and a["seq"] == b["seq"], (a, b)
    assert a["dup"] is False and b["dup"] is True


def test_send_json_lines(world):
    # kim(1) COMMANDS send: many as JSON lines (--json); one line per message: its seq
    # or the refusal with its reason code; EXIT STATUS 1 when the broker refused one
    good = {"type": "REFERRAL", "recipient": "soz.rheine", "case_id": "C-JSON",
            "subject": "p-json", "purpose": "benefits",
            "legal_basis": {"kind": "statute", "citation": STATUTE}}
    lines = [dict(good, referral_id="R-J1"),
             dict(good, referral_id="R-J2", purpose="housing",
                  legal_basis={"kind": "statute", "citation": "AufenthG §87(1)"}),
             dict(good, referral_id="R-J3")]
    run = kim_as(world, "jc.rheine", "send", "--json",
                 stdin="".join(json.dumps(line) + "\n" for line in lines))
    assert run.rc == 1, run
    answers = run.json_lines()
    assert len(answers) == 3, run
    assert len([a for a in answers if isinstance(a.get("seq"), int)]) == 2, run
    (refused,) = [a for a in answers if "error" in a]
    assert refused["error"] and isinstance(refused["code"], int), run
    # kim(1) send: with --json each answer names the input line it answers
    assert refused["line"] == 2, run
    assert sorted(a["line"] for a in answers) == [1, 2, 3], run


def test_plaintext_limit_is_max_payload_minus_48(world):
    # README "Sealed payloads": payload_len is the sealed size (plaintext + 48 bytes), so
    # the plaintext limit is max_payload - 48 (here 4096); "Bounded": a clear REJECT
    # with a reason code
    fits = referral(world, "jc.rheine", "soz.rheine", "R-BIG1", "C-BIG", "p-big", "benefits",
                    "--payload", "-", stdin="a" * (4096 - 48))
    assert fits.rc == 0 and "seq" in fits.json_lines()[0], fits
    over = referral(world, "jc.rheine", "soz.rheine", "R-BIG2", "C-BIG", "p-big", "benefits",
                    "--payload", "-", stdin="a" * (4096 - 47))
    assert over.rc == 1, over
    (line,) = over.json_lines()
    assert line["error"] and isinstance(line["code"], int), over


def test_unknown_recipient_is_refused_with_its_code(world):
    run = referral(world, "jc.rheine", "nobody.rheine", "R-NOBODY", "C-NOBODY", "p-x",
                   "benefits", "--payload", "-", stdin="for nobody")
    assert "UNKNOWN_RECIPIENT" in run.out, run
    (line,) = run.json_lines()
    assert line["error"] == "UNKNOWN_RECIPIENT", run


def test_sender_signatures(world, story, tmp_path):
    # README "Sender signatures": with orgs/<id>/sign_key registered every SEND must carry
    # hdr.sig or it is refused with BAD_SIGNATURE; kim signs whenever it finds
    # NAME.sign_secret beside NAME.cert_secret; the signature stays in the logged header;
    # an organisation without a registered sign_key must not send sig (refused too).
    accept_seq = story["accept"].json_lines()[0]["seq"]
    replay = kim("audit", "replay", "--data", world.data)
    logged = [r for r in replay.json_lines() if r["seq"] == accept_seq]
    assert logged and logged[0]["body"].get("sig"), replay    # jc.rheine signed its ACCEPT
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(world.cert_secret("jc.rheine"), bare / "jc.rheine.cert_secret")
    run = kim("send", "--type", "REFERRAL", "--to", "soz.rheine", "--referral", "R-SIG1",
              "--case", "C-SIG", "--subject", "p-sig", "--purpose", "benefits",
              "--statute", STATUTE, "--endpoint", world.endpoint,
              "--broker-key", world.broker_cert, "--cert", bare / "jc.rheine.cert_secret")
    assert run.rc == 1 and run.json_lines()[0]["error"] == "BAD_SIGNATURE", run
    stray = tmp_path / "stray"
    stray.mkdir()
    shutil.copy(world.cert_secret("soz.rheine"), stray / "soz.rheine.cert_secret")
    assert kim("keygen", "soz.rheine", "--dir", stray, "--sign").rc == 0
    run = kim("send", "--type", "REFERRAL", "--to", "jc.rheine", "--referral", "R-SIG2",
              "--case", "C-SIG", "--subject", "p-sig", "--purpose", "benefits",
              "--statute", STATUTE, "--endpoint", world.endpoint,
              "--broker-key", world.broker_cert, "--cert", stray / "soz.rheine.cert_secret")
    assert run.rc == 1 and run.json_lines()[0]["error"] == "BAD_SIGNATURE", run


# --- status, admin reload, connection ------------------------------------------

def test_status_figures_and_links(world):
    # kim(1) COMMANDS status: the broker's figures for our organisation; with an operator's
    # key also the links to the brokers of other districts (up, queued). operations.md §4
    # "Without Prometheus": mailbox, in flight, sessions, store bytes. README "Connecting
    # two districts": "links":[{"peer":"broker.coesfeld","up":true,"queued":0,...}]
    run = kim_as(world, "jc.rheine", "status")
    assert run.rc == 0, run
    (figures,) = run.json_lines()
    assert figures["org"] == "jc.rheine", run
    for key in ("mailbox", "in_flight", "sessions", "store_bytes"):
        assert isinstance(figures.get(key), int), (key, run)
    assert "links" not in figures, run
    run = kim_as(world, "ops.steinfurt", "status")
    (figures,) = run.json_lines()
    assert run.rc == 0 and figures["org"] == "ops.steinfurt", run
    (link,) = figures["links"]
    assert link["peer"] == "broker.far" and link["up"] is False and link["queued"] == 0, run


def test_admin_reload(world):
    # README "Keys, roles and revocation": an operator may reload the registry
    # (`kim admin reload --cert OPS.cert_secret`); an invalid file changes nothing, the
    # broker answers RELOAD_FAILED and says which key is wrong. kim(1) EXIT STATUS 1 for
    # a refusal.
    run = kim_as(world, "ops.steinfurt", "admin", "reload")
    assert run.rc == 0, run
    run = kim_as(world, "jc.rheine", "admin", "reload")
    assert run.rc == 1 and "FORBIDDEN" in run.err, run
    good = read(world.config)
    try:
        with open(world.config, "w") as f:
            f.write(good.replace("role = agency", "role = agency\n        colour = blue", 1))
        run = kim_as(world, "ops.steinfurt", "admin", "reload")
        assert run.rc == 1, run
        assert "RELOAD_FAILED" in run.err + run.out and "colour" in run.err + run.out, run
    finally:
        with open(world.config, "w") as f:
            f.write(good)
    assert kim_as(world, "jc.rheine", "status").rc == 0     # the registry is unchanged


def test_unreachable_broker_is_a_connection_error(world, tmp_path):
    # kim(1) CONNECTION OPTIONS --timeout MS: how long to wait; EXIT STATUS 2 connection error
    run = kim("status", "--endpoint", "ipc://%s/nobody.sock" % tmp_path, "--broker-key",
              world.broker_cert, "--cert", world.cert_secret("jc.rheine"), "--timeout", "300")
    assert run.rc == 2 and run.out == "" and run.err.strip(), run
    assert run.seconds < 5, run


def test_wrong_keys_are_connection_errors(world, tmp_path):
    # kim-broker(8) DESCRIPTION: only keys in the registry are admitted; kim(1)
    # CONNECTION OPTIONS --broker-key, --cert; EXIT STATUS 2 connection error
    other = tmp_path / "keys"
    assert kim("keygen", "xx.rheine", "--dir", other).rc == 0
    run = kim("status", "--endpoint", world.endpoint, "--broker-key", world.broker_cert,
              "--cert", other / "xx.rheine.cert_secret", "--timeout", "300")
    assert run.rc == 2 and run.err.strip(), run                 # not registered
    run = kim("status", "--endpoint", world.endpoint, "--broker-key", other / "xx.rheine.cert",
              "--cert", world.cert_secret("jc.rheine"), "--timeout", "300")
    assert run.rc == 2 and run.err.strip(), run                 # not the broker's key
    run = kim("status", "--endpoint", world.endpoint, "--broker-key", world.broker_cert,
              "--cert", tmp_path / "missing.cert_secret")
    assert run.rc == 2 and run.err.strip(), run                 # no such certificate


def test_environment_gives_the_connection(world):
    # kim(1) CONNECTION OPTIONS: KIM_ENDPOINT, KIM_BROKER_KEY, KIM_CERT; EXAMPLES
    # `export KIM_CERT=...`. A flag given on the command line is the option itself.
    env = dict(os.environ, KIM_ENDPOINT=world.endpoint, KIM_BROKER_KEY=world.broker_cert,
               KIM_CERT=world.cert_secret("soz.rheine"))
    run = kim("status", env=env)
    assert run.rc == 0 and run.json_lines()[0]["org"] == "soz.rheine", run
    run = kim("status", "--cert", world.cert_secret("aa.rheine"), env=env)
    assert run.rc == 0 and run.json_lines()[0]["org"] == "aa.rheine", run


# --- subject rights (README "Lawful by default": Data subject rights) -----------

def test_subject_report_and_erase(world):
    # README: an organisation that sent data about a person can ask `kim subject report`
    # (JSON from the log's metadata: who received which categories, when, on what basis)
    # and `kim subject erase` (purge our payloads, tell the recipients); the log keeps its
    # hashes, so `kim audit verify` still passes. Others are refused (kim(1) EXIT 1).
    sent = referral(world, "jc.rheine", "aa.rheine", "R-ER1", "C-ER", "p-erase1", "benefits",
                    "--payload", "-", stdin="to be erased")
    assert sent.rc == 0, sent
    report = kim_as(world, "jc.rheine", "subject", "report", "p-erase1")
    assert report.rc == 0, report
    pages = report.json_lines()
    text = json.dumps(pages, ensure_ascii=False)
    assert "aa.rheine" in text and STATUTE in text, report
    refused = kim_as(world, "soz.rheine", "subject", "report", "p-erase1")
    assert refused.rc == 1 and refused.out == "", refused
    erase = kim_as(world, "jc.rheine", "subject", "erase", "p-erase1")
    assert erase.rc == 0 and isinstance(erase.json_lines()[0]["seq"], int), erase
    inbox = kim_as(world, "aa.rheine", "inbox", "--idle", "500")
    assert inbox.rc == 0, inbox
    assert any("ERASURE" in list(strings_in(d)) for d in inbox.json_lines()), inbox
    verify = kim("audit", "verify", "--data", world.data)
    assert verify.rc == 0 and verify.out.startswith("OK:"), verify


# --- kim audit (kim(1) COMMANDS audit, audit trace; README "Audit") --------------

def test_audit_verify_offline_while_the_broker_runs(world, checkpointed):
    # README "Audit": `kim audit verify --data kim-data` -> "OK: records 1..N verified
    # (N records, ...". kim(1): offline with --data, read-only, safe while the broker runs
    run = kim("audit", "verify", "--data", world.data)
    assert run.rc == 0, run
    m = re.match(r"OK: records 1\.\.(\d+) verified \((\d+) records, \d+ checkpoints? signed",
                 run.out)
    assert m and int(m.group(1)) == int(m.group(2)) >= checkpointed, run
    assert kim_as(world, "jc.rheine", "status").rc == 0        # the broker still serves


def test_audit_verify_wrong_key_fails(world, checkpointed, second):
    # kim(1) COMMANDS audit verify: checkpoint signatures; EXIT STATUS 1 a verification
    # failed. Another broker's public signing key is a wrong key.
    other = os.path.join(second["data"], "keys", "broker.sign.pub")
    run = kim("audit", "verify", "--data", world.data, "--sign-key", other)
    assert run.rc == 1, run
    run = kim_as(world, "dsb.steinfurt", "audit", "verify", "--sign-key", other)
    assert run.rc == 1, run


def test_audit_online_for_auditors_only(world, story):
    # README "Audit": the same commands work online for the auditor role (--sign-key for
    # verify); every read is logged as an audit_read record (`kim audit replay --type
    # audit_read` lists them); agencies and operators are refused (FORBIDDEN).
    sign_key = os.path.join(world.data, "keys", "broker.sign.pub")
    run = kim_as(world, "dsb.steinfurt", "audit", "verify", "--sign-key", sign_key)
    assert run.rc == 0 and run.out.startswith("OK: records 1.."), run
    run = kim_as(world, "dsb.steinfurt", "audit", "replay", "--case", "C-1")
    assert run.rc == 0 and run.lines(), run
    for org in ("jc.rheine", "ops.steinfurt"):
        run = kim_as(world, org, "audit", "verify", "--sign-key", sign_key)
        assert run.rc == 1 and "FORBIDDEN" in run.err, run
    reads = kim("audit", "replay", "--data", world.data, "--type", "audit_read")
    assert reads.rc == 0, reads
    assert any("dsb.steinfurt" in list(strings_in(r)) for r in reads.json_lines()), reads


def test_audit_replay_filters(world, story):
    # README "Audit": replay as JSON lines, filtered by ... case ... type; example
    # `kim audit replay --data kim-data --case C-1 --since 2026-01-01`
    run = kim("audit", "replay", "--data", world.data, "--case", "C-1")
    assert run.rc == 0, run
    records = run.json_lines()
    refseq = story["referral"].json_lines()[0]["seq"]
    assert refseq in [r["seq"] for r in records], run
    assert all("C-1" in list(strings_in(r)) for r in records), run
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    later = kim("audit", "replay", "--data", world.data, "--case", "C-1", "--since", since)
    assert later.rc == 0 and later.json_lines() == records, later
    future = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 3 * 86400))
    none = kim("audit", "replay", "--data", world.data, "--case", "C-1", "--since", future)
    assert none.rc == 0 and none.out.strip() == "", none


def test_audit_case_table(world, story):
    # README "Audit": `kim audit case C-1 --data kim-data` reads one case as a table
    run = kim("audit", "case", "C-1", "--data", world.data)
    assert run.rc == 0, run
    refseq = story["referral"].json_lines()[0]["seq"]
    assert "R-1" in run.out and re.search(r"\b%d\b" % refseq, run.out), run


def test_audit_export_and_verify_the_export(world, checkpointed, tmp_path):
    # README "Audit": export with hashes (an archive outside kim) and verify the export:
    # `kim audit verify --from-export log.jsonl --sign-key .../broker.sign.pub`; a removed
    # record is named by its sequence number (exit 1)
    sign_key = os.path.join(world.data, "keys", "broker.sign.pub")
    export = kim("audit", "export", "--data", world.data)
    assert export.rc == 0, export
    lines = export.lines()
    records = [json.loads(line) for line in lines]
    assert all("hash" in r for r in records if "seq" in r), export
    path = tmp_path / "log.jsonl"
    path.write_text(export.out)
    run = kim("audit", "verify", "--from-export", path, "--sign-key", sign_key)
    assert run.rc == 0 and run.out.startswith("OK: records 1.."), run
    gone = next(i for i, r in enumerate(records) if r.get("seq") == 3)
    path.write_text("\n".join(lines[:gone] + lines[gone + 1:]) + "\n")
    run = kim("audit", "verify", "--from-export", path, "--sign-key", sign_key)
    assert run.rc == 1 and re.search(r"\bseq 3\b", run.out + run.err), run


def test_audit_verify_export_with_an_altered_body(world, checkpointed, tmp_path):
    sign_key = os.path.join(world.data, "keys", "broker.sign.pub")
    lines = kim("audit", "export", "--data", world.data).lines()
    refseq = kim("audit", "replay", "--data", world.data, "--case", "C-1").json_lines()
    target = next(r["seq"] for r in refseq if r["body"].get("purpose") == "employment")
    altered = []
    for line in lines:
        record = json.loads(line)
        if record.get("seq") == target:
            record["body"]["purpose"] = "housing"
            line = json.dumps(record, ensure_ascii=False)
        altered.append(line)
    path = tmp_path / "altered.jsonl"
    path.write_text("\n".join(altered) + "\n")
    run = kim("audit", "verify", "--from-export", path, "--sign-key", sign_key)
    assert run.rc == 1 and str(target) in run.out + run.err, run


def test_audit_trace(world, story, backup):
    # kim(1) COMMANDS audit trace: every log verified, then the records that concern the
    # message; --json one document (sources, records, findings, ok); --sender picks one
    # sender's message; exit 1 when the message is in no log; --sign-key is required
    # online. README: ends in "OK: 2 copies of m-4711 in 2 logs, ..." or "NOT FOUND".
    msg_id = story["referral"].json_lines()[0]["msg_id"]
    run = kim("audit", "trace", msg_id, "--data", world.data)
    assert run.rc == 0 and re.search(r"^OK: 1 cop", run.out, re.M), run
    doc = kim("audit", "trace", msg_id, "--data", world.data, "--json")
    assert doc.rc == 0, doc
    document = json.loads(doc.out)
    assert {"sources", "records", "findings", "ok"} <= set(document) and document["ok"] is True
    assert story["referral"].json_lines()[0]["seq"] in [r["seq"] for r in document["records"]]
    two = kim("audit", "trace", msg_id, "--data", world.data, "--name", "live",
              "--data", backup["dir"], "--name", "copy")
    assert two.rc == 0 and re.search(r"^OK: 2 copies of %s in 2 logs" % msg_id, two.out, re.M), two
    assert "live" in two.out and "copy" in two.out, two
    assert kim("audit", "trace", msg_id, "--data", world.data, "--sender", "kim.rheine").rc == 0
    other = kim("audit", "trace", msg_id, "--data", world.data, "--sender", "jc.rheine")
    assert other.rc == 1 and "NOT FOUND" in other.out, other
    missing = kim("audit", "trace", "m-not-logged", "--data", world.data)
    assert missing.rc == 1 and "NOT FOUND" in missing.out, missing
    online = ["--endpoint", world.endpoint, "--broker-key", world.broker_cert,
              "--cert", world.cert_secret("dsb.steinfurt")]
    run = kim("audit", "trace", msg_id, *online)
    assert run.rc == 2 and run.err.strip(), run                  # --sign-key is required
    run = kim("audit", "trace", msg_id, *online, "--sign-key",
              os.path.join(world.data, "keys", "broker.sign.pub"))
    assert run.rc == 0 and re.search(r"^OK: 1 cop", run.out, re.M), run


def test_tampered_log_fails_verify_and_trace(story, backup, tmp_path):
    # README "Audit": an altered record is named by its sequence number (exit 1):
    # "FAILED at seq 4117: hash mismatch: ..."; kim(1) audit trace: exit 1 when a log
    # does not verify, "LOG DOES NOT VERIFY". The altered record: R-1's, which holds the
    # note (the only copy of those bytes in the store).
    assert backup["run"].rc == 0, backup["run"]
    copy = str(tmp_path / "tampered")
    shutil.copytree(backup["dir"], copy)
    store = os.path.join(copy, "store", "data.mdb")
    with open(store, "rb") as f:
        content = f.read()
    assert content.count(NOTE_MARK.encode()) >= 1
    with open(store, "wb") as f:
        f.write(content.replace(NOTE_MARK.encode(), NOTE_MARK[:-1].encode() + b"2"))
    seq = story["referral"].json_lines()[0]["seq"]
    run = kim("audit", "verify", "--data", copy)
    assert run.rc == 1 and run.out.startswith("FAILED at seq %d: " % seq), run
    msg_id = story["referral"].json_lines()[0]["msg_id"]
    run = kim("audit", "trace", msg_id, "--data", copy)
    assert run.rc == 1 and "LOG DOES NOT VERIFY" in run.out, run


def test_offline_audit_is_read_only(backup):
    # kim(1) COMMANDS audit: "Offline with --data DIR (read-only, safe while the broker
    # runs)"; operations.md §6: `kim audit verify --data BACKUP` verifies a backup.
    # A folder anyone may read and nobody but its owner may write, in a world-readable place
    top = tempfile.mkdtemp(prefix="kim-ro-")
    try:
        copy = os.path.join(top, "data")
        shutil.copytree(backup["dir"], copy)
        for where, _, files in os.walk(top):
            os.chmod(where, 0o755)
            for name in files:
                os.chmod(os.path.join(where, name), 0o644)
        before = snapshot(copy)
        for args in (["verify"], ["replay"], ["case", "C-1"], ["export"]):
            run = kim("audit", *args, "--data", copy)
            assert run.rc == 0, run
        # no file written, none added but LMDB's lock file (kim(1): "changes nothing
        # in the folder but LMDB's lock file")
        lock = os.path.join("store", "lock.mdb")
        after = snapshot(copy)
        after.pop(lock, None)
        before.pop(lock, None)
        assert after == before
        if os.geteuid() == 0:                      # as a user who may only read the folder
            def nobody():
                os.setgid(65534)
                os.setuid(65534)
            run = kim("audit", "verify", "--data", copy, preexec_fn=nobody)
            assert run.rc == 0 and run.out.startswith("OK:"), run
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- kim-broker (kim-broker(8)) -------------------------------------------------

BROKER_OPTIONS = ["--config", "--data", "--bind", "--check", "--backup", "--recover", "--verbose",
                  "--help", "--version", "-c", "-d", "-b", "-v", "-h"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_broker_help(flag):
    # kim-broker(8) OPTIONS "-h, --help: Print the help and exit"; EXIT STATUS 0
    run = kim_broker(flag)
    assert run.rc == 0 and run.out.startswith("Usage: kim-broker") and run.err == "", run
    for option in BROKER_OPTIONS:
        assert re.search(r"(^|[\s,])%s\b" % re.escape(option), run.out), option


def test_broker_version():
    # kim-broker(8) OPTIONS "--version: Print the version and exit"
    run = kim_broker("--version")
    assert run.rc == 0 and re.search(r"\d+\.\d+", run.out) and len(run.lines()) == 1, run


@pytest.mark.parametrize("args", ["--bogus", "--backup", "--config", "--check --bogus"])
def test_broker_usage_errors(args):
    # kim-broker(8) EXIT STATUS "2 on a usage ... error"
    run = kim_broker(*args.split())
    assert run.rc == 2 and run.out == "" and run.err.strip(), run


def test_broker_check_lists_registry_and_peers(world):
    # kim-broker(8) --check: validate every section and the policy file, print a summary
    # of the registry, exit 0; operations.md §3 "validates, lists the registry";
    # README "Connecting two districts" 3: `kim-broker --check` lists the peers
    run = kim_broker("--check", "--config", world.config)
    assert run.rc == 0, run
    for org in ORGS:
        assert re.search(r"\b%s\b" % re.escape(org), run.out), (org, run)
    assert "broker.far" in run.out, run
    assert kim_broker("--check", "-c", world.config).out == run.out


def _bad_config(world, tmp_path, change):
    text = read(world.config)
    path = tmp_path / "bad.cfg"
    path.write_text(change(text))
    return str(path)


BAD_CONFIGS = {
    # kim.cfg(5) DESCRIPTION: unknown sections and keys are errors
    "unknown section": (lambda t: t + "bogus\n    x = 1\n", "bogus"),
    # operations.md §8: an unknown key inside an orgs entry is an error (sign_kye)
    "misspelt orgs key": (lambda t: t.replace("role = agency", 'role = agency\n'
                                              '        sign_kye = "x"', 1), "sign_kye"),
    # kim-broker(8) --check: "every section and the policy file it names"
    "missing policy": (lambda t: t.replace(os.path.abspath(POLICY), "/nonexistent/policy.cfg"),
                       "/nonexistent/policy.cfg"),
    # kim.cfg(5) orgs public_key: CURVE public key (Z85, 40 characters)
    "bad public key": (lambda t: t.replace('public_key = "', 'public_key = "xx', 1),
                       "public_key"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_broker_check_bad_config(world, tmp_path, case):
    # kim-broker(8) --check: exit 2 when not valid; operations.md §1 "names ... the key"
    change, named = BAD_CONFIGS[case]
    path = _bad_config(world, tmp_path, change)
    run = kim_broker("--check", "--config", path)
    assert run.rc == 2 and named in run.err, run


def test_broker_check_invalid_policy_file(world, tmp_path):
    # kim-broker(8) --check validates the policy file the configuration names: exit 2
    policy = tmp_path / "policy.cfg"
    policy.write_text("rules\n    P1\n        decision = alow\n")
    path = _bad_config(world, tmp_path, lambda t: t.replace(os.path.abspath(POLICY), str(policy)))
    run = kim_broker("--check", "--config", path)
    assert run.rc == 2 and "decision" in run.err, run


def test_broker_missing_config_file(tmp_path):
    # kim-broker(8) EXIT STATUS 2 on a configuration error (--config FILE that is not there)
    for args in (["--check", "--config"], ["--config"]):
        run = kim_broker(*args, tmp_path / "none.cfg")
        assert run.rc == 2 and "none.cfg" in run.err, run


def test_broker_serving_with_a_bad_config(world, tmp_path):
    # kim-broker(8) EXIT STATUS 2 on a configuration error (also without --check)
    path = _bad_config(world, tmp_path, BAD_CONFIGS["unknown section"][0])
    run = kim_broker("--config", path, timeout=60)
    assert run.rc == 2 and "bogus" in run.err, run


def test_broker_cannot_start(world, tmp_path):
    # kim-broker(8) EXIT STATUS 1 when the broker cannot start: a data folder that is a
    # file; a second broker on the same folder (operations.md §5: "is in use: another
    # broker holds …/broker.lock")
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    run = kim_broker("--config", world.config, "--data", afile, "--bind",
                     "ipc://%s/x.sock" % tmp_path, timeout=60)
    assert run.rc == 1, run
    run = kim_broker("--config", world.config, "--bind", "ipc://%s/y.sock" % tmp_path,
                     timeout=60)
    assert run.rc == 1 and "in use" in run.err, run
    assert kim_as(world, "jc.rheine", "status").rc == 0       # the first one still serves


@pytest.mark.parametrize("secret", ["broker.cert_secret", "broker.sign_secret"])
def test_broker_refuses_readable_secret_keys(second, secret, tmp_path):
    # README "Keys, roles and revocation" / "Audit": the broker refuses to start if its
    # secret key file (or broker.sign_secret) is readable by others; kim-broker(8) EXIT
    # STATUS 1 when the broker cannot start
    data = str(tmp_path / "data")
    shutil.copytree(second["data"], data)
    os.chmod(os.path.join(data, "keys", secret), 0o644)
    b = second["broker"]
    run = kim_broker("--config", b.config, "--data", data, "--bind",
                     "ipc://%s/z.sock" % tmp_path, timeout=60)
    assert run.rc == 1 and secret in run.err, run


def test_broker_first_start_makes_its_keys(second):
    # kim-broker(8) DESCRIPTION: on its first start the broker makes its key pair in
    # DATA/keys (mode 0600); FILES: broker.cert, broker.cert_secret, broker.sign_secret,
    # broker.sign.pub. operations.md §2: the secret files 0600.
    keys = second["keys"]
    assert set(keys) == {"broker.cert", "broker.cert_secret", "broker.sign_secret",
                         "broker.sign.pub"}, keys
    assert keys["broker.cert_secret"] == 0o600 and keys["broker.sign_secret"] == 0o600, keys


def test_broker_data_and_bind_override_the_config(second):
    # kim-broker(8) OPTIONS: --data overrides broker/data, --bind overrides broker/bind
    assert second["jc_status"].rc == 0, second["jc_status"]
    assert not second["config_data_keys"] and not second["config_bind_sock"]


def test_broker_logs_logfmt_on_stderr_and_debug_with_verbose(second):
    # operations.md §1: log lines are logfmt events, one per line, on stderr; level debug
    # only with --verbose. kim-broker(8) -v, --verbose: debug logging.
    assert second["stdout"] == "", second["stdout"]
    lines = second["stderr"].splitlines()
    assert lines and all(LOGFMT.match(line) for line in lines), [
        line for line in lines if not LOGFMT.match(line)]
    assert any(" level=debug " in line for line in lines)
    assert not SANITIZER.search(second["stderr"])


def test_broker_without_verbose_logs_no_debug(world, story):
    debug = [line for line in read(world.log_path).splitlines() if " level=debug " in line]
    assert debug == []


def test_link_keys_are_logged_as_documented(world):
    key = public_key_of(world.broker_cert)
    # README "Connecting two districts" 1 and 3, operations.md §5: `grep module=link`
    lines = [line for line in read(world.log_path).splitlines() if "module=link" in line]
    assert any("this broker's keys for its peers: public_key = " in line and key in line
               for line in lines), lines


def test_link_keys_are_logged_at_start(world):
    # README "Connecting two districts" 1 / kim.cfg(5) peers sign_key: a broker logs its
    # own two keys at start once it has a peer; public-key as in <data>/keys/broker.cert
    key = public_key_of(world.broker_cert)
    assert any("this broker's keys for its peers" in line and key in line and "sign_key" in line
               for line in read(world.log_path).splitlines())


def test_sighup_reloads_the_registry(second):
    # kim-broker(8) SIGNALS SIGHUP: re-read the registry; keys added take effect at once.
    # An invalid file changes nothing; the log says why.
    assert second["aa_before"].rc == 2, second["aa_before"]
    assert second["aa_after"].rc == 0, second["aa_after"]
    assert second["alive_after_bad_reload"]
    assert second["aa_after_bad"].rc == 0, second["aa_after_bad"]
    assert "colour" in second["stderr"]


def test_sigint_stops_cleanly(second):
    # kim-broker(8) SIGNALS SIGINT: stop cleanly; EXIT STATUS 0 on a clean stop
    assert second["rc"] == 0, second["stderr"][-2000:]


def test_sigterm_under_load_keeps_every_receipt(tmp_path):
    # kim-broker(8) SIGNALS SIGTERM: stop cleanly, the open batch committed or abandoned,
    # never half written; EXIT STATUS 0. README "Durable": a RECEIPT means the message is
    # in the log. kim(1) EXIT STATUS 2 once the broker is gone.
    b = TestBroker(BROKER, POLICY, {"jc.rheine": "agency", "soz.rheine": "agency"},
                   folder=str(tmp_path / "load"))
    b.start()
    try:
        line = {"type": "REFERRAL", "recipient": "soz.rheine", "case_id": "C-L",
                "subject": "p-load", "purpose": "benefits", "payload": "x" * 200,
                "legal_basis": {"kind": "statute", "citation": STATUTE}}
        source = tmp_path / "in.jsonl"
        source.write_text("".join(json.dumps(dict(line, referral_id="L-%d" % i)) + "\n"
                                  for i in range(3000)))
        out_path, err_path = tmp_path / "out", tmp_path / "err"
        with open(source) as i, open(out_path, "w") as o, open(err_path, "w") as e:
            sender = subprocess.Popen([KIM, "send", "--json", "--timeout", "1000"]
                                      + conn(b, "jc.rheine"), stdin=i, stdout=o, stderr=e)
        try:
            wait_for(lambda: os.path.getsize(out_path) > 0, "the first receipt")
            b.process.send_signal(signal.SIGTERM)
            rc = b.process.wait(60)
            sender.wait(60)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        b.process = None
        b._log.close()
        assert rc == 0, b.log_tail()
        assert sender.returncode in (0, 2), read(err_path)
        assert not SANITIZER.search(read(err_path))
        receipted = [json.loads(x)["seq"] for x in read(out_path).splitlines() if '"seq"' in x]
        assert receipted
        verify = kim("audit", "verify", "--data", b.data)
        assert verify.rc == 0, verify
        logged = {r["seq"] for r in kim("audit", "replay", "--data", b.data, "--type",
                                        "REFERRAL").json_lines()}
        assert set(receipted) <= logged
        assert not SANITIZER.search(read(b.log_path))
    finally:
        b.cleanup()


# --- kim-broker --backup and restore (kim-broker(8) OPTIONS, BACKUP AND RESTORE) --

def test_backup_while_serving(world, backup):
    # kim-broker(8) --backup DIR: copies the data folder while the broker serves, the keys
    # with their modes; prints the last sequence number in the copy; exit 0.
    # operations.md §6: `kim audit verify --data BACKUP` verifies a backup.
    run = backup["run"]
    assert run.rc == 0, run
    numbers = [int(n) for n in re.findall(r"\d+", run.out)]
    assert backup["head"] in numbers, run
    for name in ("broker.cert_secret", "broker.sign_secret"):
        assert mode(os.path.join(backup["dir"], "keys", name)) == \
            mode(os.path.join(world.data, "keys", name)) == 0o600
    verify = kim("audit", "verify", "--data", backup["dir"])
    assert verify.rc == 0 and verify.out.startswith("OK: records 1.."), verify


def test_backup_refuses_an_existing_target(world, backup, tmp_path):
    # kim-broker(8) --backup: DIR must not exist; EXIT STATUS 1 when a backup failed.
    # SYNOPSIS: --backup DIR [--config FILE | --data DATA]
    run = kim_broker("--config", world.config, "--backup", backup["dir"], timeout=120)
    assert run.rc == 1 and run.err.strip(), run
    run = kim_broker("--data", world.data, "--backup", tmp_path / "by-data", timeout=120)
    assert run.rc == 0 and os.path.isdir(tmp_path / "by-data" / "keys"), run


def test_recover(world, backup, tmp_path):
    # kim-broker(8) --recover: opens the store of a stopped broker as the broker does,
    # closes it cleanly, prints whether there was anything to replay and the log's last
    # sequence number, exit 0; "It fails when a broker serves on the folder"; SYNOPSIS
    # --recover [--config FILE | --data DATA]; EXIT STATUS 1 when a recovery failed.
    data = str(tmp_path / "stopped")
    shutil.copytree(backup["dir"], data)
    run = kim_broker("--data", data, "--recover", timeout=120)
    assert run.rc == 0 and "nothing to replay" in run.out, run
    assert int(re.findall(r"seq (\d+)", run.out)[-1]) == backup["head"], run
    run = kim_broker("--config", world.config, "--recover", timeout=120)
    assert run.rc == 1 and "a broker serves on this folder" in run.err, run
    run = kim_broker("--data", str(tmp_path / "none"), "--recover", timeout=120)
    assert run.rc == 1 and "no store here" in run.err, run
    assert not os.path.exists(str(tmp_path / "none"))


def test_restore_names_the_log_head_and_keeps_dedup(world, story, backup, tmp_path):
    # kim-broker(8) BACKUP AND RESTORE: the broker's log names the restored head
    # ("log head N"); the same msg_id is safe to resend (operations.md §7: answered as a
    # duplicate with its first sequence number)
    data = str(tmp_path / "restored")
    shutil.copytree(backup["dir"], data)
    endpoint = "ipc://%s/restored.sock" % tmp_path
    err_path = str(tmp_path / "restored.log")
    with open(err_path, "wb") as err:
        p = subprocess.Popen([BROKER, "--config", world.config, "--data", data,
                              "--bind", endpoint], stdout=err, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(str(tmp_path / "restored.sock")) or p.poll() is not None,
                 "the restored broker")
        assert p.poll() is None, read(err_path)
        assert "log head %d" % backup["head"] in read(err_path), read(err_path)
        first = story["grant"].json_lines()[0]
        again = kim("send", "--json", "--endpoint", endpoint, "--broker-key",
                    os.path.join(data, "keys", "broker.cert"),
                    "--cert", world.cert_secret("kim.rheine"),
                    stdin=json.dumps(dict(GRANT, msg_id=first["msg_id"])) + "\n")
        assert again.rc == 0, again
        (line,) = again.json_lines()
        assert line["seq"] == first["seq"] and line["dup"] is True, again
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
    assert rc == 0, read(err_path)
