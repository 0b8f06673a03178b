package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hearth-ci/hearth/config"
)

// Sources are what the registry reads when it is scraped rather than counts.
type Sources struct {
	// Queue returns when each entry waiting in the push queue was queued.
	Queue func() ([]time.Time, error)
	// Rejected returns how many entries wait in the rejected list for a person.
	Rejected func() (int, error)
}

// Registry holds the metrics of one host: counters fed from the spool, and gauges read from
// Sources at each scrape.
type Registry struct {
	reg     *prometheus.Registry
	spool   Spool
	targets []string
	// mu makes drains take turns: a scrape and the periodic drain may meet.
	mu sync.Mutex

	stageSeconds    *prometheus.HistogramVec
	stageFailures   *prometheus.CounterVec
	prepareFailures *prometheus.CounterVec
	pushedPaths     *prometheus.CounterVec
	pushedBytes     *prometheus.CounterVec
	pushFailures    *prometheus.CounterVec
	deploys         *prometheus.CounterVec
	badLines        prometheus.Counter
}

// stageBuckets span a warm prepare (tens of milliseconds) to a long build script (hours).
var stageBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400}

// New makes the registry of cfg's host. Every series the dashboard draws is made at once with a
// zero value, so that a panel shows 0 rather than "no data" on a host where nothing has failed yet.
func New(cfg *config.Config, version string, src Sources) *Registry {
	r := &Registry{
		reg:     prometheus.NewRegistry(),
		spool:   Spool{Path: SpoolPath(cfg)},
		targets: cfg.Deploy.TargetNames(),
		stageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hearth_stage_duration_seconds",
			Help:    "How long each driver stage took: prepare, cleanup, and each run stage by gitlab-runner's name for it.",
			Buckets: stageBuckets,
		}, []string{"stage"}),
		stageFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_stage_failures_total",
			Help: "Driver stages that failed, by stage and by whose fault gitlab-runner was told it was (job or host), or stopped by gitlab-runner (cancelled).",
		}, []string{"stage", "fault"}),
		prepareFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_prepare_failures_total",
			Help: "Prepares that failed, by what failed (policy, containerd, nix-daemon, environment, network, agent, ...).",
		}, []string{"reason"}),
		pushedPaths: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_pushed_paths_total",
			Help: "Store paths uploaded to the binary cache.",
		}, []string{"backend"}),
		pushedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_pushed_bytes_total",
			Help: "NAR bytes (before compression) of the store paths uploaded to the binary cache.",
		}, []string{"backend"}),
		pushFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_push_failures_total",
			Help: "Uploads to the binary cache, and questions to it, that failed; the paths stay queued.",
		}, []string{"backend"}),
		deploys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_deploys_total",
			Help: "Deploys to each target by result: deployed, unchanged, rolled_back, failed, not_started, refused.",
		}, []string{"target", "result"}),
		badLines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hearth_metrics_spool_bad_lines_total",
			Help: "Lines of the metrics spool that were not events, and were dropped.",
		}),
	}
	r.stageSeconds.WithLabelValues("prepare")
	for _, f := range Faults {
		r.stageFailures.WithLabelValues("prepare", f)
	}
	for _, reason := range PrepareReasons {
		r.prepareFailures.WithLabelValues(reason)
	}
	r.pushedPaths.WithLabelValues(cfg.Cache.Backend)
	r.pushedBytes.WithLabelValues(cfg.Cache.Backend)
	r.pushFailures.WithLabelValues(cfg.Cache.Backend)
	for _, t := range r.targets {
		for _, res := range DeployResults {
			r.deploys.WithLabelValues(t, res)
		}
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "hearth_build_info",
		Help:        "Always 1; its version label is the hearth that serves these metrics.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)
	r.reg.MustRegister(r.stageSeconds, r.stageFailures, r.prepareFailures, r.pushedPaths, r.pushedBytes,
		r.pushFailures, r.deploys, r.badLines, info, &sourceCollector{src: src},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Gatherer is the registry's, for tests and the handler.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Apply counts one event. Label values are bounded here, whatever the spool says: a stage or
// target hearth does not know is counted as "other".
func (r *Registry) Apply(e Event) {
	switch e.Kind {
	case KindStage:
		stage := stageLabel(e.Stage)
		r.stageSeconds.WithLabelValues(stage).Observe(e.Seconds)
		if e.Fault != "" {
			r.stageFailures.WithLabelValues(stage, oneOf(e.Fault, Faults, FaultHost)).Inc()
			if stage == "prepare" {
				r.prepareFailures.WithLabelValues(oneOf(e.Reason, PrepareReasons, "other")).Inc()
			}
		}
	case KindPushed:
		b := oneOf(e.Backend, Backends, "other")
		r.pushedPaths.WithLabelValues(b).Inc()
		r.pushedBytes.WithLabelValues(b).Add(float64(max(e.Bytes, 0)))
	case KindPushFailed:
		r.pushFailures.WithLabelValues(oneOf(e.Backend, Backends, "other")).Inc()
	case KindDeploy:
		r.deploys.WithLabelValues(oneOf(e.Target, r.targets, "other"), oneOf(e.Result, DeployResults, "failed")).Inc()
	default:
		r.badLines.Inc()
	}
}

// DrainSpool folds what the spool holds into the counters.
func (r *Registry) DrainSpool(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	bad, err := r.spool.Drain(ctx, r.Apply)
	r.badLines.Add(float64(bad))
	return err
}

// Handler serves the metrics, folding in the spool first so that a scrape sees every stage that
// ended before it.
func (r *Registry) Handler(log *slog.Logger) http.Handler {
	h := promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		ErrorLog: slogAdapter{log},
		// A queue that cannot be read must not hide every other metric.
		ErrorHandling: promhttp.ContinueOnError,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if err := r.DrainSpool(req.Context()); err != nil {
			log.Error("cannot read the metrics spool", "err", err)
		}
		h.ServeHTTP(w, req)
	})
}

