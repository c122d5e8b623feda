//! The IoT Analytics / IoT SiteWise fake, driven with the official AWS Rust
//! SDK clients (and raw HTTP where the SDK cannot send what is tested): the
//! published limits, the per-entry errors, addressing by alias, reading
//! back, signature scope checks and every injected fault.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_iotanalytics::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iotanalytics::primitives::Blob;
use aws_sdk_iotanalytics::types::Message;
use aws_sdk_iotsitewise::operation::batch_put_asset_property_value::BatchPutAssetPropertyValueOutput;
use aws_sdk_iotsitewise::primitives::DateTime;
use aws_sdk_iotsitewise::types::{
    AssetModelPropertyDefinition, AssetPropertyValue, BatchPutAssetPropertyErrorEntry, Measurement,
    PropertyDataType, PropertyType, PutAssetPropertyValueEntry, Quality, TimeInNanos, TimeOrdering,
    Variant,
};
use serde_json::{json, Value};
use stream_manager_tests::fake_iot::{analytics_client, sitewise_client, FakeIot, Fault, Service};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

type HttpResponse = aws_sdk_iotanalytics::config::http::HttpResponse;

/// The HTTP status of an SDK error, if an answer came.
fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn messages(ids: impl IntoIterator<Item = String>) -> Vec<Message> {
    ids.into_iter()
        .map(|id| {
            Message::builder()
                .payload(Blob::new(format!("{{\"id\":\"{id}\"}}")))
                .message_id(id)
                .build()
                .expect("message")
        })
        .collect()
}

fn tqv_double(secs: i64, value: f64) -> AssetPropertyValue {
    AssetPropertyValue::builder()
        .value(Variant::builder().double_value(value).build())
        .timestamp(
            TimeInNanos::builder()
                .time_in_seconds(secs)
                .offset_in_nanos(0)
                .build()
                .expect("time"),
        )
        .quality(Quality::Good)
        .build()
}

fn entry_by_ids(
    id: &str,
    asset: &str,
    property: &str,
    values: Vec<AssetPropertyValue>,
) -> PutAssetPropertyValueEntry {
    PutAssetPropertyValueEntry::builder()
        .entry_id(id)
        .asset_id(asset)
        .property_id(property)
        .set_property_values(Some(values))
        .build()
        .expect("entry")
}

fn entry_by_alias(
    id: &str,
    alias: &str,
    values: Vec<AssetPropertyValue>,
) -> PutAssetPropertyValueEntry {
    PutAssetPropertyValueEntry::builder()
        .entry_id(id)
        .property_alias(alias)
        .set_property_values(Some(values))
        .build()
        .expect("entry")
}

/// (code, timestamps in seconds) of each error of an error entry.
type Errors = Vec<(String, Vec<i64>)>;

/// (entry id, errors) of each error entry of a `BatchPutAssetPropertyValue`.
fn error_entries(out: &BatchPutAssetPropertyValueOutput) -> Vec<(&str, Errors)> {
    out.error_entries()
        .iter()
        .map(|e| (e.entry_id(), errors_of(e)))
        .collect()
}

fn errors_of(e: &BatchPutAssetPropertyErrorEntry) -> Errors {
    e.errors()
        .iter()
        .map(|x| {
            (
                x.error_code().as_str().to_string(),
                x.timestamps().iter().map(|t| t.time_in_seconds()).collect(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Raw HTTP, for what the SDK will not send.

/// `yyyyMMddTHHmmssZ` for now.
fn amz_date() -> String {
    let secs = now_secs();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Headers of a request signed (in form only) for `service`.
fn signed_for(service: &str) -> Vec<(String, String)> {
    let date = amz_date();
    vec![
        (
            "Authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential=testing/{}/us-east-1/{service}/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
                &date[..8],
                "0".repeat(64)
            ),
        ),
        ("x-amz-date".into(), date),
    ]
}

struct RawAnswer {
    status: u16,
    head: String,
    body: Value,
}

impl RawAnswer {
    fn error_type(&self) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("x-amzn-errortype")
                .then(|| v.trim())
        })
    }
}

fn raw(port: u16, method: &str, path: &str, headers: &[(String, String)], body: &str) -> RawAnswer {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes()).expect("send");
    let mut r = BufReader::new(conn);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).expect("read") > 0, "no answer");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("body");
    let body = if rest.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&rest).expect("JSON answer")
    };
    RawAnswer { status, head, body }
}

// ---------------------------------------------------------------------------
// IoT Analytics

