//! The Stream Manager SDKs' wire format (wire-protocol spec §3–§9): framing,
//! opcodes, status codes, and the CBOR payloads mapped to and from the bus
//! model. The only code in the project that knows this format.
//!
//! Decoding is lenient where the SDKs differ (definite and indefinite maps,
//! integral floats in integer fields from JS, `null`/`undefined`/absent alike,
//! empty lists as absent, unknown keys ignored) and strict about types: a
//! wrong type is an `InvalidRequest` naming the field.

use bus_schema::{
    ErrorKind, ExportCommon, ExportDefinition, ExportStatus, HttpConfig, IotAnalyticsConfig,
    IotSiteWiseConfig, KinesisConfig, Message, Persistence, S3TaskExecutorConfig, StatusConfig,
    StrategyOnFull, StreamDefinition, StreamInfo,
};
use ciborium::Value;

/// Connect version byte sent before Connect and ConnectResponse.
pub const CONNECT_VERSION: u8 = 1;
/// Protocol versions this server speaks, preferred first.
pub const PROTOCOL_VERSIONS: [&str; 2] = ["1.1.0", "1.0.0"];
/// The SDKs' own frame limit (length field, opcode included).
pub const SDK_FRAME_BYTES_MAX: u32 = 1 << 30;

/// Operation codes (spec §7).
pub mod op {
    pub const CONNECT: u8 = 1;
    pub const CREATE: u8 = 2;
    pub const DELETE: u8 = 3;
    pub const APPEND: u8 = 4;
    pub const READ: u8 = 5;
    pub const CONNECT_RESPONSE: u8 = 6;
    pub const CREATE_RESPONSE: u8 = 7;
    pub const DELETE_RESPONSE: u8 = 8;
    pub const APPEND_RESPONSE: u8 = 9;
    pub const READ_RESPONSE: u8 = 10;
    pub const LIST: u8 = 11;
    pub const LIST_RESPONSE: u8 = 12;
    pub const DESCRIBE: u8 = 13;
    pub const DESCRIBE_RESPONSE: u8 = 14;
    pub const UPDATE: u8 = 15;
    pub const UPDATE_RESPONSE: u8 = 16;
    pub const UNKNOWN_OPERATION_ERROR: u8 = 17;
}

/// Response status codes (spec §8).
pub mod status {
    pub const SUCCESS: i64 = 0;
    pub const UNKNOWN_FAILURE: i64 = 1;
    pub const UNAUTHORIZED: i64 = 2;
    pub const INVALID_REQUEST: i64 = 3;
    pub const REQUEST_PAYLOAD_TOO_LARGE: i64 = 4;
    pub const RESOURCE_NOT_FOUND: i64 = 5;
    pub const SERVER_TIMEOUT: i64 = 6;
    pub const RESPONSE_PAYLOAD_TOO_LARGE: i64 = 7;
    pub const UNSUPPORTED_CONNECT_VERSION: i64 = 8;
    pub const UNEXPECTED_OPERATION: i64 = 9;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = 10;
    pub const INVALID_PROTOCOL_VERSION: i64 = 11;
    pub const NOT_ENOUGH_MESSAGES: i64 = 13;
    pub const MESSAGE_STORE_READ_ERROR: i64 = 14;
    pub const UPDATE_NOT_ALLOWED: i64 = 17;
    pub const UNKNOWN_OPERATION: i64 = 18;
}

/// The SDK status code for a store error. A full stream under RejectNewData
/// is InvalidRequest: the real server's code is unknown (spec §0), and
/// InvalidRequest is what the SDKs raise for a refused request.
pub fn status_of(kind: ErrorKind) -> i64 {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::StreamFull => status::INVALID_REQUEST,
        ErrorKind::ResourceNotFound => status::RESOURCE_NOT_FOUND,
        ErrorKind::NotEnoughMessages => status::NOT_ENOUGH_MESSAGES,
        ErrorKind::UpdateNotAllowed => status::UPDATE_NOT_ALLOWED,
        ErrorKind::ResponseTooLarge => status::RESPONSE_PAYLOAD_TOO_LARGE,
        ErrorKind::StoreReadError => status::MESSAGE_STORE_READ_ERROR,
        ErrorKind::Busy | ErrorKind::ShuttingDown => status::SERVER_TIMEOUT,
        ErrorKind::StoreWriteError
        | ErrorKind::Conflict
        | ErrorKind::UnsupportedBusVersion
        | ErrorKind::MalformedMessage => status::UNKNOWN_FAILURE,
    }
}

