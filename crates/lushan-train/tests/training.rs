//! The training loop end to end on a tiny model and a 30 KB slice of tiny Shakespeare (DESIGN.md §9):
//! overfitting one batch, gradient accumulation, bit-identical resume (also across a crash between the
//! renames of a resume save), early stopping, non-finite losses, the best checkpoint, and the errors a
//! user can cause with mismatched models.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use lushan_model::checkpoint::{self, CONFIG_FILE, WEIGHTS_FILE};
use lushan_model::{Activations, Generator, Gpt, Mode, ModelConfig, ParamKind, Sampling};
use lushan_tokenizer::{CharTokenizer, TOKENIZER_FILE, Tokenizer};
use lushan_train::data::load_tokenizer;
use lushan_train::metrics::{METRICS_FILE, MetricsLine, read_metrics};
use lushan_train::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use lushan_train::resume::{self, OPTIMIZER_FILE, RESUME_DIR, STATE_FILE};
use lushan_train::{EvalReport, Observer, Preset, RunEnd, StepReport, TrainConfig, TrainData, TrainError, Trainer};

const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tinyshakespeare.txt");
const CORPUS_BYTES: usize = 30_000;

/// The first 30 KB of tiny Shakespeare (ASCII, so any byte prefix is valid UTF-8).
fn corpus_text() -> String {
    let bytes = fs::read(SHAKESPEARE).unwrap();
    String::from_utf8(bytes[..CORPUS_BYTES].to_vec()).unwrap()
}

/// Writes the corpus into `dir` and returns its path.
fn write_corpus(dir: &Path) -> PathBuf {
    let path = dir.join("input.txt");
    fs::write(&path, corpus_text()).unwrap();
    path
}

/// A tiny run over `data` into `out_dir`: 2 layers, 2 heads, 32 channels, context 16, batch 4.
fn tiny_config(data: &Path, out_dir: &Path) -> TrainConfig {
    let mut c = TrainConfig::preset(Preset::ShakespeareChar);
    c.data = data.to_path_buf();
    c.out_dir = out_dir.to_path_buf();
    c.n_layer = 2;
    c.n_head = 2;
    c.n_embd = 32;
    c.block_size = 16;
    c.batch_size = 4;
    c.max_iters = 12;
    c.eval_interval = 4;
    c.eval_iters = 2;
    c.log_interval = 1;
    c.dropout = 0.0;
    c.learning_rate = 3e-3;
    c.min_lr = 3e-4;
    c.warmup_iters = 2;
    c.lr_decay_iters = 12;
    c.sample_tokens = 0;
    c.seed = 7;
    c
}

/// The config the resume tests share: dropout and accumulation on, so every piece of RNG and loader
/// state has to survive a save.
fn resume_config(data: &Path, out_dir: &Path) -> TrainConfig {
    let mut c = tiny_config(data, out_dir);
    c.dropout = 0.1;
    c.gradient_accumulation_steps = 2;
    c
}

fn new_trainer(cfg: &TrainConfig) -> Trainer {
    Trainer::new(cfg.clone(), TrainData::load(cfg).unwrap(), None).unwrap()
}

fn resume_trainer(cfg: &TrainConfig) -> Trainer {
    Trainer::resume(cfg.clone(), TrainData::load(cfg).unwrap()).unwrap()
}

/// Everything of a step report that must not depend on wall-clock time, as bits.
fn report_bits(r: &StepReport) -> (u64, u32, u32, u32) {
    (r.step, r.loss.to_bits(), r.lr.to_bits(), r.grad_norm.to_bits())
}

