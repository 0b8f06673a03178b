package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-ci/hearth/cache"
	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/executor"
	"github.com/hearth-ci/hearth/nixstore"
)

// fakeExecutor runs no container: it records what the driver asked for and answers as told.
type fakeExecutor struct {
	prepared   []executor.JobSpec
	prepareErr error
	ran        []string // stage names
	code       int
	runErr     error
	cleaned    []string
	// builds is the host builds dir the job's container sees; run, when set, acts there as the
	// job's script would.
	builds string
	run    func(builds string)
}

func (f *fakeExecutor) Prepare(_ context.Context, job executor.JobSpec, _ io.Writer) error {
	f.prepared = append(f.prepared, job)
	return f.prepareErr
}

func (f *fakeExecutor) Run(_ context.Context, id, stage, script string, out io.Writer) (int, error) {
	f.ran = append(f.ran, stage)
	fmt.Fprintf(out, "ran %s in %s\n", stage, id)
	if f.run != nil {
		f.run(f.builds)
	}
	return f.code, f.runErr
}

func (f *fakeExecutor) BuildsDir(string) (string, error) { return f.builds, nil }

func (f *fakeExecutor) Cleanup(_ context.Context, id string) error {
	f.cleaned = append(f.cleaned, id)
	return nil
}

// fakeFlusher pushes nothing: it reports one pushed path, or nothing waiting, or fails as told,
// with the corrupt queue entries it is given.
type fakeFlusher struct {
	calls   int
	err     error
	empty   bool
	corrupt []error
}

