//! `posbridge demo`: arguments and the runtime around [`crate::demo::run`].

use clap::Args;

/// `posbridge demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Route the sale through a simulated UnionPay host (five-role deployment) instead of the
    /// local stored-value ledger.
    #[arg(long)]
    pub five_roles: bool,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    posbridge::app::logging::init(&posbridge::infra::config::LogConfig {
        format: "text".into(),
        level: "warn".into(),
    });
    super::runtime()?.block_on(async {
        let mut out = std::io::stdout();
        crate::demo::run(&mut out, args.five_roles).await
    })
}