fn eval_bits(r: &EvalReport) -> (u64, u32, u32, bool, bool) {
    (r.step, r.train_loss.to_bits(), r.val_loss.to_bits(), r.improved, r.saved_model)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Runs `n` updates with `step()`, returning their reports as bits.
fn steps(trainer: &mut Trainer, n: usize) -> Vec<(u64, u32, u32, u32)> {
    (0..n).map(|_| report_bits(&trainer.step().unwrap())).collect()
}

/// Asserts that two trainers hold bit-identical parameters, AdamW moments and step counts.
fn assert_same_state(a: &Trainer, b: &Trainer) {
    assert_eq!(a.optimizer.step, b.optimizer.step, "step counts differ");
    assert_eq!(a.model.config, b.model.config, "model configs differ");
    for (name, x, y) in [
        ("params", &a.model.params, &b.model.params),
        ("adamw.m", &a.optimizer.m, &b.optimizer.m),
        ("adamw.v", &a.optimizer.v, &b.optimizer.v),
    ] {
        let first = x.iter().zip(y.iter()).position(|(p, q)| p.to_bits() != q.to_bits());
        assert!(first.is_none() && x.len() == y.len(), "{name} differ (first at {first:?})");
    }
    assert_eq!(a.best_val_loss.to_bits(), b.best_val_loss.to_bits(), "best_val_loss differs");
    assert_eq!(a.evals_without_improvement, b.evals_without_improvement);
}

/// Rows `offsets[i] .. offsets[i] + t + 1` of `tokens` as (inputs, targets), each (B, T) row-major.
fn rows(tokens: &[u32], offsets: &[usize], t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut x = Vec::with_capacity(offsets.len() * t);
    let mut y = Vec::with_capacity(offsets.len() * t);
    for &o in offsets {
        x.extend_from_slice(&tokens[o..o + t]);
        y.extend_from_slice(&tokens[o + 1..o + t + 1]);
    }
    (x, y)
}

fn char_tokens() -> (Tokenizer, Vec<u32>) {
    let text = corpus_text();
    let tokenizer = Tokenizer::from(CharTokenizer::from_text(&text).unwrap());
    let tokens = tokenizer.encode(&text).unwrap();
    (tokenizer, tokens)
}

/// Records every report, and raises `stop` after the update numbered `stop_after`.
struct Recorder<'a> {
    steps: Vec<(u64, u32, u32, u32)>,
    evals: Vec<(u64, u32, u32, bool, bool)>,
    stop: Option<(&'a AtomicBool, u64)>,
}

impl<'a> Recorder<'a> {
    fn new(stop: Option<(&'a AtomicBool, u64)>) -> Self {
        Self { steps: Vec::new(), evals: Vec::new(), stop }
    }
}

impl Observer for Recorder<'_> {
    fn on_step(&mut self, report: &StepReport) {
        self.steps.push(report_bits(report));
        if let Some((flag, at)) = self.stop
            && report.step == at
        {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn on_eval(&mut self, report: &EvalReport) {
        self.evals.push(eval_bits(report));
    }
}

/// The bytes of every file a checkpoint directory holds: the best model, its tokenizer and the resume state.
fn checkpoint_files(out_dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut paths = vec![out_dir.join(WEIGHTS_FILE), out_dir.join(CONFIG_FILE), out_dir.join(TOKENIZER_FILE)];
    let resume_dir = out_dir.join(RESUME_DIR);
    let mut resume_files: Vec<PathBuf> = fs::read_dir(&resume_dir).unwrap().map(|e| e.unwrap().path()).collect();
    resume_files.sort();
    paths.extend(resume_files);
    paths.into_iter().map(|p| (p.clone(), fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))).collect()
}

#[test]
fn overfits_one_batch() {
    let (tokenizer, tokens) = char_tokens();
    let vocab = tokenizer.vocab_size();
    let (b, t) = (4, 16);
    let model_config = ModelConfig::new(vocab, t, 2, 2, 32);
    let mut model = Gpt::new(model_config.clone(), 42).unwrap();
    let mut acts = Activations::new(&model_config, b, t).unwrap();
    let (x, y) = rows(&tokens, &[0, 7_000, 14_000, 21_000], t);
    let mut grads = vec![0.0; model.num_params()];
    let mut opt = AdamWState::new(model.num_params());
    let settings = OptimizerSettings { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 };

    let mut losses = Vec::new();
    for _ in 0..250 {
        let loss = model.forward(&mut acts, &x, Some(&y), Mode::Eval).unwrap().unwrap();
        losses.push(loss);
        grads.fill(0.0);
        model.backward(&mut acts, &mut grads, 1.0, Mode::Eval);
        let norm = clip_grad_norm(&mut grads, 1.0);
        assert!(norm.is_finite(), "gradient norm {norm} at step {}", opt.step + 1);
        opt.update(&mut model, &grads, 3e-3, &settings);
    }
    let last = model.forward(&mut acts, &x, Some(&y), Mode::Eval).unwrap().unwrap();

    // GPT-2 init gives near-uniform predictions: the first loss is about ln(V).
    let uniform = (vocab as f32).ln();
    assert!((losses[0] - uniform).abs() < 0.3, "initial loss {} is far from ln({vocab}) = {uniform}", losses[0]);
    // 64 targets, each determined by its row's prefix (the four rows start with different text), are
    // memorised by a model with 28k parameters: the loss must reach near zero, not the entropy of the text.
    assert!(last < 0.1, "loss after 250 steps on one batch is {last} (trajectory every 50: {:?})", {
        losses.iter().step_by(50).collect::<Vec<_>>()
    });
    assert!(losses[125] < losses[0] && last < losses[125], "loss did not keep falling: {losses:?}");
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let (tokenizer, tokens) = char_tokens();
    let (b, t, k) = (2, 16, 3);
    let model_config = ModelConfig::new(tokenizer.vocab_size(), t, 2, 2, 32);
    let model = Gpt::new(model_config.clone(), 3).unwrap();
    let offsets: Vec<usize> = (0..b * k).map(|i| 1_000 + i * 3_217).collect();

    // k micro-batches of B rows, each scaled by 1/k, accumulated into one buffer.
    let mut small = Activations::new(&model_config, b, t).unwrap();
    let mut accumulated = vec![0.0f32; model.num_params()];
    let mut micro_losses = 0.0f64;
    for chunk in offsets.chunks(b) {
        let (x, y) = rows(&tokens, chunk, t);
        micro_losses += model.forward(&mut small, &x, Some(&y), Mode::Eval).unwrap().unwrap() as f64;
        model.backward(&mut small, &mut accumulated, 1.0 / k as f32, Mode::Eval);
    }

    // The same k·B rows as one batch.
    let mut big = Activations::new(&model_config, b * k, t).unwrap();
    let (x, y) = rows(&tokens, &offsets, t);
    let big_loss = model.forward(&mut big, &x, Some(&y), Mode::Eval).unwrap().unwrap();
    let mut whole = vec![0.0f32; model.num_params()];
    model.backward(&mut big, &mut whole, 1.0, Mode::Eval);

    let mean_loss = (micro_losses / k as f64) as f32;
    assert!((mean_loss - big_loss).abs() < 1e-5, "mean micro-batch loss {mean_loss} vs big-batch loss {big_loss}");
    for kind in ParamKind::ALL.into_iter().filter(|k| k.present(&model.config)) {
        let r = model.layout.range(kind);
        let (acc, one) = (&accumulated[r.clone()], &whole[r]);
        let scale = one.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{}: the big-batch gradient is all zero", kind.name());
        let (worst, diff) = acc
            .iter()
            .zip(one)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0.0f32), |best, (i, d)| if d > best.1 { (i, d) } else { best });
        assert!(
            diff <= 1e-5 * scale,
            "{}: accumulated gradient differs from the big batch's by {diff} at index {worst} \
             ({} vs {}; max |g| {scale})",
            kind.name(),
            acc[worst],
            one[worst]
        );
    }
}

