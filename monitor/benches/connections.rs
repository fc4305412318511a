//! TCP connections per second through the veth lab, with and without the monitor attached to
//! the server's interface, in alternating rounds; reports the medians and their ratio. Beside
//! each rate, the machine's busy CPU time per connection (/proc/stat: user, system, irq,
//! softirq) and the share the hypervisor stole: on a VM whose neighbours take a varying part
//! of its CPUs, the rates swing with the steal, while the CPU a connection costs does not
//! (the VM's own speed still moves both, by ±15 % between rounds without any steal). Needs
//! root. Run by `./x bench`; `SEQWATCH_BENCH_ROUNDS` sets the rounds per side, and
//! `SEQWATCH_BENCH_BEFORE=PATH` adds the same setups run by another build of the daemon (say,
//! the previous commit's), so that a change is compared within one alternating run. With
//! `SEQWATCH_BENCH_KERNEL_STATS=1` the kernel's per-program run-time statistics are on for the
//! run (BPF_ENABLE_STATS), and each monitored round also reports the daemon's eBPF programs'
//! CPU time per connection, the summary their cost per run: what the rates alone are too noisy
//! to show. Not by default: the statistics add two clock reads to every program run (about
//! 12 runs per connection), which lowers the monitored rates by a few per cent.
//! `SEQWATCH_BENCH_NETNS_ALL=1` adds egress with `--netns all` (which follows the lab's client
//! namespace too: its half of each connection's socket events is then kept, not skipped).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
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
    // On while this fd lives.
    let _stats = std::env::var("SEQWATCH_BENCH_KERNEL_STATS")
        .is_ok_and(|v| v == "1")
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .transpose()?;
    let lab = Lab::create(&LabOptions::default())?;
    let server = SocketAddr::new(lab.server_v4.into(), PORT);
    serve(&lab, server)?;
    println!(
        "connections/s through the veth lab ({rounds} alternating rounds of {ROUND:?}, {CLIENT_THREADS} client threads)"
    );
    let setups = setups();
    let mut without = Vec::new();
    let mut with = vec![Vec::new(); setups.len()];
    let mut kernel = vec![KernelCost::default(); setups.len()];
    for round in 0..rounds {
        // The order rotates each round, so that a drift within a round favours no setup.
        let mut line = format!("round {round}:");
        for slot in 0..=setups.len() {
            match (slot + round) % (setups.len() + 1) {
                0 => {
                    let bare = connection_rate(&lab, server)?;
                    line += &format!("   without {bare}");
                    without.push(bare);
                }
                setup => {
                    let (name, daemon, args) = &setups[setup - 1];
                    let monitor = Monitor::start(&lab, daemon, args)?;
                    let cpu_before = monitor.cpu_time()?;
                    let round = connection_rate(&lab, server)?;
                    let (usage, programs) = monitor.stop(cpu_before)?;
                    kernel[setup - 1].add(&programs, round.connections);
                    line += &format!("   {name} {round} ({usage}");
                    if programs.total_ns() > 0.0 {
                        let per_connection = programs.total_ns() / round.connections.max(1) as f64;
                        line += &format!(", kernel {per_connection:.0} ns/conn");
                    }
                    line += ")";
                    with[setup - 1].push(round);
                }
            }
        }
        println!("{line}");
    }
    let without_rate = median_of(&without, Round::rate);
    let without_cpu = median_of(&without, Round::cpu_per_connection);
    println!("median without the monitor: {without_rate:.0}/s, {without_cpu:.1} µs CPU/conn");
    for (rounds, (name, _, _)) in with.iter().zip(&setups) {
        let rate = median_of(rounds, Round::rate);
        let cpu = median_of(rounds, Round::cpu_per_connection);
        println!(
            "median with --direction {name}: {rate:.0}/s, ratio of medians {:.3}; per-round ratio \
             median {}; CPU per connection {cpu:.1} µs, CPU ratio (without/with) of medians \
             {:.3}, per round {}",
            rate / without_rate,
            Paired::new(rounds, &without, Round::rate),
            without_cpu / cpu,
            // The cheaper side's cost over the dearer: a rate ratio the steal does not move.
            Paired::new(&without, rounds, Round::cpu_per_connection),
        );
    }
    for (cost, (name, _, _)) in kernel.iter().zip(setups) {
        if cost.total_ns() > 0.0 {
            println!("eBPF programs with --direction {name}, all rounds: {cost}");
        }
    }
    Ok(())
}

