//! Standard output, for what a user pipes into another program: `check`'s report, `render`'s
//! file, `convert`'s summary, `--noop` diffs, the manual page and completions. A reader that
//! stops early (`| head`) is no failure: what it did not read is dropped, and the run keeps its
//! exit status, where `print!` would panic.

use std::io::Write;

/// Writes `text` to standard output.
pub(crate) fn print(text: &str) {
    write(text.as_bytes());
}

/// Writes `text` and a line break to standard output.
pub(crate) fn print_line(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    write(line.as_bytes());
}

/// Writes `bytes` to standard output; false only when it failed otherwise than by a closed
/// pipe, which is said on standard error.
pub(crate) fn write(bytes: &[u8]) -> bool {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(e) => {
            eprintln!("reconfd: cannot write to standard output: {e}");
            false
        }
    }
}
