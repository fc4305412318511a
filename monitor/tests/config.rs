//! The configuration file, the web config (TLS and basic auth on a real server), the CLI's
//! conventions and the systemd unit. None of these need the kernel programs or root.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

use axum::{Router, routing::get};
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use common::cli::{seqwatch, stderr};
use seqwatch::{
    export::{
        metrics::Registry,
        web::{HttpMetrics, WebConfig, WebSecurity},
    },
    kernel::{AttachMode, caps::KernelFeatures},
    settings::{self, ConfigError, Directions, RunArgs, Settings},
};

const SEQWATCH: &str = env!("CARGO_BIN_EXE_seqwatch");

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `check-config` on a file: (exit code, stderr).
fn check_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "seqwatch.toml", text);
    let output = seqwatch(&["check-config", path.to_str().unwrap()]);
    (output.status.code().expect("an exit code"), stderr(&output))
}

#[test]
fn the_shipped_config_is_valid() {
    let path = repo_file("packaging/seqwatch.toml");
    let output = seqwatch(&["check-config", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).ends_with(": OK\n"));
}

#[test]
fn every_config_error_names_line_key_and_what_is_allowed() {
    let cases = [
        (
            "listen = \"127.0.0.1:1\"\ndirection = \"sideways\"\n",
            "seqwatch.toml:2: key `direction`: `sideways` is not allowed: \
             expected one of egress, ingress, both",
        ),
        (
            "attach_mode = \"xdp\"\n",
            ":1: key `attach_mode`: `xdp` is not allowed: expected one of auto, tcx, netlink",
        ),
        (
            "\n\ncolour = 1\n",
            ":3: key `colour`: unknown field `colour`, expected one of",
        ),
        (
            "guesses = 10\n\n[scorer]\nwindow = 3\n",
            ":4: key `scorer.window`: 3 is out of range: expected 8 to 65536",
        ),
        (
            "[scorer]\nwindoww = 64\n",
            ":2: key `scorer.windoww`: unknown field `windoww`, expected `window`",
        ),
        (
            "[tls]\nports = [443, 0]\n",
            ":2: key `tls.ports`: 0 is not a port: expected 1 to 65535",
        ),
        (
            "[tls]\nlog_prefix = \"yes\"\n",
            ":2: key `tls.log_prefix`: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "max_services = 0\n",
            ":1: key `max_services`: 0 is out of range: expected 1 to 1048576",
        ),
        (
            "max_sources = 0\n",
            ":1: key `max_sources`: unknown field `max_sources`, expected one of",
        ),
        (
            "listener_loss_window = 3601\n",
            ":1: key `listener_loss_window`: 3601 is out of range: expected 1 to 3600",
        ),
        (
            "top_sources = 0\n",
            ":1: key `top_sources`: 0 is out of range: expected 1 to 50",
        ),
        (
            "\ntop_sources = 51\n",
            ":2: key `top_sources`: 51 is out of range: expected 1 to 50",
        ),
        (
            "anomaly_window = 9\n",
            ":1: key `anomaly_window`: 9 is out of range: expected 10 to 86400",
        ),
        (
            "anomaly_window = \"5m\"\n",
            ":1: key `anomaly_window`: invalid type: string",
        ),
        (
            "guesses = -5\n",
            ":1: key `guesses`: invalid value: integer `-5`",
        ),
        (
            "listen = \"localhost\"\n",
            ":1: key `listen`: invalid socket address",
        ),
        (
            "interfaces = [\"eth0\", \"a-name-far-too-long\"]\n",
            ":1: key `interfaces`: \"a-name-far-too-long\" is not an interface name: \
             expected 1 to 15 characters",
        ),
        (
            "interfaces = \"eth0\"\n",
            ":1: key `interfaces`: invalid type: string",
        ),
        ("web_config = \"missing.yml\"\n", ":1: key `web_config`: "),
        ("direction = \n", ":1: "),
    ];
    for (text, expected) in cases {
        let (code, message) = check_config(text);
        assert_eq!(code, 2, "{text:?}: {message}");
        assert!(
            message.contains(expected),
            "{text:?}: expected {expected:?} in:\n{message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let output = seqwatch(&["check-config", "/nonexistent/seqwatch.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/seqwatch.toml: cannot read"));
}

/// `seqwatch run`'s flags, parsed as the binary does.
#[derive(Debug, Parser)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

fn merged(args: &[&str]) -> Result<Settings, ConfigError> {
    let matches = RunCli::command()
        .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
        .expect("valid flags");
    let cli = RunCli::from_arg_matches(&matches).expect("valid flags");
    settings::resolve(&cli.run)
}

#[test]
fn flags_override_the_file_and_the_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "seqwatch.toml",
        "interfaces = [\"eth7\"]\ndirection = \"both\"\nlisten = \"127.0.0.1:20000\"\n\
         attach_mode = \"netlink\"\nmax_services = 10\nguesses = 77\n\
         sample_log = \"samples.jsonl\"\nevent_log = \"-\"\nlistener_loss_window = 30\n\
         top_sources = 20\nanomaly_window = 600\n\
         [scorer]\nwindow = 512\n",
    );
    let config = path.to_str().unwrap();

    let defaults = merged(&[]).unwrap();
    assert_eq!(defaults.direction, Directions::Egress);
    assert_eq!(
        defaults.listen,
        "127.0.0.1:10045".parse::<SocketAddr>().unwrap()
    );
    assert!(defaults.interfaces.is_empty(), "all interfaces by default");
    assert_eq!(defaults.listener_loss_window, 10);
    assert_eq!((defaults.top_sources, defaults.anomaly_window), (10, 300));

    let from_file = merged(&["--config", config]).unwrap();
    assert_eq!(from_file.interfaces, ["eth7"]);
    assert_eq!(from_file.direction, Directions::Both);
    assert_eq!(from_file.listen.port(), 20000);
    assert_eq!(from_file.attach_mode, AttachMode::Netlink);
    assert_eq!(from_file.max_services, 10);
    assert_eq!(from_file.guesses, 77);
    assert_eq!(from_file.window, 512);
    assert_eq!(from_file.listener_loss_window, 30);
    assert_eq!((from_file.top_sources, from_file.anomaly_window), (20, 600));
    // Relative to the file's directory, not to where seqwatch was started.
    assert_eq!(from_file.sample_log, Some(dir.path().join("samples.jsonl")));
    assert_eq!(
        from_file.event_log,
        Some(PathBuf::from("-")),
        "stdout, not a relative path"
    );

    let overridden = merged(&[
        "--config",
        config,
        "-i",
        "eth9",
        "--direction",
        "egress",
        "--listen",
        "127.0.0.1:30000",
        "--window",
        "64",
        "--guesses",
        "5000",
        "--listener-loss-window",
        "5",
        "--top-sources",
        "3",
    ])
    .unwrap();
    assert_eq!(overridden.interfaces, ["eth9"]);
    assert_eq!(overridden.direction, Directions::Egress);
    assert_eq!(overridden.listen.port(), 30000);
    assert_eq!(overridden.window, 64);
    assert_eq!(overridden.listener_loss_window, 5);
    assert_eq!(overridden.top_sources, 3);
    assert_eq!(overridden.anomaly_window, 600, "not given: the file's");
    assert_eq!(
        overridden.guesses, 5000,
        "a flag equal to the default still wins"
    );
    assert_eq!(
        overridden.attach_mode,
        AttachMode::Netlink,
        "not given: the file's"
    );
}

