//! cosign's signature storage (sigstore/cosign `specs/SIGNATURE_SPEC.md`): the signatures of
//! `repo@sha256:<hex>` live in the manifest tagged `repo:sha256-<hex>.sig`, one layer per
//! signature, each layer a simple-signing payload
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) with the base64 signature in its
//! `dev.cosignproject.cosign/signature` annotation. The payload names the digest it signs
//! in `critical.image.docker-manifest-digest`.

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

pub(crate) const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of every cosign container image signature.
pub(crate) const SIGNATURE_TYPE: &str = "cosign container image signature";

/// `sha256-<hex>.<suffix>`: where cosign puts what it attaches to `digest`.
pub(crate) fn attached_tag(digest: &Digest, suffix: &str) -> String {
    format!("sha256-{}.{suffix}", digest.hex())
}

/// The simple-signing payload, as far as dockhand reads it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Payload {
    pub critical: Critical,
    #[serde(default)]
    pub optional: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Critical {
    pub identity: Identity,
    pub image: ImageClaim,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct ImageClaim {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

/// The payload that signs `digest` for `reference` (cosign writes the repository name,
/// without tag or digest).
pub(crate) fn payload(reference: &str, digest: &Digest) -> Vec<u8> {
    let payload = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: reference.to_string(),
            },
            image: ImageClaim {
                docker_manifest_digest: digest.to_string(),
            },
            kind: SIGNATURE_TYPE.to_string(),
        },
        optional: None,
    };
    serde_json::to_vec(&payload).expect("a payload serialises")
}

/// What a signed payload says, read strictly: it must be a cosign container image
/// signature for `digest`. Another digest's payload (a replay) is refused here.
pub(crate) fn read_payload(bytes: &[u8], digest: &Digest) -> Result<Payload, String> {
    let payload: Payload = serde_json::from_slice(bytes)
        .map_err(|e| format!("the payload is not a simple-signing document: {e}"))?;
    if payload.critical.kind != SIGNATURE_TYPE {
        return Err(format!(
            "the payload's critical.type is {:?}, not {SIGNATURE_TYPE:?}",
            crate::redact::quote(&payload.critical.kind, 80)
        ));
    }
    if payload.critical.image.docker_manifest_digest != digest.as_str() {
        return Err(format!(
            "the payload signs {:?}, not {digest}",
            crate::redact::quote(&payload.critical.image.docker_manifest_digest, 80)
        ));
    }
    Ok(payload)
}

/// One layer of a `.sig` manifest.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Layer {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl Layer {
    /// The base64 signature this layer carries, if it is a simple-signing layer.
    pub(crate) fn signature(&self) -> Option<&str> {
        if self.media_type != SIMPLE_SIGNING {
            return None;
        }
        self.annotations
            .as_ref()?
            .get(SIGNATURE_ANNOTATION)
            .map(String::as_str)
    }
}

/// A `.sig` manifest: an OCI image manifest whose layers are signatures.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SignatureManifest {
    #[serde(default)]
    pub layers: Vec<Layer>,
}

/// The OCI manifest and config that store `layers` as cosign does, with the config's
/// bytes (cosign's config lists each payload's digest as a diff_id).
pub(crate) fn signature_manifest(layers: &[Layer]) -> (Vec<u8>, Vec<u8>) {
    let config = serde_json::json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.as_str()).collect::<Vec<_>>(),
        },
        "config": {}
    });
    let config = serde_json::to_vec(&config).expect("json");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::image::OCI_MANIFEST,
        "config": {
            "mediaType": crate::image::OCI_CONFIG,
            "size": config.len(),
            "digest": Digest::of(&config),
        },
        "layers": layers,
    });
    (serde_json::to_vec(&manifest).expect("json"), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const E: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn the_tag_scheme_and_payload_follow_cosigns_spec() {
        let d: Digest = D.parse().unwrap();
        assert_eq!(attached_tag(&d, "sig"), format!("sha256-{}.sig", d.hex()));
        let p = payload("reg.example.com/app", &d);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["critical"]["image"]["docker-manifest-digest"], D);
        assert_eq!(
            v["critical"]["identity"]["docker-reference"],
            "reg.example.com/app"
        );
        assert_eq!(v["critical"]["type"], SIGNATURE_TYPE);
        assert!(read_payload(&p, &d).is_ok());
    }

    #[test]
    fn a_payload_for_another_digest_or_of_another_type_is_refused() {
        let d: Digest = D.parse().unwrap();
        let e: Digest = E.parse().unwrap();
        let err = read_payload(&payload("r", &e), &d).unwrap_err();
        assert!(err.contains(&format!("signs \"{E}\", not {D}")), "{err}");
        let other = String::from_utf8(payload("r", &d))
            .unwrap()
            .replace(SIGNATURE_TYPE, "something else");
        assert!(read_payload(other.as_bytes(), &d)
            .unwrap_err()
            .contains("critical.type"));
        assert!(read_payload(b"{", &d).is_err());
    }
}
