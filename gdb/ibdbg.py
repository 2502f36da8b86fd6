# gdb support for ibdbg replays.
#
# A replayed process reaches gdb with every thread parked in the restorer, one
# system call before rt_sigreturn would bring it back to where it was captured.
# `ibdbg-release ADDR` steps each thread over that call (ADDR is the address of
# the restorer's rt_sigreturn instruction; r15 holds the thread's ucontext), so
# that the user sees the application exactly at its capture point.
#
# A whole job is one gdb session with one inferior per process:
# `ibdbg-attach-job SESSION.json` (written by `ibdbg replay --gdb*`) attaches
# each process, plainly or through a gdbserver started with the job's remote
# shell, and releases it.  gdb 13 cannot rename inferiors, so the names of
# ours (host and rank) live here: `info ibdbg` shows them.
import json
import os
import subprocess

import gdb


class IbdbgRelease(gdb.Command):
    """Bring every parked thread of the selected inferior to its capture point.
Usage: ibdbg-release ADDR  (the restorer's rt_sigreturn instruction)"""

    def __init__(self):
        super().__init__("ibdbg-release", gdb.COMMAND_RUNNING)

    def invoke(self, arg, from_tty):
        release(int(arg, 0), quiet=False)


def release(insn, quiet):
    """Steps each thread of the selected inferior over rt_sigreturn; returns
    how many threads it has."""
    inferior = gdb.selected_inferior()
    first = None
    gdb.execute("set scheduler-locking on", to_string=True)
    try:
        for thread in sorted(inferior.threads(), key=lambda t: t.num):
            thread.switch()
            uc = int(gdb.parse_and_eval("$r15")) & 0xFFFFFFFFFFFFFFFF
            gdb.execute("set var $rsp = %d" % uc, to_string=True)
            gdb.execute("set var $rax = 15", to_string=True)
            gdb.execute("set var $pc = %d" % insn, to_string=True)
            gdb.execute("stepi", to_string=True)
            if first is None:
                first = thread
    finally:
        gdb.execute("set scheduler-locking replay", to_string=True)
    if first is not None:
        # The main thread first, as a fresh attach would show it.
        for thread in inferior.threads():
            if thread.ptid[1] == inferior.pid:
                first = thread
        first.switch()
    n = len(inferior.threads())
    if not quiet:
        gdb.write("ibdbg: %d thread(s) at their capture point\n" % n)
    return n


IbdbgRelease()

# ---- the job's session ----------------------------------------------------

# Set by ibdbg-attach-job: the session file's contents, plus per process its
# manifest entry and the inferior number gdb gave it.
SESSION = None