/// The response opcode of a request opcode.
pub fn response_op(request_op: u8) -> u8 {
    match request_op {
        op::CONNECT => op::CONNECT_RESPONSE,
        op::CREATE => op::CREATE_RESPONSE,
        op::DELETE => op::DELETE_RESPONSE,
        op::APPEND => op::APPEND_RESPONSE,
        op::READ => op::READ_RESPONSE,
        op::LIST => op::LIST_RESPONSE,
        op::DESCRIBE => op::DESCRIBE_RESPONSE,
        op::UPDATE => op::UPDATE_RESPONSE,
        _ => op::UNKNOWN_OPERATION_ERROR,
    }
}

/// A frame: 4-byte big-endian length (payload + 1), opcode, payload. Built
/// in one buffer so it goes out in one write (the Python SDK reads the header
/// with non-exact reads).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&((payload.len() as u32 + 1).to_be_bytes()));
    out.push(opcode);
    out.extend_from_slice(payload);
    out
}

/// A decoding problem: the request id when it could be read, and a message
/// for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub request_id: Option<String>,
    pub message: String,
}

/// A request as an SDK sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    Create(StreamDefinition),
    Update(StreamDefinition),
    Delete {
        name: String,
    },
    Append {
        name: String,
        payload: Vec<u8>,
    },
    Read {
        stream: String,
        start: Option<i64>,
        min: Option<i64>,
        max: Option<i64>,
        timeout_ms: Option<i64>,
    },
    List,
    Describe {
        name: String,
    },
}

/// The Connect request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequest {
    pub request_id: Option<String>,
    pub protocol_version: Option<String>,
    pub other_supported_protocol_versions: Vec<String>,
    pub sdk_version: Option<String>,
    /// `None` for absent or empty (Java sends `""` when it has no token).
    pub auth_token: Option<String>,
}

type Map = Vec<(Value, Value)>;

fn fail(message: impl Into<String>) -> String {
    message.into()
}

/// Most CBOR items (headers) one request may have. Real requests have a few
/// dozen; the bound keeps a small frame from decoding into a huge value tree
/// (an array of a million one-byte integers would otherwise take ~32 bytes of
/// memory per byte of frame).
pub const REQUEST_ITEMS_MAX: usize = 65_536;

/// Counts the CBOR items of `payload` without building anything, failing
/// past `max` items or on a truncated header.
pub fn check_item_count(payload: &[u8], max: usize) -> Result<(), String> {
    let mut at = 0usize;
    let mut items = 0usize;
    let arg = |at: &mut usize, size: usize| -> Result<u64, String> {
        let bytes = payload
            .get(*at..*at + size)
            .ok_or_else(|| "the payload ends inside a CBOR header".to_string())?;
        *at += size;
        Ok(bytes.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    };
    while at < payload.len() {
        items += 1;
        if items > max {
            return Err(format!("the payload has more than {max} CBOR items"));
        }
        let initial = payload[at];
        at += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let value = match info {
            0..=23 => u64::from(info),
            24 => arg(&mut at, 1)?,
            25 => arg(&mut at, 2)?,
            26 => arg(&mut at, 4)?,
            27 => arg(&mut at, 8)?,
            31 => continue, // indefinite length or break
            _ => return Err("the payload has a malformed CBOR header".into()),
        };
        // Byte and text strings: skip their contents.
        if major == 2 || major == 3 {
            at = at
                .checked_add(usize::try_from(value).unwrap_or(usize::MAX))
                .filter(|end| *end <= payload.len())
                .ok_or_else(|| "the payload ends inside a CBOR string".to_string())?;
        }
    }
    Ok(())
}

/// Parses a CBOR payload into a map.
pub fn parse_map(payload: &[u8]) -> Result<Map, String> {
    check_item_count(payload, REQUEST_ITEMS_MAX)?;
    match ciborium::from_reader::<Value, _>(payload) {
        Ok(Value::Map(m)) => Ok(m),
        Ok(_) => Err(fail("the payload is not a CBOR map")),
        Err(e) => Err(fail(format!("the payload is not valid CBOR: {e}"))),
    }
}

fn field<'a>(m: &'a Map, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn text(m: &Map, key: &str) -> Result<Option<String>, String> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::Text(s)) => Ok(Some(s.clone())),
        Some(_) => Err(fail(format!("{key} must be a text string"))),
    }
}

