//! Authorization: who may call a listener's service, and which paths and methods (the subset of
//! Envoy's RBAC HTTP filter the mesh uses; mesh-xds converts Envoy's `RBAC` config into this
//! and refuses matchers outside it).
//!
//! Semantics are Envoy's: a policy matches a request when **any** of its principals and **any**
//! of its permissions match. With [`RbacAction::Allow`] a request is allowed when some policy
//! matches (no policies: nothing is allowed); with [`RbacAction::Deny`] it is denied when some
//! policy matches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError};
use crate::{HeaderMatcher, StringMatch};

/// A listener's authorization rules (Envoy's `envoy.filters.http.rbac`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rbac {
    /// What a matching policy does.
    #[serde(default)]
    pub action: RbacAction,
    /// Named policies (a denial is counted and logged under the policy name that decided it, or
    /// `no_policy_matched`).
    #[serde(default)]
    pub policies: BTreeMap<String, RbacPolicy>,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacAction {
    /// Allow matching requests, deny the rest.
    #[default]
    Allow,
    /// Deny matching requests, allow the rest.
    Deny,
}

/// One policy: who (principals) may do what (permissions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacPolicy {
    /// Any one of these must match the caller.
    pub principals: Vec<Principal>,
    /// Any one of these must match the request.
    pub permissions: Vec<Permission>,
}

/// A caller condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// Anyone, with or without a certificate.
    Any(bool),
    /// A caller whose verified certificate's URI SAN (its SPIFFE identity) matches (Envoy's
    /// `authenticated.principal_name`). A caller without a certificate never matches.
    Authenticated(StringMatch),
    /// Any one of these (Envoy's `or_ids`).
    OrIds(Vec<Principal>),
    /// The negation (Envoy's `not_id`).
    NotId(Box<Principal>),
}

/// A request condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Any request.
    Any(bool),
    /// The path without its query (Envoy's `url_path`).
    UrlPath(StringMatch),
    /// A request header, `:method` and `:authority` included (Envoy's `header`).
    Header(HeaderMatcher),
    /// Any one of these (Envoy's `or_rules`).
    OrRules(Vec<Permission>),
    /// All of these (Envoy's `and_rules`).
    AndRules(Vec<Permission>),
    /// The negation (Envoy's `not_rule`).
    NotRule(Box<Permission>),
}

impl Validate for Rbac {
    fn validate(&self) -> Result<(), ValidationError> {
        for (name, policy) in &self.policies {
            let at = format!("policies[{name}]");
            if policy.principals.is_empty() {
                return Err(ValidationError::new(
                    format!("{at}.principals"),
                    "empty (a policy needs at least one principal)",
                ));
            }
            if policy.permissions.is_empty() {
                return Err(ValidationError::new(
                    format!("{at}.permissions"),
                    "empty (a policy needs at least one permission)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_reads_from_yaml_and_empty_policies_are_refused() {
        let rbac: Rbac = crate::yaml::from_str(
            r#"
action: ALLOW
policies:
  orders-may-read:
    principals:
      - authenticated: { exact: "spiffe://mesh.local/ns/default/sa/orders" }
    permissions:
      - header: { name: ":method", exact: GET }
"#,
        )
        .unwrap();
        rbac.validate().unwrap();
        assert_eq!(rbac.action, RbacAction::Allow);
        let mut bad = rbac.clone();
        bad.policies
            .values_mut()
            .for_each(|p| p.permissions.clear());
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("policies[orders-may-read].permissions"),
            "{err}"
        );
    }
}
