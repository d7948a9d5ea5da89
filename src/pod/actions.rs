//! What a pod needs next, decided without doing it: kubelet's `computePodActions`. The pod
//! worker observes (sandbox alive, containers' exits, probe verdicts), calls
//! [`compute_pod_actions`], and carries the actions out; the decisions (init order, restart
//! policy, back-off, probe kills, sandbox loss, when the pod is done) live here, pure and
//! tested as a table.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::backoff::{Backoff, BackoffPolicy};
use super::manifest::{PodSpec, RestartPolicy};
use super::probe::ProbeKind;

/// The pod's sandbox as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxView {
    /// No sandbox yet (new pod, or the old one was removed to be re-created).
    Missing,
    /// The pause process runs, the pod network is not attached yet.
    Unattached,
    /// Running and attached.
    Ready,
    /// It was running and is no longer usable: its pause process died, or the node's subnet no
    /// longer holds the pod's address.
    Changed(String),
}

/// A container's current run as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunView {
    /// Not started in the current sandbox, nothing to wait for.
    #[default]
    Pending,
    /// The last start attempt failed at this time (image missing, bad config, runtime error).
    StartFailed {
        /// When it failed.
        at: SystemTime,
    },
    /// The process runs.
    Running {
        /// A liveness or startup probe failed past its threshold: the container must be killed.
        probe_failed: Option<ProbeKind>,
    },
    /// The last run ended.
    Exited {
        /// Its exit code.
        code: i32,
        /// How long it ran.
        ran: Duration,
        /// When it ended.
        finished_at: SystemTime,
    },
}

/// One container as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerView {
    /// Its current (or last) run.
    pub run: RunView,
    /// Restarts so far (`restartCount`).
    pub restart_count: u32,
    /// It ran at least once, in this sandbox or an earlier one: its next start is a restart.
    pub has_run: bool,
    /// Its crash-loop back-off.
    pub backoff: Backoff,
}

impl ContainerView {
    /// A container that has not run yet.
    pub fn new() -> ContainerView {
        ContainerView {
            run: RunView::Pending,
            restart_count: 0,
            has_run: false,
            backoff: Backoff::default(),
        }
    }
}

impl Default for ContainerView {
    fn default() -> Self {
        ContainerView::new()
    }
}

/// Everything [`compute_pod_actions`] looks at.
#[derive(Debug, Clone)]
pub struct PodView<'a> {
    /// The pod's spec.
    pub spec: &'a PodSpec,
    /// The sandbox.
    pub sandbox: SandboxView,
    /// A pod setup step (sandbox, network) failed and is retried at this time.
    pub setup_retry_at: Option<SystemTime>,
    /// Every container (init and app) by name; a container missing here is [`RunView::Pending`].
    pub containers: &'a BTreeMap<String, ContainerView>,
    /// The crash-loop back-off parameters.
    pub policy: &'a BackoffPolicy,
}

/// How a pod ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodOutcome {
    /// Every container ended with 0 and stays ended.
    Succeeded,
    /// A container ended with an error and stays ended.
    Failed,
}

/// One thing to do for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// Kill every container, release the network and the old sandbox, then start over; the
    /// containers keep their restart counts and init containers run again.
    RecreateSandbox {
        /// Why, for the event and `status.message`.
        reason: String,
    },
    /// Start the pause process.
    CreateSandbox,
    /// CNI ADD (or take the node's address for `hostNetwork`).
    AttachNetwork,
    /// Start a container (the next init container, or an app container).
    Start {
        /// The container.
        container: String,
        /// Its run number: `restartCount` once it started.
        restart: u32,
        /// Its back-off state once it started.
        backoff: Backoff,
    },
    /// The container restarts at `until`, not before (`CrashLoopBackOff`).
    BackOff {
        /// The container.
        container: String,
        /// When it may start.
        until: SystemTime,
        /// The whole delay, for the message.
        delay: Duration,
    },
    /// Kill a running container whose probe failed; its restart follows the restart policy.
    Kill {
        /// The container.
        container: String,
        /// The probe that failed.
        probe: ProbeKind,
    },
    /// Nothing more runs: release the sandbox and the pod IP.
    Finish(PodOutcome),
}

