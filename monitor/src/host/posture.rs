//! Hardening posture: the sysctls that matter against ISN prediction and spoofing, handshake
//! abuse and local starvation, each judged against a recommendation. `seqwatch posture` prints
//! them; the daemon exports `seqwatch_posture_check{check,scope}` (1 as recommended, 0 not,
//! absent when unreadable), refreshed every minute.
//!
//! Most checks read per-namespace sysctls, so they describe the network namespace the reader
//! runs in; `kernel.*` and `net.core.bpf_*` are host-wide (and `net.core.bpf_*` exist only in
//! the host's initial namespace). With `--netns all` the per-namespace checks of each other
//! namespace followed are exported too, as `seqwatch_netns_posture_check{netns,check,scope}`
//! ([`NetnsPosture`]).

use std::{
    collections::HashSet,
    io,
    process::ExitCode,
    time::{Duration, Instant},
};

use prometheus::IntGaugeVec;
use serde::Serialize;

/// Where a sysctl applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Per network namespace: what the namespace the reader runs in has.
    Netns,
    /// The whole host, whatever the namespace.
    Host,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Netns => "netns",
            Scope::Host => "host",
        }
    }
}

/// One sysctl a check reads, and how its value is labelled when a check reads several.
struct Sysctl {
    name: &'static str,
    label: &'static str,
}

const fn sysctl(name: &'static str) -> Sysctl {
    Sysctl { name, label: "" }
}

const fn labelled(name: &'static str, label: &'static str) -> Sysctl {
    Sysctl { name, label }
}

/// What the numbers of a check's sysctls (in order) must satisfy.
#[derive(Debug)]
enum Rule {
    /// Every number equals this.
    Equals(i64),
    /// Every number is at least this.
    AtLeast(i64),
    /// Every number is at most this.
    AtMost(i64),
    /// The largest number equals this (rp_filter: an interface gets max(all, its own)).
    MaxEquals(i64),
    /// The first number is at least the second.
    FirstAtLeastSecond,
    /// Two numbers `low high` span at least this many values.
    RangeAtLeast(i64),
}

impl Rule {
    fn holds(&self, numbers: &[i64]) -> Result<bool, String> {
        let pair = || match numbers {
            &[first, second] => Ok((first, second)),
            _ => Err(format!("expected two numbers, read {numbers:?}")),
        };
        Ok(match *self {
            Rule::Equals(want) => numbers.iter().all(|&n| n == want),
            Rule::AtLeast(min) => numbers.iter().all(|&n| n >= min),
            Rule::AtMost(max) => numbers.iter().all(|&n| n <= max),
            Rule::MaxEquals(want) => numbers.iter().max() == Some(&want),
            Rule::FirstAtLeastSecond => {
                let (first, second) = pair()?;
                first >= second
            }
            Rule::RangeAtLeast(width) => {
                let (low, high) = pair()?;
                high - low + 1 >= width
            }
        })
    }
}

/// One hardening check: what it reads, what is recommended and why.
pub struct Check {
    pub name: &'static str,
    pub scope: Scope,
    sysctls: &'static [Sysctl],
    rule: Rule,
    pub recommended: &'static str,
    pub why: &'static str,
}

