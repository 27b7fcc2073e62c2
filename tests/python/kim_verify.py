#!/usr/bin/python3
"""kim_verify.py — an independent verifier of a kim broker's audit log.

Written from proto/PROTOCOL.md §8.11 ("Record bodies and the chain") alone,
with python3-lmdb and python3-nacl: it shares no code with the broker or the
`kim` tool, so a log that passes here is verifiable by anyone holding the
data folder and the broker's public signing key.

Usage: kim_verify.py DATA_DIR [PUBLIC_KEY_FILE]
    DATA_DIR         the broker's data folder (holds store/ and audit.checkpoint)
    PUBLIC_KEY_FILE  the broker's public signing key, 64 hex characters
                     (default DATA_DIR/keys/broker.sign.pub)

Exit status: 0 the log verifies, 1 it does not (the first bad seq is named),
2 usage or unreadable input.
"""
import os
import struct
import sys

import lmdb
import nacl.exceptions
import nacl.hash
import nacl.signing
from nacl.encoding import RawEncoder

FORMAT = 1
KIND_CHECKPOINT = 2
FIXED = 1 + 1 + 8 + 32           # format, kind, time, hash
CHECKPOINT_SIZE = 161
DOMAIN = b"kim-checkpoint-2"
DOMAIN_LEGACY = b"kim-checkpoint-1"


class VerifyError(Exception):
    """The log does not verify; `seq` is the first bad sequence number."""

    def __init__(self, seq, why):
        super().__init__("seq %d: %s" % (seq, why))
        self.seq = seq
        self.why = why


def blake2b_256(data):
    return nacl.hash.blake2b(data, digest_size=32, encoder=RawEncoder)


def chain_hash(prev, kind, seq, time_ms, body):
    return blake2b_256(prev + struct.pack(">BBQQ", FORMAT, kind, seq, time_ms) + body)


def key_id(public_key):
    return blake2b_256(public_key)[:8].hex()


def parse_checkpoint(body):
    """The 161-byte checkpoint body: (seq, head, time, key_id, sig), or None."""
    if len(body) != CHECKPOINT_SIZE:
        return None
    layout = (b"\x85" b"\xa3seq\xcf", 8, b"\xa4head\xc4\x20", 32, b"\xa4time\xcf", 8,
              b"\xa6key_id\xb0", 16, b"\xa3sig\xc4\x40", 64)
    values, at = [], 0
    for i in range(0, len(layout), 2):
        marker, width = layout[i], layout[i + 1]
        if body[at:at + len(marker)] != marker:
            return None
        at += len(marker)
        values.append(body[at:at + width])
        at += width
    seq = struct.unpack(">Q", values[0])[0]
    time_ms = struct.unpack(">Q", values[2])[0]
    try:
        kid = values[3].decode("ascii")
    except UnicodeDecodeError:
        return None
    return seq, values[1], time_ms, kid, values[4]


def signed_message(seq, head, time_ms):
    return DOMAIN + struct.pack(">Q", seq) + head + struct.pack(">Q", time_ms)


def signed_message_legacy(seq, head, time_ms):
    return DOMAIN_LEGACY + struct.pack(">Q", seq) + head[:24] + struct.pack(">Q", time_ms)


def checkpoint_layout(verify_key, seq, head, time_ms, sig):
    """2 if `sig` verifies over the current message, 1 over the legacy one, else 0."""
    for layout, message in ((2, signed_message(seq, head, time_ms)),
                            (1, signed_message_legacy(seq, head, time_ms))):
        try:
            verify_key.verify(message, sig)
            return layout
        except nacl.exceptions.BadSignatureError:
            pass
    return 0


