//! Signed images (issue 15): `cosign_public_keys` on check and in, against signatures made
//! by OpenSSL and stored as cosign stores them; `cosign_sign` on out, read back with plain
//! HTTP and verified by OpenSSL; referrers and sigstore bundles; `copy_signatures`.

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::cosign::{self, attached_tag, payload, Http, KeyPair};
use crate::common::{self, check, env, FaultProxy, Image, IndexBuilder, Run, AMD64, ARM64};

fn get(source: &Value, digest: &str, params: Value, dest: &Path) -> common::Outcome {
    Run::new("in")
        .arg(dest.display().to_string())
        .stdin_json(&json!({"source": source, "version": {"digest": digest}, "params": params}))
        .run()
}

fn put(source: &Value, params: Value, src: &Path) -> common::Outcome {
    Run::new("out")
        .arg(src.display().to_string())
        .stdin_json(&json!({"source": source, "params": params}))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .run()
}

/// `in` with `skip_download` of `digest` (it must succeed): its `signatures.json`.
fn signatures_got(source: &Value, digest: &str) -> Value {
    let dest = tempfile::tempdir().unwrap();
    get(source, digest, json!({"skip_download": true}), dest.path()).success();
    serde_json::from_slice(&std::fs::read(dest.path().join("signatures.json")).unwrap()).unwrap()
}

fn digests(out: &Value) -> Vec<String> {
    out.as_array()
        .unwrap()
        .iter()
        .map(|v| v["digest"].as_str().unwrap().to_string())
        .collect()
}

/// `repo@digest` signed by `key` with OpenSSL, stored as cosign does.
fn sign_with_openssl(http: &Http, repo: &str, digest: &str, key: &KeyPair) {
    let p = payload(&format!("{}/{repo}", http.host), digest);
    let sig = key.sign(&p);
    http.store_signatures(repo, digest, &[(p, sig)]);
}

#[test]
fn check_emits_only_signed_versions_and_names_the_unsigned_newest() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let other = KeyPair::new("ec");
    let repo = common::unique("signed-tag");
    let source = json!({
        "repository": reg.repo(&repo),
        "tag": "latest",
        "cosign_public_keys": [key.public_pem],
    });

    // Unsigned: nothing, with a warning naming it.
    let first = reg.push(&Image::marked("sig-one"), &format!("{repo}:latest"));
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        out.stderr
            .contains(&format!("{repo}:latest ({first}) skipped")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("no {}", attached_tag(&first, "sig"))),
        "{}",
        out.stderr
    );

    // Signed by OpenSSL as cosign would: emitted.
    sign_with_openssl(&http, &repo, &first, &key);
    let out = check(&json!({"source": source})).success();
    assert_eq!(digests(&out), [first.as_str()]);

    // A new unsigned newest: skipped, the signed cursor stays.
    let second = reg.push(&Image::marked("sig-two"), &format!("{repo}:latest"));
    let cursor = json!({"tag": "latest", "digest": first});
    let out = check(&json!({"source": source, "version": cursor}));
    assert_eq!(digests(&out.success()), [first.as_str()]);
    assert!(
        out.stderr.contains(&format!("({second}) skipped")),
        "{}",
        out.stderr
    );

    // Signed by a key that is not listed: still skipped.
    sign_with_openssl(&http, &repo, &second, &other);
    let out = check(&json!({"source": source, "version": cursor}));
    assert_eq!(digests(&out.success()), [first.as_str()]);
    assert!(
        out.stderr.contains("not signed by any of the keys"),
        "{}",
        out.stderr
    );

    // Signed by the listed key too (a second layer): emitted after the cursor.
    let p = payload(&reg.repo(&repo), &second);
    let theirs = payload(&reg.repo(&repo), &second);
    http.store_signatures(
        &repo,
        &second,
        &[
            (theirs.clone(), other.sign(&theirs)),
            (p.clone(), key.sign(&p)),
        ],
    );
    let out = check(&json!({"source": source, "version": cursor})).success();
    assert_eq!(digests(&out), [first, second]);
}

#[test]
fn rsa_and_ed25519_keys_verify_openssl_signatures() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    for kind in ["rsa", "ed25519"] {
        let key = KeyPair::new(kind);
        let repo = common::unique(&format!("signed-{kind}"));
        let digest = reg.push(&Image::marked(kind), &format!("{repo}:1"));
        sign_with_openssl(&http, &repo, &digest, &key);
        // Any of several keys will do.
        let unrelated = KeyPair::new("ec");
        let source = json!({
            "repository": reg.repo(&repo),
            "tag": "1",
            "cosign_public_keys": [unrelated.public_pem, key.public_pem],
        });
        let out = check(&json!({"source": source})).success();
        assert_eq!(digests(&out), [digest], "{kind}");
    }
}

