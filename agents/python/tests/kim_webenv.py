"""Shared by the checks of kim-agent's web inbox (test_web_security_spec.py,
test_web_inbox_spec.py): plain HTTP with http.client, no browser: forms are
read from the served HTML and sent as a browser would send them (urlencoded,
with the page's Origin); what the checks read off a page; the journal; and
the processes: one broker (soz.rheine is the office under test; aa.rheine
and jc.rheine are other agencies on kim.Client) and one agent with the page.
The fixtures have module scope: each file that binds them starts a broker
and an agent of its own, once. Every wait is a bounded poll."""
import html
import http.client
import json
import os
import re
import secrets
import ssl
import time
import urllib.parse

import pytest

import kim
import kim_headers
from conftest import _program, new_broker
from kim_agentproc import AgentProc
from kim_inbox import Inbox, uid

SOZ, AA, JC = "soz.rheine", "aa.rheine", "jc.rheine"
JA, ALB = "ja.rheine", "alb.rheine"         # offices of the agents of their own
ORGS = {SOZ: "agency", AA: "agency", JC: "agency", JA: "agency", ALB: "agency"}
STATUTE = kim_headers.STATUTE["citation"]          # rule P1 of deploy/policy.cfg
SLOW = 20.0                                         # s: a busy two-core machine
PASSWORDS = {"anna": "Anna: ein langes Passwort", "rolf": "rolf-liest-nur-mit",
             "bert": "bert-password-42", "carl": "carl-password-42"}
LOCKOUT_S = 5                                       # agent B's web/lockout_s
MAX_FAILURES_B = 2                                  # agent B's web/max_failures
# Words that must never reach the journal or the agent's log (docs/agent.md
# "Web inbox", Security: "Never payloads or notes"; "Operations": "never
# payloads, subjects or notes"); filled by the tests, checked by the journal's
# test at the end of test_web_inbox_spec.py
SECRETS = []


def mark(tag):
    word = "%s%s" % (tag, secrets.token_hex(4))
    SECRETS.append(word)
    return word


def agent_bin():
    return _program("KIM_AGENT_BIN", "agents/agent/kim-agent")


def now_ms():
    return int(time.time() * 1000)


