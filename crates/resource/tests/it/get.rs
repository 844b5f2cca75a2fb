//! `in` against real registries: outputs, equality with `docker export`, `docker load` of
//! the archives, hostile layers, corruption, platforms and faults.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};
use sha2::Digest as _;

use crate::common::image::{sha256, write_index_layout, AMD64, ARM64};
use crate::common::{self, docker, env, Entry, Fault, FaultProxy, Image, Run};

fn get(source: Value, version: Value, params: Value, dest: &Path) -> common::Outcome {
    Run::new("in")
        .arg(dest.display().to_string())
        .stdin_json(&json!({"source": source, "version": version, "params": params}))
        .run()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn writes_rootfs_metadata_and_version_files() {
    let reg = &env().plain;
    let repo = common::unique("get-basic");
    let image = Image::new()
        .layer(vec![
            Entry::dir("etc"),
            Entry::file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            ),
            Entry::file("hello.txt", "hello"),
        ])
        .env("GREETING=hi");
    let layout = tempfile::tempdir().unwrap();
    let built = image.write_layout(layout.path(), "t");
    reg.push_layout(layout.path(), "t", &format!("{repo}:v1"));
    let dest = tempfile::tempdir().unwrap();
    let out = get(
        json!({"repository": reg.repo(&repo), "tag": "v1"}),
        json!({"tag": "v1", "digest": built.digest}),
        json!({}),
        dest.path(),
    )
    .success();
    assert_eq!(out["version"], json!({"tag": "v1", "digest": built.digest}));
    let d = dest.path();
    assert_eq!(read(&d.join("repository")), reg.repo(&repo));
    assert_eq!(read(&d.join("tag")), "v1");
    assert_eq!(read(&d.join("digest")), built.digest);
    assert_eq!(
        read(&d.join("image-id")),
        built.config_digest.clone().unwrap()
    );
    assert_eq!(read(&d.join("rootfs/hello.txt")), "hello");
    let meta: Value = serde_json::from_str(&read(&d.join("metadata.json"))).unwrap();
    assert!(
        meta["env"]
            .as_array()
            .unwrap()
            .contains(&json!("GREETING=hi")),
        "{meta}"
    );
    assert_eq!(meta["cmd"], json!(["/bin/sh"]));
    assert_eq!(read(&d.join("labels.json")), "{}");
    let inspect: Value = serde_json::from_str(&read(&d.join("docker_inspect.json"))).unwrap();
    assert_eq!(inspect[0]["Id"], json!(built.config_digest.unwrap()));
    assert_eq!(inspect[0]["Os"], json!("linux"));
    // Nothing half-written or staged is left behind.
    let names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('.') && !n.contains("partial")),
        "{names:?}"
    );
}

#[test]
fn a_digest_only_version_works_and_skip_download_writes_only_version_files() {
    let reg = &env().plain;
    let repo = common::unique("get-skip");
    let digest = reg.push(&Image::marked("s"), &format!("{repo}:latest"));
    let dest = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!({"skip_download": true}),
        dest.path(),
    )
    .success();
    let mut names: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["digest", "repository", "tag"]);
    assert_eq!(read(&dest.path().join("tag")), "latest");

    let dest = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!(null),
        dest.path(),
    )
    .success();
    assert_eq!(read(&dest.path().join("rootfs/marker.txt")), "s");
}

#[test]
fn version_without_digest_is_an_error_naming_it() {
    let dest = tempfile::tempdir().unwrap();
    let err = get(
        json!({"repository": "127.0.0.1:1/x"}),
        json!({"tag": "x"}),
        json!({}),
        dest.path(),
    )
    .failure();
    assert!(err.contains("version.digest: required"), "{err}");
    let err = get(
        json!({"repository": "127.0.0.1:1/x"}),
        json!({"digest": "sha256:00"}),
        json!({"format": "zip"}),
        dest.path(),
    )
    .failure();
    assert!(err.contains("params.format"), "{err}");
}

