//! Cloud logins against the harness's token-auth `docker-registry`: Azure's managed identity
//! (a test IMDS, then ACR's `/oauth2/exchange` played by the token server behind a proxy on
//! the registry's own host), and GCP (the documented `_json_key`/`oauth2accesstoken`
//! usernames, and a test GCE metadata server for `gcp_metadata`). Each test's tokens are its
//! own, and none may appear in anything a binary prints.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::cloud::{MetadataServer, AZURE_TOKEN_PATH, GCE_TOKEN_PATH};
use crate::common::token::{ACR_USER, SERVICE};
use crate::common::{self, FaultProxy, Image, Run};

const IMDS_VARIABLE: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
const GCE_VARIABLE: &str = "GCE_METADATA_HOST";

/// A token unique to this test process and `name`.
fn token(name: &str) -> String {
    format!("{name}-{}", common::unique("t").replace('/', "-"))
}

/// The token registry with `repo:tag` pushed; returns its digest.
fn pushed(repo: &str, tag: &str) -> String {
    let token = &common::registries().token;
    token.push(&Image::marked(repo), &format!("{repo}:{tag}"))
}

/// ACR: a proxy on the registry's host that sends `/oauth2/` to the token server.
fn acr_front() -> FaultProxy {
    let r = common::registries();
    let proxy = FaultProxy::start(&r.token.host);
    proxy.route("/oauth2/", &r.token_server.host());
    proxy
}

fn run(bin: &'static str, env: &[(&str, String)], request: &Value) -> common::Outcome {
    let mut run = Run::new(bin)
        .stdin_json(request)
        .env_remove(IMDS_VARIABLE)
        .env_remove(GCE_VARIABLE);
    for (k, v) in env {
        run = run.env(k, v.clone());
    }
    if bin == "in" {
        run = run.arg(
            common::scratch_dir(&common::unique("cloud-in"))
                .join("dest")
                .display()
                .to_string(),
        );
    }
    run.run()
}

