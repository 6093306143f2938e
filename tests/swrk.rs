//! `ferry swrk FD`: CRIU's RPC, spoken the way runc and go-criu speak it
//! (one packed criu_req per SOCK_SEQPACKET packet, one criu_resp back).

mod common;

use common::*;
use ferry::rpc::criu::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use ferry::rpc::service::CRIU_LEVEL;
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use prost::Message;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// `ferry swrk 3` with one end of a fresh socketpair as its fd 3; the
/// other end, to talk on.
fn swrk() -> (OwnedFd, Child) {
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).expect("socketpair");
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(ferry());
    cmd.args(["swrk", "3"]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: dup2 only, between fork and exec (async-signal-safe); the
    // copy at 3 has no close-on-exec flag.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn ferry swrk");
    drop(theirs);
    (ours, child)
}

fn ask(sk: &OwnedFd, req: &CriuReq) -> CriuResp {
    send(sk.as_raw_fd(), &req.encode_to_vec(), MsgFlags::empty()).expect("send");
    answer(sk).expect("an answer")
}

/// The next answer; None when ferry closed its end.
fn answer(sk: &OwnedFd) -> Option<CriuResp> {
    let mut buf = vec![0u8; 1 << 16];
    let n = recv(sk.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
    (n > 0).then(|| CriuResp::decode(&buf[..n]).expect("a criu_resp"))
}

/// tp-bigmem with `mib` MiB, ready; and what it printed by then.
fn bigmem(w: &tempfile::TempDir, mib: &str) -> (Target, String) {
    let t = spawn(&[testprog("tp-bigmem").to_str().unwrap(), mib], &w.path().join("out"));
    let before = t.wait_output("ready", T);
    (t, before)
}

/// A new directory in `w`, and the descriptor a caller would pass.
fn new_dir(w: &tempfile::TempDir, name: &str) -> (std::path::PathBuf, std::fs::File) {
    let dir = w.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    let file = std::fs::File::open(&dir).unwrap();
    (dir, file)
}

/// Reap the dumped tp-bigmem, restore it with `ferry restore` and check.
fn restored_intact(t: &mut Target, img: &std::path::Path, before: &str) {
    t.reap_killed();
    restore_detached(img, &[]);
    wake_and_check(t, before);
}

/// Wake the restored tp-bigmem: it checks its memory and says ok.
fn wake_and_check(t: &mut Target, before: &str) {
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert_eq!(t.output(), format!("{before}ok\n"));
}

fn req(kind: CriuReqType) -> CriuReq {
    CriuReq { r#type: kind as i32, ..Default::default() }
}

/// What `ferry check --feature NAME` says (exit status 0: present).
fn check_says(feature: &str) -> bool {
    Command::new(ferry()).args(["check", "--feature", feature]).output().unwrap().status.success()
}

fn exit_of(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn version_names_ferry_and_the_criu_level_it_serves() {
    let (sk, child) = swrk();
    let r = ask(&sk, &req(CriuReqType::Version));
    assert!(r.success && r.r#type == CriuReqType::Version as i32, "{r:?}");
    let v = r.version.expect("a version");
    assert_eq!((v.major_number, v.minor_number, v.sublevel), (CRIU_LEVEL.0, CRIU_LEVEL.1, Some(CRIU_LEVEL.2)));
    assert_eq!(v.name.as_deref(), Some(concat!("ferry ", env!("CARGO_PKG_VERSION"))));
    // Without keep_open one request is all: ferry closes and exits.
    assert!(answer(&sk).is_none());
    let (ok, err) = exit_of(child);
    assert!(ok, "{err}");
}

#[test]
fn feature_check_probes_what_is_asked_on_one_kept_connection() {
    let (sk, child) = swrk();
    let keep = |kind, features| CriuReq { keep_open: Some(true), features, ..req(kind) };
    assert!(ask(&sk, &keep(CriuReqType::Version, None)).success);
    let only_mem = CriuFeatures { mem_track: Some(true), ..Default::default() };
    let r = ask(&sk, &keep(CriuReqType::FeatureCheck, Some(only_mem)));
    assert!(r.success, "{r:?}");
    let f = r.features.expect("features");
    assert_eq!(f.mem_track, Some(check_says("mem_dirty_track")));
    // Not asked: false, as CRIU answers.
    assert_eq!((f.lazy_pages, f.pidfd_store), (Some(false), Some(false)));
    let all = CriuFeatures { mem_track: Some(true), lazy_pages: Some(true), pidfd_store: Some(true) };
    let f = ask(&sk, &keep(CriuReqType::FeatureCheck, Some(all))).features.expect("features");
    assert_eq!(f.lazy_pages, Some(check_says("uffd") && check_says("uffd-noncoop")));
    // Not implemented, whatever the kernel has.
    assert_eq!(f.pidfd_store, Some(false));
    drop(sk);
    let (ok, err) = exit_of(child);
    assert!(ok, "{err}");
}

#[test]
fn check_answers_as_ferry_check_does() {
    let (sk, child) = swrk();
    let r = ask(&sk, &req(CriuReqType::Check));
    let cli = Command::new(ferry()).arg("check").output().unwrap().status.success();
    assert_eq!(r.success, cli, "{r:?}");
    assert!(r.success || r.cr_errmsg.is_some_and(|m| m.contains("missing")));
    assert!(exit_of(child).0);
}

#[test]
fn requests_not_served_yet_are_refused_with_the_reason() {
    for kind in [CriuReqType::PageServer, CriuReqType::WaitPid, CriuReqType::CpuinfoDump] {
        let (sk, child) = swrk();
        let r = ask(&sk, &req(kind));
        assert!(!r.success && r.r#type == kind as i32, "{r:?}");
        let msg = r.cr_errmsg.unwrap_or_default();
        assert!(msg.contains(&format!("does not serve {} requests yet", kind.as_str_name())), "{msg}");
        assert!(exit_of(child).0);
    }
}

#[test]
fn bad_requests_get_an_answer_and_end_the_session() {
    // keep_open is only for requests that leave nothing behind.
    let (sk, child) = swrk();
    let r = ask(&sk, &CriuReq { keep_open: Some(true), ..req(CriuReqType::Dump) });
    assert!(!r.success && r.cr_errmsg.as_deref().unwrap_or("").contains("keep_open"), "{r:?}");
    let (ok, err) = exit_of(child);
    assert!(!ok && err.contains("keep_open"), "{err}");

    // A packet that is no criu_req.
    let (sk, child) = swrk();
    send(sk.as_raw_fd(), &[0xff, 0xff, 0xff], MsgFlags::empty()).unwrap();
    let r = answer(&sk).expect("an answer");
    assert!(!r.success && r.r#type == CriuReqType::Empty as i32, "{r:?}");
    let (ok, err) = exit_of(child);
    assert!(!ok && err.contains("not a criu_req"), "{err}");

    // An unknown request type.
    let (sk, child) = swrk();
    let r = ask(&sk, &CriuReq { r#type: 99, ..Default::default() });
    assert!(!r.success && r.cr_errmsg.as_deref() == Some("invalid request type 99"), "{r:?}");
    assert!(exit_of(child).0);
}

#[test]
fn the_fd_must_be_a_seqpacket_socket() {
    let out = Command::new(ferry()).args(["swrk", "0"]).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fd 0: not a socket"), "{err}");
    let out = Command::new(ferry()).args(["swrk", "57"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fd 57 is not open"), "{err}");
}

/// DUMP with an images directory given as the caller's descriptor (as
/// runc and go-criu give it); `ferry restore` brings the task back with
/// its memory.
#[test]
fn dump_request_dumps_into_the_callers_directory() {
    let w = workdir();
    let (mut t, before) = bigmem(&w, "64");
    let (img, dir) = new_dir(&w, "img");
    let (sk, child) = swrk();
    let opts = CriuOpts { images_dir_fd: dir.as_raw_fd(), pid: Some(t.pid), ..Default::default() };
    let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Dump) });
    assert!(r.success && r.r#type == CriuReqType::Dump as i32, "{r:?}");
    assert_eq!(r.dump.and_then(|d| d.restored), Some(false));
    let (ok, err) = exit_of(child);
    assert!(ok, "{err}");
    restored_intact(&mut t, &img, &before);
}

/// Options ferry does not implement stop the dump before the task is
/// touched, named as rpc.proto names them; so do a missing pid and a
/// directory that is not one.
#[test]
fn dump_request_refuses_what_it_cannot_do_and_leaves_the_task_alone() {
    let w = workdir();
    let (t, _) = bigmem(&w, "8");
    let (img, dir) = new_dir(&w, "img");
    let file = std::fs::File::open(w.path().join("out")).unwrap();
    let base = CriuOpts { images_dir_fd: dir.as_raw_fd(), pid: Some(t.pid), ..Default::default() };
    let cases = [
        (
            CriuOpts { lsm_profile: Some("x".into()), ..base.clone() },
            "DUMP with criu_opts.lsm_profile: not supported yet",
        ),
        (CriuOpts { log_file: Some("../dump.log".into()), ..base.clone() }, "a file name in the work directory"),
        (CriuOpts { cpu_cap: Some(1), ..base.clone() }, "DUMP with criu_opts.cpu_cap: not supported yet"),
        (CriuOpts { pid: None, ..base.clone() }, "without pid"),
        (CriuOpts { images_dir_fd: file.as_raw_fd(), ..base.clone() }, "not a directory"),
        (CriuOpts { images_dir_fd: 987, ..base.clone() }, "images_dir_fd 987"),
    ];
    for (opts, why) in cases {
        let (sk, child) = swrk();
        let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Dump) });
        assert!(!r.success, "{r:?}");
        let msg = r.cr_errmsg.unwrap_or_default();
        assert!(msg.contains(why), "{msg}");
        assert!(exit_of(child).0);
        t.assert_running_untraced();
    }
    assert!(std::fs::read_dir(&img).unwrap().next().is_none(), "refused dumps left files");
}

/// RESTORE of a dump made with `ferry dump`: the tree runs again, detached,
/// and the answer names its root; the program's memory is intact.
#[test]
fn restore_request_restores_and_names_the_root() {
    let w = workdir();
    let (mut t, before) = bigmem(&w, "64");
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    let dir = std::fs::File::open(&img).unwrap();
    let (sk, child) = swrk();
    let opts = CriuOpts { images_dir_fd: dir.as_raw_fd(), ..Default::default() };
    let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Restore) });
    assert!(r.success && r.r#type == CriuReqType::Restore as i32, "{r:?}");
    assert_eq!(r.restore.map(|r| r.pid), Some(t.pid));
    let (ok, err) = exit_of(child);
    assert!(ok, "{err}");
    wake_and_check(&mut t, &before);
}

/// A restore option ferry does not implement is refused by name, and
/// nothing runs; an inherit_fd whose descriptor was not handed down too.
#[test]
fn restore_request_refuses_what_it_cannot_do() {
    let w = workdir();
    let (mut t, _) = bigmem(&w, "8");
    let img = w.path().join("img");
    dump(t.pid, &img, &[]);
    t.reap_killed();
    let dir = std::fs::File::open(&img).unwrap();
    let base = CriuOpts { images_dir_fd: dir.as_raw_fd(), ..Default::default() };
    let inherit = ferry::rpc::criu::InheritFd { key: "pipe:[1]".into(), fd: 77 };
    let cases = [
        (
            CriuOpts { lsm_profile: Some("x".into()), ..base.clone() },
            "RESTORE with criu_opts.lsm_profile: not supported yet",
        ),
        (CriuOpts { inherit_fd: vec![inherit], ..base.clone() }, "fd 77 was not handed down"),
    ];
    for (opts, why) in cases {
        let (sk, child) = swrk();
        let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Restore) });
        assert!(!r.success && r.restore.is_none(), "{r:?}");
        assert!(r.cr_errmsg.as_deref().unwrap_or("").contains(why), "{r:?}");
        assert!(exit_of(child).0);
        assert!(!pid_exists(t.pid), "a refused restore left task {} running", t.pid);
    }
}

