//! Containers: Debian's runc checkpoints and restores containers through
//! ferry (`runc --criu` pointing at ferry under the name criu), over
//! CRIU's RPC. The containers are busybox (Debian's busybox-static) with a
//! shell loop, and redis-server from the host's /usr bind-mounted in; each
//! test checks the program's own state after the restore.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A shell loop that counts in /tmp/count, ten times a second.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

struct Container {
    id: String,
    /// Other containers made from the same bundle (a restore next to the
    /// source), deleted with it.
    others: Vec<String>,
    dir: tempfile::TempDir,
    /// Read ends of the container's stdout and stderr pipes (runc hands
    /// pipes to the container; ferry gets them back by inherit_fd).
    pipes: Vec<std::os::fd::OwnedFd>,
}

fn bundle(dir: &Path, args: &[&str], mounts: &[(&str, &str)]) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "tmp", "proc", "dev", "sys", "usr", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    for c in ["sh", "sleep", "cat", "echo", "hostname", "stty", "tty", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(c)).unwrap();
    }
    for l in ["lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), rootfs.join(l)).unwrap();
    }
    let spec = Command::new("runc").arg("spec").current_dir(dir).output().expect("runc is installed");
    assert!(spec.status.success(), "runc spec: {}", String::from_utf8_lossy(&spec.stderr));
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(args);
    config["root"]["readonly"] = false.into();
    for (src, dst) in mounts {
        let m = serde_json::json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]});
        config["mounts"].as_array_mut().unwrap().push(m);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// A console socket (what runc's `--console-socket` and its recvtty
/// expect): the pty master runc sends on the first connection.
struct ConsoleSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    fn new(path: PathBuf) -> ConsoleSocket {
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        ConsoleSocket { path, listener }
    }

    fn master(&self) -> std::fs::File {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd};
        let (conn, _) = self.listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the descriptor just arrived, ours alone.
                return unsafe { std::fs::File::from_raw_fd(fds[0]) };
            }
        }
        panic!("runc sent no descriptor to the console socket");
    }
}

