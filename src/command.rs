//! Running check and reload commands: through `sh -c`, in their own process group, with a
//! time limit after which the whole group is killed (a reload script's children included).
//!
//! A placeholder such as `{{.src}}` is never replaced by the path itself, which the shell would
//! read as code (`$(…)`, backquotes) and split at spaces. The path goes into an environment
//! variable of the command, and the placeholder becomes a reference to it, written for the
//! quotes around the placeholder, so the command sees the exact path however it quotes it.

use std::ffi::{OsStr, OsString};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout, Command};

use crate::reaper;

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

/// Variables that carry credentials: those of reconfd's settings that hold one (a node's
/// address may hold a user and password) and those the stores' own clients read. Commands do
/// not inherit them unless `--command-env` names them: a check or a reload needs none of them
/// for its work, and may hand its environment to processes that log it or are less trusted.
/// docs/resources.md lists them for users.
const CREDENTIALS: &[&str] = &[
    "RECONFD_USERNAME",
    "RECONFD_PASSWORD",
    "RECONFD_AUTH_TOKEN",
    "RECONFD_ROLE_ID",
    "RECONFD_SECRET_ID",
    "RECONFD_CLIENT_KEY",
    "RECONFD_NODE",
    "VAULT_TOKEN",
    "VAULT_CLIENT_KEY",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_AUTH",
    "CONSUL_TOKEN",
    "CONSUL_CLIENT_KEY",
    "ETCDCTL_USER",
    "ETCDCTL_PASSWORD",
    "ETCDCTL_KEY",
    "REDISCLI_AUTH",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CREDS",
    "NATS_NKEY",
];

// `CommandEnv` keeps one bit per credential.
const _: () = assert!(CREDENTIALS.len() <= u64::BITS as usize);

/// Which of the [`CREDENTIALS`] commands are given after all (`--command-env`); they inherit
/// the rest of reconfd's environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandEnv {
    /// Bit `i` passes `CREDENTIALS[i]` on.
    passed: u64,
}

impl CommandEnv {
    /// Passes on the credentials among `names`. A name that is not a credential is inherited
    /// anyway, which a warning says, as it may be a misspelt one.
    pub(crate) fn passing(names: &[String]) -> CommandEnv {
        let mut passed = 0;
        for name in names {
            match CREDENTIALS.iter().position(|credential| credential == name) {
                Some(index) => passed |= 1 << index,
                None => tracing::warn!(
                    "command-env names {name}, which commands get anyway; only these are \
                     withheld unless named: {}",
                    CREDENTIALS.join(", ")
                ),
            }
        }
        CommandEnv { passed }
    }

    /// The credentials commands do not get, of those in reconfd's environment.
    fn withheld(self) -> impl Iterator<Item = &'static str> {
        self.withheld_among(credentials_present())
    }

    /// The credentials commands do not get, of those whose bits are set in `present`.
    fn withheld_among(self, present: u64) -> impl Iterator<Item = &'static str> {
        CREDENTIALS
            .iter()
            .enumerate()
            .filter(move |(index, _)| present & !self.passed & (1 << index) != 0)
            .map(|(_, name)| *name)
    }
}

/// Bit `i` set when `CREDENTIALS[i]` is in reconfd's environment, which reconfd never changes.
/// Removing only those matters: any change to a command's environment makes the standard
/// library copy the whole environment at each spawn, a cost every reload would pay.
fn credentials_present() -> u64 {
    static PRESENT: OnceLock<u64> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        CREDENTIALS
            .iter()
            .enumerate()
            .filter(|(_, name)| std::env::var_os(name).is_some())
            .fold(0, |bits, (index, _)| bits | 1 << index)
    })
}

/// The variables by which a service manager talks to reconfd, the main process (sd_notify and
/// its watchdog). A command or the exec mode's service that inherited them would send the
/// manager its own readiness and stopping, for the manager to reject or to take as
/// reconfd's.
const SERVICE_MANAGER: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The [`SERVICE_MANAGER`] variables in reconfd's environment, which reconfd never changes.
fn service_manager_present() -> &'static [&'static str] {
    static PRESENT: OnceLock<Vec<&'static str>> = OnceLock::new();
    PRESENT.get_or_init(|| {
        SERVICE_MANAGER
            .iter()
            .copied()
            .filter(|name| std::env::var_os(name).is_some())
            .collect()
    })
}

