//! `export-s3` end to end against moto (S3), started by the test: files
//! uploaded whole and in parts, read back and compared by SHA-256; key
//! placeholders and metadata; the status stream decoded by the official
//! Python SDK's `StatusMessage` model; failures that let the next task run;
//! kill -9 during a multipart upload; the endpoint down mid-upload.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus_schema::{
    ExportCommon, S3TaskExecutorConfig, StatusConfig, StrategyOnFull, StreamDefinition,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use stream_manager_tests::aws::{aws_env, s3_client, Moto};
use stream_manager_tests::fault_proxy::FaultProxy;
use stream_manager_tests::{kill9, python, StoreHarness};

const WAIT: Duration = Duration::from_secs(90);

struct S3Client {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl S3Client {
    fn new(endpoint: &str) -> Self {
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: s3_client(endpoint),
        }
    }

    fn create_bucket(&self, name: &str) {
        self.rt
            .block_on(self.client.create_bucket().bucket(name).send())
            .unwrap();
    }

    /// (body, metadata, ETag) of an object.
    fn get(&self, bucket: &str, key: &str) -> (Vec<u8>, Vec<(String, String)>, String) {
        self.rt.block_on(async {
            let o = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get s3://{bucket}/{key}: {e:?}"));
            let mut meta: Vec<(String, String)> = o
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            meta.sort();
            let etag = o.e_tag().unwrap_or_default().to_string();
            let body = o.body.collect().await.unwrap().into_bytes().to_vec();
            (body, meta, etag)
        })
    }

    fn keys(&self, bucket: &str) -> Vec<String> {
        self.rt.block_on(async {
            let l = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .unwrap();
            l.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect()
        })
    }

    fn open_uploads(&self, bucket: &str) -> usize {
        self.rt.block_on(async {
            self.client
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .unwrap()
                .uploads()
                .len()
        })
    }
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A file of `len` pseudo-random bytes.
fn file_of(dir: &std::path::Path, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&data)
        .unwrap();
    (path, data)
}

fn task(path: &std::path::Path, bucket: &str, key: &str, meta: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "inputUrl": format!("file://{}", path.display()),
        "bucket": bucket,
        "key": key,
        "userMetadata": meta,
    }))
    .unwrap()
}

fn task_stream(name: &str, status_stream: Option<&str>) -> StreamDefinition {
    let mut d = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
    d.exports.s3_task_executor = vec![S3TaskExecutorConfig {
        common: ExportCommon {
            identifier: "s3".into(),
            ..Default::default()
        },
        size_threshold_for_multipart_upload_bytes: None,
        status_config: status_stream.map(|s| StatusConfig {
            status_level: Some(2),
            status_stream_name: Some(s.into()),
        }),
    }];
    d
}

/// Every message of `stream`, as text (none yet: empty).
fn messages(store: &StoreHarness, stream: &str) -> Vec<String> {
    let read = store.bus.call(
        bus_schema::Request::Read {
            stream: stream.into(),
            start_sequence_number: Some(0),
            min_count: Some(1),
            max_count: Some(1000),
            wait_ms: Some(0),
            max_bytes: None,
            export_identifier: None,
        },
        Duration::from_secs(10),
    );
    match read {
        Ok(bus_schema::Response::Messages(m)) => m
            .into_iter()
            .map(|m| String::from_utf8(m.payload).unwrap())
            .collect(),
        _ => Vec::new(),
    }
}

