//! The daemon as Prometheus sees it, with real parts only. The real daemon (both directions)
//! runs in a lab namespace and watches a real Linux listener, the weak step64k responder, a
//! `java.util.Random` responder and crafted segments with illegal flags. Its live /metrics must
//! pass `promtool check metrics`; and Debian's Prometheus, started in the same namespace with the
//! shipped scrape config and rules (target, intervals and `for:` shortened), must return data for
//! every Grafana panel's query and fire the weak-generator alert for both weak responders. Blind
//! ISN guesses (wrong-ack third packets from a spoofed address) against the weak service give the
//! spoofing panels their data and fire the spoofing alert. A TLS session whose server writes
//! plaintext onto its socket gives the TLS panels theirs and fires the plaintext alert. The
//! daemon follows the host's other network namespaces (`--netns all`), among them a podman-like
//! container's with a listener: Prometheus joins that listener's series to the container's ID
//! (seqwatch_netns_info), as the panels filtered by $container do. Needs root and a cgroup2
//! mount; the lab namespaces, the container and Prometheus go with the test.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    container::Container,
    daemon::{Daemon, METRICS_ADDR, http_get_from, sampled_server_isn, scrape},
    lab::{connect_many, listen, send_crafted},
    prometheus::series_value,
    tls::Credentials,
    wait_for,
};
use seqwatch::lab::{
    Crafter, GeneratorKind, Lab, LabOptions, PrngPreset, Responder, ResponderConfig,
    flags::{ACK, FIN, PSH, SYN, URG},
};
use seqwatch_common::handshake::AnomalyKind;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// The weak responder (ISNs +64000 per connection) and a real Linux listener.
const WEAK_PORT: u16 = 8080;
const LINUX_PORT: u16 = 8081;
/// A pseudo-random responder (`java.util.Random`): weak only through generator recovery.
const PRNG_PORT: u16 = 8082;
/// A TLS server (a default TLS port) that leaks plaintext once.
const TLS_PORT: u16 = 8443;
/// The container's listener, in its own namespace.
const CONTAINER_PORT: u16 = 9443;
/// What Grafana puts for an include-all variable's All: written as is, not regex-escaped.
const ALL: &str = ".*";
const CONNECTIONS: usize = 40;
/// Crafted segments per illegal flag set, sent to the weak service.
const CRAFTED_PER_KIND: u16 = 5;
const ILLEGAL_FLAGS: [(u8, AnomalyKind); 2] = [
    (0, AnomalyKind::NullFlags),
    (FIN | PSH | URG, AnomalyKind::XmasFlags),
];
/// Prometheus listens in the daemon's namespace: its own loopback, so the port is free.
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";
/// What the test's copy of the rules waits instead of the shipped `for:` (5 to 15 minutes).
const SHORT_FOR: &str = "2s";
/// Spoofed handshakes to the weak service, and wrong-ack guesses at its ISN in each: 6 guesses
/// in the default 5-minute window score 1.2 per minute, over SeqwatchSpoofingAttempts' 1/min.
const SPOOFED_HANDSHAKES: u16 = 2;
const GUESSES_PER_HANDSHAKE: u32 = 3;
/// The claimed client address of the spoofed handshakes: not the client's, which would answer
/// the responder's SYN-ACKs with RSTs.
const SPOOFED: [u8; 4] = [10, 199, 0, 77];
/// Metrics that some panels read and this traffic does not create (a listener lost after an
/// anomaly needs a crash): those panels are allowed to be empty. The test checks that they are
/// indeed absent.
const NOT_EXPORTED_YET: [&str; 1] = ["seqwatch_listener_lost_after_anomaly_total"];

/// Loading the classifiers keeps the verifier busy for 10-20 s of CPU on a 2-core VM; two
/// daemons loading at once (this file's tests run in parallel) push each other past
/// `Daemon::wait_attached`'s limit, so the daemons start one at a time.
static DAEMON_LOADING: Mutex<()> = Mutex::new(());

/// A lab whose daemon has seen every sort of traffic the dashboards show.
struct Scene {
    daemon: Daemon,
    _responder: Responder,
    _prng_responder: Responder,
    weak: SocketAddr,
    prng: SocketAddr,
    linux: SocketAddr,
    tls: SocketAddrV4,
    container: Container,
    _container_listener: TcpListener,
    lab: Lab,
    dir: tempfile::TempDir,
}

