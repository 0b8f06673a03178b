package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-ci/hearth/metrics/metricstest"
)

// Jobs through the driver, with `hearth cache watch` serving metrics as the runner host's unit
// does: a job that builds and pushes, one whose image is refused (the job's fault) and one whose
// nix-daemon is gone (the host's, retried). A scrape of the watcher's listener counts each stage,
// each failure by whose fault and what failed, and each pushed path; every metric the Grafana
// dashboard queries is there.
func TestMetrics(t *testing.T) {
	addr := freeLoopbackAddr(t)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	cfg := writeCacheConfig(t, `allowed_images = ["registry.example.com/ci/*"]`, `backend = "file"`,
		fmt.Sprintf("\n[cache.file]\ndir = %q\n\n[metrics]\nlisten = %q\n", cacheDir, addr)+
			// A target, which no job here deploys to: its deploy counters are exported at 0, as on
			// any host with targets (one without has no deploys to show).
			"\n[deploy.targets.web]\nhost = \"192.0.2.1\"\nknown_hosts_file = \"/etc/hearth/known_hosts\"\nidentity_file = \"/etc/hearth/id\"\nprojects = [\"7\"]\n")
	state := ownStateDir(t, cfg)

	startWatch(t, cfg, "--interval", "200ms")
	waitFor(t, "cache watch to serve metrics on "+addr, 15*time.Second, func() bool {
		_, err := scrapeMetrics(addr)
		return err == nil
	})

	nonce := fmt.Sprintf("metrics-%d", time.Now().UnixNano())
	res, log := runJob(t, cfg, buildJob(nonce, 2, ""), "build")
	if res.State != "success" {
		t.Fatalf("%s\n%s", res, log)
	}
	built := builtPaths(log, nonce)
	res, log = runJob(t, cfg, "refused:\n  image: docker.io/evil/miner:latest\n  script: [\"true\"]\n", "refused")
	if res.FailureReason != "script_failure" {
		t.Fatalf("refused image: %+v\n%s", res, log)
	}
	// The nix-daemon gone: the same config with its socket moved away.
	gone := filepath.Join(filepath.Dir(cfg), "gone.toml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	socket := daemonOf(t).NixSocket
	if err := os.WriteFile(gone, []byte(strings.Replace(string(b), socket, socket+".gone", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	res, log = runJob(t, gone, "j:\n  script: [\"true\"]\n", "j")
	if res.FailureReason != "runner_system_failure" {
		t.Fatalf("nix-daemon gone: %+v\n%s", res, log)
	}
	attempts := strings.Count(log, "nix-daemon socket "+socket+".gone is missing")
	if attempts < 1 {
		t.Fatalf("no prepare attempt names the nix-daemon's socket:\n%s", log)
	}

	var f metricstest.Families
	waitFor(t, "the pushes and the empty queue to show", 30*time.Second, func() bool {
		f, err = scrapeMetrics(addr)
		if err != nil {
			return false
		}
		pushed, _ := f.Value("hearth_cache_pushed_paths_total", "backend", "file")
		queued, ok := f.Value("hearth_cache_queue_entries")
		return pushed >= float64(len(built)) && ok && queued == 0
	})
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		// Three jobs, each prepared and cleaned up, the third once per attempt.
		{"hearth_stage_duration_seconds", []string{"stage", "prepare"}, float64(2 + attempts)},
		{"hearth_stage_duration_seconds", []string{"stage", "cleanup"}, float64(2 + attempts)},
		{"hearth_stage_duration_seconds", []string{"stage", "build_script"}, 1},
		{"hearth_stage_duration_seconds", []string{"stage", "get_sources"}, 1},
		{"hearth_stage_failures_total", []string{"stage", "prepare", "fault", "job"}, 1},
		{"hearth_stage_failures_total", []string{"stage", "prepare", "fault", "host"}, float64(attempts)},
		{"hearth_prepare_failures_total", []string{"reason", "policy"}, 1},
		{"hearth_prepare_failures_total", []string{"reason", "nix-daemon"}, float64(attempts)},
		{"hearth_prepare_failures_total", []string{"reason", "other"}, 0},
		{"hearth_cache_push_failures_total", []string{"backend", "file"}, 0},
		{"hearth_cache_queue_oldest_seconds", nil, 0},
		{"hearth_cache_rejected_entries", nil, 0},
		{"hearth_metrics_spool_bad_lines_total", nil, 0},
		{"hearth_deploys_total", []string{"target", "web", "result", "deployed"}, 0},
	} {
		if got, ok := f.Value(tc.name, tc.labels...); !ok || got != tc.want {
			t.Errorf("%s%v = %v (present: %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if n, _ := f.Value("hearth_cache_pushed_bytes_total", "backend", "file"); n <= 0 {
		t.Errorf("pushed %v bytes", n)
	}
	if _, ok := f.Value("hearth_build_info"); !ok {
		t.Error("no hearth_build_info")
	}

	dashboard, err := os.ReadFile("../../nixos/dashboards/hearth.json")
	if err != nil {
		t.Fatal(err)
	}
	queries, err := metricstest.DashboardQueries(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range metricstest.QueriedMetrics(queries) {
		if !f.Has(name) {
			t.Errorf("the dashboard queries %s, which cache watch does not export", name)
		}
	}
	if spool, err := os.Stat(filepath.Join(state, "metrics", "events")); err != nil || spool.Size() != 0 {
		t.Errorf("the spool is not empty after a scrape: %v, %v", spool, err)
	}
}

// A metrics listener that cannot start (its port taken) is logged, and the watcher goes on pushing:
// metrics are not worth a queue that no longer drains.
func TestCacheWatchPushesWhenMetricsCannotListen(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	cfg := writeCacheConfig(t, "", "", fmt.Sprintf("\n[cache.file]\ndir = %q\n\n[metrics]\nlisten = %q\n", dir, taken.Addr()))
	ownStateDir(t, cfg)
	w := startWatch(t, cfg, "--interval", "200ms")
	built, err := daemonOf(t).BuildChain(fmt.Sprint("nolisten-", time.Now().UnixNano()), 2)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "cache watch to push the built paths", 30*time.Second, func() bool {
		if w.exited() {
			t.Fatalf("cache watch exited:\n%s", w.logs.String())
		}
		for _, p := range built {
			h := strings.SplitN(filepath.Base(p), "-", 2)[0]
			if _, err := os.Stat(filepath.Join(dir, h+".narinfo")); err != nil {
				return false
			}
		}
		return true
	})
	if logs := w.logs.String(); !strings.Contains(logs, "cannot serve metrics; pushes go on") || !strings.Contains(logs, "address already in use") {
		t.Fatalf("the watcher does not say why there are no metrics:\n%s", logs)
	}
}

// ownStateDir gives cfg a state dir of the test's own (short: agent sockets live there), so that
// the metrics spool holds only the test's events, and returns it.
func ownStateDir(t *testing.T, cfg string) string {
	t.Helper()
	state := filepath.Join(parts.Dir, fmt.Sprintf("ms%d", time.Now().UnixNano()%100000))
	replaceInFile(t, cfg, fmt.Sprintf("state_dir = %q", parts.StateDir()), fmt.Sprintf("state_dir = %q", state))
	t.Cleanup(func() { os.RemoveAll(state) })
	return state
}

// freeLoopbackAddr is a port on 127.0.0.1 that nothing listens on.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func scrapeMetrics(addr string) (metricstest.Families, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return metricstest.Parse(resp.Body)
}
