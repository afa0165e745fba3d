//! Template resources: confd's `conf.d/*.toml` files.
//!
//! A resource names a template (`src`, relative to `<confdir>/templates`), a destination, the
//! key prefixes it reads, and how the destination is checked, owned and reloaded. Unknown keys
//! are errors naming the file, line and key, so a typo such as `dset` cannot pass silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits;
use crate::secrets;
use crate::settings::{self, keys_of};
use crate::store::backend::{Backend, StoreFields};
use crate::store::catalog::SERVICES_ROOT;
use crate::wait::Wait;

/// Check and reload commands that set no timeout get this one.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A resource file that cannot be used. Other resources are still processed.
#[derive(Debug, thiserror::Error)]
#[error("{file}{place}: {message}")]
pub struct ResourceError {
    /// The resource file.
    pub file: String,
    /// `:line:column` where the fault has a place in it, else empty.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

/// One template resource, resolved and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// The `conf.d/*.toml` file it came from, for messages.
    pub file: PathBuf,
    /// The template file.
    pub src: PathBuf,
    /// The file to keep in sync.
    pub dest: PathBuf,
    /// The full key prefix (settings prefix joined with the resource's), `""` for none.
    /// Template keys are relative to it, as in confd.
    pub prefix: String,
    /// Absolute key prefixes read from the store (each key joined onto `prefix`).
    pub keys: Vec<String>,
    /// Wanted permission bits; `None` keeps the destination's, or 0644 for a new file.
    pub mode: Option<u32>,
    /// Wanted owner; `None` keeps the destination's.
    pub uid: Option<u32>,
    /// Wanted group; `None` keeps the destination's.
    pub gid: Option<u32>,
    /// Command that validates the staged file; `{{.src}}` or `{{ src }}` is its path.
    pub check_cmd: Option<String>,
    /// Command run after the destination was replaced.
    pub reload_cmd: Option<String>,
    /// Limit for `check_cmd`.
    pub check_timeout: Duration,
    /// Limit for `reload_cmd`.
    pub reload_timeout: Duration,
    /// The resource's own store (its `[backend]` table); `None` reads the global store.
    pub backend: Option<Backend>,
    /// How long a change waits for the data to settle (`wait`); `None` takes `--wait`, and
    /// without that a change renders at once.
    pub wait: Option<Wait>,
    /// Keep the previous destination as `<dest>.bak` (`backup`).
    pub backup: bool,
    /// When the reload fails, put the previous destination back and reload again
    /// (`rollback`).
    pub rollback: bool,
    /// Create the destination's missing directories (`create_dest_dirs`).
    pub create_dest_dirs: bool,
    /// A format the rendered output must parse as before it is staged (`output_format`).
    pub output_format: Option<OutputFormat>,
    /// Longest its render may take (`render_timeout`); `None` takes `--render-timeout`.
    pub render_timeout: Option<Duration>,
    /// Largest output its render may produce (`render_max_size`); `None` takes
    /// `--render-max-size`.
    pub render_max_size: Option<u64>,
    /// Fewest keys it must see under `keys` to be synced (`min_keys`); `None` takes
    /// `--min-keys`, and without that any number will do.
    pub min_keys: Option<usize>,
    /// The values it reads are secrets (`secret`, its `[backend]` table's `secret`, `--secret`
    /// for the global store, or a store of secrets): masked wherever text leaves the process,
    /// its file private unless it sets a mode, its checksum and diff lines not shown.
    pub secret: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    template: TemplateTable,
    /// A store of this resource's own, instead of the global one.
    backend: Option<StoreFields>,
}

/// A resource file with several `[[template]]` tables: one program's configuration files,
/// swapped together.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MultiResourceFile {
    template: Vec<TemplateTable>,
    backend: Option<StoreFields>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateTable {
    #[serde(deserialize_with = "not_empty")]
    src: String,
    #[serde(deserialize_with = "not_empty")]
    dest: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    prefix: String,
    #[serde(default, deserialize_with = "mode")]
    mode: Option<u32>,
    #[serde(default, deserialize_with = "uid")]
    uid: Option<u32>,
    #[serde(default, deserialize_with = "gid")]
    gid: Option<u32>,
    /// The user named by `owner`, looked up as the file is read so that an unknown name is
    /// an error with its line.
    #[serde(default, deserialize_with = "owner")]
    owner: Option<u32>,
    /// The group named by `group`, as `owner`.
    #[serde(default, deserialize_with = "group")]
    group: Option<u32>,
    check_cmd: Option<String>,
    reload_cmd: Option<String>,
    #[serde(default, deserialize_with = "check_cmd_timeout")]
    check_cmd_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "reload_cmd_timeout")]
    reload_cmd_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "wait")]
    wait: Option<Wait>,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    rollback: bool,
    #[serde(default)]
    create_dest_dirs: bool,
    #[serde(default, deserialize_with = "output_format")]
    output_format: Option<OutputFormat>,
    #[serde(default, deserialize_with = "render_timeout")]
    render_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "render_max_size")]
    render_max_size: Option<u64>,
    #[serde(default, deserialize_with = "min_keys")]
    min_keys: Option<usize>,
    #[serde(default)]
    secret: bool,
}

