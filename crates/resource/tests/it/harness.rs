//! Tests of the harness itself: if these fail, nothing else in this binary means anything.

use std::io::Read as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::image::{self, sha256, tar_bytes, Compression, ARM_V7};
use crate::common::{
    self, block_on, registries, token, Entry, Fault, FaultProxy, Flavour, ImageBuilder,
    IndexBuilder, AMD64, ARM64,
};

#[test]
fn every_flavour_starts_and_keeps_the_built_digest() {
    let r = registries();
    assert!(
        r.startup < Duration::from_secs(10),
        "start-up took {:?}",
        r.startup
    );
    for registry in r.all() {
        let repo = common::unique(&format!("harness-{}", registry.flavour.name()));
        let layout = ImageBuilder::marked(&repo).layout();
        let pushed = registry.push(&layout, &format!("{repo}:1.0"));
        assert_eq!(pushed, layout.built.digest, "{:?}", registry.flavour);
        assert_eq!(
            registry.skopeo_digest(&format!("{repo}:1.0")),
            layout.built.digest,
            "{:?}",
            registry.flavour
        );
        // By digest too, and the bytes are the builder's.
        assert_eq!(
            registry.skopeo_raw(&format!("{repo}@{pushed}")),
            layout.built.manifest
        );
    }
}

