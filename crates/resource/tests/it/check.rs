//! `check` in tag mode against real registries of every flavour.

use serde_json::{json, Value};

use crate::common::{self, check, env, Fault, FaultProxy, Flavour, Image, Registry, Run};

/// The `source` that reaches `registry` with what it needs (CA, client cert, credentials).
fn source_for(registry: &Registry, repo: &str, tag: &str) -> Value {
    let env = env();
    let mut source = json!({"repository": registry.repo(repo), "tag": tag});
    match registry.flavour {
        Flavour::Tls => {
            source["ca_certs"] = json!([{"domain": registry.host, "cert": env.ca_pem}]);
        }
        Flavour::Mtls => {
            source["ca_certs"] = json!([{"domain": registry.host, "cert": env.ca_pem}]);
            source["client_certs"] = json!([{
                "domain": registry.host,
                "cert": env.client_cert_pem,
                "key": env.client_key_pem,
            }]);
        }
        Flavour::Basic | Flavour::Token => {
            source["username"] = json!(common::USER);
            source["password"] = json!(common::PASSWORD);
        }
        Flavour::Plain => {}
    }
    source
}

fn versions(tag: &str, digests: &[&str]) -> Value {
    Value::Array(
        digests
            .iter()
            .map(|d| json!({"tag": tag, "digest": d}))
            .collect(),
    )
}

#[test]
fn digest_equals_skopeo_on_every_registry_flavour() {
    let env = env();
    for registry in [&env.plain, &env.tls, &env.mtls, &env.basic, &env.token] {
        let repo = common::unique("flavour");
        let pushed = registry.push(&Image::marked(&repo), &format!("{repo}:1.0"));
        let skopeo = registry.skopeo_digest(&format!("{repo}:1.0"));
        assert_eq!(pushed, skopeo, "{:?}", registry.flavour);
        let out = check(&json!({"source": source_for(registry, &repo, "1.0"), "version": null}))
            .success();
        assert_eq!(out, versions("1.0", &[&skopeo]), "{:?}", registry.flavour);
    }
}

#[test]
fn cursor_rules() {
    let reg = &env().plain;
    let repo = common::unique("cursor");
    let first = reg.push(&Image::marked("one"), &format!("{repo}:latest"));
    let source = source_for(reg, &repo, "latest");

    // No cursor: the current version.
    let out = check(&json!({"source": source})).success();
    assert_eq!(out, versions("latest", &[&first]));

    // Up to date: just the current version.
    let cursor = json!({"tag": "latest", "digest": first});
    let out = check(&json!({"source": source, "version": cursor})).success();
    assert_eq!(out, versions("latest", &[&first]));

    // The tag moved and the cursor still exists: [cursor, current].
    let second = reg.push(&Image::marked("two"), &format!("{repo}:latest"));
    assert_ne!(first, second);
    let out = check(&json!({"source": source, "version": cursor})).success();
    assert_eq!(out, versions("latest", &[&first, &second]));

    // The cursor is gone: [current].
    reg.delete(&repo, &first);
    let out = check(&json!({"source": source, "version": cursor})).success();
    assert_eq!(out, versions("latest", &[&second]));
}

#[test]
fn digest_only_cursor_from_docker_image_resource_is_kept_as_given() {
    let reg = &env().plain;
    let repo = common::unique("digest-only");
    let first = reg.push(&Image::marked("a"), &format!("{repo}:latest"));
    let second = reg.push(&Image::marked("b"), &format!("{repo}:latest"));
    let out =
        check(&json!({"source": source_for(reg, &repo, "latest"), "version": {"digest": first}}))
            .success();
    assert_eq!(
        out,
        json!([{"digest": first}, {"tag": "latest", "digest": second}])
    );
}

#[test]
fn missing_tag_gives_an_empty_list() {
    let reg = &env().plain;
    let repo = common::unique("missing");
    reg.push(&Image::marked("x"), &format!("{repo}:present"));
    let out = check(&json!({"source": source_for(reg, &repo, "absent")})).success();
    assert_eq!(out, json!([]));
    // A repository that does not exist at all, too.
    let out = check(&json!({"source": source_for(reg, "it/never-pushed", "latest")})).success();
    assert_eq!(out, json!([]));
}

#[test]
fn missing_tag_with_fail_when_missing_is_an_error() {
    let reg = &env().plain;
    let repo = common::unique("missing-fail");
    let mut source = source_for(reg, &repo, "absent");
    source["fail_when_missing"] = json!(true);
    let err = check(&json!({"source": source})).failure();
    assert!(err.contains("tag absent not found"), "{err}");
    assert!(err.contains(&repo), "{err}");
}