fn assert_no_secret(out: &common::Outcome, secrets: &[&str]) {
    let all = out.all_output();
    for secret in secrets {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
}

#[test]
fn azure_acr_gets_a_managed_identity_token_exchanges_it_and_pulls_with_the_refresh_token() {
    let r = common::registries();
    let repo = common::unique("acr");
    let digest = pushed(&repo, "1.0");
    let (aad, refresh) = (token("aad-access-token"), token("acr-refresh-token"));
    let client_id = "11111111-2222-3333-4444-555555555555";
    let imds = MetadataServer::azure(&aad, Some(client_id));
    r.token_server.accept_exchange(&aad, &refresh);
    let acr = acr_front();
    let source = json!({
        "repository": acr.repo(&repo),
        "tag": "1.0",
        "azure_acr": true,
        "azure_client_id": client_id,
        "azure_tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "debug": true,
    });
    let env = [(IMDS_VARIABLE, imds.url())];
    let out = run("check", &env, &json!({"source": source}));
    assert_eq!(out.success(), json!([{"tag": "1.0", "digest": digest}]));
    assert_no_secret(&out, &[&aad, &refresh]);

    // 1. The managed identity's token, from IMDS, for the public cloud's management resource.
    let asked = imds.log();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let ask = &asked[0];
    assert_eq!((ask.path.as_str(), ask.status), (AZURE_TOKEN_PATH, 200));
    assert_eq!(ask.header("metadata"), Some("true"));
    assert_eq!(ask.param("resource"), Some("https://management.azure.com"));
    assert_eq!(ask.param("client_id"), Some(client_id));
    assert_eq!(ask.param("api-version"), Some("2018-02-01"));
    // 2. Exchanged on the registry's own host for a refresh token.
    let exchanged: Vec<_> = r
        .token_server
        .exchange_log()
        .into_iter()
        .filter(|e| e.access_token.as_deref() == Some(aad.as_str()))
        .collect();
    assert_eq!(exchanged.len(), 1, "{exchanged:?}");
    let e = &exchanged[0];
    assert_eq!(e.status, 200);
    assert_eq!(e.grant_type.as_deref(), Some("access_token"));
    assert_eq!(e.service.as_deref(), Some(SERVICE));
    assert_eq!(
        e.tenant.as_deref(),
        Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
    );
    assert_eq!(
        e.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        acr.count_method(Some("POST"), "/oauth2/exchange"),
        1,
        "{:?}",
        acr.seen()
    );
    // 3. The refresh token is the null-GUID user's password at the token realm.
    let realm = r.token_server.log();
    let acr_user: Vec<_> = realm
        .iter()
        .filter(|t| {
            t.user.as_deref() == Some(ACR_USER) && t.scopes.iter().any(|s| s.contains(&repo))
        })
        .collect();
    assert!(!acr_user.is_empty() && acr_user.iter().all(|t| t.status == 200));

    // `in` takes the same path.
    let got = run(
        "in",
        &env,
        &json!({"source": source, "version": {"tag": "1.0", "digest": digest}}),
    );
    assert_eq!(got.success()["version"]["digest"], digest.as_str());
    assert_no_secret(&got, &[&aad, &refresh]);
}

#[test]
fn out_pushes_to_acr_and_with_gcp_metadata_through_the_cloud_login() {
    let r = common::registries();
    let dir = tempfile::tempdir().unwrap();
    Image::marked("pushed with a cloud login").write_layout(&dir.path().join("layout"), "t");
    let (aad, refresh) = (token("aad-push-token"), token("acr-push-refresh"));
    let imds = MetadataServer::azure(&aad, None);
    r.token_server.accept_exchange(&aad, &refresh);
    let access = token("ya29.push-access-token");
    let metadata = MetadataServer::gce(&access);
    r.token_server.also_accept("oauth2accesstoken", &access);
    let acr = acr_front();
    for (host, login, env) in [
        (acr.host(), "azure_acr", (IMDS_VARIABLE, imds.url())),
        (
            r.token.host.clone(),
            "gcp_metadata",
            (GCE_VARIABLE, metadata.host()),
        ),
    ] {
        let repo = common::unique("cloud-push");
        let mut source = json!({"repository": format!("{host}/{repo}"), "tag": "pushed"});
        source[login] = true.into();
        let out = Run::new("out")
            .arg(dir.path().display().to_string())
            .stdin_json(&json!({"source": source, "params": {"image": "layout"}}))
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .env_remove(IMDS_VARIABLE)
            .env_remove(GCE_VARIABLE)
            .env(env.0, env.1)
            .run();
        let digest = out.success()["version"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        assert_no_secret(&out, &[&aad, &refresh, &access]);
        assert_eq!(
            r.token.skopeo_digest(&format!("{repo}:pushed")),
            digest,
            "{login}"
        );
    }
}

/// `out` with `build` hands the login's credentials to the daemon that `out` starts, so a
/// `FROM` on the same ACR pulls (modelled on ecr.rs
/// `out_builds_from_an_ecr_base_image_and_pushes_with_a_token`).
#[test]
fn out_builds_from_an_acr_base_image_with_the_logins_credentials() {
    let r = common::registries();
    let acr = acr_front();
    let base = common::unique("acr-base");
    r.token.push(&Image::busybox(), &format!("{base}:latest"));
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("ctx")).unwrap();
    std::fs::write(
        src.path().join("ctx/Dockerfile"),
        format!(
            "FROM {}/{base}:latest\nRUN echo from-acr > /acr\n",
            acr.host()
        ),
    )
    .unwrap();
    let (aad, refresh) = (token("aad-build-token"), token("acr-build-refresh"));
    let imds = MetadataServer::azure(&aad, None);
    r.token_server.accept_exchange(&aad, &refresh);
    let app = common::unique("acr-app");
    let source = json!({"repository": acr.repo(&app), "azure_acr": true});
    let out = Run::new("out")
        .arg(src.path().display().to_string())
        .stdin_json(&json!({"source": source, "params": {"build": "ctx"}}))
        .env_remove(GCE_VARIABLE)
        .env(IMDS_VARIABLE, imds.url())
        .run();
    assert!(
        out.stderr.contains("using the cloud login's credentials"),
        "{}",
        out.stderr
    );
    let digest = out.success()["version"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_no_secret(&out, &[&aad, &refresh]);
    assert_eq!(r.token.skopeo_digest(&format!("{app}:latest")), digest);
}

#[test]
fn azure_acr_system_identity_without_a_tenant_and_another_cloud() {
    let r = common::registries();
    let repo = common::unique("acr-system");
    let digest = pushed(&repo, "latest");
    let (aad, refresh) = (token("aad-system-token"), token("acr-system-refresh"));
    let imds = MetadataServer::azure(&aad, None);
    r.token_server.accept_exchange(&aad, &refresh);
    let acr = acr_front();
    let source = json!({
        "repository": acr.repo(&repo),
        "azure_acr": true,
        "azure_environment": "AzureGovernment",
    });
    let out = run(
        "check",
        &[(IMDS_VARIABLE, imds.url())],
        &json!({"source": source}),
    );
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
    let ask = &imds.log()[0];
    assert_eq!(ask.param("client_id"), None);
    assert_eq!(
        ask.param("resource"),
        Some("https://management.usgovcloudapi.net")
    );
    // No tenant given and none in the challenge: none sent.
    let e = r
        .token_server
        .exchange_log()
        .into_iter()
        .find(|e| e.access_token.as_deref() == Some(aad.as_str()))
        .unwrap();
    assert_eq!((e.status, e.tenant), (200, None));
}

#[test]
fn azure_acr_failures_are_one_line_naming_the_endpoint_without_a_token() {
    let repo = common::unique("acr-fail");
    pushed(&repo, "latest");
    let acr = acr_front();
    let source = |client_id: Option<&str>| {
        let mut s = json!({"repository": acr.repo(&repo), "azure_acr": true});
        if let Some(id) = client_id {
            s["azure_client_id"] = id.into();
        }
        json!({ "source": s })
    };

    // IMDS does not know the identity.
    let aad = token("aad-unknown-identity");
    let imds = MetadataServer::azure(&aad, Some("the-vm-identity"));
    let out = run(
        "check",
        &[(IMDS_VARIABLE, imds.url())],
        &source(Some("another-identity")),
    );
    let err = out.failure();
    assert_eq!(
        err,
        format!(
            "error: cannot log in to registry {} with an Azure managed identity: the managed identity endpoint {}: answered 400 Bad Request: Identity not found",
            acr.host(),
            imds.host()
        )
    );

    // The registry refuses the exchange (and echoes the token, which must not print).
    let aad = token("aad-refused-by-acr");
    let imds = MetadataServer::azure(&aad, None);
    let out = run("check", &[(IMDS_VARIABLE, imds.url())], &source(None));
    let err = out.failure();
    assert!(
        err.starts_with(&format!(
            "error: cannot log in to registry {} with an Azure managed identity: the ACR token exchange at {}: answered 401 Unauthorized: access token *** is not valid",
            acr.host(),
            acr.host()
        )),
        "{err}"
    );
    assert_no_secret(&out, &[&aad]);

    // No metadata service at all.
    let out = run(
        "check",
        &[(IMDS_VARIABLE, "http://127.0.0.1:1".into())],
        &source(None),
    );
    let err = out.failure();
    assert!(
        err.contains("with an Azure managed identity: the managed identity endpoint 127.0.0.1:1: request failed"),
        "{err}"
    );
}

#[test]
fn azure_field_errors_name_the_field() {
    for (source, want) in [
        (
            json!({"repository": "r.azurecr.io/a", "azure_tenant_id": "t"}),
            "error: source.azure_tenant_id: needs source.azure_acr: true",
        ),
        (
            json!({"repository": "r.azurecr.io/a", "azure_acr": true, "azure_environment": "AzureMoon"}),
            "error: source.azure_environment: \"AzureMoon\" is not an Azure cloud",
        ),
        (
            json!({"repository": "r.azurecr.io/a", "azure_acr": true, "username": "u", "password": "p"}),
            "error: source.azure_acr: cannot be used with source.username",
        ),
    ] {
        let err = common::check(&json!({ "source": source })).failure();
        assert!(err.starts_with(want), "{err}");
    }
}

#[test]
fn gcp_metadata_token_is_the_password_of_oauth2accesstoken() {
    let r = common::registries();
    let repo = common::unique("gcp-metadata");
    let digest = pushed(&repo, "latest");
    let access = token("ya29.metadata-access-token");
    let metadata = MetadataServer::gce(&access);
    r.token_server.also_accept("oauth2accesstoken", &access);
    let source = json!({
        "repository": r.token.repo(&repo),
        "gcp_metadata": true,
        "debug": true,
    });
    let env = [(GCE_VARIABLE, metadata.host())];
    let out = run("check", &env, &json!({"source": source}));
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
    assert_no_secret(&out, &[&access]);
    let asked = metadata.log();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(
        (asked[0].path.as_str(), asked[0].status),
        (GCE_TOKEN_PATH, 200)
    );
    assert_eq!(asked[0].header("metadata-flavor"), Some("Google"));
    assert!(r
        .token_server
        .log()
        .iter()
        .any(|t| t.user.as_deref() == Some("oauth2accesstoken")
            && t.status == 200
            && t.scopes.iter().any(|s| s.contains(&repo))));
    let got = run(
        "in",
        &env,
        &json!({"source": source, "version": {"tag": "latest", "digest": digest}}),
    );
    assert_eq!(got.success()["version"]["digest"], digest.as_str());
    assert_no_secret(&got, &[&access]);

    // No metadata server: one line naming it.
    let out = run(
        "check",
        &[(GCE_VARIABLE, "127.0.0.1:1".into())],
        &json!({"source": source}),
    );
    let err = out.failure();
    assert!(
        err.starts_with(&format!(
            "error: cannot log in to registry {} with the GCE metadata server: the metadata server 127.0.0.1:1: request failed",
            r.token.host
        )),
        "{err}"
    );
}

/// A service account key as Google documents it: JSON over several lines, a PEM private key
/// with `\n` escapes, and (here) quotes in a value.
fn json_key(id: &str) -> String {
    format!(
        r#"{{
  "type": "service_account",
  "project_id": "dockhand-test",
  "private_key_id": "{id}0123456789abcdef0123456789abcdef",
  "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC{id}line1\nQmFzZTY0IGJvZHkgb2YgYSB0ZXN0IGtleQ{id}line2\n-----END PRIVATE KEY-----\n",
  "client_email": "pusher@dockhand-test.iam.gserviceaccount.com",
  "client_id": "1234567890",
  "note": "a \"quoted\" value"
}}"#
    )
}

