"""kim-agent's web inbox, checked from outside against its documents alone:
docs/agent.md "Web inbox" (and "Setting it up", "Operations", "Consents and the
subject's rights"), kim-agent(8) (docs/man/kim-agent.8.scd), the sample
deploy/agent.cfg, and for what a referral may take in which state
proto/PROTOCOL.md 9.1 and 9.4. Plain HTTP with http.client, no browser:
forms are read from the served HTML and sent as a browser would send them
(urlencoded, with the page's Origin).

tests/web/web.test.js (chromium) already covers the happy paths of the pages
(accept, decline, forward picker, consents, handover, axe-core); this file
aims at the rest: cookies, CSRF on every form, origins, lockouts, timing,
languages, states, what reaches the sender, hostile input, the journal.

Processes: one broker (soz.rheine is the office under test; aa.rheine and
jc.rheine are other agencies on kim.Client) and one agent with the page for
the module; a second agent under TLS with web/lang = en and a short lockout;
two short-lived agents for configuration cases. Every wait is a bounded poll."""
import html
import http.client
import json
import os
import re
import secrets
import ssl
import subprocess
import time
import urllib.parse

import pytest

import kim
import kim_headers
from conftest import _program, new_broker
from kim_agentproc import AgentProc, Reply
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
# payloads, subjects or notes"); filled by the tests, checked at the end
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


#   --- the page: off unless configured, HTML, CSP, no script -----------------

def test_start_address_leads_to_a_german_login_page(net):
    """docs/agent.md "Web inbox": "open http://127.0.0.1:7480/ and sign in";
    "German by default"."""
    page = Web(net.agent.port).follow("/")
    assert page.status == 200 and page.is_login(), page
    assert page.lang == "de"
    assert page.header("content-type").startswith("text/html")


PAGES = ["/ui/login", "/ui/inbox", "/ui/sent", "/ui/cases", "/ui/consents", "/ui/new",
         "/ui/new?recipient=%s&purpose=benefits" % AA]


def _csp_allows_no_script(csp):
    directives = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = [w.lower() for w in words[1:]]
    script = directives.get("script-src", directives.get("default-src"))
    return script == ["'none'"], directives


def test_every_page_has_a_csp_without_script_and_nothing_from_other_hosts(net, web):
    """docs/agent.md "Web inbox": "server-rendered HTML and one style sheet, no
    script, nothing from other hosts"; Security: "The Content-Security-Policy
    allows no script"."""
    rid = refer(net)["referral_id"]
    sheets = set()
    for path in PAGES + ["/ui/referral/" + rid]:
        page = (Web(net.agent.port) if path == "/ui/login" else web).get(path)
        assert page.status == 200, (path, page)
        csp = page.header("content-security-policy")
        assert csp, path
        no_script, directives = _csp_allows_no_script(csp)
        assert no_script, (path, csp)
        for name, sources in directives.items():
            for source in sources:
                # a host, a scheme or a wildcard would let other hosts in
                assert source.startswith("'") or source in ("data:",), (path, name, source)
                assert "unsafe" not in source, (path, name, source)
        text = page.text
        assert not re.search(r"<script\b", text, re.I), path
        assert not [t for t in re.findall(r"<[A-Za-z][^>]*>", text)      # no event handlers
                    if re.search(r"\son[a-z]+\s*=", t, re.I)], path
        assert not re.search(r"<(iframe|object|embed|frame)\b", text, re.I), path
        for url in re.findall(r'\b(?:src|href|action|formaction)="([^"]*)"', text, re.I):
            assert not re.match(r"(?i)([a-z][a-z0-9+.-]*:|//)", url) or \
                url.startswith(web.origin + "/"), (path, url)
        links = re.findall(r"<link\b[^>]*>", text, re.I)
        page_sheets = [_attr(t, "href") for t in links if _attr(t, "rel") == "stylesheet"]
        assert len(page_sheets) == 1, (path, links)
        sheets.update(page_sheets)
    # "one style sheet", served by the agent itself and fetching nothing else
    assert len(sheets) == 1
    css = web.get(sheets.pop())
    assert css.status == 200 and css.header("content-type").startswith("text/css"), css
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", css.text, re.I)


#   --- signing in ------------------------------------------------------------

def test_right_password_gives_a_random_32_byte_httponly_strict_session_cookie(net):
    """docs/agent.md "Web inbox", Security: "Sessions are random 32-byte ids in
    HttpOnly, SameSite=Strict cookies (Secure under TLS)"; this agent has no TLS."""
    ids = set()
    for _ in range(2):
        w = Web(net.agent.port)
        r = w.login("anna", PASSWORDS["anna"])
        assert r.status < 400 and not r.is_login(), r
        name, attrs = session_cookie(r)
        assert attrs.get("httponly") is True, attrs
        assert str(attrs.get("samesite")).lower() == "strict", attrs
        assert "secure" not in attrs, attrs      # plain HTTP: a Secure cookie never comes back
        value = attrs["value"]
        if re.fullmatch(r"[0-9a-f]{64}", value):
            raw = bytes.fromhex(value)
        else:
            import base64
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        assert len(raw) == 32, value
        ids.add(value)
        assert w.signed_in()
    assert len(ids) == 2


def test_wrong_password_and_unknown_name_are_refused_alike_and_journaled(net):
    """docs/agent.md "Web inbox", Security: a failed login is journaled
    (`login_failed`, with `address`); "A login with an unknown name costs the
    same argon2id check" (nothing tells the two apart); "Never payloads or
    notes" (nor, then, the password typed)."""
    wrong = mark("WrongPw-")
    answers = []
    for user in ("anna", "nobody-%s" % secrets.token_hex(3)):
        w = Web(net.agent.port)
        r = w.login(user, wrong)
        assert r.status >= 400, r
        assert not w.signed_in()
        assert not any("session" in k for k in r.set_cookies()), r.headers
        answers.append((r.status, r.alert()))
        assert journaled(net.agent, user=user, action="login_failed"), user
    assert answers[0] == answers[1] and answers[0][1], answers
    entry = journaled(net.agent, user="anna", action="login_failed")[-1]
    assert entry.get("address") == "127.0.0.1", entry


def test_unknown_name_costs_the_same_argon2id_check(net):
    """docs/agent.md "Web inbox", Security: "A login with an unknown name costs
    the same argon2id check" (the fastest of three of each, so a busy machine
    only slows both)."""
    def fastest(user):
        times = []
        for _ in range(3):
            w = Web(net.agent.port)
            page = w.get("/ui/login")
            (form,) = [f for f in page.forms if f.method == "post"]
            t = time.monotonic()
            r = w.submit(form, user=user, password="not-the-password-1")
            times.append(time.monotonic() - t)
            assert r.status >= 400, r
        return min(times)
    known = fastest("anna")
    unknown = fastest("nobody-%s" % secrets.token_hex(3))
    assert unknown >= 0.5 * known, (unknown, known)


def test_a_session_id_the_agent_did_not_make_is_no_session(net, web):
    """docs/agent.md "Web inbox", Security: sessions are random ids the agent
    keeps in memory: a made-up id, or the login form's own cookie, signs no one in."""
    name = next(k for k in web.jar if "session" in k)
    w = Web(net.agent.port)
    w.jar[name] = secrets.token_hex(32)
    assert not w.signed_in()
    w = Web(net.agent.port)
    w.get("/ui/login")
    login_cookie = dict(w.jar)
    assert login_cookie
    w.jar[name] = next(iter(login_cookie.values()))
    assert not w.signed_in()


