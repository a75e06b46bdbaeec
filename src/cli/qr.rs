//! `posbridge qr`: decode an EMV merchant-presented payload (for people or as JSON) and render one
//! as a QR code (PNG, SVG, or text in the terminal).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use posbridge_codecs::emv_qr::{POSBRIDGE_GUI, Payload};

use crate::infra::qr::{Background, describe, render};

/// `posbridge qr` sub-commands.
#[derive(Debug, Subcommand)]
pub enum QrCommand {
    /// Decode a payload: one line per data object with its EMVCo name, or JSON with IDs as keys.
    /// Fails on a bad CRC or any other violation of the EMV MPM rules.
    Decode(DecodeArgs),
    /// Render a payload as a QR code (the payload is checked first).
    Render(RenderArgs),
}

/// `posbridge qr decode` arguments.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The payload text; "-" reads it from standard input.
    pub payload: String,
    /// Print JSON: IDs as keys in payload order, templates as nested objects, values as strings.
    #[arg(long)]
    pub json: bool,
    /// Globally unique identifier whose order (80) and signature (81) templates get posbridge's
    /// sub-field names.
    #[arg(long, default_value = POSBRIDGE_GUI)]
    pub gui: String,
}

/// `posbridge qr render` arguments.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("output").required(true).args(["png", "svg", "terminal", "ascii"])))]
pub struct RenderArgs {
    /// The payload text; "-" reads it from standard input.
    pub payload: String,
    /// Write a PNG image to this file.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Write an SVG image to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print the code with Unicode half blocks.
    #[arg(long)]
    pub terminal: bool,
    /// Print the code in plain ASCII, for terminals without Unicode.
    #[arg(long)]
    pub ascii: bool,
    /// The terminal has a light background (draw dark modules instead of light ones).
    #[arg(long)]
    pub light_background: bool,
    /// Pixels per module in a PNG.
    #[arg(long, default_value_t = render::DEFAULT_MODULE_PX)]
    pub module_px: u32,
}

/// Runs a `posbridge qr` command.
pub fn run(command: QrCommand) -> anyhow::Result<()> {
    match command {
        QrCommand::Decode(args) => decode(args),
        QrCommand::Render(args) => render_payload(args),
    }
}

fn read_payload(argument: &str) -> anyhow::Result<String> {
    if argument != "-" {
        return Ok(argument.to_owned());
    }
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .context("reading the payload from standard input")?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

fn parse(text: &str) -> anyhow::Result<Payload> {
    Payload::parse(text).context("not a valid EMV merchant-presented payload")
}

fn decode(args: DecodeArgs) -> anyhow::Result<()> {
    let payload = parse(&read_payload(&args.payload)?)?;
    let mut out = if args.json {
        describe::json(&payload)?
    } else {
        describe::lines(&payload, &args.gui).join("\n")
    };
    out.push('\n');
    print_out(&out)
}

fn render_payload(args: RenderArgs) -> anyhow::Result<()> {
    let text = read_payload(&args.payload)?;
    // Checked first, then rendered exactly as given (a lowercase CRC stays lowercase).
    parse(&text)?;
    let background = if args.light_background {
        Background::Light
    } else {
        Background::Dark
    };
    if let Some(path) = &args.png {
        let image = render::png(&text, args.module_px)?;
        std::fs::write(path, image).with_context(|| format!("writing {}", path.display()))?;
    } else if let Some(path) = &args.svg {
        let image = render::svg(&text)?;
        std::fs::write(path, image).with_context(|| format!("writing {}", path.display()))?;
    } else if args.terminal {
        print_out(&(render::terminal(&text, background)? + "\n"))?;
    } else {
        print_out(&(render::ascii(&text, background)? + "\n"))?;
    }
    Ok(())
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("writing to standard output")
        }
        _ => Ok(()),
    }
}
