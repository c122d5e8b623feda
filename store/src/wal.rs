//! The store's write-ahead log, and the thread that applies it to fjall.
//!
//! Every change the engine makes (appends, definitions, cursors, trims,
//! removals) is a [`WriteSet`]. [`Writer::commit`] appends it to a log file of
//! our own (one `write`; an `fdatasync` too when asked, for `flushOnWrite`) and
//! queues it for the applier thread, which commits the write sets to fjall one
//! by one, in order. The engine answers as soon as `commit` returns: an
//! acknowledged change is in the log, so a killed process loses none of it
//! (the next open replays what fjall lacks), and no acknowledgement waits on
//! fjall's insert path, which stalls for milliseconds whenever a flush or a
//! compaction registers its tables (it holds the tree's version lock through
//! file syncs and frees the flushed memtable meanwhile).
//!
//! Until the applier has committed it, a change exists only in the log and in
//! the engine's memory: the engine keeps the unapplied data records of each
//! stream for its reads, and waits for the applier ([`Writer::wait_applied`])
//! before the rare operations that read fjall's other keyspaces.
//!
//! A log file is removed once everything in it is in fjall and fjall has
//! synced its journal; files are short-lived, so most of the log never
//! reaches the disk. Without `flushOnWrite`, a change reaches the disk within
//! the background sync interval after the applier commits it (the applier
//! trails by milliseconds), as before the log existed.
//!
//! Message data is the exception: a message is logged as a record of the
//! `Data` keyspace (key sid ++ sequence number, value ingest ms ++ payload)
//! that the applier skips. The engine groups a stream's messages into chunks
//! and hands each sealed chunk to the applier ([`Writer::send_chunk`], not
//! logged again), which inserts it into the stream's keyspace. A log file is
//! released only after the chunks holding its messages are in fjall (the
//! engine seals every open chunk before it starts a new file), and replay
//! returns the messages of the remaining files so that the engine can
//! rebuild the chunks fjall lacks.
//!
//! Record: `[u32 body length][u32 CRC-32 of body][body]`, little endian; body:
//! `[u64 ticket][u32 op count]`, then per op `[u8 keyspace][u8 action: 0
//! remove, 1 insert, 2 trim chunks, 3 drop data][u32 key length][key]` and,
//! for an insert or a trim, `[u32 value length][value]`. A trim (key sid,
//! value the new oldest sequence number, both u64 big endian) removes the
//! stream's chunks below it; a drop (key sid) deletes the stream's keyspace. Tickets count up from 1 with no gap. Every fjall batch the applier
//! commits also stores its ticket (`META_APPLIED_TICKET`), so replay applies
//! exactly the records fjall lacks, in order, and stops at the first torn,
//! corrupt or missing one.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};

use crate::keys::{chunk_key, data_keyspace_name, ID_MARK_PREFIX, META_APPLIED_TICKET};

/// A log file is sealed (and a new one started) once it holds this many
/// bytes; the applier removes it after committing its last change.
pub const LOG_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes of changes logged but not yet committed to fjall at most (keys,
/// values and [`OP_OVERHEAD_BYTES`] per operation); a commit beyond it waits
/// for the applier (back-pressure).
pub const APPLY_QUEUE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Bytes of chunks waiting for the applier plus messages of the active log
/// file not yet in a sealed chunk, at most, past which a commit waits: the
/// back-pressure counts the chunks a log rotation is about to seal, so that
/// appends slow down evenly as the applier falls behind instead of stopping
/// for the whole burst of chunks each rotation seals (tens of ms).
pub const APPLY_PENDING_BYTES_MAX: u64 = APPLY_QUEUE_BYTES_MAX + LOG_FILE_BYTES / 2;
/// Memory an operation takes besides its key and value, counted against
/// [`APPLY_QUEUE_BYTES_MAX`] so that many tiny changes are bounded too.
pub const OP_OVERHEAD_BYTES: u64 = 64;
/// Body bytes of one log record at most (a batch of appends at its largest is
/// far below): a longer declared length is corruption, and replay stops there.
pub const RECORD_BYTES_MAX: u32 = 1024 * 1024 * 1024;
/// Free space the log leaves on its file system when it grows for appends,
/// in bytes: room for the applier to move the log's changes into fjall
/// (which writes them twice, journal and table, before a log file can go)
/// and for fjall's flushes. Below it, appends are refused (before anything
/// changes) with an error that says the disk is full.
pub const APPEND_DISK_HEADROOM_BYTES: u64 = 24 * 1024 * 1024;
/// The same for the other changes (cursors, definitions, deletes), which are
/// small and let exports go on and streams be deleted on a full disk, in
/// bytes.
pub const OTHER_DISK_HEADROOM_BYTES: u64 = 4 * 1024 * 1024;
/// Free space below which the applier waits (checking every
/// [`APPLIER_DISK_RECHECK_MS`]) instead of writing to fjall, in bytes on top
/// of the job's own size: fjall treats a failed write as fatal and poisons
/// the database.
pub const APPLIER_DISK_HEADROOM_BYTES: u64 = 2 * 1024 * 1024;
/// How often a waiting applier looks at the free space again, in ms.
pub const APPLIER_DISK_RECHECK_MS: u64 = 100;
/// The log preallocates its files in steps of this many bytes (at least),
/// so that a record never meets a full disk halfway through its write.
pub const LOG_RESERVE_STEP_BYTES: u64 = 1024 * 1024;
/// Name of the log directory, inside the database directory.
pub const LOG_DIR: &str = "wal";

const HEADER_BYTES: usize = 8;

/// The keyspaces a change can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ks {
    Streams = 0,
    State = 1,
    Meta = 2,
    Data = 3,
}

impl Ks {
    fn from_tag(tag: u8) -> Option<Ks> {
        Some(match tag {
            0 => Ks::Streams,
            1 => Ks::State,
            2 => Ks::Meta,
            3 => Ks::Data,
            _ => return None,
        })
    }
}

/// fjall handles of the keyspaces, indexed by [`Ks`] (all but `Data`: each
/// stream's data has a keyspace of its own).
#[derive(Clone)]
pub struct Keyspaces {
    pub db: Database,
    pub by_tag: [Keyspace; 3],
    /// Memtable size at which the applier rotates each keyspace's memtable,
    /// in bytes: below the keyspace's own `max_memtable_size`, so that fjall
    /// never asks its worker to rotate (see [`Keyspaces::rotate_full`] and
    /// `engine::WORKER_THREADS`).
    pub rotate_at: [u64; 3],
    /// Options of a stream's chunk keyspace.
    pub data_options: fn() -> fjall::KeyspaceCreateOptions,
}

/// What to do with a stream's keyspace once a batch is committed.
enum After {
    Trim(Keyspace, [u8; 16]),
    Drop(Keyspace),
}

impl Keyspaces {
    fn meta(&self) -> &Keyspace {
        &self.by_tag[Ks::Meta as usize]
    }

    /// Stream `sid`'s chunk keyspace, opened (and created) if `create`, or
    /// if it exists.
    pub fn stream_keyspace(&self, sid: u64, create: bool) -> Result<Option<Keyspace>, String> {
        let name = data_keyspace_name(sid);
        if !create && !self.db.keyspace_exists(&name) {
            return Ok(None);
        }
        self.db
            .keyspace(&name, self.data_options)
            .map(Some)
            .map_err(|e| format!("opening keyspace {name}: {e}"))
    }

