//! The release build's link order (`scripts/hot-functions.txt`, which build.rs hands to the
//! linker) is made for the dependencies of this checkout. Its entries are symbol names, and
//! those change with a dependency's version or features; a stale list is skipped without a
//! word, and every daemon then keeps megabytes more of its code resident (BENCHMARKS.md, "Hot
//! functions first"). `scripts/hot-functions.py` records the dependencies it made the list
//! with in `scripts/hot-functions.for`; this test computes the same from the checkout, so a
//! commit that stales the list fails here until the list is made again. (A new toolchain
//! renames symbols too, but that is the builder's, not the checkout's.)

use std::path::Path;

use md5::{Digest, Md5};

/// Cargo.toml's tables whose contents change the crates' symbol names, as the script has them.
const DEPENDENCY_TABLES: &[&str] = &[
    "dependencies",
    "dev-dependencies",
    "build-dependencies",
    "features",
    "patch",
];

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Each dependency or feature table of `manifest`, its header to the next one, joined by
/// newlines.
fn dependency_tables(manifest: &str) -> String {
    let mut kept = Vec::new();
    let mut keep = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            keep = line
                .trim_matches(|c| c == '[' || c == ']' || c == ' ')
                .split('.')
                .any(|name| DEPENDENCY_TABLES.contains(&name));
        }
        if keep {
            kept.push(line);
        }
    }
    kept.join("\n")
}

#[test]
fn the_hot_function_list_was_made_for_these_dependencies() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |name: &str| {
        std::fs::read(repo.join(name)).unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    };
    let manifest = String::from_utf8(read("Cargo.toml")).expect("Cargo.toml is UTF-8");
    let checkout = format!(
        "Cargo.lock {}\nCargo.toml {}\n",
        md5_hex(&read("Cargo.lock")),
        md5_hex(dependency_tables(&manifest).as_bytes()),
    );
    let made_for = String::from_utf8(read("scripts/hot-functions.for")).expect("UTF-8");
    assert_eq!(
        made_for, checkout,
        "scripts/hot-functions.txt was made with other dependencies \
         (left: what it was made for, right: this checkout); run scripts/hot-functions.py"
    );
}

#[test]
fn dependency_tables_keep_every_dependency_and_feature_table_and_nothing_else() {
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\na = \"1\"\n\n\
                    [profile.release]\nlto = true\n[target.'cfg(unix)'.dependencies]\nb = \"2\"\n\
                    [features]\nf = []";
    assert_eq!(
        dependency_tables(manifest),
        "[dependencies]\na = \"1\"\n\n[target.'cfg(unix)'.dependencies]\nb = \"2\"\n[features]\nf = []"
    );
}
