//! Bad input: exit 1, one line naming the field, nothing on stdout, no panic. None of these
//! reach the network.

use serde_json::json;

use crate::common::{env, Run};

fn pem_key() -> String {
    env().client_key_pem.clone()
}

#[test]
fn malformed_requests_name_the_field() {
    let env = env();
    let cert = env.client_cert_pem.clone();
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty stdin", String::new(), "no request on stdin"),
        ("blank stdin", "  \n\t".into(), "no request on stdin"),
        ("not json", "source: {repository: x}".into(), "not valid JSON"),
        ("truncated json", r#"{"source": {"repository": "a""#.into(), "not valid JSON"),
        ("array", "[]".into(), "must be a JSON object"),
        ("missing source", "{}".into(), "source: missing"),
        ("source not an object", r#"{"source": "alpine"}"#.into(), "source: invalid type"),
        ("missing repository", r#"{"source": {}}"#.into(), "source.repository: required"),
        ("repository not a string", r#"{"source": {"repository": 42}}"#.into(), "source.repository: invalid type"),
        ("uppercase repository", r#"{"source": {"repository": "Team/App"}}"#.into(), "source.repository:"),
        ("repository with a tag", r#"{"source": {"repository": "alpine:3.19"}}"#.into(), "source.repository: must not contain a tag"),
        ("repository with a bad host", r#"{"source": {"repository": "bad_host:99999/x"}}"#.into(), "source.repository:"),
        ("tag with a space", r#"{"source": {"repository": "a", "tag": "a b"}}"#.into(), "source.tag:"),
        ("tag an object", r#"{"source": {"repository": "a", "tag": {"x": 1}}}"#.into(), "source.tag: invalid type"),
        ("ca_certs not a list", r#"{"source": {"repository": "a", "ca_certs": "pem"}}"#.into(), "source.ca_certs: invalid type"),
        ("ca_certs bad pem", r#"{"source": {"repository": "a", "ca_certs": [{"domain": "r.io", "cert": "not a pem"}]}}"#.into(), "source.ca_certs[0].cert"),
        ("client cert without key", json!({"source": {"repository": "a", "client_certs": [{"domain": "r.io", "cert": cert}]}}).to_string(), "source.client_certs[0].key"),
        ("client cert without domain", json!({"source": {"repository": "a", "client_certs": [{"cert": cert, "key": pem_key()}]}}).to_string(), "source.client_certs[0].domain"),
        ("client cert with a foreign key", json!({"source": {"repository": "a", "client_certs": [{"domain": "r.io", "cert": env.ca_pem, "key": pem_key()}]}}).to_string(), "source.client_certs[0]"),
        ("insecure registry not a host", r#"{"source": {"repository": "a", "insecure_registries": ["not a host"]}}"#.into(), "source.insecure_registries[0]"),
        ("password without username", r#"{"source": {"repository": "a", "password": "x"}}"#.into(), "source.username"),
        ("negative concurrency", r#"{"source": {"repository": "a", "max_concurrent_downloads": -1}}"#.into(), "source.max_concurrent_downloads"),
        ("debug not a bool", r#"{"source": {"repository": "a", "debug": "yes"}}"#.into(), "source.debug: invalid type"),
        ("additional registry without host", r#"{"source": {"repository": "a", "additional_private_registries": [{"username": "u", "password": "p"}]}}"#.into(), "source.additional_private_registries[0].registry"),
        ("version not an object", r#"{"source": {"repository": "a"}, "version": "v1"}"#.into(), "version: invalid type"),
        // A cursor whose digest is not a digest is not bad input for check: it matches
        // nothing, as in registry-image-resource (peers.rs).
    ];
    assert!(cases.len() >= 15);
    for (name, input, want) in cases {
        let out = Run::new("check").stdin(input.clone()).run();
        let err = out.failure();
        assert!(
            err.contains(want),
            "{name}: {input}\n  got: {err}\n  want: {want}"
        );
        // The field's path comes first, before any explanation.
        assert!(err.len() < 400, "{name}: overly long error: {err}");
    }
}

#[test]
fn a_password_given_as_a_number_is_not_echoed() {
    let out = Run::new("check")
        .stdin(r#"{"source": {"repository": "a", "username": "u", "password": 8675309}}"#)
        .run();
    let err = out.failure();
    assert!(err.contains("source.password"), "{err}");
    assert!(
        !out.all_output().contains("8675309"),
        "{}",
        out.all_output()
    );
}

#[test]
fn key_material_is_never_echoed() {
    let env = env();
    let key = pem_key();
    let body: String = key.lines().nth(1).unwrap().to_string();
    let input = json!({"source": {"repository": "a", "client_certs": [{"domain": "r.io", "cert": env.ca_pem, "key": key}]}});
    let out = Run::new("check").stdin_json(&input).run();
    out.failure();
    assert!(!out.all_output().contains(&body));
}

#[test]
fn in_and_out_need_a_directory() {
    for bin in ["in", "out"] {
        let err = Run::new(bin).stdin("{}").run().failure();
        assert!(err.contains("missing the DIR argument"), "{bin}: {err}");
    }
}

#[test]
fn help_and_version() {
    for bin in ["check", "in", "out"] {
        let out = Run::new(bin).arg("--help").run();
        assert_eq!(out.code, Some(0), "{bin}: {}", out.stderr);
        assert!(out.stdout.contains("stdin"), "{bin}: {}", out.stdout);
        let out = Run::new(bin).arg("--version").run();
        assert_eq!(out.code, Some(0));
        assert!(out.stdout.starts_with(&format!("{bin} ")), "{}", out.stdout);
    }
}

#[test]
fn unknown_arguments_are_one_line_errors() {
    let err = Run::new("check").arg("--frobnicate").run().failure();
    assert!(err.contains("--frobnicate"), "{err}");
}

#[test]
fn one_binary_linked_as_in_and_out_acts_as_its_name() {
    // The image ships `check` once and links it as `in` and `out`.
    let dir = tempfile::tempdir().unwrap();
    for (name, about) in [("in", "Fetch the image version"), ("out", "push it")] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(crate::common::Run::path("check"), &link).unwrap();
        let out = std::process::Command::new(&link)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(about),
            "{name}: {text}"
        );
    }
}
