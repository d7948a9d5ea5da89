# shellcheck shell=bash
# Builds the release CNI plugin linked statically and prints its path.
#
# A runtime execs the plugin once per ADD and DEL, so the dynamic loader's work (mapping libc
# and libgcc_s, relocating) is paid on every pod: about 0.45 ms of a ~4 ms ADD on the
# development machine. The plugin resolves no names and loads nothing at run time (no NSS, no
# dlopen), so glibc's static-pie build is safe for it; weftd, which does resolve names, stays
# dynamic. The flag is passed with `cargo rustc` to the plugin's final crate only, into a
# target directory of its own so it never fights the workspace's ordinary release build.
#
#   source scripts/lib/static-plugin.sh; plugin=$(build_static_plugin "$ROOT")
build_static_plugin() {
    local root=$1
    (cd "$root" && cargo rustc --quiet --release --locked -p weft-cni --bin weft \
        --target-dir "$root/target/static" -- -C target-feature=+crt-static >&2)
    echo "$root/target/static/release/weft"
}
