//! Signatures made and read without dockhand: keys made and payloads signed by the `openssl`
//! command, stored in a registry the way cosign stores them (sigstore/cosign
//! `specs/SIGNATURE_SPEC.md`: the `sha256-<hex>.sig` tag, simple-signing layers with the
//! base64 signature in `dev.cosignproject.cosign/signature`), and read back with plain HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};

use super::block_on;
use super::image::sha256;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// cosign's own test data (sigstore/cosign `pkg/cosign/keys_test.go`, `pemsigstorekey`):
/// an encrypted ECDSA P-256 key whose password is [`COSIGN_TEST_PASSWORD`].
pub const COSIGN_TEST_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjozMjc2OCwiciI6
OCwicCI6MX0sInNhbHQiOiI3T3VGd2VsbWZZNXVId2NoaURSc210anNwZ2ZlZjFG
Mk5lOGFDTjVLYVpZPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJQNHk4OGhCb3ZTa09MbXN0bFVBaGJwdDJ0K2xTNUxQSCJ9LCJj
aXBoZXJ0ZXh0IjoiMnB1QzdyZldJOWh3bnJlQ2s4aUZDRlVwQlRrSzRJNlIvbFBF
cnBDekpXUGpJWXl4eGVIL1A2VW52cFJHdVhla1NNb3JMdGhLamdoQ1JlNy82NDVH
QWtoVm1LRC92eEF0S2EvbE1abENSQ3FlekJGUFd1dzNpeFRtZ2xhb2J1ZFVSbUVs
bmNGOGlZbzBTMVl6Y1ZOMVFwY2J2c0dNcUlYRzVlbmdteGp5dCtBcXlyZTF0Q0Y0
V01tU1BlaEljNlBqd2h1Q2xHaVpJUWRvTGc9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
";
pub const COSIGN_TEST_PASSWORD: &str = "hello";
/// The public half of [`COSIGN_TEST_KEY`] (printed once from the opened key; OpenSSL
/// verifying a signature with it shows both are right).
pub const COSIGN_TEST_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7z9gA/tqa9iHt/f9F3ulyVi4lwqU
LfHWfhG2mK4eyJ8LDcLstb+VVhxj3pkMjc3fNo+sSfiIY2NLR7c+DG1V4w==
-----END PUBLIC KEY-----
";

/// A key pair made by `openssl genpkey`, in its own directory.
pub struct KeyPair {
    pub dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public_pem: String,
    pub ed25519: bool,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl KeyPair {
    /// `ec` (P-256, cosign's default), `rsa` (2048) or `ed25519`.
    pub fn new(kind: &str) -> KeyPair {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        let p = private.to_str().unwrap();
        match kind {
            "ec" => openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                p,
            ]),
            "rsa" => openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                p,
            ]),
            "ed25519" => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
            other => panic!("no key kind {other}"),
        };
        let public_pem = String::from_utf8(openssl(&["pkey", "-in", p, "-pubout"])).unwrap();
        KeyPair {
            dir,
            private,
            public_pem,
            ed25519: kind == "ed25519",
        }
    }

    /// The private key's PEM (PKCS#8, unencrypted).
    pub fn private_pem(&self) -> String {
        std::fs::read_to_string(&self.private).unwrap()
    }

    /// `openssl dgst -sha256 -sign` over `message` (Ed25519: `pkeyutl -sign -rawin`).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let input = self.dir.path().join("message");
        std::fs::write(&input, message).unwrap();
        let (key, msg) = (self.private.to_str().unwrap(), input.to_str().unwrap());
        if self.ed25519 {
            openssl(&["pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", msg])
        } else {
            openssl(&["dgst", "-sha256", "-sign", key, msg])
        }
    }

    /// Whether `openssl` accepts `signature` over `message` by this key.
    pub fn openssl_verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        verify_with_openssl(&self.public_pem, message, signature, self.ed25519)
    }
}

/// Whether `openssl` accepts `signature` over `message` by `public_pem`.
pub fn verify_with_openssl(
    public_pem: &str,
    message: &[u8],
    signature: &[u8],
    ed25519: bool,
) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (public, msg, sig) = (
        dir.path().join("pub.pem"),
        dir.path().join("message"),
        dir.path().join("sig"),
    );
    std::fs::write(&public, public_pem).unwrap();
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&sig, signature).unwrap();
    let (public, msg, sig) = (
        public.to_str().unwrap(),
        msg.to_str().unwrap(),
        sig.to_str().unwrap(),
    );
    let args: Vec<&str> = if ed25519 {
        vec![
            "pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin", "-in", msg, "-sigfile", sig,
        ]
    } else {
        vec!["dgst", "-sha256", "-verify", public, "-signature", sig, msg]
    };
    Command::new("openssl")
        .args(&args)
        .output()
        .expect("openssl")
        .status
        .success()
}

/// The simple-signing payload cosign writes for `digest` of `reference`.
pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap()
}

