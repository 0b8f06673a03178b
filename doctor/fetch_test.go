package doctor

import (
	"net"
	"slices"
	"testing"
)

// The fetch probe names the addresses it reached, and only those.
func TestFetchProbe(t *testing.T) {
	open, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	got := FetchProbe([]string{closedAddr, open.Addr().String()})
	want := []string{fetchReached + open.Addr().String(), fetchTried + "2"}
	if !slices.Equal(got, want) {
		t.Fatalf("FetchProbe said %q, want %q", got, want)
	}
}

func TestNixString(t *testing.T) {
	for in, want := range map[string]string{
		"[::1]:9863":  `"[::1]:9863"`,
		`a"b\c`:       `"a\"b\\c"`,
		"${builtins}": `"\${builtins}"`,
		"two\nlines":  `"two\nlines"`,
	} {
		if got := nixString(in); got != want {
			t.Errorf("nixString(%q) = %s, want %s", in, got, want)
		}
	}
}
