//! The storage engine: streams, their data, segments, trimming and export
//! cursors, on fjall (File streams) or in memory (Memory streams).
//!
//! Single-threaded by design: the store's event loop owns it and calls it
//! with batches. It knows nothing of ZeroMQ or of the SDK wire format. Its
//! changes go through the write-ahead log ([`crate::wal`]) and reach fjall
//! shortly after. A File stream's messages are grouped into chunks (see
//! `crate::keys`): the open chunk and the sealed chunks the applier has not
//! inserted yet stay in memory, and reads merge them with fjall. A write that
//! fails (log or fjall) is fatal (`EngineError::Storage`): the engine's
//! memory may then be ahead of the disk, so the engine refuses everything
//! from then on (no reader sees a change that was not stored) and the process
//! exits and is restarted, which reopens a consistent database (fjall's own
//! advice after a failed write).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use bus_schema::{
    messages::MessageRef, ErrorKind, ErrorReply, ExportProgress, ExportStatus, LossCause,
    LossEntry, Message, Persistence, StorageStatus, StrategyOnFull, StreamDefinition, StreamInfo,
    MESSAGE_PAYLOAD_BYTES_MAX, READ_RESPONSE_BYTES_TARGET,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};

use crate::keys::*;
use crate::ledger::{Ledger, LedgerChange, Loss};
use crate::validate;
use crate::wal::{Keyspaces, Ks, WriteSet, Writer, LOG_DIR};

/// Bytes counted per message on top of its payload (key, ingest time and
/// bookkeeping), so that `maxSize` bounds memory and disk even for tiny
/// messages.
pub const RECORD_OVERHEAD_BYTES: u64 = 32;

/// A stream's open chunk is sealed (and handed to fjall) once it holds this
/// many bytes; it is sealed earlier when its segment ends and when the
/// write-ahead log starts a new file. Reading one message from fjall reads
/// its whole chunk.
pub const CHUNK_BYTES_TARGET: usize = 1024 * 1024;

/// fjall block cache, in bytes.
pub const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Memtable size of each stream's chunk keyspace, in bytes (chunks are
/// ingested, so it stays empty; a bound all the same).
pub const DATA_MEMTABLE_BYTES: u64 = 1024 * 1024;
/// Memtable size of the small keyspaces, in bytes.
pub const SMALL_MEMTABLE_BYTES: u64 = 2 * 1024 * 1024;
/// Writes not synced by `flushOnWrite` (appends, and every definition,
/// cursor, trim and removal) reach the disk about this many ms after they
/// are acknowledged: a background thread syncs the write-ahead log's files
/// and fjall's journal at this interval when something was written. Besides bounding what a power loss
/// can take, it keeps each journal rotation's own sync (done under the
/// journal lock) small.
pub const BACKGROUND_SYNC_INTERVAL_MS: u64 = 50;

/// fjall background threads (flush and compaction). One: with two, fjall
/// 3.1.13's first worker hands every compaction request back to the queue
/// for the second and takes it again itself until the second wakes, a busy
/// loop that cost 0.13-0.18 cores during a sustained append load (every
/// chunk ingestion sends a compaction request); with one, the store used 15%
/// less CPU per append and appended 5-15% faster (`peer-bench --only sm` on
/// tmpfs, 2 alternating runs each: 5.1-5.4 against 6.3-6.5 µs).
/// A single worker must never wait for room in its own queue: it does so
/// only when it rotates a memtable on request of fjall's write path, which
/// asks when a memtable grows past fjall's `max_memtable_size`. The applier
/// rotates at [`SMALL_MEMTABLE_BYTES`], a quarter of that
/// ([`FJALL_MEMTABLE_BYTES`]), so fjall never asks (a stale request, as
/// seen with two workers at about 140,000 appends/s, ended in a worker
/// blocked on its own full queue).
pub const WORKER_THREADS: usize = 1;
/// File streams a store holds at most. Each has a keyspace of its own, and
/// fjall 3.1.13's recovery puts one message per keyspace holding tables into
/// its worker queue (1,000 messages) before the worker starts, waiting for
/// room: a database with more such keyspaces never finishes opening (seen:
/// 1,100 File streams with a message each, the store stuck in
/// `Database::recover`; the supervisor's liveness probe then restarts it
/// forever). The four keyspaces of the store's own come on top.
pub const FILE_STREAMS_MAX: usize = 900;
/// fjall's own memtable limit for the small keyspaces, in bytes: above the
/// size the applier rotates at, so that fjall's write path never requests a
/// rotation (see [`WORKER_THREADS`]).
pub const FJALL_MEMTABLE_BYTES: u64 = 4 * SMALL_MEMTABLE_BYTES;
/// The name fjall gives its worker threads.
const FJALL_WORKER_NAME: &str = "fjall:worker";
/// Journal size after which fjall flushes memtables, in bytes.
pub const JOURNAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Data block size of the data keyspace, in bytes. Large blocks suit the
/// access pattern (appends, then range scans) and keep the block index small.
pub const DATA_BLOCK_BYTES: u32 = 64 * 1024;

/// Most table and blob files fjall keeps open at once (its descriptor
/// cache); a file not in it is opened when read.
pub const FJALL_FILES_CACHED_MAX: usize = 256;
/// Fewest files fjall's descriptor cache holds, however low the limit.
pub const FJALL_FILES_CACHED_MIN: usize = 16;

/// The size of fjall's descriptor cache: a quarter of the process's
/// open-file limit (raised to its hard limit at start-up, `bus::limits`),
/// within [`FJALL_FILES_CACHED_MIN`]..=[`FJALL_FILES_CACHED_MAX`]; the
/// rest is left to the log, fjall's journal and the bus.
pub fn fjall_files_cached() -> usize {
    let quarter = bus::limits::open_files().soft / 4;
    (quarter.min(FJALL_FILES_CACHED_MAX as u64) as usize).max(FJALL_FILES_CACHED_MIN)
}

/// The fjall database with the store's settings (also what `store-bench`
/// measures).
pub fn database_builder(dir: &Path) -> fjall::DatabaseBuilder<Database> {
    Database::builder(dir)
        .cache_size(CACHE_BYTES)
        .max_journaling_size(JOURNAL_BYTES_MAX)
        // A bounded descriptor cache: without one, fjall 3.1.13 keeps every
        // table and blob file open for as long as it exists (two descriptors
        // per 1 MiB chunk: a 2 GiB backlog is 4,000 descriptors, and a store
        // limited to 1,024 failed with "Too many open files" after about
        // 500 MiB and could not reopen). Files of trimmed chunks and of
        // deleted streams leave the cache when fjall removes them (the
        // applier drops a deleted stream's chunks before its keyspace, see
        // `wal`).
        .max_cached_files(Some(fjall_files_cached()))
        .worker_threads(WORKER_THREADS)
}

/// Options of a stream's chunk keyspace. Chunks are only ever range-scanned,
/// so no bloom filters are built, and no index block is pinned in memory:
/// memory stays bounded by the memtables and the block cache whatever the
/// backlog. Chunks go to blob files (key-value separation), so compaction
/// rewrites keys, not payloads, and the blob files of trimmed chunks are
/// dropped whole.
pub fn data_keyspace_options() -> KeyspaceCreateOptions {
    use fjall::config::{BlockSizePolicy, FilterPolicy, PinningPolicy};
    // Chunks are ingested in key order as tables of one chunk each and
    // leave by whole tables: nothing to merge. FIFO compaction with no
    // limit never rewrites or drops anything by itself (trims drop tables).
    let never_merge = std::sync::Arc::new(fjall::compaction::Fifo::new(u64::MAX, None));
    KeyspaceCreateOptions::default()
        .compaction_strategy(never_merge)
        .max_memtable_size(DATA_MEMTABLE_BYTES)
        .data_block_size_policy(BlockSizePolicy::all(DATA_BLOCK_BYTES))
        .filter_policy(FilterPolicy::disabled())
        .filter_block_pinning_policy(PinningPolicy::disabled())
        .index_block_pinning_policy(PinningPolicy::disabled())
        .with_kv_separation(Some(fjall::KvSeparationOptions::default()))
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is refused; nothing changed.
    #[error("{0}")]
    Refused(ErrorReply),
    /// The database failed; the process must exit.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<ErrorReply> for EngineError {
    fn from(e: ErrorReply) -> Self {
        EngineError::Refused(e)
    }
}

impl From<fjall::Error> for EngineError {
    fn from(e: fjall::Error) -> Self {
        EngineError::Storage(e.to_string())
    }
}

/// A database that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the store database at {path}: {reason}")]
pub struct OpenError {
    pub path: PathBuf,
    pub reason: String,
}

fn not_found(name: &str) -> EngineError {
    EngineError::Refused(ErrorReply::new(
        ErrorKind::ResourceNotFound,
        format!("stream {name:?} does not exist"),
    ))
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::Refused(ErrorReply::new(ErrorKind::InvalidRequest, message))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    first: u64,
    rec: SegmentRecord,
    /// The engine's `clock_steps_ms` when the segment last took a message
    /// (memory only): the wall-clock steps since then do not age it.
    steps_ms: u64,
}

/// A sealed chunk that fjall may not hold yet.
struct Sealed {
    first: u64,
    last: u64,
    value: Slice,
    /// Its number at the applier ([`Writer::send_chunk`]); `None` until
    /// sent, which happens only once the log holds its messages.
    job: Option<u64>,
}

struct MemRecord {
    ingest_ms: u64,
    payload: Vec<u8>,
}

struct Stream {
    id: u64,
    created_ms: u64,
    def: StreamDefinition,
    /// First readable sequence number.
    oldest: u64,
    /// Next sequence number to assign.
    next: u64,
    segments: VecDeque<Segment>,
    total_bytes: u64,
    /// Records `oldest..next` of a Memory stream.
    mem: Option<VecDeque<MemRecord>>,
    /// File streams: sequence numbers below this may have been issued
    /// (durably recorded; see [`StreamState::reserved`]).
    reserved: u64,
    /// File streams: sequence numbers skipped after a power loss.
    holes: Vec<(u64, u64)>,
    /// A File stream's chunk keyspace.
    ks: Option<Keyspace>,
    /// Sealed chunks fjall may not hold yet, in order.
    sealed: VecDeque<Sealed>,
    /// The chunk being filled (File streams), always in the newest segment.
    open: Option<ChunkBuilder>,
    cursors: BTreeMap<String, ExportStatus>,
    /// Appends refused because the stream was full (`RejectNewData`),
    /// since this process started.
    rejected_full: u64,
}

impl Stream {
    fn new(id: u64, created_ms: u64, def: StreamDefinition, ks: Option<Keyspace>) -> Stream {
        let memory = def.persistence == Some(Persistence::Memory);
        Stream {
            id,
            created_ms,
            def,
            oldest: 0,
            next: 0,
            segments: VecDeque::new(),
            total_bytes: 0,
            mem: memory.then(VecDeque::new),
            reserved: 0,
            holes: Vec::new(),
            ks,
            sealed: VecDeque::new(),
            open: None,
            cursors: BTreeMap::new(),
            rejected_full: 0,
        }
    }
    /// The first sequence number held in memory: fjall holds every earlier
    /// one (that is not trimmed).
    fn memory_first(&self) -> u64 {
        self.sealed
            .front()
            .map(|c| c.first)
            .or(self.open.as_ref().map(|o| o.first))
            .unwrap_or(self.next)
    }
    /// The record of the bounds that segments alone cannot tell.
    fn state_record(&self) -> StreamState {
        StreamState {
            oldest: self.oldest,
            next_floor: self.next,
            reserved: self.reserved,
            holes: self.holes.clone(),
        }
    }
    /// Messages in `from..self.next` (holes left by a power loss excluded).
    fn count_from(&self, from: u64) -> u64 {
        let skipped: u64 = self
            .holes
            .iter()
            .map(|&(a, b)| b.min(self.next).saturating_sub(a.max(from)))
            .sum();
        self.next.saturating_sub(from).saturating_sub(skipped)
    }
    /// Seals the open chunk (not yet sent to the applier).
    fn seal(&mut self) {
        if let Some((key, value)) = self.open.take().and_then(ChunkBuilder::finish) {
            if let Some((first, last)) = parse_chunk_key(&key) {
                self.sealed.push_back(Sealed {
                    first,
                    last,
                    value: Slice::from(value),
                    job: None,
                });
            }
        }
    }
    fn is_file(&self) -> bool {
        self.mem.is_none()
    }
    fn max_size(&self) -> u64 {
        self.def.max_size_bytes.unwrap_or(0).max(0) as u64
    }
    fn segment_size(&self) -> u64 {
        (self.def.segment_size_bytes.unwrap_or(0).max(0) as u64).min(self.max_size())
    }
    fn strategy(&self) -> StrategyOnFull {
        self.def
            .strategy_on_full
            .unwrap_or(StrategyOnFull::RejectNewData)
    }
    fn storage_status(&self) -> StorageStatus {
        StorageStatus {
            oldest_sequence_number: self.oldest as i64,
            newest_sequence_number: self.next as i64 - 1,
            total_bytes: self.total_bytes as i64,
        }
    }
    fn default_status(&self, identifier: &str) -> ExportStatus {
        let start = self
            .def
            .exports
            .all()
            .into_iter()
            .find(|(_, c)| c.identifier == identifier)
            .and_then(|(_, c)| c.start_sequence_number)
            .unwrap_or(0);
        ExportStatus {
            export_identifier: identifier.to_string(),
            last_exported_sequence_number: start - 1,
            last_export_time_ms: None,
            error_message: None,
            exported_bytes: 0,
            exported_messages: 0,
            skipped_messages: 0,
            oldest_unexported_ingest_ms: None,
        }
    }
    fn info(&self) -> StreamInfo {
        let export_statuses = self
            .def
            .exports
            .all()
            .into_iter()
            .map(|(_, c)| {
                self.cursors
                    .get(&c.identifier)
                    .cloned()
                    .unwrap_or_else(|| self.default_status(&c.identifier))
            })
            .collect();
        StreamInfo {
            incarnation: self.id,
            definition: self.def.clone(),
            storage: self.storage_status(),
            export_statuses,
        }
    }
}

