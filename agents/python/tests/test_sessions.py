"""Several sessions of one organisation against a real kim-broker
(PROTOCOL.md §7.2, §7.3, §8.1, §8.6, §8.7, §8.10, §8.18–8.19, §11, §12).

Which session receives the organisation's deliveries (the newest with a
window), what becomes of deliveries in flight when it says BYE, is replaced
at `sessions_per_org`, goes silent past the expiry, says HELLO again, or
when another session says HELLO; ACK and ACK_RANGE from a session that does
not hold a delivery; subscription events with several sessions; a version 1
and a version 2 session side by side; redelivery after a takeover.

Sessions are read frame by frame (class Agent), past the client's own
de-duplication, so that every copy of a delivery and every REJECT is seen.
Tests on the shared broker empty the receiving organisation's mailbox first
and use ids of their own; tests that need another setting (a small
`sessions_per_org`, a short heartbeat or `redeliver_ms`) start a broker of
their own. Every wait is bounded."""
import time

import pytest

import kim
from kim_frames import pump
from kim_headers import referral as _referral

QUIET = 0.3             # s without a frame that count as "nothing came"
WAIT = 5.0              # s a delivery or an answer may take at most

BAD_ACK, REPLACED, NO_SESSION, VERSION, SESSION_EXPIRED = 208, 206, 200, 201, 209
UNKNOWN_CMD = 108


#   --- one session, frame by frame -----------------------------------------

class Agent:
    """A connected kim.Client read frame by frame: `seqs` every delivered seq in
    the order it came, repeats kept; `kinds` the frame each came in (DELIVER
    or DELIVER_BATCH); `arrivals` (time, seq); `rejects` every REJECT;
    `others` every other command. `keepalive` (s): PING when silent that long
    while pumped."""

    def __init__(self, client, keepalive=None):
        self.client = client
        self.seqs, self.kinds, self.arrivals = [], [], []
        self.hdrs, self.payloads = {}, {}
        self.rejects, self.others = [], []
        self.keepalive = keepalive
        self.last_sent = time.monotonic()
        while client._deliveries:               # queued by the client, if any
            d = client._deliveries.popleft()
            self._delivered(d.seq, d.hdr, d.payload, "queued")

    @property
    def sock(self):
        return self.client._sock

    def _delivered(self, seq, hdr, payload, kind):
        self.seqs.append(seq)
        self.kinds.append(kind)
        self.arrivals.append((time.monotonic(), seq))
        self.hdrs[seq] = hdr
        self.payloads[seq] = payload

    def take(self, cmd, payload):
        if cmd["cmd"] == "DELIVER":
            self._delivered(cmd["seq"], cmd["hdr"], payload, "DELIVER")
        elif cmd["cmd"] == "DELIVER_BATCH":
            for entry, entry_payload in cmd["entries"]:
                self._delivered(entry["seq"], entry["hdr"], entry_payload, "DELIVER_BATCH")
        elif cmd["cmd"] == "REJECT":
            self.rejects.append(cmd)
        else:
            if cmd["cmd"] == "WELCOME":
                self.client.version = cmd["version"]
                self.client.welcome = cmd
            self.others.append(cmd)

    def send(self, cmd):
        self.client._send_cmd(cmd)
        self.last_sent = time.monotonic()

    def ack(self, *seqs):
        self.send({"cmd": "ACK", "seqs": list(seqs)})

    def ack_range(self, *bounds):
        self.send({"cmd": "ACK_RANGE", "ranges": list(bounds)})

    def request(self, cmd, answer, timeout=WAIT):
        """Sends `cmd` and pumps until a command named `answer` (or, when
        `answer` is a function, one it accepts) comes; returns it."""
        match = answer if callable(answer) else (lambda c: c["cmd"] == answer)
        mark = len(self.others)
        self.send(cmd)
        assert pump([self], timeout, lambda: any(map(match, self.others[mark:]))), \
            "no answer to %s within %.1f s; rejects %s" % (cmd["cmd"], timeout, self.rejects)
        return next(c for c in self.others[mark:] if match(c))

    def status(self):
        return self.request({"cmd": "STATUS"}, "STATUS_REPLY")["status"]

    def sync(self, linger=0.2):
        """PING, PONG, then `linger` s more: what an ACK caused (a REJECT the
        commit makes, deliveries its window frees) has come by then."""
        self.request({"cmd": "PING"}, "PONG")
        pump([self], linger)

    def hello(self, window, versions=(1, 2)):
        """HELLO on this connection (a second one ends the session first, §7.2);
        returns the WELCOME or the REJECT."""
        others, rejects = len(self.others), len(self.rejects)
        self.send({"cmd": "HELLO", "versions": list(versions), "agent": "kim-test/sessions",
                   "window": window})

        def answers():
            return [c for c in self.others[others:] if c["cmd"] == "WELCOME"] \
                + self.rejects[rejects:]
        assert pump([self], WAIT, answers), "no answer to the HELLO"
        return answers()[0]

    def distinct(self):
        return sorted(set(self.seqs))


