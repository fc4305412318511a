//! The names a person knows a namespace's container or pod by, read from the container
//! runtimes' state files on the host (no runtime API, no Kubernetes client):
//!
//! - Docker: `/var/lib/docker/containers/<full id>/config.v2.json`, its `"Name"` (`"/name"`);
//! - podman (as root, overlay storage): `/var/lib/containers/storage/overlay-containers/
//!   containers.json`, each container's `"id"` and first of `"names"`;
//! - Kubernetes (kubelet's log layout, any runtime): `/var/log/pods/<namespace>_<pod>_<uid>/`,
//!   found by the pod's UID, gives the namespace and the pod's name; its one subdirectory, in a
//!   pod of one container, that container's name;
//! - Kubernetes, by container: `/var/log/containers/<pod>_<namespace>_<container>-<full id>.log`
//!   (kubelet's links to each container's log), the name of any container of a pod, the
//!   directory listed again only once it changed.
//!
//! Whoever starts a container chooses its name, so every name is sanitised and cut to
//! [`MAX_NAME`]; every file is read up to [`MAX_STATE_FILE`] bytes, every directory up to
//! [`MAX_DIR_ENTRIES`] entries. A file is parsed again only once it changed (its size, mtime or
//! inode), so a namespace still unnamed costs a stat per lookup. A missing or unreadable file
//! (the shipped unit's dynamic user cannot read Docker's and podman's root-only directories)
//! only leaves the names unknown.

use std::{
    collections::HashMap,
    fs::File,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;

use super::netns::{Identity, is_container_id};

/// Bytes read of a state file at most; a larger one is not parsed.
pub const MAX_STATE_FILE: u64 = 8 << 20;
/// Entries read of a directory at most (`/var/log/pods`, a pod's log directory,
/// `/var/log/containers`).
pub const MAX_DIR_ENTRIES: usize = 16_384;
/// Characters kept of a name.
pub const MAX_NAME: usize = 128;

/// Where the runtimes keep their state: the host's paths, or a test's copy of them.
#[derive(Clone, Debug)]
pub struct StateRoots {
    docker_containers: PathBuf,
    podman_containers: PathBuf,
    pod_logs: PathBuf,
    container_logs: PathBuf,
}

impl StateRoots {
    /// The host's.
    pub fn host() -> StateRoots {
        StateRoots::under(Path::new("/"))
    }

    /// The same layout under `root`.
    pub fn under(root: &Path) -> StateRoots {
        StateRoots {
            docker_containers: root.join("var/lib/docker/containers"),
            podman_containers: root
                .join("var/lib/containers/storage/overlay-containers/containers.json"),
            pod_logs: root.join("var/log/pods"),
            container_logs: root.join("var/log/containers"),
        }
    }
}

/// The runtimes' state, each file parsed once per change.
pub struct RuntimeNames {
    roots: StateRoots,
    /// Docker's config of each container looked up, by full ID.
    docker: HashMap<String, Cached<Option<String>>>,
    /// podman's containers: full ID → name.
    podman: Cached<HashMap<String, String>>,
    /// kubelet's pod log directories: pod UID → (namespace, pod name, directory).
    pods: Cached<HashMap<String, PodLogs>>,
    /// kubelet's container log links: full ID → container name.
    containers: Cached<HashMap<String, String>>,
}

#[derive(Clone, Debug)]
struct PodLogs {
    namespace: String,
    name: String,
    dir: PathBuf,
}

impl RuntimeNames {
    pub fn new(roots: StateRoots) -> RuntimeNames {
        RuntimeNames {
            roots,
            docker: HashMap::new(),
            podman: Cached::default(),
            pods: Cached::default(),
            containers: Cached::default(),
        }
    }

    /// Whether `identity` has an ID some name of which is not known yet.
    pub fn unnamed(identity: &Identity) -> bool {
        let container = identity.full_container_id.is_some() && identity.container_name.is_none();
        let pod = identity.pod.is_some() && identity.pod_name.is_none();
        container || pod
    }

    /// Fills in the names of `identity`'s container and pod that the state files give.
    pub fn name(&mut self, identity: &mut Identity) {
        if let Some(uid) = identity.pod.as_deref()
            && identity.pod_name.is_none()
            && let Some(pod) = self.pod(uid)
        {
            identity.namespace = label_value(&pod.namespace);
            identity.pod_name = label_value(&pod.name);
            if identity.container_name.is_none() {
                identity.container_name = only_container(&pod.dir);
            }
        }
        if let Some(id) = identity.full_container_id.as_deref()
            && identity.container_name.is_none()
        {
            identity.container_name = self.container_name(id);
        }
    }

    /// The name of the container whose full ID is `id`: Docker's, podman's or kubelet's.
    pub fn container_name(&mut self, id: &str) -> Option<String> {
        self.docker(id)
            .or_else(|| self.podman(id))
            .or_else(|| self.kubelet_container(id))
    }

    /// Forgets the Docker configs of containers no longer looked up.
    pub fn retain_containers(&mut self, keep: impl Fn(&str) -> bool) {
        self.docker.retain(|id, _| keep(id));
    }

    fn docker(&mut self, id: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(rename = "Name")]
            name: String,
        }
        let path = self.roots.docker_containers.join(id).join("config.v2.json");
        let cached = self.docker.entry(id.to_owned()).or_default();
        cached
            .refresh(&path, |path| {
                let config: Config = parse_json(path)?;
                label_value(config.name.trim_start_matches('/'))
            })
            .clone()
    }

    fn podman(&mut self, id: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Container {
            id: String,
            #[serde(default)]
            names: Vec<String>,
        }
        let containers = self.podman.refresh(&self.roots.podman_containers, |path| {
            let Some(containers) = parse_json::<Vec<Container>>(path) else {
                return HashMap::new();
            };
            containers
                .into_iter()
                .filter_map(|c| Some((c.id, label_value(c.names.first()?)?)))
                .collect()
        });
        containers.get(id).cloned()
    }

    fn kubelet_container(&mut self, id: &str) -> Option<String> {
        let links = &self.roots.container_logs;
        let containers = self.containers.refresh(links, container_log_links);
        containers.get(id).cloned()
    }

    fn pod(&mut self, uid: &str) -> Option<PodLogs> {
        let pods = self.pods.refresh(&self.roots.pod_logs, pod_log_dirs);
        let pod = pods.get(uid).cloned();
        if pod.is_none() {
            log::debug!(
                "pod {uid}: no log directory in {}",
                self.roots.pod_logs.display()
            );
        }
        pod
    }
}

