#!/usr/bin/env python3
"""A job started on one terminal replays on another: tty_replay.py BUILD_DIR [PROG]

PROG (default tty) is a zdtm program; tty checks its streams itself and says
where stderr goes, any other just has to PASS on the replaying terminal (pty:
the job's own pseudo-terminals next to the job's terminal)."""
import os, pty, select, shutil, subprocess, sys, tempfile, time

build = sys.argv[1]
ibdbg = os.path.join(build, "bin/ibdbg")
name = sys.argv[2] if len(sys.argv) > 2 else "tty"
prog = os.path.join(build, "tests/e2e/zdtm-" + name)
work = tempfile.mkdtemp(prefix="ibdbg-e2e-tty.")
env = dict(os.environ, IBDBG_HOME=os.path.join(work, "home"))
go = os.path.join(work, "go")


def run_on_pty(args):
    master, slave = pty.openpty()
    p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                         start_new_session=True)
    os.close(slave)
    return p, master


def read_until(master, text, seconds):
    out, end = b"", time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            out += chunk
            if text.encode() in out:
                return out.decode(errors="replace")
    return out.decode(errors="replace")


def fail(msg, *outs):
    print("FAIL(tty): " + msg)
    for o in outs:
        print("---\n" + o)
    sys.exit(1)


try:
    run, m1 = run_on_pty([ibdbg, "run", "--dir", os.path.join(work, "job"), "--", prog, go])
    out1 = read_until(m1, "READY", 30)
    if "READY" not in out1:
        fail("the program did not start", out1)
    img = subprocess.run([ibdbg, "capture", "--dir", os.path.join(work, "job"), "--stop"], env=env,
                         capture_output=True, text=True, timeout=60)
    if img.returncode != 0:
        fail("capture failed", img.stderr)
    run.wait(30)
    rep, m2 = run_on_pty([ibdbg, "replay", img.stdout.strip(), "--dir", os.path.join(work, "job2")])
    time.sleep(0.5)
    open(go, "w").close()
    out2 = read_until(m2, "stderr reaches" if name == "tty" else "PASS", 30)
    out2 += read_until(m2, "\n", 2)
    rep.wait(30)
    if "PASS" not in out2 or (name == "tty" and "stderr reaches /dev/pts/" not in out2):
        fail("the replayed program did not run on the new terminal", out2)
    print("ok: standard streams reattached to the replaying terminal")
finally:
    subprocess.run(["pkill", "-KILL", "-f", work])
    shutil.rmtree(work, ignore_errors=True)
