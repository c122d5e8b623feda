//! `export-s3`: runs the S3 export tasks of streams with an
//! `s3TaskExecutor` export definition, on the shared exporter runtime.
//!
//! - Each message is a JSON `S3ExportTaskDefinition`; tasks of one export
//!   run one at a time, in append order. A task is done (the cursor moves)
//!   when its upload completed, or failed for good.
//! - `file://` input URLs only, opened read-only and streamed: `PutObject`
//!   up to `sizeThresholdForMultipartUploadBytes` (default 5 MiB), multipart
//!   above it, with parts of `STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES`
//!   (default and minimum 5 MiB; larger when the file needs more than
//!   10,000 parts), one part in memory at a time.
//! - A multipart upload in progress is written to a journal under the store
//!   root (`export-s3/`), so after a kill or an outage it is resumed where it
//!   stopped (the parts S3 lists are kept) or, when its parts cannot be
//!   listed, aborted and started again; an upload of an earlier task left
//!   behind is aborted.
//! - `!{timestamp:<pattern>}` placeholders in the key are resolved when the
//!   task starts (UTC); `userMetadata` is sent as object metadata.
//! - With `statusConfig`, `StatusMessage` JSON goes to `statusStreamName`,
//!   filtered by `statusLevel`: InProgress when a task starts, Success,
//!   Failure with the reason, Warning when an attempt failed and is retried,
//!   Canceled when the export or its stream is deleted during a task.
//! - Under `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`, every part (or small
//!   file) is paid for in the exporters' shared budget, at the export's
//!   priority; the pool size bounds concurrent tasks across exports.
//! - Failure (the next task runs): invalid task JSON or bucket name, a
//!   missing, unreadable or non-regular input file, a missing bucket, access
//!   denied. Throttling, 5xx, timeouts and connection loss are retried
//!   forever by the runtime.

mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bus_schema::{ExportCommon, Message, S3TaskExecutorConfig, StreamDefinition};
use export_runtime::aws::{describe_call_error, watched, ProgressTracking};
use export_runtime::store::Store;
use export_runtime::{
    BatchResult, Destination, Export, ExporterConfig, Limits, Outcome, REQUEST_HEAD_BYTES,
};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// Default `sizeThresholdForMultipartUploadBytes`, and the smallest part.
pub const MULTIPART_BYTES_MIN: u64 = 5 * 1024 * 1024;
/// Tasks removed before their turn that get a status message each; the rest
/// of one gap share one message.
pub const REMOVED_TASKS_REPORTED_MAX: i64 = 100;
/// S3 takes at most this many parts per upload.
pub const PARTS_MAX: u64 = 10_000;
/// Largest task message (a JSON task definition).
pub const TASK_JSON_BYTES_MAX: usize = 64 * 1024;

/// `StatusMessage.status` values (spec §9).
mod status {
    pub const SUCCESS: i64 = 0;
    pub const FAILURE: i64 = 1;
    pub const IN_PROGRESS: i64 = 2;
    pub const WARNING: i64 = 3;
    pub const CANCELED: i64 = 4;
}
/// `statusLevel` values: a message goes out when its level is at most the
/// configured one.
mod level {
    pub const ERROR: i64 = 0;
    pub const WARN: i64 = 1;
    pub const INFO: i64 = 2;
}

#[derive(Debug, Clone, PartialEq)]
struct Target {
    threshold: u64,
    /// (statusLevel, statusStreamName)
    status: Option<(i64, String)>,
}

struct S3 {
    client: tokio::sync::OnceCell<aws_sdk_s3::Client>,
    store: Store,
    journal_dir: PathBuf,
    part_bytes: u64,
    /// The shared upload budget is in force (`STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`).
    capped: bool,
    /// Per export, the task in progress whose InProgress status went out
    /// (so a retried task does not announce itself again, and a deleted
    /// export can report it Canceled).
    announced: Mutex<HashMap<(String, String), (i64, Value)>>,
}

/// A multipart upload in progress, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Journal {
    sequence_number: i64,
    bucket: String,
    key: String,
    upload_id: String,
}

