//! CRIU 4.x's other dump, pre-dump and restore options: scripts written
//! for CRIU pass them, so the parser takes every one (with CRIU's short
//! letters, and `--no-X` for CRIU's boolean options). Those ferry does not
//! implement yet stop the command with one line, before anything is
//! touched: `ferry dump: --X is not supported yet`.

use anyhow::{bail, Result};

/// One struct field per option; `refuse` names the first one given.
macro_rules! criu_flags {
    (
        flags { $($ff:ident = $fl:literal $(, short = $fs:literal)?;)* }
        bools { $($bf:ident, $bn:ident = $bl:literal $(, short = $bs:literal)?;)* }
        values { $($vf:ident = $vl:literal $(, short = $vs:literal)?;)* }
        optional { $($of:ident = $ol:literal $(, short = $os:literal)?;)* }
    ) => {
        /// CRIU's options that ferry accepts but does not implement yet.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct CriuFlags {
            $(
                #[arg(long = $fl $(, short = $fs)?, hide = true)]
                pub $ff: bool,
            )*
            $(
                #[arg(long = $bl $(, short = $bs)?, hide = true)]
                pub $bf: bool,
                #[arg(long = concat!("no-", $bl), hide = true)]
                pub $bn: bool,
            )*
            $(
                #[arg(long = $vl $(, short = $vs)?, hide = true, value_name = "VALUE", action = clap::ArgAction::Append)]
                pub $vf: Vec<String>,
            )*
            $(
                #[arg(long = $ol $(, short = $os)?, hide = true, value_name = "VALUE", num_args = 0..=1,
                      default_missing_value = "", action = clap::ArgAction::Append)]
                pub $of: Vec<String>,
            )*
        }

        impl CriuFlags {
            /// Every long option this struct takes (the test walks them).
            pub const NAMES: &'static [&'static str] = &[
                $($fl,)* $($bl, concat!("no-", $bl),)* $($vl,)* $($ol,)*
            ];

            /// The first option given that ferry does not implement.
            pub fn first_given(&self) -> Option<&'static str> {
                $(if self.$ff { return Some($fl); })*
                $(if self.$bf { return Some($bl); })*
                $(if !self.$vf.is_empty() { return Some($vl); })*
                $(if !self.$of.is_empty() { return Some($ol); })*
                None
            }
        }
    };
}

criu_flags! {
    flags {
        leave_stopped = "leave-stopped", short = 's';
        ms = "ms";
        exec_cmd = "exec-cmd";
        enable_external_sharing = "enable-external-sharing";
        enable_external_masters = "enable-external-masters";
        all = "all";
        no_default_config = "no-default-config";
    }
    bools {
        log_pid, no_log_pid = "log-pid";
        evasive_devices, no_evasive_devices = "evasive-devices";
        link_remap, no_link_remap = "link-remap";
        auto_dedup, no_auto_dedup = "auto-dedup";
        force_irmap, no_force_irmap = "force-irmap";
        extra, no_extra = "extra";
        experimental, no_experimental = "experimental";
        deprecated, no_deprecated = "deprecated";
        display_stats, no_display_stats = "display-stats";
        weak_sysctls, no_weak_sysctls = "weak-sysctls";
        stream, no_stream = "stream";
        skip_file_rwx_check, no_skip_file_rwx_check = "skip-file-rwx-check";
        mntns_compat_mode, no_mntns_compat_mode = "mntns-compat-mode";
        unprivileged, no_unprivileged = "unprivileged";
        ghost_fiemap, no_ghost_fiemap = "ghost-fiemap";
        allow_uprobes, no_allow_uprobes = "allow-uprobes";
    }
    values {
        join_ns = "join-ns", short = 'J';
        close = "close";
        veth_pair = "veth-pair";
        libdir = "libdir", short = 'L';
        ext_mount_map = "ext-mount-map", short = 'M';
        cgroup_root = "cgroup-root";
        feature = "feature";
        skip_mnt = "skip-mnt";
        enable_fs = "enable-fs";
        irmap_scan_path = "irmap-scan-path";
        lsm_profile = "lsm-profile";
        timeout = "timeout";
        cgroup_props = "cgroup-props";
        cgroup_props_file = "cgroup-props-file";
        cgroup_dump_controller = "cgroup-dump-controller";
        ps_socket = "ps-socket";
        config = "config";
        tls_cacrl = "tls-cacrl";
        cgroup_yard = "cgroup-yard";
        pre_dump_mode = "pre-dump-mode";
        file_validation = "file-validation";
        lsm_mount_context = "lsm-mount-context";
    }
    optional {
        cpu_cap = "cpu-cap";
    }
}

/// A size as CRIU takes it: bytes, or with a K, M or G suffix (`1M`).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (bytes, or with K, M or G: 4M)"))?;
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("{s} is too large"))
}

impl CriuFlags {
    /// Refuse the first CRIU option ferry does not implement yet.
    pub fn refuse(&self) -> Result<()> {
        match self.first_given() {
            Some(name) => bail!("--{name} is not supported yet"),
            None => Ok(()),
        }
    }
}

/// CRIU's `--no-X` forms of the boolean options ferry implements: the
/// default, so accepted and without effect.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct NoForms {
    #[arg(long = "no-shell-job", hide = true)]
    pub no_shell_job: bool,
    #[arg(long = "no-file-locks", hide = true)]
    pub no_file_locks: bool,
    #[arg(long = "no-track-mem", hide = true)]
    pub no_track_mem: bool,
    #[arg(long = "no-page-server", hide = true)]
    pub no_page_server: bool,
    #[arg(long = "no-restore-detached", hide = true)]
    pub no_restore_detached: bool,
    #[arg(long = "no-restore-sibling", hide = true)]
    pub no_restore_sibling: bool,
    #[arg(long = "no-daemon", hide = true)]
    pub no_daemon: bool,
    #[arg(long = "no-tls", hide = true)]
    pub no_tls: bool,
}

impl NoForms {
    pub const NAMES: &'static [&'static str] = &[
        "no-shell-job",
        "no-file-locks",
        "no-track-mem",
        "no-page-server",
        "no-restore-detached",
        "no-daemon",
        "no-tls",
    ];
}

/// Restore's options, which CRIU takes on dump and pre-dump too, without
/// effect there.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RestoreOnly {
    #[arg(short = 'd', long = "restore-detached", alias = "daemon", hide = true)]
    pub restore_detached: bool,
    #[arg(long, hide = true)]
    pub pidfile: Option<std::path::PathBuf>,
    #[arg(long = "inherit-fd", hide = true, action = clap::ArgAction::Append)]
    pub inherit_fd: Vec<String>,
}

/// CRIU's `--status-fd N`: a zero byte on descriptor N when ferry is
/// ready for its peer (see [`crate::action_script::status_fd`]). Dump
/// (with --lazy-pages), page-server and lazy-pages have such a point;
/// pre-dump and restore take the option as CRIU does and close it
/// without writing.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct StatusFd {
    /// Write one zero byte to descriptor N (then close it) when ready for
    /// the other side: the lazy dump's page server, or the page server,
    /// listens; the lazy-pages daemon waits for the restore
    #[arg(long = "status-fd", value_name = "N")]
    pub status_fd: Option<i32>,
}

impl StatusFd {
    /// Who to tell when ready.
    pub fn notify(&self) -> Result<Vec<crate::action_script::Notify>> {
        self.status_fd.map(crate::action_script::status_fd).into_iter().collect()
    }
}