#[test]
fn replayed_signatures_other_digests_and_truncated_signatures_do_not_count() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-replay");
    let signed = reg.push(&Image::marked("replay-a"), &format!("{repo}:a"));
    sign_with_openssl(&http, &repo, &signed, &key);
    let target = reg.push(&Image::marked("replay-b"), &format!("{repo}:b"));
    let source = json!({
        "repository": reg.repo(&repo),
        "tag": "b",
        "cosign_public_keys": [key.public_pem],
    });
    let dest = tempfile::tempdir().unwrap();

    // The exact signature manifest of `a`, replayed under b's tag.
    let manifest = http.manifest(&repo, &attached_tag(&signed, "sig")).unwrap();
    http.put_manifest(
        &repo,
        &attached_tag(&target, "sig"),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        out.stderr
            .contains(&format!("the payload signs \"{signed}\", not {target}")),
        "{}",
        out.stderr
    );
    let e = get(&source, &target, json!({}), &dest.path().join("replay")).failure();
    assert!(e.contains(&format!("{}@{target}", reg.repo(&repo))), "{e}");
    assert!(
        e.contains("no valid signature by source.cosign_public_keys (sha256:"),
        "{e}"
    );
    assert!(!dest.path().join("replay").join("rootfs").exists());

    // A payload naming another digest, correctly signed.
    let p = payload(&reg.repo(&repo), &format!("sha256:{}", "0".repeat(64)));
    http.store_signatures(&repo, &target, &[(p.clone(), key.sign(&p))]);
    assert_eq!(check(&json!({"source": source})).success(), json!([]));

    // The right payload with its signature cut short.
    let p = payload(&reg.repo(&repo), &target);
    let mut sig = key.sign(&p);
    sig.truncate(sig.len() - 8);
    http.store_signatures(&repo, &target, &[(p.clone(), sig)]);
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        out.stderr.contains("not signed by any of the keys"),
        "{}",
        out.stderr
    );

    // And whole: now it counts.
    http.store_signatures(&repo, &target, &[(p.clone(), key.sign(&p))]);
    assert_eq!(
        digests(&check(&json!({"source": source})).success()),
        [target]
    );
}

#[test]
fn in_refuses_unsigned_digests_and_writes_signatures_json_for_signed_ones() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-in");
    let digest = reg.push(&Image::marked("signed-in"), &format!("{repo}:1"));
    let source = json!({
        "repository": reg.repo(&repo),
        "tag": "1",
        "cosign_public_keys": [key.public_pem],
    });
    let dest = tempfile::tempdir().unwrap();
    let e = get(
        &source,
        &digest,
        json!({"skip_download": true}),
        dest.path(),
    )
    .failure();
    assert!(e.contains(&digest) && e.contains("sha256:"), "{e}");
    assert!(!dest.path().join("digest").exists(), "nothing written");

    sign_with_openssl(&http, &repo, &digest, &key);
    let out = get(&source, &digest, json!({}), dest.path()).success();
    let signatures: Value =
        serde_json::from_slice(&std::fs::read(dest.path().join("signatures.json")).unwrap())
            .unwrap();
    let entry = &signatures[0];
    assert_eq!(entry["digest"], digest.as_str());
    assert!(entry["key"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(entry["format"], "simplesigning");
    assert_eq!(
        entry["found_in"],
        format!("tag {}", attached_tag(&digest, "sig"))
    );
    assert_eq!(
        entry["claims"]["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    assert!(dest.path().join("rootfs").is_dir());
    let metadata = out["metadata"].as_array().unwrap();
    let signed_by = metadata.iter().find(|m| m["name"] == "signed_by").unwrap();
    assert_eq!(signed_by["value"], entry["key"]);
}

#[test]
fn the_reference_is_ignored_unless_cosign_check_reference_is_set() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-ref");
    let digest = reg.push(&Image::marked("signed-ref"), &format!("{repo}:1"));
    // Signed where it was built, then promoted here: the payload names the other repository.
    let p = payload("build.example.com/ci/app", &digest);
    http.store_signatures(&repo, &digest, &[(p.clone(), key.sign(&p))]);
    let mut source = json!({
        "repository": reg.repo(&repo),
        "tag": "1",
        "cosign_public_keys": key.public_pem,
    });
    assert_eq!(
        digests(&check(&json!({"source": source})).success()),
        [digest.as_str()]
    );
    source["cosign_check_reference"] = json!(true);
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        out.stderr.contains("cosign_check_reference"),
        "{}",
        out.stderr
    );
    let p = payload(&reg.repo(&repo), &digest);
    http.store_signatures(&repo, &digest, &[(p.clone(), key.sign(&p))]);
    assert_eq!(
        digests(&check(&json!({"source": source})).success()),
        [digest]
    );
}

#[test]
fn a_multi_platform_tag_is_signed_by_its_index_digest() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-index");
    let index = IndexBuilder::platforms("signed-index", &[AMD64, ARM64]);
    let digest = reg.push(&index, &format!("{repo}:1"));
    let raw: Value = serde_json::from_slice(&reg.skopeo_raw(&format!("{repo}:1"))).unwrap();
    let child = raw["manifests"][0]["digest"].as_str().unwrap().to_string();
    let source = json!({
        "repository": reg.repo(&repo),
        "tag": "1",
        "platform": {"os": "linux", "architecture": "arm64"},
        "cosign_public_keys": [key.public_pem],
    });
    // A child's signature is not the index's.
    sign_with_openssl(&http, &repo, &child, &key);
    assert_eq!(check(&json!({"source": source})).success(), json!([]));
    sign_with_openssl(&http, &repo, &digest, &key);
    assert_eq!(
        digests(&check(&json!({"source": source})).success()),
        [digest.as_str()]
    );
    let dest = tempfile::tempdir().unwrap();
    get(&source, &digest, json!({}), dest.path()).success();
    assert!(dest.path().join("signatures.json").is_file());
}