/// Tar listing normalised for comparison: path → (type, mode, uid, gid, link target or
/// content hash). Hardlinks compare as the file they link to.
fn listing(tar_bytes: &[u8]) -> BTreeMap<String, String> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut raw = Vec::new();
    let mut contents = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() {
            continue;
        }
        let h = entry.header().clone();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if h.entry_type().is_file() {
            contents.insert(path.clone(), hex::encode(sha2::Sha256::digest(&data)));
        }
        raw.push((path, h, link));
    }
    let mut out = BTreeMap::new();
    for (path, h, link) in raw {
        let t = h.entry_type();
        let kind = if t.is_hard_link() || t.is_file() {
            "file"
        } else if t.is_dir() {
            "dir"
        } else if t.is_symlink() {
            "symlink"
        } else if t.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let detail = if t.is_hard_link() {
            contents
                .get(link.trim_start_matches("./"))
                .cloned()
                .unwrap_or_default()
        } else if t.is_symlink() {
            link
        } else {
            contents.get(&path).cloned().unwrap_or_default()
        };
        out.insert(
            path,
            format!(
                "{kind} {:o} {}:{} {detail}",
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap()
            ),
        );
    }
    out
}

/// Layers that exercise every rule: whiteouts, opaque dirs, hardlinks across layers,
/// symlinks, setuid, ownership, long and non-ASCII names, fifos, a dir replaced by a file.
fn tricky_image() -> Image {
    let long = format!("long/{}", "x".repeat(150));
    Image::busybox()
        .layer(vec![
            Entry::dir("etc"),
            Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            Entry::dir("a"),
            Entry::file("a/keep", "keep"),
            Entry::file("a/gone", "gone"),
            Entry::dir("opq"),
            Entry::file("opq/lower1", "l1"),
            Entry::dir("opq/sub"),
            Entry::file("opq/sub/lower2", "l2"),
            Entry::file("hl-src", "linked"),
            // Docker's overlay2 refuses hardlinks to a lower layer's file when pulling; those
            // have their own test below.
            Entry::hardlink("hl-link", "hl-src"),
            Entry::symlink("abs", "/a/keep"),
            Entry::symlink("rel", "a/keep"),
            Entry::Owned {
                path: "bin-suid".into(),
                content: b"#!/bin/sh\n".to_vec(),
                mode: 0o4755,
                uid: 0,
                gid: 0,
            },
            Entry::Owned {
                path: "owned".into(),
                content: b"mine".to_vec(),
                mode: 0o640,
                uid: 1000,
                gid: 1001,
            },
            Entry::dir("long"),
            Entry::file(&long, "long name"),
            Entry::file("ünïcødé-文件", "utf8"),
            Entry::Fifo {
                path: "pipe".into(),
            },
            Entry::dir("replaced"),
            Entry::file("replaced/child", "c"),
        ])
        .layer(vec![
            Entry::file("a/.wh.gone", ""),
            Entry::file("opq/.wh..wh..opq", ""),
            Entry::file("opq/upper", "u"),
            Entry::file("replaced", "now a file"),
        ])
        .layer(vec![
            Entry::file("a/new", "new"),
            Entry::file("x1", "same inode"),
            Entry::hardlink("x2", "x1"),
        ])
}

