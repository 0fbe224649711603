//! The connection manager's `access_log` ↔ [`mesh_core::AccessLog`].
//!
//! What maps: Envoy's file access log (`envoy.access_loggers.file`, any path; `/dev/stdout` is
//! standard output) and the stdout/stderr loggers (`envoy.access_loggers.stdout` /
//! `stderr`), each either with no format (Envoy's default format string), that default string
//! spelled out, or the JSON dictionary of [`ACCESS_LOG_JSON_FIELDS`] (what our control plane
//! sends). Refused, naming the field: access-log filters, other loggers (gRPC, OpenTelemetry,
//! ...), custom format strings and dictionaries, `omit_empty_values`, formatter extensions.
//! Logging changes no request, but a log that silently vanished would be a lie about what the
//! proxy writes, so the NACK says what we cannot write.

use envoy_types::pb::envoy::config::accesslog::v3 as alpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3 as stream;
use envoy_types::pb::google::protobuf as pbw;
use mesh_core::{
    AccessLog, AccessLogFormat, ACCESS_LOG_ENVOY_DEFAULT_FORMAT, ACCESS_LOG_JSON_FIELDS,
    ACCESS_LOG_STDOUT,
};
use prost::Name;

use super::{pack, unpack, ConvertError};

/// The name Envoy knows its file access logger by.
pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";

/// A listener's access logs, as its connection manager lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccessLogs(pub(crate) Vec<AccessLog>);

impl TryFrom<&[alpb::AccessLog]> for AccessLogs {
    type Error = ConvertError;

