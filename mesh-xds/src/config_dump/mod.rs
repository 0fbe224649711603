//! Config dumps in the shape of Envoy's `/config_dump`, shared by the sidecar's admin endpoint
//! (static and xDS-fed) and the control plane's (per node).
//!
//! The output is `{"configs": [ListenersConfigDump, RoutesConfigDump, ClustersConfigDump,
//! EndpointsConfigDump]}`, each with Envoy's `@type` and field names (`static_listeners`,
//! `dynamic_listeners[].active_state` (`warming_state` while the listener warms),
//! `dynamic_route_configs`, `dynamic_active_clusters`, `dynamic_warming_clusters`,
//! `dynamic_endpoint_configs`, …), every dynamic resource with its `version_info` and
//! `last_updated` (RFC 3339, as protobuf JSON writes a `Timestamp`). The resource bodies are the
//! mesh-core types as serde writes them (what our layers run), not the xDS protos.
//!
//! [`DumpQuery`] is Envoy's query: `?resource=dynamic_listeners` returns just the entries of that
//! field, each tagged with its entry type (`…ListenersConfigDump.DynamicListener`), and
//! `?name_regex=` keeps the resources whose name the regex matches (anywhere in the name).
//! Differences: endpoint sets are always included (Envoy needs `?include_eds`), and `?mask=` is
//! refused rather than ignored.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

#[cfg(feature = "control-plane")]
mod snapshot;
mod sources;

const ADMIN: &str = "type.googleapis.com/envoy.admin.v3.";

/// One resource in a dump.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpEntry {
    /// The resource's name (what `?name_regex=` matches).
    pub name: String,
    /// The version it last changed with (dynamic resources).
    pub version: Option<String>,
    /// When it was last changed or loaded.
    pub last_updated: Option<SystemTime>,
    /// The resource itself, as JSON.
    pub body: Value,
}

impl DumpEntry {
    /// An entry of `resource`, serialized with serde (an error becomes `{"error": ...}` rather
    /// than a missing entry).
    pub fn of<T: serde::Serialize>(
        name: impl Into<String>,
        resource: &T,
        version: Option<String>,
        last_updated: Option<SystemTime>,
    ) -> Self {
        Self {
            name: name.into(),
            version,
            last_updated,
            body: serde_json::to_value(resource)
                .unwrap_or_else(|e| json!({ "error": e.to_string() })),
        }
    }
}

/// The static and dynamic resources of one type, and the type's last accepted version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeDump {
    /// The type's version (`version_info` of the last accepted response), when it has one.
    pub version_info: Option<String>,
    /// Resources from the bootstrap.
    pub static_entries: Vec<DumpEntry>,
    /// Resources from xDS.
    pub dynamic_entries: Vec<DumpEntry>,
    /// Resources from xDS not live yet, waiting for what they depend on (Envoy's warming
    /// listeners, `warming_state`, and `dynamic_warming_clusters`).
    pub warming_entries: Vec<DumpEntry>,
}

/// Listeners, route tables, clusters and endpoint sets, ready to render.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigDump {
    /// Listeners (LDS).
    pub listeners: TypeDump,
    /// Route tables (RDS).
    pub routes: TypeDump,
    /// Clusters (CDS).
    pub clusters: TypeDump,
    /// Endpoint sets (EDS).
    pub endpoints: TypeDump,
}

/// How one type appears in Envoy's dump: the section's message, its static and dynamic fields,
/// and the key the resource body goes under.
struct Shape {
    section: &'static str,
    static_field: &'static str,
    static_entry: &'static str,
    dynamic_field: &'static str,
    dynamic_entry: &'static str,
    body_key: &'static str,
    /// The field of warming entries, when not the dynamic one (listeners keep theirs in
    /// `dynamic_listeners`, with a `warming_state`).
    warming_field: Option<&'static str>,
    /// Whether the section carries the type's `version_info` (listeners and clusters do).
    versioned: bool,
}

