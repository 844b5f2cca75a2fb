//! The Concourse resource protocol: what arrives on stdin and what goes to stdout.
//! <https://concourse-ci.org/implementing-resource-types.html>

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::reference::Digest;
use crate::source::{Settings, Source};

/// One request, for any of the three commands; each command checks what it needs.
#[derive(Debug, Default, Deserialize)]
pub struct Request {
    pub(crate) source: Option<Source>,
    pub(crate) version: Option<VersionIn>,
    pub(crate) params: Option<serde_json::Value>,
}

/// The `params` of a command: their type, and the names they understand (for "did you mean").
pub(crate) trait Params: serde::de::DeserializeOwned + Default {
    const FIELDS: &'static [&'static str];
}

/// A version as Concourse hands it back: both fields optional, checked by the command.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct VersionIn {
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
}

/// The version `check` was given: its tag, and its digest when that is a valid one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cursor {
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A version as dockhand emits it: `{"tag": "...", "digest": "sha256:..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetadataField {
    pub name: String,
    pub value: String,
}

/// The answer of `in` and `out`.
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub version: Version,
    pub metadata: Vec<MetadataField>,
}

/// Keys understood at the top level and inside `version`, for "did you mean".
const TOP_FIELDS: &[&str] = &["source", "version", "params"];
const VERSION_FIELDS: &[&str] = &["tag", "digest"];

impl Request {
    /// The source, resolved: what the commands work from (they never see the raw form).
    pub(crate) fn settings(&self) -> Result<Settings, Error> {
        self.source
            .as_ref()
            .ok_or_else(|| Error::field("source", "missing from the request"))?
            .resolve()
    }

    /// `source.debug`: whether the binaries log at debug level.
    pub fn debug(&self) -> bool {
        self.source.as_ref().is_some_and(|s| s.debug)
    }

    /// The cursor of `check`. Any cursor is accepted, as registry-image-resource accepts
    /// it: a digest that is not a valid one (another resource type's, a hand-written one)
    /// matches nothing, and the tag still places the cursor in selection mode.
    pub(crate) fn cursor(&self) -> Option<Cursor> {
        let version = self.version.as_ref()?;
        let digest = version.digest.as_deref().and_then(|d| match d.parse() {
            Ok(digest) => Some(digest),
            Err(e) => {
                tracing::info!(
                    "version.digest {} is not a digest ({e}); it matches nothing",
                    crate::redact::quote(d, 80)
                );
                None
            }
        });
        if version.tag.is_none() && digest.is_none() {
            return None;
        }
        Some(Cursor {
            tag: version.tag.clone(),
            digest,
        })
    }
}

/// Parses stdin. Unknown fields are logged as warnings (with a suggestion when a known field
/// is close); wrong types and malformed JSON are errors that name the field.
pub fn parse_request(input: &[u8]) -> Result<Request, Error> {
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::EmptyRequest);
    }
    let value: serde_json::Value = serde_json::from_slice(input).map_err(Error::NotJson)?;
    let found = match &value {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Null => Some("null"),
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
    };
    if let Some(found) = found {
        return Err(Error::NotAnObject { found });
    }
    deserialize_reporting(value, "", &[])
}

/// Reads `params` into `T` (defaults when absent), with the same field errors and unknown
/// field warnings as the request itself.
pub(crate) fn parse_params<T: Params>(params: Option<&serde_json::Value>) -> Result<T, Error> {
    match params {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(value) => deserialize_reporting(value.clone(), "params.", T::FIELDS),
    }
}

fn deserialize_reporting<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
    params: &[&str],
) -> Result<T, Error> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let parsed: Result<T, _> =
        serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
    let parsed = parsed.map_err(|e| Error::Field {
        field: format!("{prefix}{}", track.path())
            .trim_end_matches('.')
            .to_string(),
        source: e.into(),
    })?;
    for path in unknown {
        // serde_ignored marks the inside of an Option with `?`.
        let path = format!("{prefix}{}", path.replace("?.", ""));
        // `params` is read by each command into its own type.
        if prefix.is_empty() && path.starts_with("params") {
            continue;
        }
        match suggestion(&path, params) {
            Some(close) => tracing::warn!("ignoring unknown field {path} (did you mean {close}?)"),
            None => tracing::warn!("ignoring unknown field {path}"),
        }
    }
    Ok(parsed)
}

/// The known field closest to the last segment of `path`, when it is close enough.
fn suggestion(path: &str, params: &[&str]) -> Option<String> {
    let (parent, name) = match path.rsplit_once('.') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, path),
    };
    let known: &[&str] = match parent {
        None => TOP_FIELDS,
        Some("source") => crate::source::FIELDS,
        Some("version") => VERSION_FIELDS,
        Some("params") => params,
        Some(_) => &[
            "domain",
            "cert",
            "key",
            "registry",
            "username",
            "password",
            "host",
            "os",
            "architecture",
            "variant",
        ],
    };
    let (best, score) = known
        .iter()
        .map(|k| (*k, strsim::jaro_winkler(&name.to_ascii_lowercase(), k)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (score >= 0.85).then(|| match parent {
        Some(parent) => format!("{parent}.{best}"),
        None => best.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_requests() {
        let cases: &[(&str, &str)] = &[
            ("", "no request on stdin"),
            ("  \n", "no request on stdin"),
            ("{", "not valid JSON"),
            ("[]", "must be a JSON object, not an array"),
            ("null", "must be a JSON object, not null"),
            (r#"{"source": 5}"#, "source: invalid type"),
            (
                r#"{"source": {"repository": 5}}"#,
                "source.repository: invalid type",
            ),
            (
                r#"{"source": {"repository": "a", "tag": {}}}"#,
                "source.tag: invalid type",
            ),
            (
                r#"{"source": {"repository": "a", "ca_certs": "x"}}"#,
                "source.ca_certs: invalid type",
            ),
            (
                r#"{"source": {"repository": "a", "debug": "yes"}}"#,
                "source.debug: invalid type",
            ),
            (
                r#"{"source": {"repository": "a"}, "version": 3}"#,
                "version: invalid type",
            ),
        ];
        for (input, want) in cases {
            let err = crate::report::chain(&parse_request(input.as_bytes()).unwrap_err());
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn password_type_errors_do_not_echo() {
        let err = crate::report::chain(
            &parse_request(br#"{"source": {"repository": "a", "password": 987654321}}"#)
                .unwrap_err(),
        );
        assert!(err.starts_with("source.password:"), "{err}");
        assert!(!err.contains("987654321"), "{err}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggestion("source.repostiory", &[]).as_deref(),
            Some("source.repository")
        );
        assert_eq!(
            suggestion("source.ca_cert", &[]).as_deref(),
            Some("source.ca_certs")
        );
        assert_eq!(suggestion("sorce", &[]).as_deref(), Some("source"));
        assert_eq!(suggestion("source.zzzzzz", &[]), None);
    }

    #[test]
    fn version_serialises_tag_then_digest() {
        let v = Version {
            tag: Some("latest".into()),
            digest: crate::reference::Digest::of(b"x"),
        };
        let s = serde_json::to_string(&v).unwrap();
        assert!(s.starts_with(r#"{"tag":"latest","digest":"sha256:"#), "{s}");
    }
}
