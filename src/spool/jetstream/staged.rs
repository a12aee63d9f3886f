//! A burst of folded messages committed as one sled batch. Folding one
//! message per batch rewrote the index's hot keys (`APPLIED`, the counts)
//! and a batch manifest for every message: about 9 KB written to disk per
//! notification and most of the relay's CPU (`docs/design/jetstream.md`
//! §4). The fold now stages a burst (the messages ready, up to
//! [`BURST`]) and commits it whole.
//!
//! Each message is folded as it was alone: its reads ([`Reads`]) see the
//! index as committed plus the writes of the burst's earlier messages,
//! never its own ([`Writes`] holds those until the message is folded).
//! So what a burst commits is what folding its messages one by one would.

use std::collections::BTreeMap;
use std::ops::Bound;

use sled::IVec;

use super::index::storage;
use crate::spool::SpoolError;

/// The most messages one batch commits.
pub(super) const BURST: usize = 256;

/// One message's writes, in order (the last write of a key wins).
#[derive(Debug, Default)]
pub(super) struct Writes(Vec<(IVec, Option<IVec>)>);

impl Writes {
    pub(super) fn insert<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        self.0.push((key.into(), Some(value.into())));
    }

    pub(super) fn remove<K: Into<IVec>>(&mut self, key: K) {
        self.0.push((key.into(), None));
    }
}

/// What the fold reads: the committed index alone (`sled::Db`), or with
/// a burst's staged writes over it ([`Staged`]).
pub(super) trait Reads {
    fn read(&self, key: &[u8]) -> Result<Option<IVec>, SpoolError>;

    fn holds(&self, key: &[u8]) -> Result<bool, SpoolError> {
        Ok(self.read(key)?.is_some())
    }

    /// The smallest key in `from..to`, with its value.
    fn first_in(&self, from: &[u8], to: &[u8]) -> Result<Option<(IVec, IVec)>, SpoolError>;

    /// Every key in `from..to`, in order (for short ranges: a timeline).
    fn all_in(&self, from: &[u8], to: &[u8]) -> Result<Vec<(IVec, IVec)>, SpoolError>;

    /// Every key starting with `prefix`, in order (for short ranges).
    fn all_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(IVec, IVec)>, SpoolError>;
}

impl Reads for sled::Db {
    fn read(&self, key: &[u8]) -> Result<Option<IVec>, SpoolError> {
        self.get(key).map_err(storage)
    }

    fn holds(&self, key: &[u8]) -> Result<bool, SpoolError> {
        self.contains_key(key).map_err(storage)
    }

    fn first_in(&self, from: &[u8], to: &[u8]) -> Result<Option<(IVec, IVec)>, SpoolError> {
        self.range(from..to).next().transpose().map_err(storage)
    }

    fn all_in(&self, from: &[u8], to: &[u8]) -> Result<Vec<(IVec, IVec)>, SpoolError> {
        self.range(from..to)
            .collect::<Result<_, _>>()
            .map_err(storage)
    }

    fn all_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(IVec, IVec)>, SpoolError> {
        self.scan_prefix(prefix)
            .collect::<Result<_, _>>()
            .map_err(storage)
    }
}

/// The index as a burst's earlier messages left it.
pub(super) struct Staged<'a> {
    db: &'a sled::Db,
    /// Key to its staged value (`None`: removed).
    writes: BTreeMap<IVec, Option<IVec>>,
}

impl<'a> Staged<'a> {
    pub(super) fn over(db: &'a sled::Db) -> Staged<'a> {
        Staged {
            db,
            writes: BTreeMap::new(),
        }
    }

    /// A message folded: its writes join the burst's.
    pub(super) fn add(&mut self, writes: Writes) {
        for (key, value) in writes.0 {
            self.writes.insert(key, value);
        }
    }

    /// The burst as one sled batch.
    pub(super) fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }
}

