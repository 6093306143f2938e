//! Frames on a ferry connection: a 16-byte header (magic, kind, priority,
//! request id, payload length, little-endian) and the payload.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};

const MAGIC: u16 = 0xfe27;
/// Largest payload accepted: a page request never asks for more.
pub const MAX_PAYLOAD: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Challenge,
    Response,
    Proof,
    Denied,
    /// Page request: the process (u64, its PID in the tree's namespace),
    /// then one or more (addr u64, len u64) pieces.
    Get,
    /// Page data: the first piece's addr u64, then the bytes of every piece
    /// of the request, in order.
    Data,
    Error,
    /// All pages arrived: the source may let the task go.
    Done,
    Bye,
    /// migrate: a file of an image round follows (name), then FileData
    /// frames, then FileEnd.
    File,
    FileData,
    FileEnd,
    /// migrate: a round of images is complete (u32 round, u8 final).
    RoundEnd,
    /// migrate: the destination reports progress or failure (text).
    Status,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        [
            Hello, Challenge, Response, Proof, Denied, Get, Data, Error, Done, Bye, File, FileData, FileEnd, RoundEnd,
            Status,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }
}

/// Fault requests are answered before bulk ones.
pub const URGENT: u8 = 0;
pub const BULK: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub prio: u8,
    pub id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, payload: Vec<u8>) -> Frame {
        Frame { kind, prio: BULK, id: 0, payload }
    }

    pub fn get(id: u32, prio: u8, process: u64, addr: u64, len: u64) -> Frame {
        Frame::get_many(id, prio, process, &[(addr, len)])
    }

    /// A request for several pieces of one process's memory, answered by
    /// one Data frame.
    pub fn get_many(id: u32, prio: u8, process: u64, pieces: &[(u64, u64)]) -> Frame {
        let payload = process
            .to_le_bytes()
            .into_iter()
            .chain(pieces.iter().flat_map(|&(a, l)| a.to_le_bytes().into_iter().chain(l.to_le_bytes())))
            .collect();
        Frame { kind: Kind::Get, prio, id, payload }
    }

    /// The process and (addr, len) pieces of a Get.
    pub fn pieces(&self) -> Result<(u64, Vec<(u64, u64)>)> {
        if self.payload.len() < 24 || !(self.payload.len() - 8).is_multiple_of(16) {
            bail!("malformed {:?} frame of {} bytes", self.kind, self.payload.len());
        }
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap());
        let process = word(&self.payload[..8]);
        Ok((process, self.payload[8..].chunks(16).map(|c| (word(&c[..8]), word(&c[8..]))).collect()))
    }

    /// The first two words of the payload (a Data frame's addr first).
    pub fn words(&self) -> Result<(u64, u64)> {
        if self.payload.len() < 8 {
            bail!("short {:?} frame", self.kind);
        }
        let a = u64::from_le_bytes(self.payload[..8].try_into().unwrap());
        let b = if self.payload.len() >= 16 { u64::from_le_bytes(self.payload[8..16].try_into().unwrap()) } else { 0 };
        Ok((a, b))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload as a message the peer wrote, fit for a log line: control
    /// characters escaped, at most 300 characters.
    pub fn said(&self) -> String {
        let text = self.text();
        let mut out: String = text.chars().take(300).flat_map(|c| c.escape_debug()).collect();
        if text.chars().count() > 300 {
            out.push('…');
        }
        out
    }
}

pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<()> {
    let mut h = [0u8; 16];
    h[..2].copy_from_slice(&MAGIC.to_le_bytes());
    h[2] = f.kind as u8;
    h[3] = f.prio;
    h[4..8].copy_from_slice(&f.id.to_le_bytes());
    h[8..16].copy_from_slice(&(f.payload.len() as u64).to_le_bytes());
    w.write_all(&h).context("sending")?;
    w.write_all(&f.payload).context("sending")?;
    Ok(())
}

/// Write a data frame without building it in memory first.
pub fn write_data(w: &mut impl Write, id: u32, addr: u64, bytes: &[u8]) -> Result<()> {
    let mut h = [0u8; 24];
    h[..2].copy_from_slice(&MAGIC.to_le_bytes());
    h[2] = Kind::Data as u8;
    h[4..8].copy_from_slice(&id.to_le_bytes());
    h[8..16].copy_from_slice(&((bytes.len() + 8) as u64).to_le_bytes());
    h[16..24].copy_from_slice(&addr.to_le_bytes());
    w.write_all(&h).context("sending")?;
    w.write_all(bytes).context("sending")?;
    Ok(())
}

