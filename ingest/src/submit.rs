//! The one queue through which the ingest's connections hand their requests
//! to the store, in the order they were read (across connections too).
//!
//! Appends that wait in the queue together go to the store as one
//! `AppendBatch`: under load, a bus message (and its trips through ZeroMQ's
//! I/O threads of both processes, its envelope decode and its reply) carries
//! many appends instead of one. The threads moving bus messages were the
//! busiest of the whole system with one message per append (in 5 s of
//! `peer-bench` appends at about 147,000/s: ZeroMQ's I/O threads ran 2.3 s
//! in the store and 1.9 s in the ingest, against 2.4 s for the store's
//! request thread). Nothing waits to fill a batch: a lone append goes at
//! once, as a plain `Append`, and a batch is what piled up while the
//! previous submission waited for a bus slot.
//!
//! Each append of a batch is stored or refused on its own, as the same
//! `Append`s in this order would be; a batch that fails whole (the store
//! gone, a timeout, a storage failure) fails each of its appends with that
//! error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bus::{BusClient, BusError, BusReply, RawPendingReply};
use bus_schema::{
    AppendEntry, ErrorKind, ErrorReply, Request, Response, APPEND_BATCH_MESSAGES_MAX,
};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{IngestMetrics, BUS_APPEND, BUS_APPEND_BATCH, BUS_OTHER};

/// Payload bytes one `AppendBatch` carries at most (a longer append goes
/// alone).
pub const APPEND_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Requests waiting for the submitter at most; a connection with a request
/// to submit waits for room (and stops reading its socket meanwhile).
pub const SUBMIT_QUEUE_REQUESTS: usize = APPEND_BATCH_MESSAGES_MAX;

/// A request on its way to the store.
struct Job {
    request: Request,
    timeout: Duration,
    done: oneshot::Sender<Handoff>,
}

/// What the submitter hands back for a job.
enum Handoff {
    /// The request went to the store on its own: its reply is to come.
    Pending(RawPendingReply),
    /// The answer: an append's outcome from its batch, or the failure to
    /// submit.
    Done(Result<BusReply, BusError>),
}

/// The connections' handle on the submitter (cheap to clone).
#[derive(Clone)]
pub struct Submitter {
    tx: mpsc::Sender<Job>,
}

impl Submitter {
    /// Starts the submitter on the current runtime, counting what it sends
    /// into `metrics`; it ends when the last handle is dropped.
    pub fn start(bus: BusClient, metrics: Arc<IngestMetrics>) -> Self {
        let (tx, rx) = mpsc::channel(SUBMIT_QUEUE_REQUESTS);
        tokio::spawn(run(rx, bus, metrics));
        Self { tx }
    }

    /// Queues `request` (waiting for room in the queue) and gives the reply
    /// to come. `timeout` counts from the moment the request goes on the bus.
    pub async fn submit(&self, request: Request, timeout: Duration) -> Reply {
        let (done, rx) = oneshot::channel();
        let job = Job {
            request,
            timeout,
            done,
        };
        if self.tx.send(job).await.is_err() {
            return Reply(State::Closed);
        }
        Reply(State::Queued(rx))
    }
}

/// The store's reply to a submitted request, to be awaited.
pub struct Reply(State);

enum State {
    Queued(oneshot::Receiver<Handoff>),
    Sent(RawPendingReply),
    /// The submitter is gone (the ingest is stopping).
    Closed,
}

