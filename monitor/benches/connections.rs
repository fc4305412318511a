//! TCP connections per second through the veth lab, with and without the monitor attached to
//! the server's interface, in alternating rounds; reports the medians and their ratio.
//! Needs root. Run by `./x bench`; `SEQWATCH_BENCH_ROUNDS` sets the rounds per side, and
//! `SEQWATCH_BENCH_BEFORE=PATH` adds the same setups run by another build of the daemon (say,
//! the previous commit's), so that a change is compared within one alternating run.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use std::os::fd::AsRawFd as _;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt::{Linger, ReuseAddr},
};
use seqwatch::lab::{Lab, LabOptions};

const PORT: u16 = 8080;
const ROUND: Duration = Duration::from_secs(3);
const CLIENT_THREADS: usize = 2;
const SERVER_THREADS: usize = 2;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("SEQWATCH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let lab = Lab::create(&LabOptions::default())?;
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    serve(&lab, server)?;
    println!(
        "connections/s through the veth lab ({rounds} alternating rounds of {ROUND:?}, {CLIENT_THREADS} client threads)"
    );
    let setups = setups();
    let mut without = Vec::new();
    let mut with = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        // The order rotates each round, so that a drift within a round favours no setup.
        let mut line = format!("round {round}:");
        for slot in 0..=setups.len() {
            match (slot + round) % (setups.len() + 1) {
                0 => {
                    let bare = connection_rate(&lab, server);
                    without.push(bare);
                    line += &format!("   without {bare:>8.0}/s");
                }
                setup => {
                    let (name, daemon, args) = &setups[setup - 1];
                    let monitor = Monitor::start(&lab, daemon, args)?;
                    let cpu_before = monitor.cpu_time()?;
                    let monitored = connection_rate(&lab, server);
                    let usage = monitor.stop(cpu_before)?;
                    with[setup - 1].push(monitored);
                    line += &format!("   {name} {monitored:>8.0}/s ({usage})");
                }
            }
        }
        println!("{line}");
    }
    // Each round's own ratio pairs runs seconds apart, so a drift of the machine between
    // rounds cancels out; their spread says how far to trust the median.
    let paired: Vec<Vec<f64>> = with
        .iter()
        .map(|rates| rates.iter().zip(&without).map(|(w, b)| w / b).collect())
        .collect();
    let without = median(&mut without);
    println!("median without the monitor: {without:.0}/s");
    for ((rates, mut ratios), (name, _, _)) in with.iter_mut().zip(paired).zip(setups) {
        let rate = median(rates);
        let ratio = median(&mut ratios);
        println!(
            "median with --direction {name}: {rate:.0}/s, ratio of medians {:.3}; \
             per-round ratio median {ratio:.3} (range {:.3} to {:.3})",
            rate / without,
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    Ok(())
}

/// The default (egress: the SYN-ACK sampler, stateless handshake checks) and both directions
/// (the stateful handshake tracker too), each against no monitor; each by the `before` build
/// too when one is given.
fn setups() -> Vec<(String, String, &'static [&'static str])> {
    let directions: [(&str, &[&str]); 2] = [("egress", &[]), ("both", &["--direction", "both"])];
    let mut daemons = vec![("", env!("CARGO_BIN_EXE_seqwatch").to_owned())];
    if let Ok(before) = std::env::var("SEQWATCH_BENCH_BEFORE") {
        daemons.push(("before:", before));
    }
    daemons
        .iter()
        .flat_map(|(prefix, daemon)| {
            directions.map(|(name, args)| (format!("{prefix}{name}"), daemon.clone(), args))
        })
        .collect()
}

/// Accepting threads in the server namespace, for the life of the process.
fn serve(lab: &Lab, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = Arc::new(lab.run_in(&lab.server_ns, || deep_listener(addr))?);
    for _ in 0..SERVER_THREADS {
        let listener = listener.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                drop(stream);
            }
        });
    }
    Ok(())
}