#[test]
fn each_flavour_demands_what_it_should() {
    let r = registries();
    let status = |client: &reqwest::Client, url: String| {
        block_on(async { client.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    let anonymous = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(status(&anonymous, r.plain.url("/v2/")).unwrap(), 200);
    assert_eq!(status(&r.basic.client(), r.basic.url("/v2/")).unwrap(), 401);
    assert_eq!(status(&r.token.client(), r.token.url("/v2/")).unwrap(), 401);
    let challenge = block_on(async {
        r.token
            .client()
            .get(r.token.url("/v2/"))
            .send()
            .await
            .unwrap()
            .headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string()
    });
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(&r.token_server.realm()),
        "{challenge}"
    );
    // TLS: trusted with the CA; without it the handshake fails.
    assert_eq!(status(&r.tls.client(), r.tls.url("/v2/")).unwrap(), 200);
    assert!(status(&anonymous, r.tls.url("/v2/")).is_err());
    // mTLS: with the client certificate fine; with only the CA refused.
    assert_eq!(status(&r.mtls.client(), r.mtls.url("/v2/")).unwrap(), 200);
    let ca_only = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(r.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(status(&ca_only, r.mtls.url("/v2/")).is_err());

    // What tests embed in `source`.
    let tls = r.tls.source("a/b", "x");
    assert_eq!(tls["ca_certs"][0]["domain"], json!(r.tls.host));
    assert_eq!(tls["ca_certs"][0]["cert"], json!(r.ca_pem));
    let mtls = r.mtls.source("a/b", "x");
    assert_eq!(mtls["client_certs"][0]["key"], json!(r.client_key_pem));
    assert_eq!(
        r.basic.source("a", "b")["password"],
        json!(common::PASSWORD)
    );
    assert!(r.plain.source("a", "b").get("ca_certs").is_none());
    for path in [
        r.mtls.ca_cert_path.as_ref().unwrap(),
        r.mtls.client_cert_path.as_ref().unwrap(),
        r.mtls.client_key_path.as_ref().unwrap(),
        &r.bundle_with_ca,
        &r.other_ca_path,
    ] {
        assert!(path.is_file(), "{}", path.display());
    }
    let bundle = std::fs::read_to_string(&r.bundle_with_ca).unwrap();
    assert!(bundle.ends_with(&r.ca_pem) || bundle.contains(&r.ca_pem));
    assert_ne!(r.other_ca_pem, r.ca_pem);
    assert_ne!(r.unrelated_ca_pem(), r.ca_pem);
}

#[test]
fn a_multi_arch_index_keeps_its_digest() {
    let reg = &registries().plain;
    let repo = common::unique("harness-index");
    let index = IndexBuilder::platforms("harness", &[AMD64, ARM64, ARM_V7]);
    let layout = index.layout();
    let pushed = reg.push(&layout, &format!("{repo}:multi"));
    assert_eq!(pushed, layout.built.digest);
    assert_eq!(reg.skopeo_digest(&format!("{repo}:multi")), pushed);
    let raw: Value = serde_json::from_slice(&reg.skopeo_raw(&format!("{repo}:multi"))).unwrap();
    assert_eq!(raw["mediaType"], json!(image::OCI_INDEX));
    let platforms: Vec<Value> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"].clone())
        .collect();
    assert_eq!(
        platforms,
        [AMD64.json(), ARM64.json(), ARM_V7.json()],
        "{raw}"
    );
    // Every image made it, under its own digest.
    for platform in [AMD64, ARM64, ARM_V7] {
        let child = layout.built.for_platform(platform);
        assert_eq!(
            reg.skopeo_digest(&format!("{repo}@{}", child.digest)),
            child.digest
        );
    }
    // The older spelling pushes the same bytes.
    let again = reg.push_index(
        &[
            ImageBuilder::marked("harness linux/amd64").platform(AMD64),
            ImageBuilder::marked("harness linux/arm64/v8").platform(ARM64),
            ImageBuilder::marked("harness linux/arm/v7").platform(ARM_V7),
        ],
        &format!("{repo}:again"),
    );
    assert_eq!(again, pushed);
}

#[test]
fn a_layout_directory_pushes_and_v2s2_converts() {
    let reg = &registries().plain;
    let repo = common::unique("harness-layout");
    let dir = tempfile::tempdir().unwrap();
    let built = ImageBuilder::marked("dir").write_layout(dir.path(), "whatever");
    assert_eq!(reg.push(dir.path(), &format!("{repo}:dir")), built.digest);

    let docker = reg.push_v2s2(&ImageBuilder::marked("dir"), &format!("{repo}:docker"));
    assert_ne!(docker, built.digest);
    assert_eq!(reg.skopeo_digest(&format!("{repo}:docker")), docker);
    let raw: Value = serde_json::from_slice(&reg.skopeo_raw(&format!("{repo}:docker"))).unwrap();
    assert_eq!(raw["mediaType"], json!(image::DOCKER_MANIFEST));
    // Same layer blob, only the manifest and config media types changed.
    assert_eq!(raw["layers"][0]["digest"], json!(built.layers[0].digest));

    // An OCI index becomes a Docker manifest list.
    let list = reg.push_v2s2(
        &IndexBuilder::platforms("v2s2", &[AMD64, ARM64]),
        &format!("{repo}:list"),
    );
    assert_eq!(reg.skopeo_digest(&format!("{repo}:list")), list);
    let raw: Value = serde_json::from_slice(&reg.skopeo_raw(&format!("{repo}:list"))).unwrap();
    assert_eq!(raw["mediaType"], json!(image::DOCKER_LIST));
    assert_eq!(raw["manifests"][1]["platform"], ARM64.json());
}

#[test]
fn delete_makes_a_digest_disappear() {
    let reg = &registries().token;
    let repo = common::unique("harness-delete");
    let first = reg.push(&ImageBuilder::marked("first"), &format!("{repo}:latest"));
    let second = reg.push(&ImageBuilder::marked("second"), &format!("{repo}:latest"));
    assert!(reg.exists(&format!("{repo}@{first}")));
    reg.delete(&repo, &first);
    assert!(!reg.exists(&format!("{repo}@{first}")));
    assert_eq!(reg.skopeo_digest(&format!("{repo}:latest")), second);
}

#[test]
fn the_token_server_counts_and_bad_credentials_are_refused() {
    let r = registries();
    let reg = &r.token;
    let repo = common::unique("harness-token");
    let before = r.token_server.request_count();
    reg.push(&ImageBuilder::marked("t"), &format!("{repo}:latest"));
    assert!(r.token_server.request_count() > before);
    assert!(r.token_server.requests_for(&repo) >= 1);

    let before = r.token_server.request_count();
    let refused = common::skopeo_output(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("--creds={}:wrong", common::USER),
        format!("docker://{}/{repo}:latest", reg.host),
    ]);
    assert!(!refused.status.success());
    assert!(r.token_server.request_count() > before);
    let log = r.token_server.log();
    assert!(log
        .iter()
        .any(|t| t.status == 401 && t.scopes.iter().any(|s| s.contains(&repo))));

    // The token endpoint directly: credentials, anonymous, denied prefixes.
    let get = |creds: Option<(&str, &str)>, scope: &str| {
        block_on(async {
            let mut req = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(r.token_server.realm())
                .query(&[("service", token::SERVICE), ("scope", scope)]);
            if let Some((u, p)) = creds {
                req = req.basic_auth(u, Some(p));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or_default())
        })
    };
    let scope = format!("repository:{repo}:pull,push");
    let (status, body) = get(Some((common::USER, common::PASSWORD)), &scope);
    assert_eq!(status, 200);
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], json!(token::EXPIRES_IN));
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let (header, claims) = token::decode_jwt(body["token"].as_str().unwrap());
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["x5c"].as_array().unwrap().len(), 1);
    assert_eq!(claims["aud"], token::SERVICE);
    assert_eq!(claims["iss"], token::ISSUER);
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": repo, "actions": ["pull", "push"]}])
    );
    assert_eq!(get(Some((common::USER, "nope")), &scope).0, 401);
    let (_, anonymous) = get(None, &scope);
    assert_eq!(
        token::decode_jwt(anonymous["token"].as_str().unwrap()).1["access"],
        json!([])
    );
    let (_, public) = get(None, "repository:public/x:pull,push");
    assert_eq!(
        token::decode_jwt(public["token"].as_str().unwrap()).1["access"],
        json!([{"type": "repository", "name": "public/x", "actions": ["pull"]}])
    );
    let (_, denied) = get(
        Some((common::USER, common::PASSWORD)),
        "repository:forbidden/x:pull",
    );
    assert_eq!(
        token::decode_jwt(denied["token"].as_str().unwrap()).1["access"],
        json!([])
    );
}

