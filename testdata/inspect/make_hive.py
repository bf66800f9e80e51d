#!/usr/bin/env python3
"""Writes a small Windows SOFTWARE registry hive (regf) naming a product and build, laid out as
Windows lays one out: base block, one hive bin, nk keys with compressed names, lh subkey lists,
vk values. Usage: make_hive.py OUT"""
import struct
import sys

bins = bytearray(b"hbin" + bytes(28))


def cell(data: bytes) -> int:
    off = len(bins)
    size = (len(data) + 4 + 7) // 8 * 8
    bins.extend(struct.pack("<i", -size) + data)
    bins.extend(bytes(off + size - len(bins)))
    return off


def sz(s: str) -> bytes:
    return (s + "\0").encode("utf-16-le")


def key(name: str, subkeys, values) -> int:
    lst = 0xFFFFFFFF
    if subkeys:
        lst = cell(b"lh" + struct.pack("<H", len(subkeys)) + b"".join(struct.pack("<II", k, 0) for k in subkeys))
    vks = []
    for vname, ty, data in values:
        if len(data) <= 4:
            head = struct.pack("<I", len(data) | 0x80000000) + data.ljust(4, b"\0")
        else:
            head = struct.pack("<II", len(data), cell(data))
        vks.append(cell(b"vk" + struct.pack("<H", len(vname)) + head + struct.pack("<IHH", ty, 1, 0) + vname.encode()))
    vlist = cell(b"".join(struct.pack("<I", v) for v in vks)) if vks else 0xFFFFFFFF
    nk = bytearray(76)
    nk[0:4] = b"nk" + struct.pack("<H", 0x20)
    struct.pack_into("<I", nk, 20, len(subkeys))
    struct.pack_into("<I", nk, 28, lst)
    struct.pack_into("<I", nk, 36, len(values))
    struct.pack_into("<I", nk, 40, vlist)
    struct.pack_into("<H", nk, 72, len(name))
    return cell(bytes(nk) + name.encode())


cv = key("CurrentVersion", [], [
    ("ProductName", 1, sz("Windows Server 2022 Datacenter")),
    ("CurrentBuildNumber", 1, sz("20348")),
    ("CurrentMajorVersionNumber", 4, struct.pack("<I", 10)),
    ("CurrentMinorVersionNumber", 4, struct.pack("<I", 0)),
])
nt = key("Windows NT", [cv], [])
ms = key("Microsoft", [nt], [])
root = key("ROOT", [ms], [])
length = (len(bins) + 4095) // 4096 * 4096
bins.extend(bytes(length - len(bins)))
struct.pack_into("<I", bins, 8, length)
base = bytearray(4096)
base[0:4] = b"regf"
struct.pack_into("<IIII", base, 20, 1, 5, 0, 1)
struct.pack_into("<II", base, 36, root, length)
with open(sys.argv[1], "wb") as f:
    f.write(bytes(base) + bytes(bins))
