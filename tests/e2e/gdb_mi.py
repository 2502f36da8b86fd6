#!/usr/bin/python3
"""ibdbg replay --gdb-mi driven as an IDE would: a job of a parent and three
forked workers, replayed through examples/vscode/ibdbg-mi (given gdb options
an IDE adds), answers GDB/MI.  Every process is a thread group of its own with
a pid, each stopped in its own function (-list-thread-groups, -thread-select,
-stack-list-frames, -stack-info-frame), each worker's memory its own
(-data-evaluate-expression), `info ibdbg` works through -interpreter-exec, and
after -gdb-exit the job ends well.   gdb_mi.py BUILD_DIR [--as-user]"""
import os, re, select, shutil, subprocess, sys, tempfile, time

build = os.path.abspath(sys.argv[1])
as_user = "--as-user" in sys.argv[2:]
here = os.path.dirname(os.path.abspath(__file__))
ibdbg = os.path.join(build, "bin/ibdbg")
exe = os.path.join(build, "tests/e2e/zdtm-gdbjob")
wrapper = os.path.join(here, "../../examples/vscode/ibdbg-mi")
work = tempfile.mkdtemp(prefix="ibdbg-e2e-gdbmi.")
os.chmod(work, 0o755)
env = dict(os.environ, IBDBG_HOME=os.path.join(work, "home"), IBDBG=ibdbg)
prefix = []
if as_user:
    shutil.chown(work, "nobody", "nogroup")
    env["HOME"] = work
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
log = os.path.join(work, "run.out")
err_log = os.path.join(work, "replay.err")
transcript = []


def fail(msg):
    print("FAIL(gdb-mi): " + msg)
    print("--- MI transcript (last 80 lines)")
    print("\n".join(transcript[-80:]))
    for f in (err_log, log):
        if os.path.exists(f):
            print("--- " + f)
            print(open(f).read()[-3000:])
    sys.exit(1)


# ---- a small GDB/MI value parser -------------------------------------------
def parse_value(s, i):
    c = s[i]
    if c == '"':
        out, i = [], i + 1
        while s[i] != '"':
            if s[i] == "\\":
                i += 1
                out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(s[i], s[i]))
            else:
                out.append(s[i])
            i += 1
        return "".join(out), i + 1
    if c in "{[":
        close = "}" if c == "{" else "]"
        i += 1
        items, named = [], {}
        while s[i] != close:
            m = re.match(r"([A-Za-z_][\w-]*)=", s[i:])
            if m:
                name = m.group(1)
                v, i = parse_value(s, i + m.end())
                named.setdefault(name, v)
                items.append(v)
            else:
                v, i = parse_value(s, i)
                items.append(v)
            if s[i] == ",":
                i += 1
        return (named if c == "{" else items), i + 1
    raise ValueError("bad MI at %d: %r" % (i, s[i:i + 20]))


def parse_results(s):
    """'a="1",b={...}' -> dict."""
    d, i = {}, 0
    while i < len(s):
        m = re.match(r"([A-Za-z_][\w-]*)=", s[i:])
        if not m:
            break
        v, i = parse_value(s, i + m.end())
        d[m.group(1)] = v
        if i < len(s) and s[i] == ",":
            i += 1
    return d


class Mi:
    def __init__(self, proc):
        self.p = proc
        self.token = 100
        self.console = []
        self.buf = b""

    def line(self, deadline):
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                fail("gdb did not answer in time")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    fail("gdb's output ended")
                self.buf += chunk
        l, _, self.buf = self.buf.partition(b"\n")
        l = l.decode(errors="replace").rstrip("\r")
        transcript.append("<- " + l)
        if l.startswith("~"):
            self.console.append(parse_value(l, 1)[0])
        return l

    def wait_prompt(self, seconds):
        end = time.time() + seconds
        while self.line(end) != "(gdb) ":
            pass

    def cmd(self, text, seconds=30):
        self.token += 1
        t = str(self.token)
        transcript.append("-> " + t + text)
        self.p.stdin.write((t + text + "\n").encode())
        self.p.stdin.flush()
        end = time.time() + seconds
        self.console = []
        while True:
            l = self.line(end)
            if l.startswith(t + "^"):
                cls, _, rest = l[len(t) + 1:].partition(",")
                res = parse_results(rest)
                if cls == "error":
                    fail("%s: %s" % (text, res.get("msg")))
                return res