impl Future for Reply {
    type Output = Result<BusReply, BusError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.0 {
                State::Queued(rx) => match ready!(Pin::new(rx).poll(cx)) {
                    Ok(Handoff::Pending(pending)) => self.0 = State::Sent(pending),
                    Ok(Handoff::Done(answer)) => return Poll::Ready(answer),
                    Err(_) => self.0 = State::Closed,
                },
                State::Sent(pending) => return Pin::new(pending).poll(cx),
                State::Closed => return Poll::Ready(Err(BusError::Closed)),
            }
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, bus: BusClient, metrics: Arc<IngestMetrics>) {
    // A job taken off the queue that did not fit the batch before it.
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let Some(mut bytes) = append_bytes(&first.request) else {
            metrics.sent(BUS_OTHER, 0);
            submit_one(&bus, first).await;
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < APPEND_BATCH_MESSAGES_MAX {
            let Ok(job) = rx.try_recv() else { break };
            match append_bytes(&job.request) {
                Some(more) if bytes + more <= APPEND_BATCH_BYTES_MAX => {
                    bytes += more;
                    batch.push(job);
                }
                _ => {
                    next = Some(job);
                    break;
                }
            }
        }
        if batch.len() == 1 {
            if let Some(job) = batch.pop() {
                metrics.sent(BUS_APPEND, 1);
                submit_one(&bus, job).await;
            }
        } else {
            metrics.sent(BUS_APPEND_BATCH, batch.len());
            submit_batch(&bus, batch).await;
        }
    }
}

/// An append's payload bytes; `None` for any other request (never batched).
fn append_bytes(request: &Request) -> Option<usize> {
    match request {
        Request::Append { payload, .. } => Some(payload.len()),
        _ => None,
    }
}

async fn submit_one(bus: &BusClient, job: Job) {
    let handoff = match bus.submit(job.request, job.timeout).await {
        Ok(pending) => Handoff::Pending(pending.raw()),
        Err(e) => Handoff::Done(Err(e)),
    };
    // The connection may be gone; its reply is dropped with it.
    let _ = job.done.send(handoff);
}

async fn submit_batch(bus: &BusClient, batch: Vec<Job>) {
    let timeout = batch.iter().map(|j| j.timeout).min().unwrap_or_default();
    let mut waiting = Vec::with_capacity(batch.len());
    let mut appends = Vec::with_capacity(batch.len());
    // `run` batches appends only.
    for job in batch {
        if let Request::Append { stream, payload } = job.request {
            appends.push(AppendEntry { stream, payload });
            waiting.push(job.done);
        }
    }
    let count = appends.len();
    match bus.submit(Request::AppendBatch { appends }, timeout).await {
        Ok(pending) => {
            tokio::spawn(async move {
                let answers = split(pending.await, count);
                for (done, answer) in waiting.into_iter().zip(answers) {
                    let _ = done.send(Handoff::Done(answer));
                }
            });
        }
        Err(e) => {
            for done in waiting {
                let _ = done.send(Handoff::Done(Err(e.clone())));
            }
        }
    }
}

