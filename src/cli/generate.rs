//! `sisy generate --out DIR` (hidden): the man pages and shell completions, generated from
//! the CLI definition itself so they never drift from it. Used by the package build.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

pub fn run(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    std::fs::create_dir_all(&completions)?;
    // One page for `sisy` and one per subcommand (sisy-jobs.1, sisy-jobs-add.1, …).
    clap_mangen::generate_to(Cli::command(), &man).context("cannot write the man pages")?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "sisy", &completions)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}
