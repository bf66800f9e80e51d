#!/usr/bin/env python3
"""Writes formats.raw: a deterministic disk of 3 MiB + 64 KiB for the VDI, QED and QCOW (version 1)
fixtures: text at the start, zeros (a whole unallocated 1 MiB VDI block among them), 64 KiB of
pseudo-random bytes inside block 2, and text in the partial last block. The fixtures are then
made from it with qemu-img (see ../README.md)."""
import random
import sys

K = 1024
M = K * K
rng = random.Random(18)
out = bytearray(3 * M + 64 * K)
text = b"".join(b"ims vdi/qed/qcow fixture, line %05d\n" % i for i in range(2000))
out[0 : 64 * K] = text[: 64 * K]
out[2 * M + 512 * K : 2 * M + 576 * K] = rng.randbytes(64 * K)
out[3 * M : 3 * M + 64 * K] = text[-64 * K :]
with open(sys.argv[1] if len(sys.argv) > 1 else "formats.raw", "wb") as f:
    f.write(out)
