//! Abuse reproduction (issue 11): one WebSocket that never reads, flooding KeyPackages that
//! come back to it, is closed with 4430 once it holds its send budget (1 MiB), and the
//! process (the coordinator runs in it; this test is alone in its binary) does not grow with
//! the flood. A bystander that reads is never closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Client, start};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use satsuma_coordinator::Config;
use satsuma_coordinator::config::Budgets;
use satsuma_coordinator::protocol::{KIND_KEY_PACKAGE, ServerMessage, close};
use tokio_tungstenite::tungstenite::Message;

/// Resident set size of this process (the coordinator runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A sample of `/metrics`: the value of the series `name{labels}` (0 if absent).
async fn metric(server: &satsuma_coordinator::ServerHandle, series: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A KeyPackage frame (`kind 1 ‖ MLSMessage`) of `len` payload bytes: a valid
/// `mls_key_package` header and filler.
fn key_package(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![KIND_KEY_PACKAGE, 0, 1, 0, 5];
    f.resize(len + 1, fill);
    f
}

// ---------------------------------------------------------------------------
// 1. One WebSocket that never reads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_is_closed_at_its_send_budget() {
    // Ingress rates above the defaults (1 MiB/s, 100 messages/s; the bursts stay at their
    // defaults) so the test is quick; the flooder keeps within them, so only its own send
    // queue (its KeyPackages come back to it) can stop it.
    let server = start(Config {
        rate_per_second: 100,
        budgets: Budgets {
            byte_rate_per_second: 1 << 20,
            ..Budgets::default()
        },
        ..Config::dev()
    })
    .await;
    // A bystander that reads everything, slowly but steadily.
    let mut bystander = Client::join(&server, "flood", "bystander").await;
    let by_closed = Arc::new(Mutex::new(None));
    let by_bytes = Arc::new(AtomicUsize::new(0));
    let reader = {
        let by_closed = by_closed.clone();
        let by_bytes = by_bytes.clone();
        tokio::spawn(async move {
            while let Some(m) = bystander.ws.next().await {
                match m {
                    Ok(Message::Binary(b)) => {
                        by_bytes.fetch_add(b.len(), Ordering::Relaxed);
                    }
                    Ok(Message::Close(c)) => {
                        *by_closed.lock() = Some(c.map(|f| u16::from(f.code)));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let mut flooder = Client::join(&server, "flood", "flooder").await;
    let rss_before = rss();
    // The largest accepted KeyPackage frame (16 KiB with its kind byte).
    let frame = key_package((16 << 10) - 1, 7);
    let mut sent = 0usize;
    let mut peak_rss = rss_before;
    let limit = 64usize << 20;
    let t0 = Instant::now();
    let mut closed_by_server = false;
    // 60 KeyPackages a second: just under 1 MiB/s.
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / 60));
    while sent < limit {
        pace.tick().await;
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            flooder.ws.send(Message::Binary(frame.clone().into())),
        )
        .await;
        if !matches!(r, Ok(Ok(()))) {
            break;
        }
        sent += frame.len();
        if sent % (1 << 20) < frame.len() {
            peak_rss = peak_rss.max(rss());
            if metric(
                &server,
                "satsuma_coord_closes_total{reason=\"send_budget\"}",
            )
            .await
                > 0
            {
                closed_by_server = true;
                break;
            }
        }
    }
    peak_rss = peak_rss.max(rss());
    let growth = peak_rss.saturating_sub(rss_before);
    println!(
        "flood: sent {} MiB in {:?}; closed_by_server={closed_by_server}; RSS before {} MiB, peak {} MiB (+{} MiB)",
        sent >> 20,
        t0.elapsed(),
        rss_before >> 20,
        peak_rss >> 20,
        growth >> 20
    );
    assert!(
        closed_by_server,
        "the non-reading socket was not closed after {} MiB",
        sent >> 20
    );
    // Everything it holds fits in its budget (1 MiB) plus what the kernel buffers.
    assert!(growth < 64 << 20, "the coordinator grew by {growth} bytes");
    // Reading now, the flooder finds the documented close code after what was in flight.
    let mut got = 0usize;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), flooder.ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got += b.len(),
            Ok(Some(Ok(Message::Close(c)))) => break c.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    println!("flooder read {} KiB before its close frame", got >> 10);
    assert_eq!(code, Some(close::SLOW_CONSUMER));
    // The bystander read every byte of it and was never closed.
    assert_eq!(*by_closed.lock(), None);
    reader.abort();
    // One oversized KeyPackage (the 1 MiB ones) is refused outright.
    let mut other = Client::join(&server, "flood", "other").await;
    other.send_binary(key_package((1 << 20) - 1, 1)).await;
    match other.direct().await {
        ServerMessage::Error { code, refused, .. } => {
            assert_eq!(code, "too_large");
            assert_eq!(refused.as_deref(), Some("key_package"));
        }
        d => panic!("{d:?}"),
    }
    server.shutdown().await;
}