#[test]
fn selection_mode_skips_an_unsigned_newest_tag_for_the_newest_signed_one() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-semver");
    let old = reg.push(&Image::marked("semver-1"), &format!("{repo}:1.0.0"));
    let new = reg.push(&Image::marked("semver-2"), &format!("{repo}:1.1.0"));
    sign_with_openssl(&http, &repo, &old, &key);
    let source = json!({
        "repository": reg.repo(&repo),
        "semver_constraint": ">=1.0.0",
        "cosign_public_keys": [key.public_pem],
    });
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([{"tag": "1.0.0", "digest": old}]));
    assert!(
        out.stderr
            .contains(&format!("{repo}:1.1.0 ({new}) skipped")),
        "{}",
        out.stderr
    );
    // The cursor at 1.0.0: still 1.0.0 only.
    let out = check(&json!({"source": source, "version": {"tag": "1.0.0", "digest": old}}));
    assert_eq!(out.success(), json!([{"tag": "1.0.0", "digest": old}]));
}

#[test]
fn an_up_to_date_signed_check_costs_at_most_three_more_requests() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-budget");
    let digest = reg.push(&Image::marked("budget"), &format!("{repo}:1"));
    sign_with_openssl(&http, &repo, &digest, &key);
    let proxy = FaultProxy::start(&reg.host);
    let plain = json!({"repository": proxy.repo(&repo), "tag": "1"});
    let mut signed = plain.clone();
    signed["cosign_public_keys"] = json!([key.public_pem]);
    let cursor = json!({"tag": "1", "digest": digest});
    check(&json!({"source": plain, "version": cursor})).success();
    let without = proxy.seen().len();
    proxy.clear();
    let out = check(&json!({"source": signed, "version": cursor})).success();
    assert_eq!(digests(&out), [digest]);
    let with = proxy.seen().len();
    assert!(
        with <= without + 3,
        "{with} requests with keys, {without} without: {:#?}",
        proxy
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_key_that_is_not_a_public_key_is_a_field_error() {
    let reg = &env().plain;
    let private = KeyPair::new("ec");
    for (keys, field) in [
        (json!(["garbage"]), "source.cosign_public_keys[0]"),
        (
            json!([private.public_pem, private.private_pem()]),
            "source.cosign_public_keys[1]",
        ),
    ] {
        let source = json!({"repository": reg.repo("x"), "cosign_public_keys": keys});
        let e = check(&json!({"source": source})).failure();
        assert!(e.starts_with(&format!("error: {field}: ")), "{e}");
        assert!(!e.contains("PRIVATE KEY-----\n"), "{e}");
    }
    let source = json!({"repository": reg.repo("x"), "cosign_check_reference": true});
    let e = check(&json!({"source": source})).failure();
    assert!(
        e.contains("source.cosign_check_reference: needs source.cosign_public_keys"),
        "{e}"
    );
}

/// The signature layers of `repo@digest`'s `.sig` tag, read with plain HTTP: (payload,
/// signature) pairs.
fn stored_signatures(http: &Http, repo: &str, digest: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let manifest: Value =
        serde_json::from_slice(&http.manifest(repo, &attached_tag(digest, "sig")).unwrap())
            .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["mediaType"], cosign::SIMPLE_SIGNING);
            let sig = l["annotations"][cosign::SIGNATURE_ANNOTATION]
                .as_str()
                .unwrap();
            (
                http.blob(repo, l["digest"].as_str().unwrap()),
                base64::engine::general_purpose::STANDARD
                    .decode(sig)
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn out_signs_with_cosigns_encrypted_test_key_and_openssl_verifies_the_stored_signature() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let dir = tempfile::tempdir().unwrap();
    Image::marked("signed put").write_layout(&dir.path().join("layout"), "t");
    let repo = common::unique("signed-put");
    let source = json!({"repository": reg.repo(&repo), "tag": "1"});
    let params = json!({
        "image": "layout",
        "cosign_sign": {"key": cosign::COSIGN_TEST_KEY, "password": cosign::COSIGN_TEST_PASSWORD},
    });
    let out = put(&source, params, dir.path());
    let version = out.success()["version"].clone();
    let digest = version["digest"].as_str().unwrap().to_string();
    assert!(!out.all_output().contains(cosign::COSIGN_TEST_PASSWORD));
    assert!(!out.all_output().contains("eyJrZGYi"), "no key material");

    // Read back with plain HTTP: the payload names the digest, OpenSSL accepts the
    // signature with the key's public half.
    let stored = stored_signatures(&http, &repo, &digest);
    assert_eq!(stored.len(), 1);
    let (p, sig) = &stored[0];
    assert!(cosign::verify_with_openssl(
        cosign::COSIGN_TEST_PUBLIC_KEY,
        p,
        sig,
        false
    ));
    let claims: Value = serde_json::from_slice(p).unwrap();
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    assert_eq!(
        claims["critical"]["type"],
        "cosign container image signature"
    );
    assert_eq!(
        claims["critical"]["identity"]["docker-reference"],
        reg.repo(&repo)
    );

    // Signing again keeps the first signature and adds none that is the same.
    Image::marked("signed put").write_layout(&dir.path().join("layout"), "t");
    let params = json!({
        "image": "layout",
        "cosign_sign": {"key": cosign::COSIGN_TEST_KEY, "password": cosign::COSIGN_TEST_PASSWORD},
    });
    put(&source, params, dir.path()).success();
    assert_eq!(stored_signatures(&http, &repo, &digest).len(), 1);
}

#[test]
fn out_signs_with_a_pkcs8_key_that_openssl_verifies_and_check_then_accepts() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    for kind in ["ec", "rsa", "ed25519"] {
        let key = KeyPair::new(kind);
        let dir = tempfile::tempdir().unwrap();
        IndexBuilder::platforms(&format!("signed put {kind}"), &[AMD64, ARM64])
            .write_layout(&dir.path().join("layout"), "t");
        let repo = common::unique(&format!("signed-put-{kind}"));
        let source = json!({"repository": reg.repo(&repo), "tag": "1"});
        let params = json!({"image": "layout", "cosign_sign": {"key": key.private_pem()}});
        let out = put(&source, params, dir.path()).success();
        let digest = out["version"]["digest"].as_str().unwrap().to_string();
        let stored = stored_signatures(&http, &repo, &digest);
        assert_eq!(stored.len(), 1, "{kind}");
        let (p, sig) = &stored[0];
        assert!(
            key.openssl_verifies(p, sig),
            "{kind}: openssl refuses the signature"
        );
        let claims: Value = serde_json::from_slice(p).unwrap();
        assert_eq!(
            claims["critical"]["image"]["docker-manifest-digest"],
            digest.as_str()
        );
        let metadata = out["metadata"].as_array().unwrap();
        assert!(metadata.iter().any(|m| m["name"] == "signed_by"), "{kind}");

        let mut signed = source.clone();
        signed["cosign_public_keys"] = json!([key.public_pem]);
        assert_eq!(
            digests(&check(&json!({"source": signed})).success()),
            [digest.as_str()]
        );
    }
}

