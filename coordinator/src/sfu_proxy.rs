//! SFU access: `/sfu/...` mirrors the SFU's `/v1/apps/{appId}/...` API for room members.
//!
//! A client authenticates with its participant credential (`Authorization:
//! Bearer <resume_token>` from `welcome`). The proxy adds the app secret, places
//! each new session on a node ([`crate::placement::place`]: the room's node until it is at its
//! capacity, then the least-loaded healthy node, by region; a `Satsuma-Region` header is the
//! participant's region hint), records every session the participant creates and the node it
//! is on, sends every later call on a session to that node, and refuses calls on sessions that
//! are not the caller's. Pulling tracks is allowed only from sessions owned by members of
//! the caller's room.
//!
//! Sessions per participant are capped and the cap is checked **before** the SFU is asked:
//! each creation first reserves a place in the room (so concurrent creations never exceed the
//! cap), beyond the cap the participant's oldest session is released (deleted at the SFU,
//! its tracks unpublished), and a session the SFU created for a participant that left
//! meanwhile is deleted again. So no SFU session is ever orphaned and reconnects never run
//! out. `DELETE /sfu/sessions/{sid}` releases one explicitly.
//!
//! `POST /sfu/sessions/{sid}/tracks/keyframe` forwards the SFU's Satsuma extension (a keyframe
//! request to the caller's own published video) under the same ownership check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::placement::{NodeLoad, NodeSpec, Placement};
use crate::room::SfuReserveError;
use satsuma_wire::realtime::{
    CloseTracksRequest, DataChannelsRequest, ErrorBody, KeyframeTracksRequest, Location,
    NewSessionResponse, TrackResult, TracksRequest, api_error_code,
};
use serde::de::DeserializeOwned;

use tokio::sync::mpsc;

use crate::hub::{RoomSlot, SfuClose};
use crate::protocol::Permissions;
use crate::server::App;

/// Most tracks in one request (as Cloudflare's API).
pub(crate) const MAX_TRACKS_PER_REQUEST: usize = 64;

/// One SFU node.
#[derive(Debug)]
pub(crate) struct SfuNode {
    pub(crate) url: String,
    pub(crate) healthy: AtomicBool,
    /// Most sessions placed on it (none: no limit).
    pub(crate) capacity: Option<usize>,
    /// Its region label.
    pub(crate) region: Option<String>,
    /// The tag its session ids start with (known when its relay node name is configured).
    pub(crate) tag: Option<[u8; 2]>,
    /// At or above this share of its cores it takes no new sessions (none: no limit).
    pub(crate) cpu_capacity: Option<f64>,
    /// Its CPU share, from the health checks' answers.
    pub(crate) cpu: parking_lot::Mutex<crate::placement::CpuMeter>,
}

/// The configured SFU nodes and an HTTP client for them.
#[derive(Debug)]
pub(crate) struct SfuPool {
    pub(crate) nodes: Vec<SfuNode>,
    /// What the other coordinator replicas say about the nodes (issue 16: placement from any
    /// replica, [`crate::placement`]).
    pub(crate) cluster: crate::placement::ClusterView,
    /// Sessions being created, per node: counted against its capacity until bound or failed.
    creating: parking_lot::Mutex<Vec<usize>>,
    app_id: String,
    app_secret: String,
    client: reqwest::Client,
}

