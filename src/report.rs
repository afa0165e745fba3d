//! Telling what a sync did: the log line of a failure, and the record in [`Status`] behind
//! `/status` and `/metrics`; and telling once, not on every attempt, that a store is down (or
//! refuses) and once that it is back, and that a resource is held back by its `min_keys` and
//! once that it is not.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::controller::TooFewKeys;
use crate::controller::retry::Pace;
use crate::reconcile::{Options, Outcome, ReconcileError, Rollback};
use crate::resource::Resource;
use crate::status::{Status, SyncReport, SyncResult};
use crate::store::{StoreError, StoreErrorKind};

/// Why a resource did not sync.
pub(crate) enum Failure<'a> {
    /// Its template could not be rendered.
    Render(&'a crate::controller::RenderFailure),
    /// Its destination could not be brought in line.
    Reconcile(ReconcileError),
    /// The store shows it fewer keys than its `min_keys`.
    TooFewKeys(TooFewKeys),
}

/// Logs a failed sync and records every sync of `resource` in `status`. `next_attempt` is
/// when a failure that may pass is tried again.
pub(crate) fn synced(
    status: &Status,
    resource: &Resource,
    rendered: &crate::controller::Rendered,
    outcome: &Result<Outcome, Failure<'_>>,
    options: Options,
    next_attempt: Option<Instant>,
) {
    let (result, error) = match outcome {
        Ok(Outcome::InSync) => (SyncResult::InSync, None),
        // The reload completes the update an earlier attempt swapped in.
        Ok(Outcome::Updated | Outcome::Reloaded) => (SyncResult::Updated, None),
        Ok(Outcome::WouldUpdate) => (SyncResult::WouldUpdate, None),
        Err(Failure::Render(failure)) => (SyncResult::RenderFailed, Some(failure.message.clone())),
        Err(Failure::Reconcile(e)) => (
            sync_result(e),
            Some(format!("{}: {e}", resource.file.display())),
        ),
        Err(Failure::TooFewKeys(too_few)) => {
            (SyncResult::Guarded, Some(held_back(resource, *too_few)))
        }
    };
    // A held-back resource is logged by `Guards`, once, not on every round.
    if let (Some(message), false) = (&error, result == SyncResult::Guarded) {
        match next_attempt {
            Some(at) => tracing::error!(
                "{message} (trying again in {})",
                humantime::format_duration(seconds(
                    at.saturating_duration_since(crate::controller::now())
                ))
            ),
            None => tracing::error!("{message}"),
        }
    }
    // A reload owed by an earlier sync replaces nothing and runs no check.
    let wrote = match outcome {
        Ok(Outcome::Updated) => true,
        Err(Failure::Reconcile(e)) => e.swapped(),
        _ => false,
    };
    let commands_ran = !options.sync_only;
    status.synced(&SyncReport {
        resource: &resource.file,
        result,
        error: error.as_deref(),
        render_time: rendered.time,
        wrote,
        checked: commands_ran && wrote && resource.check_cmd.is_some(),
        reloaded: commands_ran && resource.reload_cmd.is_some(),
        // A checksum of a short secret gives it away.
        // The file on disk: the rendered one when it is in place, also after a swap whose
        // reload failed.
        md5: match (&rendered.content, resource.secret || options.noop) {
            (Ok(_), false)
                if wrote || matches!(result, SyncResult::InSync | SyncResult::Updated) =>
            {
                rendered.md5.clone()
            }
            _ => None,
        },
        rolled_back: match outcome {
            Err(Failure::Reconcile(ReconcileError::RolledBack { rollback, .. })) => {
                match rollback {
                    Rollback::Reloaded => Some(Some(true)),
                    Rollback::ReloadFailed(_) => Some(Some(false)),
                    Rollback::NotRestored(_) => None,
                }
            }
            _ => None,
        },
        next_attempt: next_attempt.map(|at| {
            std::time::SystemTime::now() + at.saturating_duration_since(crate::controller::now())
        }),
    });
}

/// Why `resource` is held back by its `min_keys`.
fn held_back(resource: &Resource, too_few: TooFewKeys) -> String {
    format!(
        "{}: {} {} under {}, fewer than min_keys = {}: {} is left as it is",
        resource.file.display(),
        too_few.found,
        crate::plan::plural(too_few.found, "key", "keys"),
        resource.keys.join(", "),
        too_few.min,
        resource.dest.display()
    )
}

