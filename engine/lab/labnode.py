"""PID 1 of a lab node: runs inside the node's own network, mount and PID namespaces.

It puts the node's private copy of the replicated directory at the shared path (so both nodes
see the same path, as real servers do), starts the node process, then reaps orphans forever.
Killing it kills every process of the node at once: the kernel ends a PID namespace with its
first process, which is exactly a server losing power.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    data, shared_path, *node_command = argv
    # orphans of `tandem lab exec` are re-parented to us; waking on SIGCHLD lets us reap them
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # a rebooted server starts with a clean mount table: nothing leaks from the last boot
    subprocess.run(["mount", "--bind", data, shared_path], check=True)
    # a server's shared memory is its own and does not outlive it: what a killed node's
    # processes left there (PostgreSQL's segments) goes with its mount namespace
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=1777,size=512m", "tandem-lab-shm", "/dev/shm"],
        check=True,
    )
    node = subprocess.Popen(node_command, stdin=subprocess.DEVNULL)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            # nothing left to reap: stay up so `tandem lab exec` still has a node to enter
            signal.pause()
            continue
        if pid == node.pid:
            code = os.waitstatus_to_exitcode(status)
            print(f"tandem lab: node process exited with {code}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
