/*
 * A fake libnvidia-ml.so for corral's tests: it implements the NVML calls
 * corral makes (through github.com/NVIDIA/go-nvml) over a machine described
 * by the file named in $FAKE_NVML_CONFIG (written by package fakenvml), so
 * the real go-nvml path runs on a host without a GPU. Without the variable
 * nvmlInit fails with NVML_ERROR_DRIVER_NOT_LOADED, as on a node with no
 * NVIDIA driver. Types are declared here with the ABI of nvml.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
	OK = 0, E_UNINIT = 1, E_INVALID = 2, E_NOT_SUPPORTED = 3, E_NOT_FOUND = 6,
	E_INSUFFICIENT = 7, E_DRIVER = 9, E_TIMEOUT = 10, E_GPU_LOST = 15,
	E_UNKNOWN = 999
};

#define MAXGPU 32
#define MAXMIG 8
#define MAXLINK 36
#define MAXPROC 16
#define XID_EVENT 8ULL

struct nvmlDevice_st {
	int gpu; /* index */
	int mig; /* -1: the GPU itself */
};
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
	char busIdLegacy[16];
	unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
	char busId[32];
} nvmlPciInfo_t;
typedef struct {
	unsigned int pid;
	unsigned long long usedGpuMemory;
	unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct {
	unsigned int pid;
	unsigned long long timeStamp;
	unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct {
	nvmlDevice_t device;
	unsigned long long eventType, eventData;
	unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;
struct nvmlEventSet_st { unsigned long long types[MAXGPU]; };
typedef struct nvmlEventSet_st *nvmlEventSet_t;

struct mig {
	char uuid[96], name[96];
	unsigned int gi, ci;
	unsigned long long mem;
	struct nvmlDevice_st h;
};
struct proc { unsigned int pid, sm; unsigned long long mem; };
struct gpu {
	int present;
	unsigned int minor, numa, util, migmode;
	unsigned long long memtotal, memused;
	char uuid[96], name[96], busid[32];
	int link_peer[MAXLINK]; /* GPU index at the other end, -1: none */
	int topo[MAXGPU];       /* common ancestor level to each GPU */
	long xid_after_ms;      /* -1: never */
	unsigned long long xid;
	int xid_sent;
	long vanish_after_ms;   /* -1: never */
	int nmig;
	struct mig migs[MAXMIG];
	int nproc;
	struct proc procs[MAXPROC];
	struct nvmlDevice_st h;
};

static struct gpu gpus[MAXGPU];
static int ngpu, inited;
static char driver[64] = "550.54.15", nvmlver[64] = "12.550.54.15";
static int cuda = 12040;
static struct timespec t0;

static long elapsed_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
}

static int lost(int g) {
	return gpus[g].vanish_after_ms >= 0 && elapsed_ms() >= gpus[g].vanish_after_ms;
}

/* rest copies what remains of a line after n fields into dst. */
static void rest(const char *line, int n, char *dst, size_t size) {
	const char *p = line;
	for (int i = 0; i < n; i++) {
		while (*p == ' ') p++;
		while (*p && *p != ' ') p++;
	}
	while (*p == ' ') p++;
	snprintf(dst, size, "%s", p);
	dst[strcspn(dst, "\n")] = 0;
}

static int load(const char *path) {
	FILE *f = fopen(path, "r");
	if (!f) return -1;
	char line[512];
	memset(gpus, 0, sizeof gpus);
	for (int g = 0; g < MAXGPU; g++) {
		for (int l = 0; l < MAXLINK; l++) gpus[g].link_peer[l] = -1;
		for (int o = 0; o < MAXGPU; o++) gpus[g].topo[o] = 50;
		gpus[g].xid_after_ms = gpus[g].vanish_after_ms = -1;
	}
	ngpu = 0;
	while (fgets(line, sizeof line, f)) {
		int g, a, b, c;
		unsigned long long x, y;
		char word[32];
		if (sscanf(line, "%31s", word) != 1) continue;
		if (!strcmp(word, "driver")) rest(line, 1, driver, sizeof driver);
		else if (!strcmp(word, "nvml")) rest(line, 1, nvmlver, sizeof nvmlver);
		else if (!strcmp(word, "cuda")) sscanf(line, "cuda %d", &cuda);
		else if (!strcmp(word, "gpu")) {
			struct gpu t;
			memset(&t, 0, sizeof t);
			if (sscanf(line, "gpu %d %u %95s %31s %u %llu %llu %u %u", &g, &t.minor, t.uuid, t.busid,
				   &t.numa, &t.memtotal, &t.memused, &t.util, &t.migmode) != 9 || g < 0 || g >= MAXGPU)
				goto bad;
			struct gpu *d = &gpus[g];
			d->present = 1;
			d->minor = t.minor; d->numa = t.numa; d->util = t.util; d->migmode = t.migmode;
			d->memtotal = t.memtotal; d->memused = t.memused;
			memcpy(d->uuid, t.uuid, sizeof d->uuid);
			memcpy(d->busid, t.busid, sizeof d->busid);
			rest(line, 10, d->name, sizeof d->name);
			d->h.gpu = g; d->h.mig = -1;
			if (g + 1 > ngpu) ngpu = g + 1;
		} else if (!strcmp(word, "mig")) {
			struct mig m;
			memset(&m, 0, sizeof m);
			if (sscanf(line, "mig %d %95s %u %u %llu", &g, m.uuid, &m.gi, &m.ci, &m.mem) != 5 ||
			    g < 0 || g >= MAXGPU || gpus[g].nmig >= MAXMIG)
				goto bad;
			rest(line, 6, m.name, sizeof m.name);
			m.h.gpu = g; m.h.mig = gpus[g].nmig;
			gpus[g].migs[gpus[g].nmig++] = m;
		} else if (!strcmp(word, "nvlink")) {
			if (sscanf(line, "nvlink %d %d %d", &a, &b, &c) != 3 || a < 0 || a >= MAXGPU || b < 0 ||
			    b >= MAXLINK || c < 0 || c >= MAXGPU)
				goto bad;
			gpus[a].link_peer[b] = c;
		} else if (!strcmp(word, "topo")) {
			if (sscanf(line, "topo %d %d %d", &a, &b, &c) != 3 || a < 0 || a >= MAXGPU || b < 0 || b >= MAXGPU)
				goto bad;
			gpus[a].topo[b] = gpus[b].topo[a] = c;
		} else if (!strcmp(word, "xid")) {
			if (sscanf(line, "xid %d %llu %llu", &g, &x, &y) != 3 || g < 0 || g >= MAXGPU) goto bad;
			gpus[g].xid_after_ms = (long)x; gpus[g].xid = y;
		} else if (!strcmp(word, "vanish")) {
			if (sscanf(line, "vanish %d %llu", &g, &x) != 2 || g < 0 || g >= MAXGPU) goto bad;
			gpus[g].vanish_after_ms = (long)x;
		} else if (!strcmp(word, "proc")) {
			struct proc p;
			if (sscanf(line, "proc %d %u %llu %u", &g, &p.pid, &p.mem, &p.sm) != 4 || g < 0 ||
			    g >= MAXGPU || gpus[g].nproc >= MAXPROC)
				goto bad;
			gpus[g].procs[gpus[g].nproc++] = p;
		} else goto bad;
	}
	fclose(f);
	return 0;
bad:
	fprintf(stderr, "fake nvml: bad line in %s: %s", path, line);
	fclose(f);
	return -1;
}

/* dev checks a handle: the GPU (or MIG device) it names, or an error. */
static nvmlReturn_t dev(nvmlDevice_t h, struct gpu **g, struct mig **m) {
	if (!inited) return E_UNINIT;
	if (!h || h->gpu < 0 || h->gpu >= ngpu || !gpus[h->gpu].present) return E_INVALID;
	if (lost(h->gpu)) return E_GPU_LOST;
	*g = &gpus[h->gpu];
	*m = h->mig >= 0 ? &gpus[h->gpu].migs[h->mig] : NULL;
	return OK;
}

static nvmlReturn_t str(char *dst, unsigned int n, const char *src) {
	if (!dst) return E_INVALID;
	if (strlen(src) + 1 > n) return E_INSUFFICIENT;
	strcpy(dst, src);
	return OK;
}

nvmlReturn_t nvmlInit_v2(void) {
	const char *p = getenv("FAKE_NVML_CONFIG");
	if (!p || !*p) return E_DRIVER;
	if (load(p) != 0) return E_UNKNOWN;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	inited = 1;
	return OK;
}
nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return nvmlInit_v2(); }
nvmlReturn_t nvmlShutdown(void) {
	if (!inited) return E_UNINIT;
	inited = 0;
	return OK;
}

const char *nvmlErrorString(nvmlReturn_t r) {
	switch (r) {
	case OK: return "Success";
	case E_UNINIT: return "Uninitialized";
	case E_INVALID: return "Invalid Argument";
	case E_NOT_SUPPORTED: return "Not Supported";
	case E_NOT_FOUND: return "Not Found";
	case E_INSUFFICIENT: return "Insufficient Size";
	case E_DRIVER: return "Driver Not Loaded";
	case E_TIMEOUT: return "Timeout";
	case E_GPU_LOST: return "GPU is lost";
	}
	return "Unknown Error";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned int n) { return inited ? str(v, n, driver) : E_UNINIT; }
nvmlReturn_t nvmlSystemGetNVMLVersion(char *v, unsigned int n) { return inited ? str(v, n, nvmlver) : E_UNINIT; }
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
	if (!inited) return E_UNINIT;
	*v = cuda;
	return OK;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
	if (!inited) return E_UNINIT;
	*n = ngpu;
	return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *h) {
	if (!inited) return E_UNINIT;
	if (i >= (unsigned)ngpu || !gpus[i].present) return E_INVALID;
	if (lost(i)) return E_GPU_LOST;
	*h = &gpus[i].h;
	return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *h) {
	if (!inited) return E_UNINIT;
	for (int g = 0; g < ngpu; g++) {
		if (!gpus[g].present || lost(g)) continue;
		if (!strcmp(gpus[g].uuid, uuid)) { *h = &gpus[g].h; return OK; }
		for (int m = 0; m < gpus[g].nmig; m++)
			if (!strcmp(gpus[g].migs[m].uuid, uuid)) { *h = &gpus[g].migs[m].h; return OK; }
	}
	return E_NOT_FOUND;
}

