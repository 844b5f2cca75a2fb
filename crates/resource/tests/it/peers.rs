//! What registry-image-resource's and docker-image-resource's own tests expect, end to end:
//! the cases that need a registry (cursors, errors, pushes, mirrors, metadata, client
//! certificates). The pure tables are unit tests: `select.rs` (check) and `put.rs` (tags).

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use crate::common::{self, check, env, Image, Run};

fn put(source: Value, params: Value, src: &Path) -> common::Outcome {
    Run::new("out")
        .arg(src.display().to_string())
        .stdin_json(&json!({"source": source, "params": params}))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .run()
}

fn get(source: Value, version: Value, params: Value, dest: &Path) -> common::Outcome {
    Run::new("in")
        .arg(dest.display().to_string())
        .stdin_json(&json!({"source": source, "version": version, "params": params}))
        .run()
}

fn tags_in(out: &Value) -> Vec<&str> {
    out.as_array()
        .unwrap()
        .iter()
        .map(|v| v["tag"].as_str().unwrap())
        .collect()
}

/// registry-image-resource check_test.go, "when invoked with an invalid cursor version"
/// (tag mode) and the "semver tag ordering with cursor…" entries of "tracking semver tags":
/// a cursor's digest that is not a valid digest matches nothing and fails nothing.
#[test]
fn a_cursor_whose_digest_is_not_a_digest_matches_nothing() {
    let reg = &env().plain;
    let repo = common::unique("peers-cursor");
    let latest = reg.push(&Image::marked("peers-cursor"), &format!("{repo}:latest"));
    let source = json!({"repository": reg.repo(&repo)});
    for digest in [
        "bogus",
        "sha256:deadbeef",
        "random-3",
        "",
        // A valid digest the registry does not have (the entry's own cursor).
        "sha256:deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    ] {
        let out = check(&json!({"source": source, "version": {"tag": "latest", "digest": digest}}))
            .success();
        assert_eq!(
            out,
            json!([{"tag": "latest", "digest": latest}]),
            "{digest:?}"
        );
    }

    // Selection mode: "semver tag ordering with cursor" and "... with different digest".
    let mut digests = std::collections::HashMap::new();
    for (tag, image) in [
        ("1.0.0", "random-1"),
        ("1.2.1", "random-3"),
        ("2.0.0", "random-5"),
    ] {
        digests.insert(
            tag,
            reg.push(
                &Image::marked(&format!("{repo}-{image}")),
                &format!("{repo}:{tag}"),
            ),
        );
    }
    let selecting = json!({"repository": reg.repo(&repo), "semver_constraint": "*"});
    let with_cursor = |digest: &str| {
        check(&json!({"source": selecting, "version": {"tag": "1.2.1", "digest": digest}}))
            .success()
    };
    assert_eq!(tags_in(&with_cursor(&digests["1.2.1"])), ["1.2.1", "2.0.0"]);
    // registry-image-resource cannot place a cursor whose digest changed and emits every
    // version; dockhand places it by its tag (README, migration table).
    assert_eq!(tags_in(&with_cursor(&digests["1.0.0"])), ["1.2.1", "2.0.0"]);
    assert_eq!(tags_in(&with_cursor("bogus")), ["1.2.1", "2.0.0"]);
}

/// docker-image-resource names `repository:tag` when a digest cannot be fetched ("failed to
/// fetch digest for image '<repo>:<tag>'"); Docker Hub answers 401 for an image that does
/// not exist, so the tag is part of what is unknown.
#[test]
fn an_image_the_registry_refuses_is_named_with_its_tag() {
    let env = env();
    for registry in [&env.basic, &env.token] {
        let repo = common::unique("peers-unknown");
        let err =
            check(&json!({"source": {"repository": registry.repo(&repo), "tag": "1.2"}})).failure();
        assert!(err.contains("unauthorized"), "{err}");
        assert!(err.contains(&format!("{repo}:1.2")), "{err}");
    }
}

/// registry-image-resource out_test.go, "pushing semver tags", entry "non-semver tag".
#[test]
fn a_version_that_is_not_semantic_is_refused_before_anything_is_pushed() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    Image::marked("peers-version").write_layout(&dir.path().join("layout"), "t");
    let to = common::unique("peers-version");
    let err = put(
        json!({"repository": reg.repo(&to)}),
        json!({"image": "layout", "version": "hoogily-boogily"}),
        dir.path(),
    )
    .failure();
    assert_eq!(
        err,
        r#"error: params.version: invalid semantic version: "hoogily-boogily""#
    );
    assert!(!reg.exists(&format!("{to}:hoogily-boogily")));
    assert!(!reg.exists(&format!("{to}:latest")));
}