const SHAPES: [Shape; 4] = [
    Shape {
        section: "ListenersConfigDump",
        static_field: "static_listeners",
        static_entry: "ListenersConfigDump.StaticListener",
        dynamic_field: "dynamic_listeners",
        dynamic_entry: "ListenersConfigDump.DynamicListener",
        body_key: "listener",
        warming_field: None,
        versioned: true,
    },
    Shape {
        section: "RoutesConfigDump",
        static_field: "static_route_configs",
        static_entry: "RoutesConfigDump.StaticRouteConfig",
        dynamic_field: "dynamic_route_configs",
        dynamic_entry: "RoutesConfigDump.DynamicRouteConfig",
        body_key: "route_config",
        warming_field: None,
        versioned: false,
    },
    Shape {
        section: "ClustersConfigDump",
        static_field: "static_clusters",
        static_entry: "ClustersConfigDump.StaticCluster",
        dynamic_field: "dynamic_active_clusters",
        dynamic_entry: "ClustersConfigDump.DynamicCluster",
        body_key: "cluster",
        warming_field: Some("dynamic_warming_clusters"),
        versioned: true,
    },
    Shape {
        section: "EndpointsConfigDump",
        static_field: "static_endpoint_configs",
        static_entry: "EndpointsConfigDump.StaticEndpointConfig",
        dynamic_field: "dynamic_endpoint_configs",
        dynamic_entry: "EndpointsConfigDump.DynamicEndpointConfig",
        body_key: "endpoint_config",
        warming_field: None,
        versioned: false,
    },
];

/// The `?resource=` values this dump knows (Envoy's repeated fields of the four sections).
pub fn resource_fields() -> impl Iterator<Item = &'static str> {
    SHAPES
        .iter()
        .flat_map(|s| [Some(s.static_field), Some(s.dynamic_field), s.warming_field])
        .flatten()
}

/// How an entry is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Static,
    Active,
    Warming,
}

/// `entries`, each with how it is written.
fn tagged(entries: &[DumpEntry], kind: Kind) -> Vec<(&DumpEntry, Kind)> {
    entries.iter().map(|e| (e, kind)).collect()
}

/// Why a dump query was refused (the admin endpoint answers 400, or 404 for an unknown
/// resource field, as Envoy does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpQueryError {
    /// `?name_regex=` does not compile.
    #[error("name_regex: {0}")]
    BadRegex(String),
    /// `?resource=` names no field of the dump.
    #[error("resource {0:?} is not a field of this config dump; try one of: {fields}", fields = resource_fields().collect::<Vec<_>>().join(", "))]
    UnknownResource(String),
    /// A query parameter this dump does not implement.
    #[error("{0} is not supported by this config dump")]
    Unsupported(&'static str),
}

/// Envoy's `/config_dump` query: `resource`, `name_regex` (and `include_eds`, accepted: the
/// endpoint sets are always in). Other parameters (such as the control plane's `node`) are left
/// to the caller.
#[derive(Debug, Clone, Default)]
pub struct DumpQuery {
    /// Only the entries of this field (`dynamic_listeners`, `static_clusters`, …).
    pub resource: Option<String>,
    /// Only resources whose name this matches.
    pub name_regex: Option<regex::Regex>,
}

impl DumpQuery {
    /// Parses a URI query string (`resource=dynamic_listeners&name_regex=out.*`).
    pub fn parse(query: Option<&str>) -> Result<Self, DumpQueryError> {
        let mut q = Self::default();
        for (key, value) in query_pairs(query) {
            match key.as_str() {
                "resource" => q.resource = Some(value),
                "name_regex" => {
                    q.name_regex = Some(
                        regex::Regex::new(&value)
                            .map_err(|e| DumpQueryError::BadRegex(e.to_string()))?,
                    );
                }
                "mask" => return Err(DumpQueryError::Unsupported("mask")),
                _ => {}
            }
        }
        Ok(q)
    }

    fn keeps(&self, name: &str) -> bool {
        self.name_regex.as_ref().is_none_or(|r| r.is_match(name))
    }
}

/// The `(key, value)` pairs of a URI query, percent-decoded (`+` is a space, as in forms).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