fn required_text(m: &Map, key: &str) -> Result<String, String> {
    text(m, key)?.ok_or_else(|| fail(format!("{key} is required")))
}

/// An integer field; integral floats (JS) are accepted and clamped to the
/// i64 range, non-integral ones refused.
fn int(m: &Map, key: &str) -> Result<Option<i64>, String> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::Integer(i)) => {
            let wide: i128 = (*i).into();
            Ok(Some(wide.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
        }
        Some(Value::Float(f)) if f.is_finite() && f.fract() == 0.0 => {
            // `as` saturates at the i64 bounds, which is the clamping wanted.
            Ok(Some(*f as i64))
        }
        Some(Value::Float(f)) => Err(fail(format!("{key} must be an integer, got {f}"))),
        Some(_) => Err(fail(format!("{key} must be an integer"))),
    }
}

fn boolean(m: &Map, key: &str) -> Result<Option<bool>, String> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(fail(format!("{key} must be a boolean"))),
    }
}

fn sub_map<'a>(m: &'a Map, key: &str) -> Result<Option<&'a Map>, String> {
    match field(m, key) {
        None => Ok(None),
        Some(Value::Map(inner)) => Ok(Some(inner)),
        Some(_) => Err(fail(format!("{key} must be a map"))),
    }
}

fn list<'a>(m: &'a Map, key: &str) -> Result<&'a [Value], String> {
    match field(m, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(fail(format!("{key} must be an array"))),
    }
}

fn maps_in<'a>(m: &'a Map, key: &str) -> Result<Vec<&'a Map>, String> {
    list(m, key)?
        .iter()
        .map(|v| match v {
            Value::Map(inner) => Ok(inner),
            _ => Err(fail(format!("every entry of {key} must be a map"))),
        })
        .collect()
}

/// The request id, if the payload has a readable one.
pub fn request_id_of(m: &Map) -> Option<String> {
    text(m, "requestId").ok().flatten()
}

pub fn decode_connect(payload: &[u8]) -> Result<ConnectRequest, DecodeError> {
    let m = parse_map(payload).map_err(|message| DecodeError {
        request_id: None,
        message,
    })?;
    let wrap = |message| DecodeError {
        request_id: request_id_of(&m),
        message,
    };
    let others = list(&m, "otherSupportedProtocolVersions")
        .map_err(wrap)?
        .iter()
        .filter_map(|v| v.as_text().map(str::to_string))
        .collect();
    Ok(ConnectRequest {
        request_id: request_id_of(&m),
        protocol_version: text(&m, "protocolVersion").map_err(wrap)?,
        other_supported_protocol_versions: others,
        sdk_version: text(&m, "sdkVersion").map_err(wrap)?,
        auth_token: text(&m, "authToken")
            .map_err(wrap)?
            .filter(|t| !t.is_empty()),
    })
}