impl Scene {
    fn start() -> Scene {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let server_if = lab.server_if.clone();
        let loading = DAEMON_LOADING
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut daemon = Daemon::start(
            &lab,
            &lab.server_ns,
            dir.path(),
            &[
                "--interface",
                &server_if,
                "--direction",
                "both",
                "--netns",
                "all",
            ],
        );
        daemon.wait_attached(&lab, &server_if, "egress");
        daemon.wait_attached(&lab, &server_if, "ingress");
        drop(loading);
        let weak = SocketAddr::new(lab.server_v4.into(), WEAK_PORT);
        let linux = SocketAddr::new(lab.server_v4.into(), LINUX_PORT);
        let responder = Responder::spawn_in(
            &lab,
            ResponderConfig {
                interface: server_if,
                port: WEAK_PORT,
                generator: GeneratorKind::Step64k,
                seed: 7,
                record: None,
            },
        )
        .unwrap();
        let prng = SocketAddr::new(lab.server_v4.into(), PRNG_PORT);
        let prng_responder = Responder::spawn_in(
            &lab,
            ResponderConfig {
                interface: lab.server_if.clone(),
                port: PRNG_PORT,
                generator: GeneratorKind::Prng(PrngPreset::JavaRandom),
                seed: 8,
                record: None,
            },
        )
        .unwrap();
        listen(&lab, &lab.server_ns, linux);
        connect_many(&lab, &lab.client_ns, linux, CONNECTIONS);
        connect_many(&lab, &lab.client_ns, weak, CONNECTIONS);
        connect_many(&lab, &lab.client_ns, prng, CONNECTIONS);
        send_illegal_flags(&lab, weak);
        guess_isns(&lab, &daemon, weak);
        let tls = SocketAddrV4::new(lab.server_v4, TLS_PORT);
        Credentials::for_server(&lab).leak_once(&lab, tls, 50_000);
        let container = Container::create();
        let container_listener = lab.run_in(&container.ns, || {
            TcpListener::bind(("127.0.0.1", CONTAINER_PORT)).unwrap()
        });
        let scene = Scene {
            daemon,
            _responder: responder,
            _prng_responder: prng_responder,
            weak,
            prng,
            linux,
            tls,
            container,
            _container_listener: container_listener,
            lab,
            dir,
        };
        scene.wait_until_scored();
        scene
    }

    /// Until the weak service is scored weak, every crafted segment is counted and the guesses
    /// are scored.
    fn wait_until_scored(&self) {
        let weak = format!("seqwatch_isn_weak{{service=\"{}\"}}", self.weak);
        let prng = format!("seqwatch_isn_weak{{service=\"{}\"}}", self.prng);
        let spoofing = format!(
            "seqwatch_spoofing_attempt_score{{service=\"{}\"}}",
            self.weak
        );
        let counted = |metrics: &str| {
            ILLEGAL_FLAGS.iter().all(|(_, kind)| {
                let series = format!(
                    "seqwatch_handshake_anomalies_total{{kind=\"{}\",service=\"{}\"}}",
                    kind.as_str(),
                    self.weak
                );
                series_value(metrics, &series) == Some(f64::from(CRAFTED_PER_KIND))
            })
        };
        let settled = wait_for(Duration::from_secs(15), || {
            scrape(&self.lab, &self.daemon.ns).is_some_and(|m| {
                series_value(&m, &weak) == Some(1.0)
                    && series_value(&m, &prng) == Some(1.0)
                    && counted(&m)
                    && series_value(&m, &spoofing).is_some_and(|score| score > 0.0)
            })
        });
        assert!(
            settled,
            "the daemon never scored {} weak or never counted the crafted segments:\n{}",
            self.weak,
            self.daemon.metrics(&self.lab)
        );
    }
}

/// Segments with illegal flag sets, from the client to `service`: handshake anomalies.
fn send_illegal_flags(lab: &Lab, service: SocketAddr) {
    let crafter = Crafter::client_to_server(lab).unwrap();
    for (i, (flags, _)) in ILLEGAL_FLAGS.into_iter().enumerate() {
        for n in 0..CRAFTED_PER_KIND {
            let port = 40_000 + 100 * i as u16 + n;
            let from = SocketAddr::new(lab.client_v4.into(), port);
            send_crafted(&crafter, (from, service), flags, (1, 0), &[]);
        }
    }
}

