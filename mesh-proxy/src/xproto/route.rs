//! Routing an RPC with the router's own matching: the request is presented to the
//! [`RouteTable`] as `POST /{service}/{method}` with no authority (a `*` virtual host takes
//! it) and its header fields and attachments as headers. Fields whose name or value HTTP
//! cannot carry are left out of matching.

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request};
use mesh_core::MeshError;
use mesh_router::{Decision, RouteTable};
use mesh_xprotocol::RpcHeader;

/// The route decision for an RPC; `MeshError::NoRoute` when nothing matches (or the service
/// and method cannot form a path).
pub(crate) fn decide(table: &RouteTable, header: &RpcHeader) -> Result<Decision, MeshError> {
    let no_route = || MeshError::NoRoute {
        authority: header.service.clone(),
        path: format!("/{}/{}", header.service, header.method),
    };
    let view = view(header).ok_or_else(no_route)?;
    table.decide(&view)
}

/// The HTTP view of an RPC.
fn view(header: &RpcHeader) -> Option<Request<()>> {
    let path = format!("/{}/{}", header.service, header.method);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .body(())
        .ok()?;
    let headers = req.headers_mut();
    for (k, v) in &header.attachments {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    Some(req)
}

#[cfg(test)]
mod tests {
    use mesh_core::RouteConfiguration;

    use super::*;

    fn table() -> RouteTable {
        let rc: RouteConfiguration = serde_json::from_value(serde_json::json!({
            "name": "rpc",
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": { "prefix": "/com.example.Hello:1.0/",
                                   "headers": [{ "name": "zone", "exact": "gz" }] },
                        "route": { "cluster": "hello-gz" }
                    },
                    {
                        "match": { "prefix": "/com.example.Hello:1.0/" },
                        "route": { "cluster": "hello" }
                    }
                ]
            }]
        }))
        .unwrap();
        RouteTable::compile(&rc, &Default::default()).unwrap()
    }

    fn rpc(service: &str, attachments: &[(&str, &str)]) -> RpcHeader {
        RpcHeader {
            service: service.into(),
            method: "sayHi".into(),
            attachments: attachments
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn routes_by_service_and_attachment() {
        let t = table();
        let d = decide(&t, &rpc("com.example.Hello:1.0", &[])).unwrap();
        assert_eq!(&*d.cluster.0, "hello");
        let d = decide(&t, &rpc("com.example.Hello:1.0", &[("zone", "gz")])).unwrap();
        assert_eq!(&*d.cluster.0, "hello-gz");
    }

    #[test]
    fn unknown_or_unpathable_service_is_no_route() {
        let t = table();
        for service in ["com.example.Other:1.0", "has space", ""] {
            let e = decide(&t, &rpc(service, &[])).unwrap_err();
            assert_eq!(e.code(), "no_route", "{service:?}");
        }
    }

    #[test]
    fn fields_http_cannot_carry_are_skipped() {
        let t = table();
        let d = decide(
            &t,
            &rpc(
                "com.example.Hello:1.0",
                &[("bad name", "x"), ("zone", "gz")],
            ),
        )
        .unwrap();
        assert_eq!(&*d.cluster.0, "hello-gz");
    }
}
