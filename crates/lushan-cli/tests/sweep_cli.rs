//! `lushan sweep` end to end: the files a sweep writes, halving's promotion continuing a trial exactly,
//! resuming after `kill -9` (also in the middle of an asynchronous halving sweep with two trials at once)
//! and after Ctrl-C without rerunning finished work, and bad input.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A sweep file over the tiny model on `small.txt` in `dir`: `extra` is added at the top level (method,
/// seed) and `tail` after the sections (more sections).
fn sweep_file(dir: &Path, name: &str, top: &str, max_iters: u64, tail: &str) -> String {
    let data = corpus(dir);
    let text = format!(
        "{top}\n[train]\ndata = \"{}\"\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 16\nbatch_size = 4\n\
         max_iters = {max_iters}\neval_interval = 10\neval_iters = 2\nwarmup_iters = 2\n{tail}\n",
        s(&data)
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn journal(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("trials.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn launches_logged(out: &Path, id: usize) -> usize {
    let log = std::fs::read_to_string(out.join(format!("trials/{id:03}/train.log"))).unwrap();
    log.matches("=== lushan sweep: run").count()
}

#[test]
fn a_random_sweep_writes_its_journal_table_best_settings_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let space = "[space]\nlearning_rate = { log_uniform = [1e-4, 3e-2] }\nbatch_size = [2, 4]\n[budget]\ntrials = 4\n";
    let file = sweep_file(dir.path(), "sweep.toml", "method = \"random\"\nseed = 5", 20, space);
    let out = dir.path().join("out");
    let run = ok(&["sweep", "--config", &file, "--out", s(&out)]);
    assert!(run.stdout.contains("best: trial"), "{run:?}");
    let trials = journal(&out);
    assert_eq!(trials.len(), 4);
    for t in &trials {
        let status = t["status"].as_str().unwrap();
        assert!(["finished", "pruned"].contains(&status), "{t}");
        assert!(t["best"].as_f64().unwrap().is_finite());
        assert!(out.join(format!("trials/{:03}/model.safetensors", t["id"].as_u64().unwrap())).is_file(), "{t}");
    }
    let csv = std::fs::read_to_string(out.join("trials.csv")).unwrap();
    assert!(csv.starts_with("trial,status,best_val_loss,best_step,steps,seconds,rung,batch_size,learning_rate,reason"));
    assert_eq!(csv.lines().count(), 5);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 4, "curves, 2 settings, parallel");
    assert!(html.contains("Ranking") && html.contains("log-uniform"));
    for png in ["curves.png", "parallel.png", "param-learning-rate.png", "param-batch-size.png"] {
        assert!(std::fs::read(out.join(png)).unwrap().starts_with(b"\x89PNG"), "{png}");
    }
    // best.toml is a complete config that `lushan train --config` accepts, with the best trial's settings.
    let best = std::fs::read_to_string(out.join("best.toml")).unwrap();
    let best_id =
        trials.iter().min_by(|a, b| a["best"].as_f64().unwrap().total_cmp(&b["best"].as_f64().unwrap())).unwrap()["id"]
            .as_u64()
            .unwrap();
    let batch = trials[best_id as usize]["settings"]["batch_size"].as_i64().unwrap();
    assert!(best.contains(&format!("batch_size = {batch}\n")), "{best}");
    let trained = ok(&["train", "--config", s(&out.join("best.toml")), "--max-iters", "2"]);
    assert!(trained.stdout.contains("done: 2 steps"), "{trained:?}");
    assert!(out.join("best/model.safetensors").is_file());
    // The same sweep again into the same directory is refused (resume it instead).
    fails(&["sweep", "--config", &file, "--out", s(&out)], &["already holds a sweep", "--resume"]);
}

#[test]
fn halving_promotes_the_best_and_a_promoted_trial_continues_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let space =
        "[space]\nlearning_rate = { log_uniform = [1e-4, 3e-2] }\n[budget]\ntrials = 3\n[halving]\nmin_steps = 10\n";
    let file = sweep_file(dir.path(), "sweep.toml", "method = \"halving\"\nseed = 2", 30, space);
    let out = dir.path().join("out");
    ok(&["sweep", "--config", &file, "--out", s(&out)]);
    let trials = journal(&out);
    let finished: Vec<&serde_json::Value> = trials.iter().filter(|t| t["status"] == "finished").collect();
    assert_eq!(finished.len(), 1, "{trials:?}");
    let winner = finished[0]["id"].as_u64().unwrap() as usize;
    assert_eq!(finished[0]["steps"], 30);
    for t in trials.iter().filter(|t| t["status"] != "finished") {
        assert_eq!((t["status"].as_str().unwrap(), t["steps"].as_u64().unwrap()), ("pruned", 10), "{t}");
        assert!(t["best"].as_f64().unwrap() >= finished[0]["best"].as_f64().unwrap() - 1.0);
    }
    // Rung 1 (10 steps), then continued with --resume to 30: two runs, and the same numbers as one
    // uninterrupted run of its settings.
    assert_eq!(launches_logged(&out, winner), 2);
    let straight = dir.path().join("straight");
    let config = out.join(format!("trials/{winner:03}/train.toml"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let status = Command::new(BIN)
        .args(["train", "--config", s(&config), "--out-dir", s(&straight)])
        .env("RAYON_NUM_THREADS", threads)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let evals = |dir: &Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "eval")
            .map(|v| (v["step"].as_u64().unwrap(), v["val_loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(evals(&out.join(format!("trials/{winner:03}"))), evals(&straight));
}

#[test]
fn a_sweep_killed_with_kill_9_resumes_without_rerunning_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let space = "[space]\nlearning_rate = [1e-3, 2e-3, 3e-3, 4e-3]\n[median]\nenabled = false\n";
    let file = sweep_file(dir.path(), "sweep.toml", "method = \"grid\"", 60, space);
    let out = dir.path().join("out");
    let mut sweep = spawn(&["sweep", "--config", &file, "--out", s(&out)], dir.path());
    let one_finished = wait_for(Duration::from_secs(120), || {
        std::fs::read_to_string(out.join("trials.jsonl")).is_ok_and(|t| t.contains("\"finished\""))
    });
    sweep.kill().unwrap(); // SIGKILL: no chance to clean up; a running trial is left behind, orphaned
    sweep.wait().unwrap();
    assert!(one_finished, "no trial finished before the timeout");
    let before = journal(&out);
    let done: Vec<usize> =
        before.iter().filter(|t| t["status"] == "finished").map(|t| t["id"].as_u64().unwrap() as usize).collect();
    assert!(!done.is_empty() && before.len() < 4 + 1);

    let resumed = ok(&["sweep", "--resume", s(&out)]);
    let after = journal(&out);
    assert_eq!(after.len(), 4, "{resumed:?}");
    for t in &after {
        assert_eq!((t["status"].as_str().unwrap(), t["steps"].as_u64().unwrap()), ("finished", 60), "{t}");
    }
    for id in done {
        assert_eq!(launches_logged(&out, id), 1, "finished trial {id} was run again");
        assert_eq!(after[id], before[id], "finished trial {id}'s record changed");
    }
    // A trial that was running when the sweep died continues (from its resume state when it had one).
    for t in before.iter().filter(|t| t["status"] == "running") {
        let id = t["id"].as_u64().unwrap() as usize;
        assert!(after[id]["launches"].as_u64().unwrap() >= 2, "{}", after[id]);
    }
}

#[test]
fn an_asha_sweep_killed_with_kill_9_resumes_without_rerunning_finished_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let space = "[space]\nlearning_rate = { log_uniform = [1e-4, 3e-2] }\n[budget]\ntrials = 9\n\
                 [halving]\nmin_steps = 20\n";
    let file = sweep_file(dir.path(), "sweep.toml", "method = \"halving\"\nseed = 4", 60, space);
    let out = dir.path().join("out");
    let mut sweep = spawn(&["sweep", "--config", &file, "--out", s(&out), "--parallel", "2"], dir.path());
    let promoted = wait_for(Duration::from_secs(180), || {
        std::fs::read_to_string(out.join("trials.jsonl")).is_ok_and(|t| t.contains("\"rung\":1"))
    });
    sweep.kill().unwrap();
    sweep.wait().unwrap();
    assert!(promoted, "no trial was promoted before the timeout");
    let before = journal(&out);
    assert!(before.len() < 9 || before.iter().any(|t| t["status"] == "running"), "{before:?}");

    let resumed = ok(&["sweep", "--resume", s(&out), "--parallel", "2"]);
    let after = journal(&out);
    assert_eq!(after.len(), 9, "{resumed:?}");
    let finished: Vec<&serde_json::Value> = after.iter().filter(|t| t["status"] == "finished").collect();
    assert!(!finished.is_empty(), "{after:?}");
    for t in &after {
        let (id, steps) = (t["id"].as_u64().unwrap() as usize, t["steps"].as_u64().unwrap());
        match t["status"].as_str().unwrap() {
            "finished" => assert_eq!(steps, 60, "{t}"),
            "pruned" => assert_eq!(steps, 20, "{t}"),
            _ => panic!("trial {id} ended {t}"),
        }
        // One run per piece (rung), and one more for a piece that the kill interrupted.
        let pieces = t["rung"].as_u64().unwrap() as usize + 1;
        let interrupted = before.get(id).is_some_and(|b| b["status"] == "running") as usize;
        assert!((pieces..=pieces + interrupted).contains(&launches_logged(&out, id)), "{t}");
    }
    // What was done before the kill stays done: a trial waiting at its rung keeps its result there, and a
    // finished one its record.
    for b in &before {
        let id = b["id"].as_u64().unwrap() as usize;
        match b["status"].as_str().unwrap() {
            "finished" => assert_eq!(after[id], *b),
            "rung_done" => assert_eq!(after[id]["rung_results"][0], b["rung_results"][0], "{}", after[id]),
            _ => {}
        }
    }
    // A sweep made before the schedule existed (its sweep.json without one) resumes as synchronous
    // halving: this one is done, so nothing runs again.
    let saved = std::fs::read_to_string(out.join("sweep.json")).unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&saved).unwrap();
    spec["halving"].as_object_mut().unwrap().remove("schedule");
    std::fs::write(out.join("sweep.json"), spec.to_string()).unwrap();
    let again = ok(&["sweep", "--resume", s(&out)]);
    assert!(again.stdout.contains("synchronous successive halving"), "{again:?}");
    assert!(!again.stdout.contains("starts to step") && !again.stdout.contains("continues to step"), "{again:?}");
    assert_eq!(journal(&out), after);
}

#[test]
fn ctrl_c_stops_the_sweep_with_its_trials_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let space = "[space]\nlearning_rate = [1e-3, 2e-3]\n[median]\nenabled = false\n";
    let file = sweep_file(dir.path(), "sweep.toml", "method = \"grid\"", 400, space);
    let out = dir.path().join("out");
    let sweep = spawn(&["sweep", "--config", &file, "--out", s(&out)], dir.path());
    let trial = out.join("trials/000");
    assert!(wait_for(Duration::from_secs(120), || saved_step(&trial).is_some_and(|s| s >= 10)));
    Command::new("kill").args(["-INT", &sweep.id().to_string()]).status().unwrap();
    let stopped = finish(sweep, dir.path(), Duration::from_secs(120));
    assert_eq!(stopped.code, 130, "{stopped:?}");
    assert!(stopped.stdout.contains("lushan sweep --resume"), "{stopped:?}");
    let t = &journal(&out)[0];
    assert_eq!(t["status"], "running", "{t}");
    let step = saved_step(&trial).unwrap();
    assert!(step > 0 && step < 400, "the trial saved its resume state at step {step}");
    let resumed = ok(&["sweep", "--resume", s(&out)]);
    assert!(resumed.stdout.contains("trial 0 continues"), "{resumed:?}");
    let log = std::fs::read_to_string(trial.join("train.log")).unwrap();
    assert!(log.contains(&format!("starting at step {step}")), "{log}");
    assert!(journal(&out).iter().all(|t| t["status"] == "finished" && t["steps"] == 400));
}

