//! HTTP clients for one registry host: TLS material chosen by domain, and the reading of
//! transport errors into messages that say what to change.

use std::error::Error as StdError;
use std::time::Duration;

use super::config::RegistryConfig;
use crate::reference::Host;

use super::pace::Broken;
use super::RegistryError;

/// How TLS is verified for a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    /// System roots plus the `ca_certs` for the host.
    Roots,
    /// `insecure_registries`: any certificate is accepted.
    Nothing,
}

pub(super) const USER_AGENT: &str = concat!("dockhand/", env!("CARGO_PKG_VERSION"));

/// A client for `host`: the system roots plus every `ca_certs` entry for it (added, never
/// replacing them), the `client_certs` identity for it, and no verification when insecure.
pub(super) fn build_client(
    host: &Host,
    config: &RegistryConfig,
    verify: Verify,
) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(redirect_policy(config.clone()))
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
    if verify == Verify::Nothing {
        builder = builder.danger_accept_invalid_certs(true);
    }
    // A client certificate: rustls is configured here, so that any certificate Docker
    // accepts is presented (see `identity`).
    if let Some(id) = config.client_certs.iter().find(|c| c.applies_to(host)) {
        let identity_error =
            |(field, reason): (String, String)| RegistryError::Identity { field, reason };
        let key = super::identity::certified_key(id.pem.expose())
            .map_err(|reason| identity_error((id.field.clone(), reason)))?;
        let tls =
            super::identity::client_config(host, config, verify, key).map_err(identity_error)?;
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().map_err(|e| RegistryError::Client {
        host: host.to_string(),
        source: e,
    })
}

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 10;

/// Redirects to blob storage (S3, GCS) are followed, at most [`MAX_REDIRECTS`]. reqwest drops
/// the `Authorization` header when the host or port changes, but not when only the scheme
/// does; so a redirect from https to plain http is refused unless its target may be reached
/// in clear (loopback, `insecure_registries`).
fn redirect_policy(config: RegistryConfig) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let downgrade = attempt
            .previous()
            .last()
            .is_some_and(|from| from.scheme() == "https" && attempt.url().scheme() == "http");
        if downgrade && !config.may_send_credentials(attempt.url()) {
            let to = attempt.url().origin().ascii_serialization();
            return attempt.error(format!("refused a redirect from https to plain {to}"));
        }
        attempt.follow()
    })
}

/// Builds a throwaway client with each `ca_certs` entry alone, and reads each
/// `client_certs` entry as a client would present it, so that unusable material (a CA that
/// does not parse, a key that does not match its certificate) is reported against its field
/// before any request. Returns the field and the reason.
pub(crate) fn check_tls_material(config: &RegistryConfig) -> Result<(), (String, String)> {
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
        super::identity::certified_key(id.pem.expose()).map_err(|e| (id.field.clone(), e))?;
    }
    Ok(())
}

/// Why rustls refused a server certificate, shown as rustls names it (`UnknownIssuer`).
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateProblem(pub rustls::CertificateError);

impl std::fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a failed request says about the connection.
#[derive(Debug, PartialEq)]
pub(super) enum Failure {
    /// The peer does not speak TLS (a plain-HTTP registry on an https URL).
    NotTls,
    /// The server's certificate did not verify; why, from rustls.
    Untrusted(CertificateProblem),
    /// The server asked for a client certificate, or refused ours.
    ClientCertificate,
    /// Refused, reset, timed out, cut short: worth another try.
    Transient,
    /// Anything else.
    Other,
}

/// Reads the error chain of a reqwest error. `io::Error` hides its inner error from
/// `source()` (it returns the inner error's source), so io errors are opened by hand.
pub(super) fn classify(broken: &Broken) -> Failure {
    let err = match broken {
        Broken::Http(e) => e,
        Broken::NoAnswer | Broken::TooSlow { .. } => return Failure::Transient,
    };
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
        rustls::Error::InvalidCertificate(reason) => {
            Failure::Untrusted(CertificateProblem(reason.clone()))
        }
        rustls::Error::AlertReceived(
            A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::HandshakeFailure,
        ) => Failure::ClientCertificate,
        _ => Failure::Other,
    }
}

/// Whether the TLS server at `host` asks for a client certificate in its handshake.
///
/// A TLS 1.3 server that requires one and gets none sends its alert after the handshake has
/// finished on the client's side, and closes; when the client's first request reaches the
/// closed socket the reset can discard the alert before it is read, so the failure reads as a
/// broken connection. The server's CertificateRequest comes in its first flight, before the
/// client has sent anything, so this handshake (which verifies nothing and sends nothing
/// after it) tells the two apart without a race. Blocking: run it off the async threads.
pub(super) fn asks_for_client_certificate(host: &Host) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let asked = Arc::new(AtomicBool::new(false));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(config) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = config
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(probe::AnyCertificate))
        .with_client_cert_resolver(Arc::new(probe::Recorder(asked.clone())));
    let name = host
        .hostname()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name.to_string()) else {
        return false;
    };
    let Ok(mut tls) = rustls::ClientConnection::new(Arc::new(config), server_name) else {
        return false;
    };
    let address = if host.as_str().len() > host.hostname().len() {
        host.as_str().to_string()
    } else {
        format!("{}:443", host.as_str())
    };
    let timeout = Duration::from_secs(5);
    let Some(addr) = address.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut socket) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(timeout));
    let _ = socket.set_write_timeout(Some(timeout));
    while tls.is_handshaking() && !asked.load(Ordering::SeqCst) {
        if tls.complete_io(&mut socket).is_err() {
            break;
        }
    }
    asked.load(Ordering::SeqCst)
}

mod probe {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts any server certificate: the probe only watches the handshake.
    #[derive(Debug)]
    pub(super) struct AnyCertificate;

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// Notes that the server asked for a client certificate, and offers none.
    #[derive(Debug)]
    pub(super) struct Recorder(pub Arc<AtomicBool>);

    impl rustls::client::ResolvesClientCert for Recorder {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            self.0.store(true, Ordering::SeqCst);
            None
        }

        fn has_certs(&self) -> bool {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;

    use super::*;

    /// A TLS server on a loopback port that answers one handshake, asking for a client
    /// certificate when `require` is set.
    fn tls_server(require: bool) -> Host {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = key.cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::try_from(key.key_pair.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(builder.with_single_cert(vec![cert], private).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut tls = rustls::ServerConnection::new(config).unwrap();
            while tls.is_handshaking() {
                if tls.complete_io(&mut socket).is_err() {
                    break;
                }
            }
        });
        Host::parse(&format!("localhost:{port}")).unwrap()
    }

    #[test]
    fn the_probe_sees_a_request_for_a_client_certificate() {
        assert!(asks_for_client_certificate(&tls_server(true)));
        assert!(!asks_for_client_certificate(&tls_server(false)));
    }

    #[test]
    fn the_probe_says_no_when_nothing_answers() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!asks_for_client_certificate(
            &Host::parse(&format!("127.0.0.1:{port}")).unwrap()
        ));
    }
}
