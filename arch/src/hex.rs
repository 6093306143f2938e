//! Serde helpers: registers appear in images as hex strings, so that
//! `ferry show` output reads like a debugger's.

use serde::{de::Error, Deserialize, Deserializer, Serializer};

fn parse_u64<E: Error>(s: &str) -> Result<u64, E> {
    let digits = s.strip_prefix("0x").ok_or_else(|| E::custom(format!("register value {s:?} must start with 0x")))?;
    u64::from_str_radix(digits, 16).map_err(|e| E::custom(format!("register value {s:?}: {e}")))
}

pub mod u64 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#018x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse_u64(&String::deserialize(d)?)
    }
}

pub mod u32 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#010x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = parse_u64(&String::deserialize(d)?)?;
        u32::try_from(v).map_err(|_| D::Error::custom(format!("{v:#x} does not fit 32 bits")))
    }
}

/// Fixed arrays of 64-bit registers (serde's own arrays stop at 32 elements).
pub mod u64s {
    use super::*;
    use serde::ser::SerializeSeq;
    pub fn serialize<S: Serializer, const N: usize>(v: &[u64; N], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(N))?;
        for x in v {
            seq.serialize_element(&format!("{x:#018x}"))?;
        }
        seq.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u64; N], D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.len() != N {
            return Err(D::Error::custom(format!("expected {N} registers, got {}", v.len())));
        }
        let mut out = [0u64; N];
        for (o, s) in out.iter_mut().zip(&v) {
            *o = parse_u64(s)?;
        }
        Ok(out)
    }
}

/// Fixed arrays of 32-bit registers.
pub mod u32s {
    use super::*;
    use serde::ser::SerializeSeq;
    pub fn serialize<S: Serializer, const N: usize>(v: &[u32; N], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(N))?;
        for x in v {
            seq.serialize_element(&format!("{x:#010x}"))?;
        }
        seq.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u32; N], D::Error> {
        let v = super::u64s::deserialize::<D, N>(d)?;
        let mut out = [0u32; N];
        for (o, x) in out.iter_mut().zip(v) {
            *o = u32::try_from(x).map_err(|_| D::Error::custom(format!("{x:#x} does not fit 32 bits")))?;
        }
        Ok(out)
    }
}

/// 128-bit vector registers, as 32 hex digits each.
pub mod u128s {
    use super::*;
    use serde::ser::SerializeSeq;
    pub fn serialize<S: Serializer, const N: usize>(v: &[u128; N], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(N))?;
        for x in v {
            seq.serialize_element(&format!("{x:#034x}"))?;
        }
        seq.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u128; N], D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.len() != N {
            return Err(D::Error::custom(format!("expected {N} vector registers, got {}", v.len())));
        }
        let mut out = [0u128; N];
        for (o, s) in out.iter_mut().zip(&v) {
            let digits = s
                .strip_prefix("0x")
                .ok_or_else(|| D::Error::custom(format!("vector value {s:?} must start with 0x")))?;
            *o = u128::from_str_radix(digits, 16).map_err(|e| D::Error::custom(format!("vector value {s:?}: {e}")))?;
        }
        Ok(out)
    }
}

/// Opaque register blobs (x86 xstate), hex encoded.
pub mod bytes {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(v.len() * 2);
        for b in v {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(D::Error::custom("hex blob has an odd number of digits"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| D::Error::custom(format!("hex blob at {i}: {e}")))
            })
            .collect()
    }
}
