//! Installs what the project needs, and nothing twice: a second run only checks.
//!
//! - Debian packages the tests, lab and benchmarks use;
//! - the eBPF crate's dated nightly with rust-src and clippy (the host toolchain is `./x`'s job: it has to
//!   exist before this program can be built);
//! - bpf-linker, built from source against that nightly's own libLLVM (Debian's LLVM is too
//!   old, and bpf-linker must speak exactly the LLVM the nightly emits);
//! - cargo-deb, which builds the Debian package;
//! - for `./x test` only, cargo-fuzz, which runs the capture reader's fuzz target (on the eBPF
//!   crate's nightly);
//! - the bpffs mount;
//! - for the container image and the Helm chart's test only (`ensure_container_tools`): podman,
//!   runc, musl-gcc, the host toolchain's musl target, and Go with sprig.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{run_checked, step, workspace_root};

/// tcpdump: capture cross-checks; bpftool: BPF run-time stats in benchmarks; prometheus:
/// promtool and the end-to-end scrape; nmap: the side-by-side ISN check; hping3: SYN floods;
/// ethtool: interface offloads in the lab; iproute2: namespaces, veth, tc; curl: the demo;
/// openssl: a real TLS server (`s_server`) for the TLS record check's tests;
/// dpkg-dev: dpkg-shlibdeps, which cargo-deb runs for the package's Depends; systemd:
/// systemd-analyze, which checks the packaged unit.
const DEBIAN_PACKAGES: &[&str] = &[
    "curl",
    "dpkg-dev",
    "systemd",
    "tcpdump",
    "bpftool",
    "prometheus",
    "nmap",
    "hping3",
    "ethtool",
    "iproute2",
    "openssl",
];
/// podman and runc: build and run the image (Debian 12's crun 1.8 refuses hosts whose cgroup
/// v2 hierarchy holds a controller beside v1 ones, as this project's machines do; runc runs
/// there); musl-tools: musl-gcc, for ring's C and assembly in the static build; golang-go,
/// sprig and ghodss/yaml: Go's text/template with Helm's function library, which
/// tests/chart.rs renders the chart with (Helm itself is not packaged).
const CONTAINER_PACKAGES: &[&str] = &[
    "podman",
    "runc",
    "musl-tools",
    "golang-go",
    "golang-github-masterminds-sprig-dev",
    "golang-github-ghodss-yaml-dev",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_DEB_VERSION: &str = "3.8.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn ensure() -> anyhow::Result<()> {
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    let nightly = ebpf_toolchain()?;
    ensure_nightly(&nightly)?;
    ensure_bpf_linker(&nightly)?;
    ensure_cargo_deb()?;
    ensure_mount("bpf", "/sys/fs/bpf")?;
    Ok(())
}

/// PATH with the pinned bpf-linker first.
pub fn path_with_tools() -> anyhow::Result<OsString> {
    let tools = tools_dir(&ebpf_toolchain()?)?.join("bin");
    let mut paths = vec![tools];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(paths)?)
}

/// What `./x image` and the image's and chart's tests need besides [`ensure`]'s.
pub fn ensure_container_tools() -> anyhow::Result<()> {
    ensure_debian_packages(CONTAINER_PACKAGES)?;
    let toolchain = host_toolchain()?;
    let target = crate::image::musl_target();
    if sysroot(&toolchain)?
        .join("lib/rustlib")
        .join(&target)
        .is_dir()
    {
        return Ok(());
    }
    step(&format!(
        "rustup target add {target} --toolchain {toolchain}"
    ));
    run_checked(Command::new("rustup").args(["target", "add", &target, "--toolchain", &toolchain]))
}

fn ensure_debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !debian_package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("apt-get install {}", missing.join(" ")));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.stdout.ends_with(b"install ok installed"))
}

/// The channel named in monitor-ebpf/rust-toolchain.toml.
pub fn ebpf_toolchain() -> anyhow::Result<String> {
    toolchain_channel("monitor-ebpf/rust-toolchain.toml")
}

