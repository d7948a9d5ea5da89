#!/usr/bin/env bash
# Installs the Debian packages weft needs to build and test, on a fresh Debian 12 machine.
# Idempotent: installed packages are skipped; apt-get update runs once, only if something is missing.
# Rust (cargo, rustfmt, clippy) is expected to be installed already.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: must run as root (installs packages; tests create network namespaces)" >&2
    exit 1
fi

# package         why
PACKAGES=(
    gcc                          # linker driver for rustc
    g++                          # libFuzzer, compiled by the libfuzzer-sys crate (scripts/fuzz.sh)
    libc6-dev                    # crt files and libc for linking
    mold                         # linker set in .cargo/config.toml
    protobuf-compiler            # protoc, for etcd-client's build script
    libprotobuf-dev              # google/protobuf/*.proto imported by etcd's protos
    iproute2                     # ip, bridge: test harness, demo, benchmark
    procps                       # sysctl: IP forwarding inside node namespaces
    etcd-server                  # the real etcd integration tests and the demo run
    etcd-client                  # etcdctl: test harness and scripts
    nftables                     # nft: weftd --ip-masq
    busybox-static               # static binary for pod and container tests
    iperf3                       # backend throughput benchmarks
    iputils-ping                 # ping between pods
    runc                         # OCI runtime of the pod core
    containernetworking-plugins  # reference CNI plugins (chaining, comparisons)
    podman                       # real runtime driving the CNI plugin (CNI backend) in tests/cni_runtimes.rs
    containerd                   # real runtime driving the CNI plugin (ctr run --cni) in tests/cni_runtimes.rs
    iptables                     # portmap's rules; tests/cni_runtimes.rs checks none are left
    jq                           # JSON in the scripts
    python3                      # scripts/bench-scale.sh's driver (scripts/lib/scale.py)
    curl                         # healthz/metrics in the demo
    openssl                      # test CA and certificates for the etcd TLS tests
    binutils                     # strip, objdump: scripts/package.sh
    systemd                      # systemd-analyze verify: docs/systemd/weftd.service in tests/claims.rs
    zstd                         # zstd-compressed image layers made by a tool of its own (tests/pod_runtime.rs)
)

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup.sh: all ${#PACKAGES[@]} packages already installed"
else
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

for tool in cargo rustc; do
    if ! command -v "$tool" >/dev/null; then
        echo "setup.sh: $tool not found: install Rust (https://rustup.rs) first" >&2
        exit 1
    fi
done

# The test runner: one process per test, so a test that kills, unshares or exits cannot take
# others down with it, and scripts/test.sh runs exactly what CI runs. Not packaged in Debian.
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup.sh: installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