/// The actions that bring the pod from what was observed towards its spec, in order.
/// An empty list: wait (containers run, or a pod setup retry is not due).
pub fn compute_pod_actions(pod: &PodView<'_>, now: SystemTime) -> Vec<PodAction> {
    match &pod.sandbox {
        SandboxView::Changed(reason) => {
            return vec![PodAction::RecreateSandbox {
                reason: reason.clone(),
            }]
        }
        _ if pod.setup_retry_at.is_some_and(|t| now < t) => return Vec::new(),
        SandboxView::Missing => return vec![PodAction::CreateSandbox],
        SandboxView::Unattached => return vec![PodAction::AttachNetwork],
        SandboxView::Ready => {}
    }
    let view = |name: &str| pod.containers.get(name).copied().unwrap_or_default();
    let policy = pod.spec.restart_policy;
    for c in &pod.spec.init_containers {
        let v = view(&c.name);
        match v.run {
            RunView::Exited { code: 0, .. } => continue,
            RunView::Exited { .. } if policy == RestartPolicy::Never => {
                return vec![PodAction::Finish(PodOutcome::Failed)]
            }
            RunView::Running { .. } => return Vec::new(),
            _ => {
                return start_when_due(&c.name, &v, pod.policy, now)
                    .into_iter()
                    .collect()
            }
        }
    }
    let mut actions = Vec::new();
    let mut ended = 0;
    let mut failed = false;
    for c in &pod.spec.containers {
        let v = view(&c.name);
        match v.run {
            RunView::Running {
                probe_failed: Some(probe),
            } => actions.push(PodAction::Kill {
                container: c.name.clone(),
                probe,
            }),
            RunView::Running { probe_failed: None } => {}
            RunView::Exited { code, .. } if !policy.restarts(code) => {
                ended += 1;
                failed |= code != 0;
            }
            _ => actions.extend(start_when_due(&c.name, &v, pod.policy, now)),
        }
    }
    if ended == pod.spec.containers.len() {
        let outcome = if failed {
            PodOutcome::Failed
        } else {
            PodOutcome::Succeeded
        };
        return vec![PodAction::Finish(outcome)];
    }
    actions
}

