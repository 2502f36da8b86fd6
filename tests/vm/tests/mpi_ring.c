/* mpi_ring: a small MPI program with answers that can be checked, for the vm tier.
 *
 *   1. A token goes round the ring of ranks ROUNDS times; every rank adds its rank + 1 on each
 *      pass, so rank 0 must get back ROUNDS * size * (size + 1) / 2.
 *   2. Rank 0 sends BIG bytes (a pattern) to the last rank, which checks them and sends them
 *      back; large enough for a rendezvous (zero-copy RDMA) transfer.
 *   3. MPI_Allreduce of rank + 1: size * (size + 1) / 2 on every rank.
 *
 * Rank 0 prints where every rank ran and one line "mpi_ring: ... OK" (or "FAILED"); the exit
 * status is 0 only if every check passed on every rank. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROUNDS = 100, BIG = 2 << 20 };

static unsigned char pattern(size_t i, int salt)
{
    return (unsigned char)((i * 131u + (i >> 12) + (unsigned)salt) & 0xff);
}

int main(int argc, char **argv)
{
    int rank, size, failures = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    char name[MPI_MAX_PROCESSOR_NAME] = {0};
    int len;
    MPI_Get_processor_name(name, &len);
    char *names = NULL;
    if (rank == 0)
        names = calloc((size_t)size, MPI_MAX_PROCESSOR_NAME);
    MPI_Gather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0,
               MPI_COMM_WORLD);
    if (rank == 0)
        for (int r = 0; r < size; r++)
            printf("mpi_ring: rank %d of %d on %s\n", r, size, names + (size_t)r * MPI_MAX_PROCESSOR_NAME);

    /* 1. The token ring. */
    long token = 0;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    for (int round = 0; round < ROUNDS; round++) {
        if (rank == 0) {
            token += 1;
            MPI_Send(&token, 1, MPI_LONG, next, round, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_LONG, prev, round, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_LONG, prev, round, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token += rank + 1;
            MPI_Send(&token, 1, MPI_LONG, next, round, MPI_COMM_WORLD);
        }
    }
    long want_token = (long)ROUNDS * size * (size + 1) / 2;
    if (rank == 0 && token != want_token) {
        printf("mpi_ring: token %ld, expected %ld\n", token, want_token);
        failures++;
    }

    /* 2. A large message there and back, checked at both ends. */
    int last = size - 1;
    unsigned char *buf = malloc(BIG);
    if (!buf)
        MPI_Abort(MPI_COMM_WORLD, 2);
    if (rank == 0) {
        for (size_t i = 0; i < BIG; i++)
            buf[i] = pattern(i, 0);
        MPI_Send(buf, BIG, MPI_BYTE, last, 1000, MPI_COMM_WORLD);
        memset(buf, 0, BIG);
        MPI_Recv(buf, BIG, MPI_BYTE, last, 1001, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (size_t i = 0; i < BIG; i++)
            if (buf[i] != pattern(i, 1)) {
                printf("mpi_ring: rank 0: byte %zu came back as %u, expected %u\n", i, buf[i],
                       pattern(i, 1));
                failures++;
                break;
            }
    } else if (rank == last) {
        MPI_Recv(buf, BIG, MPI_BYTE, 0, 1000, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (size_t i = 0; i < BIG; i++) {
            if (buf[i] != pattern(i, 0)) {
                printf("mpi_ring: rank %d: byte %zu is %u, expected %u\n", rank, i, buf[i], pattern(i, 0));
                failures++;
                break;
            }
            buf[i] = pattern(i, 1);
        }
        MPI_Send(buf, BIG, MPI_BYTE, 0, 1001, MPI_COMM_WORLD);
    }
    free(buf);

    /* 3. A collective. */
    long mine = rank + 1, sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (sum != (long)size * (size + 1) / 2) {
        printf("mpi_ring: rank %d: allreduce %ld, expected %ld\n", rank, sum, (long)size * (size + 1) / 2);
        failures++;
    }

    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("mpi_ring: %d ranks, token %ld (expected %ld), %d MiB there and back, allreduce %ld: %s\n",
               size, token, want_token, BIG >> 20, sum, total ? "FAILED" : "OK");
    fflush(stdout);
    free(names);
    MPI_Finalize();
    return total ? 1 : 0;
}
