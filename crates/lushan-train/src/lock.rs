//! One training run per output directory: `OUT/.lushan-train.lock`, held for the whole run.
//!
//! The lock is the operating system's advisory file lock (`flock`) on that file, so it is released
//! whenever the process ends — normally, on an error, on a signal, even on `kill -9` — and a lock left by a
//! dead process is never in the way. The file holds the holder's process id so the refusal can name it.
//! The holder removes the file when it is done; a run that locked a file which was removed (or replaced)
//! meanwhile sees that its file is no longer the one at the path, and tries again.

use crate::error::{Result, TrainError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".lushan-train.lock";

/// A held lock on an output directory; released (and its file removed) on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    file: Option<File>,
}

impl RunLock {
    /// Creates `out_dir` if needed and locks it for this process; refuses, naming the holder's process id,
    /// when another run holds it. Also proves the directory writable before any work starts.
    pub fn acquire(out_dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io { path: out_dir.to_path_buf(), source })?;
        let path = out_dir.join(LOCK_FILE);
        let io = |source| TrainError::Io { path: path.clone(), source };
        // A few rounds at most: a round is repeated only when the holder removed the file in between.
        for _ in 0..100 {
            let mut file =
                OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    // The holder writes its id right after locking; an empty file means it is just starting.
                    let _ = file.read_to_string(&mut pid);
                    let pid = pid.trim();
                    let pid = if pid.is_empty() { "unknown".to_owned() } else { pid.to_owned() };
                    return Err(TrainError::Locked { path, pid });
                }
                Err(TryLockError::Error(source)) => return Err(io(source)),
            }
            if !same_file(&file, &path) {
                continue; // locked a file the previous holder has just removed
            }
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            file.sync_all().map_err(io)?;
            return Ok(RunLock { path, file: Some(file) });
        }
        Err(io(std::io::Error::other("the lock file keeps being replaced by another process")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the lock file and releases the lock now (dropping does the same).
    pub fn release(&mut self) {
        if let Some(file) = self.file.take() {
            // Removed while still locked, so no other run can lock this file and then lose it.
            let _ = std::fs::remove_file(&self.path);
            drop(file);
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether `path` still names the file `file` has open.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut first = RunLock::acquire(&out).unwrap();
        let text = std::fs::read_to_string(out.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // Locks are per open file, so a second open in this process is refused like another process.
        let message = RunLock::acquire(&out).unwrap_err().to_string();
        assert!(message.contains(&format!("process {}", std::process::id())), "{message}");
        first.release();
        assert!(!out.join(LOCK_FILE).exists());
        let again = RunLock::acquire(&out).unwrap();
        drop(again);
        assert!(!out.join(LOCK_FILE).exists());
    }

    #[test]
    fn a_file_left_by_a_dead_run_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "999999999\n").unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
    }
}
