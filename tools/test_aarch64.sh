#!/usr/bin/env bash
# The aarch64 NEON simulator kernels (src/fixed/sim/neon.rs) pinned to kernels.rs on an x86 host:
# cross-built for aarch64-unknown-linux-gnu and run in QEMU user mode twice,
#   -cpu max         (has dotprod: both the SDOT and the plain NEON kernel are tested),
#   -cpu cortex-a72  (no dotprod: run-time detection leaves the plain NEON kernel only):
# neon.rs's own property tests, then the whole simulator's (tests/fixed_sim_props.rs: the
# default path, the portable GEMM and each NEON kernel the CPU has). Then clippy for that target
# (x86 clippy never sees the aarch64-only code).
# Installs its prerequisites; configuration is by environment only (no .cargo/config.toml).
# Time on the 2-core dev machine (shared, load ~6): 16.7 min from a cold aarch64 target dir (the
# clean-clone CI case; the tests themselves take ~11 s in QEMU), 3.4 min with a warm one.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
  || [ ! -e /usr/aarch64-linux-gnu/lib/libc.so.6 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
rustup target add aarch64-unknown-linux-gnu

T=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc # heed builds LMDB's C code
log=$(mktemp)
trap 'rm -f "$log"' EXIT

for cpu in max cortex-a72; do
  echo "== aarch64 NEON kernels vs kernels.rs, QEMU user mode, -cpu $cpu"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu"
  cargo test --release --target $T --lib neon -- --nocapture 2>&1 | tee "$log"
  # The emulated CPU must be what this step claims to test (else SDOT would silently go untested).
  case $cpu in
    max) want='CPU dotprod = true; testing \["plain NEON", "SDOT"\]' ;;
    *) want='CPU dotprod = false; testing \["plain NEON"\]' ;;
  esac
  grep -q "$want" "$log" || { echo "-cpu $cpu: expected '$want' in the test output" >&2; exit 1; }
  grep -q "test result: ok. [1-9]" "$log" || { echo "-cpu $cpu: no test ran" >&2; exit 1; }
  echo "== the simulator vs kernels.rs, QEMU user mode, -cpu $cpu"
  cargo test --release --target $T --test fixed_sim_props
done
unset CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER

echo "== clippy for $T"
cargo clippy --release --target $T --all-targets -- -D warnings