/// Committed pairs merged with staged ones, both in key order: a staged
/// value wins over the committed one of its key, and a staged removal
/// hides it. `first_only` stops at the first pair.
fn merged<'s>(
    committed: impl Iterator<Item = sled::Result<(IVec, IVec)>>,
    staged: impl Iterator<Item = (&'s IVec, &'s Option<IVec>)>,
    first_only: bool,
) -> Result<Vec<(IVec, IVec)>, SpoolError> {
    let mut out = Vec::new();
    let mut staged = staged.peekable();
    let mut committed = committed.peekable();
    loop {
        let next_committed = match committed.peek() {
            Some(Ok((key, _))) => Some(key.clone()),
            Some(Err(_)) => match committed.next() {
                Some(Err(err)) => return Err(storage(err)),
                _ => None,
            },
            None => None,
        };
        let next_staged = staged.peek().map(|(key, _)| (*key).clone());
        let take_staged = match (&next_committed, &next_staged) {
            (None, None) => break,
            (Some(c), Some(s)) => s <= c,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        let pair = if take_staged {
            if next_committed.is_some() && next_committed == next_staged {
                committed.next();
            }
            match staged.next() {
                Some((key, Some(value))) => Some((key.clone(), value.clone())),
                _ => None,
            }
        } else {
            match committed.next() {
                Some(pair) => Some(pair.map_err(storage)?),
                None => None,
            }
        };
        if let Some(pair) = pair {
            out.push(pair);
            if first_only {
                break;
            }
        }
    }
    Ok(out)
}

impl<'a> Reads for Staged<'a> {
    fn read(&self, key: &[u8]) -> Result<Option<IVec>, SpoolError> {
        match self.writes.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.db.get(key).map_err(storage),
        }
    }

    fn first_in(&self, from: &[u8], to: &[u8]) -> Result<Option<(IVec, IVec)>, SpoolError> {
        if from >= to {
            return Ok(None);
        }
        let staged = self
            .writes
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)));
        Ok(merged(self.db.range(from..to), staged, true)?
            .into_iter()
            .next())
    }

    fn all_in(&self, from: &[u8], to: &[u8]) -> Result<Vec<(IVec, IVec)>, SpoolError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let staged = self
            .writes
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)));
        merged(self.db.range(from..to), staged, false)
    }

    fn all_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(IVec, IVec)>, SpoolError> {
        let staged = self
            .writes
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        merged(self.db.scan_prefix(prefix), staged, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(found: Vec<(IVec, IVec)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        found
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn reads_see_committed_and_earlier_staged_writes_but_not_the_message_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        for key in [b"a1", b"a3", b"a5", b"b1"] {
            db.insert(key, &b"db"[..]).unwrap();
        }
        let mut staged = Staged::over(&db);
        let mut first = Writes::default();
        first.insert(&b"a2"[..], &b"st"[..]);
        first.remove(&b"a3"[..]);
        first.insert(&b"a5"[..], &b"st"[..]);
        first.insert(&b"a6"[..], &b"gone"[..]);
        first.remove(&b"a6"[..]);
        staged.add(first);

        let mut own = Writes::default();
        own.insert(&b"a0"[..], &b"own"[..]);
        assert_eq!(staged.read(b"a0").unwrap(), None, "not its own writes");
        assert_eq!(staged.read(b"a3").unwrap(), None);
        assert_eq!(staged.read(b"a2").unwrap().as_deref(), Some(&b"st"[..]));
        assert_eq!(staged.read(b"a1").unwrap().as_deref(), Some(&b"db"[..]));
        assert!(!staged.holds(b"a6").unwrap());

        let expected = vec![
            (b"a1".to_vec(), b"db".to_vec()),
            (b"a2".to_vec(), b"st".to_vec()),
            (b"a5".to_vec(), b"st".to_vec()),
        ];
        assert_eq!(pairs(staged.all_with_prefix(b"a").unwrap()), expected);
        assert_eq!(pairs(staged.all_in(b"a", b"b").unwrap()), expected);
        assert_eq!(
            pairs(staged.all_in(b"a2", b"a9").unwrap()),
            expected[1..].to_vec()
        );
        let first_of =
            |from: &[u8], to: &[u8]| staged.first_in(from, to).unwrap().map(|(k, _)| k.to_vec());
        assert_eq!(first_of(b"a", b"b"), Some(b"a1".to_vec()));
        assert_eq!(first_of(b"a3", b"b"), Some(b"a5".to_vec()), "a3 removed");
        assert_eq!(first_of(b"a6", b"b"), None);
        assert_eq!(first_of(b"a6", b"c"), Some(b"b1".to_vec()));

        staged.add(own);
        db.apply_batch(staged.into_batch()).unwrap();
        let keys: Vec<Vec<u8>> = db.iter().keys().map(|k| k.unwrap().to_vec()).collect();
        let expected: Vec<Vec<u8>> = [&b"a0"[..], b"a1", b"a2", b"a5", b"b1"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        assert_eq!(keys, expected);
        assert_eq!(db.get(b"a5").unwrap().as_deref(), Some(&b"st"[..]));
    }
}
