//! `lushan bench serve`: concurrent streaming clients against an in-process `lushan serve` on 127.0.0.1.
//!
//! For each client count, every client sends the same number of streamed completions back to back, all
//! clients at once; the figures are aggregate completion tokens/s (the server's own count over the wall time
//! of the round), aggregate decode tokens/s (tokens after each completion's first, over the time during which
//! some client was between two tokens), time to first
//! token and inter-token latency as each client sees them (p50/p99), and the requests that failed. The model is a randomly initialised GPT-2 124M (with the GPT-2 tokenizer) unless
//! `--model DIR` names a checkpoint.

use crate::model_dir;
use anyhow::{Context, Result, bail};
use lushan_kernels::rng::Rng;
use lushan_model::{Gpt, ModelConfig};
use lushan_server::{Metrics, Server, ServerOptions};
use lushan_tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args)]
pub struct Args {
    /// Serve this checkpoint instead of a random GPT-2 124M.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Client counts, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Streamed completions each client sends, one after the other.
    #[arg(long, default_value_t = 2)]
    requests: usize,
    /// Tokens per completion (greedy; every completion runs to this length unless it samples end-of-text).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Random prompt length in tokens.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Most completions the server decodes together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Seed of the random model and prompts.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

/// What one client saw of one streamed completion.
#[derive(Default)]
struct RequestTrace {
    ok: bool,
    error: Option<String>,
    ttft: Option<f64>,
    gaps: Vec<f64>,
    /// Each gap as (start, end) seconds since the round started, to tell when any client was decoding.
    gap_spans: Vec<(f64, f64)>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.requests == 0 || args.max_tokens == 0 {
        bail!("--clients must list counts ≥ 1, and --requests and --max-tokens must be at least 1");
    }
    if args.prompt_tokens == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    let (model, tokenizer, what) = match &args.model {
        Some(dir) => {
            let (model, tokenizer) = model_dir::load(dir)?;
            (model, tokenizer, dir.display().to_string())
        }
        None => {
            let model = Gpt::new(ModelConfig::gpt2(), args.seed)?;
            (model, Tokenizer::gpt2()?, "random GPT-2 124M".to_string())
        }
    };
    let cfg = model.config.clone();
    let params = model.num_params();
    if args.prompt_tokens + args.max_tokens > cfg.block_size {
        bail!(
            "--prompt-tokens + --max-tokens = {} exceed the model's context of {}",
            args.prompt_tokens + args.max_tokens,
            cfg.block_size
        );
    }
    let mut options = ServerOptions::new("bench");
    options.max_batch = args.max_batch;
    options.max_queue = args.clients.iter().max().copied().unwrap_or(1).max(64);
    let server = Server::new(model, tokenizer, options).context("cannot start the server")?;
    let metrics = server.metrics();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    println!(
        "bench serve: {what} (L{} H{} C{} V{} T{}), {} threads, max batch {}; each client streams {} completions \
         of {} tokens after a {}-token prompt",
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.vocab_size,
        cfg.block_size,
        rayon::current_num_threads(),
        args.max_batch,
        args.requests,
        args.max_tokens,
        args.prompt_tokens
    );
    let results = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(server.serve(listener, std::future::pending()));
        let mut rng = Rng::new(args.seed ^ 0xbe4c);
        let vocab = cfg.vocab_size as u64;
        let mut prompt = || (0..args.prompt_tokens).map(|_| rng.below(vocab) as u32).collect::<Vec<u32>>();
        // Warm-up: one short completion (first-touch page faults, thread start-up).
        let warm = json!({"prompt": prompt(), "max_tokens": 4, "temperature": 0, "stream": true});
        stream_completion(addr, &warm, Instant::now()).await;
        let mut rounds = Vec::new();
        for &clients in &args.clients {
            let bodies: Vec<Vec<Value>> = (0..clients)
                .map(|_| {
                    (0..args.requests)
                        .map(|_| {
                            json!({"prompt": prompt(), "max_tokens": args.max_tokens, "temperature": 0,
                                         "stream": true})
                        })
                        .collect()
                })
                .collect();
            rounds.push(round(addr, bodies, &metrics).await);
        }
        anyhow::Ok(rounds)
    })?;

    let base = results.first().map(|r| r.tokens_per_second).unwrap_or(0.0);
    let decode_base = results.first().map(|r| r.decode_tokens_per_second).unwrap_or(0.0);
    println!(
        "{:>7} {:>8} {:>6} {:>10} {:>7} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "clients",
        "requests",
        "failed",
        "tokens/s",
        "× 1st",
        "decode t/s",
        "× 1st",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "batch"
    );
    let mut rows = Vec::new();
    let ratio_to = |x: f64, base: f64| if base > 0.0 { x / base } else { 0.0 };
    for (&clients, r) in args.clients.iter().zip(&results) {
        let ratio = ratio_to(r.tokens_per_second, base);
        let decode_ratio = ratio_to(r.decode_tokens_per_second, decode_base);
        println!(
            "{clients:>7} {:>8} {:>6} {:>10.1} {:>6.2}× {:>10.1} {:>6.2}× {:>7.0}ms {:>7.0}ms {:>7.1}ms {:>7.1}ms {:>6}",
            r.requests,
            r.failed,
            r.tokens_per_second,
            ratio,
            r.decode_tokens_per_second,
            decode_ratio,
            r.ttft_p50 * 1e3,
            r.ttft_p99 * 1e3,
            r.itl_p50 * 1e3,
            r.itl_p99 * 1e3,
            r.peak_batch
        );
        for e in r.errors.iter().take(3) {
            println!("        error: {e}");
        }
        rows.push(json!({"clients": clients, "requests": r.requests, "failed": r.failed, "tokens": r.tokens,
            "seconds": r.seconds, "tokens_per_second": r.tokens_per_second, "ratio_to_first": ratio,
            "decode_tokens_per_second": r.decode_tokens_per_second, "decode_ratio_to_first": decode_ratio,
            "ttft_p50_ms": r.ttft_p50 * 1e3, "ttft_p99_ms": r.ttft_p99 * 1e3, "itl_p50_ms": r.itl_p50 * 1e3,
            "itl_p99_ms": r.itl_p99 * 1e3, "peak_batch": r.peak_batch}));
    }
    println!(
        "tokens/s: every completion token over the round's wall time (prefills and queueing included); decode t/s: \
         tokens after each completion's first over the time some client was between two tokens"
    );
    let round_of = |n: usize| args.clients.iter().position(|&c| c == n).map(|i| &results[i]);
    if let (Some(one), Some(four)) = (round_of(1), round_of(4)) {
        let decode = ratio_to(four.decode_tokens_per_second, one.decode_tokens_per_second);
        let overall = ratio_to(four.tokens_per_second, one.tokens_per_second);
        let verdict = if decode >= 2.5 { "met" } else { "NOT met" };
        println!(
            "4 clients / 1 client: decode throughput {decode:.2}× (target ≥ 2.5×: {verdict}); end to end {overall:.2}×"
        );
    }
    println!(
        "JSON {}",
        json!({"bench": "serve", "model": what, "params": params, "threads": rayon::current_num_threads(),
            "max_batch": args.max_batch, "requests_per_client": args.requests, "max_tokens": args.max_tokens,
            "prompt_tokens": args.prompt_tokens, "rounds": rows})
    );
    let failed: usize = results.iter().map(|r| r.failed).sum();
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Figures of one round (a client count).
struct Round {
    requests: usize,
    failed: usize,
    errors: Vec<String>,
    tokens: u64,
    seconds: f64,
    tokens_per_second: f64,
    /// Tokens after each completion's first, over the time during which some client was between two tokens:
    /// the aggregate rate of the decoding phase, without the prefills and queueing that TTFT measures.
    decode_tokens_per_second: f64,
    ttft_p50: f64,
    ttft_p99: f64,
    itl_p50: f64,
    itl_p99: f64,
    peak_batch: u64,
}

