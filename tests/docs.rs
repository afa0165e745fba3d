//! The README's flag table and `reconfd --help` list the same flags, so that neither can
//! drift from the other.

mod common;

use std::collections::BTreeSet;

use common::Fixture;

/// The `--flag` names in `text`'s first table cell of each row that starts with a flag.
fn readme_flags(readme: &str) -> BTreeSet<String> {
    readme
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(flag_names)
        .collect()
}

/// Every `--name` in `text`.
fn flag_names(text: &str) -> Vec<String> {
    text.match_indices("--")
        .map(|(at, _)| {
            let name: String = text[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            format!("--{name}")
        })
        .collect()
}

#[test]
fn the_readme_flag_table_lists_every_flag_of_help_and_no_other() {
    let run = Fixture::new().run(&["--help"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let help: BTreeSet<String> = run
        .stdout
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .flat_map(|line| flag_names(line.split("  ").next().unwrap_or(line)))
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = readme_flags(&readme);
    let missing: Vec<&String> = help.difference(&table).collect();
    let unknown: Vec<&String> = table.difference(&help).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "flags of --help missing from the README table: {missing:?}; \
         flags in the table that --help does not know: {unknown:?}"
    );
    assert!(help.len() > 20, "{help:?}");
}

#[test]
fn help_and_the_manual_page_open_with_what_reconfd_does() {
    // `-h` and the manual page's NAME give the package's one-line description; `--help` the
    // program's long description.
    let short = env!("CARGO_PKG_DESCRIPTION");
    let long = "Render configuration files from key/value stores and swap them in safely";
    for (flag, opening) in [("-h", short), ("--help", long)] {
        let run = Fixture::new().run(&[flag]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(
            run.stdout.starts_with(opening),
            "`reconfd {flag}` opens with:\n{}",
            run.stdout.lines().next().unwrap_or_default()
        );
    }
    let run = Fixture::new().run(&["man"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let name = run
        .stdout
        .lines()
        .skip_while(|line| *line != ".SH NAME")
        .nth(1)
        .unwrap_or_default();
    assert!(
        name.starts_with("reconfd \\- Configuration reconciler"),
        "the manual page's NAME line: {name}"
    );
}
