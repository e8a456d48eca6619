//! The hidden `sisy __fleet` subcommand, a benchmark tool: N real guardians in one process.
//!
//! A thousand guardian processes do not fit a small machine, so the fleet benchmark runs
//! them as tasks of one tokio runtime instead: each is the unchanged `guardian::run` that
//! `sisy guardian` runs, with its own host name (`<host_name>-<i>`), its own state directory
//! (`<state_dir>/<i>`) and its own connection pools, all from one config file. What is
//! global to a process is shared on purpose: the statement mode (`db::configure`, the same
//! for every guardian of one config), the run shims' spawner thread and the logger (each
//! guardian's lines carry its host name in a span). What cannot be shared is refused or
//! left out: `metrics_listen` (one address, one exporter per process) is refused, and
//! SIGHUP reloads nothing (a reload reads the one file, which names no guardian's host).
//! SIGTERM/SIGINT stop every guardian, each by its own shutdown sequence. A guardian that
//! fails is reported on stderr with its host name and the others go on; the process ends
//! when every guardian has, non-zero if any of them failed.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::GuardianConfig;
use crate::guardian;

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// The config every guardian starts from.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// How many guardians.
    #[arg(long)]
    pub count: usize,
    /// The index of the first guardian (several fleet processes share one database).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Guardian i serves only pool `POOLS[i % len]` (default: the config's pools, all).
    #[arg(long, value_delimiter = ',', value_name = "POOLS")]
    pub pools: Vec<String>,
}

pub async fn run(args: FleetArgs, shutdown: CancellationToken) -> Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = GuardianConfig::load(Some(&args.config), &env)?;
    if args.count == 0 {
        bail!("--count 0: give the number of guardians to run, at least 1");
    }
    if config.metrics_listen.is_some() {
        bail!(
            "metrics_listen is set in {}: the guardians of one fleet process cannot share a metrics address; remove it",
            args.config.display()
        );
    }
    if let Some(bad) = args.pools.iter().find(|p| p.trim().is_empty()) {
        bail!("--pools has an empty pool name ({bad:?}): give comma-separated pool names");
    }
    crate::logging::init(match config.log_format {
        crate::config::LogFormat::Json => crate::logging::Format::Json,
        crate::config::LogFormat::Human => crate::logging::Format::Human,
    });
    raise_open_files_limit();
    let mut guardians = JoinSet::new();
    let mut hosts = HashMap::new();
    for i in args.first..args.first + args.count {
        let mut own = config.clone();
        own.host_name = format!("{}-{i}", config.host_name);
        own.state_dir = config.state_dir.join(i.to_string());
        if !args.pools.is_empty() {
            own.pools = vec![args.pools[i % args.pools.len()].clone()];
        }
        let host = own.host_name.clone();
        let span = tracing::info_span!("guardian", host = %host);
        let stop = shutdown.clone();
        let task = guardians.spawn(guardian::run(own, stop).instrument(span));
        hosts.insert(task.id(), host);
    }
    let mut failed = 0;
    while let Some(ended) = guardians.join_next_with_id().await {
        let (id, outcome) = match ended {
            Ok((id, outcome)) => (id, outcome),
            Err(e) => (e.id(), Err(anyhow!("its task panicked: {e}"))),
        };
        if let Err(e) = outcome {
            failed += 1;
            let host = hosts.get(&id).map_or("(unknown)", String::as_str);
            eprintln!("error: guardian {host}: {e:#}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {} guardians failed (see above)", args.count);
    }
    Ok(())
}

/// Every guardian holds a lock file and a few connections: raise the soft limit on open
/// files to the hard one. A failure leaves the limit as it was (connections then fail with
/// their own error, which names the limit).
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "cannot raise the limit on open files"
                );
            }
        }
    }
}