def test_logout_ends_the_session_and_needs_its_csrf_token(net, web):
    """docs/agent.md "Web inbox", Security: "A session ends on logout"; every
    form's CSRF token is "checked on every POST"; journal action `logout`."""
    page = web.get("/ui/inbox")
    (logout,) = [f for f in page.forms if f.method == "post" and "logout" in f.action]
    stolen = dict(web.jar)
    r = web.submit(logout, csrf="0" * 64)
    assert r.status >= 400, r
    assert web.signed_in()
    r = web.submit(logout)
    assert r.status < 400, r
    assert not web.signed_in()
    # the old cookie, replayed, is no session either
    w = Web(net.agent.port)
    w.jar.update(stolen)
    assert not w.signed_in()
    assert journaled(net.agent, user="anna", action="logout")


def test_login_form_csrf_is_bound_to_its_own_cookie(net):
    """docs/agent.md "Web inbox", Security: "Every form carries a CSRF token ...
    (the login form one bound to a cookie of its own), checked on every POST; a
    POST from another origin is refused too"."""
    def attempt(**how):
        w = Web(net.agent.port)
        page = w.get("/ui/login")
        (form,) = [f for f in page.forms if f.method == "post"]
        changes = {"user": "anna", "password": PASSWORDS["anna"]}
        changes.update(how.get("changes", {}))
        if how.get("no_cookie"):
            w.jar.clear()
        if how.get("other_cookie"):
            other = Web(net.agent.port)
            other.get("/ui/login")
            w.jar = dict(other.jar)
        r = w.submit(form, drop=how.get("drop", ()), origin=how.get("origin", True),
                     **changes)
        return r, w.signed_in()
    for how in ({"drop": ("csrf",)}, {"changes": {"csrf": "ab" * 32}}, {"no_cookie": True},
                {"other_cookie": True}, {"origin": "http://evil.example"}):
        r, signed = attempt(**how)
        assert r.status >= 400 and not signed, (how, r)
    r, signed = attempt()
    assert signed, r


def test_a_forged_login_form_is_journaled_as_bad_csrf(net):
    """docs/agent.md "Web inbox", Security: every form's CSRF token is checked on
    every POST, the login form's too; "Every action is journaled ... Actions:
    ..., bad_csrf, bad_form, ..." with `address` for logins."""
    before = len(journal(net.agent))
    w = Web(net.agent.port)
    r = w.login("anna", PASSWORDS["anna"], csrf="cd" * 32)
    assert r.status >= 400 and not w.signed_in(), r
    new = poll(lambda: journal(net.agent)[before:], 5)
    assert new, "nothing journaled"
    assert [e for e in new if e["action"] in ("bad_csrf", "bad_form") and
            e.get("address") == "127.0.0.1"], new


#   --- CSRF and origins on every form ------------------------------------------

def _post_forms(n, web, cases=False):
    """Every POST form the pages offer anna: answers of a fresh referral, the
    second steps of a forward and of a new referral, the consent form, a
    consent's revocation, the logout; with `cases` also the second step of a
    handover offer (a case the office leads) and the answers to an offer aa
    makes to the office."""
    hdr = refer(n)
    rid = hdr["referral_id"]
    paths = ["/ui/inbox", "/ui/referral/" + rid,
             "/ui/referral/%s/forward?org=%s&purpose=benefits" % (rid, JC),
             "/ui/new?recipient=%s&purpose=benefits" % AA, "/ui/consents",
             "/ui/consent/" + n.consents["fits"]]
    if cases:
        led = uid("C-L")
        _sent_by_office(n, led)
        paths.append("/ui/case/%s/handover?%s" % (led, urllib.parse.urlencode(
            {"recipient": JC, "purpose": "case_handover"})))
        n.aa.client.send({"type": "HANDOVER_OFFER", "msg_id": uid("M"), "recipient": SOZ,
                          "case_id": hdr["case_id"], "referrals": [rid],
                          "purpose": "case_handover", "legal_basis": kim_headers.STATUTE})
        offered = "/ui/case/" + hdr["case_id"]
        assert poll(lambda: len([f for f in web.get(offered).forms if f.method == "post"]) >= 3,
                    10), web.get(offered).main
        paths.append(offered)
    forms = {}
    for path in paths:
        page = web.get(path)
        assert page.status == 200, (path, page)
        for f in page.forms:
            if f.method == "post":
                forms.setdefault((f.action, f.fields.get("answer")), f)
    return rid, forms


def _unsent(n, web, form, rid):
    """Nothing of `form` happened: its msg_id is in no outbox, the session is
    alive, the referral still unanswered."""
    msg_id = form.fields.get("msg_id")
    if msg_id:
        assert nothing_sent(n.agent, msg_id), (form.action, msg_id)
    assert web.signed_in(), form.action
    assert view(n, rid)["state"] in ("SENT", "DELIVERED"), view(n, rid)


def test_every_post_form_refuses_a_missing_wrong_or_foreign_csrf_token(net, web):
    """docs/agent.md "Web inbox", Security: "Every form carries a CSRF token of
    the session ..., checked on every POST"; journal action `bad_csrf`."""
    rid, forms = _post_forms(net, web, cases=True)
    actions = {a for a, _ in forms}
    assert any(a.endswith("/logout") for a in actions), actions
    assert any(a.endswith("/answer") for a in actions), actions
    assert len(forms) >= 10, sorted(forms)
    other = Web(net.agent.port)
    other.login("anna", PASSWORDS["anna"])
    foreign = other.csrf_form(other.get("/ui/inbox")).fields["csrf"]
    before = len(journaled(net.agent, action="bad_csrf", timeout=0))
    for key, form in sorted(forms.items(), key=str):
        assert "csrf" in form.fields, key
        for variant in ({"drop": ("csrf",)}, {"csrf": secrets.token_hex(32)},
                        {"csrf": foreign}, {"csrf": ""}):
            r = web.submit(form, **variant)
            assert 400 <= r.status < 500, (key, variant, r)
            _unsent(net, web, form, rid)
    assert not journaled(net.agent, referral_id=rid, action="accept", timeout=0)
    assert len(journaled(net.agent, action="bad_csrf")) >= before + len(forms)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1",
                                    "http://localhost:{port}",
                                    "http://127.0.0.1:{port}.evil.example"])
def test_a_post_from_another_origin_is_refused(net, web, origin):
    """docs/agent.md "Web inbox", Security: "a POST from another origin is
    refused too", with the right CSRF token."""
    origin = origin.format(port=net.agent.port)
    rid, forms = _post_forms(net, web)
    for key, form in sorted(forms.items(), key=str):
        r = web.submit(form, origin=origin)
        assert 400 <= r.status < 500, (key, origin, r)
        _unsent(net, web, form, rid)


def test_a_post_from_the_same_host_under_another_scheme_is_refused(net, web):
    """docs/agent.md "Web inbox", Security: "a POST from another origin is
    refused too"; an origin is scheme, host and port (RFC 6454), so
    https://127.0.0.1:PORT is another origin than the page's http://127.0.0.1:PORT."""
    rid = refer(net)["referral_id"]
    form = answer_form(web.get("/ui/referral/" + rid), "accept")
    r = web.submit(form, origin="https://127.0.0.1:%d" % net.agent.port)
    assert 400 <= r.status < 500, r
    _unsent(net, web, form, rid)


#   --- languages ----------------------------------------------------------------

