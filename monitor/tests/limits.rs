//! Limits against hostile input that needs no kernel: every numeric flag and configuration key
//! at and past its range and at absurd values, broken web-config files, what a large cap
//! reserves up front, and `analyze` against many servers and huge damaged blocks.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    net::{Ipv4Addr, SocketAddr},
    num::NonZeroUsize,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use common::cli::{seqwatch, stderr};
use etherparse::PacketBuilder;
use seqwatch::{
    analyze::Analysis,
    detectors::isn::services::ServiceTable,
    export::labels::{ServiceLabels, admission::LabelPolicy},
    scorer::ScorerConfig,
    settings::{self, RunArgs},
};

const SEQWATCH: &str = env!("CARGO_BIN_EXE_seqwatch");

/// Counts the bytes each thread allocates, to see what a constructor reserves up front.
struct CountingAllocator;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: the allocator also runs while this thread's locals are torn down.
    let _ = ALLOCATED.try_with(|allocated| allocated.set(allocated.get() + bytes));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's guarantees for `layout` hold for `System` too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// What `build` returns, and how many bytes this thread allocated for it.
fn allocated_by<T>(build: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let built = build();
    (built, ALLOCATED.with(Cell::get) - before)
}

#[test]
fn the_largest_service_cap_reserves_nothing_up_front() {
    let largest = *settings::MAX_SERVICES.allowed.end();
    let cap = NonZeroUsize::new(largest).unwrap();
    let (_table, table_bytes) = allocated_by(|| {
        let labels = ServiceLabels::new(cap, LabelPolicy::fixed(largest, &[], &[]));
        ServiceTable::new(cap, ScorerConfig::default(), labels)
    });
    let (_analysis, analysis_bytes) =
        allocated_by(|| Analysis::new(ScorerConfig::default(), largest));
    for (what, bytes) in [("run", table_bytes), ("analyze", analysis_bytes)] {
        assert!(
            bytes < 64 << 10,
            "{what}: {bytes} bytes reserved for an empty table of up to {largest} services"
        );
    }
}

#[test]
fn the_scorer_defaults_are_the_settings_defaults() {
    let scorer = ScorerConfig::default();
    assert_eq!(scorer.guesses, settings::GUESSES.default);
    assert_eq!(scorer.window, settings::WINDOW.default);
}

/// A raw-IP pcap of one SYN-ACK from each server, all to one client.
fn synacks_from(servers: impl IntoIterator<Item = SocketAddr>) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, 101] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (i, server) in servers.into_iter().enumerate() {
        let SocketAddr::V4(server) = server else {
            panic!("IPv4 servers only");
        };
        let mut packet = Vec::new();
        PacketBuilder::ipv4(server.ip().octets(), [198, 51, 100, 5], 64)
            .tcp(server.port(), 40_000, 7_000 + i as u32, 65_535)
            .syn()
            .ack(1_001)
            .write(&mut packet, &[])
            .unwrap();
        for word in [i as u32, 0, packet.len() as u32, packet.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&packet);
    }
    out
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a test file");
    path
}

/// Runs `seqwatch args…` to its end: (output, its peak resident set in bytes).
fn run_measured(args: &[&str]) -> (Output, u64) {
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, which also returns its resource usage"
    )]
    let mut child = Command::new(SEQWATCH)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start seqwatch");
    // Read both pipes before waiting, on threads, so that a full pipe cannot stall the child.
    let mut child_stdout = child.stdout.take().unwrap();
    let mut child_stderr = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || read_all(&mut child_stdout));
    let stderr = std::thread::spawn(move || read_all(&mut child_stderr));
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which has not been waited for; the pointers are to
    // live locals.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32, "wait4");
    let output = Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    // ru_maxrss is in KiB on Linux.
    (output, usage.ru_maxrss as u64 * 1024)
}

fn read_all(pipe: &mut impl Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes).expect("read a pipe");
    bytes
}

