//! The longest durations reconfd accepts, and clock arithmetic that cannot overflow.
//!
//! Every duration a user gives (flags, environment, the settings file, conf.d) is checked
//! against a [`Limit`] where it is read, so that a slip such as `300000000000y` is an error
//! naming the value instead of a panic the first time the value is added to the clock, which
//! may happen deep inside a running daemon.

use std::time::{Duration, Instant};

/// A longest accepted duration, with the way messages and the docs write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    max: Duration,
    text: &'static str,
}

/// `--interval` and `wait`: a year is far beyond any sensible setting, and a deadline that
/// far ahead fits every clock, so no addition to it can overflow.
pub const DURATION: Limit = Limit {
    max: Duration::from_secs(365 * 24 * 60 * 60),
    text: "365d",
};

/// `check_cmd_timeout` and `reload_cmd_timeout`: the store's other resources wait while a
/// command runs, so a command that needs more than a day is stuck, not slow.
pub const COMMAND_TIMEOUT: Limit = Limit {
    max: Duration::from_secs(24 * 60 * 60),
    text: "24h",
};

/// An announcement's `ttl` and `check_interval`: Consul's longest session TTL, and far beyond
/// any sensible check interval.
pub const ANNOUNCE_DURATION: Limit = Limit {
    max: Duration::from_secs(24 * 60 * 60),
    text: "24h",
};

/// `render_timeout`: a render that needs more than an hour is stuck, and its resource's
/// destination goes without updates all that time.
pub const RENDER_TIMEOUT: Limit = Limit {
    max: Duration::from_secs(60 * 60),
    text: "1h",
};

/// `kill_timeout` and `splay` of exec mode: a service that needs more than an hour to stop is
/// stuck, and a reload signal held back for more than an hour leaves it on a stale file.
pub const EXEC_DELAY: Limit = Limit {
    max: Duration::from_secs(60 * 60),
    text: "1h",
};

/// The largest `render_max_size`: a rendered configuration file is held in memory whole.
pub const RENDER_SIZE: u64 = 4 * 1024 * 1024 * 1024;

/// Reads a size such as `256MiB`, `10 MB` or a number of bytes, at least one byte and at most
/// [`RENDER_SIZE`]. The message names neither the value nor where it came from.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text.trim().parse().map_err(|e| {
        // A number too long to read is too large, whatever its unit.
        let number: String = text
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        match number.parse::<f64>() {
            Ok(number) if number > RENDER_SIZE as f64 => "at most 4GiB".to_string(),
            _ => format!("not a size such as \"256MiB\" ({e})"),
        }
    })?;
    match size.as_u64() {
        0 => Err("at least 1 byte".to_string()),
        bytes if bytes > RENDER_SIZE => Err("at most 4GiB".to_string()),
        bytes => Ok(bytes),
    }
}

impl Limit {
    /// The longest accepted duration.
    pub fn max(self) -> Duration {
        self.max
    }

    /// The limit as messages write it, such as `365d`.
    pub fn text(self) -> &'static str {
        self.text
    }

    /// `duration` when it is within the limit; otherwise the message `at most 365d`.
    pub fn check(self, duration: Duration) -> Result<Duration, String> {
        if duration > self.max {
            return Err(format!("at most {}", self.text));
        }
        Ok(duration)
    }

    /// Reads a duration such as `30s` or `1h30m` and checks it. The message names neither
    /// the value nor where it came from: the caller knows both.
    pub fn parse(self, text: &str) -> Result<Duration, String> {
        match humantime::parse_duration(text.trim()) {
            Ok(duration) => self.check(duration),
            // Too large even for a `Duration`: the same mistake as one that merely exceeds
            // the limit.
            Err(humantime::DurationError::NumberOverflow) => Err(format!("at most {}", self.text)),
            Err(e) => Err(format!("not a duration such as \"30s\" ({e})")),
        }
    }
}

/// `now + by`, but never a panic: should the sum not fit the clock, the furthest deadline
/// that does ([`DURATION`] ahead, else `now`). Durations checked at load never get there.
pub fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .or_else(|| now.checked_add(DURATION.max))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_units_and_within_limits() {
        assert_eq!(parse_size("256MiB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("10 KB"), Ok(10_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4GiB"), Ok(RENDER_SIZE));
        assert_eq!(parse_size("5GiB"), Err("at most 4GiB".to_string()));
        assert_eq!(parse_size("0"), Err("at least 1 byte".to_string()));
        assert!(parse_size("lots").is_err_and(|e| e.starts_with("not a size")));
        assert_eq!(
            parse_size("99999999999999999999999"),
            Err("at most 4GiB".to_string())
        );
        assert_eq!(
            parse_size("99999999999999999999999 GiB"),
            Err("at most 4GiB".to_string())
        );
    }

    #[test]
    fn the_text_of_each_limit_reads_as_its_duration() {
        for limit in [DURATION, COMMAND_TIMEOUT, RENDER_TIMEOUT, EXEC_DELAY] {
            assert_eq!(humantime::parse_duration(limit.text()), Ok(limit.max()));
        }
    }

    #[test]
    fn durations_up_to_the_limit_are_read_and_longer_ones_refused() {
        assert_eq!(DURATION.parse("365d"), Ok(DURATION.max()));
        assert_eq!(DURATION.parse(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(DURATION.parse("365d 1s"), Err("at most 365d".to_string()));
        assert_eq!(
            DURATION.parse("300000000000y"),
            Err("at most 365d".to_string())
        );
        // Beyond what a Duration can hold at all.
        assert_eq!(
            DURATION.parse("100000000000000000000s"),
            Err("at most 365d".to_string())
        );
        assert_eq!(COMMAND_TIMEOUT.parse("24h"), Ok(COMMAND_TIMEOUT.max()));
        assert_eq!(
            COMMAND_TIMEOUT.parse("1d 1s"),
            Err("at most 24h".to_string())
        );
        let error = DURATION.parse("soon").expect_err("not a duration");
        assert!(error.starts_with("not a duration"), "{error}");
    }

    #[test]
    fn later_saturates_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(2)),
            now + Duration::from_secs(2)
        );
        assert!(later(now, Duration::MAX) > now);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary;

    proptest! {
        #[test]
        fn durations_parse_within_the_limit_or_say_why(text in arbitrary::duration()) {
            for limit in [DURATION, COMMAND_TIMEOUT, RENDER_TIMEOUT] {
                match limit.parse(&text) {
                    Ok(duration) => prop_assert!(duration <= limit.max()),
                    Err(message) => prop_assert!(!message.is_empty()),
                }
            }
        }

        #[test]
        fn sizes_parse_within_the_limit_or_say_why(text in arbitrary::size()) {
            match parse_size(&text) {
                Ok(bytes) => prop_assert!((1..=RENDER_SIZE).contains(&bytes)),
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }

        #[test]
        fn later_never_panics(seconds in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let now = Instant::now();
            prop_assert!(later(now, Duration::new(seconds, nanos)) >= now);
        }
    }
}