#[test]
fn rootfs_and_rootfs_tar_equal_docker_export() {
    let reg = &env().plain;
    let repo = common::unique("get-tricky");
    let digest = reg.push(&tricky_image(), &format!("{repo}:latest"));
    let dest = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!({"rootfs": true}),
        dest.path(),
    )
    .success();
    let ours = listing(&std::fs::read(dest.path().join("rootfs.tar")).unwrap());

    let reference = format!("{}@{digest}", reg.repo(&repo));
    docker(&["pull", "-q", &reference]);
    let name = repo.replace('/', "-");
    docker(&["create", "--name", &name, &reference]);
    let exported = docker(&["export", &name]);
    docker(&["rm", &name]);
    let mut theirs = listing(&exported);
    // What the daemon adds to every container.
    theirs.retain(|p, _| {
        !matches!(
            p.as_str(),
            ".dockerenv"
                | "dev"
                | "proc"
                | "sys"
                | "etc/hostname"
                | "etc/hosts"
                | "etc/resolv.conf"
                | "etc/mtab"
        ) && !p.starts_with("dev/")
    });
    assert_eq!(ours, theirs);

    // The rootfs directory itself says the same.
    let root = dest.path().join("rootfs");
    assert_eq!(read(&root.join("a/keep")), "keep");
    assert!(!root.join("a/gone").exists());
    assert!(!root.join("opq/lower1").exists() && !root.join("opq/sub").exists());
    assert_eq!(read(&root.join("opq/upper")), "u");
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("hl-src"), ino("hl-link"));
    assert_eq!(ino("x1"), ino("x2"));
    assert_eq!(
        std::fs::read_link(root.join("abs")).unwrap(),
        Path::new("/a/keep")
    );
    assert_eq!(
        std::fs::symlink_metadata(root.join("bin-suid"))
            .unwrap()
            .mode()
            & 0o7777,
        0o4755
    );
}

#[test]
fn hardlinks_to_files_of_lower_layers() {
    let reg = &env().plain;
    let repo = common::unique("get-hardlink-lower");
    let image = Image::new()
        .layer(vec![Entry::dir("d"), Entry::file("d/base", "lower")])
        .layer(vec![
            Entry::hardlink("up", "d/base"),
            Entry::hardlink("d/again", "/d/base"),
        ]);
    let digest = reg.push(&image, &format!("{repo}:latest"));
    let dest = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!({"rootfs": true}),
        dest.path(),
    )
    .success();
    use std::os::unix::fs::MetadataExt as _;
    let root = dest.path().join("rootfs");
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("up"), ino("d/base"));
    assert_eq!(ino("d/again"), ino("d/base"));
    let listed = listing(&std::fs::read(dest.path().join("rootfs.tar")).unwrap());
    assert_eq!(listed["up"], listed["d/base"]);
}

#[test]
fn save_and_oci_archives_load_into_docker_with_the_same_image_id() {
    let reg = &env().plain;
    let repo = common::unique("get-save");
    let digest = reg.push(
        &Image::busybox().layer(vec![Entry::file("marker.txt", "loaded and running")]),
        &format!("{repo}:latest"),
    );
    let dest = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!({"save": true, "format": "oci"}),
        dest.path(),
    )
    .success();
    let id = read(&dest.path().join("image-id"));
    for file in ["image", "image.tar"] {
        let path = dest.path().join(file);
        docker(&["rmi", "-f", &id]).len();
        docker(&["load", "-q", "-i", path.to_str().unwrap()]);
        let loaded = String::from_utf8(docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("{}:latest", reg.repo(&repo)),
        ]))
        .unwrap();
        assert_eq!(loaded.trim(), id, "{file}");
        let ran = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            &id,
            "cat",
            "/marker.txt",
        ]);
        assert_eq!(String::from_utf8_lossy(&ran), "loaded and running");
    }
    // format oci replaces the default rootfs.
    assert!(!dest.path().join("rootfs").exists());
}