/// Reads every `*.toml` file under `<confdir>/conf.d`, subdirectories included as confd
/// reads them, in path order. Each file yields either its resources (one per `[template]`, or
/// one per `[[template]]` table) or an error; one bad file does not stop the others.
pub fn load_all(
    confdir: &Path,
    global_prefix: &str,
) -> Result<Vec<Result<Vec<Resource>, ResourceError>>, ResourceError> {
    let resource_dir = confdir.join("conf.d");
    let (files, unreadable) = resource_files(&resource_dir)?;
    let mut loaded: Vec<_> = files
        .iter()
        .map(|file| load(file, &confdir.join("templates"), global_prefix))
        .collect();
    refuse_shared_destinations(&files, &mut loaded);
    loaded.extend(unreadable.into_iter().map(Err));
    Ok(loaded)
}

/// The `*.toml` files under `resource_dir` and its subdirectories, sorted, and what could
/// not be read below it. As confd's walk does, a symbolic link is listed as the file it names
/// (one that leads nowhere too, so that loading it reports it) and a linked directory is not
/// entered. Hidden entries are left out, as the file store leaves them out: a ConfigMap
/// mount's `..<timestamp>` directory holds every file again, and an editor's lock or backup
/// file is not a resource. An error when `resource_dir` itself cannot be read.
pub(crate) fn resource_files(
    resource_dir: &Path,
) -> Result<(Vec<PathBuf>, Vec<ResourceError>), ResourceError> {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    let walk = walkdir::WalkDir::new(resource_dir)
        .into_iter()
        // The directory given is read even if its own name is hidden.
        .filter_entry(|entry| {
            entry.depth() == 0 || !entry.file_name().as_encoded_bytes().starts_with(b".")
        });
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let top = e.depth() == 0;
                let not_found = e
                    .io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                let error = ResourceError {
                    file: e.path().unwrap_or(resource_dir).display().to_string(),
                    place: String::new(),
                    message: if top && not_found {
                        format!(
                            "cannot read the resource directory: {e}; --confdir (or \
                             RECONFD_CONFDIR) names the directory that holds conf.d/ and \
                             templates/"
                        )
                    } else {
                        format!("cannot read the resource directory: {e}")
                    },
                };
                if top {
                    return Err(error);
                }
                unreadable.push(error);
                continue;
            }
        };
        let is_toml = entry.path().extension().is_some_and(|ext| ext == "toml");
        let is_dir = std::fs::metadata(entry.path()).is_ok_and(|metadata| metadata.is_dir());
        if is_toml && !is_dir {
            files.push(entry.into_path());
        }
    }
    files.sort();
    Ok((files, unreadable))
}

/// Refuses every file with a destination that a resource of another file writes too. Each
/// would find the other's content on every run and write its own again (and reload), so
/// neither is kept: which of them is right is for the user to say.
fn refuse_shared_destinations(
    files: &[PathBuf],
    loaded: &mut [Result<Vec<Resource>, ResourceError>],
) {
    // Each destination, as written and as it is on disk, with the files that write it.
    let mut writers: BTreeMap<PathBuf, (PathBuf, BTreeSet<usize>)> = BTreeMap::new();
    for (index, resources) in loaded.iter().enumerate() {
        for resource in resources.iter().flatten() {
            writers
                .entry(same_file(&resource.dest))
                .or_insert_with(|| (resource.dest.clone(), BTreeSet::new()))
                .1
                .insert(index);
        }
    }
    for (dest, indices) in writers.values().filter(|(_, indices)| indices.len() > 1) {
        for &index in indices {
            if loaded[index].is_err() {
                // Refused already for another destination it shares.
                continue;
            }
            let others: Vec<String> = indices
                .iter()
                .filter(|other| **other != index)
                .map(|other| files[*other].display().to_string())
                .collect();
            loaded[index] = Err(ResourceError {
                file: files[index].display().to_string(),
                place: String::new(),
                message: format!(
                    "{} is also the destination of {}: both are refused, as each would \
                     rewrite it (and reload) on every run",
                    dest.display(),
                    others.join(", ")
                ),
            });
        }
    }
}

/// `dest` resolved (symbolic links, `..`, a relative confdir), so that two spellings of one
/// file compare equal. Where directories do not exist yet, the deepest one that does is
/// resolved and the rest is taken by its names, `..` removing the name before it (nothing
/// there can be a link).
fn same_file(dest: &Path) -> PathBuf {
    use std::path::Component;
    let components: Vec<Component> = dest.components().collect();
    for split in (1..components.len()).rev() {
        let dir: PathBuf = components[..split].iter().collect();
        if let Ok(resolved) = std::fs::canonicalize(&dir) {
            return components[split..]
                .iter()
                .fold(resolved, |mut path, component| {
                    match component {
                        Component::ParentDir => {
                            path.pop();
                        }
                        Component::CurDir => {}
                        name => path.push(name),
                    }
                    path
                });
        }
    }
    dest.to_path_buf()
}

/// Reads a file of the confdir; the error says what is wrong, and a symbolic link that leads
/// nowhere is said to be one, as "No such file or directory" of a file that is listed misleads.
pub fn read_text(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| match std::fs::read_link(file) {
        Ok(target) if e.kind() == std::io::ErrorKind::NotFound => format!(
            "cannot read: a symbolic link to {}, which does not exist",
            target.display()
        ),
        _ => format!("cannot read: {e}"),
    })
}