#[test]
fn run_rejects_a_bad_config_before_touching_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", "direction = \"up\"\n");
    let output = seqwatch(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("key `direction`: `up` is not allowed"));
}

#[test]
fn help_shows_examples_and_exit_codes_and_usage_errors_exit_2() {
    let help = stdout(&seqwatch(&["--help"]));
    for expected in [
        "Examples:",
        "Exit codes:",
        "check-config",
        "completions",
        "posture",
        "version",
    ] {
        assert!(help.contains(expected), "{expected} in:\n{help}");
    }
    let output = seqwatch(&["run", "--direction", "sideways"]);
    assert_eq!(output.status.code(), Some(2));
    let output = seqwatch(&["run", "--window", "3"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("expected 8 to 65536"));
    let output = seqwatch(&["run", "--top-sources", "51"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("expected 1 to 50"));
    let output = seqwatch(&["run", "--anomaly-window", "9"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("9 is out of range: expected 10 to 86400"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn completions_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let output = seqwatch(&["completions", shell]);
        assert!(output.status.success());
        let script = stdout(&output);
        for subcommand in [
            "run",
            "analyze",
            "check-config",
            "posture",
            "version",
            "completions",
        ] {
            assert!(script.contains(subcommand), "{shell}: {subcommand}");
        }
    }
}

#[test]
fn version_reports_the_kernel_features() {
    let output = seqwatch(&["version"]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.starts_with(&format!("seqwatch {}\n", env!("CARGO_PKG_VERSION"))));
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let expected = format!(
        "BTF (/sys/kernel/btf/vmlinux): {}",
        if btf { "yes" } else { "no" }
    );
    assert!(text.contains(&expected), "{text}");
    assert!(text.contains("tcx (Linux 6.6+): "), "{text}");
}

/// A self-signed certificate for 127.0.0.1 and its key, written as `NAME.crt` and `NAME.key`;
/// the DER to trust.
struct TestCert {
    key_file: PathBuf,
    der: Vec<u8>,
}

fn test_cert(dir: &Path, name: &str) -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    write(dir, &format!("{name}.crt"), &certified.cert.pem());
    TestCert {
        key_file: write(
            dir,
            &format!("{name}.key"),
            &certified.signing_key.serialize_pem(),
        ),
        der: certified.cert.der().to_vec(),
    }
}

/// Serves a one-route router with the web config's security on a real socket.
fn serve(web_config: &Path) -> (tokio::runtime::Runtime, SocketAddr) {
    let security = WebSecurity::from_file(web_config).expect("a valid web config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = HttpMetrics::new(&Registry::new()).unwrap();
        security.serve(
            listener,
            Router::new().route("/metrics", get(|| async { "up 1\n" })),
            seqwatch::export::web::MAX_CONNECTIONS,
            metrics,
        );
        addr
    });
    (runtime, addr)
}

fn agent(trusted: &[u8], client: Option<&TestCert>) -> ureq::Agent {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let roots = RootCerts::Specific(Arc::new(vec![Certificate::from_der(trusted).to_owned()]));
    let client_cert = client.map(|cert| {
        let key = PrivateKey::from_pem(&std::fs::read(&cert.key_file).unwrap()).unwrap();
        ClientCert::new_with_certs(&[Certificate::from_der(&cert.der).to_owned()], key)
    });
    ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(roots)
                .client_cert(client_cert)
                .build(),
        )
        .http_status_as_error(false)
        .build()
        .into()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// GET with optional Authorization: the status, or the transport error.
fn get_status(agent: &ureq::Agent, url: &str, auth: Option<&str>) -> Result<u16, ureq::Error> {
    let mut request = agent.get(url);
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    request.call().map(|response| response.status().as_u16())
}

#[test]
fn tls_and_basic_auth_protect_the_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let cert = test_cert(dir.path(), "server");
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    let web_config = write(
        dir.path(),
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    );
    let (_runtime, addr) = serve(&web_config);
    let trusting = agent(&cert.der, None);
    let url = format!("https://{addr}/metrics");

    let mut response = trusting
        .get(&url)
        .header("Authorization", basic("prometheus", "s3cret"))
        .call()
        .expect("a TLS scrape");
    assert_eq!(response.status(), 200);
    assert_eq!(response.body_mut().read_to_string().unwrap(), "up 1\n");
    assert_eq!(
        get_status(&trusting, &url, None).unwrap(),
        401,
        "no credentials"
    );
    let wrong = basic("prometheus", "guess");
    assert_eq!(
        get_status(&trusting, &url, Some(&wrong)).unwrap(),
        401,
        "wrong password"
    );
    let stranger = basic("mallory", "s3cret");
    assert_eq!(
        get_status(&trusting, &url, Some(&stranger)).unwrap(),
        401,
        "unknown user"
    );

    let plain = get_status(&trusting, &format!("http://{addr}/metrics"), None);
    assert!(plain.is_err(), "plain HTTP to the TLS port: {plain:?}");
    let untrusted = get_status(
        &agent(&test_cert(dir.path(), "other").der, None),
        &url,
        None,
    );
    assert!(
        untrusted.is_err(),
        "a client that does not trust the cert: {untrusted:?}"
    );
}

/// Certificates and passwords rotate without a restart, as with exporter-toolkit; a change that
/// does not load, or that would switch TLS off, keeps the settings in force.
#[test]
fn web_config_changes_apply_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = test_cert(dir.path(), "server");
    let next = test_cert(dir.path(), "next");
    let users = |password: &str| {
        let hash = bcrypt::hash(password, 10).unwrap();
        format!("basic_auth_users:\n  prometheus: '{hash}'\n")
    };
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let web_config = write(dir.path(), "web.yml", &format!("{tls}{}", users("old")));
    let (_runtime, addr) = serve(&web_config);
    let url = format!("https://{addr}/metrics");
    let (trusts_first, trusts_next) = (agent(&first.der, None), agent(&next.der, None));
    let (old, new) = (basic("prometheus", "old"), basic("prometheus", "new"));
    assert_eq!(get_status(&trusts_first, &url, Some(&old)).unwrap(), 200);

    for file in ["crt", "key"] {
        let from = dir.path().join(format!("next.{file}"));
        std::fs::copy(from, dir.path().join(format!("server.{file}"))).unwrap();
    }
    write(dir.path(), "web.yml", &format!("{tls}{}", users("new")));
    assert_eq!(get_status(&trusts_next, &url, Some(&new)).unwrap(), 200);
    assert_eq!(get_status(&trusts_next, &url, Some(&old)).unwrap(), 401);
    let stale = get_status(&trusts_first, &url, Some(&new));
    assert!(stale.is_err(), "the rotated-out certificate: {stale:?}");

    write(dir.path(), "web.yml", "basic_auth_users: [");
    assert_eq!(
        get_status(&trusts_next, &url, Some(&new)).unwrap(),
        200,
        "a broken file keeps the settings in force"
    );
    write(dir.path(), "web.yml", &users("plain"));
    assert_eq!(
        get_status(&trusts_next, &url, Some(&new)).unwrap(),
        200,
        "TLS is not switched off without a restart"
    );
}

