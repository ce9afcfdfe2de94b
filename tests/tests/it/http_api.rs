//! The HTTP API over a real socket: `/manifest.json` parses, has every field the manifest
//! format asks for, and every endpoint it lists is served (and nothing else is); errors are
//! 400 / 401 / 404 with a JSON message.

use std::net::SocketAddr;
use std::time::Duration;

use hivemesh_node::api_client::{ApiResponse, request};
use hivemesh_node::daemon::Event;
use hivemesh_tests::{API_TOKEN, TempDir, serve_api, start_node, test_config, wait_for};

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> ApiResponse {
    request(addr, method, path, headers, body.as_bytes())
        .await
        .expect("api answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_lists_exactly_the_served_endpoints() {
    let dirs = [TempDir::new("http0"), TempDir::new("http1")];
    let mut a = start_node(0, test_config(dirs[0].path())).await;
    let mut cfg = test_config(dirs[1].path());
    cfg.bootstrap = a.addrs.clone();
    let b = start_node(1, cfg).await;
    // B goes on the roster once it proved it speaks hivemesh (identify).
    wait_for(&mut a.events, Duration::from_secs(30), |e| {
        matches!(e, Event::SpeaksHivemesh(p) if *p == b.client.peer_id()).then_some(())
    })
    .await;

    let addr = serve_api(a.client.clone()).await;
    let token = API_TOKEN;

    let auth = format!("Bearer {token}");
    let id = submit_checks(addr, &auth).await;
    blob_checks(addr, &auth).await;
    manifest_checks(addr, &id).await;
    unlisted_checks(addr).await;
    block_checks(addr, &auth, &mut a, &b).await;
    b.stop().await;
    a.stop().await;
}

/// Submitting a campaign (roster: A and its connected peer B) needs the token and a valid
/// file; the campaign's id, so {id} endpoints have one.
async fn submit_checks(addr: SocketAddr, auth: &str) -> String {
    // Submit a campaign (roster: A and its connected peer B), so {id} endpoints have one.
    let toml = "name = \"api test\"\nredundancy = 2\n[nas]\npopulation = 2\ngenerations = 1\n[budget]\nmax_steps = 5\n";
    let r = call(addr, "POST", "/campaigns", &[], toml).await;
    assert_eq!(r.status, 401, "no token: {}", r.text());
    let r = call(
        addr,
        "POST",
        "/campaigns",
        &[("Authorization", "Bearer wrong")],
        toml,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = call(
        addr,
        "POST",
        "/campaigns",
        &[("Authorization", auth)],
        "name = 1",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("campaign file"),
        "{}",
        r.error_message()
    );
    let r = call(addr, "POST", "/campaigns", &[("Authorization", auth)], toml).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let id = id["id"].as_str().expect("id").to_string();
    let campaign: serde_json::Value = serde_json::from_slice(
        &call(addr, "GET", &format!("/campaigns/{id}"), &[], "")
            .await
            .body,
    )
    .expect("json");
    assert_eq!(
        campaign["members"], 2,
        "roster = A + connected B: {campaign}"
    );

    id
}

async fn blob_checks(addr: SocketAddr, auth: &str) {
    unauthenticated_upload_is_refused_before_its_body(addr).await;
    // Blobs: storing needs the token; what is stored comes back; a blob nobody holds is a 404
    // after asking the peers.
    let r = call(addr, "POST", "/blobs", &[], "teacher weights").await;
    assert_eq!(r.status, 401, "no token: {}", r.text());
    let r = call(
        addr,
        "POST",
        "/blobs",
        &[("Authorization", auth)],
        "teacher weights",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let blob: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(blob["bytes"], 15);
    let blob = blob["id"].as_str().expect("id").to_string();
    assert_eq!(
        blob,
        hivemesh_protocol::BlobId::of_bytes(b"teacher weights").to_string()
    );
    let r = call(addr, "GET", &format!("/blobs/{blob}"), &[], "").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"teacher weights"[..])
    );
    let r = call(
        addr,
        "GET",
        &format!("/blobs/{}?fetch=true", "ab".repeat(32)),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(
        r.error_message().contains("no peer"),
        "{}",
        r.error_message()
    );
}

/// `/manifest.json` has every field the manifest format asks for, and every GET it lists is
/// served.
async fn manifest_checks(addr: SocketAddr, id: &str) {
    let r = call(addr, "GET", "/manifest.json", &[], "").await;
    assert_eq!(r.status, 200);
    let m: serde_json::Value = serde_json::from_slice(&r.body).expect("manifest is JSON");
    for k in [
        "name",
        "short_name",
        "version",
        "license",
        "author",
        "endpoints",
    ] {
        assert!(m.get(k).is_some(), "manifest lacks {k}");
    }
    let endpoints = m["endpoints"].as_array().expect("endpoints");
    assert!(endpoints.len() >= 8);
    for e in endpoints {
        for k in [
            "uri",
            "input_methods",
            "input_query",
            "input_headers",
            "input_body",
            "output",
            "documentation",
            "example_calls",
        ] {
            assert!(e.get(k).is_some(), "endpoint {e} lacks {k}");
        }
        // A front entry that no front has (99) of a real export file: a 404 that says why.
        let uri = e["uri"]
            .as_str()
            .expect("uri")
            .replace("{id}", id)
            .replace("{k}/{file}", "99/model.py");
        for c in e["example_calls"].as_array().expect("examples") {
            for k in ["method", "query", "headers", "body", "output"] {
                assert!(c.get(k).is_some(), "example {c} lacks {k}");
            }
        }
        for method in e["input_methods"].as_array().expect("methods") {
            let method = method.as_str().expect("method");
            if method != "GET" {
                continue; // POSTs are exercised above
            }
            let r = call(addr, method, &uri, &[], "").await;
            // /blobs/{id} with a campaign id is a well-formed id of a blob not held: 404 with a
            // JSON reason, not the router's "no such endpoint".
            if uri.starts_with("/blobs/") {
                assert_eq!(r.status, 404);
                assert!(
                    r.error_message().contains("not held"),
                    "{}",
                    r.error_message()
                );
            } else if uri.ends_with("/best/99/model.py") {
                assert_eq!(r.status, 404);
                assert!(
                    r.error_message().contains("front has"),
                    "{}",
                    r.error_message()
                );
            } else {
                assert_eq!(r.status, 200, "{method} {uri}: {}", r.text());
            }
        }
    }
}

async fn unlisted_checks(addr: SocketAddr) {
    // Not listed, not served.
    let r = call(addr, "GET", "/nope", &[], "").await;
    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("manifest"));
    let r = call(addr, "GET", "/campaigns/not-hex", &[], "").await;
    assert_eq!(r.status, 400);
    // Errors axum makes itself are JSON too (405 had no body, 413 was plain text).
    let r = call(addr, "DELETE", "/status", &[], "").await;
    assert_eq!(r.status, 405);
    assert!(r.error_message().contains("/manifest.json"), "{}", r.text());
    let r = call(addr, "PUT", "/campaigns", &[], "").await;
    assert_eq!(r.status, 405);
    let json: serde_json::Value = serde_json::from_slice(&r.body).expect("a JSON body");
    assert!(json["error"].is_string(), "{json}");
    let r = call(
        addr,
        "GET",
        &format!("/campaigns/{}", "0".repeat(64)),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    let metrics = call(addr, "GET", "/metrics", &[], "").await.text();
    assert!(metrics.contains("hivemesh_peers 1"), "{metrics}");
    assert!(
        metrics.contains("hivemesh_blob_fetches_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

async fn block_checks(
    addr: SocketAddr,
    auth: &str,
    a: &mut hivemesh_tests::TestNode,
    b: &hivemesh_tests::TestNode,
) {
    // An oversized body is refused before it is buffered, with a JSON error.
    let r = call(
        addr,
        "POST",
        "/peers/dial",
        &[("Authorization", auth)],
        &"x".repeat(4096),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let json: serde_json::Value = serde_json::from_slice(&r.body).expect("a JSON body");
    assert!(
        json["error"].as_str().is_some_and(|e| e.contains("limit")),
        "{json}"
    );
    // Blocking a peer (token needed) disconnects it; unblocking and dialing connects again.
    let b_id = b.client.peer_id().to_string();
    let block = format!("/peers/{b_id}/block");
    let r = call(addr, "POST", &block, &[], "").await;
    assert_eq!(r.status, 401, "no token: {}", r.text());
    let r = call(
        addr,
        "POST",
        "/peers/not-a-peer/block",
        &[("Authorization", auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("peer id"),
        "{}",
        r.error_message()
    );
    let r = call(addr, "POST", &block, &[("Authorization", auth)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        (v["peer"].as_str(), v["blocked"].as_bool()),
        (Some(b_id.as_str()), Some(true))
    );
    wait_for(&mut a.events, Duration::from_secs(30), |e| {
        matches!(e, Event::Disconnected(p) if *p == b.client.peer_id()).then_some(())
    })
    .await;
    let r = call(addr, "DELETE", &block, &[("Authorization", auth)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        addr,
        "POST",
        "/peers/dial",
        &[("Authorization", auth)],
        "not an address",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("multiaddr"),
        "{}",
        r.error_message()
    );
    let r = call(
        addr,
        "POST",
        "/peers/dial",
        &[("Authorization", auth)],
        &b.addrs[0].to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(&mut a.events, Duration::from_secs(30), |e| {
        matches!(e, Event::Connected(p) if *p == b.client.peer_id()).then_some(())
    })
    .await;
}

/// A stranger's upload is refused from its head: the 401 comes back while the announced
/// 250 MB body (under the blob limit, so only the token can refuse it) has not been sent. A
/// node that read the body first would wait for it, and the read below would time out.
async fn unauthenticated_upload_is_refused_before_its_body(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"POST /blobs HTTP/1.1\r\nHost: node\r\nContent-Length: 250000000\r\n\r\npartial")
        .await
        .expect("send the head");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
        .await
        .expect("the node answers before the body arrives")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("Authorization: Bearer"), "{head}");
}

/// A write failure (a full disk, injected) does not poison the node: `/status` still answers
/// 200 but names the error, `/metrics` counts it, and writes succeed again once space returns,
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_in_status_and_metrics_and_writes_resume_when_space_returns() {
    let dir = TempDir::new("httpfull");
    let faults = hivemesh_node::store::StoreFaults::default();
    let mut cfg = test_config(dir.path());
    cfg.store_faults = faults.clone();
    let a = start_node(0, cfg).await;
    let addr = serve_api(a.client.clone()).await;
    let token = API_TOKEN;
    let auth = format!("Bearer {token}");
    let status = || async {
        let r = call(addr, "GET", "/status", &[], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")
    };
    assert_eq!(status().await["store_error"], serde_json::Value::Null);

    faults.set_disk_full(true);
    let r = call(addr, "POST", "/blobs", &[("Authorization", &auth)], "one").await;
    assert_ne!(r.status, 201, "nothing is acknowledged that was not stored");
    let s = status().await;
    assert!(
        s["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "{s}"
    );
    let r = call(addr, "GET", "/metrics", &[], "").await;
    let failures: f64 = r
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("hivemesh_store_write_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the failure counter is exported");
    assert!(failures >= 1.0, "{}", r.text());

    faults.set_disk_full(false);
    let r = call(addr, "POST", "/blobs", &[("Authorization", &auth)], "one").await;
    assert_eq!(
        r.status,
        201,
        "writes resume without a restart: {}",
        r.text()
    );
    assert_eq!(status().await["store_error"], serde_json::Value::Null);
    let r = call(
        addr,
        "GET",
        &format!("/blobs/{}", hivemesh_protocol::BlobId::of_bytes(b"one")),
        &[],
        "",
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"one"[..]));
    a.stop().await;
}

/// An idle connection (no request head) is closed by the API after its header timeout, so
/// idle connections cannot pile up until the node runs out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_api_connection_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new("httpidle");
    let a = start_node(0, test_config(dir.path())).await;
    let addr = serve_api(a.client.clone()).await;
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let guard = hivemesh_node::http::HEADER_TIMEOUT + Duration::from_secs(10);
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(guard, idle.read(&mut buf))
        .await
        .expect("the node closes an idle connection")
        .unwrap_or(0);
    // Closed without a response, or with a 408 before closing.
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    // And it still serves.
    let r = call(addr, "GET", "/status", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    a.stop().await;
}

/// `POST /datasets`: a CSV and the same data as a canonical blob get one id; bad cells are
/// named by file, row and column; an upload over the blob quota is refused (413) and leaves
/// nothing; `GET /blobs/{id}` streams the blob back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_converted_checked_and_limited() {
    let dir = TempDir::new("httpdata");
    let mut cfg = test_config(dir.path());
    cfg.blob_quota = Some(1 << 20);
    let a = start_node(0, cfg).await;
    let addr = serve_api(a.client.clone()).await;
    let auth = format!("Bearer {API_TOKEN}");
    let headers = [("Authorization", auth.as_str())];
    let csv = "f1,f2,kind\n0.5,1,cat\n2,3,dog\n1,1.5,dog\n";
    let r = call(addr, "POST", "/datasets?name=pets.csv", &headers, csv).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        (v["samples"].as_u64(), v["classes"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(v["class_names"], serde_json::json!(["cat", "dog"]));
    let id = v["id"].as_str().expect("id").to_string();
    // The stored blob comes back whole, and posting it as a blob gives the same id.
    let blob = request(addr, "GET", &format!("/blobs/{id}"), &[], b"")
        .await
        .expect("api answers");
    assert_eq!(blob.status, 200);
    assert_eq!(
        hivemesh_protocol::BlobId::of_bytes(&blob.body).to_string(),
        id
    );
    let again = request(addr, "POST", "/datasets?format=blob", &headers, &blob.body)
        .await
        .expect("api answers");
    assert_eq!(again.status, 201, "{}", again.text());
    assert!(again.text().contains(&id), "{}", again.text());
    // Bad input names where it is, and is not stored.
    let r = call(
        addr,
        "POST",
        "/datasets?name=bad.csv",
        &headers,
        "a,b,y\n1,2,0\n3,x,1\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("bad.csv:3:2"), "{}", r.text());
    let r = call(addr, "POST", "/datasets?format=blob", &headers, "HMDS junk").await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Over the 1 MiB quota: refused before anything is written.
    let used = |s: serde_json::Value| s["blob_store"][0].as_u64().expect("used");
    let before = used(status_of(addr).await);
    let big = vec![7u8; 2 << 20];
    let r = request(addr, "POST", "/blobs", &headers, &big)
        .await
        .expect("api answers");
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("full"), "{}", r.text());
    assert_eq!(used(status_of(addr).await), before, "nothing kept");
    a.stop().await;
}

async fn status_of(addr: SocketAddr) -> serde_json::Value {
    let r = call(addr, "GET", "/status", &[], "").await;
    serde_json::from_slice(&r.body).expect("json")
}
