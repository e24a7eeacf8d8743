//! The etcd room store, through etcd's v3 JSON gateway (`POST /v3/kv/txn`, `/v3/lease/...`:
//! plain HTTP/JSON, so no gRPC stack or `protoc` is needed to build the coordinator).
//!
//! Keys under the prefix (default `/satsuma/`):
//! - `rooms/<room>/owner`: `{"replica","url"}`, attached to the owning replica's lease. Its
//!   `create_revision` is the room's fencing token ([`Fence`]).
//! - `rooms/<room>/image`: the room's durable state.
//! - `rooms/<room>/log/<seq, 20 digits>`: one retained log entry each.
//!
//! Each replica holds one lease (TTL `lease_ttl`), kept alive every third of it. A room is
//! taken by a transaction that creates the owner key only if it is absent; every append is
//! a transaction conditional on the owner key's `create_revision` still being the fence. A
//! dead replica's lease expires after its TTL, etcd deletes its owner keys, and the next
//! replica asked for the room takes it and rebuilds it from the image and the log. A replica
//! whose lease lapsed cannot write any more: its fence no longer matches.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::{Claim, Fence, RoomStore, SfuNodeReport, StoreError, StoreStats, StoredRoom};
use crate::room::journal::Persist;

/// Longest wait for one attempt of a request.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(700);

/// Most operations one transaction carries (etcd's default `--max-txn-ops` is 128).
const MAX_TXN_OPS: usize = 100;

/// Settings of the etcd store.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://host:2379`); tried in turn.
    pub endpoints: Vec<String>,
    /// Key prefix (ends with `/`).
    pub prefix: String,
    /// This replica's id (unique among replicas; e.g. the pod name).
    pub replica: String,
    /// This replica's public URL, stored with its rooms (a redirect target).
    pub url: Option<String>,
    /// Lease TTL: a dead replica's rooms are free after it.
    pub lease_ttl: Duration,
    /// Longest wait for one etcd request.
    pub timeout: Duration,
}