#[test]
fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server = test_cert(dir.path(), "server");
    let client = test_cert(dir.path(), "client");
    let web_config = write(
        dir.path(),
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_ca_file: client.crt\n  client_auth_type: RequireAndVerifyClientCert\n  \
         min_version: TLS13\n",
    );
    let (_runtime, addr) = serve(&web_config);
    let url = format!("https://{addr}/metrics");
    assert_eq!(
        get_status(&agent(&server.der, Some(&client)), &url, None).unwrap(),
        200
    );
    let anonymous = get_status(&agent(&server.der, None), &url, None);
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = test_cert(dir.path(), "stranger");
    let untrusted = get_status(&agent(&server.der, Some(&stranger)), &url, None);
    assert!(
        untrusted.is_err(),
        "an unknown client certificate: {untrusted:?}"
    );
}

#[test]
fn bad_web_configs_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    test_cert(dir.path(), "server");
    // Costs are only read from the hash: a cost-10 hash relabelled stands for any cost.
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    let with_cost = |cost: &str| hash.replacen("$10$", &format!("${cost}$"), 1);
    let user = |name: &str, hash: &str| format!("basic_auth_users:\n  {name}: '{hash}'\n");
    let out_of_range = |cost: u32| {
        format!("basic_auth_users.admin: bcrypt cost {cost} is out of range: expected 10 to 14")
    };
    let bcrypt_cases = [
        (user("admin", &with_cost("09")), out_of_range(9)),
        (user("admin", &with_cost("15")), out_of_range(15)),
        (user("admin", &with_cost("31")), out_of_range(31)),
        (user("admin", &with_cost("99")), out_of_range(99)),
        (
            user("''", &hash),
            "basic_auth_users: a user name is empty".to_owned(),
        ),
        (
            user("'a:b'", &hash),
            "basic_auth_users: user name \"a:b\" contains ':'".to_owned(),
        ),
        (
            user("\"a\\tb\"", &hash),
            "basic_auth_users: user name \"a\\tb\" contains a control character".to_owned(),
        ),
    ];
    let cases = bcrypt_cases
        .iter()
        .map(|(text, expected)| (text.as_str(), expected.as_str()));
    let cases = cases.chain([
        (
            "basic_auth_users:\n  admin: plaintext\n",
            "basic_auth_users.admin: not a bcrypt hash",
        ),
        (
            "http_server_config:\n  http2: false\n",
            "unknown field `http_server_config`",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
            "unknown variant `TLS10`, expected `TLS12` or `TLS13`",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: missing.key\n",
            "key_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
            "cert_file",
        ),
    ]);
    for (text, expected) in cases {
        let web_config = write(dir.path(), "web.yml", text);
        let error = WebConfig::load(&web_config).expect_err(text).to_string();
        assert!(
            error.contains(expected),
            "{text:?}: expected {expected:?} in {error}"
        );
        assert!(error.starts_with(web_config.to_str().unwrap()), "{error}");
        // check-config follows web_config and reports it under its key.
        let (code, message) = check_config(
            "web_config = \"web.yml\"\n"
                .replace("web.yml", web_config.to_str().unwrap())
                .as_str(),
        );
        assert_eq!(code, 2);
        assert!(
            message.contains(":1: key `web_config`: ") && message.contains(expected),
            "{message}"
        );
    }
}

