#!/usr/bin/env python3
"""ibdbg replay --gdb on a terminal: gdb prompts with the process stopped at its
capture point, answers commands, and on quit the job runs to its correct end.
gdb_interactive.py BUILD_DIR"""
import os, pty, select, shutil, subprocess, sys, tempfile, time

build = sys.argv[1]
ibdbg = os.path.join(build, "bin/ibdbg")
work = tempfile.mkdtemp(prefix="ibdbg-e2e-gdbi.")
env = dict(os.environ, IBDBG_HOME=os.path.join(work, "home"), TERM="dumb")
log = os.path.join(work, "heat.log")


def fail(msg, out=""):
    print("FAIL(gdb-interactive): " + msg + ("\n---\n" + out if out else ""))
    sys.exit(1)


def read_until(master, text, seconds, acc):
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                acc[0] += os.read(master, 65536).decode(errors="replace")
            except OSError:
                break
            if text in acc[0]:
                return True
    return False


try:
    with open(log, "w") as f:
        run = subprocess.Popen([ibdbg, "run", "--dir", os.path.join(work, "job"), "--",
                                os.path.join(build, "bin/heat"), "3", "300", "10000"],
                               stdout=f, stderr=subprocess.STDOUT, env=env)
    end = time.time() + 30
    while "step 50" not in open(log).read():
        if time.time() > end:
            fail("heat did not start")
        time.sleep(0.05)
    cap = subprocess.run([ibdbg, "capture", "--dir", os.path.join(work, "job"), "--stop"], env=env,
                         capture_output=True, text=True, timeout=60)
    if cap.returncode:
        fail("capture failed", cap.stderr)
    run.wait(30)
    master, slave = pty.openpty()
    rep = subprocess.Popen([ibdbg, "replay", cap.stdout.strip(), "--gdb", "--dir", os.path.join(work, "j2")],
                           stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = [""]
    if not read_until(master, "(gdb) ", 60, out):
        fail("no gdb prompt", out[0])
    if "at their capture point" not in out[0]:
        fail("threads were not released to their capture point", out[0])
    os.write(master, b"bt\n")
    out2 = [""]
    read_until(master, "in main (", 10, out2)
    read_until(master, "(gdb) ", 10, out2)
    if "main (" not in out2[0] or "heat.c" not in out2[0]:
        fail("bt does not show the application's main()", out2[0])
    os.write(master, b"info threads\n")
    out3 = [""]
    read_until(master, "(gdb) ", 10, out3)
    if out3[0].count("heat") < 3:
        fail("info threads does not list the workers", out3[0])
    os.write(master, b"quit\n")
    rep.wait(60)
    if rep.returncode != 0:
        fail("replay exited with %d" % rep.returncode)
    if "checksum" not in open(log).read() or "OK" not in open(log).read().splitlines()[-1]:
        fail("the job did not finish correctly after gdb quit", open(log).read())
    print("ok: interactive gdb at the capture point")
finally:
    subprocess.run(["pkill", "-KILL", "-f", work])
    shutil.rmtree(work, ignore_errors=True)