/// A value that a command names with a placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placeholder {
    /// `{{.src}}`: the stage file, in `check_cmd`.
    Src,
    /// `{{.dest}}`: the destination, in `reload_cmd`.
    Dest,
}

impl Placeholder {
    /// The name inside the braces, as confd spells it.
    fn name(self) -> &'static str {
        match self {
            Placeholder::Src => "src",
            Placeholder::Dest => "dest",
        }
    }

    /// The environment variable that carries the value to the command.
    fn variable(self) -> &'static str {
        match self {
            Placeholder::Src => "RECONFD_SRC",
            Placeholder::Dest => "RECONFD_DEST",
        }
    }
}

/// A command line ready for `sh -c`: its text, with placeholders turned into references to
/// variables, and those variables' values. Two commands are the same when both are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShellCommand {
    text: String,
    variables: Vec<(&'static str, OsString)>,
}

impl ShellCommand {
    /// `text` as written, no placeholder bound yet.
    pub(crate) fn new(text: &str) -> ShellCommand {
        ShellCommand {
            text: text.to_string(),
            variables: Vec::new(),
        }
    }

    /// Binds `placeholder`, in each of confd's spellings (`{{.src}}`, `{{ .src }}`, `{{src}}`,
    /// `{{ src }}`), to `value`. Other `{{ ... }}` text is left alone.
    pub(crate) fn bind(mut self, placeholder: Placeholder, value: &OsStr) -> ShellCommand {
        let mut result = String::with_capacity(self.text.len());
        let mut quoting = Quoting::default();
        let mut bound = false;
        let mut rest = self.text.as_str();
        while !rest.is_empty() {
            if let Some(after_open) = rest.strip_prefix("{{")
                && let Some(close) = after_open.find("}}")
            {
                let inner = after_open[..close].trim();
                if inner.strip_prefix('.').unwrap_or(inner) == placeholder.name() {
                    result.push_str(&quoting.reference(placeholder.variable()));
                    rest = &after_open[close + 2..];
                    bound = true;
                    continue;
                }
            }
            let consumed = quoting.step(rest);
            result.push_str(&rest[..consumed]);
            rest = &rest[consumed..];
        }
        if bound {
            self.text = result;
            self.variables
                .retain(|(variable, _)| *variable != placeholder.variable());
            self.variables
                .push((placeholder.variable(), value.to_os_string()));
        }
        self
    }

    /// The text `sh -c` runs.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for ShellCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where the shell is in a command line, as far as a placeholder cares: inside which quotes,
/// command substitutions and backquotes.
struct Quoting {
    stack: Vec<Context>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Outside quotes.
    Bare,
    /// Inside `'…'`.
    Single,
    /// Inside `"…"`.
    Double,
    /// Inside `$(…)`, with how many plain parentheses are open in it.
    Substitution(usize),
    /// Inside `` `…` ``.
    Backquote,
}

impl Default for Quoting {
    fn default() -> Quoting {
        Quoting {
            stack: vec![Context::Bare],
        }
    }
}

impl Quoting {
    fn top(&self) -> Context {
        self.stack.last().copied().unwrap_or(Context::Bare)
    }

    /// A reference to `variable` that gives its value as one word, unchanged, here: the
    /// shell expands a variable once and never reads its value as code.
    fn reference(&self, variable: &str) -> String {
        match self.top() {
            Context::Double => format!("${{{variable}}}"),
            // Closed, joined with the value in double quotes, and opened again.
            Context::Single => format!("'\"${{{variable}}}\"'"),
            Context::Bare | Context::Substitution(_) | Context::Backquote => {
                format!("\"${{{variable}}}\"")
            }
        }
    }

