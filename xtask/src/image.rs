//! `./x image`: the static (musl) binary, then the container image `localhost/seqwatch:<version>`
//! built by podman from packaging/container/Containerfile (FROM scratch: nothing is pulled).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo_with_env, run_checked, step, workspace_root};

/// The image's name; `localhost/` keeps podman from looking it up in a registry.
fn image_tag() -> String {
    format!("localhost/seqwatch:{}", env!("CARGO_PKG_VERSION"))
}

/// The musl target of this machine's architecture (x86_64 or aarch64).
pub fn musl_target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

pub fn build() -> anyhow::Result<()> {
    let binary = build_static()?;
    let context = stage_context(&binary)?;
    let tag = image_tag();
    let previous = image_id(&tag);
    step(&format!("podman build {tag}"));
    run_checked(
        Command::new("podman")
            // No network: nothing to fetch, and podman's default bridge network would turn
            // on IPv4 forwarding in the host's namespace, which every new namespace (the
            // tests' labs) inherits.
            .args(["build", "--pull=never", "--layers=false", "--network=none"])
            .arg("--file")
            .arg(workspace_root().join("packaging/container/Containerfile"))
            .args([
                "--build-arg",
                &format!("VERSION={}", env!("CARGO_PKG_VERSION")),
            ])
            .args(["--tag", &tag])
            .arg(&context),
    )?;
    // The image the tag pointed to before is now untagged: remove it rather than let every
    // build leave one behind. It may still be used by a container; then it stays.
    if let Some(previous) = previous.filter(|id| Some(id) != image_id(&tag).as_ref()) {
        let _ = Command::new("podman")
            .args(["image", "rm", &previous])
            .output();
    }
    Ok(())
}

/// `cargo build --release --target <arch>-unknown-linux-musl`: a static-pie binary (musl's
/// libc linked in) with the eBPF object embedded as in every build. ring's C and assembly
/// are built with musl-gcc (Debian's musl-tools).
fn build_static() -> anyhow::Result<PathBuf> {
    let target = musl_target();
    step(&format!("build the monitor (release, {target}, static)"));
    let compiler_variable = format!("CC_{}", target.replace('-', "_"));
    cargo_with_env(
        &[
            "build",
            "--release",
            "--package",
            "seqwatch",
            "--target",
            &target,
        ],
        &[(compiler_variable.as_str(), "musl-gcc")],
    )?;
    let binary = workspace_root()
        .join("target")
        .join(&target)
        .join("release/seqwatch");
    let out = Command::new(&binary)
        .arg("version")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!("{} version failed: {:?}", binary.display(), out);
    }
    Ok(binary)
}

/// target/container/: the binary and the default configuration, all the build sees (the
/// workspace, with its gigabytes of target/, would be sent to the build otherwise).
fn stage_context(binary: &Path) -> anyhow::Result<PathBuf> {
    let context = workspace_root().join("target/container");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(&context)?;
    std::fs::copy(binary, context.join("seqwatch"))?;
    std::fs::copy(
        workspace_root().join("packaging/seqwatch.toml"),
        context.join("seqwatch.toml"),
    )?;
    Ok(context)
}

fn image_id(tag: &str) -> Option<String> {
    let out = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .ok()?;
    let id = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}