impl SfuPool {
    /// `nodes`: the `sfu_node` settings, `URL[;capacity=N][;cpu=SHARE][;region=LABEL][;name=NODE]`
    /// ([`NodeSpec`], checked by the configuration; one that does not parse is taken as a bare
    /// URL).
    pub(crate) fn new(nodes: &[String], app_id: &str, app_secret: &str, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            nodes: nodes
                .iter()
                .map(|s| {
                    let spec = s.parse::<NodeSpec>().unwrap_or_else(|_| NodeSpec {
                        url: s.trim_end_matches('/').to_owned(),
                        capacity: None,
                        region: None,
                        name: None,
                        cpu: None,
                    });
                    SfuNode {
                        url: spec.url,
                        healthy: AtomicBool::new(false),
                        capacity: spec.capacity,
                        region: spec.region,
                        tag: spec.name.as_deref().map(crate::placement::node_tag),
                        cpu_capacity: spec.cpu,
                        cpu: parking_lot::Mutex::default(),
                    }
                })
                .collect(),
            cluster: crate::placement::ClusterView::default(),
            creating: parking_lot::Mutex::new(vec![0; nodes.len()]),
            app_id: app_id.to_owned(),
            app_secret: app_secret.to_owned(),
            client,
        }
    }

    /// Checks every node's `GET /healthz` once.
    pub(crate) async fn check_health(&self) {
        let checks = self.nodes.iter().map(|n| async move {
            let ok = self
                .client
                .get(format!("{}/healthz", n.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(r) = &ok {
                let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok());
                n.cpu.lock().reading(
                    Instant::now(),
                    header(crate::placement::CpuMeter::SECONDS_HEADER),
                    header(crate::placement::CpuMeter::CORES_HEADER),
                );
            }
            let ok = ok.is_some();
            if ok != n.healthy.swap(ok, Ordering::Relaxed) {
                tracing::info!(node = %n.url, healthy = ok, "SFU node health changed");
            }
        });
        futures_util::future::join_all(checks).await;
    }

    /// Places a new session of a room whose node is `current` ([`crate::placement::place`]):
    /// the room's node until it is at its capacity, then the least-loaded node in the
    /// participant's region (`hint`) or the room's. Healthy: this replica's check or another
    /// replica's passed; rooms: this replica's (`rooms`) and the other replicas'
    /// ([`crate::placement`]); sessions: this replica's (`sessions`, per node, read under the
    /// same lock as the creations in flight so concurrent creations never overfill a node) and
    /// those it is creating. The returned [`Placing`] counts the session on its node until
    /// dropped (bind it first).
    fn place(
        &self,
        current: Option<usize>,
        hint: Option<&str>,
        sessions: impl FnOnce() -> Vec<usize>,
        rooms: impl Fn(usize) -> usize,
    ) -> Result<Placing<'_>, ProxyError> {
        let mut creating = self.creating.lock();
        let sessions = sessions();
        let loads: Vec<NodeLoad<'_>> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeLoad {
                healthy: n.healthy.load(Ordering::Relaxed) || self.cluster.others(i).healthy,
                sessions: sessions
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(creating.get(i).copied().unwrap_or(0)),
                rooms: rooms(i).saturating_add(self.cluster.others(i).rooms),
                capacity: n.capacity,
                region: n.region.as_deref(),
                cpu: n.cpu.lock().share(Instant::now()),
                cpu_capacity: n.cpu_capacity,
            })
            .collect();
        match crate::placement::place(&loads, current, hint) {
            Placement::Node(node) => {
                if let Some(c) = creating.get_mut(node) {
                    *c += 1;
                }
                Ok(Placing { pool: self, node })
            }
            Placement::Full => Err(ProxyError::Full),
            Placement::NoNode => Err(ProxyError::NoNode),
        }
    }

    /// This replica's or another live replica's health check of node `i` passed.
    pub(crate) fn healthy(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .is_some_and(|n| n.healthy.load(Ordering::Relaxed))
            || self.cluster.others(i).healthy
    }

    /// The node that made session `sid`, by the tag its id starts with (nodes whose relay
    /// name is configured), if one matches.
    pub(crate) fn node_of_session(&self, sid: &str) -> Option<usize> {
        let tag = crate::placement::session_tag(sid)?;
        self.nodes.iter().position(|n| n.tag == Some(tag))
    }

    async fn forward(
        &self,
        node: usize,
        method: Method,
        path: &str,
        query: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let n = self.nodes.get(node).ok_or(ProxyError::NoNode)?;
        let mut url = format!("{}/v1/apps/{}{}", n.url, self.app_id, path);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let mut req = self
            .client
            .request(method, url)
            .bearer_auth(&self.app_secret);
        if let Some(b) = body {
            req = req.header(header::CONTENT_TYPE, "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| {
            n.healthy.store(false, Ordering::Relaxed);
            ProxyError::Upstream(e.to_string())
        })?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProxyError::Upstream(e.to_string()))?;
        Ok((status, bytes))
    }
}

/// A session being created on `node`: counted against the node's capacity until dropped.
struct Placing<'a> {
    pool: &'a SfuPool,
    node: usize,
}

impl Drop for Placing<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.pool.creating.lock().get_mut(self.node) {
            *c = c.saturating_sub(1);
        }
    }
}

