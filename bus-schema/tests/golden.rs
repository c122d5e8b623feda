//! Golden vectors: one sample of every request, response and event, encoded
//! to CBOR and compared byte for byte with `tests/vectors/bus-messages.json`.
//! A change to the bus encoding fails here until the vectors are deliberately
//! regenerated (`UPDATE_GOLDEN=1 cargo test -p bus-schema --test golden`) and
//! `BUS_PROTOCOL_VERSION` is considered. Also: round trips of arbitrary
//! payloads, and arbitrary bytes never panic the decoder.

use std::collections::BTreeMap;

use bus_schema::*;
use proptest::prelude::*;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/bus-messages.json"
);

fn full_definition() -> StreamDefinition {
    StreamDefinition {
        name: "telemetry".into(),
        max_size_bytes: Some(1 << 20),
        segment_size_bytes: Some(1 << 16),
        time_to_live_ms: Some(3_600_000),
        strategy_on_full: Some(StrategyOnFull::OverwriteOldestData),
        persistence: Some(Persistence::Memory),
        flush_on_write: Some(true),
        exports: ExportDefinition {
            http: vec![],
            iot_analytics: vec![IotAnalyticsConfig {
                common: ExportCommon {
                    identifier: "ana".into(),
                    batch_size: Some(100),
                    ..Default::default()
                },
                iot_channel: "chan".into(),
                iot_msg_id_prefix: Some("p-".into()),
            }],
            kinesis: vec![KinesisConfig {
                common: ExportCommon {
                    identifier: "kin".into(),
                    batch_size: Some(500),
                    batch_interval_ms: Some(60_000),
                    priority: Some(1),
                    start_sequence_number: Some(7),
                    disabled: Some(false),
                },
                kinesis_stream_name: "ks".into(),
            }],
            iot_sitewise: vec![IotSiteWiseConfig {
                common: ExportCommon {
                    identifier: "sw".into(),
                    ..Default::default()
                },
            }],
            s3_task_executor: vec![S3TaskExecutorConfig {
                common: ExportCommon {
                    identifier: "s3".into(),
                    priority: Some(10),
                    disabled: Some(true),
                    ..Default::default()
                },
                size_threshold_for_multipart_upload_bytes: Some(5 << 20),
                status_config: Some(StatusConfig {
                    status_level: Some(2),
                    status_stream_name: Some("status".into()),
                }),
            }],
        },
    }
}

fn info() -> StreamInfo {
    StreamInfo {
        incarnation: 7,
        definition: full_definition(),
        storage: StorageStatus {
            oldest_sequence_number: 3,
            newest_sequence_number: 9,
            total_bytes: 4096,
        },
        export_statuses: vec![ExportStatus {
            export_identifier: "kin".into(),
            last_exported_sequence_number: 5,
            last_export_time_ms: Some(1_700_000_000_000),
            error_message: Some("throttled".into()),
            exported_bytes: 300,
            exported_messages: 3,
            skipped_messages: 1,
            oldest_unexported_ingest_ms: Some(1_700_000_001_000),
        }],
    }
}

fn req(name: &str, body: Request) -> (String, Vec<u8>, RequestEnvelope) {
    let e = RequestEnvelope {
        v: BUS_PROTOCOL_VERSION,
        id: 42,
        deadline_ms: 1_700_000_005_000,
        body,
    };
    (format!("request/{name}"), encode(&e).unwrap(), e)
}

fn resp(name: &str, body: Response) -> (String, Vec<u8>, ResponseEnvelope) {
    let e = ResponseEnvelope {
        v: BUS_PROTOCOL_VERSION,
        id: 42,
        body,
    };
    (format!("response/{name}"), encode(&e).unwrap(), e)
}

