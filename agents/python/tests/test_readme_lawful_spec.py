"""README.md as a new user follows it by hand, its rules for the data: an
outside conformance check.

Written from README.md and the documents it points to (deploy/policy.cfg,
docs/man/kim.cfg.5.scd where the README sends the reader there), run against
the real programs. Sections checked: "Lawful by default", "The closed loop",
"Audit: verify and replay the log". The README's other sections are checked
in test_readme_walkthrough_spec.py and test_readme_broker_spec.py; not at
all: "The two commands", "Connecting two districts", "Performance".

The state the README assumes (`build/release/...`, the demo folder of
`./deploy/run.sh`) is made by hand as kim_readme.py describes. Then the
README's commands run literally, paths and ports substituted. Every
expectation cites its README section; where a program does otherwise the
test is a strict xfail that says both.
"""
import json
import os
import re
import shutil
import time

import pytest

import kim_readme
from kim_readme import (KIM, LAB_ORGS, ROOT, STATUTE, Broker, broker_files_holding, consent,
                        receipt, refusal, run, statute_referral, timer_mail, wait_for)

#   kim_readme's fixtures, bound here for pytest to find them (module scope:
#   this file starts its own brokers once); assigned rather than imported, as an
#   import would be redefined by every test that takes one as an argument.
programs = kim_readme.programs
tmp_root = kim_readme.tmp_root
demo = kim_readme.demo
story = kim_readme.story
lab = kim_readme.lab
timers = kim_readme.timers


# === Lawful by default ==============================================================

def test_lawful_no_policy_file_denies(tmp_root):
    # README "Lawful by default": "no match means deny, and so does a broker without a
    # policy file"
    b = Broker(os.path.join(tmp_root, "nopolicy"), LAB_ORGS[1:3], policy=None)
    b.start()
    try:
        a = refusal(statute_referral(b, "jc.rheine", "ja.rheine", "R-NP", "C-NP"))
        assert a["error"] == "POLICY_DENY" and a["code"] == 500, a
    finally:
        b.finish()


def test_lawful_forward_checked_for_the_new_organisation(lab):
    # README "Lawful by default": "FORWARD (checked for the organisation it passes the
    # referral on to)": ja -> aba under SGB X §69(1)1 is not what rule P4 accepts, although
    # the FORWARD itself is addressed to the referral's sender (jc, where P1 would allow it)
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-LF", "C-LF"))
    a = refusal(lab.send("ja.rheine", "--type", "FORWARD", "--to", "jc.rheine", "--referral",
                         "R-LF", "--org", "aba.rheine", "--purpose", "residence", "--statute",
                         STATUTE))
    assert a["error"] == "NO_BASIS" and "rule P4" in a["text"], a
    receipt(lab.send("ja.rheine", "--type", "FORWARD", "--to", "jc.rheine", "--referral",
                     "R-LF", "--org", "aba.rheine", "--purpose", "residence", "--statute",
                     "SGB X §71(2)1", "--msg-id", "R-LF-F"))
    assert lab.state("jc.rheine", "R-LF") == "FORWARDED"


def test_lawful_p2_needs_the_entrusters_consent():
    # README "Lawful by default", Consents: "who gave it (giver: subject, guardian, or
    # entruster for data confided under § 65 SGB VIII, which rule P2 requires)"
    base = [KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "ja.rheine",
            "--to", "jc.rheine", "--purpose", "employment", "--categories", "sgb8_s65",
            "--consent", "G-65", "--assume-consent", "--giver"]
    r = run(base + ["entruster"], cwd=ROOT)
    assert r.rc == 0 and json.loads(r.lines()[-1])["rule"] == "P2", r
    r = run(base + ["subject"], cwd=ROOT)
    assert r.rc == 1 and json.loads(r.lines()[-1])["rule"] == "P2", r


def test_lawful_decisions_in_log_and_rule_seen_by_recipient(story, demo):
    # README "Lawful by default": "Every decision is in the log: a denial as a DECISION
    # record, an allowed transfer with its rule in the header field rule, which the
    # recipient sees too"
    refusal(story["refused"], "CONSENT_SCOPE")
    denials = [x for x in demo.replay("--type", "decision")
               if x["body"].get("referral_id") == "R-2"]
    assert denials and denials[0]["body"]["rule"] == "P8", denials
    item = demo.agent.wait_referral("R-1")
    status, _, one = demo.agent.api("GET", "/v1/inbox/%d" % item["seq"])
    hdr = one.get("header") or one.get("hdr") or {}
    assert hdr.get("rule") == "P8", one


