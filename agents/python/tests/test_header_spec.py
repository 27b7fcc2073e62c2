"""The message header against PROTOCOL.md, read as an outside implementer
reads it: the header table of §9, the per-type rules of §9.1 (read from the
spec's own table), the formats of §6 rule 6 and the error paths of §6.1, the
SEND examples of §9.2 (decoded, then sent), citations (§9.5), the order of
the checks of a SEND (§8.3), payload sealing (§13.2) and the sender
signature (§13.4). Reason codes by name from the table of §10.

Most frames are written on a raw CURVE DEALER (test_wire_spec's Wire), so a
header can hold what kim.Client would never send; a header that passes the
codec but cannot pass a later check (an answer to an unknown referral) shows
by its later code that the codec let it through (§8.3: the codec's
refusals come first). On the shared broker soz.rheine has no sign_key and
jc.rheine has one (conftest). What other files check already (OUTCOME's
note, payload and code; STATUS/DECLINE codes in a live referral; a passed
deadline; CONSENT_GRANT's required fields and recipient; CONSENT_REVOKE's
broker fields; broker-made types FORBIDDEN; an unsigned SEND of jc; x- keys
in hdr; the canonical order of a stored header) is left out.

The §9.2 examples use organisations the shared broker does not have
(kim.rheine, mbe.rheine.caritas, ...): they run on a broker of their own.
Every wait is bounded."""
import json
import os
import re
import time

import msgpack
import nacl.hash
import nacl.public
import nacl.signing
import pytest
from nacl.encoding import RawEncoder

import kim
import kim_headers
from conftest import new_broker
from kim.client import HEADER_ORDER, canonical_header, sign_header
from kim_headers import STATUTE
from kim_inbox import Inbox, uid
from test_wire_spec import Raw, Wire, mapping, str_of

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "..", "..", "..", "proto", "PROTOCOL.md"), encoding="utf-8") as f:
    SPEC = f.read()

WAIT = 5.0
ANY = object()              # a path the spec does not fix
JC, SOZ, AA, DSB = "jc.rheine", "soz.rheine", "aa.rheine", "dsb.steinfurt"
MAX_TIME = (1 << 53) - 1    # §6 rule 5, §9: times in headers
DAY_MS = 86400 * 1000
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")


def section(start, end):
    return SPEC[SPEC.index(start):SPEC.index(end)]


def now_ms():
    return int(time.time() * 1000)


def blake2b(data):
    return nacl.hash.blake2b(data, digest_size=32, encoder=RawEncoder)


#   --- the spec's tables ----------------------------------------------------------

def _codes():
    """§10: reason name -> code."""
    rows = re.findall(r"^\| (\d+) \| ([A-Z0-9_]+) \|", section("## 10. Reason codes",
                                                           "### 10.1"), re.M)
    return {name: int(code) for code, name in rows}


CODES = _codes()


def _header_fields():
    """§9: the header's keys in canonical order."""
    table = section("## 9. The message header", "**`legal_basis`** is a map")
    return re.findall(r"^\| `(\w+)` \|", table, re.M)


FIELDS = _header_fields()


def _type_rules():
    """§9.1: type -> (from, required, allowed on SEND, broker-set, code values).
    Code values: a tuple, ANY ("any code"), or () when the column is empty.
    "(broker-set)" marks a field an agency may not send; on the last item of a
    ";"-group it marks the whole group (CONSENT_REVOKE's row)."""
    table = section("### 9.1 Per-type rules", "### 9.2 Message types")
    rules = {}
    for name, origin, required, optional, codes in re.findall(
            r"^\| ([A-Z_]+) \| ([a-z, ]+) \| (.*?) \| (.*?) \|(.*?)\|$", table, re.M):
        allowed, broker_set = [], []
        groups = optional.split(";")
        for group in groups:
            items = [i.strip() for i in group.split(",") if i.strip()]
            whole = len(groups) > 1 and items and items[-1].endswith("(broker-set)")
            for item in items:
                m = re.match(r"as (\w+)(?: but \*\*no (\w+)\*\*)?$", item)
                if m:
                    allowed += [f for f in rules[m.group(1)][2] if f != m.group(2)]
                elif whole or item.endswith("(broker-set)"):
                    broker_set.append(item.split()[0])
                else:
                    allowed.append(item.split()[0])
        values = ANY if "any code" in codes else tuple(re.findall(r"`(\w+)`", codes))
        rules[name] = (origin, [r.strip() for r in required.split(",")], allowed, broker_set,
                       values)
    return rules


RULES = _type_rules()
AGENCY = [t for t, r in RULES.items() if "agency" in r[0]]
#   §9.1: every type requires type and msg_id and allows these
COMMON = ("type", "schema", "msg_id", "created_at", "sender", "priority", "payload_len",
          "payload_hash", "sig", "rule")


def test_the_spec_tables_read_as_expected():
    """§9, §9.1, §10: the tables this file generates its cases from (a guard for the
    parsing above): the header order the client uses, 23 types, 18 of them sent by
    agencies, the reason codes."""
    assert tuple(FIELDS) == HEADER_ORDER
    assert len(RULES) == 23 and len(AGENCY) == 18
    assert RULES["OUTCOME"][2] == ["ref_msg_id", "sender_case_ref", "recipient_case_ref",
                                   "categories"]
    assert RULES["NOT_COMPETENT"][2][-1] == "org"
    assert RULES["CONSENT_REVOKE"][2:4] == (["case_id"], ["recipient", "referral_id",
                                                          "ref_msg_id", "code"])
    assert RULES["ERASURE"][2:4] == (["case_id"], ["recipient"])
    assert RULES["DECLINE"][4] == ("capacity", "not_eligible", "person_declined", "other")
    assert RULES["HANDOVER_DECLINE"][4] is ANY and RULES["ACCEPT"][4] == ()
    assert CODES["BAD_SIGNATURE"] == 211 and CODES["STALE"] == 212


#   --- raw sessions on the shared broker ----------------------------------------------

def _open(b, org):
    w = Wire(b, org)
    w.hello(window=0)
    return w


@pytest.fixture(scope="module")
def soz(broker):
    """A raw session of soz.rheine (no sign_key), window 0: it gets answers only."""
    w = _open(broker, SOZ)
    yield w
    w.close()


@pytest.fixture(scope="module")
def jc(broker):
    """A raw session of jc.rheine, which has a sign_key (§13.4); window 0."""
    w = _open(broker, JC)
    yield w
    w.close()


def send(w, hdr, payload=None, msg_id=None):
    """SEND `hdr` (a dict in wire order, values may be Raw; or a Raw map whose
    msg_id is given) on a raw session; returns the answer to it: the RECEIPT or
    REJECT naming its msg_id, or, when it has no valid one, the first answer
    without one (§7.1)."""
    frame = mapping(("cmd", "SEND"), ("hdr", hdr if isinstance(hdr, Raw)
                                      else mapping(*hdr.items())))
    w.send(frame) if payload is None else w.send(frame, payload)
    if isinstance(hdr, dict):
        msg_id = hdr.get("msg_id")
    want = msg_id if isinstance(msg_id, str) and _ID.match(msg_id) else None
    deadline = time.monotonic() + WAIT
    while True:
        reply = w.next(max(deadline - time.monotonic(), 0))
        assert reply is not None, "no answer to the SEND of %r" % (msg_id,)
        if reply["cmd"] in ("RECEIPT", "REJECT") and reply.get("msg_id") == want:
            return reply


def refused(reply, name, path=ANY, msg_id=ANY):
    """§8.5: a REJECT with the code and name of §10 and the path of §6.1."""
    assert reply["cmd"] == "REJECT", reply
    assert (reply["code"], reply["reason"]) == (CODES[name], name), reply
    if path is not ANY:
        assert reply.get("path", "") == path, reply
    if msg_id is not ANY:
        assert reply.get("msg_id") == msg_id, reply
    return reply


def received(reply):
    assert reply["cmd"] == "RECEIPT" and not reply.get("dup"), reply
    return reply


def expect(w, hdr, name, path=ANY, payload=None):
    """Sends and expects REJECT `name` at `path`, carrying the SEND's msg_id when it
    is present and valid (§7.1), none otherwise."""
    msg_id = hdr.get("msg_id")
    return refused(send(w, hdr, payload), name, path,
                   msg_id if isinstance(msg_id, str) and _ID.match(msg_id) else None)


def valid_values():
    """A well-formed value of every header field an agency may send (§9 table)."""
    return {"recipient": JC, "referral_id": uid("r"), "ref_msg_id": uid("m"),
            "case_id": uid("c"), "sender_case_ref": "S-1", "recipient_case_ref": "R-1",
            "subject": uid("p"), "purpose": "benefits", "legal_basis": dict(STATUTE),
            "categories": ["contact"], "deadline": now_ms() + DAY_MS, "code": "other",
            "org": AA, "note": "n", "referrals": [uid("r")], "consent": uid("g"),
            "recipients": [AA], "purposes": ["benefits"], "explicit": True,
            "valid_until": now_ms() + DAY_MS, "giver": "subject"}


def minimal(kind, **extra):
    """A header of `kind` with what §9.1 requires of it, nothing else."""
    values = valid_values()
    hdr = {"type": kind, "msg_id": uid("m")}
    for field in RULES[kind][1]:
        hdr[field] = values[field]
    if "code" in hdr and RULES[kind][4] and RULES[kind][4] is not ANY:
        hdr["code"] = RULES[kind][4][0]
    hdr.update(extra)
    return hdr


