"""Writes small.raw: a 3 MiB disk with a text pattern in its first 64 KiB, 4 KiB of bytes
0..255 repeated at 2 MiB + 512, and a last sector of 0xee (the VHDX fixtures' source)."""
import sys

size = 3 << 20
disk = bytearray(size)
line = b"ims vhdx fixture: the first 64 KiB hold this line, over and over.\n"
head = (line * (65536 // len(line) + 1))[:65536]
disk[0:65536] = head
disk[(2 << 20) + 512:(2 << 20) + 512 + 4096] = bytes(range(256)) * 16
disk[size - 512:] = b"\xee" * 512
with open(sys.argv[1], "wb") as f:
    f.write(disk)