/// A listener with a deep accept queue: std's 128 overflows under a tight connect loop, and
/// every SYN dropped then costs its client a 1 s retransmission timeout, which is what a
/// benchmark of the datapath must not measure.
fn deep_listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(4096)?)?;
    Ok(TcpListener::from(fd))
}

/// Completed handshakes per second over one round. Clients reset instead of closing, so that
/// TIME_WAIT does not exhaust the ephemeral ports.
fn connection_rate(lab: &Lab, server: SocketAddr) -> f64 {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    lab.run_in(&lab.client_ns, || {
        thread::scope(|scope| {
            for _ in 0..CLIENT_THREADS {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(stream) = TcpStream::connect(server) {
                            let _ = setsockopt(
                                &stream,
                                Linger,
                                &libc::linger {
                                    l_onoff: 1,
                                    l_linger: 0,
                                },
                            );
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            thread::sleep(ROUND);
            stop.store(true, Ordering::Relaxed);
        });
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The release daemon attached to the server's veth, as deployed.
struct Monitor<'a> {
    lab: &'a Lab,
    child: Child,
}

impl<'a> Monitor<'a> {
    fn start(lab: &'a Lab, daemon: &str, args: &[&str]) -> anyhow::Result<Monitor<'a>> {
        let child = lab
            .command_in(&lab.server_ns, daemon)
            .args(["run", "--interface", &lab.server_if])
            .args(args)
            .stderr(Stdio::null())
            .spawn()?;
        let monitor = Monitor { lab, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while monitor
            .metric("seqwatch_program_attached{")
            .is_none_or(|v| v < 1.0)
        {
            anyhow::ensure!(Instant::now() < deadline, "the monitor did not attach");
            thread::sleep(Duration::from_millis(50));
        }
        Ok(monitor)
    }

    fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.lab.run_in(&self.lab.server_ns, || {
            ureq::get("http://127.0.0.1:10045/metrics")
                .call()
                .ok()?
                .body_mut()
                .read_to_string()
                .ok()
        })?;
        text.lines()
            .find(|line| line.starts_with(prefix))?
            .rsplit_once(' ')?
            .1
            .parse()
            .ok()
    }

    /// CPU time the daemon's threads have used so far, to the nanosecond: the first field of
    /// each thread's /proc/PID/task/TID/schedstat (/proc/PID/stat counts 10 ms ticks, too
    /// coarse for a few percent of a CPU over seconds).
    fn cpu_time(&self) -> anyhow::Result<Duration> {
        let mut total_ns = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
            let on_cpu = schedstat.split_whitespace().next().unwrap_or_default();
            total_ns += on_cpu.parse::<u64>()?;
        }
        Ok(Duration::from_nanos(total_ns))
    }

    /// Stops the daemon once the round's records are read, and reports its CPU use since
    /// `cpu_before` (the round and that wait).
    fn stop(mut self, cpu_before: Duration) -> anyhow::Result<Usage> {
        thread::sleep(Duration::from_millis(1100)); // one publish tick
        let cpu = self.cpu_time()? - cpu_before;
        let usage = Usage {
            cpu,
            samples: self.metric("seqwatch_synack_samples_total{").unwrap_or(0.0) as u64,
            scoring: Duration::from_secs_f64(
                self.metric("seqwatch_scoring_seconds_total").unwrap_or(0.0),
            ),
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        Ok(usage)
    }
}

/// The daemon's CPU time over a round, also per sample, and how much of it was scoring (every
/// service at most every 2 s whatever its rate, so a round of 3 s scores its service's full
/// window once, whose cost spread over the round's samples is a large part of their share).
struct Usage {
    cpu: Duration,
    samples: u64,
    scoring: Duration,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} samples, daemon {:.1}% CPU, {} ns/sample, scoring {:.0} ms wall",
            self.samples,
            self.cpu.as_secs_f64() / ROUND.as_secs_f64() * 100.0,
            self.cpu.as_nanos() / u128::from(self.samples.max(1)),
            self.scoring.as_secs_f64() * 1e3,
        )
    }
}
