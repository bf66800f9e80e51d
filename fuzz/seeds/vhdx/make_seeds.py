"""Compacts an ims-written dynamic VHDX (1 MiB blocks, 1 MiB log) into a small fuzz seed: no
log, the BAT at 1 MiB, the metadata at 2 MiB, the blocks from 3 MiB. With a third argument, also
a 1 MiB log after the blocks holding one entry (rewriting the BAT's first sector with what it
holds) and the headers' LogGuid set, so the replay is exercised.

    python3 -c "d=bytearray(1<<20); d[:4096]=b'x'*4096; d[-512:]=b'y'*512; open('one.raw','wb').write(d)"
    ims convert -f raw -O vhdx -o block_size=1M one.raw one.vhdx
    python3 make_seeds.py one.vhdx compact.vhdx
    python3 make_seeds.py one.vhdx compact-log.vhdx log
"""
import struct, sys
P = 0x82F63B78
T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ P if c & 1 else c >> 1
    T.append(c)
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
def reseal(b, at, n):
    b[at+4:at+8] = b"\0\0\0\0"
    b[at+4:at+8] = struct.pack("<I", crc32c(bytes(b[at:at+n])))
MIB = 1 << 20
src = bytearray(open(sys.argv[1], "rb").read())
out = bytearray(src[:MIB])
out += src[2*MIB:3*MIB]      # BAT
out += src[3*MIB:4*MIB]      # metadata
blocks = src[4*MIB:]
out += blocks
# BAT entries: shift stored blocks down by 1 MiB.
for i in range(4096):
    e, = struct.unpack_from("<Q", out, MIB + 8*i)
    if e & 7 == 6:
        struct.pack_into("<Q", out, MIB + 8*i, ((e >> 20) - 1) << 20 | 6)
for t in (192 << 10, 256 << 10):
    struct.pack_into("<Q", out, t + 16 + 16, MIB)       # BAT offset
    struct.pack_into("<Q", out, t + 16 + 32 + 16, 2*MIB) # metadata offset
    reseal(out, t, 64 << 10)
log = len(sys.argv) > 3
for h in (64 << 10, 128 << 10):
    if log:
        out[h+48:h+64] = bytes(range(1, 17))
        struct.pack_into("<IQ", out, h + 68, MIB, len(out))
    else:
        struct.pack_into("<IQ", out, h + 68, 0, MIB)
    reseal(out, h, 4096)
if log:
    at = len(out)
    e = bytearray(8192)
    e[0:4] = b"loge"
    struct.pack_into("<IIQI", e, 8, 8192, 0, 1, 1)
    e[32:48] = bytes(range(1, 17))
    struct.pack_into("<QQ", e, 48, 0, at + MIB)
    d = 64
    e[d:d+4] = b"desc"
    struct.pack_into("<QQ", e, d + 16, MIB, 1)  # rewrite the BAT's first sector
    sector = bytes(out[MIB:MIB+4096])
    e[d+4:d+8] = sector[4092:]
    e[d+8:d+16] = sector[:8]
    e[4096:4100] = b"data"
    struct.pack_into("<I", e, 4100, 0)
    e[4104:8188] = sector[8:4092]
    struct.pack_into("<I", e, 8188, 1)
    e[4:8] = struct.pack("<I", crc32c(bytes(e)))
    out += e + bytes(MIB - len(e))
open(sys.argv[2], "wb").write(out)
