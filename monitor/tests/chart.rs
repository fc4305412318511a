//! The Helm chart (packaging/helm/seqwatch), without Helm, which is not packaged for Debian:
//! its values are checked against values.schema.json as Helm checks them at install, and its
//! templates are rendered by helm-render/main.go (Go's text/template with sprig's functions,
//! Helm's engine, built from Debian's packages) for several value sets, then parsed and
//! compared with the reference manifest packaging/kubernetes/seqwatch-daemonset.yaml, which
//! tests/packaging.rs runs. Not checked: Helm's own chart loading and `helm lint`'s rules,
//! and the Kubernetes API's validation of the rendered objects.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use serde::Deserialize as _;
use serde_json::{Value as Json, json};
use serde_norway::Value as Yaml;

const RELEASE: &str = "seqwatch";
const NAMESPACE: &str = "seqwatch";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_dir() -> PathBuf {
    repo().join("packaging/helm/seqwatch")
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn default_values() -> Json {
    read_yaml(&chart_dir().join("values.yaml"))
}

/// `overrides` merged into values.yaml as Helm merges `--values`: maps key by key, anything
/// else replaced.
fn values_with(overrides: Json) -> Json {
    fn merge(base: &mut Json, overrides: Json) {
        match (base, overrides) {
            (Json::Object(base), Json::Object(overrides)) => {
                for (key, value) in overrides {
                    merge(base.entry(key).or_insert(Json::Null), value);
                }
            }
            (base, overrides) => *base = overrides,
        }
    }
    let mut values = default_values();
    merge(&mut values, overrides);
    values
}

/// Every way `values` breaks values.schema.json, as messages; empty when it holds.
fn schema_errors(values: &Json) -> Vec<String> {
    let schema: Json = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("values.schema.json is a schema");
    validator
        .iter_errors(values)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

/// helm-render, built once per test run under target/tmp.
fn renderer() -> &'static Path {
    static RENDERER: OnceLock<PathBuf> = OnceLock::new();
    RENDERER.get_or_init(|| {
        let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-render");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm-render");
        // GOPATH mode: the imports are Debian's packages under /usr/share/gocode, offline.
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(&source)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .output()
            .expect("go (./x setup installs golang-go and the sprig and yaml packages)");
        assert!(
            out.status.success(),
            "go build helm-render: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        binary
    })
}

/// helm-render's output for `values` (not checked against the schema), or its error.
fn run_renderer(values: &Json) -> Result<String, String> {
    let mut child = Command::new(renderer())
        .arg(chart_dir())
        .args([RELEASE, NAMESPACE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), values).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).unwrap())
}

/// The chart's objects for `values`, which must satisfy the schema, as `helm template` would
/// render them.
fn render(values: &Json) -> Vec<Yaml> {
    let errors = schema_errors(values);
    assert!(errors.is_empty(), "values break the schema: {errors:#?}");
    let text = run_renderer(values).unwrap_or_else(|error| panic!("{error}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Yaml::deserialize(document).unwrap_or_else(|e| panic!("{e}\n{text}")))
        .collect()
}

fn kinds(objects: &[Yaml]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect()
}

fn find<'a>(objects: &'a [Yaml], kind: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(objects)))
}

fn manifest() -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo().join("packaging/kubernetes/seqwatch-daemonset.yaml"))
        .unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Yaml::deserialize(document).unwrap())
        .collect()
}

fn strings(value: &Yaml) -> Vec<&str> {
    let list = value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"));
    list.iter().map(|v| v.as_str().unwrap()).collect()
}

fn pod_spec(objects: &[Yaml]) -> &Yaml {
    &find(objects, "DaemonSet")["spec"]["template"]["spec"]
}

fn container(objects: &[Yaml]) -> &Yaml {
    &pod_spec(objects)["containers"][0]
}

/// values.yaml holds, and the schema is not vacuous: each bad value is refused.
#[test]
fn the_default_values_satisfy_the_schema_which_refuses_bad_ones() {
    assert_eq!(schema_errors(&default_values()), Vec::<String>::new());
    let bad = [
        ("netns", json!({"netns": "host"})),
        (
            "CAP_ prefix",
            json!({"capabilities": ["BPF", "NET_ADMIN", "PERFMON", "CAP_SYS_ADMIN"]}),
        ),
        (
            "a required capability left out",
            json!({"capabilities": ["BPF", "NET_ADMIN"]}),
        ),
        ("port", json!({"metricsPort": 70000})),
        ("unknown key", json!({"imageTag": "1"})),
        (
            "two monitors",
            json!({"podMonitor": {"enabled": true}, "serviceMonitor": {"enabled": true}}),
        ),
        (
            "web config without web.yml",
            json!({"webConfig": {"enabled": true}}),
        ),
        (
            "web config from two sources",
            json!({"webConfig": {"enabled": true, "existingSecret": "s", "webYml": "x: 1"}}),
        ),
        (
            "monitor endpoint overriding the port",
            json!({"podMonitor": {"endpoint": {"port": "x"}}}),
        ),
        (
            "Localhost seccomp without a profile",
            json!({"seccompProfile": {"type": "Localhost"}}),
        ),
        (
            "Unconfined seccomp",
            json!({"seccompProfile": {"type": "Unconfined"}}),
        ),
    ];
    for (what, overrides) in bad {
        assert!(
            !schema_errors(&values_with(overrides)).is_empty(),
            "the schema accepts {what}"
        );
    }
}

