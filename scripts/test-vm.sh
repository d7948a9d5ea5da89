#!/usr/bin/env bash
# The VM tier alone (tests/vm): Debian's kernel under QEMU (TCG) on a segment inside a test-made
# network namespace; weftd and the CNI plugin run in the guests. Needs root, qemu-system-x86 and
# the kernel scripts/setup.sh caches in /var/cache/weft-vm. One scenario group at a time (each
# boots two VMs). Also run by scripts/test.sh, which passes --no-setup.
#
#   scripts/test-vm.sh [--no-setup] [TEST-FILTER...]
set -uo pipefail

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [ "${1:-}" = "--no-setup" ]; then
    shift
elif ! bash scripts/setup.sh; then
    echo "test-vm.sh: setup failed" >&2
    exit 1
fi

# The guests run the workspace's weftd and CNI plugin from target/debug over 9p.
if ! cargo build -p weft -p weft-cni --bins; then
    echo "test-vm.sh: build failed" >&2
    exit 1
fi

# shellcheck source=scripts/lib/leftovers.sh
source scripts/lib/leftovers.sh
leftovers_snapshot
start=$SECONDS
rc=0
cargo nextest run -p weft --test vm --no-capture --no-fail-fast --no-tests fail "$@" || rc=$?
echo "test-vm.sh: VM tier took $((SECONDS - start))s"
if ! leftovers_report "$PWD"; then
    echo "test-vm.sh: the VM tier left something behind" >&2
    rc=1
fi
exit "$rc"