def _manifest(image):
    try:
        with open(os.path.join(image, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _name(proc):
    rank = proc.get("rank")
    label = ("rank %d" % rank) if isinstance(rank, int) else ("proc %d" % proc["index"])
    return "%s/%s" % (proc.get("host") or "?", label)


def load_session(path):
    with open(path) as f:
        s = json.load(f)
    m = _manifest(s["image"]) or {}
    s["manifest"] = m
    mprocs = m.get("processes", [])
    for p in s["processes"]:
        # Our processes are found in the manifest by where they were captured
        # and their pid there (each host's part is replayed on its own).
        for i, mp in enumerate(mprocs):
            if mp.get("pid") == p["image_pid"] and (not p.get("host") or mp.get("host") == p["host"]):
                p["index"] = i
                p.setdefault("host", mp.get("host", ""))
                if "rank" in mp and isinstance(mp["rank"], int):
                    p["rank"] = mp["rank"]
                p.setdefault("exe", mp.get("exe", ""))
                break
        p.setdefault("index", s["processes"].index(p))
        p["name"] = _name(p)
    return s


def _new_inferior(share_with):
    """Adds an inferior (sharing the target connection of inferior
    `share_with`, or with none) and selects it; returns it."""
    before = {i.num for i in gdb.inferiors()}
    if share_with is not None:
        gdb.execute("inferior %d" % share_with, to_string=True)
        gdb.execute("add-inferior", to_string=True)
    else:
        gdb.execute("add-inferior -no-connection", to_string=True)
    num = max({i.num for i in gdb.inferiors()} - before)
    gdb.execute("inferior %d" % num, to_string=True)
    return gdb.selected_inferior()


def _inferior(num):
    for i in gdb.inferiors():
        if i.num == num:
            return i
    return None


def _select(inf):
    """Selects inferior `inf` at its main thread, quietly (`inferior N`
    prints where it switched to, even into a string)."""
    threads = inf.threads()
    if not threads:
        gdb.execute("inferior %d" % inf.num, to_string=True)
        return
    main = min(threads, key=lambda t: t.num)
    for t in threads:
        if t.ptid[1] == inf.pid:
            main = t
    main.switch()


class IbdbgAttachJob(gdb.Command):
    """Attach every process of a replayed job, one inferior each, and bring
each to its capture point.  Usage: ibdbg-attach-job SESSION.json"""

    def __init__(self):
        super().__init__("ibdbg-attach-job", gdb.COMMAND_RUNNING)

    def invoke(self, arg, from_tty):
        global SESSION
        try:
            SESSION = load_session(arg.strip())
            # Each attach and step would print where it stopped (in the
            # restorer, then a frame of each thread): one line per process
            # instead, below.
            gdb.execute("set suppress-cli-notifications on", to_string=True)
            try:
                self.attach_all(SESSION)
            finally:
                gdb.execute("set suppress-cli-notifications off", to_string=True)
        except (gdb.error, OSError, ValueError, KeyError) as e:
            # Processes left parked would wait forever: ibdbg ends the job
            # when gdb fails.
            gdb.write("ibdbg: cannot bring the job under gdb: %s\n" % str(e).strip(), gdb.STDERR)
            gdb.execute("quit 3")
        # The job makes progress only all together (ranks wait for each
        # other): `continue` resumes every process, not only the selected one.
        gdb.execute("set schedule-multiple on", to_string=True)
        for p in SESSION["processes"]:
            gdb.write("ibdbg: inferior %d is %s: pid %d (captured as %d), %s: %d thread(s) at their capture point\n"
                      % (p["inferior"], p["name"], p["pid"], p["image_pid"], p.get("exe", "?"), p["threads"]))
        _select(_inferior(SESSION["processes"][0]["inferior"]))

    def attach_all(self, s):
        by_connection = {}  # connection -> an inferior that has it
        trace = os.environ.get("IBDBG_GDB_TRACE") == "1"
        for i, p in enumerate(s["processes"]):
            if trace:
                gdb.write("ibdbg-trace: %r\n" % p, gdb.STDERR)
            # A process on another host: a gdbserver of its own, started
            # there attached to it (`target remote` then waits for its stop,
            # which a later `attach` through a second connection does not).
            remote = p.get("connection") or ""
            if i == 0:
                inf = gdb.selected_inferior()
            else:
                inf = _new_inferior(None if remote else by_connection.get(""))
            exe = p.get("exe") or ""
            if exe and os.path.exists(exe):
                gdb.execute("file " + exe, to_string=True)
            if remote:
                gdb.execute("target extended-remote %s %d" % (remote, p["pid"]), to_string=True)
            else:
                gdb.execute("attach %d" % p["pid"], to_string=True)
                by_connection.setdefault("", inf.num)
            p["inferior"] = inf.num
            p["threads"] = release(int(p["insn"]), quiet=True)


IbdbgAttachJob()


def _processes():
    if SESSION is None:
        raise gdb.GdbError("not an ibdbg replay (ibdbg replay --gdb starts one)")
    return SESSION["processes"]


def _proc_of(num):
    for p in _processes():
        if p["inferior"] == num:
            return p
    return None


def _chain(image):
    """The image and the images it was translated from, from their manifests."""
    out = []
    seen = set()
    while image and image not in seen and len(out) < 64:
        seen.add(image)
        m = _manifest(image)
        if m is None:
            out.append((image, None))
            break
        out.append((image, m))
        parent = m.get("parent")
        image = parent.get("image") if isinstance(parent, dict) else None
    return out


class InfoIbdbg(gdb.Command):
    """The replayed job: its image and where it came from, its hosts, and
which inferior is which process (host, rank, pid)."""

    def __init__(self):
        super().__init__("info ibdbg", gdb.COMMAND_STATUS)

    def invoke(self, arg, from_tty):
        procs = _processes()
        s = SESSION
        m = s["manifest"]
        w = gdb.write
        w("image      %s\n" % s["image"])
        w("job        %s (captured %s, ibdbg %s); replayed as job %s in %s\n"
          % (m.get("job_id", "?"), m.get("captured") or m.get("created", "?"), m.get("ibdbg_version", "?"),
             s.get("replay_job", "?"), s.get("replay_dir", "?")))
        chain = _chain(s["image"])
        for depth, (img, pm) in enumerate(chain):
            lead = "provenance " if depth == 0 else "           "
            if pm is None:
                w("%s<- %s (no longer there)\n" % (lead, img))
            elif depth == 0:
                w("%s%s %s\n" % (lead, pm.get("kind", "capture"), pm.get("created", "")))
            else:
                w("%s<- %s: %s %s\n" % (lead, img, pm.get("kind", "capture"), pm.get("created", "")))
        if len(chain) == 1 and chain[0][1] is not None:
            w("           (the original capture)\n")
        hosts = {}
        for p in procs:
            hosts.setdefault(p.get("host", "?"), []).append(p)
        for h in m.get("hosts", []):
            name = h.get("name", "?")
            line = "host       %s: %d process(es)" % (name, len(hosts.get(name, [])))
            if h.get("via"):
                line += ", started from %s through the remote shell" % h["via"]
            if s.get("where", {}).get(name, name) != name:
                line += ", replayed on %s" % s["where"][name]
            w(line + "\n")
        w("\n  Inf  Name                 Host          Rank  Pid      Image pid  Threads  Executable\n")
        sel = gdb.selected_inferior().num
        for p in procs:
            inf = _inferior(p["inferior"])
            alive = inf is not None and inf.pid != 0
            rank = str(p["rank"]) if isinstance(p.get("rank"), int) else "-"
            w("%s %3d  %-20s %-13s %-5s %-8s %-10d %-8s %s%s\n"
              % ("*" if p["inferior"] == sel else " ", p["inferior"], p["name"], p.get("host", "?"), rank,
                 p["pid"], p["image_pid"], len(inf.threads()) if alive else "-", p.get("exe", "?"),
                 "" if alive else "  (detached)"))


InfoIbdbg()


def _inspect():
    """`ibdbg inspect IMAGE --json`, once per session."""
    if "inspect" not in SESSION:
        r = subprocess.run([SESSION["ibdbg"], "inspect", SESSION["image"], "--json"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise gdb.GdbError("ibdbg inspect failed: " + (r.stderr.strip() or "exit %d" % r.returncode))
        SESSION["inspect"] = json.loads(r.stdout)
    return SESSION["inspect"]


ACCESS = [(1, "LOCAL_WRITE"), (2, "REMOTE_WRITE"), (4, "REMOTE_READ"), (8, "REMOTE_ATOMIC"), (16, "MW_BIND"),
          (32, "ZERO_BASED"), (64, "ON_DEMAND"), (128, "HUGETLB"), (1 << 20, "RELAXED_ORDERING")]


def _access(text):
    try:
        a = int(text, 0)
    except (TypeError, ValueError):
        return str(text)
    names = [n for bit, n in ACCESS if a & bit]
    rest = a & ~sum(bit for bit, _ in ACCESS)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def format_verbs(v):
    """Lines describing one process's verbs record (inspect's "verbs")."""
    out = ["  backend %s%s" % (v.get("backend", "?"), ", posts blocked" if v.get("posts_blocked") else "")]
    if v.get("refused"):
        out.append("  unsupported feature used: %s" % v["refused"])
    objs = v.get("objects", [])
    kinds = {}
    for o in objs:
        kinds.setdefault(o.get("kind"), []).append(o)
    for o in kinds.get("context", []):
        out.append("  device %s  context %s  cmd_fd %s  async_fd %s"
                   % (o.get("device", "?"), o["handle"], o.get("cmd_fd"), o.get("async_fd")))
    for o in kinds.get("pd", []):
        out.append("  PD %s  context %s" % (o["handle"], o.get("context")))
    for o in kinds.get("mr", []):
        start = int(o.get("addr", "0"), 0)
        out.append("  MR %s  pd %s  [0x%x, 0x%x) %d bytes  access %s  lkey %s  rkey %s"
                   % (o["handle"], o.get("pd"), start, start + int(o.get("length", 0)), int(o.get("length", 0)),
                      _access(o.get("access")), o.get("lkey"), o.get("rkey")))
    for o in kinds.get("channel", []):
        out.append("  completion channel %s  fd %s" % (o["handle"], o.get("fd")))
    for o in kinds.get("cq", []):
        out.append("  CQ %s  cqe %s  %s completion(s) buffered%s%s"
                   % (o["handle"], o.get("cqe"), o.get("buffered", 0),
                      "  channel " + o["channel"] if o.get("channel") else "",
                      "  extended" if o.get("extended") else ""))
    for o in kinds.get("srq", []):
        out.append("  SRQ %s  pd %s  max_wr %s  max_sge %s  limit %s  %s receive(s) posted"
                   % (o["handle"], o.get("pd"), o.get("max_wr"), o.get("max_sge"), o.get("srq_limit"),
                      o.get("recvs_posted")))
    for o in kinds.get("ah", []):
        out.append("  AH %s  pd %s  dlid %s  port %s%s"
                   % (o["handle"], o.get("pd"), o.get("dlid"), o.get("port"),
                      "  dgid " + o["dgid"] if o.get("dgid") else ""))
    for o in kinds.get("qp", []):
        out.append("  QP %s  qpn %s  %s  %s  peer qpn %s lid %s port %s  sq_psn %s rq_psn %s  "
                   "%s send(s) outstanding, %s receive(s) posted  send_cq %s recv_cq %s%s"
                   % (o["handle"], o.get("qpn"), o.get("type"), o.get("state"), o.get("dest_qpn"), o.get("dlid"),
                      o.get("port"), o.get("sq_psn"), o.get("rq_psn"), o.get("sends_outstanding"),
                      o.get("recvs_posted"), o.get("send_cq"), o.get("recv_cq"),
                      "  srq " + o["srq"] if o.get("srq") else ""))
    known = {"context", "pd", "mr", "channel", "cq", "srq", "ah", "qp"}
    for k, os_ in kinds.items():
        if k not in known:
            for o in os_:
                out.append("  %s %s" % (k, o.get("handle")))
    return out


class InfoVerbs(gdb.Command):
    """The RDMA verbs state of the image: devices, PDs, MRs (ranges, access),
CQs (buffered completions), QPs (state, peer, PSNs, outstanding work), SRQs.
Usage: info verbs [all | INFERIOR]   (default: the selected inferior)"""

    def __init__(self):
        super().__init__("info verbs", gdb.COMMAND_STATUS)

    def invoke(self, arg, from_tty):
        procs = _processes()
        arg = arg.strip()
        if arg == "all":
            chosen = procs
        else:
            num = int(arg, 0) if arg else gdb.selected_inferior().num
            p = _proc_of(num)
            if p is None:
                raise gdb.GdbError("inferior %d is no process of the replayed job" % num)
            chosen = [p]
        ins = _inspect()
        for p in chosen:
            ip = None
            for q in ins.get("processes", []):
                if q.get("pid") == p["image_pid"] and q.get("host", p.get("host")) == p.get("host"):
                    ip = q
            head = "inferior %d (%s, pid %d)" % (p["inferior"], p["name"], p["image_pid"])
            if ip is None or "verbs" not in ip:
                gdb.write("%s: no verbs state\n" % head)
                continue
            gdb.write(head + ":\n")
            for line in format_verbs(ip["verbs"]):
                gdb.write(line + "\n")


InfoVerbs()


class IbdbgEach(gdb.Command):
    """Run a command in every inferior of the replayed job, each named.
Usage: ibdbg-each COMMAND   (e.g. ibdbg-each bt)"""

    def __init__(self):
        super().__init__("ibdbg-each", gdb.COMMAND_SUPPORT)

    def invoke(self, arg, from_tty):
        was = gdb.selected_thread()
        try:
            for p in _processes():
                inf = _inferior(p["inferior"])
                if inf is None or inf.pid == 0:
                    continue
                _select(inf)
                gdb.write("--- inferior %d: %s (pid %d)\n" % (p["inferior"], p["name"], p["pid"]))
                try:
                    gdb.execute(arg, from_tty)
                except gdb.error as e:
                    gdb.write("%s\n" % e, gdb.STDERR)
        finally:
            if was is not None and was.is_valid():
                was.switch()


IbdbgEach()


class IbdbgDetachAll(gdb.Command):
    """Detach every inferior: the whole job runs on."""

    def __init__(self):
        super().__init__("ibdbg-detach-all", gdb.COMMAND_RUNNING)

    def invoke(self, arg, from_tty):
        remote = {p["inferior"] for p in (SESSION or {}).get("processes", []) if p.get("connection")}
        n = 0
        for inf in gdb.inferiors():
            if inf.pid != 0 and inf.num not in remote:
                _select(inf)
                gdb.execute("detach", to_string=True)
                n += 1
        # After one inferior of a remote connection detaches, gdb 13 forgets
        # the threads of the others and can no longer select them to detach
        # them in turn.  Their gdbservers let them go when gdb ends (each
        # sees its connection close and detaches).
        left = [inf for inf in gdb.inferiors() if inf.pid != 0]
        if left:
            try:
                gdb.execute("detach inferiors " + " ".join(str(i.num) for i in left), to_string=True)
            except gdb.error:
                pass
        held = len([inf for inf in gdb.inferiors() if inf.pid != 0])
        n += len(left) - held
        gdb.write("ibdbg: detached from %d process(es)%s; the job runs on\n"
                  % (n + held, (", %d of them through their gdbserver as gdb ends" % held) if held else ""))


IbdbgDetachAll()
