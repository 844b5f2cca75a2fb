//! `out` without a daemon: load, load_file, image, import_file, tags, errors, put-then-get.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::image::{write_index_layout, AMD64, ARM64};
use crate::common::{self, docker, env, Entry, FaultProxy, Image, Run};

/// `out` as Concourse runs it, with no Docker daemon reachable.
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

/// The id the daemon gives an image (its config digest).
fn image_id(name: &str) -> String {
    String::from_utf8(docker(&["image", "inspect", "--format", "{{.Id}}", name]))
        .unwrap()
        .trim()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `in` with `save: true` of a fresh image; returns (its digest, the get directory).
fn saved_image(repo: &str, marker: &str) -> (String, tempfile::TempDir) {
    let reg = &env().plain;
    let digest = reg.push(&Image::marked(marker), &format!("{repo}:latest"));
    let dir = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(repo)}),
        json!({"digest": digest}),
        json!({"save": true}),
        &dir.path().join("got"),
    )
    .success();
    (digest, dir)
}

#[test]
fn load_file_pushes_without_a_daemon_and_keeps_digest_and_image_id() {
    let reg = &env().plain;
    let from = common::unique("put-from");
    let (digest, dir) = saved_image(&from, "load_file");
    let image_id = read(&dir.path().join("got/image-id"));
    let to = common::unique("put-load-file");
    let out = put(
        json!({"repository": reg.repo(&to), "tag": "v1"}),
        json!({"load_file": "got/image"}),
        dir.path(),
    )
    .success();
    assert_eq!(out["version"], json!({"tag": "v1", "digest": digest}));
    assert_eq!(reg.skopeo_digest(&format!("{to}:v1")), digest);
    let metadata = out["metadata"].as_array().unwrap();
    assert!(
        metadata.contains(&json!({"name": "image_id", "value": image_id})),
        "{out}"
    );
}

#[test]
fn load_mounts_blobs_from_the_source_repository() {
    let reg = &env().plain;
    let proxy = FaultProxy::start(&reg.host);
    let from = common::unique("put-mount-from");
    let digest = reg.push(&Image::marked("mount"), &format!("{from}:latest"));
    let dir = tempfile::tempdir().unwrap();
    get(
        json!({"repository": format!("{}/{from}", proxy.host())}),
        json!({"digest": digest}),
        json!({"save": true, "skip_download": false}),
        &dir.path().join("got"),
    )
    .success();
    proxy.clear();
    let to = common::unique("put-mount-to");
    let out = put(
        json!({"repository": format!("{}/{to}", proxy.host())}),
        json!({"load": "got"}),
        dir.path(),
    )
    .success();
    assert_eq!(out["version"]["digest"], json!(digest));
    let seen = proxy.seen();
    let mounts = seen
        .iter()
        .filter(|s| s.method == "POST" && s.target.contains("mount="))
        .count();
    let puts = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains("/blobs/uploads/"))
        .count();
    assert_eq!(
        (mounts, puts),
        (2, 0),
        "config and layer mounted, nothing uploaded"
    );
    assert_eq!(reg.skopeo_digest(&format!("{to}:latest")), digest);
}

#[test]
fn a_docker_save_tarball_with_uncompressed_layers_is_compressed_and_pushed() {
    // docker save of the daemon's base image (Docker 20.10: uncompressed layer.tar).
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("busybox.tar");
    docker(&[
        "save",
        "-o",
        tarball.to_str().unwrap(),
        "dockhand-test/busybox:latest",
    ]);
    let id = image_id("dockhand-test/busybox:latest");
    let to = common::unique("put-docker-save");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"load_file": "busybox.tar"}),
        dir.path(),
    )
    .success();
    let metadata = out["metadata"].as_array().unwrap();
    assert!(
        metadata.contains(&json!({"name": "image_id", "value": id})),
        "{out}"
    );
    let digest = out["version"]["digest"].clone();
    assert_eq!(json!(reg.skopeo_digest(&format!("{to}:latest"))), digest);
    // And it comes back as the same filesystem.
    let back = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&to)}),
        json!({"digest": digest}),
        json!({}),
        back.path(),
    )
    .success();
    assert!(back.path().join("rootfs/bin/busybox").is_file());
}