#[test]
fn analytics_channel_put_and_sample() {
    let fake = FakeIot::start();
    let client = analytics_client(&fake.url());
    let rt = rt();
    rt.block_on(async {
        let created = client
            .create_channel()
            .channel_name("telemetry")
            .send()
            .await
            .expect("create channel");
        assert_eq!(created.channel_name(), Some("telemetry"));
        assert!(created
            .channel_arn()
            .unwrap()
            .ends_with(":channel/telemetry"));

        let dup = client
            .create_channel()
            .channel_name("telemetry")
            .send()
            .await
            .expect_err("duplicate channel");
        assert_eq!(dup.code(), Some("ResourceAlreadyExistsException"));

        let bad = client
            .create_channel()
            .channel_name("no-hyphens")
            .send()
            .await
            .expect_err("bad name");
        assert_eq!(bad.code(), Some("InvalidRequestException"));

        let d = client
            .describe_channel()
            .channel_name("telemetry")
            .send()
            .await
            .expect("describe");
        let ch = d.channel().expect("channel");
        assert_eq!(ch.name(), Some("telemetry"));
        assert_eq!(ch.status().map(|s| s.as_str()), Some("ACTIVE"));
        assert!(ch.creation_time().is_some());

        let missing = client
            .describe_channel()
            .channel_name("nope")
            .send()
            .await
            .expect_err("unknown channel");
        assert_eq!(missing.code(), Some("ResourceNotFoundException"));
        assert_eq!(status(&missing), Some(404));

        let out = client
            .batch_put_message()
            .channel_name("telemetry")
            .set_messages(Some(messages((0..12).map(|i| format!("m{i}")))))
            .send()
            .await
            .expect("put");
        assert!(out.batch_put_message_error_entries().is_empty());

        let all = client
            .sample_channel_data()
            .channel_name("telemetry")
            .send()
            .await
            .expect("sample");
        let got: Vec<String> = all
            .payloads()
            .iter()
            .map(|b| String::from_utf8(b.as_ref().to_vec()).unwrap())
            .collect();
        let want: Vec<String> = (2..12).map(|i| format!("{{\"id\":\"m{i}\"}}")).collect();
        assert_eq!(got, want, "the 10 most recent, oldest first");

        let two = client
            .sample_channel_data()
            .channel_name("telemetry")
            .max_messages(2)
            .send()
            .await
            .expect("sample 2");
        assert_eq!(two.payloads().len(), 2);
        assert_eq!(two.payloads()[1].as_ref(), b"{\"id\":\"m11\"}");

        let eleven = client
            .sample_channel_data()
            .channel_name("telemetry")
            .max_messages(11)
            .send()
            .await
            .expect_err("maxMessages 11");
        assert_eq!(eleven.code(), Some("InvalidRequestException"));
    });
    let stored = fake.channel_messages("telemetry");
    assert_eq!(stored.len(), 12);
    assert_eq!(stored[0], ("m0".to_string(), b"{\"id\":\"m0\"}".to_vec()));
    assert_eq!(stored[11].0, "m11");
}

#[test]
fn analytics_limits() {
    let fake = FakeIot::start();
    fake.create_channel("c1");
    let client = analytics_client(&fake.url());
    rt().block_on(async {
        let put = |msgs: Vec<Message>, channel: &str| {
            client
                .batch_put_message()
                .channel_name(channel)
                .set_messages(Some(msgs))
                .send()
        };
        let e = put(messages((0..101).map(|i| i.to_string())), "c1")
            .await
            .expect_err("101 messages");
        assert_eq!(e.code(), Some("InvalidRequestException"));
        assert_eq!(status(&e), Some(400));

        let e = put(Vec::new(), "c1").await.expect_err("no messages");
        assert_eq!(status(&e), Some(400));

        let e = put(messages(["a", "b", "a"].map(String::from)), "c1")
            .await
            .expect_err("duplicate ids");
        assert_eq!(e.code(), Some("InvalidRequestException"));
        assert_eq!(status(&e), Some(400));

        let e = put(messages(["x".repeat(129)]), "c1")
            .await
            .expect_err("id of 129 characters");
        assert_eq!(status(&e), Some(400));

        let e = put(messages(["a".to_string()]), "unknown_channel")
            .await
            .expect_err("unknown channel");
        assert_eq!(e.code(), Some("ResourceNotFoundException"));
        assert_eq!(status(&e), Some(404));

        put(messages((0..100).map(|i| i.to_string())), "c1")
            .await
            .expect("100 messages");
    });
    assert_eq!(fake.channel_messages("c1").len(), 100);

    let bad = raw(
        fake.port,
        "POST",
        "/messages/batch",
        &signed_for("iotanalytics"),
        r#"{"channelName":"c1","messages":[{"messageId":"z","payload":"not base64!"}]}"#,
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_type(), Some("InvalidRequestException"));
    assert_eq!(fake.channel_messages("c1").len(), 100);
}

