"""What the benchmark scripts beside this file share: the repository's root, the order they
post, the local servers' command-line helpers, and a node process's start and stop."""

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BODY = ('{"customer_id":"5b3f8f3e-8a4e-4a49-9b63-0c8f7f4d2a11","currency":"BRL",'
        '"items":[{"sku":"BOOK-42","quantity":2,"unit_price_cents":1500}]}')


@contextlib.contextmanager
def order_body_file():
    """The path of a file holding BODY, for h2load, which reads a request body from a file."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(BODY)
        f.flush()
        yield f.name


def h2load_posting_orders(url, body_file, *load):
    """The h2load command that POSTs BODY (from `body_file`) to `url` over HTTP/1.1 from one
    thread; `load` says how many and how fast (`-n`, `-c`, `--rps`, `-D`)."""
    return ["h2load", "--h1", "-t", "1", *load, "-d", body_file,
            "-H", "content-type: application/json", url]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def psql(db, sql):
    return run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atqc", sql],
               env={**os.environ, "PGSSLMODE": "disable"}).strip()


def add_vhost(vhost):
    run(["rabbitmqctl", "add_vhost", vhost])
    run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])


def drop_scratch(dbs, vhost):
    """Drops a run's databases and vhost, whatever state the run left them in."""
    for db in dbs:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                        f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'], capture_output=True)
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


def http_ok(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def not_ready(proc, url, timeout):
    """Waits until `url` answers 200. `None` once it does; else why not (the process
    exited, or the time ran out)."""
    started = time.monotonic()
    while not http_ok(url, 0.5):
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        if time.monotonic() - started > timeout:
            return f"not ready after {timeout} s"
        time.sleep(0.005)
    return None


def stop_process(proc, grace):
    """SIGTERM, and SIGKILL if it has not ended within `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
