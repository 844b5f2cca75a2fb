//! `out` with `params.build`, through the Docker daemon ci/test.sh runs (DOCKER_HOST), and
//! the daemon start-up rules.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{self, docker, env, Fault, FaultProxy, Image, Run};

/// `out SRC` with the request on stdin, ready for more `env`.
fn out_run(source: Value, params: Value, src: &Path) -> Run {
    Run::new("out")
        .arg(src.display().to_string())
        .stdin_json(&json!({"source": source, "params": params}))
        .env("BUILD_ID", "4242")
}

fn put(source: Value, params: Value, src: &Path) -> common::Outcome {
    out_run(source, params, src).run()
}

/// A DOCKER_HOST where no daemon answers.
const NO_DAEMON: &str = "unix:///nonexistent/docker.sock";

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A shell script standing in for a program (`dockerd`, `docker`) in `dir`.
fn fake_program(dir: &Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// PATH with `dir` first.
fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap())
}

const DOCKERFILE: &str = "\
FROM dockhand-test/busybox:latest AS base
ARG GREETING
ARG FROM_FILE
RUN echo \"$GREETING\" > /greeting && echo \"$FROM_FILE\" > /from-file
FROM base AS final
RUN echo final > /final
FROM base AS broken
RUN false
";

#[test]
fn build_with_args_labels_target_and_tags() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", DOCKERFILE);
    write(
        src.path(),
        "args.json",
        r#"{"FROM_FILE": "from the file", "GREETING": "overridden"}"#,
    );
    write(
        src.path(),
        "labels.json",
        r#"{"org.example.from-file": "yes"}"#,
    );
    write(src.path(), "version/tag", "1.2.3\n");
    write(src.path(), "version/more", "main-abc1234 stage\n");
    let to = common::unique("build");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({
            "build": "repo",
            "target_name": "final",
            "build_args": {"GREETING": "hello ${BUILD_ID}"},
            "build_args_file": "args.json",
            "labels": {"org.example.label": "x"},
            "labels_file": "labels.json",
            "tag_file": "version/tag",
            "tag_prefix": "v",
            "additional_tags": "version/more",
            "tag_as_latest": true,
        }),
        src.path(),
    );
    let result = out.success();
    let digest = result["version"]["digest"].as_str().unwrap().to_string();
    assert_eq!(result["version"]["tag"], json!("v1.2.3"));
    for tag in ["v1.2.3", "main-abc1234", "stage", "latest"] {
        assert_eq!(reg.skopeo_digest(&format!("{to}:{tag}")), digest, "{tag}");
    }
    // Build output went to stderr, line by line.
    assert!(out.stderr.contains("RUN echo final"), "{}", out.stderr);

    // The pushed image runs and shows the build args; the labels are in its config.
    let reference = format!("{}@{digest}", reg.repo(&to));
    docker(&["pull", "-q", &reference]);
    let ran = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &reference,
        "cat",
        "/greeting",
        "/from-file",
        "/final",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&ran),
        "hello 4242\nfrom the file\nfinal\n"
    );
    let labels = String::from_utf8(docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &reference,
    ]))
    .unwrap();
    assert!(labels.contains("\"org.example.label\":\"x\""), "{labels}");
    assert!(
        labels.contains("\"org.example.from-file\":\"yes\""),
        "{labels}"
    );
}