/// The default (egress: the SYN-ACK sampler, stateless handshake checks) and both directions
/// (the stateful handshake tracker too), each against no monitor; each by the `before` build
/// too when one is given.
fn setups() -> Vec<(String, String, &'static [&'static str])> {
    let mut directions: Vec<(&str, &'static [&'static str])> =
        vec![("egress", &[]), ("both", &["--direction", "both"])];
    if std::env::var("SEQWATCH_BENCH_NETNS_ALL").is_ok_and(|v| v == "1") {
        directions.push(("egress-netns-all", &["--netns", "all"]));
    }
    let mut daemons = vec![("", env!("CARGO_BIN_EXE_seqwatch").to_owned())];
    if let Ok(before) = std::env::var("SEQWATCH_BENCH_BEFORE") {
        daemons.push(("before:", before));
    }
    daemons
        .iter()
        .flat_map(|(prefix, daemon)| {
            let daemon = daemon.clone();
            let directions = directions.clone();
            directions
                .into_iter()
                .map(move |(name, args)| (format!("{prefix}{name}"), daemon.clone(), args))
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

/// Completed handshakes over one round, and the machine's CPU time meanwhile. Clients reset
/// instead of closing, so that TIME_WAIT does not exhaust the ephemeral ports.
fn connection_rate(lab: &Lab, server: SocketAddr) -> anyhow::Result<Round> {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let cpu_before = CpuTicks::now()?;
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
    Ok(Round {
        connections: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        cpu: CpuTicks::now()?.since(cpu_before),
    })
}

#[derive(Clone)]
struct Round {
    connections: u64,
    elapsed: Duration,
    cpu: CpuTicks,
}

impl Round {
    fn rate(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64()
    }

    /// The machine's busy CPU time per connection, µs.
    fn cpu_per_connection(&self) -> f64 {
        self.cpu.busy as f64 / ticks_per_second() * 1e6 / self.connections.max(1) as f64
    }
}

impl std::fmt::Display for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steal = self.cpu.steal as f64 / self.cpu.all.max(1) as f64 * 100.0;
        write!(
            f,
            "{:>8.0}/s {:>5.1} µs CPU/conn, steal {steal:.0}%",
            self.rate(),
            self.cpu_per_connection()
        )
    }
}

/// The ratios numerator / denominator of each round's pair (seconds apart, so that a drift of
/// the machine between rounds cancels out): their median, and their range, which says how
/// far to trust it.
struct Paired {
    median: f64,
    low: f64,
    high: f64,
}

impl Paired {
    fn new(numerator: &[Round], denominator: &[Round], value: fn(&Round) -> f64) -> Self {
        let mut ratios: Vec<f64> = numerator
            .iter()
            .zip(denominator)
            .map(|(n, d)| value(n) / value(d))
            .collect();
        Paired {
            median: median(&mut ratios),
            low: ratios[0],
            high: ratios[ratios.len() - 1],
        }
    }
}

impl std::fmt::Display for Paired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} (range {:.3} to {:.3})",
            self.median, self.low, self.high
        )
    }
}

/// The machine's CPU time in USER_HZ ticks, from /proc/stat's first line: busy (user, nice,
/// system, irq, softirq), stolen by the hypervisor, and everything (idle and iowait too).
#[derive(Clone, Copy)]
struct CpuTicks {
    busy: u64,
    steal: u64,
    all: u64,
}

