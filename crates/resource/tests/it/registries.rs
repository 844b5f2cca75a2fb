//! Registries as they really behave: `check`, `in` and `out` through the fault proxy playing
//! one registry family at a time ([`Profile`]) in front of a real `docker-registry`. What each
//! profile simulates, and what is known to differ from the real service, is the README's
//! "Registries" table.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::proxy::Profile;
use crate::common::{
    self, check, env, Entry, Fault, FaultProxy, Image, IndexBuilder, Registry, Run, AMD64, ARM64,
};

fn get(source: &Value, version: &Value, dest: &Path) -> common::Outcome {
    Run::new("in")
        .arg(dest.display().to_string())
        .stdin_json(&json!({"source": source, "version": version, "params": {}}))
        .run()
}

fn put(source: &Value, params: Value, src: &Path) -> common::Outcome {
    Run::new("out")
        .arg(src.display().to_string())
        .stdin_json(&json!({"source": source, "params": params}))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .run()
}

fn tags_in(out: &Value) -> Vec<&str> {
    out.as_array()
        .unwrap()
        .iter()
        .map(|v| v["tag"].as_str().unwrap())
        .collect()
}

/// `source` for `repository` through the proxy, with `reg`'s credentials.
fn source_via(reg: &Registry, repository: String) -> Value {
    let mut source = json!({"repository": repository});
    if let Some((u, p)) = reg.credentials() {
        source["username"] = u.into();
        source["password"] = p.into();
    }
    source
}

/// Two versions, 1.0.0 and 2.0.0, of a fresh repository on `reg`: (repo, digests).
fn two_versions(reg: &Registry, name: &str) -> (String, String, String) {
    let repo = common::unique(name);
    let one = reg.push(
        &Image::marked(&format!("{name}-1")),
        &format!("{repo}:1.0.0"),
    );
    let two = reg.push(
        &Image::marked(&format!("{name}-2")),
        &format!("{repo}:2.0.0"),
    );
    (repo, one, two)
}

#[test]
fn ghcr_200000_tags_oldest_first_emit_the_true_newest() {
    let reg = &env().plain;
    let (repo, one, two) = two_versions(reg, "ghcr-many");
    // 200,000 older tags listed first, 1000 a page: 201 pages, the repository's own last.
    let proxy = FaultProxy::with_profile(&reg.host, Profile::ghcr(200_000));
    let started = Instant::now();
    let run =
        check(&json!({"source": {"repository": proxy.repo(&repo), "semver_constraint": "*"}}));
    let out = run.success();
    assert_eq!(
        out,
        json!([{"tag": "1.0.0", "digest": one}, {"tag": "2.0.0", "digest": two}]),
        "{}",
        run.stderr
    );
    assert_eq!(proxy.count("/tags/list"), 201);
    eprintln!("200,000 tags listed in {:?}", started.elapsed());
}

#[test]
fn quay_opaque_pages_of_100_are_all_read() {
    let reg = &env().plain;
    let (repo, _, two) = two_versions(reg, "quay-many");
    // 20,000 older tags in pages of at most 100 (n=1000 is clamped): 201 pages, each after
    // the first named by an opaque next_page token.
    let proxy = FaultProxy::with_profile(&reg.host, Profile::quay(20_000));
    let out =
        check(&json!({"source": {"repository": proxy.repo(&repo), "semver_constraint": "*"}}))
            .success();
    assert_eq!(tags_in(&out), ["1.0.0", "2.0.0"]);
    assert_eq!(out[1]["digest"], two.as_str());
    let pages: Vec<String> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.path().ends_with("/tags/list"))
        .map(|s| s.target)
        .collect();
    assert_eq!(pages.len(), 201, "{:?}", &pages[..3]);
    assert!(
        pages[1..].iter().all(|p| p.contains("next_page=gAAAAAB")),
        "{:?}",
        &pages[..3]
    );
}

#[test]
fn a_405_or_400_unsupported_to_n_1000_steps_down_the_page_size() {
    let reg = &env().plain;
    let (repo, _, two) = two_versions(reg, "page-405");
    for fault in [
        Fault::status(405),
        Fault::status_json(400, "UNSUPPORTED", "the operation is unsupported"),
    ] {
        let proxy = FaultProxy::with_profile(&reg.host, Profile::ecr());
        proxy.add("tags/list?n=1000", Some("GET"), 1, fault.clone());
        let run =
            check(&json!({"source": {"repository": proxy.repo(&repo), "semver_constraint": "*"}}));
        let out = run.success();
        assert_eq!(tags_in(&out), ["1.0.0", "2.0.0"], "{fault:?}");
        assert_eq!(out[1]["digest"], two.as_str());
        let asked: Vec<String> = proxy
            .seen()
            .into_iter()
            .filter(|s| s.path().ends_with("/tags/list"))
            .map(|s| s.target)
            .collect();
        assert_eq!(asked.len(), 2, "{fault:?}: {asked:?}");
        assert!(asked[1].ends_with("?n=100"), "{asked:?}");
    }
}

