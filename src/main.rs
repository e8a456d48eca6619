//! The `sisy` binary: parses arguments, sets up logging and signals, and calls the library.

use clap::Parser;
use sisyphus::cli::{self, Cli, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::parse();
    // The guardian sets up logging once its config (log_format) is read.
    if !matches!(cli.command, Command::Guardian(_)) {
        sisyphus::logging::init(false);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone());
        match cli::run(cli, shutdown).await {
            Ok(()) => 0,
            Err(exit) => {
                eprintln!("error: {:#}", exit.error);
                exit.code
            }
        }
    });
    std::process::exit(code);
}

/// SIGTERM and SIGINT start a graceful shutdown; a second one is not needed (the guardian
/// bounds its own shutdown by `shutdown_grace` and each job's `kill_grace`).
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        // SIGHUP would end the process by default; until reloading exists, say so instead.
        let mut hup = signal(SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::warn!("SIGHUP: this version does not reload its configuration; restart the guardian to apply changes");
                }
            }
        }
        shutdown.cancel();
    });
}