class Verifier:
    """Feed records in the order read; raises VerifyError at the first bad one."""

    def __init__(self, public_key):
        self.verify_key = nacl.signing.VerifyKey(public_key)
        self.key_id = key_id(public_key)
        self.prev = bytes(32)
        self.last = 0
        self.records = 0
        self.checkpoints = 0
        self.legacy = 0
        self.sealed = 0
        self.current_seen = False
        self.hashes = {}            # seq -> hash, for the checkpoint file

    def _checkpoint(self, seq, fields, where):
        cp_seq, head, time_ms, kid, sig = fields
        if kid != self.key_id:
            raise VerifyError(seq, "%s is signed by key %s, not the broker's %s"
                              % (where, kid, self.key_id))
        layout = checkpoint_layout(self.verify_key, cp_seq, head, time_ms, sig)
        if layout == 0:
            raise VerifyError(seq, "%s has a bad signature" % where)
        if layout == 1 and self.current_seen:
            raise VerifyError(seq, "%s is in the legacy layout after the current one" % where)
        return layout

    def step(self, seq, value):
        if seq != self.last + 1:
            raise VerifyError(self.last + 1, "record missing or out of order (%d follows %d)"
                              % (seq, self.last))
        if len(value) < FIXED or value[0] != FORMAT:
            raise VerifyError(seq, "malformed record (%d bytes)" % len(value))
        kind = value[1]
        time_ms = struct.unpack(">Q", value[2:10])[0]
        stored = value[10:42]
        body = value[42:]
        if chain_hash(self.prev, kind, seq, time_ms, body) != stored:
            raise VerifyError(seq, "hash mismatch: the record was altered, or records "
                              "before it were removed or reordered")
        if kind == KIND_CHECKPOINT:
            fields = parse_checkpoint(body)
            if fields is None:
                raise VerifyError(seq, "malformed checkpoint body")
            if fields[0] != seq - 1 or fields[1] != self.prev:
                raise VerifyError(seq, "checkpoint does not cover the record before it")
            layout = self._checkpoint(seq, fields, "checkpoint %d" % seq)
            self.current_seen = self.current_seen or layout == 2
            self.legacy += layout == 1
            self.checkpoints += 1
            self.sealed = fields[0]
        self.hashes[seq] = stored
        self.prev = stored
        self.last = seq
        self.records += 1

    def end(self, checkpoint_body):
        """Checks the checkpoint the broker keeps beside the store."""
        fields = parse_checkpoint(checkpoint_body)
        if fields is None:
            raise VerifyError(0, "the checkpoint file is malformed")
        self._checkpoint(fields[0], fields, "the checkpoint file (seq %d)" % fields[0])
        if fields[0] > self.last:
            raise VerifyError(self.last + 1, "the log ends at %d but the checkpoint file covers "
                              "%d: the tail was cut off" % (self.last, fields[0]))
        if self.hashes.get(fields[0]) != fields[1]:
            raise VerifyError(fields[0], "the record differs from the checkpoint file")
        self.sealed = max(self.sealed, fields[0])


def load_public_key(path):
    with open(path, "r", encoding="ascii") as f:
        text = f.readline().strip()
    if len(text) != 64:
        raise ValueError("%s: expected 64 hex characters" % path)
    return bytes.fromhex(text)


def check_store_file(path):
    """Checks data.mdb's structure before py-lmdb reads it (LMDB trusts its
    pages, PROTOCOL.md §8.11): both meta pages, then every page of the main
    and `log` tables of each meta page, each page once per tree. LMDB 0.9's
    on-disk format, 64-bit. Raises ValueError naming the damage."""
    with open(path, "rb") as f:
        data = f.read()
    u16 = lambda at: struct.unpack_from("<H", data, at)[0]
    u32 = lambda at: struct.unpack_from("<I", data, at)[0]
    u64 = lambda at: struct.unpack_from("<Q", data, at)[0]
    if len(data) < 160:
        raise ValueError("data.mdb is too short to be a store")
    psize = u32(40)
    if psize < 512 or psize > 65536 or psize & (psize - 1) or len(data) < 2 * psize:
        raise ValueError("data.mdb has no valid meta pages")
    pages = len(data) // psize
    metas = []
    for m in (0, 1):
        at = m * psize
        if u32(at + 16) != 0xBEEFC0DE or u32(at + 20) != 1 or u32(at + 40) != psize \
                or u64(at + 136) >= pages:
            raise ValueError("meta page %d does not describe data.mdb" % m)
        metas.append(at)
    for meta in metas:          # LMDB may read either; each is checked on its own
        _check_tree(data, psize, meta, u16, u32, u64)


