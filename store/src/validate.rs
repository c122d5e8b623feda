//! Validation of stream definitions: every rule of wire-protocol spec §9–§10,
//! re-checked here because a raw client may skip the SDKs' own checks and the JS
//! SDK sends floats. Also fills the defaults in. Knows nothing of storage.

use bus_schema::{ErrorKind, ErrorReply, ExportCommon, ExportKind, Persistence, StreamDefinition};

pub const STREAM_NAME_CHARS_MAX: usize = 255;
pub const MAX_SIZE_BYTES_DEFAULT: i64 = 256 * 1024 * 1024;
pub const MAX_SIZE_BYTES_MIN: i64 = 1024;
pub const SEGMENT_SIZE_BYTES_DEFAULT: i64 = 16 * 1024 * 1024;
pub const SEGMENT_SIZE_BYTES_MIN: i64 = 1024;
pub const SEGMENT_SIZE_BYTES_MAX: i64 = i32::MAX as i64;
pub const TIME_TO_LIVE_MS_MIN: i64 = 60_000;
pub const TIME_TO_LIVE_MS_MAX: i64 = 9_223_372_036_854;
pub const BATCH_INTERVAL_MS_MIN: i64 = 60_000;
pub const BATCH_INTERVAL_MS_MAX: i64 = 9_223_372_036_854;
pub const PRIORITY_MIN: i64 = 1;
pub const PRIORITY_MAX: i64 = 10;
pub const IOT_MSG_ID_PREFIX_CHARS_MAX: usize = 32;
pub const S3_MULTIPART_THRESHOLD_BYTES_MIN: i64 = 5 * 1024 * 1024;
pub const STATUS_LEVEL_MAX: i64 = 4;

fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::InvalidRequest, message)
}

