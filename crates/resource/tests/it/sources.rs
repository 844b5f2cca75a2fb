//! Where `check` and `in` look: a Docker Hub mirror (with its own credentials, falling back to
//! Docker Hub) and `git_repo` (the tag is the sha of a git repository's default branch).

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::common::{self, check, env, Image, Run};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=dockhand",
            "-c",
            "user.email=dockhand@example.invalid",
        ])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A bare repository with one commit on `main`; returns (bare path, work tree, sha).
fn git_repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("origin.git");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        dir.path(),
        &["init", "--quiet", "--bare", bare.to_str().unwrap()],
    );
    git(&work, &["init", "--quiet"]);
    std::fs::write(work.join("README"), "one\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "--quiet", "-m", "one"]);
    git(
        &work,
        &["push", "--quiet", bare.to_str().unwrap(), "HEAD:main"],
    );
    let sha = git(&work, &["rev-parse", "HEAD"]);
    (dir, sha)
}

fn new_commit(dir: &Path) -> String {
    let work = dir.join("work");
    std::fs::write(work.join("README"), "two\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "two"]);
    let bare = dir.join("origin.git");
    git(
        &work,
        &["push", "--quiet", bare.to_str().unwrap(), "HEAD:main"],
    );
    git(&work, &["rev-parse", "HEAD"])
}

#[test]
fn git_repo_tracks_the_default_branch_sha() {
    let reg = &env().plain;
    let repo = common::unique("git");
    let (dir, sha) = git_repo();
    let digest = reg.push(&Image::marked(&sha), &format!("{repo}:{sha}"));
    let bare = dir.path().join("origin.git").display().to_string();
    let source = json!({"repository": reg.repo(&repo), "git_repo": bare});
    let out = check(&json!({"source": source})).success();
    assert_eq!(out, json!([{"tag": sha, "digest": digest}]));

    // A new commit without an image yet: nothing new, or an error with fail_when_missing.
    let newer = new_commit(dir.path());
    let cursor = json!({"tag": sha, "digest": digest});
    let out = check(&json!({"source": source, "version": cursor})).success();
    assert_eq!(out, json!([]));
    let mut strict = source.clone();
    strict["fail_when_missing"] = json!(true);
    let err = check(&json!({"source": strict, "version": cursor})).failure();
    assert!(err.contains(&format!("tag {newer} not found")), "{err}");

    // Once the image is pushed, it is the new version.
    let next = reg.push(&Image::marked(&newer), &format!("{repo}:{newer}"));
    let out = check(&json!({"source": strict, "version": cursor})).success();
    assert_eq!(out, json!([cursor, {"tag": newer, "digest": next}]));
}

#[test]
fn git_repo_errors_name_the_field() {
    let reg = &env().plain;
    let source = json!({
        "repository": reg.repo("git-nothing"),
        "git_repo": "/nonexistent/repo.git",
        "git_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material\n-----END OPENSSH PRIVATE KEY-----",
    });
    let out = Run::new("check")
        .stdin_json(&json!({"source": source}))
        .run();
    let err = out.failure();
    assert!(
        err.starts_with("error: source.git_repo: git ls-remote"),
        "{err}"
    );
    assert!(!out.all_output().contains("secret-key-material"));
}

/// A Docker Hub name, and the same path on a mirror.
fn hub_repo(name: &str) -> (String, String) {
    let path = format!("dockhand-mirror/{}", common::unique(name));
    (path.clone(), path)
}

#[test]
fn mirror_serves_docker_hub_repositories() {
    let mirror = &env().plain;
    let (hub, path) = hub_repo("plain");
    let digest = mirror.push(&Image::marked(&hub), &format!("{path}:1.0"));
    let source = json!({
        "repository": hub,
        "tag": "1.0",
        "registry_mirror": format!("http://{}", mirror.host),
    });
    let out = check(&json!({"source": source})).success();
    assert_eq!(out, json!([{"tag": "1.0", "digest": digest}]));

    let dest = tempfile::tempdir().unwrap();
    let got = Run::new("in")
        .arg(dest.path().display().to_string())
        .stdin_json(&json!({"source": source, "version": {"tag": "1.0", "digest": digest}}))
        .run()
        .success();
    assert_eq!(got["version"]["digest"], digest.as_str());
    assert!(dest.path().join("rootfs").is_dir());
    assert_eq!(
        std::fs::read_to_string(dest.path().join("repository")).unwrap(),
        hub
    );

    // Selection mode goes through the mirror too.
    let out = check(&json!({"source": {
        "repository": hub,
        "semver_constraint": "*",
        "registry_mirror": {"host": mirror.host},
    }}))
    .success();
    assert_eq!(out, json!([{"tag": "1.0", "digest": digest}]));
}

#[test]
fn mirror_with_its_own_credentials() {
    let mirror = &env().basic;
    let (user, password) = mirror.credentials().unwrap();
    let (hub, path) = hub_repo("basic");
    let digest = mirror.push(&Image::marked(&hub), &format!("{path}:latest"));
    let source = json!({
        "repository": hub,
        "registry_mirror": {"host": mirror.host, "username": user, "password": password},
    });
    let out = Run::new("check")
        .stdin_json(&json!({"source": source}))
        .run();
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
    assert!(!out.all_output().contains(password));
}

#[test]
fn mirror_without_the_image_falls_back_to_docker_hub() {
    // Docker Hub cannot be reached from the test machines: the fallback shows as an attempt
    // to reach it after the mirror's miss.
    let mirror = &env().plain;
    let (hub, _) = hub_repo("missing");
    let source = json!({
        "repository": hub,
        "registry_mirror": format!("http://{}", mirror.host),
    });
    let out = Run::new("check")
        .stdin_json(&json!({"source": source}))
        .run();
    let all = out.all_output();
    assert!(
        all.contains(&format!("mirror {} has nothing", mirror.host)),
        "{all}"
    );
    if out.code == Some(0) {
        // A machine that can reach Docker Hub: the answer came from there.
        return;
    }
    assert!(out.failure().contains("registry-1.docker.io"), "{all}");
}

#[test]
fn in_falls_back_to_docker_hub_when_the_mirror_lacks_the_digest_or_is_down() {
    // As in the check test above, the fallback shows as an attempt to reach Docker Hub.
    let mirror = &env().plain;
    let (hub, _) = hub_repo("in-missing");
    let digest = "sha256:".to_string() + &"ab".repeat(32);
    let down = format!("127.0.0.1:{}", common::free_port());
    for (mirror_host, said) in [
        (
            mirror.host.clone(),
            format!("mirror {} does not have", mirror.host),
        ),
        (down.clone(), format!("mirror {down} failed")),
    ] {
        let dest = tempfile::tempdir().unwrap();
        let out = Run::new("in")
            .arg(dest.path().join("get").display().to_string())
            .stdin_json(&json!({
                "source": {"repository": hub, "registry_mirror": format!("http://{mirror_host}")},
                "version": {"digest": digest},
            }))
            .run();
        let all = out.all_output();
        assert!(all.contains(&said), "{all}");
        if out.code != Some(0) {
            assert!(out.failure().contains("registry-1.docker.io"), "{all}");
        }
        assert!(!dest.path().join("get/rootfs").exists());
    }
}

#[test]
fn check_goes_on_to_docker_hub_when_the_mirror_is_down() {
    let down = format!("127.0.0.1:{}", common::free_port());
    let (hub, _) = hub_repo("check-down");
    let out = Run::new("check")
        .stdin_json(
            &json!({"source": {"repository": hub, "registry_mirror": format!("http://{down}")}}),
        )
        .run();
    let all = out.all_output();
    assert!(all.contains(&format!("mirror {down} failed")), "{all}");
    if out.code != Some(0) {
        assert!(out.failure().contains("registry-1.docker.io"), "{all}");
    }
}