def test_lawful_policy_lint_and_check():
    # README "Lawful by default": kim policy lint deploy/policy.cfg; kim policy check ... sch
    # -> aba prints each rule it tried and why, then the verdict as JSON; works offline and
    # says so
    r = run([KIM, "policy", "lint", "deploy/policy.cfg"], cwd=ROOT)
    assert r.rc == 0, r
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "sch.rheine",
             "--to", "aba.rheine", "--purpose", "residence", "--statute", "AufenthG §87(1)"],
            cwd=ROOT)
    assert r.rc == 1, r
    assert re.search(r"^rule P11 .*does not apply", r.out, re.M), r
    assert re.search(r"^rule P5 .*applies", r.out, re.M), r
    verdict = json.loads(r.lines()[-1])
    assert verdict["decision"] == "deny" and verdict["rule"] == "P5", verdict
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "kim.rheine",
             "--to", "jc.rheine", "--purpose", "employment", "--consent", "G-1",
             "--assume-consent"], cwd=ROOT)
    assert r.rc == 0 and "offline" in r.out.lower(), r


@pytest.mark.parametrize("citation", ["SGB X §71(2)3", "§ 71 Abs. 2 Satz 1 Nr. 3 SGB X",
                                      "sgb x § 71 abs. 2 nr. 3"])
def test_lawful_citations_read_as_provisions(citation):
    # README "Lawful by default": the three spellings are the same provision (rule P4 lists
    # SGB X §71(2)3 for jc -> aba)
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "jc.rheine",
             "--to", "aba.rheine", "--purpose", "residence", "--statute", citation], cwd=ROOT)
    assert r.rc == 0 and json.loads(r.lines()[-1])["rule"] == "P4", r


def test_lawful_broader_citation_refused():
    # README "Lawful by default": "a citation broader than the rule's is refused"
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "jc.rheine",
             "--to", "aba.rheine", "--purpose", "residence", "--statute", "SGB X §71"], cwd=ROOT)
    assert r.rc == 1 and json.loads(r.lines()[-1])["decision"] == "deny", r


def test_lawful_check_with_consent_file_as_json_header(tmp_root):
    # README "Lawful by default": "--consent-file GRANT.json ... stand in for the broker's
    # consent registry" -- the README's own grant, the README's transfer (header on stdin)
    path = os.path.join(tmp_root, "grant.json")
    with open(path, "w") as f:
        json.dump(consent("C-1", "G-1", "p-7f3a", ["jc.rheine"], ["employment"]), f)
    hdr = {"type": "REFERRAL", "sender": "kim.rheine", "recipient": "jc.rheine",
           "referral_id": "R-1", "case_id": "C-1", "subject": "p-7f3a", "purpose": "employment",
           "legal_basis": {"kind": "consent", "consent_id": "G-1"}}
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--json",
             "--consent-file", path], cwd=ROOT, stdin=json.dumps(hdr) + "\n")
    assert r.rc == 0 and json.loads(r.lines()[-1])["decision"] == "allow", r
    hdr["purpose"] = "housing"
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--json",
             "--consent-file", path], cwd=ROOT, stdin=json.dumps(hdr) + "\n")
    assert r.rc == 1 and json.loads(r.lines()[-1])["code"] == "CONSENT_SCOPE", r


def test_lawful_check_with_consent_file_from_options(tmp_root):
    path = os.path.join(tmp_root, "grant2.json")
    with open(path, "w") as f:
        json.dump(consent("C-1", "G-1", "p-7f3a", ["jc.rheine"], ["employment"]), f)
    r = run([KIM, "policy", "check", "--policy", "deploy/policy.cfg", "--from", "kim.rheine",
             "--to", "jc.rheine", "--purpose", "employment", "--subject", "p-7f3a",
             "--consent", "G-1", "--consent-file", path, "--case", "C-1"], cwd=ROOT)
    assert r.rc == 0 and json.loads(r.lines()[-1])["decision"] == "allow", r


