//! How far the watches of a store with revisions (etcd, NATS) have delivered its changes, so
//! that a new watch (after a disconnection, a failover, a restart of the store) resumes right
//! after them: nothing missed, nothing replayed.

use std::collections::BTreeMap;

/// For each watched prefix, the revision up to which every change under it was delivered to
/// the daemon.
///
/// Revisions compare within one history of the store only. A store whose history can start
/// over (a bucket created again, an etcd restored from a backup) finds that out by a full
/// read, and [`Progress::restart`]s from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    delivered: BTreeMap<String, i64>,
}

impl Progress {
    /// Records that `prefix`'s changes up to `revision` were delivered. A report that comes
    /// late never moves it back: within one history, revisions only grow.
    pub(crate) fn advance(&mut self, prefix: &str, revision: i64) {
        match self.delivered.get_mut(prefix) {
            Some(delivered) => *delivered = (*delivered).max(revision),
            None => {
                self.delivered.insert(prefix.to_string(), revision);
            }
        }
    }

    /// Records that the changes of every one of `prefixes` up to `revision` were delivered.
    pub(crate) fn advance_all(&mut self, prefixes: &[String], revision: i64) {
        for prefix in prefixes {
            self.advance(prefix, revision);
        }
    }

    /// The revision a watch of `prefix` starts at: right after what was delivered for it, or
    /// right after `read` (the revision of the snapshot the daemon holds) when that is later.
    /// `None` when neither is known: the watch starts at the store's current revision.
    pub(crate) fn start(&self, prefix: &str, read: Option<i64>) -> Option<i64> {
        self.delivered
            .get(prefix)
            .copied()
            .max(read)
            .map(|delivered| delivered.saturating_add(1))
    }

    /// Makes a full read of `prefixes` at `revision` the only progress: each of them starts
    /// right after it, even when that is behind what was delivered before (the store's history
    /// started over). Other prefixes are forgotten, as what was delivered for them may belong to
    /// a history the store no longer has.
    pub(crate) fn restart(&mut self, prefixes: &[String], revision: Option<i64>) {
        self.delivered.clear();
        if let Some(revision) = revision {
            self.advance_all(prefixes, revision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|prefix| prefix.to_string()).collect()
    }

    #[test]
    fn progress_only_moves_forward() {
        let mut progress = Progress::default();
        progress.advance("/a", 9);
        progress.advance("/a", 5);
        assert_eq!(progress.start("/a", None), Some(10));
        progress.advance_all(&prefixes(&["/a", "/b"]), 12);
        progress.advance_all(&prefixes(&["/a", "/b"]), 11);
        assert_eq!(progress.start("/a", None), Some(13));
        assert_eq!(progress.start("/b", None), Some(13));
    }

    #[test]
    fn a_watch_starts_after_the_delivered_changes_or_the_read_whichever_is_later() {
        let mut progress = Progress::default();
        assert_eq!(progress.start("/a", None), None, "nothing known: from now");
        assert_eq!(progress.start("/a", Some(500)), Some(501));
        progress.advance("/a", 612);
        assert_eq!(progress.start("/a", Some(500)), Some(613));
        assert_eq!(progress.start("/a", Some(700)), Some(701));
        assert_eq!(progress.start("/b", Some(500)), Some(501));
    }

    #[test]
    fn a_full_read_is_the_only_progress_even_behind_what_was_delivered() {
        let mut progress = Progress::default();
        progress.advance("/a", 612);
        progress.advance("/gone", 700);
        // The store's history started over: the read at revision 3 is all that counts now.
        progress.restart(&prefixes(&["/a", "/b"]), Some(3));
        assert_eq!(progress.start("/a", None), Some(4));
        assert_eq!(progress.start("/b", None), Some(4));
        assert_eq!(progress.start("/gone", None), None, "not read: forgotten");
        // Within the new history, progress grows again.
        progress.advance("/a", 9);
        assert_eq!(progress.start("/a", Some(3)), Some(10));
        // A read without a revision leaves nothing known.
        progress.restart(&prefixes(&["/a"]), None);
        assert_eq!(progress, Progress::default());
    }
}
