# Stand-in for Android's `adb`, used by tests/test_lite_devices.py (the test writes it to a tmp
# folder as an executable named `adb`, shebang = the test's Python, and puts it first on PATH).
# It executes what adb would execute on a phone, but on this host: `push` copies the file,
# `shell CMD` runs CMD through `sh -c` (adb joins its arguments into one remote command line, so
# this is what a phone's shell would get), `get-state` prints "device". Every argv is appended as
# a JSON line to $FAKE_LOG. $FAKE_ADB_STATE=offline|none simulates an unauthorised/absent phone.
import json
import os
import shutil
import subprocess
import sys

argv = sys.argv[1:]
if os.environ.get("FAKE_LOG"):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(["adb"] + argv) + "\n")
if argv[:1] == ["-s"]:
    argv = argv[2:]
state = os.environ.get("FAKE_ADB_STATE", "device")
if not argv:
    sys.exit(1)
cmd, rest = argv[0], argv[1:]
if cmd == "get-state":
    if state == "none":
        print("error: no devices/emulators found", file=sys.stderr)
        sys.exit(1)
    print(state)
    sys.exit(0)
if cmd == "devices":
    print("List of devices attached")
    if state != "none":
        print(f"FAKE0001\t{state}")
    sys.exit(0)
if state != "device":
    print("error: device offline" if state == "offline" else "error: no devices/emulators found", file=sys.stderr)
    sys.exit(1)
if cmd == "push":
    src, dst = rest
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    shutil.copy(src, dst)
    print(f"{src}: 1 file pushed, 0 skipped.")
    sys.exit(0)
if cmd == "shell":
    sys.exit(subprocess.run(["sh", "-c", " ".join(rest)]).returncode)
print(f"adb: unknown command {cmd}", file=sys.stderr)
sys.exit(1)
