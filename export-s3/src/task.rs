//! An S3 export task as applications append it: a JSON
//! `S3ExportTaskDefinition` (wire-protocol spec §9), checked against the
//! rules the SDKs and S3 apply, and its key's `!{timestamp:<pattern>}`
//! placeholders resolved.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// Longest object key, in characters.
pub const KEY_CHARS_MAX: usize = 1024;
/// Characters a key may not hold outside placeholders (spec §9).
const KEY_FORBIDDEN: &[char] = &[
    '\\', '{', '}', '%', '`', '[', ']', '"', '\'', '>', '<', '~', '#', '^', '?', '|',
];

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The task JSON as appended (for status messages).
    pub definition: Value,
    pub path: PathBuf,
    pub bucket: String,
    /// The key with placeholders still in it.
    pub key_pattern: String,
    pub metadata: BTreeMap<String, String>,
}

fn text(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("{key} is missing")),
        Some(other) => Err(format!("{key} must be text, not {other}")),
    }
}

/// S3's bucket naming rules: 3–63 characters, lowercase letters, digits,
/// dots and hyphens, starting and ending with a letter or digit, no two
/// dots in a row, not an IP address.
pub fn check_bucket(b: &str) -> Result<(), String> {
    let ok_chars = b
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&b.len())
        || !ok_chars
        || !ends_ok(b.chars().next())
        || !ends_ok(b.chars().last())
        || b.contains("..")
        || b.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return Err(format!(
            "bucket {b:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit, not an IP address)"
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), String> {
    let n = key.chars().count();
    if !(1..=KEY_CHARS_MAX).contains(&n) {
        return Err(format!(
            "key has {n} characters; 1 to {KEY_CHARS_MAX} are allowed"
        ));
    }
    // Forbidden characters count only outside placeholders.
    let mut rest = key;
    let mut outside = String::new();
    while let Some(start) = rest.find("!{") {
        outside.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            return Err(format!("key {key:?} has an unclosed !{{ placeholder"));
        };
        rest = &rest[start + end + 1..];
    }
    outside.push_str(rest);
    if let Some(c) = outside.chars().find(|c| KEY_FORBIDDEN.contains(c)) {
        return Err(format!(
            "key {key:?} holds the character {c:?}, which S3 export keys may not"
        ));
    }
    Ok(())
}

/// Parses and checks a task.
pub fn parse(json: &[u8]) -> Result<Task, String> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| format!("not a JSON S3ExportTaskDefinition: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON S3ExportTaskDefinition: not an object".into());
    }
    let url = text(&v, "inputUrl")?;
    let path = url
        .strip_prefix("file://")
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| format!("inputUrl {url:?} is not a file:/// URL of a local file"))?;
    let bucket = text(&v, "bucket")?;
    check_bucket(&bucket)?;
    let key = text(&v, "key")?;
    check_key(&key)?;
    let mut metadata = BTreeMap::new();
    match v.get("userMetadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, val) in m {
                let val = val
                    .as_str()
                    .ok_or_else(|| format!("userMetadata {k:?} must be text"))?;
                if k.starts_with("$aws-gg-") {
                    return Err(format!(
                        "userMetadata key {k:?} uses the reserved prefix $aws-gg-"
                    ));
                }
                metadata.insert(k.clone(), val.to_string());
            }
        }
        Some(other) => return Err(format!("userMetadata must be a map of text, not {other}")),
    }
    Ok(Task {
        definition: v,
        path: PathBuf::from(percent_decode(path)),
        bucket,
        key_pattern: key,
        metadata,
    })
}

