package doctor

import (
	"net"
	"strings"
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
	if len(got) != 1 || got[0] != fetchReached+open.Addr().String() {
		t.Fatalf("FetchProbe said %q, want only that it reached %s", got, open.Addr())
	}
	if !strings.HasPrefix(quoteAll([]string{"127.0.0.1:1", `a"b`}), `"127.0.0.1:1" "a\"b"`) {
		t.Fatalf("quoteAll: %s", quoteAll([]string{"127.0.0.1:1", `a"b`}))
	}
}