def has_all(agent, seqs):
    return lambda: set(seqs) <= set(agent.seqs)


def wait_status(agent, key, value, timeout=WAIT):
    """Polls STATUS until status[key] == value (ACKs commit within a few ms)."""
    deadline = time.monotonic() + timeout
    while True:
        status = agent.status()
        if status[key] == value or time.monotonic() > deadline:
            return status
        pump([agent], 0.05)


def new_rejects(agent, mark):
    return [(r["code"], r.get("path")) for r in agent.rejects[mark:]]


#   --- mail and mailboxes --------------------------------------------------

def mail(jc, tag, count=1, recipient="soz.rheine", case_id=None):
    """Sends `count` referrals from jc; returns their seqs."""
    case_id = case_id or "C-SS-%s" % tag
    items = [(_referral("R-SS-%s-%d" % (tag, i), case_id, recipient), b"payload %d" % i)
             for i in range(count)]
    results = jc.send_many(items)
    for r in results:
        assert isinstance(r, dict) and r["cmd"] == "RECEIPT" and not r.get("dup"), r
    return [r["seq"] for r in results]


def empty_mailbox(connect, org):
    """Receives and acknowledges until `org`'s mailbox is empty, then says BYE."""
    agent = Agent(connect(org, window=64))
    deadline = time.monotonic() + 15
    while True:
        pump([agent], 0.2)
        if agent.seqs:
            agent.ack(*sorted(set(agent.seqs)))
            agent.seqs = []
            agent.sync(0.05)
        elif agent.status()["mailbox"] == 0:
            break
        assert time.monotonic() < deadline, "the mailbox of %s stays full" % org
    agent.client.close()


def dial(client):
    """Connects `client`'s socket as Client.connect does, without HELLO, and
    waits until the CURVE handshake is done (a PING answered NO_SESSION):
    its HELLO then reaches the broker at once. Returns an Agent."""
    client._open_socket()
    agent = Agent(client)
    agent.send({"cmd": "PING"})
    assert pump([agent], WAIT, lambda: agent.rejects), "no answer before HELLO"
    assert [r["code"] for r in agent.rejects] == [NO_SESSION]
    agent.rejects = []
    return agent


class Office:
    """soz.rheine with several agents, and jc.rheine (window 0) to send it mail."""

    def __init__(self, broker, connect):
        self.broker = broker
        self.connect = connect
        self.jc = connect("jc.rheine", window=0)
        self.dialed = []

    def agent(self, window=8, versions=(2, 1)):
        return Agent(self.connect("soz.rheine", window=window, versions=versions))

    def dial(self):
        client = kim.Client(self.broker.endpoint, self.broker.broker_cert,
                            self.broker.cert_secret("soz.rheine"), timeout=WAIT)
        self.dialed.append(client)
        return dial(client)


@pytest.fixture
def soz(broker, connect):
    """An Office of the shared broker; soz.rheine's mailbox is empty to start with."""
    empty_mailbox(connect, "soz.rheine")
    office = Office(broker, connect)
    yield office
    for client in office.dialed:
        client.close()


#   --- a broker of its own -------------------------------------------------

@pytest.fixture
def special(brokers, connect_to):
    """special(**settings) -> connect(org, **options) for a broker of its own
    with these `broker` settings and the agencies jc.rheine and soz.rheine."""
    def start(**settings):
        b = brokers({"jc.rheine": "agency", "soz.rheine": "agency"}, broker=settings)
        return lambda org, **options: connect_to(b, org, **dict({"timeout": WAIT}, **options))
    return start


#   --- which session receives (§7.2) ---------------------------------------

def test_the_newest_session_with_a_window_receives(soz):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=8)
    first = mail(jc, "NEW-1", 2)
    assert pump([a, b], WAIT, has_all(b, first)), b.seqs
    c = agent(window=0)                             # sends only: takes nothing over
    assert c.client.welcome["window"] == 0
    second = mail(jc, "NEW-2", 1)
    assert pump([a, b, c], WAIT, has_all(b, second)), b.seqs
    pump([a, b, c], QUIET)
    assert b.seqs == first + second                 # once each, ascending (§8.6)
    assert a.seqs == [] and c.seqs == []
    assert b.kinds == ["DELIVER_BATCH"] * 3
    b.ack_range(first[0], second[-1])
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0
    b.sync()
    assert a.rejects == b.rejects == c.rejects == []


