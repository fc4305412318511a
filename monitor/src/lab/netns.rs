//! The two-namespace veth lab: a server and a client network namespace joined by a veth pair,
//! or, routed, each joined to a router namespace between them.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use nix::sched::CloneFlags;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Prefix of every lab namespace name, so leftovers are recognisable.
pub const NAME_PREFIX: &str = "sw";
/// Name of the long-lived lab of `seqwatch lab up` when no `--name` is given.
pub const DEMO_NAME: &str = "sw-demo";

const SERVER_IF: &str = "veth-s";
const CLIENT_IF: &str = "veth-c";
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);
const V4_PREFIX_LEN: u8 = 30;
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5357, 0, 0, 0, 0, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5357, 0, 0, 0, 0, 0, 2);
const V6_PREFIX_LEN: u8 = 64;
/// A routed lab's router: its interfaces towards the server and the client, its addresses on
/// the server's subnets (the server's + 1) and on the client's.
const ROUTER_SERVER_IF: &str = "veth-rs";
const ROUTER_CLIENT_IF: &str = "veth-rc";
const ROUTER_SERVER_SIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);
const ROUTER_SERVER_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5357, 0, 0, 0, 0, 0, 2);
const ROUTER_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 199, 1, 1);
const ROUTER_CLIENT_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5357, 1, 0, 0, 0, 0, 1);
/// A routed lab's client, on its own subnets.
const ROUTED_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 199, 1, 2);
const ROUTED_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5357, 1, 0, 0, 0, 0, 2);

/// How to build a [`Lab`].
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// VLAN id: when set, the addresses go on VLAN sub-interfaces of the veth ends.
    pub vlan: Option<u16>,
    /// A router namespace between server and client ([`Lab::router`]): the server's veth
    /// leads to it, and so does the client's, from a subnet of its own.
    pub routed: bool,
}

/// The router namespace of a routed lab: it forwards between server and client.
#[derive(Debug)]
pub struct Router {
    pub ns: String,
    /// Its veth end towards the server, and towards the client.
    pub server_if: String,
    pub client_if: String,
}

/// A server and a client network namespace joined by a veth pair, with IPv4 and IPv6
/// addresses on each side. Dropping it deletes both namespaces (and with them the veths).
///
/// The interface names are the same in every lab: they live in the lab's own namespaces.
#[derive(Debug)]
pub struct Lab {
    pub server_ns: String,
    pub client_ns: String,
    /// The veth end in `server_ns`.
    pub server_if: String,
    /// The veth end in `client_ns`.
    pub client_if: String,
    pub server_vlan_if: Option<String>,
    pub client_vlan_if: Option<String>,
    pub server_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    pub client_v6: Ipv6Addr,
    /// The router between server and client, in a routed lab.
    pub router: Option<Router>,
    /// Namespaces this lab made (and so deletes on drop).
    created: Vec<String>,
    /// Set by [`Lab::keep`]: leave the namespaces up on drop.
    kept: bool,
}

impl Lab {
    /// Builds a lab with namespace names unique to this process: `sw-<pid>-<n>-s` / `-c`.
    pub fn create(options: &LabOptions) -> anyhow::Result<Lab> {
        static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        Self::create_named(
            &format!("{NAME_PREFIX}-{}-{n}", std::process::id()),
            options,
        )
    }

    /// Builds a lab whose namespaces are `<name>-s` and `<name>-c` (and `<name>-r`, routed).
    /// Fails if any exists. Cleans up what it made if a step fails.
    pub fn create_named(name: &str, options: &LabOptions) -> anyhow::Result<Lab> {
        ensure_root()?;
        if options.routed && options.vlan.is_some() {
            bail!("a routed lab has no VLAN sub-interfaces");
        }
        let (server_ns, client_ns) = namespace_names(name);
        let router = options.routed.then(|| Router {
            ns: router_namespace_name(name),
            server_if: ROUTER_SERVER_IF.to_owned(),
            client_if: ROUTER_CLIENT_IF.to_owned(),
        });
        let router_ns = router.as_ref().map(|router| &router.ns);
        for ns in [&server_ns, &client_ns].into_iter().chain(router_ns) {
            if Self::netns_path(ns).exists() {
                bail!(
                    "network namespace {ns} already exists (a lab left up? `seqwatch lab down --name {name}` removes it)"
                );
            }
        }
        let (server_vlan_if, client_vlan_if) = match options.vlan {
            Some(id) => (
                Some(format!("{SERVER_IF}.{id}")),
                Some(format!("{CLIENT_IF}.{id}")),
            ),
            None => (None, None),
        };
        let (client_v4, client_v6) = if options.routed {
            (ROUTED_CLIENT_V4, ROUTED_CLIENT_V6)
        } else {
            (CLIENT_V4, CLIENT_V6)
        };
        let mut lab = Lab {
            server_ns,
            client_ns,
            server_if: SERVER_IF.to_owned(),
            client_if: CLIENT_IF.to_owned(),
            server_vlan_if,
            client_vlan_if,
            server_v4: SERVER_V4,
            client_v4,
            server_v6: SERVER_V6,
            client_v6,
            router,
            created: Vec::new(),
            kept: false,
        };
        // On error `lab` is dropped here, which deletes the namespaces made so far.
        lab.build(options)
            .with_context(|| format!("building lab {name}"))?;
        Ok(lab)
    }

