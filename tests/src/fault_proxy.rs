//! A fault-injecting HTTP/1.1 proxy in front of a Kinesis endpoint (moto has
//! no fault injection). Faults queued with [`FaultProxy::inject`] apply to
//! the next `PutRecords` calls, one fault per call; every other request passes
//! through untouched. The proxy can also go down (stop listening, drop open
//! connections) and come back on the same port.

use std::collections::VecDeque;
use std::io::{BufReader, Write};

use crate::http::{header, next_request, read_message};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// One injected fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 400 `ProvisionedThroughputExceededException`, nothing stored.
    Throttle,
    /// 500 `InternalFailure`, nothing stored.
    Status500,
    /// Records at positions 0, n, 2n… fail with a per-record
    /// `ProvisionedThroughputExceededException`; the others are stored.
    Partial { every: usize },
    /// The connection is closed before anything is forwarded.
    DropBeforeForward,
    /// The call is forwarded (the records are stored), then the connection is
    /// closed without an answer: the client cannot know it worked.
    DropAfterForward,
    /// The answer comes this much later.
    Delay(Duration),
}

#[derive(Default)]
struct State {
    faults: VecDeque<Fault>,
    /// Record counts of the `PutRecords` calls forwarded, in order.
    put_sizes: Vec<usize>,
    /// The data (base64, as sent) of every record a `Partial` fault failed.
    rejected: Vec<String>,
}

pub struct FaultProxy {
    pub port: u16,
    upstream: u16,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Bumped when the proxy goes down, so open connections close.
    generation: Arc<AtomicU64>,
}

/// `head` with `Content-Length` set to `len` and `Connection: close`.
fn rewrite_head(head: &str, len: usize) -> String {
    let mut lines = head.lines();
    let mut out = format!("{}\r\n", lines.next().unwrap_or_default());
    for l in lines {
        let name = l.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    out
}

fn respond(client: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes())?;
    client.write_all(body)
}

impl FaultProxy {
    pub fn start(upstream: u16) -> Self {
        let port = crate::aws::free_port();
        let proxy = Self {
            port,
            upstream,
            state: Arc::default(),
            down: Arc::default(),
            stop: Arc::default(),
            generation: Arc::default(),
        };
        proxy.listen();
        crate::aws::wait_for_port(port, Duration::from_secs(5));
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn listen(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let (state, down, stop, generation, upstream) = (
            self.state.clone(),
            self.down.clone(),
            self.stop.clone(),
            self.generation.clone(),
            self.upstream,
        );
        std::thread::spawn(move || loop {
            if stop.load(Ordering::SeqCst) || down.load(Ordering::SeqCst) {
                return; // the listener closes: connections are refused
            }
            match listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let (state, generation) = (state.clone(), generation.clone());
                    let born = generation.load(Ordering::SeqCst);
                    std::thread::spawn(move || serve(conn, upstream, state, generation, born));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        });
    }

    /// Queues faults for the next `PutRecords` calls, one each.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    pub fn faults_left(&self) -> usize {
        self.state.lock().unwrap().faults.len()
    }

    /// Record counts of the `PutRecords` calls that reached the endpoint.
    pub fn put_sizes(&self) -> Vec<usize> {
        self.state.lock().unwrap().put_sizes.clone()
    }

    /// The data of every record that a [`Fault::Partial`] failed
    /// individually (the client must send it again).
    pub fn rejected_records(&self) -> Vec<Vec<u8>> {
        use base64::Engine;
        let state = self.state.lock().unwrap();
        state
            .rejected
            .iter()
            .map(|d| {
                base64::engine::general_purpose::STANDARD
                    .decode(d)
                    .expect("base64 data")
            })
            .collect()
    }

    /// Stops listening and drops every open connection.
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Listens again on the same port.
    pub fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.listen();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sends one request upstream on a fresh connection; the whole answer.
fn forward(upstream: u16, head: &str, body: &[u8]) -> std::io::Result<(String, Vec<u8>)> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(rewrite_head(head, body.len()).as_bytes())?;
    up.write_all(body)?;
    let mut r = BufReader::new(up);
    read_message(&mut r).ok_or_else(|| std::io::Error::other("no answer from upstream"))
}

