//! Programs nobody here wrote, from Debian, checkpointed with their
//! threads and children and checked through their own output or their
//! own clients: Python's thread and process pools, a JVM's executor, a
//! shell pipeline, redis, memcached and PostgreSQL. The pipeline, the
//! process pool and the servers are each carried twice: dumped and
//! restored here, and moved with `ferry migrate` between two network
//! namespaces.

mod common;

use common::route::Route;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(name)
}

/// Eight results, each "k n digest", each digest checked by the program.
fn check_results(path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n, "{text}");
    for (k, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f[0], k.to_string(), "{l}");
        assert!(f[1].parse::<u64>().unwrap() >= 1000, "{l}");
        assert_eq!(f[2].len(), 64, "{l}");
    }
}

#[test]
fn python_thread_pool_keeps_its_work() {
    let w = workdir();
    let res = w.path().join("results");
    let mut t = spawn(
        &["/usr/bin/python3", program("thread_pool.py").to_str().unwrap(), res.to_str().unwrap()],
        &w.path().join("out"),
    );
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump_and_restore(&mut t, &img, &[]);
    let task: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join(format!("task-{}.json", t.pid))).unwrap()).unwrap();
    assert_eq!(task["threads"].as_array().unwrap().len(), 9, "the interpreter and its 8 workers");
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGUSR1);
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
    check_results(&res, 8);
}

#[test]
fn jvm_executor_keeps_its_work() {
    let w = workdir();
    let classes = w.path().join("classes");
    let javac = std::process::Command::new("/usr/bin/javac")
        .args(["-d", classes.to_str().unwrap(), program("Workers.java").to_str().unwrap()])
        .output()
        .expect("javac (default-jdk-headless; `cargo xtask test` installs it)");
    assert!(javac.status.success(), "{}", String::from_utf8_lossy(&javac.stderr));
    let (go, res) = (w.path().join("go"), w.path().join("results"));
    let mut c = std::process::Command::new("/usr/bin/java");
    // No perf data file: it would be one more file shared with tools outside.
    c.args(["-XX:-UsePerfData", "-XX:+UseSerialGC", "-Xmx64m", "-cp", classes.to_str().unwrap(), "Workers"]);
    c.args([go.to_str().unwrap(), res.to_str().unwrap()]);
    let mut t = spawn_command(c, &w.path().join("out"));
    t.wait_output("ready", T);
    let img = w.path().join("img");
    dump_and_restore(&mut t, &img, &[]);
    let task: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join(format!("task-{}.json", t.pid))).unwrap()).unwrap();
    let threads = task["threads"].as_array().unwrap().len();
    assert!(threads > 10, "a JVM has its workers, GC and compiler threads: {threads}");
    std::fs::write(&go, "").unwrap();
    assert_eq!(t.wait_exit(T), WaitResult::Exited(0), "output: {}", t.output());
    assert!(t.output().ends_with("ok\n"), "{}", t.output());
    check_results(&res, 6);
}

/// A shell pipeline, `yes | nl | gzip -1 > out.gz`, checkpointed with its
/// pipes full: after restore it runs on; once `yes` is stopped the others
/// drain and exit, gzip's file is whole (`gzip -t`) and its lines are
/// numbered 1, 2, 3... with none lost or repeated.
#[test]
fn shell_pipeline_loses_no_line() {
    for route in [Route::here(), Route::across()] {
        let w = workdir();
        let out = w.path().join("out.gz");
        let script = format!("yes | nl | gzip -1 > {}", out.display());
        let mut t = spawn_command(route.command("/bin/sh", &["-c", &script]), &w.path().join("sh.out"));
        let start = std::time::Instant::now();
        while tree_pids(t.pid).len() < 4 || std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < 1 << 20 {
            assert!(start.elapsed() < T, "the pipeline did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pids = tree_pids(t.pid);
        let yes = pids
            .iter()
            .copied()
            .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap().trim() == "yes")
            .expect("yes is part of the tree");
        let landed = route.carry(&mut t, w.path(), &[]);
        if route.net.is_none() {
            let objects = std::fs::read(w.path().join("img/objects.json")).unwrap();
            let objects: serde_json::Value = serde_json::from_slice(&objects).unwrap();
            let pipes = objects["files"].as_array().unwrap().iter().filter(|f| f["kind"] == "pipe").count();
            assert_eq!(pipes, 4, "two pipes, two ends each: {objects}");
        }
        let size_at_dump = std::fs::metadata(&out).unwrap().len();
        let start = std::time::Instant::now();
        while std::fs::metadata(&out).unwrap().len() < size_at_dump + (1 << 20) {
            assert!(start.elapsed() < T, "{}: the pipeline does not write on", route.name());
            std::thread::sleep(Duration::from_millis(10));
        }
        landed.signal(yes, libc::SIGTERM);
        landed.wait_gone(t.pid, T);
        let test = std::process::Command::new("gzip").arg("-t").arg(&out).output().unwrap();
        assert!(test.status.success(), "gzip -t: {}", String::from_utf8_lossy(&test.stderr));
        let text = std::process::Command::new("zcat").arg(&out).output().unwrap().stdout;
        let mut n = 0u64;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            n += 1;
            let line = String::from_utf8_lossy(line);
            let mut f = line.split('\t');
            assert_eq!(f.next().map(str::trim), Some(n.to_string().as_str()), "line {n}: {line:?}");
            assert_eq!(f.next(), Some("y"), "line {n}: {line:?}");
        }
        assert!(n > 100_000, "only {n} lines");
    }
}

