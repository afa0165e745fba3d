//! reconfd renders configuration files from key/value stores and swaps them in safely.
//!
//! The data flows one way: [`settings`] (flags, environment, settings file) name the
//! [`resource`]s (confd's `conf.d/*.toml`); each resource reads keys from a [`store`] snapshot,
//! is rendered by [`template`], and is brought in line with the file on disk by [`reconcile`]
//! (compare, stage, check, swap, reload; commands run through [`command`]). A controller per
//! store runs that once, on a timer, or on every change the store reports; [`process`] runs
//! the controllers, handles signals and tells systemd through [`notify`]; in exec mode it runs
//! the service as its child ([`exec`]) and reaps orphans ([`reaper`]). Every duration a
//! user gives is checked against [`limits`] when it is read, and every text written out passes
//! through [`secrets`].

// The library exists for the binary and its tests; its documentation is for reconfd's
// developers (`cargo doc --document-private-items`), where links to private items resolve.
#![allow(rustdoc::private_intra_doc_links)]

mod announce;
#[cfg(test)]
mod arbitrary;
pub mod check;
pub mod cli;
mod command;
mod controller;
pub mod convert;
mod descriptors;
mod dns;
mod exec;
mod limits;
pub mod manual;
mod notify;
mod plan;
pub mod process;
mod reaper;
pub mod reconcile;
pub mod render;
mod report;
mod resource;
pub mod secrets;
pub mod settings;
mod stage;
mod status;
mod stdout;
pub mod store;
mod template;
mod wait;
