//! One file per subcommand, each with its `Args` and `run`.

pub mod bench;
pub mod bench_explain;
pub mod bench_finetune;
pub mod bench_serve;
pub mod chat;
pub mod classify;
pub mod eval;
pub mod eval_task;
pub mod explain;
pub mod export;
pub mod features;
pub mod generate;
pub mod merge;
pub mod prepare;
pub mod serve;
pub mod sweep;
pub mod tokenizer;
pub mod train;
