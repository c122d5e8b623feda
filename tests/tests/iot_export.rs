//! `export-sitewise` and `export-analytics` end to end against the project's
//! fake of both services (`tests/src/fake_iot.rs`), read back through its
//! inspection API and through the real read APIs with the AWS SDK clients.

use std::time::{Duration, Instant};

use bus_schema::{
    ExportCommon, IotAnalyticsConfig, IotSiteWiseConfig, StrategyOnFull, StreamDefinition,
};
use serde_json::Value;
use stream_manager_tests::aws::aws_env;
use stream_manager_tests::fake_iot::{analytics_client, sitewise_client, FakeIot, Fault, Service};
use stream_manager_tests::{kill9, terminate, StoreHarness};

const WAIT: Duration = Duration::from_secs(60);

fn common(id: &str) -> ExportCommon {
    ExportCommon {
        identifier: id.into(),
        ..Default::default()
    }
}

fn sitewise_stream(name: &str, c: ExportCommon) -> StreamDefinition {
    let mut d = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
    d.exports.iot_sitewise = vec![IotSiteWiseConfig { common: c }];
    d
}

fn analytics_stream(name: &str, c: ExportCommon, channel: &str) -> StreamDefinition {
    let mut d = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
    d.exports.iot_analytics = vec![IotAnalyticsConfig {
        common: c,
        iot_channel: channel.into(),
        iot_msg_id_prefix: Some("plant7-".into()),
    }];
    d
}

fn now_secs() -> i64 {
    (bus::unix_ms() / 1000) as i64
}

/// An entry as the Python SDK's helper writes it (spaced JSON).
fn python_entry(entry_id: &str, alias: &str, value: f64, secs: i64) -> Vec<u8> {
    format!(
        r#"{{"entryId": "{entry_id}", "propertyAlias": "{alias}", "propertyValues": [{{"value": {{"doubleValue": {value}}}, "timestamp": {{"timeInSeconds": {secs}, "offsetInNanos": 0}}, "quality": "GOOD"}}]}}"#
    )
    .into_bytes()
}

/// An entry as the Java SDK's helper writes it (compact JSON).
fn java_entry(entry_id: &str, asset: &str, property: &str, value: i64, secs: i64) -> Vec<u8> {
    format!(
        r#"{{"entryId":"{entry_id}","assetId":"{asset}","propertyId":"{property}","propertyValues":[{{"value":{{"integerValue":{value}}},"timestamp":{{"timeInSeconds":{secs},"offsetInNanos":0}},"quality":"GOOD"}}]}}"#
    )
    .into_bytes()
}

struct Setup {
    exporter: std::process::Child,
    name: &'static str,
    store: StoreHarness,
    fake: FakeIot,
}

impl Setup {
    fn new(exporter: &'static str) -> Self {
        let fake = FakeIot::start();
        let store = StoreHarness::start(&[]);
        let child = store.exporter(exporter, &aws_env(&fake.url()));
        Setup {
            exporter: child,
            name: exporter,
            store,
            fake,
        }
    }

    fn restart_exporter(&mut self) {
        self.exporter = self.store.exporter(self.name, &aws_env(&self.fake.url()));
    }

    /// Entry counts of the `POST <path>` calls the fake answered with 200.
    fn batch_sizes(&self, path: &str, key: &str) -> Vec<usize> {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == path && r.status == 200)
            .map(|r| r.body[key].as_array().map_or(0, Vec::len))
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        kill9(&mut self.exporter);
    }
}

fn double_values(values: &[Value]) -> Vec<f64> {
    values
        .iter()
        .filter_map(|v| v["value"]["doubleValue"].as_f64())
        .collect()
}

#[test]
fn sitewise_both_json_styles_alias_and_ids_in_batches_of_ten() {
    let s = Setup::new("export-sitewise");
    let (asset, props) = s
        .fake
        .create_asset("press", &[("temp", "DOUBLE"), ("count", "INTEGER")]);
    s.fake.set_alias(&asset, &props[0], "/plant/press/temp");
    let mut c = common("sw");
    c.disabled = Some(true);
    s.store.create(sitewise_stream("sw", c.clone()));
    let t0 = now_secs() - 100;
    for i in 0..15 {
        // Applications reuse entry ids; the exporter makes them unique.
        s.store.append(
            "sw",
            python_entry("entry-1", "/plant/press/temp", i as f64 + 0.5, t0 + i),
        );
    }
    for i in 0..10 {
        s.store
            .append("sw", java_entry("entry-1", &asset, &props[1], i, t0 + i));
    }
    c.disabled = Some(false);
    s.store.update(sitewise_stream("sw", c));
    s.store.wait_exported("sw", "sw", 24, WAIT);
    let temps = double_values(&s.fake.property_values(&asset, &props[0]));
    assert_eq!(temps, (0..15).map(|i| i as f64 + 0.5).collect::<Vec<_>>());
    let counts: Vec<i64> = s
        .fake
        .property_values(&asset, &props[1])
        .iter()
        .filter_map(|v| v["value"]["integerValue"].as_i64())
        .collect();
    assert_eq!(counts, (0..10).collect::<Vec<_>>());
    assert_eq!(s.batch_sizes("/properties", "entries"), vec![10, 10, 5]);
    // The real read API sees them too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = sitewise_client(&s.fake.url());
    let latest = rt
        .block_on(
            client
                .get_asset_property_value()
                .property_alias("/plant/press/temp")
                .send(),
        )
        .unwrap();
    let v = latest.property_value().and_then(|v| v.value());
    assert_eq!(v.and_then(|v| v.double_value()), Some(14.5));
    let st = s.store.export_status("sw", "sw");
    assert_eq!((st.exported_messages, st.skipped_messages), (25, 0));
    assert_eq!(st.error_message, None);
}

