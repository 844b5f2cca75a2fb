//! `out` with hostile inputs in SRC: an image whose manifest names files outside it (`..`,
//! absolute paths, symlinks), and a tag file far too large. Each is refused with one short
//! error line before anything outside SRC reaches the registry.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::common::image::sha256;
use crate::common::{self, env, Image};

/// `out` as Concourse runs it, with no Docker daemon reachable.
fn put(source: Value, params: Value, src: &Path) -> common::Outcome {
    common::Run::new("out")
        .arg(src.display().to_string())
        .stdin_json(&json!({"source": source, "params": params}))
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .run()
}

/// A scratch directory holding `src/` (the put's inputs) and, beside it, `secret`: a file
/// with content no other test has, which must never be pushed.
struct Scene {
    dir: tempfile::TempDir,
    secret: Vec<u8>,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let secret = common::unique("secret outside SRC").into_bytes();
        std::fs::write(dir.path().join("secret"), &secret).unwrap();
        Scene { dir, secret }
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn secret_path(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    /// `src/image`, a `docker save` directory whose manifest.json names `config` and
    /// `layers` as given; `config.json` and `layer.tar` are real files in it.
    fn docker_save(&self, config: &str, layers: &[&str]) {
        let image = self.src().join("image");
        std::fs::create_dir(&image).unwrap();
        std::fs::write(
            image.join("config.json"),
            r#"{"architecture":"amd64","os":"linux"}"#,
        )
        .unwrap();
        std::fs::write(image.join("layer.tar"), vec![0u8; 1024]).unwrap();
        let manifest = json!([{"Config": config, "RepoTags": null, "Layers": layers}]);
        std::fs::write(image.join("manifest.json"), manifest.to_string()).unwrap();
    }

    /// Runs `out` of `src/image`, expects it to fail with `want` in one short last line, and
    /// checks that neither the tag nor the secret reached the registry.
    fn refused(&self, name: &str, want: &str) {
        let reg = &env().plain;
        let to = common::unique(name);
        let out = put(
            json!({"repository": reg.repo(&to), "tag": "hostile"}),
            json!({"image": "image"}),
            &self.src(),
        );
        let err = out.failure();
        assert!(err.contains(want), "got: {err}\nwant: {want}");
        assert!(err.len() < 400, "{err}");
        assert!(
            !out.all_output()
                .contains(&*String::from_utf8_lossy(&self.secret)),
            "{}",
            out.all_output()
        );
        assert!(!reg.exists(&format!("{to}:hostile")), "{to}:hostile pushed");
        let blob = reg.blob_path(&sha256(&self.secret));
        assert!(!blob.exists(), "the secret was pushed: {}", blob.display());
    }
}

#[test]
fn a_config_named_with_dot_dot_is_refused_and_not_pushed() {
    let scene = Scene::new();
    scene.docker_save("../../secret", &["layer.tar"]);
    scene.refused(
        "put-hostile-config",
        r#"/image: member "../../secret" has a .. component, outside the image"#,
    );
}

#[test]
fn a_layer_named_with_dot_dot_is_refused() {
    let scene = Scene::new();
    scene.docker_save(
        "config.json",
        &["layer.tar", "../../../../../../../../../etc/passwd"],
    );
    scene.refused("put-hostile-layer", "has a .. component, outside the image");
    let scene = Scene::new();
    scene.docker_save("config.json", &["../../secret"]);
    scene.refused(
        "put-hostile-layer",
        r#"member "../../secret" has a .. component"#,
    );
}

#[test]
fn an_absolute_member_name_is_refused_and_not_pushed() {
    let scene = Scene::new();
    let absolute = scene.secret_path().display().to_string();
    scene.docker_save(&absolute, &["layer.tar"]);
    scene.refused(
        "put-hostile-absolute",
        "is an absolute path, outside the image",
    );
}

#[test]
fn a_symlink_out_of_a_docker_save_directory_is_refused() {
    let scene = Scene::new();
    scene.docker_save("up/secret", &["layer.tar"]);
    std::os::unix::fs::symlink("../..", scene.src().join("image/up")).unwrap();
    scene.refused(
        "put-hostile-symlink-dir",
        r#"member "up/secret" leads through a symlink, outside the image"#,
    );
}

#[test]
fn a_blob_symlinked_out_of_an_oci_layout_is_refused_and_not_pushed() {
    // A well-formed layout whose one layer is the secret, by symlink: digest and size match,
    // so only where the blob lives gives it away.
    let scene = Scene::new();
    let layout = scene.src().join("image");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
        json!({"digest": digest, "size": bytes.len()})
    };
    let layer_digest = sha256(&scene.secret);
    std::os::unix::fs::symlink(
        scene.secret_path(),
        blobs.join(layer_digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let config = blob(
        json!({"architecture": "amd64", "os": "linux",
               "rootfs": {"type": "layers", "diff_ids": [layer_digest]}})
        .to_string()
        .as_bytes(),
    );
    let mut config_desc = config;
    config_desc["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": scene.secret.len()}],
    })
    .to_string();
    let mut manifest_desc = blob(manifest.as_bytes());
    manifest_desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    std::fs::write(
        layout.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [manifest_desc]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    scene.refused(
        "put-hostile-oci-symlink",
        &format!(
            r#"member "blobs/sha256/{}" leads through a symlink, outside the image"#,
            layer_digest.trim_start_matches("sha256:")
        ),
    );
}

#[test]
fn a_20_mb_tag_file_is_one_short_error_and_nothing_is_pushed() {
    let reg = &env().plain;
    let scene = Scene::new();
    Image::marked("hostile tag").write_layout(&scene.src().join("image"), "t");
    std::fs::write(scene.src().join("tag"), "v".repeat(20 << 20)).unwrap();
    let to = common::unique("put-hostile-tag-file");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"image": "image", "tag_file": "tag"}),
        &scene.src(),
    );
    let err = out.failure();
    assert!(
        err.ends_with("/tag: params.tag_file: larger than the 64 KiB limit"),
        "{err}"
    );
    assert!(out.stderr.len() < 2000, "{}", out.stderr.len());
    assert!(!reg.exists(&format!("{to}:latest")));
    // Under the limit but no tag: quoted short, escapes and all.
    std::fs::write(scene.src().join("tag"), "\u{1b}[2J".repeat(10_000)).unwrap();
    let err = put(
        json!({"repository": reg.repo(&to)}),
        json!({"image": "image", "tag_file": "tag"}),
        &scene.src(),
    )
    .failure();
    assert!(
        err.contains(r#"params.tag_file: "\u{1b}[2J"#) && !err.contains('\u{1b}'),
        "{err}"
    );
    assert!(err.len() < 300, "{err}");
}
