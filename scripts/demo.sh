#!/usr/bin/env bash
# weft demo: a 3-node cluster in network namespaces on this machine, with a real etcd and the real
# weftd on every node, pods on different nodes talking TCP over the VXLAN overlay.
#
#   scripts/demo.sh          run the demo and clean up
#   scripts/demo.sh --wait   pause before cleaning up, to look around (ip netns list, ...)
#
# Everything lives in network namespaces named weft-demo-<pid>-*: an underlay with a bridge
# (192.0.2.0/24, no uplink), etcd at 192.0.2.254, nodes at 192.0.2.11-13, one pod per node. The
# machine's own interfaces, routes and firewall are never touched. Everything is removed on exit,
# also on Ctrl-C or failure.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
WAIT=0
[ "${1:-}" = "--wait" ] && WAIT=1

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (it creates network namespaces)" >&2
    exit 1
fi

P="weft-demo-$$"
WORK=$(mktemp -d "/tmp/$P.XXXXXX")
NODES=3
ETCD_IP=192.0.2.254
NETWORK_CONFIG='{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
HEALTHZ=127.0.0.1:9102

if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
etcdctl_() { in_ns "$P-etcd" env ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379 "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    echo
    echo "== cleaning up ($P)"
    local ns
    for ns in $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print $1}'); do
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    done
    sleep 0.2
    for ns in $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print $1}'); do
        ip netns del "$ns" || true
    done
    rm -rf "$WORK"
    local left
    left=$(ip netns list | grep -c "^$P-" || true)
    echo "removed; $left namespaces of this demo left"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s; fails naming WHAT.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "demo.sh: timed out after ${secs}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# attach NS IP: veth from the underlay bridge into NS as eth0 with IP/24.
attach() {
    local ns=$1 ip=$2
    local port="x${ip##*.}"
    ip -n "$P-ul" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$P-ul" link set "$port" master br0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
}

new_ns() {
    ip netns add "$1"
    ip -n "$1" link set lo up
}

# wire_pod NODE POD INDEX: the pod's network, wired by hand like a CNI bridge plugin would:
# bridge cni0 with the subnet's first address on the node, a veth into the pod, the pod's
# address .(10+INDEX) and a default route via cni0. Gateway and MTU come from the node's subnet.env.
wire_pod() {
    local node=$1 pod=$2 index=$3
    local env_file="$WORK/$node/subnet.env" FLANNEL_SUBNET FLANNEL_MTU
    FLANNEL_SUBNET=$(sed -n 's/^FLANNEL_SUBNET=//p' "$env_file")
    FLANNEL_MTU=$(sed -n 's/^FLANNEL_MTU=//p' "$env_file")
    local gw=${FLANNEL_SUBNET%/*}
    local len=${FLANNEL_SUBNET#*/}
    local pod_ip="${gw%.*}.$((10 + index))"
    new_ns "$P-$pod"
    if ! ip -n "$P-$node" link show cni0 >/dev/null 2>&1; then
        ip -n "$P-$node" link add cni0 mtu "$FLANNEL_MTU" type bridge
        ip -n "$P-$node" addr add "$FLANNEL_SUBNET" dev cni0
        ip -n "$P-$node" link set cni0 up
    fi
    ip -n "$P-$node" link add "veth$index" mtu "$FLANNEL_MTU" type veth peer name eth0 netns "$P-$pod"
    ip -n "$P-$node" link set "veth$index" master cni0 up
    ip -n "$P-$pod" addr add "$pod_ip/$len" dev eth0
    ip -n "$P-$pod" link set eth0 up
    ip -n "$P-$pod" route add default via "$gw"
    echo "$pod_ip"
}

say "building weft (cargo build --workspace --bins)"
bash scripts/setup.sh
cargo build --workspace --bins
BIN="$ROOT/target/debug"

say "underlay: namespace $P-ul with bridge br0 (192.0.2.0/24, no uplink)"
new_ns "$P-ul"
ip -n "$P-ul" link add br0 type bridge
ip -n "$P-ul" link set br0 up

