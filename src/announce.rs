//! Announcing: keeping a key in the store while reconfd lives and a check passes, bound to a
//! TTL so that the store removes it when reconfd or its host dies (the sidekick of the
//! HAProxy+etcd setups, done with the store's own leases: [`Lease`]).
//!
//! Each announcement runs as one task: its check runs on a task of its own (a command with
//! a time limit, never awaited by the store's requests), and every store request has the TTL
//! as its time limit, so neither a slow check nor a store out of reach holds the other up.
//! The key exists while the check passes (or there is none); a failing check withdraws it at
//! once, a passing one registers it again. A store that fails is asked again about once a
//! second and logged once; when it answers, the key is renewed, or registered again where
//! its lifetime ran out meanwhile. Stopping withdraws the key.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::AnnounceFields;
use crate::command::{self, CommandEnv, ShellCommand};
use crate::controller::retry::{Pace, REFUSED_CAP, StoreBackoff};
use crate::limits;
use crate::status::{AnnouncementState, Status};
use crate::store::backend::{self, Backend};
use crate::store::lease::{Announcement, Lease};
use crate::store::{StoreError, StoreErrorKind};

/// The check interval when none is given.
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The shortest check interval: a check is a process, and one every 100 ms is plenty.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest TTL: etcd and Consul count in seconds.
const MIN_TTL: Duration = Duration::from_secs(1);

/// The longest pause before a failed store request is sent again.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// `duration` in whole milliseconds, for messages: a third of 2 s is 666ms, not 666ms 666us
/// 666ns.
fn whole_milliseconds(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// One announcement, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The key, its value and its TTL.
    pub announcement: Announcement,
    /// The health check, if any.
    pub check: Option<String>,
    /// Time between checks, and each check's time limit.
    pub check_interval: Duration,
}

impl Announce {
    /// Checks `fields`; a refusal names the field as `name` writes it (`--ttl` for a flag,
    /// `ttl` for a settings-file key).
    pub fn read(
        fields: &AnnounceFields,
        name: impl Fn(&str) -> String,
    ) -> Result<Announce, String> {
        if !fields.key.starts_with('/') || fields.key.len() < 2 {
            return Err(format!(
                "{} {:?}: an absolute key such as /services/crate/h1",
                name("key"),
                fields.key
            ));
        }
        let duration = |field: &str, text: &str, min: Duration| {
            let duration = limits::ANNOUNCE_DURATION
                .parse(text)
                .map_err(|problem| format!("{} {text:?}: {problem}", name(field)))?;
            if duration < min {
                return Err(format!(
                    "{} {text:?}: at least {}",
                    name(field),
                    humantime::format_duration(min)
                ));
            }
            Ok(duration)
        };
        let ttl = duration("ttl", &fields.ttl, MIN_TTL)?;
        let check_interval = match &fields.check_interval {
            Some(text) => duration("check-interval", text, MIN_CHECK_INTERVAL)?,
            None => DEFAULT_CHECK_INTERVAL,
        };
        if fields
            .check
            .as_deref()
            .is_some_and(|check| check.trim().is_empty())
        {
            return Err(format!("{}: an empty command", name("check")));
        }
        Ok(Announce {
            announcement: Announcement {
                key: fields.key.clone(),
                value: fields.value.clone(),
                ttl,
            },
            check: fields.check.clone(),
            check_interval,
        })
    }
}

/// The running announcements; dropping them without [`Announcers::stop`] leaves their keys to
/// their TTL.
pub struct Announcers {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Announcers {
    /// Opens a lease on `backend` for each of `announces` and starts announcing. Fails,
    /// naming the key, when the store cannot announce or its settings cannot work.
    pub fn start(
        backend: &Backend,
        announces: &[Announce],
        command_env: CommandEnv,
        status: &Status,
    ) -> Result<Announcers, String> {
        let instance = backend.instance();
        let mut leases = Vec::new();
        for announce in announces {
            let lease = backend::open_lease(backend, announce.announcement.clone())
                .map_err(|e| format!("announcing {}: {e}", announce.announcement.key))?;
            leases.push((announce.clone(), lease));
        }
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (announce, _) in &leases {
            // Recorded before any task runs, so that `/ready` waits for every announcement's
            // first check and first answer from the store.
            status.announcement(
                &announce.announcement.key,
                &instance,
                AnnouncementState::Waiting,
                None,
            );
        }
        for (announce, lease) in leases {
            let announcer = Announcer {
                announce,
                lease,
                store: backend.kind(),
                instance: instance.clone(),
                status: status.clone(),
                command_env,
            };
            tasks.spawn(announcer.run(stopped.clone()));
        }
        Ok(Announcers { tasks, stop })
    }

