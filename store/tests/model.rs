//! Model-based property test of the storage engine (`store::engine::Engine`).
//!
//! Random sequences of creates, updates, deletes, batched appends (also to
//! unknown streams, with empty and oversized payloads), reads, `available`,
//! TTL expiry, garbage-collection steps and engine reopens are run both on a
//! real engine in a temporary directory and on a small in-memory model of the
//! documented semantics: per-stream sequence numbers that are never reused,
//! `payload + RECORD_OVERHEAD_BYTES` accounting, segment boundaries, whole
//! segment trimming under `OverwriteOldestData`, `StreamFull` under
//! `RejectNewData`, definition validation and normalisation, and restart
//! behaviour (File streams keep everything, Memory streams keep only their
//! definition and restart at sequence number 0). After every operation the
//! engine's whole visible state (stream list, every description, every
//! stream's full contents, `available`, pending GC, counters) must equal the
//! model's, which proves that the engine implements those semantics for every
//! interleaving proptest tries, and that GC steps and reopens change nothing
//! visible beyond what the model says.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use bus_schema::{
    ErrorKind, ExportDefinition, Message, Persistence, StorageStatus, StrategyOnFull,
    StreamDefinition,
};
use proptest::prelude::*;
use store::engine::{AppendItem, Engine, EngineError, RECORD_OVERHEAD_BYTES};

/// Stream names the ops pick from: three common ones, a rare one and an
/// invalid one.
const NAMES: [&str; 5] = ["a", "b", "c", "d", "bad/name"];

const MAX_SIZE_MIN: i64 = 1024;
const SEGMENT_SIZE_MIN: i64 = 1024;
const SEGMENT_SIZE_MAX: i64 = i32::MAX as i64;
const TTL_MIN: i64 = 60_000;
const TTL_MAX: i64 = 9_223_372_036_854;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- the model

#[derive(Debug, Clone)]
struct Seg {
    last: u64,
    bytes: u64,
    last_ms: i64,
}

#[derive(Debug)]
struct MStream {
    /// Normalised definition (every default filled in).
    def: StreamDefinition,
    oldest: u64,
    next: u64,
    segs: VecDeque<Seg>,
    /// Messages `oldest..next`.
    msgs: VecDeque<Message>,
}

impl MStream {
    fn new(def: StreamDefinition) -> Self {
        MStream {
            def,
            oldest: 0,
            next: 0,
            segs: VecDeque::new(),
            msgs: VecDeque::new(),
        }
    }
    fn total(&self) -> u64 {
        self.segs.iter().map(|s| s.bytes).sum()
    }
    fn max(&self) -> u64 {
        self.def.max_size_bytes.unwrap() as u64
    }
    fn segment_size(&self) -> u64 {
        (self.def.segment_size_bytes.unwrap() as u64).min(self.max())
    }
    fn is_file(&self) -> bool {
        self.def.persistence == Some(Persistence::File)
    }
    fn storage(&self) -> StorageStatus {
        StorageStatus {
            oldest_sequence_number: self.oldest as i64,
            newest_sequence_number: self.next as i64 - 1,
            total_bytes: self.total() as i64,
        }
    }
    fn drop_front(&mut self) {
        let seg = self.segs.pop_front().expect("a segment to drop");
        self.oldest = seg.last + 1;
        while self
            .msgs
            .front()
            .is_some_and(|m| (m.sequence_number as u64) < self.oldest)
        {
            self.msgs.pop_front();
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    streams: BTreeMap<String, MStream>,
    /// GC jobs the engine should have queued (each is small enough to finish
    /// in one step).
    /// Counters of the current engine instance.
    appends: u64,
    segments_dropped: u64,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | ',' | '.' | '-'))
}

/// The model of `validate::normalize` for the fields the test sets.
fn normalize(def: &StreamDefinition) -> Result<StreamDefinition, ErrorKind> {
    let max = def.max_size_bytes.unwrap_or(256 * 1024 * 1024);
    let seg = def.segment_size_bytes.unwrap_or(16 * 1024 * 1024);
    let ok = valid_name(&def.name)
        && max >= MAX_SIZE_MIN
        && (SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&seg)
        && def
            .time_to_live_ms
            .is_none_or(|t| (TTL_MIN..=TTL_MAX).contains(&t))
        && def.strategy_on_full.is_some();
    if !ok {
        return Err(ErrorKind::InvalidRequest);
    }
    let mut out = def.clone();
    out.max_size_bytes = Some(max);
    out.segment_size_bytes = Some(seg);
    out.persistence = Some(def.persistence.unwrap_or(Persistence::File));
    out.flush_on_write = Some(def.flush_on_write.unwrap_or(false));
    Ok(out)
}