#[test]
fn load_base_and_cache_from_directories_written_by_in_are_loaded() {
    let reg = &env().plain;
    let base_repo = common::unique("build-base");
    let digest = reg.push(
        &Image::busybox().layer(vec![common::Entry::file("base-marker", "from load_base")]),
        &format!("{base_repo}:1"),
    );
    let src = tempfile::tempdir().unwrap();
    let got = Run::new("in")
        .arg(src.path().join("base").display().to_string())
        .stdin_json(&json!({"source": {"repository": reg.repo(&base_repo), "tag": "1"}, "version": {"tag": "1", "digest": digest}, "params": {"save": true}}))
        .run();
    got.success();
    // Gone from the registry and from the daemon: only load_base can provide it now.
    reg.delete(&base_repo, &digest);
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &format!("{}:1", reg.repo(&base_repo))])
        .output();
    write(
        src.path(),
        "ctx/Dockerfile",
        &format!(
            "FROM {}:1\nRUN cat /base-marker > /copied\n",
            reg.repo(&base_repo)
        ),
    );
    let to = common::unique("build-on-base");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"build": "ctx", "load_base": "base", "cache_from": ["base"]}),
        src.path(),
    );
    let result = out.success();
    // The base is gone from the registry, so its layers are compressed again.
    assert!(
        out.stderr.contains("so its layers are compressed again"),
        "{}",
        out.stderr
    );
    let reference = format!(
        "{}@{}",
        reg.repo(&to),
        result["version"]["digest"].as_str().unwrap()
    );
    assert_eq!(copied_file(&reference), "from load_base");
}

/// `/copied` of the image `reference` names, pulled by the daemon and run.
fn copied_file(reference: &str) -> String {
    docker(&["pull", "-q", reference]);
    let ran = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        reference,
        "cat",
        "/copied",
    ]);
    String::from_utf8_lossy(&ran).into_owned()
}

/// The layer digests of the manifest `reference` names on `reg`.
fn layer_digests(reg: &common::Registry, reference: &str) -> Vec<String> {
    let manifest: Value = serde_json::from_slice(&reg.skopeo_raw(reference)).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_build_refers_to_its_base_images_layers_instead_of_compressing_them_again() {
    let reg = &env().plain;
    let base_repo = common::unique("build-reuse-base");
    let base = Image::busybox().layer(vec![common::Entry::file("base-marker", "base layer")]);
    let base_digest = reg.push(&base, &format!("{base_repo}:1"));
    let base_layers = layer_digests(reg, &format!("{base_repo}@{base_digest}"));
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "ctx/Dockerfile",
        "ARG BASE\nFROM $BASE AS first\nFROM first\nRUN cat /base-marker > /copied\n",
    );
    let base_ref = format!("{}:1", reg.repo(&base_repo));
    let check = |to_reg: &common::Registry, to: &str, how: &str| {
        let out = put(
            to_reg.source(to, "latest"),
            json!({"build": "ctx", "build_args": {"BASE": base_ref}}),
            src.path(),
        );
        let digest = out.success()["version"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let layers = layer_digests(to_reg, &format!("{to}@{digest}"));
        assert_eq!(layers.len(), base_layers.len() + 1, "{layers:?}");
        assert_eq!(layers[..base_layers.len()], base_layers[..]);
        assert!(
            out.stderr.contains(how),
            "expected {how:?} in:\n{}",
            out.stderr
        );
        assert!(!out.stderr.contains("compressed again"), "{}", out.stderr);
        // The pushed image runs. (The daemon has no credentials for the basic registry,
        // which checked the copied blobs' digests when they were put.)
        if to_reg.credentials().is_none() {
            let reference = format!("{}@{digest}", to_reg.repo(to));
            assert_eq!(copied_file(&reference), "base layer");
        }
    };
    // On the same registry the base's blobs are mounted; on another they are copied.
    check(reg, &common::unique("build-reuse-mounted"), "mounted from");
    check(
        &env().basic,
        &common::unique("build-reuse-copied"),
        "copied from",
    );

    // A registry that refuses the mount (as one may without pull access to the base's
    // repository in the push token): the blobs are copied within it instead.
    let proxy = FaultProxy::start(&reg.host);
    proxy.add("mount=", Some("POST"), 100, Fault::status(401));
    let to = common::unique("build-reuse-refused");
    let out = put(
        json!({"repository": proxy.repo(&to)}),
        json!({"build": "ctx", "build_args": {"BASE": proxy.repo(&format!("{base_repo}:1"))}}),
        src.path(),
    );
    let digest = out.success()["version"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(out.stderr.contains("copied from"), "{}", out.stderr);
    let layers = layer_digests(reg, &format!("{to}@{digest}"));
    assert_eq!(layers[..base_layers.len()], base_layers[..]);
    let mounts = (proxy.seen().iter())
        .filter(|s| s.method == "POST" && s.target.contains("mount="))
        .count();
    assert!(mounts > 0, "the mount was asked for");
}

#[test]
fn a_failing_build_step_fails_the_put_with_its_message() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", DOCKERFILE);
    let err = put(
        json!({"repository": reg.repo("it/build-broken")}),
        json!({"build": "repo", "target_name": "broken"}),
        src.path(),
    )
    .failure();
    assert!(err.contains("docker build failed"), "{err}");
    assert!(err.contains("returned a non-zero code"), "{err}");
}

#[test]
fn build_errors_name_the_path() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", DOCKERFILE);
    write(src.path(), "bad.json", "{not json");
    let source = json!({"repository": reg.repo("it/build-errors")});
    let cases = [
        (
            json!({"build": "nope"}),
            "nope: params.build: no such directory",
        ),
        (
            json!({"build": "repo", "dockerfile": "repo/Missing"}),
            "repo/Missing: params.dockerfile: no such file",
        ),
        (
            json!({"build": "repo", "build_args_file": "bad.json"}),
            "bad.json: Failed to parse build_args_file",
        ),
        (
            json!({"build": "repo", "tag_file": "no-tag"}),
            "no-tag: params.tag_file",
        ),
    ];
    for (params, want) in cases {
        let err = put(source.clone(), params.clone(), src.path()).failure();
        assert!(err.contains(want), "{params}\n  got: {err}\n  want: {want}");
    }
}