/// The checks, a fixed set (so the metric's series are bounded).
pub const CHECKS: &[Check] = &[
    Check {
        name: "tcp_syncookies",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.tcp_syncookies")],
        rule: Rule::Equals(1),
        recommended: "1",
        why: "SYN cookies once a SYN queue overflows keep listeners reachable under SYN floods \
              (RFC 4987 3.6); 0 lets a flood fill the queue, 2 sends cookies always \
              (structured ISNs, TCP options lost)",
    },
    Check {
        name: "tcp_timestamps",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.tcp_timestamps")],
        rule: Rule::Equals(1),
        recommended: "1",
        why: "RFC 7323 timestamps with a random offset per connection; 2 exposes one host-wide \
              clock (uptime, counting hosts behind NAT), 0 loses PAWS against old segments",
    },
    Check {
        name: "rp_filter",
        scope: Scope::Netns,
        sysctls: &[
            labelled("net.ipv4.conf.all.rp_filter", "all"),
            labelled("net.ipv4.conf.default.rp_filter", "default"),
        ],
        rule: Rule::MaxEquals(1),
        recommended: "max(all, default) = 1",
        why: "strict reverse-path filtering drops packets whose source would not be routed back \
              out of the interface they came in on: anti-spoofing (BCP 38, RFC 3704); 2 (loose) \
              only where routing is asymmetric",
    },
    Check {
        name: "accept_redirects",
        scope: Scope::Netns,
        sysctls: &[
            labelled("net.ipv4.conf.all.accept_redirects", "all"),
            labelled("net.ipv4.conf.default.accept_redirects", "default"),
        ],
        rule: Rule::Equals(0),
        recommended: "0 (all and default)",
        why: "an ICMP redirect lets any on-link host reroute this host's traffic through itself, \
              where it sees the sequence numbers it would otherwise have to guess",
    },
    Check {
        name: "accept_redirects_ipv6",
        scope: Scope::Netns,
        sysctls: &[
            labelled("net.ipv6.conf.all.accept_redirects", "all"),
            labelled("net.ipv6.conf.default.accept_redirects", "default"),
        ],
        rule: Rule::Equals(0),
        recommended: "0 (all and default)",
        why: "the same for ICMPv6 redirects (RFC 4861 8)",
    },
    Check {
        name: "accept_source_route",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.conf.all.accept_source_route")],
        rule: Rule::Equals(0),
        recommended: "0",
        why: "a source-routed packet brings the replies to a forged address back to the forger, \
              who then sees the ISN instead of guessing it; drop LSRR/SSRR (RFC 7126 4.3, 4.4)",
    },
    Check {
        name: "accept_source_route_ipv6",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv6.conf.all.accept_source_route")],
        rule: Rule::AtMost(0),
        recommended: "0 or -1",
        why: "0 accepts only Mobile IPv6 type 2 routing headers, -1 none; type 0 source routing \
              is deprecated (RFC 5095)",
    },
    Check {
        name: "tcp_challenge_ack_limit",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.tcp_challenge_ack_limit")],
        rule: Rule::AtLeast(999_999_999),
        recommended: ">= 999999999 (default since Linux 6.0: 2147483647)",
        why: "a shared per-second limit on RFC 5961 challenge ACKs is a side channel that lets an \
              off-path attacker find connections and their sequence numbers (CVE-2016-5696); the \
              per-socket limit (tcp_invalid_ratelimit) suffices",
    },
    Check {
        name: "tcp_max_syn_backlog",
        scope: Scope::Netns,
        sysctls: &[
            labelled("net.ipv4.tcp_max_syn_backlog", "tcp_max_syn_backlog"),
            labelled("net.core.somaxconn", "somaxconn"),
        ],
        rule: Rule::FirstAtLeastSecond,
        recommended: ">= net.core.somaxconn",
        why: "without SYN cookies a SYN queue past 3/4 of tcp_max_syn_backlog drops SYNs from \
              unproven peers; below somaxconn it undercuts large listen backlogs (RFC 4987 3.2)",
    },
    Check {
        name: "ip_local_port_range",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.ip_local_port_range")],
        rule: Rule::RangeAtLeast(16_384),
        recommended: ">= 16384 ports wide",
        why: "random ephemeral ports add to what an off-path attacker must guess to spoof into or \
              reset this host's outgoing connections (RFC 6056); a narrow range also runs out",
    },
    Check {
        name: "tcp_synack_retries",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.tcp_synack_retries")],
        rule: Rule::AtMost(3),
        recommended: "<= 3",
        why: "a half-open connection holds its SYN queue slot until its SYN-ACK retries run out \
              (5: about a minute, 3: 15 s): fewer retries free a flooded queue sooner (RFC 4987 3.3)",
    },
    Check {
        name: "tcp_rfc1337",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.tcp_rfc1337")],
        rule: Rule::Equals(1),
        recommended: "1",
        why: "ignores RSTs in TIME-WAIT, so a forged or stale RST cannot end it early and let old \
              segments into a new connection on the same ports (RFC 1337)",
    },
    Check {
        name: "icmp_echo_ignore_broadcasts",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.icmp_echo_ignore_broadcasts")],
        rule: Rule::Equals(1),
        recommended: "1",
        why: "not answering broadcast pings keeps the host out of smurf amplification floods \
              (CVE-1999-0513, RFC 2644)",
    },
    Check {
        name: "log_martians",
        scope: Scope::Netns,
        sysctls: &[sysctl("net.ipv4.conf.all.log_martians")],
        rule: Rule::Equals(1),
        recommended: "1",
        why: "logs packets with impossible source addresses, the trace spoofing leaves, on every \
              interface (all OR interface)",
    },
    Check {
        name: "unprivileged_bpf_disabled",
        scope: Scope::Host,
        sysctls: &[sysctl("kernel.unprivileged_bpf_disabled")],
        rule: Rule::AtLeast(1),
        recommended: "1 or 2",
        why: "unprivileged eBPF has been the way in for many local privilege escalations and \
              Spectre leaks; 2 (default since 5.16 with BPF_UNPRIV_DEFAULT_OFF) lets root turn it \
              back on, 1 locks it off until reboot",
    },
    Check {
        name: "bpf_jit_harden",
        scope: Scope::Host,
        sysctls: &[sysctl("net.core.bpf_jit_harden")],
        rule: Rule::Equals(2),
        recommended: "2",
        why: "blinds constants in every JIT-compiled BPF program against JIT spraying (KSPP); \
              Seqwatch's own classifiers run a little slower; readable by root in the host's \
              namespace only",
    },
];