def test_german_by_default_english_with_lang_en_and_remembered(net, web):
    """docs/agent.md "Web inbox": "German by default, English with ?lang=en
    (remembered)"; the page names "Posteingang / Inbox", "Gesendet / Sent",
    "Neue Überweisung / New referral", "Fälle / Cases", "Einwilligungen / Consents"."""
    german = ("Posteingang", "Gesendet", "Neue Überweisung", "Fälle", "Einwilligungen")
    english = ("Inbox", "Sent", "New referral", "Cases", "Consents")
    page = web.get("/ui/inbox")
    assert page.lang == "de" and all(w in page.text for w in german), page
    page = web.get("/ui/inbox?lang=en")
    assert page.lang == "en" and all(w in page.text for w in english), page
    for path in ("/ui/inbox", "/ui/sent", "/ui/consents"):
        page = web.get(path)
        assert page.lang == "en", path
    page = web.get("/ui/sent?lang=de")
    assert page.lang == "de"
    assert web.get("/ui/inbox").lang == "de"
    # before signing in as well
    w = Web(net.agent.port)
    assert w.get("/ui/login").lang == "de"
    assert w.get("/ui/login?lang=en").lang == "en"
    assert w.get("/ui/login").lang == "en"
    # and the choice made before signing in holds after it
    w.login("anna", PASSWORDS["anna"])
    assert w.signed_in() and w.get("/ui/inbox").lang == "en"


#   --- the lists -----------------------------------------------------------------

def _rows(page, table_index=None):
    tables = re.findall(r"<table\b.*?</table>", page.main, re.S)
    chosen = tables if table_index is None else [tables[table_index]]
    return [row for t in chosen for row in re.findall(r"<tr\b.*?</tr>", t, re.S)]


def _row_of(page, rid):
    rows = [r for r in _rows(page) if re.search(r">%s<" % re.escape(rid), r)]
    return rows[0] if rows else None


def test_inbox_lists_what_the_office_received_and_sent_what_it_made(net, web):
    """docs/agent.md "Web inbox": "Posteingang / Inbox: the referrals the office
    received ...; Gesendet / Sent the same for referrals the office made";
    a referral's page has "its header facts"."""
    hdr = refer(net, subject=mark("p-subj"))
    rid = hdr["referral_id"]
    body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": AA,
            "referral_id": uid("S"), "case_id": uid("C"), "subject": "p-sent",
            "purpose": "benefits", "legal_basis": kim_headers.STATUTE, "payload": "x"}
    assert net.agent.call("POST", "/v1/messages", body).status == 202
    assert outbox_final(net.agent, body["msg_id"])["status"] == "receipted"
    inbox, sent = web.get("/ui/inbox"), web.get("/ui/sent")
    row = _row_of(inbox, rid)
    assert row and AA in row, inbox.main
    assert 'href="/ui/referral/%s"' % rid in row
    assert _row_of(sent, rid) is None
    assert _row_of(sent, body["referral_id"]) and AA in _row_of(sent, body["referral_id"])
    assert _row_of(inbox, body["referral_id"]) is None
    page = web.get("/ui/referral/" + rid)
    for fact in (AA, hdr["case_id"], hdr["purpose"], hdr["subject"]):
        assert fact in page.main, fact


def test_inbox_puts_open_ones_first_overdue_marked_then_by_deadline_then_closed(net, web):
    """docs/agent.md "Web inbox": "the referrals the office received, open ones
    first (overdue ones, marked, then by deadline), then the closed ones"."""
    late, soon, overdue = (net.order[k] for k in ("late", "soon", "overdue"))
    assert poll(lambda: (view(net, overdue) or {}).get("overdue")), view(net, overdue)
    closed = refer(net)["referral_id"]
    page = web.get("/ui/referral/" + closed)
    form = answer_form(page, "decline")
    assert web.submit(form).status in (302, 303)
    assert poll(lambda: view(net, closed)["state"] == "DECLINED"), view(net, closed)
    page = web.get("/ui/inbox")
    ids = [re.search(r'href="/ui/referral/([^"]+)"', r).group(1)
           for r in _rows(page) if 'href="/ui/referral/' in r]
    assert ids.index(overdue) < ids.index(soon) < ids.index(late), ids
    # every open one before the closed one
    for rid in (overdue, soon, late):
        assert ids.index(rid) < ids.index(closed), ids
    # the overdue one is the first of them all, and marked: its row carries
    # something the others' rows do not
    open_ids = [i for i in ids if (view(net, i) or {}).get("overdue")]
    assert ids[0] in open_ids, (ids[:3], open_ids)
    def shape(rid):        # the row's markup without its texts, times and id
        row = re.sub(r"<time\b.*?</time>", "", _row_of(page, rid).replace(rid, "ID"))
        return re.sub(r">[^<]*<", "><", row)
    assert shape(overdue) != shape(soon) and shape(soon) == shape(late), page.main


def test_sent_list_is_ordered_the_same_way(net, web):
    """docs/agent.md "Web inbox": "Gesendet / Sent the same for referrals the
    office made" (open ones first, overdue ones marked, then by deadline, then
    the closed ones); PROTOCOL.md 9.4: an overdue referral's REMINDER goes to
    both parties."""
    late, soon, overdue = (net.sent_order[k] for k in ("late", "soon", "overdue"))
    assert poll(lambda: (view(net, overdue) or {}).get("overdue")), view(net, overdue)
    closed = _sent_by_office(net, uid("C"))
    r = net.agent.call("POST", "/v1/referrals/%s/answer" % closed,
                       {"answer": "withdraw", "msg_id": uid("W")})
    assert r.status == 202, r
    assert poll(lambda: view(net, closed)["state"] == "WITHDRAWN"), view(net, closed)
    page = web.get("/ui/sent")
    ids = [re.search(r'href="/ui/referral/([^"]+)"', r).group(1)
           for r in _rows(page) if 'href="/ui/referral/' in r]
    assert ids.index(overdue) < ids.index(soon) < ids.index(late) < ids.index(closed), ids
    assert ids[0] == overdue, ids[:3]

    def shape(rid):
        row = re.sub(r"<time\b.*?</time>", "", _row_of(page, rid).replace(rid, "ID"))
        return re.sub(r">[^<]*<", "><", row)
    assert shape(overdue) != shape(soon) and shape(soon) == shape(late), page.main


def test_cases_and_consents_pages_list_what_the_agent_knows(net, web):
    """docs/agent.md "Web inbox": "Fälle / Cases: the cases the agent's case view
    knows (GET /v1/cases), and a case's page (linked from every referral's page)
    ... and the consents this office recorded in it"; "Einwilligungen / Consents:
    the consents this office recorded, with their state"."""
    rid = refer(net)["referral_id"]
    case_id = view(net, rid)["case_id"]
    page = web.get("/ui/referral/" + rid)
    assert 'href="/ui/case/%s"' % case_id in page.main
    cases = net.agent.call("GET", "/v1/cases").json["items"]
    listed = web.get("/ui/cases").main
    for c in cases:
        assert c["case_id"] in listed, c["case_id"]
    consents = net.agent.call("GET", "/v1/consents").json["items"]
    listed = web.get("/ui/consents").main
    for c in consents:
        assert c["consent"] in listed, c["consent"]
    fits = net.agent.call("GET", "/v1/consents/" + net.consents["fits"]).json
    case_page = web.get("/ui/case/" + fits["case_id"])
    assert case_page.status == 200 and net.consents["fits"] in case_page.main


#   --- a referral's page ------------------------------------------------------------

def test_payload_is_shown_as_escaped_text_and_opening_is_journaled(net, web):
    """docs/agent.md "Web inbox": the content is "the payload ... shown as text";
    Security: "everything not written by the agent is escaped"; journal action
    `open` ("a referral's content was shown") with the user, never the payload."""
    secret = mark("PAYLOAD-")
    payload = ('Bitte <script>alert("x")</script><img src=x onerror=alert(1)> & "Termin" '
               "'ü' </pre></main> %s" % secret)
    rid = refer(net, payload=payload.encode())["referral_id"]
    page = web.get("/ui/referral/" + rid)
    assert page.status == 200, page
    assert payload in html.unescape(page.main)
    assert "<script" not in page.text and "<img" not in page.text
    assert not [t for t in re.findall(r"<[A-Za-z][^>]*>", page.text)
                if re.search(r"\sonerror\s*=", t)]
    entry = journaled(net.agent, user="anna", action="open", referral_id=rid)
    assert entry, journal(net.agent)[-3:]