    /// Reads the first character of `text` (two for an escape or `$(`), updating the
    /// context; returns how many bytes it read.
    fn step(&mut self, text: &str) -> usize {
        let mut chars = text.chars();
        let Some(first) = chars.next() else {
            return 0;
        };
        let second = chars.next();
        let pair = first.len_utf8() + second.map_or(0, char::len_utf8);
        let top = self.top();
        match (top, first) {
            (Context::Single, '\'') => {
                self.stack.pop();
            }
            (Context::Single, _) => {}
            (_, '\\') => return pair,
            (Context::Double, '"') => {
                self.stack.pop();
            }
            (_, '$') if second == Some('(') => {
                self.stack.push(Context::Substitution(0));
                return pair;
            }
            (Context::Backquote, '`') => {
                self.stack.pop();
            }
            (_, '`') => self.stack.push(Context::Backquote),
            (Context::Double, _) => {}
            (_, '\'') => self.stack.push(Context::Single),
            (_, '"') => self.stack.push(Context::Double),
            (Context::Substitution(open), '(') => {
                self.stack.pop();
                self.stack.push(Context::Substitution(open + 1));
            }
            (Context::Substitution(open), ')') => {
                self.stack.pop();
                if open > 0 {
                    self.stack.push(Context::Substitution(open - 1));
                }
            }
            _ => {}
        }
        first.len_utf8()
    }
}

/// `sh -c script` in a process group of its own, in reconfd's environment without the
/// credentials `env` withholds nor the service manager's variables, and with the open files
/// limit reconfd started with: how every command reconfd starts runs, the exec mode's service
/// included.
pub(crate) fn shell(script: &str, env: CommandEnv) -> Command {
    let mut shell = Command::new("/bin/sh");
    for name in env
        .withheld()
        .chain(service_manager_present().iter().copied())
    {
        shell.env_remove(name);
    }
    let script = match crate::descriptors::starting_soft_limit() {
        // The shell sets it for itself and what it starts; a shell without `ulimit -n`
        // runs the command anyway.
        Some(soft) => format!("ulimit -S -n {soft} 2>/dev/null\n{script}"),
        None => script.to_string(),
    };
    shell.arg("-c").arg(script).process_group(0);
    shell
}

/// Runs `command` with `sh -c`, in reconfd's environment without the credentials `env`
/// withholds, and returns its combined output when it exits with status 0.
pub(crate) async fn run(
    command: &ShellCommand,
    limit: Duration,
    env: CommandEnv,
) -> Result<String, CommandError> {
    let mut shell = shell(command.text(), env);
    shell
        .envs(command.variables.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = reaper::spawn(&mut shell).map_err(|source| CommandError::Spawn {
        command: command.to_string(),
        source: source.into(),
    })?;
    let mut group = RunningGroup {
        leader: child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
        command,
    };
    let output = Arc::new(Mutex::new(Output::default()));
    let (stdout, stderr) = child.take_output();
    let readers = tokio::spawn(collect_output(stdout, stderr, Arc::clone(&output)));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Err(_) => {
            group.kill();
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
    // What the command left running in the background (a service started with `&`) is not
    // reconfd's to stop.
    group.exited();
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

/// The process group of a running command. Dropped before the command exited, it kills the
/// group: a run that is given up (reconfd interrupted in `--onetime`) must not leave the
/// command, or what it started, running on without reconfd.
struct RunningGroup<'a> {
    /// The shell, whose process ID is the group's; `None` once the group is not to be killed.
    leader: Option<Pid>,
    command: &'a ShellCommand,
}

impl RunningGroup<'_> {
    /// Kills the whole group now.
    fn kill(&mut self) {
        if let Some(leader) = self.leader.take() {
            // The group may already be gone; there is nothing more to do then.
            let _ = killpg(leader, Signal::SIGKILL);
        }
    }

    /// The shell has exited: the group is left as it is.
    fn exited(&mut self) {
        self.leader = None;
    }
}

impl Drop for RunningGroup<'_> {
    fn drop(&mut self) {
        if self.leader.is_some() {
            tracing::warn!(
                "`{}` was still running: killed with its process group",
                self.command
            );
            self.kill();
        }
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
    // On the heap: a buffer in the future itself would make the spawned task as large, and
    // tokio moves a task's future and result around several times per command.
    let mut buffer = Vec::with_capacity(4096);
    // Reading goes on past the limit: a command blocked on a full pipe would never exit.
    while let Ok(read) = reader.read_buf(&mut buffer).await {
        if read == 0 {
            break;
        }
        let mut output = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = OUTPUT_LIMIT.saturating_sub(output.bytes.len());
        let kept = read.min(room);
        output.bytes.extend_from_slice(&buffer[..kept]);
        output.cut |= kept < read;
        buffer.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[tokio::test]
    async fn success_returns_output() {
        let output = run(
            &ShellCommand::new("echo hello; echo oops >&2"),
            Duration::from_secs(5),
            CommandEnv::default(),
        )
        .await
        .expect("succeeds");
        assert!(
            output.contains("hello") && output.contains("oops"),
            "{output}"
        );
    }

    #[tokio::test]
    async fn failure_carries_status_and_output() {
        let err = run(
            &ShellCommand::new("echo 'bad line 3' >&2; exit 3"),
            Duration::from_secs(5),
            CommandEnv::default(),
        )
        .await
        .expect_err("fails");
        let message = err.to_string();
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("bad line 3"), "{message}");
    }

    #[tokio::test]
    async fn multi_line_output_is_one_line_so_the_log_record_stays_one() {
        let err = run(
            &ShellCommand::new("printf 'first\\nsecond\\n'; exit 1"),
            Duration::from_secs(5),
            CommandEnv::default(),
        )
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
        let err = run(
            &ShellCommand::new(&command),
            Duration::from_millis(200),
            CommandEnv::default(),
        )
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
        let output = run(
            &ShellCommand::new(&command),
            Duration::from_secs(10),
            CommandEnv::default(),
        )
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
        let output = run(
            &ShellCommand::new("yes | head -c 1048576"),
            Duration::from_secs(10),
            CommandEnv::default(),
        )
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
        let output = run(
            &ShellCommand::new("yes | head -c 65536"),
            Duration::from_secs(10),
            CommandEnv::default(),
        )
        .await
        .expect("succeeds");
        assert!(!output.contains("output cut"));
        assert_eq!(output.len(), 64 * 1024 - 1, "the final newline is trimmed");
    }

    #[tokio::test]
    async fn output_read_in_several_pieces_is_kept_in_order() {
        // About 14 KB of distinct lines: more than one read of the pipe.
        let output = run(
            &ShellCommand::new("seq 1 3000"),
            Duration::from_secs(10),
            CommandEnv::default(),
        )
        .await
        .expect("succeeds");
        let expected: Vec<String> = (1..=3000).map(|n| n.to_string()).collect();
        assert_eq!(output, expected.join("\n"));
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
        let output = run(
            &ShellCommand::new(&command),
            Duration::from_secs(10),
            CommandEnv::default(),
        )
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

    /// Runs `command` with `{{.src}}` bound to `value`; returns what the command wrote to a
    /// file (so that output is compared byte for byte) and whether anything in the value ran.
    async fn sees(command: &str, value: &OsStr) -> (Vec<u8>, bool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let seen = dir.path().join("seen");
        let command = format!("{command} > {}", seen.display());
        let bound = ShellCommand::new(&command).bind(Placeholder::Src, value);
        run(&bound, Duration::from_secs(10), CommandEnv::default())
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        let ran = std::fs::read_dir(dir.path()).expect("dir").count() > 1;
        (std::fs::read(&seen).expect("seen"), ran)
    }

    #[tokio::test]
    async fn a_placeholder_gives_the_exact_value_inside_any_quotes_and_runs_none_of_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pwned = dir.path().join("pwned");
        let nasty = format!(
            "/my dir/it's \"x\" $HOME $(touch {p}) `touch {p}` ${{IFS}}\\n *; touch {p}",
            p = pwned.display()
        );
        let not_utf8 = OsStr::from_bytes(b"/a\xff b");
        for value in [OsStr::new("/etc/app.conf"), OsStr::new(&nasty), not_utf8] {
            for command in [
                "printf '%s|' {{.src}}",
                "printf '%s|' {{ .src }}",
                "printf '%s|' \"{{src}}\"",
                "printf '%s|' '{{ src }}'",
                "printf '%s|' \"at: {{.src}}.\" 'at: {{.src}}.'",
                "printf '%s|' \"$(printf '%s' {{.src}})\" \"$(echo \"$(cat {{.src}} 2>/dev/null)\")\"",
                "printf '%s|' `printf '%s' \"{{.src}}\"` 2>/dev/null; printf '%s|' {{.src}}",
                "f() { printf '%s|' \"$1\"; }; f {{.src}}",
                "printf '%s|' {{.src}}{{.other}}",
            ] {
                let (seen, ran) = sees(command, value).await;
                assert!(!ran && !pwned.exists(), "{command}: ran part of {value:?}");
                let value = value.as_bytes();
                let expected: Vec<u8> = match command {
                    c if c.contains("at: ") => [b"at: ", value, b".|at: ", value, b".|"].concat(),
                    c if c.contains("$(cat") => [value, b"||"].concat(),
                    c if c.contains('`') => {
                        // The backquoted word splits at spaces; only the second word counts.
                        let plain = [value, b"|"].concat();
                        assert!(seen.ends_with(&plain), "{command}: {seen:?}");
                        continue;
                    }
                    c if c.contains("{{.other}}") => [value, b"{{.other}}|"].concat(),
                    _ => [value, b"|"].concat(),
                };
                assert_eq!(
                    String::from_utf8_lossy(&seen),
                    String::from_utf8_lossy(&expected),
                    "{command}"
                );
            }
        }
    }

    #[test]
    fn only_the_named_placeholder_is_bound_and_the_path_never_enters_the_text() {
        let command = ShellCommand::new("check {{.src}} {{ dest }} {{ other }} {{.src")
            .bind(Placeholder::Src, OsStr::new("/a b/$(x)"));
        assert_eq!(
            command.text(),
            "check \"${RECONFD_SRC}\" {{ dest }} {{ other }} {{.src"
        );
        assert_eq!(
            command.variables,
            [("RECONFD_SRC", OsString::from("/a b/$(x)"))]
        );
        let plain =
            ShellCommand::new("systemctl reload app").bind(Placeholder::Dest, OsStr::new("/x"));
        assert_eq!(
            plain,
            ShellCommand::new("systemctl reload app"),
            "nothing to bind"
        );
        let a = ShellCommand::new("reload {{.dest}}").bind(Placeholder::Dest, OsStr::new("/a"));
        let b = ShellCommand::new("reload {{.dest}}").bind(Placeholder::Dest, OsStr::new("/b"));
        assert_ne!(a, b, "one reload per destination named");
    }

    #[test]
    fn every_secret_setting_is_withheld_and_documented() {
        use clap::CommandFactory;
        let secret_settings: Vec<String> = crate::cli::Cli::command()
            .get_arguments()
            .filter(|arg| arg.is_hide_env_values_set())
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        assert!(secret_settings.len() >= 3, "{secret_settings:?}");
        for name in &secret_settings {
            assert!(
                CREDENTIALS.contains(&name.as_str()),
                "{name} is not withheld"
            );
        }
        let docs = include_str!("../docs/resources.md");
        for name in CREDENTIALS {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not documented"
            );
        }
    }

    #[test]
    fn only_the_named_credentials_are_passed_on() {
        let env = CommandEnv::passing(&["VAULT_TOKEN".to_string(), "HOME".to_string()]);
        let all = u64::MAX;
        let withheld: Vec<&str> = env.withheld_among(all).collect();
        assert!(!withheld.contains(&"VAULT_TOKEN"), "{withheld:?}");
        assert!(withheld.contains(&"RECONFD_PASSWORD"), "{withheld:?}");
        assert_eq!(withheld.len(), CREDENTIALS.len() - 1);
        assert_eq!(
            CommandEnv::default().withheld_among(all).count(),
            CREDENTIALS.len()
        );
    }

    #[test]
    fn credentials_absent_from_the_environment_need_no_removing() {
        let password = CREDENTIALS
            .iter()
            .position(|name| *name == "RECONFD_PASSWORD")
            .unwrap();
        let withheld: Vec<&str> = CommandEnv::default()
            .withheld_among(1 << password)
            .collect();
        assert_eq!(withheld, ["RECONFD_PASSWORD"]);
    }
}
