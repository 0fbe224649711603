//! The connection manager's switches that change what routing sees (the authority's port, the
//! path's normalization) ↔ [`mesh_core::StripHostPort`].
//!
//! `strip_matching_host_port` / `strip_any_host_port` are carried; the path normalizations our
//! router does not implement (`normalize_path`, `merge_slashes`, escaped-slash handling other
//! than keeping them, `strip_trailing_host_dot`) are refused, so that a listener never routes
//! differently in the sidecar than in Envoy.

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_core::StripHostPort;

use super::ConvertError;

/// The routing-relevant switches of one `HttpConnectionManager`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HcmMatching {
    /// What happens to the port of the request's authority.
    pub(crate) strip_host_port: StripHostPort,
}

impl TryFrom<&hcm::HttpConnectionManager> for HcmMatching {
    type Error = ConvertError;

    fn try_from(m: &hcm::HttpConnectionManager) -> Result<Self, ConvertError> {
        use hcm::http_connection_manager::{
            PathWithEscapedSlashesAction as Slashes, StripPortMode,
        };
        let slashes = Slashes::try_from(m.path_with_escaped_slashes_action);
        let refuse = [
            (
                m.normalize_path.as_ref().is_some_and(|b| b.value),
                "normalize_path",
                "RFC 3986 path normalization",
            ),
            (m.merge_slashes, "merge_slashes", "merging slashes"),
            (
                !matches!(
                    slashes,
                    Ok(Slashes::ImplementationSpecificDefault | Slashes::KeepUnchanged)
                ),
                "path_with_escaped_slashes_action",
                "actions on escaped slashes other than keeping them",
            ),
            (
                m.strip_trailing_host_dot,
                "strip_trailing_host_dot",
                "stripping the host's trailing dot",
            ),
        ];
        if let Some((_, path, what)) = refuse.into_iter().find(|(bad, _, _)| *bad) {
            return Err(ConvertError::unsupported(path, what));
        }
        let any = matches!(
            m.strip_port_mode,
            Some(StripPortMode::StripAnyHostPort(true))
        );
        let strip_host_port = match (m.strip_matching_host_port, any) {
            (true, true) => {
                return Err(ConvertError::new(
                    "strip_matching_host_port",
                    "only one of strip_matching_host_port and strip_any_host_port can be set",
                ))
            }
            (true, false) => StripHostPort::Matching,
            (false, true) => StripHostPort::Any,
            (false, false) => StripHostPort::None,
        };
        Ok(Self { strip_host_port })
    }
}

impl HcmMatching {
    /// Sets these switches on `m` (the reverse of `try_from`).
    pub(crate) fn apply_to(self, m: &mut hcm::HttpConnectionManager) {
        use hcm::http_connection_manager::StripPortMode;
        m.strip_matching_host_port = self.strip_host_port == StripHostPort::Matching;
        m.strip_port_mode = (self.strip_host_port == StripHostPort::Any)
            .then_some(StripPortMode::StripAnyHostPort(true));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use envoy_types::pb::google::protobuf::BoolValue;

    #[test]
    fn strip_modes_round_trip() {
        for mode in [
            StripHostPort::None,
            StripHostPort::Matching,
            StripHostPort::Any,
        ] {
            let mut m = hcm::HttpConnectionManager::default();
            HcmMatching {
                strip_host_port: mode,
            }
            .apply_to(&mut m);
            let back = HcmMatching::try_from(&m).unwrap();
            assert_eq!(back.strip_host_port, mode);
        }
    }

    #[test]
    fn both_strip_modes_or_an_unsupported_normalization_are_refused_by_path() {
        use hcm::http_connection_manager::StripPortMode;
        let both = hcm::HttpConnectionManager {
            strip_matching_host_port: true,
            strip_port_mode: Some(StripPortMode::StripAnyHostPort(true)),
            ..Default::default()
        };
        let e = HcmMatching::try_from(&both).unwrap_err();
        assert_eq!(e.path, "strip_matching_host_port");
        let normalize = hcm::HttpConnectionManager {
            normalize_path: Some(BoolValue { value: true }),
            ..Default::default()
        };
        assert_eq!(
            HcmMatching::try_from(&normalize).unwrap_err().path,
            "normalize_path"
        );
        let merge = hcm::HttpConnectionManager {
            merge_slashes: true,
            ..Default::default()
        };
        assert_eq!(
            HcmMatching::try_from(&merge).unwrap_err().path,
            "merge_slashes"
        );
        let keep = hcm::HttpConnectionManager {
            normalize_path: Some(BoolValue { value: false }),
            ..Default::default()
        };
        assert_eq!(
            HcmMatching::try_from(&keep).unwrap().strip_host_port,
            StripHostPort::None
        );
    }
}