/// `<namespace>_<pod name>_<uid>` directories of `dir` (names of Kubernetes objects hold no
/// `_`), by UID.
fn pod_log_dirs(dir: &Path) -> HashMap<String, PodLogs> {
    bounded_entries(dir)
        .filter_map(|entry| {
            let file_name = entry.file_name();
            let mut parts = file_name.to_str()?.splitn(3, '_');
            let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
            let pod = PodLogs {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                dir: entry.path(),
            };
            Some((uid.to_owned(), pod))
        })
        .collect()
}

/// `<pod>_<namespace>_<container>-<full id>.log` entries of `dir`, container name by full ID.
/// Kubernetes names hold no `_` and a container's at most 63 characters: an entry otherwise
/// shaped, or whose name is longer than [`MAX_NAME`], is not kubelet's and names nothing.
fn container_log_links(dir: &Path) -> HashMap<String, String> {
    bounded_entries(dir)
        .filter_map(|entry| {
            let file_name = entry.file_name();
            let mut parts = file_name.to_str()?.strip_suffix(".log")?.splitn(3, '_');
            let (_pod, _namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
            let (name, id) = container.rsplit_once('-')?;
            if !is_container_id(id) || name.chars().count() > MAX_NAME {
                return None;
            }
            Some((id.to_owned(), label_value(name)?))
        })
        .collect()
}

/// The name of the one container directory of a pod's log directory; none if it has several
/// (which of them the namespace's process is, the layout does not say) or none yet.
fn only_container(pod_dir: &Path) -> Option<String> {
    let mut containers =
        bounded_entries(pod_dir).filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()));
    let only = containers.next()?;
    if containers.next().is_some() {
        return None;
    }
    label_value(only.file_name().to_str()?)
}

/// The first [`MAX_DIR_ENTRIES`] entries of `dir` (none if it cannot be read).
fn bounded_entries(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    let entries = std::fs::read_dir(dir)
        .inspect_err(|err| log::debug!("{}: {err}", dir.display()))
        .ok();
    entries
        .into_iter()
        .flatten()
        .take(MAX_DIR_ENTRIES)
        .flatten()
}