/// Logs once when a resource comes to be held back by its `min_keys` and once when it no
/// longer is, however many rounds it is held back in between.
#[derive(Default)]
pub(crate) struct Guards {
    /// The indexes of the resources held back.
    held: BTreeSet<usize>,
}

impl Guards {
    /// Records whether resource `index` was held back in its latest round (`too_few`).
    pub(crate) fn record(
        &mut self,
        index: usize,
        resource: &Resource,
        too_few: Option<TooFewKeys>,
    ) {
        match too_few {
            Some(too_few) if self.held.insert(index) => {
                tracing::warn!("{}", held_back(resource, too_few));
            }
            None if self.held.remove(&index) => {
                let min = resource.min_keys.unwrap_or_default();
                tracing::info!(
                    "{}: at least min_keys = {min} {} again; {} is synced again",
                    resource.file.display(),
                    crate::plan::plural(min, "key", "keys"),
                    resource.dest.display()
                );
            }
            _ => {}
        }
    }
}

/// A duration rounded to whole seconds (at least one), for log lines.
fn seconds(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(duration.as_secs_f64().ceil().max(1.0) as u64)
}

/// How a failed reconcile shows in metrics and the status page.
fn sync_result(error: &ReconcileError) -> SyncResult {
    match error {
        ReconcileError::Check { .. } => SyncResult::CheckFailed,
        ReconcileError::Reload { .. } | ReconcileError::RolledBack { .. } => {
            SyncResult::ReloadFailed
        }
        ReconcileError::Io { .. } | ReconcileError::Format { .. } | ReconcileError::Held { .. } => {
            SyncResult::WriteFailed
        }
    }
}

/// What a store that failed with `kind` does, for log lines that begin with the store's name:
/// "etcd store refused the credentials: ...".
pub(crate) fn failing(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Unreachable => "unavailable",
        StoreErrorKind::Auth => "refused the credentials",
        StoreErrorKind::Rejected => "refused the request",
        StoreErrorKind::Invalid => "cannot work with these settings",
        StoreErrorKind::File => "cannot read a data file",
    }
}

/// What a store that had failed with `kind` does once it answers.
fn recovered(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Unreachable => "available again",
        StoreErrorKind::Auth => "accepts the credentials again",
        StoreErrorKind::Rejected => "answers the request again",
        StoreErrorKind::Invalid => "works again",
        StoreErrorKind::File => "reads its data files again",
    }
}

/// Logs a store outage once when it begins and once when it ends, however many attempts fail
/// in between; and once more when its failures change kind on the way (a store that comes
/// back and refuses the credentials), since that changes what to do about it and how fast the
/// store is asked again.
pub(crate) struct Outage {
    since: Option<Instant>,
    /// The kind of the outage's latest failure.
    kind: Option<StoreErrorKind>,
    /// The store instance.
    instance: String,
    /// Where store failures are counted.
    status: Status,
}

impl Outage {
    /// No outage yet of `instance`.
    pub(crate) fn new(instance: String, status: Status) -> Outage {
        Outage {
            since: None,
            kind: None,
            instance,
            status,
        }
    }

    /// Records a failed attempt to reach the store.
    pub(crate) fn began(&mut self, store: &str, error: &StoreError) {
        self.status
            .store_failed(&self.instance, store, &error.to_string());
        let kind = error.kind();
        if self.kind == Some(kind) {
            tracing::debug!("{store} store still failing ({kind}): {error}");
            return;
        }
        tracing::error!(
            "{store} store {}: {error}; keeping the current files and retrying at least every {}",
            failing(kind),
            humantime::format_duration(Pace::of(kind).cap())
        );
        self.since.get_or_insert_with(crate::controller::now);
        self.kind = Some(kind);
    }

    /// The kind of the failures of the outage going on; `None` when the store answered last.
    pub(crate) fn kind(&self) -> Option<StoreErrorKind> {
        self.kind
    }

    /// Records that the store answered.
    pub(crate) fn ended(&mut self) {
        if let (Some(since), Some(kind)) = (self.since.take(), self.kind.take()) {
            // Counted from the first failure seen: a store that hung is seen failing only
            // once a probe gives up on it.
            tracing::info!(
                "{} store {}, {:.1?} after its first failed attempt",
                self.instance,
                recovered(kind),
                crate::controller::now() - since
            );
        }
    }
}
