/* SysV IPC: a keyed shared memory segment attached by parent and child (one
 * page of it made read-only, so the attachment is in three pieces), a segment
 * the child attached and removed, a semaphore set, a message queue holding
 * typed messages; the child waits in msgrcv and a thread of it in semop
 * while it is captured.  After replay: the same ids and keys, modes,
 * contents, semaphore values and messages in order, the segment still
 * shared, and the waits go on (no EINTR) until the parent releases them. */
#include "zdtm.h"

#include <libgen.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define PG 4096UL
#define SHM_LEN (3 * PG + 100)

union semun {
  int val;
  struct semid_ds *buf;
  unsigned short *array;
};
struct msgbuf_ {
  long type;
  char text[256];
};
static const long types[] = {5, 1, 7, 5};
static const char *texts[] = {"first", "second message, a longer one", "", "fourth"};

static unsigned char pat(size_t i) { return (unsigned char)(i * 7 + 3 + (i >> 12)); }
static int shm_ok(const unsigned char *p) {
  for (size_t i = 0; i < SHM_LEN; i++)
    if (i != 3 * PG && i != 3 * PG + 1 && p[i] != pat(i)) return 0;
  return 1;
}

static int perms_are(void *addr, const char *want) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  int ok = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char pm[5];
    if (sscanf(line, "%lx-%lx %4s", &s, &e, pm) == 3 && (unsigned long)addr >= s && (unsigned long)addr < e)
      ok = strcmp(pm, want) == 0;
  }
  if (f) fclose(f);
  return ok;
}

static int g_semid, g_msqid;
static void *sem_waiter(void *arg) {
  (void)arg;
  struct sembuf op = {0, -4, 0}; /* 3 now: waits for the parent's +1 */
  return (void *)(long)(semop(g_semid, &op, 1) == 0 ? 0 : 128);
}

