//! Every request payload in examples/ runs here against the local registries: `localhost:5000`
//! becomes a test registry and the all-zero digest the digest of an image pushed for it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::common::{self, env, Image, Run};

const ZERO: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The payload with the placeholders replaced.
pub fn payload(name: &str, host: &str, digest: Option<&str>) -> String {
    let text = std::fs::read_to_string(examples_dir().join(name))
        .unwrap_or_else(|e| panic!("examples/{name}: {e}"));
    let text = text.replace("localhost:5000", host);
    match digest {
        Some(d) => text.replace(ZERO, d),
        None => text,
    }
}

fn run(bin: &'static str, name: &str, host: &str, digest: Option<&str>) -> Value {
    let mut run = Run::new(bin).stdin(payload(name, host, digest));
    if bin == "in" {
        run = run.arg(
            common::scratch_dir(&common::unique("example-in"))
                .join("get")
                .display()
                .to_string(),
        );
    }
    run.run().success()
}

fn tags(versions: &Value) -> Vec<String> {
    versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["tag"].as_str().unwrap().to_string())
        .collect()
}

/// Payloads covered by a test, here or (ECR, which needs moto) in ecr.rs, or (the cloud
/// logins, which need their metadata servers) in cloud.rs.
const COVERED: &[&str] = &[
    "track-tag/check.json",
    "acr/check.json",
    "gcp-artifact-registry/check.json",
    "track-tag/check-with-cursor.json",
    "semver-variant/check.json",
    "build-on-commit/out-main.json",
    "build-on-commit/out-stage.json",
    "ecr/check.json",
    "docker-hub-mirror/check.json",
    "docker-hub-mirror/in.json",
    "rootfs-task-image/in.json",
    "newest-regex-tag/check.json",
];

#[test]
fn every_payload_is_covered() {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(examples_dir()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "json") {
                found.push(format!(
                    "{}/{}",
                    dir.file_name().unwrap().to_string_lossy(),
                    file.file_name().unwrap().to_string_lossy()
                ));
            }
        }
        assert!(
            dir.join("pipeline.yml").is_file(),
            "{} has no pipeline.yml",
            dir.display()
        );
    }
    found.sort();
    let mut covered: Vec<String> = COVERED.iter().map(|s| s.to_string()).collect();
    covered.sort();
    assert_eq!(found, covered, "add a test for every example payload");
}

#[test]
fn track_tag() {
    let reg = &env().plain;
    let digest = reg.push(&Image::marked("example"), "dockhand/example:latest");
    for name in ["track-tag/check.json", "track-tag/check-with-cursor.json"] {
        let out = run("check", name, &reg.host, None);
        assert_eq!(out, json!([{"tag": "latest", "digest": digest}]), "{name}");
    }
}

#[test]
fn semver_variant() {
    let reg = &env().plain;
    for tag in [
        "1.0.0-alpine",
        "1.4.0-alpine",
        "1.5.0-rc.1-alpine",
        "2.0.0-alpine",
        "1.4.0",
        "alpine",
    ] {
        reg.push(&Image::marked(tag), &format!("dockhand/semver:{tag}"));
    }
    let out = run("check", "semver-variant/check.json", &reg.host, None);
    assert_eq!(tags(&out), ["1.0.0-alpine", "1.4.0-alpine"]);
}

#[test]
fn newest_regex_tag() {
    let reg = &env().plain;
    for tag in [
        "main-0a1b2c3-20250102030405",
        "main-ffee001-20241231235959",
        // Matches tag_regex and is the newest: only tag_exclude_regex keeps it out.
        "main-abc1234-20260102030405-debug",
        "feature-1234567-20260101000000",
        "latest",
    ] {
        reg.push(&Image::marked(tag), &format!("dockhand/builds:{tag}"));
    }
    let out = run("check", "newest-regex-tag/check.json", &reg.host, None);
    assert_eq!(
        tags(&out),
        ["main-ffee001-20241231235959", "main-0a1b2c3-20250102030405"]
    );
}

#[test]
fn docker_hub_mirror() {
    let mirror = &env().plain;
    let digest = mirror.push(&Image::busybox(), "library/busybox:latest");
    let out = run("check", "docker-hub-mirror/check.json", &mirror.host, None);
    assert_eq!(out, json!([{"tag": "latest", "digest": digest}]));
    let out = run(
        "in",
        "docker-hub-mirror/in.json",
        &mirror.host,
        Some(&digest),
    );
    assert_eq!(out["version"]["digest"], digest.as_str());
}

#[test]
fn rootfs_task_image() {
    let reg = &env().plain;
    let digest = reg.push(
        &Image::busybox().env_exact(&["PATH=/bin"]).user("0"),
        "dockhand/toolbox:latest",
    );
    let dest = common::scratch_dir(&common::unique("example-rootfs")).join("get");
    Run::new("in")
        .arg(dest.display().to_string())
        .stdin(payload(
            "rootfs-task-image/in.json",
            &reg.host,
            Some(&digest),
        ))
        .run()
        .success();
    assert!(dest.join("rootfs/bin/busybox").is_file());
    let metadata: Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("metadata.json")).unwrap())
            .unwrap();
    assert_eq!(metadata["env"], json!(["PATH=/bin"]));
}

#[test]
fn build_on_commit() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("src")).unwrap();
    std::fs::create_dir_all(src.path().join("tags")).unwrap();
    std::fs::write(
        src.path().join("src/Dockerfile"),
        "FROM dockhand-test/busybox:latest\nARG GIT_BRANCH\nRUN echo \"$GIT_BRANCH\" > /branch\n",
    )
    .unwrap();
    // What the pipeline's tags task writes for each branch, then that branch's put.
    for (branch, sha, alias) in [("main", "abc1234", "latest"), ("stage", "def5678", "stage")] {
        let tag = format!("{branch}-{sha}");
        std::fs::write(src.path().join("tags/tag"), format!("{tag}\n")).unwrap();
        std::fs::write(src.path().join("tags/additional"), format!("{alias}\n")).unwrap();
        let out = Run::new("out")
            .arg(src.path().display().to_string())
            .stdin(payload(
                &format!("build-on-commit/out-{branch}.json"),
                &reg.host,
                None,
            ))
            .run()
            .success();
        assert_eq!(out["version"]["tag"], tag.as_str());
        let digest = out["version"]["digest"].as_str().unwrap();
        for tag in [tag.as_str(), alias] {
            assert_eq!(
                reg.skopeo_digest(&format!("dockhand/app:{tag}")),
                digest,
                "{tag}"
            );
        }
        // The branch build arg reached the build.
        let dest = common::scratch_dir(&common::unique("example-build")).join("get");
        Run::new("in")
            .arg(dest.display().to_string())
            .stdin_json(&json!({
                "source": {"repository": reg.repo("dockhand/app")},
                "version": {"digest": digest},
            }))
            .run()
            .success();
        assert_eq!(
            std::fs::read_to_string(dest.join("rootfs/branch")).unwrap(),
            format!("{branch}\n")
        );
    }
}