/// The request header with a participant's region hint for placement
/// (`POST /sfu/sessions/new`).
pub(crate) const REGION_HEADER: &str = "satsuma-region";

/// The caller's region hint: absent, or a region label (1-63 of `[A-Za-z0-9._-]`); anything
/// else is a 400.
fn region_hint(headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
    let Some(v) = headers.get(REGION_HEADER) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or_default().trim();
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(ProxyError::BadRequest(format!(
            "{REGION_HEADER} must be a region label (1-63 of [A-Za-z0-9._-])"
        )));
    }
    Ok(Some(v.to_owned()))
}

/// Why the proxy refused or failed a call.
#[derive(Debug)]
enum ProxyError {
    Unauthorized,
    Forbidden(&'static str),
    BadRequest(String),
    CreatesInFlight,
    NoNode,
    /// Every healthy SFU node is at its configured capacity.
    Full,
    Upstream(String),
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, code, desc) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                api_error_code::UNAUTHORIZED,
                "missing or unknown participant credential".to_owned(),
            ),
            Self::Forbidden(d) => (
                StatusCode::FORBIDDEN,
                api_error_code::FORBIDDEN,
                d.to_owned(),
            ),
            Self::BadRequest(d) => (StatusCode::BAD_REQUEST, api_error_code::BAD_REQUEST, d),
            Self::CreatesInFlight => (
                StatusCode::TOO_MANY_REQUESTS,
                api_error_code::TOO_MANY_SESSIONS,
                "as many SFU sessions as the cap are being created for this participant already"
                    .to_owned(),
            ),
            Self::NoNode => (
                StatusCode::SERVICE_UNAVAILABLE,
                api_error_code::NO_SFU,
                "no SFU node configured".to_owned(),
            ),
            Self::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                api_error_code::NO_SFU,
                "every SFU node is at its capacity".to_owned(),
            ),
            Self::Upstream(d) => (StatusCode::BAD_GATEWAY, api_error_code::SFU_UNREACHABLE, d),
        };
        (
            status,
            axum::Json(ErrorBody {
                error_code: code.to_owned(),
                error_description: desc,
            }),
        )
            .into_response()
    }
}

/// The `/sfu` routes.
pub(crate) fn routes(max_body: usize) -> Router<Arc<App>> {
    Router::new()
        .route("/sfu/sessions/new", post(new_session))
        .route(
            "/sfu/sessions/{sid}",
            get(get_session).delete(delete_session),
        )
        .route("/sfu/sessions/{sid}/tracks/new", post(tracks_new))
        .route("/sfu/sessions/{sid}/renegotiate", put(renegotiate))
        .route("/sfu/sessions/{sid}/tracks/close", put(tracks_close))
        .route("/sfu/sessions/{sid}/tracks/update", put(tracks_update))
        .route("/sfu/sessions/{sid}/tracks/keyframe", post(tracks_keyframe))
        .route(
            "/sfu/sessions/{sid}/datachannels/new",
            post(datachannels_new),
        )
        .route(
            "/sfu/sessions/{sid}/datachannels/close",
            put(datachannels_close),
        )
        .route("/sfu/ice-servers", post(ice_servers))
        .layer(DefaultBodyLimit::max(max_body))
}

struct Caller {
    slot: Arc<RoomSlot>,
    id: u64,
    permissions: Permissions,
}

fn caller(app: &App, headers: &HeaderMap) -> Result<Caller, ProxyError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ProxyError::Unauthorized)?;
    let cred = app
        .hub
        .credential(token.trim())
        .ok_or(ProxyError::Unauthorized)?;
    let slot = app.hub.room(&cred.room).ok_or(ProxyError::Unauthorized)?;
    let permissions = slot
        .state
        .lock()
        .room
        .permissions(cred.participant)
        .ok_or(ProxyError::Unauthorized)?;
    Ok(Caller {
        slot,
        id: cred.participant,
        permissions,
    })
}

