"""kim-agent's pages for a person's rights and the inbox's notices, checked
from outside against docs/agent.md alone: "Erasing the office's copies"
(the broker's ERASURE notices, `GET /v1/inbox?type=ERASURE`, every item's
`subject`) and "Web inbox", **Auskünfte / Access reports** (request the
broker's report, read it) and **Löschungen / Erasures** (deal with a notice
by erasing or keeping the copies; request an erasure for a person; the
journal).

Processes: one broker, one agent with the page (kim_webenv.py); aa.rheine
sends referrals to the office and asks the broker for erasures over its own
kim.Client. Every wait is a bounded poll."""
import json
import urllib.parse

import kim_headers
import kim_webenv
from kim_inbox import uid
from kim_webenv import AA, SLOW, journal, journaled, outbox_final, poll, refer

net, web, readonly = kim_webenv.net, kim_webenv.web, kim_webenv.readonly


def _notices(net, **query):
    query = dict({"type": "ERASURE"}, **query)
    r = net.agent.call("GET", "/v1/inbox?" + urllib.parse.urlencode(query))
    assert r.status == 200, r
    return r.json["items"]


def _referred_then_erased(net, payload=b"Schuldnerberatung"):
    """aa refers a person to the office, then asks the broker to erase what
    it sent about them; returns (the referral's delivery, the notice)."""
    subject = uid("p-er")
    hdr = refer(net, payload, subject=subject)
    delivery = poll(lambda: [i for i in net.agent.call("GET", "/v1/inbox?limit=1000").json["items"]
                             if i["referral_id"] == hdr["referral_id"] and i["type"] == "REFERRAL"])
    assert delivery, hdr
    net.aa.client.send({"type": "ERASURE", "msg_id": uid("M"), "subject": subject})
    notice = poll(lambda: [n for n in _notices(net) if n["subject"] == subject], SLOW)
    assert notice, subject
    return delivery[0], notice[0]


def _notice_form(page, seq):
    forms = [f for f in page.forms if f.method == "post" and f.action == "/ui/erasures/%d" % seq]
    assert len(forms) == 1, page.main
    return forms[0]


def _payload(net, seq):
    return net.agent.call("GET", "/v1/inbox/%d" % seq).json


def test_inbox_items_name_their_subject_and_filter_by_type(net):
    """"GET /v1/inbox?type=ERASURE&handled=false lists those still to deal
    with, each with the `subject` it is about (every inbox item carries its
    header's `subject`)"."""
    delivery, notice = _referred_then_erased(net)
    assert delivery["subject"] == notice["subject"] and "p-er" in delivery["subject"]
    assert notice["type"] == "ERASURE" and notice["handled"] is False, notice
    assert all(n["type"] == "ERASURE" for n in _notices(net))
    assert all(n["type"] == "REFERRAL" for n in _notices(net, type="REFERRAL"))
    assert notice["seq"] in [n["seq"] for n in _notices(net, handled="false")]
    r = net.agent.call("GET", "/v1/inbox?type=erasure")
    assert r.status == 400 and r.json["path"] == "type", r


def test_a_notice_names_the_deliveries_it_covers(net):
    """"A notice's payload names the erased transfers by the seqs this agent
    received them with (PROTOCOL.md 9.3)"."""
    delivery, notice = _referred_then_erased(net)
    named = json.loads(_payload(net, notice["seq"])["payload"])
    assert (named["subject"], named["requested_by"], named["seqs"], named["part"],
            named["last"]) == (delivery["subject"], AA, [delivery["seq"]], 1, True), named


