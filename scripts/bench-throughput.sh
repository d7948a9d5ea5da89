#!/usr/bin/env bash
# Single-stream TCP pod-to-pod throughput of weft's backends against the kernel floor.
#
# One run, two nodes in network namespaces on a bridged underlay (192.0.2.0/24), one pod per
# node (10.244.0.0/16), iperf3 for each case:
#   underlay      pods over the bare underlay: no overlay, a route per peer subnet set by hand
#                 with ip(8) (the kernel floor of any pod-to-pod path; host-gw's reference)
#   node-to-node  the two nodes themselves, no pods (context: what the pods' veth and bridge
#                 hops cost, which no backend can remove)
#   vxlan-hand    pods over a VXLAN overlay built by hand with ip(8), exactly Flannel's layout
#   weft-vxlan    pods over weftd's VXLAN backend
#   vxlan6-hand   IPv6 pods over an IPv6 VXLAN built by hand with ip(8) on an IPv6 underlay
#                 (2001:db8::/64 on the same two nodes), exactly Flannel's flannel-v6.1 layout,
#                 pod MTU 1430
#   weft-vxlan6   IPv6 pods over weftd's VXLAN backend in an IPv6-only network on that underlay
#                 (flannel-v6.1), pod MTU 1430 (weft's own for IPv6)
#   weft-udp      pods over weftd's UDP backend (userspace data path), pods at VXLAN's MTU 1450
#                 (not UDP's own 1472) so that UDP and VXLAN carry the same segment size
#   weft-udp-plain  the same with --no-udp-offloads (one packet per syscall, as Flannel's)
#   weft-host-gw  pods over weftd's host-gw backend
#   weft-wg       pods over weftd's WireGuard backend, userspace data path (this kernel has no
#                 WireGuard module; --wireguard-datapath userspace elsewhere), pod MTU 1420
#   wg-go         pods over Debian's wireguard-go between the same two nodes, set up by hand
#                 with wg(8) and ip(8) as flanneld sets up flannel-wg, pod MTU 1420
# Prints Gbit/s and the ratios the issue sets targets for, and writes docs/throughput.md and
# the bar chart docs/throughput.svg (drawn by this script). Beside each case it reads how busy
# the machine's cores were while the case ran (/proc/stat, the whole machine: both nodes,
# iperf3, everything) and so what one Gbit cost in core-seconds; and it runs
# examples/wg-cipher.rs (boringtun's seal and open, the cipher work of the WireGuard data path,
# on one core) to print a model of the most any userspace WireGuard can carry here: weft UDP's
# cost per Gbit plus the cipher's, on the cores weft UDP kept busy.
#
# Runs as root; touches nothing outside its own namespaces (named wbench-<pid>-*), removed on
# exit. Environment: BENCH_SECONDS (per case and round, default 5), BENCH_ROUNDS (default 7;
# the cases are interleaved round by round, in reverse order every other round so that neither
# side of a ratio always runs first, and the median is reported, because a shared machine
# is noisy), BENCH_ONLY (space-separated case names to run; the others report 0),
# BENCH_PERF_DIR (record a system-wide perf profile per case there), WEFTD (weftd binary;
# default: build target/release/weftd), WG_CIPHER (the wg-cipher example binary; default:
# build it), DOCS_DIR (default <repo>/docs).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-7}
docs=${DOCS_DIR:-$here/docs}
prefix="wbench-$$"
work=$(mktemp -d /tmp/weft-bench.XXXXXX)
# etcd on tmpfs: its WAL writes and fsyncs must not compete with the measurement.
etcd_data=$(mktemp -d /dev/shm/weft-bench-etcd.XXXXXX)
etcd_ip=192.0.2.254
node_ips=(192.0.2.11 192.0.2.12)
node_ips6=(2001:db8::11 2001:db8::12)
network=10.244.0.0/16
network6=fd00:20::/48

