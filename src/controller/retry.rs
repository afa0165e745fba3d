//! Trying again: capped exponential backoff with jitter, for reaching a store and for
//! resources whose sync failed for a reason that may pass.
//!
//! The jitter spreads a fleet's attempts: hosts that lost their store at the same moment do
//! not come back to it in lockstep. How fast a store is asked again depends on how it failed
//! ([`Pace`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Shutdown, now, sleep_until};
use crate::store::StoreErrorKind;

/// First wait after a store failure that passes on its own.
pub(crate) const STORE_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between attempts to reach a store: a store that answers again (a restarted
/// or restored etcd) is read and watched again within about a second.
pub(crate) const STORE_CAP: Duration = Duration::from_secs(1);
/// First wait after a store refused the credentials, the request or the settings.
pub(crate) const REFUSED_FIRST: Duration = Duration::from_secs(5);
/// Longest wait between attempts at a store that refuses. Nothing changes until someone
/// mends the credentials, the permissions, the store or the settings; meanwhile a fleet that
/// asked every second would fill the store's logs and count against lockouts of failed
/// logins. A mended store is read again within a minute.
pub(crate) const REFUSED_CAP: Duration = Duration::from_secs(60);

/// How fast a store is asked again after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// From [`STORE_FIRST`] up to [`STORE_CAP`]: a store out of reach, or a data file being
    /// edited, is likely back within seconds, and is read as soon as it is.
    Reconnect,
    /// From [`REFUSED_FIRST`] up to [`REFUSED_CAP`]: credentials, permissions, requests or
    /// settings the store refuses go on being refused until someone acts.
    Refused,
}

impl Pace {
    /// The pace for a failure of `kind`.
    pub(crate) fn of(kind: StoreErrorKind) -> Pace {
        match kind {
            StoreErrorKind::Unreachable | StoreErrorKind::File => Pace::Reconnect,
            StoreErrorKind::Auth | StoreErrorKind::Rejected | StoreErrorKind::Invalid => {
                Pace::Refused
            }
        }
    }

    /// The longest wait between attempts at this pace.
    pub(crate) fn cap(self) -> Duration {
        match self {
            Pace::Reconnect => STORE_CAP,
            Pace::Refused => REFUSED_CAP,
        }
    }
}

/// The waits between attempts to reach a store: one backoff per [`Pace`], each going on from
/// where it was when the store's failures change kind.
#[derive(Clone, Debug)]
pub(crate) struct StoreBackoff {
    reconnect: Backoff,
    refused: Backoff,
}

impl StoreBackoff {
    /// Both backoffs at their first delay.
    pub(crate) fn new() -> StoreBackoff {
        StoreBackoff {
            reconnect: Backoff::new(STORE_FIRST, STORE_CAP),
            refused: Backoff::new(REFUSED_FIRST, REFUSED_CAP),
        }
    }

    /// The delay before the next attempt after a failure of `kind`; `None` is a watch that
    /// ended at once without saying why, tried again at the reconnect pace.
    pub(crate) fn next_delay(&mut self, kind: Option<StoreErrorKind>) -> Duration {
        match kind.map_or(Pace::Reconnect, Pace::of) {
            Pace::Reconnect => self.reconnect.next_delay(),
            Pace::Refused => self.refused.next_delay(),
        }
    }

    /// Starts both over from their first delay, after the store answered.
    pub(crate) fn reset(&mut self) {
        self.reconnect.reset();
        self.refused.reset();
    }

    /// Waits for the next attempt after a failure of `kind`; false when shutdown came first.
    pub(crate) async fn wait(
        &mut self,
        kind: Option<StoreErrorKind>,
        shutdown: &mut Shutdown,
    ) -> bool {
        let due = now() + self.next_delay(kind);
        tokio::select! {
            () = sleep_until(Some(due)) => true,
            () = shutdown.wait() => false,
        }
    }
}
/// First wait before a failed resource is synced again.
pub(crate) const RESOURCE_FIRST: Duration = Duration::from_secs(1);
/// Longest wait before a failed resource is synced again.
pub(crate) const RESOURCE_CAP: Duration = Duration::from_secs(30);

/// Capped exponential backoff with "equal jitter": the n-th delay is drawn between half and
/// all of `first * 2^n`, capped at `cap`.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    attempts: u32,
}

impl Backoff {
    /// A backoff whose first delay is about `first` and that never waits longer than `cap`.
    pub(crate) fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            attempts: 0,
        }
    }

    /// The backoff between attempts at the reconnect pace, such as restarts of a loop that
    /// failed unexpectedly.
    pub(crate) fn store() -> Backoff {
        Backoff::new(STORE_FIRST, STORE_CAP)
    }

    /// The delay before the next attempt; each call doubles the next one, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let doubled = self
            .first
            .checked_mul(1 << self.attempts.min(30))
            .unwrap_or(self.cap)
            .min(self.cap);
        self.attempts = self.attempts.saturating_add(1);
        let half = doubled / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Starts over from the first delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Waits for the next attempt; false when shutdown came first.
    pub(crate) async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        let due = now() + self.next_delay();
        tokio::select! {
            () = sleep_until(Some(due)) => true,
            () = shutdown.wait() => false,
        }
    }
}