#   What a header that passed the codec meets next, sent by soz with ids nobody uses
#   (§9.4: an unknown referral, a case it takes no part in; §9.3: an unknown consent,
#   a subject it sent nothing about): "the codec let it through".
AFTER_CODEC = {"ACCEPT": "UNKNOWN_REFERRAL", "DECLINE": "UNKNOWN_REFERRAL",
               "NOT_COMPETENT": "UNKNOWN_REFERRAL", "FORWARD": "UNKNOWN_REFERRAL",
               "STATUS": "UNKNOWN_REFERRAL", "OUTCOME": "UNKNOWN_REFERRAL",
               "WITHDRAW": "UNKNOWN_REFERRAL", "INFO_REQUEST": "UNKNOWN_REFERRAL",
               "INFO_RESPONSE": "UNKNOWN_REFERRAL", "HANDOVER_OFFER": "UNKNOWN_CASE",
               "HANDOVER_ACCEPT": "UNKNOWN_CASE", "HANDOVER_DECLINE": "UNKNOWN_CASE",
               "CASE_CLOSED": "UNKNOWN_CASE", "CONSENT_REVOKE": "CONSENT_UNKNOWN",
               "ERASURE": "NOT_PARTY", "ACCESS_REPORT": "NOT_PARTY",
               "REFERRAL": None, "CONSENT_GRANT": None}     # None: stored, RECEIPT


def passes_codec(w, hdr, payload=None):
    reply = send(w, hdr, payload)
    after = AFTER_CODEC[hdr["type"]]
    if after is None:
        return received(reply)
    return refused(reply, after, ANY, hdr["msg_id"])


#   --- §9.1: required fields, fields a type must not carry ----------------------------

#   Checked elsewhere: OUTCOME's code (test_lifecycle_spec), CONSENT_GRANT's
#   required fields (test_consent_spec), REFERRAL's legal_basis (§10.1).
MISSING_ELSEWHERE = {("OUTCOME", "code"), ("REFERRAL", "legal_basis")} | {
    ("CONSENT_GRANT", f) for f in ("case_id", "subject", "recipients", "purposes",
                                   "valid_until")}
MISSING = [(t, f) for t in AGENCY for f in RULES[t][1] if (t, f) not in MISSING_ELSEWHERE]


@pytest.mark.parametrize("kind, field", MISSING, ids=["%s-%s" % c for c in MISSING])
def test_a_required_field_missing_is_missing_field_at_its_path(soz, kind, field):
    """§9.1 table, row `kind`: each required field; missing is MISSING_FIELD at hdr.<field>."""
    hdr = minimal(kind)
    del hdr[field]
    expect(soz, hdr, "MISSING_FIELD", "hdr." + field)


@pytest.mark.parametrize("kind", ["WITHDRAW", "CONSENT_REVOKE"])
def test_type_and_msg_id_are_required_of_every_type(soz, kind):
    """§9.1: every type requires type and msg_id (MISSING_FIELD); without a msg_id
    the REJECT carries none (§7.1)."""
    hdr = minimal(kind)
    del hdr["msg_id"]
    expect(soz, hdr, "MISSING_FIELD", "hdr.msg_id")
    hdr = minimal(kind)
    del hdr["type"]
    expect(soz, hdr, "MISSING_FIELD", "hdr.type")


#   Checked elsewhere: OUTCOME's note (§10.1, test_lifecycle_spec), CONSENT_GRANT's
#   recipient and CONSENT_REVOKE's broker fields (test_consent_spec).
FORBIDDEN_ELSEWHERE = {("OUTCOME", "note"), ("CONSENT_GRANT", "recipient")} | {
    ("CONSENT_REVOKE", f) for f in ("recipient", "referral_id", "ref_msg_id", "code")}
FORBIDDEN = [(t, f) for t in AGENCY for f in FIELDS
             if f not in COMMON and f not in RULES[t][1] and f not in RULES[t][2]
             and (t, f) not in FORBIDDEN_ELSEWHERE]


@pytest.mark.parametrize("kind, field", FORBIDDEN, ids=["%s-%s" % c for c in FORBIDDEN])
def test_a_field_the_type_does_not_allow_is_bad_value_at_its_path(soz, kind, field):
    """§9.1 table, row `kind`: every field outside common/required/optional SHALL be
    absent (BAD_VALUE at its path); broker-set fields and a recipient on CONSENT_REVOKE,
    ERASURE, ACCESS_REPORT likewise (§8.3, §9.1)."""
    hdr = minimal(kind)
    hdr[field] = valid_values()[field]
    expect(soz, hdr, "BAD_VALUE", "hdr." + field)


@pytest.mark.parametrize("kind", AGENCY)
def test_every_field_the_type_allows_passes_the_codec(soz, kind):
    """§9.1 table, row `kind`: required + optional + the common fields (schema,
    created_at, sender, priority, payload_len/payload_hash of an empty payload, rule)
    together decode; the SEND then meets a later check (or is stored)."""
    values = valid_values()
    hdr = {"type": kind, "schema": 1, "msg_id": uid("m"), "created_at": now_ms(),
           "sender": SOZ}
    for field in FIELDS:
        if field in RULES[kind][1] or field in RULES[kind][2]:
            hdr[field] = values[field]
    if "code" in hdr and RULES[kind][4] and RULES[kind][4] is not ANY:
        hdr["code"] = RULES[kind][4][-1]
    hdr.update(priority="high", rule="P-none", payload_hash=blake2b(b""))
    passes_codec(soz, hdr)


#   --- §9.1 code values per type --------------------------------------------------------

CODE_CASES = (
    [("DECLINE", c, True) for c in RULES["DECLINE"][4]]
    + [("STATUS", c, True) for c in RULES["STATUS"][4]]
    + [("DECLINE", "in_progress", False), ("DECLINE", "completed", False),
       ("STATUS", "capacity", False), ("STATUS", "completed", False),
       ("DECLINE", "revoked", False)]
    + [("OUTCOME", c, True) for c in ("capacity", "x" * 32, "moved_1")]
    + [("HANDOVER_DECLINE", c, True) for c in ("not_resident", "capacity", "z" * 32)]
    + [("OUTCOME", c, False) for c in ("Completed", "com-pleted", "\u00e4")]
    + [("HANDOVER_DECLINE", c, False) for c in ("Not resident", "not.resident")])


@pytest.mark.parametrize("kind, code, allowed", CODE_CASES,
                         ids=["%s-%s" % (k, c[:12]) for k, c, _ in CODE_CASES])
def test_code_values_per_type(soz, kind, code, allowed):
    """§9.1 `code` values column: DECLINE and STATUS take their listed codes only,
    OUTCOME and HANDOVER_DECLINE any code of §6 rule 6 (1-32 bytes of [a-z0-9_]);
    anything else is BAD_VALUE at hdr.code."""
    hdr = minimal(kind, code=code)
    if allowed:
        passes_codec(soz, hdr)
    else:
        expect(soz, hdr, "BAD_VALUE", "hdr.code")


#   --- §6 rule 6: id, org and code formats -----------------------------------------------

BAD_IDS = ["a b", "r/1", "\u00e4", "r\u00a01", "r;1"]
BAD_ORGS = ["jc", "jc.rheine.a.b", "JC.rheine", "jc..rheine", ".rheine", "jc.rheine.",
            "jc.rhe ine", "jc.rh\u00e9ine", "jc:rheine"]
BAD_CODES = ["Employment", "em-ployment", "\u00e4", "a b", "a.b"]

#   field -> (carrier type, how to set the value)
ID_FIELDS = {
    "msg_id": ("WITHDRAW", lambda h, v: h.update(msg_id=v)),
    "referral_id": ("WITHDRAW", lambda h, v: h.update(referral_id=v)),
    "ref_msg_id": ("ACCEPT", lambda h, v: h.update(ref_msg_id=v)),
    "case_id": ("CASE_CLOSED", lambda h, v: h.update(case_id=v)),
    "subject": ("ERASURE", lambda h, v: h.update(subject=v)),
    "consent": ("CONSENT_REVOKE", lambda h, v: h.update(consent=v)),
    "legal_basis.consent_id": ("REFERRAL", lambda h, v: h.update(
        legal_basis={"kind": "consent", "consent_id": v})),
    "referrals[1]": ("HANDOVER_OFFER", lambda h, v: h.update(referrals=[uid("r"), v])),
}
ORG_FIELDS = {
    "recipient": ("WITHDRAW", lambda h, v: h.update(recipient=v)),
    "org": ("NOT_COMPETENT", lambda h, v: h.update(org=v)),
    "sender": ("WITHDRAW", lambda h, v: h.update(sender=v)),
    "recipients[1]": ("CONSENT_GRANT", lambda h, v: h.update(recipients=[AA, v])),
}
CODE_FIELDS = {
    "purpose": ("REFERRAL", lambda h, v: h.update(purpose=v)),
    "code": ("OUTCOME", lambda h, v: h.update(code=v)),
    "purposes[1]": ("CONSENT_GRANT", lambda h, v: h.update(purposes=["benefits", v])),
}
FORMAT_CASES = (
    [(f, v, "BAD_ID") for f in ID_FIELDS for v in BAD_IDS]
    + [(f, v, "BAD_ID") for f in ORG_FIELDS for v in BAD_ORGS]
    + [(f, v, "BAD_VALUE") for f in CODE_FIELDS for v in BAD_CODES])


@pytest.mark.parametrize("field, value, name", FORMAT_CASES,
                         ids=["%s-%d" % (f, i) for i, (f, v, n) in enumerate(FORMAT_CASES)])
def test_a_value_outside_its_format_is_refused_at_its_path(soz, field, value, name):
    """§6 rule 6: ids are 1-64 bytes of [A-Za-z0-9._:-] and orgs two or three parts of
    [a-z0-9_-], at most 64 bytes (BAD_ID); codes 1-32 bytes of [a-z0-9_] (BAD_VALUE);
    §6.1: the path names the field, array entries by index."""
    kind, put = {**ID_FIELDS, **ORG_FIELDS, **CODE_FIELDS}[field]
    hdr = minimal(kind)
    put(hdr, value)
    expect(soz, hdr, name, "hdr." + field)


LONG_CASES = ([(f, "x" * 65) for f in ID_FIELDS] + [(f, "a" * 32 + "." + "b" * 32)
                                                  for f in ORG_FIELDS]
              + [(f, "e" * 33) for f in CODE_FIELDS])