#[test]
fn resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());

    // A: 12 updates straight.
    let cfg_a = resume_config(&data, &tmp.path().join("a"));
    let mut a = new_trainer(&cfg_a);
    let straight = steps(&mut a, 12);
    // Dropout is active: the same updates without it give different losses (so the RNG matters).
    let mut no_dropout = tiny_config(&data, &tmp.path().join("no-dropout"));
    no_dropout.gradient_accumulation_steps = 2;
    let mut plain = new_trainer(&no_dropout);
    assert_ne!(steps(&mut plain, 1)[0].1, straight[0].1, "dropout 0.1 did not change the first loss");

    // B: 5 updates, save, drop everything, resume from disk, 7 more.
    let cfg_b = resume_config(&data, &tmp.path().join("b"));
    let mut b = new_trainer(&cfg_b);
    let mut resumed = steps(&mut b, 5);
    b.save_resume().unwrap();
    drop(b);
    let mut b = resume_trainer(&cfg_b);
    assert_eq!(b.step_count(), 5);
    assert_eq!(b.model.config.dropout, 0.1, "the resumed model lost its dropout");
    resumed.extend(steps(&mut b, 7));

    assert_eq!(resumed, straight, "step reports (step, loss, lr, grad norm bits) differ after resume");
    assert_same_state(&a, &b);

    // The same through `run`, with evaluations and best-model checkpoints, interrupted after update 6.
    let cfg_c = resume_config(&data, &tmp.path().join("c"));
    let mut c = new_trainer(&cfg_c);
    let never = AtomicBool::new(false);
    let mut whole = Recorder::new(None);
    assert_eq!(c.run(&mut whole, &never).unwrap(), RunEnd::Finished);
    assert_eq!(whole.steps, straight, "run() took different updates than step()");
    assert_eq!(whole.evals.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 4, 8, 12]);

    let cfg_d = resume_config(&data, &tmp.path().join("d"));
    let mut d = new_trainer(&cfg_d);
    let stop = AtomicBool::new(false);
    let mut first = Recorder::new(Some((&stop, 6)));
    assert_eq!(d.run(&mut first, &stop).unwrap(), RunEnd::Interrupted);
    assert_eq!(d.step_count(), 6);
    let progress = (d.best_val_loss.to_bits(), d.evals_without_improvement);
    assert!(d.best_val_loss.is_finite(), "the evaluations at 0 and 4 set a best loss");
    drop(d);
    let mut d = resume_trainer(&cfg_d);
    assert_eq!((d.best_val_loss.to_bits(), d.evals_without_improvement), progress, "evaluation progress lost");
    let mut second = Recorder::new(None);
    assert_eq!(d.run(&mut second, &never).unwrap(), RunEnd::Finished);
    first.steps.extend(second.steps);
    first.evals.extend(second.evals);
    assert_eq!(first.steps, whole.steps, "interrupted run() took different updates");
    assert_eq!(first.evals, whole.evals, "interrupted run() evaluated differently");
    assert_same_state(&c, &d);
    assert_eq!(
        fs::read(cfg_c.out_dir.join(WEIGHTS_FILE)).unwrap(),
        fs::read(cfg_d.out_dir.join(WEIGHTS_FILE)).unwrap(),
        "the best checkpoints differ"
    );
    // The resumed run appended to the metrics log: the same steps and evaluations, each once.
    let summary = |dir: &Path| -> Vec<String> {
        read_metrics(dir)
            .unwrap()
            .into_iter()
            .map(|line| match line {
                MetricsLine::Step { step, loss, .. } => format!("step {step} {}", loss.to_bits()),
                MetricsLine::Eval { step, val_loss, .. } => format!("eval {step} {}", val_loss.to_bits()),
                MetricsLine::Saved { step, reason, .. } => format!("saved {step} {reason}"),
            })
            .collect()
    };
    assert_eq!(summary(&cfg_c.out_dir), summary(&cfg_d.out_dir));
    assert_eq!(summary(&cfg_c.out_dir).len(), 12 + 4);
}

