# A name server for the test's "internet": every A question is answered
# with 198.51.100.7, every other with no records. Argument: the address
# to listen on.
import socket
import struct
import sys

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, peer = s.recvfrom(512)
    if len(q) < 17:
        continue
    i = 12
    while i < len(q) and q[i]:
        i += q[i] + 1
    end = i + 5
    if end > len(q):
        continue
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    answer = b""
    if qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("198.51.100.7")
    header = q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1 if answer else 0, 0, 0)
    s.sendto(header + q[12:end] + answer, peer)
