"""The independent verifier (kim_verify.py) against a log a real kim-broker
wrote: it accepts the log as `kim audit verify` does, both refuse the same
tampering (a flipped byte, a dropped record), both accept checkpoints in the
legacy layout of older brokers, and neither crashes on a truncated or
scrambled data.mdb."""
import os
import shutil
import struct
import subprocess
import time

import lmdb
import nacl.encoding
import nacl.hash
import nacl.signing
import pytest

import kim
import kim_verify
from kim_test_paths import KIM_BROKER, KIM_TOOL, POLICY
from kim.testing import TestBroker

#   Offsets in the 161-byte checkpoint body (PROTOCOL.md §8.11).
SEQ, HEAD, TIME, SIG = slice(6, 14), slice(21, 53), slice(59, 67), slice(97, 161)
STATUTE = {"kind": "statute", "citation": "SGB X §69(1)1"}


def _referral(client, n):
    return client.send({"type": "REFERRAL", "recipient": "soz.rheine", "referral_id": "R-%d" % n,
                        "case_id": "C-%d" % (n % 3), "subject": "p-%d" % n,
                        "purpose": "benefits", "legal_basis": STATUTE}, b"details %d" % n)


@pytest.fixture(scope="module")
def real_log(tmp_path_factory):
    """A data folder written by a real broker run, with several checkpoints."""
    broker = TestBroker(KIM_BROKER, POLICY, {"jc.rheine": "agency", "soz.rheine": "agency"},
                        audit={"checkpoint_records": 4, "checkpoint_seconds": 1})
    broker.start()
    try:
        with kim.Client(broker.endpoint, broker.broker_cert,
                        broker.cert_secret("jc.rheine")) as jc:
            for round_ in range(3):
                for n in range(4):
                    _referral(jc, round_ * 10 + n)
                # a checkpoint seals each round: poll the checkpoint file
                head = jc.status()["log_head"]
                path = os.path.join(broker.data, "audit.checkpoint")
                deadline = time.monotonic() + 60
                while True:
                    if os.path.exists(path):
                        with open(path) as f:
                            fields = kim_verify.parse_checkpoint(bytes.fromhex(f.read().strip()))
                        if fields and fields[0] >= head:
                            break
                    assert time.monotonic() < deadline, "no checkpoint: " + broker.log_tail()
                    time.sleep(0.05)
        assert broker.stop() == 0, broker.log_tail()
        saved = tmp_path_factory.mktemp("log") / "data"
        shutil.copytree(broker.data, saved)
        return str(saved)
    finally:
        broker.cleanup()