def test_lawful_consent_revoke_blocks_suspends_withholds_tells(story, demo):
    # README "Lawful by default": "`kim send --type CONSENT_REVOKE --consent ID` revokes one";
    # CONSENT_REVOKE "blocks new transfers under it at once, suspends the open referrals that
    # rely on it, withholds what was receipted under it but not yet delivered (the sender is
    # told), and tells every organisation that received data under it"
    receipt(demo.send_json("kim.rheine", consent("C-REV", "G-REV", "p-rev",
                                                 ["jc.rheine", "mbe.rheine.caritas"],
                                                 ["employment", "counselling"])))
    receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                      "R-REV1", "--case", "C-REV", "--subject", "p-rev", "--purpose",
                      "employment", "--consent", "G-REV", "--payload", "-", stdin="rev1"))
    held = receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "mbe.rheine.caritas",
                             "--referral", "R-REV2", "--case", "C-REV", "--subject", "p-rev",
                             "--purpose", "counselling", "--consent", "G-REV"))
    demo.agent.wait_referral("R-REV1")
    assert wait_for(lambda: demo.state("kim.rheine", "R-REV1") == "DELIVERED", timeout=5)
    r = demo.send("kim.rheine", "--type", "CONSENT_REVOKE", "--consent", "G-REV")
    receipt(r)
    a = refusal(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                          "R-REV3", "--case", "C-REV", "--subject", "p-rev", "--purpose",
                          "employment", "--consent", "G-REV"), "CONSENT_REVOKED")
    assert a["code"] == 503
    assert demo.state("kim.rheine", "R-REV1") == "SUSPENDED"
    told = wait_for(lambda: [i for i in demo.agent.api("GET", "/v1/inbox?limit=1000")[2]["items"]
                             if i["type"] == "CONSENT_REVOKE"], timeout=5)
    assert told, "jc.rheine (received data under G-REV) was not told"
    mbe = demo.inbox("mbe.rheine.caritas").json()
    assert not [d for d in mbe if d["hdr"].get("referral_id") == "R-REV2"
                and d["hdr"]["type"] == "REFERRAL"], "withheld referral was delivered"
    notes = [d for d in demo.inbox("kim.rheine").json()
             if d["hdr"]["type"] == "CONSENT_REVOKE" and d["hdr"].get("ref_msg_id") ==
             held["msg_id"]]
    assert notes and notes[0]["hdr"].get("code") == "withheld", notes


def test_lawful_consent_bound(story, demo):
    # README "Lawful by default", Consents: "A consent is bound to its subject, its case and
    # the case's lead ...; any other use is refused with CONSENT_BOUND"
    for case, subject in (("C-OTHER", "p-7f3a"), ("C-1", "p-other")):
        a = refusal(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine",
                              "--referral", "R-B-" + case + subject, "--case", case,
                              "--subject", subject, "--purpose", "employment",
                              "--consent", "G-1"), "CONSENT_BOUND")
        assert a["code"] == 506


def test_lawful_consent_expired_and_lapsed(timers):
    # README "Lawful by default": "An expired consent is refused with CONSENT_EXPIRED and ends
    # the same way on its own, its referrals LAPSED rather than SUSPENDED"
    b = timers
    wait = b.expiry_ms / 1000.0 - time.time() + 0.3
    if wait > 0:
        time.sleep(wait)
    a = refusal(b.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                       "R-EXP2", "--case", "C-EXP", "--subject", "p-exp", "--purpose",
                       "employment", "--consent", "G-EXP"), "CONSENT_EXPIRED")
    assert a["code"] == 505
    assert wait_for(lambda: b.state("kim.rheine", "R-EXP1") == "LAPSED", timeout=5), \
        b.show("kim.rheine", "R-EXP1")