fn requests() -> Vec<(String, Vec<u8>, RequestEnvelope)> {
    vec![
        req("health", Request::Health),
        req(
            "create",
            Request::CreateStream {
                definition: full_definition(),
            },
        ),
        req(
            "create-minimal",
            Request::CreateStream {
                definition: StreamDefinition::new("s", StrategyOnFull::RejectNewData),
            },
        ),
        req(
            "update",
            Request::UpdateStream {
                definition: full_definition(),
            },
        ),
        req("delete", Request::DeleteStream { name: "s".into() }),
        req("describe", Request::DescribeStream { name: "s".into() }),
        req("list", Request::ListStreams),
        req("describe-all", Request::DescribeAll),
        req(
            "append",
            Request::Append {
                stream: "s".into(),
                payload: b"hello".to_vec(),
            },
        ),
        req(
            "append-batch",
            Request::AppendBatch {
                appends: vec![
                    AppendEntry {
                        stream: "s".into(),
                        payload: b"hello".to_vec(),
                    },
                    AppendEntry {
                        stream: "t".into(),
                        payload: vec![],
                    },
                ],
            },
        ),
        req(
            "read",
            Request::Read {
                stream: "s".into(),
                start_sequence_number: Some(5),
                min_count: Some(1),
                max_count: Some(100),
                wait_ms: Some(2000),
                max_bytes: Some(5_242_880),
                export_identifier: Some("kin".into()),
            },
        ),
        req(
            "read-defaults",
            Request::Read {
                stream: "s".into(),
                start_sequence_number: None,
                min_count: None,
                max_count: None,
                wait_ms: None,
                max_bytes: None,
                export_identifier: None,
            },
        ),
        req(
            "commit-export",
            Request::CommitExport {
                stream: "s".into(),
                export_identifier: "kin".into(),
                progress: ExportProgress {
                    last_exported_sequence_number: 9,
                    last_export_time_ms: 1_700_000_000_000,
                    error_message: None,
                    exported_bytes_delta: 500,
                    exported_messages_delta: 5,
                    skipped_messages_delta: 3,
                    removed_messages_delta: 2,
                    expected_last_exported_sequence_number: Some(4),
                    expected_incarnation: Some(7),
                },
            },
        ),
        req(
            "watch-events",
            Request::WatchEvents {
                epoch: 77,
                after: 12,
                wait_ms: 30_000,
                appended_for: Some(ExportKind::Kinesis),
            },
        ),
        req(
            "acquire-bandwidth",
            Request::AcquireBandwidth {
                bytes: 65_536,
                priority: 3,
                wait_ms: 1000,
            },
        ),
        req(
            "report-metrics",
            Request::ReportMetrics {
                process: "ingest".into(),
                families: vec![metric_family()],
            },
        ),
        req("metrics", Request::Metrics),
        req(
            "acquire-slot",
            Request::AcquireSlot {
                priority: 1,
                wait_ms: 1000,
            },
        ),
        req("renew-slot", Request::RenewSlot { lease: 7 }),
        req("release-slot", Request::ReleaseSlot { lease: 7 }),
        req("losses", Request::Losses),
        req("shutdown", Request::Shutdown),
    ]
}

fn metric_family() -> bus_schema::metrics::MetricFamily {
    use bus_schema::metrics::{Histogram, MetricFamily, MetricKind};
    let mut f = MetricFamily::new(
        "sm_ingest_request_seconds",
        "Request latency.",
        MetricKind::Histogram,
    );
    let mut h = Histogram::new(&[0.001, 0.01]);
    h.observe(0.002);
    f.histogram(&[("operation", "append")], &h);
    f
}

