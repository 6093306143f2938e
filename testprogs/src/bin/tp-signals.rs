//! Signal state a restore must keep: handlers with their flags and masks,
//! an ignored signal, blocked and pending signals (one process-wide, one
//! queued to the thread with a payload), an alternate signal stack, and an
//! interval timer. On SIGUSR1 it checks all of it, then unblocks the
//! pending signals and checks they arrive with their siginfo.
use ferry_testprogs::{check, say};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

static USR2_SEEN: AtomicI32 = AtomicI32::new(0);
static RT_VALUE: AtomicU64 = AtomicU64::new(0);
static RT_CODE: AtomicI32 = AtomicI32::new(0);
static USR1_SEEN: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_usr1(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USR1_SEEN.store(1, Ordering::SeqCst);
}
extern "C" fn on_usr2(_: i32) {
    USR2_SEEN.fetch_add(1, Ordering::SeqCst);
}
extern "C" fn on_rt(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers.
    unsafe {
        RT_CODE.store((*info).si_code, Ordering::SeqCst);
        RT_VALUE.store((*info).si_value().sival_ptr as u64, Ordering::SeqCst);
    }
}

const ALTSTACK: usize = 64 * 1024;

fn main() {
    let rt = libc::SIGRTMIN() + 2;
    // SAFETY: plain signal API calls with valid, initialised structs.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_usr1 as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaddset(&mut act.sa_mask, libc::SIGINT);
        libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut());

        let mut act2: libc::sigaction = std::mem::zeroed();
        act2.sa_sigaction = on_usr2 as *const () as usize;
        act2.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut act2.sa_mask);
        libc::sigaction(libc::SIGUSR2, &act2, std::ptr::null_mut());

        let mut act3: libc::sigaction = std::mem::zeroed();
        act3.sa_sigaction = on_rt as *const () as usize;
        act3.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act3.sa_mask);
        libc::sigaction(rt, &act3, std::ptr::null_mut());

        libc::signal(libc::SIGPIPE, libc::SIG_IGN);

        let stack = Box::leak(vec![0u8; ALTSTACK].into_boxed_slice());
        let ss = libc::stack_t { ss_sp: stack.as_mut_ptr().cast(), ss_flags: 0, ss_size: ALTSTACK };
        libc::sigaltstack(&ss, std::ptr::null_mut());

        let it = libc::itimerval {
            it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
            it_value: libc::timeval { tv_sec: 3600, tv_usec: 0 },
        };
        libc::setitimer(libc::ITIMER_VIRTUAL, &it, std::ptr::null_mut());

        let mut block: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGUSR2);
        libc::sigaddset(&mut block, rt);
        libc::sigaddset(&mut block, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &block, std::ptr::null_mut());

        // Process-wide pending, and a thread-directed one with a payload.
        libc::kill(libc::getpid(), libc::SIGUSR2);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let raw = &mut info as *mut libc::siginfo_t as *mut i32;
        *raw = rt; // si_signo
        *raw.add(2) = libc::SI_QUEUE; // si_code
        *raw.add(4) = libc::getpid(); // si_pid
        *raw.add(5) = libc::getuid() as i32; // si_uid
        *(raw.add(6) as *mut u64) = 4242; // si_value
        libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), libc::gettid(), rt, &info);

        say("ready");
        // Wait for SIGUSR1 with everything else still blocked.
        let mut wait: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut wait);
        libc::sigdelset(&mut wait, libc::SIGUSR1);
        while USR1_SEEN.load(Ordering::SeqCst) == 0 {
            libc::sigsuspend(&wait);
        }

        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut cur);
        check(cur.sa_sigaction == on_usr1 as *const () as usize, 10, "SIGUSR1 handler address changed");
        check(cur.sa_flags & libc::SA_RESTART != 0 && cur.sa_flags & libc::SA_SIGINFO != 0, 11, "SIGUSR1 flags lost");
        check(libc::sigismember(&cur.sa_mask, libc::SIGINT) == 1, 12, "SIGUSR1 handler mask lost");
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut cur);
        check(cur.sa_sigaction == libc::SIG_IGN, 13, "SIGPIPE no longer ignored");
        libc::sigaction(libc::SIGUSR2, std::ptr::null(), &mut cur);
        check(cur.sa_flags & libc::SA_ONSTACK != 0, 14, "SIGUSR2 lost SA_ONSTACK");

        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        check(
            libc::sigismember(&mask, libc::SIGUSR2) == 1 && libc::sigismember(&mask, rt) == 1,
            15,
            "blocked mask lost",
        );
        let mut pend: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pend);
        check(libc::sigismember(&pend, libc::SIGUSR2) == 1, 16, "pending SIGUSR2 lost");
        check(libc::sigismember(&pend, rt) == 1, 17, "pending SIGRTMIN+2 lost");

        let mut old: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut old);
        check(old.ss_sp == stack.as_mut_ptr().cast() && old.ss_size == ALTSTACK, 18, "alternate signal stack lost");

        let mut it: libc::itimerval = std::mem::zeroed();
        libc::getitimer(libc::ITIMER_VIRTUAL, &mut it);
        check(it.it_value.tv_sec > 3000, 19, "ITIMER_VIRTUAL lost");

        libc::sigprocmask(libc::SIG_UNBLOCK, &block, std::ptr::null_mut());
        check(USR2_SEEN.load(Ordering::SeqCst) == 1, 20, "SIGUSR2 not delivered once");
        check(RT_CODE.load(Ordering::SeqCst) == libc::SI_QUEUE, 21, "SIGRTMIN+2 si_code lost");
        check(RT_VALUE.load(Ordering::SeqCst) == 4242, 22, "SIGRTMIN+2 payload lost");
    }
    say("ok");
}
