//! `cargo xtask generate [--out DIR]`: the man pages and shell completions of `sisy`,
//! generated from the CLI definition in the library (`sisyphus::cli::Cli`) so they never
//! drift from it. Used by the package build (packaging/build-deb.sh); the generators stay
//! out of the daemon.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;
use sisyphus::cli::Cli;

const USAGE: &str = "usage: cargo xtask generate [--out DIR] (default DIR: target/generated)";

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Result<()> {
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["generate"] => generate(Path::new("target/generated")),
        ["generate", "--out", out] => generate(&PathBuf::from(out)),
        _ => bail!("{USAGE}"),
    }
}

/// Writes `man/` (one page for `sisy` and one per subcommand: sisy-jobs.1, sisy-jobs-add.1,
/// …) and `completions/` (bash, zsh, fish) under `out`.
fn generate(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).context("cannot write the man pages")?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "sisy", &completions)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}