impl ConfigDump {
    /// Moves the dynamic listeners and clusters whose names `listeners` and `clusters` hold
    /// to the warming entries (what the sidecar received but does not serve yet).
    pub fn mark_warming(
        &mut self,
        listeners: &std::collections::BTreeSet<String>,
        clusters: &std::collections::BTreeSet<String>,
    ) {
        for (ty, names) in [
            (&mut self.listeners, listeners),
            (&mut self.clusters, clusters),
        ] {
            let (warming, active) = std::mem::take(&mut ty.dynamic_entries)
                .into_iter()
                .partition(|e| names.contains(&e.name));
            ty.dynamic_entries = active;
            ty.warming_entries.extend::<Vec<DumpEntry>>(warming);
        }
    }

    fn types(&self) -> [&TypeDump; 4] {
        [
            &self.listeners,
            &self.routes,
            &self.clusters,
            &self.endpoints,
        ]
    }

    /// The dump as Envoy writes it, filtered by `query`.
    pub fn render(&self, query: &DumpQuery) -> Result<Value, DumpQueryError> {
        let mut configs = Vec::new();
        let mut found = query.resource.is_none();
        for (shape, ty) in SHAPES.iter().zip(self.types()) {
            let mut dynamic = tagged(&ty.dynamic_entries, Kind::Active);
            let mut fields = vec![(
                shape.static_field,
                shape.static_entry,
                tagged(&ty.static_entries, Kind::Static),
            )];
            match shape.warming_field {
                None => dynamic.extend(tagged(&ty.warming_entries, Kind::Warming)),
                Some(field) => fields.push((
                    field,
                    shape.dynamic_entry,
                    tagged(&ty.warming_entries, Kind::Warming),
                )),
            }
            fields.insert(1, (shape.dynamic_field, shape.dynamic_entry, dynamic));
            if let Some(resource) = &query.resource {
                // Just the entries of one field, each tagged with its own type.
                for (field, entry_type, entries) in fields {
                    if field != resource {
                        continue;
                    }
                    found = true;
                    for (e, kind) in entries.into_iter().filter(|(e, _)| query.keeps(&e.name)) {
                        let mut v = entry(shape, e, kind);
                        v.insert("@type".into(), format!("{ADMIN}{entry_type}").into());
                        configs.push(Value::Object(v));
                    }
                }
                continue;
            }
            let mut section = Map::new();
            section.insert("@type".into(), format!("{ADMIN}{}", shape.section).into());
            if let (true, Some(v)) = (shape.versioned, &ty.version_info) {
                section.insert("version_info".into(), v.clone().into());
            }
            for (field, _, entries) in fields {
                let list: Vec<Value> = entries
                    .into_iter()
                    .filter(|(e, _)| query.keeps(&e.name))
                    .map(|(e, kind)| Value::Object(entry(shape, e, kind)))
                    .collect();
                // Envoy (protobuf JSON) leaves empty lists out.
                if !list.is_empty() {
                    section.insert(field.into(), list.into());
                }
            }
            configs.push(Value::Object(section));
        }
        match (found, &query.resource) {
            (false, Some(r)) => Err(DumpQueryError::UnknownResource(r.clone())),
            _ => Ok(json!({ "configs": configs })),
        }
    }
}

/// One entry in Envoy's shape: static `{listener, last_updated}`; dynamic listeners
/// `{name, active_state: {version_info, listener, last_updated}}` (`warming_state` while
/// warming); other dynamic resources `{version_info, cluster, last_updated}`.
fn entry(shape: &Shape, e: &DumpEntry, kind: Kind) -> Map<String, Value> {
    let dynamic = kind != Kind::Static;
    let mut state = Map::new();
    if let (true, Some(v)) = (dynamic, &e.version) {
        state.insert("version_info".into(), v.clone().into());
    }
    state.insert(shape.body_key.into(), e.body.clone());
    if let Some(t) = e.last_updated {
        state.insert("last_updated".into(), timestamp(t).into());
    }
    if dynamic && shape.body_key == "listener" {
        let mut l = Map::new();
        l.insert("name".into(), e.name.clone().into());
        let key = if kind == Kind::Warming {
            "warming_state"
        } else {
            "active_state"
        };
        l.insert(key.into(), Value::Object(state));
        return l;
    }
    state
}

/// A time as protobuf JSON writes a `Timestamp`: RFC 3339 in UTC, here to the millisecond.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests;
