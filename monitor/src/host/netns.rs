//! The host's network namespaces, from the kernel only (no container runtime's API): the
//! namespace of every process (`/proc/PID/ns/net`) and the bind mounts of `/run/netns`, each
//! known by its nsfs inode number, which is unique while the namespace lives. Per namespace: a
//! socket opened inside it ([`run_in`]), and who it belongs to, from the cgroup of a
//! process in it ([`identify`]).

use std::{
    collections::BTreeMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};
use serde::Serialize;

/// Processes whose namespace is read in one scan; beyond it the rest of /proc is not looked at.
const MAX_PROCESSES: usize = 65_536;
/// Processes remembered per namespace, to find its owner's cgroup from.
const MAX_PIDS_PER_NAMESPACE: usize = 8;
/// Where `ip netns add` (and some container runtimes) bind-mount named namespaces.
pub const NAMED_NAMESPACES: &str = "/run/netns";

/// A network namespace as the kernel numbers it: its nsfs inode.
pub type NetnsInode = u64;

/// Where a namespace was seen: a path that opens it, and some of its processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub path: PathBuf,
    pub pids: Vec<u32>,
}

/// This process's own network namespace.
pub fn own() -> std::io::Result<NetnsInode> {
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

/// Every network namespace with a process in it or a bind mount in /run/netns, but `own`.
pub fn scan(own: NetnsInode) -> BTreeMap<NetnsInode, Seen> {
    let mut found: BTreeMap<NetnsInode, Seen> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        let pids = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .take(MAX_PROCESSES);
        for pid in pids {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            // Not readable: the process is gone, or belongs to another user without
            // CAP_SYS_PTRACE.
            let Some(inode) = std::fs::read_link(&path).ok().and_then(|t| link_inode(&t)) else {
                continue;
            };
            let seen = found.entry(inode).or_insert_with(|| Seen {
                path,
                pids: Vec::new(),
            });
            if seen.pids.len() < MAX_PIDS_PER_NAMESPACE {
                seen.pids.push(pid);
            }
        }
    }
    for (inode, path) in named_namespaces() {
        // A bind mount outlives any process, and its path does not move to another namespace.
        found.entry(inode).or_default().path = path;
    }
    found.remove(&own);
    found
}

