//! Golden tests against the frames recorded from the real SDKs
//! (`tests/fixtures/sdk-vectors.json`, copied from the project's spec):
//! every request of Python, both JS variants and Java decodes to exactly the
//! fields it carries; every response the SDKs accepted is reproduced by this
//! server's encoder (same keys and values; the server may add keys, which all
//! SDKs ignore).

use ingest::wire::{self, op, ClientRequest};
use serde_json::{json, Map, Value as Json};

fn vectors() -> Vec<Json> {
    let text = include_str!("fixtures/sdk-vectors.json");
    let all: Json = serde_json::from_str(text).unwrap();
    all["vectors"].as_array().unwrap().clone()
}

/// Splits a recorded frame (after an optional connect-version byte).
fn split(hex_frame: &str, connect: bool) -> (u8, Vec<u8>) {
    let mut bytes = hex::decode(hex_frame).unwrap();
    if connect {
        assert_eq!(bytes.remove(0), wire::CONNECT_VERSION);
    }
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 4, "length field counts opcode + payload");
    (bytes[4], bytes[5..].to_vec())
}

/// Drops empty lists/maps and turns integral floats into integers, so that
/// SDK differences that mean the same thing compare equal.
fn normalize(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .filter(|(_, v)| !matches!(v, Json::Array(a) if a.is_empty()))
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(normalize).collect()),
        Json::Number(n) if n.is_f64() && n.as_f64().unwrap().fract() == 0.0 => {
            json!(n.as_f64().unwrap() as i64)
        }
        other => other.clone(),
    }
}