def poll(fn, timeout=SLOW, every=0.1):
    """fn() until truthy (at most `timeout` s); returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


#   --- HTTP as a browser does it ----------------------------------------------

class Form:
    def __init__(self, method, action, pairs, inner):
        self.method, self.action, self.pairs, self.inner = method, action, pairs, inner

    @property
    def fields(self):
        return dict(self.pairs)

    def data(self, drop=(), **changes):
        """The pairs a browser sends, with `changes` replacing a field's value
        (None drops it) and `drop` names left out."""
        out = [(k, v) for k, v in self.pairs if k not in changes and k not in drop]
        out += [(k, v) for k, v in changes.items() if v is not None]
        return out


def _attr(tag, name):
    m = re.search(r'\b%s="([^"]*)"' % re.escape(name), tag)
    return html.unescape(m.group(1)) if m else None


def parse_forms(text):
    forms = []
    for m in re.finditer(r"<form\b([^>]*)>(.*?)</form>", text, re.S | re.I):
        tag, inner = m.group(1), m.group(2)
        pairs = []
        for t in re.finditer(r"<input\b[^>]*>", inner, re.I):
            t = t.group(0)
            name, kind = _attr(t, "name"), (_attr(t, "type") or "text").lower()
            if not name or kind in ("submit", "button", "reset", "file", "image"):
                continue
            if kind in ("checkbox", "radio") and not re.search(r"\bchecked\b", t):
                continue
            pairs.append((name, _attr(t, "value") or ("on" if kind == "checkbox" and
                                                       _attr(t, "value") is None else "")))
        for s in re.finditer(r"<select\b([^>]*)>(.*?)</select>", inner, re.S | re.I):
            options = re.findall(r"<option\b([^>]*)>", s.group(2), re.I)
            chosen = [o for o in options if re.search(r"\bselected\b", o)] or options[:1]
            if _attr(s.group(1), "name") and chosen:
                pairs.append((_attr(s.group(1), "name"), _attr(chosen[0], "value") or ""))
        for t in re.finditer(r"<textarea\b([^>]*)>(.*?)</textarea>", inner, re.S | re.I):
            if _attr(t.group(1), "name"):
                pairs.append((_attr(t.group(1), "name"), html.unescape(t.group(2))))
        forms.append(Form((_attr(tag, "method") or "get").lower(), _attr(tag, "action"),
                          pairs, inner))
    return forms


class Page:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers              # [(name, value)], names as sent
        self.raw = body
        self.text = body.decode("utf-8", "replace")

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def set_cookies(self):
        """{name: {"value": ..., attribute (lower case): value or True}}"""
        out = {}
        for k, v in self.headers:
            if k.lower() != "set-cookie":
                continue
            parts = [p.strip() for p in v.split(";")]
            name, _, value = parts[0].partition("=")
            attrs = {"value": value}
            for p in parts[1:]:
                key, eq, val = p.partition("=")
                attrs[key.strip().lower()] = val.strip() if eq else True
            out[name.strip()] = attrs
        return out

    @property
    def forms(self):
        return parse_forms(self.text)

    @property
    def main(self):
        m = re.search(r"<main\b.*?</main>", self.text, re.S | re.I)
        return m.group(0) if m else self.text

    @property
    def lang(self):
        m = re.search(r"<html\b[^>]*\blang=\"([^\"]*)\"", self.text, re.I)
        return m.group(1) if m else None

    def is_login(self):
        return re.search(r"<input\b[^>]*type=\"password\"", self.text, re.I) is not None

    def alert(self):
        m = re.search(r'role="alert"[^>]*>(.*?)</div>', self.text, re.S)
        return re.sub(r"<[^>]+>", "", m.group(1)).strip() if m else ""

    def __repr__(self):
        return "<%d %s %s>" % (self.status, self.header("location") or "",
                              self.alert() or self.text[:200])


class Web:
    """One browser: a cookie jar, the page's origin on every POST."""

    def __init__(self, port, tls=False):
        self.port, self.tls = port, tls
        self.jar = {}
        self.origin = "%s://127.0.0.1:%d" % ("https" if tls else "http", port)

    def request(self, method, path, form=None, body=None, headers=None, origin=True,
                cookies=True, timeout=30.0):
        if self.tls:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = {}
        if cookies and self.jar:
            hdrs["Cookie"] = "; ".join("%s=%s" % kv for kv in self.jar.items())
        if method == "POST" and origin:
            hdrs["Origin"] = self.origin if origin is True else origin
        if form is not None:
            body = urllib.parse.urlencode(form).encode() if not isinstance(form, bytes) \
                else form
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        for k, v in (headers or {}).items():
            if v is None:
                hdrs.pop(k, None)
            else:
                hdrs[k] = v
        try:
            try:
                conn.request(method, path, body=body, headers=hdrs)
            except (BrokenPipeError, ConnectionResetError):
                pass        # answered (and closed) before the whole body was sent
            r = conn.getresponse()
            page = Page(r.status, r.getheaders(), r.read())
        finally:
            conn.close()
        if cookies:
            for name, attrs in page.set_cookies().items():
                if attrs.get("max-age") == "0" or attrs["value"] == "":
                    self.jar.pop(name, None)
                else:
                    self.jar[name] = attrs["value"]
        return page

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, form, **kw):
        return self.request("POST", path, form=form, **kw)

    def submit(self, form, drop=(), origin=True, **changes):
        return self.post(form.action, form.data(drop, **changes), origin=origin)

    def follow(self, path, hops=5):
        page = self.get(path)
        while page.status in (301, 302, 303, 307, 308) and hops:
            page, hops = self.get(urllib.parse.urljoin(path, page.header("location"))), hops - 1
        return page

    def login(self, user, password, **changes):
        """The login page's own form, filled in and sent."""
        page = self.get("/ui/login")
        assert page.status == 200 and page.is_login(), page
        (form,) = [f for f in page.forms if f.method == "post"]
        return self.submit(form, **dict({"user": user, "password": password}, **changes))

    def signed_in(self):
        page = self.get("/ui/inbox")
        return page.status == 200 and not page.is_login()

    def csrf_form(self, page):
        """Any POST form of a signed-in page (the logout form in the header)."""
        return [f for f in page.forms if f.method == "post"][0]