def test_lawful_subject_report_and_erase(story, demo):
    # README "Lawful by default", Data subject rights: kim subject report (JSON built from the
    # log's metadata, in pages) and kim subject erase (purge our payloads, tell the
    # recipients); the chain still verifies
    receipt(demo.send_json("kim.rheine", consent("C-ER", "G-ER", "p-er", ["jc.rheine"],
                                                 ["employment"])))
    sent = receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine",
                             "--referral", "R-ER", "--case", "C-ER", "--subject", "p-er",
                             "--purpose", "employment", "--consent", "G-ER", "--payload", "-",
                             stdin="erase me"))
    demo.agent.wait_referral("R-ER")
    r = demo.kim("subject", "report", "p-er", cert="kim.rheine")
    assert r.rc == 0, r
    page = r.json()[-1]
    assert page["last"] is True and page["total"] == 1, page
    t = page["transfers"][0]
    assert (t["seq"], t["to"], t["rule"], t["payload"]) == (sent["seq"], "jc.rheine", "P8",
                                                             "kept"), t
    r = demo.kim("subject", "erase", "p-er", cert="kim.rheine")
    assert r.rc == 0 and isinstance(r.one()["seq"], int) and r.one()["msg_id"], r
    page = demo.kim("subject", "report", "p-er", cert="kim.rheine").json()[-1]
    assert page["transfers"][0]["payload"] == "erased", page
    assert wait_for(lambda: [i for i in demo.agent.api("GET", "/v1/inbox?limit=1000")[2]["items"]
                             if i["type"] == "ERASURE"], timeout=5)
    assert broker_files_holding(demo, b"erase me") == []
    r = demo.kim("audit", "verify", "--data", "kim-data")
    assert r.rc == 0 and r.out.startswith("OK: "), r
    r = demo.kim("subject", "report", "p-er", cert="ja.rheine")
    assert r.rc == 1 and "NOT_PARTY" in r.out + r.err, r


def test_lawful_erased_gone_from_the_brokers_data_folder(story, demo):
    # README "Lawful by default": "Erased means gone from the broker's disk: ... no file of
    # the broker's data folder ... holds the payload or its key"; "the ERASURE in their
    # inbox tells" the recipients, who keep their own copies
    receipt(demo.send_json("kim.rheine", consent("C-ER2", "G-ER2", "p-er2", ["jc.rheine"],
                                                 ["employment"])))
    receipt(demo.send("kim.rheine", "--type", "REFERRAL", "--to", "jc.rheine", "--referral",
                      "R-ER2", "--case", "C-ER2", "--subject", "p-er2", "--purpose",
                      "employment", "--consent", "G-ER2", "--payload", "-",
                      stdin="Erasure-Marker-77"))
    demo.agent.wait_referral("R-ER2")
    r = demo.kim("subject", "erase", "p-er2", cert="kim.rheine")
    if r.rc != 0:
        pytest.fail("erasure refused: %r" % r)
    if not wait_for(lambda: [i for i in demo.agent.api("GET", "/v1/inbox?limit=1000")[2]["items"]
                             if i["type"] == "ERASURE" and i.get("case_id") in (None, "", "C-ER2")],
                    timeout=5):
        pytest.fail("the agent was not told")
    assert broker_files_holding(demo, b"Erasure-Marker-77") == []


# === The closed loop ================================================================

def test_loop_states_sent_to_completed(lab):
    # README "The closed loop": SENT -> DELIVERED (the recipient acked it; the sender gets
    # DELIVERED) -> ACCEPTED -> IN_PROGRESS (STATUS) -> COMPLETED (OUTCOME)
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-L1", "C-L", "loop"))
    assert lab.state("jc.rheine", "R-L1") == "SENT"
    lab.inbox("ja.rheine")
    assert lab.state("jc.rheine", "R-L1") == "DELIVERED"
    told = [d for d in lab.inbox("jc.rheine").json() if d["hdr"]["type"] == "DELIVERED"
            and d["hdr"].get("referral_id") == "R-L1"]
    assert told
    for mtype, args, state in (("ACCEPT", [], "ACCEPTED"),
                               ("STATUS", ["--code", "in_progress"], "IN_PROGRESS"),
                               ("OUTCOME", ["--code", "completed"], "COMPLETED")):
        receipt(lab.send("ja.rheine", "--type", mtype, "--to", "jc.rheine", "--referral", "R-L1",
                         *args))
        assert lab.state("jc.rheine", "R-L1") == state, mtype
    # "logged as a state record for the audit timeline"
    moves = [(x["body"]["from"], x["body"]["to"]) for x in lab.replay("--type", "state")
             if x["body"].get("referral_id") == "R-L1"]
    assert moves == [("SENT", "DELIVERED"), ("DELIVERED", "ACCEPTED"),
                     ("ACCEPTED", "IN_PROGRESS"), ("IN_PROGRESS", "COMPLETED")], moves