say "etcd at $ETCD_IP (namespace $P-etcd)"
new_ns "$P-etcd"
attach "$P-etcd" "$ETCD_IP"
in_ns "$P-etcd" etcd --name demo --data-dir "$WORK/etcd" \
    --listen-client-urls "http://$ETCD_IP:2379,http://127.0.0.1:2379" \
    --advertise-client-urls "http://$ETCD_IP:2379" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster demo=http://127.0.0.1:2380 >"$WORK/etcd.log" 2>&1 &
wait_for 30 "etcd" etcdctl_ endpoint health
etcdctl_ put /coreos.com/network/config "$NETWORK_CONFIG" >/dev/null
echo "network config: $NETWORK_CONFIG"

for i in $(seq 1 "$NODES"); do
    node="node$i"
    ip="192.0.2.1$i"
    say "$node at $ip: weftd --iface eth0 (log: $WORK/$node/weftd.log)"
    new_ns "$P-$node"
    attach "$P-$node" "$ip"
    in_ns "$P-$node" sysctl -q -w net.ipv4.ip_forward=1
    mkdir -p "$WORK/$node"
    in_ns "$P-$node" env RUST_LOG=info "$BIN/weftd" \
        --etcd-endpoints "http://$ETCD_IP:2379" --iface eth0 \
        --subnet-file "$WORK/$node/subnet.env" --state-dir "$WORK/$node/state" \
        --healthz-addr "$HEALTHZ" >"$WORK/$node/weftd.log" 2>&1 &
done
for i in $(seq 1 "$NODES"); do
    if ! wait_for 30 "subnet.env of node$i" test -s "$WORK/node$i/subnet.env"; then
        tail -20 "$WORK/node$i/weftd.log" >&2
        exit 1
    fi
done

say "leases in etcd (weftctl leases)"
in_ns "$P-node1" "$BIN/weftctl" leases --etcd-endpoints "http://$ETCD_IP:2379"

for i in $(seq 1 "$NODES"); do
    say "node$i: subnet.env"
    cat "$WORK/node$i/subnet.env"
done

say "node1: overlay routes, neighbours and FDB entries towards the other nodes"
ip -n "$P-node1" route show dev flannel.1
ip -n "$P-node1" neigh show dev flannel.1
bridge -n "$P-node1" fdb show dev flannel.1

say "pods: one per node, wired to the node's cni0 bridge"
declare -a POD_IP
for i in $(seq 1 "$NODES"); do
    POD_IP[i]=$(wire_pod "node$i" "pod$i" 0)
    echo "pod$i on node$i: ${POD_IP[i]}"
done

say "TCP between pods on different nodes (busybox nc over VXLAN)"
for i in $(seq 1 "$NODES"); do
    j=$((i % NODES + 1))
    in_ns "$P-pod$j" busybox nc -l -p 8080 >"$WORK/recv$j" &
    listener=$!
    msg="hello from pod$i (${POD_IP[i]}) on node$i"
    sent=0
    for _ in $(seq 1 50); do
        if echo "$msg" | in_ns "$P-pod$i" busybox nc -w 2 "${POD_IP[j]}" 8080 2>/dev/null; then
            sent=1
            break
        fi
        sleep 0.1
    done
    wait "$listener" || true
    if [ "$sent" -eq 1 ] && grep -qF "$msg" "$WORK/recv$j"; then
        echo "pod$j (${POD_IP[j]}) on node$j received: $(cat "$WORK/recv$j")"
    else
        echo "demo.sh: TCP from pod$i to pod$j failed" >&2
        exit 1
    fi
done

say "ping pod1 -> pod3"
in_ns "$P-pod1" ping -c 3 -i 0.2 -W 1 "${POD_IP[3]}"

say "node1: weftd metrics (curl http://$HEALTHZ/metrics)"
in_ns "$P-node1" curl -fsS "http://$HEALTHZ/metrics" | grep -v '^#' | head -15 || true

say "demo complete"
if [ "$WAIT" -eq 1 ]; then
    echo "namespaces: $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {printf "%s ", $1}')"
    read -r -p "press Enter to clean up " _ || true
fi
