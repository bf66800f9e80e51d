#!/usr/bin/env bash
# bench/s3.sh DATA [IMS]: `ims register` from and into a local S3 server against
# `ims register FILE` into the local store, on the benchmark disk of bench/make-input.sh
# (DATA/disk.stream.vmdk, read as one GET stream, and DATA/disk.qcow2, read by ranges in the
# order of its map). Prints wall time, CPU and peak RSS of each (/usr/bin/time -v), and the S3
# server's own CPU time during the run.
#
# Two rounds: "shared", where ims and the S3 server share every core (on a small machine the
# server's own CPU, hashing and serving every byte, is then on the critical path), and
# "pinned", where the server runs on the last core and ims, local and S3 alike, on the others
# (taskset), as if the server were another machine.
#
# The server is Garage (`cargo install garage`; GARAGE names the binary), a one-node cluster
# started here in a temporary directory on free ports and stopped at the end; with
# S3_SERVER=moto, moto's server instead (it copies the whole object for each ranged GET, so
# ranged reads are moto-bound there). Needs boto3 (to upload the sources) and a release build.
set -euo pipefail
data=${1:?usage: bench/s3.sh DATA [IMS]}
ims=$(realpath "${2:-target/release/ims}")
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
if [ "${S3_SERVER:-garage}" = moto ]; then
  python3 -m moto.server -H 127.0.0.1 -p "$port" >"$work/server.log" 2>&1 & server=$!
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
else
  garage=${GARAGE:-garage}
  key=GK0123456789abcdef01234567
  secret=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  rpc=$(free_port)
  cat >"$work/garage.toml" <<EOF
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
EOF
  RUST_LOG=garage=warn "$garage" -c "$work/garage.toml" server >"$work/server.log" 2>&1 & server=$!
  g() { "$garage" -c "$work/garage.toml" "$@"; }
  until node=$(g node id -q 2>/dev/null); do sleep 0.2; done
  g layout assign -z dc1 -c 100G "${node%@*}" >/dev/null
  g layout apply --version 1 >/dev/null
  g key import --yes -n bench "$key" "$secret" >/dev/null
  g key allow --create-bucket bench >/dev/null
  export AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret
fi
trap 'kill $server; rm -rf "$work"' EXIT
export AWS_ENDPOINT=http://127.0.0.1:$port AWS_REGION=us-east-1
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
server_cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
pin=()
run() { # NAME ARGS...: one registration, its figures
  local name=$1; shift
  local before; before=$(server_cpu)
  /usr/bin/time -v "${pin[@]}" "$@" --name "$name" --type data --home "$work/$name" --output json \
    >"$work/$name.json" 2>"$work/$name.time"
  printf '%-12s %s  wall %s  cpu %s%%  rss %s KiB  server cpu %s s\n' "$name" \
    "$(grep -o '"status": "[a-z]*"' "$work/$name.json")" \
    "$(awk -F': ' '/Elapsed/{print $2}' "$work/$name.time")" \
    "$(awk -F': ' '/Percent of CPU/{print $2}' "$work/$name.time" | tr -d %)" \
    "$(awk -F': ' '/Maximum resident/{print $2}' "$work/$name.time")" \
    "$(( ($(server_cpu) - before) / 100 ))"
}
uptime
cores=$(nproc)
for round in shared pinned; do
  echo "round $round"
  if [ "$round" = pinned ]; then
    [ "$cores" -ge 2 ] || { echo "one core: no pinned round"; break; }
    taskset -a -cp "$((cores - 1))" "$server" >/dev/null
    pin=(taskset -c "0-$((cores - 2))")
  fi
  run vmdk-local "$ims" register "$data/disk.stream.vmdk"
  run vmdk-s3 "$ims" register s3://bench/uploads/disk.stream.vmdk --store s3://bench/ims
  run qcow2-local "$ims" register "$data/disk.qcow2"
  run qcow2-s3 "$ims" register s3://bench/uploads/disk.qcow2 --store s3://bench/ims
  rm -rf "$work"/*-local "$work"/*-s3
done
uptime
