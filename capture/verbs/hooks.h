/* Between libibdbg_capture.so (the checkpoint thread) and libibdbg_verbs.so
 * (the verbs layer).  Both are preloaded; the capture runtime finds this table
 * with dlsym(RTLD_DEFAULT, "ibdbg_verbs_hooks") and works without it (a job
 * whose environment lost the verbs layer has no verbs objects of ours). */
#ifndef IBDBG_VERBS_HOOKS_H
#define IBDBG_VERBS_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IBDBG_VERBS_HOOKS_VERSION 3

/* What a replayed process gets to rebuild its verbs objects (the checkpoint
 * thread asks the agent for it). */
struct ibdbg_verbs_replay_env {
  const void* record; /* the verbs record as the image has it (after translate) */
  size_t record_len;
  const char* device; /* "" = as recorded, "softrdma:ib", "softrdma:roce", or a device name */
  /* The job's name service: put does not wait; get waits for the key. */
  int (*ns_put)(const char* key, const char* value);
  int (*ns_get)(const char* key, char* value, size_t cap);
};

struct ibdbg_verbs_hooks {
  uint32_t version;
  /* Application threads still run.  presuspend() then drain(), for a
   * capture without the job-wide barrier.  Returns NULL, or a one-line
   * reason why this process cannot be captured faithfully (posts stay
   * blocked until resume() either way). */
  const char* (*quiesce)(void);
  /* Every other thread is stopped: no locks, no allocation.  Writes the
   * verbs state record (ibdbg_verbs_hdr + objects, proto.h) into buf and
   * returns its length (0: no verbs objects, or cap too small). */
  size_t (*describe)(void* buf, size_t cap);
  /* The image is written (or abandoned) and the process runs on. */
  void (*resume)(void);
  /* Nonzero for a thread the backend started (no locks: called by each
   * thread in the checkpoint signal's handler). */
  int (*is_backend_thread)(int tid);
  /* Version 2: the job-wide drain barrier (README.md).  Application threads
   * and every backend of the job run.  Blocks new sends and control verbs
   * (receives may still be posted: a peer's last sends may need them), waits
   * (bounded) until every send posted on this process's QPs, signaled or
   * not, has completed, moving the completions on the way into the buffers
   * the application's next polls return first. */
  const char* (*presuspend)(void);
  /* After every process of the job is presuspended (nothing of anyone's in
   * flight): blocks receives too, takes what is left in every CQ (the
   * receive completions the peers' last sends produced) into the buffers,
   * and asks the backend for the descriptors and threads it owns. */
  const char* (*drain)(void);
  /* In a replayed process, before resume(): loads the backend fresh and
   * rebuilds every object (capture/verbs/README.md).  Application threads
   * run; posts are still held.  NULL, or a one-line reason. */
  const char* (*restart)(const struct ibdbg_verbs_replay_env* env);
};

#ifdef __cplusplus
}
#endif
#endif
