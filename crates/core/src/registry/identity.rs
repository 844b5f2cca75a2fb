//! `client_certs` as rustls takes them, without rustls's own end-entity parsing.
//!
//! rustls checks a client certificate against its key by parsing it with webpki, which
//! refuses X.509 v1 certificates (`UnsupportedCertVersion`): what `openssl x509 -req` makes
//! without an extension file. Docker, curl and the registry itself accept them, since a
//! client only presents its certificate and the server judges it. So the chain is handed to
//! rustls as it is, after dockhand's own check that the key is the certificate's: the
//! certificate's SubjectPublicKeyInfo, read from its DER (RFC 5280, section 4.1), equals the
//! key's.
//!
//! A client for a host with a client certificate gets a rustls config built here (the
//! system roots plus the host's `ca_certs`, or no verification for insecure registries);
//! other clients keep reqwest's.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::config::RegistryConfig;
use super::transport::Verify;
use crate::reference::Host;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The certificate chain and key of a `client_certs` entry (the PEM holds both), checked to
/// belong together. Errors say what is wrong with *this* certificate or key.
pub(crate) fn certified_key(pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM ({e})"))?;
    if chain.is_empty() {
        return Err("no certificate found".into());
    }
    let key: PrivateKeyDer<'static> = match rustls_pemfile::private_key(&mut pem.as_bytes()) {
        Ok(Some(key)) => key,
        _ => return Err("no private key found".into()),
    };
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| "the private key is not a usable RSA, ECDSA or Ed25519 key".to_string())?;
    let spki = subject_public_key_info(&chain[0])
        .ok_or("the certificate is not a valid X.509 certificate (DER)")?;
    // A key type whose public key rustls cannot tell is taken as it is.
    if let Some(ours) = signing.public_key() {
        if ours.as_ref() != spki {
            return Err("the private key does not belong to the certificate".into());
        }
    }
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// A rustls config for `host` presenting `key`: the system roots plus the host's
/// `ca_certs` (or no verification at all with [`Verify::Nothing`]), HTTP/1.1.
pub(super) fn client_config(
    host: &Host,
    config: &RegistryConfig,
    verify: Verify,
    key: Arc<CertifiedKey>,
) -> Result<rustls::ClientConfig, (String, String)> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("client_certs".to_string(), e.to_string()))?;
    let builder = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        Verify::Roots => {
            let mut roots = rustls::RootCertStore::empty();
            // Native stores hold old certificates webpki cannot parse: they are skipped.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            for ca in config.ca_certs.iter().filter(|c| c.applies_to(host)) {
                for cert in rustls_pemfile::certs(&mut ca.pem.expose().as_bytes()) {
                    let cert = cert.map_err(|e| (ca.field.clone(), e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| (ca.field.clone(), format!("{e}")))?;
                }
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut tls = builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// `insecure_registries`: any server certificate is accepted (signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A DER element: its tag, the whole element (header included), its content, and the bytes
/// after it.
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The DER element at the start of `input`.
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &input[..header + len], &rest[..len], &rest[len..]))
}

/// The SubjectPublicKeyInfo of a certificate, whole (tag and length included): the seventh
/// field of tbsCertificate, or the sixth in a v1 certificate, which has no version field.
fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    let (tag, _, certificate, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = element(rest)?.3;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = element(rest)?.3;
    }
    let (tag, whole, _, _) = element(rest)?;
    (tag == SEQUENCE).then_some(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert, key)
    }

    #[test]
    fn the_key_must_be_the_certificates() {
        let (cert, key) = issued();
        let pem = format!("{}\n{}", cert.pem(), key.serialize_pem());
        assert!(certified_key(&pem).is_ok());
        assert_eq!(
            subject_public_key_info(cert.der()),
            Some(key.public_key_der().as_slice())
        );
        let (_, other) = issued();
        let err = certified_key(&format!("{}\n{}", cert.pem(), other.serialize_pem()))
            .err()
            .unwrap();
        assert_eq!(err, "the private key does not belong to the certificate");
        assert!(!err.contains("peer"));
        assert_eq!(
            certified_key(&key.serialize_pem()).err().unwrap(),
            "no certificate found"
        );
        assert_eq!(
            certified_key(&cert.pem()).err().unwrap(),
            "no private key found"
        );
    }

    #[test]
    fn a_v1_certificate_without_a_version_field_is_read() {
        // A v3 certificate made v1: the [0] version field removed from tbsCertificate, the
        // lengths fixed up (the signature no longer verifies; only the layout matters here).
        let (cert, key) = issued();
        let der = cert.der().to_vec();
        let (_, _, certificate, _) = element(&der).unwrap();
        let (_, _, tbs, after_tbs) = element(certificate).unwrap();
        let (_, version, _, _) = element(tbs).unwrap();
        let tbs_v1 = &tbs[version.len()..];
        let encode = |tag: u8, content: &[u8]| {
            let mut out = vec![tag];
            let len = content.len();
            if len < 0x80 {
                out.push(len as u8);
            } else {
                out.extend([0x82, (len >> 8) as u8, len as u8]);
            }
            out.extend_from_slice(content);
            out
        };
        let mut inner = encode(0x30, tbs_v1);
        inner.extend_from_slice(after_tbs);
        let v1 = encode(0x30, &inner);
        assert_eq!(
            subject_public_key_info(&v1),
            Some(key.public_key_der().as_slice())
        );
        assert_eq!(subject_public_key_info(b"\x30\x03\x02\x01"), None);
        assert_eq!(subject_public_key_info(b""), None);
    }
}
