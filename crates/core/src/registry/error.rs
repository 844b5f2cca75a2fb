//! What can go wrong talking to a registry, and the registry's own JSON error bodies.

use reqwest::StatusCode;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot connect to registry {host}")]
    Connect {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("tls certificate of registry {host} is not trusted ({reason}): add its CA to source.ca_certs, or list the registry in source.insecure_registries")]
    Untrusted {
        host: String,
        reason: super::transport::CertificateProblem,
    },
    #[error("registry {host} requires a client certificate: add one for its domain to source.client_certs")]
    ClientCertificateRequired { host: String },
    #[error("registry {host} refused the client certificate from {field}")]
    ClientCertificateRefused { host: String, field: String },
    #[error("{field}: cannot be used as tls material")]
    TlsMaterial {
        field: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{field}: cannot be used as a client certificate: {reason}")]
    Identity { field: String, reason: String },
    #[error("cannot set up an http client for registry {host}")]
    Client {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "unauthorized: registry {host} refused access to {} {auth}: {detail}",
        match .image { Some(image) => format!("image {image}"), None => format!("repository {repository}") }
    )]
    Unauthorized {
        host: String,
        repository: String,
        /// `repository:tag` (or `@digest`) when a manifest was asked for: Docker Hub answers
        /// 401 for an image that does not exist, and the tag is part of what is missing.
        image: Option<String>,
        detail: String,
        auth: String,
    },
    #[error("cannot get ECR credentials for registry {host} (region {region})")]
    Ecr {
        host: String,
        region: String,
        #[source]
        problem: super::ecr::EcrProblem,
    },
    #[error("cannot log in to registry {host} with {login}: {endpoint}")]
    CloudLogin {
        host: String,
        /// `an Azure managed identity`, `the GCE metadata server`.
        login: &'static str,
        /// Which endpoint failed, with its host: `the managed identity endpoint 169.254.169.254`.
        endpoint: String,
        #[source]
        problem: CloudProblem,
    },
    #[error("cannot get a token for registry {host} from {realm}")]
    Token {
        host: String,
        realm: String,
        #[source]
        problem: TokenProblem,
    },
    #[error("registry {host} answered {status} for {what}{detail}")]
    Status {
        host: String,
        status: StatusCode,
        what: String,
        detail: String,
    },
    #[error("request to registry {host} for {what} failed")]
    Transport {
        host: String,
        what: String,
        #[source]
        source: super::pace::Broken,
    },
    #[error("{what} from registry {host} is larger than {limit} bytes")]
    TooLarge {
        host: String,
        what: String,
        limit: usize,
    },
    #[error("{what} from registry {host} are more than {limit}")]
    TooMany {
        host: String,
        what: String,
        limit: String,
    },
    #[error(
        "reading {what} from registry {host} took more than {budget} s ({done} read); \
         the newest tags may be on the pages not read"
    )]
    TooSlow {
        host: String,
        what: String,
        budget: f64,
        done: String,
    },
    #[error("blob {digest} not found in repository {repository} on registry {host}")]
    BlobNotFound {
        host: String,
        repository: String,
        digest: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} from registry {host} has digest {actual}, expected {expected}")]
    DigestMismatch {
        host: String,
        what: String,
        expected: String,
        actual: String,
    },
}

impl RegistryError {
    /// The error of a request for the manifest `reference` of `repository`: an unauthorized
    /// answer names the image, `repository:tag` or `repository@digest`.
    pub(crate) fn for_manifest(self, repository: &str, reference: &str) -> RegistryError {
        match self {
            RegistryError::Unauthorized {
                host,
                repository: r,
                image: None,
                detail,
                auth,
            } => {
                let separator = if reference.contains(':') { '@' } else { ':' };
                RegistryError::Unauthorized {
                    host,
                    repository: r,
                    image: Some(format!("{repository}{separator}{reference}")),
                    detail,
                    auth,
                }
            }
            other => other,
        }
    }
}