/// One append of a batch.
pub struct AppendItem<'a> {
    pub stream: &'a str,
    pub payload: &'a [u8],
}

/// The outcome of one append of a batch: (sequence number, ingest ms).
pub type AppendResult = Result<(i64, i64), ErrorReply>;

/// What a batch did: one result per item, and the newest sequence number of
/// every stream that took data.
pub type BatchOutcome = (Vec<AppendResult>, Vec<(String, i64)>);

/// Counters the store reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct EngineStats {
    pub appends: u64,
    /// Appends refused because the disk was full.
    pub refused_disk_full: u64,
    pub syncs: u64,
    pub segments_dropped: u64,
}

/// The background sync thread; stops when dropped.
struct BackgroundSync {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundSync {
    fn start(
        db: Database,
        dir: PathBuf,
        log: std::sync::Arc<crate::wal::LogSync>,
    ) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let dirty = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, dirty, failed) = (stop.clone(), dirty.clone(), failed.clone());
            std::thread::Builder::new()
                .name("store-sync".into())
                .spawn(move || {
                    crate::priority::lower_current_thread();
                    let mut journal = JournalSync { dir, open: None };
                    while !stop.load(Ordering::SeqCst) {
                        // Parked, not asleep, so that a stop is immediate.
                        std::thread::park_timeout(std::time::Duration::from_millis(
                            BACKGROUND_SYNC_INTERVAL_MS,
                        ));
                        if let Err(e) = log.sync() {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("syncing the write-ahead log: {e}"));
                            return;
                        }
                        if dirty.swap(false, Ordering::SeqCst) {
                            if let Err(e) = journal.sync(&db) {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                return;
                            }
                        }
                    }
                })?
        };
        Ok(Self {
            stop,
            dirty,
            failed,
            thread: Some(thread),
        })
    }
}

/// Syncs fjall's journal to disk without holding fjall's journal lock
/// through the disk flush. `Database::persist(SyncData)` keeps that lock,
/// and so every commit, waiting for the whole `fdatasync` (about 1 ms per
/// 50 ms here; measured on fjall alone at a steady 10,000 appends/s, the
/// commit p99 went from 0.85-0.99 ms to 0.30-0.38 ms without it). Instead,
/// fjall's buffer is handed to the kernel under the lock (a copy), and the
/// active journal file is synced through a descriptor of our own.
///
/// This knows fjall 3's journal layout: files `<n>.jnl` in the database
/// directory, the active one with the highest `n` (tested in
/// `the_active_journal_is_found_and_synced_through_our_own_descriptor`). If
/// none is found, fjall's own sync runs. A rotation in between is harmless:
/// fjall syncs a journal fully when it seals it.
struct JournalSync {
    dir: PathBuf,
    open: Option<(u64, std::fs::File)>,
}

impl JournalSync {
    fn sync(&mut self, db: &Database) -> Result<(), String> {
        db.persist(PersistMode::Buffer).map_err(|e| e.to_string())?;
        let Some(id) = active_journal(&self.dir) else {
            return db.persist(PersistMode::SyncData).map_err(|e| e.to_string());
        };
        if self.open.as_ref().map(|(open, _)| *open) != Some(id) {
            match std::fs::File::open(self.dir.join(format!("{id}.jnl"))) {
                Ok(f) => self.open = Some((id, f)),
                // Sealed and removed in between: fjall synced it.
                Err(_) => return db.persist(PersistMode::SyncData).map_err(|e| e.to_string()),
            }
        }
        match &self.open {
            Some((_, f)) => f
                .sync_data()
                .map_err(|e| format!("syncing the journal: {e}")),
            None => Ok(()),
        }
    }
}

/// The number of fjall's active journal file in `dir` (see [`JournalSync`]).
fn active_journal(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".jnl")?.parse().ok())
        .max()
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

pub struct Engine {
    path: PathBuf,
    sync: BackgroundSync,
    db: Database,
    keyspaces: Keyspaces,
    ks_streams: Keyspace,
    ks_state: Keyspace,
    ks_meta: Keyspace,
    streams: BTreeMap<String, Stream>,
    /// Streams whose `sealed` is not empty.
    with_sealed: BTreeSet<String>,
    /// Streams with sealed chunks not sent to the applier yet.
    unsent: BTreeSet<String>,
    writer: Writer,
    next_stream_id: u64,
    /// Why the engine stopped: after a failed write it refuses everything.
    failed: Option<String>,
    /// Forward steps of the wall clock seen by [`Engine::observe_clock`],
    /// in ms, summed.
    clock_steps_ms: u64,
    /// The wall clock and the monotonic clock at the last observation.
    last_clock: Option<(u64, std::time::Instant)>,
    /// Where messages went that were not exported (`ledger`).
    ledger: Ledger,
    /// Time to write (and sync, for `flushOnWrite`) each change to the log.
    pub commit_seconds: bus_schema::metrics::Histogram,
    pub stats: EngineStats,
}

/// Adds what recording `loss` changes to `batch`.
fn record_loss(ledger: &mut Ledger, batch: &mut WriteSet, loss: Loss<'_>) {
    for change in ledger.record(loss) {
        match change {
            LedgerChange::Put(k, e) => batch.insert(Ks::Meta, k, cbor(&e)),
            LedgerChange::Remove(k) => batch.remove(Ks::Meta, k),
        }
    }
}

fn now_ms() -> u64 {
    bus::unix_ms()
}

/// Sequence numbers a File stream reserves at a time: the reservation is
/// written and synced with the append that needs it (one sync per this many
/// appends to a stream), and after a power loss the stream goes on after it.
pub const SEQ_RESERVE_STEP: u64 = 100_000;

/// Name of the marker a running store keeps in the log directory: the boot
/// id of the machine when it opened; removed by a clean close. Found at open
/// with another boot id, it means the machine stopped (a power loss, a
/// reset) while the store ran, and appends not synced may be lost.
pub const RUNNING_MARKER: &str = "running";

/// This boot of the machine (Linux: `/proc/sys/kernel/random/boot_id`).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Records that the store runs in boot `boot`; returns whether the store
/// was running, unclosed, in another boot (or one that cannot be told).
fn mark_running(log_dir: &Path, boot: &str) -> Result<bool, String> {
    let path = log_dir.join(RUNNING_MARKER);
    let previous = match std::fs::read_to_string(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let lost = previous.is_some_and(|b| b.trim().is_empty() || boot.is_empty() || b.trim() != boot);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut f, boot.as_bytes())?;
        f.sync_all()?;
        std::fs::File::open(log_dir)?.sync_all()
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(lost)
}

/// A wall clock that runs ahead of the monotonic clock by more than this
/// between two observations (about a second apart) has stepped, in ms.
pub const CLOCK_STEP_TOLERANCE_MS: u64 = 2_000;

/// Name of the disk reserve file, in the log directory.
pub const DISK_RESERVE_FILE: &str = "disk.reserve";
/// Size of the disk reserve, in bytes: preallocated at open when the disk
/// has room for it besides the log's own headroom, and removed at the next
/// open, so that a store stopped by a full disk (fjall fails a flush) can
/// reopen and serve what it holds while the disk stays full.
pub const DISK_RESERVE_BYTES: u64 = 8 * 1024 * 1024;

/// Creates the disk reserve if there is room for it; a store without one
/// only logs it.
fn make_reserve(path: &Path) {
    let room = crate::wal::free_bytes(path.parent().unwrap_or(path))
        .is_ok_and(|free| free >= DISK_RESERVE_BYTES + crate::wal::APPEND_DISK_HEADROOM_BYTES);
    let made = room
        && std::fs::File::create(path).is_ok_and(|f| {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain system call on a descriptor we own.
            unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, DISK_RESERVE_BYTES as libc::off_t) == 0 }
        });
    if !made {
        let _ = std::fs::remove_file(path);
        tracing::warn!(
            path = %path.display(),
            "no room for the disk reserve; a store stopped by a full disk may not reopen until space is freed"
        );
    }
}

/// Loads every definition, segment table and cursor (no message data);
/// returns the next stream id.
fn load(ks: &Keyspaces, streams: &mut BTreeMap<String, Stream>) -> Result<u64, String> {
    let [ks_streams, ks_state, ks_meta] = &ks.by_tag;
    let mut next_stream_id = 1;
    if let Some(v) = ks_meta
        .get(META_NEXT_STREAM_ID)
        .map_err(|e| e.to_string())?
    {
        next_stream_id = u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| "meta next_stream_id is not 8 bytes".to_string())?,
        );
    }
    let mut by_id: HashMap<u64, String> = HashMap::new();
    for item in ks_streams.iter() {
        let (k, v) = item.into_inner().map_err(|e| e.to_string())?;
        let name = String::from_utf8(k.to_vec()).map_err(|_| "stream key is not UTF-8")?;
        let rec: StreamRecord =
            from_cbor(&v).map_err(|e| format!("stream record {name:?}: {e}"))?;
        let file = rec.definition.persistence != Some(Persistence::Memory);
        let data = if file {
            ks.stream_keyspace(rec.id, true)?
        } else {
            None
        };
        by_id.insert(rec.id, name.clone());
        streams.insert(
            name,
            Stream::new(rec.id, rec.created_ms, rec.definition, data),
        );
    }
    for item in ks_state.iter() {
        let (k, v) = item.into_inner().map_err(|e| e.to_string())?;
        let Some(parsed) = parse_state_key(&k) else {
            return Err(format!("unexpected state key {k:?}"));
        };
        let sid = match parsed {
            StateKey::State(s) | StateKey::Segment(s, _) | StateKey::Cursor(s, _) => s,
        };
        // State of a deleted stream whose removal was interrupted: skip.
        let Some(stream) = by_id.get(&sid).and_then(|n| streams.get_mut(n)) else {
            continue;
        };
        match parsed {
            StateKey::State(_) => {
                let st: StreamState = from_cbor(&v)?;
                stream.oldest = st.oldest;
                stream.next = stream.next.max(st.next_floor).max(st.oldest);
                stream.reserved = st.reserved;
                stream.holes = st.holes;
            }
            StateKey::Segment(_, first) => {
                let rec: SegmentRecord = from_cbor(&v)?;
                stream.next = stream.next.max(rec.last + 1);
                stream.total_bytes += rec.bytes;
                stream.segments.push_back(Segment {
                    first,
                    rec,
                    steps_ms: 0,
                });
            }
            StateKey::Cursor(_, id) => {
                let status: ExportStatus = from_cbor(&v)?;
                stream.cursors.insert(id.to_string(), status);
            }
        }
    }
    Ok(next_stream_id)
}

/// A message to put in a chunk: (sequence number, ingest ms, payload).
type Record<'a> = (u64, u64, &'a [u8]);

/// Groups `stream`'s messages from `records` (consecutive, from the next
/// one fjall lacks) into chunks, split at segment boundaries and at
/// [`CHUNK_BYTES_TARGET`], and hands each to `emit`.
fn chunk_records<'a>(
    stream: &Stream,
    records: impl Iterator<Item = Record<'a>>,
    mut emit: impl FnMut([u8; 16], Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let starts: BTreeSet<u64> = stream.segments.iter().map(|s| s.first).collect();
    let mut open: Option<ChunkBuilder> = None;
    for (seq, ms, payload) in records {
        let boundary = open.as_ref().is_some_and(|o| {
            o.first + o.count != seq || starts.contains(&seq) || o.bytes() >= CHUNK_BYTES_TARGET
        });
        if boundary {
            if let Some((key, value)) = open.take().and_then(ChunkBuilder::finish) {
                emit(key, value)?;
            }
        }
        open.get_or_insert_with(|| ChunkBuilder::new(seq, CHUNK_BYTES_TARGET))
            .push(ms, payload);
    }
    match open.and_then(ChunkBuilder::finish) {
        Some((key, value)) => emit(key, value),
        None => Ok(()),
    }
}

/// Writes `stream`'s messages from `records` as chunks, straight into its
/// keyspace (used by the layout conversion only).
fn write_chunks<'a>(
    stream: &Stream,
    records: impl Iterator<Item = Record<'a>>,
) -> Result<(), String> {
    let Some(ks) = &stream.ks else {
        return Ok(());
    };
    chunk_records(stream, records, |key, value| {
        let mut ingestion = ks.start_ingestion().map_err(|e| e.to_string())?;
        ingestion.write(key, value).map_err(|e| e.to_string())?;
        ingestion.finish().map_err(|e| e.to_string())
    })
}

/// The first and last sequence numbers of a chunk entry, if any.
fn chunk_bounds(entry: Option<fjall::Guard>) -> Result<Option<(u64, u64)>, String> {
    let Some(g) = entry else { return Ok(None) };
    let k = g.key().map_err(|e| e.to_string())?;
    parse_chunk_key(&k)
        .map(Some)
        .ok_or_else(|| "malformed chunk key".to_string())
}

/// The first sequence number of the first chunk of `ks`, if any.
fn chunks_start(ks: &Keyspace) -> Result<Option<u64>, String> {
    Ok(chunk_bounds(ks.first_key_value())?.map(|(first, _)| first))
}

