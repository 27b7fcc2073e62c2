"""kim — a Python client for the kim broker, written from proto/PROTOCOL.md.

    import kim
    with kim.Client("tcp://broker:7700", "broker.cert", "kim.rheine.cert_secret") as c:
        c.send({"type": "REFERRAL", "recipient": "jc.rheine", ...}, b"details")
        for d in c.deliveries(timeout=5):
            ...
            c.ack(d.seq)

Many messages at once: send_many() sends them in SEND_BATCH frames (protocol
version 2, which the client offers by default and the broker chooses) and
returns, per message in order, its RECEIPT or its refusal, a kim.Rejected
returned rather than raised:

    outbox = [({"type": "REFERRAL", "recipient": "jc.rheine", ...}, b"details"), ...]
    for (hdr, _), r in zip(outbox, c.send_many(outbox)):
        if isinstance(r, kim.Rejected):
            print(hdr["referral_id"], "refused:", r.reason, r.path)
        else:
            print(hdr["referral_id"], "stored as", r["seq"], "(again)" if r.get("dup") else "")

kim.Client(..., versions=(1,)) insists on protocol version 1; send_many then
sends one SEND after another, a few ahead of their answers.

Needs Debian's python3-zmq, python3-msgpack and python3-nacl.
"""
from .certs import load_cert, load_sign_key, write_cert
from .client import Client, Delivery, Directory, Rejected, KimError, canonical_header, sign_header

__all__ = ["Client", "Delivery", "Directory", "Rejected", "KimError", "canonical_header", "sign_header",
           "load_cert", "load_sign_key", "write_cert"]
__version__ = "0.2.0"
