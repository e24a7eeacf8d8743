//! A real `satsuma-sfu` server on 127.0.0.1 (in process, ephemeral ports) and an HTTP client for
//! its Cloudflare-Realtime-compatible API, as the API conformance tests use them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The app the tests call the API as, and its secret.
pub(crate) const APP: &str = "satsuma";
pub(crate) const SECRET: &str = "satsuma-secret";

/// A running server and an HTTP client for it.
pub(crate) struct Sfu {
    pub(crate) handle: satsuma_sfu::ServerHandle,
    pub(crate) http: reqwest::Client,
}

impl Sfu {
    /// Starts a server on loopback with a second app `other` (secret `other-secret`), after
    /// `adjust` had its say on the configuration.
    pub(crate) async fn start(adjust: impl FnOnce(&mut satsuma_sfu::Config)) -> Sfu {
        let mut config = satsuma_sfu::Config {
            http_bind: "127.0.0.1:0".parse().unwrap(),
            udp_bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        config.apps.push(satsuma_sfu::App {
            id: "other".into(),
            secret: "other-secret".into(),
        });
        adjust(&mut config);
        Sfu {
            handle: satsuma_sfu::Server::bind(config).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.http_addr())
    }

    /// A request to `/v1/apps/{APP}/{path}` with the right secret, body sent as text/plain like
    /// browsers do. Returns status and JSON body.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw(
            method,
            &format!("/v1/apps/{APP}/{path}"),
            Some(SECRET),
            body.map(|b| b.to_string()),
        )
        .await
    }

    /// A request to `path` with `secret` (none: no Authorization header) and a raw body.
    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        secret: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "text/plain;charset=UTF-8")
                .body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }
}
