#!/usr/bin/env python3
"""Scale benchmark driver (scripts/bench-scale.sh runs it inside the etcd namespace).

Everything lives in network namespaces named PREFIX-*, created by bench-scale.sh (underlay
PREFIX-ul with bridge br0, etcd PREFIX-etcd at 192.0.2.254) and by this driver (node
namespaces); nothing touches the machine's own network. The fake peers' public IPs are in
198.18.0.0/15 (RFC 2544 benchmarking range): only ever written into FDB entries, never sent to.

Phases (each measured in the same run as its reference):
  start   for each lease count, in START_ROUNDS rounds alternating the order: start weftd on a
          fresh node until every kernel entry (route, neighbour, FDB entry per peer) is in place,
          in Flannel's route shape and with --route-nexthops (routes through nexthop objects),
          against the floor in each shape: the same entries applied by `ip -batch` (`nexthop
          add` lines first for the nexthop shape) + `bridge -batch` on a fresh VXLAN device;
          medians, weftd/floor per shape and nexthop/Flannel; weftd's RSS in each shape.
  churn   on the largest node: CHURN_RATE lease changes per second (add, delete, VTEP MAC change in
          turn) for CHURN_SECONDS; latency from each etcd write leaving this driver to the change
          seen in the node's kernel (`ip -ts monitor`), weftd's CPU, etcd requests per minute
          from weftd during the churn and at rest, bytes etcd sent; then the kernel against
          etcd, entry by entry (what decides whether a change was lost).
  churn6  the same churn on as many dual-stack peers (keys `X-24&Y-64`, VXLAN over both
          families: six kernel entries per peer) on a fresh dual-stack node; its figures beside
          the churn section's when both run (weftd's CPU and p99, dual stack against IPv4 alone),
          and every IPv6 entry counted against the peers afterwards.
  churn6only  the same churn on as many IPv6-only peers (keys `0.0.0.0-0&Y-64`, VXLAN over
          IPv6: three entries per peer on flannel-v6.1), changes seen by their IPv6 routes and
          neighbours, the kernel against etcd entry by entry.
  fanout  AGENTS weftd processes, one per node namespace, watching the same leases; writes at a
          steady rate; latency from a write to the last agent's kernel having it; etcd's CPU;
          every agent's kernel against etcd.
  hostgw  the host-gw backend at HOSTGW_PEERS peers (on-link public IPs in 198.18.0.0/15): weftd
          from process start to every route programmed, against `ip -batch` of the same routes
          on a fresh interface, alternating which goes first; weftd's RSS.
  fib     why the 10 000-peer floor is slow: `ip -batch` of FIB_ROUTES routes on one device in
          four shapes (Flannel's distinct on-link gateways; one shared gateway; no gateway;
          distinct gateways with distinct metrics), at a quarter, half and all of FIB_ROUTES.
  udp     the UDP backend at UDP_PEERS peers: two weftd nodes with a pod each; iperf3 from pod
          to pod while CHURN_RATE lease changes per second change both nodes' forwarding tables,
          against the same while the same writes go to keys no weftd watches (equal etcd and
          driver load, no table change); rounds alternate, medians and their ratio.
"""

import argparse
import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import base64
import threading
from base64 import b64encode

PREFIX_KEY = "/coreos.com/network"
# The fake peers' leases are written straight into etcd from 10.0.1.0/24 up; the real nodes
# take theirs from 10.200.0.0/24 up, out of the way, or a churn add would overwrite a node's own
# lease (which it then re-acquires elsewhere, a full pass that is not what is measured).
CONFIG = {"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.200.0.0", "Backend": {"Type": "vxlan"}}
ETCD_IP = "192.0.2.254"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, flush=True)


