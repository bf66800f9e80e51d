#!/usr/bin/env bash
# bench/ab.sh OLD_IMS NEW_IMS [DIR] [ROUNDS]: two builds of ims (before and after a change) on
# the same inputs in one run: each job ROUNDS times per build (default 5), the builds
# alternating who goes first, after one uncounted run each; prints the medians and their ratio
# (old / new: above 1 means the new build is faster), with every run's time.
# Inputs come from bench/make-input.sh DIR (default bench-data). JOBS= filters by name.
set -uo pipefail
OLD=${1:?usage: bench/ab.sh OLD_IMS NEW_IMS [DIR] [ROUNDS]}; NEW=${2:?usage: bench/ab.sh OLD_IMS NEW_IMS [DIR] [ROUNDS]}
dir=${3:-bench-data}; rounds=${4:-5}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$dir/disk.raw" ] || bash "$here/make-input.sh" "$dir" || exit 1
out=$dir/out; mkdir -p "$out"
jobs=(
  "raw->qcow2|-f raw -O qcow2 $dir/disk.raw"
  "raw->qcow2 -c zstd|-c -o compression_type=zstd -f raw -O qcow2 $dir/disk.raw"
  "raw->vmdk stream|-f raw -O vmdk -o subformat=streamOptimized $dir/disk.raw"
  "raw->vhd dynamic|-f raw -O vhd $dir/disk.raw"
  "qcow2->raw|-f qcow2 -O raw $dir/disk.qcow2"
  "qcow2 zlib->raw|-f qcow2 -O raw $dir/disk.zlib.qcow2"
  "qcow2 zstd->raw|-f qcow2 -O raw $dir/disk.zstd.qcow2"
  "vmdk stream->qcow2|-f vmdk -O qcow2 $dir/disk.stream.vmdk"
  "vmdk->raw|-f vmdk -O raw $dir/disk.vmdk"
  "vhd->qcow2|-f vhd -O qcow2 $dir/disk.vhd"
  "raw->zvhd2 zstd|-f raw -O zvhd2 $dir/disk.raw"
)
[ -n "${JOBS:-}" ] && mapfile -t jobs < <(printf '%s\n' "${jobs[@]}" | grep -E "$JOBS")
# run IMS ARGS: the elapsed seconds of one conversion into a fresh output
run() {
  rm -f "$out/x.out"; sync
  # shellcheck disable=SC2086 # ARGS is a word list
  /usr/bin/time -o "$out/t" -f '%e' "$1" convert $2 "$out/x.out" >/dev/null 2>&1 || echo "failed: $1 convert $2" >&2
  tail -1 "$out/t"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-22s %8s %8s %7s\n' job old new ratio
for j in "${jobs[@]}"; do
  name=${j%%|*}; args=${j#*|}
  run "$OLD" "$args" >/dev/null; run "$NEW" "$args" >/dev/null
  o=(); n=()
  for i in $(seq $rounds); do
    if (( i % 2 )); then o+=($(run "$OLD" "$args")); n+=($(run "$NEW" "$args")); else n+=($(run "$NEW" "$args")); o+=($(run "$OLD" "$args")); fi
  done
  mo=$(printf '%s\n' "${o[@]}" | median); mn=$(printf '%s\n' "${n[@]}" | median)
  printf '%-22s %8s %8s %7.3f   old:%s new:%s\n' "$name" "$mo" "$mn" "$(echo "$mo / $mn" | bc -l)" "${o[*]}" "${n[*]}"
done
