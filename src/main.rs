//! The `sisy` binary: parses arguments, sets up logging and signals, and calls the library.
//! Only `sisy guardian` (and the hidden benchmark tool `__fleet`, see `cli/fleet.rs`) handles signals (SIGTERM/SIGINT: graceful shutdown, SIGHUP: reload);
//! the other commands die of them as any command-line tool does.
//! The hidden `__run-shim` subcommand (the shim spawner the guardian starts, see
//! `sisyphus::run::shim`) is dispatched before anything else: it must stay single-threaded and
//! start no runtime.

use clap::Parser;
use sisyphus::cli::{self, Cli, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == sisyphus::run::shim::SUBCOMMAND)
    {
        sisyphus::run::shim::main(&args[2..]);
    }
    let cli = Cli::parse();
    // The guardian sets up logging once its config (log_format) is read.
    let guardian = matches!(cli.command, Command::Guardian(_) | Command::Fleet(_));
    if !guardian {
        sisyphus::logging::init(sisyphus::logging::Format::Human);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // Only the guardian turns signals into a graceful shutdown. Every other command keeps
    // the default disposition: Ctrl-C or SIGTERM ends it at once, whatever it waits for,
    // and the shell sees it die of the signal (status 130 for SIGINT), like any other tool.
    // A reload reads one guardian's config file again: the fleet's guardians have none.
    let reload = matches!(cli.command, Command::Guardian(_));
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if guardian {
            spawn_signal_handler(shutdown.clone(), reload);
        }
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
/// bounds its own shutdown by `shutdown_grace` and each job's `kill_grace`). SIGHUP asks the
/// guardian to reload its configuration (the hidden `__fleet` benchmark tool ignores it).
fn spawn_signal_handler(shutdown: CancellationToken, reload: bool) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let mut hup = signal(SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    if reload {
                        tracing::info!("SIGHUP: reloading the configuration");
                        sisyphus::guardian::request_reload();
                    } else {
                        tracing::warn!("SIGHUP: the guardians of a fleet process do not reload");
                    }
                }
            }
        }
        shutdown.cancel();
    });
}