    /// Deletes a keyspace so that its fjall id is never given again.
    /// fjall 3.1.13 gives a new keyspace the id after the highest it finds
    /// at open; once the keyspace holding the highest id was deleted, a
    /// reopen gave its id to the next keyspace created, and the open after
    /// that applied the old deletion to the new keyspace: its folder was
    /// removed with every chunk in it (found by the model test: create,
    /// delete, reopen, create again, append, reopen, create another,
    /// reopen: the stream was empty). So the highest id always belongs to a
    /// live keyspace: before the keyspace with the highest id is deleted, an
    /// empty placeholder (`ID_MARK_PREFIX`) takes the next id; placeholders
    /// that no longer hold the highest id are deleted.
    pub fn delete_keyspace(&self, ks: Keyspace) -> Result<(), String> {
        let err = |e: fjall::Error| e.to_string();
        let others: Vec<Keyspace> = self
            .db
            .list_keyspace_names()
            .into_iter()
            .filter(|n| **n != **ks.name())
            .filter_map(|n| self.db.keyspace(&n, KeyspaceCreateOptions::default).ok())
            .collect();
        let highest = others.iter().map(Keyspace::id).max().unwrap_or(0);
        let mut marks: Vec<Keyspace> = others
            .into_iter()
            .filter(|k| k.name().starts_with(ID_MARK_PREFIX))
            .collect();
        let mut top = highest;
        if ks.id() > highest {
            let n = marks
                .iter()
                .filter_map(|k| k.name()[ID_MARK_PREFIX.len()..].parse::<u64>().ok())
                .max()
                .map_or(0, |n| n + 1);
            let name = format!("{ID_MARK_PREFIX}{n}");
            top = self
                .db
                .keyspace(&name, KeyspaceCreateOptions::default)
                .map_err(err)?
                .id();
        }
        self.db.delete_keyspace(ks).map_err(err)?;
        marks.retain(|k| k.id() < top);
        for mark in marks {
            self.db.delete_keyspace(mark).map_err(err)?;
        }
        Ok(())
    }