def test_a_third_session_with_window_0_leaves_deliveries_in_flight(soz):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=8)
    seqs = mail(jc, "W0", 2)
    assert pump([a, b], WAIT, has_all(b, seqs))
    c = agent(window=0)
    pump([a, b, c], QUIET)
    assert b.seqs == seqs and a.seqs == [] and c.seqs == []
    status = c.status()
    assert (status["mailbox"], status["in_flight"]) == (2, 2)
    b.ack(seqs[0])                                  # still b's to acknowledge
    later = mail(jc, "W0-later", 1)
    assert pump([a, b, c], WAIT, has_all(b, later))
    b.ack(seqs[1], later[0])
    b.sync()
    assert b.rejects == [] and a.seqs == [] and c.seqs == []
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0


def test_a_third_session_with_a_window_takes_over_what_is_in_flight(soz):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=8)
    seqs = mail(jc, "TAKE", 3)
    assert pump([a, b], WAIT, has_all(b, seqs))
    c = agent(window=8)
    assert pump([a, b, c], WAIT, has_all(c, seqs)), c.seqs
    pump([a, b, c], QUIET)
    assert c.seqs == seqs                           # the same seqs, once, ascending
    assert b.seqs == seqs and a.seqs == []          # nothing again on the old session
    assert c.hdrs[seqs[1]]["msg_id"] == b.hdrs[seqs[1]]["msg_id"]
    # in flight on c now: the old session's ACK and ACK_RANGE are refused
    b.ack(seqs[0])
    b.sync()
    b.ack_range(seqs[1], seqs[2])
    b.sync()
    assert new_rejects(b, 0) == [(BAD_ACK, "seqs[0]"), (BAD_ACK, "ranges[0]")]
    assert all("msg_id" not in r for r in b.rejects)
    status = c.status()
    assert (status["mailbox"], status["in_flight"]) == (3, 3)       # no other effect
    b.send({"cmd": "BYE"})                          # not the receiver: nothing moves
    pump([a, b, c], QUIET)
    assert c.seqs == seqs and a.seqs == []
    c.ack_range(seqs[0], seqs[2])
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0
    pump([a, b, c], QUIET)
    assert c.rejects == [] and c.seqs == seqs and a.seqs == []


def test_after_a_takeover_the_old_session_acks_what_is_not_yet_in_flight_again(soz):
    """§7.2: the old session's ACK is refused once the delivery is in flight on
    the session that took over; until then it is in flight nowhere (§8.7)."""
    jc, agent = soz.jc, soz.agent
    b = agent(window=8)
    s0, s1, s2 = mail(jc, "PARTIAL", 3)
    assert pump([b], WAIT, has_all(b, [s0, s1, s2]))
    c = agent(window=1)                             # room for s0 only
    assert pump([b, c], WAIT, has_all(c, [s0]))
    pump([b, c], QUIET)
    assert c.seqs == [s0]
    b.ack(s1, s2)                                   # in flight nowhere: acknowledged
    b.sync()
    assert b.rejects == []
    assert wait_status(c, "mailbox", 1)["mailbox"] == 1
    b.ack(s0)                                       # in flight on c: refused
    b.sync()
    assert new_rejects(b, 0) == [(BAD_ACK, "seqs[0]")]
    c.ack(s0)
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0
    pump([b, c], QUIET)
    assert c.seqs == [s0] and c.rejects == [] and b.seqs == [s0, s1, s2]


def test_an_acknowledged_delivery_does_not_come_again_on_the_session_that_takes_over(soz):
    jc = soz.jc
    again = []                                      # (seq, what the new session got)
    for round_ in range(3):
        a = soz.agent(window=8)
        b = soz.dial()                              # connected; its HELLO comes below
        (m,) = mail(jc, "ACKED-%d" % round_, 1)
        assert pump([a], WAIT, has_all(a, [m]))
        a.ack(m)
        a.request({"cmd": "PING"}, "PONG")          # the broker has read the ACK
        assert b.hello(window=8)["cmd"] == "WELCOME"
        pump([a, b], QUIET)
        if b.seqs:
            b.ack(*b.distinct())
            b.sync()
            again.append((m, b.seqs, [(r["code"], r.get("text")) for r in b.rejects]))
        assert a.rejects == []
        assert wait_status(a, "mailbox", 0)["mailbox"] == 0
        a.client.close()
        b.client.close()
    assert again == [], "acknowledged, then delivered to the next session: %s" % again


