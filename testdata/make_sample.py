#!/usr/bin/env python3
"""Writes sample.raw: a deterministic 2 MiB disk of text, pseudo-random bytes and zero runs in
256 KiB pieces. sample.qcow2 is then made from it with qemu-img (see README.md)."""
import random
import sys

rng = random.Random(3)
out = bytearray()
for i in range(8):
    n = 256 << 10
    kind = i % 4
    if kind == 0:
        line = b"ims sample disk, piece %d\n" % i
        out += line * (n // len(line)) + bytes(n % len(line))
    elif kind == 1:
        out += rng.randbytes(n)
    elif kind == 2:
        out += bytes(n)
    else:
        out += rng.randbytes(n // 2) + bytes(n // 2)
with open(sys.argv[1] if len(sys.argv) > 1 else "sample.raw", "wb") as f:
    f.write(out)
