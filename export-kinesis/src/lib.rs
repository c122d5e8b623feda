//! `export-kinesis`: exports streams with a `kinesis` export definition to
//! Kinesis Data Streams with `PutRecords`, on the shared exporter runtime.
//!
//! - Region, credentials and endpoint come from the standard AWS chain
//!   (`AWS_REGION`, `AWS_ACCESS_KEY_ID`…, `AWS_ENDPOINT_URL_KINESIS` or
//!   `AWS_ENDPOINT_URL`).
//! - Batches of at most 500 records and 5 MiB (data plus partition keys); a
//!   record over 1 MiB can never be put and is skipped with a recorded error.
//! - Each record's partition key is a fresh random (version 4) UUID, as the AWS stream
//!   manager does: records spread over all shards, with no order across them.
//! - The SDK's own retries are off: the runtime retries, with its own backoff,
//!   exactly the records that failed, and records every error.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bus_schema::{ExportCommon, Message, StreamDefinition};
use export_runtime::aws::{describe_call_error, watched, ProgressTracking, CALL_DEADLINE};
use export_runtime::{
    base64_len, BatchResult, Destination, Export, Limits, Outcome, REQUEST_HEAD_BYTES,
};

/// `PutRecords` takes at most this many records.
pub const RECORDS_PER_CALL_MAX: usize = 500;
/// … and this many bytes of data and partition keys.
pub const BYTES_PER_CALL_MAX: usize = 5 * 1024 * 1024;
/// One record (data and partition key) is at most 1 MiB.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// A UUID in text form: the partition key of every record.
pub const PARTITION_KEY_BYTES: usize = 36;
/// JSON around one record of a PutRecords request
/// (`{"Data":"","PartitionKey":""},`).
pub const RECORD_JSON_BYTES: usize = 32;

/// The client is made when the first batch goes out: an exporter with no
/// Kinesis export to serve stays small (no TLS stack, no AWS configuration).
struct Kinesis {
    client: tokio::sync::OnceCell<aws_sdk_kinesis::Client>,
}

impl Destination for Kinesis {
    type Target = String;

    fn kind(&self) -> bus_schema::ExportKind {
        bus_schema::ExportKind::Kinesis
    }

    fn exports(&self, def: &StreamDefinition) -> Vec<(ExportCommon, String)> {
        def.exports
            .kinesis
            .iter()
            .map(|k| (k.common.clone(), k.kinesis_stream_name.clone()))
            .collect()
    }

    fn limits(&self) -> Limits {
        Limits {
            records_per_call: RECORDS_PER_CALL_MAX,
            bytes_per_call: BYTES_PER_CALL_MAX,
            record_bytes_max: RECORD_BYTES_MAX,
        }
    }

    fn record_size(&self, payload: &[u8]) -> usize {
        payload.len() + PARTITION_KEY_BYTES
    }

    /// PutRecords is JSON: each record's data in base64, with its partition
    /// key and the field names around them.
    fn wire_bytes(&self, records: &[Message]) -> usize {
        records
            .iter()
            .map(|m| base64_len(m.payload.len()) + PARTITION_KEY_BYTES + RECORD_JSON_BYTES)
            .sum::<usize>()
            + REQUEST_HEAD_BYTES
    }

    async fn send(&self, export: &Export<String>, records: &[Message]) -> BatchResult {
        let entries = records
            .iter()
            .map(|m| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(m.payload.clone()))
                    .partition_key(
                        uuid::Builder::from_random_bytes(rand::random())
                            .into_uuid()
                            .to_string(),
                    )
                    .build()
                    .expect("data and partition key are set")
            })
            .collect();
        let client = self.client.get_or_init(client).await;
        let call = client
            .put_records()
            .stream_name(&export.target)
            .set_records(Some(entries))
            .send();
        let what = format!("PutRecords to {:?}", export.target);
        let call = match watched(call, Some(CALL_DEADLINE)).await {
            Ok(call) => call,
            Err(w) => return w.batch_result(&what),
        };
        match call {
            Ok(out) => BatchResult::PerRecord(
                out.records()
                    .iter()
                    .map(|r| match r.error_code() {
                        None => Outcome::Delivered,
                        // Every per-record code (throughput exceeded, internal
                        // failure, KMS throttling or access) may pass later.
                        Some(code) => Outcome::Retry(format!(
                            "{code}: {}",
                            r.error_message().unwrap_or("no message")
                        )),
                    })
                    .collect(),
            ),
            // Whole-call failures (throttling, 5xx, timeouts, connection
            // loss, a missing stream, bad credentials or stream name) never
            // drop data: the records wait until the cause is gone.
            Err(e) => BatchResult::RetryAll(describe_call_error(&what, &e)),
        }
    }
}

async fn client() -> aws_sdk_kinesis::Client {
    let shared = export_runtime::aws::sdk_config().await;
    let config = aws_sdk_kinesis::config::Builder::from(&shared)
        .interceptor(ProgressTracking)
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// The process: what the `export-kinesis` binary runs (and the bundle, under that name).
pub fn main() -> std::process::ExitCode {
    export_runtime::run_process("export-kinesis", |_| async {
        Ok(Kinesis {
            client: tokio::sync::OnceCell::new(),
        })
    })
}
