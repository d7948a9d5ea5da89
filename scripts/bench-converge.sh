#!/usr/bin/env bash
# Convergence benchmark of weftd (issue 2), all inside network namespaces:
#
# 1. PEERS leases (default 1000) in a real etcd; a fresh node starts weftd; measured as an outside
#    observer sees it: from the weftd process start until all 3*PEERS kernel entries (route,
#    permanent neighbour, FDB entry per peer) are seen in the kernel. weftd's own reconcile time
#    (its log's took_ms) is printed for information only: it is timed inside the process.
# 2. The floor, timed the same way: from creating a VXLAN device by hand in a fresh namespace
#    and applying the same entries with `ip -batch` + `bridge -batch` until all entries are seen,
#    by the same polling. Each run measures both back to back, in alternating order; the ratio is the median
#    of the per-run ratios.
# 3. The time from a new lease's put request leaving the client (curl's own clock) to its route
#    existing on a running node (and from its deletion to the route being gone).
#
# Each is repeated (RUNS, LAT_RUNS) and the medians are printed.
#
#   scripts/bench-converge.sh                 release build, 1000 peers, 5 runs
#   PEERS=500 RUNS=3 PROFILE=debug scripts/bench-converge.sh
#   SKIP_BUILD=1 scripts/bench-converge.sh   use the weftd already built
#
# Addresses: underlay 192.0.2.0/24; pod network 10.244.0.0/16 cut into /26 subnets (1000 /24s do
# not fit in a /16); the fake peers' public IPs are in 198.18.0.0/15 (RFC 2544 benchmarking range),
# only ever written into FDB entries of the test namespace, never sent to.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PEERS=${PEERS:-1000}
RUNS=${RUNS:-5}
LAT_RUNS=${LAT_RUNS:-10}
PROFILE=${PROFILE:-release}

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-converge.sh: run as root (it creates network namespaces)" >&2
    exit 1
fi
if [ "$PEERS" -gt 1000 ] || [ "$PEERS" -lt 1 ]; then
    echo "bench-converge.sh: PEERS must be 1..1000 (the /16 holds 1023 /26 subnets)" >&2
    exit 1
fi

P="weft-bench-$$"
WORK=$(mktemp -d "/tmp/$P.XXXXXX")
ETCD_IP=192.0.2.254
PREFIX=/coreos.com/network
CONFIG='{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}'

# shellcheck source=lib/bench-cleanup.sh
source "$ROOT/scripts/lib/bench-cleanup.sh"

