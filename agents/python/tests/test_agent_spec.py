"""kim-agent against its written contract, read as an office's IT department
would read it: docs/agent.md (the guide), agents/agent/openapi.json (every
route), kim-agent(8) (docs/man/kim-agent.8.scd), the sample deploy/agent.cfg
and README.md's walkthrough, and for reason codes proto/PROTOCOL.md §10.
Written from the documentation alone.

One broker (the shipped policy) with five agencies: the office under test,
soz.rheine, runs a kim-agent for the whole module; aa.rheine and jc.rheine
(jc signs its messages) are other offices speaking through the Python
client; ja.rheine runs a second agent with a webhook; alb.rheine lends its
key to an agent configured for another organisation. All three social-code
bodies may exchange data under rule P1 (`SGB X §69(1)1`). Agents listen on
a port the kernel chooses (http/port = 0, http/port_file). Every wait is a
bounded poll; every process and folder is removed at the end.

What tests/agent/*.c cover already is not repeated here (the OpenAPI schema
of every answer, path tricks and garbage bytes, chunked bodies, kill -9,
broker restarts, the folder bridge, TLS)."""
import base64
import hashlib
import hmac
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

import kim
import kim_headers
from conftest import ROOT, _program, new_broker
from kim_agentproc import AgentProc, write_secret
from kim_inbox import Inbox, WAIT, state_of, uid, wait_state

SOZ, AA, JC, JA, ALB = "soz.rheine", "aa.rheine", "jc.rheine", "ja.rheine", "alb.rheine"
ORGS = {SOZ: "agency", AA: "agency", JC: "agency", JA: "agency", ALB: "agency"}
MAX_BODY = 65536

#   proto/PROTOCOL.md §10 (wire codes) and include/kim/kim_error.h (9xx)
CODES = {"MALFORMED": 100, "BAD_TYPE": 101, "MISSING_FIELD": 102, "TOO_LONG": 103,
         "BAD_UTF8": 104, "BAD_ID": 105, "BAD_VALUE": 110, "UNKNOWN_FIELD": 111,
         "TOO_LARGE": 112, "UNKNOWN_RECIPIENT": 203, "FORBIDDEN": 205, "STORE_FULL": 301,
         "BAD_STATE": 400, "NOT_PARTY": 401, "UNKNOWN_REFERRAL": 402, "UNKNOWN_CASE": 403,
         "NOT_LEAD": 405, "POLICY_DENY": 500, "NO_BASIS": 501, "CONSENT_UNKNOWN": 502,
         "CONSENT_REVOKED": 503, "CONSENT_SCOPE": 504, "CONSENT_EXPIRED": 505,
         "BAD_SIGNATURE": 211, "NOT_FOUND": 905}


def now_ms():
    return int(time.time() * 1000)


def agent_bin():
    return _program("KIM_AGENT_BIN", "agents/agent/kim-agent")


def is_error(reply, status, name=None):
    """docs/agent.md "Errors": every error is a JSON object with kim's reason
    code (`error` its name, `code` its number), `text` and `path`."""
    assert reply.status == status, reply
    body = reply.json
    assert isinstance(body, dict) and set(body) == {"error", "code", "text", "path"}, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    if body["error"] in CODES:
        assert body["code"] == CODES[body["error"]], body
    if name is not None:
        assert body["error"] == name, body
    return body


def referral_body(rid, case_id, recipient=AA, **extra):
    body = kim_headers.referral(rid, case_id, recipient=recipient)
    body.update({"msg_id": uid("M"), "payload": '{"need": "support"}'})
    body.update(extra)
    return body


class Net:
    pass


@pytest.fixture(scope="module")
def net():
    n = Net()
    n.broker = new_broker(ORGS).start()
    n.agent = AgentProc(agent_bin(), n.broker, SOZ, sections={"http": {"max_body": MAX_BODY}},
                        tokens={"case_system": "c" * 40 + os.urandom(8).hex(),
                                "spreadsheet": "s" * 40 + os.urandom(8).hex()})
    n.clients = []
    try:
        n.agent.start()
        for org in (AA, JC):
            c = kim.Client(n.broker.endpoint, n.broker.broker_cert, n.broker.cert_secret(org),
                           timeout=WAIT)
            c.connect()
            n.clients.append(c)
        n.aa, n.jc = Inbox(n.clients[0]), Inbox(n.clients[1])
        yield n
    finally:
        for c in n.clients:
            c.close()
        rc = n.agent.stop()
        log = n.agent.log_tail()
        n.agent.cleanup()
        n.broker.finish()
    # kim-agent(8) EXIT STATUS: 0 after a clean stop (SIGTERM)
    assert rc == 0, log


def outbox_final(agent, msg_id, timeout=WAIT):
    r = agent.wait("/v1/outbox/" + msg_id,
                   lambda j: j["status"] in ("receipted", "refused"), timeout)
    assert r.status == 200, r
    return r.json


def posted(agent, body, path="/v1/messages"):
    r = agent.call("POST", path, body)
    assert r.status == 202, r
    return r.json


def inbox_pages(agent, after=0, limit=1000, **query):
    """Every delivery after `after`, following next_after (openapi GET /v1/inbox)."""
    items = []
    while True:
        q = "&".join(["after=%d" % after, "limit=%d" % limit] +
                     ["%s=%s" % kv for kv in query.items()])
        r = agent.call("GET", "/v1/inbox?" + q)
        assert r.status == 200, r
        items += r.json["items"]
        if not r.json["items"]:
            return items, r.json["next_after"]
        after = r.json["next_after"]


def delivered_to_agent(agent, timeout=WAIT, **match):
    """The agent's inbox items whose fields equal `match`, once there are any."""
    deadline = time.monotonic() + timeout
    while True:
        items, _ = inbox_pages(agent)
        found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def view(agent, rid, pred, timeout=WAIT):
    r = agent.wait("/v1/referrals/" + rid, pred, timeout)
    assert r.status == 200, r
    return r.json


#   --- the program: --help, --routes, --version, usage (kim-agent(8) OPTIONS) ---

def test_help_names_every_documented_option():
    """kim-agent(8) SYNOPSIS/OPTIONS: --help prints the usage, exit 0."""
    p = subprocess.run([agent_bin(), "--help"], capture_output=True, timeout=30)
    assert p.returncode == 0
    text = (p.stdout + p.stderr).decode()
    for option in ("--config", "--check", "--verbose", "--add-user", "--role", "staff",
                   "readonly", "--routes", "--version", "--help"):
        assert option in text, option


def test_routes_are_the_guides_route_table():
    """docs/agent.md "The HTTP API": `kim-agent --routes` lists the routes of the table."""
    p = subprocess.run([agent_bin(), "--routes"], capture_output=True, timeout=30)
    assert p.returncode == 0
    norm = lambda route: re.sub(r"\{[^}]*\}", "{}", route.strip())  # noqa: E731
    served = {norm(line) for line in p.stdout.decode().splitlines() if line.strip()}
    with open(os.path.join(ROOT, "docs", "agent.md"), encoding="utf-8") as f:
        table = {norm(m) for m in re.findall(r"^\| `((?:GET|POST|DELETE) /v1/[^`]*)` \|", f.read(),
                                             re.M)}
    assert len(table) == 23
    assert served == table


def test_version_and_usage_errors():
    """kim-agent(8): --version prints the version (exit 0); EXIT STATUS 2 for a usage error."""
    p = subprocess.run([agent_bin(), "--version"], capture_output=True, timeout=30)
    assert p.returncode == 0 and re.search(rb"\d+\.\d+", p.stdout + p.stderr)
    for args in ([], ["--no-such-option"], ["--config"]):
        p = subprocess.run([agent_bin()] + args, capture_output=True, timeout=30)
        assert p.returncode == 2, args


def test_add_user_takes_a_10_to_256_character_password_from_stdin(cfg_broker):
    """docs/agent.md "Web inbox": --add-user reads the password (10 to 256 characters)
    from stdin; only its argon2id hash is written into web/users (mode 0600); a role
    is staff or readonly (kim-agent(8): 2 for a usage error)."""
    a = AgentProc(agent_bin(), cfg_broker, SOZ)
    users = os.path.join(a.folder, "agent.users")
    a.sections["web"] = {"users": users}
    a.write_config()
    try:
        add = lambda name, role, pw: a.run("--config", a.config, "--add-user", name,  # noqa
                                           "--role", role, stdin=(pw + "\n").encode())[0]
        assert add("anna", "staff", "p" * 9) != 0
        assert add("anna", "staff", "p" * 257) != 0
        assert add("anna", "admin", "p" * 12) == 2
        assert not os.path.exists(users) or "anna" not in open(users).read()
        assert add("anna", "staff", "p" * 10) == 0
        assert add("rolf", "readonly", "q" * 256) == 0
        assert os.stat(users).st_mode & 0o777 == 0o600
        text = open(users).read()
        assert "anna" in text and "rolf" in text and "$argon2id$" in text
        assert "p" * 10 not in text and "q" * 20 not in text
    finally:
        a.cleanup()


#   --- configuration errors (deploy/agent.cfg, kim-agent(8) --check) -----------