@pytest.mark.parametrize("field, value", LONG_CASES, ids=[f for f, _ in LONG_CASES])
def test_an_id_org_or_code_over_its_length_is_too_long(soz, field, value):
    """The spec is not explicit here: §6 rule 6 puts the length in the formats (ids
    1-64 bytes, orgs ≤ 64 bytes: BAD_ID; codes 1-32 bytes: BAD_VALUE), rule 4 says
    "their length limits count bytes (TOO_LONG)". Pinned: the broker answers
    TOO_LONG at the field's path (65-byte ids and orgs, 33-byte codes)."""
    kind, put = {**ID_FIELDS, **ORG_FIELDS, **CODE_FIELDS}[field]
    hdr = minimal(kind)
    put(hdr, value)
    expect(soz, hdr, "TOO_LONG", "hdr." + field)


def _longest_id():
    return (uid("M") + "." + "aZ09._:-" * 8)[:64]


GOOD_FORMATS = [
    ("msg_id", _longest_id),
    ("referral_id", lambda: "A-z.0_9:" + "x" * 56),
    ("subject", lambda: "p:1.A_b-" + "y" * 56),
    ("purpose", lambda: "p" * 32),
    ("purposes[1]", lambda: "a_1"),
]


@pytest.mark.parametrize("field, make", GOOD_FORMATS,
                         ids=["%s-%d" % (f, i) for i, (f, _) in enumerate(GOOD_FORMATS)])
def test_the_edges_of_each_format_pass_the_codec(soz, field, make):
    """§6 rule 6: 64-byte ids of every allowed character and 32-byte codes are valid
    (orgs at the edge: the UNKNOWN_RECIPIENT test below)."""
    kind, put = {**ID_FIELDS, **ORG_FIELDS, **CODE_FIELDS}[field]
    hdr = minimal(kind)
    put(hdr, make())
    if field == "msg_id":
        assert len(hdr["msg_id"]) == 64
    passes_codec(soz, hdr)


def test_a_well_formed_recipient_nobody_registered_is_unknown_recipient(soz):
    """§6 rule 6 passes, §8.3 step 5 refuses: UNKNOWN_RECIPIENT (203), also at 64 bytes."""
    for org in ("x_y-1.a-b_2.c", "a" * 31 + "." + "b" * 32):
        expect(soz, minimal("WITHDRAW", recipient=org), "UNKNOWN_RECIPIENT")


#   --- §9 field types, §6 rules 4 and 5 --------------------------------------------------

TYPE_CASES = [
    ("WITHDRAW", "type", 7), ("WITHDRAW", "msg_id", 7), ("WITHDRAW", "schema", "1"),
    ("WITHDRAW", "created_at", 1.7e12), ("WITHDRAW", "created_at", None),
    ("WITHDRAW", "created_at", True), ("WITHDRAW", "created_at", "1718000000000"),
    ("WITHDRAW", "recipient", 7), ("WITHDRAW", "recipient", b"jc.rheine"),
    ("WITHDRAW", "referral_id", ["r-1"]), ("WITHDRAW", "priority", 1),
    ("WITHDRAW", "sender", None), ("WITHDRAW", "payload_len", "0"),
    ("WITHDRAW", "payload_hash", "x" * 32), ("WITHDRAW", "sig", "x" * 64),
    ("WITHDRAW", "rule", 1),
    ("REFERRAL", "legal_basis", "statute"), ("REFERRAL", "legal_basis", ["statute"]),
    ("REFERRAL", "categories", "contact"), ("REFERRAL", "deadline", 1.9e12),
    ("REFERRAL", "purpose", b"benefits"), ("REFERRAL", "subject", 12),
    ("ACCEPT", "note", b"a note"), ("ACCEPT", "sender_case_ref", 17),
    ("DECLINE", "code", 1), ("NOT_COMPETENT", "org", None),
    ("HANDOVER_OFFER", "referrals", "r-1"), ("CONSENT_GRANT", "recipients", AA),
    ("CONSENT_GRANT", "explicit", 1), ("CONSENT_GRANT", "valid_until", "soon"),
    ("CONSENT_GRANT", "purposes", {"a": 1}), ("CONSENT_GRANT", "giver", ["subject"]),
]


@pytest.mark.parametrize("kind, field, value", TYPE_CASES,
                         ids=["%s-%s-%s" % (k, f, type(v).__name__) for k, f, v in TYPE_CASES])
def test_a_field_of_the_wrong_messagepack_type_is_bad_type(soz, kind, field, value):
    """§9 table types; §6 rule 4 (bin is never str, str never bin) and rule 5 (floats,
    nil, booleans where an integer is expected, nil anywhere): BAD_TYPE at hdr.<field>."""
    hdr = minimal(kind)
    hdr[field] = value
    expect(soz, hdr, "BAD_TYPE", "hdr." + field)


ENTRY_TYPE_CASES = [("REFERRAL", "categories", [1]), ("CONSENT_GRANT", "recipients", [AA, 7]),
                    ("HANDOVER_OFFER", "referrals", [None])]


@pytest.mark.parametrize("kind, field, value", ENTRY_TYPE_CASES,
                         ids=[c[1] for c in ENTRY_TYPE_CASES])
def test_an_array_entry_of_the_wrong_type_is_bad_type_at_its_index(soz, kind, field, value):
    """§9 (array of str), §6.1 (array positions in brackets)."""
    hdr = minimal(kind)
    hdr[field] = value
    bad = next(i for i, v in enumerate(value) if not isinstance(v, str))
    expect(soz, hdr, "BAD_TYPE", "hdr.%s[%d]" % (field, bad))


INT_CASES = [("WITHDRAW", "created_at", MAX_TIME + 1), ("WITHDRAW", "created_at", -1),
             ("REFERRAL", "deadline", MAX_TIME + 1), ("REFERRAL", "deadline", -5),
             ("CONSENT_GRANT", "valid_until", MAX_TIME + 1), ("WITHDRAW", "schema", 2),
             ("WITHDRAW", "payload_len", 16777217), ("WITHDRAW", "payload_len", -1)]


@pytest.mark.parametrize("kind, field, value", INT_CASES,
                         ids=["%s-%d" % (f, v) for _, f, v in INT_CASES])
def test_an_integer_outside_its_range_is_bad_value(soz, kind, field, value):
    """§6 rule 5 and the §9 table: times at most 2^53 - 1, schema = 1, payload_len at
    most 16777216, no negative values: BAD_VALUE at hdr.<field> — by the codec, before
    freshness (§8.3)."""
    hdr = minimal(kind)
    hdr[field] = value
    expect(soz, hdr, "BAD_VALUE", "hdr." + field)


def test_a_deadline_of_2_to_the_53_minus_1_is_taken(soz):
    """§9: deadline ≤ 2^53 - 1 ms — the largest is a valid (future) deadline."""
    received(send(soz, minimal("REFERRAL", deadline=MAX_TIME)))


TEXT_CASES = [("ACCEPT", "sender_case_ref", 64), ("ACCEPT", "recipient_case_ref", 64),
              ("ACCEPT", "note", 280), ("HANDOVER_OFFER", "sender_case_ref", 64)]