/// Send `req`, answer every notification with `go(script)`; returns the
/// notifications (script, pid) and the final answer.
fn conversation(sk: &OwnedFd, first: &CriuReq, go: impl Fn(&str) -> bool) -> (Vec<(String, Option<i32>)>, CriuResp) {
    send(sk.as_raw_fd(), &first.encode_to_vec(), MsgFlags::empty()).expect("send");
    let mut heard = Vec::new();
    loop {
        let r = answer(sk).expect("an answer");
        if r.r#type != CriuReqType::Notify as i32 {
            return (heard, r);
        }
        let n = r.notify.expect("a notify message");
        let script = n.script.unwrap_or_default();
        let back = CriuReq { notify_success: Some(go(&script)), ..req(CriuReqType::Notify) };
        heard.push((script, n.pid));
        send(sk.as_raw_fd(), &back.encode_to_vec(), MsgFlags::empty()).expect("send");
    }
}

/// With notify_scripts the caller hears each action-script point by
/// CRIU's name and answers before ferry goes on; post-restore names the
/// restored root (runc learns its container's PID there).
#[test]
fn notifications_come_at_criu_points_and_wait_for_the_caller() {
    let w = workdir();
    let (mut t, before) = bigmem(&w, "16");
    let (_img, dir) = new_dir(&w, "img");
    let opts = CriuOpts { images_dir_fd: dir.as_raw_fd(), notify_scripts: Some(true), ..Default::default() };

    let (sk, child) = swrk();
    let dump = CriuReq { opts: Some(CriuOpts { pid: Some(t.pid), ..opts.clone() }), ..req(CriuReqType::Dump) };
    let (heard, r) = conversation(&sk, &dump, |_| true);
    assert!(r.success, "{r:?}");
    let names: Vec<&str> = heard.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["pre-dump", "post-dump"]);
    assert!(exit_of(child).0);
    t.reap_killed();

    let (sk, child) = swrk();
    let (heard, r) = conversation(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Restore) }, |_| true);
    assert!(r.success, "{r:?}");
    let names: Vec<&str> = heard.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["pre-restore", "post-restore", "post-resume"]);
    assert_eq!(heard[1].1, Some(t.pid), "post-restore names the root");
    assert!(exit_of(child).0);
    wake_and_check(&mut t, &before);
}

