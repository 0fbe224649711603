//! # mesh-lb
//!
//! Clusters at run time: endpoint sets, load-balancing policies (round robin, random, least
//! request, ring hash, Maglev, locality-aware), active health checks and outlier detection,
//! circuit breakers, and the pooled upstream client. `LoadBalanceLayer` reads the target cluster
//! from the request extensions, picks an endpoint, records it, and sends the request over a pooled
//! connection. Clusters (CDS) and endpoint sets (EDS) reload through mesh-core's `Reload`.
//!
//! This crate is filled by the lb issue; until then it only states what it owns.
