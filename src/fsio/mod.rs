//! File-system edges of every command: inputs read with a size cap, outputs written as one
//! transaction, and a clean end on interruption.

pub mod interrupt;
pub mod output;

pub use output::Outputs;

use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;

/// The most nnquant reads from a binary input that is not a regular file (a FIFO, `/dev/stdin`,
/// a character device such as `/dev/zero`), whose size is not known in advance. Real model,
/// weight and report files are regular files and are not capped.
pub const STREAM_CAP: u64 = 1 << 30;

/// [`STREAM_CAP`] for text inputs (prototxt, JSON, lists): far above any real one.
pub const TEXT_STREAM_CAP: u64 = 64 << 20;

/// Open an input for reading without hanging on a FIFO that nobody writes: the open itself is
/// non-blocking (a FIFO without a writer then reads as empty, which the callers report), and
/// reads block normally afterwards (a pipe from `<(command)` is read to its end).
pub fn open(path: &Path, what: &str) -> Result<std::fs::File> {
    let ctx = || format!("cannot read {what} {}", path.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .with_context(ctx)?;
        // SAFETY: fcntl on a descriptor this function owns; clears O_NONBLOCK again.
        unsafe {
            let fd = f.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        Ok(f)
    }
    #[cfg(not(unix))]
    std::fs::File::open(path).with_context(ctx)
}

/// Read a whole binary input file. `what` names it in errors ("the weights file").
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    read_capped(path, what, STREAM_CAP)
}

/// [`read`] with an explicit cap for non-regular files.
pub fn read_capped(path: &Path, what: &str, cap: u64) -> Result<Vec<u8>> {
    let ctx = || format!("cannot read {what} {}", path.display());
    let f = open(path, what)?;
    let m = f.metadata().with_context(ctx)?;
    anyhow::ensure!(
        !m.is_dir(),
        "cannot read {what} {}: it is a directory",
        path.display()
    );
    let mut bytes = Vec::new();
    if m.is_file() {
        bytes.reserve(usize::try_from(m.len()).unwrap_or(0));
        (&f).read_to_end(&mut bytes).with_context(ctx)?;
    } else {
        f.take(cap + 1).read_to_end(&mut bytes).with_context(ctx)?;
        anyhow::ensure!(
            bytes.len() as u64 <= cap,
            "cannot read {what} {}: it is not a regular file and gives more than {} bytes (a stream such as /dev/zero?)",
            path.display(),
            cap
        );
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text, capped at [`TEXT_STREAM_CAP`] for non-regular files.
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    let bytes = read_capped(path, what, TEXT_STREAM_CAP)?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{what} {} is not UTF-8 text: {}",
            path.display(),
            e.utf8_error()
        )
    })
}