#[test]
fn early_stopping_fires() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let mut cfg = tiny_config(&data, &tmp.path().join("out"));
    // A learning rate of 0 leaves every parameter exactly as it is (AdamW's decay factor is 1 - 0·wd = 1
    // and its step is 0·m/(√v+ε) = 0), so every evaluation measures the same validation loss.
    cfg.learning_rate = 0.0;
    cfg.decay_lr = false;
    cfg.eval_interval = 1;
    cfg.max_iters = 50;
    cfg.early_stopping_patience = 2;
    // The evaluation before the first update sets the best loss (anything beats +∞). The evaluations
    // after updates 1 and 2 equal it, which is not an improvement: 2 evaluations without one = patience.
    let mut trainer = new_trainer(&cfg);
    let never = AtomicBool::new(false);
    let mut rec = Recorder::new(None);
    assert_eq!(trainer.run(&mut rec, &never).unwrap(), RunEnd::EarlyStopped);
    assert_eq!(trainer.step_count(), 2, "early stopping fired at the wrong update");
    assert_eq!(rec.steps.len(), 2);
    let improved: Vec<(u64, bool)> = rec.evals.iter().map(|e| (e.0, e.3)).collect();
    assert_eq!(improved, [(0, true), (1, false), (2, false)]);
    assert!(rec.evals.iter().all(|e| e.2 == rec.evals[0].2), "validation loss changed with lr 0: {:?}", rec.evals);
    assert_eq!(trainer.evals_without_improvement, 2);

    // The best loss and the count of evaluations without improvement survive an interruption: stopped
    // after update 1 (its evaluation is the first without improvement), the resumed run with patience 3
    // stops at update 3. Forgetting the count would stop at 4; forgetting the best loss, at 5.
    cfg.early_stopping_patience = 3;
    cfg.out_dir = tmp.path().join("interrupted");
    let mut trainer = new_trainer(&cfg);
    let stop = AtomicBool::new(false);
    let mut rec = Recorder::new(Some((&stop, 1)));
    assert_eq!(trainer.run(&mut rec, &stop).unwrap(), RunEnd::Interrupted);
    assert_eq!((trainer.step_count(), trainer.evals_without_improvement), (1, 1));
    drop(trainer);
    let mut trainer = resume_trainer(&cfg);
    let mut rec = Recorder::new(None);
    assert_eq!(trainer.run(&mut rec, &never).unwrap(), RunEnd::EarlyStopped);
    assert_eq!(trainer.step_count(), 3, "early stopping after resume fired at the wrong update");
    let improved: Vec<(u64, bool)> = rec.evals.iter().map(|e| (e.0, e.3)).collect();
    assert_eq!(improved, [(2, false), (3, false)]);

    // Patience 0 never stops early.
    cfg.early_stopping_patience = 0;
    cfg.max_iters = 4;
    cfg.out_dir = tmp.path().join("no-patience");
    let mut trainer = new_trainer(&cfg);
    assert_eq!(trainer.run(&mut (), &never).unwrap(), RunEnd::Finished);
    assert_eq!(trainer.step_count(), 4);
}

