#!/usr/bin/env bash
# weft demo: a 3-node cluster in network namespaces on this machine (real etcd, the real weftd on
# every node) running the example pods of the essay on Pods as static pods: their sandboxes are
# wired into the VXLAN overlay by the `weft` CNI plugin, and they talk to each other across nodes.
#
#   scripts/demo.sh          run the demo and clean up
#   scripts/demo.sh --wait   pause before cleaning up, to look around (ip netns list, weftctl ...)
#
# Everything lives in network namespaces named weft-demo-<pid>-* (an underlay bridge 192.0.2.0/24
# without uplink, etcd at 192.0.2.254, nodes at 192.0.2.11-13) and in one temporary directory; the
# pods' own namespaces are weft-default_<pod>_<uid>, with a uid unique to this run. The machine's
# own interfaces, routes and firewall are never touched. Everything is removed on exit, also on
# Ctrl-C or failure, and the script checks that nothing of the demo is left.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib/busybox-image.sh
source "$ROOT/scripts/lib/busybox-image.sh"

WAIT=0
[ "${1:-}" = "--wait" ] && WAIT=1

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (it creates network namespaces, mounts and containers)" >&2
    exit 1
fi

P="weft-demo-$$"
WORK=$(mktemp -d "/tmp/$P.XXXXXX")
echo "demo directory: WORK=$WORK"
NODES=3
ETCD_IP=192.0.2.254
NETWORK_CONFIG='{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
BIN="$ROOT/target/debug"
# Process ids of the weftds and of etcd (each started in its own session, so that a Ctrl-C in the
# terminal reaches only this script, which then tears the pods down through weftd).
declare -a WEFTD_PID
ETCD_PID=

if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
    cmd() { printf '\033[2m$ %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
    cmd() { printf '$ %s\n' "$*"; }
fi
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
etcdctl_() { in_ns "$P-etcd" env ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379 "$@"; }

node_dir() { echo "$WORK/node$1"; }

# weftctl_ N SUBCOMMAND ARGS...: weftctl for node N, given that node's pod root, image store and
# log directory (the same flags as its weftd), never the machine's defaults under /var.
weftctl_() {
    local d sub=$2
    d=$(node_dir "$1")
    shift 2
    case $sub in
    image) "$BIN/weftctl" image --image-root "$d/images" "$@" ;;
    pods | logs)
        "$BIN/weftctl" "$sub" --pod-root "$d/pods" --image-root "$d/images" \
            --pod-log-dir "$d/logs" "$@"
        ;;
    *) "$BIN/weftctl" "$sub" "$@" ;;
    esac
}

# show N ARGS...: prints and runs `weftctl ARGS` for node N.
show() {
    local n=$1
    shift
    cmd "weftctl $*        # on node$n"
    weftctl_ "$n" "$@"
}

