//! Forged SYN-ACKs against the ingress scorer, with the real daemon and real kernels: anyone
//! can send a host SYN-ACKs "from" a server with ISNs of their choosing. Each test first
//! scores a real server (a Linux listener, or the lab's weak responder) from the client's side
//! or from a gateway between the two, then forges SYN-ACKs from that server's address and port
//! to random ports of the client: one constant ISN (which would turn a strong server weak), or
//! 2 100 random ones (which would push a weak server's samples out of its 2 048-sample window
//! and turn it strong). The forgeries answer no SYN, so they must be refused: counted as
//! `unsolicited_synack` under the server they claim, never scored. Before the SYN-ACK origin
//! check each of these verdicts flipped. Needs root; every lab namespace is removed when its
//! test ends.

use std::{
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::Duration,
};

use common::{
    daemon::{Daemon, http_get},
    lab::{connect_many, listen, send_crafted},
    prometheus::series_value,
    wait_for,
};
use seqwatch::lab::{
    Crafter, GeneratorKind, Lab, LabOptions, Responder, ResponderConfig, flags::*,
};
use serde_json::Value as Json;

const PORT: u16 = 8080;
/// Genuine handshakes scored before the attack: past the scorer's minimum of 8.
const GENUINE: u64 = 40;
/// The report's "samples" and "verdict" as the scorer published them.
type Report = (u64, String);

/// A daemon in `ns`, `--direction` `direction`, waiting for its ingress classifier on each of
/// `interfaces` (egress is attached before it).
fn start_daemon(
    lab: &Lab,
    ns: &str,
    dir: &std::path::Path,
    direction: &str,
    interfaces: &[&str],
) -> Daemon {
    let mut args = vec!["--direction", direction];
    for interface in interfaces {
        args.extend(["--interface", interface]);
    }
    let mut daemon = Daemon::start(lab, ns, dir, &args);
    for interface in interfaces {
        daemon.wait_attached(lab, interface, "ingress");
    }
    daemon
}

