//! `posbridge admin seed-demo`: registers the demo's merchant, terminal, payer and wallet app
//! in the configured journal, so that `posbridge sim` and `posbridge bench` (against a running
//! gateway) find them. It is an admin command by name, but its data is the demo's, so it lives
//! here and [`super::command`] adds it under the gateway's `admin`.

use crate::demo;
use clap::Args;
use posbridge::cli::ConfigArg;

/// The sub-command's name under `admin`.
pub(super) const NAME: &str = "seed-demo";
/// Its help line.
pub(super) const ABOUT: &str =
    "Register the demo merchant, terminal, payer and wallet app (for `posbridge sim`)";

/// `posbridge admin seed-demo` arguments.
#[derive(Debug, Args)]
pub struct SeedDemoArgs {
    /// The journal and security module to register in.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Runs `posbridge admin seed-demo`.
pub fn run(args: SeedDemoArgs) -> anyhow::Result<()> {
    super::runtime()?.block_on(async {
        let (config, _) = posbridge::infra::config::load(args.config.config.as_deref())?;
        let gateway = posbridge::app::server::open(config).await?;
        demo::seed(&gateway).await?;
        println!(
            "demo merchant {}, terminal {}, payer card {} (PIN {}), wallet app {} registered",
            demo::MID,
            demo::TID,
            demo::PAN,
            demo::PIN,
            demo::APP_ID
        );
        Ok(())
    })
}