def test_a_payload_that_is_not_utf8_still_gives_a_utf8_page(net, web):
    """docs/agent.md "Web inbox": the content is "shown as text" on a page the
    agent declares as UTF-8 (Content-Type charset): bytes that are not UTF-8
    must not break the page or the agent."""
    rid = refer(net, payload=b"kaputt \xff\xfe \xc3\x28 <b>fett</b> \xed\xa0\x80")["referral_id"]
    page = web.get("/ui/referral/" + rid)
    assert page.status == 200, page
    assert "utf-8" in page.header("content-type").lower()
    page.raw.decode("utf-8")                 # strict: raises on bad bytes
    assert "<b>" not in page.main
    assert net.agent.process.poll() is None


def test_a_new_referral_offers_accept_decline_not_competent_forward_and_only_those(net, web):
    """docs/agent.md "Web inbox": "the answers the office may give in its state,
    and only those"; PROTOCOL.md 9.4: a delivered referral takes ACCEPT, DECLINE,
    NOT_COMPETENT, FORWARD from its recipient (INFO_* are no page answers)."""
    rid = refer(net)["referral_id"]
    page = web.get("/ui/referral/" + rid)
    offered = answers_offered(page)
    assert offered == {"accept", "decline", "not_competent", "forward"}, offered
    # "each form carries its own msg_id"
    ids = [f.fields["msg_id"] for f in page.forms if f.action.endswith("/answer")]
    assert len(ids) == len(set(ids)) == 3, ids


def test_accept_status_outcome_reach_the_sender_as_those_messages(net, web):
    """docs/agent.md "Web inbox": accept, "progress status, outcome code"; "An
    answer goes into the agent's outbox like one posted to
    /v1/referrals/{id}/answer; each form carries its own msg_id"; journal
    `accept`, ...; PROTOCOL.md 9.1: STATUS codes, OUTCOME without a note;
    9.4: after ACCEPT the recipient may send FORWARD, STATUS, OUTCOME."""
    hdr = refer(net)
    rid = hdr["referral_id"]
    note = mark("NOTE-")
    form = answer_form(web.get("/ui/referral/" + rid), "accept")
    r = web.submit(form, note=note)
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="ACCEPT", referral_id=rid, timeout=SLOW)
    assert got.hdr["msg_id"] == form.fields["msg_id"]
    assert (got.hdr["sender"], got.hdr["recipient"]) == (SOZ, AA)
    assert got.hdr.get("note") == note
    record = outbox_final(net.agent, form.fields["msg_id"])
    assert record["status"] == "receipted", record
    assert journaled(net.agent, user="anna", action="accept", referral_id=rid,
                     msg_id=form.fields["msg_id"])
    assert poll(lambda: view(net, rid)["state"] == "ACCEPTED")
    page = web.get("/ui/referral/" + rid)
    assert answers_offered(page) == {"status", "outcome", "forward"}, answers_offered(page)

    form = answer_form(page, "status")
    r = web.submit(form, code="appointment_set")
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="STATUS", referral_id=rid, timeout=SLOW)
    assert (got.hdr["code"], got.hdr["msg_id"]) == ("appointment_set", form.fields["msg_id"])
    assert journaled(net.agent, user="anna", msg_id=form.fields["msg_id"], referral_id=rid)

    assert poll(lambda: view(net, rid)["state"] == "IN_PROGRESS")
    form = answer_form(web.get("/ui/referral/" + rid), "outcome")
    r = web.submit(form, code="completed")
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="OUTCOME", referral_id=rid, timeout=SLOW)
    assert (got.hdr["code"], got.hdr["msg_id"]) == ("completed", form.fields["msg_id"])
    assert "note" not in got.hdr and got.payload == b""
    assert journaled(net.agent, user="anna", msg_id=form.fields["msg_id"], referral_id=rid)
    assert poll(lambda: view(net, rid)["state"] == "COMPLETED")
    assert answers_offered(web.get("/ui/referral/" + rid)) == set()


def test_sending_a_form_twice_sends_one_message(net, web):
    """docs/agent.md "Web inbox": "each form carries its own msg_id, so sending a
    form twice sends one message"."""
    rid = refer(net)["referral_id"]
    form = answer_form(web.get("/ui/referral/" + rid), "accept")
    for _ in range(2):
        r = web.submit(form)
        assert r.status in (302, 303), r
    assert net.aa.wait(type="ACCEPT", referral_id=rid, timeout=SLOW)
    net.aa.settle()
    assert len(net.aa.where(referral_id=rid, type="ACCEPT")) == 1


def test_decline_with_a_reason_reaches_the_sender(net, web):
    """docs/agent.md "Web inbox": "decline with a reason"; PROTOCOL.md 9.1:
    DECLINE carries `code` (capacity, not_eligible, person_declined, other);
    9.4: DECLINED is closed and takes nothing more from the recipient."""
    rid = refer(net)["referral_id"]
    note = mark("NOTE-")
    form = answer_form(web.get("/ui/referral/" + rid), "decline")
    r = web.submit(form, code="not_eligible", note=note)
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="DECLINE", referral_id=rid, timeout=SLOW)
    assert (got.hdr["code"], got.hdr.get("note"), got.hdr["msg_id"]) == \
        ("not_eligible", note, form.fields["msg_id"])
    assert journaled(net.agent, user="anna", action="decline", referral_id=rid)
    assert poll(lambda: view(net, rid)["state"] == "DECLINED")
    assert answers_offered(web.get("/ui/referral/" + rid)) == set()


def test_not_competent_naming_a_better_office_reaches_the_sender(net, web):
    """docs/agent.md "Web inbox": "not competent (optionally naming a better
    office)"; PROTOCOL.md 9.1: NOT_COMPETENT with optional `org`."""
    rid = refer(net)["referral_id"]
    form = answer_form(web.get("/ui/referral/" + rid), "not_competent")
    r = web.submit(form, org=JC)
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="NOT_COMPETENT", referral_id=rid, timeout=SLOW)
    assert (got.hdr.get("org"), got.hdr["msg_id"]) == (JC, form.fields["msg_id"])
    assert journaled(net.agent, user="anna", msg_id=form.fields["msg_id"], referral_id=rid)


def _forward_form(web, rid, org, purpose="benefits"):
    """docs/agent.md "Web inbox": "the new office and purpose on the referral's
    page, then the legal-basis picker for them (/ui/referral/{id}/forward)"."""
    page = web.get("/ui/referral/" + rid)
    (first,) = [f for f in page.forms if f.action.endswith("/forward")]
    assert first.method == "get"
    query = urllib.parse.urlencode(first.data(org=org, purpose=purpose))
    second = web.get("%s?%s" % (first.action, query))
    assert second.status == 200, second
    (form,) = [f for f in second.forms if f.method == "post" and "msg_id" in f.fields]
    return form


def test_forward_in_two_steps_reaches_the_sender_and_the_new_office(net, web):
    """docs/agent.md "Web inbox": "forward (new office, purpose, legal basis)" in
    two steps; PROTOCOL.md 9.2 FORWARD: delivered to the referral's sender and
    to `org`."""
    rid = refer(net)["referral_id"]
    form = _forward_form(web, rid, JC)
    r = web.submit(form, basis="statute", citation=STATUTE)
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="FORWARD", referral_id=rid, timeout=SLOW)
    assert (got.hdr["org"], got.hdr["purpose"], got.hdr["msg_id"]) == \
        (JC, "benefits", form.fields["msg_id"])
    assert got.hdr["legal_basis"] == {"kind": "statute", "citation": STATUTE}
    assert net.jc.wait(type="FORWARD", referral_id=rid, timeout=SLOW)
    assert journaled(net.agent, user="anna", msg_id=form.fields["msg_id"], referral_id=rid)


