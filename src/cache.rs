//! The one cache of the readers: a bounded map that evicts the least recently used entry,
//! shared between threads. It holds tables (QCOW2 L2 tables, VMDK grain tables, VHD sector
//! bitmaps) and decoded units (compressed clusters, grains and blocks) by their place in the
//! image.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// A bounded least-recently-used map behind a lock; values are cloned out (use `Arc`s).
pub struct Lru<K, V> {
    inner: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    capacity: usize,
    tick: u64,
    by_key: HashMap<K, (u64, V)>,
    by_use: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// A cache of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Lru {
            inner: Mutex::new(Entries {
                capacity: capacity.max(1),
                tick: 0,
                by_key: HashMap::new(),
                by_use: BTreeMap::new(),
            }),
        }
    }

    /// The value of `key`, now the most recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let e = &mut *guard;
        let (used, value) = e.by_key.get_mut(key)?;
        // Readers ask for the same table many times in a row (a grain table per grain): the
        // most recently used entry needs no reordering.
        if *used == e.tick {
            return Some(value.clone());
        }
        e.tick += 1;
        let old = std::mem::replace(used, e.tick);
        let value = value.clone();
        e.by_use.remove(&old);
        e.by_use.insert(e.tick, key.clone());
        Some(value)
    }

    /// Keeps `value` under `key`, evicting the least recently used entry when full.
    pub fn insert(&self, key: K, value: V) {
        let mut e = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        e.tick += 1;
        let tick = e.tick;
        if let Some((old, _)) = e.by_key.remove(&key) {
            e.by_use.remove(&old);
        }
        while e.by_key.len() >= e.capacity {
            let Some((_, oldest)) = e.by_use.pop_first() else {
                break;
            };
            e.by_key.remove(&oldest);
        }
        e.by_use.insert(tick, key.clone());
        e.by_key.insert(key, (tick, value));
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_key
            .len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let c = Lru::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        assert_eq!(c.get(&1), Some("a"));
        c.insert(3, "c");
        assert_eq!(c.get(&2), None, "2 was used least recently");
        assert_eq!(c.get(&1), Some("a"));
        assert_eq!(c.get(&3), Some("c"));
        c.insert(3, "C");
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&3), Some("C"));
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let c = Lru::new(3);
        for i in 0..100u64 {
            c.insert(i % 7, i);
            assert!(c.len() <= 3);
        }
        assert!(!c.is_empty());
    }
}
