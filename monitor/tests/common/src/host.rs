//! What the tests read about processes and the host: a process's capabilities per thread, and
//! where cgroup v2 is mounted.

use std::path::PathBuf;

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
