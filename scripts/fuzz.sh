#!/usr/bin/env bash
# Coverage-guided fuzzing of one of weft's parsers of hostile input, on the stable toolchain:
# libFuzzer (compiled by the libfuzzer-sys crate) drives a binary that rustc instruments with
# LLVM's SanitizerCoverage pass (-C passes=sancov-module), so no nightly and no cargo-fuzz.
#
#   scripts/fuzz.sh TARGET [SECONDS]     (default 60 s)
#   scripts/fuzz.sh list                 the targets
#
# TARGET is network_config, lease, subnet_env or validation (tests/fuzz/targets.rs). The seed
# corpus tests/fuzz/corpus/TARGET is read, never written; new inputs go to tests/fuzz/work/TARGET
# and crashes to tests/fuzz/artifacts/TARGET. A crash, once fixed, belongs in the seed corpus:
# the suite replays every corpus file (tests/fuzz_corpus.rs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ=$ROOT/tests/fuzz
TARGETS=(network_config lease subnet_env validation)

usage() {
    echo "usage: $0 {${TARGETS[*]}} [SECONDS] | $0 list" >&2
    exit 2
}

TARGET=${1:-}
[[ -n $TARGET ]] || usage
if [[ $TARGET == list ]]; then
    printf '%s\n' "${TARGETS[@]}"
    exit 0
fi
[[ " ${TARGETS[*]} " == *" $TARGET "* ]] || usage
SECONDS_TO_RUN=${2:-60}
[[ $SECONDS_TO_RUN =~ ^[0-9]+$ ]] && ((SECONDS_TO_RUN > 0)) || usage

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# RUSTFLAGS replaces .cargo/config.toml's rustflags, so the linker choice is repeated here.
# With an explicit --target, build scripts and proc macros are built without these flags.
export RUSTFLAGS="-C passes=sancov-module \
-C llvm-args=-sanitizer-coverage-level=4 \
-C llvm-args=-sanitizer-coverage-inline-8bit-counters \
-C llvm-args=-sanitizer-coverage-pc-table \
-C llvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -C debug-assertions -C overflow-checks -C link-arg=-fuse-ld=mold"
export CARGO_TARGET_DIR=$FUZZ/target

echo "fuzz: building $TARGET (release, instrumented)" >&2
cargo build --release --quiet --manifest-path "$FUZZ/Cargo.toml" --target "$TRIPLE" --bin "$TARGET"

mkdir -p "$FUZZ/work/$TARGET" "$FUZZ/artifacts/$TARGET"
echo "fuzz: running $TARGET for ${SECONDS_TO_RUN}s" >&2
exec "$CARGO_TARGET_DIR/$TRIPLE/release/$TARGET" \
    -max_total_time="$SECONDS_TO_RUN" \
    -print_final_stats=1 \
    -max_len=4096 \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -artifact_prefix="$FUZZ/artifacts/$TARGET/" \
    "$FUZZ/work/$TARGET" "$FUZZ/corpus/$TARGET"
