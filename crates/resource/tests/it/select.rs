//! `check` in selection mode (semver, variants, pre-releases, regex, created dates,
//! platforms), tag paging and the request budget, against a real registry.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::common::{self, block_on, check, env, Fault, FaultProxy, Image, Registry, AMD64, ARM64};

/// Points `new_tag` at the manifest `reference` names (a PUT of the same bytes).
fn retag(reg: &Registry, repo: &str, reference: &str, new_tag: &str) {
    let client = reg.client();
    block_on(async {
        let got = client
            .get(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header(
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .unwrap();
        assert!(
            got.status().is_success(),
            "GET {repo}:{reference}: {}",
            got.status()
        );
        let content_type = got.headers()["content-type"].to_str().unwrap().to_string();
        let bytes = got.bytes().await.unwrap();
        let put = client
            .put(reg.url(&format!("/v2/{repo}/manifests/{new_tag}")))
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(
            put.status().is_success(),
            "PUT {repo}:{new_tag}: {}",
            put.status()
        );
    });
}

/// The shared repository: finals, pre-releases, a variant, aliases and noise.
struct Fixture {
    repo: String,
    /// tag → digest for every tag pushed.
    digests: HashMap<String, String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let reg = &env().plain;
        let repo = common::unique("semver");
        let mut digests = HashMap::new();
        for tag in [
            "1.0.0",
            "1.1.0",
            "1.2.0",
            "1.2.1",
            "2.0.0",
            "2.1.0-rc.1",
            "1.2.1-alpine",
            "2.0.0-alpine",
            "2.1.0-rc.1-alpine",
            "2.2.0-dev",
            "main-abc",
            "nightly",
            "latest",
        ] {
            let d = reg.push(
                &Image::marked(&format!("{repo}-{tag}")),
                &format!("{repo}:{tag}"),
            );
            digests.insert(tag.to_string(), d);
        }
        for (alias, of) in [
            ("1", "1.2.1"),
            ("1.2", "1.2.1"),
            ("2", "2.0.0"),
            ("alpine", "2.0.0-alpine"),
        ] {
            retag(reg, &repo, of, alias);
            digests.insert(alias.to_string(), digests[of].clone());
        }
        Fixture { repo, digests }
    })
}

/// `check` with `source` fields added to the fixture's repository; the tags emitted.
fn tags_of(extra: Value, version: Value) -> Vec<String> {
    let f = fixture();
    let mut source = json!({"repository": env().plain.repo(&f.repo)});
    for (k, v) in extra.as_object().unwrap() {
        source[k] = v.clone();
    }
    let out = check(&json!({"source": source, "version": version})).success();
    out.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let tag = v["tag"].as_str().unwrap().to_string();
            assert_eq!(
                v["digest"].as_str().unwrap(),
                f.digests[&tag],
                "digest of {tag}"
            );
            tag
        })
        .collect()
}

/// The tags of `check`'s answer, in order.
fn tags_in(out: &Value) -> Vec<&str> {
    out.as_array()
        .unwrap()
        .iter()
        .map(|v| v["tag"].as_str().unwrap())
        .collect()
}

fn version(tag: &str) -> Value {
    json!({"tag": tag, "digest": fixture().digests[tag]})
}

#[test]
fn constraint() {
    assert_eq!(
        tags_of(json!({"semver_constraint": ">= 1.1 < 2"}), Value::Null),
        ["1.1.0", "1.2.0", "1.2.1"]
    );
    assert_eq!(
        tags_of(json!({"semver_constraint": "~1.2 || ^2"}), Value::Null),
        ["1.2.0", "1.2.1", "2.0.0"]
    );
}

#[test]
fn variant() {
    // `alpine` names 2.0.0-alpine's digest: not appended again.
    assert_eq!(
        tags_of(json!({"variant": "alpine"}), Value::Null),
        ["1.2.1-alpine", "2.0.0-alpine"]
    );
    assert_eq!(
        tags_of(
            json!({"variant": "alpine", "pre_releases": true}),
            Value::Null
        ),
        ["1.2.1-alpine", "2.0.0-alpine", "2.1.0-rc.1-alpine"]
    );
}

#[test]
fn pre_releases_and_latest() {
    // `latest` is a build of its own: appended as the newest; `dev` is not a listed prefix.
    assert_eq!(
        tags_of(json!({"pre_releases": true}), Value::Null),
        [
            "1.0.0",
            "1.1.0",
            "1.2.0",
            "1.2.1",
            "2.0.0",
            "2.1.0-rc.1",
            "latest"
        ]
    );
    // `pre_release_prefixes` adds to alpha, beta and rc (registry-image-resource's check.go).
    assert_eq!(
        tags_of(
            json!({"pre_releases": true, "pre_release_prefixes": ["dev"], "semver_constraint": ">=2"}),
            Value::Null
        ),
        ["2.0.0", "2.1.0-rc.1", "2.2.0-dev"]
    );
}