die() { echo "bench-throughput: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces)"
for tool in ip iperf3 etcd etcdctl awk wg wireguard-go; do
    command -v "$tool" >/dev/null || die "missing $tool (run scripts/setup.sh)"
done

if [ -z "${WEFTD:-}" ]; then
    echo "building weftd (release)..." >&2
    (cd "$here" && cargo build --quiet --release --bin weftd)
    WEFTD="${CARGO_TARGET_DIR:-$here/target}/release/weftd"
fi
[ -x "$WEFTD" ] || die "weftd binary $WEFTD not found"
if [ -z "${WG_CIPHER:-}" ]; then
    echo "building examples/wg-cipher (release)..." >&2
    (cd "$here" && cargo build --quiet --release --example wg-cipher)
    WG_CIPHER="${CARGO_TARGET_DIR:-$here/target}/release/examples/wg-cipher"
fi
[ -x "$WG_CIPHER" ] || die "wg-cipher binary $WG_CIPHER not found"

ns() { echo "$prefix-$1"; }
inns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

cleanup() {
    local n pid
    for n in $(ip netns list 2>/dev/null | awk -v p="$prefix-" 'index($1, p) == 1 {print $1}'); do
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$n" 2>/dev/null || true
    done
    rm -rf "$work" "$etcd_data"
    # wireguard-go's control sockets are shared by all namespaces; its devices are named wb<pid>*.
    rm -f /var/run/wireguard/wb$$*.sock
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- topology ------------------------------------------------------------------------------

port=0
attach() { # attach <ns-role> <ip>: eth0 on the underlay bridge
    port=$((port + 1))
    ip -n "$(ns ul)" link add "x$port" type veth peer name eth0 netns "$(ns "$1")"
    ip -n "$(ns ul)" link set "x$port" master br0 up
    ip -n "$(ns "$1")" addr add "$2/24" dev eth0
    ip -n "$(ns "$1")" link set eth0 up
}

topology() { # fresh underlay, etcd namespace and two nodes
    cleanup_namespaces
    local role
    for role in ul etcd n1 n2 p1 p2; do
        ip netns add "$(ns "$role")"
        ip -n "$(ns "$role")" link set lo up
    done
    ip -n "$(ns ul)" link add br0 type bridge
    ip -n "$(ns ul)" link set br0 up
    attach etcd "$etcd_ip"
    attach n1 "${node_ips[0]}"
    attach n2 "${node_ips[1]}"
    inns n1 sysctl -qw net.ipv4.ip_forward=1
    inns n2 sysctl -qw net.ipv4.ip_forward=1
}

cleanup_namespaces() {
    local n pid
    for n in $(ip netns list 2>/dev/null | awk -v p="$prefix-" 'index($1, p) == 1 {print $1}'); do
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$n"
    done
}

ipv6_underlay() { # IPv6 on the nodes' eth0 (2001:db8::/64), no duplicate address detection
    local role
    for role in ul n1 n2 p1 p2; do
        inns "$role" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    done
    ip -n "$(ns n1)" addr add "${node_ips6[0]}/64" dev eth0 nodad
    ip -n "$(ns n2)" addr add "${node_ips6[1]}/64" dev eth0 nodad
    inns n1 sysctl -qw net.ipv6.conf.all.forwarding=1
    inns n2 sysctl -qw net.ipv6.conf.all.forwarding=1
}

wire_pod6() { # wire_pod6 <node> <pod> <gateway cidr, e.g. fd00:20:0:1::1/64> <mtu>: an IPv6-only pod
    local node=$1 pod=$2 gw=$3 mtu=$4
    local gw_ip=${gw%/*} len=${gw#*/}
    ip -n "$(ns "$node")" link add cni0 mtu "$mtu" type bridge
    ip -n "$(ns "$node")" addr add "$gw" dev cni0 nodad
    ip -n "$(ns "$node")" link set cni0 up
    ip -n "$(ns "$node")" link add veth0 mtu "$mtu" type veth peer name eth0 netns "$(ns "$pod")"
    ip -n "$(ns "$node")" link set veth0 master cni0 up
    ip -n "$(ns "$pod")" addr add "${gw_ip%::1}::10/$len" dev eth0 nodad
    ip -n "$(ns "$pod")" link set eth0 up
    ip -n "$(ns "$pod")" -6 route add default via "$gw_ip"
}

wire_pod() { # wire_pod <node> <pod> <gateway cidr, e.g. 10.244.1.1/24> <mtu>
    local node=$1 pod=$2 gw=$3 mtu=$4
    local base=${gw%.*} len=${gw#*/}
    ip -n "$(ns "$node")" link add cni0 mtu "$mtu" type bridge
    ip -n "$(ns "$node")" addr add "$gw" dev cni0
    ip -n "$(ns "$node")" link set cni0 up
    ip -n "$(ns "$node")" link add veth0 mtu "$mtu" type veth peer name eth0 netns "$(ns "$pod")"
    ip -n "$(ns "$node")" link set veth0 master cni0 up
    ip -n "$(ns "$pod")" addr add "$base.10/$len" dev eth0
    ip -n "$(ns "$pod")" link set eth0 up
    ip -n "$(ns "$pod")" route add default via "${gw%/*}"
}

# --- measurement ---------------------------------------------------------------------------

cpu_jiffies() { # the machine's total and idle (with iowait) jiffies since boot
    awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6; exit }' /proc/stat
}

iperf() { # iperf <client ns-role> <server ns-role> <server ip>: prints Gbit/s (receiver side)
    local client=$1 server=$2 ip=$3 out pid sampler t0 i0 t1 i1
    inns "$server" iperf3 -s -p 5201 >/dev/null 2>&1 &
    pid=$!
    sleep 0.5
    if [ -n "${BENCH_PERF_DIR:-}" ]; then # profile the whole machine during the middle of the run
        (sleep 1 && perf record -q -a -g -o "$BENCH_PERF_DIR/$current_case.data" -- sleep $((seconds - 2)) >/dev/null 2>&1) &
    fi
    # The cores busy over the measured seconds (iperf3 leaves the first one out).
    (sleep 1 && cpu_jiffies >"$work/cpu.start") &
    sampler=$!
    out=$(inns "$client" iperf3 -c "$ip" -p 5201 -O 1 -t "$seconds" -f m) || die "iperf3 $client -> $ip failed"
    cpu_jiffies >"$work/cpu.end"
    wait "$sampler" || die "reading /proc/stat failed"
    read -r t0 i0 <"$work/cpu.start"
    read -r t1 i1 <"$work/cpu.end"
    awk -v n="$(nproc)" -v t="$((t1 - t0))" -v i="$((i1 - i0))" \
        'BEGIN { printf "%.2f\n", (t > 0) ? n * (t - i) / t : 0 }' >>"$work/cores-$current_case"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$out" | awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") printf "%.2f\n", $(i-1) / 1000 }'
}

