//! Time as the kernel stamps it (CLOCK_MONOTONIC, `bpf_ktime_get_ns()`), and as people read it
//! (RFC 3339, UTC).

use std::{fmt, time::SystemTime};

use serde::{Serialize, Serializer};

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel programs' timestamps.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Turns `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) into wall-clock time.
pub struct Clock {
    wall_minus_monotonic_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        let monotonic = monotonic_ns() as i128;
        Clock {
            wall_minus_monotonic_ns: wall - monotonic,
        }
    }

    pub(crate) fn rfc3339(&self, monotonic_ns: u64) -> String {
        self.wall_time(monotonic_ns).to_string()
    }

    /// The wall-clock time of a monotonic timestamp, formatted only when written.
    pub fn wall_time(&self, monotonic_ns: u64) -> WallTime {
        WallTime {
            unix_ns: (monotonic_ns as i128 + self.wall_minus_monotonic_ns).max(0),
        }
    }
}

/// A wall-clock time, written as RFC 3339 in UTC with milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallTime {
    unix_ns: i128,
}

impl fmt::Display for WallTime {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, millis) = (
            (self.unix_ns / 1_000_000_000) as i64,
            (self.unix_ns / 1_000_000) % 1000,
        );
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        write!(
            formatter,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

impl Serialize for WallTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_readable() {
        let clock = Clock {
            wall_minus_monotonic_ns: 1_700_000_000_123_000_000,
        };
        assert_eq!(clock.rfc3339(0), "2023-11-14T22:13:20.123Z");
    }
}