#[test]
fn nan_loss_stops_and_keeps_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let cfg = tiny_config(&data, &tmp.path().join("out"));
    let mut trainer = new_trainer(&cfg);
    steps(&mut trainer, 3);
    let report = trainer.eval_and_checkpoint().unwrap();
    assert!(report.improved && report.saved_model, "{report:?}");
    let before = checkpoint_files(&cfg.out_dir);
    let good_params = trainer.model.params.clone();

    // One NaN in the final layer norm's weight makes every logit, hence the loss, NaN.
    let lnf = trainer.model.layout.range(ParamKind::LnfW);
    trainer.model.params[lnf.start] = f32::NAN;
    let err = trainer.run(&mut (), &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteLoss { step: 4, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("NaN at step 4") && message.contains("last good checkpoint"), "{message}");
    assert_eq!(trainer.step_count(), 3, "a step with a NaN loss must not update");

    // An evaluation of the broken model must not overwrite the checkpoint either.
    let err = trainer.eval_and_checkpoint().unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteLoss { step: 3, .. }), "{err:?}");

    let after = checkpoint_files(&cfg.out_dir);
    assert_eq!(before.len(), after.len());
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        assert!(a == b, "{} changed after the non-finite loss", path.display());
    }
    // The kept checkpoint is the good model, and the run resumes from it.
    let (_, saved) = checkpoint::load_model_dir(&cfg.out_dir).unwrap();
    assert_eq!(bits(&saved), bits(&good_params));
    let mut resumed = resume_trainer(&cfg);
    assert_eq!(resumed.step_count(), 3);
    assert!(resumed.step().unwrap().loss.is_finite());
}