#[test]
fn multi_arch_tag_gives_the_index_digest() {
    let reg = &env().plain;
    let repo = common::unique("multiarch");
    let index = reg.push_index(
        &[
            Image::marked("amd64").platform(common::image::AMD64),
            Image::marked("arm64").platform(common::image::ARM64),
        ],
        &format!("{repo}:multi"),
    );
    assert_eq!(index, reg.skopeo_digest(&format!("{repo}:multi")));
    let out = check(&json!({"source": source_for(reg, &repo, "multi")})).success();
    assert_eq!(out, versions("multi", &[&index]));
}

#[test]
fn docker_schema2_manifest_digest() {
    let reg = &env().plain;
    let repo = common::unique("v2s2");
    let digest = reg.push_docker_v2(&Image::marked("docker"), &format!("{repo}:v2"));
    let out = check(&json!({"source": source_for(reg, &repo, "v2")})).success();
    assert_eq!(out, versions("v2", &[&digest]));
}

#[test]
fn numeric_tag_keeps_its_text() {
    let reg = &env().plain;
    let repo = common::unique("numeric");
    let digest = reg.push(&Image::marked("n"), &format!("{repo}:3.7"));
    let out = check(&json!({"source": {"repository": reg.repo(&repo), "tag": 3.7}})).success();
    assert_eq!(out, versions("3.7", &[&digest]));
}

#[test]
fn tls_registry_without_its_ca_is_refused_with_a_fix() {
    let reg = &env().tls;
    let repo = common::unique("tls-no-ca");
    reg.push(&Image::marked("t"), &format!("{repo}:latest"));
    let err = check(&json!({"source": {"repository": reg.repo(&repo)}})).failure();
    assert!(err.contains("not trusted"), "{err}");
    assert!(err.contains("source.ca_certs"), "{err}");
    assert!(err.contains("source.insecure_registries"), "{err}");
    assert!(err.contains(&reg.host), "{err}");
}

#[test]
fn tls_registry_with_its_ca_works() {
    let reg = &env().tls;
    let repo = common::unique("tls-ca");
    let digest = reg.push(&Image::marked("t"), &format!("{repo}:latest"));
    let out = check(&json!({"source": source_for(reg, &repo, "latest")})).success();
    assert_eq!(out, versions("latest", &[&digest]));
    // A bare PEM string (registry-image-resource's form) applies to every registry.
    let source = json!({"repository": reg.repo(&repo), "ca_certs": [env().ca_pem]});
    let out = check(&json!({"source": source})).success();
    assert_eq!(out, versions("latest", &[&digest]));
}

#[test]
fn insecure_registries_accept_an_unverified_certificate() {
    let reg = &env().tls;
    let repo = common::unique("tls-insecure");
    let digest = reg.push(&Image::marked("t"), &format!("{repo}:latest"));
    for entry in [reg.host.clone(), "127.0.0.0/8".to_string()] {
        let source = json!({"repository": reg.repo(&repo), "insecure_registries": [entry]});
        let out = check(&json!({"source": source})).success();
        assert_eq!(out, versions("latest", &[&digest]));
    }
}

#[test]
fn system_roots_still_work_with_ca_certs_set() {
    // The test CA stands in for a public root: it is in the system bundle (SSL_CERT_FILE), and
    // ca_certs names a different CA for the very same registry. Adding must not replace.
    let env = env();
    let reg = &env.tls;
    let repo = common::unique("tls-roots");
    let digest = reg.push(&Image::marked("r"), &format!("{repo}:latest"));
    let source = json!({
        "repository": reg.repo(&repo),
        "ca_certs": [{"domain": reg.host, "cert": env.other_ca_pem}],
    });
    let out = Run::new("check")
        .stdin_json(&json!({"source": source}))
        .env("SSL_CERT_FILE", env.bundle_with_ca.display().to_string())
        .run()
        .success();
    assert_eq!(out, versions("latest", &[&digest]));
}

#[test]
fn ca_certs_for_another_domain_do_not_apply() {
    let env = env();
    let reg = &env.tls;
    let repo = common::unique("tls-other-domain");
    reg.push(&Image::marked("d"), &format!("{repo}:latest"));
    let source = json!({
        "repository": reg.repo(&repo),
        "ca_certs": [{"domain": "registry.example.com", "cert": env.ca_pem}],
    });
    let err = check(&json!({"source": source})).failure();
    assert!(err.contains("not trusted"), "{err}");
}

