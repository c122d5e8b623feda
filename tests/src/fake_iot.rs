//! A local fake of the two AWS services the IoT exporters write to, for
//! tests and demos: IoT Analytics (channels, `BatchPutMessage`,
//! `SampleChannelData`) and IoT SiteWise (asset models, assets, property
//! aliases, `BatchPutAssetPropertyValue`, latest value and value history).
//!
//! It speaks restJson1 over HTTP/1.1 on 127.0.0.1 (one thread per
//! connection, keep-alive), checks the published request limits and answers
//! errors the way the services do: the HTTP status, an `x-amzn-ErrorType`
//! header and a `{"message": ...}` body. Requests must carry a SigV4
//! `Authorization` header whose credential scope names the right service
//! (`iotanalytics` or `iotsitewise`), for today (±15 minutes); the signature
//! itself is not verified.
//!
//! Faults queued with [`FakeIot::inject`] apply to the next data-plane calls
//! (`BatchPutMessage` for Analytics, `BatchPutAssetPropertyValue` for
//! SiteWise) of that service, one fault per call, first in first out; every
//! other call is served normally.
//!
//! Everything is in memory and bounded: at most [`MAX_RECORDED_REQUESTS`]
//! recorded requests holding at most [`MAX_RECORDED_BYTES`] of bodies (the
//! oldest are forgotten first), [`MAX_MESSAGES_PER_CHANNEL`] messages per
//! channel and [`MAX_VALUES_PER_PROPERTY`] values per asset property (the
//! oldest, by arrival or by timestamp, are dropped).
//!
//! The same inspection and fault injection is reachable over HTTP, for the
//! `fake-iot` demo binary (these calls need no signature and are not
//! recorded):
//! - `GET /_fake/requests`: the recorded requests, oldest first;
//! - `GET /_fake/state`: channels with their messages, assets with their
//!   properties, aliases and values, faults left;
//! - `POST /_fake/reset`: forget everything;
//! - `GET /_fake/faults`: faults left per service;
//! - `POST /_fake/faults` with `{"service": "analytics"|"sitewise",
//!   "faults": [...]}`, each fault one of `"throttle"`, `"unavailable"`,
//!   `"internal"`, `"drop"`, `{"delayMs": N}`,
//!   `{"entryErrors": {"code": "...", "every": N}}`;
//! - `POST /_fake/channels` with `{"name": "..."}`;
//! - `POST /_fake/assets` with `{"name": "...", "properties": [{"name":
//!   "...", "dataType": "DOUBLE"}]}`, answering `{"assetId", "propertyIds"}`;
//! - `POST /_fake/aliases` with `{"assetId", "propertyId", "alias"}`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::http::{header, next_request};

/// Recorded requests kept at most; the oldest are forgotten first.
pub const MAX_RECORDED_REQUESTS: usize = 100_000;
/// Request body bytes the recorded requests hold at most (256 MiB).
pub const MAX_RECORDED_BYTES: usize = 256 << 20;
/// Messages kept per Analytics channel; the oldest arrivals are dropped.
pub const MAX_MESSAGES_PER_CHANNEL: usize = 1_000_000;
/// Values kept per SiteWise asset property; the oldest timestamps are dropped.
pub const MAX_VALUES_PER_PROPERTY: usize = 1_000_000;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
/// SiteWise accepts values up to 7 days old and 10 minutes ahead.
const SITEWISE_PAST_SECS: f64 = 7.0 * 86_400.0;
const SITEWISE_FUTURE_SECS: f64 = 600.0;
const DATA_TYPES: [&str; 4] = ["DOUBLE", "INTEGER", "BOOLEAN", "STRING"];
const VARIANTS: [&str; 5] = [
    "stringValue",
    "integerValue",
    "doubleValue",
    "booleanValue",
    "nullValue",
];

/// One of the two faked services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Analytics,
    SiteWise,
}

impl Service {
    /// The SigV4 signing name (credential scope service).
    pub fn signing_name(self) -> &'static str {
        match self {
            Service::Analytics => "iotanalytics",
            Service::SiteWise => "iotsitewise",
        }
    }

    fn index(self) -> usize {
        match self {
            Service::Analytics => 0,
            Service::SiteWise => 1,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Service::Analytics => "analytics",
            Service::SiteWise => "sitewise",
        }
    }

    fn from_label(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "analytics" | "iotanalytics" => Some(Service::Analytics),
            "sitewise" | "iotsitewise" => Some(Service::SiteWise),
            _ => None,
        }
    }
}

/// One injected fault, for one data-plane call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 `ThrottlingException`, nothing stored.
    Throttle,
    /// 503 `ServiceUnavailableException`, nothing stored.
    Unavailable,
    /// 500 `InternalFailureException`, nothing stored.
    Internal,
    /// The connection is closed without an answer, nothing stored.
    Drop,
    /// The call is served (and stored) this much later.
    Delay(Duration),
    /// Entries (messages) at positions 0, `every`, 2×`every`… fail with this
    /// per-entry error code and are not stored; the others are processed
    /// normally.
    EntryErrors { code: String, every: usize },
}

/// One request the fake received (control calls under `/_fake/` excluded).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The service the path belongs to; `None` for an unknown path.
    pub service: Option<Service>,
    pub method: String,
    /// The path, without the query string, as sent (percent-encoded).
    pub path: String,
    /// The query string, without `?`, as sent.
    pub query: String,
    /// The status answered; 0 while not answered yet, or for a dropped call.
    pub status: u16,
    /// The JSON body; `Null` if empty, a string if it was not JSON.
    pub body: Value,
}

impl RecordedRequest {
    fn to_json(&self) -> Value {
        json!({
            "service": self.service.map(Service::label),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "body": self.body,
        })
    }
}

struct Message {
    id: String,
    payload: Vec<u8>,
    arrived: f64,
}

struct Channel {
    arn: String,
    retention: Value,
    created: f64,
    messages: VecDeque<Message>,
}

#[derive(Clone)]
struct PropertyDef {
    id: String,
    name: String,
    data_type: String,
    unit: Option<String>,
}

struct Model {
    arn: String,
    name: String,
    properties: Vec<PropertyDef>,
}

struct Asset {
    arn: String,
    name: String,
    model_id: String,
    created: f64,
    updated: f64,
    properties: Vec<PropertyDef>,
}

/// (asset id, property id).
type Key = (String, String);
/// (seconds, nanoseconds) since the epoch.
type Stamp = (i64, u32);

#[derive(Default)]
struct State {
    channels: BTreeMap<String, Channel>,
    models: BTreeMap<String, Model>,
    assets: BTreeMap<String, Asset>,
    aliases: HashMap<String, Key>,
    values: HashMap<Key, BTreeMap<Stamp, Value>>,
    faults: [VecDeque<Fault>; 2],
    /// (sequence number, request, body bytes).
    requests: VecDeque<(u64, RecordedRequest, usize)>,
    next_seq: u64,
    recorded_bytes: usize,
}