#[test]
fn resume_with_a_different_model_config_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let cfg = tiny_config(&data, &tmp.path().join("out"));
    let mut trainer = new_trainer(&cfg);
    steps(&mut trainer, 1);
    trainer.save_resume().unwrap();
    drop(trainer);

    let mut wider = cfg.clone();
    wider.n_embd = 64;
    let err = Trainer::resume(wider.clone(), TrainData::load(&wider).unwrap()).unwrap_err();
    assert!(matches!(err, TrainError::Resume { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("n_embd: checkpoint has 32, requested 64"), "{message}");
    assert!(!message.contains("n_layer") && !message.contains("n_head"), "only n_embd differs: {message}");
    assert!(message.contains(&cfg.out_dir.display().to_string()), "{message}");

    let mut deeper = cfg.clone();
    deeper.n_layer = 3;
    deeper.block_size = 32;
    let message = Trainer::resume(deeper.clone(), TrainData::load(&deeper).unwrap()).unwrap_err().to_string();
    assert!(message.contains("n_layer: checkpoint has 2, requested 3"), "{message}");
    assert!(message.contains("block_size: checkpoint has 16, requested 32"), "{message}");
}

#[test]
fn resume_survives_a_crash_between_renames() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let reference_cfg = resume_config(&data, &tmp.path().join("reference"));
    let mut reference = new_trainer(&reference_cfg);
    let straight = steps(&mut reference, 12);

    let cfg = resume_config(&data, &tmp.path().join("out"));
    let mut trainer = new_trainer(&cfg);
    let mut taken = steps(&mut trainer, 5);
    trainer.save_resume().unwrap();
    // The state after update 6 is what later saves would overwrite; keep running in memory only.
    taken.extend(steps(&mut trainer, 1));
    drop(trainer);
    let live = cfg.out_dir.join(RESUME_DIR);
    let tmp_dir = cfg.out_dir.join(format!("{RESUME_DIR}.tmp"));
    let old = cfg.out_dir.join(format!("{RESUME_DIR}.old"));

    // (a) A crash while writing the next save: resume.tmp has a truncated model and no state file.
    fs::create_dir_all(&tmp_dir).unwrap();
    let weights = fs::read(live.join(WEIGHTS_FILE)).unwrap();
    fs::write(tmp_dir.join(WEIGHTS_FILE), &weights[..weights.len() / 3]).unwrap();
    assert_eq!(resume::locate(&cfg.out_dir).unwrap(), live);
    let state = resume::load(&cfg.out_dir).unwrap();
    assert_eq!(state.optimizer.step, 5);
    let mut trainer = resume_trainer(&cfg);
    let mut from_a = taken[..5].to_vec();
    from_a.extend(steps(&mut trainer, 7));
    assert_eq!(from_a, straight, "resuming beside a half-written resume.tmp diverged");
    assert_same_state(&reference, &trainer);
    // The next save replaces the debris and leaves one complete state.
    trainer.save_resume().unwrap();
    assert!(!tmp_dir.exists() && !old.exists(), "a save left resume.tmp or resume.old behind");
    assert_eq!(resume::load(&cfg.out_dir).unwrap().optimizer.step, 12);
    drop(trainer);

    // (b) A crash between the two renames: the live state was moved to resume.old, the new one not yet in.
    let cfg = resume_config(&data, &tmp.path().join("out-b"));
    let mut trainer = new_trainer(&cfg);
    steps(&mut trainer, 5);
    trainer.save_resume().unwrap();
    drop(trainer);
    let live = cfg.out_dir.join(RESUME_DIR);
    let old = cfg.out_dir.join(format!("{RESUME_DIR}.old"));
    fs::rename(&live, &old).unwrap();
    assert_eq!(resume::locate(&cfg.out_dir).unwrap(), old);
    assert_eq!(resume::load(&cfg.out_dir).unwrap().optimizer.step, 5);
    assert_eq!(resume::saved_config(&cfg.out_dir).unwrap(), cfg);
    let mut trainer = resume_trainer(&cfg);
    let mut from_b = straight[..5].to_vec();
    from_b.extend(steps(&mut trainer, 7));
    assert_eq!(from_b, straight, "resuming from resume.old diverged");
    assert_same_state(&reference, &trainer);
    trainer.save_resume().unwrap();
    assert!(live.join(STATE_FILE).is_file() && live.join(OPTIMIZER_FILE).is_file());
    assert!(!old.exists(), "resume.old was not cleaned up by the next save");
    assert_eq!(resume::load(&cfg.out_dir).unwrap().optimizer.step, 12);

    // No state at all is a named error.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let message = resume::load(&empty).unwrap_err().to_string();
    assert!(message.contains("no resume state found"), "{message}");
}