// drainEvery is how often the spool is folded in between scrapes, so it stays small on a host
// nobody scrapes for a while.
const drainEvery = 10 * time.Second

// Serve serves /metrics on addr until ctx ends, draining the spool between scrapes too. It returns
// at once when addr cannot be listened on.
func (r *Registry) Serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s ([metrics] listen): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", r.Handler(log))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	log.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	tick := time.NewTicker(drainEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			<-done
			return nil
		case err := <-done:
			return fmt.Errorf("serve metrics on %s: %w", addr, err)
		case <-tick.C:
			if err := r.DrainSpool(ctx); err != nil && ctx.Err() == nil {
				log.Error("cannot read the metrics spool", "err", err)
			}
		}
	}
}

// sourceCollector reads the queue and the rejected list at each scrape, so their gauges are never
// older than the scrape.
type sourceCollector struct{ src Sources }

var (
	queueEntriesDesc = prometheus.NewDesc("hearth_cache_queue_entries",
		"Builds queued by the post-build-hook and not yet pushed.", nil, nil)
	queueOldestDesc = prometheus.NewDesc("hearth_cache_queue_oldest_seconds",
		"Age of the oldest build waiting in the queue; 0 when the queue is empty.", nil, nil)
	rejectedDesc = prometheus.NewDesc("hearth_cache_rejected_entries",
		"Queue entries rejected because a path differs from the store's record; see hearth cache rejected.", nil, nil)
)

func (c *sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueEntriesDesc
	ch <- queueOldestDesc
	ch <- rejectedDesc
}

func (c *sourceCollector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Queue != nil {
		since, err := c.src.Queue()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(queueEntriesDesc, fmt.Errorf("read the push queue: %w", err))
		} else {
			oldest := 0.0
			for _, t := range since {
				oldest = max(oldest, time.Since(t).Seconds())
			}
			ch <- prometheus.MustNewConstMetric(queueEntriesDesc, prometheus.GaugeValue, float64(len(since)))
			ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, oldest)
		}
	}
	if c.src.Rejected != nil {
		n, err := c.src.Rejected()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(rejectedDesc, fmt.Errorf("read the rejected list: %w", err))
		} else {
			ch <- prometheus.MustNewConstMetric(rejectedDesc, prometheus.GaugeValue, float64(n))
		}
	}
}

// slogAdapter is promhttp's Logger on slog.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) {
	var errs []string
	for _, x := range v {
		var me prometheus.MultiError
		if err, ok := x.(error); ok && errors.As(err, &me) {
			for _, e := range me {
				errs = append(errs, e.Error())
			}
			continue
		}
		errs = append(errs, fmt.Sprint(x))
	}
	for _, e := range errs {
		a.log.Error("metrics scrape", "err", e)
	}
}