@pytest.mark.parametrize("kind, field, limit", TEXT_CASES, ids=[c[1] for c in TEXT_CASES])
def test_text_limits_count_bytes_not_characters(soz, kind, field, limit):
    """§9 table (sender_case_ref/recipient_case_ref ≤ 64 bytes, note ≤ 280 bytes), §6
    rule 4: lengths count bytes. `limit` bytes of 2-byte characters pass, one byte more
    is TOO_LONG although it is fewer characters than the limit."""
    at_limit = "\u00e4" * (limit // 2)
    passes_codec(soz, minimal(kind, **{field: at_limit}))
    expect(soz, minimal(kind, **{field: at_limit + "a"}), "TOO_LONG", "hdr." + field)


@pytest.mark.parametrize("field, data", [("note", b"a\x00b"), ("note", b"\xc0\xaf"),
                                         ("sender_case_ref", b"\xed\xa0\x80"),
                                         ("recipient_case_ref", b"\xff")])
def test_a_header_text_that_is_not_utf8_is_bad_utf8(soz, field, data):
    """§6 rule 4: every str valid UTF-8 without NUL (BAD_UTF8), at its path."""
    hdr = minimal("ACCEPT")
    hdr[field] = str_of(data)
    expect(soz, hdr, "BAD_UTF8", "hdr." + field)


@pytest.mark.parametrize("value", ["low", "high", "normal"])
def test_the_three_priorities_pass(soz, value):
    """§9: priority is low, normal or high."""
    passes_codec(soz, minimal("WITHDRAW", priority=value))


def test_priority_is_case_sensitive(soz):
    """§9: priority low, normal, high (BAD_VALUE otherwise)."""
    expect(soz, minimal("WITHDRAW", priority="HIGH"), "BAD_VALUE", "hdr.priority")


def test_an_unknown_header_field_and_a_field_twice(soz):
    """§6 rule 2 inside hdr: UNKNOWN_FIELD, DUPLICATE_FIELD, at their paths; a type
    name is case-sensitive (UNKNOWN_TYPE)."""
    expect(soz, minimal("WITHDRAW", urgency="high"), "UNKNOWN_FIELD", "hdr.urgency")
    hdr = minimal("WITHDRAW")
    pairs = list(hdr.items()) + [("recipient", JC)]
    refused(send(soz, mapping(*pairs), msg_id=hdr["msg_id"]), "DUPLICATE_FIELD",
            "hdr.recipient", hdr["msg_id"])
    expect(soz, minimal("WITHDRAW", type="withdraw"), "UNKNOWN_TYPE", "hdr.type")


#   --- arrays: categories, referrals, recipients, purposes ----------------------------

def test_categories_names_and_duplicates(soz):
    """§9: categories are the five names, no duplicates (BAD_VALUE); §6.1 an entry
    by its index."""
    expect(soz, minimal("REFERRAL", categories=["contact", "health"]),
           "BAD_VALUE", "hdr.categories[1]")
    expect(soz, minimal("REFERRAL", categories=["Contact"]),
           "BAD_VALUE", "hdr.categories[0]")
    reply = expect(soz, minimal("REFERRAL", categories=["contact", "contact"]),
                   "BAD_VALUE")
    assert reply["path"].startswith("hdr.categories"), reply


def test_17_categories_are_too_many_before_their_duplicates(soz):
    """§9: categories ≤ 16 (TOO_MANY, a limit of §6 rule 3); §6.1 checks the limits
    with the structure, before the fields: 17 entries (duplicates, as there are only
    five names) are TOO_MANY, not BAD_VALUE."""
    expect(soz, minimal("REFERRAL", categories=["contact"] * 17), "TOO_MANY",
           "hdr.categories")


@pytest.mark.parametrize("kind, field, limit, make", [
    ("HANDOVER_OFFER", "referrals", 32, lambda i: "r-%d" % i),
    ("CONSENT_GRANT", "recipients", 16, lambda i: "org%d.rheine" % i),
    ("CONSENT_GRANT", "purposes", 16, lambda i: "purpose_%d" % i)])
def test_list_limits_and_duplicates(soz, kind, field, limit, make):
    """§9 table: referrals ≤ 32, recipients ≤ 16, purposes ≤ 16 (TOO_MANY, §6 rule 3),
    no duplicates (BAD_VALUE)."""
    expect(soz, minimal(kind, **{field: [make(i) for i in range(limit + 1)]}),
           "TOO_MANY", "hdr." + field)
    reply = expect(soz, minimal(kind, **{field: [make(0), make(1), make(0)]}), "BAD_VALUE")
    assert reply["path"].startswith("hdr." + field), reply


def test_a_handover_offer_of_32_referrals_passes_the_codec(soz):
    """§9 table: 32 referrals are allowed."""
    passes_codec(soz, minimal("HANDOVER_OFFER", referrals=["r-%d" % i for i in range(32)]))


#   --- legal_basis (§9) ---------------------------------------------------------------

LB_CASES = [
    ({"citation": "SGB X §69(1)1"}, "MISSING_FIELD", "hdr.legal_basis.kind"),
    ({}, "MISSING_FIELD", "hdr.legal_basis.kind"),
    ({"kind": "law", "citation": "SGB X §69(1)1"}, "BAD_VALUE", "hdr.legal_basis.kind"),
    ({"kind": "Statute", "citation": "SGB X §69(1)1"}, "BAD_VALUE", "hdr.legal_basis.kind"),
    ({"kind": 1, "citation": "SGB X §69(1)1"}, "BAD_TYPE", "hdr.legal_basis.kind"),
    ({"kind": "statute"}, "MISSING_FIELD", "hdr.legal_basis.citation"),
    ({"kind": "consent"}, "MISSING_FIELD", "hdr.legal_basis.consent_id"),
    ({"kind": "statute", "citation": "SGB X §69(1)1", "consent_id": "g-1"}, "BAD_VALUE",
     "hdr.legal_basis.consent_id"),
    ({"kind": "consent", "consent_id": "g-1", "citation": "SGB X §69(1)1"}, "BAD_VALUE",
     "hdr.legal_basis.citation"),
    ({"kind": "statute", "citation": "SGB X §69(1)1", "basis": "x"}, "UNKNOWN_FIELD",
     "hdr.legal_basis.basis"),
    ({"kind": "statute", "citation": 69}, "BAD_TYPE", "hdr.legal_basis.citation"),
    ({"kind": "consent", "consent_id": "g 1"}, "BAD_ID", "hdr.legal_basis.consent_id"),
    ({"kind": "statute", "citation": "\u00a7" * 64 + "a"}, "TOO_LONG",
     "hdr.legal_basis.citation"),
    ({"kind": "statute", "citation": str_of(b"SGB X \xc0\xaf69")}, "BAD_UTF8",
     "hdr.legal_basis.citation"),
]


@pytest.mark.parametrize("basis, name, path", LB_CASES,
                         ids=["%d-%s" % (i, c[1]) for i, c in enumerate(LB_CASES)])
def test_legal_basis_shape(soz, basis, name, path):
    """§9 legal_basis: kind required (consent|statute), consent_id with consent only,
    citation (≤ 128 bytes) with statute only; missing MISSING_FIELD, forbidden BAD_VALUE
    at hdr.legal_basis.<key>; §6 rule 2 inside hdr.legal_basis."""
    hdr = minimal("REFERRAL", legal_basis=mapping(*basis.items()))
    expect(soz, hdr, name, path)


def test_legal_basis_key_twice_and_x_keys(soz):
    """§6 rule 2 holds inside hdr.legal_basis: a key twice is DUPLICATE_FIELD, an x-
    key is ignored."""
    twice = mapping(("kind", "statute"), ("citation", "SGB X §69(1)1"), ("kind", "statute"))
    expect(soz, minimal("REFERRAL", legal_basis=twice), "DUPLICATE_FIELD",
           "hdr.legal_basis.kind")
    received(send(soz, minimal("REFERRAL", legal_basis={
        "kind": "statute", "x-note": "ignored", "citation": "SGB X §69(1)1"})))


def test_a_citation_of_128_bytes_passes_the_codec(soz):
    """§9: citation ≤ 128 bytes (64 two-byte characters): decoded, then not read
    (§9.5) — NO_BASIS, not TOO_LONG."""
    hdr = minimal("REFERRAL", legal_basis={"kind": "statute", "citation": "\u00a7" * 64})
    expect(soz, hdr, "NO_BASIS", "hdr.legal_basis")


#   --- §9.5 citations -------------------------------------------------------------------

#   P1 of the shipped policy lists "SGB X §69(1)1" (soz -> jc, statute or consent)
SAME_PROVISION = ["SGB X §69(1)1", "SGB X § 69 Abs. 1 Nr. 1", "§ 69 Abs. 1 Satz 1 Nr. 1 SGB X",
                  "§69(1)1 SGB X", "sgb x §69(1)1", "SGB X § 69 Abs 1 Nr 1",
                  "SGB X § 69 Absatz 1 Nummer 1", "SGB X § 69 Abs. 1 S. 1 Nr. 1",
                  "SGB\u00a0X\u00a0§\u00a069\u00a0Abs.\u00a01\u00a0Nr.\u00a01",
                  "SGBX§69(1)1", "SGB X §69(1) Satz 1 Nr. 1"]
INSIDE = ["SGB X § 69 Abs. 1 Nr. 1 lit. a", "SGB X §69(1)1 Buchst. b",
          "§ 69 Abs. 1 Satz 1 Nr. 1 Buchstabe c SGB X"]
BROADER = ["SGB X §69(1)", "SGB X § 69", "SGB X § 69 Abs. 1 Satz 1"]
OTHER = ["SGB X §69(1)2", "SGB X §69(2)1", "SGB X §70(1)1", "SGB II §69(1)1",
         "SGB X §69a(1)1"]
UNREADABLE = ["SGB X §§ 69, 70", "SGB X § 69 f.", "SGB X § 69 ff.",
              "§ 69 Abs. 1 Nr. 1 SGB X i.V.m. § 70 SGB X", "SGB X § 69 Abs. 1 Nr. 1; § 70",
              "§ 69 Abs. 1 Nr. 1", "SGB X § 69 Abs. 1 Nr. 1 SGB X",
              "SGB X § 69 Nr. 1 Abs. 1", "SGB X § 69 Abs. 1 Abs. 1", "SGB X 69 Abs. 1 Nr. 1",
              "SGB X §12345", "SGB X § 69 Abs. 1 Nr. 1 7", "SGB X §0(1)1"]


def _referral_citing(citation):
    return minimal("REFERRAL", legal_basis={"kind": "statute", "citation": citation})


@pytest.mark.parametrize("citation", SAME_PROVISION + INSIDE)
def test_a_citation_of_the_rules_provision_or_one_inside_it_passes(soz, citation):
    """§9.5: spellings of § 69 Abs. 1 Satz 1 Nr. 1 SGB X (compact form, keywords with
    or without dot, long keywords, law before or after, case, no-break spaces, no
    spaces) and provisions inside it are accepted by a rule that lists it."""
    received(send(soz, _referral_citing(citation)))


@pytest.mark.parametrize("citation", BROADER + OTHER + UNREADABLE)
def test_a_citation_broader_other_or_unreadable_is_no_basis(soz, citation):
    """§9.5, §9.3: a broader citation, another provision, and one that cannot be read
    (§§, f., ff., i.V.m., a list, no law, the law twice, subdivisions out of order or
    twice, a bare number, a number out of 1..9999) are NO_BASIS at hdr.legal_basis,
    with a text naming the rule."""
    reply = expect(soz, _referral_citing(citation), "NO_BASIS", "hdr.legal_basis")
    assert "P1" in reply["text"], reply


def test_an_empty_citation_is_a_missing_one(soz):
    """The spec is silent on an empty string in a field that is required (§6 rule 7
    speaks of optional fields; citation is required with statute). Pinned: "" reads as
    absent, MISSING_FIELD at hdr.legal_basis.citation (while an empty consent_id is
    BAD_ID, as an empty id is elsewhere)."""
    expect(soz, _referral_citing(""), "MISSING_FIELD", "hdr.legal_basis.citation")
    expect(soz, minimal("REFERRAL", legal_basis={"kind": "consent", "consent_id": ""}),
           "BAD_ID", "hdr.legal_basis.consent_id")


def test_a_broader_citation_is_told_the_rules_citations_inside_it(soz):
    """§9.5: "its text naming the rule's citations inside it"."""
    reply = expect(soz, _referral_citing("SGB X §69(1)"), "NO_BASIS", "hdr.legal_basis")
    assert "69" in reply["text"] and ("§69(1)1" in reply["text"]
                                      or "Nr. 1" in reply["text"]), reply["text"]


#   --- §6.1: the order of checks inside hdr ----------------------------------------------

def test_header_faults_are_reported_in_wire_order_then_the_per_type_rules(soz):
    """§6.1: the fields in the order they appear on the wire, then the rules involving
    several fields (required, per-type)."""
    m = uid("m")
    first = {"type": "ACCEPT", "msg_id": m, "priority": "urgent", "note": "n" * 281,
             "recipient": JC, "referral_id": "r-1"}
    expect(soz, first, "BAD_VALUE", "hdr.priority")
    second = {"type": "ACCEPT", "msg_id": m, "note": "n" * 281, "priority": "urgent",
              "recipient": JC, "referral_id": "r-1"}
    expect(soz, second, "TOO_LONG", "hdr.note")
    # a field fault wins over a missing required field and a forbidden field
    expect(soz, {"type": "ACCEPT", "msg_id": m, "org": AA, "priority": "urgent",
                 "referral_id": "r-1"}, "BAD_VALUE", "hdr.priority")
    # a bad field before the type: the type is read after it
    expect(soz, {"priority": "urgent", "type": "REFERAL", "msg_id": m}, "BAD_VALUE",
           "hdr.priority")


#   --- §6 rule 7: empty means absent ---------------------------------------------------

EMPTY = [("OUTCOME", "note", ""), ("WITHDRAW", "explicit", False),
         ("REFERRAL", "deadline", 0), ("WITHDRAW", "payload_len", 0),
         ("HANDOVER_OFFER", "referrals", []), ("REFERRAL", "categories", []),
         ("ACCEPT", "sender_case_ref", ""), ("ACCEPT", "recipient_case_ref", "")]
#   fields with a format or a fixed value, left empty: (type, field, value, code)
EMPTY_FORMATTED = [("ACCEPT", "ref_msg_id", "", "BAD_ID"), ("ERASURE", "case_id", "", "BAD_ID"),
                   ("NOT_COMPETENT", "org", "", "BAD_ID"), ("FORWARD", "subject", "", "BAD_ID"),
                   ("WITHDRAW", "sender", "", "BAD_ID"),
                   ("HANDOVER_OFFER", "purpose", "", "BAD_VALUE"),
                   ("CONSENT_GRANT", "giver", "", "BAD_VALUE"),
                   ("WITHDRAW", "priority", "", "BAD_VALUE"),
                   ("CASE_CLOSED", "recipient", "", "BAD_ID"),
                   ("ERASURE", "recipient", "", "BAD_ID"),
                   ("HANDOVER_DECLINE", "code", "", "BAD_VALUE"),
                   ("WITHDRAW", "rule", "", "BAD_ID"), ("WITHDRAW", "schema", 0, "BAD_VALUE")]


@pytest.mark.parametrize("kind, field, value", [
    pytest.param(k, f, v, id="%s-%s" % (k, f)) for k, f, v in EMPTY])
def test_an_optional_field_that_is_empty_means_absent(soz, kind, field, value):
    """§6 rule 7: an optional field with an empty string, zero, false or an empty list
    means the same as the field left out — also one the type would not allow (OUTCOME's
    note)."""
    passes_codec(soz, minimal(kind, **{field: value}))


@pytest.mark.parametrize("kind, field, value, code", [
    pytest.param(k, f, v, c, id="%s-%s" % (k, f)) for k, f, v, c in EMPTY_FORMATTED])
def test_an_empty_field_with_a_format_is_malformed(soz, kind, field, value, code):
    """§6 rule 7: not so a field with a format (rule 6) or a fixed value: an empty id or
    org id is BAD_ID, an empty code, priority or giver BAD_VALUE, schema 0 BAD_VALUE."""
    expect(soz, minimal(kind, **{field: value}), code, "hdr." + field)


#   --- §8.3: the broker's checks after the codec, in order -----------------------------

def test_created_at_freshness(soz):
    """§8.3 step 2: a created_at older than the de-duplication window (7 days) or more
    than the clock skew (5 minutes) in the future is STALE; within them it passes; the
    broker sets it when absent (§6 rule 7: 0 is absent)."""
    expect(soz, minimal("WITHDRAW", created_at=now_ms() - 8 * DAY_MS), "STALE")
    expect(soz, minimal("WITHDRAW", created_at=now_ms() + 10 * 60 * 1000), "STALE")
    for created in (now_ms() - DAY_MS, now_ms() + 60 * 1000, 0):
        passes_codec(soz, minimal("WITHDRAW", created_at=created))


def test_sender_must_be_the_authenticated_organisation(soz):
    """§8.3 step 3, §13.1: hdr.sender, if present, SHALL be the authenticated
    organisation (SENDER_MISMATCH, 204)."""
    passes_codec(soz, minimal("WITHDRAW", sender=SOZ))
    expect(soz, minimal("WITHDRAW", sender=JC), "SENDER_MISMATCH")
    expect(soz, minimal("WITHDRAW", sender=AA), "SENDER_MISMATCH")


ORDER_CASES = [
    # (what, header changes, payload, expected, path)
    ("codec before freshness", {"priority": "urgent", "created_at": -8 * DAY_MS}, None,
     "BAD_VALUE", "hdr.priority"),
    ("codec before the payload size", {"priority": "urgent"}, b"\0" * ((1 << 20) + 1),
     "BAD_VALUE", "hdr.priority"),
    ("size (3) before freshness (4)", {"created_at": -8 * DAY_MS}, b"\0" * ((1 << 20) + 1),
     "TOO_LARGE", ANY),
    ("freshness (4) before sender (6)", {"created_at": -8 * DAY_MS, "sender": JC}, None,
     "STALE", ANY),
    ("sender (6) before payload (9)", {"sender": JC, "payload_len": 9}, b"x", "SENDER_MISMATCH",
     ANY),
    ("recipient (8) before payload (9)", {"payload_len": 9, "recipient": "xx.nowhere"}, b"x",
     "UNKNOWN_RECIPIENT", ANY),
    ("payload (9) before the life cycle (11)", {"payload_hash": b"\0" * 32}, b"x",
     "BAD_VALUE", "hdr.payload_hash"),
    ("recipient (8) before the life cycle (11)", {"recipient": "xx.nowhere"}, None,
     "UNKNOWN_RECIPIENT", ANY),
]


def _cases(rows):
    """pytest params from (id, values...) rows; a row that is a param already keeps its
    marks and takes its first value as its id."""
    out = []
    for row in rows:
        if hasattr(row, "marks"):
            out.append(pytest.param(*row.values[1:], id=row.values[0], marks=row.marks))
        else:
            out.append(pytest.param(*row[1:], id=row[0]))
    return out


@pytest.mark.parametrize("changes, payload, name, path", _cases(ORDER_CASES))
def test_the_order_of_the_checks_of_a_send(soz, changes, payload, name, path):
    """§8.3: the codec's refusals come first, then 3 the payload's size, 4 freshness,
    6 sender, 8 recipient, 9 payload_len/payload_hash, 11 life cycle; of two faults the
    earlier check's refusal comes (on an ACCEPT of an unknown referral, which step 11
    would refuse)."""
    hdr = minimal("ACCEPT")
    for key, value in changes.items():
        hdr[key] = now_ms() + value if key == "created_at" else value
    expect(soz, hdr, name, path, payload)


def test_an_outcomes_payload_is_refused_before_recipient_and_life_cycle(soz):
    """§8.3 step 5: an OUTCOME with a non-empty payload is BAD_VALUE at `payload`, before
    step 8 (an unregistered recipient) and step 11 (an unknown referral)."""
    expect(soz, minimal("OUTCOME", recipient="xx.nowhere"), "BAD_VALUE", "payload", b"x")
    expect(soz, minimal("OUTCOME"), "BAD_VALUE", "payload", b"notes")


BEFORE_DUP = {
    "codec": ({"priority": "urgent"}, "BAD_VALUE", "hdr.priority"),
    "freshness (4)": ({"created_at": -8 * DAY_MS}, "STALE", ANY),
    "sender (6)": ({"sender": JC}, "SENDER_MISMATCH", ANY),
}
AFTER_DUP = {
    "recipient (8)": {"recipient": "xx.nowhere"},
    "payload (9)": {"payload_len": 3},
}


def _used(soz):
    """A REFERRAL of soz, taken: (its header, its RECEIPT)."""
    hdr = minimal("REFERRAL")
    return hdr, received(send(soz, hdr))


def _with(hdr, changes):
    again = dict(hdr)
    for key, value in changes.items():
        again[key] = now_ms() + value if key == "created_at" else value
    return again


@pytest.mark.parametrize("step", list(BEFORE_DUP))
def test_refusals_before_de_duplication_win_over_dup(soz, step):
    """§8.3: the codec and steps 4 and 6 come before 7 (de-duplication): a used msg_id
    with a stale created_at or another sender is refused, not a dup; the REJECT leaves
    the msg_id as it was: the same msg_id is then a dup with the original seq."""
    hdr, first = _used(soz)
    changes, name, path = BEFORE_DUP[step]
    expect(soz, _with(hdr, changes), name, path)
    dup = send(soz, dict(hdr, note="another header"))
    assert (dup["cmd"], dup.get("dup"), dup["seq"]) == ("RECEIPT", True, first["seq"]), dup


@pytest.mark.parametrize("step", list(AFTER_DUP))
def test_a_retry_is_a_dup_whatever_the_later_steps_would_say(soz, step):
    """§8.3 step 7: a used msg_id is answered with RECEIPT dup and the original seq
    "whatever the new header says": the recipient (8) and payload (9) checks do not
    run for a retry."""
    hdr, first = _used(soz)
    dup = send(soz, _with(hdr, AFTER_DUP[step]))
    assert (dup["cmd"], dup.get("dup"), dup["seq"]) == ("RECEIPT", True, first["seq"]), dup


def test_life_cycle_before_policy(soz):
    """§8.3 step 11: the referral life cycle (4xx) before policy (5xx): a REFERRAL with a
    taken referral_id and a citation its rule does not accept is REFERRAL_EXISTS."""
    hdr = minimal("REFERRAL")
    received(send(soz, hdr))
    again = _referral_citing("SGB X §70(1)1")
    again["referral_id"] = hdr["referral_id"]
    expect(soz, again, "REFERRAL_EXISTS")
    expect(soz, _referral_citing("SGB X §70(1)1"), "NO_BASIS", "hdr.legal_basis")


@pytest.fixture(scope="module")
def dsb(broker):
    w = _open(broker, DSB)
    yield w
    w.close()


def test_an_auditors_send_decodes_first_then_is_forbidden(dsb):
    """§8.3: a SEND that does not decode gets the codec's code, an auditor's too; a
    valid one is FORBIDDEN (step 2: the role before the recipient's registration)."""
    expect(dsb, minimal("WITHDRAW", priority="urgent"), "BAD_VALUE", "hdr.priority")
    expect(dsb, minimal("WITHDRAW", type="DELIVERED", ref_msg_id="m-1"), "FORBIDDEN",
           "hdr.type")
    expect(dsb, minimal("WITHDRAW"), "FORBIDDEN")
    expect(dsb, minimal("WITHDRAW", recipient="xx.nowhere"), "FORBIDDEN")


@pytest.mark.parametrize("changes, payload", [
    pytest.param({"created_at": -8 * DAY_MS}, None, id="stale"),
    pytest.param({"sender": JC}, None, id="another sender"),
    pytest.param({}, b"\0" * ((1 << 20) + 1), id="too large"),
    pytest.param({"payload_len": 9}, b"x", id="wrong payload_len")])
def test_an_auditors_send_is_forbidden_before_the_later_steps(dsb, changes, payload):
    """§8.3: the role (step 2) comes before the payload's size (3), freshness (4), the
    sender (6) and payload_len (9): an auditor's SEND with such a fault is FORBIDDEN."""
    expect(dsb, _with(minimal("WITHDRAW"), changes), "FORBIDDEN", ANY, payload)


def test_an_outcomes_payload_comes_before_the_sender(soz):
    """§8.3: the OUTCOME payload rule (step 5) before the sender (step 6)."""
    expect(soz, minimal("OUTCOME", sender=JC), "BAD_VALUE", "payload", b"notes")


def test_quota_comes_with_the_recipient_before_payload_and_life_cycle(brokers):
    """§8.3 step 8: the recipient's mailbox quota is checked with its registration,
    before payload_len/payload_hash (9) and the life cycle (11): with the recipient's
    mailbox full, an ACCEPT of an unknown referral and a wrong payload_len are QUOTA."""
    b = brokers(broker={"mailbox_quota": 1})
    w = _open(b, SOZ)
    try:
        received(send(w, minimal("REFERRAL", recipient=AA)))
        expect(w, minimal("ACCEPT", recipient=AA), "QUOTA", ANY)
        expect(w, minimal("REFERRAL", recipient=AA, payload_len=4), "QUOTA", ANY, b"x")
    finally:
        w.close()


#   --- §13.2 payload sealing, §8.3 step 4 -------------------------------------------------

def test_payload_len_and_payload_hash_must_describe_frame_1(soz):
    """§8.3 step 4, §9: payload_len/payload_hash, if present, SHALL describe frame 1
    (BAD_VALUE); payload_hash is BLAKE2b-256 of the payload as sent, 32 bytes."""
    payload = b"\x01sealed-looking bytes\xff"
    right = {"payload_len": len(payload), "payload_hash": blake2b(payload)}
    received(send(soz, minimal("REFERRAL", **right), payload))
    expect(soz, minimal("REFERRAL", **dict(right, payload_len=len(payload) + 1)),
           "BAD_VALUE", "hdr.payload_len", payload)
    expect(soz, minimal("REFERRAL", **dict(right, payload_hash=blake2b(b"x"))),
           "BAD_VALUE", "hdr.payload_hash", payload)
    sha = nacl.hash.sha256(payload, encoder=RawEncoder)             # not BLAKE2b
    expect(soz, minimal("REFERRAL", **dict(right, payload_hash=sha)),
           "BAD_VALUE", "hdr.payload_hash", payload)
    expect(soz, minimal("REFERRAL", payload_len=5), "BAD_VALUE",
           "hdr.payload_len")                                       # no frame 1 at all
    for size in (31, 33):
        expect(soz, minimal("REFERRAL", payload_hash=b"\0" * size),
               "BAD_VALUE", "hdr.payload_hash")
    received(send(soz, minimal("REFERRAL", payload_hash=blake2b(b"")), b""))
    received(send(soz, minimal("REFERRAL", payload_len=0)))   # §6 rule 7


@pytest.fixture
def aa_inbox(connect):
    return Inbox(connect(AA, window=64))


def test_the_broker_fills_in_what_a_header_leaves_out(soz, aa_inbox):
    """§9, §8.3, §6 rules 7-8: without schema/created_at/sender/payload fields the
    broker sets them (schema 1, its clock, the sender, payload_hash of the empty
    payload and no payload_len); empty, zero and "normal" values are left out; a
    client's rule is replaced by the deciding rule; categories are stored in their
    order."""
    hdr = {"type": "REFERRAL", "msg_id": uid("m"), "recipient": AA,
           "referral_id": uid("r"), "case_id": uid("c"), "sender_case_ref": "",
           "subject": uid("p"), "purpose": "benefits", "legal_basis": dict(STATUTE),
           "categories": ["contact", "residence_status"], "priority": "normal", "note": "",
           "rule": "P99", "created_at": 0}
    before = now_ms()
    received(send(soz, hdr))
    after = now_ms()
    (got,) = aa_inbox.wait(msg_id=hdr["msg_id"])
    h = got.hdr
    assert h["schema"] == 1 and h["sender"] == SOZ
    assert before - 1000 <= h["created_at"] <= after + 1000, (before, h["created_at"])
    assert h["payload_hash"] == blake2b(b"") and "payload_len" not in h
    assert got.payload == b""
    for absent in ("sender_case_ref", "note", "priority"):
        assert absent not in h, h
    assert h["rule"] == "P1"
    assert h["categories"] == ["residence_status", "contact"]


def test_payload_bytes_pass_as_sent_and_the_hash_is_of_the_sealed_bytes(soz, aa_inbox):
    """§13.2: the broker stores and forwards the payload as sent (it cannot open it);
    payload_len and payload_hash are of the ciphertext, 48 bytes more than the
    plaintext; a payload that does not open is still handed over (flagged)."""
    plain = b"what aa needs to know"
    key = aa_inbox.client.seal_key(AA)
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(key)).encrypt(plain)
    raw = b"\x00not sealed at all\xff"
    m1 = minimal("REFERRAL", recipient=AA)
    m2 = minimal("REFERRAL", recipient=AA)
    received(send(soz, m1, sealed))
    received(send(soz, m2, raw))
    (one,) = aa_inbox.wait(msg_id=m1["msg_id"])
    (two,) = aa_inbox.wait(msg_id=m2["msg_id"])
    assert one.payload == plain and not one.sealed_error
    assert one.hdr["payload_len"] == len(plain) + 48 == len(sealed)
    assert one.hdr["payload_hash"] == blake2b(sealed)
    assert two.payload == raw and two.sealed_error
    assert (two.hdr["payload_len"], two.hdr["payload_hash"]) == (len(raw), blake2b(raw))


