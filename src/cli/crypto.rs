//! `posbridge crypto`: the operator's calculator. Check values, PIN blocks, MACs and key
//! components from clear values typed in at a key ceremony or while chasing a MAC failure.
//!
//! Every command prints one line of uppercase hex (or, with `--json`, one JSON object). Bad
//! input is a one-line error and a non-zero exit. Clear values stay in zeroising wrappers.

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use posbridge_hsm::calculator;
use posbridge_hsm::keys::Family;
use posbridge_hsm::{ClearKey, MacAlgorithm, Padding, Pan, Pin, PinBlockFormat};
use serde_json::json;
use std::path::PathBuf;

/// Cipher family for check values and key components.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyAlgo {
    /// DES / triple DES: encrypt 8 zero bytes, 3 bytes.
    Tdes,
    /// AES: CMAC of 16 zero bytes, 5 bytes.
    Aes,
}

impl KeyAlgo {
    fn family(self) -> Family {
        match self {
            KeyAlgo::Tdes => Family::Des,
            KeyAlgo::Aes => Family::Aes,
        }
    }
}

/// `posbridge crypto` sub-commands.
#[derive(Debug, Subcommand)]
pub enum CryptoCommand {
    /// Key check value of a clear key.
    Kcv {
        /// The key, hex (16, 32 or 48 digits for TDES; 32, 48 or 64 for AES).
        #[arg(long)]
        key: String,
        /// Cipher family.
        #[arg(long, value_enum, default_value_t = KeyAlgo::Tdes)]
        algo: KeyAlgo,
        /// Print a JSON object instead of hex.
        #[arg(long)]
        json: bool,
    },
    /// ISO 9564 PIN block: clear without --key (formats 0, 1, 3), encrypted with one.
    PinBlock {
        /// Format: 0, 1, 3 or 4 (4 needs an AES key).
        #[arg(long)]
        format: String,
        /// The PIN, 4 to 12 digits; `-` reads it from the first line of standard input (keeps it
        /// out of the shell history and the process list).
        #[arg(long)]
        pin: String,
        /// The PAN, digits.
        #[arg(long)]
        pan: String,
        /// Encrypt under this clear key (TDES for formats 0, 1, 3; AES for 4), hex.
        #[arg(long)]
        key: Option<String>,
        /// Print a JSON object instead of hex.
        #[arg(long)]
        json: bool,
    },
    /// MAC of a message, printed as the bytes the message carries.
    Mac {
        /// Algorithm: iso9797-1 (CBC-MAC), x919 (retail MAC), cups-ecb (UnionPay POS), aes-cmac.
        #[arg(long)]
        algo: String,
        /// ISO 9797-1 padding method for iso9797-1 (1 or 2).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        padding: u8,
        /// The clear MAC key, hex.
        #[arg(long)]
        key: String,
        /// The message, hex.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        data: Option<String>,
        /// Read the message's raw bytes from a file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print a JSON object instead of hex.
        #[arg(long)]
        json: bool,
    },
    /// XOR of two or more clear key components; prints the key and its check value.
    KeyCombine {
        /// A component, hex (give at least two, all the same length).
        #[arg(long = "component", required = true)]
        components: Vec<String>,
        /// Cipher family of the result (for its check value).
        #[arg(long, value_enum, default_value_t = KeyAlgo::Tdes)]
        algo: KeyAlgo,
        /// Print a JSON object instead of hex.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `posbridge crypto` command.
pub fn run(command: CryptoCommand) -> Result<()> {
    let line = match command {
        CryptoCommand::Kcv { key, algo, json } => kcv(&key, algo, json)?,
        CryptoCommand::PinBlock {
            format,
            pin,
            pan,
            key,
            json,
        } => pin_block(&format, &pin, &pan, key.as_deref(), json)?,
        CryptoCommand::Mac {
            algo,
            padding,
            key,
            data,
            file,
            json,
        } => mac(&algo, padding, &key, data.as_deref(), file, json)?,
        CryptoCommand::KeyCombine {
            components,
            algo,
            json,
        } => key_combine(&components, algo, json)?,
    };
    println!("{line}");
    Ok(())
}

fn parse_key(text: &str) -> Result<ClearKey> {
    ClearKey::from_hex(text).context("--key")
}

fn kcv(key: &str, algo: KeyAlgo, json: bool) -> Result<String> {
    let key = parse_key(key)?;
    let kcv = hex::encode_upper(calculator::kcv(algo.family(), &key)?);
    Ok(if json {
        json!({ "kcv": kcv, "algo": format!("{algo:?}").to_lowercase(), "key_bytes": key.len() })
            .to_string()
    } else {
        kcv
    })
}

fn read_pin(text: &str) -> Result<Pin> {
    if text == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the PIN from standard input")?;
        let pin = Pin::new(line.trim()).context("--pin");
        zeroize_string(&mut line);
        return pin;
    }
    Pin::new(text).context("--pin")
}

fn zeroize_string(text: &mut String) {
    // Overwrite before freeing: the root package has no zeroize dependency of its own.
    let len = text.len();
    text.clear();
    text.extend(std::iter::repeat_n('\0', len));
    text.clear();
}

fn pin_block(format: &str, pin: &str, pan: &str, key: Option<&str>, json: bool) -> Result<String> {
    let format: PinBlockFormat = format.parse().context("--format")?;
    let pin = read_pin(pin)?;
    let pan = Pan::new(pan).context("--pan")?;
    let block = match key {
        Some(key) => calculator::encrypted_pin_block(format, &pin, &pan, &parse_key(key)?)?,
        None if format == PinBlockFormat::Iso4 => {
            bail!("--format 4 needs --key (a format 4 block exists only enciphered under AES)")
        }
        None => calculator::clear_pin_block(format, &pin, &pan)?,
    };
    let hex = hex::encode_upper(block.expose_secret());
    Ok(if json {
        json!({ "format": format.to_string(), "encrypted": key.is_some(), "pin_block": hex })
            .to_string()
    } else {
        hex
    })
}

fn mac(
    algo: &str,
    padding: u8,
    key: &str,
    data: Option<&str>,
    file: Option<PathBuf>,
    json: bool,
) -> Result<String> {
    let mut algorithm: MacAlgorithm = algo.parse().context("--algo")?;
    if let MacAlgorithm::Iso9797Alg1 { .. } = algorithm {
        algorithm = MacAlgorithm::Iso9797Alg1 {
            padding: if padding == 2 {
                Padding::M2
            } else {
                Padding::M1
            },
        };
    }
    let key = parse_key(key)?;
    let message = match (data, file) {
        (Some(hex_text), _) => {
            hex::decode(hex_text.trim()).map_err(|_| anyhow::anyhow!("--data: not valid hex"))?
        }
        (None, Some(path)) => {
            std::fs::read(&path).with_context(|| format!("--file {}", path.display()))?
        }
        (None, None) => bail!("give --data or --file"),
    };
    let mac = calculator::mac(algorithm, &key, &message)?;
    let hex = hex::encode_upper(&mac);
    Ok(if json {
        let mut object =
            json!({ "algo": algorithm.name(), "mac": hex, "data_bytes": message.len() });
        if algorithm == MacAlgorithm::CupsEcb {
            object["mac_text"] = json!(String::from_utf8_lossy(&mac));
        }
        object.to_string()
    } else {
        hex
    })
}

fn key_combine(components: &[String], algo: KeyAlgo, json: bool) -> Result<String> {
    let parts = components
        .iter()
        .enumerate()
        .map(|(i, text)| {
            ClearKey::from_hex(text).with_context(|| format!("--component #{}", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let key = calculator::combine_components(&parts)?;
    let kcv = hex::encode_upper(calculator::kcv(algo.family(), &key)?);
    let key_hex = hex::encode_upper(key.expose_secret());
    Ok(if json {
        let component_kcvs = parts
            .iter()
            .map(|part| calculator::kcv(algo.family(), part).map(hex::encode_upper))
            .collect::<posbridge_hsm::Result<Vec<_>>>()?;
        json!({ "key": key_hex, "kcv": kcv, "component_kcvs": component_kcvs }).to_string()
    } else {
        format!("{key_hex} {kcv}")
    })
}