@pytest.fixture(scope="module")
def cfg_broker():
    """A broker that is never started: its folder gives key files for --check."""
    b = new_broker(ORGS)
    os.makedirs(os.path.dirname(b.broker_cert), exist_ok=True)
    shutil.copy(os.path.join(b.keys, SOZ + ".cert"), b.broker_cert)
    yield b
    b.cleanup()


def _bad_cert(a):
    path = os.path.join(a.folder, "open.cert_secret")
    shutil.copy(a.sections["agent"]["cert"], path)
    os.chmod(path, 0o644)
    return {"agent": {"cert": path}}, "agent/cert"


def _short_token(a):
    write_secret(a.tokens_path, "case_system %s\n" % ("x" * 31))
    return {}, "http/tokens"


def _secret(a, text, mode):
    path = write_secret(os.path.join(a.folder, "webhook.secret"), text, mode)
    return {"webhook": {"url": "http://127.0.0.1:9/hook", "secret_file": path}}, \
        "webhook/secret_file"


CONFIG_ERRORS = {
    # deploy/agent.cfg agent/cert: "mode 0600; the agent refuses a key group or others may read"
    "cert-readable-by-others": _bad_cert,
    # deploy/agent.cfg http/tokens: "a token of 32..256 characters"
    "token-too-short": _short_token,
    # docs/agent.md "Webhooks": secret_file "mode 0600, 16 to 256 bytes of text"
    "webhook-secret-too-short": lambda a: _secret(a, "k" * 15, 0o600),
    "webhook-secret-readable": lambda a: _secret(a, "k" * 40, 0o644),
    # deploy/agent.cfg webhook/url: "http:// or https://"
    "webhook-url-not-http": lambda a: (
        {"webhook": {"url": "ftp://127.0.0.1/x",
                     "secret_file": write_secret(os.path.join(a.folder, "w.secret"),
                                                 "k" * 40)}}, "webhook/url"),
    # deploy/agent.cfg folder: "Each folder must exist"
    "folder-missing": lambda a: ({"folder": {"outbox": os.path.join(a.folder, "none")}},
                                 "folder/outbox"),
    # deploy/agent.cfg web/users: "Required with enabled = 1"
    "web-without-users": lambda a: ({"web": {"enabled": 1}}, "web/users"),
    # deploy/agent.cfg web/lang: "de or en"
    "web-lang": lambda a: ({"web": {"lang": "fr"}}, "web/lang"),
    # docs/agent.md "Setting it up": set agent/org ...
    "no-org": lambda a: ({"agent": {"org": None}}, "agent/org"),
    # deploy/agent.cfg broker/key_file: "give one of the two"
    "no-broker-key": lambda a: ({"broker": {"key_file": None}}, "broker/key"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_check_names_the_config_error(cfg_broker, case):
    """kim-agent(8) --check: exit 0 valid, 2 not; the message names the key at fault."""
    a = AgentProc(agent_bin(), cfg_broker, SOZ)
    try:
        rc, out = a.run("--check", "--config", a.config)
        assert rc == 0, out
        sections, key = CONFIG_ERRORS[case](a)
        for name, keys in sections.items():
            a.sections.setdefault(name, {}).update(keys)
        a.write_config()
        rc, out = a.run("--check", "--config", a.config)
        assert rc == 2, out
        assert key in out, out
    finally:
        a.cleanup()


def test_non_loopback_bind_without_tls_refuses_to_start(cfg_broker):
    """docs/agent.md "Setting it up": another address without http/tls_cert and
    tls_key: "the agent refuses to start" (kim-agent(8): exit 2, configuration error)."""
    a = AgentProc(agent_bin(), cfg_broker, SOZ, sections={"http": {"bind": "0.0.0.0"}})
    try:
        p = subprocess.run([agent_bin(), "--config", a.config], capture_output=True,
                           timeout=30)
        assert p.returncode == 2
        assert b"http/bind" in p.stdout + p.stderr
        assert not os.path.exists(a.port_file)
    finally:
        a.cleanup()


def test_agent_with_another_organisations_key_stops(net):
    """deploy/agent.cfg agent/org: "The agent stops if the broker knows its key as another"."""
    a = AgentProc(agent_bin(), net.broker, SOZ,
                  sections={"agent": {"cert": net.broker.cert_secret(ALB)}})
    try:
        a.spawn()
        try:
            rc = a.process.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc in (1, 2), (rc, a.log_tail())     # kim-agent(8) EXIT STATUS
        assert ALB in a.log_text() and SOZ in a.log_text()
    finally:
        a.cleanup()


#   --- authentication (docs/agent.md "Setting it up"; openapi security) --------

def _sample_routes():
    with open(os.path.join(ROOT, "agents", "agent", "openapi.json"), encoding="utf-8") as f:
        spec = json.load(f)
    for path, ops in spec["paths"].items():
        concrete = re.sub(r"\{seq\}", "1", path)
        concrete = re.sub(r"\{[^}]*\}", "x-1", concrete)
        for method in ops:
            if method in ("get", "post", "delete"):
                yield method.upper(), concrete


def test_every_route_needs_a_valid_bearer_token(net):
    """docs/agent.md: "Every request needs Authorization: Bearer <token>"; the
    Errors table: 401 for no token or a wrong one (FORBIDDEN), on every route."""
    a = net.agent
    routes = list(_sample_routes())
    assert len(routes) == 23
    for method, path in routes:
        body = {} if method == "POST" else None
        for token, extra in ((False, None), ("x" * 64, None), (False, {
                "Authorization": "Basic " + base64.b64encode(b"u:" + a.token.encode()).decode()}),
                (a.token[:-1], None), (a.token + "x", None)):
            r = a.call(method, path, body, token=token, headers=extra)
            is_error(r, 401, "FORBIDDEN")


def test_each_client_systems_token_is_accepted(net):
    """docs/agent.md step 2: a token per client system, one `name token` per line."""
    for token in net.agent.tokens.values():
        r = net.agent.call("GET", "/v1/status", token=token)
        assert r.status == 200, r


def test_status_names_the_office_and_the_session(net):
    """docs/agent.md table: GET /v1/status: organisation, session open, counts."""
    r = net.agent.call("GET", "/v1/status")
    assert r.status == 200
    s = r.json
    assert s["org"] == SOZ and s["connected"] is True and s["sessions"] >= 1
    for key in ("queued", "inbox", "unhandled"):
        assert isinstance(s[key], int) and s[key] >= 0


#   --- sending: idempotency by msg_id (docs/agent.md "Give every message ...") --

def test_same_message_twice_is_200_with_the_record_and_sent_once(net):
    """docs/agent.md: post the same message again: "200 with the record it already
    has, and the message is sent once"; outbox: receipted with the broker's seq."""
    a, rid = net.agent, uid("R")
    body = referral_body(rid, uid("C"))
    first = posted(a, body)
    assert (first["msg_id"], first["type"], first["recipient"], first["referral_id"]) == \
        (body["msg_id"], "REFERRAL", AA, rid)
    assert first["status"] in ("queued", "receipted")
    again = a.call("POST", "/v1/messages", body)
    assert again.status == 200, again
    assert again.json["msg_id"] == body["msg_id"]
    assert again.json["accepted_at"] == first["accepted_at"]
    rec = outbox_final(a, body["msg_id"])
    assert rec["status"] == "receipted" and isinstance(rec["seq"], int)
    (d,) = net.aa.wait(referral_id=rid)
    assert d.hdr["msg_id"] == body["msg_id"] and d.payload == body["payload"].encode()
    assert d.seq == rec["seq"]          # the receipt's seq is the log's, delivered as such
    a.call("POST", "/v1/messages", body)    # and once more after the receipt
    net.aa.settle(0.3)
    assert len(net.aa.where(referral_id=rid)) == 1


def test_same_msg_id_for_another_message_is_409(net):
    """docs/agent.md: "The same msg_id with a different message is 409" (openapi: BAD_VALUE)."""
    a = net.agent
    body = referral_body(uid("R"), uid("C"))
    posted(a, body)
    other = dict(body, payload="something else")
    is_error(a.call("POST", "/v1/messages", other), 409, "BAD_VALUE")
    rec = a.call("GET", "/v1/outbox/" + body["msg_id"]).json
    assert rec["referral_id"] == body["referral_id"]


def test_a_msg_id_reused_on_another_route_is_409(net):
    """openapi: 409 on every sending route: "The msg_id was used for a different
    message (BAD_VALUE)"; GET /v1/reports of a msg_id that asked for none is 404."""
    a, rid = net.agent, uid("R")
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"x")
    delivered_to_agent(a, referral_id=rid)
    body = referral_body(uid("R"), uid("C"))
    posted(a, body)
    taken = body["msg_id"]
    for path, req in (("/v1/referrals/%s/answer" % rid, {"answer": "accept"}),
                      ("/v1/consents", consent_body(uid("C"), uid("G"), "p-1")),
                      ("/v1/consents/%s/revoke" % uid("G"), {}),
                      ("/v1/subjects/p-1/report", {}),
                      ("/v1/subjects/p-1/erasure", {})):
        is_error(a.call("POST", path, dict(req, msg_id=taken)), 409, "BAD_VALUE")
    is_error(a.call("GET", "/v1/reports/" + taken), 404, "NOT_FOUND")
    assert a.call("GET", "/v1/outbox/" + taken).json["type"] == "REFERRAL"


def test_without_msg_id_every_post_is_a_new_message(net):
    """docs/agent.md: "Without a msg_id the agent makes one, and a retry becomes a
    second message"."""
    a = net.agent
    body = referral_body(uid("R"), uid("C"))
    del body["msg_id"]
    first = posted(a, body)
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", first["msg_id"])
    second = a.call("POST", "/v1/messages", dict(body, referral_id=uid("R")))
    assert second.status == 202 and second.json["msg_id"] != first["msg_id"]


def test_msg_id_is_1_to_64_of_the_id_characters(net):
    """docs/agent.md: msg_id is "1..64 of A-Z a-z 0-9 . _ : -"; 400 names the field."""
    a = net.agent
    ok = ("A-z.0_9:" + "x" * 64)[:64]
    assert a.call("POST", "/v1/messages", referral_body(uid("R"), uid("C"), msg_id=ok)).status \
        == 202
    for bad in ("x" * 65, "", "a/b", "a b", "ä"):
        r = a.call("POST", "/v1/messages", referral_body(uid("R"), uid("C"), msg_id=bad))
        assert is_error(r, 400)["path"] == "msg_id", (bad, r)
    r = a.call("POST", "/v1/messages", referral_body("r" * 65, uid("C")))
    assert is_error(r, 400)["path"] == "referral_id"
    # GET /v1/outbox/{msg_id}: "The msg_id is not an id (BAD_ID)"; unknown: 404 NOT_FOUND
    is_error(a.call("GET", "/v1/outbox/" + "y" * 65), 400, "BAD_ID")
    is_error(a.call("GET", "/v1/outbox/" + uid("none")), 404, "NOT_FOUND")


def test_header_limits_of_the_protocol_are_400_at_the_post(net):
    """docs/agent.md "Errors": 400 for "a header the protocol refuses", naming the
    field; the limits are PROTOCOL.md §9's (note ≤ 280 bytes, sender_case_ref ≤ 64,
    citation ≤ 128, subject an id, categories without duplicates, priority low|normal|
    high); README "Authentic": a header that claims another sender is refused."""
    a = net.agent
    ok = lambda **f: a.call("POST", "/v1/messages",  # noqa: E731
                            referral_body(uid("R"), uid("C"), **f))
    for fields in ({"note": "n" * 280}, {"note": "ü" * 140}, {"sender_case_ref": "s" * 64},
                   {"legal_basis": {"kind": "statute", "citation": "c" * 128}},
                   {"priority": "high"},
                   # README and PROTOCOL.md §9 name category `contact`; openapi's
                   # MessageRequest.categories enum lacks it (the docs disagree)
                   {"categories": ["contact"]}):
        assert ok(**fields).status == 202, fields
    for fields, name, path in (({"note": "n" * 281}, "TOO_LONG", "note"),
                               ({"note": "ü" * 141}, "TOO_LONG", "note"),
                               ({"sender_case_ref": "s" * 65}, "TOO_LONG", "sender_case_ref"),
                               ({"legal_basis": {"kind": "statute", "citation": "c" * 129}},
                                "TOO_LONG", "legal_basis.citation"),
                               ({"subject": "Max Mustermann"}, "BAD_ID", "subject"),
                               ({"categories": ["art9", "art9"]}, "BAD_VALUE", None),
                               ({"priority": "urgent"}, "BAD_VALUE", "priority"),
                               ({"sender": AA}, None, "sender")):
        err = is_error(ok(**fields), 400, name)
        assert path is None or err["path"] == path, (fields, err)
        assert err["path"].startswith(next(iter(fields))), (fields, err)


def test_a_header_the_protocol_refuses_is_400_naming_the_field(net):
    """docs/agent.md "Errors", its example: {"error":"MISSING_FIELD","code":102,
    "text":"required field is missing at referral_id","path":"referral_id"}."""
    a = net.agent
    body = referral_body(uid("R"), uid("C"))
    del body["referral_id"]
    err = is_error(a.call("POST", "/v1/messages", body), 400, "MISSING_FIELD")
    assert err == {"error": "MISSING_FIELD", "code": 102,
                   "text": "required field is missing at referral_id", "path": "referral_id"}
    assert a.call("GET", "/v1/outbox/" + body["msg_id"]).status == 404
    is_error(a.call("POST", "/v1/messages", dict(body, type="REFERAL", referral_id="r")), 400)


def test_broker_refusal_comes_in_the_outbox_record_not_the_post(net):
    """docs/agent.md "Errors": refusals by the broker "are in the outbox record, not
    in the answer to the post"; GET /v1/outbox: refused with error, code, text, path."""
    a = net.agent
    body = referral_body(uid("R"), uid("C"),
                         legal_basis={"kind": "consent", "consent_id": uid("G-none")})
    assert posted(a, body)["status"] in ("queued", "refused")
    rec = outbox_final(a, body["msg_id"])
    assert rec["status"] == "refused"
    assert (rec["error"], rec["code"]) == ("CONSENT_UNKNOWN", 502), rec
    assert rec["text"] and "path" in rec
    # refused by the agent itself: no key to seal to (README "Sealed payloads")
    lost = referral_body(uid("R"), uid("C"), recipient="xx.nowhere")
    assert posted(a, lost)["status"] in ("queued", "refused")
    rec = outbox_final(a, lost["msg_id"])
    assert (rec["status"], rec["error"], rec["code"]) == ("refused", "UNKNOWN_RECIPIENT", 203)
    # the docs are silent on the view of a referral the broker refused; pinned:
    # it is not in the view (404), so it never shows as on its way
    is_error(a.call("GET", "/v1/referrals/" + body["referral_id"]), 404, "NOT_FOUND")


#   --- the inbox (docs/agent.md "Read the inbox"; openapi /v1/inbox) ------------

def test_delivery_is_listed_without_payload_and_read_with_it(net):
    """docs/agent.md table: GET /v1/inbox "without payloads"; GET /v1/inbox/{seq}:
    header, payload_base64, and payload when it is text; signature "none" unsigned."""
    a, rid, case_id = net.agent, uid("R"), uid("C")
    text = '{"need": "job search support", "umlaut": "ä"}'
    before = a.call("GET", "/v1/status").json
    receipt = net.aa.client.send(kim_headers.referral(rid, case_id, recipient=SOZ),
                                 text.encode())
    (item,) = delivered_to_agent(a, referral_id=rid)
    assert (item["seq"], item["type"], item["sender"], item["recipient"], item["case_id"]) == \
        (receipt["seq"], "REFERRAL", AA, SOZ, case_id)
    assert item["handled"] is False and item["sealed_error"] is False
    assert item["signature"] == "none"
    assert "payload" not in item and "payload_base64" not in item
    after = a.call("GET", "/v1/status").json         # openapi Status: inbox, unhandled
    assert (after["inbox"], after["unhandled"]) == (before["inbox"] + 1,
                                                     before["unhandled"] + 1)
    full = a.call("GET", "/v1/inbox/%d" % item["seq"])
    assert full.status == 200
    d = full.json
    assert d["payload"] == text and base64.b64decode(d["payload_base64"]) == text.encode()
    assert d["header"]["referral_id"] == rid and d["header"]["type"] == "REFERRAL"
    assert d["header"]["subject"] == "p-7f3a"


def test_signed_binary_delivery_is_valid_and_base64_only(net):
    """docs/agent.md: a signing sender checked against the directory: "valid";
    payload only "when it is text" (payload_base64 always)."""
    a, rid = net.agent, uid("R")
    blob = bytes(range(256)) + b"\xff\xfe"
    net.jc.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), blob)
    (item,) = delivered_to_agent(a, referral_id=rid)
    r = a.wait("/v1/inbox/%d" % item["seq"], lambda j: j["signature"] != "unchecked")
    assert r.json["signature"] == "valid" and r.json["sender"] == JC
    assert base64.b64decode(r.json["payload_base64"]) == blob
    assert "payload" not in r.json
    # openapi Header: "as on the wire (PROTOCOL.md section 9), binary fields in hex"
    hdr = r.json["header"]
    assert re.fullmatch(r"[0-9a-f]{64}", hdr["payload_hash"]), hdr
    assert re.fullmatch(r"[0-9a-f]{128}", hdr["sig"]), hdr