#[test]
fn a_daemon_that_never_comes_up_gives_the_startup_timeout_message() {
    // No daemon at DOCKER_HOST, and a dockerd that never answers on its socket.
    let bin = tempfile::tempdir().unwrap();
    fake_program(bin.path(), "dockerd", "exec sleep 60\n");
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", DOCKERFILE);
    let path = path_with(bin.path());
    let started = std::time::Instant::now();
    let err = out_run(
        json!({"repository": "127.0.0.1:1/x", "startup_timeout": 3}),
        json!({"build": "repo"}),
        src.path(),
    )
    .env("DOCKER_HOST", NO_DAEMON)
    .env("PATH", path)
    .run()
    .failure();
    assert!(
        err.contains("Docker failed to start within 3 seconds"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn a_daemon_that_dies_during_start_up_is_started_once_more_then_reported() {
    let bin = tempfile::tempdir().unwrap();
    let count = bin.path().join("starts");
    fake_program(
        bin.path(),
        "dockerd",
        &format!(
            "echo start >> {}\necho 'failed to start daemon: boom' >&2\nexit 1\n",
            count.display()
        ),
    );
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", DOCKERFILE);
    let path = path_with(bin.path());
    let err = out_run(
        json!({"repository": "127.0.0.1:1/x", "startup_timeout": 30}),
        json!({"build": "repo"}),
        src.path(),
    )
    .env("DOCKER_HOST", NO_DAEMON)
    .env("PATH", path)
    .run()
    .failure();
    assert!(err.contains("dockerd exited"), "{err}");
    assert!(err.contains("boom"), "{err}");
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);
}

#[test]
fn dockerignore_keeps_files_out_of_the_context() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "ctx/Dockerfile",
        "FROM dockhand-test/busybox:latest\nCOPY . /ctx/\n",
    );
    write(
        src.path(),
        "ctx/.dockerignore",
        "secret.txt\nlogs\n!logs/keep.log\n**/*.tmp\n",
    );
    write(src.path(), "ctx/app.txt", "app\n");
    write(src.path(), "ctx/secret.txt", "do not send\n");
    write(src.path(), "ctx/logs/keep.log", "kept\n");
    write(src.path(), "ctx/logs/other.log", "left out\n");
    write(src.path(), "ctx/deep/x.tmp", "left out\n");
    let to = common::unique("build-ignore");
    let result = put(
        json!({"repository": reg.repo(&to)}),
        json!({"build": "ctx"}),
        src.path(),
    )
    .success();
    let digest = result["version"]["digest"].as_str().unwrap().to_string();
    let dest = tempfile::tempdir().unwrap();
    Run::new("in")
        .arg(dest.path().display().to_string())
        .stdin_json(
            &json!({"source": {"repository": reg.repo(&to)}, "version": {"digest": digest}}),
        )
        .run()
        .success();
    let ctx = dest.path().join("rootfs/ctx");
    assert!(ctx.join("app.txt").is_file());
    assert!(ctx.join("logs/keep.log").is_file());
    for gone in ["secret.txt", "logs/other.log", "deep/x.tmp"] {
        assert!(!ctx.join(gone).exists(), "{gone} was sent");
    }
}

