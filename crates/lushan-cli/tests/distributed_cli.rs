//! `mpirun -np N lushan train …`: N ranks train as one process with the whole batch, rank 0 alone writes,
//! a run resumes with another number of ranks, and bad starts end every rank with one clear error.
//!
//! These run the built binary under `mpirun`; they skip (saying why) when the binary was built without the
//! `mpi` feature or no `mpirun` is installed. CI builds with `--features mpi` and installs Open MPI, so there
//! they run for real (.ci/run).
#![allow(clippy::unwrap_used)]

mod common;

use common::{BIN, Output, corpus, s, train_args};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `mpirun` and the flags it needs here, or why the MPI tests cannot run.
fn mpirun() -> Result<Vec<String>, String> {
    if !cfg!(feature = "mpi") {
        return Err("lushan was built without the `mpi` feature (cargo test --features mpi)".into());
    }
    let version = Command::new("mpirun").arg("--version").output().map_err(|e| format!("no mpirun: {e}"))?;
    let text = String::from_utf8_lossy(&version.stdout).into_owned() + &String::from_utf8_lossy(&version.stderr);
    let mut flags = vec!["mpirun".to_owned()];
    if text.contains("Open MPI") || text.contains("OpenRTE") {
        // Open MPI refuses root without the first, and more ranks than cores (CI has 2) without the second.
        flags.extend(["--allow-run-as-root", "--oversubscribe"].map(String::from));
    }
    Ok(flags)
}

/// Runs `mpirun` with one or more `-np N lushan ARGS` programs (`:`-separated, MPI's MPMD form), killing it
/// after two minutes; `None` (after printing why) when the MPI tests cannot run here.
fn mpi_run(dir: &Path, programs: &[(usize, Vec<&str>)]) -> Option<Output> {
    let mut command = match mpirun() {
        Ok(flags) => flags,
        Err(reason) => {
            // CI installs MPI and sets this: there a skip would hide a broken setup.
            assert!(std::env::var_os("LUSHAN_REQUIRE_MPI").is_none(), "LUSHAN_REQUIRE_MPI is set but {reason}");
            eprintln!("skipped: {reason}");
            return None;
        }
    };
    for (i, (np, args)) in programs.iter().enumerate() {
        if i > 0 {
            command.push(":".into());
        }
        command.extend(["-np".to_owned(), np.to_string(), BIN.to_owned()]);
        command.extend(args.iter().map(|a| a.to_string()));
    }
    let (stdout, stderr) = (dir.join("mpi.stdout"), dir.join("mpi.stderr"));
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("`{}` did not end within two minutes", command.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&std::fs::read(stdout).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(stderr).unwrap()).into_owned(),
    };
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    Some(out)
}

/// (step, loss) pairs.
type Curve = Vec<(u64, f64)>;

/// (step, loss) of every step line, and (step, val loss) of every evaluation, in metrics.jsonl.
fn losses(out: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let (mut steps, mut evals) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        match v["kind"].as_str() {
            Some("step") => steps.push((step, v["loss"].as_f64().unwrap())),
            Some("eval") => evals.push((step, v["val_loss"].as_f64().unwrap())),
            _ => {}
        }
    }
    (steps, evals)
}

fn assert_close(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (&(sa, la), &(sb, lb)) in a.iter().zip(b) {
        assert_eq!(sa, sb, "{what}");
        assert!((la - lb).abs() <= 1e-5 * la.abs(), "{what} at step {sa}: {la} vs {lb} (beyond 1e-5 relative)");
    }
}

const EQUIVALENCE: &[&str] = &[
    "--max-iters",
    "50",
    "--lr-decay-iters",
    "50",
    "--eval-interval",
    "25",
    "--log-interval",
    "1",
    "--gradient-accumulation-steps",
    "2",
    "--dropout",
    "0.1",
];