/// The service's latest report, once it has one.
fn report(lab: &Lab, ns: &str, service: SocketAddr) -> Option<Report> {
    let body = http_get(lab, ns, "/api/v1/services")?;
    let json: Json = serde_json::from_str(&body).ok()?;
    let report = json["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service.to_string())?;
    Some((
        report["samples"].as_u64()?,
        report["verdict"].as_str()?.to_owned(),
    ))
}

/// Waits for the service's report to hold `samples` samples, and returns its verdict.
fn scored(lab: &Lab, daemon: &Daemon, service: SocketAddr, samples: u64) -> String {
    let mut latest = None;
    let done = wait_for(Duration::from_secs(15), || {
        latest = report(lab, &daemon.ns, service);
        latest.as_ref().is_some_and(|(n, _)| *n == samples)
    });
    assert!(
        done,
        "{service}: {latest:?}, not {samples} samples\n{}",
        daemon.log()
    );
    latest.unwrap().1
}

/// `count` SYN-ACKs "from" `server` to ports of `client` that sent no SYN, with the ISNs
/// `isn` gives, sent where the server's own would come from.
fn forge(lab: &Lab, server: SocketAddr, client: Ipv4Addr, count: u16, isn: impl Fn(u16) -> u32) {
    let crafter = Crafter::server_to_client(lab).unwrap();
    for i in 0..count {
        let to = SocketAddr::new(client.into(), 20_000 + i);
        let ack = u32::from(i).wrapping_mul(2_654_435_761);
        send_crafted(&crafter, (server, to), SYN | ACK, (isn(i), ack), &[]);
    }
}

/// Forgeries counted as `unsolicited_synack`, under whichever label the claimed server has: its
/// own once it has earned one by its handshakes, else `other` (a forger's claims earn none).
fn unsolicited(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("seqwatch_handshake_anomalies_total{kind=\"unsolicited_synack\",")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// After `forged` forged SYN-ACKs claiming `service`: once the daemon has either refused them
/// all or scored them all (and then had time to score any that got through), the service's
/// report must be what it was, and the forgeries counted as unsolicited.
fn assert_forgeries_refused(
    lab: &Lab,
    daemon: &Daemon,
    service: SocketAddr,
    forged: u64,
    before: &Report,
) {
    let accounted = wait_for(Duration::from_secs(20), || {
        let refused = unsolicited(&daemon.metrics(lab)) == forged as f64;
        let scored = report(lab, &daemon.ns, service).is_some_and(|(n, _)| n >= before.0 + forged);
        refused || scored
    });
    assert!(
        accounted,
        "the forged SYN-ACKs neither refused nor scored:\n{}",
        daemon.metrics(lab)
    );
    // A service is scored again at most every 2 s.
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        report(lab, &daemon.ns, service).as_ref(),
        Some(before),
        "{forged} forged SYN-ACKs were scored as {service}'s"
    );
    let metrics = daemon.metrics(lab);
    let weak = format!("seqwatch_isn_weak{{service=\"{service}\"}}");
    let was_weak = f64::from(u8::from(before.1 == "weak"));
    assert_eq!(series_value(&metrics, &weak), Some(was_weak));
    assert_eq!(unsolicited(&metrics), forged as f64, "{metrics}");
    let not_sampled = "seqwatch_synacks_not_sampled_total{reason=\"unsolicited\"}";
    assert_eq!(series_value(&metrics, not_sampled), Some(forged as f64));
}

/// The source ranked first for `kind`, and its events.
fn top_source(lab: &Lab, daemon: &Daemon, kind: &str) -> Option<(String, u64)> {
    let body = http_get(lab, &daemon.ns, "/api/v1/anomalies/top-sources")?;
    let json: Json = serde_json::from_str(&body).ok()?;
    let kinds = json["kinds"].as_array()?;
    let first = &kinds.iter().find(|k| k["kind"] == kind)?["sources"][0];
    Some((
        first["source"].as_str()?.to_owned(),
        first["events"].as_u64()?,
    ))
}

/// Ten forged SYN-ACKs with one ISN from a strong Linux server (as ten samples they repeat
/// one value: weak).
#[test]
fn one_isn_forged_ten_times_does_not_turn_a_strong_server_weak() {
    const FORGED: u16 = 10;
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_if = lab.client_if.clone();
    let daemon = start_daemon(&lab, &lab.client_ns, dir.path(), "ingress", &[&client_if]);
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    listen(&lab, &lab.server_ns, server);
    connect_many(&lab, &lab.client_ns, server, GENUINE as usize);
    let before = (GENUINE, scored(&lab, &daemon, server, GENUINE));
    assert_eq!(before.1, "strong");

    forge(&lab, server, lab.client_v4, FORGED, |_| 0x5eed_0001);
    assert_forgeries_refused(&lab, &daemon, server, FORGED.into(), &before);
    let ranked = wait_for(Duration::from_secs(3), || {
        top_source(&lab, &daemon, "unsolicited_synack")
            == Some((lab.server_v4.to_string(), FORGED.into()))
    });
    assert!(
        ranked,
        "{:?}",
        top_source(&lab, &daemon, "unsolicited_synack")
    );
    daemon.stop();
}

/// 2 100 forged SYN-ACKs with random ISNs from a weak responder (64 000 per connection):
/// scored, they would fill its 2 048-sample window and make it strong.
#[test]
fn random_isns_forged_2100_times_do_not_turn_a_weak_server_strong() {
    const FORGED: u16 = 2_100;
    const WEAK_SAMPLES: u64 = 64;
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_if = lab.client_if.clone();
    let daemon = start_daemon(&lab, &lab.client_ns, dir.path(), "both", &[&client_if]);
    let responder = Responder::spawn_in(
        &lab,
        ResponderConfig {
            interface: lab.server_if.clone(),
            port: PORT,
            generator: GeneratorKind::Step64k,
            seed: 7,
            record: None,
        },
    )
    .unwrap();
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    connect_many(&lab, &lab.client_ns, server, WEAK_SAMPLES as usize);
    let before = (WEAK_SAMPLES, scored(&lab, &daemon, server, WEAK_SAMPLES));
    assert_eq!(before.1, "weak");

    forge(&lab, server, lab.client_v4, FORGED, |_| rand::random());
    assert_forgeries_refused(&lab, &daemon, server, FORGED.into(), &before);
    responder.stop().unwrap();
    daemon.stop();
}

/// A gateway watching a LAN (`--direction` `direction` on both of a router's interfaces):
/// real handshakes from the client through it to a Linux server are scored once, at the
/// router's interface towards the server (the SYN left by it); the same SYN-ACKs leaving
/// towards the client were forwarded, and are not sampled again. Forgeries of that server
/// that the router forwards are refused where they come in, and not sampled where they leave.
fn a_gateway_scores_forwarded_handshakes_and_refuses_forgeries(direction: &str) {
    const FORGED: u16 = 10;
    let lab = Lab::create(&LabOptions {
        routed: true,
        ..LabOptions::default()
    })
    .unwrap();
    let router = lab.router.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (towards_server, towards_client) = (router.server_if.as_str(), router.client_if.as_str());
    let interfaces = [towards_server, towards_client];
    let daemon = start_daemon(&lab, &router.ns, dir.path(), direction, &interfaces);
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    listen(&lab, &lab.server_ns, server);
    connect_many(&lab, &lab.client_ns, server, GENUINE as usize);
    let before = (GENUINE, scored(&lab, &daemon, server, GENUINE));
    assert_eq!(before.1, "strong");
    let metrics = daemon.metrics(&lab);
    let samples = |interface: &str, direction: &str| {
        let series = format!(
            "seqwatch_synack_samples_total{{direction=\"{direction}\",interface=\"{interface}\"}}"
        );
        series_value(&metrics, &series)
    };
    assert_eq!(
        samples(towards_server, "ingress"),
        Some(GENUINE as f64),
        "{metrics}"
    );
    for (interface, direction) in [(towards_client, "ingress"), (towards_client, "egress")] {
        assert_eq!(
            samples(interface, direction),
            None,
            "{interface} {direction}"
        );
    }

    forge(&lab, server, lab.client_v4, FORGED, |_| 0x5eed_0001);
    assert_forgeries_refused(&lab, &daemon, server, FORGED.into(), &before);
    // With egress sampling, every SYN-ACK the router forwarded to the client, genuine or
    // forged, was left unsampled on its way out.
    let forwarded = match direction {
        "both" => GENUINE + u64::from(FORGED),
        _ => 0,
    };
    let series = "seqwatch_synacks_not_sampled_total{reason=\"forwarded\"}";
    let metrics = daemon.metrics(&lab);
    assert_eq!(series_value(&metrics, series), Some(forwarded as f64));
    daemon.stop();
}

#[test]
fn a_gateway_sampling_both_directions_scores_forwarded_handshakes_and_refuses_forgeries() {
    a_gateway_scores_forwarded_handshakes_and_refuses_forgeries("both");
}

/// Ingress only: the router's egress hooks only record the SYNs it forwards.
#[test]
fn a_gateway_sampling_ingress_scores_forwarded_handshakes_and_refuses_forgeries() {
    a_gateway_scores_forwarded_handshakes_and_refuses_forgeries("ingress");
}
