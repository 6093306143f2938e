//! File checksums: xxh3-64 of each 4 MiB block, then xxh3-64 of that list.
//! Blocks hash independently, so large files are hashed by several threads
//! while they are written or read; a one-block file costs one extra tiny hash.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const BLOCK: usize = 4 << 20;

/// Described in the inventory so the format explains itself.
pub const SCHEME: &str = "xxh3-64 of the list of xxh3-64 of each 4 MiB block";

pub fn block_hash(data: &[u8]) -> u64 {
    xxh3_64(data)
}

pub fn combine(block_hashes: &[u64]) -> u64 {
    let bytes: Vec<u8> = block_hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
    xxh3_64(&bytes)
}

/// The digest of bytes held in memory.
pub fn of(data: &[u8]) -> u64 {
    let hashes: Vec<u64> = data.chunks(BLOCK).map(block_hash).collect();
    combine(&hashes)
}

/// The digest of bytes arriving in pieces of any size.
#[derive(Default)]
pub struct Streaming {
    done: Vec<u64>,
    current: Option<Xxh3>,
    in_block: usize,
}

impl Streaming {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = data.len().min(BLOCK - self.in_block);
            self.current.get_or_insert_with(Xxh3::new).update(&data[..take]);
            self.in_block += take;
            data = &data[take..];
            if self.in_block == BLOCK {
                self.done.push(self.current.take().unwrap().digest());
                self.in_block = 0;
            }
        }
    }

    pub fn finish(self) -> u64 {
        combine(&self.blocks())
    }

    /// The hash of each block.
    pub fn blocks(mut self) -> Vec<u64> {
        if let Some(h) = self.current.take() {
            self.done.push(h.digest());
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_matches_whole() {
        let data: Vec<u8> = (0..(BLOCK * 2 + 12345)).map(|i| (i % 253) as u8).collect();
        let mut s = Streaming::default();
        for piece in data.chunks(1_000_003) {
            s.update(piece);
        }
        assert_eq!(s.finish(), of(&data));
        assert_eq!(Streaming::default().finish(), of(&[]));
        assert_ne!(of(&data[1..]), of(&data));
    }
}