fn responses() -> Vec<(String, Vec<u8>, ResponseEnvelope)> {
    let mut v = vec![
        resp(
            "health",
            Response::Health(HealthInfo {
                epoch: 77,
                pid: 1234,
                uptime_ms: 5000,
                streams: 2,
            }),
        ),
        resp("created", Response::Created),
        resp("updated", Response::Updated),
        resp("deleted", Response::Deleted),
        resp("described", Response::Described(Box::new(info()))),
        resp("streams", Response::Streams(vec!["a".into(), "b".into()])),
        resp("described-all", Response::DescribedAll(vec![info()])),
        resp(
            "appended",
            Response::Appended {
                sequence_number: 3,
                ingest_time_ms: 1_700_000_000_000,
            },
        ),
        resp(
            "appended-batch",
            Response::AppendedBatch(vec![
                AppendOutcome::Appended {
                    sequence_number: 3,
                    ingest_time_ms: 1_700_000_000_000,
                },
                AppendOutcome::Error(ErrorReply::new(
                    ErrorKind::ResourceNotFound,
                    "stream \"t\" not found",
                )),
            ]),
        ),
        resp(
            "messages",
            Response::Messages(vec![Message {
                sequence_number: 3,
                ingest_time_ms: 1_700_000_000_000,
                payload: vec![0, 1, 2, 255],
            }]),
        ),
        resp("committed", Response::Committed),
        resp(
            "events",
            Response::Events(EventBatch {
                epoch: 77,
                next: 15,
                resync: false,
                events: vec![
                    Event::StreamCreated { name: "a".into() },
                    Event::StreamUpdated { name: "a".into() },
                    Event::StreamDeleted { name: "a".into() },
                    Event::Appended {
                        name: "b".into(),
                        newest_sequence_number: 9,
                    },
                ],
            }),
        ),
        resp("granted", Response::Granted),
        resp("reported", Response::Reported),
        resp("slot", Response::Slot { lease: 7 }),
        resp("slot-released", Response::SlotReleased),
        resp("metrics", Response::Metrics(vec![metric_family()])),
        resp(
            "losses",
            Response::Losses(vec![LossEntry {
                stream: "s".into(),
                export_identifier: Some("kin".into()),
                cause: LossCause::Overwrite,
                messages: 120,
                ranges: vec![LossRange {
                    first_sequence_number: 0,
                    last_sequence_number: 119,
                    first_time_ms: 1_700_000_000_000,
                    last_time_ms: 1_700_000_001_000,
                }],
                forgotten_ranges: 0,
                detail: None,
            }]),
        ),
        resp("shutting-down", Response::ShuttingDown),
    ];
    for kind in [
        ErrorKind::InvalidRequest,
        ErrorKind::ResourceNotFound,
        ErrorKind::NotEnoughMessages,
        ErrorKind::UpdateNotAllowed,
        ErrorKind::StreamFull,
        ErrorKind::ResponseTooLarge,
        ErrorKind::StoreReadError,
        ErrorKind::StoreWriteError,
        ErrorKind::Conflict,
        ErrorKind::Busy,
        ErrorKind::ShuttingDown,
        ErrorKind::UnsupportedBusVersion,
        ErrorKind::MalformedMessage,
    ] {
        v.push(resp(
            &format!("error-{kind:?}"),
            Response::Error(ErrorReply::new(kind, "why")),
        ));
    }
    v
}

#[test]
fn every_bus_message_matches_its_golden_vector() {
    let mut actual: BTreeMap<String, String> = BTreeMap::new();
    for (name, bytes, envelope) in requests() {
        assert_eq!(
            decode::<RequestEnvelope>(&bytes).unwrap(),
            envelope,
            "{name}"
        );
        actual.insert(name, hex::encode(bytes));
    }
    for (name, bytes, envelope) in responses() {
        assert_eq!(
            decode::<ResponseEnvelope>(&bytes).unwrap(),
            envelope,
            "{name}"
        );
        actual.insert(name, hex::encode(bytes));
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(
            VECTORS,
            serde_json::to_string_pretty(&actual).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let golden: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("golden vectors file"))
            .unwrap();
    assert_eq!(
        golden.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "the set of golden vectors changed"
    );
    for (name, hex_bytes) in &golden {
        assert_eq!(&actual[name], hex_bytes, "encoding of {name} changed");
    }
}

#[test]
fn payloads_are_cbor_byte_strings() {
    let (_, bytes, _) = req(
        "append",
        Request::Append {
            stream: "s".into(),
            payload: vec![7; 3],
        },
    );
    // 0x43 = byte string of length 3, followed by the bytes.
    assert!(bytes.windows(4).any(|w| w == [0x43, 7, 7, 7]));
}

#[test]
fn the_header_of_a_newer_envelope_can_still_be_read() {
    #[derive(serde::Serialize)]
    struct Future {
        v: u16,
        id: u64,
        deadline_ms: u64,
        body: &'static str,
    }
    let bytes = encode(&Future {
        v: 9,
        id: 5,
        deadline_ms: 0,
        body: "SomethingNew",
    })
    .unwrap();
    assert!(decode::<RequestEnvelope>(&bytes).is_err());
    assert_eq!(
        decode_header(&bytes).unwrap(),
        EnvelopeHeader { v: 9, id: 5 }
    );
}

proptest! {
    #[test]
    fn appends_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..4096), id in any::<u64>()) {
        let e = RequestEnvelope { v: BUS_PROTOCOL_VERSION, id, deadline_ms: 0, body: Request::Append { stream: "s".into(), payload } };
        prop_assert_eq!(decode::<RequestEnvelope>(&encode(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<RequestEnvelope>(&bytes);
        let _ = decode::<ResponseEnvelope>(&bytes);
        let _ = decode_header(&bytes);
    }
}
