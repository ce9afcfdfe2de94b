#!/usr/bin/env bash
# Issue 24's transfer figures (BENCHMARKS.md "Datasets as blobs"): two `hivemesh run`
# processes on loopback.
#  1. A dataset blob of SIZE_MB (default: 64 and 1024) goes from node A to node B
#     (/hivemesh/blob/2: outboard, then verified 256 KiB parts written to disk). It prints the
#     MB/s, `cp` of the same file in the same run, and the peak RSS (VmHWM) of both nodes.
#  2. With MNIST=DIR (default ../shared/data/mnist): the time from node B following a NAS
#     campaign whose 55 MB MNIST dataset only A holds, to B's first job running.
# Needs: cargo build --release -p hivemesh-node; curl, jq, python3. Uses $TMPDIR (4 GiB free).
set -euo pipefail
cd "$(dirname "$0")/../.."
HM=${HM:-target/release/hivemesh}
SIZES=${SIZES:-"64 1024"}
MNIST=${MNIST:-../shared/data/mnist}
[ -x "$HM" ] || { echo "build first: cargo build --release -p hivemesh-node" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hm-blobbench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

now() { date +%s.%N; }
api() { cat "$1/api.addr"; }
token() { cat "$1/api.token"; }
rss_mb() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# start NAME [BOOTSTRAP]: a node in $WORK/NAME; sets PID_NAME.
start() {
  local dir="$WORK/$1"; mkdir -p "$dir"
  "$HM" --data-dir "$dir" keygen >/dev/null
  local args=(--data-dir "$dir" run --listen "${LISTEN:-/ip4/127.0.0.1/tcp/0}" --http 127.0.0.1:0)
  [ -n "${2:-}" ] && args+=(--bootstrap "$2")
  RUST_LOG=${LOG:-warn} "$HM" "${args[@]}" >"$dir/log" 2>&1 &
  PIDS+=($!); eval "PID_$1=$!"
  for _ in $(seq 200); do [ -s "$dir/api.addr" ] && break; sleep 0.05; done
  [ -s "$dir/api.addr" ] || { cat "$dir/log"; exit 1; }
}
listen_of() { curl -s "http://$(api "$WORK/$1")/status" | jq -r '.listen[0]'; }
peers_of() { curl -s "http://$(api "$WORK/$1")/status" | jq -r '.peers'; }

# A canonical dataset blob (ADR 0008) of about $1 MiB: 1x32x32 byte samples, random.
make_blob() {
  python3 - "$1" "$2" <<'PY'
import os, struct, sys
mib, path = int(sys.argv[1]), sys.argv[2]
n = (mib << 20) // (2 + 1024)
with open(path, "wb") as f:
    f.write(b"HMDS" + bytes([1, 0, 0, 255, 0]) + struct.pack("<IIIIQQ", 1, 32, 32, 10, n, 2**64 - 1))
    f.write(bytes(x for b in os.urandom(n) for x in (b % 10, 0)))
    left = n * 1024
    while left:
        k = min(left, 1 << 24); f.write(os.urandom(k)); left -= k
PY
}

transfer() {
  local mib=$1
  rm -rf "$WORK"/a "$WORK"/b
  start a; start b "$(listen_of a)"
  for _ in $(seq 100); do [ "$(peers_of b)" -ge 1 ] && break; sleep 0.1; done
  local blob="$WORK/blob-$mib"; make_blob "$mib" "$blob"
  local bytes; bytes=$(stat -c %s "$blob")
  local t0; t0=$(now); cp "$blob" "$WORK/copy"; sync "$WORK/copy"; local t1; t1=$(now)
  local cp_s; cp_s=$(echo "$t1 - $t0" | bc -l); rm -f "$WORK/copy"
  local id
  id=$(curl -s -X POST -T "$blob" -H "Authorization: Bearer $(token "$WORK/a")" \
    "http://$(api "$WORK/a")/blobs" | jq -r .id)
  [ "$id" != null ] || { echo "upload failed" >&2; exit 1; }
  local ca0 cb0; ca0=$(cpu_s "$PID_a"); cb0=$(cpu_s "$PID_b")
  if [ -n "${PERF_B:-}" ]; then
    perf record -F 2999 -g -p "$PID_b" -o "$PERF_B" 2>/dev/null &
    local perf_pid=$!
  fi
  t0=$(now)
  # The answer starts once the fetch finished (every part verified and on disk).
  local first
  first=$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://$(api "$WORK/b")/blobs/$id?fetch=true")
  t1=$(now)
  if [ -n "${PERF_B:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  local fetch_s=$first
  local mbs; mbs=$(echo "$bytes / 1000000 / $fetch_s" | bc -l)
  local cp_mbs; cp_mbs=$(echo "$bytes / 1000000 / $cp_s" | bc -l)
  printf '%6d MiB  fetch %.2f s = %.0f MB/s   cp+sync %.2f s = %.0f MB/s   ratio %.2f   peak RSS: A %s MB, B %s MB   CPU s: A %.2f, B %.2f\n' \
    "$mib" "$fetch_s" "$mbs" "$cp_s" "$cp_mbs" "$(echo "$mbs / $cp_mbs" | bc -l)" \
    "$(rss_mb "$PID_a")" "$(rss_mb "$PID_b")" \
    "$(echo "$(cpu_s "$PID_a") - $ca0" | bc -l)" "$(echo "$(cpu_s "$PID_b") - $cb0" | bc -l)"
  rm -f "$blob"
  kill "$PID_a" "$PID_b"; wait "$PID_a" "$PID_b" 2>/dev/null || true
}

join_to_first_job() {
  rm -rf "$WORK"/a "$WORK"/b
  LOG=hivemesh_node=info start a; LOG=hivemesh_node=info start b "$(listen_of a)"
  for _ in $(seq 100); do [ "$(peers_of b)" -ge 1 ] && break; sleep 0.1; done
  local id
  id=$("$HM" --data-dir "$WORK/a" dataset add "$MNIST" 2>/dev/null)
  cat >"$WORK/campaign.toml" <<TOML
name = "bench: join to first job"
dataset = "blob:$id"
redundancy = 2
quorum = 2
[nas]
max_layers = 1
widths = [16]
population = 2
generations = 1
[budget]
max_steps = 20
TOML
  "$HM" --data-dir "$WORK/a" campaign submit "$WORK/campaign.toml" >/dev/null
  for _ in $(seq 6000); do
    grep -q "job started" "$WORK/b/log" && break
    sleep 0.05
  done
  # From B's log: when it followed the campaign, fetched the dataset, started its first job.
  python3 - "$WORK/b/log" "$WORK/a/log" <<'PY'
import re, sys
from datetime import datetime
def at(path, what):
    for line in open(path, errors="replace"):
        if what in line:
            stamp = re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0]
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
b, a = sys.argv[1], sys.argv[2]
follow, fetched, job = at(b, "following campaign"), at(b, "blob fetched"), at(b, "job started")
a_job = at(a, "job started")
print(f"MNIST dataset blob (55,020,041 bytes): B fetched it {fetched - follow:.2f} s after following "
      f"the campaign and started its first job {job - follow:.2f} s after following it; "
      f"A (which held it) started its first job {a_job - at(a, 'following campaign'):.2f} s after following it")
PY
  kill "$PID_a" "$PID_b"; wait "$PID_a" "$PID_b" 2>/dev/null || true
}

for s in $SIZES; do transfer "$s"; done
[ -d "$MNIST" ] && join_to_first_job