#[test]
fn cursor_in_the_middle() {
    assert_eq!(
        tags_of(json!({"pre_releases": true}), version("1.2.0")),
        ["1.2.0", "1.2.1", "2.0.0", "2.1.0-rc.1", "latest"]
    );
    assert_eq!(
        tags_of(json!({"semver_constraint": "*"}), version("2.0.0")),
        ["2.0.0"]
    );
    // A cursor whose tag is gone: what is newer.
    assert_eq!(
        tags_of(
            json!({"semver_constraint": "*"}),
            json!({"tag": "1.1.5", "digest": fixture().digests["1.0.0"]})
        ),
        ["1.2.0", "1.2.1", "2.0.0"]
    );
}

#[test]
fn regex_with_version_capture_and_noise() {
    let reg = &env().plain;
    let repo = common::unique("regex");
    let mut digests = HashMap::new();
    for tag in [
        "main-0a1b2c-20240102030405",
        "main-ffeedd-9",
        "main-123abc-20231231235959",
        "feature-0a1b2c-20250101000000",
        "latest",
    ] {
        digests.insert(tag, reg.push(&Image::marked(tag), &format!("{repo}:{tag}")));
    }
    let out = check(&json!({"source": {
        "repository": reg.repo(&repo),
        "tag_regex": r"main-[0-9a-f]+-(?P<version>\d+)",
    }}))
    .success();
    let tags = tags_in(&out);
    assert_eq!(
        tags,
        [
            "main-ffeedd-9",
            "main-123abc-20231231235959",
            "main-0a1b2c-20240102030405"
        ]
    );
    assert_eq!(out[2]["digest"], digests["main-0a1b2c-20240102030405"]);
}

#[test]
fn numeric_tags_longer_than_twenty_digits() {
    let reg = &env().plain;
    let repo = common::unique("numeric");
    for tag in [
        "5",
        "99999999999999999999",
        "123456789012345678901234567",
        "123456789012345678901234568",
    ] {
        reg.push(&Image::marked(tag), &format!("{repo}:{tag}"));
    }
    let out =
        check(&json!({"source": {"repository": reg.repo(&repo), "tag_regex": r"\d+"}})).success();
    let tags = tags_in(&out);
    assert_eq!(
        tags,
        [
            "5",
            "99999999999999999999",
            "123456789012345678901234567",
            "123456789012345678901234568"
        ]
    );
}

#[test]
fn created_date_order_and_signature_tags() {
    let reg = &env().plain;
    let repo = common::unique("created");
    for (tag, created) in [
        ("alpha", "2024-03-01T00:00:00Z"),
        ("bravo", "2024-01-01T00:00:00Z"),
        ("charlie", "2024-02-01T10:00:00+02:00"),
    ] {
        reg.push(
            &Image::marked(tag).created(created),
            &format!("{repo}:{tag}"),
        );
    }
    let sig = format!("sha256-{}.sig", "ab".repeat(32));
    reg.push(&Image::marked("signature"), &format!("{repo}:{sig}"));
    let out = check(&json!({"source": {
        "repository": reg.repo(&repo),
        "tag_regex": "[a-z0-9.-]+",
        "created_at_sort": true,
    }}))
    .success();
    let tags = tags_in(&out);
    assert_eq!(tags, ["bravo", "charlie", "alpha"]);
}

#[test]
fn only_tags_with_the_platform() {
    let reg = &env().plain;
    let repo = common::unique("platforms");
    let both = reg.push_index(
        &[
            Image::marked("both").platform(AMD64),
            Image::marked("both").platform(ARM64),
        ],
        &format!("{repo}:1.0.0"),
    );
    reg.push(
        &Image::marked("amd").platform(AMD64),
        &format!("{repo}:1.1.0"),
    );
    let arm = reg.push(
        &Image::marked("arm").platform(ARM64),
        &format!("{repo}:1.2.0"),
    );
    let out = check(&json!({"source": {
        "repository": reg.repo(&repo),
        "semver_constraint": "*",
        "platform": {"os": "linux", "architecture": "arm64"},
    }}))
    .success();
    assert_eq!(
        out,
        json!([{"tag": "1.0.0", "digest": both}, {"tag": "1.2.0", "digest": arm}])
    );
}