async fn round(addr: SocketAddr, bodies: Vec<Vec<Value>>, metrics: &Arc<Metrics>) -> Round {
    let tokens_before = metrics.tokens_generated.load(Ordering::Relaxed);
    metrics.peak_batch.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let clients: Vec<_> = bodies
        .into_iter()
        .map(|requests| {
            tokio::spawn(async move {
                let mut traces = Vec::new();
                for body in &requests {
                    traces.push(stream_completion(addr, body, started).await);
                }
                traces
            })
        })
        .collect();
    let mut traces = Vec::new();
    for c in clients {
        match c.await {
            Ok(t) => traces.extend(t),
            Err(e) => {
                traces.push(RequestTrace { error: Some(format!("client task failed: {e}")), ..Default::default() })
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = metrics.tokens_generated.load(Ordering::Relaxed) - tokens_before;
    let mut ttfts: Vec<f64> = traces.iter().filter_map(|t| t.ttft).collect();
    let mut gaps: Vec<f64> = traces.iter().flat_map(|t| t.gaps.iter().copied()).collect();
    let spans: Vec<(f64, f64)> = traces.iter().flat_map(|t| t.gap_spans.iter().copied()).collect();
    let decoding_seconds = union_length(spans);
    let decode_tokens_per_second = if decoding_seconds > 0.0 { gaps.len() as f64 / decoding_seconds } else { 0.0 };
    let failed = traces.iter().filter(|t| !t.ok).count();
    Round {
        requests: traces.len(),
        failed,
        errors: traces.iter().filter_map(|t| t.error.clone()).collect(),
        tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds,
        decode_tokens_per_second,
        ttft_p50: percentile(&mut ttfts, 0.50),
        ttft_p99: percentile(&mut ttfts, 0.99),
        itl_p50: percentile(&mut gaps, 0.50),
        itl_p99: percentile(&mut gaps, 0.99),
        peak_batch: metrics.peak_batch.load(Ordering::Relaxed),
    }
}

fn percentile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

/// Sends one streamed completion over a fresh connection and times its text chunks as they arrive.
/// Gap spans are timed from `round_start`.
async fn stream_completion(addr: SocketAddr, body: &Value, round_start: Instant) -> RequestTrace {
    match tokio::time::timeout(Duration::from_secs(600), stream_inner(addr, body, round_start)).await {
        Ok(Ok(trace)) => trace,
        Ok(Err(e)) => RequestTrace { error: Some(format!("{e:#}")), ..Default::default() },
        Err(_) => RequestTrace { error: Some("no answer within 600 s".into()), ..Default::default() },
    }
}

async fn stream_inner(addr: SocketAddr, body: &Value, round_start: Instant) -> Result<RequestTrace> {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.context("connect")?;
    socket.set_nodelay(true)?;
    let payload = body.to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{payload}",
        payload.len()
    );
    socket.write_all(request.as_bytes()).await.context("send")?;
    let mut trace = RequestTrace::default();
    let mut seen = Vec::new();
    let mut scanned = 0; // bytes of `seen` already parsed into events
    let mut last: Option<Instant> = None;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket.read(&mut buf).await.context("read")?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        seen.extend_from_slice(&buf[..n]);
        if scanned == 0 {
            let head = String::from_utf8_lossy(&seen);
            if head.len() >= 12 && !head.starts_with("HTTP/1.1 200") {
                bail!("{}", head.lines().last().unwrap_or_default().chars().take(300).collect::<String>());
            }
        }
        // Each SSE event (`data: …\n\n`) arrives whole inside one HTTP chunk.
        while let Some(start) = find(&seen[scanned..], b"data: ").map(|i| scanned + i) {
            let Some(end) = find(&seen[start..], b"\n\n").map(|i| start + i) else { break };
            let event = &seen[start + 6..end];
            scanned = end + 2;
            if event == b"[DONE]" {
                trace.ok = trace.error.is_none();
                continue;
            }
            let value: Value = serde_json::from_slice(event).context("an SSE event that is not JSON")?;
            if let Some(message) = value.get("error") {
                trace.error = Some(message.to_string());
                continue;
            }
            let has_text = value["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty());
            if has_text {
                match last {
                    None => trace.ttft = Some((now - started).as_secs_f64()),
                    Some(prev) => {
                        trace.gaps.push((now - prev).as_secs_f64());
                        trace.gap_spans.push(((prev - round_start).as_secs_f64(), (now - round_start).as_secs_f64()));
                    }
                }
                last = Some(now);
            }
        }
    }
    if !trace.ok && trace.error.is_none() {
        trace.error = Some("the stream ended without `data: [DONE]`".into());
    }
    Ok(trace)
}

/// Total length of the union of the intervals.
fn union_length(mut spans: Vec<(f64, f64)>) -> f64 {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (start, end) in spans {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(0.0, |(s, e)| e - s)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_length_merges_overlaps_and_keeps_gaps_out() {
        assert_eq!(union_length(vec![]), 0.0);
        assert_eq!(union_length(vec![(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)]), 3.0);
        assert_eq!(union_length(vec![(3.0, 4.0), (0.0, 1.0), (0.2, 0.3)]), 2.0);
    }

    #[test]
    fn percentiles_pick_from_the_sorted_values() {
        let mut xs = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut xs, 0.5), 3.0);
        assert_eq!(percentile(&mut xs, 0.99), 5.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
