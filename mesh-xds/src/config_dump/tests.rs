#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn dump() -> ConfigDump {
    let entry = |name: &str, v: &str| DumpEntry {
        name: name.into(),
        version: Some(v.into()),
        last_updated: Some(at(1_700_000_000)),
        body: json!({ "name": name }),
    };
    ConfigDump {
        listeners: TypeDump {
            version_info: Some("l2".into()),
            static_entries: vec![DumpEntry {
                name: "admin".into(),
                version: None,
                last_updated: Some(at(0)),
                body: json!({ "name": "admin" }),
            }],
            dynamic_entries: vec![entry("outbound", "l1"), entry("inbound", "l2")],
            warming_entries: Vec::new(),
        },
        routes: TypeDump {
            version_info: Some("r1".into()),
            dynamic_entries: vec![entry("outbound", "r1")],
            ..TypeDump::default()
        },
        clusters: TypeDump {
            version_info: Some("c1".into()),
            dynamic_entries: vec![entry("hello", "c1")],
            ..TypeDump::default()
        },
        endpoints: TypeDump {
            dynamic_entries: vec![entry("hello", "e1")],
            ..TypeDump::default()
        },
    }
}

#[test]
fn the_whole_dump_has_envoys_sections_fields_and_timestamps() {
    let v = dump().render(&DumpQuery::default()).unwrap();
    let configs = v["configs"].as_array().unwrap();
    let types: Vec<&str> = configs
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        ]
    );
    let l = &configs[0];
    assert_eq!(l["version_info"], "l2");
    assert_eq!(l["static_listeners"][0]["listener"]["name"], "admin");
    assert_eq!(
        l["static_listeners"][0]["last_updated"],
        "1970-01-01T00:00:00.000Z"
    );
    assert_eq!(l["dynamic_listeners"][0]["name"], "outbound");
    let active = &l["dynamic_listeners"][0]["active_state"];
    assert_eq!(active["version_info"], "l1");
    assert_eq!(active["listener"]["name"], "outbound");
    assert_eq!(active["last_updated"], "2023-11-14T22:13:20.000Z");
    assert!(
        configs[1].get("version_info").is_none(),
        "RoutesConfigDump has none"
    );
    assert_eq!(
        configs[1]["dynamic_route_configs"][0]["route_config"]["name"],
        "outbound"
    );
    assert_eq!(configs[2]["version_info"], "c1");
    assert_eq!(
        configs[2]["dynamic_active_clusters"][0]["version_info"],
        "c1"
    );
    assert_eq!(
        configs[2]["dynamic_active_clusters"][0]["cluster"]["name"],
        "hello"
    );
    let eds = &configs[3]["dynamic_endpoint_configs"][0];
    assert_eq!(
        (&eds["version_info"], &eds["endpoint_config"]["name"]),
        (&json!("e1"), &json!("hello"))
    );
    // Empty lists are left out, as protobuf JSON does.
    assert!(
        configs[2].get("static_clusters").is_none(),
        "{}",
        configs[2]
    );
}

#[test]
fn resource_returns_just_that_fields_entries_tagged_with_their_type() {
    let q = DumpQuery::parse(Some("resource=dynamic_listeners")).unwrap();
    let v = dump().render(&q).unwrap();
    let configs = v["configs"].as_array().unwrap();
    assert_eq!(configs.len(), 2);
    for c in configs {
        assert_eq!(
            c["@type"],
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener"
        );
    }
    assert_eq!(configs[1]["name"], "inbound");
    let q = DumpQuery::parse(Some("resource=dynamic_active_clusters")).unwrap();
    let v = dump().render(&q).unwrap();
    assert_eq!(v["configs"][0]["cluster"]["name"], "hello");
    assert_eq!(
        v["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster"
    );
    // A known field with nothing in it is an empty list, not an error.
    let q = DumpQuery::parse(Some("resource=static_clusters")).unwrap();
    assert_eq!(dump().render(&q).unwrap(), json!({ "configs": [] }));
}

#[test]
fn name_regex_keeps_matching_names_alone_or_with_resource() {
    let q = DumpQuery::parse(Some("name_regex=%5Eout")).unwrap();
    let v = dump().render(&q).unwrap();
    let l = &v["configs"][0];
    assert_eq!(l["dynamic_listeners"].as_array().unwrap().len(), 1);
    assert!(l.get("static_listeners").is_none());
    assert!(v["configs"][2].get("dynamic_active_clusters").is_none());
    let q = DumpQuery::parse(Some("resource=dynamic_listeners&name_regex=bound$")).unwrap();
    assert_eq!(
        dump().render(&q).unwrap()["configs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn bad_queries_are_refused_with_the_reason() {
    let e = dump()
        .render(&DumpQuery::parse(Some("resource=dynamic_nothing")).unwrap())
        .unwrap_err();
    assert!(matches!(e, DumpQueryError::UnknownResource(_)));
    assert!(
        e.to_string().contains("dynamic_listeners"),
        "names the fields: {e}"
    );
    let e = DumpQuery::parse(Some("name_regex=(")).unwrap_err();
    assert!(matches!(e, DumpQueryError::BadRegex(_)), "{e}");
    let e = DumpQuery::parse(Some("mask=version_info")).unwrap_err();
    assert_eq!(e, DumpQueryError::Unsupported("mask"));
    // include_eds and unknown parameters are accepted.
    assert!(DumpQuery::parse(Some("include_eds&node=x")).is_ok());
}

#[test]
fn query_pairs_are_percent_decoded() {
    assert_eq!(
        query_pairs(Some("a=%5Eb+c&d&=e")),
        [
            ("a".to_owned(), "^b c".to_owned()),
            ("d".to_owned(), String::new()),
            (String::new(), "e".to_owned()),
        ]
    );
    assert!(query_pairs(None).is_empty());
}

#[test]
fn warming_listeners_get_a_warming_state_and_warming_clusters_their_own_field() {
    let mut d = dump();
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
    d.mark_warming(&names(&["inbound"]), &names(&["hello"]));
    let v = d.render(&DumpQuery::default()).unwrap();
    let listeners = &v["configs"][0]["dynamic_listeners"];
    assert!(listeners[0]["active_state"].is_object(), "{v}");
    assert_eq!(listeners[1]["name"], "inbound");
    assert_eq!(listeners[1]["warming_state"]["version_info"], "l2", "{v}");
    assert!(listeners[1].get("active_state").is_none(), "{v}");
    let clusters = &v["configs"][2];
    assert!(clusters.get("dynamic_active_clusters").is_none(), "{v}");
    assert_eq!(
        clusters["dynamic_warming_clusters"][0]["cluster"]["name"],
        "hello"
    );
    let q = DumpQuery::parse(Some("resource=dynamic_warming_clusters")).unwrap();
    let v = d.render(&q).unwrap();
    assert_eq!(
        v["configs"][0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster"
    );
}
