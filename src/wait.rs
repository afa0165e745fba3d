//! Waiting for data to settle before rendering, with consul-template's `wait` semantics: a
//! resource renders once its keys have been quiet for the minimum, and no later than the
//! maximum after the first change, so a burst of changes gives one render and one reload.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::limits::{self, later};

/// A resource's `wait` (or `--wait`): `"2s:10s"` (minimum, maximum) or `"2s"` (the maximum
/// is then four times the minimum, as in consul-template). Both are at most
/// [`limits::DURATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Wait {
    /// How long the data must have been quiet.
    pub min: Duration,
    /// The longest a render waits after the first change.
    pub max: Duration,
}

impl FromStr for Wait {
    type Err = String;

    /// The error names neither the text nor where it came from, so that each caller can
    /// write them as the user did (`--wait 2s`, `` `wait` = "2s" ``).
    fn from_str(text: &str) -> Result<Wait, String> {
        let (min, max) = match text.split_once(':') {
            Some((min, max)) => {
                let part = |which: &str, part: &str| {
                    limits::DURATION
                        .parse(part)
                        .map_err(|e| format!("{which} {:?}: {e}", part.trim()))
                };
                (part("minimum", min)?, part("maximum", max)?)
            }
            None => {
                let min = limits::DURATION.parse(text)?;
                // Four times a long minimum would pass the limit that the minimum kept to.
                (min, min.saturating_mul(4).min(limits::DURATION.max()))
            }
        };
        if min > max {
            return Err(format!(
                "the minimum ({min:?}) is longer than the maximum ({max:?})"
            ));
        }
        Ok(Wait { min, max })
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            humantime::format_duration(self.min),
            humantime::format_duration(self.max)
        )
    }
}

/// The resources whose data changed and that are waiting for it to settle, by index.
#[derive(Debug, Default)]
pub struct Settling {
    /// For each waiting resource: when its first change came, and when it renders.
    pending: BTreeMap<usize, (Instant, Instant)>,
}

impl Settling {
    /// Records a change at `now` to resource `index`, which waits as `wait` says.
    pub fn changed(&mut self, index: usize, wait: Wait, now: Instant) {
        let first = self.pending.get(&index).map_or(now, |(first, _)| *first);
        // `Wait`'s fields are public, so a wait that skipped the limit check must still not
        // panic the store loop.
        let due = later(now, wait.min).min(later(first, wait.max));
        self.pending.insert(index, (first, due));
    }

    /// When the next waiting resource is due, if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(_, due)| *due).min()
    }

    /// Removes and returns the resources due at `now`.
    pub fn take_due(&mut self, now: Instant) -> BTreeSet<usize> {
        let due: BTreeSet<usize> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(index, _)| *index)
            .collect();
        self.pending.retain(|index, _| !due.contains(index));
        due
    }

    /// Forgets every waiting resource: a full resync has just rendered them all.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_reads_min_and_max_or_min_alone() {
        assert_eq!(
            "2s:10s".parse::<Wait>(),
            Ok(Wait {
                min: Duration::from_secs(2),
                max: Duration::from_secs(10)
            })
        );
        assert_eq!(
            "500ms".parse::<Wait>(),
            Ok(Wait {
                min: Duration::from_millis(500),
                max: Duration::from_secs(2)
            })
        );
        let error = "10s:2s".parse::<Wait>().expect_err("min > max");
        assert!(error.contains("longer than the maximum"), "{error}");
        let error = "soon".parse::<Wait>().expect_err("not a duration");
        assert!(error.starts_with("not a duration"), "{error}");
        let error = "1s:later".parse::<Wait>().expect_err("not a duration");
        assert!(
            error.starts_with("maximum \"later\": not a duration"),
            "{error}"
        );
        assert_eq!(
            "2s:10s".parse::<Wait>().map(|w| w.to_string()),
            Ok("2s:10s".into())
        );
    }

    #[test]
    fn waits_longer_than_the_limit_are_refused_and_the_limit_itself_accepted() {
        assert_eq!(
            "300000000000y".parse::<Wait>(),
            Err("at most 365d".to_string())
        );
        assert_eq!(
            "1s:300000000000y".parse::<Wait>(),
            Err("maximum \"300000000000y\": at most 365d".to_string())
        );
        assert_eq!(
            "366d:1s".parse::<Wait>(),
            Err("minimum \"366d\": at most 365d".to_string())
        );
        let year = limits::DURATION.max();
        assert_eq!(
            "365d:365d".parse::<Wait>(),
            Ok(Wait {
                min: year,
                max: year
            })
        );
        // Four times the minimum stops at the limit.
        assert_eq!(
            "100d".parse::<Wait>(),
            Ok(Wait {
                min: Duration::from_secs(100 * 24 * 60 * 60),
                max: year
            })
        );
    }

    #[test]
    fn a_wait_past_the_end_of_the_clock_does_not_panic() {
        let endless = Wait {
            min: Duration::MAX,
            max: Duration::MAX,
        };
        let now = Instant::now();
        let mut settling = Settling::default();
        settling.changed(1, endless, now);
        settling.changed(1, endless, now);
        assert!(settling.next_due().is_some_and(|due| due > now));
        assert!(settling.take_due(now).is_empty());
    }

    #[test]
    fn quiet_data_renders_after_the_minimum_and_busy_data_by_the_maximum() {
        let wait = Wait {
            min: Duration::from_secs(2),
            max: Duration::from_secs(5),
        };
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut settling = Settling::default();
        settling.changed(1, wait, at(0));
        assert_eq!(settling.next_due(), Some(at(2)));
        // A change every second keeps pushing the minimum, until the maximum.
        for second in 1..=4 {
            settling.changed(1, wait, at(second));
        }
        assert_eq!(settling.next_due(), Some(at(5)));
        assert!(settling.take_due(at(4)).is_empty());
        assert_eq!(settling.take_due(at(5)), BTreeSet::from([1]));
        assert_eq!(settling.next_due(), None);
        // After a render the next change starts a new wait.
        settling.changed(1, wait, at(6));
        assert_eq!(settling.next_due(), Some(at(8)));
        settling.clear();
        assert_eq!(settling.next_due(), None);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary;

    proptest! {
        #[test]
        fn waits_parse_in_order_and_within_the_limit_or_say_why(
            text in prop_oneof![
                (arbitrary::duration(), arbitrary::duration())
                    .prop_map(|(min, max)| format!("{min}:{max}")),
                arbitrary::duration(),
            ]
        ) {
            match text.parse::<Wait>() {
                Ok(wait) => {
                    prop_assert!(wait.min <= wait.max);
                    prop_assert!(wait.max <= limits::DURATION.max());
                }
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }
    }
}
