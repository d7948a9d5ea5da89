#!/usr/bin/env bash
# Pod start-up latency: time from a static pod manifest written to the pod Running with an IP,
# median over N pods (default 20) started one after the other, split into
#   discovery  manifest written -> controller read it (inotify)
#   sandbox    -> pause process with its namespaces up
#   cni        -> CNI ADD returned (weft plugin, pod IP)
#   containers -> app container started (runc through weft-shim)
#   status     -> status.json shows Running + IP (what a client sees)
# The split comes from the timestamps each pod records in <pod-root>/<pod>/status.json
# (.timings.seenMs/sandboxMs/networkMs/containersMs).
#
#   scripts/bench-pods.sh [N]
#
# One node namespace (weft-benchpods-<pid>) with a veth eth0 at 192.0.2.1, etcd on its loopback,
# the real weftd with --pod-manifest-path and the weft CNI plugin, a busybox image built here from
# the machine's static busybox. The machine's interfaces, routes and firewall are never touched;
# everything is removed on exit. Needs root, etcd, runc, busybox, jq.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${1:-20}
PROFILE=${PROFILE:-debug}

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-pods.sh: run as root (namespaces, mounts, runc)" >&2
    exit 1
fi
for tool in etcd runc busybox jq; do
    command -v "$tool" >/dev/null || { echo "bench-pods.sh: $tool not found (scripts/setup.sh)" >&2; exit 1; }
done

P="weft-benchpods-$$"
NS="$P-node"
WORK=$(mktemp -d "/tmp/$P.XXXXXX")
ETCD_PID=""
WEFTD_PID=""

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$WEFTD_PID" ] && kill -0 "$WEFTD_PID" 2>/dev/null; then
        # Remove the pods through weftd so nothing leaks, then stop it.
        rm -f "$WORK"/manifests/*.yaml
        for _ in $(seq 1 600); do
            [ -z "$(ls -A "$WORK/pods" 2>/dev/null | grep -v '^invalid' || true)" ] && break
            sleep 0.1
        done
        kill "$WEFTD_PID" 2>/dev/null || true
        wait "$WEFTD_PID" 2>/dev/null || true
    fi
    [ -n "$ETCD_PID" ] && { kill "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; }
    if ip netns list | grep -q "^$NS\b"; then
        local pids
        pids=$(ip netns pids "$NS" 2>/dev/null || true)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
        ip netns del "$NS" || true
    fi
    # Sandboxes of pods weftd could not remove (it died): their namespaces carry the pod names.
    for ns in $(ip netns list | awk '{print $1}' | grep "^weft-bench_" || true); do
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
        ip netns del "$ns" || true
    done
    grep " $WORK" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT INT TERM

echo "== building weftd, weftctl, weft-pause, weft-shim and the weft CNI plugin ($PROFILE)"
if [ "$PROFILE" = release ]; then
    cargo build --release --workspace --bins >/dev/null
else
    cargo build --workspace --bins >/dev/null
fi
BIN="$ROOT/target/$PROFILE"

echo "== busybox image (docker save archive built from $(command -v busybox))"
img="$WORK/image"
mkdir -p "$img/rootfs/bin" "$img/rootfs/tmp" "$img/rootfs/etc" "$img/rootfs/proc" "$img/rootfs/sys" "$img/rootfs/dev"
cp "$(command -v busybox)" "$img/rootfs/bin/busybox"
for applet in $(busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$img/rootfs/bin/$applet"
done
tar -C "$img/rootfs" --numeric-owner --owner=0 --group=0 -cf "$img/layer.tar" .
layer_sha=$(sha256sum "$img/layer.tar" | cut -d' ' -f1)
mkdir -p "$img/archive/$layer_sha"
mv "$img/layer.tar" "$img/archive/$layer_sha/layer.tar"
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$layer_sha" >"$img/config.json"
config_sha=$(sha256sum "$img/config.json" | cut -d' ' -f1)
mv "$img/config.json" "$img/archive/$config_sha.json"
printf '[{"Config":"%s.json","RepoTags":["busybox:latest"],"Layers":["%s/layer.tar"]}]' \
    "$config_sha" "$layer_sha" >"$img/archive/manifest.json"
tar -C "$img/archive" -cf "$WORK/busybox.tar" .
"$BIN/weftctl" image import "$WORK/busybox.tar" --image-root "$WORK/images" >/dev/null

echo "== node namespace $NS, etcd, weftd with static pods"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add eth0 type veth peer name eth0p
ip -n "$NS" link set eth0p up
ip -n "$NS" addr add 192.0.2.1/24 dev eth0
ip -n "$NS" link set eth0 up
ip netns exec "$NS" sysctl -q -w net.ipv4.ip_forward=1
ip netns exec "$NS" etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster bench=http://127.0.0.1:23800 >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 1 100); do
    ip netns exec "$NS" env ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:23790 \
        put /coreos.com/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' \
        >/dev/null 2>&1 && break
    sleep 0.1
done
mkdir -p "$WORK/manifests" "$WORK/net.d"
cat >"$WORK/net.d/10-weft.conflist" <<EOF
{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft","subnetFile":"$WORK/subnet.env","dataDir":"$WORK/ipam","bridge":"cni0"}]}
EOF
# nsenter --net, not `ip netns exec`: the latter also makes a mount namespace with a fresh /sys and
# no cgroup mounts, where runc cannot create containers.
nsenter --net="/run/netns/$NS" env RUST_LOG=warn "$BIN/weftd" \
    --etcd-endpoints http://127.0.0.1:23790 --iface eth0 \
    --subnet-file "$WORK/subnet.env" --state-dir "$WORK/state" \
    --pod-manifest-path "$WORK/manifests" --node-name bench \
    --cni-conf-dir "$WORK/net.d" --cni-bin-dir "$BIN,/usr/lib/cni" --cni-cache-dir "$WORK/cni" \
    --pod-root "$WORK/pods" --image-root "$WORK/images" --pod-log-dir "$WORK/logs" \
    >"$WORK/weftd.log" 2>&1 &
WEFTD_PID=$!
for _ in $(seq 1 200); do
    [ -s "$WORK/subnet.env" ] && break
    kill -0 "$WEFTD_PID" 2>/dev/null || { cat "$WORK/weftd.log" >&2; exit 1; }
    sleep 0.1
done
[ -s "$WORK/subnet.env" ] || { echo "weftd wrote no subnet.env" >&2; cat "$WORK/weftd.log" >&2; exit 1; }
cat "$WORK/subnet.env"

status_of() { # pod name -> status.json path (empty until the pod has one)
    local f
    for f in "$WORK"/pods/bench_"$1"_*/status.json; do
        [ -f "$f" ] && { echo "$f"; return 0; }
    done
    return 0
}

