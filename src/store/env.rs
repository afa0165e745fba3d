//! The environment store: the process's environment variables, mapped to keys as confd's env
//! backend does.
//!
//! A key prefix becomes a variable name prefix by dropping the leading `/`, turning `/` into
//! `_` and upper-casing (`/proxy/frontend` → `PROXY_FRONTEND`); each variable whose name starts
//! with it becomes a key by lower-casing, turning `_` into `/` and adding a leading `/`
//! (`PROXY_FRONTEND_WEB1` → `/proxy/frontend/web1`).

use std::os::unix::ffi::OsStringExt;

use async_trait::async_trait;

use super::{Snapshot, Store, StoreError, Value, WatchStream, value};

/// Reads keys from the environment of the reconfd process.
pub struct EnvStore;

#[async_trait]
impl Store for EnvStore {
    fn name(&self) -> &'static str {
        "env"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        // A name that is not UTF-8 cannot be a key; a value that is not is kept as such, so
        // the resources that see it fail naming it.
        let vars = std::env::vars_os()
            .filter_map(|(name, bytes)| Some((name.into_string().ok()?, value(bytes.into_vec()))));
        Ok(select(vars, prefixes))
    }

    /// The environment of a running process does not change, so there is nothing to watch;
    /// the daemon polls instead.
    async fn watch(
        &self,
        _prefixes: &[String],
        _snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        Ok(None)
    }
}

/// The keys `vars` (name, value) yield under any of `prefixes`.
fn select(vars: impl Iterator<Item = (String, Value)>, prefixes: &[String]) -> Snapshot {
    let name_prefixes: Vec<String> = prefixes.iter().map(|p| name_prefix(p)).collect();
    vars.filter(|(name, _)| name_prefixes.iter().any(|p| name.starts_with(p.as_str())))
        .map(|(name, value)| (key_for(&name), value))
        .collect()
}

/// The variable name prefix for a key prefix: `/proxy/frontend` → `PROXY_FRONTEND`.
fn name_prefix(key_prefix: &str) -> String {
    let trimmed = key_prefix.strip_prefix('/').unwrap_or(key_prefix);
    trimmed.replace('/', "_").to_uppercase()
}

/// The key for a variable name: `PROXY_FRONTEND_WEB1` → `/proxy/frontend/web1`.
fn key_for(name: &str) -> String {
    format!("/{}", name.to_lowercase().replace('_', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::{KeyMap, NotUtf8};

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, Value)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), Ok(value.to_string())))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn key_prefix_maps_to_variable_name_prefix() {
        assert_eq!(name_prefix("/proxy/frontend"), "PROXY_FRONTEND");
        assert_eq!(name_prefix("/database"), "DATABASE");
        assert_eq!(name_prefix("app/db"), "APP_DB");
        assert_eq!(name_prefix("/"), "");
    }

    #[test]
    fn variable_name_maps_to_key() {
        assert_eq!(key_for("PROXY_FRONTEND_WEB1"), "/proxy/frontend/web1");
        assert_eq!(key_for("DATABASE"), "/database");
    }

    #[test]
    fn selects_variables_under_the_prefixes() {
        let selected = select(
            vars(&[
                ("PROXY_FRONTEND_WEB1", "10.0.0.1:80"),
                ("PROXY_FRONTEND_WEB2", "10.0.0.2:80"),
                ("PROXY_BACKEND_DB", "10.0.0.3:5432"),
                ("DATABASE_HOST", "db1"),
                ("HOME", "/root"),
            ]),
            &prefixes(&["/proxy/frontend", "/database"]),
        );
        let expected: KeyMap = [
            ("/database/host", "db1"),
            ("/proxy/frontend/web1", "10.0.0.1:80"),
            ("/proxy/frontend/web2", "10.0.0.2:80"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(selected.entries, expected);
    }

    #[test]
    fn a_value_that_is_not_utf8_is_kept_as_such() {
        let vars = [("APP_BAD".to_string(), value(b"ok\xffno".to_vec()))];
        let selected = select(vars.into_iter(), &prefixes(&["/app"]));
        assert!(selected.entries.is_empty());
        assert_eq!(
            selected.not_utf8.get("/app/bad"),
            Some(&NotUtf8 {
                byte: 0xff,
                offset: 2
            })
        );
    }

    #[test]
    fn prefix_match_is_plain_string_prefix_as_in_confd() {
        let selected = select(
            vars(&[("APP_X", "1"), ("APPLE", "2"), ("MAP", "3")]),
            &prefixes(&["/app"]),
        );
        assert_eq!(
            selected.entries.keys().collect::<Vec<_>>(),
            ["/app/x", "/apple"]
        );
    }

    #[test]
    fn no_prefixes_select_nothing() {
        assert!(select(vars(&[("APP_X", "1")]), &[]).entries.is_empty());
    }

    #[tokio::test]
    async fn fetch_reads_the_process_environment_and_cannot_watch() {
        // PATH is set wherever tests run; reading it needs no `set_var`, which would race
        // with other tests reading the environment.
        let path = std::env::var("PATH").expect("PATH is set");
        let snapshot = EnvStore.fetch(&prefixes(&["/path"])).await.expect("fetch");
        assert_eq!(snapshot.entries.get("/path"), Some(&path));
        assert_eq!(snapshot.revision, None);
        assert!(
            EnvStore
                .watch(&prefixes(&["/path"]), &snapshot)
                .await
                .expect("watch")
                .is_none()
        );
    }
}
