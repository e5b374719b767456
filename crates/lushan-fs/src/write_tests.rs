//! Tests of the crash-safe writers, including a real crash: a child process that dies mid-write.

use super::*;

#[test]
fn stale_temp_files_of_dead_processes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join(".model.safetensors.tmp-4294967-3");
    let mine = dir.path().join(format!(".config.json.tmp-{}-0", std::process::id()));
    let other = dir.path().join("model.safetensors");
    for p in [&dead, &mine, &other] {
        fs::write(p, b"x").unwrap();
    }
    assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
    assert!(!dead.exists() && mine.exists() && other.exists());
    assert_eq!(remove_stale_temp_files(&dir.path().join("missing")).unwrap(), 0);
    assert_eq!(temp_file_pid(".a.b.tmp-12-7"), Some(12));
    assert_eq!(temp_file_pid("a.tmp-12-7"), None);
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn writes_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bin");
    atomic_write(&path, b"first").unwrap();
    atomic_write(&path, b"second").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second");
    assert_eq!(entries(dir.path()), vec!["a.bin"]);
}

#[test]
fn failed_write_keeps_the_old_file_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bin");
    atomic_write(&path, b"old").unwrap();
    let err = atomic_write_with(&path, |f| {
        f.write_all(b"partial")?;
        Err(io::Error::other("disk full"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "disk full");
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(entries(dir.path()), vec!["a.bin"]);
}

#[test]
fn missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(atomic_write(&dir.path().join("no/such/dir/a.bin"), b"x").is_err());
}

/// Set for the child process of [`a_write_killed_midway_keeps_the_old_file_and_cleanup_removes_its_temp`].
const CHILD_ENV: &str = "LUSHAN_FS_DIE_WHILE_WRITING";

/// Not a test on its own: the child that the test below runs (this test binary, filtered to this function),
/// which dies in the middle of an atomic write, as a killed training run or a power cut would leave it.
#[test]
#[ignore = "run as a child process by a_write_killed_midway_keeps_the_old_file_and_cleanup_removes_its_temp"]
fn child_dies_while_writing() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let _ = atomic_write_with(Path::new(&path), |f| {
        f.write_all(b"half of the new")?;
        f.sync_all()?;
        std::process::exit(3)
    });
}

#[test]
fn a_write_killed_midway_keeps_the_old_file_and_cleanup_removes_its_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    atomic_write(&path, b"old contents").unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "write::tests::child_dies_while_writing", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "the child must die inside the write");
    assert_eq!(fs::read(&path).unwrap(), b"old contents");
    let names = entries(dir.path());
    assert_eq!(names.len(), 2, "the dead writer's temporary file is left behind: {names:?}");
    assert!(names.iter().any(|n| n.starts_with(".model.safetensors.tmp-")), "{names:?}");
    if cfg!(target_os = "linux") {
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert_eq!(entries(dir.path()), vec!["model.safetensors"]);
    }
}

#[test]
fn replace_dir_swaps_in_the_staged_directory() {
    let parent = tempfile::tempdir().unwrap();
    let (staged, live, backup) = (parent.path().join("s.tmp"), parent.path().join("s"), parent.path().join("s.old"));
    for (round, text) in ["first", "second"].into_iter().enumerate() {
        fs::create_dir(&staged).unwrap();
        atomic_write(&staged.join("state.json"), text.as_bytes()).unwrap();
        if round == 1 {
            // A backup left by a crash between the two renames of an earlier swap is replaced.
            fs::create_dir(&backup).unwrap();
        }
        replace_dir(&staged, &live, &backup).unwrap();
        assert_eq!(fs::read_to_string(live.join("state.json")).unwrap(), text);
        assert_eq!(entries(parent.path()), vec!["s"]);
    }
    let e = replace_dir(&staged, &live, &backup).unwrap_err();
    assert_eq!(e.path, staged, "{e}");
    assert_eq!(fs::read_to_string(live.join("state.json")).unwrap(), "second");
}
