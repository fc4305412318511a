//! The real daemon (`seqwatch run`) in a lab namespace: starting it, its /metrics and other
//! HTTP endpoints, its sample and event logs, and what it leaves attached to an interface.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use seqwatch::lab::{Lab, LabOptions};

use crate::{cli::seqwatch_binary, prometheus::series_value, wait_for};

/// /metrics inside the daemon's own namespace: every test has its own loopback.
pub const METRICS_ADDR: &str = "127.0.0.1:10045";

/// `seqwatch run` in a lab namespace; killed on drop if the test did not stop it.
pub struct Daemon {
    child: Child,
    pub ns: String,
    /// Where its /metrics is served, inside `ns`.
    pub listen: String,
    pub sample_log: PathBuf,
    log: PathBuf,
}

impl Daemon {
    pub fn start(lab: &Lab, ns: &str, dir: &Path, args: &[&str]) -> Daemon {
        Self::start_wrapped(lab, ns, dir, &[], args)
    }

    /// Like [`Daemon::start`], with `seqwatch` run through `wrapper` (e.g. `setpriv …`), which
    /// must exec it so that the child's pid is the daemon's.
    pub fn start_wrapped(
        lab: &Lab,
        ns: &str,
        dir: &Path,
        wrapper: &[&str],
        args: &[&str],
    ) -> Daemon {
        Self::spawn(lab, ns, dir, METRICS_ADDR, wrapper, args)
    }

    /// A daemon serving /metrics on `listen`, so that a second one can run in the same
    /// namespace (give each its own `dir`).
    pub fn start_listening(lab: &Lab, ns: &str, dir: &Path, listen: &str, args: &[&str]) -> Daemon {
        Self::spawn(lab, ns, dir, listen, &[], args)
    }

    /// A daemon in `ns` (writing in `dir`), `--direction` `direction` (ingress or both) on
    /// `interfaces`, with more `seqwatch run` flags; returns once its ingress classifier is
    /// attached to each (egress is attached before it).
    pub fn with_ingress_on(
        lab: &Lab,
        (ns, dir): (&str, &Path),
        (direction, interfaces): (&str, &[&str]),
        flags: &[&str],
    ) -> Daemon {
        let mut args = vec!["--direction", direction];
        for interface in interfaces {
            args.extend(["--interface", interface]);
        }
        args.extend_from_slice(flags);
        let mut daemon = Daemon::start(lab, ns, dir, &args);
        for interface in interfaces {
            daemon.wait_attached(lab, interface, "ingress");
        }
        daemon
    }

    /// The daemon on the lab server's veth with more `seqwatch run` flags; returns once the
    /// egress classifier is attached (the only one unless the flags add a direction).
    pub fn on_server_egress(lab: &Lab, dir: &Path, flags: &[&str]) -> Daemon {
        let server_if = lab.server_if.as_str();
        let mut args = vec!["--interface", server_if];
        args.extend_from_slice(flags);
        let mut daemon = Daemon::start(lab, &lab.server_ns, dir, &args);
        daemon.wait_attached(lab, server_if, "egress");
        daemon
    }

