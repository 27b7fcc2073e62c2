#!/usr/bin/python3
"""What an idle link costs a broker: memory per connection, CPU of heartbeats.

Starts one kim-broker and opens N idle CurveZMQ connections to it (a full
mesh of 54 districts gives each broker 53), each with a session (HELLO,
WELCOME) as a linked peer broker would hold, then:
  - memory: the broker's RSS before and after, per connection;
  - heartbeats: the broker's CPU time over an idle interval with the
    connections sending PING every heartbeat_ms (as the protocol asks) and
    ZMTP heartbeats underneath, against the same interval without them;
  - the cost of one heartbeat: PINGs at a high rate, CPU per PING/PONG.
The connections are organisations of role agency: this measures the
transport (a CurveZMQ connection and a session), on both of its ends. What
a whole link costs (two such connections, the link's own socket, queue and
the peer's directory) fedsim.py measures, by the RSS of linked brokers.

    tests/federation/sim/linkcost.py [--links 53] [--idle 30] [--broker PATH]

Use a Release build of kim-broker for figures (the default looks for
build/release first).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import msgpack
import zmq

import fedlib


def hello(ctx, broker, org, socks):
    sock = ctx.socket(zmq.DEALER)
    socks.append(sock)
    public, secret = fedlib.load_cert(broker.cert_secret(org), secret=True)
    sock.curve_publickey = public.encode()
    sock.curve_secretkey = secret.encode()
    sock.curve_serverkey = broker.public_key().encode()
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
    sock.connect(broker.tcp)
    sock.send(msgpack.packb({"cmd": "HELLO", "versions": [1], "agent": "linkcost",
                             "window": 0}))
    if not sock.poll(10000):
        raise RuntimeError("%s: no WELCOME" % org)
    welcome = msgpack.unpackb(sock.recv(), raw=False)
    if welcome.get("cmd") != "WELCOME":
        raise RuntimeError("%s: %r" % (org, welcome))
    return welcome


def ping_all(socks, poller, timeout_ms=5000):
    ping = msgpack.packb({"cmd": "PING"})
    for sock in socks:
        sock.send(ping)
    pending = len(socks)
    deadline = time.monotonic() + timeout_ms / 1000
    while pending and time.monotonic() < deadline:
        for sock, _ in poller.poll(100):
            while True:
                try:
                    sock.recv(zmq.NOBLOCK)
                    pending -= 1
                except zmq.Again:
                    break
    return pending == 0


def idle(broker, socks, poller, seconds, heartbeat_ms):
    """CPU seconds the broker used over `seconds`, the connections pinging
    every heartbeat_ms."""
    pid = broker.pid()
    start_cpu, start = fedlib.cpu_seconds(pid), time.monotonic()
    next_ping = start
    while time.monotonic() - start < seconds:
        if socks and time.monotonic() >= next_ping:
            ping_all(socks, poller)
            next_ping += heartbeat_ms / 1000
        time.sleep(0.05)
    return fedlib.cpu_seconds(pid) - start_cpu, time.monotonic() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", type=int, default=53, help="connections (default 53)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of each idle measurement (default 30)")
    parser.add_argument("--heartbeat", type=int, default=10000,
                        help="broker/heartbeat_ms (default 10000, the broker's default)")
    parser.add_argument("--pings", type=int, default=20000,
                        help="PINGs for the cost of one heartbeat (default 20000)")
    parser.add_argument("--broker", help="kim-broker binary")
    parser.add_argument("--keep", action="store_true", help="keep the folder")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)     # progress shows in a log file too
    binary = fedlib.find_binary("kim-broker", args.broker)
    root = tempfile.mkdtemp(prefix="kim-linkcost-")
    offices = {"peer.d%02d" % i: "agency" for i in range(args.links)}
    broker = fedlib.Broker(binary, root, "broker.test", offices,
                           extra="    heartbeat_ms = %d" % args.heartbeat)
    broker.write_config(peers=False)
    ctx = zmq.Context()
    socks = []
    try:
        broker.start()
        broker.wait_ready()
        time.sleep(2.0)                 # let the start settle before measuring
        pid = broker.pid()
        print("kim-broker %s" % binary)
        rss_empty = fedlib.rss_kib(pid)
        cpu_empty, wall = idle(broker, [], None, args.idle, args.heartbeat)
        poller = zmq.Poller()
        own_before = fedlib.rss_kib(os.getpid())
        for org in offices:
            welcome = hello(ctx, broker, org, socks)
            poller.register(socks[-1], zmq.POLLIN)
        ping_all(socks, poller)
        time.sleep(1.0)
        rss_linked = fedlib.rss_kib(pid)
        own_after = fedlib.rss_kib(os.getpid())
        cpu_linked, wall_linked = idle(broker, socks, poller, args.idle, args.heartbeat)
        rss_after = fedlib.rss_kib(pid)
        #   The cost of one heartbeat, from many
        start_cpu, start = fedlib.cpu_seconds(pid), time.monotonic()
        rounds = max(1, args.pings // len(socks))
        for _ in range(rounds):
            ping_all(socks, poller)
        ping_cpu = fedlib.cpu_seconds(pid) - start_cpu
        ping_wall = time.monotonic() - start
        pings = rounds * len(socks)
        per_link = (rss_linked - rss_empty) / len(socks)
        print("links                 %d (CurveZMQ, HELLO done, heartbeat_ms %d)"
              % (len(socks), welcome["heartbeat_ms"]))
        print("RSS without links     %d KiB" % rss_empty)
        print("RSS with links        %d KiB (after %.0f s idle: %d KiB)"
              % (rss_linked, wall_linked, rss_after))
        print("RSS per link          %.1f KiB" % per_link)
        print("RSS per link, dialling side %.1f KiB (this process: libzmq sockets, CURVE, "
              "Python objects)" % ((own_after - own_before) / len(socks)))
        print("CPU idle, no links    %.3f s in %.0f s (%.3f%% of a core)"
              % (cpu_empty, wall, 100 * cpu_empty / wall))
        print("CPU idle, links       %.3f s in %.0f s (%.3f%% of a core)"
              % (cpu_linked, wall_linked, 100 * cpu_linked / wall_linked))
        print("CPU per PING/PONG     %.1f us (%d PINGs in %.1f s)"
              % (1e6 * ping_cpu / pings, pings, ping_wall))
        print("heartbeat CPU, %d links at one PING per %d ms: %.4f%% of a core"
              % (len(socks), args.heartbeat,
                 100 * (ping_cpu / pings) * len(socks) / (args.heartbeat / 1000)))
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
        broker.stop()
        if args.keep:
            print("folder kept: %s" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
