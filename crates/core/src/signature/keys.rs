//! Keys as cosign writes them: PEM public keys (PKIX `PUBLIC KEY`: ECDSA P-256, RSA,
//! Ed25519), and private keys either plain (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY`,
//! PKCS#1 `RSA PRIVATE KEY`) or in cosign's encrypted format (`ENCRYPTED SIGSTORE PRIVATE
//! KEY` / `ENCRYPTED COSIGN PRIVATE KEY`: a JSON envelope holding a PKCS#8 key sealed with
//! nacl/secretbox under a key derived from the password by scrypt; see sigstore's
//! `pkg/cryptoutils` and secure-systems-lab's `encrypted` package).
//!
//! Signatures follow cosign's signers: ECDSA over SHA-256 (ASN.1 DER, or raw r||s), RSA
//! PKCS#1 v1.5 over SHA-256, and pure Ed25519 over the message itself. All cryptography is
//! RustCrypto's.

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use serde::Deserialize;
use sha2::Digest as _;

/// The costliest scrypt accepted from an encrypted key: N ≤ 2^17, r ≤ 16, p ≤ 4 (cosign
/// writes N = 2^15, r = 8, p = 1); a key file cannot make dockhand spend gigabytes.
const MAX_SCRYPT_LOG_N: u8 = 17;
const MAX_SCRYPT_R: u32 = 16;
const MAX_SCRYPT_P: u32 = 4;
/// An encrypted key's envelope is read up to this size (cosign's are under 1 KiB).
const MAX_KEY_TEXT: usize = 64 << 10;

/// PEM labels of cosign's encrypted private keys.
const ENCRYPTED_LABELS: [&str; 2] = [
    "ENCRYPTED SIGSTORE PRIVATE KEY",
    "ENCRYPTED COSIGN PRIVATE KEY",
];

/// A public key that signatures are verified with.
#[derive(Clone)]
pub(crate) struct PublicKey {
    kind: PublicKind,
    /// `sha256:` and the hex SHA-256 of the key's DER (SubjectPublicKeyInfo).
    fingerprint: String,
}

#[derive(Clone)]
enum PublicKind {
    EcdsaP256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm(), self.fingerprint)
    }
}

impl PublicKey {
    /// A PEM `PUBLIC KEY` (leading and trailing space ignored).
    pub(crate) fn from_pem(text: &str) -> Result<PublicKey, String> {
        let text = text.trim();
        let (label, der) = pem_rfc7468_decode(text)
            .map_err(|_| "not a PEM public key (expected -----BEGIN PUBLIC KEY-----)")?;
        if label != "PUBLIC KEY" {
            return Err(format!(
                "a PEM {label:?}, not a public key (expected -----BEGIN PUBLIC KEY-----)"
            ));
        }
        PublicKey::from_der(&der)
    }

    fn from_der(der: &[u8]) -> Result<PublicKey, String> {
        let kind = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            PublicKind::EcdsaP256(k)
        } else if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
            PublicKind::Rsa(k)
        } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            PublicKind::Ed25519(k)
        } else {
            return Err("not an ECDSA P-256, RSA or Ed25519 public key".into());
        };
        Ok(PublicKey {
            kind,
            fingerprint: format!("sha256:{}", hex::encode(sha2::Sha256::digest(der))),
        })
    }

    /// `sha256:<hex>` of the key's DER: how messages and `signatures.json` name it.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The first 16 hex digits of the fingerprint, for one-line messages.
    pub(crate) fn short(&self) -> &str {
        &self.fingerprint[..("sha256:".len() + 16)]
    }

    pub(crate) fn algorithm(&self) -> &'static str {
        match self.kind {
            PublicKind::EcdsaP256(_) => "ecdsa-p256",
            PublicKind::Rsa(_) => "rsa",
            PublicKind::Ed25519(_) => "ed25519",
        }
    }

    /// Whether `signature` is this key's over `message`, as cosign signs: ECDSA and RSA
    /// over the message's SHA-256, Ed25519 over the message.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use rsa::signature::Verifier as _;
        match &self.kind {
            PublicKind::EcdsaP256(k) => {
                ecdsa_signature(signature).is_some_and(|s| k.verify(message, &s).is_ok())
            }
            PublicKind::Rsa(k) => {
                let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(k.clone());
                rsa::pkcs1v15::Signature::try_from(signature)
                    .is_ok_and(|s| verifier.verify(message, &s).is_ok())
            }
            PublicKind::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
        }
    }

    /// Whether `signature` is this key's over a message whose SHA-256 is `hash` (a sigstore
    /// bundle's message signature names the digest only). Ed25519 signs the message itself,
    /// so it cannot be checked from the hash: never.
    pub(crate) fn verify_prehashed(&self, hash: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        if hash.len() != 32 {
            return false;
        }
        match &self.kind {
            PublicKind::EcdsaP256(k) => {
                ecdsa_signature(signature).is_some_and(|s| k.verify_prehash(hash, &s).is_ok())
            }
            PublicKind::Rsa(k) => k
                .verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), hash, signature)
                .is_ok(),
            PublicKind::Ed25519(_) => false,
        }
    }
}