/// `net:[4026531840]` → 4026531840.
fn link_inode(target: &Path) -> Option<NetnsInode> {
    target
        .to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The namespaces bind-mounted in /run/netns (`ip netns add`); a file there that is not a
/// namespace (a mount that failed) is not on nsfs, so its device differs from ours.
fn named_namespaces() -> Vec<(NetnsInode, PathBuf)> {
    let Ok(nsfs) = std::fs::metadata("/proc/self/ns/net").map(|meta| meta.dev()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(NAMED_NAMESPACES) else {
        return Vec::new();
    };
    entries
        .flatten()
        .take(MAX_PROCESSES)
        .filter_map(|entry| {
            let meta = std::fs::metadata(entry.path()).ok()?;
            (meta.dev() == nsfs).then(|| (meta.ino(), entry.path()))
        })
        .collect()
}

/// A handle on the network namespace `inode`, opened at `path`; it keeps the namespace alive
/// while open. Fails if `path` is now another namespace (a pid reused).
pub fn open(path: &Path, inode: NetnsInode) -> anyhow::Result<File> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if file.metadata()?.ino() != inode {
        bail!("{} is no longer network namespace {inode}", path.display());
    }
    Ok(file)
}

/// Runs `f` on a short-lived thread that enters `namespace` (setns(2): CAP_SYS_ADMIN) and ends.
/// What `f` opens there (a sock_diag socket, a file of /proc/thread-self/net) keeps reading
/// that namespace for as long as it is open, and keeps the namespace alive: close it once the
/// namespace is gone.
pub fn run_in<T: Send>(
    namespace: &File,
    inode: NetnsInode,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(namespace, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {inode}"))?;
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A namespace other than the daemon's, as the JSON API and the event log name it: its inode,
/// then its identity's fields (`null` where unknown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetnsReport {
    pub inode: NetnsInode,
    #[serde(flatten)]
    pub identity: Identity,
}

impl NetnsReport {
    pub fn new(inode: NetnsInode, identity: &Identity) -> NetnsReport {
        let identity = identity.clone();
        NetnsReport { inode, identity }
    }
}

/// Who a namespace belongs to: IDs from its processes' cgroup paths ([`identify`]), names from
/// the container runtimes' state files ([`super::runtime_names`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// A container's ID, its first 12 hex digits (as `docker ps` and `podman ps` show it).
    pub container: Option<String>,
    /// The same ID in full (64 hex digits), as the runtimes' state files key it.
    #[serde(skip)]
    pub full_container_id: Option<String>,
    /// The container's name (Docker's, podman's, or a pod's only container's).
    pub container_name: Option<String>,
    /// A Kubernetes pod's UID.
    pub pod: Option<String>,
    /// The pod's name.
    pub pod_name: Option<String>,
    /// The pod's Kubernetes namespace.
    pub namespace: Option<String>,
}

impl Identity {
    /// Whether the cgroups named neither a container nor a pod.
    pub fn is_unknown(&self) -> bool {
        self.container.is_none() && self.pod.is_none()
    }

    /// The values of `seqwatch_netns_info`'s `container`, `pod` and `namespace` labels: the
    /// names where known, else the IDs, else empty.
    pub fn label_values(&self) -> [&str; 3] {
        let container = self.container_name.as_deref().or(self.container.as_deref());
        let pod = self.pod_name.as_deref().or(self.pod.as_deref());
        [
            container.unwrap_or_default(),
            pod.unwrap_or_default(),
            self.namespace.as_deref().unwrap_or_default(),
        ]
    }
}

/// Length of a short container ID.
const SHORT_ID: usize = 12;

/// The identity of the first of `pids` whose cgroup names a container or a pod.
pub fn identify(pids: &[u32]) -> Identity {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
        .flat_map(|text| {
            // `ID:CONTROLLERS:PATH`: the one line `0::PATH` of cgroup v2, and on a hybrid host
            // one per v1 hierarchy too, where some runtimes put their containers.
            text.lines()
                .filter_map(|line| line.splitn(3, ':').nth(2))
                .map(identity_of_cgroup)
                .collect::<Vec<_>>()
        })
        .find(|identity| !identity.is_unknown())
        .unwrap_or_default()
}

/// Recognises the container runtimes' cgroup paths: podman (`libpod-<id>.scope`, and
/// `libpod-<id>` with its cgroupfs manager), Docker (`docker-<id>.scope`, `/docker/<id>`),
/// containerd and CRI-O (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `<id>` in a pod's
/// cgroup), and Kubernetes pods (`kubepods…pod<uid>…`, the systemd driver writing the UID's
/// dashes as underscores).
pub fn identity_of_cgroup(path: &str) -> Identity {
    let mut identity = Identity::default();
    let mut after_docker_or_pod = false;
    for segment in path.split('/') {
        let prefixed = ["libpod-", "docker-", "cri-containerd-", "crio-"]
            .iter()
            .find_map(|prefix| segment.strip_prefix(prefix));
        let prefixed = prefixed.map(|rest| rest.strip_suffix(".scope").unwrap_or(rest));
        let id = prefixed.or(after_docker_or_pod.then_some(segment));
        if let Some(id) = id.filter(|id| is_container_id(id)) {
            identity.container = Some(id[..SHORT_ID].to_owned());
            identity.full_container_id = Some(id.to_owned());
        }
        let pod_segment = segment.starts_with("kubepods")
            || (path.contains("/kubepods") && segment.starts_with("pod"));
        let uid = pod_segment.then(|| pod_uid(segment)).flatten();
        after_docker_or_pod = segment == "docker" || uid.is_some();
        if let Some(uid) = uid {
            identity.pod = Some(uid);
        }
    }
    identity
}

/// A full container ID: 64 lowercase hex digits.
pub fn is_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `kubepods-besteffort-pod<uid>.slice` (`_` for `-`) or `pod<uid>` → the pod's UID.
fn pod_uid(segment: &str) -> Option<String> {
    // The last "pod": "kubepods" holds one too, a UID (hex digits) none.
    let start = segment.rfind("pod")? + "pod".len();
    let rest = segment[start..]
        .strip_suffix(".slice")
        .unwrap_or(&segment[start..]);
    let uid = rest.replace('_', "-");
    let valid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{interface_addresses::AddressSocket, sock_diag::DiagSocket};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const POD: &str = "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718";

    fn container(path: &str) -> Option<String> {
        identity_of_cgroup(path).container
    }

    #[test]
    fn container_runtimes_cgroup_paths_give_the_short_container_id() {
        for path in [
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/system.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container(&path).as_deref(), Some("0123456789ab"), "{path}");
        }
        for path in [
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/docker.service",
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/system.slice/docker-{}.scope", &ID[..63]),
            "/docker/NOT-A-CONTAINER-ID",
        ] {
            assert_eq!(container(path), None, "{path}");
        }
    }

    #[test]
    fn kubernetes_pod_cgroups_give_the_pod_uid_with_either_driver() {
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/\
             cri-containerd-{ID}.scope",
            POD.replace('-', "_")
        );
        let cgroupfs = format!("/kubepods/burstable/pod{POD}/{ID}");
        for path in [systemd, cgroupfs] {
            let identity = identity_of_cgroup(&path);
            assert_eq!(identity.pod.as_deref(), Some(POD), "{path}");
            assert_eq!(
                identity.container.as_deref(),
                Some("0123456789ab"),
                "{path}"
            );
            assert_eq!(identity.full_container_id.as_deref(), Some(ID), "{path}");
        }
        assert_eq!(identity_of_cgroup("/podman.slice/pod-x").pod, None);
    }

    #[test]
    fn a_scan_finds_a_new_namespace_by_its_bind_mount_and_never_our_own() {
        let own = own().unwrap();
        let name = format!("sw-nsscan-{}", std::process::id());
        let add = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(add.success());
        let path = Path::new(NAMED_NAMESPACES).join(&name);
        let inode = std::fs::metadata(&path).unwrap().ino();
        let found = scan(own);
        let socket = open(&path, inode)
            .and_then(|namespace| {
                let open_both = || Ok((DiagSocket::open()?, AddressSocket::open()?));
                run_in(&namespace, inode, open_both)
            })
            .map(|(socket, addresses)| (socket.dump_tcp(), addresses.dump()));
        let wrong = open(&path, own).is_err();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        assert_eq!(found.get(&inode).map(|seen| &seen.path), Some(&path));
        assert!(!found.contains_key(&own));
        assert!(wrong, "a path that is another namespace is refused");
        // A fresh namespace has no TCP socket at all, and its loopback is down: no address.
        let (socket, addresses) = socket.unwrap();
        assert_eq!(socket.unwrap(), []);
        assert_eq!(addresses.unwrap(), Vec::<std::net::IpAddr>::new());
        assert!(!scan(own).contains_key(&inode), "gone once deleted");
    }
}