#[test]
fn gcp_json_key_and_access_token_usernames_reach_the_token_realm_as_basic_credentials() {
    let r = common::registries();
    let repo = common::unique("gcp-json-key");
    let digest = pushed(&repo, "latest");
    let key = json_key("k1");
    r.token_server.also_accept("_json_key", &key);
    let access = token("ya29.pipeline-access-token");
    r.token_server.also_accept("oauth2accesstoken", &access);
    let encoded = base64::engine::general_purpose::STANDARD.encode(json_key("k3"));
    r.token_server.also_accept("_json_key_base64", &encoded);
    for (user, password) in [
        ("_json_key", &key),
        ("oauth2accesstoken", &access),
        ("_json_key_base64", &encoded),
    ] {
        let source = json!({
            "repository": r.token.repo(&repo),
            "username": user,
            "password": password,
            "debug": true,
        });
        let out = run("check", &[], &json!({"source": source}));
        assert_eq!(
            out.success(),
            json!([{"tag": "latest", "digest": digest}]),
            "{user}"
        );
        assert_no_secret(&out, &[password]);
        assert!(r
            .token_server
            .log()
            .iter()
            .any(|t| t.user.as_deref() == Some(user)
                && t.status == 200
                && t.scopes.iter().any(|s| s.contains(&repo))));
    }

    // A key the realm refuses: the error and the log show no part of it.
    let wrong = json_key("k2");
    let source = json!({
        "repository": r.token.repo(&repo),
        "username": "_json_key",
        "password": wrong,
        "debug": true,
    });
    let out = run("check", &[], &json!({"source": source}));
    let err = out.failure();
    assert!(
        err.contains("unauthorized") && err.contains("\"_json_key\""),
        "{err}"
    );
    assert_no_secret(
        &out,
        &[
            &wrong,
            "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCk2line1",
            "QmFzZTY0IGJvZHkgb2YgYSB0ZXN0IGtleQk2line2",
            "k20123456789abcdef0123456789abcdef",
        ],
    );
}