/// Decodes a request frame's payload. Returns the request id (echoed
/// verbatim; any string is accepted) and the request.
pub fn decode_request(opcode: u8, payload: &[u8]) -> Result<(String, ClientRequest), DecodeError> {
    let m = parse_map(payload).map_err(|message| DecodeError {
        request_id: None,
        message,
    })?;
    let request_id = request_id_of(&m);
    let wrap = |message| DecodeError {
        request_id: request_id.clone(),
        message,
    };
    let id = request_id
        .clone()
        .ok_or_else(|| wrap(fail("requestId is required")))?;
    let req = match opcode {
        op::CREATE | op::UPDATE => {
            let d = sub_map(&m, "definition")
                .map_err(wrap)?
                .ok_or_else(|| wrap(fail("definition is required")))?;
            let def = definition(d).map_err(wrap)?;
            if opcode == op::CREATE {
                ClientRequest::Create(def)
            } else {
                ClientRequest::Update(def)
            }
        }
        op::DELETE => ClientRequest::Delete {
            name: required_text(&m, "name").map_err(wrap)?,
        },
        op::DESCRIBE => ClientRequest::Describe {
            name: required_text(&m, "name").map_err(wrap)?,
        },
        op::LIST => ClientRequest::List,
        op::APPEND => {
            let name = required_text(&m, "name").map_err(wrap)?;
            let payload = match field(&m, "payload") {
                Some(Value::Bytes(b)) => b.clone(),
                Some(_) => return Err(wrap(fail("payload must be a byte string"))),
                None => return Err(wrap(fail("payload is required"))),
            };
            ClientRequest::Append { name, payload }
        }
        op::READ => {
            let stream = required_text(&m, "streamName").map_err(wrap)?;
            let empty = Map::new();
            let o = sub_map(&m, "readMessagesOptions")
                .map_err(wrap)?
                .unwrap_or(&empty);
            ClientRequest::Read {
                stream,
                start: int(o, "desiredStartSequenceNumber").map_err(wrap)?,
                min: int(o, "minMessageCount").map_err(wrap)?,
                max: int(o, "maxMessageCount").map_err(wrap)?,
                timeout_ms: int(o, "readTimeoutMillis").map_err(wrap)?,
            }
        }
        other => return Err(wrap(fail(format!("unknown operation {other}")))),
    };
    Ok((id, req))
}

fn enum_value<T>(m: &Map, key: &str, values: &[T]) -> Result<Option<T>, String>
where
    T: Copy,
{
    match int(m, key)? {
        None => Ok(None),
        Some(i) if i >= 0 && (i as usize) < values.len() => Ok(Some(values[i as usize])),
        Some(i) => Err(fail(format!(
            "{key} must be between 0 and {}, got {i}",
            values.len() - 1
        ))),
    }
}

fn definition(d: &Map) -> Result<StreamDefinition, String> {
    let exports = match sub_map(d, "exportDefinition")? {
        None => ExportDefinition::default(),
        Some(e) => export_definition(e)?,
    };
    Ok(StreamDefinition {
        name: required_text(d, "name")?,
        max_size_bytes: int(d, "maxSize")?,
        segment_size_bytes: int(d, "streamSegmentSize")?,
        time_to_live_ms: int(d, "timeToLiveMillis")?,
        strategy_on_full: enum_value(
            d,
            "strategyOnFull",
            &[
                StrategyOnFull::RejectNewData,
                StrategyOnFull::OverwriteOldestData,
            ],
        )?,
        persistence: enum_value(d, "persistence", &[Persistence::File, Persistence::Memory])?,
        flush_on_write: boolean(d, "flushOnWrite")?,
        exports,
    })
}

fn common(m: &Map) -> Result<ExportCommon, String> {
    Ok(ExportCommon {
        identifier: required_text(m, "identifier")?,
        batch_size: int(m, "batchSize")?,
        batch_interval_ms: int(m, "batchIntervalMillis")?,
        priority: int(m, "priority")?,
        start_sequence_number: int(m, "startSequenceNumber")?,
        disabled: boolean(m, "disabled")?,
    })
}

fn export_definition(e: &Map) -> Result<ExportDefinition, String> {
    let mut out = ExportDefinition::default();
    for m in maps_in(e, "http")? {
        out.http.push(HttpConfig {
            common: common(m)?,
            uri: required_text(m, "uri")?,
            export_format: int(m, "exportFormat")?,
        });
    }
    for m in maps_in(e, "iotAnalytics")? {
        out.iot_analytics.push(IotAnalyticsConfig {
            common: common(m)?,
            iot_channel: required_text(m, "iotChannel")?,
            iot_msg_id_prefix: text(m, "iotMsgIdPrefix")?,
        });
    }
    for m in maps_in(e, "kinesis")? {
        out.kinesis.push(KinesisConfig {
            common: common(m)?,
            kinesis_stream_name: required_text(m, "kinesisStreamName")?,
        });
    }
    for m in maps_in(e, "IotSitewise")? {
        out.iot_sitewise
            .push(IotSiteWiseConfig { common: common(m)? });
    }
    for m in maps_in(e, "s3TaskExecutor")? {
        let status_config = match sub_map(m, "statusConfig")? {
            None => None,
            Some(s) => Some(StatusConfig {
                status_level: int(s, "statusLevel")?,
                status_stream_name: text(s, "statusStreamName")?,
            }),
        };
        out.s3_task_executor.push(S3TaskExecutorConfig {
            common: ExportCommon {
                identifier: required_text(m, "identifier")?,
                priority: int(m, "priority")?,
                disabled: boolean(m, "disabled")?,
                ..Default::default()
            },
            size_threshold_for_multipart_upload_bytes: int(
                m,
                "sizeThresholdForMultipartUploadBytes",
            )?,
            status_config,
        });
    }
    Ok(out)
}

