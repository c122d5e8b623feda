//! A stream message as a `PutAssetPropertyValueEntry`: JSON parsed
//! generically (any spacing, any key order, unknown keys ignored, nulls as
//! absent), checked against the service's rules so that an entry the
//! service would refuse is skipped here with a precise reason.

use aws_sdk_iotsitewise::types::{
    AssetPropertyValue, PutAssetPropertyValueEntry, Quality, TimeInNanos, Variant,
};
use serde_json::Value;

/// Values per entry, at most (the service's limit).
pub const VALUES_PER_ENTRY_MAX: usize = 10;
/// Longest string value, in characters.
pub const STRING_VALUE_CHARS_MAX: usize = 1024;
/// Longest property alias, in characters.
pub const PROPERTY_ALIAS_CHARS_MAX: usize = 2048;

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn text(v: &Value, key: &str) -> Result<Option<String>, String> {
    match field(v, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} must be text, not {other}")),
    }
}

fn int(v: &Value, key: &str) -> Result<Option<i64>, String> {
    match field(v, key) {
        None => Ok(None),
        Some(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| format!("{key} must be a whole number, not {n}")),
    }
}

fn variant(v: &Value) -> Result<Variant, String> {
    let mut set = 0;
    let mut b = Variant::builder();
    if let Some(s) = text(v, "stringValue")? {
        let n = s.chars().count();
        if !(1..=STRING_VALUE_CHARS_MAX).contains(&n) {
            return Err(format!(
                "stringValue has {n} characters; 1 to {STRING_VALUE_CHARS_MAX} are allowed"
            ));
        }
        b = b.string_value(s);
        set += 1;
    }
    if let Some(i) = int(v, "integerValue")? {
        let i = i32::try_from(i).map_err(|_| format!("integerValue {i} is out of range"))?;
        b = b.integer_value(i);
        set += 1;
    }
    if let Some(d) = field(v, "doubleValue") {
        let d = d
            .as_f64()
            .ok_or_else(|| format!("doubleValue must be a number, not {d}"))?;
        b = b.double_value(d);
        set += 1;
    }
    if let Some(x) = field(v, "booleanValue") {
        let x = x
            .as_bool()
            .ok_or_else(|| format!("booleanValue must be true or false, not {x}"))?;
        b = b.boolean_value(x);
        set += 1;
    }
    if set != 1 {
        return Err(format!(
            "a value must have exactly one of stringValue, integerValue, doubleValue, booleanValue; it has {set}"
        ));
    }
    Ok(b.build())
}

fn property_value(v: &Value) -> Result<AssetPropertyValue, String> {
    let value = field(v, "value").ok_or("a property value has no value")?;
    let ts = field(v, "timestamp").ok_or("a property value has no timestamp")?;
    let secs = int(ts, "timeInSeconds")?.ok_or("a timestamp has no timeInSeconds")?;
    let nanos = int(ts, "offsetInNanos")?.unwrap_or(0);
    if !(1..=31_556_889_864_403_199).contains(&secs) {
        return Err(format!("timeInSeconds {secs} is out of range"));
    }
    if !(0..=999_999_999).contains(&nanos) {
        return Err(format!("offsetInNanos {nanos} is out of range"));
    }
    let timestamp = TimeInNanos::builder()
        .time_in_seconds(secs)
        .offset_in_nanos(nanos as i32)
        .build()
        .map_err(|e| e.to_string())?;
    let mut b = AssetPropertyValue::builder()
        .value(variant(value)?)
        .timestamp(timestamp);
    if let Some(q) = text(v, "quality")? {
        if !["GOOD", "BAD", "UNCERTAIN"].contains(&q.as_str()) {
            return Err(format!("quality {q:?} is not GOOD, BAD or UNCERTAIN"));
        }
        b = b.quality(Quality::from(q.as_str()));
    }
    Ok(b.build())
}