# --- cases ---------------------------------------------------------------------------------

case_node_to_node() {
    topology
    iperf n1 n2 "${node_ips[1]}"
}

case_vxlan_hand() {
    topology
    local i peer mac
    for i in 1 2; do
        ip -n "$(ns "n$i")" link add flannel.1 type vxlan id 1 local "${node_ips[$((i - 1))]}" dev eth0 \
            dstport 8472 nolearning
        ip -n "$(ns "n$i")" link set flannel.1 mtu 1450 up
        ip -n "$(ns "n$i")" addr add "10.244.$i.0/32" dev flannel.1
    done
    for i in 1 2; do
        peer=$((3 - i))
        mac=$(ip -n "$(ns "n$peer")" -j link show dev flannel.1 | awk -F'"address":"' '{split($2, a, "\""); print a[1]}')
        ip -n "$(ns "n$i")" route add "10.244.$peer.0/24" via "10.244.$peer.0" dev flannel.1 onlink
        ip -n "$(ns "n$i")" neigh add "10.244.$peer.0" lladdr "$mac" dev flannel.1 nud permanent
        bridge -n "$(ns "n$i")" fdb add "$mac" dev flannel.1 dst "${node_ips[$((peer - 1))]}" self permanent
        wire_pod "n$i" "p$i" "10.244.$i.1/24" 1450
    done
    iperf p1 p2 10.244.2.10
}

