#!/usr/bin/env bash
# Scale benchmark of weftd: thousands of leases in one real etcd, all inside network namespaces.
#
#   start   5000 and 10 000 leases: a fresh weftd from process start until every kernel entry
#           (route, neighbour, FDB entry per peer: 30 000 at 10 000 peers) is programmed, against
#           the floor (`ip -batch` + `bridge -batch` of the same entries on a fresh VXLAN device) in
#           the same run; both in Flannel's route shape and with `--route-nexthops` (the floor then
#           adds a nexthop object per peer first and routes `X/24 nhid N`); START_ROUNDS rounds
#           (default 3) alternating the order, medians, weftd/floor per shape and nexthops/Flannel;
#           weftd's RSS in each shape.
#   churn   50 lease changes per second for 60 s (add, delete, VTEP MAC change in turn) on the
#           10 000-peer node: latency from each etcd write to the change in the kernel (seen by
#           `ip -ts monitor`), p50/p99; weftd's CPU; etcd requests per minute from weftd during the
#           churn and for 60 s at rest (etcd's own gRPC counters less the driver's requests), and
#           the bytes etcd sent; then the node's kernel against etcd, entry by entry.
#   churn6  the same churn on 10 000 dual-stack peers (VXLAN over IPv4 and IPv6: 60 000 kernel
#           entries); weftd's CPU and p99 beside the churn section's.
#   churn6only  the same churn on 10 000 IPv6-only peers (keys 0.0.0.0-0&..., VXLAN over IPv6:
#           30 000 entries on flannel-v6.1), latencies from the IPv6 routes and neighbours.
#   probe   the peer prober on 10 000 dual-stack peers of which none answers (their underlay
#           addresses are unrouted): the prober thread's CPU per round, the echo requests the
#           kernel sent per round, weftd's CPU and RSS, and that every peer's health is reported.
#   fanout  50 weftd processes, each on its own node namespace, watching the same 5000 leases;
#           100 writes at 10/s: latency from a write to the LAST agent's kernel holding it; etcd's
#           CPU meanwhile.
#   fib     why the floor is slow at 10 000 peers: `ip -batch` of 10 000 routes on one device in
#           four shapes (Flannel's distinct on-link gateways, one shared gateway, no gateway,
#           distinct gateways and metrics), also at 2500 and 5000.
#   hostgw  the host-gw backend at 10 000 peers: weftd from process start to every route
#           programmed, against `ip -batch` of the same routes, 3 rounds alternating the order.
#   udp     the UDP backend at 10 000 peers: the forwarding table's per-packet lookup at 100
#           against 10 000 peers and a one-lease change against a full rebuild (the real table
#           code, examples/udp-lookup.rs); then two weftd nodes with a pod each, iperf3 pod to
#           pod while 50 lease changes/s change the table, against the same writes to keys no
#           weftd watches (same etcd and driver load), 5 rounds alternating, medians and ratio.
#   wgpeers the WireGuard backend at 10 000 dual-stack peers: what one lease change costs in
#           computing peers, kept by lease against recomputing every peer as incremental passes
#           did before (the real code, examples/wg-peers.rs), medians of WG_ROUNDS (5) and ratio.
#
#   scripts/bench-scale.sh                   release build, the full run (~5 minutes)
#   PEERS=1000,2000 AGENTS=5 CHURN_SECONDS=10 REST_SECONDS=10 scripts/bench-scale.sh   quick
#   SKIP_BUILD=1 scripts/bench-scale.sh      use the weftd already built
#   CHART= SECTIONS=churn,churn6 ...         an empty CHART writes no chart (default docs/scale.svg)
#   SKIP_BUILD=1 WEFTD=/tmp/weftd-old scripts/bench-scale.sh   measure another build
#   PROFILE=debug SKIP_BUILD=1 SECTIONS=start PEERS=2000 START_ROUNDS=1 scripts/bench-scale.sh
#                                            smoke run on the dev build (slower than release)
#   WEFTD_WRAP="perf record -g -o /tmp/weftd.perf" SECTIONS=start PEERS=10000 scripts/bench-scale.sh
#                                            profile weftd (RSS and CPU figures are then perf's)
#   SECTIONS=start,churn PEERS=10000 scripts/bench-scale.sh   only these phases (start, churn,
#                                            churn6, churn6only, probe, fanout, fib, hostgw, udp, wgpeers; churn runs on the start phase's
#                                            largest node)
#   SECTIONS=hostgw,udp HOSTGW_PEERS=2000 UDP_PEERS=2000 UDP_ROUNDS=2 UDP_SECONDS=3 HOSTGW_ROUNDS=1 \
#       LOOKUP_ROUNDS=3 scripts/bench-scale.sh              quick look at the host-gw and UDP sections
#
# Addresses: underlay 192.0.2.0/24; pod network 10.0.0.0/8 in /24s (10 000 /24s do not fit in a
# /16); the fake peers' public IPs are in 198.18.0.0/15 (RFC 2544 benchmarking range), only ever
# written into FDB entries, host-gw routes and UDP forwarding tables of the test namespaces, never
# sent to (the host-gw node holds 198.19.255.250/15 on its underlay veth besides 192.0.2.10/24).
# Nothing touches the machine's own network. Needs root, python3, etcd, iperf3.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROFILE=${PROFILE:-release}
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-scale.sh: run as root (it creates network namespaces)" >&2
    exit 1