# pod_field N POD JQ: a field of pod POD on node N from `weftctl pods -o json` (empty if none).
pod_field() {
    weftctl_ "$1" pods -o json 2>/dev/null |
        jq -r --arg pod "$2" ".items[] | select(.metadata.name == \$pod) | $3 // empty"
}
pod_status() {
    weftctl_ "$1" pods 2>/dev/null | awk -v pod="$2" 'NR > 1 && $1 == pod {print $3}'
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s; fails naming WHAT.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "demo.sh: timed out after ${secs}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}
now_ms() { date +%s%3N; }
# since_ms T: seconds since now_ms T, e.g. 0.42.
since_ms() { local d=$(($(now_ms) - $1)); printf '%d.%02d' $((d / 1000)) $((d % 1000 / 10)); }
status_is() { [ "$(pod_status "$1" "$2")" = "$3" ]; }
# log_has N TEXT POD [-c CONTAINER]: the container's log on node N holds TEXT.
log_has() {
    local n=$1 text=$2
    shift 2
    weftctl_ "$n" logs "$@" 2>/dev/null | grep -qF "$text"
}

# wait_status N POD STATUS: waits until POD on node N shows STATUS; on timeout prints the table
# and the end of weftd's log.
wait_status() {
    local n=$1 pod=$2 want=$3
    if ! wait_for 60 "$pod on node$n to show $want" status_is "$n" "$pod" "$want"; then
        weftctl_ "$n" pods >&2 || true
        tail -20 "$(node_dir "$n")/weftd.log" >&2
        return 1
    fi
}

# pod_exec N POD CONTAINER COMMAND...: runs COMMAND inside a running container (`runc exec`,
# what `kubectl exec` does); the container's runc state lives in the pod's directory.
pod_exec() {
    local n=$1 pod=$2 container=$3
    shift 3
    local id uid
    id=$(pod_field "$n" "$pod" ".status.containerStatuses[] | select(.name == \"$container\") | .containerID")
    uid=$(pod_field "$n" "$pod" ".metadata.uid")
    runc --root "$(node_dir "$n")/pods/default_${pod}_$uid/runc" exec "${id#weft://}" "$@"
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

# The demo's own namespaces (read from /run/netns: `ip netns list` also queries every entry and
# complains about namespaces other programs are removing at that moment).
demo_netns() {
    ls -1 /run/netns 2>/dev/null | grep "^$P-" || true
}

new_ns() {
    ip netns add "$1"
    ip -n "$1" link set lo up
}

# --- clean-up ------------------------------------------------------------------------------

# The demo's namespaces: its own (node, etcd, underlay) and the pod sandboxes' (from every pod
# directory's sandbox.json and every "sandbox created" line of the weftd logs, remembered in
# $WORK/sandboxes so removed pods still count).
our_netns() {
    demo_netns
    local f
    for f in "$WORK"/node*/pods/*/sandbox.json; do
        [ -f "$f" ] && jq -r .netns_name "$f" >>"$WORK/sandboxes"
    done
    cat "$WORK"/node*/weftd.log 2>/dev/null | grep -o ' netns=weft-[^ ]*' | cut -d= -f2 >>"$WORK/sandboxes"
    [ -f "$WORK/sandboxes" ] && sort -u "$WORK/sandboxes" | while read -r ns; do
        [ -e "/run/netns/$ns" ] && echo "$ns"
    done
    return 0
}

# Mount points of the pods (container root filesystems, volumes, the sandboxes' /run/netns
# entries), deepest first.
our_mounts() {
    local sandboxes=
    [ -f "$WORK/sandboxes" ] && sandboxes=$(sort -u "$WORK/sandboxes" | tr '\n' ' ')
    awk -v work="$WORK" -v sb=" $sandboxes" '
        { m = $5; gsub(/\\040/, " ", m) }
        index(m, work) == 1 { print m; next }
        index(m, "/run/netns/weft-") == 1 && index(sb, " " substr(m, 12) " ") { print m }
    ' /proc/self/mountinfo | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

# Inode numbers of the network namespaces NAMES... (what /proc/PID/ns/net links to).
ns_inodes() {
    local ns
    for ns in "$@"; do
        stat -L -c %i "/run/netns/$ns" 2>/dev/null
    done
    return 0
}

# Processes of the demo: any process in one of the network namespaces INODES..., or whose command
# line names the demo's directory or namespace prefix (weftd, etcd, weft-shim, weft-pause, runc).
our_pids() {
    local inodes=" $* " pid
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$pid" = "$$" ] && continue
        local link
        link=$(readlink "/proc/$pid/ns/net" 2>/dev/null) || continue
        link=${link#net:[}
        link=${link%]}
        if [[ "$inodes" == *" $link "* ]] ||
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -e "$WORK" -e "$P-"; then
            echo "$pid"
        fi
    done
}

stop_pid() {
    local pid=$1 what=$2 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "  $what (pid $pid) did not stop on SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +eu
    trap '' INT TERM
    trap - EXIT
    say "cleaning up ($P)"
    local n pid ns m
    # Every namespace of the demo, by inode: what the final check looks for in /proc/*/ns/net.
    local inodes
    inodes=$(ns_inodes $(our_netns))
    # Pods first, the way an operator would: delete the manifests and let weftd stop each pod
    # (SIGTERM, grace period, CNI DEL, sandbox removed).
    rm -f "$WORK"/node*/manifests/*.yaml
    local live=0 started=0
    for n in $(seq 1 "$NODES"); do
        pid=${WEFTD_PID[n]:-}
        [ -n "$pid" ] && started=1 && kill -0 "$pid" 2>/dev/null && live=1
    done
    if [ "$live" -eq 1 ] && compgen -G "$WORK/node*/pods/*/" >/dev/null; then
        echo "manifests removed: weftd stops each pod (SIGTERM, grace period, CNI DEL, sandbox)"
        local t=$SECONDS deadline=$((SECONDS + 30))
        while compgen -G "$WORK/node*/pods/*/" >/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
        if compgen -G "$WORK/node*/pods/*/" >/dev/null; then
            echo "  pods still present after 30s: $(cd "$WORK" && echo node*/pods/*/)"
        else
            echo "every pod removed after $((SECONDS - t))s"
        fi
    fi
    for n in $(seq 1 "$NODES"); do
        stop_pid "${WEFTD_PID[n]:-}" "weftd node$n"
    done
    [ "$started" -eq 1 ] && echo "weftd stopped on every node"

    # Anything weftd did not remove (only after a failure): containers, shims, pause processes,
    # mounts, sandbox namespaces.
    local netns
    netns=$(our_netns | grep -v "^$P-")
    local r id
    for r in "$WORK"/node*/pods/*/runc; do
        [ -d "$r" ] || continue
        for id in $(runc --root "$r" list -q 2>/dev/null); do
            echo "  leftover container $id: runc delete --force"
            runc --root "$r" delete --force "$id" >/dev/null 2>&1
        done
    done
    for pid in $(our_pids $(ns_inodes $netns)); do
        # Only the sandboxes' processes and weft's helpers here: etcd and the node namespaces below.
        [ "$pid" = "$ETCD_PID" ] && continue
        echo "  leftover process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)): SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    done
    for ns in $netns; do
        echo "  leftover sandbox namespace $ns: removed"
        ip netns del "$ns" 2>/dev/null
    done
    for m in $(our_mounts); do
        echo "  leftover mount $m: unmounted"
        umount -l "$m" 2>/dev/null
    done

    stop_pid "$ETCD_PID" etcd
    for ns in $(demo_netns); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
        ip netns del "$ns"
    done
    local sandboxes=
    [ -f "$WORK/sandboxes" ] && sandboxes=$(sort -u "$WORK/sandboxes")
    rm -rf "$WORK"

    # The check: nothing of this demo may remain.
    local left_ns left_sb left_mounts left_pids left_cg
    left_ns=$(demo_netns)
    left_sb=$(for ns in $sandboxes; do [ -e "/run/netns/$ns" ] && echo "$ns"; done)
    left_mounts=$(grep -F -e "$WORK" -e "/run/netns/$P-" /proc/self/mountinfo
        for ns in $sandboxes; do grep -F "/run/netns/$ns " /proc/self/mountinfo; done)
    left_pids=$(our_pids $inodes)
    # runc's cgroups (cgroupsPath /weft/<uid>-<container>-<restart>), v1 or v2 hierarchy.
    left_cg=$(for ns in $sandboxes; do
        uid=${ns##*_}
        [ -n "$uid" ] && ls -d /sys/fs/cgroup/weft/"$uid"-* /sys/fs/cgroup/*/weft/"$uid"-* 2>/dev/null
    done)
    echo "left behind: namespaces: ${left_ns:-none}; pod sandboxes: ${left_sb:-none} (of $(echo "$sandboxes" | grep -c .));"
    echo "             mounts: ${left_mounts:-none}; processes: ${left_pids:-none}; container cgroups: ${left_cg:-none};"
    echo "             directory $WORK: $([ -e "$WORK" ] && echo present || echo removed)"
    if [ -n "$left_ns$left_sb$left_mounts$left_pids$left_cg" ]; then
        echo "demo.sh: clean-up incomplete (see above)" >&2
        [ "$rc" -eq 0 ] && rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM

# --- the demo --------------------------------------------------------------------------------

say "building weft (scripts/setup.sh, cargo build --workspace --bins)"
bash scripts/setup.sh
cargo build --workspace --bins
for b in weftd weftctl weft weft-pause weft-shim; do
    [ -x "$BIN/$b" ] || { echo "demo.sh: $BIN/$b missing after the build" >&2; exit 1; }
done
T0=$SECONDS

say "underlay: namespace $P-ul with bridge br0 (192.0.2.0/24, no uplink)"
new_ns "$P-ul"
ip -n "$P-ul" link add br0 type bridge
ip -n "$P-ul" link set br0 up

say "etcd at $ETCD_IP (namespace $P-etcd)"
new_ns "$P-etcd"
attach "$P-etcd" "$ETCD_IP"
setsid ip netns exec "$P-etcd" etcd --name demo --data-dir "$WORK/etcd" \
    --listen-client-urls "http://$ETCD_IP:2379,http://127.0.0.1:2379" \
    --advertise-client-urls "http://$ETCD_IP:2379" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster demo=http://127.0.0.1:2380 >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
disown
wait_for 30 "etcd" etcdctl_ endpoint health
etcdctl_ put /coreos.com/network/config "$NETWORK_CONFIG" >/dev/null
echo "network config: $NETWORK_CONFIG"

say "a busybox image, built offline from /usr/bin/busybox (OCI image layout archive: tar + sha256sum)"
build_busybox_image "$WORK/busybox.tar" "$WORK/image-build"
tar -tvf "$WORK/busybox.tar" | awk '$6 !~ /\/$/ {print "  " $3 "\t" $6}'

for i in $(seq 1 "$NODES"); do
    d=$(node_dir "$i")
    mkdir -p "$d"/{manifests,pods,images,logs,net.d,cni-cache,ipam}
    # The CNI network operators drop into /etc/cni/net.d (cni/10-weft.conflist: weft, then
    # portmap), pointed at this node's subnet.env and IPAM directory.
    jq --arg subnet "$d/subnet.env" --arg data "$d/ipam" \
        '.plugins[0].subnetFile = $subnet | .plugins[0].dataDir = $data' \
        cni/10-weft.conflist >"$d/net.d/10-weft.conflist"
    weftctl_ "$i" image import "$WORK/busybox.tar" --name busybox:latest >/dev/null
done
echo "imported on node1..node$NODES"
show 1 image ls

say "CNI network of node1: cni/10-weft.conflist pointed at the node's subnet.env and IPAM directory"
jq -c '{cniVersion, name}, .plugins[]' "$(node_dir 1)/net.d/10-weft.conflist" | sed 's/^/  /'

for i in $(seq 1 "$NODES"); do
    d=$(node_dir "$i")
    ip="192.0.2.1$i"
    new_ns "$P-node$i"
    attach "$P-node$i" "$ip"
    # weftd enters only the node's network namespace: `ip netns exec` would also remount /sys
    # without the cgroup hierarchy, where runc cannot create containers.
    weftd_args=(--etcd-endpoints "http://$ETCD_IP:2379" --iface eth0 --node-name "node$i"
        --subnet-file "$d/subnet.env" --state-dir "$d/state"
        --pod-manifest-path "$d/manifests" --pod-root "$d/pods" --image-root "$d/images"
        --pod-log-dir "$d/logs" --cni-conf-dir "$d/net.d" --cni-bin-dir "$BIN,/usr/lib/cni"
        --cni-cache-dir "$d/cni-cache")
    setsid nsenter --net="/run/netns/$P-node$i" env RUST_LOG=info "$BIN/weftd" "${weftd_args[@]}" \
        </dev/null >"$d/weftd.log" 2>&1 &
    WEFTD_PID[i]=$!
    disown
    [ "$i" -eq 1 ] && node1_cmd="nsenter --net=/run/netns/$P-node1 weftd ${weftd_args[*]}"
done
say "3 nodes at 192.0.2.11-13, each running weftd (logs: $WORK/node*/weftd.log)"
cmd "${node1_cmd//$WORK/\$WORK}"
for i in $(seq 1 "$NODES"); do
    if ! wait_for 30 "subnet.env of node$i" test -s "$(node_dir "$i")/subnet.env"; then
        tail -20 "$(node_dir "$i")/weftd.log" >&2
        exit 1
    fi
done
cmd "weftctl leases"
in_ns "$P-node1" "$BIN/weftctl" leases --etcd-endpoints "http://$ETCD_IP:2379"
for i in $(seq 1 "$NODES"); do
    echo "node$i subnet.env: $(tr '\n' ' ' <"$(node_dir "$i")/subnet.env")"
done
echo "node1's overlay routes to the other nodes' pod subnets:"
ip -n "$P-node1" route show dev flannel.1 | sed 's/^/  /'

# --- the pods --------------------------------------------------------------------------------

# stage_manifest N FILE: stdin into node N's manifest directory as .FILE.tmp, which weftd ignores
# until it is renamed to FILE (a manifest must appear whole, never half-written).
stage_manifest() { cat >"$(node_dir "$1")/manifests/.$2.tmp"; }

# The essay's manifests, adapted to the one image there is (busybox). terminationGracePeriodSeconds
# is short so that the clean-up is quick: `sh` or `sleep` as a container's PID 1 ignore SIGTERM, so every
# pod would otherwise take the default 30 s to stop.
stage_manifest 1 myapp-pod.yaml <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: myapp-pod
  labels:
    app: myapp
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: myapp-container
      image: busybox
      command: ["sh", "-c", "echo Hello Kubernetes! && sleep 3600"]
EOF
# The "database" the init example waits for: answers +PONG on port 6379.
stage_manifest 1 mydb.yaml <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: mydb
  labels:
    app: mydb
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: mydb
      image: busybox
      command: ["sh", "-c", "echo mydb listening on port 6379 && exec nc -ll -p 6379 -e echo +PONG"]
      ports:
        - containerPort: 6379
EOF
# The two-container pod: the essay's nginx-test image is played by busybox httpd.
stage_manifest 2 pod-demo.yaml <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: pod-demo
  namespace: default
  labels:
    app: myapp
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: myapp-1
      image: busybox:latest
      command:
        - "/bin/sh"
        - "-c"
        - 'mkdir -p /www && echo "Hello from $(hostname), pod IP $(hostname -i)" > /www/index.html && exec httpd -f -vv -p 80 -h /www'
      ports:
        - containerPort: 80
    - name: busybox-1
      image: busybox:latest
      command:
        - "/bin/sh"
        - "-c"
        - "sleep 3600"
EOF
# The init-container example: myservice and mydb have no DNS here, so the demo publishes their
# addresses as files in a hostPath directory (its stand-in for `kubectl create -f services.yaml`);
# the init containers wait for them, then for the service itself to answer across the overlay.
mkdir -p "$(node_dir 3)/services"
stage_manifest 3 myapp-pod.yaml <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: myapp-pod
  labels:
    app: myapp
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: myapp-container
      image: busybox
      command: ['sh', '-c', 'echo The app is running! && sleep 3600']
  initContainers:
    - name: init-myservice
      image: busybox
      command: ['sh', '-c', 'until [ -s /services/myservice ] && wget -q -O /shared/myservice.html "http://\$(cat /services/myservice)/"; do echo waiting for myservice; sleep 1; done; echo "myservice answered: \$(cat /shared/myservice.html)"']
      volumeMounts:
        - {name: services, mountPath: /services, readOnly: true}
        - {name: shared, mountPath: /shared}
    - name: init-mydb
      image: busybox
      command: ['sh', '-c', 'until [ -s /services/mydb ] && echo PING | nc -w 2 \$(cat /services/mydb) >/shared/mydb.txt && [ -s /shared/mydb.txt ]; do echo waiting for mydb; sleep 1; done; echo "mydb answered: \$(cat /shared/mydb.txt)"']
      volumeMounts:
        - {name: services, mountPath: /services, readOnly: true}
        - {name: shared, mountPath: /shared}
  volumes:
    - name: services
      hostPath:
        path: $(node_dir 3)/services
    - name: shared
      emptyDir: {}
EOF
say "static pods: manifests written into each node's --pod-manifest-path"
echo "the essay's first example, as written into node1's manifest directory:"
sed 's/^/  /' "$(node_dir 1)/manifests/.myapp-pod.yaml.tmp"
T_PODS=$(now_ms)
for i in $(seq 1 "$NODES"); do
    for f in "$(node_dir "$i")"/manifests/.*.yaml.tmp; do
        m=${f##*/.}
        mv "$f" "$(node_dir "$i")/manifests/${m%.tmp}"
    done
    echo "node$i: $(cd "$(node_dir "$i")/manifests" && echo *.yaml)"
done
wait_status 1 myapp-pod Running
wait_status 1 mydb Running
wait_status 2 pod-demo Running
wait_status 3 myapp-pod Init:0/2
echo "node1's and node2's pods Running $(since_ms "$T_PODS")s after their manifests appeared; node3's myapp-pod waits in its init containers"
for i in $(seq 1 "$NODES"); do
    echo
    show "$i" pods
done

say "node1: the log of myapp-pod"
wait_for 10 "the Hello line" log_has 1 "Hello Kubernetes!" myapp-pod
show 1 logs myapp-pod

MYSERVICE_IP=$(pod_field 2 pod-demo .status.podIP)
MYDB_IP=$(pod_field 1 mydb .status.podIP)
say "node3: myapp-pod is stuck in Init:0/2 until myservice and mydb exist"
wait_for 10 "init-myservice's first line" log_has 3 "waiting for myservice" myapp-pod -c init-myservice
show 3 logs myapp-pod -c init-myservice | tail -3
echo "publishing myservice = pod-demo on node2 ($MYSERVICE_IP:80) and mydb = mydb on node1 ($MYDB_IP:6379)"
echo "$MYSERVICE_IP" >"$(node_dir 3)/services/.myservice" && mv "$(node_dir 3)/services/.myservice" "$(node_dir 3)/services/myservice"
echo "$MYDB_IP 6379" >"$(node_dir 3)/services/.mydb" && mv "$(node_dir 3)/services/.mydb" "$(node_dir 3)/services/mydb"
T_SVC=$(now_ms)
last=
deadline=$((SECONDS + 60))
while :; do
    st=$(pod_status 3 myapp-pod)
    if [ "$st" != "$last" ]; then
        echo "  after $(since_ms "$T_SVC")s: myapp-pod $st"
        last=$st
    fi
    [ "$st" = Running ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "demo.sh: node3's myapp-pod did not reach Running" >&2
        show 3 pods >&2
        tail -20 "$(node_dir 3)/weftd.log" >&2
        exit 1
    fi
    sleep 0.2
done
echo
show 3 pods
echo
show 3 logs myapp-pod -c init-myservice | tail -1
show 3 logs myapp-pod -c init-mydb | tail -1
wait_for 10 "the app's log line" log_has 3 "The app is running!" myapp-pod
show 3 logs myapp-pod

say "pods across nodes: HTTP from node3's myapp-pod to pod-demo's web server on node2 ($MYSERVICE_IP)"
cmd "runc exec myapp-container wget -q -O- http://$MYSERVICE_IP/        # in myapp-pod on node3"
pod_exec 3 myapp-pod myapp-container wget -q -O- "http://$MYSERVICE_IP/"
MYAPP3_IP=$(pod_field 3 myapp-pod .status.podIP)
echo "pod-demo's web server saw the request come from node3's pod IP $MYAPP3_IP (no NAT on the overlay):"
wait_for 10 "the request in httpd's log" log_has 2 "$MYAPP3_IP]" pod-demo -c myapp-1
show 2 logs pod-demo -c myapp-1 | grep -F "$MYAPP3_IP]" | tail -2

say "inside a pod: the sidecar busybox-1 reaches myapp-1 over localhost (one network namespace)"
cmd "runc exec busybox-1 wget -q -O- http://localhost/        # in pod-demo on node2"
pod_exec 2 pod-demo busybox-1 wget -q -O- http://localhost/

say "the same status as a Kubernetes v1 PodList, for kubectl-style jq recipes"
cmd "weftctl pods -o json | jq -r '.items[] | [.metadata.name, .status.phase, .status.podIP, .status.hostIP] | @tsv'        # on node3"
weftctl_ 3 pods -o json | jq -r '.items[] | [.metadata.name, .status.phase, .status.podIP, .status.hostIP] | @tsv'

say "all pods, per node"
for i in $(seq 1 "$NODES"); do
    echo
    show "$i" pods
done

say "demo complete in $((SECONDS - T0))s after the build"
if [ "$WAIT" -eq 1 ]; then
    echo "namespaces: $(demo_netns | tr '\n' ' ')"
    echo "weftctl for node N: $BIN/weftctl pods --pod-root $WORK/nodeN/pods --pod-log-dir $WORK/nodeN/logs"
    read -r -p "press Enter to clean up " _ || true
fi
