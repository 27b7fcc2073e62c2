#!/usr/bin/python3
"""send_referral.py — send one sealed referral with the kim Python client and
wait for the recipient's answer.

Example:
    send_referral.py --endpoint tcp://broker:7700 --broker-cert broker.cert \\
        --cert kim.rheine.cert_secret --to jc.rheine --referral R-17 --case C-42 \\
        --subject p-3f9a1c --purpose employment --consent G-42-1 --payload details.txt

The payload (a file, or '-' for stdin) is sealed to the recipient's key from
the broker's directory; with NAME.sign_secret beside the certificate the
header is signed. Prints the RECEIPT and, with --wait, the answer as JSON.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kim  # noqa: E402

ANSWERS = ("ACCEPT", "DECLINE", "NOT_COMPETENT", "FORWARD")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="the broker, tcp://host:port or ipc://path")
    p.add_argument("--broker-cert", required=True, help="the broker's public certificate")
    p.add_argument("--cert", required=True, help="your organisation's NAME.cert_secret")
    p.add_argument("--to", required=True, help="the recipient organisation")
    p.add_argument("--referral", required=True, help="the referral id")
    p.add_argument("--case", required=True, help="the case id")
    p.add_argument("--subject", required=True, help="the person's pseudonym (never a name)")
    p.add_argument("--purpose", required=True, help="purpose code, e.g. employment")
    basis = p.add_mutually_exclusive_group(required=True)
    basis.add_argument("--consent", help="legal basis: a registered consent id")
    basis.add_argument("--statute", help="legal basis: a statute, e.g. 'SGB X §69(1)1'")
    p.add_argument("--payload", help="file with the referral details ('-': stdin)")
    p.add_argument("--wait", type=float, default=0,
                   help="seconds to wait for the answer (default: do not wait)")
    args = p.parse_args()

    payload = b""
    if args.payload == "-":
        payload = sys.stdin.buffer.read()
    elif args.payload:
        with open(args.payload, "rb") as f:
            payload = f.read()
    legal_basis = ({"kind": "consent", "consent_id": args.consent} if args.consent
                   else {"kind": "statute", "citation": args.statute})
    hdr = {"type": "REFERRAL", "recipient": args.to, "referral_id": args.referral,
           "case_id": args.case, "subject": args.subject, "purpose": args.purpose,
           "legal_basis": legal_basis}
    try:
        with kim.Client(args.endpoint, args.broker_cert, args.cert) as client:
            receipt = client.send(hdr, payload)
            print(json.dumps({"receipt": receipt["seq"], "msg_id": receipt["msg_id"],
                              "dup": bool(receipt.get("dup"))}), flush=True)
            if args.wait <= 0:
                return 0
            for d in client.deliveries(timeout=args.wait):
                client.ack(d.seq)
                if d.hdr.get("referral_id") == args.referral and d.hdr["type"] in ANSWERS:
                    print(json.dumps({"answer": d.hdr["type"], "seq": d.seq,
                                      "code": d.hdr.get("code", "")}))
                    return 0
            print("no answer within %g s" % args.wait, file=sys.stderr)
            return 1
    except kim.Rejected as e:
        print("refused: %s" % e, file=sys.stderr)
        return 1
    except (kim.KimError, OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
