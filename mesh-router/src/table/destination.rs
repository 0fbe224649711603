//! Where a route sends its requests: one cluster, weighted clusters, or a cluster named by a
//! request header.

use http::{HeaderMap, HeaderName};
use mesh_core::extensions::TargetCluster;
use mesh_core::{ClusterSpecifier, ValidationError};
use rand::Rng;

/// Where a route sends requests, with cluster names shared rather than copied per request.
#[derive(Debug)]
pub(super) enum Destination {
    One(TargetCluster),
    /// Clusters with the running sum of weights (zero-weight clusters are never picked).
    Weighted(Vec<(TargetCluster, u64)>),
    Header(HeaderName),
}

impl Destination {
    pub(super) fn compile(spec: &ClusterSpecifier) -> Result<Self, ValidationError> {
        Ok(match spec {
            ClusterSpecifier::Cluster(c) => Self::One(TargetCluster::new(c.as_str())),
            ClusterSpecifier::WeightedClusters(w) => {
                let mut sum = 0u64;
                Self::Weighted(
                    w.iter()
                        .map(|c| {
                            sum += u64::from(c.weight);
                            (TargetCluster::new(c.name.as_str()), sum)
                        })
                        .collect(),
                )
            }
            ClusterSpecifier::ClusterHeader(h) => Self::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| ValidationError::new("cluster_header", "not a header name"))?,
            ),
        })
    }

    pub(super) fn pick(&self, headers: &HeaderMap) -> Option<TargetCluster> {
        match self {
            Self::One(c) => Some(c.clone()),
            Self::Weighted(w) => {
                let total = w.last().map_or(0, |(_, sum)| *sum);
                let r = rand::rng().random_range(0..total.max(1));
                let i = w.partition_point(|(_, sum)| *sum <= r);
                w.get(i).map(|(c, _)| c.clone())
            }
            Self::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(TargetCluster::new),
        }
    }
}