    fn try_from(logs: &[alpb::AccessLog]) -> Result<Self, ConvertError> {
        logs.iter()
            .enumerate()
            .map(|(i, log)| one_from(log).map_err(|e| e.within(format!("access_log[{i}]"))))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl AccessLogs {
    /// The connection manager's `access_log` list (the reverse of `try_from`).
    pub(crate) fn to_proto(&self) -> Vec<alpb::AccessLog> {
        self.0
            .iter()
            .map(|log| alpb::AccessLog {
                name: FILE_ACCESS_LOG.to_string(),
                filter: None,
                config_type: Some(alpb::access_log::ConfigType::TypedConfig(pack(
                    &file::FileAccessLog {
                        path: log.path.clone(),
                        access_log_format: match log.format {
                            // No format: Envoy's default, which is what Text is.
                            AccessLogFormat::Text => None,
                            AccessLogFormat::Json => {
                                Some(file::file_access_log::AccessLogFormat::LogFormat(
                                    core::SubstitutionFormatString {
                                        format: Some(
                                            core::substitution_format_string::Format::JsonFormat(
                                                json_dictionary(),
                                            ),
                                        ),
                                        ..Default::default()
                                    },
                                ))
                            }
                        },
                    },
                ))),
            })
            .collect()
    }
}

fn one_from(log: &alpb::AccessLog) -> Result<AccessLog, ConvertError> {
    if log.filter.is_some() {
        return Err(ConvertError::unsupported("filter", "access-log filters"));
    }
    let Some(alpb::access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
        return Err(ConvertError::new("typed_config", "missing"));
    };
    if any.type_url == file::FileAccessLog::type_url() {
        let f: file::FileAccessLog = unpack(any, "typed_config")?;
        if f.path.trim().is_empty() {
            return Err(ConvertError::new("typed_config.path", "must not be empty"));
        }
        #[allow(deprecated)] // the deprecated forms are still what many control planes send
        let format = match &f.access_log_format {
            None => AccessLogFormat::Text,
            Some(file::file_access_log::AccessLogFormat::LogFormat(sfs)) => {
                format_from(sfs).map_err(|e| e.within("typed_config.log_format"))?
            }
            Some(file::file_access_log::AccessLogFormat::Format(s)) => {
                text_from(s, "typed_config.format")?
            }
            Some(
                file::file_access_log::AccessLogFormat::JsonFormat(j)
                | file::file_access_log::AccessLogFormat::TypedJsonFormat(j),
            ) => json_from(j, "typed_config.json_format")?,
        };
        return Ok(AccessLog::new(f.path, format));
    }
    let (path, sfs) = if any.type_url == stream::StdoutAccessLog::type_url() {
        let s: stream::StdoutAccessLog = unpack(any, "typed_config")?;
        let stream::stdout_access_log::AccessLogFormat::LogFormat(f) =
            s.access_log_format.unwrap_or_else(default_log_format);
        (ACCESS_LOG_STDOUT, f)
    } else if any.type_url == stream::StderrAccessLog::type_url() {
        let s: stream::StderrAccessLog = unpack(any, "typed_config")?;
        let f = match s.access_log_format {
            Some(stream::stderr_access_log::AccessLogFormat::LogFormat(f)) => f,
            None => core::SubstitutionFormatString::default(),
        };
        ("/dev/stderr", f)
    } else {
        return Err(ConvertError::unsupported(
            "typed_config",
            format!(
                "access logger {:?} ({}); the file and stdout/stderr loggers are supported",
                log.name, any.type_url
            ),
        ));
    };
    let format = format_from(&sfs).map_err(|e| e.within("typed_config.log_format"))?;
    Ok(AccessLog::new(path, format))
}

fn default_log_format() -> stream::stdout_access_log::AccessLogFormat {
    stream::stdout_access_log::AccessLogFormat::LogFormat(Default::default())
}

/// A `log_format`: nothing (the default text), the default text spelled out, or our JSON.
fn format_from(sfs: &core::SubstitutionFormatString) -> Result<AccessLogFormat, ConvertError> {
    use core::substitution_format_string::Format;
    if sfs.omit_empty_values {
        return Err(ConvertError::unsupported(
            "omit_empty_values",
            "omitting empty values",
        ));
    }
    if !sfs.formatters.is_empty() {
        return Err(ConvertError::unsupported(
            "formatters",
            "formatter extensions",
        ));
    }
    #[allow(deprecated)]
    match &sfs.format {
        None => Ok(AccessLogFormat::Text),
        Some(Format::TextFormat(s)) => text_from(s, "text_format"),
        Some(Format::TextFormatSource(src)) => match &src.specifier {
            Some(core::data_source::Specifier::InlineString(s)) => {
                text_from(s, "text_format_source.inline_string")
            }
            _ => Err(ConvertError::unsupported(
                "text_format_source",
                "a format read from a file or the environment (inline_string only)",
            )),
        },
        Some(Format::JsonFormat(j)) => json_from(j, "json_format"),
    }
}

fn text_from(s: &str, path: &str) -> Result<AccessLogFormat, ConvertError> {
    if s == ACCESS_LOG_ENVOY_DEFAULT_FORMAT {
        Ok(AccessLogFormat::Text)
    } else {
        Err(ConvertError::unsupported(
            path,
            "custom format strings (the sidecar writes Envoy's default format, or JSON)",
        ))
    }
}

fn json_from(j: &pbw::Struct, path: &str) -> Result<AccessLogFormat, ConvertError> {
    if j == &json_dictionary() {
        Ok(AccessLogFormat::Json)
    } else {
        Err(ConvertError::unsupported(
            path,
            "JSON dictionaries other than the mesh's (keys start_time, method, path, protocol, \
             response_code, response_flags, ... as in mesh_core::ACCESS_LOG_JSON_FIELDS)",
        ))
    }
}

/// [`ACCESS_LOG_JSON_FIELDS`] as Envoy's `json_format`.
fn json_dictionary() -> pbw::Struct {
    pbw::Struct {
        fields: ACCESS_LOG_JSON_FIELDS
            .iter()
            .map(|(key, op)| {
                (
                    (*key).to_string(),
                    pbw::Value {
                        kind: Some(pbw::value::Kind::StringValue((*op).to_string())),
                    },
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file_log(format: Option<file::file_access_log::AccessLogFormat>) -> alpb::AccessLog {
        alpb::AccessLog {
            name: FILE_ACCESS_LOG.into(),
            filter: None,
            config_type: Some(alpb::access_log::ConfigType::TypedConfig(pack(
                &file::FileAccessLog {
                    path: "/var/log/mesh.log".into(),
                    access_log_format: format,
                },
            ))),
        }
    }

    #[test]
    fn both_formats_round_trip() {
        let logs = AccessLogs(vec![
            AccessLog::new("-", AccessLogFormat::Text),
            AccessLog::new("/var/log/mesh.json", AccessLogFormat::Json),
        ]);
        let proto = logs.to_proto();
        assert_eq!(proto[0].name, "envoy.access_loggers.file");
        assert_eq!(AccessLogs::try_from(proto.as_slice()).unwrap(), logs);
    }

    #[test]
    fn envoys_default_string_and_the_stdout_logger_are_understood() {
        let spelled =
            file::file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
                format: Some(core::substitution_format_string::Format::TextFormatSource(
                    core::DataSource {
                        specifier: Some(core::data_source::Specifier::InlineString(
                            ACCESS_LOG_ENVOY_DEFAULT_FORMAT.into(),
                        )),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            });
        let got = AccessLogs::try_from([file_log(Some(spelled))].as_slice()).unwrap();
        assert_eq!(
            got.0,
            [AccessLog::new("/var/log/mesh.log", AccessLogFormat::Text)]
        );
        let stdout = alpb::AccessLog {
            name: "envoy.access_loggers.stdout".into(),
            filter: None,
            config_type: Some(alpb::access_log::ConfigType::TypedConfig(pack(
                &stream::StdoutAccessLog::default(),
            ))),
        };
        let got = AccessLogs::try_from([stdout].as_slice()).unwrap();
        assert_eq!(got.0, [AccessLog::default()]);
    }

    #[test]
    fn what_we_cannot_write_is_refused_by_path() {
        #[allow(deprecated)]
        let custom = file::file_access_log::AccessLogFormat::Format("%RESPONSE_CODE%\n".into());
        let e =
            AccessLogs::try_from([file_log(None), file_log(Some(custom))].as_slice()).unwrap_err();
        assert_eq!(e.path, "access_log[1].typed_config.format");
        assert!(e.reason.contains("custom format strings"), "{e}");

        let mut other_json = json_dictionary();
        other_json.fields.remove("route_name");
        let json =
            file::file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
                format: Some(core::substitution_format_string::Format::JsonFormat(
                    other_json,
                )),
                ..Default::default()
            });
        let e = AccessLogs::try_from([file_log(Some(json))].as_slice()).unwrap_err();
        assert_eq!(e.path, "access_log[0].typed_config.log_format.json_format");

        let mut filtered = file_log(None);
        filtered.filter = Some(alpb::AccessLogFilter::default());
        let e = AccessLogs::try_from([filtered].as_slice()).unwrap_err();
        assert_eq!(e.path, "access_log[0].filter");

        let grpc = alpb::AccessLog {
            name: "envoy.access_loggers.http_grpc".into(),
            filter: None,
            config_type: Some(alpb::access_log::ConfigType::TypedConfig(pbw::Any {
                type_url: "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig".into(),
                value: Vec::new(),
            })),
        };
        let e = AccessLogs::try_from([grpc].as_slice()).unwrap_err();
        assert_eq!(e.path, "access_log[0].typed_config");
        assert!(e.reason.contains("http_grpc"), "{e}");
    }
}