/// A check's verdict on this host.
#[derive(Debug, Serialize)]
pub struct Assessment {
    pub check: &'static str,
    pub scope: Scope,
    /// What was read, e.g. `1` or `all=0 default=2`; `None` when unreadable.
    pub value: Option<String>,
    pub recommended: &'static str,
    /// `None` when a sysctl could not be read or parsed (see `error`).
    pub ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub why: &'static str,
}

impl Check {
    /// Reads the check's sysctls with `read` (name → its text) and judges them.
    pub fn assess(&self, read: &dyn Fn(&str) -> io::Result<String>) -> Assessment {
        let verdict = self.read_numbers(read).and_then(|(value, numbers)| {
            let ok = self.rule.holds(&numbers)?;
            Ok((value, ok))
        });
        let (value, ok, error) = match verdict {
            Ok((value, ok)) => (Some(value), Some(ok), None),
            Err(error) => (None, None, Some(error)),
        };
        Assessment {
            check: self.name,
            scope: self.scope,
            value,
            recommended: self.recommended,
            ok,
            error,
            why: self.why,
        }
    }

    /// The value as shown and every number, in sysctl order.
    fn read_numbers(
        &self,
        read: &dyn Fn(&str) -> io::Result<String>,
    ) -> Result<(String, Vec<i64>), String> {
        let mut shown = Vec::new();
        let mut numbers = Vec::new();
        for sysctl in self.sysctls {
            let text = read(sysctl.name).map_err(|err| unreadable(sysctl.name, &err))?;
            let parsed = parse_numbers(&text).map_err(|err| format!("{}: {err}", sysctl.name))?;
            let text = parsed.iter().map(i64::to_string).collect::<Vec<_>>();
            shown.push(match sysctl.label {
                "" => text.join(" "),
                label => format!("{label}={}", text.join(" ")),
            });
            numbers.extend(parsed);
        }
        Ok((shown.join(" "), numbers))
    }
}