#[test]
fn signatures_are_scoped_to_the_service() {
    let fake = FakeIot::start();
    fake.create_channel("c1");
    let (asset, props) = fake.create_asset("a", &[("p", "DOUBLE")]);
    let batch = r#"{"channelName":"c1","messages":[{"messageId":"a","payload":"e30="}]}"#;
    let values = json!({"entries": [{"entryId": "e", "assetId": asset, "propertyId": props[0],
        "propertyValues": [{"value": {"doubleValue": 1.5}, "timestamp": {"timeInSeconds": now_secs()}}]}]})
    .to_string();

    for (path, body) in [("/messages/batch", batch), ("/properties", values.as_str())] {
        let unsigned = raw(fake.port, "POST", path, &[], body);
        assert_eq!(unsigned.status, 403, "{path}");
        assert_eq!(
            unsigned.error_type(),
            Some("MissingAuthenticationTokenException")
        );
    }
    let wrong = raw(
        fake.port,
        "POST",
        "/messages/batch",
        &signed_for("iotsitewise"),
        batch,
    );
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.error_type(), Some("InvalidSignatureException"));
    let wrong = raw(
        fake.port,
        "POST",
        "/properties",
        &signed_for("iotanalytics"),
        &values,
    );
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.error_type(), Some("InvalidSignatureException"));
    let wrong = raw(fake.port, "GET", "/channels/c1", &signed_for("kinesis"), "");
    assert_eq!(wrong.status, 403);
    assert!(fake.channel_messages("c1").is_empty());
    assert!(fake.property_values(&asset, &props[0]).is_empty());

    // Scoped right, the same requests go through.
    let ok = raw(
        fake.port,
        "POST",
        "/messages/batch",
        &signed_for("iotanalytics"),
        batch,
    );
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let ok = raw(
        fake.port,
        "POST",
        "/properties",
        &signed_for("iotsitewise"),
        &values,
    );
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, json!({"errorEntries": []}));
    assert_eq!(fake.channel_messages("c1").len(), 1);
    assert_eq!(fake.property_values(&asset, &props[0]).len(), 1);
}

// ---------------------------------------------------------------------------
// IoT SiteWise

/// Creates a model (temperature DOUBLE, state STRING) and an asset through
/// the SDK; (asset id, [temperature id, state id]).
async fn sdk_asset(client: &aws_sdk_iotsitewise::Client, name: &str) -> (String, Vec<String>) {
    let prop = |n: &str, t: PropertyDataType| {
        AssetModelPropertyDefinition::builder()
            .name(n)
            .data_type(t)
            .r#type(
                PropertyType::builder()
                    .measurement(Measurement::builder().build())
                    .build(),
            )
            .build()
            .expect("property")
    };
    let model = client
        .create_asset_model()
        .asset_model_name(format!("{name} model"))
        .asset_model_properties(prop("temperature", PropertyDataType::Double))
        .asset_model_properties(prop("state", PropertyDataType::String))
        .send()
        .await
        .expect("create model");
    let asset = client
        .create_asset()
        .asset_name(name)
        .asset_model_id(model.asset_model_id())
        .send()
        .await
        .expect("create asset");
    let d = client
        .describe_asset()
        .asset_id(asset.asset_id())
        .send()
        .await
        .expect("describe asset");
    assert_eq!(d.asset_name(), name);
    assert_eq!(d.asset_model_id(), model.asset_model_id());
    let names: Vec<&str> = d.asset_properties().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["temperature", "state"]);
    let ids = d
        .asset_properties()
        .iter()
        .map(|p| p.id().to_string())
        .collect();
    (asset.asset_id().to_string(), ids)
}

