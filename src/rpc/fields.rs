//! Which `criu_opts` fields a request sets, by their names in rpc.proto:
//! what a translation did not take is refused by name.

use super::criu::CriuOpts;
use prost::Message;

/// The fields `opts` sets, but `images_dir_fd` (always there), by name. A
/// field set to its zero value (false, 0, an empty string) counts as not
/// given.
pub fn given(opts: &CriuOpts) -> Vec<&'static str> {
    let bytes = opts.encode_to_vec();
    wire_fields(&bytes).into_iter().filter(|&(tag, zero)| !zero && tag != 1).map(|(tag, _)| field_name(tag)).collect()
}

/// The fields of an encoded message: (tag, whether its value is zero or
/// empty), in order.
fn wire_fields(mut b: &[u8]) -> Vec<(u32, bool)> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while let Some(key) = varint(&mut b) {
        let zero = match key & 7 {
            0 => varint(&mut b) == Some(0),
            2 => {
                let len = varint(&mut b).unwrap_or(0) as usize;
                b = b.get(len..).unwrap_or_default();
                len == 0
            }
            // fixed64 and fixed32
            wire @ (1 | 5) => {
                let n = if wire == 1 { 8 } else { 4 };
                let zero = b.get(..n).is_none_or(|v| v.iter().all(|&x| x == 0));
                b = b.get(n..).unwrap_or_default();
                zero
            }
            _ => break,
        };
        out.push(((key >> 3) as u32, zero));
    }
    out
}

/// A `criu_opts` field's name, from rpc.proto itself.
fn field_name(tag: u32) -> &'static str {
    const PROTO: &str = include_str!("rpc.proto");
    let body = PROTO.split("message criu_opts {").nth(1).and_then(|s| s.split("\n}").next()).unwrap_or("");
    body.lines()
        .find_map(|l| {
            let l = l.split("//").next()?.split("/*").next()?;
            let (lhs, rhs) = l.split_once('=')?;
            let n: u32 = rhs.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
            (n == tag).then(|| lhs.split_whitespace().last()).flatten()
        })
        .unwrap_or("(unknown field)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_from_rpc_proto() {
        assert_eq!(field_name(13), "root");
        assert_eq!(field_name(68), "images_dir");
        assert_eq!(field_name(9999), "(unknown field)");
    }

    #[test]
    fn zero_values_are_not_given() {
        let opts =
            CriuOpts { shell_job: Some(false), root: Some(String::new()), log_level: Some(4), ..Default::default() };
        assert_eq!(given(&opts), vec!["log_level"]);
    }
}