#   --- §13.4 the sender signature ------------------------------------------------------

def _jc_key(jc):
    return jc.client._signing_key


def signed_referral(jc, payload=b"", **extra):
    """A REFERRAL jc -> soz, signed per §13.4 (sender, created_at, payload_len and
    payload_hash set by the sender)."""
    hdr = kim_headers.referral(uid("R-SIG"), uid("C-SIG"), recipient=SOZ, msg_id=uid("m"),
                               schema=1, sender=JC, created_at=now_ms(),
                               payload_len=len(payload), payload_hash=blake2b(payload))
    hdr.update(extra)
    return canonical_header(sign_header(hdr, _jc_key(jc)))


def sig_over(key, fields, payload_hash, packed=None):
    """§13.4's signature over `fields` as given (no canonicalisation): Ed25519 over
    BLAKE2b-256(encoding) || payload_hash."""
    packed = packed if packed is not None else msgpack.packb(fields, use_bin_type=True)
    return key.sign(blake2b(packed) + payload_hash).signature


def test_a_signed_header_is_taken(jc):
    """§13.4: a signature over the canonical header (without sig and rule) || payload_hash
    verifies; the same header unsigned is BAD_SIGNATURE at hdr.sig and leaves the msg_id
    unused (§8.3)."""
    payload = b"sealed bytes"
    hdr = signed_referral(jc, payload)
    unsigned = {k: v for k, v in hdr.items() if k != "sig"}
    expect(jc, unsigned, "BAD_SIGNATURE", "hdr.sig", payload)
    received(send(jc, hdr, payload))