/// Checks a stream or export name: 1–255 characters of `[A-Za-z0-9_ ,.-]`
/// (the SDK regex `^[\w ,.\-_]*$` with ASCII `\w`, as the Java SDK applies it).
pub fn check_name(what: &str, name: &str) -> Result<(), ErrorReply> {
    if name.is_empty() || name.chars().count() > STREAM_NAME_CHARS_MAX {
        return Err(invalid(format!(
            "{what} must be 1 to {STREAM_NAME_CHARS_MAX} characters long, got {}",
            name.chars().count()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | ',' | '.' | '-')))
    {
        return Err(invalid(format!(
            "{what} {name:?} contains {c:?}; only letters, digits, space and _ , . - are allowed"
        )));
    }
    Ok(())
}

fn check_range(what: &str, value: i64, min: i64, max: i64) -> Result<(), ErrorReply> {
    if value < min || value > max {
        return Err(invalid(format!(
            "{what} must be between {min} and {max}, got {value}"
        )));
    }
    Ok(())
}

/// Validates a definition and returns it with every default filled in.
/// `stream_exists` tells whether a status stream named in an S3 export exists.
pub fn normalize(
    def: &StreamDefinition,
    stream_exists: &dyn Fn(&str) -> bool,
) -> Result<StreamDefinition, ErrorReply> {
    check_name("stream name", &def.name)?;
    let max_size = def.max_size_bytes.unwrap_or(MAX_SIZE_BYTES_DEFAULT);
    check_range("maxSize", max_size, MAX_SIZE_BYTES_MIN, i64::MAX)?;
    let segment = def.segment_size_bytes.unwrap_or(SEGMENT_SIZE_BYTES_DEFAULT);
    check_range(
        "streamSegmentSize",
        segment,
        SEGMENT_SIZE_BYTES_MIN,
        SEGMENT_SIZE_BYTES_MAX,
    )?;
    if let Some(ttl) = def.time_to_live_ms {
        check_range(
            "timeToLiveMillis",
            ttl,
            TIME_TO_LIVE_MS_MIN,
            TIME_TO_LIVE_MS_MAX,
        )?;
    }
    let strategy = def
        .strategy_on_full
        .ok_or_else(|| invalid("strategyOnFull is required"))?;

    let mut seen = std::collections::HashSet::new();
    for (kind, common) in def.exports.all() {
        check_export_common(kind, common)?;
        if !seen.insert(common.identifier.as_str()) {
            return Err(invalid(format!(
                "export identifier {:?} is used more than once in stream {:?}",
                common.identifier, def.name
            )));
        }
    }
    if !def.exports.http.is_empty() {
        return Err(invalid(
            "export kind http is not supported by this server (it exists in the SDKs for \
             testing only); use kinesis, iotAnalytics, IotSitewise or s3TaskExecutor",
        ));
    }
    for k in &def.exports.kinesis {
        if k.kinesis_stream_name.is_empty() {
            return Err(invalid(format!(
                "kinesisStreamName of export {:?} is required",
                k.common.identifier
            )));
        }
    }
    for a in &def.exports.iot_analytics {
        if a.iot_channel.is_empty() {
            return Err(invalid(format!(
                "iotChannel of export {:?} is required",
                a.common.identifier
            )));
        }
        if let Some(p) = &a.iot_msg_id_prefix {
            if p.chars().count() > IOT_MSG_ID_PREFIX_CHARS_MAX {
                return Err(invalid(format!(
                    "iotMsgIdPrefix of export {:?} is longer than {IOT_MSG_ID_PREFIX_CHARS_MAX} characters",
                    a.common.identifier
                )));
            }
        }
    }
    for s in &def.exports.s3_task_executor {
        if let Some(t) = s.size_threshold_for_multipart_upload_bytes {
            check_range(
                "sizeThresholdForMultipartUploadBytes",
                t,
                S3_MULTIPART_THRESHOLD_BYTES_MIN,
                i64::MAX,
            )?;
        }
        if let Some(sc) = &s.status_config {
            if let Some(level) = sc.status_level {
                check_range("statusLevel", level, 0, STATUS_LEVEL_MAX)?;
            }
            if let Some(status_stream) = &sc.status_stream_name {
                check_name("statusStreamName", status_stream)?;
                if !stream_exists(status_stream) {
                    return Err(invalid(format!(
                        "status stream {status_stream:?} of export {:?} does not exist; create it first",
                        s.common.identifier
                    )));
                }
            }
        }
    }

    let mut out = def.clone();
    out.max_size_bytes = Some(max_size);
    out.segment_size_bytes = Some(segment);
    out.strategy_on_full = Some(strategy);
    out.persistence = Some(def.persistence.unwrap_or(Persistence::File));
    out.flush_on_write = Some(def.flush_on_write.unwrap_or(false));
    Ok(out)
}

fn batch_size_max(kind: ExportKind) -> i64 {
    match kind {
        ExportKind::Kinesis | ExportKind::Http => 500,
        ExportKind::IotAnalytics => 100,
        ExportKind::IotSiteWise => 10,
        ExportKind::S3TaskExecutor => 1,
    }
}

fn check_export_common(kind: ExportKind, c: &ExportCommon) -> Result<(), ErrorReply> {
    check_name("export identifier", &c.identifier)?;
    let id = &c.identifier;
    if let Some(b) = c.batch_size {
        check_range(
            &format!("batchSize of export {id:?}"),
            b,
            1,
            batch_size_max(kind),
        )?;
    }
    if let Some(i) = c.batch_interval_ms {
        check_range(
            &format!("batchIntervalMillis of export {id:?}"),
            i,
            BATCH_INTERVAL_MS_MIN,
            BATCH_INTERVAL_MS_MAX,
        )?;
    }
    if let Some(p) = c.priority {
        check_range(
            &format!("priority of export {id:?}"),
            p,
            PRIORITY_MIN,
            PRIORITY_MAX,
        )?;
    }
    if let Some(s) = c.start_sequence_number {
        check_range(
            &format!("startSequenceNumber of export {id:?}"),
            s,
            0,
            i64::MAX,
        )?;
    }
    Ok(())
}

/// Checks what an update may not change, given the stream's current state.
pub fn check_update(
    old: &StreamDefinition,
    new: &StreamDefinition,
    total_bytes: u64,
    next_sequence_number: u64,
) -> Result<(), ErrorReply> {
    if old.persistence != new.persistence {
        return Err(ErrorReply::new(
            ErrorKind::UpdateNotAllowed,
            format!(
                "persistence of stream {:?} cannot change (it is {:?})",
                old.name,
                old.persistence.unwrap_or(Persistence::File)
            ),
        ));
    }
    let max_size = new.max_size_bytes.unwrap_or(MAX_SIZE_BYTES_DEFAULT);
    let segment = new.segment_size_bytes.unwrap_or(SEGMENT_SIZE_BYTES_DEFAULT);
    if (max_size as u64) < total_bytes {
        return Err(invalid(format!(
            "maxSize {max_size} is below the {total_bytes} bytes stream {:?} holds now",
            old.name
        )));
    }
    if max_size < segment {
        return Err(invalid(format!(
            "maxSize {max_size} is below streamSegmentSize {segment}"
        )));
    }
    let old_starts: std::collections::HashMap<&str, Option<i64>> = old
        .exports
        .all()
        .into_iter()
        .map(|(_, c)| (c.identifier.as_str(), c.start_sequence_number))
        .collect();
    for (_, c) in new.exports.all() {
        let changed = old_starts
            .get(c.identifier.as_str())
            .is_none_or(|old| *old != c.start_sequence_number);
        if let (true, Some(start)) = (changed, c.start_sequence_number) {
            if start as u64 > next_sequence_number {
                return Err(invalid(format!(
                    "startSequenceNumber {start} of export {:?} is beyond the next sequence \
                     number {next_sequence_number} of stream {:?}",
                    c.identifier, old.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::{HttpConfig, KinesisConfig, StrategyOnFull};

    fn def(name: &str) -> StreamDefinition {
        StreamDefinition::new(name, StrategyOnFull::RejectNewData)
    }

    #[test]
    fn defaults_are_filled_in() {
        let n = normalize(&def("s"), &|_| false).unwrap();
        assert_eq!(n.max_size_bytes, Some(MAX_SIZE_BYTES_DEFAULT));
        assert_eq!(n.segment_size_bytes, Some(SEGMENT_SIZE_BYTES_DEFAULT));
        assert_eq!(n.persistence, Some(Persistence::File));
        assert_eq!(n.flush_on_write, Some(false));
    }

    #[test]
    fn names_use_ascii_word_characters() {
        assert!(check_name("n", "a-b_c d,e.f9").is_ok());
        assert!(check_name("n", "").is_err());
        assert!(check_name("n", "Ström").is_err());
        assert!(check_name("n", "a/b").is_err());
        assert!(check_name("n", &"x".repeat(256)).is_err());
        assert!(check_name("n", &"x".repeat(255)).is_ok());
    }

    #[test]
    fn ranges_are_enforced() {
        let mut d = def("s");
        d.max_size_bytes = Some(1023);
        assert!(normalize(&d, &|_| false)
            .unwrap_err()
            .message
            .contains("maxSize"));
        let mut d = def("s");
        d.segment_size_bytes = Some(i32::MAX as i64 + 1);
        assert!(normalize(&d, &|_| false).is_err());
        let mut d = def("s");
        d.time_to_live_ms = Some(59_999);
        assert!(normalize(&d, &|_| false).is_err());
        let mut d = def("s");
        d.strategy_on_full = None;
        assert!(normalize(&d, &|_| false).is_err());
    }

    #[test]
    fn export_rules() {
        let mut d = def("s");
        d.exports.kinesis.push(KinesisConfig {
            common: ExportCommon {
                identifier: "k".into(),
                batch_size: Some(501),
                ..Default::default()
            },
            kinesis_stream_name: "ks".into(),
        });
        assert!(normalize(&d, &|_| false)
            .unwrap_err()
            .message
            .contains("batchSize"));
        d.exports.kinesis[0].common.batch_size = Some(500);
        assert!(normalize(&d, &|_| false).is_ok());
        d.exports.kinesis.push(d.exports.kinesis[0].clone());
        assert!(normalize(&d, &|_| false)
            .unwrap_err()
            .message
            .contains("more than once"));
        let mut d = def("s");
        d.exports.http.push(HttpConfig {
            common: ExportCommon {
                identifier: "h".into(),
                ..Default::default()
            },
            uri: "http://x".into(),
            export_format: None,
        });
        let e = normalize(&d, &|_| false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message.contains("http is not supported"));
    }
}
