#!/usr/bin/python3
"""follow_case.py — follow a case with the kim Python client: print where its
referrals stand, subscribe to its events and print each as a JSON line.

Example:
    follow_case.py --endpoint tcp://broker:7700 --broker-cert broker.cert \\
        --cert kim.rheine.cert_secret --case C-42 --types ACCEPT,DECLINE,OUTCOME

The subscription is durable: events logged while this program was not running
arrive when it starts again. Stops after --idle seconds without an event
(default: runs until interrupted); --unsubscribe ends the subscription.
"""
import argparse
import base64
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kim  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="the broker, tcp://host:port or ipc://path")
    p.add_argument("--broker-cert", required=True, help="the broker's public certificate")
    p.add_argument("--cert", required=True, help="your organisation's NAME.cert_secret")
    p.add_argument("--case", required=True, help="the case id")
    p.add_argument("--types", default="", help="only these message types (comma-separated)")
    p.add_argument("--idle", type=float, default=0,
                   help="stop after this many seconds without an event (0: never)")
    p.add_argument("--unsubscribe", action="store_true", help="end the subscription on exit")
    args = p.parse_args()
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    sub_id = "s-" + args.case
    try:
        with kim.Client(args.endpoint, args.broker_cert, args.cert) as client:
            for info in client.referral_query(case_id=args.case):
                print(json.dumps({"referral": info["referral_id"], "state": info["state"],
                                  "sender": info["sender"], "recipient": info["recipient"]}))
            head = client.subscribe(sub_id, case_id=args.case, types=types)
            print(json.dumps({"subscribed": sub_id, "after_seq": head}), flush=True)
            try:
                while True:
                    d = client.recv(timeout=args.idle if args.idle > 0 else 3600)
                    if d is None:
                        if args.idle > 0:
                            break
                        continue
                    hdr = d.hdr
                    print(json.dumps({
                        "seq": d.seq, "type": hdr["type"], "sender": hdr.get("sender"),
                        "recipient": hdr.get("recipient"), "referral_id": hdr.get("referral_id"),
                        "code": hdr.get("code", ""), "sealed_error": d.sealed_error,
                        "payload_base64": base64.b64encode(d.payload).decode()}), flush=True)
                    client.ack(d.seq)               # printed: stored as far as we go
            except KeyboardInterrupt:
                pass
            if args.unsubscribe:
                client.unsubscribe(sub_id)
        return 0
    except kim.Rejected as e:
        print("refused: %s" % e, file=sys.stderr)
        return 1
    except (kim.KimError, OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
