//! `Host` and `Origin` allow-list (issue 11): a request naming a host or coming from a page
//! that is not this deployment's gets HTTP 403 with a JSON body, before any route runs.
//!
//! The list is the origin of `public_url` plus `allowed_origins`; without a `public_url` it
//! also holds the loopback origins (`http`/`https` on `localhost`, `127.0.0.1` and `[::1]`, on
//! any port: the listening port, or the port of a TLS front or proxy on the same machine), so
//! a local dev setup works as it is. A name that merely resolves to a loopback address (DNS
//! rebinding) is still refused. `Origin` is checked on every
//! request that carries one (browsers send it on WebSocket upgrades and on every
//! cross-origin-capable request). `Host` is checked on every route except the ones that
//! servers and probes call by internal names: `/healthz`, `/readyz`, `/metrics` and the backend API
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
    /// No public URL: loopback hosts are allowed on any port.
    loopback: bool,
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
        let loopback = public_url.is_none();
        if loopback {
            let port = bound.port();
            for scheme in ["http", "https"] {
                for host in LOOPBACK {
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
        AllowList {
            origins,
            hosts,
            loopback,
        }
    }

    /// Whether an `Origin` header value is allowed.
    pub(crate) fn origin_ok(&self, origin: &str) -> bool {
        origin_of(origin).is_ok_and(|o| {
            self.origins.contains(&o)
                || (self.loopback
                    && o.split_once("://")
                        .is_some_and(|(_, authority)| is_loopback(authority)))
        })
    }

    /// Whether a `Host` header value is allowed.
    pub(crate) fn host_ok(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        self.hosts.contains(&host) || (self.loopback && is_loopback(&host))
    }

    /// The allowed origins, sorted (for messages).
    pub(crate) fn describe(&self) -> String {
        let mut v: Vec<&str> = self.origins.iter().map(String::as_str).collect();
        v.sort_unstable();
        v.join(", ")
    }
}

const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether an authority names a loopback host literally (any port or none).
fn is_loopback(authority: &str) -> bool {
    let host = match authority.rfind(']') {
        Some(i) => &authority[..=i],
        None => authority.split(':').next().unwrap_or(""),
    };
    LOOPBACK.contains(&host)
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
    // Probes and scrapers call by pod IP (a kubelet sends `Host: <podIP>:<port>`).
    let host_exempt =
        matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/api/");
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
        // Loopback on another port (a TLS front on this machine) too.
        assert!(a.origin_ok("https://localhost:8443"));
        assert!(a.host_ok("127.0.0.1:41234"));
        assert!(a.host_ok("[::1]:41234"));
        assert!(a.host_ok("localhost"));
        assert!(a.host_ok("192.168.1.5:8443"));
        // Names that resolve to loopback (DNS rebinding) and other addresses are refused.
        assert!(!a.host_ok("evil.example:41234"));
        assert!(!a.host_ok("localhost.evil.example"));
        assert!(!a.origin_ok("http://evil.example:41234"));
        assert!(!a.host_ok("192.168.1.6:8443"));
    }
}
