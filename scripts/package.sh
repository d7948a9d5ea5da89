#!/usr/bin/env bash
# Builds weft's Debian package with dpkg-deb from a staged tree (nothing to install first).
#
#   scripts/package.sh [--bin-dir DIR] [--out DIR]
#
# By default the release binaries are built (cargo build --release; the CNI plugin linked
# statically, see scripts/lib/static-plugin.sh) and the package is written
# to target/debian/. --bin-dir packages the binaries already in DIR instead (weftd, weftctl,
# weft-pause, weft-shim and the CNI plugin weft), e.g. target/debug for a quick check.
# DEB_COMPRESSION picks dpkg-deb's compressor (default xz). Prints the package's path last.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR=""
OUT_DIR="$ROOT/target/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

for tool in dpkg-deb dpkg strip objdump gzip; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool not found (scripts/setup.sh installs it)" >&2; exit 1; }
done

PLUGIN=""
if [ -z "$BIN_DIR" ]; then
    (cd "$ROOT" && cargo build --release --locked -p weft --bins)
    BIN_DIR="$ROOT/target/release"
    # shellcheck source=lib/static-plugin.sh
    source "$ROOT/scripts/lib/static-plugin.sh"
    PLUGIN="$(build_static_plugin "$ROOT")"
fi
PLUGIN="${PLUGIN:-$BIN_DIR/weft}"
BINARIES=(weftd weftctl weft-pause weft-shim)
for bin in "${BINARIES[@]}"; do
    [ -x "$BIN_DIR/$bin" ] || { echo "package.sh: $BIN_DIR/$bin missing: build it first" >&2; exit 1; }
done
[ -x "$PLUGIN" ] || { echo "package.sh: $PLUGIN missing: build it first" >&2; exit 1; }

# The [package] version of the workspace root's Cargo.toml.
VERSION="$(awk '/^\[package\]/{p=1; next} /^\[/{p=0} p && /^version *=/{gsub(/[" ]/, "", $0); sub(/version=/, "", $0); print; exit}' "$ROOT/Cargo.toml")"
ARCH="$(dpkg --print-architecture)"
[ -n "$VERSION" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
PKG="$STAGE/pkg"
DOC="$PKG/usr/share/doc/weft"

install -d -m 0755 "$PKG/usr/bin" "$PKG/usr/lib/cni" "$PKG/opt/cni/bin" "$DOC/examples" \
    "$PKG/usr/share/man/man8" "$PKG/usr/lib/systemd/system" "$PKG/etc/default" \
    "$PKG/usr/share/bash-completion/completions" "$PKG/usr/share/zsh/vendor-completions" \
    "$PKG/usr/share/fish/vendor_completions.d"
for bin in "${BINARIES[@]}"; do
    install -m 0755 "$BIN_DIR/$bin" "$PKG/usr/bin/$bin"
done
# Debian's CNI plugins live in /usr/lib/cni; runtimes configured for /opt/cni/bin find it too.
# The release plugin is linked statically (scripts/lib/static-plugin.sh says why).
install -m 0755 "$PLUGIN" "$PKG/usr/lib/cni/weft"
ln -s ../../../usr/lib/cni/weft "$PKG/opt/cni/bin/weft"
strip --strip-unneeded "$PKG"/usr/bin/* "$PKG/usr/lib/cni/weft"

install -m 0644 "$ROOT/docs/systemd/weftd.service" "$PKG/usr/lib/systemd/system/weftd.service"
# May hold the etcd password: readable by root only.
install -m 0600 "$ROOT/docs/systemd/weftd.env" "$PKG/etc/default/weftd"

install -m 0644 "$ROOT/README.md" "$DOC/README.md"
install -m 0644 "$ROOT/cni/10-weft.conflist" "$DOC/examples/10-weft.conflist"
install -m 0644 "$ROOT/docs/network-config.json" "$DOC/examples/network-config.json"
install -m 0644 "$ROOT/docs/systemd/weftd.env" "$DOC/examples/weftd.env"
install -m 0644 "$ROOT/docs/grafana-dashboard.json" "$DOC/examples/grafana-dashboard.json"
cat > "$DOC/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: weft

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

# Man pages and completions come from the binaries' own flag definitions.
GEN="$STAGE/generated"
"$PKG/usr/bin/weftd" --generate-docs "$GEN"
"$PKG/usr/bin/weftctl" generate-docs "$GEN"
for page in "$GEN"/man/*.8; do
    gzip -9n < "$page" > "$PKG/usr/share/man/man8/$(basename "$page").gz"
done
for bin in weftd weftctl; do
    install -m 0644 "$GEN/completions/bash/$bin" "$PKG/usr/share/bash-completion/completions/$bin"
    install -m 0644 "$GEN/completions/zsh/_$bin" "$PKG/usr/share/zsh/vendor-completions/_$bin"
    install -m 0644 "$GEN/completions/fish/$bin.fish" "$PKG/usr/share/fish/vendor_completions.d/$bin.fish"
done
chmod 0644 "$PKG"/usr/share/man/man8/*.gz

# The newest glibc symbol version any binary needs.
# (A statically linked plugin has no dynamic symbols: objdump -T skips it with a message.)
GLIBC="$(objdump -T "$PKG"/usr/bin/* "$PKG/usr/lib/cni/weft" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1 || true)"
install -d -m 0755 "$PKG/DEBIAN"
cat > "$PKG/DEBIAN/control" <<CONTROL
Package: weft
Version: $VERSION
Architecture: $ARCH
Maintainer: weft developers <weft@example.org>
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
Depends: libc6 (>= ${GLIBC:-2.17})
Recommends: runc, nftables
Suggests: etcd-server, etcd-client
Description: Flannel-compatible overlay network for pods, with a static pod runtime
 weftd leases a pod subnet from etcd (Flannel's layout), programs a VXLAN, UDP or
 host-gw overlay, keeps every peer's routes in step with etcd and runs static
 pods; weft is the CNI plugin; weftctl inspects and operates the cluster.
CONTROL
echo /etc/default/weftd > "$PKG/DEBIAN/conffiles"

mkdir -p "$OUT_DIR"
DEB="$OUT_DIR/weft_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