fn respond(app: &App, route: &str, result: Result<(StatusCode, Bytes), ProxyError>) -> Response {
    let resp = match result {
        Ok((status, body)) => {
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => e.into_response(),
    };
    app.metrics
        .sfu_calls
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    resp
}

/// `POST /sfu/ice-servers`: fresh STUN/TURN servers and TURN credentials for the caller (the
/// ones in `welcome` expire; a long call fetches new ones before). 201
/// `{"iceServers": [...], "expiresAt": unix seconds | null}`.
async fn ice_servers(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let result = caller(&app, &headers).and_then(|c| {
        if !c.permissions.publish && !c.permissions.subscribe {
            return Err(ProxyError::Forbidden("no publish or subscribe permission"));
        }
        let ice = app.hub.ice().issue(c.id, crate::auth::unix_now());
        let body = satsuma_wire::IceServersResponse {
            ice_servers: ice.servers,
            expires_at: ice.expires_at,
        };
        // Strings and a number: serializing cannot fail.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Ok((StatusCode::CREATED, Bytes::from(body)))
    });
    respond(&app, "ice-servers", result)
}

async fn new_session(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    // The creation runs to its end in its own task even if the client goes away: a session the
    // SFU created is always either bound or deleted, never orphaned.
    let task = {
        let app = app.clone();
        tokio::spawn(async move { new_session_inner(&app, &headers, query.as_deref(), body).await })
    };
    let r = task
        .await
        .unwrap_or_else(|e| Err(ProxyError::Upstream(format!("proxy task failed: {e}"))));
    respond(&app, "sessions/new", r)
}

/// A place reserved in the room for one session being created; released on drop unless the
/// session was bound.
struct Reservation<'a> {
    app: &'a App,
    slot: Arc<RoomSlot>,
    id: u64,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.app
                .hub
                .with_room(&self.slot, |st| st.room.cancel_sfu_reservation(self.id));
        }
    }
}

async fn new_session_inner(
    app: &App,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Bytes,
) -> Result<(StatusCode, Bytes), ProxyError> {
    let c = caller(app, headers)?;
    if !c.permissions.publish && !c.permissions.subscribe {
        return Err(ProxyError::Forbidden("no publish or subscribe permission"));
    }
    let hint = region_hint(headers)?;
    // The cap first: reserve a place (releasing the oldest sessions beyond it).
    app.hub
        .with_room(&c.slot, |st| {
            st.room.reserve_sfu_session(Instant::now(), c.id)
        })
        .map_err(|e| match e {
            SfuReserveError::Gone => ProxyError::Unauthorized,
            SfuReserveError::TooMany => ProxyError::CreatesInFlight,
        })?;
    let mut reservation = Reservation {
        app,
        slot: c.slot.clone(),
        id: c.id,
        armed: true,
    };
    let current = c.slot.state.lock().sfu_node;
    let placing = app.sfu.place(
        current,
        hint.as_deref(),
        || app.hub.sessions_per_node(app.sfu.nodes.len()),
        |i| app.hub.rooms_on_node(i),
    )?;
    let node = placing.node;
    // A room starts on one node (its first session's) and keeps it while it is healthy, even
    // when full; a room whose node failed moves to where its next session went.
    {
        let mut st = c.slot.state.lock();
        if !st.sfu_node.is_some_and(|n| app.sfu.healthy(n)) {
            st.sfu_node = Some(node);
        }
    }
    let body = (!body.is_empty()).then_some(body);
    let (status, bytes) = app
        .sfu
        .forward(node, Method::POST, "/sessions/new", query, body)
        .await?;
    if status.is_success() {
        let sid = serde_json::from_slice::<NewSessionResponse>(&bytes)
            .ok()
            .map(|r| r.session_id);
        if let Some(sid) = sid {
            reservation.armed = false;
            let bound = app.hub.with_room(&c.slot, |st| {
                let ok = st.room.bind_sfu_session(Instant::now(), c.id, &sid);
                if ok {
                    st.sfu_sessions.insert(sid.clone(), node);
                }
                ok
            });
            drop(placing);
            if !bound {
                // The participant left meanwhile (or the id is unusable): no orphan.
                app.metrics.sfu_sessions_released.inc();
                app.hub.close_sfu_session(node, sid);
                return Err(ProxyError::Unauthorized);
            }
        }
    }
    Ok((status, bytes))
}