def run(*argv, check=True, capture=True):
    p = subprocess.run(argv, capture_output=capture, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"bench-scale: {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout if capture else ""


def b64(s):
    return b64encode(s.encode()).decode()


class Etcd:
    """etcd's v3 JSON gateway on 127.0.0.1 (this driver runs in etcd's namespace)."""

    def __init__(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", 2379, timeout=30)
        self.requests = 0  # unary gRPC requests this driver made (to subtract from etcd's counts)

    def post(self, path, body):
        for attempt in range(2):
            try:
                self.conn.request("POST", "/v3/" + path, json.dumps(body), {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                if attempt:
                    raise
                self.conn = http.client.HTTPConnection("127.0.0.1", 2379, timeout=30)
        self.requests += 1
        if resp.status != 200:
            raise SystemExit(f"bench-scale: etcd {path}: {resp.status} {data[:200]!r}")
        return json.loads(data)

    def put(self, key, value, lease=None):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        return self.post("kv/put", body)

    def delete(self, key):
        return self.post("kv/deleterange", {"key": b64(key)})

    def delete_prefix(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self.post("kv/deleterange", {"key": b64(prefix), "range_end": b64(end)})

    def grant(self, ttl):
        return self.post("lease/grant", {"TTL": ttl})["ID"]

    def txn_puts(self, kvs, lease):
        ops = [{"requestPut": {"key": b64(k), "value": b64(v), "lease": lease}} for k, v in kvs]
        return self.post("kv/txn", {"success": ops})

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", 2379, timeout=30)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        unary = 0.0
        sent = 0.0
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and 'grpc_type="unary"' in line:
                unary += float(line.rsplit(" ", 1)[1])
            elif line.startswith("etcd_network_client_grpc_sent_bytes_total"):
                sent += float(line.rsplit(" ", 1)[1])
        return unary, sent


def peer(i):
    """The i-th fake peer: subnet key part, subnet, VTEP MAC, public IP."""
    s = i + 1  # 10.0.0.0/24 is never handed out to a fake peer
    subnet = f"10.{(s >> 8) & 255}.{s & 255}.0"
    mac = f"02:42:c6:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
    ip = f"198.{18 + ((i >> 16) & 1)}.{(i >> 8) & 255}.{(i & 255) or 1}"
    return subnet, mac, ip


def lease_value(ip, mac):
    return json.dumps({"PublicIP": ip, "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": mac}})


def onlink_ip(i):
    """The i-th fake peer's public IP for host-gw and udp: distinct, in 198.18.0.0/15 from
    198.18.0.2 up (the node itself is 198.19.255.250)."""
    a = (198 << 24 | 18 << 16) + i + 2
    return f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"


def plain_value(backend, ip):
    """A lease value without BackendData, as host-gw and udp publish."""
    return json.dumps({"PublicIP": ip, "BackendType": backend})


def put_config(etcd, backend):
    etcd.put(f"{PREFIX_KEY}/config", json.dumps(dict(CONFIG, Backend={"Type": backend})))


def lease_key(subnet):
    return f"{PREFIX_KEY}/subnets/{subnet}-24"


# Dual stack (section churn6): the fake peers' IPv6 subnets from fd00:20:0:1::/64 up, the real
# node's from fd00:20:0:f000::/64 up, out of the way as its IPv4 one is.
CONFIG6 = dict(CONFIG, EnableIPv6=True, IPv6Network="fd00:20::/48", IPv6SubnetLen=64,
               IPv6SubnetMin="fd00:20:0:f000::")


def dual_lease_key(i):
    """The i-th fake peer's dual-stack key: `<IPv4 subnet>-24&<IPv6 subnet>-64`, as Flannel's."""
    subnet, _, _ = peer(i)
    return f"{PREFIX_KEY}/subnets/{subnet}-24&fd00:20:0:{i + 1:x}::-64"


def dual_lease_value(i, mac):
    """The i-th fake peer's dual-stack VXLAN value (IPv4 VTEP `mac`), as flanneld writes it."""
    _, _, ip = peer(i)
    return json.dumps({"PublicIP": ip, "PublicIPv6": f"2001:db8::1:{i + 1:x}", "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac},
                       "BackendV6Data": {"VNI": 1, "VtepMAC": f"02:46:c6:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"}})


# IPv6-only (section churn6only): keys `0.0.0.0-0&<IPv6 subnet>-64`, values with PublicIP
# 0.0.0.0 and BackendV6Data alone, as flanneld writes them in an IPv6-only network.
CONFIG6ONLY = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:20::/48", "IPv6SubnetLen": 64,
               "IPv6SubnetMin": "fd00:20:0:f000::", "Backend": {"Type": "vxlan"}}


def v6only_subnet(i):
    """The i-th fake peer's IPv6 subnet (network address), as ip shows it."""
    return f"fd00:20:0:{i + 1:x}::"


def v6only_lease_key(i):
    return f"{PREFIX_KEY}/subnets/0.0.0.0-0&{v6only_subnet(i)}-64"


def v6only_lease_value(i, mac):
    """The i-th fake peer's IPv6-only VXLAN value (IPv6 VTEP `mac`)."""
    return json.dumps({"PublicIP": "0.0.0.0", "PublicIPv6": f"2001:db8::1:{i + 1:x}", "BackendType": "vxlan",
                       "BackendV6Data": {"VNI": 1, "VtepMAC": mac}})


def counts6(ns):
    """IPv6 routes, permanent neighbours and FDB entries on `flannel-v6.1`."""
    r = run("ip", "-n", ns, "-6", "route", "show", "dev", "flannel-v6.1", "proto", "87", check=False).count(" via ")
    n = run("ip", "-n", ns, "-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent", check=False).count("lladdr")
    f = run("bridge", "-n", ns, "fdb", "show", "dev", "flannel-v6.1", check=False).count(" dst ")
    return r, n, f


class Namespaces:
    def __init__(self, prefix):
        self.prefix = prefix
        self.made = []

    def new(self, name):
        ns = f"{self.prefix}-{name}"
        run("ip", "netns", "add", ns)
        self.made.append(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def attach(self, ns, ip):
        port = "x" + ns.rsplit("-", 1)[1][:12]
        run("ip", "-n", f"{self.prefix}-ul", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", f"{self.prefix}-ul", "link", "set", port, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")

    def remove(self, ns):
        pids = run("ip", "netns", "pids", ns, check=False).split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.1)
        run("ip", "netns", "del", ns, check=False)
        if ns in self.made:
            self.made.remove(ns)

    def remove_all(self):
        for ns in list(self.made):
            self.remove(ns)


def counts(ns):
    r = run("ip", "-n", ns, "route", "show", "dev", "flannel.1", check=False).count("onlink")
    n = run("ip", "-n", ns, "neigh", "show", "dev", "flannel.1", "nud", "permanent", check=False).count("lladdr")
    f = run("bridge", "-n", ns, "fdb", "show", "dev", "flannel.1", check=False).count(" dst ")
    return r, n, f


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Weftd:
    def __init__(self, args, nss, name, ip, quiet=False, iface="eth0", extra_addr=None, flags=(), probe_interval=0):
        self.ns = nss.new(name)
        nss.attach(self.ns, ip)
        if extra_addr:
            # An IPv6 address is usable at once only without duplicate address detection.
            run("ip", "-n", self.ns, "addr", "add", extra_addr, "dev", "eth0", *(["nodad"] if ":" in extra_addr else []))
        self.dir = os.path.join(args.work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.subnet_env = os.path.join(self.dir, "subnet.env")
        self.logf = open(os.path.join(self.dir, "weftd.log"), "w")
        self.t0 = time.time()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "env", "RUST_LOG=warn" if quiet else "RUST_LOG=info"]
            + (os.environ["WEFTD_WRAP"].split() if os.environ.get("WEFTD_WRAP") else [])
            + [args.weftd,
             "--etcd-endpoints", f"http://{ETCD_IP}:2379", "--iface", iface,
             "--subnet-file", self.subnet_env, "--state-dir", os.path.join(self.dir, "state"),
             "--peer-probe-interval", str(probe_interval), "--healthz-addr", "127.0.0.1:9102", *flags],
            stdout=self.logf, stderr=subprocess.STDOUT)

    @property
    def pid(self):
        # `ip netns exec` execs env, which execs weftd: same pid.
        return self.proc.pid

    def ready_after(self, timeout):
        """Seconds from start until subnet.env exists (weftd writes it after programming peers)."""
        deadline = time.time() + timeout
        while not os.path.exists(self.subnet_env):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"bench-scale: weftd in {self.ns} not ready (see {self.logf.name})")
            time.sleep(0.002)
        return time.time() - self.t0


def nhid(subnet):
    """weftd's nexthop id of a peer subnet (`--route-nexthops`): its address as a number."""
    a, b, c, d = (int(x) for x in subnet.split("."))
    return a << 24 | b << 16 | c << 8 | d


def floor(nss, name, entries, work, nexthops=False):
    """The same entries by `ip -batch` + `bridge -batch` on a fresh VXLAN device; seconds. With
    `nexthops`, each route goes through a nexthop object of its own, all added first."""
    ns = nss.new(name)
    run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    run("ip", "-n", ns, "link", "set", "eth0p", "up")
    run("ip", "-n", ns, "addr", "add", "192.0.2.200/24", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    ipb = os.path.join(work, f"{name}.ip")
    brb = os.path.join(work, f"{name}.bridge")
    with open(ipb, "w") as f:
        if nexthops:
            for subnet, _, _ in entries:
                f.write(f"nexthop add id {nhid(subnet)} via {subnet} dev flannel.1 onlink\n")
        for subnet, mac, _ in entries:
            via = f"nhid {nhid(subnet)}" if nexthops else f"via {subnet} dev flannel.1 onlink"
            f.write(f"route add {subnet}/24 {via}\n")
            f.write(f"neigh add {subnet} lladdr {mac} dev flannel.1 nud permanent\n")
    with open(brb, "w") as f:
        for _, mac, ip in entries:
            f.write(f"fdb add {mac} dev flannel.1 dst {ip} self permanent\n")
    t0 = time.time()
    run("ip", "-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "192.0.2.200",
        "dev", "eth0", "dstport", "8472", "nolearning")
    run("ip", "-n", ns, "addr", "add", "10.0.0.0/32", "dev", "flannel.1")
    run("ip", "-n", ns, "link", "set", "flannel.1", "up")
    run("ip", "-n", ns, "-batch", ipb)
    run("bridge", "-n", ns, "-batch", brb)
    took = time.time() - t0
    nss.remove(ns)
    return took


def load_leases(etcd, n, backend="vxlan", dual=False, v6only=False):
    """n fake peers' leases; vxlan ones with a VTEP MAC, host-gw and udp ones with an on-link
    public IP (`onlink_ip`); `dual`: dual-stack VXLAN keys and values; `v6only`: IPv6-only ones."""
    etcd.delete_prefix(f"{PREFIX_KEY}/subnets/")
    lease = etcd.grant(7200)
    entries = [peer(i) for i in range(n)]
    if v6only:
        for k in range(0, n, 1000):
            etcd.txn_puts([(v6only_lease_key(i), v6only_lease_value(i, entries[i][1]))
                           for i in range(k, min(n, k + 1000))], lease)
        return lease, entries
    if dual:
        for k in range(0, n, 1000):
            etcd.txn_puts([(dual_lease_key(i), dual_lease_value(i, entries[i][1])) for i in range(k, min(n, k + 1000))],
                          lease)
        return lease, entries
    if backend != "vxlan":
        entries = [(s, mac, onlink_ip(i)) for i, (s, mac, _) in enumerate(entries)]
    value = (lambda ip, mac: lease_value(ip, mac)) if backend == "vxlan" else (lambda ip, _: plain_value(backend, ip))
    for k in range(0, n, 1000):
        etcd.txn_puts([(lease_key(s), value(ip, mac)) for s, mac, ip in entries[k:k + 1000]], lease)
    return lease, entries


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Monitor:
    """`ip -ts monitor route neigh` in a namespace, into a file."""

    def __init__(self, ns, path):
        self.path = path
        self.f = open(path, "w")
        # A 64 MiB socket buffer (root may exceed rmem_max): a busy node's events must not overrun
        # the monitor while it waits for a core, or a change looks missed that was not.
        self.proc = subprocess.Popen(["ip", "-ts", "-rcvbuf", str(64 << 20), "-n", ns, "monitor", "route", "neigh"],
                                     stdout=self.f, stderr=subprocess.DEVNULL)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.f.close()

    def events(self):
        ts_re = re.compile(r"^\[(\S+)\] (.*)$")
        out = []
        with open(self.path) as f:
            for line in f:
                m = ts_re.match(line.strip())
                if not m:
                    continue
                t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() \
                    if time.timezone == 0 else datetime.datetime.fromisoformat(m.group(1)).timestamp()
                out.append((t, m.group(2)))
        return out


def index_events(events):
    """Kernel events by what they show: ("add", subnet), ("del", subnet), ("mac", subnet, mac)."""
    idx = {}
    for t, e in events:
        parts = e.split()
        if not parts:
            continue
        # IPv4 peers' /24 routes on flannel.1, IPv6-only peers' /64 ones on flannel-v6.1.
        if parts[0] == "Deleted" and len(parts) > 1 and parts[1].endswith(("/24", "/64")):
            key = ("del", parts[1].rsplit("/", 1)[0])
        elif parts[0].endswith(("/24", "/64")) and ("flannel.1" in parts or "flannel-v6.1" in parts):
            key = ("add", parts[0].rsplit("/", 1)[0])
        elif "lladdr" in parts and parts[0] != "Deleted":
            key = ("mac", parts[0], parts[parts.index("lladdr") + 1])
        else:
            continue
        idx.setdefault(key, []).append(t)
    return idx


def match_latencies(changes, idx):
    """Latency (ms) of each change: its write time to the first kernel event showing it. A change
    that a later change of the same peer overtook before the kernel showed it (an add deleted, a
    MAC changed again, within one coalesced pass) never shows and is not counted as missed: the
    final kernel state (`kernel_vs_etcd`) is what proves nothing was lost."""
    lat = []
    missed = []
    later = {}
    for i, (_, subnet, _, _) in enumerate(changes):
        later.setdefault(subnet, []).append(i)
    unseen = set()
    for i, (kind, subnet, mac, t) in enumerate(changes):
        key = ("mac", subnet, mac) if kind == "mac" else (kind, subnet)
        seen = next((et for et in idx.get(key, []) if et >= t - 0.001), None)
        if seen is None:
            unseen.add(i)
            if any(j > i for j in later[subnet]):
                continue
            # A delete of a peer whose add never showed: both went in one pass.
            if kind == "del" and any(j < i and j in unseen and changes[j][0] == "add" for j in later[subnet]):
                continue
            missed.append((kind, subnet))
        else:
            lat.append((seen - t) * 1000)
    return lat, missed


# What went wrong in the run (a kernel that disagrees with etcd, changes never seen): the script
# prints every figure and then exits non-zero.
FAILURES = []


def kernel_vs_etcd(etcd, ns, own_ip, v6only=False):
    """Compares the node's kernel with every peer lease in etcd: the routes, permanent neighbours
    and FDB entries that are missing, wrong or left over (`v6only`: an IPv6-only network's, on
    flannel-v6.1, the node's own lease found by its PublicIPv6 `own_ip`). The authority on whether
    a change was lost, whatever `ip monitor` saw."""
    resp = etcd.post("kv/range", {"key": b64(f"{PREFIX_KEY}/subnets/"),
                                  "range_end": b64(f"{PREFIX_KEY}/subnets0")})
    want = {}
    for kv in resp.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        v = json.loads(base64.b64decode(kv["value"]))
        if v6only:
            if v.get("PublicIPv6") == own_ip:
                continue
            subnet = key.rsplit("/", 1)[1].split("&")[1].rsplit("-", 1)[0]
            want[subnet] = (v["BackendV6Data"]["VtepMAC"], v["PublicIPv6"])
            continue
        if v["PublicIP"] == own_ip:
            continue
        subnet = key.rsplit("/", 1)[1].split("-")[0]
        want[subnet] = (v["BackendData"]["VtepMAC"], v["PublicIP"])
    family, dev = ("-6", "flannel-v6.1") if v6only else ("-4", "flannel.1")
    routes = set()
    for line in run("ip", "-n", ns, family, "route", "show", "dev", dev, "proto", "87", check=False).splitlines():
        if " via " in line:
            routes.add(line.split()[0].split("/")[0])
    neigh = {}
    for line in run("ip", "-n", ns, family, "neigh", "show", "dev", dev, "nud", "permanent", check=False).splitlines():
        parts = line.split()
        if "lladdr" in parts:
            neigh[parts[0]] = parts[parts.index("lladdr") + 1]
    fdb = set()
    for line in run("bridge", "-n", ns, "fdb", "show", "dev", dev, check=False).splitlines():
        parts = line.split()
        if "dst" in parts:
            fdb.add((parts[0], parts[parts.index("dst") + 1]))
    want_fdb = set(want.values())
    problems = {
        "missing routes": sorted(set(want) - routes),
        "stale routes": sorted(routes - set(want)),
        "missing or wrong neighbours": sorted(s for s, (mac, _) in want.items() if neigh.get(s) != mac),
        "stale neighbours": sorted(set(neigh) - set(want)),
        "missing fdb": sorted(want_fdb - fdb),
        "stale fdb": sorted(fdb - want_fdb),
    }
    return len(want), {k: v for k, v in problems.items() if v}


def drain(monitors, changes, limit):
    """Waits until every monitor has seen every change, at most `limit` seconds; returns the wait."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if all(not match_latencies(changes, index_events(m.events()))[1] for m in monitors):
            break
        time.sleep(0.5)
    return time.time() - t0


# The two route shapes of the start section: Flannel's, and through nexthop objects.
SHAPES = (("fl", "Flannel", ()), ("nh", "nexthops", ("--route-nexthops",)))


def start_weftd(args, nss, n, shape, flags, r):
    """A fresh weftd node started on n leases in one route shape: seconds to ready, RSS figures
    2 s later (MiB: VmRSS, VmHWM, anonymous, file); the node is removed again."""
    # Names of their own each round: an old subnet.env would read as ready at once, and the
    # kernel removes a deleted namespace's underlay port only later.
    node = Weftd(args, nss, f"w{n}{shape}{r}", "192.0.2.10", flags=flags)
    took = node.ready_after(120)
    have = counts(node.ns)
    if have != (n, n, n):
        raise SystemExit(f"bench-scale: weftd ({shape}) ready with {have} entries, want {n} each")
    if flags and run("ip", "-n", node.ns, "route", "show", "dev", "flannel.1").count("nhid") != n:
        raise SystemExit(f"bench-scale: weftd with {' '.join(flags)} ready without {n} nhid routes")
    time.sleep(2)  # settle: the first resync and any post-ready work
    # VmRSS is the target's figure; its split shows what is weftd's own memory (anonymous)
    # and what is the binary and libraries mapped from the page cache (file).
    mem = tuple(proc_status(node.pid, f) / 1024 for f in ("VmRSS", "VmHWM", "RssAnon", "RssFile"))
    # Where the pages are, mapping by mapping (kept with KEEP_WORK=1).
    shutil.copyfile(f"/proc/{node.pid}/smaps", os.path.join(args.work, f"weftd-{n}-{shape}.smaps"))
    node.proc.kill()
    nss.remove(node.ns)
    return took, mem


def phase_start(args, etcd, nss, keep_node):
    """Per lease count, START_ROUNDS rounds of weftd and the floor in both route shapes, the
    order reversed every other round; with `keep_node`, a Flannel-shape weftd on the largest
    count stays running (for the churn section)."""
    results = []
    lease = None
    for n in args.peers:
        lease, entries = load_leases(etcd, n)
        runs = [(kind, shape) for shape in SHAPES for kind in ("weftd", "floor")]
        took = {(kind, shape[0]): [] for kind, shape in runs}
        mem = {}
        for r in range(args.start_rounds):
            for kind, (key, _, flags) in runs if r % 2 == 0 else reversed(runs):
                if kind == "weftd":
                    t, mem[key] = start_weftd(args, nss, n, key, flags, r)
                else:
                    t = floor(nss, f"f{n}{key}{r}", entries, args.work, nexthops=bool(flags))
                took[(kind, key)].append(t)
            log(f"   {n:>6} peers, round {r + 1}: " + ", ".join(
                f"{kind} {name} {took[(kind, key)][-1] * 1000:.0f} ms" for kind, (key, name, _) in runs))
        med = {k: statistics.median(v) for k, v in took.items()}
        for key, name, _ in SHAPES:
            rss, hwm, anon, mapped = mem[key]
            log(f"   {n:>6} peers, {name:>8}: weftd ready {med[('weftd', key)] * 1000:7.0f} ms, floor "
                f"{med[('floor', key)] * 1000:7.0f} ms (ratio {med[('weftd', key)] / med[('floor', key)]:.2f}), "
                f"RSS {rss:.1f} MiB (peak {hwm:.1f} MiB; anonymous {anon:.1f}, file {mapped:.1f})")
        log(f"   {n:>6} peers, nexthops/Flannel (medians of {args.start_rounds}): weftd "
            f"{med[('weftd', 'nh')] / med[('weftd', 'fl')]:.2f}, floor {med[('floor', 'nh')] / med[('floor', 'fl')]:.2f}")
        results.append((n, med, mem))
    node = None
    if keep_node:
        node = Weftd(args, nss, f"n{args.peers[-1]}", "192.0.2.10")
        node.ready_after(120)
    return node, lease, results


def thread_ticks(pid, name):
    """CPU ticks (user + system) of the thread of `pid` called `name`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == name:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return int(fields[11]) + int(fields[12])
    raise SystemExit(f"bench-scale: weftd {pid} has no thread {name}")


def out_echos(ns):
    """Echo requests the namespace has sent: (ICMP, ICMPv6), from /proc/net/snmp and snmp6."""
    snmp = run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").splitlines()
    heads = [l.split() for l in snmp if l.startswith("Icmp:")]
    v4 = int(dict(zip(heads[0], heads[1]))["OutEchos"])
    snmp6 = dict(l.split()[:2] for l in run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp6").splitlines() if l.strip())
    return v4, int(snmp6["Icmp6OutEchos"])


def health_series(ns):
    """Peers whose health weftd reports (`weft_peer_reachable` series) and how many read reachable."""
    text = run("ip", "netns", "exec", ns, "curl", "-fsS", "http://127.0.0.1:9102/metrics", check=False)
    values = [l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith("weft_peer_reachable{")]
    return len(values), sum(1 for v in values if float(v) == 1)


PROBE_INTERVAL = 5
PROBE_ROUNDS = 6


def phase_probe(args, etcd, nss, n):
    """The peer prober on n dual-stack peers (three probes per peer and family per round), none
    of which answers: the fake peers' underlay addresses of both families are unrouted (the
    overlay probes go into the VXLAN devices and end there, the underlay ones are refused at
    once), so every round ends at its deadline and every peer is diagnosed down. The prober thread's CPU per round, the echo
    requests the kernel sent per round, weftd's CPU and RSS, and the health series reported;
    then weftd's CPU and RSS on the same peers with probing off."""
    etcd.put(f"{PREFIX_KEY}/config", json.dumps(CONFIG6))
    load_leases(etcd, n, dual=True)
    # The node's IPv6 address is off the fake peers' /64 (2001:db8::1:x), so nothing resolves
    # their addresses: ten thousand unresolved neighbour entries would fill the kernel's
    # neighbour table, which all namespaces share.
    node = Weftd(args, nss, f"p{n}", "192.0.2.10", extra_addr="2001:db8:ff::10/64", probe_interval=PROBE_INTERVAL)
    node.ready_after(120)
    deadline = time.time() + 4 * PROBE_INTERVAL + 30
    while health_series(node.ns)[0] < 2 * n:
        if time.time() > deadline:
            raise SystemExit(f"bench-scale: prober reported {health_series(node.ns)} of {2 * n} peer families")
        time.sleep(0.5)
    ticks0, process0, echos0, t0 = thread_ticks(node.pid, "weft-probe"), cpu_ticks(node.pid), out_echos(node.ns), time.time()
    time.sleep(PROBE_ROUNDS * PROBE_INTERVAL)
    ticks1, process1, echos1, t1 = thread_ticks(node.pid, "weft-probe"), cpu_ticks(node.pid), out_echos(node.ns), time.time()
    # A round sends two overlay echo requests per peer over IPv4 (small and full-size; the
    # underlay one is refused before it is sent), and sleeps the interval after its deadline.
    rounds = (echos1[0] - echos0[0]) / (2 * n)
    hz = os.sysconf("SC_CLK_TCK")
    series, reachable = health_series(node.ns)
    rss = proc_status(node.pid, "VmRSS") / 1024
    per_round = [(b - a) / rounds for a, b in zip(echos0, echos1)]
    log(f"   {n:>6} dual-stack peers, interval {PROBE_INTERVAL} s, {rounds:.1f} rounds in {t1 - t0:.0f} s: prober thread "
        f"{(ticks1 - ticks0) / hz / rounds * 1000:.0f} ms CPU per round, weftd {(process1 - process0) / hz / (t1 - t0) * 100:.1f} % "
        f"of a core; echo requests sent per round {per_round[0]:.0f} ICMP + {per_round[1]:.0f} ICMPv6; "
        f"health of {series} peer families reported ({reachable} reachable); RSS {rss:.1f} MiB")
    if reachable:
        FAILURES.append(f"probe: {reachable} fake peers read reachable")
    node.proc.kill()
    nss.remove(node.ns)
    # The reference: the same node with probing off, over as long a time.
    quiet = Weftd(args, nss, f"q{n}", "192.0.2.10", extra_addr="2001:db8:ff::10/64")
    quiet.ready_after(120)
    time.sleep(2 * PROBE_INTERVAL)
    q0, s0 = cpu_ticks(quiet.pid), time.time()
    time.sleep(t1 - t0)
    q1, s1 = cpu_ticks(quiet.pid), time.time()
    log(f"   {n:>6} dual-stack peers, probing off: weftd {(q1 - q0) / hz / (s1 - s0) * 100:.1f} % of a core, "
        f"RSS {proc_status(quiet.pid, 'VmRSS') / 1024:.1f} MiB")
    quiet.proc.kill()
    nss.remove(quiet.ns)
    etcd.put(f"{PREFIX_KEY}/config", json.dumps(CONFIG))


def phase_churn(args, etcd, node, lease, n, dual=False, v6only=False):
    """CHURN_RATE changes per second on the node's n peers (dual-stack keys and values with
    `dual`, IPv6-only ones with `v6only`: changes then seen by their IPv6 subnets), at rest
    before; latencies, weftd's CPU, etcd's load, the kernel against etcd."""
    name = "churn6only" if v6only else "churn6" if dual else "churn"
    subnet_of = lambda i: peer(i)[0]
    if v6only:
        key_of = v6only_lease_key
        value_of = v6only_lease_value
        subnet_of = v6only_subnet
    elif dual:
        key_of = lambda i: dual_lease_key(i)
        value_of = lambda i, mac: dual_lease_value(i, mac)
    else:
        key_of = lambda i: lease_key(peer(i)[0])
        value_of = lambda i, mac: lease_value(peer(i)[2], mac)
    mon = Monitor(node.ns, os.path.join(args.work, f"{name}.monitor"))
    time.sleep(0.3)
    # At rest first: what weftd asks of etcd when nothing changes.
    u0, b0 = etcd.metrics()
    r0 = etcd.requests
    time.sleep(args.rest_seconds)
    u1, b1 = etcd.metrics()
    rest_req = (u1 - u0) - (etcd.requests - r0)
    rest_bytes = b1 - b0
    rng = random.Random(7)
    live = list(range(n))
    next_new = n
    changes = []
    ticks0 = cpu_ticks(node.pid)
    u0, b0 = etcd.metrics()
    r0 = etcd.requests
    t_start = time.time()
    period = 1.0 / args.churn_rate
    k = 0
    while time.time() - t_start < args.churn_seconds:
        target = t_start + k * period
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        kind = ("add", "del", "mac")[k % 3]
        if kind == "add":
            i = next_new
            _, mac, _ = peer(i)
            subnet = subnet_of(i)
            live.append(i)
            next_new += 1
            t = time.time()
            etcd.put(key_of(i), value_of(i, mac), lease)
        elif kind == "del":
            i = live.pop(rng.randrange(len(live)))
            _, mac, _ = peer(i)
            subnet = subnet_of(i)
            t = time.time()
            etcd.delete(key_of(i))
        else:
            i = live[rng.randrange(len(live))]
            subnet = subnet_of(i)
            mac = f"02:43:{k >> 24 & 255:02x}:{k >> 16 & 255:02x}:{k >> 8 & 255:02x}:{k & 255:02x}"
            t = time.time()
            etcd.put(key_of(i), value_of(i, mac), lease)
        changes.append((kind, subnet, mac, t))
        k += 1
    elapsed = time.time() - t_start
    ticks1 = cpu_ticks(node.pid)
    u1, b1 = etcd.metrics()
    churn_req = (u1 - u0) - (etcd.requests - r0)
    churn_bytes = b1 - b0
    drained = drain([mon], changes, args.drain_seconds)
    # The kernel against etcd: conclusive while the drain took less than the resync interval
    # (30 s), after which a full pass would have repaired a change lost on the way.
    peers_now, wrong = kernel_vs_etcd(etcd, node.ns, "2001:db8::10" if v6only else "192.0.2.10", v6only=v6only)
    if dual:
        have6 = counts6(node.ns)
        if have6 != (peers_now,) * 3:
            wrong["IPv6 routes/neighbours/FDB entries not one per peer"] = [f"{have6} for {peers_now} peers"]
    mon.stop()
    lat, missed = match_latencies(changes, index_events(mon.events()))
    cpu = (ticks1 - ticks0) / CLK_TCK / elapsed * 100
    log(f"   churn: {len(changes)} changes in {elapsed:.1f} s ({len(changes) / elapsed:.1f}/s) over {n} peers")
    log(f"     write -> kernel: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat, default=0):.1f} ms, "
        f"missed {len(missed)} {missed[:5]}")
    log(f"     the kernel had every change {drained:.1f} s after the last write (waited up to {args.drain_seconds:.0f} s)")
    log(f"     kernel against etcd {drained:.1f} s after the last write: {peers_now} peers, "
        + ("every entry right" if not wrong else "; ".join(f"{k}: {len(v)} {v[:3]}" for k, v in wrong.items())))
    if wrong or missed:
        FAILURES.append(f"{name} at {n} peers: {len(missed)} changes missed, kernel against etcd: "
                        + ("right" if not wrong else ", ".join(f"{k} {len(v)}" for k, v in wrong.items())))
    log(f"     weftd CPU {cpu:.1f} % of one core during the churn")
    log(f"     etcd unary gRPC requests: churn {u1 - u0:.0f} handled, {etcd.requests - r0} of them the driver's")
    log(f"     etcd requests from weftd: churn {churn_req / elapsed * 60:.1f}/min, rest {rest_req / args.rest_seconds * 60:.1f}/min;"
        f" bytes sent by etcd: churn {churn_bytes / elapsed * 60 / 1024:.0f} KiB/min, rest {rest_bytes / args.rest_seconds * 60 / 1024:.1f} KiB/min")
    return {"changes": len(changes), "p50": pct(lat, 50), "p99": pct(lat, 99), "missed": len(missed), "cpu": cpu,
            "kernel_wrong": sum(len(v) for v in wrong.values()),
            "rest_req_min": rest_req / args.rest_seconds * 60, "churn_req_min": churn_req / elapsed * 60,
            "rest_bytes_min": rest_bytes / args.rest_seconds * 60}


def etcd_pid():
    out = run("ip", "netns", "pids", f"{args_prefix}-etcd", check=False).split()
    for pid in out:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "etcd":
                    return int(pid)
        except OSError:
            pass
    raise SystemExit("bench-scale: no etcd process")


def phase_fanout(args, etcd, nss, n):
    lease, _ = load_leases(etcd, n)
    agents = []
    t0 = time.time()
    for a in range(args.agents):
        agents.append(Weftd(args, nss, f"a{a}", f"192.0.2.{11 + a}", quiet=True))
    for w in agents:
        w.ready_after(300)
    log(f"   {args.agents} agents ready on {n} leases after {time.time() - t0:.1f} s; "
        f"RSS median {statistics.median(proc_status(w.pid, 'VmRSS') for w in agents) / 1024:.1f} MiB")
    time.sleep(2)
    mons = [Monitor(w.ns, os.path.join(args.work, f"fan{i}.monitor")) for i, w in enumerate(agents)]
    time.sleep(0.5)
    epid = etcd_pid()
    e0 = cpu_ticks(epid)
    writes = []
    t_start = time.time()
    for k in range(args.fanout_writes):
        target = t_start + k / args.fanout_rate
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        subnet, mac, ip = peer(n + 100 + k)
        t = time.time()
        etcd.put(lease_key(subnet), lease_value(ip, mac), lease)
        writes.append(("add", subnet, mac, t))
    elapsed = time.time() - t_start
    e1 = cpu_ticks(epid)
    drained = drain(mons, writes, args.drain_seconds)
    wrong_agents = []
    for a, w in enumerate(agents):
        _, wrong = kernel_vs_etcd(etcd, w.ns, f"192.0.2.{11 + a}")
        if wrong:
            wrong_agents.append((a, {k: len(v) for k, v in wrong.items()}))
    for m in mons:
        m.stop()
    # Latency to the last agent: for each write, the slowest agent's.
    missed = 0
    by_write = [[] for _ in writes]
    for m in mons:
        idx = index_events(m.events())
        for i, w in enumerate(writes):
            lat, miss = match_latencies([w], idx)
            if miss:
                missed += 1
            else:
                by_write[i].append(lat[0])
    last = [max(v) for v in by_write if len(v) == len(mons)]
    cpu = (e1 - e0) / CLK_TCK / elapsed * 100
    log(f"   fan-out: {len(writes)} writes at {args.fanout_rate}/s to {len(agents)} agents: write -> last agent's kernel "
        f"p50 {pct(last, 50):.1f} ms, p99 {pct(last, 99):.1f} ms, max {max(last, default=0):.1f} ms; "
        f"missed {missed}; every agent had every write {drained:.1f} s after the last; etcd CPU {cpu:.1f} % of one core")
    log(f"     kernel against etcd on every agent: "
        + (f"all {len(agents)} right" if not wrong_agents else f"{len(wrong_agents)} wrong {wrong_agents[:3]}"))
    if wrong_agents or missed:
        FAILURES.append(f"fan-out: {missed} writes missed by some agent, {len(wrong_agents)} agents' kernels "
                        "disagree with etcd")
    for w in agents:
        w.proc.kill()
    # Their addresses (192.0.2.11 up) must not answer on the underlay for later sections' nodes.
    for w in agents:
        nss.remove(w.ns)
    return {"p50": pct(last, 50), "p99": pct(last, 99), "missed": missed, "etcd_cpu": cpu}

def phase_fib(args, nss, n):
    """Times `ip -batch` of n routes per shape on a fresh veth; the kernel's fib_info hash
    covers protocol, scope, metric, preferred source and device but not the gateway, so
    routes that differ only in their gateway share one hash chain."""
    shapes = [
        ("distinct on-link gateways (Flannel's)", lambda s, i: f"route add {s}/24 via {s} dev d0 onlink"),
        ("one shared gateway", lambda s, i: f"route add {s}/24 via 10.0.0.1 dev d0 onlink"),
        ("no gateway", lambda s, i: f"route add {s}/24 dev d0"),
        ("distinct gateways and metrics", lambda s, i: f"route add {s}/24 via {s} dev d0 onlink metric {i + 1}"),
    ]
    for size in (n // 4, n // 2, n):
        line = []
        for label, shape in shapes:
            ns = nss.new("fib")
            run("ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d0p")
            run("ip", "-n", ns, "link", "set", "d0p", "up")
            run("ip", "-n", ns, "link", "set", "d0", "up")
            run("ip", "-n", ns, "addr", "add", "10.0.0.0/32", "dev", "d0")
            path = os.path.join(args.work, "fib.ip")
            with open(path, "w") as f:
                for i in range(size):
                    f.write(shape(peer(i)[0], i) + "\n")
            t0 = time.time()
            run("ip", "-n", ns, "-batch", path)
            line.append(f"{label} {(time.time() - t0) * 1000:.0f} ms")
            nss.remove(ns)
        log(f"   {size:>6} routes: " + "; ".join(line))


HOSTGW_NODE = "198.19.255.250"
WEFT_ROUTE_PROTOCOL = "87"


def hostgw_routes(ns):
    return run("ip", "-n", ns, "route", "show", "dev", "eth0", "proto", WEFT_ROUTE_PROTOCOL,
               check=False).count(" via ")


def hostgw_floor(nss, name, entries, work):
    """The same routes by `ip -batch` on a fresh interface with the node's on-link address,
    with weft's route protocol (the kernel hashes it); seconds."""
    ns = nss.new(name)
    run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    run("ip", "-n", ns, "link", "set", "eth0p", "up")
    run("ip", "-n", ns, "addr", "add", f"{HOSTGW_NODE}/15", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    path = os.path.join(work, f"{name}.ip")
    with open(path, "w") as f:
        for subnet, _, ip in entries:
            f.write(f"route add {subnet}/24 via {ip} dev eth0 proto {WEFT_ROUTE_PROTOCOL}\n")
    t0 = time.time()
    run("ip", "-n", ns, "-batch", path)
    took = time.time() - t0
    nss.remove(ns)
    return took


def phase_hostgw(args, etcd, nss, n):
    put_config(etcd, "host-gw")
    _, entries = load_leases(etcd, n, "host-gw")
    results = []
    for rnd in range(args.hostgw_rounds):
        took = {}
        for which in ([0, 1] if rnd % 2 == 0 else [1, 0]):
            if which == 0:
                node = Weftd(args, nss, f"h{rnd}", "192.0.2.10", iface=HOSTGW_NODE, extra_addr=f"{HOSTGW_NODE}/15")
                took["weftd"] = node.ready_after(120)
                have = hostgw_routes(node.ns)
                if have != n:
                    raise SystemExit(f"bench-scale: host-gw weftd ready with {have} routes, want {n} "
                                     f"(see {node.logf.name})")
                time.sleep(2)
                rss = proc_status(node.pid, "VmRSS") / 1024
                node.proc.kill()
                nss.remove(node.ns)
            else:
                took["floor"] = hostgw_floor(nss, f"hf{rnd}", entries, args.work)
        results.append((took["weftd"], took["floor"], rss))
        log(f"   round {rnd + 1}: {n} peers: weftd ready {took['weftd'] * 1000:7.0f} ms, floor {took['floor'] * 1000:7.0f} ms "
            f"(ratio {took['weftd'] / took['floor']:.2f}), RSS {rss:.1f} MiB")
    w = statistics.median(r[0] for r in results)
    f = statistics.median(r[1] for r in results)
    log(f"   host-gw at {n} peers, median of {len(results)}: weftd {w * 1000:.0f} ms, ip -batch floor {f * 1000:.0f} ms, "
        f"ratio {w / f:.2f}")
    put_config(etcd, "vxlan")


def wire_pod(nss, node, name, subnet_env):
    """A pod namespace behind a cni0 bridge on `node`, as the CNI plugin wires one; its IP."""
    env = {}
    with open(subnet_env) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            env[k] = v
    gw = env["FLANNEL_SUBNET"]
    mtu = env["FLANNEL_MTU"]
    base, plen = gw.split("/")
    pod_ip = base.rsplit(".", 1)[0] + ".10"
    pod = nss.new(name)
    run("ip", "-n", node, "link", "add", "cni0", "mtu", mtu, "type", "bridge")
    run("ip", "-n", node, "addr", "add", gw, "dev", "cni0")
    run("ip", "-n", node, "link", "set", "cni0", "up")
    run("ip", "-n", node, "link", "add", "veth0", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", pod)
    run("ip", "-n", node, "link", "set", "veth0", "master", "cni0", "up")
    run("ip", "-n", pod, "addr", "add", f"{pod_ip}/{plen}", "dev", "eth0")
    run("ip", "-n", pod, "link", "set", "eth0", "up")
    run("ip", "-n", pod, "route", "add", "default", "via", base)
    run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return pod, pod_ip


class Churn(threading.Thread):
    """Lease changes at `rate` per second (add, delete, public IP change in turn) until
    stopped, on its own etcd connection; with `watched` False the same writes go to keys under
    a prefix no weftd watches (the control: equal etcd and driver load, no table change)."""

    def __init__(self, rate, lease, first_new, live, watched):
        super().__init__(daemon=True)
        self.rate, self.lease, self.next_new, self.live, self.watched = rate, lease, first_new, live, watched
        self.stop = threading.Event()
        self.writes = 0

    def run(self):
        etcd = Etcd()
        rng = random.Random(17)
        prefix = PREFIX_KEY if self.watched else "/weft-bench-unwatched"
        t0 = time.time()
        k = 0
        while not self.stop.is_set():
            delay = t0 + k / self.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            kind = k % 3
            if kind == 0:
                i = self.next_new
                self.next_new += 1
                self.live.append(i)
                subnet = peer(i)[0]
                etcd.put(f"{prefix}/subnets/{subnet}-24", plain_value("udp", onlink_ip(i)), self.lease)
            elif kind == 1:
                i = self.live.pop(rng.randrange(len(self.live)))
                etcd.delete(f"{prefix}/subnets/{peer(i)[0]}-24")
            else:
                i = self.live[rng.randrange(len(self.live))]
                etcd.put(f"{prefix}/subnets/{peer(i)[0]}-24",
                         plain_value("udp", onlink_ip(100_000 + k % 20_000)), self.lease)
            self.writes += 1
            k += 1


def iperf(client, server, ip, seconds):
    """Gbit/s received by the server pod over `seconds` (after one omitted second)."""
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = run("ip", "netns", "exec", client, "iperf3", "-c", ip, "-p", "5201", "-O", "1", "-t", str(seconds), "-J")
    srv.wait(timeout=10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def table_edits(ns):
    """Forwarding-table entries weftd added plus removed so far (its /metrics counters)."""
    text = run("ip", "netns", "exec", ns, "curl", "-fsS", "http://127.0.0.1:9102/metrics", check=False)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("weft_kernel_entries_added", "weft_kernel_entries_removed")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def phase_udp(args, etcd, nss, n):
    put_config(etcd, "udp")
    lease, _ = load_leases(etcd, n, "udp")
    etcd.delete_prefix("/weft-bench-unwatched/")
    # Out of the fan-out agents' range (192.0.2.11 up).
    nodes = [Weftd(args, nss, f"u{i}", f"192.0.2.{200 + i}", quiet=True) for i in (1, 2)]
    ready = [w.ready_after(180) for w in nodes]
    log(f"   two UDP nodes ready on {n} leases after {ready[0] * 1000:.0f} and {ready[1] * 1000:.0f} ms")
    pods = [wire_pod(nss, w.ns, f"up{i}", w.subnet_env) for i, w in enumerate(nodes)]
    for _ in range(100):
        if subprocess.run(["ip", "netns", "exec", pods[0][0], "ping", "-c1", "-W1", pods[1][1]],
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise SystemExit("bench-scale: pods cannot reach each other over the UDP backend")
    live = list(range(n))
    next_new = n
    gbps = {True: [], False: []}
    for rnd in range(args.udp_rounds):
        for watched in ([False, True] if rnd % 2 == 0 else [True, False]):
            # The control works on a copy of the live peers: its writes change nothing weftd sees.
            churn = Churn(args.churn_rate, lease, next_new, live if watched else list(live), watched)
            e0 = table_edits(nodes[0].ns)
            churn.start()
            g = iperf(pods[0][0], pods[1][0], pods[1][1], args.udp_seconds)
            churn.stop.set()
            churn.join()
            time.sleep(0.2)
            edits = table_edits(nodes[0].ns) - e0
            if watched:
                next_new = churn.next_new
            else:
                etcd.delete_prefix("/weft-bench-unwatched/")
            gbps[watched].append(g)
            log(f"   round {rnd + 1}: {'table churn' if watched else 'control    '} {churn.writes} writes, "
                f"{edits:.0f} table entries changed on node 1, {g:.2f} Gbit/s")
    quiet = statistics.median(gbps[False])
    busy = statistics.median(gbps[True])
    log(f"   UDP pod-to-pod at {n} peers, median of {args.udp_rounds}: {busy:.2f} Gbit/s while {args.churn_rate:.0f} lease "
        f"changes/s change the forwarding table, {quiet:.2f} Gbit/s with the same writes unwatched; ratio {busy / quiet:.2f}")
    for w in nodes:
        w.proc.kill()
    for pod, _ in pods:
        nss.remove(pod)
    for w in nodes:
        nss.remove(w.ns)
    put_config(etcd, "vxlan")


args_prefix = ""


def write_chart(path, start, churn, fanout):
    """An SVG bar chart of the run: per peer count, the start of weftd against its floor in both
    route shapes (target line 1.5 s) and weftd's RSS (target line 20 MiB); the churn's and the
    fan-out's write-to-kernel latencies (target line 50 ms). Only the sections that ran."""
    panels = []
    bars = []
    for n, med, _ in start:
        for key, name, _ in SHAPES:
            bars.append((f"{n} peers, weftd, {name}", med[("weftd", key)] * 1000))
            bars.append((f"{n} peers, floor, {name}", med[("floor", key)] * 1000))
    if bars:
        panels.append(("start to every kernel entry programmed (ms, median)", bars, 1500, "1.5 s"))
    bars = [(f"{n} peers, weftd RSS, {name}", mem[key][0]) for n, _, mem in start for key, name, _ in SHAPES]
    if bars:
        panels.append(("weftd RSS after programming (MiB)", bars, 20, "20 MiB"))
    bars = []
    if churn:
        bars += [("churn 50/s: write to kernel p50", churn["p50"]), ("churn 50/s: write to kernel p99", churn["p99"])]
    if fanout:
        bars += [("fan-out: write to last agent p50", fanout["p50"]), ("fan-out: write to last agent p99", fanout["p99"])]
    if bars:
        panels.append(("latency from an etcd write (ms)", bars, 50, "50 ms (churn p99)"))
    if not panels:
        return
    w, label_w, bar_w, row, y = 760, 260, 400, 22, 10
    out = []
    for title, rows, target, target_label in panels:
        top = max([v for _, v in rows] + [target]) * 1.1
        out.append(f'<text x="10" y="{y + 14}" font-weight="bold">{title}</text>')
        y += 24
        y0 = y
        for label, v in rows:
            bw = v / top * bar_w
            colour = "#4c72b0" if "floor" not in label else "#9aa5b1"
            out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{label}</text>')
            out.append(f'<rect x="{label_w}" y="{y + 3}" width="{bw:.1f}" height="{row - 6}" fill="{colour}"/>')
            out.append(f'<text x="{label_w + bw + 4:.1f}" y="{y + 15}">{v:.1f}</text>')
            y += row
        tx = label_w + target / top * bar_w
        out.append(f'<line x1="{tx:.1f}" y1="{y0}" x2="{tx:.1f}" y2="{y}" stroke="#c44e52" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{tx + 3:.1f}" y="{y0 - 2}" fill="#c44e52">target {target_label}</text>')
        y += 16
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{y}" viewBox="0 0 {w} {y}" '
                f'font-family="sans-serif" font-size="13">\n<rect width="{w}" height="{y}" fill="white"/>\n')
        f.write("\n".join(out) + "\n</svg>\n")
    log(f"   chart: {path}")


def main():
    global args_prefix
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--weftd", required=True)
    ap.add_argument("--peers", default="5000,10000")
    ap.add_argument("--churn-rate", type=float, default=50)
    ap.add_argument("--churn-seconds", type=float, default=60)
    ap.add_argument("--rest-seconds", type=float, default=60)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--fanout-leases", type=int, default=5000)
    ap.add_argument("--fanout-writes", type=int, default=100)
    ap.add_argument("--fanout-rate", type=float, default=10)
    ap.add_argument("--drain-seconds", type=float, default=60)
    ap.add_argument("--sections", default="start,churn,churn6,churn6only,probe,fanout,fib,hostgw,udp")
    ap.add_argument("--start-rounds", type=int, default=3)
    ap.add_argument("--chart", default="", help="write an SVG bar chart of the run here")
    ap.add_argument("--fib-routes", type=int, default=10000)
    ap.add_argument("--hostgw-peers", type=int, default=10000)
    ap.add_argument("--hostgw-rounds", type=int, default=3)
    ap.add_argument("--udp-peers", type=int, default=10000)
    ap.add_argument("--udp-rounds", type=int, default=5)
    ap.add_argument("--udp-seconds", type=float, default=5)
    args = ap.parse_args()
    args.peers = [int(x) for x in args.peers.split(",")]
    sections = set(args.sections.split(","))
    args_prefix = args.prefix
    nss = Namespaces(args.prefix)
    etcd = Etcd()
    etcd.put(f"{PREFIX_KEY}/config", json.dumps(CONFIG))
    start, churn, fanout = [], None, None
    try:
        if sections & {"start", "churn"}:
            node, lease = None, None
            if "start" in sections:
                log("== start: weftd from process start to every entry programmed, against ip/bridge -batch, "
                    "in Flannel's route shape and through nexthop objects")
                node, lease, start = phase_start(args, etcd, nss, keep_node="churn" in sections)
            if "churn" in sections:
                if node is None:
                    lease, _ = load_leases(etcd, args.peers[-1])
                    node = Weftd(args, nss, f"n{args.peers[-1]}", "192.0.2.10")
                    node.ready_after(120)
                log(f"== churn at {args.peers[-1]} peers")
                churn = phase_churn(args, etcd, node, lease, args.peers[-1])
                node.proc.kill()
                nss.remove(node.ns)
        if "churn6" in sections:
            n = args.peers[-1]
            log(f"== churn6: the churn on {n} dual-stack peers (VXLAN over both families)")
            etcd.put(f"{PREFIX_KEY}/config", json.dumps(CONFIG6))
            lease, _ = load_leases(etcd, n, dual=True)
            node = Weftd(args, nss, f"d{n}", "192.0.2.10", extra_addr="2001:db8::10/64")
            node.ready_after(120)
            have6 = counts6(node.ns)
            if have6 != (n, n, n):
                raise SystemExit(f"bench-scale: dual-stack weftd ready with {have6} IPv6 entries, want {n} each")
            churn6 = phase_churn(args, etcd, node, lease, n, dual=True)
            node.proc.kill()
            nss.remove(node.ns)
            etcd.put(f"{PREFIX_KEY}/config", json.dumps(CONFIG))
            if churn:
                log(f"   dual stack against IPv4 alone at {n} peers: weftd CPU {churn6['cpu']:.1f} % vs {churn['cpu']:.1f} %, "
                    f"p99 {churn6['p99']:.1f} vs {churn['p99']:.1f} ms")
        if "churn6only" in sections:
            n = args.peers[-1]
            log(f"== churn6only: the churn on {n} IPv6-only peers (VXLAN over IPv6, keys 0.0.0.0-0&...)")
            etcd.put(f"{PREFIX_KEY}/config", json.dumps(CONFIG6ONLY))
            lease, _ = load_leases(etcd, n, v6only=True)
            node = Weftd(args, nss, f"o{n}", "192.0.2.10", extra_addr="2001:db8::10/64")
            node.ready_after(120)
            have6 = counts6(node.ns)
            if have6 != (n, n, n):
                raise SystemExit(f"bench-scale: IPv6-only weftd ready with {have6} IPv6 entries, want {n} each")
            churn6only = phase_churn(args, etcd, node, lease, n, v6only=True)
            node.proc.kill()
            nss.remove(node.ns)
            etcd.put(f"{PREFIX_KEY}/config", json.dumps(CONFIG))
            if churn:
                log(f"   IPv6-only against IPv4 at {n} peers: weftd CPU {churn6only['cpu']:.1f} % vs {churn['cpu']:.1f} %, "
                    f"p99 {churn6only['p99']:.1f} vs {churn['p99']:.1f} ms")
        if "probe" in sections:
            n = args.peers[-1]
            log(f"== probe: the peer prober on {n} dual-stack peers, none answering")
            phase_probe(args, etcd, nss, n)
        if "fanout" in sections and args.agents > 0:
            log(f"== fan-out: {args.agents} weftd agents on {args.fanout_leases} leases")
            fanout = phase_fanout(args, etcd, nss, args.fanout_leases)
        if "fib" in sections:
            log("== fib: ip -batch of routes on one device, by shape (the kernel's fib_info hash)")
            phase_fib(args, nss, args.fib_routes)
        if "hostgw" in sections:
            log(f"== host-gw: weftd from process start to every route programmed, against ip -batch")
            phase_hostgw(args, etcd, nss, args.hostgw_peers)
        if "udp" in sections:
            log(f"== udp: pod-to-pod throughput while lease changes swap the forwarding table")
            phase_udp(args, etcd, nss, args.udp_peers)
    finally:
        nss.remove_all()
    if args.chart:
        write_chart(args.chart, start, churn, fanout)
    for f in FAILURES:
        log(f"FAILED: {f}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