def test_a_refusal_by_the_broker_shows_in_the_timeline_with_its_reason(net, web):
    """docs/agent.md "Web inbox": "If the broker refuses it, the timeline says
    why" (a citation no rule of the broker's policy accepts: NO_BASIS)."""
    rid = refer(net)["referral_id"]
    form = _forward_form(web, rid, JC)
    r = web.submit(form, basis="statute", citation="SGB II §999")
    assert r.status in (302, 303), r
    record = outbox_final(net.agent, form.fields["msg_id"])
    assert record["status"] == "refused", record

    def says_why():
        text = html.unescape(web.get("/ui/referral/" + rid).main)
        return record["error"] in text or record["text"] in text
    assert poll(says_why, 10), web.get("/ui/referral/" + rid).main


def test_withdraw_is_offered_for_a_referral_the_office_sent_and_reaches_its_recipient(
        net, web):
    """docs/agent.md "Web inbox": "withdraw for a referral the office sent";
    PROTOCOL.md 9.4: the sender may send WITHDRAW (INFO_* are no page answers)."""
    body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": AA,
            "referral_id": uid("S"), "case_id": uid("C"), "subject": "p-sent",
            "purpose": "benefits", "legal_basis": kim_headers.STATUTE, "payload": "x"}
    assert net.agent.call("POST", "/v1/messages", body).status == 202
    assert outbox_final(net.agent, body["msg_id"])["status"] == "receipted"
    page = web.get("/ui/referral/" + body["referral_id"])
    assert answers_offered(page) == {"withdraw"}, answers_offered(page)
    form = answer_form(page, "withdraw")
    r = web.submit(form)
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="WITHDRAW", referral_id=body["referral_id"], timeout=SLOW)
    assert (got.hdr["sender"], got.hdr["msg_id"]) == (SOZ, form.fields["msg_id"])


def test_suspended_and_lapsed_referrals_offer_the_recipient_no_answer(net, web):
    """docs/agent.md "Consents and the subject's rights": a revoked consent's
    referrals are SUSPENDED in the recipient's agent, an expired one's LAPSED;
    "Web inbox": "the answers the office may give in its state, and only those";
    PROTOCOL.md 9.4: SUSPENDED and LAPSED take only a WITHDRAW (the sender's)."""
    suspended, consent = net.under["suspended"]
    lapsed, _ = net.under["lapsed"]
    net.aa.client.send({"type": "CONSENT_REVOKE", "msg_id": uid("M"), "consent": consent})
    assert poll(lambda: view(net, suspended)["state"] == "SUSPENDED"), view(net, suspended)
    assert poll(lambda: view(net, lapsed)["state"] == "LAPSED"), view(net, lapsed)
    inbox = web.get("/ui/inbox")
    for rid in (suspended, lapsed):
        assert _row_of(inbox, rid), rid
        page = web.get("/ui/referral/" + rid)
        assert page.status == 200
        assert answers_offered(page) == set(), (rid, answers_offered(page))


def test_new_referral_in_two_steps_reaches_the_recipient_as_typed(net, web):
    """docs/agent.md "Web inbox": "Neue Überweisung / New referral, in two steps
    (no script needed): recipient and purpose first; then ids, deadline, content
    and the legal basis"; "besides them a statute, as its citation"; journal
    action `referral`; the Sent list shows it."""
    page = web.get("/ui/new")
    (first,) = [f for f in page.forms if f.action.startswith("/ui/new")]
    assert first.method == "get"
    fields = first.fields
    assert {"recipient", "purpose"} <= set(fields), fields
    second = web.get("/ui/new?" + urllib.parse.urlencode(
        first.data(recipient=AA, purpose="benefits")))
    (form,) = [f for f in second.forms if f.method == "post" and "msg_id" in f.fields]
    rid, case_id = uid("W"), uid("C")
    payload = "Rückfrage <b>fett</b> & \"zitiert\" %s" % mark("PAYLOAD-")
    r = web.submit(form, referral_id=rid, case_id=case_id, subject="p-web", basis="statute",
                   citation=STATUTE, payload=payload)
    assert r.status in (302, 303), r
    (got,) = net.aa.wait(type="REFERRAL", referral_id=rid, timeout=SLOW)
    assert (got.hdr["sender"], got.hdr["case_id"], got.hdr["subject"], got.hdr["purpose"],
            got.hdr["msg_id"]) == (SOZ, case_id, "p-web", "benefits", form.fields["msg_id"])
    assert got.hdr["legal_basis"] == {"kind": "statute", "citation": STATUTE}
    assert got.payload.decode("utf-8") == payload
    assert journaled(net.agent, user="anna", action="referral", msg_id=form.fields["msg_id"])
    assert poll(lambda: _row_of(web.get("/ui/sent"), rid), 10)


def test_picker_offers_only_granted_unrevoked_unexpired_consents_for_recipient_and_purpose(
        net, web):
    """docs/agent.md "Web inbox": "The picker offers only the consents this office
    granted through the agent (its CONSENT_GRANT messages the broker took), not
    revoked ..., and not expired, that list this recipient and this purpose"."""
    for key, msg_id in net.consent_msgs.items():
        outbox_final(net.agent, msg_id)
    assert outbox_status(net.agent, net.consent_msgs["refused"]) == "refused"
    revoke = net.agent.call("POST", "/v1/consents/%s/revoke" % net.consents["revoked"],
                            {"msg_id": uid("V")})
    assert revoke.status == 202, revoke
    assert poll(lambda: net.agent.call("GET", "/v1/consents/" + net.consents["revoked"])
                .json["state"] == "revoked")
    time.sleep(max(0.0, net.expired_at + 0.5 - time.monotonic()))  # granted for 2 s
    page = web.get("/ui/new?" + urllib.parse.urlencode({"recipient": AA,
                                                        "purpose": "benefits"}))
    offered = " ".join(v for f in page.forms for k, v in f.pairs if k == "basis") + " " + \
        " ".join(_attr(t, "value") or "" for t in
                 re.findall(r"<input\b[^>]*name=\"basis\"[^>]*>", page.text))
    assert net.consents["fits"] in offered, offered
    for key in ("expired", "purpose", "revoked", "refused"):
        assert net.consents[key] not in offered, (key, offered)


def test_consent_form_records_a_consent_with_several_categories(net, web):
    """docs/agent.md "Web inbox": "Einwilligungen / Consents ... for staff a form
    that records one: it sends a CONSENT_GRANT (consent id, case, subject,
    recipients, purposes, data categories, explicit for art. 9 data, valid
    until the end of a date, and who gave it ...), as POST /v1/consents does";
    journal action `consent_grant`. A consent may cover several categories."""
    page = web.get("/ui/consents")
    (form,) = [f for f in page.forms if f.method == "post" and "msg_id" in f.fields]
    boxes = [_attr(t, "value") for t in re.findall(r"<input\b[^>]*>", form.inner)
             if _attr(t, "name") == "category"]
    assert len(boxes) >= 2, boxes
    chosen = boxes[:2]
    consent, case_id = uid("G-web"), uid("C")
    until = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 86400))
    data = [(k, v) for k, v in form.data(drop=("category", "explicit"), consent=consent,
                                         case_id=case_id, subject="p-web-consent",
                                         recipients=AA, purposes="benefits",
                                         valid_until=until)]
    data += [("category", c) for c in chosen] + [("explicit", "1")]
    r = web.post(form.action, data)
    assert r.status in (302, 303), r
    record = poll(lambda: (lambda x: x.json if x.status == 200 and x.json["state"] != "pending"
                           else None)(net.agent.call("GET", "/v1/consents/" + consent)))
    assert record and record["state"] == "active", record
    assert sorted(record.get("categories", [])) == sorted(chosen), record
    assert record["grant_msg_id"] == form.fields["msg_id"]
    assert journaled(net.agent, user="anna", action="consent_grant",
                     msg_id=form.fields["msg_id"])