try:
    # The documented VS Code set-up starts this same wrapper and runs nothing.
    import json
    conf = json.load(open(os.path.join(here, "../../examples/vscode/launch.json")))["configurations"][0]
    if not conf["miDebuggerPath"].endswith("/examples/vscode/ibdbg-mi") or conf["launchCompleteCommand"] != "None":
        fail("examples/vscode/launch.json does not start ibdbg-mi without running the program")
    go = os.path.join(work, "go")
    with open(log, "w") as f:
        pass
    if as_user:
        shutil.chown(log, "nobody", "nogroup")
    with open(log, "a") as f:
        run = subprocess.Popen(prefix + [ibdbg, "run", "--dir", os.path.join(work, "job"), "--", exe, go],
                               stdout=f, stderr=subprocess.STDOUT, env=env)
    end = time.time() + 30
    while "READY" not in open(log).read():
        if time.time() > end:
            fail("the job did not start")
        time.sleep(0.05)
    cap = subprocess.run(prefix + [ibdbg, "capture", "--dir", os.path.join(work, "job"), "--stop"], env=env,
                         capture_output=True, text=True, timeout=60)
    if cap.returncode:
        fail("capture failed: " + cap.stderr)
    run.wait(30)
    img = cap.stdout.strip()
    nprocs = len(re.findall(r"proc-\d+\.img", " ".join(os.listdir(img))))
    open(go, "w").close()  # seen only once gdb lets the job go
    with open(err_log, "w") as ef:
        rep = subprocess.Popen(prefix + [wrapper, "--interpreter=mi", "--tty=/dev/null", img],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=ef, env=env,
                               start_new_session=True)
    mi = Mi(rep)
    mi.wait_prompt(90)
    groups = mi.cmd("-list-thread-groups")["groups"]
    live = [g for g in groups if g.get("pid")]
    if len(live) != nprocs or nprocs != 4:
        fail("%d thread groups with a process, %d processes in the image (want 4)" % (len(live), nprocs))
    found = {"parent_wait": 0, "worker_wait": 0}
    tokens = []
    for g in live:
        threads = mi.cmd("-list-thread-groups " + g["id"])["threads"]
        if not threads:
            fail("thread group %s has no threads" % g["id"])
        t = threads[0]
        mi.cmd("-thread-select " + t["id"])
        frame = mi.cmd("-stack-info-frame")["frame"]
        if frame.get("addr", "").startswith("0x00003f"):
            fail("thread group %s stands in the restorer's code" % g["id"])
        frames = [f.get("func", "??") for f in mi.cmd("-stack-list-frames")["stack"]]
        fn = [f for f in frames if f in found]
        if len(fn) != 1:
            fail("thread group %s (pid %s) is not at its capture function: %s" % (g["id"], g["pid"], frames))
        found[fn[0]] += 1
        if fn[0] == "worker_wait":
            tokens.append(int(mi.cmd('-data-evaluate-expression worker_token')["value"]))
    if found != {"parent_wait": 1, "worker_wait": 3}:
        fail("capture functions: %s" % found)
    if sorted(tokens) != [1001, 1002, 1003]:
        fail("worker tokens %s" % tokens)
    mi.cmd('-interpreter-exec console "info ibdbg"')
    info = "".join(mi.console)
    rows = re.findall(r"^[ *] +(\d+)  \S+/proc \d+ ", info, re.M)
    if sorted(int(r) for r in rows) != sorted(int(g["id"][1:]) for g in live):
        fail("info ibdbg does not name every inferior: " + info)
    transcript.append("-> -gdb-exit")
    rep.stdin.write(b"-gdb-exit\n")
    rep.stdin.flush()
    try:
        rc = rep.wait(60)
    except subprocess.TimeoutExpired:
        fail("the job did not end after -gdb-exit")
    if rc != 0:
        fail("replay exited with %d" % rc)
    if "PASS" not in open(log).read():
        fail("the job did not end well after gdb let it go")
    print("ok: GDB/MI on a whole job of 4 processes%s" % (" (unprivileged)" if as_user else ""))
finally:
    subprocess.run(["pkill", "-KILL", "-f", work])
    shutil.rmtree(work, ignore_errors=True)