def test_bye_of_the_receiver_hands_its_deliveries_to_the_other_session(soz):
    jc, agent = soz.jc, soz.agent
    a = agent(window=2)
    b = agent(window=8)
    seqs = mail(jc, "BYE", 4)
    assert pump([a, b], WAIT, has_all(b, seqs))
    b.ack(seqs[1])
    b.sync()
    replies = len(b.others)
    b.send({"cmd": "BYE"})
    # a takes over at once: what was in flight and not acknowledged, ascending,
    # within its own window of 2
    assert pump([a], WAIT, lambda: len(a.seqs) >= 2), a.seqs
    pump([a], QUIET)
    assert a.seqs == [seqs[0], seqs[2]]
    a.ack(seqs[0])
    assert pump([a], WAIT, has_all(a, [seqs[3]]))
    a.ack(seqs[2], seqs[3])
    assert wait_status(a, "mailbox", 0)["mailbox"] == 0
    pump([a, b], QUIET)
    assert a.seqs == [seqs[0], seqs[2], seqs[3]] and a.rejects == []
    assert b.seqs == seqs
    assert b.rejects == [] and b.others[replies:] == []            # BYE: no answer (§8.12)


#   --- ACK and ACK_RANGE (§8.7, §8.19) --------------------------------------

def test_ack_from_the_session_that_does_not_hold_the_delivery(soz):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=1)
    s0, s1, s2 = mail(jc, "NOTHELD", 3)
    assert pump([a, b], WAIT, has_all(b, [s0]))
    pump([a, b], QUIET)
    assert b.seqs == [s0]                           # s1, s2 wait: in flight nowhere
    a.ack(s0, s1)                                   # s0 is b's; s1 in flight nowhere
    a.sync()
    assert new_rejects(a, 0) == [(BAD_ACK, "seqs[0]")]
    a.ack_range(s0, s0)
    a.sync()
    assert new_rejects(a, 1) == [(BAD_ACK, "ranges[0]")]
    status = wait_status(a, "mailbox", 2)
    assert (status["mailbox"], status["in_flight"]) == (2, 1)     # s1 acknowledged
    b.ack(s0)
    assert pump([b], WAIT, has_all(b, [s2]))
    pump([a, b], QUIET)
    assert b.seqs == [s0, s2] and b.rejects == []   # s1 never comes
    b.ack(s2)
    assert wait_status(a, "mailbox", 0)["mailbox"] == 0
    a.ack(s0)                                       # gone from the mailbox now
    a.sync()
    assert new_rejects(a, 2) == [(BAD_ACK, "seqs[0]")]


@pytest.mark.parametrize("order", ["gone_first", "held_first"])
def test_an_ack_with_two_refused_entries_gets_one_reject_naming_the_first(soz, order):
    """§8.7: an entry is refused with REJECT BAD_ACK, path seqs[i], "the first
    refused entry": one REJECT for the ACK, whatever makes each entry fail."""
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=8)
    gone, held = mail(jc, "TWO-" + order, 2)
    assert pump([a, b], WAIT, has_all(b, [gone, held]))
    b.ack(gone)
    b.sync()
    assert wait_status(a, "mailbox", 1)["mailbox"] == 1
    # gone is not in the mailbox, held is in flight on b
    entries = [gone, held] if order == "gone_first" else [held, gone]
    a.ack(*entries)
    a.sync(0.5)
    assert new_rejects(a, 0) == [(BAD_ACK, "seqs[0]")]
    assert a.status()["mailbox"] == 1               # no other effect
    b.ack(held)
    assert wait_status(b, "mailbox", 0)["mailbox"] == 0
    b.sync()
    assert b.rejects == []


def test_an_ack_refused_in_part_names_the_entry_where_it_stands(soz):
    """§8.7: path seqs[i] names the refused entry of the ACK as sent, also when
    an earlier entry was refused for another reason."""
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=1)
    gone, held, waiting = mail(jc, "WHERE", 3)
    assert pump([a, b], WAIT, has_all(b, [gone]))
    b.ack(gone)
    assert pump([b], WAIT, has_all(b, [held]))
    b.sync()
    assert b.seqs == [gone, held]                   # waiting: in flight nowhere
    a.ack(held, waiting, gone)                      # refused, acknowledged, refused
    a.sync(0.5)
    paths = [path for code, path in new_rejects(a, 0)]
    assert all(code == BAD_ACK for code, _ in new_rejects(a, 0))
    assert paths and paths[0] == "seqs[0]"
    assert set(paths) <= {"seqs[0]", "seqs[2]"}, paths     # never a place it does not hold
    assert wait_status(a, "mailbox", 1)["mailbox"] == 1     # waiting acknowledged
    b.ack(held)
    pump([a, b], QUIET)
    assert b.seqs == [gone, held]                   # waiting never comes
    assert wait_status(a, "mailbox", 0)["mailbox"] == 0


