#!/usr/bin/env bash
# bench/compare.sh [DIR] [ROUNDS]: times ims against qemu-img on the same inputs in one run,
# each job ROUNDS times per tool (default 3; three times as many for jobs under 5 s, whose
# single runs vary most) after one uncounted run, and prints the median of each, the ratio
# (qemu-img / ims: above 1 means ims is faster), output sizes, peak RSS (KiB) and the ratio of
# the two fastest runs (best).
# Inputs come from bench/make-input.sh DIR (made first if missing). Outputs go to DIR/out and
# are removed before every run, so no run pays for another's file. Every run is
# logged to DIR/compare.log (elapsed, user and system seconds, peak memory).
#
# Then: raw->zvhd2 (ims only) against its bound, twice the single-core zstd level-3 speed on
# the same blocks (`zstd -b3 -T1`, in memory); peak memory on a 64 GiB sparse disk; and
# whether the output is the same for -j 1 and -j 2.
# Needs qemu-img, zstd (the CLI), python3 and GNU time (apt-get install qemu-utils zstd time).
set -uo pipefail
dir=${1:-bench-data}; rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
ims=${IMS_BIN:-$here/../target/release/ims}
[ -x "$ims" ] || (cd "$here/.." && cargo build --release -q) || exit 1
for tool in qemu-img zstd python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "compare.sh needs $tool (apt-get install qemu-utils zstd time)"; exit 1; }
done
[ -f "$dir/disk.raw" ] || bash "$here/make-input.sh" "$dir" || exit 1
out="$dir/out"; mkdir -p "$out"

# job NAME QEMU_ARGS | IMS_ARGS  (an empty QEMU side marks an ims-only job)
jobs=(
  "raw->qcow2|-f raw -O qcow2 $dir/disk.raw|-f raw -O qcow2 $dir/disk.raw"
  "raw->qcow2 -c zlib|-c -f raw -O qcow2 $dir/disk.raw|-c -f raw -O qcow2 $dir/disk.raw"
  "raw->qcow2 -c zstd|-c -o compression_type=zstd -f raw -O qcow2 $dir/disk.raw|-c -o compression_type=zstd -f raw -O qcow2 $dir/disk.raw"
  "raw->vmdk stream|-f raw -O vmdk -o subformat=streamOptimized $dir/disk.raw|-f raw -O vmdk -o subformat=streamOptimized $dir/disk.raw"
  "raw->vhd dynamic|-f raw -O vpc $dir/disk.raw|-f raw -O vhd $dir/disk.raw"
  "qcow2->raw|-f qcow2 -O raw $dir/disk.qcow2|-f qcow2 -O raw $dir/disk.qcow2"
  "qcow2 zlib->raw|-f qcow2 -O raw $dir/disk.zlib.qcow2|-f qcow2 -O raw $dir/disk.zlib.qcow2"
  "qcow2 zstd->raw|-f qcow2 -O raw $dir/disk.zstd.qcow2|-f qcow2 -O raw $dir/disk.zstd.qcow2"
  "vmdk stream->qcow2|-f vmdk -O qcow2 $dir/disk.stream.vmdk|-f vmdk -O qcow2 $dir/disk.stream.vmdk"
  "vhd->qcow2|-f vpc -O qcow2 $dir/disk.vhd|-f vhd -O qcow2 $dir/disk.vhd"
  "raw->zvhd2 zstd||-f raw -O zvhd2 $dir/disk.raw"
)
[ -n "${JOBS:-}" ] && mapfile -t jobs < <(printf '%s\n' "${jobs[@]}" | grep -E "$JOBS")

