//! Builds the eBPF object with aya-build and the pinned nightly, so that one `cargo build`
//! builds everything. `AYA_BUILD_SKIP=1` (clippy, pure-Rust work) leaves an empty object.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The eBPF crate's own toolchain file names the pinned nightly.
const EBPF_TOOLCHAIN_FILE: &str = include_str!("../monitor-ebpf/rust-toolchain.toml");

fn ebpf_toolchain() -> anyhow::Result<&'static str> {
    EBPF_TOOLCHAIN_FILE
        .lines()
        .find_map(|line| line.strip_prefix("channel = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| anyhow!("monitor-ebpf/rust-toolchain.toml has no channel line"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-changed=../monitor-ebpf/rust-toolchain.toml");
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    let object = std::path::Path::new(&out_dir).join("seqwatch");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        std::fs::write(&object, []).context("write empty eBPF object")?;
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "seqwatch-ebpf")
        .ok_or_else(|| anyhow!("seqwatch-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(ebpf_toolchain()?),
    )
}