impl CpuTicks {
    fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            anyhow::bail!("/proc/stat: fewer than 8 CPU time fields");
        };
        let busy = user + nice + system + irq + softirq;
        Ok(CpuTicks {
            busy,
            steal,
            all: busy + idle + iowait + steal,
        })
    }

    fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: self.busy - earlier.busy,
            steal: self.steal - earlier.steal,
            all: self.all - earlier.all,
        }
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn median_of(rounds: &[Round], value: fn(&Round) -> f64) -> f64 {
    median(&mut rounds.iter().map(value).collect::<Vec<_>>())
}

/// The middle value; for an even count, the mean of the two middle ones.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// The release daemon attached to the server's veth, as deployed.
struct Monitor<'a> {
    lab: &'a Lab,
    child: Child,
    started: SystemTime,
}

impl<'a> Monitor<'a> {
    fn start(lab: &'a Lab, daemon: &str, args: &[&str]) -> anyhow::Result<Monitor<'a>> {
        let started = SystemTime::now();
        let child = lab
            .command_in(&lab.server_ns, daemon)
            .args(["run", "--interface", &lab.server_if])
            .args(args)
            .stderr(Stdio::null())
            .spawn()?;
        let monitor = Monitor {
            lab,
            child,
            started,
        };
        // The egress classifier on the server's veth, which every setup attaches (the
        // tracepoints' lines, which sort first, say nothing of it).
        let attached = format!(
            "seqwatch_program_attached{{direction=\"egress\",interface=\"{}\",program=\"synack_egress\"}}",
            lab.server_if
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while monitor.metric(&attached).is_none_or(|v| v < 1.0) {
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

    /// CPU time the daemon's threads have used so far.
    fn cpu_time(&self) -> anyhow::Result<Duration> {
        Ok(common::host::cpu_time(self.child.id())?)
    }

    /// Stops the daemon once the round's records are read, and reports its CPU use since
    /// `cpu_before` (the round and that wait), and its programs' run time since they loaded.
    fn stop(mut self, cpu_before: Duration) -> anyhow::Result<(Usage, KernelCost)> {
        thread::sleep(Duration::from_millis(1100)); // one publish tick
        let programs = self.programs()?;
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
        Ok((usage, programs))
    }

    /// Run time and runs of the daemon's programs: those loaded since it started (nothing
    /// else loads programs during a round).
    fn programs(&self) -> anyhow::Result<KernelCost> {
        let mut cost = KernelCost::default();
        for info in aya::programs::loaded_programs() {
            let info = info?;
            if info.loaded_at().is_some_and(|at| at >= self.started) {
                let name = info.name_as_str().unwrap_or("?");
                cost.record(name, info.run_time().as_nanos() as f64, info.run_count());
            }
        }
        Ok(cost)
    }
}

/// The eBPF programs' run time (ns) and runs, by program name, and the connections they
/// served.
#[derive(Clone, Default)]
struct KernelCost {
    programs: BTreeMap<String, (f64, u64)>,
    connections: u64,
}

impl KernelCost {
    fn total_ns(&self) -> f64 {
        self.programs.values().map(|(ns, _)| ns).sum()
    }

    fn record(&mut self, name: &str, ns: f64, runs: u64) {
        let entry = self.programs.entry(name.to_owned()).or_default();
        entry.0 += ns;
        entry.1 += runs;
    }

    fn add(&mut self, round: &KernelCost, connections: u64) {
        for (name, (ns, runs)) in &round.programs {
            self.record(name, *ns, *runs);
        }
        self.connections += connections;
    }
}

impl std::fmt::Display for KernelCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connections = self.connections.max(1) as f64;
        write!(f, "{:.0} ns per connection", self.total_ns() / connections)?;
        for (name, (ns, runs)) in self.programs.iter().filter(|(_, (_, runs))| *runs > 0) {
            let per_run = ns / *runs as f64;
            let per_connection = *runs as f64 / connections;
            write!(f, "; {name} {per_run:.0} ns x {per_connection:.2}")?;
        }
        Ok(())
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