def _sent_by_office(n, case_id, recipient=AA):
    body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": recipient,
            "referral_id": uid("S"), "case_id": case_id, "subject": "p-case",
            "purpose": "benefits", "legal_basis": kim_headers.STATUTE, "payload": "x"}
    assert n.agent.call("POST", "/v1/messages", body).status == 202
    assert outbox_final(n.agent, body["msg_id"])["status"] == "receipted"
    return body["referral_id"]


def test_handover_offer_lists_every_ticked_open_referral(net, web):
    """docs/agent.md "Web inbox", Übergabe / Handover: "two steps: the receiving
    office and purpose (case_handover proposed), then the subject, the case's
    open referrals to hand over (ticked; up to 20 on the form) and the legal
    basis ... It sends a HANDOVER_OFFER (journal: handover_offer)"; PROTOCOL.md
    9.1: HANDOVER_OFFER carries `referrals`. The office made the case (its
    first REFERRAL opened it, 9.4), so it leads it."""
    case_id = uid("C-H")
    rids = sorted(_sent_by_office(net, case_id) for _ in range(2))
    page = web.get("/ui/case/" + case_id)
    assert page.status == 200, page
    (first,) = [f for f in page.forms if "handover" in (f.action or "") and
                f.method == "get"]
    assert first.fields.get("purpose") == "case_handover", first.fields
    second = web.get("%s?%s" % (first.action, urllib.parse.urlencode(
        first.data(recipient=JC))))
    assert second.status == 200, second
    (form,) = [f for f in second.forms if f.method == "post" and "msg_id" in f.fields]
    ticked = sorted(v for k, v in form.pairs if v in rids)
    assert ticked == rids, form.pairs
    r = web.submit(form, basis="statute", citation=STATUTE)
    assert r.status in (302, 303), r
    (got,) = net.jc.wait(type="HANDOVER_OFFER", case_id=case_id, timeout=SLOW)
    assert sorted(got.hdr.get("referrals", [])) == rids, got.hdr
    assert got.hdr["msg_id"] == form.fields["msg_id"]
    assert journaled(net.agent, user="anna", action="handover_offer",
                     msg_id=form.fields["msg_id"])


#   --- readonly, tokens and sessions -------------------------------------------

def test_readonly_sees_the_pages_without_answers_and_cannot_send(net, readonly):
    """docs/agent.md "Web inbox": "readonly sees the same pages and sends
    nothing"; journal action `forbidden`."""
    rid = refer(net)["referral_id"]
    page = readonly.get("/ui/referral/" + rid)
    assert page.status == 200 and rid in page.main
    assert not [f for f in page.forms if f.method == "post" and f.action.endswith("/answer")]
    csrf = readonly.csrf_form(page).fields["csrf"]
    for path, form in (("/ui/referral/%s/answer" % rid,
                        {"csrf": csrf, "answer": "accept", "msg_id": uid("web")}),
                       ("/ui/new", {"csrf": csrf, "msg_id": uid("web"), "recipient": AA,
                                    "purpose": "benefits", "referral_id": uid("RO"),
                                    "case_id": uid("C"), "subject": "p-ro",
                                    "basis": "statute", "citation": STATUTE,
                                    "payload": "x"})):
        r = readonly.post(path, form)
        assert 400 <= r.status < 500, (path, r)
        assert nothing_sent(net.agent, form["msg_id"]), path
    assert view(net, rid)["state"] in ("SENT", "DELIVERED")
    assert journaled(net.agent, user="rolf", action="forbidden")


def test_an_api_token_is_no_web_login(net):
    """docs/agent.md "Setting it up": API tokens are for client systems
    (`Authorization: Bearer`); "Web inbox": staff sign in with the accounts of
    web/users. A token opens no page and is no password."""
    w = Web(net.agent.port)
    page = w.get("/ui/inbox", headers={"Authorization": "Bearer " + net.agent.token})
    assert page.status != 200 or page.is_login(), page
    name = next(iter(net.agent.tokens))
    r = w.login(name, net.agent.token)
    assert r.status >= 400 and not w.signed_in(), r


def test_a_web_session_does_not_open_the_api(net, web):
    """docs/agent.md "Setting it up": "Every request needs Authorization: Bearer
    <token>"; "Errors": 401 for no token or a wrong one (FORBIDDEN)."""
    name, value = next((k, v) for k, v in web.jar.items() if "session" in k)
    cookie = "; ".join("%s=%s" % kv for kv in web.jar.items())
    for headers in ({"Cookie": cookie}, {"Cookie": cookie, "Authorization": "Bearer " + value}):
        r = net.agent.call("GET", "/v1/status", token=False, headers=headers)
        assert r.status == 401 and r.json["error"] == "FORBIDDEN", (headers, r)
        r = net.agent.call("GET", "/v1/referrals", token=False, headers=headers)
        assert r.status == 401, r


#   --- hostile input ---------------------------------------------------------------

def _alive(n):
    assert n.agent.process.poll() is None, n.agent.log_tail()
    assert n.agent.call("GET", "/v1/status").status == 200


def test_hostile_login_input_is_refused_cleanly(net):
    """docs/agent.md "Web inbox": names and passwords (10 to 256 characters) of
    web/users; whatever else is sent is refused with an answer, and the agent
    lives on (no session, no crash)."""
    cases = [
        {"user": "a" * 5000}, {"password": "p" * 100000}, {"user": "anna\x00x"},
        {"user": "anna", "password": PASSWORDS["anna"] + "\x00"},
        {"user": "<script>alert(1)</script>"}, {"extra": "unknown field"},
    ]
    for case in cases:
        w = Web(net.agent.port)
        changes = dict({"user": "anna", "password": "wrong-password-x"}, **case)
        r = w.login(**changes)
        assert 400 <= r.status < 500, (case, r)
        assert not w.signed_in() and "<script>alert" not in r.text, case
    raw_bodies = [b"user=anna&password=%FF%FE%FD&csrf=", b"user=%E2%82&password=xxxxxxxxxxxx",
                  b"%%%%&&&===", b"user=anna&password=" + b"\xff" * 20,
                  b"x" * (5 * 1024 * 1024)]
    for body in raw_bodies:
        w = Web(net.agent.port)
        page = w.get("/ui/login")
        (form,) = [f for f in page.forms if f.method == "post"]
        body = body.replace(b"csrf=", b"") + b"&csrf=" + form.fields["csrf"].encode()
        r = w.post("/ui/login", body)
        assert 400 <= r.status < 500, (body[:40], r)
        assert not w.signed_in()
    r = Web(net.agent.port).request("POST", "/ui/login", body=b'{"user":"anna"}',
                                    headers={"Content-Type": "application/json"})
    assert 400 <= r.status < 500, r
    _alive(net)


