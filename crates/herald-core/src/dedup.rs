//! Deduplication by `source` + `id` within a topic's window.
//!
//! Keys are 128-bit hashes (two SipHash-1-3 with random per-process keys), so a collision of
//! two different events is beyond practical reach (~2⁻⁸⁰ at a million entries) and no event
//! text is kept in memory. A key is *reserved* while its publish is in flight: a concurrent
//! publish of the same key waits for the outcome instead of storing a second copy. Reservations
//! are taken in increasing key order, so two batches waiting on each other's keys cannot
//! deadlock.
//!
//! The index is bounded by `entries_max`: past it the oldest entries are forgotten early, which
//! shortens the effective window under very high publish rates (documented).

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// A deduplication key.
pub type DedupKey = u128;

/// Hashes `source` + `id` into a key.
#[derive(Debug, Clone, Default)]
pub struct KeyHasher {
    first: RandomState,
    second: RandomState,
}

impl KeyHasher {
    pub fn key(&self, source: &[u8], id: &[u8]) -> DedupKey {
        let hash = |state: &RandomState| {
            let mut hasher = state.build_hasher();
            hasher.write(source);
            // A separator no UTF-8 text contains keeps ("ab","c") apart from ("a","bc").
            hasher.write_u8(0xff);
            hasher.write(id);
            hasher.finish()
        };
        (u128::from(hash(&self.first)) << 64) | u128::from(hash(&self.second))
    }
}

/// Where an event is, or that its publish is still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Pending,
    Stored { partition: u32, offset: u64 },
}

/// What a lookup found for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Not seen within the window: now reserved for the caller.
    Reserved,
    /// Stored already: a duplicate of this position.
    Duplicate { partition: u32, offset: u64 },
    /// Another publish holds it; wait and look again.
    InFlight,
}

/// Keys are already SipHash outputs: hashing them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used (keys are u128); fold anything else in for completeness.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// The window of one topic.
#[derive(Debug)]
pub struct DedupIndex {
    entries: HashMap<DedupKey, Entry, BuildHasherDefault<PassThrough>>,
    /// Stored keys by the time they were stored, oldest first.
    order: VecDeque<(u64, DedupKey)>,
    window_ms: u64,
    entries_max: usize,
}

impl DedupIndex {
    pub fn new(window_ms: u64, entries_max: usize) -> Self {
        Self {
            entries: HashMap::default(),
            order: VecDeque::new(),
            window_ms,
            entries_max,
        }
    }

    /// Forgets what fell out of the window (or past `entries_max`).
    pub fn prune(&mut self, now_ms: u64) {
        while let Some(&(stored_ms, key)) = self.order.front() {
            let expired = stored_ms.saturating_add(self.window_ms) < now_ms;
            if !expired && self.order.len() <= self.entries_max {
                break;
            }
            self.order.pop_front();
            // One lookup in the common case; a key reserved again meanwhile stays reserved.
            if let Some(Entry::Pending) = self.entries.remove(&key) {
                self.entries.insert(key, Entry::Pending);
            }
        }
    }

    /// Looks a key up, reserving it when it is free.
    pub fn lookup_or_reserve(&mut self, key: DedupKey) -> Lookup {
        match self.entries.entry(key) {
            MapEntry::Occupied(found) => match *found.get() {
                Entry::Stored { partition, offset } => Lookup::Duplicate { partition, offset },
                Entry::Pending => Lookup::InFlight,
            },
            MapEntry::Vacant(vacant) => {
                vacant.insert(Entry::Pending);
                Lookup::Reserved
            }
        }
    }

    /// Records where a reserved (or recovered) key's event was stored.
    pub fn store(&mut self, key: DedupKey, partition: u32, offset: u64, stored_ms: u64) {
        self.entries
            .insert(key, Entry::Stored { partition, offset });
        self.order.push_back((stored_ms, key));
    }

    /// Drops a reservation whose publish failed.
    pub fn release(&mut self, key: DedupKey) {
        if self.entries.get(&key) == Some(&Entry::Pending) {
            self.entries.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_reserved_then_stored_then_forgotten_after_the_window() {
        let hasher = KeyHasher::default();
        let key = hasher.key(b"/orders", b"1");
        assert_ne!(
            key,
            hasher.key(b"/order", b"s1"),
            "the separator keeps fields apart"
        );
        let mut index = DedupIndex::new(1000, 100);
        assert_eq!(index.lookup_or_reserve(key), Lookup::Reserved);
        assert_eq!(index.lookup_or_reserve(key), Lookup::InFlight);
        index.store(key, 2, 40, 5000);
        assert_eq!(
            index.lookup_or_reserve(key),
            Lookup::Duplicate {
                partition: 2,
                offset: 40
            }
        );
        index.prune(6000);
        assert_eq!(
            index.lookup_or_reserve(key),
            Lookup::Duplicate {
                partition: 2,
                offset: 40
            }
        );
        index.prune(6001);
        assert_eq!(index.lookup_or_reserve(key), Lookup::Reserved);
        index.release(key);
        assert!(index.is_empty());
    }

    #[test]
    fn the_index_never_holds_more_than_its_limit_of_stored_keys() {
        let hasher = KeyHasher::default();
        let mut index = DedupIndex::new(u64::MAX / 2, 10);
        for id in 0..50u32 {
            let key = hasher.key(b"s", &id.to_le_bytes());
            index.lookup_or_reserve(key);
            index.store(key, 0, u64::from(id), 1);
            index.prune(1);
        }
        assert_eq!(index.len(), 10);
    }
}
