// Command bench measures hearth against floors taken in the same run, on a private containerd and
// nix-daemon, and prints medians and ratios (scripts/bench.sh runs it; results go in BENCHMARKS.md):
//
//   - the whole-job wall time of a job with trivial stages, driven the way gitlab-runner drives the
//     driver, against `ctr run --rm` of the same environment running true;
//   - the time of a second build of a derivation that takes 5 s, against the first;
//   - the whole job on the bridge network against the host network (network.go);
//   - the whole job with metrics recorded and scraped against without (metrics.go);
//   - the first build in the unprotected tier of what the protected tier built and pushed,
//     against a second build in the protected tier (network.go);
//   - the cache's pushes, against nix copy (cache.go), and a push to S3 throttled by 503 SlowDown
//     against the same push unthrottled (throttle.go);
//   - deploys to four SSH targets against one, a no-op deploy, and moving a closure over 200 MiB
//     to a target by pulling and by hearth's push, against nix copy --to ssh:// (deploy.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/internal/testenv"
	"github.com/hearth-ci/hearth/runner"
)

func main() {
	runs := flag.Int("runs", 9, "runs of each job measurement; medians are reported")
	builds := flag.Int("builds", 3, "first/second build pairs")
	cacheRuns := flag.Int("cache-runs", 3, "runs of each cache measurement")
	deployRuns := flag.Int("deploy-runs", 5, "runs of each deploy measurement")
	bigRuns := flag.Int("big-runs", 3, "runs of the 200 MiB transfer measurement")
	only := flag.String("only", "", `"job", "network", "metrics", "tiers", "throttle", "cache" or "deploy": run only those benchmarks`)
	flag.Parse()
	if err := run(*runs, *builds, *cacheRuns, *deployRuns, *bigRuns, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration{}, ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func run(runs, builds, cacheRuns, deployRuns, bigRuns int, only string) error {
	parts, err := testenv.Start(testenv.Options{})
	if err != nil {
		return err
	}
	defer parts.Stop()
	if only == "" || only == "job" {
		if err := benchJob(parts, runs, builds); err != nil {
			return err
		}
	}
	if only == "" || only == "network" {
		if err := benchNetwork(parts, runs); err != nil {
			return err
		}
	}
	if only == "" || only == "metrics" {
		if err := benchMetrics(parts, runs); err != nil {
			return err
		}
	}
	if only == "" || only == "tiers" {
		if err := benchTiers(parts, builds); err != nil {
			return err
		}
	}
	if only == "" || only == "throttle" {
		if err := benchThrottle(parts, cacheRuns); err != nil {
			return err
		}
	}
	if only == "" || only == "cache" {
		if err := benchCache(parts, cacheRuns); err != nil {
			return err
		}
	}
	if only == "" || only == "deploy" {
		return benchDeploy(parts, deployRuns, bigRuns)
	}
	return nil
}

func benchJob(parts *testenv.Parts, runs, builds int) error {
	// The host network, as the floor has: the bridge's own cost is measured apart (network.go).
	cfg, err := parts.WriteConfig(`network = "host"`, "", "")
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	fmt.Printf("hearth benchmarks on %s, %s, %d runs each (medians)\n\n", host, time.Now().UTC().Format("2006-01-02"), runs)

	// Whole job with trivial stages, interleaved with the floors so that the machine's noise falls
	// on all three alike.
	trivial := "job:\n  variables:\n    GIT_STRATEGY: none\n  script: [\"true\"]\n  after_script: [\"true\"]\n"
	if _, log, err := runJob(parts, cfg, trivial, nil); err != nil { // warm-up: makes the skeleton root
		return fmt.Errorf("trivial job: %v\n%s", err, log)
	}
	rootfs, err := filepath.Glob(filepath.Join(parts.StateDir(), "rootfs", "*"))
	if err != nil || len(rootfs) != 1 {
		return fmt.Errorf("expected one skeleton root under %s, found %v", parts.StateDir(), rootfs)
	}
	// The floor runs the same container hearth does: the skeleton root, the store and the daemon
	// socket, the user namespace, the host network and the default seccomp profile.
	idmap := fmt.Sprintf("0:%d:65536", config.Default().Jobs.UIDMapStart)
	floorArgs := []string{"--seccomp", "--net-host", "--uidmap", idmap, "--gidmap", idmap,
		"--mount", "type=bind,src=/nix/store,dst=/nix/store,options=rbind:ro",
		"--mount", "type=bind,src=" + parts.NixSocket + ",dst=/nix/var/nix/daemon-socket/socket,options=bind"}
	calls := map[string][]time.Duration{}
	var jobs, floors, bare []time.Duration
	for i := 0; i <= runs; i++ {
		per := map[string]time.Duration{}
		d, log, err := runJob(parts, cfg, trivial, func(call string, d time.Duration) { per[call] += d })
		if err != nil {
			return fmt.Errorf("trivial job: %v\n%s", err, log)
		}
		f, err := ctrRun(parts, rootfs[0], fmt.Sprintf("floor-%d", i), floorArgs)
		if err != nil {
			return err
		}
		b, err := ctrRun(parts, rootfs[0], fmt.Sprintf("bare-%d", i), floorArgs[1:])
		if err != nil {
			return err
		}
		if i == 0 {
			continue // warm-up
		}
		jobs, floors, bare = append(jobs, d), append(floors, f), append(bare, b)
		for k, v := range per {
			calls[k] = append(calls[k], v)
		}
	}
	job, floor := median(jobs), median(floors)
	fmt.Println("Whole job, trivial stages (config, prepare, prepare_script, get_sources with GIT_STRATEGY=none,")
	fmt.Println("`true` script, after_script, cleanup_file_variables, cleanup) against `ctr run --rm` of the same")
	fmt.Println("container (skeleton root, store and daemon socket, user namespace, host network, seccomp) running `true`:")
	fmt.Printf("  floor: ctr run --rm --seccomp ...   %s\n", ms(floor))
	fmt.Printf("  hearth: whole job                   %s\n", ms(job))
	fmt.Printf("  ratio                               %.2f   (target <= 2.0)\n", float64(job)/float64(floor))
	fmt.Printf("  (against ctr run --rm without seccomp, %s: ratio %.2f)\n", ms(median(bare)), float64(job)/float64(median(bare)))
	fmt.Print("  per driver call:")
	for _, k := range []string{"config", "prepare", "prepare_script", "get_sources", "build_script", "after_script", "cleanup_file_variables", "cleanup"} {
		if v, ok := calls[k]; ok {
			fmt.Printf(" %s %s;", k, ms(median(v)))
		}
	}
	fmt.Println()

	// Second build against first.
	var firsts, seconds, firstJobs, secondJobs []time.Duration
	stamp := time.Now().UnixNano()
	for i := 0; i < builds; i++ {
		src := buildJob(parts.Tools, fmt.Sprintf("%d-%d", stamp, i))
		for pass := 0; pass < 2; pass++ {
			d, log, err := runJob(parts, cfg, src, nil)
			if err != nil {
				return fmt.Errorf("build job: %v\n%s", err, log)
			}
			b, err := buildTime(log)
			if err != nil {
				return fmt.Errorf("%v\n%s", err, log)
			}
			if pass == 0 {
				firsts, firstJobs = append(firsts, b), append(firstJobs, d)
			} else {
				seconds, secondJobs = append(seconds, b), append(secondJobs, d)
			}
		}
	}
	if builds == 0 {
		return nil
	}
	first, second := median(firsts), median(seconds)
	fmt.Println()
	fmt.Printf("Second build against first, a derivation that takes 5 s (%d pairs):\n", builds)
	fmt.Printf("  first build (nix-build in the job)    %s\n", ms(first))
	fmt.Printf("  second build (same derivation)        %s\n", ms(second))
	fmt.Printf("  ratio                                 %.4f   (target <= 0.05)\n", float64(second)/float64(first))
	fmt.Printf("  whole jobs: first %s, second %s, ratio %.3f\n", ms(median(firstJobs)), ms(median(secondJobs)), float64(median(secondJobs))/float64(median(firstJobs)))
	return nil
}

// ctrRun times one `ctr run --rm` of rootfs running true.
func ctrRun(parts *testenv.Parts, rootfs, id string, args []string) (time.Duration, error) {
	argv := append([]string{"-a", parts.ContainerdSocket, "-n", "hearth-bench", "run", "--rm", "--rootfs"}, args...)
	argv = append(argv, rootfs, id, parts.Environment+"/bin/true")
	start := time.Now()
	out, err := exec.Command("ctr", argv...).CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("ctr run: %v: %s", err, out)
	}
	return d, nil
}

func runJob(parts *testenv.Parts, cfg, src string, timed func(string, time.Duration)) (time.Duration, string, error) {
	return runJobAs(parts, cfg, src, false, timed)
}

// runJobAs runs a job, on a protected ref or not.
func runJobAs(parts *testenv.Parts, cfg, src string, protected bool, timed func(string, time.Duration)) (time.Duration, string, error) {
	job, err := runner.ParseJob([]byte(src), "job")
	if err != nil {
		return 0, "", err
	}
	drv := func(stage string) runner.Command {
		return runner.Command{Exec: parts.Hearth, Args: []string{"--config", cfg, "driver", stage}}
	}
	var log strings.Builder
	jobRunner := runner.New(runner.Options{
		Custom: runner.Custom{Config: drv("config"), Prepare: drv("prepare"), Run: drv("run"), Cleanup: drv("cleanup")},
		Job:    job, JobID: time.Now().UnixNano() % 1e9, ProjectID: 1, ProjectPath: "bench/project",
		RepoURL: "https://gitlab.example.com/bench/project.git", RunnerToken: "bench", Log: &log, Timed: timed,
		Protected: protected,
	})
	start := time.Now()
	res := jobRunner.Run(context.Background())
	d := time.Since(start)
	if res.State != "success" {
		return 0, log.String(), fmt.Errorf("%s", res)
	}
	return d, log.String(), nil
}

func buildJob(tools, nonce string) string {
	return fmt.Sprintf(`job:
  script:
    - |
      cat > slow.nix <<'EOF'
      let tools = builtins.storePath "%s"; in
      derivation { name = "bench-%s"; system = "x86_64-linux"; builder = "${tools}/bin/bash";
        PATH = "${tools}/bin"; args = [ "-c" "sleep 5; echo done > $out" ]; }
      EOF
    - start=$EPOCHREALTIME; nix-build --no-out-link slow.nix; end=$EPOCHREALTIME; echo "build-time $start $end"
`, tools, nonce)
}

var buildTimes = regexp.MustCompile(`\nbuild-time ([0-9.]+) ([0-9.]+)\n`)

// buildTime reads the nix-build's wall time the job printed (bash's $EPOCHREALTIME, in µs).
func buildTime(log string) (time.Duration, error) {
	m := buildTimes.FindStringSubmatch(log)
	if m == nil {
		return 0, fmt.Errorf("no build time in the job log")
	}
	start, err1 := strconv.ParseFloat(m[1], 64)
	end, err2 := strconv.ParseFloat(m[2], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad build time %q", m[0])
	}
	return time.Duration((end - start) * float64(time.Second)), nil
}