def session_cookie(page):
    """The cookie a successful login sets (not a deletion, not the language)."""
    made = {k: v for k, v in page.set_cookies().items()
            if v["value"] and v.get("max-age") != "0" and "lang" not in k}
    assert len(made) == 1, page.headers
    return next(iter(made.items()))


def answers_offered(page):
    """The answers a referral's page offers: the `answer` of each POST form to
    .../answer, and `forward` for the first step of a forward."""
    out = set()
    for f in page.forms:
        if f.method == "post" and f.action.endswith("/answer"):
            out.add(f.fields.get("answer"))
        elif f.action.endswith("/forward"):
            out.add("forward")
    return out


def answer_form(page, answer):
    (form,) = [f for f in page.forms if f.method == "post" and
               f.action.endswith("/answer") and f.fields.get("answer") == answer]
    return form


def journal(agent):
    """docs/agent.md "Web inbox": `agent/data/web.journal`, one JSON line each."""
    path = os.path.join(agent.data, "web.journal")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def journaled(agent, timeout=5.0, **match):
    return poll(lambda: [e for e in journal(agent)
                         if all(e.get(k) == v for k, v in match.items())], timeout)


def outbox_status(agent, msg_id):
    r = agent.call("GET", "/v1/outbox/" + urllib.parse.quote(msg_id, safe=""))
    return r.json.get("status") if r.status == 200 else r.status


def outbox_final(agent, msg_id, timeout=SLOW):
    r = agent.wait("/v1/outbox/" + msg_id,
                   lambda j: j["status"] in ("receipted", "refused"), timeout)
    assert r.status == 200, r
    return r.json


def nothing_sent(agent, msg_id):
    return outbox_status(agent, msg_id) == 404


def add_user(agent, name, role, password):
    rc, out = agent.run("--config", agent.config, "--add-user", name, "--role", role,
                        stdin=(password + "\n").encode())
    assert rc == 0, out


#   --- the processes ---------------------------------------------------------

class Net:
    pass


def _client(broker, org):
    c = kim.Client(broker.endpoint, broker.broker_cert, broker.cert_secret(org), timeout=SLOW)
    c.connect()
    return c


def refer(n, payload=b"bitte melden", **extra):
    """A REFERRAL from aa to the office; returns its header once the agent has it."""
    rid = extra.pop("referral_id", None) or uid("R")
    hdr = kim_headers.referral(rid, extra.pop("case_id", None) or uid("C"), recipient=SOZ,
                               msg_id=uid("M"), **extra)
    n.aa.client.send(hdr, payload)
    r = n.agent.wait("/v1/referrals/" + rid, lambda j: True, SLOW)
    assert r.status == 200, r
    return hdr


def view(n, rid):
    r = n.agent.call("GET", "/v1/referrals/" + rid)
    return r.json if r.status == 200 else None


def api_grant(n, consent, case_id, valid_for_s=86400, recipients=(AA,),
              purposes=("benefits",)):
    msg_id = uid("G")
    r = n.agent.call("POST", "/v1/consents", {
        "msg_id": msg_id, "consent": consent, "case_id": case_id, "subject": "p-grant",
        "recipients": list(recipients), "purposes": list(purposes),
        "valid_until": now_ms() + int(valid_for_s * 1000)})
    assert r.status == 202, r
    return msg_id


def _sent_by_office(n, case_id, recipient=AA):
    body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": recipient,
            "referral_id": uid("S"), "case_id": case_id, "subject": "p-case",
            "purpose": "benefits", "legal_basis": kim_headers.STATUTE, "payload": "x"}
    assert n.agent.call("POST", "/v1/messages", body).status == 202
    assert outbox_final(n.agent, body["msg_id"])["status"] == "receipted"
    return body["referral_id"]