#[test]
fn sitewise_assets_aliases_and_reads() {
    let fake = FakeIot::start();
    let client = sitewise_client(&fake.url());
    let t = now_secs() - 120;
    let (asset, props) = rt().block_on(async {
        let (asset, props) = sdk_asset(&client, "turbine").await;
        client
            .update_asset_property()
            .asset_id(&asset)
            .property_id(&props[0])
            .property_alias("/farm/turbine/temperature")
            .send()
            .await
            .expect("set alias");
        let d = client
            .describe_asset()
            .asset_id(&asset)
            .send()
            .await
            .expect("describe");
        assert_eq!(
            d.asset_properties()[0].alias(),
            Some("/farm/turbine/temperature")
        );
        assert_eq!(d.asset_properties()[1].alias(), None);

        let missing = client
            .describe_asset()
            .asset_id("00000000-0000-0000-0000-000000000000")
            .send()
            .await
            .expect_err("unknown asset");
        assert_eq!(missing.code(), Some("ResourceNotFoundException"));

        let empty = client
            .get_asset_property_value()
            .property_alias("/farm/turbine/temperature")
            .send()
            .await
            .expect("latest of nothing");
        assert!(empty.property_value().is_none());

        let out = client
            .batch_put_asset_property_value()
            .entries(entry_by_alias(
                "by-alias",
                "/farm/turbine/temperature",
                vec![tqv_double(t, 20.5), tqv_double(t + 1, 21.5)],
            ))
            .entries(entry_by_ids(
                "by-ids",
                &asset,
                &props[0],
                vec![tqv_double(t + 2, 22.5)],
            ))
            .entries(entry_by_alias(
                "unknown",
                "/farm/nothing",
                vec![tqv_double(t, 1.0)],
            ))
            .entries(entry_by_ids(
                "no-asset",
                "00000000-0000-0000-0000-000000000000",
                &props[0],
                vec![tqv_double(t, 1.0)],
            ))
            .entries(entry_by_ids(
                "wrong-type",
                &asset,
                &props[1],
                vec![tqv_double(t, 1.0)],
            ))
            .entries(
                PutAssetPropertyValueEntry::builder()
                    .entry_id("no-address")
                    .property_values(tqv_double(t, 1.0))
                    .build()
                    .expect("entry"),
            )
            .send()
            .await
            .expect("put");
        let errors = error_entries(&out);
        assert_eq!(
            errors,
            [
                (
                    "unknown",
                    vec![("ResourceNotFoundException".into(), vec![t])]
                ),
                (
                    "no-asset",
                    vec![("ResourceNotFoundException".into(), vec![t])]
                ),
                (
                    "wrong-type",
                    vec![("InvalidRequestException".into(), vec![t])]
                ),
                (
                    "no-address",
                    vec![("InvalidRequestException".into(), vec![t])]
                ),
            ]
        );

        for latest in [
            client
                .get_asset_property_value()
                .property_alias("/farm/turbine/temperature")
                .send()
                .await
                .expect("latest by alias"),
            client
                .get_asset_property_value()
                .asset_id(&asset)
                .property_id(&props[0])
                .send()
                .await
                .expect("latest by ids"),
        ] {
            let v = latest.property_value().expect("a value");
            assert_eq!(v.value().and_then(|v| v.double_value()), Some(22.5));
            assert_eq!(v.timestamp().map(|t| t.time_in_seconds()), Some(t + 2));
            assert_eq!(v.quality(), Some(&Quality::Good));
        }
        let e = client
            .get_asset_property_value()
            .property_alias("/farm/nothing")
            .send()
            .await
            .expect_err("unknown alias");
        assert_eq!(e.code(), Some("ResourceNotFoundException"));

        // Removing the alias (UpdateAssetProperty without one).
        client
            .update_asset_property()
            .asset_id(&asset)
            .property_id(&props[0])
            .send()
            .await
            .expect("remove alias");
        let e = client
            .get_asset_property_value()
            .property_alias("/farm/turbine/temperature")
            .send()
            .await
            .expect_err("alias gone");
        assert_eq!(e.code(), Some("ResourceNotFoundException"));
        (asset, props)
    });
    let stored = fake.property_values(&asset, &props[0]);
    let secs: Vec<i64> = stored
        .iter()
        .map(|v| v["timestamp"]["timeInSeconds"].as_i64().unwrap())
        .collect();
    assert_eq!(secs, [t, t + 1, t + 2]);
    assert_eq!(stored[0]["value"], json!({"doubleValue": 20.5}));
    assert!(fake.property_values(&asset, &props[1]).is_empty());
}