now_ns() { date +%s%N; }
# nap: a 5 ms pause without forking, so polling loops leave the CPUs to weftd.
exec {SLEEP_FD}<> <(:)
nap() { read -r -t 0.005 -u "$SLEEP_FD" || true; }
ms_since() {
    local us=$((($(now_ns) - $1) / 1000))
    printf '%d.%d\n' $((us / 1000)) $(((us % 1000) / 100))
}
median() { sort -n | awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
new_ns() { ip netns add "$1" && ip -n "$1" link set lo up; }
attach() {
    local ns=$1 ip=$2
    local port="x${ip##*.}"
    ip -n "$P-ul" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$P-ul" link set "$port" master br0 up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
}
etcd_api() { ip netns exec "$P-etcd" curl -fsS -X POST "http://127.0.0.1:2379/v3/$1" -d "$2"; }
b64() { printf '%s' "$1" | base64 -w0; }
# etcd_sent PATH BODY: POSTs like etcd_api; prints when (now_ns clock) the request left curl:
# the return time less curl's own time from sending the request to the end of the answer.
etcd_sent() {
    local times t_after
    times=$(ip netns exec "$P-etcd" curl -fsS -o /dev/null -w '%{time_pretransfer} %{time_total}' \
        -X POST "http://127.0.0.1:2379/v3/$1" -d "$2")
    t_after=$(now_ns)
    awk -v t="$t_after" -v c="$times" 'BEGIN { split(c, a, " "); printf "%.0f\n", t - (a[2] - a[1]) * 1e9 }'
}

# entry_counts NS: "routes neighbours fdb" on flannel.1 (0 0 0 while the device is missing).
entry_counts() {
    local ns=$1 r n f
    r=$(ip -n "$ns" route show dev flannel.1 2>/dev/null | grep -c onlink || true)
    n=$(ip -n "$ns" neigh show dev flannel.1 nud permanent 2>/dev/null | grep -c lladdr || true)
    f=$(bridge -n "$ns" fdb show dev flannel.1 2>/dev/null | grep -c ' dst ' || true)
    echo "$r $n $f"
}

echo "== building weftd ($PROFILE)"
bash scripts/setup.sh >/dev/null
if [ -n "${SKIP_BUILD:-}" ]; then
    echo "   SKIP_BUILD set: using the existing target/$PROFILE/weftd"
elif [ "$PROFILE" = release ]; then
    cargo build --release --bin weftd
else
    cargo build --bin weftd
fi
WEFTD="$ROOT/target/$PROFILE/weftd"

echo "== underlay, etcd, $PEERS leases"
new_ns "$P-ul"
ip -n "$P-ul" link add br0 type bridge
ip -n "$P-ul" link set br0 up
new_ns "$P-etcd"
attach "$P-etcd" "$ETCD_IP"
ip netns exec "$P-etcd" etcd --name bench --data-dir "$WORK/etcd" --max-txn-ops 5000 \
    --listen-client-urls "http://$ETCD_IP:2379,http://127.0.0.1:2379" \
    --advertise-client-urls "http://$ETCD_IP:2379" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bench=http://127.0.0.1:2380 >"$WORK/etcd.log" 2>&1 &
disown
for _ in $(seq 1 300); do
    etcd_api kv/range '{"key":"Lw=="}' >/dev/null 2>&1 && break
    sleep 0.1
done
etcd_api kv/put "{\"key\":\"$(b64 "$PREFIX/config")\",\"value\":\"$(b64 "$CONFIG")\"}" >/dev/null
LEASE=$(etcd_api lease/grant '{"TTL":7200}' | jq -r .ID)

# One line per fake peer: subnet address, VTEP MAC, public IP. Subnet s = i+1 (the first /26 is
# never handed out), so the node's own subnet is one of the last 23.
awk -v n="$PEERS" 'BEGIN { for (i = 0; i < n; i++) { s = i + 1;
    printf "10.244.%d.%d\t02:42:c6:12:%02x:%02x\t198.18.%d.%d\n", int(s / 4), (s % 4) * 64,
        int(i / 256), i % 256, int(i / 250), i % 250 + 1 } }' >"$WORK/peers.tsv"
jq -Rn --arg lease "$LEASE" --arg prefix "$PREFIX" '{success: [inputs | split("\t") | {requestPut: {
    key: ("\($prefix)/subnets/\(.[0])-26" | @base64),
    value: ({PublicIP: .[2], BackendType: "vxlan", BackendData: {VNI: 1, VtepMAC: .[1]}} | tojson | @base64),
    lease: $lease}}]}' <"$WORK/peers.tsv" >"$WORK/txn.json"
etcd_api kv/txn "@$WORK/txn.json" | jq -e .succeeded >/dev/null
echo "   $(ip netns exec "$P-etcd" env ETCDCTL_API=3 etcdctl get --prefix "$PREFIX/subnets/" --keys-only | grep -c subnets) leases in etcd"

# The same entries for ip -batch / bridge -batch.
awk -F'\t' '{ printf "route add %s/26 via %s dev flannel.1 onlink\nneigh add %s lladdr %s dev flannel.1 nud permanent\n", $1, $1, $1, $2 }' \
    "$WORK/peers.tsv" >"$WORK/ip.batch"
awk -F'\t' '{ printf "fdb add %s dev flannel.1 dst %s self permanent\n", $2, $3 }' "$WORK/peers.tsv" >"$WORK/bridge.batch"

: >"$WORK/start_ms"
: >"$WORK/program_ms"
: >"$WORK/floor_ms"
: >"$WORK/ratio"

