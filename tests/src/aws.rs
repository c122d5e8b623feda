//! Local AWS endpoints for the exporter tests: moto (Kinesis, S3) started from
//! the venv that `scripts/test-all` creates, on 127.0.0.1 and a free port,
//! stopped when dropped; and a blocking Kinesis client to set up and read back.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < within,
            "nothing listens on 127.0.0.1:{port} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A moto server (`moto_server` of the test venv) on 127.0.0.1.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Self {
        let exe = crate::python()
            .parent()
            .expect("venv bin")
            .join("moto_server");
        assert!(
            exe.exists(),
            "{} is missing: run scripts/test-all, which installs moto from tests/python/requirements.txt",
            exe.display()
        );
        let port = free_port();
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let moto = Moto { child, port };
        wait_for_port(port, Duration::from_secs(30));
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment an exporter needs to reach a local endpoint.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("AWS_ENDPOINT_URL".to_string(), endpoint.to_string())])
    .collect()
}

/// A Kinesis SDK client for a local endpoint: us-east-1, test credentials.
pub fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    use aws_sdk_kinesis::config;
    let creds = config::Credentials::new("testing", "testing", None, None, "test");
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(config::BehaviorVersion::latest())
            .region(config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(endpoint)
            .build(),
    )
}

/// An S3 SDK client for a local endpoint: us-east-1, test credentials,
/// path-style addressing.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config;
    let creds = config::Credentials::new("testing", "testing", None, None, "test");
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(config::BehaviorVersion::latest())
            .region(config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(endpoint)
            .force_path_style(true)
            .build(),
    )
}

/// A blocking Kinesis client for tests.
pub struct KinesisClient {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_kinesis::Client,
}

impl KinesisClient {
    pub fn new(endpoint: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Self {
            rt,
            client: kinesis_client(endpoint),
        }
    }

    pub fn create_stream(&self, name: &str, shards: i32) {
        self.rt
            .block_on(
                self.client
                    .create_stream()
                    .stream_name(name)
                    .shard_count(shards)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("create Kinesis stream {name}: {e:?}"));
    }

    /// Every record of `name`, shard by shard, each shard in order.
    pub fn read_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.rt.block_on(async {
            let shards = self
                .client
                .list_shards()
                .stream_name(name)
                .send()
                .await
                .expect("list shards");
            let mut out = Vec::new();
            for shard in shards.shards() {
                let mut iterator = self
                    .client
                    .get_shard_iterator()
                    .stream_name(name)
                    .shard_id(shard.shard_id())
                    .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .expect("shard iterator")
                    .shard_iterator
                    .expect("iterator");
                loop {
                    let r = self
                        .client
                        .get_records()
                        .shard_iterator(&iterator)
                        .limit(10_000)
                        .send()
                        .await
                        .expect("get records");
                    let n = r.records().len();
                    out.extend(r.records().iter().map(|r| r.data().as_ref().to_vec()));
                    match r.next_shard_iterator {
                        Some(next) if n > 0 => iterator = next,
                        _ => break,
                    }
                }
            }
            out
        })
    }
}
