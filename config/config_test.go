package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

const minimal = `
[environments.default]
store_path = "/nix/store/00000000000000000000000000000000-env"
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, src string
		want      string // a regexp the error must match
	}{
		{"unknown key with its line", "[jobs]\nnetwork = \"host\"\nbogus = 1\n" + minimal, `line 3: unknown key "jobs\.bogus"`},
		{"unknown table", "\n[jobz]\nx = 1\n" + minimal, `line 2: unknown key "jobz"`},
		{"unknown key in environment", minimal + "flavour = \"x\"\n", `line 4: unknown key "environments\.default\.flavour"`},
		{"wrong type", "[jobs]\n\nuid_map_start = \"many\"\n" + minimal, `line 3 .*jobs\.uid_map_start.*incompatible types`},
		{"syntax", "[jobs]\nnetwork = = 1\n", `line 2: `},
		{"bad network", "[jobs]\nnetwork = \"nat\"\n" + minimal, `line 2: jobs\.network = "nat": must be "bridge", "host" or "none"`},
		{"bad subnet", "[jobs.bridge]\nsubnet = \"10.0.0.1/16\"\n" + minimal, `line 2: jobs\.bridge\.subnet = "10.0.0.1/16": an IPv4 subnet`},
		{"link-local subnet", "[jobs.bridge]\nsubnet = \"169.254.0.0/16\"\n" + minimal, `not loopback or link-local`},
		{"loopback dns", "[jobs.bridge]\ndns = [\"127.0.0.53\"]\n" + minimal, `line 2: jobs\.bridge\.dns: "127.0.0.53" is not a name server a job can reach`},
		{"long bridge name", "[jobs.bridge]\nname = \"a-very-long-bridge-name\"\n" + minimal, `line 2: jobs\.bridge\.name = "a-very-long-bridge-name": a network device name`},
		{"relative path", "[jobs]\nbuilds_root = \"builds\"\n" + minimal, `line 2: jobs\.builds_root = "builds": must be an absolute path`},
		{"root uid", "[jobs]\nuid_map_start = 0\n" + minimal, `jobs must not run as host root`},
		{"bad duration", "[jobs]\nstop_timeout = \"soon\"\n" + minimal, `"soon" is not a duration`},
		{"stop timeout too long", "[jobs]\nstop_timeout = \"30s\"\n" + minimal, `line 2: jobs\.stop_timeout = "30s": must be between 0 and 6s`},
		{"bad glob", "[jobs]\nallowed_images = [\"a/[b\"]\n" + minimal, `"a/\[b" is not a valid glob`},
		{"no environments", "", `no \[environments\.NAME\] table`},
		{"missing default", "[jobs]\ndefault_environment = \"nix\"\n" + minimal, `line 2: jobs\.default_environment = "nix" names no environment; defined: default`},
		{"both kinds", minimal + "image = \"alpine\"\n", `environments\.default: set store_path or image, not both`},
		{"neither kind", "[environments.default]\nmounts = []\n", `set store_path .* or image`},
		{"not a store path", "[environments.default]\nstore_path = \"/usr\"\n", `"/usr" is not a path directly under /nix/store`},
		{"metrics without a port", "[metrics]\nlisten = \"localhost\"\n" + minimal, `line 2: metrics\.listen = "localhost": must be an IP address and a port`},
		{"metrics on a name", "[metrics]\nlisten = \"localhost:9863\"\n" + minimal, `metrics\.listen = "localhost:9863": must be an IP address and a port`},
		{"bad mount", minimal + "mounts = [\"relative:/x\"]\n", `mount "relative:/x": write it as`},
		{"mount over hearth's", minimal + "mounts = [\"/srv:/nix\"]\n", `/nix/store is managed by hearth`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src))
			if err == nil {
				t.Fatalf("no error, want %s", tc.want)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %q", err, tc.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Environments = c.Environments
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("got %+v, want defaults %+v", *c, want)
	}
	if c.Jobs.StopTimeout.Std().Seconds() != 5 {
		t.Fatalf("stop timeout %v", c.Jobs.StopTimeout.Std())
	}
}

func TestMounts(t *testing.T) {
	c, err := Parse([]byte(minimal + "mounts = [\"/etc/ssl/certs:/etc/ssl/certs/\", \"/srv/data:/data\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Environments["default"].ParsedMounts()
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{{"/etc/ssl/certs", "/etc/ssl/certs"}, {"/srv/data", "/data"}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %v want %v", m, want)
	}
}

// The example file parses, and documents every key the config knows.
func TestExampleDocumentsEveryKey(t *testing.T) {
	src, err := os.ReadFile("../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(src); err != nil {
		t.Fatalf("the example does not parse: %v", err)
	}
	for _, key := range keys(reflect.TypeOf(Config{}), "") {
		table, name := key[:strings.LastIndex(key, ".")], key[strings.LastIndex(key, ".")+1:]
		section := sectionOf(string(src), table)
		if !regexp.MustCompile(`(?m)^#? ?` + regexp.QuoteMeta(name) + ` = `).MatchString(section) {
			t.Errorf("config.toml.example does not document %s", key)
		}
	}
}

// keys lists the dotted key paths of t's leaf fields; maps of tables appear as NAME.
func keys(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Tag.Get("toml") == "-" {
			continue
		}
		name := prefix + f.Tag.Get("toml")
		ft := f.Type
		if ft.Kind() == reflect.Map {
			out = append(out, keys(ft.Elem(), name+".NAME.")...)
			continue
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, keys(ft, name+".")...)
			continue
		}
		out = append(out, name)
	}
	return out
}

// sectionOf returns the text of the example's table for a key path ("environments.NAME" matches
// any environment's table). A table may be shown commented out, as an example to copy.
func sectionOf(src, table string) string {
	pattern := regexp.QuoteMeta("[" + table + "]")
	pattern = strings.ReplaceAll(pattern, "NAME", `[^\]]+`)
	loc := regexp.MustCompile(`(?m)^(# )?` + pattern + `$`).FindStringIndex(src)
	if loc == nil {
		return ""
	}
	rest := src[loc[1]:]
	if next := regexp.MustCompile(`(?m)^(# )?\[`).FindStringIndex(rest); next != nil {
		rest = rest[:next[0]]
	}
	return rest
}
