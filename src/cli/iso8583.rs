//! `posbridge iso8583`: the message inspector. `decode` prints a message one field per line (PAN
//! masked, PIN block, MAC and keys redacted unless `--reveal`) or as flat JSON (the machine
//! interface, unmasked); `encode` turns that same JSON back into the message's hex. Offsets in
//! errors count from the first byte of the input as given (including a `--frame` length prefix).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use posbridge_codecs::framing::Framing;
use posbridge_codecs::{FrameLength, Message, Spec, decode, from_hex, mask, to_hex};

/// `posbridge iso8583` sub-commands.
#[derive(Debug, Subcommand)]
pub enum Iso8583Command {
    /// Decode a message and print its fields (one per line, or JSON with --json).
    Decode(DecodeArgs),
    /// Encode a message from the inspector's JSON and print it as uppercase hex.
    Encode(EncodeArgs),
    /// Dialect definitions.
    #[command(subcommand)]
    Spec(SpecCommand),
}

/// `posbridge iso8583 spec` sub-commands.
#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print a dialect's layout and complete field table (Markdown with --markdown, the form
    /// the interface docs hold).
    Describe(DescribeArgs),
}

/// Arguments of `posbridge iso8583 spec describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Dialect: a built-in name (iso87ascii, iso87binary, cups-pos, cups-host) or a spec file path.
    pub dialect: String,
    /// Markdown (the only format; accepted for clarity in scripts and docs).
    #[arg(long)]
    pub markdown: bool,
}

/// Arguments of `posbridge iso8583 decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Dialect: a built-in name (iso87ascii, iso87binary, cups-pos, cups-host) or a spec file path.
    #[arg(long)]
    pub spec: String,
    /// The message as hex (spaces allowed).
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub hex: Option<String>,
    /// A file holding the message: hex text if the name ends in `.hex`, raw bytes otherwise.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The input starts with the dialect's frame length prefix (or ends with ETX).
    #[arg(long)]
    pub frame: bool,
    /// Print `{"mti":..,"header":..,"fields":{..}}` (unmasked).
    #[arg(long)]
    pub json: bool,
    /// Show PAN, track data, PIN block, MAC and key material in clear in the human output.
    #[arg(long)]
    pub reveal: bool,
}

/// Arguments of `posbridge iso8583 encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Dialect: a built-in name or a spec file path.
    #[arg(long)]
    pub spec: String,
    /// The JSON message (as printed by `decode --json`), from a file or `-` for standard input.
    #[arg(long)]
    pub json: String,
    /// Prepend the dialect's frame length prefix (or append ETX).
    #[arg(long)]
    pub frame: bool,
}

/// Runs a `posbridge iso8583` command.
pub fn run(command: Iso8583Command) -> anyhow::Result<()> {
    match command {
        Iso8583Command::Decode(args) => {
            let out = decode_command(&args)?;
            print!("{out}");
            Ok(())
        }
        Iso8583Command::Encode(args) => {
            let out = encode_command(&args)?;
            println!("{out}");
            Ok(())
        }
        Iso8583Command::Spec(SpecCommand::Describe(args)) => {
            print!(
                "{}",
                posbridge_codecs::describe::markdown(&load_spec(&args.dialect)?)
            );
            Ok(())
        }
    }
}

fn load_spec(name: &str) -> anyhow::Result<Spec> {
    Ok(Spec::load(name)?)
}

fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    from_hex(&compact).ok_or_else(|| anyhow!("input is not hex (an even number of 0-9/A-F digits)"))
}

fn read_input(args: &DecodeArgs) -> anyhow::Result<Vec<u8>> {
    match (&args.hex, &args.file) {
        (Some(hex), _) => parse_hex(hex),
        (None, Some(path)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("hex"))
            {
                let text = String::from_utf8(bytes)
                    .map_err(|_| anyhow!("{} is not hex text", path.display()))?;
                parse_hex(&text)
            } else {
                Ok(bytes)
            }
        }
        (None, None) => bail!("give the message with --hex or --file"),
    }
}

/// The dialect's stream framing; `None` when its transport delimits messages itself.
fn framing(spec: &Spec) -> anyhow::Result<Option<Framing>> {
    if spec.framing.length == FrameLength::None {
        return Ok(None);
    }
    Ok(Some(
        Framing::from_spec(spec).map_err(|e| anyhow!("frame: {e}"))?,
    ))
}

/// Strips the frame length prefix (or ETX); returns the message and the prefix width.
fn unframe<'a>(spec: &Spec, input: &'a [u8]) -> anyhow::Result<(&'a [u8], usize)> {
    match framing(spec)? {
        Some(framing) => {
            let body = framing.unframe(input).map_err(|e| anyhow!("frame: {e}"))?;
            Ok((body, framing.length_prefix.prefix_len()))
        }
        None => Ok((input, 0)),
    }
}

