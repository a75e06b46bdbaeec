//! `posbridge serve` and `posbridge config check`.

use crate::infra::config::{self, Source};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `posbridge serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); without one, the embedded defaults (SQLite journal, software
    /// security module with demo keys). `POSBRIDGE__SECTION__KEY` variables override either.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `posbridge config` sub-commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Loads and validates a configuration file (with the environment's overrides) and prints
    /// the result.
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (config, source) = config::load(args.config.as_deref())?;
    crate::app::logging::init(&config.log);
    match &source {
        Source::Defaults => tracing::warn!(
            "no configuration file given: running on the embedded defaults (SQLite journal {}, software security module with demo keys: not for production)",
            config.journal.sqlite_path
        ),
        Source::File(path) => tracing::info!(%path, "configuration loaded"),
    }
    runtime()?.block_on(async move {
        let gateway = crate::app::server::open(config).await?;
        let listeners = crate::app::server::Listeners::bind(&gateway.config).await?;
        tracing::info!(
            terminal = %listeners.terminal.local_addr()?,
            wallet_api = %listeners.wallet_api.local_addr()?,
            metrics = ?listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()),
            "posbridge serving"
        );
        crate::app::server::run(gateway, listeners, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs a `posbridge config` command.
pub fn config_command(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let (config, _) = config::load(Some(&file))?;
            println!("{}: valid", file.display());
            println!(
                "  terminal listener  {} ({})",
                config.terminal.listen, config.terminal.dialect
            );
            println!("  wallet API         {}", config.wallet_api.listen);
            println!(
                "  journal            {}",
                match &config.journal.url {
                    Some(_) => format!("PostgreSQL, schema {}", config.journal.schema),
                    None => format!("SQLite {}", config.journal.sqlite_path),
                }
            );
            Ok(())
        }
    }
}