impl State {
    fn record(&mut self, request: RecordedRequest, bytes: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.requests.push_back((seq, request, bytes));
        self.recorded_bytes += bytes;
        while self.requests.len() > MAX_RECORDED_REQUESTS
            || (self.recorded_bytes > MAX_RECORDED_BYTES && self.requests.len() > 1)
        {
            if let Some((_, _, b)) = self.requests.pop_front() {
                self.recorded_bytes -= b;
            }
        }
        seq
    }

    fn set_status(&mut self, seq: u64, status: u16) {
        let Some(first) = self.requests.front().map(|r| r.0) else {
            return;
        };
        let Some(i) = seq.checked_sub(first) else {
            return;
        };
        if let Some(entry) = self.requests.get_mut(i as usize) {
            if entry.0 == seq {
                entry.1.status = status;
            }
        }
    }

    fn add_channel(&mut self, name: &str, retention: Value) -> String {
        let arn = format!("arn:aws:iotanalytics:{REGION}:{ACCOUNT}:channel/{name}");
        self.channels.insert(
            name.to_string(),
            Channel {
                arn: arn.clone(),
                retention,
                created: now(),
                messages: VecDeque::new(),
            },
        );
        arn
    }

    fn add_model(&mut self, name: &str, properties: Vec<PropertyDef>) -> (String, String) {
        let id = new_id();
        let arn = format!("arn:aws:iotsitewise:{REGION}:{ACCOUNT}:asset-model/{id}");
        self.models.insert(
            id.clone(),
            Model {
                arn: arn.clone(),
                name: name.to_string(),
                properties,
            },
        );
        (id, arn)
    }

    fn add_asset(&mut self, name: &str, model_id: &str) -> (String, String) {
        let id = new_id();
        let arn = format!("arn:aws:iotsitewise:{REGION}:{ACCOUNT}:asset/{id}");
        let properties = self.models[model_id].properties.clone();
        let t = now();
        self.assets.insert(
            id.clone(),
            Asset {
                arn: arn.clone(),
                name: name.to_string(),
                model_id: model_id.to_string(),
                created: t,
                updated: t,
                properties,
            },
        );
        (id, arn)
    }

    fn property(&self, asset_id: &str, property_id: &str) -> Option<&PropertyDef> {
        self.assets
            .get(asset_id)?
            .properties
            .iter()
            .find(|p| p.id == property_id)
    }