/// A caller that answers a notification with failure stops the dump; at
/// pre-dump nothing was touched yet.
#[test]
fn a_failed_notification_stops_the_dump() {
    let w = workdir();
    let (t, _) = bigmem(&w, "8");
    let (_img, dir) = new_dir(&w, "img");
    let opts =
        CriuOpts { images_dir_fd: dir.as_raw_fd(), pid: Some(t.pid), notify_scripts: Some(true), ..Default::default() };
    let (sk, child) = swrk();
    let (heard, r) = conversation(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Dump) }, |s| s != "pre-dump");
    assert_eq!(heard.len(), 1);
    assert!(!r.success && r.cr_errmsg.as_deref().unwrap_or("").contains("failed the pre-dump notification"), "{r:?}");
    assert!(exit_of(child).0);
    t.assert_running_untraced();
}

/// CRIU's pre-dump loop on one session: PRE_DUMP (the task runs on,
/// tracked), then DUMP with parent_img; the final images hold only what
/// changed, and `ferry restore` brings the whole memory back.
#[test]
fn pre_dump_then_dump_on_one_session() {
    let w = workdir();
    let (mut t, before) = bigmem(&w, "64");
    let ((_pre, pre_dir), (fin, fin_dir)) = (new_dir(&w, "pre"), new_dir(&w, "final"));
    let (sk, child) = swrk();
    let opts = CriuOpts { images_dir_fd: pre_dir.as_raw_fd(), pid: Some(t.pid), ..Default::default() };
    let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::PreDump) });
    assert!(r.success && r.r#type == CriuReqType::PreDump as i32, "{r:?}");
    t.assert_running_untraced();
    let opts = CriuOpts {
        images_dir_fd: fin_dir.as_raw_fd(),
        pid: Some(t.pid),
        parent_img: Some("../pre".into()),
        track_mem: Some(true),
        ..Default::default()
    };
    let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Dump) });
    assert!(r.success, "{r:?}");
    assert!(exit_of(child).0);
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(fin.join("stats.json")).unwrap()).unwrap();
    assert!(stats["pages_in_parent"].as_u64().unwrap() > 0, "{stats}");
    restored_intact(&mut t, &fin, &before);
}

