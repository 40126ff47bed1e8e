//! How far a partition's deliveries got: the watermark below which every message of the
//! partition is settled (each endpoint done, dead or parked), and the messages above it
//! settled already. Its owner writes it to the cursors bucket (`p.<partition>`) twice a
//! second when it moved; the next owner resumes from it, skipping what is settled.
//!
//! Record: `version u8 | watermark u64 | count u32 | count x seq u64`, little-endian.

use std::collections::BTreeSet;

const VERSION: u8 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every message of the partition up to here is settled.
    pub watermark: u64,
    /// Messages above the watermark already settled.
    pub settled: BTreeSet<u64>,
    /// Messages received and not settled yet.
    open: BTreeSet<u64>,
    /// The newest message received.
    last: u64,
    /// Moved since it was last written.
    pub dirty: bool,
}

impl Cursor {
    /// The cursor a previous owner left (or a fresh one).
    pub fn resume(watermark: u64, settled: BTreeSet<u64>) -> Cursor {
        let last = settled.last().copied().unwrap_or(watermark).max(watermark);
        Cursor {
            watermark,
            settled,
            open: BTreeSet::new(),
            last,
            dirty: false,
        }
    }

    /// True when `seq` needs no more work here.
    pub fn is_settled(&self, seq: u64) -> bool {
        seq <= self.watermark || self.settled.contains(&seq)
    }

    /// `seq` came in and is being worked on.
    pub fn receive(&mut self, seq: u64) {
        self.last = self.last.max(seq);
        if !self.is_settled(seq) {
            self.open.insert(seq);
        }
    }

    /// `seq` is settled: the watermark moves up to the oldest message still open.
    pub fn settle(&mut self, seq: u64) {
        self.last = self.last.max(seq);
        self.open.remove(&seq);
        if seq > self.watermark {
            self.settled.insert(seq);
        }
        let top = match self.open.first() {
            Some(open) => open - 1,
            None => self.last,
        };
        if top > self.watermark {
            self.watermark = top;
            self.settled = self.settled.split_off(&(top + 1));
        }
        self.dirty = true;
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + 8 * self.settled.len());
        out.push(VERSION);
        out.extend_from_slice(&self.watermark.to_le_bytes());
        out.extend_from_slice(&(self.settled.len() as u32).to_le_bytes());
        for seq in &self.settled {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Cursor> {
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < 12 {
            return None;
        }
        let watermark = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let count = u32::from_le_bytes(rest[8..12].try_into().ok()?) as usize;
        let seqs = rest.get(12..12 + count.checked_mul(8)?)?;
        let settled = seqs
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Some(Cursor::resume(watermark, settled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_stops_below_the_oldest_open_message() {
        let mut c = Cursor::default();
        for seq in [3, 7, 9] {
            c.receive(seq);
        }
        c.settle(7);
        assert_eq!((c.watermark, c.settled.len()), (2, 1), "3 is open");
        c.settle(3);
        assert_eq!(c.watermark, 8, "up to the open 9");
        assert!(c.settled.is_empty());
        c.settle(9);
        assert_eq!(c.watermark, 9);
        c.receive(12);
        c.receive(14);
        c.settle(14);
        let back = Cursor::decode(&c.encode()).unwrap();
        assert_eq!(
            (back.watermark, back.settled.clone()),
            (11, BTreeSet::from([14]))
        );
        assert!(back.is_settled(14) && back.is_settled(5) && !back.is_settled(12));
        for cut in 0..c.encode().len() {
            assert!(Cursor::decode(&c.encode()[..cut]).is_none(), "cut {cut}");
        }
    }
}
