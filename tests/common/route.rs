//! The two ways a real program's tree is carried in the tests: dumped and
//! restored here at its PIDs, or moved with `ferry migrate` from one
//! network namespace into another (with PID and IPC namespaces of its own,
//! as on another machine).

use super::ns::{Net, PidNs};
use super::*;
use std::process::{Command, Stdio};

pub struct Route {
    /// None: dump and restore on this machine.
    pub net: Option<Net>,
    /// Options for `ferry receive` (the destination's action script).
    pub receive_extra: Vec<String>,
}

/// Where the tree landed.
pub struct Landed {
    ns: Option<PidNs>,
}

impl Route {
    pub fn here() -> Route {
        Route { net: None, receive_extra: Vec::new() }
    }

    pub fn across() -> Route {
        Route { net: Some(Net::new()), receive_extra: Vec::new() }
    }

    /// Across `net` (a [`super::ns::Lan`]'s), with options for receive.
    pub fn across_net(net: Net, receive_extra: &[&str]) -> Route {
        Route { net: Some(net), receive_extra: receive_extra.iter().map(|s| s.to_string()).collect() }
    }

    pub fn name(&self) -> &'static str {
        if self.net.is_some() {
            "ferry migrate"
        } else {
            "dump and restore"
        }
    }

    /// The program, started where this route begins (exec'ed: same PID).
    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        match &self.net {
            Some(net) => net.in_src(prog, args),
            None => {
                let mut c = Command::new(prog);
                c.args(args);
                c
            }
        }
    }

    /// Carry `t`'s tree along the route with `extra` dump (or migrate)
    /// options; the source's processes are reaped once gone. `w` holds the
    /// images.
    pub fn carry(&self, t: &mut Target, w: &Path, extra: &[&str]) -> Landed {
        let tree = tree_pids(t.pid);
        let landed = match &self.net {
            None => {
                let img = w.join("img");
                dump(t.pid, &img, extra);
                Landed { ns: None }
            }
            Some(net) => {
                let ns = PidNs::new(Some(&net.dst));
                let key = w.join("key");
                std::fs::write(&key, "a shared secret of some length").unwrap();
                let key = key.to_str().unwrap();
                let listen = format!("{}:7011", net.dst_ip);
                let dst = w.join("dst");
                // A group of its own: nsenter forks ferry, and a kill must
                // reach both.
                let mut rargs = vec!["receive", "--listen", &listen, "-D", dst.to_str().unwrap(), "--auth-key", key];
                rargs.extend(self.receive_extra.iter().map(String::as_str));
                let mut recv = ns
                    .ferry(&rargs)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0)
                    .spawn()
                    .unwrap();
                // The source connects once the destination listens.
                let mut out = std::io::BufReader::new(recv.stdout.take().unwrap());
                let mut first = String::new();
                out.read_line(&mut first).unwrap();
                assert!(first.contains("listening on"), "receive: {first}");
                recv.stdout = Some(out.into_inner());
                let pid = t.pid.to_string();
                let mut args = vec!["migrate", "-t", &pid, "--to", &listen, "--auth-key", key];
                args.extend_from_slice(extra);
                let m = net.in_src(&ferry().display().to_string(), &args).output().unwrap();
                if !m.status.success() {
                    // The destination would wait for a source that gave up.
                    // SAFETY: plain kill(2) of the group spawned above.
                    unsafe { libc::kill(-(recv.id() as i32), libc::SIGKILL) };
                }
                let r = recv.wait_with_output().unwrap();
                assert!(
                    m.status.success() && r.status.success(),
                    "migrate: {}{}\nreceive: {}{}",
                    String::from_utf8_lossy(&m.stdout),
                    String::from_utf8_lossy(&m.stderr),
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                );
                Landed { ns: Some(ns) }
            }
        };
        t.reap_killed();
        reap_all(&tree, Duration::from_secs(60));
        if landed.ns.is_none() {
            restore_detached(&w.join("img"), &[]);
        }
        // (Whether each process came along is the test's to check: some
        // end on their own right after, like a backend whose client is
        // gone.)
        landed
    }
}

impl Landed {
    /// The host's PID of the carried process `pid`.
    pub fn host_pid(&self, pid: i32) -> i32 {
        match &self.ns {
            Some(ns) => ns.host_pid(pid).unwrap_or_else(|| {
                let ps = Command::new("ps").args(["-eo", "pid,ppid,stat,cmd"]).output().unwrap().stdout;
                panic!("process {pid} is not in the namespace:\n{}", String::from_utf8_lossy(&ps))
            }),
            None => pid,
        }
    }

    pub fn pid_exists(&self, pid: i32) -> bool {
        match &self.ns {
            Some(ns) => ns.host_pid(pid).is_some(),
            None => pid_exists(pid),
        }
    }

    pub fn signal(&self, pid: i32, sig: i32) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.host_pid(pid), sig) };
    }

    /// Wait until the carried process `pid` is gone.
    pub fn wait_gone(&self, pid: i32, timeout: Duration) {
        match &self.ns {
            // The namespace's init reaps it (it may have already).
            Some(ns) => {
                let Some(host) = ns.host_pid(pid) else { return };
                let start = Instant::now();
                while pid_exists(host) {
                    assert!(start.elapsed() < timeout, "process {pid} still there after {timeout:?}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            None => {
                wait_pid(pid, timeout);
            }
        }
    }
}