def test_unsealed_payload_is_kept_with_sealed_error(net):
    """docs/agent.md: a payload that does not open with the office's key (a sender
    that did not seal) "is kept as received with sealed_error: true, never dropped"."""
    a, rid = net.agent, uid("R")
    raw = b"not sealed to anybody " * 4
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), raw, seal=False)
    (item,) = delivered_to_agent(a, referral_id=rid)
    assert item["sealed_error"] is True
    d = a.call("GET", "/v1/inbox/%d" % item["seq"]).json
    assert base64.b64decode(d["payload_base64"]) == raw


def test_inbox_pages_in_seq_order_by_after_limit_and_next_after(net):
    """openapi GET /v1/inbox: seq order; limit 1..1000, default 100; page with
    after = the previous answer's next_after; 400 BAD_VALUE for bad query values."""
    a, case_id = net.agent, uid("C-PAGE")
    _, base = inbox_pages(a)
    rids = [uid("R") for _ in range(101)]
    answers = net.aa.client.send_many(
        [(kim_headers.referral(rid, case_id, recipient=SOZ), b"p") for rid in rids])
    assert all(isinstance(x, dict) for x in answers), answers
    seqs = sorted(x["seq"] for x in answers)
    deadline = time.monotonic() + 3 * WAIT
    while True:
        items, _ = inbox_pages(a, base)
        if len([i for i in items if i["case_id"] == case_id]) == 101 or \
                time.monotonic() > deadline:
            break
        time.sleep(0.1)
    ours = [i["seq"] for i in items if i["case_id"] == case_id]
    assert ours == seqs
    r = a.call("GET", "/v1/inbox?after=%d" % base)          # default limit: 100
    page = r.json["items"]
    assert len(page) == 100 and all(i["seq"] > base for i in page)
    assert [i["seq"] for i in page] == sorted(i["seq"] for i in page)
    assert r.json["next_after"] == page[-1]["seq"]
    walked, after = [], base                              # small pages, no gap, no repeat
    while True:
        r = a.call("GET", "/v1/inbox?limit=7&after=%d" % after)
        assert r.status == 200 and len(r.json["items"]) <= 7
        if not r.json["items"]:
            break
        walked += [i["seq"] for i in r.json["items"]]
        after = r.json["next_after"]
    # no repeat, no gap (other deliveries, e.g. DELIVERED notices, may come meanwhile)
    assert walked == sorted(set(walked))
    assert set(i["seq"] for i in items) <= set(walked)
    # a system polling with next_after sees what arrives next, and nothing again
    rid = uid("R")
    net.aa.client.send(kim_headers.referral(rid, case_id, recipient=SOZ), b"later")
    r = a.wait("/v1/inbox?after=%d" % after,
               lambda j: [i for i in j["items"] if i["case_id"] == case_id])
    assert [i["referral_id"] for i in r.json["items"] if i["case_id"] == case_id] == [rid]
    assert all(i["seq"] > after for i in r.json["items"])
    assert a.call("GET", "/v1/inbox?limit=1000").status == 200
    for query in ("limit=0", "limit=1001", "limit=x", "after=-1", "after=abc",
                  "handled=maybe"):
        is_error(a.call("GET", "/v1/inbox?" + query), 400, "BAD_VALUE")