#[test]
fn an_oci_layout_with_a_multi_arch_index_keeps_the_index_digest() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    let built = write_index_layout(
        &dir.path().join("layout"),
        &[
            Image::marked("amd").platform(AMD64),
            Image::marked("arm").platform(ARM64),
        ],
        "t",
    );
    let to = common::unique("put-index");
    let out = put(
        json!({"repository": reg.repo(&to), "tag": "multi"}),
        json!({"image": "lay*"}),
        dir.path(),
    )
    .success();
    assert_eq!(
        out["version"],
        json!({"tag": "multi", "digest": built.digest})
    );
    assert_eq!(reg.skopeo_digest(&format!("{to}:multi")), built.digest);
    // The arm64 child is there too.
    let back = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&to)}),
        json!({"digest": built.digest}),
        json!({"platform": {"architecture": "arm64"}}),
        back.path(),
    )
    .success();
    assert_eq!(read(&back.path().join("rootfs/marker.txt")), "arm");
}

#[test]
fn tags_from_files_prefix_additional_and_latest() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    Image::marked("tags").write_layout(&dir.path().join("layout"), "t");
    std::fs::write(dir.path().join("tag"), "1.4.2\n").unwrap();
    std::fs::write(dir.path().join("more"), "main-abc1234\n  stage\tfoo\n").unwrap();
    let to = common::unique("put-tags");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"image": "layout", "tag_file": "tag", "tag_prefix": "v", "additional_tags": "more", "tag_as_latest": true}),
        dir.path(),
    )
    .success();
    let digest = out["version"]["digest"].as_str().unwrap().to_string();
    assert_eq!(out["version"]["tag"], json!("v1.4.2"));
    for tag in ["v1.4.2", "main-abc1234", "stage", "foo", "latest"] {
        assert_eq!(reg.skopeo_digest(&format!("{to}:{tag}")), digest, "{tag}");
    }
    let metadata = out["metadata"].as_array().unwrap();
    assert!(
        metadata
            .contains(&json!({"name": "tags", "value": "v1.4.2 main-abc1234 stage foo latest"})),
        "{out}"
    );
}

#[test]
fn version_param_names_the_tag() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    Image::marked("version").write_layout(&dir.path().join("layout"), "t");
    let to = common::unique("put-version");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"image": "layout", "version": "2.0.1"}),
        dir.path(),
    )
    .success();
    assert_eq!(out["version"]["tag"], json!("2.0.1"));
}

#[test]
fn import_file_makes_a_one_layer_image() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    let rootfs = common::image::tar_bytes(&[
        Entry::dir("etc"),
        Entry::file("etc/os-release", "ID=dockhand\n"),
    ]);
    std::fs::write(dir.path().join("rootfs.tar"), rootfs).unwrap();
    let to = common::unique("put-import");
    let out = put(
        json!({"repository": reg.repo(&to)}),
        json!({"import_file": "rootfs.tar"}),
        dir.path(),
    )
    .success();
    let back = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&to)}),
        out["version"].clone(),
        json!({}),
        back.path(),
    )
    .success();
    assert_eq!(
        read(&back.path().join("rootfs/etc/os-release")),
        "ID=dockhand\n"
    );
}

#[test]
fn put_then_get_of_the_returned_version() {
    let reg = &env().token;
    let dir = tempfile::tempdir().unwrap();
    Image::marked("implicit get").write_layout(&dir.path().join("layout"), "t");
    let to = common::unique("put-then-get");
    let source = reg.source(&to, "latest");
    let out = put(source.clone(), json!({"image": "layout"}), dir.path()).success();
    let back = tempfile::tempdir().unwrap();
    get(source, out["version"].clone(), json!({}), back.path()).success();
    assert_eq!(read(&back.path().join("rootfs/marker.txt")), "implicit get");
}