impl Model {
    fn create(&mut self, def: &StreamDefinition) -> Result<(), ErrorKind> {
        if self.streams.contains_key(&def.name) {
            return Err(ErrorKind::InvalidRequest);
        }
        let def = normalize(def)?;
        self.streams.insert(def.name.clone(), MStream::new(def));
        Ok(())
    }

    fn update(&mut self, def: &StreamDefinition) -> Result<(), ErrorKind> {
        let new = normalize(def)?;
        let s = self
            .streams
            .get_mut(&def.name)
            .ok_or(ErrorKind::ResourceNotFound)?;
        if new.persistence != s.def.persistence {
            return Err(ErrorKind::UpdateNotAllowed);
        }
        let max = new.max_size_bytes.unwrap();
        if (max as u64) < s.total() || max < new.segment_size_bytes.unwrap() {
            return Err(ErrorKind::InvalidRequest);
        }
        // The engine also applies the TTL with the current time here; the
        // TTLs of the test (>= 60 s) cannot expire anything within one case.
        s.def = new;
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<(), ErrorKind> {
        let s = self
            .streams
            .remove(name)
            .ok_or(ErrorKind::ResourceNotFound)?;
        let _ = s;
        Ok(())
    }

    /// One append; `ingest_ms` is the time the engine reported (or any time
    /// when the engine refused it).
    fn append(&mut self, name: &str, payload: &[u8], ingest_ms: i64) -> Result<u64, ErrorKind> {
        let s = self
            .streams
            .get_mut(name)
            .ok_or(ErrorKind::ResourceNotFound)?;
        if payload.is_empty() {
            return Err(ErrorKind::InvalidRequest);
        }
        let size = payload.len() as u64 + RECORD_OVERHEAD_BYTES;
        let max = s.max();
        if size > max {
            return Err(ErrorKind::InvalidRequest);
        }
        if s.total() + size > max {
            if s.def.strategy_on_full == Some(StrategyOnFull::RejectNewData) {
                return Err(ErrorKind::StreamFull);
            }
            let mut dropped = 0;
            while s.total() + size > max {
                s.drop_front();
                dropped += 1;
            }
            self.segments_dropped += dropped;
        }
        let seq = s.next;
        s.next += 1;
        let segment_size = s.segment_size();
        match s.segs.back_mut() {
            Some(seg) if seg.bytes + size <= segment_size => {
                seg.last = seq;
                seg.bytes += size;
                seg.last_ms = ingest_ms;
            }
            _ => s.segs.push_back(Seg {
                last: seq,
                bytes: size,
                last_ms: ingest_ms,
            }),
        }
        s.msgs.push_back(Message {
            sequence_number: seq as i64,
            ingest_time_ms: ingest_ms,
            payload: payload.to_vec(),
        });
        self.appends += 1;
        Ok(seq)
    }

    fn expire(&mut self, now: u64) -> u64 {
        let mut total = 0;
        for s in self.streams.values_mut() {
            let Some(ttl) = s.def.time_to_live_ms else {
                continue;
            };
            let mut dropped = 0;
            while s
                .segs
                .front()
                .is_some_and(|f| (f.last_ms as u64).saturating_add(ttl as u64) < now)
            {
                s.drop_front();
                dropped += 1;
            }
            total += dropped;
        }
        self.segments_dropped += total;
        total
    }

    fn read(&self, name: &str, start: u64, max_count: u64) -> Result<Vec<Message>, ErrorKind> {
        let s = self.streams.get(name).ok_or(ErrorKind::ResourceNotFound)?;
        Ok(s.msgs
            .iter()
            .filter(|m| m.sequence_number as u64 >= start)
            .take(max_count.min(usize::MAX as u64) as usize)
            .cloned()
            .collect())
    }

    fn available(&self, name: &str, start: u64) -> Result<u64, ErrorKind> {
        let s = self.streams.get(name).ok_or(ErrorKind::ResourceNotFound)?;
        Ok(s.next.saturating_sub(start.max(s.oldest)))
    }

    fn reopen(&mut self) {
        for s in self.streams.values_mut() {
            if !s.is_file() {
                *s = MStream::new(s.def.clone());
            }
        }
        self.appends = 0;
        self.segments_dropped = 0;
    }
}

// ------------------------------------------------------------------- the ops

#[derive(Debug, Clone)]
enum MaxSel {
    Abs(i64),
    /// `max(1024, total bytes + n)` of the stream at run time.
    AboveTotal(u16),
    /// One byte less than the stream's total bytes (at least 1024).
    BelowTotal,
}

#[derive(Debug, Clone)]
enum SegSel {
    /// A size between 1024 and the chosen maxSize.
    WithinMax(u16),
    /// A multiple of 128 between 1024 and the chosen maxSize.
    AlignedWithinMax(u8),
    /// The chosen maxSize plus `n` (allowed on create, refused on update).
    AboveMax(u8),
    Abs(i64),
}

#[derive(Debug, Clone)]
enum PersistSel {
    /// The stream's current persistence (File when it does not exist).
    Same,
    /// The other persistence (Memory when the stream does not exist).
    Other,
    /// Not set (File by default).
    Unset,
}

#[derive(Debug, Clone)]
struct DefSpec {
    strategy: StrategyOnFull,
    persistence: PersistSel,
    flush: Option<bool>,
    max: MaxSel,
    seg: SegSel,
    ttl: Option<i64>,
}

#[derive(Debug, Clone)]
enum StartSel {
    Abs(u16),
    FromOldest(u8),
    BeforeNext(u8),
}

#[derive(Debug, Clone)]
enum ExpireSel {
    Zero,
    Max,
    /// The ingest time of segment `seg` of stream `name`, plus its TTL, plus
    /// `delta` ms.
    AroundSegment {
        name: usize,
        seg: u8,
        delta: i8,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        name: usize,
        spec: DefSpec,
    },
    Update {
        name: usize,
        spec: DefSpec,
    },
    Delete {
        name: usize,
    },
    /// One `append_batch` of (stream, payload length).
    Append(Vec<(usize, usize)>),
    Read {
        name: usize,
        start: StartSel,
        max: u64,
    },
    Available {
        name: usize,
        start: StartSel,
    },
    Expire(ExpireSel),
    /// Seal every open chunk and wait until fjall holds everything.
    Sync,
    Reopen {
        sync: bool,
    },
}

/// Stream names: mostly "a" and "b", so that streams fill up; sometimes a
/// rarely used stream and an invalid name.
fn name_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![10 => Just(0usize), 6 => Just(1usize), 3 => Just(2usize), 1 => Just(3usize), 1 => Just(4usize)]
}

