//! `./x bench`: the benchmarks, each printing its own side-by-side numbers.

use crate::{cargo, step};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Alternating rounds per side in the connection-rate benchmark.
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    /// Also report the eBPF programs' own run time per connection (the kernel's statistics,
    /// which slow every program run a little, so the rates come out a few per cent lower).
    #[arg(long)]
    kernel_stats: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // SAFETY: single-threaded at this point; the variable is read by the bench process.
    unsafe { std::env::set_var("SEQWATCH_BENCH_ROUNDS", args.rounds.to_string()) };
    if args.kernel_stats {
        // SAFETY: as above.
        unsafe { std::env::set_var("SEQWATCH_BENCH_KERNEL_STATS", "1") };
    }
    for (bench, what) in [
        (
            "classifier",
            "per-packet cost of the classifier (BPF_PROG_TEST_RUN)",
        ),
        (
            "connections",
            "connection rate through the veth lab, with and without the monitor",
        ),
        ("scorer", "scorer ingest rate, and analyze against tcpdump"),
        (
            "netns",
            "CPU and memory beside 100 namespaces, --netns all against self",
        ),
    ] {
        step(what);
        cargo(&["bench", "--package", "seqwatch", "--bench", bench])?;
    }
    Ok(())
}
