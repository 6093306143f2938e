//! Network fuzzing and slow peers, for every listening endpoint: the page
//! server, `receive`, the lazy dump's page source and the lazy-pages
//! daemon's handoff socket. proptest sends malformed frames before and
//! after authentication (random bytes, unknown kinds, wrong lengths, a 64
//! MiB length followed by nothing, the protocol's own words in the wrong
//! place); the endpoint must never panic or die of a signal, must stay
//! within a memory bound, and if an authenticated peer's garbage makes it
//! give up, it does so with a one-line error. Then 100 silent connections
//! are held open and the right peer must still be authenticated and
//! served within a second, and do its real work: a dump stored, a
//! migration, a lazy restore whose daemon reconnects during post-copy.

mod common;

use common::fuzz::{runner, settings};
use common::ns::{Net, PidNs};
use common::*;
use ferry::net::auth::Key;
use proptest::prelude::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);
/// Resident memory an endpoint may reach, whatever it is sent.
const MAX_RSS_KIB: u64 = 256 << 10;
const SILENT: usize = 100;

/// One piece of what a fuzzing peer sends.
#[derive(Clone, Debug)]
enum Chunk {
    Bytes(Vec<u8>),
    /// A frame header with any kind, and a length that may lie.
    Frame {
        kind: u8,
        prio: u8,
        id: u32,
        len: Len,
        payload: Vec<u8>,
    },
    /// A status frame with one of the protocol's words.
    Word(usize),
    /// Prove the key (the rest of the case is sent as an authenticated peer).
    Handshake,
    /// Hand a file descriptor over (unix socket only; /dev/null).
    Fd(Vec<u8>),
    Pause(u8),
}

#[derive(Clone, Debug)]
enum Len {
    Exact,
    Huge,
    Max,
    Off(i8),
}

const WORDS: [&str; 9] = ["migrate", "resume", "upload", "arm", "go", "image", "done", "", "\u{0}"];

fn chunk() -> impl Strategy<Value = Chunk> {
    let len = prop_oneof![4 => Just(Len::Exact), 1 => Just(Len::Huge), 1 => Just(Len::Max), 1 => any::<i8>().prop_map(Len::Off)];
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Chunk::Bytes),
        4 => (0u8..20, any::<u8>(), any::<u32>(), len, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(kind, prio, id, len, payload)| Chunk::Frame { kind, prio, id, len, payload }),
        2 => (0..WORDS.len()).prop_map(Chunk::Word),
        2 => Just(Chunk::Handshake),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Chunk::Fd),
        1 => (0u8..30).prop_map(Chunk::Pause),
    ]
}

fn frame(kind: u8, prio: u8, id: u32, len: &Len, payload: &[u8]) -> Vec<u8> {
    let n = match len {
        Len::Exact => payload.len() as u64,
        Len::Huge => 64 << 20,
        Len::Max => u64::MAX,
        Len::Off(d) => (payload.len() as i64 + *d as i64).max(0) as u64,
    };
    let mut h = Vec::with_capacity(16 + payload.len());
    h.extend(0xfe27u16.to_le_bytes());
    h.extend([kind, prio]);
    h.extend(id.to_le_bytes());
    h.extend(n.to_le_bytes());
    h.extend(payload);
    h
}

/// Where a fuzzing peer connects.
#[derive(Clone)]
enum Target {
    /// HOST:PORT, reached from inside a network namespace.
    Tcp {
        addr: String,
        netns: String,
    },
    Unix(PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn write_all(&self, b: &[u8]) -> bool {
        match self {
            Stream::Tcp(s) => {
                let mut s = s;
                s.write_all(b).is_ok()
            }
            Stream::Unix(s) => {
                let mut s = s;
                s.write_all(b).is_ok()
            }
        }
    }

    fn read(&self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                let mut s = s;
                s.read(b)
            }
            Stream::Unix(s) => {
                let mut s = s;
                s.read(b)
            }
        }
    }

    fn handshake(&self, key: &Key) -> bool {
        match self {
            Stream::Tcp(s) => ferry::net::auth::connect(&mut &*s, Some(key)).is_ok(),
            Stream::Unix(s) => ferry::net::auth::connect(&mut &*s, Some(key)).is_ok(),
        }
    }
}