def test_loop_other_endings(lab):
    # README "The closed loop": "Or DECLINED, NOT_COMPETENT, FORWARDED (a new linked referral
    # to the named organisation), WITHDRAWN (by the sender) ... Only the recipient answers
    # and only the sender withdraws."
    for ref in ("R-L2", "R-L3", "R-L4", "R-L5"):
        receipt(statute_referral(lab, "jc.rheine", "ja.rheine", ref, "C-L"))
    receipt(lab.send("ja.rheine", "--type", "DECLINE", "--to", "jc.rheine", "--referral", "R-L2",
                     "--code", "capacity"))
    receipt(lab.send("ja.rheine", "--type", "NOT_COMPETENT", "--to", "jc.rheine",
                     "--referral", "R-L3"))
    receipt(lab.send("ja.rheine", "--type", "FORWARD", "--to", "jc.rheine", "--referral", "R-L4",
                     "--org", "soz.rheine", "--purpose", "employment", "--statute", STATUTE,
                     "--msg-id", "R-L4-F"))
    a = refusal(lab.send("ja.rheine", "--type", "WITHDRAW", "--to", "jc.rheine",
                         "--referral", "R-L5"), "BAD_STATE")
    assert "referral R-L5 is SENT" in a["text"] and "the sender may send" in a["text"], a
    receipt(lab.send("jc.rheine", "--type", "WITHDRAW", "--to", "ja.rheine", "--referral", "R-L5"))
    states = {ref: lab.state("jc.rheine", ref) for ref in ("R-L2", "R-L3", "R-L4", "R-L5")}
    assert states == {"R-L2": "DECLINED", "R-L3": "NOT_COMPETENT", "R-L4": "FORWARDED",
                      "R-L5": "WITHDRAWN"}, states
    linked = [x for x in lab.kim("referral", "list", cert="soz.rheine").json()
              if x.get("forwarded_from") == "R-L4"]
    assert linked and linked[0]["sender"] == "ja.rheine" and linked[0]["recipient"] == \
        "soz.rheine", linked


def test_loop_cases_handover_and_close(lab):
    # README "The closed loop", Cases: "The first referral's sender leads the case.
    # HANDOVER_OFFER (lead only, listing the open referrals) and HANDOVER_ACCEPT move the
    # lead and those referrals in one transaction ... CASE_CLOSED tells every participant."
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-H1", "C-H"))
    offer = {"type": "HANDOVER_OFFER", "msg_id": "H-1", "recipient": "soz.rheine",
             "case_id": "C-H", "subject": "p-c-h", "purpose": "case_handover",
             "legal_basis": {"kind": "statute", "citation": STATUTE}, "referrals": ["R-H1"]}
    refusal(lab.send_json("ja.rheine", dict(offer, msg_id="H-0")), "NOT_LEAD")
    receipt(lab.send_json("jc.rheine", offer))
    receipt(lab.send("soz.rheine", "--type", "HANDOVER_ACCEPT", "--to", "jc.rheine", "--case",
                     "C-H", "--ref-msg", "H-1"))
    assert wait_for(lambda: lab.show("ja.rheine", "R-H1").get("sender") == "soz.rheine",
                    timeout=5), lab.show("ja.rheine", "R-H1")
    refusal(lab.send("jc.rheine", "--type", "CASE_CLOSED", "--case", "C-H"), "NOT_LEAD")
    receipt(lab.send("soz.rheine", "--type", "CASE_CLOSED", "--case", "C-H"))
    for org in ("ja.rheine", "jc.rheine"):
        closed = [d for d in lab.inbox(org).json() if d["hdr"]["type"] == "CASE_CLOSED"
                  and d["hdr"].get("case_id") == "C-H"]
        assert closed, org


