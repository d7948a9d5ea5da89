//! `weftctl describe pod`: a pod's status record and events rendered as `kubectl describe pod`
//! lays them out. Pure: the caller reads the files. Text from manifests is printed through
//! [`printable`], so a label cannot drive the operator's terminal.

use std::fmt::Write;
use std::time::SystemTime;

use super::events::{EventType, PodEvent};
use super::manifest::{Container, PortRef, Probe};
use super::status::{self, ContainerState, ContainerStatus, PodRecord};

/// `s` with control characters replaced by `?`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn map_lines(out: &mut String, title: &str, map: &std::collections::BTreeMap<String, String>) {
    if map.is_empty() {
        let _ = writeln!(out, "{title:<18}<none>");
        return;
    }
    for (i, (k, v)) in map.iter().enumerate() {
        let head = if i == 0 { title } else { "" };
        let _ = writeln!(out, "{head:<18}{}={}", printable(k), printable(v));
    }
}

fn state_lines(out: &mut String, title: &str, st: &ContainerState) {
    if let Some(r) = &st.running {
        let _ = writeln!(out, "    {title:<16}Running");
        let _ = writeln!(out, "      Started:      {}", r.started_at);
    } else if let Some(t) = &st.terminated {
        let _ = writeln!(out, "    {title:<16}Terminated");
        if !t.reason.is_empty() {
            let _ = writeln!(out, "      Reason:       {}", printable(&t.reason));
        }
        let _ = writeln!(out, "      Exit Code:    {}", t.exit_code);
        let _ = writeln!(out, "      Started:      {}", t.started_at);
        let _ = writeln!(out, "      Finished:     {}", t.finished_at);
    } else if let Some(w) = &st.waiting {
        let _ = writeln!(out, "    {title:<16}Waiting");
        let _ = writeln!(out, "      Reason:       {}", printable(&w.reason));
    } else {
        let _ = writeln!(out, "    {title:<16}<none>");
    }
}

/// A probe as kubectl prints it: `exec [cat /tmp/ok] delay=0s timeout=1s period=10s ...`.
pub fn probe_line(p: &Probe) -> String {
    let port = |r: &PortRef| match r {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(n) => printable(n),
    };
    let action = if let Some(e) = &p.exec {
        format!("exec [{}]", printable(&e.command.join(" ")))
    } else if let Some(h) = &p.http_get {
        format!(
            "http-get http://:{}{}",
            port(&h.port),
            printable(h.path.as_deref().unwrap_or("/"))
        )
    } else if let Some(t) = &p.tcp_socket {
        format!("tcp-socket :{}", port(&t.port))
    } else {
        "<none>".to_string()
    };
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    let or32 = |v: u32, d: u32| if v == 0 { d } else { v };
    format!(
        "{action} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds,
        or(p.timeout_seconds, 1),
        or(p.period_seconds, 10),
        or32(p.success_threshold, 1),
        or32(p.failure_threshold, 3)
    )
}

fn container_block(out: &mut String, c: &Container, st: Option<&ContainerStatus>) {
    let _ = writeln!(out, "  {}:", printable(&c.name));
    if let Some(st) = st.filter(|s| !s.container_id.is_empty()) {
        let _ = writeln!(out, "    Container ID:   {}", printable(&st.container_id));
    }
    let _ = writeln!(out, "    Image:          {}", printable(&c.image));
    if let Some(cmd) = &c.command {
        let _ = writeln!(out, "    Command:        {}", printable(&cmd.join(" ")));
    }
    if let Some(args) = &c.args {
        let _ = writeln!(out, "    Args:           {}", printable(&args.join(" ")));
    }
    match st {
        Some(st) => {
            state_lines(out, "State:", &st.state);
            if !st.last_state.is_empty() {
                state_lines(out, "Last State:", &st.last_state);
            }
            let ready = if st.ready { "True" } else { "False" };
            let _ = writeln!(out, "    Ready:          {ready}");
            let _ = writeln!(out, "    Restart Count:  {}", st.restart_count);
        }
        None => {
            let _ = writeln!(out, "    State:          <none>");
        }
    }
    for (title, probe) in [
        ("Liveness:", &c.liveness_probe),
        ("Readiness:", &c.readiness_probe),
        ("Startup:", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            let _ = writeln!(out, "    {title:<16}{}", probe_line(p));
        }
    }
    if c.volume_mounts.is_empty() {
        let _ = writeln!(out, "    Mounts:         <none>");
    } else {
        let _ = writeln!(out, "    Mounts:");
        for m in &c.volume_mounts {
            let mode = if m.read_only { "ro" } else { "rw" };
            let _ = writeln!(
                out,
                "      {} from {} ({mode})",
                printable(&m.mount_path),
                printable(&m.name)
            );
        }
    }
}

