//! The ADS client.
