"""README.md as a new user follows it by hand, its walkthroughs: an outside
conformance check.

Written from README.md and the documents it points to (docs/agent.md,
deploy/policy.cfg where the README sends the reader there), run against the
real programs. Sections checked: "Your first referral", "Connecting an
office's system: kim-agent", "Python client". The README's other sections
are checked in test_readme_broker_spec.py and test_readme_lawful_spec.py;
not at all: "The two commands", "Connecting two districts", "Performance".

The state the README assumes (`build/release/...`, the demo folder of
`./deploy/run.sh`) is made by hand as kim_readme.py describes. Then the
README's commands run literally, paths and ports substituted. Every
expectation cites its README section; where a program does otherwise the
test is a strict xfail that says both.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

import kim_readme
from kim_readme import (AGENT, EXAMPLES, PYDIR, README_CONSENT, README_REFERRAL, ROOT, STATUTE,
                        Agent, Broker, broker_files_holding, consent, curl, http_call, receipt,
                        refusal, run, wait_for)

#   kim_readme's fixtures, bound here for pytest to find them (module scope:
#   this file starts its own demo once); assigned rather than imported, as an
#   import would be redefined by every test that takes one as an argument.
programs = kim_readme.programs
tmp_root = kim_readme.tmp_root
demo = kim_readme.demo
story = kim_readme.story


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