def test_marking_handled_is_idempotent_and_filters(net):
    """openapi POST /v1/inbox/{seq}/handled: "Records that the local system has
    taken the delivery over; idempotent"; ?handled=true|false; the delivery stays."""
    a, rid = net.agent, uid("R")
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"x")
    (item,) = delivered_to_agent(a, referral_id=rid)
    seq = item["seq"]
    unhandled = a.call("GET", "/v1/status").json["unhandled"]
    r = a.call("POST", "/v1/inbox/%d/handled" % seq)
    assert r.status == 200 and r.json["seq"] == seq and r.json["handled"] is True
    at = r.json["handled_at"]
    assert isinstance(at, int) and at > 0
    assert a.call("GET", "/v1/status").json["unhandled"] == unhandled - 1
    again = a.call("POST", "/v1/inbox/%d/handled" % seq)
    assert again.status == 200 and again.json["handled"] is True
    assert a.call("GET", "/v1/status").json["unhandled"] == unhandled - 1
    open_items, _ = inbox_pages(a, handled="false")
    done_items, _ = inbox_pages(a, handled="true")
    assert seq not in [i["seq"] for i in open_items]
    assert seq in [i["seq"] for i in done_items]
    assert all(i["handled"] for i in done_items) and not any(i["handled"] for i in open_items)
    assert a.call("GET", "/v1/inbox/%d" % seq).json["handled"] is True
    is_error(a.call("POST", "/v1/inbox/999999999/handled"), 404, "NOT_FOUND")
    is_error(a.call("GET", "/v1/inbox/999999999"), 404, "NOT_FOUND")
    for bad in ("0", "abc", "-1"):
        is_error(a.call("POST", "/v1/inbox/%s/handled" % bad), 400, "BAD_VALUE")
        is_error(a.call("GET", "/v1/inbox/%s" % bad), 400, "BAD_VALUE")


#   --- referrals through their life cycle (docs/agent.md, README "The closed loop") ---

def test_sent_referral_follows_the_broker_sent_delivered_accepted_completed(net):
    """README "The closed loop" / docs/agent.md "Referral and case view": the
    agent's view of a referral it sent has the broker's state at every step."""
    a, rid = net.agent, uid("R")
    body = referral_body(rid, uid("C"))
    posted(a, body)
    assert outbox_final(a, body["msg_id"])["status"] == "receipted"
    ref = view(a, rid, lambda j: True)
    assert (ref["role"], ref["counterpart"], ref["referral_id"]) == ("sender", AA, rid)
    assert state_of(net.aa.client, rid) == "SENT" and ref["state"] == "SENT"
    assert net.aa.wait(referral_id=rid, type="REFERRAL")           # aa acks it
    assert wait_state(net.aa.client, rid, "DELIVERED") == "DELIVERED"
    assert view(a, rid, lambda j: j["state"] == "DELIVERED")["state"] == "DELIVERED"
    steps = (({"type": "ACCEPT"}, "ACCEPTED"),
             ({"type": "STATUS", "code": "in_progress"}, "IN_PROGRESS"),
             ({"type": "OUTCOME", "code": "completed"}, "COMPLETED"))
    for fields, state in steps:
        hdr = dict(fields, recipient=SOZ, referral_id=rid, msg_id=uid("M"))
        net.aa.client.send(hdr)
        assert state_of(net.aa.client, rid) == state
        got = view(a, rid, lambda j, s=state: j["state"] == s)
        assert got["state"] == state and got["last_msg_id"] == hdr["msg_id"]
        assert got["last_type"] == fields["type"]
    in_state = a.call("GET", "/v1/referrals?state=COMPLETED").json["items"]
    assert rid in [x["referral_id"] for x in in_state]
    assert rid not in [x["referral_id"] for x in
                       a.call("GET", "/v1/referrals?state=ACCEPTED").json["items"]]


def test_received_referral_answered_accept_status_outcome(net):
    """docs/agent.md "Answer a referral": the agent addresses the answer to the
    other party; GET /v1/outbox/{msg_id} says whether the broker took it; the
    view and the broker agree (ACCEPTED, IN_PROGRESS, COMPLETED)."""
    a, rid = net.agent, uid("R")
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"please")
    (item,) = delivered_to_agent(a, referral_id=rid)
    ref = view(a, rid, lambda j: True)
    assert (ref["role"], ref["counterpart"]) == ("recipient", AA)
    assert ref["state"] == wait_state(net.aa.client, rid, "DELIVERED") == "DELIVERED"
    for answer, state, wire in (({"answer": "accept"}, "ACCEPTED", "ACCEPT"),
                                ({"answer": "status", "code": "in_progress"}, "IN_PROGRESS",
                                 "STATUS"),
                                ({"answer": "outcome", "code": "completed"}, "COMPLETED",
                                 "OUTCOME")):
        body = dict(answer, msg_id=uid("A"))
        rec = posted(a, body, "/v1/referrals/%s/answer" % rid)
        assert (rec["type"], rec["recipient"], rec["referral_id"]) == (wire, AA, rid)
        assert a.call("POST", "/v1/referrals/%s/answer" % rid, body).status == 200
        assert outbox_final(a, body["msg_id"])["status"] == "receipted"
        (d,) = net.aa.wait(msg_id=body["msg_id"])
        assert d.hdr["type"] == wire and d.hdr["referral_id"] == rid
        assert state_of(net.aa.client, rid) == state
        assert view(a, rid, lambda j, s=state: j["state"] == s)["state"] == state
    # the docs are silent on what an answer does to the delivery; pinned: it stays
    # in the inbox, and only POST .../handled marks it handled
    got = a.call("GET", "/v1/inbox/%d" % item["seq"])
    assert got.status == 200 and got.json["referral_id"] == rid
    assert got.json["handled"] is False


def test_answer_vocabulary_decline_not_competent_withdraw(net):
    """docs/agent.md table: decline (with `reason`), not_competent (optionally `org`),
    withdraw for the sender; each reaches the other party as its message and the
    view agrees with the broker (DECLINED, NOT_COMPETENT, WITHDRAWN)."""
    a = net.agent
    cases = []
    for answer in ({"answer": "decline", "reason": "capacity"},
                   {"answer": "not_competent", "org": JC}):
        rid = uid("R")
        net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"x")
        delivered_to_agent(a, referral_id=rid)
        cases.append((rid, dict(answer, msg_id=uid("A"))))
    sent = referral_body(uid("R"), uid("C"))
    posted(a, sent)
    outbox_final(a, sent["msg_id"])
    cases.append((sent["referral_id"], {"answer": "withdraw", "msg_id": uid("A")}))
    expect = {"decline": ("DECLINE", "DECLINED", {"code": "capacity"}),
              "not_competent": ("NOT_COMPETENT", "NOT_COMPETENT", {"org": JC}),
              "withdraw": ("WITHDRAW", "WITHDRAWN", {})}
    for rid, body in cases:
        wire, state, fields = expect[body["answer"]]
        rec = posted(a, body, "/v1/referrals/%s/answer" % rid)
        assert (rec["type"], rec["recipient"]) == (wire, AA)
        assert outbox_final(a, body["msg_id"])["status"] == "receipted"
        (d,) = net.aa.wait(msg_id=body["msg_id"])
        assert d.hdr["type"] == wire and d.hdr["referral_id"] == rid
        for key, value in fields.items():
            assert d.hdr[key] == value, (key, d.hdr)
        assert state_of(net.aa.client, rid) == state
        assert view(a, rid, lambda j, s=state: j["state"] == s)["state"] == state


