//! /proc/PID/maps and /proc/PID/smaps.

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One line of maps, plus smaps' `VmFlags` when parsed from smaps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Empty for anonymous memory; `[heap]`, `[stack]`, `[vdso]`… for the
    /// kernel's named areas; otherwise a path, possibly ending in " (deleted)".
    pub path: String,
    /// Two-letter VmFlags (rd, wr, gd, ac, nr, dd, …); empty from plain maps.
    pub vm_flags: Vec<String>,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }

    /// `[vdso]`, `[heap]`, `[anon:name]`…: areas the kernel names itself.
    pub fn special(&self) -> Option<&str> {
        (self.inode == 0 && self.path.starts_with('[') && self.path.ends_with(']')).then_some(self.path.as_str())
    }

    /// The vDSO, its data pages and the legacy vsyscall page: provided by
    /// the kernel to every task, never saved.
    pub fn is_kernel_area(&self) -> bool {
        matches!(self.special(), Some("[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"))
    }

    pub fn is_file(&self) -> bool {
        self.inode != 0 || self.path.starts_with('/')
    }

    pub fn is_deleted(&self) -> bool {
        self.path.ends_with(" (deleted)")
    }

    pub fn prot_string(&self) -> String {
        format!(
            "{}{}{}{}",
            if self.read { 'r' } else { '-' },
            if self.write { 'w' } else { '-' },
            if self.exec { 'x' } else { '-' },
            if self.shared { 's' } else { 'p' }
        )
    }
}

fn parse_header(line: &str) -> Result<Mapping> {
    let mut rest = line;
    let mut next = || -> Result<&str> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (tok, r) = t.split_at(end);
        rest = r;
        if tok.is_empty() {
            bail!("short line {line:?}");
        }
        Ok(tok)
    };
    let range = next()?;
    let perms = next()?;
    let offset = next()?;
    let dev = next()?;
    let inode = next()?;
    let (s, e) = range.split_once('-').with_context(|| format!("bad range in {line:?}"))?;
    let p = perms.as_bytes();
    if p.len() != 4 {
        bail!("bad permissions in {line:?}");
    }
    let (maj, min) = dev.split_once(':').with_context(|| format!("bad device in {line:?}"))?;
    let hex = |s: &str| u64::from_str_radix(s, 16).with_context(|| format!("bad hex {s:?} in {line:?}"));
    Ok(Mapping {
        start: hex(s)?,
        end: hex(e)?,
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
        shared: p[3] == b's',
        offset: hex(offset)?,
        dev: (hex(maj)? as u32, hex(min)? as u32),
        inode: inode.parse().with_context(|| format!("bad inode in {line:?}"))?,
        path: rest.trim_start().to_string(),
        vm_flags: Vec::new(),
    })
}

/// Parse maps or smaps text.
pub fn parse(text: &str) -> Result<Vec<Mapping>> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        // smaps detail lines are "Key:   value"; headers start with a hex range.
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            out.push(parse_header(line)?);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let m = out.last_mut().with_context(|| format!("VmFlags before any mapping: {line:?}"))?;
            m.vm_flags = flags.split_whitespace().map(str::to_string).collect();
        } else if !first.ends_with(':') {
            // smaps detail lines are "Key:  value"; anything else is not ours.
            bail!("unrecognized line {line:?}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fe:00 325843                     /usr/bin/sleep
Size:                  8 kB
Rss:                   8 kB
VmFlags: rd mr mw me sd 
55d0c9c1c000-55d0c9c3d000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
VmFlags: rd wr mr mw me ac sd 
7f6a9fe00000-7f6a9fe01000 ---p 00000000 00:00 0 
VmFlags: mr mw me nr sd 
7f6a9fe10000-7f6a9fe20000 rw-s 00000000 00:01 1042                       /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms sd 
7f6a9fe20000-7f6a9fe21000 r--p 00000000 fe:00 99                         /tmp/with space.txt (deleted)
VmFlags: rd mr mw me sd 
7f6a9fec0000-7f6a9fec4000 r--p 00000000 00:00 0                          [vvar]
VmFlags: rd mr pf io de dd sd 
7f6a9fec4000-7f6a9fec6000 r-xp 00000000 00:00 0                          [vdso]
VmFlags: rd ex mr mw me de sd 
7fffb6433000-7fffb6454000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
VmFlags: ex 
";

    #[test]
    fn smaps_snapshot() {
        insta::assert_yaml_snapshot!(parse(SMAPS).unwrap());
    }

    #[test]
    fn helpers() {
        let m = parse(SMAPS).unwrap();
        assert_eq!(m[1].special(), Some("[heap]"));
        assert!(m[1].has_flag("ac"));
        assert!(m[0].is_file() && !m[0].is_deleted());
        assert!(m[3].shared && m[3].is_deleted());
        assert_eq!(m[4].path, "/tmp/with space.txt (deleted)");
        assert_eq!(m[2].prot_string(), "---p");
        assert_eq!(m[7].special(), Some("[stack]"));
    }

    #[test]
    fn maps_of_this_process_parse() {
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let m = parse(&text).unwrap();
        assert!(m.iter().any(|m| m.path == "[stack]" && m.has_flag("gd")));
        assert!(m.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("zzzz-1000 r--p 0 00:00 0\n").is_err());
        assert!(parse("1000-2000 r--p 0\n").is_err());
        assert!(parse("VmFlags: rd\n").is_err());
    }
}
