//! The service catalog as keys: where a store that offers services (Consul) puts them, and
//! what the template functions `service()` and `services()` read. The store writes it and the
//! templates and resources read it, so it belongs to neither side.
//!
//! Each instance of a service is the key `/_consul/services/<service>/<node>/<id>`, holding
//! the instance as JSON ([`Instance`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the service catalog appears among the keys.
pub const SERVICES_ROOT: &str = "/_consul/services";

/// One instance of a service, as the template functions see it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    /// The service's name.
    pub name: String,
    /// The instance's ID.
    pub id: String,
    /// The node it runs on.
    pub node: String,
    /// Its address: the service's own, or its node's when the service has none (as
    /// consul-template does).
    pub address: String,
    /// Its port.
    pub port: u16,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its metadata.
    pub meta: BTreeMap<String, String>,
    /// True when every health check of the instance (and of its node) passes.
    pub passing: bool,
}
