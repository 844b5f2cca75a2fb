//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`, sigstore's
//! protobuf-specs `Bundle` as JSON) attached to an image as referrers: an OCI manifest whose
//! `subject` is the image and whose layer is the bundle. A bundle holds either a message
//! signature over the image's manifest (its SHA-256 is the digest), or a DSSE envelope
//! (`application/vnd.in-toto+json`) whose in-toto statement has the image digest among its
//! subjects, which is what cosign 3 writes by default. Both are verified with the policy's
//! keys; transparency-log entries and certificates in the bundle are not used (the keys are
//! the trust).

use base64::Engine as _;
use serde::Deserialize;

use super::verify::{signer, MAX_CANDIDATES, MAX_SIGNED_BYTES};
use super::{Policy, PublicKey};
use crate::reference::{Digest, Repository};
use crate::registry::{Registry, RegistryError};

#[cfg(test)]
const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// DSSE payload type of in-toto statements.
pub(crate) const IN_TOTO: &str = "application/vnd.in-toto+json";

/// Whether an artifact type is a sigstore bundle's (any version).
pub(crate) fn is_bundle_type(artifact_type: &Option<String>) -> bool {
    artifact_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/vnd.dev.sigstore.bundle"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    layers: Vec<crate::image::Descriptor>,
    subject: Option<crate::image::Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    #[serde(default)]
    media_type: String,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: MessageDigest,
    signature: String,
}

#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

/// What a verified bundle gives: the key, the format, the claims.
pub(crate) type Found = (PublicKey, &'static str, serde_json::Value);

/// The referrer `referrer`'s bundle, verified as a signature of `digest`.
pub(crate) async fn verify_referrer(
    registry: &Registry,
    repository: &Repository,
    referrer: &Digest,
    digest: &Digest,
    policy: &Policy,
) -> Result<Result<Found, String>, RegistryError> {
    let Some(raw) = registry.manifest(repository, referrer.as_str()).await? else {
        return Ok(Err("listed but not found".into()));
    };
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&raw.bytes) else {
        return Ok(Err("not an image manifest".into()));
    };
    if manifest.subject.as_ref().map(|s| &s.digest) != Some(digest) {
        return Ok(Err(format!("its subject is not {digest}")));
    }
    let Some(layer) = manifest.layers.iter().take(MAX_CANDIDATES).find(|l| {
        l.media_type
            .starts_with("application/vnd.dev.sigstore.bundle")
    }) else {
        return Ok(Err("no bundle layer".into()));
    };
    if layer.size > MAX_SIGNED_BYTES {
        return Ok(Err(format!(
            "the bundle is larger than {MAX_SIGNED_BYTES} bytes"
        )));
    }
    let bytes = registry.blob_bytes(repository, &layer.digest).await?;
    Ok(verify_bundle(&bytes, digest, policy))
}

/// A bundle's signature, verified as one of `digest`.
pub(crate) fn verify_bundle(
    bytes: &[u8],
    digest: &Digest,
    policy: &Policy,
) -> Result<Found, String> {
    let bundle: Bundle =
        serde_json::from_slice(bytes).map_err(|e| format!("not a sigstore bundle: {e}"))?;
    if !bundle
        .media_type
        .starts_with("application/vnd.dev.sigstore.bundle")
    {
        return Err("not a sigstore bundle (its mediaType)".into());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(m) = bundle.message_signature {
        if m.message_digest.algorithm != "SHA2_256" {
            return Err(format!(
                "the message digest is {}, not SHA2_256",
                crate::redact::quote(&m.message_digest.algorithm, 40)
            ));
        }
        let hash = b64
            .decode(m.message_digest.digest.trim())
            .map_err(|_| "the message digest is not base64")?;
        if Digest::from_sha256(&hash) != *digest {
            return Err(format!(
                "the message signature is for {}, not {digest}",
                Digest::from_sha256(&hash)
            ));
        }
        let signature = b64
            .decode(m.signature.trim())
            .map_err(|_| "the signature is not base64")?;
        let key = policy
            .keys
            .iter()
            .find(|k| k.verify_prehashed(&hash, &signature))
            .ok_or("the message signature is not by any of the keys")?;
        return Ok((
            key.clone(),
            "bundle/message-signature",
            serde_json::json!({"messageDigest": digest}),
        ));
    }
    let Some(envelope) = bundle.dsse_envelope else {
        return Err("neither a message signature nor a DSSE envelope".into());
    };
    if envelope.payload_type != IN_TOTO {
        return Err(format!(
            "the DSSE payload type is {:?}, not {IN_TOTO}",
            crate::redact::quote(&envelope.payload_type, 80)
        ));
    }
    let payload = b64
        .decode(envelope.payload.trim())
        .map_err(|_| "the DSSE payload is not base64")?;
    let message = pae(&envelope.payload_type, &payload);
    let key = envelope
        .signatures
        .iter()
        .take(MAX_CANDIDATES)
        .filter_map(|s| b64.decode(s.sig.trim()).ok())
        .find_map(|sig| signer(&policy.keys, &message, &sig))
        .ok_or("the DSSE envelope is not signed by any of the keys")?;
    let statement: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|_| "the DSSE payload is not an in-toto statement")?;
    let names_digest = statement["subject"].as_array().is_some_and(|subjects| {
        subjects
            .iter()
            .any(|s| s["digest"]["sha256"].as_str() == Some(digest.hex()))
    });
    if !names_digest {
        return Err(format!(
            "the in-toto statement's subjects do not include {digest}"
        ));
    }
    Ok((key.clone(), "bundle/dsse", statement))
}

