//! Stage files: where new content waits beside its destination until it is checked and renamed
//! over it.
//!
//! A stage file is named `.<name>.reconfd-XXXXXX` (`<name>` the destination's, cut to fit the
//! file system's limit; `XXXXXX` random letters and digits), so that one left behind by a run
//! that was killed can be told from every other file, and removed when reconfd starts again.
//! One kept after a failed check (`--keep-stage-file`) gets [`KEPT_SUFFIX`] and is the user's:
//! reconfd never removes it.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::unistd::{PathconfVar, pathconf};
use tempfile::NamedTempFile;

/// Between the destination's name and the random part: what marks the file as reconfd's.
const MARKER: &str = ".reconfd-";

/// Random letters and digits that end a stage file's name.
const RANDOM_LEN: usize = 6;

/// Appended to a stage file kept after a failed check.
const KEPT_SUFFIX: &str = ".rejected";

/// The longest file name, in bytes, where the file system does not say (Linux's `NAME_MAX`).
const DEFAULT_NAME_MAX: usize = 255;

/// A new stage file for `dest` in its directory, created exclusively and readable by its owner
/// only.
pub(crate) fn create(dest: &Path) -> std::io::Result<NamedTempFile> {
    // tempfile names a file in a relative directory by joining the working directory to it;
    // made absolute first, `./out` stages as `/srv/.out.reconfd-…`, not `/srv/./.out…`, in
    // the `{{.src}}` a check command prints.
    let dir = std::path::absolute(directory(dest))?;
    tempfile::Builder::new()
        .prefix(&prefix(dest, &dir))
        .rand_bytes(RANDOM_LEN)
        .tempfile_in(&dir)
}

/// Keeps a stage file that failed its check, renamed with [`KEPT_SUFFIX`] so that it is not
/// taken for a leftover; returns where it is now.
pub(crate) fn keep(staged: NamedTempFile) -> Result<PathBuf, String> {
    let mut kept = staged.path().as_os_str().to_owned();
    kept.push(KEPT_SUFFIX);
    let kept = PathBuf::from(kept);
    staged
        .into_temp_path()
        .persist_noclobber(&kept)
        .map(|()| kept)
        .map_err(|e| e.error.to_string())
}

/// Removes the stage files of `dest` left in its directory by a run that was killed: regular
/// files named exactly as [`create`] names them. Files kept after a failed check, the stage
/// files of other destinations and every other file stay. Returns the files removed; failures
/// are logged.
pub(crate) fn remove_leftovers(dest: &Path) -> Vec<PathBuf> {
    let dir = directory(dest);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Nothing was ever staged in a directory that does not exist.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(
                "{}: cannot look for stage files left by an earlier run: {e}",
                dir.display()
            );
            return Vec::new();
        }
    };
    let prefix = prefix(dest, dir);
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_leftover = name
            .as_bytes()
            .strip_prefix(prefix.as_bytes())
            .is_some_and(|random| {
                random.len() == RANDOM_LEN && random.iter().all(u8::is_ascii_alphanumeric)
            });
        // reconfd stages regular files only; anything else of that name is not its own.
        if !is_leftover || !entry.file_type().is_ok_and(|kind| kind.is_file()) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(
                    "removed {}, a stage file left by a run that was interrupted",
                    path.display()
                );
                removed.push(path);
            }
            Err(e) => tracing::warn!(
                "cannot remove {}, a stage file left by an earlier run: {e}",
                path.display()
            ),
        }
    }
    removed
}

fn directory(dest: &Path) -> &Path {
    dest.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.<name>.reconfd-`, the destination's name cut so that the whole stage name, kept suffix
/// included, fits the longest name the directory's file system takes.
fn prefix(dest: &Path, dir: &Path) -> OsString {
    let name = dest.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
    let room = name_max(dir).saturating_sub(1 + MARKER.len() + RANDOM_LEN + KEPT_SUFFIX.len());
    let mut cut = name.len().min(room);
    // A UTF-8 continuation byte after the cut means a character would be split: the cut goes
    // before that character instead.
    while cut > 0
        && name
            .get(cut)
            .is_some_and(|byte| byte & 0b1100_0000 == 0b1000_0000)
    {
        cut -= 1;
    }
    let mut prefix = Vec::with_capacity(1 + cut + MARKER.len());
    prefix.push(b'.');
    prefix.extend_from_slice(&name[..cut]);
    prefix.extend_from_slice(MARKER.as_bytes());
    OsString::from_vec(prefix)
}

/// The longest file name, in bytes, that `dir`'s file system takes.
fn name_max(dir: &Path) -> usize {
    match pathconf(dir, PathconfVar::NAME_MAX) {
        Ok(Some(limit)) => usize::try_from(limit).unwrap_or(DEFAULT_NAME_MAX),
        _ => DEFAULT_NAME_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_stage_name_is_the_destination_name_with_the_marker_and_a_random_part() {
        let dir = tempfile::tempdir().expect("temp dir");
        let staged = create(&dir.path().join("app.conf")).expect("stage");
        let name = staged
            .path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let random = name.strip_prefix(".app.conf.reconfd-").expect(&name);
        assert_eq!(random.len(), RANDOM_LEN, "{name}");
        assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
    }

    #[test]
    fn the_longest_names_fit_and_are_cut_between_characters() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in [
            "a".repeat(255),
            "é".repeat(127),
            format!("a{}", "€".repeat(84)),
        ] {
            let dest = dir.path().join(&name);
            std::fs::write(&dest, "").expect("the file system takes the name");
            let staged = create(&dest).expect("stage");
            let kept = keep(staged).expect("keep");
            let kept_name = kept.file_name().expect("name");
            assert!(kept_name.len() <= 255, "{}", kept_name.len());
            let kept_name = kept_name.to_str().expect("whole characters only");
            let cut = kept_name
                .strip_prefix('.')
                .and_then(|rest| rest.split(MARKER).next())
                .expect(kept_name);
            assert!(name.starts_with(cut) && !cut.is_empty(), "{kept_name}");
        }
    }

    #[test]
    fn only_stage_files_named_exactly_as_created_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("app.conf");
        let leftover = create(&dest).expect("stage").into_temp_path();
        let leftover = leftover.keep().expect("keep the leftover");
        let kept = keep(create(&dest).expect("stage")).expect("keep");
        let others = [
            ".app.conf.reconfd-abc12",
            ".app.conf.reconfd-abc1234",
            ".app.conf.reconfd-abc12!",
            ".app.conf.Ab12Cd",
            "app.conf.reconfd-Ab12Cd",
            ".app.conf.bak.reconfd-Ab12Cd",
            ".other.conf.reconfd-Ab12Cd",
            "app.conf",
        ];
        for other in others {
            std::fs::write(dir.path().join(other), "").expect("write");
        }
        std::fs::create_dir(dir.path().join(".app.conf.reconfd-dir123")).expect("mkdir");
        std::os::unix::fs::symlink(&dest, dir.path().join(".app.conf.reconfd-link12"))
            .expect("symlink");

        assert_eq!(remove_leftovers(&dest), std::slice::from_ref(&leftover));
        assert!(!leftover.exists());
        let mut expected: Vec<String> = others.iter().map(|name| name.to_string()).collect();
        expected.extend([
            ".app.conf.reconfd-dir123".to_string(),
            ".app.conf.reconfd-link12".to_string(),
            kept.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
        ]);
        expected.sort();
        assert_eq!(names(dir.path()), expected);
        assert_eq!(
            remove_leftovers(&dir.path().join("none/app.conf")),
            [] as [PathBuf; 0]
        );
    }
}
