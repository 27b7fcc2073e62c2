"""README.md as a new user follows it by hand, what it says of the broker: an
outside conformance check.

Written from README.md and the documents it points to (deploy/agent.cfg,
deploy/kim.cfg, docs/man/kim.cfg.5.scd, proto/PROTOCOL.md where the README
sends the reader there), run against the real programs. Sections checked:
"What the broker promises", "Running the broker yourself", "Keys, roles and
revocation". The README's other sections are checked in
test_readme_walkthrough_spec.py and test_readme_lawful_spec.py; not at all:
"The two commands", "Connecting two districts", "Performance".

The state the README assumes is made by hand as kim_readme.py describes, or
here where a section asks for a broker of its own. Then the README's
commands run literally, paths and ports substituted. Every expectation cites
its README section; where a program does otherwise the test is a strict
xfail that says both.
"""
import base64
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

import kim_readme
from kim_readme import (AGENT, BROKER, KIM, LAB_ORGS, POLICY, PYDIR, ROOT, STATUTE, Broker,
                        consent, free_port, now_ms, public_key, receipt, refusal, run,
                        statute_referral, timer_mail, wait_for)

#   kim_readme's fixtures, bound here for pytest to find them (module scope:
#   this file starts its own brokers once); assigned rather than imported, as an
#   import would be redefined by every test that takes one as an argument.
programs = kim_readme.programs
tmp_root = kim_readme.tmp_root
lab = kim_readme.lab
timers = kim_readme.timers


# === What the broker promises ====================================================

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