#[test]
fn errors_name_the_param_and_the_path() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    Image::marked("errors").write_layout(&dir.path().join("layout"), "t");
    let source = json!({"repository": reg.repo("it/put-errors")});
    let cases = [
        (
            json!({}),
            "must specify build, load, load_file, import_file, pull_repository or image params",
        ),
        (
            json!({"load_file": "nope.tar"}),
            "nope.tar: params.load_file: no such file",
        ),
        (
            json!({"load": "nodir"}),
            "nodir/image: params.load names a directory without an image file",
        ),
        (
            json!({"import_file": "missing.tar"}),
            "missing.tar: params.import_file: no such file",
        ),
        (
            json!({"image": "layout", "tag_file": "missing-tag"}),
            "missing-tag: params.tag_file:",
        ),
        (
            json!({"image": "layout", "additional_tags": "missing-tags"}),
            "missing-tags: params.additional_tags:",
        ),
        (
            json!({"image": "nothing-*"}),
            "params.image matches nothing",
        ),
        (json!({"image": "*"}), "params.image: \"*\" matches"),
        (
            json!({"image": "layout", "version": "not a tag"}),
            "params.version:",
        ),
        (
            json!({"load_file": "layout/index.json"}),
            "not a tar archive",
        ),
    ];
    for (params, want) in cases {
        std::fs::write(dir.path().join("junk"), "x").unwrap();
        let err = put(source.clone(), params.clone(), dir.path()).failure();
        assert!(err.contains(want), "{params}\n  got: {err}\n  want: {want}");
    }
}

#[test]
fn a_refused_push_is_unauthorized_for_the_repository_without_secrets() {
    for reg in [&env().basic, &env().token] {
        let dir = tempfile::tempdir().unwrap();
        Image::marked("refused").write_layout(&dir.path().join("layout"), "t");
        let to = common::unique("put-refused");
        let source = json!({"repository": reg.repo(&to), "username": common::USER, "password": "Wr0ng-secret!"});
        let out = put(source, json!({"image": "layout"}), dir.path());
        let err = out.failure();
        assert!(err.contains("unauthorized"), "{err}");
        assert!(err.contains(&to), "{err}");
        assert!(!out.all_output().contains("Wr0ng-secret!"));
    }
}

