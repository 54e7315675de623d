# Stand-in for OpenSSH's `ssh`, used by tests/test_lite_devices.py (written to a tmp folder as an
# executable named `ssh`, first on PATH). It skips the options, takes the target, and runs the
# remote command line on this host through `sh -c`, as sshd would run it through the user's shell
# on the board. Every argv is appended as a JSON line to $FAKE_LOG. A target whose host part
# starts with "unreachable" fails like an unreachable host (exit 255, the ssh error message).
import json
import os
import subprocess
import sys

argv = sys.argv[1:]
if os.environ.get("FAKE_LOG"):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(["ssh"] + argv) + "\n")
i = 0
while i < len(argv) and argv[i].startswith("-"):
    i += 2 if argv[i] in ("-o", "-p", "-i", "-l", "-F", "-J") else 1
target, command = argv[i], " ".join(argv[i + 1:])
host = target.split("@")[-1]
if host.startswith("unreachable"):
    print(f"ssh: connect to host {host} port 22: Connection timed out", file=sys.stderr)
    sys.exit(255)
sys.exit(subprocess.run(["sh", "-c", command]).returncode)