def test_loop_subscriptions(lab):
    # README "The closed loop", Subscriptions: kim subscribe --case C-1 --types ACCEPT,OUTCOME
    # # {"subscribed":"s-C-1",…}; kim inbox # the events arrive with the mail; kim unsubscribe
    # s-C-1. "Organisations outside a case get none of its events."
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-SB1", "C-SB"))
    receipt(statute_referral(lab, "jc.rheine", "soz.rheine", "R-SB2", "C-SB"))
    lab.inbox("ja.rheine")
    lab.inbox("soz.rheine")
    lab.inbox("aa.rheine")
    r = lab.kim("subscribe", "--case", "C-SB", "--types", "ACCEPT,OUTCOME", cert="ja.rheine")
    assert r.rc == 0 and r.one()["subscribed"] == "s-C-SB", r
    r = lab.kim("subscribe", "--case", "C-SB", "--types", "ACCEPT,OUTCOME", cert="aa.rheine")
    outsider_subscribed = r.rc == 0
    receipt(lab.send("soz.rheine", "--type", "ACCEPT", "--to", "jc.rheine", "--referral", "R-SB2"))
    events = [d for d in lab.kim("inbox", cert="ja.rheine").json()
              if d["hdr"].get("referral_id") == "R-SB2"]
    assert [d["hdr"]["type"] for d in events] == ["ACCEPT"], events
    if outsider_subscribed:
        assert not [d for d in lab.inbox("aa.rheine").json()
                    if d["hdr"].get("referral_id") == "R-SB2"]
    r = lab.kim("unsubscribe", "s-C-SB", cert="ja.rheine")
    assert r.rc == 0 and r.one()["unsubscribed"] == "s-C-SB", r


def test_loop_where_do_my_referrals_stand(lab):
    # README "The closed loop": kim referral list --open / --overdue --org jc.rheine / show;
    # "One JSON line per referral; the broker answers only with referrals the asking
    # organisation sends or receives."
    receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-W", "C-WH"))
    r = lab.kim("referral", "list", "--open", cert="jc.rheine")
    assert r.rc == 0 and "R-W" in [x["referral_id"] for x in r.json()], r
    assert all(x["state"] in ("SENT", "DELIVERED", "ACCEPTED", "IN_PROGRESS", "OVERDUE")
               for x in r.json()), r
    r = lab.kim("referral", "list", "--overdue", "--org", "ja.rheine", cert="jc.rheine")
    assert r.rc == 0 and all(x["state"] == "OVERDUE" for x in r.json()), r
    assert lab.show("ja.rheine", "R-W")["referral_id"] == "R-W"
    r = lab.kim("referral", "show", "R-W", cert="aa.rheine")
    assert r.rc == 1, r
    assert "R-W" not in lab.kim("referral", "list", cert="aa.rheine").out


def test_loop_deadlines_overdue_then_expired(timers):
    # README "The closed loop", Deadlines: "A referral's deadline ... passes unanswered: it
    # turns OVERDUE and both sides get a REMINDER. Still unanswered lifecycle/expire_days
    # later, it turns EXPIRED and the sender gets an EXPIRED. The timers are in the store and
    # survive restarts." (the broker was restarted after the referral, before its deadline)
    b = timers
    assert wait_for(lambda: b.state("jc.rheine", "R-OD") in ("OVERDUE", "EXPIRED"), timeout=8)
    assert wait_for(lambda: b.state("jc.rheine", "R-OD") == "EXPIRED", timeout=8)
    moves = [(x["body"]["from"], x["body"]["to"]) for x in b.replay("--type", "state")
             if x["body"].get("referral_id") == "R-OD"]
    assert ("SENT", "OVERDUE") in moves and ("OVERDUE", "EXPIRED") in moves, moves
    kinds_jc = {d["hdr"]["type"] for d in timer_mail(b, "jc.rheine")
                if d["hdr"].get("referral_id") == "R-OD"}
    kinds_ja = {d["hdr"]["type"] for d in timer_mail(b, "ja.rheine")
                if d["hdr"].get("referral_id") == "R-OD"}
    assert {"REMINDER", "EXPIRED"} <= kinds_jc, kinds_jc
    assert "REMINDER" in kinds_ja and "EXPIRED" not in kinds_ja, kinds_ja


