//! `in` against hostile images and hostile destinations: layers that are not what their
//! config's diff_id says, oversized tar headers, deep paths, symlinks planted in DEST; and a
//! failed `in` leaves DEST as it found it.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::common::image::sha256;
use crate::common::{self, env, Entry, Image, Run};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn get(repo: &str, digest: &str, params: Value, dest: &Path) -> common::Outcome {
    let reg = &env().plain;
    Run::new("in")
        .arg(dest.display().to_string())
        .stdin_json(&json!({
            "source": {"repository": reg.repo(repo)},
            "version": {"digest": digest},
            "params": params,
        }))
        .run()
}

/// Every name under `dir`, relative, sorted; symlinks not followed.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
            out.push(rel);
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A one-file uncompressed layer.
fn tar_layer(name: &str, content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, name, content).unwrap();
    tar.into_inner().unwrap()
}

/// Pushes an image of one layer blob claiming `diff_id`; its digest.
fn push_blob(repo: &str, blob: Vec<u8>, media_type: &str, diff_id: &str) -> String {
    let image = Image::new().layer_blob(blob, media_type, diff_id);
    env().plain.push(&image, &format!("{repo}:latest"))
}

#[test]
fn a_layer_not_matching_its_diff_id_is_refused_and_dest_is_left_as_it_was() {
    let repo = common::unique("hostile-diffid");
    let layer = tar_layer("hello.txt", b"hello");
    let blob_digest = sha256(&layer);
    let claimed = sha256(b"not this layer");
    let digest = push_blob(&repo, layer, TAR, &claimed);
    for params in [json!({}), json!({"save": true}), json!({"rootfs": true})] {
        let dest = tempfile::tempdir().unwrap();
        std::fs::write(dest.path().join("keep"), b"mine").unwrap();
        let err = get(&repo, &digest, params.clone(), dest.path()).failure();
        assert!(
            err.contains(&format!(
                "layer {blob_digest} uncompresses to {blob_digest}, not to the config's diff_id {claimed}"
            )),
            "{params}: {err}"
        );
        assert_eq!(listing(dest.path()), ["keep"], "{params}");
        assert_eq!(std::fs::read(dest.path().join("keep")).unwrap(), b"mine");
    }
}

#[test]
fn a_failed_in_leaves_the_previous_result_in_dest_untouched() {
    let reg = &env().plain;
    let repo = common::unique("hostile-again");
    let good = reg.push(&Image::marked("first"), &format!("{repo}:good"));
    let layer = tar_layer("x", b"x");
    let bad = reg.push(
        &Image::new().layer_blob(layer, TAR, &sha256(b"wrong")),
        &format!("{repo}:bad"),
    );
    let dest = tempfile::tempdir().unwrap();
    get(&repo, &good, json!({}), dest.path()).success();
    let before = listing(dest.path());
    let digest_before = std::fs::read_to_string(dest.path().join("digest")).unwrap();
    get(&repo, &bad, json!({}), dest.path()).failure();
    assert_eq!(listing(dest.path()), before);
    assert_eq!(
        std::fs::read_to_string(dest.path().join("digest")).unwrap(),
        digest_before
    );
    assert_eq!(
        std::fs::read_to_string(dest.path().join("rootfs/marker.txt")).unwrap(),
        "first"
    );
}

