//! `./x bench`: the benchmarks, each printing its own side-by-side numbers.

use crate::{cargo, step};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Alternating rounds per side in the connection-rate benchmark.
    #[arg(long, default_value_t = 7)]
    rounds: u32,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // SAFETY: single-threaded at this point; the variable is read by the bench process.
    unsafe { std::env::set_var("SEQWATCH_BENCH_ROUNDS", args.rounds.to_string()) };
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
    ] {
        step(what);
        cargo(&["bench", "--package", "seqwatch", "--bench", bench])?;
    }
    Ok(())
}