/// The sequence number after the last chunk of `ks`, if any.
fn chunks_end(ks: &Keyspace) -> Result<Option<u64>, String> {
    Ok(chunk_bounds(ks.last_key_value())?.map(|(_, last)| last + 1))
}

/// Where a File stream's stored messages end: after its last sealed chunk
/// in memory, else after its last chunk in fjall.
fn stored_end(s: &Stream, ks: &Keyspace) -> Result<u64, EngineError> {
    match s.sealed.back() {
        Some(c) => Ok(c.last + 1),
        None => Ok(chunks_end(ks).map_err(EngineError::Storage)?.unwrap_or(0)),
    }
}

/// Rebuilds, from the messages of the write-ahead log, the chunks fjall
/// lacks (those of the open and unsent chunks when the store stopped) as
/// sealed chunks in memory, to be sent to the applier like any other: an
/// open writes nothing, so it works on a full disk too. Returns the streams
/// that got chunks.
fn restore_chunks(
    streams: &mut BTreeMap<String, Stream>,
    messages: &[crate::wal::LoggedMessage],
) -> Result<BTreeSet<String>, String> {
    let mut restored = BTreeSet::new();
    if messages.is_empty() {
        return Ok(restored);
    }
    let by_id: HashMap<u64, String> = streams.iter().map(|(n, s)| (s.id, n.clone())).collect();
    let mut per_stream: BTreeMap<u64, Vec<Record<'_>>> = BTreeMap::new();
    for m in messages {
        let Some((ms, payload)) = parse_data_value(&m.value) else {
            return Err(format!(
                "malformed message record {} of stream {}",
                m.seq, m.sid
            ));
        };
        per_stream
            .entry(m.sid)
            .or_default()
            .push((m.seq, ms, payload));
    }
    for (sid, records) in per_stream {
        // Messages of deleted streams and of Memory streams are not kept.
        let Some(stream) = by_id.get(&sid).and_then(|n| streams.get_mut(n)) else {
            continue;
        };
        let Some(ks) = &stream.ks else { continue };
        let from = chunks_end(ks)?.unwrap_or(0).max(stream.oldest);
        let mut seen = BTreeSet::new();
        let wanted = records
            .into_iter()
            .filter(|(seq, _, _)| *seq >= from && *seq < stream.next && seen.insert(*seq));
        let mut chunks = Vec::new();
        chunk_records(stream, wanted, |key, value| {
            chunks.push((key, value));
            Ok(())
        })?;
        for (key, value) in chunks {
            let (first, last) = parse_chunk_key(&key).ok_or("malformed chunk key")?;
            stream.sealed.push_back(Sealed {
                first,
                last,
                value: Slice::from(value),
                job: None,
            });
            restored.insert(stream.def.name.clone());
        }
    }
    Ok(restored)
}

/// Converts a database of layout 1 (one key per message in keyspace
/// `data`) to chunks, stream by stream, then deletes that keyspace and its
/// pending removals. Runs once; a crash in the middle converts again from
/// the start (chunks are overwritten with the same keys).
fn migrate_layout_1(ks: &Keyspaces, streams: &mut BTreeMap<String, Stream>) -> Result<(), String> {
    if !ks.db.keyspace_exists(LEGACY_KS_DATA) {
        return Ok(());
    }
    let legacy = ks
        .db
        .keyspace(LEGACY_KS_DATA, data_keyspace_options)
        .map_err(|e| e.to_string())?;
    for stream in streams.values() {
        if stream.ks.is_none() || stream.next <= stream.oldest {
            continue;
        }
        tracing::info!(stream = %stream.def.name, "converting messages to chunks (layout 2)");
        let (lo, hi) = (
            data_key(stream.id, stream.oldest),
            data_key(stream.id, stream.next),
        );
        let mut err = None;
        let records = legacy.range(lo..hi).map_while(|item| {
            let parsed = item
                .into_inner()
                .map_err(|e| e.to_string())
                .and_then(|(k, v)| {
                    let (_, seq) = parse_data_key(&k).ok_or("malformed data key")?;
                    let (ms, payload) = parse_data_value(&v).ok_or("malformed data value")?;
                    Ok((seq, ms, payload.to_vec()))
                });
            parsed.map_err(|e| err = Some(e)).ok()
        });
        // Owned payloads, one chunk's worth at a time.
        let mut batch: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        let write = |batch: &mut Vec<(u64, u64, Vec<u8>)>| {
            write_chunks(stream, batch.iter().map(|(s, m, p)| (*s, *m, &p[..])))
                .map(|()| batch.clear())
        };
        for r in records {
            bytes += r.2.len();
            batch.push(r);
            if bytes >= CHUNK_BYTES_TARGET * 16 {
                write(&mut batch)?;
                bytes = 0;
            }
        }
        write(&mut batch)?;
        if let Some(e) = err {
            return Err(e);
        }
    }
    ks.db
        .persist(PersistMode::SyncAll)
        .map_err(|e| e.to_string())?;
    let mut batch = ks.db.batch();
    for item in ks.by_tag[Ks::Meta as usize].prefix(LEGACY_META_GC_PREFIX) {
        batch.remove(
            &ks.by_tag[Ks::Meta as usize],
            item.key().map_err(|e| e.to_string())?,
        );
    }
    batch.commit().map_err(|e| e.to_string())?;
    ks.delete_keyspace(legacy)?;
    ks.db
        .persist(PersistMode::SyncAll)
        .map_err(|e| e.to_string())
}

