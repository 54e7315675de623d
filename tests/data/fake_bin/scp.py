# Stand-in for OpenSSH's `scp` (see ssh.py): copies local files to the `host:path` destination's
# path on this host; logs argv to $FAKE_LOG; "unreachable*" hosts fail with exit 255.
import json
import os
import shutil
import sys

argv = sys.argv[1:]
if os.environ.get("FAKE_LOG"):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(["scp"] + argv) + "\n")
args, i = [], 0
while i < len(argv):
    if argv[i] in ("-o", "-P", "-i", "-F", "-J"):
        i += 2
    elif argv[i].startswith("-"):
        i += 1
    else:
        args.append(argv[i])
        i += 1
*sources, dest = args
host, _, path = dest.rpartition(":")
if host.split("@")[-1].startswith("unreachable"):
    print(f"ssh: connect to host {host.split('@')[-1]} port 22: Connection timed out", file=sys.stderr)
    sys.exit(255)
for s in sources:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    shutil.copy(s, path)
