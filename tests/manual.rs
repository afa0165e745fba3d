//! `reconfd completions SHELL` and `reconfd man` print what is generated from the one
//! command-line definition, and need no usable settings to do so.

mod common;

use common::Fixture;

#[test]
fn completions_for_bash_zsh_and_fish_offer_the_flags_of_help() {
    let fixture = Fixture::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef reconfd"),
        ("fish", "complete -c reconfd"),
    ] {
        let run = fixture.run(&["completions", shell]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains(marker), "{shell}: {run:?}");
        for flag in ["confdir", "onetime", "min-keys", "client-insecure"] {
            assert!(run.stdout.contains(flag), "{shell} lacks --{flag}");
        }
    }
}

#[test]
fn the_man_page_is_roff_with_every_section_and_option() {
    let run = Fixture::new().run(&["man"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with(".ie"), "{run:?}");
    assert!(run.stdout.contains(".TH reconfd 1"), "{run:?}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(run.stdout.contains(section), "no {section}");
    }
    assert!(
        run.stdout.contains("RECONFD_CONFDIR"),
        "variables are named"
    );
}

#[test]
fn a_broken_settings_file_does_not_stop_the_man_page_or_completions() {
    let fixture = Fixture::new();
    fixture.write("reconfd.toml", "backend = \"etcd\"\nnot toml at all\n");
    let man = fixture.run(&["man"]);
    assert_eq!(man.code, Some(0), "{man:?}");
    let completions = fixture.run(&["completions", "bash"]);
    assert_eq!(completions.code, Some(0), "{completions:?}");
    // The daemon itself still refuses the file.
    let run = fixture.run(&["--onetime"]);
    assert_eq!(run.code, Some(2), "{run:?}");
}

#[test]
fn an_unknown_shell_is_refused_with_the_ones_known() {
    let run = Fixture::new().run(&["completions", "tcsh"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("bash"), "{run:?}");
}

#[test]
fn options_may_follow_a_subcommand() {
    let run = Fixture::new().run(&["completions", "bash", "--log-level", "debug"]);
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn without_a_subcommand_reconfd_runs_its_resources() {
    let fixture = Fixture::new();
    fixture.template("motd.tmpl", "hello\n");
    fixture.resource("motd", "src = \"motd.tmpl\"\ndest = \"motd\"\n");
    let run = fixture.run(&["--onetime", "--backend", "env"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("motd"), "hello\n");
}