# === Audit: verify and replay the log =============================================

VERIFY_OK = re.compile(r"^OK: records 1\.\.(\d+) verified \((\d+) records, (\d+) checkpoints "
                       r"signed by key ([0-9a-f]+)…?\); sealed up to the last record$")


def sealed_to(b, data="kim-data"):
    """The seq up to which `kim audit verify --data` says the log is sealed."""
    out = b.kim("audit", "verify", "--data", data).out
    if "sealed up to the last record" in out:
        return float("inf")
    m = re.search(r"sealed up to seq (\d+)", out)
    return int(m.group(1)) if m else 0


def test_audit_verify_output_and_checkpoint_file(lab):
    # README "Audit": "OK: records 1..N verified (N records, K checkpoints signed by key
    # 9f3c…)..."; a checkpoint every checkpoint_seconds when records were added; "The latest
    # checkpoint is also kept in kim-data/audit.checkpoint"
    sent = receipt(statute_referral(lab, "jc.rheine", "ja.rheine", "R-AV", "C-AV"))
    assert wait_for(lambda: sealed_to(lab) >= sent["seq"], timeout=6, step=0.3)
    r = lab.kim("audit", "verify", "--data", "kim-data")
    m = re.match(r"OK: records 1\.\.(\d+) verified \((\d+) records, (\d+) checkpoints "
                 r"signed by key ([0-9a-f]+)…?\); ", r.out)
    assert r.rc == 0 and m and m.group(1) == m.group(2) and int(m.group(3)) >= 1, r
    assert os.path.exists(os.path.join(lab.data, "audit.checkpoint"))


def test_audit_verify_sealed_up_to_the_last_record(tmp_root):
    # README "Audit": "OK: records 1..20412 verified (20412 records, 3 checkpoints signed by
    # key 9f3c…); sealed up to the last record"
    b = Broker(os.path.join(tmp_root, "sealed"), LAB_ORGS[1:3],
               sections={"audit": {"checkpoint_seconds": 1}})
    b.start()
    try:
        sent = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-SE", "C-SE"))
        if not wait_for(lambda: sealed_to(b) >= sent["seq"], timeout=6, step=0.3):
            pytest.fail("no checkpoint within 6 s")
        time.sleep(1.5)          # quiet: checkpoint_seconds passes again without a record
        r = b.kim("audit", "verify", "--data", "kim-data")
    finally:
        b.finish()
    assert r.rc == 0, r
    assert VERIFY_OK.match(r.out.strip()), r.out


def test_audit_replay_export_case_online(story, demo):
    # README "Audit": replay --case C-1 --since 2026-01-01; export > log.jsonl; verify
    # --from-export log.jsonl --sign-key kim-data/keys/broker.sign.pub; audit case C-1
    r = demo.sh("%s audit replay --data kim-data --case C-1 --since 2026-01-01\n" % KIM)
    assert r.rc == 0 and r.json(), r
    assert all(x["body"].get("case_id") == "C-1" for x in r.json()), r
    r = demo.sh("%s audit export --data kim-data > log.jsonl\n" % KIM)
    assert r.rc == 0, r
    r = demo.sh("%s audit verify --from-export log.jsonl --sign-key "
                "kim-data/keys/broker.sign.pub\n" % KIM)
    assert r.rc == 0 and r.out.startswith("OK: records 1.."), r
    r = demo.sh("%s audit case C-1 --data kim-data\n" % KIM)
    assert r.rc == 0 and "R-1" in r.out and "ACCEPTED" in r.out, r
    # "The same commands work online through the broker for organisations with the auditor
    # role (--cert, as for kim inbox; --sign-key for verify)"; every read logged as
    # audit_read; agencies refused
    r = demo.kim("audit", "replay", "--case", "C-1", cert="dsb.steinfurt")
    assert r.rc == 0 and r.json(), r
    r = demo.kim("audit", "verify", "--sign-key", "kim-data/keys/broker.sign.pub",
                 cert="dsb.steinfurt")
    assert r.rc == 0 and r.out.startswith("OK: "), r
    r = demo.kim("audit", "replay", "--case", "C-1", cert="kim.rheine")
    assert r.rc != 0 and "FORBIDDEN" in r.out + r.err, r
    r = demo.kim("audit", "replay", "--type", "audit_read", cert="dsb.steinfurt")
    reads = r.json()
    assert r.rc == 0 and reads and all(x["kind"] == "audit_read" for x in reads), r
    assert reads[-1]["body"]["reader"] == "dsb.steinfurt"   # logged before its first record
    assert any(x["body"]["reader"] == "kim.rheine" for x in reads)