/// `DELETE /sfu/sessions/{sid}`: the caller releases one of its sessions (its tracks are
/// unpublished, the SFU deletes it). 200 `{}`.
async fn delete_session(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = (|| {
        let c = caller(&app, &headers)?;
        own_session(&app, &c, &sid)?;
        app.hub.with_room(&c.slot, |st| {
            st.room.release_sfu_session(Instant::now(), c.id, &sid)
        });
        Ok((StatusCode::OK, Bytes::from_static(b"{}")))
    })();
    respond(&app, "sessions/delete", r)
}

/// The caller's own session's node, or 403. The node is the one whose relay name tags the
/// session id if that is configured (right even in a room rebuilt from the store, whose
/// sessions this replica maps to the room's node; the map is corrected then), else the one it
/// was placed on.
fn own_session(app: &App, c: &Caller, sid: &str) -> Result<usize, ProxyError> {
    let mut st = c.slot.state.lock();
    if st.room.sfu_session_owner(sid) != Some(c.id) {
        return Err(ProxyError::Forbidden(
            "session was not created by this participant",
        ));
    }
    let placed = st
        .sfu_sessions
        .get(sid)
        .copied()
        .ok_or(ProxyError::Forbidden("unknown session"))?;
    match app.sfu.node_of_session(sid) {
        Some(node) if node != placed => {
            // A rebuilt room's map is corrected, so the node's sessions count where they are.
            st.sfu_sessions.insert(sid.to_owned(), node);
            Ok(node)
        }
        _ => Ok(placed),
    }
}

