//! A fast local Kinesis endpoint for the export benchmark: accepts
//! `PutRecords` (awsJson1.1), checks the published limits (1–500 records,
//! ≤ 5 MiB, ≤ 1 MiB per record, partition key 1–256 characters, valid
//! base64), counts records and bytes, and answers like Kinesis. Nothing is
//! stored. One thread per connection, keep-alive.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::http::{header, read_message};

#[derive(Default)]
pub struct Counters {
    pub calls: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub refused: AtomicU64,
}

pub struct FastKinesis {
    pub port: u16,
    pub counters: Arc<Counters>,
}

#[derive(Deserialize)]
struct PutRecords<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<Entry<'a>>,
    #[serde(rename = "StreamName")]
    _stream_name: Option<&'a str>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(rename = "Data")]
    data: &'a str,
    #[serde(rename = "PartitionKey")]
    partition_key: &'a str,
}

/// Decoded length of standard base64 text, if it is well formed.
fn base64_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return None;
    }
    let ok = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 || !b[..b.len() - pad].iter().all(ok) {
        return None;
    }
    Some(b.len() / 4 * 3 - pad)
}

fn check(req: &PutRecords<'_>) -> Result<u64, String> {
    let n = req.records.len();
    if !(1..=500).contains(&n) {
        return Err(format!("{n} records: 1 to 500 allowed"));
    }
    let mut total = 0usize;
    for e in &req.records {
        let len = base64_len(e.data).ok_or("Data is not base64")?;
        let key = e.partition_key.chars().count();
        if !(1..=256).contains(&key) {
            return Err(format!("partition key of {key} characters"));
        }
        if len + e.partition_key.len() > 1024 * 1024 {
            return Err("record over 1 MiB".into());
        }
        total += len + e.partition_key.len();
    }
    if total > 5 * 1024 * 1024 {
        return Err("request over 5 MiB".into());
    }
    Ok(total as u64)
}

impl FastKinesis {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let c = c.clone();
                std::thread::spawn(move || serve(conn, &c));
            }
        });
        Self { port, counters }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(conn: TcpStream, c: &Counters) {
    let _ = conn.set_nodelay(true);
    let mut out = conn.try_clone().expect("clone");
    let mut r = BufReader::with_capacity(1 << 20, conn);
    while let Some((head, body)) = read_message(&mut r) {
        let is_put = header(&head, "x-amz-target").is_some_and(|t| t.ends_with(".PutRecords"));
        let parsed = serde_json::from_slice::<PutRecords<'_>>(&body);
        let (status, answer) = match (is_put, parsed) {
            (true, Ok(req)) => match check(&req) {
                Ok(bytes) => {
                    let n = req.records.len();
                    c.calls.fetch_add(1, Ordering::Relaxed);
                    c.records.fetch_add(n as u64, Ordering::Relaxed);
                    c.bytes.fetch_add(bytes, Ordering::Relaxed);
                    let mut a = String::with_capacity(40 + n * 80);
                    a.push_str(r#"{"FailedRecordCount":0,"Records":["#);
                    for i in 0..n {
                        if i > 0 {
                            a.push(',');
                        }
                        a.push_str(r#"{"SequenceNumber":"1","ShardId":"shardId-000000000000"}"#);
                    }
                    a.push_str("]}");
                    ("200 OK", a)
                }
                Err(why) => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    (
                        "400 Bad Request",
                        format!(r#"{{"__type":"ValidationException","message":"{why}"}}"#),
                    )
                }
            },
            _ => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                (
                    "400 Bad Request",
                    r#"{"__type":"UnknownOperationException","message":"only PutRecords"}"#.into(),
                )
            }
        };
        let msg = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(msg.as_bytes()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_lengths() {
        assert_eq!(base64_len("aGVsbG8="), Some(5));
        assert_eq!(base64_len("aGVsbA=="), Some(4));
        assert_eq!(base64_len("aGVs"), Some(3));
        assert_eq!(base64_len("aGV"), None);
        assert_eq!(base64_len("a*Vs"), None);
    }
}
