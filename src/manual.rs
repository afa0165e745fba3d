//! What is generated from the one command-line definition ([`crate::cli::command`]) rather
//! than written by hand: shell completion scripts and the manual page, so that neither can
//! drift from `reconfd --help`.

use std::process::ExitCode;

use clap_complete::Shell;

/// Writes the completion script for `shell` to standard output.
pub fn print_completions(shell: Shell) -> ExitCode {
    let mut command = crate::cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "reconfd", &mut script);
    write_stdout(&script)
}

/// Writes the manual page, in roff, to standard output.
pub fn print_man_page() -> ExitCode {
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(crate::cli::command()).render(&mut page) {
        eprintln!("reconfd: cannot make the manual page: {e}");
        return ExitCode::FAILURE;
    }
    write_stdout(&page)
}

/// Writes `bytes` to standard output; a closed pipe (`reconfd man | head`) is no failure.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    if crate::stdout::write(bytes) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_man_page_names_every_flag_of_help() {
        let mut page = Vec::new();
        clap_mangen::Man::new(crate::cli::command())
            .render(&mut page)
            .unwrap();
        let page = String::from_utf8(page).unwrap();
        for arg in crate::cli::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                // roff escapes each dash of a flag.
                let flag = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(page.contains(&flag), "{flag} is not in the manual page");
            }
        }
    }
}
