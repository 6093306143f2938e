//! The four architectures (ferry-arch's `Arch`), and what each needs from
//! Debian and the toolchains to be built and booted here.

use anyhow::{bail, Result};
pub use ferry_arch::Arch;

/// `--arch NAME[,NAME...]|all` as a list; Debian's names and Rust triples work too.
pub fn parse_list(s: &str) -> Result<Vec<Arch>> {
    if s == "all" {
        return Ok(Arch::ALL.to_vec());
    }
    s.split(',')
        .map(|one| match Arch::ALL.iter().find(|a| a.name() == one || a.debian() == one || a.triple() == one) {
            Some(a) => Ok(*a),
            None => bail!("unknown architecture {one:?}: use x86_64, aarch64, ppc64le, s390x (comma-separated) or all"),
        })
        .collect()
}

/// Build and packaging names of an architecture.
pub trait BuildNames {
    fn triple(self) -> &'static str;
    /// Debian's name of the architecture.
    fn debian(self) -> &'static str;
    /// rpm's name of the architecture (%{ARCH}).
    fn rpm(self) -> &'static str;
    /// GNU triple of Debian's cross tools (gcc, libc6-dev-*-cross).
    fn gnu(self) -> &'static str;
    /// The host's own architecture (built with rustup, not cross).
    fn runs_here(self) -> bool;
    /// What `file` says about a binary of this machine.
    fn file_machine(self) -> &'static str;
}

impl BuildNames for Arch {
    fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
            Arch::Ppc64le => "powerpc64le-unknown-linux-gnu",
            Arch::S390x => "s390x-unknown-linux-gnu",
        }
    }

    fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
            Arch::Ppc64le => "ppc64el",
            Arch::S390x => "s390x",
        }
    }

    fn rpm(self) -> &'static str {
        // rpm names all four as ferry does.
        self.name()
    }

    fn gnu(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
            Arch::Ppc64le => "powerpc64le-linux-gnu",
            Arch::S390x => "s390x-linux-gnu",
        }
    }

    fn runs_here(self) -> bool {
        self == Arch::X86_64
    }

    fn file_machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Aarch64 => "ARM aarch64",
            Arch::Ppc64le => "64-bit PowerPC",
            Arch::S390x => "IBM S/390",
        }
    }
}
