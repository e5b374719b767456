//! `lushan train`: the training loop with a progress bar, metrics, a loss curve and a closing sample.

use crate::model_dir;
use crate::plot::{LossCurves, render_loss_curve_png};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lushan_model::checkpoint::atomic_write;
use lushan_model::{Generator, Gpt, Head, Lora, LoraConfig, LoraTarget, Sampling};
use lushan_tokenizer::Tokenizer;
use lushan_train::lock::RunLock;
use lushan_train::tasks::{Task, TaskData};
use lushan_train::{DataSource, TrainData};
use lushan_train::{EvalReport, InitFrom, Observer, Preset, RunEnd, StepReport, TrainConfig, TrainOverrides, Trainer};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
#[command(allow_negative_numbers = true)] // so `--learning-rate -1` reaches the validation that names the flag
pub struct Args {
    /// A TOML file of settings (the flag names with underscores); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Starting settings.
    #[arg(long, value_enum, default_value_t = Preset::ShakespeareChar)]
    preset: Preset,
    // The settings come first so that their headings are listed in their order (Data, Model, …, Output);
    // boxed, as they are large beside the other commands' arguments.
    #[command(flatten)]
    settings: Box<TrainOverrides>,
    /// Continue the run whose checkpoint directory is DIR, bit-identically (flags may change e.g. --max-iters).
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    resume: Option<PathBuf>,
    /// Train into an --out-dir that already holds a checkpoint, replacing it (without this, such a directory is
    /// refused so that no trained model is lost).
    #[arg(long, help_heading = "Output")]
    overwrite: bool,
}

pub const LOSS_CURVE_FILE: &str = "loss.png";

pub fn run(args: Args) -> Result<ExitCode> {
    let mut group = CliGroup::from(lushan_train::distributed::connect()?);
    if group.size() == 1 {
        return run_in(args, &mut group);
    }
    let rank = group.rank();
    let e = match run_in(args, &mut group) {
        Ok(code) => return Ok(code),
        Err(e) => e,
    };
    // An error every rank agreed on ([`CliGroup::agree`]) reached all of them at the same point: rank 0 says it
    // for the job, then all meet once more before exiting, so that no rank's early exit lets the launcher kill
    // rank 0 before its message is written. Any other error is the rank's own: it says it and exits, and the
    // launcher ends the job.
    let agreed = e
        .downcast_ref::<lushan_train::TrainError>()
        .is_some_and(|e| matches!(e, lushan_train::TrainError::Distributed(_)));
    if rank == 0 {
        eprintln!("error: {}", crate::error_chain(&e));
    } else if !agreed {
        eprintln!("error: rank {rank}: {}", crate::error_chain(&e));
    }
    if agreed {
        group.0.any(true);
    }
    Ok(ExitCode::FAILURE)
}

/// The group of processes, with the CLI's errors: a start-up stage's outcome is shared by every rank
/// ([`lushan_train::distributed::Group::agree`]), so that all go on or all stop with rank 0 naming the rank that failed and why.
struct CliGroup(lushan_train::distributed::Group);

impl From<lushan_train::distributed::Group> for CliGroup {
    fn from(group: lushan_train::distributed::Group) -> Self {
        Self(group)
    }
}

impl CliGroup {
    fn size(&self) -> usize {
        self.0.size()
    }
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn writer(&self) -> bool {
        self.0.is_writer()
    }
    fn agree<T>(&mut self, stage: &str, local: Result<T>) -> Result<T> {
        if self.size() == 1 {
            return local;
        }
        let local = local.map_err(|e| lushan_train::TrainError::Distributed(format!("{e:#}")));
        Ok(self.0.agree(stage, local)?)
    }
}

