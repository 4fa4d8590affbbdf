#!/usr/bin/env bash
# Run the stable fuzz targets (examples/fuzz) for SECONDS each (default 20), restarting a target
# whose process dies (abort on an allocation past the address-space limit, stack overflow, a
# signal): its last input is kept as a crash. Exit code 1 when any target found a crash.
#   tools/fuzz.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"; shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(prototxt caffemodel hdf5 blobproto datum lmdb npy nnq-json formats-json nnquant-toml)
fi
cargo build --release --quiet --example fuzz || exit 2
bin=target/release/examples/fuzz
failed=0
for t in "${targets[@]}"; do
  seed=1; left="$secs"
  while [ "$left" -gt 0 ]; do
    start=$(date +%s)
    "$bin" "$t" --seconds "$left" --seed "$seed"
    rc=$?
    used=$(( $(date +%s) - start )); left=$(( left - used ))
    if [ "$rc" -eq 0 ]; then break; fi
    failed=1
    if [ "$rc" -ne 1 ]; then
      # The process died: keep the input it was running.
      mkdir -p "target/fuzz/$t/crashes"
      keep="target/fuzz/$t/crashes/died-rc$rc-$(date +%s%N)"
      cp "target/fuzz/$t/last-input" "$keep"
      echo "$t: the process died (exit code $rc); its input is kept in $keep" >&2
      seed=$((seed + 1))
    else
      break
    fi
  done
done
exit $failed
