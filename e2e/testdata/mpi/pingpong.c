/* pingpong: latency (1-byte messages) and bandwidth (large messages)
 * between ranks 0 and 1. Rank 0 prints machine-readable lines:
 *   pingpong latency_us=<half round trip> bytes=1 iters=N host0=H host1=H
 *   pingpong bandwidth_MBps=<MB/s, 1e6 bytes> bytes=B iters=N
 * Usage: pingpong [latency-iters [bw-bytes [bw-iters]]] */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double run(int rank, char *buf, int n, int iters) {
	double t0;
	int i;
	MPI_Barrier(MPI_COMM_WORLD);
	t0 = MPI_Wtime();
	for (i = 0; i < iters; i++) {
		if (rank == 0) {
			MPI_Send(buf, n, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
			MPI_Recv(buf, n, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		} else if (rank == 1) {
			MPI_Recv(buf, n, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
			MPI_Send(buf, n, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
		}
	}
	return MPI_Wtime() - t0;
}

int main(int argc, char **argv) {
	int rank, size, lat_iters = 2000, bw_bytes = 4 << 20, bw_iters = 50;
	char host[256] = "?", peer[256] = "?";
	char *buf;
	double t;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (argc > 1) lat_iters = atoi(argv[1]);
	if (argc > 2) bw_bytes = atoi(argv[2]);
	if (argc > 3) bw_iters = atoi(argv[3]);
	if (size < 2) {
		fprintf(stderr, "pingpong: needs 2 ranks, got %d\n", size);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	gethostname(host, sizeof host - 1);
	if (rank == 1) MPI_Send(host, sizeof host, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
	if (rank == 0) MPI_Recv(peer, sizeof peer, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
	buf = calloc(1, bw_bytes);
	run(rank, buf, 1, lat_iters / 10 + 1); /* warm up */
	t = run(rank, buf, 1, lat_iters);
	if (rank == 0)
		printf("pingpong latency_us=%.2f bytes=1 iters=%d host0=%s host1=%s\n", t / lat_iters / 2 * 1e6, lat_iters, host, peer);
	run(rank, buf, bw_bytes, 2);
	t = run(rank, buf, bw_bytes, bw_iters);
	if (rank == 0)
		printf("pingpong bandwidth_MBps=%.1f bytes=%d iters=%d\n", 2.0 * bw_bytes * bw_iters / t / 1e6, bw_bytes, bw_iters);
	fflush(stdout);
	free(buf);
	MPI_Finalize();
	return 0;
}