    /// Withdraws every key and returns once each is withdrawn (or its store failed to answer
    /// within the TTL, which then removes it).
    pub async fn stop(mut self) {
        // The announcers hold a receiver each until they end.
        let _ = self.stop.send(true);
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(e) = ended {
                tracing::error!("an announcement ended abnormally: {e}");
            }
        }
    }
}

/// What the announcer asks of its lease.
#[derive(Clone, Copy)]
enum Request {
    Register,
    Refresh,
    Withdraw,
}

/// One announcement's loop and what it reports to.
struct Announcer {
    announce: Announce,
    lease: Box<dyn Lease>,
    store: &'static str,
    instance: String,
    status: Status,
    command_env: CommandEnv,
}

impl Announcer {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let key = self.announce.announcement.key.clone();
        let ttl = self.announce.announcement.ttl;
        let refresh_every = ttl / 3;
        let retry_every = refresh_every.min(MAX_RETRY);
        // Without a check the key is always wanted; with one, only once it has passed.
        let (passing, mut checked) = watch::channel(self.announce.check.is_none());
        // Without a check, the sender is kept here, so that the verdict never changes.
        let (checker, _unchecked) = match self.announce.check.clone() {
            Some(check) => (
                Some(tokio::spawn(run_check(
                    key.clone(),
                    ShellCommand::new(&check),
                    self.announce.check_interval,
                    self.command_env,
                    passing,
                ))),
                None,
            ),
            None => (None, Some(passing)),
        };
        let mut held = false;
        let mut outage: Option<StoreErrorKind> = None;
        let mut refusals = StoreBackoff::new();
        let mut next = Instant::now();
        loop {
            let wanted = *checked.borrow_and_update();
            if !wanted && held {
                held = false;
                match self.request(Request::Withdraw).await {
                    Ok(_) => tracing::info!("{key}: check failing; withdrawn"),
                    Err(e) => tracing::warn!(
                        "{key}: check failing; the store did not take the key away ({e}); it \
                         goes when its TTL of {} runs out",
                        humantime::format_duration(ttl)
                    ),
                }
                self.report(AnnouncementState::CheckFailing, None);
            }
            tokio::select! {
                _ = stopped.changed() => break,
                changed = checked.changed() => {
                    if changed.is_err() {
                        // The check's task ended (it panicked): without a verdict, the key
                        // is withdrawn rather than announced unchecked.
                        tracing::error!("{key}: the check stopped running");
                        break;
                    }
                    if !*checked.borrow() {
                        self.report(AnnouncementState::CheckFailing, None);
                    }
                }
                () = tokio::time::sleep_until(next), if wanted => {
                    let answer = if held {
                        self.request(Request::Refresh).await
                    } else {
                        self.request(Request::Register).await
                    };
                    match answer {
                        Ok(true) => {
                            if let Some(kind) = outage.take() {
                                self.status.store_answered(&self.instance, self.store, None);
                                tracing::info!(
                                    "{key}: the {} store answers again ({kind} before); \
                                     announced",
                                    self.store
                                );
                            } else if !held {
                                tracing::info!(
                                    "{key} = {:?} announced (TTL {})",
                                    self.announce.announcement.value,
                                    humantime::format_duration(ttl)
                                );
                            }
                            held = true;
                            refusals.reset();
                            next = Instant::now() + refresh_every;
                            self.report(AnnouncementState::Up, None);
                        }
                        Ok(false) => {
                            tracing::warn!(
                                "{key}: no longer in the store (its lifetime ran out or the key \
                                 was removed); registering it again"
                            );
                            held = false;
                            next = Instant::now();
                        }
                        Err(e) => {
                            // A store out of reach is asked again soon, so that the key is
                            // back before its TTL runs out; one that refuses (credentials,
                            // a client certificate, permissions) goes on refusing until
                            // someone acts, and is asked again slowly, as the daemon does.
                            let refused = Pace::of(e.kind()) == Pace::Refused;
                            let wait = if refused {
                                refusals.next_delay(Some(e.kind()))
                            } else {
                                retry_every
                            };
                            if outage != Some(e.kind()) {
                                let pace = if refused {
                                    format!(
                                        "trying again in {} and less often while it refuses, \
                                         at least every {}",
                                        humantime::format_duration(whole_milliseconds(wait)),
                                        humantime::format_duration(REFUSED_CAP)
                                    )
                                } else {
                                    format!(
                                        "trying again every {}",
                                        humantime::format_duration(whole_milliseconds(wait))
                                    )
                                };
                                tracing::error!(
                                    "{key}: the {} store {}: {e}; {pace}",
                                    self.store,
                                    crate::report::failing(e.kind()),
                                );
                                outage = Some(e.kind());
                            }
                            self.status.store_failed(&self.instance, self.store, &e.to_string());
                            next = Instant::now() + wait;
                            self.report(AnnouncementState::StoreFailing, Some(e.to_string()));
                        }
                    }
                }
            }
        }
        if let Some(checker) = checker {
            checker.abort();
        }
        // Asked also when not held: a registration whose answer was lost may have put it.
        match self.request(Request::Withdraw).await {
            Ok(_) if held => tracing::info!("{key}: withdrawn"),
            Ok(_) => tracing::debug!("{key}: was not announced; nothing to withdraw"),
            Err(e) => tracing::warn!(
                "{key}: the store did not take the key away ({e}); it goes when its TTL of {} \
                 runs out",
                humantime::format_duration(ttl)
            ),
        }
        self.report(AnnouncementState::Withdrawn, None);
    }

    /// Sends `request` to the lease, with the TTL as its time limit: an answer that comes
    /// later is of no use, as the key may be gone by then. `Ok(false)` only from a refresh
    /// whose binding is gone.
    async fn request(&mut self, request: Request) -> Result<bool, StoreError> {
        let ttl = self.announce.announcement.ttl;
        let lease = self.lease.as_mut();
        let answer = async {
            match request {
                Request::Register => lease.register().await.map(|()| true),
                Request::Refresh => lease.refresh().await,
                Request::Withdraw => lease.withdraw().await.map(|()| true),
            }
        };
        match tokio::time::timeout(ttl, answer).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::unreachable(format!(
                "{}: no answer within the TTL ({})",
                self.store,
                humantime::format_duration(ttl)
            ))),
        }
    }

    fn report(&self, state: AnnouncementState, error: Option<String>) {
        self.status.announcement(
            &self.announce.announcement.key,
            &self.instance,
            state,
            error.as_deref(),
        );
    }
}