/// Blind guesses at the weak service's ISN: spoofed SYNs, then third packets with the right
/// seq and a wrong ack (`handshake_ack_wrong_ack`), the spoofing score's input.
fn guess_isns(lab: &Lab, daemon: &Daemon, service: SocketAddr) {
    let crafter = Crafter::client_to_server(lab).unwrap();
    let send =
        |from, flags, seq, ack| send_crafted(&crafter, (from, service), flags, (seq, ack), &[]);
    for port in 0..SPOOFED_HANDSHAKES {
        let from = SocketAddr::from((SPOOFED, 41_000 + port));
        send(from, SYN, 1000, 0);
        let isn = sampled_server_isn(daemon, from).expect("the responder's SYN-ACK sampled");
        for guess in 1..=GUESSES_PER_HANDSHAKE {
            send(from, ACK, 1001, isn.wrapping_add(guess << 16));
        }
    }
}

#[test]
fn a_live_scrape_passes_promtool_check_metrics() {
    let scene = Scene::start();
    let metrics = scene.daemon.metrics(&scene.lab);
    let families = metrics.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool (apt-get install prometheus; ./x setup does)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics ({}): {report}\n--- the scrape:\n{metrics}",
        out.status
    );
    eprintln!("promtool check metrics: no problems in {families} metric families");
    scene.daemon.stop();
}

#[test]
fn prometheus_has_data_for_every_panel_and_fires_the_weak_generator_spoofing_and_tls_alerts() {
    let started = Instant::now();
    let scene = Scene::start();
    let prometheus = Prometheus::start(&scene.lab, &scene.daemon.ns, scene.dir.path());
    let instance = prometheus.resolve_instance_variable(&scene.lab);
    let services = prometheus.resolve_service_variable(&scene.lab, &instance);
    let tls = SocketAddr::from(scene.tls);
    let want: BTreeSet<String> = [scene.weak, scene.linux, scene.prng, tls]
        .map(|s| s.to_string())
        .into();
    assert_eq!(services, want, "the $service variable's values");

    let container = prometheus.resolve_container_variable(&scene.lab, &instance, &scene.container);
    prometheus.assert_the_container_is_joined(&scene.lab, &scene.container);

    let weak = scene.weak.to_string();
    let variables = [
        ("instance", instance.as_str()),
        ("service", weak.as_str()),
        ("container", container.as_str()),
        // A podman container is in no pod: Grafana offers All only.
        ("pod", ALL),
    ];
    let panels = dashboard_panels();
    let (allowed, asserted): (Vec<&Panel>, Vec<&Panel>) =
        panels.iter().partition(|p| p.reads_only_unexported());
    let mut without_data = Vec::new();
    wait_for(Duration::from_secs(30), || {
        without_data = asserted
            .iter()
            .filter(|p| !prometheus.has_data(&scene.lab, p, &variables))
            .map(|p| p.name())
            .collect();
        without_data.is_empty()
    });
    assert!(
        without_data.is_empty(),
        "panels without data: {without_data:#?}"
    );
    assert_not_exported_and_empty(&scene, &prometheus, &allowed, &variables);
    for panel in &asserted {
        eprintln!("data: {}", panel.name());
    }
    for panel in &allowed {
        eprintln!(
            "allowed without data (metric not exported yet): {}",
            panel.name()
        );
    }

    prometheus.wait_for_firing(&scene.lab, "SeqwatchSpoofingAttempts", &weak);
    // The first leak created the counter at 1, which `increase` does not see: once
    // Prometheus has that sample, a second leak is an increase.
    let scraped = wait_for(Duration::from_secs(30), || {
        let series = prometheus.query(&scene.lab, "seqwatch_tls_plaintext_suspected_total");
        !series.as_array().unwrap().is_empty()
    });
    assert!(scraped, "Prometheus never scraped the plaintext counter");
    Credentials::for_server(&scene.lab).leak_once(&scene.lab, scene.tls, 50_000);
    prometheus.wait_for_firing(
        &scene.lab,
        "SeqwatchTlsPlaintextSuspected",
        &tls.to_string(),
    );
    prometheus.wait_for_firing(
        &scene.lab,
        "SeqwatchWeakIsnGenerator",
        &scene.prng.to_string(),
    );
    let alerts = prometheus.wait_for_firing(&scene.lab, "SeqwatchWeakIsnGenerator", &weak);
    let linux = scene.linux.to_string();
    for alert in ["SeqwatchWeakIsnGenerator", "SeqwatchSpoofingAttempts"] {
        assert!(
            !alerts
                .iter()
                .any(|(name, service, _)| name == alert && *service == linux),
            "{alert} not for the Linux listener: {alerts:?}"
        );
    }
    assert!(
        !alerts.iter().any(|(name, _, _)| name == "SeqwatchDown"),
        "{alerts:?}"
    );
    for (name, service, state) in &alerts {
        eprintln!("alert {name} {service} {state}");
    }
    prometheus.assert_every_rule_healthy(&scene.lab);
    eprintln!("whole test: {:?}", started.elapsed());
    scene.daemon.stop();
}