    fn alias_of(&self, key: &Key) -> Option<&str> {
        self.aliases
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(a, _)| a.as_str())
    }

    /// Sets (or with `None`, removes) the alias of a property.
    fn set_alias(&mut self, key: &Key, alias: Option<&str>) -> Result<(), Reply> {
        if let Some(alias) = alias {
            if let Some(owner) = self.aliases.get(alias) {
                if owner != key {
                    return Err(fail(
                        409,
                        "ConflictingOperationException",
                        &format!("alias {alias} is already used by another property"),
                    ));
                }
            }
        }
        self.aliases.retain(|_, k| k != key);
        if let Some(alias) = alias {
            self.aliases.insert(alias.to_string(), key.clone());
        }
        if let Some(asset) = self.assets.get_mut(&key.0) {
            asset.updated = now();
        }
        Ok(())
    }

    /// Finds the property an entry or query addresses.
    fn resolve(
        &self,
        asset_id: Option<&str>,
        property_id: Option<&str>,
        alias: Option<&str>,
    ) -> Result<(Key, String), (u16, &'static str, String)> {
        let invalid = |m: String| (400, "InvalidRequestException", m);
        let missing = |m: String| (404, "ResourceNotFoundException", m);
        match (asset_id, property_id, alias) {
            (Some(a), Some(p), alias) => {
                if !self.assets.contains_key(a) {
                    return Err(missing(format!("Asset {a} does not exist")));
                }
                let def = self
                    .property(a, p)
                    .ok_or_else(|| missing(format!("Property {p} does not exist in asset {a}")))?;
                let key = (a.to_string(), p.to_string());
                if let Some(alias) = alias {
                    if self.aliases.get(alias) != Some(&key) {
                        return Err(invalid(format!(
                            "alias {alias} does not identify property {p} of asset {a}"
                        )));
                    }
                }
                Ok((key, def.data_type.clone()))
            }
            (None, None, Some(alias)) => {
                let key = self
                    .aliases
                    .get(alias)
                    .ok_or_else(|| missing(format!("No asset property has the alias {alias}")))?;
                let def = self
                    .property(&key.0, &key.1)
                    .expect("aliases point at existing properties");
                Ok((key.clone(), def.data_type.clone()))
            }
            _ => Err(invalid(
                "Specify either assetId and propertyId, or propertyAlias".into(),
            )),
        }
    }

    fn snapshot(&self) -> Value {
        let channels: Map<String, Value> = self
            .channels
            .iter()
            .map(|(name, c)| {
                let messages: Vec<Value> = c
                    .messages
                    .iter()
                    .map(|m| {
                        json!({
                            "messageId": m.id,
                            "payload": base64_encode(&m.payload),
                            "text": std::str::from_utf8(&m.payload).ok(),
                        })
                    })
                    .collect();
                (name.clone(), json!({"arn": c.arn, "messages": messages}))
            })
            .collect();
        let assets: Vec<Value> = self
            .assets
            .iter()
            .map(|(id, a)| {
                let properties: Vec<Value> = a
                    .properties
                    .iter()
                    .map(|p| {
                        let key = (id.clone(), p.id.clone());
                        let values: Vec<Value> = self
                            .values
                            .get(&key)
                            .map(|v| v.values().cloned().collect())
                            .unwrap_or_default();
                        json!({
                            "id": p.id,
                            "name": p.name,
                            "dataType": p.data_type,
                            "alias": self.alias_of(&key),
                            "values": values,
                        })
                    })
                    .collect();
                json!({
                    "assetId": id,
                    "assetName": a.name,
                    "assetModelId": a.model_id,
                    "properties": properties,
                })
            })
            .collect();
        json!({
            "channels": channels,
            "assets": assets,
            "faults": {
                "analytics": self.faults[0].len(),
                "sitewise": self.faults[1].len(),
            },
            "recordedRequests": self.requests.len(),
        })
    }
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake, listening on 127.0.0.1 until dropped.
pub struct FakeIot {
    pub port: u16,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

impl FakeIot {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts on `port` of 127.0.0.1 (0: a free one).
    pub fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("fake-iot cannot listen on 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || serve(conn, &s));
                }
            }
        });
        Self {
            port,
            shared,
            listener: Some(handle),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Queues faults for the next data-plane calls of `service`, one each.
    pub fn inject(&self, service: Service, faults: impl IntoIterator<Item = Fault>) {
        self.shared.lock().faults[service.index()].extend(faults);
    }

    pub fn faults_left(&self, service: Service) -> usize {
        self.shared.lock().faults[service.index()].len()
    }

    /// Every request received (control calls excluded), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .map(|r| r.1.clone())
            .collect()
    }

    /// Forgets every resource, value, fault and recorded request.
    pub fn reset(&self) {
        let mut st = self.shared.lock();
        let next_seq = st.next_seq;
        *st = State {
            next_seq,
            ..State::default()
        };
    }

    /// The messages stored in `channel`, in arrival order: (messageId, payload).
    pub fn channel_messages(&self, channel: &str) -> Vec<(String, Vec<u8>)> {
        self.shared
            .lock()
            .channels
            .get(channel)
            .map(|c| {
                c.messages
                    .iter()
                    .map(|m| (m.id.clone(), m.payload.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The values stored for a property, in time order, each the JSON
    /// `{"value", "timestamp", "quality"?}` as it was received.
    pub fn property_values(&self, asset_id: &str, property_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .values
            .get(&(asset_id.to_string(), property_id.to_string()))
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Creates an Analytics channel (no-op if it exists).
    pub fn create_channel(&self, name: &str) {
        let mut st = self.shared.lock();
        if !st.channels.contains_key(name) {
            st.add_channel(name, json!({"unlimited": true}));
        }
    }

    /// Creates an asset model with these measurement properties (name,
    /// dataType) and one asset of it; the asset's property ids, in order.
    pub fn create_asset(&self, name: &str, properties: &[(&str, &str)]) -> (String, Vec<String>) {
        for (p, t) in properties {
            assert!(
                DATA_TYPES.contains(t),
                "property {p}: data type {t} is not one of {DATA_TYPES:?}"
            );
        }
        let defs: Vec<PropertyDef> = properties
            .iter()
            .map(|(p, t)| PropertyDef {
                id: new_id(),
                name: p.to_string(),
                data_type: t.to_string(),
                unit: None,
            })
            .collect();
        let ids = defs.iter().map(|d| d.id.clone()).collect();
        let mut st = self.shared.lock();
        let (model_id, _) = st.add_model(&format!("{name} model {}", new_id()), defs);
        let (asset_id, _) = st.add_asset(name, &model_id);
        (asset_id, ids)
    }

    /// Sets the alias of an asset property (panics if it does not exist or
    /// the alias belongs to another property).
    pub fn set_alias(&self, asset_id: &str, property_id: &str, alias: &str) {
        let mut st = self.shared.lock();
        assert!(
            st.property(asset_id, property_id).is_some(),
            "no property {property_id} in asset {asset_id}"
        );
        let key = (asset_id.to_string(), property_id.to_string());
        if st.set_alias(&key, Some(alias)).is_err() {
            panic!("alias {alias} is already used by another property");
        }
    }
}

impl Drop for FakeIot {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag (and wait for it only if
        // it could be woken).
        let woken = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        if let Some(h) = self.listener.take().filter(|_| woken) {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

struct Reply {
    status: u16,
    error: Option<String>,
    body: Vec<u8>,
}

enum Outcome {
    Reply(Reply),
    Drop,
}

fn reply(status: u16, body: &Value) -> Reply {
    Reply {
        status,
        error: None,
        body: serde_json::to_vec(body).expect("JSON"),
    }
}

fn fail(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status,
        error: Some(code.to_string()),
        body: serde_json::to_vec(&json!({ "message": message })).expect("JSON"),
    }
}

fn invalid(message: &str) -> Reply {
    fail(400, "InvalidRequestException", message)
}

fn not_found(message: &str) -> Reply {
    fail(404, "ResourceNotFoundException", message)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_nodelay(true);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        // The next request, closing when the fake stops.
        let stopped = || shared.stop.load(Ordering::SeqCst);
        let Some((head, body)) = next_request(&mut reader, stopped) else {
            return;
        };
        let close = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match handle(shared, &head, &body) {
            Outcome::Drop => {
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Outcome::Reply(r) => {
                let mut msg = format!(
                    "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nx-amzn-RequestId: {}\r\n",
                    r.status,
                    reason(r.status),
                    r.body.len(),
                    new_id()
                );
                if let Some(code) = &r.error {
                    msg.push_str(&format!("x-amzn-ErrorType: {code}\r\n"));
                }
                if close {
                    msg.push_str("Connection: close\r\n");
                }
                msg.push_str("\r\n");
                if out.write_all(msg.as_bytes()).is_err() || out.write_all(&r.body).is_err() {
                    return;
                }
                if close {
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// A parsed API request.
struct Request<'a> {
    method: &'a str,
    segs: Vec<String>,
    query: Vec<(String, String)>,
    body: Value,
}

impl Request<'_> {
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn q_all(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn segs(&self) -> Vec<&str> {
        self.segs.iter().map(String::as_str).collect()
    }
}

fn service_of(first_segment: &str) -> Option<Service> {
    match first_segment {
        "channels" | "messages" => Some(Service::Analytics),
        "asset-models" | "assets" | "properties" => Some(Service::SiteWise),
        _ => None,
    }
}

fn handle(shared: &Shared, head: &str, body: &[u8]) -> Outcome {
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/_fake" || path.starts_with("/_fake/") {
        return Outcome::Reply(control(shared, &method, path, body));
    }
    let segs: Vec<String> = path.trim_matches('/').split('/').map(pct_decode).collect();
    let service = service_of(&segs[0]);
    let parsed: Result<Value, ()> = if body.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(body).map_err(|_| ())
    };
    let recorded_body = parsed
        .clone()
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let seq = shared.lock().record(
        RecordedRequest {
            service,
            method: method.clone(),
            path: path.to_string(),
            query: query.to_string(),
            status: 0,
            body: recorded_body,
        },
        body.len(),
    );
    let outcome = api(shared, service, &method, segs, query, head, parsed);
    if let Outcome::Reply(r) = &outcome {
        shared.lock().set_status(seq, r.status);
    }
    outcome
}

fn api(
    shared: &Shared,
    service: Option<Service>,
    method: &str,
    segs: Vec<String>,
    query: &str,
    head: &str,
    body: Result<Value, ()>,
) -> Outcome {
    let Some(service) = service else {
        return Outcome::Reply(fail(
            404,
            "UnknownOperationException",
            &format!("no operation at /{}", segs.join("/")),
        ));
    };
    if let Err(r) = check_auth(head, service) {
        return Outcome::Reply(r);
    }
    let data_plane = method == "POST"
        && (segs == ["messages", "batch"] || (segs.len() == 1 && segs[0] == "properties"));
    let fault = if data_plane {
        shared.lock().faults[service.index()].pop_front()
    } else {
        None
    };
    let mut entry_errors = None;
    match fault {
        None => {}
        Some(Fault::Throttle) => {
            return Outcome::Reply(fail(429, "ThrottlingException", "Rate exceeded (injected)"))
        }
        Some(Fault::Unavailable) => {
            return Outcome::Reply(fail(
                503,
                "ServiceUnavailableException",
                "The service is unavailable (injected)",
            ))
        }
        Some(Fault::Internal) => {
            return Outcome::Reply(fail(
                500,
                "InternalFailureException",
                "Internal failure (injected)",
            ))
        }
        Some(Fault::Drop) => return Outcome::Drop,
        Some(Fault::Delay(d)) => std::thread::sleep(d),
        Some(Fault::EntryErrors { code, every }) => entry_errors = Some((code, every.max(1))),
    }
    let Ok(body) = body else {
        return Outcome::Reply(fail(
            400,
            "SerializationException",
            "the request body is not valid JSON",
        ));
    };
    let req = Request {
        method,
        segs,
        query: parse_query(query),
        body,
    };
    let mut st = shared.lock();
    let r = route(
        &mut st,
        &req,
        entry_errors.as_ref().map(|(c, e)| (c.as_str(), *e)),
    );
    Outcome::Reply(r.unwrap_or_else(|e| e))
}

/// Per-entry injected errors: (code, every).
type EntryErrors<'a> = Option<(&'a str, usize)>;

fn route(st: &mut State, req: &Request<'_>, errs: EntryErrors<'_>) -> Result<Reply, Reply> {
    match (req.method, req.segs().as_slice()) {
        ("POST", ["channels"]) => create_channel(st, req),
        ("GET", ["channels", name]) => describe_channel(st, req, name),
        ("GET", ["channels", name, "sample"]) => sample_channel_data(st, req, name),
        ("POST", ["messages", "batch"]) => batch_put_message(st, req, errs),
        ("POST", ["asset-models"]) => create_asset_model(st, req),
        ("POST", ["assets"]) => create_asset(st, req),
        ("GET", ["assets", id]) => describe_asset(st, id),
        ("PUT", ["assets", id, "properties", pid]) => update_asset_property(st, req, id, pid),
        ("POST", ["properties"]) => batch_put_values(st, req, errs),
        ("GET", ["properties", "latest"]) => get_value(st, req),
        ("GET", ["properties", "history"]) => get_history(st, req),
        _ => Err(fail(
            404,
            "UnknownOperationException",
            &format!("no operation {} /{}", req.method, req.segs.join("/")),
        )),
    }
}

/// Checks the SigV4 `Authorization` header: present, well formed, dated
/// today and scoped to `service`. The signature itself is not verified.
fn check_auth(head: &str, service: Service) -> Result<(), Reply> {
    let Some(auth) = header(head, "authorization") else {
        return Err(fail(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let bad = |why: &str| fail(403, "InvalidSignatureException", why);
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| bad("Only AWS4-HMAC-SHA256 signatures are accepted"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(bad(
            "Authorization header requires Credential, SignedHeaders and Signature",
        ));
    };
    if !signed.split(';').any(|h| h == "host") {
        return Err(bad("'Host' must be a signed header"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("The signature is not 64 hexadecimal digits"));
    }
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[0].is_empty() || scope[2].is_empty() || scope[4] != "aws4_request"
    {
        return Err(bad(
            "Credential should be <key>/<date>/<region>/<service>/aws4_request",
        ));
    }
    let Some(date) = header(head, "x-amz-date") else {
        return Err(bad("The x-amz-date header is missing"));
    };
    let Some(signed_at) = parse_amz_date(date) else {
        return Err(bad("The x-amz-date header is not yyyyMMddTHHmmssZ"));
    };
    if scope[1] != &date[..8] {
        return Err(bad(&format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            scope[1],
            &date[..8]
        )));
    }
    if (signed_at as f64 - now()).abs() > 900.0 {
        return Err(bad(
            "Signature expired: the request time is more than 15 minutes away",
        ));
    }
    if scope[3] != service.signing_name() {
        return Err(bad(&format!(
            "Credential should be scoped to correct service: '{}'.",
            service.signing_name()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// IoT Analytics

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Reply> {
    body.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{name} is required and must be a string")))
}

fn check_channel_name(name: &str) -> Result<(), Reply> {
    let n = name.chars().count();
    if !(1..=128).contains(&n)
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.starts_with("__")
    {
        return Err(invalid(&format!(
            "channelName {name:?} must match (^(?!_{{2}}))(^[a-zA-Z0-9_]+$), 1 to 128 characters"
        )));
    }
    Ok(())
}

fn create_channel(st: &mut State, req: &Request<'_>) -> Result<Reply, Reply> {
    let name = str_field(&req.body, "channelName")?;
    check_channel_name(name)?;
    if let Some(c) = st.channels.get(name) {
        return Err(Reply {
            status: 409,
            error: Some("ResourceAlreadyExistsException".into()),
            body: serde_json::to_vec(&json!({
                "message": format!("Channel {name} already exists"),
                "resourceId": name,
                "resourceArn": c.arn,
            }))
            .expect("JSON"),
        });
    }
    let retention = match req.body.get("retentionPeriod") {
        Some(r) if r.is_object() => r.clone(),
        _ => json!({"unlimited": true}),
    };
    let arn = st.add_channel(name, retention.clone());
    Ok(reply(
        201,
        &json!({"channelName": name, "channelArn": arn, "retentionPeriod": retention}),
    ))
}

fn channel<'a>(st: &'a State, name: &str) -> Result<&'a Channel, Reply> {
    st.channels
        .get(name)
        .ok_or_else(|| not_found(&format!("A resource with the name {name} cannot be found")))
}

fn describe_channel(st: &mut State, req: &Request<'_>, name: &str) -> Result<Reply, Reply> {
    let c = channel(st, name)?;
    let mut channel = json!({
        "name": name,
        "arn": c.arn,
        "status": "ACTIVE",
        "storage": {"serviceManagedS3": {}},
        "retentionPeriod": c.retention,
        "creationTime": c.created,
        "lastUpdateTime": c.created,
    });
    if let Some(m) = c.messages.back() {
        channel["lastMessageArrivalTime"] = json!(m.arrived);
    }
    let mut answer = json!({ "channel": channel });
    if req.q("includeStatistics") == Some("true") {
        let size: usize = c.messages.iter().map(|m| m.payload.len()).sum();
        answer["statistics"] =
            json!({"size": {"estimatedSizeInBytes": size, "estimatedOn": now()}});
    }
    Ok(reply(200, &answer))
}

fn sample_channel_data(st: &mut State, req: &Request<'_>, name: &str) -> Result<Reply, Reply> {
    let max = match req.q("maxMessages") {
        None => 10,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=10).contains(&n) => n,
            _ => return Err(invalid("maxMessages must be between 1 and 10")),
        },
    };
    let bound = |param: &str| -> Result<Option<f64>, Reply> {
        req.q(param)
            .map(|v| {
                parse_datetime(v)
                    .map(|(s, n)| s as f64 + f64::from(n) / 1e9)
                    .ok_or_else(|| invalid(&format!("{param} is not a date-time")))
            })
            .transpose()
    };
    let (start, end) = (bound("startTime")?, bound("endTime")?);
    let c = channel(st, name)?;
    let in_range =
        |m: &&Message| start.is_none_or(|s| m.arrived >= s) && end.is_none_or(|e| m.arrived < e);
    let mut picked: Vec<&Message> = c.messages.iter().rev().filter(in_range).take(max).collect();
    picked.reverse();
    let payloads: Vec<String> = picked.iter().map(|m| base64_encode(&m.payload)).collect();
    Ok(reply(200, &json!({ "payloads": payloads })))
}

fn batch_put_message(
    st: &mut State,
    req: &Request<'_>,
    errs: EntryErrors<'_>,
) -> Result<Reply, Reply> {
    let name = str_field(&req.body, "channelName")?;
    check_channel_name(name)?;
    let messages = req
        .body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages is required and must be a list"))?;
    if !(1..=100).contains(&messages.len()) {
        return Err(invalid(&format!(
            "{} messages: a batch holds 1 to 100 messages",
            messages.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut decoded = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let id = m
            .get("messageId")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("messages[{i}].messageId is required")))?;
        if !(1..=128).contains(&id.chars().count()) {
            return Err(invalid(&format!(
                "messages[{i}].messageId must be 1 to 128 characters"
            )));
        }
        if !seen.insert(id) {
            return Err(invalid(&format!(
                "messageId {id} appears more than once in the batch"
            )));
        }
        let payload = m
            .get("payload")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("messages[{i}].payload is required")))?;
        let payload = base64_decode(payload)
            .ok_or_else(|| invalid(&format!("messages[{i}].payload is not valid base64")))?;
        decoded.push((id, payload));
    }
    let arrived = now();
    let c = st
        .channels
        .get_mut(name)
        .ok_or_else(|| not_found(&format!("A resource with the name {name} cannot be found")))?;
    let mut errors = Vec::new();
    for (i, (id, payload)) in decoded.into_iter().enumerate() {
        if let Some((code, every)) = errs {
            if i % every == 0 {
                errors.push(json!({
                    "messageId": id,
                    "errorCode": code,
                    "errorMessage": format!("{code} (injected)"),
                }));
                continue;
            }
        }
        c.messages.push_back(Message {
            id: id.to_string(),
            payload,
            arrived,
        });
        if c.messages.len() > MAX_MESSAGES_PER_CHANNEL {
            c.messages.pop_front();
        }
    }
    Ok(reply(
        200,
        &json!({ "batchPutMessageErrorEntries": errors }),
    ))
}

// ---------------------------------------------------------------------------
// IoT SiteWise

fn check_name(what: &str, name: &str) -> Result<(), Reply> {
    if !(1..=256).contains(&name.chars().count()) || has_control(name) {
        return Err(invalid(&format!(
            "{what} must be 1 to 256 characters, without control characters"
        )));
    }
    Ok(())
}

fn create_asset_model(st: &mut State, req: &Request<'_>) -> Result<Reply, Reply> {
    let name = str_field(&req.body, "assetModelName")?;
    check_name("assetModelName", name)?;
    let empty = Vec::new();
    let props = match req.body.get("assetModelProperties") {
        None | Some(Value::Null) => &empty,
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("assetModelProperties must be a list")),
    };
    let mut defs: Vec<PropertyDef> = Vec::new();
    for p in props {
        let pname = str_field(p, "name")?;
        check_name("property name", pname)?;
        if defs.iter().any(|d| d.name == pname) {
            return Err(invalid(&format!("property name {pname} is used twice")));
        }
        let data_type = str_field(p, "dataType")?;
        if !DATA_TYPES.contains(&data_type) {
            return Err(invalid(&format!(
                "dataType {data_type} is not one of {DATA_TYPES:?} (the only ones this fake knows)"
            )));
        }
        if !p.get("type").is_some_and(Value::is_object) {
            return Err(invalid(&format!("property {pname}: type is required")));
        }
        defs.push(PropertyDef {
            id: new_id(),
            name: pname.to_string(),
            data_type: data_type.to_string(),
            unit: p.get("unit").and_then(Value::as_str).map(str::to_string),
        });
    }
    if let Some((id, m)) = st.models.iter().find(|(_, m)| m.name == name) {
        return Err(Reply {
            status: 409,
            error: Some("ResourceAlreadyExistsException".into()),
            body: serde_json::to_vec(&json!({
                "message": format!("Asset model {name} already exists"),
                "resourceId": id,
                "resourceArn": m.arn,
            }))
            .expect("JSON"),
        });
    }
    let (id, arn) = st.add_model(name, defs);
    Ok(reply(
        202,
        &json!({"assetModelId": id, "assetModelArn": arn, "assetModelStatus": {"state": "ACTIVE"}}),
    ))
}

fn create_asset(st: &mut State, req: &Request<'_>) -> Result<Reply, Reply> {
    let name = str_field(&req.body, "assetName")?;
    check_name("assetName", name)?;
    let model_id = str_field(&req.body, "assetModelId")?;
    if !st.models.contains_key(model_id) {
        return Err(not_found(&format!("Asset model {model_id} does not exist")));
    }
    let (id, arn) = st.add_asset(name, model_id);
    Ok(reply(
        202,
        &json!({"assetId": id, "assetArn": arn, "assetStatus": {"state": "ACTIVE"}}),
    ))
}

fn describe_asset(st: &mut State, id: &str) -> Result<Reply, Reply> {
    let a = st
        .assets
        .get(id)
        .ok_or_else(|| not_found(&format!("Asset {id} does not exist")))?;
    let properties: Vec<Value> = a
        .properties
        .iter()
        .map(|p| {
            let mut v = json!({"id": p.id, "name": p.name, "dataType": p.data_type});
            if let Some(alias) = st.alias_of(&(id.to_string(), p.id.clone())) {
                v["alias"] = json!(alias);
            }
            if let Some(unit) = &p.unit {
                v["unit"] = json!(unit);
            }
            v
        })
        .collect();
    Ok(reply(
        200,
        &json!({
            "assetId": id,
            "assetArn": a.arn,
            "assetName": a.name,
            "assetModelId": a.model_id,
            "assetProperties": properties,
            "assetHierarchies": [],
            "assetCompositeModels": [],
            "assetCreationDate": a.created,
            "assetLastUpdateDate": a.updated,
            "assetStatus": {"state": "ACTIVE"},
        }),
    ))
}

fn update_asset_property(
    st: &mut State,
    req: &Request<'_>,
    asset_id: &str,
    property_id: &str,
) -> Result<Reply, Reply> {
    if !st.assets.contains_key(asset_id) {
        return Err(not_found(&format!("Asset {asset_id} does not exist")));
    }
    if st.property(asset_id, property_id).is_none() {
        return Err(not_found(&format!(
            "Property {property_id} does not exist in asset {asset_id}"
        )));
    }
    // Without an alias (or with an empty one) the alias is removed.
    let alias = match req.body.get("propertyAlias") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(invalid("propertyAlias must be a string")),
    };
    if let Some(a) = alias {
        if a.chars().count() > 2048 || has_control(a) {
            return Err(invalid(
                "propertyAlias must be 1 to 2048 characters, without control characters",
            ));
        }
    }
    st.set_alias(&(asset_id.to_string(), property_id.to_string()), alias)?;
    Ok(Reply {
        status: 200,
        error: None,
        body: Vec::new(),
    })
}

/// The (seconds, nanoseconds) of a validated `TimeInNanos`.
fn stamp_of(ts: &Value) -> Stamp {
    (
        ts["timeInSeconds"].as_i64().unwrap_or_default(),
        ts.get("offsetInNanos")
            .and_then(Value::as_u64)
            .unwrap_or_default() as u32,
    )
}

fn stamp_json(s: Stamp) -> Value {
    json!({"timeInSeconds": s.0, "offsetInNanos": s.1})
}

/// Structural checks of one TQV (whole-request 400 when broken).
fn check_tqv(v: &Value, at: &str) -> Result<(), Reply> {
    let value = v
        .get("value")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(&format!("{at}.value is required")))?;
    let set: Vec<&String> = value
        .iter()
        .filter(|(_, x)| !x.is_null())
        .map(|(k, _)| k)
        .collect();
    if set.len() != 1 || !VARIANTS.contains(&set[0].as_str()) {
        return Err(invalid(&format!(
            "{at}.value must hold exactly one of stringValue, integerValue, doubleValue, booleanValue"
        )));
    }
    let ts = v
        .get("timestamp")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(&format!("{at}.timestamp is required")))?;
    match ts.get("timeInSeconds").and_then(Value::as_i64) {
        Some(s) if (1..=9_223_372_036_854_774).contains(&s) => {}
        _ => {
            return Err(invalid(&format!(
                "{at}.timestamp.timeInSeconds must be an integer from 1 to 9223372036854774"
            )))
        }
    }
    match ts.get("offsetInNanos") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64().is_some_and(|n| n <= 999_999_999) => {}
        Some(_) => {
            return Err(invalid(&format!(
                "{at}.timestamp.offsetInNanos must be an integer from 0 to 999999999"
            )))
        }
    }
    match v.get("quality") {
        None | Some(Value::Null) => {}
        Some(Value::String(q)) if ["GOOD", "BAD", "UNCERTAIN"].contains(&q.as_str()) => {}
        Some(_) => {
            return Err(invalid(&format!(
                "{at}.quality must be GOOD, BAD or UNCERTAIN"
            )))
        }
    }
    Ok(())
}

/// Whether a (structurally valid) value fits a property of `data_type`.
fn check_type(data_type: &str, value: &Value) -> Result<(), String> {
    let (kind, x) = value
        .as_object()
        .and_then(|o| o.iter().find(|(_, x)| !x.is_null()))
        .expect("checked value");
    let ok = match (data_type, kind.as_str()) {
        ("DOUBLE", "doubleValue") => match x {
            Value::Number(n) => n.as_f64().is_some_and(|d| d.abs() <= 1e100),
            Value::String(s) => s == "NaN",
            _ => false,
        },
        ("INTEGER", "integerValue") => x.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        ("BOOLEAN", "booleanValue") => x.is_boolean(),
        ("STRING", "stringValue") => x
            .as_str()
            .is_some_and(|s| s.chars().count() <= 1024 && !has_control(s)),
        _ => {
            return Err(format!(
                "The property's data type is {data_type}; {kind} does not match it"
            ))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{kind} {x} is not a valid {data_type} value"))
    }
}

fn batch_put_values(
    st: &mut State,
    req: &Request<'_>,
    errs: EntryErrors<'_>,
) -> Result<Reply, Reply> {
    let entries = req
        .body
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("entries is required and must be a list"))?;
    if !(1..=10).contains(&entries.len()) {
        return Err(invalid(&format!(
            "{} entries: a request holds 1 to 10 entries",
            entries.len()
        )));
    }
    let mut ids = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let id = e
            .get("entryId")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("entries[{i}].entryId is required")))?;
        if !(1..=64).contains(&id.len())
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(&format!(
                "entryId {id:?} must match ^[a-zA-Z0-9_-]+$, 1 to 64 characters"
            )));
        }
        if !ids.insert(id) {
            return Err(invalid(&format!("entryId {id} is used more than once")));
        }
        for f in ["assetId", "propertyId", "propertyAlias"] {
            if e.get(f).is_some_and(|v| !v.is_string() && !v.is_null()) {
                return Err(invalid(&format!("entries[{i}].{f} must be a string")));
            }
        }
        let values = e
            .get("propertyValues")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(&format!("entries[{i}].propertyValues is required")))?;
        if !(1..=10).contains(&values.len()) {
            return Err(invalid(&format!(
                "entry {id} has {} values: 1 to 10 allowed",
                values.len()
            )));
        }
        for (j, v) in values.iter().enumerate() {
            check_tqv(v, &format!("entries[{i}].propertyValues[{j}]"))?;
        }
    }

    let t_now = now();
    let mut error_entries = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let id = e["entryId"].as_str().unwrap_or_default();
        let values = e["propertyValues"].as_array().expect("checked");
        let all: Vec<Value> = values
            .iter()
            .map(|v| stamp_json(stamp_of(&v["timestamp"])))
            .collect();
        let entry_error = |code: &str, message: String| {
            json!({
                "entryId": id,
                "errors": [{"errorCode": code, "errorMessage": message, "timestamps": all}],
            })
        };
        if let Some((code, every)) = errs {
            if i % every == 0 {
                error_entries.push(entry_error(code, format!("{code} (injected)")));
                continue;
            }
        }
        let s = |f: &str| e.get(f).and_then(Value::as_str);
        let (key, data_type) = match st.resolve(s("assetId"), s("propertyId"), s("propertyAlias")) {
            Ok(r) => r,
            Err((_, code, message)) => {
                error_entries.push(entry_error(code, message));
                continue;
            }
        };
        if let Some(message) = values
            .iter()
            .find_map(|v| check_type(&data_type, &v["value"]).err())
        {
            error_entries.push(entry_error("InvalidRequestException", message));
            continue;
        }
        let stored = st.values.entry(key).or_default();
        let (mut out_of_range, mut conflicts) = (Vec::new(), Vec::new());
        for v in values {
            let stamp = stamp_of(&v["timestamp"]);
            let t = stamp.0 as f64 + f64::from(stamp.1) / 1e9;
            if t < t_now - SITEWISE_PAST_SECS || t > t_now + SITEWISE_FUTURE_SECS {
                out_of_range.push(stamp_json(stamp));
            } else if let std::collections::btree_map::Entry::Vacant(slot) = stored.entry(stamp) {
                slot.insert(v.clone());
                if stored.len() > MAX_VALUES_PER_PROPERTY {
                    stored.pop_first();
                }
            } else {
                conflicts.push(stamp_json(stamp));
            }
        }
        let mut errors = Vec::new();
        if !out_of_range.is_empty() {
            errors.push(json!({
                "errorCode": "TimestampOutOfRangeException",
                "errorMessage": "Timestamps must be within the past 7 days and at most 10 minutes in the future",
                "timestamps": out_of_range,
            }));
        }
        if !conflicts.is_empty() {
            errors.push(json!({
                "errorCode": "ConflictingOperationException",
                "errorMessage": "The property already has a value at this timestamp",
                "timestamps": conflicts,
            }));
        }
        if !errors.is_empty() {
            error_entries.push(json!({"entryId": id, "errors": errors}));
        }
    }
    Ok(reply(200, &json!({ "errorEntries": error_entries })))
}

