//! Running check and reload commands: through `sh -c`, in their own process group, with a
//! time limit after which the whole group is killed (a reload script's children included).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout, Command};

/// Why a command did not succeed. Cloneable, as a reload run once for several resources
/// fails for each of them.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CommandError {
    /// The shell could not be started.
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::sync::Arc<std::io::Error>,
    },
    /// The command ran past its limit and was killed with its process group.
    #[error("`{command}` did not finish within {limit:?} and was killed")]
    TimedOut {
        /// The command line.
        command: String,
        /// The limit.
        limit: Duration,
    },
    /// The command exited unsuccessfully.
    #[error("`{command}` failed ({status}){output}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its standard output and error on one line (line breaks written `\n`), prefixed
        /// with `: ` when not empty.
        output: String,
    },
}

/// How long output is still collected after the shell exits. A command that leaves a
/// background process holding its output open (a service started with `&`) must not keep
/// reconfd waiting, nor be killed for it.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Most output kept from one command: it only goes into a log line, and a chatty command must
/// not cost unbounded memory.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// What a command wrote, up to [`OUTPUT_LIMIT`].
#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    /// Whether anything was dropped, so the text can say it is incomplete.
    cut: bool,
}

/// Runs `command` with `sh -c` and returns its combined output when it exits with status 0.
pub async fn run(command: &str, limit: Duration) -> Result<String, CommandError> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.to_string(),
            source: source.into(),
        })?;
    let output = Arc::new(Mutex::new(Output::default()));
    let readers = tokio::spawn(collect_output(
        child.stdout.take(),
        child.stderr.take(),
        Arc::clone(&output),
    ));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Err(_) => {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                // The group may already be gone; there is nothing more to do then.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            readers.abort();
            return Err(CommandError::TimedOut {
                command: command.to_string(),
                limit,
            });
        }
        Ok(Err(source)) => {
            readers.abort();
            return Err(CommandError::Spawn {
                command: command.to_string(),
                source: source.into(),
            });
        }
        Ok(Ok(status)) => status,
    };
    if tokio::time::timeout(OUTPUT_GRACE, readers).await.is_err() {
        // The reader stays with the background process, keeping at most OUTPUT_LIMIT bytes:
        // closing the pipe instead would kill a service that later writes to it (SIGPIPE).
        tracing::debug!("`{command}` left a process holding its output open");
    }
    let text = {
        let output = output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let text = String::from_utf8_lossy(&output.bytes);
        let text = text.trim();
        if output.cut {
            format!("{text} … (output cut at {} KiB)", OUTPUT_LIMIT / 1024)
        } else {
            text.to_string()
        }
    };
    if status.success() {
        Ok(text)
    } else {
        Err(CommandError::Failed {
            command: command.to_string(),
            status,
            // One line, so that the log record of the failure stays one record.
            output: if text.is_empty() {
                String::new()
            } else {
                format!(": {}", text.replace("\r\n", "\n").replace('\n', "\\n"))
            },
        })
    }
}

/// Appends standard output and standard error to `sink` as they arrive, so that what was read
/// before the grace period ran out is kept.
async fn collect_output(
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    sink: Arc<Mutex<Output>>,
) {
    tokio::join!(pump(stdout, &sink), pump(stderr, &sink));
}

async fn pump(reader: Option<impl AsyncRead + Unpin>, sink: &Mutex<Output>) {
    let Some(mut reader) = reader else { return };
    let mut buffer = [0u8; 4096];
    // Reading goes on past the limit: a command blocked on a full pipe would never exit.
    while let Ok(read) = reader.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let mut output = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = OUTPUT_LIMIT.saturating_sub(output.bytes.len());
        let kept = read.min(room);
        output.bytes.extend_from_slice(&buffer[..kept]);
        output.cut |= kept < read;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_returns_output() {
        let output = run("echo hello; echo oops >&2", Duration::from_secs(5))
            .await
            .expect("succeeds");
        assert!(
            output.contains("hello") && output.contains("oops"),
            "{output}"
        );
    }

    #[tokio::test]
    async fn failure_carries_status_and_output() {
        let err = run("echo 'bad line 3' >&2; exit 3", Duration::from_secs(5))
            .await
            .expect_err("fails");
        let message = err.to_string();
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("bad line 3"), "{message}");
    }

    #[tokio::test]
    async fn multi_line_output_is_one_line_so_the_log_record_stays_one() {
        let err = run("printf 'first\\nsecond\\n'; exit 1", Duration::from_secs(5))
            .await
            .expect_err("fails");
        assert!(err.to_string().ends_with(": first\\nsecond"), "{err}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("survived");
        let command = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let err = run(&command, Duration::from_millis(200))
            .await
            .expect_err("times out");
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the background child was killed too");
    }

    #[tokio::test]
    async fn a_background_process_holding_output_does_not_block_or_die() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("still-running");
        let command = format!("(sleep 1; touch {}) & echo started", marker.display());
        let started = std::time::Instant::now();
        let output = run(&command, Duration::from_secs(10))
            .await
            .expect("succeeds");
        assert!(output.contains("started"), "{output}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "did not wait for the child"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(marker.exists(), "the background process was left running");
    }

    #[tokio::test]
    async fn output_is_cut_at_the_limit() {
        let output = run("yes | head -c 1048576", Duration::from_secs(10))
            .await
            .expect("succeeds");
        assert!(
            output.ends_with("… (output cut at 64 KiB)"),
            "{}",
            &output[output.len().saturating_sub(100)..]
        );
        assert!(output.len() <= OUTPUT_LIMIT + 100, "{} bytes", output.len());
        assert!(output.starts_with("y\ny\n"));
    }

    #[tokio::test]
    async fn output_within_the_limit_is_not_marked_cut() {
        let output = run("yes | head -c 65536", Duration::from_secs(10))
            .await
            .expect("succeeds");
        assert!(!output.contains("output cut"));
        assert_eq!(output.len(), 64 * 1024 - 1, "the final newline is trimmed");
    }

    #[tokio::test]
    async fn a_background_process_writing_after_the_command_returned_lives_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ticks = dir.path().join("ticks");
        // The loop writes to the output pipe 50 times and records each write that succeeded.
        let command = format!(
            "(i=0; while [ $i -lt 50 ] && echo tick; do echo >> {ticks}; i=$((i+1)); \
             sleep 0.01; done) & echo started",
            ticks = ticks.display()
        );
        let output = run(&command, Duration::from_secs(10))
            .await
            .expect("succeeds");
        assert!(output.contains("started"), "{output}");
        let count = || {
            std::fs::read_to_string(&ticks)
                .map(|text| text.lines().count())
                .unwrap_or(0)
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            count(),
            50,
            "every write after the command returned succeeded"
        );
    }
}