#[test]
fn two_ranks_train_as_one_process_with_the_whole_batch_and_rank_0_alone_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    // One process: two replicas (threads) with dropout seeds d, d+1; two ranks of one replica each draw the
    // same masks (rank r's replica takes d + r).
    let mut single = EQUIVALENCE.to_vec();
    single.extend(["--data-parallel", "2"]);
    let mut ranked = EQUIVALENCE.to_vec();
    ranked.extend(["--data-parallel", "1"]);
    let ranked_args = train_args(&data, &two, &ranked);
    let Some(out) = mpi_run(dir.path(), &[(2, ranked_args)]) else { return };
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("2 MPI ranks"), "{out:?}");
    common::ok(&train_args(&data, &one, &single));
    let ((steps_1, evals_1), (steps_2, evals_2)) = (losses(&one), losses(&two));
    assert_eq!(steps_1.len(), 50);
    // One writer: rank 1 appended nothing (50 step lines, not 100).
    assert_close(&steps_1, &steps_2, "training loss");
    assert_close(&evals_1, &evals_2, "validation loss");
    common::ok(&["generate", "--model", s(&two), "--max-new-tokens", "4"]);
}

#[test]
fn ranks_with_one_and_with_two_thread_replicas_sum_their_gradients_alike() {
    // Batch 3 over 2 ranks with 2 replicas wanted: rank 0 runs 2 replicas (its buckets are summed after the
    // replicas' sum), rank 1 one replica (its buckets start during its backward pass). Both must make the
    // same all-reduce calls, and train as one process with 3 replicas (no dropout: the masks' seeds differ).
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let flags = |replicas: &'static str| {
        let mut flags = EQUIVALENCE[..10].to_vec();
        flags.extend(["--max-iters", "20", "--batch-size", "3", "--dropout", "0", "--data-parallel", replicas]);
        flags
    };
    let Some(out) = mpi_run(dir.path(), &[(2, train_args(&data, &two, &flags("2")))]) else { return };
    assert_eq!(out.code, 0, "{out:?}");
    common::ok(&train_args(&data, &one, &flags("3")));
    let ((steps_1, evals_1), (steps_2, evals_2)) = (losses(&one), losses(&two));
    assert_eq!(steps_1.len(), 20);
    assert_close(&steps_1, &steps_2, "training loss");
    assert_close(&evals_1, &evals_2, "validation loss");
}

/// The JSON line of `lushan bench train` under `mpirun -np 2` on a tiny model, with `extra` flags.
fn bench_json(dir: &Path, extra: &[&'static str]) -> Option<serde_json::Value> {
    let mut args = vec!["bench", "train", "--steps", "4", "--warmup", "1", "--n-layer", "3", "--n-head", "2"];
    args.extend(["--n-embd", "32", "--batch-size", "4", "--block-size", "16", "--data-parallel", "1"]);
    args.extend(extra);
    let out = mpi_run(dir, &[(2, args)])?;
    assert_eq!(out.code, 0, "{out:?}");
    let line = out.stdout.lines().find_map(|l| l.strip_prefix("JSON ")).unwrap();
    Some(serde_json::from_str(line).unwrap())
}

#[test]
fn bench_train_reports_the_overlap_of_the_all_reduce_with_the_backward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let Some(overlapped) = bench_json(dir.path(), &[]) else { return };
    let Some(blocking) = bench_json(dir.path(), &["--no-overlap"]) else { return };
    for v in [&overlapped, &blocking] {
        assert_eq!(v["ranks"], 2, "{v}");
        // The whole gradient, once per step, in f32.
        assert_eq!(v["allreduce_bytes"].as_u64().unwrap(), 4 * v["params"].as_u64().unwrap(), "{v}");
        assert!(v["allreduce_ms"].as_f64().unwrap() >= v["allreduce_exposed_ms"].as_f64().unwrap(), "{v}");
    }
    let overlap = overlapped["overlap"].as_f64().unwrap();
    assert!(overlap > 0.0 && overlap <= 1.0, "the sums started during the backward pass hid nothing: {overlapped}");
    assert_eq!(blocking["overlap"], 0.0, "a blocking all-reduce hides nothing: {blocking}");
}

#[test]
fn a_run_resumes_with_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    let flags = |iters: &'static str| {
        vec!["--max-iters", iters, "--lr-decay-iters", "30", "--eval-interval", "10", "--log-interval", "1"]
    };
    let Some(out) = mpi_run(dir.path(), &[(2, train_args(&data, &split, &flags("10")))]) else { return };
    assert_eq!(out.code, 0, "{out:?}");
    common::ok(&["train", "--resume", s(&split), "--max-iters", "20"]);
    let out = mpi_run(dir.path(), &[(2, vec!["train", "--resume", s(&split), "--max-iters", "30"])]).unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    common::ok(&train_args(&data, &straight, &flags("30")));
    let ((steps_a, evals_a), (steps_b, evals_b)) = (losses(&straight), losses(&split));
    assert_close(&steps_a, &steps_b, "training loss, 2 ranks → 1 → 2");
    assert_close(&evals_a, &evals_b, "validation loss, 2 ranks → 1 → 2");
}

