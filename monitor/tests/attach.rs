//! Attaching the classifiers, and leaving nothing behind, against the real kernel: the real
//! daemon in a lab namespace. An interface that appears after start is attached within 2 s; after
//! exit no tcx link, tc filter or clsact qdisc of ours remains (tcx and netlink modes); a missing
//! interface is a clear error. Netlink attach mode owns its tc state: filters a `kill -9` left
//! behind are removed by the next daemon, two daemons on one interface leave each other's filters
//! and the clsact qdisc alone, and a filter or qdisc removed under a daemon is put back (or
//! reported missing); so is a tcx link detached under it (`bpftool link detach`). `tc` and
//! BPF_PROG_QUERY are the referees, `tc` and `bpftool` the outside hands too.
//! Needs root; every lab namespace is removed when its test ends.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use common::{
    daemon::{Daemon, METRICS_ADDR, attachments, scrape},
    lab::{connect_many, listen},
    prometheus::series_value,
    wait_for,
};
use seqwatch::lab::{Lab, LabOptions};

const PORT: u16 = 8080;
/// The second daemon's /metrics, beside the first one's on 127.0.0.1:10045.
const SECOND_LISTEN: &str = "127.0.0.1:10046";

/// The program ids of seqwatch's tc filters on the lab server's veth, from `tc filter show`
/// (`… handle 0x… synack_egress direct-action not_in_hw id ID name synack_egress …`).
fn our_filters(lab: &Lab) -> Vec<u32> {
    attachments(lab, &lab.server_ns, &lab.server_if)
        .iter()
        .filter(|line| line.contains(" name synack_"))
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|word| *word == "id")?;
            words.get(at + 1)?.parse().ok()
        })
        .collect()
}

fn has_clsact(lab: &Lab) -> bool {
    attachments(lab, &lab.server_ns, &lab.server_if)
        .iter()
        .any(|line| line.starts_with("qdisc clsact"))
}

fn netlink_args(lab: &Lab, direction: &str) -> Vec<String> {
    ["--interface", &lab.server_if, "--direction", direction]
        .into_iter()
        .chain(["--attach-mode", "netlink"])
        .map(str::to_owned)
        .collect()
}

fn start(lab: &Lab, dir: &std::path::Path, listen: &str, args: &[String]) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_listening(lab, &lab.server_ns, dir, listen, &args)
}

/// A listener on the lab server, and a daemon there with `args`, once its egress sampler is
/// attached.
fn serving_and_sampled(lab: &Lab, dir: &std::path::Path, args: &[String]) -> Daemon {
    listen(
        lab,
        &lab.server_ns,
        SocketAddr::new(lab.server_v4.into(), PORT),
    );
    let mut daemon = start(lab, dir, METRICS_ADDR, args);
    daemon.wait_attached(lab, &lab.server_if, "egress");
    daemon
}

/// `tc ARGS` in the server namespace, which must succeed.
fn tc(lab: &Lab, args: &[&str]) {
    let status = lab.command_in(&lab.server_ns, "tc").args(args).status();
    assert!(status.unwrap().success(), "tc {args:?}");
}

/// `count` handshakes to the server; the daemon's sample log must then hold `expected`.
fn assert_samples(lab: &Lab, daemon: &Daemon, count: usize, expected: usize) {
    connect_many(
        lab,
        &lab.client_ns,
        SocketAddr::new(lab.server_v4.into(), PORT),
        count,
    );
    let samples = daemon.samples(expected);
    assert_eq!(samples.len(), expected, "samples:\n{}", daemon.log());
}

fn egress_series(lab: &Lab, name: &str) -> String {
    format!(
        "{name}{{direction=\"egress\",interface=\"{}\",program=\"synack_egress\"}}",
        lab.server_if
    )
}

