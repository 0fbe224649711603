//! `/config_dump` of a live mesh: two dynamic sidecars (one SotW, one delta) fed by our control
//! plane list every resource type with per-resource versions and filter by `?resource=` and
//! `?name_regex=`; the control plane dumps the same per node; real Envoy, fed by the same
//! control plane, is the oracle of the shape.
#![allow(clippy::unwrap_used)]

#[path = "admin/mesh.rs"]
mod mesh;

use std::time::Duration;

use mesh::{assert_versioned, get, get_json, list, section, Mesh, CDS, EDS, LDS, RDS};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_every_type_with_versions_and_filters() {
    let mesh = Mesh::start().await;
    let cp = get_json(mesh.cp_admin, "/snapshots").await;

    for (sidecar, node) in [(&mesh.hello, "hello-1"), (&mesh.client, "client-1")] {
        let admin = sidecar.admin_addr();
        let dump = get_json(admin, "/config_dump").await;
        let listeners = list(section(&dump, LDS), "dynamic_listeners");
        assert_versioned(listeners, node);
        let names: Vec<&str> = listeners
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"outbound"), "{node}: {names:?}");
        assert_eq!(
            listeners[0]["active_state"]["listener"]["name"], listeners[0]["name"],
            "the body is the listener"
        );
        assert_versioned(list(section(&dump, RDS), "dynamic_route_configs"), node);
        assert_versioned(list(section(&dump, CDS), "dynamic_active_clusters"), node);
        assert_versioned(list(section(&dump, EDS), "dynamic_endpoint_configs"), node);
        assert!(
            section(&dump, CDS)["version_info"].is_string(),
            "{node}: the CDS version: {dump}"
        );
        let hello_eds = list(section(&dump, EDS), "dynamic_endpoint_configs")
            .iter()
            .find(|e| e["endpoint_config"]["cluster_name"] == "hello");
        assert!(hello_eds.is_some(), "{node}: hello's endpoints: {dump}");

        // The versions are the control plane's: SotW, the type's version; delta, the
        // resource's own.
        let cp_node = cp["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap();
        let cp_clusters = cp_node["set"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "cluster")
            .unwrap();
        let cluster = &list(section(&dump, CDS), "dynamic_active_clusters")[0];
        let name = cluster["cluster"]["name"].as_str().unwrap();
        let expected = if node == "hello-1" {
            cp_clusters["version"].clone()
        } else {
            cp_clusters["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r[0] == name)
                .unwrap()[1]
                .clone()
        };
        assert_eq!(cluster["version_info"], expected, "{node}: {cp_clusters}");

        // ?resource= returns just that field's entries, tagged with their type.
        let only = get_json(admin, "/config_dump?resource=dynamic_listeners").await;
        let entries = list(&only, "configs");
        assert_eq!(entries.len(), listeners.len());
        for e in entries {
            assert_eq!(
                e["@type"],
                "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener"
            );
            assert!(e["active_state"]["version_info"].is_string(), "{e}");
        }
        let only = get_json(admin, "/config_dump?resource=dynamic_endpoint_configs").await;
        assert!(list(&only, "configs")
            .iter()
            .all(|e| e["endpoint_config"].is_object()));
        // ?name_regex= keeps the resources whose name matches.
        let named = get_json(admin, "/config_dump?name_regex=%5Eoutbound%24").await;
        let kept = list(section(&named, LDS), "dynamic_listeners");
        assert_eq!(kept.len(), 1, "{named}");
        assert_eq!(kept[0]["name"], "outbound");
        let (status, body) = get(admin, "/config_dump?resource=dynamic_nothing").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("dynamic_active_clusters"), "{body}");
    }

    // The control plane: the same shape per node, with the snapshot's versions.
    let dump = get_json(mesh.cp_admin, "/config_dump?node=client-1").await;
    assert_versioned(list(section(&dump, LDS), "dynamic_listeners"), "cp");
    assert_versioned(list(section(&dump, RDS), "dynamic_route_configs"), "cp");
    assert_versioned(list(section(&dump, CDS), "dynamic_active_clusters"), "cp");
    assert_versioned(list(section(&dump, EDS), "dynamic_endpoint_configs"), "cp");
    let sidecar = get_json(mesh.client.admin_addr(), "/config_dump").await;
    let names = |d: &Value| -> Vec<String> {
        list(section(d, CDS), "dynamic_active_clusters")
            .iter()
            .map(|c| c["cluster"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&dump),
        names(&sidecar),
        "what is set is what the node holds"
    );
    let only = get_json(
        mesh.cp_admin,
        "/config_dump?node=client-1&resource=dynamic_active_clusters",
    )
    .await;
    assert_eq!(list(&only, "configs").len(), names(&dump).len());
    let (status, body) = get(mesh.cp_admin, "/config_dump").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("client-1") && body.contains("hello-1"),
        "{body}"
    );
    let (status, _) = get(mesh.cp_admin, "/config_dump?node=client-1&name_regex=(").await;
    assert_eq!(status, 400);

    // The static sidecar's dump has the static_* entries (tests/sidecar_static.rs); the xDS
    // status moved to /xds.
    let xds = get_json(mesh.client.admin_addr(), "/xds").await;
    assert!(xds["connection"]["connected"].is_string(), "{xds}");
    mesh.stop().await;
}

