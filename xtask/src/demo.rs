//! `./x demo`: the veth lab, a weak ISN responder, the monitor in the server namespace, 50
//! connections, and what the monitor says about the service. Everything is removed at the end.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{build_release, run_checked, step};

const LAB: &str = "sw-demo";
const SERVER_NS: &str = "/run/netns/sw-demo-s";

pub fn run() -> anyhow::Result<()> {
    let binary = build_release()?;
    // A demo interrupted before its clean-up leaves the lab up: start from scratch.
    let _ = Command::new(&binary)
        .args(["lab", "down", "--name", LAB])
        .stderr(Stdio::null())
        .status();
    step("seqwatch lab up (namespaces sw-demo-s and sw-demo-c, joined by a veth)");
    run_checked(Command::new(&binary).args(["lab", "up", "--name", LAB]))?;
    let _lab = LabGuard(binary.clone());

    step("weak ISN responder on 10.199.0.1:8080: each ISN is the previous + 64000");
    let _responder = Process(
        Command::new(&binary)
            .args([
                "lab",
                "responder",
                "--netns",
                "sw-demo-s",
                "--interface",
                "veth-s",
            ])
            .args(["--port", "8080", "--generator", "step64k"])
            .spawn()?,
    );
    step("the monitor, in the server namespace, on veth-s");
    let _monitor = Process(
        in_server_ns(&binary)
            .args(["run", "--interface", "veth-s"])
            .spawn()?,
    );
    wait_attached()?;

    step("50 connections from the client namespace");
    run_checked(Command::new(&binary).args([
        "lab",
        "connect",
        "--netns",
        "sw-demo-c",
        "--to",
        "10.199.0.1:8080",
        "--count",
        "50",
        "--rate",
        "100",
    ]))?;
    thread::sleep(Duration::from_millis(1500)); // the scores are published every second
    step("what the monitor says (GET /api/v1/services):");
    let report = get("/api/v1/services")?;
    println!("{report}");
    if !report.contains("\"verdict\":\"weak\"") {
        bail!("the weak generator was not flagged");
    }
    step("flagged weak; removing the lab");
    Ok(())
}

fn in_server_ns(program: &Path) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={SERVER_NS}")).arg(program);
    command
}

fn get(path: &str) -> anyhow::Result<String> {
    let out = in_server_ns(Path::new("curl"))
        .args(["-sf", &format!("http://127.0.0.1:10045{path}")])
        .stderr(Stdio::null())
        .output()?;
    Ok(String::from_utf8(out.stdout)?)
}

fn wait_attached() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if get("/metrics")
            .is_ok_and(|m| m.contains("interface=\"veth-s\",program=\"synack_egress\"} 1"))
        {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("the monitor did not attach within 30 s")
}

/// A child stopped with SIGTERM (the monitor detaches and exits 0) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Removes the lab when dropped, whatever happened.
struct LabGuard(std::path::PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let removed = Command::new(&self.0)
            .args(["lab", "down", "--name", LAB])
            .status()
            .context("seqwatch lab down");
        if !removed.is_ok_and(|status| status.success()) {
            eprintln!("could not remove the lab: run `seqwatch lab down --name {LAB}`");
        }
    }
}