def _check_tree(data, psize, meta, u16, u32, u64):
    """Walks the main and `log` tables of one meta page."""
    last = u64(meta + 136)
    seen = set()

    def bad(pgno, what):
        raise ValueError("the store is damaged: %s (page %d)" % (what, pgno))

    def claim(pgno, count=1):
        if pgno < 2 or count < 1 or pgno + count - 1 > last:
            bad(pgno, "a page number outside the file")
        for p in range(pgno, pgno + count):
            if p in seen:
                bad(pgno, "a page reached twice")
            seen.add(p)

    def walk(pgno, depth, main, found):
        if depth > 32:
            bad(pgno, "a tree deeper than any store")
        claim(pgno)
        at = pgno * psize
        flags, lower, upper = u16(at + 10) & 0x7f, u16(at + 12), u16(at + 14)
        if u64(at) != pgno or flags not in (1, 2):
            bad(pgno, "a bad page header")
        if lower < 16 or lower % 2 or lower > upper or upper > psize:
            bad(pgno, "a page with bad bounds")
        for i in range((lower - 16) // 2):
            off = u16(at + 16 + 2 * i)
            if off < upper or off % 2 or off + 8 > psize:
                bad(pgno, "a node offset outside its page")
            node = at + off
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", data, node)
            if off + 8 + ksize > psize:
                bad(pgno, "a key past the end of its page")
            if flags == 1:
                walk(lo | hi << 16 | nflags << 32, depth + 1, main, found)
                continue
            dsize = lo | hi << 16
            if main:
                if nflags != 2 or dsize != 48 or off + 8 + ksize + dsize > psize:
                    bad(pgno, "a table record of the wrong shape")
                if data[node + 8:node + 8 + ksize] == b"log":
                    found.append(node + 8 + ksize)
            elif ksize != 8:
                bad(pgno, "a log key that is not 8 bytes")
            elif nflags == 0:
                if off + 8 + ksize + dsize > psize:
                    bad(pgno, "a record past the end of its page")
            elif nflags == 1:
                if off + 16 + ksize > psize:
                    bad(pgno, "an overflow pointer past the end of its page")
                first = u64(node + 8 + ksize)
                if first < 2 or first > last:
                    bad(pgno, "an overflow page outside the file")
                over = first * psize
                if u64(over) != first or u16(over + 10) & 0x7f != 4 \
                        or u32(over + 12) * psize < dsize + 16:
                    bad(first, "a bad overflow page")
                claim(first, u32(over + 12))
            else:
                bad(pgno, "a log record with table or duplicate flags")

    found = []
    if u16(meta + 92) != 0:
        bad(0, "a main table with flags")
    if u64(meta + 128) != 0xFFFFFFFFFFFFFFFF:
        walk(u64(meta + 128), 0, True, found)
    for record in found:
        if u16(record + 4) != 0:
            bad(0, "a log table with flags")
        if u64(record + 40) != 0xFFFFFFFFFFFFFFFF:
            walk(u64(record + 40), 0, False, [])


JOURNAL_SLOT = 4096 + 2 * 65536        # the second checkpoint slot's offset


def journal_unclean(store_dir):
    """True when store/journal's latest checkpoint is not clean: data.mdb may then be torn
    until a broker replays the journal (PROTOCOL.md, the log; proto/kim_journal.h)."""
    try:
        with open(os.path.join(store_dir, "journal"), "rb") as f:
            raw = f.read(2 * JOURNAL_SLOT)
    except FileNotFoundError:
        return False
    latest = None
    for at in (0, JOURNAL_SLOT):
        slot = raw[at:at + JOURNAL_SLOT]
        if len(slot) < 56 or slot[:8] != b"KIMJHDR1":
            continue
        generation, flags, page = struct.unpack("<QII", slot[8:24])
        size = 56 + 2 * page
        if not 512 <= page <= 65536 or len(slot) < size:
            continue
        zeroed = slot[:40] + bytes(16) + slot[56:size]
        check = nacl.hash.generichash(zeroed, digest_size=16, encoder=RawEncoder)
        if check != slot[40:56]:
            continue
        if latest is None or generation > latest[0]:
            latest = (generation, flags)
    return latest is not None and not latest[1] & 1


def read_records(data_dir):
    """Yields (seq, value) of the log table in key order."""
    if journal_unclean(os.path.join(data_dir, "store")):
        raise ValueError("the store's journal was not replayed after the broker stopped: "
                         "run kim-broker --recover on the folder first")
    check_store_file(os.path.join(data_dir, "store", "data.mdb"))
    env = lmdb.open(os.path.join(data_dir, "store"), readonly=True, lock=False,
                    max_dbs=32, subdir=True, create=False)
    try:
        # a store copied short has pages beyond its end: refuse it up front
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = os.path.getsize(os.path.join(data_dir, "store", "data.mdb"))
        if size < used:
            raise ValueError("the store is truncated: data.mdb has %d bytes, its last page "
                             "ends at byte %d" % (size, used))
        db = env.open_db(b"log", create=False)
        with env.begin(db=db) as txn:
            for key, value in txn.cursor():
                if len(key) != 8:
                    raise VerifyError(0, "a log key is not 8 bytes")
                yield struct.unpack(">Q", key)[0], bytes(value)
    finally:
        env.close()


def verify(data_dir, public_key):
    """Verifies the whole log; returns the Verifier or raises VerifyError."""
    v = Verifier(public_key)
    for seq, value in read_records(data_dir):
        v.step(seq, value)
    path = os.path.join(data_dir, "audit.checkpoint")
    if os.path.exists(path):
        with open(path, "r", encoding="ascii") as f:
            text = f.readline().strip()
        try:
            body = bytes.fromhex(text)
        except ValueError:
            raise VerifyError(0, "the checkpoint file is not hex")
        v.end(body)
    return v


def main(argv):
    if len(argv) not in (2, 3) or argv[1] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2], file=sys.stderr)
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    data_dir = argv[1]
    key_path = argv[2] if len(argv) == 3 else os.path.join(data_dir, "keys", "broker.sign.pub")
    try:
        public_key = load_public_key(key_path)
        v = verify(data_dir, public_key)
    except VerifyError as e:
        print("FAILED: %s" % e)
        return 1
    except (OSError, ValueError, lmdb.Error) as e:
        print("cannot read the log: %s" % e, file=sys.stderr)
        return 2
    print("OK: %d records, %d checkpoints (%d legacy), sealed up to seq %d"
          % (v.records, v.checkpoints, v.legacy, v.sealed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