def test_a_notice_dealt_with_by_erasing_the_copies(net, web):
    """**Kopien löschen / Erase the copies** (with a box to tick first) erases
    the payloads of exactly the deliveries the notice names, nothing else
    about the person; the row links the referrals it concerns; the notice is
    then handled, journal `erasure_notice_erase` with the notice's msg_id,
    never the person."""
    delivery, notice = _referred_then_erased(net)
    assert _payload(net, delivery["seq"])["payload"] == "Schuldnerberatung"
    # aa refers the person again after its erasure: not named, so it stays
    later = refer(net, b"Neuer Antrag", subject=notice["subject"])
    later_seq = [i for i in net.agent.call("GET", "/v1/inbox?limit=1000").json["items"]
                 if i["referral_id"] == later["referral_id"]][0]["seq"]
    page = web.get("/ui/erasures")
    assert notice["subject"] in page.main
    (row,) = [r for r in page.main.split("<tr>") if "/ui/erasures/%d" % notice["seq"] in r]
    assert 'href="/ui/referral/%s"' % delivery["referral_id"] in row, row
    assert 'href="/ui/referral/%s"' % later["referral_id"] not in row, row
    form = _notice_form(page, notice["seq"])
    # without the ticked box: refused, nothing erased, the notice still open
    r = web.post(form.action, form.data(drop=("confirm",), do="erase"))
    assert r.status == 400, r
    assert _payload(net, delivery["seq"])["payload"] == "Schuldnerberatung"
    assert notice["seq"] in [n["seq"] for n in _notices(net, handled="false")]
    r = web.post(form.action, form.data(do="erase", confirm="yes"))
    assert r.status in (302, 303) and r.header("location") == "/ui/erasures?erased=1", r
    erased = _payload(net, delivery["seq"])
    assert erased["payload"] == "" and erased["erased_at"] > 0, erased
    assert _payload(net, later_seq)["payload"] == "Neuer Antrag"
    assert notice["seq"] not in [n["seq"] for n in _notices(net, handled="false")]
    assert journaled(net.agent, user="anna", action="erasure_notice_erase",
                     msg_id=notice["msg_id"])
    assert notice["subject"] not in str(journal(net.agent))
    # dealt with: listed as such, without a form
    page = web.get("/ui/erasures")
    assert not [f for f in page.forms if f.action == "/ui/erasures/%d" % notice["seq"]]


def test_a_notice_dealt_with_by_keeping_the_copies(net, web):
    """**Kopien behalten / Keep the copies** for an office that still needs
    them: no box to tick, the payload stays, the notice is handled (journal
    `erasure_notice_keep`)."""
    delivery, notice = _referred_then_erased(net, b"Kita-Platz")
    form = _notice_form(web.get("/ui/erasures"), notice["seq"])
    r = web.post(form.action, form.data(drop=("confirm",), do="keep"))
    assert r.status in (302, 303) and r.header("location") == "/ui/erasures", r
    assert _payload(net, delivery["seq"])["payload"] == "Kita-Platz"
    assert notice["seq"] not in [n["seq"] for n in _notices(net, handled="false")]
    assert journaled(net.agent, user="anna", action="erasure_notice_keep", msg_id=notice["msg_id"])


def test_only_staff_deal_with_notices_and_only_with_notices(net, web, readonly):
    """`readonly` accounts see the notices without the forms (docs/agent.md
    "Web inbox": readonly "sees the same pages and sends nothing"); a form
    for a delivery that is no ERASURE notice, or an action that is neither
    erase nor keep, changes nothing."""
    delivery, notice = _referred_then_erased(net)
    page = readonly.get("/ui/erasures")
    assert notice["subject"] in page.main
    assert not [f for f in page.forms if f.action.startswith("/ui/erasures")]
    form = _notice_form(web.get("/ui/erasures"), notice["seq"])
    csrf = readonly.csrf_form(readonly.get("/ui/erasures")).fields["csrf"]
    r = readonly.post(form.action, [("csrf", csrf), ("do", "keep")])
    assert r.status == 403, r
    r = web.post("/ui/erasures/%d" % delivery["seq"], form.data(do="erase", confirm="yes"))
    assert r.status == 404, r
    r = web.post(form.action, form.data(do="shred", confirm="yes"))
    assert r.status == 400, r
    assert _payload(net, delivery["seq"])["payload"] == "Schuldnerberatung"
    assert notice["seq"] in [n["seq"] for n in _notices(net, handled="false")]