/// The etcd store. Its requests run on a runtime of its own; the [`RoomStore`] calls block
/// the caller until they finish or time out.
#[derive(Debug)]
pub struct EtcdStore {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    config: EtcdConfig,
    /// The endpoint tried first (the last one that answered).
    endpoint: AtomicUsize,
    lease: Mutex<Option<i64>>,
    /// One grant at a time: a caller that finds no lease while another grant is in flight waits
    /// for it instead of granting a second lease (which would outlive this replica by its TTL).
    granting: tokio::sync::Mutex<()>,
    /// Set (under the `lease` lock) when the lease is handed back for good (`release_all`, at
    /// shutdown): a grant still in flight then revokes what it got at once.
    closing: AtomicBool,
    /// The last time the lease was confirmed alive.
    lease_ok: Mutex<Option<Instant>>,
    ready: AtomicBool,
    owned: Mutex<HashMap<String, Fence>>,
    stats: StoreStats,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// `key` + 1 in its last byte: the end of the range of keys starting with `key`.
fn prefix_end(key: &str) -> Vec<u8> {
    let mut end = key.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Decodes the kvs of a range response: `(key, value, create_revision, lease)`.
fn kvs(range: &Value) -> Vec<(Vec<u8>, Vec<u8>, i64, i64)> {
    range["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|kv| {
                    let key = B64.decode(kv["key"].as_str()?).ok()?;
                    let value = kv["value"]
                        .as_str()
                        .map_or(Some(Vec::new()), |v| B64.decode(v).ok())?;
                    Some((
                        key,
                        value,
                        int(&kv["create_revision"]).unwrap_or(0),
                        int(&kv["lease"]).unwrap_or(0),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Inner {
    fn room_key(&self, room: &str, what: &str) -> String {
        format!("{}rooms/{room}/{what}", self.config.prefix)
    }

    fn log_key(&self, room: &str, seq: u64) -> String {
        format!("{}rooms/{room}/log/{seq:020}", self.config.prefix)
    }

    /// POSTs `body` to `path` at the first endpoint that answers, retrying (other members,
    /// then again after a pause) until the store timeout: a leader election takes about a
    /// second and must not end a room. Every request this store makes is idempotent (a txn
    /// retried after it took effect compares the same fence and writes the same values).
    async fn post(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        let n = self.config.endpoints.len();
        if n == 0 {
            return Err(unavailable("no etcd endpoints"));
        }
        let deadline = Instant::now() + self.config.timeout;
        let mut last_err = String::new();
        loop {
            let first = self.endpoint.load(Ordering::Relaxed) % n;
            for i in 0..n {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(unavailable(last_err));
                }
                let idx = (first + i) % n;
                let url = format!("{}{path}", self.config.endpoints[idx].trim_end_matches('/'));
                let sent = self
                    .client
                    .post(&url)
                    .json(body)
                    // A request a member holds (its proposal waits for a new leader) is retried,
                    // not waited for to the end.
                    .timeout(left.min(ATTEMPT_TIMEOUT))
                    .send()
                    .await;
                match sent {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.json::<Value>().await {
                            Ok(v) if status.is_success() => {
                                self.endpoint.store(idx, Ordering::Relaxed);
                                return Ok(v);
                            }
                            // No leader, leader changed, timed out inside etcd ...
                            Ok(v) => {
                                last_err = format!(
                                    "{url}: {status} {}",
                                    v["error"].as_str().or(v["message"].as_str()).unwrap_or("")
                                );
                            }
                            Err(e) => last_err = format!("{url}: {e}"),
                        }
                    }
                    Err(e) => last_err = format!("{url}: {e}"),
                }
                tracing::debug!(error = %last_err, "etcd request attempt failed");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Hands lease `id` back to etcd (its keys go with it).
    async fn revoke_lease(&self, id: i64) -> Result<Value, StoreError> {
        self.post("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await
    }

    async fn grant(&self) -> Result<i64, StoreError> {
        let _one = self.granting.lock().await;
        if let Some(id) = *self.lease.lock() {
            // Granted by the caller this one waited for.
            return Ok(id);
        }
        if self.closing.load(Ordering::SeqCst) {
            return Err(unavailable("shutting down: the lease was handed back"));
        }
        let ttl = self.config.lease_ttl.as_secs().max(1);
        let v = self.post("/v3/lease/grant", &json!({ "TTL": ttl })).await?;
        let id = int(&v["ID"]).ok_or_else(|| unavailable(format!("lease grant: {v}")))?;
        {
            let mut lease = self.lease.lock();
            if !self.closing.load(Ordering::SeqCst) {
                *lease = Some(id);
                *self.lease_ok.lock() = Some(Instant::now());
                self.ready.store(true, Ordering::Relaxed);
                tracing::info!(lease = id, replica = %self.config.replica, "etcd lease granted");
                return Ok(id);
            }
        }
        // The lease was handed back while this grant was in flight (the deploy check saw such a
        // lease outlive its replica: granted 0.26 s after the one it had, just as it stopped).
        match self.revoke_lease(id).await {
            Ok(_) => tracing::info!(
                lease = id,
                "etcd lease granted while shutting down: revoked"
            ),
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "etcd lease granted while shutting down: revoke failed (it expires after its TTL)")
            }
        }
        Err(unavailable("shutting down: the lease was handed back"))
    }

    async fn lease(&self) -> Result<i64, StoreError> {
        let current = *self.lease.lock();
        match current {
            Some(id) => Ok(id),
            None => self.grant().await,
        }
    }

    /// One keepalive round; false once the lease is gone (it expired).
    async fn keepalive(&self) {
        let Some(id) = *self.lease.lock() else {
            if let Err(e) = self.grant().await {
                tracing::warn!(error = %e, "etcd lease grant failed");
                self.ready.store(false, Ordering::Relaxed);
            }
            return;
        };
        match self
            .post("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await
        {
            Ok(v) if int(&v["result"]["TTL"]).is_some_and(|t| t > 0) => {
                *self.lease_ok.lock() = Some(Instant::now());
                self.ready.store(true, Ordering::Relaxed);
            }
            Ok(_) => {
                // Expired: etcd deleted our owner keys; every room we held is lost.
                tracing::warn!(
                    lease = id,
                    "etcd lease expired: this replica's rooms are lost"
                );
                self.lost(id);
            }
            Err(e) => {
                let stale = self
                    .lease_ok
                    .lock()
                    .is_none_or(|t| t.elapsed() >= self.config.lease_ttl);
                tracing::warn!(error = %e, stale, "etcd keepalive failed");
                if stale {
                    self.lost(id);
                }
            }
        }
    }

    fn lost(&self, id: i64) {
        let mut lease = self.lease.lock();
        if *lease == Some(id) {
            *lease = None;
            self.owned.lock().clear();
            self.ready.store(false, Ordering::Relaxed);
        }
    }

    async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<Value, StoreError> {
        self.post(
            "/v3/kv/txn",
            &json!({ "compare": compare, "success": success, "failure": failure }),
        )
        .await
    }

    fn owner_compare(&self, room: &str, fence: Fence) -> Value {
        json!({
            "key": b64(self.room_key(room, "owner").as_bytes()),
            "result": "EQUAL",
            "target": "CREATE",
            "create_revision": fence.0.to_string(),
        })
    }

    fn range(key: &str, end: Option<&[u8]>) -> Value {
        match end {
            Some(end) => {
                json!({ "request_range": { "key": b64(key.as_bytes()), "range_end": b64(end) } })
            }
            None => json!({ "request_range": { "key": b64(key.as_bytes()) } }),
        }
    }

    /// The image and log reads of `room`, as txn operations.
    fn reads(&self, room: &str) -> Vec<Value> {
        let log = self.room_key(room, "log/");
        vec![
            Self::range(&self.room_key(room, "image"), None),
            Self::range(&log, Some(&prefix_end(&log))),
        ]
    }

    fn stored(&self, image: &Value, log: &Value) -> Result<Option<StoredRoom>, StoreError> {
        let Some((_, image, _, _)) = kvs(image).into_iter().next() else {
            return Ok(None);
        };
        let mut entries = Vec::new();
        for (key, value, _, _) in kvs(log) {
            let seq = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.rsplit('/').next())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Corrupt("log key".to_owned()))?;
            entries.push((seq, value));
        }
        Ok(Some(StoredRoom { image, entries }))
    }

    async fn acquire(&self, room: &str) -> Result<Claim, StoreError> {
        let lease = self.lease().await?;
        let owner_key = self.room_key(room, "owner");
        let value = json!({ "replica": self.config.replica, "url": self.config.url }).to_string();
        let mut success = vec![json!({ "request_put": {
            "key": b64(owner_key.as_bytes()),
            "value": b64(value.as_bytes()),
            "lease": lease.to_string(),
        }})];
        success.extend(self.reads(room));
        let mut failure = vec![Self::range(&owner_key, None)];
        failure.extend(self.reads(room));
        let absent = json!({
            "key": b64(owner_key.as_bytes()),
            "result": "EQUAL",
            "target": "CREATE",
            "create_revision": "0",
        });
        let v = self.txn(vec![absent], success, failure).await?;
        let responses = v["responses"].as_array().cloned().unwrap_or_default();
        let part = |i: usize, k: &str| {
            responses
                .get(i)
                .map(|r| r[k].clone())
                .unwrap_or(Value::Null)
        };
        let fence;
        if v["succeeded"].as_bool() == Some(true) {
            fence = Fence(
                int(&v["header"]["revision"]).ok_or_else(|| unavailable("txn without revision"))?,
            );
        } else {
            let owner = kvs(&part(0, "response_range"));
            let Some((_, value, created, owner_lease)) = owner.into_iter().next() else {
                return Err(unavailable("owner key vanished during acquire; retry"));
            };
            let held: Value = serde_json::from_slice(&value).unwrap_or(Value::Null);
            let replica = held["replica"].as_str().unwrap_or("?").to_owned();
            if replica == self.config.replica && owner_lease == lease {
                fence = Fence(created);
            } else {
                return Err(StoreError::Owned {
                    replica,
                    url: held["url"].as_str().map(str::to_owned),
                });
            }
        }
        let stored = self.stored(&part(1, "response_range"), &part(2, "response_range"))?;
        self.owned.lock().insert(room.to_owned(), fence);
        self.stats.acquired.fetch_add(1, Ordering::Relaxed);
        Ok(Claim { fence, stored })
    }

    /// Puts this replica's SFU node reports under its lease.
    async fn report_sfu(&self, value: String) -> Result<(), StoreError> {
        let lease = self.lease().await?;
        let key = format!("{}sfu/{}", self.config.prefix, self.config.replica);
        self.post(
            "/v3/kv/put",
            &json!({
                "key": b64(key.as_bytes()),
                "value": b64(value.as_bytes()),
                "lease": lease.to_string(),
            }),
        )
        .await?;
        Ok(())
    }

    /// The other replicas' SFU node reports.
    async fn sfu_reports(&self) -> Result<Vec<(String, Vec<SfuNodeReport>)>, StoreError> {
        let prefix = format!("{}sfu/", self.config.prefix);
        let v = self
            .post(
                "/v3/kv/range",
                &json!({
                    "key": b64(prefix.as_bytes()),
                    "range_end": b64(&prefix_end(&prefix)),
                }),
            )
            .await?;
        Ok(kvs(&v)
            .into_iter()
            .filter_map(|(key, value, _, _)| {
                let replica = String::from_utf8(key)
                    .ok()?
                    .strip_prefix(&prefix)?
                    .to_owned();
                if replica == self.config.replica {
                    return None;
                }
                // A report that does not parse is skipped (another version, or corrupt).
                let reports = serde_json::from_slice(&value).ok()?;
                Some((replica, reports))
            })
            .collect())
    }

    /// The owner key's `(replica, url)`, if the room has an owner.
    async fn owner(&self, room: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        let key = self.room_key(room, "owner");
        let v = self
            .post("/v3/kv/range", &json!({ "key": b64(key.as_bytes()) }))
            .await?;
        Ok(kvs(&v).into_iter().next().map(|(_, value, _, _)| {
            let held: Value = serde_json::from_slice(&value).unwrap_or(Value::Null);
            (
                held["replica"].as_str().unwrap_or("?").to_owned(),
                held["url"].as_str().map(str::to_owned),
            )
        }))
    }

    async fn append(&self, room: &str, fence: Fence, batch: Persist) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        for (seq, value) in &batch.put {
            ops.push(json!({ "request_put": {
                "key": b64(self.log_key(room, *seq).as_bytes()),
                "value": b64(value),
            }}));
        }
        for seq in &batch.delete {
            ops.push(json!({ "request_delete_range": {
                "key": b64(self.log_key(room, *seq).as_bytes()),
            }}));
        }
        if let Some(image) = &batch.image {
            ops.push(json!({ "request_put": {
                "key": b64(self.room_key(room, "image").as_bytes()),
                "value": b64(image),
            }}));
        }
        // One transaction, unless it exceeds etcd's operation limit: then several in order,
        // each conditional on the fence, the image last.
        let mut chunks: Vec<Vec<Value>> = Vec::new();
        while ops.len() > MAX_TXN_OPS {
            let rest = ops.split_off(MAX_TXN_OPS);
            chunks.push(std::mem::replace(&mut ops, rest));
        }
        chunks.push(ops);
        for chunk in chunks {
            let v = self
                .txn(vec![self.owner_compare(room, fence)], chunk, Vec::new())
                .await?;
            if v["succeeded"].as_bool() != Some(true) {
                self.owned.lock().remove(room);
                return Err(StoreError::Fenced);
            }
        }
        Ok(())
    }

    async fn release(&self, room: &str, fence: Fence, end: bool) -> Result<(), StoreError> {
        self.owned.lock().remove(room);
        let op = if end {
            let all = self.room_key(room, "");
            json!({ "request_delete_range": { "key": b64(all.as_bytes()), "range_end": b64(&prefix_end(&all)) } })
        } else {
            json!({ "request_delete_range": { "key": b64(self.room_key(room, "owner").as_bytes()) } })
        };
        self.txn(vec![self.owner_compare(room, fence)], vec![op], Vec::new())
            .await
            .map(|_| ())
    }

    async fn revoke(&self) -> Result<(), StoreError> {
        let id = {
            let mut lease = self.lease.lock();
            self.closing.store(true, Ordering::SeqCst);
            lease.take()
        };
        self.owned.lock().clear();
        self.ready.store(false, Ordering::Relaxed);
        if let Some(id) = id {
            self.revoke_lease(id).await?;
            tracing::info!(lease = id, "etcd lease revoked: rooms handed over");
        }
        Ok(())
    }
}

impl EtcdStore {
    /// Connects (grants this replica's lease) and starts the keepalive. Fails if no
    /// endpoint answers.
    pub fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(unavailable)?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(unavailable)?;
        let inner = Arc::new(Inner {
            client,
            config,
            endpoint: AtomicUsize::new(0),
            lease: Mutex::new(None),
            granting: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            lease_ok: Mutex::new(None),
            ready: AtomicBool::new(false),
            owned: Mutex::new(HashMap::new()),
            stats: StoreStats::default(),
        });
        let store = Self {
            inner: inner.clone(),
            rt: Some(rt),
        };
        store.call(async move { inner.grant().await })??;
        let weak = Arc::downgrade(&store.inner);
        let every = (store.inner.config.lease_ttl / 3).max(Duration::from_millis(200));
        if let Some(rt) = &store.rt {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.keepalive().await;
                }
            });
        }
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for it (from any thread, async or not).
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| unavailable("store stopped"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        // Every request has its own timeout per endpoint; this bounds the whole call.
        let limit = self.inner.config.timeout + Duration::from_secs(1);
        rx.recv_timeout(limit)
            .map_err(|_| unavailable("etcd request timed out"))
    }

    /// The replica id.
    pub fn replica(&self) -> &str {
        &self.inner.config.replica
    }
}

impl RoomStore for EtcdStore {
    fn durable(&self) -> bool {
        true
    }

