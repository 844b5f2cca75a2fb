//! Signing on `out`: the pushed digest (an index's, for a multi-platform image) signed with
//! a simple-signing payload and stored the way cosign reads it, as one more layer of the
//! `sha256-<hex>.sig` manifest (the signatures already there are kept).

use base64::Engine as _;

use super::cosign::{self, Layer, SignatureManifest};
use super::keys::KeyError;
use super::PrivateKey;
use crate::blob::Body;
use crate::blocking::blocking;
use crate::error::Error;
use crate::reference::{Digest, Repository};
use crate::registry::{Registry, RegistryError};
use crate::secret::Secret;

/// Signatures kept in one `.sig` manifest; the oldest beyond this are dropped.
const MAX_KEPT_SIGNATURES: usize = 32;

/// What signing stored.
#[derive(Debug)]
pub(crate) struct Signed {
    /// `sha256-<hex>.sig`
    pub tag: String,
}

/// Signs `digest` in `repository` with `key` and pushes the signature.
pub(crate) async fn sign(
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
    key: &PrivateKey,
) -> Result<Signed, RegistryError> {
    let payload = cosign::payload(&repository.to_string(), digest);
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    let ours = Layer {
        media_type: cosign::SIMPLE_SIGNING.to_string(),
        digest: Digest::of(&payload),
        size: payload.len() as u64,
        annotations: Some([(cosign::SIGNATURE_ANNOTATION.to_string(), signature)].into()),
    };
    let tag = cosign::attached_tag(digest, "sig");
    let mut layers: Vec<Layer> = match registry.manifest(repository, &tag).await? {
        Some(m) => serde_json::from_slice::<SignatureManifest>(&m.bytes)
            .map(|m| m.layers)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    layers.retain(|l| l.signature().is_some());
    let already = layers
        .iter()
        .any(|l| l.digest == ours.digest && l.signature() == ours.signature());
    if !already {
        layers.push(ours);
    }
    if layers.len() > MAX_KEPT_SIGNATURES {
        layers.drain(..layers.len() - MAX_KEPT_SIGNATURES);
    }
    let (manifest, config) = cosign::signature_manifest(&layers);
    for (bytes, content_type) in [
        (payload, cosign::SIMPLE_SIGNING),
        (config, crate::image::OCI_CONFIG),
    ] {
        let d = Digest::of(&bytes);
        if !registry.blob_exists(repository, &d).await? {
            let body = Body::Bytes {
                bytes,
                content_type: content_type.to_string(),
            };
            registry.upload_blob(repository, &d, body, None).await?;
        }
    }
    registry
        .put_manifest(repository, &tag, crate::image::OCI_MANIFEST, &manifest)
        .await?;
    Ok(Signed { tag })
}

/// `params.cosign_sign` opened (scrypt is slow on purpose: off the async threads); a wrong
/// password or a bad key is one line naming the field, never quoting either.
pub(crate) async fn open_key(
    key: Option<&Secret>,
    password: Option<&Secret>,
) -> Result<PrivateKey, Error> {
    let key = key
        .filter(|k| !k.is_empty())
        .cloned()
        .ok_or_else(|| Error::field("params.cosign_sign.key", "required"))?;
    let password = password.cloned().unwrap_or_default();
    blocking(move || PrivateKey::from_pem(key.expose(), password.expose()))
        .await
        .map_err(|e| {
            let field = match e {
                KeyError::WrongPassword | KeyError::PasswordRequired => {
                    "params.cosign_sign.password"
                }
                _ => "params.cosign_sign.key",
            };
            Error::field(field, e)
        })
}