def test_forward_seals_to_the_new_office_and_both_referrals_show(net):
    """docs/agent.md table: forward (`org`, `purpose`, `legal_basis`); README
    "Sealed payloads": a FORWARD's payload is sealed to the organisation it forwards
    to; the original is FORWARDED at the broker and in the view (PROTOCOL.md §9.2:
    the new referral's id is the FORWARD's msg_id)."""
    a, rid = net.agent, uid("R")
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"x")
    delivered_to_agent(a, referral_id=rid)
    body = {"answer": "forward", "org": JC, "purpose": "benefits",
            "legal_basis": kim_headers.STATUTE, "payload": "for the job centre",
            "msg_id": uid("F")}
    rec = posted(a, body, "/v1/referrals/%s/answer" % rid)
    assert (rec["type"], rec["recipient"]) == ("FORWARD", AA)
    assert outbox_final(a, body["msg_id"])["status"] == "receipted"
    (d,) = net.jc.wait(msg_id=body["msg_id"])
    assert d.sealed_error is False and d.payload == b"for the job centre"
    assert state_of(net.aa.client, rid) == "FORWARDED"
    assert view(a, rid, lambda j: j["state"] == "FORWARDED")["state"] == "FORWARDED"
    new = body["msg_id"]
    assert state_of(net.jc.client, new) in ("SENT", "DELIVERED")
    mine = view(a, new, lambda j: True)
    assert (mine["role"], mine["counterpart"]) == ("sender", JC)


def test_answer_the_life_cycle_forbids_is_refused_bad_state(net):
    """docs/agent.md: "a decline after an accept is refused by the broker, and the
    outbox record says refused with BAD_STATE and the broker's text"."""
    a, rid = net.agent, uid("R")
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"x")
    delivered_to_agent(a, referral_id=rid)
    acc = dict(answer="accept", msg_id=uid("A"))
    posted(a, acc, "/v1/referrals/%s/answer" % rid)
    assert outbox_final(a, acc["msg_id"])["status"] == "receipted"
    dec = {"answer": "decline", "reason": "capacity", "msg_id": uid("A")}
    posted(a, dec, "/v1/referrals/%s/answer" % rid)
    rec = outbox_final(a, dec["msg_id"])
    assert (rec["status"], rec["error"], rec["code"]) == ("refused", "BAD_STATE", 400), rec
    assert rid in rec["text"] and "ACCEPTED" in rec["text"]
    assert state_of(net.aa.client, rid) == "ACCEPTED"
    assert view(a, rid, lambda j: True)["state"] == "ACCEPTED"


def test_answer_only_the_right_side_may_give_is_409_not_party(net):
    """docs/agent.md "Errors": 409 for "an answer the other side must give (NOT_PARTY)";
    withdraw is the sender's, accept the recipient's; info_request is either's."""
    a = net.agent
    sent = referral_body(uid("R"), uid("C"))
    posted(a, sent)
    outbox_final(a, sent["msg_id"])
    got = uid("R")
    net.aa.client.send(kim_headers.referral(got, uid("C"), recipient=SOZ), b"x")
    delivered_to_agent(a, referral_id=got)
    view(a, sent["referral_id"], lambda j: True)
    for rid, answer in ((sent["referral_id"], "accept"), (sent["referral_id"], "status"),
                        (got, "withdraw")):
        body = {"answer": answer, "msg_id": uid("A"), "code": "in_progress"} \
            if answer == "status" else {"answer": answer, "msg_id": uid("A")}
        is_error(a.call("POST", "/v1/referrals/%s/answer" % rid, body), 409, "NOT_PARTY")
        assert a.call("GET", "/v1/outbox/" + body["msg_id"]).status == 404
    for rid in (sent["referral_id"], got):
        body = {"answer": "info_request", "msg_id": uid("A")}
        posted(a, body, "/v1/referrals/%s/answer" % rid)
        assert outbox_final(a, body["msg_id"])["status"] == "receipted"


def test_answer_route_errors(net):
    """openapi POST /v1/referrals/{id}/answer: 404 UNKNOWN_REFERRAL; 400 for an
    unknown answer or field, or a message the protocol refuses (a decline needs its
    reason, PROTOCOL.md §9.1); 400 BAD_ID for an id that is not one."""
    a, rid = net.agent, uid("R")
    is_error(a.call("POST", "/v1/referrals/%s/answer" % uid("none"), {"answer": "accept"}),
             404, "UNKNOWN_REFERRAL")
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"x")
    delivered_to_agent(a, referral_id=rid)
    path = "/v1/referrals/%s/answer" % rid
    is_error(a.call("POST", path, {"answer": "approve"}), 400)
    assert is_error(a.call("POST", path, {"answer": "accept", "colour": "red"}),
                    400)["path"] == "colour"
    assert is_error(a.call("POST", path, {"answer": "decline", "msg_id": uid("A")}),
                    400, "MISSING_FIELD")
    assert is_error(a.call("POST", path, {}), 400)["path"] == "answer"
    is_error(a.call("GET", "/v1/referrals/" + "r" * 65), 400, "BAD_ID")
    is_error(a.call("GET", "/v1/referrals/" + uid("none")), 404, "NOT_FOUND")
    assert view(a, rid, lambda j: True)["state"] == "DELIVERED"


