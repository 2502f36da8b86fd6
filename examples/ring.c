/* ring: an MPI job with an answer to check.
 *
 * Every round, rank 0 sends a block of numbers around the ring; each rank
 * adds its rank and the round to every element before passing it on.  Rank 0
 * folds what comes back into a running checksum, and at the end prints the
 * checksum and whether it equals the one computed without any MPI at all.
 * A job replayed from an image prints the same line as one never interrupted.
 *
 * With MEET=1, each rank then also meets the rank two places on, which it
 * never talked to before (after a replay: a connection made anew), and the
 * line says whether all of them got what they should.
 *
 *   mpirun -np 4 ./ring [ROUNDS [SLEEP_US [ELEMENTS [MEET]]]]
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  long rounds = argc > 1 ? atol(argv[1]) : 2000;
  long sleep_us = argc > 2 ? atol(argv[2]) : 1000;
  long n = argc > 3 ? atol(argv[3]) : 1024;
  int meet = argc > 4 ? atoi(argv[4]) : 0;
  uint64_t* buf = malloc(n * sizeof *buf);
  uint64_t sum = 0;
  int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  for (long r = 0; r < rounds; r++) {
    if (rank == 0) {
      for (long i = 0; i < n; i++) buf[i] = (uint64_t)(r * n + i);
      if (size > 1) {
        MPI_Send(buf, (int)n, MPI_UINT64_T, next, 0, MPI_COMM_WORLD);
        MPI_Recv(buf, (int)n, MPI_UINT64_T, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      }
      for (long i = 0; i < n; i++) sum = mix(sum, buf[i]);
      if (r == rounds / 10) {
        printf("ring: running (round %ld of %ld)\n", r, rounds);
        fflush(stdout);
      }
    } else {
      MPI_Recv(buf, (int)n, MPI_UINT64_T, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      for (long i = 0; i < n; i++) buf[i] += (uint64_t)(rank + r);
      MPI_Send(buf, (int)n, MPI_UINT64_T, next, 0, MPI_COMM_WORLD);
    }
    if (sleep_us) usleep((useconds_t)sleep_us);
  }
  int met_all = 0;
  if (meet && size > 2) {
    long v = rank * 10;
    int from = (rank + size - 2) % size;
    MPI_Sendrecv_replace(&v, 1, MPI_LONG, (rank + 2) % size, 1, from, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    int met = v == from * 10;
    MPI_Reduce(&met, &met_all, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  }
  if (rank == 0) {
    uint64_t want = 0;
    for (long r = 0; r < rounds; r++)
      for (long i = 0; i < n; i++) {
        uint64_t v = (uint64_t)(r * n + i);
        for (int k = 1; k < size; k++) v += (uint64_t)(k + r);
        want = mix(want, v);
      }
    int ok = sum == want && (!meet || size <= 2 || met_all == size);
    if (meet)
      printf("ring: %d ranks, %ld rounds, checksum %016llx, new peers met %d of %d %s\n", size, rounds,
             (unsigned long long)sum, met_all, size, ok ? "OK" : "MISMATCH");
    else
      printf("ring: %d ranks, %ld rounds, checksum %016llx %s\n", size, rounds, (unsigned long long)sum,
             ok ? "OK" : "MISMATCH");
    fflush(stdout);
  }
  free(buf);
  MPI_Finalize();
  return 0;
}
