#!/usr/bin/env python3
"""Issue 22: the node's memory while strangers upload large bodies without a token.

Starts `hivemesh run` (release build) on a fresh data directory, then opens CLIENTS
concurrent connections, each sending `POST /blobs` with `Content-Length: SIZE` and no
`Authorization`, and streaming SIZE bytes as fast as the node reads them. Samples the node's
resident memory (VmRSS) every 50 ms and prints it before, the peak during, and the answers.

Run: cargo build --release -p hivemesh-node && python3 node/benches/upload_rss.py
     (CLIENTS=8 SIZE=250000000 by default; BIN=path to another binary)
"""
import os
import socket
import subprocess
import tempfile
import threading
import time

BIN = os.environ.get("BIN", "target/release/hivemesh")
CLIENTS = int(os.environ.get("CLIENTS", "8"))
SIZE = int(os.environ.get("SIZE", "250000000"))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def upload(addr, answers):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    head = (f"POST /blobs HTTP/1.1\r\nHost: node\r\nContent-Length: {SIZE}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    s.sendall(head)
    chunk = b"\0" * (1 << 20)
    sent = 0
    s.settimeout(30)
    try:
        while sent < SIZE:
            n = s.send(chunk[: min(len(chunk), SIZE - sent)])
            sent += n
    except OSError:
        pass  # the node closed the connection after answering
    try:
        answer = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as e:
        answer = f"no answer ({e})"
    answers.append((answer, sent))
    s.close()


def main():
    data = tempfile.mkdtemp(prefix="hivemesh-rss-")
    node = subprocess.Popen(
        [BIN, "--data-dir", data, "run", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--http", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        addr_file = os.path.join(data, "api.addr")
        for _ in range(200):
            if os.path.exists(addr_file) and open(addr_file).read().strip():
                break
            time.sleep(0.05)
        addr = open(addr_file).read().strip()
        time.sleep(1.0)  # let the node settle before the baseline sample
        before = rss_mb(node.pid)
        answers, peak, stop = [], [before], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(node.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.time()
        threads = [threading.Thread(target=upload, args=(addr, answers)) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.time() - t0
        stop.set()
        sampler.join()
        after = rss_mb(node.pid)
        print(f"{CLIENTS} unauthenticated uploads of {SIZE / 1e6:.0f} MB each, in {took:.1f} s")
        print(f"node RSS: before {before:.0f} MB, peak {peak[0]:.0f} MB, after {after:.0f} MB")
        for answer, sent in answers:
            print(f"  answer {answer!r} after {sent / 1e6:.1f} MB sent")
    finally:
        node.terminate()
        node.wait(timeout=30)


if __name__ == "__main__":
    main()