def _copy(real_log, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(real_log, data)
    return data


def _kim_audit(*args):
    run = subprocess.run([KIM_TOOL, "audit"] + list(args), capture_output=True, timeout=120)
    output = (run.stdout + run.stderr).decode("utf-8", "replace")
    assert run.returncode >= 0, "kim audit died of signal %d: %s" % (-run.returncode, output)
    assert "Sanitizer" not in output and "runtime error" not in output, output
    return run.returncode, output


def _python_verify(data):
    run = subprocess.run(["/usr/bin/python3", kim_verify.__file__, data], capture_output=True,
                         text=True, timeout=120)
    return run.returncode, run.stdout + run.stderr


def _public_key(data):
    return kim_verify.load_public_key(os.path.join(data, "keys", "broker.sign.pub"))


def _rewrite(data, change):
    """Applies change(txn, db) to the log table of a stopped broker's store."""
    env = lmdb.open(os.path.join(data, "store"), max_dbs=32, subdir=True, create=False)
    try:
        db = env.open_db(b"log", create=False)
        with env.begin(write=True, db=db) as txn:
            change(txn, db)
    finally:
        env.close()


def test_real_log_verifies(real_log):
    v = kim_verify.verify(real_log, _public_key(real_log))
    assert v.checkpoints >= 3 and v.legacy == 0 and v.current_seen
    assert v.sealed >= v.last - 1 and v.records == v.last > 12
    rc, out = _python_verify(real_log)
    assert rc == 0 and out.startswith("OK: %d records" % v.records), out
    rc, out = _kim_audit("verify", "--data", real_log)
    assert rc == 0, out


def test_checkpoint_signature_is_the_spec_bytes(real_log):
    """Each checkpoint's sig verifies over exactly the 64 bytes PROTOCOL.md
    §8.11 lists, computed here by hand."""
    pk = nacl.signing.VerifyKey(_public_key(real_log))
    found = 0
    for seq, value in kim_verify.read_records(real_log):
        if value[1] != 2:
            continue
        body = value[42:]
        cp_seq = struct.unpack(">Q", body[SEQ])[0]
        head = body[HEAD]
        cp_time = struct.unpack(">Q", body[TIME])[0]
        sig = body[SIG]
        message = b"kim-checkpoint-2" + cp_seq.to_bytes(8, "big") + head + \
            cp_time.to_bytes(8, "big")
        assert len(message) == 64 and cp_seq == seq - 1
        pk.verify(message, sig)
        found += 1
    assert found >= 3


@pytest.mark.parametrize("where", ["body", "time", "kind"])
def test_flipped_byte_fails(real_log, tmp_path, where):
    data = _copy(real_log, tmp_path)
    target = 5
    offset = {"body": -1, "time": 9, "kind": 1}[where]

    def flip(txn, db):
        key = struct.pack(">Q", target)
        value = bytearray(txn.get(key))
        value[offset] ^= 0x01
        txn.put(key, bytes(value))
    _rewrite(data, flip)
    with pytest.raises(kim_verify.VerifyError) as e:
        kim_verify.verify(data, _public_key(data))
    assert e.value.seq == target
    rc, out = _python_verify(data)
    assert rc == 1 and "seq %d" % target in out, out
    rc, out = _kim_audit("verify", "--data", data)
    assert rc == 1 and str(target) in out, out
    rc, out = _kim_audit("replay", "--data", data)        # no check, but no crash
    assert rc == 0 and '"seq":%d,' % target in out, out


def test_dropped_record_fails(real_log, tmp_path):
    data = _copy(real_log, tmp_path)
    _rewrite(data, lambda txn, db: txn.delete(struct.pack(">Q", 7)))
    with pytest.raises(kim_verify.VerifyError) as e:
        kim_verify.verify(data, _public_key(data))
    assert e.value.seq == 7 and "missing" in e.value.why
    rc, out = _kim_audit("verify", "--data", data)
    assert rc == 1 and "7" in out, out


def test_cut_tail_fails(real_log, tmp_path):
    data = _copy(real_log, tmp_path)
    with open(os.path.join(data, "audit.checkpoint")) as f:
        covered = struct.unpack(">Q", bytes.fromhex(f.read().strip())[SEQ])[0]
    last = max(seq for seq, _ in kim_verify.read_records(data))

    def cut(txn, db):       # the records from the one the checkpoint file covers
        for seq in range(covered, last + 1):
            txn.delete(struct.pack(">Q", seq))
    _rewrite(data, cut)
    with pytest.raises(kim_verify.VerifyError) as e:
        kim_verify.verify(data, _public_key(data))
    assert "cut off" in e.value.why or "differs" in e.value.why
    rc, out = _kim_audit("verify", "--data", data)
    assert rc == 1, out


def _journal(store, clean):
    """Writes store/journal with one checkpoint slot (generation 7), as kim_journal.h lays
    it out: whole, and marked clean or not."""
    page = 4096
    head = b"KIMJHDR1" + struct.pack("<QIIQQ", 7, 1 if clean else 0, page, 1, 2)
    body = head + bytes(16) + bytes(2 * page)
    check = nacl.hash.generichash(body, digest_size=16, encoder=nacl.encoding.RawEncoder)
    with open(os.path.join(store, "journal"), "wb") as f:
        f.write(head + check + bytes(2 * page))
        f.write(bytes(2 * kim_verify.JOURNAL_SLOT - len(body)))


def test_unreplayed_journal_is_refused(real_log, tmp_path):
    # PROTOCOL.md: a store whose journal's latest checkpoint is not clean (and that no
    # broker holds) is refused rather than read; a clean one is read as it is
    data = _copy(real_log, tmp_path)
    store = os.path.join(data, "store")
    _journal(store, clean=False)
    with pytest.raises(ValueError) as e:
        kim_verify.verify(data, _public_key(data))
    assert "--recover" in str(e.value)
    rc, out = _kim_audit("verify", "--data", data)
    assert rc != 0 and "--recover" in out, out
    _journal(store, clean=True)
    assert kim_verify.verify(data, _public_key(data)).last > 0
    rc, out = _kim_audit("verify", "--data", data)
    assert rc == 0 and out.startswith("OK: records 1.."), out


def test_wrong_key_fails(real_log):
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    with pytest.raises(kim_verify.VerifyError) as e:
        kim_verify.verify(real_log, other)
    assert "key" in e.value.why


def _legacy_message(seq, head, time_ms):
    return b"kim-checkpoint-1" + struct.pack(">Q", seq) + head[:24] + struct.pack(">Q", time_ms)


def _current_message(seq, head, time_ms):
    return b"kim-checkpoint-2" + struct.pack(">Q", seq) + head + struct.pack(">Q", time_ms)


def _resign(data, pick_layout):
    """Rewrites the log as a broker would have signed it: each checkpoint i is
    signed in the layout pick_layout(i) returns (1 legacy, 2 current), with the
    chain hashes recomputed and the checkpoint file signed to match."""
    with open(os.path.join(data, "keys", "broker.sign_secret")) as f:
        key = nacl.signing.SigningKey(bytes.fromhex(f.read().strip())[:32])
    layouts = []

    def sign(seq, head, time_ms, layout):
        message = (_legacy_message if layout == 1 else _current_message)(seq, head, time_ms)
        return key.sign(message).signature

    def change(txn, db):
        prev, hashes, count = bytes(32), {}, 0
        for k, value in list(txn.cursor()):
            seq = struct.unpack(">Q", k)[0]
            kind, time_ms, body = value[1], struct.unpack(">Q", value[2:10])[0], value[42:]
            if kind == 2:
                layout = pick_layout(count)
                layouts.append(layout)
                count += 1
                cp_time = struct.unpack(">Q", body[TIME])[0]
                body = (body[:HEAD.start] + prev + body[HEAD.stop:SIG.start]
                        + sign(seq - 1, prev, cp_time, layout))
            digest = kim_verify.chain_hash(prev, kind, seq, time_ms, body)
            txn.put(k, value[:10] + digest + body)
            hashes[seq] = prev = digest
        path = os.path.join(data, "audit.checkpoint")
        with open(path) as f:
            body = bytes.fromhex(f.read().strip())
        cp_seq = struct.unpack(">Q", body[SEQ])[0]
        cp_time = struct.unpack(">Q", body[TIME])[0]
        head = hashes[cp_seq]
        body = (body[:HEAD.start] + head + body[HEAD.stop:SIG.start]
                + sign(cp_seq, head, cp_time, layouts[-1]))
        with open(path, "w") as f:
            f.write(body.hex() + "\n")
    _rewrite(data, change)
    return layouts


def test_legacy_checkpoints_verify(real_log, tmp_path):
    """An older broker's log (every checkpoint in the legacy layout) verifies
    with both verifiers."""
    data = _copy(real_log, tmp_path)
    layouts = _resign(data, lambda i: 1)
    v = kim_verify.verify(data, _public_key(data))
    assert v.legacy == len(layouts) >= 3 and not v.current_seen
    rc, out = _kim_audit("verify", "--data", data)
    assert rc == 0, out


def test_upgraded_log_verifies(real_log, tmp_path):
    """Legacy checkpoints, then current ones (a broker upgraded mid-log)."""
    data = _copy(real_log, tmp_path)
    _resign(data, lambda i: 1 if i == 0 else 2)
    v = kim_verify.verify(data, _public_key(data))
    assert v.legacy == 1 and v.current_seen
    rc, out = _kim_audit("verify", "--data", data)
    assert rc == 0, out


def test_legacy_after_current_fails(real_log, tmp_path):
    """A legacy checkpoint after a current one is refused by both."""
    data = _copy(real_log, tmp_path)
    _resign(data, lambda i: 2 if i == 0 else 1)
    with pytest.raises(kim_verify.VerifyError) as e:
        kim_verify.verify(data, _public_key(data))
    assert "legacy" in e.value.why
    rc, out = _kim_audit("verify", "--data", data)
    assert rc == 1 and "legacy" in out, out


@pytest.mark.parametrize("damage", ["truncate-half", "truncate-page", "empty", "meta",
                                    "scramble", "node-flags"])
def test_damaged_store_gives_clear_error(real_log, tmp_path, damage):
    """`kim audit verify` and `replay` on a broken data.mdb: an error message
    and exit status 1 or 2, never a crash."""
    data = _copy(real_log, tmp_path)
    env = lmdb.open(os.path.join(data, "store"), readonly=True, lock=False, max_dbs=32)
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    env.close()
    path = os.path.join(data, "store", "data.mdb")
    with open(path, "r+b") as f:
        if damage == "truncate-half":
            f.truncate(used // 2)
        elif damage == "truncate-page":
            f.truncate(used - 100)
        elif damage == "empty":
            f.truncate(0)
        elif damage == "meta":
            # both meta pages: magic, version and roots scrambled
            for page in (0, 4096):
                f.seek(page + 16)
                f.write(bytes(range(7, 7 + 120)))
        elif damage == "scramble":
            # every page past the meta pages, headers included
            blob = bytearray(f.read())
            for i in range(8192, len(blob), 97):
                blob[i] ^= 0x5a
            f.seek(0)
            f.write(blob)
        else:
            # every node of every leaf claims duplicates (LMDB then writes
            # through a cursor it does not have)
            blob = bytearray(f.read())
            for page in range(2, used // 4096):
                at = page * 4096
                if blob[at + 10] & 0x7f != 0x02:
                    continue
                lower = int.from_bytes(blob[at + 12:at + 14], "little")
                for i in range((lower - 16) // 2):
                    node = at + int.from_bytes(blob[at + 16 + 2 * i:at + 18 + 2 * i], "little")
                    blob[node + 4] |= 0x04
            f.seek(0)
            f.write(blob)
    for command in ("verify", "replay"):
        rc, out = _kim_audit(command, "--data", data)
        assert rc in (1, 2), "%s: exit %d: %s" % (command, rc, out)
        assert out.strip(), "%s printed nothing" % command
    rc, out = _python_verify(data)
    assert rc in (1, 2) and "Traceback" not in out, out


def _spec_vector():
    """The checkpoint test vector of PROTOCOL.md §8.11, as {label: text}."""
    import re
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "proto", "PROTOCOL.md"),
              encoding="utf-8") as f:
        text = f.read()
    start = text.index("Example (a test vector")
    block = text[text.index("```text", start) + 7:text.index("```", text.index("```text",
                                                                               start) + 7)]
    values, label = {}, None
    for line in block.splitlines():
        if not line.strip():
            continue
        match = re.match(r"\s*(\S.*?)\s{2,}(\S+)$", line)
        if match and not re.fullmatch(r"[0-9a-f]+", match.group(1)):
            label = match.group(1)
            values[label] = match.group(2)
        else:
            values[label] += line.strip()
    return values


def test_spec_vector():
    """The spec's example checkpoint, computed from its own description."""
    v = _spec_vector()
    key = nacl.signing.SigningKey(bytes.fromhex(v["key seed"]))
    public = bytes(key.verify_key)
    assert public.hex() == v["public key"] and kim_verify.key_id(public) == v["key_id"]
    seq, head, time_ms = int(v["seq"]), bytes.fromhex(v["head"]), int(v["time"])
    signed = kim_verify.signed_message(seq, head, time_ms)
    assert signed.hex() == v["signed"] and len(signed) == 64
    assert key.sign(signed).signature.hex() == v["sig"]         # Ed25519 is deterministic
    body = bytes.fromhex(v["body"])
    assert kim_verify.parse_checkpoint(body) == (seq, head, time_ms, v["key_id"],
                                                  bytes.fromhex(v["sig"]))
    legacy = kim_verify.signed_message_legacy(seq, head, time_ms)
    assert legacy.hex() == v["legacy signed"] and len(legacy) == 56
    assert kim_verify.checkpoint_layout(key.verify_key, seq, head, time_ms,
                                        bytes.fromhex(v["legacy sig"])) == 1
    assert kim_verify.checkpoint_layout(key.verify_key, seq, head, time_ms,
                                        bytes.fromhex(v["sig"])) == 2