#[test]
fn sitewise_limits() {
    let fake = FakeIot::start();
    let (asset, props) = fake.create_asset("a", &[("p", "DOUBLE")]);
    let client = sitewise_client(&fake.url());
    let t = now_secs() - 60;
    rt().block_on(async {
        let entry = |i: usize, n: i64| {
            entry_by_ids(
                &format!("e{i}"),
                &asset,
                &props[0],
                (0..n)
                    .map(|k| tqv_double(t - i as i64 * 100 - k, 1.0))
                    .collect(),
            )
        };
        let send = |entries: Vec<PutAssetPropertyValueEntry>| {
            client
                .batch_put_asset_property_value()
                .set_entries(Some(entries))
                .send()
        };
        let e = send((0..11).map(|i| entry(i, 1)).collect())
            .await
            .expect_err("11 entries");
        assert_eq!(e.code(), Some("InvalidRequestException"));
        assert_eq!(status(&e), Some(400));
        let e = send(vec![entry(0, 11)]).await.expect_err("11 values");
        assert_eq!(e.code(), Some("InvalidRequestException"));
        let e = send(Vec::new()).await.expect_err("no entries");
        assert_eq!(e.code(), Some("InvalidRequestException"));
        let e = send(vec![entry(0, 1), entry(0, 1)])
            .await
            .expect_err("duplicate entry ids");
        assert_eq!(e.code(), Some("InvalidRequestException"));
        let bad_id = entry_by_ids("bad id!", &asset, &props[0], vec![tqv_double(t, 1.0)]);
        let e = send(vec![bad_id]).await.expect_err("bad entry id");
        assert_eq!(e.code(), Some("InvalidRequestException"));
        assert!(fake.property_values(&asset, &props[0]).is_empty());

        let out = send((0..10).map(|i| entry(i, 10)).collect())
            .await
            .expect("10 entries of 10");
        assert!(out.error_entries().is_empty());
    });
    assert_eq!(fake.property_values(&asset, &props[0]).len(), 100);
}

