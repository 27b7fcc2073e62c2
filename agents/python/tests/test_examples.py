"""The two examples as a user runs them: follow_case.py follows a case while
send_referral.py sends a referral into it and waits for the ACCEPT."""
import json
import os
import subprocess
import sys
import threading
import time


EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def _example(name, broker, org, *args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name),
                             "--endpoint", broker.endpoint, "--broker-cert", broker.broker_cert,
                             "--cert", broker.cert_secret(org)] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _line(process, timeout=30):
    """The next stdout line of `process`, read with a deadline."""
    got = []
    reader = threading.Thread(target=lambda: got.append(process.stdout.readline()))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    assert got and got[0], "no output: %s" % (process.stderr.read() if process.poll() else "")
    return json.loads(got[0])


def test_send_referral_and_follow_case(broker, connect):
    follower = _example("follow_case.py", broker, "aa.rheine", "--case", "C-EX",
                        "--types", "REFERRAL,ACCEPT", "--idle", "30", "--unsubscribe")
    try:
        assert _line(follower)["subscribed"] == "s-C-EX"
        # aa.rheine takes part in the case once a message of the case reaches it
        jc = connect("jc.rheine")
        jc.send({"type": "REFERRAL", "recipient": "aa.rheine", "referral_id": "R-EX-0",
                 "case_id": "C-EX", "subject": "p-ex", "purpose": "benefits",
                 "legal_basis": {"kind": "statute", "citation": "SGB X §69(1)1"}}, b"")
        first = _line(follower)
        assert first["type"] == "REFERRAL" and first["referral_id"] == "R-EX-0"

        sender = _example("send_referral.py", broker, "jc.rheine", "--to", "soz.rheine",
                          "--referral", "R-EX-1", "--case", "C-EX", "--subject", "p-ex",
                          "--purpose", "benefits", "--statute", "SGB X §69(1)1",
                          "--payload", "-", "--wait", "30", stdin=subprocess.PIPE)
        sender.stdin.write("Termin gewünscht")
        sender.stdin.close()
        receipt = _line(sender)
        assert receipt["receipt"] > 0 and receipt["dup"] is False
        # the recipient opens the referral and accepts
        soz = connect("soz.rheine")
        deadline = time.monotonic() + 30
        while True:
            d = soz.recv(timeout=1)
            assert time.monotonic() < deadline, "soz.rheine got no R-EX-1"
            if d is None:
                continue
            soz.ack(d.seq)
            if d.hdr.get("referral_id") == "R-EX-1":
                break
        assert d.payload == "Termin gewünscht".encode() and d.seq == receipt["receipt"]
        soz.send({"type": "ACCEPT", "recipient": "jc.rheine", "referral_id": "R-EX-1"})
        answer = _line(sender)
        assert answer["answer"] == "ACCEPT"
        assert sender.wait(30) == 0, sender.stderr.read()
        # the follower saw the referral (without its payload) and the ACCEPT
        events = [_line(follower), _line(follower)]
        assert [(e["type"], e["referral_id"]) for e in events] == [
            ("REFERRAL", "R-EX-1"), ("ACCEPT", "R-EX-1")]
        assert events[0]["payload_base64"] == ""
    finally:
        follower.terminate()
        follower.wait(30)


def test_examples_refuse_clearly(broker):
    sender = _example("send_referral.py", broker, "jc.rheine", "--to", "jc.nowhere",
                      "--referral", "R-EX-2", "--case", "C-EX", "--subject", "p-ex",
                      "--purpose", "benefits", "--statute", "SGB X §69(1)1")
    out, err = sender.communicate(timeout=60)
    assert sender.returncode == 1 and "UNKNOWN_RECIPIENT" in err, out + err