def test_a_persons_request_for_erasure_sent_from_the_page(net, web):
    """**Löschung verlangen / Request an erasure**: pseudonym, optionally a
    case, a ticked confirmation; it sends an ERASURE (journal
    `erasure_request`): the broker erases the office's transfers about the
    person and tells their recipients. With the box for the agent's own
    copies ticked, those go at once (journal `erase_subject`, same msg_id)."""
    subject = uid("p-req")
    # the office sent aa data about the person, and received some about them
    body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": AA, "referral_id": uid("S"),
            "case_id": uid("C"), "subject": subject, "purpose": "benefits",
            "legal_basis": kim_headers.STATUTE, "payload": "Antrag"}
    assert net.agent.call("POST", "/v1/messages", body).status == 202
    assert outbox_final(net.agent, body["msg_id"])["status"] == "receipted"
    hdr = refer(net, b"Bescheid", subject=subject)
    (form,) = [f for f in web.get("/ui/erasures").forms
               if f.method == "post" and f.action == "/ui/erasures"]
    # without the ticked confirmation nothing is sent
    r = web.post(form.action, form.data(drop=("confirm",), subject=subject))
    assert r.status == 400 and outbox_final_or_none(net, form.fields["msg_id"]) is None, r
    r = web.post(form.action, form.data(subject=subject, confirm="yes", also_local="yes"))
    msg_id = form.fields["msg_id"]
    assert r.status in (302, 303), r
    assert r.header("location") == "/ui/erasures?sent=%s&erased=1" % msg_id, r
    sent = outbox_final(net.agent, msg_id)
    assert sent["status"] == "receipted" and sent["type"] == "ERASURE", sent
    told = net.aa.wait(type="ERASURE", subject=subject, timeout=SLOW)
    assert told and told[0].hdr["sender"] != net.agent.org, told
    item = [i for i in net.agent.call("GET", "/v1/inbox?limit=1000").json["items"]
            if i["referral_id"] == hdr["referral_id"] and i["type"] == "REFERRAL"][0]
    assert item["erased_at"] > 0 and _payload(net, item["seq"])["payload"] == ""
    assert journaled(net.agent, user="anna", action="erasure_request", msg_id=msg_id)
    assert journaled(net.agent, user="anna", action="erase_subject", msg_id=msg_id)
    assert subject not in str(journal(net.agent))


def outbox_final_or_none(net, msg_id):
    r = net.agent.call("GET", "/v1/outbox/" + msg_id)
    return r.json if r.status == 200 else None


#   --- access reports -------------------------------------------------------------

def _sent_about(net, subject):
    """A REFERRAL from the office to aa about `subject`, receipted."""
    body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": AA, "referral_id": uid("S"),
            "case_id": uid("C"), "subject": subject, "purpose": "benefits",
            "legal_basis": kim_headers.STATUTE, "payload": "Antrag"}
    assert net.agent.call("POST", "/v1/messages", body).status == 202
    assert outbox_final(net.agent, body["msg_id"])["status"] == "receipted"
    return body


def _report_form(web):
    (form,) = [f for f in web.get("/ui/reports").forms
               if f.method == "post" and f.action == "/ui/reports"]
    return form


def test_an_access_report_requested_and_read_on_the_page(net, web):
    """**Auskünfte / Access reports**: staff request the broker's report for a
    person (ACCESS_REPORT, as POST /v1/subjects/{subject}/report does;
    journal `access_report`); the list shows each request's state and links
    a report that arrived; its page lists every transfer, one a row (when,
    message, from, to, case, purpose, categories, legal basis, whether the
    broker still keeps the content), no content; opening it is journaled
    (`open_report`)."""
    subject = uid("p-rep")
    sent = _sent_about(net, subject)
    form = _report_form(web)
    r = web.post(form.action, form.data(subject=subject))
    msg_id = form.fields["msg_id"]
    assert r.status in (302, 303) and r.header("location") == "/ui/reports?sent=" + msg_id, r
    record = net.agent.wait("/v1/reports/" + msg_id, lambda j: j["status"] == "answered", SLOW)
    assert record.status == 200 and record.json["status"] == "answered", record
    listed = web.get("/ui/reports").main
    assert 'href="/ui/report/%s"' % msg_id in listed and subject in listed
    # the same list for systems: GET /v1/reports, without the reports
    (item,) = [i for i in net.agent.call("GET", "/v1/reports").json["items"]
               if i["msg_id"] == msg_id]
    assert (item["subject"], item["status"]) == (subject, "answered") and "report" not in item
    page = web.get("/ui/report/" + msg_id)
    assert page.status == 200, page
    rows = [row for row in page.main.split("<tr>") if sent["recipient"] in row]
    assert len(rows) == 1, page.main
    for shown in ("REFERRAL", net.agent.org, sent["case_id"], "benefits", "statute",
                  sent["legal_basis"]["citation"]):
        assert shown in rows[0], (shown, rows[0])
    assert "Antrag" not in page.main
    assert journaled(net.agent, user="anna", action="access_report", msg_id=msg_id)
    assert journaled(net.agent, user="anna", action="open_report", msg_id=msg_id)
    assert subject not in str(journal(net.agent))


