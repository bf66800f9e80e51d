#!/usr/bin/env bash
# bench/s3.sh DATA [IMS]: `ims register` from and into a local S3 server (moto's, started here on
# a free port and stopped at the end) against `ims register FILE` into the local store, on the
# benchmark disk of bench/make-input.sh (DATA/disk.stream.vmdk, read as one GET stream, and
# DATA/disk.qcow2, read by ranges in the order of its map). Prints wall time, CPU and peak RSS
# of each (/usr/bin/time -v), and moto's own CPU time during the S3 runs.
#
# Needs moto (pip install 'moto[server]'), boto3 (moto brings it) and a release build of ims.
# moto copies the whole object for every ranged GET (a 1 MiB range of a 1.2 GB object costs it
# about a second), so what ims reads by ranges block by block is moto-bound; runs of the map
# that follow each other in the object are read as one GET.
set -euo pipefail
data=${1:?usage: bench/s3.sh DATA [IMS]}
ims=$(realpath "${2:-target/release/ims}")
work=$(mktemp -d); port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PYTHONUNBUFFERED=1 python3 -m moto.server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 & moto=$!
trap 'kill $moto; rm -rf "$work"' EXIT
export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
until curl -s "$AWS_ENDPOINT" >/dev/null; do sleep 0.2; done
python3 - "$data" <<'EOF'
import os, sys, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
s3.create_bucket(Bucket="bench")
for name in ["disk.stream.vmdk", "disk.qcow2"]:
    s3.upload_file(f"{sys.argv[1]}/{name}", "bench", f"uploads/{name}",
                   Config=TransferConfig(multipart_chunksize=64 << 20, max_concurrency=4))
EOF
moto_cpu() { awk '{print $14 + $15}' "/proc/$moto/stat"; }
gets() { grep -c '"GET /bench/' "$work/moto.log" || true; }
run() { # NAME ARGS...: one registration, its figures
  local name=$1; shift
  local before; before=$(moto_cpu)
  local got; got=$(gets)
  /usr/bin/time -v "$@" --name "$name" --type data --home "$work/$name" --output json \
    >"$work/$name.json" 2>"$work/$name.time"
  printf '%-12s %s  wall %s  cpu %s%%  rss %s KiB  moto cpu %s s, %s GETs\n' "$name" \
    "$(grep -o '"status": "[a-z]*"' "$work/$name.json")" \
    "$(awk -F': ' '/Elapsed/{print $2}' "$work/$name.time")" \
    "$(awk -F': ' '/Percent of CPU/{print $2}' "$work/$name.time" | tr -d %)" \
    "$(awk -F': ' '/Maximum resident/{print $2}' "$work/$name.time")" \
    "$(( ($(moto_cpu) - before) / 100 ))" "$(( $(gets) - got ))"
}
uptime
run vmdk-local "$ims" register "$data/disk.stream.vmdk"
run vmdk-s3 "$ims" register s3://bench/uploads/disk.stream.vmdk --store s3://bench/ims
run qcow2-local "$ims" register "$data/disk.qcow2"
run qcow2-s3 "$ims" register s3://bench/uploads/disk.qcow2 --store s3://bench/ims
uptime