#[test]
fn bad_input_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases: [(&str, &[&str]); 6] = [
        ("[space]\nlearnig_rate = [1e-3]\n[budget]\ntrials = 2\n", &["unknown setting `learnig_rate`", "[space]"]),
        ("[space]\nlr = [1e-3]\n[budget]\ntrials = 2\n", &["`lr`", "learning_rate"]),
        ("[budget]\ntrials = 2\n", &["search space is empty"]),
        ("[space]\nlearning_rate = []\n[budget]\ntrials = 2\n", &["learning_rate", "empty"]),
        (
            "[space]\nlearning_rate = { log_uniform = [0, 1e-2] }\n[budget]\ntrials = 2\n",
            &["learning_rate", "includes 0"],
        ),
        ("[space]\nlearning_rate = [1e-3]\n[budget]\ntotal_steps = 10\n", &["budget fits no trial", "20"]),
    ];
    for (i, (tail, needles)) in cases.iter().enumerate() {
        let file = sweep_file(dir.path(), &format!("bad{i}.toml"), "", 20, tail);
        fails(&["sweep", "--config", &file, "--out", s(&out)], needles);
        assert!(!out.join("trials.jsonl").exists(), "nothing is written for bad input");
    }
    fails(
        &["sweep", "--space", "batch_size=[4]", "--trials", "1", "--set", "n_head=3", "--out", s(&out)],
        &["--n-head"],
    );
    fails(&["sweep", "--resume", s(&dir.path().join("none"))], &["no sweep there"]);
    // --resume with another configuration names the difference.
    let file = sweep_file(dir.path(), "a.toml", "", 10, "[space]\nlearning_rate = [1e-3]\n[budget]\ntrials = 1\n");
    ok(&["sweep", "--config", &file, "--out", s(&out)]);
    let other = sweep_file(dir.path(), "b.toml", "", 10, "[space]\nlearning_rate = [2e-3]\n[budget]\ntrials = 1\n");
    fails(&["sweep", "--resume", s(&out), "--config", &other], &["another sweep configuration", "space.learning_rate"]);
    ok(&["sweep", "--resume", s(&out), "--config", &file]);
}