/// kill -9 leaves both filters and the qdisc; the restarted daemon removes them before
/// attaching its own (one set of filters, none of the dead one's programs), and its clean
/// exit leaves nothing: the qdisc the dead daemon added goes too.
#[test]
fn a_restart_after_kill_9_removes_the_stale_filters_and_its_exit_leaves_nothing() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    listen(
        &lab,
        &lab.server_ns,
        SocketAddr::new(lab.server_v4.into(), PORT),
    );
    let args = netlink_args(&lab, "both");
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = start(&lab, first_dir.path(), METRICS_ADDR, &args);
    first.wait_attached(&lab, &lab.server_if, "egress");
    first.wait_attached(&lab, &lab.server_if, "ingress");
    // Dropping a Daemon is SIGKILL: no chance to clean up.
    drop(first);
    let stale: BTreeSet<u32> = our_filters(&lab).into_iter().collect();
    assert_eq!(stale.len(), 2, "kill -9 leaves both filters");
    assert!(has_clsact(&lab));

    let mut second = start(&lab, second_dir.path(), METRICS_ADDR, &args);
    second.wait_attached(&lab, &lab.server_if, "egress");
    second.wait_attached(&lab, &lab.server_if, "ingress");
    let running = our_filters(&lab);
    assert_eq!(
        running.len(),
        2,
        "one set of filters after the restart: {:?}",
        attachments(&lab, &lab.server_ns, &lab.server_if)
    );
    assert!(
        running.iter().all(|id| !stale.contains(id)),
        "the dead daemon's filters are gone: stale {stale:?}, now {running:?}"
    );
    assert_samples(&lab, &second, 20, 20);
    second.stop();
    let after = attachments(&lab, &lab.server_ns, &lab.server_if);
    assert!(
        after.is_empty(),
        "left behind after the clean exit: {after:?}"
    );
}

/// Two daemons on one interface: the first one's exit takes only its own filter, the
/// second keeps sampling, and the last one out removes the qdisc the first one added.
#[test]
fn two_daemons_on_one_interface_leave_each_other_attached() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    listen(
        &lab,
        &lab.server_ns,
        SocketAddr::new(lab.server_v4.into(), PORT),
    );
    let args = netlink_args(&lab, "egress");
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = start(&lab, first_dir.path(), METRICS_ADDR, &args);
    first.wait_attached(&lab, &lab.server_if, "egress");
    let firsts = our_filters(&lab);
    let mut second = start(&lab, second_dir.path(), SECOND_LISTEN, &args);
    second.wait_attached(&lab, &lab.server_if, "egress");
    assert_eq!(our_filters(&lab).len(), 2, "one filter each");

    first.stop();
    let left = our_filters(&lab);
    assert!(
        left.len() == 1 && !firsts.contains(&left[0]) && has_clsact(&lab),
        "the second daemon's filter and the qdisc stay: {:?}",
        attachments(&lab, &lab.server_ns, &lab.server_if)
    );
    assert_samples(&lab, &second, 30, 30);
    let metrics = second.metrics(&lab);
    let attached = egress_series(&lab, "seqwatch_program_attached");
    assert_eq!(series_value(&metrics, &attached), Some(1.0));
    second.stop();
    let after = attachments(&lab, &lab.server_ns, &lab.server_if);
    assert!(after.is_empty(), "left behind after both exits: {after:?}");
}

/// A daemon killed beside another: the survivor removes the dead one's filter within its
/// 1 s check, and on its own exit the qdisc the dead one added.
#[test]
fn a_daemon_removes_the_filter_of_one_killed_beside_it() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let args = netlink_args(&lab, "egress");
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = start(&lab, first_dir.path(), METRICS_ADDR, &args);
    first.wait_attached(&lab, &lab.server_if, "egress");
    let firsts = our_filters(&lab);
    let mut second = start(&lab, second_dir.path(), SECOND_LISTEN, &args);
    second.wait_attached(&lab, &lab.server_if, "egress");
    // SIGKILL.
    drop(first);
    let reaped = wait_for(Duration::from_secs(5), || {
        let left = our_filters(&lab);
        left.len() == 1 && !firsts.contains(&left[0])
    });
    assert!(
        reaped,
        "the dead daemon's filter should go: {:?}",
        attachments(&lab, &lab.server_ns, &lab.server_if)
    );
    second.stop();
    let after = attachments(&lab, &lab.server_ns, &lab.server_if);
    assert!(after.is_empty(), "left behind: {after:?}");
}

