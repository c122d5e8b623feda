//! `export-analytics`: exports streams with an `iotAnalytics` export
//! definition to an AWS IoT Analytics channel with `BatchPutMessage`, on the
//! shared exporter runtime. (AWS IoT Analytics reached end of support on
//! 15 December 2025; `aws-sdk-iotanalytics` is frozen at 1.94. Existing
//! stream definitions still name it.)
//!
//! - At most 100 messages per call (and at most `batchSize`), to `iotChannel`.
//! - Message ids: `iotMsgIdPrefix` followed by a suffix made of the stream
//!   (a stable 64-bit FNV-1a hash of its name) and the sequence number, so
//!   ids are unique per stream and message, and a message sent again after a
//!   crash carries the same id.
//! - A payload over 128 KiB can never be put and is skipped. Per-message
//!   errors: throttling, unavailability, internal failure, limits and access
//!   denied are re-sent; others (`InvalidRequestException`) are skipped and
//!   recorded. A whole call refused as invalid is retried message by message.
//!   A missing channel, bad credentials and outages are retried forever.

use aws_sdk_iotanalytics::primitives::Blob;
use aws_sdk_iotanalytics::types::Message as ChannelMessage;
use bus_schema::{ExportCommon, Message, StreamDefinition};
use export_runtime::aws::{
    describe_call_error, is_permanent_entry_code, watched, ProgressTracking, CALL_DEADLINE,
};
use export_runtime::{
    base64_len, send_parsed, BatchResult, Call, Destination, Export, Limits, Outcome,
    REQUEST_HEAD_BYTES,
};

/// JSON around one message of a BatchPutMessage request, its message id
/// included (`{"messageId":"<prefix + 16 hex>","payload":""},`).
const MESSAGE_JSON_BYTES: usize = 64;

/// `BatchPutMessage` takes at most this many messages.
pub const MESSAGES_PER_CALL_MAX: usize = 100;
/// Largest payload of one message.
pub const PAYLOAD_BYTES_MAX: usize = 128 * 1024;

#[derive(Debug, Clone, PartialEq)]
struct Channel {
    name: String,
    id_prefix: String,
}

struct Analytics {
    client: tokio::sync::OnceCell<aws_sdk_iotanalytics::Client>,
}

/// The id of message `sequence_number` of `stream` (at most 32 + 36
/// characters).
fn message_id(prefix: &str, stream: &str, sequence_number: i64) -> String {
    format!(
        "{prefix}{:016x}_{sequence_number}",
        export_runtime::stable_hash(stream.as_bytes())
    )
}

impl Analytics {
    async fn call(&self, channel: &str, messages: Vec<ChannelMessage>) -> Call {
        let client = self
            .client
            .get_or_init(|| async {
                let shared = export_runtime::aws::sdk_config().await;
                let config = aws_sdk_iotanalytics::config::Builder::from(&shared)
                    .interceptor(ProgressTracking)
                    .build();
                aws_sdk_iotanalytics::Client::from_conf(config)
            })
            .await;
        let ids: Vec<String> = messages
            .iter()
            .map(|m| m.message_id().to_string())
            .collect();
        let r = client
            .batch_put_message()
            .channel_name(channel)
            .set_messages(Some(messages))
            .send();
        let what = format!("BatchPutMessage to {channel:?}");
        let r = match watched(r, Some(CALL_DEADLINE)).await {
            Ok(r) => r,
            Err(w) => return w.call_result(&what),
        };
        match r {
            Ok(out) => Call::Answered(
                ids.iter()
                    .map(|id| {
                        let failed = out
                            .batch_put_message_error_entries()
                            .iter()
                            .find(|e| e.message_id() == Some(id.as_str()));
                        match failed {
                            None => Outcome::Delivered,
                            Some(e) => {
                                let code = e.error_code().unwrap_or("UnknownError");
                                let why = format!(
                                    "{code}: {}",
                                    e.error_message().unwrap_or("no message")
                                );
                                if is_permanent_entry_code(code) {
                                    Outcome::Reject(why)
                                } else {
                                    Outcome::Retry(why)
                                }
                            }
                        }
                    })
                    .collect(),
            ),
            Err(e) => {
                let why = describe_call_error(&what, &e);
                if aws_sdk_iotanalytics::error::ProvideErrorMetadata::code(&e)
                    == Some("InvalidRequestException")
                {
                    Call::Invalid(why)
                } else {
                    Call::Failed(why)
                }
            }
        }
    }
}

impl Destination for Analytics {
    type Target = Channel;

    fn kind(&self) -> bus_schema::ExportKind {
        bus_schema::ExportKind::IotAnalytics
    }

    /// BatchPutMessage is JSON: each payload in base64 with its message id
    /// and the field names around them.
    fn wire_bytes(&self, records: &[Message]) -> usize {
        records
            .iter()
            .map(|m| base64_len(m.payload.len()) + MESSAGE_JSON_BYTES)
            .sum::<usize>()
            + REQUEST_HEAD_BYTES
    }

    fn exports(&self, def: &StreamDefinition) -> Vec<(ExportCommon, Channel)> {
        def.exports
            .iot_analytics
            .iter()
            .map(|c| {
                (
                    c.common.clone(),
                    Channel {
                        name: c.iot_channel.clone(),
                        id_prefix: c.iot_msg_id_prefix.clone().unwrap_or_default(),
                    },
                )
            })
            .collect()
    }

    fn limits(&self) -> Limits {
        Limits {
            records_per_call: MESSAGES_PER_CALL_MAX,
            bytes_per_call: 5 * 1024 * 1024,
            record_bytes_max: PAYLOAD_BYTES_MAX,
        }
    }

    async fn send(&self, export: &Export<Channel>, records: &[Message]) -> BatchResult {
        let parsed = records
            .iter()
            .map(|m| {
                ChannelMessage::builder()
                    .message_id(message_id(
                        &export.target.id_prefix,
                        &export.stream,
                        m.sequence_number,
                    ))
                    .payload(Blob::new(m.payload.clone()))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect();
        send_parsed(parsed, |messages| self.call(&export.target.name, messages)).await
    }
}

/// The process: what the `export-analytics` binary runs (and the bundle, under that name).
pub fn main() -> std::process::ExitCode {
    export_runtime::run_process("export-analytics", |_| async {
        Ok(Analytics {
            client: tokio::sync::OnceCell::new(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_unique_and_short_enough() {
        let a = message_id("plant-7-", "stream", 42);
        assert_eq!(
            a,
            message_id("plant-7-", "stream", 42),
            "same id when sent again"
        );
        assert_ne!(a, message_id("plant-7-", "stream", 43));
        assert_ne!(a, message_id("plant-7-", "other", 42));
        assert!(a.starts_with("plant-7-"));
        let longest = message_id(&"p".repeat(32), &"s".repeat(255), i64::MAX);
        assert!(longest.len() <= 128, "{}", longest.len());
    }
}
