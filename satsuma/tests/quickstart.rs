//! The quick start, end to end: the real `satsuma` binary on ephemeral loopback ports serves
//! the web client, mints a dev token, lets a participant join over the coordinator WebSocket,
//! creates an SFU session through the coordinator's proxy on the embedded SFU (which refuses
//! the default secret, so the shared secret really was generated), and on SIGTERM tells the
//! connected client it is going away (close 1001) and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use common::Stack;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Generous bound for anything that should take milliseconds, so a loaded CI machine does not
/// fail the test; it is a hang detector, not a performance assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// Starts `satsuma` on ephemeral loopback ports (10 s drain on SIGTERM) with `extra` flags.
fn start(extra: &[&str]) -> Stack {
    let mut args = vec!["--drain-secs", "10"];
    args.extend_from_slice(extra);
    Stack::spawn(&common::web_dir(), &args)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "satsuma did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_serves_web_token_ws_and_sfu_then_stops_on_sigterm() {
    let mut srv = start(&["--dev"]);
    assert!(srv.web.ip().is_loopback() && srv.web.port() != 0);
    assert!(srv.media.ip().is_loopback() && srv.media.port() != 0);
    let http = reqwest::Client::new();
    let base = format!("http://{}", srv.web);

    // The URL to open is printed, for the bound port.
    let mut printed = Vec::new();
    while let Ok(line) = srv.stdout.recv_timeout(Duration::from_millis(500)) {
        printed.push(line);
        if printed.iter().any(|l| l.contains("Open ")) {
            break;
        }
    }
    let open = format!("http://localhost:{}/", srv.web.port());
    assert!(
        printed.iter().any(|l| l.contains(&open)),
        "URL {open} not printed in {printed:?}"
    );

    // The web client: index.html as it is on disk.
    let index = std::fs::read_to_string(common::web_dir().join("index.html")).unwrap();
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), index);

    // A dev token.
    let resp = http
        .post(format!("{base}/token"))
        .body(json!({"room": "quickstart", "name": "Ada"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await.unwrap();
    let token = token["token"].as_str().expect("token in /token reply");

    // Join the room over the coordinator WebSocket.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/quickstart", srv.web))
        .await
        .unwrap();
    let hello = json!({
        "type": "hello",
        "v": satsuma_coordinator::protocol::PROTOCOL_VERSION,
        "token": token,
    });
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let welcome: Value = loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            break serde_json::from_str(t.as_str()).unwrap();
        }
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["room"], "quickstart");
    let credential = welcome["resume_token"].as_str().unwrap().to_string();

    // An SFU session through the coordinator's proxy, on the embedded SFU.
    let resp = http
        .post(format!("{base}/sfu/sessions/new"))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{status} {body}");
    let session_id = body["sessionId"].as_str().expect("sessionId").to_string();
    assert!(!session_id.is_empty());

    // The SFU API itself: healthy, counting the session, and not open with the library's
    // default secret (the embedded servers share a generated one).
    let sfu = format!("http://{}", srv.sfu);
    assert_eq!(
        http.get(format!("{sfu}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(format!("{sfu}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "satsuma_sfu_sessions 1"),
        "{metrics}"
    );
    let default_secret = &satsuma_sfu::Config::default().apps[0];
    let resp = http
        .get(format!(
            "{sfu}/v1/apps/{}/sessions/{session_id}",
            default_secret.id
        ))
        .bearer_auth(&default_secret.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // SIGTERM: the client is told the server is going away, and the process exits 0.
    sigterm(&srv.child);
    let close = loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let status = wait_exit(&mut srv.child);
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigint_without_clients_exits_cleanly() {
    let mut srv = start(&["--dev"]);
    let status = Command::new("kill")
        .args(["-INT", &srv.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut srv.child).success());
}

const TOKEN_SECRET: &str = "quickstart-token-secret-0123456789abcdef";
const API_KEY: &str = "backend:quickstart-api-secret-0123456789abcdef";

/// Sends `hello` with `token` to room `room`; returns the first text reply (or close reason).
async fn hello(web: SocketAddr, room: &str, token: &str) -> Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{web}/ws/{room}"))
        .await
        .unwrap();
    let hello = json!({
        "type": "hello",
        "v": satsuma_coordinator::protocol::PROTOCOL_VERSION,
        "token": token,
    });
    ws.send(Message::text(hello.to_string())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match msg {
            Message::Text(t) => break serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => {
                break json!({"close": c.map(|c| (u16::from(c.code), c.reason.to_string()))});
            }
            _ => {}
        }
    }
}

/// Without --dev: no /token (404); tokens come from `satsuma token create` (same secret) or
/// from the token API with an API key, and both join.
#[test]
fn without_dev_tokens_come_from_the_cli_and_the_api() {
    let mut srv = start(&["--token-secret", TOKEN_SECRET, "--api-key", API_KEY]);
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .args(["token", "create", "--room", "cli-room", "--identity", "ada"])
        .args(["--name", "Ada", "--host", "--ttl", "10m", "--json"])
        .env("SATSUMA_TOKEN_SECRET", TOKEN_SECRET)
        .env("SATSUMA_PUBLIC_URL", format!("http://{}/", srv.web))
        .env_remove("SATSUMA_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = minted["token"].as_str().unwrap().to_string();
    assert_eq!(
        minted["url"],
        format!("http://{}/#token={token}", srv.web),
        "{minted}"
    );
    // A token minted with another secret does not join.
    let forged = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .args([
            "token",
            "create",
            "--room",
            "cli-room",
            "--identity",
            "eve",
            "--json",
        ])
        .env(
            "SATSUMA_TOKEN_SECRET",
            "another-secret-0123456789abcdef-xyz",
        )
        .env_remove("SATSUMA_CONFIG")
        .output()
        .unwrap();
    let forged: Value = serde_json::from_slice(&forged.stdout).unwrap();
    let (api_id, api_secret) = API_KEY.split_once(':').unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let status = http
            .post(format!("http://{}/token", srv.web))
            .body(json!({"room": "r"}).to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404);
        let config: Value = http
            .get(format!("http://{}/client-config.json", srv.web))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(config["dev"], false);

        let welcome = hello(srv.web, "cli-room", &token).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let refused = hello(srv.web, "cli-room", forged["token"].as_str().unwrap()).await;
        assert_eq!(refused["close"][0], 4401, "{refused}");

        let r = http
            .post(format!("http://{}/api/v1/tokens", srv.web))
            .basic_auth(api_id, Some(api_secret))
            .body(json!({"room": "api-room", "identity": "bob"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        let welcome = hello(srv.web, "api-room", body["token"].as_str().unwrap()).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let r = http
            .post(format!("http://{}/api/v1/tokens", srv.web))
            .basic_auth(api_id, Some("wrong-secret"))
            .body(json!({"room": "api-room", "identity": "bob"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
    sigterm(&srv.child);
    assert!(wait_exit(&mut srv.child).success());
}

/// Outside dev mode a token secret is required, and short or placeholder secrets (the values
/// of deploy/config/satsuma.env.example) are refused at start, naming the setting.
#[test]
fn production_start_needs_a_real_token_secret() {
    let example = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/satsuma.env.example"),
    )
    .unwrap();
    let placeholder = example
        .lines()
        .find_map(|l| l.strip_prefix("SATSUMA_TOKEN_SECRET="))
        .expect("the example sets SATSUMA_TOKEN_SECRET")
        .to_string();
    for (env, setting) in [
        (None, "token_secret is not set"),
        (Some("short-secret"), "token_secret is too short"),
        (
            Some(placeholder.as_str()),
            "token_secret is still a placeholder",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_satsuma"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--sfu-api",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
        ])
        .env_remove("SATSUMA_CONFIG")
        .env_remove("SATSUMA_DEV")
        .env_remove("SATSUMA_TOKEN_SECRET");
        if let Some(v) = env {
            cmd.env("SATSUMA_TOKEN_SECRET", v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(setting), "{env:?}: {err}");
        if let Some(v) = env {
            assert!(!err.contains(v), "the secret must not be printed: {err}");
        }
    }
}

#[test]
fn invalid_configuration_exits_with_status_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .args(["--app-secret", "short"])
        .env_remove("SATSUMA_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app_secret"), "{err}");
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // Group the help into one block per option (a line starting with `-` opens a block).
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        // Option lines are indented by at most 6 columns; deeper `- x` lines list values.
        if trimmed.starts_with('-') && line.len() - trimmed.len() <= 6 {
            let name = trimmed
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|w| w.starts_with("--"))
                .unwrap_or(trimmed)
                .to_string();
            blocks.push((name, String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(trimmed);
            text.push('\n');
        }
    }
    assert!(blocks.len() >= 15, "{help}");
    for (name, text) in &blocks {
        if matches!(name.as_str(), "--help" | "--version") {
            continue;
        }
        assert!(text.trim().len() > 20, "{name} has no description:\n{text}");
        if name == "--check-config" {
            continue;
        }
        // Every option that takes a value can also come from a SATSUMA_* variable.
        assert!(
            text.contains("[env: SATSUMA_"),
            "{name} has no environment variable:\n{text}"
        );
    }
}

/// A TLS client that trusts exactly `cert`.
fn tls_connector(cert: &rcgen::Certificate) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_tls_serves_https_and_wss() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("satsuma-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();
    let mut srv = start(&[
        "--dev",
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let connector = tls_connector(&generated.cert);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // The URL printed is https://.
    let mut printed = Vec::new();
    while let Ok(line) = srv.stdout.recv_timeout(Duration::from_millis(500)) {
        let done = line.contains("Open ");
        printed.push(line);
        if done {
            break;
        }
    }
    let open = format!("https://localhost:{}/", srv.web.port());
    assert!(printed.iter().any(|l| l.contains(&open)), "{printed:?}");

    // HTTPS: the web client's index.html.
    let tcp = tokio::net::TcpStream::connect(srv.web).await.unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let index = std::fs::read_to_string(common::web_dir().join("index.html")).unwrap();
    assert!(response.ends_with(&index), "body differs from index.html");

    // Plain HTTP on the TLS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(srv.web).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));

    // WSS: a token and a join over the TLS front; SIGTERM reaches the client as 1001.
    let token = {
        let tcp = tokio::net::TcpStream::connect(srv.web).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        let body = json!({"room": "secure"}).to_string();
        let request = format!(
            "POST /token HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut response))
            .await
            .unwrap();
        let response = String::from_utf8_lossy(&response).to_string();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let tcp = tokio::net::TcpStream::connect(srv.web).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws/secure", srv.web.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let hello = json!({
        "type": "hello",
        "v": satsuma_coordinator::protocol::PROTOCOL_VERSION,
        "token": token,
    });
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let welcome: Value = loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            break serde_json::from_str(t.as_str()).unwrap();
        }
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    sigterm(&srv.child);
    let close = loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    assert!(wait_exit(&mut srv.child).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tls_with_an_unusable_certificate_fails_at_start() {
    let dir = std::env::temp_dir().join(format!("satsuma-badtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--sfu-api",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
            "--dev",
        ])
        .arg("--tls-cert")
        .arg(&junk)
        .arg("--tls-key")
        .arg(&junk)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
