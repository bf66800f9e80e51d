#!/usr/bin/env bash
# Runs every fuzz target for a short time (FUZZ_SECONDS, default 30) from the committed fixtures,
# so that the targets never rot and a shallow crash fails CI. The long runs (15 minutes or more
# per target) are described in fuzz/README.md.
#
# Needs cargo-fuzz and a compiler that accepts nightly flags: a nightly toolchain when one is
# installed, otherwise the stable one with RUSTC_BOOTSTRAP=1 (what cargo-fuzz's sanitizer flags
# need). Prints why and exits 0 when cargo-fuzz cannot be had; a crash, leak or timeout exits 1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
  if ! cargo install --locked cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz smoke runs skipped: cargo-fuzz is not installed and could not be installed"
    exit 0
  fi
fi
toolchain=()
if cargo +nightly --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

targets=$(cargo fuzz list)
cargo "${toolchain[@]}" fuzz build -O
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Seeds: every committed fixture and fuzz/seeds/ (the file-system volumes), gzipped ones unpacked.
mkdir -p "$work/seeds"
cp -r ../testdata/. "$work/seeds/"
cp -r seeds/. "$work/seeds/"
find "$work/seeds" -name '*.gz' -exec gunzip -f {} +
for t in $targets; do
  mkdir -p "$work/corpus-$t"
  echo "fuzz smoke: $t for ${seconds}s"
  # New inputs go to the scratch corpus (the first directory), never into testdata/.
  if ! cargo "${toolchain[@]}" fuzz run -O "$t" "$work/corpus-$t" "$work/seeds" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$work/$t.log" 2>&1; then
    tail -n 60 "$work/$t.log"
    echo "fuzz smoke: $t failed (artifacts under fuzz/artifacts/$t)"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$work/$t.log" || true
done
