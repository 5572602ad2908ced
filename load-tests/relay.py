"""A bare TCP relay for run.sh's download ceiling: LISTEN_PORT -> 127.0.0.1:TARGET_PORT, both
directions, a thread per direction, no framing. MODE `copy` moves 64 KiB at a time through user
space; `splice` moves bytes socket -> pipe -> socket with splice(2), never copying them into the
process. Two in a row measure what any pair of relays (a gateway and an agent) can reach here.

usage: relay.py LISTEN_PORT TARGET_PORT copy|splice
"""
import fcntl
import os
import socket
import sys
import threading

F_SETPIPE_SZ = 1031


def pump(src, dst, mode):
    try:
        if mode == "splice":
            r, w = os.pipe()
            fcntl.fcntl(r, F_SETPIPE_SZ, 1 << 20)
            while True:
                n = os.splice(src.fileno(), w, 1 << 20)
                if n == 0:
                    break
                while n:
                    n -= os.splice(r, dst.fileno(), n)
        else:
            buf = bytearray(1 << 16)
            view = memoryview(buf)
            while True:
                n = src.recv_into(buf)
                if n == 0:
                    break
                dst.sendall(view[:n])
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main():
    listen, target, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen))
    ls.listen(64)
    while True:
        client, _ = ls.accept()
        upstream = socket.create_connection(("127.0.0.1", target))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b, mode), daemon=True).start()


if __name__ == "__main__":
    main()
