//! The README stays a short front page that leads to every page in docs/: the details belong
//! there, and a page nobody links to is not read.

use std::path::{Path, PathBuf};

/// What fits a front page: what Seqwatch is, the two commands, the demo, what it detects, the
/// layers, how to deploy, the nmap comparison, the links.
const README_MAX_LINES: usize = 250;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).expect("README.md")
}

#[test]
fn the_readme_is_at_most_250_lines() {
    let lines = readme().lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the details to docs/"
    );
}

#[test]
fn the_readme_links_every_page_in_docs() {
    let readme = readme();
    let mut unlinked = Vec::new();
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let name = entry.expect("docs/ entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") && !readme.contains(&format!("](docs/{name})")) {
            unlinked.push(name.into_owned());
        }
    }
    assert!(
        unlinked.is_empty(),
        "README.md links no `](docs/PAGE)` for {unlinked:?}"
    );
}
