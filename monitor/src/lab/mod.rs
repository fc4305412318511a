//! The veth lab and the weak ISN responder: `seqwatch lab ...`, and the API tests use.

mod crafter;
mod generators;
mod netns;
mod responder;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{setsockopt, sockopt};

pub use crafter::{Crafter, Segment, flags};
pub use generators::{
    ClibLcg, ClockMix, FourTuple, GeneratorKind, IsnGenerator, Prng, PrngPreset, RandComposition,
};
pub use netns::{DEMO_NAME, Lab, LabOptions, NAME_PREFIX, Router, cleanup_stale, command_in_netns};
pub use responder::{Responder, ResponderConfig, SentSynAck};

/// Arguments of `seqwatch lab`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example (the README demo):
  seqwatch lab up
  seqwatch lab responder --netns sw-demo-s --interface veth-s --port 8080 --generator step64k &
  seqwatch lab connect --netns sw-demo-c --to 10.199.0.1:8080 --count 200 --rate 50
  seqwatch lab down")]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build a lab (namespaces <NAME>-s and <NAME>-c joined by a veth) and leave it up.
    #[command(after_help = "Example: seqwatch lab up --name sw-demo")]
    Up {
        #[arg(long, default_value = DEMO_NAME)]
        name: String,
        /// Put the addresses on VLAN sub-interfaces with this id (needs CONFIG_VLAN_8021Q).
        #[arg(long)]
        vlan: Option<u16>,
    },
    /// Delete a lab made by `seqwatch lab up`.
    Down {
        #[arg(long, default_value = DEMO_NAME)]
        name: String,
    },
    /// Delete lab namespaces left behind by processes that have exited (e.g. killed tests).
    Cleanup,
    /// Answer SYNs to PORT with SYN-ACKs whose ISNs come from GENERATOR, until SIGINT/SIGTERM.
    #[command(after_help = "Example: seqwatch lab responder --netns sw-demo-s \
                            --interface veth-s --port 8080 --generator clock250k --record isns.jsonl")]
    Responder {
        /// Network namespace to run in (/run/netns/NETNS).
        #[arg(long, default_value = "sw-demo-s")]
        netns: String,
        #[arg(long, default_value = "veth-s")]
        interface: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// constant, step64k, clock250k, small-random, uniform, pool, rfc6528, xorshift128,
        /// lfsr32, lcg, msvc-rand, java-random, glibc-random or picotcp.
        #[arg(long)]
        generator: GeneratorKind,
        /// Seed of the generator (random when not given).
        #[arg(long)]
        seed: Option<u64>,
        /// Append one JSON line per SYN-ACK sent to this file.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Open COUNT TCP connections from a namespace, closing each at once.
    #[command(after_help = "Example: seqwatch lab connect --netns sw-demo-c \
                            --to 10.199.0.1:8080 --count 100 --rate 20")]
    Connect {
        #[arg(long, default_value = "sw-demo-c")]
        netns: String,
        /// Address and port to connect to, e.g. 10.199.0.1:8080 or [fd00:5357::1]:8080.
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// Connections per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
    },
}

/// How long one connection attempt of `seqwatch lab connect` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up { name, vlan } => up(&name, vlan),
        LabCommand::Down { name } => Lab::destroy_named(&name),
        LabCommand::Cleanup => {
            for ns in cleanup_stale(NAME_PREFIX)? {
                println!("deleted {ns}");
            }
            Ok(())
        }
        LabCommand::Responder {
            netns,
            interface,
            port,
            generator,
            seed,
            record,
        } => {
            let config = ResponderConfig {
                interface,
                port,
                generator,
                seed: seed.unwrap_or_else(rand::random),
                record,
            };
            respond_until_signalled(&netns, config)
        }
        LabCommand::Connect {
            netns,
            to,
            count,
            rate,
        } => connect(&netns, to, count, rate),
    }
}

fn up(name: &str, vlan: Option<u16>) -> anyhow::Result<()> {
    let options = LabOptions {
        vlan,
        ..LabOptions::default()
    };
    let lab = Lab::create_named(name, &options)?;
    let server_if = lab.server_vlan_if.as_ref().unwrap_or(&lab.server_if);
    let client_if = lab.client_vlan_if.as_ref().unwrap_or(&lab.client_if);
    println!(
        "server: netns {} interface {server_if} addresses {} {}",
        lab.server_ns, lab.server_v4, lab.server_v6
    );
    println!(
        "client: netns {} interface {client_if} addresses {} {}",
        lab.client_ns, lab.client_v4, lab.client_v6
    );
    println!("remove it with: seqwatch lab down --name {name}");
    lab.keep();
    Ok(())
}

fn respond_until_signalled(netns: &str, config: ResponderConfig) -> anyhow::Result<()> {
    // Blocked before the responder thread starts, so that it inherits the mask and the
    // signals wait for `wait()` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    log::info!(
        "answering SYNs to port {} on {} in {netns} with {} ISNs (seed {})",
        config.port,
        config.interface,
        config.generator,
        config.seed
    );
    let responder = Responder::spawn_in_netns(netns, config)?;
    let signal = signals.wait()?;
    let sent = responder.stop()?;
    log::info!("{signal}: stopped after {} SYN-ACKs", sent.len());
    Ok(())
}

fn connect(netns: &str, to: SocketAddr, count: u32, rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0, "--rate must be positive");
    netns::enter_netns(&Lab::netns_path(netns))?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
            // Close with a RST: a weak responder never answers the FIN.
            Ok(stream) => setsockopt(
                &stream,
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .context("setting SO_LINGER")?,
            Err(e) => {
                log::warn!("connecting to {to}: {e}");
                failed += 1;
            }
        }
        std::thread::sleep(interval);
    }
    println!(
        "{} of {count} connections to {to} completed",
        count - failed
    );
    anyhow::ensure!(failed == 0, "{failed} of {count} connections failed");
    Ok(())
}