/// Largest frame a peer may send before it is proven (or as its opening
/// request): authentication messages and status words are short.
pub const SMALL: u64 = 4096;

pub fn read_frame(r: &mut impl Read) -> Result<Frame> {
    read_frame_limited(r, MAX_PAYLOAD)
}

/// Read a frame whose payload may be at most `max` bytes.
pub fn read_frame_limited(r: &mut impl Read, max: u64) -> Result<Frame> {
    let mut h = [0u8; 16];
    // The magic alone first: a TLS alert is shorter than a header.
    r.read_exact(&mut h[..2]).context("receiving")?;
    if u16::from_le_bytes([h[0], h[1]]) != MAGIC {
        // A TLS record: handshake (22) or alert (21), version 3.x.
        if matches!(h, [21 | 22, 3, ..]) {
            bail!("the peer speaks TLS: give this end --tls too");
        }
        bail!("not a ferry peer (bad frame magic)");
    }
    r.read_exact(&mut h[2..]).context("receiving")?;
    let kind = Kind::from_u8(h[2]).with_context(|| format!("unknown frame kind {}", h[2]))?;
    let len = u64::from_le_bytes(h[8..16].try_into().unwrap());
    if len > max {
        bail!("frame of {len} bytes is larger than allowed ({max})");
    }
    // Grow with what arrives: a large length followed by nothing costs
    // nothing.
    let mut payload = Vec::with_capacity(len.min(1 << 20) as usize);
    r.take(len).read_to_end(&mut payload).context("receiving")?;
    if payload.len() as u64 != len {
        bail!("receiving: the frame ended after {} of {len} bytes", payload.len());
    }
    Ok(Frame { kind, prio: h[3], id: u32::from_le_bytes(h[4..8].try_into().unwrap()), payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_length_followed_by_nothing_is_refused_without_allocating_it() {
        let mut h = Vec::new();
        write_frame(&mut h, &Frame::new(Kind::Hello, Vec::new())).unwrap();
        h[8..16].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let err = read_frame(&mut &h[..]).unwrap_err().to_string();
        assert!(err.contains("ended after 0 of 67108864"), "{err}");
        let err = read_frame_limited(&mut &h[..], SMALL).unwrap_err().to_string();
        assert!(err.contains("larger than allowed (4096)"), "{err}");
        h[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_frame(&mut &h[..]).unwrap_err().to_string().contains("larger than allowed"));
    }

    #[test]
    fn a_peers_words_are_escaped_and_cut_for_the_log() {
        let f = Frame::new(
            Kind::Denied,
            b"no\n\x1b[31mred".iter().copied().chain(std::iter::repeat_n(b'x', 500)).collect(),
        );
        let said = f.said();
        assert!(said.starts_with("no\\n\\u{1b}[31mred") && said.ends_with('…') && said.chars().count() < 330, "{said}");
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Frame::get(7, URGENT, 42, 0x7f00_0000_1000, 4096)).unwrap();
        write_data(&mut buf, 7, 0x7f00_0000_1000, &[1, 2, 3]).unwrap();
        let mut r = &buf[..];
        let g = read_frame(&mut r).unwrap();
        assert_eq!((g.kind, g.prio, g.id), (Kind::Get, URGENT, 7));
        assert_eq!(g.pieces().unwrap(), (42, vec![(0x7f00_0000_1000, 4096)]));
        let m = Frame::get_many(8, BULK, 42, &[(0x1000, 4096), (0x9000, 8192)]);
        assert_eq!(m.pieces().unwrap(), (42, vec![(0x1000, 4096), (0x9000, 8192)]));
        assert!(Frame::new(Kind::Get, vec![0; 12]).pieces().is_err());
        let d = read_frame(&mut r).unwrap();
        assert_eq!(d.kind, Kind::Data);
        assert_eq!(&d.payload[8..], &[1, 2, 3]);
        assert!(read_frame(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).unwrap_err().to_string().contains("not a ferry peer"));
        let client_hello = [22u8, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];
        assert!(read_frame(&mut &client_hello[..]).unwrap_err().to_string().contains("speaks TLS"));
    }
}
