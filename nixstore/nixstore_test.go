package nixstore

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// want is the path info the fixtures describe: two paths, b referencing a, b signed.
var want = []PathInfo{
	{
		Path:    "/nix/store/bgaikxram9ygviwg4s4dhl0k9c3gd8y5-fixture-a",
		NarHash: "sha256:11hap619k9yv29jfxdq44d7fxwks93qsw8w8iwbgdjwxni9zsxlj",
		NarSize: 120, // NarHash from nix-hash --to-base32 of the SRI hash Nix printed
		Deriver: "/nix/store/mgfm7r3gabxk4xr0rrfxmlpcfwswx24q-fixture-a.drv",
	},
	{
		Path:       "/nix/store/mvd3d1d9rn3g5bm861lcrycpvnq19c6s-fixture-b",
		NarHash:    "sha256:1jfixqma7y6731mgi6lg8i33hls3i68dxx44zrf8m93r1r6qjzgq",
		NarSize:    168,
		References: []string{"/nix/store/bgaikxram9ygviwg4s4dhl0k9c3gd8y5-fixture-a"},
		Deriver:    "/nix/store/l2znjc3h7ha8gzn4ryqwxcckyd4qd4cy-fixture-b.drv",
		Sigs:       []string{"fixture-1:qZnr3DE6N36vvii+8f0DY4VYAWZDkoM7WRZi3oWtT4yFHJFZjumipMmg5cJpWqOywbgB7ks5rBWt7P7EmiIaAQ=="},
	},
}

// want226 is what the Nix 2.26 fixtures describe: fixture-a, fixture-b referencing it and signed,
// and fixture-ca, content-addressed. The hashes are `nix hash to-base32` of the SRI hashes Nix
// printed.
var want226 = []PathInfo{
	{
		Path:    "/nix/store/11zds9jm7x6i2pazh7232qc5z5d3r71m-fixture-ca",
		NarHash: "sha256:15cb6zxdjdkg1wn4dkqsp926zkmzl910gsrrkv3xvgcvb0sygd2h",
		NarSize: 128,
		CA:      "fixed:r:sha256:15cb6zxdjdkg1wn4dkqsp926zkmzl910gsrrkv3xvgcvb0sygd2h",
	},
	{
		Path:       "/nix/store/mqz6xw1mxhxp9gr2yd4plnz00rmhvym5-fixture-b",
		NarHash:    "sha256:1railgbnf2mlajw8yysrhhc9lnssj6sp1h0bhsmajmvkfn1mh4fh",
		NarSize:    192,
		References: []string{"/nix/store/zaxji58rbhwppqp46bc87qck9n7mlav9-fixture-a"},
		Deriver:    "/nix/store/lmj5hv4lz83xgism3yphrn90m7gp7xxz-fixture-b.drv",
		Sigs:       []string{"fixture-1:KFJ2bJhO9dVRCQjmUobV4baYqAIKsKmUIn0skfjf2RqMc8VFfvVnHTMjFOU7ChEgV1a5LCU0BcokZqm+k67iAw=="},
	},
	{
		Path:    "/nix/store/zaxji58rbhwppqp46bc87qck9n7mlav9-fixture-a",
		NarHash: "sha256:17ah3kw7jbk64xjrsddr90vqn9wqh5cjppr45l9yy79h3hzifvqx",
		NarSize: 128,
		Deriver: "/nix/store/qyr6ikkybgrs9h3kmjvjyz7im0df5mqi-fixture-a.drv",
	},
}

func TestParseJSONShapes(t *testing.T) {
	structured := append([]PathInfo{}, want...)
	structured[0].CA = "fixed:r:" + want[0].NarHash
	tests := []struct {
		fixture string
		want    []PathInfo
	}{
		// What Debian's Nix 2.8 printed: an array, SRI hashes, full paths.
		{"nix-2.8.json", want},
		// What Debian's Nix 2.26 printed: an object keyed by path, null for what is absent.
		{"nix-2.26/nix-2.26.json", want226},
		{"nix-2.26/nix-2.26-recursive.json", want226[1:]},
		// Nix 2.33 and later (by hand, see testdata/README): hash and content-address objects,
		// base names.
		{"nix-2.33-structured.json", structured},
	}
	for _, tc := range tests {
		t.Run(tc.fixture, func(t *testing.T) {
			b, err := os.ReadFile("testdata/" + tc.fixture)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseJSON(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseJSONErrors(t *testing.T) {
	b, err := os.ReadFile("testdata/nix-2.8-invalid.json")
	if err != nil {
		t.Fatal(err)
	}
	b226, err := os.ReadFile("testdata/nix-2.26/nix-2.26-invalid.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want string }{
		{string(b), "/nix/store/00000000000000000000000000000000-gone is not in the store"},
		{string(b226), "/nix/store/00000000000000000000000000000000-gone is not in the store"},
		{`{"/nix/store/00000000000000000000000000000000-gone": null}`, "is not in the store"},
		{`[{"path":"/nix/store/bgaikxram9ygviwg4s4dhl0k9c3gd8y5-a","narSize":1}]`, "no narHash"},
		{`[{"path":"/nix/store/bgaikxram9ygviwg4s4dhl0k9c3gd8y5-a","narHash":{"algorithm":"md5","format":"base16","hash":"00"},"narSize":1}]`, `not sha256`},
		{`[{"path":"/tmp/x","narHash":"sha256-knb9U7Sdy/YWj4gjrvFIevLuTiMEt+5kEtunmYK5CoY=","narSize":1}]`, "is not a path directly under /nix/store"},
		{`"text"`, "expected a JSON array or object"},
	} {
		_, err := ParseJSON([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseJSON(%.60s): %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestOrderPutsReferencesFirst(t *testing.T) {
	p := func(name string, refs ...string) PathInfo {
		full := func(n string) string { return "/nix/store/" + strings.Repeat("a", 31) + n + "-" + n }
		in := PathInfo{Path: full(name)}
		for _, r := range refs {
			in.References = append(in.References, full(r))
		}
		in.References = append(in.References, in.Path) // self-references are common
		return in
	}
	infos := []PathInfo{p("d", "b", "c"), p("c", "a"), p("b", "a"), p("a"), p("x", "y")} // y is outside the set
	pos := map[string]int{}
	for i, in := range Order(infos) {
		pos[in.Path[len(in.Path)-1:]] = i
	}
	if len(pos) != 5 || pos["a"] > pos["b"] || pos["a"] > pos["c"] || pos["b"] > pos["d"] || pos["c"] > pos["d"] {
		t.Fatalf("order %v", pos)
	}
}
