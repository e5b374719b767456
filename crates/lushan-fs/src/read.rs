//! Reading only regular files: the metadata is checked before `open`, which would block on a named pipe.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// A path lushan was asked to read that is not a regular file (symbolic links are followed); carried inside
/// an [`io::Error`] of kind [`io::ErrorKind::InvalidInput`], so callers add the path as for any I/O error.
#[derive(Debug, thiserror::Error)]
#[error("is {kind}, not a regular file")]
pub struct NotRegularFile {
    /// What the path is instead, e.g. "a named pipe (FIFO)".
    pub kind: &'static str,
}

/// Errors unless `path` (after following symbolic links) is a regular file. Never opens it.
pub fn check_regular_file(path: &Path) -> io::Result<()> {
    check_metadata(&std::fs::metadata(path)?)
}

/// Opens `path` for reading after checking that it is a regular file, so a FIFO, socket or device is an
/// error instead of a read that blocks or never ends. The open file is checked again, in case the path was
/// replaced in between.
pub fn open_regular(path: &Path) -> io::Result<File> {
    check_regular_file(path)?;
    let file = File::open(path)?;
    check_metadata(&file.metadata()?)?;
    Ok(file)
}

/// [`std::fs::read`] for regular files only (see [`open_regular`]).
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`std::fs::read_to_string`] for regular files only (see [`open_regular`]).
pub fn read_to_string_regular(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))
}

fn check_metadata(meta: &Metadata) -> io::Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegularFile { kind: describe(meta) }))
}

fn describe(meta: &Metadata) -> &'static str {
    let file_type = meta.file_type();
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    "a special file"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn regular_files_and_links_to_them_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::fs::write(&path, "{}").unwrap();
        assert_eq!(read_to_string_regular(&path).unwrap(), "{}");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.json");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            assert_eq!(read_regular(&link).unwrap(), b"{}");
        }
    }

    #[test]
    fn directories_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "is a directory, not a regular file");
        let e = open_regular(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.safetensors");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        // Opening the FIFO would block this test forever; the check must come first.
        let e = read_regular(&fifo).unwrap_err();
        assert_eq!(e.to_string(), "is a named pipe (FIFO), not a regular file");
        assert!(check_regular_file(&fifo).is_err());
    }
}
