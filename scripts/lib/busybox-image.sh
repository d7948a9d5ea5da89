# shellcheck shell=bash
# Builds a busybox container image without network or registry: an OCI image layout archive
# (oci-layout, index.json, blobs/sha256/*) made with tar and sha256sum from Debian's static
# /usr/bin/busybox (package busybox-static). Import it with
#   weftctl image import FILE --name busybox:latest
#
#   source scripts/lib/busybox-image.sh
#   build_busybox_image OUT.tar SCRATCH_DIR

# sha256 of a file, hex only.
_bb_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# Moves FILE into blobs/sha256/<its digest> under LAYOUT; prints the digest (hex).
_bb_blob() {
    local layout=$1 file=$2 hex
    hex=$(_bb_sha256 "$file")
    mv "$file" "$layout/blobs/sha256/$hex"
    echo "$hex"
}

# build_busybox_image OUT SCRATCH: writes the archive OUT; SCRATCH (created, then removed) holds
# the root filesystem and the layout while they are assembled.
build_busybox_image() {
    local out=$1 scratch=$2
    local busybox=/usr/bin/busybox
    if ! [ -x "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1; then
        echo "build_busybox_image: $busybox missing (apt-get install busybox-static)" >&2
        return 1
    fi
    local rootfs="$scratch/rootfs" layout="$scratch/layout"
    rm -rf "$scratch"
    mkdir -p "$rootfs"/{bin,etc,root,tmp} "$layout/blobs/sha256"
    chmod 1777 "$rootfs/tmp"
    chmod 700 "$rootfs/root"

    # The layer: /bin/busybox and a symlink per applet (sh, sleep, httpd, wget, nc, ...).
    cp "$busybox" "$rootfs/bin/busybox"
    local applet
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    # Reproducible: fixed owner, time and order, so the same busybox gives the same digests.
    tar --create --file "$scratch/layer.tar" --format=gnu --sort=name --mtime=@0 \
        --owner=0 --group=0 --numeric-owner -C "$rootfs" bin etc root tmp
    local layer_size layer_hex
    layer_size=$(stat -c %s "$scratch/layer.tar")
    layer_hex=$(_bb_blob "$layout" "$scratch/layer.tar")

    local arch
    arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
    printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$arch" "$layer_hex" >"$scratch/config.json"
    local config_size config_hex
    config_size=$(stat -c %s "$scratch/config.json")
    config_hex=$(_bb_blob "$layout" "$scratch/config.json")

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$config_hex" "$config_size" "$layer_hex" "$layer_size" >"$scratch/manifest.json"
    local manifest_size manifest_hex
    manifest_size=$(stat -c %s "$scratch/manifest.json")
    manifest_hex=$(_bb_blob "$layout" "$scratch/manifest.json")

    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"},"platform":{"architecture":"%s","os":"linux"}}]}' \
        "$manifest_hex" "$manifest_size" "$arch" >"$layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

    tar --create --file "$out" --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 \
        --numeric-owner -C "$layout" oci-layout index.json blobs
    rm -rf "$scratch"
}