fn put<T: serde::Serialize>(m: &mut Map<String, Json>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

fn common(c: &bus_schema::ExportCommon, m: &mut Map<String, Json>) {
    m.insert("identifier".into(), json!(c.identifier));
    put(m, "batchSize", c.batch_size);
    put(m, "batchIntervalMillis", c.batch_interval_ms);
    put(m, "priority", c.priority);
    put(m, "startSequenceNumber", c.start_sequence_number);
    put(m, "disabled", c.disabled);
}

fn definition_json(d: &bus_schema::StreamDefinition) -> Json {
    let mut m = Map::new();
    m.insert("name".into(), json!(d.name));
    put(&mut m, "maxSize", d.max_size_bytes);
    put(&mut m, "streamSegmentSize", d.segment_size_bytes);
    put(&mut m, "timeToLiveMillis", d.time_to_live_ms);
    put(
        &mut m,
        "strategyOnFull",
        d.strategy_on_full.map(|s| s as i64),
    );
    put(&mut m, "persistence", d.persistence.map(|p| p as i64));
    put(&mut m, "flushOnWrite", d.flush_on_write);
    let e = &d.exports;
    let mut x = Map::new();
    let list =
        |items: Vec<Map<String, Json>>| Json::Array(items.into_iter().map(Json::Object).collect());
    x.insert(
        "http".into(),
        list(
            e.http
                .iter()
                .map(|h| {
                    let mut m = Map::new();
                    common(&h.common, &mut m);
                    m.insert("uri".into(), json!(h.uri));
                    put(&mut m, "exportFormat", h.export_format);
                    m
                })
                .collect(),
        ),
    );
    x.insert(
        "iotAnalytics".into(),
        list(
            e.iot_analytics
                .iter()
                .map(|a| {
                    let mut m = Map::new();
                    common(&a.common, &mut m);
                    m.insert("iotChannel".into(), json!(a.iot_channel));
                    put(&mut m, "iotMsgIdPrefix", a.iot_msg_id_prefix.clone());
                    m
                })
                .collect(),
        ),
    );
    x.insert(
        "kinesis".into(),
        list(
            e.kinesis
                .iter()
                .map(|k| {
                    let mut m = Map::new();
                    common(&k.common, &mut m);
                    m.insert("kinesisStreamName".into(), json!(k.kinesis_stream_name));
                    m
                })
                .collect(),
        ),
    );
    x.insert(
        "IotSitewise".into(),
        list(
            e.iot_sitewise
                .iter()
                .map(|s| {
                    let mut m = Map::new();
                    common(&s.common, &mut m);
                    m
                })
                .collect(),
        ),
    );
    x.insert(
        "s3TaskExecutor".into(),
        list(
            e.s3_task_executor
                .iter()
                .map(|s| {
                    let mut m = Map::new();
                    common(&s.common, &mut m);
                    put(
                        &mut m,
                        "sizeThresholdForMultipartUploadBytes",
                        s.size_threshold_for_multipart_upload_bytes,
                    );
                    if let Some(c) = &s.status_config {
                        let mut sc = Map::new();
                        put(&mut sc, "statusLevel", c.status_level);
                        put(&mut sc, "statusStreamName", c.status_stream_name.clone());
                        m.insert("statusConfig".into(), Json::Object(sc));
                    }
                    m
                })
                .collect(),
        ),
    );
    m.insert("exportDefinition".into(), Json::Object(x));
    Json::Object(m)
}

fn request_json(id: &str, r: &ClientRequest) -> Json {
    let mut m = Map::new();
    m.insert("requestId".into(), json!(id));
    match r {
        ClientRequest::Create(d) | ClientRequest::Update(d) => {
            m.insert("definition".into(), definition_json(d));
        }
        ClientRequest::Delete { name } | ClientRequest::Describe { name } => {
            m.insert("name".into(), json!(name));
        }
        ClientRequest::Append { name, payload } => {
            m.insert("name".into(), json!(name));
            m.insert(
                "payload".into(),
                json!({ "$bytes_hex": hex::encode(payload) }),
            );
        }
        ClientRequest::Read {
            stream,
            start,
            min,
            max,
            timeout_ms,
        } => {
            m.insert("streamName".into(), json!(stream));
            let mut o = Map::new();
            put(&mut o, "desiredStartSequenceNumber", *start);
            put(&mut o, "minMessageCount", *min);
            put(&mut o, "maxMessageCount", *max);
            put(&mut o, "readTimeoutMillis", *timeout_ms);
            if !o.is_empty() {
                m.insert("readMessagesOptions".into(), Json::Object(o));
            }
        }
        ClientRequest::List => {}
    }
    Json::Object(m)
}

#[test]
fn every_recorded_request_decodes_to_exactly_its_fields() {
    let mut checked = 0;
    for v in vectors()
        .iter()
        .filter(|v| v["direction"] == "client->server")
    {
        let name = v["name"].as_str().unwrap();
        let opcode = v["opcode"].as_u64().unwrap() as u8;
        let (frame_op, payload) = split(v["hex"].as_str().unwrap(), opcode == op::CONNECT);
        assert_eq!(frame_op, opcode, "{name}");
        if opcode == op::CONNECT {
            let c = wire::decode_connect(&payload).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let d = &v["decoded"];
            assert_eq!(c.request_id.as_deref(), d["requestId"].as_str(), "{name}");
            assert_eq!(
                c.protocol_version.as_deref(),
                d["protocolVersion"].as_str(),
                "{name}"
            );
            // Java's "" token counts as no token.
            let token = d["authToken"].as_str().filter(|t| !t.is_empty());
            assert_eq!(c.auth_token.as_deref(), token, "{name}");
        } else {
            let (id, req) =
                wire::decode_request(opcode, &payload).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(
                normalize(&request_json(&id, &req)),
                normalize(&v["decoded"]),
                "{name}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} request vectors");
}

fn cbor_to_json(bytes: &[u8]) -> Json {
    fn conv(v: &ciborium::Value) -> Json {
        match v {
            ciborium::Value::Integer(i) => json!(i128::from(*i) as i64),
            ciborium::Value::Float(f) => json!(f),
            ciborium::Value::Text(t) => json!(t),
            ciborium::Value::Bool(b) => json!(b),
            ciborium::Value::Null => Json::Null,
            ciborium::Value::Bytes(b) => json!({ "$bytes_hex": hex::encode(b) }),
            ciborium::Value::Array(a) => Json::Array(a.iter().map(conv).collect()),
            ciborium::Value::Map(m) => Json::Object(
                m.iter()
                    .map(|(k, v)| (k.as_text().unwrap().to_string(), conv(v)))
                    .collect(),
            ),
            other => panic!("unexpected CBOR {other:?}"),
        }
    }
    conv(&ciborium::from_reader::<ciborium::Value, _>(bytes).unwrap())
}

/// Every key of `expected` is in `actual` with an equal value.
fn contains(actual: &Json, expected: &Json) -> bool {
    match (actual, expected) {
        (Json::Object(a), Json::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| contains(av, ev))),
        (Json::Array(a), Json::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(x, y)| contains(x, y))
        }
        _ => actual == expected,
    }
}

fn i(v: &Json) -> i64 {
    v.as_i64().unwrap()
}

#[test]
fn every_accepted_response_is_reproduced_by_the_server_encoder() {
    let mut checked = 0;
    for v in vectors()
        .iter()
        .filter(|v| v["direction"] == "server->client" && v["accepted_by_sdk"] == true)
    {
        let name = v["name"].as_str().unwrap();
        let d = &v["decoded"];
        let id = d["requestId"].as_str().unwrap_or("");
        let status = d["status"].as_i64().unwrap();
        let err = d["errorMessage"].as_str();
        let opcode = v["opcode"].as_u64().unwrap() as u8;
        let ours = match opcode {
            op::CONNECT_RESPONSE => wire::connect_response(
                Some(id),
                status,
                err,
                d["protocolVersion"].as_str().unwrap(),
            ),
            op::APPEND_RESPONSE if status == 0 => wire::response(
                id,
                status,
                err,
                wire::append_fields(i(&d["sequenceNumber"])),
            ),
            op::LIST_RESPONSE if status == 0 => wire::response(
                id,
                status,
                err,
                wire::list_fields(
                    d["streams"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_string())
                        .collect(),
                ),
            ),
            op::READ_RESPONSE if status == 0 => {
                let msgs = d["messages"].as_array().unwrap();
                let stream = msgs[0]["streamName"].as_str().unwrap();
                let messages = msgs
                    .iter()
                    .map(|m| bus_schema::Message {
                        sequence_number: i(&m["sequenceNumber"]),
                        ingest_time_ms: i(&m["ingestTime"]),
                        payload: hex::decode(m["payload"]["$bytes_hex"].as_str().unwrap()).unwrap(),
                    })
                    .collect();
                wire::response(id, status, err, wire::read_fields(stream, messages))
            }
            op::DESCRIBE_RESPONSE if status == 0 => {
                let info = &d["messageStreamInfo"];
                // Decode the definition with our own request decoder.
                let mut req = Vec::new();
                let def_cbor: ciborium::Value = ciborium::from_reader(
                    &hex::decode(definition_cbor_hex(&info["definition"])).unwrap()[..],
                )
                .unwrap();
                ciborium::into_writer(
                    &ciborium::Value::Map(vec![
                        ("requestId".into(), "x".into()),
                        ("definition".into(), def_cbor),
                    ]),
                    &mut req,
                )
                .unwrap();
                let (_, ClientRequest::Create(definition)) =
                    wire::decode_request(op::CREATE, &req).unwrap()
                else {
                    panic!()
                };
                let s = &info["storageStatus"];
                let streaminfo = bus_schema::StreamInfo {
                    incarnation: 1,
                    definition,
                    storage: bus_schema::StorageStatus {
                        oldest_sequence_number: i(&s["oldestSequenceNumber"]),
                        newest_sequence_number: i(&s["newestSequenceNumber"]),
                        total_bytes: i(&s["totalBytes"]),
                    },
                    export_statuses: info["exportStatuses"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| bus_schema::ExportStatus {
                            export_identifier: e["exportConfigIdentifier"].as_str().unwrap().into(),
                            last_exported_sequence_number: i(&e["lastExportedSequenceNumber"]),
                            last_export_time_ms: e["lastExportTime"].as_i64(),
                            error_message: e["errorMessage"].as_str().map(Into::into),
                            exported_bytes: e["exportedBytesFromStream"].as_i64().unwrap_or(0),
                            exported_messages: e["exportedMessagesCount"].as_i64().unwrap_or(0),
                            skipped_messages: 0,
                            oldest_unexported_ingest_ms: None,
                        })
                        .collect(),
                };
                wire::response(id, status, err, wire::describe_fields(&streaminfo))
            }
            _ => wire::response(id, status, err, Vec::new()),
        };
        let ours = cbor_to_json(&ours);
        let mut expected = normalize(d);
        if opcode == op::CONNECT_RESPONSE {
            // Informational, server-specific values the SDKs only log.
            let m = expected.as_object_mut().unwrap();
            m.remove("serverVersion");
            m.remove("clientIdentifier");
        }
        assert!(
            contains(&ours, &expected),
            "{name}:\nours     {ours}\nexpected {expected}"
        );
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} response vectors");
}

/// CBOR (hex) of a JSON definition, for feeding it through the decoder.
fn definition_cbor_hex(j: &Json) -> String {
    fn conv(j: &Json) -> ciborium::Value {
        match j {
            Json::Null => ciborium::Value::Null,
            Json::Bool(b) => ciborium::Value::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => ciborium::Value::Integer(i.into()),
                None => ciborium::Value::Float(n.as_f64().unwrap()),
            },
            Json::String(s) => ciborium::Value::Text(s.clone()),
            Json::Array(a) => ciborium::Value::Array(a.iter().map(conv).collect()),
            Json::Object(m) => ciborium::Value::Map(
                m.iter()
                    .map(|(k, v)| (k.as_str().into(), conv(v)))
                    .collect(),
            ),
        }
    }
    let mut out = Vec::new();
    ciborium::into_writer(&conv(j), &mut out).unwrap();
    hex::encode(out)
}
