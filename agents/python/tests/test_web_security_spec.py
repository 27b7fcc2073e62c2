"""kim-agent's web inbox, who may use it and what it refuses, checked from
outside against its documents alone: docs/agent.md "Web inbox" (off unless
configured; its Security paragraph: the page's policy, sessions, CSRF,
origins, lockouts; the accounts of web/users, TLS, web/lang, web/policy) and
"Setting it up" and "Errors" for what a token and a session open,
kim-agent(8) (docs/man/kim-agent.8.scd), the sample deploy/agent.cfg, and
for the limits of a header proto/PROTOCOL.md 9.1. Plain HTTP with
http.client, no browser: forms are read from the served HTML and sent as a
browser would send them (urlencoded, with the page's Origin); that browser
and the processes are in kim_webenv.py.

tests/web/web.test.js (chromium) already covers the happy paths of the pages
(accept, decline, forward picker, consents, handover, axe-core); this file
aims at the rest on the side of access: cookies, CSRF on every form,
origins, lockouts, timing, hostile input, accounts and configuration
(test_web_inbox_spec.py at what the pages show and send).

Processes: one broker (soz.rheine is the office under test; aa.rheine and
jc.rheine are other agencies on kim.Client) and one agent with the page for
the module; a second agent under TLS with web/lang = en and a short lockout;
two short-lived agents for configuration cases. Every wait is a bounded poll."""
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

import kim_headers
import kim_webenv
from kim_agentproc import AgentProc, Reply
from kim_inbox import uid
from kim_webenv import (AA, ALB, JA, JC, LOCKOUT_S, MAX_FAILURES_B, PASSWORDS, SLOW, SOZ,
                        STATUTE, Web, _attr, _sent_by_office, add_user, agent_bin,
                        answer_form, answers_offered, journal, journaled, mark,
                        nothing_sent, outbox_status, poll, refer, session_cookie, view)

# The fixtures, bound here so that pytest finds them in this module; module
# scope: this file's own broker and agent
net, web, readonly = kim_webenv.net, kim_webenv.web, kim_webenv.readonly


#   --- the page: off unless configured, HTML, CSP, no script -----------------

def test_start_address_leads_to_a_german_login_page(net):
    """docs/agent.md "Web inbox": "open http://127.0.0.1:7480/ and sign in";
    "German by default"."""
    page = Web(net.agent.port).follow("/")
    assert page.status == 200 and page.is_login(), page
    assert page.lang == "de"
    assert page.header("content-type").startswith("text/html")


PAGES = ["/ui/login", "/ui/inbox", "/ui/sent", "/ui/cases", "/ui/consents", "/ui/reports",
         "/ui/erasures", "/ui/new",
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
             "/ui/consent/" + n.consents["fits"], "/ui/reports", "/ui/erasures"]
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
    # docs/agent.md "Web inbox": the journal and the log name the account, never its password
    with open(os.path.join(net.agent.data, "web.journal"), encoding="utf-8") as f:
        text = f.read()
    for word in (first, second):
        assert word not in text and word not in net.agent.log_text(), word


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
