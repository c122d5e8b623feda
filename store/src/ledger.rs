//! The loss ledger: every message that leaves a stream other than by being
//! exported, recorded durably as ranges of sequence numbers with a cause and
//! a time, so "where did my data go" always has an answer.
//!
//! One entry per (stream id, export or none, cause):
//! - the stream's own entries (no export) count every message that left the
//!   stream by overwrite, TTL, a smaller `maxSize` or its deletion;
//! - an export's entries count the messages that left before that export
//!   sent them: found missing by its exporter (removed by the storage
//!   policy; the cause is the stream's entry that covers them), skipped as
//!   undeliverable, or unexported when the stream was deleted.
//!
//! Entries live in the `meta` keyspace under `loss ++ sid ++ cause ++
//! export` (CBOR `bus_schema::LossEntry`), written in the same write set as
//! the change that caused them. Bounded: at most [`LEDGER_ENTRIES_MAX`]
//! entries (the one changed longest ago is forgotten first) and
//! [`LEDGER_RANGES_PER_ENTRY`] ranges per entry (adjacent ranges merge; the
//! oldest are forgotten, counted in `forgotten_ranges`); an entry's
//! `messages` total never decreases.

use std::collections::BTreeMap;

use bus_schema::{LossCause, LossEntry, LossRange};

/// Most ledger entries kept.
pub const LEDGER_ENTRIES_MAX: usize = 1024;
/// Most ranges kept per entry.
pub const LEDGER_RANGES_PER_ENTRY: usize = 16;
/// Longest `detail` kept, bytes.
pub const LEDGER_DETAIL_BYTES_MAX: usize = 512;
/// Key prefix in the `meta` keyspace.
pub const LEDGER_KEY_PREFIX: &[u8] = b"loss";

fn cause_tag(c: LossCause) -> u8 {
    match c {
        LossCause::Overwrite => 0,
        LossCause::Ttl => 1,
        LossCause::MaxSize => 2,
        LossCause::Skipped => 3,
        LossCause::Deleted => 4,
        LossCause::Missing => 5,
    }
}

/// The key of an entry.
pub fn ledger_key(sid: u64, cause: LossCause, export: Option<&str>) -> Vec<u8> {
    let mut k = LEDGER_KEY_PREFIX.to_vec();
    k.extend_from_slice(&sid.to_be_bytes());
    k.push(cause_tag(cause));
    k.extend_from_slice(export.unwrap_or("").as_bytes());
    k
}

/// What recording a loss changes on disk.
pub enum LedgerChange {
    Put(Vec<u8>, LossEntry),
    Remove(Vec<u8>),
}

/// One loss to record.
pub struct Loss<'a> {
    pub sid: u64,
    pub stream: &'a str,
    pub export: Option<&'a str>,
    pub cause: LossCause,
    pub first: u64,
    pub last: u64,
    pub messages: u64,
    pub time_ms: u64,
    pub detail: Option<&'a str>,
}

#[derive(Default)]
pub struct Ledger {
    entries: BTreeMap<Vec<u8>, LossEntry>,
}

impl Ledger {
    /// Takes back an entry read from disk.
    pub fn load(&mut self, key: Vec<u8>, entry: LossEntry) {
        self.entries.insert(key, entry);
    }