/// registry-image-resource out_test.go, "pushing an OCI image tarball": "with additional_tags
/// (newline separator)" and "with tag_prefix" (the prefix goes on the additional tags when
/// there is no tag_file), and "when the requested tarball is provided as a glob pattern".
#[test]
fn additional_tags_and_tag_prefix_as_registry_image_resource() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    Image::marked("peers-tags").write_layout(&dir.path().join("image-1"), "t");
    std::fs::write(dir.path().join("tags"), "additional\ntags\n").unwrap();
    for (prefix, want) in [
        (None, ["latest", "additional", "tags"]),
        (Some("dev-"), ["latest", "dev-additional", "dev-tags"]),
    ] {
        let to = common::unique("peers-tags");
        let mut params = json!({"image": "image-*", "additional_tags": "tags"});
        if let Some(p) = prefix {
            params["tag_prefix"] = json!(p);
        }
        let out = put(json!({"repository": reg.repo(&to)}), params, dir.path()).success();
        let digest = out["version"]["digest"].as_str().unwrap();
        assert_eq!(out["version"]["tag"], "latest");
        for tag in want {
            assert_eq!(reg.skopeo_digest(&format!("{to}:{tag}")), digest, "{tag}");
        }
    }
    // "errors when additional_tags is not provided": dockhand warns and pushes source.tag
    // (docker-image-resource ignores tag_prefix without tag_file).
    let to = common::unique("peers-prefix");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"image": "image-*", "tag_prefix": "dev-"}),
        dir.path(),
    );
    assert!(
        out.stderr.contains(
            "params.tag_prefix applies to params.tag_file or params.additional_tags; ignored"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(out.success()["version"]["tag"], "latest");
}

/// The `manifest.json` and `index.json` of an `image.tar`.
fn archive_names(path: &Path) -> (Value, Value) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let (mut manifest, mut index) = (Value::Null, Value::Null);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut text = String::new();
        if name == "manifest.json" || name == "index.json" {
            entry.read_to_string(&mut text).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            if name == "manifest.json" {
                manifest = value;
            } else {
                index = value;
            }
        }
    }
    (manifest, index)
}

/// `format: oci` through `registry_mirror`: `image.tar` (and docker_inspect.json) name the
/// repository the pipeline asked for, not the mirror's copy. registry-image-resource
/// in_test.go, "using a mirror": "which has the image" "in an explicit namespace" and "in an
/// implied namespace" ("saving an OCI tarball names the image with the original repository
/// and tag, not the mirror"), and "when the repository contains a registry host name prefixed
/// image" (the mirror is not asked).
#[test]
fn oci_image_tar_through_a_mirror_names_the_repository_asked_for() {
    let mirror = &env().plain;
    // One path segment, so that Docker Hub's implied `library/` applies.
    let name = common::unique("peers-oci").replace('/', "-");
    // (repository as the pipeline writes it, the path on the mirror)
    for (repository, path) in [
        (
            format!("dockhand-mirror/{name}"),
            format!("dockhand-mirror/{name}"),
        ),
        (name.clone(), format!("library/{name}")),
    ] {
        let digest = mirror.push(&Image::marked(&path), &format!("{path}:1.0"));
        let dest = tempfile::tempdir().unwrap();
        let out = get(
            json!({"repository": repository, "tag": "1.0", "registry_mirror": format!("http://{}", mirror.host)}),
            json!({"tag": "1.0", "digest": digest}),
            json!({"format": "oci"}),
            dest.path(),
        );
        assert!(
            out.stderr
                .contains(&format!("using mirror {}", mirror.host)),
            "{}",
            out.stderr
        );
        out.success();
        let (manifest, index) = archive_names(&dest.path().join("image.tar"));
        assert_eq!(
            manifest[0]["RepoTags"],
            json!([format!("{repository}:1.0")]),
            "{manifest}"
        );
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            json!(format!("{repository}:1.0")),
            "{index}"
        );
        let inspect = std::fs::read_to_string(dest.path().join("docker_inspect.json")).unwrap();
        assert!(!inspect.contains(&mirror.host), "{inspect}");
    }

    // A repository on another registry: the mirror (here one that is down) is not asked.
    let down = format!("127.0.0.1:{}", common::free_port());
    let repo = common::unique("peers-not-hub");
    let digest = mirror.push(&Image::marked(&repo), &format!("{repo}:1.0"));
    let dest = tempfile::tempdir().unwrap();
    let out = get(
        json!({"repository": mirror.repo(&repo), "tag": "1.0", "registry_mirror": format!("http://{down}")}),
        json!({"tag": "1.0", "digest": digest}),
        json!({"format": "oci"}),
        dest.path(),
    );
    assert!(!out.stderr.contains("mirror"), "{}", out.stderr);
    out.success();
    let (manifest, _) = archive_names(&dest.path().join("image.tar"));
    assert_eq!(
        manifest[0]["RepoTags"],
        json!([format!("{}:1.0", mirror.repo(&repo))]),
        "{manifest}"
    );
}

