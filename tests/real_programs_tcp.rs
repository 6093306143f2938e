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
        let script = w.join("move-address.sh");
        std::fs::write(&script, lan.move_address_script()).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let script = script.to_str().unwrap().to_string();
        let route = Route::across_net(net, &["--action-script", &script]);
        Move { lan, route, script }
    }

    /// Migrate `t`'s tree with its connections.
    fn carry(&self, t: &mut Target, w: &Path) -> common::route::Landed {
        self.route.carry(t, w, &["--tcp-established", "--action-script", &self.script])
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
        let last = out.lines().filter_map(|l| l.strip_prefix("count ")).filter_map(|c| c.parse::<u64>().ok()).last();
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
    let stop = w.path().join("stop");
    let py = program("redis_held_client.py");
    let mut held = spawn_command(
        m.lan.in_cli("python3", &[py.to_str().unwrap(), &svc, "6379", stop.to_str().unwrap()]),
        &w.path().join("held.out"),
    );
    wait_count(&held, 50);
    let landed = m.carry(&mut t, w.path());
    let before = held.output().lines().filter(|l| l.starts_with("count ")).count() as u64 * 50;
    wait_count(&held, before + 100);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(held.wait_exit(T), WaitResult::Exited(0), "{}", held.output());
    let done = held.output().lines().last().unwrap_or_default().to_string();
    assert!(done.starts_with("done ") && done.ends_with(" :100001 held"), "{}", held.output());
    assert_eq!(m.client("redis-cli", &["-h", &svc, "get", "key:4242"]), "value:4242");
    let info = m.client("redis-cli", &["-h", &svc, "info", "server"]);
    assert!(info.contains(&format!("process_id:{}", t.pid)), "{info}");
    landed.signal(t.pid, libc::SIGKILL);
    landed.wait_gone(t.pid, T);
}
