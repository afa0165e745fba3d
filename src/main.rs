//! The `reconfd` binary: parse settings, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use reconfd::daemon;
use reconfd::settings::Settings;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

fn main() -> ExitCode {
    // Logging starts at `info` so that settings warnings are seen, and switches to the
    // configured level once the settings are known.
    let (filter, filter_handle) = reload::Layer::new(EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes are noise in the journal and in files; only a terminal gets them.
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .init();

    let settings = match Settings::from_command_line() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("reconfd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = filter_handle.reload(EnvFilter::new(&settings.log_level)) {
        eprintln!("reconfd: cannot set the log level: {e}");
    }

    // One thread is enough: the work is rendering and short file operations, and a single
    // thread keeps memory and idle CPU low on every host of a fleet.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reconfd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(daemon::run(settings))
}