/// Start the container now, or back off until its restart is due.
fn start_when_due(
    name: &str,
    v: &ContainerView,
    policy: &BackoffPolicy,
    now: SystemTime,
) -> Option<PodAction> {
    let restart = if v.has_run {
        v.restart_count.saturating_add(1)
    } else {
        v.restart_count
    };
    let (delay, backoff, since) = match v.run {
        RunView::Pending => (Duration::ZERO, v.backoff, now),
        RunView::StartFailed { at } => {
            let (delay, next) = v.backoff.restart(policy, Duration::ZERO);
            (delay, next, at)
        }
        RunView::Exited {
            ran, finished_at, ..
        } => {
            let (delay, next) = v.backoff.restart(policy, ran);
            (delay, next, finished_at)
        }
        RunView::Running { .. } => return None,
    };
    let until = since.checked_add(delay).unwrap_or(since);
    if now < until {
        return Some(PodAction::BackOff {
            container: name.to_string(),
            until,
            delay,
        });
    }
    Some(PodAction::Start {
        container: name.to_string(),
        restart,
        backoff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::manifest::Container;

    const T0: u64 = 1_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn spec(policy: RestartPolicy, inits: &[&str], apps: &[&str]) -> PodSpec {
        let c = |n: &&str| Container {
            name: n.to_string(),
            image: "busybox".into(),
            ..Default::default()
        };
        PodSpec {
            restart_policy: policy,
            init_containers: inits.iter().map(c).collect(),
            containers: apps.iter().map(c).collect(),
            ..Default::default()
        }
    }

    fn exited(code: i32, ran: u64, finished: u64) -> RunView {
        RunView::Exited {
            code,
            ran: Duration::from_secs(ran),
            finished_at: at(finished),
        }
    }

    fn ran(run: RunView, restarts: u32, streak: u32) -> ContainerView {
        ContainerView {
            run,
            restart_count: restarts,
            has_run: true,
            backoff: Backoff { streak },
        }
    }

    const RUNNING: RunView = RunView::Running { probe_failed: None };

    fn start(name: &str, restart: u32, streak: u32) -> PodAction {
        PodAction::Start {
            container: name.into(),
            restart,
            backoff: Backoff { streak },
        }
    }

    fn back_off(name: &str, until: u64, delay: u64) -> PodAction {
        PodAction::BackOff {
            container: name.into(),
            until: at(until),
            delay: Duration::from_secs(delay),
        }
    }

    struct Case {
        what: &'static str,
        spec: PodSpec,
        sandbox: SandboxView,
        retry_at: Option<u64>,
        containers: Vec<(&'static str, ContainerView)>,
        now: u64,
        want: Vec<PodAction>,
    }

    fn case(what: &'static str, spec: PodSpec) -> Case {
        Case {
            what,
            spec,
            sandbox: SandboxView::Ready,
            retry_at: None,
            containers: Vec::new(),
            now: 100,
            want: Vec::new(),
        }
    }

    impl Case {
        fn sandbox(mut self, s: SandboxView) -> Self {
            self.sandbox = s;
            self
        }
        fn retry_at(mut self, t: u64) -> Self {
            self.retry_at = Some(t);
            self
        }
        fn with(mut self, name: &'static str, v: ContainerView) -> Self {
            self.containers.push((name, v));
            self
        }
        fn now(mut self, t: u64) -> Self {
            self.now = t;
            self
        }
        fn want(mut self, a: Vec<PodAction>) -> Self {
            self.want = a;
            self
        }
    }

    use RestartPolicy::{Always, Never, OnFailure};

    fn table() -> Vec<Case> {
        let one = |p| spec(p, &[], &["app"]);
        let init2 = spec(Always, &["i1", "i2"], &["app"]);
        vec![
            // Sandbox and network.
            case("new pod: sandbox first", one(Always))
                .sandbox(SandboxView::Missing)
                .want(vec![PodAction::CreateSandbox]),
            case("sandbox up: network next", one(Always))
                .sandbox(SandboxView::Unattached)
                .want(vec![PodAction::AttachNetwork]),
            case("failed setup waits for its retry", one(Always))
                .sandbox(SandboxView::Missing)
                .retry_at(101)
                .want(vec![]),
            case("failed setup retried when due", one(Always))
                .sandbox(SandboxView::Unattached)
                .retry_at(100)
                .want(vec![PodAction::AttachNetwork]),
            case("lost sandbox re-created, whatever runs", one(Always))
                .sandbox(SandboxView::Changed("pause exited".into()))
                .with("app", ran(RUNNING, 0, 0))
                .retry_at(500)
                .want(vec![PodAction::RecreateSandbox {
                    reason: "pause exited".into(),
                }]),
            // Init containers: one at a time, in order.
            case("first init container starts", init2.clone()).want(vec![start("i1", 0, 0)]),
            case("apps wait while an init runs", init2.clone())
                .with("i1", ran(RUNNING, 0, 0))
                .want(vec![]),
            case("second init after the first succeeded", init2.clone())
                .with("i1", ran(exited(0, 1, 50), 0, 0))
                .want(vec![start("i2", 0, 0)]),
            case("apps after every init succeeded", init2.clone())
                .with("i1", ran(exited(0, 1, 50), 0, 0))
                .with("i2", ran(exited(0, 1, 60), 0, 0))
                .want(vec![start("app", 0, 0)]),
            case("failed init restarts at once the first time", init2.clone())
                .with("i1", ran(exited(1, 1, 100), 0, 0))
                .want(vec![start("i1", 1, 1)]),
            case("failed init backs off the second time", init2.clone())
                .with("i1", ran(exited(1, 1, 95), 1, 1))
                .want(vec![back_off("i1", 105, 10)]),
            case(
                "failed init under Never fails the pod",
                spec(Never, &["i1"], &["app"]),
            )
            .with("i1", ran(exited(2, 1, 95), 0, 0))
            .want(vec![PodAction::Finish(PodOutcome::Failed)]),
            case(
                "failed init under OnFailure restarts",
                spec(OnFailure, &["i1"], &["app"]),
            )
            .with("i1", ran(exited(2, 1, 95), 0, 0))
            .want(vec![start("i1", 1, 1)]),
            // Restart policies.
            case("Always restarts a clean exit", one(Always))
                .with("app", ran(exited(0, 1, 99), 0, 0))
                .want(vec![start("app", 1, 1)]),
            case(
                "OnFailure keeps a clean exit: pod succeeded",
                one(OnFailure),
            )
            .with("app", ran(exited(0, 1, 99), 0, 0))
            .want(vec![PodAction::Finish(PodOutcome::Succeeded)]),
            case("OnFailure restarts a failure", one(OnFailure))
                .with("app", ran(exited(1, 1, 99), 0, 0))
                .want(vec![start("app", 1, 1)]),
            case("Never keeps a failure: pod failed", one(Never))
                .with("app", ran(exited(1, 1, 99), 0, 0))
                .want(vec![PodAction::Finish(PodOutcome::Failed)]),
            case(
                "Never: pod runs while one app runs",
                spec(Never, &[], &["a", "b"]),
            )
            .with("a", ran(exited(0, 1, 99), 0, 0))
            .with("b", ran(RUNNING, 0, 0))
            .want(vec![]),
            case(
                "Never: one failure among ended apps fails the pod",
                spec(Never, &[], &["a", "b"]),
            )
            .with("a", ran(exited(0, 1, 99), 0, 0))
            .with("b", ran(exited(137, 1, 99), 0, 0))
            .want(vec![PodAction::Finish(PodOutcome::Failed)]),
            case(
                "every app of a new pod starts together",
                spec(Always, &[], &["a", "b"]),
            )
            .want(vec![start("a", 0, 0), start("b", 0, 0)]),
            // Back-off: at once, then 10 s doubling to 5 min, reset after 10 min of running.
            case("second restart waits 10 s", one(Always))
                .with("app", ran(exited(1, 1, 95), 1, 1))
                .want(vec![back_off("app", 105, 10)]),
            case("second restart due after 10 s", one(Always))
                .with("app", ran(exited(1, 1, 95), 1, 1))
                .now(105)
                .want(vec![start("app", 2, 2)]),
            case("third restart waits 20 s", one(Always))
                .with("app", ran(exited(1, 1, 95), 2, 2))
                .want(vec![back_off("app", 115, 20)]),
            case("back-off capped at 5 min", one(Always))
                .with("app", ran(exited(1, 1, 95), 20, 20))
                .want(vec![back_off("app", 395, 300)]),
            case("10 min of running resets the back-off", one(Always))
                .with("app", ran(exited(1, 600, 99), 20, 20))
                .want(vec![start("app", 21, 1)]),
            case("9 min of running does not", one(Always))
                .with("app", ran(exited(1, 540, 99), 3, 3))
                .want(vec![back_off("app", 139, 40)]),
            case("a failed start backs off like a crash", one(Always))
                .with(
                    "app",
                    ContainerView {
                        run: RunView::StartFailed { at: at(99) },
                        restart_count: 0,
                        has_run: false,
                        backoff: Backoff { streak: 1 },
                    },
                )
                .want(vec![back_off("app", 109, 10)]),
            case("first start failure retried at once", one(Always))
                .with(
                    "app",
                    ContainerView {
                        run: RunView::StartFailed { at: at(99) },
                        ..ContainerView::new()
                    },
                )
                .want(vec![start("app", 0, 1)]),
            // Probes.
            case("failed liveness probe kills", one(Always))
                .with(
                    "app",
                    ran(
                        RunView::Running {
                            probe_failed: Some(ProbeKind::Liveness),
                        },
                        0,
                        0,
                    ),
                )
                .want(vec![PodAction::Kill {
                    container: "app".into(),
                    probe: ProbeKind::Liveness,
                }]),
            case("failed startup probe kills", one(Never))
                .with(
                    "app",
                    ran(
                        RunView::Running {
                            probe_failed: Some(ProbeKind::Startup),
                        },
                        0,
                        0,
                    ),
                )
                .want(vec![PodAction::Kill {
                    container: "app".into(),
                    probe: ProbeKind::Startup,
                }]),
            case("a killed container restarts per policy", one(Always))
                .with("app", ran(exited(137, 30, 99), 0, 0))
                .want(vec![start("app", 1, 1)]),
            case("readiness alone never kills", one(Always))
                .with("app", ran(RUNNING, 0, 0))
                .want(vec![]),
            // A re-created sandbox: counts kept, init containers again, at once.
            case(
                "after a new sandbox init runs again as a restart",
                init2.clone(),
            )
            .with(
                "i1",
                ContainerView {
                    run: RunView::Pending,
                    restart_count: 0,
                    has_run: true,
                    backoff: Backoff { streak: 0 },
                },
            )
            .with(
                "app",
                ContainerView {
                    run: RunView::Pending,
                    restart_count: 3,
                    has_run: true,
                    backoff: Backoff { streak: 3 },
                },
            )
            .want(vec![start("i1", 1, 0)]),
            case("after a new sandbox the app restarts at once", one(Always))
                .with(
                    "app",
                    ContainerView {
                        run: RunView::Pending,
                        restart_count: 3,
                        has_run: true,
                        backoff: Backoff { streak: 3 },
                    },
                )
                .want(vec![start("app", 4, 3)]),
            // Adoption: a container seen in back-off by the previous weftd keeps its deadline.
            case(
                "adopted container in back-off starts when its deadline passed",
                one(Always),
            )
            .with("app", ran(exited(1, 1, 80), 2, 2))
            .want(vec![start("app", 3, 3)]),
            case("adopted container in back-off not yet due", one(Always))
                .with("app", ran(exited(1, 1, 90), 2, 2))
                .want(vec![back_off("app", 110, 20)]),
            case("adopted running containers are left alone", init2)
                .with("i1", ran(exited(0, 1, 50), 0, 0))
                .with("i2", ran(exited(0, 1, 60), 0, 0))
                .with("app", ran(RUNNING, 0, 0))
                .want(vec![]),
        ]
    }

    #[test]
    fn the_action_table() {
        let policy = BackoffPolicy::default();
        for c in table() {
            let containers: BTreeMap<String, ContainerView> = c
                .containers
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect();
            let view = PodView {
                spec: &c.spec,
                sandbox: c.sandbox.clone(),
                setup_retry_at: c.retry_at.map(at),
                containers: &containers,
                policy: &policy,
            };
            assert_eq!(compute_pod_actions(&view, at(c.now)), c.want, "{}", c.what);
        }
    }
}