/// `sha256-<hex>.<suffix>`
pub fn attached_tag(digest: &str, suffix: &str) -> String {
    format!("sha256-{}.{suffix}", digest.trim_start_matches("sha256:"))
}

/// Plain HTTP to a registry (or a proxy in front of one) with no authentication.
pub struct Http {
    pub host: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(host: &str) -> Http {
        Http {
            host: host.to_string(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Uploads a blob (monolithic POST + PUT); returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        block_on(async {
            let r = self
                .client
                .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.host))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "open upload");
            let location = r.headers()["location"].to_str().unwrap().to_string();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("http://{}{location}", self.host)
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let r = self
                .client
                .put(format!("{location}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "put blob");
        });
        digest
    }

    /// PUTs a manifest under `reference`; returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        block_on(async {
            let r = self
                .client
                .put(format!(
                    "http://{}/v2/{repo}/manifests/{reference}",
                    self.host
                ))
                .header("content-type", media_type)
                .body(bytes.to_vec())
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            assert_eq!(status, 201, "put manifest {reference}: {text}");
        });
        sha256(bytes)
    }

    /// GETs a manifest (`None` on 404).
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<Vec<u8>> {
        block_on(async {
            let r = self
                .client
                .get(format!("http://{}/v2/{repo}/manifests/{reference}", self.host))
                .header(
                    "accept",
                    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
                )
                .send()
                .await
                .unwrap();
            if r.status() == 404 {
                return None;
            }
            assert!(
                r.status().is_success(),
                "get manifest {reference}: {}",
                r.status()
            );
            Some(r.bytes().await.unwrap().to_vec())
        })
    }

    pub fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        block_on(async {
            let r = self
                .client
                .get(format!("http://{}/v2/{repo}/blobs/{digest}", self.host))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "get blob {digest}: {}", r.status());
            r.bytes().await.unwrap().to_vec()
        })
    }

    /// The referrers list (`None` on 404).
    pub fn referrers(&self, repo: &str, digest: &str) -> Option<Value> {
        block_on(async {
            let r = self
                .client
                .get(format!("http://{}/v2/{repo}/referrers/{digest}", self.host))
                .send()
                .await
                .unwrap();
            if r.status() == 404 {
                return None;
            }
            Some(r.json().await.unwrap())
        })
    }

    /// Stores signatures as cosign does: one layer per (payload, signature) under the tag
    /// `sha256-<hex>.sig` of `digest`; returns the signature manifest's digest.
    pub fn store_signatures(
        &self,
        repo: &str,
        digest: &str,
        signed: &[(Vec<u8>, Vec<u8>)],
    ) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut layers = Vec::new();
        for (payload, signature) in signed {
            let d = self.put_blob(repo, payload);
            layers.push(json!({
                "mediaType": SIMPLE_SIGNING,
                "size": payload.len(),
                "digest": d,
                "annotations": {SIGNATURE_ANNOTATION: b64.encode(signature)}
            }));
        }
        let config = serde_json::to_vec(&json!({
            "architecture": "", "os": "", "config": {},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l["digest"].clone()).collect::<Vec<_>>()}
        }))
        .unwrap();
        let config_digest = self.put_blob(repo, &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
            "layers": layers
        }))
        .unwrap();
        self.put_manifest(
            repo,
            &attached_tag(digest, "sig"),
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
    }

    /// Stores `bundle` as cosign 3 does: an OCI manifest whose subject is `subject` (a
    /// descriptor), pushed by digest; returns the manifest's digest.
    pub fn store_bundle(&self, repo: &str, subject: Value, bundle: &[u8]) -> String {
        let empty = b"{}";
        let empty_digest = self.put_blob(repo, empty);
        let bundle_digest = self.put_blob(repo, bundle);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": BUNDLE_V03,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty_digest},
            "layers": [{"mediaType": BUNDLE_V03, "size": bundle.len(), "digest": bundle_digest}],
            "subject": subject,
            "annotations": {"dev.sigstore.bundle.content": "dsse-envelope"}
        }))
        .unwrap();
        let digest = sha256(&manifest);
        self.put_manifest(
            repo,
            &digest,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
    }
}

/// A DSSE bundle whose in-toto statement names `digest`, signed by `key` with OpenSSL over
/// DSSE's pre-authentication encoding.
pub fn dsse_bundle(key: &KeyPair, name: &str, digest: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {}
    }))
    .unwrap();
    let mut pae = format!("DSSEv1 {} {IN_TOTO} {} ", IN_TOTO.len(), statement.len()).into_bytes();
    pae.extend_from_slice(&statement);
    let sig = key.sign(&pae);
    serde_json::to_vec(&json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": ""}},
        "dsseEnvelope": {
            "payload": b64.encode(&statement),
            "payloadType": IN_TOTO,
            "signatures": [{"sig": b64.encode(sig), "keyid": ""}]
        }
    }))
    .unwrap()
}

/// Writes `text` to `dir/name`; its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