/// The unit's directives, in order, as (key, value).
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn the_systemd_unit_runs_unprivileged_with_only_the_needed_capabilities() {
    let text = std::fs::read_to_string(repo_file("packaging/seqwatch.service")).unwrap();
    let directives = unit_directives(&text);
    let value = |key: &str| {
        let values: Vec<&str> = directives
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values.len(), 1, "{key} set exactly once");
        values[0].to_owned()
    };
    let caps = "CAP_BPF CAP_NET_ADMIN CAP_PERFMON";
    for (key, expected) in [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("DynamicUser", "yes"),
        ("AmbientCapabilities", caps),
        ("CapabilityBoundingSet", caps),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "seqwatch"),
        ("LimitNOFILE", "16384"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
    ] {
        assert_eq!(value(key), expected, "{key}");
    }
    assert!(value("RestartSec").ends_with('s'));
    assert!(value("ExecStart").contains(" run --config /etc/seqwatch/seqwatch.toml"));
    assert!(!directives.iter().any(|(k, v)| k == "User" && v == "root"));
    assert!(
        !directives.iter().any(|(k, _)| k == "PrivateNetwork"),
        "must see the host's links"
    );
}

/// systemd's own checker, with the binary path pointed at the one under test.
#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is missing (apt-get install systemd)");
    }
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_file("packaging/seqwatch.service"))
        .unwrap()
        .replace("/usr/bin/seqwatch", SEQWATCH);
    let unit = write(dir.path(), "seqwatch.service", &text);
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = format!("{}{}", stdout(&output), stderr(&output));
    assert!(output.status.success(), "{report}");
    assert!(
        !report.contains("seqwatch.service:"),
        "warnings about the unit:\n{report}"
    );
}

