//! `sluice completion bash|zsh|fish|...`.

use clap::Args;
use clap_complete::Shell;

/// Print a shell completion script.
///
/// Load it with `source <(sluice completion bash)`, or for zsh
/// `sluice completion zsh > "${fpath[1]}/_sluice"`, or for fish
/// `sluice completion fish > ~/.config/fish/completions/sluice.fish`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: CompletionArgs, mut command: clap::Command) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, &mut command, "sluice", &mut std::io::stdout());
    Ok(())
}
