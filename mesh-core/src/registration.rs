//! `Registration`: one instance of a service as a registry (etcd) holds it.
//!
//! The record lives in the model because both sides use it: the sidecar's registration API
//! writes it, the control plane's etcd source reads it, and neither should import the other.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The value of a registration key, `<prefix>/services/<service>/<ip:port>` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// IP address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Relative weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Zone (locality).
    #[serde(default)]
    pub zone: String,
}

fn one() -> u32 {
    1
}

impl Registration {
    /// A registration of `addr` with weight 1 and no zone.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            address: addr.ip(),
            port: addr.port(),
            weight: 1,
            metadata: BTreeMap::new(),
            zone: String::new(),
        }
    }

    /// Its key under `prefix`: `<prefix>/services/<service>/<ip:port>`.
    pub fn key(&self, prefix: &str, service: &str) -> String {
        format!(
            "{}/services/{service}/{}",
            prefix.trim_end_matches('/'),
            SocketAddr::new(self.address, self.port)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_key_names_service_and_address_and_the_json_defaults_weight() {
        let reg = Registration::new("127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            reg.key("/mesh/", "orders"),
            "/mesh/services/orders/127.0.0.1:9001"
        );
        let parsed: Registration =
            serde_yaml::from_str(r#"{"address": "10.0.0.1", "port": 80}"#).unwrap();
        assert_eq!((parsed.weight, parsed.zone.as_str()), (1, ""));
        assert!(serde_yaml::from_str::<Registration>(
            r#"{"address": "10.0.0.1", "port": 80, "x": 1}"#
        )
        .is_err());
    }
}