#[test]
fn best_checkpoint_loads_in_generate_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let cfg = tiny_config(&data, &tmp.path().join("out"));
    let mut trainer = new_trainer(&cfg);
    // `run`'s schedule by hand (evaluate at 0, 4 and 8), then two updates that no evaluation sees.
    let first = trainer.eval_and_checkpoint().unwrap();
    assert!(first.improved && !first.saved_model, "step 0 must not save a model: {first:?}");
    let mut best: Option<(u64, f32, Vec<f32>)> = None;
    for step in 1..=10u64 {
        trainer.step().unwrap();
        if step.is_multiple_of(4) {
            let report = trainer.eval_and_checkpoint().unwrap();
            if report.saved_model {
                best = Some((step, report.val_loss, trainer.model.params.clone()));
            }
        }
    }
    let (best_step, best_loss, best_params) = best.expect("no evaluation improved on the untrained model");
    assert_eq!(trainer.best_val_loss.to_bits(), best_loss.to_bits());
    assert_ne!(bits(&trainer.model.params), bits(&best_params), "updates after the last evaluation changed nothing");

    let out = &cfg.out_dir;
    for name in [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, METRICS_FILE] {
        assert!(out.join(name).is_file(), "{name} is missing from the checkpoint directory");
    }
    assert!(out.join(RESUME_DIR).join(STATE_FILE).is_file());
    let metrics = read_metrics(out).unwrap();
    let step_lines: Vec<u64> = metrics
        .iter()
        .filter_map(|l| if let MetricsLine::Step { step, .. } = l { Some(*step) } else { None })
        .collect();
    let eval_lines: Vec<u64> = metrics
        .iter()
        .filter_map(|l| if let MetricsLine::Eval { step, .. } = l { Some(*step) } else { None })
        .collect();
    assert_eq!(step_lines, (1..=10).collect::<Vec<u64>>());
    assert_eq!(eval_lines, [0, 4, 8]);

    // What `lushan generate` does with the directory.
    let (config, params) = checkpoint::load_model_dir(out).unwrap();
    assert_eq!(config, trainer.model.config);
    assert_eq!(bits(&params), bits(&best_params), "model.safetensors is not the model of the best evaluation");
    let tokenizer = load_tokenizer(out).unwrap();
    assert_eq!(tokenizer, trainer.data.tokenizer);
    let model = Gpt::from_params(config, params).unwrap();
    let prompt = tokenizer.encode("ROMEO:").unwrap();
    let mut generator = Generator::new(&model, &prompt, Sampling::greedy(), 0, 20).unwrap();
    let mut generated = Vec::new();
    while let Some(tok) = generator.next_token().unwrap() {
        generated.push(tok);
    }
    assert_eq!(generated.len(), 20);
    tokenizer.decode(&generated).unwrap();

    // The loaded model scores the validation batches exactly as the best model did.
    let mut scorer = trainer;
    scorer.model = model;
    let (_, val) = scorer.evaluate().unwrap();
    assert_eq!(val.to_bits(), best_loss.to_bits(), "the reloaded model's validation loss (best at step {best_step})");
}