#[test]
fn sitewise_entries_that_can_never_pass_are_skipped_and_reported() {
    let s = Setup::new("export-sitewise");
    let (asset, props) = s.fake.create_asset("pump", &[("flow", "DOUBLE")]);
    s.fake.set_alias(&asset, &props[0], "/pump/flow");
    let mut c = common("sw");
    c.disabled = Some(true);
    s.store.create(sitewise_stream("bad", c.clone()));
    let now = now_secs();
    s.store
        .append("bad", python_entry("a", "/pump/flow", 1.0, now - 10)); // 0 ok
    s.store.append(
        "bad",
        python_entry("b", "/pump/flow", 2.0, now - 8 * 24 * 3600),
    ); // 1 too old
    s.store
        .append("bad", python_entry("c", "/no/such/alias", 3.0, now)); // 2 unknown
    s.store.append("bad", b"{not json".to_vec()); // 3 invalid
    s.store
        .append("bad", python_entry("e", "/pump/flow", 5.0, now - 5)); // 4 ok
    c.disabled = Some(false);
    s.store.update(sitewise_stream("bad", c));
    s.store.wait_exported("bad", "sw", 4, WAIT);
    assert_eq!(
        double_values(&s.fake.property_values(&asset, &props[0])),
        vec![1.0, 5.0]
    );
    let st = s.store.export_status("bad", "sw");
    assert_eq!((st.exported_messages, st.skipped_messages), (2, 3));
    let error = st.error_message.expect("skips are reported");
    for needle in [
        "sequence number 1 (TimestampOutOfRangeException",
        "2 (ResourceNotFoundException",
        "3 (not a JSON PutAssetPropertyValueEntry",
    ] {
        assert!(error.contains(needle), "{needle:?} missing from {error}");
    }
}

#[test]
fn sitewise_throttling_and_outages_are_retried_with_nothing_lost() {
    let s = Setup::new("export-sitewise");
    let (asset, props) = s.fake.create_asset("fan", &[("rpm", "DOUBLE")]);
    s.fake.set_alias(&asset, &props[0], "/fan/rpm");
    let mut c = common("sw");
    c.disabled = Some(true);
    s.store.create(sitewise_stream("retry", c.clone()));
    let t0 = now_secs() - 200;
    for i in 0..60 {
        s.store
            .append("retry", python_entry("x", "/fan/rpm", i as f64, t0 + i));
    }
    s.fake.inject(
        Service::SiteWise,
        [
            Fault::Throttle,
            Fault::Unavailable,
            Fault::Internal,
            Fault::Drop,
            Fault::EntryErrors {
                code: "ThrottlingException".into(),
                every: 2,
            },
            Fault::Delay(Duration::from_secs(2)),
            Fault::EntryErrors {
                code: "ServiceUnavailableException".into(),
                every: 1,
            },
        ],
    );
    c.disabled = Some(false);
    s.store.update(sitewise_stream("retry", c));
    s.store
        .wait_exported("retry", "sw", 59, Duration::from_secs(120));
    assert_eq!(s.fake.faults_left(Service::SiteWise), 0);
    assert_eq!(
        double_values(&s.fake.property_values(&asset, &props[0])),
        (0..60).map(|i| i as f64).collect::<Vec<_>>()
    );
    let st = s.store.export_status("retry", "sw");
    assert_eq!((st.exported_messages, st.skipped_messages), (60, 0));
    assert_eq!(st.error_message, None);
}

