//! TCP and UDP sockets: listeners, established connections with bytes in
//! flight both ways (TCP repair), the network lock, action scripts.

mod common;
use common::*;
use std::time::Duration;

/// A server and a client of tp-tcp, the client's bytes written and the
/// server's not yet read: data in flight both ways.
struct Pair {
    server: Target,
    client: Target,
    port: u16,
    udp_port: u16,
}

fn start(w: &std::path::Path, addr: &str, send: usize, recv: usize) -> Pair {
    let server = spawn(&[testprog("tp-tcp").to_str().unwrap(), addr], &w.join("server.out"));
    let out = server.wait_output("listening", Duration::from_secs(10));
    let mut f = out.split_whitespace().skip(1);
    let port: u16 = f.next().unwrap().parse().unwrap();
    let udp_port: u16 = f.next().unwrap().parse().unwrap();
    // A dual-stack listener ([::]) is reached over IPv4 (a v4-mapped peer).
    let host = if addr.starts_with("[::1]") { "[::1]" } else { "127.0.0.1" };
    let to = format!("{host}:{port}");
    let (s, r) = (send.to_string(), recv.to_string());
    let client = spawn(&[testprog("tp-tcp").to_str().unwrap(), "client", &to, &s, &r], &w.join("client.out"));
    client.wait_output("sent", Duration::from_secs(10));
    // Let the server fill its send queue and block.
    std::thread::sleep(Duration::from_millis(300));
    Pair { server, client, port, udp_port }
}

impl Pair {
    /// Wake the client: it reads and checks the server's bytes, then the
    /// server's answer (the server checked the client's).
    fn finish(&mut self) -> String {
        self.client.signal(libc::SIGUSR1);
        let r = self.client.wait_exit(Duration::from_secs(30));
        let out = self.client.output();
        assert_eq!(r, WaitResult::Exited(0), "client: {out}\nserver: {}", self.server.output());
        out
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the test's own targets.
        unsafe {
            libc::kill(self.server.pid, libc::SIGKILL);
            libc::kill(self.client.pid, libc::SIGKILL);
        }
    }
}