#[test]
fn symlinks_planted_in_dest_under_temporary_and_final_names_are_not_followed() {
    let repo = common::unique("hostile-planted");
    let digest = env()
        .plain
        .push(&Image::marked("m"), &format!("{repo}:latest"));
    let outside = tempfile::tempdir().unwrap();
    let outside_file = outside.path().join("file");
    std::fs::write(&outside_file, b"outside").unwrap();
    for params in [
        json!({"rootfs": true, "save": true}),
        json!({"format": "oci"}),
        json!({"format": "oci-layout"}),
    ] {
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path();
        for name in [
            ".rootfs.partial",
            ".oci.partial",
            ".dockhand-staging",
            ".dockhand-in-x",
        ] {
            std::os::unix::fs::symlink(outside.path(), d.join(name)).unwrap();
        }
        for name in [
            "digest.dockhand-partial",
            "image.dockhand-partial",
            "image.tar.dockhand-partial",
            ".digest.dockhand-partial",
        ] {
            std::os::unix::fs::symlink(&outside_file, d.join(name)).unwrap();
        }
        // Final names too: replaced, not written through.
        std::os::unix::fs::symlink(outside.path(), d.join("rootfs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("oci")).unwrap();
        std::os::unix::fs::symlink(&outside_file, d.join("image.tar")).unwrap();
        std::os::unix::fs::symlink(&outside_file, d.join("tag")).unwrap();
        get(&repo, &digest, params.clone(), d).success();
        assert_eq!(listing(outside.path()), ["file"], "{params}");
        assert_eq!(
            std::fs::read(&outside_file).unwrap(),
            b"outside",
            "{params}"
        );
        assert_eq!(std::fs::read_to_string(d.join("tag")).unwrap(), "latest");
        assert!(!d.join("tag").is_symlink(), "{params}");
    }
}

#[test]
fn a_path_deeper_than_the_limit_is_refused_with_one_line() {
    let repo = common::unique("hostile-deep");
    let name = format!("{}file", "d/".repeat(300));
    let layer = tar_layer(&name, b"x");
    let diff_id = sha256(&layer);
    let digest = push_blob(&repo, layer, TAR, &diff_id);
    let dest = tempfile::tempdir().unwrap();
    let err = get(&repo, &digest, json!({}), dest.path()).failure();
    assert!(
        err.ends_with(": a path of 301 components is over the limit of 256"),
        "{err}"
    );
    assert!(err.contains("member \"d/d/d/"), "{err}");
    assert_eq!(listing(dest.path()), Vec::<String>::new());
}

/// One gzip member decompressing to `mib` MiB of `a`, as concatenated copies of one
/// compressed MiB (gzip readers read concatenated members as one stream).
fn gzip_of_repeated(head: &[u8], mib: usize) -> Vec<u8> {
    let member = |bytes: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    };
    let mut out = member(head);
    let one = member(&vec![b'a'; 1 << 20]);
    for _ in 0..mib {
        out.extend_from_slice(&one);
    }
    out
}

/// Runs `in` as a child of this thread and waits for exactly that child with `wait4`, for
/// its peak memory; (exit code, stderr, max RSS in KiB).
// `wait4` reaps the child, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn get_measured(repo: &str, digest: &str, dest: &Path) -> (i32, String, i64) {
    let reg = &env().plain;
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(Run::path("in"))
        .arg(dest)
        .env("HOME", common::env_home())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.reopen().unwrap()))
        .spawn()
        .unwrap();
    let request = json!({
        "source": {"repository": reg.repo(repo)},
        "version": {"digest": digest},
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let text = std::fs::read_to_string(stderr.path()).unwrap();
    (code, text, usage.ru_maxrss)
}

/// Peak memory of `in` on a layer whose hostile part is `mib` MiB: far below it.
const MAX_RSS_KIB: i64 = 200 << 10;

#[test]
fn a_huge_pax_header_is_refused_with_one_line_and_bounded_memory() {
    let repo = common::unique("hostile-pax");
    let mib = 600;
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeader/x").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size((mib as u64) << 20);
    h.set_cksum();
    let blob = gzip_of_repeated(h.as_bytes(), mib);
    // The diff_id is never reached: the header is refused first.
    let digest = push_blob(&repo, blob, TAR_GZIP, &sha256(b"unused"));
    let dest = tempfile::tempdir().unwrap();
    let (code, stderr, rss) = get_measured(&repo, &digest, dest.path());
    assert_eq!(code, 1, "{stderr}");
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].ends_with(
            "cannot read the layer archive: a PAX extended header of 629145600 bytes is over \
             the limit of 1048576 bytes"
        ),
        "{stderr}"
    );
    assert!(rss < MAX_RSS_KIB, "peak RSS {rss} KiB");
    assert_eq!(listing(dest.path()), Vec::<String>::new());
}

#[test]
fn a_pax_path_of_40000_components_is_refused_with_one_line_and_bounded_memory() {
    let repo = common::unique("hostile-longpath");
    let mut tar = tar::Builder::new(Vec::new());
    let name = "a/".repeat(40_000);
    tar.append_pax_extensions([("path", name.as_bytes())])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("short").unwrap();
    h.set_size(1);
    h.set_cksum();
    tar.append(&h, &b"x"[..]).unwrap();
    let layer = tar.into_inner().unwrap();
    let diff_id = sha256(&layer);
    let digest = push_blob(&repo, layer, TAR, &diff_id);
    let dest = tempfile::tempdir().unwrap();
    let (code, stderr, rss) = get_measured(&repo, &digest, dest.path());
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(": name of 80000 bytes is over the limit of 4096 bytes"),
        "{stderr}"
    );
    assert!(rss < MAX_RSS_KIB, "peak RSS {rss} KiB");
}

#[test]
fn an_entry_raw_hostile_layer_still_applies_inside_dest() {
    // The limits leave ordinary hostile names (.., absolute) to the confinement as before.
    let repo = common::unique("hostile-raw");
    let image = Image::new().layer(vec![
        Entry::raw(b"../../up", tar::EntryType::Regular, b"", b"x"),
        Entry::raw(b"/abs", tar::EntryType::Regular, b"", b"y"),
    ]);
    let digest = env().plain.push(&image, &format!("{repo}:latest"));
    let dest = tempfile::tempdir().unwrap();
    get(&repo, &digest, json!({}), dest.path()).success();
    assert_eq!(
        std::fs::read_to_string(dest.path().join("rootfs/up")).unwrap(),
        "x"
    );
    assert_eq!(
        std::fs::read_to_string(dest.path().join("rootfs/abs")).unwrap(),
        "y"
    );
}