#[test]
fn sitewise_kill_9_mid_export_loses_nothing() {
    let mut s = Setup::new("export-sitewise");
    let (asset, props) = s.fake.create_asset("belt", &[("speed", "DOUBLE")]);
    s.fake.set_alias(&asset, &props[0], "/belt/speed");
    s.store.create(sitewise_stream("kill", common("sw")));
    s.fake.inject(
        Service::SiteWise,
        (0..30).map(|_| Fault::Delay(Duration::from_millis(100))),
    );
    let t0 = now_secs() - 600;
    for i in 0..400 {
        s.store
            .append("kill", python_entry("k", "/belt/speed", i as f64, t0 + i));
    }
    let start = Instant::now();
    while s.store.export_status("kill", "sw").exported_messages < 50 {
        assert!(start.elapsed() < WAIT, "export did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(&mut s.exporter);
    assert!(
        s.store
            .export_status("kill", "sw")
            .last_exported_sequence_number
            < 399
    );
    s.restart_exporter();
    s.store.wait_exported("kill", "sw", 399, WAIT);
    let got = double_values(&s.fake.property_values(&asset, &props[0]));
    assert_eq!(got, (0..400).map(|i| i as f64).collect::<Vec<_>>());
    assert!(terminate(&mut s.exporter).success());
}

#[test]
fn analytics_messages_ids_batches_and_sample() {
    let s = Setup::new("export-analytics");
    s.fake.create_channel("line_1");
    let mut c = common("an");
    c.disabled = Some(true);
    s.store.create(analytics_stream("an", c.clone(), "line_1"));
    let payloads: Vec<Vec<u8>> = (0..250)
        .map(|i| {
            let mut p = format!("{{\"n\": {i}}}").into_bytes();
            p.extend((0..i % 50).map(|j| (i + j) as u8));
            p
        })
        .collect();
    for p in &payloads {
        s.store.append("an", p.clone());
    }
    c.disabled = Some(false);
    s.store.update(analytics_stream("an", c, "line_1"));
    s.store.wait_exported("an", "an", 249, WAIT);
    let got = s.fake.channel_messages("line_1");
    assert_eq!(
        got.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        payloads
    );
    let ids: std::collections::HashSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 250, "ids are unique");
    assert!(got.iter().all(|(id, _)| id.starts_with("plant7-")));
    assert!(got[7].0.ends_with("_7"), "{}", got[7].0);
    assert_eq!(
        s.batch_sizes("/messages/batch", "messages"),
        vec![100, 100, 50]
    );
    // The real read API: SampleChannelData returns the newest messages.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = analytics_client(&s.fake.url());
    let sample = rt
        .block_on(
            client
                .sample_channel_data()
                .channel_name("line_1")
                .max_messages(10)
                .send(),
        )
        .unwrap();
    let sampled: Vec<Vec<u8>> = sample
        .payloads()
        .iter()
        .map(|b| b.as_ref().to_vec())
        .collect();
    assert_eq!(sampled.len(), 10);
    assert!(sampled.iter().all(|p| payloads[240..].contains(p)));
}

#[test]
fn analytics_faults_retried_and_permanent_errors_skipped() {
    let s = Setup::new("export-analytics");
    s.fake.create_channel("ch");
    let mut c = common("an");
    c.disabled = Some(true);
    c.batch_size = Some(20);
    s.store.create(analytics_stream("f", c.clone(), "ch"));
    for i in 0..100 {
        s.store.append("f", format!("m{i}").into_bytes());
    }
    s.store.append("f", vec![b'x'; 128 * 1024 + 1]); // 100: too large
    s.fake.inject(
        Service::Analytics,
        [
            Fault::EntryErrors {
                code: "InvalidRequestException".into(),
                every: 10,
            },
            Fault::Throttle,
            Fault::Unavailable,
            Fault::Drop,
            Fault::Internal,
            Fault::EntryErrors {
                code: "ThrottlingException".into(),
                every: 3,
            },
        ],
    );
    c.disabled = Some(false);
    s.store.update(analytics_stream("f", c, "ch"));
    s.store
        .wait_exported("f", "an", 100, Duration::from_secs(120));
    assert_eq!(s.fake.faults_left(Service::Analytics), 0);
    let st = s.store.export_status("f", "an");
    let got = s.fake.channel_messages("ch");
    // The InvalidRequestException entries (sequence numbers 0 and 10 of the
    // first batch of 20) and the oversized message are skipped; everything
    // else arrived.
    assert_eq!(st.skipped_messages, 3, "{st:?}");
    assert_eq!(st.exported_messages, 98, "{st:?}");
    assert_eq!(got.len(), 98);
    assert!(!got.iter().any(|(_, p)| p == b"m0" || p == b"m10"));
    // The status shows the last batch's error: the oversized message.
    let error = st.error_message.expect("skips are reported");
    assert!(error.contains("sequence number 100 (record of"), "{error}");
}

#[test]
fn analytics_kill_9_mid_export_resends_with_the_same_ids() {
    let mut s = Setup::new("export-analytics");
    s.fake.create_channel("k");
    let mut c = common("an");
    c.batch_size = Some(10);
    s.store.create(analytics_stream("k", c, "k"));
    s.fake.inject(
        Service::Analytics,
        (0..30).map(|_| Fault::Delay(Duration::from_millis(100))),
    );
    for i in 0..500 {
        s.store.append("k", format!("m{i}").into_bytes());
    }
    let start = Instant::now();
    while s.store.export_status("k", "an").exported_messages < 50 {
        assert!(start.elapsed() < WAIT, "export did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(&mut s.exporter);
    s.restart_exporter();
    s.store.wait_exported("k", "an", 499, WAIT);
    let got = s.fake.channel_messages("k");
    let mut ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        500,
        "every message arrived, a re-send under its own id"
    );
    let duplicates = got.len() - 500;
    assert!(duplicates <= 10, "{duplicates} duplicates");
}
