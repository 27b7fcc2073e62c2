"""kim — a Python client for the kim broker, written from proto/PROTOCOL.md.

    import kim
    with kim.Client("tcp://broker:7700", "broker.cert", "kim.rheine.cert_secret") as c:
        c.send({"type": "REFERRAL", "recipient": "jc.rheine", ...}, b"details")
        for d in c.deliveries(timeout=5):
            ...
            c.ack(d.seq)

Needs Debian's python3-zmq, python3-msgpack and python3-nacl.
"""
from .certs import load_cert, load_sign_key, write_cert
from .client import Client, Delivery, Rejected, KimError, canonical_header, sign_header

__all__ = ["Client", "Delivery", "Rejected", "KimError", "canonical_header", "sign_header",
           "load_cert", "load_sign_key", "write_cert"]
__version__ = "0.1.0"
