package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/corral-dev/corral/images"
)

// agentMetrics are the agent's own metrics (docs/metrics.md): what only
// the node sees — image pulls, driver starts, its GPUs at this moment.
// They are served on -metrics-addr (GET /v1/metrics, off by default) and,
// in corral dev, by the server's /v1/metrics.
type agentMetrics struct {
	reg *prometheus.Registry

	pulls        *prometheus.CounterVec
	pullBytes    prometheus.Counter
	pullDuration *prometheus.HistogramVec
	driverStarts *prometheus.HistogramVec
}

func newAgentMetrics(a *Agent) *agentMetrics {
	m := &agentMetrics{reg: prometheus.NewRegistry()}
	m.pulls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "corral_agent_image_pulls_total",
		Help: "Image pulls by result: pulled (downloaded), cached (already here), error."}, []string{"result"})
	m.pullBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "corral_agent_image_pull_bytes_total",
		Help: "Bytes of the image layers of pulls that were not already stored (layers found in the blob cache included)."})
	m.pullDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "corral_agent_image_pull_duration_seconds",
		Help:    "Time to pull (download and unpack) an image, by result.",
		Buckets: prometheus.ExponentialBuckets(0.01, 3, 10)}, []string{"result"})
	m.driverStarts = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "corral_agent_driver_start_duration_seconds",
		Help:    "Time a driver took to start a kernel (after network and image), by driver and result (ok, error).",
		Buckets: prometheus.ExponentialBuckets(0.001, 3, 10)}, []string{"driver", "result"})
	m.reg.MustRegister(m.pulls, m.pullBytes, m.pullDuration, m.driverStarts, &gpuCollector{a: a},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Metrics is the agent's metrics, for a server in the same process to
// serve with its own (corral dev).
func (a *Agent) Metrics() prometheus.Gatherer {
	if a.metrics == nil {
		return prometheus.NewRegistry()
	}
	return a.metrics.reg
}

// pull pulls an image through the store, counting it.
func (a *Agent) pull(ctx context.Context, ref string, progress func(images.Progress)) (*images.Image, error) {
	start := time.Now()
	// A pull that found the image stored reports one final progress; one
	// that fetched or unpacked layers reports each of them, then the end.
	var done int64
	var reports int
	img, err := a.images.Pull(ctx, ref, func(p images.Progress) {
		done, reports = p.BytesDone, reports+1
		if progress != nil {
			progress(p)
		}
	})
	result := "pulled"
	switch {
	case err != nil:
		result = "error"
	case reports <= 1:
		result = "cached"
	}
	a.metrics.observePull(result, done, time.Since(start))
	return img, err
}

// observePull records one image pull.
func (m *agentMetrics) observePull(result string, bytes int64, d time.Duration) {
	if m == nil {
		return // an Agent made without New (tests)
	}
	m.pulls.WithLabelValues(result).Inc()
	if result == "pulled" {
		m.pullBytes.Add(float64(bytes))
	}
	m.pullDuration.WithLabelValues(result).Observe(d.Seconds())
}

// observeDriverStart records one driver Start call.
func (m *agentMetrics) observeDriverStart(driver string, d time.Duration, err error) {
	if m == nil {
		return // an Agent made without New (tests)
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.driverStarts.WithLabelValues(driver, result).Observe(d.Seconds())
}

// serveMetrics serves GET /v1/metrics on addr until the agent stops. It has
// no authentication (as a node exporter): bind it to an address only the
// monitoring network reaches.
func (a *Agent) serveMetrics(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("agent: metrics listen on %s: %w", addr, err)
	}
	a.metricsAddr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("GET /v1/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.logger.Error("metrics listener stopped", "error", err)
		}
	}()
	go func() {
		defer a.wg.Done()
		<-a.ctx.Done()
		_ = srv.Close()
	}()
	return nil
}

// MetricsAddr is where -metrics-addr listens ("" when off).
func (a *Agent) MetricsAddr() string { return a.metricsAddr }

// gpuCollector reports the node's GPUs from the agent's last NVML refresh.
type gpuCollector struct{ a *Agent }

var (
	descAgentGPUUtil = prometheus.NewDesc("corral_agent_gpu_utilization_percent", "GPU utilisation per device at the last NVML refresh.",
		[]string{"gpu", "uuid", "name"}, nil)
	descAgentGPUMemUsed = prometheus.NewDesc("corral_agent_gpu_memory_used_bytes", "GPU memory in use per device at the last NVML refresh.",
		[]string{"gpu", "uuid", "name"}, nil)
	descAgentGPUMemTotal = prometheus.NewDesc("corral_agent_gpu_memory_total_bytes", "GPU memory per device.",
		[]string{"gpu", "uuid", "name"}, nil)
)

func (c *gpuCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAgentGPUUtil
	ch <- descAgentGPUMemUsed
	ch <- descAgentGPUMemTotal
}

func (c *gpuCollector) Collect(ch chan<- prometheus.Metric) {
	c.a.mu.Lock()
	inv := c.a.gpuInv
	c.a.mu.Unlock()
	if inv == nil {
		return
	}
	for _, g := range inv.Devices {
		idx := strconv.Itoa(g.Index)
		ch <- prometheus.MustNewConstMetric(descAgentGPUUtil, prometheus.GaugeValue, float64(g.UtilPercent), idx, g.UUID, g.Name)
		ch <- prometheus.MustNewConstMetric(descAgentGPUMemUsed, prometheus.GaugeValue, float64(g.MemoryUsedBytes), idx, g.UUID, g.Name)
		ch <- prometheus.MustNewConstMetric(descAgentGPUMemTotal, prometheus.GaugeValue, float64(g.MemoryBytes), idx, g.UUID, g.Name)
	}
}
