//! The four architectures ferry is built and tested for, and what each
//! needs from Debian.

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
    Ppc64le,
    S390x,
}

pub const ALL: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Ppc64le, Arch::S390x];

impl Arch {
    /// `--arch NAME|all` as a list.
    pub fn parse_list(s: &str) -> Result<Vec<Arch>> {
        if s == "all" {
            return Ok(ALL.to_vec());
        }
        match ALL.iter().find(|a| a.name() == s || a.debian() == s || a.triple() == s) {
            Some(a) => Ok(vec![*a]),
            None => bail!("unknown architecture {s:?}: use x86_64, aarch64, ppc64le, s390x or all"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
        }
    }

    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
            Arch::Ppc64le => "powerpc64le-unknown-linux-gnu",
            Arch::S390x => "s390x-unknown-linux-gnu",
        }
    }

    /// Debian's name of the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
            Arch::Ppc64le => "ppc64el",
            Arch::S390x => "s390x",
        }
    }

    /// GNU triple of Debian's cross tools (gcc, libc6-dev-*-cross).
    pub fn gnu(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
            Arch::Ppc64le => "powerpc64le-linux-gnu",
            Arch::S390x => "s390x-linux-gnu",
        }
    }

    pub fn is_host(self) -> bool {
        self == Arch::X86_64
    }

    /// What `file` says about a binary of this machine.
    pub fn file_machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Aarch64 => "ARM aarch64",
            Arch::Ppc64le => "64-bit PowerPC",
            Arch::S390x => "IBM S/390",
        }
    }
}