def test_the_receiver_acks_a_seq_it_was_not_yet_given(soz):
    """§8.7: a seq in the mailbox, in flight nowhere, is acknowledged by ACK;
    §8.19: an ACK_RANGE over it alone is BAD_ACK, its other ranges still count."""
    jc, agent = soz.jc, soz.agent
    b = agent(window=1)
    s0, s1, s2 = mail(jc, "NOTYET", 3)
    assert pump([b], WAIT, has_all(b, [s0]))
    pump([b], QUIET)
    assert b.seqs == [s0]
    b.ack_range(s1, s1)
    b.sync()
    assert new_rejects(b, 0) == [(BAD_ACK, "ranges[0]")]
    assert b.status()["mailbox"] == 3
    b.ack(s2)
    b.sync()
    assert new_rejects(b, 1) == []
    assert wait_status(b, "mailbox", 2)["mailbox"] == 2
    b.ack_range(s0, s0, s1, s1)                     # s0 in flight here, s1 not yet
    b.sync()
    assert new_rejects(b, 1) == [(BAD_ACK, "ranges[2]")]
    assert pump([b], WAIT, has_all(b, [s1]))        # s0 acknowledged: the window frees
    pump([b], QUIET)
    assert b.seqs == [s0, s1]                       # s2 was acknowledged: never comes
    b.ack(s1)
    assert wait_status(b, "mailbox", 0)["mailbox"] == 0


#   --- a second HELLO on a connection (§7.2, §8.1, §11) ----------------------

def test_a_second_hello_sends_in_flight_again_and_keeps_subscriptions(soz, connect):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    (m0,) = mail(jc, "REHELLO", 1)
    assert pump([a], WAIT, has_all(a, [m0]))
    sub = a.request({"cmd": "SUBSCRIBE", "sub_id": "s-SS-REHELLO", "case_id": "C-SS-REHELLO",
                     "types": ["REFERRAL"]},
                    lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == "s-SS-REHELLO")
    sessions = a.status()["sessions"]
    welcome = a.hello(window=8)
    assert welcome["cmd"] == "WELCOME" and welcome["window"] == 8
    assert pump([a], WAIT, lambda: a.seqs.count(m0) == 2), a.seqs
    assert a.status()["sessions"] == sessions       # one session ended, one began
    # the subscription stays: an event of the case between jc and aa.rheine
    (event,) = mail(jc, "REHELLO-aa", 1, recipient="aa.rheine", case_id="C-SS-REHELLO")
    assert event > sub["seq"]
    assert pump([a], WAIT, has_all(a, [event])), a.seqs
    assert a.hdrs[event]["referral_id"] == "R-SS-REHELLO-aa-0" and a.payloads[event] == b""
    a.ack(m0, event)
    a.request({"cmd": "UNSUBSCRIBE", "sub_id": "s-SS-REHELLO"},
              lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == "s-SS-REHELLO")
    assert wait_status(a, "mailbox", 0)["mailbox"] == 0
    assert a.rejects == []
    empty_mailbox(connect, "aa.rheine")


def test_a_second_hello_with_window_0_hands_over_to_the_other_session(soz):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=8)
    seqs = mail(jc, "REHELLO0", 2)
    assert pump([a, b], WAIT, has_all(b, seqs))
    assert b.hello(window=0)["window"] == 0
    assert pump([a, b], WAIT, has_all(a, seqs)), a.seqs
    pump([a, b], QUIET)
    assert a.seqs == seqs and b.seqs == seqs
    b.ack(seqs[0])                                  # in flight on a now
    b.sync()
    assert new_rejects(b, 0) == [(BAD_ACK, "seqs[0]")]
    a.ack(*seqs)
    assert wait_status(a, "mailbox", 0)["mailbox"] == 0


