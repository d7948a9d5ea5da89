#!/usr/bin/env bash
# Benchmark: N ADDs then N DELs with the weft CNI plugin and, in the same run and the same way,
# with the reference bridge + host-local plugins (configured from subnet.env as Flannel's CNI
# plugin delegates), the two plugins' calls for one pod back to back in alternating order. Prints
# per-operation medians and the median of the paired weft/reference ratios. Like a runtime using
# libcni, DEL gets the ADD result as prevResult.
#
# Everything happens in network namespaces this script creates (one node, 2N pods) and removes on
# exit; the machine's own network is not touched. Needs root.
#
#   scripts/bench-cni.sh [N]        (default N=100, at most 250)
#   WEFT_BIN=path  use this plugin binary instead of the statically linked release build that
#                  scripts/package.sh ships (target/static/release/weft, built if out of date)
#   REF_DIR=dir    reference plugins directory (default /usr/lib/cni)
set -euo pipefail

N=${1:-100}
if ! [[ $N =~ ^[0-9]+$ ]] || ((N < 1 || N > 250)); then
    echo "usage: $0 [N in 1..250]" >&2
    exit 2
fi
if ((EUID != 0)); then
    echo "bench-cni: needs root (creates network namespaces)" >&2
    exit 1
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF_DIR=${REF_DIR:-/usr/lib/cni}
if [[ -z ${WEFT_BIN:-} ]]; then
    # shellcheck source=lib/static-plugin.sh
    source "$ROOT/scripts/lib/static-plugin.sh"
    echo "bench-cni: building the static release plugin (scripts/lib/static-plugin.sh)" >&2
    WEFT_BIN=$(build_static_plugin "$ROOT")
fi
WEFT_BIN=$(realpath "$WEFT_BIN")
for p in bridge host-local; do
    if [[ ! -x $REF_DIR/$p ]]; then
        echo "bench-cni: reference plugin $REF_DIR/$p missing (apt-get install containernetworking-plugins)" >&2
        exit 1
    fi
done

PREFIX="weftbench-$$"
NODE="$PREFIX-node"
WORK=$(mktemp -d "/tmp/$PREFIX.XXXXXX")
[[ -n $WORK && -d $WORK ]] || { echo "bench-cni: mktemp failed" >&2; exit 1; }
cleanup() {
    for ((i = 1; i <= N; i++)); do
        ip netns del "$PREFIX-pod$i" 2>/dev/null || true
        ip netns del "$PREFIX-ref$i" 2>/dev/null || true
    done
    ip netns del "$NODE" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NODE"
ip -n "$NODE" link set lo up
for ((i = 1; i <= N; i++)); do
    ip netns add "$PREFIX-pod$i"
    ip netns add "$PREFIX-ref$i"
done

# weft on bridge cni0 / 10.244.1.0/24, the reference on cni1 / 10.244.2.0/24: both live in the
# same node namespace at the same time, so their calls can alternate.
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n' \
    >"$WORK/subnet.env"
printf '{"cniVersion":"1.0.0","name":"bench","type":"weft","subnetFile":"%s","dataDir":"%s"}\n' \
    "$WORK/subnet.env" "$WORK/weft-ipam" >"$WORK/weft.json"
printf '{"cniVersion":"1.0.0","name":"bench","type":"bridge","bridge":"cni1","mtu":1450,"isGateway":true,"isDefaultGateway":true,"ipMasq":false,"hairpinMode":true,"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"10.244.2.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}}\n' \
    "$WORK/ref-ipam" >"$WORK/reference.json"

# Inside the node namespace: for each i, ADD with both plugins, the order alternating with i (so
# neither always runs first, right after the other's kernel work); then the DELs the same way.
# Prints "<plugin> <add|del> <i> <microseconds>".
#
# A call is timed until the plugin and every process it left behind are done: fd 9 of the plugin
# is the write end of a pipe to `cat`, and a process weft forks (its DEL hands the kernel's
# ~20 ms RCU wait after a veth deletion to a detached child) inherits it, so the pipeline ends
# only when that child has exited too. Both plugins are run through the same pipeline.
ip netns exec "$NODE" bash -c '
    set -euo pipefail
    weft=$1 ref_dir=$2 work=$3 prefix=$4 n=$5
    export CNI_PATH=$ref_dir CNI_IFNAME=eth0
    call() { # call NAME PLUGIN CONF CMD NETNS ID I
        local t0 t1 input=$3 conf result=$work/result-$1-$6 rc
        if [[ $4 == DEL ]]; then
            # As libcni does: DEL carries the cached ADD result as prevResult.
            conf=$(<"$3")
            printf "%s,\"prevResult\":%s}" "${conf%\}}" "$(<"$result")" >"$work/del-$1.json"
            input=$work/del-$1.json
        fi
        t0=$EPOCHREALTIME
        CNI_COMMAND=$4 CNI_CONTAINERID=$6 CNI_NETNS=/run/netns/$5 "$2" <"$input" 9>&1 >"$result" 2>"$work/err" | cat
        rc=${PIPESTATUS[0]}
        t1=$EPOCHREALTIME
        if ((rc != 0)); then
            echo "bench-cni: $4 $6 with $2 failed: $(cat "$result" "$work/err")" >&2
            exit 1
        fi
        echo "$1 ${4,,} $7 $((10#${t1/./} - 10#${t0/./}))"
    }
    for cmd in ADD DEL; do
        for ((i = 1; i <= n; i++)); do
            if ((i % 2)); then
                call weft "$weft" "$work/weft.json" "$cmd" "$prefix-pod$i" "bench-$i" "$i"
                call ref "$ref_dir/bridge" "$work/reference.json" "$cmd" "$prefix-ref$i" "bench-$i" "$i"
            else
                call ref "$ref_dir/bridge" "$work/reference.json" "$cmd" "$prefix-ref$i" "bench-$i" "$i"
                call weft "$weft" "$work/weft.json" "$cmd" "$prefix-pod$i" "bench-$i" "$i"
            fi
        done
    done
' bench "$WEFT_BIN" "$REF_DIR" "$WORK" "$PREFIX" "$N" >"$WORK/times"

median() { sort -n | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
times_of() { awk -v p="$1" -v o="$2" '$1 == p && $2 == o {print $4}' "$WORK/times"; }
# paired_ratios OP: weft/reference for each i, both timed back to back.
paired_ratios() {
    awk -v o="$1" '$2 == o {t[$1, $3] = $4} END {for (k in t) {split(k, a, SUBSEP); if (a[1] == "weft" && t["ref", a[2]] > 0) printf "%.4f\n", t[k] / t["ref", a[2]]}}' "$WORK/times"
}

weft_add=$(times_of weft add | median)
weft_del=$(times_of weft del | median)
ref_add=$(times_of ref add | median)
ref_del=$(times_of ref del | median)
ratio_add=$(paired_ratios add | median)
ratio_del=$(paired_ratios del | median)

echo "bench-cni: $N ADDs then $N DELs per plugin, order alternating, in one node namespace (load: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "each call timed until the plugin and any process it forked have exited"
printf '%-28s %12s %12s\n' "median (microseconds)" "ADD" "DEL"
printf '%-28s %12.0f %12.0f\n' "weft" "$weft_add" "$weft_del"
printf '%-28s %12.0f %12.0f\n' "bridge + host-local" "$ref_add" "$ref_del"
printf '%-28s %12.3f %12.3f   (target <= 0.25)\n' "ratio weft/reference" "$ratio_add" "$ratio_del"
echo "(ratio: median over i of weft_i / reference_i, the two calls of pod i timed back to back)"