// ---- responses -------------------------------------------------------------

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn i(v: i64) -> Value {
    Value::Integer(v.into())
}

fn put(m: &mut Map, key: &str, v: Value) {
    m.push((t(key), v));
}

fn put_opt_i(m: &mut Map, key: &str, v: Option<i64>) {
    if let Some(v) = v {
        put(m, key, i(v));
    }
}

fn put_opt_b(m: &mut Map, key: &str, v: Option<bool>) {
    if let Some(v) = v {
        put(m, key, Value::Bool(v));
    }
}

/// A response payload: `requestId`, `status`, `errorMessage` when failed, and
/// the operation's fields. Always includes `status` (spec §7).
pub fn response(request_id: &str, status: i64, error: Option<&str>, fields: Map) -> Vec<u8> {
    let mut m: Map = vec![(t("requestId"), t(request_id)), (t("status"), i(status))];
    if let Some(e) = error {
        put(&mut m, "errorMessage", t(e));
    }
    m.extend(fields);
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail for these values.
    ciborium::into_writer(&Value::Map(m), &mut out).expect("CBOR into a Vec");
    out
}

pub fn connect_response(
    request_id: Option<&str>,
    status: i64,
    error: Option<&str>,
    protocol_version: &str,
) -> Vec<u8> {
    let mut fields = Map::new();
    put(&mut fields, "protocolVersion", t(protocol_version));
    put(
        &mut fields,
        "supportedProtocolVersions",
        Value::Array(PROTOCOL_VERSIONS.iter().map(|v| t(v)).collect()),
    );
    put(
        &mut fields,
        "serverVersion",
        t(concat!("stream-manager-rs ", env!("CARGO_PKG_VERSION"))),
    );
    response(request_id.unwrap_or(""), status, error, fields)
}

pub fn append_fields(sequence_number: i64) -> Map {
    vec![(t("sequenceNumber"), i(sequence_number))]
}

pub fn list_fields(streams: Vec<String>) -> Map {
    vec![(
        t("streams"),
        Value::Array(streams.into_iter().map(Value::Text).collect()),
    )]
}

pub fn read_fields(stream: &str, messages: Vec<Message>) -> Map {
    let list = messages
        .into_iter()
        .map(|msg| {
            Value::Map(vec![
                (t("streamName"), t(stream)),
                (t("sequenceNumber"), i(msg.sequence_number)),
                (t("ingestTime"), i(msg.ingest_time_ms)),
                (t("payload"), Value::Bytes(msg.payload)),
            ])
        })
        .collect();
    vec![(t("messages"), Value::Array(list))]
}

fn common_value(c: &ExportCommon, with_batch: bool) -> Map {
    let mut m = vec![(t("identifier"), t(&c.identifier))];
    if with_batch {
        put_opt_i(&mut m, "batchSize", c.batch_size);
        put_opt_i(&mut m, "batchIntervalMillis", c.batch_interval_ms);
    }
    put_opt_i(&mut m, "priority", c.priority);
    if with_batch {
        put_opt_i(&mut m, "startSequenceNumber", c.start_sequence_number);
    }
    put_opt_b(&mut m, "disabled", c.disabled);
    m
}

