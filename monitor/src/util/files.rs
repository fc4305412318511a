//! Reading a file the operator names (configuration, web config, certificates, keys) without
//! trusting its size.

use std::path::Path;

/// The largest configuration, web-config, certificate or key file read: far above any real
/// one, and a path to `/dev/zero` or a huge file is an error instead of unbounded memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A file's bytes, at most [`MAX_FILE_BYTES`] of them.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(bytes)
}
