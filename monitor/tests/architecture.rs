//! The daemon's layers point down only (docs/architecture.md): a module may use a module of its
//! own layer folder or of a lower layer, never one above. Read from the sources, so that an
//! import that breaks the layering fails here and not in a review.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Each folder of `monitor/src` and its layer, top down; a folder may use the folders of lower
/// layers. `analyze` is a subcommand beside the daemon; `scorer`, `host` and `lab` know no
/// other part of Seqwatch.
const LAYERS: [(&str, u8); 11] = [
    ("cli", 7),
    ("daemon", 6),
    ("detectors", 5),
    ("analyze", 5),
    ("settings", 4),
    ("kernel", 3),
    ("export", 2),
    ("host", 1),
    ("scorer", 1),
    ("lab", 1),
    ("util", 0),
];

fn layer(folder: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find_map(|&(name, rank)| (name == folder).then_some(rank))
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("source entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The source without its unit tests: tests may use the lab, the code they test may not.
fn without_tests(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("readable source");
    if path.file_name().is_some_and(|name| name == "tests.rs") {
        return String::new();
    }
    match text.find("#[cfg(test)]\nmod tests") {
        Some(start) => text[..start].to_owned(),
        None => text,
    }
}

/// The top-level modules a source names through `crate::`, in paths and in `use crate::{…}`
/// groups.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("crate::") {
        rest = &rest[start + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            named.insert(first_segment(&item));
        } else {
            named.insert(first_segment(rest));
        }
    }
    named.remove("");
    named
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_import_points_down_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let mut parts = relative.components();
        let folder = parts.next().expect("a path").as_os_str().to_string_lossy();
        if parts.next().is_none() {
            // lib.rs and main.rs only declare and run the modules.
            continue;
        }
        let own = layer(&folder)
            .unwrap_or_else(|| panic!("monitor/src/{folder} has no layer: add it to LAYERS"));
        for module in crate_modules(&without_tests(file)) {
            checked += 1;
            if module == folder {
                continue;
            }
            match layer(&module) {
                Some(used) if used < own => {}
                _ => upward.push(format!("{} uses crate::{module}", relative.display())),
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports read: is the parser blind?"
    );
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_parser_reads_paths_and_groups() {
    let text = "use crate::{\n    export::metrics::Registry,\n    kernel::{a, b},\n    util,\n};\n\
                let x = crate::scorer::Verdict::Weak;";
    let expected: BTreeSet<String> = ["export", "kernel", "scorer", "util"]
        .map(String::from)
        .into();
    assert_eq!(crate_modules(text), expected);
}