/// GET with an Accept header naming OCI media types: distribution 2.8 answers 404 to a GET
/// of an OCI manifest whose Accept does not.
fn plain_get(url: &str) -> Result<(u16, Vec<u8>), reqwest::Error> {
    block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let resp = client
            .get(url)
            .header(
                "accept",
                format!("{}, {}", image::OCI_MANIFEST, image::OCI_INDEX),
            )
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    })
}

#[test]
fn the_fault_proxy_injects_a_503_once_and_records_requests() {
    let reg = &registries().plain;
    let repo = common::unique("harness-proxy");
    let digest = reg.push(&ImageBuilder::marked("p"), &format!("{repo}:latest"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.add("/manifests/", Some("GET"), 1, Fault::status(503));
    let url = format!("http://{}/v2/{repo}/manifests/latest", proxy.host());
    assert_eq!(plain_get(&url).unwrap().0, 503);
    let (status, body) = plain_get(&url).unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), digest);
    assert_eq!(proxy.count("/manifests/"), 2);
    assert_eq!(proxy.count_method(Some("HEAD"), "/manifests/"), 0);
    let seen = proxy.seen();
    assert_eq!(seen[0].status, Some(503));
    assert!(matches!(seen[0].fault, Some(Fault::Status(503, ..))));
    assert_eq!(seen[1].status, Some(200));
    assert_eq!(seen[1].path(), format!("/v2/{repo}/manifests/latest"));
    assert!(seen[1].header("host").is_some());
    assert_eq!(proxy.pending_faults(), 0);
}

#[test]
fn the_fault_proxy_resets_and_truncates() {
    let reg = &registries().plain;
    let repo = common::unique("harness-cut");
    let big: Vec<u8> = (0..1_000_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let layout = ImageBuilder::new()
        .layer_uncompressed(vec![Entry::file("big.bin", big)])
        .layout();
    reg.push(&layout, &format!("{repo}:latest"));
    let layer = &layout.built.layers[0];
    let proxy = FaultProxy::start(&reg.host);
    let url = format!("http://{}/v2/{repo}/blobs/{}", proxy.host(), layer.digest);

    proxy.add("/blobs/", None, 1, Fault::Reset);
    assert!(plain_get(&url).is_err());
    assert_eq!(proxy.seen()[0].status, None);

    // Truncation: the full Content-Length, exactly the first K bytes, then the end.
    proxy.add("/blobs/", None, 1, Fault::Truncate(100_000));
    let mut stream = std::net::TcpStream::connect(proxy.host()).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!(
            "GET /v2/{repo}/blobs/{} HTTP/1.1\r\nHost: {}\r\n\r\n",
            layer.digest,
            proxy.host()
        )
        .as_bytes(),
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(
        head.contains(&format!("content-length: {}", layer.size)),
        "{head}"
    );
    assert_eq!(raw.len() - split, 100_000);
    assert_eq!(
        raw[split..],
        std::fs::read(reg.blob_path(&layer.digest)).unwrap()[..100_000]
    );

    // And then it works again, in full.
    let (status, body) = plain_get(&url).unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), layer.digest);
}

