//! The `seqwatch` binary as a command.

use std::{
    ffi::OsString,
    path::Path,
    process::{Command, Output},
};

/// The `seqwatch` binary of this build. Cargo tells an integration test where it is when it
/// runs one (`CARGO_BIN_EXE_seqwatch`, at run time as at build time); a test binary run by
/// hand finds it where cargo put both: the test binary in `target/<profile>/deps/`, seqwatch
/// in `target/<profile>/`.
pub fn seqwatch_binary() -> OsString {
    std::env::var_os("CARGO_BIN_EXE_seqwatch").unwrap_or_else(|| {
        let test_binary = std::env::current_exe().expect("the test binary's path");
        let profile_dir = test_binary
            .parent()
            .and_then(Path::parent)
            .expect("a test binary in target/<profile>/deps");
        profile_dir.join("seqwatch").into_os_string()
    })
}

/// `seqwatch ARGS`, run to its end.
pub fn seqwatch(args: &[&str]) -> Output {
    Command::new(seqwatch_binary())
        .args(args)
        .output()
        .expect("run seqwatch")
}

/// What a run wrote to stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