/// ASN.1 DER (what cosign and OpenSSL write) or the fixed 64-byte r||s form.
fn ecdsa_signature(bytes: &[u8]) -> Option<p256::ecdsa::Signature> {
    p256::ecdsa::Signature::from_der(bytes)
        .or_else(|_| p256::ecdsa::Signature::from_slice(bytes))
        .ok()
}

/// A PEM document: its label and DER bytes.
fn pem_rfc7468_decode(text: &str) -> Result<(String, Vec<u8>), ()> {
    let (label, der) = pkcs8::der::pem::decode_vec(text.as_bytes()).map_err(|_| ())?;
    Ok((label.to_string(), der))
}

/// A private key that `out` signs with.
pub(crate) struct PrivateKey {
    kind: PrivateKind,
}

enum PrivateKind {
    EcdsaP256(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
    Ed25519(ed25519_dalek::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<private key>")
    }
}

/// Why a private key could not be used; the messages never quote the key or the password.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    NotPem,
    WrongPassword,
    PasswordRequired,
    Envelope(String),
    Unsupported,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotPem => f.write_str(
                "not a PEM private key (expected an ENCRYPTED SIGSTORE PRIVATE KEY, ENCRYPTED COSIGN PRIVATE KEY or PRIVATE KEY block)",
            ),
            KeyError::WrongPassword => {
                f.write_str("cannot decrypt the key: the password is wrong")
            }
            KeyError::PasswordRequired => f.write_str("the key is encrypted: a password is required"),
            KeyError::Envelope(why) => write!(f, "not a valid encrypted cosign key: {why}"),
            KeyError::Unsupported => {
                f.write_str("not an ECDSA P-256, RSA or Ed25519 private key")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// cosign's encrypted key envelope.
#[derive(Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScryptParams {
    n: u64,
    #[serde(rename = "r")]
    r: u32,
    #[serde(rename = "p")]
    p: u32,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

impl PrivateKey {
    /// A PEM private key; `password` opens cosign's encrypted formats.
    pub(crate) fn from_pem(text: &str, password: &str) -> Result<PrivateKey, KeyError> {
        let text = text.trim();
        if text.len() > MAX_KEY_TEXT {
            return Err(KeyError::NotPem);
        }
        let (label, der) = pem_rfc7468_decode(text).map_err(|_| KeyError::NotPem)?;
        match label.as_str() {
            l if ENCRYPTED_LABELS.contains(&l) => {
                if password.is_empty() {
                    // cosign allows an empty password; try it, and say so if it fails.
                    return decrypt(&der, "")
                        .and_then(|d| PrivateKey::from_pkcs8(&d))
                        .map_err(|e| match e {
                            KeyError::WrongPassword => KeyError::PasswordRequired,
                            e => e,
                        });
                }
                PrivateKey::from_pkcs8(&decrypt(&der, password)?)
            }
            "PRIVATE KEY" => PrivateKey::from_pkcs8(&der),
            "EC PRIVATE KEY" => {
                let key = sec1_key(&der).ok_or(KeyError::Unsupported)?;
                Ok(PrivateKey {
                    kind: PrivateKind::EcdsaP256(key),
                })
            }
            "RSA PRIVATE KEY" => {
                use rsa::pkcs1::DecodeRsaPrivateKey as _;
                let key =
                    rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|_| KeyError::Unsupported)?;
                Ok(PrivateKey {
                    kind: PrivateKind::Rsa(Box::new(key)),
                })
            }
            _ => Err(KeyError::NotPem),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let kind = if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
            PrivateKind::EcdsaP256(k)
        } else if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
            PrivateKind::Rsa(Box::new(k))
        } else if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_der(der) {
            PrivateKind::Ed25519(k)
        } else {
            return Err(KeyError::Unsupported);
        };
        Ok(PrivateKey { kind })
    }