    fn build(&mut self, options: &LabOptions) -> anyhow::Result<()> {
        for ns in [self.server_ns.clone(), self.client_ns.clone()] {
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            // A new namespace copies IPv4 forwarding from the host's, which a host running
            // containers has on. A forwarding client answers the server's SYN-ACK to a spoofed
            // address with ICMP "net unreachable", on which the server drops the request: the
            // lab's spoofed clients must get no answer.
            run_checked(command_in_netns(&ns, "sysctl").args(["-qw", "net.ipv4.ip_forward=0"]))?;
        }
        if let Some(router) = &self.router {
            let ns = router.ns.clone();
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            return self.build_routed(&ns);
        }
        let (s, c) = (self.server_ns.as_str(), self.client_ns.as_str());
        ip(&[
            "-n", s, "link", "add", SERVER_IF, "type", "veth", "peer", "name", CLIENT_IF, "netns",
            c,
        ])?;
        for (ns, veth) in [(s, SERVER_IF), (c, CLIENT_IF)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", veth, "up"])?;
        }
        let server_addr_if = self.server_vlan_if.as_deref().unwrap_or(SERVER_IF);
        let client_addr_if = self.client_vlan_if.as_deref().unwrap_or(CLIENT_IF);
        if let Some(id) = options.vlan {
            add_vlan(s, SERVER_IF, server_addr_if, id)?;
            add_vlan(c, CLIENT_IF, client_addr_if, id)?;
        }
        add_addresses(s, server_addr_if, SERVER_V4, SERVER_V6)?;
        add_addresses(c, client_addr_if, CLIENT_V4, CLIENT_V6)?;
        Ok(())
    }

    /// Server and client each joined to the router `r`, which forwards between them.
    fn build_routed(&self, r: &str) -> anyhow::Result<()> {
        let (s, c) = (self.server_ns.as_str(), self.client_ns.as_str());
        for (ns, veth, router_veth) in [
            (s, SERVER_IF, ROUTER_SERVER_IF),
            (c, CLIENT_IF, ROUTER_CLIENT_IF),
        ] {
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                router_veth,
                "netns",
                r,
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", veth, "up"])?;
            ip(&["-n", r, "link", "set", router_veth, "up"])?;
        }
        ip(&["-n", r, "link", "set", "lo", "up"])?;
        add_addresses(s, SERVER_IF, SERVER_V4, SERVER_V6)?;
        add_addresses(c, CLIENT_IF, ROUTED_CLIENT_V4, ROUTED_CLIENT_V6)?;
        add_addresses(
            r,
            ROUTER_SERVER_IF,
            ROUTER_SERVER_SIDE_V4,
            ROUTER_SERVER_SIDE_V6,
        )?;
        add_addresses(
            r,
            ROUTER_CLIENT_IF,
            ROUTER_CLIENT_SIDE_V4,
            ROUTER_CLIENT_SIDE_V6,
        )?;
        for (ns, v4, v6) in [
            (s, ROUTER_SERVER_SIDE_V4, ROUTER_SERVER_SIDE_V6),
            (c, ROUTER_CLIENT_SIDE_V4, ROUTER_CLIENT_SIDE_V6),
        ] {
            ip(&["-n", ns, "route", "add", "default", "via", &v4.to_string()])?;
            ip(&[
                "-n",
                ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &v6.to_string(),
            ])?;
        }
        for forwarding in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            run_checked(command_in_netns(r, "sysctl").args(["-qw", forwarding]))?;
        }
        Ok(())
    }

    /// The namespace's bind mount, as `ip netns` makes it: `/run/netns/<ns>`.
    pub fn netns_path(ns: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(ns)
    }

    /// `nsenter --net=/run/netns/<ns> <program>`; add arguments to the returned command.
    /// (Not `ip netns exec`: it also makes a mount namespace and remounts /sys there; this
    /// enters the network namespace only, and the program sees the caller's file system.)
    pub fn command_in(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        command_in_netns(ns, program)
    }

    /// Runs `f` on a thread that has entered the network namespace `ns`, and returns its
    /// result. A panic in `f` (or failing to enter `ns`) is propagated to the caller.
    pub fn run_in<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = Self::netns_path(ns);
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                enter_netns(&path).unwrap_or_else(|e| panic!("{e:#}"));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Leaves the namespaces up when the lab is dropped (`seqwatch lab up`).
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// Deletes the namespaces of the lab called `name` (see [`Lab::create_named`]).
    /// Errors if neither exists.
    pub fn destroy_named(name: &str) -> anyhow::Result<()> {
        ensure_root()?;
        let (server_ns, client_ns) = namespace_names(name);
        let existing: Vec<String> = [server_ns, client_ns, router_namespace_name(name)]
            .into_iter()
            .filter(|ns| Self::netns_path(ns).exists())
            .collect();
        if existing.is_empty() {
            bail!("no lab called {name}: neither {name}-s nor {name}-c exists");
        }
        for ns in existing {
            ip(&["netns", "del", &ns])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for ns in &self.created {
            if let Err(e) = ip(&["netns", "del", ns]) {
                log::error!("could not delete lab namespace {ns}: {e:#}");
            }
        }
    }
}