/// The AGE column of an event: `5m`, or `30s (x4 over 5m)` for a repeated one.
fn event_age(e: &PodEvent, now: SystemTime) -> String {
    let age = |t: &str| {
        status::parse_rfc3339(t)
            .and_then(|t| now.duration_since(t).ok())
            .map_or_else(|| "<unknown>".to_string(), status::human_duration)
    };
    if e.count > 1 {
        format!(
            "{} (x{} over {})",
            age(&e.last_timestamp),
            e.count,
            age(&e.first_timestamp)
        )
    } else {
        age(&e.last_timestamp)
    }
}

/// The `kubectl describe pod` text of `rec` with `events`, ages relative to `now`.
pub fn describe_pod(rec: &PodRecord, events: &[PodEvent], now: SystemTime) -> String {
    let p = &rec.pod;
    let mut out = String::new();
    let _ = writeln!(out, "{:<18}{}", "Name:", printable(&p.metadata.name));
    let _ = writeln!(
        out,
        "{:<18}{}",
        "Namespace:",
        printable(&p.metadata.namespace)
    );
    let node = p.spec.node_name.as_deref().unwrap_or("<none>");
    let node = if p.status.host_ip.is_empty() {
        printable(node)
    } else {
        format!("{}/{}", printable(node), p.status.host_ip)
    };
    let _ = writeln!(out, "{:<18}{node}", "Node:");
    if !p.status.start_time.is_empty() {
        let _ = writeln!(out, "{:<18}{}", "Start Time:", p.status.start_time);
    }
    map_lines(&mut out, "Labels:", &p.metadata.labels);
    map_lines(&mut out, "Annotations:", &p.metadata.annotations);
    let _ = writeln!(out, "{:<18}{}", "Status:", status::columns(p).status);
    let ip = if p.status.pod_ip.is_empty() {
        "<none>"
    } else {
        &p.status.pod_ip
    };
    let _ = writeln!(out, "{:<18}{ip}", "IP:");
    let find = |list: &[ContainerStatus], name: &str| list.iter().find(|s| s.name == name).cloned();
    if !p.spec.init_containers.is_empty() {
        let _ = writeln!(out, "Init Containers:");
        for c in &p.spec.init_containers {
            let st = find(&p.status.init_container_statuses, &c.name);
            container_block(&mut out, c, st.as_ref());
        }
    }
    let _ = writeln!(out, "Containers:");
    for c in &p.spec.containers {
        let st = find(&p.status.container_statuses, &c.name);
        container_block(&mut out, c, st.as_ref());
    }
    if !p.status.ephemeral_container_statuses.is_empty() {
        let _ = writeln!(out, "Ephemeral Containers:");
        for st in &p.status.ephemeral_container_statuses {
            let _ = writeln!(out, "  {}:", printable(&st.name));
            let _ = writeln!(out, "    Image:          {}", printable(&st.image));
            state_lines(&mut out, "State:", &st.state);
        }
    }
    if !p.status.conditions.is_empty() {
        let _ = writeln!(out, "Conditions:\n  Type              Status");
        for c in &p.status.conditions {
            let _ = writeln!(out, "  {:<18}{}", c.kind, c.status);
        }
    }
    let qos = if p.status.qos_class.is_empty() {
        "<none>"
    } else {
        &p.status.qos_class
    };
    let _ = writeln!(out, "{:<18}{qos}", "QoS Class:");
    if events.is_empty() {
        let _ = writeln!(out, "Events:           <none>");
        return out;
    }
    let _ = writeln!(out, "Events:");
    let rows: Vec<[String; 5]> = events
        .iter()
        .map(|e| {
            let kind = match e.kind {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            };
            [
                kind.to_string(),
                printable(&e.reason),
                event_age(e, now),
                "weftd".to_string(),
                printable(&e.message),
            ]
        })
        .collect();
    let header = ["Type", "Reason", "Age", "From", "Message"];
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}", parts.join("  ").trim_end())
    };
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    let rule = header.map(|h| "-".repeat(h.len()));
    let _ = writeln!(out, "{}", line(&rule));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::events::add;
    use crate::pod::manifest::parse_manifest;
    use crate::pod::status::{PodObject, StartTimings};
    use std::path::Path;

    #[test]
    fn describe_shows_metadata_containers_probes_mounts_and_events() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web, tier: \"front\"}\n  annotations: {note: \"x\\e[2J\"}\nspec:\n  volumes: [{name: logs, emptyDir: {}}]\n  containers:\n    - name: app\n      image: busybox\n      command: [sleep, '3600']\n      livenessProbe: {exec: {command: [cat, /tmp/ok]}, periodSeconds: 5}\n      volumeMounts: [{name: logs, mountPath: /var/log/app, readOnly: true}]\n";
        let m = parse_manifest(Path::new("/m/p.yaml"), text.as_bytes()).unwrap();
        let mut o = PodObject::new(&m.pod);
        o.spec.node_name = Some("node-a".into());
        o.status.host_ip = "192.0.2.10".into();
        o.status.pod_ip = "10.244.1.5".into();
        o.status.qos_class = "BestEffort".into();
        o.status.container_statuses = vec![ContainerStatus {
            restart_count: 1,
            state: ContainerState::running("2026-11-28T06:00:01Z"),
            last_state: ContainerState::terminated(137, "a", "b"),
            ..ContainerStatus::new("app", "busybox", "")
        }];
        let rec = PodRecord {
            pod: o,
            manifest: "/m/p.yaml".into(),
            timings: StartTimings::default(),
        };
        let mut ev = Vec::new();
        add(
            &mut ev,
            EventType::Normal,
            "Started",
            "Started container app",
            "2026-11-28T06:00:00Z",
        );
        add(
            &mut ev,
            EventType::Warning,
            "BackOff",
            "Back-off restarting failed container app in pod web",
            "2026-11-28T06:01:00Z",
        );
        add(
            &mut ev,
            EventType::Warning,
            "BackOff",
            "Back-off restarting failed container app in pod web",
            "2026-11-28T06:04:00Z",
        );
        let now = status::parse_rfc3339("2026-11-28T06:05:00Z").unwrap();
        let d = describe_pod(&rec, &ev, now);
        for want in [
            "Name:             web\n",
            "Node:             node-a/192.0.2.10\n",
            "Labels:           app=web\n                  tier=front\n",
            "Annotations:      note=x?[2J\n",
            "IP:               10.244.1.5\n",
            "QoS Class:        BestEffort\n",
            "    State:          Running\n      Started:      2026-11-28T06:00:01Z\n",
            "    Last State:     Terminated\n      Reason:       Error\n      Exit Code:    137\n",
            "    Restart Count:  1\n",
            "    Liveness:       exec [cat /tmp/ok] delay=0s timeout=1s period=5s #success=1 #failure=3\n",
            "      /var/log/app from logs (ro)\n",
            "  Type     Reason   Age               From   Message\n",
            "  Normal   Started  5m                weftd  Started container app\n",
            "  Warning  BackOff  60s (x2 over 4m)  weftd  Back-off restarting failed container app in pod web\n",
        ] {
            assert!(d.contains(want), "missing {want:?} in\n{d}");
        }
        assert!(describe_pod(&rec, &[], now).ends_with("Events:           <none>\n"));
    }
}
