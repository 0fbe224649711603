//! The control plane: filled by the xDS server issue.
