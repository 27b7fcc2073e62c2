"""Reading several sessions frame by frame, for tests that must see every
copy of a delivery and every REJECT, past the client's own de-duplication.

A session here is any object with `sock` (its ZeroMQ socket), `client` (its
kim.Client) and `take(cmd, payload)`; one with `keepalive` (s) and
`last_sent` and `send(cmd)` PINGs when it has been silent that long."""
import time

import zmq


def pump(sessions, seconds, until=None):
    """Reads the sessions' sockets for up to `seconds` or until `until()` holds
    (returns whether it did)."""
    poller = zmq.Poller()
    by_sock = {}
    for s in sessions:
        poller.register(s.sock, zmq.POLLIN)
        by_sock[s.sock] = s
    deadline = time.monotonic() + max(seconds, 0)
    while True:
        if until is not None and until():
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        for s in sessions:
            keepalive = getattr(s, "keepalive", None)
            if keepalive and now - s.last_sent >= keepalive:
                s.send({"cmd": "PING"})
        for sock, _ in poller.poll(int(min(deadline - now, 0.05) * 1000) + 1):
            s = by_sock[sock]
            cmd, payload = s.client._recv_cmd(0)
            if cmd is not None:
                s.take(cmd, payload)
