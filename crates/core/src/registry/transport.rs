//! HTTP clients for one registry host: TLS material chosen by domain, and the reading of
//! transport errors into messages that say what to change.

use std::error::Error as StdError;
use std::time::Duration;

use crate::reference::Host;
use crate::source::RegistryConfig;

use super::RegistryError;

/// How TLS is verified for a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// System roots plus the `ca_certs` for the host.
    Roots,
    /// `insecure_registries`: any certificate is accepted.
    Nothing,
}

pub const USER_AGENT: &str = concat!("dockhand/", env!("CARGO_PKG_VERSION"));

/// A client for `host`: the system roots plus every `ca_certs` entry for it (added, never
/// replacing them), the `client_certs` identity for it, and no verification when insecure.
pub fn build_client(
    host: &Host,
    config: &RegistryConfig,
    verify: Verify,
) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(30))
        // Redirects to blob storage (S3, GCS) are followed; the Authorization header is
        // dropped by reqwest when the host changes.
        .redirect(reqwest::redirect::Policy::limited(10))
        .tls_built_in_native_certs(true);
    let tls_error = |field: &str, e: reqwest::Error| RegistryError::TlsMaterial {
        field: field.to_string(),
        source: e,
    };
    for ca in config.ca_certs.iter().filter(|c| c.applies_to(host)) {
        for cert in reqwest::Certificate::from_pem_bundle(ca.pem.expose().as_bytes())
            .map_err(|e| tls_error(&ca.field, e))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(id) = config.client_certs.iter().find(|c| c.applies_to(host)) {
        let identity = reqwest::Identity::from_pem(id.pem.expose().as_bytes())
            .map_err(|e| tls_error(&id.field, e))?;
        builder = builder.identity(identity);
    }
    if verify == Verify::Nothing {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| RegistryError::Client {
        host: host.to_string(),
        source: e,
    })
}

/// What a failed request says about the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer does not speak TLS (a plain-HTTP registry on an https URL).
    NotTls,
    /// The server's certificate did not verify; the reason from rustls.
    Untrusted(String),
    /// The server asked for a client certificate, or refused ours.
    ClientCertificate,
    /// Refused, reset, timed out, cut short: worth another try.
    Transient,
    /// Anything else.
    Other,
}

/// Reads the error chain of a reqwest error. `io::Error` hides its inner error from
/// `source()`, so each io error is opened by hand to find rustls's.
pub fn classify(err: &reqwest::Error) -> Failure {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    let mut transient = err.is_timeout() || err.is_connect();
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return classify_tls(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return classify_tls(tls);
            }
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | BrokenPipe
                    | UnexpectedEof
                    | TimedOut
                    | Interrupted
            ) {
                transient = true;
            }
        }
        current = e.source();
    }
    if transient || err.is_body() || err.is_request() {
        Failure::Transient
    } else {
        Failure::Other
    }
}

fn classify_tls(e: &rustls::Error) -> Failure {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidMessage(_) => Failure::NotTls,
        rustls::Error::InvalidCertificate(reason) => Failure::Untrusted(format!("{reason:?}")),
        rustls::Error::AlertReceived(
            A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::HandshakeFailure,
        ) => Failure::ClientCertificate,
        _ => Failure::Other,
    }
}
