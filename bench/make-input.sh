#!/usr/bin/env bash
# bench/make-input.sh [DIR]: the benchmark inputs, made from this machine's own files.
#
#   DIR/disk.raw        a 4 GiB sparse raw disk: GPT, one Linux partition holding an ext4 made
#                       with `mkfs.ext4 -d` from a deterministic ~1 GiB sample of /usr (text,
#                       ELF binaries, already-compressed files) plus files with zero runs
#   DIR/disk.qcow2      qemu-img convert of it: plain, -c zlib, -c zstd,
#   DIR/disk.zlib.qcow2 vmdk monolithicSparse and streamOptimized, vhd dynamic and fixed
#   DIR/disk.zstd.qcow2
#   DIR/disk.vmdk DIR/disk.stream.vmdk DIR/disk.vhd DIR/disk.fixed.vhd
#
# Needs mkfs.ext4 and sgdisk (e2fsprogs, gdisk) and qemu-img; no network.
set -euo pipefail
dir=${1:-bench-data}
mkdir -p "$dir"
stage=$(mktemp -d "$dir/stage.XXXXXX"); trap 'rm -rf "$stage"' EXIT
budget=$((1024 << 20))

# A deterministic sample: regular files of /usr under 8 MiB in sorted path order, until the
# budget is spent, copied in one tar pipe.
# (awk stops reading early, so the pipe's earlier commands see SIGPIPE: not an error here.)
set +o pipefail
find /usr -xdev -type f -size -8M -printf '%s\t%p\0' 2>/dev/null | sort -z -t $'\t' -k2 |
  awk -v RS='\0' -v ORS='\0' -F '\t' -v budget=$budget '{ if (total + $1 > budget) exit; total += $1; print $2 }' |
  tar --null -T - -cf - 2>/dev/null | tar -xf - -C "$stage"
set -o pipefail
total=$(du -sb "$stage" | cut -f1)

# Zero runs, as real disks have them (preallocated logs, databases, swap files).
mkdir -p "$stage/var/lib/zeros"
for i in 1 2 3 4; do
  { head -c $((i << 20)) /dev/zero; printf 'record %d\n' "$i"; head -c $((i << 19)) /dev/zero; } > "$stage/var/lib/zeros/file$i"
done

raw="$dir/disk.raw"
rm -f "$raw"; truncate -s 4G "$raw"
sgdisk -n1:2048:0 -t1:8300 "$raw" >/dev/null
start=$(sgdisk -i1 "$raw" | awk '/First sector/{print $3}')
end=$(sgdisk -i1 "$raw" | awk '/Last sector/{print $3}')
mkfs.ext4 -q -F -U 0d2f6e10-6c1b-4f4e-9b59-6a2f1c3e5d70 -E offset=$((start * 512)),root_owner=0:0 \
  -d "$stage" "$raw" $(( (end - start + 1) / 2 ))k

q() { qemu-img convert -q -f raw "$@"; }
q -O qcow2 "$raw" "$dir/disk.qcow2"
q -c -O qcow2 "$raw" "$dir/disk.zlib.qcow2"
q -c -o compression_type=zstd -O qcow2 "$raw" "$dir/disk.zstd.qcow2"
q -O vmdk "$raw" "$dir/disk.vmdk"
q -O vmdk -o subformat=streamOptimized "$raw" "$dir/disk.stream.vmdk"
q -O vpc "$raw" "$dir/disk.vhd"
q -O vpc -o subformat=fixed "$raw" "$dir/disk.fixed.vhd"
echo "made $dir: $(du -sh "$raw" | cut -f1) allocated of 4 GiB, sample of $((total >> 20)) MiB from /usr"