#[test]
fn version_with_bump_aliases_moves_only_the_aliases_it_is_newest_for() {
    let reg = &env().plain;
    let repo = common::unique("put-bump");
    let dir = tempfile::tempdir().unwrap();
    let layout = Image::marked("bump").layout();
    std::fs::rename(layout.path(), dir.path().join("img")).unwrap();
    let push = |version: &str| {
        put(
            json!({"repository": reg.repo(&repo)}),
            json!({"image": "img", "version": version, "bump_aliases": true}),
            dir.path(),
        )
        .success()
    };
    // Different images per version: retag with a fresh layout each time.
    let digest_of = |tag: &str| reg.skopeo_digest(&format!("{repo}:{tag}"));
    let out = push("1.2.3");
    let first = out["version"]["digest"].as_str().unwrap().to_string();
    assert_eq!(out["version"]["tag"], "1.2.3");
    for alias in ["1.2", "1", "latest"] {
        assert_eq!(digest_of(alias), first, "{alias}");
    }
    // A 2.0.0 exists: 1.3.0 moves 1.3 and 1, not latest.
    reg.push(&Image::marked("two"), &format!("{repo}:2.0.0"));
    let other = Image::marked("one-three").layout();
    std::fs::remove_dir_all(dir.path().join("img")).unwrap();
    std::fs::rename(other.path(), dir.path().join("img")).unwrap();
    let out = push("1.3.0");
    let second = out["version"]["digest"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert_eq!(digest_of("1.3"), second);
    assert_eq!(digest_of("1"), second);
    assert_eq!(digest_of("1.2"), first);
    assert_eq!(digest_of("latest"), first);
    let tags = out["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tags")
        .unwrap()["value"]
        .clone();
    assert_eq!(tags, "1.3.0 1.3 1");

    let err = put(
        json!({"repository": reg.repo(&repo)}),
        json!({"image": "img", "bump_aliases": true}),
        dir.path(),
    )
    .failure();
    assert!(
        err.contains("params.bump_aliases: needs params.version"),
        "{err}"
    );
}

#[test]
fn pull_repository_copies_an_image_between_registries() {
    let env = env();
    let from = common::unique("pull-from");
    let digest = env.plain.push_index(
        &[
            Image::marked("pull").platform(AMD64),
            Image::marked("pull").platform(ARM64),
        ],
        &format!("{from}:7"),
    );
    let to = common::unique("pull-to");
    let (user, password) = env.basic.credentials().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = put(
        json!({"repository": env.basic.repo(&to), "username": user, "password": password, "tag": "copied"}),
        json!({"pull_repository": env.plain.repo(&from), "pull_tag": "7"}),
        dir.path(),
    );
    assert!(out.stderr.contains("deprecated"), "{}", out.stderr);
    let out = out.success();
    assert_eq!(out["version"], json!({"tag": "copied", "digest": digest}));
    assert_eq!(env.basic.skopeo_digest(&format!("{to}:copied")), digest);

    let err = put(
        json!({"repository": env.plain.repo(&to)}),
        json!({"pull_repository": env.plain.repo(&from), "pull_tag": "nope"}),
        dir.path(),
    )
    .failure();
    assert!(err.contains("tag nope not found"), "{err}");
}

#[test]
fn load_repository_and_load_tag_pick_the_image_of_a_multi_image_archive() {
    // Two images in one `docker save` archive, as a build step may leave them.
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&rootfs).unwrap());
        let mut header = tar::Header::new_gnu();
        let body = common::unique("second image");
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "marker", body.as_bytes())
            .unwrap();
        tar.finish().unwrap();
    }
    let other = format!("dockhand-test/{}", common::unique("load-named"));
    docker(&["import", rootfs.to_str().unwrap(), &format!("{other}:1")]);
    let other_id = image_id(&format!("{other}:1"));
    let archive = dir.path().join("two.tar");
    docker(&[
        "save",
        "-o",
        archive.to_str().unwrap(),
        "dockhand-test/busybox:latest",
        &format!("{other}:1"),
    ]);
    let _ = docker(&["rmi", &format!("{other}:1")]);

    let to = common::unique("put-load-named");
    for (repository, tag) in [(other.clone(), "1"), (format!("docker.io/{other}"), "1")] {
        let out = put(
            json!({"repository": reg.repo(&to)}),
            json!({"load_file": "two.tar", "load_repository": repository, "load_tag": tag}),
            dir.path(),
        )
        .success();
        assert!(
            out["metadata"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "image_id", "value": other_id})),
            "{out}"
        );
    }
    let err = put(
        json!({"repository": reg.repo(&to)}),
        json!({"load_file": "two.tar", "load_repository": other, "load_tag": "2"}),
        dir.path(),
    )
    .failure();
    assert!(
        err.contains(&format!("holds no image named {other}:2")),
        "{err}"
    );
    assert!(err.contains("dockhand-test/busybox:latest"), "{err}");
}

/// A rootfs of a few MiB (several compression blocks) that compresses, as a tarball.
fn multi_block_rootfs() -> Vec<u8> {
    let text: Vec<u8> = (0..3_000_000u32)
        .map(|i| b"dockhand layer text "[(i % 20) as usize] ^ ((i / 4096 % 7) as u8))
        .collect();
    common::image::tar_bytes(&[
        Entry::dir("data"),
        Entry::file("data/blob.txt", text),
        Entry::file("data/marker.txt", "compressed"),
    ])
}

