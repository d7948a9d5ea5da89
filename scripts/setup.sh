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
    python3                      # scripts/bench-scale.sh's driver (scripts/lib/scale.py); the VM tier's guest agent (over 9p); a process whose main thread ends first (wireguard/control.rs test)
    curl                         # healthz/metrics in the demo
    openssl                      # test CA and certificates for the etcd TLS tests
    binutils                     # strip, objdump: scripts/package.sh
    systemd                      # systemd-analyze verify: docs/systemd/weftd.service in tests/claims.rs
    zstd                         # zstd-compressed image layers made by a tool of its own (tests/pod_runtime.rs)
    qemu-system-x86              # the VM tier (tests/vm): Debian's kernel under QEMU
    ethtool                      # the VM tier: the guest NIC's offloads (Debian's, over 9p)
    wireguard-go                 # a WireGuard node nobody here wrote: interop test and throughput baseline
    wireguard-tools              # wg: configures that node as flanneld configures its device
    tcpdump                      # captures the underlay in the WireGuard test (only ciphertext on the wire)
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

# The VM tier's kernel (tests/vm, scripts/test-vm.sh): Debian's generic amd64 kernel package (the
# cloud flavour has no 9p), fetched and unpacked into a cache, never installed on this machine.
# Fetched again only when Debian's linux-image-amd64 points at a newer version.
VM_CACHE=${WEFT_VM_CACHE:-/var/cache/weft-vm}
vm_kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}'
}
kpkg=$(vm_kernel_package)
if [ -z "$kpkg" ]; then
    apt-get update -q
    kpkg=$(vm_kernel_package)
fi
if [ -z "$kpkg" ]; then
    echo "setup.sh: cannot tell which linux-image-*-amd64 package linux-image-amd64 depends on" >&2
    exit 1
fi
if [ -f "$VM_CACHE/kernel/.unpacked-$kpkg" ]; then
    echo "setup.sh: VM kernel $kpkg already in $VM_CACHE/kernel"
else
    echo "setup.sh: fetching $kpkg for the VM tier into $VM_CACHE/kernel"
    mkdir -p "$VM_CACHE"
    fetch=$(mktemp -d "$VM_CACHE/fetch.XXXXXX")
    if ! (cd "$fetch" && apt-get download -q -o APT::Sandbox::User=root "$kpkg"); then
        # Stale package lists name a version the archive no longer has.
        apt-get update -q
        kpkg=$(vm_kernel_package)
        (cd "$fetch" && apt-get download -q -o APT::Sandbox::User=root "$kpkg")
    fi
    dpkg-deb -x "$fetch"/"$kpkg"_*.deb "$fetch/kernel"
    touch "$fetch/kernel/.unpacked-$kpkg"
    rm -rf "$VM_CACHE/kernel"
    mv "$fetch/kernel" "$VM_CACHE/kernel"
    rm -rf "$fetch"
fi
