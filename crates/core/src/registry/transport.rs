//! HTTP clients for one registry host: TLS material chosen by domain, and the reading of
//! transport errors into messages that say what to change.

use std::error::Error as StdError;
use std::time::Duration;

use super::config::RegistryConfig;
use crate::reference::Host;

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

/// Builds a throwaway client with each `ca_certs` and `client_certs` entry alone, so that
/// unusable material (a v1 certificate, a key that does not match) is reported against its
/// field before any request. Returns the field and the reason.
pub fn check_tls_material(config: &RegistryConfig) -> Result<(), (String, String)> {
    let bare = || {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .tls_built_in_native_certs(false)
    };
    let reason = |e: reqwest::Error| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text.trim_start_matches("builder error: ").to_string()
    };
    for ca in &config.ca_certs {
        let field = format!("{}.cert", ca.field);
        let certs = reqwest::Certificate::from_pem_bundle(ca.pem.expose().as_bytes())
            .map_err(|e| (field.clone(), reason(e)))?;
        let builder = certs
            .into_iter()
            .fold(bare(), |b, c| b.add_root_certificate(c));
        builder.build().map_err(|e| (field, reason(e)))?;
    }
    for id in &config.client_certs {
        let identity = reqwest::Identity::from_pem(id.pem.expose().as_bytes())
            .map_err(|e| (id.field.clone(), reason(e)))?;
        bare()
            .identity(identity)
            .build()
            .map_err(|e| (id.field.clone(), reason(e)))?;
    }
    Ok(())
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
/// `source()` (it returns the inner error's source), so io errors are opened by hand.
pub fn classify(err: &reqwest::Error) -> Failure {
    let mut transient = err.is_timeout() || err.is_connect();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return classify_tls(tls);
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => {
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
                match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => None,
                }
            }
            None => e.source(),
        };
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
