package secretfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "  s3cr3t-value\n")
	empty := write("empty", " \n\t\n")
	tests := []struct {
		path, want, err string
	}{
		{good, "s3cr3t-value", ""},
		{empty, "", "the token file " + empty + " is empty"},
		{filepath.Join(dir, "absent"), "", "read the token: open " + filepath.Join(dir, "absent") + ": no such file"},
		{"", "", "no file is set for the token"},
	}
	for _, tc := range tests {
		got, err := Read(tc.path, "the token")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Read(%q) = %q, %v; want an error saying %q", tc.path, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Read(%q) = %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}
}