/// registry-image-resource in_test.go, "label_regex and annotation_regex": matching image
/// labels and manifest annotations become `in`'s metadata, in key order; the others do not.
#[test]
fn labels_and_annotations_matching_their_regex_become_in_metadata() {
    let reg = &env().plain;
    let repo = common::unique("peers-labels");
    let digest = reg.push(
        &Image::marked("peers-labels")
            .label("com.example.foo", "bar")
            .label("org.other.baz", "skip")
            .label("com.example.abc", "first")
            .annotation("com.example.build", "123")
            .annotation("org.internal", "skip"),
        &format!("{repo}:latest"),
    );
    let metadata_with = |extra: Value, params: Value| {
        let mut source = json!({"repository": reg.repo(&repo)});
        for (k, v) in extra.as_object().unwrap() {
            source[k] = v.clone();
        }
        let dest = tempfile::tempdir().unwrap();
        let out = get(
            source,
            json!({"tag": "latest", "digest": digest}),
            params,
            &dest.path().join("got"),
        )
        .success();
        out["metadata"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["value"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let metadata = |extra: Value| metadata_with(extra, json!({"format": "oci"}));
    let plain = metadata(json!({}));
    assert!(
        !plain
            .iter()
            .any(|(n, _)| n.starts_with("com.") || n.starts_with("org.")),
        "{plain:?}"
    );
    let both = metadata(
        json!({"label_regex": r"^com\.example\.", "annotation_regex": r"^com\.example\."}),
    );
    let extra: Vec<(&str, &str)> = both
        .iter()
        .filter(|(n, _)| n.contains('.'))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        extra,
        [
            ("com.example.abc", "first"),
            ("com.example.foo", "bar"),
            ("com.example.build", "123")
        ]
    );
    // With skip_download, the manifest and config are still read for them (no layer), as
    // registry-image-resource does.
    let skipped = metadata_with(
        json!({"label_regex": r"^com\.example\.f", "annotation_regex": "build"}),
        json!({"skip_download": true}),
    );
    let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["repository", "tag", "com.example.foo", "com.example.build"]
    );
    let err = check(&json!({"source": {"repository": reg.repo(&repo), "label_regex": "com.("}}))
        .failure();
    assert!(
        err.starts_with("error: source.label_regex: invalid regular expression"),
        "{err}"
    );
}

/// registry-image-resource's `content_trust` (Notary v1): accepted with a warning of its own,
/// not the unknown-field one, and its keys appear nowhere.
#[test]
fn content_trust_gets_a_warning_of_its_own() {
    let reg = &env().plain;
    let repo = common::unique("peers-trust");
    let digest = reg.push(&Image::marked("peers-trust"), &format!("{repo}:latest"));
    let out = check(&json!({"source": {
        "repository": reg.repo(&repo),
        "content_trust": {
            "repository_key_id": "1452a842871e529ffc2be29a",
            "repository_key": "-----BEGIN ENCRYPTED PRIVATE KEY-----notary-key-material",
            "repository_passphrase": "notary-passphrase-value",
        },
    }}));
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
    assert!(
        out.stderr.contains(
            "source.content_trust is ignored: Docker Content Trust (Notary v1) is retired"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("unknown field"), "{}", out.stderr);
    let all = out.all_output();
    assert!(
        !all.contains("notary-key-material") && !all.contains("notary-passphrase-value"),
        "{all}"
    );
}

/// Runs `openssl` with `args` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client certificate made the way many teams make one, `openssl x509 -req` without an
/// extension file: an X.509 v1 certificate. Docker, curl and the registry accept it; so
/// does dockhand, in check, in and out, against a registry that requires client certificates.
/// A key that is not the certificate's is refused naming the field, never as a "peer"'s.
#[test]
fn a_v1_client_certificate_made_by_openssl_is_accepted() {
    let env = env();
    let reg = &env.mtls;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = env.ca_key_path.display().to_string();
    let ca_cert = env.ca_path.display().to_string();
    for (name, algorithm) in [("rsa", "rsa:2048"), ("ec", "ec")] {
        let mut req = vec!["req", "-new", "-nodes", "-subj", "/CN=dockhand-v1-client"];
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        if algorithm == "ec" {
            openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &key,
                ],
            );
            req.extend(["-key", &key]);
        } else {
            req.extend(["-newkey", algorithm, "-keyout", &key]);
        }
        req.extend(["-out", &csr]);
        openssl(d, &req);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
            ],
        );
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in", &crt])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
            "not a v1 certificate"
        );
    }
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let repo = common::unique("peers-v1");
    let digest = reg.push(&Image::marked("peers-v1"), &format!("{repo}:latest"));
    for name in ["rsa", "ec"] {
        let source = json!({
            "repository": reg.repo(&repo),
            "ca_certs": [{"domain": reg.host, "cert": env.ca_pem}],
            "client_certs": [{"domain": reg.host, "cert": read(&format!("{name}.crt")), "key": read(&format!("{name}.key"))}],
        });
        let out = check(&json!({"source": source})).success();
        assert_eq!(out, json!([{"tag": "latest", "digest": digest}]), "{name}");
        let dest = tempfile::tempdir().unwrap();
        get(
            source.clone(),
            json!({"tag": "latest", "digest": digest}),
            json!({"format": "oci"}),
            &dest.path().join("got"),
        )
        .success();
        let mut pushed = source.clone();
        pushed["tag"] = json!(format!("pushed-{name}"));
        let out = put(pushed, json!({"image": "got/image.tar"}), dest.path()).success();
        assert_eq!(out["version"]["digest"], digest.as_str(), "{name}");
    }
    // The RSA certificate with the EC key: refused before any request, naming the field.
    let source = json!({
        "repository": reg.repo(&repo),
        "client_certs": [{"domain": reg.host, "cert": read("rsa.crt"), "key": read("ec.key")}],
    });
    let err = check(&json!({"source": source})).failure();
    assert!(
        err.starts_with("error: source.client_certs[0]: cannot be used: the private key does not belong to the certificate"),
        "{err}"
    );
    assert!(!err.contains("peer"), "{err}");
}