/// Bytes the scorer keeps per sample of a full window: the ring's 40 (the sample and its
/// 4-tuple's) and its index's four buckets of 5; and per service, the reuse pairs (256 × 16)
/// and the scorer itself.
const BYTES_PER_SAMPLE: u64 = 60;
const BYTES_PER_SERVICE: u64 = 8 << 10;

#[test]
fn analyze_scores_at_most_the_cap_of_servers_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let servers = 20_000u32;
    let many = (0..servers).map(|i| {
        let address = Ipv4Addr::from(0x0a00_0000 + i);
        SocketAddr::from((address, 443))
    });
    let capture = write_file(dir.path(), "many.pcap", &synacks_from(many));
    let one = write_file(
        dir.path(),
        "one.pcap",
        &synacks_from(["192.0.2.1:443".parse().unwrap()]),
    );
    let (baseline, baseline_peak) = run_measured(&["analyze", one.to_str().unwrap()]);
    assert!(baseline.status.success(), "{}", stderr(&baseline));

    let (output, peak) = run_measured(&["analyze", capture.to_str().unwrap()]);
    let cap = settings::MAX_SERVICES.default as u64;
    let window = settings::WINDOW.default as u64;
    assert!(output.status.success(), "{}", stderr(&output));
    let bound = cap * (window * BYTES_PER_SAMPLE + BYTES_PER_SERVICE);
    assert!(
        peak.saturating_sub(baseline_peak) <= bound,
        "peak resident set {} MiB, {} MiB more than for one server; bound {} MiB",
        peak >> 20,
        peak.saturating_sub(baseline_peak) >> 20,
        bound >> 20
    );
    assert_eq!(
        stderr(&output),
        format!(
            "seqwatch analyze: {} servers beyond the cap of {cap} (--max-services) were not \
             scored ({} SYN-ACKs)\n",
            u64::from(servers) - cap,
            u64::from(servers) - cap
        )
    );
    let rows = String::from_utf8_lossy(&output.stdout).lines().count() as u64;
    assert_eq!(rows, 1 + cap, "a header and one row per scored server");
}

