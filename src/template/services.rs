//! consul-template's catalog functions, for resources that read the Consul store:
//! `service(name, tag?, passing?)` and `services()`.
//!
//! They read the instances the Consul store keeps under `/_consul/services` (see
//! `store::consul`), so the resource's `keys` must list `/_consul/services/<name>` (or
//! `/_consul/services` for every service); the error says so when it does not.

use std::collections::{BTreeMap, BTreeSet};

use tera::{Kwargs, State, TeraResult, Value};

use super::{Registry, View, register_function, with_view};
use crate::store::catalog::{Instance, SERVICES_ROOT};

/// Registers the catalog functions on `tera`.
pub(super) fn register(tera: &mut Registry) {
    register_function(tera, "service", &["name", "tag", "passing"], service);
    register_function(tera, "services", &[], services);
}

/// `service(name, tag?, passing=true)`: the instances of a service, sorted by node and ID, as
/// `{name, id, node, address, port, tags, meta, passing}`. Only instances whose health checks
/// all pass, unless `passing=false`; only those with `tag`, when given.
fn service(kwargs: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    let name = kwargs.must_get::<&str>("name")?;
    let tag = kwargs.get::<&str>("tag")?;
    let passing_only = kwargs.get::<bool>("passing")?.unwrap_or(true);
    with_view(|view| {
        let root = format!("{SERVICES_ROOT}/{name}");
        require_visible(view, &root, &format!("service(name=\"{name}\")"))?;
        let instances = instances(view, &format!("{root}/"))?;
        Ok(instances
            .into_iter()
            .filter(|instance| !passing_only || instance.passing)
            .filter(|instance| tag.is_none_or(|tag| instance.tags.iter().any(|t| t == tag)))
            .map(|instance| Value::from_serializable(&instance))
            .collect())
    })
}

/// `services()`: every service with at least one instance, sorted by name, as
/// `{name, tags}` (the tags of all its instances).
fn services(_: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    with_view(|view| {
        require_visible(view, SERVICES_ROOT, "services()")?;
        let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for instance in instances(view, &format!("{SERVICES_ROOT}/"))? {
            tags.entry(instance.name).or_default().extend(instance.tags);
        }
        Ok(tags
            .into_iter()
            .map(|(name, tags)| {
                Value::from_serializable(&serde_json::json!({"name": name, "tags": tags}))
            })
            .collect())
    })
}

fn require_visible(view: &View, root: &str, call: &str) -> TeraResult<()> {
    if view.visible(root) {
        Ok(())
    } else {
        Err(tera::Error::message(format!(
            "{call} reads {root}: add \"{root}\" to this resource's keys (with the consul store)"
        )))
    }
}

/// The instances stored under `root`, in key order (service, node, ID).
fn instances(view: &View, root: &str) -> TeraResult<Vec<Instance>> {
    view.snapshot
        .entries
        .range(root.to_string()..)
        .take_while(|(key, _)| key.starts_with(root))
        .map(|(key, value)| {
            serde_json::from_str(value)
                .map_err(|e| tera::Error::message(format!("{key} is not a service instance: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::view;
    use super::super::{Renderer, Resolver};

    fn instance(id: &str, node: &str, port: u16, tags: &[&str], passing: bool) -> (String, String) {
        (
            format!("/_consul/services/web/{node}/{id}"),
            serde_json::json!({
                "name": "web", "id": id, "node": node, "address": format!("10.0.0.{port}"),
                "port": port, "tags": tags, "meta": {}, "passing": passing,
            })
            .to_string(),
        )
    }

    fn render(source: &str, keys: &[&str]) -> Result<String, crate::template::TemplateError> {
        let entries = [
            instance("web-1", "n1", 1, &["blue"], true),
            instance("web-2", "n2", 2, &["green"], false),
            instance("web-3", "n3", 3, &["green"], true),
        ];
        let entries: Vec<(&str, &str)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Renderer::from_source("t", source, Resolver::System)?.render(view(&entries, "", keys))
    }

    const LIST: &str =
        "{% for s in service(name=\"web\") %}{{ s.address }}:{{ s.port }} {% endfor %}";

    #[test]
    fn service_lists_the_passing_instances_unless_told_otherwise() {
        assert_eq!(
            render(LIST, &["/_consul/services/web"]).expect("renders"),
            "10.0.0.1:1 10.0.0.3:3 "
        );
        let all = "{% for s in service(name=\"web\", passing=false) %}{{ s.id }} {% endfor %}";
        assert_eq!(
            render(all, &["/_consul/services"]).expect("renders"),
            "web-1 web-2 web-3 "
        );
        let green = "{% for s in service(name=\"web\", tag=\"green\") %}{{ s.id }} {% endfor %}";
        assert_eq!(
            render(green, &["/_consul/services"]).expect("renders"),
            "web-3 "
        );
    }

    #[test]
    fn services_lists_names_with_their_tags() {
        let source =
            "{% for s in services() %}{{ s.name }}={{ s.tags | join(sep=\",\") }}{% endfor %}";
        assert_eq!(
            render(source, &["/_consul/services"]).expect("renders"),
            "web=blue,green"
        );
    }

    #[test]
    fn a_service_outside_the_keys_says_which_key_to_add() {
        let err = render(LIST, &["/app"]).expect_err("not listed");
        assert!(
            err.message
                .contains("add \"/_consul/services/web\" to this resource's keys"),
            "{err}"
        );
    }
}