/// After a PRE_DUMP only PRE_DUMP or DUMP may follow (as in CRIU).
#[test]
fn after_pre_dump_only_dumps_follow() {
    let w = workdir();
    let (t, _) = bigmem(&w, "8");
    let (_pre, pre_dir) = new_dir(&w, "pre");
    let (sk, child) = swrk();
    let opts = CriuOpts { images_dir_fd: pre_dir.as_raw_fd(), pid: Some(t.pid), ..Default::default() };
    assert!(ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::PreDump) }).success);
    let r = ask(&sk, &req(CriuReqType::Version));
    assert!(
        !r.success && r.cr_errmsg.as_deref() == Some("after PRE_DUMP comes PRE_DUMP or DUMP, not VERSION"),
        "{r:?}"
    );
    assert!(!exit_of(child).0);
    t.assert_running_untraced();
}

/// log_level and log_file as runc gives them: a file named in the work
/// directory (work_dir_fd), at CRIU's level 4, with the dump's steps.
#[test]
fn the_dump_logs_into_the_callers_work_directory() {
    let w = workdir();
    let (mut t, _) = bigmem(&w, "8");
    let ((img, img_dir), (work, work_dir)) = (new_dir(&w, "img"), new_dir(&w, "work"));
    let opts = CriuOpts {
        images_dir_fd: img_dir.as_raw_fd(),
        work_dir_fd: Some(work_dir.as_raw_fd()),
        log_file: Some("dump.log".into()),
        log_level: Some(4),
        pid: Some(t.pid),
        ..Default::default()
    };
    let (sk, child) = swrk();
    let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Dump) });
    assert!(r.success, "{r:?}");
    assert!(exit_of(child).0);
    t.reap_killed();
    let log = std::fs::read_to_string(work.join("dump.log")).expect("dump.log in the work directory");
    assert!(log.contains("tree frozen") && log.contains("DEBUG"), "{log}");
    assert!(!img.join("dump.log").exists());
}

