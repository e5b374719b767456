//! Fine-tuning end to end on the task slices in `tests/fixtures/tasks/`: classification and SFT train (the
//! loss falls, accuracy is reported, the best checkpoint is a `GPT2ForSequenceClassification` directory),
//! task runs resume bit-identically, and the classifier's AdamW steps equal `transformers`' (the fixture of
//! `tools/make_finetune_fixtures.py`).
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lushan_model::checkpoint::{self, load_model_dir};
use lushan_model::{Activations, Gpt, Head, Mode, ParamKind};
use lushan_train::optim::{AdamWState, OptimizerSettings, clip_grad_norm};
use lushan_train::tasks::{Task, TaskData};
use lushan_train::{DataSource, EvalReport, Observer, Preset, RunEnd, TrainConfig, TrainData, Trainer};
use safetensors::{Dtype, SafeTensors};

fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks")
}

fn task_config(task: Task, data: &str, out: &Path) -> TrainConfig {
    let mut c = TrainConfig::preset(Preset::ShakespeareChar);
    c.task = task;
    c.data = tasks_dir().join(data);
    c.out_dir = out.to_path_buf();
    c.tokenizer = "char".into();
    c.val_fraction = 0.25;
    c.n_layer = 1;
    c.n_head = 2;
    c.n_embd = 16;
    c.block_size = 48;
    c.batch_size = 4;
    c.max_iters = 8;
    c.eval_interval = 4;
    c.eval_iters = 2;
    c.log_interval = 1;
    c.learning_rate = 3e-3;
    c.warmup_iters = 1;
    c.lr_decay_iters = 8;
    c.sample_tokens = 0;
    c.seed = 3;
    c
}

/// A classifier run from scratch: the data's labels become the head.
fn classify_trainer(c: &TrainConfig, resume: bool) -> Trainer {
    let data = TrainData::load_task(c, None, None).unwrap();
    if resume {
        return Trainer::resume(c.clone(), data).unwrap();
    }
    let DataSource::Task(TaskData::Classify { train, .. }) = &data.source else { panic!("classify data") };
    let mut cfg = c.model_config(data.tokenizer.vocab_size());
    cfg.head = Head::Classifier { labels: train.labels.clone(), pad_token_id: 0 };
    Trainer::new(c.clone(), data, Some(Gpt::new(cfg, c.seed).unwrap())).unwrap()
}

#[derive(Default)]
struct Evals(Vec<EvalReport>);

impl Observer for Evals {
    fn on_eval(&mut self, r: &EvalReport) {
        self.0.push(*r);
    }
}

#[test]
fn classification_trains_reports_accuracy_and_saves_a_transformers_classifier() {
    let out = tempfile::tempdir().unwrap();
    let mut c = task_config(Task::Classify, "spam.jsonl", out.path());
    c.max_iters = 12;
    c.learning_rate = 1e-2;
    let mut trainer = classify_trainer(&c, false);
    let mut evals = Evals::default();
    assert_eq!(trainer.run(&mut evals, &AtomicBool::new(false)).unwrap(), RunEnd::Finished);
    assert!(evals.0.iter().all(|e| e.val_accuracy.is_some_and(|a| (0.0..=1.0).contains(&a))));
    let (first, last) = (evals.0[0], *evals.0.last().unwrap());
    assert!(last.train_loss < first.train_loss, "{} → {}", first.train_loss, last.train_loss);
    let (cfg, _) = load_model_dir(out.path()).unwrap();
    assert_eq!(cfg.num_labels(), 2, "the best checkpoint is a classifier: {:?}", cfg.head);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(checkpoint::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(config["id2label"], serde_json::json!({"0": "ham", "1": "spam"}));
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"val_accuracy\""), "{metrics}");
}

#[test]
fn sft_trains_only_the_replies_and_its_loss_falls() {
    let out = tempfile::tempdir().unwrap();
    let mut c = task_config(Task::Sft, "chat.jsonl", out.path());
    c.max_iters = 16;
    c.eval_interval = 8;
    let data = TrainData::load_task(&c, None, None).unwrap();
    let mut trainer = Trainer::new(c.clone(), data, None).unwrap();
    let mut evals = Evals::default();
    trainer.run(&mut evals, &AtomicBool::new(false)).unwrap();
    let (first, last) = (evals.0[0], *evals.0.last().unwrap());
    assert!(evals.0.iter().all(|e| e.val_accuracy.is_none()));
    assert!(last.train_loss < first.train_loss - 0.2, "{} → {}", first.train_loss, last.train_loss);
}

