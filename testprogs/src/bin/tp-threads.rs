//! A process with threads that each hold state of their own and wait in a
//! different way: `compute` (a floating-point loop, a thread-local value,
//! nice 5, its own name, signal mask, alternate stack and a queued signal
//! of its own), `futex` (a condition variable), `sleep` (nanosleep),
//! `poll` (poll with a timeout, resumed after EINTR as event loops do),
//! `batch` (SCHED_BATCH), plus `count`
//! extra workers that spin on a thread-local counter. Each remembers its
//! TID, robust-list head and settings at start. On SIGUSR1 (after a
//! restore) every thread checks that all of it is still so, the main
//! thread joins them all (which needs each thread's clear_child_tid) and
//! prints "ok".
//!
//! Usage: tp-threads [EXTRA_WORKERS]
use ferry_testprogs::{check, say};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);
static STARTED: AtomicU64 = AtomicU64::new(0);
static COMPUTE_TID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

thread_local! {
    static MINE: Cell<u64> = const { Cell::new(0) };
}

fn gettid() -> i32 {
    // SAFETY: plain gettid.
    unsafe { libc::gettid() }
}

fn set_name(name: &str) {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    // SAFETY: PR_SET_NAME with a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, b.as_ptr()) };
}

fn name() -> String {
    let mut b = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe { libc::prctl(libc::PR_GET_NAME, b.as_mut_ptr()) };
    String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(16)]).into_owned()
}

fn robust_head() -> u64 {
    let (mut head, mut len) = (0u64, 0u64);
    // SAFETY: the kernel writes one pointer and one size.
    unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &mut head as *mut u64, &mut len as *mut u64) };
    head
}

fn mask() -> libc::sigset_t {
    // SAFETY: reading this thread's mask into a local set.
    unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut m);
        m
    }
}

fn blocked(sig: i32) -> bool {
    let m = mask();
    // SAFETY: reading a local set.
    unsafe { libc::sigismember(&m, sig) == 1 }
}

/// What every thread remembers at start and checks at the end.
struct Identity {
    tid: i32,
    robust: u64,
    name: String,
    label: &'static str,
}

impl Identity {
    fn take(label: &'static str, name: &str) -> Identity {
        set_name(name);
        MINE.with(|m| m.set(gettid() as u64 * 7 + 3));
        STARTED.fetch_add(1, Ordering::SeqCst);
        Identity { tid: gettid(), robust: robust_head(), name: name.to_string(), label }
    }

    fn verify(&self) {
        let l = self.label;
        check(gettid() == self.tid, 10, &format!("{l}: TID {} became {}", self.tid, gettid()));
        check(robust_head() == self.robust, 11, &format!("{l}: robust list head changed"));
        check(name() == self.name, 12, &format!("{l}: name {:?} became {:?}", self.name, name()));
        let v = MINE.with(|m| m.get());
        check(v == self.tid as u64 * 7 + 3, 13, &format!("{l}: thread-local value {v} is wrong"));
    }
}

fn compute(rt: i32) {
    let id = Identity::take("compute", "tp-compute");
    // nice 5 for this thread only.
    // SAFETY: setpriority on our own TID.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, gettid() as u32, 5) };
    // Block a real-time signal; main queues one for this thread alone.
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, rt);
        libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut());
    }
    COMPUTE_TID.store(gettid(), Ordering::SeqCst);
    let stack = vec![0u8; 64 << 10].leak();
    let ss = libc::stack_t { ss_sp: stack.as_mut_ptr().cast(), ss_flags: 0, ss_size: stack.len() };
    // SAFETY: an alternate stack that lives forever (leaked).
    unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
    let mut x = 1.0f64;
    let mut n = 0u64;
    // Bounded, so the check (which does it all again) stays short even in
    // an emulated guest; then it idles until told to stop.
    while !STOP.load(Ordering::Relaxed) {
        if n < 1 << 24 {
            x = x * 1.000_000_1 + 0.5;
            if x > 1e12 {
                x = x.sqrt();
            }
            n += 1;
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The same n steps again must give the same bits.
    let mut y = 1.0f64;
    for _ in 0..n {
        y = y * 1.000_000_1 + 0.5;
        if y > 1e12 {
            y = y.sqrt();
        }
    }
    check(x.to_bits() == y.to_bits(), 20, &format!("compute: {n} steps gave {x}, recomputed {y}"));
    id.verify();
    // SAFETY: reading our own priority and alternate stack.
    let (prio, cur) = unsafe {
        let mut cur: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut cur);
        (libc::getpriority(libc::PRIO_PROCESS, gettid() as u32), cur)
    };
    check(prio == 5, 21, &format!("compute: nice {prio}, expected 5"));
    check(cur.ss_sp == ss.ss_sp && cur.ss_size == ss.ss_size, 22, "compute: alternate stack lost");
    check(blocked(rt), 23, "compute: its signal mask changed");
    // The signal queued for this thread alone, with its payload.
    // SAFETY: sigtimedwait on a local set with a zero timeout.
    let (sig, value) = unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, rt);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let sig = libc::sigtimedwait(&s, &mut info, &ts);
        (sig, info.si_value().sival_ptr as usize)
    };
    check(sig == rt && value == 77, 24, &format!("compute: queued signal lost (got {sig}, value {value})"));
}

