//! The binaries against a registry that misbehaves on purpose ([`Hostile`], [`RawServer`]):
//! secrets echoed back, credentials invited to other origins, numbers chosen to overflow,
//! bodies too large for memory, servers that stall, and escape sequences in error bodies.
//!
//! Every case asserts the same floor: the exit status, no panic, a last stderr line that is
//! one clean line (no control bytes, under 2000 characters), no secret anywhere in the output
//! (the password, its Basic form, tokens the server issued, credentials in URLs), and for
//! `in`, nothing written outside DEST. Where a body is large, the peak RSS of the child stays
//! under 256 MiB; runs that stall are bounded at three minutes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::common::hostile::{Challenge, Hostile, Payload, Raw, RawServer, Reply};
use crate::common::image::{sha256, OCI_CONFIG, OCI_MANIFEST};
use crate::common::{self, Entry, Image, Layout, Measured, Outcome, Run, PASSWORD, USER};

/// The ceiling on the child's peak resident set where a body is large.
const RSS_LIMIT_KIB: u64 = 256 << 10;
/// Beyond this the harness kills the child (the test fails on the limit above anyway).
const RSS_KILL_KIB: u64 = 768 << 10;
/// How long a stalled run may take.
const PATIENCE: Duration = Duration::from_secs(180);
/// How long any other run may take before the harness kills it.
const LIMIT: Duration = Duration::from_secs(150);

/// The password, its Basic header value, and `extra`.
fn secrets(extra: &[String]) -> Vec<String> {
    let mut all = vec![PASSWORD.to_string(), Hostile::basic_value(USER, PASSWORD)];
    all.extend(extra.iter().cloned());
    all
}