impl Engine {
    /// Opens (or creates) the database in `dir` and loads every definition,
    /// segment table and cursor. Reads no message data.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_in_boot(dir, &boot_id())
    }

    /// [`Engine::open`] as in boot `boot` of the machine (tests simulate a
    /// power loss with another one).
    pub fn open_in_boot(dir: &Path, boot: &str) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError {
            path: dir.to_path_buf(),
            reason,
        };
        // The reserve goes first: its space lets fjall recover and the log
        // replay even when the disk filled up (a store that stopped on a
        // full disk reopens).
        let reserve = dir.join(LOG_DIR).join(DISK_RESERVE_FILE);
        match std::fs::remove_file(&reserve) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("removing {}: {e}", reserve.display()))),
        }
        let db = database_builder(dir)
            .open()
            .map_err(|e| fail(e.to_string()))?;
        let small = || KeyspaceCreateOptions::default().max_memtable_size(FJALL_MEMTABLE_BYTES);
        let ks_streams = db
            .keyspace(KS_STREAMS, small)
            .map_err(|e| fail(e.to_string()))?;
        let ks_state = db
            .keyspace(KS_STATE, small)
            .map_err(|e| fail(e.to_string()))?;
        let ks_meta = db
            .keyspace(KS_META, small)
            .map_err(|e| fail(e.to_string()))?;
        let keyspaces = Keyspaces {
            db: db.clone(),
            by_tag: [ks_streams.clone(), ks_state.clone(), ks_meta.clone()],
            rotate_at: [SMALL_MEMTABLE_BYTES; 3],
            data_options: data_keyspace_options,
        };
        let log_dir = dir.join(LOG_DIR);
        let mut replayed = crate::wal::replay(&log_dir, &keyspaces).map_err(|e| {
            fail(format!(
                "cannot replay the write-ahead log in {}: {e}",
                log_dir.display()
            ))
        })?;
        if replayed.applied > 0 {
            tracing::info!(
                changes = replayed.applied,
                "replayed changes from the write-ahead log"
            );
        }
        let mut streams = BTreeMap::new();
        let next_stream_id = load(&keyspaces, &mut streams).map_err(fail)?;
        let mut ledger = Ledger::default();
        for item in keyspaces.by_tag[Ks::Meta as usize].prefix(crate::ledger::LEDGER_KEY_PREFIX) {
            let (k, v) = item
                .into_inner()
                .map_err(|e| fail(format!("reading the loss ledger: {e}")))?;
            let entry: LossEntry = from_cbor(&v)
                .map_err(|e| fail(format!("a loss ledger entry is unreadable: {e}")))?;
            ledger.load(k.to_vec(), entry);
        }
        migrate_layout_1(&keyspaces, &mut streams).map_err(|e| {
            fail(format!(
                "cannot convert the database's messages to chunks: {e}"
            ))
        })?;
        let restored = restore_chunks(&mut streams, &replayed.messages)
            .map_err(|e| fail(format!("cannot rebuild chunks from the log: {e}")))?;
        replayed.messages = Vec::new();
        let log_sync = std::sync::Arc::new(crate::wal::LogSync::default());
        let sync = BackgroundSync::start(db.clone(), dir.to_path_buf(), log_sync.clone())
            .map_err(|e| fail(format!("cannot start the sync thread: {e}")))?;
        let writer = Writer::start(
            &log_dir,
            keyspaces.clone(),
            &replayed,
            sync.dirty.clone(),
            log_sync,
        )
        .map_err(|e| fail(format!("cannot start the write-ahead log: {e}")))?;
        crate::priority::lower_threads_named(FJALL_WORKER_NAME, WORKER_THREADS);
        let mut engine = Engine {
            path: dir.to_path_buf(),
            sync,
            db,
            keyspaces,
            ks_streams,
            ks_state,
            ks_meta,
            streams,
            with_sealed: BTreeSet::new(),
            unsent: BTreeSet::new(),
            writer,
            next_stream_id,
            failed: None,
            clock_steps_ms: 0,
            last_clock: None,
            ledger,
            commit_seconds: Default::default(),
            stats: EngineStats::default(),
        };
        // The rebuilt chunks go to fjall first, then the old log files go.
        engine.unsent = restored;
        engine.send_sealed();
        engine.writer.release_replayed();
        let lost = mark_running(&log_dir, boot).map_err(&fail)?;
        if lost {
            engine
                .skip_reserved()
                .map_err(|e| fail(format!("cannot skip the reserved sequence numbers: {e}")))?;
        } else {
            engine
                .record_missing()
                .map_err(|e| fail(format!("cannot record missing messages: {e}")))?;
        }
        make_reserve(&reserve);
        Ok(engine)
    }

    /// After a power loss: every File stream goes on after its reservation,
    /// so that no sequence number that may have been acknowledged (and
    /// exported) before the loss is issued again; the skipped numbers are a
    /// hole that reads pass over.
    fn skip_reserved(&mut self) -> Result<(), EngineError> {
        let mut batch = WriteSet::default();
        for s in self.streams.values_mut() {
            let Some(ks) = s.ks.as_ref().filter(|_| s.is_file()) else {
                continue;
            };
            // Where the stored messages end: the segment table may have
            // reached the disk with appends whose messages did not (fjall's
            // journal and the log are synced one after the other).
            let stored_end = stored_end(s, ks)?;
            let from = stored_end.min(s.next).max(s.oldest);
            let to = s.reserved.max(s.next);
            if to > from {
                tracing::warn!(
                    stream = %s.def.name,
                    from,
                    to,
                    "the machine stopped while the store ran: sequence numbers that may have been issued are skipped"
                );
                s.holes.push((from, to));
                s.next = to;
                batch.insert(Ks::State, state_key(s.id), cbor(&s.state_record()));
            }
        }
        if !batch.is_empty() {
            self.commit(batch, true)?;
        }
        Ok(())
    }

    /// In the boot it was written in, a store holds every message it
    /// acknowledged: in fjall, or rebuilt from the log. Messages that are
    /// neither were lost outside the store (files removed or damaged, or
    /// fjall losing a keyspace): each such range becomes a hole that reads
    /// pass over and a loss-ledger entry (`LossCause::Missing`), logged as
    /// an error, never a stream that silently reads as empty.
    fn record_missing(&mut self) -> Result<(), EngineError> {
        let mut batch = WriteSet::default();
        let now = now_ms();
        for s in self.streams.values_mut() {
            let Some(ks) = s.ks.as_ref().filter(|_| s.is_file()) else {
                continue;
            };
            let first_in_db = chunks_start(ks).map_err(EngineError::Storage)?;
            let stored_start = first_in_db
                .or(s.sealed.front().map(|c| c.first))
                .unwrap_or(s.next);
            let stored_end = stored_end(s, ks)?;
            // Before the first stored message, and after the last one;
            // holes (numbers skipped after a power loss) are not missing.
            let holes_end = s.holes.iter().map(|&(_, b)| b).max().unwrap_or(0);
            let mut gaps = Vec::new();
            if s.oldest < stored_start.min(s.next) {
                gaps.push((s.oldest, stored_start.min(s.next)));
            }
            let tail = stored_end.max(stored_start).max(s.oldest).max(holes_end);
            if tail < s.next {
                gaps.push((tail, s.next));
            }
            for (from, to) in gaps {
                if s.holes.iter().any(|&(a, b)| a < to && from < b) {
                    continue;
                }
                tracing::error!(
                    stream = %s.def.name,
                    first = from,
                    last = to - 1,
                    messages = to - from,
                    "acknowledged messages are missing from the database: recorded as lost (cause missing)"
                );
                record_loss(
                    &mut self.ledger,
                    &mut batch,
                    Loss {
                        sid: s.id,
                        stream: &s.def.name,
                        export: None,
                        cause: LossCause::Missing,
                        first: from,
                        last: to - 1,
                        messages: to - from,
                        time_ms: now,
                        detail: Some("not in the database when the store started"),
                    },
                );
                s.holes.push((from, to));
                s.holes.sort_unstable();
                batch.insert(Ks::State, state_key(s.id), cbor(&s.state_record()));
            }
        }
        if !batch.is_empty() {
            self.commit(batch, true)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub fn list(&self) -> Vec<String> {
        self.streams.keys().cloned().collect()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.streams.contains_key(name)
    }

    /// Whether stream `name` has an export of `kind` (enabled or not).
    /// Asked for every append event and watcher: no allocation.
    pub fn has_export_of(&self, name: &str, kind: bus_schema::ExportKind) -> bool {
        use bus_schema::ExportKind as K;
        self.streams.get(name).is_some_and(|s| {
            let e = &s.def.exports;
            match kind {
                K::Http => !e.http.is_empty(),
                K::IotAnalytics => !e.iot_analytics.is_empty(),
                K::Kinesis => !e.kinesis.is_empty(),
                K::IotSiteWise => !e.iot_sitewise.is_empty(),
                K::S3TaskExecutor => !e.s3_task_executor.is_empty(),
            }
        })
    }

    pub fn describe(&self, name: &str) -> Result<StreamInfo, EngineError> {
        self.streams
            .get(name)
            .map(|s| self.info_with_lag(s))
            .ok_or_else(|| not_found(name))
    }

    /// The loss ledger, every entry.
    pub fn losses(&self) -> Vec<LossEntry> {
        self.ledger.entries().map(|(_, e)| e.clone()).collect()
    }

    /// Entries in the loss ledger.
    pub fn loss_entries(&self) -> usize {
        self.ledger.entries().count()
    }

    /// Time changes have waited for the applier (back-pressure), since open.
    pub fn applier_waited(&self) -> std::time::Duration {
        self.writer.room_waited()
    }

    /// The metrics of the streams and their exports (Prometheus families).
    pub fn metric_families(&self, now_ms: u64) -> Vec<bus_schema::metrics::MetricFamily> {
        use bus_schema::metrics::{MetricFamily, MetricKind::*};
        let mut messages =
            MetricFamily::new("sm_stream_messages", "Messages the stream holds.", Gauge);
        let mut bytes = MetricFamily::new(
            "sm_stream_bytes",
            "Bytes the stream holds, as counted against its maxSize.",
            Gauge,
        );
        let mut age = MetricFamily::new(
            "sm_stream_oldest_message_age_seconds",
            "Age of the oldest message the stream holds (0 when empty).",
            Gauge,
        );
        let mut dropped = MetricFamily::new(
            "sm_stream_dropped_messages_total",
            "Messages that left the stream by its storage policy (overwrite, ttl, max-size: durable), found missing from the database at a start (missing: durable), or appends refused because it was full (rejected-full: since the store started).",
            Counter,
        );
        let mut lag = MetricFamily::new(
            "sm_export_lag_messages",
            "Messages of the stream not yet exported.",
            Gauge,
        );
        let mut lag_s = MetricFamily::new(
            "sm_export_lag_seconds",
            "Age of the oldest message not yet exported (0 when none waits).",
            Gauge,
        );
        let mut sent = MetricFamily::new(
            "sm_export_records_sent_total",
            "Records the destination acknowledged.",
            Counter,
        );
        let mut sent_bytes = MetricFamily::new(
            "sm_export_sent_bytes_total",
            "Payload bytes of the records the destination acknowledged.",
            Counter,
        );
        let mut skipped = MetricFamily::new(
            "sm_export_records_skipped_total",
            "Records that left without being exported, by cause (overwrite, ttl, max-size, missing: gone before the exporter read them; skipped: undeliverable), from the loss ledger.",
            Counter,
        );
        let mut failing = MetricFamily::new(
            "sm_export_error",
            "1 when the export's last attempt failed (its status shows the error).",
            Gauge,
        );
        let mut by_sid: HashMap<u64, &str> = HashMap::new();
        for info in self.describe_all() {
            let name = info.definition.name.as_str();
            let Some(stream) = self.streams.get(name) else {
                continue;
            };
            by_sid.insert(stream.id, &stream.def.name);
            let l = [("stream", name)];
            messages.sample(&l, stream.count_from(stream.oldest) as f64);
            bytes.sample(&l, stream.total_bytes as f64);
            let oldest_ms = stream.segments.front().map(|s| s.rec.first_ms);
            age.sample(
                &l,
                oldest_ms.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0),
            );
            dropped.sample(
                &[("stream", name), ("cause", "rejected-full")],
                stream.rejected_full as f64,
            );
            for x in &info.export_statuses {
                let l = [("stream", name), ("export", x.export_identifier.as_str())];
                let newest = info.storage.newest_sequence_number;
                lag.sample(
                    &l,
                    (newest
                        - x.last_exported_sequence_number
                            .max(info.storage.oldest_sequence_number - 1))
                    .max(0) as f64,
                );
                lag_s.sample(
                    &l,
                    x.oldest_unexported_ingest_ms
                        .map_or(0.0, |t| (now_ms as i64 - t).max(0) as f64 / 1000.0),
                );
                sent.sample(&l, x.exported_messages as f64);
                sent_bytes.sample(&l, x.exported_bytes as f64);
                failing.sample(&l, f64::from(u8::from(x.error_message.is_some())));
            }
        }
        for (key, e) in self.ledger.entries() {
            let Some(name) = Ledger::sid_of(key).and_then(|sid| by_sid.get(&sid)) else {
                continue;
            };
            match &e.export_identifier {
                None if e.cause != LossCause::Deleted => {
                    dropped.sample(
                        &[("stream", name), ("cause", e.cause.as_str())],
                        e.messages as f64,
                    );
                }
                None => {}
                Some(export) => {
                    skipped.sample(
                        &[
                            ("stream", name),
                            ("export", export.as_str()),
                            ("cause", e.cause.as_str()),
                        ],
                        e.messages as f64,
                    );
                }
            }
        }
        vec![
            messages, bytes, age, dropped, lag, lag_s, sent, sent_bytes, skipped, failing,
        ]
    }

    pub fn describe_all(&self) -> Vec<StreamInfo> {
        self.streams
            .values()
            .map(|s| self.info_with_lag(s))
            .collect()
    }

    /// `Stream::info` plus, per export, the ingest time of the oldest
    /// message it has not exported (one read of one message per export).
    fn info_with_lag(&self, s: &Stream) -> StreamInfo {
        let mut info = s.info();
        for status in &mut info.export_statuses {
            let seq = (status.last_exported_sequence_number + 1).max(s.oldest as i64) as u64;
            status.oldest_unexported_ingest_ms = if seq >= s.next {
                None
            } else {
                self.read_bounded(&s.def.name, seq, 1, 0)
                    .ok()
                    .and_then(|m| m.first().map(|m| m.ingest_time_ms))
            };
        }
        info
    }

    /// Refuses everything once a write failed (see the module docs).
    fn check_failed(&self) -> Result<(), EngineError> {
        match &self.failed {
            Some(e) => Err(EngineError::Storage(format!(
                "the store stopped after a failed write: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Records a storage failure: from now on the engine refuses everything.
    fn fail(&mut self, e: String) -> EngineError {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        EngineError::Storage(e)
    }

    pub fn create(&mut self, def: &StreamDefinition) -> Result<(), EngineError> {
        self.check_failed()?;
        if self.streams.contains_key(&def.name) {
            validate::check_name("stream name", &def.name)?;
            return Err(invalid(format!("stream {:?} already exists", def.name)));
        }
        let def = validate::normalize(def, &|n| self.streams.contains_key(n))?;
        let id = self.next_stream_id;
        let created_ms = now_ms();
        let memory = def.persistence == Some(Persistence::Memory);
        let file_streams = self.streams.values().filter(|s| s.ks.is_some()).count();
        if !memory && file_streams >= FILE_STREAMS_MAX {
            return Err(invalid(format!(
                "stream {:?} would be File stream number {}: this store holds at most {FILE_STREAMS_MAX} File streams (each is a database keyspace; beyond about 1,000 the database cannot reopen); delete one, or use Memory persistence",
                def.name,
                file_streams + 1
            )));
        }
        let mut batch = WriteSet::default();
        batch.insert(
            Ks::Meta,
            META_NEXT_STREAM_ID,
            (id + 1).to_be_bytes().to_vec(),
        );
        batch.insert(
            Ks::Streams,
            def.name.as_bytes(),
            cbor(&StreamRecord {
                id,
                created_ms,
                definition: def.clone(),
            }),
        );
        if !memory {
            batch.insert(Ks::State, state_key(id), cbor(&StreamState::default()));
        }
        let data = if memory {
            None
        } else {
            match self.keyspaces.stream_keyspace(id, true) {
                Ok(ks) => ks,
                Err(e) => return Err(self.fail(e)),
            }
        };
        self.commit(batch, false)?;
        self.next_stream_id = id + 1;
        self.streams
            .insert(def.name.clone(), Stream::new(id, created_ms, def, data));
        Ok(())
    }

    pub fn update(&mut self, def: &StreamDefinition) -> Result<(), EngineError> {
        self.check_failed()?;
        let new = validate::normalize(def, &|n| self.streams.contains_key(n))?;
        let stream = self
            .streams
            .get(&def.name)
            .ok_or_else(|| not_found(&def.name))?;
        validate::check_update(&stream.def, &new, stream.total_bytes, stream.next)?;
        let old_starts: HashMap<String, Option<i64>> = stream
            .def
            .exports
            .all()
            .into_iter()
            .map(|(_, c)| (c.identifier.clone(), c.start_sequence_number))
            .collect();
        let new_ids: HashMap<String, Option<i64>> = new
            .exports
            .all()
            .into_iter()
            .map(|(_, c)| (c.identifier.clone(), c.start_sequence_number))
            .collect();
        let (sid, is_file, created_ms) = (stream.id, stream.is_file(), stream.created_ms);
        // Cursors of removed exports, and of exports whose start moved, reset.
        let reset: Vec<String> = stream
            .cursors
            .keys()
            .filter(|id| match (old_starts.get(*id), new_ids.get(*id)) {
                (Some(old), Some(new)) => old != new,
                _ => true,
            })
            .cloned()
            .collect();
        let mut batch = WriteSet::default();
        batch.insert(
            Ks::Streams,
            new.name.as_bytes(),
            cbor(&StreamRecord {
                id: sid,
                created_ms,
                definition: new.clone(),
            }),
        );
        if is_file {
            for id in &reset {
                batch.remove(Ks::State, cursor_key(sid, id));
            }
        }
        self.commit(batch, false)?;
        let stream = self
            .streams
            .get_mut(&def.name)
            .ok_or_else(|| not_found(&def.name))?;
        stream.def = new;
        for id in &reset {
            stream.cursors.remove(id);
        }
        // A smaller TTL or size may evict segments now.
        let now = now_ms();
        self.enforce_limits(&def.name, now)?;
        Ok(())
    }

    pub fn delete(&mut self, name: &str) -> Result<(), EngineError> {
        self.check_failed()?;
        if !self.streams.contains_key(name) {
            return Err(not_found(name));
        }
        let stream = self.streams.get(name).ok_or_else(|| not_found(name))?;
        let sid = stream.id;
        let mut batch = WriteSet::default();
        // What the stream still holds leaves with it: recorded for the
        // stream, and for each export the part it had not exported.
        let now = now_ms();
        if stream.next > 0 {
            let last = stream.next - 1;
            // (export, cause, first, last, messages)
            let mut losses = Vec::new();
            if stream.next > stream.oldest {
                losses.push((
                    None,
                    LossCause::Deleted,
                    stream.oldest,
                    last,
                    stream.count_from(stream.oldest),
                ));
            }
            for (_, export) in stream.def.exports.all() {
                let cursor = stream
                    .cursors
                    .get(&export.identifier)
                    .map_or_else(|| stream.default_status(&export.identifier), Clone::clone)
                    .last_exported_sequence_number;
                let first = (cursor + 1).max(0) as u64;
                let id = Some(export.identifier.clone());
                if first < stream.oldest {
                    // Removed by the storage policy before the exporter
                    // read them (it never will now).
                    let cause = self
                        .ledger
                        .cause_of(sid, first)
                        .unwrap_or(LossCause::Overwrite);
                    losses.push((
                        id.clone(),
                        cause,
                        first,
                        stream.oldest - 1,
                        stream.oldest - first,
                    ));
                }
                let first = first.max(stream.oldest);
                if first <= last {
                    losses.push((
                        id,
                        LossCause::Deleted,
                        first,
                        last,
                        stream.count_from(first),
                    ));
                }
            }
            for (export, cause, first, last, messages) in losses {
                record_loss(
                    &mut self.ledger,
                    &mut batch,
                    Loss {
                        sid,
                        stream: name,
                        export: export.as_deref(),
                        cause,
                        first,
                        last,
                        messages,
                        time_ms: now,
                        detail: None,
                    },
                );
            }
        }
        batch.remove(Ks::Streams, name.as_bytes());
        if stream.is_file() {
            // Every state key of the stream, from memory (which mirrors
            // them), so that a delete needs nothing from fjall: it works
            // while the applier waits for disk space.
            batch.remove(Ks::State, state_key(sid));
            for seg in &stream.segments {
                batch.remove(Ks::State, segment_key(sid, seg.first));
            }
            for id in stream.cursors.keys() {
                batch.remove(Ks::State, cursor_key(sid, id));
            }
            // fjall deletes the folder once the last handle is dropped:
            // ours goes with the stream below.
            batch.drop_data(sid);
        }
        // The stream's unsent chunks are not sent: its data is going.
        self.unsent.remove(name);
        self.commit(batch, false)?;
        self.streams.remove(name);
        self.with_sealed.remove(name);
        // Its messages still in the log leave the disk with the log file:
        // start a new one, which the applier releases after the drop.
        self.seal_all();
        if let Err(e) = self.writer.rotate() {
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Appends a batch: one fjall write batch for all of it, synced once if
    /// any stream in it has `flushOnWrite` (group commit). Results are in the
    /// order of `items`; an item's error leaves the others unaffected.
    pub fn append_batch(&mut self, items: &[AppendItem<'_>]) -> Result<BatchOutcome, EngineError> {
        self.check_failed()?;
        self.reclaim_applied();
        // The log's room for the whole round, before anything changes: on a
        // full disk every append of the round is refused and nothing moves.
        // Memory streams log nothing: a round of them only needs a record's
        // header, within the smaller headroom.
        let mut estimate = 4096u64;
        let mut counted = BTreeSet::new();
        for item in items {
            let Some(stream) = self.streams.get(item.stream).filter(|s| s.is_file()) else {
                continue;
            };
            estimate += item.payload.len() as u64 + 64;
            if counted.insert(item.stream) {
                estimate += 160 * (stream.segments.len() as u64 + 1);
            }
        }
        let any_file = !counted.is_empty();
        if let Err(e) = self.writer.reserve(estimate, any_file) {
            let refused = ErrorReply::new(ErrorKind::StoreWriteError, e);
            self.stats.refused_disk_full += items.len() as u64;
            return Ok((
                items.iter().map(|_| Err(refused.clone())).collect(),
                Vec::new(),
            ));
        }
        let now = now_ms();
        let mut results = Vec::with_capacity(items.len());
        let mut batch = WriteSet::default();
        let mut sync = false;
        let mut touched: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        // File streams whose state record changed this round (a trim or a
        // new reservation): written once, after the round.
        let mut state_changed = BTreeSet::new();
        for item in items {
            let Some(stream) = self.streams.get_mut(item.stream) else {
                results.push(Err(ErrorReply::new(
                    ErrorKind::ResourceNotFound,
                    format!("stream {:?} does not exist", item.stream),
                )));
                continue;
            };
            let (oldest, reserved) = (stream.oldest, stream.reserved);
            match Self::append_one(stream, item.payload, now, self.clock_steps_ms, &mut batch) {
                Ok((seq, dropped)) => {
                    if stream.oldest > oldest {
                        record_loss(
                            &mut self.ledger,
                            &mut batch,
                            Loss {
                                sid: stream.id,
                                stream: item.stream,
                                export: None,
                                cause: LossCause::Overwrite,
                                first: oldest,
                                last: stream.oldest - 1,
                                messages: stream.oldest - oldest,
                                time_ms: now,
                                detail: None,
                            },
                        );
                    }
                    if stream.is_file() && (stream.oldest, stream.reserved) != (oldest, reserved) {
                        // A new reservation must be on disk before any of
                        // its numbers is acknowledged.
                        sync |= stream.reserved != reserved;
                        state_changed.insert(item.stream.to_string());
                    }
                    self.stats.segments_dropped += dropped;
                    sync |= stream.is_file() && stream.def.flush_on_write == Some(true);
                    let firsts = touched.entry(item.stream.to_string()).or_default();
                    if let Some(seg) = stream.segments.back() {
                        if !firsts.contains(&seg.first) {
                            firsts.push(seg.first);
                        }
                    }
                    results.push(Ok((seq as i64, now as i64)));
                }
                Err(e) => {
                    if e.kind == ErrorKind::StreamFull {
                        stream.rejected_full += 1;
                    }
                    results.push(Err(e))
                }
            }
        }
        let mut newest = Vec::with_capacity(touched.len());
        for (name, firsts) in touched {
            let Some(stream) = self.streams.get(&name) else {
                continue;
            };
            let changed = state_changed.contains(&name);
            newest.push((name, stream.next as i64 - 1));
            if !stream.is_file() {
                continue;
            }
            for seg in stream.segments.iter().filter(|s| firsts.contains(&s.first)) {
                batch.insert(Ks::State, segment_key(stream.id, seg.first), cbor(&seg.rec));
            }
            if changed {
                batch.insert(
                    Ks::State,
                    state_key(stream.id),
                    cbor(&stream.state_record()),
                );
            }
        }
        if !batch.is_empty() {
            if sync {
                self.stats.syncs += 1;
            }
            for (name, _) in &newest {
                let sealed = self
                    .streams
                    .get(name)
                    .is_some_and(|s| s.sealed.back().is_some_and(|c| c.job.is_none()));
                if sealed && !self.unsent.contains(name) {
                    self.unsent.insert(name.clone());
                }
            }
            // Covered by the reservation above: a refusal now would leave
            // memory ahead of the log, so it is fatal.
            if let Err(e) = self.commit(batch, sync) {
                let e = match e {
                    EngineError::Refused(r) => r.message,
                    EngineError::Storage(s) => s,
                };
                return Err(self.fail(e));
            }
        }
        self.stats.appends += results.iter().filter(|r| r.is_ok()).count() as u64;
        Ok((results, newest))
    }

    /// Appends one message to `stream`'s memory and `batch`.
    fn append_one(
        stream: &mut Stream,
        payload: &[u8],
        now: u64,
        steps_ms: u64,
        batch: &mut WriteSet,
    ) -> Result<(u64, u64), ErrorReply> {
        if payload.is_empty() {
            return Err(ErrorReply::new(
                ErrorKind::InvalidRequest,
                "message payload must not be empty",
            ));
        }
        if payload.len() > MESSAGE_PAYLOAD_BYTES_MAX {
            return Err(ErrorReply::new(
                ErrorKind::InvalidRequest,
                format!(
                    "message of {} bytes exceeds the limit of {MESSAGE_PAYLOAD_BYTES_MAX} bytes",
                    payload.len()
                ),
            ));
        }
        let size = payload.len() as u64 + RECORD_OVERHEAD_BYTES;
        let max = stream.max_size();
        if size > max {
            return Err(ErrorReply::new(
                ErrorKind::InvalidRequest,
                format!(
                    "message of {} bytes (+{RECORD_OVERHEAD_BYTES} bytes overhead) can never fit \
                     in stream {:?} of maxSize {max} bytes",
                    payload.len(),
                    stream.def.name
                ),
            ));
        }
        let mut dropped = 0;
        if stream.total_bytes + size > max {
            if stream.strategy() == StrategyOnFull::RejectNewData {
                return Err(ErrorReply::new(
                    ErrorKind::StreamFull,
                    format!(
                        "stream {:?} is full ({} of {max} bytes used) and its strategyOnFull is \
                         RejectNewData",
                        stream.def.name, stream.total_bytes
                    ),
                ));
            }
            let prev_oldest = stream.oldest;
            let mut firsts = Vec::new();
            while stream.total_bytes + size > max {
                match Self::drop_oldest_segment(stream) {
                    Some(first) => firsts.push(first),
                    None => break,
                }
            }
            dropped = firsts.len() as u64;
            // The state record goes once, after the round (append_batch).
            Self::persist_trim(stream, prev_oldest, &firsts, batch, false);
        }
        let seq = stream.next;
        stream.next += 1;
        if stream.is_file() && stream.next > stream.reserved {
            stream.reserved = seq + SEQ_RESERVE_STEP;
        }
        let segment_size = stream.segment_size();
        match stream.segments.back_mut() {
            Some(seg) if seg.rec.bytes + size <= segment_size => {
                seg.rec.last = seq;
                seg.rec.bytes += size;
                seg.rec.last_ms = now;
                seg.steps_ms = steps_ms;
            }
            _ => {
                // A chunk never spans two segments.
                stream.seal();
                stream.segments.push_back(Segment {
                    first: seq,
                    rec: SegmentRecord {
                        last: seq,
                        bytes: size,
                        first_ms: now,
                        last_ms: now,
                    },
                    steps_ms,
                })
            }
        }
        stream.total_bytes += size;
        match &mut stream.mem {
            Some(mem) => mem.push_back(MemRecord {
                ingest_ms: now,
                payload: payload.to_vec(),
            }),
            None => {
                batch.insert(
                    Ks::Data,
                    data_key(stream.id, seq).to_vec(),
                    data_value(now, payload),
                );
                let open = stream
                    .open
                    .get_or_insert_with(|| ChunkBuilder::new(seq, CHUNK_BYTES_TARGET));
                open.push(now, payload);
                if open.bytes() >= CHUNK_BYTES_TARGET {
                    stream.seal();
                }
            }
        }
        Ok((seq, dropped))
    }

    /// Drops the oldest segment from memory accounting (and Memory data);
    /// returns its first sequence number.
    fn drop_oldest_segment(stream: &mut Stream) -> Option<u64> {
        let seg = stream.segments.pop_front()?;
        stream.total_bytes -= seg.rec.bytes;
        let new_oldest = seg.rec.last + 1;
        if let Some(mem) = &mut stream.mem {
            let n = (new_oldest - stream.oldest) as usize;
            mem.drain(..n.min(mem.len()));
        }
        stream.oldest = new_oldest;
        // The open chunk is in the newest segment: gone if that one is.
        if stream.open.as_ref().is_some_and(|o| o.first < new_oldest) {
            stream.open = None;
        }
        Some(seg.first)
    }

    /// Records on disk that a File stream's data from `prev_oldest` up to
    /// `oldest` is gone: removes the dropped segments' records, writes the new
    /// bounds and removes the chunks below `oldest` (whole chunks: a chunk
    /// never spans two segments), all in the caller's batch.
    fn persist_trim(
        stream: &mut Stream,
        prev_oldest: u64,
        dropped_firsts: &[u64],
        batch: &mut WriteSet,
        write_state: bool,
    ) {
        if !stream.is_file() || stream.oldest <= prev_oldest {
            return;
        }
        for first in dropped_firsts {
            batch.remove(Ks::State, segment_key(stream.id, *first));
        }
        let oldest = stream.oldest;
        stream.holes.retain(|&(_, to)| to > oldest);
        if write_state {
            batch.insert(
                Ks::State,
                state_key(stream.id),
                cbor(&stream.state_record()),
            );
        }
        batch.trim_chunks(stream.id, stream.oldest);
    }

    /// Drops segments of `name` that its TTL or its (possibly reduced) size
    /// no longer allows.
    fn enforce_limits(&mut self, name: &str, now: u64) -> Result<u64, EngineError> {
        self.check_failed()?;
        let Some(segments) = self.streams.get(name).map(|s| s.segments.len() as u64) else {
            return Ok(0);
        };
        // Room in the log first: the segments leave memory before the trim
        // is logged. Without room (a full disk), trimming waits for a later
        // round.
        if self.writer.reserve(1024 + 160 * segments, false).is_err() {
            return Ok(0);
        }
        let steps_ms = self.clock_steps_ms;
        let Some(stream) = self.streams.get_mut(name) else {
            return Ok(0);
        };
        let prev_oldest = stream.oldest;
        let ttl = stream.def.time_to_live_ms.map(|t| t.max(0) as u64);
        let mut firsts = Vec::new();
        let mut losses: Vec<(u64, u64, LossCause)> = Vec::new();
        while let Some(first) = stream.segments.front() {
            // Forward steps of the wall clock since the segment's last
            // message do not count towards its age.
            let credit = steps_ms.saturating_sub(first.steps_ms);
            let expired = ttl.is_some_and(|ttl| {
                first.rec.last_ms.saturating_add(ttl).saturating_add(credit) < now
            });
            if !(expired || stream.total_bytes > stream.max_size()) {
                break;
            }
            let before = stream.oldest;
            firsts.extend(Self::drop_oldest_segment(stream));
            let cause = if expired {
                LossCause::Ttl
            } else {
                LossCause::MaxSize
            };
            if stream.oldest > before {
                losses.push((before, stream.oldest - 1, cause));
            }
        }
        let dropped = firsts.len() as u64;
        if dropped > 0 {
            let mut batch = WriteSet::default();
            if stream.is_file() {
                Self::persist_trim(stream, prev_oldest, &firsts, &mut batch, true);
            }
            for (first, last, cause) in losses {
                record_loss(
                    &mut self.ledger,
                    &mut batch,
                    Loss {
                        sid: stream.id,
                        stream: name,
                        export: None,
                        cause,
                        first,
                        last,
                        messages: last - first + 1,
                        time_ms: now,
                        detail: None,
                    },
                );
            }
            self.commit(batch, false)?;
        }
        self.stats.segments_dropped += dropped;
        Ok(dropped)
    }

    /// Notes how far the wall clock moved against the monotonic clock since
    /// the last call: a forward step of more than
    /// [`CLOCK_STEP_TOLERANCE_MS`] (a device without a real-time clock
    /// setting its time at the first NTP sync, an operator changing it) is
    /// added to `clock_steps_ms`, so that TTL ages the data appended before
    /// the step by the time that really passed, not by the step. A
    /// backward step needs nothing: data is then kept longer, never less
    /// than its TTL. Steps across a restart are not seen (the store then
    /// trusts the wall clock, as before).
    pub fn observe_clock(&mut self, wall_ms: u64, mono: std::time::Instant) {
        if let Some((wall_before, mono_before)) = self.last_clock {
            let wall = wall_ms.saturating_sub(wall_before);
            let real = mono.saturating_duration_since(mono_before).as_millis() as u64;
            if wall > real + CLOCK_STEP_TOLERANCE_MS {
                let step = wall - real;
                self.clock_steps_ms += step;
                tracing::info!(
                    step_s = step / 1000,
                    "the wall clock stepped forward; TTL keeps counting the time that really passed"
                );
            }
        }
        self.last_clock = Some((wall_ms, mono));
    }

    /// Removes data older than each stream's TTL, whole segments at a time.
    /// Returns the number of segments dropped.
    pub fn expire(&mut self, now: u64) -> Result<u64, EngineError> {
        let names: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.def.time_to_live_ms.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let mut dropped = 0;
        for name in names {
            dropped += self.enforce_limits(&name, now)?;
        }
        Ok(dropped)
    }

    /// Messages readable from `start`, i.e. `next - max(start, oldest)`.
    pub fn available(&self, name: &str, start: u64) -> Result<u64, EngineError> {
        let s = self.streams.get(name).ok_or_else(|| not_found(name))?;
        Ok(s.count_from(start.max(s.oldest)))
    }

    /// Reads up to `max_count` messages from `start` (or the oldest, if
    /// later), stopping once `READ_RESPONSE_BYTES_TARGET` payload bytes are
    /// collected (at least one message is returned when one exists).
    pub fn read(
        &self,
        name: &str,
        start: u64,
        max_count: u64,
    ) -> Result<Vec<Message>, EngineError> {
        self.read_bounded(name, start, max_count, READ_RESPONSE_BYTES_TARGET)
    }

    /// `read`, stopping before the payloads pass `max_bytes` (the first
    /// message is always included).
    pub fn read_bounded(
        &self,
        name: &str,
        start: u64,
        max_count: u64,
        max_bytes: usize,
    ) -> Result<Vec<Message>, EngineError> {
        self.read_with(name, start, max_count, max_bytes, |messages| {
            messages.iter().map(MessageRef::to_message).collect()
        })
    }

    /// `read_bounded`, handing the messages to `f` where they are (no copy
    /// of a payload): the server writes its reply straight from them.
    pub fn read_with<R>(
        &self,
        name: &str,
        start: u64,
        max_count: u64,
        max_bytes: usize,
        f: impl FnOnce(&[MessageRef<'_>]) -> R,
    ) -> Result<R, EngineError> {
        self.check_failed()?;
        let max_bytes = max_bytes.min(READ_RESPONSE_BYTES_TARGET);
        let s = self.streams.get(name).ok_or_else(|| not_found(name))?;
        let mut from = start.max(s.oldest);
        // A start inside a hole (numbers skipped after a power loss) reads
        // from the first number after it; past a hole, `max_count` counts
        // messages, not numbers.
        for &(a, b) in &s.holes {
            if (a..b).contains(&from) {
                from = b;
            }
        }
        let to = if s.holes.is_empty() {
            s.next.min(from.saturating_add(max_count))
        } else {
            s.next
        };
        let budget = ReadBudget {
            from,
            to,
            max_count,
            max_bytes,
            count: 0,
            bytes: 0,
        };
        let mut out = Vec::new();
        if from >= to {
            return Ok(f(&out));
        }
        if let Some(mem) = &s.mem {
            let skip = (from - s.oldest) as usize;
            let mut budget = budget;
            for (i, r) in mem.iter().skip(skip).take((to - from) as usize).enumerate() {
                if !budget.admits(r.payload.len()) {
                    break;
                }
                out.push(MessageRef {
                    sequence_number: (from + i as u64) as i64,
                    ingest_time_ms: r.ingest_ms as i64,
                    payload: &r.payload,
                });
            }
            return Ok(f(&out));
        }
        let malformed = || {
            EngineError::Refused(ErrorReply::new(
                ErrorKind::StoreReadError,
                format!("stream {name:?} has a malformed chunk"),
            ))
        };
        // fjall holds every record before the first one in memory. The
        // chunks read from fjall are held here while `out` borrows them:
        // taken first, with the budget run once without output.
        let split = s.memory_first().clamp(from, to);
        let mut held = Vec::new();
        let mut more = true;
        if let (Some(ks), true) = (&s.ks, from < split) {
            let read_error = |e: fjall::Error| {
                EngineError::Refused(ErrorReply::new(
                    ErrorKind::StoreReadError,
                    format!("reading stream {name:?} failed: {e}"),
                ))
            };
            // The chunk holding `from` starts at or before it.
            let start = match ks.range(..=chunk_key(from, u64::MAX)).next_back() {
                Some(g) => {
                    let k = g.key().map_err(read_error)?;
                    match parse_chunk_key(&k) {
                        Some((first, last)) if last >= from => chunk_key(first, last),
                        _ => chunk_key(from, 0),
                    }
                }
                None => chunk_key(from, 0),
            };
            let mut dry = budget;
            for item in ks.range(start..chunk_key(split, 0)) {
                let (k, v) = item.into_inner().map_err(read_error)?;
                let (first, _) = parse_chunk_key(&k).ok_or_else(malformed)?;
                let chunk = ChunkView::parse(&v).ok_or_else(malformed)?;
                more = dry.take(first, chunk, |_| ()).map_err(|()| malformed())?;
                held.push((first, v));
                if !more {
                    break;
                }
            }
        }
        let mut budget = budget;
        for (first, v) in &held {
            let chunk = ChunkView::parse(v).ok_or_else(malformed)?;
            budget
                .take(*first, chunk, |m| out.push(m))
                .map_err(|()| malformed())?;
        }
        if more {
            for c in s.sealed.iter().filter(|c| c.last >= split) {
                let chunk = ChunkView::parse(&c.value).ok_or_else(malformed)?;
                if !budget
                    .take(c.first, chunk, |m| out.push(m))
                    .map_err(|()| malformed())?
                {
                    more = false;
                    break;
                }
            }
        }
        if let (true, Some(open)) = (more, &s.open) {
            budget
                .take(open.first, open.view(), |m| out.push(m))
                .map_err(|()| malformed())?;
        }
        Ok(f(&out))
    }

    /// Moves an export's cursor forward and records its status.
    pub fn commit_export(
        &mut self,
        name: &str,
        identifier: &str,
        progress: &ExportProgress,
    ) -> Result<(), EngineError> {
        self.check_failed()?;
        let s = self.streams.get_mut(name).ok_or_else(|| not_found(name))?;
        if !s
            .def
            .exports
            .all()
            .iter()
            .any(|(_, c)| c.identifier == identifier)
        {
            return Err(EngineError::Refused(ErrorReply::new(
                ErrorKind::ResourceNotFound,
                format!("stream {name:?} has no export {identifier:?}"),
            )));
        }
        let mut status = s
            .cursors
            .get(identifier)
            .cloned()
            .unwrap_or_else(|| s.default_status(identifier));
        if let Some(expected) = progress.expected_incarnation {
            if expected != s.id {
                return Err(EngineError::Refused(ErrorReply::new(
                    ErrorKind::Conflict,
                    format!(
                        "stream {name:?} was deleted and created again since export {identifier:?} read it"
                    ),
                )));
            }
        }
        if let Some(expected) = progress.expected_last_exported_sequence_number {
            if expected != status.last_exported_sequence_number {
                return Err(EngineError::Refused(ErrorReply::new(
                    ErrorKind::Conflict,
                    format!(
                        "export {identifier:?} of stream {name:?} is at {}, not at {expected}: it was reset or moved since it was read",
                        status.last_exported_sequence_number
                    ),
                )));
            }
        }
        if progress.last_exported_sequence_number < status.last_exported_sequence_number {
            return Err(invalid(format!(
                "export {identifier:?} of stream {name:?} is at {}; it cannot move back to {}",
                status.last_exported_sequence_number, progress.last_exported_sequence_number
            )));
        }
        if progress.last_exported_sequence_number >= s.next as i64 {
            return Err(invalid(format!(
                "export {identifier:?} of stream {name:?} cannot move to {}: the newest message is {}",
                progress.last_exported_sequence_number,
                s.next as i64 - 1
            )));
        }
        if progress.exported_bytes_delta < 0
            || progress.exported_messages_delta < 0
            || progress.skipped_messages_delta < 0
        {
            return Err(invalid("exported and skipped counts only grow"));
        }
        if !(0..=progress.skipped_messages_delta).contains(&progress.removed_messages_delta) {
            return Err(invalid(format!(
                "removed_messages_delta {} must be from 0 to skipped_messages_delta {}",
                progress.removed_messages_delta, progress.skipped_messages_delta
            )));
        }
        let mut batch = WriteSet::default();
        let before = status.last_exported_sequence_number;
        let now = now_ms();
        if progress.removed_messages_delta > 0 {
            // Found missing by the exporter: removed by the storage policy
            // before it read them, just after its cursor.
            let first = (before + 1) as u64;
            let last = first + progress.removed_messages_delta as u64 - 1;
            let cause = self
                .ledger
                .cause_of(s.id, first)
                .unwrap_or(LossCause::Overwrite);
            record_loss(
                &mut self.ledger,
                &mut batch,
                Loss {
                    sid: s.id,
                    stream: name,
                    export: Some(identifier),
                    cause,
                    first,
                    last,
                    messages: progress.removed_messages_delta as u64,
                    time_ms: now,
                    detail: None,
                },
            );
        }
        let undeliverable = progress.skipped_messages_delta - progress.removed_messages_delta;
        if undeliverable > 0 {
            record_loss(
                &mut self.ledger,
                &mut batch,
                Loss {
                    sid: s.id,
                    stream: name,
                    export: Some(identifier),
                    cause: LossCause::Skipped,
                    first: (before + 1) as u64,
                    last: progress.last_exported_sequence_number.max(before + 1) as u64,
                    messages: undeliverable as u64,
                    time_ms: now,
                    detail: progress.error_message.as_deref(),
                },
            );
        }
        status.last_exported_sequence_number = progress.last_exported_sequence_number;
        status.last_export_time_ms = Some(progress.last_export_time_ms);
        status.error_message = progress.error_message.clone();
        status.exported_bytes = status
            .exported_bytes
            .saturating_add(progress.exported_bytes_delta);
        status.exported_messages = status
            .exported_messages
            .saturating_add(progress.exported_messages_delta);
        status.skipped_messages = status
            .skipped_messages
            .saturating_add(progress.skipped_messages_delta);
        if s.is_file() {
            batch.insert(Ks::State, cursor_key(s.id, identifier), cbor(&status));
        }
        if !batch.is_empty() {
            self.commit(batch, false)?;
        }
        if let Some(s) = self.streams.get_mut(name) {
            s.cursors.insert(identifier.to_string(), status);
        }
        Ok(())
    }

    /// A failure of the background sync, if one happened (then the store
    /// must stop, like after any failed write).
    pub fn background_sync_failure(&self) -> Option<String> {
        self.sync
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .or_else(|| self.writer.failure())
    }

    /// Seals every open chunk, hands it to fjall and syncs everything
    /// written so far to disk.
    pub fn sync(&mut self) -> Result<(), EngineError> {
        self.check_failed()?;
        self.seal_all();
        if let Err(e) = self.writer.wait_applied() {
            return Err(self.fail(e));
        }
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            return Err(self.fail(e.to_string()));
        }
        Ok(())
    }

    /// Logs `batch` and queues it for fjall (see [`crate::wal`]), then hands
    /// the chunks sealed meanwhile to the applier (their messages are now in
    /// the log); returns the ticket. When the log file is full, every open
    /// chunk is sealed and sent before the next file starts, so that the
    /// file can go once the applier is past it. A failure is fatal, as any
    /// failed write.
    fn commit(&mut self, batch: WriteSet, sync: bool) -> Result<u64, EngineError> {
        // No room (a full disk): refused, nothing changed.
        if let Err(e) = self.writer.reserve(batch.log_bytes(), false) {
            return Err(EngineError::Refused(ErrorReply::new(
                ErrorKind::StoreWriteError,
                e,
            )));
        }
        let started = std::time::Instant::now();
        let ticket = match self.writer.commit(batch, sync) {
            Ok(t) => t,
            Err(e) => return Err(self.fail(e)),
        };
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.send_sealed();
        if self.writer.is_full() {
            self.seal_all();
            if let Err(e) = self.writer.rotate() {
                return Err(self.fail(e));
            }
        }
        Ok(ticket)
    }

    /// Hands the sealed chunks not sent yet to the applier.
    fn send_sealed(&mut self) {
        for name in std::mem::take(&mut self.unsent) {
            let Some(s) = self.streams.get_mut(&name) else {
                continue;
            };
            let Some(ks) = s.ks.clone() else { continue };
            // Chunks trimmed before they were sent never reach fjall (the
            // trim that dropped them is already queued before them).
            let oldest = s.oldest;
            s.sealed.retain(|c| c.job.is_some() || c.last >= oldest);
            for c in s.sealed.iter_mut().filter(|c| c.job.is_none()) {
                let key = chunk_key(c.first, c.last);
                c.job = Some(self.writer.send_chunk(ks.clone(), key, c.value.clone()));
            }
            if !s.sealed.is_empty() {
                self.with_sealed.insert(name);
            }
        }
    }

    /// Seals every open chunk (their messages are all in the log) and sends
    /// it to the applier.
    fn seal_all(&mut self) {
        for (name, s) in self.streams.iter_mut() {
            if s.open.is_some() {
                s.seal();
                self.unsent.insert(name.clone());
            }
        }
        self.send_sealed();
    }

    /// Forgets the sealed chunks fjall now holds.
    pub fn reclaim_applied(&mut self) {
        if self.with_sealed.is_empty() {
            return;
        }
        let done = self.writer.chunks_done();
        self.with_sealed.retain(|name| {
            let Some(s) = self.streams.get_mut(name) else {
                return false;
            };
            while s
                .sealed
                .front()
                .is_some_and(|c| c.job.is_some_and(|j| j <= done))
            {
                s.sealed.pop_front();
            }
            !s.sealed.is_empty()
        });
    }

    /// Clean stop: seals the open chunks, writes the memtables out as tables
    /// (so the next open has no journal to replay into memory) and syncs.
    pub fn close(&mut self) -> Result<(), EngineError> {
        self.sync()?;
        let data = self.streams.values().filter_map(|s| s.ks.as_ref());
        for ks in [&self.ks_state, &self.ks_streams, &self.ks_meta]
            .into_iter()
            .chain(data)
        {
            ks.rotate_memtable_and_wait()?;
        }
        self.sync()?;
        // Everything is on disk: the next open has nothing to fear.
        let marker = self.path.join(LOG_DIR).join(RUNNING_MARKER);
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(self.fail(format!("removing {}: {e}", marker.display())))
            }
            _ => Ok(()),
        }
    }
}

/// What one read may still take: the numbers `from..to`, at most
/// `max_count` messages and, past the first, `max_bytes` of payloads.
#[derive(Clone, Copy)]
struct ReadBudget {
    from: u64,
    to: u64,
    max_count: u64,
    max_bytes: usize,
    count: u64,
    bytes: usize,
}

impl ReadBudget {
    /// Counts a message of `len` payload bytes if it still fits.
    fn admits(&mut self, len: usize) -> bool {
        if self.count >= self.max_count || (self.count > 0 && self.bytes + len > self.max_bytes) {
            return false;
        }
        self.count += 1;
        self.bytes += len;
        true
    }

    /// Passes to `out` the records of `chunk` (numbered from `first`) that
    /// fall in `from..to`, while the budget lasts; `Ok(false)` once it is
    /// spent, `Err` for a malformed record.
    fn take<'a>(
        &mut self,
        first: u64,
        chunk: ChunkView<'a>,
        mut out: impl FnMut(MessageRef<'a>),
    ) -> Result<bool, ()> {
        for (i, r) in chunk.records().enumerate() {
            let seq = first + i as u64;
            if seq < self.from {
                continue;
            }
            if seq >= self.to {
                return Ok(false);
            }
            let (ms, payload) = r?;
            if !self.admits(payload.len()) {
                return Ok(false);
            }
            out(MessageRef {
                sequence_number: seq as i64,
                ingest_time_ms: ms as i64,
                payload,
            });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::ExportCommon;

    #[test]
    fn file_streams_stop_at_the_bound_and_a_store_holding_that_many_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        for i in 0..FILE_STREAMS_MAX {
            let name = format!("s{i}");
            e.create(&StreamDefinition::new(&name, StrategyOnFull::RejectNewData))
                .unwrap();
            fill(&mut e, &name, 1);
        }
        let one_more = StreamDefinition::new("one-more", StrategyOnFull::RejectNewData);
        let Err(EngineError::Refused(r)) = e.create(&one_more) else {
            panic!("a File stream past the bound was created");
        };
        assert_eq!(r.kind, ErrorKind::InvalidRequest);
        assert!(
            r.message.contains("at most 900 File streams"),
            "{}",
            r.message
        );
        assert!(
            e.describe("one-more").is_err(),
            "the refusal changed nothing"
        );
        let mut memory = StreamDefinition::new("in-memory", StrategyOnFull::RejectNewData);
        memory.persistence = Some(Persistence::Memory);
        e.create(&memory).unwrap();
        // Every File stream's keyspace holds a table: what fjall's recovery
        // queues a message for.
        e.sync().unwrap();
        e.close().unwrap();
        drop(e);
        let mut e = Engine::open(dir.path()).unwrap();
        assert_eq!(e.read("s899", 0, 10).unwrap().len(), 1);
        e.delete("s0").unwrap();
        e.create(&one_more).unwrap();
    }

    /// Messages of `name` in fjall's chunks, once every open chunk is
    /// sealed and applied.
    fn chunked(e: &mut Engine, name: &str) -> u64 {
        e.sync().unwrap();
        let ks = e.streams[name].ks.clone().unwrap();
        ks.iter()
            .map(|i| {
                let (_, v) = i.into_inner().unwrap();
                ChunkView::parse(&v).unwrap().count()
            })
            .sum()
    }

    fn state_keys(e: &Engine) -> usize {
        e.writer.wait_applied().unwrap();
        e.ks_state.iter().count()
    }

    /// Stream `name` with one Kinesis export, `k`.
    fn exported(name: &str) -> StreamDefinition {
        let mut d = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
        d.exports.kinesis.push(bus_schema::KinesisConfig {
            common: ExportCommon {
                identifier: "k".into(),
                ..Default::default()
            },
            kinesis_stream_name: "x".into(),
        });
        d
    }

    /// Progress to sequence number `last`, with no compare-and-set.
    fn progress_to(last: i64) -> ExportProgress {
        ExportProgress {
            last_exported_sequence_number: last,
            last_export_time_ms: 1,
            error_message: None,
            exported_bytes_delta: 1,
            exported_messages_delta: 1,
            skipped_messages_delta: 0,
            removed_messages_delta: 0,
            expected_last_exported_sequence_number: None,
            expected_incarnation: None,
        }
    }

    fn fill(e: &mut Engine, stream: &str, n: usize) {
        let payload = vec![7u8; 100];
        let items: Vec<AppendItem<'_>> = (0..n)
            .map(|_| AppendItem {
                stream,
                payload: &payload,
            })
            .collect();
        let (results, _) = e.append_batch(&items).unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
    }

    fn append_numbered(e: &mut Engine, stream: &str, numbers: std::ops::Range<u8>) {
        let payloads: Vec<Vec<u8>> = numbers.map(|i| vec![i; 64]).collect();
        let items: Vec<AppendItem<'_>> = payloads
            .iter()
            .map(|payload| AppendItem { stream, payload })
            .collect();
        let (results, _) = e.append_batch(&items).unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
    }

    /// The first byte of each payload read from `stream`, in order.
    fn numbers(e: &Engine, stream: &str) -> Vec<u8> {
        let read = e.read(stream, 0, u64::MAX).unwrap();
        for (i, m) in read.iter().enumerate() {
            assert_eq!(m.sequence_number, i as i64);
        }
        read.iter().map(|m| m.payload[0]).collect()
    }

    /// What a crash at this instant leaves on disk.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn changes_logged_but_not_yet_in_fjall_are_read_and_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let torn = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        e.create(&exported("s")).unwrap();
        append_numbered(&mut e, "s", 0..3);
        e.writer.wait_applied().unwrap();
        {
            let gate = e.writer.applier_gate();
            let _held = gate.lock().unwrap();
            append_numbered(&mut e, "s", 3..7);
            e.commit_export("s", "k", &progress_to(4)).unwrap();
            append_numbered(&mut e, "s", 7..8);
            assert!(e.writer.applied() < e.writer.next_ticket() - 1);
            assert_eq!(numbers(&e, "s"), (0..8).collect::<Vec<_>>());
            let read = e.read("s", 2, 3).unwrap();
            let seqs: Vec<i64> = read.iter().map(|m| m.sequence_number).collect();
            assert_eq!(seqs, [2, 3, 4], "a range across fjall and the log");
            let lag = e.describe("s").unwrap().export_statuses[0].oldest_unexported_ingest_ms;
            assert!(lag.is_some(), "message 5 is found while unapplied");
            copy_dir(dir.path(), crashed.path());
            copy_dir(dir.path(), torn.path());
        }
        drop(e);

        let mut e = Engine::open(crashed.path()).unwrap();
        assert_eq!(numbers(&e, "s"), (0..8).collect::<Vec<_>>());
        let status = &e.describe("s").unwrap().export_statuses[0];
        assert_eq!(status.last_exported_sequence_number, 4);
        assert_eq!(chunked(&mut e, "s"), 8, "the log's messages are chunks now");
        drop(e);

        // A crash in the middle of writing the last record loses that
        // record (never acknowledged) and nothing before it.
        let log_dir = torn.path().join(LOG_DIR);
        tear_last_log(torn.path());
        let mut e = Engine::open(torn.path()).unwrap();
        assert_eq!(numbers(&e, "s"), (0..7).collect::<Vec<_>>());
        assert_eq!(
            e.describe("s").unwrap().export_statuses[0].last_exported_sequence_number,
            4
        );
        append_numbered(&mut e, "s", 9..10);
        assert_eq!(numbers(&e, "s"), [0, 1, 2, 3, 4, 5, 6, 9]);
        e.sync().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let logs = || {
            std::fs::read_dir(&log_dir)
                .unwrap()
                .filter(|f| {
                    f.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "log")
                })
                .count()
        };
        while logs() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "replayed files are released; one new file is active"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn the_active_journal_is_found_and_synced_through_our_own_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        e.create(&StreamDefinition::new("s", StrategyOnFull::RejectNewData))
            .unwrap();
        let id = active_journal(dir.path())
            .expect("fjall's journal layout changed: JournalSync must follow it");
        let path = dir.path().join(format!("{id}.jnl"));
        // A definition goes through fjall's journal (messages do not: their
        // chunks are ingested); a name that appears nowhere else.
        let name: String = crate::load::payload_for(0x2545_f491, 24)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let in_journal = || {
            std::fs::read(&path)
                .unwrap()
                .windows(name.len())
                .any(|w| w == name.as_bytes())
        };
        e.create(&StreamDefinition::new(
            name.as_str(),
            StrategyOnFull::RejectNewData,
        ))
        .unwrap();
        e.writer.wait_applied().unwrap();
        let mut journal = JournalSync {
            dir: dir.path().to_path_buf(),
            open: None,
        };
        journal.sync(&e.db).unwrap();
        assert_eq!(journal.open.as_ref().map(|(n, _)| *n), Some(id));
        assert!(
            in_journal(),
            "fjall's buffer did not reach the journal file"
        );
    }

    #[test]
    fn a_commit_for_an_older_incarnation_or_cursor_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        let d = exported("s");
        e.create(&d).unwrap();
        fill(&mut e, "s", 10);
        let old = e.describe("s").unwrap().incarnation;
        e.delete("s").unwrap();
        e.create(&d).unwrap();
        fill(&mut e, "s", 10);
        let new = e.describe("s").unwrap().incarnation;
        assert_ne!(old, new, "a stream created again must be a new incarnation");
        let progress = |incarnation: u64, expected_cursor: i64| ExportProgress {
            expected_last_exported_sequence_number: Some(expected_cursor),
            expected_incarnation: Some(incarnation),
            ..progress_to(4)
        };
        let cursor =
            |e: &Engine| e.describe("s").unwrap().export_statuses[0].last_exported_sequence_number;
        for refused in [progress(old, -1), progress(new, 2)] {
            match e.commit_export("s", "k", &refused) {
                Err(EngineError::Refused(r)) => assert_eq!(r.kind, ErrorKind::Conflict, "{r:?}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(cursor(&e), -1);
        }
        e.commit_export("s", "k", &progress(new, -1)).unwrap();
        assert_eq!(cursor(&e), 4);
    }

    #[test]
    fn deleting_a_stream_removes_its_data_and_cursors_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        let d = exported("s");
        e.create(&d).unwrap();
        fill(&mut e, "s", 10_000);
        e.commit_export("s", "k", &progress_to(5)).unwrap();
        assert_eq!(chunked(&mut e, "s"), 10_000);
        let folder = e.streams["s"].ks.as_ref().unwrap().path().to_path_buf();
        assert!(folder.is_dir());
        e.delete("s").unwrap();
        assert_eq!(
            state_keys(&e),
            0,
            "segments, bounds and cursors are gone at once"
        );
        assert!(!folder.exists(), "the stream's keyspace folder is gone");
        drop(e);
        let e = Engine::open(dir.path()).unwrap();
        assert!(!e.exists("s"));
        assert!(!folder.exists());
    }

    #[test]
    fn a_stream_deleted_before_a_reopen_and_created_again_keeps_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut def = StreamDefinition::new("s", StrategyOnFull::RejectNewData);
        def.max_size_bytes = Some(1024);
        def.segment_size_bytes = Some(1024);
        let mut e = Engine::open(dir.path()).unwrap();
        e.create(&def).unwrap();
        let first = e.streams["s"].id;
        e.delete("s").unwrap();
        drop(e);
        drop(Engine::open(dir.path()).unwrap());
        let mut e = Engine::open(dir.path()).unwrap();
        e.create(&def).unwrap();
        assert_ne!(e.streams["s"].id, first, "a stream id is never reused");
        fill(&mut e, "s", 1);
        drop(e);
        let mut e = Engine::open(dir.path()).unwrap();
        let mut t = def.clone();
        t.name = "t".into();
        e.create(&t).unwrap();
        drop(e);
        let e = Engine::open(dir.path()).unwrap();
        let got = e.read("s", 0, 10).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].payload, vec![7u8; 100]);
    }

    #[test]
    fn messages_gone_from_the_database_are_recorded_as_lost_at_open_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        let mut def = StreamDefinition::new("s", StrategyOnFull::RejectNewData);
        def.max_size_bytes = Some(1 << 30);
        e.create(&def).unwrap();
        // More than a log file: the first file's messages live only in
        // fjall once the file is removed.
        let payload = vec![3u8; 64 * 1024];
        let total = (crate::wal::LOG_FILE_BYTES as usize / payload.len()) as u64 * 3 / 2;
        for _ in 0..total {
            let item = AppendItem {
                stream: "s",
                payload: &payload,
            };
            let (results, _) = e.append_batch(&[item]).unwrap();
            assert!(results[0].is_ok());
        }
        e.sync().unwrap();
        let name = e.streams["s"].ks.as_ref().unwrap().name().to_string();
        drop(e);
        // Something outside the store takes the stream's chunks away.
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let ks = db.keyspace(&name, data_keyspace_options).unwrap();
            db.delete_keyspace(ks).unwrap();
        }
        let mut e = Engine::open(dir.path()).unwrap();
        let missing = |e: &Engine| -> Vec<LossEntry> {
            e.losses()
                .into_iter()
                .filter(|l| l.cause == LossCause::Missing)
                .collect()
        };
        let lost = missing(&e);
        assert_eq!(lost.len(), 1, "{lost:?}");
        let lost_count = lost[0].messages as u64;
        assert!(
            lost_count > 0 && lost_count < total,
            "{lost_count} of {total}"
        );
        let kept = e.read("s", 0, total).unwrap();
        assert_eq!(kept.len() as u64, total - lost_count, "the log's messages");
        assert_eq!(kept[0].sequence_number as u64, lost_count);
        fill(&mut e, "s", 1);
        drop(e);
        let e = Engine::open(dir.path()).unwrap();
        assert_eq!(missing(&e)[0].messages as u64, lost_count, "recorded once");
        let read = e.read("s", 0, total + 1).unwrap();
        assert_eq!(read.len() as u64, total - lost_count + 1);
        assert_eq!(read.last().unwrap().sequence_number as u64, total);
    }

    #[test]
    fn a_delete_logged_but_not_applied_is_carried_out_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        e.create(&StreamDefinition::new("s", StrategyOnFull::RejectNewData))
            .unwrap();
        fill(&mut e, "s", 3_000);
        e.sync().unwrap();
        let name = e.streams["s"].ks.as_ref().unwrap().name().to_string();
        {
            let gate = e.writer.applier_gate();
            let _held = gate.lock().unwrap();
            e.delete("s").unwrap();
            copy_dir(dir.path(), crashed.path());
        }
        drop(e);
        let e = Engine::open(crashed.path()).unwrap();
        assert!(!e.exists("s"));
        assert!(
            !e.db.keyspace_exists(&name),
            "the replayed delete drops the keyspace"
        );
    }

    #[test]
    fn chunks_never_span_segments_and_overwritten_segments_leave_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        let mut d = StreamDefinition::new("s", StrategyOnFull::OverwriteOldestData);
        d.max_size_bytes = Some(100 * 132);
        d.segment_size_bytes = Some(10 * 132);
        e.create(&d).unwrap();
        for _ in 0..10 {
            fill(&mut e, "s", 100);
        }
        let info = e.describe("s").unwrap();
        assert_eq!(info.storage.newest_sequence_number, 999);
        assert_eq!(info.storage.oldest_sequence_number, 900);
        assert_eq!(chunked(&mut e, "s"), 100);
        let ks = e.streams["s"].ks.clone().unwrap();
        for item in ks.iter() {
            let (first, last) = parse_chunk_key(&item.key().unwrap()).unwrap();
            assert_eq!(
                first / 10,
                last / 10,
                "chunk {first}..={last} spans segments"
            );
        }
        let read = e.read("s", 0, u64::MAX).unwrap();
        let seqs: Vec<i64> = read.iter().map(|m| m.sequence_number).collect();
        assert_eq!(seqs, (900..1000).collect::<Vec<_>>());
    }

    /// The ledger entry of (stream, export, cause).
    fn loss<'a>(
        losses: &'a [LossEntry],
        stream: &str,
        export: Option<&str>,
        cause: LossCause,
    ) -> Option<&'a LossEntry> {
        losses.iter().find(|l| {
            l.stream == stream && l.export_identifier.as_deref() == export && l.cause == cause
        })
    }

    #[test]
    fn the_loss_ledger_records_every_way_out_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        // Overwrite: 1,000 messages into room for 100.
        let mut d = exported("s");
        d.strategy_on_full = Some(StrategyOnFull::OverwriteOldestData);
        d.max_size_bytes = Some(100 * 132);
        d.segment_size_bytes = Some(10 * 132);
        e.create(&d).unwrap();
        fill(&mut e, "s", 1000);
        let losses = e.losses();
        let over = loss(&losses, "s", None, LossCause::Overwrite).expect("overwrite entry");
        assert_eq!(over.messages, 900);
        assert_eq!(over.ranges.len(), 1, "adjacent trims merge: {over:?}");
        assert_eq!(
            (
                over.ranges[0].first_sequence_number,
                over.ranges[0].last_sequence_number
            ),
            (0, 899)
        );
        // The exporter finds 0..=899 gone and skips 900..=901 as
        // undeliverable: an entry for the export of each cause.
        let mut p = progress_to(901);
        p.skipped_messages_delta = 902;
        p.removed_messages_delta = 900;
        p.error_message = Some("2 message(s) over the destination's limit".into());
        e.commit_export("s", "k", &p).unwrap();
        let losses = e.losses();
        let removed = loss(&losses, "s", Some("k"), LossCause::Overwrite).unwrap();
        assert_eq!(removed.messages, 900);
        let skipped = loss(&losses, "s", Some("k"), LossCause::Skipped).unwrap();
        assert_eq!(skipped.messages, 2);
        assert!(skipped
            .detail
            .as_deref()
            .unwrap()
            .contains("over the destination"));
        // More removed than skipped is refused and changes nothing.
        let mut bad = progress_to(950);
        bad.expected_last_exported_sequence_number = Some(901);
        bad.removed_messages_delta = 5;
        assert!(e.commit_export("s", "k", &bad).is_err());
        assert_eq!(e.losses(), losses);
        // TTL.
        let mut t = StreamDefinition::new("t", StrategyOnFull::RejectNewData);
        t.time_to_live_ms = Some(60_000);
        t.segment_size_bytes = Some(10 * 132);
        e.create(&t).unwrap();
        fill(&mut e, "t", 30);
        e.expire(now_ms() + 3_600_000).unwrap();
        let ttl = loss(&e.losses(), "t", None, LossCause::Ttl)
            .unwrap()
            .clone();
        assert_eq!(ttl.messages, 30);
        // Deleting a stream with a backlog: what its export had not sent.
        fill(&mut e, "s", 10);
        e.delete("s").unwrap();
        let losses = e.losses();
        let gone = loss(&losses, "s", None, LossCause::Deleted).unwrap();
        assert_eq!(gone.messages, 100);
        let unexported = loss(&losses, "s", Some("k"), LossCause::Deleted).unwrap();
        assert_eq!(unexported.messages, 100, "910..=1009 went with the stream");
        let overwritten = loss(&losses, "s", Some("k"), LossCause::Overwrite).unwrap();
        assert_eq!(
            overwritten.messages, 908,
            "902..=909 were overwritten unread"
        );
        // All of it is durable.
        e.close().unwrap();
        drop(e);
        let e = Engine::open(dir.path()).unwrap();
        assert_eq!(e.losses(), losses);
    }

    #[test]
    fn a_large_backlog_is_chunked_and_read_back_across_chunks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        e.create(&StreamDefinition::new("s", StrategyOnFull::RejectNewData))
            .unwrap();
        let payloads: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_be_bytes().repeat(256)).collect();
        for batch in payloads.chunks(500) {
            let items: Vec<AppendItem<'_>> = batch
                .iter()
                .map(|payload| AppendItem {
                    stream: "s",
                    payload,
                })
                .collect();
            e.append_batch(&items).unwrap();
        }
        // Part in fjall, part sealed, part in the open chunk.
        let mut seen = 0u32;
        let mut start = 0u64;
        while start < 3000 {
            let read = e.read("s", start, 777).unwrap();
            for m in &read {
                assert_eq!(m.sequence_number, seen as i64);
                assert_eq!(m.payload, payloads[seen as usize]);
                seen += 1;
            }
            start += read.len() as u64;
        }
        assert_eq!(seen, 3000);
        e.sync().unwrap();
        assert!(e.streams["s"].ks.as_ref().unwrap().iter().count() >= 3);
        drop(e);
        let e = Engine::open(dir.path()).unwrap();
        let read = e.read("s", 1234, 2).unwrap();
        assert_eq!(read[0].payload, payloads[1234]);
        assert_eq!(read[1].sequence_number, 1235);
    }

    /// Appends one 10-byte message of `byte`s to `stream`; its sequence
    /// number.
    fn append_byte(e: &mut Engine, stream: &str, byte: u8) -> u64 {
        let (results, _) = e
            .append_batch(&[AppendItem {
                stream,
                payload: &[byte; 10],
            }])
            .unwrap();
        results[0].as_ref().unwrap().0 as u64
    }

    /// What a power loss leaves: `dir` copied with the newest log record
    /// torn (the appends not synced yet).
    fn power_loss_copy(dir: &Path, to: &Path) {
        copy_dir(dir, to);
        tear_last_log(to);
    }

    /// Cuts the last 3 bytes of the largest log file under database `root`
    /// (its newest record, half written).
    fn tear_last_log(root: &Path) {
        let last = std::fs::read_dir(root.join(LOG_DIR))
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let len = std::fs::metadata(&last).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - 3).unwrap();
    }

    #[test]
    fn sequence_numbers_are_never_issued_again_after_a_power_loss() {
        let dir = tempfile::tempdir().unwrap();
        let lost_power = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let mut e = Engine::open_in_boot(dir.path(), "boot-1").unwrap();
        e.create(&StreamDefinition::new("s", StrategyOnFull::RejectNewData))
            .unwrap();
        append_numbered(&mut e, "s", 0..5);
        append_numbered(&mut e, "s", 5..8);
        // Messages 5..8 were acknowledged, maybe exported, then the power
        // went before their log record reached the disk.
        power_loss_copy(dir.path(), lost_power.path());
        copy_dir(dir.path(), crashed.path());
        drop(e);

        let mut e = Engine::open_in_boot(lost_power.path(), "boot-2").unwrap();
        let seq = append_byte(&mut e, "s", 42);
        assert_eq!(seq, SEQ_RESERVE_STEP, "5, 6 and 7 are not issued again");
        let read = e.read("s", 0, 100).unwrap();
        let seqs: Vec<u64> = read.iter().map(|m| m.sequence_number as u64).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, SEQ_RESERVE_STEP]);
        assert_eq!(e.available("s", 0).unwrap(), 6, "the hole is not counted");
        let from_hole = e.read("s", 6, 1).unwrap();
        assert_eq!(from_hole[0].sequence_number as u64, SEQ_RESERVE_STEP);
        let two = e.read("s", 3, 2).unwrap();
        assert_eq!(two.len(), 2, "max_count counts messages");
        // The hole survives a clean restart, and the numbers go on.
        e.close().unwrap();
        drop(e);
        let mut e = Engine::open_in_boot(lost_power.path(), "boot-2").unwrap();
        assert_eq!(e.available("s", 0).unwrap(), 6);
        assert_eq!(append_byte(&mut e, "s", 43), SEQ_RESERVE_STEP + 1);
        drop(e);

        // A crash of the process alone (same boot, the log as the OS had
        // it) loses nothing, so nothing is skipped.
        let mut e = Engine::open_in_boot(crashed.path(), "boot-1").unwrap();
        assert_eq!(append_byte(&mut e, "s", 44), 8);
        assert_eq!(numbers(&e, "s"), [0, 1, 2, 3, 4, 5, 6, 7, 44]);
    }

    #[test]
    fn a_forward_step_of_the_wall_clock_does_not_expire_recent_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        let mut d = StreamDefinition::new("s", StrategyOnFull::RejectNewData);
        d.time_to_live_ms = Some(60_000);
        e.create(&d).unwrap();
        fill(&mut e, "s", 10);
        let (wall, mono) = (now_ms(), std::time::Instant::now());
        e.observe_clock(wall, mono);
        // One second later the wall clock reads a year ahead (the first
        // NTP sync of a device without a real-time clock).
        let year = 365 * 24 * 3600 * 1000;
        let after = wall + year + 1_000;
        e.observe_clock(after, mono + std::time::Duration::from_secs(1));
        assert_eq!(e.expire(after).unwrap(), 0, "data appended 1 s ago stays");
        assert_eq!(e.read("s", 0, 100).unwrap().len(), 10);
        // Once its TTL has really passed, it goes.
        let later = after + 60_000;
        e.observe_clock(later, mono + std::time::Duration::from_secs(61));
        assert_eq!(e.expire(later).unwrap(), 1);
        assert!(e.read("s", 0, 100).unwrap().is_empty());
    }

    #[test]
    fn describe_reports_the_ingest_time_of_the_oldest_unexported_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(dir.path()).unwrap();
        for persistence in [Persistence::File, Persistence::Memory] {
            let name = format!("{persistence:?}");
            let mut d = StreamDefinition::new(name.as_str(), StrategyOnFull::RejectNewData);
            d.persistence = Some(persistence);
            d.exports.kinesis.push(bus_schema::KinesisConfig {
                common: ExportCommon {
                    identifier: "k".into(),
                    ..Default::default()
                },
                kinesis_stream_name: "x".into(),
            });
            e.create(&d).unwrap();
            let lag = |e: &Engine| {
                e.describe(&name).unwrap().export_statuses[0].oldest_unexported_ingest_ms
            };
            assert_eq!(lag(&e), None, "nothing to export yet");
            let payload = [1u8];
            let (r, _) = e
                .append_batch(&[
                    AppendItem {
                        stream: &name,
                        payload: &payload,
                    },
                    AppendItem {
                        stream: &name,
                        payload: &payload,
                    },
                ])
                .unwrap();
            let first_ms = r[0].as_ref().unwrap().1;
            assert_eq!(lag(&e), Some(first_ms));
            let progress = ExportProgress {
                exported_bytes_delta: 2,
                exported_messages_delta: 2,
                ..progress_to(1)
            };
            e.commit_export(&name, "k", &progress).unwrap();
            assert_eq!(lag(&e), None, "all exported");
        }
    }
}