/// The allow-listed panels: their metrics are really absent from the daemon's scrape, and
/// they have no data, so that the allow-list fails as soon as the daemon exports them.
fn assert_not_exported_and_empty(
    scene: &Scene,
    prometheus: &Prometheus,
    allowed: &[&Panel],
    variables: &[(&str, &str)],
) {
    let metrics = scene.daemon.metrics(&scene.lab);
    for metric in NOT_EXPORTED_YET {
        assert!(
            !metrics.contains(metric),
            "{metric} is exported now: drop it from NOT_EXPORTED_YET"
        );
    }
    for panel in allowed {
        assert!(
            !prometheus.has_data(&scene.lab, panel, variables),
            "{} has data now: drop its metric from NOT_EXPORTED_YET",
            panel.name()
        );
    }
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// One panel of a generated Grafana dashboard and its targets' queries.
#[derive(Debug)]
struct Panel {
    dashboard: String,
    id: u64,
    title: String,
    /// (expr, instant): Grafana runs an instant target at one time, the others over a range.
    targets: Vec<(String, bool)>,
}

impl Panel {
    fn name(&self) -> String {
        format!("{} / #{} {}", self.dashboard, self.id, self.title)
    }

    fn reads_only_unexported(&self) -> bool {
        self.targets
            .iter()
            .all(|(expr, _)| NOT_EXPORTED_YET.iter().any(|m| expr.contains(m)))
    }
}

/// Every panel (rows excluded) of every dashboard in dashboards/grafana.
fn dashboard_panels() -> Vec<Panel> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir().join("grafana"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut panels = Vec::new();
    for file in files {
        let json: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let dashboard = json["title"].as_str().unwrap().to_owned();
        collect_panels(&json["panels"], &dashboard, &mut panels);
    }
    assert!(panels.len() > 20, "only {} panels found", panels.len());
    panels
}

fn collect_panels(list: &Json, dashboard: &str, out: &mut Vec<Panel>) {
    for panel in list.as_array().into_iter().flatten() {
        collect_panels(&panel["panels"], dashboard, out);
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("a panel with targets");
        out.push(Panel {
            dashboard: dashboard.to_owned(),
            id: panel["id"].as_u64().unwrap(),
            title: panel["title"].as_str().unwrap().to_owned(),
            targets: targets
                .iter()
                .map(|t| (t["expr"].as_str().unwrap().to_owned(), t["instant"] == true))
                .collect(),
        });
    }
}

/// `expr` with each `$name` replaced as Grafana does for one chosen value of an include-all
/// variable: regex-escaped (the matchers are `=~`), each backslash doubled for the PromQL string.
fn substitute(expr: &str, variables: &[(&str, &str)]) -> String {
    let mut out = expr.to_owned();
    for (name, value) in variables {
        let value = if *value == ALL {
            ALL.to_owned()
        } else {
            escape_regex_in_promql(value)
        };
        out = out.replace(&format!("${name}"), &value);
    }
    assert!(
        !out.contains('$'),
        "{expr}: only ${} are substituted (dashboards/grafana/build.py's conventions)",
        variables
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", $")
    );
    out
}

fn escape_regex_in_promql(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push_str(r"\\");
        }
        out.push(c);
    }
    out
}