def test_a_second_hello_without_a_common_version_ends_the_session(soz):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    b = agent(window=8)
    sessions = a.status()["sessions"]
    (m0,) = mail(jc, "NOVERSION", 1)
    assert pump([a, b], WAIT, has_all(b, [m0]))
    answer = b.hello(window=8, versions=(3,))
    assert (answer["cmd"], answer["code"], answer.get("path")) == ("REJECT", VERSION, "versions")
    assert pump([a], WAIT, has_all(a, [m0]))        # the other session takes over
    mark = len(b.rejects)
    b.send({"cmd": "PING"})
    assert pump([b], WAIT, lambda: len(b.rejects) > mark)
    assert new_rejects(b, mark) == [(NO_SESSION, None)]
    assert a.status()["sessions"] == sessions - 1
    a.ack(m0)
    assert wait_status(a, "mailbox", 0)["mailbox"] == 0


#   --- subscriptions with several sessions (§8.10) -----------------------------

def test_subscription_events_go_to_the_receiving_session_and_outlive_the_subscriber(
        soz, connect):
    jc, agent = soz.jc, soz.agent
    a = agent(window=8)
    (m0,) = mail(jc, "SUB", 1)                     # soz takes part in case C-SS-SUB
    assert pump([a], WAIT, has_all(a, [m0]))
    a.ack(m0)
    a.sync()
    a.request({"cmd": "SUBSCRIBE", "sub_id": "s-SS-SUB", "case_id": "C-SS-SUB",
               "types": ["REFERRAL"]},
              lambda c: c["cmd"] == "RECEIPT" and c.get("msg_id") == "s-SS-SUB")
    b = agent(window=8)                             # receives the organisation's mail now
    (e1,) = mail(jc, "SUB-aa1", 1, recipient="aa.rheine", case_id="C-SS-SUB")
    assert pump([a, b], WAIT, has_all(b, [e1])), (a.seqs, b.seqs)
    assert b.payloads[e1] == b"" and b.hdrs[e1]["recipient"] == "aa.rheine"
    a.send({"cmd": "BYE"})                          # the subscriber's session ends
    (e2,) = mail(jc, "SUB-aa2", 1, recipient="aa.rheine", case_id="C-SS-SUB")
    assert pump([b], WAIT, has_all(b, [e2])), b.seqs
    b.ack(e1, e2)
    b.sync()
    b.send({"cmd": "BYE"})
    (e3,) = mail(jc, "SUB-aa3", 1, recipient="aa.rheine", case_id="C-SS-SUB")
    c = agent(window=8)                             # logged while nobody was connected
    assert pump([c], WAIT, has_all(c, [e3])), c.seqs
    pump([a, b, c], QUIET)
    assert a.seqs == [m0] and b.seqs == [e1, e2] and c.seqs == [e3]
    c.ack(e3)
    c.request({"cmd": "UNSUBSCRIBE", "sub_id": "s-SS-SUB"},
              lambda r: r["cmd"] == "RECEIPT" and r.get("msg_id") == "s-SS-SUB")
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0
    assert a.rejects == b.rejects == c.rejects == []
    empty_mailbox(connect, "aa.rheine")


#   --- versions 1 and 2 side by side (§5.1, §8.18, §8.19, §11) ------------------

def test_a_version_1_and_a_version_2_session_hand_deliveries_over(soz):
    jc, agent = soz.jc, soz.agent
    old = agent(window=8, versions=(1,))
    new = agent(window=8)
    assert (old.client.version, new.client.version) == (1, 2)
    seqs = mail(jc, "MIX", 2)
    assert pump([old, new], WAIT, has_all(new, seqs))
    assert set(new.kinds) == {"DELIVER_BATCH"}
    new.send({"cmd": "BYE"})
    assert pump([old], WAIT, has_all(old, seqs)), old.seqs
    pump([old], QUIET)
    assert old.seqs == seqs and old.kinds == ["DELIVER", "DELIVER"]
    old.ack_range(seqs[0], seqs[1])                 # a command of version 2
    old.sync()
    assert new_rejects(old, 0) == [(UNKNOWN_CMD, "cmd")]
    assert old.status()["in_flight"] == 2           # no effect
    old.ack(*seqs)
    assert wait_status(old, "mailbox", 0)["mailbox"] == 0

    # the other way: a version 1 session takes over from a version 2 one
    v2 = agent(window=8)
    (m,) = mail(jc, "MIX-2", 1)
    assert pump([old, v2], WAIT, has_all(v2, [m]))
    v1 = agent(window=8, versions=(1,))
    assert pump([old, v2, v1], WAIT, has_all(v1, [m]))
    pump([old, v2, v1], QUIET)
    assert v1.seqs == [m] and v1.kinds == ["DELIVER"] and v2.seqs == [m]
    v2.ack(m)
    v2.sync()
    v2.ack_range(m, m)
    v2.sync()
    assert new_rejects(v2, 0) == [(BAD_ACK, "seqs[0]"), (BAD_ACK, "ranges[0]")]
    v1.ack(m)
    assert wait_status(v1, "mailbox", 0)["mailbox"] == 0
    v1.sync()
    assert v1.rejects == [] and old.seqs == seqs


