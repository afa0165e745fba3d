//! `reconfd check`: the settings, every resource and every template loaded as the daemon loads
//! them, without reading any store, and each problem printed with its place.
//!
//! Everything Tera can know without data is found when a template is parsed with the parts it
//! uses: syntax, unknown tags, filters, tests, functions and components, arguments passed by
//! position or not taken by reconfd's functions, and missing or cyclic includes. What depends on data (a key the template reads,
//! an argument of the wrong type) shows only in a render, which `--data` adds.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::plan::{plural, render_limits};
use crate::render::{read_data, render_as_synced};
use crate::resource;
use crate::secrets;
use crate::settings::Settings;
use crate::store::Snapshot;
use crate::template::{Library, Resolver};

/// Checks the resources and templates of `settings`, rendering them from `data` when given,
/// and prints each problem and a summary line on standard output. Exit status 0 when all is
/// well, 1 when a resource has a problem, 2 when the confdir or the data file is unusable.
pub async fn run(settings: &Settings, data: Option<&Path>) -> ExitCode {
    let loaded = match resource::load_all(&settings.confdir, &settings.prefix) {
        Ok(loaded) => loaded,
        Err(e) => {
            crate::stdout::print_line(&secrets::mask(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    let snapshot: Option<Arc<Snapshot>> = match data {
        Some(data) => match read_data(data).await {
            Ok(snapshot) => Some(snapshot),
            // The message names the file.
            Err(message) => {
                crate::stdout::print_line(&secrets::mask(&message));
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let library = Library::read(&settings.confdir.join("templates"));
    let mut problems = Problems::default();
    let mut resources = 0;
    let mut failed_files = 0;
    for file in &loaded {
        let file_resources = match file {
            Ok(file_resources) => file_resources,
            Err(e) => {
                problems.report(&e.to_string(), None);
                failed_files += 1;
                continue;
            }
        };
        let mut failed = false;
        for resource in file_resources {
            resources += 1;
            let resource = &crate::render::as_synced(resource.clone(), settings);
            // Masking the values a secret resource reads in what is printed about it.
            let _secrets = snapshot
                .as_ref()
                .map(|snapshot| crate::render::secrets_of(resource, snapshot, settings));
            let outcome = library
                .renderer(&resource.src, Resolver::System)
                .map_err(|e| e.to_string())
                .and_then(|renderer| match &snapshot {
                    Some(snapshot) => render_as_synced(
                        &renderer,
                        resource,
                        Arc::clone(snapshot),
                        render_limits(resource, settings),
                    )
                    .map(drop),
                    None => Ok(()),
                });
            if let Err(message) = outcome {
                problems.report(&message, Some(&resource.file));
                failed = true;
            }
        }
        failed_files += usize::from(failed);
    }
    let files = loaded.len();
    let rendered = match data {
        Some(data) => format!(", rendered from {}", data.display()),
        None => String::new(),
    };
    let verdict = match problems.count {
        0 => "no problems".to_string(),
        count => format!(
            "{count} {} in {failed_files} {}",
            plural(count, "problem", "problems"),
            plural(failed_files, "file", "files")
        ),
    };
    crate::stdout::print_line(&format!(
        "reconfd check: {resources} {} in {files} {}{rendered}: {verdict}",
        plural(resources, "resource", "resources"),
        plural(files, "file", "files"),
    ));
    if failed_files == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The problems printed so far. A shared part's fault reaches every resource that uses it and
/// is printed once.
#[derive(Default)]
struct Problems {
    printed: BTreeSet<String>,
    count: usize,
}

impl Problems {
    /// Prints each line of `text` (one problem per line, each with its place) not printed
    /// yet, naming the resource `file` whose template it was found in.
    fn report(&mut self, text: &str, file: Option<&Path>) {
        for line in secrets::mask(text).lines() {
            if self.printed.insert(line.to_string()) {
                match file {
                    Some(file) => {
                        crate::stdout::print_line(&format!("{line} (resource {})", file.display()))
                    }
                    None => crate::stdout::print_line(line),
                }
                self.count += 1;
            }
        }
    }
}