/// Reads one resource file. Relative `src` paths are under `template_dir`; relative `dest`
/// paths are under the directory that holds `conf.d`.
pub fn load(
    file: &Path,
    template_dir: &Path,
    global_prefix: &str,
) -> Result<Vec<Resource>, ResourceError> {
    let text = read_text(file).map_err(|message| ResourceError {
        file: file.display().to_string(),
        place: String::new(),
        message,
    })?;
    // Parsed as the form the file uses, so that errors keep their line and column.
    let several = text
        .parse::<toml::Table>()
        .map_err(|e| toml_error(file, &text, &e))?
        .get("template")
        .is_some_and(toml::Value::is_array);
    let (tables, backend) = if several {
        let parsed: MultiResourceFile =
            toml::from_str(&text).map_err(|e| toml_error(file, &text, &e))?;
        if parsed.template.is_empty() {
            return Err(ResourceError {
                file: file.display().to_string(),
                place: String::new(),
                message: "`[[template]]` has no table".to_string(),
            });
        }
        (parsed.template, parsed.backend)
    } else {
        let parsed: ResourceFile =
            toml::from_str(&text).map_err(|e| toml_error(file, &text, &e))?;
        (vec![parsed.template], parsed.backend)
    };
    let secret_store = backend.as_ref().is_some_and(|fields| fields.secret);
    let backend = backend
        .map(|mut fields| {
            fields.unset_empty();
            fields.resolve()
        })
        .transpose()
        .map_err(|message| ResourceError {
            file: file.display().to_string(),
            place: String::new(),
            message: format!("[backend]: {message}"),
        })?;
    let resources = tables
        .into_iter()
        .map(|mut table| {
            table.secret |= secret_store;
            resolve(file, table, backend.clone(), template_dir, global_prefix)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (index, resource) in resources.iter().enumerate() {
        if resources[..index]
            .iter()
            .any(|other| other.dest == resource.dest)
        {
            return Err(ResourceError {
                file: file.display().to_string(),
                place: String::new(),
                message: format!("two templates write {}", resource.dest.display()),
            });
        }
    }
    Ok(resources)
}

/// One template table of `file` as a resource.
fn resolve(
    file: &Path,
    table: TemplateTable,
    backend: Option<Backend>,
    template_dir: &Path,
    global_prefix: &str,
) -> Result<Resource, ResourceError> {
    let fail = |message: String| ResourceError {
        file: file.display().to_string(),
        place: String::new(),
        message,
    };
    let confdir = template_dir.parent().unwrap_or(Path::new("."));
    // As confd does, a global prefix replaces the resource's own, `/` included.
    let own_prefix = join_key_path(&["/", &table.prefix]);
    let prefix = if global_prefix.is_empty() {
        own_prefix
    } else {
        let global = join_key_path(&["/", global_prefix]);
        if own_prefix != "/" && own_prefix != global {
            tracing::info!(
                "{}: the global prefix {global} replaces the resource's prefix {own_prefix}, as \
                 in confd",
                file.display()
            );
        }
        global
    };
    let keys = table
        .keys
        .iter()
        .map(|key| {
            // The Consul catalog is not under any KV prefix: its keys stay as written.
            if key.starts_with(SERVICES_ROOT) {
                join_key_path(&[key])
            } else {
                join_key_path(&[&prefix, key])
            }
        })
        .collect();
    let uid = match (table.uid, table.owner) {
        (Some(_), Some(_)) => return Err(fail("set `uid` or `owner`, not both".to_string())),
        (Some(uid), None) => Some(uid),
        (None, owner) => owner,
    };
    let gid = match (table.gid, table.group) {
        (Some(_), Some(_)) => return Err(fail("set `gid` or `group`, not both".to_string())),
        (Some(gid), None) => Some(gid),
        (None, group) => group,
    };
    Ok(Resource {
        file: file.to_path_buf(),
        src: template_dir.join(&table.src),
        dest: confdir.join(&table.dest),
        prefix: if prefix == "/" { String::new() } else { prefix },
        keys,
        mode: table.mode,
        uid,
        gid,
        check_cmd: table.check_cmd.filter(|cmd| !cmd.trim().is_empty()),
        reload_cmd: table.reload_cmd.filter(|cmd| !cmd.trim().is_empty()),
        check_timeout: table.check_cmd_timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        reload_timeout: table.reload_cmd_timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        backend,
        wait: table.wait,
        backup: table.backup,
        rollback: table.rollback,
        create_dest_dirs: table.create_dest_dirs,
        output_format: table.output_format,
        render_timeout: table.render_timeout,
        render_max_size: table.render_max_size,
        min_keys: table.min_keys,
        secret: table.secret,
    })
}

/// Joins key paths as Go's `path.Join` does: one `/` between parts, no trailing `/`, empty
/// parts skipped. The result is absolute when the first non-empty part is.
pub fn join_key_path(parts: &[&str]) -> String {
    let absolute = parts
        .iter()
        .find(|part| !part.is_empty())
        .is_some_and(|part| part.starts_with('/'));
    let segments: Vec<&str> = parts
        .iter()
        .flat_map(|part| part.split('/'))
        .filter(|segment| !segment.is_empty())
        .collect();
    let joined = segments.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

// The keys below are checked while the file is parsed, so that their errors keep the line
// and column.

/// `mode` is a string, as in confd: a TOML integer cannot say whether `644` was meant in
/// octal (TOML's `0o644` is the number 420).
fn mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    match toml::Value::deserialize(deserializer)? {
        toml::Value::String(text) => parse_mode(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "`mode` = {other} must be a quoted octal string such as \"0644\""
        ))),
    }
}

