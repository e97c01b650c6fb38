"""Prints the "mark:TAG;" tags of the frames that reach a bridge device
(argv[1]) until one says "end" (or 120 s pass), sorted; see spoof.pl."""
import re
import socket
import sys
import time

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
s.settimeout(1)
print("listening", flush=True)
seen = set()
deadline = time.time() + 120
while time.time() < deadline and "end" not in seen:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    seen.update(m.decode() for m in re.findall(rb"mark:([a-z-]+);", frame))
print(" ".join(sorted(seen)), flush=True)