/// A stored TQV as the read APIs answer it (quality and offset filled in).
fn tqv_out(v: &Value) -> Value {
    let mut v = v.clone();
    if v.get("quality").is_none_or(Value::is_null) {
        v["quality"] = json!("GOOD");
    }
    if v["timestamp"]
        .get("offsetInNanos")
        .is_none_or(Value::is_null)
    {
        v["timestamp"]["offsetInNanos"] = json!(0);
    }
    v
}

fn resolve_query(st: &State, req: &Request<'_>) -> Result<Key, Reply> {
    st.resolve(
        req.q("assetId"),
        req.q("propertyId"),
        req.q("propertyAlias"),
    )
    .map(|(k, _)| k)
    .map_err(|(status, code, message)| fail(status, code, &message))
}

fn get_value(st: &mut State, req: &Request<'_>) -> Result<Reply, Reply> {
    let key = resolve_query(st, req)?;
    let latest = st
        .values
        .get(&key)
        .and_then(|v| v.last_key_value())
        .map(|(_, v)| tqv_out(v));
    Ok(reply(
        200,
        &match latest {
            Some(v) => json!({ "propertyValue": v }),
            None => json!({}),
        },
    ))
}

fn get_history(st: &mut State, req: &Request<'_>) -> Result<Reply, Reply> {
    let key = resolve_query(st, req)?;
    let date = |param: &str| -> Result<Option<Stamp>, Reply> {
        req.q(param)
            .map(|v| parse_datetime(v).ok_or_else(|| invalid(&format!("{param} is not a date"))))
            .transpose()
    };
    // The start is exclusive, the end inclusive (as documented).
    let start = date("startDate")?.map_or(Bound::Unbounded, Bound::Excluded);
    let end = date("endDate")?.map_or(Bound::Unbounded, Bound::Included);
    if let (Bound::Excluded(s), Bound::Included(e)) = (start, end) {
        if s > e {
            return Err(invalid("startDate must be before endDate"));
        }
    }
    let descending = match req.q("timeOrdering") {
        None | Some("ASCENDING") => false,
        Some("DESCENDING") => true,
        Some(o) => {
            return Err(invalid(&format!(
                "timeOrdering {o} is not ASCENDING or DESCENDING"
            )))
        }
    };
    let max = match req.q("maxResults") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=20_000).contains(&n) => n,
            _ => return Err(invalid("maxResults must be between 1 and 20000")),
        },
    };
    let skip = match req.q("nextToken") {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| invalid("nextToken is not one this service gave"))?,
    };
    let qualities = req.q_all("qualities");
    for q in &qualities {
        if !["GOOD", "BAD", "UNCERTAIN"].contains(q) {
            return Err(invalid(&format!(
                "quality {q} is not GOOD, BAD or UNCERTAIN"
            )));
        }
    }
    let empty = BTreeMap::new();
    let stored = st.values.get(&key).unwrap_or(&empty);
    let wanted = |v: &&Value| {
        qualities.is_empty() || qualities.contains(&v["quality"].as_str().unwrap_or("GOOD"))
    };
    let in_range: Box<dyn Iterator<Item = &Value>> = match (start, end) {
        (Bound::Excluded(s), Bound::Included(e)) if s == e => Box::new(std::iter::empty()),
        _ if descending => Box::new(stored.range((start, end)).rev().map(|(_, v)| v)),
        _ => Box::new(stored.range((start, end)).map(|(_, v)| v)),
    };
    let mut matching = in_range.filter(wanted).skip(skip);
    let page: Vec<Value> = matching.by_ref().take(max).map(tqv_out).collect();
    let mut answer = json!({ "assetPropertyValueHistory": page });
    if matching.next().is_some() {
        answer["nextToken"] = json!((skip + max).to_string());
    }
    Ok(reply(200, &answer))
}