#[test]
fn the_acr_and_artifact_registry_example_payloads() {
    let r = common::registries();
    let digest = pushed("team/app", "latest");
    let (aad, refresh) = (token("aad-example-token"), token("acr-example-refresh"));
    let imds = MetadataServer::azure(&aad, Some("11111111-2222-3333-4444-555555555555"));
    r.token_server.accept_exchange(&aad, &refresh);
    let acr = acr_front();
    let text = crate::examples::payload("acr/check.json", &acr.host(), None)
        .replace("myregistry.azurecr.io", &acr.host());
    let out = Run::new("check")
        .stdin(text)
        .env_remove(GCE_VARIABLE)
        .env(IMDS_VARIABLE, imds.url())
        .run();
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));

    let access = token("ya29.example-access-token");
    let metadata = MetadataServer::gce(&access);
    r.token_server.also_accept("oauth2accesstoken", &access);
    let digest = pushed("my-project/my-repo/app", "latest");
    let text = crate::examples::payload("gcp-artifact-registry/check.json", &r.token.host, None)
        .replace("europe-docker.pkg.dev", &r.token.host);
    let out = Run::new("check")
        .stdin(text)
        .env_remove(IMDS_VARIABLE)
        .env(GCE_VARIABLE, metadata.host())
        .run();
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
}
