//! The ADS client: filled by the xDS client issue.