/// The keys of the first entry of `field` in the section `section` of `dump` (and of its
/// `active_state`, for listeners).
fn entry_keys(dump: &Value, section: &str, field: &str) -> Vec<String> {
    let sec = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .unwrap()
                .ends_with(&format!(".{section}"))
        })
        .unwrap_or_else(|| panic!("no {section} in {dump}"));
    let first = &list(sec, field)[0];
    let mut keys: Vec<String> = first.as_object().unwrap().keys().cloned().collect();
    if let Some(state) = first.get("active_state").and_then(Value::as_object) {
        keys.extend(state.keys().map(|k| format!("active_state.{k}")));
    }
    keys.sort();
    keys
}

/// Real Envoy, fed by the same control plane, is the oracle of the dump's shape: the same
/// section types, field names, entry keys and `?resource=` entry types (bodies differ: ours are
/// mesh-core's model). Envoy does not fill `version_info`/`last_updated` of endpoint sets
/// (`not-implemented-hide` in its API); ours has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shape_matches_real_envoys() {
    let Some(_) = mesh_testkit::require_envoy() else {
        return;
    };
    let mesh = Mesh::start().await;
    let envoy = mesh_testkit::EnvoyProcess::start(&mesh_testkit::ads_bootstrap(
        "envoy-1", mesh.xds, "GRPC",
    ))
    .unwrap();
    let envoy_admin = envoy.admin_addr();
    // Envoy is /ready once its first LDS and CDS are in; the endpoint sets may follow.
    let (theirs, last) = tokio::task::spawn_blocking(move || {
        let mut last = String::new();
        let got =
            mesh_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
                last = match mesh_testkit::http_get(envoy_admin, "/config_dump?include_eds") {
                    Ok((_, body)) => body,
                    Err(e) => format!("{e:#}"),
                };
                let v: Value = serde_json::from_str(&last).ok()?;
                let eds = v["configs"]
                    .as_array()?
                    .iter()
                    .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(EDS)))?;
                eds.get("dynamic_endpoint_configs").is_some().then_some(v)
            });
        (got, last)
    })
    .await
    .unwrap();
    let theirs = theirs.unwrap_or_else(|| {
        panic!(
            "Envoy never got its endpoint sets; last dump:\n{last}\nEnvoy's log:\n{}",
            envoy.logs()
        )
    });
    let ours = get_json(mesh.client.admin_addr(), "/config_dump").await;

    for (sec, field) in [
        (LDS, "dynamic_listeners"),
        (RDS, "dynamic_route_configs"),
        (CDS, "dynamic_active_clusters"),
        (EDS, "dynamic_endpoint_configs"),
    ] {
        let (o, t) = (
            entry_keys(&ours, sec, field),
            entry_keys(&theirs, sec, field),
        );
        let extra: Vec<&String> = o.iter().filter(|k| !t.contains(k)).collect();
        let missing: Vec<&String> = t.iter().filter(|k| !o.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "{field}: Envoy has {missing:?} we lack (ours {o:?})"
        );
        let allowed = sec == EDS
            && extra
                .iter()
                .all(|k| *k == "version_info" || *k == "last_updated");
        assert!(
            extra.is_empty() || allowed,
            "{field}: we have {extra:?} Envoy lacks (its {t:?})"
        );
        if sec == LDS || sec == CDS {
            assert!(section(&theirs, sec)["version_info"].is_string());
            assert!(section(&ours, sec)["version_info"].is_string());
        }
        // ?resource= tags each entry with the same type as Envoy does.
        let path = format!("/config_dump?resource={field}&include_eds");
        let p2 = path.clone();
        let (_, body) =
            tokio::task::spawn_blocking(move || mesh_testkit::http_get(envoy_admin, &p2).unwrap())
                .await
                .unwrap();
        let theirs_only: Value = serde_json::from_str(&body).unwrap();
        let ours_only = get_json(mesh.client.admin_addr(), &path).await;
        assert_eq!(
            list(&ours_only, "configs")[0]["@type"],
            list(&theirs_only, "configs")[0]["@type"],
            "{field}"
        );
    }
    let (theirs_status, body) = tokio::task::spawn_blocking(move || {
        mesh_testkit::http_get(envoy_admin, "/config_dump?resource=dynamic_nothing").unwrap()
    })
    .await
    .unwrap();
    let (ours_status, _) = get(
        mesh.client.admin_addr(),
        "/config_dump?resource=dynamic_nothing",
    )
    .await;
    assert_eq!(
        ours_status, theirs_status,
        "an unknown resource, as Envoy answers: {body}"
    );
    drop(envoy);
    mesh.stop().await;
}