/// A pcapng section header and a raw-IP interface at microseconds, little-endian.
fn pcapng_start() -> Vec<u8> {
    let mut out = Vec::new();
    for block in [
        [
            0x0a0d_0d0au32,
            28,
            0x1a2b_3c4d,
            1,
            0xffff_ffff,
            0xffff_ffff,
            28,
        ],
        [1, 20, 101, 65_535, 20, 0, 0],
    ] {
        for word in &block[..block[1] as usize / 4] {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
    out
}

/// An enhanced packet block on interface 0, padded to a multiple of 4.
fn epb(data: &[u8]) -> Vec<u8> {
    let total = 32 + data.len().div_ceil(4) as u32 * 4;
    let mut out = Vec::new();
    for word in [6, total, 0, 0, 0, data.len() as u32, data.len() as u32] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(data);
    out.resize(total as usize - 4, 0);
    out.extend_from_slice(&total.to_le_bytes());
    out
}

/// The one packet of `synacks_from`'s capture of a single server.
fn one_synack(server: &str) -> Vec<u8> {
    synacks_from([server.parse().unwrap()])[40..].to_vec()
}

const HUGE_BLOCK: u64 = 200 << 20;

/// A pcapng file with a SYN-ACK from `before`, a 200 MiB enhanced packet block of zeros whose
/// captured length is absurd and whose trailing length is `trailer`, then `after`.
fn with_huge_block(dir: &Path, name: &str, trailer: u32, after: &[u8]) -> (PathBuf, u64) {
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    let mut start = pcapng_start();
    start.extend(epb(&one_synack("192.0.2.1:443")));
    let offset = start.len() as u64;
    start.extend_from_slice(&6u32.to_le_bytes());
    start.extend_from_slice(&(HUGE_BLOCK as u32).to_le_bytes());
    start.extend_from_slice(&[0; 12]);
    start.extend_from_slice(&u32::MAX.to_le_bytes());
    file.write_all(&start).unwrap();
    // Sparse: the zeros cost no disk.
    file.set_len(offset + HUGE_BLOCK - 4).unwrap();
    file.seek(SeekFrom::End(0)).unwrap();
    file.write_all(&trailer.to_le_bytes()).unwrap();
    file.write_all(after).unwrap();
    (path, offset)
}

#[test]
fn a_bad_200_mib_block_costs_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    // Framing intact: skipped, and the SYN-ACK after it is scored.
    let after = epb(&one_synack("192.0.2.2:443"));
    let (framed, offset) = with_huge_block(dir.path(), "framed.pcapng", HUGE_BLOCK as u32, &after);
    let output = seqwatch(&["analyze", framed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!(
            "seqwatch analyze: {}: at byte offset {offset}: enhanced packet block (type \
             0x00000006, {HUGE_BLOCK} bytes): over the {}-byte limit of one block, not read; \
             skipped\n",
            framed.display(),
            seqwatch::analyze::capture::MAX_BLOCK
        )
    );
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        table.contains("192.0.2.1:443") && table.contains("192.0.2.2:443"),
        "{table}"
    );

    // Framing broken (the trailing length disagrees, garbage follows): one line, and stop.
    let (broken, offset) = with_huge_block(dir.path(), "broken.pcapng", 0, b"garbage!");
    let output = seqwatch(&["analyze", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.len() < 400, "{} bytes of stderr", message.len());
    assert!(
        message.contains(&format!(
            "at byte offset {offset}: enhanced packet block (type 0x00000006, {HUGE_BLOCK} bytes)"
        )),
        "{message}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("192.0.2.1:443"),
        "the SYN-ACK before the damage is kept"
    );
}

/// `seqwatch run`'s flags, parsed as the binary does.
#[derive(Debug, Parser)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

/// A numeric flag or key: its range and default as u64, and where it appears.
struct Numeric {
    flag: Option<&'static str>,
    key: &'static str,
    start: u64,
    end: u64,
    default: u64,
    commands: &'static [&'static str],
}

fn numerics() -> Vec<Numeric> {
    let usize_range = |setting: &settings::Setting<usize>| {
        (
            *setting.allowed.start() as u64,
            *setting.allowed.end() as u64,
            setting.default as u64,
            setting.key,
        )
    };
    let u64_range = |setting: &settings::Setting<u64>| {
        (
            *setting.allowed.start(),
            *setting.allowed.end(),
            setting.default,
            setting.key,
        )
    };
    let both: &[&str] = &["run", "analyze"];
    let run: &[&str] = &["run"];
    [
        (
            Some("--max-services"),
            usize_range(&settings::MAX_SERVICES),
            both,
        ),
        (Some("--guesses"), u64_range(&settings::GUESSES), both),
        (Some("--window"), usize_range(&settings::WINDOW), both),
        (
            Some("--listener-loss-window"),
            u64_range(&settings::LISTENER_LOSS_WINDOW),
            run,
        ),
        (
            Some("--top-sources"),
            usize_range(&settings::TOP_SOURCES),
            run,
        ),
        (
            Some("--anomaly-window"),
            u64_range(&settings::ANOMALY_WINDOW),
            run,
        ),
        (
            Some("--unresponsive-after"),
            u64_range(&settings::UNRESPONSIVE_AFTER),
            run,
        ),
    ]
    .into_iter()
    .map(|(flag, (start, end, default, key), commands)| Numeric {
        flag,
        key,
        start,
        end,
        default,
        commands,
    })
    .collect()
}

/// Texts no numeric flag may accept.
const ABSURD_FLAGS: &[&str] = &[
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "-1",
    "-9223372036854775808",
    "1e3",
    "0x10",
    "",
    " 5",
    "five",
];

/// TOML values no numeric key may accept.
const ABSURD_KEYS: &[&str] = &[
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "-1",
    "-9223372036854775808",
    "1e3",
    "1e400",
    "nan",
    "inf",
    "\"5\"",
    "[5]",
    "{ a = 5 }",
    "true",
    "five",
    "",
];

/// The value one below and one above the range, as text (above u64::MAX is still a number).
fn outside(numeric: &Numeric) -> Vec<(String, Option<u64>)> {
    let above = match numeric.end.checked_add(1) {
        Some(above) => (above.to_string(), Some(above)),
        None => ("18446744073709551616".to_owned(), None),
    };
    vec![
        ((numeric.start - 1).to_string(), Some(numeric.start - 1)),
        above,
    ]
}

/// The whole file for one key, `section.key` in its table.
fn toml_for(key: &str, value: &str) -> String {
    match key.split_once('.') {
        Some((section, key)) => format!("[{section}]\n{key} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

fn check_config(dir: &Path, text: &str) -> Output {
    let path = write_file(dir, "seqwatch.toml", text.as_bytes());
    seqwatch(&["check-config", path.to_str().unwrap()])
}

/// `run` would start monitoring if a bad value were accepted: a missing config file makes
/// it exit at once then, with a message no assertion here expects.
const RUN_GUARD: &[&str] = &["--config", "/nonexistent/seqwatch.toml"];

#[test]
fn every_numeric_flag_and_key_has_one_range_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let capture = write_file(
        dir.path(),
        "one.pcap",
        &synacks_from(["192.0.2.1:443".parse().unwrap()]),
    );
    let capture = [capture.to_str().unwrap()];
    // What follows a flag: a capture for `analyze`, a guard for `run`.
    let rest = |command: &str| {
        if command == "run" {
            RUN_GUARD
        } else {
            &capture[..]
        }
    };
    for numeric in numerics() {
        let allowed = format!("expected {} to {}", numeric.start, numeric.end);
        assert!(
            (numeric.start..=numeric.end).contains(&numeric.default),
            "{}: default {} outside {allowed}",
            numeric.key,
            numeric.default
        );
        // The file: both ends accepted, one past either end refused with the range.
        for value in [numeric.start, numeric.end] {
            let text = toml_for(numeric.key, &value.to_string());
            let output = check_config(dir.path(), &text);
            assert!(output.status.success(), "{text:?}: {}", stderr(&output));
        }
        for (text_value, value) in outside(&numeric) {
            let text = toml_for(numeric.key, &text_value);
            let message = stderr(&check_config(dir.path(), &text));
            // TOML integers are signed 64-bit: a larger one is refused as TOML.
            if let Some(value) = value.filter(|value| i64::try_from(*value).is_ok()) {
                let expected = format!("key `{}`: {value} is out of range: {allowed}", numeric.key);
                assert!(message.contains(&expected), "{text:?}: {message}");
            }
            assert!(message.contains("seqwatch: error: "), "{text:?}: {message}");
        }
        for value in ABSURD_KEYS {
            let text = toml_for(numeric.key, value);
            let output = check_config(dir.path(), &text);
            assert_eq!(output.status.code(), Some(2), "{text:?}");
            assert!(!stderr(&output).contains("panicked"), "{text:?}");
        }

        let Some(flag) = numeric.flag else { continue };
        // `COMMAND --flag=VALUE …` is refused (exit 2) naming the range; its message.
        let refused = |command: &str, value: &str| {
            // `--flag=VALUE`: `--flag -1` would read -1 as a flag.
            let assignment = format!("{flag}={value}");
            let mut args = vec![command, &assignment];
            args.extend(rest(command));
            let output = seqwatch(&args);
            let message = format!("{args:?}: {}", stderr(&output));
            assert_eq!(output.status.code(), Some(2), "{message}");
            assert!(message.contains(&allowed), "{message}");
            message
        };
        // The flags: the same range, the same message as the file's.
        for (text_value, value) in outside(&numeric) {
            for command in numeric.commands {
                let message = refused(command, &text_value);
                if let Some(value) = value {
                    let same = format!("{value} is out of range: {allowed}");
                    assert!(message.contains(&same), "{message}");
                }
            }
        }
        for value in ABSURD_FLAGS {
            for command in numeric.commands {
                let message = refused(command, value);
                assert!(!message.contains("panicked"), "{message}");
            }
        }
        // Both ends are accepted: `run` parses them (without starting), `analyze` runs.
        for value in [numeric.start, numeric.end] {
            let value = value.to_string();
            for command in numeric.commands {
                if *command == "run" {
                    let parsed = RunCli::command().try_get_matches_from(["run", flag, &value]);
                    let parsed = parsed.and_then(|matches| RunCli::from_arg_matches(&matches));
                    assert!(parsed.is_ok(), "run {flag} {value}: {parsed:?}");
                } else {
                    let (output, peak) = run_measured(&["analyze", flag, &value, capture[0]]);
                    assert!(
                        output.status.success(),
                        "{flag} {value}: {}",
                        stderr(&output)
                    );
                    assert!(
                        peak < 64 << 20,
                        "analyze {flag} {value}: {} MiB",
                        peak >> 20
                    );
                }
            }
        }
    }
}

#[test]
fn absurd_web_configs_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("broken YAML", b"tls_server_config: [unclosed\n".to_vec()),
        (
            "a number for a map",
            b"tls_server_config: 18446744073709551616\n".to_vec(),
        ),
        (
            "a huge number for a hash",
            b"basic_auth_users:\n  admin: 99999999999999999999999999999999\n".to_vec(),
        ),
        ("a list for a map", b"basic_auth_users: [1, 2]\n".to_vec()),
        (
            "a map for a path",
            b"tls_server_config:\n  cert_file: {a: 1}\n  key_file: k\n".to_vec(),
        ),
        ("nesting 100 000 deep", nested.into_bytes()),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x80, b'\n']),
        (
            "a tab for indentation",
            b"basic_auth_users:\n\tadmin: x\n".to_vec(),
        ),
        ("an anchor loop", b"a: &a [*a]\n".to_vec()),
    ];
    for (what, bytes) in cases {
        let web_config = write_file(dir.path(), "web.yml", &bytes);
        let web_config = web_config.to_str().unwrap();
        let output = check_config(dir.path(), &format!("web_config = {web_config:?}\n"));
        let run = seqwatch(&[
            "run",
            "--web-config",
            web_config,
            "--listen",
            "127.0.0.1:0",
            "-i",
            "seqwatch-none0",
        ]);
        for (entry, output) in [("check-config", output), ("run --web-config", run)] {
            let message = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{what}, {entry}: {message}");
            assert_eq!(message.lines().count(), 1, "{what}, {entry}: {message}");
            assert!(message.len() < 1000, "{what}, {entry}: {message}");
            assert!(message.contains(web_config), "{what}, {entry}: {message}");
        }
    }
}

