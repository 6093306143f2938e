# A pool of 8 threads (concurrent.futures), each hashing on and on; on
# SIGUSR1 each stops, and its digest must equal one recomputed from
# scratch for the same count: the state it carried across a checkpoint.
# Usage: thread_pool.py RESULTS
import concurrent.futures, hashlib, signal, sys, threading
out = sys.argv[1]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
stop = threading.Event()
progress = {}
def work(k):
    h = hashlib.sha256(f"seed {k}".encode())
    n = 0
    while not stop.is_set():
        h.update(f"{k}:{n}".encode())
        n += 1
        progress[k] = n
    return k, n, h.hexdigest()
pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
futures = [pool.submit(work, k) for k in range(8)]
while len(progress) < 8 or min(progress.values()) < 1000:
    threading.Event().wait(0.01)
print("ready", threading.active_count(), flush=True)
signal.sigwait({signal.SIGUSR1})
stop.set()
with open(out, "w") as f:
    for fut in futures:
        k, n, digest = fut.result()
        h = hashlib.sha256(f"seed {k}".encode())
        for i in range(n):
            h.update(f"{k}:{i}".encode())
        assert h.hexdigest() == digest, f"worker {k}: state lost"
        f.write(f"{k} {n} {digest}\n")
print("ok", flush=True)
