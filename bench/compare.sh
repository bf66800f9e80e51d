#!/usr/bin/env bash
# bench/compare.sh [DIR] [ROUNDS]: times ims against qemu-img on the same inputs in one run,
# interleaved, ROUNDS rounds (default 3), and prints the median of each, the ratio
# (qemu-img / ims: above 1 means ims is faster), output sizes and peak RSS.
# Inputs come from bench/make-input.sh DIR (made first if missing). Outputs go to DIR/out and
# are removed before every run, so no run pays for truncating another's file.
set -uo pipefail
dir=${1:-bench-data}; rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
ims=${IMS_BIN:-$here/../target/release/ims}
[ -x "$ims" ] || (cd "$here/.." && cargo build --release -q) || exit 1
[ -f "$dir/disk.raw" ] || bash "$here/make-input.sh" "$dir" || exit 1
out="$dir/out"; mkdir -p "$out"

# job NAME QEMU_ARGS | IMS_ARGS  (an empty QEMU side marks an ims-only job)
jobs=(
  "raw->qcow2|-f raw -O qcow2 $dir/disk.raw|-f raw -O qcow2 $dir/disk.raw"
  "raw->qcow2 -c zlib|-c -f raw -O qcow2 $dir/disk.raw|-c -f raw -O qcow2 $dir/disk.raw"
  "raw->qcow2 -c zstd|-c -o compression_type=zstd -f raw -O qcow2 $dir/disk.raw|-c -o compression_type=zstd -f raw -O qcow2 $dir/disk.raw"
  "raw->vmdk stream|-f raw -O vmdk -o subformat=streamOptimized $dir/disk.raw|-f raw -O vmdk -o subformat=streamOptimized $dir/disk.raw"
  "raw->vhd dynamic|-f raw -O vpc $dir/disk.raw|-f raw -O vhd $dir/disk.raw"
  "qcow2 zstd->raw|-f qcow2 -O raw $dir/disk.zstd.qcow2|-f qcow2 -O raw $dir/disk.zstd.qcow2"
  "vmdk stream->qcow2|-f vmdk -O qcow2 $dir/disk.stream.vmdk|-f vmdk -O qcow2 $dir/disk.stream.vmdk"
  "vhd->qcow2|-f vpc -O qcow2 $dir/disk.vhd|-f vhd -O qcow2 $dir/disk.vhd"
  "raw->zvhd2 zstd||-f raw -O zvhd2 $dir/disk.raw"
)

# run TOOL ARGS... OUTPUT: prints "seconds peak_kib output_bytes"
run() {
  local tool=$1; shift
  local dst=${!#}
  rm -f "$dst"; sync
  /usr/bin/time -o "$out/time" -f '%e %M' "$tool" convert "$@" >/dev/null 2>&1
  echo "$(tail -1 "$out/time") $(stat -c %s "$dst" 2>/dev/null || echo 0)"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-20s %9s %9s %7s %14s %14s %10s %10s\n' job qemu-img ims ratio qemu-size ims-size qemu-KiB ims-KiB
for j in "${jobs[@]}"; do
  IFS='|' read -r name qargs iargs <<<"$j"
  qt=(); it=(); qm=0; im=0; qs=0; is=0
  for ((r = 0; r < rounds; r++)); do
    if [ -n "$qargs" ]; then
      # shellcheck disable=SC2086
      read -r s m z < <(run qemu-img $qargs "$out/q.out"); qt+=("$s"); qm=$m; qs=$z
    fi
    # shellcheck disable=SC2086
    read -r s m z < <(run "$ims" $iargs "$out/i.out"); it+=("$s"); im=$m; is=$z
  done
  ims_med=$(printf '%s\n' "${it[@]}" | median)
  if [ -n "$qargs" ]; then
    q_med=$(printf '%s\n' "${qt[@]}" | median)
    ratio=$(awk -v q="$q_med" -v i="$ims_med" 'BEGIN {printf "%.2f", (i > 0 ? q / i : 0)}')
  else
    q_med=-; ratio=-; qs=-; qm=-
  fi
  printf '%-20s %9s %9s %7s %14s %14s %10s %10s\n' "$name" "$q_med" "$ims_med" "$ratio" "$qs" "$is" "$qm" "$im"
done
rm -rf "$out"