#[test]
fn the_fault_proxy_streams_a_push_and_names_itself_in_locations() {
    let reg = &registries().plain;
    let repo = common::unique("harness-through");
    let proxy = FaultProxy::start(&reg.host);
    // A few MB of incompressible-ish data, pushed by skopeo through the proxy.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..4_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let image = ImageBuilder::new().layer(vec![Entry::file("noise", noise)]);
    let layout = image.layout();
    let via_proxy = common::skopeo_output(&[
        "copy".into(),
        "--quiet".into(),
        "--preserve-digests".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:latest", layout.path().display()),
        format!("docker://{}/{repo}:latest", proxy.host()),
    ]);
    assert!(
        via_proxy.status.success(),
        "{}",
        String::from_utf8_lossy(&via_proxy.stderr)
    );
    assert_eq!(
        reg.skopeo_digest(&format!("{repo}:latest")),
        layout.built.digest
    );
    assert!(proxy.count_method(Some("PUT"), "/manifests/latest") == 1);
    assert!(proxy.count_method(Some("POST"), "/blobs/uploads/") >= 1);

    // Upload sessions come back pointing at the proxy.
    let location = block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", proxy.host()))
            .send()
            .await
            .unwrap()
            .headers()["location"]
            .to_str()
            .unwrap()
            .to_string()
    });
    assert!(
        location.starts_with(&format!("http://{}/", proxy.host())) || location.starts_with('/'),
        "{location}"
    );
    assert!(!location.contains(&reg.host), "{location}");
}