// ---------------------------------------------------------------------------
// Control endpoints (/_fake/...)

fn control(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Reply {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return invalid(&format!("body is not JSON: {e}")),
        }
    };
    let mut st = shared.lock();
    match (method, path.trim_end_matches('/')) {
        ("GET", "/_fake/requests") => {
            let all: Vec<Value> = st.requests.iter().map(|r| r.1.to_json()).collect();
            reply(200, &Value::Array(all))
        }
        ("GET", "/_fake/state") => reply(200, &st.snapshot()),
        ("POST", "/_fake/reset") => {
            let next_seq = st.next_seq;
            *st = State {
                next_seq,
                ..State::default()
            };
            reply(200, &json!({}))
        }
        ("GET", "/_fake/faults") => reply(
            200,
            &json!({"analytics": st.faults[0].len(), "sitewise": st.faults[1].len()}),
        ),
        ("POST", "/_fake/faults") => {
            let Some(service) = body["service"].as_str().and_then(Service::from_label) else {
                return invalid("service must be \"analytics\" or \"sitewise\"");
            };
            let Some(list) = body["faults"].as_array() else {
                return invalid("faults must be a list");
            };
            let faults: Result<Vec<Fault>, String> = list.iter().map(fault_from_json).collect();
            match faults {
                Ok(f) => {
                    let q = &mut st.faults[service.index()];
                    q.extend(f);
                    reply(200, &json!({ "faultsLeft": q.len() }))
                }
                Err(e) => invalid(&e),
            }
        }
        ("POST", "/_fake/channels") => {
            let Some(name) = body["name"].as_str() else {
                return invalid("name is required");
            };
            if let Err(r) = check_channel_name(name) {
                return r;
            }
            if !st.channels.contains_key(name) {
                st.add_channel(name, json!({"unlimited": true}));
            }
            reply(200, &json!({ "channelName": name }))
        }
        ("POST", "/_fake/assets") => {
            let Some(name) = body["name"].as_str() else {
                return invalid("name is required");
            };
            let mut defs = Vec::new();
            for p in body["properties"].as_array().into_iter().flatten() {
                let (Some(n), Some(t)) = (p["name"].as_str(), p["dataType"].as_str()) else {
                    return invalid("each property needs name and dataType");
                };
                if !DATA_TYPES.contains(&t) {
                    return invalid(&format!("dataType {t} is not one of {DATA_TYPES:?}"));
                }
                defs.push(PropertyDef {
                    id: new_id(),
                    name: n.to_string(),
                    data_type: t.to_string(),
                    unit: None,
                });
            }
            let ids: Vec<String> = defs.iter().map(|d| d.id.clone()).collect();
            let (model_id, _) = st.add_model(&format!("{name} model {}", new_id()), defs);
            let (asset_id, _) = st.add_asset(name, &model_id);
            reply(
                200,
                &json!({"assetId": asset_id, "assetModelId": model_id, "propertyIds": ids}),
            )
        }
        ("POST", "/_fake/aliases") => {
            let (Some(a), Some(p), Some(alias)) = (
                body["assetId"].as_str(),
                body["propertyId"].as_str(),
                body["alias"].as_str(),
            ) else {
                return invalid("assetId, propertyId and alias are required");
            };
            if st.property(a, p).is_none() {
                return not_found(&format!("no property {p} in asset {a}"));
            }
            match st.set_alias(&(a.to_string(), p.to_string()), Some(alias)) {
                Ok(()) => reply(200, &json!({})),
                Err(r) => r,
            }
        }
        _ => fail(
            404,
            "UnknownOperationException",
            &format!("no control operation {method} {path}"),
        ),
    }
}

