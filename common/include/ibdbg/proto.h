/* Plain-C records shared by the capture library, the agent, the image and the
 * restorer.  They are written into images as they are, so every field has a
 * fixed size and layout; change them only together with IBDBG_PROTO_VERSION
 * and the image format version.  No libc types: the restorer includes this. */
#ifndef IBDBG_PROTO_H
#define IBDBG_PROTO_H

#include <stdint.h>

#define IBDBG_PROTO_VERSION 1
#define IBDBG_PATH_MAX 4096
#define IBDBG_MAX_THREADS 4096
#define IBDBG_NSIG 64
#define IBDBG_AUXV_WORDS 128

#ifdef __cplusplus
extern "C" {
#endif

/* ---- capture library <-> agent, over a unix stream socket ---------------- */
enum ibdbg_msg_type {
  IBDBG_MSG_HELLO = 1,      /* lib -> agent: payload ibdbg_hello */
  IBDBG_MSG_SUSPEND = 2,    /* agent -> lib: stop all threads, describe yourself */
  IBDBG_MSG_SUSPENDED = 3,  /* lib -> agent: payload = metadata blob (records below) */
  IBDBG_MSG_RESUME = 4,     /* agent -> lib: image written (or abandoned), run on */
  IBDBG_MSG_EXIT = 5,       /* agent -> lib: capture done, terminate (--stop) */
  IBDBG_MSG_ERROR = 6,      /* lib -> agent: payload = one-line reason */
  /* agent -> lib, while stopped: make a frozen copy-on-write copy of yourself
   * for the agent to read memory from once you run on. */
  IBDBG_MSG_FORK = 7,
  /* lib -> agent: payload int32 pid of the copy (the library's view), with
   * its pidfd attached (SCM_RIGHTS); or IBDBG_MSG_ERROR if there is none. */
  IBDBG_MSG_FORKED = 8,
  /* agent -> lib, before SUSPEND: hold the verbs posts and let this
   * process's sends complete while every backend of the job still runs
   * (capture/verbs/README.md, the job-wide drain barrier).  A RESUME instead
   * of the SUSPEND that follows releases the posts. */
  IBDBG_MSG_PRESUSPEND = 9,
  /* lib -> agent: posts held, own sends complete (or IBDBG_MSG_ERROR) */
  IBDBG_MSG_PRESUSPENDED = 10,
  /* After a replay, lib -> agent (no payload): the process's verbs record,
   * please.  agent -> lib: uint32 length of the target device string, the
   * string, then the record as the image has it (none: no verbs objects). */
  IBDBG_MSG_VERBS_RECORD = 11,
  /* lib -> agent: "key\0value" for the job's name service (no answer). */
  IBDBG_MSG_NS_PUT = 12,
  /* lib -> agent: "key"; agent -> lib: the value, once some process put it. */
  IBDBG_MSG_NS_GET = 13,
  /* agent -> lib, while stopped: make a userfaultfd for write tracking
   * (asynchronous write protection, incremental capture) and hand it over. */
  IBDBG_MSG_TRACK = 14,
  /* lib -> agent: no payload, the userfaultfd attached (SCM_RIGHTS; the
   * library keeps no copy); or IBDBG_MSG_ERROR saying why there is none. */
  IBDBG_MSG_TRACKER = 15,
};

struct ibdbg_msg_hdr {
  uint32_t type;
  uint32_t len; /* payload bytes that follow */
};

struct ibdbg_hello {
  int32_t pid;
  int32_t restarted; /* generation: 0 = first run, N = after N replays */
  char exe[512];
};

/* The metadata blob is a sequence of (ibdbg_blob_hdr, payload) items. */
enum ibdbg_blob_type {
  IBDBG_BLOB_PROCESS = 1, /* ibdbg_process_info */
  IBDBG_BLOB_THREAD = 2,  /* ibdbg_thread_info, one per thread */
  IBDBG_BLOB_SIGNALS = 3, /* ibdbg_signal_state */
  IBDBG_BLOB_FD = 4,      /* ibdbg_fd_info, one per descriptor, then its data */
  IBDBG_BLOB_FDDATA = 5,  /* bytes that belong to the preceding FD item */
  IBDBG_BLOB_VERBS = 6,   /* ibdbg_verbs_hdr + objects (the verbs layer's state) */
};

struct ibdbg_blob_hdr {
  uint32_t type;
  uint32_t len;
};

struct ibdbg_process_info {
  uint32_t proto_version;
  int32_t pid, ppid, pgid, sid;
  uint32_t umask;
  uint32_t generation;
  int32_t dumpable;
  uint64_t start_code, end_code, start_data, end_data;
  uint64_t start_brk, brk, start_stack;
  uint64_t arg_start, arg_end, env_start, env_end;
  uint64_t auxv[IBDBG_AUXV_WORDS];
  uint32_t auxv_words;
  uint32_t nthreads;
  /* Where the library keeps its ibdbg_restart_info: the restorer fills it. */
  uint64_t restart_info_addr;
  int32_t control_fd; /* the library's own socket: not part of the application */
  int32_t ckpt_signal;
  struct {
    uint64_t cur, max;
  } rlimits[16];
  char cwd[IBDBG_PATH_MAX];
  char exe[IBDBG_PATH_MAX];
  char comm[16];
  char hostname[64];
  int64_t capture_time_ns; /* CLOCK_REALTIME */
};

enum ibdbg_thread_flags {
  IBDBG_THREAD_MAIN = 1, /* tid == pid */
  IBDBG_THREAD_CKPT = 2, /* the library's own checkpoint thread */
  /* started by the verbs backend (softrdma's progress thread): not the
   * application's; a replay that loads the backend anew leaves it out */
  IBDBG_THREAD_BACKEND = 4,
};

struct ibdbg_thread_info {
  int32_t tid;
  uint32_t flags;
  uint64_t fs_base;
  /* The thread sits in a signal handler; its whole user context is the
   * kernel's rt_sigframe whose ucontext starts here.  rt_sigreturn with
   * rsp = uc_addr brings it back exactly where it was interrupted. */
  uint64_t uc_addr;
  uint64_t resume_rip; /* for display: where the application was */
  uint64_t resume_rsp;
  uint64_t clear_child_tid;
  uint64_t rseq_addr;
  uint32_t rseq_len;
  uint32_t rseq_sig;
  uint64_t altstack_sp, altstack_size;
  int32_t altstack_flags;
  uint32_t pad;
  char name[16];
};

struct ibdbg_ksigaction {
  uint64_t handler;
  uint64_t flags;
  uint64_t restorer;
  uint64_t mask;
};

struct ibdbg_itimer {
  int64_t interval_sec, interval_usec, value_sec, value_usec;
};

struct ibdbg_pending_signal {
  int32_t tid; /* 0 = process-wide */
  int32_t signo;
  uint8_t siginfo[128];
};

#define IBDBG_MAX_PENDING 64
struct ibdbg_signal_state {
  struct ibdbg_ksigaction act[IBDBG_NSIG]; /* index = signo - 1 */
  struct ibdbg_itimer itimer[3];           /* REAL, VIRTUAL, PROF */
  uint32_t npending;
  uint32_t ckpt_signal;
  struct ibdbg_pending_signal pending[IBDBG_MAX_PENDING];
};

enum ibdbg_fd_kind {
  IBDBG_FD_FILE = 1,    /* regular file or directory, reopened by path */
  IBDBG_FD_TTY = 2,     /* a terminal: reattached to the replaying one */
  IBDBG_FD_PIPE = 3,    /* pipe; ends matched by pipe_id; data in FDDATA */
  IBDBG_FD_DEVNULL = 4, /* character devices reopened by path */
  IBDBG_FD_SOCKET_LISTEN = 5,
  IBDBG_FD_OTHER = 6,   /* not carried: replay gives a closed connection */
  /* For these the data is the kernel's /proc fdinfo text of the descriptor. */
  IBDBG_FD_EVENTFD = 7,
  IBDBG_FD_TIMERFD = 8,
  IBDBG_FD_SIGNALFD = 9,
  IBDBG_FD_EPOLL = 10,  /* recreated after every other descriptor */
  /* A connected stream socket (TCP, or unix); data = its receive queue.  Both
   * ends in the image: reconnected; a peer outside: replay closes it. */
  IBDBG_FD_SOCKET_CONN = 11,
  /* A message socket without a connection of its own: unix SOCK_DGRAM or UDP,
   * bound, connected or neither.  data = its queued messages (below). */
  IBDBG_FD_SOCKET_DGRAM = 12,
  /* A pseudo-terminal pair made inside the job.  The data of either is an
   * ibdbg_pty_state; a master's is followed by the bytes in flight (out_len
   * the slave wrote, then in_len written to the master). */
  IBDBG_FD_PTY_MASTER = 13, /* /dev/ptmx */
  /* /dev/pts/N: paired with the job's master of index N at replay; without
   * one it is the job's terminal, replayed as IBDBG_FD_TTY. */
  IBDBG_FD_PTY_SLAVE = 14,
  /* A named FIFO: reopened by name (made again if missing); data = the bytes
   * it held, as for pipes. */
  IBDBG_FD_FIFO = 15,
};

/* The queued messages of a message socket (SOCKET_DGRAM, and SOCKET_CONN of
 * type SOCK_SEQPACKET), oldest first: each is this header, addr_len bytes of
 * the sender's address (0: none, as from an unnamed unix socket), then len
 * bytes of payload. */
struct ibdbg_sock_msg {
  uint32_t len;
  uint32_t addr_len;
};

struct ibdbg_fd_info {
  int32_t fd;
  uint32_t kind;
  int32_t open_flags; /* F_GETFL */
  int32_t fd_flags;   /* F_GETFD */
  uint64_t offset;
  uint64_t size;
  uint64_t pipe_id; /* inode of the pipe */
  uint32_t mode;    /* st_mode */
  int32_t deleted;  /* a regular file unlinked while open: content in FDDATA;
                       IBDBG_FD_SCRATCH_COPY: a scratch file's content, made
                       again at replay where the file is missing */
  int32_t sock_family, sock_type;
  uint8_t sock_addr[128];
  uint32_t sock_addr_len;
  int32_t sock_backlog;
  uint8_t peer_addr[128];
  uint32_t peer_addr_len;
  uint32_t sock_opts; /* IBDBG_SOCKOPT_* */
  uint64_t sock_id;   /* inode of the socket */
  uint64_t peer_id;   /* unix: inode of the peer socket */
  char path[IBDBG_PATH_MAX];
  /* Regular files: (major << 32 | minor) and inode, so that descriptors and
   * shared mappings of one deleted file or memfd stay one object at replay. */
  uint64_t file_dev;
  uint64_t file_ino;
};
/* The data of IBDBG_FD_PTY_MASTER / IBDBG_FD_PTY_SLAVE. */
struct ibdbg_pty_state {
  uint32_t index;   /* N of /dev/pts/N (TIOCGPTN of the master, minor of the slave) */
  uint32_t flags;   /* IBDBG_PTY_* */
  uint64_t devpts_dev; /* st_dev of the slave: which devpts instance N is of (0: unknown) */
  uint8_t termios[64]; /* the slave's settings as the C library's struct termios (x86-64: 60 bytes) */
  uint16_t winsize[4]; /* rows, cols, xpixel, ypixel */
  uint32_t out_len; /* master only: bytes the slave wrote that the master has not read */
  uint32_t in_len;  /* master only: bytes written to the master that the slave has not read */
};
#define IBDBG_PTY_LOCKED 1u  /* TIOCGPTLCK: the slave may not be opened */
#define IBDBG_PTY_PACKET 2u  /* TIOCGPKT: packet mode on the master */
#define IBDBG_PTY_TERMIOS 4u /* termios and winsize are valid */
/* A job's scratch file (under /tmp, /var/tmp or /dev/shm, open for writing,
 * at most IBDBG_SCRATCH_MAX bytes): its content is kept, since the job may
 * remove it when it ends (Open MPI's session directory) and another machine
 * lacks it. */
#define IBDBG_FD_SCRATCH_COPY 2
#define IBDBG_SCRATCH_MAX (16u << 20)
#define IBDBG_SOCKOPT_NODELAY 1u
#define IBDBG_SOCKOPT_KEEPALIVE 2u
/* The socket's own shutdown state (a half-closed connection). */
#define IBDBG_SOCKOPT_SHUT_RD 4u
#define IBDBG_SOCKOPT_SHUT_WR 8u
/* Datagram sockets: set before binding again. */
#define IBDBG_SOCKOPT_REUSEADDR 16u
#define IBDBG_SOCKOPT_REUSEPORT 32u
#define IBDBG_SOCKOPT_BROADCAST 64u
#define IBDBG_SOCKOPT_V6ONLY 128u /* an IPv6 socket that does not take IPv4 */

/* ---- memory regions as the image records them ------------------------------ */
enum ibdbg_image_vma_kind {
  IBDBG_IVMA_ANON = 1,         /* private anonymous: present pages stored */
  IBDBG_IVMA_FILE = 2,         /* private file mapping: copy-on-write pages stored */
  IBDBG_IVMA_FILE_SHARED = 3,  /* shared file mapping: the file holds the data */
  IBDBG_IVMA_SHARED_ANON = 4,  /* shared anonymous / memfd / SysV: pages stored */
  IBDBG_IVMA_VDSO = 5,
  IBDBG_IVMA_VVAR = 6,
  IBDBG_IVMA_VVAR_VCLOCK = 7,
  IBDBG_IVMA_HEAP = 8,
  IBDBG_IVMA_STACK = 9,
  IBDBG_IVMA_FILE_DELETED = 10, /* private mapping of a deleted file: pages stored */
  /* A SysV shared memory attachment: inode = shmid; the segment's bytes are in
   * its ibdbg_ipc_object record, not in pages. */
  IBDBG_IVMA_SYSV_SHM = 11,
};

struct ibdbg_image_vma {
  uint64_t start, end, offset;
  uint32_t prot;
  uint32_t kind;
  uint32_t shared;
  uint32_t deleted;
  uint64_t inode;
  uint32_t dev_major, dev_minor;
  uint64_t file_size;
  int64_t file_mtime_ns;
  uint64_t data_pages;
  char path[IBDBG_PATH_MAX];
};

/* ---- objects of the job's IPC namespace and shared files -------------------- */
/* One image record (RecordType::Ipc) per object a process uses, followed by
 * its bytes: a SysV shm segment's contents, a semaphore set's values (nsems
 * uint16), a queue's messages (each: int64 type, uint64 length, bytes), a
 * shared file's contents.  Several processes' images may carry the same
 * object: the replay makes it once. */
enum ibdbg_ipc_kind {
  IBDBG_IPC_SHM = 1,
  IBDBG_IPC_SEM = 2,
  IBDBG_IPC_MSG = 3,
  /* A file in /dev/shm (POSIX shared memory): recreated by name, contents
   * included, in the replay's own /dev/shm. */
  IBDBG_IPC_SHMFILE = 4,
  /* The whole memory object (dev, ino) behind shared mappings of a deleted
   * file, a memfd or MAP_SHARED|MAP_ANONYMOUS memory, when the agent may
   * open it (/proc/PID/map_files): bytes = extents (uint64 offset, uint64
   * length, bytes); the mappings' pages are then not stored. */
  IBDBG_IPC_SHMEM = 5,
};
#define IBDBG_IPC_REMOVED 1u /* SysV: marked for removal (IPC_RMID) while in use */
/* Its bytes are in another process's image of the same capture. */
#define IBDBG_IPC_ELSEWHERE 2u

struct ibdbg_ipc_object {
  uint32_t kind;
  uint32_t flags;
  int32_t id; /* SysV id */
  int32_t key;
  uint32_t mode; /* SysV: permission bits; files: st_mode */
  uint32_t uid, gid;
  uint32_t count; /* sem: number of semaphores; msg: number of messages */
  uint64_t size;  /* shm: segment size; msg: queue byte limit; file: size */
  uint64_t dev, ino;
  char path[IBDBG_PATH_MAX];
};

/* Filled by the restorer into the library's memory before threads run. */
struct ibdbg_restart_info {
  uint64_t magic; /* IBDBG_RESTART_MAGIC when valid */
  uint32_t generation;
  int32_t gdb_mode;
  char agent[108]; /* the new agent's socket name */
  char job_dir[IBDBG_PATH_MAX];
};
#define IBDBG_RESTART_MAGIC 0x7472617473657269ull /* "iresta rt" */

/* ---- replay launcher -> restorer, over a pipe ---------------------------- */
#define IBDBG_PLAN_MAGIC 0x4e414c5047424449ull /* "IDBGPLAN" */

enum ibdbg_vma_kind {
  IBDBG_VMA_ANON = 1,
  IBDBG_VMA_FILE = 2,   /* mmap of plan_vma.fd at offset */
  IBDBG_VMA_VDSO = 3,   /* [vdso]/[vvar]/[vvar_vclock]: moved, not mapped */
  IBDBG_VMA_VVAR = 4,
  IBDBG_VMA_VVAR_VCLOCK = 5,
  /* A SysV shm attachment: segment id in `flags` (fd stays -1: it is no
   * descriptor), its byte `offset` placed at start. */
  IBDBG_VMA_SYSV = 6,
  IBDBG_VMA_FILL = 0x100, /* flag: the launcher writes its pages after 'M' */
  IBDBG_VMA_GROWSDOWN = 0x200,
  IBDBG_VMA_SHM_RMID = 0x400, /* SYSV: mark the segment removed once attached */
  /* ANON registered with the restorer's userfaultfd: the launcher fills it
   * with UFFDIO_COPY (no zeroed page first), or on demand (lazy). */
  IBDBG_VMA_LAZY = 0x1000,
};

struct ibdbg_plan_vma {
  uint64_t start, end;
  uint32_t kind;
  uint32_t prot;  /* PROT_* */
  uint32_t flags; /* MAP_SHARED / MAP_PRIVATE | MAP_GROWSDOWN ... */
  int32_t fd;     /* for FILE: descriptor inherited from the launcher */
  uint64_t offset;
};

struct ibdbg_plan_thread {
  int32_t tid;
  uint32_t flags;
  uint64_t fs_base;
  uint64_t uc_addr;
  uint64_t clear_child_tid;
  uint64_t rseq_addr;
  uint32_t rseq_len;
  uint32_t rseq_sig;
  uint64_t altstack_sp, altstack_size;
  int32_t altstack_flags;
  uint32_t pad;
  char name[16];
};

struct ibdbg_plan_hdr {
  uint64_t magic;
  uint32_t nvmas;
  uint32_t nthreads;
  int32_t status_fd; /* restorer -> launcher progress bytes */
  int32_t exe_fd;    /* for /proc/self/exe, or -1 */
  int32_t gdb_mode;  /* park threads before rt_sigreturn */
  int32_t close_from; /* descriptors >= this are the launcher's: closed at the end */
  uint32_t ncloexec;  /* then this many int32 descriptors to mark FD_CLOEXEC */
  /* 0: this kernel's vdso block has the captured shape: move it there.
   * 1: it differs: the captured vdso's code is refilled at its address and
   *    each of its functions jumps to this kernel's vdso, placed nearby. */
  uint32_t vdso_patch;
  /* 1: restore only the x87/SSE part of each thread's saved FPU state, as
   * when the image names FPU features this CPU lacks (IBDBG_FP_LEGACY=1
   * forces it, to test it on one machine). */
  uint32_t fp_legacy;
  uint64_t vdso_old; /* with vdso_patch: where the captured vdso starts */
  uint64_t restart_info_addr;
  struct ibdbg_restart_info restart_info;
  struct ibdbg_process_info proc;
  struct ibdbg_signal_state sig;
  /* The restorer makes a userfaultfd, registers the LAZY regions with it
   * and leaves it at this descriptor number for the launcher to take
   * (pidfd_getfd) before 'D'; 0: none. */
  int32_t lazy_uffd_fd;
  /* 1: only for filling before 'D' (UFFD_USER_MODE_ONLY, no events; any
   * user may): without it the launcher writes with process_vm_writev. */
  uint32_t uffd_fill_only;
};

/* ---- verbs state (capture/verbs), image record "verbs" ------------------ */
/* What the verbs layer knew when the process was captured: a header, then
 * nobjs ibdbg_verbs_obj.  Objects name each other by `handle`, the address of
 * the virtual object the application holds (it is in the image's memory). */
#define IBDBG_VERBS_MAGIC 0x3253425245564249ull /* "IBVERBS2": u[40], attributes for replay/translate */
#define IBDBG_VERBS_MAX_TIDS 64
#define IBDBG_VERBS_MAX_FDS 1024
#define IBDBG_VERBS_NU 40
enum ibdbg_verbs_kind {
  IBDBG_VERBS_CONTEXT = 1, /* name: device; u[]: IBDBG_VCTX_*; gid[]: port 1's GID index 0 */
  IBDBG_VERBS_PD = 2,      /* parent[0] context */
  IBDBG_VERBS_MR = 3,      /* parent[0] pd; u[0] addr u[1] length u[2] access u[3] lkey u[4] rkey */
  /* parent[0] context parent[1] channel; u[0] cqe u[1] buffered completions u[2] extended;
   * u[3] u[4]: successful send and receive completions taken from the backend
   * so far (returned to the application or buffered) */
  IBDBG_VERBS_CQ = 4,
  IBDBG_VERBS_QP = 5,      /* parent[0] pd [1] send cq [2] recv cq [3] srq; u[]: IBDBG_VQP_*; gid[]: AV dgid */
  IBDBG_VERBS_SRQ = 6,     /* parent[0] pd; u[0] max_wr u[1] max_sge u[2] srq_limit u[3] receives posted */
  IBDBG_VERBS_AH = 7,      /* parent[0] pd; u[]: IBDBG_VAH_*; gid[] dgid */
  IBDBG_VERBS_CHANNEL = 8, /* parent[0] context; u[0] fd */
  /* A posted receive not yet completed, in posting order: parent[0] the QP or
   * SRQ; u[0] wr_id u[1] num_sge, then per SGE u[2+2i] addr
   * u[3+2i] length | lkey << 32 (at most IBDBG_VERBS_RECV_MAX_SGE). */
  IBDBG_VERBS_RECV = 9,
};
#define IBDBG_VERBS_RECV_MAX_SGE 19
/* A context: its port 1 as the application saw it at capture. */
enum ibdbg_verbs_ctx_field {
  IBDBG_VCTX_CMD_FD = 0, IBDBG_VCTX_ASYNC_FD, IBDBG_VCTX_LINK_LAYER /* IBV_LINK_LAYER_* */, IBDBG_VCTX_LID,
  IBDBG_VCTX_ACTIVE_MTU /* enum ibv_mtu */, IBDBG_VCTX_PORT_STATE, IBDBG_VCTX_GID_TBL_LEN, IBDBG_VCTX_PHYS_PORT_CNT,
  /* The first NGIDS entries of port 1's GID table (a peer's dgid names one
   * of them), 2 words each (raw bytes) from GIDS on. */
  IBDBG_VCTX_NGIDS, IBDBG_VCTX_GIDS,
};
#define IBDBG_VCTX_MAX_GIDS 8
/* A QP: ids, caps, and every attribute modify_qp set (mask in ATTR_MASK). */
enum ibdbg_verbs_qp_field {
  IBDBG_VQP_QPN = 0, IBDBG_VQP_TYPE, IBDBG_VQP_STATE, IBDBG_VQP_MAX_SEND_WR, IBDBG_VQP_MAX_RECV_WR,
  IBDBG_VQP_MAX_SEND_SGE, IBDBG_VQP_MAX_RECV_SGE, IBDBG_VQP_MAX_INLINE, IBDBG_VQP_DEST_QPN,
  IBDBG_VQP_RQ_PSN, IBDBG_VQP_SQ_PSN, IBDBG_VQP_DLID, IBDBG_VQP_PORT, IBDBG_VQP_QKEY,
  IBDBG_VQP_SENDS_OUTSTANDING, IBDBG_VQP_RECVS_POSTED,
  IBDBG_VQP_ATTR_MASK, IBDBG_VQP_PATH_MTU, IBDBG_VQP_PKEY_INDEX, IBDBG_VQP_ACCESS_FLAGS,
  IBDBG_VQP_SL, IBDBG_VQP_SRC_PATH_BITS, IBDBG_VQP_STATIC_RATE, IBDBG_VQP_IS_GLOBAL,
  IBDBG_VQP_SGID_INDEX, IBDBG_VQP_HOP_LIMIT, IBDBG_VQP_TRAFFIC_CLASS, IBDBG_VQP_FLOW_LABEL,
  IBDBG_VQP_TIMEOUT, IBDBG_VQP_RETRY_CNT, IBDBG_VQP_RNR_RETRY, IBDBG_VQP_MIN_RNR_TIMER,
  IBDBG_VQP_MAX_RD_ATOMIC, IBDBG_VQP_MAX_DEST_RD_ATOMIC, IBDBG_VQP_SQ_SIG_ALL,
  IBDBG_VQP_NFIELDS /* <= IBDBG_VERBS_NU */
};
/* An address handle: every field of its ibv_ah_attr. */
enum ibdbg_verbs_ah_field {
  IBDBG_VAH_DLID = 0, IBDBG_VAH_PORT, IBDBG_VAH_IS_GLOBAL, IBDBG_VAH_SGID_INDEX, IBDBG_VAH_SL,
  IBDBG_VAH_SRC_PATH_BITS, IBDBG_VAH_STATIC_RATE, IBDBG_VAH_HOP_LIMIT, IBDBG_VAH_TRAFFIC_CLASS,
  IBDBG_VAH_FLOW_LABEL,
};
struct ibdbg_verbs_obj {
  uint32_t kind;
  uint32_t flags;
  uint64_t handle;
  uint64_t parent[4];
  uint64_t u[IBDBG_VERBS_NU];
  uint8_t gid[16];
  char name[64];
};
struct ibdbg_verbs_hdr {
  uint64_t magic;
  uint32_t nobjs;
  uint32_t generation; /* 0 until a replay: ids are the backend's own */
  uint64_t posts_blocked; /* posts held at the gate during the capture */
  char backend[128];      /* the library that implemented the verbs */
  char refused[128];      /* unsupported feature used ("" = none) */
  /* What the backend started or opened inside the verbs calls that make
   * objects (its progress threads, sockets, epoll and event descriptors): not
   * the application's state.  The descriptors the application sees (channel
   * fds, the context's async_fd) are among them and named by their objects. */
  uint32_t nbackend_tids, nbackend_fds;
  int32_t backend_tids[IBDBG_VERBS_MAX_TIDS];
  int32_t backend_fds[IBDBG_VERBS_MAX_FDS];
  /* The fabric the image is for: IBV_LINK_LAYER_* of the contexts' ports at
   * capture, rewritten by `ibdbg translate` (which also rewrites the QPs' and
   * AHs' paths: GRH, sgid index, path MTU); 0 = unknown.  A replay on a
   * device of another link layer refuses and says to translate. */
  uint32_t link_layer;
  uint32_t translated; /* 1 once `ibdbg translate` rewrote this record */
  uint32_t reserved[14];
};

/* Bytes the restorer writes on status_fd. */
#define IBDBG_RST_MAPPED 'M'  /* regions exist; the launcher may fill them now */
#define IBDBG_RST_PARKED 'P'  /* every thread waits before rt_sigreturn */
#define IBDBG_RST_FAILED 'F'  /* followed by a NUL-terminated message */
/* Launcher -> restorer on the plan pipe after filling memory. */
#define IBDBG_RST_FILLED 'D'

#ifdef __cplusplus
}
#endif
#endif
