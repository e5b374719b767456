//! `lushan serve`: an OpenAI-compatible HTTP API for a checkpoint (model id = the directory's name).

use crate::model_dir;
use anyhow::{Context, Result};
use lushan_server::{Server, ServerError, ServerOptions};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer file); its name is the model id.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT's files) to merge into the model before serving.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    dtype: model_dir::DtypeArg,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests running plus waiting; further requests get 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_queue: u32,
    /// Most completions decoded together (continuous batching); more wait for a place.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=32))]
    max_batch: u32,
    /// Larger request bodies get 413.
    #[arg(long, default_value_t = 2_000_000)]
    max_body_bytes: usize,
    /// Seconds a client has to send a request's headers before its connection is closed (also how long an
    /// idle keep-alive connection stays open).
    #[arg(long, value_name = "SECONDS", default_value_t = ServerOptions::DEFAULT_HEADER_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    header_timeout: u64,
    /// Seconds a client has to send a request's whole body; later gets 408.
    #[arg(long, value_name = "SECONDS", default_value_t = ServerOptions::DEFAULT_BODY_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    body_timeout: u64,
    /// Most connections open at once; more wait until one closes (keep it under the file-descriptor limit).
    #[arg(long, default_value_t = ServerOptions::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
}

/// True when `host` is reachable only from this machine (`localhost` or a loopback address).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when listening failed because something else already listens on that address.
fn bind_in_use(e: &ServerError) -> bool {
    matches!(e, ServerError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.api_key.is_none() && !is_loopback(&args.host) {
        eprintln!(
            "warning: serving on {} without --api-key: anyone who can reach this address can use the model; \
             pass --api-key KEY, or --host 127.0.0.1 to serve this machine only",
            args.host
        );
    }
    let (model, tokenizer) = model_dir::load_as(&args.model, args.adapter.as_deref(), args.dtype.dtype)?;
    let dir = std::fs::canonicalize(&args.model).unwrap_or_else(|_| args.model.clone());
    let model_id = dir.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let options = ServerOptions {
        model_id,
        api_key: args.api_key,
        max_queue: args.max_queue as usize,
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch as usize,
        header_timeout: Duration::from_secs(args.header_timeout),
        body_timeout: Duration::from_secs(args.body_timeout),
        max_connections: args.max_connections as usize,
        max_explain_tokens: ServerOptions::DEFAULT_MAX_EXPLAIN_TOKENS,
    };
    let server = Server::new(model, tokenizer, options).context("cannot start the decoding thread")?;
    match server.run_blocking(&args.host, args.port) {
        // The error names the address and the OS's reason once; the next step is ours to add.
        Err(e) if bind_in_use(&e) => Err(anyhow::anyhow!(
            "{e}; another program (another `lushan serve`?) holds port {}: stop it, or pass another --port (0 \
             picks a free one)",
            args.port
        )),
        result => Ok(result?),
    }?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_hosts_count_as_private() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "::", "192.168.1.5", "example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
