//! Signed images: which digests a trusted key signed (cosign's tag scheme and sigstore
//! bundles found through the OCI 1.1 referrers API), signing on `out`, and carrying
//! signatures along when an image is copied.
//!
//! - `keys.rs`: public and private keys, cosign's encrypted key format.
//! - `cosign.rs`: the simple-signing payload and the `sha256-<hex>.sig` tag scheme.
//! - `bundle.rs`: sigstore bundles (message signatures, DSSE in-toto statements).
//! - `verify.rs`: finding a valid signature for a digest, within a small request budget.
//! - `sign.rs`: signing a pushed digest and storing the signature as cosign does.
//! - `copy.rs`: copying `.sig`/`.att`/`.sbom` tags and referrers to another repository.

pub(crate) mod bundle;
pub(crate) mod copy;
pub(crate) mod cosign;
pub(crate) mod keys;
pub(crate) mod sign;
pub(crate) mod verify;

use crate::reference::Repository;
pub(crate) use keys::{PrivateKey, PublicKey};
pub(crate) use verify::{verify, Verified};

/// `source.cosign_public_keys` and `source.cosign_check_reference`, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub keys: Vec<PublicKey>,
    /// A payload's `docker-reference` must name `repository` (cosign itself ignores it).
    pub check_reference: bool,
    pub repository: Repository,
}

impl Policy {
    /// The keys' short fingerprints, for messages: `sha256:0123456789abcdef, ...`.
    pub(crate) fn fingerprints(&self) -> String {
        self.keys
            .iter()
            .map(PublicKey::short)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `reference` (a payload's `docker-reference`, perhaps with a tag or digest)
    /// names the policy's repository.
    pub(crate) fn names_repository(&self, reference: &str) -> bool {
        let name = reference.split('@').next().unwrap_or_default();
        // A `:` after the last `/` is a tag; one before it is a port.
        let name = match (name.rfind(':'), name.rfind('/')) {
            (Some(colon), Some(slash)) if colon > slash => &name[..colon],
            (Some(_), None) => name.split(':').next().unwrap_or_default(),
            _ => name,
        };
        name.parse::<Repository>()
            .is_ok_and(|r| r == self.repository)
    }
}

/// `source.cosign_public_keys` checked: each entry one PEM public key; the field names the
/// entry that is wrong.
pub(crate) fn parse_public_keys(entries: &[String]) -> Result<Vec<PublicKey>, (String, String)> {
    let mut keys = Vec::new();
    for (i, pem) in entries.iter().enumerate() {
        let key =
            PublicKey::from_pem(pem).map_err(|e| (format!("source.cosign_public_keys[{i}]"), e))?;
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_check_ignores_tags_and_digests_and_knows_ports() {
        let policy = Policy {
            keys: Vec::new(),
            check_reference: true,
            repository: "127.0.0.1:5000/team/app".parse().unwrap(),
        };
        for yes in [
            "127.0.0.1:5000/team/app",
            "127.0.0.1:5000/team/app:1.0",
            "127.0.0.1:5000/team/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(policy.names_repository(yes), "{yes}");
        }
        for no in [
            "127.0.0.1:5000/team/other",
            "127.0.0.1:5001/team/app",
            "",
            "::",
        ] {
            assert!(!policy.names_repository(no), "{no}");
        }
        let hub = Policy {
            repository: "library/alpine".parse().unwrap(),
            ..policy
        };
        assert!(hub.names_repository("index.docker.io/library/alpine"));
        assert!(hub.names_repository("alpine:3"));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a registry or a pipeline hands over as a key, a payload or a bundle:
        /// an answer or a short error, never a panic, never the password.
        #[test]
        fn hostile_keys_payloads_and_bundles_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            text in "\\PC{0,300}",
        ) {
            let digest = crate::reference::Digest::of(b"x");
            let policy = Policy {
                keys: Vec::new(),
                check_reference: true,
                repository: "127.0.0.1:5000/app".parse().unwrap(),
            };
            let _ = cosign::read_payload(&bytes, &digest);
            let _ = bundle::verify_bundle(&bytes, &digest, &policy);
            let _ = bundle::verify_bundle(text.as_bytes(), &digest, &policy);
            let _ = PublicKey::from_pem(&text);
            let pem = format!("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{text}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----");
            for candidate in [text.as_str(), pem.as_str()] {
                if let Err(e) = PrivateKey::from_pem(candidate, "p4ssw0rd-secret") {
                    let line = e.to_string();
                    prop_assert!(!line.contains("p4ssw0rd-secret") && line.len() < 300, "{line}");
                }
            }
            let _ = policy.names_repository(&text);
        }
    }
}