def test_a_refused_report_says_why_and_links_nothing(net, web):
    """The list shows a refusal with the broker's code and text
    (PROTOCOL.md 9.3: an office that sent nothing about the person gets
    NOT_PARTY)."""
    subject = uid("p-none")
    form = _report_form(web)
    assert web.post(form.action, form.data(subject=subject)).status in (302, 303)
    msg_id = form.fields["msg_id"]
    assert outbox_final(net.agent, msg_id)["status"] == "refused"
    listed = web.get("/ui/reports").main
    (row,) = [row for row in listed.split("<tr>") if subject in row]
    assert "NOT_PARTY" in row and "/ui/report/" not in row, row
    assert web.get("/ui/report/" + msg_id).status == 404


def test_readonly_reads_reports_but_requests_none(net, web, readonly):
    """`readonly` sees the same pages and sends nothing."""
    subject = uid("p-ro")
    _sent_about(net, subject)
    form = _report_form(web)
    assert web.post(form.action, form.data(subject=subject)).status in (302, 303)
    msg_id = form.fields["msg_id"]
    net.agent.wait("/v1/reports/" + msg_id, lambda j: j["status"] == "answered", SLOW)
    page = readonly.get("/ui/reports")
    assert not [f for f in page.forms if f.action == "/ui/reports"] and msg_id in page.main
    assert readonly.get("/ui/report/" + msg_id).status == 200
    csrf = readonly.csrf_form(page).fields["csrf"]
    r = readonly.post("/ui/reports", [("csrf", csrf), ("subject", subject), ("msg_id", uid("M"))])
    assert r.status == 403, r


def test_a_report_of_several_pages_is_read_whole(net, web):
    """"A report of more than 1,000 transfers comes in pages" (PROTOCOL.md 9.3:
    pages of at most 1,000, the last with `"last":true` and the `total`); the
    agent puts them together: GET /v1/reports/{msg_id} and the report's page
    show every transfer."""
    subject = uid("p-many")
    ids = []
    for _ in range(1001):
        body = {"type": "REFERRAL", "msg_id": uid("M"), "recipient": AA,
                "referral_id": uid("S"), "case_id": uid("C"), "subject": subject,
                "purpose": "benefits", "legal_basis": kim_headers.STATUTE}
        assert net.agent.call("POST", "/v1/messages", body).status == 202
        ids.append(body["msg_id"])
    assert outbox_final(net.agent, ids[-1])["status"] == "receipted"
    form = _report_form(web)
    assert web.post(form.action, form.data(subject=subject)).status in (302, 303)
    msg_id = form.fields["msg_id"]
    r = net.agent.wait("/v1/reports/" + msg_id,
                       lambda j: j["status"] == "answered" and j["report"]["last"], SLOW)
    report = r.json["report"]
    assert (report["last"], report["total"], len(report["transfers"])) == (True, 1001, 1001), (
        {k: v for k, v in report.items() if k != "transfers"})
    assert len({t["seq"] for t in report["transfers"]}) == 1001
    page = web.get("/ui/report/" + msg_id)
    assert "(1001)" in page.main and "ACCESS_REPORT" not in page.main
