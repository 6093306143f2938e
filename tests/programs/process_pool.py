# A multiprocessing.Pool(4) (worker processes fed through pipes, with a
# POSIX semaphore its parent deleted at once, and the pool's own threads)
# next to a thread pool. Both have done work before the checkpoint; on
# SIGUSR1 each computes 200 more checksums, the parent checks every one
# against its own and writes them to RESULTS.
# Usage: process_pool.py RESULTS
import concurrent.futures, hashlib, multiprocessing, os, signal, sys

def work(k):
    h = hashlib.sha256(f"item {k}".encode())
    for _ in range(2000):
        h.update(b"step")
    return k, os.getpid(), h.hexdigest()

def expected(k):
    return work(k)[2]

if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    pool = multiprocessing.Pool(4)
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    warm = pool.map(work, range(16)) + list(threads.map(work, range(16)))
    assert all(d == expected(k) for k, _, d in warm)
    print("ready", len({p for _, p, _ in warm}), flush=True)
    signal.sigwait({signal.SIGUSR1})
    done = pool.map(work, range(200)) + list(threads.map(work, range(200, 400)))
    workers = {p for _, p, _ in done[:200]}
    with open(sys.argv[1], "w") as f:
        for k, pid, digest in done:
            assert digest == expected(k), f"item {k}: wrong checksum"
            f.write(f"{k} {digest}\n")
    pool.close()
    pool.join()
    print("ok", len(done), len(workers), flush=True)