/// Prepends the frame length prefix (or appends ETX).
fn frame(spec: &Spec, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Some(framing) = framing(spec)? else {
        return Ok(message.to_vec());
    };
    let mut out = Vec::with_capacity(message.len() + 4);
    framing
        .frame_into(message, &mut out)
        .map_err(|e| anyhow!("frame: {e}"))?;
    Ok(out)
}

fn decode_command(args: &DecodeArgs) -> anyhow::Result<String> {
    let spec = load_spec(&args.spec)?;
    let input = read_input(args)?;
    let (body, offset) = if args.frame {
        unframe(&spec, &input)?
    } else {
        (&input[..], 0)
    };
    let message = decode(&spec, body).map_err(|mut e| {
        e.offset += offset;
        anyhow!(e).context(format!("decoding a {} message", spec.name))
    })?;
    Ok(if args.json {
        json_of(&spec, &message)
    } else {
        human_of(&spec, &message, args.reveal)
    })
}

/// The flat JSON form: every present field as a string, in field order.
fn json_of(spec: &Spec, message: &Message<'_>) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let mut out = format!("{{\"mti\":{}", quote(message.mti()));
    if spec.header.length > 0 {
        let _ = write!(out, ",\"header\":{}", quote(&to_hex(message.header())));
    }
    out.push_str(",\"fields\":{");
    for (i, field) in message.fields().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{}\":{}", field.number(), quote(&field.text()));
    }
    out.push_str("}}\n");
    out
}

fn human_of(spec: &Spec, message: &Message<'_>, reveal: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "MTI     {}  ({})", message.mti(), spec.name);
    if spec.header.length > 0 {
        let _ = writeln!(out, "header  {}", to_hex(message.header()));
    }
    let mti = message.mti_bytes();
    for field in message.fields() {
        let def = field.def();
        let sensitivity = if reveal {
            None
        } else {
            def.sensitivity_for(&mti)
        };
        let shown = mask::shown_text(def, sensitivity, &field.value());
        let _ = writeln!(
            out,
            "{:>4}  {:<44} {}",
            field.number(),
            clip(&def.name, 44),
            shown
        );
        if sensitivity.is_some() || def.subfields.is_none() {
            continue;
        }
        // Sub-fields are a reading aid: a value that does not follow the layout is shown whole.
        if let Ok(subs) = message.subfields(field.number()) {
            for (entry, bytes) in subs {
                let sub_text = if entry.is_text || bytes.iter().all(|b| (0x20..0x7F).contains(b)) {
                    bytes.iter().map(|&b| char::from(b)).collect::<String>()
                } else {
                    to_hex(&bytes)
                };
                let label = if entry.name.is_empty() {
                    String::new()
                } else {
                    clip(&entry.name, 36)
                };
                let _ = writeln!(out, "      {:<8} {:<36} {}", entry.path, label, sub_text);
            }
        }
    }
    out
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('~');
        t
    }
}

fn encode_command(args: &EncodeArgs) -> anyhow::Result<String> {
    let spec = load_spec(&args.spec)?;
    let text = if args.json == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading JSON from standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.json).with_context(|| format!("reading {}", args.json))?
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).context("parsing the JSON message")?;
    let obj = json
        .as_object()
        .ok_or_else(|| anyhow!("JSON: expected an object with mti and fields"))?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "mti" | "header" | "fields") {
            bail!("JSON: unknown key `{key}` (mti, header, fields)");
        }
    }
    let mti = obj
        .get("mti")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("JSON: `mti` must be a string"))?;
    let mut builder = spec.builder(mti)?;
    match (obj.get("header"), spec.header.length) {
        (None, 0) => {}
        (Some(_), 0) => bail!("JSON: dialect {} has no header", spec.name),
        (None, n) => bail!(
            "JSON: dialect {} needs `header` ({n} bytes as hex)",
            spec.name
        ),
        (Some(h), _) => {
            let h = h
                .as_str()
                .ok_or_else(|| anyhow!("JSON: `header` must be a hex string"))?;
            builder.set_header(parse_hex(h).context("JSON: header")?)?;
        }
    }
    let fields = obj
        .get("fields")
        .and_then(|v| v.as_object())
        .ok_or_else(|| anyhow!("JSON: `fields` must be an object"))?;
    for (key, value) in fields {
        let number: u16 = key
            .parse()
            .map_err(|_| anyhow!("JSON: field key `{key}` is not a field number"))?;
        let value = value
            .as_str()
            .ok_or_else(|| anyhow!("JSON: field {key} must be a string"))?;
        builder.set_text(number, value)?;
    }
    let mut buf = Vec::with_capacity(512);
    builder.encode_into(&mut buf)?;
    let bytes = if args.frame { frame(&spec, &buf)? } else { buf };
    Ok(to_hex(&bytes))
}