def _other_payload(hdr):
    other = b"another payload"
    hdr.update(payload_len=len(other), payload_hash=blake2b(other))
    return other


TAMPER = {
    "msg_id": lambda h: h.update(msg_id=uid("m")),
    "created_at": lambda h: h.update(created_at=h["created_at"] + 1),
    "sender": lambda h: h.update(sender=SOZ),
    "recipient": lambda h: h.update(recipient=AA),
    "referral_id": lambda h: h.update(referral_id=uid("r")),
    "case_id": lambda h: h.update(case_id=uid("c")),
    "subject": lambda h: h.update(subject="p-other"),
    "purpose": lambda h: h.update(purpose="employment"),
    "legal_basis": lambda h: h.update(legal_basis={"kind": "statute",
                                                   "citation": "SGB X § 69 Abs. 1 Nr. 1"}),
    "categories": lambda h: h.update(categories=["contact"]),
    "deadline": lambda h: h.update(deadline=now_ms() + 2 * DAY_MS),
    "priority": lambda h: h.update(priority="high"),
    "note": lambda h: h.update(note="added"),
    "sender_case_ref": lambda h: h.update(sender_case_ref="JC-1"),
    "payload": _other_payload,
    "sig": lambda h: h.update(sig=bytes([h["sig"][0] ^ 1]) + h["sig"][1:]),
}