/// A configuration, web-config, certificate or key path to `/dev/zero` (or any huge file) was
/// read to the end: memory until the OOM killer. Each is now refused at 1 MiB, in one line.
#[test]
fn endless_files_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let tls = |file: &str| {
        let other = if file == "cert_file" {
            write_file(
                dir.path(),
                "key.pem",
                certified.signing_key.serialize_pem().as_bytes(),
            )
        } else {
            write_file(dir.path(), "cert.pem", certified.cert.pem().as_bytes())
        };
        let other = other.to_str().unwrap();
        let (cert, key) = if file == "cert_file" {
            ("/dev/zero", other)
        } else {
            (other, "/dev/zero")
        };
        format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    };
    let web_configs = [
        ("a web config", "/dev/zero".to_owned()),
        ("a certificate", {
            let file = write_file(dir.path(), "cert.yml", tls("cert_file").as_bytes());
            file.to_str().unwrap().to_owned()
        }),
        ("a key", {
            let file = write_file(dir.path(), "key.yml", tls("key_file").as_bytes());
            file.to_str().unwrap().to_owned()
        }),
    ];
    let mut outputs = vec![("a configuration", seqwatch(&["check-config", "/dev/zero"]))];
    for (what, web_config) in &web_configs {
        let output = check_config(dir.path(), &format!("web_config = {web_config:?}\n"));
        outputs.push((what, output));
    }
    for (what, output) in outputs {
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{what}: {message}");
        assert_eq!(message.lines().count(), 1, "{what}: {message}");
        assert!(
            message.contains("larger than 1048576 bytes"),
            "{what}: {message}"
        );
    }
}