/// `aligned`: sizes are multiples of 128 bytes and payloads take 128 or 256
/// bytes with their overhead, so that segments and streams fill exactly.
fn def_strategy(for_update: bool, aligned: bool) -> BoxedStrategy<DefSpec> {
    let strategy = prop_oneof![
        Just(StrategyOnFull::RejectNewData),
        Just(StrategyOnFull::OverwriteOldestData)
    ];
    let persistence = prop_oneof![
        if for_update { 6 } else { 3 } => Just(PersistSel::Same),
        3 => Just(PersistSel::Other),
        1 => Just(PersistSel::Unset),
    ];
    let flush = prop_oneof![Just(None), Just(Some(false)), Just(Some(true))];
    let around_total = if for_update { 6 } else { 0 };
    let (abs, small) = if aligned { (0, 0) } else { (6, 3) };
    let (seg_aligned, seg_within, seg_abs) = if aligned { (8, 0, 0) } else { (3, 6, 2) };
    let max = prop_oneof![
        abs => (1024i64..=4096).prop_map(MaxSel::Abs),
        small => (1024i64..=1600).prop_map(MaxSel::Abs),
        4 => (8i64..=32).prop_map(|k| MaxSel::Abs(128 * k)),
        around_total => prop_oneof![Just(0u16), Just(1u16), 0u16..300].prop_map(MaxSel::AboveTotal),
        around_total / 3 => Just(MaxSel::BelowTotal),
        1 => Just(MaxSel::Abs(1023)),
    ];
    let seg = prop_oneof![
        seg_aligned => any::<u8>().prop_map(SegSel::AlignedWithinMax),
        seg_within => any::<u16>().prop_map(SegSel::WithinMax),
        seg_abs => (1024i64..=4096).prop_map(SegSel::Abs),
        1 => prop_oneof![Just(0u8), Just(1u8)].prop_map(SegSel::AboveMax),
        1 => Just(SegSel::Abs(1023)),
    ];
    let ttl = prop_oneof![
        6 => Just(None),
        3 => (TTL_MIN..=2 * TTL_MIN).prop_map(Some),
        1 => Just(Some(TTL_MIN - 1)),
    ];
    (strategy, persistence, flush, max, seg, ttl)
        .prop_map(|(strategy, persistence, flush, max, seg, ttl)| DefSpec {
            strategy,
            persistence,
            flush,
            max,
            seg,
            ttl,
        })
        .boxed()
}

