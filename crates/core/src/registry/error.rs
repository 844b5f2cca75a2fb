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
    Untrusted { host: String, reason: String },
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
    #[error("cannot set up an http client for registry {host}")]
    Client {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "unauthorized: registry {host} refused access to repository {repository} {auth}: {detail}"
    )]
    Unauthorized {
        host: String,
        repository: String,
        detail: String,
        auth: String,
    },
    #[error("cannot get ECR credentials for registry {host} (region {region}): {reason}")]
    Ecr {
        host: String,
        region: String,
        reason: String,
    },
    #[error("cannot get a token for registry {host} from {realm}: {reason}")]
    Token {
        host: String,
        realm: String,
        reason: String,
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
        source: reqwest::Error,
    },
    #[error("{what} from registry {host} is larger than {limit} bytes")]
    TooLarge {
        host: String,
        what: String,
        limit: usize,
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

/// The registry's error body: `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    pub(super) fn summary(&self) -> String {
        self.errors
            .iter()
            .map(|e| {
                if e.message.is_empty() {
                    e.code.clone()
                } else {
                    format!("{} {}", e.code, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
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
    }
}