fn serve(
    conn: TcpStream,
    upstream: u16,
    state: Arc<Mutex<State>>,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let mut client = conn.try_clone().expect("clone");
    let mut reader = BufReader::new(conn);
    let gone = || generation.load(Ordering::SeqCst) != born;
    loop {
        // The next request, closing if the proxy went down (also while it
        // was being read).
        let Some((head, body)) = next_request(&mut reader, gone) else {
            return;
        };
        if gone() {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let is_put = header(&head, "x-amz-target").is_some_and(|t| t.ends_with(".PutRecords"));
        let fault = if is_put {
            state.lock().unwrap().faults.pop_front()
        } else {
            None
        };
        let result = match fault {
            Some(Fault::Throttle) => respond(
                &mut client,
                "400 Bad Request",
                br#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard (injected)"}"#,
            ),
            Some(Fault::Status500) => respond(
                &mut client,
                "500 Internal Server Error",
                br#"{"__type":"InternalFailure","message":"injected"}"#,
            ),
            Some(Fault::DropBeforeForward) => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::DropAfterForward) => {
                if let Ok(_answer) = forward(upstream, &head, &body) {
                    count_put(&state, &body);
                }
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Partial { every }) => partial(&mut client, upstream, &state, &head, &body, every),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                pass(&mut client, upstream, &state, &head, &body, is_put)
            }
            None => pass(&mut client, upstream, &state, &head, &body, is_put),
        };
        if result.is_err() {
            return;
        }
    }
}

fn count_put(state: &Mutex<State>, body: &[u8]) {
    let n = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["Records"].as_array().map(|a| a.len()))
        .unwrap_or(0);
    state.lock().unwrap().put_sizes.push(n);
}

fn pass(
    client: &mut TcpStream,
    upstream: u16,
    state: &Mutex<State>,
    head: &str,
    body: &[u8],
    is_put: bool,
) -> std::io::Result<()> {
    let (rhead, rbody) = forward(upstream, head, body)?;
    if is_put {
        count_put(state, body);
    }
    // The upstream answer as it came (its headers matter: S3 answers an
    // UploadPart with the part's ETag header), re-framed for keep-alive.
    let mut out = String::new();
    for (i, line) in rhead.lines().enumerate() {
        let name = line.split(':').next().unwrap_or_default().trim();
        if i > 0
            && (name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", rbody.len()));
    client.write_all(out.as_bytes())?;
    client.write_all(&rbody)
}

/// Forwards all records but every `every`-th, and answers as Kinesis does
/// for a partial failure.
fn partial(
    client: &mut TcpStream,
    upstream: u16,
    state: &Mutex<State>,
    head: &str,
    body: &[u8],
    every: usize,
) -> std::io::Result<()> {
    let mut request: Value = serde_json::from_slice(body).map_err(std::io::Error::other)?;
    let records = request["Records"].as_array().cloned().unwrap_or_default();
    let fails = |i: usize| i % every.max(1) == 0;
    let kept: Vec<Value> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| !fails(*i))
        .map(|(_, r)| r.clone())
        .collect();
    let mut upstream_results = Vec::new();
    if !kept.is_empty() {
        request["Records"] = Value::Array(kept);
        let forwarded = serde_json::to_vec(&request).map_err(std::io::Error::other)?;
        let (_, rbody) = forward(upstream, head, &forwarded)?;
        count_put(state, &forwarded);
        let answer: Value = serde_json::from_slice(&rbody).map_err(std::io::Error::other)?;
        upstream_results = answer["Records"].as_array().cloned().unwrap_or_default();
    }
    let mut upstream_results = upstream_results.into_iter();
    let mut failed = 0;
    let merged: Vec<Value> = (0..records.len())
        .map(|i| {
            if fails(i) {
                failed += 1;
                if let Some(data) = records[i]["Data"].as_str() {
                    state.lock().unwrap().rejected.push(data.to_string());
                }
                serde_json::json!({
                    "ErrorCode": "ProvisionedThroughputExceededException",
                    "ErrorMessage": "Rate exceeded for shard (injected)"
                })
            } else {
                upstream_results.next().unwrap_or(Value::Null)
            }
        })
        .collect();
    let answer = serde_json::json!({ "FailedRecordCount": failed, "Records": merged });
    respond(client, "200 OK", &serde_json::to_vec(&answer).unwrap())
}
