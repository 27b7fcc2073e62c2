"""What the Python spec tests share: ids of their own, a referral's state as
its party sees it, and an inbox that keeps what one session received."""
import itertools
import os
import time

WAIT = 5.0              # s an answer, a delivery or a state change may take at most
QUIET = 0.5             # s without a frame that count as "nothing more came"

_ids = itertools.count(1)


def uid(tag):
    """An id no other test (nor an earlier run on a kept store) uses."""
    return "T-%s-%x-%x-%d" % (tag, os.getpid(), int(time.time() * 1000) & 0xffffff,
                              next(_ids))


def state_of(client, rid):
    rows = client.referral_query(referral_id=rid)
    assert len(rows) <= 1, rows
    return rows[0]["state"] if rows else None


def wait_state(client, rid, state, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        now = state_of(client, rid)
        if now == state or time.monotonic() > deadline:
            return now
        time.sleep(0.05)                # a poll: the timer or the commit is due


class Inbox:
    """What one session receives, kept; acknowledged at once unless ack=False."""

    def __init__(self, client, ack=True):
        self.client = client
        self.ack = ack
        self.got = []

    def _read(self, seconds):
        d = self.client.recv(seconds)
        if d is not None:
            self.got.append(d)
            if self.ack:
                self.client.ack(d.seq)
        return d

    def where(self, **match):
        return [d for d in self.got if all(d.hdr.get(k) == v for k, v in match.items())]

    def wait(self, count=1, timeout=WAIT, **match):
        """Reads until `count` deliveries match (header fields equal); returns them."""
        deadline = time.monotonic() + timeout
        while len(self.where(**match)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._read(min(left, 0.2))
        return self.where(**match)

    def settle(self, seconds=QUIET):
        """Reads until nothing comes for `seconds` (at most WAIT in all)."""
        deadline = time.monotonic() + WAIT
        while self._read(seconds) is not None and time.monotonic() < deadline:
            pass
