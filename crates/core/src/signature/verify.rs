//! Whether a digest carries a valid signature by one of the policy's keys.
//!
//! Where signatures are looked for, in order: the OCI 1.1 referrers API
//! (`/v2/<name>/referrers/<digest>`), for sigstore bundles; then cosign's tag
//! `sha256-<hex>.sig`; then, when the registry has no referrers API (404), the index the
//! distribution spec's referrers tag schema keeps under `sha256-<hex>`. The first valid
//! signature ends the search, so a signed digest costs three requests (the referrers list, a
//! manifest, a blob), a bundle on a registry without the API five, an unsigned one a few
//! more.
//!
//! A signature counts only when its payload names the digest being verified (a signature
//! for another digest copied under this digest's tag is a replay, refused) and, with
//! `cosign_check_reference`, when the payload's `docker-reference` names the repository.

use base64::Engine as _;

use super::bundle;
use super::cosign::{self, SignatureManifest};
use super::{Policy, PublicKey};
use crate::reference::{Digest, Repository};
use crate::registry::{Referrer, ReferrerList, Registry, RegistryError};

/// Layers of a `.sig` manifest, and referrers, looked at for one digest.
pub(crate) const MAX_CANDIDATES: usize = 16;
/// A payload or bundle larger than this is not read (cosign's are under 4 KiB).
pub(crate) const MAX_SIGNED_BYTES: u64 = 256 << 10;

/// A valid signature: which key, where it was found, what it signs.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub key: PublicKey,
    /// `tag sha256-<hex>.sig` or `referrer sha256:<digest>`.
    pub found_in: String,
    /// `simplesigning`, `bundle/message-signature` or `bundle/dsse`.
    pub format: &'static str,
    /// The signed payload (the simple-signing document, the in-toto statement), or for a
    /// message signature, the digest it signs.
    pub claims: serde_json::Value,
}

impl Verified {
    /// One entry of `signatures.json`.
    pub(crate) fn to_json(&self, digest: &Digest) -> serde_json::Value {
        serde_json::json!({
            "digest": digest,
            "key": self.key.fingerprint(),
            "algorithm": self.key.algorithm(),
            "found_in": self.found_in,
            "format": self.format,
            "claims": self.claims,
        })
    }
}

/// The answer for one digest: its signature, or why none counted (each a short phrase).
pub(crate) type Outcome = Result<Verified, Vec<String>>;

/// Looks for a valid signature of `digest` in `repository`.
pub(crate) async fn verify(
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
    policy: &Policy,
) -> Result<Outcome, RegistryError> {
    let mut reasons = Vec::new();
    let api = registry.referrers(repository, digest).await?;
    if let Some(listed) = &api {
        if let Some(v) = bundles(registry, repository, digest, policy, listed, &mut reasons).await?
        {
            return Ok(Ok(v));
        }
    }
    if let Some(v) = tag_scheme(registry, repository, digest, policy, &mut reasons).await? {
        return Ok(Ok(v));
    }
    if api.is_none() {
        // No referrers API: the distribution spec's referrers tag schema, last, so that a
        // cosign `.sig` costs no more than with the API.
        match tag_index(registry, repository, digest).await? {
            Some(listed) => {
                if let Some(v) =
                    bundles(registry, repository, digest, policy, &listed, &mut reasons).await?
                {
                    return Ok(Ok(v));
                }
            }
            None => reasons.push(format!("no referrers tag {}", index_tag(digest))),
        }
    }
    Ok(Err(reasons))
}

/// `sha256-<hex>`: the distribution spec's referrers tag schema.
pub(crate) fn index_tag(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// The referrers listed by the index under `sha256-<hex>` (registries without the API).
pub(crate) async fn tag_index(
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
) -> Result<Option<Vec<Referrer>>, RegistryError> {
    let Some(index) = registry.manifest(repository, &index_tag(digest)).await? else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_slice::<ReferrerList>(&index.bytes)
            .map(|l| l.manifests)
            .unwrap_or_default(),
    ))
}

/// The sigstore bundles among `listed`, tried in order.
async fn bundles(
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
    policy: &Policy,
    listed: &[Referrer],
    reasons: &mut Vec<String>,
) -> Result<Option<Verified>, RegistryError> {
    for referrer in listed.iter().take(MAX_CANDIDATES) {
        if !bundle::is_bundle_type(&referrer.artifact_type) {
            continue;
        }
        let found_in = format!("referrer {}", referrer.digest);
        match bundle::verify_referrer(registry, repository, &referrer.digest, digest, policy)
            .await?
        {
            Ok((key, format, claims)) => {
                return Ok(Some(Verified {
                    key,
                    found_in,
                    format,
                    claims,
                }))
            }
            Err(why) => reasons.push(format!("{found_in}: {why}")),
        }
    }
    Ok(None)
}

