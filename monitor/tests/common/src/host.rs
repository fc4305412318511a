//! What the tests read about processes and the host: a process's capabilities per thread, its
//! resident memory and CPU time, and where cgroup v2 is mounted.

use std::{path::PathBuf, time::Duration};

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

/// The resident set size of process `pid` (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

/// CPU time process `pid`'s threads have used so far, to the nanosecond: the first field of
/// each thread's /proc/PID/task/TID/schedstat (/proc/PID/stat counts 10 ms ticks, too coarse
/// for a few percent of a CPU over seconds).
pub fn cpu_time(pid: u32) -> std::io::Result<Duration> {
    let mut total_ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let on_cpu = schedstat.split_whitespace().next().unwrap_or_default();
        total_ns += on_cpu.parse::<u64>().map_err(std::io::Error::other)?;
    }
    Ok(Duration::from_nanos(total_ns))
}
