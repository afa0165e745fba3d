//! Running check and reload commands: through `sh -c`, in their own process group, with a
//! time limit after which the whole group is killed (a reload script's children included).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout, Command};

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The shell could not be started.
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
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
        /// Its standard output and error, prefixed with `: ` when not empty.
        output: String,
    },
}

/// How long output is still collected after the shell exits. A command that leaves a
/// background process holding its output open (a service started with `&`) must not keep
/// reconfd waiting, nor be killed for it.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

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
            source,
        })?;
    let output = Arc::new(Mutex::new(Vec::new()));
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
                source,
            });
        }
        Ok(Ok(status)) => status,
    };
    if tokio::time::timeout(OUTPUT_GRACE, readers).await.is_err() {
        tracing::debug!("`{command}` left a process holding its output open");
    }
    let text = {
        let bytes = output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&bytes).trim().to_string()
    };
    if status.success() {
        Ok(text)
    } else {
        Err(CommandError::Failed {
            command: command.to_string(),
            status,
            output: if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            },
        })
    }
}

/// Appends standard output and standard error to `sink` as they arrive, so that what was read
/// before the grace period ran out is kept.
async fn collect_output(
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    sink: Arc<Mutex<Vec<u8>>>,
) {
    tokio::join!(pump(stdout, &sink), pump(stderr, &sink));
}

async fn pump(reader: Option<impl AsyncRead + Unpin>, sink: &Mutex<Vec<u8>>) {
    let Some(mut reader) = reader else { return };
    let mut buffer = [0u8; 4096];
    while let Ok(read) = reader.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        sink.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(&buffer[..read]);
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
}