#[test]
fn paging_returns_every_tag_and_steps_down_a_refused_size() {
    let reg = &env().plain;
    let repo = common::unique("paging");
    reg.push(&Image::marked("paging"), &format!("{repo}:1.0.0"));
    for i in 1..250 {
        retag(reg, &repo, "1.0.0", &format!("1.0.{i}"));
    }
    let last = reg.push(&Image::marked("paging-last"), &format!("{repo}:1.0.250"));
    // The greatest tag as text, so on the proxy's last page (lost if that page is), and the
    // newest version, so within the first check's budget of digests.
    let on_last_page = reg.push(&Image::marked("paging-2"), &format!("{repo}:2.0.0"));
    let proxy = FaultProxy::start(&reg.host);
    proxy.limit_tag_pages(Some(100));
    proxy.add(
        "tags/list?n=1000",
        Some("GET"),
        1,
        Fault::status_json(400, "PAGINATION_NUMBER_INVALID", "n must be at most 100"),
    );
    let run =
        check(&json!({"source": {"repository": proxy.repo(&repo), "semver_constraint": "*"}}));
    let out = run.success();
    // 252 candidates are over the per-check budget of digests; the newest are asked about.
    assert!(
        run.stderr
            .contains("252 matching tags; looking at the newest 100 only"),
        "{}",
        run.stderr
    );
    // 1.0.0 … 1.0.249 share a digest (the newest of them names it); 1.0.250 and 2.0.0 have
    // their own.
    let tags = tags_in(&out);
    assert_eq!(tags, ["1.0.249", "1.0.250", "2.0.0"]);
    assert_eq!(out[1]["digest"], last.as_str());
    assert_eq!(out[2]["digest"], on_last_page.as_str());
    let pages = proxy.count("/tags/list");
    assert_eq!(
        pages,
        1 + 3,
        "one refused page, then three of 100: {:?}",
        proxy.seen()
    );
}

#[test]
fn every_page_is_read_past_the_old_100_page_budget() {
    let reg = &env().plain;
    let repo = common::unique("page-budget");
    reg.push(&Image::marked("page-budget"), &format!("{repo}:1.0.0"));
    for i in 1..=99 {
        retag(reg, &repo, "1.0.0", &format!("1.0.{i}"));
    }
    // One tag a page: 101 tags take 101 pages, one more than the page budget that used to
    // end the listing (and drop the newest, 1.0.100, the last listed).
    let newest = reg.push(
        &Image::marked("page-budget-newest"),
        &format!("{repo}:1.0.100"),
    );
    let proxy = FaultProxy::start(&reg.host);
    proxy.limit_tag_pages(Some(1));
    let run =
        check(&json!({"source": {"repository": proxy.repo(&repo), "semver_constraint": "*"}}));
    let out = run.success();
    assert_eq!(proxy.count("/tags/list"), 101, "{:?}", proxy.seen());
    assert_eq!(tags_in(&out), ["1.0.99", "1.0.100"], "{}", run.stderr);
    assert_eq!(out[1]["digest"], newest.as_str());
}

#[test]
fn up_to_date_check_with_a_cursor_is_cheap() {
    let f = fixture();
    let reg = &env().plain;
    let proxy = FaultProxy::start(&reg.host);
    let request = json!({
        "source": {"repository": proxy.repo(&f.repo), "pre_releases": true},
        "version": version("latest"),
    });
    let out = check(&request).success();
    assert_eq!(out, json!([version("latest")]));
    let seen = proxy.seen();
    assert!(seen.len() <= 5, "{} requests: {seen:?}", seen.len());

    proxy.clear();
    let request = json!({
        "source": {"repository": proxy.repo(&f.repo), "semver_constraint": "*"},
        "version": version("2.0.0"),
    });
    assert_eq!(check(&request).success(), json!([version("2.0.0")]));
    let seen = proxy.seen();
    assert!(seen.len() <= 5, "{} requests: {seen:?}", seen.len());
}

#[test]
fn invalid_selection_fields_name_the_field() {
    let reg = &env().plain;
    for (field, value) in [
        ("tag_regex", json!("main-(")),
        ("tag_exclude_regex", json!("[")),
        ("semver_constraint", json!(">= one")),
        ("semver_constraint", json!("!=1.2")),
        ("variant", json!("-alpine")),
    ] {
        let mut source = json!({"repository": reg.repo("nothing-here"), "tag_regex": ".*"});
        source[field] = value;
        let err = check(&json!({"source": source})).failure();
        assert!(
            err.starts_with(&format!("error: source.{field}:")),
            "{field}: {err}"
        );
    }
}

#[test]
fn missing_repository_in_selection_mode() {
    let reg = &env().plain;
    let source =
        json!({"repository": reg.repo(&common::unique("absent")), "semver_constraint": "*"});
    assert_eq!(
        check(&json!({"source": source.clone()})).success(),
        json!([])
    );
    let mut strict = source;
    strict["fail_when_missing"] = json!(true);
    let err = check(&json!({"source": strict})).failure();
    assert!(err.contains("repository not found"), "{err}");
}
