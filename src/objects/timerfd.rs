//! timerfd: its clock, the time left and the interval, and expirations
//! not yet read (fdinfo's `clockid`, `it_value`, `it_interval`, `ticks`,
//! `settime flags`). A relative timer keeps the time it had left (time
//! stands still while the task is dumped, as for nanosleep); an absolute
//! one (TFD_TIMER_ABSTIME) keeps its moment on its clock. Pending
//! expirations are put back with TFD_IOC_SET_TICKS.

use super::{new_fd, FdProbe, FileKind, OpenContext, Registry};
use crate::image::objects::FileObject;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};

pub struct TimerFd;

#[derive(Serialize, Deserialize)]
pub struct State {
    pub clock: i32,
    /// TFD_TIMER_ABSTIME and TFD_TIMER_CANCEL_ON_SET as last set.
    pub settime_flags: i32,
    /// Nanoseconds: left until the next expiry, or (absolute timers) the
    /// moment of it on `clock`; 0 when disarmed.
    pub value_ns: u64,
    pub interval_ns: u64,
    /// Expirations not read yet.
    pub ticks: u64,
}

// TFD_IOC_SET_TICKS: _IOW('T', 0, u64) (its number differs per
// architecture: the macro knows how).
nix::ioctl_write_ptr!(set_ticks, b'T', 0, u64);

/// "(sec, nsec)" → nanoseconds.
fn parse_pair(fd: &FdProbe, key: &str) -> Result<u64> {
    let v = fd.fdinfo_field(key)?;
    let inner = v.trim_start_matches('(').trim_end_matches(')');
    let (s, ns) = inner.split_once(',').with_context(|| format!("{}: {key} {v:?}", fd.what()))?;
    let s: u64 = s.trim().parse().with_context(|| format!("{}: {key} {v:?}", fd.what()))?;
    let ns: u64 = ns.trim().parse().with_context(|| format!("{}: {key} {v:?}", fd.what()))?;
    Ok(s * 1_000_000_000 + ns)
}

fn now_ns(clock: i32) -> Result<u64> {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills a local timespec.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        bail!("clock_gettime({clock}): {}", std::io::Error::last_os_error());
    }
    Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

impl FileKind for TimerFd {
    const NAME: &'static str = "timerfd";
    type State = State;

    fn claims(fd: &FdProbe) -> bool {
        fd.link == "anon_inode:[timerfd]"
    }

    fn dump(fd: &FdProbe, _: &mut dyn Registry) -> Result<State> {
        let num = |key: &str, radix: u32| -> Result<u64> {
            let v = fd.fdinfo_field(key)?;
            let digits = if radix == 8 { v.trim_start_matches('0') } else { &v };
            if digits.is_empty() {
                return Ok(0);
            }
            u64::from_str_radix(digits, radix).with_context(|| format!("{}: {key} {v:?}", fd.what()))
        };
        let clock = num("clockid", 10)? as i32;
        let settime_flags = num("settime flags", 8)? as i32;
        // fdinfo shows the time left, whatever the flags.
        let left = parse_pair(fd, "it_value")?;
        let value_ns =
            if left > 0 && settime_flags & libc::TFD_TIMER_ABSTIME != 0 { now_ns(clock)? + left } else { left };
        Ok(State {
            clock,
            settime_flags,
            value_ns,
            interval_ns: parse_pair(fd, "it_interval")?,
            ticks: num("ticks", 10)?,
        })
    }

    fn open(_: &FileObject, s: &State, _: &OpenContext) -> Result<OwnedFd> {
        // SAFETY: timerfd_create takes no pointers.
        let fd = new_fd(unsafe { libc::timerfd_create(s.clock, libc::TFD_CLOEXEC) }, "timerfd_create")?;
        if s.value_ns > 0 {
            let spec = libc::itimerspec { it_interval: timespec(s.interval_ns), it_value: timespec(s.value_ns) };
            let flags = s.settime_flags & (libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET);
            // SAFETY: a local itimerspec, read by the kernel.
            if unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &spec, std::ptr::null_mut()) } != 0 {
                bail!("timerfd_settime: {}", std::io::Error::last_os_error());
            }
        }
        if s.ticks > 0 {
            // SAFETY: the ioctl reads one u64.
            unsafe { set_ticks(fd.as_raw_fd(), &s.ticks) }.with_context(|| format!("TFD_IOC_SET_TICKS {}", s.ticks))?;
        }
        Ok(fd)
    }

    fn describe(s: &State) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let when = if s.value_ns == 0 {
            "disarmed".to_string()
        } else if s.settime_flags & libc::TFD_TIMER_ABSTIME != 0 {
            format!("fires at {:.3} ms on its clock", ms(s.value_ns))
        } else {
            format!("fires in {:.3} ms", ms(s.value_ns))
        };
        let every = if s.interval_ns > 0 { format!(", every {:.3} ms", ms(s.interval_ns)) } else { String::new() };
        format!("timerfd on clock {}, {when}{every}, {} expirations unread", s.clock, s.ticks)
    }
}
