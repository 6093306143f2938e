//! Programs nobody here wrote, from Debian, serving TCP clients: each is
//! moved with `ferry migrate` from a source to a destination network
//! namespace while a client in a third namespace stays connected, the
//! service address moved by an action script (a LAN of three "machines":
//! tests/common/ns.rs). The clients check the programs' data through their
//! own protocols.

mod common;

use common::ns::{Lan, Net};
use common::route::Route;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(name)
}

/// The LAN, the route across it, and the action script that moves the
/// service address.
struct Move {
    lan: Lan,
    route: Route,
    script: String,
}

impl Move {
    fn new(w: &Path) -> Move {
        let net = Net::new();
        let lan = Lan::new(&net);
        let script = lan.write_move_script(w);
        let route = Route::across_net(net, &["--action-script", &script]);
        Move { lan, route, script }
    }

    /// Migrate `t`'s tree with its connections.
    fn carry(&self, t: &mut Target, w: &Path) -> common::route::Landed {
        self.route.carry(t, w, &["--tcp-established", "--action-script", &self.script])
    }

    /// Start the held client `script` (tests/programs) on `port` in the
    /// client's namespace, carry `t` while it sends its requests, let it
    /// go on for 100 more answers and stop it; returns where `t` landed
    /// and the client's last line ("done ...").
    fn carry_with_held_client(
        &self,
        t: &mut Target,
        w: &Path,
        script: &str,
        port: &str,
    ) -> (common::route::Landed, String) {
        let stop = w.join("stop");
        let py = program(script);
        let svc = &self.lan.svc_ip;
        let mut held = spawn_command(
            self.lan.in_cli("python3", &[py.to_str().unwrap(), svc, port, stop.to_str().unwrap()]),
            &w.join("held.out"),
        );
        wait_count(&held, 50);
        let landed = self.carry(t, w);
        let before = held.output().lines().filter(|l| l.starts_with("count ")).count() as u64 * 50;
        wait_count(&held, before + 100);
        std::fs::write(&stop, "").unwrap();
        assert_eq!(held.wait_exit(T), WaitResult::Exited(0), "{}", held.output());
        let done = held.output().lines().last().unwrap_or_default().to_string();
        (landed, done)
    }