def test_hostile_answer_input_is_refused_with_an_error_and_sends_nothing(net, web):
    """docs/agent.md "Web inbox": an answer goes out "like one posted to
    /v1/referrals/{id}/answer" (docs/agent.md "Errors": what the protocol
    refuses is refused, 4xx); journal action `bad_form`; PROTOCOL.md 9.1/
    header table: a note is at most 280 bytes, DECLINE codes are a closed list,
    msg_id is 1..64 of A-Z a-z 0-9 . _ : -."""
    rid = refer(net)["referral_id"]
    page = web.get("/ui/referral/" + rid)
    decline = answer_form(page, "decline")
    bad = [
        {"note": "n" * 281}, {"note": "ü" * 200},        # 400 bytes in 200 characters
        {"note": "n" * 70000}, {"code": "not-a-reason"}, {"code": ""},
        {"answer": "explode"}, {"msg_id": "bad id!"}, {"msg_id": "m" * 65},
    ]
    for change in bad:
        msg_id = change.get("msg_id") or uid("web")
        r = web.submit(decline, **dict({"msg_id": msg_id}, **change))
        assert 400 <= r.status < 500, (change, r)
        assert r.alert() or r.text.strip(), change
        assert outbox_status(net.agent, msg_id) in (404, 400), change
    csrf = decline.fields["csrf"]
    raw = [b"answer=decline&code=capacity&note=%FF%FE",              # bad UTF-8
           b"answer=decline&code=capacity&note=\xc3\x28",
           b"answer=decline&code=capacity&note=a%00b",                # NUL
           b"answer=decline&code=capacity&note=" + b"n" * (5 * 1024 * 1024)]
    for body in raw:
        msg_id = uid("web")
        r = web.post(decline.action, body + b"&msg_id=" + msg_id.encode() +
                     b"&csrf=" + csrf.encode())
        assert 400 <= r.status < 500, (body[:50], r)
        assert nothing_sent(net.agent, msg_id), body[:50]
    assert view(net, rid)["state"] in ("SENT", "DELIVERED")
    assert journaled(net.agent, user="anna", action="bad_form")
    # an unknown field never reaches the wire
    msg_id = uid("web")
    r = web.submit(decline, msg_id=msg_id, colour="blue")
    assert r.status < 500, r
    if r.status in (302, 303):
        (got,) = net.aa.wait(type="DECLINE", referral_id=rid, timeout=SLOW)
        assert "colour" not in got.hdr
    _alive(net)


def test_hostile_paths_and_queries_are_escaped_or_refused(net, web):
    """docs/agent.md "Web inbox", Security: "everything not written by the agent
    is escaped"; unknown referrals are not found; nothing crashes."""
    probe = '<script>alert(1)</script>"x'
    quoted = urllib.parse.quote(probe, safe="")
    for path in ("/ui/referral/" + quoted, "/ui/referral/" + "R" * 5000,
                 "/ui/referral/%FF%FE", "/ui/referral/..%2F..%2Fetc%2Fpasswd",
                 "/ui/inbox?lang=" + quoted, "/ui/referral/%s?sent=%s" % (
                     refer(net)["referral_id"], quoted),
                 "/ui/new?recipient=%s&purpose=%s" % (quoted, quoted),
                 "/ui/case/" + quoted, "/ui/consent/" + quoted, "/ui/%00"):
        page = web.get(path)
        assert page.status < 500, (path, page)
        assert "<script>alert" not in page.text, path
        # the policy holds for error pages too
        assert _csp_allows_no_script(page.header("content-security-policy") or "")[0], path
    assert web.get("/ui/referral/NO-SUCH-REFERRAL").status == 404
    r = web.get("/ui/inbox", headers={"Cookie": "; ".join(
        ["%s=%s" % kv for kv in web.jar.items()] + ["x%d=%s" % (i, "y" * 100)
                                                    for i in range(200)])})
    assert r.status < 500, r
    _alive(net)


#   --- accounts while running ------------------------------------------------------

def test_the_running_agent_picks_up_changed_accounts(net):
    """docs/agent.md "Web inbox": --add-user writes web/users, "replaced
    atomically; the running agent picks up changes"; "Running the command again
    for a name replaces its password or role"."""
    first, second = "dora-first-password", "dora-second-password"
    add_user(net.agent, "dora", "readonly", first)

    def signs_in(password):
        w = Web(net.agent.port)
        w.login("dora", password)
        return w if w.signed_in() else None
    w = poll(lambda: signs_in(first), 5, every=1.0)
    assert w, "a new account does not sign in while the agent runs"
    rid = refer(net)["referral_id"]
    assert not answers_offered(w.get("/ui/referral/" + rid)) - {"forward"}
    add_user(net.agent, "dora", "staff", second)
    w = poll(lambda: signs_in(second), 5, every=1.0)
    assert w, "the replaced password does not sign in"
    assert not signs_in(first)
    assert "accept" in answers_offered(w.get("/ui/referral/" + rid))


def test_add_user_counts_the_password_in_characters(net):
    """docs/agent.md "Web inbox": "the password (10 to 256 characters) is read from
    stdin"; kim-agent(8): 2 for a usage error. A German office's passphrase has
    umlauts: its length is counted in characters, not UTF-8 bytes."""
    rc, out = net.agent.run("--config", net.agent.config, "--add-user", "emil", "--role",
                            "staff", stdin=("ü" * 200 + "\n").encode())
    assert rc == 0, out
    rc, out = net.agent.run("--config", net.agent.config, "--add-user", "fritz", "--role",
                            "staff", stdin=("ü" * 5 + "\n").encode())
    assert rc != 0, out
    for too_long in ("a" * 257, "ü" * 257, "€" * 300):     # refused whole, never cut
        rc, out = net.agent.run("--config", net.agent.config, "--add-user", "hugo", "--role",
                                "staff", stdin=(too_long + "\n").encode())
        assert rc != 0, (len(too_long), out)

    def signs_in():                     # the users file is picked up while running
        w = Web(net.agent.port)
        w.login("emil", "ü" * 200)
        return w.signed_in()
    assert poll(signs_in, 5, every=1.0)


def test_a_password_with_umlauts_signs_in(net):
    """docs/agent.md "Web inbox": --add-user reads the password from stdin; the
    login page takes it back (the page is UTF-8)."""
    password = "Grüße aus Rheine, Straße 5"
    add_user(net.agent, "gustav", "staff", password)

    def signs_in():
        w = Web(net.agent.port)
        w.login("gustav", password)
        return w.signed_in()
    assert poll(signs_in, 5, every=1.0)


#   --- the journal and the log ---------------------------------------------------

def test_journal_names_the_user_and_never_payloads_notes_or_passwords(net):
    """docs/agent.md "Web inbox", Security: "Every action is journaled with the
    staff member's name: agent/data/web.journal, one JSON line each (at, user,
    action, referral_id, msg_id, address for logins), and the same line in the
    agent's log ... Never payloads or notes"; "Operations": the log has "never
    payloads, subjects or notes"; "Setting it up": logs never payloads or names."""
    entries = journal(net.agent)
    assert entries
    for e in entries:
        assert {"at", "action"} <= set(e) and isinstance(e["at"], int), e
        if e["action"] in ("login", "login_failed", "login_locked"):
            assert e.get("address") == "127.0.0.1", e
    actions = {e["action"] for e in entries}
    for action in ("login", "login_failed", "logout", "open", "accept", "decline", "referral",
                   "bad_csrf", "bad_form", "forbidden"):
        assert action in actions, action
    log = net.agent.log_text()
    logged = []
    for line in log.splitlines():
        m = re.search(r'msg="(.*)"\s*$', line)
        if m and "web: {" in m.group(1):
            try:
                text = json.loads('"%s"' % m.group(1))
                logged.append(json.loads(text[text.index("web: {") + 5:]))
            except ValueError:
                logged.append(m.group(1))
    for e in entries:
        assert e in logged, e
    with open(os.path.join(net.agent.data, "web.journal"), encoding="utf-8") as f:
        text = f.read()
    for word in SECRETS + list(PASSWORDS.values()) + ["dora-first-password",
                                                      "dora-second-password"]:
        assert word not in text, word
        assert word not in log, word


#   --- a second agent: TLS, web/lang = en, a short lockout --------------------------

