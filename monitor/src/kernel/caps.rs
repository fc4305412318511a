//! What the daemon needs from the host: capabilities and kernel features, checked before
//! anything is loaded so that a missing one is a clear message rather than a raw EPERM, and
//! the capabilities dropped once the programs are loaded and attached.

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::util::KernelVersion;
use caps::{CapSet, Capability, CapsHashSet};

use super::{btf::VMLINUX_BTF, loader::AttachMode};

/// Loading the classifiers needs CAP_BPF (bpf(), maps) and CAP_NET_ADMIN (networking program
/// types, tc); CAP_PERFMON lets the verifier accept what privileged programs may do (pointer
/// arithmetic, speculation checks relaxed), and load and attach the BTF tracepoint programs.
/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
pub const REQUIRED: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_PERFMON,
];

/// Kept after the first attach, for interfaces that appear later and for taking attachments
/// back: attaching a loaded program (a tcx link, or a clsact qdisc and filter) needs only
/// CAP_NET_ADMIN and the program's fd; reading maps and the ring buffer needs only their fds.
pub const KEPT_AFTER_ATTACH: [Capability; 1] = [Capability::CAP_NET_ADMIN];

/// Kept as well with `--netns all`, to follow namespaces as they come: entering one to open a
/// socket there (setns(2)) needs CAP_SYS_ADMIN; reading which namespace a process is in
/// (`/proc/PID/ns/net`) needs CAP_SYS_PTRACE if it is another user's or holds a capability the
/// daemon lacks (most containers' processes do).
pub const KEPT_FOR_OTHER_NAMESPACES: [Capability; 2] =
    [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE];

/// Fails, naming them, if the effective capabilities lack any the loader needs.
pub fn require_privileges() -> anyhow::Result<()> {
    let effective =
        caps::read(None, CapSet::Effective).context("reading this process's capabilities")?;
    let sys_admin = effective.contains(&Capability::CAP_SYS_ADMIN);
    let missing: Vec<String> = REQUIRED
        .into_iter()
        .filter(|cap| !effective.contains(cap))
        .filter(|cap| !(sys_admin && *cap != Capability::CAP_NET_ADMIN))
        .map(|cap| cap.to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "seqwatch run needs root or the capabilities CAP_BPF, CAP_NET_ADMIN and \
             CAP_PERFMON; missing: {} (run it as root, or as a service with \
             packaging/seqwatch.service, which grants exactly these)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Drops every capability but [`KEPT_AFTER_ATTACH`] (and, to follow `other_namespaces`,
/// [`KEPT_FOR_OTHER_NAMESPACES`]) from this thread's effective, permitted and inheritable
/// sets, clears the ambient set, and shrinks the bounding set when allowed to (CAP_SETPCAP;
/// under systemd the unit's CapabilityBoundingSet already did). Threads started afterwards
/// inherit the reduced sets, so call it before any other thread exists.
pub fn drop_after_attach(other_namespaces: bool) -> anyhow::Result<()> {
    let mut kept: CapsHashSet = KEPT_AFTER_ATTACH.into_iter().collect();
    let permitted = caps::read(None, CapSet::Permitted)?;
    if other_namespaces {
        kept.extend(KEPT_FOR_OTHER_NAMESPACES);
        let missing: Vec<String> = KEPT_FOR_OTHER_NAMESPACES
            .iter()
            .filter(|cap| !permitted.contains(cap))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            log::warn!(
                "--netns all without {}: other network namespaces cannot be entered without \
                 CAP_SYS_ADMIN, nor found through most containers' processes without \
                 CAP_SYS_PTRACE (docs/deploy.md)",
                missing.join(", ")
            );
        }
    }
    let keep: CapsHashSet = permitted.intersection(&kept).copied().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)?.difference(&kept) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("reducing the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("reducing the permitted capabilities")?;
    Ok(())
}

/// Kernel features the programs depend on.
#[derive(Debug)]
pub struct KernelFeatures {
    pub release: String,
    pub btf: bool,
    pub tcx: bool,
}

impl KernelFeatures {
    pub fn detect() -> KernelFeatures {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        KernelFeatures {
            release,
            btf: Path::new(VMLINUX_BTF).exists(),
            // tcx arrived in Linux 6.6.
            tcx: KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)),
        }
    }

    /// Fails with what is missing and what to do about it.
    pub fn require(&self, mode: AttachMode) -> anyhow::Result<()> {
        if !self.btf {
            bail!(
                "kernel {} has no BTF ({VMLINUX_BTF} is missing): seqwatch needs a kernel \
                 built with CONFIG_DEBUG_INFO_BTF=y",
                self.release
            );
        }
        if mode == AttachMode::Tcx && !self.tcx {
            bail!(
                "--attach-mode tcx needs Linux 6.6 or later (this is {}): use \
                 --attach-mode auto or netlink",
                self.release
            );
        }
        Ok(())
    }
}