/// Type `line` on the terminal and read until `want` shows up in what the
/// shell writes back.
fn converse(master: &mut std::fs::File, line: &str, want: &str) -> String {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    master.write_all(format!("{line}\n").as_bytes()).unwrap();
    let start = Instant::now();
    let mut seen = String::new();
    while !seen.contains(want) {
        assert!(start.elapsed() < Duration::from_secs(20), "waited for {want:?}; the terminal said {seen:?}");
        let mut fds = [nix::poll::PollFd::new(master.as_fd(), nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, 200u16).unwrap() == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        let n = master.read(&mut buf).unwrap();
        assert!(n > 0, "the terminal closed; it said {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

impl Container {
    fn new(name: &str, args: &[&str], mounts: &[(&str, &str)]) -> Container {
        init();
        let dir = tempfile::Builder::new().prefix("ferry-ctr-").tempdir().unwrap();
        bundle(dir.path(), args, mounts);
        std::os::unix::fs::symlink(ferry(), dir.path().join("criu")).unwrap();
        let id = format!("ferry-{name}-{}", std::process::id());
        Container { id, others: Vec::new(), dir, pipes: Vec::new() }
    }

    fn run(name: &str, args: &[&str], mounts: &[(&str, &str)]) -> Container {
        let mut c = Container::new(name, args, mounts);
        let out = c.runc_piped(&["run", "-d", &c.id.clone()]);
        assert!(out.status.success(), "runc run: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// runc, pointed at ferry with `--criu`; with FERRY_TEST_CRIU_FROM_PATH
    /// set (the package check, after installing ferry-criu-compat) runc
    /// runs `criu` from PATH as it does by default.
    fn runc_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runc");
        if std::env::var_os("FERRY_TEST_CRIU_FROM_PATH").is_none() {
            c.arg("--criu").arg(self.dir.path().join("criu"));
        }
        c.args(args).current_dir(self.dir.path());
        c
    }

    /// runc with its stdout and stderr pipes kept for the container (the
    /// run and restore hand them to it), stdin /dev/null.
    fn runc_piped(&mut self, args: &[&str]) -> Output {
        let mut cmd = self.runc_cmd(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let status = child.wait().unwrap();
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let mut stderr = Vec::new();
        if !status.success() {
            // Nothing holds the pipes then: read runc's message.
            use std::io::Read;
            let mut e = err;
            e.read_to_end(&mut stderr).ok();
        } else {
            self.pipes = vec![out.into(), err.into()];
        }
        Output { status, stdout: Vec::new(), stderr }
    }

    fn runc(&self, args: &[&str]) -> Output {
        self.runc_cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn checkpoint(&self, img: &str, work: &str, extra: &[&str]) {
        let (img, work) = (self.path(img), self.path(work));
        let mut args = vec!["checkpoint", "--image-path", img.to_str().unwrap(), "--work-path", work.to_str().unwrap()];
        args.extend(extra);
        args.push(&self.id);
        let out = self.runc(&args);
        let log = std::fs::read_to_string(work.join("dump.log")).unwrap_or_default();
        assert!(out.status.success(), "runc checkpoint: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        assert!(log.contains("ferry::dump"), "ferry did not do this checkpoint:\n{log}");
    }

    /// A checkpoint ferry refuses: runc fails, ferry's log says `why`, and
    /// the container counts on.
    fn checkpoint_refused(&self, why: &str) {
        self.wait_count(3);
        let (img, work) = (self.path("img"), self.path("work"));
        let args = ["checkpoint", "--image-path", img.to_str().unwrap(), "--work-path", work.to_str().unwrap()];
        let out = self.runc(&[&args[..], &[self.id.as_str()]].concat());
        assert!(!out.status.success());
        let log = std::fs::read_to_string(work.join("dump.log")).unwrap();
        assert!(log.contains(why), "{log}");
        assert!(self.pid().is_some(), "the container still runs");
        let n = self.count();
        self.wait_count(n + 3);
    }

    fn restore(&mut self, img: &str, work: &str) {
        let (img, work) = (self.path(img), self.path(work));
        let id = self.id.clone();
        let args = ["restore", "-d", "--image-path", img.to_str().unwrap(), "--work-path", work.to_str().unwrap(), &id];
        let out = self.runc_piped(&args);
        let log = std::fs::read_to_string(work.join("restore.log")).unwrap_or_default();
        assert!(out.status.success(), "runc restore: {}\n{log}", String::from_utf8_lossy(&out.stderr));
    }

    /// The container's init, as ferry's PID, if it runs.
    fn pid(&self) -> Option<i32> {
        let out = self.runc(&["state", &self.id]);
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (state["status"] == "running").then(|| state["pid"].as_i64().unwrap() as i32)
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["exec", &self.id];
        a.extend(args);
        let out = self.runc(&a);
        assert!(out.status.success(), "runc exec {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn count(&self) -> u64 {
        let text = std::fs::read_to_string(self.rootfs().join("tmp/count")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    }

    fn wait_count(&self, at_least: u64) -> u64 {
        let start = Instant::now();
        loop {
            let n = self.count();
            if n >= at_least {
                return n;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the counter stays at {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first value the counter writes after `from`.
    fn next_count(&self, from: u64) -> u64 {
        let start = Instant::now();
        loop {
            let n = self.count();
            if n != from && n != 0 {
                return n;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the counter stays at {from}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for id in std::iter::once(&self.id).chain(&self.others) {
            let _ = self.runc(&["delete", "-f", id]);
        }
    }
}

/// The restored loop goes on from where it was: its next number follows
/// the dumped one (a fresh start would write 1).
fn assert_counts_on(c: &Container, dumped: u64) {
    let next = c.next_count(dumped);
    // The margin is for a slow machine (2 s); a fresh start would need 3 s
    // to pass the dumped number (every test lets it reach 30 first).
    assert!(next > dumped && next <= dumped + 20, "dumped at {dumped}, counts on at {next}");
}

#[test]
fn runc_checkpoint_and_restore_a_shell_loop() {
    let mut c = Container::run("loop", &["sh", "-c", COUNTER], &[]);
    c.wait_count(30);
    c.checkpoint("img", "work", &[]);
    assert_eq!(c.pid(), None, "runc checkpoint ends the container");
    let dumped = c.count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.count(), dumped, "nothing counts while checkpointed");

    // The image is a container's: ferry wants its root and mounts named.
    let img = c.path("img");
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap()]);
    assert!(err.contains("--root DIR"), "{err}");
    let root = c.rootfs();
    let err = ferry_err(&["restore", "-d", "-D", img.to_str().unwrap(), "--root", root.to_str().unwrap()]);
    assert!(err.contains(" is external (") && err.contains("): say what it is now with --external mnt["), "{err}");

    c.restore("img", "work2");
    let pid = c.pid().expect("the restored container runs");
    assert_counts_on(&c, dumped);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t1"), "the init of its PID namespace again: {nspid}");
    assert_eq!(c.exec(&["hostname"]), "runc");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for m in [" / ", " /proc ", " /dev ", " /dev/pts ", " /sys ", " /proc/sys ", " /sys/fs/cgroup/cpu "] {
        assert!(mounts.contains(m), "{m} missing:\n{mounts}");
    }
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(), Path::new("/bin/busybox"));
    assert_eq!(c.exec(&["cat", "/dev/null"]), "");

    // Again, from the restored one: its files and mounts are the container's.
    let again = c.count();
    c.checkpoint("img2", "work3", &[]);
    let dumped = c.count();
    assert!(dumped >= again);
    c.restore("img2", "work4");
    assert_counts_on(&c, dumped);
}

#[test]
fn runc_checkpoint_leave_running_then_restore_the_image() {
    let mut c = Container::run("leave", &["sh", "-c", COUNTER], &[]);
    c.wait_count(30);
    let before = c.count();
    c.checkpoint("img", "work", &["--leave-running"]);
    let after = c.count();
    assert!(c.pid().is_some(), "--leave-running keeps the container");
    let live = c.wait_count(after + 30);
    let out = c.runc(&["kill", &c.id, "KILL"]);
    assert!(out.status.success());
    let start = Instant::now();
    while c.pid().is_some() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.runc(&["delete", &c.id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let last = c.count();
    c.restore("img", "work2");
    let next = c.next_count(last);
    assert!(
        next > before && next <= after + 20 && next < live,
        "dumped between {before} and {after}, counts on at {next}"
    );
}

#[test]
fn runc_pre_dump_then_dump_uses_the_parent() {
    let mut c = Container::run("pre", &["sh", "-c", COUNTER], &[]);
    c.wait_count(30);
    c.checkpoint("pre", "work-pre", &["--pre-dump"]);
    assert!(c.pid().is_some(), "a pre-dump leaves the container running");
    c.wait_count(c.count() + 5);
    c.checkpoint("img", "work", &["--parent-path", "../pre"]);
    let dumped = c.count();
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.path("img").join("stats.json")).unwrap()).unwrap();
    assert!(stats["pages_in_parent"].as_u64().unwrap() > 0, "{stats}");
    c.restore("img", "work2");
    assert_counts_on(&c, dumped);
}

#[test]
fn runc_checkpoint_and_restore_redis_with_its_data() {
    let redis =
        ["/usr/bin/redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"];
    let mut c = Container::run("redis", &redis, &[("/usr", "/usr")]);
    let cli = |c: &Container, args: &[&str]| {
        let mut a = vec!["/usr/bin/redis-cli"];
        a.extend(args);
        c.exec(&a)
    };
    let start = Instant::now();
    while c.runc(&["exec", &c.id, "/usr/bin/redis-cli", "ping"]).stdout != b"PONG\n" {
        assert!(start.elapsed() < Duration::from_secs(30), "redis in the container does not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..200 {
        cli(&c, &["set", &format!("key{i}"), &format!("value{i}")]);
    }
    cli(&c, &["rpush", "list", "a", "b", "c"]);
    c.checkpoint("img", "work", &[]);
    assert_eq!(c.pid(), None);
    c.restore("img", "work2");
    assert_eq!(cli(&c, &["dbsize"]), "201");
    assert_eq!(cli(&c, &["get", "key123"]), "value123");
    assert_eq!(cli(&c, &["lrange", "list", "0", "-1"]), "a\nb\nc");
    cli(&c, &["set", "after", "restore"]);
    assert_eq!(cli(&c, &["get", "after"]), "restore");
}

/// A container whose stdout is a file of the host (not a pipe): ferry
/// could not reopen it inside the container, so the checkpoint stops
/// before the container is touched, with the reason in runc's log, and
/// the container runs on.
#[test]
fn runc_checkpoint_refuses_a_host_file_and_the_container_runs_on() {
    let c = Container::new("hostfile", &["sh", "-c", COUNTER], &[]);
    let log = std::fs::File::create(c.path("out.log")).unwrap();
    let status = c.runc_cmd(&["run", "-d", &c.id]).stdin(Stdio::null()).stdout(log).status().unwrap();
    assert!(status.success());
    c.checkpoint_refused("out.log is on a mount outside the container");
}

/// Lazy migration as runc does it: `runc checkpoint --lazy-pages
/// --page-server ADDR:PORT --status-fd N` on the source (its own network
/// namespace), the images copied, `criu lazy-pages --page-server` and
/// `runc restore --lazy-pages` on the destination (another one): the
/// container counts on there while its memory comes over the link.
#[test]
fn runc_lazy_migration_between_two_network_namespaces() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let net = common::ns::Net::new();
    let mut c = Container::run("lazy", &["sh", "-c", COUNTER], &[]);
    c.wait_count(30);
    let port = (27300 + std::process::id() % 200).to_string();
    let (img, work) = (c.path("img"), c.path("work"));
    let (status_r, status_w) = nix::unistd::pipe().unwrap();
    let fd = status_w.as_raw_fd();
    let server = format!("{}:{port}", net.src_ip);
    let args = ["checkpoint", "--lazy-pages", "--page-server", &server, "--status-fd", "5"];
    let mut ck = Command::new("nsenter");
    ck.arg(format!("--net=/run/netns/{}", net.src)).arg("runc");
    ck.arg("--criu").arg(c.path("criu")).args(args);
    ck.args(["--image-path", img.to_str().unwrap(), "--work-path", work.to_str().unwrap(), &c.id]);
    ck.current_dir(c.dir.path()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        ck.pre_exec(move || {
            if libc::dup2(fd, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let ck = ck.spawn().unwrap();
    drop(status_w);
    let mut byte = [1u8; 1];
    let n = std::fs::File::from(status_r).read(&mut byte).unwrap();
    let log = || std::fs::read_to_string(work.join("dump.log")).unwrap_or_default();
    assert_eq!((n, byte[0]), (1, 0), "no status byte from the lazy checkpoint:\n{}", log());
    let dumped = c.count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.count(), dumped, "the source is frozen while its pages wait");

    // The destination: the images copied, the daemon in its namespace.
    let dimg = c.path("dest-img");
    let cp = Command::new("cp").arg("-a").arg(&img).arg(&dimg).status().unwrap();
    assert!(cp.success());
    let mut daemon = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.dst))
        .arg(ferry())
        .args(["lazy-pages", "--page-server", "--address", &net.src_ip, "--port", &port, "-D", dimg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id2 = format!("{}-dest", c.id);
    c.others.push(id2.clone());
    let work2 = c.path("work2");
    let out = c.runc_piped(&[
        "restore",
        "-d",
        "--lazy-pages",
        "--image-path",
        dimg.to_str().unwrap(),
        "--work-path",
        work2.to_str().unwrap(),
        &id2,
    ]);
    let rlog = std::fs::read_to_string(work2.join("restore.log")).unwrap_or_default();
    assert!(out.status.success(), "runc restore --lazy-pages: {}\n{rlog}", String::from_utf8_lossy(&out.stderr));
    assert_counts_on(&c, dumped);
    let ck = ck.wait_with_output().unwrap();
    assert!(ck.status.success(), "runc checkpoint: {}\n{}", String::from_utf8_lossy(&ck.stderr), log());
    let d = daemon.wait().unwrap();
    assert!(d.success(), "the lazy-pages daemon failed");
    let log = log();
    assert!(log.contains(&format!("serving pages to {}:", net.dst_ip)), "the pages went over the link:\n{log}");
    assert!(log.contains("all lazy pages transferred"), "{log}");
    assert_eq!(c.pid(), None, "the source container is gone");
}

/// A container in a network namespace it was given (a netns path in its
/// config, as podman's are): runc names it (`external net[INODE]`, CRIU
/// 3.11) and hands it back at restore (inherit_fd extRootNetNS); the
/// restored container is in that namespace again, with what was set up
/// there. Asked for a new empty one instead (what runc asks of older CRIU),
/// ferry refuses, and the container runs on.
#[test]
fn runc_restores_a_container_into_its_external_network_namespace() {
    let ns = format!("ferry-ext-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    assert!(Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _del = Del(ns.clone());
    let veth = ["-n", &ns, "link", "add", "ferry0", "type", "veth", "peer", "name", "ferry1"];
    assert!(Command::new("ip").args(veth).status().unwrap().success());
    let mut c = Container::new("extnet", &["sh", "-c", COUNTER], &[]);
    let path = c.path("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for n in config["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = format!("/run/netns/{ns}").into();
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let out = c.runc_piped(&["run", "-d", &c.id.clone()]);
    assert!(out.status.success(), "runc run: {}", String::from_utf8_lossy(&out.stderr));
    c.wait_count(3);

    // ferry's own command line, asked for an empty namespace: refused.
    let pid = c.pid().unwrap();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mut args = vec!["dump".to_string(), "-t".into(), pid.to_string(), "-D".into()];
    args.push(c.path("img-empty").display().to_string());
    args.extend(["--empty-ns".into(), "net".into()]);
    for line in mountinfo.lines().filter(|l| l.contains(" - cgroup ")) {
        let at = line.split(' ').nth(4).unwrap();
        args.extend(["--external".into(), format!("mnt[{at}]:{at}")]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = ferry_err(&a);
    assert!(err.contains(&format!("its network namespace is also mounted at /run/netns/{ns}")), "{err}");
    assert!(err.contains("name it with --external net["), "{err}");
    assert_eq!(c.pid(), Some(pid), "the container still runs");

    c.checkpoint("img", "work", &[]);
    let dumped = c.count();
    c.restore("img", "work2");
    assert_counts_on(&c, dumped);
    let pid = c.pid().unwrap();
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino();
    let given = std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
    assert_eq!(theirs, given, "the restored container is in the namespace it was given");
    assert!(c.exec(&["cat", "/proc/net/dev"]).contains("ferry0"));
}

/// A container with a terminal (runc's default, `--console-socket`): its
/// master stays with the socket's owner, outside the tree. The restore
/// makes a new pty at the same index in the container's devpts, with the
/// line settings and window size, and runc passes the new master on. The
/// shell keeps its variables, its terminal (/dev/console, /dev/tty for
/// job control) and answers on the new master.
#[test]
fn runc_checkpoint_and_restore_a_shell_on_its_terminal() {
    let c = Container::new("tty", &["sh"], &[]);
    let config = c.path("config.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    json["process"]["terminal"] = true.into();
    std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let first = ConsoleSocket::new(c.path("console1.sock"));
    let out = c.runc(&["run", "-d", "--console-socket", first.path.to_str().unwrap(), &c.id.clone()]);
    assert!(out.status.success(), "runc run: {}", String::from_utf8_lossy(&out.stderr));
    let mut master = first.master();
    converse(&mut master, "X=41; stty rows 33 cols 99; echo set$((X+1))", "set42");

    c.checkpoint("img", "work", &[]);
    assert_eq!(c.pid(), None, "runc checkpoint ends the container");
    drop(master);

    let second = ConsoleSocket::new(c.path("console2.sock"));
    let (img, work) = (c.path("img"), c.path("work2"));
    let id = c.id.clone();
    let restore = ["restore", "-d", "--console-socket", second.path.to_str().unwrap(), "--image-path"];
    let mut args = restore.to_vec();
    args.extend([img.to_str().unwrap(), "--work-path", work.to_str().unwrap(), &id]);
    let out = c.runc(&args);
    let log = std::fs::read_to_string(work.join("restore.log")).unwrap_or_default();
    assert!(out.status.success(), "runc restore: {}\n{log}", String::from_utf8_lossy(&out.stderr));
    let mut master = second.master();
    let said = converse(&mut master, "echo again$((X+1)) pid$$ $(tty) $(stty size)", "again42");
    assert!(said.contains("again42 pid1 /dev/pts/0 33 99"), "{said:?}");
    let pid = c.pid().expect("the restored container runs");
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert!(fds.contains(&PathBuf::from("/dev/pts/0")) && fds.contains(&PathBuf::from("/dev/tty")), "{fds:?}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let tty_nr: u64 = stat.rsplit(')').next().unwrap().split_whitespace().nth(4).unwrap().parse().unwrap();
    assert_eq!(tty_nr, 136 << 8, "pts 0 is the shell's controlling terminal again: {stat}");
}

/// A container with a cgroup namespace of its own (runc makes one when the
/// config asks; it mounts the cgroup filesystems inside it): the restore
/// roots a new one at the cgroups runc put the restore in, the
/// container's, and the root mounts the cgroup filesystems inside it.
#[test]
fn runc_checkpoint_and_restore_with_a_cgroup_namespace() {
    let mut c = Container::new("cgns", &["sh", "-c", COUNTER], &[]);
    let config = c.path("config.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    json["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "cgroup"}));
    std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let out = c.runc_piped(&["run", "-d", &c.id.clone()]);
    assert!(out.status.success(), "runc run: {}", String::from_utf8_lossy(&out.stderr));
    c.wait_count(30);
    c.checkpoint("img", "work", &[]);
    let dumped = c.count();
    c.restore("img", "work2");
    assert_counts_on(&c, dumped);
    let pid = c.pid().expect("the restored container runs");
    let ours = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert_ne!(std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap(), ours, "a cgroup namespace of its own");
    // Inside, every hierarchy is at its namespace's root; outside, the
    // task is in the container's cgroup.
    let inside = c.exec(&["cat", "/proc/1/cgroup"]);
    assert!(inside.lines().all(|l| l.ends_with(":/")), "{inside}");
    let outside = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(outside.lines().any(|l| l.ends_with(&format!("/{}", c.id))), "{outside}");
    let mounts = c.exec(&["cat", "/proc/1/mountinfo"]);
    let cg = mounts.lines().filter(|l| l.contains(" - cgroup")).collect::<Vec<_>>();
    assert!(!cg.is_empty() && cg.iter().all(|l| l.split(' ').nth(3) == Some("/")), "{mounts}");
}