#[test]
fn the_fault_proxy_pages_tag_lists() {
    let reg = &registries().plain;
    let repo = common::unique("harness-tags");
    let layout = ImageBuilder::marked("tags").layout();
    let tags = ["1.0", "1.1", "2.0", "latest", "v3"];
    for tag in tags {
        reg.push(&layout, &format!("{repo}:{tag}"));
    }
    let proxy = FaultProxy::start(&reg.host);
    proxy.limit_tag_pages(Some(2));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut url = format!("http://{}/v2/{repo}/tags/list?n=100", proxy.host());
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let (list, link) = block_on(async {
            let resp = client.get(&url).send().await.unwrap();
            let link = resp
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_string());
            (resp.json::<Value>().await.unwrap(), link)
        });
        pages += 1;
        let page: Vec<String> = serde_json::from_value(list["tags"].clone()).unwrap();
        assert!(page.len() <= 2, "{page:?}");
        all.extend(page);
        let Some(link) = link else { break };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(u, _)| u.to_string())
            .unwrap_or_else(|| panic!("odd Link header: {link}"));
        assert!(next.contains("n=2"), "{next}");
        url = format!("http://{}{next}", proxy.host());
    }
    assert_eq!(all, tags);
    assert_eq!(pages, 3);
    // Without a limit, everything at once (distribution 2.8 ignores n).
    proxy.limit_tag_pages(None);
    let list = block_on(async {
        client
            .get(format!("http://{}/v2/{repo}/tags/list?n=1", proxy.host()))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    assert_eq!(list["tags"].as_array().unwrap().len(), tags.len());
}

#[test]
fn the_image_builder_writes_what_it_was_told() {
    let image = ImageBuilder::new()
        .platform(ARM64)
        .env("A=1")
        .user("1000:1000")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hi"])
        .workdir("/srv")
        .label("org.example", "yes")
        .created("2025-05-05T05:05:05Z")
        .layer(vec![
            Entry::dir("etc"),
            Entry::file("etc/motd", "hi")
                .mode(0o600)
                .owner(7, 8)
                .mtime(1234),
            Entry::symlink("link", "etc/motd"),
            Entry::hardlink("hard", "etc/motd"),
            Entry::fifo("pipe"),
            Entry::char_device("null", 1, 3),
        ])
        .layer_uncompressed(vec![
            Entry::whiteout("etc/motd"),
            Entry::opaque("var/cache"),
            Entry::raw(b"../escape", tar::EntryType::Regular, b"", b"x"),
            Entry::raw(b"/etc/abs", tar::EntryType::Regular, b"", b"y"),
        ])
        .layer_with(vec![Entry::file("z", "zstd")], Compression::Zstd);
    let dir = tempfile::tempdir().unwrap();
    let built = image.write_layout(dir.path(), "t");

    let config = built.config_json();
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "2025-05-05T05:05:05Z");
    assert_eq!(config["config"]["User"], "1000:1000");
    assert_eq!(config["config"]["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(config["config"]["Cmd"], json!(["echo hi"]));
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(config["config"]["Labels"], json!({"org.example": "yes"}));
    assert!(config["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&json!("A=1")));
    assert_eq!(config["rootfs"]["diff_ids"], json!(built.diff_ids()));
    assert_eq!(config["history"].as_array().unwrap().len(), 3);
    assert_eq!(sha256(&built.config), built.config_digest.clone().unwrap());

    let manifest = built.manifest_json();
    assert_eq!(sha256(&built.manifest), built.digest);
    let media: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        media,
        [
            image::OCI_LAYER_GZIP,
            image::OCI_LAYER_TAR,
            image::OCI_LAYER_ZSTD
        ]
    );
    assert_eq!(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].clone())
            .collect::<Vec<_>>(),
        built
            .layer_digests()
            .into_iter()
            .map(Value::from)
            .collect::<Vec<_>>()
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], json!(built.digest));
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "t"
    );
    for layer in &built.layers {
        let path = dir
            .path()
            .join("blobs/sha256")
            .join(layer.digest.trim_start_matches("sha256:"));
        assert_eq!(sha256(&std::fs::read(path).unwrap()), layer.digest);
    }

    // The first layer: metadata as asked.
    let blob = std::fs::read(
        dir.path()
            .join("blobs/sha256")
            .join(built.layers[0].digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob.as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(sha256(&tar), built.layers[0].diff_id);
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut kinds = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let path = entry.path().unwrap().display().to_string();
        if path == "etc/motd" {
            assert_eq!(h.mode().unwrap(), 0o600);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (7, 8));
            assert_eq!(h.mtime().unwrap(), 1234);
        }
        if path == "null" {
            assert_eq!(h.device_major().unwrap(), Some(1));
        }
        kinds.push((path, h.entry_type()));
    }
    use tar::EntryType::*;
    assert_eq!(
        kinds,
        [
            ("etc".to_string(), Directory),
            ("etc/motd".into(), Regular),
            ("link".into(), Symlink),
            ("hard".into(), Link),
            ("pipe".into(), Fifo),
            ("null".into(), Char),
        ]
    );

    // The second: whiteouts, and raw names byte for byte.
    let names: Vec<Vec<u8>> = tar::Archive::new(
        tar_bytes(&[
            Entry::whiteout("etc/motd"),
            Entry::opaque("var/cache"),
            Entry::raw(b"../escape", tar::EntryType::Regular, b"", b"x"),
            Entry::raw(b"/etc/abs", tar::EntryType::Regular, b"", b"y"),
        ])
        .as_slice(),
    )
    .entries()
    .unwrap()
    .map(|e| e.unwrap().path_bytes().into_owned())
    .collect();
    assert_eq!(
        names,
        [
            b"etc/.wh.motd".to_vec(),
            b"var/cache/.wh..wh..opq".to_vec(),
            b"../escape".to_vec(),
            b"/etc/abs".to_vec(),
        ]
    );
}

#[test]
fn one_json_document_means_exactly_one() {
    assert_eq!(common::one_json_document(" [1, 2]\n"), json!([1, 2]));
    for bad in ["", "[1][2]", "{} {}", "[1] x", "nope"] {
        let caught = std::panic::catch_unwind(|| common::one_json_document(bad));
        assert!(caught.is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn the_runner_reports_exit_code_and_streams() {
    // Garbage in: the binary must fail cleanly (exit 1, one error line, empty stdout).
    let err = common::run("check", "not json").failure();
    assert!(err.starts_with("error: "), "{err}");
    // A real request against the plain registry.
    let reg = &registries().plain;
    let repo = common::unique("harness-run");
    let digest = reg.push(&ImageBuilder::marked("run"), &format!("{repo}:latest"));
    let out = common::Run::new("check")
        .stdin_json(&json!({"source": reg.source(&repo, "latest")}))
        .env("DOCKER_CONFIG", common::env_home().display().to_string())
        .timeout(Duration::from_secs(60))
        .run()
        .success();
    assert_eq!(out, json!([{"tag": "latest", "digest": digest}]));
    let _ = Flavour::ALL;
}