/// registry-image-resource out_test.go, "pushing an OCI imageIndex (multi-arch) image":
/// "works", "returns metadata" (the repository and the tags) and "When using bump_aliases"
/// ("Push the right tags": 1.0.0, 1.0, 1 and latest all name the index).
#[test]
fn a_multi_arch_index_with_bump_aliases_moves_every_alias_to_the_index() {
    use crate::common::image::{write_index_layout, AMD64, ARM64};
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    let built = write_index_layout(
        &dir.path().join("multi-arch"),
        &[
            Image::marked("peers-amd").platform(AMD64),
            Image::marked("peers-arm").platform(ARM64),
        ],
        "t",
    );
    let to = common::unique("peers-index");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"image": "multi-arch", "version": "1.0.0", "bump_aliases": true}),
        dir.path(),
    )
    .success();
    assert_eq!(
        out["version"],
        json!({"tag": "1.0.0", "digest": built.digest})
    );
    for tag in ["1.0.0", "1.0", "1", "latest"] {
        assert_eq!(
            reg.skopeo_digest(&format!("{to}:{tag}")),
            built.digest,
            "{tag}"
        );
    }
    assert_eq!(
        out["metadata"],
        json!([
            {"name": "repository", "value": reg.repo(&to)},
            {"name": "tags", "value": "1.0.0 1.0 1 latest"},
        ])
    );
}

/// registry-image-resource check_test.go, "tracking semver tags", entry "simple tag regex
/// where sorted is true": `created_at_sort` orders the matching tags by their config's
/// `created`, whatever their names say.
#[test]
fn created_at_sort_orders_by_the_config_dates() {
    let reg = &env().plain;
    let repo = common::unique("peers-created");
    for (tag, created) in [
        ("1.0.0", None),
        ("non-semver-tag", None),
        ("gem-1338-git-4bd8a5e1a244", Some("2024-01-04T05:00:00Z")),
        ("gem-182-git-6bd8a5e1a2b3", Some("2024-01-04T00:00:00Z")),
        ("gem-1337-git-4bd8a5e1a244", Some("2024-01-04T04:00:00Z")),
    ] {
        let mut image = Image::marked(&format!("{repo}-{tag}"));
        if let Some(c) = created {
            image = image.created(c);
        }
        reg.push(&image, &format!("{repo}:{tag}"));
    }
    let out = check(&json!({"source": {
        "repository": reg.repo(&repo),
        "tag_regex": r"gem-(\d+)-git-([a-f0-9]{12})",
        "created_at_sort": true,
    }}))
    .success();
    assert_eq!(
        tags_in(&out),
        [
            "gem-182-git-6bd8a5e1a2b3",
            "gem-1337-git-4bd8a5e1a244",
            "gem-1338-git-4bd8a5e1a244"
        ]
    );
}