case_vxlan6_hand() { # Flannel's flannel-v6.1 by hand, IPv6 pods over the IPv6 underlay
    topology
    ipv6_underlay
    local i peer mac
    for i in 1 2; do
        ip -n "$(ns "n$i")" link add flannel-v6.1 type vxlan id 1 local "${node_ips6[$((i - 1))]}" dev eth0 \
            dstport 8472 nolearning
        ip -n "$(ns "n$i")" link set flannel-v6.1 mtu 1430 up
        ip -n "$(ns "n$i")" addr add "fd00:20:0:$i::/128" dev flannel-v6.1 nodad
    done
    for i in 1 2; do
        peer=$((3 - i))
        mac=$(ip -n "$(ns "n$peer")" -j link show dev flannel-v6.1 | awk -F'"address":"' '{split($2, a, "\""); print a[1]}')
        ip -n "$(ns "n$i")" -6 route add "fd00:20:0:$peer::/64" via "fd00:20:0:$peer::" dev flannel-v6.1 onlink
        ip -n "$(ns "n$i")" -6 neigh add "fd00:20:0:$peer::" lladdr "$mac" dev flannel-v6.1 nud permanent
        bridge -n "$(ns "n$i")" fdb add "$mac" dev flannel-v6.1 dst "${node_ips6[$((peer - 1))]}" self permanent
        wire_pod6 "n$i" "p$i" "fd00:20:0:$i::1/64" 1430
    done
    for _ in $(seq 50); do inns p1 ping -6 -c1 -W1 fd00:20:0:2::10 >/dev/null 2>&1 && break; sleep 0.2; done
    iperf p1 p2 fd00:20:0:2::10
}

case_wg_go() { # Debian's wireguard-go, configured as flanneld configures flannel-wg
    topology
    local i peer dev
    for i in 1 2; do
        dev="wb$$n$i" # unique: the control socket /var/run/wireguard/<dev>.sock is shared
        WG_PROCESS_FOREGROUND=1 inns "n$i" wireguard-go -f "$dev" >/dev/null 2>&1 &
        for _ in $(seq 50); do ip -n "$(ns "n$i")" link show dev "$dev" >/dev/null 2>&1 && break; sleep 0.1; done
        (umask 077 && wg genkey >"$work/wg-n$i.key")
        wg pubkey <"$work/wg-n$i.key" >"$work/wg-n$i.pub"
        inns "n$i" wg set "$dev" private-key "$work/wg-n$i.key" listen-port 51820
        ip -n "$(ns "n$i")" link set "$dev" mtu 1420 up
        ip -n "$(ns "n$i")" addr add "10.244.$i.0/32" dev "$dev"
        ip -n "$(ns "n$i")" route replace "$network" dev "$dev" scope link
    done
    for i in 1 2; do
        peer=$((3 - i))
        inns "n$i" wg set "wb$$n$i" peer "$(cat "$work/wg-n$peer.pub")" \
            endpoint "${node_ips[$((peer - 1))]}:51820" allowed-ips "10.244.$peer.0/24"
        wire_pod "n$i" "p$i" "10.244.$i.1/24" 1420
    done
    for _ in $(seq 50); do inns p1 ping -c1 -W1 10.244.2.10 >/dev/null 2>&1 && break; sleep 0.2; done
    iperf p1 p2 10.244.2.10
}

case_underlay() { # pods over the bare underlay, routed by hand as host-gw does
    topology
    local i peer
    for i in 1 2; do
        peer=$((3 - i))
        ip -n "$(ns "n$i")" route add "10.244.$peer.0/24" via "${node_ips[$((peer - 1))]}" dev eth0
        wire_pod "n$i" "p$i" "10.244.$i.1/24" 1500
    done
    iperf p1 p2 10.244.2.10
}