/// Runs `check` every `interval` (each run limited to the interval), and sends whether it
/// passed; logs each change of verdict once.
async fn run_check(
    key: String,
    check: ShellCommand,
    interval: Duration,
    env: CommandEnv,
    passing: watch::Sender<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    loop {
        ticks.tick().await;
        let verdict = command::run(&check, interval, env).await;
        let passed = verdict.is_ok();
        match (&verdict, last) {
            (Err(e), Some(true) | None) => tracing::warn!("{key}: check failed: {e}"),
            (Ok(_), Some(false)) => tracing::info!("{key}: check passes again"),
            _ => {}
        }
        last = Some(passed);
        passing.send_replace(passed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(key: &str, ttl: &str, check_interval: Option<&str>) -> AnnounceFields {
        AnnounceFields {
            key: key.to_string(),
            value: "h1:4300".to_string(),
            ttl: ttl.to_string(),
            check: Some("true".to_string()),
            check_interval: check_interval.map(str::to_string),
        }
    }

    fn flag(field: &str) -> String {
        format!("--{field}")
    }

    #[test]
    fn announcements_are_read_with_defaults_and_limits_named_by_their_origin() {
        let read = Announce::read(&fields("/services/crate/h1", "2s", None), flag).expect("valid");
        assert_eq!(read.announcement.ttl, Duration::from_secs(2));
        assert_eq!(read.check_interval, DEFAULT_CHECK_INTERVAL);
        let error = Announce::read(&fields("/services/crate/h1", "500ms", None), flag)
            .expect_err("too short");
        assert_eq!(error, "--ttl \"500ms\": at least 1s");
        let error =
            Announce::read(&fields("/services/crate/h1", "2d", None), flag).expect_err("too long");
        assert_eq!(error, "--ttl \"2d\": at most 24h");
        let error = Announce::read(&fields("/services/crate/h1", "2s", Some("1ms")), |field| {
            format!("[[announce]] `{field}` =")
        })
        .expect_err("too often");
        assert_eq!(
            error,
            "[[announce]] `check-interval` = \"1ms\": at least 100ms"
        );
        let error =
            Announce::read(&fields("services/h1", "2s", None), flag).expect_err("relative key");
        assert!(error.starts_with("--key \"services/h1\""), "{error}");
    }
}