def test_curl_examples_of_the_guide_work_as_written(net):
    """docs/agent.md and README: `curl ... /answer -d '{...}'` sends the JSON as
    curl's default form type, and `curl -X POST .../handled` sends no body."""
    a, rid = net.agent, uid("R")
    net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=SOZ), b"x")
    (item,) = delivered_to_agent(a, referral_id=rid)
    body = json.dumps({"answer": "accept", "msg_id": uid("A")})
    r = a.call("POST", "/v1/referrals/%s/answer" % rid, body,
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 202, r
    r = a.call("POST", "/v1/inbox/%d/handled" % item["seq"])
    assert r.status == 200, r


def test_referral_list_filters_overdue_and_state(net):
    """docs/agent.md table: GET /v1/referrals ?state=ACCEPTED, ?overdue=true; the
    overdue flag follows the broker (REMINDER when the deadline passes); a bad
    query value is 400 BAD_VALUE."""
    a, rid = net.agent, uid("R-DUE")
    body = referral_body(rid, uid("C"), deadline=now_ms() + 2500)
    posted(a, body)
    assert outbox_final(a, body["msg_id"])["status"] == "receipted"
    assert net.aa.wait(referral_id=rid, type="REFERRAL")
    late = lambda: [x["referral_id"] for x in  # noqa: E731
                    a.call("GET", "/v1/referrals?overdue=true").json["items"]]
    assert rid not in late()
    assert wait_state(net.aa.client, rid, "OVERDUE", timeout=WAIT) == "OVERDUE"
    ref = view(a, rid, lambda j: j["overdue"] and j["state"] != "DELIVERED")
    assert ref["overdue"] is True and ref["deadline"] == body["deadline"]
    assert ref["state"] == state_of(net.aa.client, rid) == "OVERDUE"
    assert rid in late()
    assert rid not in [x["referral_id"] for x in
                       a.call("GET", "/v1/referrals?overdue=false").json["items"]]
    for query in ("state=accepted", "state=LAPSEDX", "overdue=yes"):
        is_error(a.call("GET", "/v1/referrals?" + query), 400, "BAD_VALUE")


#   --- cases (docs/agent.md "Cases") -------------------------------------------

def test_case_view_timeline_has_the_brokers_seqs_and_closes(net):
    """docs/agent.md "Cases": state, lead (empty until a message shows it), the
    referrals, a timeline of messages sent (once receipted) and received with the
    broker's seq; CASE_CLOSED by the lead closes it; 404 UNKNOWN_CASE."""
    a, rid, case_id = net.agent, uid("R"), uid("C-CASE")
    receipt = net.aa.client.send(kim_headers.referral(rid, case_id, recipient=SOZ), b"x")
    delivered_to_agent(a, referral_id=rid)
    ans = {"answer": "accept", "msg_id": uid("A")}
    posted(a, ans, "/v1/referrals/%s/answer" % rid)
    out_seq = outbox_final(a, ans["msg_id"])["seq"]
    c = a.wait("/v1/cases/" + case_id,
               lambda j: len(j.get("timeline", [])) >= 2).json
    assert (c["case_id"], c["state"], c["lead"]) == (case_id, "OPEN", "")
    assert c["referrals"] == [rid]
    got = [(e["direction"], e["type"], e["seq"], e["from"], e["to"]) for e in c["timeline"]]
    assert got == [("in", "REFERRAL", receipt["seq"], AA, SOZ),
                   ("out", "ACCEPT", out_seq, SOZ, AA)]
    assert c["events"] == 2
    listed = a.call("GET", "/v1/cases?state=OPEN").json["items"]
    assert case_id in [x["case_id"] for x in listed]
    assert all("timeline" not in x for x in listed)
    net.aa.client.send({"type": "CASE_CLOSED", "case_id": case_id, "msg_id": uid("M")})
    c = a.wait("/v1/cases/" + case_id, lambda j: j["state"] == "CLOSED").json
    assert (c["state"], c["lead"]) == ("CLOSED", AA)
    assert case_id in [x["case_id"] for x in a.call("GET", "/v1/cases?state=CLOSED").json["items"]]
    assert case_id not in [x["case_id"] for x in
                           a.call("GET", "/v1/cases?state=OPEN").json["items"]]
    is_error(a.call("GET", "/v1/cases?state=open"), 400, "BAD_VALUE")
    is_error(a.call("GET", "/v1/cases/" + uid("none")), 404, "UNKNOWN_CASE")
    is_error(a.call("GET", "/v1/cases/a%20b"), 400, "BAD_ID")


def test_case_timeline_keeps_the_last_500(net):
    """docs/agent.md "Cases": a `timeline` ... "at most 500, the oldest dropped first";
    openapi Case.events: "entries in the timeline"."""
    a, case_id = net.agent, uid("C-500")
    answers = net.aa.client.send_many(
        [(kim_headers.referral(uid("R"), case_id, recipient=SOZ), b"") for _ in range(501)])
    seqs = sorted(x["seq"] for x in answers)
    c = a.wait("/v1/cases/" + case_id,
               lambda j: j["timeline"] and j["timeline"][-1]["seq"] == seqs[-1],
               timeout=3 * WAIT).json
    assert [e["seq"] for e in c["timeline"]] == seqs[1:]
    assert c["events"] == 500
    (listed,) = [x for x in a.call("GET", "/v1/cases").json["items"]
                 if x["case_id"] == case_id]
    assert listed["events"] == 500


#   --- consents (docs/agent.md "Consents and the subject's rights") -------------

def consent_body(case_id, consent, subject, valid_for_ms=3600 * 1000, **extra):
    body = {"msg_id": uid("G"), "consent": consent, "case_id": case_id, "subject": subject,
            "recipients": [AA], "purposes": ["benefits"], "valid_until": now_ms() + valid_for_ms}
    body.update(extra)
    return body


def test_consent_pending_active_revoking_revoked_and_its_referral_suspended(net):
    """docs/agent.md: `state` is pending until the broker answers, then active;
    revoke: revoking, then revoked, and the open referrals that relied on it are
    SUSPENDED, at the broker and in the agent's view; the grant shows the lead."""
    a, case_id, consent, subject = net.agent, uid("C-G"), uid("G"), uid("p")
    body = consent_body(case_id, consent, subject)
    rec = posted(a, body, "/v1/consents")
    assert rec["type"] == "CONSENT_GRANT" and rec["msg_id"] == body["msg_id"]
    assert a.call("POST", "/v1/consents", body).status == 200
    first = a.call("GET", "/v1/consents/" + consent)
    assert first.status == 200 and first.json["state"] in ("pending", "active")
    c = a.wait("/v1/consents/" + consent, lambda j: j["state"] != "pending").json
    assert c["state"] == "active" and c["grant_msg_id"] == body["msg_id"]
    assert (c["case_id"], c["subject"], c["recipients"], c["purposes"], c["valid_until"]) == \
        (case_id, subject, [AA], ["benefits"], body["valid_until"])
    assert consent in [x["consent"] for x in
                       a.call("GET", "/v1/consents?state=active").json["items"]]
    assert a.wait("/v1/cases/" + case_id, lambda j: j["lead"]).json["lead"] == SOZ
    rid = uid("R")
    ref = referral_body(rid, case_id, subject=subject,
                        legal_basis={"kind": "consent", "consent_id": consent})
    posted(a, ref)
    assert outbox_final(a, ref["msg_id"])["status"] == "receipted"
    assert view(a, rid, lambda j: True)["consent_id"] == consent
    rv = {"msg_id": uid("V")}
    assert posted(a, rv, "/v1/consents/%s/revoke" % consent)["type"] == "CONSENT_REVOKE"
    now = a.call("GET", "/v1/consents/" + consent).json["state"]
    assert now in ("revoking", "revoked")
    c = a.wait("/v1/consents/" + consent, lambda j: j["state"] == "revoked").json
    assert c["state"] == "revoked" and c["revoke_msg_id"] == rv["msg_id"]
    assert state_of(net.aa.client, rid) == "SUSPENDED"
    assert view(a, rid, lambda j: j["state"] == "SUSPENDED")["state"] == "SUSPENDED"
    later = referral_body(uid("R"), case_id, subject=subject,
                          legal_basis={"kind": "consent", "consent_id": consent})
    posted(a, later)
    assert outbox_final(a, later["msg_id"])["error"] == "CONSENT_REVOKED"
    # docs/agent.md "Cases": "a revocation [counts] for the case of its consent"
    c = a.wait("/v1/cases/" + case_id,
               lambda j: "CONSENT_REVOKE" in [e["type"] for e in j["timeline"]]).json
    assert [(e["type"], e["msg_id"]) for e in c["timeline"] if e["direction"] == "out"
            and e["type"].startswith("CONSENT")] == [("CONSENT_GRANT", body["msg_id"]),
                                                     ("CONSENT_REVOKE", rv["msg_id"])]


def test_consent_the_broker_refuses_and_consent_errors(net):
    """docs/agent.md: `refused` with the broker's error, code, text (say NOT_LEAD);
    openapi: 404 CONSENT_UNKNOWN, 400 MISSING_FIELD, ?state bad value 400."""
    a, case_id = net.agent, uid("C-AA")
    net.aa.client.send(kim_headers.referral(uid("R"), case_id, recipient=JC), b"x")  # aa leads
    consent = uid("G")
    posted(a, consent_body(case_id, consent, "p-7f3a"), "/v1/consents")
    c = a.wait("/v1/consents/" + consent, lambda j: j["state"] != "pending").json
    assert (c["state"], c["error"], c["code"]) == ("refused", "NOT_LEAD", 405), c
    assert c["text"]
    assert consent in [x["consent"] for x in
                       a.call("GET", "/v1/consents?state=refused").json["items"]]
    is_error(a.call("GET", "/v1/consents/" + uid("none")), 404, "CONSENT_UNKNOWN")
    missing = consent_body(uid("C"), uid("G"), "p-1")
    del missing["subject"]
    assert is_error(a.call("POST", "/v1/consents", missing), 400,
                    "MISSING_FIELD")["path"] == "subject"
    is_error(a.call("GET", "/v1/consents?state=ACTIVE"), 400, "BAD_VALUE")


@pytest.fixture(scope="module")
def expired(net):
    """A consent the office granted for 2 s, and a referral (delivered) under it,
    after the broker has expired the consent: (consent, referral_id)."""
    a, case_id, consent, subject = net.agent, uid("C-X"), uid("G"), uid("p")
    posted(a, consent_body(case_id, consent, subject, valid_for_ms=2000), "/v1/consents")
    assert a.wait("/v1/consents/" + consent,
                  lambda j: j["state"] != "pending").json["state"] == "active"
    rid = uid("R")
    ref = referral_body(rid, case_id, subject=subject,
                        legal_basis={"kind": "consent", "consent_id": consent})
    posted(a, ref)
    assert outbox_final(a, ref["msg_id"])["status"] == "receipted"
    assert net.aa.wait(referral_id=rid, type="REFERRAL")
    assert wait_state(net.aa.client, rid, "LAPSED", timeout=2 + WAIT) == "LAPSED"
    return consent, rid


def test_consent_is_expired_after_valid_until(net, expired):
    """docs/agent.md: a consent's state is "`expired` after `valid_until`"."""
    consent, _ = expired
    c = net.agent.wait("/v1/consents/" + consent, lambda j: j["state"] == "expired").json
    assert c["state"] == "expired"
    assert consent in [x["consent"] for x in
                       net.agent.call("GET", "/v1/consents?state=expired").json["items"]]


def test_referral_under_an_expired_consent_is_lapsed_as_at_the_broker(net, expired):
    """docs/agent.md "Referral and case view": the agent keeps the referrals' state
    current; README "The closed loop": LAPSED "(its consent expired: renew it)"."""
    _, rid = expired
    got = view(net.agent, rid, lambda j: j["state"] not in ("SENT", "DELIVERED"))
    assert got["state"] == state_of(net.aa.client, rid) == "LAPSED"


#   --- the subject's rights ------------------------------------------------------

def test_access_report_is_answered_and_erasure_receipted(net):
    """docs/agent.md: a report is queued, receipted, answered (with the broker's
    report listing the office's transfers); erasure: its outbox record receipted
    with the broker's seq; an empty body is allowed; 404 for an unknown report."""
    a, subject, case_id = net.agent, uid("p"), uid("C-S")
    ref = referral_body(uid("R"), case_id, subject=subject)
    posted(a, ref)
    sent_seq = outbox_final(a, ref["msg_id"])["seq"]
    req = {"msg_id": uid("AR"), "case_id": case_id}
    rec = posted(a, req, "/v1/subjects/%s/report" % subject)
    assert rec["type"] == "ACCESS_REPORT" and rec["msg_id"] == req["msg_id"]
    rep = a.wait("/v1/reports/" + req["msg_id"], lambda j: j["status"] == "answered").json
    assert (rep["status"], rep["subject"], rep["case_id"]) == ("answered", subject, case_id)
    assert isinstance(rep["seq"], int) and isinstance(rep["report_seq"], int)
    transfers = rep["report"]["transfers"]
    assert [(t["seq"], t["type"], t["from"], t["to"]) for t in transfers] == \
        [(sent_seq, "REFERRAL", SOZ, AA)]
    assert rep["report"]["requested_by"] == SOZ
    is_error(a.call("GET", "/v1/reports/" + uid("none")), 404, "NOT_FOUND")
    r = a.call("POST", "/v1/subjects/%s/report" % uid("p"))              # no body at all
    assert r.status == 202 and r.json["msg_id"], r
    # docs/agent.md: "refused (e.g. NOT_PARTY)": this office sent nothing about him
    rep = a.wait("/v1/reports/" + r.json["msg_id"], lambda j: j["status"] == "refused").json
    assert (rep["status"], rep["error"], rep["code"]) == ("refused", "NOT_PARTY", 401), rep
    er = {"msg_id": uid("E")}
    assert posted(a, er, "/v1/subjects/%s/erasure" % subject)["type"] == "ERASURE"
    done = outbox_final(a, er["msg_id"])
    assert done["status"] == "receipted" and isinstance(done["seq"], int)
    # docs/agent.md: "the payloads of the office's transfers about the person are
    # purged, their recipients told"
    (told,) = net.aa.wait(type="ERASURE", subject=subject)
    assert told.hdr["recipient"] == AA
    assert a.call("POST", "/v1/subjects/%s/erasure" % subject, er).status == 200


#   --- errors and limits (docs/agent.md "Errors", deploy/agent.cfg http/max_body) ---

def test_unknown_route_404_and_wrong_method_405_with_error_object(net):
    """openapi info: "A method a path does not serve gets 405, a path the agent does
    not serve 404, both with the same error object"; 400 for not JSON / not an object."""
    a = net.agent
    is_error(a.call("GET", "/v1/nothing"), 404)
    is_error(a.call("GET", "/v2/status"), 404)
    # RFC 9110 15.5.6: a 405 names the methods the path serves in Allow
    for method, path, allow in (("DELETE", "/v1/status", "GET"), ("PUT", "/v1/messages", "POST"),
                                ("GET", "/v1/messages", "POST"), ("POST", "/v1/inbox", "GET"),
                                ("DELETE", "/v1/consents", "GET, POST")):
        r = a.call(method, path, b"" if method != "GET" else None)
        is_error(r, 405)
        assert r.headers.get("allow") == allow, (method, path, r.headers)
    for body in (b"not json", b"[1,2]", b"\"text\"", b"{\"type\": \"REFERRAL\""):
        is_error(a.call("POST", "/v1/messages", body,
                        headers={"Content-Type": "application/json"}), 400)
    assert is_error(a.call("POST", "/v1/messages", dict(referral_body(uid("R"), uid("C")),
                                                       colour="red")), 400)["path"] == "colour"


def test_body_limit_is_http_max_body(net):
    """docs/agent.md "Errors": 413 for a body larger than http/max_body (TOO_LARGE),
    "refused before it is read when announced"; a body of exactly max_body is read."""
    a = net.agent
    body = referral_body(uid("R"), uid("C"), payload="")
    pad = MAX_BODY - len(json.dumps(body).encode())
    body["payload"] = "x" * pad
    exact = json.dumps(body).encode()
    assert len(exact) == MAX_BODY
    r = a.call("POST", "/v1/messages", exact, headers={"Content-Type": "application/json"})
    assert r.status == 202, r
    body = dict(body, msg_id=uid("M"), referral_id=uid("R"), payload="x" * (pad + 1))
    over = json.dumps(body).encode()
    r = a.call("POST", "/v1/messages", over, headers={"Content-Type": "application/json"})
    is_error(r, 413, "TOO_LARGE")
    # announced and never sent: the answer comes without the body, on every route
    # whose openapi lists 413
    for path in ("/v1/messages", "/v1/referrals/x-1/answer", "/v1/consents",
                 "/v1/consents/x-1/revoke", "/v1/subjects/x-1/report",
                 "/v1/subjects/x-1/erasure"):
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=WAIT)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Authorization", "Bearer " + a.token)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(64 << 20))
            conn.endheaders()
            resp = conn.getresponse()
            assert resp.status == 413, path
            assert json.loads(resp.read())["error"] == "TOO_LARGE"
        finally:
            conn.close()
    assert a.call("GET", "/v1/status").status == 200


