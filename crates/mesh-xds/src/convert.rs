//! proto ↔ mesh-core conversion, in one place: filled by the xDS client issue.