/// Each append's answer from the reply to a batch of `count`.
fn split(reply: Result<Response, BusError>, count: usize) -> Vec<Result<BusReply, BusError>> {
    let every = |e: BusError| (0..count).map(|_| Err(e.clone())).collect();
    match reply {
        Ok(Response::AppendedBatch(outcomes)) if outcomes.len() == count => outcomes
            .into_iter()
            .map(|o| Ok(BusReply::Response(o.into_response())))
            .collect(),
        // The whole batch was refused or failed: every append was.
        Ok(Response::Error(e)) => every(BusError::Remote(e)),
        Err(e) => every(e),
        Ok(other) => {
            let e = ErrorReply::new(
                ErrorKind::MalformedMessage,
                format!(
                    "the store answered a batch of {count} appends with {}",
                    match other {
                        Response::AppendedBatch(o) => format!("{} outcomes", o.len()),
                        other => format!("{other:?}"),
                    }
                ),
            );
            every(BusError::Remote(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::{BusClientConfig, BusServer, Incoming};
    use bus_schema::{AppendOutcome, ResponseEnvelope, BUS_PROTOCOL_VERSION};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A store stand-in on a real bus socket: answers an append with its
    /// payload's first byte as the sequence number, anything else with an
    /// empty stream list, and hands every request it takes to `log`.
    fn fake_store(
        server: BusServer,
        log: std::sync::mpsc::Sender<Request>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let appended = |payload: &[u8]| AppendOutcome::Appended {
            sequence_number: i64::from(payload[0]),
            ingest_time_ms: 0,
        };
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                server.wait(Some(Duration::from_millis(10)), None).unwrap();
                while let Some(Incoming::Request(peer, envelope)) = server.try_recv().unwrap() {
                    let body = match &envelope.body {
                        Request::Append { payload, .. } => appended(payload).into_response(),
                        Request::AppendBatch { appends } => Response::AppendedBatch(
                            appends.iter().map(|a| appended(&a.payload)).collect(),
                        ),
                        _ => Response::Streams(vec![]),
                    };
                    let reply = ResponseEnvelope {
                        v: BUS_PROTOCOL_VERSION,
                        id: envelope.id,
                        body,
                    };
                    server.send(&peer, &reply).unwrap();
                    log.send(envelope.body).unwrap();
                }
            }
        })
    }

    #[test]
    fn appends_waiting_together_go_as_one_batch_and_every_request_keeps_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("ipc://{}/bus", dir.path().display());
        let (log_tx, log) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let store = fake_store(BusServer::bind(&endpoint).unwrap(), log_tx, stop.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let timeout = Duration::from_secs(10);
        let append = |i: u8| Request::Append {
            stream: "s".into(),
            payload: vec![i],
        };
        let metrics = Arc::new(IngestMetrics::default());
        rt.block_on(async {
            let bus = BusClient::connect_in_runtime(&endpoint, BusClientConfig::default()).unwrap();
            let submitter = Submitter::start(bus, metrics.clone());
            // 200 appends, a list, 50 appends, all queued before any answer.
            let mut replies = Vec::new();
            for i in 0..200 {
                replies.push(submitter.submit(append(i), timeout).await);
            }
            replies.push(submitter.submit(Request::ListStreams, timeout).await);
            for i in 200..250 {
                replies.push(submitter.submit(append(i), timeout).await);
            }
            for (n, reply) in replies.into_iter().enumerate() {
                let got = reply.await.unwrap().into_response();
                let want = match n {
                    200 => Response::Streams(vec![]),
                    n if n < 200 => appended(n as i64),
                    n => appended(n as i64 - 1),
                };
                assert_eq!(got, want, "reply {n}");
            }
        });
        stop.store(true, Ordering::Relaxed);
        store.join().unwrap();

        // The store took them in the order they were submitted, most appends
        // in batches (fewer bus messages than requests), the list between
        // append 199 and append 200, never inside a batch.
        let taken: Vec<Request> = log.try_iter().collect();
        let mut order = Vec::new();
        for request in &taken {
            match request {
                Request::Append { payload, .. } => order.push(Some(payload[0])),
                Request::AppendBatch { appends } => {
                    assert!((2..=APPEND_BATCH_MESSAGES_MAX).contains(&appends.len()));
                    order.extend(appends.iter().map(|a| Some(a.payload[0])));
                }
                _ => order.push(None),
            }
        }
        let want: Vec<Option<u8>> = (0..200)
            .map(Some)
            .chain([None])
            .chain((200..250).map(Some))
            .collect();
        assert_eq!(order, want);
        assert!(
            taken.len() < 20,
            "{} bus messages for 251 requests",
            taken.len()
        );
    }

    fn appended(sequence_number: i64) -> Response {
        Response::Appended {
            sequence_number,
            ingest_time_ms: 0,
        }
    }

    #[test]
    fn a_batch_reply_is_split_in_order_and_a_whole_failure_reaches_every_append() {
        let ok = |n| AppendOutcome::Appended {
            sequence_number: n,
            ingest_time_ms: 5,
        };
        let refused = ErrorReply::new(ErrorKind::ResourceNotFound, "no stream");
        let answers = split(
            Ok(Response::AppendedBatch(vec![
                ok(7),
                AppendOutcome::Error(refused.clone()),
                ok(8),
            ])),
            3,
        );
        let got: Vec<_> = answers
            .into_iter()
            .map(|a| a.map(BusReply::into_response).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok(ok(7).into_response()),
                Ok(Response::Error(refused.clone())),
                Ok(ok(8).into_response()),
            ]
        );

        for whole in [
            Ok(Response::Error(refused.clone())),
            Err(BusError::PeerLost),
            // Too few outcomes: never pair an append with another's number.
            Ok(Response::AppendedBatch(vec![ok(1), ok(2)])),
        ] {
            let answers = split(whole, 3);
            assert_eq!(answers.len(), 3);
            assert!(answers.iter().all(|a| a.is_err()));
        }
    }
}
