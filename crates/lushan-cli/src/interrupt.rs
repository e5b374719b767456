//! Stop requests for a training run. Ctrl-C (SIGINT) and SIGTERM — what `kill`, systemd, Slurm and other
//! schedulers send — both ask the run to stop after the current micro-batch and save its resume state; the
//! process then exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports
//! a process ended by that signal. A second signal exits at once without saving.
//!
//! Signals are received by tokio's signal driver (no `unsafe` here) on a thread of its own, which records
//! which signal came so the exit code and message can name it.

use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Raised by the first stop signal; the training loop polls it between micro-batches.
pub struct StopRequest {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl StopRequest {
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// The exit code for a run stopped on request: 128 + the signal's number.
    pub fn exit_code(&self) -> u8 {
        128 + self.signal.load(Ordering::SeqCst).clamp(0, 127) as u8
    }

    /// The signal's name, for messages.
    pub fn signal_name(&self) -> &'static str {
        name(self.signal.load(Ordering::SeqCst))
    }
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

fn name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        _ => "SIGINT (Ctrl-C)",
    }
}

/// Starts watching for SIGINT and SIGTERM. `on_exit` runs before a second signal ends the process (to
/// remove files that `exit` would otherwise leave behind, such as the run's lock file).
pub fn install(on_exit: impl Fn() + Send + 'static) -> Result<StopRequest> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the signal watcher")?;
    let mut signals = {
        let _context = runtime.enter();
        Signals::new().context("installing the SIGINT/SIGTERM handlers")?
    };
    let request = StopRequest { flag: Arc::new(AtomicBool::new(false)), signal: Arc::new(AtomicI32::new(SIGINT)) };
    let (flag, signal) = (request.flag.clone(), request.signal.clone());
    std::thread::Builder::new()
        .name("lushan-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    let number = signals.next().await;
                    if flag.swap(true, Ordering::SeqCst) {
                        eprintln!("\nsecond {}: exiting without saving", name(number));
                        on_exit();
                        std::process::exit(128 + number);
                    }
                    signal.store(number, Ordering::SeqCst);
                    eprintln!(
                        "\n{} received: stopping after the current micro-batch and saving the resume state \
                         (send it again to exit at once without saving)",
                        name(number)
                    );
                }
            })
        })
        .context("starting the signal watcher")?;
    Ok(request)
}

#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    /// The number of the next signal received.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            Some(()) = self.interrupt.recv() => SIGINT,
            Some(()) = self.terminate.recv() => SIGTERM,
            // Both streams closed (the driver is gone): no more signals will come.
            else => std::future::pending().await,
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> i32 {
        let _ = tokio::signal::ctrl_c().await;
        SIGINT
    }
}
