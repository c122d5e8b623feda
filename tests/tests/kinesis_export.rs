//! `export-kinesis` end to end against moto (Kinesis), started by the test,
//! with a fault-injecting proxy in between where faults are needed. Data is
//! read back from moto and compared byte for byte.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bus_schema::{ExportCommon, KinesisConfig, StrategyOnFull, StreamDefinition};
use stream_manager_tests::aws::{aws_env, KinesisClient, Moto};
use stream_manager_tests::fault_proxy::{Fault, FaultProxy};
use stream_manager_tests::slow_link::SlowLink;
use stream_manager_tests::{kill9, terminate, StoreHarness};

const WAIT: Duration = Duration::from_secs(60);

fn definition(stream: &str, exports: Vec<KinesisConfig>) -> StreamDefinition {
    let mut d = StreamDefinition::new(stream, StrategyOnFull::RejectNewData);
    d.exports.kinesis = exports;
    d
}

fn export(id: &str, kinesis_stream: &str) -> KinesisConfig {
    KinesisConfig {
        common: ExportCommon {
            identifier: id.into(),
            ..Default::default()
        },
        kinesis_stream_name: kinesis_stream.into(),
    }
}

/// Payload `i`: its index first (to check order and completeness), then
/// bytes of every value, of a length that varies with `i`.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("{i:08}:").into_bytes();
    p.extend((0..(i * 37) % 700).map(|j| ((i + j) % 256) as u8));
    p
}

fn index_of(record: &[u8]) -> usize {
    std::str::from_utf8(&record[..8]).unwrap().parse().unwrap()
}

/// Every expected payload arrived (byte for byte); returns how many extra
/// copies (at-least-once duplicates) there were.
fn assert_all_delivered(got: &[Vec<u8>], expected: &[Vec<u8>]) -> usize {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for r in got {
        *counts.entry(r.as_slice()).or_default() += 1;
    }
    let missing: Vec<usize> = expected
        .iter()
        .filter(|p| !counts.contains_key(p.as_slice()))
        .map(|p| index_of(p))
        .collect();
    assert!(
        missing.is_empty(),
        "records missing at the destination: {missing:?}"
    );
    let unexpected = got.iter().filter(|r| !expected.contains(r)).count();
    assert_eq!(
        unexpected, 0,
        "records at the destination that were never appended"
    );
    got.len() - expected.len()
}

struct Setup {
    // Dropped in this order: exporter first, then the store, then endpoints.
    exporter: std::process::Child,
    store: StoreHarness,
    kinesis: KinesisClient,
    proxy: Option<FaultProxy>,
    _moto: Moto,
}

impl Setup {
    fn new(store_env: &[(&str, &str)], with_proxy: bool) -> Self {
        let moto = Moto::start();
        let proxy = with_proxy.then(|| FaultProxy::start(moto.port));
        let endpoint = proxy.as_ref().map_or(moto.url(), |p| p.url());
        let store = StoreHarness::start(store_env);
        let exporter = store.exporter("export-kinesis", &aws_env(&endpoint));
        Setup {
            exporter,
            kinesis: KinesisClient::new(&moto.url()),
            store,
            proxy,
            _moto: moto,
        }
    }

    fn restart_exporter(&mut self) {
        let endpoint = self.proxy.as_ref().map_or(self._moto.url(), |p| p.url());
        self.exporter = self.store.exporter("export-kinesis", &aws_env(&endpoint));
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        kill9(&mut self.exporter);
    }
}

#[test]
fn records_arrive_in_order_byte_for_byte_with_status() {
    let s = Setup::new(&[], false);
    s.kinesis.create_stream("k-order", 1);
    s.store
        .create(definition("order", vec![export("k", "k-order")]));
    let expected: Vec<Vec<u8>> = (0..1200).map(payload).collect();
    for p in &expected {
        s.store.append("order", p.clone());
    }
    s.store.wait_exported("order", "k", 1199, WAIT);
    let got = s.kinesis.read_all("k-order");
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "records differ from what was appended, or are out of order"
    );
    let st = s.store.export_status("order", "k");
    assert_eq!(st.exported_messages, 1200);
    assert_eq!(
        st.exported_bytes,
        expected.iter().map(|p| p.len() as i64).sum::<i64>()
    );
    assert_eq!(st.error_message, None);
    assert!(st.last_export_time_ms.is_some());
}

