//! `posbridge sim payshield`: the payShield simulator on a TCP port; `posbridge sim
//! payshield-keys`: a key store of LMK cryptograms made from a clear test key file.

use crate::payshield::{Settings, Simulator};
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The simulated HSM.
#[derive(Debug, Args)]
pub struct PayshieldArgs {
    /// Address of the host port.
    #[arg(long, default_value = "127.0.0.1:1500")]
    pub listen: SocketAddr,
    /// Message header length the HSM is configured for (the gateway's `[hsm] header` must have
    /// this many characters).
    #[arg(long, default_value_t = 4)]
    pub header_len: usize,
    /// Encrypted PIN length L (CS setting, 5 to 13).
    #[arg(long, default_value_t = 13)]
    pub pin_length: usize,
    /// Refuse keys without odd parity (errors 10 and 11).
    #[arg(long)]
    pub check_parity: bool,
}

/// The key store maker.
#[derive(Debug, Args)]
pub struct PayshieldKeysArgs {
    /// Clear key file (`[[keys]]` label/type/value); default: the embedded demo keys.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// The key store to write (the backend's `key_store`); keys of the same label are replaced.
    #[arg(long)]
    pub store: PathBuf,
    /// Key type for a label prefix, e.g. `--type tmk/=002` (over the backend's defaults).
    #[arg(long = "type", value_name = "PREFIX=CODE")]
    pub types: Vec<String>,
}

/// Runs the simulator until Ctrl-C.
pub async fn payshield(args: PayshieldArgs) -> anyhow::Result<()> {
    if !(5..=13).contains(&args.pin_length) {
        anyhow::bail!("--pin-length must be 5 to 13");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    println!(
        "payShield simulator (test LMK, variant scheme) on {}, header length {}",
        listener.local_addr()?,
        args.header_len
    );
    let simulator = Simulator {
        header_len: args.header_len,
        settings: Settings {
            pin_length: args.pin_length,
            check_parity: args.check_parity,
            ..Settings::default()
        },
    };
    simulator
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Writes the key store.
pub fn payshield_keys(args: PayshieldKeysArgs) -> anyhow::Result<()> {
    let pairs: Vec<(String, String)> = args
        .types
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(p, c)| (p.to_owned(), c.to_owned()))
                .with_context(|| format!("--type {item:?}: PREFIX=CODE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let types: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let (file, origin) = match &args.from {
        Some(path) => (
            posbridge_hsm::software::KeyFile::load(path)?,
            path.display().to_string(),
        ),
        None => (
            posbridge_hsm::software::KeyFile::demo()?,
            "embedded demo keys".to_owned(),
        ),
    };
    let left_out = crate::payshield::keys::provision(file, &origin, &types, &args.store)?;
    for label in left_out {
        println!("left out (AES, or no key type): {label}");
    }
    Ok(())
}