#   --- sessions_per_org (§7.2, §7.3, §11) -------------------------------------

def test_the_receiver_replaced_at_the_limit_by_a_session_without_window(special):
    connect = special(sessions_per_org=2)
    a = Agent(connect("soz.rheine", window=8))      # the oldest, and the receiver
    b = Agent(connect("soz.rheine", window=0))
    jc_client = connect("jc.rheine", window=0)      # another organisation: no effect
    seqs = mail(jc_client, "LIMIT0", 2)
    assert pump([a, b], WAIT, has_all(a, seqs))
    c = Agent(connect("soz.rheine", window=0))      # beyond the limit: a ends
    assert pump([a], WAIT, lambda: a.rejects), "no REPLACED"
    assert [(r["code"], r["reason"]) for r in a.rejects] == [(REPLACED, "REPLACED")]
    assert "msg_id" not in a.rejects[0]
    pump([a, b, c], QUIET)
    assert b.seqs == [] and c.seqs == []            # no session with a window is left
    status = b.status()
    assert (status["sessions"], status["mailbox"], status["in_flight"]) == (2, 2, 0)
    mark = len(a.rejects)
    a.ack(*seqs)                                    # the replaced connection has no session
    assert pump([a], WAIT, lambda: len(a.rejects) > mark)
    assert new_rejects(a, mark) == [(NO_SESSION, None)]
    assert b.status()["mailbox"] == 2
    d = Agent(connect("soz.rheine", window=8))      # replaces b, takes the mail
    # b's REPLACED and d's deliveries travel on two connections: wait for both
    assert pump([b, c, d], WAIT, lambda: has_all(d, seqs)() and b.rejects), (d.seqs, b.rejects)
    assert [r["code"] for r in b.rejects] == [REPLACED]
    pump([b, c, d], QUIET)
    assert d.seqs == seqs and c.seqs == []
    d.ack(*seqs)
    assert wait_status(d, "mailbox", 0)["mailbox"] == 0
    c.sync()
    assert c.rejects == [] and d.rejects == []


def test_the_receiver_replaced_at_the_limit_by_a_session_with_a_window(special):
    connect = special(sessions_per_org=2)
    a = Agent(connect("soz.rheine", window=8))
    b = Agent(connect("soz.rheine", window=0))
    seqs = mail(connect("jc.rheine", window=0), "LIMITW", 3)
    assert pump([a, b], WAIT, has_all(a, seqs))
    a.ack(seqs[1])
    a.sync()
    c = Agent(connect("soz.rheine", window=8))
    assert pump([a, b, c], WAIT, lambda: a.rejects and has_all(c, [seqs[0], seqs[2]])())
    pump([a, b, c], QUIET)
    assert [r["code"] for r in a.rejects] == [REPLACED]
    assert c.seqs == [seqs[0], seqs[2]] and b.seqs == []
    assert a.seqs == seqs
    c.ack(seqs[0], seqs[2])
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0
    b.sync()
    assert b.rejects == [] and c.rejects == []


def test_replacing_another_session_leaves_the_receivers_deliveries_alone(special):
    connect = special(sessions_per_org=2)
    a = Agent(connect("soz.rheine", window=8))      # the oldest, not the receiver
    b = Agent(connect("soz.rheine", window=8))
    seqs = mail(connect("jc.rheine", window=0), "LIMITOTHER", 2)
    assert pump([a, b], WAIT, has_all(b, seqs))
    c = Agent(connect("soz.rheine", window=0))
    assert pump([a], WAIT, lambda: a.rejects)
    assert [r["code"] for r in a.rejects] == [REPLACED]
    pump([a, b, c], QUIET)
    assert b.seqs == seqs and a.seqs == [] and c.seqs == []     # nothing sent again
    assert c.status()["in_flight"] == 2
    b.ack_range(seqs[0], seqs[1])
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0
    b.sync()
    assert b.rejects == [] and c.rejects == []


