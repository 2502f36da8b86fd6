# gdb support for ibdbg replays.
#
# A replayed process reaches gdb with every thread parked in the restorer, one
# system call before rt_sigreturn would bring it back to where it was captured.
# `ibdbg-release ADDR` steps each thread over that call (ADDR is the address of
# the restorer's rt_sigreturn instruction; r15 holds the thread's ucontext), so
# that the user sees the application exactly at its capture point.
import gdb


class IbdbgRelease(gdb.Command):
    """Bring every parked thread of a replayed process to its capture point."""

    def __init__(self):
        super().__init__("ibdbg-release", gdb.COMMAND_RUNNING)

    def invoke(self, arg, from_tty):
        insn = int(arg, 0)
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
        gdb.write("ibdbg: %d thread(s) at their capture point\n" % len(inferior.threads()))


IbdbgRelease()