#[test]
fn task_runs_resume_bit_identically() {
    for (task, data) in [(Task::Classify, "spam.jsonl"), (Task::Sft, "translate-en-es.jsonl")] {
        let (straight, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut c = task_config(task, data, straight.path());
        c.block_size = 160;
        c.dropout = 0.1;
        c.gradient_accumulation_steps = 2;
        let make = |c: &TrainConfig, resume: bool| match task {
            Task::Classify => classify_trainer(c, resume),
            _ => {
                let data = TrainData::load_task(c, None, None).unwrap();
                if resume {
                    Trainer::resume(c.clone(), data).unwrap()
                } else {
                    Trainer::new(c.clone(), data, None).unwrap()
                }
            }
        };
        let mut a = make(&c, false);
        a.run(&mut (), &AtomicBool::new(false)).unwrap();
        let mut half = c.clone();
        half.out_dir = split.path().to_path_buf();
        half.max_iters = 4;
        make(&half, false).run(&mut (), &AtomicBool::new(false)).unwrap();
        half.max_iters = c.max_iters;
        let mut b = make(&half, true);
        assert_eq!(b.step_count(), 4);
        b.run(&mut (), &AtomicBool::new(false)).unwrap();
        assert_eq!(a.model.params, b.model.params, "{task:?}: resumed parameters differ");
        assert_eq!(a.optimizer, b.optimizer, "{task:?}: resumed optimiser state differs");
    }
}

#[test]
fn lora_runs_train_only_the_adapters_and_resume_bit_identically() {
    let (straight, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c = task_config(Task::Sft, "chat.jsonl", straight.path());
    c.block_size = 96;
    c.lora_rank = 2;
    c.lora_dropout = 0.1;
    c.learning_rate = 1e-2;
    // The base's directory is not read by the trainer (the caller loads it); a LoRA run must name one.
    c.init_from = lushan_train::InitFrom::Dir(straight.path().join("base"));
    let make = |c: &TrainConfig, resume: bool| {
        let data = TrainData::load_task(c, None, None).unwrap();
        if resume {
            return Trainer::resume(c.clone(), data).unwrap();
        }
        let mut model = Gpt::new(c.model_config(data.tokenizer.vocab_size()), 1).unwrap();
        let lora = lushan_model::LoraConfig {
            rank: 2,
            alpha: 4.0,
            dropout: 0.1,
            targets: lushan_model::LoraTarget::parse_list("c_attn,mlp.c_proj").unwrap(),
        };
        model.attach_lora(lushan_model::Lora::new(lora, &model.config, 5).unwrap()).unwrap();
        Trainer::new(c.clone(), data, Some(model)).unwrap()
    };
    let mut a = make(&c, false);
    let base = a.model.params.clone();
    a.run(&mut (), &AtomicBool::new(false)).unwrap();
    assert_eq!(a.model.params, base, "the base must stay frozen");
    assert_eq!(a.optimizer.m.len(), a.model.lora.as_ref().unwrap().params.len(), "optimiser state for adapters only");
    assert!(straight.path().join("adapter_model.safetensors").is_file());
    let mut half = c.clone();
    half.out_dir = split.path().to_path_buf();
    half.max_iters = 4;
    make(&half, false).run(&mut (), &AtomicBool::new(false)).unwrap();
    half.max_iters = c.max_iters;
    let mut b = make(&half, true);
    b.run(&mut (), &AtomicBool::new(false)).unwrap();
    assert_eq!(a.model.lora, b.model.lora, "resumed adapters differ");
    assert_eq!(a.optimizer, b.optimizer);
}

/// `tests/fixtures/hf_gpt2_classifier_tiny` of the model crate: 3 AdamW steps by torch (lr 1e-2, β (0.9,
/// 0.99), weight decay 0.1 on 2-D tensors, clipping at 1.0).
#[test]
fn classifier_adamw_steps_match_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lushan-model/tests/fixtures/hf_gpt2_classifier_tiny");
    let (cfg, params) = load_model_dir(&dir).unwrap();
    let mut model = Gpt::from_params(cfg, params).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32);
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    let ints = |name: &str| -> Vec<u32> {
        let t = st.tensor(name).unwrap();
        let width = t.dtype().bitsize() / 8;
        t.data().chunks_exact(width).map(|b| u32::from_le_bytes(b[..4].try_into().unwrap())).collect()
    };
    let (ids, labels) = (ints("input_ids"), ints("labels"));
    let mut acts = Activations::new(&model.config, 3, 10).unwrap();
    let settings = OptimizerSettings { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamWState::new(model.num_params());
    let mut grads = vec![0.0; model.num_params()];
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        losses.push(model.forward(&mut acts, &ids, Some(&labels), Mode::Eval).unwrap().unwrap());
        grads.fill(0.0);
        model.backward(&mut acts, &mut grads, 1.0, Mode::Eval);
        norms.push(clip_grad_norm(&mut grads, 1.0));
        opt.update(&mut model, &grads, 1e-2, &settings);
    }
    for (got, want) in losses.iter().zip(f32s("adamw_losses")) {
        assert!((got - want).abs() < 1e-4 + 1e-3 * want.abs(), "losses {losses:?} vs {:?}", f32s("adamw_losses"));
    }
    for (got, want) in norms.iter().zip(f32s("grad_norms")) {
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "norms {norms:?}");
    }
    let after = f32s("param_after.score.weight");
    let got = &model.params[model.layout.range(ParamKind::Score)];
    let diff = got.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "score after 3 steps differs by {diff}");
}