start_weft() { # start_weft <backend type> [pod MTU cap] [weftd flags..]: etcd, weftd on both nodes, a pod on each
    # With weft_ipv6=1 the network is IPv6-only on the IPv6 underlay, the pods IPv6-only.
    local mtu_cap=${2:-0}
    local -a flags=("${@:3}")
    local label=$1 config="{\"Network\":\"$network\",\"Backend\":{\"Type\":\"$1\"}}"
    topology
    if [ -n "${weft_ipv6:-}" ]; then
        label="$1-v6"
        config="{\"EnableIPv4\":false,\"EnableIPv6\":true,\"IPv6Network\":\"$network6\",\"Backend\":{\"Type\":\"$1\"}}"
        ipv6_underlay
    fi
    set -- "$label"
    local data="$etcd_data/$1"
    rm -rf "$data" "$work/$1-n1" "$work/$1-n2" # every round starts from an empty cluster
    mkdir -p "$data"
    inns etcd etcd --name bench --data-dir "$data" \
        --listen-client-urls "http://$etcd_ip:2379" --advertise-client-urls "http://$etcd_ip:2379" \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster bench=http://127.0.0.1:2380 >"$work/etcd-$1.log" 2>&1 &
    local i
    for i in $(seq 100); do
        inns etcd etcdctl --endpoints "http://$etcd_ip:2379" put /coreos.com/network/config \
            "$config" >/dev/null 2>&1 && break
        sleep 0.1
    done
    for i in 1 2; do
        mkdir -p "$work/$1-n$i"
        inns "n$i" "$WEFTD" --etcd-endpoints "http://$etcd_ip:2379" --iface eth0 \
            --subnet-file "$work/$1-n$i/subnet.env" --state-dir "$work/$1-n$i/state" "${flags[@]}" \
            >"$work/$1-n$i/weftd.log" 2>&1 &
    done
    for i in 1 2; do
        local env="$work/$1-n$i/subnet.env" t
        for t in $(seq 300); do [ -s "$env" ] && break; sleep 0.1; done
        [ -s "$env" ] || die "weftd ($1) on node $i wrote no subnet.env: $(tail -5 "$work/$1-n$i/weftd.log")"
        unset FLANNEL_SUBNET FLANNEL_IPV6_SUBNET
        # shellcheck disable=SC1090
        . "$env"
        if [ "$mtu_cap" -gt 0 ] && [ "$FLANNEL_MTU" -gt "$mtu_cap" ]; then FLANNEL_MTU=$mtu_cap; fi
        if [ -n "${FLANNEL_SUBNET:-}" ]; then
            wire_pod "n$i" "p$i" "$FLANNEL_SUBNET" "$FLANNEL_MTU"
            eval "pod_ip_$i=\${FLANNEL_SUBNET%.*}.10"
        else
            wire_pod6 "n$i" "p$i" "$FLANNEL_IPV6_SUBNET" "$FLANNEL_MTU"
            local gw6=${FLANNEL_IPV6_SUBNET%/*}
            eval "pod_ip_$i=\${gw6%::1}::10"
        fi
    done
    for t in $(seq 100); do
        inns p1 ping -c1 -W1 "$pod_ip_2" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "pods cannot reach each other over weft $1"
}

case_weft() { # case_weft <backend type> [pod MTU cap] [weftd flags..]
    start_weft "$@"
    iperf p1 p2 "$pod_ip_2"
}

# --- run -----------------------------------------------------------------------------------

declare -A gbps runs
# Run order: each weft case next to the reference its target compares it with, so the per-round
# ratios below compare measurements taken seconds apart; odd rounds run the list forwards (the
# reference first), even rounds backwards (weft first).
names=(underlay weft-host-gw vxlan-hand weft-vxlan vxlan6-hand weft-vxlan6 weft-udp weft-wg wg-go weft-udp-plain node-to-node)
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "single-stream TCP, ${seconds}s per case, ${rounds} rounds (cases interleaved; median reported)" >&2
run_case() {
    current_case=$1
    case $1 in
    underlay) case_underlay ;;
    node-to-node) case_node_to_node ;;
    vxlan-hand) case_vxlan_hand ;;
    weft-vxlan) case_weft vxlan ;;
    vxlan6-hand) case_vxlan6_hand ;;
    weft-vxlan6) weft_ipv6=1 case_weft vxlan ;;
    weft-udp) case_weft udp 1450 ;;
    weft-udp-plain) case_weft udp 1450 --no-udp-offloads ;;
    weft-host-gw) case_weft host-gw ;;
    weft-wg) case_weft wireguard 0 --wireguard-datapath userspace ;;
    wg-go) case_wg_go ;;
    esac
}
for round in $(seq "$rounds"); do
    order=("${names[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((k = ${#names[@]} - 1; k >= 0; k--)); do order+=("${names[$k]}"); done
    fi
    for n in "${order[@]}"; do
        if [ -n "${BENCH_ONLY:-}" ] && [[ " $BENCH_ONLY " != *" $n "* ]]; then runs[$n]+=" 0"; continue; fi
        runs[$n]+=" $(run_case "$n")"
    done
    echo "  round $round:$(for n in "${names[@]}"; do printf ' %s=%s' "$n" "${runs[$n]##* }"; done) Gbit/s" >&2
done
for n in "${names[@]}"; do gbps[$n]=$(echo "${runs[$n]}" | median); done
cleanup_namespaces

# Cores busy per case (median over its rounds) and core-seconds per Gbit (median of the rounds'
# busy cores / Gbit/s).
declare -A cores cpg
for n in "${names[@]}"; do
    if [ -s "$work/cores-$n" ]; then
        cores[$n]=$(median <"$work/cores-$n" | awk '{ printf "%.2f", $1 }')
        read -r -a g <<<"${runs[$n]}"
        cpg[$n]=$(awk 'NR == FNR { c[FNR] = $1; next } { for (i = 1; i <= NF; i++) if ($i > 0 && c[i] != "") print c[i] / $i }' \
            "$work/cores-$n" <(echo "${g[@]}") | median | awk '{ printf "%.3f", $1 }')
    else
        cores[$n]=0
        cpg[$n]=0
    fi
done

# The cipher work of WireGuard on one core, and the model it gives.
# One run per core at once: the data path's cipher work shares the machine with everything
# else, and a core runs it slower when its neighbour is busy too. The mean of the runs.
cipher_out=$(for _ in $(seq "$(nproc)"); do "$WG_CIPHER" 5 >"$work/cipher.$BASHPID.$RANDOM" & done; wait; cat "$work"/cipher.*) ||
    die "wg-cipher failed"
echo "$cipher_out" >&2
field() { echo "$cipher_out" | awk -v f="$1" '/^packet 1420 / { for (i = 1; i <= NF; i++) if ($i == f) { s += $(i - 1); n++ } } END { if (n) printf "%.3f", s / n }'; }
cipher_cpg=$(field core-seconds)
cipher_rate=$(field GB/s | awk '{ printf "%.2f", $1 }')
[ -n "$cipher_cpg" ] || die "wg-cipher printed no rate: $cipher_out"
# model <cores>: Gbit/s of a data path spending weft UDP's core-seconds per Gbit plus the cipher's
model() { awk -v c="$1" -v u="${cpg[weft-udp]}" -v x="$cipher_cpg" 'BEGIN { if (u > 0) printf "%.2f", c / (u + x); else print 0 }'; }
model_busy=$(model "${cores[weft-udp]}")
model_all=$(model "$(nproc)")
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f", 100 * a / b; else print 0 }'; }
times() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print 0 }'; }

ratio() { # ratio <case> <reference>: median over the rounds of 100 * case / reference (same round)
    local -a a b
    read -r -a a <<<"${runs[$1]}"
    read -r -a b <<<"${runs[$2]}"
    local i out=""
    for i in "${!a[@]}"; do
        out+=" $(awk -v x="${a[$i]}" -v y="${b[$i]:-0}" 'BEGIN { if (y > 0) printf "%.2f", 100 * x / y }')"
    done
    echo "$out" | median | awk '{ printf "%.0f", $1 }'
}
r_vxlan=$(ratio weft-vxlan vxlan-hand)
r_vxlan6=$(ratio weft-vxlan6 vxlan6-hand)
r_hostgw=$(ratio weft-host-gw underlay)
r_hostgw_nodes=$(ratio weft-host-gw node-to-node)
r_pods_nodes=$(ratio underlay node-to-node)
r_udp=$(ratio weft-udp weft-vxlan)
r_udp_plain=$(ratio weft-udp-plain weft-udp)
r_wg_go=$(ratio weft-wg wg-go)
r_wg_udp=$(ratio weft-wg weft-udp)
# spread <case> <reference>: the lowest and highest per-round ratio, to show how much one round moves
spread() {
    local -a a b
    read -r -a a <<<"${runs[$1]}"
    read -r -a b <<<"${runs[$2]}"
    local i
    for i in "${!a[@]}"; do
        awk -v x="${a[$i]}" -v y="${b[$i]:-0}" 'BEGIN { if (y > 0) printf "%.0f\n", 100 * x / y }'
    done | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s %%", lo, hi }'
}
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r + 0 >= t) ? "met" : "MISSED" }'; }

date_utc=$(date -u +"%Y-%m-%d %H:%M UTC")
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
machine="$(uname -sr), $(nproc) CPUs (${cpu:-unknown CPU}), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)"

report=$(cat <<EOF
# weft throughput

Single-stream TCP, pod to pod, iperf3 for ${seconds} s per case after a first second left out
(slow start, and the start-up of weftd and etcd just before); two nodes in network namespaces
on a veth/bridge underlay (MTU 1500), one run of \`scripts/bench-throughput.sh\`: ${rounds} rounds
with the cases interleaved, median of the rounds reported (all rounds listed below). Each ratio
is the median of its per-round ratios; within a round each weft case runs next to the case it
is compared with, before it in every other round, so the shared machine's drift cancels out of
the ratios. The UDP cases run their pods at MTU 1450, VXLAN's, instead of UDP's own 1472, so
UDP and VXLAN are compared at the same segment size.

Machine: ${machine}
Date: ${date_utc}

| case | Gbit/s | cores busy | core-s per Gbit |
|---|---:|---:|---:|
| pods over the bare underlay (routes by hand, no overlay) | ${gbps[underlay]} | ${cores[underlay]} | ${cpg[underlay]} |
| node to node, no pods (context) | ${gbps[node-to-node]} | ${cores[node-to-node]} | ${cpg[node-to-node]} |
| VXLAN built by hand (kernel floor) | ${gbps[vxlan-hand]} | ${cores[vxlan-hand]} | ${cpg[vxlan-hand]} |
| weft VXLAN | ${gbps[weft-vxlan]} | ${cores[weft-vxlan]} | ${cpg[weft-vxlan]} |
| IPv6 VXLAN built by hand on the IPv6 underlay, pod MTU 1430 | ${gbps[vxlan6-hand]} | ${cores[vxlan6-hand]} | ${cpg[vxlan6-hand]} |
| weft VXLAN, IPv6-only network on the IPv6 underlay, pod MTU 1430 | ${gbps[weft-vxlan6]} | ${cores[weft-vxlan6]} | ${cpg[weft-vxlan6]} |
| weft UDP (userspace), pod MTU 1450 | ${gbps[weft-udp]} | ${cores[weft-udp]} | ${cpg[weft-udp]} |
| weft UDP with \`--no-udp-offloads\`, pod MTU 1450 | ${gbps[weft-udp-plain]} | ${cores[weft-udp-plain]} | ${cpg[weft-udp-plain]} |
| weft host-gw | ${gbps[weft-host-gw]} | ${cores[weft-host-gw]} | ${cpg[weft-host-gw]} |
| weft WireGuard (userspace data path), pod MTU 1420 | ${gbps[weft-wg]} | ${cores[weft-wg]} | ${cpg[weft-wg]} |
| Debian's wireguard-go set up by hand as flanneld does, pod MTU 1420 | ${gbps[wg-go]} | ${cores[wg-go]} | ${cpg[wg-go]} |

"cores busy" is the whole machine ($(nproc) CPUs) while the case ran: both nodes,
both iperf3 ends, the kernel's packet work; "core-s per Gbit" is that over the Gbit/s (median
of the rounds), what one Gbit cost the machine.

| ratio | value | target | |
|---|---:|---:|---|
| weft VXLAN / hand-built VXLAN | ${r_vxlan} % (rounds $(spread weft-vxlan vxlan-hand)) | ≥ 95 % | $(verdict "$r_vxlan" 95) |
| weft VXLAN / hand-built VXLAN, over the IPv6 underlay | ${r_vxlan6} % (rounds $(spread weft-vxlan6 vxlan6-hand)) | ≥ 95 % | $(verdict "$r_vxlan6" 95) |
| weft host-gw / underlay (pods over the bare underlay) | ${r_hostgw} % (rounds $(spread weft-host-gw underlay)) | ≥ 95 % | $(verdict "$r_hostgw" 95) |
| weft host-gw / node to node | ${r_hostgw_nodes} % | (context) | |
| pods over the bare underlay / node to node | ${r_pods_nodes} % | (context: cost of the pod hops) | |
| weft UDP / weft VXLAN (same pod MTU) | ${r_udp} % (rounds $(spread weft-udp weft-vxlan)) | ≥ 50 % | $(verdict "$r_udp" 50) |
| weft UDP without / with offloads | ${r_udp_plain} % (rounds $(spread weft-udp-plain weft-udp)) | (context) | |
| weft WireGuard / wireguard-go | ${r_wg_go} % (rounds $(spread weft-wg wg-go)) | ≥ 1000 % | $(verdict "$r_wg_go" 1000) |
| weft WireGuard / weft UDP (pod MTU 1420 vs 1450) | ${r_wg_udp} % (rounds $(spread weft-wg weft-udp)) | ≥ 50 % | $(verdict "$r_wg_udp" 50) |

Every case but node-to-node is measured pod to pod: iperf3 runs in a pod namespace behind a
veth pair and a \`cni0\` bridge on each node. "underlay" is the pods talking over the bare
underlay with no overlay at all (a route per peer subnet via the peer node, set by hand), the
floor any backend's pod-to-pod path stands on; node-to-node shows what the pods' own veth and
bridge hops cost on this CPU-bound veth underlay, which no backend can take away.

### What the WireGuard targets ask of this machine

The cipher work alone, measured by \`examples/wg-cipher.rs\` (boringtun's \`encapsulate\` and
\`decapsulate\`, the calls the data path makes per segment, 1420-byte packets, after a real
handshake; one run on each core at once, their mean): one core seals and opens together
${cipher_rate} GB/s of plaintext, so
**${cipher_cpg} core-s per Gbit** of pod traffic (every bit is sealed on one node and opened on
the other, both on this machine's cores). weft UDP, the same TUN and socket machinery without
the cipher, cost ${cpg[weft-udp]} core-s per Gbit. A userspace WireGuard that spent nothing
beyond those two would carry at most **${model_busy} Gbit/s** on the ${cores[weft-udp]} cores
weft UDP kept busy ($(pct "$model_busy" "${gbps[weft-udp]}") % of weft UDP, $(times "$model_busy" "${gbps[wg-go]}")× wireguard-go), and
${model_all} Gbit/s with all $(nproc) cores busy. weft WireGuard cost ${cpg[weft-wg]} core-s per Gbit;
wireguard-go ${cpg[wg-go]} ($(times "${cpg[wg-go]}" "${cpg[weft-wg]}")× weft's). This is a model from
measured costs, for reading the targets against the machine, not a measurement of a data path.

Rounds (Gbit/s): $(for n in "${names[@]}"; do printf '%s:%s; ' "$n" "${runs[$n]}"; done)

Rounds (cores busy): $(for n in "${names[@]}"; do printf '%s:%s; ' "$n" "$(tr '\n' ' ' <"$work/cores-$n" 2>/dev/null | sed 's/ $//')"; done)

![bar chart](throughput.svg)
EOF
)

svg() {
    local max=0 n v
    for n in "${names[@]}"; do max=$(awk -v a="$max" -v b="${gbps[$n]}" 'BEGIN { print (b > a) ? b : a }'); done
    awk -v max="$max" -v date="$date_utc" -v secs="$seconds" -v rounds="$rounds" -v bars="${#names[@]}" '
        BEGIN {
            w = 640; h = 50 + bars * 54 + 40; left = 130; top = 50; bar = 34; gap = 20; span = w - left - 90
            printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"13\">\n", w, h, w, h
            printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            printf "<text x=\"%d\" y=\"24\" font-size=\"16\" font-weight=\"bold\">Single-stream TCP pod to pod (Gbit/s)</text>\n", left - 120
            printf "<text x=\"%d\" y=\"%d\" fill=\"#555\" font-size=\"11\">iperf3, median of %s rounds of %s s, %s</text>\n", left - 120, h - 12, rounds, secs, date
        }
        {
            y = top + (NR - 1) * (bar + gap)
            len = (max > 0) ? $2 / max * span : 0
            color = ($1 ~ /^weft/) ? "#2b7bb9" : "#999999"
            printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", left - 8, y + bar / 2 + 5, $1
            printf "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", left, y, len, bar, color
            printf "<text x=\"%.1f\" y=\"%d\">%s</text>\n", left + len + 6, y + bar / 2 + 5, $2
        }
        END { print "</svg>" }
    '
}

mkdir -p "$docs"
echo "$report" >"$docs/throughput.md"
for n in "${names[@]}"; do echo "$n ${gbps[$n]}"; done | svg >"$docs/throughput.svg"
echo "$report"
echo >&2 "wrote $docs/throughput.md and $docs/throughput.svg"