def _fill_store(cfg_broker, payload_size):
    """An agent with a 1 MiB store and no broker; posts messages with payloads of
    `payload_size` bytes until one is not accepted. Returns (agent, accepted, last reply)."""
    a = AgentProc(agent_bin(), None, SOZ, sections={
        "agent": {"cert": cfg_broker.cert_secret(SOZ)},
        "broker": {"endpoint": "ipc://%s/nobody.sock" % cfg_broker.folder,
                   "key_file": cfg_broker.broker_cert},
        "http": {"max_body": 1 << 20},
        "store": {"map_size_mb": 1}})
    a.start(connected=False)
    accepted, last = [], None
    for _ in range(400):
        body = referral_body(uid("R"), uid("C"), payload="z" * payload_size)
        last = a.call("POST", "/v1/messages", body)
        if last.status != 202:
            break
        accepted.append(body["msg_id"])
    return a, accepted, last


def test_full_store_is_503_and_the_agent_keeps_serving(cfg_broker):
    """deploy/agent.cfg store/map_size_mb: "the agent refuses new messages (503, ...)
    when it is full"; what it accepted stays queued (docs/agent.md "Outbox"). The
    name (STORE_FULL) is left to the next test: with small messages the agent says
    STORE_FULL or IO depending on which of its writes hits the end of the map."""
    a, accepted, last = _fill_store(cfg_broker, 4000)
    try:
        is_error(last, 503)
        assert accepted
        assert a.call("GET", "/v1/status").json["queued"] == len(accepted)
        for msg_id in accepted[:3] + accepted[-3:]:
            assert a.call("GET", "/v1/outbox/" + msg_id).json["status"] == "queued"
        assert a.stop() == 0
    finally:
        a.cleanup()


def test_full_store_refusing_a_large_payload_says_store_full(cfg_broker):
    """docs/agent.md "Errors": 503 "the agent's store cannot be written (for example
    full: STORE_FULL)", whatever the size of the message that no longer fits."""
    a, accepted, last = _fill_store(cfg_broker, 60000)
    try:
        assert accepted
        is_error(last, 503, "STORE_FULL")
    finally:
        a.cleanup()


def test_web_page_is_off_unless_configured(net):
    """docs/agent.md "Web inbox": "It is off unless configured": /ui/ is then no route
    (404 for a client with a token; without one, 401 as for every request)."""
    for path in ("/ui/", "/ui/login", "/"):
        is_error(net.agent.call("GET", path), 404, "NOT_FOUND")
        is_error(net.agent.call("GET", path, token=False), 401, "FORBIDDEN")


def test_verbose_log_names_msg_ids_never_payloads_subjects_or_notes(net):
    """docs/agent.md "Operations": logfmt events (ts, level, prog=kim-agent, msg);
    verbose adds a line per message with the msg_id, "never payloads, subjects or notes"."""
    a, rid = net.agent, uid("R")
    secret_words = ("PAYLOAD-MARK-%s" % os.getpid(), "p-SUBJMARK%d" % os.getpid(),
                    "NOTE-MARK-%s" % os.getpid())
    body = referral_body(rid, uid("C"), payload="needs " + secret_words[0],
                         subject=secret_words[1], note=secret_words[2])
    posted(a, body)
    assert outbox_final(a, body["msg_id"])["status"] == "receipted"
    rin = uid("R")
    hdr = kim_headers.referral(rin, uid("C"), recipient=SOZ, subject=secret_words[1],
                               note=secret_words[2], msg_id=uid("IN"))
    net.aa.client.send(hdr, ("in " + secret_words[0]).encode())
    (item,) = delivered_to_agent(a, referral_id=rin)
    a.call("GET", "/v1/inbox/%d" % item["seq"])
    deadline = time.monotonic() + WAIT
    while hdr["msg_id"] not in a.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = a.log_text()
    assert body["msg_id"] in log and hdr["msg_id"] in log
    for word in secret_words:
        assert word not in log, word
    for msg_id in (body["msg_id"], hdr["msg_id"]):
        assert any(SOZ in x for x in log.splitlines() if msg_id in x), msg_id
    line = re.compile(r'ts=\S+ level=(error|warning|notice|info|debug) prog=kim-agent'
                      r'( module=\S+)? msg=".*"$')
    for text in log.splitlines():
        assert line.match(text), text