@pytest.mark.parametrize("field", list(TAMPER))
def test_each_covered_field_changed_after_signing_is_bad_signature(jc, field):
    """§13.4: the signature covers the whole canonical header but sig and rule, and
    payload_hash: any covered field changed (also one added) is BAD_SIGNATURE at
    hdr.sig — but the sender, which §8.3 checks before the signature (step 6 before
    10): another sender is SENDER_MISMATCH."""
    payload = b"the sealed payload"
    hdr = signed_referral(jc, payload)
    other = TAMPER[field](hdr)
    if field == "sender":
        expect(jc, hdr, "SENDER_MISMATCH", ANY, payload)
    else:
        expect(jc, hdr, "BAD_SIGNATURE", "hdr.sig", other if field == "payload" else payload)


def test_rule_x_keys_and_the_wire_encoding_are_not_covered(jc):
    """§13.4: rule is not signed (a client's is discarded, §9); x- keys are not
    stored (§6 rule 2); the broker recomputes the hash from the header as it will
    log it — canonical (§6 rule 8), schema always written (§9) — so key order,
    integer widths and an omitted schema do not matter."""
    received(send(jc, dict(signed_referral(jc), rule="P99")))
    received(send(jc, dict(signed_referral(jc), **{"x-trace": "t-1"})))
    hdr = signed_referral(jc)
    del hdr["schema"]
    received(send(jc, hdr))
    hdr = signed_referral(jc)
    pairs = list(reversed([(k, v) for k, v in hdr.items() if k != "created_at"]))
    pairs.append(("created_at", Raw(b"\xcf" + hdr["created_at"].to_bytes(8, "big"))))
    received(send(jc, mapping(*pairs, head=b"\xde" + len(pairs).to_bytes(2, "big")),
                  msg_id=hdr["msg_id"]))


def test_signatures_over_anything_but_the_specified_bytes_fail(jc):
    """§13.4: signed are the 64 bytes BLAKE2b-256(canonical header without sig and
    rule) || payload_hash: a signature over a header with rule, without the
    payload_hash appended, over a non-canonical encoding or without schema (which the
    canonical encoding always writes, §9) does not verify."""
    key = _jc_key(jc)
    payload = b"p"

    def variant(sign):
        hdr = signed_referral(jc, payload)
        del hdr["sig"]
        hdr["sig"] = sign(hdr)
        return hdr
    with_rule = variant(lambda h: sig_over(key, canonical_header(dict(h, rule="P1")),
                                           h["payload_hash"]))
    with_rule["rule"] = "P1"
    expect(jc, with_rule, "BAD_SIGNATURE", "hdr.sig", payload)
    expect(jc, variant(lambda h: key.sign(blake2b(msgpack.packb(h))).signature[:64]),
           "BAD_SIGNATURE", "hdr.sig", payload)
    expect(jc, variant(lambda h: sig_over(key, dict(reversed(list(h.items()))),
                                          h["payload_hash"])),
           "BAD_SIGNATURE", "hdr.sig", payload)
    expect(jc, variant(lambda h: sig_over(key, {k: v for k, v in h.items() if k != "schema"},
                                          h["payload_hash"])),
           "BAD_SIGNATURE", "hdr.sig", payload)
    # the control: the same construction over the specified bytes verifies
    received(send(jc, variant(lambda h: sig_over(key, h, h["payload_hash"])), payload))


def test_a_signature_by_another_key_or_of_zeros_is_bad_signature(jc):
    """§13.4: the signature SHALL verify against the org's registered sign_key."""
    payload = b"p"
    hdr = signed_referral(jc, payload)
    stranger = nacl.signing.SigningKey.generate()
    fields = {k: v for k, v in hdr.items() if k != "sig"}
    expect(jc, dict(hdr, sig=sig_over(stranger, fields, hdr["payload_hash"])),
           "BAD_SIGNATURE", "hdr.sig", payload)
    expect(jc, dict(hdr, sig=bytes(64)), "BAD_SIGNATURE", "hdr.sig", payload)


@pytest.mark.parametrize("org", [JC, SOZ])
def test_a_sig_that_is_not_64_bytes_is_bad_value(jc, soz, org):
    """§9: sig is a bin of 64 bytes (BAD_VALUE) — the codec's refusal, before the
    signature is checked (§8.3), for an org with or without a sign_key."""
    w = jc if org == JC else soz
    for size in (63, 65):
        hdr = minimal("WITHDRAW", sig=b"\1" * size)
        expect(w, hdr, "BAD_VALUE", "hdr.sig")


def test_an_org_without_sign_key_sending_a_sig_is_bad_signature(soz, jc):
    """§13.4: the sender has no sign_key: a SEND carrying sig is BAD_SIGNATURE, even
    one that verifies under some key."""
    payload = b"x"
    hdr = minimal("REFERRAL", sender=SOZ, created_at=now_ms(),
                  payload_len=1, payload_hash=blake2b(payload))
    hdr = sign_header(canonical_header(hdr), nacl.signing.SigningKey.generate())
    expect(soz, hdr, "BAD_SIGNATURE", "hdr.sig", payload)
    hdr = sign_header(canonical_header(dict(hdr)), _jc_key(jc))
    expect(soz, hdr, "BAD_SIGNATURE", "hdr.sig", payload)


def _unsigned(**extra):
    hdr = minimal("REFERRAL", recipient=SOZ)
    hdr.update(extra)
    return hdr


def test_the_codec_comes_before_the_signature(jc):
    """§8.3: the codec's refusals come first, also for an org that signs: an unsigned
    SEND of jc with a bad priority or a sig of the wrong length gets the codec's code."""
    expect(jc, _unsigned(priority="urgent"), "BAD_VALUE", "hdr.priority")
    expect(jc, _unsigned(sig=b"\0" * 10), "BAD_VALUE", "hdr.sig")


UNSIGNED_FIRST = {
    "stale": ({"created_at": -8 * DAY_MS}, "STALE", ANY),
    "another sender": ({"sender": SOZ}, "SENDER_MISMATCH", ANY),
    "a wrong payload_len": ({"payload_len": 7}, "BAD_VALUE", "hdr.payload_len"),
    "an unknown recipient": ({"recipient": "xx.nowhere"}, "UNKNOWN_RECIPIENT", ANY),
}


@pytest.mark.parametrize("fault", list(UNSIGNED_FIRST))
def test_the_steps_before_the_signature_come_first(jc, fault):
    """§13.4, §8.3: the signature is checked at step 10, once the header to be logged
    is known: an unsigned SEND of jc (which has a sign_key) that also has `fault` of an
    earlier step gets that step's refusal."""
    changes, name, path = UNSIGNED_FIRST[fault]
    hdr = _unsigned(**{k: now_ms() + v if k == "created_at" else v for k, v in changes.items()})
    expect(jc, hdr, name, path)


def test_an_unsigned_retry_of_a_signed_message_is_a_dup(jc):
    """§8.3 step 7 before step 10: a used msg_id is a dup whatever the new header says,
    its signature (now missing) too."""
    used = signed_referral(jc)
    first = received(send(jc, used))
    dup = send(jc, {k: v for k, v in used.items() if k != "sig"})
    assert (dup["cmd"], dup.get("dup"), dup["seq"]) == ("RECEIPT", True, first["seq"]), dup


def test_a_valid_signature_then_meets_the_other_checks(jc):
    """§13.4 then §8.3: a signature that verifies lets the SEND on to freshness (STALE),
    the sender (SENDER_MISMATCH), the payload (BAD_VALUE) and the recipient."""
    payload = b"pp"
    expect(jc, signed_referral(jc, payload, created_at=now_ms() - 8 * DAY_MS), "STALE",
           ANY, payload)
    expect(jc, signed_referral(jc, payload, sender=SOZ), "SENDER_MISMATCH", ANY, payload)
    wrong = signed_referral(jc, payload, payload_hash=blake2b(b"other"))
    expect(jc, wrong, "BAD_VALUE", "hdr.payload_hash", payload)
    expect(jc, signed_referral(jc, payload, recipient="xx.nowhere"), "UNKNOWN_RECIPIENT",
           ANY, payload)


#   --- §9.2: the examples -------------------------------------------------------------------

def _examples():
    """§9.2 "Example: SEND|DELIVER X" hex blocks and their "decodes as" text."""
    text = section("### 9.2 Message types", "### 9.3")
    found = re.findall(r"Example: (\w+) (\w+)\n```hex\n(.*?)```\s*decodes as:\s*```text\n"
                       r"(.*?)```", text, re.S)
    return {(cmd, kind): (bytes.fromhex(" ".join(hexdump.split())), decoded)
            for cmd, kind, hexdump, decoded in found}


EXAMPLES = _examples()


def _from_text(value):
    """The spec's JSON notation: "bin:<hex>" is a MessagePack bin (§2)."""
    if isinstance(value, dict):
        return {k: _from_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_text(v) for v in value]
    if isinstance(value, str) and value.startswith("bin:"):
        return bytes.fromhex(value[4:])
    return value


@pytest.mark.parametrize("cmd, kind", sorted(EXAMPLES),
                         ids=["%s-%s" % k for k in sorted(EXAMPLES)])