    /// Run a command in the client's namespace; its stdout.
    fn client(&self, prog: &str, args: &[&str]) -> String {
        let out = self.lan.in_cli(prog, args).output().unwrap_or_else(|e| panic!("{prog}: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Wait until `t`'s output has a line "count N" with N at least `n`.
fn wait_count(t: &Target, n: u64) {
    let start = Instant::now();
    loop {
        let out = t.output();
        let last = out.lines().rev().filter_map(|l| l.strip_prefix("count ")).find_map(|c| c.parse::<u64>().ok());
        if last.is_some_and(|c| c >= n) {
            return;
        }
        assert!(start.elapsed() < T, "the client got stuck before {n}: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// redis-server on TCP with 100,000 keys, and a client that sends a
/// command every 10 ms on one connection before, during and after the
/// move: every answer comes, in order, on the same connection.
#[test]
fn redis_keeps_its_client_through_a_migration() {
    let w = workdir();
    let m = Move::new(w.path());
    let svc = m.lan.svc_ip.clone();
    let dir = w.path().to_str().unwrap();
    let args =
        ["--port", "6379", "--bind", &svc, "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", dir];
    let mut t = spawn_command(m.route.command("redis-server", &args), &w.path().join("log"));
    let start = Instant::now();
    while m.client("redis-cli", &["-h", &svc, "ping"]) != "PONG" {
        assert!(start.elapsed() < T, "redis-server did not start: {}", t.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut load = String::new();
    for n in 0..100_000 {
        load.push_str(&format!("SET key:{n} value:{n}\r\n"));
    }
    let mut pipe = m
        .lan
        .in_cli("redis-cli", &["-h", &svc, "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut pipe.stdin.take().unwrap(), load.as_bytes()).unwrap();
    assert!(pipe.wait().unwrap().success());
    let (landed, done) = m.carry_with_held_client(&mut t, w.path(), "redis_held_client.py", "6379");
    assert!(done.starts_with("done ") && done.ends_with(" :100001 held"), "{done}");
    assert_eq!(m.client("redis-cli", &["-h", &svc, "get", "key:4242"]), "value:4242");
    let info = m.client("redis-cli", &["-h", &svc, "info", "server"]);
    assert!(info.contains(&format!("process_id:{}", t.pid)), "{info}");
    landed.signal(t.pid, libc::SIGKILL);
    landed.wait_gone(t.pid, T);
}

/// sha256sum's digest of a file.
fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A file of `mib` MiB whose every 4 KiB block is stamped with its
/// number (a block lost, repeated or moved changes the digest); its sha256.
fn make_file(path: &Path, mib: u32) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut chunk: Vec<u8> = (0..1u32 << 20).map(|j| (j.wrapping_mul(2654435761) >> 13) as u8).collect();
    for i in 0..mib * 256 {
        let at = (i as usize % 256) * 4096;
        chunk[at..at + 4].copy_from_slice(&i.to_le_bytes());
        if i % 256 == 255 {
            f.write_all(&chunk).unwrap();
        }
    }
    drop(f);
    sha256(path)
}

/// nginx, a master and two workers, serving a 1 GiB file to curl: the
/// download starts before the move and ends after it, whole (sha256).
#[test]
fn nginx_finishes_a_download_through_a_migration() {
    let w = workdir();
    let m = Move::new(w.path());
    let www = w.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let big = www.join("big");
    let want = make_file(&big, 1024);
    let conf = w.path().join("nginx.conf");
    let d = w.path().display();
    std::fs::write(
        &conf,
        format!(
            "user root;\ndaemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on;\n  client_body_temp_path {d}/tmp;\n\
             server {{ listen {}:8080; root {}; }}\n}}\n",
            m.lan.svc_ip,
            www.display()
        ),
    )
    .unwrap();
    let (conf_s, prefix) = (conf.to_str().unwrap(), w.path().to_str().unwrap());
    let err_log = format!("{d}/error.log");
    let mut t =
        spawn_command(m.route.command("nginx", &["-p", prefix, "-e", &err_log, "-c", conf_s]), &w.path().join("log"));
    let url = format!("http://{}:8080/big", m.lan.svc_ip);
    let start = Instant::now();
    while m.client("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{url}-missing")]) != "404" {
        assert!(start.elapsed() < T, "nginx did not start: {}", std::fs::read_to_string(&err_log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tree_pids(t.pid).len(), 3, "a master and two workers");
    let got = w.path().join("got");
    let mut curl = spawn_command(
        m.lan.in_cli("curl", &["-sS", "--limit-rate", "200M", "-o", got.to_str().unwrap(), &url]),
        &w.path().join("curl.out"),
    );
    let start = Instant::now();
    while file_size(&got) < 100 << 20 {
        assert!(start.elapsed() < T, "the download did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let landed = m.carry(&mut t, w.path());
    let at_move = file_size(&got);
    assert!(at_move < 1 << 30, "the download ended before the move");
    assert_eq!(curl.wait_exit(T), WaitResult::Exited(0), "curl: {}", curl.output());
    assert_eq!(file_size(&got), 1 << 30);
    assert_eq!(sha256(&got), want, "the file arrived changed");
    landed.signal(t.pid, libc::SIGKILL);
    landed.wait_gone(t.pid, T);
}

/// memcached with four threads on TCP holding 10,000 items, and a client
/// incrementing a counter every 10 ms on one connection through the move.
#[test]
fn memcached_keeps_its_client_through_a_migration() {
    let w = workdir();
    let m = Move::new(w.path());
    let svc = m.lan.svc_ip.clone();
    let args = ["-t", "4", "-p", "11211", "-U", "0", "-l", &svc, "-u", "root"];
    let mut t = spawn_command(m.route.command("memcached", &args), &w.path().join("log"));
    let load = "import socket,sys\ns=socket.create_connection((sys.argv[1],11211))\nf=s.makefile('rb')\n\
                for n in range(10000):\n    v=b'value:%d'%n\n    s.sendall(b'set key:%d 0 0 %d\\r\\n%s\\r\\n'%(n,len(v),v))\n\
                    assert f.readline()==b'STORED\\r\\n'\nprint('loaded')\n";
    let start = Instant::now();
    while m.client("python3", &["-c", load, &svc]) != "loaded" {
        assert!(start.elapsed() < T, "memcached did not start: {}", t.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (landed, done) = m.carry_with_held_client(&mut t, w.path(), "memcached_held_client.py", "11211");
    assert!(done.ends_with(" VALUE key:4242 0 10 value:4242"), "{done}");
    landed.signal(t.pid, libc::SIGKILL);
    landed.wait_gone(t.pid, T);
}

/// python3 -m http.server sending a 64 MiB file slowly: the download
/// that started before the move ends after it, whole.
#[test]
fn python_http_server_finishes_a_download_through_a_migration() {
    let w = workdir();
    let m = Move::new(w.path());
    let www = w.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let want = make_file(&www.join("file"), 64);
    let mut c = m.route.command("python3", &["-m", "http.server", "--bind", &m.lan.svc_ip, "8000"]);
    c.current_dir(&www);
    let mut t = spawn_command(c, &w.path().join("log"));
    let url = format!("http://{}:8000/file", m.lan.svc_ip);
    let start = Instant::now();
    while m.client("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{url}-missing")]) != "404" {
        assert!(start.elapsed() < T, "http.server did not start: {}", t.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = w.path().join("got");
    let mut curl = spawn_command(
        m.lan.in_cli("curl", &["-sS", "--limit-rate", "16M", "-o", got.to_str().unwrap(), &url]),
        &w.path().join("curl.out"),
    );
    let start = Instant::now();
    while file_size(&got) < 8 << 20 {
        assert!(start.elapsed() < T, "the download did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let landed = m.carry(&mut t, w.path());
    assert!(file_size(&got) < 64 << 20, "the download ended before the move");
    assert_eq!(curl.wait_exit(T), WaitResult::Exited(0), "curl: {}", curl.output());
    assert_eq!(sha256(&got), want, "the file arrived changed");
    landed.signal(t.pid, libc::SIGKILL);
    landed.wait_gone(t.pid, T);
}

/// socat handing each connection to a counter: the client's stream shows
/// every number once, in order, across the move.
#[test]
fn socat_counter_has_no_gap_or_repeat_through_a_migration() {
    let w = workdir();
    let m = Move::new(w.path());
    let script = w.path().join("counter.py");
    std::fs::write(
        &script,
        "import itertools\nimport time\nfor i in itertools.count():\n    print(i)\n    time.sleep(0.002)\n",
    )
    .unwrap();
    // (socat's addresses split at commas: the program is a file.)
    let counter = format!("python3 -u {}", script.display());
    let listen = format!("TCP-LISTEN:9000,bind={},reuseaddr", m.lan.svc_ip);
    let mut t =
        spawn_command(m.route.command("socat", &[&listen, &format!("SYSTEM:{counter}")]), &w.path().join("log"));
    let got = w.path().join("got");
    let to = format!("TCP:{}:9000,retry=100,interval=0.05", m.lan.svc_ip);
    let mut c = m.lan.in_cli("socat", &["-u", &to, &format!("CREATE:{}", got.display())]);
    c.stdin(std::process::Stdio::null());
    let client = spawn_command(c, &w.path().join("client.out"));
    let lines = || std::fs::read_to_string(&got).unwrap_or_default().lines().count();
    let start = Instant::now();
    while lines() < 200 {
        assert!(start.elapsed() < T, "no counter: {}", t.output());
        std::thread::sleep(Duration::from_millis(10));
    }
    let landed = m.carry(&mut t, w.path());
    let at_move = lines();
    let start = Instant::now();
    while lines() < at_move + 500 {
        assert!(start.elapsed() < T, "the counter stopped at the move");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: plain kill(2) of the test's own client.
    unsafe { libc::kill(client.pid, libc::SIGKILL) };
    let text = std::fs::read_to_string(&got).unwrap();
    let mut complete: Vec<&str> = text.split('\n').collect();
    complete.pop(); // a last line cut short
    for (i, l) in complete.iter().enumerate() {
        assert_eq!(l.parse::<usize>().ok(), Some(i), "line {i} of the stream");
    }
    // (The counter goes with the namespace.)
    landed.signal(t.pid, libc::SIGKILL);
    landed.wait_gone(t.pid, T);
}
