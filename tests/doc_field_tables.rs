//! The field tables in the interface docs are the dialects' own description
//! (`posbridge iso8583 spec describe <dialect> --markdown`), so a doc cannot drift from what the
//! codec does. `POSBRIDGE_BLESS=1` rewrites the generated sections after a spec change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

const DOCS: [(&str, &str); 2] = [
    ("docs/terminal-interface.md", "cups-pos"),
    ("docs/host-interface.md", "cups-host"),
];

fn markers(dialect: &str) -> (String, &'static str) {
    (
        format!("<!-- BEGIN GENERATED: posbridge iso8583 spec describe {dialect} --markdown -->\n"),
        "<!-- END GENERATED -->",
    )
}

#[test]
fn interface_docs_hold_the_dialects_generated_field_tables() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("POSBRIDGE_BLESS").is_some();
    for (doc, dialect) in DOCS {
        let path = root.join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = markers(dialect);
        let start = text
            .find(&begin)
            .unwrap_or_else(|| panic!("{doc}: no {begin}"))
            + begin.len();
        let stop = start
            + text[start..]
                .find(end)
                .unwrap_or_else(|| panic!("{doc}: no {end}"));
        let spec = posbridge_codecs::Spec::builtin(dialect).unwrap();
        let generated = posbridge_codecs::describe::markdown(&spec);
        if bless {
            let updated = format!("{}{generated}{}", &text[..start], &text[stop..]);
            std::fs::write(&path, updated).unwrap();
            continue;
        }
        assert_eq!(
            &text[start..stop],
            generated,
            "{doc}: the field table differs from the `{dialect}` dialect; run POSBRIDGE_BLESS=1 \
             cargo test --test doc_field_tables after checking the change"
        );
    }
}

/// The command prints the same table the docs hold.
#[test]
fn the_describe_command_prints_the_table() {
    let out = std::process::Command::new(common::posbridge_bin())
        .args(["iso8583", "spec", "describe", "cups-host", "--markdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec = posbridge_codecs::Spec::builtin("cups-host").unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        posbridge_codecs::describe::markdown(&spec)
    );
}
