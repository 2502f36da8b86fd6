# A peer outside the job for the "outside" case: a TCP listener on loopback,
# a unix stream listener and a unix datagram socket in WORK, each greeting
# whoever connects (the datagram one answers a named sender) and holding the
# connection open.  Writes WORK/outside.port
# once ready; runs until killed.
import os
import select
import socket
import sys

work = sys.argv[1]
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("127.0.0.1", 0))
tcp.listen(4)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(work + "/outside.sock")
unix.listen(4)
dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dgram.bind(work + "/outside.dgram")
# The job may run as another user.
os.chmod(work + "/outside.sock", 0o666)
os.chmod(work + "/outside.dgram", 0o666)
with open(work + "/outside.port.tmp", "w") as f:
    f.write(str(tcp.getsockname()[1]))
os.rename(work + "/outside.port.tmp", work + "/outside.port")
held = []
while True:
    ready, _, _ = select.select([tcp, unix, dgram], [], [])
    for s in ready:
        if s is dgram:
            _, addr = s.recvfrom(65536)
            if addr:
                s.sendto(b"reply-from-outside", addr)
            continue
        c, _ = s.accept()
        c.sendall(b"hello-from-outside")
        held.append(c)