/// A string that holds something: an empty `src` or `dest` names no file.
fn not_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom("is empty"));
    }
    Ok(text)
}

fn owner<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let name = String::deserialize(deserializer)?;
    user_id(&name).map(Some).map_err(serde::de::Error::custom)
}

fn group<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let name = String::deserialize(deserializer)?;
    group_id(&name).map(Some).map_err(serde::de::Error::custom)
}

fn uid<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    owner_id(deserializer, "uid")
}

fn gid<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    owner_id(deserializer, "gid")
}

/// The largest user or group ID a resource may name: chown(2) reads the next one, -1 as a
/// 32-bit number, as "leave unchanged", so the file would never get the owner asked for.
const MAX_OWNER_ID: u32 = u32::MAX - 1;

fn owner_id<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    key: &str,
) -> Result<Option<u32>, D::Error> {
    let value = toml::Value::deserialize(deserializer)?;
    if value.as_integer() == Some(-1) {
        // confd's own default, which it writes as its effective user or group.
        let effective = if key == "uid" {
            nix::unistd::geteuid().as_raw()
        } else {
            nix::unistd::getegid().as_raw()
        };
        return Ok(Some(effective));
    }
    value
        .as_integer()
        .and_then(|id| u32::try_from(id).ok())
        .filter(|id| *id <= MAX_OWNER_ID)
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{key}` = {value}: a number, at least 0 and at most {MAX_OWNER_ID}"
            ))
        })
}

fn check_cmd_timeout<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    command_timeout(deserializer, "check_cmd_timeout")
}

fn reload_cmd_timeout<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    command_timeout(deserializer, "reload_cmd_timeout")
}

/// `"30s"`, `"1m30s"`, or a number of seconds; more than zero and at most
/// [`limits::COMMAND_TIMEOUT`].
fn command_timeout<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    key: &str,
) -> Result<Option<Duration>, D::Error> {
    let value = toml::Value::deserialize(deserializer)?;
    let fail = |problem: String| serde::de::Error::custom(format!("`{key}` = {value}: {problem}"));
    let limit = match &value {
        toml::Value::Integer(seconds) => {
            let seconds = u64::try_from(*seconds)
                .map_err(|_| fail("a number of seconds cannot be negative".to_string()))?;
            limits::COMMAND_TIMEOUT
                .check(Duration::from_secs(seconds))
                .map_err(fail)?
        }
        toml::Value::String(text) => limits::COMMAND_TIMEOUT.parse(text).map_err(fail)?,
        _ => {
            return Err(fail(
                "must be a duration such as \"30s\" or a number of seconds".to_string(),
            ));
        }
    };
    if limit.is_zero() {
        return Err(serde::de::Error::custom(format!(
            "`{key}` is zero: the command would be killed at once"
        )));
    }
    Ok(Some(limit))
}

/// `"10s"`, more than zero and at most [`limits::RENDER_TIMEOUT`].
fn render_timeout<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let fail = |value: &dyn std::fmt::Display, problem: &str| {
        serde::de::Error::custom(format!("`render_timeout` = {value}: {problem}"))
    };
    match toml::Value::deserialize(deserializer)? {
        toml::Value::String(text) => match limits::RENDER_TIMEOUT.parse(&text) {
            Ok(timeout) if timeout.is_zero() => Err(fail(
                &format!("{text:?}"),
                "more than zero, or every render would fail",
            )),
            Ok(timeout) => Ok(Some(timeout)),
            Err(e) => Err(fail(&format!("{text:?}"), &e)),
        },
        other => Err(fail(&other, "must be a duration such as \"10s\"")),
    }
}

/// `"256MiB"` or a number of bytes, at least 1 and at most [`limits::RENDER_SIZE`].
fn render_max_size<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let value = toml::Value::deserialize(deserializer)?;
    let text = match &value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(bytes) => bytes.to_string(),
        _ => String::new(),
    };
    limits::parse_size(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`render_max_size` = {value}: {e}")))
}

/// A number of keys: an integer from 0.
fn min_keys<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    let value = toml::Value::deserialize(deserializer)?;
    value
        .as_integer()
        .and_then(|count| usize::try_from(count).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`min_keys` = {value}: a number of keys, at least 0"
            ))
        })
}

fn wait<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Wait>, D::Error> {
    match toml::Value::deserialize(deserializer)? {
        toml::Value::String(text) => text
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`wait` = {text:?}: {e}"))),
        other => Err(serde::de::Error::custom(format!(
            "`wait` = {other} must be a string such as \"2s:10s\""
        ))),
    }
}

fn output_format<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OutputFormat>, D::Error> {
    match toml::Value::deserialize(deserializer)? {
        toml::Value::String(text) => text
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`output_format` = {e}"))),
        other => Err(serde::de::Error::custom(format!(
            "`output_format` = {other} must be one of \"json\", \"yaml\", \"toml\""
        ))),
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    Some(digits)
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .and_then(|digits| u32::from_str_radix(digits, 8).ok())
        .filter(|bits| *bits <= 0o7777)
        .ok_or_else(|| {
            format!(
                "`mode` = {text:?} is not an octal file mode such as \"0644\", at most \"7777\""
            )
        })
}

fn user_id(name: &str) -> Result<u32, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("no such user {name:?}")),
        Err(e) => Err(format!("cannot look up the user {name:?}: {e}")),
    }
}

fn group_id(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no such group {name:?}")),
        Err(e) => Err(format!("cannot look up the group {name:?}: {e}")),
    }
}

/// Turns a TOML error into one line: `file:line:column: message`, quoting the line with any
/// credential of a `[backend]` table masked (see [`secrets::with_settings_line`]).
fn toml_error(file: &Path, text: &str, error: &toml::de::Error) -> ResourceError {
    let mut message = settings::toml_message(error.message());
    let mut place = String::new();
    if let Some(span) = error.span() {
        // A span starts on a character boundary; the fallback only guards the slicing.
        let before = text.get(..span.start).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - line_start + 1;
        place = format!(":{line}:{column}");
        // confd's own examples quote the mode; an unquoted 0644 is not a TOML number.
        let line_text = text[line_start..].lines().next().unwrap_or_default();
        let unquoted_mode = line_text
            .split_once('=')
            .is_some_and(|(key, _)| key.trim() == "mode")
            && message.contains("leading zero");
        message = secrets::with_settings_line(&message, text, line_start, |key| {
            keys_of::<TemplateTable>().contains(&key) || settings::readable_key(key)
        });
        if unquoted_mode {
            message.push_str("; write the mode as a quoted octal string, such as mode = \"0644\"");
        }
    }
    ResourceError {
        file: file.display().to_string(),
        place,
        message,
    }
}

/// A format the rendered output must parse as (`output_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<OutputFormat, String> {
        match text {
            "json" => Ok(OutputFormat::Json),
            "yaml" => Ok(OutputFormat::Yaml),
            "toml" => Ok(OutputFormat::Toml),
            _ => Err(format!(
                "{text:?} is not one of \"json\", \"yaml\", \"toml\""
            )),
        }
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputFormat::Json => "JSON",
            OutputFormat::Yaml => "YAML",
            OutputFormat::Toml => "TOML",
        })
    }
}

