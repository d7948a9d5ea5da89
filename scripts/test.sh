#!/usr/bin/env bash
# The whole test suite: system packages, build, unit + integration tests (real etcd, network
# namespaces, kernel devices; needs root), rustfmt and clippy. Exits non-zero on any failure.
set -uo pipefail

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! bash scripts/setup.sh; then
    echo "test.sh: setup failed" >&2
    exit 1
fi

declare -a NAMES=() RESULTS=() TIMES=()
failed=0

# step NAME COMMAND...: runs a step, records result and duration, keeps going on failure.
step() {
    local name=$1
    shift
    echo
    echo "==> $name: $*"
    local start=$SECONDS rc=0
    "$@" || rc=$?
    NAMES+=("$name")
    TIMES+=("$((SECONDS - start))s")
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("ok")
    else
        RESULTS+=("FAILED (exit $rc)")
        failed=1
    fi
    return "$rc"
}

step "rustfmt" cargo fmt --all --check

# shellcheck source=scripts/lib/leftovers.sh
source scripts/lib/leftovers.sh

# leftovers: fails if the tests left a namespace, process, mount or cgroup behind.
leftovers() {
    leftovers_report "$PWD"
}

if step "build" cargo build --workspace --all-targets; then
    leftovers_snapshot
    # The integration tests need the binaries built above; the suite must stay well under 30 min.
    # One runner, always: setup.sh installs cargo-nextest (a process per test).
    step "tests" timeout --signal=INT --kill-after=60 1500 \
        cargo nextest run --workspace --no-fail-fast -E 'not binary_id(weft::vm)'
    # The VM tier after the rest, so its TCG guests do not compete with the other tests for the
    # two cores; its own leftovers check runs inside, the suite's below.
    step "vm" timeout --signal=INT --kill-after=60 900 bash scripts/test-vm.sh --no-setup
    step "leftovers" leftovers
else
    NAMES+=("tests")
    RESULTS+=("not run (build failed)")
    TIMES+=("-")
fi

step "clippy" cargo clippy --workspace --all-targets -- -D warnings

echo
echo "==================== test.sh summary ===================="
for i in "${!NAMES[@]}"; do
    printf '  %-9s %-24s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
done
if [ "$failed" -eq 0 ]; then
    echo "  ALL PASSED"
else
    echo "  FAILED"
fi
exit "$failed"