fn fault_from_json(v: &Value) -> Result<Fault, String> {
    if let Some(s) = v.as_str() {
        return match s.to_ascii_lowercase().as_str() {
            "throttle" => Ok(Fault::Throttle),
            "unavailable" => Ok(Fault::Unavailable),
            "internal" => Ok(Fault::Internal),
            "drop" => Ok(Fault::Drop),
            _ => Err(format!("unknown fault {s:?}")),
        };
    }
    if let Some(ms) = v.get("delayMs").and_then(Value::as_u64) {
        return Ok(Fault::Delay(Duration::from_millis(ms)));
    }
    if let Some(e) = v.get("entryErrors") {
        let code = e["code"]
            .as_str()
            .ok_or("entryErrors.code is required")?
            .to_string();
        let every = e["every"].as_u64().unwrap_or(1).max(1) as usize;
        return Ok(Fault::EntryErrors { code, every });
    }
    Err(format!("unknown fault {v}"))
}

// ---------------------------------------------------------------------------
// SDK clients for tests

/// An IoT Analytics client for `endpoint`: us-east-1, static test
/// credentials, no retries (a test sees each fault as injected).
pub fn analytics_client(endpoint: &str) -> aws_sdk_iotanalytics::Client {
    use aws_sdk_iotanalytics::config;
    let creds = config::Credentials::new("testing", "testing", None, None, "fake-iot");
    let conf = aws_sdk_iotanalytics::Config::builder()
        .behavior_version(config::BehaviorVersion::latest())
        .region(config::Region::new(REGION))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .retry_config(config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_iotanalytics::Client::from_conf(conf)
}

/// An IoT SiteWise client for `endpoint`: us-east-1, static test
/// credentials, no retries, and the `data.`/`api.` host prefix stripped.
pub fn sitewise_client(endpoint: &str) -> aws_sdk_iotsitewise::Client {
    use aws_sdk_iotsitewise::config;
    let creds = config::Credentials::new("testing", "testing", None, None, "fake-iot");
    let conf = aws_sdk_iotsitewise::Config::builder()
        .behavior_version(config::BehaviorVersion::latest())
        .region(config::Region::new(REGION))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .retry_config(config::retry::RetryConfig::disabled())
        .interceptor(export_runtime::aws::LocalEndpointHostPrefix)
        .build();
    aws_sdk_iotsitewise::Client::from_conf(conf)
}

// ---------------------------------------------------------------------------
// Small helpers

fn new_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Seconds since the epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 with padding; `None` if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return None;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return None;
    }
    let chunks = b.len() / 4;
    let mut out = Vec::with_capacity(chunks * 3);
    for (ci, chunk) in b.chunks(4).enumerate() {
        let last = ci + 1 == chunks;
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if last && i >= 4 - pad => 0,
                _ => return None,
            };
            n = (n << 6) | u32::from(v);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..if last { 3 - pad } else { 3 }]);
    }
    Some(out)
}