/// The layer descriptor of the single-platform manifest `reference` (skopeo reads it).
fn only_layer(reg: &common::Registry, reference: &str) -> Value {
    let manifest: Value = serde_json::from_slice(&reg.skopeo_raw(reference)).unwrap();
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(1),
        "{manifest}"
    );
    manifest["layers"][0].clone()
}

#[test]
fn layers_out_compresses_are_one_valid_gzip_with_a_digest_that_does_not_change() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rootfs.tar"), multi_block_rootfs()).unwrap();
    let to = common::unique("put-gzip");
    let source = json!({"repository": reg.repo(&to)});
    // Two pushes, the second with one thread: the same layer bytes.
    let mut digests = Vec::new();
    for (tag, threads) in [("first", "2"), ("second", "1")] {
        let out = Run::new("out")
            .arg(dir.path().display().to_string())
            .stdin_json(&json!({"source": source, "params": {"import_file": "rootfs.tar", "tag_file": tag}}))
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .env("DOCKHAND_THREADS", threads);
        std::fs::write(dir.path().join(tag), tag).unwrap();
        out.run().success();
        let layer = only_layer(reg, &format!("{to}:{tag}"));
        assert_eq!(
            layer["mediaType"],
            json!("application/vnd.docker.image.rootfs.diff.tar.gzip")
        );
        digests.push(layer["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(
        digests[0], digests[1],
        "the layer digest changed between pushes"
    );
    // gzip itself reads the stored blob as one member, back to the tarball.
    let blob = reg.blob_path(&digests[0]);
    let gunzip = std::process::Command::new("gzip")
        .args(["-dc", &blob.display().to_string()])
        .output()
        .unwrap();
    assert!(gunzip.status.success(), "{gunzip:?}");
    assert_eq!(gunzip.stdout, multi_block_rootfs());
}

#[test]
fn compression_zstd_pushes_an_oci_image_that_reads_back() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rootfs.tar"), multi_block_rootfs()).unwrap();
    let to = common::unique("put-zstd");
    let source = json!({"repository": reg.repo(&to)});
    let out = put(
        source.clone(),
        json!({"import_file": "rootfs.tar", "compression": "zstd", "compression_level": 9}),
        dir.path(),
    )
    .success();
    let manifest: Value = serde_json::from_slice(&reg.skopeo_raw(&format!("{to}:latest"))).unwrap();
    assert_eq!(
        manifest["mediaType"],
        json!("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        json!("application/vnd.oci.image.layer.v1.tar+zstd")
    );
    let zstd_magic = [0x28, 0xb5, 0x2f, 0xfd];
    let blob =
        std::fs::read(reg.blob_path(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(blob[..4], zstd_magic);
    let back = tempfile::tempdir().unwrap();
    get(source, out["version"].clone(), json!({}), back.path()).success();
    assert_eq!(
        read(&back.path().join("rootfs/data/marker.txt")),
        "compressed"
    );
}

#[test]
fn compression_params_out_of_range_are_field_errors() {
    let reg = &env().plain;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rootfs.tar"), multi_block_rootfs()).unwrap();
    let source = json!({"repository": reg.repo("it/put-compression-errors")});
    for (params, want) in [
        (
            json!({"compression": "brotli"}),
            r#"params.compression: "brotli" is not a compression: use gzip or zstd"#,
        ),
        (
            json!({"compression_level": 0}),
            "params.compression_level: 0 is not a gzip level: use 1 to 9",
        ),
        (
            json!({"compression": "zstd", "compression_level": 42}),
            "params.compression_level: 42 is not a zstd level: use 1 to 19",
        ),
    ] {
        let mut params = params;
        params["import_file"] = json!("rootfs.tar");
        let err = put(source.clone(), params, dir.path()).failure();
        assert!(err.contains(want), "got: {err}\nwant: {want}");
    }
    assert!(!reg.exists("it/put-compression-errors:latest"));
}
