//! An OpenAI-compatible HTTP API for one lushan or GPT-2 checkpoint: an adapter over the model crate's
//! cached decoding and sampler, with validation, limits, SSE streaming and an optional API key.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
//! `POST /tokenize`, `POST /detokenize`, and for classifier checkpoints `POST /classify` (text-embeddings-
//! inference's shape, also at `/predict`). Generation runs on one decoding thread that advances every running
//! completion together ([`batcher`]), never on the async executor; a classifier has no decoding thread and
//! answers the completion routes with a 400 pointing at `/classify`. At most `max_queue` requests are running
//! or waiting, beyond that requests get 429 at once. Connections are served by `listen.rs`: a request's headers
//! and body each have a deadline, and at most `max_connections` are open at once.
#![forbid(unsafe_code)]

pub mod batcher;
mod classify;
pub mod engine;
pub mod error;
mod listen;
mod openai;
mod playground;
pub mod request;
mod routes;

pub use error::{ApiError, ServerError};

use axum::Router;
use batcher::Batcher;
use lushan_model::{Gpt, Head};
use lushan_tokenizer::Tokenizer;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Settings of a server; see `lushan serve --help`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The id clients name in `model` (the checkpoint directory's name).
    pub model_id: String,
    /// When set, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Generations running plus waiting; more get 429.
    pub max_queue: usize,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Most sequences decoded together; more wait for a free place in the batch.
    pub max_batch: usize,
    /// A request's headers must arrive within this (also how long an idle keep-alive connection stays).
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this once its handler reads it; later gets 408.
    pub body_timeout: Duration,
    /// Most connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Most prompt tokens `/v1/explain` takes (its work and answer grow with the square of the prompt).
    pub max_explain_tokens: usize,
}

impl ServerOptions {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Well under the usual 1024 file descriptors a process may open.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    pub const DEFAULT_MAX_EXPLAIN_TOKENS: usize = 512;

    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            api_key: None,
            max_queue: 64,
            max_body_bytes: 2_000_000,
            max_batch: 16,
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            body_timeout: Self::DEFAULT_BODY_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_explain_tokens: Self::DEFAULT_MAX_EXPLAIN_TOKENS,
        }
    }
}

/// Counters the server keeps (read by tests and the request log).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Tokens sampled, over all requests.
    pub tokens_generated: AtomicU64,
    /// Generations stopped early because the client went away.
    pub cancelled: AtomicU64,
    /// Generations finished (completed or cancelled).
    pub generations_done: AtomicU64,
    /// Requests answered 429.
    pub rejected: AtomicU64,
    /// Request ids handed out.
    pub requests: AtomicU64,
    /// Most completions decoded together in one step so far.
    pub peak_batch: AtomicU64,
    /// Decoding steps run (each advances every running completion by one token).
    pub batch_steps: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicU64,
    /// Most connections open at once so far.
    pub peak_connections: AtomicU64,
}

pub(crate) struct AppState {
    pub model: Arc<Gpt>,
    pub tokenizer: Arc<Tokenizer>,
    /// The decoding thread; `None` for a classifier, which does not generate.
    pub batcher: Option<Batcher>,
    pub options: ServerOptions,
    pub queue: Arc<Semaphore>,
    /// Places for `/v1/explain` computations running at once.
    pub explain_slots: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub created: u64,
}

impl AppState {
    /// 400 (naming `model`) unless the model generates text: a classifier answers `/classify` only.
    pub(crate) fn require_language_model(&self) -> Result<(), ApiError> {
        match &self.model.config.head {
            Head::LanguageModel => Ok(()),
            Head::Classifier { labels, .. } => Err(ApiError::invalid(
                "model",
                format!(
                    "the model `{}` is a classifier (labels: {}); it does not generate text: use POST /classify",
                    self.options.model_id,
                    labels.join(", ")
                ),
            )),
        }
    }

    /// A place in the bounded queue for one request (held until it ends), or 429 at once when it is full.
    pub(crate) fn queue_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.queue.clone().try_acquire_owned().map_err(|_| {
            self.metrics.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ApiError::bad_body(format!(
                "the server is busy ({} requests running or queued); retry later",
                self.options.max_queue
            ))
            .with_status(axum::http::StatusCode::TOO_MANY_REQUESTS)
            .with_code("rate_limit_exceeded")
        })
    }
}

/// A server for one model.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A server for `model`; starts its decoding thread (a language model's: a classifier has none).
    pub fn new(model: Gpt, tokenizer: Tokenizer, options: ServerOptions) -> Result<Self, ServerError> {
        let queue = Arc::new(Semaphore::new(options.max_queue.max(1)));
        let (model, tokenizer) = (Arc::new(model), Arc::new(tokenizer));
        let metrics: Arc<Metrics> = Arc::default();
        let batcher = match model.config.head {
            Head::LanguageModel => {
                Some(Batcher::start(model.clone(), tokenizer.clone(), options.max_batch, metrics.clone())?)
            }
            Head::Classifier { .. } => None,
        };
        let explain_slots = Arc::new(Semaphore::new(playground::EXPLAIN_CONCURRENCY));
        let state =
            AppState { model, tokenizer, batcher, options, queue, explain_slots, metrics, created: unix_time() };
        Ok(Self { state: Arc::new(state) })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    pub fn router(&self) -> Router {
        routes::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then lets requests in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let options = &self.state.options;
        let limits = listen::ConnectionLimits {
            header_timeout: options.header_timeout,
            max_connections: options.max_connections,
        };
        listen::serve(listener, self.router(), limits, self.metrics(), shutdown).await;
        Ok(())
    }

    /// Binds `host:port`, serves until SIGINT or SIGTERM, on a runtime of its own (blocks the caller).
    pub fn run_blocking(self, host: &str, port: u16) -> Result<(), ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async move {
            let addr = format!("{host}:{port}");
            let listener =
                TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
            let local = listener.local_addr()?;
            eprintln!("{}", serving_line(&self.state.options.model_id, local));
            self.serve(listener, shutdown_signal()).await
        })
    }
}

/// What is where, said once at start: the address listened on, the playground page and the base URL an
/// OpenAI client takes. An unspecified address (0.0.0.0, ::) cannot be browsed to: the URLs then name this
/// machine's loopback, which it also answers on.
pub fn serving_line(model_id: &str, local: std::net::SocketAddr) -> String {
    let mut browsable = local;
    if local.ip().is_unspecified() {
        browsable.set_ip(if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!(
        "serving `{model_id}` on http://{local} (Ctrl-C to stop): playground http://{browsable}/ · \
         OpenAI-compatible API base URL http://{browsable}/v1"
    )
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}

pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
