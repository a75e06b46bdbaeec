//! STYLE.md's rule that the compiler cannot enforce on its own: "simulators, demo and bench are
//! a crate of their own: the production library never imports them". The crate is
//! `posbridge-sim` (`sim/`); it depends on this library, and this test fails if the library
//! (every file under `src/`) names it or what moved into it, or if `Cargo.toml` makes it a
//! dependency of the library. Comment lines may mention them (docs point readers there); code
//! may not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// What only simulator code says: the crate's name as a path, the modules that moved out of the
/// library (`demo`, `bench`, `upstream::sim_host`) and the simulators' types.
const SIMULATOR_NAMES: &[&str] = &[
    "posbridge_sim",
    "sim_host",
    "demo::",
    "bench::",
    "SimHost",
    "TerminalClient",
    "WalletClient",
    // A `#[path]` or `include!` reaching into the crate's directory.
    "sim/src",
];

/// The lines of `text` (1-based numbers) that name simulator code outside a comment.
fn offences(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| SIMULATOR_NAMES.iter().any(|name| line.contains(name)))
        .map(|(index, line)| (index + 1, line.trim().to_owned()))
        .collect()
}

fn files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

#[test]
fn the_library_never_names_simulator_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    files_under(&root.join("src"), &mut files);
    // Guard against a vacuous pass (a wrong directory reads nothing).
    assert!(files.iter().any(|f| f.ends_with("src/lib.rs")), "{files:?}");
    assert!(files.len() > 20, "only {} files under src/", files.len());
    let mut found = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // not text: cannot import anything
        };
        for (line, code) in offences(&text) {
            found.push(format!("{}:{line}: {code}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "the production library names simulator code (move it to sim/, or depend the other \
         way):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_library_does_not_depend_on_the_simulator_crate() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .unwrap()
        .parse::<toml::Table>()
        .unwrap();
    let package = manifest["package"].as_table().unwrap();
    assert_eq!(package["name"].as_str(), Some("posbridge"));
    // Dependencies of the library (and of a build script), for every target platform. Only
    // `[dev-dependencies]` may name it: the end-to-end tests drive the gateway with it. (While
    // posbridge-sim depends on this package, cargo itself refuses such a cycle; this says why.)
    let mut tables = vec![];
    for key in ["dependencies", "build-dependencies"] {
        tables.extend(manifest.get(key).and_then(|t| t.as_table()));
    }
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        for target in targets.values().filter_map(|t| t.as_table()) {
            for key in ["dependencies", "build-dependencies"] {
                tables.extend(target.get(key).and_then(|t| t.as_table()));
            }
        }
    }
    assert!(!tables.is_empty(), "no [dependencies] in Cargo.toml");
    for table in tables {
        for (name, spec) in table {
            let renamed = spec.get("package").and_then(|p| p.as_str());
            let path = spec.get("path").and_then(|p| p.as_str()).unwrap_or("");
            assert!(
                name != "posbridge-sim" && renamed != Some("posbridge-sim") && path != "sim",
                "the library depends on the simulator crate: {name} = {spec}"
            );
        }
    }
}

#[test]
fn the_check_sees_code_and_lets_comments_through() {
    assert_eq!(offences("use posbridge_sim::demo;\n").len(), 1);
    assert_eq!(offences("    let pan = crate::demo::PAN;\n").len(), 1);
    assert_eq!(
        offences("pub use sim_host::{SimHost, SimHostConfig};\n")[0].0,
        1
    );
    assert!(
        offences("//! the simulated host is `posbridge_sim::host` (sim/src/host.rs)\n").is_empty()
    );
    assert!(offences("pub mod config;\npub mod link;\n").is_empty());
}