fn unreadable(name: &str, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => format!("{name}: not in this kernel or network namespace"),
        // The bpf_jit_* sysctls: the kernel refuses even their reading without CAP_SYS_ADMIN.
        io::ErrorKind::PermissionDenied => format!(
            "{name}: permission denied (reading it takes CAP_SYS_ADMIN, which the daemon gives \
             up after attaching: `sudo seqwatch posture` shows it)"
        ),
        _ => format!("{name}: {err}"),
    }
}

/// The whitespace-separated integers of a sysctl's text (`32768\t60999\n`).
fn parse_numbers(text: &str) -> Result<Vec<i64>, String> {
    let numbers = text
        .split_whitespace()
        .map(|word| {
            word.parse()
                .map_err(|_| format!("{word:?} is not an integer"))
        })
        .collect::<Result<Vec<i64>, _>>()?;
    if numbers.is_empty() {
        return Err("empty".into());
    }
    Ok(numbers)
}

/// Reads a sysctl of the caller's network namespace, e.g. `net.ipv4.tcp_syncookies`.
pub fn read_sysctl(name: &str) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
}

/// Every check, on this host and in this network namespace.
pub fn assess_here() -> Vec<Assessment> {
    CHECKS
        .iter()
        .map(|check| check.assess(&read_sysctl))
        .collect()
}

/// The per-namespace checks, in the calling thread's network namespace (/proc/sys/net is the
/// caller's, unlike /proc/net).
pub fn assess_namespace_here() -> Vec<Assessment> {
    netns_checks()
        .map(|check| check.assess(&read_sysctl))
        .collect()
}

fn netns_checks() -> impl Iterator<Item = &'static Check> {
    CHECKS.iter().filter(|check| check.scope == Scope::Netns)
}

/// How often the posture is read again (cheap: a few dozen small files).
pub const REFRESH: Duration = Duration::from_secs(60);

/// Sets `gauge{first_labels…, check, scope}` to each readable assessment's verdict and removes
/// the series of the unreadable ones, which it returns.
fn export<'a>(
    gauge: &IntGaugeVec,
    first_labels: &[&str],
    assessments: &'a [Assessment],
) -> Vec<&'a Assessment> {
    let mut unreadable = Vec::new();
    for assessment in assessments {
        let mut labels = first_labels.to_vec();
        labels.extend([assessment.check, assessment.scope.as_str()]);
        match assessment.ok {
            Some(ok) => gauge.with_label_values(&labels).set(i64::from(ok)),
            None => {
                let _ = gauge.remove_label_values(&labels);
                unreadable.push(assessment);
            }
        }
    }
    unreadable
}

/// Keeps `seqwatch_posture_check` up to date; says in the log when a check becomes unreadable.
#[derive(Default)]
pub struct PostureWatch {
    unreadable: HashSet<&'static str>,
}

impl PostureWatch {
    pub fn refresh(&mut self, gauge: &IntGaugeVec) {
        let assessments = assess_here();
        let unreadable = export(gauge, &[], &assessments);
        for assessment in &unreadable {
            if self.unreadable.insert(assessment.check) {
                log::warn!(
                    "posture check {} is not exported: {}",
                    assessment.check,
                    assessment.error.as_deref().unwrap_or("unreadable")
                );
            }
        }
        self.unreadable
            .retain(|check| unreadable.iter().any(|a| a.check == *check));
    }
}

/// Another network namespace's per-namespace checks in `seqwatch_netns_posture_check{netns,
/// check, scope}` (a check unreadable there, such as IPv6's where IPv6 is off, is absent,
/// without a word in the log), refreshed every [`REFRESH`]; dropping it removes its series.
pub struct NetnsPosture {
    label: String,
    gauge: IntGaugeVec,
    refreshed: Option<Instant>,
}