#define DEV(h) struct gpu *g; struct mig *m; nvmlReturn_t r = dev(h, &g, &m); if (r != OK) return r; (void)m

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *v, unsigned int n) { DEV(h); return str(v, n, m ? m->uuid : g->uuid); }
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t h, char *v, unsigned int n) {
	DEV(h);
	if (!m) return str(v, n, g->name);
	char buf[200];
	snprintf(buf, sizeof buf, "%s MIG %s", g->name, m->name);
	return str(v, n, buf);
}
nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t h, unsigned int *v) { DEV(h); if (m) return E_NOT_SUPPORTED; *v = g->minor; return OK; }
nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t h, unsigned int *v) { DEV(h); *v = h->gpu; return OK; }
nvmlReturn_t nvmlDeviceGetNumaNodeId(nvmlDevice_t h, unsigned int *v) { DEV(h); *v = g->numa; return OK; }
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *v) {
	DEV(h);
	if (m) { v->total = m->mem; v->used = 0; }
	else { v->total = g->memtotal; v->used = g->memused; }
	v->free = v->total - v->used;
	return OK;
}
nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t h, nvmlPciInfo_t *v) {
	DEV(h);
	memset(v, 0, sizeof *v);
	snprintf(v->busId, sizeof v->busId, "%s", g->busid);
	snprintf(v->busIdLegacy, sizeof v->busIdLegacy, "%.15s", g->busid);
	return OK;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *v) {
	DEV(h);
	if (m) return E_NOT_SUPPORTED;
	v->gpu = g->util; v->memory = 0;
	return OK;
}
nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t h, unsigned int *cur, unsigned int *pending) {
	DEV(h);
	if (m) return E_NOT_SUPPORTED;
	*cur = *pending = g->migmode;
	return OK;
}
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t h, unsigned int *v) { DEV(h); *v = g->migmode ? MAXMIG : 0; return OK; }
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t h, unsigned int i, nvmlDevice_t *mh) {
	DEV(h);
	if (m || !g->migmode) return E_INVALID;
	if (i >= (unsigned)g->nmig) return E_NOT_FOUND;
	*mh = &g->migs[i].h;
	return OK;
}
nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t h, nvmlDevice_t *out) { DEV(h); *out = &g->h; return OK; }
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t h, unsigned int *v) { DEV(h); *v = m != NULL; return OK; }
nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t h, unsigned int *v) { DEV(h); if (!m) return E_NOT_SUPPORTED; *v = m->gi; return OK; }
nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t h, unsigned int *v) { DEV(h); if (!m) return E_NOT_SUPPORTED; *v = m->ci; return OK; }

nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t h, unsigned int link, int *active) {
	DEV(h);
	if (m || link >= MAXLINK) return E_INVALID;
	if (g->link_peer[link] < 0) return E_NOT_SUPPORTED;
	*active = 1;
	return OK;
}
nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t h, unsigned int link, nvmlPciInfo_t *v) {
	DEV(h);
	if (m || link >= MAXLINK) return E_INVALID;
	int p = g->link_peer[link];
	if (p < 0) return E_NOT_SUPPORTED;
	memset(v, 0, sizeof *v);
	snprintf(v->busId, sizeof v->busId, "%s", gpus[p].busid);
	return OK;
}
nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t a, nvmlDevice_t b, int *level) {
	struct gpu *ga, *gb;
	struct mig *m;
	nvmlReturn_t r = dev(a, &ga, &m);
	if (r != OK) return r;
	if ((r = dev(b, &gb, &m)) != OK) return r;
	*level = a->gpu == b->gpu ? 0 : ga->topo[b->gpu];
	return OK;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *count, nvmlProcessInfo_t *out) {
	DEV(h);
	if (*count < (unsigned)g->nproc) { *count = g->nproc; return E_INSUFFICIENT; }
	for (int i = 0; i < g->nproc; i++) {
		out[i].pid = g->procs[i].pid;
		out[i].usedGpuMemory = g->procs[i].mem;
		out[i].gpuInstanceId = out[i].computeInstanceId = 0xFFFFFFFF;
	}
	*count = g->nproc;
	return OK;
}
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t h, nvmlProcessUtilizationSample_t *out, unsigned int *count,
					     unsigned long long since) {
	DEV(h);
	(void)since;
	if (!out || *count < (unsigned)g->nproc) { *count = g->nproc; return E_INSUFFICIENT; }
	for (int i = 0; i < g->nproc; i++) {
		memset(&out[i], 0, sizeof out[i]);
		out[i].pid = g->procs[i].pid;
		out[i].smUtil = g->procs[i].sm;
		out[i].timeStamp = (unsigned long long)elapsed_ms() * 1000;
	}
	*count = g->nproc;
	return OK;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
	if (!inited) return E_UNINIT;
	*set = calloc(1, sizeof **set);
	return *set ? OK : E_UNKNOWN;
}
nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) { free(set); return OK; }
nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t h, unsigned long long *types) { DEV(h); *types = XID_EVENT; return OK; }
nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t h, unsigned long long types, nvmlEventSet_t set) {
	DEV(h);
	if (m || !set) return E_INVALID;
	set->types[h->gpu] |= types;
	return OK;
}
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms) {
	if (!inited) return E_UNINIT;
	long deadline = elapsed_ms() + timeout_ms;
	for (;;) {
		long now = elapsed_ms();
		for (int g = 0; g < ngpu; g++) {
			struct gpu *d = &gpus[g];
			if ((set->types[g] & XID_EVENT) && d->xid_after_ms >= 0 && !d->xid_sent && now >= d->xid_after_ms) {
				d->xid_sent = 1;
				memset(data, 0, sizeof *data);
				data->device = &d->h;
				data->eventType = XID_EVENT;
				data->eventData = d->xid;
				data->gpuInstanceId = data->computeInstanceId = 0xFFFFFFFF;
				return OK;
			}
		}
		if (now >= deadline) return E_TIMEOUT;
		usleep(10000);
	}
}
nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms) {
	return nvmlEventSetWait_v2(set, data, timeout_ms);
}