#[test]
fn batch_size_is_honoured_and_disabled_pauses_until_resumed() {
    let s = Setup::new(&[], true);
    s.kinesis.create_stream("k-batch", 1);
    let mut e = export("k", "k-batch");
    e.common.batch_size = Some(7);
    e.common.disabled = Some(true);
    s.store.create(definition("batch", vec![e.clone()]));
    let expected: Vec<Vec<u8>> = (0..20).map(payload).collect();
    for p in &expected {
        s.store.append("batch", p.clone());
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        s.kinesis.read_all("k-batch").is_empty(),
        "a disabled export sent data"
    );
    assert_eq!(
        s.store
            .export_status("batch", "k")
            .last_exported_sequence_number,
        -1
    );
    e.common.disabled = Some(false);
    s.store.update(definition("batch", vec![e]));
    s.store.wait_exported("batch", "k", 19, WAIT);
    assert_eq!(s.kinesis.read_all("k-batch"), expected);
    assert_eq!(s.proxy.as_ref().unwrap().put_sizes(), vec![7, 7, 6]);
}

#[test]
fn batch_interval_holds_a_short_batch_until_it_expires() {
    let s = Setup::new(&[], true);
    s.kinesis.create_stream("k-interval", 1);
    let mut e = export("k", "k-interval");
    e.common.batch_size = Some(5);
    e.common.batch_interval_ms = Some(60_000);
    s.store.create(definition("interval", vec![e]));
    let appended = Instant::now();
    let expected: Vec<Vec<u8>> = (0..12).map(payload).collect();
    for p in &expected {
        s.store.append("interval", p.clone());
    }
    // Two full batches go at once; the last two wait for the interval.
    s.store.wait_exported("interval", "k", 9, WAIT);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.store
            .export_status("interval", "k")
            .last_exported_sequence_number,
        9
    );
    s.store
        .wait_exported("interval", "k", 11, Duration::from_secs(90));
    let waited = appended.elapsed();
    assert!(
        waited >= Duration::from_secs(59),
        "the short batch went after {waited:?}, before its 60 s interval"
    );
    assert_eq!(s.kinesis.read_all("k-interval"), expected);
    assert_eq!(s.proxy.as_ref().unwrap().put_sizes(), vec![5, 5, 2]);
}

#[test]
fn start_sequence_number_and_updates_while_running() {
    let s = Setup::new(&[], false);
    s.kinesis.create_stream("k-a", 1);
    s.kinesis.create_stream("k-b", 1);
    s.store.create(definition("upd", vec![]));
    let expected: Vec<Vec<u8>> = (0..10).map(payload).collect();
    for p in &expected {
        s.store.append("upd", p.clone());
    }
    let mut e = export("k", "k-a");
    e.common.start_sequence_number = Some(5);
    s.store.update(definition("upd", vec![e.clone()]));
    s.store.wait_exported("upd", "k", 9, WAIT);
    assert_eq!(s.kinesis.read_all("k-a"), expected[5..].to_vec());
    // Point the running export at another Kinesis stream: what comes next
    // goes there, from the stored cursor.
    e.kinesis_stream_name = "k-b".into();
    s.store.update(definition("upd", vec![e]));
    let more: Vec<Vec<u8>> = (10..15).map(payload).collect();
    for p in &more {
        s.store.append("upd", p.clone());
    }
    s.store.wait_exported("upd", "k", 14, WAIT);
    assert_eq!(s.kinesis.read_all("k-b"), more);
    assert_eq!(s.kinesis.read_all("k-a"), expected[5..].to_vec());
}