/// Called by the name `criu` (the link a package installs), ferry answers
/// `criu --version` in CRIU's format and runs its commands, swrk too.
#[test]
fn called_criu_it_answers_as_criu() {
    let w = workdir();
    let criu = w.path().join("criu");
    std::os::unix::fs::symlink(ferry(), &criu).unwrap();
    for flag in ["--version", "-V"] {
        let out = Command::new(&criu).arg(flag).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let level = format!("{}.{}", CRIU_LEVEL.0, CRIU_LEVEL.1);
        assert_eq!(text, format!("Version: {level}\nGitID: ferry {}\n", env!("CARGO_PKG_VERSION")));
    }
    // `ferry --version` stays ferry's own.
    let out = Command::new(ferry()).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), concat!("ferry ", env!("CARGO_PKG_VERSION"), "\n"));
    // CRIU's feature names.
    let via_criu = Command::new(&criu).args(["check", "--feature", "mem_dirty_track"]).output().unwrap();
    assert_eq!(via_criu.status.success(), check_says("mem_dirty_track"));
}

/// A lazy DUMP tells the caller "status-ready" once its page server
/// listens (runc starts the destination then); a caller that fails it gets
/// its task back.
#[test]
fn lazy_dump_notifies_status_ready() {
    let w = workdir();
    let (t, _) = bigmem(&w, "16");
    let (img, dir) = new_dir(&w, "img");
    let ps = ferry::rpc::criu::CriuPageServerInfo {
        address: Some("127.0.0.1".into()),
        port: Some(27114),
        ..Default::default()
    };
    let opts = CriuOpts {
        images_dir_fd: dir.as_raw_fd(),
        pid: Some(t.pid),
        lazy_pages: Some(true),
        ps: Some(ps),
        notify_scripts: Some(true),
        ..Default::default()
    };
    let (sk, child) = swrk();
    let (heard, r) = conversation(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Dump) }, |s| {
        if s == "status-ready" {
            assert!(std::net::TcpStream::connect("127.0.0.1:27114").is_ok(), "listening at status-ready");
        }
        s != "status-ready"
    });
    let names: Vec<&str> = heard.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["pre-dump", "post-dump", "status-ready"]);
    let msg = r.cr_errmsg.clone().unwrap_or_default();
    assert!(
        !r.success && msg.contains("failed the status-ready notification") && msg.contains("runs on here"),
        "{r:?}"
    );
    assert!(exit_of(child).0);
    t.assert_running_untraced();
    assert!(!img.join("inventory.json").exists(), "the images were left usable");
}

/// A refused request is written to the request's log too: runc shows its
/// log file, not the answer's message.
#[test]
fn a_refusal_is_in_the_log_file() {
    let w = workdir();
    let (t, _) = bigmem(&w, "8");
    let ((_img, img_dir), (work, work_dir)) = (new_dir(&w, "img"), new_dir(&w, "work"));
    let opts = CriuOpts {
        images_dir_fd: img_dir.as_raw_fd(),
        work_dir_fd: Some(work_dir.as_raw_fd()),
        log_file: Some("dump.log".into()),
        log_level: Some(4),
        pid: Some(t.pid),
        lsm_profile: Some("x".into()),
        ..Default::default()
    };
    let (sk, child) = swrk();
    let r = ask(&sk, &CriuReq { opts: Some(opts), ..req(CriuReqType::Dump) });
    assert!(!r.success, "{r:?}");
    assert!(exit_of(child).0);
    let log = std::fs::read_to_string(work.join("dump.log")).expect("dump.log");
    assert!(log.contains("DUMP with criu_opts.lsm_profile: not supported yet"), "{log}");
    t.assert_running_untraced();
}