/// Every rank exits non-zero (mpirun reports a non-zero code) and rank 0 names the problem once.
fn assert_job_failed(out: &Output, needles: &[&str]) {
    assert!(out.code != 0, "{out:?}");
    for needle in needles {
        assert!(out.stderr.contains(needle), "stderr should name {needle:?}: {out:?}");
    }
    assert_eq!(out.stderr.matches("error: ").count(), 1, "one error, from rank 0: {out:?}");
}

#[test]
fn more_ranks_than_sequences_in_the_global_batch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out_dir = dir.path().join("out");
    let Some(out) = mpi_run(dir.path(), &[(3, train_args(&data, &out_dir, &["--batch-size", "2"]))]) else { return };
    assert_job_failed(&out, &["--batch-size", "3 ranks"]);
    assert!(!out_dir.join("model.safetensors").exists() && !out_dir.join("resume").exists());
}

#[test]
fn ranks_started_with_different_settings_or_unreadable_data_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out_dir = dir.path().join("out");
    let rank0 = train_args(&data, &out_dir, &[]);
    let rank1 = train_args(&data, &out_dir, &["--seed", "7"]);
    let Some(out) = mpi_run(dir.path(), &[(1, rank0.clone()), (1, rank1)]) else { return };
    assert_job_failed(&out, &["rank 1's training settings differ from rank 0's"]);
    assert!(!out_dir.join("model.safetensors").exists());

    let missing = dir.path().join("missing.txt");
    let rank1 = train_args(&missing, &out_dir, &[]);
    let out = mpi_run(dir.path(), &[(1, rank0), (1, rank1)]).unwrap();
    assert_job_failed(&out, &["failed on rank 1", "missing.txt"]);
}

#[test]
fn resuming_another_models_checkpoint_is_refused_and_overwrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out_dir = dir.path().join("out");
    common::ok(&train_args(&data, &out_dir, &["--max-iters", "10", "--eval-interval", "10"]));
    let weights = std::fs::read(out_dir.join("model.safetensors")).unwrap();
    let Some(out) = mpi_run(dir.path(), &[(2, vec!["train", "--resume", s(&out_dir), "--n-embd", "16"])]) else {
        return;
    };
    assert_job_failed(&out, &["n_embd"]);
    assert_eq!(std::fs::read(out_dir.join("model.safetensors")).unwrap(), weights);
}

/// A build without MPI that a launcher started as one of several processes refuses to train copies.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out_dir = dir.path().join("out");
    for variable in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"] {
        let out = Command::new(BIN)
            .args(train_args(&data, &out_dir, &[]))
            .env(variable, "2")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("built without MPI support") && stderr.contains(&format!("{variable}=2")), "{stderr}");
        assert!(!out_dir.exists(), "nothing may be written");
    }
}

#[test]
fn a_fine_tuning_task_splits_uneven_batches_over_ranks_as_one_process_would() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sft.jsonl");
    let records: String = (0..60)
        .map(|i| format!("{{\"prompt\": \"count {}:\", \"completion\": \" {}\"}}\n", i % 9, "x".repeat(1 + i % 9)))
        .collect();
    std::fs::write(&data, records).unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    // Batch 5 over 2 ranks: 3 + 2 sequences, padded to the global batch's longest.
    let flags = [
        "--task",
        "sft",
        "--tokenizer",
        "char",
        "--val-fraction",
        "0.2",
        "--batch-size",
        "5",
        "--block-size",
        "32",
        "--log-interval",
        "1",
    ];
    let Some(out) = mpi_run(dir.path(), &[(2, train_args(&data, &two, &flags))]) else { return };
    assert_eq!(out.code, 0, "{out:?}");
    common::ok(&train_args(&data, &one, &flags));
    let ((steps_1, evals_1), (steps_2, evals_2)) = (losses(&one), losses(&two));
    assert_close(&steps_1, &steps_2, "sft training loss");
    assert_close(&evals_1, &evals_2, "sft validation loss");
}