#[test]
fn a_tag_list_over_the_memory_bound_is_an_error_naming_it() {
    let reg = &env().plain;
    let (repo, _, _) = two_versions(reg, "ghcr-huge");
    // 300,000 tags of 128 characters: over the 32 MiB bound after some 256 pages of 1000,
    // well past the 100 pages that used to end the listing with a warning.
    let mut profile = Profile::ghcr(300_000);
    profile.paging.as_mut().unwrap().old_width = 124;
    let proxy = FaultProxy::with_profile(&reg.host, profile);
    let err =
        check(&json!({"source": {"repository": proxy.repo(&repo), "semver_constraint": "*"}}))
            .failure();
    assert!(
        err.contains(&format!("the tags of {repo}"))
            && err.contains("are more than 1000000 tags or 33554432 bytes"),
        "{err}"
    );
}

#[test]
fn artifactory_next_page_links_without_the_virtual_prefix_stay_in_the_repository() {
    let reg = &env().basic;
    let (repo, _, two) = two_versions(reg, "artifactory-pages");
    let mut profile = Profile::artifactory("docker-virtual");
    profile.paging.as_mut().unwrap().old_tags = 250;
    let proxy = FaultProxy::with_profile(&reg.host, profile);
    let run = check(&json!({"source": {
        "repository": proxy.profile_repo(&repo),
        "semver_constraint": "*",
        "username": common::USER,
        "password": common::PASSWORD,
    }}));
    let out = run.success();
    assert_eq!(tags_in(&out), ["1.0.0", "2.0.0"], "{}", run.stderr);
    assert_eq!(out[1]["digest"], two.as_str());
    let pages: Vec<String> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.path().ends_with("/tags/list"))
        .map(|s| s.target)
        .collect();
    // n=1000 is clamped to 100: 252 tags in three pages, all under the virtual prefix.
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(
        pages.iter().all(|p| p.starts_with("/v2/docker-virtual/")),
        "{pages:?}"
    );
}

#[test]
fn artifactory_head_with_only_x_checksum_sha256_needs_no_get() {
    let reg = &env().basic;
    let repo = common::unique("artifactory-head");
    let digest = reg.push(&Image::marked("artifactory-head"), &format!("{repo}:v1"));
    let proxy = FaultProxy::with_profile(&reg.host, Profile::artifactory("docker-local"));
    let mut source = source_via(reg, proxy.profile_repo(&repo));
    source["tag"] = "v1".into();
    let out = check(&json!({ "source": source })).success();
    assert_eq!(out, json!([{"tag": "v1", "digest": digest}]));
    let head = proxy
        .seen()
        .into_iter()
        .find(|s| s.method == "HEAD" && s.target.contains("/manifests/v1"))
        .expect("a HEAD of the tag");
    assert_eq!(head.status, Some(200));
    assert_eq!(
        proxy.count_method(Some("GET"), "/manifests/"),
        0,
        "the checksum header is the digest: {:?}",
        proxy.seen()
    );
}

