//! Wall time and peak RSS of one run of a command, as `/usr/bin/time` reports them.
//!
//! The command is started from a fresh, small copy of the benchmark program: Linux charges a
//! child the peak RSS of the process it was forked from until it execs, so a command started
//! straight from a benchmark holding thousands of keys would report the benchmark's memory.

use std::process::Command;
use std::time::{Duration, Instant};

const MEASURE_FLAG: &str = "--measure-child";

/// In the copy started by [`run`]: runs the command given after the flag and prints its wall
/// time and peak RSS, then exits. Elsewhere returns at once. Call first thing in `main`.
pub fn serve_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(MEASURE_FLAG) {
        return;
    }
    let started = Instant::now();
    let child = Command::new(&args[2])
        .args(&args[3..])
        .spawn()
        .expect("start the measured command");
    let pid = child.id() as nix::libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for this plain C struct.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; the pointers are to live locals.
    let reaped = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(reaped, pid, "wait4 failed");
    let succeeded = nix::libc::WIFEXITED(status) && nix::libc::WEXITSTATUS(status) == 0;
    println!("{} {} {}", wall.as_nanos(), usage.ru_maxrss, succeeded);
    // The child was reaped by wait4 above.
    std::mem::forget(child);
    std::process::exit(0);
}

/// Runs `command` (program, arguments, working directory and environment) to completion and
/// returns its wall time and peak RSS in KiB; panics if it fails.
pub fn run(command: &Command) -> (Duration, u64) {
    let mut measurer = Command::new(std::env::current_exe().expect("own path"));
    measurer
        .arg(MEASURE_FLAG)
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        measurer.current_dir(dir);
    }
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => measurer.env(name, value),
            None => measurer.env_remove(name),
        };
    }
    let output = measurer.output().expect("start the measuring copy");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "measurer said: {text}");
    assert_eq!(fields[2], "true", "the measured command failed");
    (
        Duration::from_nanos(fields[0].parse().expect("nanoseconds")),
        fields[1].parse().expect("KiB"),
    )
}
