#!/usr/bin/python3
"""The federation of NRW's districts on one machine, brokers killed and restarted.

Makes one broker per district (folder, config, office keys; kim-broker makes
its own keys on first start), writes each broker's config with a `peers`
section that lists every other broker (name, endpoint, CURVE public key,
signing key), starts them all on loopback, and then, for the time given:
  - offices send referrals and case handovers, most to another district;
    recipients ack what they get and answer (ACCEPT, HANDOVER_ACCEPT);
  - a killer thread SIGKILLs a random broker now and then and restarts it
    (with --power-cut, each kill is a power cut: what the broker wrote to
    its store and no flush covered is taken back, tests/fault/powercut);
    senders resend what was not receipted, with the same msg_id.
At the end every broker runs until the mailboxes are drained, and the run
checks that every receipted message reached its recipient exactly once
after de-duplication (by sender and msg_id), that nothing arrived that was
never sent, and that every log verifies (`kim audit verify --data`). It
prints the figures: messages, kills, duration, RSS per broker.

A broker that does not know the `peers` section (a build without
federation) refuses such a config; with --federation auto (the default)
the run then goes on without peers and with traffic inside each district
only, and says so.

    tests/federation/sim/fedsim.py --districts 54 --minutes 10     # the long run
    tests/federation/sim/fedsim.py --districts 4 --seconds 30      # the short one

Exit 0 when nothing was lost and every log verifies, 1 otherwise.
"""
import argparse
import collections
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import zmq

import fedlib
import kim

#   NRW's districts and district-free cities, as names of brokers and
#   places of offices (lowercase ASCII, as organisation ids need).
DISTRICTS = [
    "aachen", "bielefeld", "bochum", "bonn", "borken", "bottrop", "coesfeld", "dortmund",
    "dueren", "duesseldorf", "duisburg", "ennepe-ruhr", "essen", "euskirchen", "gelsenkirchen",
    "guetersloh", "hagen", "hamm", "heinsberg", "herford", "herne", "hochsauerland", "hoexter",
    "kleve", "koeln", "krefeld", "leverkusen", "lippe", "maerkischer-kreis", "mettmann",
    "minden-luebbecke", "moenchengladbach", "muelheim", "muenster", "oberbergischer-kreis",
    "oberhausen", "olpe", "paderborn", "recklinghausen", "remscheid", "rhein-erft",
    "rhein-kreis-neuss", "rheinisch-bergischer-kreis", "rhein-sieg", "siegen-wittgenstein",
    "soest", "solingen", "steinfurt", "unna", "viersen", "warendorf", "wesel", "wuppertal",
    "staedteregion-aachen",
]
#   Office types in the order a district gets them: the case management
#   first (it refers and hands over), then the offices it refers to.
OFFICE_TYPES = ["kim", "jc", "ja", "mbe", "aba", "soz", "ikt", "sch"]
#   Refusals that may pass later with the same msg_id (PROTOCOL.md section 10),
#   and those of a session that a restarted broker no longer knows
RETRY_LATER = {200, 206, 207, 209, 300, 301, 304, 305}
PING_EVERY = 4.0                        # seconds; the brokers' heartbeat is 10 s


class Office:
    """One office's session at its home broker, reconnected after a kill."""

    def __init__(self, org, broker):
        self.org = org
        self.broker = broker
        self.client = None
        self.generation = 0             # broker.starts when the session was opened
        self.pending = collections.OrderedDict()    # msg_id -> (hdr, payload): not receipted
        self.cases = []                 # cases this office leads (may hand over)
        self.last_ping = 0.0

    def up(self):
        return self.broker.running() and not self.broker.busy.locked()

    def session(self):
        """The client, reconnected when the broker restarted; None when down."""
        if not self.up():
            self.close()
            return None
        if self.client is not None and self.generation != self.broker.starts:
            self.close()
        if self.client is None:
            client = kim.Client(self.broker.ipc, self.broker.broker_cert,
                                self.broker.cert_secret(self.org), window=64,
                                agent="fedsim", timeout=3.0)
            try:
                client.connect()
            except (kim.KimError, zmq.ZMQError, kim.Rejected):
                client.close()
                return None
            self.client, self.generation = client, self.broker.starts
            self.last_ping = time.monotonic()
        elif time.monotonic() - self.last_ping > PING_EVERY:
            #   A session that says nothing for 3 heartbeats expires (PROTOCOL.md
            #   section 12): an office that only receives must still PING
            try:
                self.client.ping(timeout=3.0)
            except (kim.KimError, zmq.ZMQError):
                self.close()
                return None
            self.last_ping = time.monotonic()
        return self.client

    def close(self):
        if self.client is not None:
            try:
                self.client.close()
            except zmq.ZMQError:
                pass
            self.client = None