/// Run `f` on a thread in the network namespace peers of `target` live in.
fn as_peer<T: Send + 'static>(target: &Target, f: impl FnOnce(Target) -> T + Send + 'static) -> T {
    let t = target.clone();
    std::thread::spawn(move || {
        if let Target::Tcp { netns, .. } = &t {
            enter_netns(netns);
        }
        f(t)
    })
    .join()
    .unwrap()
}

/// Enter network namespace `name` on this thread.
fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn open(target: &Target) -> Option<Stream> {
    match target {
        Target::Tcp { addr, .. } => {
            let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).ok()?;
            // No waiting on delayed acknowledgements between small frames.
            s.set_nodelay(true).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
            s.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
            Some(Stream::Tcp(s))
        }
        Target::Unix(p) => {
            let s = UnixStream::connect(p).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
            s.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
            Some(Stream::Unix(s))
        }
    }
}

/// Send one case; every error of ours is ignored (the endpoint may hang
/// up). Returns whether it got past authentication.
fn send_case(target: &Target, key: &Key, chunks: &[Chunk]) -> bool {
    let Some(s) = open(target) else { return false };
    let mut proven = false;
    for c in chunks {
        let ok = match c {
            Chunk::Bytes(b) => s.write_all(b),
            Chunk::Frame { kind, prio, id, len, payload } => s.write_all(&frame(*kind, *prio, *id, len, payload)),
            Chunk::Word(i) => s.write_all(&frame(15, 1, 0, &Len::Exact, WORDS[*i].as_bytes())),
            Chunk::Handshake => {
                proven = s.handshake(key);
                proven
            }
            Chunk::Fd(bytes) => match &s {
                Stream::Unix(u) => {
                    use std::os::fd::AsRawFd;
                    let null = std::fs::File::open("/dev/null").unwrap();
                    let fds = [null.as_raw_fd()];
                    nix::sys::socket::sendmsg::<()>(
                        u.as_raw_fd(),
                        &[std::io::IoSlice::new(bytes)],
                        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                        nix::sys::socket::MsgFlags::empty(),
                        None,
                    )
                    .is_ok()
                }
                Stream::Tcp(_) => true,
            },
            Chunk::Pause(ms) => {
                std::thread::sleep(Duration::from_millis(*ms as u64));
                true
            }
        };
        if !ok {
            break;
        }
    }
    // Read whatever comes back for a moment, then go.
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(50);
    while Instant::now() < deadline && matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    proven
}

/// A listening ferry, its log, and how to start it again after an
/// authenticated peer's garbage made it give up (with a one-line error).
struct Endpoint {
    name: &'static str,
    child: Child,
    log: PathBuf,
    restarts: u32,
    start: Box<dyn Fn() -> Child>,
}

impl Endpoint {
    fn new(name: &'static str, log: PathBuf, start: Box<dyn Fn() -> Child>) -> Endpoint {
        let child = start();
        Endpoint { name, child, log, restarts: 0, start }
    }

