//! Packaging: the .deb that `cargo deb` builds from the already-built release binary, installed
//! with dpkg into a scratch root; the Kubernetes DaemonSet, checked without a cluster, and
//! its container's restrictions reproduced around the real daemon in a lab namespace; and the
//! container image (`./x image`) run by podman as the DaemonSet describes.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use common::{
    daemon::{assert_tcp_event_programs_attached, attachments, http_get_from},
    lab::{connect_many, listen},
    prometheus::series_value,
    wait_for,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use seqwatch::lab::{Lab, LabOptions};
use serde::Deserialize as _;
use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `command`; its output if it succeeded, else a failure with everything it printed.
fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo deb --no-build`: packages the release binary this test was built with, without a
/// second build (and so without waiting for the build lock `cargo test` may hold).
fn build_deb(out_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "deb",
            "--no-build",
            "--offline",
            "-p",
            "seqwatch",
            "--output",
        ])
        .arg(out_dir)
        .current_dir(repo())
        .output()
        .expect("run cargo deb");
    assert!(
        out.status.success(),
        "cargo deb (installed by ./x setup: cargo install --locked cargo-deb): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out_dir.display());
    debs.into_iter().next().unwrap()
}

/// A dpkg database in `root` with nothing installed; libc6 and friends are the host's, so
/// the install forces past the unmet dependencies, which the test checks separately.
fn dpkg_install(root: &Path, deb: &Path) {
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--install"])
        .arg(deb));
}

fn dpkg_query(root: &Path, format: &str) -> String {
    let admin = root.join("var/lib/dpkg");
    stdout(&run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args([
            "--show",
            &format!("--showformat={format}"),
            "seqwatch",
        ])))
}

/// (installed path, source in the repository) of every file the package installs besides the
/// binary and the generated copyright file; all mode 0644.
fn expected_files() -> Vec<(String, PathBuf)> {
    let mut files = vec![
        (
            "lib/systemd/system/seqwatch.service".to_owned(),
            repo().join("packaging/seqwatch.service"),
        ),
        (
            "etc/seqwatch/seqwatch.toml".to_owned(),
            repo().join("packaging/seqwatch.toml"),
        ),
        (
            "usr/share/doc/seqwatch/README.md".to_owned(),
            repo().join("README.md"),
        ),
    ];
    let trees = [
        (
            "dashboards/grafana",
            "json",
            "usr/share/seqwatch/dashboards/grafana",
        ),
        (
            "dashboards/provisioning/dashboards",
            "yaml",
            "usr/share/seqwatch/dashboards/provisioning/dashboards",
        ),
        (
            "dashboards/provisioning/datasources",
            "yaml",
            "usr/share/seqwatch/dashboards/provisioning/datasources",
        ),
        (
            "dashboards/prometheus",
            "yml",
            "usr/share/seqwatch/dashboards/prometheus",
        ),
        (
            "packaging/kubernetes",
            "yaml",
            "usr/share/seqwatch/kubernetes",
        ),
        ("docs", "md", "usr/share/doc/seqwatch/docs"),
    ];
    for (source, extension, target) in trees {
        for entry in std::fs::read_dir(repo().join(source)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == extension) {
                let name = path.file_name().unwrap().to_str().unwrap();
                files.push((format!("{target}/{name}"), path.clone()));
            }
        }
    }
    files
}

#[test]
fn the_deb_installs_the_binary_unit_config_and_dashboards() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let deb = build_deb(&out_dir);
    let root = dir.path().join("root");
    dpkg_install(&root, &deb);

    assert_eq!(
        dpkg_query(&root, "${Status} ${Version}"),
        format!("install ok installed {}-1", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        dpkg_query(&root, "${Depends}").contains("libc6"),
        "Depends: libc6"
    );
    // Files under /etc are conffiles: an upgrade keeps the operator's edits.
    let conffiles = dpkg_query(&root, "${Conffiles}");
    assert_eq!(
        conffiles.split_whitespace().next(),
        Some("/etc/seqwatch/seqwatch.toml"),
        "conffiles: {conffiles}"
    );

    let binary = root.join("usr/bin/seqwatch");
    assert_eq!(mode(&binary), 0o755);
    // The unit is byte for byte packaging/seqwatch.service, which tests/config.rs lints and
    // runs through `systemd-analyze verify`; its ExecStart= is the binary checked here.
    let expected = expected_files();
    for (installed, source) in &expected {
        let path = root.join(installed);
        let content = std::fs::read(&path).unwrap_or_else(|e| panic!("/{installed}: {e}"));
        assert_eq!(
            content,
            std::fs::read(source).unwrap(),
            "/{installed} is {}",
            source.display()
        );
        assert_eq!(mode(&path), 0o644, "mode of /{installed}");
    }
    // Nothing else: no stray file slips into the package.
    let mut want: BTreeSet<String> = expected
        .into_iter()
        .map(|(path, _)| format!("/{path}"))
        .collect();
    want.extend(["/usr/bin/seqwatch", "/usr/share/doc/seqwatch/copyright"].map(String::from));
    let listed = dpkg_query(&root, "${db-fsys:Files}");
    let installed: BTreeSet<String> = listed
        .split_whitespace()
        .filter(|path| root.join(path.trim_start_matches('/')).is_file())
        .map(str::to_owned)
        .collect();
    assert_eq!(installed, want);

    let version = stdout(&run(Command::new(&binary).arg("version")));
    assert!(
        version.starts_with(&format!("seqwatch {}\n", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    run(Command::new(&binary)
        .arg("check-config")
        .arg(root.join("etc/seqwatch/seqwatch.toml")));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn kubernetes_manifest() -> Vec<Yaml> {
    let path = repo().join("packaging/kubernetes/seqwatch-daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Yaml::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn strings(value: &Yaml) -> BTreeSet<String> {
    strings_in_order(value).into_iter().collect()
}

/// The capabilities packaging/seqwatch.service grants, without the CAP_ prefix.
fn unit_capabilities() -> BTreeSet<String> {
    let unit = std::fs::read_to_string(repo().join("packaging/seqwatch.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace()
        .map(|cap| cap.strip_prefix("CAP_").unwrap().to_owned())
        .collect()
}

/// The manifest parses, and its DaemonSet runs the daemon on the host's network with exactly
/// the unit's capabilities, unprivileged, on a read-only root, with no host paths, a config
/// that `seqwatch check-config` accepts, and consistent scrape annotations and ports.
#[test]
fn the_daemonset_runs_the_daemon_with_the_units_privileges_only() {
    let documents = kubernetes_manifest();
    let find = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in the manifest"))
    };
    let (namespace, config_map, daemon_set) =
        (find("Namespace"), find("ConfigMap"), find("DaemonSet"));
    assert_eq!(daemon_set["apiVersion"], "apps/v1");
    for object in [config_map, daemon_set] {
        assert_eq!(
            object["metadata"]["namespace"],
            namespace["metadata"]["name"]
        );
    }
    let template = &daemon_set["spec"]["template"];
    let selector = daemon_set["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    for (key, value) in selector {
        assert_eq!(
            &template["metadata"]["labels"][key], value,
            "selector {key:?}"
        );
    }

    let pod = &template["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "the host's interfaces, not the pod's"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(pod["hostPID"].is_null() && pod["hostIPC"].is_null());
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    let capabilities = &security["capabilities"];
    assert_eq!(
        strings(&capabilities["drop"]),
        BTreeSet::from(["ALL".to_owned()])
    );
    let granted = strings(&capabilities["add"]);
    let without_prefix = |cap: caps::Capability| cap.to_string().replace("CAP_", "");
    let required: BTreeSet<String> = seqwatch::kernel::caps::REQUIRED
        .into_iter()
        .map(without_prefix)
        .collect();
    assert_eq!(granted, required, "what the daemon checks for at start");
    assert_eq!(
        granted,
        unit_capabilities(),
        "the systemd unit's capabilities"
    );
    assert_no_host_paths(pod);
    assert_config_is_mounted_and_valid(pod, container, config_map);
    assert_scrape_port_is_consistent(template, container);
}

/// Nothing of the host's file system: the BTF tracepoints need no tracefs.
fn assert_no_host_paths(pod: &Yaml) {
    let host_paths: Vec<&Yaml> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|volume| !volume["hostPath"].is_null())
        .collect();
    assert!(host_paths.is_empty(), "{host_paths:?}");
}

/// The value after `flag` in the container's args.
fn argument_of<'a>(container: &'a Yaml, flag: &str) -> &'a str {
    let args = container["args"].as_sequence().expect("container args");
    let at = args.iter().position(|a| a == flag);
    let value = at.and_then(|at| args.get(at + 1)).and_then(Yaml::as_str);
    value.unwrap_or_else(|| panic!("no {flag} VALUE in the container's args"))
}

/// `--config DIR/FILE` names a file of the ConfigMap, mounted at DIR, which check-config accepts.
fn assert_config_is_mounted_and_valid(pod: &Yaml, container: &Yaml, config_map: &Yaml) {
    let config = Path::new(argument_of(container, "--config"));
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == config.parent().unwrap())
        .expect("the --config directory is a volume mount");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let file = config.file_name().unwrap().to_str().unwrap();
    let text = config_map["data"][file]
        .as_str()
        .expect("the ConfigMap holds the --config file");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(file);
    std::fs::write(&copy, text).unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_seqwatch"))
        .arg("check-config")
        .arg(&copy));
}

/// --listen's port is the container's `metrics` port and the prometheus.io/port annotation;
/// the address it listens on comes from the downward API.
fn assert_scrape_port_is_consistent(template: &Yaml, container: &Yaml) {
    let listen = argument_of(container, "--listen");
    let (host, port) = listen.rsplit_once(':').unwrap();
    let variable = host
        .strip_prefix("$(")
        .and_then(|h| h.strip_suffix(')'))
        .expect("--listen $(VAR):PORT");
    let env = container["env"].as_sequence().unwrap();
    let defined = env
        .iter()
        .find(|e| e["name"] == variable)
        .expect("the --listen variable is defined");
    assert_eq!(
        defined["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    let ports = container["ports"].as_sequence().unwrap();
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(metrics["containerPort"].as_u64().unwrap().to_string(), port);
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
}

/// What a container runtime gives the DaemonSet's container, made with a mount namespace and
/// setpriv: a fresh read-only sysfs (so no bpffs, no tracefs), a read-only root, uid 0 with
/// only the granted capabilities (`$1`, setpriv's syntax) in the bounding set, no_new_privs.
/// The rest of the arguments are the container's command and args.
const AS_THE_CONTAINER: &str = r#"set -e
caps=$1; shift
umount -l /sys
mount -t sysfs -o ro sysfs /sys
mount -o remount,bind,ro /
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,"$caps" -- "$@""#;

/// Capability numbers of CAP_NET_ADMIN, CAP_PERFMON and CAP_BPF.
const NET_ADMIN_PERFMON_BPF: u64 = (1 << 12) | (1 << 38) | (1 << 39);

/// Kills the process on drop if the test did not stop it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The DaemonSet's container as the manifest describes it (its command, args, env, ConfigMap and
/// capabilities), in the server namespace of a lab standing for the node: it attaches, serves
/// /metrics on the node's address to another host, and samples the node's SYN-ACKs.
#[test]
fn the_daemonset_container_works_within_its_restrictions() {
    let documents = kubernetes_manifest();
    let config_map = documents.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let daemon_set = documents.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let container = &daemon_set["spec"]["template"]["spec"]["containers"][0];
    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let config_path = argument_of(container, "--config");
    let file = Path::new(config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let config = dir.path().join(file);
    std::fs::write(&config, config_map["data"][file].as_str().unwrap()).unwrap();
    let node_ip = lab.server_v4.to_string();
    let args: Vec<String> = strings_in_order(&container["args"])
        .into_iter()
        .map(|arg| arg.replace(config_path, config.to_str().unwrap()))
        .map(|arg| arg.replace("$(NODE_IP)", &node_ip))
        .collect();
    let caps: Vec<String> = strings_in_order(&container["securityContext"]["capabilities"]["add"])
        .iter()
        .map(|cap| format!("+{}", cap.to_lowercase()))
        .collect();
    let log = dir.path().join("daemon.log");
    let mut daemon = Running(
        lab.command_in(&lab.server_ns, "unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                AS_THE_CONTAINER,
                "sh",
            ])
            .arg(caps.join(","))
            .arg(the_images_binary(container))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Scraped from the other namespace, as Prometheus on another host would.
    let metrics_addr = args
        .iter()
        .find(|a| a.starts_with(&node_ip))
        .unwrap()
        .clone();
    let scrape = || http_get_from(&lab, &lab.client_ns, &metrics_addr, "/metrics");
    let attached = "seqwatch_program_attached{direction=\"egress\",interface=\"veth-s\",program=\"synack_egress\"}";
    let up = wait_for(Duration::from_secs(60), || {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("the daemon exited ({status}):\n{}", daemon_log());
        }
        scrape().is_some_and(|m| series_value(&m, attached) == Some(1.0))
    });
    assert!(up, "not attached and served within 60 s:\n{}", daemon_log());
    let tracepoint =
        "seqwatch_program_attached{direction=\"\",interface=\"\",program=\"inet_sock_set_state\"}";
    assert_eq!(
        scrape().and_then(|m| series_value(&m, tracepoint)),
        Some(1.0),
        "the tracepoint programs, without tracefs:\n{}",
        daemon_log()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(
        u64::from_str_radix(&field("CapBnd:"), 16).unwrap(),
        NET_ADMIN_PERFMON_BPF
    );

    let service = SocketAddr::new(lab.server_v4.into(), 8080);
    listen(&lab, &lab.server_ns, service);
    connect_many(&lab, &lab.client_ns, service, 20);
    // Per service: the scrapes, too, are connections to this node, and are sampled.
    let samples = format!("seqwatch_isn_samples{{service=\"{service}\"}}");
    let sampled = wait_for(Duration::from_secs(10), || {
        scrape().is_some_and(|m| series_value(&m, &samples) == Some(20.0))
    });
    assert!(sampled, "20 SYN-ACKs sampled: {:?}", scrape());

    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = daemon.0.wait().unwrap();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        daemon_log()
    );
}

/// The image holds /usr/bin/seqwatch; this host has the binary under test.
fn the_images_binary(container: &Yaml) -> &'static str {
    assert_eq!(
        strings_in_order(&container["command"]),
        ["/usr/bin/seqwatch"]
    );
    env!("CARGO_BIN_EXE_seqwatch")
}

fn strings_in_order(value: &Yaml) -> Vec<String> {
    let list = value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"));
    list.iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The image `./x image` built, as a container runtime runs the DaemonSet's container: podman
/// with the manifest's image, args, env, capabilities, volumes and security context, in a lab
/// namespace standing for the node's network (hostNetwork). It attaches every program, serves
/// /metrics on the node's address to another host, samples, holds only CAP_NET_ADMIN once
/// attached, and on `podman stop` (SIGTERM) detaches everything and exits 0. The image is
/// FROM scratch, so it runs only because the binary is static, and nothing is pulled.
#[test]
fn the_image_runs_as_the_daemonset_container() {
    let documents = kubernetes_manifest();
    let config_map = documents.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let daemon_set = documents.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &daemon_set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let image = container["image"].as_str().unwrap();
    assert_eq!(
        image,
        format!("localhost/seqwatch:{}", env!("CARGO_PKG_VERSION")),
        "the DaemonSet runs the image ./x image builds"
    );
    assert_image_is_current(image);
    assert_image_holds_only_the_binary_and_config(image);
    assert_eq!(
        podman_inspect(&["image", "inspect"], image, "{{json .Config.Entrypoint}}"),
        serde_json::to_string(&strings_in_order(&container["command"])).unwrap(),
        "the image's entrypoint is the DaemonSet's command, so either may start it"
    );

    let lab = Lab::create(&LabOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node_ip = lab.server_v4.to_string();
    let mut run = vec![
        "run".to_owned(),
        "--detach".to_owned(),
        "--pull=never".to_owned(),
        format!("--network=ns:{}", Lab::netns_path(&lab.server_ns).display()),
    ];
    run.extend(podman_host_workarounds(dir.path()));
    run.extend(security_flags(container));
    run.extend(volume_flags(pod, container, config_map, dir.path()));
    for variable in container["env"].as_sequence().unwrap() {
        if let Some(value) = variable["value"].as_str() {
            run.push(format!(
                "--env={}={value}",
                variable["name"].as_str().unwrap()
            ));
        }
    }
    let name = format!("seqwatch-test-{}", lab.server_ns);
    run.push(format!("--name={name}"));
    run.push(image.to_owned());
    // The container's args replace the image's CMD; kubelet expands $(NODE_IP).
    run.extend(
        strings_in_order(&container["args"])
            .into_iter()
            .map(|arg| arg.replace("$(NODE_IP)", &node_ip)),
    );
    let podman = PodmanContainer(name);
    run_podman(&run);

    let logs = || podman.logs();
    let metrics_addr = format!(
        "{node_ip}:{}",
        container["ports"][0]["containerPort"].as_u64().unwrap()
    );
    let scrape = || http_get_from(&lab, &lab.client_ns, &metrics_addr, "/metrics");
    let attached = format!(
        "seqwatch_program_attached{{direction=\"egress\",interface=\"{}\",program=\"synack_egress\"}}",
        lab.server_if
    );
    let up = wait_for(Duration::from_secs(60), || {
        assert!(podman.running(), "the container exited:\n{}", logs());
        scrape().is_some_and(|m| series_value(&m, &attached) == Some(1.0))
    });
    assert!(up, "not attached and served within 60 s:\n{}", logs());
    let metrics = scrape().unwrap();
    assert_tcp_event_programs_attached(&metrics, logs);

    let pid = podman_inspect(&["container", "inspect"], &podman.0, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(name));
        line.unwrap().trim().to_owned()
    };
    let capabilities = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
    assert_eq!(field("Uid:").split_whitespace().next(), Some("0"));
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(capabilities("CapBnd:"), NET_ADMIN_PERFMON_BPF);
    assert_eq!(
        capabilities("CapEff:"),
        1 << 12,
        "CAP_NET_ADMIN alone after attach"
    );

    let service = SocketAddr::new(lab.server_v4.into(), 8080);
    listen(&lab, &lab.server_ns, service);
    connect_many(&lab, &lab.client_ns, service, 20);
    let samples = format!("seqwatch_isn_samples{{service=\"{service}\"}}");
    let sampled = wait_for(Duration::from_secs(10), || {
        scrape().is_some_and(|m| series_value(&m, &samples) == Some(20.0))
    });
    assert!(sampled, "20 SYN-ACKs sampled: {:?}\n{}", scrape(), logs());

    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    run_podman(&[
        "stop".to_owned(),
        format!("--time={grace}"),
        podman.0.clone(),
    ]);
    assert_eq!(
        podman_inspect(&["container", "inspect"], &podman.0, "{{.State.ExitCode}}"),
        "0",
        "exit status after SIGTERM:\n{}",
        logs()
    );
    let left = attachments(&lab, &lab.server_ns, &lab.server_if);
    assert!(left.is_empty(), "left attached: {left:?}");
}

/// What this project's machines need for rootful podman (Debian 12's 4.3) to run any
/// container; nothing here is about seqwatch. runc: crun 1.8 refuses a host whose cgroup v2
/// hierarchy holds a controller beside the v1 ones. Explicit limits: rootful podman otherwise
/// asks for 1048576 open files and processes, above this sandbox's hard limits, and raising a
/// hard limit needs CAP_SYS_RESOURCE, which the sandbox withholds (root is exempt from the
/// process limit anyway). The seccomp profile: see [`runtime_default_seccomp`].
fn podman_host_workarounds(dir: &Path) -> Vec<String> {
    vec![
        "--runtime=runc".to_owned(),
        "--ulimit=nofile=4096:4096".to_owned(),
        "--ulimit=nproc=4096:4096".to_owned(),
        format!(
            "--security-opt=seccomp={}",
            runtime_default_seccomp(dir).display()
        ),
    ]
}

/// The DaemonSet's `seccompProfile: RuntimeDefault` as containerd (1.6.9 and later) and Docker
/// (23 and later) define it: their default profiles allow bpf() to a holder of CAP_BPF.
/// podman's default (containers-common's, Debian 12's) allows it only with CAP_SYS_ADMIN, so
/// map creation fails with EPERM under it; this is that profile with the one rule added.
fn runtime_default_seccomp(dir: &Path) -> PathBuf {
    let podman_default = "/usr/share/containers/seccomp.json";
    let text = std::fs::read_to_string(podman_default).expect("podman's seccomp profile");
    let mut profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rules = profile["syscalls"].as_array_mut().unwrap();
    let mut denials = 0;
    for rule in rules.iter_mut() {
        let denies = rule["action"] == "SCMP_ACT_ERRNO";
        let names = rule["names"].as_array_mut().unwrap();
        if denies && names.iter().any(|n| n == "bpf") {
            names.retain(|n| n != "bpf");
            denials += 1;
        }
    }
    assert_eq!(
        denials, 1,
        "{podman_default}: one rule denies bpf() without CAP_SYS_ADMIN"
    );
    rules.push(serde_json::json!({
        "names": ["bpf"],
        "action": "SCMP_ACT_ALLOW",
        "includes": {"caps": ["CAP_BPF"]}
    }));
    let path = dir.join("seccomp.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    path
}

/// podman flags for the container's securityContext: every field it sets, or a failure.
fn security_flags(container: &Yaml) -> Vec<String> {
    let security = &container["securityContext"];
    let known = [
        "privileged",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "runAsUser",
        "runAsNonRoot",
        "capabilities",
        "seccompProfile",
    ];
    for key in security.as_mapping().unwrap().keys() {
        assert!(
            known.contains(&key.as_str().unwrap()),
            "securityContext.{key:?}: add it to podman's flags"
        );
    }
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], false);
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let capabilities = &security["capabilities"];
    assert_eq!(strings_in_order(&capabilities["drop"]), ["ALL"]);
    let user = security["runAsUser"].as_u64().unwrap();
    vec![
        "--security-opt=no-new-privileges".to_owned(),
        // Kubernetes mounts no tmpfs on a read-only root; podman would, on /tmp and /run.
        "--read-only".to_owned(),
        "--read-only-tmpfs=false".to_owned(),
        format!("--user={user}:{user}"),
        "--cap-drop=all".to_owned(),
        format!(
            "--cap-add={}",
            strings_in_order(&capabilities["add"]).join(",")
        ),
    ]
}

/// `--volume` flags for the container's mounts: a ConfigMap becomes a directory of its files,
/// an emptyDir an empty directory.
fn volume_flags(pod: &Yaml, container: &Yaml, config_map: &Yaml, dir: &Path) -> Vec<String> {
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    mounts
        .iter()
        .map(|mount| {
            let name = mount["name"].as_str().unwrap();
            let volume = volumes.iter().find(|v| v["name"] == name).unwrap();
            let source = dir.join(format!("volume-{name}"));
            std::fs::create_dir(&source).unwrap();
            if !volume["configMap"].is_null() {
                assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
                for (file, text) in config_map["data"].as_mapping().unwrap() {
                    std::fs::write(source.join(file.as_str().unwrap()), text.as_str().unwrap())
                        .unwrap();
                }
            } else {
                assert!(!volume["emptyDir"].is_null(), "volume {name}: {volume:?}");
            }
            let read_only = if mount["readOnly"] == true { ":ro" } else { "" };
            format!(
                "--volume={}:{}{read_only}",
                source.display(),
                mount["mountPath"].as_str().unwrap()
            )
        })
        .collect()
}

/// Built after the last change to what goes into it, and labelled with this version.
fn assert_image_is_current(image: &str) {
    assert_eq!(
        podman_inspect(
            &["image", "inspect"],
            image,
            "{{index .Labels \"org.opencontainers.image.version\"}}"
        ),
        env!("CARGO_PKG_VERSION")
    );
    let created: u64 = podman_inspect(&["image", "inspect"], image, "{{.Created.Unix}}")
        .parse()
        .unwrap();
    let inputs = [
        "Cargo.lock",
        "monitor/Cargo.toml",
        "monitor/build.rs",
        "monitor/src",
        "monitor-common/src",
        "monitor-ebpf/src",
        "packaging/container/Containerfile",
        "packaging/seqwatch.toml",
    ];
    for input in inputs {
        if let Some((path, modified)) = newest_file(&repo().join(input)) {
            assert!(
                modified <= created,
                "{image} is older than {}: run ./x image (./x test does)",
                path.display()
            );
        }
    }
}

/// The most recently modified file under `path` (or `path` itself), with its mtime.
fn newest_file(path: &Path) -> Option<(PathBuf, u64)> {
    let metadata = std::fs::metadata(path).unwrap();
    if metadata.is_dir() {
        let entries = std::fs::read_dir(path).unwrap();
        return entries
            .filter_map(|entry| newest_file(&entry.unwrap().path()))
            .max_by_key(|(_, modified)| *modified);
    }
    let modified = metadata.modified().unwrap();
    let seconds = modified.duration_since(std::time::UNIX_EPOCH).unwrap();
    Some((path.to_owned(), seconds.as_secs()))
}

/// FROM scratch: the binary and the default configuration, nothing else (no shell, no libc).
fn assert_image_holds_only_the_binary_and_config(image: &str) {
    let root = stdout(&run(Command::new("podman").args(["image", "mount", image])));
    let root = PathBuf::from(root.trim());
    let mut files = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    let config = std::fs::read(root.join("etc/seqwatch/seqwatch.toml"));
    let binary_mode = mode(&root.join("usr/bin/seqwatch"));
    run(Command::new("podman").args(["image", "unmount", image]));
    files.sort();
    assert_eq!(files, ["etc/seqwatch/seqwatch.toml", "usr/bin/seqwatch"]);
    assert_eq!(
        config.unwrap(),
        std::fs::read(repo().join("packaging/seqwatch.toml")).unwrap()
    );
    assert_eq!(binary_mode, 0o755);
}

fn run_podman(args: &[String]) -> Output {
    run(Command::new("podman").args(args))
}

/// One field of `podman image|container inspect`, as a Go template formats it.
fn podman_inspect(what: &[&str], name: &str, format: &str) -> String {
    let out = run(Command::new("podman")
        .args(what)
        .args(["--format", format, name]));
    stdout(&out).trim().to_owned()
}

/// A podman container, removed (killed if need be) on drop.
struct PodmanContainer(String);

impl PodmanContainer {
    fn running(&self) -> bool {
        podman_inspect(&["container", "inspect"], &self.0, "{{.State.Running}}") == "true"
    }

    fn logs(&self) -> String {
        let out = Command::new("podman").args(["logs", &self.0]).output();
        out.map(|out| {
            let printed = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&printed).into_owned()
        })
        .unwrap_or_default()
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", &self.0])
            .output();
    }
}
