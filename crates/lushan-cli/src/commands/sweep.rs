//! `lushan sweep`: a hyper-parameter search whose trials are `lushan train` runs of this same binary, each a
//! child process in its own directory (`DIR/trials/NNN`: its checkpoint, metrics, `train.toml` and
//! `train.log`). Child processes keep one code path for training (the trainer's resume state continues an
//! interrupted trial; halving continues a promoted one with `--resume --max-iters`) and cost a process start
//! per run, as running the trials by hand does. The sweep's own state is its journal (`trials.jsonl`),
//! rewritten atomically after every event, so `--resume DIR` after a kill continues where it stopped.

use crate::sweep_report;
use anyhow::{Context, Result, bail};
use lushan_train::Preset;
use lushan_train::lock::RunLock;
use lushan_train::sweep::state::{self, trial_dir};
use lushan_train::sweep::{Curve, Journal, Method, Metric, NextJob, Schedule, Status, SweepFlags, SweepSpec, method};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The resolved sweep, saved in its directory and compared on `--resume`.
pub const SPEC_FILE: &str = "sweep.json";
/// The best trial's settings, for `lushan train --config best.toml`.
pub const BEST_FILE: &str = "best.toml";
/// A trial's complete training config and its output.
pub const TRIAL_CONFIG: &str = "train.toml";
pub const TRIAL_LOG: &str = "train.log";

#[derive(clap::Args)]
pub struct Args {
    /// The sweep file (TOML): method, seed, the base training settings (preset, train_config, [train]),
    /// [space], [budget], [halving], [median] (see docs/sweep.md); the flags below go over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the sweep in DIR after an interruption: finished trials are kept, an interrupted trial
    /// continues from its resume state.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Where the sweep writes its trials, trials.jsonl/.csv, best.toml and report.html.
    #[arg(long, value_name = "DIR", default_value = "out/sweep")]
    out: PathBuf,
    /// Start a new sweep in an --out directory that holds another one, removing its trials.
    #[arg(long)]
    overwrite: bool,
    /// `grid`, `random` (with the median stopping rule) or `halving` (successive halving).
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// The base training settings' preset.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// A `lushan train --config` file of base training settings.
    #[arg(long, value_name = "FILE")]
    train_config: Option<PathBuf>,
    /// A base training setting, NAME=VALUE (the config file's names, e.g. max_iters=500); repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// A search space, NAME=SPACE in the sweep file's syntax, e.g. 'learning_rate={ log_uniform = [1e-4, 1e-2] }'
    /// or 'batch_size=[8, 16]'; repeatable.
    #[arg(long = "space", value_name = "NAME=SPACE")]
    space: Vec<String>,
    /// Budget: the most trials.
    #[arg(long)]
    trials: Option<u64>,
    /// Budget: the most training steps of all trials together.
    #[arg(long)]
    total_steps: Option<u64>,
    /// Budget: no trial starts after this long (90s, 15m, 1h30m).
    #[arg(long)]
    wall_time: Option<String>,
    /// Seed of the trials' settings (the trials' own training seed is the `seed` setting).
    #[arg(long)]
    seed: Option<u64>,
    /// What trials are compared by (default: val_accuracy for `--task classify`, else val_loss).
    #[arg(long, value_enum)]
    metric: Option<Metric>,
    /// Halving: `async` (ASHA, the default: promote as soon as a trial is among its rung's best so far) or
    /// `sync` (every trial of a rung finishes before any goes on).
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Halving: keep the best 1/ETA of each rung (default 3).
    #[arg(long)]
    eta: Option<u64>,
    /// Halving: the first rung's steps (default max_iters / eta²).
    #[arg(long)]
    min_steps: Option<u64>,
    /// Trials run at once, the cores split between them (each gets RAYON_NUM_THREADS = cores / N; with
    /// RAYON_NUM_THREADS set for the sweep, that many threads are split instead).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
}

impl Args {
    fn flags(&self) -> SweepFlags {
        SweepFlags {
            method: self.method,
            seed: self.seed,
            metric: self.metric,
            preset: self.preset,
            train_config: self.train_config.clone(),
            set: self.set.clone(),
            space: self.space.clone(),
            trials: self.trials,
            total_steps: self.total_steps,
            wall_time: self.wall_time.clone(),
            schedule: self.schedule,
            eta: self.eta,
            min_steps: self.min_steps,
        }
    }

