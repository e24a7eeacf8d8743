//! Host/Origin allow-list and the per-IP connection cap, against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, start};
use satsuma_coordinator::Config;
use satsuma_coordinator::config::Budgets;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_origins_outside_the_allow_list_get_403() {
    let server = start(Config {
        budgets: Budgets {
            public_url: Some("https://meet.example.com/".into()),
            ..Budgets::default()
        },
        ..Config::dev()
    })
    .await;
    let base = server.http_url();
    let healthz = format!("{base}/healthz");
    let page = format!("{base}/client-config.json");
    // Probes and backends reach /healthz, /readyz and /metrics by any name (a kubelet's probe
    // says `Host: <podIP>:<port>`).
    assert_eq!(get(&healthz, &[]).await.0, 200);
    assert_eq!(
        get(&format!("{base}/readyz"), &[("host", "10.1.2.3:8080")])
            .await
            .0,
        200
    );
    // The public name passes; another name (DNS rebinding, a direct IP) does not.
    assert_eq!(get(&page, &[("host", "meet.example.com")]).await.0, 200);
    let (status, body) = get(&page, &[]).await;
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "forbidden_origin");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("https://meet.example.com")
    );
    // A page of another origin is refused even with the right Host.
    let (status, _) = get(
        &page,
        &[
            ("host", "meet.example.com"),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        get(
            &page,
            &[
                ("host", "meet.example.com"),
                ("origin", "https://meet.example.com")
            ]
        )
        .await
        .0,
        200
    );
    // A cross-site WebSocket is refused at the upgrade.
    let mut req = server.ws_url("r").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_url_loopback_works_and_other_names_do_not() {
    let server = start(Config::dev()).await;
    let base = server.http_url();
    let page = format!("{base}/client-config.json");
    let port = server.local_addr().port();
    assert_eq!(get(&page, &[]).await.0, 200);
    let origin = format!("http://localhost:{port}");
    assert_eq!(get(&page, &[("origin", origin.as_str())]).await.0, 200);
    assert_eq!(get(&page, &[("host", "attacker.example")]).await.0, 403);
    // A join from the page's origin works.
    let mut alice = Client::join(&server, "r", "alice").await;
    alice.sync().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped() {
    let server = start(Config {
        budgets: Budgets {
            max_connections_per_ip: 3,
            trust_forwarded_for: true,
            ..Budgets::default()
        },
        ..Config::dev()
    })
    .await;
    let connect = |ip: &'static str| {
        let mut req = server.ws_url("r").into_client_request().unwrap();
        req.headers_mut().insert(
            "x-forwarded-for",
            format!("10.9.9.9, {ip}").parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req)
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect("203.0.113.7").await.unwrap().0);
    }
    let err = connect("203.0.113.7").await.unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    // Another address is not affected.
    let other = connect("203.0.113.8").await.unwrap().0;
    // A closed connection frees its place.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let t0 = std::time::Instant::now();
    loop {
        match connect("203.0.113.7").await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(10),
                    "the place was never freed: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    drop(other);
    server.shutdown().await;
}