    fn acquire(&self, room: &str) -> Result<Claim, StoreError> {
        let inner = self.inner.clone();
        let room = room.to_owned();
        self.call(async move { inner.acquire(&room).await })?
    }

    fn append(&self, room: &str, fence: Fence, batch: &Persist) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let room_name = room.to_owned();
        let owned = batch.clone();
        let r = self
            .call(async move { inner.append(&room_name, fence, owned).await })
            .and_then(|r| r);
        match &r {
            Ok(()) => self.inner.stats.wrote(batch),
            Err(e) => {
                self.inner.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(room, error = %e, "room store write refused");
            }
        }
        r
    }

    fn release(&self, room: &str, fence: Fence, end: bool) {
        let inner = self.inner.clone();
        let room_name = room.to_owned();
        if let Err(e) = self
            .call(async move { inner.release(&room_name, fence, end).await })
            .and_then(|r| r)
        {
            tracing::warn!(room, error = %e, "room release failed (its lease releases it)");
        }
    }

    fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    fn release_all(&self) {
        let inner = self.inner.clone();
        if let Err(e) = self
            .call(async move { inner.revoke().await })
            .and_then(|r| r)
        {
            tracing::warn!(error = %e, "lease revoke failed (it expires after its TTL)");
        }
    }

    fn owns(&self, room: &str, fence: Fence) -> bool {
        self.inner.owned.lock().get(room) == Some(&fence)
    }

    fn report_sfu_nodes(&self, nodes: &[SfuNodeReport]) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let value = serde_json::to_string(nodes).map_err(unavailable)?;
        self.call(async move { inner.report_sfu(value).await })?
    }

    fn sfu_nodes(&self) -> Result<Vec<(String, Vec<SfuNodeReport>)>, StoreError> {
        let inner = self.inner.clone();
        self.call(async move { inner.sfu_reports().await })?
    }

    fn owner_url(&self, room: &str) -> Result<Option<String>, StoreError> {
        let inner = self.inner.clone();
        let room = room.to_owned();
        let owner = self.call(async move { inner.owner(&room).await })??;
        Ok(owner.and_then(|(replica, url)| {
            if replica == self.inner.config.replica {
                None
            } else {
                url
            }
        }))
    }

    fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }
}
