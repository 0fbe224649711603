//! YAML for the model, the one way every file of ours is read and written.
//!
//! The model's enums are externally tagged, which JSON writes as one-key maps
//! (`lb_policy: {ring_hash: {}}`). serde_yaml 0.9 would want YAML tags (`!ring_hash`) instead,
//! so YAML goes through `singleton_map_recursive` here, and the files read the same as the JSON
//! (and as Envoy's own YAML) do.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses `text` into `T`. The error names the field path, line and column.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_yaml::Error> {
    serde_yaml::with::singleton_map_recursive::deserialize(serde_yaml::Deserializer::from_str(text))
}

/// Writes `value` as YAML that [`from_str`] reads back.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_yaml::Error> {
    let mut out = Vec::new();
    let mut ser = serde_yaml::Serializer::new(&mut out);
    serde_yaml::with::singleton_map_recursive::serialize(value, &mut ser)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
