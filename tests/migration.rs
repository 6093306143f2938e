//! Live migration between two network namespaces (veth), the destination
//! in a PID namespace of its own: the CRIU-style command sequence, `ferry
//! migrate`/`ferry receive`, authentication, and failures during post-copy.

mod common;

use common::ns::{Net, PidNs};
use common::*;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

fn spawn_src(net: &Net, prog: &str, args: &[&str], out: &Path) -> Target {
    spawn_command(net.in_src(&testprog(prog).display().to_string(), args), out)
}

fn bg(mut c: Command) -> Child {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn ferry_in_src(net: &Net, args: &[&str]) -> Command {
    net.in_src(&ferry().display().to_string(), args)
}

fn finish(c: Child, what: &str) -> Output {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ferry migrate` of `pid` to `listen`, which must succeed; on failure
/// the panic shows what `recv` said too (the destination's side often
/// says why). Returns migrate's output and `recv`, still running.
fn migrate_to(net: &Net, pid: &str, listen: &str, k: &str, mut recv: Child) -> (Output, Child) {
    let m = bg(ferry_in_src(net, &["migrate", "-t", pid, "--to", listen, "--auth-key", k])).wait_with_output().unwrap();
    if !m.status.success() {
        let _ = recv.kill();
        let r = recv.wait_with_output().unwrap();
        panic!(
            "migrate failed:\n{}{}\nreceive said:\n{}",
            String::from_utf8_lossy(&m.stdout),
            String::from_utf8_lossy(&m.stderr),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    (m, recv)
}

/// Wait until `f` holds.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The restored task (seen from the host) checks its memory and exits 0.
fn check_restored(ns: &PidNs, pid: i32, t: &Target) {
    let host = ns.host_pid(pid).expect("restored task in the destination namespace");
    // SAFETY: plain kill(2).
    unsafe { libc::kill(host, libc::SIGUSR1) };
    until("the restored task to check itself", || t.output().contains("ok") || t.output().contains("FAIL"));
    assert!(t.output().contains("ok"), "{}", t.output());
}

fn key(w: &Path, name: &str, content: &str) -> String {
    let p = w.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

/// The source half of DESIGN.md's sequence: pre-dump into IMGS/1, a
/// tracked pre-dump into IMGS/2, then the lazy dump into IMGS/3, serving
/// on port 27; returns the lazy dump (still serving) once its images are
/// complete.
fn precopied_lazy_dump(net: &Net, pid: i32, imgs: &Path) -> Child {
    let pid = pid.to_string();
    let d = |n: &str| imgs.join(n).display().to_string();
    finish(bg(ferry_in_src(net, &["pre-dump", "-t", &pid, "-D", &d("1")])), "pre-dump 1");
    std::thread::sleep(Duration::from_millis(300));
    let second = ["pre-dump", "-t", &pid, "-D", &d("2"), "--prev-images-dir", "../1", "--track-mem"];
    finish(bg(ferry_in_src(net, &second)), "pre-dump 2");
    std::thread::sleep(Duration::from_millis(300));
    let last = [
        "dump",
        "-t",
        &pid,
        "-D",
        &d("3"),
        "--prev-images-dir",
        "../2",
        "--track-mem",
        "--lazy-pages",
        "--port",
        "27",
        "--address",
        &net.src_ip,
    ];
    let src = bg(ferry_in_src(net, &last));
    until("the lazy dump's images", || imgs.join("3/inventory.json").exists());
    src
}

/// The destination half of a lazy migration: the lazy-pages daemon (with
/// `extra` arguments, held at `hold` if given) fetching from the source's
/// `port`, and `restore --lazy-pages` of `dir`, which must succeed.
/// Returns the daemon, still serving.
fn lazy_restore(ns: &PidNs, net: &Net, dir: &str, port: &str, extra: &[&str], hold: Option<&str>) -> Child {
    let mut c = ns.ferry(&["lazy-pages", "--page-server", "--address", &net.src_ip, "--port", port, "-D", dir]);
    c.args(extra);
    if let Some(hold) = hold {
        c.env("FERRY_TEST_HOLD_AT", hold);
    }
    let daemon = bg(c);
    let out = ns.ferry(&["restore", "--lazy-pages", "-D", dir, "-d"]).output().unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    daemon
}

/// DESIGN.md's sequence, verbatim but for paths and the address:
/// pre-dump, pre-dump --prev-images-dir --track-mem, dump --lazy-pages,
/// copy the images, lazy-pages + restore --lazy-pages on the destination.
#[test]
fn criu_command_sequence_between_namespaces() {
    let w = workdir();
    let net = Net::new();
    let mut t = spawn_src(&net, "tp-churn", &["128", "5"], &w.path().join("out"));
    t.wait_output("ready", T);
    let imgs = w.path().join("imgs");
    let src = precopied_lazy_dump(&net, t.pid, &imgs);
    // "After copying /imgs": the destination gets its own copy.
    let dst_imgs = w.path().join("dst");
    assert!(Command::new("cp").arg("-a").arg(&imgs).arg(&dst_imgs).status().unwrap().success());
    let ns = PidNs::new(Some(&net.dst));
    let dd = dst_imgs.join("3").display().to_string();
    let daemon = lazy_restore(&ns, &net, &dd, "27", &[], None);
    finish(daemon, "lazy-pages");
    finish(src, "lazy dump");
    // The source task is gone; the restored one runs at the same PID.
    t.reap_killed();
    assert!(ns.host_pid(t.pid).is_some());
    check_restored(&ns, t.pid, &t);
    // The pre-copied pages were placed by the daemon after the task ran,
    // not by the restore before.
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst_imgs.join("3/lazy-stats.json")).unwrap()).unwrap();
    assert!(stats["local_bytes"].as_u64().unwrap() > 64 << 20, "{stats}");
}

/// A pre-copied pages file damaged on the destination: the lazy-pages
/// daemon finds the damaged block when it first reads it (after the task
/// runs, not before: checking 1 GiB would sit in the downtime), says so,
/// and fetches that block's pages from the source, which still holds the
/// frozen task. The migrated task's own check of its memory passes.
#[test]
fn damaged_precopied_pages_come_from_the_source() {
    let w = workdir();
    let net = Net::new();
    let mut t = spawn_src(&net, "tp-churn", &["128", "5"], &w.path().join("out"));
    t.wait_output("ready", T);
    let imgs = w.path().join("imgs");
    let pid = t.pid.to_string();
    let d = |n: &str| imgs.join(n).display().to_string();
    finish(bg(ferry_in_src(&net, &["pre-dump", "-t", &pid, "-D", &d("1")])), "pre-dump");
    let pages = imgs.join(format!("1/pages-{}.img", t.pid));
    let last = ["dump", "-t", &pid, "-D", &d("2"), "--prev-images-dir", "../1", "--track-mem", "--lazy-pages"];
    let src = bg(ferry_in_src(&net, &[&last[..], &["--port", "29", "--address", &net.src_ip]].concat()));
    until("the lazy dump's images", || imgs.join("2/inventory.json").exists());
    // One byte in the middle of the pre-copied pages.
    let mut data = std::fs::read(&pages).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x20;
    std::fs::write(&pages, &data).unwrap();
    let ns = PidNs::new(Some(&net.dst));
    let daemon = lazy_restore(&ns, &net, &d("2"), "29", &[], None);
    let out = finish(daemon, "lazy-pages");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch") && err.contains("come from the source"), "{err}");
    finish(src, "lazy dump");
    t.reap_killed();
    check_restored(&ns, t.pid, &t);
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(imgs.join("2/lazy-stats.json")).unwrap()).unwrap();
    // At least the damaged page, at most its 4 MiB block.
    let refetched = stats["refetched_bytes"].as_u64().unwrap();
    assert!((4096..=4 << 20).contains(&refetched), "{stats}");
}

/// `ferry migrate` to `ferry receive`, for a big process with a small
/// working set, one dirtying 5% of its memory per second, and one whose
/// layout keeps changing.
#[test]
fn migrate_one_command() {
    let cases: [(&str, &[&str]); 3] =
        [("tp-churn", &["1024", "0"]), ("tp-churn", &["256", "5"]), ("tp-churn", &["128", "5", "layout"])];
    for (prog, args) in cases {
        let w = workdir();
        let net = Net::new();
        let k = key(w.path(), "key", "a shared secret of some length");
        let ns = PidNs::new(Some(&net.dst));
        // The last case leaves the port out on both ends (2727 by default).
        let listen = if args.len() == 3 { net.dst_ip.clone() } else { format!("{}:7000", net.dst_ip) };
        let dst_dir = w.path().join("dst").display().to_string();
        let recv = bg(ns.ferry(&["receive", "--listen", &listen, "-D", &dst_dir, "--auth-key", &k]));
        let mut t = spawn_src(&net, prog, args, &w.path().join("out"));
        t.wait_output("ready", T);
        std::thread::sleep(Duration::from_millis(300));
        let pid = t.pid.to_string();
        let (m, recv) = migrate_to(&net, &pid, &listen, &k, recv);
        let report = String::from_utf8_lossy(&m.stdout);
        assert!(report.contains("round 1:") && report.contains("downtime") && report.contains("post-copy"), "{report}");
        finish(recv, "receive");
        t.reap_killed();
        check_restored(&ns, t.pid, &t);
    }
}

#[test]
fn wrong_key_is_refused_and_the_right_peer_still_served() {
    let w = workdir();
    let net = Net::new();
    let good = key(w.path(), "good", "the right key, long enough");
    let bad = key(w.path(), "bad", "some other key, long enough");
    let ns = PidNs::new(Some(&net.dst));
    let listen = format!("{}:7001", net.dst_ip);
    let dst_dir = w.path().join("dst").display().to_string();
    let recv = bg(ns.ferry(&["receive", "--listen", &listen, "-D", &dst_dir, "--auth-key", &good]));
    let mut t = spawn_src(&net, "tp-churn", &["32", "1"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    std::thread::sleep(Duration::from_millis(300));
    let out = ferry_in_src(&net, &["migrate", "-t", &pid, "--to", &listen, "--auth-key", &bad]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("authentication failed: wrong key") || err.contains("refused us"), "{err}");
    t.assert_running_untraced();
    finish(bg(ferry_in_src(&net, &["migrate", "-t", &pid, "--to", &listen, "--auth-key", &good])), "migrate");
    let r = finish(recv, "receive");
    assert!(String::from_utf8_lossy(&r.stderr).contains("refused peer"), "{}", String::from_utf8_lossy(&r.stderr));
    t.reap_killed();
    check_restored(&ns, t.pid, &t);
}

/// A tp-bigmem of `mib` MiB lazily dumped on the source (port `port`), and
/// restored in a PID namespace of the destination with its lazy-pages
/// daemon (extra flags `daemon`) held at post-copy by `hold`.
struct HeldPostcopy {
    _w: tempfile::TempDir,
    net: Net,
    t: Target,
    src: Child,
    ns: PidNs,
    daemon: Child,
}

fn held_postcopy(mib: &str, port: &str, daemon: &[&str], hold: &str) -> HeldPostcopy {
    let w = workdir();
    let net = Net::new();
    let t = spawn_src(&net, "tp-bigmem", &[mib], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    let imgs = w.path().join("imgs").display().to_string();
    let src = bg(ferry_in_src(
        &net,
        &["dump", "-t", &pid, "-D", &imgs, "--lazy-pages", "--port", port, "--address", &net.src_ip],
    ));
    until("the lazy dump's images", || Path::new(&imgs).join("inventory.json").exists());
    let ns = PidNs::new(Some(&net.dst));
    let daemon = lazy_restore(&ns, &net, &imgs, port, daemon, Some(hold));
    HeldPostcopy { _w: w, net, t, src, ns, daemon }
}

/// The lazy flow with post-copy held up while the link is down for 3 s:
/// the daemon reconnects and the task gets all its pages.
#[test]
fn network_cut_during_postcopy() {
    let HeldPostcopy { _w, net, mut t, src, ns, daemon } = held_postcopy("256", "28", &[], "postcopy:200");
    net.link(false);
    std::thread::sleep(Duration::from_secs(3));
    net.link(true);
    let out = finish(daemon, "lazy-pages");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connection lost"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    finish(src, "lazy dump");
    t.reap_killed();
    check_restored(&ns, t.pid, &t);
}

/// The source dies during post-copy: the destination task is killed with a
/// clear message (its memory cannot be completed), nothing else is harmed.
#[test]
fn source_killed_during_postcopy() {
    let HeldPostcopy { _w, net: _net, mut t, mut src, ns, daemon } =
        held_postcopy("64", "29", &["--reconnect-timeout", "2"], "postcopy:1500");
    let restored = ns.host_pid(t.pid).unwrap();
    // The source goes away for good (and its frozen task with it).
    src.kill().unwrap();
    src.wait().unwrap();
    assert_eq!(t.wait_exit(T), WaitResult::Signaled(libc::SIGKILL));
    let out = daemon.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(&format!("killed task {}", t.pid)) && err.contains("unreachable"), "{err}");
    until("the restored task to be killed", || {
        !pid_exists(restored) || ferry::proc::ProcDir::new(restored).status().is_ok_and(|s| s.state == 'Z')
    });
}

/// Killing `ferry migrate` during pre-copy leaves the task running where it
/// was, its memory intact, and no dirty tracking behind; the staging
/// directory it left is removed by the next `ferry migrate`.
#[test]
fn migrate_killed_during_precopy() {
    let w = workdir();
    let net = Net::new();
    let k = key(w.path(), "key", "a shared secret of some length");
    let ns = PidNs::new(Some(&net.dst));
    let listen = format!("{}:7002", net.dst_ip);
    let dst_dir = w.path().join("dst").display().to_string();
    let mut recv = bg(ns.ferry(&["receive", "--listen", &listen, "-D", &dst_dir, "--auth-key", &k]));
    let mut t = spawn_src(&net, "tp-churn", &["64", "5"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    std::thread::sleep(Duration::from_millis(200));
    let stage = w.path().join("stage");
    let stage_arg = stage.display().to_string();
    let mut c = ferry_in_src(&net, &["-W", &stage_arg, "migrate", "-t", &pid, "--to", &listen, "--auth-key", &k]);
    c.env("FERRY_TEST_HOLD_AT", "round").stderr(Stdio::piped()).stdout(Stdio::null()).stdin(Stdio::null());
    let mut m = c.spawn().unwrap();
    let mut err = std::io::BufReader::new(m.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("test hold at round") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0, "migrate ended early");
    }
    m.kill().unwrap();
    m.wait().unwrap();
    // The holder of the tracking userfaultfd follows its owner.
    until("tracking to be dropped", || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c == "ferry-track\n")
                && std::fs::read_to_string(e.path().join("fdinfo/4"))
                    .is_ok_and(|i| i.contains(&format!("Pid:\t{pid}\n")))
        })
    });
    t.assert_running_untraced();
    let left = || std::fs::read_dir(&stage).unwrap().flatten().filter(|e| e.path().is_dir()).count();
    assert_eq!(left(), 1, "the killed migrate's staging directory");
    // The next migrate (here to nobody: it fails at once) clears it.
    let nobody = format!("{}:1", net.dst_ip);
    let out = ferry_in_src(&net, &["-W", &stage_arg, "migrate", "-t", &pid, "--to", &nobody, "--auth-key", &k])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(left(), 0, "{}", String::from_utf8_lossy(&out.stderr));
    t.assert_running_untraced();
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    let _ = recv.kill();
    let _ = recv.wait();
}

/// Pre-dump and dump send their images to `ferry page-server` on the
/// destination; only metadata stays on the source; the destination
/// restores from what it received.
#[test]
fn page_server_receives_the_chain() {
    let w = workdir();
    let net = Net::new();
    let k = key(w.path(), "key", "a shared secret of some length");
    let mut t = spawn_src(&net, "tp-churn", &["64", "5"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    let ns = PidNs::new(Some(&net.dst));
    let (local, remote) = (w.path().join("local"), w.path().join("remote"));
    for (round, extra) in [("1", vec!["pre-dump"]), ("2", vec!["dump", "--prev-images-dir", "../1"])] {
        if round == "2" {
            // No page server yet: the final dump fails before touching the task.
            let ld = local.join("2").display().to_string();
            let args = ["dump", "--prev-images-dir", "../1", "-t", &pid, "-D", &ld, "--page-server", "--address"];
            let out = ferry_in_src(&net, &args).args([&net.dst_ip, "--port", "30", "--auth-key", &k]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("reaching the page server"), "{err}");
            t.assert_running_untraced();
        }
        let rd = remote.join(round).display().to_string();
        let server =
            bg(ns.ferry(&["page-server", "--address", &net.dst_ip, "--port", "30", "-D", &rd, "--auth-key", &k]));
        let ld = local.join(round).display().to_string();
        let mut args = extra.clone();
        args.extend([
            "-t",
            &pid,
            "-D",
            &ld,
            "--page-server",
            "--address",
            &net.dst_ip,
            "--port",
            "30",
            "--auth-key",
            &k,
        ]);
        finish(bg(ferry_in_src(&net, &args)), "dump to the page server");
        finish(server, "page-server");
        assert!(!local.join(round).join(format!("pages-{pid}.img")).exists(), "page data stayed on the source");
        assert!(remote.join(round).join(format!("pages-{pid}.img")).exists());
        std::thread::sleep(Duration::from_millis(200));
    }
    t.reap_killed();
    let out = ns.ferry(&["restore", "-d", "-D", &remote.join("2").display().to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_restored(&ns, t.pid, &t);
}

/// The lazy-pages daemon crashes during post-copy: its guard kills the
/// restored task (which could otherwise read missing memory as zeros) and
/// says so.
#[test]
fn lazy_daemon_crash_is_reported() {
    let HeldPostcopy { _w, net: _net, mut t, mut src, ns, mut daemon } = held_postcopy("64", "31", &[], "postcopy");
    let restored = ns.host_pid(t.pid).unwrap();
    // nsenter forks for the PID namespace: the daemon is its child.
    let daemon_pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", daemon.id())).unwrap();
    let daemon_pid: i32 = daemon_pid.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: plain kill(2) of the daemon.
    unsafe { libc::kill(daemon_pid, libc::SIGKILL) };
    let mut err = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut err).unwrap();
    let _ = daemon.wait();
    assert!(err.contains("the daemon died before all pages arrived; killed the restored task"), "{err}");
    until("the restored task to be killed", || {
        !pid_exists(restored) || ferry::proc::ProcDir::new(restored).status().is_ok_and(|s| s.state == 'Z')
    });
    let _ = src.kill();
    let _ = src.wait();
    let _ = t.wait_exit(T);
}

/// `ferry migrate --tls` with certificates only (no shared key): an
/// impostor whose certificate another CA signed is refused, its task runs
/// on untouched, and the right peer is still served.
#[test]
fn migrate_over_tls_refuses_a_foreign_certificate() {
    let w = workdir();
    let net = Net::new();
    let good = common::pki::Pki::new(w.path(), "good");
    let evil = common::pki::Pki::new(w.path(), "evil");
    let dst = good.issue("dst", &[&net.dst_ip]).flags();
    let src = good.issue("src", &[]).flags();
    let impostor = common::pki::Identity { ca: good.ca(), ..evil.issue("src", &[]) }.flags();
    let ns = PidNs::new(Some(&net.dst));
    let listen = format!("{}:7002", net.dst_ip);
    let dst_dir = w.path().join("dst").display().to_string();
    let mut args = vec!["receive", "--listen", &listen, "-D", &dst_dir];
    args.extend(dst.iter().map(String::as_str));
    let recv = bg(ns.ferry(&args));
    let mut t = spawn_src(&net, "tp-churn", &["64", "5"], &w.path().join("out"));
    t.wait_output("ready", T);
    std::thread::sleep(Duration::from_millis(300));
    let pid = t.pid.to_string();
    let migrate = |id: &[String]| {
        let mut a = vec!["migrate", "-t", &pid, "--to", &listen];
        a.extend(id.iter().map(String::as_str));
        ferry_in_src(&net, &a)
    };
    let out = migrate(&impostor).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused our certificate"), "{err}");
    t.assert_running_untraced();
    let m = finish(bg(migrate(&src)), "migrate");
    assert!(String::from_utf8_lossy(&m.stdout).contains("downtime"));
    let r = finish(recv, "receive");
    let r_err = String::from_utf8_lossy(&r.stderr);
    assert!(r_err.contains("refused peer") && r_err.contains("not signed by our CA"), "{r_err}");
    t.reap_killed();
    check_restored(&ns, t.pid, &t);
}

/// The CRIU-style lazy flow with `--tls` on both ends (and the dump's
/// generated key inside the TLS connection).
#[test]
fn lazy_pages_over_tls() {
    let w = workdir();
    let net = Net::new();
    let pki = common::pki::Pki::new(w.path(), "good");
    let src_id = pki.issue("src", &[&net.src_ip]).flags();
    let dst_id = pki.issue("dst", &[]).flags();
    let mut t = spawn_src(&net, "tp-churn", &["64", "5"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    let imgs = w.path().join("imgs").display().to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", &imgs, "--lazy-pages", "--port", "28", "--address", &net.src_ip];
    args.extend(src_id.iter().map(String::as_str));
    let src = bg(ferry_in_src(&net, &args));
    until("the lazy dump's images", || w.path().join("imgs/inventory.json").exists());
    let ns = PidNs::new(Some(&net.dst));
    let extra: Vec<&str> = dst_id.iter().map(String::as_str).collect();
    let daemon = lazy_restore(&ns, &net, &imgs, "28", &extra, None);
    finish(daemon, "lazy-pages");
    finish(src, "lazy dump");
    t.reap_killed();
    check_restored(&ns, t.pid, &t);
}

/// The kernel writes a task's rseq area as it resumes, without asking the
/// userfaultfd: a lazy rseq page would be filled with zeros first and the
/// lazy copy refused (a static binary's TLS, stack canary included, shares
/// that page). So a lazy dump copies it eagerly. With nobody coming for the
/// pages, the task is given back.
#[test]
fn lazy_dump_copies_the_rseq_page() {
    let w = workdir();
    let t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), "16"], &w.path().join("out"));
    t.wait_output("ready", T);
    let pid = t.pid.to_string();
    let imgs = w.path().join("imgs");
    let d = imgs.display().to_string();
    let args = ["dump", "-t", &pid, "-D", &d, "--lazy-pages", "--port", "27111", "--address", "127.0.0.1"];
    let src = bg({
        let mut c = Command::new(ferry());
        c.args(args).args(["--lazy-wait", "2"]);
        c
    });
    until("the lazy dump's images", || imgs.join("inventory.json").exists());
    let json = |name: String| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(imgs.join(name)).unwrap()).unwrap()
    };
    let hex = |v: &serde_json::Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let task = json(format!("task-{pid}.json"));
    let rseq = hex(&task["threads"][0]["rseq"]["addr"]);
    assert_ne!(rseq, 0, "tp-bigmem registers rseq (glibc does)");
    // The pagemap is binary; `ferry show` prints it as JSON.
    let shown = ferry_ok(&["show", imgs.to_str().unwrap(), &format!("pagemap-{pid}.img")]);
    let pm: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let page = pm["page_size"].as_u64().unwrap();
    let at = rseq & !(page - 1);
    let flags: Vec<&str> = pm["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| hex(&e["vaddr"]) <= at && at < hex(&e["vaddr"]) + e["nr_pages"].as_u64().unwrap() * page)
        .map(|e| e["flags"].as_str().unwrap())
        .collect();
    assert_eq!(flags, ["present"], "the rseq page at {at:#x}");
    let out = src.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no lazy-pages daemon connected"));
    t.assert_running_untraced();
}

/// Lazy pages run on across areas that touch (read-write and read-only
/// in turn), but one userfaultfd copy must stay inside one area: the
/// kernel answers ENOENT for a copy that crosses. The daemon pushes every
/// page while the task sleeps, copies up to each boundary and on from it,
/// and only then finishes: the task finds every byte (a daemon that took
/// ENOENT for "the task is gone" finished early and left zeros).
#[test]
fn lazy_pages_cross_area_boundaries() {
    let w = workdir();
    let net = Net::new();
    let mut t = spawn_src(&net, "tp-areas", &["6"], &w.path().join("out"));
    t.wait_output("ready", T);
    let imgs = w.path().join("imgs");
    let d = imgs.display().to_string();
    let pid = t.pid.to_string();
    let dump = ["dump", "-t", &pid, "-D", &d, "--lazy-pages", "--port", "27", "--address", &net.src_ip];
    let src = bg(ferry_in_src(&net, &dump));
    until("the lazy dump's images", || imgs.join("inventory.json").exists());
    let dst_imgs = w.path().join("dst");
    assert!(Command::new("cp").arg("-a").arg(&imgs).arg(&dst_imgs).status().unwrap().success());
    let ns = PidNs::new(Some(&net.dst));
    let dd = dst_imgs.display().to_string();
    let daemon = lazy_restore(&ns, &net, &dd, "27", &[], None);
    finish(daemon, "lazy-pages");
    finish(src, "lazy dump");
    t.reap_killed();
    let lazy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst_imgs.join("lazy-stats.json")).unwrap()).unwrap();
    // 6 areas of 1 MiB + 3 pages, all of them lazy, all pushed.
    assert!(lazy["pushed_bytes"].as_u64().unwrap() >= 6 << 20, "{lazy}");
    check_restored(&ns, t.pid, &t);
}

/// Every process of a tree (a root, three children, two threads each,
/// all dirtying memory) goes through DESIGN.md's sequence: two pre-dumps
/// tracked per process, a lazy dump, lazy-pages + restore --lazy-pages.
/// While the daemon holds off serving, the root forks a child that reads
/// lazy memory and exits: the daemon follows the fork and the exit.
#[test]
fn tree_with_threads_migrates_lazily() {
    let w = workdir();
    let net = Net::new();
    let mut t = spawn_src(&net, "tp-fleet", &["4", "16", "5"], &w.path().join("out"));
    t.wait_output("ready", T);
    std::thread::sleep(Duration::from_millis(300));
    let source_tree = tree_pids(t.pid);
    assert_eq!(source_tree.len(), 4);
    let imgs = w.path().join("imgs");
    let src = precopied_lazy_dump(&net, t.pid, &imgs);
    // Every round holds all four processes; the last one's pages are
    // mostly in its parents, and some are left lazy in each process.
    for n in ["1", "2", "3"] {
        let inv: serde_json::Value =
            serde_json::from_slice(&std::fs::read(imgs.join(n).join("inventory.json")).unwrap()).unwrap();
        assert_eq!(inv["tasks"].as_array().unwrap().len(), 4, "round {n}");
    }
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(imgs.join("3/stats.json")).unwrap()).unwrap();
    assert!(stats["pages_in_parent"].as_u64().unwrap() > 0 && stats["pages_lazy"].as_u64().unwrap() > 0, "{stats}");
    let dst_imgs = w.path().join("dst");
    assert!(Command::new("cp").arg("-a").arg(&imgs).arg(&dst_imgs).status().unwrap().success());
    let ns = PidNs::new(Some(&net.dst));
    let dd = dst_imgs.join("3").display().to_string();
    let daemon = lazy_restore(&ns, &net, &dd, "27", &[], Some("postcopy:2000"));
    let root = ns.host_pid(t.pid).expect("the restored root");
    // SAFETY: plain kill(2): the root forks a reader of lazy memory.
    unsafe { libc::kill(root, libc::SIGUSR2) };
    finish(daemon, "lazy-pages");
    finish(src, "lazy dump");
    t.reap_killed();
    reap_all(&source_tree, T);
    let lazy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst_imgs.join("3/lazy-stats.json")).unwrap()).unwrap();
    assert_eq!(lazy["processes"], 4, "{lazy}");
    assert_eq!(lazy["forks"], 1, "{lazy}");
    check_restored(&ns, t.pid, &t);
}

/// `ferry migrate` moves a whole tree with threads, and one with pipes
/// and a FIFO holding bytes in flight.
#[test]
fn migrate_moves_a_tree() {
    let base = workdir();
    let fifo = base.path().join("fifo").display().to_string();
    for (prog, args) in [("tp-fleet", vec!["3", "32", "5"]), ("tp-pipes", vec![fifo.as_str()])] {
        let w = workdir();
        let net = Net::new();
        let k = key(w.path(), "key", "a shared secret of some length");
        let ns = PidNs::new(Some(&net.dst));
        let listen = format!("{}:7003", net.dst_ip);
        let dst_dir = w.path().join("dst").display().to_string();
        let recv = bg(ns.ferry(&["receive", "--listen", &listen, "-D", &dst_dir, "--auth-key", &k]));
        let mut t = spawn_src(&net, prog, &args, &w.path().join("out"));
        t.wait_output("ready", T);
        std::thread::sleep(Duration::from_millis(300));
        let source_tree = tree_pids(t.pid);
        let pid = t.pid.to_string();
        let (m, recv) = migrate_to(&net, &pid, &listen, &k, recv);
        let report = String::from_utf8_lossy(&m.stdout);
        assert!(report.contains("downtime") && report.contains("post-copy"), "{prog}: {report}");
        finish(recv, "receive");
        t.reap_killed();
        reap_all(&source_tree, T);
        for p in &source_tree {
            assert!(ns.host_pid(*p).is_some(), "{prog}: process {p} is not on the destination");
        }
        check_restored(&ns, t.pid, &t);
    }
}