#[test]
fn a_wrong_key_password_is_one_line_without_secrets_and_pushes_nothing() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    Image::marked("wrong password").write_layout(&dir.path().join("layout"), "t");
    let repo = common::unique("signed-wrong");
    let source = json!({"repository": reg.repo(&repo), "tag": "1"});
    let password = "not-the-password-42";
    let params = json!({
        "image": "layout",
        "cosign_sign": {"key": cosign::COSIGN_TEST_KEY, "password": password},
    });
    let out = put(&source, params, dir.path());
    let e = out.failure();
    assert_eq!(
        e,
        "error: params.cosign_sign.password: cannot decrypt the key: the password is wrong"
    );
    assert!(!out.all_output().contains(password));
    assert!(!out.all_output().contains("eyJrZGYi"));
    assert!(
        !reg.exists(&format!("{repo}:1")),
        "pushed although signing failed"
    );

    let params = json!({"image": "layout", "cosign_sign": {"key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}});
    let e = put(&source, params, dir.path()).failure();
    assert!(e.starts_with("error: params.cosign_sign.key: "), "{e}");
    let e = put(
        &source,
        json!({"image": "layout", "cosign_sign": {}}),
        dir.path(),
    )
    .failure();
    assert_eq!(e, "error: params.cosign_sign.key: required");
    assert!(!reg.exists(&format!("{repo}:1")));
}

/// The descriptor of `repo@digest` as a referrer's `subject`.
fn subject(http: &Http, repo: &str, digest: &str) -> Value {
    let bytes = http.manifest(repo, digest).unwrap();
    let media_type = serde_json::from_slice::<Value>(&bytes).unwrap()["mediaType"].clone();
    json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

#[test]
fn bundles_served_by_the_referrers_api_verify_dsse_and_message_signatures() {
    let reg = &env().plain;
    let proxy = FaultProxy::start(&reg.host);
    proxy.serve_referrers();
    let http = Http::new(&proxy.host());
    let key = KeyPair::new("ec");
    let other = KeyPair::new("ec");
    let repo = common::unique("signed-bundle");
    let digest = reg.push(&Image::marked("bundle"), &format!("{repo}:1"));
    let source = json!({
        "repository": proxy.repo(&repo),
        "tag": "1",
        "cosign_public_keys": [key.public_pem],
    });
    let cursor = json!({"tag": "1", "digest": digest});

    // A DSSE bundle by another key, then one whose statement names another digest: neither.
    let subj = subject(&http, &repo, &digest);
    http.store_bundle(
        &repo,
        subj.clone(),
        &cosign::dsse_bundle(&other, &repo, &digest),
    );
    let elsewhere = format!("sha256:{}", "1".repeat(64));
    http.store_bundle(
        &repo,
        subj.clone(),
        &cosign::dsse_bundle(&key, &repo, &elsewhere),
    );
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        out.stderr.contains("not signed by any of the keys"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("subjects do not include"),
        "{}",
        out.stderr
    );

    // cosign 3's default: a DSSE in-toto statement about the digest, signed by OpenSSL.
    let bundle = http.store_bundle(
        &repo,
        subj.clone(),
        &cosign::dsse_bundle(&key, &repo, &digest),
    );
    let listed = http.referrers(&repo, &digest).unwrap();
    assert_eq!(listed["manifests"].as_array().unwrap().len(), 3);
    proxy.clear();
    let out = check(&json!({"source": source, "version": cursor})).success();
    assert_eq!(digests(&out), [digest.as_str()]);
    let signatures = signatures_got(&source, &digest);
    assert_eq!(signatures[0]["format"], "bundle/dsse");
    assert_eq!(signatures[0]["found_in"], format!("referrer {bundle}"));
    assert_eq!(
        signatures[0]["claims"]["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );

    // A message signature over the manifest, made by OpenSSL.
    let repo2 = common::unique("signed-message");
    let digest2 = reg.push(&Image::marked("message"), &format!("{repo2}:1"));
    let manifest = http.manifest(&repo2, &digest2).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let message = serde_json::to_vec(&json!({
        "mediaType": cosign::BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": ""}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(hex_bytes(&digest2))},
            "signature": b64.encode(key.sign(&manifest)),
        }
    }))
    .unwrap();
    http.store_bundle(&repo2, subject(&http, &repo2, &digest2), &message);
    let mut source2 = source.clone();
    source2["repository"] = json!(proxy.repo(&repo2));
    assert_eq!(
        digests(&check(&json!({"source": source2})).success()),
        [digest2.as_str()]
    );
}

fn hex_bytes(digest: &str) -> Vec<u8> {
    hex::decode(digest.trim_start_matches("sha256:")).unwrap()
}

#[test]
fn a_referrers_api_that_answers_404_falls_back_to_the_tag_scheme() {
    let reg = &env().plain;
    let proxy = FaultProxy::start(&reg.host);
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-404");
    let digest = reg.push(&Image::marked("fallback"), &format!("{repo}:1"));
    sign_with_openssl(&http, &repo, &digest, &key);
    let source = json!({
        "repository": proxy.repo(&repo),
        "tag": "1",
        "cosign_public_keys": [key.public_pem],
    });
    let out = check(&json!({"source": source})).success();
    assert_eq!(digests(&out), [digest.as_str()]);
    let seen = proxy.seen();
    let referrers = seen
        .iter()
        .position(|s| s.path().contains("/referrers/"))
        .expect("the referrers API was asked first");
    assert_eq!(seen[referrers].status, Some(404));
    let tag = seen
        .iter()
        .position(|s| s.path().ends_with(&attached_tag(&digest, "sig")))
        .expect("then the tag");
    assert!(tag > referrers);
}

#[test]
fn an_up_to_date_check_signed_by_a_bundle_costs_at_most_three_more_requests() {
    let reg = &env().plain;
    let proxy = FaultProxy::start(&reg.host);
    proxy.serve_referrers();
    let http = Http::new(&proxy.host());
    let key = KeyPair::new("ec");
    let repo = common::unique("signed-bundle-budget");
    let digest = reg.push(&Image::marked("bundle budget"), &format!("{repo}:1"));
    http.store_bundle(
        &repo,
        subject(&http, &repo, &digest),
        &cosign::dsse_bundle(&key, &repo, &digest),
    );
    let plain = json!({"repository": proxy.repo(&repo), "tag": "1"});
    let mut signed = plain.clone();
    signed["cosign_public_keys"] = json!([key.public_pem]);
    let cursor = json!({"tag": "1", "digest": digest});
    proxy.clear();
    check(&json!({"source": plain, "version": cursor})).success();
    let without = proxy.seen().len();
    proxy.clear();
    assert_eq!(
        digests(&check(&json!({"source": signed, "version": cursor})).success()),
        [digest.as_str()]
    );
    let with = proxy.seen().len();
    assert!(
        with <= without + 3,
        "{with} requests with keys, {without} without"
    );
}

#[test]
fn promotion_with_copy_signatures_carries_tags_and_referrers_to_another_registry() {
    let env = env();
    let (origin_reg, target_reg) = (&env.plain, &env.basic);
    let origin = FaultProxy::start(&origin_reg.host);
    origin.serve_referrers();
    let target = FaultProxy::start(&target_reg.host);
    target.serve_referrers();
    let http = Http::new(&origin.host());
    let tag_key = KeyPair::new("ec");
    let bundle_key = KeyPair::new("ec");
    let repo = common::unique("promote-from");
    let digest = origin_reg.push(&Image::marked("promote"), &format!("{repo}:1"));
    sign_with_openssl(&http, &repo, &digest, &tag_key);
    http.store_bundle(
        &repo,
        subject(&http, &repo, &digest),
        &cosign::dsse_bundle(&bundle_key, &repo, &digest),
    );
    let sig = http.manifest(&repo, &attached_tag(&digest, "sig")).unwrap();
    http.put_manifest(
        &repo,
        &attached_tag(&digest, "att"),
        "application/vnd.oci.image.manifest.v1+json",
        &sig,
    );

    let to = common::unique("promote-to");
    let mut source = json!({
        "repository": target.repo(&to),
        "tag": "prod",
        "username": common::USER,
        "password": common::PASSWORD,
    });
    let params = json!({
        "pull_repository": origin.repo(&repo),
        "pull_tag": "1",
        "copy_signatures": true,
    });
    let out = put(&source, params, tempfile::tempdir().unwrap().path()).success();
    assert_eq!(out["version"]["digest"], digest.as_str());
    assert!(target_reg.exists(&format!("{to}:{}", attached_tag(&digest, "att"))));

    // Each kind of signature verifies at the target on its own.
    for (key, found_in) in [(&tag_key, "tag sha256-"), (&bundle_key, "referrer sha256:")] {
        source["cosign_public_keys"] = json!([key.public_pem]);
        assert_eq!(
            digests(&check(&json!({"source": source})).success()),
            [digest.as_str()]
        );
        let signatures = signatures_got(&source, &digest);
        assert!(signatures[0]["found_in"]
            .as_str()
            .unwrap()
            .starts_with(found_in));
    }

    // Without copy_signatures, a promotion is unsigned at the target.
    let bare = common::unique("promote-bare");
    let mut source = json!({
        "repository": target.repo(&bare),
        "tag": "prod",
        "username": common::USER,
        "password": common::PASSWORD,
    });
    put(
        &source,
        json!({"pull_repository": origin.repo(&repo), "pull_tag": "1"}),
        tempfile::tempdir().unwrap().path(),
    )
    .success();
    source["cosign_public_keys"] = json!([tag_key.public_pem, bundle_key.public_pem]);
    assert_eq!(check(&json!({"source": source})).success(), json!([]));
}

#[test]
fn load_with_copy_signatures_copies_from_the_repository_in_got_it_from() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("load-signed");
    let digest = reg.push(&Image::marked("load signed"), &format!("{repo}:1"));
    sign_with_openssl(&http, &repo, &digest, &key);
    let source = json!({
        "repository": reg.repo(&repo),
        "tag": "1",
        "cosign_public_keys": [key.public_pem],
    });
    let src = tempfile::tempdir().unwrap();
    get(
        &source,
        &digest,
        json!({"save": true}),
        &src.path().join("got"),
    )
    .success();
    let to = common::unique("load-signed-to");
    let target = json!({
        "repository": reg.repo(&to),
        "tag": "prod",
        "cosign_public_keys": [key.public_pem],
    });
    let out = put(
        &target,
        json!({"load": "got", "copy_signatures": true}),
        src.path(),
    )
    .success();
    assert_eq!(out["version"]["digest"], digest.as_str());
    assert_eq!(
        digests(&check(&json!({"source": target})).success()),
        [digest.as_str()]
    );

    // Copied, then signed again at the target: both signatures are there, in that order.
    let signed_to = common::unique("load-signed-again");
    let target2 = json!({"repository": reg.repo(&signed_to), "tag": "prod"});
    let params = json!({
        "load": "got",
        "copy_signatures": true,
        "cosign_sign": {"key": cosign::COSIGN_TEST_KEY, "password": cosign::COSIGN_TEST_PASSWORD},
    });
    put(&target2, params, src.path()).success();
    let stored = stored_signatures(&http, &signed_to, &digest);
    assert_eq!(stored.len(), 2);
    assert!(key.openssl_verifies(&stored[0].0, &stored[0].1));
    assert!(cosign::verify_with_openssl(
        cosign::COSIGN_TEST_PUBLIC_KEY,
        &stored[1].0,
        &stored[1].1,
        false
    ));

    let e = put(
        &target,
        json!({"import_file": "got/rootfs.tar", "copy_signatures": true}),
        src.path(),
    )
    .failure();
    assert!(
        e.starts_with("error: params.copy_signatures: needs pull_repository, load or image"),
        "{e}"
    );
}

#[test]
fn an_image_layout_holding_referrers_pushes_them_with_copy_signatures() {
    use crate::common::image::write_blob;
    let reg = &env().plain;
    let proxy = FaultProxy::start(&reg.host);
    proxy.serve_referrers();
    let key = KeyPair::new("ec");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let built = Image::marked("layout referrers").write_layout(&layout, "t");
    // A DSSE bundle referring to the image, as `oras copy --to-oci-layout` keeps it.
    let bundle = cosign::dsse_bundle(&key, "app", &built.digest);
    let empty = write_blob(&layout, b"{}");
    let bundle_digest = write_blob(&layout, &bundle);
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": cosign::BUNDLE_V03,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty},
        "layers": [{"mediaType": cosign::BUNDLE_V03, "size": bundle.len(), "digest": bundle_digest}],
        "subject": built.descriptor(),
    }))
    .unwrap();
    let referrer_digest = write_blob(&layout, &referrer);
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": referrer_digest,
        "size": referrer.len(),
        "artifactType": cosign::BUNDLE_V03,
    }));
    std::fs::write(&index_path, index.to_string()).unwrap();

    // Without copy_signatures: the image alone, under its own digest.
    let bare = common::unique("layout-bare");
    let source = json!({"repository": proxy.repo(&bare), "tag": "1", "cosign_public_keys": [key.public_pem]});
    let out = put(&source, json!({"image": "layout"}), dir.path()).success();
    assert_eq!(out["version"]["digest"], built.digest.as_str());
    assert_eq!(check(&json!({"source": source})).success(), json!([]));

    let to = common::unique("layout-referrers");
    let source =
        json!({"repository": proxy.repo(&to), "tag": "1", "cosign_public_keys": [key.public_pem]});
    let out = put(
        &source,
        json!({"image": "layout", "copy_signatures": true}),
        dir.path(),
    )
    .success();
    assert_eq!(out["version"]["digest"], built.digest.as_str());
    assert_eq!(
        digests(&check(&json!({"source": source})).success()),
        [built.digest.as_str()]
    );
}