/// The channel named in the workspace's rust-toolchain.toml.
fn host_toolchain() -> anyhow::Result<String> {
    toolchain_channel("rust-toolchain.toml")
}

fn toolchain_channel(file: &str) -> anyhow::Result<String> {
    let path = workspace_root().join(file);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    text.lines()
        .find_map(|line| line.strip_prefix("channel = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .map(str::to_owned)
        .with_context(|| format!("{} has no channel line", path.display()))
}

fn ensure_nightly(nightly: &str) -> anyhow::Result<()> {
    let has_rust_src =
        sysroot(nightly).is_ok_and(|root| root.join("lib/rustlib/src/rust/library/core").is_dir());
    if has_rust_src {
        return Ok(());
    }
    step(&format!(
        "rustup toolchain install {nightly} (with rust-src)"
    ));
    run_checked(Command::new("rustup").args([
        "toolchain",
        "install",
        nightly,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy",
        "--no-self-update",
    ]))
}

fn sysroot(toolchain: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()?;
    if !out.status.success() {
        bail!("toolchain {toolchain} is not installed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// bpf-linker and its LLVM link live in a per-nightly cache outside the work tree, so that a
/// fresh clone on the same machine does not rebuild them.
pub fn tools_dir(nightly: &str) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/seqwatch").join(nightly))
}

fn ensure_bpf_linker(nightly: &str) -> anyhow::Result<()> {
    let tools = tools_dir(nightly)?;
    let linker = tools.join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        });
    if works {
        return Ok(());
    }
    let sysroot = sysroot(nightly)?;
    let llvm_major = llvm_major(nightly)?;
    let prefix = link_nightly_llvm(&sysroot, &tools)?;
    step(&format!(
        "build bpf-linker {BPF_LINKER_VERSION} against {nightly}'s LLVM {llvm_major} (about 2 minutes)"
    ));
    run_checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
                "--root",
            ])
            .arg(&tools)
            .env("LLVM_PREFIX", &prefix)
            .env("CARGO_TARGET_DIR", tools.join("build")),
    )
}

/// cargo-deb in cargo's own bin directory, at the pinned version (`cargo deb -p seqwatch`).
fn ensure_cargo_deb() -> anyhow::Result<()> {
    ensure_cargo_tool("cargo-deb", CARGO_DEB_VERSION, "a few minutes")
}

/// cargo-fuzz in cargo's own bin directory, at the pinned version (`cargo fuzz`): for
/// `./x test` only.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    ensure_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, "about 2 minutes")
}

/// A cargo subcommand at exactly `version`, installed unless `TOOL --version` says so.
fn ensure_cargo_tool(tool: &str, version: &str, how_long: &str) -> anyhow::Result<()> {
    let installed = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == format!("{tool} {version}")
        });
    if installed {
        return Ok(());
    }
    step(&format!(
        "cargo install --locked {tool} --version {version} ({how_long})"
    ));
    run_checked(
        Command::new("cargo")
            .args(["install", "--locked", tool, "--version", version])
            // A temporary build directory, not the workspace's target/.
            .env_remove("CARGO_TARGET_DIR"),
    )
}

fn llvm_major(nightly: &str) -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .args(["run", nightly, "rustc", "-vV"])
        .output()?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .map(str::to_owned)
        .context("rustc -vV printed no LLVM version")
}

/// A prefix whose lib/ holds the nightly's libLLVM under both names bpf-linker's build wants:
/// `libLLVM.so` to link, and the library's own soname to load at run time (via rpath).
fn link_nightly_llvm(sysroot: &Path, tools: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let library = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .find(|name| name.to_string_lossy().starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = tools.join("llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [OsString::from("libLLVM.so"), library.clone()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&library), &link)?;
    }
    Ok(prefix)
}

fn ensure_mount(fstype: &str, target: &str) -> anyhow::Result<()> {
    let mounted = std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(target));
    if mounted {
        return Ok(());
    }
    step(&format!("mount -t {fstype} {fstype} {target}"));
    run_checked(Command::new("mount").args(["-t", fstype, fstype, target]))
}