/// `tc qdisc del … clsact` and `tc filter del … egress` under a running daemon: it attaches
/// again within a few seconds (samples resume, each time counted); while an `ingress` qdisc
/// stands where clsact was, it cannot and says so with `seqwatch_program_attached` 0.
#[test]
fn a_filter_or_qdisc_removed_under_the_daemon_is_put_back() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = serving_and_sampled(&lab, dir.path(), &netlink_args(&lab, "egress"));
    let server_if = lab.server_if.as_str();
    let attached = egress_series(&lab, "seqwatch_program_attached");
    let reattached = egress_series(&lab, "seqwatch_program_reattached_total");
    let metric = |series: &str| daemon.scrape(&lab).and_then(|m| series_value(&m, series));
    let removals: [&[&str]; 2] = [
        &["qdisc", "del", "dev", server_if, "clsact"],
        &["filter", "del", "dev", server_if, "egress"],
    ];
    for (round, removal) in removals.into_iter().enumerate() {
        tc(&lab, removal);
        let count = round as f64 + 1.0;
        let back = wait_for(Duration::from_secs(5), || {
            metric(&reattached) == Some(count) && our_filters(&lab).len() == 1
        });
        assert!(
            back,
            "not attached again after tc {removal:?}:\n{}",
            daemon.log()
        );
        assert_eq!(metric(&attached), Some(1.0));
        assert_samples(&lab, &daemon, 10, 10 * (round + 1));
    }

    // The daemon may put clsact back between the two commands: then again.
    let replaced = (0..5).any(|_| {
        tc(&lab, &["qdisc", "del", "dev", server_if, "clsact"]);
        let add = ["qdisc", "add", "dev", server_if, "ingress"];
        let status = lab.command_in(&lab.server_ns, "tc").args(add).status();
        status.unwrap().success()
    });
    assert!(replaced, "an ingress qdisc in clsact's place");
    let reported = wait_for(Duration::from_secs(5), || metric(&attached) == Some(0.0));
    assert!(
        reported,
        "a lost filter must be reported:\n{}",
        daemon.log()
    );
    tc(&lab, &["qdisc", "del", "dev", server_if, "ingress"]);
    let back = wait_for(Duration::from_secs(5), || metric(&attached) == Some(1.0));
    assert!(
        back,
        "attached again once clsact can be added:\n{}",
        daemon.log()
    );
    assert_samples(&lab, &daemon, 10, 30);
    daemon.stop();
    let after = attachments(&lab, &lab.server_ns, &lab.server_if);
    assert!(after.is_empty(), "left behind after exit: {after:?}");
}

/// The kernel's id of the program on the lab server's veth's tcx egress hook (BPF_PROG_QUERY).
fn tcx_egress_program(lab: &Lab) -> Option<u32> {
    let name = std::ffi::CString::new(lab.server_if.as_str()).unwrap();
    let (_, programs) = lab
        .run_in(&lab.server_ns, || {
            SchedClassifier::query_tcx(name.as_c_str(), TcAttachType::Egress)
        })
        .expect("query the tcx programs");
    programs.first().map(|program| program.id())
}

/// The ids of the BPF links that hold `program`, open or detached (`bpftool link show`).
fn links_of(program: u32) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool (./x setup installs it)");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    let holding = links.as_array().into_iter().flatten();
    holding
        .filter(|link| link["prog_id"] == program)
        .filter_map(|link| link["id"].as_u64())
        .collect()
}

/// `bpftool link detach`es the link that holds `program` on its hook, as any process with
/// CAP_NET_ADMIN may.
fn detach_link_of(program: u32) {
    let links = links_of(program);
    assert_eq!(links.len(), 1, "one link holds program {program}");
    let link = links[0].to_string();
    let status = Command::new("bpftool")
        .args(["link", "detach", "id", &link])
        .status();
    assert!(status.unwrap().success(), "bpftool link detach id {link}");
}