#[test]
fn client_certificate_registry_works_with_client_certs() {
    let reg = &env().mtls;
    let repo = common::unique("mtls");
    let digest = reg.push(&Image::marked("m"), &format!("{repo}:latest"));
    let out = check(&json!({"source": source_for(reg, &repo, "latest")})).success();
    assert_eq!(out, versions("latest", &[&digest]));
}

#[test]
fn client_certificate_registry_fails_clearly_without_one() {
    let env = env();
    let reg = &env.mtls;
    let repo = common::unique("mtls-none");
    reg.push(&Image::marked("m"), &format!("{repo}:latest"));
    let source = json!({
        "repository": reg.repo(&repo),
        "ca_certs": [{"domain": reg.host, "cert": env.ca_pem}],
    });
    let err = check(&json!({"source": source})).failure();
    assert!(err.contains("requires a client certificate"), "{err}");
    assert!(err.contains("source.client_certs"), "{err}");
}

fn assert_unauthorized_without_secret(registry: &Registry, password: Option<&str>) {
    let repo = common::unique("auth");
    registry.push(&Image::marked("secret"), &format!("{repo}:latest"));
    let mut source = json!({"repository": registry.repo(&repo), "debug": true});
    if let Some(p) = password {
        source["username"] = json!(common::USER);
        source["password"] = json!(p);
    }
    let out = check(&json!({"source": source}));
    let err = out.failure();
    assert!(
        err.contains("unauthorized"),
        "{:?}: {err}",
        registry.flavour
    );
    assert!(err.contains(&repo), "{:?}: {err}", registry.flavour);
    if let Some(p) = password {
        assert!(
            !out.all_output().contains(p),
            "password in output: {}",
            out.all_output()
        );
    }
    assert!(!out.all_output().contains(common::PASSWORD));
}

#[test]
fn wrong_credentials_are_unauthorized_and_never_printed() {
    let env = env();
    for registry in [&env.basic, &env.token] {
        assert_unauthorized_without_secret(registry, Some("wrong-Pa55word!"));
    }
}

#[test]
fn missing_credentials_are_unauthorized() {
    let env = env();
    for registry in [&env.basic, &env.token] {
        assert_unauthorized_without_secret(registry, None);
    }
}