echo "== $N pods, one at a time"
printf '%-8s %8s %10s %8s %6s %11s %7s\n' pod total discovery sandbox cni containers status
rows="$WORK/rows"
: >"$rows"
for i in $(seq 1 "$N"); do
    name="p$i"
    cat >"$WORK/manifests/.$name.tmp" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: bench}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: busybox
      command: ['sleep', '3600']
EOF
    t0=$(now_ms)
    mv "$WORK/manifests/.$name.tmp" "$WORK/manifests/$name.yaml"
    t1=""
    for _ in $(seq 1 3000); do
        f=$(status_of "$name")
        if [ -n "$f" ] && jq -e '.pod.status.phase == "Running" and (.pod.status.podIP // "") != ""' "$f" >/dev/null 2>&1; then
            t1=$(now_ms)
            break
        fi
        sleep 0.005
    done
    [ -n "$t1" ] || { echo "pod $name did not reach Running" >&2; tail -n 30 "$WORK/weftd.log" >&2; exit 1; }
    read -r seen sb net ctr < <(jq -r '.timings | "\(.seenMs) \(.sandboxMs) \(.networkMs) \(.containersMs)"' "$f")
    row="$((t1 - t0)) $((seen - t0)) $((sb - seen)) $((net - sb)) $((ctr - net)) $((t1 - ctr))"
    echo "$row" >>"$rows"
    printf '%-8s %8s %10s %8s %6s %11s %7s\n' "$name" $row
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "== medians over $N pods (ms)"
for col in 1 2 3 4 5 6; do
    label=$(echo "total discovery sandbox cni containers status" | cut -d' ' -f"$col")
    printf '%-11s %6s ms\n' "$label" "$(awk -v c="$col" '{print $c}' "$rows" | median)"
done
echo
"$BIN/weftctl" pods --pod-root "$WORK/pods" --image-root "$WORK/images" --pod-log-dir "$WORK/logs" | head -n 4
echo "   ..."