impl OutputFormat {
    /// Parses `text`; the error is the parser's message, with line and column.
    pub fn validate(self, text: &str) -> Result<(), String> {
        match self {
            OutputFormat::Json => serde_json::from_str::<serde_json::Value>(text)
                .map(drop)
                .map_err(|e| e.to_string()),
            OutputFormat::Yaml => serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
                .map(drop)
                .map_err(|e| e.to_string()),
            OutputFormat::Toml => text
                .parse::<toml::Table>()
                .map(drop)
                .map_err(|e| e.to_string().trim_end().replace('\n', " ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, global_prefix: &str) -> Result<Resource, ResourceError> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("conf.d")).expect("conf.d");
        let file = dir.path().join("conf.d/app.toml");
        std::fs::write(&file, text).expect("write resource");
        load(&file, &dir.path().join("templates"), global_prefix).map(|mut all| all.remove(0))
    }

    #[test]
    fn reads_confd_resource_and_joins_its_prefix() {
        let r = load_text(
            "[template]\nsrc = \"app.tmpl\"\ndest = \"/etc/app.conf\"\nprefix = \"myapp\"\n\
             keys = [\"/frontend/\", \"db\"]\nmode = \"0640\"\nuid = 0\n\
             check_cmd = \"true {{.src}}\"\nreload_cmd_timeout = \"5s\"\n",
            "",
        )
        .expect("valid resource");
        assert_eq!(r.prefix, "/myapp");
        assert_eq!(r.keys, ["/myapp/frontend", "/myapp/db"]);
        assert_eq!(r.mode, Some(0o640));
        assert_eq!(r.uid, Some(0));
        assert!(r.src.ends_with("templates/app.tmpl"));
        assert_eq!(r.dest, PathBuf::from("/etc/app.conf"));
        assert_eq!(r.reload_timeout, Duration::from_secs(5));
        assert_eq!(r.check_timeout, DEFAULT_COMMAND_TIMEOUT);
    }

    #[test]
    fn a_global_prefix_replaces_the_resources_own_as_in_confd() {
        let text = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nprefix = \"myapp\"\n\
                    keys = [\"/db\"]\n";
        let r = load_text(text, "production").expect("valid resource");
        assert_eq!(r.prefix, "/production");
        assert_eq!(r.keys, ["/production/db"]);
        // `/` is a prefix given: confd replaces the resource's with it too.
        let r = load_text(text, "/").expect("valid resource");
        assert_eq!(r.keys, ["/db"]);
        let r = load_text(text, "").expect("valid resource");
        assert_eq!(r.keys, ["/myapp/db"], "no global prefix");
    }

    #[test]
    fn a_resource_without_keys_reads_nothing() {
        let r =
            load_text("[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\n", "").expect("valid resource");
        assert!(r.keys.is_empty());
    }

    #[test]
    fn no_prefix_leaves_keys_as_written() {
        let r = load_text(
            "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/proxy/frontend\"]\n",
            "",
        )
        .expect("valid resource");
        assert_eq!(r.prefix, "");
        assert_eq!(r.keys, ["/proxy/frontend"]);
    }

    #[test]
    fn typo_names_file_line_and_key() {
        let err = load_text(
            "[template]\nsrc = \"a\"\ndset = \"/tmp/a\"\nkeys = [\"/a\"]\n",
            "",
        )
        .expect_err("typo must fail");
        let message = err.to_string();
        assert!(message.contains("app.toml:3:1:"), "{message}");
        assert!(message.contains("dset"), "{message}");
    }

    #[test]
    fn missing_field_is_named() {
        let err =
            load_text("[template]\nsrc = \"a\"\nkeys = [\"/a\"]\n", "").expect_err("missing dest");
        let message = err.to_string();
        assert!(message.contains("app.toml"), "{message}");
        assert!(message.contains("missing field `dest`"), "{message}");
    }

    #[test]
    fn bad_mode_owner_and_timeout_are_named() {
        let base = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n";
        for bad in ["\"rw-r--r--\"", "\"+644\"", "\"0648\"", "\"17777\"", "644"] {
            let err = load_text(&format!("{base}mode = {bad}\n"), "").expect_err("mode");
            assert!(err.to_string().contains("mode"), "{bad}: {err}");
        }
        let err = load_text(&format!("{base}reload_cmd_timeout = 0\n"), "").expect_err("zero");
        assert!(
            err.to_string().contains("`reload_cmd_timeout` is zero"),
            "{err}"
        );
        let err = load_text(&format!("{base}owner = \"no-such-user-x\"\n"), "").expect_err("user");
        assert!(err.to_string().contains("no-such-user-x"), "{err}");
        let err =
            load_text(&format!("{base}check_cmd_timeout = \"soon\"\n"), "").expect_err("timeout");
        assert!(err.to_string().contains("check_cmd_timeout"), "{err}");
    }

    #[test]
    fn uid_and_gid_minus_one_are_the_effective_ids_as_in_confd() {
        let r = load_text(
            "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\nuid = -1\ngid = -1\n",
            "",
        )
        .expect("confd's -1 loads");
        assert_eq!(
            (r.uid, r.gid),
            (
                Some(nix::unistd::geteuid().as_raw()),
                Some(nix::unistd::getegid().as_raw())
            )
        );
    }

    #[test]
    fn owner_and_group_names_resolve() {
        let r = load_text(
            "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\nowner = \"root\"\n\
             group = \"root\"\n",
            "",
        )
        .expect("root exists");
        assert_eq!((r.uid, r.gid), (Some(0), Some(0)));
    }

    #[test]
    fn safety_options_default_off_and_are_read() {
        let base = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n";
        let r = load_text(base, "").expect("valid resource");
        assert!(!r.backup && !r.rollback && !r.create_dest_dirs);
        assert_eq!(r.output_format, None);
        let r = load_text(
            &format!(
                "{base}backup = true\nrollback = true\ncreate_dest_dirs = true\n\
                 output_format = \"yaml\"\n"
            ),
            "",
        )
        .expect("valid resource");
        assert!(r.backup && r.rollback && r.create_dest_dirs);
        assert_eq!(r.output_format, Some(OutputFormat::Yaml));
    }

    #[test]
    fn a_bad_output_format_names_file_line_and_key() {
        let base = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n";
        for bad in ["\"xml\"", "\"JSON\"", "1"] {
            let err =
                load_text(&format!("{base}output_format = {bad}\n"), "").expect_err("not a format");
            let message = err.to_string();
            assert!(message.contains("app.toml:5:"), "{bad}: {message}");
            assert!(message.contains("`output_format`"), "{bad}: {message}");
            assert!(
                message.contains("\"json\", \"yaml\", \"toml\""),
                "{message}"
            );
        }
        let err = load_text(&format!("{base}backup = \"yes\"\n"), "").expect_err("not a bool");
        assert!(err.to_string().contains("app.toml:5:"), "{err}");
    }

    #[test]
    fn durations_past_their_limit_name_file_line_key_and_limit() {
        let base = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n";
        for (line, expected) in [
            (
                "wait = \"300000000000y\"",
                "`wait` = \"300000000000y\": at most 365d",
            ),
            (
                "wait = \"1s:300000000000y\"",
                "`wait` = \"1s:300000000000y\": maximum \"300000000000y\": at most 365d",
            ),
            ("wait = 5", "`wait` = 5 must be a string such as \"2s:10s\""),
            (
                "check_cmd_timeout = \"1d 1s\"",
                "`check_cmd_timeout` = \"1d 1s\": at most 24h",
            ),
            (
                "reload_cmd_timeout = 86401",
                "`reload_cmd_timeout` = 86401: at most 24h",
            ),
            (
                "reload_cmd_timeout = 9223372036854775807",
                "`reload_cmd_timeout` = 9223372036854775807: at most 24h",
            ),
            (
                "check_cmd_timeout = -1",
                "`check_cmd_timeout` = -1: a number of seconds cannot be negative",
            ),
            (
                "check_cmd_timeout = \"0s\"",
                "`check_cmd_timeout` is zero: the command would be killed at once",
            ),
            (
                "uid = 4294967295",
                "`uid` = 4294967295: a number, at least 0 and at most 4294967294",
            ),
            (
                "gid = -2",
                "`gid` = -2: a number, at least 0 and at most 4294967294",
            ),
            (
                "mode = \"10000\"",
                "`mode` = \"10000\" is not an octal file mode such as \"0644\", at most \"7777\"",
            ),
        ] {
            let err = load_text(&format!("{base}{line}\n"), "").expect_err(line);
            assert!(err.to_string().contains("app.toml:5:"), "{line}: {err}");
            assert!(err.message.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn durations_and_ids_at_their_limit_are_accepted() {
        let r = load_text(
            "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n\
             wait = \"365d:365d\"\ncheck_cmd_timeout = \"24h\"\nreload_cmd_timeout = 86400\n\
             uid = 4294967294\ngid = 0\nmode = \"7777\"\n",
            "",
        )
        .expect("valid resource");
        let day = Duration::from_secs(24 * 60 * 60);
        assert_eq!(
            r.wait,
            Some(Wait {
                min: day * 365,
                max: day * 365
            })
        );
        assert_eq!((r.check_timeout, r.reload_timeout), (day, day));
        assert_eq!(
            (r.uid, r.gid, r.mode),
            (Some(4294967294), Some(0), Some(0o7777))
        );
    }

    #[test]
    fn resource_files_in_subdirectories_are_read_and_a_dangling_link_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("conf.d/apps/web")).expect("conf.d");
        std::fs::create_dir_all(dir.path().join("elsewhere")).expect("elsewhere");
        let resource =
            |dest: &str| format!("[template]\nsrc = \"t\"\ndest = \"{dest}\"\nkeys = [\"/a\"]\n");
        std::fs::write(dir.path().join("conf.d/a.toml"), resource("a.conf")).expect("a");
        std::fs::write(
            dir.path().join("conf.d/apps/web/b.toml"),
            resource("b.conf"),
        )
        .expect("b");
        std::fs::write(dir.path().join("elsewhere/c.toml"), resource("c.conf")).expect("c");
        // A linked directory is not entered, as confd's walk does not enter one.
        std::os::unix::fs::symlink(
            dir.path().join("elsewhere"),
            dir.path().join("conf.d/linked"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink("/nonexistent/x.toml", dir.path().join("conf.d/z.toml"))
            .expect("symlink");
        // A ConfigMap mount: the files in a hidden directory, linked from the top.
        let mount = dir.path().join("conf.d/..2026_12_04_20_00_00.1");
        std::fs::create_dir(&mount).expect("mount");
        std::fs::write(mount.join("m.toml"), resource("m.conf")).expect("m");
        std::os::unix::fs::symlink("..2026_12_04_20_00_00.1", dir.path().join("conf.d/..data"))
            .expect("symlink");
        std::os::unix::fs::symlink("..data/m.toml", dir.path().join("conf.d/m.toml"))
            .expect("symlink");
        // An editor's lock file.
        std::os::unix::fs::symlink("root@host.1:1", dir.path().join("conf.d/.#a.toml"))
            .expect("symlink");
        let loaded = load_all(dir.path(), "").expect("conf.d is readable");
        assert_eq!(loaded.len(), 4, "{loaded:?}");
        let dests: Vec<String> = loaded
            .iter()
            .flatten()
            .flatten()
            .map(|r| {
                r.dest
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(dests, ["a.conf", "b.conf", "m.conf"]);
        let dangling = loaded[3].as_ref().expect_err("a link to nothing");
        assert!(dangling.file.ends_with("conf.d/z.toml"), "{dangling}");
        assert!(
            dangling
                .message
                .contains("a symbolic link to /nonexistent/x.toml, which does not exist"),
            "{dangling}"
        );
    }

    #[test]
    fn files_sharing_a_destination_through_a_link_are_all_refused_and_others_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("conf.d")).expect("conf.d");
        std::fs::create_dir(dir.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link"))
            .expect("symlink");
        for (name, dest) in [
            ("a", "real/app.conf"),
            ("b", "link/app.conf"),
            ("c", "real/other.conf"),
        ] {
            std::fs::write(
                dir.path().join(format!("conf.d/{name}.toml")),
                format!("[template]\nsrc = \"t\"\ndest = \"{dest}\"\nkeys = [\"/a\"]\n"),
            )
            .expect("write resource");
        }
        let loaded = load_all(dir.path(), "").expect("conf.d is readable");
        let a = loaded[0].as_ref().expect_err("a shares app.conf");
        assert!(a.file.ends_with("conf.d/a.toml"), "{a}");
        assert!(
            a.message
                .contains("real/app.conf is also the destination of"),
            "{a}"
        );
        assert!(a.message.contains("conf.d/b.toml"), "{a}");
        let b = loaded[1].as_ref().expect_err("b shares app.conf");
        assert!(b.file.ends_with("conf.d/b.toml"), "{b}");
        assert!(b.message.contains("conf.d/a.toml"), "{b}");
        assert!(loaded[2].is_ok(), "{:?}", loaded[2]);
    }

    #[test]
    fn files_sharing_a_destination_under_a_directory_not_made_yet_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("conf.d")).expect("conf.d");
        for (name, dest) in [
            ("a", "new/sub/../app.conf"),
            ("b", "new/./app.conf"),
            ("c", "new/sub/app.conf"),
        ] {
            std::fs::write(
                dir.path().join(format!("conf.d/{name}.toml")),
                format!("[template]\nsrc = \"t\"\ndest = \"{dest}\"\nkeys = [\"/a\"]\n"),
            )
            .expect("write resource");
        }
        let loaded = load_all(dir.path(), "").expect("conf.d is readable");
        let a = loaded[0].as_ref().expect_err("a shares new/app.conf");
        assert!(a.message.contains("conf.d/b.toml"), "{a}");
        let b = loaded[1].as_ref().expect_err("b shares new/app.conf");
        assert!(b.message.contains("conf.d/a.toml"), "{b}");
        assert!(loaded[2].is_ok(), "{:?}", loaded[2]);
    }

    #[test]
    fn join_key_path_behaves_like_go_path_join() {
        assert_eq!(join_key_path(&["/", "", ""]), "/");
        assert_eq!(
            join_key_path(&["/", "/production", "myapp"]),
            "/production/myapp"
        );
        assert_eq!(join_key_path(&["/a/", "/b//c/"]), "/a/b/c");
        assert_eq!(join_key_path(&["", "a"]), "a");
    }

    #[test]
    fn errors_in_a_backend_table_show_the_line_without_credentials() {
        let base = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n";
        for (line, shown) in [
            ("password = 12345678", "password = ***"),
            ("password = \"Pw-PLUGH", "password = ***"),
            ("pasword = \"Pw-PLUGH\"", "pasword = ***"),
            ("kv_version = 300", "kv_version = 300"),
        ] {
            let err = load_text(
                &format!("{base}[backend]\nbackend = \"vault\"\n{line}\n"),
                "",
            )
            .expect_err(line);
            let message = err.to_string();
            assert!(message.contains("app.toml:7:"), "{message}");
            assert!(message.ends_with(&format!(", in `{shown}`")), "{message}");
            assert!(
                !message.contains("PLUGH") && !message.contains("12345678"),
                "{message}"
            );
        }
    }

    #[test]
    fn secret_comes_from_the_template_or_the_backend_table() {
        let base = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n";
        assert!(!load_text(base, "").expect("valid").secret);
        assert!(
            load_text(&format!("{base}secret = true\n"), "")
                .expect("valid")
                .secret
        );
        let r = load_text(
            &format!("{base}[backend]\nbackend = \"env\"\nsecret = true\n"),
            "",
        )
        .expect("valid");
        assert!(r.secret);
        assert_eq!(r.backend, Some(Backend::Env));
    }

    #[test]
    fn a_backend_table_gives_the_resource_its_own_store() {
        let base = "[template]\nsrc = \"a\"\ndest = \"/tmp/a\"\nkeys = [\"/a\"]\n";
        let r = load_text(
            &format!("{base}[backend]\nbackend = \"etcd\"\nnodes = [\"10.0.0.1:2379\"]\n"),
            "",
        )
        .expect("valid resource");
        let Some(Backend::Etcd(options)) = r.backend else {
            panic!("an etcd backend: {:?}", r.backend);
        };
        assert_eq!(options.nodes, ["http://10.0.0.1:2379"]);
        let err = load_text(&format!("{base}[backend]\nbackend = \"etcdd\"\n"), "")
            .expect_err("unknown store");
        assert!(err.to_string().contains("[backend]"), "{err}");
        assert!(err.to_string().contains("etcdd"), "{err}");
        let err = load_text(
            &format!("{base}[backend]\nbackend = \"env\"\nnode = []\n"),
            "",
        )
        .expect_err("typo");
        assert!(err.to_string().contains("app.toml:7:1"), "{err}");
        let err = load_text(
            &format!("{base}[backend]\nbackend = \"env\"\ninterval = 5\n"),
            "",
        )
        .expect_err("not a store's setting");
        assert!(err.to_string().contains("app.toml:7:1"), "{err}");
        assert!(err.to_string().contains("`interval`"), "{err}");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary;
    use crate::settings::keys_of;

    /// The keys a resource file may hold, in `[template]` and `[backend]`.
    fn resource_keys() -> &'static [&'static str] {
        let keys: Vec<&'static str> = keys_of::<TemplateTable>()
            .iter()
            .chain(keys_of::<crate::store::backend::StoreFields>())
            .copied()
            .collect();
        keys.leak()
    }

    /// Loads `text` as `conf.d/app.toml`: no panic, and an error names the file, with
    /// `:line:column` when the text is not TOML at all.
    fn check(text: &str) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("app.toml");
        std::fs::write(&file, text).expect("write resource");
        if let Err(e) = load(&file, &dir.path().join("templates"), "/global") {
            let message = e.to_string();
            let name = file.display().to_string();
            prop_assert!(message.starts_with(&name), "{message}");
            if text.parse::<toml::Table>().is_err() {
                let place = message[name.len()..].split(' ').next().unwrap_or_default();
                let mut parts = place.trim_end_matches(':').split(':').skip(1);
                prop_assert!(
                    parts
                        .next()
                        .is_some_and(|line| line.parse::<usize>().is_ok())
                        && parts
                            .next()
                            .is_some_and(|column| column.parse::<usize>().is_ok()),
                    "{message}"
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn resource_files_of_known_keys_load_or_fail_naming_the_file(
            text in arbitrary::toml_text(
                resource_keys(),
                &["[template]", "[[template]]", "[backend]", ""],
            )
        ) {
            check(&text)?;
        }

        #[test]
        fn any_text_loads_or_fails_naming_the_file(text in any::<String>()) {
            check(&text)?;
        }
    }
}