/// A PATH whose `docker` is Debian's docker.io CLI (20.10, BuildKit built in), as in the
/// resource image; the machine's own `docker` may be a newer CLI without the buildx plugin.
fn buildkit_path(dir: &Path) -> String {
    let cli = Path::new("/usr/bin/docker");
    assert!(cli.exists(), "ci/test.sh installs docker.io");
    std::os::unix::fs::symlink(cli, dir.join("docker")).unwrap();
    path_with(dir)
}

const BUILDKIT_DOCKERFILE: &str = "\
FROM dockhand-test/busybox:latest AS base
ARG GREETING
RUN --mount=type=secret,id=token --mount=type=secret,id=from_env \
    cat /run/secrets/token > /token-seen && cat /run/secrets/from_env > /env-seen \
    && echo \"$GREETING\" > /greeting
FROM base AS final
RUN ls /run/secrets 2>/dev/null | wc -l > /secrets-left
# Output that is not text, and more of it than a pipe holds: it must not stall the build.
RUN head -c 300000 /dev/urandom
FROM base AS broken
RUN echo about to fail && exit 3
";

#[test]
fn buildkit_build_with_secrets_args_labels_and_target() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", BUILDKIT_DOCKERFILE);
    // A comma in the path: the CLI reads --secret as CSV.
    write(src.path(), "secrets/to,ken", "file-secret-31337");
    let to = common::unique("buildkit");
    let out = out_run(
        json!({"repository": reg.repo(&to)}),
        json!({
            "build": "repo",
            "docker_buildkit": 1,
            "target_name": "final",
            "secrets": {
                "token": {"source": "secrets/to,ken"},
                "from_env": {"env": "DOCKHAND_TEST_SECRET"},
            },
            "build_args": {"GREETING": "hello ${BUILD_ID} from buildkit"},
            "labels": {"org.example.builder": "buildkit"},
            "tag_as_latest": true,
        }),
        src.path(),
    )
    .env("DOCKHAND_TEST_SECRET", "env-secret-27182")
    .env("PATH", buildkit_path(bin.path()))
    .run();
    let result = out.success();
    // BuildKit's plain progress went to stderr; no secret value appears anywhere.
    assert!(
        out.stderr.contains("RUN --mount=type=secret"),
        "{}",
        out.stderr
    );
    for secret in ["file-secret-31337", "env-secret-27182"] {
        assert!(!out.all_output().contains(secret), "{secret} was printed");
    }
    let digest = result["version"]["digest"].as_str().unwrap().to_string();
    assert_eq!(reg.skopeo_digest(&format!("{to}:latest")), digest);

    // What the build saw, read back daemonless with `in`.
    let dest = tempfile::tempdir().unwrap();
    Run::new("in")
        .arg(dest.path().display().to_string())
        .stdin_json(
            &json!({"source": {"repository": reg.repo(&to)}, "version": {"digest": digest}}),
        )
        .run()
        .success();
    let read = |name: &str| std::fs::read_to_string(dest.path().join("rootfs").join(name)).unwrap();
    assert_eq!(read("token-seen"), "file-secret-31337");
    assert_eq!(read("env-seen"), "env-secret-27182");
    assert_eq!(read("greeting"), "hello 4242 from buildkit\n");
    // The secrets were mounted for one RUN only: none is left in the image.
    assert_eq!(read("secrets-left").trim(), "0");
    let labels = std::fs::read_to_string(dest.path().join("labels.json")).unwrap();
    assert!(
        labels.contains("\"org.example.builder\":\"buildkit\""),
        "{labels}"
    );
}

