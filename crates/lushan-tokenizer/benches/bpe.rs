//! `cargo bench -p lushan-tokenizer`: GPT-2 BPE throughput on tinyshakespeare (MB = 1e6 bytes of UTF-8
//! input, median of several runs), the long-piece merge (1 and 2 MiB of one character: should scale
//! ~linearly), decoding, and BPE training (1 MB corpus → 8192 ids).
//!
//! Compare with tiktoken in the same minute: `python ../shared/bench/tokenizer_bench.py --threads 2`.
//! Options (environment): `BENCH_TEXT=path` (default data/tinyshakespeare.txt), `BENCH_REPEATS=n` (7),
//! `BENCH_THREADS=n` (2), `BENCH_ONLY=word` (run only the measurements whose name contains `word`).

use std::time::Instant;

use lushan_tokenizer::{Bpe, BpeTrainer, TrainOptions};

fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let default_text = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tinyshakespeare.txt");
    let path = std::env::var("BENCH_TEXT").unwrap_or_else(|_| default_text.to_owned());
    let repeats = env_usize("BENCH_REPEATS", 7);
    let threads = env_usize("BENCH_THREADS", 2);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let mb = text.len() as f64 / 1e6;

    let t = Instant::now();
    let bpe = match Bpe::gpt2() {
        Ok(bpe) => bpe,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("load bundled GPT-2 vocabulary                 {:8.1} ms", t.elapsed().as_secs_f64() * 1e3);

    let ids = bpe.encode_ordinary(&text);
    println!("{path}: {} bytes -> {} ids", text.len(), ids.len());
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| name.contains(only.as_str());
    let bench = |name: &str, f: &mut dyn FnMut()| {
        if wanted(name) {
            let seconds = median_seconds(repeats, f);
            println!("{name:45} {:8.2} MB/s  ({:.1} ms)", mb / seconds, seconds * 1e3);
        }
    };
    bench("encode_ordinary 1T", &mut || drop(bpe.encode_ordinary(&text)));
    bench(&format!("encode_parallel {threads}T"), &mut || drop(bpe.encode_parallel(&text, threads)));
    let paragraphs: Vec<String> =
        text.split("\n\n").enumerate().map(|(i, p)| if i == 0 { p.to_owned() } else { format!("\n\n{p}") }).collect();
    let refs: Vec<&str> = paragraphs.iter().map(String::as_str).collect();
    bench(&format!("encode_batch {} paragraphs {threads}T", refs.len()), &mut || {
        drop(bpe.encode_batch(&refs, threads));
    });
    bench("encode_with_special 1T", &mut || drop(bpe.encode_with_special(&text)));
    bench("decode_bytes 1T", &mut || drop(bpe.decode_bytes(&ids)));

    let mut one_mib = 0.0;
    for (unit, mib) in [("a", 1), ("a", 2), ("🙂", 1), (" ", 1)] {
        if !wanted("MiB") {
            break;
        }
        let run = unit.repeat((mib << 20) / unit.len());
        let seconds = median_seconds(5, || drop(bpe.encode_ordinary(&run)));
        if unit == "a" && mib == 1 {
            one_mib = seconds;
        }
        let ratio = if unit == "a" && mib == 2 {
            format!("  ({:.2}x the 1 MiB time)", seconds / one_mib)
        } else {
            String::new()
        };
        println!("{:45} {:8.1} ms{ratio}", format!("{mib} MiB of {unit:?} (one piece)"), seconds * 1e3);
    }

    if !wanted("train") {
        return;
    }
    let corpus = &text[..text.len().min(1_000_000)];
    let corpus = &corpus[..corpus.char_indices().last().map_or(0, |(i, _)| i)];
    let t = Instant::now();
    let mut trainer = BpeTrainer::new();
    trainer.add_text(corpus);
    match trainer.train(&TrainOptions::new(8192)) {
        Ok((_, report)) => println!(
            "{:45} {:8.2} s  ({} merges, {} distinct pieces)",
            format!("train 8192 ids on {:.2} MB", corpus.len() as f64 / 1e6),
            t.elapsed().as_secs_f64(),
            report.merges,
            report.distinct_pieces
        ),
        Err(e) => println!("training failed: {e}"),
    }
}
