"""Key files: zcert (ZeroMQ's ZPL certificates, as `kim keygen` writes them).

A NAME.cert holds `curve/public-key`, a NAME.cert_secret also
`curve/secret-key`; a NAME.sign_secret holds the Ed25519 signing key as
`sign/public-key` and `sign/secret-key` (the 32-byte seed), all in Z85.
"""
import os

import zmq
import zmq.utils.z85


def _zpl_keys(path):
    """{"section/key": value} of a small ZPL file (two levels are all zcert uses)."""
    values, section = {}, ""
    with open(path, "r", encoding="utf-8") as f:
        for raw in f:
            #   Z85 keys may hold '#': only whole comment lines are comments here
            line = "" if raw.lstrip().startswith("#") else raw.rstrip()
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            text = line.strip()
            if "=" not in text:
                if indent == 0:
                    section = text
                continue
            key, value = (part.strip() for part in text.split("=", 1))
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[section + "/" + key if indent else key] = value
    return values


def _z85_key(values, name, path):
    text = values.get(name)
    if text is None:
        raise ValueError("%s has no %s" % (path, name))
    if len(text) != 40:
        raise ValueError("%s: %s is not a 40-character Z85 key" % (path, name))
    return text


def load_cert(path, secret=False):
    """(public_z85, secret_z85 or None) of a zcert file; checks that they belong together."""
    values = _zpl_keys(path)
    public = _z85_key(values, "curve/public-key", path)
    if not secret:
        return public, None
    secret_key = _z85_key(values, "curve/secret-key", path)
    if zmq.curve_public(secret_key.encode()).decode() != public:
        raise ValueError("%s: curve/public-key does not belong to curve/secret-key" % path)
    return public, secret_key


def load_sign_key(path):
    """The 32-byte Ed25519 seed of a NAME.sign_secret file."""
    import nacl.signing
    values = _zpl_keys(path)
    seed = zmq.utils.z85.decode(_z85_key(values, "sign/secret-key", path))
    public = zmq.utils.z85.decode(_z85_key(values, "sign/public-key", path))
    if bytes(nacl.signing.SigningKey(seed).verify_key) != public:
        raise ValueError("%s: sign/public-key does not belong to sign/secret-key" % path)
    return seed


def write_cert(stem, name):
    """Makes a CURVE key pair: STEM.cert and STEM.cert_secret (0600). Returns the public key."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    head = "metadata\n    name = \"%s\"\n    created-by = \"kim-python\"\ncurve\n" % name
    with open(stem + ".cert", "w", encoding="utf-8") as f:
        f.write(head + "    public-key = \"%s\"\n" % public)
    fd = os.open(stem + ".cert_secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(head + "    public-key = \"%s\"\n    secret-key = \"%s\"\n" % (public, secret))
    return public


def write_sign_key(stem):
    """Makes an Ed25519 key pair: STEM.sign_secret (0600). Returns the public key in Z85."""
    import nacl.signing
    key = nacl.signing.SigningKey.generate()
    public = zmq.utils.z85.encode(bytes(key.verify_key)).decode()
    secret = zmq.utils.z85.encode(bytes(key)).decode()
    fd = os.open(stem + ".sign_secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("sign\n    public-key = \"%s\"\n    secret-key = \"%s\"\n" % (public, secret))
    return public