/// Deletes namespaces `<prefix>-<pid>-...` left behind by processes that no longer run
/// (e.g. a test run that was killed). Returns the names it deleted.
pub fn cleanup_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("reading {NETNS_DIR}")),
    };
    let mut deleted = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name, prefix) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            ip(&["netns", "del", &name])?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// The pid in a namespace name made by [`Lab::create`]: `<prefix>-<pid>-<n>-<s|c|r>`.
fn owner_pid(ns: &str, prefix: &str) -> Option<u32> {
    let rest = ns.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    let _counter: u32 = parts.next()?.parse().ok()?;
    matches!(parts.next(), Some("s" | "c" | "r"))
        .then_some(pid)
        .filter(|_| parts.next().is_none())
}

fn namespace_names(name: &str) -> (String, String) {
    (format!("{name}-s"), format!("{name}-c"))
}

fn router_namespace_name(name: &str) -> String {
    format!("{name}-r")
}

/// `nsenter --net=/run/netns/<ns> <program>`, for callers without a [`Lab`].
pub fn command_in_netns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut net = std::ffi::OsString::from("--net=");
    net.push(Lab::netns_path(ns));
    let mut command = Command::new("nsenter");
    command.arg(net).arg(program);
    command
}

/// Moves the calling thread (only) into the network namespace bind-mounted at `path`.
pub(crate) fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}

pub(crate) fn ensure_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the lab needs root (it creates network namespaces and raw sockets): run it with sudo"
        );
    }
    Ok(())
}

fn add_vlan(ns: &str, parent: &str, vlan_if: &str, id: u16) -> anyhow::Result<()> {
    let id = id.to_string();
    ip(&[
        "-n", ns, "link", "add", "link", parent, "name", vlan_if, "type", "vlan", "id", &id,
    ])
    .context("creating a VLAN sub-interface (the kernel needs CONFIG_VLAN_8021Q)")?;
    ip(&["-n", ns, "link", "set", vlan_if, "up"])
}

/// `nodad`: the IPv6 address is usable at once instead of after duplicate address detection.
fn add_addresses(ns: &str, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> anyhow::Result<()> {
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{v4}/{V4_PREFIX_LEN}"),
        "dev",
        dev,
    ])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{v6}/{V6_PREFIX_LEN}"),
        "dev",
        dev,
        "nodad",
    ])
}

/// Runs `ip ARGS`, turning a failure into an error carrying its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_checked(Command::new("ip").args(args))
}

pub(crate) fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_lab_names() {
        assert_eq!(owner_pid("sw-1234-0-s", "sw"), Some(1234));
        assert_eq!(owner_pid("sw-1234-17-c", "sw"), Some(1234));
        assert_eq!(owner_pid("sw-1234-2-r", "sw"), Some(1234));
        assert_eq!(owner_pid("sw-demo-s", "sw"), None);
        assert_eq!(owner_pid("sw-1234-0-x", "sw"), None);
        assert_eq!(owner_pid("sw-1234-0-s-extra", "sw"), None);
        assert_eq!(owner_pid("other-1234-0-s", "sw"), None);
    }
}
