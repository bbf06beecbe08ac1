"""Servers and processes for the fleet tests: redis-server instances (single or
cluster) on free loopback ports, listeners run through the real command line,
and a TCP proxy the test can cut.  Everything is stopped by pid."""

import os
import shutil
import signal
from signal import SIGCONT, SIGKILL, SIGTERM
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers.children import free_port, wait_until

REDIS_SERVER = shutil.which("redis-server")


def need_redis():
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")


def redis_ping(port, timeout=0.5):
    """Is a server answering on port (a NOAUTH error counts as answering)?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
            return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
    except OSError:
        return False


class RedisServer:
    """One redis-server on 127.0.0.1, no persistence unless asked for."""

    def __init__(self, workdir, port=None, extra=()):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc = None
        self.log = os.path.join(self.dir, f"redis-{self.port}.log")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        need_redis()
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--dbfilename", f"dump-{self.port}.rdb",
                "--protected-mode", "no", "--logfile", self.log, *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start; see {self.log}")
            time.sleep(0.02)
        return self

    def stop(self, keep_data=False):
        """SIGKILL it (after a SAVE if keep_data); the dump is removed unless kept."""
        if self.proc is None:
            return
        if keep_data and self.proc.poll() is None:
            # SHUTDOWN SAVE: every write acknowledged before it is in the dump
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"SHUTDOWN SAVE\r\n")
                try:
                    s.recv(64)
                except OSError:
                    pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        if not keep_data:
            try:
                os.unlink(os.path.join(self.dir, f"dump-{self.port}.rdb"))
            except FileNotFoundError:
                pass

    def restart(self, keep_data):
        self.stop(keep_data=keep_data)
        return self.start()


class Listener:
    """``apccache fleet listen`` as a child process."""

    def __init__(self, segment, url, namespace, logdir, max_lag=0.05, extra=(), env=None):
        self.args = [sys.executable, "-m", "apccache", "fleet", "listen", segment, "--redis", url,
                     "--namespace", namespace, "--max-lag", str(max_lag), "--log-level", "debug", *extra]
        self.logpath = os.path.join(str(logdir), f"listener-{segment}-{time.monotonic_ns()}.log")
        self.env = env
        self.proc = None

    def start(self):
        with open(self.logpath, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=self.env)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=SIGTERM, timeout=5):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, SIGCONT)
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, SIGKILL)
                self.proc.wait()
        rc, self.proc = self.proc.returncode, None
        return rc

    def log(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()


def wait_trusted(fc, timeout=10.0, trusted=True):
    """Wait until fc's host trusts (or distrusts) its near copies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fc.status()["trusted"] == trusted:
            return
        time.sleep(0.005)
    raise AssertionError(f"the host did not become {'trusted' if trusted else 'untrusted'} "
                         f"within {timeout} s: {fc.status()}")


def wait_for(pred, timeout=5.0, what="condition"):
    """wait_until, polling every 5 ms (near copies change within milliseconds)."""
    return wait_until(pred, timeout, what, interval=0.005)


class Proxy:
    """A TCP proxy on loopback in front of a Redis port.  ``cut()`` makes it
    stop forwarding in both directions without closing anything (a silent
    network partition); ``heal()`` forwards again; ``close()`` ends it."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            self.socks += [c, s]
            threading.Thread(target=self._pump, args=(c, s), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c), daemon=True).start()

    def _pump(self, src, dst):
        while not self.closed:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            while not self.flowing.is_set() and not self.closed:
                self.flowing.wait(0.05)  # hold it: the peer sees silence
            if self.closed:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.flowing.clear()

    def heal(self):
        self.flowing.set()

    def close(self):
        self.closed = True
        self.flowing.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


class RedisClusterServers:
    """A Redis Cluster of `n` primaries (no replicas) on loopback."""

    def __init__(self, workdir, n=3):
        self.dir = str(workdir)
        self.nodes = [RedisServer(os.path.join(self.dir, f"n{i}"), extra=[
            "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()),
            "--cluster-config-file", "nodes.conf"]) for i in range(n)]

    @property
    def url(self):
        return self.nodes[0].url

    def start(self):
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        import redis

        deadline = time.monotonic() + 30
        for node in self.nodes:
            r = redis.Redis(port=node.port)
            while r.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not become ok")
                time.sleep(0.05)
            r.close()
        return self

    def node_id(self, i):
        import redis

        r = redis.Redis(port=self.nodes[i].port)
        try:
            return r.execute_command("CLUSTER", "MYID").decode()
        finally:
            r.close()

    def reshard(self, src, dst, slots):
        """Move `slots` slots (with their keys) from node src to node dst."""
        cli = shutil.which("redis-cli")
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run([cli, "--cluster", "reshard", f"127.0.0.1:{self.nodes[0].port}",
                                "--cluster-from", self.node_id(src), "--cluster-to", self.node_id(dst),
                                "--cluster-slots", str(slots), "--cluster-yes"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, text=True)
            if r.returncode == 0:
                return
            # gossip has not converged yet (e.g. just after a node joined): try again
            if "don't agree" not in r.stdout or time.monotonic() > deadline:
                raise RuntimeError(f"reshard failed: {r.stdout[-2000:]}")
            time.sleep(0.2)

    def stop(self):
        for node in self.nodes:
            node.stop()


def wait_synced(fc, timeout=5.0):
    """Wait until fc's listener has confirmed a sync that began after now:
    every write acknowledged before this call has then been handled on that
    host (so a copy filled afterwards is not invalidated by a late push)."""
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        s = fc.status()
        if s["heartbeat_age"] is not None and time.monotonic() - s["heartbeat_age"] > since:
            return
        time.sleep(0.002)
    raise AssertionError(f"no sync confirmed within {timeout} s: {fc.status()}")


def add_cluster_node(cluster):
    """Start one more node and join it to the cluster as a slot-less primary."""
    node = RedisServer(os.path.join(cluster.dir, f"n{len(cluster.nodes)}"), extra=[
        "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()),
        "--cluster-config-file", "nodes.conf"]).start()
    cluster.nodes.append(node)
    cli = shutil.which("redis-cli")
    subprocess.run([cli, "--cluster", "add-node", f"127.0.0.1:{node.port}", f"127.0.0.1:{cluster.nodes[0].port}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    import redis

    new_id = cluster.node_id(len(cluster.nodes) - 1)
    deadline = time.monotonic() + 30
    for other in cluster.nodes:   # every node must know the new one (gossip)
        r = redis.Redis(port=other.port)
        try:
            while new_id not in r.execute_command("CLUSTER", "NODES").decode():
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not learn of its new node")
                time.sleep(0.05)
            while r.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster is not ok after its new node joined")
                time.sleep(0.05)
        finally:
            r.close()
    return len(cluster.nodes) - 1