/// A name as a label value: characters beside ASCII letters, digits, `.`, `-` and `_` become
/// `_`, cut to [`MAX_NAME`] characters; none if empty.
pub fn label_value(name: &str) -> Option<String> {
    let clean: String = name
        .chars()
        .take(MAX_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// A regular file's JSON, if it is at most [`MAX_STATE_FILE`] bytes and parses as `T`.
fn parse_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = read_capped(path)?;
    serde_json::from_slice(&bytes)
        .inspect_err(|err| log::debug!("{}: not what was expected: {err}", path.display()))
        .ok()
}

fn read_capped(path: &Path) -> Option<Vec<u8>> {
    // Non-blocking: a FIFO in its place must not stall the poll.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .inspect_err(|err| log::debug!("{}: {err}", path.display()))
        .ok()?;
    if !file.metadata().is_ok_and(|meta| meta.is_file()) {
        log::debug!("{}: not a regular file", path.display());
        return None;
    }
    let mut bytes = Vec::new();
    let read = file.take(MAX_STATE_FILE + 1).read_to_end(&mut bytes);
    if let Err(err) = read {
        log::debug!("{}: {err}", path.display());
        return None;
    }
    if bytes.len() as u64 > MAX_STATE_FILE {
        log::debug!(
            "{}: larger than {MAX_STATE_FILE} bytes, not read",
            path.display()
        );
        return None;
    }
    Some(bytes)
}

/// What a file or directory looked like when last parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// A file's parsed content, parsed again only once the file changed.
#[derive(Default)]
struct Cached<T> {
    stamp: Option<Stamp>,
    value: T,
}

impl<T: Default> Cached<T> {
    fn refresh(&mut self, path: &Path, parse: impl FnOnce(&Path) -> T) -> &T {
        let now = stamp(path);
        if now != self.stamp {
            self.value = if now.is_some() {
                parse(path)
            } else {
                T::default()
            };
            self.stamp = now;
        }
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const POD: &str = "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718";

    fn container(id: &str) -> Identity {
        Identity {
            container: Some(id[..12].to_owned()),
            full_container_id: Some(id.to_owned()),
            ..Identity::default()
        }
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(with_parent(path.to_owned()), bytes).unwrap();
    }

    fn docker_config(root: &Path, id: &str) -> PathBuf {
        root.join("var/lib/docker/containers")
            .join(id)
            .join("config.v2.json")
    }

    fn podman_store(root: &Path) -> PathBuf {
        root.join("var/lib/containers/storage/overlay-containers/containers.json")
    }

    #[test]
    fn docker_names_a_container_by_its_config_once_it_is_there() {
        let root = tempfile::tempdir().unwrap();
        let mut names = RuntimeNames::new(StateRoots::under(root.path()));
        let mut identity = container(ID);
        names.name(&mut identity);
        assert_eq!(identity.container_name, None, "no config yet");
        assert!(RuntimeNames::unnamed(&identity));
        let config = format!(r#"{{"ID":"{ID}","Name":"/web-1","State":{{"Running":true}}}}"#);
        write(&docker_config(root.path(), ID), config.as_bytes());
        names.name(&mut identity);
        assert_eq!(identity.container_name.as_deref(), Some("web-1"));
        assert!(!RuntimeNames::unnamed(&identity));
    }

    #[test]
    fn podman_names_a_container_from_its_store_and_rereads_it_once_changed() {
        let root = tempfile::tempdir().unwrap();
        let store = podman_store(root.path());
        let other = ID.replace('0', "f");
        write(
            &store,
            format!(r#"[{{"id":"{other}","names":["x"]}}]"#).as_bytes(),
        );
        let mut names = RuntimeNames::new(StateRoots::under(root.path()));
        let mut identity = container(ID);
        names.name(&mut identity);
        assert_eq!(identity.container_name, None);
        let both = format!(
            r#"[{{"id":"{other}","names":["x"]}},
                {{"id":"{ID}","names":["db","db-alias"],"image":"","layer":"l","flags":{{}}}}]"#
        );
        write(&store, both.as_bytes());
        names.name(&mut identity);
        assert_eq!(identity.container_name.as_deref(), Some("db"));
    }

    #[test]
    fn kubelets_pod_log_directory_names_the_pod_its_namespace_and_its_only_container() {
        let root = tempfile::tempdir().unwrap();
        let logs = root.path().join("var/log/pods");
        let pod_dir = logs.join(format!("shop_checkout-7d9f_{POD}"));
        std::fs::create_dir_all(pod_dir.join("api")).unwrap();
        std::fs::create_dir_all(logs.join("other_pod_x")).unwrap();
        let mut names = RuntimeNames::new(StateRoots::under(root.path()));
        let mut identity = Identity {
            pod: Some(POD.to_owned()),
            ..container(ID)
        };
        assert_eq!(
            identity.label_values(),
            [&ID[..12], POD, ""],
            "IDs until named"
        );
        names.name(&mut identity);
        assert_eq!(identity.label_values(), ["api", "checkout-7d9f", "shop"]);
        assert_eq!(identity.namespace.as_deref(), Some("shop"));
        assert_eq!(identity.pod_name.as_deref(), Some("checkout-7d9f"));
        assert_eq!(identity.container_name.as_deref(), Some("api"));

        // Two containers: which one the namespace's process is, the layout does not say.
        std::fs::create_dir_all(pod_dir.join("sidecar")).unwrap();
        let mut identity = Identity {
            pod: Some(POD.to_owned()),
            ..Identity::default()
        };
        names.name(&mut identity);
        assert_eq!(identity.pod_name.as_deref(), Some("checkout-7d9f"));
        assert_eq!(identity.container_name, None);
    }

    /// Kubelet's log links name each container of a pod by its ID, where the pod's log
    /// directory cannot say which one a namespace's process is.
    #[test]
    fn kubelets_container_log_links_name_each_container_of_a_pod_by_its_id() {
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join("var/log/containers");
        std::fs::create_dir_all(&links).unwrap();
        let link = |name: String| {
            let target = format!("/var/log/pods/shop_checkout-7d9f_{POD}/x/0.log");
            std::os::unix::fs::symlink(target, links.join(name)).unwrap();
        };
        let sidecar = ID.replace('0', "e");
        link(format!("checkout-7d9f_shop_api-{ID}.log"));
        let mut names = RuntimeNames::new(StateRoots::under(root.path()));
        assert_eq!(names.container_name(ID).as_deref(), Some("api"));
        assert_eq!(names.container_name(&sidecar), None, "not there yet");

        // Listed again once the directory changed.
        link(format!("checkout-7d9f_shop_sidecar-{sidecar}.log"));
        assert_eq!(names.container_name(&sidecar).as_deref(), Some("sidecar"));
        assert_eq!(names.container_name(ID).as_deref(), Some("api"));

        // Malformed, over-long, not a full ID (upper case, short, not hex): none is kubelet's.
        let (malformed, long) = (ID.replace('1', "2"), ID.replace('1', "3"));
        link(format!("checkout-7d9f-web-{malformed}.log"));
        link(format!("checkout_shop_web-{malformed}"));
        link(format!(
            "checkout_shop_{}-{long}.log",
            "n".repeat(MAX_NAME + 1)
        ));
        link(format!("checkout_shop_web-{}.log", ID.to_uppercase()));
        link(format!("checkout_shop_web-{}.log", &ID[1..]));
        link(format!("checkout_shop_web-{}.log", ID.replace('a', "g")));
        link(format!("checkout_shop_{ID}.log"));
        for id in [&malformed, &long] {
            assert_eq!(names.container_name(id), None, "{id}");
        }
        let parsed = container_log_links(&links);
        let expected = [(ID, "api"), (sidecar.as_str(), "sidecar")];
        let expected = expected.map(|(id, name)| (id.to_owned(), name.to_owned()));
        assert_eq!(parsed, HashMap::from(expected));

        // A name of odd characters is cleaned, as every other.
        let odd = ID.replace('1', "4");
        link(format!("checkout_shop_a b\u{e9}-{odd}.log"));
        assert_eq!(names.container_name(&odd).as_deref(), Some("a_b_"));
    }

    #[test]
    fn hostile_state_files_name_nothing_and_odd_names_are_cleaned_and_cut() {
        let root = tempfile::tempdir().unwrap();
        // Larger than the cap (sparse: no disk used), bad JSON, a FIFO, the wrong shape.
        let huge = File::create(with_parent(docker_config(root.path(), ID))).unwrap();
        huge.set_len(MAX_STATE_FILE + 1).unwrap();
        let bad = ID.replace('1', "2");
        write(&docker_config(root.path(), &bad), b"{\"Name\": \"/x");
        let fifo = ID.replace('1', "3");
        let fifo_path = with_parent(docker_config(root.path(), &fifo));
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        write(&podman_store(root.path()), b"{\"id\": 1, \"names\": 2}");
        let mut names = RuntimeNames::new(StateRoots::under(root.path()));
        for id in [ID, bad.as_str(), fifo.as_str()] {
            let mut identity = container(id);
            names.name(&mut identity);
            assert_eq!(identity.container_name, None, "{id}");
        }

        let odd = ID.replace('1', "4");
        let long = "n".repeat(MAX_NAME + 50);
        let config = format!(r#"{{"Name":"/a\"b}}\n{{c=\"d\u00e9\u0000{long}"}}"#);
        write(&docker_config(root.path(), &odd), config.as_bytes());
        let mut identity = container(&odd);
        names.name(&mut identity);
        let name = identity.container_name.unwrap();
        assert_eq!(name.len(), MAX_NAME);
        assert!(name.starts_with("a_b___c__d__nnn"), "{name}");
        assert_eq!(label_value("/"), Some("_".to_owned()));
        assert_eq!(label_value(""), None);
    }

    /// `path`, its parent directories made.
    fn with_parent(path: PathBuf) -> PathBuf {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }
}