    /// Check that it is alive within bounds, or that it ended as allowed
    /// (and then start it again).
    fn check(&mut self) -> Result<(), String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if log.contains("panicked") {
            return Err(format!("{}: panicked:\n{log}", self.name));
        }
        match self.child.try_wait().unwrap() {
            None => {
                let rss = rss_kib(ferry_of(self.child.id() as i32));
                if rss > MAX_RSS_KIB {
                    return Err(format!("{}: {} MiB resident", self.name, rss >> 10));
                }
                Ok(())
            }
            Some(st) => {
                use std::os::unix::process::ExitStatusExt;
                let last = log.lines().rfind(|l| !l.contains("warning")).unwrap_or("");
                if st.signal().is_some() || !matches!(st.code(), Some(0 | 1)) {
                    return Err(format!("{}: ended with {st}:\n{log}", self.name));
                }
                if st.code() == Some(1) && !last.starts_with("ferry: ") {
                    return Err(format!("{}: exit 1 without a one-line error:\n{log}", self.name));
                }
                self.restarts += 1;
                self.child = (self.start)();
                Ok(())
            }
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the ferry behind nsenter.
        unsafe { libc::kill(ferry_of(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ferry process behind `pid`: nsenter forks when it enters a PID
/// namespace; otherwise it execs and is ferry itself.
fn ferry_of(pid: i32) -> i32 {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(pid)
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn logged(mut c: Command, log: &Path) -> Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(f).spawn().unwrap()
}

/// Fuzz `endpoint` at `target` from a thread in the right namespace.
fn fuzz(endpoint: &mut Endpoint, target: &Target, key: &Key, seed: u64) {
    if !common::fuzz::wanted(endpoint.name) {
        return;
    }
    let (cases, s) = settings(200);
    let mut run = runner(cases, s.wrapping_add(seed));
    let k = key.clone();
    let cases_sent = std::cell::Cell::new(0u32);
    // Cases that got past authentication (a fuzzer that never gets in
    // tests nothing behind the lock).
    let proven = std::cell::Cell::new(0u32);
    let ep = std::cell::RefCell::new(endpoint);
    // Half the cases prove the key first and most of those then name a
    // request, so that what follows reaches the protocol behind the lock.
    let case = (any::<bool>(), prop::option::weighted(0.8, 0..WORDS.len()), prop::collection::vec(chunk(), 0..8))
        .prop_map(|(auth, word, rest)| {
            let mut c = Vec::new();
            if auth {
                c.push(Chunk::Handshake);
                c.extend(word.map(Chunk::Word));
            }
            c.extend(rest);
            c
        });
    let result = run.run(&case, |chunks| {
        let k = k.clone();
        if as_peer(target, move |t| send_case(&t, &k, &chunks)) {
            proven.set(proven.get() + 1);
        }
        cases_sent.set(cases_sent.get() + 1);
        ep.borrow_mut().check().map_err(TestCaseError::fail)?;
        Ok(())
    });
    let ep = ep.into_inner();
    let proven = proven.get();
    eprintln!("fuzz network {}: {} cases, {proven} authenticated, {} restarts", ep.name, cases_sent.get(), ep.restarts);
    // (The handoff socket has no key: its peers are checked by uid.)
    if matches!(target, Target::Tcp { .. }) {
        assert!(proven > 0 || cases_sent.get() < 20, "{}: no case got past authentication", ep.name);
    }
    if let Err(e) = result {
        panic!("{}: {e}", ep.name);
    }
    // The last cases may still end it (then it is started again): wait
    // until it listens.
    let start = Instant::now();
    loop {
        ep.check().unwrap();
        if listening(target, Duration::from_secs(1)) {
            break;
        }
        assert!(
            start.elapsed() < T,
            "{} does not listen after the fuzzing:\n{}",
            ep.name,
            std::fs::read_to_string(&ep.log).unwrap_or_default()
        );
    }
}

/// Hold `SILENT` connections open to `target` (from namespace `netns`):
/// connected, saying nothing. Dropped, they close.
struct Silent(#[allow(dead_code)] Vec<Stream>);

fn silent(target: &Target) -> Silent {
    silent_n(target, SILENT)
}

fn silent_n(target: &Target, n: usize) -> Silent {
    as_peer(target, move |t| Silent((0..n).map(|_| open(&t).expect("a silent connection")).collect()))
}

/// With the silent peers connected, the right one proves itself (and is
/// answered) within a second.
fn right_peer_admitted(target: &Target, key: &Key, hello: &str, connected: usize) {
    let (k, hello) = (key.clone(), hello.to_string());
    let took = as_peer(target, move |t| {
        let Target::Tcp { addr, .. } = &t else { unreachable!() };
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        ferry::net::auth::connect(&mut s, Some(&k)).expect("the right peer authenticates");
        let took = start.elapsed();
        s.write_all(&frame(15, 1, 0, &Len::Exact, hello.as_bytes())).unwrap();
        took
    });
    assert!(took < Duration::from_secs(1), "the right peer waited {took:?} behind {connected} silent ones");
    eprintln!("authenticated in {took:?} with {connected} silent peers connected");
}

/// Room for a flood of connections in this process (the soft limit may
/// rise to the hard one without privilege).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
}

fn key(w: &Path) -> (String, Key) {
    let p = w.join("key");
    std::fs::write(&p, "a shared key for the fuzzing runs").unwrap();
    (p.display().to_string(), Key::load(&p).unwrap())
}

fn wait_listening(target: &Target) {
    assert!(listening(target, T), "the endpoint never listened");
}

fn listening(target: &Target, wait: Duration) -> bool {
    let start = Instant::now();
    as_peer(target, move |t| {
        while open(&t).is_none() {
            if start.elapsed() > wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    })
}

#[test]
fn page_server_and_receive() {
    let w = workdir();
    let net = Net::new();
    let (kp, k) = key(w.path());
    let ns = PidNs::new(Some(&net.dst));
    for (name, port) in [("page-server", "7102"), ("receive", "7101")] {
        let dir = w.path().join(name).display().to_string();
        let log = w.path().join(format!("{name}.log"));
        let (ns_init, kp2, dst_ip, dir2) = (ns.init, kp.clone(), net.dst_ip.clone(), dir.clone());
        let start: Box<dyn Fn() -> Child> = Box::new({
            let log = log.clone();
            move || {
                let _ = std::fs::remove_dir_all(&dir2);
                let mut c = Command::new("nsenter");
                c.args(["-t", &ns_init.to_string(), "-p", "-m", "-i", "-n"]).arg(ferry());
                if name == "page-server" {
                    c.args(["page-server", "--address", &dst_ip, "--port", port]);
                } else {
                    c.args(["receive", "--listen", &format!("{dst_ip}:{port}")]);
                }
                c.args(["-D", &dir2, "--auth-key", &kp2]);
                logged(c, &log)
            }
        });
        let mut ep = Endpoint::new(name, log.clone(), start);
        let target = Target::Tcp { addr: format!("{}:{port}", net.dst_ip), netns: net.src.clone() };
        wait_listening(&target);
        fuzz(&mut ep, &target, &k, port.parse().unwrap());
        ep.check().unwrap();
        // A flood first: more connections than handshakes may run at once,
        // all held open; the oldest are cut, memory stays bounded, and the
        // right peer still gets in.
        raise_fd_limit();
        let flood = silent_n(&target, 2000);
        right_peer_admitted(&target, &k, "probe", 2000);
        ep.check().unwrap();
        drop(flood);
        let quiet = silent(&target);
        right_peer_admitted(&target, &k, "probe", SILENT);
        // The real work, with the silent peers still connected.
        let mut t = spawn_command(
            net.in_src(&testprog("tp-churn").display().to_string(), &["16", "5"]),
            &w.path().join(format!("{name}.out")),
        );
        t.wait_output("ready", T);
        let pid = t.pid.to_string();
        let to = format!("{}:{port}", net.dst_ip);
        let out = if name == "page-server" {
            let local = w.path().join("local").display().to_string();
            net.in_src(
                &ferry().display().to_string(),
                &[
                    "dump",
                    "-t",
                    &pid,
                    "-D",
                    &local,
                    "--page-server",
                    "--address",
                    &net.dst_ip,
                    "--port",
                    port,
                    "--auth-key",
                    &kp,
                ],
            )
            .output()
            .unwrap()
        } else {
            net.in_src(&ferry().display().to_string(), &["migrate", "-t", &pid, "--to", &to, "--auth-key", &kp])
                .output()
                .unwrap()
        };
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        t.reap_killed();
        let end = ep.child.wait().unwrap();
        let logtext = std::fs::read_to_string(&log).unwrap();
        assert!(end.success() && !logtext.contains("panicked"), "{name}: {end}\n{logtext}");
        drop(quiet);
        if name == "receive" {
            let host = ns.host_pid(t.pid).expect("the migrated task");
            // SAFETY: plain kill(2).
            unsafe { libc::kill(host, libc::SIGKILL) };
        }
    }
}

#[test]
fn lazy_source_and_handoff_while_the_daemon_reconnects() {
    let w = workdir();
    let net = Net::new();
    let (kp, k) = key(w.path());
    let port = "7103";
    let src_target = Target::Tcp { addr: format!("{}:{port}", net.src_ip), netns: net.dst.clone() };
    // The lazy dump's page source: a task dumped lazily, served until the
    // pages are all fetched. A peer's garbage may end it (an authenticated
    // "done"), then a new task is dumped.
    let log = w.path().join("lazy-dump.log");
    let imgs = w.path().join("imgs");
    let (src_ns, src_ip, kp2, imgs2, out) =
        (net.src.clone(), net.src_ip.clone(), kp.clone(), imgs.clone(), w.path().join("src.out"));
    let start: Box<dyn Fn() -> Child> = Box::new({
        let log = log.clone();
        move || {
            let _ = std::fs::remove_dir_all(&imgs2);
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{src_ns}")).arg(testprog("tp-bigmem")).arg("64");
            let t = spawn_command(c, &out);
            t.wait_output("ready", T);
            let pid = t.pid.to_string();
            std::fs::write(out.with_extension("pid"), &pid).unwrap();
            std::mem::forget(t);
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{src_ns}")).arg(ferry()).args([
                "dump",
                "-t",
                &pid,
                "-D",
                imgs2.to_str().unwrap(),
                "--lazy-pages",
                "--port",
                port,
                "--address",
                &src_ip,
                "--auth-key",
                &kp2,
            ]);
            let child = logged(c, &log);
            let start = Instant::now();
            while !imgs2.join("inventory.json").exists() {
                assert!(start.elapsed() < T, "the lazy dump's images");
                std::thread::sleep(Duration::from_millis(20));
            }
            child
        }
    });
    let mut source = Endpoint::new("lazy dump", log.clone(), start);
    wait_listening(&src_target);
    fuzz(&mut source, &src_target, &k, 3);
    source.check().unwrap();

    // The handoff socket of a lazy-pages daemon for those images.
    let ns = PidNs::new(Some(&net.dst));
    let dlog = w.path().join("daemon.log");
    let (init, src_ip2, kp3, imgs3) = (ns.init, net.src_ip.clone(), kp.clone(), imgs.clone());
    let dstart: Box<dyn Fn() -> Child> = Box::new({
        let dlog = dlog.clone();
        move || {
            let mut c = Command::new("nsenter");
            c.args(["-t", &init.to_string(), "-p", "-m", "-i", "-n"]).arg(ferry()).args([
                "lazy-pages",
                "--page-server",
                "--address",
                &src_ip2,
                "--port",
                port,
                "-D",
                imgs3.to_str().unwrap(),
                "--auth-key",
                &kp3,
            ]);
            c.env("FERRY_TEST_HOLD_AT", "postcopy:300");
            logged(c, &dlog)
        }
    });
    let sock = imgs.join("lazy-pages.sock");
    let _ = std::fs::remove_file(&sock);
    let mut daemon = Endpoint::new("lazy-pages handoff", dlog.clone(), dstart);
    let hand = Target::Unix(sock.clone());
    wait_listening(&hand);
    fuzz(&mut daemon, &hand, &k, 4);
    daemon.check().unwrap();
    source.check().unwrap();
    if !sock.exists() {
        // The last case ended the daemon and it has not listened yet.
        wait_listening(&hand);
    }

    // The real restore, with silent peers on both sockets, and the link
    // cut during post-copy: the daemon reconnects past them.
    let quiet_src = silent(&src_target);
    let quiet_hand = silent(&hand);
    right_peer_admitted(&src_target, &k, "probe", SILENT);
    let out = ns.ferry(&["restore", "--lazy-pages", "-D", imgs.to_str().unwrap(), "-d"]).output().unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    net.link(false);
    std::thread::sleep(Duration::from_secs(3));
    net.link(true);
    let d = daemon.child.wait().unwrap();
    let dl = std::fs::read_to_string(&dlog).unwrap();
    assert!(d.success() && dl.contains("connection lost"), "lazy-pages: {d}\n{dl}");
    let s = source.child.wait().unwrap();
    assert!(s.success(), "lazy dump: {s}\n{}", std::fs::read_to_string(&log).unwrap());
    drop((quiet_src, quiet_hand));
    // The restored task checks all of its memory.
    let out = w.path().join("src.out");
    let pid: i32 = std::fs::read_to_string(out.with_extension("pid")).unwrap().parse().unwrap();
    let host = ns.host_pid(pid).expect("the restored task");
    // SAFETY: plain kill(2).
    unsafe { libc::kill(host, libc::SIGUSR1) };
    let start = Instant::now();
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("ok") {
        assert!(
            start.elapsed() < T,
            "the restored task did not check out: {}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