@pytest.fixture(scope="module")
def net():
    n = Net()
    n.broker = new_broker(ORGS).start()
    n.agent = AgentProc(agent_bin(), n.broker, SOZ)
    n.clients = []
    try:
        n.users = os.path.join(n.agent.folder, "agent.users")
        # docs/agent.md "Web inbox": web/enabled, web/users; deploy/agent.cfg
        # max_failures, lockout_s (high here: the lockout is agent B's test)
        n.agent.sections["web"] = {"enabled": 1, "users": n.users, "max_failures": 25,
                                   "lockout_s": 900}
        n.agent.write_config()
        add_user(n.agent, "anna", "staff", PASSWORDS["anna"])
        add_user(n.agent, "rolf", "readonly", PASSWORDS["rolf"])
        n.agent.start()
        n.aa = Inbox(_client(n.broker, AA))
        n.jc = Inbox(_client(n.broker, JC))
        n.clients = [n.aa.client, n.jc.client]
        # started early, so that the broker's timers fire while other tests run:
        # an overdue referral and two with deadlines (docs/agent.md "Web
        # inbox": overdue ones, marked, then by deadline) ...
        n.order, aa_case = {}, None
        for key, offset in (("late", 3 * 86400), ("soon", 86400), ("overdue", -30)):
            hdr = refer(n, deadline=now_ms() + offset * 1000)
            n.order[key], aa_case = hdr["referral_id"], hdr["case_id"]
        # ... the same for referrals the office made (over its API) ...
        n.sent_order = {}
        for key, offset in (("late", 3 * 86400), ("soon", 86400), ("overdue", -30)):
            body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": AA,
                    "referral_id": uid("S"), "case_id": uid("C"), "subject": "p-sent",
                    "purpose": "benefits", "legal_basis": kim_headers.STATUTE,
                    "deadline": now_ms() + offset * 1000, "payload": "x"}
            assert n.agent.call("POST", "/v1/messages", body).status == 202
            n.sent_order[key] = body["referral_id"]
        # ... and referrals under consents of aa: one to be revoked (SUSPENDED),
        # one whose consent runs out in a few seconds (LAPSED)
        n.under = {}
        for key, valid_s in (("suspended", 3600), ("lapsed", 8)):
            case_id, consent = uid("C-" + key), uid("G-" + key)
            n.aa.client.send({"type": "CONSENT_GRANT", "msg_id": uid("M"), "case_id": case_id,
                              "consent": consent, "subject": "p-consent",
                              "recipients": [SOZ], "purposes": ["benefits"],
                              "valid_until": now_ms() + valid_s * 1000})
            hdr = refer(n, case_id=case_id, subject="p-consent",
                        legal_basis={"kind": "consent", "consent_id": consent})
            n.under[key] = (hdr["referral_id"], consent)
        # consents of the office for the picker: one that fits, one that runs
        # out at once, one for another purpose, one revoked, one the broker
        # refuses (a grant in aa's case: NOT_LEAD)
        n.consents = {k: uid("G-" + k) for k in ("fits", "expired", "purpose", "revoked",
                                                  "refused")}
        n.expired_at = time.monotonic() + 2
        n.consent_msgs = {
            "fits": api_grant(n, n.consents["fits"], uid("C")),
            "expired": api_grant(n, n.consents["expired"], uid("C"), valid_for_s=2),
            "purpose": api_grant(n, n.consents["purpose"], uid("C"),
                                 purposes=("employment",)),
            "revoked": api_grant(n, n.consents["revoked"], uid("C")),
            "refused": api_grant(n, n.consents["refused"], aa_case),   # aa leads it
        }
        yield n
    finally:
        for c in n.clients:
            c.close()
        rc = n.agent.stop()
        log = n.agent.log_tail()
        n.agent.cleanup()
        n.broker.finish()
    # kim-agent(8) EXIT STATUS: 0 after a clean stop
    assert rc == 0, log


@pytest.fixture
def web(net):
    """A browser signed in as anna (staff)."""
    w = Web(net.agent.port)
    r = w.login("anna", PASSWORDS["anna"])
    assert r.status in (302, 303) and w.signed_in(), r
    return w


@pytest.fixture
def readonly(net):
    w = Web(net.agent.port)
    r = w.login("rolf", PASSWORDS["rolf"])
    assert w.signed_in(), r
    return w
