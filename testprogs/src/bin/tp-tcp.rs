//! A TCP server with bytes in flight both ways, and a UDP echo socket.
//!
//! ```text
//! tp-tcp ADDR [MIB]   listen on ADDR (port 0: any), print "listening PORT UDPPORT"
//! ```
//!
//! With MIB, a thread keeps writing to MIB MiB of memory (a migration then
//! always leaves pages for post-copy), 64 pages a millisecond, each page
//! visited once per pass; every write first checks that the page still
//! holds what the previous pass wrote there. A lost or stale page turns
//! the server's answer into "bad: memory ...".
//!
//! For each connection accepted: set TCP_NODELAY, SO_KEEPALIVE and
//! TCP_KEEPIDLE 77, write SEND bytes of pattern (seed 1) (SEND is the
//! first line the client sends, e.g. "4194304\n"), then read RECV bytes
//! (the second line) and check them against pattern seed 2, then answer
//! "ok nodelay=N keepidle=N\n" (the options as the socket has them now)
//! and go back to accepting. A client that writes its bytes before reading
//! the server's leaves data in flight both ways for a dump to find.
//!
//! ```text
//! tp-tcp client ADDR SEND RECV
//! ```
//!
//! Connect, ask for SEND bytes and write RECV bytes (seed 2), print
//! "sent", wait for SIGUSR1, then read and check the SEND bytes and print
//! the server's answer line.
//!
//! Between connections, one datagram on the UDP socket (bound to the same
//! address, its own port) is answered with the same bytes, reversed.
use ferry_testprogs::{fill_pattern, say};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;

fn getopt(fd: i32, level: i32, opt: i32) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = 4;
    // SAFETY: an int option into a local.
    unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn setopt(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: an int option from a local.
    assert_eq!(unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), 4) }, 0);
}

fn serve(s: TcpStream) -> std::io::Result<()> {
    let fd = s.as_raw_fd();
    setopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    setopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    setopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77);
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let send: usize = line.trim().parse().unwrap_or(0);
    line.clear();
    r.read_line(&mut line)?;
    let recv: usize = line.trim().parse().unwrap_or(0);
    let mut out = vec![0u8; send];
    fill_pattern(&mut out, 1);
    (&s).write_all(&out)?;
    let mut got = vec![0u8; recv];
    r.read_exact(&mut got)?;
    let mut want = vec![0u8; recv];
    fill_pattern(&mut want, 2);
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        (&s).write_all(format!("bad: received bytes differ from byte {at}\n").as_bytes())?;
        return Ok(());
    }
    if let Some(bad) = MEMORY_FAULT.lock().unwrap().as_ref() {
        return (&s).write_all(format!("bad: memory {bad}\n").as_bytes());
    }
    let answer = format!(
        "ok nodelay={} keepidle={}\n",
        getopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY),
        getopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)
    );
    (&s).write_all(answer.as_bytes())
}

/// What the memory writer found wrong, if anything.
static MEMORY_FAULT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Write number k goes to page (k * 7919) mod pages (7919 is prime, so one
/// pass of `pages` writes visits every page once) and stores k + 1 in the
/// page's first word; the previous pass stored k + 1 - pages there.
/// Volatile: the compiler would drop stores to memory nobody reads.
fn keep_writing(mib: usize) {
    let mut mem = vec![0u64; mib << 17];
    let words_per_page = 4096 / 8;
    let pages = (mem.len() / words_per_page) as u64;
    let mut k = 0u64;
    loop {
        for _ in 0..64 {
            let page = (k.wrapping_mul(7919) % pages) as usize;
            let word: &mut u64 = &mut mem[page * words_per_page];
            // SAFETY: a valid, aligned reference to an initialized u64.
            let held = unsafe { std::ptr::read_volatile(word) };
            let expected = (k + 1).saturating_sub(pages);
            if held != expected {
                let what = format!("page {page} holds write {held}, expected {expected}");
                say(&format!("bad: memory {what}"));
                *MEMORY_FAULT.lock().unwrap() = Some(what);
                return;
            }
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(word, k + 1) };
            k += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn client() {
    let addr = ferry_testprogs::arg(2);
    let send: usize = ferry_testprogs::arg(3).parse().unwrap();
    let recv: usize = ferry_testprogs::arg(4).parse().unwrap();
    let s = TcpStream::connect(&addr).expect("connect");
    (&s).write_all(format!("{send}\n{recv}\n").as_bytes()).unwrap();
    let mut mine = vec![0u8; recv];
    fill_pattern(&mut mine, 2);
    (&s).write_all(&mine).unwrap();
    say("sent");
    ferry_testprogs::wait_for_usr1();
    let mut r = BufReader::new(s);
    let mut got = vec![0u8; send];
    r.read_exact(&mut got).expect("reading the server's bytes");
    let mut want = vec![0u8; send];
    fill_pattern(&mut want, 1);
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        say(&format!("bad: the server's bytes differ from byte {at}"));
        std::process::exit(1);
    }
    let mut line = String::new();
    r.read_line(&mut line).expect("the server's answer");
    say(&format!("server: {}", line.trim()));
}

fn main() {
    if ferry_testprogs::arg(1) == "client" {
        return client();
    }
    let addr = ferry_testprogs::arg(1);
    if let Some(mib) = std::env::args().nth(2).and_then(|m| m.parse::<usize>().ok()) {
        std::thread::spawn(move || keep_writing(mib));
    }
    let l = TcpListener::bind(&addr).expect("bind");
    let local = l.local_addr().unwrap();
    let udp = UdpSocket::bind((local.ip(), 0)).expect("udp bind");
    udp.set_nonblocking(true).unwrap();
    say(&format!("listening {} {}", local.port(), udp.local_addr().unwrap().port()));
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        if let Err(e) = serve(s) {
            say(&format!("connection: {e}"));
        }
        let mut buf = [0u8; 2048];
        if let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut back = buf[..n].to_vec();
            back.reverse();
            let _ = udp.send_to(&back, from);
        }
    }
}
