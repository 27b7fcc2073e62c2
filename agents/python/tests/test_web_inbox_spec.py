"""kim-agent's web inbox, what its pages show and send, checked from outside
against its documents alone: docs/agent.md "Web inbox" (languages, the
lists, a referral's page and its answers, forward, new referral, the
legal-basis picker, consents, handover, the journal; and "Operations",
"Consents and the subject's rights"), and for what a referral may take in
which state proto/PROTOCOL.md 9.1, 9.2 and 9.4. Plain HTTP with http.client,
no browser: forms are read from the served HTML and sent as a browser would
send them (urlencoded, with the page's Origin); that browser and the
processes are in kim_webenv.py.

tests/web/web.test.js (chromium) already covers the happy paths of the pages
(accept, decline, forward picker, consents, handover, axe-core); this file
aims at the rest of what they do: languages, order, states, what reaches
the sender, escaping, the journal (test_web_security_spec.py at sign-in,
sessions, CSRF, origins, lockouts and hostile input).

Processes: one broker (soz.rheine is the office under test; aa.rheine and
jc.rheine are other agencies on kim.Client) and one agent with the page for
the module. Every wait is a bounded poll."""
import html
import json
import os
import re
import secrets
import time
import urllib.parse

import kim_headers
import kim_webenv
from kim_inbox import uid
from kim_webenv import (AA, JC, PASSWORDS, SECRETS, SLOW, SOZ, STATUTE, Web, _attr,
                        _sent_by_office, answer_form, answers_offered, journal, journaled,
                        mark, outbox_final, outbox_status, poll, refer, view)

# The fixtures, bound here so that pytest finds them in this module; module
# scope: this file's own broker and agent
net, web = kim_webenv.net, kim_webenv.web


#   --- languages ----------------------------------------------------------------

def test_german_by_default_english_with_lang_en_and_remembered(net, web):
    """docs/agent.md "Web inbox": "German by default, English with ?lang=en
    (remembered)"; the page names "Posteingang / Inbox", "Gesendet / Sent",
    "Neue Überweisung / New referral", "Fälle / Cases", "Einwilligungen / Consents",
    "Auskünfte / Access reports", "Löschungen / Erasures"."""
    german = ("Posteingang", "Gesendet", "Neue Überweisung", "Fälle", "Einwilligungen",
              "Auskünfte", "Löschungen")
    english = ("Inbox", "Sent", "New referral", "Cases", "Consents", "Access reports",
               "Erasures")
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


#   --- the journal and the log ---------------------------------------------------

def test_journal_names_the_user_and_never_payloads_notes_or_passwords(net):
    """docs/agent.md "Web inbox", Security: "Every action is journaled with the
    staff member's name: agent/data/web.journal, one JSON line each (at, user,
    action, referral_id, msg_id, address for logins), and the same line in the
    agent's log ... Never payloads or notes"; "Operations": the log has "never
    payloads, subjects or notes"; "Setting it up": logs never payloads or names."""
    # every action looked for below is done here, with marked words in what is
    # typed and sent, so that the journal has them whatever ran before
    w = Web(net.agent.port)
    r = w.login("anna", mark("WrongPw-"))                               # login_failed
    assert r.status >= 400, r
    w.login("anna", PASSWORDS["anna"])                                  # login
    assert w.signed_in()
    rid = refer(net, payload=mark("PAYLOAD-").encode(), subject=mark("p-subj"))["referral_id"]
    accept = answer_form(w.get("/ui/referral/" + rid), "accept")        # open
    r = w.submit(accept, csrf=secrets.token_hex(32))                    # bad_csrf
    assert 400 <= r.status < 500, r
    r = w.submit(accept, origin="http://evil.example")                  # bad_form
    assert 400 <= r.status < 500, r
    r = w.submit(accept, note=mark("NOTE-"))                            # accept
    assert r.status in (302, 303), r
    rid = refer(net)["referral_id"]
    decline = answer_form(w.get("/ui/referral/" + rid), "decline")
    r = w.submit(decline, code="not_eligible", note=mark("NOTE-"))      # decline
    assert r.status in (302, 303), r
    (first,) = [f for f in w.get("/ui/new").forms if f.action.startswith("/ui/new")]
    second = w.get("/ui/new?" + urllib.parse.urlencode(
        first.data(recipient=AA, purpose="benefits")))
    (form,) = [f for f in second.forms if f.method == "post" and "msg_id" in f.fields]
    r = w.submit(form, referral_id=uid("W"), case_id=uid("C"), subject="p-web",
                 basis="statute", citation=STATUTE, payload=mark("PAYLOAD-"))  # referral
    assert r.status in (302, 303), r
    ro = Web(net.agent.port)
    ro.login("rolf", PASSWORDS["rolf"])
    csrf = ro.csrf_form(ro.get("/ui/inbox")).fields["csrf"]
    r = ro.post("/ui/referral/%s/answer" % rid,                         # forbidden
                {"csrf": csrf, "answer": "accept", "msg_id": uid("web")})
    assert 400 <= r.status < 500, r
    (logout,) = [f for f in w.get("/ui/inbox").forms
                 if f.method == "post" and "logout" in f.action]
    r = w.submit(logout)                                                # logout
    assert r.status < 400 and not w.signed_in(), r

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
    for word in SECRETS + list(PASSWORDS.values()):
        assert word not in text, word
        assert word not in log, word