/// The signatures in `sha256-<hex>.sig`, tried layer by layer.
async fn tag_scheme(
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
    policy: &Policy,
    reasons: &mut Vec<String>,
) -> Result<Option<Verified>, RegistryError> {
    let tag = cosign::attached_tag(digest, "sig");
    let Some(manifest) = registry.manifest(repository, &tag).await? else {
        reasons.push(format!("no {tag}"));
        return Ok(None);
    };
    let found_in = format!("tag {tag}");
    let parsed: SignatureManifest = match serde_json::from_slice(&manifest.bytes) {
        Ok(m) => m,
        Err(_) => {
            reasons.push(format!("{found_in}: not a signature manifest"));
            return Ok(None);
        }
    };
    for (i, layer) in parsed.layers.iter().take(MAX_CANDIDATES).enumerate() {
        let Some(signature) = layer.signature() else {
            continue;
        };
        let at = format!("{found_in} layer {i}");
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature.trim())
        else {
            reasons.push(format!("{at}: the signature is not base64"));
            continue;
        };
        if layer.size > MAX_SIGNED_BYTES {
            reasons.push(format!(
                "{at}: the payload is larger than {MAX_SIGNED_BYTES} bytes"
            ));
            continue;
        }
        // The signature is over the payload: read it (checked against its digest), then
        // verify, then believe what it says.
        let payload = registry.blob_bytes(repository, &layer.digest).await?;
        let Some(key) = signer(&policy.keys, &payload, &signature) else {
            reasons.push(format!("{at}: not signed by any of the keys"));
            continue;
        };
        match check_payload(&payload, digest, policy) {
            Ok(claims) => {
                return Ok(Some(Verified {
                    key: key.clone(),
                    found_in,
                    format: "simplesigning",
                    claims,
                }))
            }
            Err(why) => reasons.push(format!("{at}: {why}")),
        }
    }
    if reasons.is_empty() || !reasons.iter().any(|r| r.starts_with(&found_in)) {
        reasons.push(format!("{found_in}: no signature layers"));
    }
    Ok(None)
}

/// The key whose signature `signature` is over `message`.
pub(super) fn signer<'k>(
    keys: &'k [PublicKey],
    message: &[u8],
    signature: &[u8],
) -> Option<&'k PublicKey> {
    keys.iter().find(|k| k.verify(message, signature))
}

/// A simple-signing payload's claims, when they are for `digest` (and the repository, with
/// `cosign_check_reference`).
pub(super) fn check_payload(
    payload: &[u8],
    digest: &Digest,
    policy: &Policy,
) -> Result<serde_json::Value, String> {
    let parsed = cosign::read_payload(payload, digest)?;
    let reference = &parsed.critical.identity.docker_reference;
    if policy.check_reference && !policy.names_repository(reference) {
        return Err(format!(
            "the payload names {:?}, not {} (cosign_check_reference)",
            crate::redact::quote(reference, 120),
            policy.repository
        ));
    }
    Ok(serde_json::to_value(&parsed).expect("a payload is JSON"))
}

/// Reasons quoted in the one line for an unsigned digest; the rest are counted.
const QUOTED_REASONS: usize = 3;

/// One line for an unsigned digest: the keys asked for and what was found instead.
pub(crate) fn unsigned_reason(policy: &Policy, reasons: &[String]) -> String {
    let mut found = reasons
        .iter()
        .take(QUOTED_REASONS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > QUOTED_REASONS {
        found.push_str(&format!("; and {} more", reasons.len() - QUOTED_REASONS));
    }
    if !found.is_empty() {
        found = format!(" ({found})");
    }
    format!(
        "no valid signature by source.cosign_public_keys ({}){found}",
        policy.fingerprints()
    )
}

/// Which of `versions` (tag, digest) are signed, checked `concurrency` at a time; each
/// unsigned one is logged as a warning naming it. Every digest is checked once.
pub(crate) async fn signed_digests(
    registry: &Registry,
    repository: &Repository,
    policy: &Policy,
    versions: &[(String, Digest)],
    concurrency: usize,
) -> Result<std::collections::HashSet<Digest>, RegistryError> {
    use futures_util::{stream, StreamExt as _};
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&(String, Digest)> = versions
        .iter()
        .filter(|(_, d)| seen.insert(d.clone()))
        .collect();
    type Checked<'a> = Result<(&'a (String, Digest), Outcome), RegistryError>;
    let results: Vec<Checked> = stream::iter(unique)
        .map(|v| async move { Ok((v, verify(registry, repository, &v.1, policy).await?)) })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut signed = std::collections::HashSet::new();
    for r in results {
        let ((tag, digest), outcome) = r?;
        match outcome {
            Ok(v) => {
                tracing::info!(
                    "{repository}:{tag} ({digest}) is signed by {} ({})",
                    v.key.short(),
                    v.found_in
                );
                signed.insert(digest.clone());
            }
            Err(reasons) => tracing::warn!(
                "{repository}:{tag} ({digest}) skipped: {}",
                unsigned_reason(policy, &reasons)
            ),
        }
    }
    Ok(signed)
}
