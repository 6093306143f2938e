"""A memcached client that holds one TCP connection and keeps using it.

Usage: memcached_held_client.py HOST PORT STOPFILE

Sets held:n to 0, then sends "incr held:n 1" every 10 ms on the same
connection, checking each answer is one more than the last, and prints
the count every 50 answers. Once STOPFILE exists it gets key:4242 and
prints "done COUNT VALUE" and exits 0. Any error, a reset or an answer
out of order exits 1 with the reason.
"""
import os
import socket
import sys
import time

host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=60)
f = s.makefile("rb")


def line(req):
    s.sendall(req)
    got = f.readline()
    if not got:
        raise SystemExit("the server closed the connection")
    return got.strip().decode()


if line(b"set held:n 0 0 1\r\n0\r\n") != "STORED":
    raise SystemExit("set failed")
n = 0
while not os.path.exists(stop):
    got = line(b"incr held:n 1\r\n")
    if got != str(n + 1):
        print("out of order: %s after %d" % (got, n), flush=True)
        sys.exit(1)
    n += 1
    if n % 50 == 0:
        print("count %d" % n, flush=True)
    time.sleep(0.01)
header = line(b"get key:4242\r\n")
value = f.readline().strip().decode()
f.readline()  # END
print("done %d %s %s" % (n, header, value), flush=True)