#[test]
fn a_head_of_a_missing_manifest_answering_500_is_missing_after_one_get() {
    let reg = &env().basic;
    let repo = common::unique("artifactory-missing");
    reg.push(&Image::marked("artifactory-missing"), &format!("{repo}:v1"));
    let proxy = FaultProxy::with_profile(&reg.host, Profile::artifactory("docker-local"));
    let mut source = source_via(reg, proxy.profile_repo(&repo));
    source["tag"] = "absent".into();
    let started = Instant::now();
    let run = check(&json!({ "source": source }));
    assert_eq!(run.success(), json!([]));
    assert_eq!(
        (
            proxy.count_method(Some("HEAD"), "/manifests/absent"),
            proxy.count_method(Some("GET"), "/manifests/absent"),
        ),
        (1, 1),
        "the 500 of a HEAD is not retried, the GET decides: {:?}",
        proxy.seen()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // With fail_when_missing it is the tag-not-found error, naming the tag.
    source["fail_when_missing"] = true.into();
    let err = check(&json!({ "source": source })).failure();
    assert!(err.contains("absent"), "{err}");
}

#[test]
fn docker_hub_quota_left_is_logged_with_debug() {
    let reg = &env().plain;
    let repo = common::unique("hub-quota");
    let digest = reg.push(&Image::marked("hub-quota"), &format!("{repo}:latest"));
    let proxy = FaultProxy::with_profile(&reg.host, Profile::docker_hub());
    let run = check(&json!({"source": {"repository": proxy.repo(&repo), "debug": true}}));
    assert_eq!(run.success(), json!([{"tag": "latest", "digest": digest}]));
    assert!(
        run.stderr
            .contains("pull quota: 76 of 100 pulls per 21600 s left"),
        "{}",
        run.stderr
    );
    // Without debug, nothing about it.
    let quiet = check(&json!({"source": {"repository": proxy.repo(&repo)}}));
    quiet.success();
    assert!(!quiet.stderr.contains("pull quota"), "{}", quiet.stderr);
}

#[test]
fn docker_hub_spent_quota_leaves_head_free_and_fails_a_pull_at_once_saying_when_it_resets() {
    let reg = &env().plain;
    let repo = common::unique("hub-spent");
    let digest = reg.push(&Image::marked("hub-spent"), &format!("{repo}:latest"));
    let mut profile = Profile::docker_hub();
    profile.rate_limit = Some((100, 0, 21_600));
    let proxy = FaultProxy::with_profile(&reg.host, profile);
    // check asks with a HEAD only: the spent quota does not stop it.
    let source = json!({"repository": proxy.repo(&repo)});
    let out = check(&json!({ "source": source })).success();
    assert_eq!(out, json!([{"tag": "latest", "digest": digest}]));
    // in GETs the manifest: refused, reported at once with when a pull is possible again.
    let dest = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = get(
        &source,
        &json!({"digest": digest}),
        &dest.path().join("got"),
    )
    .failure();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains(
            "pull rate limit reached (0 of 100 pulls per 21600 s left), resets within 21600 s"
        ),
        "{err}"
    );
    assert_eq!(
        proxy.count_method(Some("GET"), "/manifests/"),
        1,
        "not retried"
    );
}

#[test]
fn accept_encoding_is_never_sent_to_a_registry_that_would_gzip_blobs() {
    let reg = &env().plain;
    let repo = common::unique("hub-gzip");
    let image = Image::marked("hub-gzip").env("GZIP=never");
    let digest = reg.push(&image, &format!("{repo}:latest"));
    let proxy = FaultProxy::with_profile(&reg.host, Profile::docker_hub());
    let dest = tempfile::tempdir().unwrap();
    get(
        &json!({"repository": proxy.repo(&repo)}),
        &json!({"digest": digest}),
        &dest.path().join("got"),
    )
    .success();
    let metadata = std::fs::read_to_string(dest.path().join("got/metadata.json")).unwrap();
    assert!(metadata.contains("GZIP=never"), "{metadata}");
    let seen = proxy.seen();
    assert!(seen.iter().any(|s| s.path().contains("/blobs/sha256:")));
    for s in &seen {
        assert_eq!(
            s.header("accept-encoding"),
            None,
            "{} {}",
            s.method,
            s.target
        );
    }
}

#[test]
fn ghcr_anonymous_pulls_take_a_token() {
    let reg = &env().token;
    let repo = format!("public/{}", common::unique("ghcr-anonymous"));
    let digest = reg.push(&Image::marked("ghcr-anonymous"), &format!("{repo}:latest"));
    let proxy = FaultProxy::with_profile(&reg.host, Profile::ghcr(0));
    let before = env().token_server.requests_for(&repo);
    let logged = env().token_server.log().len();
    let source = json!({"repository": proxy.repo(&repo)});
    let out = check(&json!({ "source": source })).success();
    assert_eq!(out, json!([{"tag": "latest", "digest": digest}]));
    let dest = tempfile::tempdir().unwrap();
    get(
        &source,
        &json!({"digest": digest}),
        &dest.path().join("got"),
    )
    .success();
    assert!(env().token_server.requests_for(&repo) > before);
    let anonymous = env()
        .token_server
        .log()
        .into_iter()
        .skip(logged)
        .filter(|t| t.scopes.iter().any(|s| s.contains(&repo)))
        .all(|t| t.user.is_none());
    assert!(anonymous, "every token was asked for without credentials");
    // The manifests were fetched with a bearer token.
    let head = proxy
        .seen()
        .into_iter()
        .find(|s| {
            s.method == "HEAD" && s.target.contains("/manifests/latest") && s.status == Some(200)
        })
        .expect("an answered HEAD");
    assert!(head
        .header("authorization")
        .unwrap_or_default()
        .starts_with("Bearer "));
}