    /// The signature over `message`, as cosign writes it (ECDSA as ASN.1 DER).
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        match &self.kind {
            PrivateKind::EcdsaP256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            PrivateKind::Rsa(k) => {
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone());
                signer.sign(message).to_vec()
            }
            PrivateKind::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
        }
    }

    /// The matching public key.
    pub(crate) fn public_key(&self) -> PublicKey {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let der = match &self.kind {
            PrivateKind::EcdsaP256(k) => k.verifying_key().to_public_key_der(),
            PrivateKind::Rsa(k) => k.to_public_key().to_public_key_der(),
            PrivateKind::Ed25519(k) => k.verifying_key().to_public_key_der(),
        }
        .expect("a valid key encodes");
        PublicKey::from_der(der.as_bytes()).expect("a key dockhand encoded parses")
    }
}

fn sec1_key(der: &[u8]) -> Option<p256::ecdsa::SigningKey> {
    let secret = p256::SecretKey::from_sec1_der(der).ok()?;
    Some(p256::ecdsa::SigningKey::from(secret))
}

/// The PKCS#8 DER inside cosign's encrypted envelope (the PEM block's bytes are its JSON).
fn decrypt(envelope: &[u8], password: &str) -> Result<Vec<u8>, KeyError> {
    use crypto_secretbox::aead::{Aead as _, KeyInit as _};
    let bad = |why: &str| KeyError::Envelope(why.to_string());
    let envelope: Envelope =
        serde_json::from_slice(envelope).map_err(|_| bad("its JSON is not cosign's envelope"))?;
    if envelope.kdf.name != "scrypt" {
        return Err(bad("the key derivation is not scrypt"));
    }
    if envelope.cipher.name != "nacl/secretbox" {
        return Err(bad("the cipher is not nacl/secretbox"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64
        .decode(&envelope.kdf.salt)
        .map_err(|_| bad("the salt is not base64"))?;
    let nonce = b64
        .decode(&envelope.cipher.nonce)
        .map_err(|_| bad("the nonce is not base64"))?;
    let sealed = b64
        .decode(&envelope.ciphertext)
        .map_err(|_| bad("the ciphertext is not base64"))?;
    if nonce.len() != 24 {
        return Err(bad("the nonce is not 24 bytes"));
    }
    let ScryptParams { n, r, p } = envelope.kdf.params;
    if !n.is_power_of_two() || n < 2 {
        return Err(bad("scrypt N is not a power of two"));
    }
    let log_n = n.trailing_zeros() as u8;
    if log_n > MAX_SCRYPT_LOG_N || r == 0 || r > MAX_SCRYPT_R || p == 0 || p > MAX_SCRYPT_P {
        return Err(bad(&format!(
            "scrypt parameters N={n} r={r} p={p} are beyond N=2^{MAX_SCRYPT_LOG_N} r={MAX_SCRYPT_R} p={MAX_SCRYPT_P}"
        )));
    }
    let params =
        scrypt::Params::new(log_n, r, p, 32).map_err(|_| bad("invalid scrypt parameters"))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut key)
        .map_err(|_| bad("invalid scrypt parameters"))?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    cipher
        .decrypt(
            crypto_secretbox::Nonce::from_slice(&nonce),
            sealed.as_slice(),
        )
        .map_err(|_| KeyError::WrongPassword)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// cosign's own test data (sigstore/cosign `pkg/cosign/keys_test.go`, `pemsigstorekey`),
    /// an ECDSA P-256 key encrypted with the password "hello".
    pub(crate) const COSIGN_SIGSTORE_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjozMjc2OCwiciI6
OCwicCI6MX0sInNhbHQiOiI3T3VGd2VsbWZZNXVId2NoaURSc210anNwZ2ZlZjFG
Mk5lOGFDTjVLYVpZPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJQNHk4OGhCb3ZTa09MbXN0bFVBaGJwdDJ0K2xTNUxQSCJ9LCJj
aXBoZXJ0ZXh0IjoiMnB1QzdyZldJOWh3bnJlQ2s4aUZDRlVwQlRrSzRJNlIvbFBF
cnBDekpXUGpJWXl4eGVIL1A2VW52cFJHdVhla1NNb3JMdGhLamdoQ1JlNy82NDVH
QWtoVm1LRC92eEF0S2EvbE1abENSQ3FlekJGUFd1dzNpeFRtZ2xhb2J1ZFVSbUVs
bmNGOGlZbzBTMVl6Y1ZOMVFwY2J2c0dNcUlYRzVlbmdteGp5dCtBcXlyZTF0Q0Y0
V01tU1BlaEljNlBqd2h1Q2xHaVpJUWRvTGc9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----";

    /// cosign's test data (`pemcosignkey`, commented there as RSA, but an ECDSA P-256 key
    /// when opened) under the older label, password "hello".
    const COSIGN_OLDER_LABEL_KEY: &str = "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjozMjc2OCwiciI6
OCwicCI6MX0sInNhbHQiOiJ4WWdoc09JTUxUWGNOT0RsclNIOUNKc1FlOVFnZmN1
cmUrMXlLdHh1TlkwPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiI0cS9PSlVmaXJkSUkrUjZ0ajZBMmcyQ0JqL25xdFNicCJ9LCJj
aXBoZXJ0ZXh0IjoiKzB4Q3NzcFN0WStBczdKanJpOWtsbHBWd2JhcUI4ZWJNdWto
eS9aVE1MSXRsL3B1YS9jWVJvbytLRGxMWWdmOW1kSjk4K1FnQW9oTktoYnJPMTcw
MHdBY1JTMjFDOE4zQUNJRUVZaWpOMllBNnMraGJSbkhjUnd4eGhDMDFtb2FvL0dO
Y1pmbEJheXZMV3pXblo4d2NDZ2ZpT1o1VXlRTEFJMHh0dnR6dEh3cTdDV1Vhd3V4
RlhlNDZzck9TUE9SNHN6bytabWErUGovSFE9PSJ9
-----END ENCRYPTED COSIGN PRIVATE KEY-----";

    /// cosign's test data (`ed25519key`): a plain PKCS#8 Ed25519 key.
    const COSIGN_ED25519_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIALEbo1EFnWFqBK/wC+hhypG/8hXEerwdNetAoFoFVdv
-----END PRIVATE KEY-----";

    #[test]
    fn cosigns_encrypted_test_key_opens_with_its_password_and_signs() {
        let key = PrivateKey::from_pem(COSIGN_SIGSTORE_KEY, "hello").unwrap();
        let public = key.public_key();
        assert_eq!(public.algorithm(), "ecdsa-p256");
        let signature = key.sign(b"payload");
        assert!(public.verify(b"payload", &signature));
        assert!(!public.verify(b"other payload", &signature));
        let hash = sha2::Sha256::digest(b"payload");
        assert!(public.verify_prehashed(&hash, &signature));
    }

    #[test]
    fn a_wrong_password_is_one_clean_error_without_the_password() {
        let e = PrivateKey::from_pem(COSIGN_SIGSTORE_KEY, "not-hello-9").unwrap_err();
        assert_eq!(e, KeyError::WrongPassword);
        assert!(!e.to_string().contains("not-hello-9"));
        assert_eq!(
            PrivateKey::from_pem(COSIGN_SIGSTORE_KEY, "").unwrap_err(),
            KeyError::PasswordRequired
        );
        assert_eq!(
            PrivateKey::from_pem("hello", "x").unwrap_err(),
            KeyError::NotPem
        );
    }

    #[test]
    fn the_older_cosign_label_and_plain_ed25519_keys_sign() {
        for (pem, password, algorithm) in [
            (COSIGN_OLDER_LABEL_KEY, "hello", "ecdsa-p256"),
            (COSIGN_ED25519_KEY, "", "ed25519"),
        ] {
            let key = PrivateKey::from_pem(pem, password).unwrap();
            let public = key.public_key();
            assert_eq!(public.algorithm(), algorithm);
            let signature = key.sign(b"payload");
            assert!(public.verify(b"payload", &signature), "{algorithm}");
            assert!(!public.verify(b"payloaD", &signature), "{algorithm}");
        }
    }

    /// cosign's test data (`validecp256`): a SEC1 `EC PRIVATE KEY`.
    const COSIGN_SEC1_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIGhcmCI5F7BPMH4r3pWCpQdAsveErdU5DjvVQerErJuoAoGCCqGSM49
AwEHoUQDQgAE+9E3Qe+h25ofmz3Uo2T004Dfy49iX06MMbxf9rsGmLkOPrS0KYDl
1QMfFuSbrtf8wTWNT9HNxrW/Foz39mDhHw==
-----END EC PRIVATE KEY-----";

    #[test]
    fn a_sec1_ec_key_signs_and_other_curves_are_refused() {
        let key = PrivateKey::from_pem(COSIGN_SEC1_KEY, "").unwrap();
        let signature = key.sign(b"m");
        assert!(key.public_key().verify(b"m", &signature));
        // cosign's `validecp384`: a curve dockhand does not take.
        let p384 = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDDWIebxSdyJVber6J/l5MKnD0+VU0b7fcjY/RbIxuIsHLVIvwJrSohY
r3gJ/iJmIKGgBwYFK4EEACKhZANiAAQeoKZkkc1GafmIgp1tbNbMBjr2EdvX2dtT
lGhzHJgE0YB6TavazcYH1iOBNmX7/pInCopiyWbjF/5olrRKJMG6DQz80td++fYf
O4tr+Z3nyUgRGmf/fqYA4PSN30CuOMU=
-----END EC PRIVATE KEY-----";
        assert_eq!(
            PrivateKey::from_pem(p384, "").unwrap_err(),
            KeyError::Unsupported
        );
    }

    #[test]
    fn public_keys_parse_from_pem_and_other_pem_is_refused() {
        let key = PrivateKey::from_pem(COSIGN_SIGSTORE_KEY, "hello").unwrap();
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let PrivateKind::EcdsaP256(k) = &key.kind else {
            panic!()
        };
        let pem = k
            .verifying_key()
            .to_public_key_pem(pkcs8::LineEnding::LF)
            .unwrap();
        let parsed = PublicKey::from_pem(&format!("\n  {pem}  \n")).unwrap();
        assert_eq!(parsed.fingerprint(), key.public_key().fingerprint());
        assert!(PublicKey::from_pem(COSIGN_ED25519_KEY)
            .unwrap_err()
            .contains("not a public key"));
        assert!(PublicKey::from_pem("garbage")
            .unwrap_err()
            .contains("not a PEM public key"));
    }

    #[test]
    fn a_hostile_scrypt_cost_is_refused_before_deriving() {
        let envelope = serde_json::json!({
            "kdf": {"name": "scrypt", "params": {"N": 1u64 << 30, "r": 8, "p": 1}, "salt": "AAAA"},
            "cipher": {"name": "nacl/secretbox", "nonce": base64::engine::general_purpose::STANDARD.encode([0u8; 24])},
            "ciphertext": "AAAA"
        });
        let e = decrypt(envelope.to_string().as_bytes(), "x").unwrap_err();
        assert!(e.to_string().contains("beyond"), "{e}");
    }
}