/// This machine has BTF and tcx, so the refusals are checked on described kernels.
#[test]
fn kernels_without_btf_or_tcx_are_refused_clearly() {
    let kernel = |btf, tcx| KernelFeatures {
        release: "5.10.0-test".to_owned(),
        btf,
        tcx,
    };
    let no_btf = kernel(false, true).require(AttachMode::Auto).unwrap_err();
    assert!(
        no_btf.to_string().contains(
            "kernel 5.10.0-test has no BTF (/sys/kernel/btf/vmlinux is missing): seqwatch \
             needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        ),
        "{no_btf}"
    );
    let no_tcx = kernel(true, false).require(AttachMode::Tcx).unwrap_err();
    assert!(
        no_tcx.to_string().contains(
            "--attach-mode tcx needs Linux 6.6 or later (this is 5.10.0-test): use \
             --attach-mode auto or netlink"
        ),
        "{no_tcx}"
    );
    for mode in [AttachMode::Auto, AttachMode::Netlink] {
        assert!(
            kernel(true, false).require(mode).is_ok(),
            "{mode:?} falls back"
        );
    }
}

#[test]
fn tls_keys_merge_like_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "seqwatch.toml",
        "[tls]\nports = [8443]\ndetect_hello = false\nlog_prefix = true\n",
    );
    let config = path.to_str().unwrap();
    let defaults = merged(&[]).unwrap();
    assert_eq!(defaults.tls_ports.0, settings::DEFAULT_TLS_PORTS.to_vec());
    assert!(defaults.tls_detect_hello && !defaults.tls_log_prefix);
    let from_file = merged(&["--config", config]).unwrap();
    assert_eq!(from_file.tls_ports.0, [8443]);
    assert!(!from_file.tls_detect_hello && from_file.tls_log_prefix);
    let overridden = merged(&[
        "--config",
        config,
        "--tls-ports",
        "",
        "--tls-detect-hello",
        "true",
    ])
    .unwrap();
    assert_eq!(
        overridden.tls_ports.0,
        Vec::<u16>::new(),
        "an empty list: none"
    );
    assert!(overridden.tls_detect_hello);
}