fn run_in(args: Args, group: &mut CliGroup) -> Result<ExitCode> {
    let started = Instant::now();
    let writer = group.writer();
    let config = resolve(&args).and_then(|mut config| check_inputs(&mut config, writer).map(|b| (config, b)));
    let (mut config, bundled) = group.agree("reading the settings", config)?;
    // Before anything is written into the directory (tokenized data, metrics, checkpoints): one run per
    // directory. Creating the lock also proves the directory can be created and written. Rank 0 alone
    // writes into it.
    let lock = group
        .agree("locking the output directory", writer.then(|| prepare_out_dir(&args, &config, bundled)).transpose())?;
    let init = match (config.init_from.clone(), &args.resume) {
        (InitFrom::Dir(dir), None) => {
            let (mut model, tokenizer) = group.agree("loading the starting checkpoint", model_dir::load(&dir))?;
            model.config.dropout = config.dropout;
            config.adopt_model_shape(&model.config);
            if writer {
                println!(
                    "fine-tuning {} ({} parameters, tokenizer {}); its shape overrides the model settings",
                    dir.display(),
                    model.num_params(),
                    tokenizer.describe()
                );
            }
            Some((model, tokenizer))
        }
        _ => None,
    };
    let settings_text = toml::to_string(&config).context("writing the resolved settings as TOML")?;
    if writer {
        println!("# resolved training configuration\n{settings_text}");
    }
    let (data, mut model) = load_on_every_rank(group, &config, init, args.resume.is_some())?;
    let data_hash = lushan_train::distributed::data_fingerprint(&config, &data);
    let data_hash = group.agree("fingerprinting the data", data_hash.map_err(anyhow::Error::from))?;
    let mut config_hash = lushan_train::distributed::Fingerprint::default();
    config_hash.add(settings_text.as_bytes());
    group.0.check_same_inputs(config_hash.value(), data_hash)?;
    if config.lora_rank > 0
        && let Some(model) = model.as_mut()
    {
        let lora_config = LoraConfig {
            rank: config.lora_rank,
            alpha: config.lora_alpha,
            dropout: config.lora_dropout,
            targets: LoraTarget::parse_list(&config.lora_targets).context("--lora-targets")?,
        };
        lora_config.validate(&model.config).context("LoRA settings")?;
        let lora = Lora::new(lora_config, &model.config, config.seed)?;
        model.attach_lora(lora)?;
        if writer {
            println!(
                "LoRA: rank {}, alpha {}, on {}: {} trainable values ({:.2} % of {}); the base stays frozen",
                config.lora_rank,
                config.lora_alpha,
                config.lora_targets,
                model.num_trainable(),
                100.0 * model.num_trainable() as f64 / model.num_params() as f64,
                model.num_params()
            );
        }
    }
    if writer {
        println!("data: {}", data.summary());
    }
    // Every rank checks the same settings against the same data, so they fail (or not) together.
    let ranks = group.size();
    let trainer = match &args.resume {
        Some(_) => Trainer::resume_in(group.0.clone(), config.clone(), data),
        None => Trainer::new_in(group.0.clone(), config.clone(), data, model),
    };
    let mut trainer = group.agree("setting up the run", trainer.map_err(anyhow::Error::from))?;
    let out_dir = config.out_dir.clone();
    if writer {
        let settings_path = out_dir.join(lushan_train::resume::SETTINGS_FILE);
        atomic_write(&settings_path, settings_text.as_bytes())
            .with_context(|| format!("writing {}", settings_path.display()))?;
        println!(
            "model: {} parameters ({} layers, {} heads, {} channels, context {}); starting at step {}{}",
            trainer.model.num_params(),
            config.n_layer,
            config.n_head,
            config.n_embd,
            config.block_size,
            trainer.step_count(),
            if ranks > 1 { format!("; {}", trainer.group().describe()) } else { String::new() }
        );
    }

    // `exit` skips destructors: a second signal removes the lock file itself.
    let lock_path = lock.as_ref().map(|lock| lock.path().to_path_buf());
    let stop = crate::interrupt::install(move || {
        if let Some(path) = &lock_path {
            let _ = std::fs::remove_file(path);
        }
    })?;

    let mut progress = Progress::new(&config, trainer.step_count(), &out_dir)?;
    progress.plain_lines = !std::io::stdout().is_terminal();
    let observer: &mut dyn Observer = if writer { &mut progress } else { &mut () };
    let end = trainer.run(observer, stop.flag());
    progress.bar.finish_and_clear();
    let end = match end {
        Ok(end) => end,
        // The other ranks wait for this one in their next sum: end the whole job, with this rank's reason.
        Err(e) if ranks > 1 => {
            eprintln!("error: rank {}: {}", trainer.group().rank(), crate::error_chain(&anyhow::Error::from(e)));
            trainer.abort_job(1)
        }
        Err(e) => return Err(e.into()),
    };
    if !writer {
        return Ok(match end {
            RunEnd::Interrupted => ExitCode::from(stop.exit_code()),
            _ => ExitCode::SUCCESS,
        });
    }
    progress.draw_curve();
    let best = match trainer.best_val_accuracy {
        Some(acc) => format!("{:.4} (accuracy {:.2} %)", trainer.best_val_loss, 100.0 * acc),
        None => format!("{:.4}", trainer.best_val_loss),
    };
    if let Some(step) = trainer.saved_not_best {
        println!(
            "no evaluation saved a best model, so the model at step {step} is saved in {} (marked \"best\": false \
             in {}); sample it with `lushan generate --model {}`",
            out_dir.display(),
            lushan_train::metrics::METRICS_FILE,
            out_dir.display()
        );
    }
    match end {
        RunEnd::Interrupted => {
            println!(
                "interrupted at step {} by {}: resume state saved to {}/resume (continue with `lushan train \
                 --resume {}`)",
                trainer.step_count(),
                stop.signal_name(),
                out_dir.display(),
                out_dir.display()
            );
            return Ok(ExitCode::from(stop.exit_code()));
        }
        RunEnd::EarlyStopped => println!(
            "early stopping at step {}: validation loss did not improve for {} evaluations",
            trainer.step_count(),
            config.early_stopping_patience
        ),
        RunEnd::Finished => {}
    }
    println!(
        "done: {} steps in {:.1} s; best validation loss {best}; checkpoint in {}",
        trainer.step_count(),
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    if config.sample_tokens > 0 && trainer.model.config.num_labels() == 0 {
        sample(&trainer, config.sample_tokens, config.seed)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Rank 0's preparation of the output directory: the lock, the refusal of another run's checkpoint, the
/// bundled corpus.
fn prepare_out_dir(args: &Args, config: &TrainConfig, bundled: bool) -> Result<RunLock> {
    let lock = RunLock::acquire(&config.out_dir).context("locking the output directory")?;
    // After the lock, so that a directory another run is training into is named as such.
    if args.resume.is_none() {
        refuse_existing_checkpoint(&config.out_dir, args.overwrite)?;
    }
    if bundled {
        write_bundled_corpus(&config.data)?;
    }
    Ok(lock)
}

/// Loads the data (and model) on every rank: rank 0 first, as it may tokenize text into `out_dir/data`,
/// which the other ranks then read instead of writing it again.
fn load_on_every_rank(
    group: &mut CliGroup,
    config: &TrainConfig,
    init: Option<(Gpt, Tokenizer)>,
    resuming: bool,
) -> Result<(TrainData, Option<Gpt>)> {
    if group.size() == 1 {
        return load_data_and_model(config, init, resuming);
    }
    let (first, init) = if group.writer() {
        (Some(group.agree("reading the data", load_data_and_model(config, init, resuming))?), None)
    } else {
        group.agree("reading the data", Ok(()))?;
        (None, init)
    };
    let loaded = match first {
        Some(loaded) => Ok(loaded),
        None => {
            let mut reader = config.clone();
            let prepared = config.out_dir.join("data");
            if config.task == Task::Lm && !config.data.join(lushan_train::data::TRAIN_SHARD).is_file() {
                reader.data = prepared;
            }
            load_data_and_model(&reader, init, resuming)
        }
    };
    group.agree("reading the data", loaded)
}

/// The run's data and, when it does not start from scratch, its model: for `classify`, the checkpoint's
/// labels constrain the data's (unless `--reset-head`), and a language model gets a score head for the data's
/// labels.
fn load_data_and_model(
    config: &TrainConfig,
    init: Option<(Gpt, Tokenizer)>,
    resuming: bool,
) -> Result<(TrainData, Option<Gpt>)> {
    // A resumed task run tokenizes with the tokenizer it was started with (saved beside the resume state).
    let resumed_tokenizer = match (resuming, config.task) {
        (true, Task::Classify | Task::Sft) => Some(
            lushan_train::data::load_tokenizer(&config.out_dir.join(lushan_train::resume::RESUME_DIR))
                .context("loading the resumed run's tokenizer")?,
        ),
        _ => None,
    };
    let tokenizer = init.as_ref().map(|(_, t)| t).or(resumed_tokenizer.as_ref());
    match config.task {
        Task::Lm | Task::Sft => {
            let data = TrainData::load_for(config, tokenizer).context("loading training data")?;
            Ok((data, init.map(|(m, _)| m)))
        }
        Task::Classify => {
            let head_labels = match init.as_ref().map(|(m, _)| &m.config.head) {
                Some(Head::Classifier { labels, .. }) if !config.reset_head => Some(labels.clone()),
                _ => None,
            };
            let data = TrainData::load_task(config, tokenizer, head_labels).context("loading training data")?;
            let DataSource::Task(TaskData::Classify { train, .. }) = &data.source else {
                anyhow::bail!("classification data expected");
            };
            let labels = train.labels.clone();
            let pad = data.tokenizer.end_of_text().unwrap_or(data.tokenizer.vocab_size().saturating_sub(1) as u32);
            let model = match init {
                Some((model, _)) => model.with_classifier_head(labels, pad, config.seed)?,
                None if resuming => return Ok((data, None)),
                None => {
                    let mut cfg = config.model_config(data.tokenizer.vocab_size());
                    cfg.head = Head::Classifier { labels, pad_token_id: pad };
                    lushan_train::trainer::check_memory(config, &cfg, &data, None)?;
                    Gpt::new(cfg, config.seed)?
                }
            };
            Ok((data, Some(model)))
        }
    }
}

/// Tiny Shakespeare, built into the binary: the default `--data` works from any directory and after
/// `cargo install`.
const BUNDLED_CORPUS: &[u8] = include_bytes!("../../../../data/tinyshakespeare.txt");

/// Checks that every input the settings name exists, before anything is printed or written. The default
/// corpus, when not found relative to the current directory, is taken from the binary: `config.data` then
/// points at the copy to be written into the output directory, and `true` is returned.
fn check_inputs(config: &mut TrainConfig, writer: bool) -> Result<bool> {
    let default_data = TrainConfig::preset(Preset::ShakespeareChar).data;
    let bundled = config.task == Task::Lm && config.data == default_data && !config.data.exists();
    let missing = |flag: &str, path: &Path, expected: &str| {
        anyhow::anyhow!("{flag} {}: no such file or directory (expected {expected})", path.display())
    };
    if !bundled && !config.data.exists() {
        let expected = match config.task {
            Task::Lm => "a text file, a directory of text files, JSON Lines, or a directory made by `lushan prepare`",
            Task::Classify => "a JSONL or CSV file of labelled texts",
            Task::Sft => "a JSONL file of prompt/completion or chat records",
        };
        return Err(missing("--data", &config.data, expected));
    }
    if let Some(val) = config.val_data_path().filter(|path| !path.exists()) {
        return Err(missing("--val-data", val, "a file of validation records"));
    }
    match &config.init_from {
        InitFrom::Dir(dir) if !dir.exists() => {
            return Err(missing("--init-from", dir, "`scratch` or a checkpoint directory"));
        }
        InitFrom::Scratch if !["char", "gpt2"].contains(&config.tokenizer.as_str()) => {
            let path = Path::new(&config.tokenizer);
            if !path.exists() {
                return Err(missing("--tokenizer", path, "`char`, `gpt2`, or a tokenizer file or directory"));
            }
        }
        _ => {}
    }
    if bundled {
        let copy = config.out_dir.join("data").join(default_data.file_name().unwrap_or_default());
        config.data = copy.clone();
        if !writer {
            return Ok(bundled);
        }
        println!(
            "{} is not in the current directory: training on the copy of tiny Shakespeare built into lushan \
             (written to {})",
            default_data.display(),
            copy.display()
        );
        config.data = copy;
    }
    Ok(bundled)
}

fn write_bundled_corpus(path: &Path) -> Result<()> {
    if std::fs::read(path).is_ok_and(|bytes| bytes == BUNDLED_CORPUS) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    atomic_write(path, BUNDLED_CORPUS).with_context(|| format!("writing {}", path.display()))
}

/// A new run refuses a directory that holds another run's checkpoint (its best model or resume state),
/// unless `--overwrite` says to replace it.
fn refuse_existing_checkpoint(out_dir: &Path, overwrite: bool) -> Result<()> {
    let holds_checkpoint = [
        lushan_model::checkpoint::CONFIG_FILE,
        lushan_model::checkpoint::WEIGHTS_FILE,
        lushan_train::resume::RESUME_DIR,
        "resume.old",
    ]
    .iter()
    .any(|name| out_dir.join(name).exists())
        || lushan_model::checkpoint::adapter::is_adapter_dir(out_dir);
    if !holds_checkpoint {
        return Ok(());
    }
    if overwrite {
        println!("--overwrite: the checkpoint in {} is replaced by this run's", out_dir.display());
        return Ok(());
    }
    anyhow::bail!(
        "--out-dir {dir} already holds a checkpoint: continue that run with `lushan train --resume {dir}`, \
         choose another --out-dir, or pass --overwrite to replace it",
        dir = out_dir.display()
    )
}

fn resolve(args: &Args) -> Result<TrainConfig> {
    match &args.resume {
        Some(dir) => {
            let mut config = lushan_train::resume::saved_config(dir)?;
            note_ignored_with_resume(args, dir);
            let init_from = config.init_from.clone();
            if let Some(file) = &args.config {
                config.apply(&lushan_train::config::read_overrides(file)?);
            }
            config.apply(&args.settings);
            // Resuming continues the saved run: its directory and its starting point stay (see the note above).
            config.out_dir = dir.clone();
            config.init_from = init_from;
            config.validate()?;
            Ok(config)
        }
        None => Ok(TrainConfig::resolve(args.preset, args.config.as_deref(), &args.settings)?),
    }
}

/// `--resume DIR` continues the run saved in DIR, into DIR, from the weights saved there: an output
/// directory or starting checkpoint given as well is not used, and the user is told so.
fn note_ignored_with_resume(args: &Args, dir: &Path) {
    if let Some(out) = args.settings.out_dir.as_ref().filter(|out| *out != dir) {
        eprintln!(
            "note: --out-dir {} is ignored: --resume {} continues the run in its own directory",
            out.display(),
            dir.display()
        );
    }
    if let Some(init) = &args.settings.init_from {
        eprintln!(
            "note: --init-from {} is ignored: --resume {} continues from the weights saved there",
            String::from(init.clone()),
            dir.display()
        );
    }
}

/// A closing sample from the trained model (nanoGPT's `sample.py` defaults: temperature 0.8, top-k 200).
fn sample(trainer: &Trainer, tokens: usize, seed: u64) -> Result<()> {
    let tokenizer = &trainer.data.tokenizer;
    let prompt = tokenizer.encode("\n").or_else(|_| tokenizer.encode(" ")).unwrap_or_else(|_| vec![0]);
    let sampling = Sampling { temperature: 0.8, top_k: Some(200), ..Sampling::default() };
    // Cached decoding reads plain weights: a LoRA run samples from its adapters merged into a copy.
    let mut model = trainer.model.clone();
    model.merge_lora()?;
    let mut generator = Generator::new(&model, &prompt, sampling, seed, tokens)?;
    println!("--- sample ({tokens} tokens, temperature 0.8, top-k 200) ---");
    let mut out = Vec::new();
    while let Some(token) = generator.next_token()? {
        out.push(token);
    }
    println!("{}", tokenizer.decode(&out)?);
    Ok(())
}

/// Progress bar, evaluation lines and the loss curve.
struct Progress {
    bar: ProgressBar,
    out_dir: PathBuf,
    train_curve: Vec<(u64, f32)>,
    val_curve: Vec<(u64, f32)>,
    accuracy_curve: Vec<(u64, f32)>,
    /// The strongest induction head's score at each evaluation.
    induction_curve: Vec<(u64, f32)>,
    tokens_per_second: f64,
    seconds_per_step: f64,
    /// Print a plain line every `log_interval` steps (for logs, pipes and notebooks, where the bar is hidden).
    plain_lines: bool,
    log_interval: u64,
    max_iters: u64,
}

impl Progress {
    fn new(config: &TrainConfig, start: u64, out_dir: &Path) -> Result<Self> {
        let bar = ProgressBar::new(config.max_iters);
        bar.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
                .context("progress bar template")?,
        );
        bar.set_position(start);
        let mut p = Self {
            bar,
            out_dir: out_dir.to_path_buf(),
            train_curve: Vec::new(),
            val_curve: Vec::new(),
            accuracy_curve: Vec::new(),
            induction_curve: Vec::new(),
            tokens_per_second: 0.0,
            seconds_per_step: 0.0,
            plain_lines: false,
            log_interval: config.log_interval,
            max_iters: config.max_iters,
        };
        // A resumed run continues the curve it had.
        for line in lushan_train::metrics::read_metrics(out_dir).unwrap_or_default() {
            match line {
                lushan_train::metrics::MetricsLine::Step { step, loss, .. } if step <= start => {
                    p.train_curve.push((step, loss))
                }
                lushan_train::metrics::MetricsLine::Eval { step, val_loss, val_accuracy, induction_score, .. }
                    if step <= start =>
                {
                    p.val_curve.push((step, val_loss));
                    p.accuracy_curve.extend(val_accuracy.map(|a| (step, a)));
                    p.induction_curve.extend(induction_score.map(|s| (step, s)));
                }
                _ => {}
            }
        }
        Ok(p)
    }

    fn draw_curve(&self) {
        let curves = LossCurves {
            train: &self.train_curve,
            val: &self.val_curve,
            accuracy: &self.accuracy_curve,
            induction: &self.induction_curve,
            title: "lushan training loss",
        };
        let path = self.out_dir.join(LOSS_CURVE_FILE);
        let result = render_loss_curve_png(&curves, 900, 540).and_then(|png| Ok(atomic_write(&path, &png)?));
        if let Err(e) = result {
            self.bar.suspend(|| eprintln!("warning: could not draw {}: {e:#}", path.display()));
        }
    }
}

impl Observer for Progress {
    fn on_step(&mut self, r: &StepReport) {
        // Smoothed throughput so the ETA and tokens/s do not jitter.
        let smooth = |average: f64, now: f64| if average == 0.0 { now } else { 0.9 * average + 0.1 * now };
        self.tokens_per_second = smooth(self.tokens_per_second, r.tokens_per_second);
        self.seconds_per_step = smooth(self.seconds_per_step, r.seconds);
        if self.plain_lines && r.step.is_multiple_of(self.log_interval) {
            let eta = self.seconds_per_step * self.max_iters.saturating_sub(r.step) as f64;
            println!(
                "step {}/{}: loss {:.4}, lr {:.2e}, {:.0} tokens/s, {:.1} ms/step, ETA {}",
                r.step,
                self.max_iters,
                r.loss,
                r.lr,
                self.tokens_per_second,
                self.seconds_per_step * 1e3,
                format_duration(eta)
            );
        }
        self.train_curve.push((r.step, r.loss));
        self.bar.set_position(r.step);
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s {:.1} ms/step",
            r.loss,
            r.lr,
            self.tokens_per_second,
            r.seconds * 1e3
        ));
    }

    fn on_eval(&mut self, r: &EvalReport) {
        self.val_curve.push((r.step, r.val_loss));
        self.accuracy_curve.extend(r.val_accuracy.map(|a| (r.step, a)));
        self.induction_curve.extend(r.induction.map(|h| (r.step, h.score)));
        let saved = if r.saved_model { " (saved)" } else { "" };
        // `suspend` + `println!`, not `bar.println`: the latter prints nothing when the bar is hidden (output
        // not a terminal), which would drop the evaluation lines from logs and pipes.
        let accuracy = r.val_accuracy.map(|a| format!(", val accuracy {:.2} %", 100.0 * a)).unwrap_or_default();
        let induction = r
            .induction
            .map(|h| format!(", induction {:.2} (head {}.{})", h.score, h.layer + 1, h.head + 1))
            .unwrap_or_default();
        self.bar.suspend(|| {
            println!(
                "step {}: train loss {:.4}, val loss {:.4}{accuracy}{induction}{saved}",
                r.step, r.train_loss, r.val_loss
            )
        });
        if r.step > 0 {
            self.draw_curve();
        }
    }
}

/// `1h02m`, `3m05s` or `42s`.
fn format_duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds:02}s"),
        _ => format!("{hours}h{minutes:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::format_duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(format_duration(42.4), "42s");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(3720.0), "1h02m");
        assert_eq!(format_duration(f64::NAN), "0s");
    }
}
