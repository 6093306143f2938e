//! Sets of page ranges in the restored task, each remembering where its
//! data sits on the source (an mremap in the task moves a range, the source
//! still serves it from the old address).

use std::collections::BTreeMap;

/// `start -> (end, source address of start)`; ranges never overlap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, (u64, u64)>,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.map.iter().map(|(s, (e, _))| e - s).sum()
    }

    /// A set from ranges in address order, built in one go when they are
    /// disjoint (the usual case), else one insert at a time.
    pub fn from_sorted(ranges: Vec<(u64, u64, u64)>) -> RangeSet {
        let disjoint = ranges.windows(2).all(|w| w[0].1 <= w[1].0) && ranges.iter().all(|r| r.0 < r.1);
        if disjoint {
            return RangeSet { map: ranges.into_iter().map(|(s, e, src)| (s, (e, src))).collect() };
        }
        let mut set = RangeSet::default();
        for (s, e, src) in ranges.into_iter().filter(|r| r.0 < r.1) {
            set.insert(s, e, src);
        }
        set
    }

    /// Add `[start, end)` whose data is at `src` on the source.
    pub fn insert(&mut self, start: u64, end: u64, src: u64) {
        self.remove(start, end);
        self.map.insert(start, (end, src));
    }

    /// Starts of the ranges overlapping `[start, end)`, highest first.
    fn overlapping_starts(&self, start: u64, end: u64) -> Vec<u64> {
        // Ranges are disjoint, so their ends grow with their starts: the ones
        // reaching past `start` are the last few below `end`. Walking down
        // from `end` keeps a scattered set (one range per page) fast.
        self.map.range(..end).rev().take_while(|(_, (e, _))| *e > start).map(|(s, _)| *s).collect()
    }

    /// The parts of `[start, end)` the set holds, as (start, end, src), in order.
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = self
            .overlapping_starts(start, end)
            .into_iter()
            .map(|s| {
                let (e, src) = self.map[&s];
                let (a, b) = (s.max(start), e.min(end));
                (a, b, src + (a - s))
            })
            .collect();
        out.reverse();
        out
    }

    /// Drop `[start, end)`, returning the pieces removed (start, end, src).
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let keys = self.overlapping_starts(start, end);
        for s in keys {
            let (e, src) = self.map.remove(&s).unwrap();
            if s < start {
                self.map.insert(s, (start, src));
            }
            if e > end {
                self.map.insert(end, (e, src + (end - s)));
            }
            let (a, b) = (s.max(start), e.min(end));
            out.push((a, b, src + (a - s)));
        }
        out
    }

    /// The source address of `addr`, if the set holds it.
    pub fn source_of(&self, addr: u64) -> Option<u64> {
        let (s, (e, src)) = self.map.range(..=addr).next_back()?;
        (addr < *e).then(|| src + (addr - s))
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.source_of(addr).is_some()
    }

    /// Take up to `max` bytes from the lowest range, as one piece.
    pub fn take_first(&mut self, max: u64) -> Option<(u64, u64, u64)> {
        let (&s, &(e, _)) = self.map.iter().next()?;
        self.remove(s, e.min(s + max)).into_iter().next()
    }

    /// Move `[from, from + len)` to `to` (the task's mremap).
    pub fn shift(&mut self, from: u64, to: u64, len: u64) {
        for (a, b, src) in self.remove(from, from + len) {
            self.insert(a - from + to, b - from + to, src);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.map.iter().map(|(s, (e, src))| (*s, *e, *src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_take_shift() {
        let mut r = RangeSet::default();
        r.insert(0x1000, 0x5000, 0x1000);
        r.insert(0x8000, 0x9000, 0x8000);
        assert_eq!(r.bytes(), 0x5000);
        assert_eq!(r.remove(0x2000, 0x3000), vec![(0x2000, 0x3000, 0x2000)]);
        assert!(!r.contains(0x2000) && r.contains(0x3000) && r.contains(0x1000));
        assert_eq!(r.take_first(0x800), Some((0x1000, 0x1800, 0x1000)));
        r.shift(0x3000, 0x20000, 0x2000);
        assert_eq!(r.source_of(0x20000), Some(0x3000));
        assert_eq!(r.source_of(0x21fff), Some(0x4fff));
        assert!(!r.contains(0x3000));
        assert_eq!(r.overlapping(0x1000, 0x8800), vec![(0x1800, 0x2000, 0x1800), (0x8000, 0x8800, 0x8000)]);
        let all: Vec<_> = r.iter().collect();
        assert_eq!(all, vec![(0x1800, 0x2000, 0x1800), (0x8000, 0x9000, 0x8000), (0x20000, 0x22000, 0x3000)]);
    }
}
