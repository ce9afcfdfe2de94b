//! Small ordered maps and sets kept as sorted vectors. A job's evidence has a handful of
//! signers (its `r` executors, a few helpers and auditors), and a `BTreeMap` allocates a node
//! with room for eleven on its first insert: at a thousand open jobs per voter that was most
//! of a simulated swarm's allocations. Iteration is in key order, as with `BTreeMap`.

use std::fmt;

/// A map kept as a vector sorted by key.
#[derive(Clone)]
pub(crate) struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Ord + Copy, V> SmallMap<K, V> {
    fn find(&self, k: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(x, _)| x.cmp(k))
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_ok()
    }

    /// Inserts or replaces; returns the old value.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    /// The value at `k`, inserted as `V::default()` if absent.
    pub(crate) fn or_default(&mut self, k: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(&k) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (k, V::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn into_values(self) -> impl Iterator<Item = V> {
        self.0.into_iter().map(|(_, v)| v)
    }
}

/// A set kept as a sorted vector.
#[derive(Clone)]
pub(crate) struct SmallSet<K>(Vec<K>);

impl<K> Default for SmallSet<K> {
    fn default() -> Self {
        SmallSet(Vec::new())
    }
}

impl<K: fmt::Debug> fmt::Debug for SmallSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl<K: Ord + Copy> SmallSet<K> {
    /// Inserts; returns whether `k` was new.
    pub(crate) fn insert(&mut self, k: K) -> bool {
        match self.0.binary_search(&k) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, k);
                true
            }
        }
    }

    pub(crate) fn contains(&self, k: &K) -> bool {
        self.0.binary_search(k).is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &K> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn behaves_like_the_btree_collections() {
        let mut m: SmallMap<u8, u32> = SmallMap::default();
        let mut b: BTreeMap<u8, u32> = BTreeMap::new();
        let mut s: SmallSet<u8> = SmallSet::default();
        let mut bs: BTreeSet<u8> = BTreeSet::new();
        for (i, k) in [5u8, 3, 9, 3, 1, 7, 5, 0, 9].into_iter().enumerate() {
            assert_eq!(m.insert(k, i as u32), b.insert(k, i as u32));
            *m.or_default(k.wrapping_add(1)) += 1;
            *b.entry(k.wrapping_add(1)).or_default() += 1;
            assert_eq!(s.insert(k), bs.insert(k));
        }
        assert_eq!(m.remove(&3), b.remove(&3));
        assert_eq!(m.remove(&42), b.remove(&42));
        assert_eq!(m.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
        assert_eq!(m.len(), b.len());
        assert_eq!(m.get(&9), b.get(&9));
        assert!(m.contains_key(&0) && !m.contains_key(&200));
        assert_eq!(s.iter().collect::<Vec<_>>(), bs.iter().collect::<Vec<_>>());
        assert!(s.contains(&7) && !s.contains(&8));
        assert_eq!(s.len(), bs.len());
    }
}
