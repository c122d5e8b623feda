//! `export-sitewise`: exports streams with an `IotSitewise` export definition
//! to AWS IoT SiteWise with `BatchPutAssetPropertyValue`, on the shared
//! exporter runtime.
//!
//! - Each message is a JSON `PutAssetPropertyValueEntry` (wire-protocol spec
//!   §9), as the SDK helpers write it (Python: spaced, Java: compact), parsed
//!   generically; addressed by `assetId` + `propertyId` or by
//!   `propertyAlias`.
//! - At most 10 entries per call (and at most `batchSize`). The exporter gives
//!   every entry its own `entryId` for the call (the message's sequence
//!   number), so applications may reuse entry ids freely.
//! - A message that is not a valid entry can never be sent: it is skipped
//!   and recorded. Per-entry errors: throttling, unavailability, internal
//!   failure, limits and access denied are re-sent; `ResourceNotFound`,
//!   `InvalidRequest`, `TimestampOutOfRange` and `ConflictingOperation` (a
//!   value already at that property and time) can never pass and are skipped
//!   and recorded. A whole call refused as invalid is retried entry by entry,
//!   so one bad entry cannot block the others.
//! - With a local endpoint (`AWS_ENDPOINT_URL_IOTSITEWISE`), the SDK's
//!   `data.` host prefix is removed so the call reaches it.

mod entry;

use aws_sdk_iotsitewise::error::ProvideErrorMetadata;
use aws_sdk_iotsitewise::types::PutAssetPropertyValueEntry;
use bus_schema::{ExportCommon, Message, StreamDefinition};
use export_runtime::aws::{
    describe_call_error, is_permanent_entry_code, watched, LocalEndpointHostPrefix,
    ProgressTracking, CALL_DEADLINE,
};
use export_runtime::{send_parsed, BatchResult, Call, Destination, Export, Limits, Outcome};

/// `BatchPutAssetPropertyValue` takes at most this many entries.
pub const ENTRIES_PER_CALL_MAX: usize = 10;
/// Largest message taken as an entry (10 values of at most 1,024-character
/// strings and their JSON fit in far less).
pub const ENTRY_JSON_BYTES_MAX: usize = 256 * 1024;

struct SiteWise {
    client: tokio::sync::OnceCell<aws_sdk_iotsitewise::Client>,
}

impl SiteWise {
    async fn client(&self) -> &aws_sdk_iotsitewise::Client {
        self.client
            .get_or_init(|| async {
                let shared = export_runtime::aws::sdk_config().await;
                let config = aws_sdk_iotsitewise::config::Builder::from(&shared)
                    .interceptor(LocalEndpointHostPrefix)
                    .interceptor(ProgressTracking)
                    .build();
                aws_sdk_iotsitewise::Client::from_conf(config)
            })
            .await
    }

    async fn call(&self, entries: Vec<PutAssetPropertyValueEntry>) -> Call {
        if entries.is_empty() {
            return Call::Answered(Vec::new());
        }
        let ids: Vec<String> = entries.iter().map(|e| e.entry_id().to_string()).collect();
        let r = self
            .client()
            .await
            .batch_put_asset_property_value()
            .set_entries(Some(entries))
            .send();
        let what = "BatchPutAssetPropertyValue";
        let r = match watched(r, Some(CALL_DEADLINE)).await {
            Ok(r) => r,
            Err(w) => return w.call_result(what),
        };
        match r {
            Ok(out) => Call::Answered(
                ids.iter()
                    .map(|id| {
                        entry_outcome(out.error_entries().iter().find(|e| e.entry_id() == id).map(
                            |e| {
                                e.errors()
                                    .iter()
                                    .map(|x| {
                                        (
                                            x.error_code().as_str().to_string(),
                                            format!(
                                                "{} ({} value(s))",
                                                x.error_message(),
                                                x.timestamps().len()
                                            ),
                                        )
                                    })
                                    .collect()
                            },
                        ))
                    })
                    .collect(),
            ),
            Err(e) if e.code() == Some("InvalidRequestException") => {
                Call::Invalid(describe_call_error("BatchPutAssetPropertyValue", &e))
            }
            Err(e) => Call::Failed(describe_call_error("BatchPutAssetPropertyValue", &e)),
        }
    }
}

/// What the errors of one entry mean for its message.
fn entry_outcome(errors: Option<Vec<(String, String)>>) -> Outcome {
    let Some(errors) = errors else {
        return Outcome::Delivered;
    };
    let text = errors
        .iter()
        .map(|(code, msg)| format!("{code}: {msg}"))
        .collect::<Vec<_>>()
        .join("; ");
    if errors.iter().all(|(code, _)| is_permanent_entry_code(code)) {
        Outcome::Reject(text)
    } else {
        Outcome::Retry(text)
    }
}

impl Destination for SiteWise {
    type Target = ();

    fn kind(&self) -> bus_schema::ExportKind {
        bus_schema::ExportKind::IotSiteWise
    }

    fn exports(&self, def: &StreamDefinition) -> Vec<(ExportCommon, ())> {
        def.exports
            .iot_sitewise
            .iter()
            .map(|c| (c.common.clone(), ()))
            .collect()
    }

    fn limits(&self) -> Limits {
        Limits {
            records_per_call: ENTRIES_PER_CALL_MAX,
            bytes_per_call: ENTRIES_PER_CALL_MAX * ENTRY_JSON_BYTES_MAX,
            record_bytes_max: ENTRY_JSON_BYTES_MAX,
        }
    }

    async fn send(&self, _export: &Export<()>, records: &[Message]) -> BatchResult {
        let parsed = records
            .iter()
            .map(|m| entry::parse(&m.payload, &m.sequence_number.to_string()))
            .collect();
        send_parsed(parsed, |entries| self.call(entries)).await
    }
}

/// The process: what the `export-sitewise` binary runs (and the bundle, under that name).
pub fn main() -> std::process::ExitCode {
    export_runtime::run_process("export-sitewise", |_| async {
        Ok(SiteWise {
            client: tokio::sync::OnceCell::new(),
        })
    })
}