impl NetnsPosture {
    pub fn new(label: String, gauge: IntGaugeVec) -> Self {
        NetnsPosture {
            label,
            gauge,
            refreshed: None,
        }
    }

    /// True when never read, or read [`REFRESH`] ago.
    pub fn due(&self, now: Instant) -> bool {
        self.refreshed
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH)
    }

    /// Exports what [`assess_namespace_here`] read in the namespace at `now`.
    pub fn refresh(&mut self, now: Instant, assessments: &[Assessment]) {
        self.refreshed = Some(now);
        export(&self.gauge, &[&self.label], assessments);
    }
}

impl Drop for NetnsPosture {
    fn drop(&mut self) {
        for check in netns_checks() {
            let labels = [self.label.as_str(), check.name, check.scope.as_str()];
            let _ = self.gauge.remove_label_values(&labels);
        }
    }
}

/// Exit status of `seqwatch posture` when a readable check is not as recommended.
pub const EXIT_CHECK_FAILED: u8 = 3;

/// Arguments of `seqwatch posture`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 every readable check as recommended; 3 at least one \
                        check not; 1 no sysctl readable at all.
Per-namespace checks describe the network namespace seqwatch runs in:
  nsenter --net=/run/netns/NAME seqwatch posture"
)]
pub struct PostureArgs {
    /// Print {"checks": [...]} as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PostureArgs) -> anyhow::Result<ExitCode> {
    let assessments = assess_here();
    anyhow::ensure!(
        assessments.iter().any(|a| a.ok.is_some()),
        "no sysctl is readable (is /proc mounted?)"
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "checks": assessments }))?
        );
    } else {
        print!("{}", table(&assessments));
    }
    Ok(exit_code(&assessments))
}