#[test]
fn oci_layout_is_read_by_skopeo_and_keeps_an_index_whole() {
    let reg = &env().plain;
    // A single image.
    let repo = common::unique("get-layout");
    let digest = reg.push(&Image::marked("layout"), &format!("{repo}:latest"));
    let dest = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!({"format": "oci-layout"}),
        dest.path(),
    )
    .success();
    assert!(!dest.path().join("rootfs").exists());
    let oci = dest.path().join("oci");
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{}", oci.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), digest);

    // A multi-platform index: index.json is the index, every blob is there and verifies.
    let repo = common::unique("get-layout-index");
    let index = reg.push_index(
        &[
            Image::marked("amd").platform(AMD64),
            Image::marked("arm").platform(ARM64),
        ],
        &format!("{repo}:multi"),
    );
    let dest = tempfile::tempdir().unwrap();
    get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": index}),
        json!({"format": "oci-layout"}),
        dest.path(),
    )
    .success();
    let oci = dest.path().join("oci");
    assert_eq!(
        sha256(&std::fs::read(oci.join("index.json")).unwrap()),
        index
    );
    let layout = tempfile::tempdir().unwrap();
    let expected = write_index_layout(
        layout.path(),
        &[
            Image::marked("amd").platform(AMD64),
            Image::marked("arm").platform(ARM64),
        ],
        "t",
    );
    assert_eq!(expected.digest, index);
    let mut ours: Vec<_> = std::fs::read_dir(oci.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut theirs: Vec<_> = std::fs::read_dir(layout.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    for blob in std::fs::read_dir(oci.join("blobs/sha256")).unwrap() {
        let blob = blob.unwrap();
        let bytes = std::fs::read(blob.path()).unwrap();
        assert_eq!(
            sha256(&bytes),
            format!("sha256:{}", blob.file_name().to_string_lossy())
        );
    }
}

#[test]
fn multi_arch_picks_the_wanted_platform() {
    let reg = &env().plain;
    let repo = common::unique("get-platform");
    let index = reg.push_index(
        &[
            Image::marked("amd64 child").platform(AMD64),
            Image::marked("arm64 child").platform(ARM64),
        ],
        &format!("{repo}:multi"),
    );
    let pick = |source_platform: Value, params: Value| {
        let dest = tempfile::tempdir().unwrap();
        let mut source = json!({"repository": reg.repo(&repo)});
        if !source_platform.is_null() {
            source["platform"] = source_platform;
        }
        let out = get(source, json!({"digest": index}), params, dest.path());
        (out, dest)
    };
    let (out, d) = pick(Value::Null, json!({}));
    out.success();
    assert_eq!(read(&d.path().join("rootfs/marker.txt")), "amd64 child");
    let (out, d) = pick(Value::Null, json!({"platform": {"architecture": "arm64"}}));
    out.success();
    assert_eq!(read(&d.path().join("rootfs/marker.txt")), "arm64 child");
    let (out, d) = pick(
        json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        json!({}),
    );
    out.success();
    assert_eq!(read(&d.path().join("rootfs/marker.txt")), "arm64 child");
    // params win over source.
    let (out, d) = pick(
        json!({"architecture": "arm64"}),
        json!({"platform": {"architecture": "amd64"}}),
    );
    out.success();
    assert_eq!(read(&d.path().join("rootfs/marker.txt")), "amd64 child");
    let (out, _d) = pick(Value::Null, json!({"platform": {"architecture": "s390x"}}));
    let err = out.failure();
    assert!(
        err.contains("no image for platform linux/s390x (available: linux/amd64, linux/arm64/v8)"),
        "{err}"
    );
}

#[test]
fn hostile_layer_writes_nothing_outside_the_destination() {
    let reg = &env().plain;
    let repo = common::unique("get-hostile");
    let sandbox = tempfile::tempdir().unwrap();
    let outside = sandbox.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "untouched").unwrap();
    let dest = sandbox.path().join("dest");
    let outside_abs = outside.display().to_string();
    use tar::EntryType::{Link, Regular, Symlink};
    let image = Image::new()
        .layer(vec![
            Entry::raw(b"../../../escape-dotdot", Regular, b"", b"x"),
            Entry::raw(
                format!("{outside_abs}/abs-name").as_bytes(),
                Regular,
                b"",
                b"x",
            ),
            Entry::raw(b"abslink", Symlink, outside_abs.as_bytes(), b""),
            Entry::raw(
                b"rellink",
                Symlink,
                b"../../../../../../../../../../..",
                b"",
            ),
            Entry::raw(
                b"hardout",
                Link,
                format!("../../..{outside_abs}/victim").as_bytes(),
                b"",
            ),
        ])
        .layer(vec![
            Entry::raw(b"abslink/through-abs", Regular, b"", b"x"),
            Entry::raw(
                format!("rellink{outside_abs}/through-rel").as_bytes(),
                Regular,
                b"",
                b"x",
            ),
            Entry::raw(b"abslink/victim", Regular, b"", b"overwritten"),
        ]);
    let digest = reg.push(&image, &format!("{repo}:latest"));
    let out = get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!({"rootfs": true}),
        &dest,
    );
    // Failing is fine; escaping is not.
    let _ = out.code;
    let mut found = Vec::new();
    for e in walk(sandbox.path()) {
        if !e.starts_with(&dest) {
            found.push(e);
        }
    }
    found.sort();
    assert_eq!(
        found,
        vec![outside.clone(), outside.join("victim")],
        "written outside: {found:?}\n{}",
        out.stderr
    );
    assert_eq!(read(&outside.join("victim")), "untouched");
    for stray in ["escape-dotdot", "/escape-dotdot"] {
        assert!(!Path::new("/").join(stray).exists());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn a_corrupted_blob_fails_with_a_digest_error() {
    let reg = &env().plain;
    let repo = common::unique("get-corrupt");
    let layout = tempfile::tempdir().unwrap();
    let image = Image::marked("corrupt me");
    let built = image.write_layout(layout.path(), "t");
    reg.push_layout(layout.path(), "t", &format!("{repo}:latest"));
    let manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let on_disk = reg.blob_path(&layer);
    let mut bytes = std::fs::read(&on_disk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&on_disk, bytes).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let err = get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": built.digest}),
        json!({}),
        dest.path(),
    )
    .failure();
    assert!(err.contains(&format!("blob {layer}")), "{err}");
    assert!(err.contains("expected"), "{err}");
    assert!(!dest.path().join("rootfs").exists());
}

