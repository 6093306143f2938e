"""A redis client that holds one TCP connection and keeps using it.

Usage: redis_held_client.py HOST PORT STOPFILE

Names itself "held", then sends INCR held:n every 10 ms on the same
connection, checking each answer is one more than the last, and prints
the count every 50 answers. Once STOPFILE exists it asks DBSIZE and
CLIENT GETNAME, prints "done COUNT DBSIZE NAME" and exits 0. Any error,
a reset or an answer out of order exits 1 with the reason.
"""
import os
import socket
import sys
import time

host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=60)
f = s.makefile("rb")


def command(*args):
    req = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode()
        req += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(req)
    line = f.readline()
    if not line:
        raise SystemExit("the server closed the connection")
    if line.startswith(b"$"):
        return f.readline().strip().decode()
    return line.strip().decode()


if command("CLIENT", "SETNAME", "held") != "+OK":
    raise SystemExit("CLIENT SETNAME failed")
n = 0
while not os.path.exists(stop):
    got = command("INCR", "held:n")
    if got != ":%d" % (n + 1):
        print("out of order: %s after %d" % (got, n), flush=True)
        sys.exit(1)
    n += 1
    if n % 50 == 0:
        print("count %d" % n, flush=True)
    time.sleep(0.01)
print("done %d %s %s" % (n, command("DBSIZE"), command("CLIENT", "GETNAME")), flush=True)