#[test]
fn hostile_signature_manifests_are_read_within_bounds() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let other = KeyPair::new("ec");
    let repo = common::unique("signed-hostile");
    let digest = reg.push(&Image::marked("hostile sig"), &format!("{repo}:1"));
    // 40 layers signed by another key, then the valid one: only the first 16 are looked at.
    let p = payload(&reg.repo(&repo), &digest);
    let mut layers: Vec<(Vec<u8>, Vec<u8>)> =
        (0..40).map(|_| (p.clone(), other.sign(&p))).collect();
    layers.push((p.clone(), key.sign(&p)));
    http.store_signatures(&repo, &digest, &layers);
    let proxy = FaultProxy::start(&reg.host);
    let source = json!({"repository": proxy.repo(&repo), "tag": "1", "cosign_public_keys": [key.public_pem]});
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        proxy.count_method(Some("GET"), "/blobs/") <= 16,
        "{}",
        proxy.count("/blobs/")
    );

    // A payload whose descriptor claims 300 KiB is not downloaded.
    let b64 = base64::engine::general_purpose::STANDARD;
    let d = http.put_blob(&repo, &p);
    let config = http.put_blob(&repo, b"{}");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": config},
        "layers": [{
            "mediaType": cosign::SIMPLE_SIGNING,
            "size": 300 << 10,
            "digest": d,
            "annotations": {cosign::SIGNATURE_ANNOTATION: b64.encode(key.sign(&p))}
        }]
    }))
    .unwrap();
    http.put_manifest(
        &repo,
        &attached_tag(&digest, "sig"),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
    proxy.clear();
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        out.stderr.contains("larger than 262144 bytes"),
        "{}",
        out.stderr
    );
    assert_eq!(proxy.count("/blobs/"), 0);
}