/// The resources whose last sync failed for a reason that may pass, and when each is tried
/// again, independently of new changes.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    scheduled: BTreeMap<usize, (Backoff, Instant)>,
}

impl Retries {
    /// Schedules resource `index` for another attempt after a failure that may pass, one
    /// backoff step later than its previous attempt. Returns when.
    pub(crate) fn failed(&mut self, index: usize, at: Instant) -> Instant {
        let (backoff, due) = self
            .scheduled
            .entry(index)
            .or_insert_with(|| (Backoff::new(RESOURCE_FIRST, RESOURCE_CAP), at));
        *due = at + backoff.next_delay();
        *due
    }

    /// Forgets resource `index`: it synced, or failed in a way that only new data or a
    /// SIGHUP can mend.
    pub(crate) fn settled(&mut self, index: usize) {
        self.scheduled.remove(&index);
    }

    /// True when resource `index` waits for another attempt.
    pub(crate) fn is_scheduled(&self, index: usize) -> bool {
        self.scheduled.contains_key(&index)
    }

    /// When the next attempt is due, if any is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.scheduled.values().map(|(_, due)| *due).min()
    }

    /// Marks resource `index` as tried now, before its time (with another resource that
    /// shares its reload command), as [`Retries::due`] marks those it returns.
    pub(crate) fn attempting(&mut self, index: usize, now: Instant) {
        if let Some((_, at)) = self.scheduled.get_mut(&index) {
            *at = far_future(now);
        }
    }

    /// The resources due at `now`. They stay scheduled, so that a further failure waits
    /// longer; a success forgets them.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<usize> {
        let due: Vec<usize> = self
            .scheduled
            .iter()
            .filter(|(_, (_, due))| *due <= now)
            .map(|(index, _)| *index)
            .collect();
        for index in &due {
            // Not due again until its outcome reschedules or forgets it.
            if let Some((_, at)) = self.scheduled.get_mut(index) {
                *at = far_future(now);
            }
        }
        due
    }
}

/// A time no retry reaches before its sync reports back.
fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bounds = [100, 200, 400, 800, 1000, 1000];
        for bound in bounds {
            let delay = backoff.next_delay();
            let bound = Duration::from_millis(bound);
            assert!(
                delay >= bound / 2 && delay <= bound,
                "{delay:?} vs {bound:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn refusals_are_asked_again_slowly_and_each_pace_keeps_its_own_backoff() {
        let mut backoff = StoreBackoff::new();
        let auth = Some(StoreErrorKind::Auth);
        let unreachable = Some(StoreErrorKind::Unreachable);
        let first = backoff.next_delay(auth);
        assert!(
            first >= REFUSED_FIRST / 2 && first <= REFUSED_FIRST,
            "{first:?}"
        );
        assert!(backoff.next_delay(unreachable) <= STORE_FIRST);
        assert!(backoff.next_delay(None) <= STORE_FIRST * 2);
        let second = backoff.next_delay(auth);
        assert!(second >= REFUSED_FIRST, "{second:?}");
        for _ in 0..10 {
            assert!(backoff.next_delay(auth) <= REFUSED_CAP);
            assert!(backoff.next_delay(unreachable) <= STORE_CAP);
        }
        backoff.reset();
        assert!(backoff.next_delay(auth) <= REFUSED_FIRST);
        for (kind, pace) in [
            (StoreErrorKind::Unreachable, Pace::Reconnect),
            (StoreErrorKind::File, Pace::Reconnect),
            (StoreErrorKind::Auth, Pace::Refused),
            (StoreErrorKind::Rejected, Pace::Refused),
            (StoreErrorKind::Invalid, Pace::Refused),
        ] {
            assert_eq!(Pace::of(kind), pace, "{kind}");
        }
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(8), Duration::from_secs(30)).next_delay())
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn a_retry_is_due_once_until_its_outcome_is_known() {
        let start = Instant::now();
        let mut retries = Retries::default();
        let due = retries.failed(3, start);
        assert_eq!(retries.next_due(), Some(due));
        assert!(retries.due(start).is_empty());
        assert_eq!(retries.due(due), [3]);
        assert!(
            retries.due(due).is_empty(),
            "not due again before it reports"
        );
        let later = retries.failed(3, due);
        assert!(later - due >= RESOURCE_FIRST, "the second delay is longer");
        retries.settled(3);
        assert_eq!(retries.next_due(), None);
    }
}
