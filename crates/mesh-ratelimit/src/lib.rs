//! # mesh-ratelimit
//!
//! Local rate limiting as a tower Layer (`RateLimitLayer` / `RateLimit<S>`): token buckets per
//! listener, route or request descriptor, in reject mode (429 with `retry-after`, the default) or
//! wait mode (bounded queueing). Rules reload through mesh-core's `Reload` contract, keeping the
//! buckets of rules that did not change.
//!
//! This crate is filled by the rate-limit issue; until then it only states what it owns.
