# inotify with two watches, at watch descriptors 2 and 3 (the first one
# was removed), and the IN_IGNORED that left read away. On SIGUSR1 it makes
# an event in each directory and checks they come under the same wds, and
# that a watch can be removed by its number.
# Usage: inotify_watch.py DIR (with DIR/a, DIR/b and DIR/b/old)
import ctypes, os, signal, struct, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
d = sys.argv[1]
w1 = libc.inotify_add_watch(fd, (d + "/a").encode(), 0x100)   # IN_CREATE
w2 = libc.inotify_add_watch(fd, (d + "/b").encode(), 0x200)   # IN_DELETE
libc.inotify_rm_watch(fd, w1)
w3 = libc.inotify_add_watch(fd, (d + "/a").encode(), 0x100)
os.read(fd, 4096)  # the IN_IGNORED of w1
print("ready", w2, w3, flush=True)
signal.sigwait({signal.SIGUSR1})
open(d + "/a/new", "w").close()
os.unlink(d + "/b/old")
ev = os.read(fd, 4096)
got = []
while ev:
    wd, mask, cookie, ln = struct.unpack("iIII", ev[:16]); got.append((wd, mask)); ev = ev[16 + ln:]
assert got == [(w3, 0x100), (w2, 0x200)], got
if libc.inotify_rm_watch(fd, w2) != 0:
    sys.exit("rm_watch by wd failed")
print("events", got, flush=True)
print("ok", flush=True)
