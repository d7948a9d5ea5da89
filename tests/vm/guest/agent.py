"""Control agent of a test VM, on the virtio-serial port named weft.agent.

One JSON request per line: {"id": N, "argv": [...], "env": {...}, "stdin": "...",
"timeout": seconds, "background": false}. One JSON reply per line: {"id": N, "rc": .., "stdout":
.., "stderr": ..}. Programs run from an argument vector, never through a shell. A background
request starts the program detached (output to /tmp/bg-<id>.log) and answers with its pid.
"""
import json
import os
import subprocess
import threading
import time

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def port():
    for name in os.listdir("/sys/class/virtio-ports"):
        with open(f"/sys/class/virtio-ports/{name}/name") as f:
            if f.read().strip() == "weft.agent":
                return f"/dev/{name}"
    raise SystemExit("agent: no virtio-serial port named weft.agent")


def run(req):
    env = {"PATH": PATH, "HOME": "/root"}
    env.update(req.get("env") or {})
    argv = req["argv"]
    if req.get("background"):
        log = open(f"/tmp/bg-{req['id']}.log", "wb")
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        return {"rc": 0, "stdout": str(child.pid), "stderr": ""}
    try:
        out = subprocess.run(argv, env=env, input=(req.get("stdin") or "").encode(),
                             capture_output=True, timeout=req.get("timeout", 60))
        return {"rc": out.returncode, "stdout": out.stdout.decode(errors="replace"),
                "stderr": out.stderr.decode(errors="replace")}
    except subprocess.TimeoutExpired:
        return {"rc": -1, "stdout": "", "stderr": f"timed out: {argv}"}
    except OSError as e:
        return {"rc": -1, "stdout": "", "stderr": f"cannot run {argv}: {e}"}


def main():
    fd = os.open(port(), os.O_RDWR)
    lock = threading.Lock()

    def reply(msg):
        data = (json.dumps(msg) + "\n").encode()
        with lock:
            while data:
                data = data[os.write(fd, data):]

    def serve(req):
        try:
            msg = run(req)
        except Exception as e:  # a malformed request must not end the agent
            msg = {"rc": -1, "stdout": "", "stderr": f"bad request: {e}"}
        msg["id"] = req.get("id")
        reply(msg)

    with open("/proc/sys/kernel/random/boot_id") as f:
        reply({"id": None, "hello": f.read().strip()})
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # no host connected yet
            time.sleep(0.05)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
            except ValueError:
                reply({"id": None, "rc": -1, "stdout": "", "stderr": "bad json"})
                continue
            threading.Thread(target=serve, args=(req,), daemon=True).start()


main()