#[test]
fn the_event_log_size_merges_and_is_range_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "seqwatch.toml",
        "event_log_max_bytes = 2097152\n",
    );
    let config = path.to_str().unwrap();
    assert_eq!(
        merged(&[]).unwrap().event_log_max_bytes,
        settings::EVENT_LOG_MAX_BYTES.default
    );
    let from_file = merged(&["--config", config]).unwrap();
    assert_eq!(from_file.event_log_max_bytes, 2 << 20);
    let overridden = merged(&["--config", config, "--event-log-max-bytes", "3145728"]);
    assert_eq!(overridden.unwrap().event_log_max_bytes, 3 << 20);
    let (status, error) = check_config("event_log_max_bytes = 4096\n");
    assert_eq!(status, 2);
    assert!(
        error.ends_with(
            "seqwatch.toml:1: key `event_log_max_bytes`: 4096 is out of range: \
             expected 1048576 to 1099511627776\n"
        ),
        "{error}"
    );
}

/// `netns_only` means something with `netns = "all"` only: alone, in the file or on the
/// command line, it is refused with a message that says what it needs.
#[test]
fn netns_only_without_netns_all_is_refused() {
    let (code, message) = check_config("netns_only = [\"web\"]\n");
    assert_eq!(code, 2, "{message}");
    assert!(message.contains("netns_only (web)"), "{message}");
    assert!(message.contains("needs netns = \"all\""), "{message}");
    assert_eq!(
        check_config("netns = \"all\"\nnetns_only = [\"web\"]\n").0,
        0
    );

    let refused = merged(&["--netns-only", "web,db"]).unwrap_err();
    assert!(refused.0.contains("netns_only (web, db)"), "{}", refused.0);
    let accepted = merged(&["--netns", "all", "--netns-only", "web,db"]).unwrap();
    assert_eq!(accepted.netns_only.0, ["web", "db"]);
}