class TlsAgentProc(AgentProc):
    """AgentProc whose API calls go over TLS (self-signed certificate)."""

    def call(self, method, path, body=None, token=None, headers=None, timeout=10.0):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                           context=ssl._create_unverified_context())
        hdrs = {}
        if token is not False:
            hdrs["Authorization"] = "Bearer %s" % (token or self.token)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                         resp.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def tls(net):
    a = TlsAgentProc(agent_bin(), net.broker, JA)
    try:
        cert, key = os.path.join(a.folder, "agent.crt"), os.path.join(a.folder, "agent.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=60)
        os.chmod(key, 0o600)
        users = os.path.join(a.folder, "agent.users")
        a.sections["http"].update({"tls_cert": cert, "tls_key": key})
        a.sections["web"] = {"enabled": 1, "users": users, "lang": "en",
                             "max_failures": MAX_FAILURES_B, "lockout_s": LOCKOUT_S}
        a.write_config()
        for name in ("anna", "bert", "carl"):
            add_user(a, name, "staff", PASSWORDS[name])
        a.start(connected=False)
        yield a
    finally:
        a.cleanup()


def test_under_tls_the_session_cookie_is_secure(tls):
    """docs/agent.md "Web inbox": "with TLS (http/tls_cert, http/tls_key); the
    session cookie is then Secure as well"; Security: HttpOnly, SameSite=Strict."""
    w = Web(tls.port, tls=True)
    r = w.login("anna", PASSWORDS["anna"])
    name, attrs = session_cookie(r)
    assert attrs.get("secure") is True, attrs
    assert attrs.get("httponly") is True and str(attrs.get("samesite")).lower() == "strict"
    assert w.signed_in()


def test_web_lang_en_makes_english_the_default(tls):
    """docs/agent.md "Web inbox": "English with ?lang=en (remembered) or
    web/lang = en"; kim-agent(8): web/lang "de or en"."""
    w = Web(tls.port, tls=True)
    assert w.get("/ui/login").lang == "en"
    assert w.get("/ui/login?lang=de").lang == "de"
    assert w.get("/ui/login").lang == "de"
    assert Web(tls.port, tls=True).get("/ui/login").lang == "en"


def test_a_name_is_locked_after_max_failures_the_right_password_included(tls):
    """docs/agent.md "Web inbox", Security: "After web/max_failures failed logins
    for a name within web/lockout_s that name is locked for web/lockout_s, the
    right password included"; journal `login_locked`."""
    w = Web(tls.port, tls=True)
    w.login("bert", "wrong-password-1")
    r = w.login("bert", PASSWORDS["bert"])       # one failure is not max_failures (2)
    assert w.signed_in(), r
    for i in range(MAX_FAILURES_B):
        assert Web(tls.port, tls=True).login("carl", "wrong-password-%d" % i).status >= 400
    w = Web(tls.port, tls=True)
    r = w.login("carl", PASSWORDS["carl"])
    assert r.status >= 400 and not w.signed_in(), r
    assert journaled(tls, user="carl", action="login_locked")
    other = Web(tls.port, tls=True)
    other.login("anna", PASSWORDS["anna"])
    assert other.signed_in()                     # the name is locked, not the address
    time.sleep(LOCKOUT_S + 0.5)
    w = Web(tls.port, tls=True)
    r = w.login("carl", PASSWORDS["carl"])
    assert w.signed_in(), r


def test_an_address_is_locked_after_four_times_max_failures(tls):
    """docs/agent.md "Web inbox", Security: "an address after four times as many"
    (failed logins within web/lockout_s, whatever the names)."""
    for i in range(4 * MAX_FAILURES_B):
        r = Web(tls.port, tls=True).login("nobody-%d-%s" % (i, secrets.token_hex(2)),
                                          "wrong-password-x")
        assert r.status >= 400, r
    w = Web(tls.port, tls=True)
    r = w.login("anna", PASSWORDS["anna"])
    assert r.status >= 400 and not w.signed_in(), r
    time.sleep(LOCKOUT_S + 0.5)
    w = Web(tls.port, tls=True)
    r = w.login("anna", PASSWORDS["anna"])
    assert w.signed_in(), r


def test_a_restart_signs_everyone_out(tls):
    """docs/agent.md "Web inbox", Security: sessions are "kept in memory: a
    restart signs everyone out"."""
    w = Web(tls.port, tls=True)
    w.login("bert", PASSWORDS["bert"])
    assert w.signed_in()
    assert tls.stop() == 0
    tls.start(connected=False)
    w.port = tls.port
    assert w.jar and not w.signed_in()


#   --- configuration ------------------------------------------------------------------

def test_the_page_is_off_unless_enabled(net):
    """docs/agent.md "Web inbox": "It is off unless configured" (web/enabled = 1;
    kim-agent(8): web/enabled 0 or 1): with enabled = 0 nothing is served under /ui/."""
    a = AgentProc(agent_bin(), net.broker, ALB)
    try:
        users = os.path.join(a.folder, "agent.users")
        a.sections["web"] = {"enabled": 0, "users": users}
        a.write_config()
        add_user(a, "anna", "staff", PASSWORDS["anna"])
        a.start(connected=False)
        for path in ("/ui/login", "/ui/inbox", "/ui/style.css", "/"):
            r = a.call("GET", path)
            assert r.status == 404, (path, r)
        w = Web(a.port)
        r = w.post("/ui/login", {"user": "anna", "password": PASSWORDS["anna"]})
        assert r.status in (401, 404) and not r.set_cookies(), r
    finally:
        a.cleanup()


def test_the_documented_lockout_defaults_hold(net):
    """docs/agent.md "Web inbox", Security: "After web/max_failures (5) failed
    logins for a name within web/lockout_s (900 s) that name is locked ..., the
    right password included" (an agent without either key)."""
    a = AgentProc(agent_bin(), net.broker, ALB)
    try:
        users = os.path.join(a.folder, "agent.users")
        a.sections["web"] = {"enabled": 1, "users": users}
        a.write_config()
        add_user(a, "anna", "staff", PASSWORDS["anna"])
        add_user(a, "bert", "staff", PASSWORDS["bert"])
        a.start(connected=False)
        for i in range(4):
            assert Web(a.port).login("bert", "wrong-password-%d" % i).status >= 400
        w = Web(a.port)
        r = w.login("bert", PASSWORDS["bert"])
        assert w.signed_in(), r                  # 4 failures: not yet
        for i in range(5):
            assert Web(a.port).login("anna", "wrong-password-%d" % i).status >= 400
        w = Web(a.port)
        r = w.login("anna", PASSWORDS["anna"])
        assert r.status >= 400 and not w.signed_in(), r
    finally:
        a.cleanup()


def test_a_policy_copy_that_does_not_parse_stops_the_agent(net):
    """docs/agent.md "Web inbox": "web/policy = /etc/kim/policy.cfg (read with the
    broker's own parser at start; a file that does not parse stops the agent)";
    kim-agent(8): --check validates the files the configuration names, exit 2
    when not valid; EXIT STATUS 1 or 2 when it cannot start."""
    a = AgentProc(agent_bin(), net.broker, ALB)
    try:
        users = os.path.join(a.folder, "agent.users")
        policy = os.path.join(a.folder, "policy.cfg")
        with open(policy, "w", encoding="utf-8") as f:
            f.write("rules\n    P1\n        this is = = not a policy\n\t\x01garbage\n")
        a.sections["web"] = {"enabled": 1, "users": users}
        a.write_config()
        add_user(a, "anna", "staff", PASSWORDS["anna"])
        a.sections["web"]["policy"] = policy
        a.write_config()
        rc, out = a.run("--check", "--config", a.config)
        assert rc == 2, out
        try:
            p = subprocess.run([agent_bin(), "--config", a.config], capture_output=True,
                               timeout=SLOW)
        except subprocess.TimeoutExpired:
            pytest.fail("the agent runs with a policy copy that does not parse")
        assert p.returncode in (1, 2), p
    finally:
        a.cleanup()