/// What was wrong with a token server's answer.
#[derive(Debug, thiserror::Error)]
pub enum TokenProblem {
    #[error("the realm is not a URL")]
    RealmNotUrl(#[source] url::ParseError),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("reading the answer failed")]
    Read(#[source] super::body::ReadError),
    #[error("the answer is not a token response")]
    NotTokenResponse(#[source] serde_json::Error),
    #[error("the answer has no token")]
    NoToken,
}

/// What went wrong at a cloud login's endpoint. Never holds a token: an answer's error text
/// is quoted through the redactor, and a JSON error never echoes the value it choked on.
#[derive(Debug, thiserror::Error)]
pub enum CloudProblem {
    #[error("{0:?} is not an http(s) address")]
    BadAddress(String),
    #[error("cannot set up an http client")]
    Client(#[source] reqwest::Error),
    #[error("request failed")]
    Transport(#[source] super::pace::Broken),
    #[error("answered {status}{detail}")]
    Status { status: StatusCode, detail: String },
    #[error("reading the answer failed")]
    Read(#[source] super::body::ReadError),
    #[error("the answer is not a JSON object")]
    NotJson,
    #[error("the answer has no {0}")]
    NoToken(&'static str),
    #[error(
        "the registry is reached over plain http: the Azure token is not sent in clear (use https)"
    )]
    Cleartext,
}

/// The registry's error body: `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ErrorEntry {
    #[serde(default)]
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
}

/// The error codes of the distribution spec
/// (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes>), and
/// Docker Hub's `TOOMANYREQUESTS`; any other as the registry wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Other(String),
    /// No code given.
    #[default]
    None,
}

const CODES: &[(&str, ErrorCode)] = &[
    ("BLOB_UNKNOWN", ErrorCode::BlobUnknown),
    ("BLOB_UPLOAD_INVALID", ErrorCode::BlobUploadInvalid),
    ("BLOB_UPLOAD_UNKNOWN", ErrorCode::BlobUploadUnknown),
    ("DIGEST_INVALID", ErrorCode::DigestInvalid),
    ("MANIFEST_BLOB_UNKNOWN", ErrorCode::ManifestBlobUnknown),
    ("MANIFEST_INVALID", ErrorCode::ManifestInvalid),
    ("MANIFEST_UNKNOWN", ErrorCode::ManifestUnknown),
    ("NAME_INVALID", ErrorCode::NameInvalid),
    ("NAME_UNKNOWN", ErrorCode::NameUnknown),
    ("SIZE_INVALID", ErrorCode::SizeInvalid),
    ("UNAUTHORIZED", ErrorCode::Unauthorized),
    ("DENIED", ErrorCode::Denied),
    ("UNSUPPORTED", ErrorCode::Unsupported),
    ("TOOMANYREQUESTS", ErrorCode::TooManyRequests),
];

impl ErrorCode {
    fn parse(code: &str) -> ErrorCode {
        match CODES.iter().find(|(text, _)| *text == code) {
            Some((_, c)) => c.clone(),
            None if code.is_empty() => ErrorCode::None,
            None => ErrorCode::Other(code.to_string()),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(code) => code,
            ErrorCode::None => "",
            known => CODES
                .iter()
                .find(|(_, c)| c == known)
                .map_or("", |(text, _)| text),
        }
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        // A code that is not a string (some proxies send numbers) is kept as its JSON text.
        let value = serde_json::Value::deserialize(d)?;
        Ok(match value {
            serde_json::Value::String(s) => ErrorCode::parse(&s),
            serde_json::Value::Null => ErrorCode::None,
            other => ErrorCode::Other(other.to_string()),
        })
    }
}

impl ErrorBody {
    pub(super) fn summary(&self) -> String {
        self.errors
            .iter()
            .map(|e| {
                if e.message.is_empty() {
                    e.code.as_str().to_string()
                } else {
                    format!("{} {}", e.code.as_str(), e.message)
                }
                .trim()
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether the registry gave `code` among its errors.
    pub(super) fn has(&self, code: &ErrorCode) -> bool {
        self.errors.iter().any(|e| &e.code == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let b: ErrorBody = serde_json::from_str(
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository"}]}]}"#,
        )
        .unwrap();
        assert_eq!(b.summary(), "UNAUTHORIZED authentication required");
        assert!(b.has(&ErrorCode::Unauthorized));
        let b: ErrorBody = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN"},{"code":"QUOTA_EXCEEDED","message":"full"},{"code":7},{"message":"no code"}]}"#,
        )
        .unwrap();
        assert_eq!(b.errors[0].code, ErrorCode::ManifestUnknown);
        assert_eq!(b.errors[1].code, ErrorCode::Other("QUOTA_EXCEEDED".into()));
        assert_eq!(
            b.summary(),
            "MANIFEST_UNKNOWN; QUOTA_EXCEEDED full; 7; no code"
        );
    }
}