    /// Commits `ops` and the ticket to fjall as one batch, then rotates the
    /// memtables it filled. Message records are skipped (their chunks come
    /// through [`Job::Chunk`]); a trim drops the tables of the chunks below
    /// the new oldest sequence number (each chunk is ingested as a table of
    /// its own, so whole files leave the disk, and no tombstone is written);
    /// a drop deletes the stream's keyspace.
    fn apply(&self, ticket: u64, ops: &[Op]) -> Result<(), String> {
        let mut batch = self.db.batch();
        let mut touched = [false, false, true];
        let mut after = Vec::new();
        for op in ops {
            let sid = || {
                op.key
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| "a data operation's key is not a stream id".to_string())
            };
            match (op.ks, op.action) {
                (Ks::Data, Action::Insert | Action::Remove) => {}
                (Ks::Data, Action::TrimChunks) => {
                    let below = op
                        .value
                        .as_ref()
                        .and_then(|v| v.as_ref().try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or("a trim's value is not a sequence number")?;
                    if let Some(ks) = self.stream_keyspace(sid()?, false)? {
                        after.push(After::Trim(ks, chunk_key(below, 0)));
                    }
                }
                (Ks::Data, Action::DropData) => {
                    if let Some(ks) = self.stream_keyspace(sid()?, false)? {
                        after.push(After::Drop(ks));
                    }
                }
                (_, Action::TrimChunks | Action::DropData) => {}
                (tag, action) => {
                    touched[tag as usize] = true;
                    let ks = &self.by_tag[tag as usize];
                    match (&op.value, action) {
                        (Some(v), Action::Insert) => batch.insert(ks, op.key.clone(), v.clone()),
                        _ => batch.remove(ks, op.key.clone()),
                    }
                }
            }
        }
        batch.insert(
            self.meta(),
            META_APPLIED_TICKET,
            ticket.to_be_bytes().to_vec(),
        );
        batch.commit().map_err(|e| e.to_string())?;
        let trimmed = after.iter().any(|a| matches!(a, After::Trim(..)));
        for a in after {
            use fjall::AbstractTree;
            match a {
                After::Trim(ks, end) => {
                    ks.tree
                        .drop_range::<&[u8], _>(..&end[..])
                        .map_err(|e| e.to_string())?;
                }
                After::Drop(ks) => {
                    // Chunks first: fjall then removes each file and its
                    // descriptor from its cache as it does for a trim. A
                    // keyspace deleted with its tables leaves their
                    // descriptors cached (fjall 3.1.13), holding the
                    // deleted files' blocks until they are evicted. Every
                    // level back into level 0 first: the drop looks at
                    // level 0 only; it forgets the old versions, so the
                    // files go while their folder still exists.
                    for level in (1..=LEVEL_TABLES_MAX.len() as u8).rev() {
                        if ks.tree.level_table_count(level.into()).unwrap_or(0) > 0 {
                            let up = lsm_tree::compaction::MoveDown(level, 0);
                            ks.tree
                                .compact(std::sync::Arc::new(up), 0)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    ks.tree
                        .compact(
                            std::sync::Arc::new(fjall::compaction::Fifo::new(0, None)),
                            u64::MAX,
                        )
                        .map_err(|e| e.to_string())?;
                    self.delete_keyspace(ks)?;
                }
            }
        }
        if trimmed {
            // The dropped tables' files go when fjall forgets the versions
            // that still list them, which it does when a memtable is sealed
            // (fjall 3.1.13 runs its version clean-up there, for every
            // keyspace). The meta memtable just took this batch's ticket.
            self.meta().rotate_memtable().map_err(|e| e.to_string())?;
        }
        self.rotate_full(touched)
    }

    /// Seals each touched memtable that reached its size, here rather than
    /// in fjall's workers. fjall 3.1.13 asks its workers to rotate with one
    /// queue message per commit for as long as a memtable is over its size,
    /// and a worker that rotates then blocks sending to that same bounded
    /// queue: with fast commits and busy workers, the queue filled and every
    /// worker blocked forever (seen here, at about 140,000 appends/s). The
    /// applier rotates at `rotate_at`, below fjall's own limit, so fjall never
    /// asks at all.
    fn rotate_full(&self, touched: [bool; 3]) -> Result<(), String> {
        use fjall::AbstractTree;
        for (i, ks) in self.by_tag.iter().enumerate() {
            if touched[i] && ks.tree.active_memtable().size() >= self.rotate_at[i] {
                ks.rotate_memtable().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Most chunk tables a data keyspace keeps in each level before they move
/// down to the next (without being rewritten: `MoveDown` only changes the
/// version). fjall 3.1.13 re-sorts a level's tables each time a run is
/// added to it, comparing every table with every other (lsm-tree 3.1.10
/// `optimize_runs`): with every chunk in level 0, a 60 s run at full speed
/// (450 chunks per stream) spent half of the applier's time there and fell
/// from 120,000 to 67,000 appends/s. Level 0 takes each ingested chunk;
/// level `n` takes level `n - 1` whole when it holds more than
/// `LEVEL_TABLES_MAX[n - 1]` tables, so a level is re-sorted once per that
/// many chunks.
pub const LEVEL_TABLES_MAX: [usize; 3] = [16, 512, 16_384];

/// The sequence number below which fjall may forget old versions of a
/// keyspace's table list when [`settle_levels`] moves tables down: all of
/// them (the store takes no snapshots; an open read holds the version it
/// reads). fjall's ingestion never forgets a version (lsm-tree 3.1.10 runs
/// its version clean-up there with watermark 0, which does nothing): with
/// 0 here, a chunk keyspace kept one version per chunk ingested until some
/// other compaction of it (`old_versions_of_a_chunk_keyspace_are_forgotten_as_chunks_arrive`),
/// and fjall alone, ingesting 2,500 chunks into one keyspace, grew by 96 MiB
/// (5 MiB with this watermark).
const VERSION_GC_WATERMARK: u64 = u64::MAX;

/// Writes a sealed chunk into its stream's keyspace as a table (and a blob
/// file) of its own, with fjall's ingestion (the chunk's bytes never go
/// through fjall's journal or memtable), then moves full levels down: what
/// the applier does for each chunk (`store-bench ingest` measures it).
pub fn ingest_chunk(ks: &Keyspace, key: &[u8; 16], value: &Slice) -> Result<(), String> {
    let mut ingestion = ks.start_ingestion().map_err(|e| e.to_string())?;
    ingestion
        .write(&key[..], value.clone())
        .map_err(|e| e.to_string())?;
    ingestion.finish().map_err(|e| e.to_string())?;
    settle_levels(ks)
}

/// Moves a level's tables down once it holds more than its bound (see
/// [`LEVEL_TABLES_MAX`]), and lets fjall forget the versions before.
fn settle_levels(ks: &Keyspace) -> Result<(), String> {
    use fjall::AbstractTree;
    for (level, &max) in LEVEL_TABLES_MAX.iter().enumerate() {
        if ks.tree.level_table_count(level).unwrap_or(0) <= max {
            break;
        }
        let down = lsm_tree::compaction::MoveDown(level as u8, level as u8 + 1);
        ks.tree
            .compact(std::sync::Arc::new(down), VERSION_GC_WATERMARK)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Remove = 0,
    Insert = 1,
    /// `Data` only: remove the stream's chunks below a sequence number.
    TrimChunks = 2,
    /// `Data` only: delete the stream's keyspace.
    DropData = 3,
}

impl Action {
    fn from_tag(tag: u8) -> Option<Action> {
        Some(match tag {
            0 => Action::Remove,
            1 => Action::Insert,
            2 => Action::TrimChunks,
            3 => Action::DropData,
            _ => return None,
        })
    }
    fn has_value(self) -> bool {
        matches!(self, Action::Insert | Action::TrimChunks)
    }
}

/// One operation: an insert (`value` set), a removal, or a stream data
/// operation ([`Action`]).
#[derive(Debug, Clone)]
pub struct Op {
    ks: Ks,
    action: Action,
    key: Slice,
    value: Option<Slice>,
}

/// What the writer shares with the background sync thread, which syncs the
/// log's files so that an append without `flushOnWrite` is on disk within
/// that thread's interval (its chunk may reach fjall much later). The
/// commit path only raises `dirty`; a rotation hands over a descriptor of
/// the new file through a lock-free queue.
#[derive(Default)]
pub struct LogSync {
    dirty: AtomicBool,
    files: crossbeam_queue::SegQueue<File>,
    current: Mutex<Option<File>>,
}

impl LogSync {
    /// Syncs the log's files written since the last call (the sync
    /// thread's side).
    pub fn sync(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(next) = self.files.pop() {
            if let Some(old) = current.replace(next) {
                old.sync_data()?;
            }
        }
        match current.as_ref() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

/// A message record found in the log by [`replay`].
pub struct LoggedMessage {
    pub sid: u64,
    pub seq: u64,
    /// Ingest ms ++ payload.
    pub value: Slice,
}

/// The changes of one engine operation, committed atomically.
#[derive(Debug, Default)]
pub struct WriteSet {
    ops: Vec<Op>,
    bytes: u64,
}

impl WriteSet {
    pub fn insert(&mut self, ks: Ks, key: impl Into<Slice>, value: impl Into<Slice>) {
        let (key, value) = (key.into(), value.into());
        if ks != Ks::Data {
            self.bytes += (key.len() + value.len()) as u64 + OP_OVERHEAD_BYTES;
        }
        self.ops.push(Op {
            ks,
            action: Action::Insert,
            key,
            value: Some(value),
        });
    }

    /// Removes stream `sid`'s chunks below sequence number `below`.
    pub fn trim_chunks(&mut self, sid: u64, below: u64) {
        self.bytes += 16 + OP_OVERHEAD_BYTES;
        self.ops.push(Op {
            ks: Ks::Data,
            action: Action::TrimChunks,
            key: Slice::from(&sid.to_be_bytes()[..]),
            value: Some(Slice::from(&below.to_be_bytes()[..])),
        });
    }

    /// Deletes stream `sid`'s keyspace.
    pub fn drop_data(&mut self, sid: u64) {
        self.bytes += 8 + OP_OVERHEAD_BYTES;
        self.ops.push(Op {
            ks: Ks::Data,
            action: Action::DropData,
            key: Slice::from(&sid.to_be_bytes()[..]),
            value: None,
        });
    }

    /// Bytes of the record this set makes in the log, at most.
    pub fn log_bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|o| 10 + o.key.len() + o.value.as_ref().map_or(0, |v| 4 + v.len()))
            .sum::<usize>() as u64
            + 32
    }

    pub fn remove(&mut self, ks: Ks, key: impl Into<Slice>) {
        let key = key.into();
        self.bytes += key.len() as u64 + OP_OVERHEAD_BYTES;
        self.ops.push(Op {
            ks,
            action: Action::Remove,
            key,
            value: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends this set's log record for `ticket` to `out`.
    fn encode(&self, ticket: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        out.extend_from_slice(&ticket.to_le_bytes());
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            out.push(op.ks as u8);
            out.push(op.action as u8);
            out.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
            out.extend_from_slice(&op.key);
            if let Some(v) = &op.value {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
        let body = &out[start + HEADER_BYTES..];
        let (len, crc) = (body.len() as u32, crc32fast::hash(body));
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why a log's records end where they do.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Clean,
    Torn(usize),
}

/// Decodes the records of one log file, calling `each(ticket, ops)` in order
/// until the end or the first record that is incomplete or corrupt.
fn decode_all(
    bytes: &[u8],
    mut each: impl FnMut(u64, Vec<Op>) -> Result<(), String>,
) -> Result<Ending, String> {
    let mut at = 0;
    while at < bytes.len() {
        let Some((ticket, ops, next)) = decode_one(bytes, at) else {
            return Ok(Ending::Torn(at));
        };
        each(ticket, ops)?;
        at = next;
    }
    Ok(Ending::Clean)
}

fn decode_one(bytes: &[u8], at: usize) -> Option<(u64, Vec<Op>, usize)> {
    let header = bytes.get(at..at + HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > RECORD_BYTES_MAX {
        return None;
    }
    let body = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len as usize)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = Reader(body);
    let ticket = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let count = r.u32()?;
    let mut ops = Vec::new();
    for _ in 0..count {
        let ks = Ks::from_tag(r.take(1)?[0])?;
        let action = Action::from_tag(r.take(1)?[0])?;
        let key_len = r.u32()? as usize;
        let key = Slice::from(r.take(key_len)?);
        let value = if action.has_value() {
            let value_len = r.u32()? as usize;
            Some(Slice::from(r.take(value_len)?))
        } else {
            None
        };
        ops.push(Op {
            ks,
            action,
            key,
            value,
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    Some((ticket, ops, at + HEADER_BYTES + len as usize))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

fn log_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number}.log"))
}

/// The numbers of the log files in `dir`, ascending.
fn log_files(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut numbers: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// What replay found: the last ticket fjall now holds and the number of the
/// next log file.
pub struct Replayed {
    pub last_ticket: u64,
    pub next_file: u64,
    /// Records applied from the log.
    pub applied: u64,
    /// Every message record of the log, in order: the engine rebuilds the
    /// chunks fjall lacks, sends them, then calls
    /// [`Writer::release_replayed`].
    pub messages: Vec<LoggedMessage>,
    /// The log files found, ascending; they stay until released.
    pub files: Vec<u64>,
}

/// Applies to fjall every logged change it lacks and syncs fjall; returns
/// the messages of the log for the engine. Stops at the first torn, corrupt
/// or missing record (the tail a crash can leave: never acknowledged, or not
/// `flushOnWrite` and lost with a power failure).
pub fn replay(dir: &Path, ks: &Keyspaces) -> Result<Replayed, String> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // The new directory's own entry, so that a synced log survives a
        // power failure even on the first run.
        if let Some(parent) = dir.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("syncing {}: {e}", parent.display()))?;
        }
    }
    let stored = ks
        .meta()
        .get(META_APPLIED_TICKET)
        .map_err(|e| e.to_string())?
        .map(|v| {
            v.as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| "meta applied ticket is not 8 bytes".to_string())
        })
        .transpose()?
        .unwrap_or(0);
    let files = log_files(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let mut last = stored;
    let mut stopped = false;
    let mut messages = Vec::new();
    for &number in &files {
        if stopped {
            break;
        }
        let path = log_path(dir, number);
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let ending = decode_all(&bytes, |ticket, ops| {
            if stopped {
                return Ok(());
            }
            // Messages of every record still in the log: their chunks may
            // not be in fjall even where the record's other changes are.
            for op in &ops {
                if let (Ks::Data, Action::Insert, Some(value)) = (op.ks, op.action, &op.value) {
                    if let Some((sid, seq)) = crate::keys::parse_data_key(&op.key) {
                        messages.push(LoggedMessage {
                            sid,
                            seq,
                            value: value.clone(),
                        });
                    }
                }
            }
            if ticket <= last {
                return Ok(());
            }
            if ticket != last + 1 {
                tracing::warn!(
                    file = %path.display(),
                    expected = last + 1,
                    found = ticket,
                    "write-ahead log has a gap; later changes are not replayed"
                );
                stopped = true;
                return Ok(());
            }
            ks.apply(ticket, &ops)?;
            last = ticket;
            Ok(())
        })?;
        if let Ending::Torn(offset) = ending {
            tracing::warn!(
                file = %path.display(),
                offset,
                "write-ahead log ends with an incomplete record (a crash mid-write); it was never acknowledged unless the machine lost power"
            );
        }
    }
    ks.db
        .persist(PersistMode::SyncAll)
        .map_err(|e| e.to_string())?;
    Ok(Replayed {
        last_ticket: last,
        next_file: files.last().map_or(1, |n| n + 1),
        applied: last - stored,
        messages,
        files,
    })
}

enum Job {
    Apply {
        ticket: u64,
        ops: Vec<Op>,
        bytes: u64,
    },
    /// A sealed chunk for a stream's keyspace, numbered from 1 in the order
    /// sent.
    Chunk {
        number: u64,
        ks: Keyspace,
        key: [u8; 16],
        value: Slice,
    },
    Release {
        file: u64,
    },
    /// The last descriptor of a removed log file. Closing it makes the file
    /// system free the file's blocks, so the applier does it, not the event
    /// loop: closed there, it stalled an append 3-5 ms at every rotation
    /// (measured on ext4; the stalls went when the close moved here).
    Close(File),
}

/// What the writer and the applier share. The commit path touches only
/// atomics and the lock-free queue: it shares no lock with the applier,
/// which runs at a lower priority and, preempted while holding one, would
/// hold the event loop for a whole scheduler time slice.
#[derive(Default)]
struct Shared {
    /// Last ticket committed to fjall.
    applied: AtomicU64,
    /// The applier is waiting for free disk space.
    disk_wait: AtomicBool,
    /// Number of the last chunk inserted into fjall.
    chunks_done: AtomicU64,
    /// Bytes queued for the applier.
    queued_bytes: AtomicU64,
    /// Highest sealed log file removed (its changes are synced in fjall).
    released: AtomicU64,
    failed: Mutex<Option<String>>,
    has_failed: AtomicBool,
    /// Threads in [`Shared::wait_until`].
    waiting: AtomicUsize,
    wake: Mutex<()>,
    changed: Condvar,
    /// Jobs for the applier, in order. Lock-free, as is waking the applier
    /// (`Thread::unpark`); std's channel takes a lock to wake its receiver.
    jobs: crossbeam_queue::SegQueue<Job>,
    /// No more jobs will come: the applier drains the queue and stops.
    closed: AtomicBool,
    /// Held by tests to stop the applier between jobs.
    #[cfg(test)]
    gate: Arc<Mutex<()>>,
}

/// How long a waiter sleeps at most before looking again (a backstop; the
/// applier wakes waiters when it progresses), in ms.
const WAIT_RECHECK_MS: u64 = 1;

impl Shared {
    fn failure(&self) -> Option<String> {
        if !self.has_failed.load(Ordering::SeqCst) {
            return None;
        }
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fail(&self, e: String) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.has_failed.store(true, Ordering::SeqCst);
        self.progressed();
    }

    /// Wakes the waiters, if any.
    fn progressed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _g = self.wake.lock().unwrap_or_else(|p| p.into_inner());
            self.changed.notify_all();
        }
    }

    /// Blocks until `done` holds or the applier has failed.
    fn wait_until(&self, done: impl Fn() -> bool) -> Result<(), String> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            // A failed log is reported even if what is awaited is done:
            // the caller must not go on as if the store were healthy.
            if let Some(e) = self.failure() {
                break Err(format!("the write-ahead log failed: {e}"));
            }
            if done() {
                break Ok(());
            }
            if self.disk_wait.load(Ordering::SeqCst) {
                break Err(
                    "the disk is full: the log's changes cannot reach the database until space is freed"
                        .to_string(),
                );
            }
            let g = self.wake.lock().unwrap_or_else(|p| p.into_inner());
            if done() || self.has_failed.load(Ordering::SeqCst) {
                continue;
            }
            let _ = self
                .changed
                .wait_timeout(g, std::time::Duration::from_millis(WAIT_RECHECK_MS));
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

/// Logs changes and hands them to the applier thread; see the module docs.
pub struct Writer {
    dir: PathBuf,
    active: File,
    active_number: u64,
    active_bytes: u64,
    /// Bytes of the active file preallocated (its blocks are reserved).
    reserved: u64,
    /// Whether the directory entry of the active file is known synced.
    active_entry_synced: bool,
    /// Size at which the active file is sealed ([`LOG_FILE_BYTES`]).
    file_bytes: u64,
    /// Sealed files the applier has not released yet.
    sealed: VecDeque<(u64, File)>,
    next_ticket: u64,
    /// Number of the last chunk sent to the applier.
    chunks_sent: u64,
    /// Bytes of the chunks sent since the active file was started (their
    /// messages are in it).
    chunk_bytes_from_active: u64,
    log_sync: Arc<LogSync>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Time commits waited for room in the applier's queue
    /// (back-pressure), since the writer started.
    room_waited: std::time::Duration,
}

impl Writer {
    /// Starts logging in `dir` (after [`replay`]), the applier committing to
    /// `ks` and raising `dirty` after each commit.
    pub fn start(
        dir: &Path,
        ks: Keyspaces,
        replayed: &Replayed,
        dirty: Arc<AtomicBool>,
        log_sync: Arc<LogSync>,
    ) -> std::io::Result<Writer> {
        let mut sealed = VecDeque::new();
        for &number in &replayed.files {
            sealed.push_back((number, File::open(log_path(dir, number))?));
        }
        let active = create_log(dir, replayed.next_file)?;
        log_sync.files.push(active.try_clone()?);
        let shared = Arc::new(Shared::default());
        shared.applied.store(replayed.last_ticket, Ordering::SeqCst);
        let thread = {
            let (shared, dir) = (shared.clone(), dir.to_path_buf());
            std::thread::Builder::new()
                .name("store-apply".into())
                .spawn(move || apply_jobs(&ks, &dir, &shared, &dirty))?
        };
        Ok(Writer {
            dir: dir.to_path_buf(),
            active,
            active_number: replayed.next_file,
            active_bytes: 0,
            reserved: 0,
            active_entry_synced: false,
            file_bytes: LOG_FILE_BYTES,
            sealed,
            next_ticket: replayed.last_ticket + 1,
            chunks_sent: 0,
            chunk_bytes_from_active: 0,
            log_sync,
            buf: Vec::new(),
            shared,
            thread: Some(thread),
            room_waited: std::time::Duration::ZERO,
        })
    }

    /// Releases the log files found at open, in order, once every job sent
    /// so far is done (the engine first sends the chunks it rebuilt from
    /// them).
    pub fn release_replayed(&mut self) {
        let replayed: Vec<u64> = self
            .sealed
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n < self.active_number)
            .collect();
        for file in replayed {
            self.send(Job::Release { file });
        }
    }

    /// The ticket the next commit gets.
    pub fn next_ticket(&self) -> u64 {
        self.next_ticket
    }

    /// The last ticket committed to fjall.
    pub fn applied(&self) -> u64 {
        self.shared.applied.load(Ordering::SeqCst)
    }

    /// The number of the last chunk in fjall (chunks are numbered by
    /// [`Writer::send_chunk`]).
    pub fn chunks_done(&self) -> u64 {
        self.shared.chunks_done.load(Ordering::SeqCst)
    }

    /// Makes sure the next record, of at most `bytes`, can be written
    /// whole: preallocates the active file, keeping the free space the
    /// purpose needs ([`APPEND_DISK_HEADROOM_BYTES`] for appends,
    /// [`OTHER_DISK_HEADROOM_BYTES`] otherwise), and refuses appends while
    /// the applier waits for disk space and its queue is full. Called before
    /// the engine changes anything: an error here changes nothing.
    pub fn reserve(&mut self, bytes: u64, append: bool) -> Result<(), String> {
        if let Some(e) = self.failure() {
            return Err(format!("the write-ahead log failed earlier: {e}"));
        }
        let queued = self.shared.queued_bytes.load(Ordering::SeqCst);
        if append
            && self.shared.disk_wait.load(Ordering::SeqCst)
            && queued + bytes > APPLY_QUEUE_BYTES_MAX
        {
            return Err(format!(
                "the disk under {} is full: {} MiB of changes wait for space to reach the database",
                self.dir.display(),
                queued >> 20
            ));
        }
        if self.active_bytes + bytes <= self.reserved {
            return Ok(());
        }
        let step = (self.active_bytes + bytes - self.reserved).max(LOG_RESERVE_STEP_BYTES);
        let headroom = if append {
            APPEND_DISK_HEADROOM_BYTES
        } else {
            OTHER_DISK_HEADROOM_BYTES
        };
        let free =
            free_bytes(&self.dir).map_err(|e| format!("statvfs {}: {e}", self.dir.display()))?;
        if free < step + headroom {
            return Err(format!(
                "the disk under {} is full: {} MiB free, the store keeps {} MiB free for its database",
                self.dir.display(),
                free >> 20,
                headroom >> 20
            ));
        }
        preallocate(&self.active, self.reserved, step).map_err(|e| {
            format!(
                "the disk under {} is full: cannot reserve {step} bytes for the log: {e}",
                self.dir.display()
            )
        })?;
        self.reserved += step;
        Ok(())
    }

    /// Hands a sealed chunk to the applier; returns its number. Its
    /// messages are logged already, so it never waits: appends wait (or are
    /// refused) instead, which bounds the chunks queued.
    pub fn send_chunk(&mut self, ks: Keyspace, key: [u8; 16], value: Slice) -> u64 {
        let bytes = value.len() as u64 + OP_OVERHEAD_BYTES;
        self.shared.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.chunk_bytes_from_active += bytes;
        self.chunks_sent += 1;
        let number = self.chunks_sent;
        self.send(Job::Chunk {
            number,
            ks,
            key,
            value,
        });
        number
    }

    /// Waits until `bytes` more fit in the applier's queue, and counts them:
    /// the queue and the active file's messages not yet in a chunk together
    /// hold at most [`APPLY_PENDING_BYTES_MAX`]. While the applier waits for
    /// disk space, the queue may go over its bound by the small changes
    /// [`Writer::reserve`] still lets through.
    fn wait_for_room(&mut self, bytes: u64) -> Result<(), String> {
        let queued = &self.shared.queued_bytes;
        let unsealed = self
            .active_bytes
            .saturating_sub(self.chunk_bytes_from_active);
        let room = |q: u64| q == 0 || q + unsealed + bytes <= APPLY_PENDING_BYTES_MAX;
        if !room(queued.load(Ordering::SeqCst)) && !self.shared.disk_wait.load(Ordering::SeqCst) {
            let started = std::time::Instant::now();
            let waited = self
                .shared
                .wait_until(|| room(queued.load(Ordering::SeqCst)));
            self.room_waited += started.elapsed();
            waited?;
        }
        queued.fetch_add(bytes, Ordering::SeqCst);
        Ok(())
    }

    /// Time commits have waited for the applier to catch up with the log
    /// (back-pressure: fjall or the disk behind the appends).
    pub fn room_waited(&self) -> std::time::Duration {
        self.room_waited
    }

    /// Whether the active file is full: the engine then seals its open
    /// chunks and calls [`Writer::rotate`].
    pub fn is_full(&self) -> bool {
        self.active_bytes >= self.file_bytes
    }

    /// Why the applier stopped, if it failed (the store must then exit).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Logs `set` (synced to disk if `sync`) and queues it for fjall. Once
    /// this returns, the change survives a kill of the process (and, with
    /// `sync`, a power failure). Returns the set's ticket.
    pub fn commit(&mut self, set: WriteSet, sync: bool) -> Result<u64, String> {
        if let Some(e) = self.failure() {
            return Err(format!("the write-ahead log failed earlier: {e}"));
        }
        let ticket = self.next_ticket;
        self.buf.clear();
        set.encode(ticket, &mut self.buf);
        // A failed write or sync fails the log for good (the store must
        // restart: the record may be half written, and Linux may drop the
        // dirty pages of a failed sync), and wakes anyone waiting for the
        // applier, which will never see this ticket.
        if let Err(e) = self.active.write_all(&self.buf) {
            let e = format!("writing the write-ahead log: {e}");
            self.cut_back();
            self.shared.fail(e.clone());
            return Err(e);
        }
        self.active_bytes += self.buf.len() as u64;
        self.next_ticket += 1;
        self.log_sync.dirty.store(true, Ordering::SeqCst);
        if self.buf.capacity() > 2 * LOG_FILE_BYTES as usize {
            self.buf = Vec::new();
        }
        if sync {
            if let Err(e) = self.sync_all() {
                let e = format!("syncing the write-ahead log: {e}");
                self.active_bytes -= self.buf.len() as u64;
                self.cut_back();
                self.shared.fail(e.clone());
                return Err(e);
            }
        }
        let released = self.shared.released.load(Ordering::SeqCst);
        while self.sealed.front().is_some_and(|(n, _)| *n <= released) {
            if let Some((_, file)) = self.sealed.pop_front() {
                self.send(Job::Close(file));
            }
        }
        self.wait_for_room(set.bytes)?;
        // Message records stay in the log only: their chunks follow.
        let mut ops = set.ops;
        ops.retain(|o| !(o.ks == Ks::Data && o.action == Action::Insert));
        self.send(Job::Apply {
            ticket,
            ops,
            bytes: set.bytes,
        });
        Ok(ticket)
    }

    /// After a failed write or sync: cuts the active file back to its last
    /// complete record, so that the next open does not replay a change that
    /// was refused (best effort: a failing disk may refuse this too, and
    /// then replay stops at the torn record or keeps a record whose sync
    /// failed).
    fn cut_back(&mut self) {
        if let Err(e) = self.active.set_len(self.active_bytes) {
            tracing::error!(error = %e, "cannot cut the write-ahead log back to its last good record");
        }
    }

    fn send(&self, job: Job) {
        self.shared.jobs.push(job);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Syncs every log file whose changes may not be in fjall's synced
    /// journal yet, and the directory entry of the active one.
    fn sync_all(&mut self) -> std::io::Result<()> {
        for (_, f) in &self.sealed {
            f.sync_data()?;
        }
        self.active.sync_data()?;
        if !self.active_entry_synced {
            File::open(&self.dir)?.sync_all()?;
            self.active_entry_synced = true;
        }
        Ok(())
    }

    /// Seals the active file and starts the next one; the applier releases
    /// the sealed file once every job sent before this call is done.
    pub fn rotate(&mut self) -> Result<(), String> {
        self.rotate_file().map_err(|e| {
            let e = format!("starting a write-ahead log file: {e}");
            self.shared.fail(e.clone());
            e
        })
    }

    fn rotate_file(&mut self) -> std::io::Result<()> {
        let number = self.active_number + 1;
        let new = create_log(&self.dir, number)?;
        self.log_sync.files.push(new.try_clone()?);
        let old = std::mem::replace(&mut self.active, new);
        self.sealed.push_back((self.active_number, old));
        self.send(Job::Release {
            file: self.active_number,
        });
        self.active_number = number;
        self.active_bytes = 0;
        self.chunk_bytes_from_active = 0;
        self.reserved = 0;
        self.active_entry_synced = false;
        Ok(())
    }

    /// Waits until fjall holds every committed change and every chunk sent.
    pub fn wait_applied(&self) -> Result<(), String> {
        let (last, chunks) = (self.next_ticket - 1, self.chunks_sent);
        self.shared.wait_until(|| {
            self.shared.applied.load(Ordering::SeqCst) >= last
                && self.shared.chunks_done.load(Ordering::SeqCst) >= chunks
        })
    }

    /// A lock the applier takes before each job: holding it stops the
    /// applier between jobs.
    #[cfg(test)]
    pub fn applier_gate(&self) -> Arc<Mutex<()>> {
        self.shared.gate.clone()
    }
}

impl Drop for Writer {
    /// Lets the applier finish what is queued, then stops it.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Free bytes for an unprivileged writer on the file system of `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Disk space allocated to the files under `dir` (recursively; symbolic
/// links are not followed), bytes. Unreadable entries count as 0.
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            total += m.blocks() * 512;
            if m.is_dir() {
                pending.push(e.path());
            }
        }
    }
    total
}

/// Reserves the blocks of `len` bytes from `offset` of `file` without
/// changing its size (writes there cannot meet a full disk).
fn preallocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor we own.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // A file system without preallocation: fall back to checking free
        // space only.
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

fn create_log(dir: &Path, number: u64) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(log_path(dir, number))
}

/// How long the idle applier sleeps before looking at its queue again (a
/// backstop: a new job wakes it), in ms.
const APPLIER_IDLE_RECHECK_MS: u64 = 100;

/// Waits until the file system has room for a job of `bytes` and
/// [`APPLIER_DISK_HEADROOM_BYTES`] more; false if the writer closed
/// meanwhile (the job stays in the log for the next open).
fn wait_for_disk(dir: &Path, bytes: u64, shared: &Shared) -> bool {
    let mut logged = false;
    loop {
        let free = free_bytes(dir).unwrap_or(u64::MAX);
        if free >= bytes + APPLIER_DISK_HEADROOM_BYTES {
            if logged {
                tracing::info!(
                    free_mib = free >> 20,
                    "disk space is back; applying the log again"
                );
            }
            shared.disk_wait.store(false, Ordering::SeqCst);
            return true;
        }
        if !logged {
            tracing::warn!(
                free_mib = free >> 20,
                "the disk is full: changes wait in the write-ahead log until space is freed"
            );
            logged = true;
            shared.disk_wait.store(true, Ordering::SeqCst);
            shared.progressed();
        }
        if shared.closed.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(APPLIER_DISK_RECHECK_MS));
    }
}

/// Closes removed log files on a thread of its own. The last close of a
/// removed file frees its blocks, and a file system mounted with `discard`
/// discards them before `close` returns (seen: 15% of the applier's time in
/// `blkdev_issue_discard` under a sustained load); the applier goes on with
/// its jobs meanwhile.
struct Closer(Option<std::sync::mpsc::Sender<File>>);

impl Closer {
    fn start() -> Closer {
        let (tx, rx) = std::sync::mpsc::channel::<File>();
        let thread = std::thread::Builder::new()
            .name("store-close".into())
            .spawn(move || {
                crate::priority::lower_current_thread();
                // Ends when the applier does (the sender is dropped).
                for file in rx {
                    drop(file);
                }
            });
        Closer(thread.ok().map(|_| tx))
    }

    /// Closes `file` on the closing thread (here if it could not start).
    /// The files are the log's sealed ones, at most a few at a time.
    fn close(&self, file: File) {
        if let Some(tx) = &self.0 {
            // The thread only ends after the sender is gone.
            let _ = tx.send(file);
        }
    }
}

fn apply_jobs(ks: &Keyspaces, dir: &Path, shared: &Shared, dirty: &AtomicBool) {
    crate::priority::lower_current_thread();
    let closer = Closer::start();
    loop {
        // `closed` is read before the queue, so nothing pushed before the
        // close is missed.
        let closed = shared.closed.load(Ordering::SeqCst);
        let Some(job) = shared.jobs.pop() else {
            if closed {
                return;
            }
            std::thread::park_timeout(std::time::Duration::from_millis(APPLIER_IDLE_RECHECK_MS));
            continue;
        };
        #[cfg(test)]
        drop(shared.gate.lock());
        let writes = match &job {
            Job::Apply { bytes, .. } => Some(*bytes),
            Job::Chunk { value, .. } => Some(value.len() as u64),
            Job::Release { .. } | Job::Close(_) => None,
        };
        if let Some(bytes) = writes {
            if !wait_for_disk(dir, bytes, shared) {
                return;
            }
        }
        let done = match job {
            Job::Apply { ticket, ops, bytes } => ks.apply(ticket, &ops).map(|()| {
                dirty.store(true, Ordering::SeqCst);
                shared.applied.store(ticket, Ordering::SeqCst);
                shared.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
            }),
            Job::Chunk {
                number,
                ks: stream_ks,
                key,
                value,
            } => ingest_chunk(&stream_ks, &key, &value).map(|()| {
                dirty.store(true, Ordering::SeqCst);
                shared.chunks_done.store(number, Ordering::SeqCst);
                shared
                    .queued_bytes
                    .fetch_sub(value.len() as u64 + OP_OVERHEAD_BYTES, Ordering::SeqCst);
            }),
            // Everything logged in `file` is committed (jobs run in order):
            // sync fjall's journal, then the file is no longer needed.
            Job::Release { file } => ks
                .db
                .persist(PersistMode::SyncData)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let path = log_path(dir, file);
                    std::fs::remove_file(&path)
                        .map_err(|e| format!("removing {}: {e}", path.display()))
                })
                .map(|()| shared.released.store(file, Ordering::SeqCst)),
            Job::Close(file) => {
                closer.close(file);
                Ok(())
            }
        };
        if let Err(e) = done {
            shared.fail(e);
            return;
        }
        shared.progressed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::KeyspaceCreateOptions;

    fn open(dir: &Path) -> Keyspaces {
        let db = Database::builder(dir).open().unwrap();
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).unwrap();
        Keyspaces {
            by_tag: [ks("a"), ks("b"), ks("c")],
            db,
            rotate_at: [1 << 20; 3],
            data_options: KeyspaceCreateOptions::default,
        }
    }

    /// A writer on `ks` after `replayed`, as the engine starts one.
    fn start(log_dir: &Path, ks: &Keyspaces, replayed: &Replayed) -> Writer {
        Writer::start(
            log_dir,
            ks.clone(),
            replayed,
            Arc::default(),
            Arc::default(),
        )
        .unwrap()
    }

    fn logs(dir: &Path) -> Vec<u64> {
        log_files(dir).unwrap()
    }

    #[test]
    fn sealed_files_are_removed_once_applied_and_a_reopen_replays_only_what_fjall_lacks() {
        let root = tempfile::tempdir().unwrap();
        let log_dir = root.path().join(LOG_DIR);
        let ks = open(root.path());
        let replayed = replay(&log_dir, &ks).unwrap();
        assert_eq!((replayed.last_ticket, replayed.applied), (0, 0));
        let mut w = start(&log_dir, &ks, &replayed);
        w.file_bytes = 4096;
        for i in 0u32..200 {
            let mut set = WriteSet::default();
            set.insert(Ks::State, i.to_be_bytes().to_vec(), vec![1u8; 100]);
            w.commit(set, i % 50 == 0).unwrap();
            if w.is_full() {
                w.rotate().unwrap();
            }
        }
        w.wait_applied().unwrap();
        // Released files are removed by the applier; the writer hands their
        // descriptors back at its next commit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while logs(&log_dir).len() > 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let left = logs(&log_dir);
        assert!(left.len() <= 2, "sealed files stay: {left:?}");
        assert!(*left.last().unwrap() > 5, "the log rotated: {left:?}");
        w.commit(WriteSet::default(), false).unwrap();
        assert!(
            w.sealed.len() <= 1,
            "descriptors of removed files are closed"
        );
        drop(w);
        assert_eq!(ks.by_tag[Ks::State as usize].iter().count(), 200);
        drop(ks);

        let ks = open(root.path());
        let again = replay(&log_dir, &ks).unwrap();
        assert_eq!((again.last_ticket, again.applied), (201, 0));
        assert_eq!(again.next_file, left.last().unwrap() + 1);
        let mut w = start(&log_dir, &ks, &again);
        w.release_replayed();
        w.wait_applied().unwrap();
        drop(w);
        assert_eq!(
            logs(&log_dir),
            [again.next_file],
            "replayed files are released; the new active file stays"
        );
    }

    #[test]
    fn old_versions_of_a_chunk_keyspace_are_forgotten_as_chunks_arrive() {
        use fjall::AbstractTree;
        let root = tempfile::tempdir().unwrap();
        let log_dir = root.path().join(LOG_DIR);
        let ks = open(root.path());
        let replayed = replay(&log_dir, &ks).unwrap();
        let mut w = start(&log_dir, &ks, &replayed);
        let chunks = ks
            .db
            .keyspace("data-1", crate::engine::data_keyspace_options)
            .unwrap();
        let n = 3 * (LEVEL_TABLES_MAX[0] as u64 + 1);
        for i in 0..n {
            w.send_chunk(chunks.clone(), chunk_key(i, i), Slice::from(vec![1u8; 512]));
        }
        w.wait_applied().unwrap();
        assert_eq!(chunks.tree.table_count() as u64, n);
        let kept = chunks.tree.version_free_list_len();
        assert!(
            kept <= LEVEL_TABLES_MAX[0] + 1,
            "{kept} old versions kept after {n} chunks"
        );
    }

    #[test]
    fn appends_slow_down_before_a_rotation_rather_than_stop_at_it() {
        use std::sync::mpsc;
        use std::time::Duration;
        const MIB: usize = 1 << 20;
        let root = tempfile::tempdir().unwrap();
        let log_dir = root.path().join(LOG_DIR);
        let ks = open(root.path());
        let replayed = replay(&log_dir, &ks).unwrap();
        let mut w = start(&log_dir, &ks, &replayed);
        // The applier is held: nothing leaves the queue.
        let gate = w.applier_gate();
        let held = gate.lock().unwrap();
        let messages = |seq: u64, bytes: usize| {
            let mut set = WriteSet::default();
            set.insert(
                Ks::Data,
                crate::keys::data_key(1, seq).to_vec(),
                vec![7u8; bytes],
            );
            set
        };
        let (done, steps) = mpsc::channel();
        let chunks = ks.by_tag[0].clone();
        let appender = std::thread::spawn(move || {
            // 9 MiB of messages, then sealed into a chunk as a rotation does.
            w.commit(messages(0, 9 * MIB), false).unwrap();
            w.send_chunk(chunks, [0; 16], Slice::from(vec![7u8; 9 * MIB]));
            w.rotate().unwrap();
            done.send("rotated").unwrap();
            // The queue alone is past APPLY_QUEUE_BYTES_MAX, but nothing
            // is left unsealed: no wait.
            w.commit(WriteSet::default(), false).unwrap();
            w.commit(messages(1, 2 * MIB), false).unwrap();
            assert_eq!(w.room_waited(), Duration::ZERO, "nothing waited yet");
            done.send("appended").unwrap();
            // 9 queued + 4 unsealed is past APPLY_PENDING_BYTES_MAX.
            w.commit(messages(2, 2 * MIB), false).unwrap();
            done.send("waited").unwrap();
            w.wait_applied().unwrap();
            w.room_waited()
        });
        let step = |within: Duration| steps.recv_timeout(within);
        assert_eq!(step(Duration::from_secs(5)), Ok("rotated"));
        assert_eq!(step(Duration::from_secs(5)), Ok("appended"));
        assert!(
            step(Duration::from_millis(300)).is_err(),
            "a commit past the pending bound waits for the applier"
        );
        drop(held);
        assert_eq!(step(Duration::from_secs(10)), Ok("waited"));
        let waited = appender.join().unwrap();
        assert!(
            waited >= Duration::from_millis(300),
            "the wait is counted (the metric of back-pressure): {waited:?}"
        );
    }

    #[test]
    fn messages_stay_in_the_log_only_and_replay_returns_them() {
        let root = tempfile::tempdir().unwrap();
        let log_dir = root.path().join(LOG_DIR);
        let ks = open(root.path());
        let replayed = replay(&log_dir, &ks).unwrap();
        let mut w = start(&log_dir, &ks, &replayed);
        let mut set = WriteSet::default();
        set.insert(
            Ks::Data,
            crate::keys::data_key(7, 3).to_vec(),
            vec![9u8; 20],
        );
        set.insert(Ks::State, b"s".to_vec(), vec![1u8]);
        w.commit(set, false).unwrap();
        w.wait_applied().unwrap();
        drop(w);
        assert_eq!(ks.by_tag[Ks::State as usize].iter().count(), 1);
        let again = replay(&log_dir, &ks).unwrap();
        assert_eq!(again.applied, 0, "fjall had the record");
        let m: Vec<_> = again
            .messages
            .iter()
            .map(|m| (m.sid, m.seq, m.value.len()))
            .collect();
        assert_eq!(m, [(7, 3, 20)], "the message is still returned");
    }

    #[test]
    fn a_failed_log_write_fails_the_writer_and_nobody_waits_forever() {
        let root = tempfile::tempdir().unwrap();
        let log_dir = root.path().join(LOG_DIR);
        let ks = open(root.path());
        let replayed = replay(&log_dir, &ks).unwrap();
        let mut w = Writer::start(&log_dir, ks, &replayed, Arc::default(), Arc::default()).unwrap();
        let mut set = WriteSet::default();
        set.insert(Ks::State, b"a".to_vec(), vec![1u8]);
        w.commit(set, true).unwrap();
        // A descriptor that cannot write stands for a disk that fails.
        w.active = File::open(log_path(&log_dir, replayed.next_file)).unwrap();
        let mut set = WriteSet::default();
        set.insert(Ks::State, b"b".to_vec(), vec![1u8]);
        let e = w.commit(set, true).unwrap_err();
        assert!(e.contains("writing the write-ahead log"), "{e}");
        let started = std::time::Instant::now();
        let waited = w.wait_applied();
        assert!(
            waited.is_err(),
            "waiting for the applier reports the failure"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let again = w.commit(WriteSet::default(), false).unwrap_err();
        assert!(again.contains("failed earlier"), "{again}");
    }

    fn sample() -> WriteSet {
        let mut set = WriteSet::default();
        set.insert(Ks::Data, b"key-1".to_vec(), vec![7u8; 300]);
        set.remove(Ks::State, b"gone".to_vec());
        set.insert(Ks::Meta, b"m".to_vec(), Vec::<u8>::new());
        set
    }

    /// An insert of `k` = [1, 2, 3] into `data` and a removal of `g` from
    /// `state`, logged as ticket 5 (length 33, CRC, ticket, 2 ops, then each
    /// op): logs left by an older version must replay, so the format only
    /// changes on purpose.
    const GOLDEN_RECORD_HEX: &str =
        "2100000070a268290500000000000000020000000301010000006b0300000001020301000100000067";

    #[test]
    fn the_record_format_is_stable() {
        let mut set = WriteSet::default();
        set.insert(Ks::Data, b"k".to_vec(), vec![1u8, 2, 3]);
        set.remove(Ks::State, b"g".to_vec());
        let mut log = Vec::new();
        set.encode(5, &mut log);
        let hex: String = log.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_RECORD_HEX);
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&GOLDEN_RECORD_HEX[i..i + 2], 16).unwrap())
            .collect();
        let (ticket, ops, end) = decode_one(&bytes, 0).unwrap();
        assert_eq!((ticket, ops.len(), end), (5, 2, bytes.len()));
    }

    proptest::proptest! {
        #[test]
        fn any_sets_round_trip_and_any_bytes_decode_without_panicking(
            sets in proptest::collection::vec(
                proptest::collection::vec(
                    (0u8..4, proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                     proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..300))),
                    0..6),
                0..6),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let mut log = Vec::new();
            for (i, ops) in sets.iter().enumerate() {
                let mut set = WriteSet::default();
                for (ks, key, value) in ops {
                    let ks = Ks::from_tag(*ks).unwrap();
                    match value {
                        Some(v) => set.insert(ks, key.clone(), v.clone()),
                        None => set.remove(ks, key.clone()),
                    }
                }
                set.encode(i as u64 + 1, &mut log);
            }
            let mut seen = Vec::new();
            let ending = decode_all(&log, |t, ops| {
                seen.push((t, ops));
                Ok(())
            })
            .unwrap();
            proptest::prop_assert_eq!(ending, Ending::Clean);
            proptest::prop_assert_eq!(seen.len(), sets.len());
            for (i, ((ticket, ops), want)) in seen.iter().zip(&sets).enumerate() {
                proptest::prop_assert_eq!(*ticket, i as u64 + 1);
                let got: Vec<(u8, Vec<u8>, Option<Vec<u8>>)> = ops
                    .iter()
                    .map(|o| (o.ks as u8, o.key.to_vec(), o.value.as_ref().map(|v| v.to_vec())))
                    .collect();
                proptest::prop_assert_eq!(&got, want);
            }
            // Garbage after valid records ends the log there, never a panic.
            log.extend_from_slice(&noise);
            let mut count = 0;
            let _ = decode_all(&log, |_, _| {
                count += 1;
                Ok(())
            });
            proptest::prop_assert!(count >= sets.len());
            let _ = decode_all(&noise, |_, _| Ok(()));
        }
    }