/// The end of a long stderr, for assertion messages.
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(6000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// No panic, a clean last stderr line, no secret printed.
fn assert_clean(what: &str, out: &Outcome, secrets: &[String]) {
    assert!(
        !out.stderr.contains("panicked"),
        "{what}: panic\nstderr: {}",
        tail(&out.stderr)
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.len() < 2000,
        "{what}: last stderr line is {} characters: {}",
        last.len(),
        last.chars().take(300).collect::<String>()
    );
    assert!(
        !last.chars().any(char::is_control),
        "{what}: control characters in the last stderr line: {last:?}"
    );
    for secret in secrets {
        assert!(
            !out.all_output().contains(secret.as_str()),
            "{what}: the secret {secret:?} was printed\nstdout: {}\nstderr: {}",
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
}

/// Ended by itself within its limit.
fn assert_ended(what: &str, run: &Measured) {
    assert!(
        run.killed.is_none(),
        "{what}: killed by the harness after {:.1} s: {}\nstderr: {}",
        run.elapsed.as_secs_f64(),
        run.killed.as_deref().unwrap_or_default(),
        tail(&run.outcome.stderr)
    );
}

fn assert_rss_bounded(what: &str, run: &Measured) {
    assert!(
        run.peak_rss_kib < RSS_LIMIT_KIB,
        "{what}: peak RSS {} MiB, limit {} MiB{}\nstderr: {}",
        run.peak_rss_kib >> 10,
        RSS_LIMIT_KIB >> 10,
        run.killed
            .as_deref()
            .map(|k| format!(" (killed: {k})"))
            .unwrap_or_default(),
        tail(&run.outcome.stderr)
    );
}

/// Exit 1, nothing on stdout, one clean `error: ` line last; returns that line.
fn expect_failure(what: &str, run: &Measured, secrets: &[String]) -> String {
    assert_ended(what, run);
    let out = &run.outcome;
    assert_clean(what, out, secrets);
    assert_eq!(
        out.code,
        Some(1),
        "{what}: expected exit 1\nstdout: {}\nstderr: {}",
        tail(&out.stdout),
        tail(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: stdout: {}",
        tail(&out.stdout)
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: "),
        "{what}: last stderr line is not the error\nstderr: {}",
        tail(&out.stderr)
    );
    last.to_string()
}

/// Exit 0 with one JSON document, or exit 1 with one clean error; the document when 0.
fn expect_clean_end(what: &str, run: &Measured, secrets: &[String]) -> Option<Value> {
    assert_ended(what, run);
    match run.outcome.code {
        Some(0) => {
            assert_clean(what, &run.outcome, secrets);
            Some(common::one_json_document(&run.outcome.stdout))
        }
        _ => {
            expect_failure(what, run, secrets);
            None
        }
    }
}

/// Runs `case` for each of `cases`, all of them even when some fail (the panic hook prints
/// each failure), then fails naming those that did.
fn each_case<T>(cases: impl IntoIterator<Item = T>, name: impl Fn(&T) -> String, case: impl Fn(T)) {
    let mut failed = Vec::new();
    for c in cases {
        let what = name(&c);
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(c))).is_err() {
            failed.push(what);
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

fn check(request: &Value, limit: Duration) -> Measured {
    Run::new("check")
        .stdin_json(request)
        .run_measured(limit, RSS_KILL_KIB)
}

/// Fresh DEST, HOME, TMPDIR and working directory for one `in`, so "nothing written outside
/// DEST" can be checked.
struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().unwrap();
        for d in ["dest", "home", "tmp", "cwd"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        Sandbox { root }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn dest(&self) -> PathBuf {
        self.dir("dest")
    }

    fn run(&self, bin: &'static str, request: &Value, limit: Duration) -> Measured {
        Run::new(bin)
            .arg(self.dest().display().to_string())
            .stdin_json(request)
            .env("HOME", self.dir("home").display().to_string())
            .env("TMPDIR", self.dir("tmp").display().to_string())
            .current_dir(self.dir("cwd"))
            .run_measured(limit, RSS_KILL_KIB)
    }

    fn get(&self, request: &Value) -> Measured {
        self.run("in", request, LIMIT)
    }

    /// HOME, TMPDIR and the working directory are as empty as they started.
    fn assert_nothing_outside_dest(&self, what: &str) {
        for d in ["home", "tmp", "cwd"] {
            let left: Vec<_> = std::fs::read_dir(self.dir(d))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "{what}: left in {d}: {left:?}");
        }
    }
}

/// A one-layer image in a layout, and a hostile registry of `challenge` holding it as
/// `app:latest`; the digest.
fn registry_with_image(challenge: Challenge, marker: &str) -> (Hostile, Layout, String) {
    let hostile = Hostile::start(challenge, USER, PASSWORD);
    let layout = Image::marked(marker).layout();
    let digest = hostile.put_layout("app", "latest", &layout);
    (hostile, layout, digest)
}

fn with_credentials(mut source: Value) -> Value {
    source["username"] = json!(USER);
    source["password"] = json!(PASSWORD);
    source
}

// 1. Secrets echoed back.

/// `app:latest` whose manifest is refused with `status` and a body echoing the request's
/// `Authorization`; HEAD answers without a digest, so the manifest itself is asked for.
fn echoing_registry(challenge: Challenge, status: u16) -> Hostile {
    let (hostile, _layout, _) = registry_with_image(challenge, "echo");
    hostile.on(
        Some("HEAD"),
        "/manifests/",
        None,
        Reply::status(200).header("Content-Type", OCI_MANIFEST),
    );
    hostile.on(
        Some("GET"),
        "/manifests/",
        None,
        Reply::echo_authorization(status),
    );
    hostile
}

#[test]
fn error_bodies_echoing_basic_credentials_are_not_printed() {
    each_case(
        [401, 403, 500],
        |status| format!("basic, {status}"),
        |status| {
            let what = format!("basic, {status}");
            let hostile = echoing_registry(Challenge::Basic, status);
            let source = with_credentials(json!({"repository": hostile.repo("app")}));
            let run = check(&json!({"source": source}), LIMIT);
            // The server did get (and echo) the credentials: the case is real.
            assert!(
                hostile.seen().iter().any(|r| r.method == "GET"
                    && r.path().contains("/manifests/")
                    && r.header("authorization").is_some()),
                "{what}: no manifest GET carried credentials"
            );
            expect_failure(&what, &run, &secrets(&[]));
        },
    );
}

#[test]
fn error_bodies_echoing_a_bearer_token_are_not_printed() {
    each_case(
        [401, 403, 500],
        |status| format!("bearer, {status}"),
        |status| {
            let what = format!("bearer, {status}");
            let hostile = echoing_registry(Challenge::Bearer, status);
            let source = with_credentials(json!({"repository": hostile.repo("app")}));
            let run = check(&json!({"source": source}), LIMIT);
            let tokens = hostile.tokens();
            assert!(!tokens.is_empty(), "{what}: no token was issued");
            expect_failure(&what, &run, &secrets(&tokens));
        },
    );
}

// 2. Credentials in URLs.

const MIRROR_USER: &str = "mirror-user";
const MIRROR_TOKEN: &str = "mirror-t0ken-7f3a9c";

#[test]
fn registry_mirror_url_credentials_are_not_printed() {
    let mirror_secrets = secrets(&[
        MIRROR_TOKEN.to_string(),
        Hostile::basic_value(MIRROR_USER, MIRROR_TOKEN),
    ]);

    // A URL with userinfo: the mirror (Basic, those credentials) holds the image.
    let mirror = Hostile::start(Challenge::Basic, MIRROR_USER, MIRROR_TOKEN);
    let layout = Image::marked("mirror").layout();
    let digest = mirror.put_layout("library/busybox", "latest", &layout);
    let url = format!("http://{MIRROR_USER}:{MIRROR_TOKEN}@{}/", mirror.host());
    let run = check(
        &json!({"source": {"repository": "busybox", "registry_mirror": url}}),
        LIMIT,
    );
    if let Some(versions) = expect_clean_end("mirror url with userinfo", &run, &mirror_secrets) {
        assert_eq!(versions, json!([{"tag": "latest", "digest": digest}]));
    }
}

#[test]
fn registry_mirror_credentials_echoed_by_the_mirror_are_not_printed() {
    let mirror_secrets = secrets(&[
        MIRROR_TOKEN.to_string(),
        Hostile::basic_value(MIRROR_USER, MIRROR_TOKEN),
    ]);
    // The object form, against a mirror that echoes the credentials in its refusals.
    let mirror = Hostile::start(Challenge::Basic, MIRROR_USER, MIRROR_TOKEN);
    mirror.on(
        Some("HEAD"),
        "/manifests/",
        None,
        Reply::status(200).header("Content-Type", OCI_MANIFEST),
    );
    mirror.on(
        Some("GET"),
        "/manifests/",
        None,
        Reply::echo_authorization(401),
    );
    let run = check(
        &json!({"source": {
            "repository": "busybox",
            "registry_mirror": {
                "host": mirror.url(),
                "username": MIRROR_USER,
                "password": MIRROR_TOKEN,
            },
        }}),
        LIMIT,
    );
    assert!(
        mirror.seen().iter().any(|r| r.method == "GET"
            && r.path().contains("/manifests/")
            && r.header("authorization").is_some()),
        "the mirror was never asked for the manifest with credentials: {:?}",
        mirror.seen()
    );
    expect_clean_end("mirror object, echoing", &run, &mirror_secrets);
}

#[test]
fn git_repo_credentials_are_not_printed() {
    const GIT_TOKEN: &str = "ghp_h0stileGitT0ken4242";
    let (hostile, _layout, _) = registry_with_image(Challenge::None, "git");
    hostile.on(
        None,
        ".git/",
        None,
        Reply::echo_authorization(401).header("WWW-Authenticate", r#"Basic realm="git""#),
    );
    let repo = format!(
        "http://git-user:{GIT_TOKEN}@{}/team/app.git",
        hostile.host()
    );
    let run = check(
        &json!({"source": {"repository": hostile.repo("app"), "git_repo": repo}}),
        LIMIT,
    );
    let git_secrets = secrets(&[
        GIT_TOKEN.to_string(),
        Hostile::basic_value("git-user", GIT_TOKEN),
    ]);
    expect_failure("git_repo with credentials", &run, &git_secrets);
    assert!(
        hostile.seen().iter().any(|r| r.target.contains(".git/")),
        "git never asked the server"
    );
}

// 3. Credentials across origins.

#[test]
fn a_tag_page_link_to_another_origin_gets_no_credentials() {
    each_case(
        [Challenge::Basic, Challenge::Bearer],
        |c| format!("{c:?}"),
        |challenge| {
            let hostile = Hostile::start(challenge.clone(), USER, PASSWORD);
            let other = Hostile::open();
            let layout = Image::marked("paged").layout();
            hostile.put_layout("app", "1.0", &layout);
            hostile.put_layout("app", "1.1", &layout);
            other.put_layout("app", "1.1", &layout);
            let next = format!(
                "<{}/v2/app/tags/list?last=1.0&n=1000>; rel=\"next\"",
                other.url()
            );
            hostile.on(
                Some("GET"),
                "/tags/list",
                None,
                Reply::json(200, &json!({"name": "app", "tags": ["1.0"]})).header("Link", &next),
            );
            let source = with_credentials(json!({
                "repository": hostile.repo("app"),
                "tag_regex": "^1\\.",
            }));
            let run = check(&json!({"source": source}), LIMIT);
            let what = format!("{challenge:?}: link to another origin");
            expect_clean_end(&what, &run, &secrets(&hostile.tokens()));
            for r in other.seen() {
                assert!(
                    r.header("authorization").is_none(),
                    "{what}: the other origin got {:?} on {}",
                    r.header("authorization"),
                    r.target
                );
            }
        },
    );
}

#[test]
fn a_blob_redirect_to_another_origin_never_gets_the_password() {
    let (hostile, layout, digest) = registry_with_image(Challenge::Basic, "redirected");
    // The other origin is a registry of its own: 401 Bearer with a realm on itself.
    let other = Hostile::start(Challenge::Bearer, "someone-else", "not-the-password");
    other.put_layout("app", "latest", &layout);
    let blobs = [
        layout.built.config_digest.clone().unwrap(),
        layout.built.layers[0].digest.clone(),
    ];
    for blob in &blobs {
        hostile.on(
            Some("GET"),
            &format!("/blobs/{blob}"),
            None,
            Reply::redirect(&format!("{}/v2/app/blobs/{blob}", other.url())),
        );
    }
    let sandbox = Sandbox::new();
    let source = with_credentials(json!({"repository": hostile.repo("app")}));
    let run = sandbox.get(&json!({"source": source, "version": {"digest": digest}}));
    let what = "blob redirect to another origin";
    let basic = Hostile::basic_value(USER, PASSWORD);
    assert!(
        other.seen().iter().any(|r| r.path().contains("/blobs/")),
        "{what}: the redirect was not followed"
    );
    for r in other.seen() {
        let leaked = r.headers.iter().any(|(_, v)| v.contains(&basic))
            || r.target.contains(PASSWORD)
            || r.target.contains(&PASSWORD.replace('@', "%40"));
        assert!(
            !leaked,
            "{what}: the other origin got the password on {} {}: {:?}",
            r.method, r.target, r.headers
        );
    }
    if expect_clean_end(what, &run, &secrets(&hostile.tokens())).is_some() {
        let marker = std::fs::read_to_string(sandbox.dest().join("rootfs/marker.txt")).unwrap();
        assert_eq!(marker, "redirected");
    }
    sandbox.assert_nothing_outside_dest(what);
}

/// An upload whose `Location` names another origin: the blob may go there (the spec allows
/// it), the registry's credentials may not.
#[test]
fn an_upload_location_on_another_origin_gets_no_credentials() {
    each_case(
        [Challenge::Basic, Challenge::Bearer],
        |c| format!("{c:?}"),
        |challenge| {
            let hostile = Hostile::start(challenge.clone(), USER, PASSWORD);
            let other = Hostile::open();
            hostile.on(
                Some("POST"),
                "/blobs/uploads/",
                None,
                Reply::status(202).header(
                    "Location",
                    &format!("{}/v2/app/blobs/uploads/elsewhere", other.url()),
                ),
            );
            let layout = Image::marked("uploaded").layout();
            let src = tempfile::tempdir().unwrap();
            copy_dir(layout.path(), &src.path().join("image"));
            let request = json!({
                "source": with_credentials(json!({"repository": hostile.repo("app")})),
                "params": {"image": "image"},
            });
            let run = Run::new("out")
                .arg(src.path().display().to_string())
                .stdin_json(&request)
                .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
                .run_measured(LIMIT, RSS_KILL_KIB);
            let what = format!("{challenge:?}: upload location on another origin");
            assert!(
                other.seen().iter().any(|r| r.path().contains("/uploads/")),
                "{what}: the location was not followed"
            );
            let basic = Hostile::basic_value(USER, PASSWORD);
            for r in other.seen() {
                assert!(
                    r.header("authorization").is_none()
                        && !r.headers.iter().any(|(_, v)| v.contains(&basic)),
                    "{what}: the other origin got credentials on {} {}: {:?}",
                    r.method,
                    r.target,
                    r.headers
                );
            }
            expect_clean_end(&what, &run, &secrets(&hostile.tokens()));
        },
    );
}

/// A bearer realm on plain http at a host that is neither loopback nor insecure-listed gets
/// no basic credentials. Every server here is on loopback, where plain http is allowed; but
/// `[::ffff:127.0.0.1]` (IPv4 mapped into IPv6) is not a loopback address by its name, and
/// still reaches this machine's 127.0.0.1.
#[test]
fn a_plain_http_token_realm_off_loopback_gets_no_credentials() {
    let (hostile, _layout, _) = registry_with_image(Challenge::Bearer, "realm");
    hostile.set_realm(&format!("http://[::ffff:127.0.0.1]:{}/token", hostile.port));
    let source = with_credentials(json!({"repository": hostile.repo("app")}));
    let run = check(&json!({"source": source}), LIMIT);
    let what = "plain http realm off loopback";
    let asked: Vec<_> = hostile
        .seen()
        .into_iter()
        .filter(|r| r.path() == "/token")
        .collect();
    assert!(!asked.is_empty(), "{what}: the realm was never asked");
    for r in &asked {
        assert!(
            r.header("authorization").is_none(),
            "{what}: the realm got {:?}",
            r.header("authorization")
        );
    }
    assert!(
        run.outcome.stderr.contains("without the credentials"),
        "{what}: no warning: {}",
        run.outcome.stderr
    );
    expect_clean_end(what, &run, &secrets(&hostile.tokens()));
}

// 4. Numbers chosen to overflow.

#[test]
fn a_token_that_never_expires_does_not_panic() {
    let (hostile, _layout, digest) = registry_with_image(Challenge::Bearer, "forever");
    hostile.set_token_answer(r#"{"token":"{token}","expires_in":18446744073709551615}"#);
    let source = with_credentials(json!({"repository": hostile.repo("app")}));
    let run = check(&json!({"source": source}), LIMIT);
    assert_ended("expires_in u64::MAX", &run);
    assert_clean(
        "expires_in u64::MAX",
        &run.outcome,
        &secrets(&hostile.tokens()),
    );
    assert_eq!(
        run.outcome.success(),
        json!([{"tag": "latest", "digest": digest}])
    );
}

#[test]
fn a_startup_timeout_of_u64_max_does_not_panic() {
    let (hostile, _layout, digest) = registry_with_image(Challenge::None, "startup");
    let source = json!({"repository": hostile.repo("app"), "startup_timeout": u64::MAX});
    let run = check(&json!({"source": source}), LIMIT);
    if let Some(versions) = expect_clean_end("check, startup_timeout u64::MAX", &run, &[]) {
        assert_eq!(versions, json!([{"tag": "latest", "digest": digest}]));
    }

    // `out` with a build and no daemon: it starts dockerd and waits up to startup_timeout.
    // The dockerd on PATH is a stand-in that fails at once.
    let sandbox = Sandbox::new();
    let bin = sandbox.dir("home");
    let fake = bin.join("dockerd");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake dockerd: cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(sandbox.dest().join("Dockerfile"), "FROM scratch\n").unwrap();
    let request = json!({"source": source, "params": {"build": "."}});
    let run = Run::new("out")
        .arg(sandbox.dest().display().to_string())
        .stdin_json(&request)
        .env("BUILD_ID", "1")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("PATH", bin.display().to_string())
        .env("TMPDIR", sandbox.dir("tmp").display().to_string())
        .current_dir(sandbox.dir("cwd"))
        .run_measured(LIMIT, RSS_KILL_KIB);
    expect_failure("out, startup_timeout u64::MAX", &run, &[]);
}

// 5. Memory.

/// `"t0000000",` … : `count` tags of 11 bytes each.
fn tag_run(count: usize) -> Bytes {
    let mut fill = Vec::with_capacity(count * 11);
    for i in 0..count {
        fill.extend_from_slice(format!("\"t{i:07}\",").as_bytes());
    }
    fill.into()
}

#[test]
fn endless_64_mb_tag_pages_end_with_bounded_memory() {
    let hostile = Hostile::open();
    let head = Bytes::from_static(br#"{"name":"app","tags":["#);
    let tail = Bytes::from_static(br#""t9999999"]}"#);
    let fill = tag_run(95_325); // 1 MiB less a byte
    let len = (head.len() + 61 * fill.len() + tail.len()) as u64;
    assert!(len < 64 << 20, "under the client's own page limit");
    let link = "</v2/app/tags/list?n=1000&last=t9999999>; rel=\"next\"";
    hostile.on(
        Some("GET"),
        "/tags/list",
        None,
        Reply::status(200)
            .header("Content-Type", "application/json")
            .header("Link", link)
            .payload(Payload::Generated {
                head,
                fill,
                tail,
                len: Some(len),
                declared: true,
            }),
    );
    let run = check(
        &json!({"source": {"repository": hostile.repo("app"), "tag_regex": "^t"}}),
        PATIENCE,
    );
    let what = "endless 64 MB tag pages";
    assert_rss_bounded(what, &run);
    expect_clean_end(what, &run, &[]);
}

/// A 100 MB manifest: a valid start, an endless annotation.
fn huge_manifest(declared: bool) -> Reply {
    Reply::status(200)
        .header("Content-Type", OCI_MANIFEST)
        .payload(Payload::Generated {
            head: Bytes::from(format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","annotations":{{"x":""#
            )),
            fill: Bytes::from(vec![b'a'; 1 << 20]),
            tail: Bytes::from_static(br#""}}"#),
            len: Some(100_000_000),
            declared,
        })
}

#[test]
fn a_100_mb_manifest_is_refused_with_bounded_memory() {
    // check: HEAD says nothing useful, so the manifest is read; Content-Length says 100 MB.
    let hostile = Hostile::open();
    hostile.on(
        Some("HEAD"),
        "/manifests/",
        None,
        Reply::status(200).header("Content-Type", OCI_MANIFEST),
    );
    hostile.on(Some("GET"), "/manifests/", None, huge_manifest(true));
    let run = check(
        &json!({"source": {"repository": hostile.repo("app")}}),
        LIMIT,
    );
    let err = expect_failure("check, 100 MB manifest", &run, &[]);
    assert!(err.contains("manifest"), "{err}");
    assert_rss_bounded("check, 100 MB manifest", &run);

    // in: chunked, no length given.
    let hostile = Hostile::open();
    hostile.on(Some("GET"), "/manifests/", None, huge_manifest(false));
    let sandbox = Sandbox::new();
    let run = sandbox.get(&json!({
        "source": {"repository": hostile.repo("app")},
        "version": {"digest": format!("sha256:{}", "a".repeat(64))},
    }));
    let err = expect_failure("in, 100 MB chunked manifest", &run, &[]);
    assert!(err.contains("manifest"), "{err}");
    assert_rss_bounded("in, 100 MB chunked manifest", &run);
    sandbox.assert_nothing_outside_dest("in, 100 MB chunked manifest");
}

#[test]
fn a_400_mb_image_config_is_refused_with_bounded_memory() {
    let hostile = Hostile::open();
    let layout = Image::marked("huge config").layout();
    hostile.put_layout("app", "small", &layout);
    // A valid config, padded to 400 MB; its real digest, so only its size is wrong.
    let head = Bytes::from(format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":{}}},"config":{{}},"x":""#,
        json!(layout.built.diff_ids())
    ));
    let fill = Bytes::from(vec![b'a'; 1 << 20]);
    let tail = Bytes::from_static(br#""}"#);
    let len: u64 = 400_000_000;
    let digest = {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&head);
        let mut left = len - (head.len() + tail.len()) as u64;
        while left > 0 {
            let n = left.min(fill.len() as u64) as usize;
            ctx.update(&fill[..n]);
            left -= n as u64;
        }
        ctx.update(&tail);
        format!("sha256:{}", hex::encode(ctx.finish()))
    };
    hostile.on(
        Some("GET"),
        &format!("/blobs/{digest}"),
        None,
        Reply::status(200)
            .header("Content-Type", "application/octet-stream")
            .payload(Payload::Generated {
                head,
                fill,
                tail,
                len: Some(len),
                declared: true,
            }),
    );
    let mut manifest = layout.built.manifest_json();
    manifest["config"] = json!({"mediaType": OCI_CONFIG, "digest": digest, "size": len});
    let manifest_digest = hostile.put_manifest(
        "app",
        "latest",
        OCI_MANIFEST,
        serde_json::to_vec(&manifest).unwrap(),
    );
    let sandbox = Sandbox::new();
    let run = sandbox.get(&json!({
        "source": {"repository": hostile.repo("app")},
        "version": {"digest": manifest_digest},
    }));
    let what = "in, 400 MB image config";
    assert_rss_bounded(what, &run);
    expect_failure(what, &run, &[]);
    sandbox.assert_nothing_outside_dest(what);
}

// 6. Time.

#[test]
fn a_server_that_never_answers_ends_within_three_minutes() {
    let server = RawServer::start(Raw::Silent);
    let run = check(
        &json!({"source": {"repository": server.repo("app")}}),
        PATIENCE,
    );
    expect_failure("silent server", &run, &[]);
    assert!(server.connections.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn response_headers_dribbled_a_byte_a_second_end_within_three_minutes() {
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: ".to_vec();
    head.extend_from_slice(&[b'a'; 4000]);
    head.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\n{}");
    let server = RawServer::start(Raw::Dribble {
        bytes: head.into(),
        every: Duration::from_secs(1),
    });
    let run = check(
        &json!({"source": {"repository": server.repo("app")}}),
        PATIENCE,
    );
    expect_failure("headers dribbled", &run, &[]);
}

#[test]
fn a_body_dribbled_a_byte_a_second_ends_within_three_minutes() {
    let hostile = Hostile::open();
    // HEAD gives no digest, so the manifest itself is read: 4000 bytes, one a second.
    hostile.on(
        Some("HEAD"),
        "/manifests/",
        None,
        Reply::status(200).header("Content-Type", OCI_MANIFEST),
    );
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","annotations":{{"x":"{}"}}}}"#,
        "a".repeat(4000)
    );
    hostile.on(
        Some("GET"),
        "/manifests/",
        None,
        Reply::status(200)
            .header("Content-Type", OCI_MANIFEST)
            .payload(Payload::Dribble {
                bytes: body.into(),
                every: Duration::from_secs(1),
            }),
    );
    let run = check(
        &json!({"source": {"repository": hostile.repo("app")}}),
        PATIENCE,
    );
    expect_failure("body dribbled", &run, &[]);
}

#[test]
fn retry_after_a_day_is_not_waited_for() {
    let runs: Vec<(u16, Measured)> = std::thread::scope(|s| {
        let handles: Vec<_> = [429u16, 503]
            .into_iter()
            .map(|status| {
                s.spawn(move || {
                    let (hostile, _layout, _) = registry_with_image(Challenge::None, "later");
                    hostile.on(
                        None,
                        "/manifests/",
                        None,
                        Reply::error(status, "UNAVAILABLE", "come back tomorrow")
                            .header("Retry-After", "86400"),
                    );
                    let run = check(
                        &json!({"source": {"repository": hostile.repo("app")}}),
                        Duration::from_secs(120),
                    );
                    (status, run)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, run) in runs {
        let what = format!("{status} with Retry-After: 86400");
        let err = expect_failure(&what, &run, &[]);
        assert!(
            run.elapsed < Duration::from_secs(60),
            "{what}: took {:.0} s",
            run.elapsed.as_secs_f64()
        );
        let lower = err.to_ascii_lowercase();
        assert!(
            lower.contains("retry-after") || lower.contains("wait") || lower.contains("86400"),
            "{what}: the error does not say the registry asks to wait: {err}"
        );
    }
}

#[test]
fn a_docker_hub_pull_rate_limit_fails_at_once() {
    let (hostile, _layout, _) = registry_with_image(Challenge::None, "rate");
    hostile.on(
        None,
        "/manifests/",
        None,
        Reply::error(
            429,
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit.",
        )
        .header("ratelimit-limit", "100;w=21600")
        .header("ratelimit-remaining", "0;w=21600"),
    );
    let run = check(
        &json!({"source": {"repository": hostile.repo("app")}}),
        LIMIT,
    );
    let err = expect_failure("pull rate limit", &run, &[]);
    assert!(
        run.elapsed < Duration::from_secs(10),
        "pull rate limit: took {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(err.to_ascii_lowercase().contains("rate limit"), "{err}");
}

// 7. Control bytes.

#[test]
fn control_bytes_in_an_error_body_are_not_printed() {
    const HOSTILE: &str = "\x1b[31mred\x1b]0;title\x07\nerror: forged second line";
    let bodies = [
        ("json", Reply::error(500, "UNKNOWN", HOSTILE)),
        (
            "text",
            Reply::status(500)
                .header("Content-Type", "text/plain")
                .body(HOSTILE),
        ),
    ];
    each_case(
        bodies,
        |(kind, _)| kind.to_string(),
        |(kind, reply)| {
            let (hostile, _layout, _) = registry_with_image(Challenge::None, "escape");
            hostile.on(None, "/manifests/", None, reply);
            let run = check(
                &json!({"source": {"repository": hostile.repo("app")}}),
                LIMIT,
            );
            let what = format!("{kind} body with escapes");
            let last = expect_failure(&what, &run, &[]);
            assert!(
                !last.contains('\x1b') && !last.contains('\x07'),
                "{what}: {last:?}"
            );
            assert!(
                !run.outcome.stderr.contains('\x1b'),
                "{what}: ESC on stderr: {:?}",
                run.outcome.stderr
            );
            assert!(
                !run.outcome
                    .stderr
                    .lines()
                    .any(|l| l.trim_start().starts_with("error: forged")),
                "{what}: the forged line stands on its own: {:?}",
                run.outcome.stderr
            );
        },
    );
}

// 8. Range.

/// Bytes that do not compress, so the layer is as large as its file.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn read_if_there(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[test]
fn a_resumed_blob_with_wrong_bytes_is_never_written() {
    let content = noise(512 << 10, 42);
    let layout = Image::new()
        .layer(vec![Entry::file("big.bin", content.clone())])
        .layout();
    let layer = layout.built.layers[0].digest.clone();
    let blob = std::fs::read(
        layout
            .path()
            .join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(sha256(&blob), layer);
    let len = blob.len();
    let half = len / 2;
    let garbage = Bytes::from(noise(len - half, 7));
    let range = |start: usize, body: Bytes| {
        let end = start + body.len() - 1;
        Reply::status(206)
            .header("Content-Range", &format!("bytes {start}-{end}/{len}"))
            .header("Content-Type", "application/octet-stream")
            .body(body)
    };
    let blob = Bytes::from(blob);
    let cases = [
        ("206 with wrong bytes", range(half, garbage)),
        ("206 from byte 0", range(0, blob.clone())),
        (
            "206 from a later byte",
            range(half + 100, blob.slice(half + 100..)),
        ),
    ];
    each_case(
        cases,
        |(what, _)| what.to_string(),
        |(what, resume)| {
            let hostile = Hostile::open();
            let digest = hostile.put_layout("app", "latest", &layout);
            let path = format!("/blobs/{layer}");
            hostile.on(
                Some("GET"),
                &path,
                Some(1),
                Reply::status(200)
                    .header("Content-Type", "application/octet-stream")
                    .payload(Payload::Cut {
                        bytes: blob.clone(),
                        after: half,
                    }),
            );
            hostile.on(Some("GET"), &path, Some(1), resume);
            let sandbox = Sandbox::new();
            let run = sandbox.get(&json!({
                "source": {"repository": hostile.repo("app")},
                "version": {"digest": digest},
            }));
            let written = read_if_there(&sandbox.dest().join("rootfs/big.bin"));
            match expect_clean_end(what, &run, &[]) {
                Some(_) => assert!(
                    written.as_ref() == Some(&content),
                    "{what}: succeeded with wrong content"
                ),
                None => assert!(
                    written.is_none() || written.as_ref() == Some(&content),
                    "{what}: failed but left a wrong rootfs/big.bin"
                ),
            }
            let resumed = hostile
                .seen()
                .iter()
                .filter(|r| r.path().ends_with(&layer) && r.header("range").is_some())
                .count();
            assert!(resumed > 0, "{what}: the download was not resumed");
            sandbox.assert_nothing_outside_dest(what);
        },
    );
}