#[test]
fn credentials_from_docker_config() {
    use base64::Engine as _;
    let reg = &env().basic;
    let repo = common::unique("docker-config");
    let digest = reg.push(&Image::marked("cfg"), &format!("{repo}:latest"));
    let config_dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        common::USER,
        common::PASSWORD
    ));
    std::fs::write(
        config_dir.path().join("config.json"),
        json!({"auths": {(format!("http://{}", reg.host)): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let out = Run::new("check")
        .stdin_json(&json!({"source": {"repository": reg.repo(&repo)}}))
        .env("DOCKER_CONFIG", config_dir.path().display().to_string())
        .run();
    assert_eq!(out.success(), versions("latest", &[&digest]));
    assert!(!out.all_output().contains(common::PASSWORD));
}

#[test]
fn token_is_fetched_once_per_scope() {
    let env = env();
    let reg = &env.token;
    let repo = common::unique("token-cache");
    let first = reg.push(&Image::marked("1"), &format!("{repo}:latest"));
    let second = reg.push(&Image::marked("2"), &format!("{repo}:latest"));
    let before = env.token_server.requests_for(&repo);
    let mut source = source_for(reg, &repo, "latest");
    source["debug"] = json!(true);
    let out = check(&json!({"source": source, "version": {"tag": "latest", "digest": first}}));
    assert_eq!(out.success(), versions("latest", &[&first, &second]));
    // Two manifest requests, one token.
    assert_eq!(env.token_server.requests_for(&repo) - before, 1);
}

#[test]
fn retries_a_503_then_succeeds() {
    let reg = &env().plain;
    let repo = common::unique("retry-503");
    let digest = reg.push(&Image::marked("r"), &format!("{repo}:latest"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.add(
        "/manifests/",
        None,
        2,
        Fault::Status(503, vec![], "busy".into()),
    );
    let out = check(&json!({"source": {"repository": format!("{}/{repo}", proxy.host())}}));
    assert_eq!(out.success(), versions("latest", &[&digest]));
    let manifest_requests = proxy
        .seen()
        .iter()
        .filter(|s| s.target.contains("/manifests/"))
        .count();
    assert_eq!(manifest_requests, 3);
}

#[test]
fn honours_retry_after_on_429() {
    let reg = &env().plain;
    let repo = common::unique("retry-429");
    let digest = reg.push(&Image::marked("r"), &format!("{repo}:latest"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.add(
        "/manifests/",
        None,
        1,
        Fault::Status(
            429,
            vec![("Retry-After".into(), "2".into())],
            "slow down".into(),
        ),
    );
    let started = std::time::Instant::now();
    let out = check(&json!({"source": {"repository": format!("{}/{repo}", proxy.host())}}));
    assert_eq!(out.success(), versions("latest", &[&digest]));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

#[test]
fn retries_a_reset_connection() {
    let reg = &env().plain;
    let repo = common::unique("retry-reset");
    let digest = reg.push(&Image::marked("r"), &format!("{repo}:latest"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.add("/manifests/", None, 1, Fault::Reset);
    let out = check(&json!({"source": {"repository": format!("{}/{repo}", proxy.host())}}));
    assert_eq!(out.success(), versions("latest", &[&digest]));
}

#[test]
fn persistent_5xx_is_an_error_not_an_empty_list() {
    let reg = &env().plain;
    let repo = common::unique("retry-fail");
    reg.push(&Image::marked("r"), &format!("{repo}:latest"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.add(
        "/manifests/",
        None,
        100,
        Fault::Status(
            503,
            vec![("Content-Type".into(), "application/json".into())],
            r#"{"errors":[{"code":"UNAVAILABLE","message":"maintenance"}]}"#.into(),
        ),
    );
    let err =
        check(&json!({"source": {"repository": format!("{}/{repo}", proxy.host())}})).failure();
    assert!(err.contains("503"), "{err}");
    assert!(err.contains("maintenance"), "{err}");
    assert!(err.contains(&repo), "{err}");
}

#[test]
fn hashes_the_manifest_when_the_digest_header_is_missing() {
    let reg = &env().plain;
    let repo = common::unique("no-digest-header");
    let digest = reg.push(&Image::marked("h"), &format!("{repo}:latest"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.add(
        "/manifests/",
        None,
        100,
        Fault::StripHeader("Docker-Content-Digest".into()),
    );
    let out = check(&json!({"source": {"repository": format!("{}/{repo}", proxy.host())}}));
    assert_eq!(out.success(), versions("latest", &[&digest]));
    let methods: Vec<_> = proxy
        .seen()
        .iter()
        .filter(|s| s.target.contains("/manifests/"))
        .map(|s| s.method.clone())
        .collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[test]
fn unknown_fields_warn_with_a_suggestion_and_do_not_fail() {
    let reg = &env().plain;
    let repo = common::unique("unknown");
    let digest = reg.push(&Image::marked("u"), &format!("{repo}:latest"));
    let out = check(&json!({"source": {"repository": reg.repo(&repo), "tags": "x", "zzz": 1}}));
    assert_eq!(out.success(), versions("latest", &[&digest]));
    assert!(
        out.stderr
            .contains("source.tags (did you mean source.tag?)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown field source.zzz"),
        "{}",
        out.stderr
    );
}

#[test]
fn unreachable_registry_is_an_error() {
    let err = check(&json!({"source": {"repository": "127.0.0.1:1/nothing/here"}})).failure();
    assert!(
        err.contains("cannot connect to registry 127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn credentials_from_a_docker_credential_helper() {
    use std::os::unix::fs::PermissionsExt as _;
    let reg = &env().token;
    let repo = common::unique("cred-helper");
    let digest = reg.push(&Image::marked("helper"), &format!("{repo}:latest"));
    let dir = tempfile::tempdir().unwrap();
    // A credential helper speaks a protocol: server on stdin, JSON on stdout.
    let helper = dir.path().join("docker-credential-dockhandtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$server\" = \"{}\" ] || exit 1\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"{}\",\"Secret\":\"{}\"}}'\n",
            reg.host,
            common::USER,
            common::PASSWORD
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        json!({"credHelpers": {(reg.host.clone()): "dockhandtest"}}).to_string(),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = Run::new("check")
        .stdin_json(&json!({"source": {"repository": reg.repo(&repo)}}))
        .env("DOCKER_CONFIG", dir.path().display().to_string())
        .env("PATH", path)
        .run();
    assert_eq!(out.success(), versions("latest", &[&digest]));
    assert!(!out.all_output().contains(common::PASSWORD));
}