func (f *fakeFlusher) Flush(_ context.Context, pushed func(nixstore.PathInfo, cache.Stats)) (cache.DrainResult, error) {
	f.calls++
	res := cache.DrainResult{Entries: 1, Corrupt: f.corrupt}
	if f.empty {
		return cache.DrainResult{Corrupt: f.corrupt}, nil
	}
	if f.err != nil {
		return res, f.err
	}
	pushed(nixstore.PathInfo{Path: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-built"}, cache.Stats{NarBytes: 2048, FileBytes: 512})
	res.Pushed, res.NarBytes, res.FileBytes = 1, 2048, 512
	return res, nil
}

func (f *fakeFlusher) String() string { return "file:///fake" }

// job is one driver invocation's world: a payload, a script file and the exit-code file.
type job struct {
	dir      string
	driver   *Driver
	exec     *fakeExecutor
	flusher  *fakeFlusher
	openErr  error
	opened   int
	log      strings.Builder
	codeFile string
}

// setup is what a job's world is made of: the config's [cache] push and required, and whether
// the payload says the ref is protected.
type setup struct {
	push                string
	required, protected bool
	// config is appended to the config file.
	config string
}

func newJob(t *testing.T, s setup) *job {
	t.Helper()
	if s.push == "" {
		s.push = "always"
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf("[cache]\npush = %q\nrequired = %v\n[environments.default]\nstore_path = \"/nix/store/00000000000000000000000000000000-env\"\n%s", s.push, s.required, s.config)))
	if err != nil {
		t.Fatal(err)
	}
	j := &job{dir: t.TempDir(), exec: &fakeExecutor{}, flusher: &fakeFlusher{}}
	payload := fmt.Sprintf(`{"id":77,"job_info":{"project_id":7},"git_info":{"repo_url":"https://gitlab.example.com/g/p.git","ref":"main","protected":%v}}`, s.protected)
	if err := os.WriteFile(filepath.Join(j.dir, "response.json"), []byte(payload), 0o600); err != nil {
		t.Fatal(err)
	}
	j.codeFile = filepath.Join(j.dir, "build_exit_code")
	inv := ParseInvocation([]string{
		"JOB_RESPONSE_FILE=" + filepath.Join(j.dir, "response.json"),
		"BUILD_EXIT_CODE_FILE=" + j.codeFile,
		// A job's variables cannot make it protected: policy reads the payload.
		"CUSTOM_ENV_CI_COMMIT_REF_PROTECTED=true",
	})
	j.driver = &Driver{Config: cfg, Exec: j.exec, Invocation: inv, Stdout: &j.log, Version: "test",
		OpenFlusher: func(context.Context) (Flusher, error) {
			j.opened++
			if j.openErr != nil {
				return nil, j.openErr
			}
			return j.flusher, nil
		}}
	return j
}

func (j *job) run(t *testing.T, stage string) error {
	t.Helper()
	script := filepath.Join(j.dir, "script")
	if err := os.WriteFile(script, []byte("echo hi\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return j.driver.Run(context.Background(), script, stage)
}

func TestRun(t *testing.T) {
	broken := errors.New("the bucket is gone")
	corrupt := errors.New("queue entry /q/1.paths is corrupt: line 2 is \"x\"")
	type outcome struct {
		kind    Kind   // 0: success
		logged  bool   // the failure's sentence is already in the job log: Report prints nothing
		printed string // what Report prints on stderr
		flushed bool   // the cache was asked to push
		log     string // the job log contains this
	}
	tests := []struct {
		name    string
		stage   string
		code    int
		setup   setup
		flusher fakeFlusher
		openErr error
		want    outcome
	}{
		{"script succeeds, push always", "build_script", 0, setup{}, fakeFlusher{}, nil,
			outcome{flushed: true, log: "pushed /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-built (2.0 KiB, 512 B compressed)\nPushed 1 path"}},
		{"step_script is the user script too", "step_script", 0, setup{}, fakeFlusher{}, nil, outcome{flushed: true, log: "Pushing what the job built to file:///fake"}},
		{"nothing waiting, a corrupt entry", "build_script", 0, setup{}, fakeFlusher{empty: true, corrupt: []error{corrupt}}, nil,
			outcome{flushed: true, log: "\x1b[0;33mWARNING: " + corrupt.Error() + "\x1b[0;m\nnothing was waiting to be pushed\n"}},
		{"script fails: nothing is pushed", "build_script", 42, setup{}, fakeFlusher{}, nil, outcome{kind: BuildFailure, logged: true}},
		{"after_script pushes nothing", "after_script", 0, setup{}, fakeFlusher{}, nil, outcome{}},
		{"an unknown stage runs like any other", "step_release", 0, setup{}, fakeFlusher{}, nil, outcome{}},
		{"an unknown stage fails like any other", "step_release", 3, setup{}, fakeFlusher{}, nil, outcome{kind: BuildFailure, logged: true}},
		{"push never", "build_script", 0, setup{push: "never", protected: true}, fakeFlusher{}, nil, outcome{}},
		{"protected ref, push protected", "build_script", 0, setup{push: "protected", protected: true}, fakeFlusher{}, nil, outcome{flushed: true}},
		{"unprotected ref, push protected (whatever the variables say)", "build_script", 0, setup{push: "protected"}, fakeFlusher{}, nil,
			outcome{log: "Not pushing to the binary cache: main is not a protected ref"}},
		{"push fails: a warning", "build_script", 0, setup{}, fakeFlusher{err: broken}, nil,
			outcome{flushed: true, log: "WARNING: the binary cache push failed; the paths stay queued for the next push: the bucket is gone"}},
		{"cache unreachable: a warning", "build_script", 0, setup{}, fakeFlusher{}, broken,
			outcome{log: "WARNING: the binary cache push failed; the paths stay queued for the next push: the bucket is gone"}},
		{"push fails, cache required: the runner's fault", "build_script", 0, setup{required: true}, fakeFlusher{err: broken}, nil,
			outcome{kind: SystemFailure, flushed: true, printed: "ERROR: hearth run: push to the binary cache (required by [cache] required): the bucket is gone\n"}},
		{"cache unreachable, required: the runner's fault", "build_script", 0, setup{required: true}, fakeFlusher{}, broken,
			outcome{kind: SystemFailure, printed: "ERROR: hearth run: push to the binary cache (required by [cache] required): the bucket is gone\n"}},
		{"script fails, cache required: still the job's fault", "build_script", 1, setup{required: true}, fakeFlusher{err: broken}, nil, outcome{kind: BuildFailure, logged: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := newJob(t, tc.setup)
			j.exec.code, j.openErr = tc.code, tc.openErr
			*j.flusher = tc.flusher
			// A code an earlier stage left must not survive this one.
			if err := os.WriteFile(j.codeFile, []byte("99\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			err := Report(&stderr, "run", j.run(t, tc.stage))
			var f *Failure
			switch {
			case tc.want.kind == 0 && err != nil:
				t.Fatalf("failed: %v\n%s", err, j.log.String())
			case tc.want.kind != 0 && (!errors.As(err, &f) || f.Kind != tc.want.kind || f.Logged != tc.want.logged):
				t.Fatalf("error %#v, want kind %d logged %v", err, tc.want.kind, tc.want.logged)
			}
			if stderr.String() != tc.want.printed {
				t.Fatalf("stderr %q, want %q", stderr.String(), tc.want.printed)
			}
			got, rerr := os.ReadFile(j.codeFile)
			if rerr != nil || string(got) != fmt.Sprintf("%d\n", tc.code) {
				t.Fatalf("BUILD_EXIT_CODE_FILE holds %q (%v), want the script's %d", got, rerr, tc.code)
			}
			if flushed := j.flusher.calls > 0; flushed != tc.want.flushed {
				t.Fatalf("flushed=%v, want %v\n%s", flushed, tc.want.flushed, j.log.String())
			}
			if tc.want.kind == BuildFailure && j.opened > 0 {
				t.Fatal("the cache was opened after the script failed")
			}
			if !strings.Contains(j.log.String(), tc.want.log) {
				t.Fatalf("job log lacks %q:\n%s", tc.want.log, j.log.String())
			}
			if tc.want.flushed && !strings.Contains(j.log.String(), "section_start:") || strings.Count(j.log.String(), "section_start:") != strings.Count(j.log.String(), "section_end:") {
				t.Fatalf("the push is not in a closed section:\n%s", j.log.String())
			}
		})
	}
}

// When the stage cannot be run at all, no exit code is left for gitlab-runner to misread, and it
// is the runner's failure.
func TestRunErrorLeavesNoExitCode(t *testing.T) {
	j := newJob(t, setup{})
	j.exec.runErr = errors.New("lost the connection to the job container's agent")
	if err := os.WriteFile(j.codeFile, []byte("42\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	err := Report(&log, "run", j.run(t, "build_script"))
	var f *Failure
	if !errors.As(err, &f) || f.Kind != SystemFailure || !strings.Contains(log.String(), "lost the connection") {
		t.Fatalf("error %v, printed %q", err, log.String())
	}
	if _, err := os.Stat(j.codeFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("BUILD_EXIT_CODE_FILE still exists after a stage that did not run: %v", err)
	}
}

func TestPrepare(t *testing.T) {
	t.Run("the spec comes from the payload", func(t *testing.T) {
		j := newJob(t, setup{protected: true})
		if err := j.driver.Prepare(context.Background()); err != nil {
			t.Fatal(err)
		}
		if len(j.exec.prepared) != 1 {
			t.Fatalf("prepared %d times", len(j.exec.prepared))
		}
		spec := j.exec.prepared[0]
		p, err := ReadPayload(j.driver.Invocation.JobResponseFile)
		if err != nil {
			t.Fatal(err)
		}
		if spec.ID != ContainerID(p) || !strings.HasPrefix(spec.ID, "hearth-77-") || spec.Job != "77" || spec.Project != "7" || !spec.Protected || spec.Env.Name != "default" {
			t.Fatalf("spec %+v", spec)
		}
	})
	t.Run("a refused image is the job's fault, before any container", func(t *testing.T) {
		j := newJob(t, setup{})
		p := strings.Replace(readFile(t, j.driver.Invocation.JobResponseFile), `"id":77`, `"id":77,"image":{"name":"evil/miner"}`, 1)
		if err := os.WriteFile(j.driver.Invocation.JobResponseFile, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
		err := Report(io.Discard, "prepare", j.driver.Prepare(context.Background()))
		var f *Failure
		if !errors.As(err, &f) || f.Kind != BuildFailure || len(j.exec.prepared) != 0 {
			t.Fatalf("error %v, prepared %d", err, len(j.exec.prepared))
		}
	})
	for _, tc := range []struct {
		name string
		err  error
		kind Kind
	}{
		{"what the job chose is its fault", &executor.JobError{Err: errors.New("pull image: 401")}, BuildFailure},
		{"the rest is the host's", errors.New("containerd is unreachable"), SystemFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJob(t, setup{})
			j.exec.prepareErr = tc.err
			err := Report(io.Discard, "prepare", j.driver.Prepare(context.Background()))
			var f *Failure
			if !errors.As(err, &f) || f.Kind != tc.kind {
				t.Fatalf("error %v, want kind %d", err, tc.kind)
			}
		})
	}
}

func TestCleanupNamesTheContainerFromThePayload(t *testing.T) {
	j := newJob(t, setup{})
	if err := j.driver.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := j.driver.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(j.exec.cleaned) != 1 || j.exec.cleaned[0] != j.exec.prepared[0].ID {
		t.Fatalf("cleaned %v, prepared %s", j.exec.cleaned, j.exec.prepared[0].ID)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