def test_broker_key_as_z85_text_and_a_clean_stop_on_sigint(net):
    """deploy/agent.cfg broker: the broker's key as its certificate file "or the Z85
    text itself as key = "..."" (give one of the two); docs/agent.md "Operations":
    SIGTERM or SIGINT stop it (kim-agent(8): exit 0 after a clean stop)."""
    from kim.certs import load_cert
    public, _ = load_cert(net.broker.broker_cert)
    a = AgentProc(agent_bin(), net.broker, ALB,
                  sections={"broker": {"key_file": None, "key": public}})
    try:
        a.start()
        assert a.call("GET", "/v1/status").json["org"] == ALB
        a.process.send_signal(signal.SIGINT)
        assert a.process.wait(WAIT) == 0
        assert a.stop() == 0
    finally:
        a.cleanup()


def test_sign_key_signs_what_the_agent_sends(net):
    """deploy/agent.cfg agent/sign_key: the Ed25519 key, "required when the registry
    lists a sign_key for the organisation" (jc.rheine's is listed). Without it the docs
    do not say what happens; pinned: the broker refuses each message BAD_SIGNATURE
    and the outbox record says so."""
    signed = AgentProc(agent_bin(), net.broker, JC, sections={
        "agent": {"sign_key": os.path.join(net.broker.keys, JC + ".sign_secret")}})
    unsigned = AgentProc(agent_bin(), net.broker, JC)
    try:
        signed.start()
        body = referral_body(uid("R"), uid("C"))
        posted(signed, body)
        assert outbox_final(signed, body["msg_id"])["status"] == "receipted"
        (d,) = net.aa.wait(msg_id=body["msg_id"])
        assert d.hdr["sender"] == JC and "sig" in d.hdr
        assert signed.stop() == 0
        unsigned.start()
        body = referral_body(uid("R"), uid("C"))
        posted(unsigned, body)
        rec = outbox_final(unsigned, body["msg_id"])
        assert (rec["status"], rec["error"], rec["code"]) == ("refused", "BAD_SIGNATURE", 211)
        assert unsigned.stop() == 0
    finally:
        signed.cleanup()
        unsigned.cleanup()


#   --- webhooks (docs/agent.md "Webhooks") ---------------------------------------

SLOW_S = 1.2


class Receiver:
    """A local webhook receiver: answers with the statuses in `self.answers`
    (popped; 200 when empty, or `self.default`) and records every request."""

    def __init__(self):
        self.seen = []
        self.answers = []
        self.default = 200
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    status = outer.answers.pop(0) if outer.answers else outer.default
                    outer.seen.append((time.monotonic(), time.time(), self.path,
                                       {k.lower(): v for k, v in self.headers.items()},
                                       body, status))
                if status == "slow":            # 200, but after webhook/timeout_ms
                    time.sleep(SLOW_S)
                    status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def pushes(self, webhook_id):
        with self.lock:
            return [s for s in self.seen if s[3].get("webhook-id") == str(webhook_id)]

    def wait(self, webhook_id, count, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while len(self.pushes(webhook_id)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.pushes(webhook_id)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def signed_ok(secret, headers, body):
    """docs/agent.md: v1,base64(HMAC-SHA256(secret, id + "." + timestamp + "." + body))."""
    mac = hmac.new(secret, ("%s.%s." % (headers["webhook-id"], headers["webhook-timestamp"]))
                   .encode() + body, hashlib.sha256).digest()
    return hmac.compare_digest("v1," + base64.b64encode(mac).decode(),
                               headers["webhook-signature"])


def test_webhook_pushes_signed_retries_dead_letters_and_retry(net):
    """docs/agent.md "Webhooks": each new delivery POSTed as the JSON of GET
    /v1/inbox/{seq} with webhook-id (the seq, the same on every retry),
    webhook-timestamp and webhook-signature; not-2xx is tried again after
    backoff_ms, doubled; after max_attempts a dead letter (it stays in the inbox),
    retried by the API; no answer within timeout_ms is a failure too; any 2xx
    ends the push; deliveries from before the webhook was configured are not pushed."""
    secret = b"a-shared-webhook-secret-" + os.urandom(8).hex().encode()
    rx = Receiver()
    ja = AgentProc(agent_bin(), net.broker, JA)
    try:
        ja.start()
        early = uid("R")
        net.aa.client.send(kim_headers.referral(early, uid("C"), recipient=JA), b"early")
        (early_item,) = delivered_to_agent(ja, referral_id=early)
        assert ja.stop() == 0
        backoff = 150
        ja.sections["webhook"] = {
            "url": "http://127.0.0.1:%d/kim/deliveries" % rx.port,
            # as `openssl rand -hex 32 > webhook.secret` writes it: the line end
            # is not part of the secret (docs/agent.md "Webhooks")
            "secret_file": write_secret(os.path.join(ja.folder, "webhook.secret"),
                                        secret.decode() + "\n"),
            "max_attempts": 3, "backoff_ms": backoff, "backoff_max_ms": 10 * backoff,
            "timeout_ms": 500}
        ja.write_config()
        ja.start()
        # 1. one failure, then 2xx: the same id twice, signed, body = GET /v1/inbox/{seq}
        rx.answers = [503, "slow", 204]
        rid = uid("R")
        net.aa.client.send(kim_headers.referral(rid, uid("C"), recipient=JA), b"hello ja")
        (item,) = delivered_to_agent(ja, referral_id=rid)
        pushes = rx.wait(item["seq"], 3)
        assert [p[5] for p in pushes] == [503, "slow", 204]      # any 2xx ends the push
        assert pushes[1][0] - pushes[0][0] >= backoff / 1000.0 * 0.9
        assert pushes[2][0] - pushes[1][0] >= 2 * backoff / 1000.0 * 0.9   # doubled
        for mono, wall, path, headers, body, _ in pushes:
            assert path == "/kim/deliveries"
            assert signed_ok(secret, headers, body)
            assert abs(int(headers["webhook-timestamp"]) - wall) <= 5
        pushed = json.loads(pushes[2][4])
        got = ja.call("GET", "/v1/inbox/%d" % item["seq"]).json
        same = lambda d: {k: v for k, v in d.items()  # noqa: E731
                          if k not in ("handled", "handled_at")}
        assert same(pushed) == same(got)
        assert pushed["payload"] == "hello ja"
        assert not rx.pushes(early_item["seq"])
        # 2. every push fails: a dead letter after max_attempts, still in the inbox
        rx.default = 500
        rid2 = uid("R")
        net.aa.client.send(kim_headers.referral(rid2, uid("C"), recipient=JA), b"again")
        (item2,) = delivered_to_agent(ja, referral_id=rid2)
        seq2 = item2["seq"]
        r = ja.wait("/v1/webhook/dead", lambda j: seq2 in [d["seq"] for d in j["items"]])
        (dead,) = [d for d in r.json["items"] if d["seq"] == seq2]
        assert (dead["msg_id"], dead["type"], dead["attempts"]) == \
            (item2["msg_id"], "REFERRAL", 3)
        assert dead["last_error"] and dead["dead_at"] > 0
        times = [p[0] for p in rx.pushes(seq2)]
        assert len(times) == 3
        assert times[1] - times[0] >= backoff / 1000.0 * 0.9
        assert times[2] - times[1] >= 2 * backoff / 1000.0 * 0.9      # doubled
        assert ja.call("GET", "/v1/inbox/%d" % seq2).status == 200
        # 3. a retry counts its attempts from zero (openapi .../retry): dead again
        # after max_attempts more; once the receiver works, a retry brings it over
        r = ja.call("POST", "/v1/webhook/dead/%d/retry" % seq2)
        assert r.status == 200 and (r.json["seq"], r.json["attempts"]) == (seq2, 3)
        assert len(rx.wait(seq2, 6)) == 6
        r = ja.wait("/v1/webhook/dead", lambda j: seq2 in [d["seq"] for d in j["items"]])
        assert [d["attempts"] for d in r.json["items"] if d["seq"] == seq2] == [3]
        rx.default = 200
        r = ja.call("POST", "/v1/webhook/dead/%d/retry" % seq2)
        assert r.status == 200 and r.json["seq"] == seq2
        assert [p[5] for p in rx.wait(seq2, 7)][-1] == 200
        assert len(rx.pushes(seq2)) == 7
        assert seq2 not in [d["seq"] for d in ja.call("GET", "/v1/webhook/dead").json["items"]]
        is_error(ja.call("POST", "/v1/webhook/dead/%d/retry" % seq2), 404, "NOT_FOUND")
        is_error(ja.call("POST", "/v1/webhook/dead/0/retry"), 400, "BAD_VALUE")
        assert not rx.pushes(early_item["seq"])
        assert ja.stop() == 0
    finally:
        ja.cleanup()
        rx.close()
