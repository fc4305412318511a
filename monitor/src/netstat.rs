//! Reads `/proc/net/netstat` (TcpExt) of this network namespace.

use std::collections::HashMap;

/// Parses the `Prefix: names…` / `Prefix: values…` line pairs of /proc/net/netstat.
pub fn parse(text: &str) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((prefix, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                counters.insert(format!("{prefix}{name}"), value);
            }
        }
    }
    counters
}

fn syncookies_sent() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    parse(&text).get("TcpExtSyncookiesSent").copied()
}

/// Tells whether the host sent SYN cookies since the previous poll: SYN-ACKs seen then may
/// be cookies, and the scorer says so.
pub struct SyncookieWatch {
    last: Option<u64>,
    active: bool,
}

impl SyncookieWatch {
    /// Starts watching from the counter's current value.
    pub fn start() -> Self {
        SyncookieWatch {
            last: syncookies_sent(),
            active: false,
        }
    }

    pub fn poll(&mut self) {
        let now = syncookies_sent();
        self.active = matches!((self.last, now), (Some(before), Some(after)) if after > before);
        self.last = now;
    }

    pub fn active(&self) -> bool {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_names_with_values_per_prefix() {
        let text =
            "TcpExt: SyncookiesSent SyncookiesRecv\nTcpExt: 7 3\nIpExt: InOctets\nIpExt: 99\n";
        let counters = parse(text);
        assert_eq!(counters["TcpExtSyncookiesSent"], 7);
        assert_eq!(counters["TcpExtSyncookiesRecv"], 3);
        assert_eq!(counters["IpExtInOctets"], 99);
    }

    #[test]
    fn reads_this_hosts_netstat() {
        assert!(syncookies_sent().is_some(), "TcpExt SyncookiesSent missing");
    }
}