/// Each family: check (tag mode), in of that digest, out of it under a new tag, through the
/// proxy playing the family in front of the registry flavour it needs.
#[test]
fn check_in_and_out_through_every_family() {
    let families: Vec<(Profile, &Registry)> = vec![
        (Profile::docker_hub(), &env().plain),
        (Profile::ghcr(1500), &env().token),
        (Profile::quay(120), &env().token),
        (Profile::ecr(), &env().basic),
        (Profile::acr(), &env().token),
        (Profile::artifactory("docker-virtual"), &env().basic),
        (Profile::forgejo(), &env().token),
        (
            Profile {
                name: "forgejo, basic first",
                challenge: common::proxy::ChallengeStyle::Prepend(
                    r#"Basic realm="Forgejo""#.into(),
                ),
                ..Profile::distribution()
            },
            &env().token,
        ),
    ];
    for (profile, reg) in families {
        let name = profile.name;
        let repo = common::unique(&format!("family-{}", name.replace([' ', ','], "-")));
        let digest = reg.push(&Image::marked(name), &format!("{repo}:latest"));
        let proxy = FaultProxy::with_profile(&reg.host, profile);
        let source = source_via(reg, proxy.profile_repo(&repo));
        let run = check(&json!({ "source": source }));
        assert_eq!(
            run.success(),
            json!([{"tag": "latest", "digest": digest}]),
            "{name}: {}",
            run.stderr
        );
        let mut selection = source.clone();
        selection["semver_constraint"] = "*".into();
        reg.push(
            &Image::marked(&format!("{name}-v1")),
            &format!("{repo}:1.0.0"),
        );
        let out = check(&json!({ "source": selection })).success();
        assert_eq!(tags_in(&out), ["1.0.0"], "{name}");

        let dir = tempfile::tempdir().unwrap();
        let run = Run::new("in")
            .arg(dir.path().join("got").display().to_string())
            .stdin_json(&json!({
                "source": source,
                "version": {"digest": digest},
                "params": {"format": "oci-layout"},
            }))
            .run();
        run.success();
        assert!(dir.path().join("got/oci/index.json").is_file(), "{name}");

        let mut target = source.clone();
        target["tag"] = "copied".into();
        let run = put(&target, json!({"image": "got/oci"}), dir.path());
        let out = run.success();
        assert_eq!(out["version"]["digest"], digest.as_str(), "{name}");
        assert_eq!(
            reg.skopeo_digest(&format!("{repo}:copied")),
            digest,
            "{name}"
        );
    }
}

/// An attestation manifest as BuildKit writes one for the image `subject`: platform
/// unknown/unknown, an in-toto layer, annotated with the image it is about. Its blobs go into
/// the layout at `dir`; returns its descriptor.
fn attestation(dir: &Path, subject: &str) -> Value {
    let config = br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "pkg:docker/app", "digest": {"sha256": subject.trim_start_matches("sha256:")}}],
        "predicate": {"spdxVersion": "SPDX-2.3"},
    })
    .to_string();
    let config_digest = common::image::write_blob(dir, config);
    let layer_digest = common::image::write_blob(dir, statement.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": common::image::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{
            "mediaType": "application/vnd.in-toto+json",
            "digest": layer_digest,
            "size": statement.len(),
            "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
        }],
    })
    .to_string();
    let digest = common::image::write_blob(dir, manifest.as_bytes());
    json!({
        "mediaType": common::image::OCI_MANIFEST,
        "digest": digest,
        "size": manifest.len(),
        "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {
            "vnd.docker.reference.digest": subject,
            "vnd.docker.reference.type": "attestation-manifest",
        },
    })
}

/// `docker buildx build --platform linux/amd64,linux/arm64 --output type=oci,tar=false`:
/// index.json names one index (the wrap), which lists the two images and then an attestation
/// manifest for each. Returns the inner index's digest.
fn buildkit_layout(dir: &Path, marker: &str) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut index = IndexBuilder::new();
    let mut attestations = Vec::new();
    for platform in [AMD64, ARM64] {
        let image = Image::marked(&format!("{marker} {}", platform.name()))
            .platform(platform)
            .layer(vec![Entry::file("platform", platform.name())]);
        let built = image.write_blobs(dir);
        attestations.push(attestation(dir, &built.digest));
        index = index.image(image);
    }
    for a in attestations {
        index = index.descriptor(a);
    }
    index.write_layout(dir, "latest").digest
}