static int child(unsigned char *shm, int up) {
  pthread_t th;
  pthread_create(&th, NULL, sem_waiter, NULL);
  int pid_ = shmget(IPC_PRIVATE, 2 * PG, 0600);
  unsigned char *priv = shmat(pid_, NULL, 0);
  if (priv == (void *)-1) return 64;
  memset(priv, 'P', 2 * PG);
  shmctl(pid_, IPC_RMID, NULL); /* gone once detached */
  usleep(100 * 1000); /* the thread is in semop by now */
  write(up, "r", 1);
  int bad = 0;
  struct msgbuf_ wake;
  if (msgrcv(g_msqid, &wake, sizeof wake.text, 9, 0) != 4 || memcmp(wake.text, "wake", 4) != 0) bad |= 16;
  if (!shm_ok(shm)) bad |= 1;
  for (size_t i = 0; i < 2 * PG; i++)
    if (priv[i] != 'P') {
      bad |= 2;
      break;
    }
  struct shmid_ds ds;
  if (shmctl(pid_, IPC_STAT, &ds) != 0 || !(ds.shm_perm.mode & SHM_DEST)) bad |= 4;
  /* Sharing: the parent writes one byte after the replay, we answer. */
  volatile unsigned char *v = shm;
  for (int i = 0; i < 5000 && v[3 * PG] != 0x55; i++) usleep(1000);
  if (v[3 * PG] != 0x55) bad |= 8;
  v[3 * PG + 1] = 0x66;
  void *res;
  pthread_join(th, &res);
  return bad | (int)(long)res;
}

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  const char *dir = dirname(strdup(argv[1]));
  key_t base = 0x1bd00000 | ((getpid() & 0xffff) << 4);
  int shmid = shmget(base + 1, SHM_LEN, IPC_CREAT | IPC_EXCL | 0640);
  int semid = semget(base + 2, 3, IPC_CREAT | IPC_EXCL | 0600);
  int msqid = msgget(base + 3, IPC_CREAT | IPC_EXCL | 0620);
  if (shmid < 0 || semid < 0 || msqid < 0) return perror("get"), 2;
  /* The objects outlive the killed original: the harness removes them. */
  char path[4096];
  snprintf(path, sizeof path, "%s/ipc-cleanup", dir);
  FILE *cf = fopen(path, "w");
  /* A queue whose byte limit root raised above the system's default (as
   * nobody the raise fails and the default stays): full of 6000-byte messages. */
  int bigq = msgget(base + 4, IPC_CREAT | IPC_EXCL | 0600);
  /* Made and never used: no pid of ours in it, only our user and its time. */
  int idle = semget(base + 5, 2, IPC_CREAT | IPC_EXCL | 0600);
  if (cf) fprintf(cf, "m %d\ns %d\nq %d\nq %d\ns %d\n", shmid, semid, msqid, bigq, idle), fclose(cf);
  struct msqid_ds bds;
  msgctl(bigq, IPC_STAT, &bds);
  bds.msg_qbytes = 30000;
  msgctl(bigq, IPC_SET, &bds);
  msgctl(bigq, IPC_STAT, &bds);
  unsigned long big_qbytes = bds.msg_qbytes, nbig = bds.msg_qbytes / 6000;
  static struct {
    long type;
    char text[6000];
  } big;
  for (unsigned long k = 0; k < nbig; k++) {
    big.type = 100 + (long)k;
    memset(big.text, 'a' + (int)k, sizeof big.text);
    if (msgsnd(bigq, &big, sizeof big.text, IPC_NOWAIT) != 0) return perror("msgsnd big"), 2;
  }

  unsigned char *shm = shmat(shmid, NULL, 0);
  if (shm == (void *)-1) return perror("shmat"), 2;
  for (size_t i = 0; i < SHM_LEN; i++) shm[i] = pat(i);
  shm[3 * PG] = shm[3 * PG + 1] = 0;
  mprotect(shm + PG, PG, PROT_READ);

  unsigned short init[3] = {3, 0, 7};
  union semun u = {.array = init};
  semctl(semid, 0, SETALL, u);
  struct sembuf op = {1, 2, 0};
  semop(semid, &op, 1);

  for (int i = 0; i < 4; i++) {
    struct msgbuf_ m = {types[i], ""};
    strcpy(m.text, texts[i]);
    if (msgsnd(msqid, &m, strlen(texts[i]), 0) != 0) return perror("msgsnd"), 2;
  }

  g_semid = semid;
  g_msqid = msqid;
  int up[2];
  pipe(up);
  pid_t c = fork();
  if (c == 0) _exit(child(shm, up[1]));
  char r;
  if (read(up[0], &r, 1) != 1) return 2;
  zdtm_ready();
  zdtm_wait_go();

  ZDTM_CHECK(shmget(base + 1, 0, 0) == shmid, "the segment's key no longer finds id %d", shmid);
  ZDTM_CHECK(semget(base + 2, 0, 0) == semid, "the semaphore set's key no longer finds id %d", semid);
  ZDTM_CHECK(msgget(base + 3, 0) == msqid, "the queue's key no longer finds id %d", msqid);
  struct shmid_ds sds;
  ZDTM_CHECK(shmctl(shmid, IPC_STAT, &sds) == 0 && sds.shm_segsz == SHM_LEN && (sds.shm_perm.mode & 0777) == 0640,
             "segment size or mode wrong");
  ZDTM_CHECK(shm_ok(shm), "segment contents wrong");
  ZDTM_CHECK(perms_are(shm, "rw-s") && perms_are(shm + PG, "r--s") && perms_are(shm + 2 * PG, "rw-s"),
             "the attachment's permissions changed");

  unsigned short vals[3] = {0};
  u.array = vals;
  ZDTM_CHECK(semctl(semid, 0, GETALL, u) == 0 && vals[0] == 3 && vals[1] == 2 && vals[2] == 7,
             "semaphore values %u %u %u, expected 3 2 7", vals[0], vals[1], vals[2]);
  struct sembuf inc = {0, 1, 0};
  ZDTM_CHECK(semop(semid, &inc, 1) == 0, "cannot add to semaphore 0");
  struct sembuf dec = {2, -7, IPC_NOWAIT};
  ZDTM_CHECK(semop(semid, &dec, 1) == 0, "cannot take 7 from semaphore 2");
  ZDTM_CHECK(semop(semid, &dec, 1) == -1 && errno == EAGAIN, "semaphore 2 had more than 7");
  struct semid_ds semds;
  u.buf = &semds;
  ZDTM_CHECK(semctl(semid, 0, IPC_STAT, u) == 0 && (semds.sem_perm.mode & 0777) == 0600, "semaphore set mode wrong");

  ZDTM_CHECK(semget(base + 5, 0, 0) == idle, "the semaphore set nobody used is gone");
  struct msqid_ds mds;
  ZDTM_CHECK(msgctl(msqid, IPC_STAT, &mds) == 0 && mds.msg_qnum == 4 && (mds.msg_perm.mode & 0777) == 0620,
             "queue holds %lu messages (expected 4) or its mode changed", (unsigned long)mds.msg_qnum);
  struct msgbuf_ m;
  memset(&m, 0, sizeof m);
  ZDTM_CHECK(msgrcv(msqid, &m, sizeof m.text, 7, IPC_NOWAIT) == 0 && m.type == 7, "the empty type-7 message is lost");
  static const int order[] = {0, 1, 3};
  for (int k = 0; k < 3; k++) {
    memset(&m, 0, sizeof m);
    ssize_t n = msgrcv(msqid, &m, sizeof m.text, 0, IPC_NOWAIT);
    int i = order[k];
    ZDTM_CHECK(n == (ssize_t)strlen(texts[i]) && m.type == types[i] && strcmp(m.text, texts[i]) == 0,
               "message %d: type %ld '%s', expected type %ld '%s'", k, m.type, n >= 0 ? m.text : "", types[i], texts[i]);
  }

  ZDTM_CHECK(msgctl(bigq, IPC_STAT, &bds) == 0 && bds.msg_qbytes == big_qbytes && bds.msg_qnum == nbig,
             "big queue: limit %lu and %lu messages, expected %lu and %lu", (unsigned long)bds.msg_qbytes,
             (unsigned long)bds.msg_qnum, big_qbytes, nbig);
  for (unsigned long k = 0; k < nbig; k++) {
    memset(&big, 0, sizeof big);
    int ok = msgrcv(bigq, &big, sizeof big.text, 0, IPC_NOWAIT) == (ssize_t)sizeof big.text && big.type == 100 + (long)k;
    for (size_t i = 0; ok && i < sizeof big.text; i++) ok = big.text[i] == 'a' + (int)k;
    ZDTM_CHECK(ok, "big queue: message %lu wrong", k);
  }
  struct msgbuf_ wake = {9, "wake"};
  ZDTM_CHECK(msgsnd(msqid, &wake, 4, 0) == 0, "cannot send to the queue");
  volatile unsigned char *v = shm;
  v[3 * PG] = 0x55;
  for (int i = 0; i < 5000 && v[3 * PG + 1] != 0x66; i++) usleep(1000);
  ZDTM_CHECK(v[3 * PG + 1] == 0x66, "the segment is no longer shared between parent and child");
  int st;
  ZDTM_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "the child found its state wrong (bits %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  ZDTM_CHECK(shmdt(shm) == 0, "shmdt of the attachment's address failed");
  shmctl(shmid, IPC_RMID, NULL);
  semctl(semid, 0, IPC_RMID);
  msgctl(msqid, IPC_RMID, NULL);
  return zdtm_verdict();
}
