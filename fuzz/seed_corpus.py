#!/usr/bin/env python3
"""Writes the seed corpus for the `stun_roundtrip` fuzz target.

Seeds: every `pub const NAME: &[u8] = &[...]` test vector in
crates/proto/tests/vectors/mod.rs (RFC 5769, RFC 8489 B.1 and its published form), plus a few
hand-built messages that reach attribute types the vectors lack, and ChannelData and
non-STUN datagrams for the demultiplexer.

Usage: python3 fuzz/seed_corpus.py [OUT_DIR]   (default: fuzz/corpus/stun_roundtrip)
"""

import pathlib
import re
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "crates/proto/tests/vectors/mod.rs"
COOKIE = 0x2112A442
TID = bytes(range(1, 13))


def rfc_vectors():
    text = VECTORS.read_text()
    pattern = re.compile(r"pub const (\w+): &\[u8\] = &\[(.*?)\];", re.S)
    for name, body in pattern.findall(text):
        body = re.sub(r"//[^\n]*", "", body)
        yield name.lower(), bytes(int(b, 16) for b in re.findall(r"0x[0-9a-fA-F]{2}", body))


def tlv(typ, value):
    pad = (-len(value)) % 4
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * pad


def message(msg_type, *attrs):
    body = b"".join(attrs)
    return struct.pack("!HHI", msg_type, len(body), COOKIE) + TID + body


def xor_v4(ip, port):
    x = struct.unpack("!I", bytes(ip))[0] ^ COOKIE
    return struct.pack("!BBHI", 0, 1, port ^ (COOKIE >> 16), x)


def synthetic():
    yield "binding_request_empty", message(0x0001)
    yield "allocate_request", message(
        0x0003,
        tlv(0x0019, bytes([17, 0, 0, 0])),  # REQUESTED-TRANSPORT UDP
        tlv(0x000D, struct.pack("!I", 600)),  # LIFETIME
        tlv(0x0018, b"\x80"),  # EVEN-PORT
        tlv(0x001A, b""),  # DONT-FRAGMENT
        tlv(0x0017, bytes([1, 0, 0, 0])),  # REQUESTED-ADDRESS-FAMILY
        tlv(0x8000, bytes([2, 0, 0, 0])),  # ADDITIONAL-ADDRESS-FAMILY
        tlv(0x0006, b"user"),
        tlv(0x0014, b"example.org"),
        tlv(0x0015, b"nonce-123"),
    )
    yield "allocate_error_401", message(
        0x0113,
        tlv(0x0009, bytes([0, 0, 4, 1]) + b"Unauthorized"),
        tlv(0x8002, struct.pack("!HH", 2, 0) + struct.pack("!HH", 1, 0)),  # PASSWORD-ALGORITHMS
        tlv(0x000A, struct.pack("!HHH", 0x7F01, 0x0033, 0x1234)),  # UNKNOWN-ATTRIBUTES
        tlv(0x8001, bytes([2, 0, 4, 40]) + b"Address Family not Supported"),
    )
    yield "channel_bind_request", message(
        0x0009,
        tlv(0x000C, bytes([0x40, 0x01, 0, 0])),
        tlv(0x0012, xor_v4([192, 0, 2, 7], 5000)),
    )
    yield "data_indication", message(
        0x0017,
        tlv(0x0012, xor_v4([198, 51, 100, 1], 3478)),
        tlv(0x0013, b"payload bytes"),
        tlv(0x8004, bytes([0, 0, 3, 1]) + struct.pack("!I", 1400)),  # ICMP
    )
    yield "ice_check", message(
        0x0001,
        tlv(0x0024, struct.pack("!I", 0x6E0001FF)),
        tlv(0x802A, struct.pack("!Q", 0x0102030405060708)),
        tlv(0x0025, b""),
        tlv(0x0003, bytes([0, 0, 0, 6])),  # CHANGE-REQUEST
        tlv(0x0027, bytes([0x12, 0x34, 0, 0])),  # RESPONSE-PORT
        tlv(0x0026, b"\0" * 8),  # PADDING
        tlv(0x8003, b"turn.example.org"),  # ALTERNATE-DOMAIN
    )
    yield "channel_data", bytes([0x40, 0x01, 0x00, 0x05]) + b"hello\0\0\0"
    yield "dtls_like", bytes([22, 254, 253]) + b"\0" * 10
    yield "rtp_like", bytes([0x80, 0x60]) + b"\0" * 10


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "fuzz/corpus/stun_roundtrip"
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, data in list(rfc_vectors()) + list(synthetic()):
        (out / name).write_bytes(data)
        n += 1
    print(f"wrote {n} seeds to {out}")


if __name__ == "__main__":
    main()
