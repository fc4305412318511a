//! The TLS record-framing check against real TLS stacks in the lab: Debian's `openssl
//! s_server` sending large files over TLS 1.3 (a configured TLS port) and TLS 1.2 (another
//! port, found by its hello), and a rustls server that writes raw bytes onto its socket in the
//! middle of a session. The daemon watches the server's veth on egress, as deployed; and, on a
//! container host's gateway (`--netns all`), the uplink on egress, where the rustls server in
//! a "container" namespace (a podman-style cgroup) is named in the plaintext line.

use std::{
    io::{self, BufRead as _, BufReader, Read, Write},
    net::SocketAddrV4,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use common::{
    container::ContainerCgroup,
    daemon::{Daemon, event_lines},
    lab::{route_own_server_address, routed_lab},
    tls::Credentials,
    wait_for,
};
use seqwatch::lab::{Lab, LabOptions};

/// The event-log kind of a plaintext-suspected finding.
const PLAINTEXT: &str = "tls_plaintext_suspected";
/// A configured TLS port (in the defaults) and one that is not.
const TLS_PORT: u16 = 8443;
const OTHER_PORT: u16 = 9443;
const FILE_BYTES: usize = 4 << 20;
const FETCHES: usize = 3;

/// A lab whose server veth the daemon watches on egress (the default), with an event log and
/// a certificate for the server's address.
struct Scene {
    lab: Lab,
    daemon: Daemon,
    events: PathBuf,
    dir: tempfile::TempDir,
    credentials: Credentials,
}

impl Scene {
    fn start() -> Scene {
        let lab = Lab::create(&LabOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let flags = ["--event-log", events.to_str().unwrap()];
        let daemon = Daemon::on_server_egress(&lab, dir.path(), &flags);
        let credentials = Credentials::for_server(&lab);
        Scene {
            lab,
            daemon,
            events,
            dir,
            credentials,
        }
    }

    fn server(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.lab.server_v4, port)
    }

    /// The sum of every series of `name` whose labels include all of `labels` (0 if none).
    fn total(&self, name: &str, labels: &[&str]) -> f64 {
        self.daemon
            .metrics(&self.lab)
            .lines()
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
                (series_name == name && labels.iter().all(|label| rest.contains(label)))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    fn wait_total(&self, name: &str, labels: &[&str], at_least: f64) -> f64 {
        wait_for(Duration::from_secs(10), || {
            self.total(name, labels) >= at_least
        });
        self.total(name, labels)
    }

    fn tls_events(&self) -> Vec<serde_json::Value> {
        event_lines(&self.events, PLAINTEXT)
    }

    /// `openssl s_server -WWW` in the server namespace, serving the scene's directory, for
    /// `connections` connections; returns once it accepts.
    fn openssl_server(&self, port: u16, version_flag: &str, connections: usize) -> OpensslServer {
        let cert = write(
            self.dir.path(),
            "server.crt",
            &self.credentials.cert.cert.pem(),
        );
        let key = write(
            self.dir.path(),
            "server.key",
            &self.credentials.cert.signing_key.serialize_pem(),
        );
        let mut child = self
            .lab
            .command_in(&self.lab.server_ns, "openssl")
            .args(["s_server", "-WWW", version_flag, "-accept"])
            .arg(port.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .args(["-naccept", &connections.to_string()])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server (Debian package openssl)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.any(|line| line.is_ok_and(|line| line.trim() == "ACCEPT"));
        assert!(ready, "openssl s_server never accepted");
        OpensslServer(child)
    }

    /// GET /`file` over TLS; returns the bytes of the response.
    fn fetch(&self, to: SocketAddrV4, file: &str) -> usize {
        let mut tls = self.credentials.connect(&self.lab, to);
        tls.write_all(format!("GET /{file} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            // s_server may close without a close_notify; every byte before is in `response`.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(err) => panic!("TLS fetch from {to}: {err}"),
        }
        response.len()
    }
}

struct OpensslServer(Child);

impl OpensslServer {
    /// s_server exits after its last connection; waits for that (bounded).
    fn finish(mut self) {
        let exited = wait_for(Duration::from_secs(10), || {
            self.0.try_wait().unwrap().is_some()
        });
        assert!(
            exited,
            "openssl s_server still running after its connections"
        );
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn large_transfers_from_openssl_show_no_framing_violation() {
    let scene = Scene::start();
    std::fs::write(scene.dir.path().join("big"), vec![0xa5; FILE_BYTES]).unwrap();
    // TLS 1.3 on a configured port; TLS 1.2 on a port followed because of its ServerHello.
    for (port, version) in [(TLS_PORT, "-tls1_3"), (OTHER_PORT, "-tls1_2")] {
        let server = scene.openssl_server(port, version, FETCHES);
        for _ in 0..FETCHES {
            let received = scene.fetch(scene.server(port), "big");
            assert!(received > FILE_BYTES, "{received} bytes from {port}");
        }
        server.finish();
    }
    for port in [TLS_PORT, OTHER_PORT] {
        let service = format!("service=\"{}\"", scene.server(port));
        let ended = scene.wait_total("seqwatch_tls_sessions_total", &[&service], FETCHES as f64);
        assert_eq!(ended, FETCHES as f64, "sessions of {service}");
        let clean = ["end=\"fin\"", "end=\"alert\""]
            .iter()
            .map(|end| scene.total("seqwatch_tls_sessions_total", &[&service, end]))
            .sum::<f64>();
        assert_eq!(clean, FETCHES as f64, "clean ends of {service}");
    }
    // Every 16 KiB record of the 2 x 3 files had its header checked.
    let least = (2 * FETCHES * FILE_BYTES / (16 << 10)) as f64;
    let records = scene.wait_total("seqwatch_tls_records_checked_total", &[], least);
    assert!(
        records >= least,
        "{records} records checked, expected {least}+"
    );
    assert_eq!(
        scene.total("seqwatch_tls_plaintext_suspected_total", &[]),
        0.0
    );
    assert_eq!(scene.total("seqwatch_tls_tracking_lost_total", &[]), 0.0);
    assert!(scene.tls_events().is_empty(), "{:?}", scene.tls_events());
    scene.daemon.stop();
}

#[test]
fn plaintext_written_onto_a_tls_session_is_caught_with_its_flow_and_offset() {
    let scene = Scene::start();
    let at = scene.server(TLS_PORT);
    let leaked = scene.credentials.leak_once(&scene.lab, at, 100_000);

    let service = format!("service=\"{at}\"");
    let caught = scene.wait_total("seqwatch_tls_plaintext_suspected_total", &[&service], 1.0);
    assert_eq!(caught, 1.0);
    let collapsed = ["end=\"plaintext_then_collapse\"", &service];
    let ended = scene.wait_total("seqwatch_tls_sessions_total", &collapsed, 1.0);
    assert_eq!(ended, 1.0);
    assert_eq!(scene.total("seqwatch_tls_sessions_total", &[&service]), 1.0);

    let mut events = Vec::new();
    wait_for(Duration::from_secs(5), || {
        events = scene.tls_events();
        !events.is_empty()
    });
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["service"], at.to_string());
    assert_eq!(event["source"], at.to_string());
    assert_eq!(event["destination"], leaked.client.to_string());
    assert_eq!(event["direction"], "egress");
    assert_eq!(event["stream_offset"], leaked.offset);
    assert_eq!(event["offset_from"], "flow_start");
    assert!(
        event.get("prefix_hex").is_none(),
        "payload bytes logged: {event}"
    );
    scene.daemon.stop();
}

/// A container behind a gateway: the routed lab's router runs the daemon (`--netns all`, egress
/// towards the client, as a container host's uplink), its server namespace is the container
/// (a process in a podman container's cgroup) serving TLS on an address of its own. Plaintext
/// its server writes onto a session is reported naming the container's namespace.
#[test]
fn plaintext_from_a_containers_tls_server_names_its_container() {
    let lab = routed_lab();
    let router = lab.router.as_ref().unwrap();
    let own = route_own_server_address(&lab);
    let mut cgroup = ContainerCgroup::create();
    cgroup.start_process_in(&lab.server_ns);

    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let args = [
        "--interface",
        &router.client_if,
        "--netns",
        "all",
        "--event-log",
        events.to_str().unwrap(),
    ];
    let mut daemon = Daemon::start(&lab, &router.ns, dir.path(), &args);
    daemon.wait_attached(&lab, &router.client_if, "egress");
    let inode = std::fs::metadata(Lab::netns_path(&lab.server_ns))
        .unwrap()
        .ino();
    // Named (and its addresses read, at the same rescan) before the session.
    let info = format!("netns=\"{inode}\"");
    let container = format!("container=\"{}\"", cgroup.short_id());
    daemon.wait_netns_named(&lab, [&info, &container]);

    let at = SocketAddrV4::new(own, TLS_PORT);
    let leaked = Credentials::for_address(own).leak_once(&lab, at, 100_000);
    let plaintext = || event_lines(&events, PLAINTEXT);
    wait_for(Duration::from_secs(5), || !plaintext().is_empty());
    let lines = plaintext();
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", daemon.log());
    let line = &lines[0];
    assert_eq!(line["service"], at.to_string(), "{line}");
    assert_eq!(line["destination"], leaked.client.to_string(), "{line}");
    assert_eq!(line["netns"]["inode"], inode, "{line}");
    assert_eq!(line["netns"]["container"], cgroup.short_id(), "{line}");
    daemon.stop();
}