/// Python's multiprocessing.Pool(4) (worker processes, pipes, a POSIX
/// semaphore deleted while mapped, the pool's threads) beside a thread
/// pool: after restore both compute 200 more checksums each, all right.
#[test]
fn python_process_pool_keeps_working() {
    for route in [Route::here(), Route::across()] {
        let w = workdir();
        let res = w.path().join("results");
        let script = program("process_pool.py");
        let c = route.command("/usr/bin/python3", &[script.to_str().unwrap(), res.to_str().unwrap()]);
        let mut t = spawn_command(c, &w.path().join("out"));
        t.wait_output("ready", T);
        let pids = tree_pids(t.pid);
        assert!(pids.len() >= 5, "the parent and 4 workers: {pids:?}");
        let landed = route.carry(&mut t, w.path(), &[]);
        landed.signal(t.pid, libc::SIGUSR1);
        landed.wait_gone(t.pid, T);
        let last = t.output().lines().last().unwrap_or_default().to_string();
        assert!(last.starts_with("ok 400 "), "{}: {}", route.name(), t.output());
        let text = std::fs::read_to_string(&res).unwrap();
        assert_eq!(text.lines().count(), 400);
        for (k, l) in text.lines().enumerate() {
            assert!(l.starts_with(&format!("{k} ")) && l.len() == format!("{k} ").len() + 64, "{l}");
        }
    }
}

fn redis_cli(sock: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .expect("redis-cli (redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// redis-server listening on a unix socket only, with 100,000 keys: after
/// restore its own client finds every key and the server takes writes.
/// A client connection held open across the dump (its end outside the
/// tree) is refused by name without --ext-unix-sk; with it, the server's
/// end comes back as closed by the client, and redis drops it.
#[test]
fn redis_keeps_its_keys() {
    for route in [Route::here(), Route::across()] {
        let w = workdir();
        let sock = w.path().join("redis.sock");
        let (sock_s, dir) = (sock.to_str().unwrap(), w.path().to_str().unwrap());
        let args = ["--port", "0", "--unixsocket", sock_s, "--save", "", "--appendonly", "no", "--dir", dir];
        let mut t = spawn_command(route.command("redis-server", &args), &w.path().join("log"));
        let start = std::time::Instant::now();
        while redis_cli(&sock, &["ping"]) != "PONG" {
            assert!(start.elapsed() < T, "redis-server did not start: {}", t.output());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut load = String::new();
        for n in 0..100_000 {
            load.push_str(&format!("SET key:{n} value:{n}\r\n"));
        }
        let mut pipe = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(&sock)
            .arg("--pipe")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut pipe.stdin.take().unwrap(), load.as_bytes()).unwrap();
        assert!(pipe.wait().unwrap().success());
        assert_eq!(redis_cli(&sock, &["dbsize"]), "100000");
        let mut held = held_redis_client(&sock, "held");
        let clients = || redis_cli(&sock, &["client", "list"]).matches("name=held ").count();
        assert_eq!(clients(), 1);
        if route.net.is_none() {
            let img = w.path().join("img");
            let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
            assert!(err.contains("outside the tree; --ext-unix-sk lets it go"), "{err}");
            t.assert_running_untraced();
            assert_eq!(redis_cli(&sock, &["dbsize"]), "100000");
            std::fs::remove_dir_all(&img).ok();
        }
        let landed = route.carry(&mut t, w.path(), &["--ext-unix-sk"]);
        let what = route.name();
        if route.net.is_none() {
            let shown = ferry_ok(&["show", w.path().join("img").to_str().unwrap()]).stdout;
            let shown = String::from_utf8_lossy(&shown).into_owned();
            assert!(shown.contains(&format!("accepted on {}, peer socket:[", sock.display())), "{shown}");
            assert!(shown.contains("outside the tree"), "{shown}");
        }
        // The held client's server end was closed with the dumped server.
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut held, &mut rest).expect("the held connection ends");
        assert_eq!(redis_cli(&sock, &["dbsize"]), "100000", "{what}");
        let start = std::time::Instant::now();
        while clients() != 0 {
            assert!(start.elapsed() < T, "{what}: redis kept the hung-up client");
            std::thread::sleep(Duration::from_millis(20));
        }
        for n in [0, 4242, 99_999] {
            assert_eq!(redis_cli(&sock, &["get", &format!("key:{n}")]), format!("value:{n}"));
        }
        assert_eq!(redis_cli(&sock, &["set", "after", "restore"]), "OK");
        assert_eq!(redis_cli(&sock, &["dbsize"]), "100001");
        assert_eq!(
            redis_cli(&sock, &["info", "server"]).lines().find(|l| l.starts_with("process_id:")),
            Some(&*format!("process_id:{}", t.pid)),
            "{what}"
        );
        landed.signal(t.pid, libc::SIGKILL);
        landed.wait_gone(t.pid, T);
    }
}

/// A connection to redis that names itself and stays open.
fn held_redis_client(sock: &Path, name: &str) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(sock).expect("redis's socket");
    c.write_all(format!("CLIENT SETNAME {name}\r\n").as_bytes()).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut ok = [0u8; 5];
    c.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    c
}