#[test]
fn secrets_alone_turn_buildkit_on_and_a_failing_step_gives_its_error() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", BUILDKIT_DOCKERFILE);
    write(src.path(), "token", "t");
    let err = out_run(
        json!({"repository": reg.repo("it/buildkit-broken")}),
        json!({"build": "repo", "target_name": "broken", "secrets": {"token": {"source": "token"}, "from_env": {"env": "HOME"}}}),
        src.path(),
    )
    .env("PATH", buildkit_path(bin.path()))
    .run()
    .failure();
    assert!(err.contains("docker build failed"), "{err}");
    assert!(err.contains("exit code: 3"), "{err}");
}

#[test]
fn a_docker_cli_without_buildkit_is_named_as_the_problem() {
    let reg = &env().plain;
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", DOCKERFILE);
    // What docker 23+ prints when BuildKit is asked for and the buildx plugin is missing.
    let bin = tempfile::tempdir().unwrap();
    fake_program(
        bin.path(),
        "docker",
        "echo 'ERROR: BuildKit is enabled but the buildx component is missing or broken.' >&2\nexit 1\n",
    );
    let path = path_with(bin.path());
    let err = out_run(
        json!({"repository": reg.repo("it/no-buildx")}),
        json!({"build": "repo", "docker_buildkit": true}),
        src.path(),
    )
    .env("PATH", path)
    .run()
    .failure();
    assert!(
        err.contains("BuildKit needs a docker CLI that can drive it"),
        "{err}"
    );
}

#[test]
fn build_params_are_checked_before_a_daemon_is_started() {
    // No daemon answers, and a dockerd that records being started: none of these may start it.
    let bin = tempfile::tempdir().unwrap();
    let starts = bin.path().join("starts");
    fake_program(
        bin.path(),
        "dockerd",
        &format!("echo start >> {}\nexec sleep 60\n", starts.display()),
    );
    let path = path_with(bin.path());
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "repo/Dockerfile", DOCKERFILE);
    write(src.path(), "token", "t");
    write(src.path(), "half-saved/image", "");
    let cases = [
        (
            json!({"build": "nope"}),
            "nope: params.build: no such directory",
        ),
        (
            json!({"build": "repo", "secrets": {"token": {"source": "missing"}}}),
            "missing: params.secrets.token.source: no such file",
        ),
        (
            json!({"build": "repo", "secrets": {"token": {"env": "DOCKHAND_UNSET_VARIABLE"}}}),
            "params.secrets.token.env: environment variable DOCKHAND_UNSET_VARIABLE is not set",
        ),
        (
            json!({"build": "repo", "secrets": {"token": {"file": "token"}}}),
            "params.secrets.token: unknown key \"file\"",
        ),
        (
            json!({"build": "repo", "secrets": {"token": {"env": "HOME", "source": "token"}}}),
            "params.secrets.token: needs exactly one of \"env\" or \"source\"",
        ),
        (
            json!({"build": "repo", "secrets": ["token"]}),
            "params.secrets: must be an object",
        ),
        (
            json!({"build": "repo", "docker_buildkit": 0, "secrets": {"token": {"source": "token"}}}),
            "params.secrets: needs BuildKit",
        ),
        (
            json!({"build": "repo", "docker_buildkit": "yes"}),
            "params.docker_buildkit: must be 1 or 0",
        ),
        (
            json!({"build": "repo", "load_base": "no-base"}),
            "no-base/image: params.load_base: no image file here",
        ),
        (
            json!({"build": "repo", "cache_from": ["half-saved"]}),
            "half-saved/image-id: params.cache_from:",
        ),
    ];
    for (params, want) in cases {
        let err = out_run(
            json!({"repository": "127.0.0.1:1/x", "startup_timeout": 2}),
            params.clone(),
            src.path(),
        )
        .env("DOCKER_HOST", NO_DAEMON)
        .env("PATH", path.clone())
        .run()
        .failure();
        assert!(err.contains(want), "{params}\n  got: {err}\n  want: {want}");
    }
    assert!(
        !starts.exists(),
        "a daemon was started for a request that cannot build"
    );
}
