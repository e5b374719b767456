//! Crash-safe replacement of files and directories (DESIGN.md §6): a reader sees either the old version or
//! the complete new one, never a half-written one, even if the process dies or the machine loses power.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temporary files of concurrent saves from the same process (threads, or several
/// checkpoints written at once); the pid distinguishes processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically.
///
/// The bytes go to a hidden temporary file in the same directory (a rename is only atomic within one
/// file system), which is fsynced, renamed over `path`, and then the directory is fsynced so the rename
/// itself survives a power cut. On any error the temporary file is removed and `path` is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write_with(path, |file| file.write_all(bytes))
}

/// Like [`atomic_write`], but `write` fills the temporary file itself — for streaming large outputs, and
/// so tests can make the write fail and check that the old file survives.
pub fn atomic_write_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let temp = temp_path(path)?;
    let result = write_and_rename(path, &temp, write);
    if result.is_err() {
        // Best effort: the original error is the one worth reporting; after a successful rename the
        // temporary name no longer exists and this is a harmless `NotFound`.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_and_rename(path: &Path, temp: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    // `create_new` so that a stale temp file from a crashed run with a recycled pid is never reused.
    let mut file = OpenOptions::new().write(true).create_new(true).open(temp)?;
    write(&mut file)?;
    file.flush()?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)?;
    sync_dir(parent_dir(path))
}

/// `.<name>.tmp-<pid>-<counter>` beside `path`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a file path", path.display())))?;
    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp_name = format!(".{}.tmp-{}-{counter}", name.to_string_lossy(), std::process::id());
    Ok(parent_dir(path).join(temp_name))
}

/// Removes temporary files that a killed process left in `dir` (the `.<name>.tmp-<pid>-<n>` files of
/// [`atomic_write`] whose process is gone). Returns how many were removed. Files of live processes are left
/// alone: they may be a concurrent save in progress.
pub fn remove_stale_temp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = temp_file_pid(&name.to_string_lossy()) else { continue };
        if pid != std::process::id() && !process_alive(pid) && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The writer's pid, if `name` is one of our temporary file names.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, counter) = tail.split_once('-')?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true // cannot tell: keep the file
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A failed step of [`replace_dir`], naming the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Replaces the directory `live` with the complete directory `staged`, both in the same parent.
///
/// `staged` is fsynced, the current `live` (if any) is renamed to `backup`, `staged` is renamed to `live`,
/// the parent is fsynced, and `backup` is removed. A crash at any moment leaves a complete directory under
/// `live` or, between the two renames, under `backup`; readers should look there when `live` is missing.
/// A `backup` left by such a crash is replaced.
pub fn replace_dir(staged: &Path, live: &Path, backup: &Path) -> Result<(), PathError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PathError { path, source }
    };
    sync_dir(staged).map_err(at(staged))?;
    if live.exists() {
        if backup.exists() {
            fs::remove_dir_all(backup).map_err(at(backup))?;
        }
        fs::rename(live, backup).map_err(at(live))?;
    }
    fs::rename(staged, live).map_err(at(staged))?;
    let parent = parent_dir(live);
    sync_dir(parent).map_err(at(parent))?;
    if backup.exists() {
        fs::remove_dir_all(backup).map_err(at(backup))?;
    }
    Ok(())
}

/// Makes a rename in `dir` durable. Directories cannot be opened for syncing on Windows; there the
/// rename is as durable as the file system makes it.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
#[path = "write_tests.rs"]
mod tests;
