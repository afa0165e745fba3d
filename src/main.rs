//! The `reconfd` binary: parse settings, set up logging, run.

use std::fmt::Write;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use reconfd::cli::{self, LogFormat, Subcommands};
use reconfd::secrets::{self, MaskedStderr};
use reconfd::settings::Settings;
use reconfd::store::tls;
use reconfd::{check, convert, manual, process, render};
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;
use tracing_subscriber::{EnvFilter, Layer, Registry};

fn main() -> ExitCode {
    one_malloc_arena();
    // Before any store is set up, once for the process.
    tls::install_provider();
    // Logging starts at `info`, and switches to the configured level once the settings are
    // known; what reading them logs is held until then. The line format is known only with
    // the settings too, so the output layer is swapped in the same way.
    let (filter, filter_handle) = reload::Layer::new(EnvFilter::new("info"));
    let (output, output_handle) = reload::Layer::new(log_output(LogFormat::Text));
    tracing_subscriber::registry()
        .with(output)
        .with(filter)
        .init();
    log_panics();

    let matches = cli::matches();
    // What is printed from the command-line definition needs no settings: a broken settings
    // file must not stand in the way of `reconfd man`.
    let subcommand = match cli::subcommand(&matches) {
        Ok(Some(Subcommands::Completions { shell })) => return manual::print_completions(shell),
        Ok(Some(Subcommands::Man)) => return manual::print_man_page(),
        Ok(Some(Subcommands::Convert { from, to })) => return convert::run(&from, &to),
        Ok(subcommand) => subcommand,
        Err(e) => e.exit(),
    };
    let held = Held::default();
    let merged = tracing::subscriber::with_default(held.clone(), || Settings::merge(&matches));
    let settings = match merged {
        Ok(settings) => settings,
        Err(e) => {
            held.replay();
            eprintln!("reconfd: {}", secrets::mask(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = filter_handle.reload(log_filter(&settings.log_level)) {
        eprintln!("reconfd: cannot set the log level: {e}");
    }
    if settings.log_format != LogFormat::Text
        && let Err(e) = output_handle.reload(log_output(settings.log_format))
    {
        eprintln!("reconfd: cannot set the log format: {e}");
    }
    held.replay();

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
    let code = runtime.block_on(async {
        match subcommand {
            Some(Subcommands::Check { data }) => check::run(&settings, data.as_deref()).await,
            Some(Subcommands::Render { resource, data }) => {
                render::run(&settings, &resource, data.as_deref()).await
            }
            Some(Subcommands::Announce(_)) => process::announce(settings).await,
            _ => process::run(settings).await,
        }
    });
    // Work abandoned at a stop (file work on a hung filesystem) may still hold a thread of
    // the blocking pool; the process does not wait for it. A render past its time limit runs
    // on a thread of its own, which ends with the process.
    runtime.shutdown_background();
    code
}

/// The log lines made while the settings are read, held until their `--log-level` and
/// `--log-format` apply, so that `--log-level error` silences a settings warning too. A
/// subscriber of its own rather than a layer on a registry: a second registry would keep its
/// span storage for the life of the process, about half a MiB of every daemon's memory.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Held {
    /// Logs the lines held, in order, through the logging set up since.
    fn replay(&self) {
        let lines = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for (level, line) in lines {
            match level {
                tracing::Level::ERROR => tracing::error!("{line}"),
                tracing::Level::WARN => tracing::warn!("{line}"),
                tracing::Level::INFO => tracing::info!("{line}"),
                tracing::Level::DEBUG => tracing::debug!("{line}"),
                _ => tracing::trace!("{line}"),
            }
        }
    }
}

impl tracing::Subscriber for Held {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        // Libraries' lines (a DNS lookup's) would be replayed as reconfd's: they are left out,
        // as `--log-level` up to `info` leaves them out anyway.
        metadata.target().starts_with("reconfd")
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        // Spans are not held: only the events in them.
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((*event.metadata().level(), line.0));
    }
}

/// An event's message and fields, as one line.
struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = if field.name() == "message" {
            write!(self.0, "{value:?}")
        } else {
            write!(self.0, "{}={value:?}", field.name())
        };
    }
}

/// The layer that writes log lines to standard error in `format`.
fn log_output(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    // Every line passes through the masks of secrets and of passwords in URLs.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(MaskedStderr)
        .with_target(false);
    match format {
        // Colour codes are noise in the journal and in files; only a terminal gets them.
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    }
}

/// The filter for `--log-level`. Up to `info` only reconfd's own lines show: it reports every
/// store failure itself, once per outage, where the store clients log each reconnection
/// attempt for as long as a store is down. `debug` adds reconfd's details and its libraries'
/// lines at `info` (an HTTP/2 client logs every frame at `debug`, which would bury them);
/// `trace` shows everything. Anything else is taken as a filter of `RUST_LOG`'s syntax.
fn log_filter(level: &str) -> EnvFilter {
    match level {
        "error" | "warn" | "info" => EnvFilter::new(format!("reconfd={level}")),
        "debug" => EnvFilter::new("info,reconfd=debug"),
        level => EnvFilter::new(level),
    }
}

/// Writes a panic as one line of the log, in the log's format, where Rust's own hook would
/// write raw lines into a JSON log; the loops that catch a panic then say what it stopped.
/// A panic raised while logging one goes to Rust's own hook.
fn log_panics() {
    thread_local! {
        static LOGGING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let rusts_own = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if LOGGING.replace(true) {
            return rusts_own(info);
        }
        let at = info
            .location()
            .map(|location| format!(" at {location}"))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| (*text).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!("panicked{at}: {message}\n{backtrace}");
        } else {
            tracing::error!("panicked{at}: {message}");
        }
        LOGGING.set(false);
    }));
}

/// Keeps glibc's allocator to one arena. Renders run on threads of their own, and glibc would
/// give each such thread an arena whose freed pages stay with it, so the peak memory of a
/// render would be held twice over; renders are few and short, so they do not contend for
/// one arena.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // exists, as glibc asks.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}
