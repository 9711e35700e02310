#!/usr/bin/env python3
"""Independent DSSE v1 / Ed25519 implementation of docs/protocol.md section 2, used to check that
kiosk-admin's envelopes and keys interoperate with a stock library (python `cryptography`).

  dsse_verify.py verify --trust TRUST.json --type ROLE ENVELOPE   print the payload, exit 1 if refused
  dsse_verify.py sign --key PEM [--key PEM ...] --type ROLE FILE  print the envelope of FILE's bytes
  dsse_verify.py keygen --out PEM                                 write a PKCS#8 v1 key, print its trust entry
"""
import argparse
import base64
import hashlib
import json
import os
import sys

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
except ImportError:
    sys.stderr.write("python module 'cryptography' is missing: pip install cryptography\n")
    sys.exit(3)


def payload_type(role):
    return "application/vnd.kiosk.%s+json" % role


def pae(ptype, body):
    t = ptype.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def raw_public(pub):
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(raw):
    return hashlib.sha256(raw).hexdigest()


def verify(args):
    with open(args.trust, "rb") as f:
        trust = json.load(f)
    with open(args.envelope, "rb") as f:
        env = json.load(f)
    keys = {}
    for k in trust["keys"]:
        raw = base64.b64decode(k["public_key"], validate=True)
        if keyid(raw) != k["keyid"]:
            return fail("keyid mismatch for %s" % k["keyid"])
        keys[k["keyid"]] = (Ed25519PublicKey.from_public_bytes(raw), set(k["roles"]))
    if env["payloadType"] != payload_type(args.type):
        return fail("wrong payloadType %r" % env["payloadType"])
    body = base64.b64decode(env["payload"], validate=True)
    message = pae(env["payloadType"], body)
    good = set()
    for s in env["signatures"]:
        entry = keys.get(s["keyid"])
        if entry is None or args.type not in entry[1]:
            continue
        try:
            entry[0].verify(base64.b64decode(s["sig"], validate=True), message)
            good.add(s["keyid"])
        except (InvalidSignature, ValueError):
            continue
    need = trust["thresholds"][args.type]
    if len(good) < need:
        return fail("below threshold: %d of %d" % (len(good), need))
    sys.stdout.buffer.write(body)
    return 0


def sign(args):
    with open(args.file, "rb") as f:
        body = f.read()
    ptype = payload_type(args.type)
    sigs = []
    for path in args.key:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        sig = key.sign(pae(ptype, body))
        sigs.append({"keyid": keyid(raw_public(key.public_key())), "sig": base64.b64encode(sig).decode()})
    env = {"payloadType": ptype, "payload": base64.b64encode(body).decode(), "signatures": sigs}
    print(json.dumps(env))
    return 0


def keygen(args):
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = raw_public(key.public_key())
    print(json.dumps({"keyid": keyid(raw), "public_key": base64.b64encode(raw).decode(), "roles": []}))
    return 0


def fail(reason):
    sys.stderr.write("refused: %s\n" % reason)
    return 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--trust", required=True)
    v.add_argument("--type", required=True)
    v.add_argument("envelope")
    s = sub.add_parser("sign")
    s.add_argument("--key", action="append", required=True)
    s.add_argument("--type", required=True)
    s.add_argument("file")
    k = sub.add_parser("keygen")
    k.add_argument("--out", required=True)
    args = p.parse_args()
    return {"verify": verify, "sign": sign, "keygen": keygen}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
