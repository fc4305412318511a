//! What the tests read about processes and the host: a process's capabilities per thread,
//! where cgroup v2 is mounted, and a cgroup that looks like a container's.

use seqwatch::lab::Lab;
use std::{
    path::PathBuf,
    process::Child,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// A capability set line of /proc/PID/task/TID/status, e.g. `CapEff`, for every thread.
pub fn thread_caps(pid: u32, set: &str) -> Vec<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's threads");
    tasks
        .map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{set}:")))
                .expect("a capability line");
            u64::from_str_radix(line.trim(), 16).unwrap()
        })
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted (this host mixes v1 and v2).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup whose path is a podman container's (`…/libpod-<64 hex>.scope`), under a parent of
/// the test's own, and the processes put in it; on drop, the processes it started are killed
/// and both cgroups removed.
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

    /// Moves a process into the container's cgroup.
    pub fn enter(&self, pid: u32) {
        std::fs::write(self.dirs[1].join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Starts the container's process (a `sleep`) in the lab namespace `ns`: what a runtime's
    /// container init is to the host.
    pub fn start_process_in(&mut self, lab: &Lab, ns: &str) {
        let process = lab.command_in(ns, "sleep").arg("120").spawn().unwrap();
        self.enter(process.id());
        self.started.push(process);
    }

    /// The ID as `podman ps` shows it, and `seqwatch_netns_info` names the container by.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for process in &mut self.started {
            let _ = process.kill();
            let _ = process.wait();
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
