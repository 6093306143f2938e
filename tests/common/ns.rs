//! Test "machines" on one host: two network namespaces joined by a veth
//! pair (source and destination), and a PID namespace on the destination so
//! a restored task gets its original PID while the source still holds it.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces, `src` (10.77.N.1) and `dst` (10.77.N.2), one veth link.
pub struct Net {
    pub src: String,
    pub dst: String,
    pub src_ip: String,
    pub dst_ip: String,
    veth: String,
}

impl Net {
    pub fn new() -> Net {
        let n = (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::SeqCst)) % 250;
        let (src, dst) = (format!("ferry-s{n}"), format!("ferry-d{n}"));
        let _ = Command::new("ip").args(["netns", "del", &src]).output();
        let _ = Command::new("ip").args(["netns", "del", &dst]).output();
        ip(&["netns", "add", &src]);
        ip(&["netns", "add", &dst]);
        let (va, vb) = (format!("fs{n}"), format!("fd{n}"));
        ip(&["link", "add", &va, "netns", &src, "type", "veth", "peer", "name", &vb, "netns", &dst]);
        let (sip, dip) = (format!("10.77.{n}.1"), format!("10.77.{n}.2"));
        ip(&["-n", &src, "addr", "add", &format!("{sip}/24"), "dev", &va]);
        ip(&["-n", &dst, "addr", "add", &format!("{dip}/24"), "dev", &vb]);
        for (ns, dev) in [(&src, &va), (&dst, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Net { src, dst, src_ip: sip, dst_ip: dip, veth: va }
    }

    /// Cut or restore the link (from the source side).
    pub fn link(&self, up: bool) {
        ip(&["-n", &self.src, "link", "set", &self.veth, if up { "up" } else { "down" }]);
    }

    /// A command run in the source network namespace (exec'ed: same PID).
    /// Only the network namespace changes (`ip netns exec` would also give
    /// it a mount namespace of its own).
    pub fn in_src(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.src)).arg(prog).args(args);
        c
    }
}

/// Three "machines" on one LAN: a client, a source and a destination, each
/// a network namespace with a veth into a bridge (in a namespace of its
/// own). The service address lives on an interface of its own, `svc0`, on
/// the source; moving that interface to the destination moves the address
/// with its MAC, so the client's neighbour cache stays right (between real
/// machines an operator sends a gratuitous ARP instead). It is built
/// around a [`Net`], the source-destination link ferry's own traffic takes.
pub struct Lan {
    pub cli: String,
    bridge: String,
    src: String,
    dst: String,
    pub svc_ip: String,
}

impl Lan {
    pub fn new(net: &Net) -> Lan {
        let n = net.src.trim_start_matches("ferry-s").to_string();
        let (cli, bridge) = (format!("ferry-c{n}"), format!("ferry-b{n}"));
        for ns in [&cli, &bridge] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        // (namespace, its interface, address)
        let svc_ip = format!("10.78.{n}.100");
        for (ns, dev, addr) in [(&cli, "eth0", Some(format!("10.78.{n}.10"))), (&net.src, "svc0", Some(svc_ip.clone()))]
        {
            let port = format!("p{}{n}", &ns[6..7]);
            ip(&["link", "add", dev, "netns", ns, "type", "veth", "peer", "name", &port, "netns", &bridge]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &bridge, "link", "set", &port, "up"]);
            if let Some(a) = addr {
                ip(&["-n", ns, "addr", "add", &format!("{a}/24"), "dev", dev]);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        Lan { cli, bridge, src: net.src.clone(), dst: net.dst.clone(), svc_ip }
    }

    /// A command run in the client's network namespace.
    pub fn in_cli(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.cli)).arg(prog).args(args);
        c
    }

    /// Write [`Lan::move_address_script`] into `dir`, executable; its path.
    pub fn write_move_script(&self, dir: &std::path::Path) -> String {
        let script = dir.join("move-address.sh");
        std::fs::write(&script, self.move_address_script()).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        script.to_str().unwrap().to_string()
    }

    /// An action script that moves the service address as an operator
    /// would: the source lets it go after its dump, the destination takes
    /// it before the restored task runs.
    pub fn move_address_script(&self) -> String {
        format!(
            "#!/bin/sh\ncase \"$CRTOOLS_SCRIPT_ACTION\" in\n\
             post-dump) ip -n {src} link set svc0 netns {dst} ;;\n\
             pre-restore) ip -n {dst} addr add {ip}/24 dev svc0 && ip -n {dst} link set svc0 up ;;\n\
             esac\n",
            src = self.src,
            dst = self.dst,
            ip = self.svc_ip
        )
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.cli]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.bridge]).output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.src]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.dst]).output();
    }
}

const REAPER: &str = "import os, time\nwhile True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(0.1)\n";

/// A PID namespace (in network namespace `netns`, if given, and an IPC
/// namespace of its own) whose init reaps everything, like a real init.
pub struct PidNs {
    pub init: i32,
    unshare: Child,
    netns: Option<String>,
}

impl PidNs {
    pub fn new(netns: Option<&str>) -> PidNs {
        let mut c = match netns {
            Some(n) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{n}")).arg("unshare");
                c
            }
            None => Command::new("unshare"),
        };
        // An IPC namespace of its own too, as on another machine: System V
        // segments restored there do not meet the source's.
        c.args(["--pid", "--ipc", "--fork", "--mount-proc", "/usr/bin/python3", "-c", REAPER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let unshare = c.spawn().expect("unshare");
        let start = Instant::now();
        let init = loop {
            let kids =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                break p;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the PID namespace did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        PidNs { init, unshare, netns: netns.map(str::to_string) }
    }

    /// Run ferry inside the namespace(s).
    pub fn ferry(&self, args: &[&str]) -> Command {
        let init = self.init.to_string();
        let mut c = Command::new("nsenter");
        c.args(["-t", &init, "-p", "-m", "-i"]);
        if self.netns.is_some() {
            c.arg("-n");
        }
        c.arg(super::ferry()).args(args);
        c
    }

    /// The host PID of the process with PID `pid` inside this namespace.
    pub fn host_pid(&self, pid: i32) -> Option<i32> {
        let ours = std::fs::read_link(format!("/proc/{}/ns/pid", self.init)).ok()?;
        std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).find(
            |p| {
                std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() == Some(ours.clone())
                    && std::fs::read_to_string(format!("/proc/{p}/status"))
                        .ok()
                        .and_then(|s| s.lines().find(|l| l.starts_with("NSpid:")).map(str::to_string))
                        .is_some_and(|l| l.split_whitespace().last() == Some(&pid.to_string()))
            },
        )
    }
}

impl Drop for PidNs {
    fn drop(&mut self) {
        // SAFETY: plain kill(2); killing init ends the whole namespace.
        unsafe { libc::kill(self.init, libc::SIGKILL) };
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