#[test]
fn a_reset_and_a_503_mid_download_still_end_in_a_correct_result() {
    let reg = &env().plain;
    let repo = common::unique("get-faults");
    let big: Vec<u8> = (0..3_000_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let digest = reg.push(
        &Image::new().layer(vec![Entry::file("big.bin", big.clone())]),
        &format!("{repo}:latest"),
    );
    let proxy = FaultProxy::start(&reg.host);
    proxy.add(
        "/blobs/",
        Some("GET"),
        1,
        Fault::Status(503, vec![], "busy".into()),
    );
    proxy.add("/blobs/", Some("GET"), 1, Fault::Truncate(100_000));
    let dest = tempfile::tempdir().unwrap();
    let out = get(
        json!({"repository": format!("{}/{repo}", proxy.host())}),
        json!({"digest": digest}),
        json!({}),
        dest.path(),
    );
    out.success();
    assert_eq!(
        std::fs::read(dest.path().join("rootfs/big.bin")).unwrap(),
        big
    );
    let ranged = proxy
        .seen()
        .iter()
        .filter(|s| s.target.contains("/blobs/"))
        .count();
    assert!(ranged >= 3, "{ranged}");
}

#[test]
fn a_persistent_blob_failure_is_a_clear_error() {
    let reg = &env().plain;
    let repo = common::unique("get-fail");
    let digest = reg.push(&Image::marked("f"), &format!("{repo}:latest"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.add(
        "/blobs/",
        Some("GET"),
        1000,
        Fault::Status(502, vec![], "bad gateway".into()),
    );
    let dest = tempfile::tempdir().unwrap();
    let err = get(
        json!({"repository": format!("{}/{repo}", proxy.host())}),
        json!({"digest": digest}),
        json!({}),
        dest.path(),
    )
    .failure();
    assert!(err.contains("502"), "{err}");
    assert!(err.contains("blob sha256:"), "{err}");
    assert!(!dest.path().join("rootfs").exists());
}

#[test]
fn progress_names_each_layer_and_the_throughput() {
    let reg = &env().plain;
    let repo = common::unique("get-progress");
    let image = Image::new()
        .layer(vec![Entry::file("one", "1")])
        .layer(vec![Entry::file("two", "2")]);
    let layout = tempfile::tempdir().unwrap();
    let built = image.write_layout(layout.path(), "t");
    reg.push_layout(layout.path(), "t", &format!("{repo}:latest"));
    let dest = tempfile::tempdir().unwrap();
    let out = get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": built.digest}),
        json!({}),
        dest.path(),
    );
    out.success();
    assert!(out.stderr.contains("fetching 2 layers"), "{}", out.stderr);
    let manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let short = &layer["digest"].as_str().unwrap()["sha256:".len().."sha256:".len() + 12];
        assert!(
            out.stderr.contains(&format!("fetched layer {short}")),
            "{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("/s)"), "{}", out.stderr);
}

/// `security.capability` for `cap_net_raw+ep` (VFS_CAP_REVISION_2, effective; permitted bit
/// 13), as `setcap cap_net_raw+ep` writes it.
const CAP_NET_RAW_EP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let name = std::ffi::CString::new(name).unwrap();
    let mut value = vec![0u8; 1024];
    let n = rustix::fs::lgetxattr(path, name.as_c_str(), &mut value).ok()?;
    value.truncate(n);
    Some(value)
}

#[test]
fn file_capabilities_and_user_xattrs_are_applied_and_exported_but_not_trusted_ones() {
    // A layer whose PAX headers carry xattrs, as `docker save` of an image with a setcap'd
    // binary has them.
    let mut tar = tar::Builder::new(Vec::new());
    // Headers with uid and gid left blank, as some image tools write them: 0, as Docker
    // reads them.
    let entry = |tar: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, body: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(body.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        tar.append_data(&mut h, name, body).unwrap();
    };
    tar.append_pax_extensions([
        ("SCHILY.xattr.security.capability", &CAP_NET_RAW_EP[..]),
        ("SCHILY.xattr.user.origin", &b"dockhand-test"[..]),
    ])
    .unwrap();
    entry(
        &mut tar,
        "bin/pinger",
        tar::EntryType::Regular,
        b"#!/bin/sh\n",
    );
    tar.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.user.dir", &b"kept"[..]),
    ])
    .unwrap();
    entry(&mut tar, "data/", tar::EntryType::Directory, b"");
    let layer = tar.into_inner().unwrap();
    let diff_id = sha256(&layer);
    let image =
        Image::busybox().layer_blob(layer, "application/vnd.oci.image.layer.v1.tar", &diff_id);
    let reg = &env().plain;
    let repo = common::unique("xattrs");
    let digest = reg.push(&image, &format!("{repo}:latest"));
    let dest = common::scratch_dir(&repo).join("get");
    let out = get(
        json!({"repository": reg.repo(&repo)}),
        json!({"digest": digest}),
        json!({"rootfs": true}),
        &dest,
    );
    out.success();

    let rootfs = dest.join("rootfs");
    let as_root = rustix::process::geteuid().is_root();
    let pinger = rootfs.join("bin/pinger");
    if as_root {
        assert_eq!(
            xattr(&pinger, "security.capability").as_deref(),
            Some(&CAP_NET_RAW_EP[..])
        );
    }
    assert_eq!(
        xattr(&pinger, "user.origin").as_deref(),
        Some(&b"dockhand-test"[..])
    );
    assert_eq!(
        xattr(&rootfs.join("data"), "user.dir").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(xattr(&rootfs.join("data"), "trusted.overlay.opaque"), None);

    // rootfs.tar carries what was applied, as PAX records.
    let bytes = std::fs::read(dest.join("rootfs.tar")).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        if let Some(exts) = entry.pax_extensions().unwrap() {
            for ext in exts {
                let key = ext.unwrap().key().unwrap().to_string();
                seen.entry(path.clone()).or_default().push(key);
            }
        }
    }
    let mut want_pinger = vec!["SCHILY.xattr.user.origin".to_string()];
    if as_root {
        want_pinger.insert(0, "SCHILY.xattr.security.capability".to_string());
    }
    assert_eq!(seen.get("bin/pinger"), Some(&want_pinger), "{seen:?}");
    assert_eq!(
        seen.get("data"),
        Some(&vec!["SCHILY.xattr.user.dir".to_string()]),
        "{seen:?}"
    );
}