def test_a_second_hello_at_the_limit_replaces_nobody(special):
    connect = special(sessions_per_org=2)
    a = Agent(connect("soz.rheine", window=8))
    b = Agent(connect("soz.rheine", window=8))
    assert a.status()["sessions"] == 2
    assert a.hello(window=8)["cmd"] == "WELCOME"    # a's session ends first (§7.2)
    pump([a, b], QUIET)
    assert a.rejects == [] and b.rejects == []
    b.sync()
    assert b.rejects == [] and b.status()["sessions"] == 2
    seqs = mail(connect("jc.rheine", window=0), "LIMITREHELLO", 1)
    assert pump([a, b], WAIT, has_all(a, seqs))     # the newest HELLO with a window
    pump([a, b], QUIET)
    assert b.seqs == [] and a.rejects == []


#   --- heartbeating and expiry (§11, §12) ----------------------------------------

def test_a_silent_receiver_expires_and_the_other_session_takes_over(special):
    heartbeat_ms = 300
    connect = special(heartbeat_ms=heartbeat_ms)
    silence = 3 * heartbeat_ms / 1000.0
    a = Agent(connect("soz.rheine", window=8), keepalive=heartbeat_ms / 3000.0)
    jc = Agent(connect("jc.rheine", window=0), keepalive=heartbeat_ms / 3000.0)
    b = Agent(connect("soz.rheine", window=8))      # the receiver, silent from its HELLO
    seqs = mail(jc.client, "EXPIRE", 2)
    assert pump([a, b, jc], WAIT, has_all(b, seqs))
    assert pump([a, b, jc], WAIT, has_all(a, seqs)), "no takeover: %s" % a.seqs
    took_over = min(t for t, seq in a.arrivals)
    # b.last_sent is when its WELCOME came, a little after the broker read its HELLO
    assert took_over - b.last_sent > silence - 0.05, "expired after %.2f s of silence" % (
        took_over - b.last_sent)
    pump([a, b, jc], QUIET)
    assert a.seqs == seqs and b.seqs == seqs
    # the active sessions live on; the silent one has no session any more
    assert a.rejects == [] and jc.rejects == []
    assert {r["code"] for r in b.rejects} <= {SESSION_EXPIRED}       # MAY be told (§11)
    mark = len(b.rejects)
    b.send({"cmd": "PING"})
    assert pump([b], WAIT, lambda: len(b.rejects) > mark)
    assert new_rejects(b, mark) == [(NO_SESSION, None)]
    a.ack(*seqs)
    status = wait_status(a, "mailbox", 0)
    assert status["mailbox"] == 0 and status["sessions"] == 1
    pump([a, jc], 2 * silence)                      # pinging keeps a session
    a.sync()
    assert a.rejects == [] and jc.rejects == [] and a.seqs == seqs


#   --- redelivery after a takeover (§7.2, §8.6) -----------------------------------

def test_redelivery_after_a_takeover_goes_to_the_new_receiver_only(special):
    redeliver = 1.0
    connect = special(redeliver_ms=int(redeliver * 1000))
    jc = connect("jc.rheine", window=0)
    a = Agent(connect("soz.rheine", window=8))
    b = Agent(connect("soz.rheine", window=8))
    (s,) = mail(jc, "REDELIVER", 1)
    assert pump([a, b], WAIT, has_all(b, [s]))
    pump([a, b], 0.7 * redeliver)                   # b's copy is 0.7 s old
    assert b.seqs == [s]
    c = Agent(connect("soz.rheine", window=8))
    assert pump([a, b, c], WAIT, has_all(c, [s]))
    took_over = c.arrivals[0][0]
    # c does not acknowledge: s comes again, on c only, redeliver_ms apart
    assert pump([a, b, c], 3.5 * redeliver, lambda: c.seqs.count(s) >= 3), c.seqs
    times = [t for t, seq in c.arrivals]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert times[1] - took_over > 0.8 * redeliver, "sent again %.2f s after the takeover" % (
        times[1] - took_over)
    assert all(gap > 0.8 * redeliver for gap in gaps), gaps
    assert set(c.seqs) == {s} and b.seqs == [s] and a.seqs == []
    assert c.hdrs[s]["msg_id"] == b.hdrs[s]["msg_id"]
    b.ack(s)                                        # in flight on c: refused
    b.sync()
    assert new_rejects(b, 0) == [(BAD_ACK, "seqs[0]")]
    c.ack(s)
    assert wait_status(c, "mailbox", 0)["mailbox"] == 0
    copies = len(c.seqs)
    pump([a, b, c], 1.5 * redeliver)                # acknowledged: never again
    assert len(c.seqs) == copies and b.seqs == [s] and a.seqs == []
    assert c.rejects == []