#[test]
fn sitewise_timestamps_and_conflicts() {
    let fake = FakeIot::start();
    let (asset, props) = fake.create_asset("a", &[("p", "DOUBLE")]);
    let client = sitewise_client(&fake.url());
    let now = now_secs();
    let (old, ahead, good) = (now - 8 * 86_400, now + 11 * 60, now - 30);
    rt().block_on(async {
        let out = client
            .batch_put_asset_property_value()
            .entries(entry_by_ids(
                "e1",
                &asset,
                &props[0],
                vec![
                    tqv_double(old, 1.0),
                    tqv_double(good, 2.0),
                    tqv_double(ahead, 3.0),
                ],
            ))
            .send()
            .await
            .expect("put");
        assert_eq!(out.error_entries().len(), 1);
        assert_eq!(out.error_entries()[0].entry_id(), "e1");
        assert_eq!(
            errors_of(&out.error_entries()[0]),
            [("TimestampOutOfRangeException".into(), vec![old, ahead])]
        );

        // The same timestamp again, and twice within one request.
        let out = client
            .batch_put_asset_property_value()
            .entries(entry_by_ids(
                "again",
                &asset,
                &props[0],
                vec![tqv_double(good, 9.0)],
            ))
            .entries(entry_by_ids(
                "twice",
                &asset,
                &props[0],
                vec![tqv_double(good + 1, 4.0), tqv_double(good + 1, 5.0)],
            ))
            .send()
            .await
            .expect("put");
        let errors = error_entries(&out);
        assert_eq!(
            errors,
            [
                (
                    "again",
                    vec![("ConflictingOperationException".into(), vec![good])]
                ),
                (
                    "twice",
                    vec![("ConflictingOperationException".into(), vec![good + 1])]
                ),
            ]
        );
    });
    let stored: Vec<(i64, f64)> = fake
        .property_values(&asset, &props[0])
        .iter()
        .map(|v| {
            (
                v["timestamp"]["timeInSeconds"].as_i64().unwrap(),
                v["value"]["doubleValue"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(stored, [(good, 2.0), (good + 1, 4.0)]);
}

#[test]
fn sitewise_history() {
    let fake = FakeIot::start();
    let (asset, props) = fake.create_asset("a", &[("p", "DOUBLE"), ("s", "STRING")]);
    fake.set_alias(&asset, &props[0], "/a/p");
    let client = sitewise_client(&fake.url());
    let t0 = now_secs() - 600;
    rt().block_on(async {
        let mut values: Vec<AssetPropertyValue> =
            (0..5).map(|i| tqv_double(t0 + i * 10, i as f64)).collect();
        // A bad-quality value with a fractional timestamp.
        values.push(
            AssetPropertyValue::builder()
                .value(Variant::builder().double_value(99.0).build())
                .timestamp(
                    TimeInNanos::builder()
                        .time_in_seconds(t0 + 45)
                        .offset_in_nanos(500_000_000)
                        .build()
                        .unwrap(),
                )
                .quality(Quality::Bad)
                .build(),
        );
        let out = client
            .batch_put_asset_property_value()
            .entries(entry_by_alias("e", "/a/p", values))
            .send()
            .await
            .expect("put");
        assert!(out.error_entries().is_empty(), "{out:?}");

        let history = |start: i64, end: i64| {
            client
                .get_asset_property_value_history()
                .property_alias("/a/p")
                .start_date(DateTime::from_secs(start))
                .end_date(DateTime::from_secs(end))
        };
        let secs = |v: &[AssetPropertyValue]| -> Vec<i64> {
            v.iter()
                .map(|v| v.timestamp().unwrap().time_in_seconds())
                .collect()
        };
        let all = history(t0 - 1, t0 + 100).send().await.expect("history");
        assert_eq!(
            secs(all.asset_property_value_history()),
            [t0, t0 + 10, t0 + 20, t0 + 30, t0 + 40, t0 + 45]
        );
        assert_eq!(
            all.asset_property_value_history()[5]
                .timestamp()
                .unwrap()
                .offset_in_nanos(),
            Some(500_000_000)
        );
        assert!(all.next_token().is_none());

        // The start is exclusive, the end inclusive.
        let mid = history(t0 + 10, t0 + 30).send().await.expect("history");
        assert_eq!(secs(mid.asset_property_value_history()), [t0 + 20, t0 + 30]);

        let desc = history(t0 - 1, t0 + 100)
            .time_ordering(TimeOrdering::Descending)
            .send()
            .await
            .expect("descending");
        assert_eq!(
            secs(desc.asset_property_value_history()),
            [t0 + 45, t0 + 40, t0 + 30, t0 + 20, t0 + 10, t0]
        );

        let bad = history(t0 - 1, t0 + 100)
            .qualities(Quality::Bad)
            .send()
            .await
            .expect("bad only");
        assert_eq!(secs(bad.asset_property_value_history()), [t0 + 45]);

        // Pages of two, through the ids this time.
        let mut token: Option<String> = None;
        let mut pages = Vec::new();
        loop {
            let page = client
                .get_asset_property_value_history()
                .asset_id(&asset)
                .property_id(&props[0])
                .start_date(DateTime::from_secs(t0 - 1))
                .end_date(DateTime::from_secs(t0 + 100))
                .max_results(2)
                .set_next_token(token.clone())
                .send()
                .await
                .expect("page");
            pages.push(secs(page.asset_property_value_history()));
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        assert_eq!(
            pages,
            [
                vec![t0, t0 + 10],
                vec![t0 + 20, t0 + 30],
                vec![t0 + 40, t0 + 45]
            ]
        );

        let e = client
            .get_asset_property_value_history()
            .property_alias("/nothing")
            .send()
            .await
            .expect_err("unknown alias");
        assert_eq!(e.code(), Some("ResourceNotFoundException"));
        let none = client
            .get_asset_property_value_history()
            .asset_id(&asset)
            .property_id(&props[1])
            .send()
            .await
            .expect("no values");
        assert!(none.asset_property_value_history().is_empty());
    });
}

// ---------------------------------------------------------------------------
// Faults

#[test]
fn analytics_faults() {
    let fake = FakeIot::start();
    fake.create_channel("c1");
    let client = analytics_client(&fake.url());
    fake.inject(
        Service::Analytics,
        [
            Fault::Throttle,
            Fault::Unavailable,
            Fault::Internal,
            Fault::Drop,
            Fault::Delay(Duration::from_millis(700)),
            Fault::EntryErrors {
                code: "InternalFailureException".into(),
                every: 2,
            },
        ],
    );
    assert_eq!(fake.faults_left(Service::Analytics), 6);
    assert_eq!(fake.faults_left(Service::SiteWise), 0);
    rt().block_on(async {
        // Control-plane calls take no fault.
        client
            .describe_channel()
            .channel_name("c1")
            .send()
            .await
            .expect("describe");
        assert_eq!(fake.faults_left(Service::Analytics), 6);

        let put = |ids: &[&str]| {
            client
                .batch_put_message()
                .channel_name("c1")
                .set_messages(Some(messages(ids.iter().map(|s| s.to_string()))))
                .send()
        };
        for (code, http) in [
            ("ThrottlingException", 429),
            ("ServiceUnavailableException", 503),
            ("InternalFailureException", 500),
        ] {
            let e = put(&["a"]).await.expect_err(code);
            assert_eq!(e.code(), Some(code));
            assert_eq!(status(&e), Some(http));
        }
        assert!(fake.channel_messages("c1").is_empty());

        let e = put(&["a"]).await.expect_err("dropped");
        assert!(matches!(e, SdkError::DispatchFailure(_)), "{e:?}");
        assert!(fake.channel_messages("c1").is_empty());

        let start = Instant::now();
        put(&["slow"]).await.expect("delayed");
        assert!(start.elapsed() >= Duration::from_millis(700));
        assert_eq!(fake.channel_messages("c1").len(), 1);

        let out = put(&["m0", "m1", "m2", "m3", "m4"]).await.expect("partial");
        let failed: Vec<(Option<&str>, Option<&str>)> = out
            .batch_put_message_error_entries()
            .iter()
            .map(|e| (e.message_id(), e.error_code()))
            .collect();
        let code = Some("InternalFailureException");
        assert_eq!(
            failed,
            [(Some("m0"), code), (Some("m2"), code), (Some("m4"), code)]
        );
        assert_eq!(fake.faults_left(Service::Analytics), 0);

        put(&["after"]).await.expect("no fault left");
    });
    let ids: Vec<String> = fake
        .channel_messages("c1")
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(ids, ["slow", "m1", "m3", "after"]);

    // Each call recorded, with what was answered (0: dropped).
    let puts: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/messages/batch")
        .map(|r| r.status)
        .collect();
    assert_eq!(puts, [429, 503, 500, 0, 200, 200, 200]);
}

#[test]
fn sitewise_faults() {
    let fake = FakeIot::start();
    let (asset, props) = fake.create_asset("a", &[("p", "INTEGER")]);
    let client = sitewise_client(&fake.url());
    let t = now_secs() - 100;
    fake.inject(
        Service::SiteWise,
        [
            Fault::Throttle,
            Fault::Drop,
            Fault::Delay(Duration::from_millis(500)),
            Fault::EntryErrors {
                code: "ThrottlingException".into(),
                every: 3,
            },
            Fault::Unavailable,
        ],
    );
    let int_entry = |i: i64| {
        entry_by_ids(
            &format!("e{i}"),
            &asset,
            &props[0],
            vec![AssetPropertyValue::builder()
                .value(Variant::builder().integer_value(i as i32).build())
                .timestamp(
                    TimeInNanos::builder()
                        .time_in_seconds(t + i)
                        .build()
                        .unwrap(),
                )
                .build()],
        )
    };
    rt().block_on(async {
        let put = |from: i64, n: i64| {
            client
                .batch_put_asset_property_value()
                .set_entries(Some((from..from + n).map(int_entry).collect()))
                .send()
        };
        let e = put(0, 1).await.expect_err("throttled");
        assert_eq!(e.code(), Some("ThrottlingException"));
        assert_eq!(status(&e), Some(429));
        let e = put(0, 1).await.expect_err("dropped");
        assert!(
            matches!(e, aws_sdk_iotsitewise::error::SdkError::DispatchFailure(_)),
            "{e:?}"
        );
        assert!(fake.property_values(&asset, &props[0]).is_empty());

        let start = Instant::now();
        put(0, 1).await.expect("delayed");
        assert!(start.elapsed() >= Duration::from_millis(500));

        let out = put(1, 7).await.expect("partial");
        let failed = error_entries(&out);
        let throttled = |i: i64| vec![("ThrottlingException".to_string(), vec![t + i])];
        assert_eq!(
            failed,
            [
                ("e1", throttled(1)),
                ("e4", throttled(4)),
                ("e7", throttled(7))
            ]
        );

        let e = put(20, 1).await.expect_err("unavailable");
        assert_eq!(e.code(), Some("ServiceUnavailableException"));
        assert_eq!(fake.faults_left(Service::SiteWise), 0);
    });
    let stored: Vec<i64> = fake
        .property_values(&asset, &props[0])
        .iter()
        .map(|v| v["value"]["integerValue"].as_i64().unwrap())
        .collect();
    assert_eq!(stored, [0, 2, 3, 5, 6]);
}

// ---------------------------------------------------------------------------
// Inspection

#[test]
fn requests_are_recorded_and_reset_forgets() {
    let fake = FakeIot::start();
    let client = analytics_client(&fake.url());
    rt().block_on(async {
        client
            .create_channel()
            .channel_name("c1")
            .send()
            .await
            .expect("create");
        client
            .batch_put_message()
            .channel_name("c1")
            .set_messages(Some(messages(["a".to_string()])))
            .send()
            .await
            .expect("put");
        let _ = client.describe_channel().channel_name("x").send().await;
    });
    let reqs = fake.requests();
    let summary: Vec<(Option<Service>, &str, &str, u16)> = reqs
        .iter()
        .map(|r| (r.service, r.method.as_str(), r.path.as_str(), r.status))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(Service::Analytics), "POST", "/channels", 201),
            (Some(Service::Analytics), "POST", "/messages/batch", 200),
            (Some(Service::Analytics), "GET", "/channels/x", 404),
        ]
    );
    assert_eq!(reqs[1].body["messages"][0]["messageId"], "a");
    assert_eq!(reqs[2].body, Value::Null);

    fake.inject(Service::SiteWise, [Fault::Throttle]);
    fake.reset();
    assert!(fake.requests().is_empty());
    assert!(fake.channel_messages("c1").is_empty());
    assert_eq!(fake.faults_left(Service::SiteWise), 0);
    let e = rt()
        .block_on(client.describe_channel().channel_name("c1").send())
        .expect_err("channel forgotten");
    assert_eq!(e.code(), Some("ResourceNotFoundException"));
}

#[test]
fn http_control_endpoints() {
    let fake = FakeIot::start();
    let p = fake.port;
    let none: &[(String, String)] = &[];
    assert_eq!(
        raw(p, "POST", "/_fake/channels", none, r#"{"name":"c1"}"#).status,
        200
    );
    let asset = raw(
        p,
        "POST",
        "/_fake/assets",
        none,
        r#"{"name":"a","properties":[{"name":"p","dataType":"DOUBLE"}]}"#,
    );
    assert_eq!(asset.status, 200);
    let asset_id = asset.body["assetId"].as_str().unwrap().to_string();
    let prop_id = asset.body["propertyIds"][0].as_str().unwrap().to_string();
    let alias = json!({"assetId": asset_id, "propertyId": prop_id, "alias": "/x"}).to_string();
    assert_eq!(raw(p, "POST", "/_fake/aliases", none, &alias).status, 200);

    let faults = raw(
        p,
        "POST",
        "/_fake/faults",
        none,
        r#"{"service":"analytics","faults":["throttle",{"delayMs":5},{"entryErrors":{"code":"X","every":2}},"drop"]}"#,
    );
    assert_eq!(faults.status, 200, "{:?}", faults.body);
    assert_eq!(faults.body["faultsLeft"], 4);
    assert_eq!(fake.faults_left(Service::Analytics), 4);
    let bad = raw(
        p,
        "POST",
        "/_fake/faults",
        none,
        r#"{"service":"sqs","faults":[]}"#,
    );
    assert_eq!(bad.status, 400);
    assert_eq!(
        raw(p, "GET", "/_fake/faults", none, "").body,
        json!({"analytics": 4, "sitewise": 0})
    );

    let put = raw(
        p,
        "POST",
        "/messages/batch",
        &signed_for("iotanalytics"),
        r#"{"channelName":"c1","messages":[{"messageId":"a","payload":"aGk="}]}"#,
    );
    assert_eq!(put.status, 429);
    let put = raw(
        p,
        "POST",
        "/messages/batch",
        &signed_for("iotanalytics"),
        r#"{"channelName":"c1","messages":[{"messageId":"b","payload":"aGk="}]}"#,
    );
    assert_eq!(put.status, 200);

    let state = raw(p, "GET", "/_fake/state", none, "").body;
    assert_eq!(
        state["channels"]["c1"]["messages"],
        json!([{"messageId": "b", "payload": "aGk=", "text": "hi"}])
    );
    assert_eq!(state["assets"][0]["properties"][0]["alias"], "/x");
    assert_eq!(state["faults"]["analytics"], 2);

    let reqs = raw(p, "GET", "/_fake/requests", none, "").body;
    let statuses: Vec<u64> = reqs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [429, 200], "control calls are not recorded");
    assert_eq!(reqs[0]["service"], "analytics");

    assert_eq!(raw(p, "POST", "/_fake/reset", none, "").status, 200);
    let state = raw(p, "GET", "/_fake/state", none, "").body;
    assert_eq!(state["channels"], json!({}));
    assert_eq!(state["faults"]["analytics"], 0);
}

#[test]
fn binary_listens_and_answers() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fake-iot"))
        .args(["--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fake-iot");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("first line");
    let port: u16 = line
        .trim()
        .strip_prefix("fake-iot listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let none: &[(String, String)] = &[];
    let state = raw(port, "GET", "/_fake/state", none, "");
    assert_eq!(state.status, 200);
    let unsigned = raw(port, "GET", "/channels/c1", none, "");
    assert_eq!(unsigned.status, 403);
    let _ = child.kill();
    let _ = child.wait();
}