/// tcx mode: the sampler's link detached from outside. Before, the daemon went on reporting
/// it attached (`seqwatch_program_attached` 1) while nothing was sampled; now it attaches it
/// again within a few seconds, counts it, and samples resume.
#[test]
fn a_tcx_link_detached_under_the_daemon_is_attached_again() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--interface", &lab.server_if, "--attach-mode", "tcx"].map(str::to_owned);
    let daemon = serving_and_sampled(&lab, dir.path(), &args);
    let reattached = egress_series(&lab, "seqwatch_program_reattached_total");
    let metric = |series: &str| daemon.scrape(&lab).and_then(|m| series_value(&m, series));
    assert_samples(&lab, &daemon, 10, 10);
    for round in 1..=2 {
        let program = tcx_egress_program(&lab).expect("the sampler on tcx egress");
        detach_link_of(program);
        assert_eq!(tcx_egress_program(&lab), None, "detached");
        let back = wait_for(Duration::from_secs(5), || {
            metric(&reattached) == Some(f64::from(round)) && tcx_egress_program(&lab).is_some()
        });
        assert!(back, "not attached again:\n{}", daemon.log());
        assert_eq!(tcx_egress_program(&lab), Some(program), "the same program");
        // The detached link's descriptor is closed, not leaked: only the new link is left.
        assert_eq!(links_of(program).len(), 1);
        assert_eq!(
            metric(&egress_series(&lab, "seqwatch_program_attached")),
            Some(1.0)
        );
        assert_samples(&lab, &daemon, 10, 10 * (round as usize + 1));
    }
    daemon.stop();
    let after = attachments(&lab, &lab.server_ns, &lab.server_if);
    assert!(after.is_empty(), "left behind after exit: {after:?}");
}

/// An interface that appears after start is attached within 2 s; one that vanishes is
/// forgotten and the daemon carries on.
#[test]
fn interfaces_that_appear_later_are_attached_within_two_seconds() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&lab, &lab.server_ns, dir.path(), &[]);
    daemon.wait_attached(&lab, &lab.server_if, "egress");

    let ip = |args: &[&str]| {
        let status = lab.command_in(&lab.server_ns, "ip").args(args).status();
        assert!(status.unwrap().success(), "ip {args:?}");
    };
    ip(&[
        "link", "add", "dev", "late0", "type", "veth", "peer", "name", "late1",
    ]);
    let created = Instant::now();
    ip(&["link", "set", "late0", "up"]);
    let series = "seqwatch_program_attached{direction=\"egress\",interface=\"late0\",program=\"synack_egress\"}";
    let attached = wait_for(Duration::from_secs(2), || {
        scrape(&lab, &lab.server_ns).is_some_and(|m| series_value(&m, series) == Some(1.0))
    });
    assert!(attached, "late0 not attached within 2 s:\n{}", daemon.log());
    eprintln!("attached {:?} after the link appeared", created.elapsed());

    ip(&["link", "del", "late0"]);
    let forgotten = wait_for(Duration::from_secs(2), || {
        scrape(&lab, &lab.server_ns).is_some_and(|m| series_value(&m, series).is_none())
    });
    assert!(forgotten, "late0's series should go with it");
    daemon.stop();
}

/// After SIGTERM nothing of ours stays on the interface: no tcx link, no tc filter, and no
/// clsact qdisc that we added.
fn assert_nothing_left_after_exit(mode: &str) {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server_if = lab.server_if.clone();
    let mut daemon = Daemon::start(
        &lab,
        &lab.server_ns,
        dir.path(),
        &[
            "--interface",
            &server_if,
            "--direction",
            "both",
            "--attach-mode",
            mode,
        ],
    );
    daemon.wait_attached(&lab, &server_if, "egress");
    daemon.wait_attached(&lab, &server_if, "ingress");
    let during = attachments(&lab, &lab.server_ns, &server_if);
    assert!(
        during.iter().filter(|a| a.contains("synack_")).count() >= 2,
        "both classifiers visible while running: {during:?}"
    );
    daemon.stop();
    let after = attachments(&lab, &lab.server_ns, &server_if);
    assert!(after.is_empty(), "left behind after exit: {after:?}");
    let pinned = Command::new("find")
        .args(["/sys/fs/bpf", "-name", "*synack*"])
        .output()
        .unwrap();
    assert!(pinned.stdout.is_empty(), "pinned objects left behind");
}

#[test]
fn nothing_of_ours_remains_after_exit_tcx() {
    assert_nothing_left_after_exit("tcx");
}

#[test]
fn nothing_of_ours_remains_after_exit_netlink() {
    assert_nothing_left_after_exit("netlink");
}

/// A named interface that does not exist is a clear error at start, not a silent no-op.
#[test]
fn a_missing_interface_is_a_clear_error() {
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let out = lab
        .command_in(&lab.server_ns, env!("CARGO_BIN_EXE_seqwatch"))
        .args(["run", "--interface", "nosuch0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("interface \"nosuch0\" does not exist"),
        "{stderr}"
    );
}
