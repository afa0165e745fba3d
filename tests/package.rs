//! scripts/deb.sh builds a Debian package that installs and removes cleanly: run as root (as
//! CI is), it installs the package built from the test binary, runs `reconfd --version` from
//! /usr/bin, verifies the systemd unit and the example settings, and purges the package.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs `program` with `args`; panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "reconfd"])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("ok installed"))
}

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "reconfd"]).output();
    }
}

#[test]
fn the_package_installs_runs_verifies_and_purges() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test installs a package: run it as root (CI does)"
    );
    for tool in ["dpkg", "dpkg-deb", "systemd-analyze"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|output| output.status.success()),
            "{tool} is missing: install dpkg and systemd (scripts/test.sh does)"
        );
    }
    assert!(
        !installed(),
        "a reconfd package is installed already; this test would replace and purge it"
    );
    assert!(
        !Path::new("/usr/bin/reconfd").exists(),
        "/usr/bin/reconfd exists outside any package; this test would overwrite it"
    );
    let out = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deb.sh");
    // The debug binary is large; compression only costs time here.
    let built = Command::new(&script)
        .args([
            env!("CARGO_BIN_EXE_reconfd"),
            out.path().to_str().expect("UTF-8"),
        ])
        .env("DEB_COMPRESSION", "none")
        .output()
        .expect("run scripts/deb.sh");
    assert!(built.status.success(), "{built:?}");
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let contents = run("dpkg-deb", &["--contents", &deb]);
    for path in [
        "./usr/bin/reconfd",
        "./usr/share/man/man1/reconfd.1.gz",
        "./usr/share/bash-completion/completions/reconfd",
        "./usr/share/zsh/vendor-completions/_reconfd",
        "./usr/share/fish/vendor_completions.d/reconfd.fish",
        "./lib/systemd/system/reconfd.service",
        "./etc/reconfd/conf.d/",
        "./etc/reconfd/templates/",
        "./etc/reconfd/reconfd.toml",
    ] {
        assert!(
            contents.contains(path),
            "{path} is not in the package\n{contents}"
        );
    }

    let _installed = Installed;
    run("dpkg", &["-i", &deb]);
    let version = run("/usr/bin/reconfd", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("reconfd {}", env!("CARGO_PKG_VERSION"))
    );
    run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/reconfd.service"],
    );
    // The example settings are usable as installed, and the confdir is empty.
    let check = run("/usr/bin/reconfd", &["check", "--confdir", "/etc/reconfd"]);
    assert!(
        check.contains("0 resources in 0 files: no problems"),
        "{check}"
    );
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "reconfd"]);
    assert!(
        conffiles.contains("/etc/reconfd/reconfd.toml"),
        "{conffiles}"
    );

    run("dpkg", &["--purge", "reconfd"]);
    assert!(!installed(), "the package is gone");
    assert!(!Path::new("/usr/bin/reconfd").exists());
    assert!(
        !Path::new("/etc/reconfd/reconfd.toml").exists(),
        "purge removes the conffile"
    );
}
