//! Crash-safe file replacement: a reader sees either the old file or the complete new one, never half.
//!
//! The bytes go to a temporary file in the same directory (so the rename stays on one filesystem and is
//! atomic), the file is fsynced before the rename (so the name never points at unflushed data after a power
//! loss), and the directory is fsynced after it (so the rename itself is durable).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temporary files of concurrent writers inside one process (the pid covers processes).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically through `write`.
///
/// If `write` (or flushing, fsync or rename) fails, the temporary file is removed and any existing file at
/// `path` is left untouched.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = write_synced(&temp, write).and_then(|()| fs::rename(&temp, path));
    if let Err(error) = result {
        // Best effort: the write error is the one worth reporting, not a failed clean-up.
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    sync_dir(&dir)
}

fn write_synced(
    temp: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    write(&mut writer)?;
    writer.flush()?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Makes the rename durable. Directories cannot be opened for fsync on every platform; where they can't,
/// the rename is still atomic, only its durability across a power cut is left to the OS.
fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        atomic_write(&path, |w| w.write_all(b"first")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        atomic_write(&path, |w| w.write_all(b"second, longer")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(dir_entries(dir.path()), vec!["out.txt"]);
    }

    #[test]
    fn failing_writer_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        fs::write(&path, b"old contents").unwrap();
        let err = atomic_write(&path, |w| {
            w.write_all(b"partial new contents")?;
            Err(io::Error::other("disk full (simulated)"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old contents");
        assert_eq!(dir_entries(dir.path()), vec!["train.bin"]);
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("x.bin");
        assert!(atomic_write(&path, |w| w.write_all(b"x")).is_err());
        assert!(!path.exists());
    }
}