/// The chart's version and appVersion are the workspace's, and with the defaults it renders
/// exactly the reference manifest's pod (image, capabilities, probes, mounts...) and
/// configuration: what tests/packaging.rs runs under podman is what the chart deploys.
#[test]
fn the_default_values_render_the_reference_daemonset() {
    let chart: Yaml = read_yaml(&chart_dir().join("Chart.yaml"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));

    let objects = render(&default_values());
    assert_eq!(kinds(&objects), ["ConfigMap", "DaemonSet"]);
    let reference = manifest();
    assert_eq!(pod_spec(&objects), pod_spec(&reference));
    let config_map = find(&objects, "ConfigMap");
    assert_eq!(config_map["data"], find(&reference, "ConfigMap")["data"]);
    for object in &objects {
        assert_eq!(object["metadata"]["namespace"], NAMESPACE);
    }

    let daemon_set = find(&objects, "DaemonSet");
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
    let annotations = &template["metadata"]["annotations"];
    for (key, value) in find(&reference, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&annotations[key], value, "annotation {key:?}");
    }
    assert_eq!(
        pod_spec(&objects)["volumes"][0]["configMap"]["name"],
        config_map["metadata"]["name"]
    );
}

/// `netns: all` adds hostPID, CAP_SYS_ADMIN, CAP_SYS_PTRACE, `--netns all` and the kubelet's
/// pod log directories and container log links read-only (the pods' and containers' names),
/// and changes nothing else.
#[test]
fn netns_all_adds_host_pid_sys_admin_sys_ptrace_and_pod_names_and_nothing_else() {
    let default = render(&default_values());
    let all = render(&values_with(json!({"netns": "all"})));
    let pod = pod_spec(&all);
    assert_eq!(pod["hostPID"], true);
    let container = &pod["containers"][0];
    assert_eq!(
        strings(&container["securityContext"]["capabilities"]["add"]),
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"]
    );
    assert!(strings(&container["args"]).ends_with(&["--netns", "all"]));
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let log_dirs = ["/var/log/pods", "/var/log/containers"];
    for (n, path) in log_dirs.into_iter().enumerate() {
        let mount = &mounts[mounts.len() - log_dirs.len() + n];
        assert_eq!(mount["mountPath"], path);
        assert_eq!(mount["readOnly"], true);
        let volume = &volumes[volumes.len() - log_dirs.len() + n];
        assert_eq!(volume["name"], mount["name"]);
        assert_eq!(volume["hostPath"]["path"], path);
    }

    let mut undone = pod.clone();
    let undone_map = undone.as_mapping_mut().unwrap();
    undone_map.remove("hostPID");
    let undone_container = &mut undone_map["containers"][0];
    let added = undone_container["securityContext"]["capabilities"]["add"]
        .as_sequence_mut()
        .unwrap();
    added.truncate(added.len() - 2);
    let args = undone_container["args"].as_sequence_mut().unwrap();
    args.truncate(args.len() - 2);
    let mounts = undone_container["volumeMounts"].as_sequence_mut().unwrap();
    mounts.truncate(mounts.len() - log_dirs.len());
    let volumes = undone_map["volumes"].as_sequence_mut().unwrap();
    volumes.truncate(volumes.len() - log_dirs.len());
    assert_eq!(&undone, pod_spec(&default));
    assert_eq!(pod_spec(&default)["hostPID"], Yaml::Null);
}