    /// Records `loss`; returns what to write.
    pub fn record(&mut self, loss: Loss<'_>) -> Vec<LedgerChange> {
        let mut changes = Vec::new();
        if loss.messages == 0 || loss.last < loss.first {
            return changes;
        }
        let key = ledger_key(loss.sid, loss.cause, loss.export);
        if !self.entries.contains_key(&key) && self.entries.len() >= LEDGER_ENTRIES_MAX {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.ranges.last().map_or(0, |r| r.last_time_ms))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
                changes.push(LedgerChange::Remove(k));
            }
        }
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| LossEntry {
                stream: loss.stream.to_string(),
                export_identifier: loss.export.map(str::to_string),
                cause: loss.cause,
                messages: 0,
                ranges: Vec::new(),
                forgotten_ranges: 0,
                detail: None,
            });
        entry.messages = entry.messages.saturating_add(loss.messages as i64);
        let (first, last, t) = (loss.first as i64, loss.last as i64, loss.time_ms as i64);
        match entry.ranges.last_mut() {
            Some(r) if r.last_sequence_number + 1 >= first && r.first_sequence_number <= first => {
                r.last_sequence_number = r.last_sequence_number.max(last);
                r.last_time_ms = t;
            }
            _ => entry.ranges.push(LossRange {
                first_sequence_number: first,
                last_sequence_number: last,
                first_time_ms: t,
                last_time_ms: t,
            }),
        }
        if entry.ranges.len() > LEDGER_RANGES_PER_ENTRY {
            let extra = entry.ranges.len() - LEDGER_RANGES_PER_ENTRY;
            entry.ranges.drain(..extra);
            entry.forgotten_ranges += extra as i64;
        }
        if let Some(d) = loss.detail {
            let mut end = d.len().min(LEDGER_DETAIL_BYTES_MAX);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            entry.detail = Some(d[..end].to_string());
        }
        changes.push(LedgerChange::Put(key, entry.clone()));
        changes
    }

    /// The cause recorded for sequence number `seq` of stream `sid` by the
    /// stream's own entries, if a kept range covers it.
    pub fn cause_of(&self, sid: u64, seq: u64) -> Option<LossCause> {
        let seq = seq as i64;
        [
            LossCause::Overwrite,
            LossCause::Ttl,
            LossCause::MaxSize,
            LossCause::Deleted,
        ]
        .into_iter()
        .find(|c| {
            self.entries
                .get(&ledger_key(sid, *c, None))
                .is_some_and(|e| {
                    e.ranges
                        .iter()
                        .any(|r| (r.first_sequence_number..=r.last_sequence_number).contains(&seq))
                })
        })
    }

    /// Every entry, in key order (by stream id, then cause, then export).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &LossEntry)> {
        self.entries.iter().map(|(k, e)| (k.as_slice(), e))
    }

    /// The stream id an entry's key names.
    pub fn sid_of(key: &[u8]) -> Option<u64> {
        let b = key.get(LEDGER_KEY_PREFIX.len()..LEDGER_KEY_PREFIX.len() + 8)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(first: u64, last: u64, t: u64) -> Loss<'static> {
        Loss {
            sid: 7,
            stream: "s",
            export: Some("e"),
            cause: LossCause::Overwrite,
            first,
            last,
            messages: last - first + 1,
            time_ms: t,
            detail: None,
        }
    }

    #[test]
    fn adjacent_ranges_merge_and_old_ones_are_forgotten() {
        let mut l = Ledger::default();
        l.record(loss(0, 9, 1));
        l.record(loss(10, 19, 2));
        let (_, e) = l.entries().next().unwrap();
        assert_eq!(e.ranges.len(), 1);
        assert_eq!(
            (
                e.ranges[0].first_sequence_number,
                e.ranges[0].last_sequence_number
            ),
            (0, 19)
        );
        assert_eq!(e.messages, 20);
        for i in 0..40u64 {
            l.record(loss(100 + i * 10, 100 + i * 10 + 4, 3 + i));
        }
        let (_, e) = l.entries().next().unwrap();
        assert_eq!(e.ranges.len(), LEDGER_RANGES_PER_ENTRY);
        assert_eq!(e.forgotten_ranges, 41 - LEDGER_RANGES_PER_ENTRY as i64);
        assert_eq!(e.messages, 20 + 40 * 5, "the total never decreases");
    }

    #[test]
    fn the_entry_changed_longest_ago_is_forgotten_at_the_bound() {
        let mut l = Ledger::default();
        for sid in 0..LEDGER_ENTRIES_MAX as u64 + 1 {
            let changes = l.record(Loss {
                sid,
                ..loss(0, 0, 1000 + sid)
            });
            if sid == LEDGER_ENTRIES_MAX as u64 {
                assert!(
                    matches!(&changes[0], LedgerChange::Remove(k) if Ledger::sid_of(k) == Some(0))
                );
            }
        }
        assert_eq!(l.entries().count(), LEDGER_ENTRIES_MAX);
    }

    #[test]
    fn causes_are_found_by_range() {
        let mut l = Ledger::default();
        l.record(Loss {
            export: None,
            cause: LossCause::Ttl,
            ..loss(50, 80, 1)
        });
        assert_eq!(l.cause_of(7, 60), Some(LossCause::Ttl));
        assert_eq!(l.cause_of(7, 81), None);
    }
}