/// The status messages decoded by the Python SDK's StatusMessage model.
fn decode_with_sdk(payloads: &[String]) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/decode_status.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payloads.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the SDK could not decode the status messages: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until `export-s3` has a multipart upload in progress (its journal
/// exists).
fn wait_for_multipart_journal(store: &StoreHarness) {
    let journal_dir = store.root.path().join("export-s3");
    let start = Instant::now();
    while std::fs::read_dir(&journal_dir)
        .map(|d| d.count() == 0)
        .unwrap_or(true)
    {
        assert!(start.elapsed() < WAIT, "the multipart upload never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Setup {
    exporter: std::process::Child,
    store: StoreHarness,
    s3: S3Client,
    endpoint: String,
    proxy: Option<FaultProxy>,
    _moto: Moto,
    files: tempfile::TempDir,
}

impl Setup {
    fn new(with_proxy: bool) -> Self {
        let moto = Moto::start();
        let proxy = with_proxy.then(|| FaultProxy::start(moto.port));
        let endpoint = proxy.as_ref().map_or(moto.url(), |p| p.url());
        let store = StoreHarness::start(&[]);
        let exporter = store.exporter("export-s3", &aws_env(&endpoint));
        Setup {
            exporter,
            s3: S3Client::new(&moto.url()),
            store,
            endpoint,
            proxy,
            _moto: moto,
            files: tempfile::tempdir().unwrap(),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        kill9(&mut self.exporter);
    }
}

#[test]
fn small_and_multipart_files_with_placeholders_metadata_and_status() {
    let s = Setup::new(false);
    s.s3.create_bucket("bucket-one");
    s.store.create(StreamDefinition::new(
        "status",
        StrategyOnFull::RejectNewData,
    ));
    s.store.create(task_stream("tasks", Some("status")));
    let (small, small_data) = file_of(s.files.path(), "small.bin", 100_000);
    let (big, big_data) = file_of(s.files.path(), "big.bin", 12 * 1024 * 1024);
    s.store.append(
        "tasks",
        task(
            &small,
            "bucket-one",
            "in/!{timestamp:yyyy}/!{timestamp:MM}/small-!{timestamp:ddHH}.bin",
            json!({"site": "plant-7", "line": "3"}),
        ),
    );
    s.store
        .append("tasks", task(&big, "bucket-one", "big.bin", Value::Null));
    s.store.wait_exported("tasks", "s3", 1, WAIT);

    let keys = s.s3.keys("bucket-one");
    let small_key = keys
        .iter()
        .find(|k| k.starts_with("in/"))
        .unwrap_or_else(|| panic!("no small object: {keys:?}"));
    // The placeholders became this month's date (UTC).
    let parts: Vec<&str> = small_key.split('/').collect();
    assert_eq!(parts.len(), 4, "{small_key}");
    assert!(parts[1].len() == 4 && parts[2].len() == 2, "{small_key}");
    assert!(parts[3].starts_with("small-") && parts[3].len() == "small-ddHH.bin".len());
    let (body, meta, _) = s.s3.get("bucket-one", small_key);
    assert_eq!(sha256(&body), sha256(&small_data));
    assert_eq!(
        meta,
        vec![
            ("line".into(), "3".into()),
            ("site".into(), "plant-7".into())
        ]
    );
    let (body, _, etag) = s.s3.get("bucket-one", "big.bin");
    assert_eq!(sha256(&body), sha256(&big_data));
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "3 parts of 5 MiB: {etag}"
    );
    assert_eq!(s.s3.open_uploads("bucket-one"), 0);

    let decoded = decode_with_sdk(&messages(&s.store, "status"));
    let summary: Vec<(String, i64)> = decoded
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_string(),
                d["sequence_number"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("InProgress".into(), 0),
            ("Success".into(), 0),
            ("InProgress".into(), 1),
            ("Success".into(), 1),
        ]
    );
    for d in &decoded {
        assert_eq!(d["event_type"], "S3Task");
        assert_eq!(d["stream"], "tasks");
        assert_eq!(d["export"], "s3");
        assert_eq!(d["bucket"], "bucket-one");
        assert_eq!(d["timestamp_ok"], true);
    }
    let st = s.store.export_status("tasks", "s3");
    assert_eq!((st.exported_messages, st.skipped_messages), (2, 0));
}

#[test]
fn failures_are_reported_and_the_next_task_runs() {
    let s = Setup::new(false);
    s.s3.create_bucket("good-bucket");
    s.store
        .create(StreamDefinition::new("st", StrategyOnFull::RejectNewData));
    s.store.create(task_stream("t", Some("st")));
    let (file, data) = file_of(s.files.path(), "f.bin", 1000);
    let missing = s.files.path().join("missing.bin");
    s.store
        .append("t", task(&file, "no-such-bucket", "k", Value::Null)); // 0
    s.store
        .append("t", task(&missing, "good-bucket", "k", Value::Null)); // 1
    s.store.append("t", b"{\"not\": \"a task\"}".to_vec()); // 2
    s.store
        .append("t", task(s.files.path(), "good-bucket", "dir", Value::Null)); // 3
    s.store
        .append("t", task(&file, "good-bucket", "ok.bin", Value::Null)); // 4
    s.store.wait_exported("t", "s3", 4, WAIT);
    let (body, _, _) = s.s3.get("good-bucket", "ok.bin");
    assert_eq!(body, data);
    assert_eq!(s.s3.keys("good-bucket"), vec!["ok.bin".to_string()]);
    let decoded = decode_with_sdk(&messages(&s.store, "st"));
    let failures: Vec<(i64, String)> = decoded
        .iter()
        .filter(|d| d["status"] == "Failure")
        .map(|d| {
            (
                d["sequence_number"].as_i64().unwrap(),
                d["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(failures.len(), 4, "{decoded:?}");
    assert!(failures[0].1.contains("NoSuchBucket"), "{failures:?}");
    assert!(
        failures[1].1.contains("cannot read the input file"),
        "{failures:?}"
    );
    assert!(
        failures[2].1.contains("inputUrl is missing"),
        "{failures:?}"
    );
    assert!(failures[3].1.contains("not a regular file"), "{failures:?}");
    assert!(decoded
        .iter()
        .any(|d| d["status"] == "Success" && d["sequence_number"] == 4));
    let st = s.store.export_status("t", "s3");
    assert_eq!((st.exported_messages, st.skipped_messages), (1, 4));
}

#[test]
fn kill_9_during_a_multipart_upload_then_it_completes_with_nothing_left_open() {
    let mut s = Setup::new(false);
    s.s3.create_bucket("kill-bucket");
    s.store.create(task_stream("k", None));
    let (big, data) = file_of(s.files.path(), "big.bin", 60 * 1024 * 1024);
    s.store
        .append("k", task(&big, "kill-bucket", "big.bin", Value::Null));
    // Kill once the upload is under way (its journal exists).
    wait_for_multipart_journal(&s.store);
    std::thread::sleep(Duration::from_millis(300));
    kill9(&mut s.exporter);
    assert_eq!(
        s.store
            .export_status("k", "s3")
            .last_exported_sequence_number,
        -1
    );
    s.exporter = s.store.exporter("export-s3", &aws_env(&s.endpoint));
    s.store.wait_exported("k", "s3", 0, WAIT);
    let (body, _, _) = s.s3.get("kill-bucket", "big.bin");
    assert_eq!(sha256(&body), sha256(&data));
    assert_eq!(
        s.s3.open_uploads("kill-bucket"),
        0,
        "an upload was left open"
    );
}

#[test]
fn endpoint_down_mid_upload_then_it_resumes() {
    let s = Setup::new(true);
    s.s3.create_bucket("down-bucket");
    s.store.create(task_stream("d", None));
    let (big, data) = file_of(s.files.path(), "big.bin", 40 * 1024 * 1024);
    s.store
        .append("d", task(&big, "down-bucket", "big.bin", Value::Null));
    wait_for_multipart_journal(&s.store);
    let proxy = s.proxy.as_ref().unwrap();
    proxy.go_down();
    std::thread::sleep(Duration::from_secs(5));
    let st = s.store.export_status("d", "s3");
    assert_eq!(st.last_exported_sequence_number, -1);
    proxy.come_back();
    s.store.wait_exported("d", "s3", 0, WAIT);
    let (body, _, _) = s.s3.get("down-bucket", "big.bin");
    assert_eq!(sha256(&body), sha256(&data));
    assert_eq!(s.s3.open_uploads("down-bucket"), 0);
}

#[test]
fn a_task_in_progress_is_canceled_when_its_stream_is_deleted() {
    let s = Setup::new(true);
    s.s3.create_bucket("cancel-bucket");
    s.store
        .create(StreamDefinition::new("cst", StrategyOnFull::RejectNewData));
    s.store.create(task_stream("c", Some("cst")));
    let (big, _) = file_of(s.files.path(), "big.bin", 30 * 1024 * 1024);
    let proxy = s.proxy.as_ref().unwrap();
    // The endpoint is down: the task starts and cannot finish.
    proxy.go_down();
    s.store
        .append("c", task(&big, "cancel-bucket", "big.bin", Value::Null));
    let start = Instant::now();
    while !messages(&s.store, "cst")
        .iter()
        .any(|m| m.contains("\"status\":2"))
    {
        assert!(start.elapsed() < WAIT, "the task never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = s
        .store
        .call(bus_schema::Request::DeleteStream { name: "c".into() });
    assert_eq!(r, bus_schema::Response::Deleted);
    let start = Instant::now();
    let decoded = loop {
        let decoded = decode_with_sdk(&messages(&s.store, "cst"));
        if decoded.iter().any(|d| d["status"] == "Canceled") {
            break decoded;
        }
        assert!(start.elapsed() < WAIT, "no Canceled status: {decoded:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    proxy.come_back();
    let canceled = decoded.iter().find(|d| d["status"] == "Canceled").unwrap();
    assert_eq!(canceled["sequence_number"], 0);
    assert_eq!(canceled["stream"], "c");
    assert_eq!(canceled["key"], "big.bin");
    assert!(!decoded.iter().any(|d| d["status"] == "Success"));
}

#[test]
fn tasks_removed_by_overwrite_before_their_turn_are_reported_canceled() {
    let s = Setup::new(false);
    s.s3.create_bucket("bucket-gone");
    s.store.create(StreamDefinition::new(
        "gone-status",
        StrategyOnFull::RejectNewData,
    ));
    // A small overwriting stream whose export waits (disabled) while 60
    // tasks arrive: about half are overwritten before they can run.
    let mut d = task_stream("gone", Some("gone-status"));
    d.strategy_on_full = Some(StrategyOnFull::OverwriteOldestData);
    d.max_size_bytes = Some(4096);
    d.segment_size_bytes = Some(1024);
    d.exports.s3_task_executor[0].common.disabled = Some(true);
    s.store.create(d.clone());
    let (file, _) = file_of(s.files.path(), "gone.bin", 1000);
    for i in 0..60 {
        s.store.append(
            "gone",
            task(&file, "bucket-gone", &format!("k{i}"), Value::Null),
        );
    }
    let info = s.store.describe("gone");
    let oldest = info.storage.oldest_sequence_number;
    assert!(oldest > 0, "nothing was overwritten: {info:?}");
    d.exports.s3_task_executor[0].common.disabled = Some(false);
    s.store.update(d);
    s.store.wait_exported("gone", "s3", 59, WAIT);
    // The tasks still held ran; each removed one has a Canceled status.
    assert_eq!(s.s3.keys("bucket-gone").len(), (60 - oldest) as usize);
    let decoded = decode_with_sdk(&messages(&s.store, "gone-status"));
    let canceled: Vec<i64> = decoded
        .iter()
        .filter(|m| m["status"] == "Canceled")
        .map(|m| m["sequence_number"].as_i64().unwrap())
        .collect();
    assert_eq!(canceled, (0..oldest).collect::<Vec<_>>(), "{decoded:#?}");
    assert!(decoded
        .iter()
        .filter(|m| m["status"] == "Canceled")
        .all(|m| m["message"]
            .as_str()
            .unwrap()
            .contains("removed by the stream's storage policy")));
}