/// Send memcached's text protocol over its unix socket; the reply once it
/// holds `until` and ends a line.
fn memcached(sock: &Path, request: &[u8], until: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("memcached's socket");
    s.write_all(request).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !(String::from_utf8_lossy(&got).contains(until) && got.ends_with(b"\r\n")) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "memcached hung up: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// memcached -t 4 on a unix socket (libevent: an epoll, a pipe and an
/// eventfd per worker thread) with 10,000 items: after restore its own
/// protocol reads them back, with the same PID and threads, and it stores
/// more.
#[test]
fn memcached_keeps_its_items() {
    for route in [Route::here(), Route::across()] {
        let w = workdir();
        let sock = w.path().join("memcached.sock");
        let args = ["-u", "root", "-t", "4", "-m", "64", "-s", sock.to_str().unwrap()];
        let mut t = spawn_command(route.command("memcached", &args), &w.path().join("log"));
        let start = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(start.elapsed() < T, "memcached did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // In batches: a request larger than the socket buffers while the
        // replies are not read would stall both sides.
        let mut stored = 0;
        for batch in 0..10 {
            let mut load = Vec::new();
            for n in batch * 1000..(batch + 1) * 1000 {
                let v = format!("value-{n}");
                load.extend_from_slice(format!("set key{n} 0 0 {}\r\n{v}\r\n", v.len()).as_bytes());
            }
            load.extend_from_slice(b"version\r\n");
            stored += memcached(&sock, &load, "VERSION ").matches("STORED").count();
        }
        assert_eq!(stored, 10_000);
        let landed = route.carry(&mut t, w.path(), &[]);
        let got = memcached(&sock, b"get key0 key5000 key9999\r\n", "END\r\n");
        assert_eq!(
            got,
            "VALUE key0 0 7\r\nvalue-0\r\nVALUE key5000 0 10\r\nvalue-5000\r\nVALUE key9999 0 10\r\nvalue-9999\r\nEND\r\n",
            "{}",
            route.name()
        );
        let stats = memcached(&sock, b"stats\r\n", "END\r\n");
        for want in [format!("STAT pid {}\r\n", t.pid), "STAT threads 4\r\n".into(), "STAT curr_items 10000\r\n".into()]
        {
            assert!(stats.contains(&want), "{want:?} not in {stats}");
        }
        assert_eq!(memcached(&sock, b"set after 0 0 7\r\nrestore\r\n", "\r\n"), "STORED\r\n");
        landed.signal(t.pid, libc::SIGKILL);
        landed.wait_gone(t.pid, T);
    }
}

/// A PostgreSQL cluster of Debian's postgresql package in a directory of
/// its own: unix socket only, run as the postgres user.
struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    fn init(dir: &Path) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("postgresql (Debian's package)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("postgres").exists())
            .max()
            .expect("a PostgreSQL server under /usr/lib/postgresql");
        let pg = Postgres { dir: dir.to_path_buf(), bin };
        let status = std::process::Command::new("chown").args(["postgres:postgres"]).arg(dir).status().unwrap();
        assert!(status.success());
        let data = pg.data();
        let initdb = pg.bin.join("initdb").display().to_string();
        let out = pg.as_postgres(&initdb, &["-D", &data, "-A", "trust", "-N"]).output().unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let conf = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\nshared_buffers = 16MB\n",
            dir.display()
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("data/postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// `prog args` as the postgres user (setpriv execs: same PID).
    fn as_postgres(&self, prog: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups", prog]).args(args);
        c
    }

    /// The postmaster, started where `route` begins.
    fn start(&self, route: &common::route::Route, out: &Path) -> Target {
        let postgres = self.bin.join("postgres").display().to_string();
        let data = self.data();
        let args = ["--reuid=postgres", "--regid=postgres", "--clear-groups", &postgres, "-D", &data];
        let t = spawn_command(route.command("setpriv", &args), out);
        let start = std::time::Instant::now();
        while self.try_sql("select 1").as_deref() != Some("1") {
            assert!(start.elapsed() < T, "postgres did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    fn try_sql(&self, sql: &str) -> Option<String> {
        let dir = self.dir.display().to_string();
        let out = self.as_postgres("psql", &["-h", &dir, "-d", "postgres", "-XAtc", sql]).output().unwrap();
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|| panic!("psql: {sql} failed"))
    }

    /// A psql session that stays connected (its stdin kept open).
    fn session(&self, name: &str) -> std::process::Child {
        let dir = self.dir.display().to_string();
        let mut c = self.as_postgres("psql", &["-h", &dir, "-d", "postgres", "-X"]);
        c.env("PGAPPNAME", name).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        c.stderr(std::process::Stdio::null());
        let child = c.spawn().unwrap();
        let start = std::time::Instant::now();
        let q = format!("select count(*) from pg_stat_activity where application_name = '{name}'");
        while self.sql(&q) != "1" {
            assert!(start.elapsed() < T, "the psql session did not connect");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }
}

const PG_SUM: &str = "select count(*) || ' ' || sum(hashtext(v)) from t";
const PG_CHECKPOINTER: &str = "select pid from pg_stat_activity where backend_type = 'checkpointer'";

/// PostgreSQL (postmaster, checkpointer, background writer, walwriter,
/// autovacuum and replication launchers: shared anonymous memory, a
/// System V segment, pipes, signalfd and epoll in each) with a table of
/// 100,000 rows and a psql session held open: refused with the hint
/// without --ext-unix-sk; with it, carried by dump and restore and by
/// `ferry migrate` into other namespaces. Its own client then finds the
/// same rows and checksum, the same background processes, the held
/// session gone (its client was outside), and takes an INSERT; a fast
/// shutdown ends the whole tree cleanly.
#[test]
fn postgresql_keeps_its_rows() {
    for route in [Route::here(), Route::across()] {
        let w = workdir();
        // The cluster in a directory of the postgres user's, the images
        // beside it in root's: a restore refuses images whose directory
        // another user could swap (the trust model).
        let cluster = w.path().join("pg");
        std::fs::create_dir(&cluster).unwrap();
        let pg = Postgres::init(&cluster);
        let mut t = pg.start(&route, &w.path().join("log"));
        pg.sql("create table t as select g as id, md5(g::text) as v from generate_series(1, 100000) g");
        let sum = pg.sql(PG_SUM);
        assert!(sum.starts_with("100000 "), "{sum}");
        let checkpointer = pg.sql(PG_CHECKPOINTER);
        let mut held = pg.session("held");
        if route.net.is_none() {
            let img = w.path().join("refused");
            let err = ferry_err(&["dump", "-t", &t.pid.to_string(), "-D", img.to_str().unwrap()]);
            assert!(err.contains("outside the tree; --ext-unix-sk lets it go"), "{err}");
            t.assert_running_untraced();
        }
        let landed = route.carry(&mut t, w.path(), &["--ext-unix-sk"]);
        let what = route.name();
        assert_eq!(pg.sql(PG_SUM), sum, "{what}");
        assert_eq!(pg.sql(PG_CHECKPOINTER), checkpointer, "{what}");
        let start = std::time::Instant::now();
        while pg.sql("select count(*) from pg_stat_activity where application_name = 'held'") != "0" {
            assert!(start.elapsed() < T, "{what}: the held session's backend stayed");
            std::thread::sleep(Duration::from_millis(20));
        }
        pg.sql("insert into t values (100001, md5('after'))");
        assert!(pg.sql(PG_SUM).starts_with("100001 "), "{what}");
        let _ = held.kill();
        let _ = held.wait();
        landed.signal(t.pid, libc::SIGINT);
        landed.wait_gone(t.pid, T);
        let log = std::fs::read_to_string(w.path().join("log")).unwrap_or_default();
        assert!(!log.contains("PANIC"), "{what}: {log}");
    }
}