/// Why a task attempt did not complete.
enum Failed {
    /// Can never succeed as given: Failure status, the next task runs.
    Permanent(String),
    /// May pass later: Warning status, retried.
    Retry(String),
}

fn s3_failure<E: ProvideErrorMetadata + std::error::Error>(what: &str, e: &E) -> Failed {
    let why = describe_call_error(what, e);
    match e.code() {
        Some(
            "NoSuchBucket" | "AccessDenied" | "InvalidBucketName" | "AllAccessDisabled"
            | "InvalidAccessKeyId" | "KeyTooLongError" | "MetadataTooLarge" | "EntityTooLarge",
        ) => Failed::Permanent(why),
        _ => Failed::Retry(why),
    }
}

impl S3 {
    async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                let shared = export_runtime::aws::sdk_config().await;
                let local = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                    .iter()
                    .any(|v| std::env::var_os(v).is_some());
                let config = aws_sdk_s3::config::Builder::from(&shared)
                    // A local endpoint has no bucket host names.
                    .force_path_style(local)
                    .interceptor(ProgressTracking)
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .await
    }

    fn journal_path(&self, export: &Export<Target>) -> PathBuf {
        let id = export_runtime::stable_hash(
            format!("{}\n{}", export.stream, export.identifier).as_bytes(),
        );
        self.journal_dir.join(format!("{id:016x}.json"))
    }

    fn read_journal(&self, export: &Export<Target>) -> Option<Journal> {
        let text = std::fs::read(self.journal_path(export)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write_journal(&self, export: &Export<Target>, j: &Journal) -> Result<(), String> {
        std::fs::create_dir_all(&self.journal_dir)
            .and_then(|()| {
                let tmp = self.journal_path(export).with_extension("tmp");
                std::fs::write(&tmp, serde_json::to_vec(j).unwrap_or_default())?;
                std::fs::rename(tmp, self.journal_path(export))
            })
            .map_err(|e| format!("cannot write the upload journal: {e}"))
    }

    fn clear_journal(&self, export: &Export<Target>) {
        let _ = std::fs::remove_file(self.journal_path(export));
    }

    /// Waits until the exporters' shared upload budget allows `bytes` more
    /// (each part, or each whole small file, is one request).
    async fn budget(&self, export: &Export<Target>, bytes: u64) -> Result<(), Failed> {
        if !self.capped {
            return Ok(());
        }
        self.store
            .wait_for_bandwidth(bytes as usize, export.priority())
            .await
            .map_err(|e| Failed::Retry(format!("cannot get bandwidth: {e}")))
    }

    /// Appends a status message if the export wants this level.
    async fn report(
        &self,
        export: &Export<Target>,
        seq: i64,
        definition: &Value,
        (status, lvl): (i64, i64),
        message: &str,
    ) {
        let Some((wanted, stream)) = &export.target.status else {
            return;
        };
        if lvl > *wanted {
            return;
        }
        let mut context = json!({
            "exportIdentifier": export.identifier,
            "streamName": export.stream,
            "sequenceNumber": seq,
        });
        // Absent rather than null when there is none (a task that is not
        // JSON, or one removed before it ran): the SDKs' model cannot read
        // a null task definition.
        if !definition.is_null() {
            context["s3ExportTaskDefinition"] = definition.clone();
        }
        let body = json!({
            "eventType": 0,
            "statusLevel": lvl,
            "status": status,
            "statusContext": context,
            "message": message,
            "timestampEpochMs": export_runtime::unix_ms(),
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        if let Err(e) = self.store.append(stream, bytes).await {
            tracing::warn!(status_stream = %stream, error = %e, "cannot append a status message");
        }
    }

    /// One attempt at a task.
    async fn run_task(
        &self,
        export: &Export<Target>,
        seq: i64,
        t: &task::Task,
    ) -> Result<String, Failed> {
        let meta = std::fs::metadata(&t.path).map_err(|e| {
            Failed::Permanent(format!(
                "cannot read the input file {}: {e}",
                t.path.display()
            ))
        })?;
        if !meta.is_file() {
            return Err(Failed::Permanent(format!(
                "the input {} is not a regular file",
                t.path.display()
            )));
        }
        let size = meta.len();
        let file = tokio::fs::File::open(&t.path).await.map_err(|e| {
            Failed::Permanent(format!(
                "cannot open the input file {}: {e}",
                t.path.display()
            ))
        })?;
        // A multipart upload of this task left by an earlier attempt keeps
        // its key; one of another task is aborted.
        let journal = self.read_journal(export);
        let key = match &journal {
            Some(j) if j.sequence_number == seq => j.key.clone(),
            _ => task::resolve_key(&t.key_pattern, export_runtime::unix_ms() as i64)
                .map_err(Failed::Permanent)?,
        };
        if let Some(j) = journal.as_ref().filter(|j| j.sequence_number != seq) {
            self.abort(j).await;
            self.clear_journal(export);
        }
        let client = self.client().await;
        if size <= export.target.threshold {
            self.budget(export, size + REQUEST_HEAD_BYTES as u64)
                .await?;
            let body = ByteStream::read_from()
                .path(&t.path)
                .build()
                .await
                .map_err(|e| Failed::Retry(format!("cannot stream {}: {e}", t.path.display())))?;
            let call = client
                .put_object()
                .bucket(&t.bucket)
                .key(&key)
                .set_metadata(Some(t.metadata.clone().into_iter().collect()))
                .content_length(size as i64)
                .body(body)
                .send();
            watched(call, None)
                .await
                .map_err(|w| Failed::Retry(w.describe("PutObject")))?
                .map_err(|e| s3_failure("PutObject", &e))?;
            return Ok(format!("uploaded {size} bytes to s3://{}/{key}", t.bucket));
        }
        self.multipart(
            export,
            seq,
            t,
            &key,
            size,
            file,
            journal.filter(|j| j.sequence_number == seq),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn multipart(
        &self,
        export: &Export<Target>,
        seq: i64,
        t: &task::Task,
        key: &str,
        size: u64,
        mut file: tokio::fs::File,
        resume: Option<Journal>,
    ) -> Result<String, Failed> {
        let client = self.client().await;
        let part_bytes = self.part_bytes.max(size.div_ceil(PARTS_MAX));
        let parts = size.div_ceil(part_bytes);
        // Parts S3 already has (a resumed upload).
        let mut done: HashMap<i32, String> = HashMap::new();
        let upload_id = match resume {
            Some(j) => {
                match client
                    .list_parts()
                    .bucket(&j.bucket)
                    .key(&j.key)
                    .upload_id(&j.upload_id)
                    .send()
                    .await
                {
                    Ok(listed) => {
                        for p in listed.parts() {
                            if let (Some(n), Some(etag)) = (p.part_number(), p.e_tag()) {
                                let expected = (1..=parts as i32)
                                    .contains(&n)
                                    .then(|| part_bytes.min(size - (n as u64 - 1) * part_bytes));
                                if expected.is_some() && p.size() == expected.map(|b| b as i64) {
                                    done.insert(n, etag.to_string());
                                }
                            }
                        }
                        tracing::info!(key = %key, parts = done.len(), "resuming a multipart upload");
                        Some(j.upload_id)
                    }
                    // The endpoint is unreachable: try again later.
                    Err(
                        e @ (aws_sdk_s3::error::SdkError::DispatchFailure(_)
                        | aws_sdk_s3::error::SdkError::TimeoutError(_)),
                    ) => return Err(s3_failure("ListParts", &e)),
                    // The upload is gone, or its parts cannot be listed (moto
                    // answers ListParts in a shape the SDK cannot read): abort
                    // it and start again.
                    Err(e) => {
                        tracing::info!(key = %key, error = %describe_call_error("ListParts", &e), "cannot resume a multipart upload; starting it again");
                        self.abort(&j).await;
                        self.clear_journal(export);
                        None
                    }
                }
            }
            None => None,
        };
        let upload_id = match upload_id {
            Some(id) => id,
            None => {
                let call = client
                    .create_multipart_upload()
                    .bucket(&t.bucket)
                    .key(key)
                    .set_metadata(Some(t.metadata.clone().into_iter().collect()))
                    .send();
                let created = watched(call, None)
                    .await
                    .map_err(|w| Failed::Retry(w.describe("CreateMultipartUpload")))?
                    .map_err(|e| s3_failure("CreateMultipartUpload", &e))?;
                let id = created.upload_id().unwrap_or_default().to_string();
                self.write_journal(
                    export,
                    &Journal {
                        sequence_number: seq,
                        bucket: t.bucket.clone(),
                        key: key.to_string(),
                        upload_id: id.clone(),
                    },
                )
                .map_err(Failed::Retry)?;
                id
            }
        };
        let mut completed = Vec::with_capacity(parts as usize);
        for n in 1..=parts as i32 {
            let len = part_bytes.min(size - (n as u64 - 1) * part_bytes) as usize;
            if let Some(etag) = done.get(&n) {
                completed.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
                continue;
            }
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start((n as u64 - 1) * part_bytes))
                .await
                .map_err(|e| Failed::Retry(format!("cannot read {}: {e}", t.path.display())))?;
            self.budget(export, (len + REQUEST_HEAD_BYTES) as u64)
                .await?;
            // One part in memory at a time, handed to the SDK without a copy.
            let mut part = vec![0u8; len];
            file.read_exact(&mut part)
                .await
                .map_err(|e| Failed::Permanent(format!("cannot read {}: {e}", t.path.display())))?;
            let call = client
                .upload_part()
                .bucket(&t.bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(n)
                .content_length(len as i64)
                .body(ByteStream::from(part))
                .send();
            let part = watched(call, None)
                .await
                .map_err(|w| Failed::Retry(w.describe("UploadPart")))?
                .map_err(|e| s3_failure("UploadPart", &e))?;
            completed.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
        }
        let call = client
            .complete_multipart_upload()
            .bucket(&t.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send();
        watched(call, None)
            .await
            .map_err(|w| Failed::Retry(w.describe("CompleteMultipartUpload")))?
            .map_err(|e| s3_failure("CompleteMultipartUpload", &e))?;
        self.clear_journal(export);
        Ok(format!(
            "uploaded {size} bytes to s3://{}/{key} in {parts} parts",
            t.bucket
        ))
    }

    /// Aborts the multipart upload of task `seq`, if one is in progress.
    async fn abort_task_upload(&self, export: &Export<Target>, seq: i64) {
        if let Some(j) = self
            .read_journal(export)
            .filter(|j| j.sequence_number == seq)
        {
            self.abort(&j).await;
            self.clear_journal(export);
        }
    }

    async fn abort(&self, j: &Journal) {
        let r = self
            .client()
            .await
            .abort_multipart_upload()
            .bucket(&j.bucket)
            .key(&j.key)
            .upload_id(&j.upload_id)
            .send()
            .await;
        match r {
            Ok(_) => tracing::info!(key = %j.key, "aborted a multipart upload left behind"),
            Err(e) => {
                tracing::warn!(key = %j.key, error = %describe_call_error("AbortMultipartUpload", &e), "cannot abort a multipart upload left behind")
            }
        }
    }
}

impl Destination for S3 {
    type Target = Target;

    fn kind(&self) -> bus_schema::ExportKind {
        bus_schema::ExportKind::S3TaskExecutor
    }

    fn exports(&self, def: &StreamDefinition) -> Vec<(ExportCommon, Target)> {
        def.exports
            .s3_task_executor
            .iter()
            .map(|c: &S3TaskExecutorConfig| {
                let status = c.status_config.as_ref().and_then(|s| {
                    s.status_stream_name
                        .clone()
                        .map(|n| (s.status_level.unwrap_or(level::INFO), n))
                });
                (
                    c.common.clone(),
                    Target {
                        threshold: c
                            .size_threshold_for_multipart_upload_bytes
                            .map_or(MULTIPART_BYTES_MIN, |v| v.max(0) as u64),
                        status,
                    },
                )
            })
            .collect()
    }

    fn limits(&self) -> Limits {
        Limits {
            records_per_call: 1,
            bytes_per_call: TASK_JSON_BYTES_MAX,
            record_bytes_max: TASK_JSON_BYTES_MAX,
        }
    }

    /// A task in progress when its export (or stream) was deleted: its
    /// multipart upload is aborted and it is reported Canceled.
    async fn cancelled(&self, export: &Export<Target>) {
        let key = (export.stream.clone(), export.identifier.clone());
        let Some((seq, definition)) = self.announced.lock().ok().and_then(|mut a| a.remove(&key))
        else {
            return;
        };
        self.abort_task_upload(export, seq).await;
        self.report(
            export,
            seq,
            &definition,
            (status::CANCELED, level::INFO),
            "the export or its stream was deleted",
        )
        .await;
    }

    /// Tasks removed by the stream's storage policy before their turn never
    /// run: each gets a Canceled status saying so (their definitions are
    /// gone with them), up to [`REMOVED_TASKS_REPORTED_MAX`] per gap, then
    /// one message for the rest.
    async fn removed(&self, export: &Export<Target>, first: i64, count: i64) {
        let why =
            "the task was removed by the stream's storage policy (overwrite or TTL) before it ran";
        let shown = count.min(REMOVED_TASKS_REPORTED_MAX);
        for seq in first..first + shown {
            self.report(
                export,
                seq,
                &Value::Null,
                (status::CANCELED, level::WARN),
                why,
            )
            .await;
        }
        if count > shown {
            self.report(
                export,
                first + shown,
                &Value::Null,
                (status::CANCELED, level::WARN),
                &format!(
                    "{} more tasks, sequence numbers {} to {}: {why}",
                    count - shown,
                    first + shown,
                    first + count - 1
                ),
            )
            .await;
        }
    }

    async fn send(&self, export: &Export<Target>, records: &[Message]) -> BatchResult {
        let m = &records[0];
        let seq = m.sequence_number;
        let t = match task::parse(&m.payload) {
            Ok(t) => t,
            Err(why) => {
                let definition = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                self.report(
                    export,
                    seq,
                    &definition,
                    (status::FAILURE, level::ERROR),
                    &why,
                )
                .await;
                return BatchResult::PerRecord(vec![Outcome::Reject(why)]);
            }
        };
        let key = (export.stream.clone(), export.identifier.clone());
        let first_attempt = self
            .announced
            .lock()
            .map(|mut a| {
                a.insert(key.clone(), (seq, t.definition.clone()))
                    .map(|(s, _)| s)
                    != Some(seq)
            })
            .unwrap_or(true);
        if first_attempt {
            self.report(
                export,
                seq,
                &t.definition,
                (status::IN_PROGRESS, level::INFO),
                "upload started",
            )
            .await;
        }
        let result = self.run_task(export, seq, &t).await;
        if !matches!(result, Err(Failed::Retry(_))) {
            if let Ok(mut a) = self.announced.lock() {
                a.remove(&key);
            }
        }
        match result {
            Ok(done) => {
                self.report(
                    export,
                    seq,
                    &t.definition,
                    (status::SUCCESS, level::INFO),
                    &done,
                )
                .await;
                BatchResult::PerRecord(vec![Outcome::Delivered])
            }
            Err(Failed::Permanent(why)) => {
                self.abort_task_upload(export, seq).await;
                self.report(
                    export,
                    seq,
                    &t.definition,
                    (status::FAILURE, level::ERROR),
                    &why,
                )
                .await;
                BatchResult::PerRecord(vec![Outcome::Reject(why)])
            }
            Err(Failed::Retry(why)) => {
                self.report(
                    export,
                    seq,
                    &t.definition,
                    (status::WARNING, level::WARN),
                    &why,
                )
                .await;
                BatchResult::RetryAll(why)
            }
        }
    }
}

/// The process: what the `export-s3` binary runs (and the bundle, under that name).
pub fn main() -> std::process::ExitCode {
    export_runtime::run_process("export-s3", |config: ExporterConfig| async move {
        let part_bytes = config.s3_part_bytes;
        let store = Store::connect(&config.root).map_err(|e| e.to_string())?;
        Ok(S3 {
            client: tokio::sync::OnceCell::new(),
            store,
            journal_dir: config.root.join("export-s3"),
            part_bytes,
            capped: config.bandwidth.is_some(),
            announced: Mutex::new(HashMap::new()),
        })
    })
}