/// `%XX` escapes of a file URL path decoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Formats `unix_ms` (UTC) with a Java `DateTimeFormatter` pattern: the
/// letters `y` (year), `M` (month), `d` (day), `H` (hour 0-23), `m`
/// (minute), `s` (second), `S` (fraction of a second), text in single
/// quotes, and any other non-letter as itself. Other letters are refused.
pub fn format_time(pattern: &str, unix_ms: i64) -> Result<String, String> {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil(days);
    let (h, mi, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted text; '' is a quote.
            let mut j = i + 1;
            if chars.get(j) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            while j < chars.len() && chars[j] != '\'' {
                out.push(chars[j]);
                j += 1;
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while chars.get(i + n) == Some(&c) {
            n += 1;
        }
        let pad = |v: i64, w: usize| format!("{v:0w$}");
        let piece = match c {
            'y' | 'u' if n == 2 => pad(year.rem_euclid(100), 2),
            'y' | 'u' => pad(year, n),
            'M' => pad(i64::from(month), n.min(2)),
            'd' => pad(i64::from(day), n.min(2)),
            'H' => pad(h, n.min(2)),
            'm' => pad(mi, n.min(2)),
            's' => pad(s, n.min(2)),
            'S' => {
                let frac = format!("{ms:03}000000");
                frac[..n.min(9)].to_string()
            }
            other => {
                return Err(format!(
                    "timestamp pattern {pattern:?} uses {other:?}; supported: y, M, d, H, m, s, S and quoted text"
                ))
            }
        };
        out.push_str(&piece);
        i += n;
    }
    Ok(out)
}

/// The key with every `!{timestamp:<pattern>}` replaced by the time now.
pub fn resolve_key(pattern: &str, unix_ms: i64) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find("!{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("key {pattern:?} has an unclosed !{{ placeholder"))?;
        let inner = &rest[start + 2..start + end];
        let fmt = inner
            .strip_prefix("timestamp:")
            .ok_or_else(|| format!("placeholder !{{{inner}}} is not !{{timestamp:<pattern>}}"))?;
        out.push_str(&format_time(fmt, unix_ms)?);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_like_java() {
        // 2024-02-29T13:05:09.042Z
        let t = 1_709_211_909_042;
        assert_eq!(
            format_time("yyyy-MM-dd HH:mm:ss.SSS", t).unwrap(),
            "2024-02-29 13:05:09.042"
        );
        assert_eq!(format_time("yy/M/d", t).unwrap(), "24/2/29");
        assert_eq!(format_time("'year' yyyy ''", t).unwrap(), "year 2024 '");
        assert!(format_time("EEE", t).is_err());
        assert_eq!(format_time("yyyyMMdd", 0).unwrap(), "19700101");
        assert_eq!(
            format_time("yyyy-MM-dd", 951_782_400_000).unwrap(),
            "2000-02-29"
        );
    }

    #[test]
    fn keys_resolve_their_placeholders() {
        let t = 1_709_211_909_042;
        assert_eq!(
            resolve_key(
                "logs/!{timestamp:yyyy}/!{timestamp:MM}/x-!{timestamp:HHmmss}.bin",
                t
            )
            .unwrap(),
            "logs/2024/02/x-130509.bin"
        );
        assert!(resolve_key("a/!{date:yyyy}", t).is_err());
        assert_eq!(resolve_key("plain/key", t).unwrap(), "plain/key");
    }

    #[test]
    fn tasks_are_checked() {
        let ok = br#"{"inputUrl":"file:///tmp/a%20b.bin","bucket":"my-bucket","key":"k/!{timestamp:yyyy}","userMetadata":{"a":"1"}}"#;
        let t = parse(ok).unwrap();
        assert_eq!(t.path, PathBuf::from("/tmp/a b.bin"));
        assert_eq!(t.metadata["a"], "1");
        for (json, needle) in [
            (&br#"{"inputUrl":"http://x/y","bucket":"b-b","key":"k"}"#[..], "file:///"),
            (br#"{"inputUrl":"file:///a","bucket":"Bad_Bucket","key":"k"}"#, "not a valid S3 bucket"),
            (br#"{"inputUrl":"file:///a","bucket":"10.0.0.1","key":"k"}"#, "not a valid S3 bucket"),
            (br#"{"inputUrl":"file:///a","bucket":"bbb","key":"a#b"}"#, "character '#'"),
            (br#"{"inputUrl":"file:///a","bucket":"bbb"}"#, "key is missing"),
            (br#"{"inputUrl":"file:///a","bucket":"bbb","key":"k","userMetadata":{"$aws-gg-x":"1"}}"#, "reserved"),
            (b"nope", "not a JSON"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }
}