fn exit_code(assessments: &[Assessment]) -> ExitCode {
    if assessments.iter().any(|a| a.ok == Some(false)) {
        ExitCode::from(EXIT_CHECK_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Columns check, scope, value, recommended, verdict, then why (not padded: it is last).
fn table(assessments: &[Assessment]) -> String {
    let header = ["CHECK", "SCOPE", "VALUE", "RECOMMENDED", "VERDICT", "WHY"];
    let mut rows = vec![header.map(str::to_owned)];
    for a in assessments {
        let verdict = match a.ok {
            Some(true) => "ok",
            Some(false) => "NOT OK",
            None => "unreadable",
        };
        let value = a
            .value
            .clone()
            .or_else(|| a.error.clone())
            .unwrap_or_default();
        rows.push([
            a.check.into(),
            a.scope.as_str().into(),
            value,
            a.recommended.into(),
            verdict.into(),
            a.why.into(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len() - 1)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(&format!("{cell:width$}  "));
        }
        out.push_str(&row[header.len() - 1]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Every sysctl as recommended on a default 6.x kernel, plus the changes each test makes.
    fn sysctls(changes: &[(&str, &str)]) -> HashMap<String, String> {
        let mut values: HashMap<String, String> = [
            ("net.ipv4.tcp_syncookies", "1"),
            ("net.ipv4.tcp_timestamps", "1"),
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.default.rp_filter", "1"),
            ("net.ipv4.conf.all.accept_redirects", "0"),
            ("net.ipv4.conf.default.accept_redirects", "0"),
            ("net.ipv6.conf.all.accept_redirects", "0"),
            ("net.ipv6.conf.default.accept_redirects", "0"),
            ("net.ipv4.conf.all.accept_source_route", "0"),
            ("net.ipv6.conf.all.accept_source_route", "0"),
            ("net.ipv4.tcp_challenge_ack_limit", "2147483647"),
            ("net.ipv4.tcp_max_syn_backlog", "4096"),
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.ip_local_port_range", "32768\t60999\n"),
            ("net.ipv4.tcp_synack_retries", "2"),
            ("net.ipv4.tcp_rfc1337", "1"),
            ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
            ("net.ipv4.conf.all.log_martians", "1"),
            ("kernel.unprivileged_bpf_disabled", "2"),
            ("net.core.bpf_jit_harden", "2"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), format!("{value}\n")))
        .collect();
        for (name, value) in changes {
            assert!(values.contains_key(*name), "unknown sysctl {name}");
            values.insert((*name).to_owned(), format!("{value}\n"));
        }
        values
    }

    fn assess(values: &HashMap<String, String>) -> HashMap<&'static str, Assessment> {
        let read = |name: &str| {
            values
                .get(name)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        };
        CHECKS
            .iter()
            .map(|check| (check.name, check.assess(&read)))
            .collect()
    }

    fn failing(changes: &[(&str, &str)]) -> Vec<&'static str> {
        let mut failing: Vec<_> = assess(&sysctls(changes))
            .into_values()
            .filter(|a| a.ok != Some(true))
            .map(|a| a.check)
            .collect();
        failing.sort_unstable();
        failing
    }

    #[test]
    fn the_recommended_values_pass_every_check() {
        assert_eq!(failing(&[]), Vec::<&str>::new());
        assert_eq!(CHECKS.len(), 16);
    }

    #[test]
    fn each_value_against_advice_fails_its_own_check_only() {
        // The sysctl, a value against advice, and the one check it must fail.
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("net.ipv4.tcp_syncookies", "0", "tcp_syncookies"),
            ("net.ipv4.tcp_syncookies", "2", "tcp_syncookies"),
            ("net.ipv4.tcp_timestamps", "2", "tcp_timestamps"),
            ("net.ipv4.tcp_timestamps", "0", "tcp_timestamps"),
            ("net.ipv4.conf.default.rp_filter", "2", "rp_filter"),
            ("net.ipv4.conf.all.accept_redirects", "1", "accept_redirects"),
            ("net.ipv4.conf.default.accept_redirects", "1", "accept_redirects"),
            ("net.ipv6.conf.default.accept_redirects", "1", "accept_redirects_ipv6"),
            ("net.ipv4.conf.all.accept_source_route", "1", "accept_source_route"),
            ("net.ipv6.conf.all.accept_source_route", "1", "accept_source_route_ipv6"),
            ("net.ipv4.tcp_challenge_ack_limit", "1000", "tcp_challenge_ack_limit"),
            ("net.core.somaxconn", "4097", "tcp_max_syn_backlog"),
            ("net.ipv4.ip_local_port_range", "60000 60100", "ip_local_port_range"),
            ("net.ipv4.tcp_synack_retries", "5", "tcp_synack_retries"),
            ("net.ipv4.tcp_rfc1337", "0", "tcp_rfc1337"),
            ("net.ipv4.icmp_echo_ignore_broadcasts", "0", "icmp_echo_ignore_broadcasts"),
            ("net.ipv4.conf.all.log_martians", "0", "log_martians"),
            ("kernel.unprivileged_bpf_disabled", "0", "unprivileged_bpf_disabled"),
            ("net.core.bpf_jit_harden", "1", "bpf_jit_harden"),
        ];
        for &(name, value, check) in cases {
            assert_eq!(failing(&[(name, value)]), [check], "{name} = {value}");
        }
    }

    #[test]
    fn boundaries_and_alternatives_that_are_as_recommended() {
        assert_eq!(
            failing(&[
                // Strict in `all` makes every interface strict whatever `default` says.
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "1"),
                ("net.ipv6.conf.all.accept_source_route", "-1"),
                ("net.ipv4.tcp_challenge_ack_limit", "999999999"),
                ("net.ipv4.tcp_max_syn_backlog", "8192"),
                // 49152..=65535 is exactly 16384 ports.
                ("net.ipv4.ip_local_port_range", "49152 65535"),
                ("net.ipv4.tcp_synack_retries", "3"),
                ("kernel.unprivileged_bpf_disabled", "1"),
            ]),
            Vec::<&str>::new()
        );
        assert_eq!(
            failing(&[("net.ipv4.ip_local_port_range", "49153 65535")]),
            ["ip_local_port_range"]
        );
    }

    #[test]
    fn values_are_shown_with_their_labels() {
        let assessed = assess(&sysctls(&[("net.ipv4.conf.all.rp_filter", "0")]));
        assert_eq!(
            assessed["rp_filter"].value.as_deref(),
            Some("all=0 default=1")
        );
        assert_eq!(
            assessed["ip_local_port_range"].value.as_deref(),
            Some("32768 60999")
        );
        assert_eq!(
            assessed["tcp_max_syn_backlog"].value.as_deref(),
            Some("tcp_max_syn_backlog=4096 somaxconn=4096")
        );
        assert_eq!(assessed["tcp_syncookies"].value.as_deref(), Some("1"));
    }

    #[test]
    fn a_missing_or_garbled_sysctl_leaves_its_check_unjudged() {
        let mut values = sysctls(&[("net.ipv4.tcp_rfc1337", "yes")]);
        values.remove("net.core.bpf_jit_harden");
        values.insert("net.ipv4.ip_local_port_range".into(), "32768\n".into());
        let assessed = assess(&values);
        let unjudged = |check: &str| {
            let a = &assessed[check];
            assert_eq!((a.ok, a.value.as_deref()), (None, None), "{check}");
            a.error.clone().unwrap()
        };
        assert_eq!(
            unjudged("bpf_jit_harden"),
            "net.core.bpf_jit_harden: not in this kernel or network namespace"
        );
        assert_eq!(
            unjudged("tcp_rfc1337"),
            "net.ipv4.tcp_rfc1337: \"yes\" is not an integer"
        );
        assert_eq!(
            unjudged("ip_local_port_range"),
            "expected two numbers, read [32768]"
        );
        assert_eq!(assessed["tcp_syncookies"].ok, Some(true));
    }

    #[test]
    fn a_sysctl_refused_to_us_says_what_reads_it() {
        let refused = |_: &str| Err(io::Error::from(io::ErrorKind::PermissionDenied));
        let check = CHECKS.iter().find(|c| c.name == "bpf_jit_harden").unwrap();
        let error = check.assess(&refused).error.unwrap();
        assert!(
            error.starts_with("net.core.bpf_jit_harden: permission denied"),
            "{error}"
        );
        assert!(error.contains("CAP_SYS_ADMIN") && error.contains("sudo seqwatch posture"));
    }

    #[test]
    fn exit_code_is_3_only_when_a_readable_check_fails() {
        let assessed = |changes| assess(&sysctls(changes)).into_values().collect::<Vec<_>>();
        assert_eq!(exit_code(&assessed(&[])), ExitCode::SUCCESS);
        assert_eq!(
            exit_code(&assessed(&[("net.ipv4.tcp_rfc1337", "0")])),
            ExitCode::from(EXIT_CHECK_FAILED)
        );
        assert_eq!(
            exit_code(&assessed(&[("net.ipv4.tcp_rfc1337", "x")])),
            ExitCode::SUCCESS
        );
    }

    #[test]
    fn the_table_has_a_row_per_check_and_aligned_columns() {
        let assessed: Vec<_> = CHECKS
            .iter()
            .map(|check| check.assess(&|_| Ok("0\n".to_owned())))
            .collect();
        let text = table(&assessed);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), CHECKS.len() + 1);
        assert!(lines[0].starts_with("CHECK "));
        let why_column = lines[0].find("WHY").unwrap();
        for (line, check) in lines[1..].iter().zip(CHECKS) {
            assert!(line.starts_with(check.name), "{line}");
            assert_eq!(line[why_column..], *check.why, "{line}");
        }
    }

    #[test]
    fn check_names_are_unique_label_values() {
        let names: HashSet<_> = CHECKS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CHECKS.len());
        assert!(CHECKS.iter().all(|c| {
            c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
    }
}