    fn spawn(
        lab: &Lab,
        ns: &str,
        dir: &Path,
        listen: &str,
        wrapper: &[&str],
        args: &[&str],
    ) -> Daemon {
        let sample_log = dir.join(format!("samples-{ns}.jsonl"));
        let log = dir.join(format!("daemon-{ns}.log"));
        let seqwatch = seqwatch_binary();
        let mut command = match wrapper {
            [program, prefix @ ..] => {
                let mut command = lab.command_in(ns, program);
                command.args(prefix).arg(&seqwatch);
                command
            }
            [] => lab.command_in(ns, &seqwatch),
        };
        let child = command
            .args(["run", "--listen", listen, "--sample-log"])
            .arg(&sample_log)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start seqwatch run");
        Daemon {
            child,
            ns: ns.to_owned(),
            listen: listen.to_owned(),
            sample_log,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until /metrics says the sampler is attached to `interface`.
    pub fn wait_attached(&mut self, lab: &Lab, interface: &str, direction: &str) {
        let series = format!(
            "seqwatch_program_attached{{direction=\"{direction}\",interface=\"{interface}\",program=\"synack_{direction}\"}} 1"
        );
        let attached = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("seqwatch exited early ({status}):\n{}", self.log());
            }
            self.scrape(lab)
                .is_some_and(|text| text.lines().any(|l| l == series))
        });
        assert!(attached, "never attached to {interface}:\n{}", self.log());
    }

    /// Waits (10 s at most) for a `seqwatch_netns_info` series with both labels, e.g.
    /// `netns="…"` and `container="…"`: the namespace named by its container.
    pub fn wait_netns_named(&self, lab: &Lab, [netns, container]: [&str; 2]) {
        let named = wait_for(Duration::from_secs(10), || {
            self.metrics(lab).lines().any(|line| {
                line.starts_with("seqwatch_netns_info")
                    && line.contains(netns)
                    && line.contains(container)
            })
        });
        assert!(named, "{netns} never named {container}:\n{}", self.log());
    }

    pub fn metrics(&self, lab: &Lab) -> String {
        self.scrape(lab)
            .unwrap_or_else(|| panic!("no /metrics:\n{}", self.log()))
    }

    /// GET /metrics from this daemon; None on any error.
    pub fn scrape(&self, lab: &Lab) -> Option<String> {
        http_get_from(lab, &self.ns, &self.listen, "/metrics")
    }

    /// SIGTERM, then the exit status must be success within 10 s.
    pub fn stop(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "seqwatch exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            assert!(Instant::now() < deadline, "seqwatch ignored SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the sample log holds `count` lines (it is flushed every second).
    pub fn samples(&self, count: usize) -> Vec<serde_json::Value> {
        let mut samples = Vec::new();
        wait_for(Duration::from_secs(15), || {
            samples = read_json_lines(&self.sample_log);
            samples.len() >= count
        });
        samples
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every kernel TCP event program is attached, as `metrics` says; `log` (read only on failure)
/// tells why not.
pub fn assert_tcp_event_programs_attached(metrics: &str, log: impl Fn() -> String) {
    for program in seqwatch::detectors::tcp_events::program_names() {
        let series = format!(
            "seqwatch_program_attached{{direction=\"\",interface=\"\",program=\"{program}\"}}"
        );
        assert_eq!(
            series_value(metrics, &series),
            Some(1.0),
            "{program}\n{}",
            log()
        );
    }
}

/// A lab whose server veth the daemon monitors in both directions, with an event log.
pub struct MonitoredLab {
    pub lab: Lab,
    pub daemon: Daemon,
    pub events: PathBuf,
    _dir: tempfile::TempDir,
}

impl MonitoredLab {
    pub fn start() -> MonitoredLab {
        MonitoredLab::start_with(&[])
    }

    /// With more `seqwatch run` flags.
    pub fn start_with(flags: &[&str]) -> MonitoredLab {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let daemon = start_both_directions_with(&lab, dir.path(), &events, flags);
        MonitoredLab {
            lab,
            daemon,
            events,
            _dir: dir,
        }
    }

    /// Stops the daemon, which must exit cleanly.
    pub fn stop(self) {
        self.daemon.stop();
    }
}

/// The daemon on the lab server's veth in both directions (the handshake tracker's stateful
/// checks on), writing its event log to `events`; returns once both classifiers are attached.
pub fn start_both_directions(lab: &Lab, dir: &Path, events: &Path) -> Daemon {
    start_both_directions_with(lab, dir, events, &[])
}

/// [`start_both_directions`] with more `seqwatch run` flags.
pub fn start_both_directions_with(lab: &Lab, dir: &Path, events: &Path, flags: &[&str]) -> Daemon {
    let events = events.to_str().expect("a UTF-8 path");
    let mut args = vec!["--direction", "both", "--event-log", events];
    args.extend_from_slice(flags);
    let mut daemon = Daemon::on_server_egress(lab, dir, &args);
    daemon.wait_attached(lab, &lab.server_if, "ingress");
    daemon
}

/// The ISN of the server's SYN-ACK to `client`, from the daemon's own sample log (waits up
/// to 10 s for it).
pub fn sampled_server_isn(daemon: &Daemon, client: SocketAddr) -> Option<u32> {
    let mut isn = None;
    wait_for(Duration::from_secs(10), || {
        isn = read_json_lines(&daemon.sample_log)
            .iter()
            .find(|s| s["client"] == client.to_string())
            .map(|s| s["seq"].as_u64().unwrap() as u32);
        isn.is_some()
    });
    isn
}

/// The complete lines of a JSON-lines file (the writer may be mid-line).
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON sample line"))
        .collect()
}

/// The complete event-log lines of `kind` in `path`.
pub fn event_lines(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    let lines = read_json_lines(path).into_iter();
    lines.filter(|line| line["kind"] == kind).collect()
}

/// GET /metrics from inside `ns`.
pub fn scrape(lab: &Lab, ns: &str) -> Option<String> {
    http_get(lab, ns, "/metrics")
}

pub fn http_get(lab: &Lab, ns: &str, path: &str) -> Option<String> {
    http_get_from(lab, ns, METRICS_ADDR, path)
}

/// The listener on `port` of the network namespace `inode` (not the daemon's) in
/// `/api/v1/owners`, if listed.
pub fn listed_owner(lab: &Lab, ns: &str, port: u16, inode: u64) -> Option<serde_json::Value> {
    let owners: serde_json::Value =
        serde_json::from_str(&http_get(lab, ns, "/api/v1/owners")?).ok()?;
    let listeners = owners["listeners"].as_array()?;
    let listed = listeners
        .iter()
        .find(|l| l["port"] == port && l["netns"]["inode"] == inode);
    listed.cloned()
}

/// The report of `service` in `/api/v1/services`, if it has one.
pub fn service_report(lab: &Lab, ns: &str, service: SocketAddr) -> Option<serde_json::Value> {
    let body = http_get(lab, ns, "/api/v1/services")?;
    let services: serde_json::Value = serde_json::from_str(&body).ok()?;
    let all = services["services"].as_array()?;
    all.iter()
        .find(|s| s["service"] == service.to_string())
        .cloned()
}

/// GET `http://{addr}{path}` from inside `ns`: None on any error or a non-2xx status.
pub fn http_get_from(lab: &Lab, ns: &str, addr: &str, path: &str) -> Option<String> {
    let url = format!("http://{addr}{path}");
    lab.run_in(ns, || {
        ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    })
}

/// Everything attached to an interface's TC hooks, as the kernel reports it: tcx programs
/// (BPF_PROG_QUERY), tc filters and a clsact qdisc. Empty when nothing is.
pub fn attachments(lab: &Lab, ns: &str, interface: &str) -> Vec<String> {
    let name = std::ffi::CString::new(interface).unwrap();
    let mut found: Vec<String> = lab.run_in(ns, || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|hook| {
                let (_, programs) =
                    SchedClassifier::query_tcx(name.as_c_str(), hook).expect("query tcx programs");
                programs
                    .into_iter()
                    .map(move |program| format!("tcx {hook:?}: {:?}", program.name_as_str()))
            })
            .collect()
    });
    let tc = |args: &[&str]| {
        let out = lab.command_in(ns, "tc").args(args).output().expect("tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for hook in ["ingress", "egress"] {
        let filters = tc(&["filter", "show", "dev", interface, hook]);
        found.extend(filters.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    let qdiscs = tc(&["qdisc", "show", "dev", interface]);
    found.extend(
        qdiscs
            .lines()
            .filter(|l| l.contains("clsact"))
            .map(str::to_owned),
    );
    found
}