def test_audit_altered_record_and_cut_tail(tmp_root):
    # README "Audit": "An altered, removed, reordered or forged record is named by its
    # sequence number (exit 1): FAILED at seq 4117: hash mismatch: record 4117 was altered,
    # or records before it were removed or reordered"; "The latest checkpoint is also kept in
    # kim-data/audit.checkpoint, so a log whose tail was cut off no longer matches it."
    b = Broker(os.path.join(tmp_root, "tamper"), LAB_ORGS[1:3],
               sections={"audit": {"checkpoint_seconds": 1}})
    b.start()
    try:
        marked = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-T1", "C-T", None,
                                          "--note", "NOTEMARKQX"))
        assert wait_for(lambda: sealed_to(b) >= marked["seq"], timeout=6, step=0.3)
        b.stop()
        early = os.path.join(tmp_root, "tamper-early")
        shutil.copytree(b.data, early)
        b.start()
        later = receipt(statute_referral(b, "jc.rheine", "ja.rheine", "R-T2", "C-T"))
        assert wait_for(lambda: sealed_to(b) >= later["seq"], timeout=6, step=0.3)
    finally:
        b.finish()
    # README "Audit": "An auditor verifies a copy of the data folder"
    r = run([KIM, "audit", "verify", "--data", early])
    assert r.rc == 0 and r.out.startswith("OK: records 1.."), r
    r = run([KIM, "audit", "replay", "--data", early, "--org", "ja.rheine"])
    assert r.rc == 0 and r.json() and all("ja.rheine" in json.dumps(x["body"])
                                          for x in r.json()), r
    # a cut tail: the early store with the later checkpoint
    shutil.copy(os.path.join(b.data, "audit.checkpoint"), os.path.join(early, "audit.checkpoint"))
    r = run([KIM, "audit", "verify", "--data", early])
    assert r.rc == 1 and "FAILED" in r.out + r.err, r
    # an altered record
    altered = os.path.join(tmp_root, "tamper-altered")
    shutil.copytree(b.data, altered)
    store = os.path.join(altered, "store", "data.mdb")
    if not os.path.exists(store):
        store = [os.path.join(base, f) for base, _, files in os.walk(altered) for f in files
                 if f == "data.mdb" and "keys" not in base][0]
    with open(store, "rb") as f:
        data = f.read()
    assert b"NOTEMARKQX" in data
    with open(store, "wb") as f:
        f.write(data.replace(b"NOTEMARKQX", b"NOTEMARKQY"))
    r = run([KIM, "audit", "verify", "--data", altered])
    n = marked["seq"]
    assert r.rc == 1, r
    assert ("FAILED at seq %d: hash mismatch: record %d was altered, or records before it were "
            "removed or reordered" % (n, n)) in r.out + r.err, r


def test_audit_trace_single_log(story, demo):
    # README "Audit", Across districts: `kim audit trace MSG_ID` ... "says so, and exits 1,
    # when ... the message is in no log"
    r = demo.kim("audit", "trace", "no-such-message", "--data", "kim-data", "--name",
                 "broker.steinfurt")
    assert r.rc == 1 and "NOT FOUND" in r.out, r
    msg_id = receipt(story["referral"])["msg_id"]
    r = demo.kim("audit", "trace", msg_id, "--data", "kim-data", "--name", "broker.steinfurt")
    assert r.rc == 0 and re.search(r"^OK: 1 cop", r.out, re.M), r
    assert "broker.steinfurt" in r.out and "REFERRAL" in r.out
    # "--json gives the same as one document"
    r = demo.kim("audit", "trace", msg_id, "--data", "kim-data", "--name", "broker.steinfurt",
                 "--json")
    assert r.rc == 0 and json.loads(r.out)["ok"] is True, r