#[test]
fn without_a_referrers_api_bundles_are_found_and_copied_under_the_referrers_tag_schema() {
    let reg = &env().plain;
    let http = Http::new(&reg.host);
    let key = KeyPair::new("ec");
    let repo = common::unique("tag-schema");
    let digest = reg.push(&Image::marked("tag schema"), &format!("{repo}:1"));
    let source =
        json!({"repository": reg.repo(&repo), "tag": "1", "cosign_public_keys": [key.public_pem]});
    // The bundle alone is not found: distribution 2.8 has no referrers API.
    let bundle = http.store_bundle(
        &repo,
        subject(&http, &repo, &digest),
        &cosign::dsse_bundle(&key, &repo, &digest),
    );
    let out = check(&json!({"source": source}));
    assert_eq!(out.success(), json!([]));
    assert!(
        out.stderr.contains(&format!(
            "no referrers tag sha256-{}",
            digest.trim_start_matches("sha256:")
        )),
        "{}",
        out.stderr
    );
    // Listed under `sha256-<hex>`, as the distribution spec's referrers tag schema keeps it.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": bundle,
            "size": http.manifest(&repo, &bundle).unwrap().len(),
            "artifactType": cosign::BUNDLE_V03,
        }]
    }))
    .unwrap();
    let schema_tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    http.put_manifest(
        &repo,
        &schema_tag,
        "application/vnd.oci.image.index.v1+json",
        &index,
    );
    assert_eq!(
        digests(&check(&json!({"source": source})).success()),
        [digest.as_str()]
    );

    // Promoted to another repository without the API: the copy lists it there the same way.
    let to = common::unique("tag-schema-to");
    let target =
        json!({"repository": reg.repo(&to), "tag": "prod", "cosign_public_keys": [key.public_pem]});
    put(
        &target,
        json!({"pull_repository": reg.repo(&repo), "pull_tag": "1", "copy_signatures": true}),
        tempfile::tempdir().unwrap().path(),
    )
    .success();
    assert!(http.manifest(&to, &schema_tag).is_some());
    assert_eq!(
        digests(&check(&json!({"source": target})).success()),
        [digest.as_str()]
    );
    let signatures = signatures_got(&target, &digest);
    assert_eq!(signatures[0]["found_in"], format!("referrer {bundle}"));
}