fn start_strategy() -> impl Strategy<Value = StartSel> {
    prop_oneof![
        (0u16..400).prop_map(StartSel::Abs),
        (0u8..12).prop_map(StartSel::FromOldest),
        (0u8..12).prop_map(StartSel::BeforeNext),
    ]
}

fn payload_len_strategy(aligned: bool) -> BoxedStrategy<usize> {
    let (mixed, exact) = if aligned { (0, 90) } else { (90, 5) };
    prop_oneof![
        mixed => 1usize..200,
        exact => prop_oneof![3 => Just(96usize), 1 => Just(224usize)],
        3 => Just(0usize),
        4 => 900usize..4200,
    ]
    .boxed()
}

fn op_strategy(aligned: bool) -> impl Strategy<Value = Op> {
    let append_target = prop_oneof![
        10 => Just(0usize),
        6 => Just(1usize),
        3 => Just(2usize),
        1 => Just(3usize),
        1 => Just(4usize)
    ];
    prop_oneof![
        8 => (name_strategy(), def_strategy(false, aligned))
            .prop_map(|(name, spec)| Op::Create { name, spec }),
        5 => (name_strategy(), def_strategy(true, aligned))
            .prop_map(|(name, spec)| Op::Update { name, spec }),
        2 => name_strategy().prop_map(|name| Op::Delete { name }),
        40 => prop::collection::vec((append_target, payload_len_strategy(aligned)), 1..=5)
            .prop_map(Op::Append),
        8 => (
            name_strategy(),
            start_strategy(),
            prop_oneof![Just(0u64), 1u64..40, Just(u64::MAX)]
        )
            .prop_map(|(name, start, max)| Op::Read { name, start, max }),
        3 => (name_strategy(), start_strategy())
            .prop_map(|(name, start)| Op::Available { name, start }),
        3 => prop_oneof![
            Just(ExpireSel::Zero),
            Just(ExpireSel::Max),
            (0usize..3, any::<u8>(), -1i8..=1)
                .prop_map(|(name, seg, delta)| ExpireSel::AroundSegment { name, seg, delta }),
        ]
        .prop_map(Op::Expire),
        5 => Just(Op::Sync),
        5 => any::<bool>().prop_map(|sync| Op::Reopen { sync }),
    ]
}

/// A few creates first (so that appends find streams), then random ops.
fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    any::<bool>().prop_flat_map(|aligned| {
        let creates = prop::collection::vec((0usize..3, def_strategy(false, aligned)), 0..=3);
        (creates, prop::collection::vec(op_strategy(aligned), 1..=60)).prop_map(|(creates, ops)| {
            creates
                .into_iter()
                .map(|(name, spec)| Op::Create { name, spec })
                .chain(ops)
                .collect()
        })
    })
}

// ---------------------------------------------------------------- the runner

fn refused<T>(r: Result<T, EngineError>) -> Result<Result<T, ErrorKind>, TestCaseError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(EngineError::Refused(e)) => Ok(Err(e.kind)),
        Err(e @ EngineError::Storage(_)) => Err(TestCaseError::fail(format!(
            "unexpected storage failure: {e}"
        ))),
    }
}

fn open(dir: &Path) -> Result<Engine, TestCaseError> {
    Engine::open(dir).map_err(|e| TestCaseError::fail(format!("open failed: {e}")))
}

/// Distinct content for every append attempt, so that a message read back
/// from the wrong place is caught.
fn payload(counter: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (counter >> (8 * (i % 4))) as u8 ^ (i / 4) as u8)
        .collect()
}