/// The entry in `json`, with `entry_id` as its id for this call.
pub fn parse(json: &[u8], entry_id: &str) -> Result<PutAssetPropertyValueEntry, String> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| format!("not a JSON PutAssetPropertyValueEntry: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON PutAssetPropertyValueEntry: not an object".into());
    }
    let asset_id = text(&v, "assetId")?;
    let property_id = text(&v, "propertyId")?;
    let alias = text(&v, "propertyAlias")?;
    match (&asset_id, &property_id, &alias) {
        (_, _, Some(a)) => {
            let n = a.chars().count();
            if !(1..=PROPERTY_ALIAS_CHARS_MAX).contains(&n) || a.chars().any(char::is_control) {
                return Err(format!(
                    "propertyAlias must be 1 to {PROPERTY_ALIAS_CHARS_MAX} characters without control characters"
                ));
            }
        }
        (Some(_), Some(_), None) => {}
        _ => return Err("an entry needs propertyAlias, or assetId and propertyId".into()),
    }
    let values = match field(&v, "propertyValues") {
        Some(Value::Array(a)) => a,
        _ => return Err("propertyValues must be a list".into()),
    };
    if !(1..=VALUES_PER_ENTRY_MAX).contains(&values.len()) {
        return Err(format!(
            "propertyValues has {} values; 1 to {VALUES_PER_ENTRY_MAX} are allowed",
            values.len()
        ));
    }
    let values = values
        .iter()
        .map(property_value)
        .collect::<Result<Vec<_>, _>>()?;
    PutAssetPropertyValueEntry::builder()
        .entry_id(entry_id)
        .set_asset_id(asset_id)
        .set_property_id(property_id)
        .set_property_alias(alias)
        .set_property_values(Some(values))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_and_java_styles_parse_alike() {
        // As the Python helper writes it (spaced) and the Java one (compact).
        let python = br#"{"entryId": "entry-1", "propertyAlias": "/line/1/temp", "propertyValues": [{"value": {"doubleValue": 21.5}, "timestamp": {"timeInSeconds": 1790000000, "offsetInNanos": 5}, "quality": "GOOD"}]}"#;
        let java = br#"{"entryId":"entry-1","propertyAlias":"/line/1/temp","propertyValues":[{"value":{"doubleValue":21.5},"timestamp":{"timeInSeconds":1790000000,"offsetInNanos":5},"quality":"GOOD"}]}"#;
        let a = parse(python, "7").unwrap();
        let b = parse(java, "7").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.entry_id(), "7");
        assert_eq!(a.property_alias(), Some("/line/1/temp"));
        let v = &a.property_values()[0];
        assert_eq!(v.value().and_then(|v| v.double_value()), Some(21.5));
        assert_eq!(v.timestamp().map(|t| t.offset_in_nanos()), Some(Some(5)));
    }

    #[test]
    fn every_variant_and_addressing_by_ids() {
        let json = br#"{"entryId":"e","assetId":"a","propertyId":"p","propertyValues":[
            {"value":{"stringValue":"on"},"timestamp":{"timeInSeconds":1}},
            {"value":{"integerValue":3.0},"timestamp":{"timeInSeconds":2,"offsetInNanos":null}},
            {"value":{"booleanValue":true},"timestamp":{"timeInSeconds":3}}]}"#;
        let e = parse(json, "1").unwrap();
        assert_eq!(e.asset_id(), Some("a"));
        assert_eq!(e.property_values().len(), 3);
        assert_eq!(
            e.property_values()[1]
                .value()
                .and_then(|v| v.integer_value()),
            Some(3)
        );
    }

    #[test]
    fn entries_the_service_would_refuse_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a JSON"),
            (b"[1]", "not an object"),
            (br#"{"propertyValues":[]}"#, "propertyAlias, or assetId"),
            (br#"{"propertyAlias":"a","propertyValues":[]}"#, "1 to 10"),
            (
                br#"{"propertyAlias":"a","propertyValues":[{"value":{},"timestamp":{"timeInSeconds":1}}]}"#,
                "exactly one",
            ),
            (
                br#"{"propertyAlias":"a","propertyValues":[{"value":{"integerValue":3000000000},"timestamp":{"timeInSeconds":1}}]}"#,
                "out of range",
            ),
            (
                br#"{"propertyAlias":"a","propertyValues":[{"value":{"doubleValue":1},"timestamp":{"offsetInNanos":1}}]}"#,
                "no timeInSeconds",
            ),
            (
                br#"{"propertyAlias":"a","propertyValues":[{"value":{"doubleValue":1},"timestamp":{"timeInSeconds":1},"quality":"FINE"}]}"#,
                "quality",
            ),
        ];
        for (json, needle) in cases {
            let e = parse(json, "1").unwrap_err();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }
}
