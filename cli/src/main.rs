//! `kubectl-vaultsync`: the kubectl plugin (`kubectl vaultsync ...`); everything is in the library.

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = vaultsync_cli::Cli::parse();
    match vaultsync_cli::run(cli).await {
        Ok(output) => {
            print!("{}", output.text);
            std::process::ExitCode::from(u8::try_from(output.code).unwrap_or(1))
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}
