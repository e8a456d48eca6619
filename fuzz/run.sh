#!/bin/sh
# Runs one fuzz target on the stable toolchain: fuzz/run.sh schedule|crontab [SECONDS]
#
# libFuzzer's instrumentation needs nightly -Z flags; RUSTC_BOOTSTRAP=1 lets a stable rustc
# accept them. AddressSanitizer stays on (stable ships its runtime), and -a keeps overflow
# checks, so an arithmetic overflow is a crash here as it is under `cargo test`. New inputs
# go to corpus/TARGET (not committed), crashes to artifacts/TARGET; seeds/TARGET is read only.
set -eu
target=${1:?usage: fuzz/run.sh schedule|crontab [SECONDS]}
seconds=${2:-300}
dir=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/corpus/$target"
cd "$dir"
# Paths are absolute: cargo fuzz may start the fuzzer from another directory.
RUSTC_BOOTSTRAP=1 exec cargo fuzz run -O -a "$target" \
    "$dir/corpus/$target" "$dir/seeds/$target" -- \
    -dict="$dir/dicts/$target.dict" -max_total_time="$seconds" -print_final_stats=1