#[test]
fn vocab_mismatch_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let cfg = tiny_config(&data, &tmp.path().join("out"));
    let train_data = TrainData::load(&cfg).unwrap();
    let vocab = train_data.tokenizer.vocab_size();
    let description = train_data.tokenizer.describe();
    let model = Gpt::new(cfg.model_config(vocab + 3), 1).unwrap();
    let err = Trainer::new(cfg.clone(), train_data, Some(model)).unwrap_err();
    assert!(matches!(err, TrainError::VocabMismatch { model_vocab, .. } if model_vocab == vocab + 3), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&format!("`{description}`")), "{message}");
    assert!(message.contains(&format!("{} tokens", vocab + 3)), "{message}");

    // The matching vocabulary is accepted.
    let model = Gpt::new(cfg.model_config(vocab), 1).unwrap();
    Trainer::new(cfg.clone(), TrainData::load(&cfg).unwrap(), Some(model)).unwrap();
}

#[test]
fn block_size_longer_than_model_context_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let cfg = tiny_config(&data, &tmp.path().join("out"));
    let train_data = TrainData::load(&cfg).unwrap();
    let mut short = cfg.model_config(train_data.tokenizer.vocab_size());
    short.block_size = 8;
    let err = Trainer::new(cfg.clone(), train_data, Some(Gpt::new(short.clone(), 1).unwrap())).unwrap_err();
    assert!(matches!(err, TrainError::InvalidSetting { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("--block-size") && message.contains("16") && message.contains("context of 8"),
        "{message}"
    );

    // A shorter training context than the model's is fine.
    let mut shorter = cfg.clone();
    shorter.block_size = 8;
    let mut trainer =
        Trainer::new(shorter.clone(), TrainData::load(&shorter).unwrap(), Some(Gpt::new(short, 1).unwrap())).unwrap();
    assert!(trainer.step().unwrap().loss.is_finite());
}

#[test]
fn a_run_whose_evaluations_never_improve_still_leaves_its_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_corpus(tmp.path());
    let mut cfg = tiny_config(&data, &tmp.path().join("out"));
    // Learning rate 0: the evaluation after the update equals the untrained model's, so none saves a model.
    cfg.learning_rate = 0.0;
    cfg.decay_lr = false;
    cfg.max_iters = 1;
    cfg.eval_interval = 1;
    let mut trainer = new_trainer(&cfg);
    assert_eq!(trainer.run(&mut (), &AtomicBool::new(false)).unwrap(), RunEnd::Finished);
    assert_eq!(trainer.saved_not_best, Some(1));
    assert!(cfg.out_dir.join(WEIGHTS_FILE).is_file() && cfg.out_dir.join(TOKENIZER_FILE).is_file());
    let last = read_metrics(&cfg.out_dir).unwrap().pop();
    let expected = MetricsLine::Saved { step: 1, best: false, reason: "finished".into() };
    assert_eq!(last, Some(expected));
}