class Sim:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.binary = fedlib.find_binary("kim-broker", args.broker)
        self.kim_bin = fedlib.find_binary("kim", args.kim)
        self.root = args.folder or tempfile.mkdtemp(prefix="kim-fedsim-")
        self.brokers = []
        self.offices = {}
        self.federation = False
        self.sent = {}                  # (sender, msg_id) -> (recipient, type, cross)
        self.receipted = set()          # (sender, msg_id)
        self.rejected = collections.Counter()   # reason code names of refusals
        self.delivered = collections.Counter()  # (recipient, sender, msg_id) -> deliveries
        self.phantoms = 0
        self.undeliverable = collections.Counter()  # (sender, msg_id) refused far away
        self.kills = 0
        self.pages_back = 0             # pages the power cuts set back
        self.rss = collections.defaultdict(list)    # broker name -> KiB samples
        self.errors = []
        self.counter = 0
        self.stop_killing = threading.Event()

    #   --- setting up -----------------------------------------------------------

    def make(self):
        names = [DISTRICTS[i] if i < len(DISTRICTS) else "district-%02d" % i
                 for i in range(self.args.districts)]
        extra = "    heartbeat_ms = 10000\naudit\n    checkpoint_records = 1000\n" \
                "    checkpoint_seconds = 5"
        for place in names:
            offices = {"%s.%s" % (OFFICE_TYPES[i % len(OFFICE_TYPES)], place): "agency"
                       for i in range(self.args.offices)}
            broker = fedlib.Broker(self.binary, self.root, "broker.%s" % place, offices,
                                   extra=extra)
            broker.busy = threading.Lock()
            broker.place = place
            if self.args.power_cut:
                broker.powercut = (os.environ["KIM_POWERCUT"], os.environ["KIM_POWERCUT_BIN"])
            self.brokers.append(broker)
            for org in offices:
                self.offices[org] = Office(org, broker)
        #   First start: each broker makes its keys; then every config names
        #   every other broker as a peer
        self._start_all(peers=False)
        for broker in self.brokers:
            broker.stop()
            broker.peers = [other for other in self.brokers if other is not broker]
        mode = self.args.federation
        if mode != "off":
            refused = self._start_all(peers=True, tolerate=True)
            if refused and mode == "on":
                raise SystemExit("kim-broker refuses the peers section: %s" % refused)
            self.federation = not refused
            if refused:
                print("federation: this kim-broker refuses the peers section (%s);\n"
                      "            running without peers, traffic inside each district only"
                      % refused)
        if not self.federation:
            self._start_all(peers=False)
        else:
            self._wait_directories()

    def _wait_directories(self, timeout=120.0):
        """Waits until every broker's directory knows an office of every other
        district: the links are up and each peer's signed directory is in. (A
        DIRECTORY_REPLY lists at most 128 organisations, so it asks by org.)"""
        deadline = time.monotonic() + timeout
        for broker in self.brokers:
            office = self.offices[next(iter(broker.offices))]
            waiting = ["kim.%s" % other.place for other in self.brokers if other is not broker]
            while waiting:
                client = office.session()
                try:
                    if client and any(entry.get("id") == waiting[0]
                                      for entry in client.directory(waiting[0])):
                        waiting.pop(0)
                        continue
                except (kim.KimError, zmq.ZMQError):
                    office.close()
                if time.monotonic() > deadline:
                    raise SystemExit("%s does not know %s after %.0f s: the links did not "
                                     "come up (%s)" % (broker.name, waiting[0], timeout,
                                                       broker.complaint()))
                time.sleep(0.1)

    def _start_all(self, peers, tolerate=False):
        """Starts every broker with or without peers. With `tolerate`, returns the
        first broker's complaint about the config instead of raising."""
        for broker in self.brokers:
            broker.write_config(peers=peers)
            broker.start()
        for broker in self.brokers:
            try:
                broker.wait_ready()
            except RuntimeError as e:
                if not tolerate:
                    raise
                for other in self.brokers:
                    other.stop()
                return str(e) or "refused"
        return None

    #   --- traffic --------------------------------------------------------------

    def _msg_id(self, org):
        self.counter += 1
        return "sim-%s-%d" % (org.split(".")[1][:20], self.counter)

    def _queue(self, sender, hdr, payload, cross):
        hdr["msg_id"] = self._msg_id(sender.org)
        sender.pending[hdr["msg_id"]] = (hdr, payload)
        self.sent[(sender.org, hdr["msg_id"])] = (hdr["recipient"], hdr["type"], cross)

    def _new_message(self):
        """A referral from a case management to an office, or the handover of a
        case it leads to another district's case management."""
        district = self.rng.choice(self.brokers)
        sender = self.offices["kim.%s" % district.place]
        cross = self.federation and len(self.brokers) > 1 and self.rng.random() < 0.8
        target = self.rng.choice([b for b in self.brokers if b is not district]) \
            if cross else district
        if cross and sender.cases and self.rng.random() < 0.15:
            case = sender.cases.pop(0)
            hdr = {"type": "HANDOVER_OFFER", "recipient": "kim.%s" % target.place,
                   "case_id": case, "purpose": "integration",
                   "legal_basis": {"kind": "statute", "citation": "TIntG NRW §9"}}
            self._queue(sender, hdr, os.urandom(200), cross)
            return
        offices = [org for org in target.offices if not org.startswith("kim.")] or \
            list(target.offices)
        recipient = self.rng.choice(offices)
        self.counter += 1
        referral = "r-%s-%d" % (district.place[:20], self.counter)
        case = "c-%s-%d" % (district.place[:20], self.counter)
        hdr = {"type": "REFERRAL", "recipient": recipient, "referral_id": referral,
               "case_id": case, "subject": "p-%x" % self.rng.getrandbits(32),
               "purpose": "integration",
               "legal_basis": {"kind": "statute", "citation": "SGB X §69(1)1"}}
        sender.cases.append(case)
        self._queue(sender, hdr, os.urandom(self.rng.randint(100, 1000)), cross)

    def _flush(self, office, budget):
        """Sends what the office has pending, oldest first, at most `budget`."""
        sent = 0
        while office.pending and sent < budget:
            client = office.session()
            if client is None:
                return sent
            msg_id, (hdr, payload) = next(iter(office.pending.items()))
            try:
                client.send(hdr, payload, timeout=3.0)
                self.receipted.add((office.org, msg_id))
                del office.pending[msg_id]
            except kim.Rejected as e:
                if e.code in RETRY_LATER:
                    office.close()
                    return sent
                #   Refused for good (policy, state, unknown recipient): not
                #   receipted, so not owed to anyone
                self.rejected[e.reason or str(e.code)] += 1
                del office.pending[msg_id]
            except (kim.KimError, zmq.ZMQError):
                office.close()          # broker gone or slow: resend later, same msg_id
                return sent
            sent += 1
        return sent

    def _receive(self, office):
        """Takes what waits for the office, acks it, and answers referrals and
        handover offers."""
        client = office.session()
        if client is None:
            return 0
        got = 0
        try:
            while True:
                delivery = client.recv(timeout=0)
                if delivery is None:
                    break
                hdr = delivery.hdr
                key = (office.org, hdr.get("sender"), hdr.get("msg_id"))
                if hdr.get("type") == "UNDELIVERABLE":
                    #   The far district refused it: receipted here, owed to
                    #   nobody there, and the sender was told
                    self.undeliverable[(office.org, hdr.get("ref_msg_id"))] += 1
                if (hdr.get("sender"), hdr.get("msg_id")) in self.sent:
                    self.delivered[key] += 1
                elif hdr.get("type") in ("REFERRAL", "HANDOVER_OFFER", "ACCEPT",
                                         "HANDOVER_ACCEPT"):
                    self.phantoms += 1
                client.ack(delivery.seq)
                got += 1
                if self.delivered[key] == 1:
                    self._answer(office, hdr)
        except (kim.KimError, zmq.ZMQError):
            office.close()
        return got

    def _answer(self, office, hdr):
        kind = hdr.get("type")
        sender = hdr.get("sender", "")
        cross = sender.split(".", 1)[-1] != office.org.split(".", 1)[-1]
        if kind == "REFERRAL" and self.rng.random() < 0.5:
            self._queue(office, {"type": "ACCEPT", "recipient": sender,
                                 "referral_id": hdr["referral_id"],
                                 "ref_msg_id": hdr["msg_id"]}, b"", cross)
        elif kind == "HANDOVER_OFFER":
            self._queue(office, {"type": "HANDOVER_ACCEPT", "recipient": sender,
                                 "case_id": hdr["case_id"],
                                 "ref_msg_id": hdr["msg_id"]}, b"", cross)
            office.cases.append(hdr["case_id"])

    #   --- kills ----------------------------------------------------------------

    def _killer(self):
        while not self.stop_killing.wait(self.rng.uniform(0.5, 1.5) * self.args.kill_every):
            broker = self.rng.choice(self.brokers)
            with broker.busy:
                if self.args.power_cut:
                    broker.wait_unflushed(1.0)
                broker.kill()
                self.kills += 1
                if self.args.power_cut:
                    try:
                        pages, line = broker.cut_power(self.kills % 2 == 1,
                                                       self.rng.randrange(1, 1 << 62))
                        self.pages_back += pages
                        print("%s: %s" % (broker.name, line))
                    except RuntimeError as e:
                        self.errors.append(str(e))
                        return
                time.sleep(self.rng.uniform(0.2, 2.0))      # down for a while
                broker.start()
                try:
                    broker.wait_ready()
                except RuntimeError as e:
                    self.errors.append("restart of %s failed: %s" % (broker.name, e))
                    return

    def _sample_rss(self):
        for broker in self.brokers:
            pid = broker.pid()
            if pid:
                kib = fedlib.rss_kib(pid)
                if kib:
                    self.rss[broker.name].append(kib)

    #   --- the run --------------------------------------------------------------

    def run(self):
        start = time.monotonic()
        self.make()
        made = time.monotonic() - start
        print("%d brokers up in %.1f s (%d offices, federation %s), folder %s"
              % (len(self.brokers), made, len(self.offices),
                 "on" if self.federation else "off", self.root))
        killer = threading.Thread(target=self._killer, daemon=True)
        if self.args.kill_every > 0:
            killer.start()
        duration = self.args.seconds or 60 * self.args.minutes
        traffic_start = time.monotonic()
        next_sample = 0
        offices = list(self.offices.values())
        interval = 1.0 / self.args.rate
        next_message = time.monotonic()
        while time.monotonic() - traffic_start < duration:
            now = time.monotonic()
            while next_message <= now:
                self._new_message()
                next_message += interval
            for office in offices:
                if office.pending:
                    self._flush(office, 8)
                self._receive(office)
            if now >= next_sample:
                self._sample_rss()
                next_sample = now + 2.0
            time.sleep(0.01)
        self.stop_killing.set()
        if killer.is_alive():
            killer.join()
        traffic = time.monotonic() - traffic_start
        self._drain()
        self._sample_rss()
        for office in offices:
            office.close()
        for broker in self.brokers:
            broker.stop()
        verified = self._verify()
        return self._report(traffic, time.monotonic() - start, verified)

    def _missing(self):
        return [(s, m) for (s, m) in self.receipted
                if not self.delivered.get((self.sent[(s, m)][0], s, m))
                and (s, m) not in self.undeliverable]

    def _drain(self):
        """Every broker up: resend what is pending, take what waits, until every
        receipted message arrived or nothing moves for a while."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < self.args.drain:
            moved = 0
            for office in self.offices.values():
                moved += self._flush(office, 64) + self._receive(office)
            if moved:
                quiet_since = time.monotonic()
            elif not self._missing() and not any(o.pending for o in self.offices.values()):
                break
            time.sleep(0.05)

    def _verify(self):
        """`kim audit verify --data` of every log, two at a time."""
        results = {}
        running = []
        for broker in self.brokers:
            process = subprocess.Popen([self.kim_bin, "audit", "verify", "--data", broker.data],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            running.append((broker, process))
            if len(running) >= 2:
                b, p = running.pop(0)
                results[b.name] = (p.wait(), p.stdout.read().decode(errors="replace").strip())
        for b, p in running:
            results[b.name] = (p.wait(), p.stdout.read().decode(errors="replace").strip())
        return results

    def _report(self, traffic, total, verified):
        receipted = len(self.receipted)
        missing = self._missing()
        deliveries = sum(self.delivered.values())
        distinct = len(self.delivered)
        cross = sum(1 for key in self.receipted if self.sent[key][2])
        types = collections.Counter(self.sent[key][1] for key in self.receipted)
        bad_logs = {name: text for name, (rc, text) in verified.items() if rc != 0}
        records = 0
        for rc, text in verified.values():
            if text.startswith("OK: records 1.."):
                records += int(text.split("..", 1)[1].split()[0])
        peaks = sorted(max(samples) for samples in self.rss.values() if samples)
        print("districts             %d (brokers), %d offices"
              % (len(self.brokers), len(self.offices)))
        print("duration              %.0f s of traffic, %.0f s in all" % (traffic, total))
        print("messages receipted    %d (%s); %d across districts"
              % (receipted, ", ".join("%s %d" % item for item in sorted(types.items())), cross))
        print("refused               %d (%s)" % (sum(self.rejected.values()), ", ".join(
            "%s %d" % item for item in sorted(self.rejected.items())) or "none"))
        print("refused far away      %d (UNDELIVERABLE notices to the sender)"
              % len(self.undeliverable))
        if self.args.power_cut:
            print("kills                 %d (SIGKILL, each a power cut: %d pages set back "
                  "in all; restarted)" % (self.kills, self.pages_back))
            if self.kills and not self.pages_back:
                self.errors.append("the power cuts took nothing back: was the library loaded?")
        else:
            print("kills                 %d (SIGKILL, restarted)" % self.kills)
        print("deliveries            %d, %d distinct, %d duplicates removed"
              % (deliveries, distinct, deliveries - distinct))
        print("lost                  %d receipted messages never arrived" % len(missing))
        print("phantoms              %d deliveries of messages never sent" % self.phantoms)
        print("logs                  %d of %d verify (%d records)"
              % (len(verified) - len(bad_logs), len(verified), records))
        if peaks:
            print("RSS per broker        median %d KiB, max %d KiB (peak of each broker; "
                  "%d brokers, %d MiB in all)" % (statistics.median(peaks), peaks[-1],
                                                  len(peaks), sum(peaks) // 1024))
        for name, text in sorted(bad_logs.items()):
            print("LOG DOES NOT VERIFY   %s: %s" % (name, text))
        for sender, msg_id in sorted(missing)[:20]:
            print("LOST                  %s from %s to %s" % (msg_id, sender,
                                                             self.sent[(sender, msg_id)][0]))
        for error in self.errors:
            print("ERROR                 %s" % error)
        ok = not missing and not bad_logs and not self.phantoms and not self.errors \
            and receipted > 0
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(
        description="The federation of NRW's districts on one machine, with broker kills.")
    parser.add_argument("--districts", type=int, default=4,
                        help="brokers, one per district (54 for NRW; default 4)")
    parser.add_argument("--minutes", type=float, default=0.5, help="minutes of traffic")
    parser.add_argument("--seconds", type=float, default=0,
                        help="seconds of traffic (instead of --minutes)")
    parser.add_argument("--offices", type=int, default=3,
                        help="offices per district (default 3: kim, jc, ja)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="new messages per second over all districts (default 20)")
    parser.add_argument("--kill-every", type=float, default=5.0,
                        help="seconds between broker kills on average (0: none; default 5)")
    parser.add_argument("--power-cut", action="store_true",
                        help="every kill is a power cut: the writes no flush covered are taken "
                             "back (needs KIM_POWERCUT, the preload library, and "
                             "KIM_POWERCUT_BIN, kim-powercut; tests/fault/powercut)")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds without progress before the end check gives up")
    parser.add_argument("--federation", choices=("auto", "on", "off"), default="auto",
                        help="peers sections: auto (if the broker takes them), on, off")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--broker", help="kim-broker binary (default: build/release first)")
    parser.add_argument("--kim", help="kim binary (default: build/release first)")
    parser.add_argument("--folder", help="where the districts' folders go (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the folders")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)     # progress shows in a log file too
    if args.districts < 1 or args.offices < 2 or args.rate <= 0:
        parser.error("needs 1 district or more, 2 offices or more, a positive rate")
    if args.power_cut and not (os.environ.get("KIM_POWERCUT")
                               and os.environ.get("KIM_POWERCUT_BIN")):
        parser.error("--power-cut needs KIM_POWERCUT and KIM_POWERCUT_BIN")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    print("seed %d" % args.seed)
    sim = Sim(args)
    try:
        rc = sim.run()
    finally:
        sim.stop_killing.set()
        for broker in sim.brokers:
            if broker.running():
                broker.kill()
        if args.keep or args.folder:
            print("folders kept in %s" % sim.root)
        else:
            shutil.rmtree(sim.root, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
