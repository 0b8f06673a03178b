// Package imports keeps hearth's import rules true: each part depends only on the parts beneath
// it, so that the executor stays ignorant of GitLab and the cache, the cache of containers, the
// store reader of the cache, and no production code leans on what only tests and tools use.
package imports

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/hearth-ci/hearth"

// rule forbids packages under from (their own code, or with deps everything they pull in) to
// import packages under to.
type rule struct {
	from, to string
	deps     bool
	except   []string // packages under from the rule does not apply to
	why      string
}

var (
	backends = []string{module + "/cache/file", module + "/cache/s3", module + "/cache/attic", module + "/cache/binarycache"}
	helpers  = []string{module + "/nix", module + "/nixstore", module + "/config", module + "/jobcontainer", module + "/filelock", module + "/secretfile", module + "/bytesize"}
)

var rules = []rule{
	{from: module + "/executor", to: module + "/driver", deps: true, why: "the executor knows nothing of GitLab"},
	{from: module + "/executor", to: module + "/cache", deps: true, why: "the executor knows nothing of the cache"},
	{from: module + "/cache", to: module + "/driver", deps: true, why: "the cache knows nothing of the driver"},
	{from: module + "/cache", to: module + "/executor", deps: true, why: "the cache knows nothing of containers"},
	{from: module + "/nixstore", to: module + "/cache", deps: true, why: "reading the store is not the cache's; deploys read it too"},
	{from: module + "/nix", to: module + "/cache", deps: true, why: "Nix's formats know nothing of who uses them"},
	{from: module + "/nix", to: module + "/nixstore", deps: true, why: "Nix's formats know nothing of the store on this host"},
	{from: module + "/driver", to: module + "/runner", deps: true, why: "the driver is gitlab-runner's counterpart, not its emulation"},
	{from: module + "/runner", to: module + "/driver", deps: true, why: "the emulation of gitlab-runner speaks to the driver only as gitlab-runner does, through processes"},
	{from: module + "/config", to: module + "/driver", deps: true, why: "the config is plain data"},
	{from: module + "/config", to: module + "/cache", deps: true, why: "the config is plain data"},
	{from: module + "/config", to: module + "/executor", deps: true, why: "the config is plain data"},
	{from: module + "/filelock", to: module + "/", deps: true, why: "a small helper stands alone"},
	{from: module + "/secretfile", to: module + "/", deps: true, why: "a small helper stands alone"},
	{from: module + "/bytesize", to: module + "/", deps: true, why: "a small helper stands alone"},
	{from: "", to: "github.com/containerd/containerd", deps: false, except: []string{module + "/executor"}, why: "only the executor speaks to containerd"},
	{from: "", to: "github.com/aws/", deps: false, except: []string{module + "/cache/s3"}, why: "only the S3 backend uses the AWS SDK"},
	{from: module + "/deploy", to: module + "/driver", deps: true, why: "deploys are mechanics; the driver decides who may deploy"},
	{from: module + "/deploy", to: module + "/executor", deps: true, why: "deploys know nothing of job containers"},
	{from: module + "/deploy", to: module + "/cache", deps: true, why: "a target pulls from its caches itself; deploys need no cache client"},
	{from: module + "/executor", to: module + "/deploy", deps: true, why: "the executor knows nothing of deploys"},
	{from: module + "/cache", to: module + "/deploy", deps: true, why: "the cache knows nothing of deploys"},
	{from: module + "/metrics", to: module + "/driver", deps: true, why: "metrics count what others record; they know none of them"},
	{from: module + "/metrics", to: module + "/cache", deps: true, why: "metrics count what others record; they know none of them"},
	{from: module + "/metrics", to: module + "/executor", deps: true, why: "metrics count what others record; they know none of them"},
	{from: module + "/metrics", to: module + "/deploy", deps: true, why: "metrics count what others record; they know none of them"},
	{from: module + "/cache", to: module + "/metrics", deps: true, except: []string{module + "/cache/open"}, why: "the cache reports through its Meter; cache/open wires it to the metrics"},
	{from: "", to: "github.com/prometheus/", deps: false, except: []string{module + "/metrics"}, why: "only metrics speaks Prometheus"},
	{from: "", to: "golang.org/x/crypto/ssh", deps: false, except: []string{module + "/deploy", module + "/internal/"}, why: "only deploy speaks SSH (and the tests' targets)"},
}

func init() {
	// The small packages beneath the others pull in neither containerd nor the AWS SDK.
	for _, h := range helpers {
		rules = append(rules,
			rule{from: h, to: "github.com/containerd/", deps: true, why: "a small store/format package knows nothing of containers"},
			rule{from: h, to: "github.com/aws/", deps: true, why: "a small store/format package knows nothing of S3"},
		)
	}
	// The driver and the CLI reach a backend only through cache/open.
	for _, b := range backends {
		for _, from := range []string{module + "/driver", module + "/cmd/hearth"} {
			rules = append(rules, rule{from: from, to: b, deps: false, why: "backends are opened in cache/open alone"})
		}
	}
	rules = append(rules, rule{from: module + "/driver", to: module + "/cache/open", deps: false, why: "the driver is given its flusher; it does not open caches"})
}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func TestImportRules(t *testing.T) {
	pkgs := list(t)
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages; the test is not looking at the module", len(pkgs))
	}
	for _, p := range pkgs {
		for _, r := range rules {
			if !under(p.ImportPath, r.from) || exempt(p.ImportPath, r.except) {
				continue
			}
			imports := p.Imports
			if r.deps {
				imports = p.Deps
			}
			for _, imp := range imports {
				if strings.HasPrefix(imp, r.to) && !under(imp, r.from) {
					t.Errorf("%s imports %s: %s", p.ImportPath, imp, r.why)
				}
			}
		}
		// A test helper is imported by tests only.
		if production(p.ImportPath) {
			for _, imp := range p.Imports {
				if slices.Contains(testHelpers, imp) {
					t.Errorf("%s imports %s, which is for tests", p.ImportPath, imp)
				}
			}
		}
		// What only tests and tools use stays out of production code.
		if production(p.ImportPath) {
			for _, imp := range p.Deps {
				if strings.HasPrefix(imp, module+"/") && !production(imp) {
					t.Errorf("%s imports %s: that is for tests and tools, not for production code", p.ImportPath, imp)
				}
			}
		}
	}
}

// testHelpers are the packages outside internal/ that only tests import: helpers beside the code
// they test, as net/http/httptest is.
var testHelpers = []string{module + "/cache/cachetest", module + "/metrics/metricstest"}

// production reports whether a package of the module is production code: not under internal/,
// which holds tests and tools, and not a test helper.
func production(path string) bool {
	return !strings.HasPrefix(path, module+"/internal/") && !slices.Contains(testHelpers, path)
}

// under reports whether path is the package prefix or one below it ("" is every package).
func under(path, prefix string) bool {
	return prefix == "" || path == prefix || strings.HasPrefix(path, strings.TrimSuffix(prefix, "/")+"/")
}

func exempt(path string, except []string) bool {
	for _, e := range except {
		if under(path, e) {
			return true
		}
	}
	return false
}

func list(t *testing.T) []pkg {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}