# wait_entries NS T0 WHAT: polls until NS has all entries; prints the ms since T0.
wait_entries() {
    local ns=$1 t0=$2 what=$3 deadline=$((SECONDS + 30))
    until [ "$(entry_counts "$ns")" = "$PEERS $PEERS $PEERS" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$what: entries after 30 s: $(entry_counts "$ns") (want $PEERS each)" >&2
            return 1
        fi
        nap
    done
    ms_since "$t0"
}

run_weftd() { # run_weftd RUN: starts weftd on a fresh node; sets start_ms, program_ms
    # Peer probing off: the benchmark's peers do not exist, and the floor sends no probes either.
    local run=$1 node="$P-n$1"
    new_ns "$node"
    attach "$node" "192.0.2.$((10 + run))"
    mkdir -p "$WORK/n$run"
    local t0
    t0=$(now_ns)
    ip netns exec "$node" env RUST_LOG=info "$WEFTD" --etcd-endpoints "http://$ETCD_IP:2379" \
        --iface eth0 --subnet-file "$WORK/n$run/subnet.env" --state-dir "$WORK/n$run/state" \
        --peer-probe-interval 0 >"$WORK/n$run/weftd.log" 2>&1 &
    weftd_pid=$!
    disown
    start_ms=$(wait_entries "$node" "$t0" "weftd run $run") || { tail -20 "$WORK/n$run/weftd.log" >&2; exit 1; }
    program_ms=$(grep -m1 -o "reconciled .*added=$((3 * PEERS)) .*took_ms=[0-9.]*" "$WORK/n$run/weftd.log" |
        sed 's/.*took_ms=//' | awk '{printf "%.1f", $1}' || true)
}

run_floor() { # run_floor RUN: the same entries with ip/bridge -batch; sets floor_ms
    local floor="$P-f$1"
    new_ns "$floor"
    ip -n "$floor" link add eth0 type veth peer name eth0p
    ip -n "$floor" link set eth0p up
    ip -n "$floor" addr add 192.0.2.200/24 dev eth0
    ip -n "$floor" link set eth0 up
    local t1
    t1=$(now_ns)
    # As weftd does: the device first, then every entry.
    {
        ip -n "$floor" link add flannel.1 type vxlan id 1 local 192.0.2.200 dev eth0 dstport 8472 nolearning &&
            ip -n "$floor" addr add 10.244.0.0/32 dev flannel.1 &&
            ip -n "$floor" link set flannel.1 up &&
            ip -n "$floor" -batch "$WORK/ip.batch" && bridge -n "$floor" -batch "$WORK/bridge.batch"
    } &
    floor_ms=$(wait_entries "$floor" "$t1" "floor run $1") || exit 1
    wait
    ip netns del "$floor"
}

for run in $(seq 1 "$RUNS"); do
    # Alternate which side runs first, so neither always follows the other's kernel work.
    if ((run % 2)); then
        run_weftd "$run"
        run_floor "$run"
    else
        run_floor "$run"
        run_weftd "$run"
    fi
    echo "$start_ms" >>"$WORK/start_ms"
    [ -n "$program_ms" ] && echo "$program_ms" >>"$WORK/program_ms"
    echo "$floor_ms" >>"$WORK/floor_ms"
    awk -v a="$start_ms" -v b="$floor_ms" 'BEGIN { if (b > 0) printf "%.3f\n", a / b }' >>"$WORK/ratio"
    echo "   run $run: weftd start -> all $((3 * PEERS)) entries seen ${start_ms} ms (its reconcile ${program_ms:-?} ms); ip/bridge -batch start -> all seen ${floor_ms} ms"

    if [ "$run" -lt "$RUNS" ]; then
        kill -9 "$weftd_pid" 2>/dev/null || true
        own=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/n$run/subnet.env" | awk -F'[./]' '{printf "%s.%s.%s.%d-%s", $1, $2, $3, $4 - 1, $5}')
        etcd_api kv/deleterange "{\"key\":\"$(b64 "$PREFIX/subnets/$own")\"}" >/dev/null
        ip netns del "$P-n$run"
    fi
done

echo "== new lease in etcd -> route on the running node ($LAT_RUNS times)"
node="$P-n$RUNS"
own=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/n$RUNS/subnet.env" | awk -F'[./]' '{printf "%s.%s.%s.%d", $1, $2, $3, $4 - 1}')
: >"$WORK/lat"
: >"$WORK/withdraw"
s=1001
MISSED_ADD=0
MISSED_DEL=0
for k in $(seq 1 "$LAT_RUNS"); do
    while :; do
        subnet="10.244.$((s / 4)).$(((s % 4) * 64))"
        s=$((s + 1))
        [ "$subnet" != "$own" ] && break
    done
    key=$(b64 "$PREFIX/subnets/$subnet-26")
    value=$(b64 "{\"PublicIP\":\"198.19.0.$k\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"02:42:c6:13:00:$(printf %02x "$k")\"}}")
    # The put's request leaves curl at t_after - (time_total - time_pretransfer), by curl's clock:
    # from there, etcd's commit and weftd's watch, reconcile and netlink are all counted.
    t_sent=$(etcd_sent kv/put "{\"key\":\"$key\",\"value\":\"$value\",\"lease\":\"$LEASE\"}")
    deadline=$((SECONDS + 10))
    until [ -n "$(ip -n "$node" route show "$subnet/26" 2>/dev/null)" ] || [ "$SECONDS" -ge "$deadline" ]; do nap; done
    if [ -n "$(ip -n "$node" route show "$subnet/26" 2>/dev/null)" ]; then
        ms_since "$t_sent" >>"$WORK/lat"
    else
        echo "   lease $k: route to $subnet/26 not programmed within 10 s (not counted)"
        MISSED_ADD=$((MISSED_ADD + 1))
    fi
    t_del=$(etcd_sent kv/deleterange "{\"key\":\"$key\"}")
    deadline=$((SECONDS + 10))
    until [ -z "$(ip -n "$node" route show "$subnet/26" 2>/dev/null)" ] || [ "$SECONDS" -ge "$deadline" ]; do nap; done
    if [ -z "$(ip -n "$node" route show "$subnet/26" 2>/dev/null)" ]; then
        ms_since "$t_del" >>"$WORK/withdraw"
    else
        echo "   lease $k: route to $subnet/26 not withdrawn within 10 s (not counted)"
        MISSED_DEL=$((MISSED_DEL + 1))
    fi
done

START=$(median <"$WORK/start_ms")
PROGRAM=$(median <"$WORK/program_ms")
FLOOR=$(median <"$WORK/floor_ms")
LAT=$(median <"$WORK/lat")
RATIO=$(median <"$WORK/ratio")
WITHDRAW=$(median <"$WORK/withdraw")
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a") print "n/a"; else if (a + 0 <= b + 0) print "met"; else print "MISSED" }'; }

echo
echo "==================== bench-converge: $PEERS peers ($((3 * PEERS)) kernel entries), $RUNS runs, weftd $PROFILE ===================="
printf '%-58s %10s ms   (runs: %s)\n' "weftd process start -> all entries seen in the kernel" "$START" "$(paste -sd' ' "$WORK/start_ms")"
printf '%-58s %10s ms   (runs: %s)\n' "floor: ip link add + ip/bridge -batch -> all entries seen" "$FLOOR" "$(paste -sd' ' "$WORK/floor_ms")"
printf '%-58s %10s x    (runs: %s)\n' "ratio weftd / floor (median of the paired runs)" "$RATIO" "$(paste -sd' ' "$WORK/ratio")"
printf '%-58s %10s ms   (inside weftd, not comparable to the above)\n' "weftd's own reconcile (took_ms in its log)" "$PROGRAM"
printf '%-58s %10s ms\n' "new lease put sent -> route on a running node (median of $LAT_RUNS)" "$LAT"
printf '%-58s %10s ms\n' "lease delete sent -> route gone (median of $LAT_RUNS)" "$WITHDRAW"
if [ "$MISSED_ADD" -gt 0 ] || [ "$MISSED_DEL" -gt 0 ]; then
    echo "MISSED: $MISSED_ADD of $LAT_RUNS new leases not programmed, $MISSED_DEL of $LAT_RUNS deletions not applied within 10 s"
    grep -E "ERROR|WARN" "$WORK/n$RUNS/weftd.log" | tail -5
fi
echo "target: all entries within 1000 ms of process start: $(verdict "$START" 1000)"
echo "target: within 3x the ip -batch floor, timed alike: $(verdict "$RATIO" 3)"
[ "$MISSED_ADD" -eq 0 ] && [ "$MISSED_DEL" -eq 0 ]