/// DSSE's pre-authentication encoding: what is signed.
pub(crate) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::keys::tests::COSIGN_SIGSTORE_KEY;
    use crate::signature::PrivateKey;

    fn policy(key: &PrivateKey) -> Policy {
        Policy {
            keys: vec![key.public_key()],
            check_reference: false,
            repository: "127.0.0.1:5000/app".parse().unwrap(),
        }
    }

    #[test]
    fn dsse_envelopes_verify_over_the_pae_and_must_name_the_digest() {
        let key = PrivateKey::from_pem(COSIGN_SIGSTORE_KEY, "hello").unwrap();
        let digest = Digest::of(b"manifest");
        let other = Digest::of(b"other");
        let b64 = base64::engine::general_purpose::STANDARD;
        let bundle_for = |subject: &Digest, tamper: bool| {
            let statement = serde_json::json!({
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [{"name": "app", "digest": {"sha256": subject.hex()}}],
                "predicateType": "https://sigstore.dev/cosign/sign/v1",
                "predicate": {}
            })
            .to_string();
            let mut sig = key.sign(&pae(IN_TOTO, statement.as_bytes()));
            if tamper {
                sig.truncate(sig.len() / 2);
            }
            serde_json::json!({
                "mediaType": BUNDLE_V03,
                "dsseEnvelope": {
                    "payload": b64.encode(&statement),
                    "payloadType": IN_TOTO,
                    "signatures": [{"sig": b64.encode(sig), "keyid": ""}]
                }
            })
            .to_string()
        };
        let p = policy(&key);
        let (_, format, claims) =
            verify_bundle(bundle_for(&digest, false).as_bytes(), &digest, &p).unwrap();
        assert_eq!(format, "bundle/dsse");
        assert_eq!(claims["subject"][0]["digest"]["sha256"], digest.hex());
        let e = verify_bundle(bundle_for(&other, false).as_bytes(), &digest, &p).unwrap_err();
        assert!(e.contains("subjects do not include"), "{e}");
        let e = verify_bundle(bundle_for(&digest, true).as_bytes(), &digest, &p).unwrap_err();
        assert!(e.contains("not signed by any"), "{e}");
    }

    #[test]
    fn message_signatures_verify_against_the_digest() {
        use sha2::Digest as _;
        let key = PrivateKey::from_pem(COSIGN_SIGSTORE_KEY, "hello").unwrap();
        let manifest = b"{\"schemaVersion\":2}";
        let digest = Digest::of(manifest);
        let b64 = base64::engine::general_purpose::STANDARD;
        let bundle = serde_json::json!({
            "mediaType": BUNDLE_V03,
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(sha2::Sha256::digest(manifest))},
                "signature": b64.encode(key.sign(manifest))
            }
        })
        .to_string();
        let p = policy(&key);
        assert_eq!(
            verify_bundle(bundle.as_bytes(), &digest, &p).unwrap().1,
            "bundle/message-signature"
        );
        let e = verify_bundle(bundle.as_bytes(), &Digest::of(b"x"), &p).unwrap_err();
        assert!(e.contains("is for"), "{e}");
    }
}
