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

/// The library's layers, lowest first (src/lib.rs documents them): a module may import its own
/// layer and those before it, never one after it.
const LAYERS: &[&str] = &[
    "domain", "infra", "store", "registry", "upstream", "service", "edge", "app", "cli",
];

/// The layer a file under `src/` belongs to (`None` for lib.rs, the root).
fn layer_of(relative: &Path) -> Option<usize> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    LAYERS.iter().position(|layer| *layer == name)
}

/// Every `crate::<layer>` a file's code (not its comments) names, with the line.
fn layer_imports(text: &str) -> Vec<(usize, usize, String)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(layer) = LAYERS.iter().position(|l| *l == name) {
                found.push((index + 1, layer, line.trim().to_owned()));
            }
        }
    }
    found
}

#[test]
fn layers_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    files_under(&src, &mut files);
    let mut checked = 0;
    let mut found = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(own) = layer_of(relative) else {
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for (line, target, code) in layer_imports(&text) {
            if target > own {
                found.push(format!(
                    "src/{}:{line}: {} imports {}: {code}",
                    relative.display(),
                    LAYERS[own],
                    LAYERS[target]
                ));
            }
        }
    }
    assert!(checked > 30, "only {checked} files checked");
    assert!(
        found.is_empty(),
        "a lower layer imports a higher one (move the code, or pass what it needs down):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_layer_check_reads_paths_in_code_only() {
    assert_eq!(
        layer_imports("use crate::store::journal::Store;\n"),
        vec![(1, 2, "use crate::store::journal::Store;".to_owned())]
    );
    assert!(layer_imports("//! see [`crate::app::server`]\n").is_empty());
    assert!(layer_imports("let x = 1; // crate::cli\n").is_empty());
    assert_eq!(layer_of(Path::new("service/orders/pay.rs")), Some(5));
    assert_eq!(layer_of(Path::new("lib.rs")), None);
}
