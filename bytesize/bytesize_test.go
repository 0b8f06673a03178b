package bytesize

import (
	"strings"
	"testing"
	"time"
)

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {5 << 20, "5.0 MiB"}, {-3 << 30, "-3.0 GiB"}} {
		if got := Format(tc.n); got != tc.want {
			t.Errorf("Format(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	if got := Rate(10<<20, 2*time.Second); got != "5.0 MiB/s" {
		t.Errorf("Rate = %q", got)
	}
	if got := Rate(1, 0); got != "-" {
		t.Errorf("Rate over no time = %q", got)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"0", 0, ""}, {"1024", 1024, ""}, {"512M", 512 << 20, ""}, {"512MiB", 512 << 20, ""}, {"4GiB", 4 << 30, ""},
		{"1.5G", 3 << 29, ""}, {" 2 T ", 2 << 40, ""}, {"64K", 64 << 10, ""}, {"100B", 100, ""},
		{"4GB", 0, "binary units"}, {"lots", 0, "not a size"}, {"", 0, "not a size"}, {"-1G", 0, "not a size"}, {"1.2.3M", 0, "not a size"},
		{"G", 0, "not a size"}, {"99999999T", 0, "too large"}, {"4 gigs", 0, "not a size"},
	} {
		got, err := Parse(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Parse(%q) = %d, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}