fi

P="weft-scale-$$"
WORK=$(mktemp -d "/tmp/$P.XXXXXX")
ETCD_IP=192.0.2.254

# shellcheck source=lib/bench-cleanup.sh
source "$ROOT/scripts/lib/bench-cleanup.sh"

echo "== building weftd ($PROFILE)"
bash scripts/setup.sh >/dev/null
if [ -n "${SKIP_BUILD:-}" ]; then
    echo "   SKIP_BUILD set: using the existing target/$PROFILE/weftd"
elif [ "$PROFILE" = release ]; then
    cargo build --quiet --release --bin weftd --example udp-lookup --example wg-peers
else
    cargo build --quiet --bin weftd --example udp-lookup --example wg-peers
fi
# WEFTD=/path/to/weftd measures another build (e.g. a baseline) with this driver.
WEFTD=${WEFTD:-$ROOT/target/$PROFILE/weftd}

echo "== underlay and etcd (load: $(cut -d' ' -f1-3 /proc/loadavg))"
ip netns add "$P-ul"
ip -n "$P-ul" link set lo up
ip -n "$P-ul" link add br0 type bridge
ip -n "$P-ul" link set br0 up
ip netns add "$P-etcd"
ip -n "$P-etcd" link set lo up
ip -n "$P-ul" link add xetcd type veth peer name eth0 netns "$P-etcd"
ip -n "$P-ul" link set xetcd master br0 up
ip -n "$P-etcd" addr add "$ETCD_IP/24" dev eth0
ip -n "$P-etcd" link set eth0 up
ip netns exec "$P-etcd" etcd --name bench --data-dir "$WORK/etcd" --max-txn-ops 1000 \
    --listen-client-urls "http://$ETCD_IP:2379,http://127.0.0.1:2379" \
    --advertise-client-urls "http://$ETCD_IP:2379" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bench=http://127.0.0.1:2380 >"$WORK/etcd.log" 2>&1 &
disown
for _ in $(seq 1 300); do
    ip netns exec "$P-etcd" curl -fsS -X POST http://127.0.0.1:2379/v3/kv/range -d '{"key":"Lw=="}' \
        >/dev/null 2>&1 && break
    sleep 0.1
done

SECTIONS=${SECTIONS:-start,churn,churn6,churn6only,probe,fanout,fib,hostgw,udp,wgpeers}
if [[ ",$SECTIONS," == *,udp,* ]]; then
    echo "== udp forwarding table: lookup per packet and table change (examples/udp-lookup.rs)"
    "$ROOT/target/$PROFILE/examples/udp-lookup" "${LOOKUP_ROUNDS:-9}"
fi
if [[ ",$SECTIONS," == *,wgpeers,* ]]; then
    echo "== wireguard peers: one lease change at 10 000 dual-stack peers (examples/wg-peers.rs)"
    "$ROOT/target/$PROFILE/examples/wg-peers" "${WG_ROUNDS:-5}"
fi

# The driver runs inside etcd's namespace, where etcd answers on 127.0.0.1.
ip netns exec "$P-etcd" python3 "$ROOT/scripts/lib/scale.py" --prefix "$P" --work "$WORK" --weftd "$WEFTD" \
    --peers "${PEERS:-5000,10000}" --churn-rate "${CHURN_RATE:-50}" --churn-seconds "${CHURN_SECONDS:-60}" \
    --rest-seconds "${REST_SECONDS:-60}" --agents "${AGENTS:-50}" --fanout-leases "${FANOUT_LEASES:-5000}" \
    --fanout-writes "${FANOUT_WRITES:-100}" --fanout-rate "${FANOUT_RATE:-10}" \
    --fib-routes "${FIB_ROUTES:-10000}" --hostgw-peers "${HOSTGW_PEERS:-10000}" --hostgw-rounds "${HOSTGW_ROUNDS:-3}" \
    --udp-peers "${UDP_PEERS:-10000}" --udp-rounds "${UDP_ROUNDS:-5}" --udp-seconds "${UDP_SECONDS:-5}" \
    --start-rounds "${START_ROUNDS:-3}" --sections "$SECTIONS" --chart "${CHART-$ROOT/docs/scale.svg}"
