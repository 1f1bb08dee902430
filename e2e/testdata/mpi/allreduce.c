/* allreduce: every rank contributes rank+1; every rank prints the sum and
 * exits non-zero when it is not size*(size+1)/2. Built in the e2e MPI image. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
	int rank, size, sum = 0, mine;
	char host[256] = "?";

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	gethostname(host, sizeof host - 1);
	mine = rank + 1;
	MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
	printf("allreduce sum=%d size=%d rank=%d host=%s\n", sum, size, rank, host);
	fflush(stdout);
	MPI_Finalize();
	if (sum != size * (size + 1) / 2) {
		fprintf(stderr, "allreduce: rank %d: sum %d, want %d\n", rank, sum, size * (size + 1) / 2);
		return 1;
	}
	return 0;
}
