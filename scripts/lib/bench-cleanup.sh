# shellcheck shell=bash
# Cleanup for the benchmark scripts: on exit (also Ctrl-C), kill every process in the
# namespaces named "$P-*", delete those namespaces and remove "$WORK". Source it after setting
# P and WORK. KEEP_WORK=1 keeps "$WORK" (the daemons' logs).
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local ns pids
    for ns in $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print $1}'); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    done
    sleep 0.2
    for ns in $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print $1}'); do
        ip netns del "$ns" || true
    done
    if [ -n "${KEEP_WORK:-}" ]; then
        echo "kept $WORK (weftd logs)" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
