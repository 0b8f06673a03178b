package runner

import (
	"os/exec"
	"strings"
	"testing"
)

// runBash feeds a generated script to bash on stdin, as the driver does.
func runBash(t *testing.T, script string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

func TestGeneratedScriptSemantics(t *testing.T) {
	dir := t.TempDir()
	r := &Runner{projectDir: dir, vars: []Variable{
		{Key: "QUOTED", Value: `it's "quoted" $HOME`},
		{Key: "AS_FILE", Value: "file content", File: true},
	}}
	tests := []struct {
		name     string
		cmds     []string
		code     int
		contains []string
		absent   []string
	}{
		{"first failure ends the script with its code", []string{"echo one", "exit 42", "echo two"}, 42, []string{"$ echo one", "\none\n", "$ exit 42"}, []string{"\ntwo\n"}},
		{"pipefail", []string{"false | true", "echo after"}, 1, nil, []string{"\nafter\n"}},
		{"variables exported verbatim", []string{`printf '%s\n' "$QUOTED"`}, 0, []string{"\nit's \"quoted\" $HOME\n"}, nil},
		{"file variables are paths", []string{`cat "$AS_FILE"; echo`, `test "$AS_FILE" = "` + dir + `.tmp/AS_FILE"`}, 0, []string{"\nfile content\n"}, nil},
		{"runs in the project dir", []string{`test "$PWD" = "` + dir + `"`}, 0, nil, nil},
		{"stdin is /dev/null", []string{"cat; echo end"}, 0, []string{"\nend\n"}, nil},
		{"multi-line commands shown collapsed", []string{"echo a\necho b"}, 0, []string{"$ echo a # collapsed multi-line command", "\na\nb\n"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runBash(t, r.userScript(tc.cmds))
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, out)
			}
			for _, s := range tc.contains {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(out, s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
		})
	}
}