    /// Whether anything but --resume and --parallel describes the sweep.
    fn describes_a_sweep(&self) -> bool {
        let f = self.flags();
        self.config.is_some()
            || f.method.is_some()
            || f.seed.is_some()
            || f.metric.is_some()
            || f.preset.is_some()
            || f.train_config.is_some()
            || !f.set.is_empty()
            || !f.space.is_empty()
            || f.trials.is_some()
            || f.total_steps.is_some()
            || f.wall_time.is_some()
            || f.schedule.is_some()
            || f.eta.is_some()
            || f.min_steps.is_some()
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    if args.parallel == 0 {
        bail!("--parallel must be at least 1 (trials run at once)");
    }
    let (dir, spec, _lock) = open(&args)?;
    let spec_path = dir.join(SPEC_FILE);
    let spec_json = serde_json::to_string_pretty(&spec).context("writing the sweep's settings as JSON")?;
    lushan_fs::atomic_write(&spec_path, spec_json.as_bytes())
        .with_context(|| format!("writing {}", spec_path.display()))?;
    let mut journal = Journal::load(&dir)?;
    // The threads to share: RAYON_NUM_THREADS when set (to keep a sweep to part of the machine), else the cores.
    let shared = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = (shared / args.parallel).max(1);
    println!("{}", describe(&spec, &dir, args.parallel, threads));
    let lock_path = dir.join(lushan_train::lock::LOCK_FILE);
    let stop = crate::interrupt::install(move || {
        let _ = std::fs::remove_file(&lock_path);
    })?;

    let mut sweep = Sweep {
        spec: &spec,
        dir: &dir,
        exe: std::env::current_exe().context("finding the lushan binary to run the trials")?,
        threads,
        running: Vec::new(),
        finished_curves: BTreeMap::new(),
    };
    let deadline = spec.budget.wall_seconds.map(|s| started + Duration::from_secs_f64(s));
    let mut why_done = String::new();
    let mut interrupted = false;
    loop {
        if stop.flag().load(Ordering::SeqCst) && !interrupted {
            interrupted = true;
            sweep.interrupt_children();
        }
        let may_start = !interrupted && deadline.is_none_or(|d| Instant::now() < d);
        let mut idle = true;
        while sweep.running.len() < args.parallel {
            let busy: BTreeSet<usize> = sweep.running.iter().map(|r| r.id).collect();
            match method::next_job(&spec, &mut journal, &busy, may_start)? {
                NextJob::Launch(id) => {
                    sweep.launch(&mut journal, id)?;
                    idle = false;
                }
                NextJob::Wait => break,
                NextJob::Done(why) => {
                    why_done = why;
                    break;
                }
            }
        }
        if sweep.running.is_empty() && idle {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        sweep.poll(&mut journal, interrupted)?;
    }
    // The last decision may have changed records without starting anything (ASHA marks the trials left
    // at a rung when it ends).
    journal.save(&dir, spec.metric)?;
    let wall = started.elapsed().as_secs_f64();
    let best = write_best(&spec, &journal, &dir)?;
    let report = sweep_report::write(&dir, &spec, &journal, wall)?;
    print_summary(&spec, &journal, &dir, wall, best, &report);
    if interrupted {
        println!("interrupted by {}: continue with `lushan sweep --resume {}`", stop.signal_name(), dir.display());
        return Ok(ExitCode::from(stop.exit_code()));
    }
    if !why_done.is_empty() {
        println!("sweep done: {why_done}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The sweep's directory and settings: a new sweep's from its file and flags, a resumed one's from its
/// directory (refusing other settings, naming each difference).
fn open(args: &Args) -> Result<(PathBuf, SweepSpec, RunLock)> {
    let Some(dir) = &args.resume else {
        let spec = SweepSpec::load(args.config.as_deref(), &args.flags())?;
        let dir = args.out.clone();
        // Before anything in it is read or removed: one sweep per directory.
        let lock = lock(&dir)?;
        let held = [SPEC_FILE, state::JOURNAL_FILE].iter().any(|f| dir.join(f).exists());
        if held && !args.overwrite {
            bail!(
                "--out {d} already holds a sweep: continue it with `lushan sweep --resume {d}`, choose another \
                 --out, or pass --overwrite to start again (removing its trials)",
                d = dir.display()
            );
        }
        if held {
            for path in [dir.join(state::TRIALS_DIR)] {
                if path.exists() {
                    std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
                }
            }
            for file in [state::JOURNAL_FILE, state::CSV_FILE, SPEC_FILE, BEST_FILE] {
                let _ = std::fs::remove_file(dir.join(file));
            }
        }
        return Ok((dir, spec, lock));
    };
    let path = dir.join(SPEC_FILE);
    if !path.is_file() {
        bail!("--resume {}: no sweep there (expected {})", dir.display(), path.display());
    }
    let lock = lock(dir)?;
    let text = lushan_fs::read_to_string_regular(&path)
        .with_context(|| format!("--resume {}: no sweep there (reading {})", dir.display(), path.display()))?;
    let saved: SweepSpec = serde_json::from_str(&text)
        .with_context(|| format!("{}: not the settings of a lushan sweep", path.display()))?;
    if args.describes_a_sweep() {
        let asked = SweepSpec::load(args.config.as_deref(), &args.flags())?;
        let differences = saved.differences(&asked);
        if !differences.is_empty() {
            return Err(lushan_train::sweep::SweepError::OtherSweep {
                dir: dir.clone(),
                differences: differences.join("; "),
            }
            .into());
        }
    }
    Ok((dir.clone(), saved, lock))
}

/// Creates the sweep's directory and locks it (a second sweep there is refused, naming the first's process).
fn lock(dir: &Path) -> Result<RunLock> {
    RunLock::acquire(dir).with_context(|| format!("locking the sweep directory {}", dir.display()))
}

/// A trial's training process.
struct Running {
    id: usize,
    child: Child,
    started: Instant,
    /// The metrics file's length when last read, and the last evaluation the median rule judged.
    metrics_len: u64,
    judged_step: u64,
    pruned: Option<String>,
}

struct Sweep<'a> {
    spec: &'a SweepSpec,
    dir: &'a Path,
    exe: PathBuf,
    threads: usize,
    running: Vec<Running>,
    /// Curves of trials that no longer run, read once.
    finished_curves: BTreeMap<usize, Curve>,
}

impl Sweep<'_> {
    /// Starts (or continues) trial `id` towards its target steps.
    fn launch(&mut self, journal: &mut Journal, id: usize) -> Result<()> {
        let trial = &mut journal.trials[id];
        let out = trial_dir(self.dir, id);
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        // Settings drawn from several spaces may not fit together (n_head must divide n_embd): that trial
        // fails, naming why, and the sweep goes on.
        let mut config = match self.spec.trial_config(&trial.settings) {
            Ok(config) => config,
            Err(e) => {
                trial.status = Status::Failed;
                trial.reason = e.to_string();
                println!("trial {id} failed: {}", trial.reason);
                journal.save(self.dir, self.spec.metric)?;
                return Ok(());
            }
        };
        config.out_dir = out.clone();
        config.sample_tokens = 0;
        let config_path = out.join(TRIAL_CONFIG);
        let text = toml::to_string(&config).context("writing the trial's settings as TOML")?;
        lushan_fs::atomic_write(&config_path, text.as_bytes())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let target = trial.target_steps.to_string();
        let out_text = out.display().to_string();
        let config_text = config_path.display().to_string();
        let resumable = lushan_train::resume::locate(&out).is_ok();
        let args: Vec<&str> = if resumable {
            vec!["train", "--resume", &out_text, "--max-iters", &target]
        } else {
            vec!["train", "--config", &config_text, "--max-iters", &target, "--overwrite"]
        };
        wait_for_orphan(&out);
        let log_path = out.join(TRIAL_LOG);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        trial.launches += 1;
        writeln!(log, "=== lushan sweep: run {} of trial {id}: lushan {}", trial.launches, args.join(" "))
            .with_context(|| format!("writing {}", log_path.display()))?;
        let errors = log.try_clone().with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .args(&args)
            .env("RAYON_NUM_THREADS", self.threads.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors);
        // Its own process group: a Ctrl-C in the terminal reaches the sweep alone, which then asks each
        // trial to stop once (a second SIGINT would make a trial exit without saving).
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().with_context(|| format!("starting {} for trial {id}", self.exe.display()))?;
        trial.status = Status::Running;
        trial.reason.clear();
        let settings = trial.settings.iter().map(|(k, v)| format!("{k}={}", state::plain(v))).collect::<Vec<_>>();
        let verb = if resumable { "continues" } else { "starts" };
        println!("trial {id} {verb} to step {target}: {}", settings.join(" "));
        journal.save(self.dir, self.spec.metric)?;
        self.running.push(Running { id, child, started: Instant::now(), metrics_len: 0, judged_step: 0, pruned: None });
        Ok(())
    }

    /// Collects ended trials and applies the median rule to running ones.
    fn poll(&mut self, journal: &mut Journal, interrupted: bool) -> Result<()> {
        let mut i = 0;
        while i < self.running.len() {
            let ended = self.running[i].child.try_wait().context("waiting for a trial")?;
            if let Some(status) = ended {
                let run = self.running.swap_remove(i);
                self.record_end(journal, run, status.code(), interrupted)?;
                continue;
            }
            if !interrupted && self.spec.median.enabled {
                self.judge(journal, i)?;
            }
            i += 1;
        }
        Ok(())
    }

    /// The median rule on running trial `self.running[i]`'s new evaluations; a trial it stops is asked to
    /// stop (it saves its model and resume state, so its directory holds a checkpoint like any other's).
    fn judge(&mut self, journal: &Journal, i: usize) -> Result<()> {
        let id = self.running[i].id;
        let out = trial_dir(self.dir, id);
        let len = std::fs::metadata(out.join(lushan_train::metrics::METRICS_FILE)).map_or(0, |m| m.len());
        if len == self.running[i].metrics_len || self.running[i].pruned.is_some() {
            return Ok(());
        }
        self.running[i].metrics_len = len;
        let (curve, _) = Curve::read(&out, self.spec.metric)?;
        let target = journal.trials[id].target_steps;
        let new: Vec<u64> =
            curve.points.iter().map(|&(s, _)| s).filter(|&s| s > self.running[i].judged_step && s < target).collect();
        let running: BTreeSet<usize> = self.running.iter().map(|r| r.id).collect();
        for t in journal.trials.iter().filter(|t| !running.contains(&t.id) && t.id != id) {
            if !self.finished_curves.contains_key(&t.id) {
                let (c, _) = Curve::read(&trial_dir(self.dir, t.id), self.spec.metric)?;
                self.finished_curves.insert(t.id, c);
            }
        }
        let others: Vec<&Curve> = self.finished_curves.iter().filter(|(k, _)| **k != id).map(|(_, c)| c).collect();
        for step in new {
            self.running[i].judged_step = step;
            if let Some(reason) = method::median_stop(self.spec, &curve, &others, step) {
                let run = &mut self.running[i];
                stop_child(&mut run.child);
                run.pruned = Some(reason);
                break;
            }
        }
        Ok(())
    }

    /// Records how a trial's run ended.
    fn record_end(&mut self, journal: &mut Journal, run: Running, code: Option<i32>, interrupted: bool) -> Result<()> {
        let out = trial_dir(self.dir, run.id);
        let (curve, last) = Curve::read(&out, self.spec.metric)?;
        let last_rung = self.spec.halving.as_ref().and_then(|h| h.rungs.last().copied());
        let trial = &mut journal.trials[run.id];
        trial.update_from(&curve, last, self.spec.metric.direction());
        trial.seconds += run.started.elapsed().as_secs_f64();
        let reached = trial.steps >= trial.target_steps;
        let (status, reason) = match (run.pruned, code) {
            (Some(reason), _) => (Status::Pruned, reason),
            (None, Some(0)) if reached && last_rung.is_some_and(|last| trial.target_steps < last) => {
                (Status::RungDone, String::new())
            }
            (None, Some(0)) if reached => (Status::Finished, format!("trained {} steps", trial.steps)),
            (None, Some(0)) => (Status::EarlyStopped, format!("early stopping at step {}", trial.steps)),
            // Stopped by SIGINT / SIGTERM (ours, forwarded on Ctrl-C, or one sent to it) after saving its
            // resume state, or killed by the sweep on an interruption: continued on --resume.
            (None, Some(130 | 143)) => (Status::Running, format!("interrupted at step {}", trial.steps)),
            (None, None) if interrupted => (Status::Running, format!("interrupted at step {}", trial.steps)),
            (None, _) => (Status::Failed, failure(&out.join(TRIAL_LOG), code)),
        };
        println!(
            "trial {} {} at step {}{}{}",
            run.id,
            status.name(),
            trial.steps,
            trial.best.map(|b| format!(": best {} {b:.4}", self.spec.metric.name())).unwrap_or_default(),
            if reason.is_empty() { String::new() } else { format!(" ({reason})") }
        );
        trial.status = status;
        trial.reason = reason;
        if last_rung.is_some() && matches!(status, Status::RungDone | Status::Finished) {
            trial.complete_rung();
        }
        if !trial.status.is_active() {
            self.finished_curves.insert(run.id, curve);
        }
        journal.save(self.dir, self.spec.metric)?;
        Ok(())
    }

    /// Asks every running trial to stop and save its resume state (SIGINT, as Ctrl-C would).
    fn interrupt_children(&mut self) {
        for run in self.running.iter_mut().filter(|r| r.pruned.is_none()) {
            stop_child(&mut run.child);
        }
    }
}

/// Asks a trial's run to stop as Ctrl-C does (SIGINT, sent with `kill`, as this crate has no `unsafe`): it
/// stops after the current micro-batch and saves its resume state and a model. Killed outright when the
/// signal cannot be sent.
fn stop_child(child: &mut Child) {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !sent {
        let _ = child.kill();
    }
}

/// A trial directory may still be locked by a trial of a sweep that was killed (`kill -9` ends the sweep,
/// not its children): that run is waited for, then continued from its resume state.
fn wait_for_orphan(out: &Path) {
    let mut told = false;
    loop {
        match RunLock::acquire(out) {
            Ok(mut lock) => {
                lock.release();
                return;
            }
            Err(lushan_train::TrainError::Locked { pid, .. }) => {
                if !told {
                    println!(
                        "waiting for process {pid}, still training in {} (left by an earlier sweep)",
                        out.display()
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // Any other problem is the trial's own to report.
            Err(_) => return,
        }
    }
}

/// Why a trial's run failed: its log's last error line.
fn failure(log: &Path, code: Option<i32>) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()));
    let code = code.map_or("a signal".to_owned(), |c| format!("exit code {c}"));
    match line {
        Some(line) => format!("{code}: {}", line.trim()),
        None => code,
    }
}

/// Writes `best.toml`: the best trial's complete training config, into `DIR/best`, with the base's sample.
fn write_best(spec: &SweepSpec, journal: &Journal, dir: &Path) -> Result<Option<usize>> {
    let direction = spec.metric.direction();
    let Some(best) =
        journal.trials.iter().filter(|t| t.best.is_some()).min_by(|a, b| {
            direction.compare(a.best.unwrap_or(f64::NAN), b.best.unwrap_or(f64::NAN)).then(a.id.cmp(&b.id))
        })
    else {
        return Ok(None);
    };
    let mut config = spec.trial_config(&best.settings)?;
    config.out_dir = dir.join("best");
    let header = format!(
        "# The best trial of the sweep in {} (trial {}, best {} {:.4} at step {}).\n# Train it with `lushan train \
         --config {}`.\n",
        dir.display(),
        best.id,
        spec.metric.name(),
        best.best.unwrap_or(f64::NAN),
        best.best_step.unwrap_or(0),
        dir.join(BEST_FILE).display()
    );
    let text = header + &toml::to_string(&config).context("writing the best settings as TOML")?;
    let path = dir.join(BEST_FILE);
    lushan_fs::atomic_write(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(best.id))
}

fn describe(spec: &SweepSpec, dir: &Path, parallel: usize, threads: usize) -> String {
    let spaces: Vec<String> = spec.space.iter().map(|(k, s)| format!("{k}: {}", s.describe())).collect();
    let plan = match (&spec.halving, spec.method) {
        (Some(h), _) => method::describe_halving(h),
        (None, Method::Grid) => format!("{} grid points", spec.grid_points.unwrap_or(0)),
        (None, _) => "random samples".to_owned(),
    };
    format!(
        "sweep in {}: {:?} ({plan}), {} trial(s) at once on {threads} thread(s) each, compared by {}\n  {}",
        dir.display(),
        spec.method,
        parallel,
        spec.metric.name(),
        spaces.join("\n  ")
    )
}

fn print_summary(
    spec: &SweepSpec,
    journal: &Journal,
    dir: &Path,
    wall: f64,
    best: Option<usize>,
    report: &sweep_report::Written,
) {
    let steps: u64 = journal.trials.iter().map(|t| t.steps).sum();
    let trial_seconds: f64 = journal.trials.iter().map(|t| t.seconds).sum();
    println!(
        "{} trials, {steps} training steps in all; {wall:.1} s for this invocation (the trials' own runs: {:.1} s)",
        journal.trials.len(),
        trial_seconds
    );
    if let Some(best) = best.and_then(|id| journal.trials.get(id)) {
        println!(
            "best: trial {} with {} {:.4} at step {} — {}; train it with `lushan train --config {}`",
            best.id,
            spec.metric.name(),
            best.best.unwrap_or(f64::NAN),
            best.best_step.unwrap_or(0),
            best.settings.iter().map(|(k, v)| format!("{k}={}", state::plain(v))).collect::<Vec<_>>().join(" "),
            dir.join(BEST_FILE).display()
        );
    }
    println!("report: {} ({} pictures)", report.html.display(), report.pictures);
}
