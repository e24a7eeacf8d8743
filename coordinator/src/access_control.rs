//! `Host` and `Origin` allow-list (issue 11): a request naming a host or coming from a page
//! that is not this deployment's gets HTTP 403 with a JSON body, before any route runs.
//!
//! The list is the origin of `public_url` plus `allowed_origins`; without a `public_url` it
//! also holds the loopback origins of the listening port (`http`/`https` on `localhost`,
//! `127.0.0.1` and `[::1]`), so a local dev setup works as it is. `Origin` is checked on every
//! request that carries one (browsers send it on WebSocket upgrades and on every
//! cross-origin-capable request). `Host` is checked on every route except the ones that
//! servers and probes call by internal names: `/healthz`, `/metrics` and the backend API
//! `/api/...` (authenticated by API keys or participant credentials).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::Budgets;
use crate::metrics::{CloseReason, Metrics};

/// The normalized origin (`scheme://host[:port]`, lower case, default port dropped) of an
/// `http(s)` URL or origin.
pub fn origin_of(url: &str) -> Result<String, String> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no usable host"));
    }
    let authority = strip_default_port(&scheme, &authority.to_ascii_lowercase());
    Ok(format!("{scheme}://{authority}"))
}

fn strip_default_port(scheme: &str, authority: &str) -> String {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_owned()
}

/// The allowed origins and the `Host` values they imply.
#[derive(Debug, Clone)]
pub(crate) struct AllowList {
    origins: HashSet<String>,
    hosts: HashSet<String>,
}

impl AllowList {
    /// From `public_url`, the budgets' `allowed_origins` and the bound address. Invalid
    /// entries were refused by config validation and are skipped here.
    pub(crate) fn new(public_url: Option<&str>, budgets: &Budgets, bound: SocketAddr) -> AllowList {
        let mut origins: HashSet<String> = public_url
            .into_iter()
            .chain(budgets.allowed_origins.iter().map(String::as_str))
            .filter_map(|u| origin_of(u).ok())
            .collect();
        if public_url.is_none() {
            let port = bound.port();
            for scheme in ["http", "https"] {
                for host in ["localhost", "127.0.0.1", "[::1]"] {
                    if let Ok(o) = origin_of(&format!("{scheme}://{host}:{port}")) {
                        origins.insert(o);
                    }
                }
            }
        }
        let mut hosts = HashSet::new();
        for o in &origins {
            if let Some((scheme, authority)) = o.split_once("://") {
                hosts.insert(authority.to_owned());
                // A client may spell the default port out in `Host`.
                if !has_port(authority) {
                    let port = if scheme == "https" { 443 } else { 80 };
                    hosts.insert(format!("{authority}:{port}"));
                }
            }
        }
        AllowList { origins, hosts }
    }

    /// Whether an `Origin` header value is allowed.
    pub(crate) fn origin_ok(&self, origin: &str) -> bool {
        origin_of(origin).is_ok_and(|o| self.origins.contains(&o))
    }

    /// Whether a `Host` header value is allowed.
    pub(crate) fn host_ok(&self, host: &str) -> bool {
        self.hosts.contains(&host.trim().to_ascii_lowercase())
    }

    /// The allowed origins, sorted (for messages).
    pub(crate) fn describe(&self) -> String {
        let mut v: Vec<&str> = self.origins.iter().map(String::as_str).collect();
        v.sort_unstable();
        v.join(", ")
    }
}

/// Whether an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) names a port.
fn has_port(authority: &str) -> bool {
    match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    }
}

/// The middleware's state.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) allow: Arc<AllowList>,
    pub(crate) metrics: Metrics,
}

fn forbidden(guard: &Guard, what: &str, value: &str) -> Response {
    guard.metrics.close(CloseReason::Origin);
    let shown: String = value.chars().take(100).collect();
    tracing::debug!(what, value = %shown, "refused by the Host/Origin allow-list");
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({
            "error": "forbidden_origin",
            "message": format!(
                "{what} {shown:?} is not allowed here; allowed: {} (set public_url or allowed_origins)",
                guard.allow.describe()
            ),
        })),
    )
        .into_response()
}

/// Refuses requests whose `Origin` (if any) or `Host` is not allowed (see the module docs).
pub(crate) async fn check(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let value = origin.to_str().unwrap_or("");
        if !guard.allow.origin_ok(value) {
            return forbidden(&guard, "Origin", value);
        }
    }
    let path = req.uri().path();
    let host_exempt = path == "/healthz" || path == "/metrics" || path.starts_with("/api/");
    if !host_exempt {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_default();
        if !guard.allow.host_ok(&host) {
            return forbidden(&guard, "Host", &host);
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn list(public: Option<&str>, extra: &[&str], bound: &str) -> AllowList {
        let b = Budgets {
            allowed_origins: extra.iter().map(|s| s.to_string()).collect(),
            ..Budgets::default()
        };
        AllowList::new(public, &b, bound.parse().unwrap())
    }

    #[test]
    fn origins_are_normalized() {
        assert_eq!(
            origin_of("HTTPS://Meet.Example.com:443/room?x#y").unwrap(),
            "https://meet.example.com"
        );
        assert_eq!(
            origin_of("http://10.0.0.5:8080").unwrap(),
            "http://10.0.0.5:8080"
        );
        assert_eq!(origin_of("http://[::1]:80/").unwrap(), "http://[::1]");
        for bad in [
            "meet.example.com",
            "ftp://x",
            "http://",
            "http://u@h",
            "null",
        ] {
            assert!(origin_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_public_url_alone_is_allowed_when_configured() {
        let a = list(Some("https://meet.example.com/"), &[], "0.0.0.0:8080");
        assert!(a.origin_ok("https://meet.example.com"));
        assert!(!a.origin_ok("http://meet.example.com"));
        assert!(!a.origin_ok("https://evil.example.com"));
        assert!(!a.origin_ok("null"));
        assert!(a.host_ok("meet.example.com"));
        assert!(a.host_ok("Meet.Example.com:443"));
        assert!(!a.host_ok("localhost:8080"));
        assert!(!a.host_ok("10.0.0.5:8080"));
        assert!(!a.host_ok(""));
    }

    #[test]
    fn without_a_public_url_loopback_on_the_listening_port_is_allowed() {
        let a = list(None, &["https://192.168.1.5:8443"], "127.0.0.1:41234");
        for ok in [
            "http://127.0.0.1:41234",
            "http://localhost:41234",
            "https://[::1]:41234",
            "https://192.168.1.5:8443",
        ] {
            assert!(a.origin_ok(ok), "{ok}");
        }
        assert!(!a.origin_ok("http://127.0.0.1:9999"));
        assert!(a.host_ok("127.0.0.1:41234"));
        assert!(a.host_ok("[::1]:41234"));
        assert!(a.host_ok("192.168.1.5:8443"));
        assert!(!a.host_ok("evil.example:41234"));
        assert!(!a.host_ok("127.0.0.1"));
    }
}
