#!/usr/bin/python3
"""qmp.py SOCK COMMAND [TIMEOUT]: run one QMP command without arguments.

Connects to QEMU's QMP monitor on the Unix socket SOCK (run-guest.sh --qmp),
negotiates capabilities, runs COMMAND (e.g. system_reset) and prints QEMU's
answer. Exit status 0 when QEMU answered "return", 1 on an "error" answer, a
closed socket or TIMEOUT seconds (default 10) without an answer.

Python because nothing else on a stock Debian speaks to a Unix socket from a
script (bash's /dev/tcp is TCP only; socat and netcat are not installed by
default). Only the standard library is used.
"""
import json
import socket
import sys
import time


class QMPError(Exception):
    pass


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[0])
    path, command = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) == 4 else 10.0
    deadline = time.monotonic() + timeout

    def remaining():
        left = deadline - time.monotonic()
        if left <= 0:
            raise QMPError(f"no answer within {timeout:g}s")
        return left

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # QEMU creates the socket at start-up; the caller may be a little early.
    while True:
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(min(0.05, remaining()))
    stream = sock.makefile("rwb")

    def receive():
        """The next message from QEMU: one JSON object per line."""
        sock.settimeout(remaining())
        line = stream.readline()
        if not line:
            raise QMPError("QEMU closed the monitor")
        return json.loads(line)

    def execute(name, ident):
        stream.write(json.dumps({"execute": name, "id": ident}).encode() + b"\n")
        stream.flush()
        while True:
            message = receive()
            # Events (RESET, SHUTDOWN, ...) may come before the answer.
            if message.get("id") != ident:
                continue
            if "error" in message:
                raise QMPError(f"{name}: {message['error']}")
            return message

    try:
        greeting = receive()
        if "QMP" not in greeting:
            raise QMPError(f"not a QMP greeting: {greeting}")
        execute("qmp_capabilities", 1)
        print(json.dumps(execute(command, 2)))
    except (QMPError, OSError, ValueError) as e:
        print(f"qmp.py: {command}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