/// Debian's Prometheus in a lab namespace with its own data directory; killed on drop.
struct Prometheus {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(lab: &Lab, ns: &str, dir: &Path) -> Prometheus {
        let config = write_test_config(dir);
        let log = dir.join("prometheus.log");
        let child = lab
            .command_in(ns, "prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus (apt-get install prometheus; ./x setup does)");
        let mut prometheus = Prometheus {
            child,
            ns: ns.to_owned(),
            log,
        };
        prometheus.wait_until_scraping(lab);
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Until Prometheus is ready and its seqwatch target is up.
    fn wait_until_scraping(&mut self, lab: &Lab) {
        let ready = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            http_get_from(lab, &self.ns, PROMETHEUS_ADDR, "/-/ready").is_some()
        });
        assert!(ready, "prometheus never became ready:\n{}", self.log());
        let up = wait_for(Duration::from_secs(10), || {
            let result = self.query(lab, r#"up{job="seqwatch"} == 1"#);
            !result.as_array().unwrap().is_empty()
        });
        assert!(up, "the seqwatch target is not up:\n{}", self.log());
    }

    /// The `data` of a successful API answer; an error answer (bad PromQL) fails the test.
    fn api(&self, lab: &Lab, path: &str, params: &[(&str, &str)]) -> Json {
        let url = format!("http://{PROMETHEUS_ADDR}{path}");
        let body = lab.run_in(&self.ns, || {
            let mut request = ureq::get(&url).config().http_status_as_error(false).build();
            for (key, value) in params {
                request = request.query(key, value);
            }
            request.call()?.body_mut().read_to_string()
        });
        let body = body.unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()));
        let mut answer: Json = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "GET {path} {params:?}: {body}");
        answer["data"].take()
    }

    fn query(&self, lab: &Lab, expr: &str) -> Json {
        self.api(lab, "/api/v1/query", &[("query", expr)])["result"].take()
    }

    /// Over the last minute at 1 s steps, as a Grafana time series panel asks.
    fn query_range(&self, lab: &Lab, expr: &str) -> Json {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let (start, end) = ((now.as_secs() - 60).to_string(), now.as_secs().to_string());
        let params = [
            ("query", expr),
            ("start", &start),
            ("end", &end),
            ("step", "1"),
        ];
        self.api(lab, "/api/v1/query_range", &params)["result"].take()
    }

    /// Whether every target of `panel` returns at least one series.
    fn has_data(&self, lab: &Lab, panel: &Panel, variables: &[(&str, &str)]) -> bool {
        panel.targets.iter().all(|(expr, instant)| {
            let expr = substitute(expr, variables);
            let result = if *instant {
                self.query(lab, &expr)
            } else {
                self.query_range(lab, &expr)
            };
            !result.as_array().unwrap().is_empty()
        })
    }

    /// The values Grafana offers for a dashboard variable `label_values(SELECTOR, LABEL)`.
    fn label_values(
        &self,
        lab: &Lab,
        variable: &str,
        substitutions: &[(&str, &str)],
    ) -> BTreeSet<String> {
        let query = variable_query(variable);
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {variable}: {query} is not label_values(…)"));
        let selector = substitute(selector, substitutions);
        let path = format!("/api/v1/label/{}/values", label.trim());
        let values = self.api(lab, &path, &[("match[]", &selector)]);
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// The one value of `$instance`: the daemon's address as the scrape target.
    fn resolve_instance_variable(&self, lab: &Lab) -> String {
        let values = self.label_values(lab, "instance", &[]);
        assert_eq!(
            values,
            BTreeSet::from([METRICS_ADDR.to_owned()]),
            "$instance"
        );
        METRICS_ADDR.to_owned()
    }

    fn resolve_service_variable(&self, lab: &Lab, instance: &str) -> BTreeSet<String> {
        self.label_values(lab, "service", &[("instance", instance)])
    }

    /// `$container` offers the container's short ID (once the daemon follows its namespace):
    /// the value the test chooses.
    fn resolve_container_variable(
        &self,
        lab: &Lab,
        instance: &str,
        container: &Container,
    ) -> String {
        let short_id = container.id[..12].to_owned();
        let mut values = BTreeSet::new();
        let offered = wait_for(Duration::from_secs(30), || {
            values = self.label_values(lab, "container", &[("instance", instance)]);
            values.contains(&short_id)
        });
        assert!(offered, "$container offers {values:?}, not {short_id}");
        short_id
    }

    /// The container's listener's series, joined on their namespace to seqwatch_netns_info,
    /// carry the container's ID.
    fn assert_the_container_is_joined(&self, lab: &Lab, container: &Container) {
        let join = "seqwatch_netns_listener_accept_queue_max \
                    * on(netns) group_left(container) seqwatch_netns_info";
        let short_id = &container.id[..12];
        let netns = container.inode().to_string();
        let mut series = Json::Null;
        let joined = wait_for(Duration::from_secs(30), || {
            series = self.query(lab, join);
            series.as_array().unwrap().iter().any(|s| {
                s["metric"]["container"] == short_id
                    && s["metric"]["netns"] == netns.as_str()
                    && s["metric"]["port"] == CONTAINER_PORT.to_string().as_str()
                    && s["value"][1] == "128"
            })
        });
        assert!(
            joined,
            "{join}: no series of {short_id}, netns {netns}: {series}"
        );
    }

    /// Waits until `alert` fires for `service`; returns every alert as (name, service, state).
    fn wait_for_firing(
        &self,
        lab: &Lab,
        alert: &str,
        service: &str,
    ) -> Vec<(String, String, String)> {
        let mut alerts = Vec::new();
        let firing = wait_for(Duration::from_secs(30), || {
            alerts = self.alerts(lab);
            alerts
                .iter()
                .any(|(name, s, state)| name == alert && s == service && state == "firing")
        });
        assert!(firing, "{alert} not firing for {service}: {alerts:?}");
        alerts
    }

    fn alerts(&self, lab: &Lab) -> Vec<(String, String, String)> {
        let data = self.api(lab, "/api/v1/alerts", &[]);
        let text = |v: &Json| v.as_str().unwrap_or_default().to_owned();
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let labels = &a["labels"];
                (
                    text(&labels["alertname"]),
                    text(&labels["service"]),
                    text(&a["state"]),
                )
            })
            .collect()
    }

    /// Every shipped rule loaded and evaluated without error against the live series.
    fn assert_every_rule_healthy(&self, lab: &Lab) {
        let data = self.api(lab, "/api/v1/rules", &[]);
        let mut health = BTreeMap::new();
        for group in data["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["name"].as_str().unwrap().to_owned();
                health.insert(name, (rule["health"].clone(), rule["lastError"].clone()));
            }
        }
        let shipped = read_yaml(&dashboards_dir().join("prometheus/seqwatch-rules.yml"));
        let rules = shipped["groups"].as_sequence().unwrap().iter();
        let count: usize = rules.map(|g| g["rules"].as_sequence().unwrap().len()).sum();
        assert_eq!(health.len(), count, "every shipped rule loaded: {health:?}");
        let unhealthy: Vec<_> = health.iter().filter(|(_, (h, _))| *h != "ok").collect();
        assert!(
            unhealthy.is_empty(),
            "rules not evaluated cleanly: {unhealthy:?}"
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `query` of the dashboard variable `name` (the same in every dashboard).
fn variable_query(name: &str) -> String {
    let path = dashboards_dir().join("grafana/seqwatch-overview.json");
    let json: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let variables = json["templating"]["list"].as_array().unwrap();
    let variable = variables.iter().find(|v| v["name"] == name).unwrap();
    variable["query"]["query"].as_str().unwrap().to_owned()
}

fn read_yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// dashboards/prometheus/prometheus.yml as shipped, but scraping the daemon every second and
/// loading a copy of its rule files with `for:` shortened. Returns the config's path.
fn write_test_config(dir: &Path) -> PathBuf {
    let shipped = dashboards_dir().join("prometheus");
    let mut config = read_yaml(&shipped.join("prometheus.yml"));
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    let job = jobs
        .iter_mut()
        .find(|job| job["job_name"] == "seqwatch")
        .expect("the shipped config scrapes job seqwatch");
    job["static_configs"][0]["targets"] = vec![METRICS_ADDR].into();
    for rule_file in config["rule_files"].as_sequence_mut().unwrap() {
        let name = rule_file.as_str().unwrap().to_owned();
        let mut rules = read_yaml(&shipped.join(&name));
        shorten_for(&mut rules);
        let copy = dir.join(&name);
        std::fs::write(&copy, serde_norway::to_string(&rules).unwrap()).unwrap();
        *rule_file = copy.to_str().unwrap().into();
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
    path
}

/// The shipped alerts wait 5 to 15 minutes before firing; the test's copy waits [`SHORT_FOR`].
/// Only `for:` changes: every expression, label and annotation stays as shipped.
fn shorten_for(rules: &mut Yaml) {
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            if rule.get("for").is_some() {
                rule["for"] = SHORT_FOR.into();
            }
        }
    }
}