/// Whether `s` has a character of U+0000–U+001F or U+007F, which the
/// services' name, alias and string patterns exclude.
fn has_control(s: &str) -> bool {
    s.chars().any(|c| c < '\u{20}' || c == '\u{7f}')
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_value(b[i + 1]), hex_value(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn seconds_of(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let valid = (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..=23).contains(&h)
        && (0..=59).contains(&mi)
        && (0..=60).contains(&s);
    valid.then(|| days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// `yyyyMMddTHHmmssZ` (the `x-amz-date` format), as epoch seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || !s.is_ascii() || &s[8..9] != "T" || &s[15..] != "Z" {
        return None;
    }
    seconds_of(
        digits(&s[0..4])?,
        digits(&s[4..6])?,
        digits(&s[6..8])?,
        digits(&s[9..11])?,
        digits(&s[11..13])?,
        digits(&s[13..15])?,
    )
}

/// A date-time as (epoch seconds, nanoseconds): RFC 3339 such as
/// `2026-11-26T09:00:00Z`, `2026-11-26T09:00:00.250+01:00`, or plain epoch
/// seconds such as `1764147600` or `1764147600.25`.
pub fn parse_datetime(s: &str) -> Option<Stamp> {
    let frac_nanos = |f: &str| -> Option<u32> {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32))
    };
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let nanos = if frac.is_empty() {
            0
        } else {
            frac_nanos(frac)?
        };
        return Some((digits(whole)?, nanos));
    }
    if s.len() < 20 || !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let secs = seconds_of(
        digits(&s[0..4])?,
        digits(&s[5..7])?,
        digits(&s[8..10])?,
        digits(&s[11..13])?,
        digits(&s[14..16])?,
        digits(&s[17..19])?,
    )?;
    let mut rest = &s[19..];
    let mut nanos = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        nanos = frac_nanos(&r[..end])?;
        rest = &r[end..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && &rest[3..4] == ":" => {
            let sign = match &rest[..1] {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            sign * (digits(&rest[1..3])? * 3600 + digits(&rest[4..6])? * 60)
        }
        _ => return None,
    };
    Some((secs - offset, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"\xff\x00\x10hello"] {
            assert_eq!(base64_decode(&base64_encode(data)).as_deref(), Some(data));
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_decode("aGV"), None);
        assert_eq!(base64_decode("a*Vs"), None);
        assert_eq!(base64_decode("aG=s"), None);
        assert_eq!(base64_decode("aGVs===="), None);
    }

    #[test]
    fn dates_parse() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_datetime("2026-11-26T09:00:00Z"),
            Some((1_795_683_600, 0))
        );
        assert_eq!(
            parse_datetime("2026-11-26T10:00:00.25+01:00"),
            Some((1_795_683_600, 250_000_000))
        );
        assert_eq!(
            parse_datetime("1795683600.5"),
            Some((1_795_683_600, 500_000_000))
        );
        assert_eq!(parse_datetime("2026-13-26T09:00:00Z"), None);
        assert_eq!(parse_amz_date("20261126T090000Z"), Some(1_795_683_600));
    }
}
