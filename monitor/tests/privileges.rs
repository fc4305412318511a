//! The daemon as the systemd unit runs it: not root, only CAP_BPF, CAP_NET_ADMIN and
//! CAP_PERFMON (granted with setpriv, as AmbientCapabilities= does), dropping all but
//! CAP_NET_ADMIN once attached; a clear failure without them; readiness told to systemd after
//! the attach; /metrics over TLS with basic auth. Needs root to set up the lab namespaces.

use std::{
    net::SocketAddr,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::Path,
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use common::{
    daemon::{Daemon, METRICS_ADDR, assert_tcp_event_programs_attached, attachments, scrape},
    host::thread_caps,
    lab::{connect_many, listen},
    prometheus::series_value,
    wait_for,
};
use seqwatch::lab::{Lab, LabOptions};

const NOBODY: &str = "65534";
const PORT: u16 = 8080;
/// CAP_NET_ADMIN is capability 12.
const ONLY_NET_ADMIN: u64 = 1 << 12;

/// setpriv to user and group nobody with `caps` inheritable and ambient, so that they survive
/// the exec into seqwatch exactly like the unit's AmbientCapabilities=.
fn as_nobody_with(caps: &str) -> Vec<String> {
    let mut wrapper = vec![
        "setpriv".to_owned(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
    ];
    if !caps.is_empty() {
        wrapper.push(format!("--inh-caps={caps}"));
        wrapper.push(format!("--ambient-caps={caps}"));
    }
    wrapper
}

/// A directory the unprivileged daemon can write its sample log into.
fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn process_uid(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

/// The unit's capabilities: everything attaches, tracepoint programs included, with tcx
/// and with netlink.
#[test]
fn runs_with_the_units_capabilities_then_keeps_only_net_admin_tcx() {
    runs_then_keeps_only_net_admin("tcx");
}

#[test]
fn runs_with_the_units_capabilities_then_keeps_only_net_admin_netlink() {
    runs_then_keeps_only_net_admin("netlink");
}

/// packaging/seqwatch.service's capabilities: what the loader needs, nothing else.
const UNIT_CAPS: &str = "+bpf,+net_admin,+perfmon";

fn runs_then_keeps_only_net_admin(mode: &str) {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = shared_tempdir();
    let wrapper = as_nobody_with(UNIT_CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let args = ["--attach-mode", mode];
    let mut daemon = Daemon::start_wrapped(&lab, &lab.server_ns, dir.path(), &wrapper, &args);
    daemon.wait_attached(&lab, &lab.server_if, "egress");
    let metrics = daemon.metrics(&lab);
    assert_tcp_event_programs_attached(&metrics, || daemon.log());

    let pid = daemon.pid();
    assert_eq!(process_uid(pid), NOBODY, "not root");
    for set in ["CapEff", "CapPrm"] {
        let caps = thread_caps(pid, set);
        assert!(
            caps.iter().all(|&c| c == ONLY_NET_ADMIN),
            "{set} of every thread after attach: {caps:x?}\n{}",
            daemon.log()
        );
    }
    for set in ["CapInh", "CapAmb"] {
        assert!(thread_caps(pid, set).iter().all(|&c| c == 0), "{set}");
    }

    // It samples as root would.
    let service = SocketAddr::new(lab.server_v4.into(), PORT);
    listen(&lab, &lab.server_ns, service);
    connect_many(&lab, &lab.client_ns, service, 20);
    assert_eq!(daemon.samples(20).len(), 20, "{}", daemon.log());

    // And CAP_NET_ADMIN alone still attaches to an interface that appears later.
    let ip = |args: &[&str]| {
        let status = lab.command_in(&lab.server_ns, "ip").args(args).status();
        assert!(status.unwrap().success(), "ip {args:?}");
    };
    ip(&[
        "link", "add", "dev", "late0", "type", "veth", "peer", "name", "late1",
    ]);
    ip(&["link", "set", "late0", "up"]);
    let series = "seqwatch_program_attached{direction=\"egress\",interface=\"late0\",program=\"synack_egress\"}";
    let attached = wait_for(Duration::from_secs(5), || {
        scrape(&lab, &lab.server_ns).is_some_and(|m| series_value(&m, series) == Some(1.0))
    });
    assert!(
        attached,
        "late0 not attached with the reduced set:\n{}",
        daemon.log()
    );
    // And it takes everything back on exit.
    daemon.stop();
    for interface in [lab.server_if.as_str(), "late0"] {
        let left = attachments(&lab, &lab.server_ns, interface);
        assert!(left.is_empty(), "{mode}: left on {interface}: {left:?}");
    }
}

/// Exit 1 and the capabilities named, for no capability and for each one left out.
#[test]
fn without_the_capabilities_it_fails_naming_the_missing_ones() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let cases = [
        ("", "missing: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        ("+bpf,+net_admin", "missing: CAP_PERFMON"),
        ("+net_admin,+perfmon", "missing: CAP_BPF"),
        ("+bpf,+perfmon", "missing: CAP_NET_ADMIN"),
    ];
    for (caps, expected) in cases {
        let wrapper = as_nobody_with(caps);
        let output = lab
            .command_in(&lab.server_ns, &wrapper[0])
            .args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_seqwatch"))
            .args(["run", "--interface", &lab.server_if])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "caps {caps:?}: {stderr}");
        assert!(
            stderr
                .contains("needs root or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
            "{stderr}"
        );
        assert!(stderr.contains(expected), "caps {caps:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("EPERM"),
            "{stderr}"
        );
    }
}

/// READY=1 comes once the classifier is attached and /metrics answers; STOPPING=1 on SIGTERM.
#[test]
fn systemd_hears_ready_after_the_attach() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let wrapper = [
        "env".to_owned(),
        format!("NOTIFY_SOCKET={}", socket_path.display()),
    ];
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_wrapped(
        &lab,
        &lab.server_ns,
        dir.path(),
        &wrapper,
        &["--interface", &lab.server_if],
    );

    let ready = receive(&socket);
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "{ready:?}\n{}",
        daemon.log()
    );
    let url = format!("STATUS=attached; serving http://{METRICS_ADDR}/metrics");
    assert!(ready.lines().any(|l| l == url), "{ready:?}");
    // Ready means attached: no waiting needed now.
    let metrics = daemon.metrics(&lab);
    let series = format!(
        "seqwatch_program_attached{{direction=\"egress\",interface=\"{}\",program=\"synack_egress\"}}",
        lab.server_if
    );
    assert_eq!(series_value(&metrics, &series), Some(1.0));

    daemon.stop();
    assert_eq!(receive(&socket), "STOPPING=1\n");
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 512];
    let length = socket
        .recv(&mut buffer)
        .expect("a notification within 30 s");
    String::from_utf8_lossy(&buffer[..length]).into_owned()
}

/// The real daemon behind a web config: HTTPS with basic auth, nothing in plain HTTP.
#[test]
fn the_daemon_serves_tls_with_basic_auth() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    write(dir.path(), "server.crt", &certified.cert.pem());
    write(
        dir.path(),
        "server.key",
        &certified.signing_key.serialize_pem(),
    );
    let hash = bcrypt::hash("scrape-me", 10).unwrap();
    write(
        dir.path(),
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    );
    let web_config = dir.path().join("web.yml");
    let daemon = Daemon::start(
        &lab,
        &lab.server_ns,
        dir.path(),
        &[
            "--interface",
            &lab.server_if,
            "--web-config",
            web_config.to_str().unwrap(),
        ],
    );
    let agent = tls_agent(certified.cert.der());
    let url = format!("https://{METRICS_ADDR}/metrics");
    let get = |auth: Option<&str>| {
        lab.run_in(&lab.server_ns, || {
            let mut request = agent.get(&url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            let mut response = request.call().ok()?;
            Some((
                response.status().as_u16(),
                response.body_mut().read_to_string().ok()?,
            ))
        })
    };
    let good = basic_auth("prometheus", "scrape-me");
    let served = wait_for(Duration::from_secs(30), || {
        get(Some(&good)).is_some_and(|(status, body)| {
            status == 200 && body.contains("seqwatch_program_attached{")
        })
    });
    assert!(served, "no TLS scrape:\n{}", daemon.log());
    assert_eq!(get(None).map(|(status, _)| status), Some(401));
    let wrong = basic_auth("prometheus", "nope");
    assert_eq!(get(Some(&wrong)).map(|(status, _)| status), Some(401));
    assert!(
        scrape(&lab, &lab.server_ns).is_none(),
        "plain HTTP must fail"
    );
    assert!(
        daemon
            .log()
            .contains(&format!("serving https://{METRICS_ADDR}/metrics"))
    );
    daemon.stop();
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn tls_agent(trusted: &[u8]) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let roots = RootCerts::Specific(Arc::new(vec![Certificate::from_der(trusted).to_owned()]));
    ureq::Agent::config_builder()
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .http_status_as_error(false)
        .build()
        .into()
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}