#[test]
fn buildkit_output_with_attestations_goes_out_comes_in_and_is_checked_by_platform() {
    let reg = &env().plain;
    let repo = common::unique("buildkit");
    let src = tempfile::tempdir().unwrap();
    let index = buildkit_layout(&src.path().join("image"), "buildkit");
    // out with `image`: the wrapped index is pushed whole, attestations included.
    let source = json!({"repository": reg.repo(&repo), "tag": "1.0.0"});
    let out = put(&source, json!({"image": "image"}), src.path()).success();
    assert_eq!(out["version"]["digest"], index.as_str());
    let raw: Value = serde_json::from_slice(&reg.skopeo_raw(&format!("{repo}@{index}"))).unwrap();
    let children = raw["manifests"].as_array().unwrap();
    assert_eq!(children.len(), 4, "{raw}");
    for child in children {
        let digest = child["digest"].as_str().unwrap();
        assert!(
            reg.exists(&format!("{repo}@{digest}")),
            "{digest} was pushed"
        );
    }

    // check with a platform: the attestations' unknown/unknown do not hide the image.
    for (platform, expected) in [
        ("arm64", json!([{"tag": "1.0.0", "digest": index}])),
        ("s390x", json!([])),
    ] {
        let out = check(&json!({"source": {
            "repository": reg.repo(&repo),
            "semver_constraint": "*",
            "platform": {"os": "linux", "architecture": platform},
        }}))
        .success();
        assert_eq!(out, expected, "{platform}");
    }
    let out = check(&json!({"source": {
        "repository": reg.repo(&repo),
        "tag": "1.0.0",
        "platform": {"os": "linux", "architecture": "arm64"},
    }}))
    .success();
    assert_eq!(out, json!([{"tag": "1.0.0", "digest": index}]));

    // in: the platform's image, never an attestation; oci-layout keeps them all.
    for (platform, marker) in [("amd64", "linux/amd64"), ("arm64", "linux/arm64/v8")] {
        let dest = tempfile::tempdir().unwrap();
        let run = Run::new("in")
            .arg(dest.path().join("got").display().to_string())
            .stdin_json(&json!({
                "source": {"repository": reg.repo(&repo), "platform": {"os": "linux", "architecture": platform}},
                "version": {"digest": index},
            }))
            .run();
        run.success();
        let file = std::fs::read_to_string(dest.path().join("got/rootfs/platform")).unwrap();
        assert_eq!(file, marker);
    }
    let dest = tempfile::tempdir().unwrap();
    get(
        &json!({"repository": reg.repo(&repo)}),
        &json!({"digest": index}),
        &dest.path().join("plain"),
    )
    .success();
    let run = Run::new("in")
        .arg(dest.path().join("got").display().to_string())
        .stdin_json(&json!({
            "source": {"repository": reg.repo(&repo)},
            "version": {"digest": index},
            "params": {"format": "oci-layout"},
        }))
        .run();
    run.success();
    let got = std::fs::read(dest.path().join("got/oci/index.json")).unwrap();
    assert_eq!(common::image::sha256(&got), index);
    for child in children {
        let hex = child["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        assert!(dest.path().join("got/oci/blobs/sha256").join(hex).is_file());
    }
}

#[test]
fn an_oci_layout_wrapping_the_index_in_another_index_pushes_the_inner_index() {
    let reg = &env().plain;
    let repo = common::unique("buildkit-wrapped");
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("image");
    let inner = buildkit_layout(&dir, "buildkit-wrapped");
    // index.json → an index whose one entry is the image's index (no platform), as an
    // exporter that wraps what it was given writes it.
    let inner_bytes = std::fs::read(
        dir.join("blobs/sha256")
            .join(inner.trim_start_matches("sha256:")),
    )
    .unwrap();
    let wrapper = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": inner,
            "size": inner_bytes.len(),
        }],
    })
    .to_string();
    let wrapper_digest = common::image::write_blob(&dir, wrapper.as_bytes());
    let index_json = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": wrapper_digest,
            "size": wrapper.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), index_json.to_string()).unwrap();
    let source = json!({"repository": reg.repo(&repo), "tag": "1.0.0"});
    let run = put(&source, json!({"image": "image"}), src.path());
    let out = run.success();
    assert_eq!(out["version"]["digest"], inner.as_str(), "{}", run.stderr);
    let out = check(&json!({"source": {
        "repository": reg.repo(&repo),
        "tag": "1.0.0",
        "platform": {"os": "linux", "architecture": "arm64"},
    }}))
    .success();
    assert_eq!(out, json!([{"tag": "1.0.0", "digest": inner}]));
}