/// A web.yml from the values goes into the chart's Secret, mounted read-only where
/// `--web-config` points; an existing Secret is mounted instead, with no Secret rendered; the
/// probes stop speaking plain HTTP. The web.yml passes `seqwatch check-config`.
#[test]
fn the_web_config_secret_is_mounted_where_the_flag_points() {
    let hash = bcrypt::hash("scrape-me", 10).unwrap();
    let web_yml = format!("basic_auth_users:\n  prometheus: '{hash}'\n");
    let objects = render(&values_with(
        json!({"webConfig": {"enabled": true, "webYml": web_yml, "tlsSecret": "seqwatch-tls"}}),
    ));
    assert_eq!(kinds(&objects), ["ConfigMap", "DaemonSet", "Secret"]);
    let secret = find(&objects, "Secret");
    assert_eq!(secret["stringData"]["web.yml"], web_yml.as_str());
    let flag_path = web_config_flag(container(&objects));
    assert_eq!(
        mounted_secret(&objects, flag_path.parent().unwrap()),
        secret["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(
        mounted_secret(&objects, Path::new("/etc/seqwatch-tls")),
        "seqwatch-tls"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let probe = &container(&objects)[probe];
        assert_eq!(probe["tcpSocket"]["port"], "metrics");
        assert!(probe["httpGet"].is_null());
    }
    assert_web_config_is_valid(find(&objects, "ConfigMap"), &web_yml);

    let existing = render(&values_with(
        json!({"webConfig": {"enabled": true, "existingSecret": "mine"}}),
    ));
    assert_eq!(kinds(&existing), ["ConfigMap", "DaemonSet"]);
    let flag_path = web_config_flag(container(&existing));
    assert_eq!(
        mounted_secret(&existing, flag_path.parent().unwrap()),
        "mine"
    );
}

fn web_config_flag(container: &Yaml) -> PathBuf {
    let args = strings(&container["args"]);
    let at = args
        .iter()
        .position(|a| *a == "--web-config")
        .expect("--web-config");
    PathBuf::from(args[at + 1])
}

/// The name of the Secret mounted read-only at `path`.
fn mounted_secret<'a>(objects: &'a [Yaml], path: &Path) -> &'a str {
    let mount = container(objects)["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == path)
        .unwrap_or_else(|| panic!("nothing mounted at {}", path.display()));
    assert_eq!(mount["readOnly"], true);
    let volume = pod_spec(objects)["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    volume["secret"]["secretName"].as_str().unwrap()
}

/// The rendered seqwatch.toml naming the web.yml, through `seqwatch check-config`.
fn assert_web_config_is_valid(config_map: &Yaml, web_yml: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yml"), web_yml).unwrap();
    let config = config_map["data"]["seqwatch.toml"].as_str().unwrap();
    // web_config is a top-level key: it goes before the first table.
    let config = format!("web_config = \"web.yml\"\n{config}");
    std::fs::write(dir.path().join("seqwatch.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_seqwatch"))
        .arg("check-config")
        .arg(dir.path().join("seqwatch.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PodMonitor, or a headless Service and a ServiceMonitor, that select the DaemonSet's pods,
/// scrape its `metrics` port and set job="seqwatch" for the shipped rules; the monitors carry
/// the labels Prometheus selects them by and the extra endpoint fields.
#[test]
fn the_monitors_scrape_the_daemonsets_metrics_port_as_job_seqwatch() {
    let extra = json!({"enabled": true, "labels": {"release": "kube-prometheus"}, "endpoint": {"interval": "30s"}});
    let objects = render(&values_with(json!({"podMonitor": extra})));
    assert_eq!(kinds(&objects), ["ConfigMap", "DaemonSet", "PodMonitor"]);
    let pod_labels = &find(&objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"];
    let pod_monitor = find(&objects, "PodMonitor");
    assert_selects(&pod_monitor["spec"]["selector"]["matchLabels"], pod_labels);
    assert_endpoint(&pod_monitor["spec"]["podMetricsEndpoints"][0], pod_monitor);
    assert_eq!(container(&objects)["ports"][0]["name"], "metrics");

    let objects = render(&values_with(json!({"serviceMonitor": extra})));
    assert_eq!(
        kinds(&objects),
        ["ConfigMap", "DaemonSet", "Service", "ServiceMonitor"]
    );
    let pod_labels = &find(&objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"];
    let service = find(&objects, "Service");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_selects(&service["spec"]["selector"], pod_labels);
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["targetPort"], "metrics");
    let service_monitor = find(&objects, "ServiceMonitor");
    assert_selects(
        &service_monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"],
    );
    let endpoint = &service_monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_endpoint(endpoint, service_monitor);
}

/// Every label of `selector` is among `labels`.
fn assert_selects(selector: &Yaml, labels: &Yaml) {
    let selector = selector.as_mapping().unwrap();
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "selector {key:?}");
    }
}

fn assert_endpoint(endpoint: &Yaml, monitor: &Yaml) {
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["interval"], "30s");
    let relabelings = endpoint["relabelings"].as_sequence().unwrap();
    let job: BTreeSet<(&str, &str)> = relabelings
        .iter()
        .map(|r| {
            (
                r["targetLabel"].as_str().unwrap(),
                r["replacement"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(job, BTreeSet::from([("job", "seqwatch")]));
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus");
}

/// A missing value is an error, not an empty string: the renderer is as strict as
/// `helm lint --strict`, so a template naming a value that values.yaml lacks fails here.
#[test]
fn the_renderer_fails_on_a_value_the_templates_need_but_values_lack() {
    let mut values = default_values();
    values.as_object_mut().unwrap().remove("logLevel");
    let error = run_renderer(&values).expect_err("rendered without logLevel");
    assert!(error.contains("logLevel"), "{error}");
}