def test_each_example_decodes_as_its_text_and_is_canonical(cmd, kind):
    """§9.2 examples: the bytes decode to the text given with them, are one map with
    nothing after it (§6 rule 1) and are the canonical encoding (§6 rule 8)."""
    frame, decoded = EXAMPLES[(cmd, kind)]
    value = msgpack.unpackb(frame, raw=False)
    assert value == _from_text(json.loads(decoded))
    assert msgpack.packb(value, use_bin_type=True) == frame
    hdr = value["hdr"]
    assert hdr["type"] == kind and list(hdr) == [k for k in HEADER_ORDER if k in hdr]
    assert set(hdr) - set(COMMON) <= set(RULES[kind][1]) | set(RULES[kind][2]) | (
        set(RULES[kind][3]) if cmd == "DELIVER" else set())
    assert set(RULES[kind][1]) <= set(hdr)
    if cmd == "DELIVER":
        assert hdr["payload_hash"] == blake2b(b"")      # broker-made, empty payload


def test_every_agency_type_has_a_send_example():
    """§9.2: each of the 18 agency types has a SEND example; DELIVERED, REMINDER,
    EXPIRED a DELIVER example (UNDELIVERABLE and HANDED_OVER point to §16)."""
    assert {k for c, k in EXAMPLES if c == "SEND"} == set(AGENCY)
    assert {k for c, k in EXAMPLES if c == "DELIVER"} == {"DELIVERED", "REMINDER", "EXPIRED"}


EX_ORGS = {"kim.rheine": "agency", "jc.rheine": "agency", "aa.rheine": "agency",
           "mbe.rheine.caritas": "agency", "ikt.rheine": "agency",
           "kim.coesfeld": "agency", "ja.rheine": "agency"}


@pytest.fixture(scope="module")
def example_broker():
    """A broker with the example's organisations (jc.rheine signs, as on the shared
    one) and the shipped policy: kim.* may transfer on consent (P8, P10)."""
    b = new_broker(EX_ORGS).start()
    clients = {}

    def client(org):
        if org not in clients:
            clients[org] = kim.Client(b.endpoint, b.broker_cert, b.cert_secret(org), window=0,
                                      timeout=WAIT)
            clients[org].connect()
        return clients[org]
    yield client
    for c in clients.values():
        c.close()
    b.finish()


class World:
    """One run of the examples, their ids made unique by a suffix, their times moved
    to now (the examples' 2024 times are older than the de-duplication window, §8.3
    step 2, and their deadlines and validity have passed)."""

    ID_KEYS = ("msg_id", "referral_id", "ref_msg_id", "case_id", "subject", "consent")

    def __init__(self, client):
        self.client = client
        self.tag = uid("x")[2:]

    def unique(self, hdr):
        hdr = dict(hdr)
        for key in self.ID_KEYS:
            if key in hdr:
                hdr[key] = "%s-%s" % (hdr[key], self.tag)
        if "legal_basis" in hdr and "consent_id" in hdr["legal_basis"]:
            hdr["legal_basis"] = dict(hdr["legal_basis"], consent_id="%s-%s" % (
                hdr["legal_basis"]["consent_id"], self.tag))
        if "referrals" in hdr:
            hdr["referrals"] = ["%s-%s" % (r, self.tag) for r in hdr["referrals"]]
        if "created_at" in hdr:
            hdr["created_at"] = now_ms()
        if "deadline" in hdr:
            hdr["deadline"] = now_ms() + 14 * DAY_MS
        if "valid_until" in hdr:
            hdr["valid_until"] = now_ms() + 365 * DAY_MS
        return hdr

    def example(self, kind):
        return self.unique(msgpack.unpackb(EXAMPLES[("SEND", kind)][0], raw=False)["hdr"])

    def send(self, org, hdr, payload=b"", seal=True):
        hdr = hdr if hdr.get("msg_id", "").endswith(self.tag) else self.unique(hdr)
        return received(self.client(org).send(hdr, payload, seal=seal))

    #   the preconditions, each in the examples' own names
    def grant(self):
        self.send("kim.rheine", self.example("CONSENT_GRANT"))

    def referral(self):
        self.grant()
        self.send("kim.rheine", self.example("REFERRAL"))

    def grant_for(self, consent, org, subject="p-3f9a1c"):
        self.send("kim.rheine", {"type": "CONSENT_GRANT", "msg_id": "m-g-" + consent,
                                 "case_id": "c-0042", "subject": subject, "consent": consent,
                                 "recipients": [org], "purposes": ["employment"],
                                 "valid_until": 1})

    def referral_to(self, org, rid, msg_id, consent):
        self.grant_for(consent, org)
        self.send("kim.rheine", {"type": "REFERRAL", "msg_id": msg_id, "recipient": org,
                                 "referral_id": rid, "case_id": "c-0042",
                                 "subject": "p-3f9a1c", "purpose": "employment",
                                 "legal_basis": {"kind": "consent", "consent_id": consent}})

    def offer(self):
        self.referral()
        self.referral_to("ja.rheine", "r-0003", "m-0003", "g-0042-9")
        self.grant_for("g-0042-3", "kim.coesfeld", subject="p-77d2e0")
        self.send("kim.rheine", self.example("HANDOVER_OFFER"))


def _info_response(world):
    """INFO_RESPONSE's example names a 412-byte payload: 364 bytes sealed to jc.rheine
    (§13.2: 48 more); its payload_hash is that of the sealed bytes."""
    hdr = world.example("INFO_RESPONSE")
    key = world.client("kim.rheine").seal_key("jc.rheine")
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(key)).encrypt(b"i" * 364)
    assert len(sealed) == hdr["payload_len"] == 412
    hdr["payload_hash"] = blake2b(sealed)
    return world.send("kim.rheine", hdr, sealed, seal=False)


#   example -> (what sets its preconditions up, who sends it); the sender is the
#   organisation the example's own ids and recipients name
SCENES = {
    "CONSENT_GRANT": (lambda w: None, "kim.rheine"),
    "REFERRAL": (lambda w: w.grant(), "kim.rheine"),
    "ACCEPT": (lambda w: w.referral(), "jc.rheine"),
    "STATUS": (lambda w: (w.referral(), w.send("jc.rheine", w.example("ACCEPT"))),
               "jc.rheine"),
    "INFO_REQUEST": (lambda w: w.referral(), "jc.rheine"),
    "INFO_RESPONSE": (lambda w: (w.referral(), w.send("jc.rheine", w.example("INFO_REQUEST"))),
                      None),
    "WITHDRAW": (lambda w: w.referral(), "kim.rheine"),
    "OUTCOME": (lambda w: (w.referral_to("ja.rheine", "r-0003", "m-0003", "g-0042-9"),
                           w.send("ja.rheine", {"type": "ACCEPT", "msg_id": "ja-m-0030",
                                                "recipient": "kim.rheine",
                                                "referral_id": "r-0003"})), "ja.rheine"),
    "DECLINE": (lambda w: w.referral_to("mbe.rheine.caritas", "r-0002", "m-0002", "g-0042-8"),
                "mbe.rheine.caritas"),
    "NOT_COMPETENT": (lambda w: w.referral_to("mbe.rheine.caritas", "r-0002", "m-0002",
                                              "g-0042-8"), "mbe.rheine.caritas"),
    "HANDOVER_OFFER": (lambda w: (w.referral(), w.referral_to("ja.rheine", "r-0003", "m-0003",
                                                              "g-0042-9"),
                                  w.grant_for("g-0042-3", "kim.coesfeld", "p-77d2e0")),
                       "kim.rheine"),
    "HANDOVER_ACCEPT": (lambda w: w.offer(), "kim.coesfeld"),
    "HANDOVER_DECLINE": (lambda w: w.offer(), "kim.coesfeld"),
    "CASE_CLOSED": (lambda w: w.grant(), "kim.rheine"),
    "CONSENT_REVOKE": (lambda w: w.grant(), "kim.rheine"),
    "ERASURE": (lambda w: w.referral(), "kim.rheine"),
    "ACCESS_REPORT": (lambda w: w.grant(), "kim.rheine"),
}


@pytest.mark.parametrize("kind", sorted(SCENES))
def test_each_send_example_is_taken(example_broker, kind):
    """§9.2: each SEND example, ids made unique and times moved to now, is taken
    (RECEIPT) once what it answers exists. jc.rheine signs (§13.4), so the client
    adds sender, payload fields and sig to jc's examples."""
    world = World(example_broker)
    setup, sender = SCENES[kind]
    setup(world)
    if kind == "INFO_RESPONSE":
        _info_response(world)
    else:
        world.send(sender, world.example(kind))


def test_an_offer_under_a_consent_names_its_purpose(example_broker):
    """§9.3: a consent is given for purposes, so a transfer under one that names no
    purpose is CONSENT_SCOPE, a HANDOVER_OFFER too; the text says what is missing."""
    world = World(example_broker)
    SCENES["HANDOVER_OFFER"][0](world)
    hdr = world.example("HANDOVER_OFFER")
    del hdr["purpose"]
    with pytest.raises(kim.Rejected) as info:
        example_broker("kim.rheine").send(hdr)
    assert (info.value.code, info.value.reason) == (504, "CONSENT_SCOPE"), info.value
    text = info.value.text
    assert "purpose" in text and "g-0042-3" in text, text
    assert "purpose  " not in text, text        # names no empty purpose


def test_the_forward_example_decodes_but_cites_a_consent_its_sender_cannot(example_broker):
    """§9.2 FORWARD example: mbe.rheine.caritas forwards on consent g-0042-2. §9.3
    binds a consent to the case's lead ("its sender is the case's lead now"), which
    mbe is not; no rule of the shipped policy selects mbe -> ikt either. So the
    example cannot be taken as written: it is refused with a 5xx (policy/consent)."""
    world = World(example_broker)
    world.referral_to("mbe.rheine.caritas", "r-0002", "m-0002", "g-0042-8")
    world.grant_for("g-0042-2", "ikt.rheine")
    with pytest.raises(kim.Rejected) as info:
        example_broker("mbe.rheine.caritas").send(world.example("FORWARD"))
    assert 500 <= info.value.code < 600, info.value