    #[test]
    fn records_decode_to_what_was_encoded_and_stop_at_a_torn_or_corrupt_one() {
        let mut log = Vec::new();
        sample().encode(5, &mut log);
        let first_len = log.len();
        sample().encode(6, &mut log);
        let decoded = |bytes: &[u8]| {
            let mut seen = Vec::new();
            let ending = decode_all(bytes, |t, ops| {
                seen.push((t, ops));
                Ok(())
            })
            .unwrap();
            (seen, ending)
        };
        let (seen, ending) = decoded(&log);
        assert_eq!(ending, Ending::Clean);
        assert_eq!(seen.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [5, 6]);
        let ops = &seen[0].1;
        assert_eq!(ops.len(), 3);
        assert_eq!((ops[0].ks, &ops[0].key[..]), (Ks::Data, &b"key-1"[..]));
        assert_eq!(ops[0].value.as_deref(), Some(&[7u8; 300][..]));
        assert_eq!((ops[1].ks, ops[1].value.is_none()), (Ks::State, true));
        assert_eq!(ops[2].value.as_deref(), Some(&[][..]));

        for cut in [first_len + 1, first_len + 8, log.len() - 1] {
            let (seen, ending) = decoded(&log[..cut]);
            assert_eq!(seen.len(), 1, "cut at {cut}");
            assert_eq!(ending, Ending::Torn(first_len));
        }
        let mut corrupt = log.clone();
        corrupt[first_len + 20] ^= 1;
        let (seen, ending) = decoded(&corrupt);
        assert_eq!((seen.len(), ending), (1, Ending::Torn(first_len)));
    }
}