/// Checks a tracks body: local tracks need `publish`; remote ones need
/// `subscribe` and a source session owned by a member of the caller's room.
fn check_tracks(c: &Caller, body: &[u8], allow_local: bool) -> Result<(), ProxyError> {
    // `tracks/new` and `tracks/update` bodies, read as the SFU reads them.
    let tracks = parse_body::<TracksRequest>(body)?.tracks;
    if tracks.len() > MAX_TRACKS_PER_REQUEST {
        return Err(ProxyError::BadRequest(format!(
            "at most {MAX_TRACKS_PER_REQUEST} tracks per request"
        )));
    }
    let st = c.slot.state.lock();
    for t in &tracks {
        match t.location {
            Some(Location::Local) if allow_local => {
                if !c.permissions.publish {
                    return Err(ProxyError::Forbidden("no publish permission"));
                }
            }
            Some(Location::Remote) => {
                if !c.permissions.subscribe {
                    return Err(ProxyError::Forbidden("no subscribe permission"));
                }
                let src = t.session_id.as_deref().unwrap_or("");
                if st.room.sfu_session_owner(src).is_none() {
                    return Err(ProxyError::Forbidden(
                        "remote track's session is not a member's session in this room",
                    ));
                }
            }
            _ => {
                return Err(ProxyError::BadRequest(
                    "each track needs location local or remote".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// Checks a `tracks/keyframe` body: the caller publishes (it asks for keyframes of its own
/// tracks) and names at most [`MAX_TRACKS_PER_REQUEST`] tracks. The SFU looks the names up in
/// the session of the URL only, which [`own_session`] checked is the caller's.
fn check_keyframe_tracks(c: &Caller, body: &[u8]) -> Result<(), ProxyError> {
    if !c.permissions.publish {
        return Err(ProxyError::Forbidden("no publish permission"));
    }
    // `tracks` may default to empty in the type, but this route needs it.
    let has_tracks = serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("tracks").is_some_and(serde_json::Value::is_array));
    if !has_tracks {
        return Err(ProxyError::BadRequest("tracks must be an array".to_owned()));
    }
    let tracks = parse_body::<KeyframeTracksRequest>(body)?.tracks;
    if tracks.len() > MAX_TRACKS_PER_REQUEST {
        return Err(ProxyError::BadRequest(format!(
            "at most {MAX_TRACKS_PER_REQUEST} tracks per request"
        )));
    }
    Ok(())
}

/// Checks a `datachannels/new` body: local channels need `publish`; remote ones need
/// `subscribe` and a publishing session owned by a member of the caller's room.
fn check_datachannels(c: &Caller, body: &[u8]) -> Result<(), ProxyError> {
    let channels = parse_body::<DataChannelsRequest>(body)?.data_channels;
    if channels.len() > MAX_TRACKS_PER_REQUEST {
        return Err(ProxyError::BadRequest(format!(
            "at most {MAX_TRACKS_PER_REQUEST} data channels per request"
        )));
    }
    let st = c.slot.state.lock();
    for d in &channels {
        match d.location {
            Some(Location::Local) => {
                if !c.permissions.publish {
                    return Err(ProxyError::Forbidden("no publish permission"));
                }
            }
            Some(Location::Remote) => {
                if !c.permissions.subscribe {
                    return Err(ProxyError::Forbidden("no subscribe permission"));
                }
                let src = d.session_id.as_deref().unwrap_or("");
                if st.room.sfu_session_owner(src).is_none() {
                    return Err(ProxyError::Forbidden(
                        "remote data channel's session is not a member's session in this room",
                    ));
                }
            }
            None => {
                return Err(ProxyError::BadRequest(
                    "each data channel needs location local or remote".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// A request body as the SFU would read it (`satsuma_wire::realtime`), or 400.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProxyError> {
    serde_json::from_slice(body)
        .map_err(|e| ProxyError::BadRequest(format!("body is not a valid request: {e}")))
}

/// Forwards a call on one of the caller's own SFU sessions: checks that the
/// caller created session `sid`, optionally checks the tracks it names (`Some(allow_local)`),
/// then forwards to `/sessions/{sid}/{route}` on the session's node.
#[allow(clippy::too_many_arguments)]
async fn forward_own_session(
    app: &App,
    headers: &HeaderMap,
    sid: &str,
    method: Method,
    route: &'static str,
    tracks: Option<bool>,
    query: Option<String>,
    body: Bytes,
) -> Response {
    let r = async {
        let c = caller(app, headers)?;
        let node = own_session(app, &c, sid)?;
        if let Some(allow_local) = tracks {
            check_tracks(&c, &body, allow_local)?;
        }
        let r = app
            .sfu
            .forward(
                node,
                method,
                &format!("/sessions/{sid}/{route}"),
                query.as_deref(),
                Some(body.clone()),
            )
            .await?;
        if r.0.is_success() {
            note_demand(app, &c, sid, route, &body, &r.1);
        }
        Ok(r)
    }
    .await;
    respond(app, route, r)
}

/// Feeds the room's dynacast what a successful `tracks/new`, `tracks/update` or
/// `tracks/close` of subscriber session `sid` changed: legs pulled (with the `mid` the SFU
/// gave them and the layer they ask for), re-aimed or closed. Entries the SFU refused
/// (`errorCode`) change nothing. The SFU answers one entry per requested track, in order.
fn note_demand(app: &App, c: &Caller, sid: &str, route: &str, request: &[u8], response: &[u8]) {
    /// The per-track results of any `tracks/*` response.
    #[derive(serde::Deserialize)]
    struct Answered {
        #[serde(default)]
        tracks: Vec<TrackResult>,
    }
    let Ok(Answered { tracks: answered }) = serde_json::from_slice(response) else {
        return;
    };
    let ok = |r: &TrackResult| r.error_code.is_none();
    match route {
        "tracks/new" | "tracks/update" => {
            let Ok(req) = serde_json::from_slice::<TracksRequest>(request) else {
                return;
            };
            app.hub.with_room(&c.slot, |st| {
                for (a, r) in req.tracks.iter().zip(&answered) {
                    if a.location != Some(Location::Remote) || !ok(r) {
                        continue;
                    }
                    let mid = r.mid.as_ref().or(a.mid.as_ref());
                    let (Some(mid), Some(src), Some(name)) =
                        (mid, a.session_id.as_ref(), a.track_name.as_ref())
                    else {
                        continue;
                    };
                    st.dynacast
                        .leg(sid, mid, src, name, crate::dynacast::wanted_layer(a));
                }
            });
        }
        "tracks/close" => {
            let Ok(req) = serde_json::from_slice::<CloseTracksRequest>(request) else {
                return;
            };
            app.hub.with_room(&c.slot, |st| {
                for (a, r) in req.tracks.iter().zip(&answered) {
                    if let Some(mid) = &a.mid
                        && ok(r)
                    {
                        st.dynacast.close(sid, mid);
                    }
                }
            });
        }
        _ => {}
    }
}

async fn tracks_new(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let route = "tracks/new";
    forward_own_session(
        &app,
        &headers,
        &sid,
        Method::POST,
        route,
        Some(true),
        query,
        body,
    )
    .await
}

async fn tracks_update(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let route = "tracks/update";
    forward_own_session(
        &app,
        &headers,
        &sid,
        Method::PUT,
        route,
        Some(false),
        query,
        body,
    )
    .await
}

/// `POST /sfu/sessions/{sid}/tracks/keyframe` (the SFU's Satsuma extension): the caller asks
/// for a keyframe (PLI) of video tracks its own session publishes, `{"tracks": [{"trackName":
/// ...}]}`; the SFU's 200 carries one result per track.
async fn tracks_keyframe(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let route = "tracks/keyframe";
    let r = async {
        let c = caller(&app, &headers)?;
        let node = own_session(&app, &c, &sid)?;
        check_keyframe_tracks(&c, &body)?;
        app.sfu
            .forward(
                node,
                Method::POST,
                &format!("/sessions/{sid}/{route}"),
                query.as_deref(),
                Some(body),
            )
            .await
    }
    .await;
    respond(&app, route, r)
}

/// `POST /sfu/sessions/{sid}/datachannels/new`: publish or subscribe to data channels on the
/// caller's own session (checked by [`check_datachannels`]).
async fn datachannels_new(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let route = "datachannels/new";
    let r = async {
        let c = caller(&app, &headers)?;
        let node = own_session(&app, &c, &sid)?;
        check_datachannels(&c, &body)?;
        app.sfu
            .forward(
                node,
                Method::POST,
                &format!("/sessions/{sid}/{route}"),
                query.as_deref(),
                Some(body),
            )
            .await
    }
    .await;
    respond(&app, route, r)
}

/// `PUT /sfu/sessions/{sid}/datachannels/close`: closes data channels of the caller's own
/// session.
async fn datachannels_close(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let route = "datachannels/close";
    forward_own_session(&app, &headers, &sid, Method::PUT, route, None, query, body).await
}

async fn renegotiate(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let route = "renegotiate";
    forward_own_session(&app, &headers, &sid, Method::PUT, route, None, query, body).await
}

async fn tracks_close(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let route = "tracks/close";
    forward_own_session(&app, &headers, &sid, Method::PUT, route, None, query, body).await
}

async fn get_session(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let r = async {
        let c = caller(&app, &headers)?;
        let node = own_session(&app, &c, &sid)?;
        app.sfu
            .forward(
                node,
                Method::GET,
                &format!("/sessions/{sid}"),
                query.as_deref(),
                None,
            )
            .await
    }
    .await;
    respond(&app, "session", r)
}

/// Deletes the SFU sessions of departed participants (`DELETE
/// /v1/apps/{app}/sessions/{sid}`), each in its own task so a slow node delays nobody.
/// Failures are logged and counted (`satsuma_coord_sfu_session_closes_total`).
pub(crate) async fn close_sessions(app: Arc<App>, mut queue: mpsc::Receiver<SfuClose>) {
    while let Some(close) = queue.recv().await {
        let app = app.clone();
        tokio::spawn(async move {
            let path = format!("/sessions/{}", close.session_id);
            let node = app
                .sfu
                .node_of_session(&close.session_id)
                .unwrap_or(close.node);
            let result = app
                .sfu
                .forward(node, Method::DELETE, &path, None, None)
                .await;
            let outcome = match &result {
                Ok((status, _)) if status.is_success() => "closed",
                Ok((StatusCode::NOT_FOUND, _)) => "gone",
                Ok((status, body)) => {
                    tracing::warn!(session = %close.session_id, %status, body = %String::from_utf8_lossy(body), "SFU refused to close a departed participant's session");
                    "failed"
                }
                Err(e) => {
                    tracing::warn!(session = %close.session_id, error = ?e, "could not close a departed participant's SFU session");
                    "failed"
                }
            };
            app.metrics
                .sfu_session_closes
                .with_label_values(&[outcome])
                .inc();
            let status = match &result {
                Ok((status, _)) => status.as_str().to_owned(),
                Err(_) => "error".to_owned(),
            };
            app.metrics
                .sfu_calls
                .with_label_values(&["sessions/delete", &status])
                .inc();
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pool(nodes: &[&str]) -> SfuPool {
        let nodes: Vec<String> = nodes.iter().map(|s| (*s).to_owned()).collect();
        SfuPool::new(&nodes, "app", "s", Duration::from_secs(1))
    }

    fn placed(r: Result<Placing<'_>, ProxyError>) -> Option<usize> {
        r.ok().map(|p| p.node)
    }

    #[test]
    fn node_choice_prefers_current_healthy_then_least_loaded() {
        let pool = pool(&["http://a", "http://b/", "http://c"]);
        assert_eq!(pool.nodes[1].url, "http://b");
        // Nothing healthy: the current node, else the first.
        assert_eq!(
            placed(pool.place(Some(2), None, || vec![0; 3], |_| 0)),
            Some(2)
        );
        assert_eq!(
            placed(pool.place(None, None, || vec![0; 3], |_| 0)),
            Some(0)
        );
        pool.nodes[1].healthy.store(true, Ordering::Relaxed);
        pool.nodes[2].healthy.store(true, Ordering::Relaxed);
        let load = |i: usize| [0, 5, 3][i];
        assert_eq!(placed(pool.place(None, None, || vec![0; 3], load)), Some(2));
        assert_eq!(
            placed(pool.place(Some(1), None, || vec![0; 3], load)),
            Some(1)
        );
        assert_eq!(
            placed(pool.place(Some(0), None, || vec![0; 3], load)),
            Some(2)
        );
        let empty = SfuPool::new(&[], "app", "s", Duration::from_secs(1));
        assert!(matches!(
            empty.place(None, None, Vec::new, |_| 0),
            Err(ProxyError::NoNode)
        ));
    }

    #[test]
    fn sessions_being_created_count_against_capacity() {
        let pool = pool(&[
            "http://a;capacity=2;region=eu;name=sfu-a",
            "http://b;capacity=1;region=eu",
        ]);
        assert_eq!(pool.nodes[0].capacity, Some(2));
        assert_eq!(pool.nodes[1].region.as_deref(), Some("eu"));
        for n in &pool.nodes {
            n.healthy.store(true, Ordering::Relaxed);
        }
        let a1 = pool.place(None, None, || vec![0, 0], |_| 0).ok().unwrap();
        let a2 = pool
            .place(Some(0), None, || vec![0, 0], |_| 0)
            .ok()
            .unwrap();
        let b1 = pool
            .place(Some(0), None, || vec![0, 0], |_| 0)
            .ok()
            .unwrap();
        assert_eq!((a1.node, a2.node, b1.node), (0, 0, 1));
        assert!(matches!(
            pool.place(Some(0), None, || vec![0, 0], |_| 0),
            Err(ProxyError::Full)
        ));
        // A creation that ended frees its place; one bound counts in `sessions` instead.
        drop(b1);
        assert_eq!(
            placed(pool.place(Some(0), None, || vec![0, 0], |_| 0)),
            Some(1)
        );
        drop((a1, a2));
        assert_eq!(
            placed(pool.place(Some(0), None, || vec![1, 1], |_| 0)),
            Some(0)
        );
        assert!(matches!(
            pool.place(Some(0), None, || vec![2, 1], |_| 0),
            Err(ProxyError::Full)
        ));
    }

    #[test]
    fn a_session_id_names_its_node_when_names_are_configured() {
        let pool = pool(&["http://a;name=sfu-a", "http://b;name=sfu-b", "http://c"]);
        let sid = |name: &str| {
            format!(
                "{}{}",
                hex::encode(crate::placement::node_tag(name)),
                "ab".repeat(14)
            )
        };
        assert_eq!(pool.node_of_session(&sid("sfu-a")), Some(0));
        assert_eq!(pool.node_of_session(&sid("sfu-b")), Some(1));
        assert_eq!(pool.node_of_session(&sid("sfu-zz")), None);
        assert_eq!(pool.node_of_session("not-a-session"), None);
    }

    #[test]
    fn region_hints_are_labels() {
        let mut h = HeaderMap::new();
        assert_eq!(region_hint(&h).ok(), Some(None));
        h.insert(REGION_HEADER, "eu-west".parse().unwrap());
        assert_eq!(region_hint(&h).ok(), Some(Some("eu-west".to_owned())));
        for bad in ["", "eu west", "a/b"] {
            h.insert(REGION_HEADER, bad.parse().unwrap());
            assert!(region_hint(&h).is_err(), "{bad:?}");
        }
    }
}