fn definition_value(d: &StreamDefinition) -> Value {
    let mut m = vec![(t("name"), t(&d.name))];
    put_opt_i(&mut m, "maxSize", d.max_size_bytes);
    put_opt_i(&mut m, "streamSegmentSize", d.segment_size_bytes);
    put_opt_i(&mut m, "timeToLiveMillis", d.time_to_live_ms);
    if let Some(s) = d.strategy_on_full {
        put(&mut m, "strategyOnFull", i(s as i64));
    }
    if let Some(p) = d.persistence {
        put(&mut m, "persistence", i(p as i64));
    }
    put_opt_b(&mut m, "flushOnWrite", d.flush_on_write);
    let e = &d.exports;
    let mut ex = Map::new();
    let entries = |items: Vec<Map>| Value::Array(items.into_iter().map(Value::Map).collect());
    if !e.http.is_empty() {
        put(
            &mut ex,
            "http",
            entries(
                e.http
                    .iter()
                    .map(|h| {
                        let mut m = common_value(&h.common, true);
                        put(&mut m, "uri", t(&h.uri));
                        put_opt_i(&mut m, "exportFormat", h.export_format);
                        m
                    })
                    .collect(),
            ),
        );
    }
    if !e.iot_analytics.is_empty() {
        put(
            &mut ex,
            "iotAnalytics",
            entries(
                e.iot_analytics
                    .iter()
                    .map(|a| {
                        let mut m = common_value(&a.common, true);
                        put(&mut m, "iotChannel", t(&a.iot_channel));
                        if let Some(p) = &a.iot_msg_id_prefix {
                            put(&mut m, "iotMsgIdPrefix", t(p));
                        }
                        m
                    })
                    .collect(),
            ),
        );
    }
    if !e.kinesis.is_empty() {
        put(
            &mut ex,
            "kinesis",
            entries(
                e.kinesis
                    .iter()
                    .map(|k| {
                        let mut m = common_value(&k.common, true);
                        put(&mut m, "kinesisStreamName", t(&k.kinesis_stream_name));
                        m
                    })
                    .collect(),
            ),
        );
    }
    if !e.iot_sitewise.is_empty() {
        put(
            &mut ex,
            "IotSitewise",
            entries(
                e.iot_sitewise
                    .iter()
                    .map(|s| common_value(&s.common, true))
                    .collect(),
            ),
        );
    }
    if !e.s3_task_executor.is_empty() {
        put(
            &mut ex,
            "s3TaskExecutor",
            entries(
                e.s3_task_executor
                    .iter()
                    .map(|s| {
                        let mut m = common_value(&s.common, false);
                        put_opt_i(
                            &mut m,
                            "sizeThresholdForMultipartUploadBytes",
                            s.size_threshold_for_multipart_upload_bytes,
                        );
                        if let Some(sc) = &s.status_config {
                            let mut c = Map::new();
                            put_opt_i(&mut c, "statusLevel", sc.status_level);
                            if let Some(n) = &sc.status_stream_name {
                                put(&mut c, "statusStreamName", t(n));
                            }
                            put(&mut m, "statusConfig", Value::Map(c));
                        }
                        m
                    })
                    .collect(),
            ),
        );
    }
    put(&mut m, "exportDefinition", Value::Map(ex));
    Value::Map(m)
}

fn export_status_value(s: &ExportStatus) -> Value {
    let mut m = vec![
        (t("exportConfigIdentifier"), t(&s.export_identifier)),
        (
            t("lastExportedSequenceNumber"),
            i(s.last_exported_sequence_number),
        ),
    ];
    put_opt_i(&mut m, "lastExportTime", s.last_export_time_ms);
    if let Some(e) = &s.error_message {
        put(&mut m, "errorMessage", t(e));
    }
    put(&mut m, "exportedBytesFromStream", i(s.exported_bytes));
    put(&mut m, "exportedMessagesCount", i(s.exported_messages));
    Value::Map(m)
}

pub fn describe_fields(info: &StreamInfo) -> Map {
    let storage = Value::Map(vec![
        (
            t("oldestSequenceNumber"),
            i(info.storage.oldest_sequence_number),
        ),
        (
            t("newestSequenceNumber"),
            i(info.storage.newest_sequence_number),
        ),
        (t("totalBytes"), i(info.storage.total_bytes)),
    ]);
    let info_value = Value::Map(vec![
        (t("definition"), definition_value(&info.definition)),
        (t("storageStatus"), storage),
        (
            t("exportStatuses"),
            Value::Array(
                info.export_statuses
                    .iter()
                    .map(export_status_value)
                    .collect(),
            ),
        ),
    ]);
    vec![(t("messageStreamInfo"), info_value)]
}