fn futex_waiter(pair: Arc<(Mutex<bool>, Condvar)>) {
    let id = Identity::take("futex", "tp-futex");
    let (lock, cv) = &*pair;
    let mut done = lock.lock().unwrap();
    while !*done {
        done = cv.wait(done).unwrap();
    }
    drop(done);
    id.verify();
}

fn sleeper() {
    let id = Identity::take("sleep", "tp-sleep");
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    check(t.elapsed() >= Duration::from_secs(4), 30, "sleep: woke up early");
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    id.verify();
}

fn poller() {
    let id = Identity::take("poll", "tp-poll");
    let t = Instant::now();
    // A timed wait, as an event loop does it: a restore, like a signal
    // handler, ends the wait with EINTR, and the loop waits for the rest.
    let deadline = t + Duration::from_millis(3000);
    let mut eintr = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).as_millis() as i32;
        // SAFETY: poll on no fds: a timed wait.
        let r = unsafe { libc::poll(std::ptr::null_mut(), 0, left) };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        check(e.raw_os_error() == Some(libc::EINTR) && eintr < 3, 31, &format!("poll: {e}"));
        eintr += 1;
    }
    check(t.elapsed() >= Duration::from_millis(2900), 31, "poll: returned early");
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    id.verify();
}

fn batch() {
    let id = Identity::take("batch", "tp-batch");
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: SCHED_BATCH for this thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &p) };
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: reading our own policy.
    let policy = unsafe { libc::sched_getscheduler(0) };
    check(policy == libc::SCHED_BATCH, 32, &format!("batch: policy {policy}, expected SCHED_BATCH"));
    id.verify();
}

fn worker(k: usize) {
    let id = Identity::take("worker", &format!("tp-worker-{k}"));
    let mut spins = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    id.verify();
}

fn main() {
    let extra: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(2);
    let rt = libc::SIGRTMIN() + 2;
    // Every thread blocks SIGUSR1 (inherited); main waits for it.
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut());
    }
    let main_id = Identity::take("main", "tp-threads");
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let mut handles = Vec::new();
    let compute_t = std::thread::spawn(move || compute(rt));
    let p2 = pair.clone();
    handles.push(std::thread::spawn(move || futex_waiter(p2)));
    handles.push(std::thread::spawn(sleeper));
    handles.push(std::thread::spawn(poller));
    handles.push(std::thread::spawn(batch));
    for k in 0..extra {
        handles.push(std::thread::spawn(move || worker(k)));
    }
    let all = 6 + extra as u64;
    while STARTED.load(Ordering::SeqCst) < all || COMPUTE_TID.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    // A signal for the compute thread alone, with a payload.
    // SAFETY: rt_tgsigqueueinfo to a thread of ours with a filled siginfo.
    unsafe {
        let tid = COMPUTE_TID.load(Ordering::SeqCst);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let raw = &mut info as *mut libc::siginfo_t as *mut i32;
        *raw = rt; // si_signo
        *raw.add(2) = -1; // si_code = SI_QUEUE
        *raw.add(3) = libc::getpid(); // si_pid
        *raw.add(4) = libc::getuid() as i32; // si_uid
        *(raw.add(6) as *mut usize) = 77; // si_value
        libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), tid, rt, &info as *const libc::siginfo_t);
    }
    say(&format!("ready {all} threads"));
    ferry_testprogs::wait_for_usr1();
    STOP.store(true, Ordering::SeqCst);
    {
        let (lock, cv) = &*pair;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    for h in handles {
        check(h.join().is_ok(), 40, "a thread panicked");
    }
    check(compute_t.join().is_ok(), 40, "the compute thread panicked");
    main_id.verify();
    say("ok");
}