fn build_def(name: &str, spec: &DefSpec, model: &Model) -> StreamDefinition {
    let current = model.streams.get(name);
    let total = current.map_or(0, |s| s.total()) as i64;
    let is_file = current.is_none_or(|s| s.is_file());
    let persistence = match (&spec.persistence, is_file) {
        (PersistSel::Same, true) | (PersistSel::Other, false) => Some(Persistence::File),
        (PersistSel::Same, false) | (PersistSel::Other, true) => Some(Persistence::Memory),
        (PersistSel::Unset, _) => None,
    };
    let max = match spec.max {
        MaxSel::Abs(m) => m,
        MaxSel::AboveTotal(n) => (total + n as i64).max(MAX_SIZE_MIN),
        MaxSel::BelowTotal => (total - 1).max(MAX_SIZE_MIN),
    };
    let seg = match spec.seg {
        SegSel::WithinMax(f) => {
            let span = (max - SEGMENT_SIZE_MIN + 1).max(1);
            SEGMENT_SIZE_MIN + f as i64 % span
        }
        SegSel::AlignedWithinMax(k) => {
            let steps = ((max - SEGMENT_SIZE_MIN) / 128 + 1).max(1);
            SEGMENT_SIZE_MIN + 128 * (k as i64 % steps)
        }
        SegSel::AboveMax(n) => max + n as i64,
        SegSel::Abs(s) => s,
    };
    StreamDefinition {
        name: name.to_string(),
        max_size_bytes: Some(max),
        segment_size_bytes: Some(seg),
        time_to_live_ms: spec.ttl,
        strategy_on_full: Some(spec.strategy),
        persistence,
        flush_on_write: spec.flush,
        exports: ExportDefinition::default(),
    }
}

fn resolve_start(sel: &StartSel, model: &Model, name: &str) -> u64 {
    let s = model.streams.get(name);
    match *sel {
        StartSel::Abs(n) => n as u64,
        StartSel::FromOldest(k) => s.map_or(0, |s| s.oldest) + k as u64,
        StartSel::BeforeNext(k) => s.map_or(0, |s| s.next).saturating_sub(k as u64),
    }
}

fn step(
    engine: &mut Engine,
    model: &mut Model,
    op: &Op,
    counter: &mut u32,
) -> Result<(), TestCaseError> {
    match op {
        Op::Create { name, spec } => {
            let def = build_def(NAMES[*name], spec, model);
            let got = refused(engine.create(&def))?;
            prop_assert_eq!(got, model.create(&def), "create {:?}", def);
        }
        Op::Update { name, spec } => {
            let def = build_def(NAMES[*name], spec, model);
            let got = refused(engine.update(&def))?;
            prop_assert_eq!(got, model.update(&def), "update {:?}", def);
        }
        Op::Delete { name } => {
            let got = refused(engine.delete(NAMES[*name]))?;
            prop_assert_eq!(got, model.delete(NAMES[*name]));
        }
        Op::Append(items) => {
            let payloads: Vec<(&str, Vec<u8>)> = items
                .iter()
                .map(|&(name, len)| {
                    *counter += 1;
                    (NAMES[name], payload(*counter, len))
                })
                .collect();
            let batch: Vec<AppendItem<'_>> = payloads
                .iter()
                .map(|(stream, payload)| AppendItem { stream, payload })
                .collect();
            let t0 = now_ms();
            let (results, newest) = refused(engine.append_batch(&batch))?
                .map_err(|k| TestCaseError::fail(format!("append_batch refused: {k:?}")))?;
            let t1 = now_ms();
            prop_assert_eq!(results.len(), batch.len());
            let mut want_newest: BTreeMap<String, i64> = BTreeMap::new();
            for ((stream, payload), got) in payloads.iter().zip(&results) {
                let ingest = match got {
                    Ok((_, ms)) => *ms,
                    Err(_) => t0,
                };
                let want = model.append(stream, payload, ingest);
                match (want, got) {
                    (Ok(seq), Ok((got_seq, ms))) => {
                        prop_assert_eq!(seq as i64, *got_seq, "sequence number in {}", stream);
                        prop_assert!(
                            (t0..=t1).contains(ms),
                            "ingest time {} outside [{}, {}]",
                            ms,
                            t0,
                            t1
                        );
                        want_newest.insert(stream.to_string(), seq as i64);
                    }
                    (Err(kind), Err(e)) => prop_assert_eq!(kind, e.kind, "{}", e.message),
                    (want, got) => {
                        return Err(TestCaseError::fail(format!(
                            "append of {} bytes to {stream:?}: model {want:?}, engine {got:?}",
                            payload.len()
                        )))
                    }
                }
            }
            prop_assert_eq!(newest, want_newest.into_iter().collect::<Vec<_>>());
        }
        Op::Read { name, start, max } => {
            let name = NAMES[*name];
            let start = resolve_start(start, model, name);
            let got = refused(engine.read(name, start, *max))?;
            prop_assert_eq!(
                got,
                model.read(name, start, *max),
                "read({}, {}, {})",
                name,
                start,
                max
            );
        }
        Op::Available { name, start } => {
            let name = NAMES[*name];
            let start = resolve_start(start, model, name);
            let got = refused(engine.available(name, start))?;
            prop_assert_eq!(
                got,
                model.available(name, start),
                "available({}, {})",
                name,
                start
            );
        }
        Op::Expire(sel) => {
            let now = match *sel {
                ExpireSel::Zero => 0,
                ExpireSel::Max => u64::MAX,
                ExpireSel::AroundSegment { name, seg, delta } => model
                    .streams
                    .get(NAMES[name])
                    .and_then(|s| {
                        let ttl = s.def.time_to_live_ms?;
                        let seg = s.segs.get(seg as usize % s.segs.len().max(1))?;
                        Some((seg.last_ms + ttl + delta as i64) as u64)
                    })
                    .unwrap_or(0),
            };
            let got = refused(engine.expire(now))?;
            prop_assert_eq!(got, Ok(model.expire(now)), "expire({})", now);
        }
        Op::Sync => {
            refused(engine.sync())?
                .map_err(|k| TestCaseError::fail(format!("sync refused: {k:?}")))?;
        }
        Op::Reopen { .. } => unreachable!("handled by the caller"),
    }
    Ok(())
}