# run TOOL ARGS... OUTPUT: prints "seconds peak_kib output_bytes"
run() {
  local tool=$1; shift
  local dst=${!#}
  # Both tools' outputs go, then sync: no run waits for writing back the other's output, and
  # every run starts right after the last one's output is freed. On a VM with free page
  # reporting memory freed a second or two earlier has gone back to the host, and writing into
  # it costs a host fault per page: measured, ims's qcow2->raw took 0.35-0.47 s when it ran after
  # a sync that wrote back qemu-img's output, 0.26-0.28 s when it did not.
  rm -f "$out/q.out" "$out/i.out"; sync
  /usr/bin/time -o "$out/time" -f '%e %M %U %S' "$tool" convert "$@" >/dev/null 2>&1
  read -r e m u k < <(tail -1 "$out/time")
  # Every run, for reading a median that looks wrong: which runs were slow, user or system time.
  echo "$(date +%T) $(basename "$tool") $* elapsed $e user $u sys $k peak-KiB $m" >>"$dir/compare.log"
  echo "$e $m $(stat -c %s "$dst" 2>/dev/null || echo 0)"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
fastest() { sort -g | head -1; }

# block TOOL OUTPUT ARGS...: one uncounted run, then n counted ones (when n is empty, the
# uncounted run decides it: three times the rounds for a job of a few seconds, which is mostly
# the kernel copying); sets times, peak and size.
block() {
  local tool=$1 dst=$2 first r s
  shift 2
  read -r first _ _ < <(run "$tool" "$@" "$dst")
  if [ -z "$n" ]; then
    n=$rounds
    if awk -v t="$first" 'BEGIN {exit !(t < 5)}'; then n=$((rounds * 3)); fi
  fi
  times=()
  for ((r = 0; r < n; r++)); do
    read -r s peak size < <(run "$tool" "$@" "$dst"); times+=("$s")
  done
}

printf '%-20s %9s %9s %7s %14s %14s %10s %10s %6s\n' job qemu-img ims ratio qemu-size ims-size qemu-KiB ims-KiB best
zvhd2_seconds=
for j in "${jobs[@]}"; do
  IFS='|' read -r name qargs iargs <<<"$j"
  # The input in the page cache for both tools: idle cache may have been dropped since its last use.
  cat "${iargs##* }" >/dev/null
  # Each tool's runs in a block, after one run that is not counted. On this VM a run right after
  # the *other* tool's run is the slow one (measured: vhd->qcow2 0.52-0.70 s for ims after
  # qemu-img, 0.30-0.41 s after itself; qemu-img 0.90-0.97 s after ims, 0.39-0.41 s after
  # itself): freed memory goes back to the host within a second or two (free page reporting),
  # seemingly unless the next run asks for it in the same sizes, and touching it again costs a
  # host fault per page. Interleaving the tools made every other run pay that; a block lets each
  # tool run as it would converting one image after another. qemu-img's first run decides the
  # rounds.
  n=
  if [ -n "$qargs" ]; then
    # shellcheck disable=SC2086
    block qemu-img "$out/q.out" $qargs; qt=("${times[@]}"); qm=$peak; qs=$size
  else
    n=$rounds
  fi
  # shellcheck disable=SC2086
  block "$ims" "$out/i.out" $iargs; it=("${times[@]}"); im=$peak; is=$size
  ims_med=$(printf '%s\n' "${it[@]}" | median)
  if [ -n "$qargs" ]; then
    q_med=$(printf '%s\n' "${qt[@]}" | median)
    ratio=$(awk -v q="$q_med" -v i="$ims_med" 'BEGIN {printf "%.2f", (i > 0 ? q / i : 0)}')
    # Interference only ever adds time: the fastest runs' ratio is each tool's own speed.
    best=$(awk -v q="$(printf '%s\n' "${qt[@]}" | fastest)" -v i="$(printf '%s\n' "${it[@]}" | fastest)" \
      'BEGIN {printf "%.2f", (i > 0 ? q / i : 0)}')
  else
    q_med=-; ratio=-; qs=-; qm=-; best=-
  fi
  [[ $name == raw-\>zvhd2* ]] && zvhd2_seconds=$ims_med
  printf '%-20s %9s %9s %7s %14s %14s %10s %10s %6s\n' "$name" "$q_med" "$ims_med" "$ratio" "$qs" "$is" "$qm" "$im" "$best"
done

if [ -n "$zvhd2_seconds" ]; then
  # The blocks ZVHD2 compresses: every 2 MiB block of the disk that is not all zeros.
  blocks="$dir/zvhd2-blocks.bin"
  [ -f "$blocks" ] || python3 - "$dir/disk.raw" "$blocks" <<'PY'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
B = 2 << 20
with open(src, 'rb') as f, open(dst, 'wb') as o:
    size = os.fstat(f.fileno()).st_size
    pos = 0
    while pos < size:
        try:
            pos = os.lseek(f.fileno(), pos, os.SEEK_DATA) // B * B
        except OSError:
            break
        f.seek(pos)
        b = f.read(B)
        if b.count(0) != len(b):
            o.write(b)
        pos += B
PY
  bytes=$(stat -c %s "$blocks")
  speed=$(zstd -b3 -i3 -B2MiB -T1 "$blocks" 2>&1 | tr '\r' '\n' | grep -E 'MB/s' | tail -1 | sed -E 's/.*\), *([0-9.]+) MB\/s.*/\1/')
  awk -v b="$bytes" -v s="$speed" -v t="$zvhd2_seconds" 'BEGIN {
    bound = b / (2 * s * 1e6);
    printf "raw->zvhd2: %d MB of data blocks; zstd -3 on one core %.0f MB/s; two cores bound %.2f s; ims %.2f s = %.0f %% of the bound\n", b / 1e6, s, bound, t, 100 * bound / t }'
fi

# Peak memory on a 64 GiB sparse disk with data scattered over it.
sparse="$dir/sparse64.raw"
if [ ! -f "$sparse" ]; then
  truncate -s 64G "$sparse"
  for gib in 0 7 19 33 50 63; do
    dd if="$dir/disk.raw" of="$sparse" bs=1M skip=1 count=64 seek=$((gib * 1024)) conv=notrunc status=none
  done
fi
for spec in "raw->qcow2|-f raw -O qcow2" "raw->qcow2 -c zstd|-c -o compression_type=zstd -f raw -O qcow2" "raw->vmdk stream|-f raw -O vmdk -o subformat=streamOptimized"; do
  IFS='|' read -r name args <<<"$spec"
  # shellcheck disable=SC2086
  read -r qs_ qm_ _ < <(run qemu-img $args "$sparse" "$out/q.out")
  # shellcheck disable=SC2086
  read -r is_ im_ _ < <(run "$ims" $args "$sparse" "$out/i.out")
  printf '64 GiB sparse %-20s qemu-img %6s s %8s KiB   ims %6s s %8s KiB\n' "$name" "$qs_" "$qm_" "$is_" "$im_"
done

# Output identical for every -j.
"$ims" convert -j 1 -c -o compression_type=zstd -f raw -O qcow2 "$dir/disk.raw" "$out/j1.qcow2"
"$ims" convert -j 2 -c -o compression_type=zstd -f raw -O qcow2 "$dir/disk.raw" "$out/j2.qcow2"
if cmp -s "$out/j1.qcow2" "$out/j2.qcow2"; then echo "-j 1 and -j 2: identical output"; else echo "-j 1 and -j 2: OUTPUT DIFFERS"; fi
rm -rf "$out"