#[test]
fn an_oversized_record_is_skipped_and_reported() {
    let s = Setup::new(&[], false);
    s.kinesis.create_stream("k-big", 1);
    // All three in one batch: the status shows the last batch's error.
    let mut e = export("k", "k-big");
    e.common.disabled = Some(true);
    s.store.create(definition("big", vec![e.clone()]));
    s.store.append("big", payload(0));
    let big_seq = s.store.append("big", vec![7u8; 1024 * 1024]);
    s.store.append("big", payload(2));
    e.common.disabled = Some(false);
    s.store.update(definition("big", vec![e]));
    s.store.wait_exported("big", "k", 2, WAIT);
    assert_eq!(s.kinesis.read_all("k-big"), vec![payload(0), payload(2)]);
    let st = s.store.export_status("big", "k");
    assert_eq!(st.skipped_messages, 1);
    let error = st.error_message.expect("the skip is reported");
    assert!(
        error.contains(&format!("sequence number {big_seq} (")),
        "{error}"
    );
    assert_eq!(st.exported_messages, 2);
}

#[test]
fn injected_faults_are_retried_and_nothing_is_lost() {
    let s = Setup::new(&[], true);
    s.kinesis.create_stream("k-faults", 1);
    let mut e = export("k", "k-faults");
    e.common.batch_size = Some(50);
    e.common.disabled = Some(true);
    s.store.create(definition("faults", vec![e.clone()]));
    let expected: Vec<Vec<u8>> = (0..400).map(payload).collect();
    for p in &expected {
        s.store.append("faults", p.clone());
    }
    let proxy = s.proxy.as_ref().unwrap();
    proxy.inject([
        Fault::Throttle,
        Fault::Partial { every: 3 },
        Fault::Status500,
        Fault::DropBeforeForward,
        Fault::Partial { every: 1 },
        Fault::Delay(Duration::from_secs(3)),
        Fault::Throttle,
        Fault::Throttle,
        Fault::DropAfterForward,
        Fault::Partial { every: 2 },
    ]);
    e.common.disabled = Some(false);
    s.store.update(definition("faults", vec![e]));
    // While faults are being injected, the status shows the last error.
    let start = Instant::now();
    let mut saw_error = false;
    while s
        .store
        .export_status("faults", "k")
        .last_exported_sequence_number
        < 399
    {
        saw_error |= s.store.export_status("faults", "k").error_message.is_some();
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "export did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.faults_left(), 0);
    assert!(saw_error, "the failures never showed in the export status");
    let st = s.store.export_status("faults", "k");
    assert_eq!(st.error_message, None, "recovered: the error is cleared");
    assert_eq!(st.exported_messages, 400);
    let got = s.kinesis.read_all("k-faults");
    let duplicates = assert_all_delivered(&got, &expected);
    // Only the call whose answer was lost after it was stored can repeat.
    assert!(duplicates <= 50, "{duplicates} duplicates");
    println!(
        "faults: {} records delivered, {duplicates} duplicates",
        got.len()
    );
}

#[test]
fn endpoint_down_for_20_s_then_the_backlog_drains() {
    let s = Setup::new(&[], true);
    s.kinesis.create_stream("k-outage", 1);
    s.store
        .create(definition("outage", vec![export("k", "k-outage")]));
    let expected: Vec<Vec<u8>> = (0..300).map(payload).collect();
    for p in &expected[..100] {
        s.store.append("outage", p.clone());
    }
    s.store.wait_exported("outage", "k", 99, WAIT);
    let proxy = s.proxy.as_ref().unwrap();
    proxy.go_down();
    for p in &expected[100..] {
        s.store.append("outage", p.clone());
    }
    std::thread::sleep(Duration::from_secs(20));
    let st = s.store.export_status("outage", "k");
    assert_eq!(
        st.last_exported_sequence_number, 99,
        "nothing can be sent while down"
    );
    assert!(st.error_message.is_some(), "the outage shows in the status");
    proxy.come_back();
    s.store.wait_exported("outage", "k", 299, WAIT);
    let got = s.kinesis.read_all("k-outage");
    assert_eq!(assert_all_delivered(&got, &expected), 0);
    assert_eq!(s.store.export_status("outage", "k").error_message, None);
}

#[test]
fn after_a_3_minute_outage_the_backlog_moves_within_10_s_of_the_endpoint_returning() {
    let s = Setup::new(&[], true);
    s.kinesis.create_stream("k-long", 1);
    s.store
        .create(definition("long", vec![export("k", "k-long")]));
    let proxy = s.proxy.as_ref().unwrap();
    proxy.go_down();
    let expected: Vec<Vec<u8>> = (0..50).map(payload).collect();
    for p in &expected {
        s.store.append("long", p.clone());
    }
    // Long enough for an uncapped backoff to reach its 60 s ceiling.
    std::thread::sleep(Duration::from_secs(180));
    assert_eq!(
        s.store
            .export_status("long", "k")
            .last_exported_sequence_number,
        -1
    );
    proxy.come_back();
    let back = Instant::now();
    s.store.wait_exported("long", "k", 49, WAIT);
    let moved = back.elapsed();
    assert!(
        moved < Duration::from_secs(10),
        "the backlog moved {moved:?} after the endpoint came back"
    );
    let got = s.kinesis.read_all("k-long");
    assert_eq!(assert_all_delivered(&got, &expected), 0);
}

#[test]
fn kill_9_mid_export_loses_nothing() {
    let mut s = Setup::new(&[], true);
    s.kinesis.create_stream("k-kill", 1);
    let mut e = export("k", "k-kill");
    e.common.batch_size = Some(100);
    s.store.create(definition("kill", vec![e]));
    let expected: Vec<Vec<u8>> = (0..3000).map(payload).collect();
    // Slow answers so the kill lands with a batch in flight.
    s.proxy
        .as_ref()
        .unwrap()
        .inject((0..10).map(|_| Fault::Delay(Duration::from_millis(300))));
    for p in &expected {
        s.store.append("kill", p.clone());
    }
    let start = Instant::now();
    while s.store.export_status("kill", "k").exported_messages < 300 {
        assert!(start.elapsed() < WAIT, "export did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(&mut s.exporter);
    let at_kill = s
        .store
        .export_status("kill", "k")
        .last_exported_sequence_number;
    assert!(at_kill < 2999, "the kill came too late to test anything");
    s.restart_exporter();
    s.store.wait_exported("kill", "k", 2999, WAIT);
    let got = s.kinesis.read_all("k-kill");
    let duplicates = assert_all_delivered(&got, &expected);
    assert!(
        duplicates <= 100,
        "at most the batch in flight repeats: {duplicates}"
    );
    println!("kill -9 at cursor {at_kill}: {duplicates} duplicates");
    // A clean stop commits what was acknowledged and exits 0.
    let status = terminate(&mut s.exporter);
    assert!(status.success(), "{status:?}");
}

#[test]
fn store_restart_is_survived() {
    let mut s = Setup::new(&[], false);
    s.kinesis.create_stream("k-store", 1);
    s.store
        .create(definition("st", vec![export("k", "k-store")]));
    let expected: Vec<Vec<u8>> = (0..200).map(payload).collect();
    for p in &expected[..100] {
        s.store.append("st", p.clone());
    }
    s.store.wait_exported("st", "k", 99, WAIT);
    s.store.restart_store();
    for p in &expected[100..] {
        s.store.append("st", p.clone());
    }
    s.store.wait_exported("st", "k", 199, WAIT);
    let got = s.kinesis.read_all("k-store");
    assert_all_delivered(&got, &expected);
}

#[test]
fn priorities_and_the_bandwidth_cap_over_a_minute() {
    // 96 kbit/s = 12,000 bytes/s shared by two streams with a backlog each,
    // measured as request bytes crossing a counting proxy.
    let moto = Moto::start();
    let link = SlowLink::start(moto.port, 100_000_000);
    let kinesis = KinesisClient::new(&moto.url());
    let store = StoreHarness::start(&[("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", "96")]);
    let mut exporter = store.exporter("export-kinesis", &aws_env(&link.url()));
    let rate = 12_000.0;
    kinesis.create_stream("k-high", 1);
    kinesis.create_stream("k-low", 1);
    let record = |i: usize| {
        let mut p = format!("{i:08}:").into_bytes();
        p.resize(964, b'x');
        p
    };
    let mut low = export("low", "k-low");
    low.common.disabled = Some(true);
    let mut high = export("high", "k-high");
    high.common.priority = Some(1);
    high.common.disabled = Some(true);
    store.create(definition("low", vec![low.clone()]));
    store.create(definition("high", vec![high.clone()]));
    for i in 0..400 {
        store.append("low", record(i));
        store.append("high", record(i));
    }
    low.common.disabled = Some(false);
    high.common.disabled = Some(false);
    store.update(definition("low", vec![low]));
    store.update(definition("high", vec![high]));
    let exported = |stream: &str, id: &str| store.export_status(stream, id).exported_messages;
    // About 1.4 kB on the wire per record (base64 JSON): the high-priority
    // backlog takes ~47 s of the 60 s window. Measure over a 60 s window
    // that starts once both are running.
    std::thread::sleep(Duration::from_secs(3));
    let (t0, b0) = (Instant::now(), link.bytes_up());
    let mut high_done_at = None;
    while t0.elapsed() < Duration::from_secs(60) {
        if high_done_at.is_none() && exported("high", "high") == 400 {
            high_done_at = Some(exported("low", "low"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let b1 = link.bytes_up();
    let secs = t0.elapsed().as_secs_f64();
    let measured = (b1 - b0) as f64 / secs;
    kill9(&mut exporter);
    println!(
        "bandwidth cap {rate} B/s: {measured:.0} B/s of requests crossed the proxy over {secs:.1} s; low-priority messages exported when high finished: {high_done_at:?}"
    );
    assert!(
        (measured - rate).abs() <= rate * 0.10,
        "{measured:.0} B/s on the wire against a cap of {rate} B/s"
    );
    let low_at_high_done =
        high_done_at.expect("the high-priority stream drained within the window");
    assert!(
        low_at_high_done < 60,
        "the low-priority stream got {low_at_high_done} of 400 before the high one finished"
    );
}

#[test]
fn messages_removed_by_the_storage_policy_before_export_are_counted() {
    let s = Setup::new(&[], false);
    s.kinesis.create_stream("k-trim", 1);
    let mut e = export("k", "k-trim");
    e.common.disabled = Some(true);
    let mut def = definition("trim", vec![e.clone()]);
    def.strategy_on_full = Some(StrategyOnFull::OverwriteOldestData);
    def.max_size_bytes = Some(64 * 1024);
    def.segment_size_bytes = Some(4 * 1024);
    s.store.create(def.clone());
    for i in 0..200 {
        let mut p = format!("{i:08}:").into_bytes();
        p.resize(1000, b'-');
        s.store.append("trim", p);
    }
    let oldest = s.store.describe("trim").storage.oldest_sequence_number;
    assert!(oldest > 0, "the stream overwrote its oldest data");
    e.common.disabled = Some(false);
    def.exports.kinesis = vec![e];
    s.store.update(def);
    s.store.wait_exported("trim", "k", 199, WAIT);
    let st = s.store.export_status("trim", "k");
    assert_eq!(st.skipped_messages, oldest, "{st:?}");
    let error = st.error_message.clone().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "{oldest} message(s) from sequence number 0 were removed by the stream's storage policy"
        )),
        "{error}"
    );
    assert_eq!(st.exported_messages, 200 - oldest);
    assert_eq!(s.kinesis.read_all("k-trim").len() as i64, 200 - oldest);
}

#[test]
fn a_stream_deleted_and_created_again_mid_export_is_exported_whole() {
    let s = Setup::new(&[], false);
    s.kinesis.create_stream("k-again", 1);
    s.store
        .create(definition("again", vec![export("k", "k-again")]));
    for i in 0..300 {
        s.store.append("again", payload(i));
    }
    // While the first stream's batches are in flight.
    s.store.call(bus_schema::Request::DeleteStream {
        name: "again".into(),
    });
    s.store
        .create(definition("again", vec![export("k", "k-again")]));
    let expected: Vec<Vec<u8>> = (1000..1500).map(payload).collect();
    for p in &expected {
        s.store.append("again", p.clone());
    }
    s.store.wait_exported("again", "k", 499, WAIT);
    // Everything of the new stream arrived; of the old one, whatever was
    // sent before the delete.
    let got: Vec<Vec<u8>> = s
        .kinesis
        .read_all("k-again")
        .into_iter()
        .filter(|r| index_of(r) >= 1000)
        .collect();
    assert_all_delivered(&got, &expected);
    let st = s.store.export_status("again", "k");
    assert_eq!(st.last_exported_sequence_number, 499);
    // The new stream's counters count its own messages only (a commit of
    // the old stream's task would add to them).
    assert_eq!(st.exported_messages, 500, "{st:?}");
}