/// Compares everything the engine shows with the model.
fn check_all(engine: &Engine, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        engine.list(),
        model.streams.keys().cloned().collect::<Vec<_>>()
    );
    prop_assert_eq!(engine.stream_count(), model.streams.len());
    for name in NAMES {
        let m = model.streams.get(name);
        prop_assert_eq!(engine.exists(name), m.is_some());
        match (refused(engine.describe(name))?, m) {
            (Ok(info), Some(m)) => {
                prop_assert_eq!(&info.definition, &m.def, "definition of {}", name);
                prop_assert_eq!(info.storage, m.storage(), "storage of {}", name);
                prop_assert!(info.export_statuses.is_empty());
            }
            (Err(kind), None) => prop_assert_eq!(kind, ErrorKind::ResourceNotFound),
            (got, want) => {
                return Err(TestCaseError::fail(format!(
                    "describe({name:?}): engine {got:?}, model {want:?}"
                )))
            }
        }
        let got = refused(engine.read(name, 0, u64::MAX))?;
        prop_assert_eq!(got, model.read(name, 0, u64::MAX), "contents of {}", name);
        let got = refused(engine.available(name, 0))?;
        prop_assert_eq!(got, model.available(name, 0), "available({}, 0)", name);
    }
    prop_assert_eq!(engine.stats.appends, model.appends, "stats.appends");
    prop_assert_eq!(
        engine.stats.segments_dropped,
        model.segments_dropped,
        "stats.segments_dropped"
    );
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut engine = open(dir.path())?;
    let mut model = Model::default();
    let mut counter = 0u32;
    for (i, op) in ops.iter().enumerate() {
        let r = match op {
            Op::Reopen { sync } => {
                if *sync {
                    refused(engine.sync())?
                        .map_err(|k| TestCaseError::fail(format!("sync refused: {k:?}")))?;
                }
                drop(engine);
                engine = open(dir.path())?;
                model.reopen();
                Ok(())
            }
            _ => step(&mut engine, &mut model, op, &mut counter),
        }
        .and_then(|()| check_all(&engine, &model));
        r.map_err(|e| TestCaseError::fail(format!("at op #{i} {op:?}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in ops_strategy()) {
        run(&ops)?;
    }
}
