//! `posbridge hsm`: inspect and manage the configured security module.
//!
//! The module comes from `--config FILE` (its `[hsm]` table), or `--key-file FILE` (software
//! module), or `--pkcs11-module LIB --token-label LABEL [--pin-env VAR | --pin-file FILE]`;
//! without any of them, the software module with the embedded demo keys.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use posbridge_hsm::pkcs11::{Pkcs11Module, Pkcs11Options, UserPin};
use posbridge_hsm::software::KeyFile;
use posbridge_hsm::{HsmConfig, KeyInfo, KeyType, SecurityModule};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

/// Which security module to talk to.
#[derive(Debug, Clone, Args)]
pub struct ModuleArgs {
    /// Configuration file with an [hsm] table.
    #[arg(long, conflicts_with_all = ["key_file", "pkcs11_module"])]
    config: Option<PathBuf>,
    /// Software module key file (TOML `[[keys]]`); imported and generated keys are written back.
    #[arg(long, conflicts_with = "pkcs11_module")]
    key_file: Option<PathBuf>,
    /// PKCS#11 library path.
    #[arg(long, requires = "token_label")]
    pkcs11_module: Option<PathBuf>,
    /// PKCS#11 token label.
    #[arg(long)]
    token_label: Option<String>,
    /// Environment variable holding the token's user PIN (default POSBRIDGE_HSM_PIN).
    #[arg(long)]
    pin_env: Option<String>,
    /// File holding the token's user PIN.
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl ModuleArgs {
    fn config(&self) -> Result<HsmConfig> {
        if let Some(path) = &self.config {
            return Ok(HsmConfig::from_toml_file(path)?);
        }
        if let Some(module) = &self.pkcs11_module {
            return Ok(HsmConfig::Pkcs11 {
                module: module.clone(),
                token_label: self.token_label.clone().unwrap_or_default(),
                slot: None,
                pin_env: self.pin_env.clone(),
                pin_file: self.pin_file.clone(),
                // One command at a time: one session is enough.
                pool_size: 1,
            });
        }
        Ok(HsmConfig::Software {
            key_file: self.key_file.clone(),
            persist: self.key_file.is_some(),
        })
    }

    fn open(&self) -> Result<Arc<dyn SecurityModule>> {
        Ok(posbridge_hsm::open(&self.config()?)?)
    }
}

/// `posbridge hsm` sub-commands.
#[derive(Debug, Subcommand)]
pub enum HsmCommand {
    /// What the module is and where PIN blocks and keys are in clear while it works.
    Info {
        #[command(flatten)]
        module: ModuleArgs,
    },
    /// List, import, generate and provision keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `posbridge hsm keys` sub-commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Every key: label, type, check value, usages.
    List {
        #[command(flatten)]
        module: ModuleArgs,
    },
    /// Import a key encrypted under a key-encryption key; refused if its check value differs.
    Import {
        #[command(flatten)]
        module: ModuleArgs,
        /// Label of the key-encryption key (e.g. the terminal master key).
        #[arg(long)]
        kek: String,
        /// Label to store the key under (replaces a key of that label).
        #[arg(long)]
        label: String,
        /// Key type: des, tdes2, tdes3, aes128, aes192, aes256.
        #[arg(long = "type")]
        key_type: String,
        /// The key encrypted (ECB) under the KEK, hex.
        #[arg(long)]
        cryptogram: String,
        /// The check value that came with it, hex (2 to 8 bytes).
        #[arg(long)]
        kcv: String,
    },
    /// Generate a key and print it encrypted under a KEK with its check value.
    Generate {
        #[command(flatten)]
        module: ModuleArgs,
        /// Label to store the new key under.
        #[arg(long)]
        label: String,
        /// Key type: des, tdes2, tdes3, aes128, aes192, aes256.
        #[arg(long = "type")]
        key_type: String,
        /// Label of the key-encryption key to export it under.
        #[arg(long)]
        kek: String,
    },
    /// Store a key the payShield already holds as an LMK cryptogram (a key ceremony's output);
    /// refused unless the HSM's check value (BU) starts with --kcv. payshield backend only.
    ImportLmk {
        #[command(flatten)]
        module: ModuleArgs,
        /// Label to store the key under (replaces a key of that label).
        #[arg(long)]
        label: String,
        /// payShield key type code, e.g. 001 (ZPK), 002 (TPK/TMK/PVK), 003 (TAK), 008 (ZAK).
        #[arg(long = "type")]
        type_code: String,
        /// The key under the LMK: 16 H, U + 32 H or T + 48 H.
        #[arg(long)]
        cryptogram: String,
        /// Its check value, hex (2 to 8 bytes).
        #[arg(long)]
        kcv: String,
    },
    /// Load clear keys from a key file into a PKCS#11 token (test and development tokens; a
    /// production key ceremony loads components under dual control instead).
    Provision {
        #[command(flatten)]
        module: ModuleArgs,
        /// The key file (TOML `[[keys]]` with label, type, value, optional kcv).
        #[arg(long)]
        from: PathBuf,
    },
}

/// Runs a `posbridge hsm` command.
pub fn run(command: HsmCommand) -> Result<()> {
    match command {
        HsmCommand::Info { module } => info(&module),
        HsmCommand::Keys(KeysCommand::List { module }) => list(&module),
        HsmCommand::Keys(KeysCommand::Import {
            module,
            kek,
            label,
            key_type,
            cryptogram,
            kcv,
        }) => {
            let key_type: KeyType = key_type.parse().context("--type")?;
            let cryptogram = hex::decode(cryptogram.trim())
                .map_err(|_| anyhow::anyhow!("--cryptogram: not valid hex"))?;
            let kcv =
                hex::decode(kcv.trim()).map_err(|_| anyhow::anyhow!("--kcv: not valid hex"))?;
            let info = module
                .open()?
                .import_key(&kek, &label, key_type, &cryptogram, &kcv)?;
            print_key(&info, module.json);
            Ok(())
        }
        HsmCommand::Keys(KeysCommand::Generate {
            module,
            label,
            key_type,
            kek,
        }) => {
            let key_type: KeyType = key_type.parse().context("--type")?;
            let exported = module.open()?.generate_key(&label, key_type, &kek)?;
            if module.json {
                println!("{}", serde_json::to_string(&exported)?);
            } else {
                println!(
                    "{} {}",
                    hex::encode_upper(&exported.cryptogram),
                    hex::encode_upper(&exported.kcv)
                );
            }
            Ok(())
        }
        HsmCommand::Keys(KeysCommand::Provision { module, from }) => provision(&module, &from),
        HsmCommand::Keys(KeysCommand::ImportLmk {
            module,
            label,
            type_code,
            cryptogram,
            kcv,
        }) => {
            let kcv =
                hex::decode(kcv.trim()).map_err(|_| anyhow::anyhow!("--kcv: not valid hex"))?;
            let info = posbridge_hsm::open_payshield(&module.config()?)?.import_lmk_key(
                &label,
                &type_code,
                &cryptogram,
                &kcv,
            )?;
            print_key(&info, module.json);
            Ok(())
        }
    }
}

fn info(module: &ModuleArgs) -> Result<()> {
    let capabilities = module.open()?.capabilities();
    if module.json {
        println!("{}", serde_json::to_string(&capabilities)?);
        return Ok(());
    }
    println!("backend: {}", capabilities.backend);
    println!("module: {}", capabilities.description);
    println!(
        "production: {}",
        if capabilities.production { "yes" } else { "no" }
    );
    println!(
        "pin translation: {}",
        serde_json::to_value(capabilities.pin_translation)?
            .as_str()
            .unwrap_or("?")
    );
    println!(
        "key transport: {}",
        serde_json::to_value(capabilities.key_transport)?
            .as_str()
            .unwrap_or("?")
    );
    for note in &capabilities.notes {
        println!("note: {note}");
    }
    let demo = posbridge_hsm::demo_check_values()?;
    let published: Vec<String> = module
        .open()?
        .list_keys()?
        .into_iter()
        .filter(|key| demo.contains(&key.kcv))
        .map(|key| key.label)
        .collect();
    println!(
        "published demo keys: {}",
        if published.is_empty() {
            "none".to_owned()
        } else {
            format!("{} (production mode refuses them)", published.join(", "))
        }
    );
    Ok(())
}

fn print_key(info: &KeyInfo, json: bool) {
    if json {
        println!(
            "{}",
            json!({ "label": info.label, "type": info.key_type.name(), "kcv": hex::encode_upper(&info.kcv), "usages": info.usages })
        );
    } else {
        println!(
            "{} {} {} {}",
            info.label,
            info.key_type,
            hex::encode_upper(&info.kcv),
            info.usages
        );
    }
}

fn list(module: &ModuleArgs) -> Result<()> {
    let keys = module.open()?.list_keys()?;
    if module.json {
        println!("{}", serde_json::to_string(&keys)?);
    } else {
        for key in &keys {
            print_key(key, false);
        }
    }
    Ok(())
}

fn provision(module: &ModuleArgs, from: &std::path::Path) -> Result<()> {
    let HsmConfig::Pkcs11 {
        module: library,
        token_label,
        slot,
        pin_env,
        pin_file,
        pool_size,
    } = module.config()?
    else {
        bail!(
            "provision loads keys into a PKCS#11 token; the software module reads its key file directly"
        )
    };
    let pin = UserPin::from_config(pin_env.as_deref(), pin_file.as_deref())?;
    let options = Pkcs11Options {
        module: library,
        token_label,
        slot,
        pool_size,
    };
    let token = Pkcs11Module::open(&options, &pin)?;
    let count = token.provision_key_file(KeyFile::load(from)?, &from.display().to_string())?;
    if module.json {
        println!("{}", json!({ "provisioned": count }));
    } else {
        println!("{count}");
    }
    Ok(())
}
