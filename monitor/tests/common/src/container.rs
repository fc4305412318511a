//! Containers as the host sees them, made of real parts: a network namespace with one process
//! in a cgroup whose path is a podman container's (`libpod-<64 hex>.scope`) (or such a cgroup
//! and process for a namespace the test has), and many idle namespaces with a listener each. Needs root (and a cgroup2 mount for the first); all removed
//! on drop.

use std::{
    io::Write as _,
    net::TcpListener,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use seqwatch::lab::Lab;

use crate::host::cgroup2_mount;

/// A network namespace with one process in a podman-like cgroup; all removed on drop.
pub struct Container {
    pub ns: String,
    cgroup: ContainerCgroup,
    /// The full container ID.
    pub id: String,
}

impl Container {
    pub fn create() -> Container {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = format!("sw-{}-{n}-k", std::process::id());
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let mut cgroup = ContainerCgroup::create();
        cgroup.start_process_in(&ns);
        let id = cgroup.id.clone();
        Container { ns, cgroup, id }
    }

    pub fn inode(&self) -> u64 {
        std::fs::metadata(Lab::netns_path(&self.ns)).unwrap().ino()
    }

    /// What a container's end looks like to the host: its processes exit, its namespace goes.
    pub fn stop(&mut self) {
        self.cgroup.stop_processes();
        if Lab::netns_path(&self.ns).exists() {
            ip(&["netns", "del", &self.ns]);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cgroup whose path is a podman container's (`…/libpod-<64 hex>.scope`), under a parent of
/// the test's own, and the processes it starts in it; on drop, those are killed and both
/// cgroups removed.
pub struct ContainerCgroup {
    /// The test's cgroup and, inside it, the container's.
    dirs: [PathBuf; 2],
    /// The full container ID.
    pub id: String,
    started: Vec<Child>,
}

impl ContainerCgroup {
    pub fn create() -> ContainerCgroup {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let id = format!("{:016x}{pid:016x}{nanos:032x}", nanos as u64);
        let parent = cgroup2_mount().join(format!("seqwatch-test-{pid}-{n}"));
        let scope = parent.join(format!("libpod-{id}.scope"));
        let cgroup = ContainerCgroup {
            dirs: [parent, scope],
            id,
            started: Vec::new(),
        };
        for dir in &cgroup.dirs {
            std::fs::create_dir(dir).unwrap();
        }
        cgroup
    }

    /// Starts the container's process (a `sleep`) in the network namespace `ns`, in the
    /// container's cgroup: what a runtime's container init is to the host.
    pub fn start_process_in(&mut self, ns: &str) {
        let process = Command::new("nsenter")
            .arg(format!("--net={}", Lab::netns_path(ns).display()))
            .args(["sleep", "120"])
            .spawn()
            .unwrap();
        let procs = self.dirs[1].join("cgroup.procs");
        std::fs::write(procs, process.id().to_string()).unwrap();
        self.started.push(process);
    }

    /// The ID as `podman ps` shows it, and `seqwatch_netns_info` names the container by.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    fn stop_processes(&mut self) {
        for mut process in self.started.drain(..) {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        self.stop_processes();
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}: {status}");
}

/// Many network namespaces (bind-mounted, without processes), each with a listener on
/// `0.0.0.0:port` that this process holds: a host of idle containers, as cheaply as `ip` makes
/// them. All deleted on drop.
pub struct ListeningNamespaces {
    pub names: Vec<String>,
    _listeners: Vec<TcpListener>,
}

impl ListeningNamespaces {
    pub fn create(lab: &Lab, count: usize, port: u16) -> ListeningNamespaces {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let batch = NEXT.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = (0..count)
            .map(|n| format!("sw-{}-{batch}-{n}-m", std::process::id()))
            .collect();
        let mut namespaces = ListeningNamespaces {
            names,
            _listeners: Vec::new(),
        };
        ip_batch(
            namespaces
                .names
                .iter()
                .map(|name| format!("netns add {name}")),
        );
        for name in &namespaces.names {
            assert!(Lab::netns_path(name).exists(), "ip netns add {name} failed");
            let listener = lab.run_in(name, || TcpListener::bind(("0.0.0.0", port)));
            namespaces._listeners.push(listener.unwrap());
        }
        namespaces
    }
}

impl Drop for ListeningNamespaces {
    fn drop(&mut self) {
        ip_batch(self.names.iter().map(|name| format!("netns del {name}")));
    }
}

/// One `ip -batch` for many commands; its errors are seen by what follows.
fn ip_batch(commands: impl Iterator<Item = String>) {
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for command in commands {
        writeln!(stdin, "{command}").unwrap();
    }
    drop(stdin);
    let _ = child.wait();
}