fn nft_tables() -> String {
    let out = std::process::Command::new("nft").args(["list", "tables"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn connection_kept(addr: &str, lock: &str) {
    let w = workdir();
    // 4 MiB from the server: more than the socket buffers hold, so part is
    // unacknowledged or unsent; 200 KiB from the client sit unread.
    let mut p = start(w.path(), addr, 32 << 20, 200 << 10);
    let img = w.path().join("img");
    dump(p.server.pid, &img, &["--tcp-established", "--network-lock", lock]);
    let shown = show_image(img.to_str().unwrap());
    assert!(shown.contains("TCP listener on"), "{shown}");
    assert!(shown.contains("TCP connection"), "{shown}");
    assert!(shown.contains("bytes to read"), "{shown}");
    assert!(!pid_exists(p.server.pid) || p.server.status().is_some_and(|s| s.state == 'Z'));
    p.server.reap_killed();
    if lock == "nftables" {
        assert!(nft_tables().contains(&format!("ferry-lock-{}", p.server.pid)), "the lock stays until the restore");
    }
    restore_detached(&img, &[]);
    let name = format!("ferry-lock-{}", p.server.pid);
    assert!(!nft_tables().contains(&name), "the restore removes the lock: {}", nft_tables());
    let out = p.finish();
    assert!(out.contains("server: ok nodelay=1 keepidle=77"), "{out}");

    // The listener still accepts, and the UDP socket still answers.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let host = if addr.starts_with("[::1]") { "::1" } else { "127.0.0.1" };
    if host == "127.0.0.1" {
        udp.send_to(b"abc", (host, p.udp_port)).unwrap();
    }
    let to = format!("{}:{}", if host == "::1" { "[::1]" } else { host }, p.port);
    let mut c2 =
        spawn(&[testprog("tp-tcp").to_str().unwrap(), "client", &to, "1000", "1000"], &w.path().join("client2.out"));
    c2.wait_output("sent", Duration::from_secs(10));
    c2.signal(libc::SIGUSR1);
    assert_eq!(c2.wait_exit(Duration::from_secs(30)), WaitResult::Exited(0), "{}", c2.output());
    if host == "127.0.0.1" {
        let mut buf = [0u8; 16];
        let (n, _) = udp.recv_from(&mut buf).expect("the restored UDP socket answers");
        assert_eq!(&buf[..n], b"cba");
    }
}

#[test]
fn established_connection_keeps_bytes_in_flight_both_ways() {
    connection_kept("127.0.0.1:0", "nftables");
}

#[test]
fn ipv6_connection_with_the_iptables_lock() {
    connection_kept("[::1]:0", "iptables");
}

#[test]
fn dual_stack_listener_with_an_ipv4_client() {
    connection_kept("[::]:0", "nftables");
}

/// Bytes the server sent that the client had not acknowledged (its pure
/// ACKs dropped for a while) are kept as sent and unacknowledged, and the
/// restored socket sends them again: the client gets every byte once.
#[test]
fn unacknowledged_data_is_sent_again() {
    let w = workdir();
    let server = spawn(&[testprog("tp-tcp").to_str().unwrap(), "127.0.0.1:0"], &w.path().join("server.out"));
    let out = server.wait_output("listening", Duration::from_secs(10));
    let port: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let to = format!("127.0.0.1:{port}");
    // The client's bare acknowledgements (neither SYN nor PSH: its data
    // carries PSH) never reach the server, from before it connects: what
    // the server sends gets through and stays unacknowledged.
    let table = format!("ferry-test-acks-{}", server.pid);
    let rules = format!(
        "table inet {table} {{\n chain input {{\n type filter hook input priority -300;\n \
         ip daddr 127.0.0.1 tcp dport {port} tcp flags & (syn | psh) == 0 drop\n }}\n}}\n"
    );
    let nft = |args: &[&str], input: Option<&str>| {
        let mut c = std::process::Command::new("nft");
        c.args(args).stdin(std::process::Stdio::piped());
        let mut ch = c.spawn().unwrap();
        if let Some(i) = input {
            std::io::Write::write_all(&mut ch.stdin.take().unwrap(), i.as_bytes()).unwrap();
        }
        drop(ch.stdin.take());
        assert!(ch.wait().unwrap().success(), "nft {args:?}");
    };
    nft(&["-f", "-"], Some(&rules));
    let tp = testprog("tp-tcp");
    let mut client = spawn(&[tp.to_str().unwrap(), "client", &to, "33554432", "1000"], &w.path().join("client.out"));
    client.wait_output("sent", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let img = w.path().join("img");
    let mut server = server;
    dump(server.pid, &img, &["--tcp-established"]);
    server.reap_killed();
    nft(&["delete", "table", "inet", &table], None);
    let shown = show_image(img.to_str().unwrap());
    let line = shown.lines().find(|l| l.contains("TCP connection")).unwrap_or_default().to_string();
    // "..., N to send (M not sent yet), ...": N - M were sent, unacknowledged.
    let num = |after: &str| -> u64 {
        let rest = &line[line.find(after).unwrap_or_else(|| panic!("{line}")) + after.len()..];
        rest.split_whitespace().next().unwrap().trim_start_matches('(').parse().unwrap()
    };
    let (outq, notsent) = (num("bytes to read, "), num(" to send "));
    assert!(outq > notsent, "nothing sent and unacknowledged: {line}");
    restore_detached(&img, &[]);
    client.signal(libc::SIGUSR1);
    assert_eq!(client.wait_exit(Duration::from_secs(60)), WaitResult::Exited(0), "{}", client.output());
    assert!(client.output().contains("server: ok"), "{}", client.output());
    // SAFETY: plain kill(2) of the restored server.
    unsafe { libc::kill(server.pid, libc::SIGKILL) };
}

#[test]
fn established_connection_refused_without_the_flag() {
    let w = workdir();
    let mut p = start(w.path(), "127.0.0.1:0", 32 << 20, 1000);
    let pid = p.server.pid.to_string();
    let err = ferry_err(&["dump", "-t", &pid, "-D", w.path().join("img").to_str().unwrap()]);
    assert!(err.contains("TCP connection 127.0.0.1:"), "{err}");
    assert!(err.contains("dump with --tcp-established"), "{err}");
    p.server.assert_running_untraced();
    let out = p.finish();
    assert!(out.contains("server: ok"), "{out}");
}

#[test]
fn failing_action_script_leaves_the_task_and_its_connections() {
    let w = workdir();
    let mut p = start(w.path(), "127.0.0.1:0", 32 << 20, 1000);
    let log = w.path().join("actions.log");
    let script = w.path().join("script.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID\" >> {}\n[ \"$CRTOOLS_SCRIPT_ACTION\" != post-dump ]\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pid = p.server.pid.to_string();
    let img = w.path().join("img");
    let err = ferry_err(&[
        "dump",
        "-t",
        &pid,
        "-D",
        img.to_str().unwrap(),
        "--tcp-established",
        "--action-script",
        script.to_str().unwrap(),
    ]);
    assert!(err.contains("failed at post-dump"), "{err}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log, format!("pre-dump {pid}\nnetwork-lock {pid}\npost-dump {pid}\n"));
    p.server.assert_running_untraced();
    assert!(!nft_tables().contains(&format!("ferry-lock-{pid}")), "a failed dump removes its lock");
    let out = p.finish();
    assert!(out.contains("server: ok nodelay=1"), "{out}");
}

/// One RESP command on a held connection; the reply's first line.
fn resp(c: &mut std::net::TcpStream, args: &[&str]) -> String {
    use std::io::{BufRead, Write};
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    c.write_all(req.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("a reply");
    if let Some(len) = line.strip_prefix('$') {
        // A bulk string: its bytes are on the next line.
        if len.trim() != "-1" {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
    }
    line.trim().to_string()
}

/// redis-server on TCP with 100,000 keys and a client connection held
/// open across dump and restore: the same connection goes on answering,
/// under the same name, and the server keeps every key.
#[test]
fn redis_keeps_a_tcp_client_connected() {
    let w = workdir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let dir = w.path().to_str().unwrap();
    let args = ["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir];
    let mut c = std::process::Command::new("redis-server");
    c.args(args);
    let mut t = spawn_command(c, &w.path().join("log"));
    let addr = format!("127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let mut held = loop {
        if let Ok(s) = std::net::TcpStream::connect(&addr) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "redis-server did not start: {}", t.output());
        std::thread::sleep(Duration::from_millis(20));
    };
    held.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(resp(&mut held, &["CLIENT", "SETNAME", "held"]), "+OK");
    let mut load = String::new();
    for n in 0..100_000 {
        load.push_str(&format!("SET key:{n} value:{n}\r\n"));
    }
    let mut pipe = std::process::Command::new("redis-cli")
        .args(["-p", &port, "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli (redis-tools)");
    std::io::Write::write_all(&mut pipe.stdin.take().unwrap(), load.as_bytes()).unwrap();
    assert!(pipe.wait().unwrap().success());
    assert_eq!(resp(&mut held, &["DBSIZE"]), ":100000");

    let img = w.path().join("img");
    dump(t.pid, &img, &["--tcp-established"]);
    t.reap_killed();
    // Asked while the server is away: the lock holds the request, TCP
    // sends it again once the restored server is there.
    let mut asking = held.try_clone().unwrap();
    let during = std::thread::spawn(move || resp(&mut asking, &["GET", "key:4242"]));
    std::thread::sleep(Duration::from_millis(200));
    restore_detached(&img, &[]);
    assert_eq!(during.join().unwrap(), "value:4242");
    assert_eq!(resp(&mut held, &["CLIENT", "GETNAME"]), "held");
    assert_eq!(resp(&mut held, &["SET", "after", "restore"]), "+OK");
    assert_eq!(resp(&mut held, &["DBSIZE"]), ":100001");
    let info = std::process::Command::new("redis-cli").args(["-p", &port, "info", "server"]).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains(&format!("process_id:{}", t.pid)), "{info}");
    // SAFETY: plain kill(2) of the restored server.
    unsafe { libc::kill(t.pid, libc::SIGKILL) };
}

/// --tcp-close: the restored server finds its connection aborted, and the
/// client hears nothing from the restore (its connection is still open
/// on its side until it talks).
#[test]
fn tcp_close_restores_connections_aborted() {
    let w = workdir();
    let mut p = start(w.path(), "127.0.0.1:0", 32 << 20, 1000);
    let img = w.path().join("img");
    dump(p.server.pid, &img, &["--tcp-established"]);
    p.server.reap_killed();
    restore_detached(&img, &["--tcp-close"]);
    // The server's blocked write fails; it goes back to accepting.
    p.server.wait_output("connection:", Duration::from_secs(30));
    let out = p.server.output();
    assert!(out.contains("connection abort"), "{out}");
}

/// ferry killed in the middle of a dump, its lock in place: the guard
/// removes the lock, the task runs on and its connection carries on.
#[test]
fn ferry_killed_mid_dump_leaves_no_lock() {
    let w = workdir();
    let mut p = start(w.path(), "127.0.0.1:0", 32 << 20, 1000);
    let pid = p.server.pid.to_string();
    let img = w.path().join("img");
    let mut f = ferry_held_at(&["dump", "-t", &pid, "-D", img.to_str().unwrap(), "--tcp-established"], "write");
    let name = format!("ferry-lock-{pid}");
    assert!(nft_tables().contains(&name), "locked while dumping: {}", nft_tables());
    f.kill().unwrap();
    f.wait().unwrap();
    let start = std::time::Instant::now();
    while nft_tables().contains(&name) {
        assert!(start.elapsed() < Duration::from_secs(10), "the lock outlived ferry: {}", nft_tables());
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = p.finish();
    assert!(out.contains("server: ok nodelay=1"), "{out}");
}

/// A TCP server moved with `ferry migrate` from the source to the
/// destination namespace while a client in a third one holds a connection
/// with bytes in flight both ways; an action script moves the service
/// address. The client reads every byte and gets the server's answer on
/// the same connection, then connects again to the moved listener.
#[test]
fn tcp_server_migrates_with_its_client_connected() {
    use common::ns::{Lan, Net};
    use common::route::Route;
    let w = workdir();
    let net = Net::new();
    let lan = Lan::new(&net);
    let script = lan.write_move_script(w.path());
    let s = script.as_str();
    let route = Route::across_net(net, &["--action-script", s]);
    let tp = testprog("tp-tcp");
    let tp = tp.to_str().unwrap();
    let mut server = spawn_command(route.command(tp, &[&format!("{}:0", lan.svc_ip)]), &w.path().join("server.out"));
    let out = server.wait_output("listening", Duration::from_secs(10));
    let port: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let to = format!("{}:{port}", lan.svc_ip);
    let client = spawn_command(lan.in_cli(tp, &["client", &to, "33554432", "204800"]), &w.path().join("client.out"));
    client.wait_output("sent", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let landed = route.carry(&mut server, w.path(), &["--tcp-established", "--action-script", s]);
    client.signal(libc::SIGUSR1);
    let mut client = client;
    let r = client.wait_exit(Duration::from_secs(60));
    assert_eq!(r, WaitResult::Exited(0), "client: {}", client.output());
    assert!(client.output().contains("server: ok nodelay=1 keepidle=77"), "{}", client.output());
    let mut again = spawn_command(lan.in_cli(tp, &["client", &to, "1000", "1000"]), &w.path().join("again.out"));
    again.wait_output("sent", Duration::from_secs(10));
    again.signal(libc::SIGUSR1);
    assert_eq!(again.wait_exit(Duration::from_secs(30)), WaitResult::Exited(0), "{}", again.output());
    landed.signal(server.pid, libc::SIGKILL);
    landed.wait_gone(server.pid, Duration::from_secs(30));
}

/// A tp-tcp server on a LAN's service address with a client in the
/// client namespace (bytes in flight both ways), being moved by `ferry
/// migrate` to a `ferry receive` that holds its post-copy at `hold`.
struct HeldMove {
    _w: tempfile::TempDir,
    net: common::ns::Net,
    _lan: common::ns::Lan,
    ns: common::ns::PidNs,
    server: Target,
    client: Target,
    recv: std::process::Child,
    migrate: KillOnDrop,
}

fn held_move(hold: &str, port: u16) -> HeldMove {
    use common::ns::{Lan, Net, PidNs};
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let w = workdir();
    let net = Net::new();
    let lan = Lan::new(&net);
    let script = lan.write_move_script(w.path());
    let s = script.as_str();
    let tp = testprog("tp-tcp");
    let tp = tp.to_str().unwrap();
    // 64 MiB kept changing: post-copy has pages to fetch.
    let server = spawn_command(net.in_src(tp, &[&format!("{}:0", lan.svc_ip), "64"]), &w.path().join("server.out"));
    let out = server.wait_output("listening", Duration::from_secs(10));
    let svc_port: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let to = format!("{}:{svc_port}", lan.svc_ip);
    let client = spawn_command(lan.in_cli(tp, &["client", &to, "33554432", "204800"]), &w.path().join("client.out"));
    client.wait_output("sent", Duration::from_secs(10));
    let ns = PidNs::new(Some(&net.dst));
    let key = w.path().join("key");
    std::fs::write(&key, "a shared secret of some length").unwrap();
    let key = key.to_str().unwrap();
    let listen = format!("{}:{port}", net.dst_ip);
    let dst = w.path().join("dst");
    let mut recv = ns
        .ferry(&["receive", "--listen", &listen, "-D", dst.to_str().unwrap(), "--auth-key", key, "--action-script", s])
        .env("FERRY_TEST_HOLD_AT", hold)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(recv.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("listening on"), "receive: {first}");
    let pid = server.pid.to_string();
    let args = ["migrate", "-t", &pid, "--to", &listen, "--auth-key", key, "--tcp-established", "--action-script", s];
    let migrate = KillOnDrop(Some(
        net.in_src(ferry().to_str().unwrap(), &args)
            .args(["--reconnect-timeout", "3"])
            // The server runs (and changes pages) for a while between the
            // last round and the freeze: post-copy always has pages to
            // fetch, even when the server was starved of CPU before.
            .env("FERRY_TEST_HOLD_AT", "precopy-done:300")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Until the destination holds post-copy (the restored server runs).
    let mut err = std::io::BufReader::new(recv.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("test hold at postcopy") {
        if err.read_line(&mut seen).unwrap() == 0 {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(recv.stdout.as_mut().unwrap(), &mut rest);
            panic!("receive ended before post-copy: {seen}{rest}");
        }
    }
    let mut log = std::fs::File::create(w.path().join("receive.err")).unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut log));
    HeldMove { _w: w, net, _lan: lan, ns, server, client, recv, migrate }
}

/// The link between source and destination goes down for 3 s during
/// post-copy: the moved server and its client's connection both survive.
#[test]
fn tcp_connection_survives_a_network_cut_during_postcopy() {
    let HeldMove { _w, net, _lan, ns, mut server, mut client, recv, migrate } = held_move("postcopy:500", 7031);
    net.link(false);
    std::thread::sleep(Duration::from_secs(3));
    net.link(true);
    let m = migrate.wait();
    let err = std::fs::read_to_string(_w.path().join("receive.err")).unwrap_or_default();
    assert!(m.status.success(), "migrate: {}\nreceive: {err}", String::from_utf8_lossy(&m.stderr));
    let r = recv.wait_with_output().unwrap();
    let err = std::fs::read_to_string(_w.path().join("receive.err")).unwrap_or_default();
    assert!(r.status.success(), "receive: {}{err}", String::from_utf8_lossy(&r.stdout));
    server.reap_killed();
    client.signal(libc::SIGUSR1);
    assert_eq!(client.wait_exit(Duration::from_secs(60)), WaitResult::Exited(0), "{}", client.output());
    assert!(client.output().contains("server: ok nodelay=1"), "{}", client.output());
    drop(ns);
}

/// The destination dies during post-copy (its ferry and its restored
/// server killed): the client sees its connection end instead of a server
/// that neither answers nor goes, and the source does not come back.
#[test]
fn destination_dying_in_postcopy_ends_the_client_connection() {
    let HeldMove { _w, net: _net, _lan, ns, mut server, mut client, mut recv, migrate } = held_move("postcopy", 7032);
    // SAFETY: plain kill(2) of receive's own process group.
    unsafe { libc::kill(-(recv.id() as i32), libc::SIGKILL) };
    let _ = recv.wait();
    drop(ns);
    let m = migrate.wait();
    assert!(!m.status.success(), "migrate: {}", String::from_utf8_lossy(&m.stdout));
    server.reap_killed();
    assert!(!pid_exists(server.pid), "the source's server came back");
    client.signal(libc::SIGUSR1);
    let r = client.wait_exit(Duration::from_secs(60));
    assert_ne!(r, WaitResult::Exited(0), "{}", client.output());
    assert!(!client.output().contains("server: ok"), "{}", client.output());
}

/// CRIU's command sequence with a connection: `dump --lazy-pages
/// --tcp-established` on the source, the images copied, `lazy-pages` and
/// `restore --lazy-pages` on the destination, the action script moving
/// the service address; the client keeps its connection and every byte.
#[test]
fn criu_sequence_moves_a_tcp_server_lazily() {
    use common::ns::{Lan, Net, PidNs};
    let w = workdir();
    let net = Net::new();
    let lan = Lan::new(&net);
    let script = lan.write_move_script(w.path());
    let tp = testprog("tp-tcp");
    let tp = tp.to_str().unwrap();
    let mut server = spawn_command(net.in_src(tp, &[&format!("{}:0", lan.svc_ip), "64"]), &w.path().join("server.out"));
    let out = server.wait_output("listening", Duration::from_secs(10));
    let port: u16 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let to = format!("{}:{port}", lan.svc_ip);
    let mut client =
        spawn_command(lan.in_cli(tp, &["client", &to, "33554432", "204800"]), &w.path().join("client.out"));
    client.wait_output("sent", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let imgs = w.path().join("imgs");
    let (pid, i) = (server.pid.to_string(), imgs.to_str().unwrap());
    let dump_args = ["dump", "-t", &pid, "-D", i, "--tcp-established", "--action-script", &script, "--lazy-pages"];
    // Killed first if the test fails: the frozen server it traces would
    // hold the test's wait for it.
    let src = KillOnDrop(Some(
        net.in_src(ferry().to_str().unwrap(), &dump_args)
            .args(["--port", "37", "--address", &net.src_ip])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let start = std::time::Instant::now();
    // (The key for the lazy-pages daemon comes last.)
    while !imgs.join("inventory.json").exists() || !imgs.join("lazy-pages.key").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the lazy dump wrote no images");
        std::thread::sleep(Duration::from_millis(10));
    }
    let dst = w.path().join("dst");
    assert!(std::process::Command::new("cp").arg("-a").arg(&imgs).arg(&dst).status().unwrap().success());
    let ns = PidNs::new(Some(&net.dst));
    let d = dst.to_str().unwrap();
    let daemon_log = w.path().join("lazy-pages.log");
    let daemon = ns
        .ferry(&["lazy-pages", "--page-server", "--address", &net.src_ip, "--port", "37", "-D", d])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&daemon_log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !dst.join("lazy-pages.sock").exists() {
        let log = std::fs::read_to_string(&daemon_log).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(30), "lazy-pages made no socket: {log}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = ns.ferry(&["restore", "--lazy-pages", "-D", d, "-d", "--action-script", &script]).output().unwrap();
    assert!(r.status.success(), "restore: {}", String::from_utf8_lossy(&r.stderr));
    let out = daemon.wait_with_output().unwrap();
    let log = std::fs::read_to_string(&daemon_log).unwrap_or_default();
    assert!(out.status.success(), "lazy-pages: {log}");
    let out = src.wait();
    assert!(out.status.success(), "lazy dump: {}", String::from_utf8_lossy(&out.stderr));
    server.reap_killed();
    client.signal(libc::SIGUSR1);
    assert_eq!(client.wait_exit(Duration::from_secs(60)), WaitResult::Exited(0), "{}", client.output());
    assert!(client.output().contains("server: ok nodelay=1 keepidle=77"), "{}", client.output());
    drop(ns);
}

/// A ferry that traces the test's targets: killed (and waited for) when
/// dropped, unless waited for first.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
