//! Links the release binary with the functions its common paths run placed first and together
//! (the list `scripts/hot-functions.txt`, made by `scripts/hot-functions.py`).
//!
//! The kernel maps a binary's code 64 KiB around each page touched, so where the functions a
//! daemon runs lie decides most of its resident memory: placed together, they keep about 40 %
//! as many code pages resident as scattered (BENCHMARKS.md, "Hot functions first"). Only the
//! order changes, never the code. Applied where the linker is known to take the list: release
//! builds for x86_64 Linux (GNU), which Rust links with LLD. `RECONFD_NO_FUNCTION_ORDER=1`
//! turns it off, for a linker that does not know `--symbol-ordering-file` (GNU ld).

use std::path::Path;

fn main() {
    const LIST: &str = "scripts/hot-functions.txt";
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={LIST}");
    println!("cargo::rerun-if-env-changed=RECONFD_NO_FUNCTION_ORDER");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let lld_target = std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu");
    let turned_off = std::env::var_os("RECONFD_NO_FUNCTION_ORDER").is_some_and(|v| v != "0");
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let list = Path::new(&manifest_dir).join(LIST);
    if release && lld_target && !turned_off && list.is_file() {
        println!(
            "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        // A name the binary does not have (a stale list) is skipped, silently.
        println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
