//! The view of a cluster that health checking and outlier detection work through: its name,
//! its endpoints and the rebuild of its endpoint set. The cluster implements it, so those
//! modules depend on this trait rather than on the cluster's state.

use mesh_core::Shared;

use crate::connector::EndpointMap;

/// What a cluster lends its health checker and its outlier detector.
pub(crate) trait HealthTarget: Send + Sync + 'static {
    /// The cluster's name (for logs).
    fn cluster_name(&self) -> &str;

    /// The live state of every endpoint, by address.
    fn endpoint_map(&self) -> &Shared<EndpointMap>;

    /// Recomputes the endpoint set from the current assignment and health, at once (off the
    /// data path).
    fn rebuild(&self);

    /// Asks for a rebuild after a health change seen on the data path: the cluster's
    /// maintenance task does it when there is one, otherwise it happens at once.
    fn request_rebuild(&self);
}
